"""Privacy check as a release gate: U-LiRA and mia_loss_lr on the forget set, for ∇τ (and
HyperForget when a trained hypernetwork is given), beside Retrain; exits 1 when a method's gap to
Retrain exceeds the tolerance.

Command (from the repository root)::

    PYTHONPATH=. python experiments/privacy_gate.py --out runs/privacy_gate
    PYTHONPATH=. python experiments/privacy_gate.py --hypernet runs/dihyfo2 --out runs/gate_hf

Per model seed (``--seeds``, default 3) it trains the original classifier and Retrain (the same
recipe on D_r), unlearns with each method, and measures on the forget set (one forget set for
every seed: ``--forget-fraction``'s subset is drawn once, with seed 0, so the spread over seeds
is the models', not the subsets' as in ``unlearning_table.py``):

* ``mia_loss_lr``: the loss-threshold logistic-regression MIA of :mod:`hyperforget_jax.metrics`
  (forget set vs held-out non-members); gap = |method − Retrain|.
* U-LiRA (:mod:`hyperforget_jax.ulira`, ``--shadows`` shadow pairs): balanced accuracy of the
  per-example likelihood-ratio test "unlearned or retrained?". The Retrain row is the attack's
  noise floor: the same test where "unlearning" is retraining with another seed (shadows and
  target alike), so its ideal is 0.5 up to sampling noise; gap = |method − Retrain row|. Both
  sides count: an accuracy far below the floor is a test that is reliably wrong, i.e. the
  models are told apart as well (read the test's answer the other way round).

The gate compares the mean over seeds: ``gap_mia > --tol-mia`` or ``gap_ulira > --tol-ulira``
fails. Exit codes: 0 pass, 1 gate failed, 2 bad input (one line on stderr). Writes ``gate.json``
and ``gate.md`` to ``--out`` (atomically, only once every number is in; those of an earlier run
are removed at the start).

Resuming: each model seed is a cell (its original, Retrain, noise floor, shadows and every
method's numbers), stored once complete in ``<out>/cells/`` with the configuration that
produced it; rerunning the same command after an interruption reuses the stored seeds (``gate.md``
names them) and runs the rest, and exits as an uninterrupted run would. Another configuration
into the same ``--out`` is refused (exit 2; ``--restart`` replaces that run), as is a second run
while one writes it.

The classifier recipe takes one flag per :class:`~hyperforget_jax.train.TrainConfig` field
(``--arch``: a registered name or an import path ``pkg.module:Name``; ``--epochs``,
``--batch-size``, ``--lr``, ``--weight-decay``), ∇τ one ``--gradtau-FIELD`` flag per
:class:`~hyperforget_jax.unlearn.GradTauConfig` field (``--gradtau-epochs 1``,
``--gradtau-lr``, ...); ``--help`` documents each.

HyperForget: its hypernetwork was trained for one architecture and dataset (``gpt_mlp`` on
MNIST-5k by default) and class requests only: run the gate with that ``--arch`` and
``--dataset`` (another one is refused with a one-line error) and a ``--forget-class``. Each
U-LiRA shadow is unlearned by sampling from the hypernetwork with the shadow as start network,
with a key of its own (``hf_shadow_seed``), never the target's.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import sys
import time
from pathlib import Path

import jax
import numpy as np

from hyperforget_jax import __version__, data, report, rundir, train, ulira
from hyperforget_jax.cli import ArgumentParser
from hyperforget_jax.commands.common import check_same_data, path_arg, refuse_zero_epochs
from hyperforget_jax.config import is_scalar_number
from hyperforget_jax.configflags import add_config_flags, integer
from hyperforget_jax.errors import ConfigError, HyperforgetError
from hyperforget_jax.evaluation import evaluate_unlearning
from hyperforget_jax.models import as_model
from hyperforget_jax.unlearn.gradtau import TAU_MODES, GradTauConfig


#: HyperForget's DDIM steps when --hypernet is given without --num-steps.
DEFAULT_NUM_STEPS = 20


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=path_arg, default=None,
                   help="output directory (default runs/privacy_gate; with --recheck "
                   "runs/privacy_gate_recheck: a gate run's own directory is refused)")
    p.add_argument("--dataset", default="mnist5k", choices=data.DATASETS)
    p.add_argument("--data-dir", type=path_arg, default=None)
    req = p.add_mutually_exclusive_group()
    req.add_argument("--forget-class", type=integer, nargs="+", metavar="C")
    req.add_argument("--forget-fraction", type=float, metavar="F")
    p.add_argument("--seeds", type=integer, default=3, help="model seeds 0..N-1")
    p.add_argument("--shadows", type=integer, default=8, help="U-LiRA shadow pairs (>= 3)")
    # One flag per config field, help from the configs' docstrings: the classifier recipe
    # (--arch --epochs --batch-size --lr --weight-decay; seeds come from --seeds) and the ∇τ
    # config as --gradtau-FIELD (--gradtau-epochs, --gradtau-lr, ...).
    p.set_defaults(
        _train_flags=add_config_flags(p, train.TrainConfig, exclude=("seed",),
                                      title="classifier recipe (originals, Retrain, shadows)"),
        _gradtau_flags=add_config_flags(
            p, GradTauConfig, title="∇τ config", dest_prefix="gradtau_",
            choices={"tau_mode": TAU_MODES},
            rename={f.name: "gradtau-" + f.name.replace("_", "-")
                    for f in dataclasses.fields(GradTauConfig)}))
    p.add_argument("--hypernet", type=path_arg, default=None,
                   help="a trained HyperForget hypernetwork (hyperforget hypertrain --out)")
    p.add_argument("--num-steps", type=integer, default=None,
                   help="HyperForget DDIM steps (with --hypernet; default "
                        f"{DEFAULT_NUM_STEPS})")
    p.add_argument("--tol-mia", type=float, default=0.05,
                   help="max |mia_loss_lr(method) − mia_loss_lr(Retrain)| (default 0.05)")
    p.add_argument("--tol-ulira", type=float, default=0.10,
                   help="max |U-LiRA accuracy(method) − the Retrain noise floor's|, either "
                        "side (default 0.10)")
    p.add_argument("--recheck", metavar="GATE_JSON", type=path_arg, default=None,
                   help="re-apply the tolerances to the numbers of an earlier gate.json "
                        "(no training); writes the new verdict to --out")
    p.add_argument("--restart", action="store_true",
                   help="start over: drop the seeds an earlier run stored in --out (by default "
                   "the same command resumes them, and another one is refused)")
    p.add_argument("--quiet", action="store_true")
    return p


def parse_args(argv=None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    # A recheck reads the stored numbers and their settings: --seeds 7 or --dataset mnist
    # beside it were ignored without a word.
    parser.refuse_beside(args, "--recheck", keep=("out", "tol_mia", "tol_ulira", "quiet"),
                         does="re-gates the stored per-seed numbers at new tolerances, with "
                              "the settings they were measured with")
    if args.out is None:
        args.out = "runs/privacy_gate_recheck" if args.recheck else "runs/privacy_gate"
    return args


def configs(args) -> tuple[train.TrainConfig, GradTauConfig]:
    """The classifier recipe and the ∇τ config: defaults with the given flags applied
    (--epochs 0, as on the CLI, refused: a gate of untrained originals)."""
    cfg = args._train_flags.build(args)
    refuse_zero_epochs(cfg.epochs)
    return cfg, args._gradtau_flags.build(args)


def num_steps(args) -> int:
    """HyperForget's DDIM steps: --num-steps, else :data:`DEFAULT_NUM_STEPS`."""
    return DEFAULT_NUM_STEPS if args.num_steps is None else args.num_steps


def _check(args) -> data.ForgetRequest:
    configs(args)  # validates
    if args.seeds < 1:
        raise ConfigError(f"--seeds must be >= 1, got {args.seeds}")
    for name in ("tol_mia", "tol_ulira"):
        v = getattr(args, name)
        if not (v >= 0 and np.isfinite(v)):
            raise ConfigError(f"--{name.replace('_', '-')} must be a finite number >= 0, got {v}")
    ulira.ULiRAConfig(num_shadows=args.shadows)  # validates
    if args.num_steps is not None and not args.hypernet:     # silently unused
        raise ConfigError("--num-steps is HyperForget's DDIM steps; pass --hypernet too, or "
                          "drop it")
    if args.hypernet and args.forget_class is None:
        raise ConfigError("HyperForget (--hypernet) answers class requests only; pass "
                          "--forget-class")
    if args.forget_fraction is not None:
        return data.ForgetRequest(fraction=args.forget_fraction, seed=0)
    return data.ForgetRequest(classes=tuple(args.forget_class or (3,)))


#: The role of this script's runs in ``run.json``, and the files it writes at its end.
ROLE = "experiment privacy_gate"
OUTPUTS = ("gate.json", "gate.md")


def _methods(args, arch, splits):
    """(name -> unlearn_fn(params, split, seed) -> params, a fingerprint of the hypernetwork's
    parameters or None). A hypernetwork recorded for another dataset or split seed is refused
    (only its architecture was compared: the shipped MNIST-5k network ran on any 28×28
    dataset, its rows and verdict not saying so)."""
    from hyperforget_jax.unlearn import unlearn

    cfg = configs(args)[1]
    val = splits.val
    out = {"gradtau": lambda p, sp, s: unlearn("gradtau", arch, p, sp, val, cfg, seed=s).params}
    if not args.hypernet:
        return out, None
    from hyperforget_jax.hyperforget import dihyfo as H

    net, meta = H.load_hypernet(args.hypernet)
    steps = num_steps(args)
    # Refused here, before any training (it was refused by the first sample, after the first
    # seed's original, Retrain, noise floor and shadows).
    from hyperforget_jax.hyperforget.diffusion import ddim_timesteps
    ddim_timesteps(net.spec.num_train_steps, steps)
    # The gate's splits are make_splits' default (split seed 0).
    check_same_data(meta, argparse.Namespace(dataset=args.dataset, split_seed=0), splits,
                    args.hypernet, "hypernetwork")
    classes = tuple(args.forget_class)
    H.check_request(net.spec, classes)
    if net.spec.arch != arch:
        raise ConfigError(f"the hypernetwork was trained for {net.spec.arch.name} on "
                          f"{net.spec.arch.input_shape} images; run the gate with --arch "
                          f"{net.spec.arch.name} and that dataset")

    def hyperforget(p, sp, s):
        prompt = H.make_prompt(net, p, sp.forget.replace(
            x=np.concatenate([sp.forget.x, sp.retain.x]),
            y=np.concatenate([sp.forget.y, sp.retain.y])), classes)
        return H.sample(jax.random.key(s), net, p, prompt, steps)

    out["hyperforget"] = hyperforget
    return out, rundir.array_fingerprint(*jax.tree.leaves(net.params))


#: Seeds of the noise floor's retrainings: model seed k's floor target trains with
#: ``FLOOR_SEED_BASE + 1000·k`` and its shadow s with ``FLOOR_SEED_BASE + 1000·k + 1 + s``, a range
#: disjoint from the model seeds (0..N-1) and from U-LiRA's shadow seeds (``1000·k + 1 + s``,
#: :func:`hyperforget_jax.ulira.train_shadows`). The earlier ``seed + 1000 + s`` equalled the
#: shadow seeds for model seed 1: its "unlearned" shadows were its retrained shadows (same data,
#: seed and recipe), so that seed's floor measured nothing.
FLOOR_SEED_BASE = 1 << 30


def floor_seed(seed: int, shadow: int | None = None) -> int:
    """The seed of the noise floor's target (``shadow`` None) or of its shadow ``shadow``."""
    return FLOOR_SEED_BASE + 1000 * seed + (0 if shadow is None else 1 + shadow)


#: Seeds of HyperForget's samples for the U-LiRA shadows: model seed k's shadow s samples with
#: ``HF_SHADOW_SEED_BASE + 1000·k + s``; its target samples with k. With the shadow's index as
#: its seed (``unlearn_shadows``' ``s``), shadow k drew model seed k's target noise (DDIM, η = 0:
#: the sample is a function of it, so the attack's "unlearned" shadows held one twin of the
#: target), and shadow s drew the same noise for every model seed. ∇τ's shadows keep ``s``:
#: its draws are batch orders over sets of other sizes than the target's, not the target's.
HF_SHADOW_SEED_BASE = 1 << 29


def hf_shadow_seed(seed: int, shadow: int) -> int:
    """The key seed of HyperForget's sample for shadow ``shadow`` of model seed ``seed``."""
    return HF_SHADOW_SEED_BASE + 1000 * seed + shadow


def run(args) -> dict:
    request = _check(args)
    splits = data.make_splits(data.load_dataset(args.dataset, args.data_dir))
    fsplit = data.resolve_forget(splits.train, request)
    if len(fsplit.forget) < 2:       # refused by U-LiRA after the first seed's trainings
        raise ConfigError(f"the gate's attacks (U-LiRA, mia_loss_lr) need at least 2 forget "
                          f"samples; {request.describe()} is {len(fsplit.forget)}: pass a "
                          "larger --forget-fraction")
    for seed in range(args.seeds):     # (refused after the first seed's trainings, --out left)
        ulira.shadow_subsets(fsplit, ulira.ULiRAConfig(args.shadows, seed))
    base, gcfg = configs(args)
    arch = as_model(base.arch, splits.train.x.shape[1:], splits.train.num_classes)
    methods, hypernet = _methods(args, arch, splits)
    # only once the request fits the data and the hypernetwork its settings (a refused
    # --num-steps left an empty --out behind)
    out_dir = report.prepare_dir(args.out, flag="--out", not_a_run=ROLE)
    # Everything that determines the numbers and the verdict: a rerun into the same --out
    # resumes only a run of exactly this (rundir.open_sweep).
    ident = {"role": ROLE, "version": __version__, "dataset": args.dataset,
             "data": rundir.data_fingerprint(splits), "request": request.to_json(),
             "train_config": base.to_json(), "gradtau_config": dataclasses.asdict(gcfg),
             "hypernet": hypernet, "num_steps": num_steps(args) if hypernet else None,
             "seeds": args.seeds, "shadows": args.shadows, "tol_mia": args.tol_mia,
             "tol_ulira": args.tol_ulira, "backend": jax.default_backend(),
             # HyperForget's cells of a run before the shadows had their own sample seeds are
             # not reused (their shadows held a twin of the target)
             **({"hf_shadow_seed_base": HF_SHADOW_SEED_BASE} if hypernet else {})}
    with rundir.open_sweep(out_dir, ident, outputs=OUTPUTS, restart=args.restart,
                           command="privacy_gate") as cells:
        return _sweep(args, cells, splits, fsplit, request, base, arch, methods, out_dir)


def _sweep(args, cells, splits, fsplit, request, base, arch, methods, out_dir) -> dict:
    """Every model seed, each one a cell of ``cells``; then the gate."""
    log = (lambda *a: None) if args.quiet else (lambda *a: print(*a, file=sys.stderr))
    rows: dict[str, list[dict]] = {"retrain": [], **{m: [] for m in methods}}
    t0 = time.perf_counter()
    for seed in range(args.seeds):
        key = f"seed {seed}"
        one = cells.compute(key, cells.identity, lambda: _seed(
            args, splits, fsplit, request, base, arch, methods, seed))
        for name, row in one.items():
            rows[name].append(row)
        log(f"seed {seed} " + ("reused" if key in cells.reused else "done")
            + f" ({time.perf_counter() - t0:.0f} s)")
    return gate(rows, args, request, arch, time.perf_counter() - t0, out_dir, cells.reused)


def _seed(args, splits, fsplit, request, base, arch, methods, seed) -> dict:
    """One model seed's row of every model (Retrain: the noise floor's U-LiRA)."""
    rows = {}
    cfg = dataclasses.replace(base, seed=seed)
    original = train.fit(arch, splits.train, cfg)[0].params
    retrained = train.fit(arch, fsplit.retain, cfg)[0].params
    floor = train.fit(arch, fsplit.retain,
                      dataclasses.replace(cfg, seed=floor_seed(seed)))[0]
    sh = ulira.train_shadows(arch, splits.train, fsplit, cfg,
                             ulira.ULiRAConfig(args.shadows, seed))
    ev = lambda p: evaluate_unlearning(arch, p, splits, fsplit, request, seed)
    r_eval = ev(retrained)
    # Noise floor: "unlearning" by retraining (another seed) on every shadow and target.
    re_fn = lambda p, sp, s: train.fit(
        arch, sp.retain, dataclasses.replace(cfg, seed=floor_seed(seed, s)))[0].params
    noise = ulira.ulira(arch, sh, ulira.unlearn_shadows(sh, re_fn, splits.train),
                        splits.train, fsplit, floor.params, retrained)
    rows["retrain"] = {"mia_loss_lr": r_eval["mia_loss_lr"],
                       "ulira_acc": noise["accuracy"], "ulira_auc": noise["auc"],
                       "forget_acc": r_eval["forget_acc"]}
    for name, fn in methods.items():
        target = fn(original, fsplit, seed)
        sh_fn = fn if name != "hyperforget" else (
            lambda p, sp, s, fn=fn: fn(p, sp, hf_shadow_seed(seed, s)))
        un_sh = ulira.unlearn_shadows(sh, sh_fn, splits.train)
        u = ulira.ulira(arch, sh, un_sh, splits.train, fsplit, target, retrained)
        m_eval = ev(target)
        rows[name] = {"mia_loss_lr": m_eval["mia_loss_lr"], "ulira_acc": u["accuracy"],
                      "ulira_auc": u["auc"], "forget_acc": m_eval["forget_acc"]}
    return rows


#: The numbers a gate row holds per seed.
ROW_KEYS = ("mia_loss_lr", "ulira_acc", "ulira_auc", "forget_acc")


def _mean(rows, key):
    return statistics.fmean(r[key] for r in rows)


def _std(rows, key):
    """The std over seeds; None for one seed, whose std is not defined (not 0)."""
    return statistics.stdev([r[key] for r in rows]) if len(rows) > 1 else None


def gate(rows: dict, args, request, arch, seconds: float, out_dir: Path,
         reused: list[str] = (), recheck_of: dict | None = None) -> dict:
    """The verdicts, written to ``gate.json`` / ``gate.md``. ``recheck_of`` (``--recheck``):
    the earlier gate.json's path, tolerances and verdict, recorded and named in the report,
    whose numbers and time are that run's (without it a recheck's gate.md read as a gate run
    of its own, "PASSED in 39 s", where that run had FAILED at its tolerances)."""
    ret = rows["retrain"]
    verdicts = {}
    for name in rows:
        if name == "retrain":
            continue
        gap_mia = abs(_mean(rows[name], "mia_loss_lr") - _mean(ret, "mia_loss_lr"))
        gap_ulira = abs(_mean(rows[name], "ulira_acc") - _mean(ret, "ulira_acc"))
        # (`not gap <= tol`: a NaN gap fails)
        fails = [f"mia_loss_lr gap {gap_mia:.3f} > {args.tol_mia}"] \
            if not gap_mia <= args.tol_mia else []
        if not gap_ulira <= args.tol_ulira:
            fails.append(f"U-LiRA gap {gap_ulira:.3f} > {args.tol_ulira}")
        verdicts[name] = {"gap_mia_loss_lr": gap_mia, "gap_ulira_acc": gap_ulira,
                          "passed": not fails, "failures": fails}
    result = {"request": request.to_json(), "arch": arch.name, "dataset": args.dataset,
              "seeds": args.seeds, "shadows": args.shadows,
              "tolerance": {"mia_loss_lr": args.tol_mia, "ulira_acc": args.tol_ulira},
              "per_seed": rows, "verdicts": verdicts,
              "passed": all(v["passed"] for v in verdicts.values()), "seconds": seconds,
              "reused": list(reused), **({"recheck_of": recheck_of} if recheck_of else {})}
    ms = lambda r, k: f"{_mean(r, k):.3f} ± " + report.fmt(_std(r, k), 3)
    table = report.markdown_table(
        ["model", "FA %", "mia_loss_lr", "U-LiRA acc", "U-LiRA AUC", "gap mia", "gap U-LiRA",
         "gate"],
        [[name, f"{100 * _mean(r, 'forget_acc'):.1f}", ms(r, "mia_loss_lr"),
          ms(r, "ulira_acc"), ms(r, "ulira_auc"),
          f"{verdicts[name]['gap_mia_loss_lr']:.3f}" if name in verdicts else "–",
          f"{verdicts[name]['gap_ulira_acc']:.3f}" if name in verdicts else "–",
          ("PASS" if verdicts[name]["passed"] else "FAIL") if name in verdicts else "ref"]
         for name, r in rows.items()])
    again = "" if recheck_of is None else (
        f"Rechecked (`--recheck`, no training): the numbers of `{recheck_of['path']}`, gated "
        f"there at tolerances mia_loss_lr {recheck_of['tolerance'].get('mia_loss_lr')}, U-LiRA "
        f"{recheck_of['tolerance'].get('ulira_acc')}: "
        f"{'PASSED' if recheck_of['passed'] else 'FAILED'}; the time below is that run's.\n\n")
    md = (f"# Privacy gate: forget {request.describe()}, {arch.name} on {args.dataset}\n\n"
          + again +
          f"mean ± std over {args.seeds} seed(s); U-LiRA with {args.shadows} shadow pairs "
          "(Retrain row: unlearning = retraining with another seed, the attack's noise floor). "
          f"Tolerances: mia_loss_lr {args.tol_mia}, U-LiRA {args.tol_ulira}.\n\n{table}\n\n"
          f"**{'PASSED' if result['passed'] else 'FAILED'}** in {seconds:.0f} s"
          + (f" (resumed: {', '.join(reused)} reused from an earlier run of this command, its "
             "`cells/`; the time is this run's alone)" if reused else "") + "\n")
    report.write_json(out_dir / "gate.json", result)
    report.atomic_write(out_dir / "gate.md", md)
    return result


def _check_stored_rows(rows, seeds, shadows) -> None:
    """ConfigError unless a gate.json's numbers are what :func:`gate` wrote: ``retrain`` and at
    least one method, each ``seeds`` rows of finite numbers (a damaged file was a KeyError or
    StatisticsError traceback, exit 1, read as "gate failed"; a NaN gap passed)."""
    for name, v in (("seeds", seeds), ("shadows", shadows)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ConfigError(f"{name} is {v!r}, not a count")
    if not isinstance(rows, dict) or "retrain" not in rows or len(rows) < 2:
        raise ConfigError("per_seed must hold the retrain rows and at least one method's")
    for name, rs in rows.items():
        if not isinstance(rs, list) or len(rs) != seeds:
            raise ConfigError(f"per_seed.{name} must be a list of {seeds} rows (seeds)")
        for r in rs:
            for k in ROW_KEYS:
                v = r.get(k) if isinstance(r, dict) else None
                if not is_scalar_number(v) or not math.isfinite(v):
                    raise ConfigError(f"per_seed.{name}: {k} is {v!r}, not a finite number")


def recheck(args) -> dict:
    """The verdict of ``--recheck``: an earlier run's per-seed numbers, new tolerances."""
    _check(args)
    path = Path(args.recheck).expanduser()
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
        rows, request = old["per_seed"], data.ForgetRequest.from_json(old["request"])
        arch_name, dataset = old["arch"], old["dataset"]
        seeds, shadows = old["seeds"], old["shadows"]
        source = {"path": str(path.absolute()), "tolerance": dict(old.get("tolerance") or {}),
                  "passed": old.get("passed")}
        _check_stored_rows(rows, seeds, shadows)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        # (ConfigError is a ValueError: the stored rows' own refusal names what is wrong)
        raise ConfigError(f"--recheck {path}: not a gate.json written by privacy_gate.py ({e})"
                          ) from e
    out_dir = report.prepare_dir(args.out, flag="--out", not_a_run=True)
    args = argparse.Namespace(**{**vars(args), "seeds": seeds, "shadows": shadows,
                                 "dataset": dataset})
    arch = argparse.Namespace(name=arch_name)
    return gate(rows, args, request, arch, old.get("seconds", 0.0), out_dir, recheck_of=source)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        result = recheck(args) if args.recheck else run(args)
    except HyperforgetError as e:
        print(f"privacy_gate: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    if not args.quiet:
        print((Path(args.out).expanduser() / "gate.md").read_text(encoding="utf-8"))
    for name, v in result["verdicts"].items():
        if not v["passed"]:
            print(f"privacy_gate: {name} FAILED: {'; '.join(v['failures'])}", file=sys.stderr)
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    report.exit_on_error("privacy_gate", main)
