"""hyperforget_jax.microbatch: gradients summed over chunks of examples (CPU only) equal the
whole batch's to float rounding, in the ∇τ objective, its step under jit / pmap / a mesh (vmap:
test_gradtau.py::test_step_vmaps_over_a_fleet), and the runner; "auto" chunks by the size of
the saved activations; accelerators keep whole batches."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax import export

from hyperforget_jax import data, microbatch, models, train
from hyperforget_jax.errors import ConfigError
from hyperforget_jax.unlearn import gradtau as G

from conftest import assert_trees_close, devices_or_skip, toy_model


def _cnn(n=20, seed=0):
    return toy_model(n, seed, "cnn")


# The toy cnn's per-example cross-entropy, and the programs several tests (and
# parametrisations) run, jitted once here with the batches, τ and the hint as arguments: each is
# traced and compiled once per chunk size, not once per test.
_CE = train.per_example_ce(models.make_architecture("cnn", (8, 8, 1)).apply)


@functools.partial(jax.jit, static_argnames="chunk")
def _mean_value_and_grad(params, batch, chunk):
    return microbatch.mean_value_and_grad(_CE, params, batch, chunk)


@functools.partial(jax.jit, static_argnames="chunk")
def _objective(params, fb, rb, tau, hint, chunk):
    """The ∇τ objective at α = 0.3 (``hint`` None: no ascent hint)."""
    return G.gradtau_objective(_CE, params, fb, rb, tau, 0.3, chunk=chunk, ascent_hint=hint)


def _rel(a, b):
    a, b = np.concatenate([np.ravel(x) for x in jax.tree.leaves(a)]), \
        np.concatenate([np.ravel(x) for x in jax.tree.leaves(b)])
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


# 6 leaves a remainder chunk (CI time: 16, one whole chunk and a remainder, ran the same code)
@pytest.mark.parametrize("chunk", [4, 6])
def test_chunked_gradient_equals_the_whole_batch(chunk):
    arch, params, batch = _cnn()
    b = batch()
    want_l, want_g = _mean_value_and_grad(params, b, chunk=None)
    got_l, got_g = _mean_value_and_grad(params, b, chunk=chunk)
    np.testing.assert_allclose(got_l, want_l, rtol=1e-6)
    assert _rel(got_g, want_g) < 1e-5
    chex.assert_trees_all_equal_shapes_and_dtypes(got_g, params)


def test_bf16_loss_in_chunks_is_summed_in_float32():
    """A bfloat16 loss (bf16 compute, float32 parameters) summed chunk by chunk in bfloat16 was
    1.8% off the whole batch's mean at chunks of 8 of 512; summed in float32 it is the same."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(512, 16)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(16, 10)), jnp.float32)
    # A user's own per-example loss in bfloat16 (the library's per_example_ce takes it in
    # float32 since stop 64).
    loss_fn = lambda p, b: optax.softmax_cross_entropy_with_integer_labels(  # noqa: E731
        b[0].astype(jnp.bfloat16) @ p.astype(jnp.bfloat16), b[1])
    batch = (x, jnp.asarray(rng.integers(0, 10, 512)))
    # Jitted, as in the library's steps (CI time: op by op, the chunk loop and the ops around
    # it were each compiled and dispatched alone, ≈ 4x the time); a bfloat16 sum still
    # rounds at every chunk there (seen: 6.3125 against 6.34375).
    mean_vg = jax.jit(lambda w, b, c: microbatch.chunked_mean_value_and_grad(loss_fn, w, b, c),
                      static_argnums=2)
    whole, _ = mean_vg(w, batch, None)
    got, g = mean_vg(w, batch, 8)
    assert got.dtype == whole.dtype == jnp.bfloat16 and g.dtype == jnp.float32
    assert float(got) == float(whole)


def test_bf16_gradients_in_chunks_are_summed_in_float32():
    """bfloat16 parameters' gradients summed chunk by chunk in bfloat16 were ≈ 6x further from
    the exact gradient (float32 at the same parameter values) than the whole batch's, at
    chunks of 8 of 512; summed in float32 and rounded once they are as close."""
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(512, 16)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(16, 10)), jnp.bfloat16)
    loss_fn = train.per_example_ce(lambda p, x: x.astype(p.dtype) @ p)
    batch = (x, jnp.asarray(rng.integers(0, 10, 512)))
    mean_vg = jax.jit(lambda w, b, c: microbatch.chunked_mean_value_and_grad(loss_fn, w, b, c),
                      static_argnums=2)
    exact = mean_vg(w.astype(jnp.float32), batch, None)[1]
    whole, chunked = mean_vg(w, batch, None)[1], mean_vg(w, batch, 8)[1]
    assert whole.dtype == chunked.dtype == jnp.bfloat16
    err = lambda g: _rel(np.asarray(g, np.float32), exact)
    assert err(chunked) < 1.5 * err(whole)


def test_chunked_mean_value_and_grad_takes_any_chunk_size():
    """A chunk larger than the batch was an IndexError, 0 a ZeroDivisionError, -1 a reshape
    TypeError: a chunk of at least the batch is the whole batch (as resolve_chunk has it),
    and one below 1 is refused."""
    rng = np.random.default_rng(2)
    w = jnp.asarray(rng.normal(size=(16, 10)), jnp.float32)
    batch = (jnp.asarray(rng.normal(size=(4, 16)), jnp.float32),
             jnp.asarray(rng.integers(0, 10, 4)))
    loss_fn = train.per_example_ce(lambda p, x: x @ p)
    whole = microbatch.chunked_mean_value_and_grad(loss_fn, w, batch, None)
    for c in (4, 5, 100, np.int64(4), np.int32(2)):
        got = microbatch.chunked_mean_value_and_grad(loss_fn, w, batch, c)
        np.testing.assert_allclose(got[0], whole[0], rtol=1e-6)
        np.testing.assert_allclose(got[1], whole[1], rtol=1e-5, atol=1e-7)
    for c in (0, -1, "auto"):
        with pytest.raises(ConfigError, match=f"chunk={c!r}"):
            microbatch.chunked_mean_value_and_grad(loss_fn, w, batch, c)


def test_auto_chunk_follows_the_saved_activations():
    cnn = models.make_architecture("cnn")
    mlp = models.make_architecture("mlp")
    shape = lambda n: (jax.ShapeDtypeStruct((n, 28, 28, 1), jnp.float32),
                       jax.ShapeDtypeStruct((n,), jnp.int32))
    ce = train.per_example_ce
    # Shapes only, as inside the library's traced steps: nothing is initialised or compiled.
    p_cnn, p_mlp = cnn.param_shapes(), mlp.param_shapes()
    per_ex = microbatch.saved_bytes_per_example(ce(cnn.apply), p_cnn, shape(4))
    # The cnn keeps its 28×28×32 activations (100 KB per example each) for the backward.
    assert 150_000 < per_ex < 600_000
    c = microbatch.auto_chunk(ce(cnn.apply), p_cnn, shape(256))
    assert c is not None and c & (c - 1) == 0                       # a power of two
    assert c * per_ex <= microbatch.AUTO_BUDGET_BYTES < 2 * c * per_ex
    assert microbatch.auto_chunk(ce(cnn.apply), p_cnn, shape(256), budget=1) == \
        microbatch.MIN_AUTO_CHUNK
    assert microbatch.auto_chunk(ce(cnn.apply), p_cnn, shape(8)) is None    # too small
    assert microbatch.auto_chunk(ce(mlp.apply), p_mlp, shape(256)) is None  # fits
    # Leaves without a shared batch axis: never chunked by "auto".
    odd = (shape(256)[0], jax.ShapeDtypeStruct((3,), jnp.int32))
    assert microbatch.auto_chunk(lambda p, b: ce(cnn.apply)(p, (b[0], b[0][:, 0, 0, 0])),
                                 p_cnn, odd) is None


@pytest.mark.parametrize("chunk, match", [("fast", "None, 'auto'"), (0, "positive"),
                                          (-2, "positive"), (True, "positive"),
                                          (2.5, "positive")])
def test_bad_chunk_is_a_config_error(chunk, match):
    arch, params, batch = _cnn()
    with pytest.raises(ConfigError, match=match):
        microbatch.mean_value_and_grad(train.per_example_ce(arch.apply), params, batch(), chunk)
    with pytest.raises(ConfigError, match=match):
        G.nabla_tau(train.per_example_ce(arch.apply), 0.1, tau=1.0, chunk=chunk).update(
            params, G.GradTauState(jnp.int32(0), jnp.float32(1.0)), batch(), batch())


def test_int_chunk_needs_a_batch_axis():
    arch, params, batch = _cnn()
    x, y = batch()
    loss_fn = lambda p, b: train.per_example_ce(arch.apply)(p, (b[0], b[1][: len(b[0])]))
    with pytest.raises(ConfigError, match="batch axis first"):
        microbatch.mean_value_and_grad(loss_fn, params, (x, jnp.concatenate([y, y])), 4)


@pytest.mark.parametrize("tau", [1e6, 0.0], ids=["ascent-on", "ascent-off"])
def test_objective_in_chunks_equals_whole_batches(tau):
    arch, params, batch = _cnn()
    fb, rb = batch(), batch()
    # τ is traced (as in the runner): both parametrisations run the same two programs.
    (l0, g0, a0), (l1, g1, a1) = (_objective(params, fb, rb, tau, None, chunk=c)
                                  for c in (None, 6))
    np.testing.assert_allclose(l1, l0, rtol=1e-6)
    assert _rel(g1, g0) < 1e-5
    assert bool(a1["ascent"]) == bool(a0["ascent"]) == (tau > 1)
    np.testing.assert_allclose(a1["forget_loss"], a0["forget_loss"], rtol=1e-6)


@pytest.mark.parametrize("hint", [True, False])
@pytest.mark.parametrize("tau", [1e6, 0.0], ids=["ascent-on", "ascent-off"])
def test_ascent_hint_changes_nothing_but_time(tau, hint):
    """Right or wrong, the hint gives the exact objective to float rounding."""
    arch, params, batch = _cnn()
    fb, rb = batch(), batch()
    # τ and the hint are traced: the whole-batch program is test_objective_in_chunks_...'s, and
    # every parametrisation runs the same chunked one.
    (l0, g0, a0) = _objective(params, fb, rb, tau, None, chunk=None)
    (l1, g1, a1) = _objective(params, fb, rb, tau, hint, chunk=8)
    np.testing.assert_allclose(l1, l0, rtol=1e-6)
    assert _rel(g1, g0) < 1e-5
    assert bool(a1["ascent"]) == bool(a0["ascent"]) == (tau > 1)


def test_accelerators_keep_whole_batches():
    """Lowered for GPU / TPU, the objective has no loop over chunks; for CPU it has one."""
    arch, params, batch = _cnn(n=16)
    loss_fn = train.per_example_ce(arch.apply)
    fb, rb = batch(), batch()
    f = jax.jit(lambda p: G.gradtau_objective(loss_fn, p, fb, rb, 2.0, 0.3, chunk=4)[1])
    loops = {plat: export.export(f, platforms=(plat,))(params).mlir_module().count(
        "stablehlo.while") for plat in ("cpu", "cuda", "tpu")}
    assert loops["cpu"] >= 2 and loops["cuda"] == loops["tpu"] == 0, loops


class ChunkedCompiledEqualityTest(chex.TestCase):

    def test_jit_pmap_sharded_in_chunks_equal_whole_batches(self):
        n_dev = 2
        arch, params, batch = _cnn(n=16)
        tx = G.make_gradtau_optimizer(10)
        batches = [(batch(), batch(), 1e6 if i % 2 else 0.0, 0.4 - 0.05 * i) for i in range(4)]
        devices = devices_or_skip(n_dev)
        fresh = lambda: train.init_state(arch, tx, None, jax.tree.map(jnp.array, params))

        def run_jit(chunk):
            s, step = fresh(), train.jit_step(G.make_gradtau_step(arch.apply, tx, chunk=chunk))
            for fb, rb, tau, a in batches:
                s, _ = step(s, fb, rb, tau, a)
            return s.params

        want = run_jit(None)
        assert_trees_close(run_jit(6), want, atol=1e-5)          # 6 of 16: a remainder chunk

        s_p = train.replicate(fresh(), n_dev, axis_name="batch")
        step_p = G.pmap_gradtau_step(G.make_gradtau_step(arch.apply, tx, "batch", chunk=4),
                                     "batch", devices)
        for fb, rb, tau, a in batches:
            s_p, _ = step_p(s_p, train.shard_batch(fb, n_dev), train.shard_batch(rb, n_dev),
                            tau, a)
        assert_trees_close(train.unreplicate(s_p).params, want, atol=1e-5)

        mesh = train.data_mesh(devices)
        s_s = train.put_sharded(fresh(), mesh, jax.sharding.PartitionSpec())
        step_s = G.sharded_gradtau_step(G.make_gradtau_step(arch.apply, tx, chunk=4), mesh)
        for fb, rb, tau, a in batches:
            s_s, _ = step_s(s_s, train.put_sharded(fb, mesh), train.put_sharded(rb, mesh),
                            tau, a)
        assert_trees_close(s_s.params, want, atol=1e-5)


def test_runner_in_chunks_equals_whole_batches(digits_splits, monkeypatch):
    """``unlearn("gradtau")`` on the cnn: with a budget that makes "auto" chunk its batches of
    64 (into 8s) the parameters, losses and ascent steps equal whole batches' to float
    rounding, for class removal, whose run takes both branches (ascent on at its first step,
    off at its second), and Fine-tune (descent only) on a random request. On 8×8 digits, whose
    batches the default budget leaves whole as it does MNIST's: the 54 images of class 3 are
    one forget batch with a remainder chunk (6 × 8 + 6). (CI time: ∇τ on a random request ran
    the same chunked objective, both branches, without a remainder chunk: dropped.)"""
    from hyperforget_jax.unlearn import unlearn

    train_ds = digits_splits.train.subset(np.arange(500))
    arch0 = models.make_architecture("cnn", train_ds.x.shape[1:])
    state, _ = train.fit(arch0, train_ds, train.TrainConfig(arch="cnn", epochs=3, batch_size=64))
    runs = (("gradtau", data.ForgetRequest(classes=(3,)), G.GradTauConfig(epochs=2,
                                                                            batch_size=64)),
            ("finetune", data.ForgetRequest(fraction=0.2), G.GradTauConfig(epochs=1,
                                                                             batch_size=64)))
    default = microbatch.AUTO_BUDGET_BYTES
    out = {}
    for budget in (default, 1):
        monkeypatch.setattr(microbatch, "AUTO_BUDGET_BYTES", budget)
        monkeypatch.setattr(models, "_REGISTERED_PROGRAMS", {})   # compiled afresh
        arch = models.make_architecture("cnn", train_ds.x.shape[1:])
        for method, req, cfg in runs:
            split = data.resolve_forget(train_ds, req)
            out[budget, method] = unlearn(method, arch, state.params, split, digits_splits.val,
                                          cfg, seed=0)
    for method, *_ in runs:
        (want, iw), (got, ig) = out[default, method], out[1, method]
        assert_trees_close(got, want, atol=1e-4)
        np.testing.assert_allclose(ig["retain_loss"], iw["retain_loss"], rtol=1e-4)
    assert out[1, "gradtau"][1]["ascent_steps"] == out[default, "gradtau"][1]["ascent_steps"]
    assert out[1, "gradtau"][1]["ascent_steps"] == [1, 0]       # both branches ran
