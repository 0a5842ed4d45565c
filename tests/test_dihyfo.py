"""DiHyFo-1 / DiHyFo-2 on a tiny corpus: sample() returns a params pytree the classifier applies
directly, vmapped sampling equals one-by-one sampling, an untrained hypernetwork returns θ₀,
requests it was not trained for fail clearly, save/load round-trips, and the CLI samples."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hyperforget_jax import cli
from hyperforget_jax import params as P_
from hyperforget_jax.errors import ArchitectureError, ConfigError, ForgetRequestError
from hyperforget_jax.hyperforget import corpus as C
from hyperforget_jax.hyperforget import denoiser as DN
from hyperforget_jax.hyperforget import dihyfo as H
from hyperforget_jax.models import make_architecture

# Same shapes as test_corpus.py's corpus (fleets of one seed, classes 4 and 5 of equal size, 5
# steps a chunk): run in one process, the ∇τ and training compilations are reused.
CORPUS = C.CorpusConfig(num_seeds=3, fleet_size=1, test_fraction=0.34, epochs=2,
                        save_every_epochs=1, save_every_steps=5, repair_epochs=1,
                        forget_classes=(4, 5), retrain=False)
TINY = DN.DenoiserConfig(num_layers=1, width=32, num_heads=2, max_chunk=256)


@pytest.fixture(scope="module")
def setup(tmp_path_factory, digits_splits):
    out = tmp_path_factory.mktemp("hcorpus")
    C.build_corpus(out, CORPUS, digits_splits, "digits", progress=False)
    corpus = C.Corpus(out)
    net2, hist = H.train_hypernet(corpus, "dihyfo2", denoiser=TINY,
                                  config=DN.HyperTrainConfig(steps=20, batch_size=8))
    # DiHyFo-1 only for the request checks: its spec, untrained weights (saves a compilation).
    spec1 = dataclasses.replace(net2.spec, variant="dihyfo1", forget_class=4,
                                trained_classes=(4,))
    net1 = H.Hypernet(spec1, DN.init_hyper_state(spec1.model(), DN.make_hyper_optimizer(
        DN.HyperTrainConfig()), jax.random.key(0), corpus.arch.param_count).params)
    start = P_.unflatten(jnp.asarray(corpus.params([corpus.find(2, "original")])[0]),
                         corpus.arch.param_shapes())
    return out, corpus, net1, net2, hist, start


def test_pairs_are_forward_in_time_within_one_trajectory(setup):
    _, corpus, *_ = setup
    src, scale = H.pair_source(corpus, "dihyfo2", None, None)
    assert abs(float(src.params.std()) - 0.538) < 1e-3 and scale > 0
    a, b = H.sample_pairs(np.random.default_rng(0), src, 4000)
    traj = np.searchsorted(src.starts, a, side="right") - 1
    assert np.all(a < b) and np.all(b < src.starts[traj] + src.lengths[traj])
    assert 0.4 < np.mean(a == src.starts[traj]) < 0.7        # half start at the original
    # Only training runs (seeds 0, 1): 2 seeds × 2 requests.
    assert len(src.starts) == 4 and corpus.index["test_seeds"] == [2]


def test_sample_returns_params_and_vmaps_over_requests(setup, digits_splits):
    _, corpus, _, net2, hist, start = setup
    assert len(hist["loss"]) == 1 and np.isfinite(hist["loss"][0])
    prompts = [H.make_prompt(net2, start, digits_splits.train, (c,)) for c in (4, 5)]
    keys = jax.random.split(jax.random.key(0), 2)
    one = [H.sample(k, net2, start, p, num_steps=4) for k, p in zip(keys, prompts)]
    assert jax.tree.structure(one[0]) == jax.tree.structure(start)
    logits = corpus.arch.apply(one[0], digits_splits.test.x[:5])
    assert logits.shape == (5, 10) and np.all(np.isfinite(logits))
    many = H.sample_many(keys, net2, start, H.stack_prompts(prompts), num_steps=4)
    for i in range(2):
        np.testing.assert_allclose(P_.flatten(jax.tree.map(lambda a: a[i], many)),
                                   P_.flatten(one[i]), atol=1e-5)
    vm = jax.vmap(lambda k, p: H.sample(k, net2, start, p, num_steps=4))(
        keys, H.stack_prompts(prompts))
    np.testing.assert_allclose(P_.flatten(jax.tree.map(lambda a: a[1], vm)),
                               P_.flatten(one[1]), atol=1e-5)
    # Another key gives another network (DDIM is deterministic given the initial noise only).
    other = H.sample(jax.random.key(9), net2, start, prompts[0], num_steps=4)
    assert not np.allclose(P_.flatten(other), P_.flatten(one[0]))


def test_untrained_hypernetwork_samples_theta0(setup, digits_splits):
    _, corpus, _, net2, _, start = setup
    fresh = DN.init_hyper_state(net2.spec.model(), DN.make_hyper_optimizer(
        DN.HyperTrainConfig()), jax.random.key(1), corpus.arch.param_count).params
    net0 = H.Hypernet(net2.spec, fresh)
    prompt = H.make_prompt(net0, start, digits_splits.train, (5,))
    for method in ("ddim", "ddpm"):
        out = H.sample(jax.random.key(3), net0, start, prompt, num_steps=4, method=method)
        np.testing.assert_allclose(P_.flatten(out), P_.flatten(start), atol=1e-6)


def test_requests_it_was_not_trained_for_raise(setup, digits_splits):
    _, corpus, net1, net2, _, start = setup
    tr = digits_splits.train
    H.make_prompt(net1, start, tr, (4,))
    with pytest.raises(ForgetRequestError, match="DiHyFo-1 network was trained to forget "
                                                 "class 4 only"):
        H.make_prompt(net1, start, tr, (5,))
    with pytest.raises(ForgetRequestError, match="never saw a request forgetting class 7"):
        H.make_prompt(net2, start, tr, (7,))
    with pytest.raises(ForgetRequestError, match="trained on requests of \\[1\\] class"):
        H.make_prompt(net2, start, tr, (4, 5))
    with pytest.raises(ForgetRequestError, match="does not exist"):
        H.make_prompt(net2, start, tr, (10,))
    with pytest.raises(ForgetRequestError, match="empty"):
        H.make_prompt(net2, start, tr, ())
    # A prompt built by hand for an untrained class is refused by sample() too.
    good = H.make_prompt(net2, start, tr, (4,))
    bad = good._replace(classes=jnp.asarray(H.multi_hot((7,), 10)))
    with pytest.raises(ForgetRequestError):
        H.sample(jax.random.key(0), net2, start, bad)
    wrong = make_architecture("mlp", (8, 8, 1), 10).init(jax.random.key(0))
    with pytest.raises(ArchitectureError, match="trained on"):
        H.sample(jax.random.key(0), net2, wrong, good)
    with pytest.raises(ConfigError):
        H.sample(jax.random.key(0), net2, start, good, method="euler")
    with pytest.raises(ConfigError):
        H.HyperSpec("dihyfo1", corpus.arch, 1.0, TINY)         # DiHyFo-1 needs its class


def test_save_load_roundtrip_and_cli_sample(setup, digits_splits, tmp_path, capsys):
    out, corpus, _, net2, _, start = setup
    H.save_hypernet(tmp_path / "h" / "hypernet", net2)
    loaded, _ = H.load_hypernet(tmp_path / "h" / "hypernet")
    assert loaded.spec == net2.spec
    prompt = H.make_prompt(net2, start, digits_splits.train, (5,))
    a = H.sample(jax.random.key(4), net2, start, prompt, num_steps=4)
    b = H.sample(jax.random.key(4), loaded, start, prompt, num_steps=4)
    np.testing.assert_array_equal(P_.flatten(a), P_.flatten(b))
    argv = ["sample", "--dataset", "digits", "--hypernet", str(tmp_path / "h"), "--corpus",
            str(out), "--start-seed", "2", "--forget-class", "5", "--num-steps", "4",
            "--seed", "4", "--out", str(tmp_path / "s")]
    assert cli.main(argv) == 0
    from hyperforget_jax import checkpoint

    saved, meta = checkpoint.load_params(tmp_path / "s" / "params", start)
    np.testing.assert_allclose(P_.flatten(saved), P_.flatten(a), atol=1e-6)
    assert meta["request"]["classes"] == [5]
    capsys.readouterr()
    bad_argv = [a if a != "5" else "7" for a in argv[:-1]] + [str(tmp_path / "s7")]
    assert cli.main(bad_argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "never saw a request forgetting class 7" in err[0]
    # Training DiHyFo-1 for a class the corpus lacks fails with a clear message.
    with pytest.raises(ConfigError, match="no ∇τ trajectory forgetting class 7"):
        H.train_hypernet(corpus, "dihyfo1", forget_class=7, denoiser=TINY,
                         config=dataclasses.replace(DN.HyperTrainConfig(), steps=1))
