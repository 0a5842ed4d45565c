"""HyperForget's weight space: canonical rescaling preserves the function, the normalised change
round-trips exactly, untouched tensors are copied, and the statistics come from the corpus."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hyperforget_jax import params as P_
from hyperforget_jax.errors import ConfigError
from hyperforget_jax.hyperforget.weightspace import (WeightSpace, canonicalize,
                                                     decanonicalize)
from hyperforget_jax.models import make_architecture

MLP = make_architecture("mlp", (8, 8, 1), 10)          # 64 → 256 → 256 → 10: two hidden layers
GPT = make_architecture("gpt_mlp", (8, 8, 1), 10)


def _x(n=16):
    return jax.random.uniform(jax.random.key(9), (n, 8, 8, 1))


def test_canonical_network_computes_the_same_function_and_inverts():
    p = MLP.init(jax.random.key(0))
    # Scale the first layer like a network trained at another learning rate.
    p = {**p, "Dense_0": {k: v * 1.7 for k, v in p["Dense_0"].items()}}
    c, scales = canonicalize(p)
    np.testing.assert_allclose(MLP.apply(c, _x()), MLP.apply(p, _x()), rtol=1e-4, atol=1e-5)
    for layer in ("Dense_0", "Dense_1"):       # unit incoming norm per hidden unit
        norm = jnp.sqrt(jnp.sum(c[layer]["kernel"] ** 2, 0) + c[layer]["bias"] ** 2)
        np.testing.assert_allclose(norm, 1.0, rtol=1e-5)
    back = decanonicalize(c, scales)
    for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(p)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # Function-preserving rescalings of the input network give the same canonical network.
    s = jnp.linspace(0.5, 2.0, 256)
    q = {**p, "Dense_0": {"kernel": p["Dense_0"]["kernel"] * s, "bias": p["Dense_0"]["bias"] * s},
         "Dense_1": {**p["Dense_1"], "kernel": p["Dense_1"]["kernel"] / s[:, None]}}
    for a, b in zip(jax.tree.leaves(canonicalize(q)[0]), jax.tree.leaves(c)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    with pytest.raises(ConfigError, match="MLP"):
        canonicalize({"Conv_0": {"kernel": jnp.ones((3, 3, 1, 2)), "bias": jnp.ones(2)}})


def _fit(canon):
    tmpl = GPT.param_shapes()
    rng = np.random.default_rng(0)
    starts = np.stack([np.asarray(P_.flatten(GPT.init(jax.random.key(i)))) for i in range(4)])
    starts += rng.normal(0, 0.05, starts.shape).astype(np.float32)     # non-zero biases
    head = np.arange(650, 760)                           # Dense_1 (bias, kernel)
    target_starts = np.repeat(np.arange(4), 3)
    targets = starts[target_starts].copy()
    targets[:, head] += rng.normal(0, 0.3, (12, len(head))).astype(np.float32)
    return WeightSpace.fit(tmpl, starts, targets, target_starts, canon), starts, targets, tmpl


@pytest.mark.parametrize("canon", [True, False])
def test_change_round_trip_and_frozen_tensors(canon):
    ws, starts, targets, tmpl = _fit(canon)
    # Only the output layer changes in this corpus: only it is diffused.
    assert ws.change_scale[0] == ws.change_scale[1] == 0 and ws.change_size == 110
    assert ws.diffused == [2, 3]
    enc = jax.jit(lambda a, b: ws.encode_change(a, b, tmpl))
    dec = jax.jit(lambda x, b: ws.decode_change(x, b, tmpl))
    x = enc(jnp.asarray(targets[5]), jnp.asarray(starts[1]))
    np.testing.assert_allclose(dec(x, jnp.asarray(starts[1])), targets[5], rtol=1e-5, atol=1e-6)
    # Zero change decodes to θ₀; the first layer is θ₀'s whatever the change.
    np.testing.assert_allclose(dec(jnp.zeros(110), jnp.asarray(starts[2])), starts[2],
                               rtol=1e-5, atol=1e-6)
    out = np.asarray(dec(jnp.ones(110) * 3.0, jnp.asarray(starts[2])))
    # Bit for bit (canonicalised and back, ≈ a quarter of them were ≤ 7.5e-9 off): a check
    # that the first layer is unchanged (array_equal) reported a change never made.
    np.testing.assert_array_equal(out[:650], starts[2][:650])
    np.testing.assert_array_equal(dec(jnp.zeros(110), jnp.asarray(starts[2]))[:650],
                                  starts[2][:650])
    # The normalised changes of the corpus have unit RMS per diffused tensor.
    xs = np.stack([np.asarray(enc(jnp.asarray(t), jnp.asarray(starts[i // 3])))
                   for i, t in enumerate(targets)])
    assert abs(np.sqrt(np.mean(xs[:, 10:] ** 2)) - 1.0) < 1e-3
    assert WeightSpace.from_json(ws.to_json()) == ws



def test_change_of_every_layer_round_trips_and_is_linear():
    """A change that moves the hidden layers too (every trajectory of an "all"-layers corpus)
    decodes back to θ₁ exactly, and its encoding is linear in θ₁: θ₁ is put in θ₀'s canonical
    coordinates. The corpus above changes the head only, whose rescaling θ₀ and θ₁ share, so
    an encoding that canonicalised θ₁ with its own scales passed it."""
    tmpl = GPT.param_shapes()
    shapes = tuple(s.shape for s in P_.param_spans(tmpl))
    ws = WeightSpace(shapes, True, (1.0,) * len(shapes), (1.0,) * len(shapes))
    rng = np.random.default_rng(0)
    t0 = P_.flatten(GPT.init(jax.random.key(0))) + 0.05
    d1, d2 = (jnp.asarray(rng.normal(0, 0.2, t0.shape).astype(np.float32)) for _ in range(2))
    enc = lambda t1: ws.encode_change(t1, t0, tmpl)
    x = enc(t0 + d1)
    np.testing.assert_allclose(ws.decode_change(x, t0, tmpl), t0 + d1, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(enc(t0 + d1 + d2), x + enc(t0 + d2), rtol=1e-4, atol=1e-4)

def test_start_encoding_is_normalised_and_rescale_invariant():
    ws, starts, _, tmpl = _fit(True)
    z = np.stack([np.asarray(ws.encode_start(jnp.asarray(s), tmpl)) for s in starts])
    for i, (a, b) in enumerate(ws.bounds):
        assert abs(z[:, a:b].std() - 1.0) < 1e-3, i
    p = P_.unflatten(jnp.asarray(starts[0]), tmpl)
    p = {"Dense_0": {k: v * 1.65 for k, v in p["Dense_0"].items()},
         "Dense_1": {**p["Dense_1"], "kernel": p["Dense_1"]["kernel"] / 1.65}}
    np.testing.assert_allclose(ws.encode_start(P_.flatten(p), tmpl), z[0], rtol=1e-4,
                               atol=1e-5)


def test_canonical_hidden_units_have_unit_incoming_norm_bias_included():
    # Every hidden unit's (incoming weights, bias) has norm 1 after canonicalisation [module
    # docstring]; a norm over the weights alone is another canonical form (same function,
    # other coordinates for the hypernetwork).
    p = jax.tree.map(lambda v: v + 0.3, MLP.init(jax.random.key(0)))       # non-zero biases
    c, _ = canonicalize(p)
    for name in ("Dense_0", "Dense_1"):
        norm = np.sqrt(np.sum(np.asarray(c[name]["kernel"]) ** 2, 0)
                       + np.asarray(c[name]["bias"]) ** 2)
        np.testing.assert_allclose(norm, 1.0, rtol=1e-5)


def test_an_mlp_whose_layers_are_not_chained_in_name_order_is_not_canonicalised():
    """Flax numbers Dense layers in creation order: a Linen MLP that creates its head first
    (Dense_0, 12 → 5) and calls it after Dense_1 (64 → 12) was taken for the chain
    Dense_0 → Dense_1; hypertraining it died in a broadcasting TypeError inside canonicalize."""
    from hyperforget_jax.hyperforget.weightspace import mlp_layers

    head_first = {"Dense_0": {"kernel": jnp.zeros((12, 5)), "bias": jnp.zeros(5)},
                  "Dense_1": {"kernel": jnp.zeros((64, 12)), "bias": jnp.zeros(12)}}
    assert mlp_layers(head_first) is None
    assert mlp_layers(MLP.param_shapes()) == ["Dense_0", "Dense_1", "Dense_2"]
    with pytest.raises(ConfigError, match="chained"):
        canonicalize(head_first)


def test_canonicalize_under_rank_promotion_raise():
    """A user's jax_numpy_rank_promotion="raise" made HyperForget's sampling fail here: an
    (in, out) kernel divided by (out,) scales."""
    p = jax.tree.map(lambda v: v + 0.3, MLP.init(jax.random.key(0)))
    with jax.numpy_rank_promotion("raise"):
        c, back = jax.jit(lambda q: (lambda c: (c[0], decanonicalize(*c)))(canonicalize(q)))(p)
    norms = jnp.sqrt(jnp.sum(c["Dense_0"]["kernel"] ** 2, 0) + c["Dense_0"]["bias"] ** 2)
    np.testing.assert_allclose(norms, 1.0, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(p)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_a_switched_off_unit_keeps_scale_one_and_its_changes_stay_finite_sized():
    """A unit with all-zero incoming weights and bias (pruned) got scale 1e-12: a change to
    its outgoing row in canonical space came back ×1e12 (a sample's weights ≈ 3e11)."""
    p = MLP.init(jax.random.key(0))
    d0 = dict(p["Dense_0"])
    d0["kernel"], d0["bias"] = d0["kernel"].at[:, 0].set(0.0), d0["bias"].at[0].set(0.0)
    p = {**p, "Dense_0": d0}
    c, scales = canonicalize(p)
    assert float(scales[0][0]) == 1.0 and float(scales[0][1]) != 1.0
    np.testing.assert_allclose(MLP.apply(c, _x()), MLP.apply(p, _x()), rtol=1e-4, atol=1e-5)
    moved = {**c, "Dense_1": {**c["Dense_1"], "kernel": c["Dense_1"]["kernel"] + 0.01}}
    back = decanonicalize(moved, scales)
    assert float(jnp.max(jnp.abs(back["Dense_1"]["kernel"]))) < 10.0
    for a, b in zip(jax.tree.leaves(decanonicalize(c, scales)), jax.tree.leaves(p)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_a_nan_in_the_corpus_is_refused_not_left_out_of_the_diffusion():
    """A NaN target made its tensor's change scale NaN, which compared False with the
    threshold: the tensor was read as "not diffused" and every sample kept θ₀'s values."""
    from hyperforget_jax.errors import NonFiniteError

    tmpl = GPT.param_shapes()
    starts = np.stack([np.asarray(P_.flatten(GPT.init(jax.random.key(i)))) for i in range(2)])
    targets = starts[[0, 0, 1]] + np.float32(0.1)
    targets[1, 700] = np.nan
    with pytest.raises(NonFiniteError, match="start or target networks hold NaN/inf"):
        WeightSpace.fit(tmpl, starts, targets, np.array([0, 0, 1]), False)
