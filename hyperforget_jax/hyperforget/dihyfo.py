"""DiHyFo-1 and DiHyFo-2: diffusion hypernetworks that *sample* unlearned classifiers.

    corpus = Corpus("runs/corpus")
    net, hist = train_hypernet(corpus, "dihyfo2")                 # or ("dihyfo1", forget_class=3)
    prompt = make_prompt(net, original_params, splits.train, classes=(3,))
    params = sample(jax.random.key(0), net, original_params, prompt)   # arch.apply(params, x)
    many = sample_many(keys, net, original_params, stack_prompts([...]))  # vmapped requests

Conditioning [ours, from the paper's description; METHODS.md §2]:

* DiHyFo-1 — one fixed forget class c; scalars (L_f start, L_f target, L_f target − start).
* DiHyFo-2 — scalars (L_f start, L_f target, L_r start, L_r target) and a multi-hot token of
  the classes to forget: one network for every request, several classes at once included.

L_f / L_r are the mean cross-entropy on the training images of the forgotten / kept classes.
Training pairs (θ_i → θ_j, i < j, same ∇τ trajectory of a *training* run, G.pt's "forward in
time"); half of them start at the trajectory's first checkpoint, the original network, which is
what a request starts from [ours]. Default prompt targets: the median final L_f and L_r of the
corpus trajectories with the same number of forgotten classes, stored in the hypernetwork.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from hyperforget_jax import checkpoint, data
from hyperforget_jax import params as P_
from hyperforget_jax.errors import (ArchitectureError, CheckpointError, ConfigError,
                                    ForgetRequestError)
from hyperforget_jax.hyperforget import denoiser as DN
from hyperforget_jax.hyperforget import diffusion as D
from hyperforget_jax.hyperforget.corpus import Corpus
from hyperforget_jax.models import Architecture
from hyperforget_jax.train import mean_cross_entropy

VARIANTS = ("dihyfo1", "dihyfo2")
Params = Any


@dataclasses.dataclass(frozen=True)
class HyperSpec:
    """Everything needed to rebuild a trained hypernetwork (stored as its JSON meta)."""

    variant: str
    arch: Architecture
    param_scale: float
    denoiser: DN.DenoiserConfig
    forget_class: int | None = None
    num_train_steps: int = 1000
    default_targets: tuple = ()       # ((num_classes, forget_loss, retain_loss), ...)
    forget_loss_range: tuple = (0.0, 1.0)
    trained_classes: tuple = ()       # classes that occur in the training requests

    def __post_init__(self):
        if self.variant not in VARIANTS:
            raise ConfigError(f"unknown hypernetwork variant {self.variant!r}; choose one of "
                              f"{', '.join(VARIANTS)}")
        if (self.variant == "dihyfo1") != (self.forget_class is not None):
            raise ConfigError("DiHyFo-1 needs exactly one forget_class; DiHyFo-2 takes none")

    @property
    def num_scalars(self) -> int:
        return 3 if self.variant == "dihyfo1" else 4

    @property
    def num_classes(self) -> int:
        return self.arch.num_classes

    def model(self) -> DN.GptDenoiser:
        return DN.GptDenoiser(tuple(P_.chunk_spans(self.arch.param_shapes(),
                                                   self.denoiser.max_chunk)),
                              self.num_scalars,
                              self.num_classes if self.variant == "dihyfo2" else 0,
                              self.denoiser, self.num_train_steps)

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["arch"] = self.arch.to_json()
        d["default_targets"] = [list(t) for t in self.default_targets]
        d["trained_classes"] = list(self.trained_classes)
        return d

    @classmethod
    def from_json(cls, d: dict) -> "HyperSpec":
        d = dict(d)
        d["arch"] = Architecture.from_json(d["arch"])
        d["denoiser"] = DN.DenoiserConfig(**d["denoiser"])
        d["default_targets"] = tuple(tuple(t) for t in d["default_targets"])
        d["forget_loss_range"] = tuple(d["forget_loss_range"])
        d["trained_classes"] = tuple(d.get("trained_classes", ()))
        return cls(**d)


class Hypernet(NamedTuple):
    """A trained hypernetwork: its spec and the (EMA) denoiser parameters."""

    spec: HyperSpec
    params: Params


class Prompt(NamedTuple):
    """One request as arrays (vmap over a leading axis with :func:`stack_prompts`)."""

    classes: jax.Array         # (K,) multi-hot
    forget_start: jax.Array    # L_f of the start network
    forget_target: jax.Array
    retain_start: jax.Array
    retain_target: jax.Array


def multi_hot(classes, num_classes: int) -> np.ndarray:
    v = np.zeros(num_classes, np.float32)
    v[list(classes)] = 1.0
    return v


def condition_scalars(variant: str, f0, f1, r0, r1):
    """The scalar conditions of one variant (arrays broadcast)."""
    if variant == "dihyfo1":
        return jnp.stack([f0, f1, f1 - f0], -1)
    return jnp.stack([f0, f1, r0, r1], -1)


# --- training data -------------------------------------------------------------------------

class PairSource(NamedTuple):
    """Flattened trajectories: scaled params (R, P), losses (R,), multi-hot (R, K), and per
    trajectory its first row and length."""

    params: np.ndarray
    forget_loss: np.ndarray
    retain_loss: np.ndarray
    classes: np.ndarray
    starts: np.ndarray
    lengths: np.ndarray


def pair_source(corpus: Corpus, variant: str, forget_class: int | None, scale: float | None,
                split: str = "train") -> tuple[PairSource, float]:
    """∇τ trajectories of the ``split`` runs usable by the variant, and the parameter scale
    (0.538 / std of the training parameters when ``scale`` is None)."""
    trajs = corpus.trajectories("gradtau", split)
    if variant == "dihyfo1":
        trajs = [t for t in trajs if corpus.requests[t[1]] == (forget_class,)]
        if not trajs:
            raise ConfigError(f"the corpus has no ∇τ trajectory forgetting class {forget_class}")
    if not trajs:
        raise CheckpointError(f"corpus {corpus.path} has no {split} ∇τ trajectories")
    rows = np.concatenate([t[2] for t in trajs])
    lengths = np.array([len(t[2]) for t in trajs])
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    fl, rl, cl = [], [], []
    for _, r, rws in trajs:
        m = corpus.request_metrics(rws, corpus.requests[r], "train")
        fl.append(m["forget_loss"])
        rl.append(m["retain_loss"])
        cl.append(np.broadcast_to(multi_hot(corpus.requests[r], corpus.num_classes),
                                  (len(rws), corpus.num_classes)))
    flat = corpus.params(rows)
    if scale is None:
        scale = float(0.538 / flat.std())
    return PairSource(flat * np.float32(scale), np.concatenate(fl).astype(np.float32),
                      np.concatenate(rl).astype(np.float32), np.concatenate(cl),
                      starts, lengths), scale


def sample_pairs(rng: np.random.Generator, src: PairSource, batch: int,
                 from_first: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Row ids (start, target) of ``batch`` forward pairs i < j within one trajectory; a share
    ``from_first`` of them start at the trajectory's first checkpoint."""
    t = rng.integers(0, len(src.starts), batch)
    n = src.lengths[t]
    i = np.where(rng.random(batch) < from_first, 0, (rng.random(batch) * (n - 1)).astype(int))
    j = i + 1 + (rng.random(batch) * (n - 1 - i)).astype(int)
    return src.starts[t] + i, src.starts[t] + j


def _default_targets(src: PairSource) -> tuple:
    last = src.starts + src.lengths - 1
    k = src.classes[last].sum(1).astype(int)
    return tuple((int(n), float(np.median(src.forget_loss[last][k == n])),
                  float(np.median(src.retain_loss[last][k == n]))) for n in np.unique(k))


def train_hypernet(corpus: Corpus, variant: str = "dihyfo2", forget_class: int | None = None,
                   denoiser: DN.DenoiserConfig | None = None,
                   config: DN.HyperTrainConfig | None = None, param_scale: float | None = None,
                   progress: bool = False) -> tuple[Hypernet, dict]:
    """Trains DiHyFo-1 (``forget_class`` set) or DiHyFo-2 on the corpus's training runs.

    Returns:
      The :class:`Hypernet` (EMA parameters) and a history: ``loss`` every 50 steps,
      ``seconds``, ``steps_per_second``, ``pairs`` (number of trajectories).
    """
    denoiser = denoiser or DN.DenoiserConfig()
    cfg = config or DN.HyperTrainConfig()
    src, scale = pair_source(corpus, variant, forget_class, param_scale)
    spec = HyperSpec(variant, corpus.arch, scale, denoiser, forget_class,
                     default_targets=_default_targets(src),
                     forget_loss_range=(float(src.forget_loss.min()),
                                        float(src.forget_loss.max())),
                     trained_classes=tuple(int(c) for c in np.flatnonzero(
                         src.classes.max(0) > 0.5)))
    model, sched = spec.model(), D.make_schedule(spec.num_train_steps)
    tx = DN.make_hyper_optimizer(cfg)
    state = DN.init_hyper_state(model, tx, jax.random.key(cfg.seed), corpus.arch.param_count)
    template = corpus.arch.param_shapes() if cfg.permute else None
    step = jax.jit(DN.make_hyper_train_step(model, sched, tx, cfg.ema_decay), donate_argnums=0)

    @jax.jit
    def prepare(key, start, target, f0, f1, r0, r1, classes):
        scalars = condition_scalars(variant, f0, f1, r0, r1)
        return DN.prepare_batch(key, sched, start, target, scalars,
                                classes if variant == "dihyfo2" else None, template)

    rng = np.random.default_rng(cfg.seed)
    key = jax.random.key(cfg.seed + 1)
    losses, t0 = [], time.perf_counter()
    it = range(cfg.steps)
    if progress:
        from tqdm.auto import tqdm
        it = tqdm(it, desc=f"hypertrain {variant}", unit="step")
    acc = []
    for n in it:
        a, b = sample_pairs(rng, src, cfg.batch_size, cfg.from_start)
        batch = prepare(jax.random.fold_in(key, n), src.params[a], src.params[b],
                        src.forget_loss[a], src.forget_loss[b], src.retain_loss[a],
                        src.retain_loss[b], src.classes[b])
        state, m = step(state, batch)
        acc.append(m["loss"])
        if (n + 1) % 50 == 0 or n + 1 == cfg.steps:
            losses.append(float(jnp.mean(jnp.stack(acc))))
            acc = []
            if not np.isfinite(losses[-1]):
                from hyperforget_jax.errors import NonFiniteError
                raise NonFiniteError(f"hypernetwork loss became non-finite near step {n}; "
                                     "lower the learning rate")
    jax.block_until_ready(state.ema_params)
    secs = time.perf_counter() - t0
    return Hypernet(spec, state.ema_params), {
        "loss": losses, "seconds": secs, "steps_per_second": cfg.steps / secs,
        "trajectories": int(len(src.starts)), "train_config": cfg.to_json()}


# --- prompts and sampling ------------------------------------------------------------------

def default_targets(spec: HyperSpec, num_forget: int) -> tuple[float, float]:
    table = {int(n): (f, r) for n, f, r in spec.default_targets}
    if num_forget not in table:
        raise ForgetRequestError(
            f"this hypernetwork was trained on requests of {sorted(table)} class(es), not "
            f"{num_forget}; build the corpus with class pairs (--pairs) and retrain it")
    return table[num_forget]


def make_prompt(net: Hypernet, params: Params, train: data.Dataset, classes,
                forget_target: float | None = None, retain_target: float | None = None
                ) -> Prompt:
    """The request "forget ``classes``" for the start network ``params``: start losses measured
    on the training set, targets from the hypernetwork's defaults unless given."""
    classes = tuple(int(c) for c in classes)
    check_request(net.spec, classes)
    net.spec.arch.check_params(params)
    net.spec.arch.check_inputs(train.x, "training set")
    split = data.resolve_forget(train, data.ForgetRequest(classes=classes))
    f0 = _mean_ce(net.spec.arch, params, split.forget)
    r0 = _mean_ce(net.spec.arch, params, split.retain)
    df, dr = default_targets(net.spec, len(classes))
    f1 = df if forget_target is None else float(forget_target)
    r1 = dr if retain_target is None else float(retain_target)
    return Prompt(jnp.asarray(multi_hot(classes, net.spec.num_classes)),
                  *(jnp.float32(v) for v in (f0, f1, r0, r1)))


def _mean_ce(arch: Architecture, params: Params, ds: data.Dataset) -> float:
    return float(mean_cross_entropy(arch.apply, params, jnp.asarray(ds.x), jnp.asarray(ds.y)))


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


def _check_prompt(spec: HyperSpec, prompt: Prompt) -> None:
    if isinstance(prompt.classes, jax.core.Tracer):
        return      # under jax.vmap / jit: make_prompt / sample_many validated the values
    cls = np.asarray(prompt.classes)
    if cls.shape[-1] != spec.num_classes:
        raise ForgetRequestError(f"prompt has a {cls.shape[-1]}-class token, the hypernetwork "
                                 f"expects {spec.num_classes}")
    for row in cls.reshape(-1, spec.num_classes):
        check_request(spec, tuple(int(c) for c in np.flatnonzero(row > 0.5)))


@functools.lru_cache(maxsize=16)
def _sampler(spec: HyperSpec, num_steps: int, method: str):
    model, sched = spec.model(), D.make_schedule(spec.num_train_steps)

    def one(hparams, theta0, prompt: Prompt, key):
        x0 = theta0[None] * spec.param_scale
        scalars = condition_scalars(spec.variant, prompt.forget_start, prompt.forget_target,
                                    prompt.retain_start, prompt.retain_target)[None]
        cls = prompt.classes[None] if spec.variant == "dihyfo2" else None
        fn = lambda x, t: model.apply({"params": hparams}, x, x0, t, scalars, cls)
        if method == "ddim":
            out = D.ddim_sample(sched, fn, key, x0.shape, num_steps)
        else:
            out = D.ddpm_sample(sched, fn, key, x0.shape)
        return out[0] / spec.param_scale

    return jax.jit(one), jax.jit(jax.vmap(one, in_axes=(None, None, 0, 0)))


def _check_sampling(net: Hypernet, params: Params, method: str) -> jax.Array:
    if method not in ("ddim", "ddpm"):
        raise ConfigError(f"unknown sampler {method!r}; choose ddim or ddpm")
    try:
        net.spec.arch.check_params(params)
    except ArchitectureError as e:
        raise ArchitectureError(f"the hypernetwork was trained on {net.spec.arch.name} "
                                f"({net.spec.arch.param_count} parameters): {e}") from e
    return P_.flatten(params)


def sample(key: jax.Array, net: Hypernet, params: Params, prompt: Prompt, num_steps: int = 20,
           method: str = "ddim") -> Params:
    """Samples one unlearned network for ``prompt`` starting from ``params``.

    Args:
      key: PRNG key (the initial noise).
      net: the trained hypernetwork.
      params: the start network θ₀ (a params pytree of ``net.spec.arch``).
      prompt: :func:`make_prompt`.
      num_steps: DDIM steps (ignored by DDPM, which takes all T).
      method: ``"ddim"`` (η = 0) or ``"ddpm"`` (ancestral).

    Returns:
      A params pytree with the structure of ``params`` (``arch.apply(out, x)`` works).

    ``jax.vmap(lambda k, p: sample(k, net, params, p))(keys, prompts)`` samples many requests
    at once (the request check then runs in :func:`make_prompt` only); :func:`sample_many`
    is the same with the check.

    Raises:
      ArchitectureError: ``params`` do not fit the hypernetwork's architecture.
      ForgetRequestError: a request it was not trained for (e.g. DiHyFo-1, another class).
    """
    flat = _check_sampling(net, params, method)
    _check_prompt(net.spec, prompt)
    one, _ = _sampler(net.spec, num_steps, method)
    return P_.unflatten(one(net.params, flat, prompt, key), params)


def stack_prompts(prompts: list[Prompt]) -> Prompt:
    return Prompt(*(jnp.stack(v) for v in zip(*prompts)))


def sample_many(keys: jax.Array, net: Hypernet, params: Params, prompts: Prompt,
                num_steps: int = 20, method: str = "ddim") -> Params:
    """Vmapped :func:`sample`: ``prompts`` stacked (:func:`stack_prompts`), one key each.
    Returns stacked params (leading axis = request)."""
    flat = _check_sampling(net, params, method)
    _check_prompt(net.spec, prompts)
    _, many = _sampler(net.spec, num_steps, method)
    out = many(net.params, flat, prompts, keys)
    return jax.vmap(lambda f: P_.unflatten(f, params))(out)


# --- persistence -----------------------------------------------------------------------------

def save_hypernet(path, net: Hypernet, extra_meta: dict | None = None) -> None:
    """Orbax params checkpoint with the spec as JSON meta (``checkpoint.save_params``)."""
    checkpoint.save_params(path, net.params, {"hypernet": net.spec.to_json(),
                                              **(extra_meta or {})})


def load_hypernet(path) -> tuple[Hypernet, dict]:
    """Loads :func:`save_hypernet`'s directory, or the ``--out`` of ``hyperforget hypertrain``
    (which holds it as ``hypernet/``)."""
    path = Path(path)
    if (path / "hypernet").is_dir():
        path = path / "hypernet"
    meta = checkpoint.load_params_meta(path)
    if "hypernet" not in meta:
        raise CheckpointError(f"{path} is a params checkpoint but not a hypernetwork; pass the "
                              "--out of `hyperforget hypertrain`")
    spec = HyperSpec.from_json(meta["hypernet"])
    params, meta = checkpoint.load_params(path, DN.param_shapes(spec.model(),
                                                                spec.arch.param_count))
    return Hypernet(spec, params), meta
