"""Convolution layers: ``hyperforget_jax.layers.conv_general_dilated`` against lax's own.

One layer at a time, compiled with the library's XLA options (``hyperforget_jax.xla.jit``) for
both contenders, timed interleaved (each repeat runs every contender in turn, in reverse order
every other repeat: in a fixed order identical programs differed by up to 25 % here), medians:

* ``forward``: the layer's output;
* ``forward + gradients``: the output and the gradient of ⟨output, cotangent⟩ with respect to
  the kernel (and to the input for layers that are not the first: an image has no gradient).

``lax`` is ``lax.conv_general_dilated`` with JAX's own derivative; ``library`` is the layer the
package's models use. Layers with at most ``layers.GEMM_KERNEL_GRAD_MAX_CHANNELS`` input
channels (image layers) run without any convolution on CPU: the forward pass as a fused sum of
shifted views, the kernel gradient as one matrix product. Wider layers are unchanged (the
``cnn`` second layer is the control). The cases are the first layers of the package's models
at the batch sizes they run at.

Run (≈ 1 min on 2 cores)::

    PYTHONPATH=. python benchmarks/bench_conv_layers.py
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import jax  # noqa: E402
from jax import lax  # noqa: E402

from benchmarks import common  # noqa: E402
from hyperforget_jax import layers, xla  # noqa: E402
from hyperforget_jax.cli import ArgumentParser  # noqa: E402
from hyperforget_jax.configflags import positive_int  # noqa: E402

NHWC = ("NHWC", "HWIO", "NHWC")
# name: (input shape, kernel shape, strides, first layer?)
CASES = {
    "cnn conv 1 (∇τ, 256 + 256)": ((512, 28, 28, 1), (3, 3, 1, 32), (1, 1), True),
    "cnn conv 2 (control, 32 channels in)": ((512, 14, 14, 32), (3, 3, 32, 64), (1, 1), False),
    "dcgan D conv 1 (cascade round, 3 × 64)": ((192, 28, 28, 1), (4, 4, 1, 32), (2, 2), True),
    "resnet18 stem (CIFAR, 128)": ((128, 32, 32, 3), (3, 3, 3, 64), (1, 1), True),
}


def programs(conv, strides, first):
    fwd = lambda x, w, dy: conv(x, w, strides, "SAME", dimension_numbers=NHWC)

    def grads(x, w, dy):
        y, vjp = jax.vjp(lambda x, w: fwd(x, w, dy), x, w)
        dx, dw = vjp(dy)
        return (y, dw) if first else (y, dx, dw)
    return xla.jit(fwd), xla.jit(grads)


def main(argv=None):
    ap = ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=positive_int, default=16)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=None)
    args = common.parse_args(ap, argv, quick={"repeats": 3})
    rows = []
    for name, (xs, ws, strides, first) in CASES.items():
        if args.quick:
            xs = (16,) + xs[1:]
        kx, kw, kd = jax.random.split(jax.random.key(0), 3)
        x, w = jax.random.normal(kx, xs), jax.random.normal(kw, ws) / ws[0]
        dy = jax.random.normal(kd, jax.eval_shape(
            lambda x, w: lax.conv_general_dilated(x, w, strides, "SAME",
                                                  dimension_numbers=NHWC), x, w).shape)
        progs = {impl: programs(conv, strides, first) for impl, conv in
                 (("lax", lax.conv_general_dilated), ("library", layers.conv_general_dilated))}
        # Each path's own difference (the forward rows showed the gradients' before stop 62).
        err = {path: common.rel_err(progs["library"][i](x, w, dy), progs["lax"][i](x, w, dy))
               for i, path in enumerate(("forward", "forward + gradients"))}
        contenders = {f"{impl} {path}": (lambda f=f: jax.block_until_ready(f(x, w, dy)))
                      for impl, (fwd, grads) in progs.items()
                      for path, f in (("forward", fwd), ("forward + gradients", grads))}
        times = common.interleaved(contenders, args.repeats, alternate=True)
        for path in ("forward", "forward + gradients"):
            t_lax = common.median(times[f"lax {path}"])
            t_lib = common.median(times[f"library {path}"])
            rows.append({"layer": name, "input": "×".join(map(str, xs)),
                         "kernel": "×".join(map(str, ws)), "path": path,
                         "lax ms": t_lax * 1e3, "library ms": t_lib * 1e3,
                         "speed-up": t_lax / t_lib, "max rel. diff": err[path]})
    print(common.markdown_table(rows, ["layer", "input", "kernel", "path", "lax ms",
                                       "library ms", "speed-up", "max rel. diff"]))
    path = common.write_json("conv_layers", {"config": vars(args), "rows": rows}, args.out)
    print(f"wrote {path}")
    return rows


if __name__ == "__main__":
    common.run_script("bench_conv_layers", main)
