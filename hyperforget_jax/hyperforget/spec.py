"""What a trained hypernetwork is: its spec (architecture, weight space, conditioning
statistics, what it covers), the :class:`Hypernet` object, prompts and request checks.

Conditioning [ours, from the paper's description; METHODS.md §2]. Losses enter as logarithms,
targets relative to the start, each condition standardised over the corpus (issue 13: raw losses
of 0.02..16 in a frequency embedding reaching 2^14, and a retain target in absolute terms, made
the retain target useless):

* DiHyFo-1 — one fixed forget class c: (log L_f start, log L_f target − log L_f start,
  log L_f target).
* DiHyFo-2 — (log L_f start, log L_f target − log L_f start, log L_r start,
  log L_r target − log L_r start) and a multi-hot token of the classes to forget: one network
  for every request, several classes at once included.

L_f / L_r are the mean cross-entropy on the training images of the forgotten / kept classes.
Default targets (stored in the spec, per number of forgotten classes): the forget loss is the
median final forget loss of the corpus's unlearning trajectories, the retain loss the start's
times the median final/start ratio (≈ 1: keep the retain loss).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from hyperforget_jax import params as P_
from hyperforget_jax.errors import ConfigError, ForgetRequestError
from hyperforget_jax.hyperforget import denoiser as DN
from hyperforget_jax.hyperforget.weightspace import WeightSpace
from hyperforget_jax.models import Architecture

VARIANTS = ("dihyfo1", "dihyfo2")
Params = Any
_MIN_LOSS = 1e-6


@dataclasses.dataclass(frozen=True)
class HyperSpec:
    """Everything needed to rebuild a trained hypernetwork (stored as its JSON meta).

    Attributes:
      variant: ``"dihyfo1"`` (one class) or ``"dihyfo2"`` (any request).
      arch: the target architecture.
      weights: the :class:`WeightSpace` (normalisation of θ₀ and of the change).
      denoiser: the denoiser's sizes.
      forget_class: DiHyFo-1's class (None for DiHyFo-2).
      num_train_steps: diffusion steps T [G.pt: 1000].
      scalar_mean, scalar_std: standardisation of the raw conditions (corpus statistics).
      default_targets: ``((num_classes, forget_loss, retain_log_ratio), ...)``.
      forget_loss_range: the 5th and 95th percentiles of the forget loss over the corpus's
        training checkpoints (the original included): the prompt range the corpus covers,
        on which prompt alignment is measured (from the start network's own loss up).
      trained_classes: classes that occur in the training requests.
      trained_requests: the requests of the training trajectories.
    """

    variant: str
    arch: Architecture
    weights: WeightSpace
    denoiser: DN.DenoiserConfig
    forget_class: int | None = None
    num_train_steps: int = 1000
    scalar_mean: tuple = ()
    scalar_std: tuple = ()
    default_targets: tuple = ()
    forget_loss_range: tuple = (0.0, 1.0)
    trained_classes: tuple = ()
    trained_requests: tuple = ()

    def __post_init__(self):
        if self.variant not in VARIANTS:
            raise ConfigError(f"unknown hypernetwork variant {self.variant!r}; choose one of "
                              f"{', '.join(VARIANTS)}")
        if (self.variant == "dihyfo1") != (self.forget_class is not None):
            raise ConfigError("DiHyFo-1 needs exactly one forget_class; DiHyFo-2 takes none")
        n = self.num_scalars
        if self.scalar_mean and (len(self.scalar_mean) != n or len(self.scalar_std) != n):
            raise ConfigError(f"{self.variant} has {n} conditions; scalar_mean/std have "
                              f"{len(self.scalar_mean)}/{len(self.scalar_std)}")
        if self.denoiser.tokens == "auto":
            raise ConfigError("resolve the denoiser's tokens ('chunks' or 'units') before "
                              "building a spec (train_hypernet does)")
        if not (np.isfinite(self.scalar_mean).all() and np.isfinite(self.scalar_std).all()
                and (np.asarray(self.scalar_std) > 0).all()):
            raise ConfigError(f"the conditions' statistics must be finite with std > 0, got "
                              f"mean {self.scalar_mean}, std {self.scalar_std}")
        ws = self.weights
        if not (np.isfinite(ws.start_scale).all() and (np.asarray(ws.start_scale) > 0).all()
                and np.isfinite(ws.change_scale).all()
                and (np.asarray(ws.change_scale) >= 0).all()):
            raise ConfigError("the weight space's scales must be finite, start_scale > 0 and "
                              "change_scale >= 0")
        if self.weights.num_params != self.arch.param_count:
            raise ConfigError(f"the weight space has {self.weights.num_params} parameters, "
                              f"the architecture {self.arch.param_count}")

    @property
    def num_scalars(self) -> int:
        return 3 if self.variant == "dihyfo1" else 4

    @property
    def target_scalars(self) -> tuple[int, ...]:
        """Positions of the loss-target conditions (dropped for classifier-free guidance)."""
        return (1, 2) if self.variant == "dihyfo1" else (1, 3)

    @property
    def num_classes(self) -> int:
        return self.arch.num_classes

    def model(self) -> DN.GptDenoiser:
        return DN.GptDenoiser(tuple(P_.param_spans(self.arch.param_shapes())),
                              tuple(self.weights.diffused), self.denoiser.tokens,
                              self.num_scalars, self.target_scalars,
                              self.num_classes if self.variant == "dihyfo2" else 0,
                              self.denoiser, self.num_train_steps)

    def raw_conditions(self, f0, f1, r0, r1):
        """The unstandardised conditions of this variant (arrays broadcast)."""
        lf0, lf1, lr0, lr1 = (jnp.log(jnp.maximum(jnp.asarray(v, jnp.float32), _MIN_LOSS))
                              for v in (f0, f1, r0, r1))
        if self.variant == "dihyfo1":
            return jnp.stack([lf0, lf1 - lf0, lf1], -1)
        return jnp.stack([lf0, lf1 - lf0, lr0, lr1 - lr0], -1)

    def conditions(self, f0, f1, r0, r1):
        """Standardised conditions (the denoiser's scalar inputs)."""
        raw = self.raw_conditions(f0, f1, r0, r1)
        if not self.scalar_mean:
            return raw
        return (raw - jnp.asarray(self.scalar_mean)) / jnp.asarray(self.scalar_std)

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["arch"] = self.arch.to_json()
        d["weights"] = self.weights.to_json()
        d["denoiser"] = self.denoiser.to_json()
        for k in ("scalar_mean", "scalar_std", "forget_loss_range", "trained_classes"):
            d[k] = list(getattr(self, k))
        d["default_targets"] = [list(t) for t in self.default_targets]
        d["trained_requests"] = [list(t) for t in self.trained_requests]
        return d

    @classmethod
    def from_json(cls, d: dict) -> "HyperSpec":
        d = dict(d)
        d["arch"] = Architecture.from_json(d["arch"])
        d["weights"] = WeightSpace.from_json(d["weights"])
        d["denoiser"] = DN.DenoiserConfig(**d["denoiser"])
        for k in ("scalar_mean", "scalar_std", "forget_loss_range", "trained_classes"):
            d[k] = tuple(d.get(k, ()))
        d["default_targets"] = tuple(tuple(t) for t in d.get("default_targets", ()))
        d["trained_requests"] = tuple(tuple(t) for t in d.get("trained_requests", ()))
        return cls(**d)


class Hypernet:
    """A trained hypernetwork: its spec, the (EMA) denoiser parameters, and the compiled
    samplers it owns (built on first use, freed with the object; no module-level cache).

    ``p_uncond`` is the classifier-free dropout it was trained with (``None``: not known, e.g.
    built by hand or saved without it); at 0 its target-free prediction never learnt, so the
    samplers refuse a guidance weight other than 0. ``built_on``: its corpus's data
    (``dataset``, ``split_seed``, ``identity.data``: the arrays' fingerprint), which
    :func:`~hyperforget_jax.hyperforget.store.save_hypernet` records and ``hyperforget
    sample`` compares with its data (``None``: not known)."""

    __slots__ = ("spec", "params", "p_uncond", "built_on", "_programs")

    def __init__(self, spec: HyperSpec, params: Params, p_uncond: float | None = None,
                 built_on: dict | None = None):
        self.spec = spec
        self.params = params
        self.p_uncond = None if p_uncond is None else float(p_uncond)
        self.built_on = built_on or None
        self._programs: dict = {}

    def program(self, key, build: Callable[[], Callable]) -> Callable:
        """The compiled callable stored under ``key``, built once by ``build()``."""
        if key not in self._programs:
            self._programs[key] = build()
        return self._programs[key]


class Prompt(NamedTuple):
    """One request as arrays (vmap over a leading axis with :func:`stack_prompts`)."""

    classes: jax.Array         # (K,) multi-hot
    forget_start: jax.Array    # L_f of the start network
    forget_target: jax.Array
    retain_start: jax.Array
    retain_target: jax.Array


def multi_hot(classes, num_classes: int) -> np.ndarray:
    """The class token of a request: 1 at each of ``classes``.

    Raises:
      ForgetRequestError: a class outside 0..num_classes-1 (NumPy read -1 as the last class,
        so ``multi_hot((-1,), 10)`` was a request for class 9).
    """
    classes = list(classes)
    bad = [c for c in classes if not 0 <= c < num_classes]
    if bad:
        raise ForgetRequestError(f"class {bad[0]} does not exist: the classes are "
                                 f"0..{num_classes - 1}")
    v = np.zeros(num_classes, np.float32)
    v[classes] = 1.0
    return v


def stack_prompts(prompts: list[Prompt]) -> Prompt:
    """The prompts stacked on a leading axis (one row per request, for ``sample_many``)."""
    prompts = list(prompts)
    if not prompts:     # was a bare TypeError from Prompt()
        raise ForgetRequestError("stack_prompts needs at least one prompt (make_prompt)")
    bad = [type(p).__name__ for p in prompts if not isinstance(p, Prompt)]
    if bad:
        raise ConfigError(f"stack_prompts takes Prompts (make_prompt), got a {bad[0]}")
    return Prompt(*(jnp.stack(v) for v in zip(*prompts)))


def default_targets(spec: HyperSpec, num_forget: int) -> tuple[float, float]:
    """(forget loss, retain log-ratio) of the default prompt for ``num_forget`` classes."""
    table = {int(n): (f, r) for n, f, r in spec.default_targets}
    if num_forget not in table:
        # A corpus holds one- and two-class requests only (CorpusConfig.requests).
        fix = ("corpora hold one- and two-class requests only: forget at most 2 classes "
               "per request, or unlearn it with hf.unlearn (`hyperforget unlearn`)"
               if num_forget > 2 else "build the corpus with such requests "
               "(CorpusConfig.class_pairs, --pairs, for two classes) and retrain it")
        raise ForgetRequestError(
            f"this hypernetwork was trained on requests of {sorted(table)} class(es), not "
            f"{num_forget}; {fix}")
    return table[num_forget]


def check_request(spec: HyperSpec, classes: tuple[int, ...]) -> None:
    """Raises ForgetRequestError for a request this hypernetwork was not trained for."""
    if not classes:
        raise ForgetRequestError("empty forget request: give at least one class")
    bad = [c for c in classes if not 0 <= c < spec.num_classes]
    if bad:
        raise ForgetRequestError(f"class {bad[0]} does not exist: the hypernetwork's classifier "
                                 f"has classes 0..{spec.num_classes - 1}")
    if len(set(classes)) != len(classes):
        raise ForgetRequestError(f"forget request {list(classes)} repeats a class")
    if spec.variant == "dihyfo1" and tuple(classes) != (spec.forget_class,):
        raise ForgetRequestError(
            f"this DiHyFo-1 network was trained to forget class {spec.forget_class} only, not "
            f"{list(classes)}; use a DiHyFo-2 network or train DiHyFo-1 for that class")
    unseen = [c for c in classes if spec.trained_classes and c not in spec.trained_classes]
    if unseen:
        raise ForgetRequestError(
            f"this hypernetwork never saw a request forgetting class {unseen[0]} (its corpus "
            f"covers classes {list(spec.trained_classes)}); rebuild the corpus with that class "
            "and retrain the hypernetwork")
    default_targets(spec, len(classes))


def coverage(spec: HyperSpec, classes, forget_target: float) -> dict:
    """What of a request the hypernetwork's corpus held, for a sample's record: whether this
    very class set was a training request (an unseen pair is served through the class tokens,
    by extrapolation), and whether the prompted forget loss lies within the corpus's 5th-95th
    percentile :attr:`HyperSpec.forget_loss_range` (outside it the corpus never showed such a
    target and prompt alignment was never measured). None where the spec does not record it."""
    rng = [float(v) for v in spec.forget_loss_range]
    seen = {tuple(sorted(r)) for r in spec.trained_requests}
    return {"request_in_corpus": (tuple(sorted(int(c) for c in classes)) in seen
                                  if seen else None),
            "forget_loss_range": rng or None,
            "forget_target_in_range": (rng[0] <= float(forget_target) <= rng[1]
                                       if len(rng) == 2 else None)}


def check_target(name: str, value) -> float:
    """A prompted loss must be a positive finite number (it enters as a logarithm), one that
    float32 holds (the prompt's dtype: 1e-50 was 0 there, 1e300 inf)."""
    if isinstance(value, (bool, np.bool_, str, bytes)):     # ("2" read as 2.0, True as 1.0)
        raise ForgetRequestError(f"prompt {name} must be a number, got {value!r}")
    try:
        v = float(value)
    except (TypeError, ValueError) as e:
        raise ForgetRequestError(f"prompt {name} must be a number, got {value!r}") from e
    if not (np.isfinite(v) and 0 < v <= float(np.finfo(np.float32).max) and np.float32(v) > 0):
        raise ForgetRequestError(f"prompt {name} must be a positive finite loss, got {v}; pass "
                                 "a value such as 5.0 or omit it for the hypernetwork's "
                                 "default")
    return v
