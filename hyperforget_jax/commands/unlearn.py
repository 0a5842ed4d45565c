"""``hyperforget unlearn``: run one unlearning method on a forget request and evaluate it
beside Retrain.

    hyperforget unlearn --method gradtau --forget-class 3 --run-dir runs/original
    hyperforget unlearn --method salun --forget-fraction 0.1 --seed 1

The original model is loaded from ``--run-dir`` (trained there first, with the training-recipe
flags, when the directory has no checkpoint). Writes ``results.json``, ``report.md`` and the
unlearned parameters (``checkpoints/``, readable by ``hyperforget evaluate``) into ``--out``
(default ``<run-dir>/unlearn/<method>-<request>``).
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path


from hyperforget_jax import data, report, train
from hyperforget_jax.checkpoint import Checkpointer
from hyperforget_jax.commands import common
from hyperforget_jax.errors import ForgetRequestError
from hyperforget_jax.evaluation import evaluate_unlearning, gap_to_retrain
from hyperforget_jax.unlearn import METHODS, GradTauConfig, unlearn
from hyperforget_jax.unlearn.gradtau import TAU_MODES

KEYS = (("retain_acc", "RA %", 100.0), ("forget_acc", "FA %", 100.0),
        ("test_acc", "TA %", 100.0), ("test_acc_kept", "TA kept %", 100.0),
        ("mia_loss_lr", "mia_loss_lr", 1.0), ("mia_entropy_lr", "mia_entropy_lr", 1.0),
        ("mia_efficacy_svc", "mia_efficacy_svc", 1.0))


def _original(args, splits) -> tuple:
    run_dir = Path(args.run_dir).expanduser().absolute()
    if (run_dir / "checkpoints").is_dir():
        arch, params, meta = common.load_run(run_dir)
        cfg = train.TrainConfig(**meta["train_config"])
        return arch, params, cfg, "loaded"
    cfg = common.train_config_from_args(args)
    arch = common.architecture_for(args.arch, splits)
    report.prepare_dir(run_dir)
    meta = common.run_meta(args, arch, cfg, None, "original")
    params, _ = common.train_run(run_dir, arch, splits.train, cfg, meta, not args.quiet)
    return arch, params, cfg, "trained"


def cmd_unlearn(args) -> int:
    splits = common.load_splits(args)
    request = common.request_from_args(args)
    if request is None:
        raise ForgetRequestError("give a forget request: --forget-class, --forget-fraction or "
                                 "--forget-indices")
    fsplit = data.resolve_forget(splits.train, request)
    arch, params, cfg, how = _original(args, splits)
    arch.check_inputs(splits.train.x, f"--dataset {args.dataset}")
    config = None
    if args.method in ("gradtau", "finetune") and args.tau_mode:
        config = GradTauConfig(tau_mode=args.tau_mode)
    res = unlearn(args.method, arch, params, fsplit, splits.val, config, seed=args.seed,
                  forget_classes=request.classes)
    rows = {"original": evaluate_unlearning(arch, params, splits, fsplit, request, args.seed),
            args.method: evaluate_unlearning(arch, res.params, splits, fsplit, request,
                                             args.seed)}
    results = {"request": request.to_json(), "method": args.method, "original": how,
               "train_config": cfg.to_json(), "info": res.info, "eval": rows}
    if not args.no_retrain:
        ret = unlearn("retrain", arch, params, fsplit, splits.val, cfg)
        r_secs = ret.info["wall_time_s"]
        rows["retrain"] = evaluate_unlearning(arch, ret.params, splits, fsplit, request,
                                              args.seed)
        results["retrain_seconds"] = r_secs
        results["speedup_vs_retrain"] = r_secs / res.info["wall_time_s"]
        results["avg_gap"] = {m: gap_to_retrain(rows[m], rows["retrain"])
                              for m in ("original", args.method)}

    slug = re.sub(r"[^A-Za-z0-9.+-]+", "-", request.describe()).strip("-")
    out = report.prepare_dir(args.out or Path(args.run_dir) / "unlearn" / f"{args.method}-{slug}")
    with Checkpointer(out / "checkpoints", max_to_keep=1) as ckpt:
        state = train.init_state(arch, train.make_optimizer(cfg), None, res.params)
        meta = common.run_meta(args, arch, cfg, request, f"unlearned:{args.method}")
        ckpt.save(res.info["steps"], state, meta, force=True)
    md = [f"# {args.method} on {args.dataset}: forgetting {request.describe()}\n",
          f"Original model {how} ({arch.name}); forget set {len(fsplit.forget)}, retain set "
          f"{len(fsplit.retain)}. {res.info['steps']} steps in "
          f"{res.info['wall_time_s']:.2f} s.\n",
          report.markdown_table(["model"] + [h for _, h, _ in KEYS],
                                [[name] + [report.fmt(r.get(k), 2, s) for k, _, s in KEYS]
                                 for name, r in rows.items()])]
    if "avg_gap" in results:
        md.append(f"\nAvg. Gap to Retrain (FA, RA, TA, mia_loss_lr; points): "
                  f"{args.method} {results['avg_gap'][args.method]:.2f}, original "
                  f"{results['avg_gap']['original']:.2f}. Retrain took "
                  f"{results['retrain_seconds']:.2f} s → speed-up "
                  f"{results['speedup_vs_retrain']:.1f}× (first run includes compilation).\n")
    md = "\n".join(md)
    common.write_results(out, results, md)
    print(md)
    print(f"wrote {out}/results.json, report.md and checkpoints/")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("unlearn", help="run an unlearning method and evaluate it beside Retrain",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("--method", required=True, choices=METHODS)
    common.add_request_args(p, required=False)
    p.add_argument("--run-dir", default="runs/original",
                   help="the original model's run (trained there if missing)")
    p.add_argument("--out", help="output directory (default <run-dir>/unlearn/<method>-<req>)")
    p.add_argument("--tau-mode", choices=TAU_MODES, help="∇τ's τ (default auto)")
    p.add_argument("--no-retrain", action="store_true",
                   help="skip the in-process Retrain comparison")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    common.add_data_args(p)
    common.add_train_args(p)
    p.set_defaults(func=cmd_unlearn)
