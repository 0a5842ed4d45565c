"""``hyperforget unlearn``: run one unlearning method on a forget request and evaluate it
beside Retrain.

    hyperforget unlearn --method gradtau --forget-class 3 --run-dir runs/original
    hyperforget unlearn --method salun --forget-fraction 0.1 --config.lr=0.02 --seed 1

The original model is loaded from ``--run-dir`` (trained there first, with the training-recipe
flags, when the directory holds no model). Every field of the method's config can be set with
``--config.FIELD=VALUE`` (see ``--help``). Writes ``results.json``, ``report.md`` and the
unlearned parameters (``checkpoints/``, readable by ``hyperforget evaluate``) into ``--out``
(default ``<run-dir>/unlearn/<method>-<request>``, plus ``-method-seed-<N>`` for a ``--seed``
other than 0; it does not name ``--config.*`` fields: a run with other settings needs its own
``--out``), never into ``--run-dir`` itself.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import importlib

from hyperforget_jax import configflags, data, rundir, train
from hyperforget_jax.checkpoint import Checkpointer
from hyperforget_jax.commands import common
from hyperforget_jax.commands.core import slug
from hyperforget_jax.configflags import seed_int
from hyperforget_jax.errors import ConfigError, ForgetRequestError, RunDirError
from hyperforget_jax.evaluation import (GAP_LABELS, class_matched_note, evaluate_unlearning,
                                        gap_keys, gap_to_retrain)
from hyperforget_jax import report
from hyperforget_jax.unlearn.gradtau_run import (ASCENT_FIELDS, refuse_overridden,
                                                 refuse_unread_refresh)

# The package, not the `unlearn` function that hyperforget_jax/__init__.py re-exports.
U = importlib.import_module("hyperforget_jax.unlearn")

KEYS = (("retain_acc", "RA %", 100.0), ("forget_acc", "FA %", 100.0),
        ("test_acc", "TA %", 100.0), ("test_acc_kept", "TA kept %", 100.0),
        ("mia_loss_lr", "mia_loss_lr", 1.0), ("mia_entropy_lr", "mia_entropy_lr", 1.0),
        ("mia_efficacy_svc", "mia_efficacy_svc", 1.0))


def _method_configs() -> dict[str, type]:
    """Method → config class, from the library (never a hand-kept list here)."""
    return {m: c for m, c in U.DEFAULT_CONFIGS.items() if m in U.METHODS}


class _Stages:
    """One transient progress line on stderr per stage (like ``train``'s bar; off with
    ``--quiet``)."""

    def __init__(self, enabled: bool, total: int):
        self.bar, self.started = None, False
        if enabled:
            from tqdm.auto import tqdm
            # disable=None: only on a terminal, where the line is erased when done, so an
            # error still ends as the one line on stderr (logs get no \r fragments).
            self.bar = tqdm(total=total, desc="unlearn", leave=False, file=sys.stderr,
                            disable=None, bar_format="{desc} [{n_fmt}/{total_fmt}, {elapsed}]")

    def __call__(self, what: str) -> None:
        if self.bar is not None and not self.bar.disable:
            if self.started:
                self.bar.update(1)
            self.started = True
            self.bar.set_description_str(what)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _original(args, splits, stage) -> tuple:
    """(arch, params, recipe, "loaded" | "trained", identity) of the original model."""
    run_dir = Path(args.run_dir).expanduser().absolute()
    given = args._train_flags.given(args)
    if ((run_dir / "checkpoints").is_dir() or (run_dir / "params").is_dir()) \
            and not common.unfinished_training(run_dir):
        stage("loading the original")
        arch, params, meta = common.load_run(run_dir)
        ident = meta["identity"] or {}
        role = ident.get("role", meta.get("role"))
        if role != "original":
            raise RunDirError(f"--run-dir {run_dir} holds a {role!r} run, not an original "
                              "model; unlearning starts from the run written by `hyperforget "
                              "train` (pass its --run-dir)")
        cfg = train.TrainConfig(**meta["train_config"])
        for field, value in given.items():
            if getattr(cfg, field) != value:
                raise ConfigError(
                    f"{args._train_flags.flags[field]} {value} differs from the recipe of the "
                    f"original in {run_dir} ({field} = {getattr(cfg, field)}); drop the flag to "
                    "unlearn that model, or pass a new --run-dir to train another original")
        arch.check_inputs(splits.train.x, f"--dataset {args.dataset}")
        common.check_same_data(meta, args, splits, run_dir)
        return arch, params, cfg, "loaded", ident
    cfg = common.train_config_from_args(args)
    arch = common.architecture_for(cfg.arch, splits)
    identity = common.train_identity(args, splits, arch, cfg, None, "original")
    meta = common.run_meta(args, arch, cfg, None, "original")
    stage("training the original")
    with common.open_run(run_dir, identity, args, legacy=common.legacy_train_identity) as run:
        params, *_ = common.train_run(run.path, arch, splits.train, cfg, meta,
                                      common.progress(args))
    return arch, params, cfg, "trained", identity


def _method_config(args, cfg: train.TrainConfig):
    if args.method == "retrain":
        if args._method_flags.given(args):
            raise ConfigError("--method retrain uses the original's training recipe (that is "
                              "what makes it Retrain); drop the --config.* flags")
        # None: the up-front check of cmd_unlearn, before the original's recipe is known.
        return None if cfg is None else dataclasses.replace(cfg, seed=args.method_seed)
    ascent = [f for f in ASCENT_FIELDS if f in args._method_flags.given(args)]
    if args.method == "finetune" and ascent:
        # unlearn() runs finetune as ∇τ with α ≡ 0: α and τ fields would be silently unused.
        raise ConfigError(f"finetune is ∇τ's schedule with alpha0 = 0 (descent on D_r only), "
                          f"which has no {ascent[0]}; drop --config.{ascent[0]}, or use "
                          "--method gradtau to set it")
    return args._method_flags.build(args, args.method)


def cmd_unlearn(args) -> int:
    splits = common.load_splits(args)
    request = common.request_from_args(args)
    if request is None:
        raise ForgetRequestError("give a forget request: --forget-class, --forget-fraction or "
                                 "--forget-indices")
    # The run's own data first: a request resolved on another dataset would be refused with
    # that dataset's size (an index "out of range" of MNIST-5k for a digits model).
    ident = rundir.read_identity(Path(args.run_dir).expanduser().absolute())
    if ident is not None:
        common.check_same_data({"identity": ident}, args, splits, args.run_dir)
    fsplit = data.resolve_forget(splits.train, request)
    # A bad --config.* fails before any work (retrain's before the original is trained in an
    # empty --run-dir, which then stayed behind an exit code 2).
    config = _method_config(args, None)
    if args.method == "gradtau":
        refuse_unread_refresh(config)
    if args.method in ("gradtau", "finetune"):
        refuse_overridden(config)
    # A method seed other than 0 is part of the default name (a sweep over --seed needs no
    # --out per seed); --config.* fields are not: such a run needs its own --out.
    seed = f"-method-seed-{args.method_seed}" if args.method_seed else ""
    out = args.out or Path(args.run_dir) / "unlearn" / f"{args.method}-{slug(request)}{seed}"
    # A bad --out is refused before the original is trained (open_run checks it again).
    rundir.check_output(out, reads=[args.run_dir], flag="--out", known={
        "role": "unlearned", "method": args.method, "seed": args.method_seed,
        "request": request.to_json(), **common.data_identity(args, splits)})
    stage = _Stages(common.progress(args), 4 if args.no_retrain else 7)
    try:
        arch, params, cfg, how, orig_identity = _original(args, splits, stage)
        config = _method_config(args, cfg)
        identity = {"role": "unlearned", "method": args.method,
                    "config": dataclasses.asdict(config), "seed": args.method_seed,
                    "request": request.to_json(), "original": orig_identity,
                    **common.data_identity(args, splits)}
        with common.open_run(out, identity, args, reads=[args.run_dir], flag="--out") as run:
            results, md = _unlearn_and_compare(args, arch, params, cfg, config, how, splits,
                                               request, fsplit, stage)
            stage("writing the results")
            with Checkpointer(run.path / "checkpoints", max_to_keep=1) as ckpt:
                state = train.init_state(arch, train.make_optimizer(cfg), None,
                                         results.pop("_params"))
                meta = common.run_meta(args, arch, cfg, request, f"unlearned:{args.method}")
                ckpt.save(results["info"]["steps"], state, meta, force=True)
            common.write_results(run.path, results, md)
    finally:
        stage.close()
    common.emit(args, results, md + f"\nwrote {run.path}/results.json, report.md and "
                                    "checkpoints/")
    return 0


def _unlearn_and_compare(args, arch, params, cfg, config, how, splits, request, fsplit, stage):
    def run(method, conf, seed):
        return U.unlearn(method, arch, params, fsplit, splits.val, conf, seed=seed,
                         forget_classes=request.classes)

    stage(f"{args.method} (first call, compiles)")
    res = run(args.method, config, args.method_seed)
    timing = {"cold_seconds": res.info["wall_time_s"]}
    stage("evaluating")
    rows = {"original": evaluate_unlearning(arch, params, splits, fsplit, request,
                                            args.method_seed),
            args.method: evaluate_unlearning(arch, res.params, splits, fsplit, request,
                                             args.method_seed)}
    # The data it ran on, as `train`'s results record it (run.json alone had it: a `--json`
    # reader could not tell a digits run from an MNIST-5k one).
    results = {"request": request.to_json(), "method": args.method, "original": how,
               "dataset": args.dataset, "split_seed": args.split_seed,
               "train_config": cfg.to_json(), "info": res.info, "eval": rows}
    if not args.no_retrain:
        # Timings of a first call include XLA compilation, which a second call in the same
        # process reuses: both are reported, and the speed-up is given for each.
        stage(f"{args.method} again (warm timing)")
        timing["warm_seconds"] = run(args.method, config, args.method_seed).info["wall_time_s"]
        # The baseline's row. Beside `--method retrain` with another seed than the original's
        # it has its own: under the method's name it replaced the method's row (its gap 0).
        base = "retrain_baseline" if args.method == "retrain" and config != cfg else "retrain"
        if args.method == "retrain" and config == cfg:
            # Retrain beside itself: the same recipe and seed, a deterministic run: its two
            # timings and its evaluation, not two more trainings and a third evaluation.
            ret, r_warm = res, timing["warm_seconds"]
            rows["retrain"] = rows[args.method]
        else:
            stage("Retrain (first call)")
            ret = run("retrain", cfg, cfg.seed)
            stage("Retrain again (warm timing)")
            r_warm = run("retrain", cfg, cfg.seed).info["wall_time_s"]
            rows[base] = evaluate_unlearning(arch, ret.params, splits, fsplit, request,
                                             args.method_seed)
        # A Retrain beside a retrain run reuses the programs the run compiled: its first call
        # is no cold one (0.10 s against the run's 6.54 s read "0.0× cold").
        cold = (None if args.method == "retrain" and ret is not res
                else ret.info["wall_time_s"])
        results["retrain_seconds"] = {"cold": cold, "warm": r_warm}
        results["speedup_vs_retrain"] = {
            "cold": None if cold is None else cold / timing["cold_seconds"],
            "warm": r_warm / timing["warm_seconds"]}
        results["avg_gap"] = {m: gap_to_retrain(rows[m], rows[base])
                              for m in ("original", args.method)}
        # The keys the method's gap averages, as `hyperforget evaluate` records them (a
        # not-applicable attack is left out): the same name means the same thing in both.
        results["avg_gap_keys"] = list(gap_keys(rows[args.method], rows[base]))
    results["timing"] = timing
    md = [f"# {args.method} on {args.dataset}: forgetting {request.describe()}\n",
          f"Original model {how} ({arch.name}); forget set {len(fsplit.forget)}, retain set "
          f"{len(fsplit.retain)}. {res.info['steps']} steps in "
          f"{res.info['wall_time_s']:.2f} s (first call, compilation included).\n",
          report.markdown_table(["model"] + [h for _, h, _ in KEYS],
                                [[name] + [report.fmt(r.get(k), 2, s) for k, _, s in KEYS]
                                 for name, r in rows.items()])]
    na = rows[args.method].get("not_applicable")
    if na:
        md.append("\nNot applicable: " + "; ".join(f"{k} ({v})" for k, v in na.items()) + ".\n")
    if note := class_matched_note(rows[args.method]):
        md.append(f"\n{note}\n")
    if "avg_gap" in results:
        sp, rs = results["speedup_vs_retrain"], results["retrain_seconds"]
        used = ", ".join(GAP_LABELS[k] for k in results["avg_gap_keys"])
        md.append(f"\nAvg. Gap to Retrain ({used}; points): "
                  f"{args.method} {results['avg_gap'][args.method]:.2f}, original "
                  f"{results['avg_gap']['original']:.2f}.\n\nSpeed-up over Retrain: "
                  f"**{sp['warm']:.1f}× warm** ({args.method} {timing['warm_seconds']:.2f} s "
                  f"vs Retrain {rs['warm']:.2f} s, compiled programs reused), "
                  + (f"{sp['cold']:.1f}× cold ({timing['cold_seconds']:.2f} s vs "
                     f"{rs['cold']:.2f} s, first calls with compilation).\n"
                     if sp["cold"] is not None else
                     "no cold comparison (Retrain beside a retrain run shares its compiled "
                     "programs).\n"))
    results["_params"] = res.params
    return results, "\n".join(md)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("unlearn", help="run an unlearning method and evaluate it beside Retrain",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("--method", required=True, choices=U.METHODS,
                   help="the unlearning method (retrain: the original's recipe on D_r)")
    # Checked in cmd_unlearn (a ForgetRequestError, one line), so not required by argparse.
    common.add_request_args(p, required=False, title="forget request (exactly one)")
    p.add_argument("--run-dir", type=common.path_arg, default="runs/original",
                   help="the original model's run (trained there if it holds no model; "
                        "default runs/original)")
    p.add_argument("--out", type=common.path_arg,
                   help="output directory (default <run-dir>/unlearn/<method>-<req>"
                        "[-method-seed-<N>], which does not name --config.* fields: "
                        "give a run with other settings its own --out)")
    # Its own dest: the training recipe's seed flag (--train-seed) has the field's dest "seed".
    p.add_argument("--seed", type=seed_int, default=0, dest="method_seed",
                   help="seed of the method (batch order, random labels/teachers) and of the "
                        "attacks (default 0)")
    p.add_argument("--no-retrain", action="store_true",
                   help="skip the in-process Retrain comparison")
    common.add_output_args(p)
    common.add_data_args(p)
    common.add_train_args(p, title="training recipe of the original (used when --run-dir "
                                   "holds no model; otherwise it must match the loaded one)",
                          rename={"seed": "train-seed"})
    # Fine-tune's α and τ fields are refused (cmd_unlearn): the help lists no default for them.
    flags = configflags.add_config_namespace(p, "config", _method_configs(),
                                             refused={"finetune": ASCENT_FIELDS})
    p.set_defaults(func=cmd_unlearn, _method_flags=flags)
