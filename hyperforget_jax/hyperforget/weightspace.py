"""The weight space HyperForget diffuses over: canonical start networks and normalised changes.

    ws = WeightSpace.fit(template, starts, targets)          # statistics from a corpus
    z0 = ws.encode_start(theta0)                             # (P,) the denoiser's θ₀ input
    x0 = ws.encode_change(theta1, theta0)                    # (Q,) what the diffusion models
    theta1 = ws.decode_change(x0, theta0)                    # exact inverse on the changed part

Why [ours; issue 13's measured causes]:

* **Diffuse over the change, not over θ.** G.pt diffuses absolute parameters (std ≈ 0.54 after
  scaling) while an unlearning change of the 784→10→10 MLP has RMS ≈ 0.06: the noise exceeds the
  signal at all but a few steps and the "diffusion" collapses into a deterministic regressor.
  Here x₀ = (θ₁ − θ₀) / σ_tensor with σ_tensor the RMS of that tensor's change over the corpus,
  so every diffused value has unit scale.
* **Only what the corpus changes is diffused.** A tensor that no corpus trajectory changes
  (σ = 0, e.g. the first layer when the corpus's unlearning trains the output layer only) is
  copied from θ₀ exactly instead of being re-generated with the denoiser's error.
* **Canonical start networks.** A ReLU MLP computes the same function when hidden unit j's
  incoming weights and bias are multiplied by s_j > 0 and its outgoing weights divided by s_j.
  Networks trained with another learning rate differ mostly in these scales (first-layer kernel
  std 0.09 at lr 1e-3 against 0.15 at lr 3e-3), so every start network is first rescaled to unit
  incoming norm per hidden unit; changes are expressed in those canonical coordinates and mapped
  back with θ₀'s own scales (function-preserving, exactly invertible).
* **Per-tensor normalisation of θ₀** (std over the corpus's start networks, canonical space):
  the denoiser sees every tensor at unit scale.

Everything here is pure ``jnp`` on flat vectors (jit/vmap over networks).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from hyperforget_jax import params as P_, xla
from hyperforget_jax.errors import ConfigError, NonFiniteError

Params = Any
_EPS = 1e-12
#: A hidden unit whose incoming norm is below this share of its layer's largest is switched off:
#: canonicalisation leaves it unscaled (its outputs are 0 at any scale).
_DEAD = 1e-6


def mlp_layers(template: Params) -> list[str] | None:
    """Layer names ``Dense_0 .. Dense_k`` of a plain MLP params tree (each with ``kernel`` and
    ``bias`` only, each layer's outputs the next one's inputs), else None. Flax numbers layers
    in creation order: a model that creates its head first (``Dense_0``) and calls it last is
    not a chain in name order, and canonicalising or permuting it as one crashed. Where its
    widths chain in name order anyway (square layers), only the traced call order tells
    (``dihyfo._mlp_chain``)."""
    if not isinstance(template, dict) or not template:
        return None
    names = list(template)
    if any(not (k.startswith("Dense_") and k[6:].isdigit()) for k in names):
        return None
    names = sorted(names, key=lambda k: int(k[6:]))
    if [int(k[6:]) for k in names] != list(range(len(names))):
        return None
    if any(not isinstance(template[k], dict) or set(template[k]) != {"kernel", "bias"}
           for k in names):
        return None
    kernels = [tuple(jnp.shape(template[k]["kernel"])) for k in names]
    biases = [tuple(jnp.shape(template[k]["bias"])) for k in names]
    if any(len(k) != 2 or b != k[1:] for k, b in zip(kernels, biases)):
        return None
    if any(a[1] != b[0] for a, b in zip(kernels[:-1], kernels[1:])):
        return None
    return names


def canonicalize(params: Params) -> tuple[Params, list[jax.Array]]:
    """Rescales every hidden ReLU unit of an MLP to unit norm of (incoming weights, bias) and
    moves the scale into the next layer's weights. Returns the canonical params (same function)
    and the per-layer scales, for :func:`decanonicalize`."""
    names = mlp_layers(params)
    if names is None:
        raise ConfigError("canonicalisation supports MLP parameters (Dense_0..Dense_k with "
                          "kernel and bias, chained in that order) only; set "
                          "canonicalize=False for this architecture")
    out = {k: dict(v) for k, v in params.items()}
    scales = []
    for a, b in zip(names[:-1], names[1:]):
        # Layer a's incoming weights already carry the previous layer's scales. A unit switched
        # off (all-zero incoming weights and bias, as pruning leaves it) keeps scale 1: at
        # 1e-12 a sampled change to its outgoing row came back ×1e12 (weights ≈ 3e11).
        n = jnp.sqrt(jnp.sum(out[a]["kernel"] ** 2, 0) + out[a]["bias"] ** 2)
        s = jnp.where(n > _DEAD * jnp.max(n), n + _EPS, 1.0)
        out = _rescale(out, scales + [s], start=len(scales))
        scales.append(s)
    return out, scales


def decanonicalize(params: Params, scales: list[jax.Array]) -> Params:
    """Inverse of :func:`canonicalize` given its scales."""
    names = mlp_layers(params)
    out = {k: dict(v) for k, v in params.items()}
    for (a, b), s in reversed(list(zip(zip(names[:-1], names[1:]), scales))):
        out[b]["kernel"] = out[b]["kernel"] / s[:, None]
        out[a]["kernel"], out[a]["bias"] = out[a]["kernel"] * s[None], out[a]["bias"] * s
    return out


@dataclasses.dataclass(frozen=True)
class WeightSpace:
    """Normalisation of start networks and changes (module docstring). Hashable and
    JSON-serialisable (:meth:`to_json`), stored in a hypernetwork's spec.

    Attributes:
      shapes: the tensor shapes in flat order (``params.param_spans`` of the architecture).
      canonicalize: rescale hidden ReLU units of θ₀ (MLPs only).
      start_scale: per tensor, the std of canonical θ₀ over the corpus.
      change_scale: per tensor, the RMS of the canonical change θ₁ − θ₀ over the corpus's
        training targets; 0 marks a tensor no trajectory changes (not diffused).
    """

    shapes: tuple[tuple[int, ...], ...]
    canonicalize: bool
    start_scale: tuple[float, ...]
    change_scale: tuple[float, ...]

    # --- layout --------------------------------------------------------------------------------
    @property
    def bounds(self) -> list[tuple[int, int]]:
        sizes = [int(np.prod(s)) for s in self.shapes]
        ends = np.cumsum(sizes)
        return [(int(e - n), int(e)) for e, n in zip(ends, sizes)]

    @property
    def num_params(self) -> int:
        return self.bounds[-1][1]

    @property
    def diffused(self) -> list[int]:
        """Tensor ids whose change is modelled."""
        return [i for i, s in enumerate(self.change_scale) if s > 0]

    @property
    def change_index(self) -> np.ndarray:
        """Flat positions of the diffused values, in flat order (length Q)."""
        return np.concatenate([np.arange(*self.bounds[i]) for i in self.diffused])

    @property
    def change_size(self) -> int:
        return int(len(self.change_index))

    def _expand(self, per_tensor, idx=None) -> jax.Array:
        v = np.concatenate([np.full(b - a, s, np.float32) for (a, b), s in
                            zip(self.bounds, per_tensor)])
        return jnp.asarray(v if idx is None else v[idx])

    # --- transforms (single flat vectors; vmap for batches) ------------------------------------
    def _canon(self, flat: jax.Array, template: Params) -> tuple[jax.Array, list]:
        if not self.canonicalize:
            return flat, []
        p, s = canonicalize(P_.unflatten(flat, template))
        return P_.flatten(p), s

    def encode_start(self, theta0: jax.Array, template: Params) -> jax.Array:
        """θ₀ (P,) → canonical, per-tensor normalised (P,)."""
        c, _ = self._canon(theta0, template)
        return c / jnp.maximum(self._expand(self.start_scale), _EPS)

    def encode_change(self, theta1: jax.Array, theta0: jax.Array, template: Params
                      ) -> jax.Array:
        """(θ₁, θ₀) → the normalised canonical change of the diffused tensors (Q,). θ₁ is put in
        canonical coordinates with θ₀'s scales (so the map is linear in θ₁)."""
        c0, s = self._canon(theta0, template)
        c1 = theta1
        if self.canonicalize:
            c1 = P_.flatten(_rescale(P_.unflatten(theta1, template), s))
        idx = self.change_index
        return (c1 - c0)[idx] / self._expand(self.change_scale, idx)

    def decode_change(self, x: jax.Array, theta0: jax.Array, template: Params) -> jax.Array:
        """Inverse of :meth:`encode_change`: (Q,) and θ₀ → θ₁ (P,); tensors that are not
        diffused are θ₀'s exactly."""
        c0, s = self._canon(theta0, template)
        idx = self.change_index
        c1 = c0.at[idx].add(x * self._expand(self.change_scale, idx))
        if not self.canonicalize:
            return c1
        out = P_.flatten(decanonicalize(P_.unflatten(c1, template), s))
        # Rescaled and back, the other tensors came out of the round trip with rounding
        # (≈ 2,000 of the first layer's 7,840 weights off by ≤ 7.5e-9): θ₀'s own values.
        diffused = np.zeros(out.shape[0], bool)
        diffused[idx] = True
        return jnp.where(diffused, out, theta0.astype(out.dtype))

    # --- statistics ----------------------------------------------------------------------------
    @classmethod
    def fit(cls, template: Params, starts: np.ndarray, targets: np.ndarray,
            target_starts: np.ndarray, canonicalize: bool = True, rel_tol: float = 1e-6
            ) -> "WeightSpace":
        """Statistics from a corpus of start networks and the targets unlearned from them.

        Args:
          template: parameters of the corpus's architecture (their structure and shapes).
          starts: (S, P) flat start networks.
          targets: (N, P) flat target networks.
          target_starts: (N,) the row of ``starts`` each target starts from.
          canonicalize: rescale hidden units (MLPs only; ConfigError otherwise).
          rel_tol: a tensor whose change RMS is below ``rel_tol`` × the largest is not diffused.
        """
        if canonicalize and mlp_layers(template) is None:
            raise ConfigError("canonicalize=True needs an MLP (Dense_0..Dense_k); pass "
                              "canonicalize=False for this architecture")
        shapes = tuple(tuple(int(d) for d in s.shape) for s in P_.param_spans(template))
        ws = cls(shapes, canonicalize, (1.0,) * len(shapes), (1.0,) * len(shapes))
        canon = xla.jit(jax.vmap(lambda f: ws._canon(f, template)[0]))
        c0 = np.asarray(canon(jnp.asarray(starts)))
        enc = xla.jit(jax.vmap(lambda a, b: ws.encode_change(a, b, template)))
        d = np.concatenate([np.asarray(enc(jnp.asarray(targets[i:i + 512]),
                                           jnp.asarray(starts[target_starts[i:i + 512]])))
                            for i in range(0, len(targets), 512)])
        stds = [float(c0[:, a:b].std()) for a, b in ws.bounds]
        # A tensor that is (nearly) constant over the corpus, e.g. zero-initialised biases of
        # untrained networks, is not blown up: floor at 1e-3 × the median tensor std.
        floor = 1e-3 * float(np.median(stds)) or 1e-8
        start_scale = [max(s, floor) for s in stds]
        change_scale = [float(np.sqrt(np.mean(d[:, a:b] ** 2))) for a, b in ws.bounds]
        if not np.isfinite(stds + change_scale).all():
            # A NaN change scale compared False with the threshold below: the tensor was
            # silently left out of the diffusion.
            raise NonFiniteError("WeightSpace.fit: the start or target networks hold NaN/inf; "
                                 "pass finite networks (a damaged corpus: rebuild it)")
        top = max(change_scale)
        if top <= 0:
            raise ConfigError("the corpus's targets equal their start networks: nothing to learn")
        change_scale = [s if s > rel_tol * top else 0.0 for s in change_scale]
        return cls(shapes, canonicalize, tuple(start_scale), tuple(change_scale))

    def to_json(self) -> dict:
        return {"shapes": [list(s) for s in self.shapes], "canonicalize": self.canonicalize,
                "start_scale": list(self.start_scale), "change_scale": list(self.change_scale)}

    @classmethod
    def from_json(cls, d: dict) -> "WeightSpace":
        return cls(tuple(tuple(int(x) for x in s) for s in d["shapes"]), bool(d["canonicalize"]),
                   tuple(float(x) for x in d["start_scale"]),
                   tuple(float(x) for x in d["change_scale"]))


def _rescale(params: Params, scales: list[jax.Array], start: int = 0) -> Params:
    """Applies canonical scales (possibly another network's) to ``params``: hidden unit j of
    layer i is divided by scales[i][j] (incoming) and multiplied into the next layer."""
    names = mlp_layers(params)
    out = {k: dict(v) for k, v in params.items()}
    pairs = list(zip(names[:-1], names[1:]))
    for i in range(start, len(scales)):
        (a, b), s = pairs[i], scales[i]
        # s[None]: explicit, for jax_numpy_rank_promotion="raise"
        out[a]["kernel"], out[a]["bias"] = out[a]["kernel"] / s[None], out[a]["bias"] / s
        out[b]["kernel"] = out[b]["kernel"] * s[:, None]
    return out
