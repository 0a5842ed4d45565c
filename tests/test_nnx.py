"""Flax NNX models everywhere a model is taken: an ``nnx.Module`` class, instance or import path
runs fit, ∇τ, Retrain, sweeps and the evaluation exactly as its Linen twin with the same weights
does; its parameters are plain pytrees (list indices as strings) that survive checkpoints; what
cannot work (no way to build fresh parameters, random forward passes, wrong outputs, another
model's parameters, batch statistics) is refused naming the fix."""

import dataclasses
import gc
import json
import sys
import weakref
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import hyperforget_jax as hf
from conftest import CompileCounter, assert_trees_close
from hyperforget_jax import checkpoint, cli, data, metrics, models
from hyperforget_jax.errors import ArchitectureError, ConfigError
from hyperforget_jax.unlearn import GradTauConfig, unlearn, unlearn_sweep
from hyperforget_jax.unlearn.gradtau_run import per_example

# A user's NNX model in its own file (importable by path, as `--arch nnx_user_nets:Net`): a
# LayerNorm and an nnx.List of layers, whose integer keys the library's params turn to strings.
USER_MODULE = '''
from flax import nnx


class Net(nnx.Module):
    def __init__(self, *, rngs, num_classes=10, width=16):
        self.norm = nnx.LayerNorm(64, rngs=rngs)
        self.layers = nnx.List([nnx.Linear(64, width, rngs=rngs),
                                nnx.Linear(width, num_classes, rngs=rngs)])

    def __call__(self, x):
        x = self.norm(x.reshape(x.shape[0], -1))
        return self.layers[1](nnx.relu(self.layers[0](x)))
'''
PATH = "nnx_user_nets:Net"


class Twin(nn.Module):
    """The Linen model with the same function and parameters as ``Net``."""

    num_classes: int = 10

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Dense(16)(nn.LayerNorm()(x.reshape(x.shape[0], -1))))
        return nn.Dense(self.num_classes)(x)


def to_linen(p):
    return {"LayerNorm_0": p["norm"], "Dense_0": p["layers"]["0"], "Dense_1": p["layers"]["1"]}


@pytest.fixture(scope="module")
def Net(tmp_path_factory):
    root = tmp_path_factory.mktemp("nnx_user")
    (root / "nnx_user_nets.py").write_text(USER_MODULE)
    sys.path.insert(0, str(root))
    import nnx_user_nets
    yield nnx_user_nets.Net
    sys.path.remove(str(root))
    sys.modules.pop("nnx_user_nets", None)


@pytest.fixture(scope="module")
def world(digits_splits, Net):
    """The NNX model (its class, as `--arch` loads it: programs shared with the CLI test), its
    Linen twin drawing the same initial weights, both trained from scratch alike."""
    request = data.ForgetRequest(classes=(4,))
    fsplit = data.resolve_forget(digits_splits.train, request)
    model = hf.as_model(Net, (8, 8, 1), 10)
    twin = hf.as_model(lambda p, x: Twin().apply({"params": p}, x), (8, 8, 1), 10,
                       init_fn=lambda k: to_linen(model.init(k)))
    cfg = hf.TrainConfig(epochs=1, lr=3e-3)
    params = hf.fit(model, digits_splits.train, cfg)[0].params
    twin_params = hf.fit(twin, digits_splits.train, cfg)[0].params
    return digits_splits, request, fsplit, model, twin, params, twin_params


def test_params_are_plain_pytrees_and_logits_equal_the_linen_twin(Net):
    net = Net(rngs=nnx.Rngs(0))
    p = hf.nnx_params(net)
    assert set(p) == {"norm", "layers"} and set(p["layers"]) == {"0", "1"}
    model = hf.as_model(net, (8, 8, 1))
    assert model.param_count == 64 * 2 + 64 * 16 + 16 + 16 * 10 + 10
    assert jax.tree.structure(model.param_shapes()) == jax.tree.structure(p)
    model.check_params(p)
    x = jnp.asarray(np.random.default_rng(0).random((5, 8, 8, 1), np.float32))
    want = Twin().apply({"params": to_linen(p)}, x)
    np.testing.assert_allclose(model.apply(p, x), want, atol=1e-6)
    np.testing.assert_allclose(jax.jit(model.apply)(p, x), want, atol=1e-6)
    np.testing.assert_allclose(net(x), want, atol=1e-6)


def test_fit_gradtau_and_evaluation_equal_the_linen_twin(world):
    splits, request, fsplit, model, twin, params, twin_params = world
    # fit from scratch (the fixture) is also what Retrain runs; Retrain's fresh draws are
    # checked against one-by-one runs below.
    assert_trees_close(to_linen(params), twin_params, atol=1e-5)
    res = unlearn("gradtau", model, params, fsplit, splits.val, GradTauConfig(epochs=1))
    ref = unlearn("gradtau", twin, twin_params, fsplit, splits.val, GradTauConfig(epochs=1))
    assert_trees_close(to_linen(res.params), ref.params, atol=1e-5)
    assert np.abs(np.asarray(res.params["layers"]["1"]["kernel"])
                  - np.asarray(params["layers"]["1"]["kernel"])).max() > 1e-3
    got = hf.evaluate_unlearning(model, res.params, splits, fsplit, request)
    want = hf.evaluate_unlearning(twin, ref.params, splits, fsplit, request)
    assert got.keys() == want.keys()
    for k, v in want.items():
        assert got[k] == pytest.approx(v, abs=1e-4), k


def test_a_retrain_sweep_draws_each_seed_as_one_by_one(world):
    """unlearn_sweep("retrain") vmaps the NNX init over the seeds' (traced) keys."""
    splits, _, fsplit, model, _, params, _ = world
    cfg = hf.TrainConfig(epochs=1, lr=3e-3)
    swept = unlearn_sweep("retrain", model, params, fsplit, splits.val, seeds=[0, 1],
                          configs=[cfg])
    for seed, res in zip((0, 1), swept):
        one = unlearn("retrain", model, params, fsplit, splits.val,
                      dataclasses.replace(cfg, seed=seed))
        assert_trees_close(res.params, one.params, atol=1e-5)
    assert not np.allclose(swept[0].params["layers"]["0"]["kernel"],
                           swept[1].params["layers"]["0"]["kernel"])


def test_params_survive_a_checkpoint_and_go_back_into_the_module(world, tmp_path, Net):
    splits, _, _, model, _, params, _ = world
    checkpoint.save_params(tmp_path / "p", params)
    back, _ = checkpoint.load_params(tmp_path / "p")
    model.check_params(back)                      # the string list keys came back as they were
    assert_trees_close(back, params, atol=0)
    net = Net(rngs=nnx.Rngs(5))
    hf.nnx_update(net, back)
    x = splits.test.x[:4]
    np.testing.assert_allclose(net(x), model.apply(params, x), atol=1e-6)
    with pytest.raises(ArchitectureError, match="missing"):
        hf.nnx_update(net, {"norm": params["norm"]})


def test_cli_train_and_unlearn_on_an_nnx_import_path(world, tmp_path, Net, monkeypatch,
                                                      capsys):
    run = tmp_path / "orig"
    base = ["--dataset", "digits", "--arch", PATH, "--epochs", "1", "--lr", "3e-3", "--quiet"]
    assert cli.main(["train", "--run-dir", str(run), *base]) == 0
    arch = json.loads((run / "results.json").read_text())["meta"]["architecture"]
    assert arch["source"] == PATH and arch["param_count"] == world[3].param_count
    assert models.Architecture.from_json(arch).nnx_model is not None
    assert cli.main(["unlearn", "--method", "gradtau", "--forget-class", "4", "--no-retrain",
                     "--run-dir", str(run), "--config.epochs=1", *base]) == 0
    res = json.loads((run / "unlearn" / "gradtau-class-4" / "results.json").read_text())
    assert res["original"] == "loaded"
    assert res["eval"]["gradtau"]["forget_loss"] > res["eval"]["original"]["forget_loss"]
    # Reloaded where the model's package does not import: said so, not "damaged, retrain it".
    root = str(Path(sys.modules[Net.__module__].__file__).parent)
    monkeypatch.delitem(sys.modules, Net.__module__)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p != root])
    capsys.readouterr()
    assert cli.main(["evaluate", "--run-dir", str(run), "--dataset", "digits",
                     "--forget-class", "4"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "cannot import 'nnx_user_nets'" in err and "damaged" not in err


def test_the_same_module_reuses_its_programs_and_dropping_it_frees_it(digits_splits, Net):
    net = Net(rngs=nnx.Rngs(1))
    x, y = digits_splits.test.x, digits_splits.test.y
    first = metrics.evaluate(net, hf.nnx_params(net), x, y, 10)
    hf.nnx_update(net, jax.tree.map(lambda l: l * 0.5, hf.nnx_params(net)))  # not the model
    with CompileCounter() as c:
        second = metrics.evaluate(net, hf.nnx_params(net), x, y, 10)
    assert c.n == 0 and second["loss"] != first["loss"]
    assert hf.as_model(net) is hf.as_model(net)
    ref = weakref.ref(net)
    del net
    gc.collect()
    assert ref() is None


def test_what_cannot_build_fresh_parameters_is_refused_naming_the_fix(world, Net):
    splits, _, fsplit, _, _, _, _ = world

    class Needs(nnx.Module):
        def __init__(self, width, rngs):
            self.out = nnx.Linear(64, 10, rngs=rngs)

        def __call__(self, x):
            return self.out(x.reshape(x.shape[0], -1))

    wide = Net(rngs=nnx.Rngs(0), width=8)    # type(net)(rngs=...) would build width 16
    for net, words in ((Needs(3, nnx.Rngs(0)), "also needs width"),
                       (wide, "other shapes than this instance")):
        m = hf.as_model(net, (8, 8, 1), 10)
        assert not m.has_init
        for call in (lambda: hf.fit(m, splits.train, hf.TrainConfig(epochs=1)),
                     lambda: unlearn("retrain", m, hf.nnx_params(net), fsplit, splits.val)):
            with pytest.raises(ConfigError, match=f"{words}.*init_fn="):
                call()
    p = hf.nnx_params(wide)
    m = hf.as_model(wide, init_fn=lambda key: hf.nnx_params(Net(rngs=nnx.Rngs(key), width=8)))
    assert m.has_init and jax.tree.map(jnp.shape, m.init(jax.random.key(0))) == \
        jax.tree.map(jnp.shape, p)
    other = hf.as_model(Net(rngs=nnx.Rngs(0)), (8, 8, 1))
    with pytest.raises(ArchitectureError, match=r"\['layers'\]\['0'\]\['bias'\] has shape"):
        other.check_params(p)
    with pytest.raises(ArchitectureError, match=r"integer keys.*hf\.nnx_params"):
        m.check_params(nnx.to_pure_dict(nnx.state(wide, nnx.Param)))
    # ... which an evaluation takes, as it did (it writes no checkpoint): metrics.evaluate
    # refused them for a while (the review of stop 62).
    from hyperforget_jax import metrics

    x = np.random.default_rng(0).random((4, 8, 8, 1)).astype(np.float32)
    got, want = (metrics.evaluate(m, q, x, np.arange(4), 10)
                 for q in (nnx.to_pure_dict(nnx.state(wide, nnx.Param)), p))
    assert (got["accuracy"], got["loss"]) == (want["accuracy"], want["loss"])


def test_a_required_num_classes_is_given_k():
    """``__init__(self, num_classes, *, rngs)`` (no default) is built with K, as the README
    says, from the class and from an instance; it was refused as "also needs num_classes"."""
    class Head(nnx.Module):
        def __init__(self, num_classes, *, rngs):
            self.num_classes = num_classes
            self.out = nnx.Linear(4, num_classes, rngs=rngs)

        def __call__(self, x):
            return self.out(x)

    for m in (hf.as_model(Head, (4,), 3), hf.as_model(Head(3, rngs=nnx.Rngs(1)), (4,))):
        assert m.has_init and m.num_classes == 3
        assert m.init(jax.random.key(0))["out"]["kernel"].shape == (4, 3)


def test_what_as_model_is_given_for_an_nnx_module_is_used():
    """An instance that keeps no ``num_classes`` is rebuilt with as_model's K (it was refused as
    "built with other arguments"); a class takes ``name=`` and refuses ``init_fn=`` (both
    were dropped without a word)."""
    class Small(nnx.Module):
        def __init__(self, *, rngs, num_classes=10):
            self.out = nnx.Linear(4, num_classes, rngs=rngs)

        def __call__(self, x):
            return self.out(x)

    m = hf.as_model(Small(rngs=nnx.Rngs(1), num_classes=3), (4,), 3)
    assert m.has_init and m.init(jax.random.key(0))["out"]["kernel"].shape == (4, 3)
    assert hf.as_model(Small, (4,), 3, name="small").name == "small"
    with pytest.raises(ConfigError, match=r"init_fn is for a module instance.*Small\(\.\.\."):
        hf.as_model(Small, (4,), 3, init_fn=lambda key: {})


def test_apply_refuses_parameters_of_another_shape():
    """nnx.merge takes any shape: a (1,) bias broadcast and metrics.evaluate gave numbers for a
    model that is not the one passed (Linen's apply refuses them, ScopeParamShapeError)."""
    net = nnx.Linear(4, 3, rngs=nnx.Rngs(0))
    model = hf.as_model(net, (4,))
    p = {**hf.nnx_params(net), "bias": jnp.zeros((1,))}
    x, y = np.ones((2, 4), np.float32), np.array([0, 1])
    for call in (lambda: model.apply(p, x), lambda: jax.jit(model.apply)(p, x),
                 lambda: metrics.evaluate(model, p, x, y, 3)):
        with pytest.raises(ArchitectureError, match=r"\['bias'\] has shape \(1,\)"):
            call()


def test_random_or_state_writing_forward_passes_are_refused():
    class Out(nnx.Module):
        def __init__(self, rngs, drop=0.0, bn=False):
            self.dense = nnx.Linear(4, 3, rngs=rngs)
            self.drop = nnx.Dropout(drop, rngs=rngs)
            self.bn = nnx.BatchNorm(3, rngs=rngs) if bn else None

        def __call__(self, x):
            z = self.drop(self.dense(x))
            self.sow(nnx.Intermediate, "z", z)      # an output: writing it is fine
            return (z, x) if self.drop.rate == 0.25 else z if self.bn is None else self.bn(z)

    x = jnp.asarray(np.random.default_rng(0).random((4, 4), np.float32))
    tup = Out(nnx.Rngs(0), drop=0.25)
    tup.eval()
    with pytest.raises(ArchitectureError, match="returned a tuple"):
        hf.as_model(tup).apply(hf.nnx_params(tup), x)
    noisy = Out(nnx.Rngs(0), drop=0.5)          # training mode: dropout draws on every call
    for call in (hf.as_model(noisy).apply, jax.jit(hf.as_model(noisy).apply)):
        with pytest.raises(ArchitectureError, match=r"random numbers.*net\.eval\(\)"):
            call(hf.nnx_params(noisy), x)
    noisy.eval()                                # a new mode, a new adapter
    assert hf.as_model(noisy).apply(hf.nnx_params(noisy), x).shape == (4, 3)
    # Training mode: batch statistics, running averages written and dropped (its test accuracy
    # was 0.93, 0.84 or 0.10 by evaluation batch size; Linen's BatchNorm is refused alike).
    bn = Out(nnx.Rngs(0), bn=True)
    for call in (hf.as_model(bn).apply, jax.jit(hf.as_model(bn).apply)):
        with pytest.raises(ArchitectureError, match=r"writes its state .*\(bn\.mean .*net\.eval"):
            call(hf.nnx_params(bn), x)
    bn.eval()
    bn(x)                                       # now holds what it sowed
    assert per_example(hf.as_model(bn), hf.nnx_params(bn), x)         # running averages


def test_a_corpus_of_an_nnx_model_trains_all_layers_or_is_refused_before_writing(
        digits_splits, tmp_path, Net):
    """unlearn_layers='head' intercepts a Linen module's output layer; for an NNX model it
    named the last module by name ('norm') in index.json and failed only after training the
    originals, leaving the half-built corpus on disk."""
    from hyperforget_jax.hyperforget import corpus

    with pytest.raises(ConfigError, match="unlearn_layers='all'"):
        corpus.build_corpus(tmp_path / "c", corpus.CorpusConfig(arch=PATH),
                            splits=digits_splits, dataset="digits", progress=False)
    assert not (tmp_path / "c").exists()


def test_a_forward_pass_that_creates_state_is_refused_as_one_that_writes_it():
    # A Variable made in __call__ (a mean taken at the first call and "kept") was dropped after
    # every call, so each batch recomputed it: logits depending on the batch, without a word.
    class Centre(nnx.Module):
        def __init__(self, rngs):
            self.lin = nnx.Linear(4, 3, rngs=rngs)

        def __call__(self, x):
            if not hasattr(self, "mu"):
                self.mu = nnx.BatchStat(x.mean(0))
            return self.lin(x - self.mu[...])

    net = Centre(nnx.Rngs(0))
    x = jnp.asarray(np.random.default_rng(0).random((4, 4), np.float32))
    with pytest.raises(ArchitectureError, match=r"writes its state .*\(mu \(BatchStat\)"):
        hf.as_model(net).apply(hf.nnx_params(net), x)
