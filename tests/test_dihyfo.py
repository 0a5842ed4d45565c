"""DiHyFo-1 / DiHyFo-2 on a tiny corpus: training pairs start at their own original, sample()
returns a params pytree the classifier applies directly, vmapped sampling equals one-by-one
sampling, guidance weight 0 is the unguided sampler, an untrained hypernetwork returns θ₀,
requests it was not trained for fail clearly, save/load round-trips, training resumes, and the
CLI samples."""

import dataclasses
import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import CompileCounter
from hyperforget_jax import cli, rundir, xla
from hyperforget_jax import params as P_
from hyperforget_jax.errors import (ArchitectureError, CheckpointError, ConfigError,
                                   ForgetRequestError)
from hyperforget_jax.hyperforget import corpus as C
from hyperforget_jax.hyperforget import denoiser as DN
from hyperforget_jax.hyperforget import diffusion as D
from hyperforget_jax.hyperforget import dihyfo as H
from hyperforget_jax.models import make_architecture

# 1258 training images in unlearning batches of 256: 4 steps, so the 4 checkpoints are steps
# 1..4 and every stretch between two of them is one step long (one compiled program).
CORPUS = C.CorpusConfig(num_seeds=3, first_seed=0, fleet_size=3, test_fraction=0.34,
                        epochs_range=(2, 2), unlearn_epochs=1, checkpoints=4,
                        forget_classes=(4, 5), class_pairs=1, unlearn_batch_size=256)
TINY = DN.DenoiserConfig(num_layers=1, width=32, num_heads=2, tokens="units")
TRAIN = DN.HyperTrainConfig(steps=6, batch_size=8)


@pytest.fixture(scope="module")
def setup(tmp_path_factory, digits_splits):
    out = tmp_path_factory.mktemp("hcorpus")
    C.build_corpus(out, CORPUS, digits_splits, "digits", progress=False)
    corpus = C.Corpus(out)
    net2, hist = H.train_hypernet(corpus, "dihyfo2", denoiser=TINY, config=TRAIN)
    start = P_.unflatten(jnp.asarray(corpus.original(2)), corpus.arch.param_shapes())
    return out, corpus, net2, hist, start


def test_pairs_start_at_their_own_original(setup):
    _, corpus, net2, hist, _ = setup
    src = H.pair_source(corpus, "dihyfo2", None)
    # Training runs only (seeds 0, 1): 2 seeds × 3 requests, each its original + 4 checkpoints.
    assert len(src.trajectories) == 6 and corpus.index["test_seeds"] == [2]
    assert np.all(src.trajectories[:, 1] == 5)
    rows = H.sample_pairs(np.random.default_rng(0), src, 4000, endpoint_fraction=0.5)
    t = np.searchsorted(src.trajectories[:, 0], rows, side="right") - 1
    first, length, orig = src.trajectories[t].T
    assert np.all((rows >= first) & (rows < first + length))
    assert np.all(src.target_original[rows] == orig)
    assert 0.55 < np.mean(rows == first + length - 1) < 0.65      # 0.5 + 0.5 / 5
    assert 0.05 < np.mean(rows == first) < 0.15                   # the original itself
    start, target = H.pair_arrays(src, rows[:8])
    np.testing.assert_array_equal(start[:, :650], target[:, :650])   # only the head moves
    # Row 0 of every trajectory is its original: its forget loss is the start's.
    np.testing.assert_allclose(src.forget_loss[first], src.start_forget[first])
    spec = net2.spec
    assert spec.trained_classes == (0, 1, 4, 5) and spec.weights.diffused == [2, 3]
    assert {n for n, *_ in spec.default_targets} == {1, 2}
    assert len(hist["loss"]) == 1 and np.isfinite(hist["loss"][0])
    # The denoiser's scalar inputs are the training conditions standardised by the spec's
    # statistics (the shipped hypernetworks are sampled through the same map).
    raw = np.asarray(spec.raw_conditions(src.start_forget, src.forget_loss, src.start_retain,
                                         src.retain_loss))
    std = np.asarray(spec.conditions(src.start_forget, src.forget_loss, src.start_retain,
                                     src.retain_loss))
    np.testing.assert_allclose(std.mean(0), 0, atol=1e-4)
    moves = raw.std(0) > 1e-3
    assert moves.sum() >= 3
    np.testing.assert_allclose(std.std(0)[moves], 1, rtol=1e-4)


def test_incomplete_corpus_is_refused(setup, tmp_path):
    """A corpus build killed before its last fleet reads as a smaller corpus; training on it
    silently dropped the held-out test runs (the last seeds) and recorded the full config."""
    out, *_ = setup
    part = tmp_path / "partial"
    shutil.copytree(out, part)
    index = json.loads((part / "index.json").read_text())
    index["config"]["num_seeds"] += 3          # a second fleet (seeds 3..5) not built yet
    (part / "index.json").write_text(json.dumps(index))
    corpus = C.Corpus(part)
    assert corpus.missing_seeds == [3, 4, 5]
    with pytest.raises(CheckpointError, match="incomplete"):
        H.train_hypernet(corpus, "dihyfo2", denoiser=TINY, config=TRAIN)
    assert C.Corpus(out).missing_seeds == []


def test_sample_returns_params_vmaps_and_is_generative(setup, digits_splits):
    _, corpus, net2, _, start = setup
    prompts = [H.make_prompt(net2, start, digits_splits.train, c) for c in ((4,), (0, 1))]
    keys = jax.random.split(jax.random.key(0), 2)
    one = [H.sample(k, net2, start, p, num_steps=4) for k, p in zip(keys, prompts)]
    assert jax.tree.structure(one[0]) == jax.tree.structure(start)
    logits = corpus.arch.apply(one[1], digits_splits.test.x[:5])     # a two-class request
    assert logits.shape == (5, 10) and np.all(np.isfinite(logits))
    many = H.sample_many(keys, net2, start, H.stack_prompts(prompts), num_steps=4)
    for i in range(2):
        np.testing.assert_allclose(P_.flatten(jax.tree.map(lambda a: a[i], many)),
                                   P_.flatten(one[i]), atol=1e-5)
    vm = jax.vmap(lambda k, p: H.sample(k, net2, start, p, num_steps=4))(
        keys, H.stack_prompts(prompts))
    np.testing.assert_allclose(P_.flatten(jax.tree.map(lambda a: a[1], vm)),
                               P_.flatten(one[1]), atol=1e-5)
    # Another key gives another network; the first layer is the start's in both.
    other = P_.flatten(H.sample(jax.random.key(9), net2, start, prompts[0], num_steps=4))
    assert not np.allclose(other, P_.flatten(one[0]))
    np.testing.assert_allclose(other[:650], P_.flatten(start)[:650], rtol=1e-5, atol=1e-6)


def test_sample_composes_with_a_users_jit_and_vmap_over_targets(setup, digits_splits):
    """Under the user's jax.jit the sampler raised "compiler_options can only be passed to
    top-level jax.jit"; vmapped over a prompt's target loss (classes concrete) the prompt
    check called np.asarray on a tracer."""
    _, _, net2, _, start = setup
    prompt = H.make_prompt(net2, start, digits_splits.train, (4,))
    key = jax.random.key(0)
    want = P_.flatten(H.sample(key, net2, start, prompt, num_steps=4))
    got = jax.jit(lambda k, p: H.sample(k, net2, p, prompt, num_steps=4))(key, start)
    np.testing.assert_allclose(P_.flatten(got), want, rtol=1e-5, atol=1e-6)
    targets = jnp.stack([prompt.forget_target, 2 * prompt.forget_target])
    many = jax.vmap(lambda t: P_.flatten(H.sample(key, net2, start,
                                                  prompt._replace(forget_target=t),
                                                  num_steps=4)))(targets)
    np.testing.assert_allclose(many[0], want, rtol=1e-5, atol=1e-6)


def test_another_guidance_weight_reuses_the_compiled_sampler(setup, digits_splits):
    # The weight w was a constant of the program: every value of a guidance sweep compiled
    # the whole DDIM loop again (seconds each) and kept it on the hypernetwork for good.
    _, _, net2, _, start = setup
    prompt = H.make_prompt(net2, start, digits_splits.train, (5,))
    key = jax.random.key(3)
    a = H.sample(key, net2, start, prompt, num_steps=4, guidance=1.0)
    n_programs = len(net2._programs)
    with CompileCounter() as c:
        b = H.sample(key, net2, start, prompt, num_steps=4, guidance=1.5)
    assert c.n == 0 and len(net2._programs) == n_programs
    assert not np.allclose(P_.flatten(a), P_.flatten(b), atol=1e-6)


def test_guidance_zero_is_the_unguided_sampler(setup, digits_splits):
    _, corpus, net2, _, start = setup
    prompt = H.make_prompt(net2, start, digits_splits.train, (5,))
    spec, key = net2.spec, jax.random.key(3)
    # The reference: DDIM over the plain conditional denoiser, written out here.
    model, sched, tmpl = spec.model(), D.make_schedule(spec.num_train_steps), start
    theta0 = P_.flatten(start)
    z0 = spec.weights.encode_start(theta0, corpus.arch.param_shapes())[None]
    sc = spec.conditions(prompt.forget_start, prompt.forget_target, prompt.retain_start,
                         prompt.retain_target)[None]
    fn = lambda x, t: model.apply({"params": net2.params}, x, z0, t, sc, prompt.classes[None])
    x0 = D.ddim_sample(sched, fn, key, (1, spec.weights.change_size), 4)
    want = spec.weights.decode_change(x0[0], theta0, corpus.arch.param_shapes())
    got = H.sample(key, net2, start, prompt, num_steps=4, guidance=0.0)
    np.testing.assert_allclose(P_.flatten(got), want, atol=1e-6)
    guided = H.sample(key, net2, start, prompt, num_steps=4, guidance=2.0)
    assert not np.allclose(P_.flatten(guided), want, atol=1e-6)
    with pytest.raises(ConfigError, match="guidance"):
        H.sample(key, net2, start, prompt, guidance=float("nan"))
    del tmpl


def test_guidance_is_refused_for_a_network_trained_without_dropout(setup, digits_splits,
                                                                    tmp_path):
    # Guidance mixes in the target-free prediction, which p_uncond 0 never trained: the CLI
    # refused it, the Python samplers drew and returned the sample without a word.
    _, _, net2, _, start = setup
    assert net2.p_uncond == TRAIN.p_uncond > 0          # train_hypernet records its dropout
    prompt = H.make_prompt(net2, start, digits_splits.train, (5,))
    key = jax.random.key(3)
    plain = H.Hypernet(net2.spec, net2.params, p_uncond=0.0)
    for call in (lambda: H.sample(key, plain, start, prompt, num_steps=4, guidance=2.0),
                 lambda: H.sample_many(jax.random.split(key, 2), plain, start,
                                       H.stack_prompts([prompt, prompt]), num_steps=4,
                                       guidance=0.5)):
        with pytest.raises(ConfigError, match=r"guidance .* trained with p_uncond 0 .*use "
                                              r"guidance 0"):
            call()
    # Guidance 0 is the conditional model alone, which it did learn.
    np.testing.assert_array_equal(
        P_.flatten(H.sample(key, plain, start, prompt, num_steps=4)),
        P_.flatten(H.sample(key, net2, start, prompt, num_steps=4)))
    # The record survives a save; files without it read hypertrain's history, else unknown.
    H.save_hypernet(tmp_path / "h0", plain)
    assert H.load_hypernet(tmp_path / "h0")[0].p_uncond == 0.0
    H.save_hypernet(tmp_path / "h1", H.Hypernet(net2.spec, net2.params),
                    {"history": {"train_config": {"p_uncond": 0.0}}})
    assert H.load_hypernet(tmp_path / "h1")[0].p_uncond == 0.0
    H.save_hypernet(tmp_path / "h2", H.Hypernet(net2.spec, net2.params))
    unknown = H.load_hypernet(tmp_path / "h2")[0]
    assert unknown.p_uncond is None
    H.check_guidance(unknown, 2.0)                      # not known: not refused


def test_untrained_hypernetwork_samples_theta0(setup, digits_splits):
    _, corpus, net2, _, start = setup
    # Freshly initialised parameters, drawn by the program train_hypernet initialises with.
    init = xla.jit(DN.init_params, static_argnums=0)
    net0 = H.Hypernet(net2.spec, init(net2.spec.model(), jax.random.key(1)))
    prompt = H.make_prompt(net0, start, digits_splits.train, (5,))
    for method in ("ddim", "ddpm"):
        out = H.sample(jax.random.key(3), net0, start, prompt, num_steps=4, method=method)
        np.testing.assert_allclose(P_.flatten(out), P_.flatten(start), rtol=1e-5, atol=1e-6)


def test_requests_it_was_not_trained_for_raise(setup, digits_splits):
    _, corpus, net2, _, start = setup
    tr = digits_splits.train
    spec1 = H.HyperSpec("dihyfo1", corpus.arch, net2.spec.weights, TINY, 4,
                        scalar_mean=(0.0,) * 3, scalar_std=(1.0,) * 3,
                        default_targets=((1, 5.0, 0.0),), trained_classes=(4,))
    net1 = H.Hypernet(spec1, None)
    H.make_prompt(net1, start, tr, (4,))
    with pytest.raises(ForgetRequestError, match="DiHyFo-1 network was trained to forget "
                                                 "class 4 only"):
        H.make_prompt(net1, start, tr, (5,))
    with pytest.raises(ForgetRequestError, match="never saw a request forgetting class 7"):
        H.make_prompt(net2, start, tr, (7,))
    # No corpus holds three-class requests: "build the corpus with such requests" could not
    # be followed.
    with pytest.raises(ForgetRequestError, match="trained on requests of \\[1, 2\\] class.*; "
                                                 "corpora hold one- and two-class requests"):
        H.make_prompt(net2, start, tr, (0, 4, 5))
    with pytest.raises(ForgetRequestError, match="does not exist"):
        H.make_prompt(net2, start, tr, (10,))
    with pytest.raises(ForgetRequestError, match="empty"):
        H.make_prompt(net2, start, tr, ())
    with pytest.raises(ForgetRequestError, match="forget target must be a positive finite"):
        H.make_prompt(net2, start, tr, (4,), forget_target=float("nan"))
    # A prompt built by hand for an untrained class, or with a NaN target, is refused too.
    good = H.make_prompt(net2, start, tr, (4,))
    bad = good._replace(classes=jnp.asarray(H.multi_hot((7,), 10)))
    with pytest.raises(ForgetRequestError):
        H.sample(jax.random.key(0), net2, start, bad)
    with pytest.raises(ForgetRequestError, match=r"class -1 does not exist: .* 0\.\.9"):
        H.multi_hot((-1,), 10)       # was class 9's token (NumPy's wrap-around)
    with pytest.raises(ForgetRequestError, match="retain target"):
        H.sample(jax.random.key(0), net2, start, good._replace(retain_target=jnp.nan))
    wrong = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype),       # an mlp's params tree
                         make_architecture("mlp", (8, 8, 1), 10).param_shapes())
    with pytest.raises(ArchitectureError, match="trained on gpt_mlp"):
        H.sample(jax.random.key(0), net2, wrong, good)
    with pytest.raises(ConfigError):
        H.sample(jax.random.key(0), net2, start, good, method="euler")
    with pytest.raises(ConfigError):
        H.HyperSpec("dihyfo1", corpus.arch, net2.spec.weights, TINY)   # needs its class
    with pytest.raises(ConfigError, match=r"no trajectory forgetting class 7; pass one of its "
                       r"single classes \[4, 5\]"):
        H.train_hypernet(corpus, "dihyfo1", forget_class=7, denoiser=TINY, config=TRAIN)
    with pytest.raises(ConfigError, match="takes no forget class; drop forget_class "
                                          r"\(--forget-class\), or use variant='dihyfo1'"):
        H.train_hypernet(corpus, "dihyfo2", forget_class=4, denoiser=TINY, config=TRAIN)


def test_an_mlp_called_in_another_order_than_its_names_is_not_taken_for_a_chain():
    """Flax names layers in creation order: this MLP creates its head first (Dense_0) and calls
    it last, and its square widths chain in name order too, so the template alone took it for
    Dense_0 → Dense_1 and canonicalisation, permutations and unit tokens paired one layer's
    units with the other's weights. The traced call order tells; the refusal comes before any
    work (the corpus's pairs are never read)."""
    import types

    import flax.linen as nn

    from hyperforget_jax.models import as_model

    class HeadFirst(nn.Module):
        @nn.compact
        def __call__(self, x):
            head = nn.Dense(4)
            return head(nn.relu(nn.Dense(4)(x.reshape(len(x), -1))))

    head_first = as_model(HeadFirst(), (4,), 4)
    assert H.mlp_layers(head_first.param_shapes()) == ["Dense_0", "Dense_1"]
    assert H._mlp_chain(head_first) is None
    assert H._mlp_chain(make_architecture("gpt_mlp")) == ["Dense_0", "Dense_1"]
    for kw in (dict(canonicalize=True), dict(denoiser=DN.DenoiserConfig(tokens="units"))):
        kw = {"denoiser": DN.DenoiserConfig(), **kw}
        with pytest.raises(ConfigError, match="calls Dense_0..Dense_k in that order"):
            H.make_spec(types.SimpleNamespace(arch=head_first), None, "dihyfo2", None, **kw)
    # Permutation augmentation is on by default, so train_hypernet refuses it first (before
    # any work): it came after make_spec's refusal, and following that one (canonicalize=False,
    # tokens='chunks') met it; its advice was permute=False, not an argument of train_hypernet.
    fake = types.SimpleNamespace(arch=head_first, missing_seeds=[])
    for kw in ({}, dict(canonicalize=True)):
        with pytest.raises(ConfigError, match=r"pass config=HyperTrainConfig\(permute=False\)"):
            H.train_hypernet(fake, "dihyfo2", **kw)


def test_prompts_of_the_wrong_shape_or_not_multi_hot_are_named(setup, digits_splits):
    """A stacked prompt given to sample() (or one prompt to sample_many) died in a broadcasting
    ValueError inside the denoiser; a soft class token (0.7) passed the request check as
    "forget" and was fed to the denoiser as 0.7."""
    _, _, net2, _, start = setup
    good = H.make_prompt(net2, start, digits_splits.train, (4,))
    with pytest.raises(ForgetRequestError, match="expected one prompt.*call sample_many"):
        H.sample(jax.random.key(0), net2, start, H.stack_prompts([good, good]))
    with pytest.raises(ForgetRequestError, match="expected stacked prompts.*call sample"):
        H.sample_many(jax.random.split(jax.random.key(0), 10), net2, start, good)
    # No prompts at all, or something else in the list: bare TypeErrors of Prompt().
    with pytest.raises(ForgetRequestError, match="at least one prompt"):
        H.stack_prompts([])
    with pytest.raises(ConfigError, match="takes Prompts .*got a tuple"):
        H.stack_prompts([good, tuple(good)])
    soft = good._replace(classes=good.classes.at[4].set(0.7))
    with pytest.raises(ForgetRequestError, match="multi-hot 0/1"):
        H.sample(jax.random.key(0), net2, start, soft)
    # A target left None (make_prompt's "the default") or given as text died in a TypeError of
    # np.isfinite; a plain tuple in an AttributeError.
    for bad in (good._replace(forget_target=None), good._replace(retain_target="0.5")):
        with pytest.raises(ForgetRequestError, match="must be a positive finite loss"):
            H.sample(jax.random.key(0), net2, start, bad)
    with pytest.raises(ForgetRequestError, match="a prompt is a Prompt .make_prompt., got a tuple"):
        H.sample(jax.random.key(0), net2, start, tuple(good))


def test_sample_cli_refuses_a_retain_target_dihyfo1_would_ignore(setup, tmp_path, capsys):
    """DiHyFo-1 conditions on forget losses only: --retain-target changed nothing in the sample
    but was recorded in its prompt as asked for."""
    out, corpus, net2, _, _ = setup
    spec1 = H.HyperSpec("dihyfo1", corpus.arch, net2.spec.weights, TINY, 4,
                        scalar_mean=(0.0,) * 3, scalar_std=(1.0,) * 3,
                        default_targets=((1, 5.0, 0.0),), trained_classes=(4,))
    zeros = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), DN.param_shapes(spec1.model()))
    H.save_hypernet(tmp_path / "h1", H.Hypernet(spec1, zeros))
    rc = cli.main(["sample", "--dataset", "digits", "--hypernet", str(tmp_path / "h1"),
                   "--corpus", str(out), "--start-seed", "2", "--forget-class", "4",
                   "--retain-target", "0.1", "--out", str(tmp_path / "s")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "conditions on the forget loss only" in err[0], err
    assert not (tmp_path / "s").exists()


def test_max_chunk_that_unit_tokens_never_read_is_refused(setup, tmp_path, capsys):
    """Unit tokens (what tokens 'auto' picks for an MLP) never read max_chunk: --max-chunk 64
    trained the very same denoiser and recorded 64 in its spec and run.json."""
    out, corpus, _, _, _ = setup
    chunky = DN.DenoiserConfig(num_layers=1, width=32, num_heads=2, max_chunk=64)
    with pytest.raises(ConfigError, match=r"max_chunk \(--max-chunk\) 64 .*unit tokens \(tokens "
                                          r"'auto' picks them for an MLP\), which never read"):
        H.train_hypernet(corpus, "dihyfo2", denoiser=chunky, config=TRAIN)
    # Chunk tokens read it.
    resolved = H.resolve_tokens(corpus.arch, dataclasses.replace(chunky, tokens="chunks"))
    assert (resolved.tokens, resolved.max_chunk) == ("chunks", 64)
    rc = cli.main(["hypertrain", "--corpus", str(out), "--out", str(tmp_path / "t"),
                   "--steps", "1", "--max-chunk", "64", "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "which never read it" in err[0], err
    assert not (tmp_path / "t").exists()


def test_an_unfinished_hypertrain_run_is_named_as_such(tmp_path):
    """Its --out holds train_state/ but no hypernet.npz yet: the error told the user to "pass
    the --out of `hyperforget hypertrain`", which they had done."""
    (tmp_path / "h" / "train_state").mkdir(parents=True)
    with pytest.raises(CheckpointError, match="has not finished.*rerun the same hypertrain"):
        H.load_hypernet(tmp_path / "h")


def test_training_resumes_to_the_same_network(setup, tmp_path, monkeypatch):
    """Killed at step 4, the run resumes from its step-4 checkpoint to the fixture's network.
    Rerun once finished (as a run killed after its last save, before hypernet.npz is written,
    is), it resumes with no step left and its history is still the run's (was: loss [], so
    `hypertrain` died on an IndexError and wrote a hypernetwork whose history had no loss)."""
    _, corpus, net2, hist, _ = setup
    ckpt = tmp_path / "state"
    real = H.sample_pairs
    calls = {"n": 0}

    def dies_at_step_4(*a, **k):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(H, "sample_pairs", dies_at_step_4)
    with pytest.raises(KeyboardInterrupt):
        H.train_hypernet(corpus, "dihyfo2", denoiser=TINY, config=TRAIN, checkpoint_dir=ckpt,
                         save_every=2)
    monkeypatch.setattr(H, "sample_pairs", real)
    resumed, first = H.train_hypernet(corpus, "dihyfo2", denoiser=TINY, config=TRAIN,
                                      checkpoint_dir=ckpt, save_every=2)
    assert first["resumed_at"] == 4
    for a, b in zip(jax.tree.leaves(resumed.params), jax.tree.leaves(net2.params)):
        np.testing.assert_allclose(a, b, atol=1e-6)
    _, again = H.train_hypernet(corpus, "dihyfo2", denoiser=TINY, config=TRAIN,
                                checkpoint_dir=ckpt, save_every=2)
    assert again["resumed_at"] == TRAIN.steps
    assert again["loss"] == first["loss"] and len(first["loss"]) == len(hist["loss"]) > 0
    # The values too: the logged window open at the kill (steps 1-6, killed after 4) averaged
    # steps 5-6 alone after the resume; the losses since the last log travel with the state.
    assert first["loss"] == pytest.approx(hist["loss"], rel=1e-6)
    assert again["seconds"] >= first["seconds"] * 0.5


def test_diverged_training_stops_at_its_step_and_keeps_the_last_good_state(setup, tmp_path,
                                                                          monkeypatch):
    """A NaN loss at step 3 of 6 (saves every 2 steps): the loss was checked every 50 steps
    and at the last one only, so the step-4 save wrote the NaN state over the step-2 one
    (max_to_keep=1; a resume restarted from NaN) and the error named step 5."""
    from hyperforget_jax.checkpoint import Checkpointer
    from hyperforget_jax.errors import NonFiniteError

    _, corpus, *_ = setup
    real, calls = H.pair_arrays, {"n": 0}

    def nan_at_step_3(*a):
        calls["n"] += 1
        start, target = real(*a)
        return start, target * np.nan if calls["n"] == 5 else target   # 1: make_spec

    monkeypatch.setattr(H, "pair_arrays", nan_at_step_3)
    with pytest.raises(NonFiniteError, match="at step 3;"):
        H.train_hypernet(corpus, "dihyfo2", denoiser=TINY, config=TRAIN,
                         checkpoint_dir=tmp_path / "state", save_every=2)
    with Checkpointer(tmp_path / "state") as ck:
        assert ck.latest_step() == 2


def test_a_skipped_update_stops_training_naming_its_step(setup, monkeypatch):
    """An optimiser whose updates turn NaN from its third call (a finite loss each time): the
    step's guard kept the old parameters and its flag was never read, so 4 of 6 steps were
    dropped without a word and the run returned."""
    import optax

    from hyperforget_jax.errors import NonFiniteError

    _, corpus, *_ = setup
    real = DN.make_hyper_optimizer

    def nan_after_2(cfg):
        tx = real(cfg)

        def update(g, s, p=None):
            u, inner = tx.update(g, s[0], p)
            return jax.tree.map(lambda x: jnp.where(s[1] >= 2, jnp.nan, x), u), (inner, s[1] + 1)
        return optax.GradientTransformation(lambda p: (tx.init(p), jnp.zeros((), jnp.int32)),
                                            update)

    monkeypatch.setattr(H.DN, "make_hyper_optimizer", nan_after_2)
    with pytest.raises(NonFiniteError, match=r"update became non-finite .* at step 2;"):
        H.train_hypernet(corpus, "dihyfo2", denoiser=TINY, config=TRAIN)


def test_save_load_roundtrip_and_cli(setup, digits_splits, tmp_path, capsys):
    out, corpus, net2, _, start = setup
    path = H.save_hypernet(tmp_path / "h", net2, {"history": {"loss": [1.0]}})
    assert path.name == "hypernet.npz"
    loaded, meta = H.load_hypernet(tmp_path / "h")
    assert loaded.spec == net2.spec and meta["history"]["loss"] == [1.0]
    # The corpus's data goes with a network saved from Python too (only `hypertrain` wrote
    # it, and `sample` took such a file on any data without a word).
    # (The fixture's corpus was built from splits, its split seed not recorded.)
    assert meta["dataset"] == "digits" and "split_seed" not in meta
    assert meta["identity"]["data"] == corpus.index["data_fingerprint"]
    assert loaded.built_on == net2.built_on == {k: meta[k] for k in ("dataset", "identity")}
    prompt = H.make_prompt(net2, start, digits_splits.train, (5,))
    a = H.sample(jax.random.key(4), net2, start, prompt, num_steps=4)
    b = H.sample(jax.random.key(4), loaded, start, prompt, num_steps=4)
    np.testing.assert_array_equal(P_.flatten(a), P_.flatten(b))
    argv = ["sample", "--dataset", "digits", "--hypernet", str(tmp_path / "h"), "--corpus",
            str(out), "--start-seed", "2", "--forget-class", "5", "--num-steps", "4",
            "--seed", "4", "--out", str(tmp_path / "s")]
    capsys.readouterr()
    assert cli.main([*argv, "--split-seed", "1"]) == 2
    err = capsys.readouterr().err
    assert "differs from what the hypernetwork's corpus in" in err, err
    assert not (tmp_path / "s").exists()
    assert cli.main(argv) == 0
    from hyperforget_jax import checkpoint

    saved, meta = checkpoint.load_params(tmp_path / "s" / "params", start)
    np.testing.assert_allclose(P_.flatten(saved), P_.flatten(a), atol=1e-6)
    assert meta["request"]["classes"] == [5]
    res = json.loads((tmp_path / "s" / "results.json").read_text())
    for k in ("retain_acc", "forget_acc", "test_acc", "test_acc_kept", "mia_loss_lr"):
        assert 0.0 <= res["sample"][k] <= 1.0 and k in res["start"]
    # "start" is the start network's evaluation and "sample" the sample's (a start column
    # that evaluated the sample passed the range checks above).
    test = digits_splits.test
    acc = lambda p: float(np.mean(np.argmax(net2.spec.arch.apply(p, test.x), -1) == test.y))
    assert acc(start) != acc(saved)
    assert (res["start"]["test_acc"], res["sample"]["test_acc"]) == pytest.approx(
        (acc(start), acc(saved)), abs=1e-6)
    # What ran is in the results, and the report names every attack like unlearn's does.
    assert res["seed"] == 4 and res["sample_config"]["num_steps"] == 4
    reached = res["sample"]["forget_loss"] >= 0.5 * float(prompt.forget_target)
    assert res["coverage"] == {"request_in_corpus": True, "forget_target_in_range": True,
                               "forget_loss_range": list(net2.spec.forget_loss_range),
                               "forget_target_reached": reached,
                               "start_forget_loss_z": pytest.approx(
                                   res["coverage"]["start_forget_loss_z"])}
    assert ("Note:" in (tmp_path / "s" / "report.md").read_text()) == (not reached)
    assert "mia_entropy_lr" in (tmp_path / "s" / "report.md").read_text()
    assert "best_of" not in res
    # --best-of K records which of the K samples it kept (it did not), and its losses.
    assert cli.main([*argv[:-1], str(tmp_path / "s2"), "--best-of", "2"]) == 0
    _, info = H.sample_best_of(jax.random.key(4), net2, start, prompt, digits_splits.train, k=2,
                               num_steps=4)
    res = json.loads((tmp_path / "s2" / "results.json").read_text())
    assert res["best_of"] == info and res["sample_config"]["best_of"] == 2
    assert f"best of 2: sample {info['chosen']} kept" in (tmp_path / "s2" / "report.md").read_text()
    # A start that is not an original (a Retrain forgetting class 4) was sampled and reported
    # as this request's unlearning of it without a word: noted in the report and the results.
    rt = tmp_path / "rt4"
    assert cli.main(["retrain", "--dataset", "digits", "--arch", "gpt_mlp", "--epochs", "1",
                     "--forget-class", "4", "--run-dir", str(rt), "--quiet"]) == 0
    assert argv[5] == "--corpus" and argv[9] == "--forget-class"
    assert cli.main([*argv[:5], "--run-dir", str(rt), *argv[9:-1], str(tmp_path / "s3")]) == 0
    res = json.loads((tmp_path / "s3" / "results.json").read_text())
    assert res["start_run"] == {"role": "retrain", "request": {"classes": [4], "seed": 0}}
    assert ("Note: the start network is a 'retrain' run (its request: class 4), not an "
            "original") in (tmp_path / "s3" / "report.md").read_text()
    capsys.readouterr()

    def fails(argv, message):
        try:
            rc = cli.main(argv)
        except SystemExit as e:          # argparse's own refusals
            rc = e.code
        assert rc == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err

    fails([a if a != "5" else "7" for a in argv[:-1]] + [str(tmp_path / "s7")],
          "never saw a request forgetting class 7")
    fails(argv[:-1] + [str(tmp_path / "s8"), "--forget-target", "nan"],
          "argument --forget-target: expected a finite number, got 'nan'")
    fails(argv[:-1] + [str(tmp_path / "s8"), "--forget-target", "-1"],
          "--forget-target must be a positive finite loss")
    assert not (tmp_path / "s8").exists()
    fails(argv[:-1] + [str(tmp_path / "s8"), "--num-steps", "0"],
          "SampleConfig.num_steps must be >= 1, got 0")
    assert not (tmp_path / "s8").exists()
    # A start network of another split: its prompt and evaluation would read the wrong images
    # as its training set (was: sampled and evaluated silently). The corpus was built from
    # splits given without their seed: the data's fingerprint tells them apart.
    # (The hypernetwork's own record refuses it first; one that records no data, built by
    # hand, leaves it to the start network's check.)
    fails(argv[:-1] + [str(tmp_path / "s8"), "--split-seed", "1"],
          "differs from what the hypernetwork's corpus")
    bare = H.save_hypernet(tmp_path / "h_bare", H.Hypernet(net2.spec, net2.params,
                                                           p_uncond=net2.p_uncond))
    at = argv.index("--hypernet") + 1
    fails([*argv[:at], str(bare), *argv[at + 1:-1], str(tmp_path / "s8"), "--split-seed", "1"],
          "differs from what the corpus's start network")
    assert not (tmp_path / "s8").exists()
    # Guidance mixes in the target-free prediction, which --p-uncond 0 never trained (was:
    # sampled and evaluated silently).
    H.save_hypernet(tmp_path / "h0", H.Hypernet(net2.spec, net2.params, p_uncond=0.0),
                    {"dataset": "digits", "split_seed": 0})
    fails([*argv[:4], str(tmp_path / "h0"), *argv[5:-1], str(tmp_path / "s8"), "--guidance",
           "2"], "trained with p_uncond 0")
    assert not (tmp_path / "s8").exists()
    fails(["hypertrain", "--corpus", str(out), "--out", str(tmp_path / "t"), "--variant",
           "dihyfo2", "--forget-class", "5", "--steps", "1"], "takes no --forget-class")
    assert not (tmp_path / "t").exists()
    # A finished hypertrain run rerun with the same flags is a no-op: the file is not rewritten.
    # The fixture's denoiser and training config: the programs compiled for it serve here.
    tiny = ["hypertrain", "--corpus", str(out), "--out", str(tmp_path / "t"),
            "--steps", str(TRAIN.steps), "--batch-size", str(TRAIN.batch_size),
            "--layers", str(TINY.num_layers), "--width", str(TINY.width),
            "--heads", str(TINY.num_heads), "--quiet"]
    assert cli.main(tiny) == 0
    first = (tmp_path / "t" / "hypernet.npz").read_bytes()
    history = json.loads((tmp_path / "t" / "history.json").read_text())
    # Killed between hypernet.npz and history.json (hypernet.npz is written last now), or a
    # run of an earlier version: the rerun found it finished and history.json stayed missing.
    (tmp_path / "t" / "history.json").unlink()
    capsys.readouterr()
    assert cli.main(tiny[:-1]) == 0
    assert "already trained" in capsys.readouterr().out
    assert (tmp_path / "t" / "hypernet.npz").read_bytes() == first
    assert json.loads((tmp_path / "t" / "history.json").read_text()) == history
    # A damaged history.json was kept as it was (a rerun of `train` rewrites its results.json).
    (tmp_path / "t" / "history.json").write_text('{"loss": [0.1')
    assert cli.main(tiny) == 0
    assert json.loads((tmp_path / "t" / "history.json").read_text()) == history
    # A run of an older version (no run.json) is compared on what its hypernet.npz records:
    # adopted on nothing, other flags took the "already trained" exit and were written over
    # its recipe in run.json.
    (tmp_path / "t" / "run.json").unlink()
    assert tiny[5] == "--steps"
    fails([*tiny[:6], str(TRAIN.steps + 5), *tiny[7:]], "its train.steps is 6")
    assert not (tmp_path / "t" / "run.json").exists()
    assert cli.main(tiny) == 0 and rundir.read_identity(tmp_path / "t")["role"] == "hypernet"
    # The same for a corpus of an older version (the fixture's, built from Python): compared
    # on its index's config, and a refusal leaves no run.json behind.
    old = tmp_path / "old_corpus"
    shutil.copytree(out, old)
    assert not (old / "run.json").exists()
    fails(["corpus", "--dataset", "digits", "--out", str(old), "--seeds", "3",
           "--quiet"], "holds a different 'corpus' run: its config.")
    assert not (old / "run.json").exists()


def test_a_sample_records_what_of_its_request_the_corpus_did_not_hold(setup, digits_splits):
    """A forget target far outside the corpus's forget losses (the tiny corpus: 2.1..2.4) and a
    pair the corpus never held were sampled, and their results and report said nothing of it:
    the sample (forget loss ≈ 2.3) read as the answer to "reach a forget loss of 500"."""
    from hyperforget_jax.commands.hyper import _coverage_note
    from hyperforget_jax.hyperforget.spec import coverage

    _, _, net2, _, start = setup
    spec = net2.spec
    lo, hi = spec.forget_loss_range
    assert spec.trained_requests == ((0, 1), (4,), (5,))
    assert coverage(spec, (1, 0), (lo + hi) / 2) == {
        "request_in_corpus": True, "forget_loss_range": [lo, hi], "forget_target_in_range": True}
    cov = coverage(spec, (5, 4), 500.0)
    assert cov["request_in_corpus"] is False and cov["forget_target_in_range"] is False
    prompt = H.make_prompt(net2, start, digits_splits.train, (5, 4), forget_target=500.0)
    note = _coverage_note(cov, prompt)
    assert "no request of the corpus" in note and "forget target 500 lies outside" in note
    assert _coverage_note(coverage(spec, (4,), hi), prompt) == ""
    # A spec that does not record its corpus's requests or range: unknown, not "covered".
    bare = dataclasses.replace(spec, trained_requests=(), forget_loss_range=())
    assert coverage(bare, (4,), 500.0) == {"request_in_corpus": None, "forget_loss_range": None,
                                           "forget_target_in_range": None}


def test_a_sample_that_misses_its_forget_target_says_so(setup, digits_splits):
    # A start trained with another recipe than the corpus's (forget loss 0.0002, 12 standard
    # deviations below its starts) came back unchanged, FA 99.7 %, and `sample` exited 0 with
    # a report and results that said nothing of it.
    from hyperforget_jax.commands.hyper import _coverage_note, _reached

    _, _, net2, _, start = setup
    prompt = H.make_prompt(net2, start, digits_splits.train, (5,), forget_target=10.0)
    far = prompt._replace(forget_start=jnp.float32(1e-6))
    ev = {"forget_loss": 0.02, "forget_acc": 0.997}
    cov = _reached(net2.spec, far, ev)
    assert cov["forget_target_reached"] is False and cov["start_forget_loss_z"] < -3
    note = _coverage_note({"request_in_corpus": True, "forget_target_in_range": True, **cov}, far,
                          ev)
    assert "did not reach its forget target" in note and "standard deviations below" in note
    assert "forget loss 0.02 is below half of 10 (forget accuracy 99.7 %)" in note
    # A sample at FA 0 % whose loss fell short is not called "not forgotten" beside its table.
    ev = {"forget_loss": 4.04, "forget_acc": 0.0}
    cov = _reached(net2.spec, prompt, ev)
    note = _coverage_note({"request_in_corpus": True, "forget_target_in_range": True, **cov},
                          prompt, ev)
    assert "(forget accuracy 0.0 %)" in note and "not forgotten" not in note
    ok = _reached(net2.spec, prompt, {"forget_loss": 9.0})
    assert ok["forget_target_reached"] is True
    assert _coverage_note({"request_in_corpus": True, "forget_target_in_range": True, **ok},
                          prompt) == ""


def test_sample_cli_refuses_num_steps_with_ddpm(tmp_path, capsys):
    """DDPM runs every diffusion step: a --num-steps beside it would be recorded (run.json,
    report.md "ddpm, 5 steps") without changing the sample, so it is refused before any file
    is read or written."""
    out = tmp_path / "s"
    argv = ["sample", "--dataset", "digits", "--hypernet", str(tmp_path / "none"),
            "--forget-class", "3", "--method", "ddpm", "--num-steps", "5", "--out", str(out)]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--num-steps counts DDIM's steps" in err[0], err
    assert not out.exists()


def test_guided_sample_extrapolates_from_the_conditional_model(setup, digits_splits):
    # Classifier-free guidance: x̂ = x̂_c + w (x̂_c − x̂_u) [ours; Ho & Salimans], written out as
    # DDIM over the denoiser's two passes (the unconditional one drops the scalar conditions).
    _, corpus, net2, _, start = setup
    prompt = H.make_prompt(net2, start, digits_splits.train, (5,))
    spec, key, tmpl = net2.spec, jax.random.key(3), corpus.arch.param_shapes()
    model, sched, theta0 = spec.model(), D.make_schedule(spec.num_train_steps), P_.flatten(start)
    z0 = spec.weights.encode_start(theta0, tmpl)[None]
    sc = spec.conditions(prompt.forget_start, prompt.forget_target, prompt.retain_start,
                         prompt.retain_target)[None]
    apply = lambda x, t, *drop: model.apply({"params": net2.params}, x, z0, t, sc,
                                            prompt.classes[None], *drop)
    fn = lambda x, t: 3.0 * apply(x, t) - 2.0 * apply(x, t, jnp.ones((1,), bool))    # w = 2
    # One compiled call (run op by op, the 4 steps' 8 denoiser passes take seconds).
    x0 = jax.jit(lambda k: D.ddim_sample(sched, fn, k, (1, spec.weights.change_size), 4))(key)
    want = spec.weights.decode_change(x0[0], theta0, tmpl)
    got = H.sample(key, net2, start, prompt, num_steps=4, guidance=2.0)
    np.testing.assert_allclose(P_.flatten(got), want, atol=1e-5)


def test_best_of_keeps_the_sample_closest_to_the_prompt(setup, digits_splits, monkeypatch):
    # |Δ log L_f| + |Δ log L_r| of each of the k = 2 samples, measured here on the request's
    # training images; the kept one is the smallest.
    from hyperforget_jax import data
    from hyperforget_jax.train import mean_cross_entropy
    _, corpus, net2, _, start = setup
    prompt = H.make_prompt(net2, start, digits_splits.train, (5,), forget_target=2.0)
    prompt = prompt._replace(retain_target=prompt.retain_start * 1.5)
    key, arch = jax.random.key(4), net2.spec.arch
    got, info = H.sample_best_of(key, net2, start, prompt, digits_splits.train, k=2, num_steps=4)
    many = H.sample_many(jax.random.split(key, 2), net2, start, H.stack_prompts([prompt] * 2),
                         num_steps=4)
    split = data.resolve_forget(digits_splits.train, data.ForgetRequest(classes=(5,)))
    loss = lambda p, ds: float(mean_cross_entropy(arch, p, jnp.asarray(ds.x), jnp.asarray(ds.y)))
    score = [abs(np.log(loss(P_.tree_index(many, i), split.forget) / 2.0))
             + abs(np.log(loss(P_.tree_index(many, i), split.retain)
                          / float(prompt.retain_target))) for i in range(2)]
    assert max(score) > min(score) and info["chosen"] == int(np.argmin(score))
    np.testing.assert_allclose(P_.flatten(got), P_.flatten(P_.tree_index(many, info["chosen"])))
    # Retain losses that only the prompt's retain *target* tells apart (equal forget losses):
    # sample 1 lands on the target, sample 0 on the start's loss; 1 is kept.
    import hyperforget_jax.hyperforget.sampling as sampling
    one = P_.flatten(P_.tree_index(many, 1))
    monkeypatch.setattr(sampling, "_mean_ce", lambda arch, p, ds: (
        2.0 if len(ds) == len(split.forget) else float(prompt.retain_target)
        if np.array_equal(P_.flatten(p), one) else float(prompt.retain_start)))
    _, info = H.sample_best_of(key, net2, start, prompt, digits_splits.train, k=2, num_steps=4)
    assert info["chosen"] == 1


def test_endpoint_fraction_is_the_share_of_endpoint_targets():
    # endpoint_fraction of the pairs target the end; the rest a uniform checkpoint (the end
    # included): 0.9 + 0.1 / 5 at 0.9 (at the default 0.5 "<" and ">" draw the same share).
    src = H.PairSource(*[None] * 9, trajectories=np.array([[0, 5, 0], [5, 5, 1]]))
    rows = H.sample_pairs(np.random.default_rng(0), src, 4000, endpoint_fraction=0.9)
    assert np.mean(np.isin(rows, [4, 9])) == pytest.approx(0.92, abs=0.015)


def test_default_targets_are_the_medians_of_the_trajectory_endpoints(setup):
    # Per request size: the median endpoint forget loss and the median log(endpoint retain loss
    # / the original's retain loss) (make_prompt's default retain target: r0 · exp(that)).
    _, corpus, net2, _, _ = setup
    src = H.pair_source(corpus, "dihyfo2", None)
    ends = src.trajectories[:, 0] + src.trajectories[:, 1] - 1
    sizes = src.classes[ends].sum(1)
    for n, forget, log_ratio in net2.spec.default_targets:
        e = ends[sizes == n]
        assert forget == pytest.approx(np.median(src.forget_loss[e]), rel=1e-6)
        assert log_ratio == pytest.approx(
            np.median(np.log(src.retain_loss[e] / src.start_retain[e])), rel=1e-5, abs=1e-7)


def test_a_prompt_holds_the_start_s_measured_losses_and_the_default_targets(setup,
                                                                            digits_splits):
    """HyperForget is conditioned on (L_f, L_r) of the start and their targets (METHODS.md §2):
    make_prompt measures L_f on the training images of the forgotten classes and L_r on the
    kept ones, and its default targets are the spec's forget loss and r0 · exp(log-ratio).
    Nothing else pinned them: the two start losses swapped, or a retain target of r0, sampled
    under the wrong condition with every other test passing."""
    _, corpus, net2, _, start = setup
    train = digits_splits.train
    prompt = H.make_prompt(net2, start, train, (0, 1))     # test_sample_returns_params_...'s
    logits = np.asarray(corpus.arch.apply(start, train.x), np.float64)
    logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    ce = -logp[np.arange(len(train.y)), train.y]
    forget = np.isin(train.y, (0, 1))
    f0, r0 = ce[forget].mean(), ce[~forget].mean()
    assert not np.isclose(f0, r0, rtol=1e-3)     # so that a swap of the two shows
    df, dr = H.default_targets(net2.spec, 2)
    np.testing.assert_array_equal(prompt.classes, np.isin(np.arange(10), (0, 1)))
    np.testing.assert_allclose([prompt.forget_start, prompt.forget_target, prompt.retain_start,
                                prompt.retain_target], [f0, df, r0, r0 * np.exp(dr)],
                               rtol=1e-5)
    # The condition the hypernetwork trained on is the corpus's record of the same losses (per
    # class, weighted by the class counts): it must equal what the prompt measures.
    row = int(np.flatnonzero(corpus.original_seeds == 2)[0])
    m = corpus.original_request_metrics([row], (0, 1))
    np.testing.assert_allclose([m["forget_loss"][0], m["retain_loss"][0]], [f0, r0], rtol=1e-4)


def test_a_deeper_tanh_mlp_keeps_its_permutations_and_is_not_canonicalised(setup, tmp_path,
                                                                            digits_splits):
    # Unit tokens are equivariant to the last hidden layer's order only: a permutation of an
    # earlier layer reorders the next layer's incoming weights inside its tokens. permute=True
    # (the default, [G.pt]) was dropped for every MLP with unit tokens, without a word.
    cfg = dataclasses.replace(CORPUS, arch="user_model:Deep2")
    C.build_corpus(tmp_path, cfg, digits_splits, "digits", progress=False)
    corpus = C.Corpus(tmp_path)
    nets = {p: H.train_hypernet(corpus, "dihyfo2", denoiser=TINY,
                                config=dataclasses.replace(TRAIN, steps=2, permute=p))[0]
            for p in (True, False)}
    assert nets[True].spec.denoiser.tokens == "units"
    diff = max(float(jnp.abs(a - b).max()) for a, b in
               zip(jax.tree.leaves(nets[True].params), jax.tree.leaves(nets[False].params)))
    assert diff > 1e-6
    # Rescaling hidden units keeps a ReLU network's function, not a tanh one's: the default
    # canonicalised any MLP, so starts computing different functions were encoded alike.
    assert not nets[True].spec.weights.canonicalize
    assert setup[2].spec.weights.canonicalize                      # the ReLU gpt_mlp's: on
    with pytest.raises(ConfigError, match=r"keeps the function of a ReLU-like .*"
                                          r"canonicalize=False"):
        H.train_hypernet(corpus, "dihyfo2", denoiser=TINY, config=TRAIN, canonicalize=True)


def test_the_canonicalisation_probe_runs_at_full_float32_precision(setup):
    # A GPU's default TF32 products put a ReLU MLP's probe at 3e-4, above its 1e-4 tolerance,
    # and turned canonicalisation off (results changed); the probe now asks for float32.
    # (XLA:CPU computes float32 products whatever the setting: what the probe asks for is
    # checked, the precision in force at each of its forward passes.)
    _, corpus, _, _, _ = setup
    tmpl = corpus.arch.param_shapes()
    seen = []

    class Spy:
        input_shape = corpus.arch.input_shape

        @staticmethod
        def apply(p, x):
            seen.append(jax.config.jax_default_matmul_precision)
            return corpus.arch.apply(p, x)

    with jax.default_matmul_precision("bfloat16"):
        assert H._rescaling_change(Spy, tmpl, corpus.original(0)) < 1e-5
    assert seen == ["float32", "float32"]


class TanhTwin(__import__("flax.linen", fromlist=["Module"]).Module):
    """gpt_mlp's parameter tree (Dense_0 64→10, Dense_1 10→10) with tanh for its ReLU."""

    @__import__("flax.linen", fromlist=["compact"]).compact
    def __call__(self, x):
        import flax.linen as nn
        x = jnp.tanh(nn.Dense(10)(x.reshape((x.shape[0], -1))))
        return nn.Dense(10)(x)


def test_sample_cli_refuses_a_corpus_of_another_model(setup, tmp_path, capsys):
    """`sample --corpus DIR --start-seed S` unflattened the corpus's network into the
    hypernetwork's model without comparing the two: a tanh twin of gpt_mlp (the same parameter
    tree) was sampled and evaluated as a gpt_mlp, exit 0; `--run-dir` refused it."""
    out, corpus, net2, _, _ = setup
    assert corpus.arch.name == "gpt_mlp"
    twin = tmp_path / "twin"
    shutil.copytree(out, twin)
    index = json.loads((twin / "index.json").read_text())
    index["architecture"] = {**index["architecture"], "name": "test_dihyfo:TanhTwin",
                             "source": "test_dihyfo:TanhTwin"}
    (twin / "index.json").write_text(json.dumps(index))
    assert C.Corpus(twin).arch.param_shapes() == corpus.arch.param_shapes()
    H.save_hypernet(tmp_path / "h2", net2)
    rc = cli.main(["sample", "--dataset", "digits", "--hypernet", str(tmp_path / "h2"),
                   "--corpus", str(twin), "--start-seed", "2", "--forget-class", "4",
                   "--out", str(tmp_path / "s")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert "holds test_dihyfo:TanhTwin networks (760 parameters) but this hypernetwork " \
           "samples gpt_mlp networks" in err[0]
    assert not (tmp_path / "s").exists()
