"""Any model everywhere: a user's own Flax module, a bare apply_fn and an import path go through
training, ∇τ, a baseline, sweeps, the evaluation and the attacks with no library edits; their
parameters are checked (shapes, dtypes, wrapping); compiled programs belong to the model, so
dropping it frees it."""

import gc
import sys
import types
import weakref

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hyperforget_jax as hf
from conftest import CompileCounter, assert_trees_close
from hyperforget_jax import data, metrics, models, train, ulira
from hyperforget_jax.errors import ArchitectureError, ConfigError
from hyperforget_jax.unlearn import GradTauConfig, SalUnConfig, unlearn, unlearn_sweep


class TinyNet(nn.Module):
    """Not a registered architecture: LayerNorm + two Dense layers on flattened 8×8 digits."""

    num_classes: int = 10
    width: int = 32

    @nn.compact
    def __call__(self, x):
        x = nn.LayerNorm()(x.reshape(x.shape[0], -1))
        return nn.Dense(self.num_classes)(nn.gelu(nn.Dense(self.width)(x)))


@pytest.fixture(scope="module")
def world(digits_splits):
    request = data.ForgetRequest(classes=(4,))
    fsplit = data.resolve_forget(digits_splits.train, request)
    return digits_splits, request, fsplit


@pytest.fixture(scope="module")
def trained(digits_splits):
    """One user module and its trained parameters, shared so its programs compile once."""
    net = TinyNet()
    return net, hf.fit(net, digits_splits.train, hf.TrainConfig(epochs=8, lr=3e-3))[0].params


def test_user_module_end_to_end(world, trained):
    splits, request, fsplit = world
    net, original = trained
    before = hf.evaluate_unlearning(net, original, splits, fsplit, request)
    gt = unlearn("gradtau", net, original, fsplit, splits.val)
    sal = unlearn("salun", net, original, fsplit, splits.val, SalUnConfig(epochs=2))
    assert before["forget_acc"] > 0.8
    for res, max_fa in ((gt, 0.85), (sal, 0.1)):   # ∇τ's 15 default steps only start on it
        after = hf.evaluate_unlearning(net, res.params, splits, fsplit, request)
        assert after["forget_acc"] < max_fa and after["forget_loss"] > before["forget_loss"]
        assert after["test_acc_kept"] > 0.9
        for k in ("mia_loss_lr", "mia_entropy_lr", "mia_efficacy_svc"):
            assert 0.0 <= after[k] <= 1.0
    # U-LiRA with shadows of the user's module (tiny budget: it only has to run and score).
    small = hf.TrainConfig(epochs=2, lr=3e-3)
    sh = ulira.train_shadows(net, splits.train, fsplit, small, ulira.ULiRAConfig(3))
    un = ulira.unlearn_shadows(sh, lambda p, sp, s: unlearn(
        "gradtau", net, p, sp, splits.val, GradTauConfig(epochs=1), s).params, splits.train)
    retrained = hf.fit(net, fsplit.retain, small)[0].params
    u = ulira.ulira(net, sh, un, splits.train, fsplit, gt.params, retrained)
    assert 0.0 <= u["accuracy"] <= 1.0 and u["n_examples"] > 0


def test_bare_apply_fn(world, trained):
    splits, request, fsplit = world
    net, params = trained
    apply_fn = lambda p, x: net.apply({"params": p}, x)
    res = unlearn("gradtau", apply_fn, params, fsplit, splits.val, GradTauConfig(epochs=3))
    ref = unlearn("gradtau", net, params, fsplit, splits.val, GradTauConfig(epochs=3))
    assert_trees_close(res.params, ref.params, atol=1e-6)
    out = metrics.evaluate(apply_fn, res.params, splits.test.x, splits.test.y, 10)
    assert 0 <= out["accuracy"] <= 1
    with pytest.raises(ConfigError, match="no init"):
        unlearn("retrain", apply_fn, params, fsplit, splits.val)
    # The advised call runs as pasted: params.param_count(params) was an AttributeError.
    with pytest.raises(ConfigError, match=r"no known parameter count.* hf\.param_count\("):
        hf.as_model(apply_fn).param_count
    assert hf.param_count(params) == sum(l.size for l in jax.tree.leaves(params)) > 0
    init_fn = lambda key: net.init(key, jnp.zeros((1, 8, 8, 1)))["params"]
    model = hf.as_model(apply_fn, init_fn=init_fn)
    cfg = hf.TrainConfig(epochs=1, lr=3e-3)
    rt = unlearn("retrain", model, params, fsplit, splits.val, cfg)
    assert_trees_close(rt.params, hf.fit(net, fsplit.retain, cfg)[0].params, atol=1e-6)
    # The record names the model that trained, not the config's default "mlp".
    assert rt.info["config"]["arch"] == model.name != "mlp"
    with pytest.raises(ArchitectureError, match="int32"):  # no init: dtype still checked
        hf.evaluate_unlearning(apply_fn, jax.tree.map(lambda l: l.astype(jnp.int32), params),
                               splits, fsplit, request)


def test_a_retrain_sweep_records_the_model_that_trained(world, trained):
    """``unlearn_sweep("retrain", user_model)`` recorded ``config["arch"] == "mlp"`` (the
    config's default), as ``unlearn`` did before; both name the user's model now."""
    splits, _, fsplit = world
    net, params = trained
    cfg = hf.TrainConfig(epochs=1, lr=3e-3)
    one = unlearn("retrain", net, params, fsplit, splits.val, cfg)
    swept = unlearn_sweep("retrain", net, params, fsplit, splits.val, seeds=[0],
                          configs=[cfg])[0]
    assert swept.info["config"] == one.info["config"]
    assert swept.info["config"]["arch"] != "mlp"


def _user_package(tmp_path, monkeypatch, name: str) -> None:
    """``name.models:Net`` (a Dense head with a ``num_classes`` field) importable."""
    pkg = tmp_path / name
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "models.py").write_text(
        "import flax.linen as nn\n"
        "class Net(nn.Module):\n"
        "    num_classes: int = 10\n"
        "    @nn.compact\n"
        "    def __call__(self, x):\n"
        "        return nn.Dense(self.num_classes)(x.reshape(x.shape[0], -1))\n")
    monkeypatch.syspath_prepend(str(tmp_path))


def test_import_path(tmp_path, monkeypatch):
    _user_package(tmp_path, monkeypatch, "usernets")
    m = hf.load_model("usernets.models:Net", (8, 8, 1), num_classes=7)
    assert m.param_count == 64 * 7 + 7 and m.source == "usernets.models:Net"
    back = models.Architecture.from_json(m.to_json())
    assert back.param_count == m.param_count and back.num_classes == 7
    assert hf.as_model("usernets.models:Net", (8, 8, 1)).num_classes == 10
    hf.TrainConfig(arch="usernets.models:Net")            # a valid recipe
    for bad, words in [("usernets.models", "pkg.module:Name"),
                       ("usernets.nope:Net", "cannot import"),
                       ("usernets.models:Nope", "no attribute")]:
        with pytest.raises(ConfigError, match=words):
            hf.load_model(bad)
    with pytest.raises(ArchitectureError, match="not a registered"):
        models.Architecture.from_json({"name": "Net", "input_shape": [8, 8, 1],
                                       "num_classes": 10})


def test_a_recorded_import_path_that_does_not_import_is_not_an_install_hint():
    """An import path read from a file is the file author's: the error says that importing it
    runs its code, so the reader does not just install whatever package the file names."""
    with pytest.raises(ConfigError, match="cannot import 'no_such_pkg_hf.m'.*recorded in the run"
                                          ".*only if you trust where the file came from"):
        models.Architecture.from_json({"name": "Net", "source": "no_such_pkg_hf.m:Net",
                                       "input_shape": [8, 8, 1], "num_classes": 10})


def test_as_model_refuses_what_is_not_a_model():
    with pytest.raises(ConfigError, match="pass an instance"):
        hf.as_model(TinyNet)
    with pytest.raises(ConfigError, match="cannot use a int"):
        hf.as_model(3)
    with pytest.raises(ConfigError, match="unknown architecture 'vit'"):
        hf.as_model("vit")

    class WithBatchNorm(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(3)(nn.BatchNorm(use_running_average=False)(x))

    with pytest.raises(ArchitectureError, match="batch_stats"):
        hf.as_model(WithBatchNorm(), (4,)).init(jax.random.key(0))

    # A forward pass that needs a PRNG key inits (init has keys for every stream) but cannot
    # run as apply(params, x): named when the first program is traced, inside jit too.
    from user_model import StochasticNet

    m = hf.as_model(StochasticNet(), (4,))
    p = m.init(jax.random.key(0))
    for call in (m.apply, jax.jit(m.apply)):
        with pytest.raises(ArchitectureError, match="draws random numbers in its forward pass"):
            call(p, jnp.zeros((2, 4)))


def test_a_forward_pass_that_is_not_batch_by_classes_logits_is_refused():
    # A tuple / dict / (B,) / (B, 1, K) output crashed deep inside fit, the evaluation and
    # every method with a bare AttributeError / TypeError / ValueError.
    class Out(nn.Module):
        how: str

        @nn.compact
        def __call__(self, x):
            z = nn.Dense(3)(x)
            return {"tuple": (z, x), "dict": {"logits": z}, "flat": z[:, 0],
                    "3d": z[:, None, :]}[self.how]

    for how, got in (("tuple", "a tuple"), ("dict", "a dict"),
                     ("flat", r"an array of shape \(2,\)"),
                     ("3d", r"an array of shape \(2, 1, 3\)")):
        m = hf.as_model(Out(how), (4,))
        p = m.init(jax.random.key(0))
        for call in (m.apply, jax.jit(m.apply)):
            with pytest.raises(ArchitectureError, match=f"returned {got}.*logits of shape"):
                call(p, jnp.zeros((2, 4)))
    f = hf.as_model(lambda p, x: (x @ p, x), init_fn=lambda k: jnp.zeros((4, 3)))
    with pytest.raises(ArchitectureError, match="returned a tuple"):
        hf.per_example_ce(f.apply)(jnp.zeros((4, 3)), (jnp.zeros((2, 4)), jnp.zeros(2, int)))


def test_a_leaf_given_as_a_dict_is_not_called_a_list():
    # The list hint ("is a list or tuple, not an array") matched any path below the leaf's, so
    # a leaf wrapped in a dict ({"value": arr}, as some checkpoint formats box them) was
    # reported as a list; the hint is for list indices ([0]) only.
    want = {"Dense_0": {"bias": np.zeros(3, np.float32)}}
    listed = {"Dense_0": {"bias": [0.0, 0.0, 0.0]}}
    boxed = {"Dense_0": {"bias": {"value": np.zeros(3, np.float32)}}}
    with pytest.raises(ArchitectureError, match=r"\['bias'\] is a list or tuple"):
        models.check_param_tree(listed, want, "m")
    with pytest.raises(ArchitectureError, match=r"missing \['Dense_0'\]\['bias'\]") as e:
        models.check_param_tree(boxed, want, "m")
    assert "list" not in str(e.value)


def test_parameter_checks_name_dtype_wrapping_and_extra_leaves(world):
    splits, request, fsplit = world
    arch = hf.make_architecture("gpt_mlp", (8, 8, 1))
    p = arch.init(jax.random.key(0))
    with pytest.raises(ArchitectureError, match=r"bfloat16.*float32.*astype"):
        arch.check_params(jax.tree.map(lambda l: l.astype(jnp.bfloat16), p))
    with pytest.raises(ArchitectureError, match="int32.*not a floating-point"):
        arch.check_params(jax.tree.map(lambda l: l.astype(jnp.int32), p))
    with pytest.raises(ArchitectureError, match=r"one level too deep.*variables\['params'\]"):
        unlearn("gradtau", arch, {"params": p}, fsplit, splits.val)
    # A leaf given as a list (arr.tolist(), JSON) was reported as "missing", its path's parent
    # name without a word on the list.
    first = next(iter(p))
    listed = {**p, first: {**p[first], "bias": np.asarray(p[first]["bias"]).tolist()}}
    with pytest.raises(ArchitectureError, match=rf"\['{first}'\]\['bias'\] is a list.*asarray"):
        unlearn("gradtau", arch, listed, fsplit, splits.val)
    extra = {**p, "Dense_9": {"bias": jnp.zeros(3)}}
    with pytest.raises(ArchitectureError, match="unexpected.*Dense_9"):
        hf.evaluate_unlearning(arch, extra, splits, fsplit, request)
    # a user module whose own parameters are bf16 is fine with bf16
    m = hf.as_model(nn.Dense(3, param_dtype=jnp.bfloat16), (4,))
    m.check_params(m.init(jax.random.key(0)))


def test_bf16_parameters_are_refused_by_the_trainers_with_the_fix(world):
    # They crashed fit and every method with optax's bare "cond branches must have equal
    # output types" (the float32 traced learning rate makes the update float32).
    splits, request, fsplit = world

    class Bf16Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(10, param_dtype=jnp.bfloat16)(x.reshape(x.shape[0], -1))

    net = Bf16Net()
    p = hf.as_model(net, (8, 8, 1)).init(jax.random.key(0))
    with pytest.raises(ArchitectureError, match="bfloat16.*param_dtype=jnp.float32"):
        hf.fit(net, splits.train, hf.TrainConfig(epochs=1))
    for method in ("gradtau", "neggrad"):
        with pytest.raises(ArchitectureError, match="bfloat16.*param_dtype=jnp.float32"):
            unlearn(method, net, p, fsplit, splits.val)


def test_an_import_path_passed_to_every_call_compiles_once(world, tmp_path, monkeypatch):
    # load_model made a new module instance (and a new adapter without programs) on every
    # call: the same path string given to fit / unlearn / evaluate recompiled everything.
    splits, request, fsplit = world
    _user_package(tmp_path, monkeypatch, "pathnets")
    path = "pathnets.models:Net"
    params = hf.fit(path, splits.train, hf.TrainConfig(epochs=1))[0].params
    unlearn("neggrad", path, params, fsplit, splits.val)
    hf.evaluate_unlearning(path, params, splits, fsplit, request)
    with CompileCounter() as c:
        hf.fit(path, splits.train, hf.TrainConfig(epochs=1, seed=1))
        unlearn("neggrad", path, params, fsplit, splits.val, seed=1)
        back = models.Architecture.from_json(hf.as_model(path, (8, 8, 1)).to_json())
        hf.evaluate_unlearning(back, params, splits, fsplit, request)
    assert c.n == 0
    assert hf.load_model(path, num_classes=3).num_classes == 3       # one instance per K


def _user_world():
    big = np.ones((1000, 1000), np.float32)        # 4 MB the apply_fn closes over

    class Owned(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(10)(x.reshape(x.shape[0], -1)) + 0 * big[0, 0]

    return Owned()


def test_dropping_a_model_frees_it_and_its_programs(world):
    splits, request, fsplit = world
    net = _user_world()
    apply_fn = lambda p, x: net.apply({"params": p}, x)
    params = hf.fit(net, splits.train, hf.TrainConfig(epochs=1))[0].params
    res = unlearn("gradtau", net, params, fsplit, splits.val, GradTauConfig(epochs=1))
    unlearn("neggrad", apply_fn, params, fsplit, splits.val)
    for model in (net, apply_fn):
        hf.evaluate_unlearning(model, res.params, splits, fsplit, request)
    unlearn_sweep("finetune", net, params, fsplit, splits.val, seeds=[0, 1],
                  configs=[GradTauConfig(epochs=1)])
    refs = [weakref.ref(net), weakref.ref(apply_fn)]
    del net, apply_fn, model
    gc.collect()
    assert [r() for r in refs] == [None, None]


def test_the_same_module_object_reuses_its_programs(world, trained):
    splits, _, fsplit = world
    net, params = trained
    unlearn("gradtau", net, params, fsplit, splits.val, GradTauConfig(epochs=1))
    with CompileCounter() as c:
        unlearn("gradtau", net, params, fsplit, splits.val, GradTauConfig(epochs=1, lr=1e-4))
    assert c.n == 0


def test_one_module_on_two_input_shapes_keeps_their_programs_apart():
    """The adapters of one module share its program store; init (which closes over the input
    shape) was keyed without it, so the 28×28 model drew the 8×8 model's parameters."""
    class Flat(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(10)(x.reshape(x.shape[0], -1))

    net = Flat()
    small = hf.as_model(net, (8, 8, 1), 10).init(jax.random.key(0))
    large = hf.as_model(net, (28, 28, 1), 10).init(jax.random.key(0))
    assert small["Dense_0"]["kernel"].shape == (64, 10)
    assert large["Dense_0"]["kernel"].shape == (784, 10)


def test_a_wrapper_of_a_used_function_runs_itself(digits_splits):
    """functools.wraps copies the wrapped function's __dict__, where its adapter is kept: a
    temperature-scaled wrapper of an apply_fn used before ran the apply_fn's programs (its loss
    was the unscaled model's)."""
    import functools

    test = digits_splits.test
    w = {"w": jax.random.normal(jax.random.key(1), (64, 10))}

    def apply_fn(p, x):
        return x.reshape(x.shape[0], -1) @ p["w"]

    plain = metrics.evaluate(apply_fn, w, test.x, test.y, 10)["loss"]     # used: adapter kept

    @functools.wraps(apply_fn)        # a later cell
    def cooled(p, x):
        return apply_fn(p, x) / 100.0

    got = metrics.evaluate(cooled, w, test.x, test.y, 10)["loss"]
    want = float(-jax.nn.log_softmax(cooled(w, test.x))[np.arange(len(test)), test.y].mean())
    assert got == pytest.approx(want, rel=1e-5) and abs(got - plain) > 1.0
    assert hf.as_model(apply_fn).apply_fn is apply_fn      # the original keeps its own


def test_no_module_level_compile_caches():
    """No lru_cache (or other cache_info-bearing callable) at module level in the core."""
    import importlib

    for name in ("models", "train", "train_run", "metrics", "evaluation", "ulira", "unlearn",
                 "unlearn.gradtau", "unlearn.gradtau_run", "unlearn.gradtau_stream",
                 "unlearn.baselines"):
        mod = importlib.import_module(f"hyperforget_jax.{name}")
        cached = [k for k, v in vars(mod).items()
                  if callable(v) and hasattr(v, "cache_info")
                  and getattr(v, "__module__", "") == mod.__name__]
        assert cached == [], (name, cached)


class _BNNet(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = nn.BatchNorm(use_running_average=True)(nn.Dense(8)(x.reshape(x.shape[0], -1)))
        return nn.Dense(10)(nn.relu(h))


def test_a_variables_dict_with_running_averages_is_refused_not_trained(world):
    # A Linen module's bound apply given {'params', 'batch_stats'}: every method trained the
    # running averages as weights (gradients, weight decay) and returned them changed.
    splits, _, fsplit = world
    net = _BNNet()
    variables = net.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)))
    m = hf.as_model(net.apply, (8, 8, 1), 10)
    with pytest.raises(ArchitectureError, match=r"Flax variables dict \(collections "
                                                r"\['batch_stats'\].*variables\['params'\]"):
        unlearn("gradtau", m, dict(variables), fsplit, splits.val, GradTauConfig(epochs=1))
    with pytest.raises(ArchitectureError, match="Flax variables dict"):
        hf.fit(m, splits.train, hf.TrainConfig(epochs=1), init_params=dict(variables))


def test_init_fn_is_used_by_a_linen_module_and_refused_where_it_cannot_be(world):
    splits, _, _ = world
    calls = []

    def zeros(key):
        calls.append(key)
        return jax.tree.map(jnp.zeros_like, TinyNet().init(key, jnp.zeros((1, 8, 8, 1)))["params"])

    m = hf.as_model(TinyNet(), (8, 8, 1), 10, init_fn=zeros)
    assert all(float(jnp.abs(l).max()) == 0 for l in jax.tree.leaves(m.init(jax.random.key(3))))
    assert calls
    for obj in ("mlp", hf.as_model(TinyNet(), (8, 8, 1), 10)):
        with pytest.raises(ConfigError, match="init_fn is for a module instance or an apply_fn"):
            hf.as_model(obj, init_fn=zeros)


def test_fit_stream_checks_the_starting_parameters_as_fit_does(world):
    splits, _, _ = world
    p = TinyNet().init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)))["params"]
    extra = {**p, "Dense_9": {"kernel": jnp.ones((3, 3))}}
    batches = [(splits.train.x[:32], splits.train.y[:32])]
    for fit in (lambda: hf.fit(TinyNet(), splits.train, hf.TrainConfig(epochs=1),
                               init_params=extra),
                lambda: hf.fit_stream(TinyNet(), batches, hf.TrainConfig(epochs=1),
                                      init_params=extra)):
        with pytest.raises(ArchitectureError, match=r"unexpected \['Dense_9'\]"):
            fit()


def test_a_plain_tree_with_a_params_key_and_count_features_are_not_refused(world):
    # {'params': W, 'bias': b} of arrays is a user's own tree, not a Flax variables dict; and
    # non-negative count features (N, D, 1, 1) are no 0..255 images.
    splits, _, fsplit = world
    tree = {"params": jnp.zeros((64, 10)), "bias": jnp.zeros(10)}
    m = hf.as_model(lambda p, x: x.reshape(x.shape[0], -1) @ p["params"] + p["bias"],
                    (8, 8, 1), 10, init_fn=lambda k: tree)
    out = unlearn("gradtau", m, tree, fsplit, splits.val, GradTauConfig(epochs=1)).params
    assert set(out) == {"params", "bias"}
    counts = np.random.default_rng(0).poisson(3.0, (60, 20, 1, 1)).astype(np.float32)
    feats = data.from_arrays(counts, np.arange(60) % 10)
    assert counts.max() > 1.5
    hf.fit("mlp", feats, hf.TrainConfig(epochs=1))
