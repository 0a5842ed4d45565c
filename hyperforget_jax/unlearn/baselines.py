"""The baseline unlearning methods as pure steps over one scanned run.

Each method is ``make_<method>_step(apply_fn, tx, cfg) -> step(state, arrays, plan_t)``: a pure
function of the train state, a dict of on-device arrays (the forget / retain data, frozen teacher
outputs, the saliency mask) and one row of a host-built *plan* (the batch indices and, for random
labels, the labels of that step). :func:`run_plan` scans the step over the whole plan in a single
jitted call, cached per (method, architecture, config), so a repeated run does not recompile.
The plans are pure functions of the sizes and the seed.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from hyperforget_jax import train
from hyperforget_jax.data import ForgetSplit, wrapped_batches, wrapped_stream
from hyperforget_jax.errors import NonFiniteError
from hyperforget_jax.models import Architecture
from hyperforget_jax.unlearn import configs as C

Params = Any
ce = optax.softmax_cross_entropy_with_integer_labels


def sgd(lr: float, momentum: float, weight_decay: float) -> optax.GradientTransformation:
    """PyTorch-style SGD: weight decay added to the gradient, then heavy-ball momentum."""
    return optax.chain(optax.add_decayed_weights(weight_decay), optax.sgd(lr, momentum))


def _kl(target_logits: jax.Array, student_logits: jax.Array, T: float) -> jax.Array:
    """KL(softmax(target/T) ‖ softmax(student/T)), mean over the batch."""
    p = jax.nn.softmax(target_logits / T)
    return jnp.mean(jnp.sum(p * (jax.nn.log_softmax(target_logits / T)
                                 - jax.nn.log_softmax(student_logits / T)), -1))


def _apply(state, loss_fn, tx, arrays):
    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    mask = arrays.get("mask")
    if mask is not None:  # SalUn: only salient weights move (grads and params both masked)
        grads = jax.tree.map(lambda g, m: g * m, grads, mask)
    new, finite = train.guarded_update(state, grads, loss, tx)
    if mask is not None:
        new = new._replace(params=jax.tree.map(lambda n, o, m: jnp.where(m > 0, n, o),
                                               new.params, arrays["theta0"], mask))
    return new, {"loss": loss, "finite": finite}


# --- steps ---------------------------------------------------------------------------------------

def make_neggrad_step(apply_fn: Callable, tx, cfg: C.NegGradConfig) -> Callable:
    """Ascent on D_f: minimise −CE(B_f)."""
    def step(state, arrays, p):
        x, y = arrays["xf"][p["f"]], arrays["yf"][p["f"]]
        return _apply(state, lambda q: -ce(apply_fn(q, x), y).mean(), tx, arrays)
    return step


def make_neggrad_plus_step(apply_fn: Callable, tx, cfg: C.NegGradPlusConfig) -> Callable:
    """β·CE(B_r) − (1 − β)·CE(B_f)."""
    def step(state, arrays, p):
        xf, yf = arrays["xf"][p["f"]], arrays["yf"][p["f"]]
        xr, yr = arrays["xr"][p["r"]], arrays["yr"][p["r"]]

        def loss(q):
            return (cfg.beta * ce(apply_fn(q, xr), yr).mean()
                    - (1 - cfg.beta) * ce(apply_fn(q, xf), yf).mean())
        return _apply(state, loss, tx, arrays)
    return step


def make_relabel_step(apply_fn: Callable, tx, cfg) -> Callable:
    """CE on a batch of the combined set D_f ∪ D_r with the plan's labels (random for D_f):
    Random Labels, and SalUn when ``arrays`` carries a saliency mask."""
    def step(state, arrays, p):
        x = arrays["x"][p["idx"]]
        return _apply(state, lambda q: ce(apply_fn(q, x), p["y"]).mean(), tx, arrays)
    return step


def make_scrub_step(apply_fn: Callable, tx, cfg: C.ScrubConfig) -> Callable:
    """SCRUB: ``kind`` 0 = max-step on B_f (−KL to the teacher), 1 = min-step on B_r
    (γ·CE + α·KL). Teacher logits are precomputed (the teacher is frozen)."""
    def step(state, arrays, p):
        def max_loss(q):
            return -_kl(arrays["tf"][p["f"]], apply_fn(q, arrays["xf"][p["f"]]), cfg.kd_T)

        def min_loss(q):
            logits = apply_fn(q, arrays["xr"][p["r"]])
            return (cfg.gamma * ce(logits, arrays["yr"][p["r"]]).mean()
                    + cfg.alpha * _kl(arrays["tr"][p["r"]], logits, cfg.kd_T))
        loss = lambda q: jax.lax.cond(p["kind"] == 0, max_loss, min_loss, q)
        return _apply(state, loss, tx, arrays)
    return step


def make_bad_teacher_step(apply_fn: Callable, tx, cfg: C.BadTeacherConfig) -> Callable:
    """KL(teacher ‖ student) with the teacher chosen per sample (incompetent on D_f, the
    original on D_r); teacher logits precomputed."""
    def step(state, arrays, p):
        x, t = arrays["x"][p["idx"]], arrays["teacher"][p["idx"]]
        return _apply(state, lambda q: _kl(t, apply_fn(q, x), cfg.kl_temperature), tx, arrays)
    return step


def optimizer_for(method: str, cfg) -> optax.GradientTransformation:
    if method == "bad_teacher":
        return optax.adam(cfg.lr)
    return sgd(cfg.lr, cfg.momentum, cfg.weight_decay)


_STEPS = {"neggrad": make_neggrad_step, "neggrad_plus": make_neggrad_plus_step,
          "random_labels": make_relabel_step, "salun": make_relabel_step,
          "scrub": make_scrub_step, "bad_teacher": make_bad_teacher_step}


@functools.lru_cache(maxsize=64)
def compiled_run(method: str, arch: Architecture, cfg) -> Callable:
    """Jitted ``run(state, arrays, plan) -> (state, metrics)`` scanning the method's step over
    every row of ``plan``."""
    step = _STEPS[method](arch.apply, optimizer_for(method, cfg), cfg)

    def run(state, arrays, plan):
        return jax.lax.scan(lambda s, p: step(s, arrays, p), state, plan)

    return jax.jit(run, donate_argnums=0)


def run_plan(method: str, arch: Architecture, cfg, params: Params, arrays: dict,
             plan: dict) -> tuple[Params, dict]:
    tx = optimizer_for(method, cfg)
    state = train.init_state(arch, tx, None, jax.tree.map(jnp.array, params))
    state, m = compiled_run(method, arch, cfg)(state, arrays, jax.tree.map(jnp.asarray, plan))
    finite = np.asarray(m["finite"])
    if not finite.all():
        bad = int(np.argmin(finite))
        raise NonFiniteError(f"{method}: non-finite loss or parameters at step {bad}; stopped "
                             "without returning parameters. Lower the learning rate")
    jax.block_until_ready(state.params)
    loss = np.asarray(m["loss"])
    return state.params, {"steps": int(len(finite)), "first_loss": float(loss[0]),
                          "last_loss": float(loss[-1])}


# --- plans (host numpy, pure functions of sizes and seed) --------------------------------------

def _device(split: ForgetSplit) -> dict:
    return {"xf": jnp.asarray(split.forget.x), "yf": jnp.asarray(split.forget.y),
            "xr": jnp.asarray(split.retain.x), "yr": jnp.asarray(split.retain.y)}


# --- the methods ---------------------------------------------------------------------------------

def neggrad(arch, params, split, val, cfg: C.NegGradConfig, seed: int):
    bf = min(cfg.batch_size, len(split.forget))
    f = np.concatenate([wrapped_batches(np.random.default_rng([seed, 1, e]), len(split.forget), bf)
                        for e in range(cfg.epochs)])
    arrays = _device(split)
    return run_plan("neggrad", arch, cfg, params, arrays, {"f": f})


def neggrad_plus(arch, params, split, val, cfg: C.NegGradPlusConfig, seed: int):
    nf, nr = len(split.forget), len(split.retain)
    br, bf = min(cfg.batch_size, nr), min(cfg.batch_size, nf)
    r = np.concatenate([wrapped_batches(np.random.default_rng([seed, 2, e]), nr, br)
                        for e in range(cfg.epochs)])
    f = wrapped_stream(seed, 1, nf, bf, len(r))
    return run_plan("neggrad_plus", arch, cfg, params, _device(split), {"f": f, "r": r})


def _relabel_plan(split: ForgetSplit, num_classes: int, cfg, seed: int) -> tuple[dict, dict]:
    nf, nr = len(split.forget), len(split.retain)
    b = min(cfg.batch_size, nr)
    rng = np.random.default_rng([seed, 3])
    idx, ys = [], []
    y_all = np.concatenate([split.forget.y, split.retain.y])
    for e in range(cfg.epochs):
        f = wrapped_batches(np.random.default_rng([seed, 1, e]), nf, b)     # forget pass first
        r = nf + wrapped_batches(np.random.default_rng([seed, 2, e]), nr, b)  # then the retain pass
        idx += [f, r]
        ys += [rng.integers(0, num_classes, f.shape), y_all[r]]
    arrays = {"x": jnp.asarray(np.concatenate([split.forget.x, split.retain.x]))}
    plan = {"idx": np.concatenate(idx), "y": np.concatenate(ys).astype(np.int32)}
    return arrays, plan


def random_labels(arch, params, split, val, cfg: C.RandomLabelsConfig, seed: int):
    arrays, plan = _relabel_plan(split, arch.num_classes, cfg, seed)
    return run_plan("random_labels", arch, cfg, params, arrays, plan)


@functools.partial(jax.jit, static_argnums=0)
def _sum_ascent_grad(apply_fn, params, x, y, idx):
    """Σ over forget batches of ∇_θ(−mean CE) at fixed params (SalUn's saliency)."""
    def one(g, i):
        gi = jax.grad(lambda q: -ce(apply_fn(q, x[i]), y[i]).mean())(params)
        return jax.tree.map(jnp.add, g, gi), None
    return jax.lax.scan(one, jax.tree.map(jnp.zeros_like, params), idx)[0]


def saliency_mask(arch: Architecture, params: Params, split: ForgetSplit, ratio: float,
                  batch_size: int = 256) -> Params:
    """1.0 on the ``ratio`` share of weights with the largest |Σ_batches ∇(−CE(D_f))|, one
    global threshold over every tensor (SalUn), else 0.0."""
    n = len(split.forget)
    bs = min(batch_size, n)
    idx = np.resize(np.arange(n), math.ceil(n / bs) * bs).reshape(-1, bs)
    g = _sum_ascent_grad(arch.apply, params, jnp.asarray(split.forget.x),
                         jnp.asarray(split.forget.y), jnp.asarray(idx))
    flat = jnp.concatenate([jnp.abs(l).ravel() for l in jax.tree.leaves(g)])
    k = max(1, int(round(ratio * flat.size)))
    threshold = jnp.sort(flat)[flat.size - k]
    return jax.tree.map(lambda l: (jnp.abs(l) >= threshold).astype(jnp.float32), g)


def salun(arch, params, split, val, cfg: C.SalUnConfig, seed: int):
    mask = saliency_mask(arch, params, split, cfg.mask_ratio, cfg.batch_size)
    arrays, plan = _relabel_plan(split, arch.num_classes, cfg, seed)
    arrays.update(mask=mask, theta0=params)
    out, info = run_plan("salun", arch, cfg, params, arrays, plan)
    kept = sum(float(m.sum()) for m in jax.tree.leaves(mask))
    info["mask_share"] = kept / sum(m.size for m in jax.tree.leaves(mask))
    return out, info


@functools.partial(jax.jit, static_argnums=0)
def _logits(apply_fn, params, x):
    return apply_fn(params, x)


def scrub(arch, params, split, val, cfg: C.ScrubConfig, seed: int):
    nf, nr = len(split.forget), len(split.retain)
    bf, br = min(cfg.forget_batch_size, nf), min(cfg.retain_batch_size, nr)
    kinds, fs, rs = [], [], []
    for e in range(cfg.epochs):
        if e < cfg.msteps:
            f = wrapped_batches(np.random.default_rng([seed, 1, e]), nf, bf)
            kinds.append(np.zeros(len(f), np.int32))
            fs.append(f)
            rs.append(np.zeros((len(f), br), np.int64))
        r = wrapped_batches(np.random.default_rng([seed, 2, e]), nr, br)
        kinds.append(np.ones(len(r), np.int32))
        fs.append(np.zeros((len(r), bf), np.int64))
        rs.append(r)
    arrays = _device(split)
    arrays.update(tf=_logits(arch.apply, params, arrays["xf"]),
                  tr=_logits(arch.apply, params, arrays["xr"]))
    plan = {"kind": np.concatenate(kinds), "f": np.concatenate(fs), "r": np.concatenate(rs)}
    return run_plan("scrub", arch, cfg, params, arrays, plan)


def bad_teacher(arch, params, split, val, cfg: C.BadTeacherConfig, seed: int):
    nf, nr = len(split.forget), len(split.retain)
    rng = np.random.default_rng([seed, 4])
    keep = rng.choice(nr, max(1, int(round(cfg.retain_fraction * nr))), replace=False)
    x = jnp.asarray(np.concatenate([split.forget.x, split.retain.x[keep]]))
    incompetent = arch.init(jax.random.key(seed + 10_000))
    is_forget = np.r_[np.ones(nf, bool), np.zeros(len(keep), bool)]
    teacher = jnp.where(jnp.asarray(is_forget)[:, None], _logits(arch.apply, incompetent, x),
                        _logits(arch.apply, params, x))
    n, b = len(is_forget), min(cfg.batch_size, len(is_forget))
    idx = np.concatenate([wrapped_batches(np.random.default_rng([seed, 5, e]), n, b)
                          for e in range(cfg.epochs)])
    out, info = run_plan("bad_teacher", arch, cfg, params, {"x": x, "teacher": teacher},
                         {"idx": idx})
    info["retain_subset"] = int(len(keep))
    return out, info


METHODS: dict[str, tuple[Callable, type]] = {
    "neggrad": (neggrad, C.NegGradConfig),
    "neggrad_plus": (neggrad_plus, C.NegGradPlusConfig),
    "random_labels": (random_labels, C.RandomLabelsConfig),
    "salun": (salun, C.SalUnConfig),
    "scrub": (scrub, C.ScrubConfig),
    "bad_teacher": (bad_teacher, C.BadTeacherConfig),
}
