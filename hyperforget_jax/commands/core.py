"""``hyperforget train | retrain | evaluate | demo``."""

from __future__ import annotations

import argparse
import json
import math
import re
import warnings
from pathlib import Path

import numpy as np

from hyperforget_jax import data, report, rundir
from hyperforget_jax.commands import common
from hyperforget_jax.configflags import integer, seed_int
from hyperforget_jax.errors import ForgetRequestError, RunDirError, shell_quote
from hyperforget_jax.evaluation import (GAP_LABELS, class_matched_note, evaluate_unlearning,
                                        gap_keys, gap_to_retrain)


def _summary(title: str, rows: dict[str, dict]) -> str:
    keys = ("retain_acc", "forget_acc", "test_acc", "mia_loss_lr", "mia_entropy_lr",
            "mia_efficacy_svc")
    body = [[name] + [report.fmt(r.get(k), 2, 100.0 if "acc" in k else 1.0) for k in keys]
            for name, r in rows.items()]
    return f"## {title}\n\n" + report.markdown_table(
        ["model", "RA %", "FA %", "TA %", "mia_loss_lr", "mia_entropy_lr", "mia_efficacy_svc"],
        body) + "\n"


def slug(request: data.ForgetRequest) -> str:
    """The request's part of a default output directory's name. Two requests never share
    one: a random subset is named with its seed (seed 0 keeps the plain name), an index set
    with a digest of its indices (``describe()`` alone gave ``random-10`` for every seed and
    ``5-items`` for any 5 indices, so a sweep's next cell replaced the last one's evaluation)."""
    name = request.describe()
    if request.fraction is not None and request.seed:
        name += f" seed {request.seed}"
    if request.indices is not None:
        name += " " + rundir.array_fingerprint(np.asarray(sorted(request.indices),
                                                          dtype=np.int64))[:8]
    return re.sub(r"[^A-Za-z0-9.+-]+", "-", name).strip("-")


def cmd_train(args, retrain: bool = False) -> int:
    splits = common.load_splits(args)
    cfg = common.train_config_from_args(args)
    arch = common.architecture_for(cfg.arch, splits)
    request = common.request_from_args(args)
    fsplit = data.resolve_forget(splits.train, request) if request is not None else None
    train_ds = fsplit.retain if retrain else splits.train
    role = "retrain" if retrain else "original"
    meta = common.run_meta(args, arch, cfg, request, role)
    identity = common.train_identity(args, splits, arch, cfg, request, role)
    with common.open_run(args.run_dir, identity, args,
                         legacy=common.legacy_train_identity) as run:
        params, seconds, start, total = common.train_run(run.path, arch, train_ds, cfg, meta,
                                                         common.progress(args))
        # A rerun resumes (or reloads a finished run): train_seconds is the whole run's
        # training time (summed over resumes), this_call_seconds what this call took.
        results = {"meta": meta, "train_seconds": total, "this_call_seconds": seconds,
                   "resumed_from_epoch": start}
        md = f"# {'Retrain' if retrain else 'Train'}: {arch.name} on {args.dataset}\n\n"
        if fsplit is not None:
            results["eval"] = evaluate_unlearning(arch, params, splits, fsplit, request,
                                                  cfg.seed)
            md += _summary(f"forget request: {request.describe()}", {role: results["eval"]})
        else:
            from hyperforget_jax import metrics
            results["eval"] = {"train": metrics.evaluate(arch.apply, params, splits.train.x,
                                                         splits.train.y, arch.num_classes),
                               "test": metrics.evaluate(arch.apply, params, splits.test.x,
                                                        splits.test.y, arch.num_classes)}
            md += (f"train accuracy {100 * results['eval']['train']['accuracy']:.2f}%, "
                   f"test accuracy {100 * results['eval']['test']['accuracy']:.2f}%\n")
        md += (f"\ntraining time {total:.1f} s ({seconds:.1f} s for this call, compilation and "
               "evaluation included)\n" if not start else
               f"\ntraining time {total:.1f} s over resumes; {seconds:.1f} s in this run, "
               f"resumed at epoch {start} of {cfg.epochs}"
               f"{' (already trained: reloaded)' if start >= cfg.epochs else ''}\n")
        common.write_results(run.path, results, md)
    common.emit(args, results, md)
    return 0


def _check_retrain(meta: dict, request: data.ForgetRequest, path) -> None:
    """A Retrain compared with a request must be a Retrain *of that request*."""
    ident = meta.get("identity") or {}
    role = ident.get("role", meta.get("role"))
    if role == "unlearned" and ident.get("method") == "retrain":
        role = "retrain"    # `unlearn --method retrain`: the Retrain recipe on D_r too
    if role != "retrain":
        raise RunDirError(f"--retrain-dir {path} holds {rundir._a(role)} run, not a Retrain; "
                          "pass the --run-dir of `hyperforget retrain` for this forget request")
    got = ident.get("request", meta.get("request"))
    common.refuse_other_request(got, request, f"--retrain-dir {path} is a Retrain",
                                "pass the Retrain of this request")


def _check_own_request(meta: dict, request: data.ForgetRequest | None, path) -> None:
    """An unlearned model or a Retrain belongs to the request it was made for: evaluating it
    against another (e.g. a forgotten --forget-seed: another random subset) would report
    forget-set numbers of samples it never forgot."""
    ident = meta.get("identity") or {}
    own = ident.get("request")
    if request is None or own is None or ident.get("role") not in ("unlearned", "retrain",
                                                                    "hyperforget-sample"):
        return
    if not common.same_request(data.ForgetRequest.from_json(own), request):
        raise ForgetRequestError(
            f"--run-dir {path} is {rundir._a(ident['role'])} run for the request "
            f"{json.dumps(own)}, this command asks for {json.dumps(request.to_json())}; drop "
            "the request flags to evaluate it on its own request (or repeat them exactly, "
            "--forget-seed included)")


def _recipe_difference(recipe: dict, retrain_meta: dict) -> dict:
    """The training-recipe fields (seed aside: Retrains of other seeds are the usual baseline)
    in which a Retrain differs from the recipe a Retrain of the evaluated run repeats, as
    ``{field: {"run": ..., "retrain": ...}}``; empty where either records none. `evaluate`
    accepted a 2-epoch Retrain of a 10-epoch original without a word, and reported the gap
    to it as the gap to Retrain."""
    ident = retrain_meta.get("identity") or {}
    theirs = ident.get("train_config") or retrain_meta.get("train_config")
    if not isinstance(theirs, dict):
        return {}
    return {k: {"run": v, "retrain": theirs[k]} for k, v in recipe.items()
            if k != "seed" and k in theirs and not _same_setting(theirs[k], v)}


def _same_setting(a, b) -> bool:
    """Recipe values equal as training uses them: numbers to float32 rounding (JAX trains in
    float32: a run trained from Python with ``lr=np.float32(0.01)`` records
    0.009999999776482582, `retrain --lr 0.01` records 0.01, and the two were called different
    recipes)."""
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (a, b))
    return math.isclose(a, b, rel_tol=1e-6) if numbers else a == b


def _describe_difference(differs: dict) -> str:
    return ", ".join(f"{k} {d['retrain']} (this run's recipe: {d['run']})"
                     for k, d in differs.items())


def _own_seed(meta: dict) -> int:
    """The seed a run's own command evaluated it with (its attacks' CV splits): ``unlearn``'s
    and ``sample``'s ``--seed``, ``train`` / ``retrain``'s training seed; 0 if none is
    recorded."""
    ident = meta.get("identity") or {}
    if isinstance(ident.get("seed"), int):
        return ident["seed"]
    seed = (ident.get("train_config") or meta.get("train_config") or {}).get("seed")
    return seed if isinstance(seed, int) else 0


def _recipe(meta: dict, arch) -> dict:
    """The training recipe a Retrain of the model in a run repeats: the run's own (``train``,
    ``retrain``, ``unlearn``), a sampled network's start network's (``sample --run-dir``), or
    at least its architecture. A sample's params record no recipe: the advised `retrain`
    trained the default mlp, which the next evaluate refused as another architecture."""
    ident = meta.get("identity") or {}
    start = ident.get("start") if isinstance(ident.get("start"), dict) else {}
    run = start.get("run") if isinstance(start.get("run"), dict) else {}
    recipe = meta.get("train_config") or run.get("train_config")
    return recipe if isinstance(recipe, dict) else {"arch": arch.source or arch.name}


def cmd_evaluate(args) -> int:
    arch, params, meta = common.load_run(
        args.run_dir, first=f"hyperforget train --run-dir {shell_quote(args.run_dir)}"
                            f"{common.data_flags(args)}")
    own_seed = _own_seed(meta)
    if args.seed is None:       # the numbers the run's own command reported
        args.seed = own_seed
    splits = common.load_splits(args)
    arch.check_inputs(splits.train.x, f"--dataset {args.dataset}")
    common.check_same_data(meta, args, splits, args.run_dir)
    arch.check_params(params)
    request = common.request_from_args(args)
    _check_own_request(meta, request, args.run_dir)
    if request is None:
        if not meta.get("request"):
            raise data.ForgetRequestError("give a forget request (--forget-class, "
                                          "--forget-fraction or --forget-indices)")
        request = data.ForgetRequest.from_json(meta["request"])
    fsplit = data.resolve_forget(splits.train, request)
    reads = [args.run_dir]
    r_meta = r_params = None
    differs: dict = {}
    if args.retrain_dir:
        # A missing Retrain is made by `retrain` (not `train`), with the data, recipe and
        # request of the run it is compared with.
        recipe = _recipe(meta, arch)
        retrain_flags = (f"{common.data_flags(args)}{common.recipe_flags(recipe)}"
                         f"{common.request_flags(request)}")
        _, r_params, r_meta = common.load_run(
            args.retrain_dir, "--retrain-dir",
            first=f"hyperforget retrain --run-dir {shell_quote(args.retrain_dir)}{retrain_flags}")
        arch.check_params(r_params)
        common.check_same_data(r_meta, args, splits, args.retrain_dir, "Retrain model")
        _check_retrain(r_meta, request, args.retrain_dir)
        reads.append(args.retrain_dir)
        differs = _recipe_difference(recipe, r_meta)
    # Rows are labelled by directory, but never "retrain" (that row is the --retrain-dir's).
    run_label, retrain_label = common.unique_labels([args.run_dir], ("retrain",))[0], "retrain"
    # Another seed than the run's own is part of the default name (as `unlearn`'s method
    # seed): an evaluation replaces the last one in its directory, so a sweep over --seed (an
    # array job) kept only its last seed's evaluation.json, each job exiting 0.
    seed = f"-seed-{args.seed}" if args.seed != own_seed else ""
    out = args.out or Path(args.run_dir) / "evaluate" / f"{slug(request)}{seed}"
    identity = {"role": "evaluation", "run": meta.get("identity"),
                "retrain": r_meta.get("identity") if r_meta else None,
                "request": request.to_json(), **common.data_identity(args, splits),
                "seed": args.seed}
    with common.open_run(out, identity, args, reads=reads, flag="--out", replace_role=True,
                         outputs=("evaluation.json", "evaluation.md")) as run:
        rows = {run_label: evaluate_unlearning(arch, params, splits, fsplit, request,
                                               args.seed)}
        results = {"request": request.to_json(), "run_dir": str(Path(args.run_dir).absolute()),
                   "dataset": args.dataset, "split_seed": args.split_seed,
                   "seed": args.seed, "run": rows[run_label], "eval": rows}
        if r_params is not None:
            rows[retrain_label] = evaluate_unlearning(arch, r_params, splits, fsplit, request,
                                                      args.seed)
            # A metric that is not applicable (an attack on a one-sample forget set) is left
            # out of the gap: name the keys it averages, as `hyperforget unlearn` does.
            used = gap_keys(rows[run_label], rows[retrain_label])
            results.update(retrain_dir=str(Path(args.retrain_dir).absolute()),
                           retrain=rows[retrain_label],
                           avg_gap=gap_to_retrain(rows[run_label], rows[retrain_label]),
                           avg_gap_keys=list(used))
            if differs:
                results["retrain_recipe_differs"] = differs
        md = _summary(f"forget request: {request.describe()}", rows)
        na = rows[run_label].get("not_applicable")
        if na:
            md += "\nNot applicable: " + "; ".join(f"{k} ({v})" for k, v in na.items()) + ".\n"
        if note := class_matched_note(rows[run_label]):
            md += f"\n{note}\n"
        if "avg_gap" in results:
            md += (f"\nAvg. Gap to Retrain ({', '.join(GAP_LABELS[k] for k in used)}; points): "
                   f"{results['avg_gap']:.2f}\n")
            if differs:
                md += (f"\nThe Retrain's recipe differs from this run's: "
                       f"{_describe_difference(differs)}.\n")
        common.write_results(run.path, results, md, ("evaluation.json", "evaluation.md"))
    if differs:
        # Once the evaluation is written: warned where `differs` is computed, a later refusal
        # (a bad --out) printed the warning above its one error line.
        warnings.warn(f"--retrain-dir {args.retrain_dir} was trained with "
                      f"{_describe_difference(differs)}: the Avg. Gap compares with a "
                      "Retrain of another recipe (the Retrain of this run: hyperforget "
                      f"retrain{retrain_flags} --run-dir NEW_DIR)", stacklevel=1)
    common.emit(args, results, md)
    return 0


def cmd_demo(args) -> int:
    from hyperforget_jax.demo import run_demo

    run_demo(args)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    for name, retrain, helptext in (
            ("train", False, "train the original classifier on the full training set"),
            ("retrain", True, "train from scratch on the retain set (the Retrain baseline)")):
        request = ("" if retrain else " A forget request is optional: it adds the "
                   "original's RA/FA/TA and attacks on it to the report.")
        p = sub.add_parser(name, help=helptext, description=helptext + ". Rerunning with the "
                           "same flags resumes from the run's checkpoints; a run directory "
                           "holding another run is refused." + request)
        common.add_data_args(p)
        common.add_train_args(p)
        common.add_request_args(p, required=retrain)
        p.add_argument("--run-dir", type=common.path_arg,
                       default=f"runs/{'retrain' if retrain else 'original'}",
                       help=f"run directory (default runs/{'retrain' if retrain else 'original'})")
        common.add_output_args(p)
        p.set_defaults(func=lambda a, r=retrain: cmd_train(a, r))

    p = sub.add_parser("evaluate", help="evaluate a trained run against a forget request "
                                        "(RA/FA/TA and every named MIA)")
    p.add_argument("--run-dir", required=True, type=common.path_arg,
                   help="run written by train/retrain/unlearn/sample")
    p.add_argument("--retrain-dir", type=common.path_arg,
                   help="the Retrain run of the same request, for the Avg. Gap")
    p.add_argument("--out", type=common.path_arg,
                   help="output directory (default: <run-dir>/evaluate/<request>[-seed-<N>], "
                        "the seed named when --seed is not the run's own)")
    p.add_argument("--seed", type=seed_int, default=None,
                   help="seed of the attack CV splits (default: the seed the run's own command "
                        "evaluated it with: unlearn's / sample's --seed, train's training seed)")
    common.add_data_args(p)
    common.add_request_args(p, required=False)
    common.add_output_args(p, quiet=False)
    p.set_defaults(func=cmd_evaluate, _resumes=False)

    p = sub.add_parser("demo", help="the end-to-end demo on the embedded MNIST-5k",
                       description="Trains the original classifier, retrains without a class, "
                                   "runs ∇τ, samples with the shipped DiHyFo-2 and unlearns a "
                                   "GAN (--sections), and writes report.md, results.json and "
                                   "plots into the run directory.")
    p.add_argument("--run-dir", type=common.path_arg, default="runs/demo",
                   help="run directory (default runs/demo)")
    p.add_argument("--forget-class", type=common.class_id, default=3,
                   help="the class to forget (default 3)")
    p.add_argument("--seeds", type=integer, default=3, help="number of model seeds (default 3)")
    p.add_argument("--sections", default="all",
                   help="comma list of demo sections to run: gradtau,hyperforget,gan (or all, "
                        "or none; default all: every section whose package is installed)")
    common.add_output_args(p)
    p.set_defaults(func=cmd_demo, _resumes=False)
