import dataclasses
import re
import warnings

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax.core import FrozenDict

from hyperforget_jax import data, models, params as P, train, xla
from hyperforget_jax.errors import (ArchitectureError, ConfigError, DataError,
                                    NonFiniteError)
from conftest import CompileCounter, assert_trees_close, devices_or_skip

ARCH = models.make_architecture("gpt_mlp")
CFG = train.TrainConfig(arch="gpt_mlp", epochs=2, batch_size=64, lr=1e-2)


def _batches(ds, n_steps=6, bs=64):
    idx = np.arange(n_steps * bs).reshape(n_steps, bs)
    return [(jnp.asarray(ds.x[i]), jnp.asarray(ds.y[i])) for i in idx]


def _run_single(batches):
    tx = train.make_optimizer(CFG)
    state = train.init_state(ARCH, tx, jax.random.key(0))
    step = train.jit_step(train.make_train_step(ARCH.apply, tx))
    for b in batches:
        state, m = step(state, b)
    return state, m


def test_jit_pmap_sharded_give_same_parameters(mnist_splits):
    # Two of the four fake devices: the same code as on four, and a device count other than
    # jax.device_count(), so an average taken over all devices instead of the step's axis
    # shows. (CI time: a second run on 4 devices compiled two more programs, no new path.)
    n_dev = 2
    batches = _batches(mnist_splits.train)
    ref, ref_m = _run_single(batches)
    tx = train.make_optimizer(CFG)
    devices = devices_or_skip(n_dev)
    assert len(devices) == n_dev

    # pmap: replicated state, batch split across devices, pmean of grads and metrics.
    pstep = jax.pmap(train.make_train_step(ARCH.apply, tx, axis_name="batch"),
                     axis_name="batch", devices=devices, donate_argnums=0)
    state = train.replicate(train.init_state(ARCH, tx, jax.random.key(0)), n_dev,
                            axis_name="batch")
    state, pm = pstep(state, train.shard_batch(batches[0], n_dev))
    # replicate places the state as the step places its outputs: the steps after the first
    # compile nothing (copies on one device made the second step compile the step again).
    with CompileCounter() as compiled:
        for b in batches[1:]:
            state, pm = pstep(state, train.shard_batch(b, n_dev))
    assert compiled.n == 0
    assert_trees_close(train.unreplicate(state).params, ref.params, atol=1e-5)
    np.testing.assert_allclose(pm["loss"][0], ref_m["loss"], atol=1e-5)

    # jit over a ("data",) mesh with NamedSharding.
    mesh = train.data_mesh(devices)
    sstep = train.sharded_step(train.make_train_step(ARCH.apply, tx), mesh)
    state = train.put_sharded(train.init_state(ARCH, tx, jax.random.key(0)), mesh,
                              jax.sharding.PartitionSpec())
    for b in batches:
        state, sm = sstep(state, train.put_sharded(b, mesh))
    assert state.params["Dense_0"]["kernel"].sharding.is_fully_replicated
    assert_trees_close(state.params, ref.params, atol=1e-5)
    np.testing.assert_allclose(sm["loss"], ref_m["loss"], atol=1e-5)
    assert int(state.step) == len(batches)


def test_the_sharded_steps_name_an_indivisible_batch_and_a_mesh_without_data():
    """A batch the mesh's 'data' devices do not divide was JAX's IndivisibleError, a mesh
    without a 'data' axis its bare "Resource axis: data ... not found" (shard_batch, the pmap
    twin, refused the first clearly; stop 64)."""
    from hyperforget_jax.unlearn import gradtau as G

    tx = train.make_optimizer(CFG)
    mesh = train.data_mesh(jax.devices()[:3])
    x = np.zeros((10, *ARCH.input_shape), np.float32)
    y = np.zeros(10, np.int32)
    state = train.init_state(ARCH, tx, jax.random.key(0))
    step = train.sharded_step(train.make_train_step(ARCH.apply, tx), mesh)
    with pytest.raises(ConfigError, match="sharded_step: a batch of 10 rows cannot be split "
                                          "over the mesh's 3 'data' devices"):
        step(state, (x, y))
    gstep = G.sharded_gradtau_step(G.make_gradtau_step(ARCH.apply, tx), mesh)
    with pytest.raises(ConfigError, match="sharded_gradtau_step: a batch of 10 rows"):
        gstep(state, (x[:9], y[:9]), (x, y), 1.0, 0.5)
    other = jax.make_mesh((2,), ("x",), axis_types=(jax.sharding.AxisType.Auto,),
                          devices=jax.devices()[:2])
    for make in (lambda: train.sharded_step(train.make_train_step(ARCH.apply, tx), other),
                 lambda: G.sharded_gradtau_step(G.make_gradtau_step(ARCH.apply, tx), other)):
        with pytest.raises(ConfigError, match=r"the mesh's axes are \('x',\), and the step "
                                              "shards its batch along an axis named 'data'"):
            make()
    assert step.lower(state, (x[:9], y[:9])).compile() is not None    # AOT, as jit_step's
    state, m = step(state, (x[:9], y[:9]))      # divisible: runs
    assert np.isfinite(float(m["loss"]))


def test_the_wrappers_refuse_a_step_built_for_another_axis():
    """A pmap of a step built without axis_name ran: each device stepped on its own shard, the
    copies 2e-3 apart after one step, nothing said. A step with an axis under jit or shardings
    failed with JAX's "unbound axis name" NameError."""
    from hyperforget_jax.unlearn import gradtau as G

    tx = train.make_optimizer(CFG)
    plain, batch = (train.make_train_step(ARCH.apply, tx, axis_name=a) for a in (None, "batch"))
    g_plain, g_batch, g_data = (G.make_gradtau_step(ARCH.apply, tx, axis_name=a)
                                for a in (None, "batch", "data"))
    mesh = train.data_mesh(jax.devices()[:1])
    for call, words in (
            (lambda: train.pmap_step(plain), "pmap axis 'batch', but it was built with "
                                             "axis_name=None (without one, each device"),
            (lambda: G.pmap_gradtau_step(g_plain), "built with axis_name=None"),
            (lambda: G.pmap_gradtau_step(g_data), "built with axis_name='data'; build it "
                                                  "with axis_name='batch'"),
            (lambda: train.jit_step(batch), "jit_step compiles the single-device step"),
            (lambda: train.sharded_step(batch, mesh), "built with axis_name='batch'"),
            (lambda: G.sharded_gradtau_step(g_batch, mesh), "build it without axis_name"),
            # Under a jit the step is the same step: these passed (the replicas drifting
            # apart) or failed with the NameError.
            (lambda: train.pmap_step(jax.jit(plain)), "built with axis_name=None"),
            (lambda: G.pmap_gradtau_step(xla.jit(g_plain)), "built with axis_name=None"),
            (lambda: train.jit_step(jax.jit(batch)), "jit_step compiles the single-device step")):
        with pytest.raises(ConfigError, match=re.escape(words)):
            call()
    # The matching ones, and a user's own step (nothing recorded), are taken.
    train.pmap_step(batch), G.pmap_gradtau_step(g_batch), G.pmap_gradtau_step(g_data, "data")
    train.jit_step(plain), train.sharded_step(plain, mesh), G.sharded_gradtau_step(g_plain, mesh)
    train.pmap_step(lambda state, b: (state, {}))
    # A library step inside a user's transformation binds its axis there: JAX copies the
    # step's __dict__ onto its wrappers, and an attribute mark refused these valid programs.
    P = jax.sharding.PartitionSpec
    data_step = train.make_train_step(ARCH.apply, tx, axis_name="data")
    train.jit_step(jax.shard_map(data_step, mesh=train.data_mesh(jax.devices()[:1]),
                                 in_specs=(P(), P("data")), out_specs=(P(), P())))
    train.sharded_step(jax.vmap(data_step, axis_name="data"), mesh)
    train.jit_step(jax.jit(jax.shard_map(data_step, mesh=train.data_mesh(jax.devices()[:1]),
                                         in_specs=(P(), P("data")), out_specs=(P(), P()))))
    train.pmap_step(jax.jit(batch))

    class Delegating:   # a user's step object with lower / trace: jax.stages.Wrapped by shape
        def __init__(self, f):
            self._f = jax.jit(f)

        def __call__(self, *a):
            return self._f(*a)

        def lower(self, *a):
            return self._f.lower(*a)

        def trace(self, *a):
            return self._f.trace(*a)

    train.jit_step(Delegating(plain))      # an AttributeError ('__wrapped__') before stop 63
    G.sharded_gradtau_step(jax.vmap(g_data, axis_name="data"), mesh)
    # make_train_step takes "a name (or tuple of axes)": a one-name tuple is that name.
    train.pmap_step(train.make_train_step(ARCH.apply, tx, axis_name=("batch",)))


class StepTracesOnce(chex.TestCase):
    def test_step_traces_once(self):
        tx = train.make_optimizer(CFG)
        step = jax.jit(chex.assert_max_traces(train.make_train_step(ARCH.apply, tx), n=1))
        state = train.init_state(ARCH, tx, jax.random.key(0))
        rng = np.random.default_rng(0)
        for _ in range(4):
            x = jnp.asarray(rng.random((32, 28, 28, 1), np.float32))
            y = jnp.asarray(rng.integers(0, 10, 32))
            state, _ = step(state, (x, y))
        self.assertEqual(int(state.step), 4)


def test_replicate_places_copies_on_the_pmap_s_own_devices():
    """replicate put its copies on the first n devices; a pmap over other devices
    (``pmap(..., devices=d)``) took them once and crashed the process (a segfault in jax
    0.10.2's pmap) on its second call. ``devices=`` names the pmap's devices."""
    devices = devices_or_skip(4)[2:]
    step = jax.pmap(lambda s: {"w": s["w"] * 2, "key": s["key"]}, axis_name="batch",
                    devices=devices, donate_argnums=0)
    for _ in range(2):          # the second call with fresh copies is the one that crashed
        state = step(train.replicate({"w": jnp.ones(3), "key": jax.random.key(0)},
                                     axis_name="batch", devices=devices))
    assert state["w"].sharding.device_set == set(devices)
    np.testing.assert_array_equal(state["w"], 2.0)
    for bad in (dict(n=0), dict(n=3, devices=devices), dict(devices=devices[:1] * 2)):
        with pytest.raises(ConfigError, match="replicate: n="):
            train.replicate({"w": jnp.ones(3)}, axis_name="batch", **bad)
    with pytest.raises(ConfigError, match="pass its axis_name= too"):
        train.replicate({"w": jnp.ones(3)}, devices=devices)
    # Without an axis name the copies stay on one device, which any pmap takes.
    assert len(train.replicate({"w": jnp.ones(3)}, 2)["w"].sharding.device_set) == 1


def test_training_checks_its_model_on_a_training_batch_and_refuses_no_data():
    """The output check traced the model on one image, so a model whose forward pass takes
    only its training batch size, which trained before, was refused; a training set of no
    rows stopped with a bare ZeroDivisionError (or numpy's "zero-size array")."""
    import flax.linen as nn

    class EightRows(nn.Module):        # built for batches of 8 rows
        @nn.compact
        def __call__(self, x):
            return nn.Dense(3)(x.reshape(8, -1))

    module = EightRows()
    init = module.init(jax.random.key(0), jnp.zeros((8, 2, 2, 1)))["params"]
    arch = models.as_model(lambda p, x: module.apply({"params": p}, x), (2, 2, 1), 3)
    y = np.arange(16, dtype=np.int32) % 3
    ds = data.from_arrays(np.ones((16, 2, 2, 1), np.float32), y, 3)
    cfg = train.TrainConfig(epochs=1, batch_size=8)
    state, history = train.fit(arch, ds, cfg, init_params=init)
    assert int(state.step) == 2 and np.isfinite(history[0]["loss"])
    class Flat(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(3)(x.reshape(x.shape[0], -1))

    for run in (train.fit, train.fit_fleet):
        with pytest.raises(DataError, match="training set 'empty' has no samples"):
            run(Flat(), data.Dataset(ds.x[:0], y[:0], 3, "empty"), cfg)


def test_training_learns(mnist_splits):
    state, hist = train.fit(ARCH, mnist_splits.train, dataclasses.replace(CFG, epochs=5))
    acc = float(jnp.mean(jnp.argmax(ARCH.apply(state.params, mnist_splits.test.x), -1)
                         == mnist_splits.test.y))
    assert acc > 0.85 and hist[-1]["loss"] < hist[0]["loss"]
    assert int(state.step) == 5 * (3500 // 64)


def test_fleet_member_equals_model_trained_alone(mnist_splits):
    seeds = [3, 11, 42]
    fleet, _ = train.fit_fleet(ARCH, mnist_splits.train, CFG, seeds)
    assert fleet.params["Dense_0"]["kernel"].shape == (3, 784, 10)
    for i, s in enumerate(seeds):
        alone, _ = train.fit(ARCH, mnist_splits.train, dataclasses.replace(CFG, seed=s))
        assert_trees_close(P.tree_index(fleet.params, i), alone.params, atol=1e-5)
    a, b = (P.flatten(P.tree_index(fleet.params, i)) for i in (0, 1))
    assert float(jnp.abs(a - b).max()) > 1e-2  # different seeds really differ


def test_nan_in_data_stops_training_naming_the_step(mnist_splits):
    x = mnist_splits.train.x.copy()
    x[100] = np.nan
    bad = mnist_splits.train.replace(x=x)
    with pytest.raises(NonFiniteError, match=r"step \d+ \(epoch 0, batch \d+\)"):
        train.fit(ARCH, bad, CFG)


def test_a_model_with_fewer_outputs_than_classes_is_named_before_training(digits_splits):
    """A user's module with 5 outputs trained on 10 classes stopped at step 0 with "non-finite
    loss ... check the data for NaN/inf or lower the learning rate" (the loss of a label past
    the last logit is NaN), sending the user after the wrong cause."""
    import flax.linen as nn

    class FiveOutputs(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(5)(x.reshape(x.shape[0], -1))

    with pytest.raises(ArchitectureError, match="fit: model 'FiveOutputs' has 5 outputs but "
                                                "the data 'digits' has 10 classes"):
        train.fit(FiveOutputs(), digits_splits.train, train.TrainConfig(epochs=1))
    # Streamed batches: named at the first batch with a label past the last output.
    tr = digits_splits.train
    batches = [(tr.x[i:i + 32], tr.y[i:i + 32] % 5) for i in (0, 32)] + [(tr.x[:32], tr.y[:32])]
    with pytest.raises(ArchitectureError, match="fit_stream: model 'FiveOutputs' has 5 outputs "
                                                "but a streamed batch has a label past them"):
        train.fit_stream(models.as_model(FiveOutputs(), input_shape=tr.x.shape[1:]),
                         batches, train.TrainConfig(epochs=1))


def test_a_donating_step_leaves_the_caller_s_parameters_alive(digits_splits):
    """jit_step donates its state; init_state kept the caller's arrays, so one step deleted
    the original ("Array has been deleted" at its evaluation afterwards)."""
    from hyperforget_jax.unlearn import gradtau as G

    arch = models.make_architecture("mlp", digits_splits.train.x.shape[1:])
    original = arch.init(jax.random.key(0))
    tx = G.make_gradtau_optimizer(2)
    step = train.jit_step(G.make_gradtau_step(arch.apply, tx))
    b = (jnp.asarray(digits_splits.train.x[:32]), jnp.asarray(digits_splits.train.y[:32]))
    state, _ = step(train.init_state(arch, tx, None, original), b, b, 5.0, 0.3)
    assert not any(l.is_deleted() for l in jax.tree.leaves(original))
    assert not np.allclose(P.flatten(state.params), P.flatten(original))


def test_guard_keeps_old_state_on_nonfinite_step(mnist_splits):
    tx = train.make_optimizer(CFG)
    state = train.init_state(ARCH, tx, jax.random.key(0))
    step = jax.jit(train.make_train_step(ARCH.apply, tx))
    x = jnp.full((8, 28, 28, 1), jnp.inf)
    new, m = step(state, (x, jnp.zeros(8, jnp.int32)))
    assert not bool(m["finite"])
    assert_trees_close(new.params, state.params, atol=0)
    assert int(new.step) == 0


def test_huge_learning_rate_diverges_with_clear_error(mnist_splits):
    with pytest.raises(NonFiniteError, match="lower the learning rate"):
        train.fit(ARCH, mnist_splits.train, dataclasses.replace(CFG, lr=1e30))


@pytest.mark.parametrize("kw", [dict(epochs=-1), dict(batch_size=0), dict(lr=0.0),
                                dict(lr=float("nan")), dict(weight_decay=-1.0)])
def test_bad_config(kw):
    with pytest.raises(ConfigError):
        train.TrainConfig(**kw)


def _made_again(module):
    """``module`` executed again as a new module object of the same name: the classes a reload
    of it (``importlib.reload``, IPython's ``%autoreload``) makes, while the library keeps the
    classes it imported (sys.modules is left as it is)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(module.__name__, module.__file__)
    again = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(again)
    return again


def test_fit_from_a_loaded_start_reuses_the_fresh_start_s_programs(digits_splits):
    """fit commits init_params (Q): a start as load_params gives it (committed to a device)
    after the same start uncommitted (as init's) compiled 3 programs again. The resume test
    checks the committed state only; this is the given start."""
    cfg = train.TrainConfig(epochs=1, batch_size=256)
    arch = models.make_architecture("gpt_mlp", digits_splits.train.x.shape[1:])
    fresh = jax.tree.map(lambda a: jnp.asarray(np.asarray(a)), arch.init(jax.random.key(0)))
    first = train.fit(arch, digits_splits.train, cfg, init_params=fresh)[0].params
    with CompileCounter() as compiled:
        loaded = jax.device_put(fresh, jax.devices()[0])
        again = train.fit(arch, digits_splits.train, cfg, init_params=loaded)[0].params
    assert compiled.n == 0
    chex.assert_trees_all_equal(first, again)


def test_a_config_or_dataset_made_before_a_reload_is_named_so(digits_splits):
    """A notebook that reloaded a library module holds objects of the old classes: they were
    refused as "fit takes a TrainConfig, got TrainConfig", which named no cause."""
    old_train, old_data = _made_again(train), _made_again(data)
    with pytest.raises(ConfigError, match="got TrainConfig of a reloaded module .made before "
                                          "hyperforget_jax.train was reloaded"):
        train.fit("gpt_mlp", digits_splits.train, old_train.TrainConfig(epochs=1))
    ds = digits_splits.train
    with pytest.raises(DataError, match="got Dataset of a reloaded module"):
        train.fit("gpt_mlp", old_data.Dataset(ds.x, ds.y, 10, "d"), train.TrainConfig())
    with pytest.raises(ConfigError, match=r"got dict; e\.g\."):       # other types: as before
        train.fit("gpt_mlp", ds, {"epochs": 1})
    mine = dataclasses.make_dataclass("TrainConfig", ["epochs"])     # a user's own, same name
    with pytest.raises(ConfigError, match=r"got TrainConfig; e\.g\."):
        train.fit("gpt_mlp", ds, mine(epochs=1))


def test_a_config_made_after_a_reload_is_not_told_to_be_built_again(digits_splits, monkeypatch):
    """After ``importlib.reload(hyperforget_jax.train)`` the module's TrainConfig is the new
    class and fit still checks the one it imported: a config made *after* the reload was refused
    as "made before ... was reloaded: build it again", and building it again failed the same way
    (one made before the reload is accepted). The message now says which side is stale."""
    again = _made_again(train)
    monkeypatch.setattr(train, "TrainConfig", again.TrainConfig)     # as the reload leaves it
    with pytest.raises(ConfigError, match="made after hyperforget_jax.train was reloaded; the "
                                          "library still checks the class it imported first: "
                                          "restart the kernel"):
        train.fit("gpt_mlp", digits_splits.train, train.TrainConfig(epochs=1))


def test_resume_from_checkpoint_equals_uninterrupted_run(mnist_splits, tmp_path):
    from hyperforget_jax.checkpoint import Checkpointer

    cfg4 = dataclasses.replace(CFG, epochs=4)
    straight, _ = train.fit(ARCH, mnist_splits.train, cfg4)
    with Checkpointer(tmp_path / "ck") as ck:
        train.fit(ARCH, mnist_splits.train, dataclasses.replace(CFG, epochs=2), checkpointer=ck,
                  meta={"note": "first half"})
        assert ck.latest_step() == 2
    with Checkpointer(tmp_path / "ck") as ck:  # a new process would see the same directory
        with CompileCounter() as compiled:
            resumed, hist = train.fit(ARCH, mnist_splits.train, cfg4, checkpointer=ck)
        assert [h["epoch"] for h in hist] == [2, 3]  # only the missing epochs ran
        assert ck.restore_meta()["epoch"] == 4
    # The restored state (committed, as load_params' arrays are) runs the straight run's
    # compiled epoch: it was compiled again (two programs) before fit committed its state.
    assert compiled.n == 0
    assert int(resumed.step) == int(straight.step)
    assert_trees_close(resumed.params, straight.params, atol=0)
    assert_trees_close(resumed.opt_state, straight.opt_state, atol=0)


def test_resume_refuses_a_checkpoint_of_another_model_of_the_same_shapes(digits_splits,
                                                                         tmp_path):
    """An edited module rerun into its checkpoint directory (ReLU → tanh, the same parameter
    tree) resumed the other model's weights: fit finished the epochs left and recorded the mix
    as the new model; ∇τ returned the other model's finished result."""
    import flax.linen as nn

    from hyperforget_jax import data as D
    from hyperforget_jax.checkpoint import Checkpointer
    from hyperforget_jax.unlearn import GradTauConfig, unlearn
    from hyperforget_jax.errors import CheckpointError

    def net(act):
        class Net(nn.Module):
            @nn.compact
            def __call__(self, x):
                return nn.Dense(10)(act(nn.Dense(16)(x.reshape((x.shape[0], -1)))))
        Net.__name__ = Net.__qualname__ = f"{act.__name__.title()}Net"
        return Net()

    ds = digits_splits.train
    relu, tanh = (models.as_model(net(a), ds.x.shape[1:], 10) for a in (nn.relu, jnp.tanh))
    cfg = train.TrainConfig(epochs=1, batch_size=256, lr=1e-2)
    with Checkpointer(tmp_path / "fit") as ck:
        state, _ = train.fit(relu, ds, cfg, checkpointer=ck)
        with pytest.raises(CheckpointError, match="trained as 'ReluNet', not 'TanhNet'"):
            train.fit(tanh, ds, dataclasses.replace(cfg, epochs=2), checkpointer=ck)
        assert ck.latest_step() == 1
        train.fit(relu, ds, dataclasses.replace(cfg, epochs=2), checkpointer=ck)  # resumes
    split = D.resolve_forget(ds, D.ForgetRequest(classes=(3,)))
    gcfg = GradTauConfig(epochs=1)
    with Checkpointer(tmp_path / "gt") as ck:
        unlearn("gradtau", relu, state.params, split, digits_splits.val, gcfg,
                checkpointer=ck)
        with pytest.raises(CheckpointError, match=r"different ∇τ run \(model: .*ReluNet"):
            unlearn("gradtau", tanh, state.params, split, digits_splits.val, gcfg,
                    checkpointer=ck)


def test_resume_refuses_a_checkpoint_of_another_run(digits_splits, tmp_path):
    """fit resumed whatever its checkpointer held: a 3-epoch checkpoint came back, with an empty
    history, as a 1-epoch model; another seed / learning rate / training set was continued."""
    from hyperforget_jax.checkpoint import Checkpointer
    from hyperforget_jax.errors import CheckpointError

    arch = models.make_architecture("gpt_mlp", (8, 8, 1))
    ds = digits_splits.train
    cfg = train.TrainConfig(arch="gpt_mlp", epochs=2, batch_size=256, lr=1e-2)
    with Checkpointer(tmp_path / "ck") as ck:
        train.fit(arch, ds, cfg, checkpointer=ck)
        with pytest.raises(CheckpointError, match="trained for 2 epochs"):
            train.fit(arch, ds, dataclasses.replace(cfg, epochs=1), checkpointer=ck)
        for other in (dataclasses.replace(cfg, epochs=3, seed=7),
                      dataclasses.replace(cfg, epochs=3, lr=0.5)):
            with pytest.raises(CheckpointError, match="another recipe"):
                train.fit(arch, ds, other, checkpointer=ck)
        with pytest.raises(CheckpointError, match="other data"):
            train.fit(arch, ds.subset(np.arange(len(ds) - 1)),
                      dataclasses.replace(cfg, epochs=3), checkpointer=ck)
        same, hist = train.fit(arch, ds, cfg, checkpointer=ck)   # the same run: nothing to do
        assert hist == [] and ck.latest_step() == 2
    # The record names the model that trained, which the recipe's `arch` field need not (a
    # default TrainConfig says "mlp"): fit("gpt_mlp", ...) was recorded as an "mlp".
    with Checkpointer(tmp_path / "ck3") as ck:
        train.fit("gpt_mlp", ds, train.TrainConfig(epochs=1), checkpointer=ck)
        assert ck.restore_meta()["architecture"] == models.as_model(
            "gpt_mlp", ds.x.shape[1:], ds.num_classes).to_json()
    # Another start (init_params) was continued too: the first run's model came back.
    start = arch.init(jax.random.key(1))
    with Checkpointer(tmp_path / "ck2") as ck:
        train.fit(arch, ds, cfg, checkpointer=ck, init_params=start)
        with pytest.raises(CheckpointError, match="other init_params"):
            train.fit(arch, ds, cfg, checkpointer=ck, init_params=arch.init(jax.random.key(2)))
        train.fit(arch, ds, cfg, checkpointer=ck, init_params=start)      # the same run


def _adamw_loop(arch, ds, cfg):
    """fit's recipe written out: optax.adamw(lr, weight_decay) on every leaf, over
    batch_indices' batches, on the mean cross-entropy. Returns (params, per-epoch mean loss and
    accuracy)."""
    import optax

    @jax.jit
    def step(p, opt, x, y, lr, wd):
        def loss(q):
            logits = arch.apply(q, x)
            return (optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(),
                    jnp.mean(jnp.argmax(logits, -1) == y))
        (value, acc), g = jax.value_and_grad(loss, has_aux=True)(p)
        u, opt = optax.adamw(lr, weight_decay=wd).update(g, opt, p)
        return optax.apply_updates(p, u), opt, (value, acc)

    params = arch.init(jax.random.key(cfg.seed))
    opt, losses = optax.adamw(cfg.lr).init(params), []
    for e in range(cfg.epochs):
        for b in data.batch_indices(cfg.seed, e, len(ds), cfg.batch_size):
            params, opt, m = step(params, opt, ds.x[b], ds.y[b], cfg.lr, cfg.weight_decay)
            losses.append(np.asarray(m))
    return params, np.reshape(losses, (cfg.epochs, -1, 2)).mean(1)


def test_fleet_with_per_member_recipes_equals_fit(digits_splits):
    """Each member equals fit on its own rows, and fit equals its recipe written out
    (_adamw_loop), with learning rates and decays other than the defaults: the compiled epoch
    takes both as traced values, and one ignored (or decay on some leaves only) trained another
    model unnoticed."""
    arch = models.make_architecture("gpt_mlp", (8, 8, 1))
    cfgs = [train.TrainConfig(arch="gpt_mlp", epochs=2, lr=1e-2, weight_decay=0.5, seed=1),
            train.TrainConfig(arch="gpt_mlp", epochs=2, lr=3e-3, weight_decay=0.0, seed=2)]
    n = len(digits_splits.train)
    subsets = np.stack([np.arange(0, n - 200), np.arange(200, n)])  # each member its own rows
    fleet, fleet_hist = train.fit_fleet(arch, digits_splits.train, cfgs, subsets=subsets)
    for i, c in enumerate(cfgs):
        ds = digits_splits.train.subset(subsets[i])
        alone, hist = train.fit(arch, ds, c)
        assert_trees_close(P.tree_index(fleet.params, i), alone.params, atol=1e-5)
        np.testing.assert_allclose([h["loss"][i] for h in fleet_hist],
                                   [h["loss"] for h in hist], rtol=1e-4)
        want, metrics = _adamw_loop(arch, ds, c)
        assert_trees_close(alone.params, want, atol=1e-5)
        np.testing.assert_allclose([(h["loss"], h["accuracy"]) for h in hist], metrics,
                                   rtol=1e-5)
    with pytest.raises(ConfigError, match="must agree"):
        train.fit_fleet(arch, digits_splits.train,
                        [cfgs[0], dataclasses.replace(cfgs[1], epochs=3)])


def test_fleet_seeds_are_checked_like_fit_s_and_take_jax_integers(digits_splits):
    """fit_fleet's seeds went to jax.random.key unchecked: 2**32 + 1 drew seed 1's
    initialisation with another batch order (a member no ``fit`` can reproduce: fit refuses
    that seed), and jnp.arange(n) crashed with "len() of unsized object"."""
    arch = models.make_architecture("gpt_mlp", (8, 8, 1))
    cfg = train.TrainConfig(arch="gpt_mlp", epochs=0)
    for bad in ([2**32 + 1], [-1], [1.5]):
        with pytest.raises(ConfigError, match="fit_fleet seed"):
            train.fit_fleet(arch, digits_splits.train, cfg, seeds=bad)
    # one int for the list (a bare "'int' object is not iterable"), a dict for the config
    with pytest.raises(ConfigError, match=r"sequence of integers, got 3; e.g. seeds=\[3\]"):
        train.fit_fleet(arch, digits_splits.train, cfg, seeds=3)
    with pytest.raises(ConfigError, match="fit_fleet takes a TrainConfig.*got dict"):
        train.fit_fleet(arch, digits_splits.train, {"epochs": 0}, seeds=[0])
    # An empty grid read as [[]]: "takes a TrainConfig or a list of them, got list".
    with pytest.raises(ConfigError, match=r"fit_fleet needs at least one config \(an empty"):
        train.fit_fleet(arch, digits_splits.train, [], seeds=[0])
    with pytest.raises(ConfigError, match="fit_stream takes a TrainConfig.*got dict"):
        train.fit_stream(arch, [(digits_splits.train.x[:2], digits_splits.train.y[:2])],
                         {"epochs": 0})
    a, _ = train.fit_fleet(arch, digits_splits.train, cfg, seeds=jnp.arange(2))
    b, _ = train.fit_fleet(arch, digits_splits.train, cfg, seeds=[0, 1])
    assert_trees_close(a.params, b.params, atol=0.0)


def test_a_step_on_a_mesh_splits_its_batch_over_the_data_axis():
    """README: with ``mesh=`` "batches are split along its data axis" inside every compiled
    step (fit, ∇τ, the baselines); the equality tests below pass just as well when each device
    computes the whole batch, so the split itself is asserted here (an ignored mesh: none)."""
    mesh = jax.make_mesh((4,), ("data",), devices=devices_or_skip(4))
    out = jax.jit(train.shard_rows(mesh))(jnp.ones((8, 3)))
    assert out.sharding.is_equivalent_to(
        jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data")), 2)
    assert {s.data.shape for s in out.addressable_shards} == {(2, 3)}


def test_fit_on_a_mesh_and_streamed_equal_one_device(digits_splits):
    arch = models.make_architecture("gpt_mlp", (8, 8, 1))
    ds = digits_splits.train
    cfg = train.TrainConfig(arch="gpt_mlp", epochs=2, batch_size=64, lr=1e-2, seed=4)
    want, hist = train.fit(arch, ds, cfg)
    mesh = train.data_mesh(devices_or_skip(4))
    on_mesh, hist_m = train.fit(arch, ds, cfg, mesh=mesh)
    assert on_mesh.params["Dense_0"]["kernel"].sharding.is_fully_replicated
    assert_trees_close(on_mesh.params, want.params, atol=1e-5)
    np.testing.assert_allclose(hist_m[-1]["loss"], hist[-1]["loss"], rtol=1e-5)
    # Streamed host batches (the same order as fit's plan), on one device and on the mesh.
    stream = lambda epoch: data.iterate_batches(ds, cfg.batch_size, cfg.seed, epoch)
    for m in (None, mesh):
        streamed, hist_s = train.fit_stream(arch, stream, cfg, mesh=m)
        assert int(streamed.step) == int(want.step)
        assert_trees_close(streamed.params, want.params, atol=1e-5)
        np.testing.assert_allclose(hist_s[-1]["loss"], hist[-1]["loss"], rtol=1e-5)
    # On a 2 × 2 (model, data) mesh a streamed batch is split in 2, not over 4 devices: 6-row
    # batches were refused ("use a multiple of 4").
    grid = jax.sharding.Mesh(np.array(devices_or_skip(4)).reshape(2, 2), ("model", "data"))
    six = dataclasses.replace(cfg, batch_size=6, epochs=1)
    rows = lambda epoch: list(data.iterate_batches(ds, 6, cfg.seed, epoch))[:5]
    assert_trees_close(train.fit_stream(arch, rows, six, mesh=grid)[0].params,
                       train.fit_stream(arch, rows, six)[0].params, atol=1e-5)
    with pytest.raises(ConfigError, match="6 rows cannot be split over the 4 shards of the "
                                          "mesh's 'data' axis"):
        train.fit_stream(arch, rows, six, mesh=mesh)
    # A batch that does not divide over the devices is split unevenly (it used to be refused).
    odd = dataclasses.replace(cfg, batch_size=30, epochs=1)
    assert_trees_close(train.fit(arch, ds, odd, mesh=mesh)[0].params,
                       train.fit(arch, ds, odd)[0].params, atol=1e-5)


def test_fit_stream_reads_a_list_once_per_epoch(digits_splits):
    # A list (or a DataLoader) of batches used to train one epoch whatever cfg.epochs said.
    arch = models.make_architecture("gpt_mlp", (8, 8, 1))
    ds = digits_splits.train
    batches = [(ds.x[i:i + 32], ds.y[i:i + 32]) for i in range(0, 96, 32)]
    cfg = dataclasses.replace(CFG, epochs=3)
    listed, hist = train.fit_stream(arch, batches, cfg)
    by_epoch, hist_f = train.fit_stream(arch, lambda epoch: batches, cfg)
    assert int(listed.step) == 9 and len(hist) == 3
    assert_trees_close(listed.params, by_epoch.params, atol=0)
    assert [h["loss"] for h in hist] == [h["loss"] for h in hist_f]
    # A generator feeds one epoch: fine for epochs=1, refused (nothing run) for more.
    one, _ = train.fit_stream(arch, iter(batches), dataclasses.replace(cfg, epochs=1))
    assert int(one.step) == 3
    with pytest.raises(ConfigError, match=r"one-shot iterator \(generator\).*asks for 3.*"
                                          r"function of the epoch"):
        train.fit_stream(arch, (b for b in batches), cfg)
    # A torch DataLoader's tensors failed the dtype check with a bare TypeError; they train
    # as their numpy arrays do.
    from conftest import ForeignTensor

    tensors = [(ForeignTensor(x), ForeignTensor(y)) for x, y in batches]
    from_torch, _ = train.fit_stream(arch, tensors, cfg)
    assert_trees_close(from_torch.params, listed.params, atol=0)
    # A filtered loader's empty tail was a ZeroDivisionError inside the model.
    with pytest.raises(DataError, match="epoch 0, batch 3 has no rows; drop empty batches"):
        train.fit_stream(arch, [*batches, (ds.x[:0], ds.y[:0])], cfg)
    # A stream of single examples (x[i], y[i]) failed with len()'s bare TypeError.
    with pytest.raises(DataError, match=r"batch 0 has a label of shape \(\) \(one example"):
        train.fit_stream(arch, [(ds.x[i], ds.y[i]) for i in range(3)], cfg)


def test_nonfinite_streamed_batch_names_the_step(digits_splits):
    arch = models.make_architecture("gpt_mlp", (8, 8, 1))
    ds = digits_splits.train
    batches = [(ds.x[i:i + 32], ds.y[i:i + 32]) for i in range(0, 128, 32)]
    batches[2] = (np.full_like(batches[2][0], np.nan), batches[2][1])
    with pytest.raises(NonFiniteError, match=r"at step 2 \(epoch 0, batch 2\)"):
        train.fit_stream(arch, batches, CFG)


def test_streamed_drivers_refuse_a_sync_period_below_one(digits_splits):
    # sync_every=0 was a ZeroDivisionError after the first batch (fit_stream).
    from hyperforget_jax.unlearn.gradtau_stream import run_gradtau_stream

    arch = models.make_architecture("gpt_mlp", (8, 8, 1))
    ds = digits_splits.train
    with pytest.raises(ConfigError, match="sync_every must be an integer >= 1"):
        train.fit_stream(arch, [(ds.x[:32], ds.y[:32])], CFG, sync_every=0)
    with pytest.raises(ConfigError, match="sync_every must be an integer >= 1"):
        run_gradtau_stream(arch, arch.init(jax.random.key(0)), lambda e: [], n_forget=4,
                           n_retain=100, tau=2.3, sync_every=0)


@pytest.mark.parametrize("check_vma", [True, False])
def test_train_step_under_shard_map_equals_one_device(mnist_splits, check_vma):
    # With check_vma (shard_map's default) autodiff already sums the replicated parameters'
    # gradient over devices; the step's pmean must not count it n_devices times.
    from jax.sharding import NamedSharding, PartitionSpec as Ps

    batches = _batches(mnist_splits.train, n_steps=3)
    ref, ref_m = _run_single(batches)
    devices = devices_or_skip(4)
    mesh = jax.sharding.Mesh(np.array(devices), ("data",))
    tx = train.make_optimizer(CFG)
    step = jax.jit(jax.shard_map(train.make_train_step(ARCH.apply, tx, axis_name="data"),
                                 mesh=mesh, in_specs=(Ps(), Ps("data")),
                                 out_specs=(Ps(), Ps()), check_vma=check_vma))
    state = jax.device_put(train.init_state(ARCH, tx, jax.random.key(0)),
                           NamedSharding(mesh, Ps()))
    for b in batches:
        state, m = step(state, jax.device_put(b, NamedSharding(mesh, Ps("data"))))
    assert_trees_close(jax.device_get(state.params), jax.device_get(ref.params), atol=1e-5)
    np.testing.assert_allclose(float(m["loss"]), float(ref_m["loss"]), atol=1e-5)


def test_a_recipe_naming_another_model_is_refused(digits_splits):
    # fit("mlp", ds, TrainConfig(arch="cnn")) trained an MLP without a word (the model given
    # is what trains); unlearn's Retrain did the same, recording "mlp".
    from hyperforget_jax.unlearn import unlearn

    ds = digits_splits.train.subset(np.arange(64))
    mlp = models.make_architecture("mlp", (8, 8, 1))
    cnn = train.TrainConfig(arch="cnn", epochs=1, batch_size=32)
    for run, who in ((lambda: train.fit(mlp, ds, cnn), "fit"),
                     (lambda: train.fit_fleet(mlp, ds, [cnn]), "fit_fleet"),
                     (lambda: train.fit_stream(mlp, [(ds.x, ds.y)], cnn), "fit_stream")):
        with pytest.raises(ConfigError, match=f"{who}: TrainConfig.arch is 'cnn' but the model "
                                              "given is 'mlp'"):
            run()
    split = data.resolve_forget(ds, data.ForgetRequest(classes=(3,)))
    with pytest.raises(ConfigError, match="TrainConfig.arch is 'cnn'"):
        unlearn("retrain", mlp, mlp.init(jax.random.key(0)), split, digits_splits.val, cnn)
    # The default names no model (fit("gpt_mlp", ds, TrainConfig()) stays valid), nor does a
    # recipe naming the model given, by name or import path.
    from hyperforget_jax.train_run import check_recipe_model
    user = models.load_model("user_model:TinyNet", (8, 8, 1), 10)
    for arch, cfg in ((models.make_architecture("gpt_mlp", (8, 8, 1)), train.TrainConfig()),
                      (mlp, dataclasses.replace(cnn, arch="mlp")),
                      (user, train.TrainConfig(arch="user_model:TinyNet"))):
        assert check_recipe_model(cfg, arch, "fit") is None
    with pytest.raises(ConfigError, match="'cnn' but the model given is 'user_model:TinyNet'"):
        check_recipe_model(cnn, user, "fit")


def test_a_recipe_naming_the_model_given_by_import_path_is_accepted():
    # fit(TinyNet(), ds, TrainConfig(arch="user_model:TinyNet")), the recipe --arch recorded,
    # was refused as "another model": the adapter of a class or instance is named "TinyNet"
    # and has no source. The same model as an NNX class or instance likewise.
    import user_model
    from flax import nnx
    from hyperforget_jax.train_run import check_recipe_model

    lin, nx = train.TrainConfig(arch="user_model:TinyNet"), train.TrainConfig(
        arch="user_model:TinyNnx")
    for cfg, model in ((lin, user_model.TinyNet()), (lin, user_model.TinyNet(num_classes=10)),
                       (nx, user_model.TinyNnx), (nx, user_model.TinyNnx(rngs=nnx.Rngs(0)))):
        assert check_recipe_model(cfg, models.as_model(model, (8, 8, 1), 10), "fit") is None
    # Another model is still refused, whatever it is called.
    for cfg, model in ((lin, user_model.StochasticNet()), (nx, user_model.TinyNet()),
                       (lin, models.as_model(user_model.TinyNnx, (8, 8, 1), 10))):
        with pytest.raises(ConfigError, match="TrainConfig.arch is 'user_model:Tiny"):
            check_recipe_model(cfg, models.as_model(model, (8, 8, 1), 10), "fit")


def test_entry_points_run_under_strict_dtype_promotion_with_the_same_bits(digits_splits):
    """A caller's ``jax_numpy_dtype_promotion="strict"`` made ``fit`` raise a
    TypePromotionError from inside optax's Adam (``1 - b1**count``), ``unlearn`` too (∇τ's
    own steps, Bad Teacher). Strict mode only refuses, so the training and unlearning entry
    points run under JAX's default and give its bits; the caller's setting is kept."""
    import hyperforget_jax as hf

    fs = data.resolve_forget(digits_splits.train, data.ForgetRequest(classes=(3,)))
    w = jnp.zeros((64, 10), jnp.float32)

    def linear(p, x):
        return x.reshape(len(x), -1) @ p

    def run():
        p = train.fit(linear, digits_splits.train, train.TrainConfig(epochs=1),
                      init_params=w)[0].params
        return p, hf.unlearn("neggrad_plus", linear, p, fs, digits_splits.val).params

    expected = run()
    with jax.numpy_dtype_promotion("strict"):
        got = run()
        assert jax.config.jax_numpy_dtype_promotion == "strict"
    chex.assert_trees_all_equal(got, expected)


def test_per_example_ce_and_train_step_refuse_batches_that_are_not_x_y():
    """A TFDS-style dict batch was unpacked into its two keys (the model applied to the string
    "image": a bare TypeError); (x, y, w) failed with "too many values to unpack"."""
    loss_fn = train.per_example_ce(lambda p, x: x @ p)
    p, x, y = jnp.eye(3), jnp.eye(3), jnp.arange(3)
    assert loss_fn(p, [x, y]).shape == (3,)
    for batch, what in (({"image": x, "label": y}, "a dict with keys"),
                        ((x, y, y), "a tuple of 3")):
        with pytest.raises(ConfigError, match=f"takes batches \\(x, y\\), got {what}"):
            jax.eval_shape(loss_fn, p, batch)
    for batch in (FrozenDict({"image": x, "label": y}), x[:2]):
        with pytest.raises(ConfigError, match="takes batches \\(x, y\\), got a"):
            jax.eval_shape(loss_fn, p, batch)
    tx = optax.sgd(0.1)
    step = train.make_train_step(lambda p, x: x @ p, tx)
    with pytest.raises(ConfigError, match="make_train_step takes batches"):
        jax.eval_shape(step, train.TrainState(jnp.int32(0), p, tx.init(p)), {"image": x, "y": y})


def test_per_example_ce_names_a_label_column_one_hot_or_float_labels():
    """A (B, 1) label column failed inside optax ("indices and arr must have the same number of
    dimensions; 3 vs. 2"), inside a user's jitted ∇τ or baseline step; one-hot and float labels
    as a dtype error. uint8 ids are ids."""
    loss_fn = train.per_example_ce(lambda p, x: x @ p)
    y = np.array([0, 1, 2, 1], np.int32)
    x, p = np.eye(3, dtype=np.float32)[y], np.eye(3, dtype=np.float32)
    # Traced only (as under jit, where the check runs): nothing is compiled.
    assert jax.eval_shape(loss_fn, p, (x, y.astype(np.uint8))).shape == (4,)
    for bad, fix in ((y[:, None], r"y\[:, 0\]"), (np.eye(3, dtype=np.int32)[y], r"y.argmax\(-1\)"),
                     (y.astype(np.float32), r"y.astype\(jnp.int32\)")):
        with pytest.raises(DataError, match=rf"labels of shape .*of shape \(4,\): .*{fix}"):
            jax.eval_shape(loss_fn, p, (x, bad))
    # A model whose output is not logits with a class axis was told to pass labels of shape
    # () (a dict, a (B,) output) or a (4, 1) label column ((B, 1, K)); a tuple died in JAX.
    for out, words in ((lambda p, x: {"logits": x @ p}, "a dict"),
                       (lambda p, x: (x @ p, None), "a tuple"),
                       (lambda p, x: (x @ p)[:, 0], r"shape \(4,\)"),
                       (lambda p, x: (x @ p)[:, None], r"shape \(4, 1, 3\)")):
        with pytest.raises(ArchitectureError, match=rf"per_example_ce: the model returned "
                                                    rf"{words}, not logits with a class axis"):
            jax.eval_shape(train.per_example_ce(out), p, (x, y))
    # Unbatched, as under a user's vmap over single examples: (K,) logits and a scalar label.
    one = jax.vmap(loss_fn, in_axes=(None, 0))(p, (x, y))
    np.testing.assert_allclose(one, loss_fn(p, (x, y)), rtol=1e-6)


def test_narrow_labels_of_many_classes_and_bfloat16_logits_give_the_float32_losses():
    """uint8 labels of 256 classes made K 0 in the range check (int8 of 200 classes made it
    −56): every loss NaN, so a user's own loop behind skip_nonfinite skipped every step and fit
    blamed the learning rate. A bfloat16 model's losses were taken in bfloat16 (most small ones
    exactly 0; ∇τ's τ rounded), unlike the evaluation's (stop 64)."""
    from hyperforget_jax import metrics

    for k, y in ((256, np.array([0, 7, 255], np.uint8)), (200, np.array([1, 100, 127], np.int8))):
        logits = jnp.asarray(np.random.default_rng(0).normal(size=(3, k)), jnp.float32)
        want = metrics.cross_entropy(logits, y.astype(np.int32))
        assert np.isfinite(np.asarray(want)).all()
        for got in (jax.jit(metrics.cross_entropy)(logits, jnp.asarray(y)),
                    jax.jit(train.label_ce)(logits, jnp.asarray(y))):
            np.testing.assert_allclose(got, want, rtol=1e-6)
    logits = jnp.asarray(np.random.default_rng(1).normal(size=(64, 10)) * 8, jnp.bfloat16)
    y = jnp.asarray(np.argmax(np.asarray(logits, np.float32), 1), jnp.int32)
    got = train.label_ce(logits, y)
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(got, metrics.cross_entropy(logits.astype(jnp.float32), y),
                               rtol=1e-3, atol=2e-6)
    # SCRUB's and Bad Teacher's KL too.
    from hyperforget_jax.unlearn import baselines

    student = jnp.asarray(np.random.default_rng(2).normal(size=(64, 10)), jnp.bfloat16)
    kl = baselines.kl_divergence(logits, student, 4.0)
    assert kl.dtype == jnp.float32
    assert float(kl) == float(baselines.kl_divergence(logits.astype(jnp.float32),
                                                      student.astype(jnp.float32), 4.0))


def test_labels_outside_the_classes_are_nan_not_a_class_from_the_end():
    """optax (take_along_axis) read a −1 label as the last class: a data loader's "ignore"
    marker trained and unlearned towards class K−1 in every step built on the library's
    losses, finite and without a word. Now NaN, as a label past the last class was, which the
    steps' guards stop on."""
    from hyperforget_jax import metrics
    from hyperforget_jax.unlearn import baselines

    apply_fn = lambda p, x: x @ p       # noqa: E731
    p = jnp.asarray(np.random.default_rng(0).normal(size=(3, 3)), jnp.float32)
    x = jnp.eye(3, dtype=jnp.float32)
    good, marker = jnp.array([0, 1, 2]), jnp.array([0, 1, -1])
    ce = train.per_example_ce(apply_fn)
    np.testing.assert_array_equal(np.isnan(ce(p, (x, marker))), [False, False, True])
    np.testing.assert_array_equal(ce(p, (x, good))[:2], ce(p, (x, marker))[:2])
    for y in (marker, jnp.array([0, 1, 3]), jnp.array([-4, 1, 2])):
        assert np.isnan(float(train.cross_entropy_loss(p, apply_fn, x, y)[0]))
        assert np.isnan(np.asarray(metrics.cross_entropy(apply_fn(p, x), y))).sum() == 1
    np.testing.assert_allclose(metrics.cross_entropy(apply_fn(p, x), good), ce(p, (x, good)),
                               rtol=1e-6)
    # The guarded step keeps its state (finite False) instead of stepping towards class 2.
    tx = optax.sgd(0.1)
    step = jax.jit(train.make_train_step(apply_fn, tx))
    state = train.TrainState(jnp.int32(0), p, tx.init(p))
    new, m = step(state, (x, marker))
    assert not bool(m["finite"]) and int(new.step) == 0
    np.testing.assert_array_equal(new.params, p)
    # SCRUB's min-step cross-entropy (its own call to optax) and ∇τ's chunked τ.
    scrub = baselines.scrub(apply_fn, 4.0, 0.99, 0.001)
    logits = apply_fn(p, x)
    for y, nan in ((marker, True), (good, False)):
        _, _, m = scrub.update(p, scrub.init(p), (x, logits), (x, y, logits), jnp.bool_(False))
        assert np.isnan(float(m["loss"])) == nan
    from hyperforget_jax.unlearn import gradtau as G
    assert np.isnan(float(G.val_tau_fn(apply_fn, rows=2)(p, x, marker)))
    assert np.isfinite(float(G.val_tau_fn(apply_fn, rows=2)(p, x, good)))


def test_per_example_ce_takes_a_users_batch_class_that_unpacks_as_x_y():
    """``x, y = batch`` took any batch that unpacks into two (a user's loader yielding its own
    class with ``__iter__``); the (x, y) check refused it as "a Batch"."""

    class Batch:
        def __init__(self, *fields):
            self.fields = fields

        def __iter__(self):
            return iter(self.fields)

    loss_fn = train.per_example_ce(lambda p, x: x @ p)
    p, x, y = jnp.eye(3), jnp.eye(3), jnp.arange(3)
    assert loss_fn(p, Batch(x, y)).tolist() == loss_fn(p, (x, y)).tolist()
    with pytest.raises(ConfigError, match="got a Batch;"):
        loss_fn(p, Batch(x, y, y))


def test_fit_stream_of_no_epochs_returns_its_start(digits_splits):
    """epochs=0 (allowed, as for fit): the end-of-run output check read the last batch, which
    no epoch had streamed (UnboundLocalError)."""
    arch = models.make_architecture("mlp", digits_splits.train.x.shape[1:])
    start = arch.init(jax.random.key(0))
    state, history = train.fit_stream(arch, lambda e: [], train.TrainConfig(epochs=0),
                                      init_params=start)
    assert history == [] and np.array_equal(P.flatten(state.params), P.flatten(start))


def test_parameters_on_another_device_run_there_with_the_same_numbers(digits_splits):
    """Parameters committed to a device other than the default one (a model trained on GPU 1,
    ``jax.device_put(p, jax.devices()[1])``) failed fit, fit_stream, ∇τ, Fine-tune and the
    streamed ∇τ with JAX's "incompatible devices": their fresh counters and data were committed
    to the default device (stop 64). They now run on the parameters' device."""
    from hyperforget_jax.unlearn import GradTauConfig, unlearn
    from hyperforget_jax.unlearn.gradtau_stream import run_gradtau_stream

    dev = jax.devices()[1]
    arch = models.as_model(models.make_architecture("gpt_mlp", (8, 8, 1)))
    cfg = train.TrainConfig(arch="gpt_mlp", epochs=1, batch_size=64, seed=0)
    p = train.fit(arch, digits_splits.train, cfg)[0].params
    q = jax.device_put(p, dev)
    fs = data.resolve_forget(digits_splits.train, data.ForgetRequest(classes=(3,)))

    def stream(params):
        def batches(epoch):
            f = data.iterate_batches(fs.forget, 64, 0, epoch)
            r = data.iterate_batches(fs.retain, 64, 0, epoch)
            return list(zip(f, r))[:2]
        return run_gradtau_stream(arch, params, batches, n_forget=len(fs.forget),
                                  n_retain=len(fs.retain), tau=2.3,
                                  config=GradTauConfig(epochs=1, batch_size=64))[0]

    runs = {
        "fit": lambda s: train.fit(arch, digits_splits.train, cfg, init_params=s)[0].params,
        "fit_stream": lambda s: train.fit_stream(
            arch, lambda e: data.iterate_batches(digits_splits.train, 64, 0, e), cfg,
            init_params=s)[0].params,
        "gradtau": lambda s: unlearn("gradtau", arch, s, fs, digits_splits.val,
                                     GradTauConfig(epochs=1)).params,
        "finetune": lambda s: unlearn("finetune", arch, s, fs, digits_splits.val).params,
        "stream": stream,
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, run in runs.items():
            want, got = run(p), run(q)
            for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got)):
                assert b.devices() == {dev}, name
                np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6,
                                           err_msg=name)
    # Resumed from a checkpoint too: the restored counters were on the default device, the
    # parameters on dev (the review's finding).
    import tempfile

    from hyperforget_jax.checkpoint import Checkpointer
    with tempfile.TemporaryDirectory() as d:
        with Checkpointer(d) as ck:
            train.fit(arch, digits_splits.train, cfg, checkpointer=ck, init_params=q)
        with Checkpointer(d) as ck:
            two = dataclasses.replace(cfg, epochs=2)
            got = train.fit(arch, digits_splits.train, two, checkpointer=ck, init_params=q)
        assert all(x.devices() == {dev} for x in jax.tree.leaves(got[0].params))
