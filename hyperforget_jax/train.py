"""Classifier training: pure pieces (a per-example loss, an opt-in NaN guard, one step), the
drivers ``fit`` / ``fit_fleet`` / ``fit_stream`` built on them, and the ways to compile a step
(``jax.jit``, ``jax.pmap``, ``jax.jit`` over a ``("data",)`` mesh).

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
from typing import Any, Callable, Iterable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from hyperforget_jax import params as P_
from hyperforget_jax.config import check_config, field
from hyperforget_jax.data import Dataset, batch_indices
from hyperforget_jax.errors import ConfigError, NonFiniteError
from hyperforget_jax.models import ARCHITECTURES, Architecture, as_model, is_import_path, model_of

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
    if isinstance(epochs, bool) or not isinstance(epochs, (int, np.integer)) or epochs < 0:
        raise ConfigError(f"epochs must be >= 0 (an integer), got {epochs!r}")
    if (isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer))
            or batch_size < 1):
        raise ConfigError(f"batch_size must be >= 1 (an integer), got {batch_size!r}")
    if isinstance(lr, bool) or not (isinstance(lr, (int, float, np.floating)) and lr > 0
                                    and np.isfinite(lr)):
        raise ConfigError(f"learning rate must be a positive number, got {lr!r}")


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
      seed: initialisation and batch order (>= 0).
    """

    arch: str = field("mlp")
    epochs: int = field(20, ge=0)
    batch_size: int = field(128, ge=1)
    lr: float = field(1e-3, gt=0, label="learning rate")
    weight_decay: float = field(1e-4, ge=0)
    seed: int = field(0, ge=0)

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
    :func:`update_was_finite`.

    >>> tx = skip_nonfinite(optax.sgd(0.1))
    >>> p = jnp.ones(2); s = tx.init(p)
    >>> u, s = tx.update(jnp.array([jnp.nan, 1.0]), s, p)
    >>> u.tolist(), bool(update_was_finite(s))
    ([0.0, 0.0], False)
    """
    return optax.apply_if_finite(tx, max_consecutive_errors=np.iinfo(np.int32).max)


def update_was_finite(opt_state: Any) -> jax.Array:
    """The ``last_finite`` flag of the outermost :func:`skip_nonfinite` in ``opt_state`` (True
    when there is none)."""
    if isinstance(opt_state, optax.ApplyIfFiniteState):
        return opt_state.last_finite
    return jnp.array(True)


def per_example_ce(apply_fn: Callable) -> Callable:
    """``loss_fn(params, (x, y)) -> (B,)`` per-example softmax cross-entropy of a model.

    >>> loss_fn = per_example_ce(lambda p, x: x @ p)
    >>> loss_fn(jnp.eye(3), (jnp.eye(3), jnp.array([0, 1, 2]))).shape
    (3,)
    """
    def loss_fn(params, batch):
        x, y = batch
        return optax.softmax_cross_entropy_with_integer_labels(apply_fn(params, x), y)
    return loss_fn


def make_optimizer(cfg: TrainConfig, lr: Any = None, weight_decay: Any = None
                   ) -> optax.GradientTransformation:
    """AdamW of the recipe, wrapped in :func:`skip_nonfinite`. ``lr`` / ``weight_decay``
    override the config's values (traced values inside the compiled drivers)."""
    lr = cfg.lr if lr is None else lr
    wd = cfg.weight_decay if weight_decay is None else weight_decay
    return skip_nonfinite(optax.adamw(lr, weight_decay=wd))


def init_state(arch: Model, tx: optax.GradientTransformation, key: jax.Array | None,
               params: Params | None = None) -> TrainState:
    params = as_model(arch).init(key) if params is None else params
    return TrainState(jnp.zeros((), jnp.int32), params, tx.init(params))


def cross_entropy_loss(params: Params, apply_fn: Callable, x: jax.Array, y: jax.Array):
    """Mean cross-entropy and accuracy of one batch (the loss every trainer here minimises)."""
    logits = apply_fn(params, x)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    return loss, jnp.mean(jnp.argmax(logits, -1) == y)


def mean_cross_entropy(model: Model, params: Params, x: jax.Array, y: jax.Array
                       ) -> jax.Array:
    """Jitted mean cross-entropy of ``model`` (an adapter, its ``.apply`` or any model) on
    ``(x, y)``; compiled once per model (the program is the model's own)."""
    m = model_of(model)
    fn = m.program("mean_ce", lambda: jax.jit(
        lambda p, xx, yy: cross_entropy_loss(p, m.apply, xx, yy)[0]))
    return fn(params, x, y)


def guarded_apply(params: Params, opt_state: Any, grads: Params, loss: jax.Array,
                  tx: optax.GradientTransformation) -> tuple[Params, Any, jax.Array]:
    """Applies ``grads`` unless the loss or the new parameters are non-finite, in which case
    the old parameters and optimiser state are kept. Returns (params, opt_state, finite).
    The explicit guard of the hand-written steps (GAN, hypernetwork, :func:`make_train_step`);
    the composable alternative is :func:`skip_nonfinite`."""
    updates, new_opt = tx.update(grads, opt_state, params)
    new_params = optax.apply_updates(params, updates)
    finite = jnp.isfinite(loss) & P_.all_finite(new_params) & update_was_finite(new_opt)
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
    loss was non-finite or the guard skipped the update; the step only advances when True."""
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    finite = jnp.isfinite(loss) & update_was_finite(opt_state)
    return TrainState(state.step + finite.astype(state.step.dtype), params, opt_state), finite


def make_train_step(apply_fn: Callable, tx: optax.GradientTransformation,
                    axis_name: str | None = None, *, guard: bool = True) -> Callable:
    """The pure training step ``(state, (x, y)) -> (state, metrics)``.

    Args:
      apply_fn: ``apply_fn(params, x) -> logits``.
      tx: an optax optimiser.
      axis_name: set under ``jax.pmap``: gradients and metrics are averaged with
        ``lax.pmean`` over that axis, so the update equals the single-device one.
      guard: keep the old state when the loss or the new parameters are non-finite
        (:func:`guarded_update`); False leaves that to ``tx`` (:func:`skip_nonfinite`).
    """

    def step(state: TrainState, batch: Batch):
        x, y = batch
        (loss, acc), grads = jax.value_and_grad(cross_entropy_loss, has_aux=True)(
            state.params, apply_fn, x, y)
        if axis_name is not None:
            grads, loss, acc = jax.lax.pmean((grads, loss, acc), axis_name)
        update = guarded_update if guard else apply_step
        state, finite = update(state, grads, loss, tx)
        return state, {"loss": loss, "accuracy": acc, "finite": finite}

    return step


# --- three ways to compile the same step ------------------------------------------------------

def jit_step(step: Callable) -> Callable:
    return jax.jit(step, donate_argnums=0)


def pmap_step(step_with_axis: Callable, axis_name: str = "batch") -> Callable:
    """``step_with_axis`` must be built with ``make_train_step(..., axis_name=axis_name)``.
    Inputs: replicated state (:func:`replicate`) and batches split with :func:`shard_batch`."""
    return jax.pmap(step_with_axis, axis_name=axis_name, donate_argnums=0)


def replicate(tree: Any, n: int | None = None) -> Any:
    n = jax.local_device_count() if n is None else n
    return jax.tree.map(lambda x: jnp.broadcast_to(x, (n, *jnp.shape(x))), tree)


def unreplicate(tree: Any) -> Any:
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
    repl, data = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    return jax.jit(step, in_shardings=(repl, data), out_shardings=(repl, repl),
                   donate_argnums=0)


def put_sharded(tree: Any, mesh: Mesh, spec: P = P("data")) -> Any:
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


def auto_mesh(mesh: Mesh) -> tuple[Mesh, str]:
    """``mesh`` with Auto axes (XLA partitions the step from the input shardings; a
    ``jax.make_mesh`` default mesh has Explicit axes) and the name of its data axis: ``"data"``
    when it has one, else its first axis."""
    axis = "data" if "data" in mesh.axis_names else mesh.axis_names[0]
    if any(t != AxisType.Auto for t in mesh.axis_types):
        mesh = Mesh(mesh.devices, mesh.axis_names,
                    axis_types=(AxisType.Auto,) * len(mesh.axis_names))
    return mesh, axis


def mesh_batch_size(mesh: Mesh | None, batch_size: int, what: str = "batch") -> None:
    """Raises ConfigError unless ``batch_size`` splits evenly over ``mesh``'s data axis."""
    if mesh is None:
        return
    mesh, axis = auto_mesh(mesh)
    n = mesh.shape[axis]
    if batch_size % n:
        raise ConfigError(f"a {what} of {batch_size} cannot be split over the {n} devices of "
                          f"the mesh axis {axis!r}; use a batch size divisible by {n}")


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


def _fit_epoch(model: Architecture, fleet: bool, hp_batched: bool, mesh: Mesh | None,
               how: str = "vmap") -> Callable:
    """The compiled epoch of the drivers: ``run(state, hp, x, y, idx) -> (state, metrics)``,
    ``hp = {"lr", "weight_decay"}`` traced, ``idx`` (num_batches, batch) indexing the
    on-device ``(x, y)``; vmapped over models for fleets (``idx`` and the state per member,
    ``hp`` too when ``hp_batched``). The state is donated. Owned by ``model``."""

    def build():
        constrain = shard_rows(mesh)

        def run(state, hp, x, y, idx):
            tx = make_optimizer(TrainConfig(), hp["lr"], hp["weight_decay"])
            step = make_train_step(model.apply, tx, guard=False)
            return jax.lax.scan(lambda s, i: step(s, constrain((x[i], y[i]))), state, idx)

        if fleet:
            run = over_members(run, (0, 0 if hp_batched else None, None, None, 0), how)
        if mesh is None:
            return jax.jit(run, donate_argnums=0)
        m, axis = auto_mesh(mesh)
        repl = NamedSharding(m, P())
        rows = NamedSharding(m, P(*([None] * (2 if fleet else 1)), axis))
        return jax.jit(run, in_shardings=(repl, repl, repl, repl, rows),
                       out_shardings=(repl, repl), donate_argnums=0)

    return model.program(("fit_epoch", fleet, hp_batched, mesh, how), build)


def _hp(cfg: TrainConfig) -> dict:
    return {"lr": jnp.float32(cfg.lr), "weight_decay": jnp.float32(cfg.weight_decay)}


def compiled_epoch(arch: Model, cfg_opt: tuple, fleet: bool) -> Callable:
    """The jitted epoch of :func:`fit` (``fleet=False``) or :func:`fit_fleet` (vmapped over
    models, batch indices per model) for the AdamW of ``cfg_opt = (lr, weight_decay)``:
    ``run(state, x, y, idx) -> (state, metrics)``, the state donated. The compiled program is
    the model's own and is shared by every learning rate and weight decay."""
    model = as_model(arch)
    run = _fit_epoch(model, fleet, False, None)
    hp = {"lr": jnp.float32(cfg_opt[0]), "weight_decay": jnp.float32(cfg_opt[1])}
    return lambda state, x, y, idx: run(state, hp, x, y, idx)


def raise_if_nonfinite(finite: np.ndarray, first_step: int, epoch: int) -> None:
    """Raises ``NonFiniteError`` naming the earliest step (and fleet member) whose ``finite``
    flag is False; ``finite`` holds one epoch's flags, (steps,) or (members, steps)."""
    finite = np.asarray(finite)
    if finite.all():
        return
    bad = np.argwhere(~finite)
    bad = bad[np.argmin(bad[:, -1])]  # the earliest failing step (of any fleet member)
    batch = int(bad[-1])
    member = f" (fleet member {int(bad[0])})" if finite.ndim == 2 else ""
    raise NonFiniteError(
        f"non-finite loss or parameters at step {first_step + batch} (epoch {epoch}, batch "
        f"{batch}){member}; training stopped without saving. Check the data for NaN/inf or "
        "lower the learning rate")


def _model_for(arch: Model, ds: Dataset) -> Architecture:
    model = as_model(arch, ds.x.shape[1:], ds.num_classes)
    model.check_inputs(ds.x, f"training set {ds.name!r}")
    return model


def _put(tree: Any, mesh: Mesh | None) -> Any:
    if mesh is None:
        return jax.tree.map(jnp.asarray, tree)
    return jax.device_put(tree, NamedSharding(auto_mesh(mesh)[0], P()))


def fit(arch: Model, train: Dataset, cfg: TrainConfig, *,
        checkpointer=None, meta: dict | None = None, progress: bool = False,
        init_params: Params | None = None, mesh: Mesh | None = None
        ) -> tuple[TrainState, list[dict]]:
    """Trains ``arch`` on ``train`` with ``cfg``; resumes from ``checkpointer`` if it has a step.

    Every epoch is one compiled call: the steps run under ``lax.scan`` over a host-built index
    plan (a pure function of ``cfg.seed`` and the epoch) into the on-device data.

    Args:
      arch: the model: a registered name, an :class:`~hyperforget_jax.models.Architecture`, a
        Flax module or an ``apply_fn`` with an init (see ``hf.as_model``).
      train: training data.
      cfg: the recipe; ``cfg.seed`` fixes the initialisation and every batch order.
      checkpointer: optional :class:`hyperforget_jax.checkpoint.Checkpointer`; the state is
        saved after every epoch (checkpoint step = epochs done) and a rerun resumes from the
        latest, giving the same parameters as an uninterrupted run.
      meta: JSON-serialisable metadata stored with each checkpoint (config, split, request).
      progress: show a progress bar.
      init_params: start from these parameters instead of a fresh initialisation.
      mesh: optional ``jax.sharding.Mesh``: every batch is split along its data axis (``"data"``
        or its first axis), the state replicated; same parameters as one device (to float
        rounding). ``cfg.batch_size`` must divide by the axis size.

    Returns:
      The final :class:`TrainState` and a per-epoch history of mean loss / accuracy.

    Raises:
      NonFiniteError: a step produced NaN/inf (named in the message).
    """
    model = _model_for(arch, train)
    mesh_batch_size(mesh, cfg.batch_size)
    if init_params is None and not model.has_init:
        raise ConfigError(f"fit: model {model.name!r} has no init; pass init_params= or "
                          "hf.as_model(apply_fn, init_fn=...)")
    if init_params is not None:
        model.check_params(init_params)
        init_params = jax.tree.map(jnp.array, init_params)  # a copy: the state is donated
    tx = make_optimizer(cfg)
    state = init_state(model, tx, jax.random.key(cfg.seed), init_params)
    start = 0
    if checkpointer is not None and checkpointer.latest_step() is not None:
        state, _ = checkpointer.restore(state)
        start = int(checkpointer.latest_step())
    run = _fit_epoch(model, False, False, mesh)
    state = _put(state, mesh)
    x, y = _put((train.x, train.y), mesh)
    hp = _put(_hp(cfg), mesh)
    history = []
    epochs = range(start, cfg.epochs)
    if progress:
        from tqdm.auto import tqdm
        epochs = tqdm(epochs, desc=f"train {model.name}", initial=start, total=cfg.epochs)
    for epoch in epochs:
        idx = batch_indices(cfg.seed, epoch, len(train), cfg.batch_size)
        first = int(state.step)
        state, m = run(state, hp, x, y, jnp.asarray(idx))
        raise_if_nonfinite(m["finite"], first, epoch)
        history.append({"epoch": epoch, "loss": float(m["loss"].mean()),
                        "accuracy": float(m["accuracy"].mean())})
        if checkpointer is not None:
            checkpointer.save(epoch + 1, state, {**(meta or {}), "epoch": epoch + 1,
                                                 "train_config": cfg.to_json()})
    return state, history


def fit_fleet(arch: Model, train: Dataset, cfg: TrainConfig | list[TrainConfig],
              seeds: list[int] | None = None, progress: bool = False,
              subsets: np.ndarray | None = None, vectorize: str = "vmap"
              ) -> tuple[TrainState, list[dict]]:
    """Trains one model per member in a single vmapped program; member ``i`` equals
    ``fit(arch, train, replace(cfg, seed=seeds[i]))``. Returns a stacked :class:`TrainState`.

    Args:
      arch: the model (any form ``hf.as_model`` takes, with an init).
      train: training data, shared by every member.
      cfg: one recipe, or one per member (their learning rates and weight decays may differ:
        they are traced; epochs and batch size must agree).
      seeds: one seed per member (default: each config's own seed).
      progress: show a progress bar.
      subsets: optional (members, n) indices into ``train``: member ``i`` trains on
        ``train[subsets[i]]`` (equal sizes; U-LiRA's shadow models).
      vectorize: ``"vmap"`` (default) or ``"map"`` (:func:`over_members`).
    """
    model = _model_for(arch, train)
    cfgs = list(cfg) if isinstance(cfg, (list, tuple)) else None
    if cfgs is not None:
        seeds = [c.seed for c in cfgs] if seeds is None else list(seeds)
        if len(cfgs) != len(seeds):
            raise ConfigError(f"fit_fleet: {len(cfgs)} configs for {len(seeds)} seeds")
        if len({(c.epochs, c.batch_size) for c in cfgs}) != 1:
            raise ConfigError("fit_fleet: every member's epochs and batch_size must agree "
                              "(they set the program's shapes); run groups separately")
        base = cfgs[0]
    else:
        base = cfg
        seeds = [cfg.seed] if seeds is None else list(seeds)
    if not seeds:
        raise ConfigError("fit_fleet needs at least one seed")
    if not model.has_init:
        raise ConfigError(f"fit_fleet: model {model.name!r} has no init; pass "
                          "hf.as_model(apply_fn, init_fn=...)")
    tx = make_optimizer(base)
    keys = jnp.stack([jax.random.key(s) for s in seeds])
    state = jax.vmap(lambda k: init_state(model, tx, k))(keys)
    batched = cfgs is not None
    run = _fit_epoch(model, True, batched, None, vectorize)
    hp = (jax.tree.map(lambda *v: jnp.stack(v), *[_hp(c) for c in cfgs]) if batched
          else _hp(base))
    x, y = jnp.asarray(train.x), jnp.asarray(train.y)
    n = len(train) if subsets is None else np.asarray(subsets).shape[1]
    history = []
    epochs = range(base.epochs)
    if progress:
        from tqdm.auto import tqdm
        epochs = tqdm(epochs, desc=f"fleet of {len(seeds)} {model.name}")
    for epoch in epochs:
        idx = np.stack([batch_indices(s, epoch, n, base.batch_size) for s in seeds])
        if subsets is not None:
            idx = np.stack([sub[i] for sub, i in zip(np.asarray(subsets), idx)])
        first = int(state.step[0])
        state, m = run(state, hp, x, y, jnp.asarray(idx))
        raise_if_nonfinite(m["finite"], first, epoch)
        history.append({"epoch": epoch, "loss": np.asarray(m["loss"].mean(1)).tolist(),
                        "accuracy": np.asarray(m["accuracy"].mean(1)).tolist()})
    return state, history


def fit_stream(arch: Model, batches: Callable[[int], Iterable[Batch]] | Iterable[Batch],
               cfg: TrainConfig, *, init_params: Params | None = None,
               mesh: Mesh | None = None, sync_every: int = 8) -> tuple[TrainState, list[dict]]:
    """:func:`fit` on streamed data: host batches from an iterator instead of one on-device
    set, one compiled step per batch.

    Args:
      arch: the model (with an init, or pass ``init_params``).
      batches: ``batches(epoch) -> iterable of (x, y)`` host batches (called for each of
        ``cfg.epochs`` epochs), or one iterable consumed as a single epoch.
      cfg: the recipe (learning rate, weight decay, seed of the initialisation, epochs).
      init_params: start from these parameters.
      mesh: optional mesh: each batch is split along its data axis. Under ``jax.distributed``
        each process passes *its own rows* of every global batch (process ``i``: rows
        ``[i·b, (i+1)·b)``); they are assembled with
        ``jax.make_array_from_process_local_data``.
      sync_every: wait for the device every this many steps (bounds the queue of dispatched
        steps; collectives on CPU abort when too many are in flight).

    Returns:
      The final :class:`TrainState` and a per-epoch history (mean loss / accuracy).

    Raises:
      NonFiniteError: a step produced NaN/inf.
      DataError: a batch of images of the wrong shape.
    """
    model = as_model(arch)
    tx = make_optimizer(cfg)
    if init_params is None and not model.has_init:
        raise ConfigError(f"fit_stream: model {model.name!r} needs an input_shape or "
                          "init_params to start from")
    if init_params is not None:
        init_params = jax.tree.map(jnp.array, init_params)  # a copy: the state is donated
    state = init_state(model, tx, jax.random.key(cfg.seed), init_params)
    step = model.program(("fit_stream_step", mesh), lambda: _stream_step(model, mesh))
    state = _put(state, mesh)
    hp = _put(_hp(cfg), mesh)
    history = []
    n_epochs = cfg.epochs if callable(batches) else 1
    for epoch in range(n_epochs):
        it = batches(epoch) if callable(batches) else batches
        first, losses, accs, flags = int(state.step), [], [], []
        for i, (xb, yb) in enumerate(it):
            model.check_inputs(xb, "a streamed batch")
            state, m = step(state, hp, global_rows((np.asarray(xb, np.float32),
                                                    np.asarray(yb, np.int32)), mesh))
            losses.append(m["loss"]), accs.append(m["accuracy"]), flags.append(m["finite"])
            if (i + 1) % sync_every == 0:
                jax.block_until_ready(m["loss"])
        if not flags:
            raise ConfigError(f"fit_stream: epoch {epoch} yielded no batches")
        raise_if_nonfinite(np.asarray(jax.device_get(flags)), first, epoch)
        history.append({"epoch": epoch, "loss": float(np.mean(jax.device_get(losses))),
                        "accuracy": float(np.mean(jax.device_get(accs)))})
    return state, history


def global_rows(local: Any, mesh: Mesh | None) -> Any:
    """Host rows → device arrays: with a mesh, this process's rows of a global batch split
    along the data axis (``jax.make_array_from_process_local_data``); without, ``jnp.asarray``."""
    if mesh is None:
        return jax.tree.map(jnp.asarray, local)
    m, axis = auto_mesh(mesh)
    sharding = NamedSharding(m, P(axis))
    n_local = len(m.local_devices)

    def put(x):
        x = np.asarray(x)
        if x.shape[0] % n_local:
            raise ConfigError(f"a local batch of {x.shape[0]} rows cannot be split over "
                              f"{n_local} local devices; use a multiple of {n_local}")
        return jax.make_array_from_process_local_data(sharding, x)

    return jax.tree.map(put, local)


def _stream_step(model: Architecture, mesh: Mesh | None) -> Callable:
    def step(state, hp, batch):
        tx = make_optimizer(TrainConfig(), hp["lr"], hp["weight_decay"])
        return make_train_step(model.apply, tx, guard=False)(state, batch)

    if mesh is None:
        return jax.jit(step, donate_argnums=0)
    m, axis = auto_mesh(mesh)
    repl = NamedSharding(m, P())
    return jax.jit(step, in_shardings=(repl, repl, NamedSharding(m, P(axis))),
                   out_shardings=(repl, repl), donate_argnums=0)
