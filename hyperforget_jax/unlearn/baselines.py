"""The baseline unlearning methods, as building blocks and as scanned runs.

**Building blocks** (the shape of :func:`hyperforget_jax.unlearn.gradtau.nabla_tau`): each method is
an :class:`Objective` — ``init(params) -> state`` and
``update(params, state, *batches) -> (grads, state, metrics)`` — over a per-example
``loss_fn(params, batch) -> (B,)`` or a model's ``apply_fn``; feed the gradients to any optax
optimiser. SalUn is :func:`descent` with :func:`masked_updates` around the optimiser
(the scanned runs use :func:`weighted_descent`, whose padding rows weigh 0).

>>> import jax.numpy as jnp, optax
>>> from hyperforget_jax.train import per_example_ce
>>> obj = neggrad(per_example_ce(lambda p, x: x @ p))
>>> grads, _, m = obj.update(jnp.eye(3), obj.init(None), (jnp.eye(3), jnp.arange(3)))
>>> round(float(m["loss"]), 3)    # −mean CE: ascent on the forget batch
-0.551

**Runs**: :func:`run_method` drives a method from its config: a host-built plan (batch indices,
random labels: pure functions of the sizes and the seed) scanned over in one compiled call into
the on-device data. The program belongs to the model and takes every float hyperparameter as a
traced value, so all configs with the same shapes share it and :func:`run_fleet` runs a fleet
of members (seeds × configs) as the same program under ``vmap``.
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from hyperforget_jax import metrics, microbatch, train, xla
from hyperforget_jax.config import check_as_config, check_count, float_fields
from hyperforget_jax.data import ForgetSplit, shared_rows, wrapped_batches, wrapped_stream
from hyperforget_jax.errors import (ArchitectureError, ConfigError, DataError, NonFiniteError,
                                    kind_of)
from hyperforget_jax.models import Architecture, as_model
from hyperforget_jax.params import committed, tree_index
from hyperforget_jax.train_run import refuse_nonfinite_outputs
from hyperforget_jax.unlearn import configs as C

Params = Any


# --- building blocks ---------------------------------------------------------------------------

class Objective(NamedTuple):
    """``init(params) -> state``; ``update(params, state, *batches) -> (grads, state,
    metrics)``. The baselines are stateless: their state is ``()``."""

    init: Callable
    update: Callable


def _stateless(loss: Callable, axis_name: str | None = None, who: str = "the objective",
               fix: str | None = None) -> Objective:
    """``loss(params, *batches)`` as an :class:`Objective`. ``axis_name`` (under ``pmap`` /
    ``shard_map``): the loss and gradient are averaged over that device axis, as
    :func:`.gradtau.gradtau_objective` does. Under ``shard_map``'s default ``check_vma=True``
    autodiff already *sums* the replicated parameters' gradient over the devices, so the
    usual ``lax.pmean`` afterwards returned n_devices × the batch's gradient: the replicated
    parameters are differentiated as device-varying copies instead, and batches split over an
    axis without ``axis_name`` are refused (``check_vma`` carries what is needed to see it);
    ``who`` / ``fix``: the refusal's subject and remedy (:func:`.microbatch.local_params`)."""
    def update(params, state, *batches):
        params = microbatch.local_params(
            params, batches, axis_name, who,
            "autodiff would sum the devices' gradients (n_devices × the mean)", fix)
        value, grads = jax.value_and_grad(loss)(params, *batches)
        if axis_name is not None:
            value, grads = jax.lax.pmean((value, grads), axis_name)
        return grads, state, {"loss": value}
    return Objective(lambda params: (), update)


def kl_divergence(target_logits: jax.Array, student_logits: jax.Array, T: Any) -> jax.Array:
    """KL(softmax(target/T) ‖ softmax(student/T)), mean over the batch (summed over classes:
    PyTorch's ``F.kl_div`` default, which Bad Teacher's official code keeps, averages over
    classes too; see :class:`.configs.BadTeacherConfig`). The two must have one shape (checked
    while tracing): a (1, K) teacher was broadcast over the batch, a (B, 1) student read a
    negative KL, dict outputs died in a bare TypeError."""
    for what, v in (("the teacher's logits", target_logits), ("the model's logits",
                                                              student_logits)):
        if not hasattr(v, "shape") or not hasattr(v, "dtype") or len(v.shape) == 0:
            raise ArchitectureError(f"kl_divergence: {what} are a {type(v).__name__}"
                                    f"{'' if not hasattr(v, 'shape') else ' of shape ()'}, not "
                                    "(batch, num_classes) logits; return only the logits "
                                    "(not a tuple or dict)")
    if jnp.shape(target_logits) != jnp.shape(student_logits):
        raise DataError(f"kl_divergence: the teacher's logits have shape "
                        f"{jnp.shape(target_logits)} but the model's {jnp.shape(student_logits)}"
                        "; both must be (batch, num_classes) for the same batch: "
                        + _KD_FIX)
    # In at least float32, as the cross-entropy (a bfloat16 model's KL rounded to bf16).
    target_logits = metrics.at_least_float32(target_logits)
    student_logits = metrics.at_least_float32(student_logits)
    p = jax.nn.softmax(target_logits / T)
    return jnp.mean(jnp.sum(p * (jax.nn.log_softmax(target_logits / T)
                                 - jax.nn.log_softmax(student_logits / T)), -1))


def descent(loss_fn: Callable, axis_name: str | None = None) -> Objective:
    """Plain descent on a batch: Fine-tune, and Random labels / SalUn (whose batches carry
    the random labels). ``update(params, state, batch)``; ``axis_name``: see
    :func:`_stateless`."""
    loss_fn = microbatch.per_example_losses(loss_fn)
    return _stateless(lambda p, b: jnp.mean(loss_fn(p, b)), axis_name)


def _weighted_mean(values: jax.Array, w: jax.Array) -> jax.Array:
    """Σ w·values / Σ w: a batch padded to a fixed width weighs its padding 0."""
    return jnp.sum(w * values) / jnp.sum(w)


def weighted_descent(loss_fn: Callable) -> Objective:
    """Descent on the weighted mean loss of ``batch = (x, y, w)`` (:func:`_weighted_mean`:
    Random labels / SalUn with a forget set smaller than the batch). No ``axis_name``: a
    weighted mean is not the mean of the devices' weighted means."""
    loss_fn = microbatch.per_example_losses(loss_fn)
    return _stateless(lambda p, b: _weighted_mean(loss_fn(p, b[:2]), b[2]),
                      who="weighted_descent",
                      fix="it takes no axis_name (a weighted mean is not the mean of the "
                          "devices' weighted means): call it under jit outside shard_map (a "
                          "sharded batch is fine there), or give shard_map the batch "
                          "replicated (in_specs P())")


def neggrad(loss_fn: Callable, axis_name: str | None = None) -> Objective:
    """NegGrad (gradient ascent): minimise −mean loss on a forget batch.
    ``update(params, state, forget_batch)``; ``axis_name``: see :func:`_stateless`."""
    loss_fn = microbatch.per_example_losses(loss_fn)
    return _stateless(lambda p, fb: -jnp.mean(loss_fn(p, fb)), axis_name)


def neggrad_plus(loss_fn: Callable, beta: Any, axis_name: str | None = None) -> Objective:
    """NegGrad+: β·L(B_r) − (1 − β)·L(B_f). ``update(params, state, forget_batch,
    retain_batch)``; ``axis_name``: see :func:`_stateless`. β lies in [0, 1]."""
    check_as_config(beta, C.NegGradPlusConfig, "beta", "neggrad_plus")
    loss_fn = microbatch.per_example_losses(loss_fn)
    return _stateless(lambda p, fb, rb: beta * jnp.mean(loss_fn(p, rb))
                      - (1 - beta) * jnp.mean(loss_fn(p, fb)), axis_name)


_KD_FIX = ("compute the teacher's logits first (teacher_logits = apply_fn(teacher_params, x)) "
           "and pass them in the tuple")


def scrub(apply_fn: Callable, kd_T: Any, gamma: Any, alpha: Any,
          axis_name: str | None = None) -> Objective:
    """SCRUB: ``update(params, state, forget_batch, retain_batch, is_max)`` with
    ``forget_batch = (x, teacher_logits)``, ``retain_batch = (x, y, teacher_logits)``; a max-step
    (``is_max``) maximises KL(teacher ‖ student) on the forget batch, a min-step minimises
    γ·CE + α·KL on the retain batch (``lax.cond``: one is computed). The KL is the official
    code's ``DistillKL(kd_T)`` (RepDistiller): KL at temperature ``kd_T`` multiplied by
    ``kd_T``², which keeps the gradient's scale independent of the temperature. ``axis_name``:
    see :func:`_stateless`. ``kd_T`` > 0; ``gamma``, ``alpha`` >= 0."""
    for name, value in (("kd_T", kd_T), ("gamma", gamma), ("alpha", alpha)):
        check_as_config(value, C.ScrubConfig, name, "scrub")

    def kl(target_logits, student_logits):
        return kd_T ** 2 * kl_divergence(target_logits, student_logits, kd_T)

    def loss(p, fb, rb, is_max):
        # A dict batch failed with a bare KeyError: 0, a pair given as the retain batch with
        # an IndexError. The forms are checked while tracing.
        fb = train.tuple_batch(fb, ("x", "teacher_logits"), "scrub's forget batch", _KD_FIX)
        rb = train.tuple_batch(rb, ("x", "y", "teacher_logits"), "scrub's retain batch", _KD_FIX)

        def max_loss(q):
            return -kl(fb[1], apply_fn(q, fb[0]))

        def min_loss(q):
            logits = apply_fn(q, rb[0])
            ce = train.label_ce(logits, train.checked_labels(logits, rb[1],
                                                             "scrub's retain batch")).mean()
            return gamma * ce + alpha * kl(rb[2], logits)
        return jax.lax.cond(is_max, max_loss, min_loss, p)
    return _stateless(loss, axis_name)


def bad_teacher(apply_fn: Callable, temperature: Any,
                axis_name: str | None = None) -> Objective:
    """Bad Teacher: KL(teacher ‖ student) on ``batch = (x, teacher_logits)`` (the teacher is
    the incompetent one on D_f, the original on D_r). ``update(params, state, batch)``;
    ``axis_name``: see :func:`_stateless`. ``temperature`` > 0."""
    check_as_config(temperature, C.BadTeacherConfig, "kl_temperature", "bad_teacher",
                     "temperature")

    def loss(p, b):
        x, teacher_logits = train.tuple_batch(b, ("x", "teacher_logits"), "bad_teacher", _KD_FIX)
        return kl_divergence(teacher_logits, apply_fn(p, x), temperature)
    return _stateless(loss, axis_name)


def masked_updates(tx: optax.GradientTransformation, mask: Params
                   ) -> optax.GradientTransformation:
    """``tx`` whose updates are multiplied by ``mask`` (1 keeps, 0 freezes): SalUn's masked
    update — the weights outside the saliency mask keep their original values exactly.

    ``mask`` has the parameters' structure, or is a prefix of it (``{"body": False, "head":
    True}`` freezes a whole subtree, as ``optax.masked``'s masks do); its leaves are numbers,
    bools or arrays that broadcast to their parameters. A mask of another structure is refused
    at ``init`` (:class:`ConfigError`); Python bools failed with a bare AttributeError."""
    def apply_mask(updates):
        return jax.tree.map(lambda m, sub: jax.tree.map(lambda u: u * jnp.asarray(m, u.dtype),
                                                        sub), mask, updates)

    def init(params):
        try:
            jax.eval_shape(apply_mask, params)
        except (ValueError, TypeError) as e:
            raise ConfigError(f"masked_updates: the mask does not fit the parameters ({e}); "
                              "give it the parameters' structure (e.g. jax.tree.map(lambda p: "
                              "1.0, params)) or a prefix of it, with numbers or bools as "
                              "leaves") from None
        return optax.EmptyState()

    return optax.chain(tx, optax.GradientTransformation(
        init, lambda updates, state, params=None: (apply_mask(updates), state)))


def sgd(lr: Any, momentum: Any, weight_decay: Any) -> optax.GradientTransformation:
    """PyTorch-style SGD: weight decay added to the gradient, then heavy-ball momentum."""
    return optax.chain(optax.add_decayed_weights(weight_decay), optax.sgd(lr, momentum))


def optimizer_for(method: str, hp: dict, mask: Params | None = None
                  ) -> optax.GradientTransformation:
    """The published optimiser of ``method`` (values may be traced), a ``mask`` (SalUn's: the
    only method whose prepared member data holds one) applied to its updates
    (:func:`masked_updates`), all behind the NaN guard: the guard stays the outermost
    transformation, so its flag (``train.update_was_finite``) is read for SalUn too."""
    if method == "bad_teacher":
        tx = optax.adam(hp["lr"])
    else:
        tx = sgd(hp["lr"], hp["momentum"], hp["weight_decay"])
    if mask is not None:
        tx = masked_updates(tx, mask)
    return train.skip_nonfinite(tx)


# --- steps of the scanned runs: (state, hp, shared, member, plan row) -> (state, metrics) -------

def _step(method: str, apply_fn: Callable, constrain: Callable) -> Callable:
    loss_fn = train.per_example_ce(apply_fn)

    def step(ts, hp, shared, member, row):
        tx = optimizer_for(method, hp, member.get("mask"))

        def take(key, rows):
            """``shared[key][rows]``; a sweep with one request per member holds each row of
            their training set once (``shared`` = {"x", "y"}) and each member its row map."""
            if "rows" in member:
                return shared[key[0]][member["rows"][key][rows]]
            return shared[key][rows]
        if method == "neggrad":
            obj, batches = neggrad(loss_fn), (constrain((take("xf", row["f"]),
                                                         take("yf", row["f"]))),)
        elif method == "neggrad_plus":
            obj = neggrad_plus(loss_fn, hp["beta"])
            batches = (constrain((take("xf", row["f"]), take("yf", row["f"]))),
                       constrain((take("xr", row["r"]), take("yr", row["r"]))))
        elif method in ("random_labels", "salun"):
            obj = weighted_descent(loss_fn)
            batches = (constrain((take("x", row["idx"]), row["y"], row["w"])),)
        elif method == "scrub":
            obj = scrub(apply_fn, hp["kd_T"], hp["gamma"], hp["alpha"])
            xf, xr = constrain(take("xf", row["f"])), constrain(take("xr", row["r"]))
            if "teacher_params" in member:   # batch statistics: the teacher on this batch
                tf, tr = (jax.lax.stop_gradient(apply_fn(member["teacher_params"], xb))
                          for xb in (xf, xr))
            else:
                tf, tr = member["tf"][row["f"]], member["tr"][row["r"]]
            batches = (constrain((xf, tf)), constrain((xr, take("yr", row["r"]), tr)),
                       row["kind"] == 0)
        elif method == "bad_teacher":
            obj = bad_teacher(apply_fn, hp["kl_temperature"])
            pos = member["pos"][row["idx"]]
            xb = constrain(take("x", pos))
            if "teacher_params" in member:   # both teachers on this batch, chosen per row
                t = jax.lax.stop_gradient(jnp.where(
                    (pos < member["nf"])[:, None], apply_fn(member["incompetent_params"], xb),
                    apply_fn(member["teacher_params"], xb)))
            else:
                t = member["teacher"][row["idx"]]
            batches = (constrain((xb, t)),)
        else:  # pragma: no cover - guarded by METHODS
            raise KeyError(method)
        grads, _, m = obj.update(ts.params, (), *batches)
        ts, finite = train.apply_step(ts, grads, m["loss"], tx)
        return ts, {"loss": m["loss"], "finite": finite}

    return step


def _program(model: Architecture, method: str, fleet: bool, mesh: Mesh | None,
             data_batched: bool = False, common_keys: tuple = (), how: str = "vmap"
             ) -> Callable:
    """``run(ts, hp, shared, member, plan, common) -> (ts, metrics)``: ``method``'s step
    scanned over every row of ``plan`` (and of ``common``, the plan entries every member of a
    fleet shares: a SCRUB max/min schedule stays one real branch, not a select of both);
    vmapped over members for fleets (``shared`` data once, or one per member with
    ``data_batched``)."""

    def build():
        step = _step(method, model.apply, train.shard_rows(mesh))

        def run(ts, hp, shared, member, plan, common):
            return jax.lax.scan(lambda s, rows: step(s, hp, shared, member,
                                                     {**rows[0], **rows[1]}),
                                ts, (plan, common))

        if fleet:
            run = train.over_members(run, (0, 0, 0 if data_batched else None, 0, 0, None), how)
        if mesh is None:
            return xla.jit(run, donate_argnums=0)
        repl = NamedSharding(train.auto_mesh(mesh)[0], P())
        return xla.jit(run, in_shardings=repl, out_shardings=repl, donate_argnums=0)

    return model.program(("baseline", method, fleet, mesh, data_batched, common_keys, how),
                         build)


# --- host-side preparation: (shared arrays, member arrays, plan, info) --------------------------

def _data(split: ForgetSplit) -> dict:
    return {"xf": split.forget.x, "yf": split.forget.y, "xr": split.retain.x,
            "yr": split.retain.y}


def _all_rows(split: ForgetSplit) -> dict:
    """D_f's rows, then D_r's: the data of the methods that index both as one set."""
    return {"x": np.concatenate([split.forget.x, split.retain.x])}


def _neggrad(model, params, split, cfg: C.NegGradConfig, seed):
    bf = min(cfg.batch_size, len(split.forget))
    f = np.concatenate([wrapped_batches(np.random.default_rng([seed, 1, e]),
                                        len(split.forget), bf) for e in range(cfg.epochs)])
    return _data(split), {}, {"f": f}, {}


def _neggrad_plus(model, params, split, cfg: C.NegGradPlusConfig, seed):
    nf, nr = len(split.forget), len(split.retain)
    br, bf = min(cfg.batch_size, nr), min(cfg.batch_size, nf)
    r = np.concatenate([wrapped_batches(np.random.default_rng([seed, 2, e]), nr, br)
                        for e in range(cfg.epochs)])
    f = wrapped_stream(seed, 1, nf, bf, len(r))
    return _data(split), {}, {"f": f, "r": r}, {}


def _padded(rows: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """``rows`` (k, b) widened to (k, ``width``) with repeats of their own entries, and the
    weights: 1 on the real entries, 0 on the padding."""
    k, b = rows.shape
    w = np.zeros((k, width), np.float32)
    w[:, :b] = 1.0
    if b < width:
        rows = np.concatenate([rows, np.resize(rows, (k, width - b))], axis=1)
    return rows, w


def _relabel_plan(split: ForgetSplit, num_classes: int, cfg, seed: int) -> tuple[dict, dict]:
    """Each epoch one pass over D_f with uniform random labels, then one over D_r.

    Each pass has its own batch, min(batch_size, its set's size), like SalUn's two loaders
    (and NegGrad's forget batch): a forget set smaller than the batch is one batch holding
    each forget sample once, with one random label, not a batch that repeats every sample
    ~batch/|D_f| times, each copy with its own random label (a target that averages to the
    uniform distribution). A set larger than its batch is covered by full batches that wrap
    around (``wrapped_batches`` [ours], as every baseline's passes and ∇τ's): its last batch
    is filled with samples drawn again, counted in full (a 377-image forget set in batches of
    256 sees 135 twice an epoch, each copy with its own random label), where SalUn's loaders
    end on a short batch (an auditor measured the difference within seed noise). Rows share
    one width; the narrower pass is padded with weight-0 entries (``w``), which the step
    leaves out of its mean (for a model with batch statistics each pass runs at its own width
    instead: :func:`_width_runs`)."""
    nf, nr = len(split.forget), len(split.retain)
    bf, br = min(cfg.batch_size, nf), min(cfg.batch_size, nr)
    width = max(bf, br)
    rng = np.random.default_rng([seed, 3])
    idx, ys, ws = [], [], []
    y_all = np.concatenate([split.forget.y, split.retain.y])
    for e in range(cfg.epochs):
        f, wf = _padded(wrapped_batches(np.random.default_rng([seed, 1, e]), nf, bf), width)
        r, wr = _padded(nf + wrapped_batches(np.random.default_rng([seed, 2, e]), nr, br),
                        width)                                   # forget pass first, then D_r
        idx += [f, r]
        ys += [rng.integers(0, num_classes, f.shape), y_all[r]]
        ws += [wf, wr]
    shared = _all_rows(split)
    plan = {"idx": np.concatenate(idx), "y": np.concatenate(ys).astype(np.int32),
            "w": np.concatenate(ws)}
    return shared, plan


def _random_labels(model, params, split, cfg: C.RandomLabelsConfig, seed):
    shared, plan = _relabel_plan(split, split.forget.num_classes, cfg, seed)
    return shared, {}, plan, {}


def _padded_batches(n: int, bs: int) -> tuple[np.ndarray, np.ndarray]:
    """``0..n-1`` in order, in rows of ``bs`` (the last filled with repeats), and the weights:
    1 on each image's own entry, 0 on the filling."""
    total = math.ceil(n / bs) * bs
    idx = np.resize(np.arange(n), total).reshape(-1, bs)
    return idx, (np.arange(total) < n).reshape(-1, bs).astype(np.float32)


def saliency_mask(arch: Any, params: Params, split: ForgetSplit, ratio: float,
                  batch_size: int = 256) -> Params:
    """1.0 on the ``ratio`` share of weights with the largest |Σ_batches ∇(−CE(D_f))|, one
    global threshold over every tensor (SalUn's ``generate_mask.py``), else 0.0.

    Below ``ratio`` 1, a weight whose saliency is exactly 0 (e.g. an input weight of a pixel
    that is black in every forget image) never enters the mask [ours]: where more than
    1 − ``ratio`` of the weights have 0, the threshold is 0 and the ties would otherwise
    fill the whole mask, i.e. turn SalUn into plain Random labels. The mask then covers less
    than ``ratio`` (``info["mask_share"]`` says how much).

    The last batch holds the remaining images only, as SalUn's loader gives it: its fixed-width
    row is padded with weight-0 entries, so no image counts twice. For a model whose rows
    depend on their batch (batch statistics) the padding would enter the real rows' gradients:
    its short last batch runs at its own size."""
    from hyperforget_jax.unlearn.gradtau_run import per_example

    # ratio 0 or −0.3 still moved a weight, 1.7 all of them; batch 0 divided by zero.
    check_as_config(ratio, C.SalUnConfig, "mask_ratio", "saliency_mask", "ratio")
    check_count(batch_size, "saliency_mask: batch_size")
    model = as_model(arch, split.forget.x.shape[1:], split.forget.num_classes)
    n = len(split.forget)
    bs = min(batch_size, n)
    idx, w = _padded_batches(n, bs)
    short = n % bs and not per_example(model, params, split.forget.x)

    def build():
        loss_fn = train.per_example_ce(model.apply)

        def summed(params, x, y, idx, w):
            def one(g, row):
                i, wi = row
                gi = jax.grad(lambda q: -_weighted_mean(loss_fn(q, (x[i], y[i])), wi))(params)
                return jax.tree.map(jnp.add, g, gi), None
            return jax.lax.scan(one, jax.tree.map(jnp.zeros_like, params), (idx, w))[0]
        return xla.jit(summed)

    summed = model.program("salun_saliency", build)
    x, y = jnp.asarray(split.forget.x), jnp.asarray(split.forget.y)
    if short:
        g = summed(params, x, y, jnp.asarray(idx[:-1]), jnp.asarray(w[:-1]))
        last = np.arange(len(idx) * bs - bs, n)[None]
        g = jax.tree.map(jnp.add, g, summed(params, x, y, jnp.asarray(last),
                                            jnp.ones(last.shape, jnp.float32)))
    else:
        g = summed(params, x, y, jnp.asarray(idx), jnp.asarray(w))
    if ratio >= 1:
        return jax.tree.map(jnp.ones_like, g)
    size = sum(l.size for l in jax.tree.leaves(g))
    k = max(1, int(round(ratio * size)))
    # One compiled program (run op by op it compiled 5 per parameter leaf, ≈ 1 s of a digits
    # SalUn run); abs, sort and comparisons only, so the same mask bit for bit. k is traced:
    # every ratio shares it.
    return model.program("salun_mask", lambda: xla.jit(_mask_of))(g, jnp.int32(k))


def _mask_of(g: Params, k: jax.Array) -> Params:
    """:func:`saliency_mask`'s mask of summed gradients ``g``: the ``k`` largest |g| (one global
    threshold), never a weight whose saliency is exactly 0."""
    flat = jnp.concatenate([jnp.abs(l).ravel() for l in jax.tree.leaves(g)])
    threshold = jnp.sort(flat)[flat.size - k]
    return jax.tree.map(lambda l: ((jnp.abs(l) >= threshold) & (jnp.abs(l) > 0))
                        .astype(jnp.float32), g)


def _salun(model, params, split, cfg: C.SalUnConfig, seed):
    mask = saliency_mask(model, params, split, cfg.mask_ratio, cfg.batch_size)
    shared, plan = _relabel_plan(split, split.forget.num_classes, cfg, seed)
    kept = sum(float(m.sum()) for m in jax.tree.leaves(mask))
    share = kept / sum(m.size for m in jax.tree.leaves(mask))
    return shared, {"mask": mask}, plan, {"mask_share": share}


def _logits(model: Architecture, params: Params, x: np.ndarray) -> jax.Array:
    """The model's logits of every row of ``x`` (teacher logits): sets above
    ``metrics.WHOLE_CALL_ROWS`` rows in chunks of that many (the whole retain set in one call
    grew memory with the data set), unless the model's rows depend on their batch."""
    from hyperforget_jax.unlearn.gradtau_run import rows_per_call

    fn = model.program("logits", lambda: xla.jit(model.apply))
    rows = rows_per_call(model, params, x)
    if rows >= len(x):
        return fn(params, jnp.asarray(x))
    return jnp.asarray(metrics.in_row_chunks(fn, params, (x,), rows))


def _scrub(model, params, split, cfg: C.ScrubConfig, seed):
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
    if _batch_statistics(model, params, split):
        member = {"teacher_params": params}
    else:
        member = {"tf": _logits(model, params, split.forget.x),
                  "tr": _logits(model, params, split.retain.x)}
    plan = {"kind": np.concatenate(kinds), "f": np.concatenate(fs), "r": np.concatenate(rs)}
    return _data(split), member, plan, {}


def _batch_statistics(model: Architecture, params: Params, split: ForgetSplit) -> bool:
    """Whether ``model``'s rows depend on their batch: its teacher logits are then computed on
    each step's own batch, as the reference loops do (the teacher in eval mode, which for such
    a model is the batch's statistics), not over the whole set at once (whole-set statistics
    gave SCRUB's first max-step a spurious gradient of norm 0.2 where it is ≈ 0)."""
    from hyperforget_jax.unlearn.gradtau_run import per_example

    return not per_example(model, params, split.forget.x)


def _bad_teacher(model, params, split, cfg: C.BadTeacherConfig, seed):
    nf, nr = len(split.forget), len(split.retain)
    rng = np.random.default_rng([seed, 4])
    keep = rng.choice(nr, max(1, int(round(cfg.retain_fraction * nr))), replace=False)
    x = np.concatenate([split.forget.x, split.retain.x[keep]])
    incompetent = model.init(jax.random.key(seed + 10_000))
    is_forget = np.r_[np.ones(nf, bool), np.zeros(len(keep), bool)]
    if _batch_statistics(model, params, split):
        teacher = None
    else:
        teacher = jnp.where(jnp.asarray(is_forget)[:, None], _logits(model, incompetent, x),
                            _logits(model, params, x))
    n, b = len(is_forget), min(cfg.batch_size, len(is_forget))
    idx = np.concatenate([wrapped_batches(np.random.default_rng([seed, 5, e]), n, b)
                          for e in range(cfg.epochs)])
    # The distillation set's rows as positions in D_f ∪ D_r (shared data), not a copy per
    # member: a sweep's members draw their own retain subsets from one set of rows.
    pos = np.concatenate([np.arange(nf), nf + keep]).astype(np.int32)
    member = ({"pos": pos, "teacher": teacher} if teacher is not None else
              {"pos": pos, "teacher_params": params, "incompetent_params": incompetent,
               "nf": np.int32(nf)})
    return _all_rows(split), member, {"idx": idx}, {"retain_subset": int(len(keep))}


#: method → (config class, host-side preparation).
METHODS: dict[str, tuple[type, Callable]] = {
    "neggrad": (C.NegGradConfig, _neggrad),
    "neggrad_plus": (C.NegGradPlusConfig, _neggrad_plus),
    "random_labels": (C.RandomLabelsConfig, _random_labels),
    "salun": (C.SalUnConfig, _salun),
    "scrub": (C.ScrubConfig, _scrub),
    "bad_teacher": (C.BadTeacherConfig, _bad_teacher),
}


def hyperparameters(cfg: Any) -> dict:
    """The traced hyperparameters of a config: its float fields as float32 arrays."""
    return {k: np.float32(getattr(cfg, k)) for k in float_fields(cfg)}


class Prepared(NamedTuple):
    """One member's host-side run of a baseline."""

    hp: dict
    shared: dict
    member: dict
    plan: dict
    extra: dict

    @property
    def signature(self) -> tuple:
        """Paths, shapes and dtypes of the per-member arrays and plan: members with equal
        signatures share one compiled program."""
        return tuple((jax.tree_util.keystr(p), tuple(np.shape(l)), str(np.result_type(l)))
                     for p, l in jax.tree_util.tree_leaves_with_path((self.member, self.plan)))


def prepare(method: str, model: Architecture, params: Params, split: ForgetSplit, cfg: Any,
            seed: int) -> Prepared:
    if method not in METHODS:
        raise ConfigError(f"unknown baseline {method!r}; choose one of {', '.join(METHODS)}")
    want = METHODS[method][0]
    if not isinstance(cfg, want):
        # Configs share field names: another method's config would run with its values.
        raise ConfigError(f"{method} takes a {want.__name__}, got {kind_of(cfg, want)}")
    shared, member, plan, extra = METHODS[method][1](model, params, split, cfg, seed)
    return Prepared(hyperparameters(cfg), shared, member, plan, extra)


def _raise_nonfinite(method: str, finite: np.ndarray, member: str = "") -> None:
    finite = np.asarray(finite)
    if not finite.all():
        bad = int(np.argmin(finite))
        raise NonFiniteError(f"{method}: non-finite loss, parameters or optimiser state at "
                             f"step {bad}{member}; stopped without returning parameters. Lower "
                             "the learning rate, or check the data (NaN/inf images, labels the "
                             "model has no output for)")


def _width_runs(method: str, model: Architecture, params: Params, split: ForgetSplit,
                w: np.ndarray) -> list[tuple[int, int, int]] | None:
    """For Random labels / SalUn on a model whose rows depend on their batch (batch
    statistics): the plan's rows as runs ``(first, end, width)`` of one real width each (``w``:
    one member's weights, rows × width), or None (one run, as padded). The narrower pass's
    weight-0 padding entered the real rows' statistics (a forget batch's gradient 10.7 % off;
    SalUn's own loaders give that batch at its own size): each run is cut to its width. Same
    steps in the same order; one program per (run length, width)."""
    if method not in ("random_labels", "salun"):
        return None
    widths = (np.asarray(w) > 0).sum(1)
    if (widths == np.shape(w)[1]).all() or not _batch_statistics(model, params, split):
        return None
    cuts = np.flatnonzero(np.diff(widths)) + 1
    return [(int(a), int(b), int(widths[a])) for a, b in zip(np.r_[0, cuts],
                                                             np.r_[cuts, len(widths)])]


def _cut(plan: dict, a: int, b: int, k: int, stacked: bool) -> dict:
    """Rows ``a:b`` of ``plan``, its first ``k`` columns (``stacked``: members first)."""
    return {key: (np.asarray(v)[:, a:b, :k] if stacked else np.asarray(v)[a:b, :k])
            for key, v in plan.items()}


def run_method(method: str, arch: Any, params: Params, split: ForgetSplit, cfg: Any,
               seed: int = 0, *, mesh: Mesh | None = None) -> tuple[Params, dict]:
    """Runs baseline ``method`` from ``params`` (not modified); returns (params, info) with
    ``steps``, ``first_loss``, ``last_loss`` and the method's own facts (``mask_share``,
    ``retain_subset``).

    Args:
      method: one of ``METHODS``.
      arch: the model (anything ``hf.as_model`` takes).
      params: the original parameters.
      split: D_f / D_r.
      cfg: the method's config.
      seed: batch order, random labels, the incompetent teacher.
      mesh: optional mesh: batches split along its data axis, the rest replicated.

    Raises:
      ConfigError: an unknown method, or a config of another method (the configs share
        field names, so e.g. a SalUnConfig would run NegGrad with SalUn's values).
      NonFiniteError: a step produced NaN/inf.
    """
    train.check_mesh(mesh, method if isinstance(method, str) else "run_method")
    model = as_model(arch, split.forget.x.shape[1:], split.forget.num_classes)
    # Committed: parameters restored from disk and fresh from fit share the compiled program.
    params = committed(params)
    prep = prepare(method, model, params, split, cfg, seed)
    tx = optimizer_for(method, hyperparameters(cfg), prep.member.get("mask"))
    ts = train.init_state(model, tx, None, jax.tree.map(jnp.array, params))
    put = (jax.tree.map(jnp.asarray, (ts, prep.hp, prep.shared, prep.member)) if mesh is None
           else jax.device_put((ts, prep.hp, prep.shared, prep.member),
                               NamedSharding(train.auto_mesh(mesh)[0], P())))
    run = _program(model, method, False, mesh)
    runs = _width_runs(method, model, params, split, prep.plan["w"]) if "w" in prep.plan else None
    ts, hp, shared, member = put
    ms = []
    for seg in ([prep.plan] if runs is None else [_cut(prep.plan, *r, False) for r in runs]):
        ts, m = run(ts, hp, shared, member, jax.tree.map(jnp.asarray, seg), {})
        ms.append(m)
    m = jax.tree.map(lambda *v: jnp.concatenate(v), *ms)
    _raise_nonfinite(method, m["finite"])
    out = jax.block_until_ready(ts.params)
    refuse_nonfinite_outputs(model, out, split.forget.x, method)
    loss = np.asarray(m["loss"])
    return out, {"steps": int(len(loss)), "first_loss": float(loss[0]),
                 "last_loss": float(loss[-1]), **prep.extra}


def run_fleet(method: str, model: Architecture, params: Params, preps: list[Prepared],
              per_member_data: bool = False, vectorize: str = "vmap",
              splits: list[ForgetSplit] | None = None) -> tuple[Params, list[dict]]:
    """Members with equal signatures as one vmapped program: ``params`` stacked (leading axis =
    members), one :class:`Prepared` each (from :func:`prepare`; ``per_member_data``: each
    from its own request of equal size, ``splits``, else every member's shared data is the
    first's). Returns stacked params and one info per member.

    Members with their own requests on one training set share its rows on the device, each
    with its row maps (:func:`~hyperforget_jax.data.shared_rows`), instead of a copy of the
    data each; the gathers return the same values, so the results are the same bits."""
    tx = optimizer_for(method, preps[0].hp, preps[0].member.get("mask"))
    ts = jax.vmap(lambda p: train.init_state(model, tx, None, p))(jax.tree.map(jnp.array, params))
    stack = lambda trees: jax.tree.map(lambda *v: jnp.stack([jnp.asarray(a) for a in v]), *trees)
    hp = stack([p.hp for p in preps])
    rows = (shared_rows(splits) if per_member_data and splits is not None and preps[0].shared
            else None)
    if rows is not None:
        def maps(i: int, keys) -> dict:
            """Member ``i``'s row map of each of its shared arrays (``keys``)."""
            f, r = rows.forget[i], rows.retain[i]
            of = {"xf": f, "yf": f, "xr": r, "yr": r}
            if "x" in keys:                  # D_f's rows, then D_r's (_all_rows)
                of["x"] = np.concatenate([f, r])
            return {k: of[k] for k in keys}

        preps = [p._replace(shared={"x": rows.x, "y": rows.y},
                            member={**p.member, "rows": maps(i, p.shared)})
                 for i, p in enumerate(preps)]
        per_member_data = False
    member = stack([p.member for p in preps]) if preps[0].member else {}
    same = lambda k: all(np.array_equal(p.plan[k], preps[0].plan[k]) for p in preps)
    common_keys = tuple(sorted(k for k in preps[0].plan if same(k)))
    common = {k: jnp.asarray(preps[0].plan[k]) for k in common_keys}
    plan = stack([{k: v for k, v in p.plan.items() if k not in common_keys} for p in preps])
    shared = (stack([p.shared for p in preps]) if per_member_data
              else jax.tree.map(jnp.asarray, preps[0].shared))
    run = _program(model, method, True, None, per_member_data, common_keys, vectorize)
    w0 = preps[0].plan.get("w")
    runs = (None if w0 is None or splits is None
            else _width_runs(method, model, tree_index(params, 0), splits[0], w0))
    # One segment, or the padding-free runs of a batch-statistics model (see _width_runs).
    segments = ([(plan, common)] if runs is None else
                [(_cut(plan, *r, True), _cut(common, *r, False)) for r in runs])
    ms = []
    for seg_plan, seg_common in segments:
        ts, mi = run(ts, hp, shared, member, jax.tree.map(jnp.asarray, seg_plan),
                     jax.tree.map(jnp.asarray, seg_common))
        ms.append(mi)
    m = jax.tree.map(lambda *v: jnp.concatenate(v, axis=1), *ms)
    out = jax.block_until_ready(ts.params)
    finite, loss = np.asarray(m["finite"]), np.asarray(m["loss"])
    for i in range(len(preps)):
        _raise_nonfinite(method, finite[i], f" (sweep member {i})")
    if splits:
        refuse_nonfinite_outputs(model, out, splits[0].forget.x, f"{method} sweep", stacked=True)
    infos = []
    for i, p in enumerate(preps):
        infos.append({"steps": int(loss.shape[1]), "first_loss": float(loss[i, 0]),
                      "last_loss": float(loss[i, -1]), **p.extra})
    return out, infos
