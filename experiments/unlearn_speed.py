"""Wall time of ∇τ against Retrain: interleaved warm repeats, medians, speed-up.

For each request, both methods are compiled once (a warm-up run each), then run alternately
``--repeats`` times on the same original model, so that machine load hits both alike; the
speed-up is the ratio of the medians. Also reports the work each does (per-sample gradients:
∇τ's forget batch only on the steps whose ascent term is on), which bounds the speed-up on a
compute-bound CPU. Command (≈ 1 min on 2 CPU cores)::

    PYTHONPATH=. python experiments/unlearn_speed.py --out runs/unlearn_speed

Writes ``results.json`` and ``table.md`` into ``--out``, at the end only (those of an earlier
run are removed at the start). It is short and measures wall time, so it keeps no cells: a rerun
starts over (reused times would come from another moment's machine load). Another
configuration into the same ``--out`` is refused (exit 2; ``--restart`` replaces that run), as
is a second run while one writes it.
"""

from __future__ import annotations

import statistics

import jax

from hyperforget_jax import __version__, data, report, rundir, train
from hyperforget_jax.cli import ArgumentParser
from hyperforget_jax.commands.common import path_arg
from hyperforget_jax.configflags import integer
from hyperforget_jax.errors import ConfigError
from hyperforget_jax.models import make_architecture
from hyperforget_jax.unlearn import GradTauConfig, unlearn

#: The role of this script's runs in ``run.json``, and the files it writes at its end.
ROLE = "experiment unlearn_speed"
OUTPUTS = ("results.json", "table.md")

def parse_args(argv=None):
    p = ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=path_arg, default="runs/unlearn_speed")
    p.add_argument("--repeats", type=integer, default=7)
    p.add_argument("--arch", default=None, help="the model (default: TrainConfig's, the mlp)")
    p.add_argument("--classes", type=integer, nargs="*", default=[3])
    p.add_argument("--fractions", type=float, nargs="*", default=[0.1, 0.3])
    p.add_argument("--restart", action="store_true",
                   help="replace a run of this script with other settings in --out (by default "
                   "it is refused)")
    args = p.parse_args(argv)
    # Every value is checked before anything is trained or written (exit 2, one error).
    args.splits = data.make_splits(data.load_mnist5k())
    try:
        args.requests = ([data.ForgetRequest(classes=(c,)) for c in args.classes]
                         + [data.ForgetRequest(fraction=f) for f in args.fractions])
        if args.repeats < 1:
            raise ConfigError(f"--repeats must be >= 1, got {args.repeats}")
        if not args.requests:        # it trained the original and wrote an empty table
            raise ConfigError("--classes and --fractions are both empty: no request to time")
        names = [r.describe() for r in args.requests]
        if len(set(names)) != len(names):   # timed twice, two rows under one name
            raise ConfigError(f"--classes / --fractions list a request twice: {names}")
        args.fsplits = [data.resolve_forget(args.splits.train, r) for r in args.requests]
        args.cfg = train.TrainConfig(**({"arch": args.arch} if args.arch else {}))
        args.model = make_architecture(args.cfg.arch)
    except ValueError as e:               # ConfigError, ForgetRequestError
        p.error(str(e))
    return args


def identity(args) -> dict:
    """What the run measures: another one into the same ``--out`` is refused."""
    return {"role": ROLE, "version": __version__, "data": rundir.data_fingerprint(args.splits),
            "repeats": args.repeats, "train_config": args.cfg.to_json(),
            "classes": args.classes, "fractions": args.fractions,
            "backend": jax.default_backend()}


def main(argv=None) -> int:
    args = parse_args(argv)
    out_dir = report.prepare_dir(args.out, flag="--out", not_a_run=ROLE)
    # The lock and the configuration check; the report files appear at the end only.
    with rundir.open_sweep(out_dir, identity(args), outputs=OUTPUTS, restart=args.restart,
                           command="unlearn_speed"):
        md = measure(args, out_dir)
    print(md)
    return 0


def measure(args, out_dir) -> str:
    splits, cfg, arch = args.splits, args.cfg, args.model
    original = train.fit(arch, splits.train, cfg)[0].params
    rows, results = [], []
    for req, fsplit in zip(args.requests, args.fsplits):
        run = {"gradtau": lambda: unlearn("gradtau", arch, original, fsplit, splits.val),
               "retrain": lambda: unlearn("retrain", arch, original, fsplit, splits.val, cfg)}
        info = {k: f().info for k, f in run.items()}          # warm-up: compile both
        times = {k: [] for k in run}
        for _ in range(args.repeats):
            for k, f in run.items():
                times[k].append(f().info["wall_time_s"])
        nf, nr = len(fsplit.forget), len(fsplit.retain)
        g = info["gradtau"]
        b = GradTauConfig().batch_size
        # Gradients computed: the retain batch every step, the forget batch only on steps whose
        # ascent term is on (the others skip its backward; its forward always runs).
        on = sum(g["ascent_steps"])
        work_gt = on * min(b, nf) + g["steps"] * min(b, nr)
        work_rt = cfg.epochs * (nr // cfg.batch_size) * cfg.batch_size
        med = {k: statistics.median(v) for k, v in times.items()}
        res = {"request": req.describe(), "times": times, "median_s": med,
               "speedup": med["retrain"] / med["gradtau"],
               "ascent_steps": on, "steps": g["steps"],
               "per_sample_gradients": {"gradtau": work_gt, "retrain": work_rt}}
        results.append(res)
        rows.append([req.describe(), f"{med['gradtau']:.3f}", f"{med['retrain']:.3f}",
                     f"{res['speedup']:.1f}×", f"{on} / {g['steps']}", f"{work_gt:,}",
                     f"{work_rt:,}",
                     f"{work_rt / work_gt:.1f}×"])
        print(" | ".join(rows[-1]), flush=True)
    md = "\n".join([
        f"# ∇τ vs Retrain wall time (MNIST-5k, {cfg.arch}, median of {args.repeats} "
        "interleaved warm runs)\n",
        report.markdown_table(["request", "∇τ s", "Retrain s", "speed-up",
                               "∇τ steps with the ascent on", "∇τ per-sample grads",
                               "Retrain per-sample grads", "work ratio"], rows), ""])
    report.write_json(out_dir / "results.json",
                      {"args": {k: getattr(args, k)
                                for k in ("out", "repeats", "arch", "classes", "fractions")},
                       "results": results})
    report.atomic_write(out_dir / "table.md", md)
    return md


if __name__ == "__main__":
    report.exit_on_error("unlearn_speed", main, resumes=False)
