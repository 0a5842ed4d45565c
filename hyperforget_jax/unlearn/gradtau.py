"""∇τ unlearning (Trippa et al. 2024, arXiv 2403.14339; METHODS.md §1), as building blocks.

One step on a forget batch B_f and a retain batch B_r::

    L_f = mean loss over B_f        L_r = mean loss over B_r
    L   = α · ReLU(τ − L_f)²  +  (1 − α) · L_r

The ascent on D_f is proportional to the gap τ − L_f and switches off once the forget loss reaches
the "unseen data" level τ.

**Building blocks** (use them inside your own jitted / sharded loop, with your own state
container and any optax optimiser):

* :func:`gradtau_objective` — the loss and its gradient for one batch pair, over *your*
  per-example ``loss_fn(params, batch) -> (B,)``;
* :func:`nabla_tau` — ``GradTau(init, update)``: α as an ``optax.Schedule`` of the ∇τ step count
  and τ refreshed by ``lax.cond`` on that count (:class:`GradTauState`, a NamedTuple), so the
  whole schedule lives in jittable state, not in a host loop;
* :func:`alpha_schedule_fn`, :func:`lr_schedule_fn` — the official per-forget-epoch schedules;
* the NaN guard is opt-in: wrap your optimiser in :func:`hyperforget_jax.train.skip_nonfinite`.

>>> import jax, jax.numpy as jnp, optax
>>> from hyperforget_jax.train import per_example_ce
>>> apply_fn = lambda p, x: x @ p["w"]
>>> params = {"w": jnp.eye(4)}
>>> gt = nabla_tau(per_example_ce(apply_fn), alpha=alpha_schedule_fn(0.5, epochs=2, steps_per_epoch=1),
...              tau=2.0)
>>> tx = optax.adamw(1e-3)
>>> opt_state, gt_state = tx.init(params), gt.init(params)
>>> @jax.jit
... def step(params, opt_state, gt_state, forget_batch, retain_batch):
...     grads, gt_state, m = gt.update(params, gt_state, forget_batch, retain_batch)
...     updates, opt_state = tx.update(grads, opt_state, params)
...     return optax.apply_updates(params, updates), opt_state, gt_state, m
>>> batch = (jnp.eye(4), jnp.arange(4))
>>> params, opt_state, gt_state, m = step(params, opt_state, gt_state, batch, batch)
>>> int(gt_state.count), float(m["alpha"])
(1, 0.5)

The library's runner (:func:`run_gradtau`, :func:`hyperforget_jax.unlearn.unlearn`) is a thin
driver over these pieces: each forget-epoch is a ``lax.scan`` over a host-built, seed-pure
index plan into the on-device data, and runs of 2^j forget-epochs are one compiled call
(compiled once per shape and run length, and owned by the model). On CPU its batches are
computed in chunks of examples (``chunk="auto"``, :mod:`hyperforget_jax.microbatch`) and each
step passes the previous step's ascent flag as ``ascent_hint``.

Schedule [official code, as described in METHODS.md §1; the official repository was not
reachable from here to re-read]: α₀ = (5/3)·|D_f|/|D|; α and the learning rate (AdamW lr 1e-3,
weight decay 0.01, PyTorch ``LinearLR`` to 0.1×) are **held for a whole forget-epoch and stepped
once per forget-epoch**: forget-epoch e of E uses α₀·(1 − e/E) and lr·(1 − 0.9·e/E). Budget
E = int(6·N_r / (2·N_f)) forget-epochs (N = batches per pass; E is 0 when D_f has more than 3×
D_r's batches: the official code then returns the model as it is, ``unlearn`` refuses with a
``ForgetRequestError`` unless ``epochs`` is set [ours]), capped
at ``max_epochs`` = 80 (the split-and-alpha notebook's cap); a forget-epoch is one pass over D_f
with each forget batch paired with the next retain batch; τ refreshed every 5 forget-epochs; no
early stopping. Fine-tune (the ``finetune`` method) runs int(6·N_r / N_f) forget-epochs of
descent on D_r (:func:`finetune_epochs`: 2E or 2E + 1) [official code: the Cifar10 / Cifar100
notebooks' fine-tune cell, ``int((len(retain_loader) / len(forget_loader)) * 6)`` epochs of the
same loop, so its unit is the forget-epoch of N_f retain batches; capped at 2·``max_epochs``
[ours]: the official fine-tune has no cap].

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
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from hyperforget_jax import microbatch, train, xla
from hyperforget_jax.config import check_as_config, check_config, check_count, field, is_number
from hyperforget_jax.data import Dataset, _check_seed, wrapped_batches, wrapped_stream
from hyperforget_jax.errors import ConfigError, DataError, ForgetRequestError
from hyperforget_jax.metrics import at_least_float32
from hyperforget_jax.models import Architecture, model_of

log = logging.getLogger(__name__)

Params = Any
Batch = Any
TAU_MODES = ("auto", "val", "unseen_class", "chance")


@dataclasses.dataclass(frozen=True)
class GradTauConfig:
    """∇τ hyperparameters; the defaults are the paper's (no tuning per request).

    Run it on MNIST-5k (trains or loads the original in ``runs/original`` first)::

        hyperforget unlearn --method gradtau --forget-class 3 --run-dir runs/original

    Measured (MLP, classes 0/3/8 × 3 seeds, the README's full table): forget accuracy 0% like
    Retrain, kept-class test accuracy within 0.15–0.26 points of Retrain's, in 0.13 s against
    0.61–0.62 s for Retrain (median warm calls on an idle 2-core CPU).

    Attributes:
      batch_size: batch of both streams, min(batch_size, |set|) for smaller sets [paper: 256].
      lr: AdamW learning rate at the first forget-epoch [official code: 1e-3].
      weight_decay: AdamW weight decay [official code: 0.01].
      final_lr_fraction: the learning rate decays linearly, once per forget-epoch, to
        lr·final_lr_fraction [official code: LinearLR to 0.1].
      alpha_scale: α₀ = alpha_scale · |D_f| / |D| [paper: 5/3].
      alpha_max: α₀ is clamped to this value, with a warning [ours: 0.95].
      alpha0: override α₀ (``finetune`` uses 0: pure descent on D_r) [ours].
      tau_refresh_epochs: τ recomputed every this many forget-epochs [official code: 5];
        ``tau_mode`` ``val`` only (``chance`` is a constant, ``unseen_class`` measured once:
        another value with either named is refused, not recorded as if it had run; with
        ``auto`` it applies where ``auto`` picks ``val``).
      tau_mode: the loss threshold τ of the ascent: ``val`` (mean CE on the validation set,
        the paper's), ``chance`` (log K), ``unseen_class`` (CE of the forgotten classes on
        kept-class validation inputs) or ``auto`` (chance for class requests, val otherwise);
        the module docstring gives the measurements [ours].
      epochs: override the budget E (None: int(6·N_r / (2·N_f)) [paper]; ``finetune``:
        int(6·N_r / N_f) [official code], :func:`finetune_epochs`).
      max_epochs: cap on the budget E (None: no cap) [official code: 80, the split-and-alpha
        notebook]; ``finetune``'s cap is 2·max_epochs [ours].
    """

    batch_size: int = field(256, ge=1)
    lr: float = field(1e-3, gt=0, label="learning rate")
    weight_decay: float = field(0.01, ge=0)
    final_lr_fraction: float = field(0.1, gt=0, le=1)
    alpha_scale: float = field(5.0 / 3.0, ge=0)
    alpha_max: float = field(0.95, ge=0, le=1)
    alpha0: float | None = field(None, ge=0, le=1)
    tau_refresh_epochs: int = field(5, ge=1)
    tau_mode: str = field("auto", choices=TAU_MODES)
    epochs: int | None = field(None, ge=0)
    max_epochs: int | None = field(80, ge=1)

    def __post_init__(self):
        check_config(self)


# --- the schedule, as plain functions of the request sizes --------------------------------------

def initial_alpha(n_forget: int, n_total: int, scale: float = 5.0 / 3.0,
                  alpha_max: float = 0.95) -> tuple[float, bool]:
    """α₀ = scale·|D_f|/|D| clamped to ``alpha_max``. Returns (α₀, clamped).

    >>> initial_alpha(30, 100)
    (0.5, False)
    """
    if not 0 < n_forget <= n_total:     # a forget set larger than the whole set read α₀ 0.95
        raise ConfigError(f"initial_alpha needs 0 < n_forget <= n_total, got {n_forget} of "
                          f"{n_total}")
    check_as_config(scale, GradTauConfig, "alpha_scale", "initial_alpha", "scale")
    check_as_config(alpha_max, GradTauConfig, "alpha_max", "initial_alpha")
    a = scale * n_forget / n_total
    return (float(alpha_max), True) if a > alpha_max else (float(a), False)


def warn_clamped(n_forget: int, n_total: int, scale: float, alpha_max: float) -> None:
    """The warning of a clamped α₀ (METHODS.md §1: "say so when clamped"), one text for the
    in-memory and the streamed runner: the streamed one only set ``info["alpha_clamped"]``."""
    log.warning("∇τ: α₀ = %.3f·|D_f|/|D| = %.3f exceeds %.2f; clamped to %.2f", scale,
                scale * n_forget / n_total, alpha_max, alpha_max)


def _check_batch_counts(n_retain: Any, n_forget: Any, max_epochs: Any, who: str) -> None:
    """The budgets' counts: batches >= 1 each (0 forget batches divided by zero; a negative
    count gave a negative budget), the cap >= 1 or None (GradTauConfig.max_epochs')."""
    check_count(n_retain, f"{who}: n_retain_batches", " (a batch count)")
    check_count(n_forget, f"{who}: n_forget_batches", " (a batch count)")
    if max_epochs is not None:
        check_count(max_epochs, f"{who}: max_epochs", " (or None: no cap)")


def budget_epochs(n_retain_batches: int, n_forget_batches: int,
                  max_epochs: int | None = None) -> int:
    """The paper's budget E = int(6·N_r / (2·N_f)) forget-epochs, optionally capped.

    E is 0 when the forget set has more than 3× the retain set's batches [official code: no
    floor; the run then leaves the model as it is].

    >>> budget_epochs(14, 1), budget_epochs(14, 1, max_epochs=40), budget_epochs(1, 5)
    (42, 40, 0)
    """
    _check_batch_counts(n_retain_batches, n_forget_batches, max_epochs, "budget_epochs")
    e = int(6 * n_retain_batches / (2 * n_forget_batches))
    return e if max_epochs is None else min(e, int(max_epochs))


def finetune_epochs(n_retain_batches: int, n_forget_batches: int,
                    max_epochs: int | None = None) -> int:
    """Fine-tune's budget int(6·N_r / N_f) forget-epochs, optionally capped at 2·``max_epochs``.

    [official code: ``int((len(retain_loader) / len(forget_loader)) * 6)`` in the Cifar10 /
    Cifar100 notebooks' fine-tune cell] It is twice ∇τ's budget *before* rounding, so 2E + 1
    when the fraction of 3·N_r / N_f is at least 1/2, not always 2E. The cap is ours (the
    official fine-tune has none): twice ∇τ's.

    >>> finetune_epochs(13, 2), 2 * budget_epochs(13, 2), finetune_epochs(400, 1, max_epochs=80)
    (39, 38, 160)
    """
    _check_batch_counts(n_retain_batches, n_forget_batches, max_epochs, "finetune_epochs")
    e = int((n_retain_batches / n_forget_batches) * 6)
    return e if max_epochs is None else min(e, 2 * int(max_epochs))


def refuse_zero_budget(epochs: int, cfg: "GradTauConfig", n_forget: int, n_retain: int,
                       who: str) -> None:
    """Raises :class:`ForgetRequestError` when the paper's budget E is 0 and ``cfg.epochs`` was
    not set: the official code then returns the original model, which still remembers D_f;
    ``unlearn`` and the stream never do that silently (an explicit ``epochs=0`` is a no-op)."""
    if epochs == 0 and cfg.epochs is None:
        # In batches (N = ⌈n / min(B, n)⌉), as the budget counts them: "the forget set (700)
        # is more than 3x the retain set (100)" ran E = 1 with B = 256 (3 batches against 1).
        n_f = math.ceil(n_forget / min(cfg.batch_size, n_forget))
        n_r = math.ceil(n_retain / min(cfg.batch_size, n_retain))
        budget = ("the official code's fine-tune budget int(6·N_r/N_f)" if who == "finetune"
                  else "the paper's budget E = int(6·N_r/(2·N_f))")
        raise ForgetRequestError(
            f"{who}: the forget set's {n_f} batches (N_f, {n_forget} samples) against the "
            f"retain set's {n_r} (N_r, {n_retain} samples) make {budget} "
            "0, and the model would be returned unchanged; set epochs=N explicitly "
            "(GradTauConfig(epochs=N); on the CLI --config.epochs=N), or use retrain")


def alpha_schedule_fn(alpha0: Any, epochs: Any, steps_per_epoch: int) -> optax.Schedule:
    """α as an ``optax.Schedule`` of the ∇τ step count: α₀·(1 − e/E) during forget-epoch
    e = step // steps_per_epoch, 0 from e = E on [official code: held per forget-epoch].
    ``alpha0`` and ``epochs`` may be traced values, or arrays of one value per member (a
    fleet's schedules, broadcast against each other).

    >>> s = alpha_schedule_fn(0.5, epochs=2, steps_per_epoch=3)
    >>> [round(float(s(t)), 3) for t in (0, 2, 3, 5, 6)]
    [0.5, 0.5, 0.25, 0.25, 0.0]
    """
    _check_steps_per_epoch(steps_per_epoch, epochs)
    _check_alpha(alpha0, "alpha0", scalar=False)

    def schedule(count):
        return alpha0 * (1.0 - _epoch_fraction(count, epochs, steps_per_epoch))
    return schedule


def lr_schedule_fn(lr: Any, epochs: Any, steps_per_epoch: int,
                   final_lr_fraction: Any = 0.1) -> optax.Schedule:
    """The learning rate as an ``optax.Schedule``: lr·(1 − (1 − f)·e/E) during forget-epoch
    e = step // steps_per_epoch [official code: PyTorch ``LinearLR(start_factor=1,
    end_factor=f, total_iters=E)`` stepped once per forget-epoch]. ``lr``, ``epochs`` and
    ``final_lr_fraction`` may be traced values, or arrays of one value per member.

    >>> s = lr_schedule_fn(1e-3, epochs=2, steps_per_epoch=3)
    >>> [round(float(s(t)), 6) for t in (0, 3, 6)]
    [0.001, 0.00055, 0.0001]
    """
    _check_steps_per_epoch(steps_per_epoch, epochs)
    # As GradTauConfig refuses them: a final fraction of −1 made the last forget-epoch's
    # rate negative (ascent on D_r), a NaN lr or fraction made every parameter NaN.
    # Arrays of per-member values stay fine, as for α₀ (stop 63's check refused them).
    check_as_config(lr, GradTauConfig, "lr", "lr_schedule_fn", per_member=True)
    check_as_config(final_lr_fraction, GradTauConfig, "final_lr_fraction", "lr_schedule_fn",
                    per_member=True)

    def schedule(count):
        return lr * (1.0 - (1.0 - final_lr_fraction)
                     * _epoch_fraction(count, epochs, steps_per_epoch))
    return schedule


def _concrete(value: Any) -> Any:
    """A concrete 0-d integer array as an ``int``; other values as they are (a tracer, or a
    value the caller's check refuses)."""
    if (isinstance(value, (jax.Array, np.ndarray)) and not isinstance(value, jax.core.Tracer)
            and value.ndim == 0 and np.issubdtype(value.dtype, np.integer)):
        return int(value)
    return value


def _check_count_unless_traced(value: Any, what: str, unit: str = "") -> None:
    """:func:`check_count` for a concrete value (a JAX or NumPy scalar included); a traced one
    is the runner's, checked where it was made."""
    if not isinstance(value, jax.core.Tracer):
        check_count(_concrete(value), what, unit)


def _check_steps_per_epoch(steps_per_epoch: Any, epochs: Any) -> None:
    """Concrete values only (traced ones are the runner's, already checked): a steps_per_epoch
    of 0 would make ``count // 0`` = -1 in XLA (α and the learning rate above their start); a
    float one (``n_f / B``) gave a schedule of its own (α 0 after half the forget-epochs), 0.0 a
    NaN α, and a JAX scalar 0 passed the check."""
    _check_count_unless_traced(steps_per_epoch, "steps_per_epoch",
                               " (batches per forget-epoch: math.ceil(n_f / B))")
    epochs = _concrete(epochs)
    if isinstance(epochs, jax.core.Tracer):
        return
    # 2.5 gave a schedule of its own (α 0.5, 0.3, 0.1, 0), True ran as 1, "3" failed at the
    # first call inside jnp.minimum. An array holds one E per member (each checked).
    e = np.asarray(epochs, np.float64) if is_number(epochs) else None
    if (isinstance(epochs, bool) or e is None or not np.all(np.isfinite(e))  # (inf, NaN)
            or np.any(e < 0) or np.any(e != np.round(e))):
        raise ConfigError(f"epochs (forget-epochs E) must be an integer >= 0, got {epochs!r}")


def _epoch_fraction(count, epochs, steps_per_epoch):
    """e/E of the forget-epoch e = count // steps_per_epoch, capped at 1 (E = 0: 1 from the
    first step, so α is 0 and the learning rate at its final value, as for e >= E)."""
    e = jnp.minimum(count // steps_per_epoch, epochs)
    return jnp.where(jnp.asarray(epochs) > 0, e / jnp.maximum(epochs, 1), 1.0)


def gradtau_tx(lr: Any, weight_decay: Any, final_lr_fraction: Any, epochs: Any,
               steps_per_epoch: int) -> optax.GradientTransformation:
    """∇τ's optimiser: AdamW with :func:`lr_schedule_fn`, behind the opt-in NaN guard."""
    return train.skip_nonfinite(optax.adamw(
        lr_schedule_fn(lr, epochs, steps_per_epoch, final_lr_fraction),
        weight_decay=weight_decay))


# Legacy per-step schedules (the legacy :func:`.gradtau_run.compiled_forget_epoch` and the
# benchmarks that compare against older runs still use them; the runners do not).

def alpha_schedule(alpha0: float, total_steps: int) -> np.ndarray:
    """α at every step, decaying per *step*: linear from α₀ at step 0 towards 0 at
    ``total_steps`` (the pre-official schedule; the runner uses :func:`alpha_schedule_fn`)."""
    return (alpha0 * (1.0 - np.arange(total_steps) / max(total_steps, 1))).astype(np.float32)


def lr_schedule(total_steps: int, lr: float = 1e-3, final_lr_fraction: float = 0.1
                ) -> optax.Schedule:
    """Linear *per step* from ``lr`` at step 0 to ``lr·final_lr_fraction`` at ``total_steps``
    (legacy; see :func:`lr_schedule_fn`)."""
    return optax.linear_schedule(lr, lr * final_lr_fraction, max(1, int(total_steps)))


def make_gradtau_optimizer(total_steps: int, lr: float = 1e-3, weight_decay: float = 0.01,
                           final_lr_fraction: float = 0.1) -> optax.GradientTransformation:
    """AdamW (weight decay 0.01) with the per-step :func:`lr_schedule` (legacy)."""
    return optax.adamw(lr_schedule(total_steps, lr, final_lr_fraction),
                       weight_decay=weight_decay)


def gradtau_loss(l_forget: jax.Array, l_retain: jax.Array, tau: jax.Array,
                 alpha: jax.Array) -> jax.Array:
    """L = α·ReLU(τ − L_f)² + (1 − α)·L_r on precomputed mean losses.

    >>> float(gradtau_loss(1.0, 0.5, 3.0, 0.25))
    1.375
    """
    return alpha * jax.nn.relu(tau - l_forget) ** 2 + (1.0 - alpha) * l_retain


# --- the building blocks --------------------------------------------------------------------------

def _mean_loss(loss_fn: Callable) -> Callable:
    return lambda params, batch: jnp.mean(loss_fn(params, batch))


def gradtau_objective(loss_fn: Callable, params: Params, forget_batch: Batch,
                      retain_batch: Batch, tau: Any, alpha: Any,
                      axis_name: str | None = None, *, chunk: Any = None,
                      ascent_hint: Any = None) -> tuple[jax.Array, Params, dict]:
    """The ∇τ loss and its gradient for one batch pair.

    The gradient is assembled from the two mean-loss gradients,
    ∇L = −2α·ReLU(τ − L_f)·∇L_f + (1 − α)·∇L_r, so that across devices (``axis_name`` under
    ``pmap`` / ``shard_map``) the means of L_f and ∇L_f are taken *before* the non-linear
    ReLU(·)²: the result equals the single-device objective on the whole batch. Under ``jit``
    with sharded inputs nothing is needed: the means are global.

    Args:
      loss_fn: ``loss_fn(params, batch) -> (B,)`` per-example losses (e.g.
        :func:`hyperforget_jax.train.per_example_ce`).
      params: the current parameters.
      forget_batch, retain_batch: batches in whatever form ``loss_fn`` takes.
      tau: the target forget loss τ.
      alpha: the weight α ∈ [0, 1].
      axis_name: the mapped device axis to average over, if any.
      chunk: on CPU, compute each batch's mean loss and gradient in chunks of examples
        (:mod:`hyperforget_jax.microbatch`: None = whole batches, ``"auto"``, or a number of
        examples). Only for losses of independent examples (no batch statistics); the library's
        own steps pass ``"auto"``.
      ascent_hint: optional boolean (traced), whether the ascent is expected on, e.g. the
        previous step's ``aux["ascent"]``. Used only in chunks: while it is True the forget
        batch's loss and gradient come from one pass instead of a forward and then, if the
        ascent is on, a forward + backward. The result is the same to float rounding either way;
        a wrong hint costs time only.

    Returns:
      ``(loss, grads, aux)`` with ``aux = {"forget_loss", "retain_loss", "gap", "ascent"}``
      (``ascent``: the ascent term was on, −2α·ReLU(τ − L_f) ≠ 0, so the forget batch's
      backward ran).
    """
    loss_fn = microbatch.per_example_losses(loss_fn)
    # Rows split over a shard_map axis that the (replicated) parameters do not vary over: one
    # model, one batch, so the means must be global (a fleet with one model per device is not).
    params = microbatch.local_params(
        params, (forget_batch, retain_batch), axis_name, "gradtau",
        "each device would apply ReLU(τ − L_f)² to its own shard's loss")
    c_f = microbatch.resolve_chunk(chunk, loss_fn, params, forget_batch)
    c_r = microbatch.resolve_chunk(chunk, loss_fn, params, retain_batch)
    objective = functools.partial(_objective, loss_fn, axis_name=axis_name)
    if c_f is None and c_r is None:
        return objective(params, forget_batch, retain_batch, tau, alpha)
    if ascent_hint is None:
        return jax.lax.platform_dependent(
            params, forget_batch, retain_batch, tau, alpha,
            cpu=functools.partial(objective, chunks=(c_f, c_r)), default=objective)
    return jax.lax.platform_dependent(
        params, forget_batch, retain_batch, tau, alpha, jnp.asarray(ascent_hint, bool),
        cpu=functools.partial(objective, chunks=(c_f, c_r)),
        default=lambda *a: objective(*a[:5]))


def _objective(loss_fn, params, forget_batch, retain_batch, tau, alpha, hint=None, *,
               axis_name, chunks=(None, None)):
    c_f, c_r = chunks
    if hint is not None and c_f is not None:
        args = (params, forget_batch, retain_batch, tau, alpha)
        exact = functools.partial(_objective, loss_fn, axis_name=axis_name, chunks=chunks)
        return jax.lax.cond(hint, functools.partial(_speculative, loss_fn, axis_name, chunks),
                            exact, *args)
    # The forget pass keeps its backward for later: once the ascent is off (ReLU(τ − L_f) = 0,
    # or α = 0) its gradient is multiplied by 0, so ``lax.cond`` skips it (≈ 1/3 of a step;
    # under ``vmap`` the cond becomes a select and both run). NaN in L_f takes the backward.
    # In chunks, nothing is kept: the forward runs whole (a forward pass alone keeps no
    # activations), then again in chunks with the backward if needed.
    if c_f is None:
        l_f, forget_vjp = jax.vjp(lambda p: _mean_loss(loss_fn)(p, forget_batch), params)
        ones = jnp.ones_like(l_f)                  # the cotangent, typed as this device's L_f
        forget_grad = lambda: forget_vjp(ones)[0]
    else:
        l_f = _mean_loss(loss_fn)(params, forget_batch)
        forget_grad = lambda: microbatch.chunked_mean_value_and_grad(
            loss_fn, params, forget_batch, c_f)[1]
    l_r, g_r = microbatch.chunked_mean_value_and_grad(loss_fn, params, retain_batch, c_r)
    if axis_name is not None:
        l_f, l_r, g_r = jax.lax.pmean((l_f, l_r, g_r), axis_name)
    tau, alpha, gap, coef = _coefficient(l_f, tau, alpha)
    g_f = jax.lax.cond(coef != 0, forget_grad, lambda: jax.tree.map(jnp.zeros_like, params))
    if axis_name is not None:
        g_f = jax.lax.pmean(g_f, axis_name)
    grads = jax.tree.map(lambda gf, gr: _typed(coef * gf + (1.0 - alpha) * gr, gr), g_f, g_r)
    return _result(l_f, l_r, tau, alpha, gap, coef, grads)


def _speculative(loss_fn, axis_name, chunks, params, forget_batch, retain_batch, tau, alpha):
    """The objective in chunks when the ascent is expected on: the forget loss comes with its
    gradient from one chunked pass (no separate forward), and the gradient is dropped (set to
    0, NaN-safe) if the ascent turns out off. Equal to the exact form to float rounding."""
    c_f, c_r = chunks
    l_f, g_f = microbatch.chunked_mean_value_and_grad(loss_fn, params, forget_batch, c_f)
    l_r, g_r = microbatch.chunked_mean_value_and_grad(loss_fn, params, retain_batch, c_r)
    if axis_name is not None:
        l_f, l_r, g_f, g_r = jax.lax.pmean((l_f, l_r, g_f, g_r), axis_name)
    tau, alpha, gap, coef = _coefficient(l_f, tau, alpha)
    grads = jax.tree.map(lambda gf, gr: _typed(jnp.where(coef != 0, coef * gf, 0)
                                               + (1.0 - alpha) * gr, gr), g_f, g_r)
    return _result(l_f, l_r, tau, alpha, gap, coef, grads)


def _typed(g, like):
    """``g`` in the dtype of ``like`` (a parameter's gradient, typed as the parameter): the
    weights, typed as L_f, promoted a bfloat16 leaf's gradient to float32 (and every leaf to
    float64 under a float64 loss), where ``jax.grad`` keeps the parameter's dtype; optax's
    state then changed type (a scan's carry, ``skip_nonfinite``'s cond refused it)."""
    return g.astype(like.dtype)


def _coefficient(l_f, tau, alpha):
    """τ and α typed as L_f, the gap ReLU(τ − L_f) and the forget gradient's weight −2α·gap."""
    tau = jnp.asarray(tau, l_f.dtype)
    alpha = jnp.asarray(alpha, l_f.dtype)
    gap = jax.nn.relu(tau - l_f)
    return tau, alpha, gap, -2.0 * alpha * gap


def _result(l_f, l_r, tau, alpha, gap, coef, grads):
    return gradtau_loss(l_f, l_r, tau, alpha), grads, {
        "forget_loss": l_f, "retain_loss": l_r, "gap": gap, "ascent": coef != 0}


def tau_dtype(params: Params) -> Any:
    """τ's dtype for ``params``: their float dtype, float32 at least (a float64 model under
    jax_enable_x64 had its τ rounded to float32, and every refresh cast back to it)."""
    floats = [jnp.result_type(l) for l in jax.tree.leaves(params)
              if jnp.issubdtype(jnp.result_type(l), jnp.floating)]
    return jnp.result_type(jnp.float32, *floats)


class GradTauState(NamedTuple):
    """The ∇τ schedule's state: ``count`` = ∇τ steps taken (int32), ``tau`` = the current τ."""

    count: jax.Array
    tau: jax.Array


class GradTau(NamedTuple):
    """``init(params) -> GradTauState``;
    ``update(params, state, forget_batch, retain_batch, *tau_args, ascent_hint=None) ->
    (grads, state, metrics)`` (feed ``grads`` to any optax optimiser; ``ascent_hint``: see
    :func:`gradtau_objective`)."""

    init: Callable[..., GradTauState]
    update: Callable[..., tuple[Params, GradTauState, dict]]


def refresh_tau(state: GradTauState, params: Params, tau_fn: Callable,
                refresh_every: Any | None, *tau_args,
                axis_name: str | None = None) -> GradTauState:
    """``state`` with τ = ``tau_fn(params, *tau_args)`` (no gradient) when ``state.count`` is a
    multiple of ``refresh_every`` (every step count divisible by it; None: only at count 0),
    else unchanged. Jittable: a ``lax.cond`` on the count. Under ``pmap`` / ``shard_map``
    (``axis_name``) τ is averaged over the devices, so every device holds the same τ even when
    ``tau_args`` are split across them (equal shards: the global mean of a mean loss)."""
    def measure():
        tau = jax.lax.stop_gradient(tau_fn(params, *tau_args))
        if jnp.shape(tau) != ():      # else lax.cond's bare TypeError about unequal branches
            raise ConfigError(f"tau_fn returned shape {jnp.shape(tau)}: τ is one number, the "
                              "mean loss of the current model (e.g. loss_fn(p, batch).mean())")
        if axis_name is not None:
            # Under shard_map τ varies over the axes its tau_args are split over; pmean over a
            # named axis it does not vary over was jax's bare ValueError (tau_args split over
            # "data", axis_name=("data", "model")): cast it over every named axis first, as
            # the objective's parameters are (microbatch.local_params).
            own = microbatch.varying_axes(tau)
            missing = tuple(a for a in microbatch.axis_names(axis_name) if a not in own)
            if own and missing:
                tau = jax.lax.pcast(tau, missing, to="varying")
            tau = jax.lax.pmean(tau, axis_name)
        return jnp.asarray(tau, state.tau.dtype)

    if refresh_every is not None:
        _check_count_unless_traced(refresh_every, "refresh_every",
                                   " (or None: only at the first step)")
    every = 0 if refresh_every is None else refresh_every
    due = (state.count == 0) if refresh_every is None else (state.count % every == 0)
    tau = jax.lax.cond(due, measure, lambda: state.tau)
    return GradTauState(state.count, tau)


def nabla_tau(loss_fn: Callable, alpha: Any, *, tau: Any = None, tau_fn: Callable | None = None,
            refresh_every: int | None = None, axis_name: str | None = None,
            chunk: Any = None) -> GradTau:
    """∇τ as a pure ``init`` / ``update`` pair over your per-example loss.

    Args:
      loss_fn: ``loss_fn(params, batch) -> (B,)`` per-example losses.
      alpha: α, a float or an ``optax.Schedule`` of the ∇τ step count
        (:func:`alpha_schedule_fn`).
      tau: a constant τ (e.g. log K for class removal). With ``tau_fn`` it is only the τ that
        ``init`` puts in the state: the first ``update`` (step count 0) always computes τ with
        ``tau_fn``, so no step uses it.
      tau_fn: ``tau_fn(params, *tau_args) -> scalar`` τ of the current model, e.g. the mean loss
        on held-out data; computed at the first step and refreshed inside ``update``
        (``lax.cond`` on the step count).
      refresh_every: steps between τ refreshes (None: only at the first step). The official
        schedule refreshes every 5 forget-epochs: ``5 * steps_per_epoch``.
      axis_name: set under ``pmap`` / ``shard_map`` (see :func:`gradtau_objective`); τ is
        averaged over it too (:func:`refresh_tau`).
      chunk: on CPU, each batch in chunks of examples (see :func:`gradtau_objective`; None,
        the default, computes whole batches; ``"auto"`` suits per-example losses).

    Returns:
      :class:`GradTau`. ``update``'s metrics: ``loss``, ``forget_loss``, ``retain_loss``,
      ``alpha``, ``tau``, ``ascent`` (see :func:`gradtau_objective`).

    Raises:
      ConfigError: neither ``tau`` nor ``tau_fn`` given; ``tau`` not one finite number; a
        constant ``alpha`` outside [0, 1]; ``refresh_every`` not an integer >= 1, or given
        without ``tau_fn`` (a constant τ is never refreshed); at the first ``update``, a
        ``tau_fn`` that does not return one number, or ``tau_args`` without ``tau_fn``.
    """
    if tau is None and tau_fn is None:
        raise ConfigError("gradtau needs tau= (a constant) or tau_fn= (τ of the current model)")
    _check_constants(tau, alpha, measured=tau_fn is not None)
    if tau_fn is None and refresh_every is not None:
        # A constant τ is never refreshed: refresh_every was dropped without a word.
        raise ConfigError(f"refresh_every={refresh_every!r} refreshes τ with tau_fn, but only "
                          "a constant tau= is given; pass tau_fn= (e.g. "
                          "gradtau.val_tau_fn(apply_fn), whose update then takes the held-out "
                          "x, y after retain_batch), or drop refresh_every")
    if refresh_every is not None:
        # Here, not at the first update: "abc" failed there with a bare TypeError, and 2.5
        # ran as a refresh every 5 steps; a JAX scalar 0 refreshed τ at every step (the
        # drivers pass a traced count, checked upstream).
        _check_count_unless_traced(refresh_every, "refresh_every",
                                   " (or None: only at the first step)")
    alpha_fn = alpha if callable(alpha) else (lambda count: alpha)

    def init(params: Params) -> GradTauState:
        # With tau_fn, τ is measured at the first update; until then it is the dtype's largest
        # finite value, so a use before any measurement overflows the loss to inf, which the
        # guards stop on. (It was NaN, then +inf: constants on which jax_debug_nans /
        # jax_debug_infs stopped a healthy init.)
        dtype = tau_dtype(params)
        t0 = jnp.finfo(dtype).max if tau is None else tau
        return GradTauState(jnp.zeros((), jnp.int32), jnp.asarray(t0, dtype))

    def update(params, state, forget_batch, retain_batch, *tau_args, ascent_hint=None):
        if tau_fn is None and tau_args:
            raise ConfigError(f"update got {len(tau_args)} tau_args, which only tau_fn reads, "
                              "but only a constant tau= is given; pass tau_fn= to nabla_tau, "
                              "or drop the arguments after retain_batch")
        state = _as_state(state)
        for batch, what in ((forget_batch, "forget_batch"), (retain_batch, "retain_batch")):
            leaves = jax.tree.leaves(batch)
            if leaves and np.ndim(leaves[0]) and np.shape(leaves[0])[0] == 0:
                # (a reshape error from inside the model; shapes are static: no trace cost)
                raise DataError(f"nabla_tau update: {what} is empty; give it at least one "
                                "example")
        if tau_fn is not None:
            state = refresh_tau(state, params, tau_fn, refresh_every, *tau_args,
                                axis_name=axis_name)
        a = jnp.asarray(alpha_fn(state.count), state.tau.dtype)
        if jnp.shape(a) != ():   # checked while tracing; was a bare TypeError in lax.cond
            raise ConfigError(f"nabla_tau's alpha schedule returned shape {jnp.shape(a)}: α is "
                              "one number per step; for one α₀ per member of a fleet, vmap the "
                              "update over members with a schedule each (alpha_schedule_fn "
                              "of one α₀)")
        loss, grads, aux = gradtau_objective(loss_fn, params, forget_batch, retain_batch,
                                             state.tau, a, axis_name, chunk=chunk,
                                             ascent_hint=ascent_hint)
        metrics = {"loss": loss, "forget_loss": aux["forget_loss"],
                   "retain_loss": aux["retain_loss"], "alpha": a, "tau": state.tau,
                   "ascent": aux["ascent"]}
        return grads, GradTauState(state.count + 1, state.tau), metrics

    return GradTau(init, update)


def _as_state(state: Any) -> GradTauState:
    """``state`` as a :class:`GradTauState`: a checkpoint restored without a target (orbax's
    ``restore(path)``) gives it back as a dict ``{"count", "tau"}``, which failed with a bare
    AttributeError; anything else is refused."""
    if isinstance(state, GradTauState):
        return state
    if isinstance(state, dict) and set(state) == set(GradTauState._fields):
        return GradTauState(**state)
    raise ConfigError(f"update's state is a {type(state).__name__}, not the GradTauState of "
                      "init (count, tau); restore a checkpoint with its target, or pass "
                      "GradTauState(**restored)")


def _check_alpha(alpha: Any, name: str, scalar: bool = True) -> None:
    """Refuses a concrete α that is not a number in [0, 1] (traced values and schedules cannot
    be checked): α > 1 makes the retain weight 1 − α negative (an ascent on D_r), α < 0 turns
    the forget term into descent. ``scalar=False``: an array of per-member α₀'s is fine."""
    if callable(alpha) or isinstance(alpha, jax.core.Tracer):
        return
    if not is_number(alpha):
        raise ConfigError(f"{name}={alpha!r}: α is a number in [0, 1] (or, for nabla_tau, an "
                          "optax.Schedule of the step count)")
    if scalar and np.shape(alpha) != ():
        raise ConfigError(f"{name}= has shape {np.shape(alpha)}: α is one number or an "
                          "optax.Schedule of the step count")
    a = np.asarray(alpha, np.float64)
    if not np.all((0.0 <= a) & (a <= 1.0)):
        bad = float(a) if a.ndim == 0 else a.tolist()
        raise ConfigError(f"{name}={bad!r}: α weighs the forget term against the retain term "
                          "(1 − α) and must lie in [0, 1]")


def _check_constants(tau: Any, alpha: Any, measured: bool) -> None:
    """Refuses a τ that is not one finite number, and a concrete α outside [0, 1]
    (:func:`_check_alpha`; ``measured``: ``tau_fn`` replaces τ at the first step, so only its
    shape matters). None of them fails later with a message: a τ of shape (n,) fails inside
    ``lax.cond`` with a bare TypeError, a NaN τ makes every step NaN (which ``skip_nonfinite``
    then skips, silently)."""
    if tau is not None and not isinstance(tau, jax.core.Tracer) and not is_number(tau):
        raise ConfigError(f"tau={tau!r}: τ is a number (the target forget loss), or pass "
                          "tau_fn= for τ of the current model")
    if tau is not None and np.shape(tau) != ():
        raise ConfigError(f"tau= has shape {np.shape(tau)}: τ is one number (the target forget "
                          "loss); pass a scalar, or tau_fn= for τ of the current model")
    if (tau is not None and not measured and not isinstance(tau, jax.core.Tracer)
            and not np.isfinite(tau)):
        raise ConfigError(f"tau={float(tau)!r}: τ must be finite (the target forget loss)")
    _check_alpha(alpha, "alpha")


# --- the classic step (a TrainState in, a TrainState out) ----------------------------------------

def make_gradtau_step(apply_fn: Callable, tx: optax.GradientTransformation,
                      axis_name: str | None = None, *, guard: bool = True,
                      chunk: Any = "auto") -> Callable:
    """The pure ∇τ step ``(state, forget_batch, retain_batch, tau, alpha[, ascent_hint]) ->
    (state, metrics)`` on a :class:`hyperforget_jax.train.TrainState`, with τ and α given per
    call: :func:`gradtau_objective` over the cross-entropy of ``apply_fn`` plus one ``tx``
    update. In a loop on CPU, pass the previous step's ``metrics["ascent"]`` as ``ascent_hint``
    (it saves a forward pass per step while the ascent stays on; same results).

    Args:
      apply_fn: ``apply_fn(params, x) -> logits``; batches are ``(x, y)``.
      tx: an optax optimiser.
      axis_name: set under ``jax.pmap``: losses, gradients and metrics are ``lax.pmean``-ed.
      guard: keep the old state on a non-finite loss, parameters or optimiser state
        (:func:`hyperforget_jax.train.guarded_update`); False leaves it to ``tx``.
      chunk: on CPU, each batch's cross-entropy and gradient in chunks of examples
        (:mod:`hyperforget_jax.microbatch`; ``"auto"``: by the size of the saved activations,
        None: whole batches).

    Returns:
      ``step``; its metrics are ``loss``, ``forget_loss``, ``retain_loss``, ``finite``,
      ``ascent`` (see :func:`gradtau_objective`).
    """
    loss_fn = train.per_example_ce(apply_fn)

    def step(state: train.TrainState, forget_batch: Batch, retain_batch: Batch,
             tau: jax.Array, alpha: jax.Array, ascent_hint: jax.Array | None = None):
        loss, grads, aux = gradtau_objective(loss_fn, state.params, forget_batch, retain_batch,
                                             tau, alpha, axis_name, chunk=chunk,
                                             ascent_hint=ascent_hint)
        update = train.guarded_update if guard else train.apply_step
        state, finite = update(state, grads, loss, tx)
        return state, {"loss": loss, "forget_loss": aux["forget_loss"],
                       "retain_loss": aux["retain_loss"], "finite": finite,
                       "ascent": aux["ascent"]}

    train.record_step_axis(step, axis_name)      # checked by the wrappers
    return step


def _with_optional_hint(five: Callable, six: Callable) -> Callable:
    """``step(state, forget, retain, tau, alpha, ascent_hint=None)`` calling the compiled
    program of its arity: the wrappers compiled five arguments only, and the documented
    ``ascent_hint`` failed inside JAX ("in_axes ... different lengths of tuple")."""
    def step(state, forget_batch, retain_batch, tau, alpha, ascent_hint=None):
        if ascent_hint is None:
            return five(state, forget_batch, retain_batch, tau, alpha)
        return six(state, forget_batch, retain_batch, tau, alpha, ascent_hint)
    return step


def pmap_gradtau_step(step_with_axis: Callable, axis_name: str = "batch",
                      devices=None) -> Callable:
    """``step_with_axis`` built with ``axis_name``; state replicated (``train.replicate``),
    both batches split with ``train.shard_batch``, τ and α broadcast; an ``ascent_hint`` is
    the previous step's ``metrics["ascent"]`` as it returns it (one per device). The state is
    donated (its buffers reused; ``train.replicate`` copies the parameters). A step of
    :func:`make_gradtau_step` built with another ``axis_name`` (or none) is refused."""
    train.check_step_axis(step_with_axis, axis_name, "pmap_gradtau_step")
    kw = dict(axis_name=axis_name, donate_argnums=0, devices=devices)
    return _with_optional_hint(
        jax.pmap(step_with_axis, in_axes=(0, 0, 0, None, None), **kw),
        jax.pmap(step_with_axis, in_axes=(0, 0, 0, None, None, 0), **kw))


def sharded_gradtau_step(step: Callable, mesh: Mesh) -> Callable:
    """The single-device step over a ``("data",)`` mesh: state, τ, α (and an ``ascent_hint``)
    replicated, both batches sharded along ``"data"`` (``train.put_sharded``); XLA inserts the
    all-reduce. The state is donated (its buffers reused); ``train.init_state`` copies the
    parameters it is given, so the caller's stay readable."""
    train.check_step_axis(step, None, "sharded_gradtau_step")
    train.check_mesh(mesh, "sharded_gradtau_step")
    n = train.data_axis_size(mesh, "sharded_gradtau_step")
    repl, data = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    kw = dict(out_shardings=(repl, repl), donate_argnums=0)
    run = _with_optional_hint(
        xla.jit(step, in_shardings=(repl, data, data, repl, repl), **kw),
        xla.jit(step, in_shardings=(repl, data, data, repl, repl, repl), **kw))

    def checked(state, forget_batch, retain_batch, tau, alpha, ascent_hint=None):
        train.check_batch_rows((forget_batch, retain_batch), n, "sharded_gradtau_step")
        return run(state, forget_batch, retain_batch, tau, alpha, ascent_hint)
    return checked


# --- τ -------------------------------------------------------------------------------------------

def resolve_tau_mode(mode: str, forget_classes: tuple[int, ...] | None) -> str:
    if mode == "auto":
        return "chance" if forget_classes else "val"
    if mode not in TAU_MODES:    # an IndexError in compute_tau
        raise ConfigError(f"tau_mode must be one of {', '.join(map(repr, TAU_MODES))}; "
                          f"got {mode!r}")
    if mode == "unseen_class" and not forget_classes:
        raise ConfigError("tau_mode='unseen_class' needs a class-removal request; use 'val' "
                          "for random subsets")
    return mode


#: Rows of held-out data a τ takes in one forward pass; a larger set (with ``rows=``) is
#: summed over chunks of this many (``lax.map``): one pass over 5,000 32×32×3 images held
#: ≈ 2.8 GB of the ``cnn``'s activations inside the compiled step (benchmarks/bench_scale.py).
TAU_ROWS = 4096


def _row_mean(per_row: Callable, arrays: tuple, rows: int | None) -> jax.Array:
    """Mean of ``per_row(*arrays) -> (n,)`` over the rows of ``arrays``: in one call up to
    ``rows`` rows (or ``rows`` None), else summed over ``lax.map`` chunks of ``rows`` and a
    remainder (for a model whose rows are independent: :func:`.gradtau_run.per_example`)."""
    n = arrays[0].shape[0]
    if rows is None or n <= rows:
        return jnp.mean(per_row(*arrays))
    k = n // rows
    # Sums in float32 at least (a float64 model's τ keeps float64, as in one pass).
    total_of = lambda *c: jnp.sum(at_least_float32(per_row(*c)))
    head = tuple(a[:k * rows].reshape(k, rows, *a.shape[1:]) for a in arrays)
    total = jnp.sum(jax.lax.map(lambda c: total_of(*c), head))
    if n > k * rows:
        total = total + total_of(*(a[k * rows:] for a in arrays))
    return total / n


def val_tau_fn(apply_fn: Callable, rows: int | None = None) -> Callable:
    """``tau_fn(params, x, y)``: the paper's τ, mean cross-entropy on held-out data; with
    ``rows``, a set of more rows is summed in chunks of ``rows`` (:data:`TAU_ROWS`)."""
    if rows is None:
        return lambda params, x, y: train.cross_entropy_loss(params, apply_fn, x, y)[0]
    return lambda params, x, y: _row_mean(
        lambda xx, yy: train.label_ce(apply_fn(params, xx), yy),
        (x, y), rows)


def unseen_class_tau_fn(apply_fn: Callable, rows: int | None = None) -> Callable:
    """``tau_fn(params, x_kept, classes)``: mean over kept-class inputs and forgotten classes c
    of −log p_c(x) (``tau_mode="unseen_class"``); ``rows`` as in :func:`val_tau_fn`."""
    def per_row(params, x, classes):
        logp = jax.nn.log_softmax(apply_fn(params, x))
        return -jnp.mean(logp[:, classes], axis=1)

    def tau_fn(params, x, classes):
        if rows is None:
            logp = jax.nn.log_softmax(apply_fn(params, x))
            return -jnp.mean(logp[:, classes])
        return _row_mean(lambda xx: per_row(params, xx, classes), (x,), rows)
    return tau_fn


def tau_inputs(mode: str, val: Dataset, forget_classes: tuple[int, ...] | None
               ) -> tuple[np.ndarray, ...]:
    """The host arrays τ of ``mode`` is computed from: (x, y) of the validation set for
    ``"val"``, (kept-class x, classes) for ``"unseen_class"``, () for ``"chance"``."""
    if mode == "val":
        return val.x, val.y
    if mode == "unseen_class":
        kept = ~np.isin(val.y, forget_classes)
        if not kept.any():
            raise ConfigError("tau_mode='unseen_class' needs validation samples of kept classes")
        return val.x[kept], np.asarray(forget_classes, np.int32)
    return ()


def compute_tau(mode: str, apply_fn: Callable, params: Params, val: Dataset,
                forget_classes: tuple[int, ...] | None = None) -> float | jax.Array:
    """τ of the current model (no gradient; a device scalar, so the caller need not wait for
    it); ``mode`` as in the module docstring. ``apply_fn`` may be a model or its ``.apply``."""
    mode = resolve_tau_mode(mode, forget_classes)
    if mode == "chance":
        return float(math.log(val.num_classes))
    model = model_of(apply_fn)
    make = val_tau_fn if mode == "val" else unseen_class_tau_fn
    inputs = tau_inputs(mode, val, forget_classes)
    rows = (TAU_ROWS if len(inputs[0]) > TAU_ROWS and per_example(model, params, inputs[0])
            else None)
    fn = model.program(("tau", mode, rows), lambda: xla.jit(make(model.apply, rows)))
    return fn(params, *map(jnp.asarray, inputs))


# --- host-side batch plans ---------------------------------------------------------------------

def plan_batches(n_forget: int, n_retain: int, batch_size: int, epochs: int | None,
                 seed: int, max_epochs: int | None = None
                 ) -> tuple[np.ndarray, np.ndarray, int]:
    """Host-side batch plan: forget indices (E, N_f, B_f), retain indices (E, N_f, B_r), E.

    Pure function of the sizes and the seed (same plan on every machine). ``epochs`` None:
    the budget :func:`budget_epochs` (capped at ``max_epochs``)."""
    for v, what in ((n_forget, "n_forget"), (n_retain, "n_retain"), (batch_size, "batch_size")):
        # (0: a ZeroDivisionError; 1.5: a TypeError from NumPy)
        check_count(v, f"plan_batches: {what}")
    # numpy's "expected non-negative integer" (seed -1) or len() of a key named no argument.
    _check_seed(seed, "plan_batches: seed", ConfigError, limit=False)
    bf, br = min(batch_size, n_forget), min(batch_size, n_retain)
    nf, nr = math.ceil(n_forget / bf), math.ceil(n_retain / br)
    epochs = _concrete(epochs)
    if epochs is not None and (isinstance(epochs, (bool, np.bool_))
                               or not isinstance(epochs, (int, np.integer))
                               or not 0 <= epochs <= 2**31 - 1):
        # 2.7 planned 2 forget-epochs, "3" 3, True 1; -1 and NaN were NumPy's errors
        raise ConfigError(f"plan_batches: epochs (forget-epochs E) must be an integer in "
                          f"[0, 2**31) or None (the budget), got {epochs!r}")
    E = budget_epochs(nr, nf, max_epochs) if epochs is None else int(epochs)
    f_idx = np.stack([wrapped_batches(np.random.default_rng([seed, 1, e]), n_forget, bf)
                      for e in range(E)]) if E else np.zeros((0, nf, bf), np.int64)
    r_idx = (wrapped_stream(seed, 2, n_retain, br, E * nf).reshape(E, nf, br) if E
             else np.zeros((0, nf, br), np.int64))
    return f_idx, r_idx, E


from hyperforget_jax.unlearn.gradtau_run import (compiled_forget_epoch,  # noqa: E402
                                                 per_example, run_gradtau)

__all__ = ["GradTauConfig", "GradTau", "GradTauState", "nabla_tau", "gradtau_objective",
           "refresh_tau", "alpha_schedule_fn", "lr_schedule_fn", "gradtau_tx",
           "initial_alpha", "warn_clamped", "budget_epochs", "finetune_epochs", "plan_batches",
           "gradtau_loss", "compute_tau",
           "make_gradtau_step", "pmap_gradtau_step", "sharded_gradtau_step", "run_gradtau",
           "compiled_forget_epoch", "make_gradtau_optimizer", "alpha_schedule", "lr_schedule",
           "val_tau_fn", "unseen_class_tau_fn", "resolve_tau_mode", "tau_inputs", "Architecture"]
