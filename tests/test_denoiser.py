"""G.pt denoiser: token layout, zero-initialised output = no change, the guidance dropout,
permutation augmentation, and one training step with identical numbers under jit and pmap."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from conftest import assert_trees_close, devices_or_skip, host_params
from hyperforget_jax import params as P_
from hyperforget_jax import train, xla
from hyperforget_jax.errors import ConfigError
from hyperforget_jax.hyperforget import denoiser as DN
from hyperforget_jax.hyperforget import diffusion as D
from hyperforget_jax.models import make_architecture

ARCH = make_architecture("gpt_mlp")
SPANS = tuple(P_.param_spans(ARCH.param_shapes()))
# The digits-sized G.pt MLP (64→10→10: 760 values, the same 10 hidden units and 110-value
# output layer as the MNIST one): the same code paths, a fraction of the run time.
DIGITS = make_architecture("gpt_mlp", (8, 8, 1), 10)
SMALL = DN.DenoiserConfig(num_layers=1, width=32, num_heads=2, tokens="units")


def _model(num_classes=10, config=SMALL, arch=DIGITS):
    return DN.GptDenoiser(tuple(P_.param_spans(arch.param_shapes())), (2, 3), config.tokens,
                          num_scalars=4, target_scalars=(1, 3), num_classes=num_classes,
                          config=config)


@functools.partial(jax.jit, static_argnames=("permute", "b"))
def _batch(key, permute=True, b=8):
    """A random training batch from ``DN.prepare_batch``: permuted, with the guidance dropout at
    p_uncond = 0.5, or neither. One compiled program per kind (op by op, its random draws
    compile one small program each)."""
    k1, k2, k3, k4 = jax.random.split(key, 4)
    start = jax.random.normal(k1, (b, DIGITS.param_count)) * 0.5
    target = start + 0.1 * jax.random.normal(k2, (b, DIGITS.param_count))
    scalars = jax.random.uniform(k3, (b, 4)) * 5
    classes = jax.nn.one_hot(jax.random.randint(k4, (b,), 0, 10), 10)
    if permute:
        return DN.prepare_batch(key, D.make_schedule(), start, target, scalars, classes,
                                DIGITS.param_shapes(), p_uncond=0.5)
    return DN.prepare_batch(key, D.make_schedule(), start, target, scalars, classes)


# ``DN.init_params`` under one jit: eagerly, its hundreds of ops cost ~8 s on CPU. The program
# DN.init_hyper_state compiles (hypernetwork training, tests/test_dihyfo.py): one per model.
_init = xla.jit(DN.init_params, static_argnums=0)


def _perturbed(params):
    """Zero-initialised decoders output nothing: random weights everywhere instead. Drawn on
    the host: one jitted draw per leaf costs ~20 s of compilation."""
    rng = np.random.default_rng(2)
    return jax.tree.map(lambda a: np.asarray(a) + (0.05 * rng.standard_normal(a.shape)
                                                   ).astype(np.float32), params)


def test_token_layouts_and_parameter_count():
    units = DN.token_layout(SPANS, [2, 3], "units")
    # 10 hidden-unit tokens (784 incoming weights, bias, 10 outgoing weights; change input:
    # the outgoing weights) and 10 class tokens (the output bias); the output kernel's change
    # is bilinear in unit and class tokens.
    assert [(g.name, g.start.shape, g.change.shape, g.equivariant) for g in units.groups] == [
        ("layer0_units", (10, 795), (10, 10), True), ("classes", (10, 1), (10, 1), False)]
    assert sorted(np.concatenate([g.start.ravel() for g in units.groups])) == list(range(7960))
    assert sorted(np.r_[units.head.ravel(), units.groups[1].change.ravel()]) == list(range(110))
    chunks = DN.token_layout(SPANS, [2, 3], "chunks")             # G.pt: 11 + 2 tokens
    assert [g.start.shape if g.start is not None else g.change.shape
            for g in chunks.groups] == [(11, 1000), (2, 100)] and chunks.head is None
    model = _model(config=DN.DenoiserConfig(tokens="units"), arch=ARCH)
    shapes = jax.eval_shape(lambda k: DN.init_params(model, k), jax.random.key(0))
    d, e = 128, 65
    block = 2 * 2 * d + 4 * (d * d + d) + (d * 4 * d + 4 * d) + (4 * d * d + d)
    want = ((795 * d + d) + (10 * d + d) + d                         # unit tokens
            + 2 * (1 * d + d) + 10 * d + (d + 1) + d                 # class tokens, flag
            + 2 * d * d                                              # bilinear head
            + 5 * (e * d + d) + 2 * d + 5 * d                         # scalars
            + 2 * block + 2 * d)
    assert P_.param_count(shapes) == want
    assert DN.frequency_embed(jnp.zeros((2, 3))).shape == (2, 3, 65)
    with pytest.raises(ConfigError):
        DN.DenoiserConfig(width=30, num_heads=4)
    with pytest.raises(ConfigError, match="unit tokens need an MLP"):
        DN.token_layout(tuple(P_.param_spans(make_architecture("cnn").param_shapes())), [0],
                        "units")


def test_unit_tokens_refuse_an_mlp_not_chained_in_name_order():
    """A Linen MLP that creates its head first: Dense_0 (12 → 5) is called after Dense_1
    (64 → 12). The layout took Dense_1 for the head, its 12 hidden units for the classes."""
    head_first = {"Dense_0": {"kernel": jnp.zeros((12, 5)), "bias": jnp.zeros(5)},
                  "Dense_1": {"kernel": jnp.zeros((64, 12)), "bias": jnp.zeros(12)}}
    with pytest.raises(ConfigError, match="chained in that order"):
        DN.token_layout(tuple(P_.param_spans(head_first)), [0, 1], "units")


def test_unit_tokens_are_permutation_equivariant():
    model = _model()
    params = _perturbed(_init(model, jax.random.key(0)))
    b = _batch(jax.random.key(1), permute=False)
    x = b["target"][:, -110:]
    apply = jax.jit(model.apply)
    out = apply({"params": params}, x, b["start"], b["t"], b["scalars"], b["classes"])
    idx = DN.permutation_index(jax.random.key(7), DIGITS.param_shapes())
    head = DIGITS.param_count - 110              # the output layer: the last 110 values
    cidx = idx[head:] - head                     # the output layer's part of the permutation
    assert not np.array_equal(cidx, np.arange(110))
    perm = apply({"params": params}, x[:, cidx], b["start"][:, idx], b["t"], b["scalars"],
                 b["classes"])
    np.testing.assert_allclose(perm, out[:, cidx], atol=1e-5)


def test_permutation_index_carries_positions_as_integers():
    """The positions were carried in float32, exact only up to 2^24: a network past 16.8M
    parameters got duplicated gather indices (8,193 of 16.8M weights dropped, others copied
    twice). Such a network is too big for a test, so the program is checked: no floating value
    anywhere in it; and the digits index is still a permutation of its positions."""
    shapes = DIGITS.param_shapes()
    jaxpr = jax.make_jaxpr(lambda k: DN.permutation_index(k, shapes))(jax.random.key(7))
    floats = {str(v.aval.dtype) for e in jaxpr.eqns for v in e.outvars
              if jnp.issubdtype(v.aval.dtype, jnp.floating)}
    assert not floats, floats
    idx = DN.permutation_index(jax.random.key(7), shapes)
    assert idx.dtype == jnp.int32
    np.testing.assert_array_equal(np.sort(idx), np.arange(DIGITS.param_count))


def test_untrained_model_predicts_no_change_and_drop_only_touches_targets():
    model = _model()
    params = _init(model, jax.random.key(0))
    b = _batch(jax.random.key(1))
    x = b["target"][:, -110:]
    apply = jax.jit(model.apply)
    out = apply({"params": params}, x, b["start"], b["t"], b["scalars"], b["classes"])
    np.testing.assert_array_equal(np.asarray(out), np.zeros_like(x))
    # With non-zero decoders: dropping the targets changes the prediction, and a batch whose
    # drop flags are all False equals the plain conditional call.
    params = _perturbed(params)
    cond = apply({"params": params}, x, b["start"], b["t"], b["scalars"], b["classes"])
    keep = apply({"params": params}, x, b["start"], b["t"], b["scalars"], b["classes"],
                 jnp.zeros(8, bool))
    drop = apply({"params": params}, x, b["start"], b["t"], b["scalars"], b["classes"],
                 jnp.ones(8, bool))
    np.testing.assert_array_equal(np.asarray(keep), np.asarray(cond))
    assert not np.allclose(drop, cond)
    # The prompt's targets are all a dropped example sees: changing them does nothing.
    other = b["scalars"].at[:, 1].add(3.0).at[:, 3].add(-2.0)
    drop2 = apply({"params": params}, x, b["start"], b["t"], other, b["classes"],
                  jnp.ones(8, bool))
    np.testing.assert_allclose(drop2, drop, atol=1e-6)
    assert 0 < int(np.sum(b["drop"])) < 8          # p_uncond = 0.5 in _batch


def test_permuted_network_computes_the_same_function(digits_splits):
    params = DIGITS.init(jax.random.key(3))
    x = jnp.asarray(digits_splits.test.x[:64])
    idx = DN.permutation_index(jax.random.key(4), DIGITS.param_shapes())
    flat = P_.flatten(params)
    permuted = P_.unflatten(flat[idx], params)
    assert not np.allclose(P_.flatten(permuted), flat)
    np.testing.assert_allclose(DIGITS.apply(permuted, x), DIGITS.apply(params, x), atol=1e-5)
    # The same permutation applied to θ₀ and target: their difference is permuted alike.
    b = _batch(jax.random.key(5))
    b0 = _batch(jax.random.key(5), permute=False)
    np.testing.assert_allclose(np.sort(b["target"] - b["start"], 1),
                               np.sort(b0["target"] - b0["start"], 1), atol=1e-6)
    with pytest.raises(ConfigError):
        DN.mlp_hidden_widths(make_architecture("cnn").param_shapes())


def test_train_step_jit_and_pmap_agree():
    """The same two steps under ``jax.jit`` (one device) and ``jax.pmap`` over 4 devices
    (``axis_name``: loss and gradients pmean-ed) give the same parameters, EMA and Adam
    moments. (The sharded-mesh path, ``train.sharded_step``, runs the plain jit step: it is
    covered by the foundation's train tests; compiling it here too would cost ~20 s.)"""
    n_dev = len(devices_or_skip(4))
    # The digits-sized G.pt MLP in chunks of ≤ 128 (8 start and 2 change tokens).
    arch = DIGITS
    model = _model(config=DN.DenoiserConfig(num_layers=1, width=32, num_heads=2,
                                            max_chunk=128, tokens="chunks"), arch=arch)
    cfg = DN.HyperTrainConfig(steps=10)
    tx = DN.make_hyper_optimizer(cfg)
    sched = D.make_schedule()
    # The state DN.init_hyper_state makes, built on the host (compiling the initialiser of
    # this model costs ~10 s): random weights, LayerNorm scales 1, the decoders zero as
    # init_params leaves them, the EMA a copy, Adam's moments and counts zero (tx.init).
    params = host_params(DN.param_shapes(model), std=0.02, zero=("decoder",))
    state0 = DN.HyperTrainState(
        np.zeros((), np.int32), params, jax.tree.map(np.copy, params),
        jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), jax.eval_shape(tx.init, params)))
    # Batches built in numpy (what prepare_batch would draw; no eager JAX dispatch). Two
    # steps: the warm-up schedule's lr is 0 at step 0, so step 1 is the first that moves.
    rng, P = np.random.default_rng(0), arch.param_count
    batches = []
    for _ in range(2):
        start = (0.5 * rng.standard_normal((8, P))).astype(np.float32)
        batches.append({"start": start,
                        "target": rng.standard_normal((8, 110)).astype(np.float32),
                        "scalars": rng.standard_normal((8, 4)).astype(np.float32),
                        "classes": np.eye(10, dtype=np.float32)[rng.integers(0, 10, 8)],
                        "t": rng.integers(0, 1000, 8).astype(np.int32),
                        "noise": rng.standard_normal((8, 110)).astype(np.float32),
                        "drop": rng.random(8) < 0.5})

    step = jax.jit(DN.make_hyper_train_step(model, sched, tx, cfg.ema_decay))
    s_jit = state0
    for n, b in enumerate(batches):
        ema, s_jit, m = s_jit.ema_params, *step(s_jit, b)
        # The EMA the sampler uses (METHODS.md §2; docs/hyperforget.md: "EMA 0.995 with
        # warm-up"): decay min(ema_decay, (1 + n) / (10 + n)) at step n, towards the new params.
        decay = min(cfg.ema_decay, (1 + n) / (10 + n))
        assert_trees_close(s_jit.ema_params, jax.tree.map(
            lambda e, p: decay * np.asarray(e) + (1 - decay) * np.asarray(p), ema,
            s_jit.params), atol=1e-6)
    assert bool(m["finite"]) and int(s_jit.step) == 2

    pstep = jax.pmap(DN.make_hyper_train_step(model, sched, tx, cfg.ema_decay, "batch"),
                     axis_name="batch")
    # The state replicated on the host (what train.replicate does, without one eager broadcast
    # program per leaf shape) and placed as pmap places its outputs, a mesh over its axis: from
    # single-device inputs the first call compiles a program that the second, fed the first's
    # outputs, compiles again.
    s_p = jax.device_put(jax.tree.map(lambda x: np.broadcast_to(x, (n_dev, *x.shape)), state0),
                         NamedSharding(Mesh(jax.devices()[:n_dev], ("batch",)),
                                       PartitionSpec("batch")))
    for b in batches:
        s_p, mp = pstep(s_p, train.shard_batch(b, n_dev))
    s_p = train.unreplicate(s_p)

    np.testing.assert_allclose(float(mp["loss"][0]), float(m["loss"]), rtol=1e-5)
    assert_trees_close(s_p.params, s_jit.params, atol=2e-5)
    assert_trees_close(s_p.ema_params, s_jit.ema_params, atol=2e-5)
    assert_trees_close(s_p.opt_state, s_jit.opt_state, atol=2e-5)
    # The step moved the zero-initialised decoders away from zero.
    assert float(jnp.abs(s_jit.params["change_decoder_kernel"]).max()) > 0


def test_parameters_are_float32_under_x64_and_rank_promotion_raise():
    """A researcher's global settings: under jax_enable_x64 the denoiser's own parameters (Flax
    initialisers default to float64 there) were float64 beside nn.Dense's float32 ones, and
    jax_numpy_rank_promotion="raise" failed on its (n, d) embeddings added to (B, n, d)."""
    model = _model()
    f64 = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.float64)
    size = sum(int(np.prod(model.spans[i].shape)) for i in model.diffused)
    with jax.enable_x64(True), jax.numpy_rank_promotion("raise"):
        shapes = DN.param_shapes(model)
        out = jax.eval_shape(lambda p, *a: model.apply({"params": p}, *a), shapes, f64(2, size),
                             f64(2, model.spans[-1].stop), jax.ShapeDtypeStruct((2,), jnp.int32),
                             f64(2, 4), f64(2, 10))
    assert {str(leaf.dtype) for leaf in jax.tree.leaves(shapes)} == {"float32"}
    assert out.dtype == jnp.float32


def test_training_batches_are_the_same_draws_under_x64():
    """The guidance-dropout mask was a jax.random.uniform of the default dtype: float64 under
    jax_enable_x64, another stream (a hypernetwork 2.4e-3 apart after 6 steps). Every draw of
    a training batch is the same under x64 (stop 63)."""
    from hyperforget_jax.hyperforget import diffusion

    sched = diffusion.make_schedule(100)
    z = jnp.zeros((64, 5), jnp.float32)
    draw = lambda: DN.prepare_batch(jax.random.key(0), sched, z, z, jnp.zeros((64, 1)),
                                    p_uncond=0.5)
    plain = draw()
    with jax.enable_x64(True):
        wide = draw()
    for k in ("t", "drop", "noise"):
        np.testing.assert_array_equal(np.asarray(wide[k]), np.asarray(plain[k]), err_msg=k)
