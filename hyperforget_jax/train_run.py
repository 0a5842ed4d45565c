"""The training drivers, thin layers over :mod:`hyperforget_jax.train`'s pieces: ``fit`` (one
model; optional mesh; resumable), ``fit_fleet`` (members vmapped or mapped in one program) and
``fit_stream`` (host batches from an iterator; each process its own rows under
``jax.distributed``). Re-exported by :mod:`hyperforget_jax.train`.

Every epoch of ``fit`` / ``fit_fleet`` is one compiled call: the steps run under ``lax.scan``
over a host-built index plan (a pure function of the seed and the epoch) into the on-device
data; the program belongs to the model and takes the learning rate and weight decay as traced
values.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Iterable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from hyperforget_jax import xla
from hyperforget_jax.checkpoint_checks import (naming_non_finite_start,
                                               refuse_another_model, refuse_another_run,
                                               refuse_other_jax_settings)
from hyperforget_jax.config import check_count
from hyperforget_jax.data import Dataset, _check_seed, batch_indices, is_prng_key
from hyperforget_jax.errors import (ArchitectureError, ConfigError, DataError, NonFiniteError,
                                    kind_of)
from hyperforget_jax.models import Architecture, as_model, is_import_path, is_model_at
from hyperforget_jax.params import committed, home_device, refuse_traced, tree_index
from hyperforget_jax.rundir import array_fingerprint, data_fingerprint
from hyperforget_jax.train import (Batch, Model, Params, TrainConfig, TrainState, auto_mesh,
                                   VECTORIZE, check_mesh, effective_batch_size,
                                   init_state, make_optimizer, make_train_step,
                                   over_members, scan_epoch, shard_rows)


def _hp_step(model: Architecture) -> Callable:
    """The drivers' training step ``(state, hp, batch) -> (state, metrics)``: the recipe's
    AdamW with ``hp = {"lr", "weight_decay"}`` traced, NaN-skipping (``skip_nonfinite``)."""

    def step(state, hp, batch):
        tx = make_optimizer(TrainConfig(), hp["lr"], hp["weight_decay"])
        return make_train_step(model.apply, tx, guard=False)(state, batch)

    return step


def _fit_epoch(model: Architecture, fleet: bool, hp_batched: bool, mesh: Mesh | None,
               how: str = "vmap") -> Callable:
    """The compiled epoch of the drivers: ``run(state, hp, x, y, idx) -> (state, metrics)``,
    ``hp = {"lr", "weight_decay"}`` traced, ``idx`` (num_batches, batch) indexing the
    on-device ``(x, y)``; vmapped over models for fleets (``idx`` and the state per member,
    ``hp`` too when ``hp_batched``). The state is donated. Owned by ``model``."""

    def build():
        constrain = shard_rows(mesh)

        step = _hp_step(model)

        def run(state, hp, x, y, idx):
            return scan_epoch(lambda s, batch: step(s, hp, constrain(batch)))(state, x, y, idx)

        if fleet:
            run = over_members(run, (0, 0 if hp_batched else None, None, None, 0), how)
        if mesh is None:
            return xla.jit(run, donate_argnums=0)
        # The batch indices come replicated (a few KB): the constraint on the gathered batch
        # splits its rows, evenly or not.
        repl = NamedSharding(auto_mesh(mesh)[0], P())
        return xla.jit(run, in_shardings=(repl,) * 5, out_shardings=(repl, repl),
                       donate_argnums=0)

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
        f"non-finite loss, parameters or optimiser state at step {first_step + batch} (epoch "
        f"{epoch}, batch {batch}){member}; training stopped without saving. Check the data "
        "for NaN/inf or lower the learning rate")


#: Rows the end-of-run output check evaluates.
OUTPUT_CHECK_ROWS = 64


def refuse_nonfinite_outputs(model: Architecture, params: Params, x: Any, who: str,
                             stacked: bool = False) -> None:
    """NonFiniteError when ``params`` give NaN or +inf logits (or a row of −inf) on the first
    ``OUTPUT_CHECK_ROWS`` rows of ``x`` (``stacked``: a fleet's parameters, leading axis the
    members). Each step's guard checks the loss before its update and the parameters after
    it, so a run's *last* update could leave finite but huge parameters whose outputs are
    NaN: returned (and saved) as a result. Called once at a run's end, before its last save."""
    rows = jnp.asarray(np.asarray(x[:OUTPUT_CHECK_ROWS]))
    if not len(rows):
        return
    if stacked:
        fn = model.program("finite_outputs_members", lambda: xla.jit(
            lambda p, v: jax.vmap(lambda q: _sound(model.apply(q, v)))(p)))
    else:
        fn = model.program("finite_outputs", lambda: xla.jit(
            lambda p, v: _sound(model.apply(p, v))))
    ok = np.atleast_1d(np.asarray(fn(params, rows)))
    if not ok.all():
        member = f" (fleet member {int(np.argmin(ok))})" if stacked else ""
        raise NonFiniteError(f"{who}: the last update left finite parameters whose outputs are "
                             f"NaN/inf{member}; stopped without returning them. Lower the "
                             "learning rate")


def _sound(logits: jax.Array) -> jax.Array:
    """No NaN or +inf, and some finite logit in every row: a −inf logit is a model's way to
    rule a class out (a mask, as ``metrics.refuse_non_finite_outputs`` takes it), not a
    divergence."""
    return (jnp.all(~jnp.isnan(logits) & (logits != jnp.inf))
            & jnp.all(jnp.any(jnp.isfinite(logits), axis=-1)))


def _model_for(arch: Model, ds: Dataset) -> Architecture:
    if not isinstance(ds, Dataset):     # else a bare TypeError / AttributeError on len or .x
        raise DataError(f"the training set must be a Dataset, got {kind_of(ds, Dataset)}; build "
                        "one with hf.data.from_arrays(x, y) (or pass splits.train)")
    if len(ds) == 0:     # else a bare ZeroDivisionError (or numpy's max of nothing)
        raise DataError(f"training set {ds.name!r} has no samples; pass the data to train on")
    model = as_model(arch, ds.x.shape[1:], ds.num_classes)
    model.check_inputs(ds.x, f"training set {ds.name!r}", ds.y)
    return model


def check_recipe_model(cfg: TrainConfig, model: Architecture, who: str) -> None:
    """Raises ConfigError when ``cfg.arch`` names another model than the one given: the model
    argument is what trains (``cfg.arch`` is the command line's ``--arch``), so
    ``fit("mlp", ds, TrainConfig(arch="cnn"))`` trained an MLP without a word. The default
    ``"mlp"`` is not checked: it cannot be told from "not set" (``fit("gpt_mlp", ds,
    TrainConfig())`` stays valid). An import path matches the model it names however that was
    passed: by the path, or as the class, instance or function (:func:`models.is_model_at`)."""
    default = TrainConfig.__dataclass_fields__["arch"].default
    if cfg.arch != default and cfg.arch not in (model.name, model.source) and not (
            is_import_path(cfg.arch) and is_model_at(model, cfg.arch)):
        raise ConfigError(f"{who}: TrainConfig.arch is {cfg.arch!r} but the model given is "
                          f"{model.source or model.name!r}, and the model given is what trains; "
                          f"pass {cfg.arch!r} as the model, or leave TrainConfig.arch out")


def _check_outputs(model: Architecture, params: Params, ds: Dataset, batch: int,
                   what: str) -> None:
    """Raises :class:`ArchitectureError` when the model has no output for some label: the loss
    of a label past the last logit is NaN, which stopped training at step 0 as a non-finite
    loss ("check the data or lower the learning rate"), naming neither. Labels, not
    ``num_classes``: a model with an output per label present trains as before. Traced on a
    training batch (``batch`` rows): a model that trains need not run on one image."""
    _refuse_missing_outputs(model, model.num_outputs(params, ds.x.shape[1:], what, batch),
                            int(np.max(ds.y)), what,
                            f"the data {ds.name!r} has {ds.num_classes} classes")


def _refuse_missing_outputs(model: Architecture, outputs: int, top: int, what: str,
                            data: str) -> None:
    if outputs <= top:
        raise ArchitectureError(f"{what}: model {model.name!r} has {outputs} outputs but {data} "
                                f"(labels up to {top}); build the model (or the Dataset) with "
                                "the same number of classes")


def _put(tree: Any, mesh: Mesh | None, home: Any = None) -> Any:
    # Committed without a mesh (params.committed): a start restored from disk (committed) and
    # a fresh one (uncommitted) were two compilations of the epoch / step program. ``home``:
    # the device the state is on (the data and hyperparameters join it).
    if mesh is None:
        return committed(jax.tree.map(jnp.asarray, tree), home)
    return jax.device_put(tree, NamedSharding(auto_mesh(mesh)[0], P()))


@xla.standard_promotion
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
        latest, giving the same parameters as an uninterrupted run. A checkpoint of another
        recipe (any field but ``epochs``), of other training data or ``init_params``, or with
        more epochs done than ``cfg.epochs`` is refused (``CheckpointError``), never continued.
        Each checkpoint's meta records ``train_seconds``, the epochs' time summed over resumes.
      meta: JSON-serialisable metadata stored with each checkpoint (config, split, request).
      progress: show a progress bar.
      init_params: start from these parameters instead of a fresh initialisation.
      mesh: optional ``jax.sharding.Mesh``: every batch is split along its data axis (``"data"``
        or its first axis), the state replicated; same parameters as one device (to float
        rounding). A batch that does not divide by the axis size is split unevenly (XLA pads
        the last share).

    Returns:
      The final :class:`TrainState` and a history: one dict per epoch this call ran,
      ``{"epoch", "loss", "accuracy"}`` (the epoch's mean training loss and accuracy, a
      fraction); a resumed call lists only the epochs after its checkpoint (none when the
      checkpoint already had ``cfg.epochs``).

    Raises:
      NonFiniteError: a step produced NaN/inf (named in the message).
      DataError: ``train`` is not a Dataset (e.g. the whole :class:`Splits`).
      CheckpointError: ``checkpointer`` holds another run (see ``checkpointer``).
      ArchitectureError: a model with no output for some label (fewer outputs than classes).
      ConfigError: ``cfg.arch`` set to another model than ``arch`` (an import path or a
        registered name: ``arch`` is what trains), or a model with no init and no
        ``init_params``.
    """
    check_mesh(mesh, "fit")
    if not isinstance(cfg, TrainConfig):
        raise ConfigError(f"fit takes a TrainConfig, got {kind_of(cfg, TrainConfig)}; e.g. "
                          "hf.TrainConfig(epochs=5)")
    model = _model_for(arch, train)
    check_recipe_model(cfg, model, "fit")
    batch_size = effective_batch_size(cfg, len(train))
    if init_params is None and not model.has_init:
        raise ConfigError(f"fit: model {model.name!r} has no init; pass init_params=, or "
                          f"{model.init_fix}")
    if init_params is not None:
        refuse_traced(init_params, "fit")
        model.check_params(init_params)
    # (init_state copies them: the donated state never holds the caller's arrays)
    given, init_params = init_params, committed(init_params)
    tx = make_optimizer(cfg)
    state = init_state(model, tx, jax.random.key(cfg.seed), init_params)
    _check_outputs(model, state.params, train, batch_size, "fit")
    start, prior = 0, 0.0
    data_id = None if checkpointer is None else data_fingerprint(train)
    init_id = (None if checkpointer is None or init_params is None
               else array_fingerprint(*jax.tree.leaves(init_params)))
    init_params = None     # the state holds its own copy: a committed copy here stayed alive
    if checkpointer is not None and checkpointer.latest_step() is not None:
        # The template placed as the run's state is (parameters on another device than the
        # default one: its counters there too), so the restored state is on one device.
        state, stored = checkpointer.restore(committed(state))
        start = int(checkpointer.latest_step())
        prior = float(stored.get("train_seconds", 0.0))
        # A model of the same parameter tree (an edited module rerun into its directory)
        # resumed the other's weights and recorded the mix as itself.
        refuse_another_model(checkpointer.directory, stored.get("architecture"),
                             model.to_json(), "a model")
        refuse_another_run(checkpointer.directory, stored, cfg.to_json(), data_id, start,
                           cfg.epochs, config_key="train_config", data_key="train_data",
                           what="a model", config_name="TrainConfig", init_id=init_id)
        if start < cfg.epochs:
            refuse_other_jax_settings(checkpointer.directory, checkpointer.written_under(),
                                      "a model's training")
    run = _fit_epoch(model, False, False, mesh)
    state = _put(state, mesh)
    home = home_device(state)
    x, y = _put((train.x, train.y), mesh, home)
    hp = _put(_hp(cfg), mesh, home)
    history = []
    epochs = range(start, cfg.epochs)
    if progress:
        from tqdm.auto import tqdm
        epochs = tqdm(epochs, desc=f"train {model.label}", initial=start, total=cfg.epochs)
    t0 = time.perf_counter()
    for epoch in epochs:
        idx = batch_indices(cfg.seed, epoch, len(train), batch_size)
        first = int(state.step)
        state, m = run(state, hp, x, y, jnp.asarray(idx))
        with naming_non_finite_start("fit", given):
            raise_if_nonfinite(m["finite"], first, epoch)
        history.append({"epoch": epoch, "loss": float(m["loss"].mean()),
                        "accuracy": float(m["accuracy"].mean())})
        if epoch + 1 == cfg.epochs:
            refuse_nonfinite_outputs(model, state.params, train.x[idx[-1]], "fit")
        if checkpointer is not None:
            # "architecture": the model that trained (``train_config.arch`` need not name it;
            # a caller's own record, the CLI's, is kept)
            checkpointer.save(epoch + 1, state, {"architecture": model.to_json(),
                                                 **(meta or {}), "epoch": epoch + 1,
                                                 "train_config": cfg.to_json(),
                                                 "train_data": data_id,
                                                 "init_params": init_id,
                                                 # the training time so far, over resumes
                                                 "train_seconds": prior + time.perf_counter()
                                                 - t0},
                              # the end, whatever the checkpointer's save_interval_steps (a
                              # finished run left an earlier epoch on disk as its latest)
                              force=epoch + 1 == cfg.epochs)
    return state, history


@xla.standard_promotion
def fit_fleet(arch: Model, train: Dataset, cfg: TrainConfig | list[TrainConfig],
              seeds: list[int] | None = None, progress: bool = False,
              subsets: np.ndarray | None = None, vectorize: str = "vmap"
              ) -> tuple[TrainState, list[dict]]:
    """Trains one model per member in a single vmapped program; member ``i`` equals
    ``fit(arch, train, replace(cfg, seed=seeds[i]))``: bit for bit with ``vectorize="map"``, to
    float rounding with ``"vmap"`` (batched matmuls round differently, and Adam's division by
    √v amplifies it: ~1e-3 on a weight after 3 epochs of the digits MLP). Returns a stacked
    :class:`TrainState` and a per-epoch history whose loss / accuracy are lists, one value per
    member (``fit_fleet(...)[0].params`` is the stacked parameters).

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

    Raises:
      ConfigError: a config whose ``arch`` names another model than ``arch`` (as :func:`fit`),
        configs whose epochs or batch sizes differ, or not one per seed.
    """
    model = _model_for(arch, train)
    if isinstance(seeds, (int, np.integer)):     # list(3): a bare TypeError
        raise ConfigError(f"fit_fleet: seeds must be a sequence of integers, got {seeds!r}; "
                          f"e.g. seeds=[{seeds}] (or seeds=range({seeds}) for {seeds} members)")
    if is_prng_key(seeds):      # a raw PRNGKey(0) iterates as the seeds [0, 0]: twin members
        raise ConfigError("fit_fleet: seeds must be a sequence of integers, got a JAX PRNG key; "
                          "pass the integer seeds, e.g. seeds=[0, 1, 2]")
    if seeds is not None and not isinstance(seeds, Iterable):   # 2.5: list()'s TypeError
        raise ConfigError(f"fit_fleet: seeds must be a sequence of integers, got {seeds!r}; "
                          "e.g. seeds=[0, 1, 2]")
    cfgs = list(cfg) if isinstance(cfg, (list, tuple)) else None
    if cfgs == []:                  # read as [[]]: "got list" for a list
        raise ConfigError("fit_fleet needs at least one config (an empty grid?)")
    if not all(isinstance(c, TrainConfig) for c in cfgs or [cfg]):
        raise ConfigError(f"fit_fleet takes a TrainConfig or a list of them, got "
                          f"{kind_of(cfg, TrainConfig)}; e.g. hf.TrainConfig(epochs=5)")
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
    if not isinstance(vectorize, str) or vectorize not in VECTORIZE:   # else unhashable
        raise ConfigError(f"fit_fleet: vectorize must be one of {', '.join(VECTORIZE)}, got "
                          f"{vectorize!r}")
    seeds = [_check_seed(s, "fit_fleet seed", ConfigError) for s in seeds]
    for c in cfgs or [cfg]:
        check_recipe_model(c, model, "fit_fleet")
    if not model.has_init:
        raise ConfigError(f"fit_fleet: model {model.name!r} has no init; {model.init_fix}")
    tx = make_optimizer(base)
    keys = jnp.stack([jax.random.key(s) for s in seeds])
    state = jax.vmap(lambda k: init_state(model, tx, k))(keys)
    batched = cfgs is not None
    run = _fit_epoch(model, True, batched, None, vectorize)
    hp = (jax.tree.map(lambda *v: jnp.stack(v), *[_hp(c) for c in cfgs]) if batched
          else _hp(base))
    x, y = jnp.asarray(train.x), jnp.asarray(train.y)
    if subsets is not None:
        subsets = np.asarray(subsets)
        if (subsets.ndim != 2 or subsets.shape[0] != len(seeds)
                or not np.issubdtype(subsets.dtype, np.integer)
                or (subsets.size and (subsets.min() < 0 or subsets.max() >= len(train)))):
            raise ConfigError(f"fit_fleet: subsets must be ({len(seeds)}, n) integer indices "
                              f"into the {len(train)} training samples, got shape "
                              f"{subsets.shape}, dtype {subsets.dtype}")
    n = len(train) if subsets is None else subsets.shape[1]
    batch_size = effective_batch_size(base, n)
    _check_outputs(model, tree_index(state.params, 0), train, batch_size, "fit_fleet")
    history = []
    epochs = range(base.epochs)
    if progress:
        from tqdm.auto import tqdm
        epochs = tqdm(epochs, desc=f"fleet of {len(seeds)} {model.label}")
    for epoch in epochs:
        idx = np.stack([batch_indices(s, epoch, n, batch_size) for s in seeds])
        if subsets is not None:
            idx = np.stack([sub[i] for sub, i in zip(np.asarray(subsets), idx)])
        first = int(state.step[0])
        state, m = run(state, hp, x, y, jnp.asarray(idx))
        raise_if_nonfinite(m["finite"], first, epoch)
        history.append({"epoch": epoch, "loss": np.asarray(m["loss"].mean(1)).tolist(),
                        "accuracy": np.asarray(m["accuracy"].mean(1)).tolist()})
    refuse_nonfinite_outputs(model, state.params, train.x, "fit_fleet", stacked=True)
    return state, history


def check_sync_every(sync_every: Any, who: str) -> None:
    """Raises ConfigError unless ``sync_every`` (steps between waits for the device in a
    streamed driver) is an integer >= 1."""
    check_count(sync_every, f"{who}: sync_every", " (steps between waits for the device)")


@xla.standard_promotion
def fit_stream(arch: Model, batches: Callable[[int], Iterable[Batch]] | Iterable[Batch],
               cfg: TrainConfig, *, init_params: Params | None = None,
               mesh: Mesh | None = None, sync_every: int = 8) -> tuple[TrainState, list[dict]]:
    """:func:`fit` on streamed data: host batches from an iterator instead of one on-device
    set, one compiled step per batch.

    Args:
      arch: the model (with an init, or pass ``init_params``).
      batches: ``batches(epoch) -> iterable of (x, y)`` host batches (called for each of
        ``cfg.epochs`` epochs); or an iterable that can be read again (a list, a
        ``DataLoader``: read once per epoch, ``cfg.epochs`` times); or a one-shot iterator
        (a generator), which feeds one epoch, so only with ``cfg.epochs == 1``.
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
      ConfigError: ``cfg.arch`` names another model than ``arch`` (as :func:`fit`),
        ``batches`` neither an iterable nor a function of the epoch, or a one-shot iterator
        with ``cfg.epochs`` other than 1 (it would have trained one epoch of the recipe's N).
      NonFiniteError: a step produced NaN/inf.
      DataError: a batch that is not an (x, y) pair, or of images of the wrong shape.
      ArchitectureError: a batch with a label past the model's last output.
    """
    check_mesh(mesh, "fit_stream")
    check_sync_every(sync_every, "fit_stream")
    if not isinstance(cfg, TrainConfig):    # as fit: a dict or namespace failed on a field
        raise ConfigError(f"fit_stream takes a TrainConfig, got {kind_of(cfg, TrainConfig)}; "
                          "e.g. "
                          "hf.TrainConfig(epochs=5)")
    if isinstance(batches, Dataset) or not (callable(batches) or isinstance(batches, Iterable)):
        raise ConfigError(f"fit_stream takes batches=an iterable of (x, y) host batches or a "
                          f"function of the epoch returning one, got {type(batches).__name__}"
                          "; a Dataset in memory trains with hf.fit")
    if isinstance(batches, Iterator) and not callable(batches) and cfg.epochs != 1:
        # A list used to feed one epoch whatever cfg.epochs said; a generator still can only.
        raise ConfigError(f"fit_stream: batches is a one-shot iterator "
                          f"({type(batches).__name__}), which feeds one epoch, but the recipe "
                          f"asks for {cfg.epochs}; pass a function of the epoch "
                          f"(lambda epoch: ...), an iterable that can be read again (a list), "
                          f"or TrainConfig(epochs=1)")
    model = as_model(arch)
    check_recipe_model(cfg, model, "fit_stream")
    tx = make_optimizer(cfg)
    if init_params is None and not model.has_init:
        raise ConfigError(f"fit_stream: model {model.name!r} has no init; pass init_params=, "
                          f"or {model.init_fix}")
    if init_params is not None:     # as fit: a host loop, not a step of the caller's jit
        refuse_traced(init_params, "fit_stream")
        model.check_params(init_params)     # as fit: another model's tree trained and came back
    # (init_state copies them: the donated state never holds the caller's arrays)
    given = init_params
    state = init_state(model, tx, jax.random.key(cfg.seed), committed(init_params))
    step = model.program(("fit_stream_step", mesh), lambda: _stream_step(model, mesh))
    state = _put(state, mesh)
    hp = _put(_hp(cfg), mesh, home_device(state))
    history, outputs = [], None
    for epoch in range(cfg.epochs):
        it = batches(epoch) if callable(batches) else batches
        first, losses, accs, flags = int(state.step), [], [], []
        for i, batch in enumerate(it):
            if not (isinstance(batch, (tuple, list)) and len(batch) == 2):   # else unpacking's
                raise DataError(f"fit_stream: batch {i} is a {type(batch).__name__}, not an "
                                "(x, y) pair of images and labels")
            xb, yb = batch
            yb = np.asarray(yb)     # on the host once: the label check and the step read it
            # A torch DataLoader's tensors (the docstring's example) failed in the dtype check
            # with a bare TypeError: host batches are numpy arrays from here on.
            xb = xb if isinstance(xb, (jax.Array, np.ndarray)) else np.asarray(xb)
            if yb.ndim == 0:        # one example per item: len() was a bare TypeError
                raise DataError(f"fit_stream: epoch {epoch}, batch {i} has a label of shape "
                                "() (one example, not a batch); stream batches of (B, ...) "
                                "images with (B,) labels")
            if not len(yb):         # a filtered loader's empty tail: a ZeroDivisionError
                raise DataError(f"fit_stream: epoch {epoch}, batch {i} has no rows; drop "
                                "empty batches from the stream")
            # A device batch's values are read once (reading one waits for the queued steps).
            model.check_inputs(xb, "a streamed batch", yb,
                               values=outputs is None or not isinstance(xb, jax.Array))
            if outputs is None:         # as fit's check, on the first batch's shape
                if given is not None and model.input_shape is None:
                    # The tree's shapes, once the inputs' shape is known (fit's check).
                    as_model(model, np.shape(xb)[1:]).check_params(given)
                outputs = model.num_outputs(state.params, np.shape(xb)[1:], "fit_stream",
                                            len(xb))
            if len(yb) and jax.process_count() == 1:
                # (Under jax.distributed each process sees only its own rows: one refusing
                # while the others enter the step's all-reduce would hang them all.)
                _refuse_missing_outputs(model, outputs, int(np.max(yb)), "fit_stream",
                                        "a streamed batch has a label past them")
            state, m = step(state, hp, global_rows((np.asarray(xb, np.float32),
                                                    np.asarray(yb, np.int32)), mesh))
            losses.append(m["loss"]), accs.append(m["accuracy"]), flags.append(m["finite"])
            if (i + 1) % sync_every == 0:
                jax.block_until_ready(m["loss"])
        if not flags:
            raise ConfigError(f"fit_stream: epoch {epoch} yielded no batches")
        with naming_non_finite_start("fit_stream", given):
            raise_if_nonfinite(np.asarray(jax.device_get(flags)), first, epoch)
        history.append({"epoch": epoch, "loss": float(np.mean(jax.device_get(losses))),
                        "accuracy": float(np.mean(jax.device_get(accs)))})
    if cfg.epochs:                         # the last batch's rows
        refuse_nonfinite_outputs(model, state.params, xb, "fit_stream")
    return state, history


def global_rows(local: Any, mesh: Mesh | None) -> Any:
    """Host rows → device arrays: with a mesh, this process's rows of a global batch split
    along the data axis (``jax.make_array_from_process_local_data``); without, ``jnp.asarray``."""
    if mesh is None:
        return jax.tree.map(jnp.asarray, local)
    check_mesh(mesh, "global_rows")
    m, axis = auto_mesh(mesh)
    sharding = NamedSharding(m, P(axis))
    # The row blocks this process holds: its share of the data axis's shards (on a 2 × 2
    # (model, data) mesh 2, not its 4 devices: 6-row batches, valid, were refused).
    n_local = max(1, m.shape[axis] * len(m.local_devices) // m.devices.size)

    def put(x):
        x = np.asarray(x)
        if x.shape[0] % n_local:
            raise ConfigError(f"a local batch of {x.shape[0]} rows cannot be split over the "
                              f"{n_local} shards of the mesh's {axis!r} axis on this process; "
                              f"use a multiple of {n_local}")
        return jax.make_array_from_process_local_data(sharding, x)

    return jax.tree.map(put, local)


def _stream_step(model: Architecture, mesh: Mesh | None) -> Callable:
    step = _hp_step(model)
    if mesh is None:
        return xla.jit(step, donate_argnums=0)
    m, axis = auto_mesh(mesh)
    repl = NamedSharding(m, P())
    return xla.jit(step, in_shardings=(repl, repl, NamedSharding(m, P(axis))),
                   out_shardings=(repl, repl), donate_argnums=0)
