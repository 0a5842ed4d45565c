"""HyperForget evaluation (issue 13; docs/hyperforget.md): the shipped DiHyFo-2 (and DiHyFo-1)
on original networks no corpus ever contained, beside Retrain of the same seed and recipe.

    PYTHONPATH=. python experiments/hyperforget_eval.py --out runs/hf_eval

Originals (``TEST_ORIGINALS``): three trained exactly as ``hyperforget train --arch gpt_mlp
--seed S`` (the CLI's default recipe: lr 1e-3, 20 epochs, batch 128, wd 1e-4) and three with
other recipes (``--lr``/``--epochs``), seeds 0–5 (the corpus's seeds start at 100,000; the
settings were chosen on other validation originals, seeds 900–905). For every original: 10
single-class requests and 12 two-class requests (6 of the corpus's pairs, 6 it never saw),
``--samples`` DDIM samples each, RA / FA / TA-kept / mia_loss_lr against Retrain of the same
seed, recipe and request (``train_fleet`` = ``hyperforget retrain`` up to float rounding); ∇τ
(``unlearn("gradtau")``, paper schedule) on the single-class requests for context. Then:
DiHyFo-1 (its shipped class); prompt alignment R²; DDIM steps 1/2/5/10/20/50; guidance and
best-of-k [beyond]; memorisation (nearest corpus checkpoint, against a noise baseline); one
sample against Retrain and ∇τ in wall time. Writes ``results.json`` and ``report.md`` (the
tables of README / docs/hyperforget.md, with ✓/✗ per target), at the end only (those of an
earlier run are removed at the start). ``--render-only`` re-renders.

A rerun starts over (no cells: 2.3 min on 2 idle cores, README). Another configuration into
the same ``--out`` is refused (exit 2; ``--restart`` replaces that run), as is a second run
while one writes it.
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
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hyperforget_jax import __version__, data, metrics, report, rundir, train  # noqa: E402
from hyperforget_jax.cli import ArgumentParser, ListInOne  # noqa: E402
from hyperforget_jax.commands.common import (check_same_data, path_arg,  # noqa: E402
                                             refuse_zero_epochs)
from hyperforget_jax import params as P_  # noqa: E402
from hyperforget_jax.config import expand_user  # noqa: E402
from hyperforget_jax.configflags import UNSET, add_config_flags, integer  # noqa: E402
from hyperforget_jax.errors import ConfigError  # noqa: E402
from hyperforget_jax.hyperforget import corpus as C  # noqa: E402
from hyperforget_jax.hyperforget import dihyfo as H  # noqa: E402
from hyperforget_jax.hyperforget.sampling import SampleConfig  # noqa: E402
from hyperforget_jax.unlearn import unlearn  # noqa: E402

# (group, seed, lr, epochs): `hyperforget train --arch gpt_mlp --seed S --lr LR --epochs E`.
TEST_ORIGINALS = [("default", 0, 1e-3, 20), ("default", 1, 1e-3, 20), ("default", 2, 1e-3, 20),
                  ("other", 3, 2e-3, 10), ("other", 4, 3e-3, 30), ("other", 5, 1.5e-3, 25)]
DDIM_STEPS = (1, 2, 5, 10, 20, 50)
BAR = {"fa_mean": 1.0, "fa_worst": 3.0, "ra": 1.5, "ta_kept": 1.5, "mia": 0.03, "r2": 0.9}
#: The role of this script's runs in ``run.json``, and the files it writes at its end.
ROLE = "experiment hyperforget_eval"
OUTPUTS = ("results.json", "report.md")
# The fields of results.json that --render-only's report reads.
RESULT_KEYS = ("rows", "bar", "command", "originals", "prompt_alignment", "hypernet",
               "ddim_steps", "guidance", "best_of_8", "memorisation", "timing")


def parse_originals(text: str) -> list[tuple[str, int, float, int]]:
    """``seed:lr:epochs,...`` -> TEST_ORIGINALS-style rows ("default" = hyperforget train's
    recipe, lr 1e-3 for 20 epochs)."""
    rows = []
    for item in text.split(","):
        try:
            s, lr, ep = item.split(":")
            row = (int(s), float(lr), int(ep))
        except ValueError:
            raise argparse.ArgumentTypeError(f"{item!r} is not SEED:LR:EPOCHS") from None
        if not 0 <= row[0] < 100_000 or row[1] <= 0 or row[2] < 1:
            raise argparse.ArgumentTypeError(f"{item!r}: needs 0 <= seed < 100000 (corpus "
                                             "seeds start there), lr > 0, epochs >= 1")
        if any(r[1] == row[0] for r in rows):
            # Originals, their Retrain runs and every table are keyed by seed: a second recipe
            # of one seed replaced the first's original but not its Retrain (silently mixed).
            raise argparse.ArgumentTypeError(f"{item!r}: seed {row[0]} is listed twice; give "
                                             "every original its own seed")
        rows.append(("default" if row[1:] == (1e-3, 20) else "other", *row))
    return rows


def unparse_originals(rows) -> str:
    """:func:`parse_originals`'s rows back as ``seed:lr:epochs,...``."""
    return ",".join(f"{s}:{lr:g}:{ep}" for _, s, lr, ep in rows)


def parse(argv=None):
    p = ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=path_arg, default="runs/hf_eval")
    p.add_argument("--hypernet", type=path_arg, default="pretrained",
                   help="DiHyFo-2 (file, dir, pretrained)")
    p.add_argument("--dihyfo1", default="pretrained:dihyfo1-c3-gpt_mlp-mnist5k",
                   help="DiHyFo-1 ('' to skip)")
    p.add_argument("--samples", type=integer, default=3, help="samples per (original, request)")
    p.add_argument("--pairs", type=integer, default=6, help="trained and unseen pairs, each")
    p.add_argument("--memo-seeds", type=integer, default=32,
                   help="corpus originals rebuilt for the memorisation check")
    p.add_argument("--quick", action="store_true", help="2 originals, 1 sample (smoke run)")
    p.add_argument("--originals", type=parse_originals, default=None, metavar="S:LR:E,...",
                   action=ListInOne, unparse=unparse_originals,
                   help="other held-out originals, e.g. 40:1e-3:20,41:2.5e-3:15 (seed, learning "
                        "rate, epochs); default: TEST_ORIGINALS")
    p.add_argument("--render-only", action="store_true",
                   help="re-render report.md from <out>/results.json")
    p.add_argument("--restart", action="store_true",
                   help="replace a run of this script with other settings in --out (by default "
                   "it is refused)")
    # The sampler of the main tables (--num-steps --method --guidance), from SampleConfig; the
    # sweeps below vary steps and guidance, and best-of-k has its own row.
    p.set_defaults(_sample_flags=add_config_flags(
        p, SampleConfig, title="sampler of the main tables", exclude=("best_of",),
        choices={"method": ("ddim", "ddpm")}))
    # --batch-size --weight-decay of every original and its Retrain runs, from TrainConfig (the
    # seed, learning rate and epochs are each original's own: TEST_ORIGINALS).
    p.set_defaults(_train_flags=add_config_flags(
        p, train.TrainConfig, title="recipe of the originals and Retrain",
        exclude=("arch", "seed", "lr", "epochs")))
    a = p.parse_args(argv)
    p.refuse_beside(a, "--render-only")     # it reads none of the run's settings
    try:
        if min(a.samples, a.pairs) < 1:
            raise ConfigError(f"--samples and --pairs must be >= 1, got {a.samples}, "
                              f"{a.pairs}")
        if a.memo_seeds < 2:   # the memorisation corpus (a CorpusConfig) holds some seeds out:
            # refused by it after ~7 minutes of the evaluation, with no report written
            raise ConfigError(f"--memo-seeds must be >= 2 (a corpus holds some seeds out of "
                              f"training), got {a.memo_seeds}")
        a.sampler = a._sample_flags.build(a)
        a.recipe = a._train_flags.build(a, arch="gpt_mlp")
        refuse_zero_epochs(a.recipe.epochs)     # (untrained originals, as on the CLI)
    except ConfigError as e:
        p.error(str(e))
    return a


# --- metrics ---------------------------------------------------------------------------------

class Evaluator:
    """RA / FA / TA / TA-kept / losses of many flat networks at once (jitted, vmapped), and
    mia_loss_lr per network (``evaluate_unlearning``'s definitions)."""

    def __init__(self, arch, splits):
        self.tr, self.te = splits.train, splits.test
        tmpl = arch.param_shapes()
        xs = [(jnp.asarray(d.x), jnp.asarray(d.y)) for d in (self.tr, self.te)]

        def one(flat):
            p = P_.unflatten(flat, tmpl)
            out = []
            for x, y in xs:
                lg = arch.apply(p, x)
                out += [optax.softmax_cross_entropy_with_integer_labels(lg, y),
                        jnp.argmax(lg, -1)]
            return out

        self._fn = jax.jit(jax.vmap(one))

    def outputs(self, flats, chunk=64):
        res = []
        for i in range(0, len(flats), chunk):
            res.append([np.asarray(a) for a in self._fn(jnp.asarray(flats[i:i + chunk]))])
        return [np.concatenate(parts) for parts in zip(*res)]

    def __call__(self, flats, requests, seed=0, mia=True):
        ltr, ptr, lte, pte = self.outputs(np.asarray(flats))
        out = []
        for i, cl in enumerate(requests):
            ftr, fte = np.isin(self.tr.y, cl), np.isin(self.te.y, cl)
            ctr, cte = ptr[i] == self.tr.y, pte[i] == self.te.y
            r = {"retain_acc": ctr[~ftr].mean(), "forget_acc": ctr[ftr].mean(),
                 "test_acc": cte.mean(), "test_acc_kept": cte[~fte].mean(),
                 "forget_loss": ltr[i][ftr].mean(), "retain_loss": ltr[i][~ftr].mean()}
            if mia:
                r["mia_loss_lr"] = metrics.mia_loss_lr(ltr[i][ftr], lte[i][fte], seed=seed)
            out.append({k: float(v) for k, v in r.items()})
        return out, ptr


def timed(fn, repeat=5):
    jax.block_until_ready(fn())
    ts = []
    for _ in range(repeat):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


# --- the run ---------------------------------------------------------------------------------

def pick_pairs(spec, n, num_classes=10):
    """n pairs the hypernetwork was trained on and n it never saw (fixed random draw)."""
    trained = sorted(r for r in spec.trained_requests if len(r) == 2)
    unseen = [(a, b) for a in range(num_classes) for b in range(a + 1, num_classes)
              if (a, b) not in trained]
    rng = np.random.default_rng(13)
    take = lambda v: sorted(tuple(v[i]) for i in rng.choice(len(v), min(n, len(v)),
                                                           replace=False))
    return take(trained), take(unseen)


def identity(a, splits, net) -> dict:
    """Everything that determines the numbers: another run into the same ``--out`` is refused
    (``rundir.open_sweep``)."""
    flags = {k: v for k, v in vars(a).items() if not k.startswith("_") and v is not UNSET
             and k not in ("out", "render_only", "restart", "sampler", "recipe")}
    return {"role": ROLE, "version": __version__, "data": rundir.data_fingerprint(splits),
            "args": flags, "sampler": a.sampler.to_json(), "recipe": a.recipe.to_json(),
            "hypernet": rundir.array_fingerprint(*jax.tree.leaves(net.params)),
            "backend": jax.default_backend()}


def main(argv=None):
    a = parse(argv)
    if a.render_only:       # read before prepare_dir creates --out (an empty folder was left)
        out = expand_user(a.out).absolute()
        rundir.check_readable(out)
        r = report.read_results(out, "hyperforget_eval.py", RESULT_KEYS)
    out = report.prepare_dir(a.out, flag="--out", not_a_run=ROLE)
    if a.render_only:
        md = render(r)
        report.atomic_write(out / "report.md", md)
        print(md)
        return
    t_start = time.perf_counter()
    splits = data.make_splits(data.load_mnist5k(), seed=0)
    net, meta2 = H.load_hypernet(a.hypernet)
    # This script evaluates on MNIST-5k, split seed 0: a network of another dataset is refused.
    for path, meta in ((a.hypernet, meta2),
                       *(((a.dihyfo1, H.load_hypernet(a.dihyfo1)[1]),) if a.dihyfo1 else ())):
        check_same_data(meta, argparse.Namespace(dataset="mnist5k", split_seed=0), splits,
                        path, "hypernetwork")
    # The lock and the configuration check; the report files appear at the end only.
    with rundir.open_sweep(out, identity(a, splits, net), outputs=OUTPUTS, restart=a.restart,
                           command="hyperforget_eval"):
        evaluate(a, argv, out, t_start, splits, net, meta2)


def originals(a) -> list[tuple[str, int, float, int]]:
    """The (group, seed, lr, epochs) originals this run trains: ``--originals`` or
    :data:`TEST_ORIGINALS` (two under ``--quick``). Another ``--batch-size`` or
    ``--weight-decay`` than the CLI's trains every one of them off its default recipe: they
    were still titled "`hyperforget train` default recipe"."""
    origs = a.originals or TEST_ORIGINALS
    origs = origs[:2] if a.quick else origs
    base = train.TrainConfig()
    if (a.recipe.batch_size, a.recipe.weight_decay) != (base.batch_size, base.weight_decay):
        origs = [("other", *o[1:]) for o in origs]
    return list(origs)


def evaluate(a, argv, out, t_start, splits, net, meta2):
    """Every table of the report, written to ``out`` at the end."""
    arch, tmpl = net.spec.arch, net.spec.arch.param_shapes()
    origs = originals(a)
    samples = 1 if a.quick else a.samples
    singles = [(c,) for c in range(arch.num_classes)]
    pairs_in, pairs_out = pick_pairs(net.spec, a.pairs)
    requests = singles + pairs_in + pairs_out
    kind = {r: ("single" if len(r) == 1 else "pair (in corpus)" if r in pairs_in
                else "pair (unseen)") for r in requests}
    ev = Evaluator(arch, splits)
    samp = {k: getattr(a.sampler, k) for k in ("num_steps", "method", "guidance")}
    x, y = jnp.asarray(splits.train.x), jnp.asarray(splits.train.y)
    results = {"command": "PYTHONPATH=. python experiments/hyperforget_eval.py "
                          + shlex.join(argv if argv is not None else sys.argv[1:]),
               "args": {k: v for k, v in vars(a).items() if not k.startswith("_")
                        and k not in ("sampler", "recipe") and v is not UNSET},
               # DDPM runs every one of the T steps, whatever --num-steps says
               "sampler": {**a.sampler.to_json(), **({"num_steps": net.spec.num_train_steps}
                                                     if a.sampler.method == "ddpm" else {})},
               "recipe": {k: getattr(a.recipe, k) for k in ("batch_size", "weight_decay")},
               "hypernet": net.spec.to_json(),
               "hypernet_history": {k: meta2.get("history", {}).get(k) for k in
                                    ("seconds", "steps_per_second", "train_config")},
               "originals": [list(o) for o in origs], "pairs_in": pairs_in,
               "pairs_out": pairs_out, "bar": BAR}
    results["args"]["samples"] = samples              # --quick runs 1, whatever --samples says

    # Originals the ordinary way (train.fit = `hyperforget train`); Retrain as one fleet per
    # original (a fleet runs its longest member's epochs, so one fleet per recipe).
    t0 = time.perf_counter()
    starts = {}
    recipe = lambda s, lr, ep: dataclasses.replace(a.recipe, arch=arch.name, seed=s, lr=lr,
                                                   epochs=ep)
    for g, s, lr, ep in origs:
        st, _ = train.fit(arch, splits.train, recipe(s, lr, ep))
        starts[s] = P_.flatten(st.params)
    members = [(o, r) for o in origs for r in requests]
    retain = {r: np.flatnonzero(~np.isin(splits.train.y, r)) for r in requests}
    retr = np.concatenate([C.train_fleet(arch, x, y, [s] * len(requests),
                                         [(lr, ep)] * len(requests),
                                         [retain[r] for r in requests], a.recipe.batch_size,
                                         a.recipe.weight_decay)
                           for g, s, lr, ep in origs])
    results["originals_retrain_seconds"] = time.perf_counter() - t0
    print(f"originals + {len(members)} Retrain runs: "
          f"{results['originals_retrain_seconds']:.0f} s", flush=True)

    rows = []           # one per (original, request, model, sample)
    for (g, s, lr, ep) in origs:
        p0 = P_.unflatten(starts[s], tmpl)
        o_ev, _ = ev(np.repeat(np.asarray(starts[s])[None], len(requests), 0), requests, s)
        r_ev, _ = ev(retr[[i for i, (o, _) in enumerate(members) if o[1] == s]], requests, s)
        prompts = [H.make_prompt(net, p0, splits.train, r) for r in requests]
        stacked = H.stack_prompts([p for p in prompts for _ in range(samples)])
        keys = jax.random.split(jax.random.key(1000 + s), len(requests) * samples)
        flats = np.asarray(jax.vmap(P_.flatten)(H.sample_many(keys, net, p0, stacked,
                                                             **samp)))
        s_ev, _ = ev(flats, [r for r in requests for _ in range(samples)], s)
        for i, r in enumerate(requests):
            base = {"group": g, "seed": s, "request": list(r), "kind": kind[r]}
            rows.append({**base, "model": "original", **o_ev[i]})
            rows.append({**base, "model": "retrain", **r_ev[i]})
            for j in range(samples):
                rows.append({**base, "model": "dihyfo2", "sample": j,
                             **s_ev[i * samples + j]})
        for r in singles:
            fs = data.resolve_forget(splits.train, data.ForgetRequest(classes=r))
            res = unlearn("gradtau", arch, p0, fs, splits.val, seed=s, forget_classes=r)
            m, _ = ev(P_.flatten(res.params)[None], [r], s)
            rows.append({"group": g, "seed": s, "request": list(r), "kind": "single",
                         "model": "gradtau", "seconds": res.info["wall_time_s"], **m[0]})
        print(f"original seed {s} ({g}) done", flush=True)
    results["rows"] = rows

    # DiHyFo-1 (its class), same originals.
    if a.dihyfo1:
        net1, _ = H.load_hypernet(a.dihyfo1)        # its data checked before the run began
        c1 = (net1.spec.forget_class,)
        for g, s, *_ in origs:
            p0 = P_.unflatten(starts[s], tmpl)
            pr = H.make_prompt(net1, p0, splits.train, c1)
            keys = jax.random.split(jax.random.key(2000 + s), samples)
            flats = np.asarray(jax.vmap(P_.flatten)(H.sample_many(
                keys, net1, p0, H.stack_prompts([pr] * samples), **samp)))
            m, _ = ev(flats, [c1] * samples, s)
            rows += [{"group": g, "seed": s, "request": list(c1), "kind": "single",
                      "model": "dihyfo1", "sample": j, **m[j]} for j in range(samples)]

    # Prompt alignment: 20 forget-loss prompts from the start's own loss up to the corpus's
    # 95th percentile, one sample each, R² of achieved against prompted per (original, class).
    lo, hi = net.spec.forget_loss_range
    align = []
    for g, s, *_ in origs:
        p0 = P_.unflatten(starts[s], tmpl)
        for c in range(arch.num_classes):
            base = H.make_prompt(net, p0, splits.train, (c,))
            tg = np.linspace(max(lo, float(base.forget_start)), hi, 20).astype(np.float32)
            ps = H.stack_prompts([base._replace(forget_target=jnp.float32(t)) for t in tg])
            keys = jax.random.split(jax.random.key(3000 + 10 * s + c), len(tg))
            flats = np.asarray(jax.vmap(P_.flatten)(H.sample_many(keys, net, p0, ps,
                                                                 **samp)))
            got = np.array([m["forget_loss"] for m in ev(flats, [(c,)] * 20, mia=False)[0]])
            r2 = 1.0 - np.sum((got - tg) ** 2) / np.sum((tg - tg.mean()) ** 2)
            align.append({"seed": s, "class": c, "r2": float(r2), "targets": tg.tolist(),
                          "achieved": got.tolist()})
    results["prompt_alignment"] = align
    print("R2 mean", np.mean([v["r2"] for v in align]), flush=True)

    # DDIM steps, guidance and best-of-k [beyond] on the single-class requests (1 sample).
    results.update(sampler_sweeps(net, splits, ev, starts, origs, singles, a.sampler, tmpl))
    results["best_of_8"] = best_of_rows(net, splits, ev, starts, origs, singles, a.sampler,
                                        tmpl)
    print("sweeps done", flush=True)

    results["memorisation"] = memorisation(net, meta2, splits, ev, starts, origs, requests,
                                           a, tmpl)
    results["timing"] = timing(net, arch, splits, starts, origs, a)
    results["total_seconds"] = time.perf_counter() - t_start
    report.write_json(out / "results.json", results)
    md = render(results)
    report.atomic_write(out / "report.md", md)
    print(md)


def sampler_sweeps(net, splits, ev, starts, origs, singles, sampler, tmpl) -> dict:
    """The DDIM-steps and guidance rows on the single-class requests, one sample each. Each
    row changes one knob of the main tables' ``sampler`` and keeps the others: the DDIM-steps
    rows its guidance, the guidance rows its method and steps (the DDIM-steps rows ran
    unguided and the guidance rows DDIM whatever ``--guidance`` / ``--method`` said: under
    ``--method ddpm`` "guidance 0.0" was not the sampler of the tables above it; with the
    defaults the rows are the same as before)."""
    def single_sweep(**kw):
        out_rows = []
        for g, s, *_ in origs:
            p0 = P_.unflatten(starts[s], tmpl)
            prompts = H.stack_prompts([H.make_prompt(net, p0, splits.train, r)
                                       for r in singles])
            keys = jax.random.split(jax.random.key(4000 + s), len(singles))
            flats = np.asarray(jax.vmap(P_.flatten)(H.sample_many(keys, net, p0, prompts,
                                                                 **kw)))
            m, _ = ev(flats, singles, s)
            out_rows += [{"seed": s, "request": list(r), **v} for r, v in zip(singles, m)]
        return out_rows

    return {"ddim_steps": {n: single_sweep(num_steps=n, method="ddim",
                                           guidance=sampler.guidance) for n in DDIM_STEPS},
            "guidance": {w: single_sweep(num_steps=sampler.num_steps, method=sampler.method,
                                         guidance=w) for w in (0.0, 0.5, 1.0, 2.0)}}


def best_of_rows(net, splits, ev, starts, origs, singles, sampler, tmpl, k=8):
    """Best-of-k [beyond] on the single-class requests, with the main tables' sampler (its
    steps, method and guidance: the row compares selection, not another sampler)."""
    best = []
    for g, s, *_ in origs:
        p0 = P_.unflatten(starts[s], tmpl)
        for r in singles:
            pr = H.make_prompt(net, p0, splits.train, r)
            q, _ = H.sample_best_of(jax.random.key(5000 + s), net, p0, pr, splits.train, k,
                                    sampler.num_steps, sampler.guidance, sampler.method)
            m, _ = ev(P_.flatten(q)[None], [r], s)
            best.append({"seed": s, "request": list(r), **m[0]})
    return best


def memo_samples(net, splits, starts, origs, singles, sampler, tmpl):
    """One sample per (original, single-class request) for the memorisation check, with the
    main tables' sampler. Returns (flat samples, their requests)."""
    samp = {k: getattr(sampler, k) for k in ("num_steps", "method", "guidance")}
    flats, cls = [], []
    for g, s, *_ in origs:
        p0 = P_.unflatten(starts[s], tmpl)
        for r in singles:
            pr = H.make_prompt(net, p0, splits.train, r)
            flats.append(np.asarray(P_.flatten(H.sample(jax.random.key(6000 + s), net, p0, pr,
                                                        **samp))))
            cls.append(r)
    return flats, cls


def memorisation(net, meta, splits, ev, starts, origs, requests, a, tmpl):
    """Nearest training checkpoint of the corpus's first ``--memo-seeds`` originals (rebuilt
    with the corpus config recorded in the hypernetwork, identical to the training corpus's
    first shard): L2 over the changed tensors and prediction agreement, for the samples and
    for "training checkpoint + noise" at equal retain accuracy."""
    cfg_json = meta.get("corpus_config")
    if not cfg_json or a.memo_seeds < 1:
        return {"skipped": "the hypernetwork file records no corpus config" if not cfg_json
                else "--memo-seeds 0"}
    ccfg = C.CorpusConfig(**{**{k: tuple(v) if isinstance(v, list) else v
                                for k, v in cfg_json.items()},
                             "num_seeds": a.memo_seeds, "fleet_size": a.memo_seeds})
    arch = net.spec.arch
    arrays = C.build_shard(arch, ccfg, splits, ccfg.seeds)
    reqs = ccfg.requests(arch.num_classes)
    idx = C.span_index(arch, C.trained_span(arch, ccfg.unlearn_layers))
    bank = np.concatenate([arrays["trajectory"], arrays["originals"][:, idx]])
    # Sample changes of the single-class requests, 1 per (original, request).
    flats, cls = memo_samples(net, splits, starts, origs, requests[:arch.num_classes],
                              a.sampler, tmpl)
    m, pred = ev(np.stack(flats), cls, mia=False)
    s_ra = float(np.mean([v["retain_acc"] for v in m]))

    def nearest(vals):
        d2 = (np.sum(vals ** 2, 1)[:, None] + np.sum(bank ** 2, 1)[None]
              - 2.0 * vals @ bank.T)
        i = np.argmin(d2, 1)
        return i, np.sqrt(np.maximum(d2[np.arange(len(vals)), i], 0.0))

    def agreement(full, pred_full):
        i, dist = nearest(full[:, idx])
        # The nearest checkpoint, as a network: its own original with its head.
        row_orig = np.r_[arrays["rows"][:, 0], np.arange(len(arrays["originals"]))]
        near = arrays["originals"][row_orig[i]].copy()
        near[:, idx] = bank[i]
        _, pn = ev(near, cls, mia=False)
        return dist, np.mean(pred_full == pn, 1)

    s_dist, s_agree = agreement(np.stack(flats), pred)
    # Noise baseline: the endpoint of a corpus trajectory for the same request (its own
    # original), plus noise on the changed tensors, σ bisected to the samples' retain accuracy.
    rng = np.random.default_rng(0)
    ends = {}
    for k, (o, r, st) in enumerate(arrays["rows"]):
        if st == arrays["rows"][:, 2].max():
            ends.setdefault(reqs[r], []).append(k)
    src = []
    for r in cls:
        k = int(rng.choice(ends[tuple(r)]))
        f = arrays["originals"][arrays["rows"][k, 0]].copy()
        f[idx] = arrays["trajectory"][k]
        src.append(f)
    src = np.stack(src)
    noise = rng.standard_normal((len(src), len(idx))).astype(np.float32)

    def noised(sig):
        out = src.copy()
        out[:, idx] += sig * noise
        return out

    mean_ra = lambda sig: float(np.mean([v["retain_acc"] for v in ev(noised(sig), cls,
                                                                       mia=False)[0]]))
    lo_s, hi_s = 0.0, 2.0
    if mean_ra(0.0) > s_ra:
        for _ in range(14):
            mid = 0.5 * (lo_s + hi_s)
            lo_s, hi_s = (mid, hi_s) if mean_ra(mid) > s_ra else (lo_s, mid)
    sig = 0.5 * (lo_s + hi_s) if mean_ra(0.0) > s_ra else 0.0
    nz = noised(sig)
    _, npred = ev(nz, cls, mia=False)
    n_dist, n_agree = agreement(nz, npred)
    return {"bank": int(len(bank)), "sample_retain_acc": s_ra, "noise_sigma": sig,
            "noise_retain_acc": mean_ra(sig),
            "sample_nearest_l2": [float(s_dist.mean()), float(s_dist.std(ddof=1))],
            "sample_agreement": [float(s_agree.mean()), float(s_agree.std(ddof=1))],
            "noise_nearest_l2": [float(n_dist.mean()), float(n_dist.std(ddof=1))],
            "noise_agreement": [float(n_agree.mean()), float(n_agree.std(ddof=1))]}


def timing(net, arch, splits, starts, origs, a):
    """Warm wall time, same request (first original, class 3): one DDIM sample (20 and 1
    steps), 10 requests vmapped, Retrain (train.fit on D_r, the original's recipe), ∇τ."""
    g, s, lr, ep = origs[0]
    tmpl = arch.param_shapes()
    p0 = P_.unflatten(starts[s], tmpl)
    pr = H.make_prompt(net, p0, splits.train, (3,))
    fs = data.resolve_forget(splits.train, data.ForgetRequest(classes=(3,)))
    samp = {k: getattr(a.sampler, k) for k in ("num_steps", "method", "guidance")}
    out = {"sample_s": timed(lambda: H.sample(jax.random.key(0), net, p0, pr, **samp)),
           "sample_1step_s": timed(lambda: H.sample(jax.random.key(0), net, p0, pr, 1))}
    ps = H.stack_prompts([H.make_prompt(net, p0, splits.train, (c,)) for c in range(10)])
    keys = jax.random.split(jax.random.key(0), 10)
    out["sample_10_s"] = timed(lambda: H.sample_many(keys, net, p0, ps, **samp))
    cfg = dataclasses.replace(a.recipe, arch=arch.name, seed=s, lr=lr, epochs=ep)
    out["retrain_s"] = timed(lambda: train.fit(arch, fs.retain, cfg)[0].params, 3)
    out["gradtau_s"] = timed(lambda: unlearn("gradtau", arch, p0, fs, splits.val, seed=s,
                                             forget_classes=(3,)).params, 3)
    out["ddim_steps"] = a.sampler.num_steps
    out["method"] = a.sampler.method
    return out


# --- rendering -------------------------------------------------------------------------------

def _per_seed(rows, key):
    by = {}
    for r in rows:
        by.setdefault(r["seed"], []).append(r[key])
    return [float(np.mean(v)) for v in by.values()]


def _delta(rows, ref_rows, key):
    ref = {(r["seed"], tuple(r["request"])): r[key] for r in ref_rows}
    return [r[key] - ref[(r["seed"], tuple(r["request"]))] for r in rows]


def render(r: dict) -> str:
    rows, bar = r["rows"], r["bar"]
    ms = metrics.format_mean_std
    sel = lambda model, **kw: [x for x in rows if x["model"] == model
                               and all(x.get(k) == v for k, v in kw.items())]
    hdr = ["model", "RA %", "FA %", "TA kept %", "mia_loss_lr", "forget loss", "ΔRA vs Retrain",
           "ΔTA kept", "Δmia"]

    def row(name, rs, ref):
        d = lambda k, sc: ms([float(np.mean([v for v, x in zip(_delta(rs, ref, k), rs)
                                             if x["seed"] == s])) for s in
                              dict.fromkeys(x["seed"] for x in rs)], sc, 2 if sc > 1 else 3)
        return [name, ms(_per_seed(rs, "retain_acc"), 100), ms(_per_seed(rs, "forget_acc"), 100),
                ms(_per_seed(rs, "test_acc_kept"), 100), ms(_per_seed(rs, "mia_loss_lr"), 1, 3),
                ms(_per_seed(rs, "forget_loss"), 1, 2),
                d("retain_acc", 100) if rs is not ref else "–",
                d("test_acc_kept", 100) if rs is not ref else "–",
                d("mia_loss_lr", 1) if rs is not ref else "–"]

    lines = ["# HyperForget: the shipped hypernetworks on held-out originals\n",
             f"Command: `{r['command']}`. Originals (group, seed, lr, epochs): "
             f"{r['originals']}; none is in the corpus (its seeds start at 100,000). "
             "Mean ± std over the originals (each the mean over its requests and samples); "
             "Δ = sample − Retrain of the same original and request.\n"]
    checks = []
    for kind in ("single", "pair (in corpus)", "pair (unseen)"):
        for group in ("default", "other", None):
            kw = {"kind": kind} | ({"group": group} if group else {})
            ref = sel("retrain", **kw)
            if not ref:
                continue
            table = [row("Original", sel("original", **kw), ref), row("Retrain", ref, ref)]
            if kind == "single":
                table.append(row("∇τ (paper schedule)", sel("gradtau", **kw), ref))
                if sel("dihyfo1", **kw):
                    c1 = sel("dihyfo1", **kw)[0]["request"]
                    ref1 = [x for x in ref if x["request"] == c1]
                    table.append(row(f"DiHyFo-1 sample (class {c1[0]})",
                                     sel("dihyfo1", **kw), ref1))
            table.append(row("**DiHyFo-2 sample**", sel("dihyfo2", **kw), ref))
            title = {None: "all originals", "default": "`hyperforget train` default recipe",
                     "other": "other recipes"}[group]
            lines += [f"\n### {kind} requests, {title}\n", report.markdown_table(hdr, table)]
            if group is not None:
                # The bar per recipe group too (the user path: the default recipe).
                checks += [c for c in _checks(f"DiHyFo-2, {kind}, {title}",
                                              sel("dihyfo2", **kw), ref, bar)
                           if "RA within" in c[0] or "FA mean" in c[0]]
            if group is None:
                checks += _checks(f"DiHyFo-2, {kind}", sel("dihyfo2", **kw), ref, bar)
                if kind == "single" and sel("dihyfo1", **kw):
                    c1 = sel("dihyfo1", **kw)[0]["request"]
                    checks += _checks(f"DiHyFo-1 (class {c1[0]})", sel("dihyfo1", **kw),
                                      [x for x in ref if x["request"] == c1], bar)
    r2 = [v["r2"] for v in r["prompt_alignment"]]
    lo, hi = r["hypernet"]["forget_loss_range"]
    checks.append(["prompt alignment R² (mean / median)", f"{np.mean(r2):.3f} / "
                   f"{np.median(r2):.3f} (≥ {bar['r2']})",
                   "✓" if min(np.mean(r2), np.median(r2)) >= bar["r2"] else "✗"])
    lines += ["\n### Targets\n", report.markdown_table(["target", "result", ""], checks)]
    # Per-class gaps (single-class requests).
    s2, rr = sel("dihyfo2", kind="single"), sel("retrain", kind="single")
    cells = []
    for c in range(10):
        rs = [x for x in s2 if x["request"] == [c]]
        d = np.mean(_delta(rs, rr, "retain_acc")) * 100
        cells.append(f"{100 * np.mean([x['forget_acc'] for x in rs]):.1f} / {d:+.1f}")
    lines += ["\nPer class (DiHyFo-2, single-class requests): FA % / ΔRA points\n",
              report.markdown_table([str(c) for c in range(10)], [cells])]
    lines += [f"\n### Prompt alignment\n\n20 forget-loss prompts per (original, class), evenly "
              f"spaced from the original's own forget loss to {hi:.2f} (the corpus's 95th "
              f"percentile; its 5th is {lo:.2f}), one sample each: R² = {ms(r2, 1, 3)} "
              f"(median {np.median(r2):.3f}, min {np.min(r2):.3f}) over {len(r2)} pairs.\n"]
    # DDIM steps and guidance.
    sweep = []
    for name, d in [(f"DDIM {n}", r["ddim_steps"][str(n)] if str(n) in r["ddim_steps"]
                     else r["ddim_steps"][n]) for n in DDIM_STEPS] + [
            (f"guidance {w}", v) for w, v in r["guidance"].items()] + [
            ("best of 8 [beyond]", r["best_of_8"])]:
        dra = 100 * np.mean(_delta(d, rr, "retain_acc"))
        fa = [100 * x["forget_acc"] for x in d]
        dmia = np.mean(_delta(d, rr, "mia_loss_lr"))
        ok = np.mean(fa) <= bar["fa_mean"] and max(fa) <= bar["fa_worst"] and abs(dra) <= bar["ra"]
        sweep.append([name, f"{dra:+.2f}", f"{np.mean(fa):.2f}", f"{max(fa):.2f}",
                      f"{dmia:+.3f}", "✓" if ok else "✗", "✓" if abs(dmia) <= bar["mia"] else "✗"])
    lines += ["\n### Sampling settings (single-class requests, one sample each)\n",
              report.markdown_table(["sampler", "ΔRA", "FA % mean", "FA % worst", "Δmia",
                                     "FA + RA bar", "mia bar"], sweep)]
    lines += _memo_lines(r["memorisation"])
    t = r["timing"]
    lines += ["\n### Wall time (warm, median; same request)\n", report.markdown_table(
        ["", "seconds", "vs one sample"],
        [[f"DiHyFo-2, one sample (DDIM {t['ddim_steps']})", f"{t['sample_s']:.4f}", "1×"],
         ["DiHyFo-2, one sample (DDIM 1)", f"{t['sample_1step_s']:.4f}",
          f"{t['sample_1step_s'] / t['sample_s']:.2f}×"],
         ["DiHyFo-2, 10 requests vmapped", f"{t['sample_10_s']:.4f}",
          f"{t['sample_10_s'] / t['sample_s']:.1f}×"],
         ["Retrain (the original's recipe on D_r)", f"{t['retrain_s']:.3f}",
          f"{t['retrain_s'] / t['sample_s']:.0f}×"],
         ["∇τ (paper schedule)", f"{t['gradtau_s']:.3f}",
          f"{t['gradtau_s'] / t['sample_s']:.0f}×"]]),
        f"\nWhole script {r.get('total_seconds', 0):.0f} s.\n"]
    return "\n".join(lines)


def _memo_lines(m: dict) -> list[str]:
    if "skipped" in m:
        return [f"\n### Memorisation\n\nSkipped: {m['skipped']}.\n"]
    l2 = lambda v: f"{v[0]:.2f} ± {v[1]:.2f}"
    return ["\n### Memorisation\n", report.markdown_table(
        ["models", "RA %", "L2 to nearest corpus checkpoint (changed tensors)",
         "prediction agreement with it"],
        [["DiHyFo-2 samples", f"{100 * m['sample_retain_acc']:.2f}", l2(m["sample_nearest_l2"]),
          f"{100 * m['sample_agreement'][0]:.1f}%"],
         [f"corpus endpoint + N(0, {m['noise_sigma']:.4f}²)",
          f"{100 * m['noise_retain_acc']:.2f}", l2(m["noise_nearest_l2"]),
          f"{100 * m['noise_agreement'][0]:.1f}%"]]),
        f"\nBank: {m['bank']} checkpoints of the corpus's first originals (the request's own "
        "original is never among them: samples start from held-out networks). L2: mean ± std "
        "over the models (one per original and single-class request), not over seeds.\n"]


def _checks(name, rs, ref, bar):
    fa = [x["forget_acc"] * 100 for x in rs]
    dra = np.mean(_delta(rs, ref, "retain_acc")) * 100
    dta = np.mean(_delta(rs, ref, "test_acc_kept")) * 100
    dmia = np.mean(_delta(rs, ref, "mia_loss_lr"))
    ok = lambda b: "✓" if b else "✗"
    return [[f"{name}: FA mean ≤ {bar['fa_mean']}%, worst sample ≤ {bar['fa_worst']}%",
             f"{np.mean(fa):.2f}% / {max(fa):.2f}%",
             ok(np.mean(fa) <= bar["fa_mean"] and max(fa) <= bar["fa_worst"])],
            [f"{name}: RA within {bar['ra']} of Retrain", f"{dra:+.2f} points",
             ok(abs(dra) <= bar["ra"])],
            [f"{name}: TA kept within {bar['ta_kept']} of Retrain", f"{dta:+.2f} points",
             ok(abs(dta) <= bar["ta_kept"])],
            [f"{name}: mia_loss_lr within {bar['mia']} of Retrain", f"{dmia:+.3f}",
             ok(abs(dmia) <= bar["mia"])]]


if __name__ == "__main__":
    report.exit_on_error("hyperforget_eval", main, resumes=False)
