import jax
import jax.numpy as jnp
import numpy as np
import optax
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


def test_flatten_round_trips_odd_pytrees_and_names_an_empty_one():
    """Nested dicts, tuples, a 0-d leaf, bf16 beside float32 and a leaf of size 0 come back
    with their structure, shapes, dtypes and values; an empty pytree is named (was: jnp's
    "Need at least one array to concatenate")."""
    tree = {"a": {"b": jnp.arange(6.0).reshape(2, 3), "c": (jnp.float32(1.5), [jnp.zeros(0)])},
            "h": jnp.asarray([1.0039, -2.5], jnp.bfloat16), "z": jnp.zeros((0, 4))}
    flat = P.flatten(tree)
    assert flat.shape == (9,) and flat.dtype == jnp.float32
    back = P.unflatten(flat, tree)
    assert jax.tree.structure(back) == jax.tree.structure(tree)
    for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(tree)):
        assert a.shape == b.shape and a.dtype == b.dtype
        np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32))
    for empty in ({}, {"a": None}, ()):
        with pytest.raises(ArchitectureError, match="holds no array"):
            P.flatten(empty)
    # A weakly typed float32 leaf (a Python float, jnp.asarray(0.1)) beside bfloat16 / float16
    # ones took their dtype and was rounded: 0.1234567 came back as 0.12353516.
    for low in (jnp.bfloat16, jnp.float16):
        weak = {"h": jnp.ones(2, low), "s": jnp.asarray(0.1234567), "t": 1.0000001}
        back = P.unflatten(P.flatten(weak), weak)
        assert P.flatten(weak).dtype == jnp.float32
        assert float(back["s"]) == float(jnp.float32(0.1234567))
        assert float(back["t"]) == float(jnp.float32(1.0000001))


def test_tree_index_refuses_a_member_past_the_stack():
    # JAX clamps: member 3 (or 7) of a stack of 3 was member 2, a duplicate model.
    s = P.stack_trees([{"a": jnp.full(2, float(i))} for i in range(3)])
    assert float(P.tree_index(s, -3)["a"][0]) == 0.0
    assert float(P.tree_index(s, np.int64(2))["a"][0]) == 2.0
    for bad in (3, 7, -4, jnp.int32(3)):
        with pytest.raises(ConfigError, match=r"member -?\d+ of a stack of 3"):
            P.tree_index(s, bad)
    assert jax.jit(lambda i: P.tree_index(s, i)["a"][0])(1) == 1.0   # traced: not checked


def test_flatten_refuses_integers_its_vector_cannot_hold():
    """A float32 vector rounded an int32 leaf's 2**24 + 1 to 2**24, and an int32 one wrapped a
    uint32's 3e9, without a word: refused, naming the leaf; under jit (values unknown) a leaf
    that may not fit is refused; small ints, int8 beside floats and int-only trees stay."""
    big = {"a": {"n": jnp.array([2**24 + 1], jnp.int32)}, "w": jnp.ones(1)}
    with pytest.raises(ArchitectureError, match=r"int32 leaf \['a'\]\['n'\] holds 16777217, "
                                                r"which the float32 vector cannot hold"):
        P.flatten(big)
    with pytest.raises(ArchitectureError, match=r"uint32 leaf \['u'\] holds 3000000000"):
        P.flatten({"u": np.array([3_000_000_000], np.uint32), "i": np.array([1], np.int32)})
    with pytest.raises(ArchitectureError, match="under jit its values cannot be checked"):
        jax.jit(P.flatten)(big)
    # An optax state (int32 step count beside float32 moments): the refusal names the call
    # that works, flatten outside jit, which reads the count.
    state = optax.adam(1e-3).init({"w": jnp.ones(2)})
    with pytest.raises(ArchitectureError, match=r"\[0\]\.count .*call flatten outside jit"):
        jax.jit(P.flatten)(state)
    assert P.flatten(state).tolist() == [0.0] * 5
    assert P.flatten({"n": jnp.array([7], jnp.int32), "w": jnp.ones(1)}).tolist() == [7.0, 1.0]
    assert jax.jit(P.flatten)({"n": jnp.array([7], jnp.int8), "w": jnp.ones(1)}).tolist() \
        == [7.0, 1.0]
    assert P.flatten({"n": jnp.array([2**30], jnp.int32)}).tolist() == [2**30]


def test_flatten_reads_a_numpy_leaf_s_own_integer_width():
    """Without x64 the check read a NumPy int64 leaf as int32 (JAX's width), so an int-only
    tree passed and 2**40 wrapped to 0 in the int32 vector, without a word: refused, naming the
    leaf's own dtype; int64 values that fit (np.arange's) still flatten."""
    with pytest.raises(ArchitectureError, match=r"int64 leaf \['a'\] holds 1099511627776, "
                                                r"which the int32 vector cannot hold"):
        P.flatten({"a": np.array([2**40, 1]), "b": np.array([1], np.int32)})
    with pytest.raises(ArchitectureError, match=r"uint64 leaf \['u'\] holds 9\d{18}, which "
                                                r"the uint32 vector"):
        P.flatten({"u": np.uint64(2**63)})
    assert P.flatten({"a": np.arange(3), "b": np.int64(-4)}).tolist() == [0, 1, 2, -4]


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


def test_frozen_variables_dict_is_named_one_level_too_deep():
    """``freeze({'params': p})`` was reported as a missing leaf of another architecture."""
    from flax.core import freeze
    mlp = models.make_architecture("mlp")
    p = mlp.init(jax.random.key(0))
    mlp.check_params(freeze(p))
    with pytest.raises(ArchitectureError, match="one level too deep"):
        mlp.check_params(freeze({"params": p}))


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


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_init_is_one_compiled_program_with_the_module_init_bits(name):
    """``Architecture.init`` compiles Flax's init whole (one program per model, not one per
    initialiser and parameter shape) and draws exactly the parameters ``Module.init`` draws op
    by op."""
    arch = models.make_architecture(name, (8, 8, 1))
    key = jax.random.key(7)
    want = arch.module.init(key, jnp.zeros((1, 8, 8, 1)))["params"]
    got = arch.init(key)
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        assert a.dtype == b.dtype and np.array_equal(np.asarray(a), np.asarray(b))
    before = arch.program("init", lambda: None)
    assert callable(before)
    arch.init(jax.random.key(8))
    assert arch.program("init", lambda: None) is before  # built once, kept by the model


def test_init_of_a_module_that_needs_concrete_inputs_runs_op_by_op():
    """A user's module whose init reads its input's values (Python control flow) cannot be
    traced; ``init`` then runs it op by op, as Flax does, instead of failing."""
    import flax.linen as nn

    class Branchy(nn.Module):
        @nn.compact
        def __call__(self, x):
            if float(jnp.sum(x)) == 0.0:  # concrete values only
                x = x + 0.0
            return nn.Dense(10)(x.reshape((x.shape[0], -1)))

    arch = models.as_model(Branchy(), input_shape=(4, 4, 1))
    key = jax.random.key(1)
    got = arch.init(key)
    want = Branchy().init(key, jnp.zeros((1, 4, 4, 1)))["params"]
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)))
    assert arch.init(key)["Dense_0"]["kernel"].shape == (16, 10)


def test_0_255_images_are_refused_whatever_their_count_or_container():
    """The check sampled the flat values at a stride: 2,400 MNIST-sized images × 255 read only
    their black first column (stride 28) and trained unscaled; a device array was never
    checked."""
    from hyperforget_jax.errors import DataError

    arch = models.make_architecture("mlp", (28, 28, 1))
    x = np.zeros((2400, 28, 28, 1), np.float32)
    x[:, 8:20, 8:20] = 255.0                      # digits on a black border
    for images in (x, jnp.asarray(x)):
        with pytest.raises(DataError, match=r"values up to 255 \(0\.\.255 pixel values\?\)"):
            arch.check_inputs(images, "training set")
        arch.check_inputs(images / 255.0, "training set")      # [0, 1]: taken
    # Traced images are not read (a user's jitted loop), nor are feature vectors.
    jax.jit(lambda v: arch.check_inputs(v) or v.sum())(jnp.asarray(x))
    # values=False (a streamed device batch after the first: reading it waits for every step
    # queued before it) reads none.
    arch.check_inputs(jnp.asarray(x), "a streamed batch", values=False)


def test_a_device_stream_reads_its_first_batch_s_values_only(monkeypatch):
    """fit_stream read every device batch's values, each read waiting for the steps queued
    before it (a 4.5 s wait behind a queued matmul chain); numpy batches are read each time."""
    from hyperforget_jax import train

    arch = models.make_architecture("mlp", (8, 8, 1))
    read = []
    real = type(arch).check_inputs
    monkeypatch.setattr(type(arch), "check_inputs",
                        lambda self, x, what="data", labels=None, values=True:
                        read.append((what, values)) or real(self, x, what, labels, values))
    rng = np.random.default_rng(0)
    x, y = rng.random((64, 8, 8, 1)).astype(np.float32), np.arange(64) % 10
    for to, want in ((jnp.asarray, [True, False]), (np.asarray, [True, True])):
        read.clear()
        train.fit_stream(arch, [(to(x[:32]), y[:32]), (to(x[32:]), y[32:])],
                         train.TrainConfig(epochs=1, batch_size=32))
        assert [v for what, v in read if what == "a streamed batch"] == want, read
