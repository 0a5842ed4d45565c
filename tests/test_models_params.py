import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hyperforget_jax import models, params as P
from hyperforget_jax.errors import ArchitectureError, ConfigError


@pytest.mark.parametrize("name, shape, count", [
    ("gpt_mlp", (28, 28, 1), 7_960),           # G.pt's MNIST MLP 784→10→10
    ("mlp", (28, 28, 1), 269_322),             # 784→256→256→10
    ("cnn", (28, 28, 1), 421_642),
    ("resnet18", (32, 32, 3), 11_173_962),     # the usual CIFAR ResNet-18 count
])
def test_exact_parameter_counts(name, shape, count):
    arch = models.make_architecture(name, shape)
    assert arch.param_count == count
    logits = jax.eval_shape(arch.apply, arch.param_shapes(), jnp.zeros((2, *shape)))
    assert logits.shape == (2, 10)


def test_flatten_roundtrip_and_spans():
    arch = models.make_architecture("gpt_mlp")
    p = arch.init(jax.random.key(0))
    flat = P.flatten(p)
    assert flat.shape == (7960,)
    back = P.unflatten(flat, p)
    for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(back)):
        np.testing.assert_array_equal(a, b)
    spans = P.param_spans(p)
    assert [s.stop - s.start for s in spans] == [10, 7840, 10, 100]
    assert spans[-1].stop == 7960
    np.testing.assert_array_equal(flat[spans[1].start:spans[1].stop],
                                  p["Dense_0"]["kernel"].ravel())


def test_gpt_chunking_gives_11_tokens_never_mixing_tensors():
    p = models.make_architecture("gpt_mlp").param_shapes()
    chunks = P.chunk_spans(p, 1000)
    assert len(chunks) == 11
    spans = P.param_spans(p)
    for c in chunks:
        s = spans[c.tensor]
        assert s.start <= c.start < c.stop <= s.stop and c.stop - c.start <= 1000
    flat = jnp.arange(7960.0)
    toks = P.tokenize(flat, chunks)
    assert toks.shape == (11, 1000)
    np.testing.assert_array_equal(P.detokenize(toks, chunks), flat)
    batched = P.tokenize(jnp.stack([flat, -flat]), chunks)
    assert batched.shape == (2, 11, 1000)


def test_wrong_length_flat_vector_is_clear_error():
    p = models.make_architecture("gpt_mlp").init(jax.random.key(0))
    with pytest.raises(ArchitectureError, match="7960 parameters"):
        P.unflatten(jnp.zeros(7959), p)
    with pytest.raises(ArchitectureError):
        P.unflatten(jnp.zeros((2, 3980)), p)


def test_check_params_names_the_mismatch():
    mlp = models.make_architecture("mlp")
    gpt = models.make_architecture("gpt_mlp")
    gpt.check_params(gpt.init(jax.random.key(0)))
    with pytest.raises(ArchitectureError, match="Dense_0.*shape"):
        gpt.check_params(mlp.init(jax.random.key(0)))
    with pytest.raises(ArchitectureError, match="missing|unexpected"):
        models.make_architecture("cnn").check_params(gpt.init(jax.random.key(0)))


def test_unknown_architecture():
    with pytest.raises(ConfigError, match="unknown architecture"):
        models.make_architecture("vgg")


def test_all_finite_and_stacking():
    p = {"a": jnp.ones(3), "b": jnp.zeros((2, 2))}
    assert bool(P.all_finite(p))
    assert not bool(P.all_finite({**p, "a": jnp.array([1.0, jnp.nan, 0.0])}))
    s = P.stack_trees([p, p, p])
    assert s["b"].shape == (3, 2, 2)
    np.testing.assert_array_equal(P.tree_index(s, 1)["a"], p["a"])
