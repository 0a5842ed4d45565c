"""hyperforget_jax.layers: same parameters, outputs and gradients as Flax's convolution layers,
canonical convolutions inside compiled CPU loops, JAX's own convolutions on GPU/TPU."""

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import export, lax

from hyperforget_jax import layers as L
from hyperforget_jax.models import make_architecture

CANONICAL = "b01f_01io->b01f"

CASES = {
    "3x3 s1 same": (lambda: nn.Conv(8, (3, 3)), lambda: L.Conv(8, (3, 3)), (3, 10, 10, 5)),
    "4x4 s2 same": (lambda: nn.Conv(8, (4, 4), (2, 2)), lambda: L.Conv(8, (4, 4), (2, 2)),
                    (3, 10, 10, 5)),
    # <= layers.GEMM_KERNEL_GRAD_MAX_CHANNELS input channels: the kernel gradient is a matmul
    "image layer 3x3, 1 channel": (lambda: nn.Conv(8, (3, 3)), lambda: L.Conv(8, (3, 3)),
                                   (3, 10, 10, 1)),
    "image layer 5x5 s(3,2), 3 channels": (
        lambda: nn.Conv(8, (5, 5), (3, 2), ((2, 1), (0, 3)), kernel_dilation=(1, 2)),
        lambda: L.Conv(8, (5, 5), (3, 2), ((2, 1), (0, 3)), kernel_dilation=(1, 2)),
        (3, 13, 15, 3)),
    "1x1 s2 no bias": (lambda: nn.Conv(8, (1, 1), (2, 2), use_bias=False),
                       lambda: L.Conv(8, (1, 1), (2, 2), use_bias=False), (3, 8, 8, 5)),
    "transpose 4x4 s2 same": (lambda: nn.ConvTranspose(8, (4, 4), (2, 2), "SAME"),
                              lambda: L.ConvTranspose(8, (4, 4), (2, 2), "SAME"), (3, 5, 5, 5)),
}


def rel_err(a, b):
    errs = [np.abs(np.asarray(x) - np.asarray(y)).max() / max(np.abs(np.asarray(y)).max(), 1e-12)
            for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)]
    return max(errs)


def loss(module):
    return lambda p, x: jnp.sum(jnp.sin(module.apply(p, x)))


@pytest.mark.parametrize("case", list(CASES))
def test_same_parameters_outputs_and_gradients_as_flax(case):
    """Same parameters, outputs and gradients as Flax's layer, also inside a compiled loop; on
    CPU that loop compiles to canonical convolutions only (image layers: none at all)."""
    make_ref, make_new, shape = CASES[case]
    ref, new = make_ref(), make_new()
    x = jnp.asarray(np.random.default_rng(0).normal(size=shape), jnp.float32)
    p_ref, p_new = ref.init(jax.random.key(1), x), new.init(jax.random.key(1), x)
    # Same names, shapes and initial values: checkpoints and Flax code keep working.
    assert jax.tree.structure(p_ref) == jax.tree.structure(p_new)
    assert all(np.array_equal(a, b) for a, b in
               zip(jax.tree.leaves(p_ref), jax.tree.leaves(p_new)))
    assert rel_err(new.apply(p_ref, x), ref.apply(p_ref, x)) < 1e-6
    grads = lambda m: jax.jit(jax.grad(loss(m), (0, 1)))(p_ref, x)
    assert rel_err(grads(new), grads(ref)) < 1e-5
    # Inside a compiled loop (what scanned training and unlearn() run) the updates agree and
    # every convolution XLA compiles is canonical.
    def descend(m):
        def run(p):
            step = lambda p, _: (jax.tree.map(lambda a, g: a - 0.01 * g, p,
                                              jax.grad(loss(m))(p, x)), None)
            return lax.scan(step, p, None, length=2)[0]
        return jax.jit(run)
    compiled = descend(new).lower(p_ref).compile()
    assert rel_err(compiled(p_ref), descend(ref)(p_ref)) < 1e-5
    if jax.default_backend() != "cpu":
        return  # GPU/TPU compile JAX's own convolutions: test_accelerators_get_jax_own_...
    labels = set(re.findall(r"dim_labels=([^,\s]+)", compiled.as_text()))
    # Image layers (few input channels) compile to no convolution at all on CPU: the forward
    # pass is a fused sum of shifted views and the kernel gradient one matrix product.
    image_layer = shape[-1] <= L.GEMM_KERNEL_GRAD_MAX_CHANNELS
    assert labels == (set() if image_layer else {CANONICAL}), labels


@pytest.mark.parametrize("shape,kernel,strides,pads,dilation,dtype", [
    ((2, 9, 8, 1), (3, 3), (1, 1), ((1, 1), (1, 1)), (1, 1), jnp.float32),
    ((2, 9, 8, 3), (4, 2), (2, 3), ((-1, 2), (0, 1)), (1, 2), jnp.float32),  # negative pad
    ((2, 9, 8, 4), (1, 1), (1, 1), ((0, 0), (0, 0)), (1, 1), jnp.float32),
    ((2, 9, 8, 2), (3, 2), (1, 2), "SAME", (2, 3), jnp.float32),  # 'SAME' of a dilated window
    ((2, 9, 8, 2), (3, 3), (1, 1), ((1, 1), (1, 1)), (1, 1), jnp.bfloat16),  # lax's own path
])
def test_image_layer_forward_and_kernel_gradient_equal_lax(shape, kernel, strides, pads,
                                                            dilation, dtype):
    """Layers with few input channels compute the forward pass as a sum of shifted views and
    the kernel gradient as one matrix product on CPU: same values as lax's convolution."""
    rng = np.random.default_rng(shape[-1])
    x = jnp.asarray(rng.normal(size=shape), dtype)
    w = jnp.asarray(rng.normal(size=(*kernel, shape[-1], 5)), dtype)
    args = (strides, pads, None, dilation, ("NHWC", "HWIO", "NHWC"))
    f = lambda conv: jax.jit(lambda x, w: (conv(x, w, *args), jax.grad(
        lambda w: jnp.sum(jnp.sin(conv(x, w, *args).astype(jnp.float32))))(w)))(x, w)
    (y, dw), (y_ref, dw_ref) = f(L.conv_general_dilated), f(lax.conv_general_dilated)
    tol = 1e-6 if dtype == jnp.float32 else 1e-2
    assert y.dtype == y_ref.dtype and y.shape == y_ref.shape
    assert rel_err(y.astype(jnp.float32), y_ref.astype(jnp.float32)) < tol
    assert rel_err(dw.astype(jnp.float32), dw_ref.astype(jnp.float32)) < 10 * tol


def _cnn_scan(arch):
    def run(params, x, y):
        def step(p, _):
            g = jax.grad(lambda p: jnp.mean(
                jax.nn.log_softmax(arch.apply(p, x))[jnp.arange(len(y)), y]))(p)
            return jax.tree.map(lambda a, b: a + 0.1 * b, p, g), None
        return lax.scan(step, params, None, length=2)[0]
    return jax.jit(run)


class _FlaxSmallCNN(nn.Module):
    """models.SmallCNN with plain nn.Conv (the reference)."""

    @nn.compact
    def __call__(self, x):
        for ch in (32, 64):
            x = nn.avg_pool(nn.relu(nn.Conv(ch, (3, 3))(x)), (2, 2), (2, 2))
        x = nn.relu(nn.Dense(128)(x.reshape(x.shape[0], -1)))
        return nn.Dense(10)(x)


def test_cnn_training_loop_compiles_to_canonical_convolutions():
    """The library's cnn in a scanned gradient loop: same parameters as plain Flax after two
    steps, and only canonical convolutions — the plain Flax model is not (the test can fail)."""
    arch = make_architecture("cnn", (12, 12, 1))
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(6, 12, 12, 1)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 10, 6), jnp.int32)
    params = arch.init(jax.random.key(0))

    class Ref:
        apply = staticmethod(lambda p, x: _FlaxSmallCNN().apply({"params": p}, x))

    ours, ref = (_cnn_scan(a).lower(params, x, y).compile() for a in (arch, Ref))
    assert rel_err(ours(params, x, y), ref(params, x, y)) < 1e-5
    if jax.default_backend() != "cpu":
        return  # the canonical form is XLA:CPU's; GPU/TPU keep JAX's own convolutions
    labels = lambda f: set(re.findall(r"dim_labels=([^,\s]+)", f.as_text()))
    assert labels(ours) == {CANONICAL}
    assert labels(ref) != {CANONICAL}


def test_transformations_match_flax():
    ref, new = nn.Conv(6, (3, 3), (2, 2)), L.Conv(6, (3, 3), (2, 2))
    x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 9, 9, 4)), jnp.float32)
    p = ref.init(jax.random.key(2), x)
    jvp = lambda m: jax.jit(lambda p, x: jax.jvp(m.apply, (p, x), (p, 0.5 * x))[1])(p, x)
    assert rel_err(jvp(new), jvp(ref)) < 1e-6
    gradgrad = lambda m: jax.jit(jax.grad(lambda p: sum(
        jnp.sum(g ** 2) for g in jax.tree.leaves(jax.grad(loss(m))(p, x)))))(p)
    assert rel_err(gradgrad(new), gradgrad(ref)) < 1e-5
    xs = jnp.stack([x, -x, 2 * x])
    per_example = lambda m: jax.jit(jax.vmap(jax.grad(loss(m)), (None, 0)))(p, xs)
    assert rel_err(per_example(new), per_example(ref)) < 1e-5


@pytest.mark.parametrize("platform", ["cuda", "tpu"])
def test_accelerators_get_jax_own_convolutions(platform):
    """Lowered for GPU/TPU, the gradient computation contains exactly the convolutions plain
    Flax produces (cuDNN / the TPU emitter take it from there); lowered for CPU, only
    canonical ones."""
    ref, new = nn.Conv(8, (3, 3)), L.Conv(8, (3, 3))
    x = jnp.ones((2, 6, 6, 3))
    p = ref.init(jax.random.key(0), x)
    g = lambda m: jax.jit(jax.grad(loss(m), (0, 1)))

    def dims(m, plat):
        text = export.export(g(m), platforms=(plat,))(p, x).mlir_module()
        return sorted(d.replace(" ", "") for d in
                      re.findall(r"dim_numbers = (\[[^\]]*\]x\[[^\]]*\]->\[[^\]]*\])", text))

    assert dims(new, platform) == dims(ref, platform)
    assert len(set(dims(ref, platform))) == 3  # forward, input gradient, kernel gradient
    assert set(dims(new, "cpu")) == {"[b,0,1,f]x[0,1,i,o]->[b,0,1,f]"}


@pytest.mark.parametrize("k,s,padding,h", [(4, 2, "SAME", 7), (4, 2, "SAME", 1),
                                           (3, 2, "SAME", 4), (5, 3, "SAME", 4),
                                           (3, 2, "VALID", 4), (2, 2, "VALID", 3),
                                           (1, 1, "SAME", 3), (4, 3, "VALID", 2)])
def test_conv_transpose_equals_lax(k, s, padding, h):
    rng = np.random.default_rng(k * 10 + s)
    x = jnp.asarray(rng.normal(size=(2, h, h + 1, 3)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(k, k, 3, 5)), jnp.float32)
    want = lax.conv_transpose(x, w, (s, s), padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))
    got = jax.jit(L.conv_transpose, static_argnums=(2, 3))(x, w, (s, s), padding)
    assert got.shape == want.shape
    assert rel_err(got, want) < 1e-6


def test_conv_transpose_refuses_paddings_it_does_not_compute():
    """Anything but 'SAME'/'VALID' (e.g. lower case, explicit pads) is refused, never computed
    silently as 'VALID'."""
    x, w = jnp.ones((1, 4, 4, 1)), jnp.ones((3, 3, 1, 2))
    for padding in ("same", [(1, 1), (1, 1)]):
        with pytest.raises(ValueError, match="'SAME' or 'VALID'"):
            L.conv_transpose(x, w, (2, 2), padding)


def test_conv_transpose_parameters_are_float32_under_x64():
    """Flax's initialisers default to float64 under jax_enable_x64: the DCGAN generator's
    ConvTranspose kernels and biases were float64 there (its Dense and norms float32), so a GAN
    trained with x64 on wrote float64 leaves into its checkpoints."""
    conv = L.ConvTranspose(3, (4, 4), (2, 2))
    with jax.enable_x64(True):
        p = jax.eval_shape(conv.init, jax.random.key(0), jnp.zeros((1, 4, 4, 2), jnp.float32))
    assert {str(leaf.dtype) for leaf in jax.tree.leaves(p)} == {"float32"}
