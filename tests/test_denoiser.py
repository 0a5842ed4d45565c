"""G.pt denoiser: token layout, zero-initialised output = no change, the guidance dropout,
permutation augmentation, and one training step with identical numbers under jit and pmap."""

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
HEAD = [jax.ShapeDtypeStruct((10,), jnp.float32), jax.ShapeDtypeStruct((10, 10), jnp.float32)]


def _model(num_classes=10, config=SMALL, arch=ARCH, change=HEAD):
    mc = config.max_chunk
    return DN.GptDenoiser(tuple(P_.chunk_spans(arch.param_shapes(), mc)),
                          tuple(P_.chunk_spans(change, mc)), num_scalars=4,
                          target_scalars=(1, 3), num_classes=num_classes, config=config)


@jax.jit
def _prepare(key, start, target, scalars, classes):
    return DN.prepare_batch(key, D.make_schedule(), start, target, scalars, classes,
                            ARCH.param_shapes(), p_uncond=0.5)


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
    # Shapes only (jax.eval_shape): no compilation of the default model.
    state = jax.eval_shape(lambda k: DN.init_hyper_state(model, tx, k), jax.random.key(0))
    # 11 θ₀ tokens and 2 change tokens (the output layer's bias and kernel), each with a
    # 1000 → 128 encoder; 2 change decoders 128 → 1000; 5 scalar projections 65 → 128 and 2
    # "no target" tokens; a 10 → 128 request embedding; 2 + 11 + 5 + 1 = 19 positions; 2
    # pre-LN blocks of width 128 and a final LN.
    n0, n1, d, mc, e = 11, 2, 128, 1000, 65
    block = 2 * 2 * d + 4 * (d * d + d) + (d * 4 * d + 4 * d) + (4 * d * d + d)
    want = ((n0 + n1) * (mc * d + d) + n1 * (d * mc + mc) + 5 * (e * d + d) + 2 * d
            + (10 * d + d) + 19 * d + 2 * block + 2 * d)
    assert P_.param_count(state.params) == want
    assert DN.frequency_embed(jnp.zeros((2, 3))).shape == (2, 3, 65)
    with pytest.raises(ConfigError):
        DN.DenoiserConfig(width=30, num_heads=4)


def test_untrained_model_predicts_no_change_and_drop_only_touches_targets():
    model = _model()
    params = DN.init_params(model, jax.random.key(0))
    b = _batch(jax.random.key(1))
    x = b["target"][:, -110:]
    apply = jax.jit(model.apply)
    out = apply({"params": params}, x, b["start"], b["t"], b["scalars"], b["classes"])
    np.testing.assert_array_equal(np.asarray(out), np.zeros_like(x))
    # With non-zero decoders: dropping the targets changes the prediction, and a batch whose
    # drop flags are all False equals the plain conditional call.
    params = {**params, "change_decoder_kernel": jnp.ones_like(params["change_decoder_kernel"])}
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
    assert 0 < int(np.sum(b["drop"])) < 8          # p_uncond = 0.5 in _prepare


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
    head = [jax.ShapeDtypeStruct((10,), jnp.float32),
            jax.ShapeDtypeStruct((10, 10), jnp.float32)]
    model = _model(config=DN.DenoiserConfig(num_layers=1, width=32, num_heads=2,
                                            max_chunk=128), arch=arch, change=head)
    cfg = DN.HyperTrainConfig(steps=10)
    tx = DN.make_hyper_optimizer(cfg)
    sched = D.make_schedule()
    state0 = DN.init_hyper_state(model, tx, jax.random.key(0))
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
    assert float(jnp.abs(s_jit.params["change_decoder_kernel"]).max()) > 0
