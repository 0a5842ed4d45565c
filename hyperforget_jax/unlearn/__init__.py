"""One API for every unlearning method.

    result = unlearn("gradtau", arch, params, split, val)       # -> UnlearnResult(params, info)

Methods: ``gradtau`` (∇τ, :mod:`.gradtau`), ``retrain`` (``train.fit`` on D_r with the original
recipe), ``finetune`` (∇τ's batches and optimiser with α ≡ 0: descent on D_r only), ``neggrad``,
``neggrad_plus``, ``random_labels``, ``scrub``, ``salun`` and ``bad_teacher``
(:mod:`.baselines`, hyperparameters with their sources in :mod:`.configs`). Every method returns
new parameters and leaves the caller's untouched; ``info`` always has ``method``, ``steps`` and
``wall_time_s`` (measured around the whole call, device work included).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, NamedTuple

import jax

from hyperforget_jax import train
from hyperforget_jax.data import Dataset, ForgetSplit
from hyperforget_jax.errors import ConfigError, ForgetRequestError
from hyperforget_jax.models import Architecture
from hyperforget_jax.unlearn import baselines, configs
from hyperforget_jax.unlearn.configs import (BadTeacherConfig, NegGradConfig, NegGradPlusConfig,
                                             RandomLabelsConfig, SalUnConfig, ScrubConfig)
from hyperforget_jax.unlearn.gradtau import (GradTauConfig, make_gradtau_optimizer,
                                             make_gradtau_step, run_gradtau)

METHODS = ("gradtau", "retrain", "finetune", "neggrad", "neggrad_plus", "random_labels",
           "scrub", "salun", "bad_teacher")

RESUMABLE = ("gradtau", "finetune", "retrain")

DEFAULT_CONFIGS = {"gradtau": GradTauConfig, "finetune": GradTauConfig,
                   **{k: c for k, (_, c) in baselines.METHODS.items()}}


class UnlearnResult(NamedTuple):
    params: Any
    info: dict


def _forget_classes(split: ForgetSplit) -> tuple[int, ...] | None:
    """The forgotten classes when the request removed whole classes (no retain sample left)."""
    fc = set(int(c) for c in set(split.forget.y.tolist()))
    return tuple(sorted(fc)) if not fc & set(split.retain.y.tolist()) else None


def unlearn(method: str, arch: Architecture, params: Any, split: ForgetSplit, val: Dataset,
            config: Any = None, seed: int = 0,
            forget_classes: tuple[int, ...] | None = None, *, checkpointer=None,
            meta: dict | None = None) -> UnlearnResult:
    """Runs ``method`` from ``params`` on the forget request ``split``.

    Args:
      method: one of ``METHODS``.
      arch: the classifier architecture.
      params: the original model's parameters (not modified).
      split: D_f / D_r (:func:`hyperforget_jax.data.resolve_forget`).
      val: held-out validation data (∇τ's τ).
      config: the method's config (default: its published values); for ``retrain`` a
        :class:`~hyperforget_jax.train.TrainConfig` (default ``TrainConfig(arch=arch.name,
        seed=seed)``; a given config is used as is, its own seed included).
      seed: batch order, random labels, random teachers.
      forget_classes: the removed classes for class removal; by default inferred (the forget
        set's classes when none of them is left in D_r). Selects ∇τ's τ.
      checkpointer: optional :class:`~hyperforget_jax.checkpoint.Checkpointer` for the
        iterative methods that can resume (``gradtau``, ``finetune``: after every forget-epoch;
        ``retrain``: after every epoch). A rerun on the same directory resumes and returns the
        same parameters as an uninterrupted run. The other baselines take seconds and ignore it
        (a ConfigError says so rather than silently not checkpointing).
      meta: JSON metadata stored with each checkpoint.

    Returns:
      :class:`UnlearnResult` ``(params, info)``.

    Raises:
      ConfigError: unknown method or a config of the wrong type.
      ForgetRequestError: empty forget or retain set.
      DataError: images of a shape the architecture does not take.
    """
    if method not in METHODS:
        raise ConfigError(f"unknown unlearning method {method!r}; choose one of "
                          f"{', '.join(METHODS)}")
    if len(split.forget) == 0 or len(split.retain) == 0:
        raise ForgetRequestError(f"{method}: the forget set ({len(split.forget)}) and the "
                                 f"retain set ({len(split.retain)}) must both be non-empty")
    arch.check_params(params)
    arch.check_inputs(split.forget.x, "forget set")
    arch.check_inputs(split.retain.x, "retain set")
    arch.check_inputs(val.x, "validation set")
    if forget_classes is None:
        forget_classes = _forget_classes(split)
    want = train.TrainConfig if method == "retrain" else DEFAULT_CONFIGS[method]
    if config is None:
        config = want(arch=arch.name, seed=seed) if method == "retrain" else want()
    if not isinstance(config, want):
        raise ConfigError(f"{method} takes a {want.__name__}, got {type(config).__name__}")
    if method == "finetune":
        config = dataclasses.replace(config, alpha0=0.0)
    if checkpointer is not None and method not in RESUMABLE:
        raise ConfigError(f"{method} does not checkpoint (it runs in one compiled call); "
                          f"pass checkpointer=None or use one of {', '.join(RESUMABLE)}")

    t0 = time.perf_counter()
    if method == "retrain":
        state, history = train.fit(arch, split.retain, config, checkpointer=checkpointer,
                                   meta=meta)
        out, info = state.params, {"steps": int(state.step), "epochs": config.epochs}
    elif method in ("gradtau", "finetune"):
        out, info = run_gradtau(arch, params, split, val, config, seed, forget_classes,
                                checkpointer=checkpointer, meta=meta)
    else:
        out, info = baselines.METHODS[method][0](arch, params, split, val, config, seed)
    jax.block_until_ready(out)
    info = {"method": method, "wall_time_s": time.perf_counter() - t0,
            "config": dataclasses.asdict(config), "seed": seed, **info}
    return UnlearnResult(out, info)


__all__ = ["unlearn", "UnlearnResult", "METHODS", "GradTauConfig", "make_gradtau_step",
           "make_gradtau_optimizer", "run_gradtau", "NegGradConfig", "NegGradPlusConfig",
           "RandomLabelsConfig", "SalUnConfig", "ScrubConfig", "BadTeacherConfig", "configs"]
