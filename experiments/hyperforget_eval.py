"""HyperForget evaluation (issue 4, METHODS.md §2 and §4): DiHyFo-2 and DiHyFo-1 sampled
unlearned models on held-out original networks, against Retrain and ∇τ.

    PYTHONPATH=. python experiments/hyperforget_eval.py --out runs/hf_eval

Steps (each resumable / cached in ``--out``): build the checkpoint corpus (G.pt's 784→10→10 MLP
on MNIST-5k, ``--seeds`` runs, the last ``--test-seeds`` held out), train DiHyFo-2 and DiHyFo-1
(class ``--dihyfo1-class``), then for every held-out original × 10 single-class requests sample
``--samples`` models and measure RA/FA/TA and mia_loss_lr beside Retrain (the corpus's Retrain
runs: same init, same recipe on D_r) and ∇τ (the library's ``unlearn("gradtau")`` with the
paper's schedule, and the corpus's ∇τ + repair trajectories the hypernetwork learned from);
prompt alignment R² on the forget loss; memorisation (nearest training checkpoint) against a
"training checkpoint + noise" baseline at equal retain accuracy; sampling wall time against
Retrain and ∇τ; vmapped sampling of 10 requests against 1. Writes ``results.json`` and
``report.md``. About 22 minutes on 2 idle CPU cores with the defaults (measured 1,290 s: the
corpus 44 s, DiHyFo-2 training 1,122 s, DiHyFo-1 69 s). ``--render-only`` re-renders
``report.md`` from ``results.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hyperforget_jax import data, metrics, report, train  # noqa: E402
from hyperforget_jax import params as P_  # noqa: E402
from hyperforget_jax.hyperforget import corpus as C  # noqa: E402
from hyperforget_jax.hyperforget import denoiser as DN  # noqa: E402
from hyperforget_jax.hyperforget import dihyfo as H  # noqa: E402
from hyperforget_jax.unlearn import unlearn  # noqa: E402


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="runs/hf_eval")
    p.add_argument("--seeds", type=int, default=24)
    p.add_argument("--test-seeds", type=int, default=3)
    p.add_argument("--fleet-size", type=int, default=8)
    p.add_argument("--steps", type=int, default=18000, help="DiHyFo-2 training steps")
    p.add_argument("--render-only", action="store_true",
                   help="re-render report.md from <out>/results.json")
    p.add_argument("--steps1", type=int, default=1000, help="DiHyFo-1 training steps")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3,
                   help="G.pt: 4e-4 for ~10^6 steps; 1e-3 for a few thousand CPU steps")
    p.add_argument("--from-start", type=float, default=1.0)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--no-permute", action="store_true")
    p.add_argument("--samples", type=int, default=3, help="samples per (seed, request)")
    p.add_argument("--ddim-steps", type=int, default=20)
    p.add_argument("--dihyfo1-class", type=int, default=3)
    return p.parse_args(argv)


# --- fast per-model metrics (RA/FA/TA + mia_loss_lr; evaluate_unlearning's definitions) -----

def make_eval(arch, splits):
    tr, te = splits.train, splits.test
    xtr, ytr, xte, yte = (jnp.asarray(a) for a in (tr.x, tr.y, te.x, te.y))

    @jax.jit
    def outs(flat):
        p = P_.unflatten(flat, arch.param_shapes())
        res = []
        for x, y in ((xtr, ytr), (xte, yte)):
            lg = arch.apply(p, x)
            res += [optax.softmax_cross_entropy_with_integer_labels(lg, y),
                    jnp.argmax(lg, -1) == y, jnp.argmax(lg, -1)]
        return res

    def run(flat, classes, mia=True, seed=0):
        ltr, ctr, _, lte, cte, pred = (np.asarray(a) for a in outs(jnp.asarray(flat)))
        f_tr, f_te = np.isin(tr.y, classes), np.isin(te.y, classes)
        out = {"retain_acc": ctr[~f_tr].mean(), "forget_acc": ctr[f_tr].mean(),
               "test_acc": cte.mean(), "test_acc_kept": cte[~f_te].mean(),
               "forget_loss": ltr[f_tr].mean(), "retain_loss": ltr[~f_tr].mean()}
        if mia:
            out["mia_loss_lr"] = metrics.mia_loss_lr(ltr[f_tr], lte[f_te], seed=seed)
        return {k: float(v) for k, v in out.items()}, pred

    return run


def ms(vals, scale=1.0, d=2):
    return metrics.format_mean_std(vals, scale, d)


def timed(fn, repeat=3):
    fn()
    ts = []
    for _ in range(repeat):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def main(argv=None):
    a = parse(argv)
    out = report.prepare_dir(a.out)
    if a.render_only:              # re-render report.md from an existing results.json
        r = json.loads((out / "results.json").read_text())
        md = render(r, argparse.Namespace(**r["args"]))
        report.atomic_write(out / "report.md", md)
        print(md)
        return
    t_start = time.perf_counter()
    splits = data.make_splits(data.load_mnist5k(), seed=0)
    ccfg = C.CorpusConfig(num_seeds=a.seeds, fleet_size=a.fleet_size,
                          test_fraction=a.test_seeds / a.seeds)
    stats = C.build_corpus(out / "corpus", ccfg, splits, "mnist5k", progress=True)
    corpus = C.Corpus(out / "corpus")
    arch, tmpl = corpus.arch, corpus.arch.param_shapes()
    test_seeds = corpus.index["test_seeds"]
    results = {"command": "PYTHONPATH=. python experiments/hyperforget_eval.py "
                          + " ".join(argv if argv is not None else sys.argv[1:]),
               "args": vars(a), "corpus": {**stats, "test_seeds": test_seeds}}
    print("corpus", results["corpus"], flush=True)

    den = DN.DenoiserConfig(num_layers=a.layers, width=a.width)

    def get_net(name, variant, fc, steps):
        path = out / name
        if (path / "hypernet").exists():
            net, meta = H.load_hypernet(path / "hypernet")
            return net, meta["history"]
        cfg = DN.HyperTrainConfig(steps=steps, batch_size=a.batch_size, lr=a.lr,
                                  permute=not a.no_permute, from_start=a.from_start)
        net, hist = H.train_hypernet(corpus, variant, fc, den, cfg, progress=True)
        H.save_hypernet(path / "hypernet", net, {"history": hist})
        return net, hist

    net2, hist2 = get_net("dihyfo2", "dihyfo2", None, a.steps)
    net1, hist1 = get_net("dihyfo1", "dihyfo1", a.dihyfo1_class, a.steps1)
    results["train"] = {n: {k: h[k] for k in ("seconds", "steps_per_second", "trajectories")}
                        | {"loss_first": h["loss"][0], "loss_last": h["loss"][-1]}
                        for n, h in (("dihyfo2", hist2), ("dihyfo1", hist1))}
    print("train", results["train"], flush=True)

    ev = make_eval(arch, splits)
    classes = list(range(arch.num_classes))
    starts = {s: P_.unflatten(jnp.asarray(corpus.params([corpus.find(s, "original")])[0]),
                              tmpl) for s in test_seeds}

    # --- DiHyFo-2: every held-out original × every class × --samples keys (one vmapped call)
    rows = {"dihyfo2": [], "retrain": [], "gradtau": [], "gradtau_repair": [], "original": []}
    sampled_flat, sampled_meta = [], []
    gt_times = []
    for s in test_seeds:
        p0 = starts[s]
        prompts = [H.make_prompt(net2, p0, splits.train, (c,)) for c in classes]
        rep = H.stack_prompts([p for p in prompts for _ in range(a.samples)])
        keys = jax.random.split(jax.random.key(1000 + s), len(classes) * a.samples)
        many = H.sample_many(keys, net2, p0, rep, a.ddim_steps)
        flats = np.asarray(jax.vmap(P_.flatten)(many))
        for i, f in enumerate(flats):
            c = classes[i // a.samples]
            m, _ = ev(f, [c], seed=s)
            rows["dihyfo2"].append({"seed": s, "class": c, **m})
            sampled_flat.append(f)
            sampled_meta.append((s, c, m["retain_acc"]))
        for c in classes:
            rid = corpus.requests.index((c,))
            for kind, name in (("retrain", "retrain"), ("gradtau", "gradtau_repair")):
                f = corpus.params([corpus.find(s, kind, rid)])[0]
                m, _ = ev(f, [c], seed=s)
                rows[name].append({"seed": s, "class": c, **m})
            m, _ = ev(P_.flatten(p0), [c], seed=s)
            rows["original"].append({"seed": s, "class": c, **m})
            fs = data.resolve_forget(splits.train, data.ForgetRequest(classes=(c,)))
            res = unlearn("gradtau", arch, p0, fs, splits.val, seed=s, forget_classes=(c,))
            gt_times.append(res.info["wall_time_s"])
            m, _ = ev(P_.flatten(res.params), [c], seed=s)
            rows["gradtau"].append({"seed": s, "class": c, **m})
        print("seed", s, "done", flush=True)
    results["rows"] = rows

    def summary(rs):
        per_seed = {}
        for r in rs:
            per_seed.setdefault(r["seed"], []).append(r)
        return {k: [float(np.mean([r[k] for r in v])) for v in per_seed.values()]
                for k in ("retain_acc", "forget_acc", "test_acc", "test_acc_kept",
                          "mia_loss_lr", "forget_loss")} | {
            "max_forget_acc": float(max(r["forget_acc"] for r in rs)),
            "per_class_forget_acc": [float(np.mean([r["forget_acc"] for r in rs
                                                    if r["class"] == c])) for c in classes],
            "per_class_retain_gap": [float(np.mean(
                [r["retain_acc"] for r in rs if r["class"] == c])
                - np.mean([r["retain_acc"] for r in rows["retrain"] if r["class"] == c]))
                for c in classes]}

    results["summary"] = {k: summary(v) for k, v in rows.items()}

    # --- DiHyFo-1 (one fixed class) ----------------------------------------------------------
    c1 = a.dihyfo1_class
    d1 = []
    for s in test_seeds:
        p0 = starts[s]
        pr = H.make_prompt(net1, p0, splits.train, (c1,))
        keys = jax.random.split(jax.random.key(2000 + s), a.samples)
        many = H.sample_many(keys, net1, p0, H.stack_prompts([pr] * a.samples), a.ddim_steps)
        for f in np.asarray(jax.vmap(P_.flatten)(many)):
            m, _ = ev(f, [c1], seed=s)
            d1.append({"seed": s, "class": c1, **m})
    results["summary"]["dihyfo1"] = summary(d1)
    rows["dihyfo1"] = d1

    # --- prompt alignment (G.pt): 20 forget-loss prompts, achieved vs prompted ---------------
    lo, hi = net2.spec.forget_loss_range
    targets = np.linspace(lo, hi, 20).astype(np.float32)
    r2s, align = [], []
    for s in test_seeds:
        p0 = starts[s]
        for c in classes:
            base = H.make_prompt(net2, p0, splits.train, (c,))
            ps = H.stack_prompts([base._replace(forget_target=jnp.float32(t)) for t in targets])
            keys = jax.random.split(jax.random.key(3000 + 10 * s + c), len(targets))
            flats = np.asarray(jax.vmap(P_.flatten)(H.sample_many(keys, net2, p0, ps,
                                                                 a.ddim_steps)))
            got = np.array([ev(f, [c], mia=False)[0]["forget_loss"] for f in flats])
            r2s.append(1.0 - np.sum((got - targets) ** 2) / np.sum((targets - targets.mean())
                                                                     ** 2))
            align.append({"seed": s, "class": c, "achieved": got.tolist()})
    results["prompt_alignment"] = {"targets": targets.tolist(), "r2": [float(r) for r in r2s],
                                   "r2_mean": float(np.mean(r2s)), "r2_std": float(np.std(r2s, ddof=1)),
                                   "r2_median": float(np.median(r2s)), "curves": align}
    print("R2", results["prompt_alignment"]["r2_mean"], flush=True)

    # --- memorisation: nearest training checkpoint vs "training checkpoint + noise" ----------
    train_rows = np.flatnonzero(~corpus.is_test())
    bank = jnp.asarray(corpus.params(train_rows))
    bank_sq = jnp.sum(bank ** 2, 1)

    @jax.jit
    def nearest(x):
        d2 = jnp.sum(x ** 2, 1)[:, None] + bank_sq[None] - 2.0 * x @ bank.T
        i = jnp.argmin(d2, 1)
        return i, jnp.sqrt(jnp.maximum(jnp.take_along_axis(d2, i[:, None], 1)[:, 0], 0.0))

    def memo(flats, cls):
        idx, dist = nearest(jnp.asarray(np.stack(flats)))
        agree = []
        for f, i, c in zip(flats, np.asarray(idx), cls):
            _, p = ev(f, [c], mia=False)
            _, q = ev(np.asarray(bank[i]), [c], mia=False)
            agree.append(float(np.mean(p == q)))
        return np.asarray(dist), np.asarray(agree)

    s_cls = [m[1] for m in sampled_meta]
    s_dist, s_agree = memo(sampled_flat, s_cls)
    s_ra = float(np.mean([m[2] for m in sampled_meta]))
    # Noise baseline: the final ∇τ + repair checkpoint of a *training* run for the same class,
    # plus Gaussian noise; σ chosen (bisection) so that the mean RA equals the samples' RA.
    rng = np.random.default_rng(0)
    train_seeds = [s for s in ccfg.seeds if s not in test_seeds]
    src = [corpus.params([corpus.find(int(rng.choice(train_seeds)), "gradtau",
                                      corpus.requests.index((c,)))])[0] for c in s_cls]
    noise = rng.standard_normal((len(src), arch.param_count)).astype(np.float32)

    def noised(sig):
        return [f + sig * n for f, n in zip(src, noise)]

    def mean_ra(sig):
        return float(np.mean([ev(f, [c], mia=False)[0]["retain_acc"]
                              for f, c in zip(noised(sig), s_cls)]))

    lo_s, hi_s = 0.0, 0.5
    ra_src = mean_ra(0.0)
    if ra_src > s_ra:
        for _ in range(14):
            mid = 0.5 * (lo_s + hi_s)
            lo_s, hi_s = (mid, hi_s) if mean_ra(mid) > s_ra else (lo_s, mid)
    sig = 0.5 * (lo_s + hi_s) if ra_src > s_ra else 0.0
    n_dist, n_agree = memo(noised(sig), s_cls)
    own = [float(np.linalg.norm(f - P_.flatten(starts[m[0]]))) for f, m in
           zip(sampled_flat, sampled_meta)]
    results["memorisation"] = {
        "sample_nearest_l2": [float(s_dist.mean()), float(s_dist.std(ddof=1))],
        "sample_agreement": [float(s_agree.mean()), float(s_agree.std(ddof=1))],
        "sample_retain_acc": s_ra, "noise_sigma": sig, "noise_retain_acc": mean_ra(sig),
        "noise_nearest_l2": [float(n_dist.mean()), float(n_dist.std(ddof=1))],
        "noise_agreement": [float(n_agree.mean()), float(n_agree.std(ddof=1))],
        "sample_to_own_start_l2": [float(np.mean(own)), float(np.std(own, ddof=1))],
        "bank_size": int(len(train_rows))}
    print("memo", results["memorisation"], flush=True)

    # --- wall time: one DDIM sample vs Retrain vs ∇τ; 10 vmapped requests vs 1 ---------------
    s0, c0 = test_seeds[0], a.dihyfo1_class
    p0 = starts[s0]
    pr = H.make_prompt(net2, p0, splits.train, (c0,))
    t_one = timed(lambda: H.sample(jax.random.key(0), net2, p0, pr, a.ddim_steps), 5)
    prompts10 = H.stack_prompts([H.make_prompt(net2, p0, splits.train, (c,)) for c in classes])
    keys10 = jax.random.split(jax.random.key(0), 10)
    t_ten = timed(lambda: H.sample_many(keys10, net2, p0, prompts10, a.ddim_steps), 5)
    one1 = H.stack_prompts([pr])
    t_one_v = timed(lambda: H.sample_many(keys10[:1], net2, p0, one1, a.ddim_steps), 5)
    fs = data.resolve_forget(splits.train, data.ForgetRequest(classes=(c0,)))
    rcfg = ccfg.train_config
    t_rt = timed(lambda: train.fit(arch, fs.retain, rcfg)[0].params, 2)
    results["timing"] = {
        "sample_ddim_s": t_one, "sample_10_vmapped_s": t_ten, "sample_1_vmapped_s": t_one_v,
        "vmapped_10_over_1": t_ten / t_one_v, "retrain_s": t_rt,
        "gradtau_s_median": statistics.median(gt_times[len(classes):] or gt_times),
        "speedup_vs_retrain": t_rt / t_one,
        "speedup_vs_gradtau": statistics.median(gt_times[len(classes):] or gt_times) / t_one,
        "ddim_steps": a.ddim_steps, "devices": str(jax.devices()[0].platform)}
    print("timing", results["timing"], flush=True)
    results["total_seconds"] = time.perf_counter() - t_start
    report.write_json(out / "results.json", results)
    md = render(results, a)
    (out / "report.md").write_text(md)
    print(md)


def render(r, a) -> str:
    S = r["summary"]
    hdr = ["model", "RA %", "FA %", "TA %", "TA kept %", "mia_loss_lr", "forget loss"]

    def row(name, k):
        s = S[k]
        return [name, ms(s["retain_acc"], 100), ms(s["forget_acc"], 100), ms(s["test_acc"], 100),
                ms(s["test_acc_kept"], 100), ms(s["mia_loss_lr"], 1, 3),
                ms(s["forget_loss"], 1, 2)]

    m, t, pa = r["memorisation"], r["timing"], r["prompt_alignment"]
    lines = [
        "### DiHyFo-2: 10 single-class requests × held-out originals "
        f"(seeds {r['corpus']['test_seeds']}, {a.samples} samples each)\n",
        report.markdown_table(hdr, [row("Original", "original"), row("Retrain", "retrain"),
                                    row("∇τ (paper schedule, τ = log K)", "gradtau"),
                                    row("∇τ + repair (corpus)", "gradtau_repair"),
                                    row("DiHyFo-2 (sampled)", "dihyfo2")]),
        "\nMean ± std over held-out seeds (each the mean over 10 requests × samples). "
        f"Worst single sample FA: {100 * S['dihyfo2']['max_forget_acc']:.1f}%.\n",
        "Per class (DiHyFo-2): FA % / RA − Retrain's RA (points):\n",
        report.markdown_table([str(c) for c in range(10)], [
            [f"{100 * f:.1f} / {100 * g:+.1f}" for f, g in zip(
                S["dihyfo2"]["per_class_forget_acc"], S["dihyfo2"]["per_class_retain_gap"])]]),
        f"\n### DiHyFo-1 (class {a.dihyfo1_class} only)\n",
        report.markdown_table(hdr, [row(f"DiHyFo-1 (class {a.dihyfo1_class})", "dihyfo1")]),
        f"\n### Prompt alignment (forget loss, 20 prompts in [{pa['targets'][0]:.2f}, "
        f"{pa['targets'][-1]:.2f}])\n",
        f"R² = {ms(pa['r2'], 1, 3)} (median {pa['r2_median']:.3f}) over "
        f"{len(pa['r2'])} (held-out seed, class) pairs.\n",
        "### Memorisation\n",
        report.markdown_table(["models", "retain acc %", "L2 to nearest training checkpoint",
                               "prediction agreement with it"], [
            ["DiHyFo-2 samples", f"{100 * m['sample_retain_acc']:.2f}",
             f"{m['sample_nearest_l2'][0]:.2f} ± {m['sample_nearest_l2'][1]:.2f}",
             f"{100 * m['sample_agreement'][0]:.1f}%"],
            [f"training checkpoint + N(0, {m['noise_sigma']:.4f}²)",
             f"{100 * m['noise_retain_acc']:.2f}",
             f"{m['noise_nearest_l2'][0]:.2f} ± {m['noise_nearest_l2'][1]:.2f}",
             f"{100 * m['noise_agreement'][0]:.1f}%"]]),
        f"\nBank: {m['bank_size']} training-run checkpoints. L2 from each sample to its own "
        f"(held-out) start network: {m['sample_to_own_start_l2'][0]:.2f}.\n",
        "### Wall time (warm, median)\n",
        report.markdown_table(["", "seconds", "vs one DDIM sample"], [
            [f"DiHyFo-2, one sample (DDIM {t['ddim_steps']} steps)", f"{t['sample_ddim_s']:.4f}",
             "1×"],
            ["DiHyFo-2, 10 requests vmapped", f"{t['sample_10_vmapped_s']:.4f}",
             f"{t['sample_10_vmapped_s'] / t['sample_ddim_s']:.1f}×"],
            ["Retrain (20 epochs on D_r)", f"{t['retrain_s']:.3f}",
             f"{t['speedup_vs_retrain']:.0f}×"],
            ["∇τ (paper schedule)", f"{t['gradtau_s_median']:.3f}",
             f"{t['speedup_vs_gradtau']:.0f}×"]]),
        f"\nvmapped 10 requests / 1 request (both vmapped): {t['vmapped_10_over_1']:.2f}×.\n",
        f"Corpus: {r['corpus']['total_checkpoints']} checkpoints "
        f"built in {r['corpus']['total_build_seconds']:.0f} s "
        f"({r['corpus']['total_checkpoints_per_second']:.0f} checkpoints/s). Hypernetwork "
        f"training: DiHyFo-2 {r['train']['dihyfo2']['seconds']:.0f} s, DiHyFo-1 "
        f"{r['train']['dihyfo1']['seconds']:.0f} s. Whole script {r['total_seconds']:.0f} s.\n"]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
