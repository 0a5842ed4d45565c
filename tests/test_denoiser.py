"""G.pt denoiser: token layout, zero-initialised output = θ₀, permutation augmentation, and one
training step with identical numbers under jit, pmap and a sharded mesh."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import assert_trees_close
from hyperforget_jax import params as P_
from hyperforget_jax import train
from hyperforget_jax.errors import ConfigError
from hyperforget_jax.hyperforget import denoiser as DN
from hyperforget_jax.hyperforget import diffusion as D
from hyperforget_jax.models import make_architecture

ARCH = make_architecture("gpt_mlp")
SMALL = DN.DenoiserConfig(num_layers=1, width=32, num_heads=2)


def _model(num_classes=10, config=SMALL, arch=ARCH):
    chunks = tuple(P_.chunk_spans(arch.param_shapes(), config.max_chunk))
    return DN.GptDenoiser(chunks, num_scalars=4, num_classes=num_classes, config=config)


@jax.jit
def _prepare(key, start, target, scalars, classes):
    return DN.prepare_batch(key, D.make_schedule(), start, target, scalars, classes,
                            ARCH.param_shapes())


def _batch(key, permute=True, b=8):
    k1, k2, k3, k4 = jax.random.split(key, 4)
    start = jax.random.normal(k1, (b, ARCH.param_count)) * 0.5
    target = start + 0.1 * jax.random.normal(k2, (b, ARCH.param_count))
    scalars = jax.random.uniform(k3, (b, 4)) * 5
    classes = jax.nn.one_hot(jax.random.randint(k4, (b,), 0, 10), 10)
    if permute:
        return _prepare(key, start, target, scalars, classes)
    return DN.prepare_batch(key, D.make_schedule(), start, target, scalars, classes)


def test_token_layout_and_parameter_count():
    assert len(P_.chunk_spans(ARCH.param_shapes())) == 11
    model = _model(config=DN.DenoiserConfig())
    tx = DN.make_hyper_optimizer(DN.HyperTrainConfig())
    # Shapes only (jax.eval_shape): no compilation of the 3.6M-parameter default model.
    state = jax.eval_shape(lambda k: DN.init_hyper_state(model, tx, k, ARCH.param_count),
                           jax.random.key(0))
    # 11 tokens × (1000 → 128 encoder + 128 → 1000 decoder), 5 scalar projections 257 → 128,
    # a 10 → 128 request embedding, 28 positions, 2 pre-LN blocks of width 128 and a final LN.
    n_tok, d, mc = 11, 128, 1000
    block = 2 * 2 * d + 4 * (d * d + d) + (d * 4 * d + 4 * d) + (4 * d * d + d)
    want = (n_tok * (mc * d + d) + n_tok * (d * mc + mc) + 5 * (257 * d + d) + (10 * d + d)
            + 28 * d + 2 * block + 2 * d)
    assert P_.param_count(state.params) == want
    assert DN.frequency_embed(jnp.zeros((2, 3))).shape == (2, 3, 257)
    with pytest.raises(ConfigError):
        DN.DenoiserConfig(width=30, num_heads=4)


def test_untrained_model_returns_theta0_exactly():
    model = _model()
    state = DN.init_hyper_state(model, DN.make_hyper_optimizer(DN.HyperTrainConfig()),
                                jax.random.key(0), ARCH.param_count)
    b = _batch(jax.random.key(1))
    out = jax.jit(model.apply)({"params": state.params}, b["target"], b["start"], b["t"],
                               b["scalars"], b["classes"])
    np.testing.assert_array_equal(np.asarray(out), np.asarray(b["start"]))


def test_permuted_network_computes_the_same_function(mnist_splits):
    params = ARCH.init(jax.random.key(3))
    x = jnp.asarray(mnist_splits.test.x[:64])
    idx = DN.permutation_index(jax.random.key(4), ARCH.param_shapes())
    flat = P_.flatten(params)
    permuted = P_.unflatten(flat[idx], params)
    assert not np.allclose(P_.flatten(permuted), flat)
    np.testing.assert_allclose(ARCH.apply(permuted, x), ARCH.apply(params, x), atol=1e-5)
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
    n_dev = jax.device_count()
    assert n_dev == 4
    # The digits-sized G.pt MLP (64→10→10, 760 values, 8 tokens of ≤ 128): same code path,
    # a fraction of the compile and run time of the MNIST one.
    arch = make_architecture("gpt_mlp", (8, 8, 1), 10)
    model = _model(config=DN.DenoiserConfig(num_layers=1, width=32, num_heads=2,
                                            max_chunk=128), arch=arch)
    cfg = DN.HyperTrainConfig(steps=10)
    tx = DN.make_hyper_optimizer(cfg)
    sched = D.make_schedule()
    state0 = DN.init_hyper_state(model, tx, jax.random.key(0), arch.param_count)
    # Batches built in numpy (what prepare_batch would draw; no eager JAX dispatch). Two
    # steps: the warm-up schedule's lr is 0 at step 0, so step 1 is the first that moves.
    rng, P = np.random.default_rng(0), arch.param_count
    batches = []
    for _ in range(2):
        start = (0.5 * rng.standard_normal((8, P))).astype(np.float32)
        batches.append({"start": start,
                        "target": start + 0.1 * rng.standard_normal((8, P)).astype(np.float32),
                        "scalars": (5 * rng.random((8, 4))).astype(np.float32),
                        "classes": np.eye(10, dtype=np.float32)[rng.integers(0, 10, 8)],
                        "t": rng.integers(0, 1000, 8).astype(np.int32),
                        "noise": rng.standard_normal((8, P)).astype(np.float32)})

    step = jax.jit(DN.make_hyper_train_step(model, sched, tx, cfg.ema_decay))
    s_jit = state0
    for b in batches:
        s_jit, m = step(s_jit, b)
    assert bool(m["finite"]) and int(s_jit.step) == 2

    pstep = jax.pmap(DN.make_hyper_train_step(model, sched, tx, cfg.ema_decay, "batch"),
                     axis_name="batch")
    s_p = train.replicate(state0, n_dev)
    for b in batches:
        s_p, mp = pstep(s_p, train.shard_batch(b, n_dev))
    s_p = train.unreplicate(s_p)

    np.testing.assert_allclose(float(mp["loss"][0]), float(m["loss"]), rtol=1e-5)
    assert_trees_close(s_p.params, s_jit.params, atol=2e-5)
    assert_trees_close(s_p.ema_params, s_jit.ema_params, atol=2e-5)
    assert_trees_close(s_p.opt_state, s_jit.opt_state, atol=2e-5)
    # The step moved the zero-initialised decoders away from zero.
    assert float(jnp.abs(s_jit.params["token_decoder_kernel"]).max()) > 0
