"""GAN models and steps: shapes, exact parameter counts, jit == pmap == sharded on 2 and 4
fake CPU devices (D and G steps, 1e-5), and a short resumable training run."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_trees_close, devices_or_skip, host_params

from hyperforget_jax.errors import ArchitectureError, ConfigError
from hyperforget_jax.gan.models import GANArch, make_gan_arch
from hyperforget_jax.gan.train import (GANConfig, bce_with_logits, gan_arch_of, init_gan_state,
                                       latents_for_step, make_d_step, make_g_step,
                                       make_optimizer, sample, train_gan)
from hyperforget_jax.train import data_mesh, put_sharded, shard_batch
from jax.sharding import NamedSharding, PartitionSpec as P


@pytest.mark.parametrize("name,shape,counts", [
    ("mlp", (28, 28, 1), (559_632, 533_505)),
    ("mlp", (32, 32, 3), (1_733_376, 1_704_961)),
    ("dcgan", (28, 28, 1), (350_241, 36_513)),
    ("dcgan", (32, 32, 3), (145_427, 42_865)),
])
def test_shapes_and_param_counts(name, shape, counts):
    arch = make_gan_arch(name, shape)
    assert arch.param_counts() == counts
    g, d = arch.init(jax.random.key(0))
    if shape == (28, 28, 1):  # init is compiled whole: exactly what Flax draws op by op
        for a, b in zip(jax.tree.leaves((g, d)), jax.tree.leaves(arch._init(jax.random.key(0)))):
            assert np.array_equal(np.asarray(a), np.asarray(b))
    z = arch.sample_latents(jax.random.key(1), 3)
    x = jax.jit(arch.generate)(g, z)
    assert x.shape == (3, *shape) and float(x.min()) >= 0 and float(x.max()) <= 1
    logits = jax.jit(arch.discriminate)(d, x)
    assert logits.shape == (3,) and bool(jnp.all(jnp.isfinite(logits)))
    arch.check_params(g, d)
    with pytest.raises(ArchitectureError):
        arch.check_params(d, g)


def test_bad_configs():
    with pytest.raises(ConfigError):
        make_gan_arch("transformer")
    with pytest.raises(ConfigError):
        make_gan_arch("dcgan", (8, 8, 1))
    with pytest.raises(ConfigError):
        GANConfig(lr=-1.0)
    with pytest.raises(ConfigError):
        GANConfig(arch="transformer")
    for bad in (0.0, -1e-3, float("nan"), float("inf"), True):
        with pytest.raises(ConfigError, match="g_lr"):
            GANConfig(g_lr=bad)


# One iteration (a D step, then a G step) of the mlp pair on 16 digits, single-rate Adam, the
# mixture prior: the reference of the G-rate and the latent-prior tests below (one compiled
# epoch and one run for both).
ONE_ITERATION = dict(arch="mlp", epochs=1, batch_size=16, lr=1e-3, seed=5)


@pytest.fixture(scope="module")
def one_iteration(digits_splits):
    train = digits_splits.train.subset(np.arange(16))
    return train, train_gan(train, GANConfig(**ONE_ITERATION, g_lr=None))


def test_g_lr_sets_the_generators_learning_rate_only(one_iteration):
    """One iteration (a D step, then a G step): ``g_lr`` = ``lr`` is the single-rate recipe
    bit for bit; another ``g_lr`` leaves D's step alone (it runs first, against G₀) and changes
    G's, exactly as a G Adam at that rate would."""
    train, (one, _, arch) = one_iteration
    base = ONE_ITERATION
    same, _, _ = train_gan(train, GANConfig(**base, g_lr=1e-3))
    fast, _, _ = train_gan(train, GANConfig(**base, g_lr=4e-3))
    for a, b in ((one.g_params, same.g_params), (one.d_params, same.d_params)):
        assert all(np.array_equal(u, v) for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
    assert_trees_close(one.d_params, fast.d_params, atol=0)
    # G's update at 4e-3 is Adam's first step: 4× the update at 1e-3, from the same G₀.
    g0 = init_gan_state(arch, make_optimizer(1e-3), jax.random.key(5)).g_params
    for u0, u1, u4 in zip(*map(jax.tree.leaves, (g0, one.g_params, fast.g_params))):
        np.testing.assert_allclose(u4 - u0, 4 * (u1 - u0), rtol=1e-3, atol=1e-7)
    assert any(not np.allclose(u, v) for u, v in zip(jax.tree.leaves(one.g_params),
                                                    jax.tree.leaves(fast.g_params)))


def test_mixture_prior_draws_around_fixed_means_and_travels_with_the_arch(one_iteration):
    """``latent_prior="mixture"`` (the recipe's default): codes lie around K means fixed for
    every GAN (σ from their mean), every component is drawn, the same key gives the same codes,
    jitted or not; the prior, K and σ are part of the architecture (its JSON, its programs) and
    of the training recipe; older JSON without the prior means normal, a mixture without K and
    σ means the 20-component mixture it was drawn from; bad priors, K and σ are refused."""
    from hyperforget_jax.gan.models import (LEGACY_MIXTURE, MIXTURE_COMPONENTS, MIXTURE_SEED,
                                            MIXTURE_SIGMA, GANArch, mixture_means,
                                            sample_mixture)

    assert GANConfig().latent_prior == "mixture"
    arch = make_gan_arch("dcgan", (28, 28, 1), latent_prior="mixture")
    # The first draw of the means from inside a trace (as in a fresh `gan train`) works, and
    # jitted sampling gives the same codes as eager sampling (to rounding: XLA fuses μ + σ·ε).
    mixture_means.cache_clear()
    z_jit = np.asarray(jax.jit(arch.sample_latents, static_argnums=1)(jax.random.key(3), 4000))
    z = np.asarray(arch.sample_latents(jax.random.key(3), 4000))
    np.testing.assert_allclose(z, z_jit, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(z, np.asarray(arch.sample_latents(jax.random.key(3), 4000)))

    def nearest_means(z, k):
        means = np.asarray(jax.random.normal(jax.random.key(MIXTURE_SEED), (k, z.shape[1])))
        return means, ((z[:, None, :] - means[None]) ** 2).sum(-1).argmin(1)

    means, k = nearest_means(z, MIXTURE_COMPONENTS)
    assert np.bincount(k, minlength=MIXTURE_COMPONENTS).min() > 4000 / MIXTURE_COMPONENTS / 2
    resid = z - means[k]
    assert abs(resid.std() - MIXTURE_SIGMA) < 0.05 and abs(resid.mean()) < 0.05
    np.testing.assert_array_equal(z, np.asarray(sample_mixture(jax.random.key(3), 4000, 100)))
    np.testing.assert_array_equal(mixture_means(arch.latent_dim), means)
    # Another K and σ: other codes, around K means with spread σ.
    small = make_gan_arch("dcgan", (28, 28, 1), latent_prior="mixture", mixture_components=5,
                          mixture_sigma=0.5)
    z5 = np.asarray(small.sample_latents(jax.random.key(3), 2000))
    means5, k5 = nearest_means(z5, 5)
    assert np.bincount(k5, minlength=5).min() > 2000 / 5 / 2
    assert abs((z5 - means5[k5]).std() - 0.5) < 0.02 and small != arch
    normal = make_gan_arch("dcgan", (28, 28, 1))
    assert normal.latent_prior == "normal" and normal != arch
    assert abs(float(np.asarray(normal.sample_latents(jax.random.key(3), 4000)).std()) - 1) < 0.02
    # K and σ mean nothing to the normal prior: equal GANs compare equal.
    assert make_gan_arch("dcgan", (28, 28, 1), mixture_components=5, mixture_sigma=3) == normal

    for a in (arch, small, normal):
        assert GANArch.from_json(a.to_json()) == a
    old = {k: v for k, v in arch.to_json().items() if k not in ("latent_prior",
                                                               "mixture_components",
                                                               "mixture_sigma")}
    assert GANArch.from_json(old) == normal
    legacy = GANArch.from_json({**old, "latent_prior": "mixture"})
    assert (legacy.mixture_components, legacy.mixture_sigma) == LEGACY_MIXTURE == (20, 2.0)
    for bad in (dict(latent_prior="uniform"), dict(latent_prior="mixture", mixture_components=1),
                dict(latent_prior="mixture", mixture_components=2.5),
                dict(latent_prior="mixture", mixture_sigma=0.0),
                dict(latent_prior="mixture", mixture_sigma=float("nan"))):
        with pytest.raises(ConfigError, match="latent prior|mixture_components|mixture_sigma"):
            make_gan_arch("dcgan", (28, 28, 1), **bad)
        with pytest.raises(ConfigError, match="latent prior|mixture_components|mixture_sigma"):
            GANConfig(**bad)

    train, (mixed, _, arch_m) = one_iteration                     # the default prior
    base = dict(ONE_ITERATION, g_lr=None)
    plain, _, arch_n = train_gan(train, GANConfig(**base, latent_prior="normal"))
    fewer, _, arch_f = train_gan(train, GANConfig(**base, mixture_components=5))
    assert (arch_m.latent_prior, arch_n.latent_prior) == ("mixture", "normal")
    assert (arch_m.mixture_components, arch_f.mixture_components) == (MIXTURE_COMPONENTS, 5)
    for other in (plain, fewer):
        assert any(not np.allclose(u, v) for u, v in zip(jax.tree.leaves(mixed.g_params),
                                                        jax.tree.leaves(other.g_params)))


@pytest.mark.parametrize("fields", [dict(width=8), dict(arch="mlp", width=8),
                                    dict(latent_prior="normal", mixture_components=5),
                                    dict(latent_prior="normal", mixture_sigma=9.0)])
def test_train_gan_refuses_a_field_the_built_pair_never_reads(fields):
    # train_gan on 8×8 images (auto: the mlp pair) trained the default pair and returned an
    # arch with width=8; a normal prior dropped the mixture's K and σ. The CLI refused both.
    from hyperforget_jax import data
    from hyperforget_jax.gan.train import train_gan
    images = data.from_arrays(np.zeros((4, 8, 8, 1), np.float32), np.arange(4) % 2)
    (name, _), = ((k, v) for k, v in fields.items() if k != "arch" and k != "latent_prior")
    with pytest.raises(ConfigError, match=f"GANConfig.{name}=.* would be ignored"):
        train_gan(images, GANConfig(epochs=1, **fields))


def test_auto_arch_is_the_dcgan_where_it_fits():
    assert GANConfig().arch == "auto"
    assert make_gan_arch("auto", (28, 28, 1)).name == "dcgan"
    assert make_gan_arch("auto", (32, 32, 3)).name == "dcgan"
    assert make_gan_arch("auto", (8, 8, 1)).name == "mlp"      # sklearn digits


def test_compiled_programs_are_owned_by_the_arch_value():
    """No module-level caches: an architecture's programs live with its value, so a Retrain
    (an equal GANArch) reuses the Original's compiled epoch, and another recipe gets its own."""
    from hyperforget_jax.gan.train import compiled_epoch

    a, b = make_gan_arch("mlp", (8, 8, 1)), make_gan_arch("mlp", (8, 8, 1))
    assert a == b and a is not b
    assert compiled_epoch(a, 1e-3, 0.5, 8) is compiled_epoch(b, 1e-3, 0.5, 8)
    assert compiled_epoch(a, 2e-4, 0.5, 8) is not compiled_epoch(a, 1e-3, 0.5, 8)
    assert compiled_epoch(a, 1e-3, 0.5, 8, 1e-3) is compiled_epoch(a, 1e-3, 0.5, 8)  # None = lr
    assert compiled_epoch(a, 1e-3, 0.5, 8, 2e-3) is not compiled_epoch(a, 1e-3, 0.5, 8)
    other = make_gan_arch("mlp", (8, 8, 1), width=32)
    assert compiled_epoch(other, 1e-3, 0.5, 8) is not compiled_epoch(a, 1e-3, 0.5, 8)
    assert a.param_shapes() is b.param_shapes()


def test_dcgan_epoch_compiles_to_canonical_convolutions():
    """The scanned training epoch of the default GAN on 28×28 images: only canonical
    convolutions (hyperforget_jax.layers), which XLA:CPU runs with its library kernels inside
    the loop (docs/gan.md; benchmarks/README.md §1). Width 16 has the default's layout: only
    D's first layer (one input channel) is not a convolution."""
    import re

    from hyperforget_jax.gan.train import compiled_epoch

    arch = make_gan_arch("dcgan", (28, 28, 1), width=16)
    g, d = jax.tree.map(jnp.asarray, host_params(arch.param_shapes()))
    state = init_gan_state(arch, make_optimizer(), jax.random.key(0), g, d)
    x = jnp.zeros((16, 28, 28, 1))
    idx = jnp.arange(16, dtype=jnp.int32).reshape(2, 8)
    run = compiled_epoch(arch, 1e-3, 0.5, 8)
    compiled = run.lower(state, x, idx, 0).compile()
    if jax.default_backend() == "cpu":   # GPU/TPU keep JAX's own convolutions
        labels = set(re.findall(r"dim_labels=([^,\s]+)", compiled.as_text()))
        assert labels == {"b01f_01io->b01f"}, labels
    state, m = compiled(state, x, idx, 0)
    assert bool(np.all(m["finite"])) and int(state.step) == 2


def _iteration(arch, tx, axis_name=None):
    """One training iteration, a D step then a G step, as ``compiled_epoch`` scans them."""
    d_step, g_step = make_d_step(arch, tx, axis_name), make_g_step(arch, tx, axis_name)

    def one(s, x, zd, zg):
        s, md = d_step(s, x, zd)
        s, mg = g_step(s, zg)
        return s, md["d_loss"], mg["g_loss"]

    return one


def _steps(n_dev, name="mlp", shape=(8, 8, 1), width=64, batch=16):
    arch = make_gan_arch(name, shape, width=width)
    tx = make_optimizer()
    g, d = jax.tree.map(jnp.asarray, host_params(arch.param_shapes()))
    state = init_gan_state(arch, tx, jax.random.key(0), g, d)
    rng = np.random.default_rng(1)
    x = rng.random((batch, *shape), np.float32)
    zd, zg = (rng.standard_normal((batch, arch.latent_dim)).astype(np.float32) for _ in range(2))

    ref = jax.jit(_iteration(arch, tx))(state, x, zd, zg)

    devices = devices_or_skip(n_dev)
    pmapped = jax.pmap(_iteration(arch, tx, "b"), axis_name="b", devices=devices)
    replicated = jax.tree.map(lambda a: np.broadcast_to(np.asarray(a), (n_dev, *np.shape(a))),
                              state)
    ps, pdl, pgl = pmapped(replicated, *(shard_batch(a, n_dev) for a in (x, zd, zg)))
    pm = jax.tree.map(lambda a: np.asarray(a)[0], (ps, pdl, pgl))      # device 0's copy

    mesh = data_mesh(devices)
    repl, dat = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    sharded = jax.jit(_iteration(arch, tx), in_shardings=(repl, dat, dat, dat),
                      out_shardings=(repl, repl, repl))
    sh = sharded(jax.device_put(state, repl), *(put_sharded(a, mesh) for a in (x, zd, zg)))
    return state, ref, pm, sh, (x, zd, zg)


# One case per family (3 compilations each: the D and G steps of one iteration, single-device,
# pmap and sharded); the 32×32×3 shapes are covered above. Width 16: the default DCGAN's
# layout (test_dcgan_epoch_compiles_to_canonical_convolutions).
@pytest.mark.parametrize("n_dev,name,shape,width", [
    (4, "mlp", (8, 8, 1), 64), (2, "dcgan", (28, 28, 1), 16)])
def test_d_and_g_steps_jit_pmap_sharded_agree(n_dev, name, shape, width):
    s0, ref, pm, sh, (x, zd, zg) = _steps(n_dev, name, shape, width,
                                          batch=8 if name == "dcgan" else 16)
    # The losses are the documented ones (make_d_step / make_g_step): D's BCE(D(x), 1) +
    # BCE(D(G(z_d)), 0), then G's non-saturating BCE(D(G(z_g)), 1) against the D that just
    # stepped. Comparing the three modes alone passed a D trained to call fakes real and a G
    # on the saturating −BCE(D(G(z)), 0). Checked on the mlp pair (both run the same steps;
    # the dcgan's eager convolutions cost seconds).
    if name == "mlp":
        arch = make_gan_arch(name, shape, width=width)
        D, G = arch.discriminate, arch.generate
        np.testing.assert_allclose(ref[1], bce_with_logits(D(s0.d_params, x), 1.0)
                                   + bce_with_logits(D(s0.d_params, G(s0.g_params, zd)), 0.0),
                                   rtol=1e-5)
        np.testing.assert_allclose(ref[2], bce_with_logits(
            D(ref[0].d_params, G(s0.g_params, zg)), 1.0), rtol=1e-5)
    for other in (pm, sh):
        assert_trees_close(ref[0], other[0], atol=1e-5)
        np.testing.assert_allclose(ref[1], other[1], atol=1e-5)
        np.testing.assert_allclose(ref[2], other[2], atol=1e-5)
    assert int(ref[0].step) == 1
    # Both players moved.
    for a, b in ((ref[0].g_params, s0.g_params), (ref[0].d_params, s0.d_params)):
        assert any(not np.allclose(u, v) for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_train_resume_and_samples(tmp_path, digits_splits, monkeypatch):
    from hyperforget_jax.checkpoint import Checkpointer

    # The images and recipe (normal prior) of test_gan_unlearn.py's GAN: one compiled epoch
    # for both.
    train = digits_splits.train.subset(np.arange(512))
    cfg = GANConfig(epochs=2, seed=3, latent_prior="normal")
    full, hist, arch = train_gan(train, cfg)
    assert len(hist) == 2 and np.isfinite(hist[-1]["d_loss"])
    with Checkpointer(tmp_path / "ck") as ck:
        train_gan(train, dataclasses.replace(cfg, epochs=1), checkpointer=ck, save_every=1)
    # A resumed run reads its state into shapes: G and D are not initialised for real (their
    # initialiser compiled, ≈ 6 s for the dcgan pair, only to be overwritten).
    concrete, init = [], GANArch.init
    monkeypatch.setattr(GANArch, "init", lambda self, key: (
        concrete.append(not isinstance(key, jax.core.Tracer)), init(self, key))[1])
    with Checkpointer(tmp_path / "ck") as ck:
        resumed, _, _ = train_gan(train, cfg, checkpointer=ck, save_every=1)
        assert ck.latest_step() == 2
    assert not any(concrete)
    assert_trees_close(full.g_params, resumed.g_params, atol=0)
    x = sample(arch, full.g_params, 64, seed=0)
    assert x.shape == (64, 8, 8, 1)


class _G(nn.Module):
    """A user's generator: codes → ``shape`` images in [0, 1]."""

    shape: tuple = (8, 8, 1)

    @nn.compact
    def __call__(self, z):
        return nn.sigmoid(nn.Dense(int(np.prod(self.shape)))(z)).reshape(-1, *self.shape)


class _D(nn.Module):
    """A user's discriminator; ``keep_axis`` returns (B, 1) logits instead of (B,)."""

    keep_axis: bool = False
    hidden: object = 8

    @nn.compact
    def __call__(self, x):
        out = nn.Dense(1)(nn.relu(nn.Dense(8)(x.reshape(len(x), -1))))
        return out if self.keep_axis else out[:, 0]


class _Broken(nn.Module):
    """A discriminator that cannot run on 8×8 images (64 pixels into rows of 7)."""

    @nn.compact
    def __call__(self, x):
        return x.reshape(len(x), 7)[:, 0]


def test_gan_training_and_unlearning_run_under_strict_dtype_promotion_with_the_same_bits():
    """A caller's ``jax_numpy_dtype_promotion="strict"`` made ``train_gan`` and ``unlearn_gan``
    raise a TypePromotionError from inside optax's Adam (``1 - b1**count``); they run under
    JAX's default now, as ``fit`` and ``unlearn`` do, with its bits."""
    from hyperforget_jax.data import Dataset
    from hyperforget_jax.gan.unlearn import UnlearnConfig, unlearn_gan

    x = np.random.default_rng(0).uniform(size=(24, 8, 8, 1)).astype(np.float32)
    cfg = GANConfig(epochs=1, batch_size=8, latent_dim=4, latent_prior="normal")

    def run():
        gan, _, arch = train_gan(Dataset(x, np.zeros(24, np.int32), 10, "noise"), cfg,
                                 generator=_G(), discriminator=_D())
        res = unlearn_gan(arch, gan.g_params, gan.d_params, retain_x=x[4:], forget_x=x[:4],
                          heldout_x=None, cfg=UnlearnConfig(fake_label="hard", max_rounds=2,
                                                            check_every=2, pool_size=8,
                                                            batch_size=4))
        return gan.g_params, res.g_params, res.d_params

    expected = run()
    with jax.numpy_dtype_promotion("strict"):
        got = run()
    assert_trees_close(got, expected, atol=0)


def test_a_users_gan_pair_that_does_not_fit_is_refused_up_front():
    pair = dict(image_shape=(8, 8, 1), latent_dim=4)
    arch = make_gan_arch(generator=_G(), discriminator=_D(), **pair)
    assert not arch.registered and arch.name == "_G/_D"
    assert arch.param_counts() == (4 * 64 + 64, 64 * 8 + 8 + 9)
    assert make_gan_arch(generator=_G(), discriminator=_D(), **pair) == arch   # hashable value
    refusals = [
        (dict(generator=_G((6, 6, 1))), "image_shape=\\(8, 8, 1\\)"),
        (dict(discriminator=_D(keep_axis=True)), "one logit per image"),
        (dict(discriminator=_D(hidden=[8])), "not hashable"),
        (dict(discriminator=lambda x: x), "flax.linen Module"),
        (dict(discriminator=None), "both generator= and discriminator="),
        (dict(name="mlp"), "names a registered GAN pair"),
        (dict(width=32), "width"),
    ]
    for change, message in refusals:
        with pytest.raises(ConfigError, match=message):
            make_gan_arch(**{"generator": _G(), "discriminator": _D(), **pair, **change})
    with pytest.raises(ConfigError, match="does not run on .*TypeError"):
        make_gan_arch(generator=_G(), discriminator=_Broken(), **pair)
    with pytest.raises(ConfigError, match="leave arch at 'auto'"):
        gan_arch_of(GANConfig(arch="mlp"), (8, 8, 1), _G(), _D())
    # The record tells the pair apart but cannot rebuild it: the CLI's reader refuses it.
    record = arch.to_json()
    assert "_G(" in record["generator"]
    with pytest.raises(ArchitectureError, match="user's own pair"):
        GANArch.from_json(record)


class _CentredG(nn.Module):
    """A user's generator with batch statistics (hidden units centred by the batch mean)."""

    @nn.compact
    def __call__(self, z):
        h = nn.Dense(16)(z)
        return nn.sigmoid(nn.Dense(64)(nn.relu(h - h.mean(0)))).reshape(-1, 8, 8, 1)


class _CentredD(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = nn.Dense(16)(x.reshape(len(x), -1))
        return nn.Dense(1)(nn.relu(h - h.mean(0)))[:, 0]


class _BatchNormG(nn.Module):
    @nn.compact
    def __call__(self, z):
        h = nn.BatchNorm(use_running_average=False)(nn.Dense(64)(z))
        return nn.sigmoid(h).reshape(-1, 8, 8, 1)


def test_a_users_batch_statistics_pair_samples_and_scores_the_whole_set():
    """G's images and D's scores ran in chunks with zero-padded codes / images: a user's pair
    whose rows depend on their batch gave the same codes other images for every chunk and
    number of samples (max 0.12 apart) and the same images other scores. They now take the set
    in one call; a pair with BatchNorm (a 'batch_stats' collection, which init dropped) is
    refused naming the fix, not with Flax's ScopeCollectionNotFound."""
    from hyperforget_jax.gan.train import d_scores, generate

    arch = make_gan_arch(generator=_CentredG(), discriminator=_CentredD(),
                         image_shape=(8, 8, 1), latent_dim=4)
    g, d = arch.init(jax.random.key(0))
    z = arch.sample_latents(jax.random.key(1), 40)
    want = np.asarray(jax.jit(arch.generate)(g, z))
    np.testing.assert_allclose(generate(arch, g, z, 16), want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(d_scores(arch, d, want),
                               jax.nn.sigmoid(jax.jit(arch.discriminate)(d, want)),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(generate(arch, g, z[:1]), arch.generate(g, z[:1]), atol=1e-6)
    with pytest.raises(ConfigError, match="generator _BatchNormG has mutable collections "
                                          "\\['batch_stats'\\].*nn.GroupNorm"):
        make_gan_arch(generator=_BatchNormG(), discriminator=_CentredD(),
                      image_shape=(8, 8, 1), latent_dim=4)


def test_a_users_gan_pair_pickles_after_compiling():
    """A user pair's arch owns its compiled programs (built by make_gan_arch's shape check and
    every later step); jitted callables do not pickle, so ``pickle.dumps(arch)`` raised
    AttributeError ("Can't pickle local object ... cache_miss"). The copy is equal, owns no
    programs and builds its own; the registered pairs pickle as before."""
    import pickle
    arch = make_gan_arch(generator=_G(), discriminator=_D(), image_shape=(8, 8, 1), latent_dim=4)
    assert arch._own_programs is not None and len(arch._own_programs)
    copy = pickle.loads(pickle.dumps(arch))
    assert copy == arch and copy._own_programs is None
    assert copy.param_counts() == arch.param_counts()
    reg = make_gan_arch("mlp")
    assert pickle.loads(pickle.dumps(reg)) == reg


@pytest.mark.parametrize("option, value", [("jax_default_prng_impl", "rbg"),
                                           ("jax_threefry_partitionable", False)])
def test_mixture_means_do_not_depend_on_the_process_prng_impl(option, value):
    """The mixture prior's means are part of a trained G: a process that sets
    ``jax_default_prng_impl="rbg"`` (e.g. for TPU speed) draws the same means as the default
    threefry process that trained it (they differed by up to 4.7 before); so does one that
    sets ``jax_threefry_partitionable=False`` (other means before stop 63)."""
    from hyperforget_jax.gan.models import MIXTURE_SEED, mixture_means

    with jax.threefry_partitionable(True):
        want = np.asarray(jax.random.normal(jax.random.key(MIXTURE_SEED, impl="threefry2x32"),
                                            (20, 8), jnp.float32))
    before = getattr(jax.config, option)
    mixture_means.cache_clear()
    try:
        jax.config.update(option, value)
        got = mixture_means(8, 20)
    finally:
        jax.config.update(option, before)
        mixture_means.cache_clear()
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(mixture_means(8, 20), want)


def test_mixture_codes_are_the_same_draws_under_x64():
    """Each code's component was a jax.random.randint of the default dtype: int64 under
    jax_enable_x64, another stream of bits (codes up to 4.8 apart). They are int32 draws
    whatever the setting (stop 63), as the GAN cascade's batch and bank indices are."""
    from hyperforget_jax.gan.models import sample_mixture

    plain = sample_mixture(jax.random.key(0), 64, 8)
    with jax.enable_x64(True):
        wide = sample_mixture(jax.random.key(0), 64, 8)
    assert wide.dtype == jnp.float32
    np.testing.assert_allclose(wide, plain, atol=1e-6)


def test_training_latents_are_drawn_from_the_seed_and_the_step():
    """GAN training's latent batches are a pure function of (seed, step): a resumed run draws
    the uninterrupted run's, and each seed of a sweep its own (a key without the seed gave
    every seed the same latent stream, which no other test saw: the seed still moved the
    initialisation and the batch order)."""
    arch = make_gan_arch("mlp", (8, 8, 1), latent_prior="normal")
    fn = jax.jit(lambda seed, step: jnp.stack(latents_for_step(arch, seed, step, 4)))
    draw = lambda seed, step: np.asarray(fn(seed, jnp.int32(step)))
    np.testing.assert_array_equal(draw(0, 3), draw(0, 3))
    assert not np.allclose(draw(0, 3), draw(1, 3))
    assert not np.allclose(draw(0, 3), draw(0, 4))
    assert not np.allclose(*draw(0, 3))                    # D's and G's batches differ


def test_a_user_pair_s_record_names_its_prior_in_the_reload_advice():
    # A user's pair cannot be rebuilt from its record; the advice gave make_gan_arch's default
    # N(0, I) prior, so a mixture-prior GAN reloaded as told drew codes from another prior.
    class G(nn.Module):
        @nn.compact
        def __call__(self, z):
            return nn.sigmoid(nn.Dense(64)(z)).reshape(z.shape[0], 8, 8, 1)

    class D(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(1)(x.reshape(x.shape[0], -1))[:, 0]

    arch = make_gan_arch(generator=G(), discriminator=D(), image_shape=(8, 8, 1), latent_dim=16,
                         latent_prior="mixture", mixture_components=5, mixture_sigma=2.0)
    with pytest.raises(ArchitectureError, match=r"latent_dim=16, latent_prior='mixture', "
                                                r"mixture_components=5, mixture_sigma=2\.0"):
        GANArch.from_json(arch.to_json())
