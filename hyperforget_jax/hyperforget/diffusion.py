"""Gaussian diffusion over vectors, as pure functions (G.pt's recipe; METHODS.md §2).

    sched = make_schedule()                         # T = 1000, linear β 1e-4 → 0.02 [G.pt]
    x_t = q_sample(sched, x0, t, noise)             # forward process
    loss = x0_loss(sched, predict_x0, x0, key)      # the network predicts x₀, MSE on x₀ [G.pt]
    x0 = ddpm_sample(sched, predict_x0, key, shape) # ancestral, T calls, σ_t² = β_t [G.pt]
    x0 = ddim_sample(sched, predict_x0, key, shape, num_steps=20)   # [beyond] few-step DDIM

``predict_x0(x_t, t) -> x̂₀`` is any function (a closure over the hypernetwork, its parameters
and its conditioning); ``t`` is an int32 array of per-example steps in ``[0, T)``. Everything here
jits and vmaps (over keys and conditioning, e.g. many forget requests at once).

Conventions: ``alpha_bars[t] = ∏_{s≤t} (1 − β_s)`` with 0-based t, so ``x_t`` at ``t = 0`` is
already slightly noised and sampling ends by returning the network's x̂₀ at ``t = 0``.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from hyperforget_jax.errors import ConfigError

PredictX0 = Callable[[jax.Array, jax.Array], jax.Array]


class Schedule(NamedTuple):
    """The noise schedule, every array of shape (T,) float32."""

    betas: jax.Array
    alphas: jax.Array
    alpha_bars: jax.Array
    alpha_bars_prev: jax.Array      # ᾱ_{t−1}, with ᾱ_{−1} = 1
    posterior_variance: jax.Array   # β̃_t = β_t (1 − ᾱ_{t−1}) / (1 − ᾱ_t)

    @property
    def num_steps(self) -> int:
        return int(self.betas.shape[0])


def make_schedule(num_steps: int = 1000, beta_start: float = 1e-4,
                  beta_end: float = 0.02, dtype=jnp.float32) -> Schedule:
    """Linear β schedule (G.pt / DDPM: T = 1000, β from 1e-4 to 0.02), computed in float64
    and stored as ``dtype`` (float64 needs ``jax.enable_x64(True)``).

    >>> s = make_schedule()
    >>> round(float(s.alpha_bars[-1]), 6)
    4e-05
    """
    if num_steps < 1 or not 0 < beta_start <= beta_end < 1:
        raise ConfigError(f"need num_steps >= 1 and 0 < beta_start <= beta_end < 1, got "
                          f"{num_steps}, {beta_start}, {beta_end}")
    betas = np.linspace(beta_start, beta_end, num_steps, dtype=np.float64)
    alphas = 1.0 - betas
    abar = np.cumprod(alphas)
    abar_prev = np.concatenate([[1.0], abar[:-1]])
    post_var = betas * (1.0 - abar_prev) / (1.0 - abar)
    f = lambda a: jnp.asarray(a, dtype)
    return Schedule(f(betas), f(alphas), f(abar), f(abar_prev), f(post_var))


def _bcast(v: jax.Array, x: jax.Array) -> jax.Array:
    """Per-example scalars (B,) → broadcastable against x (B, ...)."""
    v = jnp.asarray(v)
    return v.reshape(v.shape + (1,) * (x.ndim - v.ndim))


def q_sample(sched: Schedule, x0: jax.Array, t: jax.Array, noise: jax.Array) -> jax.Array:
    """x_t = √ᾱ_t x₀ + √(1 − ᾱ_t) ε: mean √ᾱ_t x₀, variance (1 − ᾱ_t)."""
    ab = _bcast(sched.alpha_bars[t], x0)
    return jnp.sqrt(ab) * x0 + jnp.sqrt(1.0 - ab) * noise


def q_posterior(sched: Schedule, x0: jax.Array, x_t: jax.Array, t: jax.Array
                ) -> tuple[jax.Array, jax.Array]:
    """Mean and variance of q(x_{t−1} | x_t, x₀) (DDPM eq. 7)."""
    ab, abp = _bcast(sched.alpha_bars[t], x_t), _bcast(sched.alpha_bars_prev[t], x_t)
    beta, alpha = _bcast(sched.betas[t], x_t), _bcast(sched.alphas[t], x_t)
    mean = (jnp.sqrt(abp) * beta / (1.0 - ab)) * x0 + (jnp.sqrt(alpha) * (1.0 - abp) / (1.0 - ab)) * x_t
    return mean, _bcast(sched.posterior_variance[t], x_t) * jnp.ones_like(x_t)


def x0_loss(sched: Schedule, predict_x0: PredictX0, x0: jax.Array, key: jax.Array
            ) -> jax.Array:
    """G.pt's objective: t ~ U{0..T−1}, ε ~ N(0, I), mean ‖predict_x0(x_t, t) − x₀‖² per value.

    ``x0`` is a batch (B, ...); returns a scalar."""
    kt, kn = jax.random.split(key)
    t = jax.random.randint(kt, (x0.shape[0],), 0, sched.num_steps, dtype=jnp.int32)
    return x0_mse(sched, predict_x0, x0, t, jax.random.normal(kn, x0.shape, x0.dtype))


def x0_mse(sched: Schedule, predict_x0: PredictX0, x0: jax.Array, t: jax.Array,
           noise: jax.Array) -> jax.Array:
    """:func:`x0_loss` for given steps ``t`` (B,) and noise ε (the hypernetwork's training
    batches draw both in advance)."""
    pred = predict_x0(q_sample(sched, x0, t, noise), t)
    return jnp.mean((pred - x0) ** 2)


def ddpm_sample(sched: Schedule, predict_x0: PredictX0, key: jax.Array,
                shape: tuple[int, ...], variance: str = "large") -> jax.Array:
    """Ancestral DDPM sampling with the x₀-parameterisation: T network calls under ``lax.scan``.

    Each step draws x_{t−1} = μ̃_t(x̂₀, x_t) + σ_t ε with the posterior mean μ̃_t and
    ``variance``: ``"large"`` σ_t² = β_t [G.pt: ``create_diffusion(learn_sigma=False)`` leaves
    ``sigma_small=False``, i.e. ``ModelVarType.FIXED_LARGE``] or ``"small"`` σ_t² = β̃_t
    (the posterior variance; this module's default before the G.pt audit). No clipping of x̂₀
    [G.pt samples with ``clip_denoised=False``].

    ``shape`` is the batch shape (B, ...); returns x̂₀ predicted at t = 0."""
    if variance not in ("large", "small"):
        raise ConfigError(f"DDPM variance must be 'large' (β_t, G.pt) or 'small' (β̃_t), "
                          f"got {variance!r}")
    step_var = sched.betas if variance == "large" else sched.posterior_variance
    k0, key = jax.random.split(key)
    x = jax.random.normal(k0, shape, step_var.dtype)
    b = shape[0]

    def body(x, inp):
        t, k = inp
        tt = jnp.full((b,), t, jnp.int32)
        x0 = predict_x0(x, tt)
        mean, _ = q_posterior(sched, x0, x, tt)
        noise = jax.random.normal(k, shape, step_var.dtype)
        x = mean + jnp.where(t > 0, jnp.sqrt(step_var[t]), 0.0) * noise
        return x, None

    ts = jnp.arange(sched.num_steps - 1, 0, -1)
    x, _ = jax.lax.scan(body, x, (ts, jax.random.split(key, ts.shape[0])))
    return predict_x0(x, jnp.zeros((b,), jnp.int32))


def ddim_timesteps(num_train_steps: int, num_steps: int) -> np.ndarray:
    """Decreasing, evenly spaced steps from T−1 to 0 (``num_steps`` of them, distinct); one
    step is T−1 (pure noise to x₀: it was t = 0, which told the denoiser the noise was
    already clean).

    >>> ddim_timesteps(1000, 5).tolist()
    [999, 749, 500, 250, 0]
    >>> ddim_timesteps(1000, 1).tolist()
    [999]
    """
    if not 1 <= num_steps <= num_train_steps:
        raise ConfigError(f"DDIM needs 1 <= num_steps <= {num_train_steps}, got {num_steps}")
    if num_steps == 1:
        return np.array([num_train_steps - 1], np.int32)
    return np.unique(np.round(np.linspace(0, num_train_steps - 1, num_steps)).astype(np.int32)
                     )[::-1].copy()


def ddim_step(sched: Schedule, x_t: jax.Array, x0: jax.Array, t: jax.Array, t_prev: jax.Array,
              eta: float = 0.0) -> tuple[jax.Array, jax.Array]:
    """One DDIM update t → t_prev (Song et al. eq. 12) given the predicted x̂₀.

    Returns (mean, std): x_{t_prev} = mean + std·ε. ``t_prev = −1`` means "to x₀" (ᾱ = 1).
    With η = 1 and t_prev = t − 1 the mean and variance are DDPM's posterior q(x_{t−1}|x_t, x̂₀);
    η = 0 is the deterministic sampler."""
    ab_t = _bcast(sched.alpha_bars[t], x_t)
    ab_p = _bcast(jnp.where(t_prev >= 0, sched.alpha_bars[jnp.maximum(t_prev, 0)], 1.0), x_t)
    eps = (x_t - jnp.sqrt(ab_t) * x0) / jnp.sqrt(1.0 - ab_t)
    sigma = eta * jnp.sqrt((1.0 - ab_p) / (1.0 - ab_t) * (1.0 - ab_t / ab_p))
    mean = jnp.sqrt(ab_p) * x0 + jnp.sqrt(jnp.maximum(1.0 - ab_p - sigma ** 2, 0.0)) * eps
    return mean, sigma * jnp.ones_like(x_t)


def ddim_sample(sched: Schedule, predict_x0: PredictX0, key: jax.Array, shape: tuple[int, ...],
                num_steps: int = 20, eta: float = 0.0) -> jax.Array:
    """DDIM sampling [beyond G.pt] with ``num_steps`` network calls (η = 0: deterministic given
    the initial noise). Returns x̂₀ predicted at the last call (t = 0; T−1 for one step)."""
    ts = ddim_timesteps(sched.num_steps, num_steps)
    prev = np.concatenate([ts[1:], [-1]]).astype(np.int32)
    k0, key = jax.random.split(key)
    x = jax.random.normal(k0, shape, sched.alpha_bars.dtype)
    b = shape[0]

    def body(carry, inp):
        x, _ = carry
        t, tp, k = inp
        x0 = predict_x0(x, jnp.full((b,), t, jnp.int32))
        mean, std = ddim_step(sched, x, x0, t, tp, eta)
        return (mean + std * jax.random.normal(k, shape, x.dtype), x0), None

    (x, x0), _ = jax.lax.scan(body, (x, jnp.zeros(shape, x.dtype)),
                              (jnp.asarray(ts), jnp.asarray(prev),
                               jax.random.split(key, len(ts))))
    return x0
