"""What the composable core costs or saves: sweeps vs loops, and the ∇τ step before/after.

1. **Sweep vs loop** (``unlearn_sweep`` with ``vectorize="vmap"`` and ``"map"`` against a
   Python loop of ``unlearn`` calls) for 1, 4 and 16 members (seeds, each its own original from one ``fit_fleet``), class 3 of MNIST-5k,
   the default MLP, warm (every program compiled before timing). Methods: ∇τ (the paper's
   schedule), Retrain (a vmapped fit) and SalUn (masked SGD, random labels).
2. **∇τ step**: ms per step of one warm forget-epoch call. ``legacy`` is the program the runner
   used before the redesign (``gradtau.compiled_forget_epoch``: guarded ``make_gradtau_step``,
   per-step α fed as an array, per-step lr schedule); ``core`` is the runner's program now
   (``nabla_tau`` + ``skip_nonfinite(adamw)`` + in-graph per-epoch schedules, τ refreshed on
   device). Same batches, same shapes (256 + 256 images), interleaved repeats.

Every number is a median over interleaved repeats (benchmarks/common.py). Run (≈3-6 min on 2
cores; ``--quick`` ≈ 1 min)::

    PYTHONPATH=. python benchmarks/bench_sweep.py
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks import common  # noqa: E402
from hyperforget_jax import data, train  # noqa: E402
from hyperforget_jax.cli import ArgumentParser  # noqa: E402
from hyperforget_jax.configflags import positive_int  # noqa: E402
from hyperforget_jax.models import make_architecture  # noqa: E402
from hyperforget_jax.params import tree_index  # noqa: E402
from hyperforget_jax.unlearn import METHODS, unlearn, unlearn_sweep  # noqa: E402
from hyperforget_jax.unlearn import gradtau as G  # noqa: E402
from hyperforget_jax.unlearn import gradtau_run as GR  # noqa: E402


def sweep_vs_loop(arch, splits, fsplit, originals, sizes, methods, repeats, recipe):
    rows = []
    for method in methods:
        for n in sizes:
            p = jax.tree.map(lambda l: l[:n], originals)
            seeds = list(range(n))
            cfg = [recipe] if method == "retrain" else None

            def loop():
                for i, s in enumerate(seeds):
                    c = None if cfg is None else dataclasses.replace(recipe, seed=s)
                    jax.block_until_ready(unlearn(method, arch, tree_index(p, i), fsplit,
                                                  splits.val, c, s).params)

            def sweep(how):
                return lambda: jax.block_until_ready([r.params for r in unlearn_sweep(
                    method, arch, p, fsplit, splits.val, seeds, cfg, params_stacked=True,
                    vectorize=how)])

            t = common.interleaved({"loop": loop, "vmap": sweep("vmap"), "map": sweep("map")},
                                   repeats)
            lo, sw, sm = (common.median(t[k]) for k in ("loop", "vmap", "map"))
            rows.append({"method": method, "members": n, "loop s": lo, "sweep vmap s": sw,
                         "sweep map s": sm, "vmap speed-up": lo / sw, "map speed-up": lo / sm,
                         "loop s/member": lo / n})
            print(common.markdown_table(rows[-1:]), flush=True)
    return rows


def step_before_after(arch, splits, fsplit, original, repeats):
    cfg = G.GradTauConfig()
    plan = GR.make_plan(fsplit, cfg, 0, (3,))
    descent_only, mode, E, n = plan.static[:4]
    xf, yf = jnp.asarray(fsplit.forget.x), jnp.asarray(fsplit.forget.y)
    xr, yr = jnp.asarray(fsplit.retain.x), jnp.asarray(fsplit.retain.y)
    f_idx, r_idx = jnp.asarray(plan.f_idx[0]), jnp.asarray(plan.r_idx[0])

    legacy = GR.compiled_forget_epoch(arch, E * n, cfg.lr, cfg.weight_decay,
                                      cfg.final_lr_fraction)
    tx_old = G.make_gradtau_optimizer(E * n, cfg.lr, cfg.weight_decay, cfg.final_lr_fraction)
    alphas = jnp.asarray(G.alpha_schedule(plan.alpha0, E * n)[:n])
    tau = jnp.float32(np.log(10))
    core = GR._epochs_program(arch, descent_only, mode, False, None)  # here a run of 1 epoch
    tx_new = G.gradtau_tx(cfg.lr, cfg.weight_decay, cfg.final_lr_fraction, E, n)
    arrays = GR.device_arrays(fsplit, splits.val, mode, (3,))
    hp = jax.tree.map(jnp.asarray, plan.hp)
    copy = lambda: jax.tree.map(jnp.array, original)

    def run_legacy():
        st = train.init_state(arch, tx_old, None, copy())
        jax.block_until_ready(legacy(st, xf, yf, xr, yr, f_idx, r_idx, alphas, tau)[0].params)

    def run_core():
        st = train.init_state(arch, tx_new, None, copy())
        gs = G.GradTauState(jnp.int32(0), tau)
        jax.block_until_ready(core(st, gs, hp, arrays, f_idx[None], r_idx[None])[0].params)

    init_only = lambda: jax.block_until_ready(train.init_state(arch, tx_new, None, copy()))
    t = common.interleaved({"legacy": run_legacy, "core": run_core, "init": init_only},
                           repeats)
    init = common.median(t["init"])
    rows = []
    for name in ("legacy", "core"):
        sec = max(common.median(t[name]) - init, 1e-9)
        rows.append({"program": name, "steps": n, "ms/step": 1e3 * sec / n,
                     "vs legacy": None})
    rows[1]["vs legacy"] = rows[0]["ms/step"] / rows[1]["ms/step"]
    rows[0]["vs legacy"] = 1.0
    # and the whole user-facing call, warm
    whole = common.interleaved({"run_gradtau": lambda: jax.block_until_ready(
        G.run_gradtau(arch, original, fsplit, splits.val, cfg, 0, (3,))[0])}, repeats)
    return rows, {"run_gradtau_s": common.median(whole["run_gradtau"]), "epochs": E,
                  "steps": E * n}


def main(argv=None):
    p = ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="4 members at most, 2 repeats, 1-epoch originals and Retrain")
    p.add_argument("--repeats", type=positive_int, default=5)
    # choices: a wrong name was refused after the fleet trained and the step benchmark ran
    p.add_argument("--methods", nargs="*", default=["gradtau", "retrain", "salun"],
                   choices=list(METHODS))
    p.add_argument("--out", default=None)
    args = common.parse_args(p, argv, quick={"repeats": 2})
    repeats = args.repeats
    sizes = [1, 4] if args.quick else [1, 4, 16]
    splits = data.make_splits(data.load_mnist5k())
    arch = make_architecture("mlp")
    fsplit = data.resolve_forget(splits.train, data.ForgetRequest(classes=(3,)))
    # --quick: 1-epoch originals and Retrain (20 epochs each made it 7 min on a loaded machine)
    recipe = train.TrainConfig(epochs=1) if args.quick else train.TrainConfig()
    originals = train.fit_fleet(arch, splits.train, recipe, list(range(max(sizes)))
                                )[0].params
    step_rows, whole = step_before_after(arch, splits, fsplit, tree_index(originals, 0), repeats)
    print("## ∇τ step, before/after\n\n" + common.markdown_table(step_rows), flush=True)
    print(f"\nwarm run_gradtau (class 3, {whole['steps']} steps): {whole['run_gradtau_s']:.3f} s")
    rows = sweep_vs_loop(arch, splits, fsplit, originals, sizes, args.methods, repeats, recipe)
    print("\n## Sweep vs loop\n\n" + common.markdown_table(rows))
    path = common.write_json("sweep", {"config": vars(args), "step": step_rows,
                                       "run_gradtau": whole,
                                       "sweep_vs_loop": rows, "repeats": repeats}, args.out)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    common.run_script("bench_sweep", main)
