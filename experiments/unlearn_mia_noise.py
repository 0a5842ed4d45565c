"""How much of the class-removal ``mia_loss_lr`` gap between ∇τ and Retrain is attack noise?

``mia_loss_lr`` subsamples the members to the number of non-members (100 test images of the
class on MNIST-5k) and scores a 10-split CV; with so few samples its value for one fixed model
moves by ±0.04–0.06 from one attack seed to the next. This script trains the original, Retrain
and ∇τ for each (class, seed), then repeats the attack with ``--attack-repeats`` attack seeds on
the same models and reports mean ± std per model, next to the forget-set and unseen-class
losses. Command (≈ 2 min on 2 CPU cores)::

    PYTHONPATH=. python experiments/unlearn_mia_noise.py --out runs/unlearn_mia_noise

Writes ``results.json`` and ``table.md`` into ``--out``, at the end only (those of an earlier
run are removed at the start). Each (class, seed) is a cell, stored once complete in
``<out>/cells/`` with the configuration that produced it: rerunning the same command after an
interruption reuses the stored cells (the table names them) and runs the rest. Another
configuration into the same ``--out`` is refused (exit 2; ``--restart`` replaces that run), as
is a second run while one writes it.
"""

from __future__ import annotations

import jax
import numpy as np

from hyperforget_jax import __version__, data, metrics, report, rundir, train
from hyperforget_jax.cli import ArgumentParser
from hyperforget_jax.commands.common import path_arg
from hyperforget_jax.configflags import integer
from hyperforget_jax.errors import ConfigError
from hyperforget_jax.models import make_architecture
from hyperforget_jax.unlearn import unlearn

#: The role of this script's runs in ``run.json``, and the files it writes at its end.
ROLE = "experiment unlearn_mia_noise"
OUTPUTS = ("results.json", "table.md")


def parse_args(argv=None):
    p = ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=path_arg, default="runs/unlearn_mia_noise")
    p.add_argument("--classes", type=integer, nargs="*", default=[0, 3, 8])
    p.add_argument("--seeds", type=integer, default=3)
    p.add_argument("--attack-repeats", type=integer, default=20)
    p.add_argument("--restart", action="store_true",
                   help="start over: drop the cells an earlier run stored in --out (by default "
                   "the same command resumes them, and another one is refused)")
    args = p.parse_args(argv)
    # Every value is checked before anything is trained or written (exit 2, one error).
    args.splits = data.make_splits(data.load_mnist5k())
    try:
        if args.seeds < 1 or args.attack_repeats < 1 or not args.classes:
            raise ConfigError(f"--seeds and --attack-repeats must be >= 1 and --classes "
                              f"non-empty, got {args.seeds}, {args.attack_repeats}, "
                              f"{args.classes}")
        if len(set(args.classes)) != len(args.classes):   # the summary would pool them
            raise ConfigError(f"--classes lists a class twice: {args.classes}")
        for c in args.classes:
            data.resolve_forget(args.splits.train, data.ForgetRequest(classes=(c,)))
    except ValueError as e:               # ConfigError, ForgetRequestError
        p.error(str(e))
    return args


def identity(args) -> dict:
    """Everything that determines the numbers: a rerun into the same ``--out`` resumes only a
    run of exactly this (``rundir.open_sweep``)."""
    return {"role": ROLE, "version": __version__, "data": rundir.data_fingerprint(args.splits),
            "classes": args.classes, "seeds": args.seeds, "attack_repeats": args.attack_repeats,
            "backend": jax.default_backend()}


def cell(args, arch, c: int, seed: int) -> dict:
    """One (class, seed): the original, Retrain and ∇τ, and the repeated attack on each."""
    splits = args.splits

    def losses(params, ds):
        return metrics.per_sample_outputs(arch.apply, params, ds.x, ds.y)["loss"]

    unseen = splits.test.subset(np.flatnonzero(splits.test.y == c))
    fsplit = data.resolve_forget(splits.train, data.ForgetRequest(classes=(c,)))
    cfg = train.TrainConfig(seed=seed)
    original = train.fit(arch, splits.train, cfg)[0].params
    models = {"Retrain": unlearn("retrain", arch, original, fsplit, splits.val, cfg,
                                 seed).params,
              "gradtau": unlearn("gradtau", arch, original, fsplit, splits.val,
                                 seed=seed).params}
    rec = {"class": c, "seed": seed}
    for name, params in models.items():
        lf, lt = losses(params, fsplit.forget), losses(params, unseen)
        attacks = [metrics.mia_loss_lr(lf, lt, seed=s) for s in range(args.attack_repeats)]
        rec[name] = {"mia_loss_lr_at_model_seed": attacks[seed] if seed < len(attacks)
                     else None, "mia_loss_lr_mean": float(np.mean(attacks)),
                     # one attack seed: no std (null, "–"), not 0
                     "mia_loss_lr_std": metrics.mean_std(attacks)[1]
                     if len(attacks) > 1 else None,
                     "forget_loss": float(lf.mean()), "unseen_class_loss": float(lt.mean())}
    return rec


def main(argv=None) -> int:
    args = parse_args(argv)
    out_dir = report.prepare_dir(args.out, flag="--out", not_a_run=ROLE)
    # The lock and the resume checks; the report files appear at the end only.
    with rundir.open_sweep(out_dir, identity(args), outputs=OUTPUTS, restart=args.restart,
                           command="unlearn_mia_noise") as cells:
        md = sweep(args, cells, out_dir)
    print(md)
    return 0


def sweep(args, cells: rundir.Cells, out_dir) -> str:
    arch = make_architecture("mlp")
    models = ("Retrain", "gradtau")
    rows, results = [], []
    for c in args.classes:
        for seed in range(args.seeds):
            key = f"class {c} seed {seed}"
            rec = cells.compute(key, cells.identity, lambda: cell(args, arch, c, seed))
            results.append(rec)
            rows.append([str(c), str(seed)] + [
                f"{rec[m]['mia_loss_lr_mean']:.3f} ± {report.fmt(rec[m]['mia_loss_lr_std'], 3)}"
                for m in models] + [
                f"{rec[m]['forget_loss']:.1f} / {rec[m]['unseen_class_loss']:.1f}" for m in models])
            print(" | ".join(rows[-1]) + (" (reused)" if key in cells.reused else ""), flush=True)
    summary = []
    for c in args.classes:
        rs = [r for r in results if r["class"] == c]
        # mean ± std over the model seeds (the mean alone hid how far they spread; one seed
        # has no std: "–", not 0)
        d, sd = metrics.mean_std([r["gradtau"]["mia_loss_lr_mean"]
                                  - r["Retrain"]["mia_loss_lr_mean"] for r in rs])
        summary.append(f"- class {c}: ∇τ − Retrain = {d:+.3f} ± "
                       f"{report.fmt(sd if len(rs) > 1 else None, 3)} (mean ± std over "
                       f"{len(rs)} seed{'s' * (len(rs) > 1)} of the {args.attack_repeats}-"
                       "repeat means)")
    if cells.reused:
        summary.append(f"\nResumed: {', '.join(cells.reused)} reused from an earlier run of this "
                       "command (its `cells/`).")
    md = "\n".join([
        f"# mia_loss_lr noise on class removal (MNIST-5k, mlp, {args.attack_repeats} attack "
        "seeds per model)\n",
        report.markdown_table(
            ["class", "seed", "Retrain mia_loss_lr", "∇τ mia_loss_lr",
             "Retrain loss forget / unseen", "∇τ loss forget / unseen"], rows),
        "", *summary, ""])
    report.write_json(out_dir / "results.json",
                      {"args": {k: getattr(args, k)
                                for k in ("out", "classes", "seeds", "attack_repeats")},
                       "results": results, "reused": cells.reused})
    report.atomic_write(out_dir / "table.md", md)
    return md


if __name__ == "__main__":
    report.exit_on_error("unlearn_mia_noise", main)
