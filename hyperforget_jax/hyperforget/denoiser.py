"""G.pt's transformer denoiser, over a start network and a normalised change (METHODS.md §2).

Input sequence, one width-``d`` token each::

    tokens(x_t, the noised change)  + tokens(θ₀, the start)  + scalar tokens (t, conditions)
                                     [+ one multi-hot "which classes to forget" token, DiHyFo-2]

* Tokens: every tensor cut into chunks of ≤ ``max_chunk`` values, never mixing tensors
  (:func:`hyperforget_jax.params.chunk_spans`), each token with its own linear encoder and
  decoder [G.pt]. θ₀ is a full network (784→10→10 MLP: 7,960 values → 11 tokens); x_t holds only
  the tensors the corpus changes (:mod:`~hyperforget_jax.hyperforget.weightspace`; the output
  layer: 2 tokens). Both are normalised per tensor, and they are different quantities (a
  network, a change), with separate encoders (as in G.pt, whose x_t and θ₀ tokens each have
  their own encoder too). Unlike G.pt there is no LayerNorm (G.pt's ``ln_in``) between the
  token encoders and the transformer, the encoders have biases, and the GELU is flax's tanh
  approximation (G.pt: exact erf) [ours; G.pt audit, not changed: it would change the shipped
  hypernetworks].
* Scalars embedded as [sin(f·x), cos(f·x), x] with f = 2^linspace(0, ``max_freq_exp``,
  ``num_freqs``), then a per-scalar linear projection [G.pt]. The conditions arrive standardised
  (log-losses, z-scored over the corpus), so the embedding's frequencies are sized for values of
  order 1 (2^0..2^4) [ours; G.pt's 2^14 on raw losses of up to ~16 gave phases that change by
  radians per 10⁻⁴ of loss]. The diffusion step enters as t / T [ours].
* Classifier-free guidance [ours, beyond G.pt]: the loss-target tokens of a training example are
  replaced by a learned "no target" token with probability ``p_uncond``; at sampling,
  x̂ = x̂_c + w (x̂_c − x̂_u), w = 0 being the plain conditional model.
* Pre-LayerNorm transformer without a causal mask, learned position embeddings [G.pt].
* Output = decoders(x_t-token outputs) = the predicted normalised change x̂₀; decoders
  zero-initialised, so an untrained model predicts no change and samples θ₀ exactly [G.pt's
  "output + θ₀" in change coordinates].

Training [G.pt]: x₀-prediction MSE, AdamW lr 4e-4, weight decay 0.1, cosine schedule, gradient
clipping at 0.75, an EMA of the weights used for sampling. G.pt's EMA decay 0.9999 suits ~10⁶
steps; a CPU run of a few thousand steps uses a smaller decay (``ema_decay``, default 0.995) with
the usual warm-up min(decay, (1 + n) / (10 + n)) [ours]. The step draws no randomness itself: the
diffusion step t, noise ε and guidance dropout come in the batch (:func:`prepare_batch`), so the
``jit``, ``pmap`` and sharded compilations give identical numbers.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from hyperforget_jax import params as P_, xla
from hyperforget_jax.config import SEED_LIMIT, check_config, field
from hyperforget_jax.errors import ConfigError
from hyperforget_jax.hyperforget import diffusion as D
from hyperforget_jax.hyperforget.weightspace import mlp_layers
from hyperforget_jax.train import guarded_apply

Params = Any


@dataclasses.dataclass(frozen=True)
class DenoiserConfig:
    """Sizes of the denoiser. G.pt: 12 layers × 1536 (378M parameters); the CPU default is far
    smaller.

    Attributes:
      num_layers, width, num_heads, mlp_ratio: the transformer [ours: sized for a CPU].
      max_chunk: values per chunk token [G.pt: 1000]; unit tokens never read it (another
        value is refused with them).
      num_freqs, max_freq_exp: the scalar embedding's frequencies 2^linspace(0, max_freq_exp,
        num_freqs) [G.pt: 128 up to 2^14 on raw values; ours: 32 up to 2^4 on standardised
        values].
      tokens: ``"chunks"`` [G.pt], ``"units"`` [ours: one token per hidden unit, MLPs only]
        or ``"auto"`` (units for MLPs; resolved when a hypernetwork is built).
    """

    num_layers: int = field(2, ge=1)
    width: int = field(128, ge=1)
    num_heads: int = field(4, ge=1)
    mlp_ratio: int = field(4, ge=1)
    max_chunk: int = field(1000, ge=1)
    num_freqs: int = field(32, ge=1)
    max_freq_exp: float = field(4.0, ge=0, lt=64)
    tokens: str = field("auto", choices=("auto", "chunks", "units"))

    def __post_init__(self):
        check_config(self)
        if self.width % self.num_heads:
            raise ConfigError(f"DenoiserConfig.width {self.width} must be divisible by "
                              f"num_heads {self.num_heads}")

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def frequency_embed(x: jax.Array, num_freqs: int = 32, max_freq_exp: float = 4.0
                    ) -> jax.Array:
    """[sin(f·x), cos(f·x), x] with f = 2^linspace(0, max_freq_exp, num_freqs) [G.pt].

    (...,) → (..., 2·num_freqs + 1).

    >>> frequency_embed(jnp.zeros(3)).shape
    (3, 65)
    """
    f = 2.0 ** jnp.linspace(0.0, max_freq_exp, num_freqs, dtype=x.dtype)   # x's, also under x64
    fx = x[..., None] * f
    return jnp.concatenate([jnp.sin(fx), jnp.cos(fx), x[..., None]], -1)


class _Block(nn.Module):
    width: int
    num_heads: int
    mlp_ratio: int

    @nn.compact
    def __call__(self, h):
        y = nn.LayerNorm()(h)
        h = h + nn.MultiHeadDotProductAttention(num_heads=self.num_heads)(y, y)
        y = nn.LayerNorm()(h)
        y = nn.Dense(self.width * self.mlp_ratio)(y)
        return h + nn.Dense(self.width)(nn.gelu(y))


class TokenGroup(NamedTuple):
    """Tokens of one kind. ``start`` (n, w) / ``change`` (n, w') are gather indices into the
    flat θ₀ / the change vector (−1: padding), either may be None. ``shared``: one encoder and
    decoder for every token of the group, else one per token (G.pt). ``equivariant``: one
    embedding for the whole group (tokens interchangeable), else one per token."""

    name: str
    start: np.ndarray | None
    change: np.ndarray | None
    shared: bool
    equivariant: bool


class TokenLayout(NamedTuple):
    """The token groups, and (unit tokens) the output layer's kernel change: ``head`` (n, K)
    change-vector index of entry (hidden unit j, class c), predicted bilinearly from unit j's
    and class c's tokens; ``units``/``classes``: the names of those two groups."""

    groups: list[TokenGroup]
    head: np.ndarray | None = None
    units: str | None = None
    classes: str | None = None


def _pad(rows: list[np.ndarray]) -> np.ndarray:
    w = max(len(r) for r in rows)
    return np.stack([np.pad(r, (0, w - len(r)), constant_values=-1) for r in rows])


def token_layout(spans: Sequence[P_.TensorSpan], diffused: Sequence[int], tokens: str,
                 max_chunk: int = 1000) -> TokenLayout:
    """The token layout [G.pt "chunks" or ours "units"].

    * ``"chunks"`` [G.pt]: every tensor cut into chunks of ≤ ``max_chunk`` values; θ₀ and the
      change are separate tokens, each with its own encoder and decoder.
    * ``"units"`` [ours, MLPs]: one token per hidden unit holding everything attached to it
      (incoming weights and bias; for the last hidden layer also its outgoing weights), and one
      token per *class* (the output bias; DiHyFo-2 adds the class's "forget" flag). Units of a
      layer share encoder and embedding, so the denoiser is exactly equivariant to
      permutations of the last hidden layer's units (an earlier layer's permutation reorders
      the next layer's incoming weights inside its tokens: training keeps the permutation
      augmentation for MLPs with more than one hidden layer); classes share
      encoders but keep their identity. The output layer's kernel change is bilinear in the
      two: ΔW[j, c] = ⟨A h_j, B g_c⟩, so forgetting {a, b} is the forgetting of a and of b
      seen together (two flagged class tokens), which is what lets pairs the corpus never
      contained be sampled.
    """
    diffused = list(diffused)
    change_pos = {}
    for i in diffused:                          # flat position -> index in the change vector
        for p_ in range(spans[i].start, spans[i].stop):
            change_pos[p_] = len(change_pos)
    cpos = lambda rows: [np.asarray([change_pos[p_] for p_ in r if p_ in change_pos],
                                    np.int64) for r in rows]
    if tokens == "chunks":
        cut = lambda ids: [np.arange(a, min(a + max_chunk, b))
                           for a, b in ((spans[i].start, spans[i].stop) for i in ids)
                           for a in range(a, b, max_chunk)]
        return TokenLayout([TokenGroup("start", _pad(cut(range(len(spans)))), None, False,
                                       False),
                            TokenGroup("change", None, _pad(cpos(cut(diffused))), False,
                                       False)])
    if tokens != "units":
        raise ConfigError(f"tokens must be 'chunks' or 'units', got {tokens!r}")
    by = {}
    for sp in spans:
        parts = sp.path.replace("'", "").strip("[]").split("][")
        if len(parts) != 2 or not parts[0].startswith("Dense_") or not parts[0][6:].isdigit():
            raise ConfigError("unit tokens need an MLP (Dense_0..Dense_k with kernel and "
                              "bias); use tokens='chunks' for this architecture")
        by[(int(parts[0][6:]), parts[1])] = sp
    layers = sorted({k for k, _ in by})
    if len(layers) < 2:
        raise ConfigError("unit tokens need an MLP with a hidden layer; use tokens='chunks'")
    # Chained in name order (weightspace.mlp_layers): a head created first (Dense_0) and called
    # last made the hidden layer's units the "class" tokens, a crash deep in the denoiser.
    template = {}
    for (i, name), sp in by.items():
        template.setdefault(f"Dense_{i}", {})[name] = jax.ShapeDtypeStruct(sp.shape, jnp.float32)
    if mlp_layers(template) is None:
        raise ConfigError("unit tokens need an MLP whose layers Dense_0..Dense_k (kernel and "
                          "bias each) are chained in that order; use tokens='chunks'")
    flat = lambda sp: np.arange(sp.start, sp.stop).reshape(sp.shape)
    out_k, out_b = flat(by[(layers[-1], "kernel")]), flat(by[(layers[-1], "bias")])
    groups = []
    for i in layers[:-1]:
        k, b = flat(by[(i, "kernel")]), flat(by[(i, "bias")])
        rows = [np.r_[k[:, j], b[j]] for j in range(len(b))]
        change = cpos(rows)
        if i == layers[-2]:                  # the last hidden layer's outgoing weights
            rows = [np.r_[r, out_k[j]] for j, r in enumerate(rows)]
            change = [np.r_[c, q] for c, q in zip(change, cpos(out_k))]
        groups.append(TokenGroup(f"layer{i}_units", _pad(rows),
                                 _pad(change) if any(len(v) for v in change) else None,
                                 True, True))
    cls = cpos(out_b[:, None])
    groups.append(TokenGroup("classes", out_b[:, None],
                             _pad(cls) if any(len(v) for v in cls) else None, True, False))
    head = None
    if all(p_ in change_pos for p_ in out_k.ravel()):
        head = np.vectorize(change_pos.get)(out_k)
    return TokenLayout(groups, head, f"layer{layers[-2]}_units", "classes")


def _rank_promotion_allowed(fn: Callable) -> Callable:
    """``fn`` traced with implicit rank promotion allowed, whatever the caller's
    ``jax_numpy_rank_promotion``: the denoiser adds (n, d) embeddings and biases to (B, n, d)
    tokens throughout, which a user's ``"raise"`` (meant for their own code) turned into a
    ValueError deep inside Flax."""
    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        with jax.numpy_rank_promotion("allow"):
            return fn(*args, **kwargs)
    return wrapped


class GptDenoiser(nn.Module):
    """``(x_t, θ₀, t, scalars, classes, drop) -> x̂₀`` on batches of normalised flat vectors.

    Attributes:
      spans: the tensors of the target architecture (``params.param_spans``).
      diffused: tensor ids whose change is modelled (the change vector's layout).
      tokens: ``"chunks"`` [G.pt] or ``"units"`` [ours] (:func:`token_layout`).
      num_scalars: number of conditions (without t).
      target_scalars: which conditions are loss targets (replaced by the "no target" token when
        ``drop``; classifier-free guidance).
      num_classes: size of the multi-hot request (DiHyFo-2; 0 for DiHyFo-1): one request token
        (chunks), or a flag on each class token (units).
      config: sizes.
      num_train_steps: T (t enters as t / T).
    """

    spans: tuple[P_.TensorSpan, ...]
    diffused: tuple[int, ...]
    tokens: str
    num_scalars: int
    target_scalars: tuple[int, ...] = ()
    num_classes: int = 0
    config: DenoiserConfig = DenoiserConfig()
    num_train_steps: int = 1000

    @nn.compact
    @_rank_promotion_allowed
    def __call__(self, x_t, theta0, t, scalars, classes=None, drop=None):
        c = self.config
        # float32 whatever jax_enable_x64 says, parameters (as nn.Dense's) and inputs: Flax's
        # initialisers default to jnp.float_, so under x64 some parameters were float64 and the
        # sampler's scan carry crashed.
        param = lambda name, init, shape: self.param(name, init, shape, jnp.float32)
        x_t, theta0 = jnp.asarray(x_t, jnp.float32), jnp.asarray(theta0, jnp.float32)
        d = c.width
        dense_init = nn.initializers.normal(0.02)
        layout = token_layout(self.spans, self.diffused, self.tokens, c.max_chunk)
        head = layout.head

        def gather(v, idx):
            return jnp.where(idx >= 0, v[:, np.maximum(idx, 0)], 0.0)     # (B, n, w)

        def encode(name, v, shared):
            n, w = v.shape[1:]
            if shared:
                return nn.Dense(d, name=name)(v)
            kern = param(f"{name}_kernel", nn.initializers.lecun_normal(
                in_axis=1, out_axis=2, batch_axis=(0,)), (n, w, d))
            return jnp.einsum("bnw,nwd->bnd", v, kern) + param(
                f"{name}_bias", nn.initializers.zeros, (n, d))

        seq = []
        for g in layout.groups:
            n = len(g.start if g.start is not None else g.change)
            h = 0.0
            if g.start is not None:
                h = h + encode(f"{g.name}_start", gather(theta0, g.start), g.shared)
            if g.change is not None:
                h = h + encode(f"{g.name}_change", gather(x_t, g.change), g.shared)
            h = h + param(f"{g.name}_embedding", dense_init, (1 if g.equivariant else n, d))
            if g.name == layout.classes and self.num_classes:
                flag = param("forget_flag", dense_init, (d,))
                h = h + classes.astype(jnp.float32)[:, :, None] * flag
            seq.append(h)
        s = jnp.concatenate([(t.astype(jnp.float32) / self.num_train_steps)[:, None],
                             scalars.astype(jnp.float32)], -1)          # (B, 1 + S)
        emb = frequency_embed(s, c.num_freqs, c.max_freq_exp)          # (B, 1 + S, E)
        sc_w = param("scalar_kernel", nn.initializers.lecun_normal(
            in_axis=1, out_axis=2, batch_axis=(0,)), (1 + self.num_scalars, emb.shape[-1], d))
        sc_b = param("scalar_bias", nn.initializers.zeros, (1 + self.num_scalars, d))
        sc = jnp.einsum("bse,sed->bsd", emb, sc_w) + sc_b
        if self.target_scalars:
            null = param("no_target", dense_init, (len(self.target_scalars), d))
            ids = jnp.asarray([1 + i for i in self.target_scalars])
            if drop is not None:
                sc = sc.at[:, ids].set(jnp.where(drop[:, None, None], null[None], sc[:, ids]))
        extra = [sc]
        if self.num_classes and layout.classes is None:
            extra.append(nn.Dense(d, name="request_embed")(classes.astype(jnp.float32))[:, None])
        extra = jnp.concatenate(extra, 1)
        extra = extra + param("position_embedding", dense_init, extra.shape[1:])
        sizes = [v.shape[1] for v in seq]
        h = jnp.concatenate(seq + [extra], 1)
        for i in range(c.num_layers):
            h = _Block(d, c.num_heads, c.mlp_ratio, name=f"block_{i}")(h)
        h = nn.LayerNorm(name="final_norm")(h)
        offsets = dict(zip([g.name for g in layout.groups], zip(np.cumsum([0] + sizes)[:-1],
                                                                 np.cumsum(sizes))))
        out = jnp.zeros(x_t.shape, jnp.float32)
        for g in layout.groups:
            if g.change is None:
                continue
            hk = h[:, offsets[g.name][0]:offsets[g.name][1]]
            idx = g.change
            if g.name == layout.units and head is not None:
                idx = g.change[:, :g.change.shape[1] - head.shape[1]]   # the rest: bilinear
                if idx.shape[1] == 0:
                    continue
            n, w = idx.shape
            if g.shared:
                y = hk @ param(f"{g.name}_decoder_kernel", nn.initializers.zeros, (d, w))
                y = y + param(f"{g.name}_decoder_bias", nn.initializers.zeros, (w,))
            else:
                y = jnp.einsum("bnd,ndw->bnw", hk, param(
                    f"{g.name}_decoder_kernel", nn.initializers.zeros, (n, d, w)))
                y = y + param(f"{g.name}_decoder_bias", nn.initializers.zeros, (n, w))
            flat_idx = idx.reshape(-1)
            keep = flat_idx >= 0
            out = out.at[:, flat_idx[keep]].set(y.reshape(y.shape[0], -1)[:, keep])
        if head is not None:
            hu = h[:, offsets[layout.units][0]:offsets[layout.units][1]]
            hc = h[:, offsets[layout.classes][0]:offsets[layout.classes][1]]
            a = hu @ param("head_unit_proj", nn.initializers.zeros, (d, d))
            b = hc @ param("head_class_proj", nn.initializers.lecun_normal(), (d, d))
            y = jnp.einsum("bjr,bcr->bjc", a, b) / math.sqrt(d)   # weak: float32 under x64
            out = out.at[:, head.reshape(-1)].set(y.reshape(y.shape[0], -1))
        return out


# --- hidden-unit permutation augmentation [G.pt] ----------------------------------------------

def mlp_hidden_widths(template: Params) -> list[int]:
    """Hidden widths of an MLP params tree ``{"Dense_0": ..., "Dense_k": ...}`` (the layers
    whose units can be permuted); raises ConfigError for anything else."""
    names = mlp_layers(template)
    if names is None:
        raise ConfigError("permutation augmentation supports MLP parameters (Dense_0..Dense_k) "
                          "only; disable it (permute=False) for this architecture")
    return [int(jnp.shape(template[k]["kernel"])[-1]) for k in names[:-1]]


def permute_mlp_hidden(params: Params, perms: Sequence[jax.Array]) -> Params:
    """Permutes hidden units of an MLP: unit j of hidden layer i becomes unit perms[i][j]'s
    position, i.e. Dense_i's output columns and Dense_{i+1}'s input rows are reordered together,
    which leaves the network's function unchanged."""
    out = {k: dict(v) for k, v in params.items()}
    for i, perm in enumerate(perms):
        a, b = out[f"Dense_{i}"], out[f"Dense_{i + 1}"]
        a["kernel"], a["bias"] = a["kernel"][..., perm], a["bias"][..., perm]
        b["kernel"] = b["kernel"][perm, :]
    return out


def permutation_index(key: jax.Array, template: Params) -> jax.Array:
    """A random hidden-unit permutation as a gather index on the flat vector: ``flat[idx]`` is
    the flat vector of the permuted network (jit/vmap-able; same index for θ₀ and target).

    The positions are permuted as int32 throughout: carried in the template's float32 they
    were exact only up to 2^24, and a network past 16.8M parameters got duplicated indices
    (some weights copied twice, others dropped) without a word."""
    widths = mlp_hidden_widths(template)
    perms = [jax.random.permutation(k, w) for k, w in zip(jax.random.split(key, len(widths)),
                                                          widths)]
    int_template = jax.tree.map(lambda l: jax.ShapeDtypeStruct(jnp.shape(l), jnp.int32),
                                template)
    ids = P_.unflatten(jnp.arange(P_.param_count(template), dtype=jnp.int32), int_template)
    return P_.flatten(permute_mlp_hidden(ids, perms))


# --- training ------------------------------------------------------------------------------

class HyperTrainState(NamedTuple):
    step: jax.Array
    params: Params
    ema_params: Params
    opt_state: Any


@dataclasses.dataclass(frozen=True)
class HyperTrainConfig:
    """Denoiser optimisation [G.pt except where noted].

    Attributes:
      steps: optimisation length, in steps [ours: CPU-sized].
      batch_size: corpus rows (training examples) per step [ours: CPU-sized].
      lr, weight_decay, grad_clip: AdamW on a warm-up + cosine schedule, clipping [G.pt: 4e-4,
        0.1, 0.75; ours: lr 1e-3, docs/hyperforget.md "Design choices that are ours"].
      warmup_fraction: share of the steps spent warming up [ours].
      ema_decay: EMA of the weights used for sampling [G.pt: 0.9999 for ~10⁶ steps; ours:
        0.995 for a few thousand].
      permute: random hidden-unit permutation of θ₀ and target alike [G.pt].
      endpoint_fraction: share of training pairs whose target is the end of the unlearning
        trajectory (the rest: a uniformly drawn checkpoint of it, the original included) [ours:
        the default prompt asks for the endpoint, so it is learnt most precisely].
      p_uncond: probability of dropping the loss targets (classifier-free guidance) [ours];
        below 1: at 1 every pair dropped them, so the conditional model every sample uses
        never saw a target.
      seed: pair draws, diffusion noise and initialisation.
    """

    steps: int = field(3000, ge=1)
    batch_size: int = field(64, ge=1)
    lr: float = field(1e-3, gt=0)
    weight_decay: float = field(0.1, ge=0)
    grad_clip: float = field(0.75, gt=0)
    warmup_fraction: float = field(0.02, ge=0, lt=1)
    ema_decay: float = field(0.995, ge=0, lt=1)
    permute: bool = field(True)
    endpoint_fraction: float = field(0.5, ge=0, le=1)
    p_uncond: float = field(0.1, ge=0, lt=1)
    seed: int = field(0, ge=0, lt=SEED_LIMIT)

    def __post_init__(self):
        check_config(self)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def make_hyper_optimizer(cfg: HyperTrainConfig) -> optax.GradientTransformation:
    """Gradient clipping ``cfg.grad_clip`` → AdamW(``cfg.lr``, wd ``cfg.weight_decay``) on a
    warm-up + cosine schedule [G.pt: 0.75, 4e-4, 0.1; our default lr 1e-3]. The weight decay
    reaches every leaf, LayerNorm scales, biases and embeddings included (G.pt decays only the
    weights of its linear layers) [ours; G.pt audit, not changed: it would change retrained
    hypernetworks]."""
    warmup = max(1, int(cfg.warmup_fraction * cfg.steps))
    sched = optax.warmup_cosine_decay_schedule(0.0, cfg.lr, warmup, max(cfg.steps, warmup + 1))
    return optax.chain(optax.clip_by_global_norm(cfg.grad_clip),
                       optax.adamw(sched, weight_decay=cfg.weight_decay))


def init_params(model: GptDenoiser, key: jax.Array) -> Params:
    """Freshly initialised denoiser parameters."""
    f32 = jnp.float32
    x = jnp.zeros((1, sum(int(np.prod(model.spans[i].shape)) for i in model.diffused)), f32)
    z = jnp.zeros((1, model.spans[-1].stop), f32)
    cls = jnp.zeros((1, model.num_classes), f32) if model.num_classes else None
    return model.init(key, x, z, jnp.zeros((1,), jnp.int32), jnp.zeros((1, model.num_scalars), f32),
                      cls, jnp.zeros((1,), bool))["params"]


def param_shapes(model: GptDenoiser) -> Params:
    """The denoiser's parameter shapes (``ShapeDtypeStruct`` leaves; nothing is computed)."""
    return jax.eval_shape(lambda k: init_params(model, k), jax.random.key(0))


def init_hyper_state(model: GptDenoiser, tx: optax.GradientTransformation, key: jax.Array
                     ) -> HyperTrainState:
    params = xla.jit(init_params, static_argnums=0)(model, key)
    # A distinct EMA copy, so the jitted step can donate the whole state.
    return HyperTrainState(jnp.zeros((), jnp.int32), params, jax.tree.map(jnp.copy, params),
                           tx.init(params))


def prepare_batch(key: jax.Array, sched: D.Schedule, start: jax.Array, target: jax.Array,
                  scalars: jax.Array, classes: jax.Array | None = None,
                  template: Params | None = None,
                  encode: Callable[[jax.Array, jax.Array], tuple] | None = None,
                  p_uncond: float = 0.0) -> dict:
    """All the randomness of one training step: a hidden-unit permutation per example (applied
    identically to θ₀ and target; skipped when ``template`` is None), then
    ``encode(start, target) -> (start input, x₀)`` per example (e.g. the weight space's
    normalisation; identity when None), t ~ U{0..T−1}, ε ~ N(0, I), and the guidance dropout
    (``drop`` with probability ``p_uncond``).
    """
    b = start.shape[0]
    kp, kt, kn, kd = jax.random.split(key, 4)
    if template is not None:
        idx = jax.vmap(lambda k: permutation_index(k, template))(jax.random.split(kp, b))
        start = jnp.take_along_axis(start, idx, 1)
        target = jnp.take_along_axis(target, idx, 1)
    if encode is not None:
        start, target = jax.vmap(encode)(start, target)
    batch = {"start": start, "target": target, "scalars": scalars,
             "t": jax.random.randint(kt, (b,), 0, sched.num_steps, dtype=jnp.int32),
             "noise": jax.random.normal(kn, target.shape, target.dtype),
             "drop": jax.random.uniform(kd, (b,), jnp.float32) < p_uncond}
    if classes is not None:
        batch["classes"] = classes
    return batch


def make_hyper_train_step(model: GptDenoiser, sched: D.Schedule,
                          tx: optax.GradientTransformation, ema_decay: float,
                          axis_name: str | None = None) -> Callable:
    """The pure step ``(state, batch) -> (state, metrics)``; x₀-MSE on the noised target.

    Args:
      model: the denoiser.
      sched: the diffusion schedule.
      tx: :func:`make_hyper_optimizer`.
      ema_decay: EMA decay (with warm-up).
      axis_name: set under ``jax.pmap``: loss and gradients are ``lax.pmean``-ed.
    """

    def loss_fn(params, batch):
        predict = lambda x_t, t: model.apply({"params": params}, x_t, batch["start"], t,
                                             batch["scalars"], batch.get("classes"),
                                             batch.get("drop"))
        return D.x0_mse(sched, predict, batch["target"], batch["t"], batch["noise"])

    def step(state: HyperTrainState, batch: dict):
        loss, grads = jax.value_and_grad(loss_fn)(state.params, batch)
        if axis_name is not None:
            loss, grads = jax.lax.pmean((loss, grads), axis_name)
        params, opt_state, finite = guarded_apply(state.params, state.opt_state, grads, loss,
                                                  tx)
        n = state.step.astype(jnp.float32)
        decay = jnp.minimum(ema_decay, (1.0 + n) / (10.0 + n))
        ema = jax.tree.map(lambda e, p: jnp.where(finite, decay * e + (1.0 - decay) * p, e),
                           state.ema_params, params)
        new = HyperTrainState(jnp.where(finite, state.step + 1, state.step), params, ema,
                              opt_state)
        return new, {"loss": loss, "grad_norm": optax.global_norm(grads), "finite": finite}

    return step
