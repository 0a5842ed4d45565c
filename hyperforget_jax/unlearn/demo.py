"""The ∇τ section of ``hyperforget demo``: class removal with ∇τ beside Retrain on every seed
of the demo (the same originals and Retrain models), plus wall time and speed-up.

    hyperforget demo --sections gradtau

Takes a few seconds on 2 CPU cores (∇τ is ~40 steps per seed; one compilation).
"""

from __future__ import annotations

import statistics


from hyperforget_jax import report
from hyperforget_jax.evaluation import gap_to_retrain
from hyperforget_jax.metrics import format_mean_std
from hyperforget_jax.unlearn import unlearn


def demo_section(ctx) -> dict:
    from hyperforget_jax.demo import mean_std_row, row_header

    evals, infos = [], []
    for i, (seed, params) in enumerate(zip(ctx.seeds, ctx.originals)):
        run = lambda: unlearn("gradtau", ctx.arch, params, ctx.fsplit, ctx.splits.val,
                              seed=seed, forget_classes=ctx.request.classes)
        if i == 0:
            first_run_s = run().info["wall_time_s"]   # compiles; every timed run below is warm
        res = run()
        evals.append(ctx.evaluate(res.params, seed))
        infos.append(res.info)
    t_gt = statistics.median(i["wall_time_s"] for i in infos)
    t_rt = statistics.median(ctx.retrain_seconds)
    gaps = [gap_to_retrain(e, r) for e, r in zip(evals, ctx.evals_retrain)]
    loss_gt = [e["forget_loss"] for e in evals]
    loss_rt = [e["forget_loss"] for e in ctx.evals_retrain]
    md = ["## ∇τ class removal beside Retrain\n",
          f"∇τ with the paper's schedule ({infos[0]['steps']} steps, α₀ = "
          f"{infos[0]['alpha0']:.3f}, τ mode `{infos[0]['tau_mode']}` = log K: see "
          "docs/unlearning.md for the choice of τ).\n",
          report.markdown_table(row_header(["Avg. Gap", "time s"]), [
              mean_std_row("Retrain", ctx.evals_retrain, ["0", f"{t_rt:.2f}"]),
              mean_std_row("∇τ", evals, [format_mean_std(gaps),
                                         f"{t_gt:.2f}"])]),
          f"\nForget-set loss: ∇τ {format_mean_std(loss_gt, digits=1)}, Retrain "
          f"{format_mean_std(loss_rt, digits=1)}. Median wall time ∇τ {t_gt:.2f} s vs "
          f"Retrain {t_rt:.2f} s: speed-up {t_rt / t_gt:.1f}× (warm runs; first ∇τ run "
          f"{first_run_s:.2f} s with compilation).\n",
          "Per seed (∇τ / Retrain):\n",
          report.markdown_table(
              ["seed", "FA %", "TA kept %", "mia_loss_lr", "forget loss", "∇τ s", "Retrain s"],
              [[str(s), f"{100 * g['forget_acc']:.2f} / {100 * r['forget_acc']:.2f}",
                f"{100 * g['test_acc_kept']:.2f} / {100 * r['test_acc_kept']:.2f}",
                f"{g['mia_loss_lr']:.3f} / {r['mia_loss_lr']:.3f}",
                f"{g['forget_loss']:.1f} / {r['forget_loss']:.1f}",
                f"{i['wall_time_s']:.2f}", f"{t:.2f}"]
               for s, g, r, i, t in zip(ctx.seeds, evals, ctx.evals_retrain, infos,
                                        ctx.retrain_seconds)]), ""]
    return {"markdown": "\n".join(md),
            "results": {"evals": evals, "info": infos, "avg_gap": gaps,
                        "median_seconds": t_gt, "speedup_vs_retrain": t_rt / t_gt}}
