"""The unlearning results table: every method beside Retrain, class removal and random forgetting.

Command (from the repository root; 6.6 min on 2 idle CPU cores for the published table, 4.8 min
on 2026-12-02's methods, 14.4 min before the sweeps)::

    PYTHONPATH=. python experiments/unlearning_table.py --out runs/unlearning_table

Produces in ``--out``: ``results.json`` (every per-seed evaluation, wall times, U-LiRA),
``table.md`` (mean ± std over seeds per setting and method: RA, FA, TA, TA on kept classes,
mia_loss_lr, mia_entropy_lr, mia_efficacy_svc, U-LiRA accuracy / AUC where run, Avg. Gap to
Retrain, median wall time and speed-up vs Retrain, and the ∇τ targets met / missed) and
``gap_vs_time.png`` (Avg. Gap against wall time, one panel per setting).

Settings: class removal of classes 0, 3, 8 and random forgetting of 3%, 10%, 30% of MNIST-5k's
3,500 training images, seeds 0–2 (model seed = unlearning seed; the random subset is drawn with
the same seed). The classifier is the default ``TrainConfig()`` MLP 784→256→256→10; Retrain is the
same recipe on D_r. ∇τ is also run with each τ mode on class removal (rows ``gradtau[τ=...]``).
Other datasets: ``--dataset mnist|fashion_mnist|cifar10`` (prepared tensorflow-datasets only;
fails at once otherwise). U-LiRA (8 shadows) runs on ``--ulira-settings`` (default class 3 and
random 30%, those of the two this run has). The classifier recipe has one flag per
:class:`~hyperforget_jax.train.TrainConfig` field (``--arch``: a registered name or an import
path ``pkg.module:Name``, default ``mlp``; ``--epochs``, ``--batch-size``, ``--lr``,
``--weight-decay``); ``--render-only`` rewrites ``table.md`` and the plot from an existing
``results.json``.

Resuming: each setting, once complete, is stored in ``<out>/cells/`` with the configuration that
produced it (every flag that changes a number, the methods' configs, the data's and the
originals' fingerprints, the revision of what a cell records: ``CELL_REVISION``), and rerunning
the same command after an interruption reuses those settings and runs the rest; the report
names the reused settings (their wall times are from the earlier run) and is otherwise the one
an uninterrupted run writes. Another configuration into the same ``--out`` is refused (exit 2;
``--restart`` replaces that run), as is a second run while one writes it. The report files are
removed at the start and written at the end only.

Every number comes from sweeps (:func:`hyperforget_jax.unlearn.unlearn_sweep`): the originals
are one vmapped fleet, and each method runs all seeds of a setting as one vmapped program (for
random forgetting each seed its own request of equal size), as do the U-LiRA shadows of each
method. Every member equals the one-by-one ``unlearn`` call to 1e-4 (tests/test_sweep.py).
Wall times (``--timing single``, the default) are of warm one-by-one ``unlearn()`` calls, the
user-facing path (each method and Retrain is run once per setting before timing, so
compilation is excluded for all of them alike), medians over seeds; ``--timing sweep`` reports
each member's share of its sweep's wall time instead (and skips the timed single runs); a
sweep is each program's first call, so those times include XLA compilation (mlp, class 3:
∇τ 2.2 s per member cold vs 0.14 s warm) and their speed-ups are not those of warm calls.
``--vectorize`` (default ``auto``: ``map`` on CPU, ``vmap`` on accelerators) picks how a
sweep's members share a program (``unlearn_sweep(vectorize=...)``).

Measured before the sweeps (one call per method and seed, 3 seeds, 14.4 min on a shared
2-core CPU; docs/unlearning.md and the README give the current run's time): ∇τ
class removal FA 0.00%, kept-class TA within 0.2–0.3 points of Retrain, mia_loss_lr 0.04–0.14
above Retrain's; random 30% mia_loss_lr within 0.022 of Retrain's and the lowest Avg. Gap of all
methods (2.11); median speed-up over Retrain 3.9× (class) / 3.6× (random).
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import statistics
import sys
import time
from pathlib import Path

import jax
import numpy as np

from hyperforget_jax import __version__, data, report, rundir, train, ulira
from hyperforget_jax.cli import ArgumentParser
from hyperforget_jax.commands.common import path_arg, refuse_zero_epochs
from hyperforget_jax.config import expand_user
from hyperforget_jax.configflags import add_config_flags, integer
from hyperforget_jax.errors import ConfigError
from hyperforget_jax.evaluation import (GAP_KEYS, GAP_LABELS, evaluate_unlearning, gap_keys,
                                        gap_to_retrain)
from hyperforget_jax.metrics import format_over_seeds, mean_std
from hyperforget_jax.models import as_model
from hyperforget_jax.params import tree_index
from hyperforget_jax.unlearn import (DEFAULT_CONFIGS, METHODS, GradTauConfig, unlearn,
                                     unlearn_sweep)

COLS = (("retain_acc", "RA %", 100.0), ("forget_acc", "FA %", 100.0),
        ("test_acc", "TA %", 100.0), ("test_acc_kept", "TA kept %", 100.0),
        ("mia_loss_lr", "mia_loss_lr", 1.0), ("mia_entropy_lr", "mia_entropy_lr", 1.0),
        ("mia_efficacy_svc", "mia_efficacy_svc", 1.0), ("forget_loss", "forget loss", 1.0),
        ("ulira_acc", "U-LiRA acc", 1.0), ("ulira_auc", "U-LiRA AUC", 1.0),
        ("avg_gap", "Avg. Gap", 1.0))
#: The role of this script's runs in ``run.json``, and the files it writes at its end.
ROLE = "experiment unlearning_table"
OUTPUTS = ("results.json", "table.md", "gap_vs_time.png")
# The fields of results.json that --render-only's report and plot read.
RESULT_KEYS = ("dataset", "sizes", "architecture", "seeds", "settings", "total_seconds")
#: The settings that get U-LiRA when ``--ulira-settings`` is not given, where the run has them.
ULIRA_DEFAULT = ("class 3", "random 30%")
#: What a cell records for one configuration, raised when the code computing a cell changes
#: what it stores (the package's __version__ has never moved, so the identity cannot tell):
#: a cell of another revision is computed again, never mixed into a resumed table. 2: ∇τ's
#: class-removal τ recorded as log K (cells of 2026-12-06 before 09:00 recorded 0.0).
CELL_REVISION = 2


def parse_args(argv=None):
    p = ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=path_arg, default="runs/unlearning_table")
    p.add_argument("--dataset", default="mnist5k", choices=data.DATASETS)
    p.add_argument("--data-dir", type=path_arg, default=None)
    # --arch --epochs --batch-size --lr --weight-decay, from TrainConfig (the seeds are --seeds).
    p.set_defaults(_train_flags=add_config_flags(
        p, train.TrainConfig, title="classifier recipe (originals and Retrain)",
        exclude=("seed",)))
    p.add_argument("--classes", type=integer, nargs="*", default=[0, 3, 8])
    p.add_argument("--fractions", type=float, nargs="*", default=[0.03, 0.1, 0.3])
    p.add_argument("--seeds", type=integer, default=3)
    p.add_argument("--methods", nargs="*", default=list(METHODS), choices=METHODS)
    p.add_argument("--tau-ablation", action=argparse.BooleanOptionalAction, default=True,
                   help="also run ∇τ with every τ mode on class removal")
    p.add_argument("--ulira-settings", nargs="*", default=None,
                   help="settings (as named in the table) that get U-LiRA (default: "
                   f"{' and '.join(ULIRA_DEFAULT)}, those of them the run has)".replace(
                       "%", "%%"))     # argparse formats help with %
    p.add_argument("--ulira-shadows", type=integer, default=8)
    p.add_argument("--vectorize", choices=("auto", "vmap", "map"), default="auto",
                   help="how a sweep's members share one program (auto: map on CPU, where "
                   "XLA's batched matmuls are slower, vmap elsewhere)")
    p.add_argument("--timing", choices=("single", "sweep"), default="single",
                   help="time warm one-by-one unlearn() calls (default), or report each "
                   "member's share of its sweep (its first call: compilation included)")
    p.add_argument("--render-only", action="store_true",
                   help="re-render table.md and the plot from <out>/results.json, no runs")
    p.add_argument("--restart", action="store_true",
                   help="start over: drop the settings an earlier run stored in --out (by "
                   "default the same command resumes them, and another one is refused)")
    args = p.parse_args(argv)
    # `--render-only --dataset mnist5k --seeds 5` re-rendered a digits run of 2 seeds, exit 0.
    p.refuse_beside(args, "--render-only")
    # What ran, for the recorded command: main(argv)'s own, not the calling process's sys.argv
    # (a notebook's or pytest's, which table.md and results.json named as the command).
    args._argv = list(sys.argv[1:] if argv is None else argv)
    return args


def command_line(argv) -> str:
    """The command as a shell would rerun it (``--ulira-settings "class 3"`` quoted: joined
    with spaces it read as two settings, ``class`` and ``3``)."""
    return shlex.join(["python", "experiments/unlearning_table.py", *argv])


def train_config(args) -> train.TrainConfig:
    """The classifier recipe of the run: TrainConfig defaults with the given flags applied
    (--epochs 0, as on the CLI, refused: a whole table of untrained originals)."""
    cfg = args._train_flags.build(args)
    refuse_zero_epochs(cfg.epochs)
    return cfg


def settings(args):
    for c in args.classes:
        yield lambda seed, c=c: data.ForgetRequest(classes=(c,))
    for f in args.fractions:
        yield lambda seed, f=f: data.ForgetRequest(fraction=f, seed=seed)


def variants(args, request):
    """(row name, method, config) of every method run on this request."""
    for m in args.methods:
        if m != "retrain":
            yield m, m, None
    if args.tau_ablation and request.classes is not None and "gradtau" in args.methods:
        for mode in ("unseen_class", "val"):
            yield f"gradtau[τ={mode}]", "gradtau", GradTauConfig(tau_mode=mode)


def checked_splits(args) -> data.Splits:
    """The run's data, after checking every request and count against it (raises a
    ``HyperforgetError`` naming the bad value, before anything is trained or written)."""
    splits = data.make_splits(data.load_dataset(args.dataset, args.data_dir))
    if args.ulira_settings is None:     # the defaults this run has ("--classes 9" was refused
        # for the default's "class 3", a setting nobody asked for)
        names = [make_request(0).describe() for make_request in settings(args)]
        args.ulira_settings = [u for u in ULIRA_DEFAULT if u in names]
    if args.seeds < 1 or args.ulira_shadows < 1:
        raise ConfigError(f"--seeds and --ulira-shadows must be >= 1, got {args.seeds}, "
                          f"{args.ulira_shadows}")
    if args.ulira_settings and args.ulira_shadows < 3:      # else refused after the fleet
        raise ConfigError(f"--ulira-shadows must be >= 3 (U-LiRA scores each shadow pair with "
                          f"the others' Gaussians), got {args.ulira_shadows}")
    twice = sorted({m for m in args.methods if args.methods.count(m) > 1})
    if twice:      # each ran twice, its times appended twice: ∇τ's paired with other seeds'
        raise ConfigError(f"--methods lists {twice} twice; name each method once")
    if not args.classes and not args.fractions:
        raise ConfigError("--classes and --fractions are both empty: no setting to run")
    names = []
    for make_request in settings(args):
        data.resolve_forget(splits.train, make_request(0))
        names.append(make_request(0).describe())
    if len(set(names)) != len(names):      # results are keyed by name: one would replace another
        raise ConfigError(f"--classes / --fractions list a setting twice: {names}")
    unknown = [u for u in args.ulira_settings if u not in names]
    if unknown:                            # else silently no U-LiRA for it
        raise ConfigError(f"--ulira-settings {unknown} name no setting of this run; the "
                          f"settings are {names}")
    return splits


def _how(args) -> str:
    return args.vectorize if args.vectorize != "auto" else (
        "map" if jax.default_backend() == "cpu" else "vmap")


def identity(args, splits: data.Splits) -> dict:
    """Everything that determines the run's numbers: a rerun into the same ``--out`` resumes
    only a run of exactly this (``rundir.open_sweep``). The methods run with their configs'
    defaults, which no flag names: those are recorded too, so a changed default is refused
    rather than resumed from the old recipe's settings."""
    return {"role": ROLE, "version": __version__, "dataset": args.dataset,
            "method_configs": {m: DEFAULT_CONFIGS[m]() for m in args.methods if m != "retrain"},
            "data": rundir.data_fingerprint(splits), "train_config": train_config(args).to_json(),
            "classes": args.classes, "fractions": args.fractions, "seeds": args.seeds,
            "methods": args.methods, "tau_ablation": args.tau_ablation,
            "ulira_settings": args.ulira_settings, "ulira_shadows": args.ulira_shadows,
            "timing": args.timing, "backend": jax.default_backend(), "vectorize": _how(args)}


def run(args, splits: data.Splits, cells: rundir.Cells) -> dict:
    """Every setting, each one a cell of ``cells``: reused if an earlier run of the same
    configuration (from the same originals) stored it, else run and stored."""
    t_start = time.perf_counter()
    cfg = train_config(args)
    arch = as_model(cfg.arch, splits.train.x.shape[1:], splits.train.num_classes)
    seeds = list(range(args.seeds))
    originals = train.fit_fleet(arch, splits.train, cfg, seeds)[0].params   # stacked
    config = {**cells.identity, "cell_revision": CELL_REVISION,
              "originals": rundir.array_fingerprint(*jax.tree.leaves(originals))}
    out = {"dataset": args.dataset, "seeds": seeds, "train_config": cfg.to_json(),
           "command": command_line(args._argv),
           "architecture": arch.to_json(), "timing": args.timing,
           "sizes": [len(splits.train), len(splits.val), len(splits.test)], "settings": {}}
    for make_request in settings(args):
        name = make_request(0).describe()
        out["settings"][name] = cells.compute(name, config, lambda: _setting(
            args, arch, cfg, splits, originals, seeds, make_request))
        if name in cells.reused:
            print(f"== {name}: reused from {cells.path}", flush=True)
    out["reused"] = cells.reused
    out["total_seconds"] = time.perf_counter() - t_start
    return out


def _setting(args, arch, cfg, splits, originals, seeds, make_request) -> dict:
    """One setting (a forget request, every seed): every method's evaluations, wall times and
    sweep infos."""
    name = make_request(0).describe()
    print(f"== {name}", flush=True)
    requests = [make_request(s) for s in seeds]
    fsplits = [data.resolve_forget(splits.train, r) for r in requests]
    # One split for class removal (the same for every seed), one per seed otherwise.
    sweep_split = fsplits[0] if requests[0].classes is not None else fsplits
    how = _how(args)
    sweep = lambda m, c: unlearn_sweep(m, arch, originals, sweep_split, splits.val, seeds,
                                       None if c is None else [c], params_stacked=True,
                                       vectorize=how)
    ev = lambda p, i: evaluate_unlearning(arch, p, splits, fsplits[i], requests[i], seeds[i])
    retrain = sweep("retrain", cfg)
    rows = {"Original": [ev(tree_index(originals, i), i) for i in range(len(seeds))],
            "Retrain": [ev(r.params, i) for i, r in enumerate(retrain)]}
    results = {row: (sweep(m, c), c) for row, m, c in variants(args, requests[0])}
    infos = {row: [{k: v for k, v in r.info.items() if k != "config"} for r in res]
             for row, (res, _) in results.items()}
    for row, (res, _) in results.items():
        rows[row] = [ev(r.params, i) for i, r in enumerate(res)]
    times = (_single_times(args, arch, originals, fsplits, splits.val, cfg, seeds,
                           requests[0]) if args.timing == "single" else
             {"Retrain": [r.info["wall_time_s"] for r in retrain],
              **{row: [r.info["wall_time_s"] for r in res]
                 for row, (res, _) in results.items()}})
    if name in args.ulira_settings:
        for i, seed in enumerate(seeds):
            _ulira(args, arch, splits, fsplits[i], dataclasses.replace(cfg, seed=seed),
                   tree_index(originals, i), retrain[i].params,
                   {row: (res[i], c) for row, (res, c) in results.items()}, rows, i,
                   seed, how)
    for i, seed in enumerate(seeds):
        for row in rows:
            rows[row][i]["avg_gap"] = gap_to_retrain(rows[row][i], rows["Retrain"][i])
        print(f"   seed {seed}: " + ", ".join(
            f"{r} gap {rows[r][i]['avg_gap']:.2f}" for r in rows), flush=True)
    return {"kind": requests[0].kind, "evals": rows, "times": times, "info": infos}


def _single_times(args, arch, originals, fsplits, val, cfg, seeds, request) -> dict:
    """Median-ready wall times of warm one-by-one ``unlearn()`` calls (the user-facing path):
    every method and Retrain once on seed 0 to compile, then timed on every seed."""
    times: dict[str, list] = {}
    runs = [("Retrain", "retrain", None)] + list(variants(args, request))
    for i, seed in enumerate(seeds):
        p = tree_index(originals, i)
        for row, m, c in runs:
            c = dataclasses.replace(cfg, seed=seed) if m == "retrain" else c
            if i == 0:
                unlearn(m, arch, p, fsplits[i], val, c, seed)      # compile
            res = unlearn(m, arch, p, fsplits[i], val, c, seed)
            times.setdefault(row, []).append(res.info["wall_time_s"])
    return times


def _ulira(args, arch, splits, fsplit, s_cfg, original, retrained, results, rows, i, seed,
           how):
    t0 = time.perf_counter()
    sh = ulira.train_shadows(arch, splits.train, fsplit, s_cfg,
                             ulira.ULiRAConfig(args.ulira_shadows, seed))
    rows["Original"][i].update(_ulira_keys(ulira.ulira(
        arch, sh, sh.in_params, splits.train, fsplit, original, retrained)))
    for row, (res, cfg) in results.items():
        un = ulira.unlearn_shadows_sweep(sh, res.info["method"], arch, splits.train,
                                         splits.val, cfg, how)
        rows[row][i].update(_ulira_keys(ulira.ulira(arch, sh, un, splits.train, fsplit,
                                                    res.params, retrained)))
    print(f"   U-LiRA seed {seed} ({args.ulira_shadows} shadows) "
          f"{time.perf_counter() - t0:.0f} s", flush=True)


def _ulira_keys(r):
    return {"ulira_acc": r["accuracy"], "ulira_auc": r["auc"]}


# --- the report ------------------------------------------------------------------------------

def _ms(vals, scale=1.0):
    """mean ± std over the seeds that have the value; "–" where none has it (not applicable),
    and ``[k of n seeds]`` where only some have it (a NaN, or a None from a NaN in
    results.json), so a seed that is missing is never silently left out of the mean."""
    return format_over_seeds(vals, scale)


def targets(setting: dict, kind: str) -> list[str]:
    ev, t = setting["evals"], setting["times"]
    g, r, o = ev.get("gradtau"), ev["Retrain"], ev["Original"]
    if g is None:
        return []
    # A NaN is written to results.json as null: as NaN again, so --render-only checks the
    # same numbers as the run (a NaN target is MISSED) instead of failing on None.
    mean = lambda rows, k: float(np.mean(np.asarray([x[k] for x in rows], dtype=float)))
    speed = statistics.median(t["Retrain"]) / statistics.median(t["gradtau"])
    lines = []
    check = lambda ok, text: lines.append(f"- {'met' if ok else 'MISSED'}: {text}")
    if kind == "class":
        check(mean(g, "forget_acc") <= 0.01, f"FA ≤ 1% ({100 * mean(g, 'forget_acc'):.2f}%)")
        d = 100 * abs(mean(g, "test_acc_kept") - mean(r, "test_acc_kept"))
        check(d <= 1.5, f"kept-class TA within 1.5 points of Retrain ({d:.2f})")
    else:
        d = 100 * abs(mean(g, "test_acc") - mean(o, "test_acc"))
        check(d <= 2.0, f"TA within 2 points of the original ({d:.2f})")
        for b in ("finetune", "neggrad"):
            if b in ev:
                check(mean(g, "avg_gap") < mean(ev[b], "avg_gap"),
                      f"Avg. Gap below {b}'s ({mean(g, 'avg_gap'):.2f} vs "
                      f"{mean(ev[b], 'avg_gap'):.2f})")
    # Not applicable (a forget set of 1 item: evaluate_unlearning's ``not_applicable``) is no
    # miss; a NaN (null in results.json too) still is.
    na = [x.get("not_applicable", {}).get("mia_loss_lr") for x in g]
    if all(na):
        lines.append(f"- not applicable: mia_loss_lr within 0.03 of Retrain's ({na[0]})")
    else:
        d = abs(mean(g, "mia_loss_lr") - mean(r, "mia_loss_lr"))
        check(d <= 0.03, f"mia_loss_lr within 0.03 of Retrain's ({d:.3f})")
    check(speed >= 10, f"≥ 10× faster than Retrain (median {speed:.1f}×)")
    return lines


def speed_summary(out: dict) -> list[str]:
    """Median over every (setting, seed) of Retrain's time / ∇τ's time on the same seed."""
    lines = []
    for kind, label in (("class", "class removal"), ("fraction", "random forgetting")):
        r = [rt / gt for s in out["settings"].values() if s["kind"] == kind
             and "gradtau" in s["times"]
             for rt, gt in zip(s["times"]["Retrain"], s["times"]["gradtau"])]
        if r:
            lines.append(f"- {label}: median {statistics.median(r):.1f}× (min {min(r):.1f}×, "
                         f"max {max(r):.1f}×, {len(r)} paired run{'s' * (len(r) != 1)})")
    return lines


def write_report(out: dict, path: Path) -> None:
    md = [f"# Unlearning table: {out['dataset']} ({out['sizes'][0]} train / {out['sizes'][1]} "
          f"val / {out['sizes'][2]} test), {out['architecture']['name']}, seeds {out['seeds']}\n",
          "mean ± std over seeds. Accuracies in %; mia_loss_lr / mia_entropy_lr: attack "
          "accuracy (ideal: Retrain's, near 0.5); mia_efficacy_svc: share of D_f the SVC calls "
          "non-members (ideal: Retrain's, not 0.5); U-LiRA: accuracy / AUC (ideal 0.5); "
          "forget loss = mean CE on D_f. Avg. Gap = mean |Δ| to Retrain over "
          "FA, RA, TA, mia_loss_lr (points). Time = median "
          + ("share of a vmapped sweep's wall time per member (s), the sweep's first call: "
             "XLA compilation included, unlike warm `--timing single`"
             if out.get("timing") == "sweep" else "warm wall time of one `unlearn()` call (s)")
          + "; speed-up = Retrain's median / the method's.\n"]
    for name, s in out["settings"].items():
        t_rt = statistics.median(s["times"]["Retrain"])
        header = ["method"] + [h for k, h, _ in COLS] + ["time s", "speed-up"]
        body = []
        for row, evals in s["evals"].items():
            cells = [_ms([e.get(k) for e in evals], sc) for k, _, sc in COLS]
            if row in s["times"]:
                t = statistics.median(s["times"][row])
                cells += [f"{t:.3f}", f"{t_rt / t:.1f}×"]
            else:
                cells += ["–", "–"]
            body.append([row] + cells)
        md += [f"## {name}\n", report.markdown_table(header, body), ""]
        over = _gap_over(s)
        if over:    # (a one-item setting's gap, over 3 metrics, was labelled over 4)
            md += [f"Avg. Gap here = mean |Δ| to Retrain over {over}.", ""]
        md += targets(s, s["kind"]) + [""]
    md += ["## Speed-up of ∇τ over Retrain, all settings\n"] + speed_summary(out) + [""]
    md.append(f"Total run time {out['total_seconds'] / 60:.1f} min"
              + (f" (`{out['command']}`)" if "command" in out else "") + "."
              + (f" Resumed: {', '.join(out['reused'])} reused from an earlier run of this "
                 "command (its `cells/`); their wall times are that run's, and the total run "
                 "time is this run's alone." if out.get("reused") else "") + "\n")
    report.atomic_write(path / "table.md", "\n".join(md))


def _gap_over(setting: dict) -> str | None:
    """The metrics a setting's Avg. Gap is over where they are not all of GAP_KEYS (a metric
    not applicable, e.g. mia_loss_lr of a one-item forget set, is left out), else None."""
    retrain = setting["evals"]["Retrain"]
    used = {gap_keys(e, r) for row, evals in setting["evals"].items() if row != "Retrain"
            for e, r in zip(evals, retrain) if e.get("avg_gap") is not None}
    if not used or used == {GAP_KEYS}:
        return None
    names = lambda keys: ", ".join(GAP_LABELS[k] for k in keys)   # noqa: E731
    left = sorted({k for keys in used for k in GAP_KEYS if k not in keys},
                  key=GAP_KEYS.index)
    return " / ".join(names(k) for k in sorted(used, key=len, reverse=True)) + (
        f" ({', '.join(left)} not applicable)")


def plot(out: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    names = list(out["settings"])
    fig, axes = plt.subplots(2, (len(names) + 1) // 2, figsize=(4.2 * ((len(names) + 1) // 2),
                                                                  7.5), squeeze=False,
                             layout="constrained")
    for ax, name in zip(axes.ravel(), names):
        s = out["settings"][name]
        for row, evals in s["evals"].items():
            if row not in s["times"] or row == "Retrain":
                continue
            # mean ± std as in table.md (metrics.mean_std: ddof=1 over seeds)
            gap_mean, gap_std = mean_std(e["avg_gap"] for e in evals)
            t = statistics.median(s["times"][row])
            ax.errorbar(t, gap_mean, yerr=gap_std, fmt="o" if "gradtau" not in row
                        else "*", ms=9 if row == "gradtau" else 6, label=row)
        ax.axvline(statistics.median(s["times"]["Retrain"]), color="k", ls="--", lw=1,
                   label="Retrain time")
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # no overlapping labels
        over = _gap_over(s)
        if over is None:
            ax.set_title(name)
        else:
            ax.set_title(f"{name}\n(Avg. Gap over {over})", fontsize=8)
        # --timing sweep's times are first calls (compilation included), as table.md says
        ax.set_xlabel("time per member of its sweep s, compilation included (log)"
                      if out.get("timing") == "sweep" else "wall time s (log)")
        ax.set_ylabel("Avg. Gap to Retrain (points)")
    for ax in axes.ravel()[len(names):]:        # an odd number of settings: one panel spare
        ax.set_axis_off()
    axes.ravel()[0].legend(fontsize=7)
    n = len(out["seeds"])
    fig.suptitle(f"Avg. Gap vs wall time, {out['dataset']}, {n} seed{'s' * (n != 1)}")
    report.save_figure(fig, path / "gap_vs_time.png")


def main(argv=None) -> int:
    args = parse_args(argv)
    train_config(args)    # a bad recipe or request is refused before anything is written
    splits = None if args.render_only else checked_splits(args)
    if args.render_only:    # read before prepare_dir creates --out (an empty folder was left)
        path = expand_user(args.out).absolute()
        rundir.check_readable(path)
        out = report.read_results(path, "unlearning_table.py", RESULT_KEYS)
    path = report.prepare_dir(args.out, flag="--out", not_a_run=ROLE)
    if args.render_only:
        write_report(out, path)
        plot(out, path)
    else:
        # The lock and the resume checks; the report files appear at the end only.
        with rundir.open_sweep(path, identity(args, splits), outputs=OUTPUTS,
                               restart=args.restart, command="unlearning_table") as cells:
            out = run(args, splits, cells)
            report.write_json(path / "results.json", out)
            plot(out, path)
            write_report(out, path)
    print((path / "table.md").read_text(encoding="utf-8"))
    return 0


if __name__ == "__main__":
    report.exit_on_error("unlearning_table", main)
