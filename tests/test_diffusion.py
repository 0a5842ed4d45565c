"""Diffusion math: analytic forward process, DDIM ↔ DDPM posterior, and a tiny model that learns
a 1-D Gaussian mixture."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from hyperforget_jax.errors import ConfigError
from hyperforget_jax.hyperforget import diffusion as D


def test_schedule_is_linear_and_monotone():
    s = D.make_schedule()
    assert s.num_steps == 1000
    np.testing.assert_allclose(np.asarray(s.betas)[[0, -1]], [1e-4, 0.02], rtol=1e-6)
    assert np.all(np.diff(np.asarray(s.alpha_bars)) < 0)
    np.testing.assert_allclose(s.alpha_bars, np.cumprod(1 - np.linspace(1e-4, 0.02, 1000)),
                               rtol=1e-5)
    with pytest.raises(ConfigError):
        D.make_schedule(0)
    with pytest.raises(ConfigError):
        D.ddim_timesteps(1000, 0)


def test_one_ddim_step_denoises_from_the_last_step():
    """One DDIM step ran at t = 0 on pure noise (``linspace(0, T−1, 1)`` is [0]): the
    denoiser was told the noise was already clean. It runs at T−1, and the sample is the
    x̂₀ predicted there; more steps are unchanged."""
    assert D.ddim_timesteps(1000, 1).tolist() == [999]
    assert D.ddim_timesteps(1000, 2).tolist() == [999, 0]
    assert D.ddim_timesteps(1000, 5).tolist() == [999, 749, 500, 250, 0]
    s = D.make_schedule()
    # A denoiser that answers with the step it was called at.
    out = D.ddim_sample(s, lambda x, t: jnp.zeros_like(x) + t[:, None], jax.random.key(0),
                        (2, 3), 1)
    np.testing.assert_array_equal(out, 999.0)


@pytest.mark.parametrize("t", [0, 100, 500, 999])
def test_forward_process_has_analytic_mean_and_variance(t):
    s = D.make_schedule()
    x0 = jnp.array([1.5, -0.7, 0.0])
    n = 200_000
    noise = jax.random.normal(jax.random.key(t), (n, 3))
    xt = D.q_sample(s, jnp.broadcast_to(x0, (n, 3)), jnp.full((n,), t), noise)
    ab = float(s.alpha_bars[t])
    se = np.sqrt((1 - ab) / n)
    np.testing.assert_allclose(xt.mean(0), np.sqrt(ab) * x0, atol=5 * se + 1e-6)
    np.testing.assert_allclose(xt.var(0), np.full(3, 1 - ab), rtol=0.02, atol=1e-6)


def test_ddim_eta1_consecutive_steps_is_ddpm_posterior():
    """DDIM with all T steps (t → t−1) and η = 1 has exactly DDPM's posterior mean/variance
    (float64: in float32 1 − ᾱ_t/ᾱ_{t−1} = β_t loses ~3 digits at small t)."""
    with jax.enable_x64(True):
        _check_ddim_vs_ddpm()


def _check_ddim_vs_ddpm():
    s = D.make_schedule(dtype=jnp.float64)
    x0 = jax.random.normal(jax.random.key(0), (7, 5), jnp.float64)
    xt = jax.random.normal(jax.random.key(1), (7, 5), jnp.float64)
    for t in (1, 2, 10, 400, 999):
        tt = jnp.full((7,), t)
        mean_ddpm, var_ddpm = D.q_posterior(s, x0, xt, tt)
        mean_ddim, std_ddim = D.ddim_step(s, xt, x0, tt, tt - 1, eta=1.0)
        np.testing.assert_allclose(mean_ddim, mean_ddpm, rtol=1e-9, atol=1e-10)
        np.testing.assert_allclose(std_ddim ** 2, var_ddpm, rtol=1e-9, atol=1e-14)
    # t = 0 → "x₀": both return the predicted x₀.
    m, sd = D.ddim_step(s, xt, x0, jnp.zeros(7, jnp.int32), -jnp.ones(7, jnp.int32), eta=1.0)
    np.testing.assert_allclose(m, x0, atol=1e-5)
    np.testing.assert_allclose(sd, 0.0, atol=1e-6)


def test_samplers_are_exact_for_a_perfect_denoiser():
    """With an oracle x̂₀ = c, every sampler returns c: deterministic check of the updates."""
    s = D.make_schedule()
    c = jnp.array([[0.3, -1.2]])
    oracle = lambda x, t: jnp.broadcast_to(c, x.shape)
    np.testing.assert_allclose(D.ddpm_sample(s, oracle, jax.random.key(0), (4, 2)),
                               jnp.broadcast_to(c, (4, 2)), atol=1e-6)
    np.testing.assert_allclose(D.ddim_sample(s, oracle, jax.random.key(0), (4, 2), 1000),
                               jnp.broadcast_to(c, (4, 2)), atol=1e-6)


def _mlp_init(key, width=64):
    k1, k2, k3 = jax.random.split(key, 3)
    return {"w1": jax.random.normal(k1, (1 + 16, width)) * 0.3, "b1": jnp.zeros(width),
            "w2": jax.random.normal(k2, (width, width)) * 0.15, "b2": jnp.zeros(width),
            "w3": jax.random.normal(k3, (width, 1)) * 0.01, "b3": jnp.zeros(1)}


def _mlp_apply(p, x, t):
    freqs = 2.0 ** jnp.arange(8)
    tf = (t / 1000.0)[:, None] * freqs
    h = jnp.concatenate([x, jnp.sin(tf), jnp.cos(tf)], -1)
    h = jax.nn.silu(h @ p["w1"] + p["b1"])
    h = jax.nn.silu(h @ p["w2"] + p["b2"])
    return h @ p["w3"] + p["b3"]


def test_tiny_model_learns_a_1d_gaussian_mixture():
    s = D.make_schedule()
    modes, std = np.array([-2.0, 1.5]), 0.15

    def data(key, n):
        k1, k2 = jax.random.split(key)
        comp = jax.random.bernoulli(k1, 0.5, (n,)).astype(jnp.int32)
        return (jnp.asarray(modes)[comp] + std * jax.random.normal(k2, (n,)))[:, None]

    params = _mlp_init(jax.random.key(0))
    tx = optax.adam(optax.cosine_decay_schedule(3e-3, 2500))
    opt = tx.init(params)

    @jax.jit
    def step(params, opt, key):
        kd, kl = jax.random.split(key)
        x0 = data(kd, 256)
        loss, g = jax.value_and_grad(
            lambda p: D.x0_loss(s, lambda x, t: _mlp_apply(p, x, t), x0, kl))(params)
        u, opt = tx.update(g, opt)
        return optax.apply_updates(params, u), opt, loss

    def body(carry, k):
        p, o, loss = step(*carry, k)
        return (p, o), loss

    (params, _), losses = jax.lax.scan(body, (params, opt),
                                       jax.random.split(jax.random.key(1), 2500))
    assert float(losses[-200:].mean()) < float(losses[:200].mean())
    fn = lambda x, t: _mlp_apply(params, x, t)
    for samples in (D.ddim_sample(s, fn, jax.random.key(2), (2000, 1), 50),
                    D.ddpm_sample(s, fn, jax.random.key(3), (2000, 1))):
        x = np.asarray(samples)[:, 0]
        left, right = x[x < 0], x[x >= 0]
        assert 0.4 < len(left) / len(x) < 0.6
        assert abs(np.median(left) - modes[0]) < 0.15
        assert abs(np.median(right) - modes[1]) < 0.15
        # Almost nothing between the modes.
        assert np.mean(np.abs(x - modes[np.argmin(np.abs(x[:, None] - modes), 1)]) > 0.6) < 0.05


def test_ddpm_step_variance_is_gpts_fixed_large():
    """G.pt samples with σ_t² = β_t (main.py: create_diffusion(learn_sigma=False) →
    sigma_small False → ModelVarType.FIXED_LARGE), not the posterior variance β̃_t. With x̂₀ = 0
    for t ≥ 1 (and the identity at t = 0, so the output is x_1) Var(x_1) follows the recursion
    Var_{t−1} = coef2_t² Var_t + σ_t², computed here in float64 numpy from G.pt's formulas."""
    s = D.make_schedule()
    betas = np.linspace(1e-4, 0.02, 1000)
    ab = np.cumprod(1 - betas)
    abp = np.append(1.0, ab[:-1])
    coef2 = (1 - abp) * np.sqrt(1 - betas) / (1 - ab)
    post_var = betas * (1 - abp) / (1 - ab)

    def expected(step_var):
        v = 1.0
        for t in range(999, 0, -1):
            v = coef2[t] ** 2 * v + step_var[t]
        return v

    pred = lambda x, t: jnp.where((t > 0)[:, None], 0.0, x)
    got = float(jnp.var(D.ddpm_sample(s, pred, jax.random.key(0), (2000, 25))))
    np.testing.assert_allclose(got, expected(betas), rtol=0.03)             # G.pt: 1.85e-4
    got_small = float(jnp.var(D.ddpm_sample(s, pred, jax.random.key(0), (2000, 25),
                                            variance="small")))
    np.testing.assert_allclose(got_small, expected(post_var), rtol=0.03)    # β̃_t: 1.00e-4
    with pytest.raises(ConfigError):
        D.ddpm_sample(s, pred, jax.random.key(0), (2, 1), variance="learned")


def test_x0_loss_draws_the_last_step_too():
    """t ~ U{0..T−1} [G.pt]: with T = 2 and a predictor that is wrong (by 1) at t = T − 1 only,
    the loss is the share of t = T − 1 draws, ≈ 1/2 (an upper bound of T − 1 gives 0)."""
    s = D.make_schedule(2)
    pred = lambda x, t: jnp.broadcast_to((t == 1).astype(x.dtype)[:, None], x.shape)
    loss = float(D.x0_loss(s, pred, jnp.zeros((4000, 1)), jax.random.key(0)))
    assert loss == pytest.approx(0.5, abs=0.05)


def test_ddpm_visits_every_step_with_its_own_variance():
    """A 4-step schedule with large β: x̂₀ = 1 for t ≥ 1 and the identity at t = 0, so the output
    is x_1, whose mean and variance follow m_{t−1} = coef1_t + coef2_t m_t and
    Var_{t−1} = coef2_t² Var_t + β_t over t = 3, 2, 1 (float64 numpy, DDPM eq. 7). A sampler
    that skips t = T − 1, feeds the network t − 1 or draws with β_{t−1} is off by ≥ 5 % here
    (the T = 1000 test cannot see steps this small)."""
    s = D.make_schedule(4, 0.1, 0.5)
    betas = np.linspace(0.1, 0.5, 4)
    ab = np.cumprod(1 - betas)
    abp = np.append(1.0, ab[:-1])
    coef1, coef2 = np.sqrt(abp) * betas / (1 - ab), (1 - abp) * np.sqrt(1 - betas) / (1 - ab)
    m, v = 0.0, 1.0
    for t in (3, 2, 1):
        m, v = coef1[t] + coef2[t] * m, coef2[t] ** 2 * v + betas[t]
    pred = lambda x, t: jnp.where((t > 0)[:, None], 1.0, x)
    x = np.asarray(D.ddpm_sample(s, pred, jax.random.key(0), (4000, 25)))
    np.testing.assert_allclose(x.mean(), m, rtol=0.01)
    np.testing.assert_allclose(x.var(), v, rtol=0.03)


def test_training_timesteps_are_the_same_draws_under_x64():
    """The training objective drew its timesteps with jax.random.randint's default dtype: int64
    under jax_enable_x64, another stream of bits (a hypernetwork trained under x64 saw other
    timesteps). They are int32 draws whatever the setting (stop 63)."""
    s = D.make_schedule(100)
    x0 = jnp.ones((64, 3), jnp.float32)
    seen = lambda x_t, t: jnp.broadcast_to((t / 100.0).astype(x_t.dtype)[:, None], x_t.shape)
    plain = D.x0_loss(s, seen, x0, jax.random.key(1))
    with jax.enable_x64(True):
        wide = D.x0_loss(s, seen, x0, jax.random.key(1))
    np.testing.assert_allclose(float(wide), float(plain), rtol=1e-6)


def test_samplers_keep_the_schedules_dtype_under_x64():
    """Under jax_enable_x64 the samplers drew float64 noise for a float32 schedule and model:
    the scan's carry went in float64 and came out float32, a TypeError (HyperForget's sample
    crashed so). Now they draw in the schedule's dtype."""
    s = D.make_schedule(10)
    c = jnp.array([[0.3, -1.2]])
    oracle = lambda x, t: jnp.broadcast_to(c, x.shape)          # float32, as the denoiser
    both = lambda k: (D.ddim_sample(s, oracle, k, (4, 2), 3), D.ddpm_sample(s, oracle, k, (4, 2)))
    with jax.enable_x64(True):
        for out in jax.jit(both)(jax.random.key(0)):             # one compilation for both
            assert out.dtype == jnp.float32
            np.testing.assert_allclose(out, jnp.broadcast_to(c, (4, 2)), atol=1e-6)
