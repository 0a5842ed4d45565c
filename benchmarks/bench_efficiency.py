"""Hardware efficiency of the fleet training step: achieved GFLOP/s against the matmul peak.

The fleet step is ``jax.jit(jax.vmap(train.make_train_step(...)), donate_argnums=0)`` on N
``mlp`` classifiers (784→256→256→10), each with its own batch, plain AdamW behind
``make_train_step``'s explicit guard — the step ``fit_fleet`` ran until 05ee135. ``fit_fleet``
now runs ``make_train_step(..., guard=False)`` with ``skip_nonfinite(adamw)``; only the
``library scan (fit_fleet)`` row times that (and its GFLOP/s use the per-call step's count).
FLOPs come from XLA's cost analysis of the compiled library step (forward + backward +
AdamW; the same count is used for every variant, so GFLOP/s is the rate of *useful* work). The
peak is ``jnp.dot`` on two 2048×2048 float32 matrices, timed **interleaved with the steps** (every
repeat runs the matmul and each variant once, in turn), so the machine's drift between repeats
hits peak and step alike. Heavy load from other processes does not: the one long matmul call
loses more to it than the short steps, the peak comes out understated and rows can read above
100 % (the script then prints a warning and sets ``peak_understated`` in the JSON).

Variants (all donate the state unless said otherwise):
  * ``library``: ``make_train_step`` with its explicit guard (NaN guard on the new
    parameters), per call; ``fit_fleet``'s per-step program until 05ee135, not since;
  * ``library scan (fit_fleet)``: the same step inside ``fit_fleet``'s compiled epoch
    (``lax.scan`` over the steps, vmapped over models, batches gathered on device);
  * ``library, no donation``: the same without ``donate_argnums`` (fresh output buffers);
  * ``two-pass guard``: :func:`two_pass_guarded_update`, the same guard (bit-identical
    result, checked) computed in two fused passes instead of materialising the candidate state;
  * ``no guard``: plain AdamW (what a bare optax loop does; no NaN protection);
  * ``grad only``: forward + backward, no optimiser (upper bound of the step).

Run (≈1 min on 2 cores)::

    PYTHONPATH=. python benchmarks/bench_efficiency.py
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402

from benchmarks import common  # noqa: E402
from hyperforget_jax import train  # noqa: E402
from hyperforget_jax import params as P_  # noqa: E402
from hyperforget_jax.cli import ArgumentParser  # noqa: E402
from hyperforget_jax.configflags import positive_int  # noqa: E402
from hyperforget_jax.models import make_architecture  # noqa: E402

LR, WD = 1e-3, 1e-4


def two_pass_guarded_update(state, grads, loss, tx):
    """``train.guarded_update`` with the same result, bit for bit, and less memory traffic.

    The library version materialises the candidate state (params, μ, ν), reduces it for
    finiteness, then selects candidate-or-old into the outputs: the state crosses memory about
    three times. Here pass 1 computes the candidate parameters only to reduce them (fused into
    the reduction, never stored) and pass 2 recomputes the update *inside* the select, writing
    the donated buffers in place; ``optimization_barrier`` keeps XLA from merging the two passes
    back into one materialised candidate.
    """
    def candidate(params, opt_state):
        updates, new_opt = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), new_opt

    finite = jnp.isfinite(loss) & P_.all_finite(candidate(state.params, state.opt_state)[0])
    params, opt_state = jax.lax.optimization_barrier((state.params, state.opt_state))
    new = train.TrainState(state.step + 1, *candidate(params, opt_state))
    return jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, state), finite


def step_variants(arch, tx):
    """name -> (pure single-model step, donate?)."""
    vg = jax.value_and_grad(train.cross_entropy_loss, has_aux=True)

    def two_pass(state, batch):
        (loss, acc), g = vg(state.params, arch.apply, *batch)
        new, finite = two_pass_guarded_update(state, g, loss, tx)
        return new, {"loss": loss, "accuracy": acc, "finite": finite}

    def no_guard(state, batch):
        (loss, acc), g = vg(state.params, arch.apply, *batch)
        updates, opt_state = tx.update(g, state.opt_state, state.params)
        new = train.TrainState(state.step + 1, optax.apply_updates(state.params, updates),
                               opt_state)
        return new, {"loss": loss, "accuracy": acc}

    def grad_only(state, batch):
        (loss, acc), g = vg(state.params, arch.apply, *batch)
        return state._replace(params=g), {"loss": loss}

    lib = train.make_train_step(arch.apply, tx)
    return {"library": (lib, True), "library, no donation": (lib, False),
            "two-pass guard": (two_pass, True),
            "two-pass guard, no donation": (two_pass, False), "no guard": (no_guard, True),
            "grad only": (grad_only, True)}


def bench(n, batch, args):
    arch = make_architecture(args.model)
    tx = optax.adamw(LR, weight_decay=WD)
    keys = jnp.stack([jax.random.key(i) for i in range(n)])
    init = jax.jit(jax.vmap(lambda k: train.init_state(arch, tx, k)))
    x = jax.random.uniform(jax.random.key(1), (n, batch, 28, 28, 1))
    y = jax.random.randint(jax.random.key(2), (n, batch), 0, 10)
    flops = None
    contenders, info = {}, {}
    variants = step_variants(arch, tx)
    # The two-pass guard must give the library step's result exactly (one step, same inputs).
    ref, _ = jax.jit(jax.vmap(variants["library"][0]))(init(keys), (x, y))
    got, _ = jax.jit(jax.vmap(variants["two-pass guard"][0]))(init(keys), (x, y))
    info["two_pass_max_abs_diff"] = max(float(jnp.abs(a - b).max()) for a, b in
                                        zip(jax.tree.leaves(ref), jax.tree.leaves(got)))
    assert info["two_pass_max_abs_diff"] == 0.0, info
    for name, (step, donate) in variants.items():
        f = jax.jit(jax.vmap(step), donate_argnums=0 if donate else ())
        state = init(keys)
        compiled = f.lower(state, (x, y)).compile()
        if name == "library":
            flops = common.xla_flops(compiled)
            mem = compiled.memory_analysis()
            info["temp_MiB"] = mem.temp_size_in_bytes / 2**20 if mem else None
        holder = {"s": state}

        def run(f=compiled, holder=holder):
            s = holder["s"]
            for _ in range(args.steps):
                s, _ = f(s, (x, y))
            holder["s"] = jax.block_until_ready(s)

        contenders[name] = run
    # fit_fleet's own path: the epoch's steps under lax.scan (vmapped), batches gathered on
    # device from one shared dataset; the carry is updated in place by the while loop.
    epoch = train.compiled_epoch(arch, (LR, WD), True)
    xd, yd = x.reshape(n * batch, 28, 28, 1), y.reshape(n * batch)
    idx = jnp.tile(jnp.arange(n * batch, dtype=jnp.int32).reshape(n, 1, batch),
                   (1, args.steps, 1))
    # Its optimiser is the library's AdamW behind the NaN guard (optax's conditionality state).
    lib_tx = train.make_optimizer(train.TrainConfig(), LR, WD)
    holder_e = {"s": jax.jit(jax.vmap(lambda k: train.init_state(arch, lib_tx, k)))(keys)}

    def run_epoch():
        s, _ = epoch(holder_e["s"], xd, yd, idx)
        holder_e["s"] = jax.block_until_ready(s)

    contenders["library scan (fit_fleet)"] = run_epoch
    run_mm, mm_flops = common.matmul_peak_contender()
    contenders = {common.MATMUL_PEAK: run_mm, **contenders}
    times = common.interleaved(contenders, args.repeats, warmup=1)
    peak = mm_flops / common.median(times.pop(common.MATMUL_PEAK)) / 1e9
    rows = []
    for name, ts in times.items():
        t = common.median(ts) / args.steps
        gf = flops / t / 1e9
        rows.append({"model": args.model, "N": n, "batch": batch, "variant": name,
                     "ms/step": 1e3 * t, "models·steps/s": n / t, "GFLOP/s": gf,
                     "% of peak": 100 * gf / peak, "peak GFLOP/s": peak,
                     "GFLOP/step": flops / 1e9})
    lib = next(r for r in rows if r["variant"] == "library")
    for r in rows:
        r["vs library"] = r["models·steps/s"] / lib["models·steps/s"]
    return rows, info


def main(argv=None):
    ap = ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="mlp")
    ap.add_argument("--configs", default="32x128,128x128,32x512",
                    help="comma-separated NxBATCH")
    ap.add_argument("--steps", type=positive_int, default=4, help="fleet steps per timed block")
    ap.add_argument("--repeats", type=positive_int, default=5)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=None)
    args = common.parse_args(ap, argv, quick={"configs": "8x64", "steps": 2, "repeats": 3})
    configs = []
    for cfg in args.configs.split(","):
        try:
            n, b = (int(v) for v in cfg.split("x"))
        except ValueError:
            ap.error(f"--configs {args.configs!r}: pass comma-separated NxBATCH, e.g. 32x128")
        if min(n, b) < 1:
            ap.error(f"--configs {args.configs!r}: N and BATCH must be >= 1")
        configs.append((cfg, n, b))
    rows, infos = [], {}
    for cfg, n, b in configs:
        r, info = bench(n, b, args)
        rows += r
        infos[cfg] = info
        print(f"[N={n} B={b}] peak {r[0]['peak GFLOP/s']:.0f} GFLOP/s; " + ", ".join(
            f"{x['variant']} {x['% of peak']:.0f}%" for x in r), flush=True)
    print(common.markdown_table(rows, ["N", "batch", "variant", "ms/step", "models·steps/s",
                                       "GFLOP/s", "% of peak", "vs library"]))
    warning = common.peak_understated(rows, "% of peak")
    if warning:
        print(warning)
    path = common.write_json("efficiency", {"config": vars(args), "rows": rows,
                                            "memory": infos,
                                            "peak_understated": warning is not None}, args.out)
    print(f"wrote {path}")
    return rows


if __name__ == "__main__":
    common.run_script("bench_efficiency", main)
