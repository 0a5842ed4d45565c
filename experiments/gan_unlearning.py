"""GAN unlearning on MNIST-5k: class unlearning of a few classes and item unlearning (64 images by
default) × fake label, beside the Original and Retrain, several seeds, mean ± std
(docs/gan.md).

Command (from the repository root)::

    PYTHONPATH=. python experiments/gan_unlearning.py --out runs/gan_unlearning \
        --grids-dir docs/img

Defaults: 3 seeds; the GAN recipe is ``GANConfig()`` (the convolutional ``dcgan`` pair, 60
epochs of the 3,500 training images = 3,240 D+G iterations, Adam β₁ 0.5, batch 64, lr 1e-3
for D and 2e-3 for G);
Retrain is *the same recipe* on D_r from scratch (the recipe that gave the Original its
quality). The judge is :class:`hyperforget_jax.gan.metrics.JudgeCNN` trained 6 epochs on the
full training set and 9 affine-augmented copies of it, then 2 epochs at a tenth of the lr
(``--judge cnn --judge-epochs 20 --judge-augment 1 --judge-anneal 0`` for the package's
``cnn`` as before). Every field of both recipes is a flag (``--epochs``,
``--gan-arch``, ``--lr``, ..., ``--judge-epochs``, ...; ``--help`` lists them). 64 items ×
fake labels hard / generated / held-out with
the item recipe (latent-level substitution), plus the data-level substitution and the
λ_u = 0.25 variant; class unlearning of classes 3 and 8 with the class recipe (hard fake label,
latent-level substitution). Retrain runs for 64 items and for each class. ``--sizes
64,128,256,512`` adds larger item sets (no Retrain, no downstream accuracy).
``--class-lambda-u 4,16`` runs the class recipe again with those forgotten-items weights, beside
it, for the share / quality trade-off in docs/gan.md (``--sizes ""`` skips the items).

Outputs in ``--out``: ``results.json`` (every per-seed number), ``report.md`` (tables,
mean ± std over seeds, speed-ups as ratios of medians with both step counts, the issue's
targets checked), ``grid_*.png`` (64 samples of the Original / Retrain / unlearned generators
of seed 0; copied to ``--grids-dir`` if given). Duration: 56.9 min for the defaults (12
DCGAN trainings of ≈ 2 min each, the class cascades, the judge ≈ 3.5 min) alone on a 2-core
CPU, 2026-12-05 (docs/gan.md; the estimate before the judge and the class recipe grew was
≈ 32 min).

Resuming: every run (seed × request × method), once complete, is stored in ``<out>/cells/`` with
the configuration that produced it (every flag, the recipes, the EvalConfig, fingerprints of the
data, the judge and the Original it starts from), and rerunning the same command after an
interruption reuses those and runs the rest (the judge and the Originals are trained again:
deterministic on one machine). The report names the reused runs (their seconds are from the
earlier run) and is otherwise the one an uninterrupted run writes. Another configuration into
the same ``--out`` is refused (exit 2; ``--restart`` replaces that run), as is a second run
while one writes it. The report, ``results.json`` and the grids are removed at the start and
written at the end only.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import shutil
import sys
import time

import jax
import numpy as np

from hyperforget_jax import __version__, configflags, data, report, rundir
from hyperforget_jax.cli import ArgumentParser, ListInOne
from hyperforget_jax.commands.common import path_arg, refuse_zero_epochs
from hyperforget_jax.commands.gan import add_judge_flags
from hyperforget_jax.errors import ConfigError
from hyperforget_jax.gan.metrics import EvalConfig, evaluate_gan, judge_from_recipe, judge_outputs
from hyperforget_jax.gan.models import GAN_ARCHS, LATENT_PRIORS, GANArch
from hyperforget_jax.gan.train import GANConfig, sample, save_grid, timed_train_gan
from hyperforget_jax.gan.unlearn import (CLASS_RECIPE, FAKE_LABELS, ITEM_RECIPE, kept_mix_sound,
                                         unlearn_gan)
from hyperforget_jax.metrics import format_over_seeds



#: The role of this script's runs in ``run.json``, and the files it writes at its end.
ROLE = "experiment gan_unlearning"
OUTPUTS = ("results.json", "report.md", "grid_*.png")


def ms(values, scale=1.0, digits=2):
    # "[k of n seeds]" where a seed has no value: it was left out of the mean without a word
    return format_over_seeds(values, scale, digits)


#: A lighter forgotten-items weight for 64 items, reported beside the item recipe for
#: comparison (on the dense GAN it was the quality-first variant: chosen then on seeds 10-12,
#: λ_u = 1 moved classifier-FID by +1 / +25 / +31 %, λ_u = 0.25 by -15 / -4 / +5 %).
LIGHT_LAMBDA_U = 0.25
LIGHT = f"unlearn_heldout_lu{LIGHT_LAMBDA_U}"


def class_variant(lambda_u: float) -> str:
    """The method name of the class recipe run with another forgotten-items weight."""
    return f"unlearn_hard_lu{lambda_u:g}"


def fixed_lambda_u(lambda_u: float):
    """The class recipe at one forgotten-items weight, without the recipe's escalation."""
    return dataclasses.replace(CLASS_RECIPE, lambda_u=lambda_u, lambda_u_attempts=1)


def _class_methods(res) -> list[str]:
    """The class recipe's method name, then one per ``--class-lambda-u`` variant."""
    return ["unlearn_hard"] + [class_variant(lu) for lu in res.get("class_lambda_u", [])]


def _weights(text: str) -> list[float]:
    """``--class-lambda-u``'s comma list, refused at parse time unless every value is > 0."""
    try:
        vals = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a comma list of numbers (e.g. 4,16)") from None
    if any(not np.isfinite(v) or v <= 0 for v in vals):
        raise argparse.ArgumentTypeError(f"λ_u values must be finite and > 0, got {text!r}")
    if len({class_variant(v) for v in vals}) != len(vals):   # one method name, runs pooled
        raise argparse.ArgumentTypeError(f"λ_u lists a value twice: {text!r}")
    return vals


def guard_summary(history: list[dict], cfg) -> dict | None:
    """What the kept-class mix guard did in one class run: its checks, the largest drift of
    the kept-class mix from the Original's, and the checks over ``cfg.max_kept_drift`` it
    refused (as a stop or as the check kept at the cap), with those of them whose pool share
    was at or under ``cfg.max_share``. None for item runs."""
    checks = [h for h in history if h.get("kept_drift") is not None]
    if not checks:
        return None
    over = [h for h in checks if not kept_mix_sound(h, cfg)]
    return {"checks": len(checks), "max_drift": max(h["kept_drift"] for h in checks),
            "refused": len(over),
            "refused_at_share_bound": sum(h["share"] <= cfg.max_share for h in over)}


def confirm_summary(history: list[dict], cfg) -> dict | None:
    """How often a class run's pool passed the share bound and was put to the confirmation
    codes (``cfg.confirm_size``), and how often those refuted it. None without confirmation."""
    if not cfg.confirm_size:
        return None
    confirmed = [h["confirm_share"] for h in history if "confirm_share" in h]
    return {"confirmed": len(confirmed),
            "refuted": sum(c > cfg.max_share for c in confirmed)}


def _request_lists(args, splits) -> tuple[list[int], list[int], list[str], list[int]]:
    """``--sizes``, ``--retrain-sizes``, ``--fake-labels`` and ``--classes`` as lists, each
    value checked against the data (and ``--seeds``)."""
    if args.seeds < 1:
        raise ConfigError(f"--seeds must be >= 1, got {args.seeds}")

    def ints(flag: str, text: str) -> list[int]:
        vals = []
        for v in (v.strip() for v in text.split(",")):
            if v and not re.fullmatch(r"-?[0-9]+", v):    # (isdigit took "٣" as 3)
                raise ConfigError(f"{flag} takes comma-separated integers, got {text!r}")
            if v:
                vals.append(int(v))
        if len(set(vals)) != len(vals):
            raise ConfigError(f"{flag} lists a value twice: {text!r}")
        return vals

    n = len(splits.train)
    sizes, retrain_sizes = ints("--sizes", args.sizes), ints("--retrain-sizes", args.retrain_sizes)
    for k in (*sizes, *retrain_sizes):
        if not 1 <= k < n:
            raise ConfigError(f"item counts must lie in 1..{n - 1} (the training set has {n} "
                              f"images), got {k}")
    idle = [k for k in retrain_sizes if k not in sizes]
    if sizes and idle:      # items without the Retrain asked for (no word of it); a class-only
        # run (--sizes "", the documented commands) has no item Retrain to miss
        raise ConfigError(f"--retrain-sizes {','.join(map(str, idle))} names item counts "
                          f"--sizes {','.join(map(str, sizes))} does not run; Retrain runs "
                          "on --sizes' item sets: add them to --sizes or drop them from "
                          "--retrain-sizes (--retrain-sizes '' for no item Retrain)")
    labels = [s.strip() for s in args.fake_labels.split(",") if s.strip()]
    if set(labels) - set(FAKE_LABELS):
        raise ConfigError(f"--fake-labels takes {', '.join(FAKE_LABELS)}, got "
                          f"{args.fake_labels!r}")
    if len(set(labels)) != len(labels):   # both runs of a seed under one name, pooled
        raise ConfigError(f"--fake-labels lists a value twice: {args.fake_labels!r}")
    classes = ints("--classes", args.classes)
    if not classes and not sizes:     # (a 1.8-minute run to an empty report, exit 0)
        raise ConfigError("--classes and --sizes are both empty: no request to run")
    for c in classes:                 # names the classes the data has
        data.resolve_forget(splits.train, data.ForgetRequest(classes=(c,)))
    return sizes, retrain_sizes, labels, classes


def main(argv=None) -> dict:
    ap = ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=path_arg, default="runs/gan_unlearning")
    ap.add_argument("--grids-dir", type=path_arg, default=None,
                    help="also copy the sample grids here")
    ap.add_argument("--seeds", type=configflags.integer, default=3, help="seeds 0..N-1")
    # Every field of the recipes once, from their dataclasses (seeds come from --seeds).
    gan_flags = configflags.add_config_flags(
        ap, GANConfig, title="GAN recipe (Original and Retrain)", rename={"arch": "gan-arch"},
        choices={"arch": ("auto", *GAN_ARCHS), "latent_prior": LATENT_PRIORS},
        exclude=("seed",))
    judge_of = add_judge_flags(ap)   # the same --judge* flags as `hyperforget gan evaluate`
    # Comma lists, each given once (ListInOne): argparse kept the last one alone.
    ap.add_argument("--sizes", default="64", action=ListInOne,
                    help="item counts ('' for none); only a 64-item set gets the full "
                         "evaluation (downstream accuracy), the data-substitution and light "
                         "λ_u variants, a sample grid and the item targets")
    ap.add_argument("--fake-labels", default="hard,generated,heldout", action=ListInOne)
    ap.add_argument("--classes", default="3,8", action=ListInOne)
    ap.add_argument("--retrain-sizes", default="64", action=ListInOne,
                    help="the item counts of --sizes that also get Retrain")
    ap.add_argument("--class-lambda-u", type=_weights, default=[], action=ListInOne,
                    help="extra λ_u values for class requests, each run beside the class "
                         "recipe as `unlearn_hard_lu<λ>` (e.g. 4,16: the share/quality "
                         "trade-off in docs/gan.md)")
    ap.add_argument("--samples", type=configflags.integer, default=10_000)
    ap.add_argument("--restart", action="store_true",
                    help="start over: drop the runs an earlier command stored in --out (by "
                         "default the same command resumes them, and another one is refused)")
    args = ap.parse_args(argv)
    t_all = time.perf_counter()
    splits = data.make_splits(data.load_mnist5k())
    # Every value is checked here, before anything is trained or written (exit 2, one error).
    try:
        gan_cfg = gan_flags.build(args)
        refuse_zero_epochs(gan_cfg.epochs)      # (a sweep of untrained GANs, as on the CLI)
        judge_rec = judge_of(args)
        ev_full = EvalConfig(num_samples=args.samples, downstream_samples=args.samples)
        sizes, retrain_sizes, labels, classes = _request_lists(args, splits)
    except ValueError as e:           # ConfigError, ForgetRequestError
        ap.error(str(e))
    out = report.prepare_dir(args.out, flag="--out", not_a_run=ROLE)
    # and the grids' folder now, not after the whole run
    gd = report.prepare_dir(args.grids_dir, flag="--grids-dir") if args.grids_dir else None
    ident = {"role": ROLE, "version": __version__, "data": rundir.data_fingerprint(splits),
             "gan_config": gan_cfg.to_json(), "judge": judge_rec, "seeds": args.seeds,
             "classes": classes, "sizes": sizes, "retrain_sizes": retrain_sizes,
             "fake_labels": labels, "class_lambda_u": args.class_lambda_u,
             "samples": args.samples, "eval_cfg": ev_full, "class_cfg": CLASS_RECIPE.to_json(),
             "item_cfg": ITEM_RECIPE.to_json(), "backend": jax.default_backend()}
    # The same command resumes the cells an interrupted run stored, another one is refused, a
    # second writer is locked out. The previous run's report and sample grids go now, so that
    # neither an interrupted rerun nor the copy to --grids-dir below pairs them with this run's
    # numbers (e.g. the class-3 grids of an earlier --classes 3 run beside a --classes 8 run's).
    with rundir.open_sweep(out, ident, outputs=OUTPUTS, restart=args.restart,
                           command="gan_unlearning") as cells:
        return _sweep(args, splits, gan_cfg, judge_rec, ev_full, sizes, retrain_sizes, labels,
                      classes, out, gd, cells, t_all)


def _sweep(args, splits, gan_cfg, judge_rec, ev_full, sizes, retrain_sizes, labels, classes,
           out, gd, cells, t_all) -> dict:
    """The run: the judge and the originals, then every (seed, request, method) as a cell of
    ``cells`` (reused if an earlier run of the same configuration, from the same judge and
    original, stored it). The outputs are written at the end only."""
    class_lus = args.class_lambda_u
    seeds = list(range(args.seeds))
    ev_fast = dataclasses.replace(ev_full, downstream_samples=0)

    def log(msg):
        print(f"[{time.perf_counter() - t_all:7.1f}s] {msg}", flush=True)

    judge = judge_from_recipe(splits.train, judge_rec)
    classify = lambda x: judge_outputs(judge, x)[0].argmax(1)
    judge_acc = float(np.mean(classify(splits.test.x) == splits.test.y))
    judge_val = float(np.mean(classify(splits.val.x) == splits.val.y))
    log(f"judge {judge_rec['config']['arch']}: test accuracy {100 * judge_acc:.2f}%, validation "
        f"{100 * judge_val:.2f}%")
    run_args = {k: v for k, v in vars(args).items() if k in ("out", "grids_dir", "seeds",
                                                           "sizes", "fake_labels", "classes",
                                                           "retrain_sizes", "samples")}
    res: dict = {"config": {**run_args, "epochs": gan_cfg.epochs},
                 "gan_config": gan_cfg.to_json(),
                 "class_cfg": CLASS_RECIPE.to_json(), "item_cfg": ITEM_RECIPE.to_json(),
                 "class_lambda_u": class_lus,
                 "judge": {**judge_rec["config"], "augment": judge_rec["augment"],
                           "anneal_epochs": judge_rec["anneal_epochs"],
                           "test_accuracy": judge_acc, "val_accuracy": judge_val}, "runs": []}

    def record(**row):
        res["runs"].append(row)

    def grid(g_params, path, title):
        save_grid(sample(arch, g_params, 64, 1), path, title=title)

    grids = {}                   # grid_<name>.png in --out: its file in cells/, copied at the end

    def cell(seed, name, method, fn, grid_name=None):
        """Records the row ``fn(png)`` returns, or the one an earlier run stored; ``fn`` draws
        its sample grid to ``png`` (None: no grid)."""
        key = f"seed {seed} / {name} / {method}"
        png = cells.file(key, ".png") if grid_name else None
        config = {**cells.identity, "judge_params": judge_fp, "original": original_fp[seed]}
        row = cells.compute(key, config, lambda: fn(png), files=[".png"] if png else [])
        if key in cells.reused:
            log(f"{name} seed {seed} {method}: reused from {cells.path}")
        if png:
            grids[f"grid_{grid_name}.png"] = png
        res["runs"].append(row)

    # Requests: nested random item sets per seed (the first k of one permutation), classes.
    requests = []
    for seed in seeds:
        perm = np.random.default_rng(100 + seed).permutation(len(splits.train))
        for c in classes:
            requests.append((seed, f"class{c}", data.ForgetRequest(classes=(c,))))
        for k in sizes:
            requests.append((seed, f"items{k}",
                             data.ForgetRequest(indices=tuple(int(i) for i in perm[:k]))))

    # One untimed epoch first, as for Retrain below: the originals' times compare warm code
    # (seed 0's included XLA's compilation: 27.5 s against 5.7 s for seed 1 in a quick run).
    timed_train_gan(splits.train, dataclasses.replace(gan_cfg, epochs=1))
    originals = {}
    for seed in seeds:
        st, secs, arch = timed_train_gan(splits.train, dataclasses.replace(gan_cfg, seed=seed))
        res["gan_arch"] = arch.to_json()
        originals[seed] = st
        log(f"original seed {seed}: {secs:.1f} s")
        record(seed=seed, request="none", method="original_train", seconds=secs,
               steps=int(st.step))
    judge_fp = rundir.array_fingerprint(*jax.tree.leaves(judge.params))
    original_fp = {seed: rundir.array_fingerprint(*jax.tree.leaves((st.g_params, st.d_params)))
                   for seed, st in originals.items()}

    # Compile the cascade once per recipe and forget-set size bucket, and Retrain's epoch for
    # each D_r size (one untimed epoch), before timing: the timed runs compare warm code.
    o = originals[0]
    for _, name, req in requests[: len(classes) + len(sizes)]:
        fs = data.resolve_forget(splits.train, req)
        if req.classes is not None or len(req.indices) in retrain_sizes:
            timed_train_gan(fs.retain, dataclasses.replace(gan_cfg, epochs=1))
        recipe = CLASS_RECIPE if req.classes is not None else ITEM_RECIPE
        # (max_rounds=check_every ends every attempt after one chunk, the chunk the timed
        # runs use: a smaller cap would compile a shorter last chunk instead. The recipe's
        # escalation compiles each of its weights here too.)
        for cfg in [recipe] + ([fixed_lambda_u(lu) for lu in class_lus]
                               if req.classes is not None else []):
            unlearn_gan(arch, o.g_params, o.d_params, retain_x=fs.retain.x,
                        forget_x=fs.forget.x, heldout_x=splits.val.x,
                        cfg=dataclasses.replace(cfg, max_rounds=cfg.check_every),
                        forget_classes=req.classes, classify=classify)
        if req.classes is None and len(req.indices) == 64:
            for variant in (dict(substitution="data"), dict(lambda_u=LIGHT_LAMBDA_U)):
                unlearn_gan(arch, o.g_params, o.d_params, retain_x=fs.retain.x,
                            forget_x=fs.forget.x, heldout_x=splits.val.x,
                            cfg=dataclasses.replace(recipe, max_rounds=recipe.check_every,
                                                    **variant))
    log("cascade and Retrain compiled")

    for seed, name, req in requests:
        fs = data.resolve_forget(splits.train, req)
        fcls = req.classes
        is_class = fcls is not None
        k = None if is_class else len(req.indices)
        ref = judge_outputs(judge, fs.retain.x)[1]
        full = is_class or k == 64
        ev = ev_full if full else ev_fast
        o = originals[seed]
        cell(seed, name, "original", lambda _: dict(
            seed=seed, request=name, method="original",
            eval=evaluate_gan(arch, o.g_params, o.d_params, judge, splits, fs.forget.x,
                              fs.retain.x, fcls, ev, ref, forget_y=fs.forget.y)))
        if is_class or k in retrain_sizes:
            def retrain(png):
                st, secs, _ = timed_train_gan(fs.retain, dataclasses.replace(gan_cfg, seed=seed))
                e = evaluate_gan(arch, st.g_params, st.d_params, judge, splits, fs.forget.x,
                                 fs.retain.x, fcls, ev, ref, forget_y=fs.forget.y)
                log(f"{name} seed {seed} retrain {secs:.1f} s fid {e['classifier_fid']:.2f} "
                    f"auc {e['d_mia_auc']:.3f}")
                if png:
                    grid(st.g_params, png, f"Retrain ({name})")
                return dict(seed=seed, request=name, method="retrain", seconds=secs,
                            steps=int(st.step), eval=e)

            cell(seed, name, "retrain", retrain,
                 f"{name}_retrain" if seed == 0 and full else None)
        if is_class:
            variants = [("unlearn_hard", CLASS_RECIPE)] + [
                (class_variant(lu), fixed_lambda_u(lu)) for lu in class_lus]
        else:
            variants = [(f"unlearn_{fl}", dataclasses.replace(ITEM_RECIPE, fake_label=fl))
                        for fl in labels]
            if k == 64:
                variants.append(("unlearn_heldout_data",
                                 dataclasses.replace(ITEM_RECIPE, substitution="data")))
                variants.append((LIGHT, dataclasses.replace(ITEM_RECIPE,
                                                            lambda_u=LIGHT_LAMBDA_U)))
        for method, cfg in variants:
            cfg = dataclasses.replace(cfg, seed=seed)
            default = method == ("unlearn_hard" if is_class
                                 else f"unlearn_{ITEM_RECIPE.fake_label}")

            def unlearned(png):
                r = unlearn_gan(arch, o.g_params, o.d_params, retain_x=fs.retain.x,
                                forget_x=fs.forget.x, heldout_x=splits.val.x, cfg=cfg,
                                forget_classes=fcls, classify=classify if is_class else None)
                e = evaluate_gan(arch, r.g_params, r.d_params, judge, splits, fs.forget.x,
                                 fs.retain.x, fcls, ev if default or is_class or method == LIGHT
                                 else ev_fast,
                                 ref, forget_y=fs.forget.y)
                log(f"{name} seed {seed} {method} {r.rounds} rounds {r.seconds:.2f} s "
                    f"fid {e['classifier_fid']:.2f} auc {e['d_mia_auc']:.3f} "
                    f"share {e.get('forgotten_share', float('nan')):.4f}")
                if png:
                    grid(r.g_params, png, f"Unlearned ({name}, {cfg.fake_label})")
                return dict(seed=seed, request=name, method=method, seconds=r.seconds,
                            steps=r.rounds, stopped=r.stopped, y_f=r.y_f, lambda_u=r.lambda_u,
                            attempts=r.attempts, kept=r.kept, eval=e,
                            guard=guard_summary(r.history, cfg) if is_class else None,
                            confirm=confirm_summary(r.history, cfg) if is_class else None)

            cell(seed, name, method, unlearned,
                 f"{name}_unlearn" if seed == 0 and full and default else None)
    res["reused"] = cells.reused
    res["total_seconds"] = time.perf_counter() - t_all
    md = render(res, sizes, labels, classes)
    # The outputs, at the end only: the grids, results.json, then the report.
    grid(originals[0].g_params, out / "grid_original.png", "Original GAN")
    for name, png in grids.items():
        report.atomic_write(out / name, png.read_bytes())
    report.write_json(out / "results.json", res)
    report.atomic_write(out / "report.md", md)
    if args.grids_dir:
        for f in out.glob("grid_*.png"):
            shutil.copy(f, gd / f"gan_{f.name}")
    print(md)
    return res


def _rows(res, request, method):
    return [r for r in res["runs"] if r["request"] == request and r["method"] == method]


def render(res, sizes, labels, classes) -> str:
    cfgc, cfgi = res["class_cfg"], res["item_cfg"]
    n_seeds = len({r["seed"] for r in res["runs"]})
    ga, jd = res.get("gan_arch", {}), res.get("judge", {"arch": "mlp"})
    gan_desc = (f"`{ga.get('name', res['gan_config']['arch'])}` pair (G {ga.get('g_params', 0):,}"
                f" / D {ga.get('d_params', 0):,} parameters), {res['config']['epochs']} epochs, "
                f"Adam {res['gan_config']['lr']:g}"
                + (f" for D and {res['gan_config']['g_lr']:g} for G"
                   if res["gan_config"].get("g_lr") not in (None, res["gan_config"]["lr"])
                   else "")
                # Older results: no gan_arch; a stored arch reads its prior as it was drawn.
                + (f", latent prior {GANArch.from_json(ga).describe_prior()}" if ga else ""))
    copies = jd.get("augment", 1)
    judge_desc = (f"the `{jd['arch'].rsplit(':', 1)[-1]}` classifier trained {jd.get('epochs', 20)}"
                  " epochs on the full training set"
                  + (f" and {copies - 1} affine-augmented copies of it" if copies > 1 else "")
                  + (f", then {jd['anneal_epochs']} epochs at a tenth of its lr"
                     if jd.get("anneal_epochs") else "")
                  + (f" ({100 * jd['test_accuracy']:.1f}% on the real test set)"
                     if "test_accuracy" in jd else ""))
    md = ["# GAN unlearning on MNIST-5k\n",
          f"{n_seeds} seeds, mean ± std. GAN: {gan_desc}; judge: {judge_desc}. "
          "classifier-FID / classifier-IS use the judge's penultimate features / softmax "
          "(not Inception); FID reference = the retained training images D_r. d_mia_auc: ROC "
          "AUC of σ(D(x)) on the forgotten training images vs held-out test images (of the "
          "forgotten class for class requests; 0.5 = no signal, < 0.5 = the items now look "
          "*less* real than unseen data). Downstream: an MLP trained on "
          # --samples (results before it was recorded: its default)
          f"{res['config'].get('samples', 10_000):,} generated samples labelled by the judge, "
          "tested on the real test set (all classes / kept classes). "
          f"Class recipe: fake label {cfgc['fake_label']}, {cfgc['substitution']}-level "
          f"substitution, λ_s {cfgc['lambda_s']}{_anchor(cfgc)}{_confirm(cfgc)}"
          f"{_escalation(cfgc)}; "
          f"item recipe: {cfgi['substitution']}-level "
          f"substitution, λ_s {cfgi['lambda_s']}{_anchor(cfgi)}, fake label varied "
          "(`unlearn_heldout_data`: data-level substitution; "
          f"`{LIGHT}`: the held-out recipe with λ_u = {LIGHT_LAMBDA_U}).\n"]
    orig = _rows(res, "none", "original_train")
    md.append(f"Original GAN training: {ms([r['seconds'] for r in orig], digits=1)} s, "
              f"{orig[0]['steps']} iterations.\n")
    hdr = ["request", "model", "iterations / rounds", "seconds", "classifier-FID",
           "classifier-IS", "forgotten share %", "d_mia_auc", "downstream acc %",
           "downstream kept %"]
    body = []
    names = [f"class{c}" for c in classes] + [f"items{k}" for k in sizes]
    class_methods = _class_methods(res)
    methods = (["original", "retrain", *class_methods] + [f"unlearn_{fl}" for fl in labels]
               + ["unlearn_heldout_data", LIGHT])
    for name in names:
        for m in dict.fromkeys(methods):
            rows = _rows(res, name, m)
            if not rows:
                continue
            ev = [r["eval"] for r in rows]
            get = lambda key: [e.get(key) for e in ev]
            body.append([name, m,
                         ms([r.get("steps") for r in rows], digits=0) if m != "original"
                         else "–",
                         ms([r.get("seconds") for r in rows], digits=2) if m != "original"
                         else "–",
                         ms(get("classifier_fid")), ms(get("classifier_is")),
                         ms(get("forgotten_share"), 100) if name.startswith("class") else "–",
                         ms(get("d_mia_auc"), digits=3), ms(get("downstream_acc"), 100),
                         ms(get("downstream_acc_kept"), 100)])
    md.append(report.markdown_table(hdr, body) + "\n")
    kept = _kept_weights(res, [n for n in names if n.startswith("class")])
    if kept:
        md.append(kept + "\n")
    md.append("## Speed-up vs Retrain (ratio of medians over seeds, measured in this run)\n")
    sp = []
    for name in names:
        rt = _rows(res, name, "retrain")
        bases = (class_methods if name.startswith("class")
                 else [f"unlearn_{cfgi['fake_label']}", LIGHT])
        for base in bases:
            ul = _rows(res, name, base)
            if not (rt and ul):
                continue
            t_rt = float(np.median([r["seconds"] for r in rt]))
            t_ul = float(np.median([r["seconds"] for r in ul]))
            sp.append([name, base, f"{t_rt:.1f}", f"{t_ul:.2f}", _ratio(t_rt / t_ul),
                       f"{int(np.median([r['steps'] for r in rt]))}",
                       f"{int(np.median([r['steps'] for r in ul]))}"])
    md.append(report.markdown_table(["request", "method", "Retrain s (median)",
                                     "unlearn s (median)", "speed-up",
                                     "Retrain D+G iterations", "cascade rounds"], sp) + "\n")
    md.append(targets(res, classes) + "\n")
    if classes:
        c0 = f"class{classes[0]}"
        md.append(f"![original](grid_original.png) ![retrain](grid_{c0}_retrain.png) "
                  f"![unlearned](grid_{c0}_unlearn.png)\n")
    md.append(f"\nTotal run time {res.get('total_seconds', 0) / 60:.1f} min."
              + (f" Resumed: {len(res['reused'])} runs reused from an earlier run of this "
                 f"command (its `cells/`: {'; '.join(res['reused'])}); their seconds are that "
                 "run's, and the total run time is this run's alone." if res.get("reused")
                 else "") + "\n")
    return "\n".join(md)


def _ratio(x: float) -> str:
    """A speed-up: whole numbers from 10×, one decimal below (0.3× is slower, not 0×)."""
    return f"{x:.0f}×" if x >= 10 else f"{x:.1f}×"


def _anchor(cfg: dict) -> str:
    """The anchor weight for the report's recipe line (nothing without an anchor)."""
    return f", anchor λ_a {cfg['lambda_a']:g}" if cfg.get("lambda_a") else ""


def _confirm(cfg: dict) -> str:
    """The stop's confirmation, for the report's recipe line (nothing without one)."""
    n = cfg.get("confirm_size", 0)
    return (f", a pool under the {100 * cfg['max_share']:g} % share bound confirmed on {n:,} "
            f"more codes" if n else "")


def _escalation(cfg: dict) -> str:
    """How the class recipe escalates λ_u, for the report's recipe line."""
    if "lambda_u" not in cfg:
        return ""
    n = cfg.get("lambda_u_attempts", 1)
    if n <= 1:
        return f", λ_u {cfg['lambda_u']:g}"
    lus = ", ".join(f"{cfg['lambda_u'] * cfg['lambda_u_growth'] ** k:g}" for k in range(n))
    return (f", λ_u {lus} (the next weight, from the Original, when an attempt reaches "
            f"{cfg['max_rounds']:,} rounds without the stop criteria)")


def _kept_weights(res, requests) -> str:
    """Per seed, the λ_u the class recipe kept and the rounds of each attempt."""
    lines = []
    for name in requests:
        per_seed = []
        for r in sorted(_rows(res, name, "unlearn_hard"), key=lambda r: r["seed"]):
            if not r.get("attempts"):
                continue
            tries = " → ".join(f"λ_u {a['lambda_u']:g}: {a['rounds']}"
                               for a in r["attempts"])
            kept = r.get("kept")
            where = ("" if not kept else f" at its round {kept['round']}, share "
                     f"{100 * kept['share']:.2f} %, the lowest check")
            g = r.get("guard")
            guard = ("" if not g else
                     f"; kept-class drift ≤ {g['max_drift']:.2f}, " + (
                         f"{g['refused']} of {g['checks']} checks refused by the guard "
                         f"({g['refused_at_share_bound']} at or under the share bound)"
                         if g["refused"] else "no check refused"))
            c = r.get("confirm")
            confirm = ("" if not c else
                       f"; {c['confirmed']} pools at or under the share bound confirmed on "
                       f"more codes, {c['refuted']} of them refuted")
            per_seed.append(f"seed {r['seed']} ({tries} rounds, kept λ_u "
                            f"{r['lambda_u']:g}{where}{guard}{confirm})")
        if per_seed:
            lines.append(f"- {name}: " + "; ".join(per_seed))
    return ("Class recipe, λ_u kept per seed (rounds of each attempt):\n\n" + "\n".join(lines)
            if lines else "")


def _mean(res, request, method, key, scale=1.0):
    v = [r["eval"].get(key) for r in _rows(res, request, method) if "eval" in r]
    v = [x for x in v if x is not None]
    return scale * float(np.mean(v)) if v else None


def _median_seconds(res, request, method):
    v = [r["seconds"] for r in _rows(res, request, method)]
    return float(np.median(v)) if v else None


def targets(res, classes) -> str:
    """The issue's targets, checked on the means over seeds (✓ / ✗ per row)."""
    item = f"unlearn_{res['item_cfg']['fake_label']}"
    rows = []

    def add(name, ok, text):
        rows.append([name, text, "–" if ok is None else ("✓" if ok else "✗")])

    def fmt(v, d=2):
        return "–" if v is None else f"{v:.{d}f}"

    acc = res.get("judge", {}).get("test_accuracy")
    if acc is not None:
        add("judge: ≥ 98% on MNIST-5k's test set", acc >= 0.98, f"{100 * acc:.1f}%")
    for c in classes:
        r = f"class{c}"
        share_rt = _mean(res, r, "retrain", "forgotten_share", 100)
        add(f"class {c}: Retrain ≤ 2% of the class", None if share_rt is None else
            share_rt <= 2, f"{fmt(share_rt)}%")
        for m in _class_methods(res):
            tag = f"class {c}" + ("" if m == "unlearn_hard" else f" ({m})")
            share = _mean(res, r, m, "forgotten_share", 100)
            add(f"{tag}: forgotten share ≤ 1%", None if share is None else share <= 1,
                f"{fmt(share)}% (Original "
                f"{fmt(_mean(res, r, 'original', 'forgotten_share', 100))}%)")
            f_ul, f_rt = (_mean(res, r, x, "classifier_fid") for x in (m, "retrain"))
            add(f"{tag}: classifier-FID within 20% of Retrain's",
                None if None in (f_ul, f_rt) else abs(f_ul - f_rt) <= 0.2 * f_rt,
                f"{fmt(f_ul)} vs {fmt(f_rt)}")
            for key, what in (("downstream_acc", "whole test set"),
                              ("downstream_acc_kept", "kept classes")):
                a_ul, a_rt = (_mean(res, r, x, key, 100) for x in (m, "retrain"))
                add(f"{tag}: downstream accuracy ({what}) within 2 points of Retrain's",
                    None if None in (a_ul, a_rt) else abs(a_ul - a_rt) <= 2,
                    f"{fmt(a_ul)}% vs {fmt(a_rt)}%")
    acc = [r["eval"]["downstream_acc"] for r in res["runs"] if r["method"] == "original"
           and "eval" in r and r["eval"].get("downstream_acc") is not None]
    acc = 100 * float(np.mean(acc)) if acc else None
    add("Original GAN: downstream accuracy ≥ 90%", None if acc is None else acc >= 90,
        f"{fmt(acc)}%")
    for m in (item, LIGHT) if _rows(res, "items64", "original") else ():
        a_ul, a_rt = (_mean(res, "items64", x, "d_mia_auc") for x in (m, "retrain"))
        add(f"64 items ({m}): d_mia_auc within 0.05 of Retrain's",
            None if None in (a_ul, a_rt) else abs(a_ul - a_rt) <= 0.05,
            f"{fmt(a_ul, 3)} vs {fmt(a_rt, 3)}")
        f_ul, f_or = (_mean(res, "items64", x, "classifier_fid") for x in (m, "original"))
        add(f"64 items ({m}): classifier-FID within 5% of the Original's",
            None if None in (f_ul, f_or) else f_ul <= 1.05 * f_or,
            f"{fmt(f_ul)} vs {fmt(f_or)} ({fmt(None if None in (f_ul, f_or) else 100 * (f_ul / f_or - 1), 1)}%)")
        t_rt, t_ul = _median_seconds(res, "items64", "retrain"), _median_seconds(res, "items64", m)
        sp = None if None in (t_rt, t_ul) else t_rt / t_ul
        add(f"64 items ({m}): ≥ 50× faster than Retrain", None if sp is None else sp >= 50,
            f"{fmt(sp, 0)}× (median {fmt(t_rt, 1)} s vs {fmt(t_ul, 2)} s)")
    return ("## Targets (means over seeds)\n\n" +
            report.markdown_table(["target", "measured", ""], rows))


if __name__ == "__main__":
    report.exit_on_error("gan_unlearning", lambda: main(sys.argv[1:]))
