"""GAN unlearning on MNIST-5k: item unlearning (64/128/256/512 images) × fake label, class
unlearning of a few classes, Original and Retrain, several seeds, mean ± std (METHODS.md §3,
docs/gan.md).

Command (from the repository root)::

    PYTHONPATH=. python experiments/gan_unlearning.py --out runs/gan_unlearning \\
        --grids-dir docs/img

Defaults: 3 seeds; the GAN recipe is the dense ``mlp`` pair, 60 epochs of the 3,500 training
images (3,240 D+G iterations, Adam 2e-4 / β₁ 0.5 / batch 64); Retrain is *the same recipe* on
D_r from scratch (the recipe that gave the Original its quality). Item sizes 64/128/256/512 ×
fake labels hard/generated/heldout with the item recipe (latent-level substitution), plus the
data-level substitution for 64 items; class unlearning of classes 3 and 8 with the class recipe
(hard fake label, latent-level substitution). Retrain runs for 64 items and for each class.
Downstream accuracy is computed for the class rows and the 64-item rows.

Outputs in ``--out``: ``results.json`` (every per-seed number), ``report.md`` (tables,
mean ± std over seeds, speed-ups as ratios of medians with both step counts), ``grid_*.png``
(64 samples of the Original / Retrain / unlearned generators of seed 0; copied to
``--grids-dir`` if given). Duration: ≈ 6–7 min on 2 idle CPU cores, up to ~2× that on a loaded machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
import time

import numpy as np

from hyperforget_jax import data, report
from hyperforget_jax.metrics import format_mean_std
from hyperforget_jax.gan.metrics import EvalConfig, evaluate_gan, judge_outputs, train_judge
from hyperforget_jax.gan.train import GANConfig, sample, save_grid, timed_train_gan
from hyperforget_jax.gan.unlearn import CLASS_RECIPE, ITEM_RECIPE, unlearn_gan


def ms(values, scale=1.0, digits=2):
    v = [x for x in values if x is not None]
    return format_mean_std(v, scale, digits) if v else "–"


#: A lighter forgotten-items weight for 64 items, the quality-first variant of the item recipe
#: (chosen on seeds 10-12, which are not evaluated here: λ_u = 1 moved classifier-FID by
#: +1 / +25 / +31 %, λ_u = 0.25 by -15 / -4 / +5 %, at about twice the rounds).
LIGHT_LAMBDA_U = 0.25
LIGHT = f"unlearn_heldout_lu{LIGHT_LAMBDA_U}"


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="runs/gan_unlearning")
    ap.add_argument("--grids-dir", default=None, help="also copy the sample grids here")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--sizes", default="64,128,256,512")
    ap.add_argument("--fake-labels", default="hard,generated,heldout")
    ap.add_argument("--classes", default="3,8")
    ap.add_argument("--retrain-sizes", default="64")
    ap.add_argument("--samples", type=int, default=10_000)
    args = ap.parse_args(argv)
    out = report.prepare_dir(args.out)
    t_all = time.perf_counter()
    splits = data.make_splits(data.load_mnist5k())
    sizes = [int(s) for s in args.sizes.split(",") if s]
    retrain_sizes = [int(s) for s in args.retrain_sizes.split(",") if s]
    labels = [s for s in args.fake_labels.split(",") if s]
    classes = [int(c) for c in args.classes.split(",") if c]
    seeds = list(range(args.seeds))
    ev_full = EvalConfig(num_samples=args.samples, downstream_samples=args.samples)
    ev_fast = dataclasses.replace(ev_full, downstream_samples=0)

    def log(msg):
        print(f"[{time.perf_counter() - t_all:7.1f}s] {msg}", flush=True)

    judge = train_judge(splits.train, seed=0)
    classify = lambda x: judge_outputs(judge, x)[0].argmax(1)
    gan_cfg = GANConfig(epochs=args.epochs)
    res: dict = {"config": vars(args), "gan_config": gan_cfg.to_json(),
                 "class_cfg": CLASS_RECIPE.to_json(), "item_cfg": ITEM_RECIPE.to_json(),
                 "runs": []}

    def record(**row):
        res["runs"].append(row)
        report.write_json(out / "results.json", res)

    def grid(g_params, name, title):
        save_grid(sample(arch, g_params, 64, 1), out / f"grid_{name}.png", title=title)

    # Requests: nested random item sets per seed (the first k of one permutation), classes.
    requests = []
    for seed in seeds:
        perm = np.random.default_rng(100 + seed).permutation(len(splits.train))
        for c in classes:
            requests.append((seed, f"class{c}", data.ForgetRequest(classes=(c,))))
        for k in sizes:
            requests.append((seed, f"items{k}",
                             data.ForgetRequest(indices=tuple(int(i) for i in perm[:k]))))

    originals = {}
    for seed in seeds:
        st, secs, arch = timed_train_gan(splits.train, dataclasses.replace(gan_cfg, seed=seed))
        originals[seed] = st
        log(f"original seed {seed}: {secs:.1f} s")
        record(seed=seed, request="none", method="original_train", seconds=secs,
               steps=int(st.step))
        if seed == 0:
            grid(st.g_params, "original", "Original GAN")

    # Compile the cascade once per recipe and forget-set size bucket, untimed: the timed runs
    # then compare warm code with a warm Retrain (whose epoch function the Original training
    # compiled; D_r's new shape costs Retrain one recompilation, ≈ 1 s, inside its timing).
    o = originals[0]
    for _, name, req in requests[: len(classes) + len(sizes)]:
        fs = data.resolve_forget(splits.train, req)
        recipe = CLASS_RECIPE if req.classes is not None else ITEM_RECIPE
        unlearn_gan(arch, o.g_params, o.d_params, retain_x=fs.retain.x, forget_x=fs.forget.x,
                    heldout_x=splits.val.x, cfg=dataclasses.replace(recipe, max_rounds=1),
                    forget_classes=req.classes, classify=classify)
        if req.classes is None and len(req.indices) == 64:
            for variant in (dict(substitution="data"), dict(lambda_u=LIGHT_LAMBDA_U)):
                unlearn_gan(arch, o.g_params, o.d_params, retain_x=fs.retain.x,
                            forget_x=fs.forget.x, heldout_x=splits.val.x,
                            cfg=dataclasses.replace(recipe, max_rounds=1, **variant))
    log("cascade compiled")

    for seed, name, req in requests:
        fs = data.resolve_forget(splits.train, req)
        fcls = req.classes
        is_class = fcls is not None
        k = None if is_class else len(req.indices)
        ref = judge_outputs(judge, fs.retain.x)[1]
        full = is_class or k == 64
        ev = ev_full if full else ev_fast
        o = originals[seed]
        e = evaluate_gan(arch, o.g_params, o.d_params, judge, splits, fs.forget.x, fs.retain.x,
                         fcls, ev, ref)
        record(seed=seed, request=name, method="original", eval=e)
        if is_class or k in retrain_sizes:
            st, secs, _ = timed_train_gan(fs.retain, dataclasses.replace(gan_cfg, seed=seed))
            e = evaluate_gan(arch, st.g_params, st.d_params, judge, splits, fs.forget.x,
                             fs.retain.x, fcls, ev, ref)
            record(seed=seed, request=name, method="retrain", seconds=secs,
                   steps=int(st.step), eval=e)
            log(f"{name} seed {seed} retrain {secs:.1f} s fid {e['classifier_fid']:.2f} "
                f"auc {e['d_mia_auc']:.3f}")
            if seed == 0 and full:
                grid(st.g_params, f"{name}_retrain", f"Retrain ({name})")
        if is_class:
            variants = [("unlearn_hard", CLASS_RECIPE)]
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
            r = unlearn_gan(arch, o.g_params, o.d_params, retain_x=fs.retain.x,
                            forget_x=fs.forget.x, heldout_x=splits.val.x, cfg=cfg,
                            forget_classes=fcls, classify=classify if is_class else None)
            default = method == ("unlearn_hard" if is_class
                                 else f"unlearn_{ITEM_RECIPE.fake_label}")
            e = evaluate_gan(arch, r.g_params, r.d_params, judge, splits, fs.forget.x,
                             fs.retain.x, fcls, ev if default or method == LIGHT else ev_fast,
                             ref)
            record(seed=seed, request=name, method=method, seconds=r.seconds,
                   steps=r.rounds, stopped=r.stopped, y_f=r.y_f, eval=e)
            log(f"{name} seed {seed} {method} {r.rounds} rounds {r.seconds:.2f} s "
                f"fid {e['classifier_fid']:.2f} auc {e['d_mia_auc']:.3f} "
                f"share {e.get('forgotten_share', float('nan')):.4f}")
            if seed == 0 and full and default:
                grid(r.g_params, f"{name}_unlearn", f"Unlearned ({name}, {cfg.fake_label})")
    res["total_seconds"] = time.perf_counter() - t_all
    md = render(res, sizes, labels, classes)
    report.write_json(out / "results.json", res)
    report.atomic_write(out / "report.md", md)
    if args.grids_dir:
        gd = report.prepare_dir(args.grids_dir)
        for f in out.glob("grid_*.png"):
            shutil.copy(f, gd / f"gan_{f.name}")
    print(md)
    return res


def _rows(res, request, method):
    return [r for r in res["runs"] if r["request"] == request and r["method"] == method]


def render(res, sizes, labels, classes) -> str:
    cfgc, cfgi = res["class_cfg"], res["item_cfg"]
    n_seeds = len({r["seed"] for r in res["runs"]})
    md = ["# GAN unlearning on MNIST-5k\n",
          f"{n_seeds} seeds, mean ± std. GAN: dense `mlp` pair, {res['config']['epochs']} "
          "epochs; judge classifier MLP 784→256→256→10 trained on the full training set. "
          "classifier-FID / classifier-IS use the judge's penultimate features / softmax "
          "(not Inception); FID reference = the retained training images D_r. d_mia_auc: ROC "
          "AUC of σ(D(x)) on the forgotten training images vs held-out test images (of the "
          "forgotten class for class requests; 0.5 = no signal, < 0.5 = the items now look "
          "*less* real than unseen data). Downstream: an MLP trained on 10k generated samples "
          "labelled by the judge, tested on the real test set (all classes / kept classes). "
          f"Class recipe: fake label {cfgc['fake_label']}, {cfgc['substitution']}-level "
          f"substitution, λ_s {cfgc['lambda_s']}; item recipe: {cfgi['substitution']}-level "
          f"substitution, λ_s {cfgi['lambda_s']}, fake label varied "
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
    methods = (["original", "retrain", "unlearn_hard"] + [f"unlearn_{fl}" for fl in labels]
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
    md.append("## Speed-up vs Retrain (ratio of medians over seeds, measured in this run)\n")
    sp = []
    for name in names:
        rt = _rows(res, name, "retrain")
        bases = (["unlearn_hard"] if name.startswith("class")
                 else [f"unlearn_{cfgi['fake_label']}", LIGHT])
        for base in bases:
            ul = _rows(res, name, base)
            if not (rt and ul):
                continue
            t_rt = float(np.median([r["seconds"] for r in rt]))
            t_ul = float(np.median([r["seconds"] for r in ul]))
            sp.append([name, base, f"{t_rt:.1f}", f"{t_ul:.2f}", f"{t_rt / t_ul:.0f}×",
                       f"{int(np.median([r['steps'] for r in rt]))}",
                       f"{int(np.median([r['steps'] for r in ul]))}"])
    md.append(report.markdown_table(["request", "method", "Retrain s (median)",
                                     "unlearn s (median)", "speed-up",
                                     "Retrain D+G iterations", "cascade rounds"], sp) + "\n")
    if classes:
        c0 = f"class{classes[0]}"
        md.append(f"![original](grid_original.png) ![retrain](grid_{c0}_retrain.png) "
                  f"![unlearned](grid_{c0}_unlearn.png)\n")
    md.append(f"\nTotal run time {res.get('total_seconds', 0) / 60:.1f} min.\n")
    return "\n".join(md)


if __name__ == "__main__":
    main(sys.argv[1:])
