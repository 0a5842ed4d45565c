"""What grows with the data and the model: the figures of the README's "Limits at scale".

Nothing is run at CIFAR size: each figure is read from XLA's memory analysis of the compiled
program (``temp_size_in_bytes``: the activations a call holds) or from ``jax.eval_shape``
(parameter counts, nothing allocated), at small sizes, and extrapolated linearly in the stated
unit.

- ``one call``: the ``cnn`` on N 32×32×3 images in one forward pass (SCRUB / Bad Teacher
  teacher logits, U-LiRA's confidences and ∇τ's τ before they were chunked): MB per image
  (the slope between two sizes: what each more image adds).
- ``corpus metrics``: a call of :func:`~hyperforget_jax.hyperforget.corpus.make_metrics_fn`'s
  program (64 checkpoints of the 3072-256-256-10 ``mlp`` over N images): KB per image and
  checkpoint (the slope; the checkpoints themselves are a fixed part).
- ``denoiser``: HyperForget's denoiser parameters for an MLP target 3072→h→h→100 of P
  parameters, with G.pt's chunk tokens and with unit tokens.
- ``mia_efficacy_svc``: the seconds of one call on N points (the RBF SVC's fit, which grows
  faster than N; the only figure here that runs and is timed, once per size). N = 2 ×
  min(|D_r|, |test|): 2,000 / 8,000 / 32,000 points for 3,500 / 14,000 / 56,000 training
  images split 70 / 10 / 20.

Run (≈ 30 s on 2 cores, half of it the 32,000-point SVC)::

    PYTHONPATH=. python benchmarks/bench_scale.py
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks import common  # noqa: E402
from hyperforget_jax import metrics, models, params as P_  # noqa: E402
from hyperforget_jax.cli import ArgumentParser  # noqa: E402
from hyperforget_jax.hyperforget.denoiser import GptDenoiser  # noqa: E402

MB = 2.0 ** 20


def temp_bytes(fn, *args) -> float:
    """Bytes of temporaries XLA reserves for one call of ``jax.jit(fn)(*args)``."""
    return float(jax.jit(fn).lower(*args).compile().memory_analysis().temp_size_in_bytes)


def _rows(figure: str, sizes, bytes_at, unit: str, scale: float, cifar_n: int,
          cifar_unit: str) -> list[dict]:
    """One row per size: the call's temporaries, and the marginal bytes per image (the slope
    from the previous size; what a larger set adds) in ``unit`` (bytes / ``scale``), and the
    call at ``cifar_n`` images extrapolated along the last slope."""
    b = [bytes_at(n) for n in sizes]
    rows = []
    for i, n in enumerate(sizes):
        j = max(i, 1)
        slope = (b[j] - b[j - 1]) / (sizes[j] - sizes[j - 1])
        rows.append({"figure": figure, "N": n, "MB": b[i] / MB, "per unit": slope / scale,
                     "unit": unit, "at CIFAR-10 size": (b[i] + slope * (cifar_n - n)) / 2 ** 30,
                     "CIFAR unit": cifar_unit})
    return rows


def one_call(sizes) -> list[dict]:
    arch = models.make_architecture("cnn", (32, 32, 3), 10)
    p = jax.eval_shape(arch.init, jax.random.key(0))
    return _rows("one call: cnn forward", sizes, lambda n: temp_bytes(
        arch.apply, p, jax.ShapeDtypeStruct((n, 32, 32, 3), jnp.float32)),
        "MB per image", MB, 45_000, "GiB for 45,000 retain images")


def corpus_metrics(sizes, chunk: int = 64) -> list[dict]:
    """The program of ``corpus.make_metrics_fn`` (one split), ``chunk`` flat checkpoints."""
    arch = models.make_architecture("mlp", (32, 32, 3), 10)
    template = arch.param_shapes()
    P = sum(int(np.prod(s.shape)) for s in jax.tree.leaves(template))

    def one(flat, x, y):
        logits = arch.apply(P_.unflatten(flat, template), x)
        return jnp.mean(jnp.argmax(logits, -1) == y)

    fn = jax.vmap(one, in_axes=(0, None, None))
    return _rows(f"corpus metrics: {chunk} checkpoints of the mlp ({P:,} parameters)", sizes,
                 lambda n: temp_bytes(fn, jax.ShapeDtypeStruct((chunk, P), jnp.float32),
                                      jax.ShapeDtypeStruct((n, 32, 32, 3), jnp.float32),
                                      jax.ShapeDtypeStruct((n,), jnp.int32)),
                 "KB per image and checkpoint", 1024 * chunk, 60_000,
                 f"GiB for {chunk} checkpoints over 60,000 images")


def denoiser(widths) -> list[dict]:
    rows = []
    for h in widths:
        f = lambda *s: jax.ShapeDtypeStruct(s, jnp.float32)
        target = {"Dense_0": {"kernel": f(3072, h), "bias": f(h)},
                  "Dense_1": {"kernel": f(h, h), "bias": f(h)},
                  "Dense_2": {"kernel": f(h, 100), "bias": f(100)}}
        spans = tuple(P_.param_spans(target))
        P = spans[-1].stop
        for tokens in ("chunks", "units"):
            den = GptDenoiser(spans, tuple(range(len(spans))), tokens, num_scalars=4,
                              num_classes=100)
            z = jnp.zeros((2, P))
            shapes = jax.eval_shape(lambda: den.init(
                jax.random.key(0), z, z, jnp.zeros((2,), jnp.int32), jnp.zeros((2, 4)),
                jnp.zeros((2, 100), bool)))
            n = sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(shapes))
            rows.append({"figure": f"denoiser, {tokens} tokens", "N": P, "MB": 4 * n / MB,
                         "per unit": n / P, "unit": "parameters per target parameter",
                         "at CIFAR-10 size": n / 1e6, "CIFAR unit": "M parameters"})
    return rows


def svc(points) -> list[dict]:
    """One timed call of ``metrics.mia_efficacy_svc`` per size: N / 2 retain and N / 2 test
    confidences (Beta-distributed, overlapping as a trained model's are), 100 forget ones."""
    rows = []
    rng = np.random.default_rng(0)
    metrics.mia_efficacy_svc(rng.random(10), rng.random(10), rng.random(5))  # sklearn's import
    for n in points:
        conf = lambda k, a: rng.beta(a, 1.0, k)
        args = conf(n // 2, 8.0), conf(n // 2, 5.0), conf(100, 6.0)
        t = time.perf_counter()
        metrics.mia_efficacy_svc(*args)
        rows.append({"figure": "mia_efficacy_svc: one call", "N": n, "MB": None,
                     "per unit": time.perf_counter() - t, "unit": "seconds (N points)",
                     "at CIFAR-10 size": None, "CIFAR unit": None})
    return rows


def main(argv=None):
    ap = ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (seconds)")
    ap.add_argument("--out", help="JSON path (default benchmarks/results/scale.json)")
    args = common.parse_args(ap, argv)
    sizes = (100, 200) if args.quick else (500, 1000, 2000)
    widths = (32,) if args.quick else (32, 256, 1024)
    points = (500, 1000) if args.quick else (2000, 8000, 32000)
    rows = [*one_call(sizes), *corpus_metrics(sizes), *denoiser(widths), *svc(points)]
    print(common.markdown_table(rows, ["figure", "N", "MB", "per unit", "unit",
                                       "at CIFAR-10 size", "CIFAR unit"]))
    path = common.write_json("scale", {"config": vars(args), "rows": rows}, args.out)
    print(f"wrote {path}")
    return rows


if __name__ == "__main__":
    common.run_script("bench_scale", main)
