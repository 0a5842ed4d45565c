"""Prompts and sampling: a request → a sampled unlearned network.

    prompt = make_prompt(net, params, splits.train, classes=(3,))
    unlearned = sample(jax.random.key(0), net, params, prompt)          # arch.apply(unlearned, x)
    many = sample_many(keys, net, params, stack_prompts([...]))        # vmapped requests
    best = sample_best_of(key, net, params, prompt, splits.train, k=8)  # [beyond] selection

Sampling runs DDIM (η = 0, ``num_steps`` denoiser calls) or ancestral DDPM (σ_t² = β_t, G.pt's
FIXED_LARGE variance) over the normalised change
(:mod:`~hyperforget_jax.hyperforget.weightspace`), then maps it back onto θ₀. Classifier-free
guidance: ``guidance = w`` gives x̂ = x̂_c + w (x̂_c − x̂_u); ``w = 0`` (the default) runs the
conditional model alone, exactly the unguided sampler.
"""

from __future__ import annotations

import dataclasses
import numbers
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from hyperforget_jax import data, xla
from hyperforget_jax import params as P_
from hyperforget_jax.checkpoint_checks import first_non_finite
from hyperforget_jax.config import check_config, check_count, field
from hyperforget_jax.errors import (ArchitectureError, ConfigError, DataError, ForgetRequestError,
                                    NonFiniteError)
from hyperforget_jax.hyperforget import diffusion as D
from hyperforget_jax.hyperforget.spec import (Hypernet, HyperSpec, Prompt, check_request,
                                              check_target, default_targets, multi_hot,
                                              stack_prompts)
from hyperforget_jax.models import Architecture
from hyperforget_jax.train import mean_cross_entropy

Params = Any


@dataclasses.dataclass(frozen=True)
class SampleConfig:
    """How a request is sampled (``hyperforget sample`` and experiments/hyperforget_eval.py).

    Attributes:
      num_steps: DDIM steps, i.e. denoiser calls (DDPM takes all T) [ours: 20; the DDIM-steps
        table in docs/hyperforget.md shows how few keep the bar].
      method: ``ddim`` (deterministic, η = 0) or ``ddpm`` (ancestral, all T steps) [G.pt:
        DDPM; ours: DDIM by default, for its few denoiser calls].
      guidance: classifier-free guidance weight w; 0 runs the conditional model alone [ours].
      best_of: draw N samples in one vmapped call and keep the one closest to the prompt
        (:func:`sample_best_of`); 1 is a plain sample [beyond].
    """

    num_steps: int = field(20, ge=1)
    method: str = field("ddim", choices=("ddim", "ddpm"))
    guidance: float = field(0.0, ge=0)
    best_of: int = field(1, ge=1)

    def __post_init__(self):
        check_config(self)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def _mean_ce(arch: Architecture, params: Params, ds: data.Dataset) -> float:
    return float(mean_cross_entropy(arch, params, jnp.asarray(ds.x), jnp.asarray(ds.y)))


def check_start(spec: HyperSpec, params: Params) -> None:
    """ArchitectureError naming the hypernetwork's architecture when ``params`` do not fit."""
    try:
        spec.arch.check_params(params)
    except ArchitectureError as e:
        raise ArchitectureError(f"the hypernetwork was trained on {spec.arch.name} "
                                f"({spec.arch.param_count} parameters): {e}") from e
    if not _finite_or_traced(params):
        raise NonFiniteError("the start network's parameters contain NaN/inf; pass a trained, "
                             "finite network")


def _finite_or_traced(tree: Any) -> bool:
    """Whether every float array of ``tree`` is free of NaN/inf, checked on the host (op by op
    on the device it compiled two programs per leaf shape, ≈ 0.5 s of a first ``sample``); True
    under ``jit`` / ``vmap`` (sampling composes with them: the check then belongs to the
    caller)."""
    if any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(tree)):
        return True
    return first_non_finite(tree) is None


def make_prompt(net: Hypernet, params: Params, train: data.Dataset, classes,
                forget_target: float | None = None, retain_target: float | None = None
                ) -> Prompt:
    """The request "forget ``classes``" for the start network ``params``: start losses measured
    on the training set; targets from the hypernetwork's defaults unless given (the default
    retain target is the start's retain loss times the corpus's median endpoint ratio). A
    DiHyFo-1 network conditions on the forget losses only: its samples ignore the retain target
    (:func:`sample_best_of` still uses it to choose among samples).

    Raises:
      ForgetRequestError: a request the hypernetwork does not cover, or a target that is not a
        positive finite loss.
      ArchitectureError: ``params`` are not the hypernetwork's architecture.
      NonFiniteError: ``params`` hold NaN/inf.
      DataError: ``train`` is not a Dataset of the architecture's inputs (images in [0, 1] for
        a registered model).
    """
    classes = data.ForgetRequest(classes=classes).classes    # ints: 3.5 refused, not truncated
    check_request(net.spec, classes)
    if forget_target is not None:
        forget_target = check_target("forget target", forget_target)
    if retain_target is not None:
        retain_target = check_target("retain target", retain_target)
    check_start(net.spec, params)
    _check_train(net, train)
    split = data.resolve_forget(train, data.ForgetRequest(classes=classes))
    f0 = _mean_ce(net.spec.arch, params, split.forget)
    r0 = _mean_ce(net.spec.arch, params, split.retain)
    df, dr = default_targets(net.spec, len(classes))
    f1 = df if forget_target is None else forget_target
    r1 = r0 * float(np.exp(dr)) if retain_target is None else retain_target
    return Prompt(jnp.asarray(multi_hot(classes, net.spec.num_classes)),
                  *(jnp.float32(v) for v in (f0, f1, r0, r1)))


def _check_prompt(spec: HyperSpec, prompt: Prompt, stacked: bool = False) -> None:
    """ForgetRequestError for a prompt that is not one request (``stacked``: a stack of them,
    :func:`stack_prompts`) of this hypernetwork: the shapes (a stacked prompt given to
    :func:`sample` died in a broadcasting error inside the denoiser), a class token that is not
    multi-hot (0.7 was read as "forget" by this check and fed as 0.7 to the denoiser), the
    request and the losses: numbers (``forget_target=None`` for "the default", as
    :func:`make_prompt` takes it, died in a TypeError of ``np.isfinite``)."""
    if not isinstance(prompt, Prompt):
        raise ForgetRequestError(f"a prompt is a Prompt (make_prompt), got a "
                                 f"{type(prompt).__name__}")
    if any(isinstance(v, jax.core.Tracer) for v in jax.tree.leaves(tuple(prompt))):
        return      # under jax.vmap / jit: make_prompt / sample_many validated the values
    cls = np.asarray(prompt.classes)
    if cls.shape[-1:] != (spec.num_classes,):
        raise ForgetRequestError(f"prompt has a {cls.shape[-1] if cls.ndim else 0}-class token, "
                                 f"the hypernetwork expects {spec.num_classes}")
    lead = cls.shape[:-1]
    shapes = [np.shape(v) for v in tuple(prompt)[1:]]
    if len(lead) != int(stacked) or any(s != lead for s in shapes):
        want = "stacked prompts (stack_prompts)" if stacked else "one prompt (make_prompt)"
        use = "sample" if stacked else "sample_many"
        raise ForgetRequestError(
            f"expected {want}, got classes of shape {cls.shape} and losses of shapes {shapes}; "
            f"{'pass a stack' if stacked else 'pass one prompt'}, or call {use}")
    if not np.isin(cls, (0.0, 1.0)).all():
        raise ForgetRequestError(f"prompt classes must be a multi-hot 0/1 vector "
                                 f"(make_prompt, multi_hot), got {cls.ravel()[:8].tolist()}")
    for row in cls.reshape(-1, spec.num_classes):
        check_request(spec, tuple(int(c) for c in np.flatnonzero(row > 0.5)))
    for name in ("forget_start", "forget_target", "retain_start", "retain_target"):
        v = np.asarray(getattr(prompt, name))
        if not (np.issubdtype(v.dtype, np.number) and np.isfinite(v).all() and (v > 0).all()):
            raise ForgetRequestError(f"prompt {name.replace('_', ' ')} must be a positive "
                                     f"finite loss, got {v.ravel()[:3].tolist()}")


def _build_sampler(net: Hypernet, num_steps: int, method: str, guided: bool):
    # The guidance weight is an argument of the program (one compilation serves every w > 0);
    # only whether there is an unconditional pass at all is part of its structure.
    spec = net.spec
    model, sched = spec.model(), D.make_schedule(spec.num_train_steps)
    tmpl, ws = spec.arch.param_shapes(), spec.weights
    shape = (1, ws.change_size)

    def one(hparams, theta0, prompt: Prompt, key, guidance):
        z0 = ws.encode_start(theta0, tmpl)[None]
        sc = spec.conditions(prompt.forget_start, prompt.forget_target, prompt.retain_start,
                             prompt.retain_target)[None]
        cls = prompt.classes[None] if spec.variant == "dihyfo2" else None

        def predict(x, t):
            xc = model.apply({"params": hparams}, x, z0, t, sc, cls)
            if not guided:
                return xc          # the plain conditional model: no unconditional pass
            xu = model.apply({"params": hparams}, x, z0, t, sc, cls, jnp.ones((1,), bool))
            return xc + guidance * (xc - xu)

        if method == "ddim":
            x0 = D.ddim_sample(sched, predict, key, shape, num_steps)
        else:
            x0 = D.ddpm_sample(sched, predict, key, shape)
        return ws.decode_change(x0[0], theta0, tmpl)

    return xla.jit(one), xla.jit(jax.vmap(one, in_axes=(None, None, 0, 0, None)))


def _sampler(net: Hypernet, num_steps: int, method: str, guidance: float):
    if isinstance(num_steps, bool) or not isinstance(num_steps, numbers.Integral):
        raise ConfigError(f"num_steps must be an integer, got {num_steps!r}")
    if isinstance(guidance, bool) or not isinstance(guidance, numbers.Real):
        raise ConfigError(f"guidance must be a number, got {guidance!r}")
    if method not in ("ddim", "ddpm"):
        raise ConfigError(f"unknown sampler {method!r}; choose ddim or ddpm")
    if method == "ddim":
        D.ddim_timesteps(net.spec.num_train_steps, num_steps)      # validates num_steps
    guidance = float(guidance)
    if not (np.isfinite(guidance) and guidance >= 0):
        # w = −1 is the unconditional model alone: a network that ignores the request.
        raise ConfigError(f"guidance must be a finite number >= 0 (0: the conditional model "
                          f"alone), got {guidance}")
    guided = guidance != 0.0
    check_guidance(net, guidance)
    key = ("sample", int(num_steps) if method == "ddim" else 0, method, guided)
    one, many = net.program(key, lambda: _build_sampler(net, num_steps, method, guided))
    w = np.float32(guidance)
    return (lambda *a: one(*a, w)), (lambda *a: many(*a, w))


def check_guidance(net: Hypernet, guidance: float) -> None:
    """ConfigError for a guidance weight other than 0 on a hypernetwork trained with
    ``p_uncond`` 0: guidance mixes in the prediction without targets, which it never learnt
    (the sample was drawn and returned without a word)."""
    if guidance != 0 and net.p_uncond == 0:
        raise ConfigError(f"guidance {guidance:g} needs a hypernetwork trained with "
                          "classifier-free dropout, but this one was trained with p_uncond 0 "
                          "(its target-free prediction never learnt); use guidance 0, or "
                          "retrain it with HyperTrainConfig(p_uncond=P) / `hyperforget "
                          "hypertrain --p-uncond P`, P > 0")


def sample(key: jax.Array, net: Hypernet, params: Params, prompt: Prompt, num_steps: int = 20,
           method: str = "ddim", guidance: float = 0.0) -> Params:
    """Samples one unlearned network for ``prompt`` starting from ``params``.

    Args:
      key: PRNG key (the initial noise).
      net: the trained hypernetwork.
      params: the start network θ₀ (a params pytree of ``net.spec.arch``).
      prompt: :func:`make_prompt`.
      num_steps: DDIM steps (ignored by DDPM, which takes all T).
      method: ``"ddim"`` (η = 0) or ``"ddpm"`` (ancestral).
      guidance: classifier-free guidance weight w (0: none) [ours].

    Returns:
      A params pytree with the structure of ``params`` (``arch.apply(out, x)`` works).

    Raises:
      ArchitectureError: ``params`` do not fit the hypernetwork's architecture.
      ForgetRequestError: a request it was not trained for (e.g. DiHyFo-1, another class), or
        a ``prompt`` that is not one request of this hypernetwork (a stack: :func:`sample_many`).
      ConfigError: ``key`` not one PRNG key, ``num_steps`` not an integer in 1..T (DDIM),
        ``method`` not ``ddim`` / ``ddpm``, ``guidance`` not a finite number >= 0, or
        ``guidance`` other than 0 for a network trained with ``p_uncond`` 0.
      NonFiniteError: ``params``, or the sampled network, hold NaN/inf (nothing is returned).
    """
    check_start(net.spec, params)
    _check_prompt(net.spec, prompt)
    _check_key(key)
    one, _ = _sampler(net, num_steps, method, guidance)
    out = _finite_sample(one(net.params, P_.flatten(params), prompt, key))
    return P_.unflatten(out, params)


def _finite_sample(flat: jax.Array) -> jax.Array:
    if not _finite_or_traced(flat):
        raise NonFiniteError("the sampled network holds NaN/inf (an extreme guidance, start "
                             "network or a damaged hypernetwork): lower the guidance or sample "
                             "with more steps; nothing returned")
    return flat


def _check_key(key, batch: int | None = None) -> None:
    """A PRNG key (typed ``jax.random.key`` or raw uint32 ``PRNGKey`` of the default PRNG
    implementation's shape: (2,), or (4,) under ``jax_default_prng_impl="rbg"``), one per
    request."""
    try:
        typed = jnp.issubdtype(jnp.result_type(key), jax.dtypes.prng_key)
    except TypeError:
        typed = False
    shape = tuple(jnp.shape(key)) if key is not None else None
    want = () if batch is None else (batch,)
    ok = (typed and shape == want) or (not typed and key is not None and
                                       jnp.result_type(key) == jnp.uint32 and
                                       shape == want + data.raw_key_shape())
    if not ok:
        raise ConfigError(f"key must be {'one' if batch is None else f'{batch}'} PRNG key(s) "
                          f"(jax.random.key(seed){'' if batch is None else ' split'}), got "
                          f"{type(key).__name__} {shape}")


def sample_many(keys: jax.Array, net: Hypernet, params: Params, prompts: Prompt,
                num_steps: int = 20, method: str = "ddim", guidance: float = 0.0) -> Params:
    """Vmapped :func:`sample`: ``prompts`` stacked (:func:`stack_prompts`), one key each.
    Returns stacked params (leading axis = request)."""
    check_start(net.spec, params)
    _check_prompt(net.spec, prompts, stacked=True)
    _check_key(keys, int(np.shape(prompts.classes)[0]))
    _, many = _sampler(net, num_steps, method, guidance)
    out = _finite_sample(many(net.params, P_.flatten(params), prompts, keys))
    return jax.vmap(lambda f: P_.unflatten(f, params))(out)


def _check_train(net: Hypernet, train: Any) -> None:
    """Raises unless ``train`` is a Dataset of the inputs the hypernetwork's architecture takes
    (another dataset's images failed inside flax, after the ``k`` samples): finite, and not
    0..255 images for a registered model (``Architecture.check_inputs``). A model takes what
    its corpus was built on, as ``fit`` and ``build_corpus`` do: standardised inputs were
    refused here, after a corpus and a hypernetwork had been built on them, with "divide 0..255
    images by 255" (a user's model until stop 60, a registered one until stop 61)."""
    if not isinstance(train, data.Dataset):
        raise DataError(f"the training set must be a Dataset (e.g. splits.train), got "
                        f"{type(train).__name__}")
    net.spec.arch.check_inputs(train.x, "training set", labels=train.y)
    if np.size(train.x) and not np.isfinite(train.x).all():
        raise DataError("the training set holds NaN or inf values; clean the data first")


def sample_best_of(key: jax.Array, net: Hypernet, params: Params, prompt: Prompt,
                   train: data.Dataset, k: int = 8, num_steps: int = 20,
                   guidance: float = 0.0, method: str = "ddim") -> tuple[Params, dict]:
    """[beyond] ``k`` samples in one vmapped call; keeps the one whose losses on the request's
    training images are closest to the prompt (|Δ log L_f| + |Δ log L_r|). The losses are
    measurable at request time, so the choice uses nothing a user does not have.

    Returns:
      (params, {"forget_loss", "retain_loss", "chosen"}) of the kept sample.

    Raises:
      ConfigError: ``key`` not one PRNG key (checked before it is split), ``k`` < 1, and as
        :func:`sample`.
      DataError: ``train`` not a Dataset of the architecture's images (as :func:`make_prompt`).
    """
    _check_key(key)
    check_count(k, "k")
    _check_train(net, train)
    keys = jax.random.split(key, k)
    many = sample_many(keys, net, params, stack_prompts([prompt] * k), num_steps, method,
                       guidance)
    classes = tuple(int(c) for c in np.flatnonzero(np.asarray(prompt.classes) > 0.5))
    split = data.resolve_forget(train, data.ForgetRequest(classes=classes))
    arch = net.spec.arch
    fl = np.array([_mean_ce(arch, P_.tree_index(many, i), split.forget)
                   for i in range(k)])
    rl = np.array([_mean_ce(arch, P_.tree_index(many, i), split.retain)
                   for i in range(k)])
    score = (np.abs(np.log(np.maximum(fl, 1e-6)) - np.log(float(prompt.forget_target)))
             + np.abs(np.log(np.maximum(rl, 1e-6)) - np.log(float(prompt.retain_target))))
    i = int(np.argmin(score))
    return P_.tree_index(many, i), {"forget_loss": float(fl[i]),
                                                "retain_loss": float(rl[i]), "chosen": i}
