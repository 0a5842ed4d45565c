"""Fleets: N models trained at once by one vmapped step, against a loop of single-model steps.

For N in (1, 8, 32, 128) models of ``gpt_mlp`` (784→10→10, G.pt's MNIST MLP, the HyperForget
corpus network) and ``mlp`` (784→256→256→10), each model with its own batch of 128 real
MNIST-5k images, the classifier training step of ``hyperforget_jax.train``:

  * ``jax vmap``: ``jax.jit(jax.vmap(make_train_step(...)), donate_argnums=0)`` with plain
    AdamW and ``make_train_step``'s explicit guard (one call per fleet step). This was
    ``fit_fleet``'s step until 05ee135; ``fit_fleet`` now runs ``make_train_step(...,
    guard=False)`` with ``skip_nonfinite(adamw)`` (``train.make_optimizer``), which only the
    ``scan (fit_fleet)`` row times;
  * ``jax vmap scan (fit_fleet)``: the same vmapped step as ``fit_fleet`` compiles it: the
    block's steps under one ``lax.scan``, batches gathered on device (one dispatch per block);
  * ``jax vmap, shared batch``: the vmapped step with one batch shared by all models
    (``in_axes=(0, None)``; a different data layout, not the same computation: every model sees
    the same images), to show what the per-model batches cost;
  * ``jax loop``: a Python loop calling the single-model ``jit_step`` once per model;
  * ``torch vmap``: ``torch.func.vmap(torch.func.grad(...))`` over stacked parameters with
    ``functional_call``, then one ``torch.optim.AdamW`` step on the stacked tensors (AdamW is
    elementwise, so this is N independent optimisers);
  * ``torch loop``: N ``nn.Module``s with N AdamW optimisers, stepped in a Python loop.

Reported: models×steps per second (median over interleaved repeats), the speed-up of ``jax
vmap`` over ``jax loop``, and memory per model (parameters + AdamW state, and XLA's own
temporary buffers of the compiled fleet step divided by N).

Run (≈2 min on 2 cores; ``--quick`` ≈ 20 s)::

    PYTHONPATH=. python benchmarks/bench_fleet.py
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see bench_gradtau_vs_torch.py

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from benchmarks import common  # noqa: E402
from hyperforget_jax import data, train  # noqa: E402
from hyperforget_jax.cli import ArgumentParser  # noqa: E402
from hyperforget_jax.configflags import non_negative_int, positive_int  # noqa: E402
from hyperforget_jax.models import ARCHITECTURES, make_architecture  # noqa: E402

LR, WD = 1e-3, 1e-4  # TrainConfig's defaults


def fleet_batches(n_models: int, batch: int, seed: int = 0):
    """(N, B, 28, 28, 1) images and (N, B) labels: each model its own batch of MNIST-5k."""
    ds = data.load_mnist5k()
    rng = np.random.default_rng(seed)
    idx = np.stack([rng.choice(len(ds), batch, replace=False) for _ in range(n_models)])
    return ds.x[idx], ds.y[idx].astype(np.int32)


def fleet_step(arch, tx=None):
    """The jitted vmapped training step and a function making the stacked initial state."""
    tx = tx or optax.adamw(LR, weight_decay=WD)
    step = jax.jit(jax.vmap(train.make_train_step(arch.apply, tx)), donate_argnums=0)

    def init(n):
        keys = jnp.stack([jax.random.key(i) for i in range(n)])
        return jax.vmap(lambda k: train.init_state(arch, tx, k))(keys)

    return step, init


def state_bytes(arch) -> int:
    """Parameters + AdamW moments (mu, nu) of one model, float32."""
    return 3 * 4 * arch.param_count


def jax_contenders(arch, n, xb, yb, steps):
    step, init = fleet_step(arch)
    x, y = jnp.asarray(xb), jnp.asarray(yb)
    holder = {"fleet": init(n)}
    compiled = step.lower(holder["fleet"], (x, y)).compile()
    mem = compiled.memory_analysis()
    temp = getattr(mem, "temp_size_in_bytes", None) if mem is not None else None

    def run_vmap():
        s = holder["fleet"]
        for _ in range(steps):
            s, m = step(s, (x, y))
        holder["fleet"] = jax.block_until_ready(s)

    # Batch layout: every model sees the *same* batch (in_axes None), so the first layer is one
    # wide matmul instead of N thin ones reading N different batches.
    shared = jax.jit(jax.vmap(train.make_train_step(arch.apply, optax.adamw(LR, weight_decay=WD)),
                              in_axes=(0, None)), donate_argnums=0)
    holder_sh = {"fleet": init(n)}
    x0, y0 = x[0], y[0]

    def run_shared():
        s = holder_sh["fleet"]
        for _ in range(steps):
            s, m = shared(s, (x0, y0))
        holder_sh["fleet"] = jax.block_until_ready(s)

    # fit_fleet's own path: the steps of an epoch under one lax.scan (vmapped over models),
    # batches gathered on device from one shared dataset, one dispatch per block.
    epoch = train.compiled_epoch(arch, (LR, WD), True)
    xd, yd = x.reshape(-1, *x.shape[2:]), y.reshape(-1)
    b = x.shape[1]
    idx = jnp.tile(jnp.arange(n * b, dtype=jnp.int32).reshape(n, 1, b), (1, steps, 1))
    # Its optimiser is the library's AdamW behind the NaN guard (optax's conditionality state).
    _, init_lib = fleet_step(arch, train.make_optimizer(train.TrainConfig(), LR, WD))
    holder_e = {"fleet": init_lib(n)}

    def run_scan():
        s, _ = epoch(holder_e["fleet"], xd, yd, idx)
        holder_e["fleet"] = jax.block_until_ready(s)

    tx = optax.adamw(LR, weight_decay=WD)
    single = train.jit_step(train.make_train_step(arch.apply, tx))
    singles = [train.init_state(arch, tx, jax.random.key(i)) for i in range(n)]
    xs = [x[i] for i in range(n)]
    ys = [y[i] for i in range(n)]

    def run_loop():
        for _ in range(steps):
            for i in range(n):
                singles[i], _ = single(singles[i], (xs[i], ys[i]))
        jax.block_until_ready(singles)

    return {"jax vmap": run_vmap, "jax vmap scan (fit_fleet)": run_scan,
            "jax vmap, shared batch": run_shared, "jax loop": run_loop}, temp


TORCH_TWINS = ("gpt_mlp", "mlp")     # models whose PyTorch fleet below takes flat images


def torch_contenders(arch_name, params_list, xb, yb, steps, threads, loop_max):
    import torch
    import torch.nn.functional as F
    from torch.func import functional_call, grad, vmap

    from benchmarks import torch_models as tm

    torch.set_num_threads(threads)
    n = len(params_list)
    x = torch.from_numpy(np.ascontiguousarray(xb)).flatten(2)  # (N, B, 784)
    y = torch.from_numpy(yb.astype(np.int64))
    models = [tm.load_flax_params(tm.make_torch_model(arch_name), p) for p in params_list]
    base = models[0]
    stacked = {k: torch.stack([m.state_dict()[k] for m in models]).clone()
               for k in base.state_dict()}
    opt = torch.optim.AdamW(list(stacked.values()), lr=LR, weight_decay=WD)

    def loss(p, xi, yi):
        return F.cross_entropy(functional_call(base, p, (xi,)), yi)

    grads_fn = vmap(grad(loss))

    def run_vmap():
        for _ in range(steps):
            g = grads_fn(stacked, x, y)
            for k, v in stacked.items():
                v.grad = g[k]
            opt.step()
        float(next(iter(stacked.values())).sum())

    out = {"torch vmap": run_vmap}
    if n <= loop_max:
        opts = [torch.optim.AdamW(m.parameters(), lr=LR, weight_decay=WD) for m in models]

        def run_loop():
            for _ in range(steps):
                for m, o, xi, yi in zip(models, opts, x, y):
                    o.zero_grad(set_to_none=True)
                    F.cross_entropy(m(xi), yi).backward()
                    o.step()
            float(next(models[-1].parameters()).sum())

        out["torch loop"] = run_loop
    return out


def bench(arch_name, n, args, threads, have_torch):
    arch = make_architecture(arch_name)
    xb, yb = fleet_batches(n, args.batch)
    # Fewer fleet steps per timed block as N grows: each block stays around a second.
    steps = max(1, args.steps // max(1, n // 8)) if n > 8 else args.steps
    contenders, temp = jax_contenders(arch, n, xb, yb, steps)
    if have_torch:
        params_list = [arch.init(jax.random.key(i)) for i in range(n)]
        contenders.update(torch_contenders(arch_name, params_list, xb, yb, steps, threads,
                                           args.torch_loop_max))
    times = common.interleaved(contenders, args.repeats, warmup=1)
    rows = []
    med = {k: n * steps / common.median(ts) for k, ts in times.items()}
    for k, v in med.items():
        rows.append({"model": arch_name, "N": n, "impl": k, "models·steps/s": v,
                     "vs jax loop": v / med["jax loop"],
                     "state KiB/model": state_bytes(arch) / 1024,
                     "XLA temp KiB/model": (temp / n / 1024) if (temp is not None and
                                                                 k == "jax vmap") else None,
                     "runs": [n * steps / t for t in times[k]]})
    return rows


def main(argv=None):
    ap = ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes (seconds)")
    ap.add_argument("--models", default="gpt_mlp,mlp")
    ap.add_argument("--sizes", default="1,8,32,128")
    ap.add_argument("--batch", type=positive_int, default=128)
    ap.add_argument("--steps", type=positive_int, default=16, help="fleet steps per timed block (N≤8)")
    ap.add_argument("--repeats", type=positive_int, default=5)
    ap.add_argument("--torch-loop-max", type=non_negative_int, default=32,
                    help="largest N for the (slow) PyTorch loop")
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--out", default=None)
    args = common.parse_args(ap, argv, quick={"sizes": "1,8", "batch": 16, "steps": 2,
                                              "repeats": 2})
    sizes = common.int_list(ap, args.sizes, "--sizes")
    for m in args.models.split(","):     # (an unknown one failed after the others' timings; the cnn's torch
        if m not in ARCHITECTURES:   # twin was fed flattened images, after ~90 s of compiling)
            ap.error(f"--models: {m!r} is not one of {', '.join(ARCHITECTURES)}")
        if m not in TORCH_TWINS and not args.no_torch:
            ap.error(f"--models {m}: the PyTorch fleet here has dense twins only "
                     f"({', '.join(TORCH_TWINS)}); pass --no-torch to time JAX alone")
    have_torch = not args.no_torch
    if have_torch:
        try:
            import torch  # noqa: F401
        except ImportError:
            print("torch not installed (pip install '.[bench]'): timing JAX only")
            have_torch = False
    threads = common.num_cores()
    rows = []
    for name in args.models.split(","):
        for n in sizes:
            rows += bench(name, n, args, threads, have_torch)
            print(f"[{name} N={n}] " + ", ".join(
                f"{r['impl']} {r['models·steps/s']:.0f}" for r in rows if r["N"] == n
                and r["model"] == name), flush=True)
    print(common.markdown_table(rows, ["model", "N", "impl", "models·steps/s", "vs jax loop",
                                       "state KiB/model", "XLA temp KiB/model"]))
    speedups = {f"{r['model']}@{r['N']}": r["vs jax loop"] for r in rows
                if r["impl"] == "jax vmap"}
    speedups_scan = {f"{r['model']}@{r['N']}": r["vs jax loop"] for r in rows
                     if r["impl"].startswith("jax vmap scan")}
    for m in args.models.split(","):
        k = f"{m}@128"
        if k in speedups:
            v = speedups[k]
            w = speedups_scan.get(k, float("nan"))
            print(f"target fleet of 128 {m} ≥ 10× the single-model loop: vmap step {v:.1f}×, "
                  f"fit_fleet scan {w:.1f}× {'met' if max(v, w) >= 10 else 'MISSED'}")
    path = common.write_json("fleet", {"config": vars(args), "threads": threads, "rows": rows,
                                       "vmap_over_loop": speedups,
                                       "vmap_scan_over_loop": speedups_scan}, args.out)
    print(f"wrote {path}")
    return rows


if __name__ == "__main__":
    common.run_script("bench_fleet", main)
