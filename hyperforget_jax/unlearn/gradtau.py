"""∇τ unlearning (Trippa et al. 2024, arXiv 2403.14339; METHODS.md §1).

One step on a forget batch B_f and a retain batch B_r::

    L_f = mean CE over B_f        L_r = mean CE over B_r
    L   = α · ReLU(τ − L_f)²  +  (1 − α) · L_r

The ascent on D_f is proportional to the gap τ − L_f and switches off once the forget loss reaches
the "unseen data" level τ. The step is a pure function of ``(state, forget_batch, retain_batch, τ,
α)``; it is compiled three ways (``jax.jit``, ``jax.pmap`` and ``jax.jit`` over a ``("data",)``
mesh) with identical numbers, and reused under ``vmap`` by the HyperForget corpus builder.

Schedule [paper / official code]: α₀ = (5/3)·|D_f|/|D| decaying linearly to 0; AdamW lr 1e-3,
weight decay 0.01, lr decaying linearly to 0.1×; budget E = int(6·N_r / (2·N_f)) forget-epochs,
a forget-epoch being one pass over D_f with each forget batch paired with the next retain batch;
τ refreshed every 5 forget-epochs; no early stopping.

[ours] α₀ is clamped to ≤ 0.95 (a warning says so), and batches wrap around: a forget-epoch has
N_f = ceil(|D_f| / B) batches, the last one completed with samples from the start of the same
shuffled order, so every forget sample is seen every forget-epoch; the retain stream runs on
across forget-epochs through successive shuffles of D_r.

τ for class removal [ours], ``tau_mode``:
  * ``"val"`` — the paper's τ: mean CE of the current model on the whole validation set. For class
    removal this is the loss of data the model *generalises to* (≈ 0.3 on MNIST-5k): the ascent
    stops while the class is still recognised (measured FA 23–64% on classes 0/3/8).
  * ``"chance"`` — log K, the CE of a uniform prediction: the smallest loss at which the model
    carries no information about class c. Adam's momentum carries the forget loss past it (to
    ≈ 29–31 on MNIST-5k), so the class ends up as unrecognised as under Retrain (whose loss on
    class c is ≈ 18–21) at the lowest cost to the kept classes. Default for class removal.
  * ``"unseen_class"`` — an *estimate of Retrain's forget loss*: mean over the validation samples
    of the kept classes of −log p_c(x), i.e. how strongly the model rules out class c on inputs
    that are not c — the regime of a model whose c-logit was never a target. Measured once on
    the original model (≈ 14 vs Retrain's ≈ 17 on MNIST-5k); refreshing it chases its own tail
    (pushing the c-logit down raises it: 14 → 80 in 4 refreshes). A closer estimate of Retrain's
    loss, but the ascent overshoots further (forget loss 48–65) and costs 1.6–2.3 points of
    kept-class accuracy (docs/unlearning.md).
  * ``"auto"`` (default) — ``"chance"`` for class requests, ``"val"`` otherwise.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from hyperforget_jax import train
from hyperforget_jax.data import Dataset, ForgetSplit, wrapped_batches, wrapped_stream
from hyperforget_jax.errors import ConfigError, NonFiniteError
from hyperforget_jax.models import Architecture

log = logging.getLogger(__name__)

Params = Any
Batch = tuple[jax.Array, jax.Array]
TAU_MODES = ("auto", "val", "unseen_class", "chance")


@dataclasses.dataclass(frozen=True)
class GradTauConfig:
    """∇τ hyperparameters; the defaults are the paper's (no tuning per request).

    Run it on MNIST-5k (trains or loads the original in ``runs/original`` first)::

        hyperforget unlearn --method gradtau --forget-class 3 --run-dir runs/original

    Measured (MLP, classes 0/3/8 × 3 seeds, docs/unlearning.md): forget accuracy 0% like
    Retrain, kept-class test accuracy within 0.2–0.3 points of Retrain's, in 0.2–0.5 s against
    0.7–2.5 s for Retrain on 2 shared CPU cores (median speed-up 3.9×).

    Attributes:
      batch_size: batch of both streams (min(batch_size, |set|) for smaller sets).
      lr, weight_decay, final_lr_fraction: AdamW, lr decaying linearly to lr·final_lr_fraction.
      alpha_scale: α₀ = alpha_scale · |D_f| / |D|.
      alpha_max: α₀ is clamped to this value (with a warning).
      alpha0: override α₀ (``finetune`` uses 0: pure descent on D_r).
      tau_refresh_epochs: τ recomputed every this many forget-epochs.
      tau_mode: one of ``TAU_MODES`` (module docstring).
      epochs: override the budget E (None: the paper's int(6·N_r / (2·N_f))).
    """

    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.01
    final_lr_fraction: float = 0.1
    alpha_scale: float = 5.0 / 3.0
    alpha_max: float = 0.95
    alpha0: float | None = None
    tau_refresh_epochs: int = 5
    tau_mode: str = "auto"
    epochs: int | None = None

    def __post_init__(self):
        if self.tau_mode not in TAU_MODES:
            raise ConfigError(f"unknown tau_mode {self.tau_mode!r}; choose one of "
                              f"{', '.join(TAU_MODES)}")
        if self.batch_size < 1 or self.tau_refresh_epochs < 1:
            raise ConfigError("batch_size and tau_refresh_epochs must be >= 1")
        if not (self.lr > 0 and 0 < self.final_lr_fraction <= 1):
            raise ConfigError(f"lr must be > 0 and final_lr_fraction in (0, 1], got {self.lr}, "
                              f"{self.final_lr_fraction}")
        if not 0 <= self.alpha_max <= 1:
            raise ConfigError(f"alpha_max must lie in [0, 1], got {self.alpha_max}")
        if self.alpha0 is not None and not 0 <= self.alpha0 <= 1:
            raise ConfigError(f"alpha0 must lie in [0, 1], got {self.alpha0}")
        if self.epochs is not None and self.epochs < 1:
            raise ConfigError(f"epochs must be >= 1, got {self.epochs}")


# --- the schedule, as plain functions of the request sizes --------------------------------------

def initial_alpha(n_forget: int, n_total: int, scale: float = 5.0 / 3.0,
                  alpha_max: float = 0.95) -> tuple[float, bool]:
    """α₀ = scale·|D_f|/|D| clamped to ``alpha_max``. Returns (α₀, clamped).

    >>> initial_alpha(30, 100)
    (0.5, False)
    """
    a = scale * n_forget / n_total
    return (float(alpha_max), True) if a > alpha_max else (float(a), False)


def alpha_schedule(alpha0: float, total_steps: int) -> np.ndarray:
    """α at every step: linear from α₀ at step 0 towards 0 at step ``total_steps``."""
    return (alpha0 * (1.0 - np.arange(total_steps) / total_steps)).astype(np.float32)


def budget_epochs(n_retain_batches: int, n_forget_batches: int) -> int:
    """The paper's budget E = int(6·N_r / (2·N_f)) forget-epochs (at least 1).

    >>> budget_epochs(14, 1)
    42
    """
    return max(1, int(6 * n_retain_batches / (2 * n_forget_batches)))


def lr_schedule(total_steps: int, lr: float = 1e-3, final_lr_fraction: float = 0.1
                ) -> optax.Schedule:
    """Linear from ``lr`` at step 0 to ``lr·final_lr_fraction`` at ``total_steps``."""
    return optax.linear_schedule(lr, lr * final_lr_fraction, max(1, int(total_steps)))


def make_gradtau_optimizer(total_steps: int, lr: float = 1e-3, weight_decay: float = 0.01,
                           final_lr_fraction: float = 0.1) -> optax.GradientTransformation:
    """AdamW (weight decay 0.01) with the linearly decaying :func:`lr_schedule`."""
    return optax.adamw(lr_schedule(total_steps, lr, final_lr_fraction),
                       weight_decay=weight_decay)


def gradtau_loss(l_forget: jax.Array, l_retain: jax.Array, tau: jax.Array,
                 alpha: jax.Array) -> jax.Array:
    """L = α·ReLU(τ − L_f)² + (1 − α)·L_r on precomputed mean losses.

    >>> float(gradtau_loss(1.0, 0.5, 3.0, 0.25))
    1.375
    """
    return alpha * jax.nn.relu(tau - l_forget) ** 2 + (1.0 - alpha) * l_retain


# --- the pure step -------------------------------------------------------------------------------

def make_gradtau_step(apply_fn: Callable, tx: optax.GradientTransformation,
                      axis_name: str | None = None) -> Callable:
    """The pure ∇τ step ``(state, forget_batch, retain_batch, tau, alpha) -> (state, metrics)``.

    The gradient is assembled from the two mean-loss gradients,
    ∇L = −2α·ReLU(τ − L_f)·∇L_f + (1 − α)·∇L_r, so that under ``pmap`` the device means of L_f
    and ∇L_f are taken *before* the non-linear ReLU(·)² — the result equals the single-device
    step on the whole batch.

    Args:
      apply_fn: ``apply_fn(params, x) -> logits``.
      tx: an optax optimiser (:func:`make_gradtau_optimizer`).
      axis_name: set under ``jax.pmap``: losses, gradients and metrics are ``lax.pmean``-ed.

    Returns:
      ``step``; its metrics are ``loss``, ``forget_loss``, ``retain_loss``, ``finite``.
    """
    value_and_grad = jax.value_and_grad(train.cross_entropy_loss, has_aux=True)

    def step(state: train.TrainState, forget_batch: Batch, retain_batch: Batch,
             tau: jax.Array, alpha: jax.Array):
        (l_f, _), g_f = value_and_grad(state.params, apply_fn, *forget_batch)
        (l_r, _), g_r = value_and_grad(state.params, apply_fn, *retain_batch)
        if axis_name is not None:
            l_f, g_f, l_r, g_r = jax.lax.pmean((l_f, g_f, l_r, g_r), axis_name)
        tau = jnp.asarray(tau, l_f.dtype)
        alpha = jnp.asarray(alpha, l_f.dtype)
        gap = jax.nn.relu(tau - l_f)
        loss = gradtau_loss(l_f, l_r, tau, alpha)
        grads = jax.tree.map(lambda gf, gr: -2.0 * alpha * gap * gf + (1.0 - alpha) * gr,
                             g_f, g_r)
        state, finite = train.guarded_update(state, grads, loss, tx)
        return state, {"loss": loss, "forget_loss": l_f, "retain_loss": l_r, "finite": finite}

    return step


def pmap_gradtau_step(step_with_axis: Callable, axis_name: str = "batch",
                      devices=None) -> Callable:
    """``step_with_axis`` built with ``axis_name``; state replicated (``train.replicate``),
    both batches split with ``train.shard_batch``, τ and α broadcast."""
    return jax.pmap(step_with_axis, axis_name=axis_name, in_axes=(0, 0, 0, None, None),
                    donate_argnums=0, devices=devices)


def sharded_gradtau_step(step: Callable, mesh: Mesh) -> Callable:
    """The single-device step over a ``("data",)`` mesh: state, τ, α replicated, both batches
    sharded along ``"data"`` (``train.put_sharded``); XLA inserts the all-reduce."""
    repl, data = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    return jax.jit(step, in_shardings=(repl, data, data, repl, repl),
                   out_shardings=(repl, repl), donate_argnums=0)


# --- τ -------------------------------------------------------------------------------------------

@functools.partial(jax.jit, static_argnums=0)
def _unseen_class_ce(apply_fn, params, x, classes):
    """Mean over x (kept-class samples) and c ∈ classes of −log p_c(x)."""
    logp = jax.nn.log_softmax(apply_fn(params, x))
    return -jnp.mean(logp[:, classes])


def resolve_tau_mode(mode: str, forget_classes: tuple[int, ...] | None) -> str:
    if mode == "auto":
        return "chance" if forget_classes else "val"
    if mode == "unseen_class" and not forget_classes:
        raise ConfigError("tau_mode='unseen_class' needs a class-removal request; use 'val' "
                          "for random subsets")
    return mode


def compute_tau(mode: str, apply_fn: Callable, params: Params, val: Dataset,
                forget_classes: tuple[int, ...] | None = None) -> float | jax.Array:
    """τ of the current model (no gradient; a device scalar, so the caller need not wait for
    it); ``mode`` as in the module docstring."""
    mode = resolve_tau_mode(mode, forget_classes)
    if mode == "chance":
        return float(math.log(val.num_classes))
    if mode == "val":
        return train.mean_cross_entropy(apply_fn, params, jnp.asarray(val.x), jnp.asarray(val.y))
    kept = ~np.isin(val.y, forget_classes)
    if not kept.any():
        raise ConfigError("tau_mode='unseen_class' needs validation samples of kept classes")
    return _unseen_class_ce(apply_fn, params, jnp.asarray(val.x[kept]),
                            jnp.asarray(np.asarray(forget_classes, np.int32)))


# --- the run -------------------------------------------------------------------------------------

def plan_batches(n_forget: int, n_retain: int, batch_size: int, epochs: int | None,
                 seed: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Host-side batch plan: forget indices (E, N_f, B_f), retain indices (E, N_f, B_r), E.

    Pure function of the sizes and the seed (same plan on every machine)."""
    bf, br = min(batch_size, n_forget), min(batch_size, n_retain)
    nf, nr = math.ceil(n_forget / bf), math.ceil(n_retain / br)
    E = budget_epochs(nr, nf) if epochs is None else int(epochs)
    f_idx = np.stack([wrapped_batches(np.random.default_rng([seed, 1, e]), n_forget, bf)
                      for e in range(E)])
    r_idx = wrapped_stream(seed, 2, n_retain, br, E * nf).reshape(E, nf, br)
    return f_idx, r_idx, E


@functools.lru_cache(maxsize=32)
def compiled_forget_epoch(arch: Architecture, total_steps: int, lr: float, weight_decay: float,
                          final_lr_fraction: float, descent_only: bool = False) -> Callable:
    """Jitted ``run(state, xf, yf, xr, yr, f_idx, r_idx, alphas, tau) -> (state, metrics)``:
    one forget-epoch's batch pairs under ``lax.scan``. Cached, so repeated runs on the same
    shapes do not recompile. ``descent_only`` (Fine-tune, α ≡ 0) skips the forget batch."""
    tx = make_gradtau_optimizer(total_steps, lr, weight_decay, final_lr_fraction)
    step = make_gradtau_step(arch.apply, tx)
    if descent_only:
        plain = train.make_train_step(arch.apply, tx)

        def step(state, forget_batch, retain_batch, tau, alpha):
            state, m = plain(state, retain_batch)
            return state, {"loss": m["loss"], "forget_loss": jnp.float32(jnp.nan),
                           "retain_loss": m["loss"], "finite": m["finite"]}

    def run(state, xf, yf, xr, yr, f_idx, r_idx, alphas, tau):
        def body(s, inp):
            fi, ri, a = inp
            return step(s, (xf[fi], yf[fi]), (xr[ri], yr[ri]), tau, a)
        return jax.lax.scan(body, state, (f_idx, r_idx, alphas))

    return jax.jit(run, donate_argnums=0)


def _validate_resume(saved: dict, want: dict, directory) -> None:
    diff = [k for k in want if saved.get(k) != want[k]]
    if diff:
        from hyperforget_jax.errors import CheckpointError
        raise CheckpointError(
            f"{directory} holds a different ∇τ run ({diff[0]}: {saved.get(diff[0])!r} on disk, "
            f"{want[diff[0]]!r} now); pass an empty checkpoint directory for a new run")


def run_gradtau(arch: Architecture, params: Params, split: ForgetSplit, val: Dataset,
                config: GradTauConfig | None = None, seed: int = 0,
                forget_classes: tuple[int, ...] | None = None, *, checkpointer=None,
                meta: dict | None = None) -> tuple[Params, dict]:
    """Runs ∇τ from ``params`` and returns (unlearned params, info).

    The run is one jitted ``lax.scan`` call per forget-epoch (:func:`compiled_forget_epoch`,
    compiled once per shape and cached), with no host synchronisation between calls unless
    checkpointing. Everything it does is a pure function of the sizes, the config and
    ``seed``, so a resumed run gives the same parameters as an uninterrupted one.

    Args:
      arch: the classifier architecture.
      params: the original model's parameters (not modified).
      split: D_f / D_r.
      val: held-out validation data (τ).
      config: hyperparameters (default: the paper's).
      seed: batch order.
      forget_classes: the forgotten classes for class removal (selects τ, see ``tau_mode``).
      checkpointer: optional :class:`hyperforget_jax.checkpoint.Checkpointer`: the state is
        saved after every forget-epoch (checkpoint step = forget-epochs done, meta carries the
        τ history) and a rerun on the same directory resumes from the latest step. A directory
        holding a different run (other config, seed or request sizes) is refused.
      meta: JSON-serialisable metadata stored with each checkpoint.

    Returns:
      The parameters and an info dict: ``steps``, ``epochs``, ``alpha0``, ``alpha_clamped``,
      ``tau_mode``, ``tau`` (every refresh), per-epoch ``forget_loss`` / ``retain_loss``,
      ``resumed_from`` (forget-epochs restored from the checkpoint, 0 for a fresh run).

    Raises:
      NonFiniteError: a step produced NaN/inf (named in the message); nothing is saved.
      CheckpointError: the checkpoint directory holds a different run.
    """
    cfg = config or GradTauConfig()
    nf_total, nr_total = len(split.forget), len(split.retain)
    if cfg.alpha0 is not None:
        alpha0, clamped = float(cfg.alpha0), False
    else:
        alpha0, clamped = initial_alpha(nf_total, nf_total + nr_total, cfg.alpha_scale,
                                        cfg.alpha_max)
        if clamped:
            log.warning("∇τ: α₀ = %.3f·|D_f|/|D| = %.3f exceeds %.2f; clamped to %.2f",
                        cfg.alpha_scale, cfg.alpha_scale * nf_total / (nf_total + nr_total),
                        cfg.alpha_max, cfg.alpha_max)
    f_idx, r_idx, E = plan_batches(nf_total, nr_total, cfg.batch_size, cfg.epochs, seed)
    n_per_epoch = f_idx.shape[1]
    T = E * n_per_epoch
    alphas = alpha_schedule(alpha0, T).reshape(E, n_per_epoch)
    mode = resolve_tau_mode(cfg.tau_mode, forget_classes)
    run = compiled_forget_epoch(arch, T, cfg.lr, cfg.weight_decay, cfg.final_lr_fraction,
                                alpha0 == 0)
    tx = make_gradtau_optimizer(T, cfg.lr, cfg.weight_decay, cfg.final_lr_fraction)
    # A copy, so donating the state never invalidates the caller's parameters.
    state = train.init_state(arch, tx, None, jax.tree.map(jnp.array, params))
    run_id = {"n_forget": nf_total, "n_retain": nr_total, "seed": int(seed), "epochs": E,
              "tau_mode": mode, "config": dataclasses.asdict(cfg)}
    start, taus, hist_f, hist_r = 0, [], [], []
    if checkpointer is not None and checkpointer.latest_step() is not None:
        state, saved = checkpointer.restore(state)
        g = saved.get("gradtau", {})
        _validate_resume(g.get("run", {}), run_id, checkpointer.directory)
        start = int(g["epoch"])
        taus, hist_f, hist_r = list(g["tau"]), list(g["forget_loss"]), list(g["retain_loss"])
    xf, yf = jnp.asarray(split.forget.x), jnp.asarray(split.forget.y)
    xr, yr = jnp.asarray(split.retain.x), jnp.asarray(split.retain.y)
    c = cfg.tau_refresh_epochs
    # One call per forget-epoch: a single compilation serves every run with these shapes
    # (scanning several epochs per call saves little dispatch time and costs a compilation per
    # chunk length), and the checkpoints fall on forget-epoch boundaries.
    bounds = list(range(start, E + 1))
    tau = jnp.float32(taus[-1] if taus else 0.0)
    finite, dev_f, dev_r = [], [], []
    for e0, e1 in zip(bounds[:-1], bounds[1:]):
        # unseen_class τ is measured once: refreshing it chases its own tail (pushing the
        # c-logit down everywhere raises −log p_c on kept samples too; 14 → 80 in 4 refreshes).
        refresh = e0 == 0 if mode == "unseen_class" else e0 % c == 0
        if refresh and alpha0 > 0:
            tau = jnp.float32(compute_tau(mode, arch.apply, state.params, val, forget_classes))
            taus.append(tau)
        sl = slice(e0 * n_per_epoch, e1 * n_per_epoch)
        state, m = run(state, xf, yf, xr, yr,
                       jnp.asarray(f_idx[e0:e1].reshape(-1, f_idx.shape[-1])),
                       jnp.asarray(r_idx[e0:e1].reshape(-1, r_idx.shape[-1])),
                       jnp.asarray(alphas.reshape(-1)[sl]), tau)
        finite.append((e0, m["finite"]))
        dev_f.append(m["forget_loss"].reshape(e1 - e0, n_per_epoch).mean(1))
        dev_r.append(m["retain_loss"].reshape(e1 - e0, n_per_epoch).mean(1))
        if checkpointer is not None:
            _check_finite(finite[-1:], n_per_epoch)
            hist_f += np.asarray(dev_f.pop()).tolist()
            hist_r += np.asarray(dev_r.pop()).tolist()
            taus = [float(t) for t in taus]
            checkpointer.save(e1, state, {**(meta or {}), "gradtau": {
                "epoch": e1, "run": run_id, "tau": taus, "forget_loss": hist_f,
                "retain_loss": hist_r}}, force=True)
    # Without a checkpointer everything stays on device until here: no host sync in the loop.
    _check_finite(finite, n_per_epoch)
    for f_, r_ in zip(dev_f, dev_r):
        hist_f += np.asarray(f_).tolist()
        hist_r += np.asarray(r_).tolist()
    jax.block_until_ready(state.params)
    info = {"steps": T, "epochs": E, "batches_per_epoch": n_per_epoch, "alpha0": alpha0,
            "alpha_clamped": clamped, "tau_mode": mode if alpha0 > 0 else None,
            "tau": [float(t) for t in taus],
            "forget_loss": [float(v) for v in hist_f] if alpha0 > 0 else [],
            "retain_loss": [float(v) for v in hist_r], "resumed_from": start}
    return state.params, info


def _check_finite(chunks: list, n_per_epoch: int) -> None:
    for e0, fin in chunks:
        fin = np.asarray(fin)
        if not fin.all():
            bad = e0 * n_per_epoch + int(np.argmin(fin))
            raise NonFiniteError(
                f"∇τ: non-finite loss or parameters at step {bad} (forget-epoch "
                f"{bad // n_per_epoch}, batch pair {bad % n_per_epoch}); stopped without "
                "returning or saving parameters. Check the data for NaN/inf or lower the "
                "learning rate")
