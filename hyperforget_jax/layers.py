"""Convolutions whose gradients stay fast inside XLA:CPU loops, and the Flax layers that use them.

Why this module exists: XLA:CPU runs a convolution with its fast library kernels (YNNPACK or
Eigen) only when the convolution is *canonical* (input NHWC, kernel HWIO, output NHWC). JAX's
autodiff of an NHWC/HWIO convolution produces two that are not: the input gradient uses the
kernel as HWOI (``b01f_01oi->b01f``) and the kernel gradient contracts over the batch
(``f01b_i01o->01bf``). XLA:CPU's ``ConvCanonicalization`` pass rewrites such convolutions into
transposes + a canonical convolution, but only in the *entry* computation
(``module->entry_computation()`` in xla/service/cpu/conv_canonicalization.cc). A convolution in
a ``while`` body — every ``lax.scan`` / ``fori_loop``, i.e. every scanned training epoch and
every ``unlearn()`` forget-epoch here — keeps its layout and falls back to XLA's generic loop
emitter: 10–100× slower (jax-ml/jax#12868; measured 28 s instead of 0.6 s per ∇τ step of the
``cnn`` at batch 256 + 256, benchmarks/README.md §1).

:func:`conv_general_dilated` is a drop-in for ``lax.conv_general_dilated`` that does the
canonicalisation itself, at the JAX level, so it holds in any computation: the forward pass is
the same ``lax.conv_general_dilated`` call (bit-identical output), and a ``custom_jvp`` writes
the two tangent convolutions with dimension numbers chosen so that JAX's own transpose rules
yield canonical convolutions (plus explicit transposes) in reverse mode. Nothing is
approximated: the gradients are the same sums as XLA's, equal to ≤ 1e-6 relative (tests), and
every transformation keeps working (``grad``, ``jvp``, ``vmap``, ``grad`` of ``grad``, ``pmap``,
sharding), because the rule is itself made of ordinary convolutions.

Image layers (at most :data:`GEMM_KERNEL_GRAD_MAX_CHANNELS` input channels, float32/64) are the
exception on CPU: their forward pass is a fused sum of shifted views of the input times kernel
rows, and their kernel gradient one matrix product on an im2col copy; neither is a convolution.
The same sums in another order: ≤ 1e-6 relative to lax's convolution (tests); the ``cnn``'s
first layer runs 1.8× faster forward + kernel gradient (``benchmarks/bench_conv_layers.py``).

Only CPU gets the rewritten forms: the rules pick them with ``lax.platform_dependent`` when the
computation is lowered, and every other platform (cuDNN on GPU, the TPU convolution emitter)
gets exactly lax's convolution and JAX's own tangent, ``conv(dx, w) + conv(x, dw)``, hence its
usual transposes. No XLA flag is set or needed.

Scope: 2-D convolutions in NHWC/HWIO layout with ``feature_group_count == batch_group_count ==
1`` (every model of this package). Anything else is passed to ``lax.conv_general_dilated``
unchanged. Forward-mode derivatives (``jax.jvp``) are correct but run the non-canonical tangent
convolutions (slow inside CPU loops, as before). One known gap: when a convolution's output is
spatially *larger* than its input (e.g. a ``'VALID'`` transposed convolution), XLA swaps the
operands of the kernel-gradient convolution after our rewrite and that one convolution is
non-canonical again; ``'SAME'`` convolutions and ``'SAME'`` transposed convolutions (every model
here) are not affected (tests/test_layers.py checks the compiled loops).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.custom_derivatives import SymbolicZero

_NHWC = ("NHWC", "HWIO", "NHWC")
# (batch, feature, spatial...) positions of the canonical layouts, as lax spells them.
_CANONICAL = lax.ConvDimensionNumbers((0, 3, 1, 2), (3, 2, 0, 1), (0, 3, 1, 2))
# Input-gradient tangent: the kernel stored (kh, kw, O, I) and read as HWOI. JAX transposes it
# into a convolution that reads the same array as HWIO, i.e. canonical.
_DX_TANGENT = lax.ConvDimensionNumbers((0, 3, 1, 2), (2, 3, 0, 1), (0, 3, 1, 2))
# Kernel-gradient tangent: input stored (C, H, W, N), kernel (I, kh, kw, O), output (H, W, N, O).
# Its transpose w.r.t. the kernel is conv(input (C,H,W,N) as NHWC, cotangent (H,W,N,O) as HWIO)
# -> (I, kh, kw, O) as NHWC: the canonical convolution XLA would build outside loops.
_DW_TANGENT = lax.ConvDimensionNumbers((3, 0, 1, 2), (3, 0, 1, 2), (2, 3, 0, 1))


def conv_general_dilated(lhs: jax.Array, rhs: jax.Array, window_strides: Sequence[int],
                         padding: str | Sequence[tuple[int, int]],
                         lhs_dilation: Sequence[int] | None = None,
                         rhs_dilation: Sequence[int] | None = None,
                         dimension_numbers: Any = None, feature_group_count: int = 1,
                         batch_group_count: int = 1, precision: Any = None,
                         preferred_element_type: Any = None) -> jax.Array:
    """``lax.conv_general_dilated`` with gradients that are canonical XLA:CPU convolutions.

    Same signature and same result as ``lax.conv_general_dilated``; pass it to Flax as
    ``nn.Conv(..., conv_general_dilated=layers.conv_general_dilated)`` (parameters unchanged).

    Args:
      lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
      feature_group_count, batch_group_count, precision, preferred_element_type: as in
        ``lax.conv_general_dilated``.

    Returns:
      The convolution; its derivatives take the CPU-friendly form described in the module
      docstring for 2-D NHWC/HWIO convolutions without groups, and are JAX's own otherwise.
    """
    nd = lhs.ndim - 2
    dn = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
    if (nd != 2 or dn != _CANONICAL or feature_group_count != 1 or batch_group_count != 1
            or preferred_element_type is not None):
        return lax.conv_general_dilated(
            lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
            feature_group_count, batch_group_count, precision, preferred_element_type)
    strides = tuple(int(s) for s in window_strides)
    lhs_dilation = tuple(int(d) for d in (lhs_dilation or (1,) * nd))
    rhs_dilation = tuple(int(d) for d in (rhs_dilation or (1,) * nd))
    if isinstance(padding, str):
        if lhs_dilation != (1,) * nd:  # lax refuses this too; let it say so
            return lax.conv_general_dilated(lhs, rhs, strides, padding, lhs_dilation,
                                            rhs_dilation, dimension_numbers,
                                            precision=precision)
        window = [(k - 1) * d + 1 for k, d in zip(rhs.shape[:2], rhs_dilation)]
        padding = lax.padtype_to_pads(lhs.shape[1:3], window, strides, padding)
    pads = tuple((int(lo), int(hi)) for lo, hi in padding)
    return _conv(strides, pads, lhs_dilation, rhs_dilation, precision, lhs, rhs)


@functools.partial(jax.custom_jvp, nondiff_argnums=(0, 1, 2, 3, 4))
def _conv(strides, pads, lhs_dilation, rhs_dilation, precision, x, w):
    cfg = (strides, pads, lhs_dilation, rhs_dilation, precision)
    if _few_input_channels(x, w, lhs_dilation):
        return lax.platform_dependent(x, w, cpu=functools.partial(_conv_taps, cfg),
                                      default=functools.partial(_conv_native, cfg))
    return _conv_native(cfg, x, w)


def _conv_native(cfg, x, w):
    strides, pads, lhs_dilation, rhs_dilation, precision = cfg
    return lax.conv_general_dilated(x, w, strides, pads, lhs_dilation, rhs_dilation, _NHWC,
                                    precision=precision)


#: Layers with at most this many input channels (image layers: 1 or 3) run differently on CPU.
#: Their forward pass is a sum of kh·kw·C_in shifted copies of the input, each scaled by one
#: row of the kernel: one elementwise loop that XLA fuses, instead of a convolution whose
#: contraction has only kh·kw·C_in terms per output (Eigen's kernels: ≈ 1.3× slower on the
#: ``cnn``'s first layer). Their kernel gradient is one matrix product on an im2col copy of the
#: input instead of the canonical kernel-gradient convolution, which batches over the input
#: channels and so has almost no parallel work and one enormous window (MNIST: 9 outputs per
#: channel, a 28×28×256 window): ≈ 3× slower than the product. The copy is kh·kw·C_in floats
#: per output pixel, i.e. small exactly when C_in is (benchmarks/README.md §1).
GEMM_KERNEL_GRAD_MAX_CHANNELS = 4


def _image_layer(x, lhs_dilation) -> bool:
    return x.shape[-1] <= GEMM_KERNEL_GRAD_MAX_CHANNELS and lhs_dilation == (1, 1)


def _few_input_channels(x, w, lhs_dilation) -> bool:
    """The forward pass as shifted views: image layers in float32/64 only (other dtypes keep
    lax's convolution and its own choice of accumulation)."""
    return (_image_layer(x, lhs_dilation) and x.dtype == w.dtype
            and x.dtype in (jnp.float32, jnp.float64))


def _taps(cfg, x, kh, kw):
    """The kh·kw shifted, strided views of the padded input, each (N, OH, OW, C), in kernel
    order (row-major over the window)."""
    strides, pads, _, rhs_dilation, _ = cfg
    n, _, _, c = x.shape
    xp = lax.pad(x, jnp.zeros((), x.dtype), ((0, 0, 0), (*pads[0], 0), (*pads[1], 0), (0, 0, 0)))
    oh = (xp.shape[1] - (kh - 1) * rhs_dilation[0] - 1) // strides[0] + 1
    ow = (xp.shape[2] - (kw - 1) * rhs_dilation[1] - 1) // strides[1] + 1
    return [lax.slice(xp, (0, i * rhs_dilation[0], j * rhs_dilation[1], 0),
                      (n, i * rhs_dilation[0] + (oh - 1) * strides[0] + 1,
                       j * rhs_dilation[1] + (ow - 1) * strides[1] + 1, c),
                      (1, *strides, 1))
            for i in range(kh) for j in range(kw)]


def _conv_taps(cfg, x, w):
    """The convolution as Σ over kernel taps and input channels of view · kernel row."""
    kh, kw, c, o = w.shape
    rows = w.reshape(kh * kw, c, o)
    terms = [view[..., ci:ci + 1] * rows[t, ci]
             for t, view in enumerate(_taps(cfg, x, kh, kw)) for ci in range(c)]
    return functools.reduce(lax.add, terms)


def _conv_jvp(strides, pads, lhs_dilation, rhs_dilation, precision, primals, tangents):
    x, w = primals
    dx, dw = tangents
    cfg = (strides, pads, lhs_dilation, rhs_dilation, precision)
    y = _conv(*cfg, x, w)
    parts = []
    if not isinstance(dx, SymbolicZero):  # e.g. the images of the first layer: no input grad
        parts.append(lax.platform_dependent(
            w, dx, cpu=functools.partial(_dx_tangent_cpu, cfg),
            default=functools.partial(_dx_tangent_native, cfg)))
    if not isinstance(dw, SymbolicZero):
        parts.append(lax.platform_dependent(
            x, dw, cpu=functools.partial(_dw_tangent_cpu, cfg),
            default=functools.partial(_dw_tangent_native, cfg)))
    return y, (sum(parts[1:], parts[0]) if parts else jnp.zeros_like(y))


_conv.defjvp(_conv_jvp, symbolic_zeros=True)


def _dx_tangent_native(cfg, w, dx):
    strides, pads, lhs_dilation, rhs_dilation, precision = cfg
    return lax.conv_general_dilated(dx, w, strides, pads, lhs_dilation, rhs_dilation, _NHWC,
                                    precision=precision)


def _dw_tangent_native(cfg, x, dw):
    strides, pads, lhs_dilation, rhs_dilation, precision = cfg
    return lax.conv_general_dilated(x, dw, strides, pads, lhs_dilation, rhs_dilation, _NHWC,
                                    precision=precision)


def _dx_tangent_cpu(cfg, w, dx):
    strides, pads, lhs_dilation, rhs_dilation, precision = cfg
    return lax.conv_general_dilated(dx, jnp.swapaxes(w, 2, 3), strides, pads, lhs_dilation,
                                    rhs_dilation, _DX_TANGENT, precision=precision)


def _dw_tangent_cpu(cfg, x, dw):
    strides, pads, lhs_dilation, rhs_dilation, precision = cfg
    if _image_layer(x, lhs_dilation):
        return _dw_tangent_gemm(cfg, x, dw)
    y = lax.conv_general_dilated(x.transpose(3, 1, 2, 0), dw.transpose(2, 0, 1, 3), strides,
                                 pads, lhs_dilation, rhs_dilation, _DW_TANGENT,
                                 precision=precision)
    return y.transpose(2, 0, 1, 3)


def _dw_tangent_gemm(cfg, x, dw):
    """conv(x, dw) as patches (N·OH·OW, kh·kw·C) · dw (kh·kw·C, O), reshaped to (N, OH, OW, O).
    Its transpose w.r.t. dw is one 2-D matrix product, patchesᵀ · cotangent: no convolution,
    and 3× faster than contracting (N, OH, OW) as three separate dimensions."""
    kh, kw, c, o = dw.shape
    views = _taps(cfg, x, kh, kw)
    n, oh, ow, _ = views[0].shape
    patches = jnp.stack(views, axis=3).reshape(n * oh * ow, kh * kw * c)
    return lax.dot_general(patches, dw.reshape(kh * kw * c, o), (((1,), (0,)), ((), ())),
                           precision=cfg[4]).reshape(n, oh, ow, o)


# --- Flax layers -----------------------------------------------------------------------------

def Conv(features: int, kernel_size: Sequence[int], strides: int | Sequence[int] = 1,
         padding: Any = "SAME", **kwargs) -> nn.Conv:
    """``flax.linen.Conv`` computing with :func:`conv_general_dilated` (same parameters, same
    names ``Conv_i``, same outputs; only the derivatives' form differs)."""
    return nn.Conv(features=features, kernel_size=tuple(kernel_size), strides=strides,
                   padding=padding, conv_general_dilated=conv_general_dilated, **kwargs)


def _transpose_pads(k: int, s: int, padding: str) -> tuple[int, int]:
    # lax.conv_transpose's padding for 'SAME' / 'VALID' (jax/_src/lax/convolution.py).
    if padding == "SAME":
        pad_len = k + s - 2
        pad_a = k - 1 if s > k - 1 else -(-pad_len // 2)
    else:
        pad_len = k + s - 2 + max(k - s, 0)
        pad_a = k - 1
    return pad_a, pad_len - pad_a


def _phase_taps(k: int, s: int, pad_a: int) -> tuple[int, np.ndarray]:
    """Sub-pixel plan of one spatial dimension of a transposed convolution.

    ``y[s·a + r] = Σ_t [(r + t − pad_a) ≡ 0 mod s] · x[a + (r + t − pad_a)/s] · w[t]``: output
    phase r reads input offsets δ = (r + t − pad_a)/s. Returns δ_min and ``taps[r, j]`` = the
    kernel tap t used by phase r at offset δ_min + j, or −1 where that phase reads nothing."""
    deltas = [(r + t - pad_a) // s for r in range(s) for t in range(k)
              if (r + t - pad_a) % s == 0]
    lo, hi = min(deltas), max(deltas)
    taps = np.full((s, hi - lo + 1), -1, np.int64)
    for r in range(s):
        for j in range(hi - lo + 1):
            t = s * (lo + j) + pad_a - r
            if 0 <= t < k:
                taps[r, j] = t
    return lo, taps


def conv_transpose(x: jax.Array, kernel: jax.Array, strides: Sequence[int],
                   padding: str = "SAME", precision: Any = None) -> jax.Array:
    """``lax.conv_transpose(x, kernel, strides, padding)`` (NHWC, HWIO, ``transpose_kernel=False``,
    ``'SAME'``/``'VALID'``) as one stride-1 convolution plus a pixel shuffle.

    The transposed convolution is a convolution of the input dilated by the stride: most of
    the products it computes are with inserted zeros (12 of 16 for a 4×4 kernel at stride 2),
    and its kernel gradient makes XLA swap the operands into a non-canonical convolution. Here
    each of the s₁·s₂ output phases is written as its own small kernel over the *undilated*
    input (the sub-pixel decomposition); the phases share one window and are stacked along the
    output channels, so the work is a single canonical convolution (1.8× fewer products for a
    4×4 kernel at stride 2) whose derivatives stay canonical. Same products as the dilated
    form, summed in another order: equal to float rounding.

    Args:
      x: (N, H, W, C) input.
      kernel: (kh, kw, C, O), as in ``flax.linen.ConvTranspose``.
      strides: (sh, sw) up-sampling factors.
      padding: ``'SAME'`` or ``'VALID'`` (lax.conv_transpose's convention).
      precision: as in ``lax.conv_general_dilated``.

    Returns:
      (N, H', W', O), H' = (H − 1)·sh + 1 + pad_a + pad_b − kh + 1 as in lax.
    """
    if padding not in ("SAME", "VALID"):
        raise ValueError(f"conv_transpose padding must be 'SAME' or 'VALID', got {padding!r}")
    n, h, w, c = x.shape
    kh, kw, _, o = kernel.shape
    (sh, sw) = (int(v) for v in strides)
    (ph, qh), (pw, qw) = _transpose_pads(kh, sh, padding), _transpose_pads(kw, sw, padding)
    out_h, out_w = (h - 1) * sh + 1 + ph + qh - kh + 1, (w - 1) * sw + 1 + pw + qw - kw + 1
    lo_h, taps_h = _phase_taps(kh, sh, ph)
    lo_w, taps_w = _phase_taps(kw, sw, pw)
    # Phase kernel (jh, jw, C, sh, sw, O): tap (taps_h[rh, jh], taps_w[rw, jw]) or zero.
    th = np.maximum(taps_h, 0).T[:, None, :, None]          # (jh, 1, rh, 1)
    tw = np.maximum(taps_w, 0).T[None, :, None, :]          # (1, jw, 1, rw)
    valid = (taps_h.T[:, None, :, None] >= 0) & (taps_w.T[None, :, None, :] >= 0)
    phase = kernel[th, tw]                                   # (jh, jw, rh, rw, C, O)
    phase = jnp.where(valid[..., None, None], phase, 0).transpose(0, 1, 4, 2, 3, 5)
    jh, jw = phase.shape[:2]
    phase = phase.reshape(jh, jw, c, sh * sw * o)
    a_h, a_w = -(-out_h // sh), -(-out_w // sw)              # input rows/cols per phase
    pads = ((-lo_h, a_h - h + jh - 1 + lo_h), (-lo_w, a_w - w + jw - 1 + lo_w))
    if min(min(p) for p in pads) < 0:  # exotic paddings: the dilated form, still canonical fwd
        return conv_general_dilated(x, kernel, (1, 1), [(ph, qh), (pw, qw)],
                                    lhs_dilation=(sh, sw), dimension_numbers=_NHWC,
                                    precision=precision)
    z = conv_general_dilated(x, phase, (1, 1), pads, dimension_numbers=_NHWC,
                             precision=precision)           # (N, a_h, a_w, sh·sw·O)
    y = z.reshape(n, a_h, a_w, sh, sw, o).transpose(0, 1, 3, 2, 4, 5)
    return y.reshape(n, a_h * sh, a_w * sw, o)[:, :out_h, :out_w]


class ConvTranspose(nn.Module):
    """``flax.linen.ConvTranspose`` (``transpose_kernel=False``, 2-D, ``'SAME'``/``'VALID'``
    padding) computed by :func:`conv_transpose`: same parameter names
    (``ConvTranspose_i/{kernel,bias}``), shapes, initialisers, and outputs to float rounding.

    Attributes:
      features: output channels.
      kernel_size: (kh, kw).
      strides: (sh, sw), the up-sampling factors.
      padding: ``'SAME'`` or ``'VALID'`` (lax.conv_transpose's convention).
      use_bias: add a bias per output channel.
      kernel_init, bias_init: as in Flax (LeCun normal, zeros).
      param_dtype: the parameters' dtype, as in Flax (float32 whatever ``jax_enable_x64`` says:
        the initialisers' own default, ``jnp.float_``, made the DCGAN's generator half float64
        under x64).
    """

    features: int
    kernel_size: Sequence[int]
    strides: Sequence[int] = (1, 1)
    padding: str = "SAME"
    use_bias: bool = True
    kernel_init: Callable = nn.initializers.lecun_normal()
    bias_init: Callable = nn.initializers.zeros
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k = tuple(self.kernel_size)
        kernel = self.param("kernel", self.kernel_init, (*k, x.shape[-1], self.features),
                            self.param_dtype)
        y = conv_transpose(x, kernel.astype(x.dtype), tuple(self.strides), self.padding)
        if self.use_bias:
            y = y + self.param("bias", self.bias_init, (self.features,), self.param_dtype)
        return y
