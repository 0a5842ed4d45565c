"""HyperForget sampling: what one unlearned model costs, and what vmapping requests buys.

The pretrained DiHyFo-2 on ``gpt_mlp`` (7,960 parameters) shipped with the package, DDIM with
``--steps`` steps. Contenders,
timed interleaved (each repeat runs every one in turn): ``sample`` (one request), and
``sample_many`` over N = 1, 10 (and ``--sizes``) requests. FLOPs per denoiser call come from
XLA's cost analysis of the compiled forward vmapped over N requests with θ₀ shared, as
``sample_many`` runs it; the peak is ``jnp.dot`` on two
2048×2048 float32 matrices in the same interleaving. The table says whether the CPU was idle
during one sample (a low GFLOP/s at N = 1 would leave room for batching) or already busy.

Run (≈ 1 min on 2 cores)::

    PYTHONPATH=. python benchmarks/bench_hyperforget_sampling.py
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from benchmarks import common  # noqa: E402
from hyperforget_jax import data  # noqa: E402
from hyperforget_jax.cli import ArgumentParser  # noqa: E402
from hyperforget_jax.configflags import positive_int  # noqa: E402
from hyperforget_jax.hyperforget import dihyfo  # noqa: E402


def denoiser_flops(spec: dihyfo.HyperSpec, hparams, n: int) -> float:
    """XLA's FLOP count of one denoiser call for ``n`` requests, batched as ``sample_many``
    batches them: ``vmap`` over the requests with the start network θ₀ shared (``in_axes``
    None), so its encoding is counted once, as it runs, not ``n`` times (a batch of ``n``
    θ₀'s counted ≈ 9 % more arithmetic at N = 10 and 32 than the program does)."""
    model, p, q = spec.model(), spec.arch.param_count, spec.weights.change_size
    args = (jnp.zeros((n, 1, q)), jnp.zeros((1, p)), jnp.zeros((n, 1, 4)),
            jnp.zeros((n, 1, spec.arch.num_classes)), jnp.zeros((n, 1), jnp.int32))
    fwd = jax.jit(jax.vmap(lambda x, z, s, c, t: model.apply({"params": hparams}, x, z, t, s, c),
                           in_axes=(0, None, 0, 0, 0)))
    return common.xla_flops(fwd.lower(*args).compile())


def main(argv=None):
    ap = ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="1,10,32", help="numbers of vmapped requests")
    ap.add_argument("--steps", type=positive_int, default=20, help="DDIM steps")
    ap.add_argument("--repeats", type=positive_int, default=7)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=None)
    args = common.parse_args(ap, argv, quick={"sizes": "1,4", "steps": 4, "repeats": 3})
    sizes = common.int_list(ap, args.sizes, "--sizes")

    splits = data.make_splits(data.load_mnist5k())
    net, params = common.pretrained_dihyfo2(splits)
    spec = net.spec
    prompts = [dihyfo.make_prompt(net, params, splits.train, (c % 10,))
               for c in range(max(sizes))]
    keys = jax.random.split(jax.random.key(1), max(sizes))

    a = jnp.ones((2048, 2048), jnp.float32)
    matmul = jax.jit(lambda x: x @ x)
    contenders = {
        "matmul": lambda: jax.block_until_ready(matmul(a)),
        "sample (1 request)": lambda: jax.block_until_ready(
            dihyfo.sample(keys[0], net, params, prompts[0], args.steps)),
    }
    for n in sizes:
        stacked = dihyfo.stack_prompts(prompts[:n])
        contenders[f"sample_many N={n}"] = (
            lambda n=n, stacked=stacked: jax.block_until_ready(
                dihyfo.sample_many(keys[:n], net, params, stacked, args.steps)))
    times = common.interleaved(contenders, args.repeats)
    peak = 2 * 2048 ** 3 / common.median(times.pop("matmul")) / 1e9

    flops = {n: denoiser_flops(spec, net.params, n) for n in sorted({1, *sizes})}
    t_one = common.median(times["sample (1 request)"])
    t_v1 = common.median(times.get("sample_many N=1", times["sample (1 request)"]))
    rows = []
    for name, ts in times.items():
        n = 1 if name.startswith("sample (") else int(name.split("=")[1])
        t = common.median(ts)
        gflops = flops[n] * args.steps / t / 1e9
        rows.append({"contender": name, "requests": n, "ms": t * 1e3,
                     "ms per request": t * 1e3 / n, "vs one sample": t / t_one,
                     "vs sample_many N=1": t / t_v1,
                     "MFLOP per denoiser call": flops[n] / 1e6, "GFLOP/s": gflops,
                     "% of peak": 100 * gflops / peak})
    print(f"matmul peak {peak:.0f} GFLOP/s; DDIM {args.steps} steps")
    print(common.markdown_table(rows, ["contender", "requests", "ms", "ms per request",
                                       "vs one sample", "vs sample_many N=1",
                                       "MFLOP per denoiser call", "GFLOP/s", "% of peak"]))
    warning = common.peak_understated(rows, "% of peak")   # (a row at 124 % said nothing)
    if warning:
        print(warning)
    path = common.write_json("hyperforget_sampling", {"config": vars(args), "peak_gflops": peak,
                                                      "rows": rows,
                                                      "peak_understated": warning is not None},
                             args.out)
    print(f"wrote {path}")
    return rows


if __name__ == "__main__":
    common.run_script("bench_hyperforget_sampling", main)
