"""Other forms of the `cnn`'s convolution gradients on XLA:CPU: a probe of what could lift the
∇τ `cnn` step (issue 15), kept because each form lost.

The `cnn`'s second convolution (14×14, 32 → 64 channels, 3×3) is 87 % of its step's arithmetic
(benchmarks/README.md §1). The library computes its two gradients as canonical convolutions
(``hyperforget_jax.layers``), which XLA:CPU runs with Eigen's kernels. Here each is replaced in
turn, during tracing only (the library's private tangent rules are swapped and restored), by:

* ``winograd``: Winograd's F(2×2, 3×3) (Lavin & Gray, CVPR 2016) for both gradients, 2.25×
  fewer products: the input gradient written so that its transpose reads the cotangent tile by
  tile (a Winograd convolution with the rotated kernel), the kernel gradient by JAX's transpose
  of the tile products;
* ``winograd dw``: the same for the kernel gradient alone;
* ``im2col dw``: the kernel gradient as one matrix product on a (N·H·W, 9·C) patch copy, the
  form the library uses for image layers (``layers._dw_tangent_gemm``);
* ``per-tap dw``: the kernel gradient as 9 matrix products, one per kernel tap.

Two programs per form, compiled with the library's XLA options (``hyperforget_jax.xla.jit``):
``conv 2 alone`` (the layer's output and both gradients for 64 images, 8 times in a
``lax.scan``) and ``whole cnn gradient`` (the model's loss gradient over 8 chunks of 64 images
summed in a ``lax.scan``: what ``unlearn()`` computes per 512-image ∇τ step on CPU). Timed
interleaved, medians; ``max rel. diff`` is against the library's form.

Run (≈ 1 min on 2 cores)::

    PYTHONPATH=. python benchmarks/conv_gradient_forms.py
"""

from __future__ import annotations

import contextlib
import functools
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax import lax  # noqa: E402

from benchmarks import common  # noqa: E402
from hyperforget_jax import layers, xla  # noqa: E402
from hyperforget_jax.cli import ArgumentParser  # noqa: E402
from hyperforget_jax.configflags import positive_int  # noqa: E402
from hyperforget_jax.models import make_architecture  # noqa: E402

NHWC = ("NHWC", "HWIO", "NHWC")
_G = np.array([[1, 0, 0], [.5, .5, .5], [.5, -.5, .5], [0, 0, 1]])


def _bt_views(x, axis, tiles):
    """Bᵀ along ``axis`` over the 4-long windows at stride 2."""
    views = []
    for k in range(4):
        start, limit, step = [0] * x.ndim, list(x.shape), [1] * x.ndim
        start[axis], limit[axis], step[axis] = k, k + 2 * (tiles - 1) + 1, 2
        views.append(lax.slice(x, start, limit, step))
    d0, d1, d2, d3 = views
    return [d0 - d2, d1 + d2, d2 - d1, d1 - d3]


def _at(m):
    return [m[0] + m[1] + m[2], m[1] - m[2] - m[3]]


def winograd_conv(x, w, pads, precision=None):
    """3×3, stride-1 convolution by F(2×2, 3×3): 16 tile products as one batched product."""
    n, h, wd, c = x.shape
    o = w.shape[-1]
    (pt, pb), (pl, pr) = pads
    oh, ow = h + pt + pb - 2, wd + pl + pr - 2
    th, tw = -(-oh // 2), -(-ow // 2)
    xp = lax.pad(x, jnp.zeros((), x.dtype), ((0, 0, 0), (pt, 2 * th + 2 - h - pt, 0),
                                          (pl, 2 * tw + 2 - wd - pl, 0), (0, 0, 0)))
    v = [col for row in _bt_views(xp, 1, th) for col in _bt_views(row, 2, tw)]
    v = jnp.stack(v).reshape(16, n * th * tw, c)
    g = jnp.asarray(_G, w.dtype)
    u = jnp.einsum("ai,ijco,bj->abco", g, w, g, precision=precision).reshape(16, c, o)
    m = lax.dot_general(v, u, (((2,), (1,)), ((0,), (0,))), precision=precision)
    m = m.reshape(4, 4, n, th, tw, o)
    y = jnp.stack([jnp.stack(_at(list(r)), axis=3) for r in _at(list(m))], axis=2)
    return y.reshape(n, 2 * th, 2 * tw, o)[:, :oh, :ow]


def _eligible(cfg, w):
    strides, pads, lhs_dilation, rhs_dilation, _ = cfg
    return (tuple(w.shape[:2]) == (3, 3) and tuple(strides) == (1, 1)
            and tuple(lhs_dilation) == (1, 1) and tuple(rhs_dilation) == (1, 1)
            and all(0 <= p <= 2 for pp in pads for p in pp))


def _dx_winograd(cfg, w, dx):
    """conv(dx, w) as the transpose of the Winograd convolution with the rotated kernel, so
    that reverse mode reads the cotangent tile by tile."""
    pads = cfg[1]
    w_t = jnp.flip(w, (0, 1)).swapaxes(2, 3)
    pads_t = tuple((2 - lo, 2 - hi) for lo, hi in pads)
    n, h, wd, _ = dx.shape
    ct = jax.ShapeDtypeStruct((n, h + sum(pads[0]) - 2, wd + sum(pads[1]) - 2, w.shape[-1]),
                              dx.dtype)
    (y,) = jax.linear_transpose(lambda c: winograd_conv(c, w_t, pads_t, cfg[4]), ct)(dx)
    return y


def _dw_winograd(cfg, x, dw):
    return winograd_conv(x, dw, cfg[1], cfg[4])


def _dw_per_tap(cfg, x, dw):
    kh, kw, c, o = dw.shape
    views = layers._taps(cfg, x, kh, kw)
    n, oh, ow, _ = views[0].shape
    terms = [lax.dot_general(v.reshape(n * oh * ow, c), dw[t // kw, t % kw],
                             (((1,), (0,)), ((), ())), precision=cfg[4])
             for t, v in enumerate(views)]
    return functools.reduce(lax.add, terms).reshape(n, oh, ow, o)


# form: (input-gradient tangent, kernel-gradient tangent), None = the library's
FORMS = {
    "library": (None, None),
    "winograd": (_dx_winograd, _dw_winograd),
    "winograd dw": (None, _dw_winograd),
    "im2col dw": (None, layers._dw_tangent_gemm),
    "per-tap dw": (None, _dw_per_tap),
}


@contextlib.contextmanager
def gradient_form(form):
    """Swaps the library's CPU tangent rules for 3×3 stride-1 layers past the image layers
    while a program is traced."""
    dx_form, dw_form = FORMS[form]
    dx_lib, dw_lib = layers._dx_tangent_cpu, layers._dw_tangent_cpu

    def dx_rule(cfg, w, dx):
        if dx_form and _eligible(cfg, w) and not layers._image_layer(dx, cfg[2]):
            return dx_form(cfg, w, dx)
        return dx_lib(cfg, w, dx)

    def dw_rule(cfg, x, dw):
        if dw_form and _eligible(cfg, dw) and not layers._image_layer(x, cfg[2]):
            return dw_form(cfg, x, dw)
        return dw_lib(cfg, x, dw)

    layers._dx_tangent_cpu, layers._dw_tangent_cpu = dx_rule, dw_rule
    try:
        yield
    finally:
        layers._dx_tangent_cpu, layers._dw_tangent_cpu = dx_lib, dw_lib


def conv2_program(chunk):
    """conv 2's output and both gradients for ``chunk`` images, 8 times in a scan."""
    def run(x, w, dy):
        def grads(x, w):
            y, vjp = jax.vjp(lambda x, w: layers.conv_general_dilated(
                x, w, (1, 1), "SAME", dimension_numbers=NHWC), x, w)
            return (y, *vjp(dy))

        # The outputs are accumulated, not summed: XLA:CPU fuses a convolution followed by a
        # reduction into one YNNPACK fusion, which would time YNNPACK's convolution instead.
        def body(acc, i):
            return jax.tree.map(jnp.add, acc, grads(x + 1e-3 * i, w)), None
        zeros = jax.tree.map(jnp.zeros_like, jax.eval_shape(grads, x, w))
        return lax.scan(body, zeros, jnp.arange(8.0))[0]
    return run


def cnn_program(arch):
    """The cnn's loss gradient over 8 chunks summed in a scan (unlearn()'s CPU step)."""
    def run(params, xs, ys):
        def loss(p, x, y):
            return -jnp.mean(jax.nn.log_softmax(arch.apply(p, x))[jnp.arange(len(y)), y])

        def body(acc, xy):
            return jax.tree.map(jnp.add, acc, jax.grad(loss)(params, *xy)), None
        return lax.scan(body, jax.tree.map(jnp.zeros_like, params), (xs, ys))[0]
    return run


def main(argv=None):
    ap = ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=positive_int, default=7)
    ap.add_argument("--chunk", type=positive_int, default=64, help="images per chunk (the library's "
                    "CPU chunk for the cnn is 64)")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=None)
    args = common.parse_args(ap, argv, quick={"repeats": 3, "chunk": 8})
    k = jax.random.split(jax.random.key(0), 6)
    n = args.chunk
    x = jax.random.normal(k[0], (n, 14, 14, 32))
    w = jax.random.normal(k[1], (3, 3, 32, 64)) / 17
    dy = jax.random.normal(k[2], (n, 14, 14, 64))
    arch = make_architecture("cnn", (28, 28, 1))
    params = arch.init(k[3])
    xs = jax.random.uniform(k[4], (8, n, 28, 28, 1))
    ys = jax.random.randint(k[5], (8, n), 0, 10)
    cases = {"conv 2 alone": (lambda: conv2_program(n), (x, w, dy)),
             "whole cnn gradient": (lambda: cnn_program(arch), (params, xs, ys))}
    rows = []
    for case, (make, case_args) in cases.items():
        compiled = {}
        for form in FORMS:
            with gradient_form(form):  # a new function per form: jit caches traces by function
                compiled[form] = xla.jit(make()).lower(*case_args).compile()
        ref = compiled["library"](*case_args)
        errs = {f: common.rel_err(c(*case_args), ref) for f, c in compiled.items()}
        times = common.interleaved(
            {f: (lambda c=c: jax.block_until_ready(c(*case_args))) for f, c in compiled.items()},
            args.repeats, alternate=True)
        t_lib = common.median(times["library"])
        for form in FORMS:
            t = common.median(times[form])
            rows.append({"program": case, "form": form, "ms": t * 1e3,
                         "vs library": t_lib / t, "max rel. diff": errs[form]})
    print(f"chunks of {n} images; {common.cpu_model()}, {common.num_cores()} cores")
    print(common.markdown_table(rows, ["program", "form", "ms", "vs library",
                                       "max rel. diff"]))
    path = common.write_json("conv_gradient_forms", {"config": vars(args), "rows": rows},
                             args.out)
    print(f"wrote {path}")
    return rows


if __name__ == "__main__":
    common.run_script("conv_gradient_forms", main)
