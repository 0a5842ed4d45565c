"""``hyperforget gan train | unlearn | evaluate``: GAN unlearning from the command line.

    hyperforget gan train --run-dir runs/gan/original
    hyperforget gan train --run-dir runs/gan/retrain --forget-class 3        # Retrain on D_r
    hyperforget gan unlearn --run-dir runs/gan/original --out runs/gan/unlearn3 --forget-class 3
    hyperforget gan evaluate --run-dir runs/gan/unlearn3 --forget-class 3

Each run directory holds an Orbax checkpoint of the (G, D) state with its metadata, a
``samples.png`` grid and ``results.json`` / ``report.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Callable

import jax

from hyperforget_jax import configflags, data, report, rundir
from hyperforget_jax.checkpoint import Checkpointer
from hyperforget_jax.commands import common
from hyperforget_jax.commands.core import slug
from hyperforget_jax.configflags import non_negative_int, positive_int
from hyperforget_jax.errors import (CheckpointError, ConfigError, DataError, ForgetRequestError,
                                   RunDirError, shell_quote)
from hyperforget_jax.evaluation import class_matched_note
from hyperforget_jax.gan.metrics import (JUDGE, JUDGE_ANNEAL, JUDGE_AUGMENT, EvalConfig,
                                         cached_judge, evaluate_gan, judge_outputs, judge_recipe)
from hyperforget_jax.gan.models import GAN_ARCHS, LATENT_PRIORS, GANArch
from hyperforget_jax.gan.train import (GANConfig, gan_arch_of, init_gan_state, make_optimizer,
                                       sample, save_grid, timed_train_gan)
from hyperforget_jax.gan.unlearn import (CLASS_ONLY_FIELDS, FAKE_LABELS, SUBSTITUTIONS,
                                        UnlearnConfig, default_recipe, unlearn_gan)
from hyperforget_jax.train import TrainConfig

#: ``gan evaluate --samples``'s default (the experiments' count).
_DEFAULT_SAMPLES = 10_000


def add_judge_flags(parser) -> Callable[[argparse.Namespace], dict]:
    """``--judge``, ``--judge-epochs``, ..., ``--judge-augment``, ``--judge-anneal``: the judge
    classifier's recipe, by default the experiments' (:data:`~hyperforget_jax.gan.metrics.JUDGE`:
    ``JudgeCNN`` on the training set and 9 affine copies, then 2 epochs at a tenth of its lr;
    98.5 % on MNIST-5k's test set, ≈ 3 min on 2 CPU cores). Returns ``args -> recipe`` (the
    JSON of :func:`~hyperforget_jax.gan.metrics.judge_recipe`)."""
    flags = configflags.add_config_flags(
        parser, TrainConfig, title="judge classifier recipe (labels, counts and featurises "
                                   "generated images)", dest_prefix="judge_",
        rename={f: f"judge-{f.replace('_', '-')}" for f in ("epochs", "batch_size", "lr",
                                                            "weight_decay")} | {"arch": "judge"},
        exclude=("seed",), defaults={f.name: getattr(JUDGE, f.name)
                                     for f in dataclasses.fields(JUDGE) if f.name != "seed"},
        help_texts={"epochs": "passes over the judge's training data (the training set and "
                              "its --judge-augment − 1 affine copies), before --judge-anneal's "
                              "epochs"},
        description=f"A TrainConfig for the judge; the defaults are the experiments' judge "
                    f"(JUDGE: JudgeCNN, {JUDGE.epochs} epochs on the images and "
                    f"{JUDGE_AUGMENT - 1} affine copies, then {JUDGE_ANNEAL} at a tenth of the "
                    f"lr), not the classifiers' TrainConfig defaults.")
    parser.add_argument("--judge-augment", type=positive_int, default=JUDGE_AUGMENT,
                        help="copies of the training set the judge trains on: the images and "
                             "N − 1 randomly rotated, zoomed and shifted copies (1 = none; "
                             f"default {JUDGE_AUGMENT})")
    parser.add_argument("--judge-anneal", type=non_negative_int, default=JUDGE_ANNEAL,
                        help="judge epochs at a tenth of its lr after its recipe (0 = none; "
                             f"default {JUDGE_ANNEAL})")
    return lambda args: judge_recipe(flags.build(args, base=JUDGE), args.judge_augment,
                                     args.judge_anneal)


def _add_judge_from(parser) -> None:
    parser.add_argument("--judge-from", nargs="+", type=common.path_arg, default=[],
                        metavar="DIR",
                        help="reuse the judge stored by an earlier `gan unlearn` / `gan "
                             "evaluate` (its output directory, or that directory's judge/) "
                             "when its recipe and data match; otherwise one is trained")


def _judge_dirs(dirs) -> list[Path]:
    """Each ``--judge-from`` directory and its ``judge/`` sub-directory (either may hold it)."""
    absolute = [Path(d).expanduser().absolute() for d in dirs]
    for d in absolute:
        if not d.is_dir():
            raise RunDirError(f"--judge-from {d} is not a directory; pass the output directory "
                              "of an earlier `gan unlearn` or `gan evaluate` (or its judge/)")
    return [q for d in absolute for q in (d / "judge", d)]


def evaluate_judge_dirs(run_dir, dirs) -> list[Path]:
    """Where ``gan evaluate`` looks for a stored judge: ``dirs``' (:func:`_judge_dirs`), then
    the judges of ``run_dir``'s other default-named evaluations (another ``--samples``; the one
    name every setting had before :func:`default_evaluate_out`). Each setting's own directory
    trained its own judge (≈ 3 min) where the one shared directory had reused it; the judge's
    recipe and data are checked before it is reused (:func:`~.metrics.cached_judge`)."""
    return [*_judge_dirs(dirs), *sorted(Path(run_dir).absolute().glob("gan-evaluate/*/judge"))]


def load_gan_run(run_dir: str | Path, data_flags: str = ""):
    """(GANArch, GANState, meta) of the latest checkpoint of a ``gan train/unlearn`` run.
    ``data_flags``: the reading command's data flags (``common.data_flags``), carried by the
    ``gan train`` it advises where ``run_dir`` holds no GAN."""
    run_dir = Path(run_dir).expanduser().absolute()
    rundir.check_readable(run_dir)
    role = (rundir.read_identity(run_dir) or {}).get("role")
    if isinstance(role, str) and not role.startswith("gan-"):
        # A classifier's checkpoint would be refused as one "not written by `gan train`?".
        raise CheckpointError(f"{run_dir} holds {rundir._a(role)} run, not a GAN; classifier "
                              "runs are read by `hyperforget evaluate`, this command takes a "
                              "run written by `hyperforget gan train` or `gan unlearn`")
    if not (run_dir / "checkpoints").is_dir():
        if isinstance(role, str):
            # `gan evaluate`'s output: the advised `gan train` refuses another command's run.
            raise CheckpointError(f"{run_dir} holds {rundir._a(role)} output, not a GAN; pass "
                                  "a run written by `hyperforget gan train` or `gan unlearn`")
        raise CheckpointError(f"no GAN checkpoint in {run_dir}; run `hyperforget gan train "
                              f"--run-dir {shell_quote(run_dir)}{data_flags}` first")
    with Checkpointer(run_dir / "checkpoints", read_only=True) as ckpt:
        meta = ckpt.restore_meta()
        if "gan_arch" not in meta:
            raise CheckpointError(f"checkpoint in {run_dir} is not a GAN run (no gan_arch in "
                                  "its metadata); was it written by `hyperforget gan train`?")
        arch = GANArch.from_json(meta["gan_arch"])
        # Shapes and dtypes only (initialising G and D for real compiled both just to be
        # overwritten: a quarter of `gan evaluate`'s time).
        template = jax.eval_shape(lambda k: init_gan_state(arch, make_optimizer(), k),
                                  jax.random.key(0))
        prog = meta.get("unlearn_progress")
        # A run stopped part-way (preempted, killed, Ctrl-C) holds a checkpoint of a GAN that is
        # not the one its command makes: reading it would unlearn or score a half-trained GAN.
        epochs = (meta.get("gan_config") or {}).get("epochs")
        if prog is None and isinstance(meta.get("epoch"), int) and isinstance(epochs, int) \
                and meta["epoch"] < epochs:
            raise CheckpointError(
                f"{run_dir} holds an unfinished GAN {meta.get('role', 'training')} run (epoch "
                f"{meta['epoch']} of {epochs}); finish it first by rerunning the command that "
                f"wrote it (`hyperforget gan train --run-dir {shell_quote(run_dir)}` with the "
                "same flags)")
        if prog is not None and "kept" in prog and not prog.get("done"):
            raise CheckpointError(
                f"{run_dir} holds an unfinished GAN unlearning run (round {prog.get('rounds')}); "
                "finish it first by rerunning the `hyperforget gan unlearn` command that wrote "
                "it (same flags)")
        if prog is None or "kept" not in prog:     # training, or an older unlearning run
            state, meta = ckpt.restore(template)
        else:   # an unlearning run: its state and the (G, D) it returned (gan.unlearn_gan)
            tree, meta = ckpt.restore({"state": template,
                                       "kept": (template.g_params, template.d_params)})
            state = tree["state"]
            if prog.get("done"):
                state = state._replace(g_params=tree["kept"][0], d_params=tree["kept"][1])
    meta["identity"] = rundir.read_identity(run_dir)
    _refuse_checkpoints_of_another_run(run_dir, meta)
    return arch, state, meta


def _refuse_checkpoints_of_another_run(run_dir: Path, meta: dict) -> None:
    """CheckpointError when ``checkpoints/`` records another run than ``run.json`` names (a
    folder copied in from another GAN run was read as this run's GAN), on the fields both
    record: the training recipe and data, or the unlearning recipe."""
    ident = meta.get("identity") or {}
    prog = meta.get("unlearn_progress") or {}
    fields = ("gan_config", "dataset", "split_seed", "request")
    pairs = [(k, meta.get(k), ident.get(k)) for k in fields if k in meta and k in ident]
    if prog:
        # An unlearning run's checkpoints carry its source GAN's training recipe (run.json
        # records it under "source") beside its own request, data and recipe: a cascade of
        # the same request copied in from a run on another original GAN was read as this one.
        source = ident.get("source") or {}
        pairs = [(k, meta.get(k), source.get(k)) for k in ("gan_config",)
                 if k in meta and k in source] + [p for p in pairs if p[0] != "gan_config"]
        if "config" in prog and "unlearn_config" in ident:
            pairs.append(("unlearn_config", prog["config"], ident["unlearn_config"]))
    common.refuse_recorded_differences(run_dir, pairs)


def _check_dataset(arch: GANArch, splits, args, run_dir, meta: dict) -> None:
    if tuple(splits.train.x.shape[1:]) != tuple(arch.image_shape):
        was = (meta.get("identity") or {}).get("dataset", meta.get("dataset"))
        raise DataError(f"the GAN in {run_dir} makes {arch.image_shape} images but --dataset "
                        f"{args.dataset} has {tuple(splits.train.x.shape[1:])}; pass the "
                        "dataset the GAN was trained on"
                        + (f" (--dataset {was})" if isinstance(was, str) else ""))


def _request_split(args, splits):
    request = common.request_from_args(args)
    return request, (data.resolve_forget(splits.train, request) if request else None)


def cmd_train(args) -> int:
    splits = common.load_splits(args)
    request, fsplit = _request_split(args, splits)
    train = fsplit.retain if fsplit is not None else splits.train
    cfg = args._gan_flags.build(args)
    common.refuse_zero_epochs(cfg.epochs)
    # A bad architecture for these images is refused before the run directory is claimed.
    arch = gan_arch_of(cfg, train.x.shape[1:])
    given = args._gan_flags.given(args)
    # Flags the built GAN would not use are refused, not recorded as if they had shaped it.
    if arch.name == "mlp" and "width" in given:
        raise ConfigError(f"--width sets the dcgan pair's channels, but this run trains the "
                          f"dense mlp pair (fixed hidden sizes) on {arch.image_shape[0]}×"
                          f"{arch.image_shape[1]} images; drop --width, or use --gan-arch "
                          "dcgan on 28×28 or 32×32 images")
    unused = [args._gan_flags.flags[f] for f in ("mixture_components", "mixture_sigma")
              if f in given]
    if cfg.latent_prior != "mixture" and unused:
        raise ConfigError(f"{', '.join(unused)} shape{'s' if len(unused) == 1 else ''} the "
                          f"mixture prior, but this run draws z from the {cfg.latent_prior} "
                          f"prior; drop {'it' if len(unused) == 1 else 'them'}, or use "
                          "--latent-prior mixture")
    meta = {"role": "retrain" if request else "original", "dataset": args.dataset,
            "split_seed": args.split_seed,
            "request": request.to_json() if request else None}
    identity = {"role": f"gan-{meta['role']}", "gan_config": cfg.to_json(),
                **common.data_identity(args, splits), "request": meta["request"]}
    with common.open_run(args.run_dir, identity, args) as run:
        with Checkpointer(run.path / "checkpoints", max_to_keep=2) as ckpt:
            start = ckpt.latest_step() or 0     # epochs a requeued / rerun job finds done
            state, secs, arch = timed_train_gan(train, cfg, checkpointer=ckpt, meta=meta,
                                                progress=common.progress(args))
        save_grid(sample(arch, state.g_params, 64, 1), run.path / "samples.png",
                  title=f"{meta['role']} GAN ({arch.name})")
        results = {"meta": meta, "gan_config": cfg.to_json(), "gan_arch": arch.to_json(),
                   "seconds": secs, "iterations": int(state.step), "resumed_from_epoch": start}
        # As `train`'s report: a rerun says that it reloaded or resumed the run.
        how = ("" if not start else " (already trained: reloaded)" if start >= cfg.epochs
               else f" (resumed at epoch {start} of {cfg.epochs})")
        md = (f"# GAN {meta['role']}: {arch.name} on {args.dataset}\n\n{int(state.step)} "
              f"iterations in {secs:.1f} s{how}; G {arch.param_counts()[0]:,} / D "
              f"{arch.param_counts()[1]:,} parameters.\n\n![samples](samples.png)\n")
        common.write_results(run.path, results, md)
    common.emit(args, results, md)
    return 0


def cmd_unlearn(args) -> int:
    cfg = _unlearn_config(args)
    arch, state, meta = load_gan_run(args.run_dir, common.data_flags(args))
    role = (meta.get("identity") or {}).get("role") or (
        f"gan-{meta['role']}" if isinstance(meta.get("role"), str) else None)
    if role != "gan-original":
        # The cascade's real data is D minus *this* request's forget set: from a Retrain or
        # an unlearned GAN it put the class forgotten before back among D's real images, and
        # undid that unlearning without a word (as `hyperforget unlearn` refuses a non-original).
        raise RunDirError(f"--run-dir {args.run_dir} holds {rundir._a(role or 'unknown')} run, "
                          "not an original GAN; unlearning starts from the run written by "
                          "`hyperforget gan train` without a forget request (pass its --run-dir)")
    splits = common.load_splits(args)
    _check_dataset(arch, splits, args, args.run_dir, meta)
    common.check_same_data(meta, args, splits, args.run_dir, "GAN")
    request, fsplit = _request_split(args, splits)
    if request is None:
        raise ForgetRequestError("give a forget request (--forget-class, --forget-fraction or "
                                 "--forget-indices)")
    # Class requests flag codes with the judge (item requests need none).
    judge_flags = args._judge(args)
    recipe = judge_flags if request.classes is not None else None
    if recipe is None and (args.judge_from or judge_flags != judge_recipe()):
        raise ConfigError("--judge* flags apply to class requests only (an item request's "
                          "cascade uses no judge); drop them, or give --forget-class")
    data_id = common.data_identity(args, splits)
    identity = {"role": "gan-unlearned", "unlearn_config": cfg.to_json(),
                "request": request.to_json(), "source": meta.get("identity"),
                "gan_arch": arch.to_json(), **data_id,
                **({"judge": recipe} if recipe is not None else {})}
    search = _judge_dirs(args.judge_from)     # refused before --out is claimed
    # The cascade checkpoints into --out after every chunk of rounds; a rerun after a crash
    # resumes there and ends exactly where an uninterrupted run would. The judge is stored in
    # --out/judge, where `gan evaluate --run-dir <out>` finds it again.
    with common.open_run(args.out, identity, args, reads=[args.run_dir], flag="--out",
                         caches=("judge",)) as run:
        classify, judged = None, {}
        if recipe is not None:
            judge, reused = cached_judge(splits.train, recipe, run.path / "judge",
                                         data_id["data"], search=search,
                                         keep_found=True, progress=common.progress(args))
            classify = lambda x: judge_outputs(judge, x)[0].argmax(1)
            judged = {"judge": recipe, "judge_reused": reused}
        results, md = _unlearn_into(run.path, args, arch, state, meta, splits, request,
                                    fsplit, cfg, classify, judged)
    common.emit(args, results, md)
    return 0


def _unlearn_config(args) -> UnlearnConfig:
    """The cascade's recipe: unset options take the recipe of the request's kind (docs/gan.md).
    Flags the cascade of this request and recipe would not read are refused, not recorded in
    its recipe as if they had shaped it."""
    is_class = args.forget_class is not None
    cfg = args._unlearn_flags.build(args, base=default_recipe(is_class))
    given, flag = args._unlearn_flags.given(args), args._unlearn_flags.flags
    class_only = [flag[f] for f in CLASS_ONLY_FIELDS if f in given]
    if not is_class and class_only:
        # They only shape the share criterion, which an item request does not have.
        n = len(class_only)
        raise ConfigError(f"{', '.join(class_only)} appl{'ies' if n == 1 else 'y'} to class "
                          "requests only (an item request's cascade has no forgotten share to "
                          f"check); drop {'it' if n == 1 else 'them'}, or give --forget-class")
    unused = []
    if is_class and "item_neighbours" in given:
        unused.append((flag["item_neighbours"], "applies to item requests only (a class "
                       "request flags codes with the judge)", "or give --forget-indices / "
                       "--forget-fraction"))
    if cfg.fake_label == "hard" and "track_fake_label" in given:
        unused.append(("--track-fake-label / --no-track-fake-label", "set whether the "
                       "generated / heldout y_f is tracked, but --fake-label hard's y_f is the "
                       "constant 0", "or use --fake-label generated or heldout"))
    if cfg.substitution == "none" and "lambda_s" in given:
        unused.append((flag["lambda_s"], "weighs the substitution term, but --substitution "
                       "none has no substitutes", "or use --substitution latent or data"))
    if cfg.lambda_u_attempts == 1 and "lambda_u_growth" in given:
        unused.append((flag["lambda_u_growth"], "scales λ_u from one attempt to the next, but "
                       "this recipe makes a single attempt", "or give --lambda-u-attempts N > 1"))
    if unused:
        name, why, fix = unused[0]
        raise ConfigError(f"{name} {why}; drop it, {fix}")
    return cfg


def _unlearn_into(out, args, arch, state, meta, splits, request, fsplit, cfg, classify,
                  judged: dict):
    meta = {k: v for k, v in meta.items() if k != "identity"}
    with Checkpointer(out / "checkpoints", max_to_keep=2) as ckpt:
        # What a rerun (a requeued job) finds done, for the report to say so.
        prior = (ckpt.restore_meta().get("unlearn_progress")
                 if ckpt.latest_step() is not None else None) or {}
        res = unlearn_gan(arch, state.g_params, state.d_params, retain_x=fsplit.retain.x,
                          forget_x=fsplit.forget.x, heldout_x=splits.val.x, cfg=cfg,
                          forget_classes=request.classes, classify=classify,
                          progress=common.progress(args), checkpointer=ckpt,
                          meta={**meta, "role": "unlearned", "request": request.to_json(),
                                "unlearn_config": cfg.to_json(),
                                "source_run": str(Path(args.run_dir).absolute())})
    save_grid(sample(arch, res.g_params, 64, 1), out / "samples.png",
              title=f"unlearned ({request.describe()})")
    tries = ("" if len(res.attempts) < 2 else " over " + " → ".join(
        f"λ_u {a['lambda_u']:g} ({a['rounds']} rounds, {a['stopped']})" for a in res.attempts))
    kept = ("" if res.kept is None else f"; no attempt met the criteria, so the check with the "
            f"lowest pool share is kept: round {res.kept['round']} of λ_u "
            f"{res.kept['lambda_u']:g}, {100 * res.kept['share']:.2f} %")
    if res.kept is None and res.stopped == "max_rounds" and request.classes:
        kept = (f"; no check kept the kept classes' mix within max_kept_drift "
                f"{cfg.max_kept_drift:g} of the Original's, so the last round is returned")
    how = ("" if not prior.get("rounds") else " (already done: reloaded)"
           if prior.get("done") and prior["rounds"] == res.rounds
           else f" (resumed after round {prior['rounds']})")
    # A tracked y_f moves: the stop compares D's score on the items with the last check's
    # (the start's alone read as a stop whose criterion was not met).
    last = res.history[-1] if res.history else {}
    y_f = (f"y_f = {res.y_f:.3f} at the start, {last['y_f']:.3f} at the last check (tracked), "
           f"D's score on the forgotten items {last['score_u']:.3f}"
           if cfg.fake_label != "hard" and cfg.track_fake_label and "y_f" in last
           and "score_u" in last else f"y_f = {res.y_f:.3f}")
    md = (f"# GAN unlearning: {request.describe()}\n\n{res.rounds} cascade rounds in "
          f"{res.seconds:.1f} s{how}{tries} (stopped by {res.stopped}; λ_u {res.lambda_u:g}"
          f"{kept}); "
          f"fake label {cfg.fake_label} ({y_f}), {cfg.substitution}-level "
          "substitution.\n\n![samples](samples.png)\n")
    results = {"request": request.to_json(), "dataset": args.dataset,
               "split_seed": args.split_seed, "unlearn_config": cfg.to_json(), **judged,
               **res.summary(), "history": res.history,
               "resumed_from_round": int(prior.get("rounds", 0))}
    common.write_results(out, results, md)
    return results, md


#: ``gan evaluate``'s columns: (key, heading, digits, scale). Shares and accuracies in % as in
#: the experiment's table: as fractions to 3 decimals a share of 1.04 % read "0.010", inside
#: the 1 % bar.
EVAL_COLUMNS = (("classifier_fid", "classifier_fid", 3, 1.0),
                ("classifier_is", "classifier_is", 3, 1.0),
                ("forgotten_share", "forgotten_share %", 2, 100.0),
                ("d_mia_auc", "d_mia_auc", 3, 1.0),
                ("downstream_acc", "downstream_acc %", 2, 100.0),
                ("downstream_acc_kept", "downstream_acc_kept %", 2, 100.0))


def evaluation_table(rows: dict[str, dict]) -> str:
    """The markdown table of ``gan evaluate``: one row per run (``–`` where not applicable)."""
    return report.markdown_table(["run", *(h for _, h, _, _ in EVAL_COLUMNS)],
                                 [[n, *(report.fmt(r.get(k), d, sc)
                                        for k, _, d, sc in EVAL_COLUMNS)]
                                  for n, r in rows.items()])


def default_evaluate_out(run_dir, request: data.ForgetRequest, samples: int,
                         recipe: dict) -> Path:
    """``gan evaluate``'s default ``--out``: ``<run-dir>/gan-evaluate/<request>``, with
    ``-samples-<N>`` and ``-judge-<digest>`` where those differ from the defaults. Without them
    an evaluation with other settings replaced the last one in the same directory (exit 0), as
    ``evaluate --seed`` did; a default evaluation keeps the name it always had."""
    name = slug(request)
    if samples != _DEFAULT_SAMPLES:
        name += f"-samples-{samples}"
    if recipe != judge_recipe():
        name += "-judge-" + hashlib.blake2b(json.dumps(recipe, sort_keys=True).encode(),
                                            digest_size=4).hexdigest()
    return Path(run_dir) / "gan-evaluate" / name


def cmd_evaluate(args) -> int:
    arch, state, meta = load_gan_run(args.run_dir, common.data_flags(args))
    splits = common.load_splits(args)
    _check_dataset(arch, splits, args, args.run_dir, meta)
    common.check_same_data(meta, args, splits, args.run_dir, "GAN")
    request, fsplit = _request_split(args, splits)
    if request is None:
        if not meta.get("request"):
            raise ForgetRequestError("give a forget request (--forget-class, --forget-fraction "
                                     "or --forget-indices)")
        request = data.ForgetRequest.from_json(meta["request"])
        fsplit = data.resolve_forget(splits.train, request)
    # A Retrain or an unlearned GAN scored on another request's forget set would read as a
    # result for that request (`hyperforget evaluate` refuses it too; --compare's were).
    common.refuse_other_request(meta.get("request"), request,
                                f"--run-dir {args.run_dir} holds a run",
                                "drop the request flags to evaluate it on its own request, or "
                                "evaluate a run of this request (or the Original)")
    recipe = args._judge(args)
    ev = EvalConfig(num_samples=args.samples, downstream_samples=args.samples)
    data_id = common.data_identity(args, splits)
    runs = [args.run_dir, *(args.compare or [])]
    seen = [Path(r).resolve() for r in runs]
    twice = sorted({str(r) for r in seen if seen.count(r) > 1})
    if twice:   # one row overwrote the other, under a label starting with "//"
        raise ConfigError(f"--run-dir / --compare name {twice[0]} twice; list each run once")
    # Every compared run is read (and refused, if it must be) before the judge is trained
    # and the output directory claimed.
    others = {}
    for other in args.compare or []:
        a, st, m = load_gan_run(other, common.data_flags(args))
        _check_dataset(a, splits, args, other, m)
        # As --run-dir's: a run of another split or dataset would be scored on this one's
        # forget set, D_r and test images, and its row would read as a comparison.
        common.check_same_data(m, args, splits, other, "GAN")
        # A Retrain (or an unlearned GAN) of another request is no comparison for this one.
        common.refuse_other_request(m.get("request"), request, f"--compare {other} holds a run",
                                    "compare the runs of this request (or the Original)")
        others[other] = a, st
    search = evaluate_judge_dirs(args.run_dir, [*runs, *args.judge_from])
    out = args.out or default_evaluate_out(args.run_dir, request, args.samples, recipe)
    identity = {"role": "gan-evaluation", "runs": [str(Path(r).absolute()) for r in runs],
                "request": request.to_json(), "samples": args.samples, "judge": recipe,
                **data_id}
    with common.open_run(out, identity, args, reads=runs, flag="--out", replace_role=True,
                         outputs=("gan_evaluation.json", "gan_evaluation.md")) as run:
        # The judge `gan unlearn` stored with an evaluated run is reused when its recipe and
        # data match (training is deterministic: the same judge); else it is trained here.
        judge, reused = cached_judge(splits.train, recipe, run.path / "judge", data_id["data"],
                                     search=search,
                                     progress=common.progress(args))
        ref = judge_outputs(judge, fsplit.retain.x)[1]    # the FID reference, shared by every run
        rows = {}
        todo = list(zip(common.unique_labels(runs), [None, *(args.compare or [])]))
        if common.progress(args):
            from tqdm.auto import tqdm
            todo = tqdm(todo, desc="evaluate GAN runs", unit="run")
        for name, other in todo:
            a, st = (arch, state) if other is None else others[other]
            rows[name] = evaluate_gan(a, st.g_params, st.d_params, judge, splits,
                                      fsplit.forget.x, fsplit.retain.x, request.classes, ev, ref,
                                      forget_y=fsplit.forget.y)
        arch_name = recipe["config"]["arch"].rsplit(":", 1)[-1]
        md = (f"# GAN evaluation: {request.describe()}\n\nJudge: `{arch_name}` "
              f"({'stored' if reused else 'trained'}). classifier-FID / classifier-IS use the "
              "judge classifier's features (not Inception).\n\n" + evaluation_table(rows)
              + "\n")
        # The attack's rows are the request's: every run's are matched alike.
        if note := class_matched_note(next(iter(rows.values()))):
            md += f"\n{note}\n"
        results = {"request": request.to_json(), "dataset": args.dataset,
                   "split_seed": args.split_seed, "judge": recipe, "judge_reused": reused,
                   "eval_config": dataclasses.asdict(ev), "eval": rows}
        common.write_results(run.path, results, md,
                             ("gan_evaluation.json", "gan_evaluation.md"))
    common.emit(args, results, md)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    gan = sub.add_parser("gan", help="GAN unlearning: train, unlearn, evaluate")
    gsub = gan.add_subparsers(dest="gan_command", required=True, metavar="GAN_COMMAND")

    p = gsub.add_parser("train", help="train a GAN (with a forget request: Retrain on D_r)")
    common.add_data_args(p)
    common.add_request_args(p, required=False)
    flags = configflags.add_config_flags(p, GANConfig, title="GAN recipe",
                                         rename={"arch": "gan-arch"},
                                         choices={"arch": ("auto", *GAN_ARCHS),
                                                  "latent_prior": LATENT_PRIORS})
    p.add_argument("--run-dir", type=common.path_arg, default="runs/gan/original",
                   help="run directory (default runs/gan/original)")
    common.add_output_args(p)
    p.set_defaults(func=cmd_train, _gan_flags=flags)

    p = gsub.add_parser("unlearn", help="cascaded unlearning of a trained GAN")
    common.add_data_args(p)
    common.add_request_args(p, required=True)
    p.add_argument("--run-dir", required=True, type=common.path_arg,
                   help="the original GAN run")
    p.add_argument("--out", type=common.path_arg, default="runs/gan/unlearned",
                   help="checkpoints, samples and results; a rerun resumes an interrupted run "
                        "(default runs/gan/unlearned)")
    recipe = lambda r: (f"{r.fake_label}/{r.substitution}/λ_s {r.lambda_s}"
                        + (f"/λ_a {r.lambda_a:g}" if r.lambda_a else "") + "/check every "
                        f"{r.check_every}/max {r.max_rounds}" + (
                            "" if r.lambda_u_attempts == 1 else
                            f" per attempt/λ_u {r.lambda_u:g} ×{r.lambda_u_growth:g} over "
                            f"{r.lambda_u_attempts} attempts")
                        + (f"/a passing pool confirmed on {r.confirm_size:,} more codes"
                           if r.confirm_size else ""))
    rec = (f"Unset fields take the recipe of the request's kind: items "
           f"{recipe(default_recipe(False))}; classes {recipe(default_recipe(True))}.")
    # --help shows each recipe's value where the two differ, not UnlearnConfig's (the items').
    items, classes = default_recipe(False), default_recipe(True)
    fmt = lambda v: "none" if v is None else str(v)
    by_kind = {f.name: f"items {fmt(getattr(items, f.name))}, classes "
                       f"{fmt(getattr(classes, f.name))}"
               for f in dataclasses.fields(UnlearnConfig)
               if getattr(items, f.name) != getattr(classes, f.name)}
    flags = configflags.add_config_flags(
        p, UnlearnConfig, title="unlearning recipe", defaults=by_kind,
        choices={"fake_label": FAKE_LABELS, "substitution": SUBSTITUTIONS})
    p.set_defaults(_unlearn_flags=flags, _judge=add_judge_flags(p))
    _add_judge_from(p)
    p.description = ("Cascaded unlearning of a trained GAN. " + rec + " If no attempt meets "
                     "the stop criteria, a class request keeps the check with the lowest pool "
                     "share (results.json: kept).")
    common.add_output_args(p)
    p.set_defaults(func=cmd_unlearn)

    p = gsub.add_parser("evaluate", help="forgotten share, classifier-FID/IS, D-score MIA, "
                                         "downstream accuracy")
    common.add_data_args(p)
    common.add_request_args(p, required=False)
    p.add_argument("--run-dir", required=True, type=common.path_arg,
                   help="the GAN run to evaluate")
    p.add_argument("--compare", nargs="*", type=common.path_arg,
                   help="other GAN runs (e.g. Original, Retrain)")
    p.add_argument("--samples", type=non_negative_int, default=_DEFAULT_SAMPLES,
                   help=f"generated samples per GAN for every metric (default "
                        f"{_DEFAULT_SAMPLES})")
    p.add_argument("--out", type=common.path_arg,
                   help="output directory (default: <run-dir>/gan-evaluate/<request>"
                        "[-samples-<N>][-judge-<digest>], naming --samples and the judge "
                        "flags where they are not the defaults)")
    common.add_output_args(p)
    p.set_defaults(func=cmd_evaluate, _judge=add_judge_flags(p), _resumes=False)
    _add_judge_from(p)
