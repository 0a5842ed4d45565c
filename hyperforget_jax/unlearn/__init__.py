"""One API for every unlearning method, and sweeps of many seeds and configs as one program.

    result = unlearn("gradtau", model, params, split, val)       # -> UnlearnResult(params, info)
    results = unlearn_sweep("gradtau", model, params, split, val, seeds=[0, 1, 2],
                            configs=[GradTauConfig(), GradTauConfig(lr=3e-4)])

``model`` is anything :func:`hyperforget_jax.models.as_model` takes: a registered name, a Flax
module, an ``apply_fn(params, x) -> logits`` or an import path. Methods: ``gradtau`` (∇τ,
:mod:`.gradtau`), ``retrain`` (``train.fit`` on D_r with the original recipe), ``finetune``
(∇τ's batches and optimiser with α ≡ 0: descent on D_r only, for int(6·N_r / N_f)
forget-epochs, the official fine-tune's 2E or 2E + 1),
``neggrad``, ``neggrad_plus``, ``random_labels``, ``scrub``, ``salun`` and ``bad_teacher``
(:mod:`.baselines`, hyperparameters with their sources in :mod:`.configs`). Every method returns
new parameters and leaves the caller's untouched; ``info`` always has ``method``, ``steps`` and
``wall_time_s`` (measured around the whole call, device work included).

Every method is also a building block for your own loop: :func:`.gradtau.nabla_tau` and the
objectives of :mod:`.baselines` (``init`` / ``update`` pairs, the optax way). Data that does not
sit on the device: :func:`.gradtau_stream.run_gradtau_stream` (∇τ from host batch pairs).
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import time
from typing import Any, NamedTuple, Sequence

import jax
import numpy as np
from jax.sharding import Mesh

from hyperforget_jax import data, train, xla
from hyperforget_jax.data import Dataset, ForgetSplit, refuse_repeated_indices, shared_rows
from hyperforget_jax.checkpoint_checks import naming_non_finite_start
from hyperforget_jax.errors import (ArchitectureError, ConfigError, DataError,
                                   ForgetRequestError, NonFiniteError, kind_of)
from hyperforget_jax.models import Architecture, as_model
from hyperforget_jax.params import refuse_traced, tree_index
from hyperforget_jax.unlearn import baselines, configs
from hyperforget_jax.unlearn.configs import (BadTeacherConfig, NegGradConfig, NegGradPlusConfig,
                                             RandomLabelsConfig, SalUnConfig, ScrubConfig)
from hyperforget_jax.unlearn.gradtau import (GradTau, GradTauConfig, GradTauState, nabla_tau,
                                             gradtau_objective, make_gradtau_optimizer,
                                             make_gradtau_step, run_gradtau)
from hyperforget_jax.unlearn import gradtau_run
from hyperforget_jax.unlearn.gradtau_stream import run_gradtau_stream

METHODS = ("gradtau", "retrain", "finetune", "neggrad", "neggrad_plus", "random_labels",
           "scrub", "salun", "bad_teacher")

RESUMABLE = ("gradtau", "finetune", "retrain")

DEFAULT_CONFIGS = {"gradtau": GradTauConfig, "finetune": GradTauConfig,
                   **{k: c for k, (c, _) in baselines.METHODS.items()}}


class UnlearnResult(NamedTuple):
    params: Any
    info: dict


def _forget_classes(split: ForgetSplit) -> tuple[int, ...] | None:
    """The forgotten classes when the request removed whole classes (no retain sample left)."""
    fc = set(int(c) for c in set(split.forget.y.tolist()))
    return tuple(sorted(fc)) if not fc & set(split.retain.y.tolist()) else None


def _given_forget_classes(split: ForgetSplit, classes: Any) -> tuple[int, ...] | None:
    """``forget_classes`` as passed (None: inferred), checked against the forget set: every
    class must have forget samples, and every forget sample must be of one of them."""
    if classes is None:
        return _forget_classes(split)
    try:
        given = tuple(sorted({int(c) for c in classes}))
    except (TypeError, ValueError):
        raise ConfigError(f"forget_classes must be a sequence of class ids, got {classes!r}") \
            from None
    present = tuple(int(c) for c in np.unique(np.asarray(split.forget.y)))   # sorted
    if given != present:
        raise ForgetRequestError(
            f"forget_classes {given} does not match the forget set, whose samples are of "
            f"classes {present}; pass forget_classes={present}, or None to infer it")
    return given


def _naming_a_non_finite_start(method: str, params: Any):
    # Retrain starts afresh: its given parameters are not its start.
    return naming_non_finite_start(method, None if method == "retrain" else params,
                                   "the starting parameters")


def check_seed(seed: Any, what: str = "seed") -> int:
    """Raises ConfigError unless ``seed`` is a non-negative integer (numpy's generators refuse
    negative seeds with a raw ValueError)."""
    return data._check_seed(seed, what, ConfigError)


def _check(method: str, split: ForgetSplit, val: Dataset, arch: Any, params: Any,
           stacked: bool = False) -> Architecture:
    if method not in METHODS:
        raise ConfigError(f"unknown unlearning method {method!r}; choose one of "
                          f"{', '.join(METHODS)}")
    refuse_traced(params, f"unlearn({method!r})")
    if not isinstance(split, ForgetSplit) or not isinstance(val, Dataset):
        raise ConfigError(f"{method}: pass split=hf.resolve_forget(train, request) (a "
                          f"ForgetSplit) and val=a Dataset, got {kind_of(split, ForgetSplit)} "
                          f"and {kind_of(val, Dataset)}")
    if len(split.forget) == 0 or len(split.retain) == 0:
        raise ForgetRequestError(f"{method}: the forget set ({len(split.forget)}) and the "
                                 f"retain set ({len(split.retain)}) must both be non-empty")
    if len(val) == 0:
        raise DataError(f"{method}: the validation set is empty; pass held-out images (e.g. "
                        "splits.val): ∇τ's τ and the evaluation read them")
    for name in ("forget_idx", "retain_idx"):
        # A negative index names the same sample as n − |index|, so the overlap check below
        # passed a split whose forget sample -1 was also retain sample n − 1.
        idx = np.asarray(getattr(split, name))
        if idx.size and idx.min() < 0:
            raise ForgetRequestError(f"{method}: split.{name} holds the negative index "
                                     f"{idx.min()}; training-set indices run from 0 (build the "
                                     "split with hf.resolve_forget)")
    # A sample given twice was counted twice: ∇τ's α₀ = scale·|D_f|/|D| and its budget read
    # the sizes, so a doubled forget set ran with twice the α₀, without a word.
    refuse_repeated_indices(split, method)
    if np.intersect1d(np.asarray(split.forget_idx), np.asarray(split.retain_idx)).size:
        raise ForgetRequestError(f"{method}: the forget and retain sets share training indices; "
                                 "build the split with hf.resolve_forget")
    model = as_model(arch, split.forget.x.shape[1:], split.forget.num_classes)
    one = tree_index(params, 0) if stacked else params
    model.check_params(one)
    for ds, what in ((split.forget, "forget set"), (split.retain, "retain set"),
                     (val, "validation set")):
        model.check_inputs(ds.x, what, ds.y)
        if not np.all(np.isfinite(ds.x)):
            raise DataError(f"{method}: the {what} has NaN or inf images; clean the data")
    outputs = model.num_outputs(one, split.forget.x.shape[1:], method)
    if outputs != split.forget.num_classes:
        raise ArchitectureError(f"{method}: model {model.name!r} has {outputs} outputs but the "
                                f"data has {split.forget.num_classes} classes; build the model "
                                "(or the Dataset) with the same number of classes")
    if val.num_classes != split.forget.num_classes:
        # ∇τ's "chance" τ is log K of the validation set's K (9 for a val set without class
        # 9, built by from_arrays), where the runner reads the training set's.
        raise DataError(f"{method}: the validation set has {val.num_classes} classes but the "
                        f"training set {split.forget.num_classes}; build every part with the "
                        "same num_classes, e.g. hf.data.from_arrays(x, y, num_classes=10)")
    data.refuse_training_rows(
        val, "the validation set", f"{method} would read them as unseen data (∇τ's τ): pass "
        "held-out images, the splits.val of the splits the request was resolved on",
        split.forget, split.retain)
    if method == "retrain" and not model.has_init:
        raise ConfigError(f"retrain needs fresh parameters but model {model.name!r} has no "
                          f"init; {model.init_fix}")
    return model


def _config(method: str, model: Architecture, config: Any, seed: int) -> Any:
    want = train.TrainConfig if method == "retrain" else DEFAULT_CONFIGS[method]
    if config is None:
        if method == "retrain":
            label = model.source or (model.name if model.registered else "mlp")
            return want(arch=label, seed=seed)
        return want()
    if not isinstance(config, want):
        raise ConfigError(f"{method} takes a {want.__name__}, got {kind_of(config, want)}")
    if method == "retrain" and seed not in (0, config.seed):
        # A loop over seeds with one TrainConfig would otherwise retrain every "seed" alike.
        raise ConfigError(f"retrain runs with its TrainConfig's seed ({config.seed}), not "
                          f"seed={seed}; pass config=dataclasses.replace(config, seed={seed})")
    return config


def _recorded_config(model: Architecture, config: Any) -> dict:
    """The config as run. A ``TrainConfig``'s ``arch`` names the model that trained: the
    argument, not the config's field (which only registered names and import paths fill)."""
    d = dataclasses.asdict(config)
    if isinstance(config, train.TrainConfig):
        d["arch"] = model.source or model.name
    return d


@xla.standard_promotion
def unlearn(method: str, arch: Any, params: Any, split: ForgetSplit, val: Dataset,
            config: Any = None, seed: int = 0,
            forget_classes: tuple[int, ...] | None = None, *, checkpointer=None,
            meta: dict | None = None, mesh: Mesh | None = None) -> UnlearnResult:
    """Runs ``method`` from ``params`` on the forget request ``split``.

    Args:
      method: one of ``METHODS``.
      arch: the model: a registered name, an :class:`~hyperforget_jax.models.Architecture`, a
        Flax module, an ``apply_fn(params, x) -> logits`` or an import path (``hf.as_model``).
        Hold ``hf.as_model(...)`` and pass it again to reuse its compiled programs.
      params: the original model's parameters (not modified).
      split: D_f / D_r (:func:`hyperforget_jax.data.resolve_forget`).
      val: held-out validation data (∇τ's τ).
      config: the method's config (default: its published values); for ``retrain`` a
        :class:`~hyperforget_jax.train.TrainConfig` (default ``TrainConfig(seed=seed)``; a
        given config is used as is, its own seed included: a ``seed`` other than 0 and the
        config's is refused, and ``info["seed"]`` is the config's).
      seed: batch order, random labels, random teachers (an integer >= 0).
      forget_classes: the removed classes for class removal; by default inferred (the forget
        set's classes when none of them is left in D_r). Selects ∇τ's τ. When given, they must
        be exactly the forget set's classes.
      checkpointer: optional :class:`~hyperforget_jax.checkpoint.Checkpointer` for the
        iterative methods that can resume (``gradtau``, ``finetune``: after every forget-epoch;
        ``retrain``: after every epoch). A rerun on the same directory resumes and returns the
        same parameters as an uninterrupted run. The other baselines take seconds and do not
        checkpoint: given one, they raise a ConfigError rather than silently not checkpointing.
      meta: JSON metadata stored with each checkpoint.
      mesh: optional ``jax.sharding.Mesh``: batches split along its data axis (``"data"`` or
        the first), state replicated; the result equals the single-device run (to rounding).
        Without one the method runs on one device, however many are visible;
        ``info["devices"]`` and ``info["device_kind"]`` record what ran (with a mesh also
        ``info["batch_split"]``: the devices along its data axis that share each batch).

    Returns:
      :class:`UnlearnResult` ``(params, info)``.

    Raises:
      ConfigError: unknown method, a config of the wrong type, a negative seed, a ``retrain``
        seed that its TrainConfig's contradicts, a ``finetune`` config that sets an α or τ
        field (``alpha0``, ``alpha_scale``, ``alpha_max``, ``tau_mode``,
        ``tau_refresh_epochs``: Fine-tune is α ≡ 0 and would ignore it), a GradTauConfig
        field that another one makes unread (``max_epochs`` with ``epochs``, ``alpha_scale``
        / ``alpha_max`` with ``alpha0``, ``tau_mode`` or ``tau_refresh_epochs`` with an α₀
        of 0), a ``retrain`` TrainConfig whose ``arch`` names another model than ``arch``.
      ForgetRequestError: empty forget or retain set; a split whose indices are negative,
        repeated or shared by both sets; ``forget_classes`` that are not the forget set's
        classes.
      ArchitectureError: parameters that do not fit the model.
      DataError: images of a shape the model does not take, labels it has no output for.
      NonFiniteError: a loss or parameters became NaN/inf (nothing is returned); it names the
        starting parameters when they already were.
    """
    train.check_mesh(mesh, method if isinstance(method, str) else "unlearn")
    seed = check_seed(seed)
    model = _check(method, split, val, arch, params)
    forget_classes = _given_forget_classes(split, forget_classes)
    config = _config(method, model, config, seed)
    if checkpointer is not None and method not in RESUMABLE:
        raise ConfigError(f"{method} does not checkpoint (it runs in one compiled call); "
                          f"pass checkpointer=None or use one of {', '.join(RESUMABLE)}")

    t0 = time.perf_counter()
    with _naming_a_non_finite_start(method, params):
        if method == "retrain":
            state, history = train.fit(model, split.retain, config, checkpointer=checkpointer,
                                       meta=meta, mesh=mesh)
            out, info = state.params, {"steps": int(state.step), "epochs": config.epochs}
        elif method in ("gradtau", "finetune"):
            out, info = run_gradtau(model, params, split, val, config, seed, forget_classes,
                                    checkpointer=checkpointer, meta=meta, mesh=mesh,
                                    method=method)
        else:
            out, info = baselines.run_method(method, model, params, split, config, seed,
                                             mesh=mesh)
        jax.block_until_ready(out)
    info = {"method": method, "wall_time_s": time.perf_counter() - t0,
            "config": _recorded_config(model, config),
            "seed": config.seed if method == "retrain" else seed, **_ran_on(mesh, out), **info}
    return UnlearnResult(out, info)


def _ran_on(mesh: Mesh | None, out: Any) -> dict:
    """How many devices ran the method, and which kind: the mesh's, or those holding its
    result (without a mesh everything runs on one device, however many are visible: the
    default one, or ``jax.default_device``'s); with a mesh also ``batch_split``, the devices
    along its data axis that share each batch (a 2×2 ("model", "data") mesh: 4 devices, each
    batch split in 2, which "devices" alone overstated)."""
    if mesh is not None:
        devices = list(mesh.devices.flat)
        axis = train.auto_mesh(mesh)[1]
        return {"devices": len(devices), "batch_split": int(mesh.shape[axis]),
                "device_kind": devices[0].device_kind}
    leaf = jax.tree.leaves(out)[0]
    devices = list(leaf.devices()) if isinstance(leaf, jax.Array) else jax.devices()[:1]
    return {"devices": len(devices), "device_kind": devices[0].device_kind}


def _is_stacked(model: Architecture, params: Any, n: int, stacked: bool | None) -> bool:
    leading = {np.shape(l)[0] if np.ndim(l) else None for l in jax.tree.leaves(params)}
    if stacked:
        # A stack of 3 originals for 2 seeds ran, the third never used (and "another
        # architecture" when inferred below).
        if leading != {n}:
            raise ConfigError(f"unlearn_sweep: params_stacked=True, but the parameters' leading "
                              f"axes are {sorted(leading, key=str)} for {n} seed(s); stack one "
                              "original per seed")
        return True
    if stacked is not None:
        return False
    if model.param_shapes() is None and leading == {n}:
        # No init to compare shapes with: one network and n stacked ones look alike.
        raise ConfigError(f"unlearn_sweep: model {model.name!r} has no init, so params whose "
                          f"every leaf has a first axis of {n} (= the number of seeds) may be "
                          f"one network or {n} stacked ones; pass params_stacked=True or False")
    try:
        model.check_params(params)
        return False
    except ArchitectureError:
        if leading != {n}:
            if len(leading) == 1 and None not in leading and _fits(model, params):
                m = leading.pop()
                raise ConfigError(f"unlearn_sweep: the parameters are {m} stacked originals "
                                  f"for {n} seed(s); stack one original per seed") from None
            raise
        return True


def _fits(model: Architecture, params: Any) -> bool:
    """Whether the first of stacked parameters fits the model."""
    try:
        model.check_params(tree_index(params, 0))
        return True
    except (ArchitectureError, IndexError, TypeError):
        return False


@xla.standard_promotion
def unlearn_sweep(method: str, arch: Any, params: Any,
                  split: ForgetSplit | Sequence[ForgetSplit], val: Dataset,
                  seeds: Sequence[int] = (0,), configs: Sequence[Any] | None = None,
                  forget_classes: tuple[int, ...] | None = None, *,
                  params_stacked: bool | None = None,
                  vectorize: str = "vmap") -> list[UnlearnResult]:
    """Runs many seeds and configs of one method as vmapped programs.

    The members are ``seeds × configs``, seed-major: member ``i·len(configs) + j`` is seed
    ``seeds[i]`` with ``configs[j]``; each equals (to float rounding)
    ``unlearn(method, arch, params_i, split_i, val, configs[j], seeds[i], forget_classes)``,
    except that for ``retrain`` the member's seed replaces the config's (member = ``unlearn(
    "retrain", ..., replace(configs[j], seed=seeds[i]))``). Members whose shapes agree (batch
    sizes, epochs, the request's sizes) form one group and run as one program under
    ``jax.vmap``; every float hyperparameter (learning rate, weight decay, α scale, momentum,
    ...) is a traced value, so configs that differ only in those share a group.

    Args:
      method: one of ``METHODS``.
      arch: the model (anything ``hf.as_model`` takes).
      params: the original parameters: one pytree for every member, or stacked with a leading
        axis of ``len(seeds)`` (each seed its own original, e.g. from ``fit_fleet``).
      split: D_f / D_r shared by every member, or one split per seed (``len(seeds)`` of them,
        equal forget and retain sizes: e.g. random forgetting drawn with each seed, or U-LiRA's
        shadow requests).
      val: held-out validation data.
      seeds: integers >= 0.
      configs: the method's configs (default: its published one).
      forget_classes: as in :func:`unlearn`.
      params_stacked: whether ``params`` is stacked (None: inferred from the model's shapes).
      vectorize: how a group's members share one program: ``"vmap"`` (side by side, the
        default; the fast choice on GPU/TPU) or ``"map"`` (one after another inside the
        program, ``jax.lax.map``: on CPU XLA's batched matmuls are slower than plain ones, so
        this keeps the single-run speed). Same results.

    Returns:
      One :class:`UnlearnResult` per member, in member order. ``info["wall_time_s"]`` is the
      member's share of its group's wall time (the group's total in
      ``info["group_wall_time_s"]``, its size in ``info["group_size"]``). Every group runs on
      one device (``info["devices"]``, ``info["device_kind"]``).

    Raises:
      ConfigError: no seed, a negative seed, ``seeds`` or ``configs`` that are not sequences
        (one config: pass ``[config]``), a config of the wrong type, per-seed splits of
        different sizes or not one per seed, a ``split`` that is neither a ForgetSplit nor a
        sequence of them, a ``params_stacked`` other than True, False or None, and for every
        member as :func:`unlearn` (its ForgetRequestError, ArchitectureError, DataError and
        NonFiniteError included).
    """
    if isinstance(seeds, (int, np.integer)):
        raise ConfigError(f"seeds must be a sequence of integers, got {seeds!r}; e.g. "
                          f"seeds=[{seeds}]")
    if data.is_prng_key(seeds):     # a raw PRNGKey(0) iterates as the seeds [0, 0]
        raise ConfigError("seeds must be a sequence of integers, got a JAX PRNG key; pass the "
                          "integer seeds, e.g. seeds=[0, 1, 2]")
    try:
        seeds = list(seeds)
        configs = None if configs is None else list(configs)
    except TypeError:    # None, or one config object: not the deep TypeError of a loop
        raise ConfigError(f"seeds and configs must be sequences, got seeds={seeds!r} and a "
                          f"{type(configs).__name__} configs; e.g. seeds=[0, 1], "
                          "configs=[config]") from None
    seeds = [check_seed(s) for s in seeds]
    if not seeds:
        raise ConfigError("unlearn_sweep needs at least one seed")
    if configs is not None and not configs:    # ran the published config, as configs=None
        raise ConfigError("unlearn_sweep needs at least one config (an empty grid?), or "
                          "configs=None for the method's published one")
    if not isinstance(vectorize, str) or vectorize not in train.VECTORIZE:
        raise ConfigError(f"vectorize must be one of {', '.join(train.VECTORIZE)}, got "
                          f"{vectorize!r}")
    per_seed = not isinstance(split, ForgetSplit)
    splits = [split] * len(seeds)
    if per_seed:
        try:
            splits = None if isinstance(split, (dict, str)) else list(split)
        except TypeError:
            splits = None
        if splits is None or not all(isinstance(s, ForgetSplit) for s in splits):
            # the runners read .forget of each: an AttributeError or a TypeError otherwise
            got = type(split).__name__ + ("" if splits is None else " of " + ", ".join(
                sorted({type(s).__name__ for s in splits})))
            raise ConfigError(f"unlearn_sweep: pass split=hf.resolve_forget(train, request) "
                              f"(a ForgetSplit), or a list of them (one per seed), got a {got}")
    if not (params_stacked is None or isinstance(params_stacked, (bool, np.bool_))):
        raise ConfigError(f"unlearn_sweep: params_stacked must be True, False or None (inferred "
                          f"from the model's shapes), got {params_stacked!r}")
    if len(splits) != len(seeds):
        raise ConfigError(f"unlearn_sweep: {len(splits)} splits for {len(seeds)} seeds; pass "
                          "one split, or one per seed")
    if len({(len(s.forget), len(s.retain)) for s in splits}) != 1:
        raise ConfigError("unlearn_sweep: the per-seed splits must have equal forget and "
                          "retain sizes (they share one program); run them separately")
    refuse_traced(params, f"unlearn_sweep({method!r})")
    model = as_model(arch, splits[0].forget.x.shape[1:], splits[0].forget.num_classes)
    stacked = _is_stacked(model, params, len(seeds), params_stacked)
    for sp in splits[1:] if per_seed else ():    # every member's data, not the first only
        _check(method, sp, val, model, params, stacked)
    model = _check(method, splits[0], val, model, params, stacked)
    given = forget_classes
    forget_classes = _given_forget_classes(splits[0], given)
    if per_seed and any(_given_forget_classes(sp, given) != forget_classes for sp in splits):
        raise ConfigError("unlearn_sweep: the per-seed splits remove different classes (or "
                          "mix class removal with other requests); τ is chosen per request, "
                          "so run them in separate sweeps")
    configs = [_config(method, model, c, 0) for c in (configs or [None])]
    members = [(si, s, c) for si, s in enumerate(seeds) for c in configs]
    originals = [tree_index(params, si) if stacked else params for si, _, _ in members]
    msplits = [splits[si] for si, _, _ in members]

    if method == "retrain":
        members = [(si, s, dataclasses.replace(c, seed=s)) for si, s, c in members]
        keyed = [((c.epochs, c.batch_size), c) for _, _, c in members]
    elif method in ("gradtau", "finetune"):
        keyed = [(p.static, p) for p in (gradtau_run.make_plan(sp, c, s, forget_classes,
                                                               method)
                                         for sp, (_, s, c) in zip(msplits, members))]
    else:
        keyed = [(p.signature, p) for p in (baselines.prepare(method, model, o, sp, c, s)
                                            for o, sp, (_, s, c) in zip(originals, msplits,
                                                                        members))]
    groups: dict[Any, list[int]] = {}
    for i, (key, _) in enumerate(keyed):
        groups.setdefault(key, []).append(i)

    results: list[UnlearnResult | None] = [None] * len(members)
    for idx in groups.values():
        t0 = time.perf_counter()
        items = [keyed[i][1] for i in idx]
        with _naming_a_non_finite_start(method, {f"member {i}": originals[i] for i in idx}), \
                _naming_sweep_members(idx):
            if method == "retrain":
                out, infos = _retrain_fleet(model, [msplits[i] for i in idx], items, per_seed,
                                            vectorize)
            else:
                starts = jax.tree.map(lambda *l: np.stack(l), *[originals[i] for i in idx])
                if method in ("gradtau", "finetune"):
                    group_split = [msplits[i] for i in idx] if per_seed else splits[0]
                    out, infos = gradtau_run.run_gradtau_fleet(
                        model, starts, group_split, val, items, forget_classes, vectorize,
                        members=idx)
                else:
                    out, infos = baselines.run_fleet(method, model, starts, items, per_seed,
                                                     vectorize, [msplits[i] for i in idx])
            jax.block_until_ready(out)
        wall = time.perf_counter() - t0
        for k, i in enumerate(idx):
            _, s, c = members[i]
            info = {"method": method, "wall_time_s": wall / len(idx), "group_wall_time_s": wall,
                    "group_size": len(idx), "config": _recorded_config(model, c), "seed": s,
                    **_ran_on(None, out), **infos[k]}
            results[i] = UnlearnResult(tree_index(out, k), info)
    return results


@contextlib.contextmanager
def _naming_sweep_members(idx: list[int]):
    """A NonFiniteError of a group's runner names its member by its place in the group ("sweep
    member 1", "fleet member 1"); the sweep's groups are not its order (configs of other
    shapes run apart), so the name is mapped to the member's place in the sweep: the
    documented i·len(configs) + j (it named a healthy member)."""
    try:
        yield
    except NonFiniteError as e:
        def sweep_member(m: re.Match) -> str:
            k = int(m.group(2))
            return f"(sweep member {idx[k]})" if k < len(idx) else m.group(0)
        text = re.sub(r"\((sweep|fleet) member (\d+)\)", sweep_member, str(e))
        if text == str(e):
            raise
        raise NonFiniteError(text) from e


def _retrain_fleet(model: Architecture, splits: list[ForgetSplit], cfgs: list,
                   per_seed: bool, vectorize: str) -> tuple[Any, list[dict]]:
    """Retrain members as one vmapped fit: on the shared D_r, or on each member's own D_r
    (equal sizes) laid side by side and indexed through per-member subsets."""
    rows = shared_rows(splits) if per_seed else None
    if rows is not None:    # one training set: its rows once, each member's D_r indexed in it
        ds = splits[0].retain.replace(x=rows.x, y=rows.y)
        state, _ = train.fit_fleet(model, ds, cfgs, subsets=rows.retain, vectorize=vectorize)
    elif per_seed:
        n = len(splits[0].retain)
        ds = splits[0].retain.replace(x=np.concatenate([s.retain.x for s in splits]),
                                      y=np.concatenate([s.retain.y for s in splits]))
        subsets = np.stack([k * n + np.arange(n) for k in range(len(splits))])
        state, _ = train.fit_fleet(model, ds, cfgs, subsets=subsets, vectorize=vectorize)
    else:
        state, _ = train.fit_fleet(model, splits[0].retain, cfgs, vectorize=vectorize)
    return state.params, [{"steps": int(state.step[k]), "epochs": c.epochs}
                          for k, c in enumerate(cfgs)]


__all__ = ["unlearn", "unlearn_sweep", "UnlearnResult", "METHODS", "GradTauConfig", "GradTau",
           "GradTauState", "nabla_tau", "gradtau_objective", "make_gradtau_step",
           "make_gradtau_optimizer", "run_gradtau", "run_gradtau_stream", "NegGradConfig",
           "NegGradPlusConfig", "RandomLabelsConfig", "SalUnConfig", "ScrubConfig",
           "BadTeacherConfig", "configs", "check_seed"]
