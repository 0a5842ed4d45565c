"""``hyperforget train | retrain | evaluate | demo``."""

from __future__ import annotations

import argparse
from pathlib import Path

from hyperforget_jax import data, report
from hyperforget_jax.commands import common
from hyperforget_jax.evaluation import evaluate_unlearning, gap_to_retrain


def _summary(title: str, rows: dict[str, dict]) -> str:
    keys = ("retain_acc", "forget_acc", "test_acc", "mia_loss_lr", "mia_entropy_lr",
            "mia_efficacy_svc")
    body = [[name] + [report.fmt(r.get(k), 2, 100.0 if "acc" in k else 1.0) for k in keys]
            for name, r in rows.items()]
    return f"## {title}\n\n" + report.markdown_table(
        ["model", "RA %", "FA %", "TA %", "mia_loss_lr", "mia_entropy_lr", "mia_efficacy_svc"],
        body) + "\n"


def cmd_train(args, retrain: bool = False) -> int:
    splits = common.load_splits(args)
    cfg = common.train_config_from_args(args)
    arch = common.architecture_for(args.arch, splits)
    request = common.request_from_args(args)
    fsplit = data.resolve_forget(splits.train, request) if request is not None else None
    train_ds = fsplit.retain if retrain else splits.train
    run_dir = report.prepare_dir(args.run_dir)
    meta = common.run_meta(args, arch, cfg, request, "retrain" if retrain else "original")
    params, seconds = common.train_run(run_dir, arch, train_ds, cfg, meta, not args.quiet)
    results = {"meta": meta, "train_seconds": seconds}
    md = f"# {'Retrain' if retrain else 'Train'}: {arch.name} on {args.dataset}\n\n"
    if fsplit is not None:
        results["eval"] = evaluate_unlearning(arch, params, splits, fsplit, request, args.seed)
        md += _summary(f"forget request: {request.describe()}", {meta["role"]: results["eval"]})
    else:
        from hyperforget_jax import metrics
        results["eval"] = {"train": metrics.evaluate(arch.apply, params, splits.train.x,
                                                     splits.train.y, arch.num_classes),
                           "test": metrics.evaluate(arch.apply, params, splits.test.x,
                                                    splits.test.y, arch.num_classes)}
        md += (f"train accuracy {100 * results['eval']['train']['accuracy']:.2f}%, "
               f"test accuracy {100 * results['eval']['test']['accuracy']:.2f}%\n")
    md += f"\ntraining time {seconds:.1f} s\n"
    common.write_results(run_dir, results, md)
    print(md)
    return 0


def cmd_evaluate(args) -> int:
    arch, params, meta = common.load_run(args.run_dir)
    splits = common.load_splits(args)
    arch.check_params(params)
    request = common.request_from_args(args)
    if request is None:
        if not meta.get("request"):
            raise data.ForgetRequestError("give a forget request (--forget-class, "
                                          "--forget-fraction or --forget-indices)")
        request = data.ForgetRequest.from_json(meta["request"])
    fsplit = data.resolve_forget(splits.train, request)
    rows = {Path(args.run_dir).name: evaluate_unlearning(arch, params, splits, fsplit, request,
                                                         args.seed)}
    results = {"request": request.to_json(), "eval": rows}
    if args.retrain_dir:
        r_arch, r_params, _ = common.load_run(args.retrain_dir)
        arch.check_params(r_params)
        rows["retrain"] = evaluate_unlearning(arch, r_params, splits, fsplit, request, args.seed)
        results["avg_gap"] = gap_to_retrain(rows[Path(args.run_dir).name], rows["retrain"])
    md = _summary(f"forget request: {request.describe()}", rows)
    if "avg_gap" in results:
        md += f"\nAvg. Gap to Retrain: {results['avg_gap']:.2f} points\n"
    out = report.prepare_dir(args.out or args.run_dir)
    report.write_json(out / "evaluation.json", results)
    report.atomic_write(out / "evaluation.md", md)
    print(md)
    return 0


def cmd_demo(args) -> int:
    from hyperforget_jax.demo import run_demo

    run_demo(args)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    for name, retrain, helptext in (
            ("train", False, "train the original classifier on the full training set"),
            ("retrain", True, "train from scratch on the retain set (the Retrain baseline)")):
        p = sub.add_parser(name, help=helptext, description=helptext)
        common.add_data_args(p)
        common.add_train_args(p)
        common.add_request_args(p, required=retrain)
        p.add_argument("--run-dir", default=f"runs/{'retrain' if retrain else 'original'}")
        p.add_argument("--quiet", action="store_true", help="no progress bar")
        p.set_defaults(func=lambda a, r=retrain: cmd_train(a, r))

    p = sub.add_parser("evaluate", help="evaluate a trained run against a forget request "
                                        "(RA/FA/TA and every named MIA)")
    p.add_argument("--run-dir", required=True, help="run written by train/retrain/unlearn")
    p.add_argument("--retrain-dir", help="a Retrain run, for the Avg. Gap")
    p.add_argument("--out", help="output directory (default: the run dir)")
    p.add_argument("--seed", type=int, default=0, help="seed of the attack CV splits")
    common.add_data_args(p)
    common.add_request_args(p, required=False)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("demo", help="the end-to-end demo on the embedded MNIST-5k",
                       description="Trains the original classifier, retrains without a class, "
                                   "runs the unlearning methods and writes report.md, "
                                   "results.json and plots into the run directory.")
    p.add_argument("--run-dir", default="runs/demo")
    p.add_argument("--forget-class", type=int, default=3)
    p.add_argument("--seeds", type=int, default=3, help="number of model seeds (default 3)")
    p.add_argument("--sections", default="all",
                   help="comma list of demo sections to run: gradtau,hyperforget,gan (or all, "
                        "or none)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_demo)
