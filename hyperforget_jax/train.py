"""Classifier training: pure pieces (a per-example loss, an opt-in NaN guard, one step), the
ways to compile a step (``jax.jit``, ``jax.pmap``, ``jax.jit`` over a ``("data",)`` mesh) and
the mesh / member helpers the drivers share. The drivers ``fit`` / ``fit_fleet`` /
``fit_stream`` (:mod:`hyperforget_jax.train_run`) are re-exported here.

    state, metrics = step(state, (x, y))

The NaN guard is opt-in, the optax way: :func:`skip_nonfinite` wraps any optimiser so that an
update whose gradients are NaN/inf is skipped (the parameters and optimiser state are kept). The
library's recipes (:func:`make_optimizer`, ∇τ's optimiser) opt in; the drivers then raise
:class:`NonFiniteError` naming the first bad step, before anything is checkpointed.

Compiled programs belong to the model (:meth:`~hyperforget_jax.models.Architecture.program`):
learning rate and weight decay are traced, so one program serves every recipe with the same
shapes, and dropping a user's model frees them.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
import weakref
from collections.abc import Mapping
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from hyperforget_jax import params as P_, xla
from hyperforget_jax.config import FLOAT32_MAX, INT32_MAX, SEED_LIMIT, check_config, field
from hyperforget_jax.errors import ArchitectureError, ConfigError, DataError
from hyperforget_jax.metrics import at_least_float32, label_ids, nan_where_invalid
from hyperforget_jax.microbatch import local_params
from hyperforget_jax.models import ARCHITECTURES, as_model, is_import_path, model_of

Params = Any
Batch = tuple[jax.Array, jax.Array]
Model = Any  # anything hf.as_model takes


class TrainState(NamedTuple):
    """Everything a step updates: a plain pytree, so it jits, vmaps, pmaps and checkpoints."""

    step: jax.Array
    params: Params
    opt_state: Any


def check_schedule(epochs: int, batch_size: int, lr: float) -> None:
    """Raises ``ConfigError`` naming the bad value among epochs, batch size and learning rate
    (shared by every training recipe: classifiers, GANs)."""
    if (isinstance(epochs, bool) or not isinstance(epochs, (int, np.integer)) or epochs < 0
            or epochs > INT32_MAX):
        raise ConfigError(f"epochs must be >= 0 and <= {INT32_MAX} (an integer), got "
                          f"{epochs!r}")
    if (isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer))
            or batch_size < 1 or batch_size > INT32_MAX):
        raise ConfigError(f"batch_size must be >= 1 and <= {INT32_MAX} (an integer), got "
                          f"{batch_size!r}")
    if not is_learning_rate(lr):
        raise ConfigError(f"learning rate must be a positive number{zero_in_float32(lr)}, "
                          f"got {lr!r}")


def is_learning_rate(lr) -> bool:
    """Whether ``lr`` is a number > 0 (not a bool) that is finite and not 0 in float32, where
    it runs (``lr=1e-46`` passed "> 0" and trained nothing)."""
    # (lr <= FLOAT32_MAX first: np.isfinite raised a TypeError for an int past float64's range)
    return (not isinstance(lr, bool) and isinstance(lr, (int, float, np.floating)) and lr > 0
            and lr <= FLOAT32_MAX and bool(np.isfinite(lr)) and np.float32(lr) != 0)


def zero_in_float32(lr) -> str:
    """A note for a refused learning rate that is > 0 but 0 in float32, else ''."""
    try:
        tiny = 0 < lr and np.float32(lr) == 0
    except (TypeError, ValueError, OverflowError):
        return ""
    return " that float32 holds (this one is 0 in float32, below 1.4e-45)" if tiny else ""


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Classifier training recipe (also the Retrain recipe: same config on D_r).

    The defaults train the 784→256→256→10 MLP on MNIST-5k's 3,500 training images to ≈100%
    train / ≈94% test accuracy in a few seconds on 2 CPU cores::

        hyperforget train --run-dir runs/original

    Attributes:
      arch: the model: a registered name (gpt_mlp, mlp, cnn, resnet18) or an import path
        ``pkg.module:Name`` of your own Flax module [ours].
      epochs: passes over the training set [ours: 20 reaches ≈100% train accuracy].
      batch_size: images per step; the ragged tail of an epoch is dropped [ours].
      lr: AdamW learning rate [ours].
      weight_decay: AdamW weight decay [ours].
      seed: initialisation and batch order (an integer in [0, 2**32)).
    """

    arch: str = field("mlp")
    epochs: int = field(20, ge=0)
    batch_size: int = field(128, ge=1)
    lr: float = field(1e-3, gt=0, label="learning rate")
    weight_decay: float = field(1e-4, ge=0)
    seed: int = field(0, ge=0, lt=SEED_LIMIT)

    def __post_init__(self):
        check_config(self)
        if self.arch not in ARCHITECTURES and not is_import_path(self.arch):
            raise ConfigError(f"TrainConfig.arch: unknown architecture {self.arch!r}; choose "
                              f"one of {', '.join(ARCHITECTURES)} or give an import path "
                              "'pkg.module:Name'")

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


# --- pure pieces ------------------------------------------------------------------------------

def skip_nonfinite(tx: optax.GradientTransformation) -> optax.GradientTransformation:
    """The opt-in NaN guard: ``tx``, except that an update whose gradients hold NaN/inf is
    skipped (zero update, inner state kept), however many in a row.

    ``optax.apply_if_finite`` that never gives up; read the last step's flag with
    :func:`update_was_finite`. It sees the gradients only: finite gradients times a huge
    learning rate can still overflow the parameters, which :func:`apply_step` (and this
    package's drivers) also check; a loop of your own should check them too.

    >>> tx = skip_nonfinite(optax.sgd(0.1))
    >>> p = jnp.ones(2); s = tx.init(p)
    >>> u, s = tx.update(jnp.array([jnp.nan, 1.0]), s, p)
    >>> u.tolist(), bool(update_was_finite(s))
    ([0.0, 0.0], False)
    """
    if not (callable(getattr(tx, "init", None)) and callable(getattr(tx, "update", None))):
        # (an AttributeError from optax's wrapper, at the first init)
        raise ConfigError(f"skip_nonfinite wraps an optax.GradientTransformation, got "
                          f"{type(tx).__name__}; pass e.g. skip_nonfinite(optax.adamw(1e-3))")
    return optax.apply_if_finite(tx, max_consecutive_errors=np.iinfo(np.int32).max)


def update_was_finite(opt_state: Any) -> jax.Array:
    """Whether the outermost :func:`skip_nonfinite` (or ``optax.apply_if_finite``) guards in
    ``opt_state`` all applied their update, wherever they sit: at the top, or inside
    ``optax.chain``, ``inject_hyperparams``, :func:`.baselines.masked_updates` (True when there
    is none). Only a guard at the top was read: one a user's chain held inside reported every
    skipped update as applied, so a loop that keeps its ∇τ state on a skipped step ran α's
    schedule a step ahead of the learning rate's. Every guard is read, not the first in tree
    order: ``optax.multi_transform`` with one guard per group skips one group's update alone,
    and a flag read from the other group reported that step as applied.

    A guard inside ``optax.MultiSteps`` is not read (True): it runs only every k-th call, so
    its flag would be stale on the calls between; wrap the ``MultiSteps`` in
    :func:`skip_nonfinite` instead (a skipped call then leaves its accumulator untouched)."""
    stop = (optax.ApplyIfFiniteState, optax.MultiStepsState)
    guards = [s for s in jax.tree.leaves(opt_state, is_leaf=lambda s: isinstance(s, stop))
              if isinstance(s, optax.ApplyIfFiniteState)]
    return functools.reduce(jnp.logical_and, [g.last_finite for g in guards],
                            jnp.array(True))


def state_stayed_finite(new_state: Any, old_state: Any) -> jax.Array:
    """Whether the optimiser state's update left every finite float value finite. A finite
    gradient whose square overflows float32 (|g| > 1.8e19) set Adam's ``nu`` to inf: that
    weight's update was 0 in every later step, while the loss and parameters stayed finite and
    the step counted as applied (a checkpoint then refused the state, a run without one
    returned it). Values that were not finite before (``reduce_on_plateau``'s initial best
    value, inf) are not read."""
    flags = [jnp.all(jnp.isfinite(n) | ~jnp.isfinite(o))
             for n, o in zip(jax.tree.leaves(new_state), jax.tree.leaves(old_state))
             if jnp.issubdtype(jnp.result_type(n), jnp.floating)
             and jnp.shape(n) == jnp.shape(o)]
    return jnp.all(jnp.stack(flags)) if flags else jnp.array(True)


def label_ce(logits: jax.Array, y: jax.Array) -> jax.Array:
    """optax's per-example softmax cross-entropy, NaN where a label lies outside 0..K-1.

    optax reads a negative label as a class counted from the end (−1: the last), so a −1
    "ignore" marker from a data loader trained towards the last class without a word, in every
    step and objective built on it; a label past the last class was NaN already. NaN is what
    the steps' guards stop on (a trace-time check cannot see traced labels).

    The loss is taken in at least float32 (a bfloat16 model's logits too, as the evaluation
    takes them: in bfloat16 most small losses read exactly 0), and labels narrower than int32
    are compared in int32 (:func:`.metrics.label_ids`: uint8 labels of 256 classes were all
    NaN)."""
    y = label_ids(y)
    ce = optax.softmax_cross_entropy_with_integer_labels(at_least_float32(logits), y)
    return nan_where_invalid(ce, (y >= 0) & (y < jnp.shape(logits)[-1]))


def per_example_ce(apply_fn: Callable) -> Callable:
    """``loss_fn(params, (x, y)) -> (B,)`` per-example softmax cross-entropy of a model.

    >>> loss_fn = per_example_ce(lambda p, x: x @ p)
    >>> loss_fn(jnp.eye(3), (jnp.eye(3), jnp.array([0, 1, 2]))).shape
    (3,)
    """
    def loss_fn(params, batch):
        x, y = xy_batch(batch, "per_example_ce")
        logits = apply_fn(params, x)
        return label_ce(logits, checked_labels(logits, y, "per_example_ce"))
    return loss_fn


def checked_labels(logits: Any, y: Any, who: str) -> Any:
    """``y`` unless the model's output is not logits with a class axis, or ``y`` is not integer
    class ids of the logits' leading shape. Shapes and dtypes are static: checked while tracing,
    nothing enters the program. A (B, 1) label column from a data loader failed inside optax
    ("indices and arr must have the same number of dimensions; 3 vs. 2"), one-hot labels as a
    dtype error; a model's dict or (B,) output was told to pass labels of shape ()."""
    shape = getattr(logits, "shape", None)
    if shape is None or not hasattr(logits, "dtype") or len(shape) == 0 or (
            len(shape) == 1 and tuple(shape) == tuple(jnp.shape(y))) or (
            len(shape) > jnp.ndim(y) + 1):
        got = f"a {type(logits).__name__}" if shape is None else f"shape {tuple(shape)}"
        raise ArchitectureError(
            f"{who}: the model returned {got}, not logits with a class axis (batch, "
            "num_classes); return only the logits (not a tuple or dict, one value per example "
            "or a (batch, 1, K) array), e.g. apply_fn = lambda p, x: net.apply({'params': p}, "
            "x)[0]")
    if jnp.shape(y) != tuple(shape)[:-1] or not jnp.issubdtype(jnp.result_type(y),
                                                                jnp.integer):
        raise DataError(f"{who}: labels of shape {jnp.shape(y)} and dtype "
                        f"{jnp.result_type(y)} for logits of shape {tuple(shape)}; pass integer "
                        f"class ids of shape {tuple(shape)[:-1]}: y[:, 0] for a (B, 1) column, "
                        "y.argmax(-1) for one-hot labels, y.astype(jnp.int32) for whole-number "
                        "floats")
    return y


def xy_batch(batch: Batch, who: str) -> tuple[Any, Any]:
    """``batch`` as ``(x, y)`` (a pair, or any object that unpacks into two, e.g. a user's batch
    class with ``__iter__``), or a :class:`ConfigError`: a dict batch ``{"image", "label"}``
    was unpacked into its two *keys* (the model was applied to the string "image": a bare
    TypeError), a 3-tuple ``(x, y, w)`` failed with "too many values to unpack"."""
    return tuple_batch(batch, ("x", "y"), who,
                       fix="write your own loss_fn(params, batch) -> (B,) for another form "
                           "(e.g. lambda p, b: per_example_ce(apply_fn)(p, (b['image'], "
                           "b['label'])))")


def tuple_batch(batch: Batch, fields: tuple[str, ...], who: str, fix: str) -> tuple:
    """``batch`` as a tuple of ``len(fields)`` items (a tuple or list, or any object that
    unpacks into that many), or a :class:`ConfigError` naming the form ``who`` takes and
    ``fix``. Checked while tracing: nothing enters a compiled program."""
    n = len(fields)
    if isinstance(batch, (tuple, list)) and len(batch) == n:
        return tuple(batch)
    if not isinstance(batch, (Mapping, str, bytes, jax.Array, np.ndarray)):
        # A user's batch class that unpacks into n items (``__iter__``), as ``x, y = batch``
        # took it; a Mapping (a FrozenDict too) would unpack into its keys.
        try:
            items = tuple(batch)
        except TypeError:
            items = ()
        if len(items) == n:
            return items
    what = (f"a dict with keys {sorted(map(str, batch))}" if isinstance(batch, Mapping)
            else f"a {type(batch).__name__}" + (f" of {len(batch)}" if isinstance(
                batch, (tuple, list)) else ""))
    form = "(" + ", ".join(fields) + ")"
    raise ConfigError(f"{who} takes batches {form}, got {what}; pass {form}, or {fix}")


def make_optimizer(cfg: TrainConfig, lr: Any = None, weight_decay: Any = None
                   ) -> optax.GradientTransformation:
    """AdamW of the recipe, wrapped in :func:`skip_nonfinite`. ``lr`` / ``weight_decay``
    override the config's values (traced values inside the compiled drivers)."""
    lr = cfg.lr if lr is None else lr
    wd = cfg.weight_decay if weight_decay is None else weight_decay
    return skip_nonfinite(optax.adamw(lr, weight_decay=wd))


def init_state(arch: Model, tx: optax.GradientTransformation, key: jax.Array | None,
               params: Params | None = None) -> TrainState:
    """A fresh :class:`TrainState` of ``params`` (``model.init(key)`` when None). Given
    parameters are copied: the compiled steps donate their state (``jit_step``,
    ``sharded_step``, ``sharded_gradtau_step``), and a state holding the caller's own arrays
    deleted them at the first step (an original needed afterwards for Retrain and the
    attacks: "Array has been deleted")."""
    model = as_model(arch)
    params = model.init(key) if params is None else jax.tree.map(jnp.array, params)
    check_trainable_dtypes(params, model.name)
    return TrainState(jnp.zeros((), jnp.int32), params, tx.init(params))


def check_trainable_dtypes(params: Params, name: str) -> None:
    """Raises ArchitectureError for 16-bit floating-point parameters: the trainers' optimisers
    take their learning rate as a float32 array (traced, for sweeps), which turns a bf16/f16
    parameter's update into float32 and crashes optax's NaN guard with a bare TypeError."""
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        dtype = jnp.result_type(leaf)
        if jnp.issubdtype(dtype, jnp.floating) and jnp.finfo(dtype).bits < 32:
            raise ArchitectureError(
                f"parameters of {name} are {dtype} (at {jax.tree_util.keystr(path)}); fit and "
                "the unlearning methods train float32 (or float64) parameters only: keep "
                "float32 parameters and compute in low precision, e.g. nn.Dense(..., "
                f"param_dtype=jnp.float32, dtype=jnp.{dtype}) (evaluation takes {dtype} "
                "parameters as they are)")


def cross_entropy_loss(params: Params, apply_fn: Callable, x: jax.Array, y: jax.Array):
    """Mean cross-entropy and accuracy of one batch (the loss every trainer here minimises)."""
    logits = apply_fn(params, x)
    loss = label_ce(logits, y).mean()
    return loss, jnp.mean(jnp.argmax(logits, -1) == y)


def mean_cross_entropy(model: Model, params: Params, x: jax.Array, y: jax.Array
                       ) -> jax.Array:
    """Jitted mean cross-entropy of ``model`` (an adapter, its ``.apply`` or any model) on
    ``(x, y)``; compiled once per model (the program is the model's own)."""
    m = model_of(model)
    fn = m.program("mean_ce", lambda: xla.jit(
        lambda p, xx, yy: cross_entropy_loss(p, m.apply, xx, yy)[0]))
    return fn(params, x, y)


def guarded_apply(params: Params, opt_state: Any, grads: Params, loss: jax.Array,
                  tx: optax.GradientTransformation) -> tuple[Params, Any, jax.Array]:
    """Applies ``grads`` unless the loss, the new parameters or the new optimiser state are
    non-finite (:func:`state_stayed_finite`), in which case the old parameters and optimiser
    state are kept. Returns (params, opt_state, finite).
    The explicit guard of the hand-written steps (GAN, hypernetwork, :func:`make_train_step`);
    the composable alternative is :func:`skip_nonfinite`."""
    updates, new_opt = tx.update(grads, opt_state, params)
    new_params = optax.apply_updates(params, updates)
    finite = (jnp.isfinite(loss) & P_.all_finite(new_params) & update_was_finite(new_opt)
              & state_stayed_finite(new_opt, opt_state))
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
    return keep(new_params, params), keep(new_opt, opt_state), finite


def guarded_update(state: TrainState, grads: Params, loss: jax.Array,
                   tx: optax.GradientTransformation) -> tuple[TrainState, jax.Array]:
    """:func:`guarded_apply` on a :class:`TrainState` (the step only advances when applied).
    Returns (state, finite)."""
    params, opt_state, finite = guarded_apply(state.params, state.opt_state, grads, loss, tx)
    return TrainState(jnp.where(finite, state.step + 1, state.step), params, opt_state), finite


def apply_step(state: TrainState, grads: Params, loss: jax.Array,
               tx: optax.GradientTransformation) -> tuple[TrainState, jax.Array]:
    """One optimiser update of a :class:`TrainState` with no guard of its own (wrap ``tx`` in
    :func:`skip_nonfinite` for one). Returns (state, finite): ``finite`` is False when the
    loss was non-finite, the guard skipped the update, or the update itself made the parameters
    non-finite (finite gradients times a huge learning rate: ``skip_nonfinite`` only sees the
    gradients, so a run's last step would otherwise return NaN/inf parameters unflagged); the
    step only advances when True."""
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    finite = (jnp.isfinite(loss) & update_was_finite(opt_state) & P_.all_finite(params)
              & state_stayed_finite(opt_state, state.opt_state))
    return TrainState(state.step + finite.astype(state.step.dtype), params, opt_state), finite


def make_train_step(apply_fn: Callable, tx: optax.GradientTransformation,
                    axis_name: str | None = None, *, guard: bool = True) -> Callable:
    """The pure training step ``(state, (x, y)) -> (state, metrics)``.

    Args:
      apply_fn: ``apply_fn(params, x) -> logits``.
      tx: an optax optimiser.
      axis_name: set under ``jax.pmap`` or ``jax.shard_map``: gradients and metrics are
        averaged with ``lax.pmean`` over that axis (or tuple of axes), so the update equals the
        single-device one (under ``shard_map`` with ``check_vma``, where autodiff would already
        sum the replicated parameters' gradient, the parameters are differentiated as
        device-varying copies, so the mean is taken once; batches split over an axis it does
        not name are refused: :func:`.microbatch.local_params`).
      guard: keep the old state when the loss or the new parameters are non-finite
        (:func:`guarded_update`); False leaves that to ``tx`` (:func:`skip_nonfinite`).
    """

    def step(state: TrainState, batch: Batch):
        x, y = xy_batch(batch, "make_train_step")
        params = local_params(state.params, batch, axis_name, "make_train_step",
                              "autodiff would sum the devices' gradients (n_devices × the mean)")
        (loss, acc), grads = jax.value_and_grad(cross_entropy_loss, has_aux=True)(
            params, apply_fn, x, y)
        if axis_name is not None:
            grads, loss, acc = jax.lax.pmean((grads, loss, acc), axis_name)
        update = guarded_update if guard else apply_step
        state, finite = update(state, grads, loss, tx)
        return state, {"loss": loss, "accuracy": acc, "finite": finite}

    record_step_axis(step, axis_name)     # what the wrappers below check
    return step


# --- three ways to compile the same step ------------------------------------------------------

# The axis each step built here was made for, keyed by the step function itself: not an
# attribute, since JAX's transformations copy a function's ``__dict__`` onto their wrappers, and
# ``shard_map(step)`` or ``vmap(step, axis_name=...)``, whose collectives are bound, would carry
# the mark of the step inside them.
_STEP_AXES: "weakref.WeakKeyDictionary[Callable, Any]" = weakref.WeakKeyDictionary()


def record_step_axis(step: Callable, axis_name) -> None:
    """Record the ``axis_name`` a library step was built with (see :func:`check_step_axis`)."""
    _STEP_AXES[step] = axis_name


def _one_axis(name):
    return name[0] if isinstance(name, tuple) and len(name) == 1 else name


def check_step_axis(step: Callable, axis_name: str | None, wrapper: str) -> None:
    """ConfigError when a step built by the library (``make_train_step``,
    ``make_gradtau_step``: they record its axis) has another ``axis_name`` than ``wrapper``
    runs it under (None: one program over all devices, jit or shardings). A ``pmap`` of a step
    without one ran without a word, each device stepping on its own shard (copies 2e-3 apart
    after one step); a step with one under jit failed with JAX's "unbound axis name" NameError.
    A library step under ``jax.jit`` is checked as the step; a user's own step, or a library
    step inside a user's ``shard_map`` / ``vmap`` / other transformation (another function), is
    not checked; a one-name tuple is that name."""
    try:
        # A jit of the step is the step (jit binds no axis; shard_map / vmap do, and stop here).
        # (Wrapped is a runtime-checkable Protocol: a user's class with __call__, lower and
        # trace passes isinstance without a __wrapped__; it is the user's own step.)
        while step not in _STEP_AXES and isinstance(step, (jax.stages.Wrapped, xla._Jitted)):
            inner = getattr(step, "__wrapped__", None)
            if inner is None:
                return
            step = inner
        built = _STEP_AXES.get(step, _STEP_AXES)
    except TypeError:                    # not weak-referenceable: not a step built here
        return
    if built is _STEP_AXES or _one_axis(built) == _one_axis(axis_name):
        return
    if axis_name is None:
        raise ConfigError(f"{wrapper} compiles the single-device step (XLA partitions it), "
                          f"but this step was built with axis_name={built!r}, for pmap / "
                          "shard_map; build it without axis_name")
    drift = (" (without one, each device steps on its own shard and their copies drift apart)"
             if built is None else "")
    raise ConfigError(f"{wrapper} runs the step under the pmap axis {axis_name!r}, but it was "
                      f"built with axis_name={built!r}{drift}; build it with "
                      f"axis_name={axis_name!r}")


def jit_step(step: Callable) -> Callable:
    check_step_axis(step, None, "jit_step")
    return xla.jit(step, donate_argnums=0)


def pmap_step(step_with_axis: Callable, axis_name: str = "batch") -> Callable:
    """``step_with_axis`` must be built with ``make_train_step(..., axis_name=axis_name)``
    (a library-built step with another axis, or none, is refused).
    Inputs: replicated state (:func:`replicate`) and batches split with :func:`shard_batch`."""
    check_step_axis(step_with_axis, axis_name, "pmap_step")
    return jax.pmap(step_with_axis, axis_name=axis_name, donate_argnums=0)


def replicate(tree: Any, n: int | None = None, axis_name: str | None = None,
              devices: Any = None) -> Any:
    """``n`` copies of ``tree`` (default: one per device of ``devices``, else per local device)
    stacked on a new leading axis, for a ``pmap`` step.

    With ``axis_name`` (the step's ``pmap`` axis) the copies are placed as that ``pmap`` places
    its outputs, a mesh over ``devices`` (default: the first ``n`` local devices) named after
    the axis, so the state fed back to the step runs one program; without it they sit on one
    device, and the second step compiles the step again (its input, the first step's output,
    is placed otherwise). Opt-in because copies placed on devices the ``pmap`` does not run on
    (a ``pmap(..., devices=d)`` over other devices than the first, without ``devices=d``
    here) crash jax 0.10.2's ``pmap`` from its second call (a segfault on CPU, not an error);
    copies on one device work with any ``pmap``."""
    if devices is not None:
        if axis_name is None:
            raise ConfigError("replicate: devices= places the copies for a pmap over those "
                              "devices; pass its axis_name= too")
        devices = list(devices)
        n = len(devices) if n is None else n
        if n != len(devices) or len(set(devices)) != n:
            raise ConfigError(f"replicate: n={n} copies for {len(devices)} devices "
                              f"({len(set(devices))} distinct); pass one distinct device per "
                              "copy (the pmap's devices), or leave n out")
    n = jax.local_device_count() if n is None else n
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ConfigError(f"replicate: n={n!r}; pass the number of copies (an integer >= 1), "
                          "one per device of the pmap")
    copies = jax.tree.map(lambda x: jnp.broadcast_to(x, (n, *jnp.shape(x))), tree)
    devices = jax.local_devices()[:n] if devices is None else devices
    if axis_name is None or len(devices) < n:   # more copies than devices: no pmap takes them
        return copies
    return jax.device_put(copies, NamedSharding(Mesh(np.array(devices), (axis_name,)),
                                                P(axis_name)))


def unreplicate(tree: Any) -> Any:
    """Device 0's copy of a replicated (``pmap``) tree. Waits for the steps that made it first:
    the eager gathers dispatched while pmap steps with collectives were still queued aborted
    the process on fake CPU devices (once in a test run, stop 64)."""
    jax.block_until_ready(tree)
    return jax.tree.map(lambda x: x[0], tree)


def shard_batch(batch: Any, n: int | None = None) -> Any:
    """(B, ...) → (n, B/n, ...) for ``pmap``; B must divide evenly."""
    n = jax.local_device_count() if n is None else n

    def split(x):
        if x.shape[0] % n:
            raise ConfigError(f"batch of {x.shape[0]} cannot be split over {n} devices; use a "
                              "batch size divisible by the device count")
        return x.reshape(n, x.shape[0] // n, *x.shape[1:])

    return jax.tree.map(split, batch)


def data_mesh(devices=None) -> Mesh:
    """A 1-D ``("data",)`` mesh over the given (default: all) devices, Auto axes so XLA
    partitions the step from the input shardings alone."""
    devices = jax.devices() if devices is None else list(devices)
    return jax.make_mesh((len(devices),), ("data",), axis_types=(AxisType.Auto,),
                         devices=devices)


def sharded_step(step: Callable, mesh: Mesh) -> Callable:
    """Compiles the single-device step with a replicated state and a batch sharded along
    ``"data"``; XLA inserts the gradient all-reduce. Same numbers as :func:`jit_step`."""
    check_step_axis(step, None, "sharded_step")
    check_mesh(mesh, "sharded_step")
    n = data_axis_size(mesh, "sharded_step")
    repl, data = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    jitted = xla.jit(step, in_shardings=(repl, data), out_shardings=(repl, repl),
                     donate_argnums=0)

    def run(state, batch):
        check_batch_rows(batch, n, "sharded_step")
        return jitted(state, batch)
    run.lower, run.trace = jitted.lower, jitted.trace     # (AOT use, as jit_step's)
    return run


def data_axis_size(mesh: Mesh, who: str) -> int:
    """The size of ``mesh``'s ``"data"`` axis, along which the compiled steps shard their
    batches; ConfigError for a mesh without one (JAX's bare "Resource axis: data ... is not
    found in mesh")."""
    if "data" not in mesh.axis_names:
        raise ConfigError(f"{who}: the mesh's axes are {tuple(mesh.axis_names)}, and the step "
                          "shards its batch along an axis named 'data'; build the mesh with "
                          "hf.train.data_mesh(devices) (or name an axis 'data')")
    return int(mesh.shape["data"])


def check_batch_rows(batch: Any, n: int, who: str) -> None:
    """ConfigError unless every array of ``batch`` has a row count divisible by ``n``, the
    mesh's ``"data"`` devices (JAX's IndivisibleError otherwise), as :func:`shard_batch`."""
    for leaf in jax.tree.leaves(batch):
        rows = np.shape(leaf)[0] if np.ndim(leaf) else None
        if rows is not None and rows % n:
            raise ConfigError(f"{who}: a batch of {rows} rows cannot be split over the mesh's "
                              f"{n} 'data' devices; use a batch size divisible by {n}")


def put_sharded(tree: Any, mesh: Mesh, spec: P = P("data")) -> Any:
    check_mesh(mesh, "put_sharded")
    return jax.device_put(tree, NamedSharding(mesh, spec))


# --- epochs, fleets and the training loop -----------------------------------------------------

def scan_epoch(step: Callable) -> Callable:
    """Runs ``step`` over an epoch's batches with ``lax.scan`` (no Python per step).

    Returns ``run(state, x, y, idx) -> (state, metrics)`` with ``idx`` of shape
    (num_batches, batch_size) indexing the on-device dataset ``(x, y)``; metrics are stacked
    per step.
    """

    def run(state, x, y, idx):
        return jax.lax.scan(lambda s, i: step(s, (x[i], y[i])), state, idx)

    return run


def check_mesh(mesh: Any, who: str) -> None:
    """ConfigError unless ``mesh`` is None or a ``jax.sharding.Mesh``: a list of devices (a
    plausible mistake) was an unhashable-type TypeError in the program cache, a Device an
    AttributeError with an empty message."""
    if mesh is not None and not isinstance(mesh, Mesh):
        raise ConfigError(f"{who}: mesh= takes a jax.sharding.Mesh, got a "
                          f"{type(mesh).__name__}; e.g. hf.train.data_mesh(jax.devices()) "
                          "(or jax.make_mesh)")


def auto_mesh(mesh: Mesh) -> tuple[Mesh, str]:
    """``mesh`` with Auto axes (XLA partitions the step from the input shardings; a
    ``jax.make_mesh`` default mesh has Explicit axes) and the name of its data axis: ``"data"``
    when it has one, else its first axis."""
    axis = "data" if "data" in mesh.axis_names else mesh.axis_names[0]
    if any(t != AxisType.Auto for t in mesh.axis_types):
        mesh = Mesh(mesh.devices, mesh.axis_names,
                    axis_types=(AxisType.Auto,) * len(mesh.axis_names))
    return mesh, axis


def effective_batch_size(cfg: TrainConfig, n: int) -> int:
    """``cfg.batch_size`` capped at the training-set size ``n``, with a warning: a larger batch
    would only repeat samples within the batch (each ~batch/n times) [ours]."""
    if cfg.batch_size <= n:
        return cfg.batch_size
    warnings.warn(f"batch_size {cfg.batch_size} is larger than the training set ({n} samples); "
                  f"using batches of {n}", UserWarning, stacklevel=3)
    return n


def shard_rows(mesh: Mesh | None) -> Callable[[Any], Any]:
    """Inside a compiled step: constrain a batch to be split along the mesh's data axis (a
    no-op without a mesh), so every device computes its share of the batch."""
    if mesh is None:
        return lambda tree: tree
    mesh, axis = auto_mesh(mesh)
    sharding = NamedSharding(mesh, P(axis))
    return lambda tree: jax.lax.with_sharding_constraint(tree, sharding)


VECTORIZE = ("vmap", "map")


def over_members(fn: Callable, in_axes: tuple, how: str = "vmap") -> Callable:
    """``fn`` over a leading member axis of the arguments whose ``in_axes`` entry is 0 (the
    others shared), as one program: ``"vmap"`` (``jax.vmap``: members side by side, the fast
    choice on accelerators) or ``"map"`` (``jax.lax.map``: members one after another inside the
    program; on CPU, where XLA's batched matmuls are slower than plain ones, it keeps the
    single-model speed and still saves the per-call dispatch). Same results either way."""
    if how == "vmap":
        return jax.vmap(fn, in_axes=in_axes)
    if how != "map":
        raise ConfigError(f"vectorize must be one of {', '.join(VECTORIZE)}, got {how!r}")

    def mapped(*args):
        batched = tuple(a for a, ax in zip(args, in_axes) if ax is not None)

        def one(member_args):
            it = iter(member_args)
            return fn(*[next(it) if ax is not None else a for a, ax in zip(args, in_axes)])

        return jax.lax.map(one, batched)

    return mapped


# The drivers (fit, fit_fleet, fit_stream and their compiled epochs) live in train_run.py.
from hyperforget_jax.train_run import (compiled_epoch, fit, fit_fleet,  # noqa: E402
                                       fit_stream, global_rows, raise_if_nonfinite)
