"""DiHyFo-1 and DiHyFo-2: training diffusion hypernetworks that *sample* unlearned classifiers.

    corpus = Corpus("runs/corpus")
    net, hist = train_hypernet(corpus, "dihyfo2")                 # or ("dihyfo1", forget_class=3)
    prompt = make_prompt(net, original_params, splits.train, classes=(3,))
    params = sample(jax.random.key(0), net, original_params, prompt)   # arch.apply(params, x)

Training pairs [ours]: (θ₀ → θ_j) where θ₀ is an original network and θ_j a checkpoint of one
of *its own* unlearning trajectories (the original itself included), conditioned on θ_j's
losses; a share ``endpoint_fraction`` of the pairs target the trajectory's end. A request always
starts at an original network, and conditioning on the target's own losses lets the prompt pick
the point on the trajectory (G.pt's forward pairs θ_i → θ_{i+s} from anywhere taught the
average move instead: issue 13's measured cause 1).

This module re-exports the spec (:mod:`.spec`), sampling (:mod:`.sampling`) and storage
(:mod:`.store`) API, so ``dihyfo.sample`` etc. keep working.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from hyperforget_jax import params as P_
from hyperforget_jax import xla
from hyperforget_jax.checkpoint_checks import first_non_finite
from hyperforget_jax.config import check_count
from hyperforget_jax.errors import CheckpointError, ConfigError, NonFiniteError, shell_quote
from hyperforget_jax.hyperforget import denoiser as DN
from hyperforget_jax.hyperforget import diffusion as D
from hyperforget_jax.hyperforget.corpus import Corpus, _called_top_modules
from hyperforget_jax.hyperforget.sampling import (SampleConfig, check_guidance, make_prompt,
                                                  sample, sample_best_of, sample_many)
from hyperforget_jax.hyperforget.spec import (VARIANTS, Hypernet, HyperSpec, Prompt,
                                              check_request, default_targets, multi_hot,
                                              stack_prompts)
from hyperforget_jax.hyperforget.store import load_hypernet, load_pretrained, save_hypernet
from hyperforget_jax.hyperforget.weightspace import WeightSpace, mlp_layers
from hyperforget_jax.hyperforget.weightspace import canonicalize as canonicalize_units

__all__ = ["VARIANTS", "Hypernet", "HyperSpec", "Prompt", "PairSource", "check_guidance",
           "check_request",
           "default_targets", "load_hypernet", "load_pretrained", "make_prompt", "multi_hot",
           "pair_source", "resolve_tokens", "sample", "sample_best_of", "sample_many",
           "sample_pairs", "SampleConfig", "save_hypernet", "stack_prompts", "train_hypernet"]


class PairSource(NamedTuple):
    """Training pairs in compact form. Targets are rows of ``values`` (the corpus's trained span
    at each checkpoint; row −1 of a trajectory = the original itself).

    Attributes:
      originals: (S, P) start networks; ``trained_index`` (Q,) the span the targets change.
      values: (N, Q) checkpoint values; ``target_original`` (N,) their original (row of
        ``originals``).
      forget_loss, retain_loss: (N,) the target's losses; ``start_forget``, ``start_retain``
        (N,) its original's for the same request; ``classes`` (N, K) multi-hot.
      trajectories: (T, 3) first row, length, original of each trajectory (rows contiguous,
        the first row being the original, the last the endpoint).
    """

    originals: np.ndarray
    trained_index: np.ndarray
    values: np.ndarray
    target_original: np.ndarray
    forget_loss: np.ndarray
    retain_loss: np.ndarray
    start_forget: np.ndarray
    start_retain: np.ndarray
    classes: np.ndarray
    trajectories: np.ndarray


def pair_source(corpus: Corpus, variant: str, forget_class: int | None,
                split: str = "train") -> PairSource:
    """The trajectories of the ``split`` runs usable by the variant, each prefixed with its
    original (step 0)."""
    trajs = corpus.trajectories(split)
    if variant == "dihyfo1":
        have = sorted({corpus.requests[t[1]][0] for t in trajs
                       if len(corpus.requests[t[1]]) == 1})
        trajs = [t for t in trajs if corpus.requests[t[1]] == (forget_class,)]
        if not trajs:
            raise ConfigError(f"the corpus has no trajectory forgetting class {forget_class}; "
                              f"pass one of its single classes {have}, or build a corpus "
                              f"whose forget classes include {forget_class}")
    if not trajs:
        raise CheckpointError(f"corpus {corpus.path} has no {split} trajectories")
    idx = corpus.trained_index
    vals, orig, fl, rl, f0, r0, cls, tinfo = [], [], [], [], [], [], [], []
    n = 0
    for o, r, rows in trajs:
        req = corpus.requests[r]
        m0 = corpus.original_request_metrics([o], req)
        m = corpus.request_metrics(rows, req)
        k = len(rows) + 1
        vals += [corpus.originals[o][idx][None], corpus.trajectory[rows]]
        orig.append(np.full(k, o))
        fl.append(np.r_[m0["forget_loss"], m["forget_loss"]])
        rl.append(np.r_[m0["retain_loss"], m["retain_loss"]])
        f0.append(np.full(k, m0["forget_loss"][0]))
        r0.append(np.full(k, m0["retain_loss"][0]))
        cls.append(np.broadcast_to(multi_hot(req, corpus.num_classes), (k, corpus.num_classes)))
        tinfo.append((n, k, o))
        n += k
    f32 = lambda parts: np.concatenate(parts).astype(np.float32)
    return PairSource(corpus.originals, idx, f32(vals), np.concatenate(orig), f32(fl), f32(rl),
                      f32(f0), f32(r0), f32(cls), np.asarray(tinfo, np.int64))


def sample_pairs(rng: np.random.Generator, src: PairSource, batch: int,
                 endpoint_fraction: float = 0.5) -> np.ndarray:
    """Target rows of ``batch`` pairs: a uniformly drawn trajectory, then its endpoint with
    probability ``endpoint_fraction``, else a uniformly drawn checkpoint (original included)."""
    t = src.trajectories[rng.integers(0, len(src.trajectories), batch)]
    first, length = t[:, 0], t[:, 1]
    j = np.where(rng.random(batch) < endpoint_fraction, length - 1,
                 (rng.random(batch) * length).astype(np.int64))
    return first + j


def pair_arrays(src: PairSource, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(start θ₀ (B, P), target θ (B, P)) of target rows."""
    start = src.originals[src.target_original[rows]]
    target = start.copy()
    target[:, src.trained_index] = src.values[rows]
    return start, target


def _default_targets(src: PairSource) -> tuple:
    ends = src.trajectories[:, 0] + src.trajectories[:, 1] - 1
    k = src.classes[ends].sum(1).astype(int)
    ratio = np.log(np.maximum(src.retain_loss[ends], 1e-6) / np.maximum(src.start_retain[ends],
                                                                        1e-6))
    return tuple((int(n), float(np.median(src.forget_loss[ends][k == n])),
                  float(np.median(ratio[k == n]))) for n in np.unique(k))


def _mlp_chain(arch) -> list[str] | None:
    """The layers ``Dense_0 .. Dense_k`` of an MLP whose widths chain in that order
    (:func:`~hyperforget_jax.hyperforget.weightspace.mlp_layers`) and whose forward pass calls
    them in that order, once each, else None. Flax names layers in creation order: a model that
    creates its head first and calls it last can have widths that chain in name order (square
    layers), and canonicalising, permuting or unit-tokenising it as a chain would pair a
    layer's units with another layer's weights. A model that cannot be traced (no Flax module)
    is taken in name order."""
    tmpl = arch.param_shapes()
    names = mlp_layers(tmpl)
    if names is None:
        return None
    called = [n for n in _called_top_modules(arch, tmpl) if n in names]
    return None if called and called != names else names


def resolve_tokens(arch, denoiser: DN.DenoiserConfig) -> DN.DenoiserConfig:
    """``denoiser`` with ``tokens="auto"`` resolved for ``arch``: unit tokens for an MLP whose
    layers chain (:func:`_mlp_chain`), chunks otherwise.

    Raises:
      ConfigError: ``max_chunk`` set (away from its default) for unit tokens, which never read
        it: the spec recorded it as if it had shaped the denoiser.
    """
    tokens = denoiser.tokens
    if tokens == "auto":
        tokens = "units" if _mlp_chain(arch) is not None else "chunks"
    if tokens == "units" and denoiser.max_chunk != DN.DenoiserConfig().max_chunk:
        how = " (tokens 'auto' picks them for an MLP)" if denoiser.tokens == "auto" else ""
        raise ConfigError(f"DenoiserConfig.max_chunk (--max-chunk) {denoiser.max_chunk} sizes "
                          f"chunk tokens, but this {arch.name} hypernetwork uses unit "
                          f"tokens{how}, which never read it; drop it, or use "
                          "tokens='chunks' (--tokens chunks)")
    return dataclasses.replace(denoiser, tokens=tokens)


def make_spec(corpus: Corpus, src: PairSource, variant: str, forget_class: int | None,
              denoiser: DN.DenoiserConfig, canonicalize: bool | None = None,
              seed: int = 0) -> HyperSpec:
    """The spec of a hypernetwork trained on ``src``: weight-space and condition statistics
    from (a sample of) its training pairs."""
    tmpl = corpus.arch.param_shapes()
    chain = _mlp_chain(corpus.arch)
    if chain is None and mlp_layers(tmpl) is not None and (canonicalize
                                                            or denoiser.tokens == "units"):
        # The widths chain in name order, the forward pass does not: rescaling or unit tokens
        # would pair a layer's units with another layer's incoming weights.
        raise ConfigError("canonicalize / unit tokens need an MLP whose forward pass calls "
                          "Dense_0..Dense_k in that order; this model calls them in another "
                          "order: pass canonicalize=False and tokens='chunks'")
    origs = np.unique(src.target_original)
    # By default on for an MLP whose function the rescaling keeps (ReLU): a tanh / GELU MLP's
    # starts that compute different functions were encoded alike.
    changed = (None if chain is None or canonicalize is False
               else _rescaling_change(corpus.arch, tmpl, src.originals[origs[0]]))
    keeps = changed is not None and changed <= _RESCALING_TOLERANCE
    if canonicalize and changed is not None and not keeps:
        raise ConfigError(
            f"canonicalize rescales hidden units, which keeps the function of a ReLU-like "
            f"(positively homogeneous) activation only; on this {corpus.arch.name}'s first "
            f"original it moves the logits by {changed:.3g} relative: pass canonicalize=False")
    if canonicalize is None:
        canonicalize = keeps
    denoiser = resolve_tokens(corpus.arch, denoiser)     # before the weight space is fitted
    rng = np.random.default_rng(seed)
    rows = rng.choice(len(src.values), min(len(src.values), 4096), replace=False)
    start, target = pair_arrays(src, rows)
    o_rows = np.searchsorted(origs, src.target_original[rows])
    ws = WeightSpace.fit(tmpl, src.originals[origs], target, o_rows, canonicalize)
    base = HyperSpec(variant, corpus.arch, ws, denoiser, forget_class)
    raw = np.asarray(base.raw_conditions(src.start_forget, src.forget_loss, src.start_retain,
                                         src.retain_loss))
    classes = np.flatnonzero(src.classes.max(0) > 0.5)
    reqs = sorted({tuple(int(c) for c in np.flatnonzero(src.classes[i] > 0.5))
                   for i in src.trajectories[:, 0]})
    return HyperSpec(variant, corpus.arch, ws, denoiser, forget_class,
                     scalar_mean=tuple(float(v) for v in raw.mean(0)),
                     scalar_std=tuple(float(max(v, 1e-3)) for v in raw.std(0)),
                     default_targets=_default_targets(src),
                     forget_loss_range=tuple(float(v) for v in np.percentile(
                         src.forget_loss, [5, 95])),
                     trained_classes=tuple(int(c) for c in classes),
                     trained_requests=tuple(reqs))


#: :func:`_rescaling_change` at or below which the rescaling keeps a network's function.
_RESCALING_TOLERANCE = 1e-4


def _rescaling_change(arch, tmpl, flat: np.ndarray) -> float:
    """max |logits(canonicalize(θ)) − logits(θ)| / (1 + max |logits(θ)|) of the flat network
    ``flat`` on 16 inputs drawn N(0, 1): ≈ 1e-7 for a ReLU MLP, whose function the rescaling
    keeps exactly, 1e-2 and more for tanh / GELU."""
    params = P_.unflatten(jnp.asarray(flat, jnp.float32), tmpl)
    x = jax.random.normal(jax.random.key(0), (16, *arch.input_shape), jnp.float32)
    # Full float32 products: a GPU's default TF32 put a ReLU MLP at 3e-4 and turned it off.
    with jax.default_matmul_precision("float32"):
        a = arch.apply(params, x)
        b = arch.apply(canonicalize_units(params)[0], x)
    return float(jnp.max(jnp.abs(a - b)) / (1.0 + jnp.max(jnp.abs(a))))


def _check_losses(acc: list, n: int, finite: list | None = None) -> None:
    """NonFiniteError naming the first step (of those since the last check, ending at ``n``)
    whose loss is NaN/inf, or whose update the step's guard skipped (``finite``: the steps'
    flags, as many as ``acc``'s last entries): a finite loss with a non-finite update kept the
    old parameters, and such steps were dropped without a word. The message used to name the
    end of the 50-step logging window."""
    v = np.asarray(jnp.stack(acc))
    ok = np.isfinite(v)
    if finite:
        ok[len(v) - len(finite):] &= np.asarray(jnp.stack(finite), bool)
    bad = np.flatnonzero(~ok)
    if len(bad):
        i = int(bad[0])
        what = ("loss became non-finite" if not np.isfinite(v[i]) else
                "update became non-finite (the step was skipped, its loss finite)")
        raise NonFiniteError(f"hypernetwork {what} at step {n - len(v) + 1 + i}; lower the "
                             "learning rate (the training state saved last is the one before "
                             "it)")


def _check_state(state: DN.HyperTrainState, n: int) -> None:
    """NonFiniteError when an update after a finite loss made the parameters NaN/inf (a
    diverged step is caught by the next loss only, which the last step never has)."""
    bad = first_non_finite({"params": state.params, "ema_params": state.ema_params})
    if bad is not None:
        raise NonFiniteError(f"hypernetwork parameters became non-finite ({bad}) by step {n}; "
                             "lower the learning rate (the training state saved last is the "
                             "one before it)")


@xla.standard_promotion
def train_hypernet(corpus: Corpus, variant: str = "dihyfo2", forget_class: int | None = None,
                   denoiser: DN.DenoiserConfig | None = None,
                   config: DN.HyperTrainConfig | None = None, canonicalize: bool | None = None,
                   checkpoint_dir: str | Path | None = None, save_every: int = 1000,
                   progress: bool = False) -> tuple[Hypernet, dict]:
    """Trains DiHyFo-1 (``forget_class`` set) or DiHyFo-2 on the corpus's training runs.

    Args:
      corpus: the checkpoint corpus.
      variant: ``"dihyfo1"`` or ``"dihyfo2"``.
      forget_class: DiHyFo-1's class (refused for DiHyFo-2).
      denoiser, config: sizes and optimisation.
      canonicalize: rescale hidden units of θ₀ (default: on for MLPs whose function the
        rescaling keeps, i.e. ReLU ones; True for another is refused).
      checkpoint_dir: save the training state there every ``save_every`` steps and resume
        from it (an interrupted run continues to the same result).
      save_every: steps between two saves (a positive integer; read only with a
        ``checkpoint_dir``).
      progress: tqdm bar.

    Returns:
      The :class:`Hypernet` (EMA parameters) and a history: ``loss`` every 50 steps,
      ``seconds``, ``steps_per_second``, ``trajectories``, ``train_config``.
    """
    if checkpoint_dir is not None:
        # Checked up front: `% 0` raised ZeroDivisionError after the first steps' training.
        check_count(save_every, "save_every", " (steps)")
    if variant not in VARIANTS:
        raise ConfigError(f"unknown hypernetwork variant {variant!r}; choose one of "
                          f"{', '.join(VARIANTS)}")
    if variant == "dihyfo1" and forget_class is None:
        raise ConfigError("DiHyFo-1 needs a forget class (forget_class=C, --forget-class C)")
    if variant == "dihyfo2" and forget_class is not None:
        raise ConfigError("DiHyFo-2 serves every class and takes no forget class; drop "
                          "forget_class (--forget-class), or use variant='dihyfo1' "
                          "(--variant dihyfo1) for a one-class network")
    missing = corpus.missing_seeds
    if missing:
        # An interrupted build reads as a smaller corpus: training on it would silently drop
        # the held-out test runs (the last seeds) and record the full corpus's config.
        raise CheckpointError(
            f"corpus {corpus.path} is incomplete: {len(missing)} of its "
            f"{len(missing) + len(corpus.originals)} originals (seeds {missing[0]}..{missing[-1]}) "
            f"are not built yet, the held-out test runs among them; finish it with "
            f"`hyperforget corpus --out {shell_quote(corpus.path)}` (same flags) before training")
    denoiser = denoiser or DN.DenoiserConfig()
    cfg = config or DN.HyperTrainConfig()
    tmpl = corpus.arch.param_shapes()
    permute = tmpl if cfg.permute and _mlp_chain(corpus.arch) is not None else None
    if cfg.permute and permute is None:
        # Before make_spec: permute is on by default, so any other architecture met this
        # refusal after following make_spec's (canonicalize=False, tokens='chunks').
        raise ConfigError("permutation augmentation needs an MLP whose layers Dense_0..Dense_k "
                          "are chained, and called, in that order; pass "
                          "config=HyperTrainConfig(permute=False) (--no-permute)")
    src = pair_source(corpus, variant, forget_class)
    spec = make_spec(corpus, src, variant, forget_class, denoiser, canonicalize, cfg.seed)
    model, sched = spec.model(), D.make_schedule(spec.num_train_steps)
    tx = DN.make_hyper_optimizer(cfg)
    state = DN.init_hyper_state(model, tx, jax.random.key(cfg.seed))
    if spec.denoiser.tokens == "units" and len(DN.mlp_hidden_widths(tmpl)) == 1:
        # One hidden layer: its unit tokens are exactly permutation-equivariant already. With
        # more, a unit token of layer i + 1 holds its incoming weights in layer i's unit order,
        # which a permutation of layer i reorders: the augmentation stays on.
        permute = None
    step = xla.jit(DN.make_hyper_train_step(model, sched, tx, cfg.ema_decay), donate_argnums=0)
    ws = spec.weights

    def encode(a, b):
        return ws.encode_start(a, tmpl), ws.encode_change(b, a, tmpl)

    @xla.jit
    def prepare(key, start, target, f0, f1, r0, r1, classes):
        scalars = spec.conditions(f0, f1, r0, r1)
        return DN.prepare_batch(key, sched, start, target, scalars,
                                classes if variant == "dihyfo2" else None, permute, encode,
                                cfg.p_uncond)

    ckpt, first, done_before = None, 0, {}
    # Through JSON, so that the stored meta (lists) compares equal to the fresh one (tuples).
    run_meta = json.loads(json.dumps({"hypernet": spec.to_json(), "config": cfg.to_json()}))
    if checkpoint_dir is not None:
        from hyperforget_jax.checkpoint import Checkpointer
        ckpt = Checkpointer(checkpoint_dir, max_to_keep=1)
        if ckpt.latest_step() is not None:
            state, meta = ckpt.restore(state)
            if {k: meta.get(k) for k in run_meta} != run_meta:
                raise CheckpointError(f"{checkpoint_dir} holds the training of another "
                                      "hypernetwork (spec or config differ); use another "
                                      "directory")
            first = int(ckpt.latest_step())
            if first < cfg.steps:
                from hyperforget_jax.checkpoint_checks import refuse_other_jax_settings
                refuse_other_jax_settings(ckpt.directory, ckpt.written_under(),
                                          "a hypernetwork's training")
            # The history so far travels with the state: a resumed run's history is the whole
            # run's (a run killed after its last save resumes with no step left to log).
            done_before = meta.get("progress", {})
    key = jax.random.key(cfg.seed + 1)
    losses = [float(v) for v in done_before.get("loss", [])]
    # The losses since the last logged step, saved with the state: a resume at a step between
    # two logs averaged its first logged window over the steps after the restart only.
    acc = [jnp.float32(v) for v in done_before.get("pending", [])]
    flags = []    # the steps' guard flags since the last check (a restored window was checked)
    t0 = time.perf_counter() - float(done_before.get("seconds", 0.0))
    try:
        it = range(first, cfg.steps)
        if progress:
            from tqdm.auto import tqdm
            it = tqdm(it, desc=f"hypertrain {variant}", unit="step", initial=first,
                      total=cfg.steps)
        for n in it:
            # The pair draw depends on (seed, step) only, so a resumed run draws the same pairs.
            rows = sample_pairs(np.random.default_rng([cfg.seed, n]), src, cfg.batch_size,
                                cfg.endpoint_fraction)
            start, target = pair_arrays(src, rows)
            batch = prepare(jax.random.fold_in(key, n), start, target, src.start_forget[rows],
                            src.forget_loss[rows], src.start_retain[rows], src.retain_loss[rows],
                            src.classes[rows])
            state, m = step(state, batch)
            acc.append(m["loss"])
            flags.append(m["finite"])
            log = (n + 1) % 50 == 0 or n + 1 == cfg.steps
            save = ckpt is not None and ((n + 1) % save_every == 0 or n + 1 == cfg.steps)
            if log or save:
                # Before every save too: a save between two logged steps wrote a diverged state
                # over the last good one (max_to_keep=1), and a resume restarted from it.
                _check_losses(acc, n, flags)
                flags = []
            if log:
                losses.append(float(jnp.mean(jnp.stack(acc))))
                acc = []
            if save:
                # A host copy: the save commits in the background while the next (donating) step
                # reuses the device buffers.
                host = jax.tree.map(np.array, state)
                _check_state(host, n)
                ckpt.save(n + 1, host,
                          {**run_meta, "progress": {"loss": losses,
                                                    "pending": [float(v) for v in acc],
                                                    "seconds": time.perf_counter() - t0}})
    finally:
        if ckpt is not None:
            ckpt.close()   # waits for the last background commit, also on an exception
    _check_state(state, cfg.steps - 1)
    secs = time.perf_counter() - t0
    # The corpus's data, so a saved file lets `sample` refuse other data (a file saved from
    # Python recorded none, and `sample` took it on any data without a word).
    return Hypernet(spec, state.ema_params, p_uncond=cfg.p_uncond,
                    built_on=corpus.data_record()), {
        "loss": losses, "seconds": secs, "steps_per_second": cfg.steps / secs,
        "trajectories": int(len(src.trajectories)), "train_config": cfg.to_json(),
        "resumed_at": first}
