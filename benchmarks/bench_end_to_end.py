"""End-to-end cost of every unlearning method: wall time, compile vs run, recompilations.

One class-removal request (class 3) on MNIST-5k with the chosen classifier (default ``mlp``);
every method through ``hyperforget_jax.unlearn.unlearn`` with its default (published) config,
plus a HyperForget request on ``gpt_mlp`` (its prompt, then one sample of the pretrained
DiHyFo-2, DDIM 20 steps; ``sample alone s``: the sample's share).

Each method is called twice on the same inputs: the first call pays tracing + XLA compilation,
the second finds every compiled function in the caches, so ``compile ≈ first − second`` and the
second call's time is the run time. XLA backend compilations are counted in each call
(``jax.monitoring`` events): the second call must compile nothing (0 recompilations).

HyperForget sampling is timed with the pretrained DiHyFo-2 shipped with the package.
GAN: item unlearning of 64 training images (``gan.unlearn.unlearn_gan``, default recipe) against
GAN Retrain (``gan.train.train_gan`` on the other images); speed-ups of the GAN rows are against
GAN Retrain.

Run (≈3-5 min on 2 cores)::

    PYTHONPATH=. python benchmarks/bench_end_to_end.py
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import jax  # noqa: E402

from benchmarks import common  # noqa: E402
from hyperforget_jax import data, train  # noqa: E402
from hyperforget_jax.cli import ArgumentParser, ListInOne  # noqa: E402
from hyperforget_jax.configflags import UNSET, add_config_flags, integer  # noqa: E402
from hyperforget_jax.models import as_model  # noqa: E402

ALL_METHODS = ("retrain,gradtau,finetune,neggrad,neggrad_plus,random_labels,scrub,salun,"
               "bad_teacher,hyperforget_sample")
COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
# Tracing and lowering to MLIR: a first call pays them besides XLA's compile.
TRACE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration",
                "/jax/core/compile/jaxpr_to_mlir_module_duration")


class CompileCounter:
    """Counts XLA backend compilations and their seconds while active."""

    def __enter__(self):
        self.n, self.secs, self.trace_secs = 0, 0.0, 0.0

        def listener(event, duration, **kwargs):
            if event == COMPILE_EVENT:
                self.n += 1
                self.secs += duration
            elif event in TRACE_EVENTS:
                self.trace_secs += duration

        self._l = listener
        jax.monitoring.register_event_duration_secs_listener(listener)
        return self

    def __exit__(self, *exc):
        jax.monitoring.unregister_event_duration_listener(self._l)


def twice(fn):
    """Runs ``fn`` (which blocks on its result) twice; times and compile counts of each."""
    out = {}
    for call in ("first", "second"):
        with CompileCounter() as c:
            t0 = time.perf_counter()
            fn()
            out[call] = time.perf_counter() - t0
        out[f"{call}_compiles"], out[f"{call}_compile_s"] = c.n, c.secs
    return out


def hyperforget_sampler(splits, classes=(3,), seed=0):
    """A DiHyFo-2 closure on ``gpt_mlp`` with the pretrained hypernetwork: what a request costs,
    the prompt (``make_prompt``: the start network's losses over the training set, per
    request) and one DDIM sample, as the other rows' ``unlearn`` calls include their own
    per-request work (τ, the data checks). ``run.sample_s`` keeps the last sample's seconds
    alone (what the row measured until 2026-12-06)."""
    from hyperforget_jax.hyperforget import dihyfo

    net, params = common.pretrained_dihyfo2(splits, seed)

    def run():
        prompt = dihyfo.make_prompt(net, params, splits.train, classes)
        t0 = time.perf_counter()
        jax.block_until_ready(dihyfo.sample(jax.random.key(1), net, params, prompt))
        run.sample_s = time.perf_counter() - t0

    return run


def gpt_mlp_retrain_s(splits, split) -> float:
    """Warm run time of Retrain of ``gpt_mlp`` (the network HyperForget samples), with the recipe
    its original is trained with (``TrainConfig(arch="gpt_mlp")``, as
    :func:`common.pretrained_dihyfo2`): the reference of the HyperForget row's speed-up, so that
    it compares two ways of producing the same network rather than a ``gpt_mlp`` sample with a
    retrained ``mlp``."""
    from hyperforget_jax.unlearn import unlearn

    g_cfg = train.TrainConfig(arch="gpt_mlp", seed=0)
    g_arch = as_model("gpt_mlp", splits.train.x.shape[1:], splits.train.num_classes)
    params = g_arch.init(jax.random.key(0))
    return twice(lambda: unlearn("retrain", g_arch, params, split, splits.val, g_cfg,
                                 seed=0))["second"]


def gan_rows(splits, n_items=64):
    """GAN item unlearning (``n_items`` training images) against GAN Retrain (the original
    recipe on the remaining images). Retrain is timed once (its XLA compile seconds are counted
    and reported beside it); unlearning twice, as the classifier methods."""
    import numpy as np

    from hyperforget_jax.gan import train as gtrain
    from hyperforget_jax.gan import unlearn as gunlearn

    cfg = gtrain.GANConfig()
    original, _, arch = gtrain.timed_train_gan(splits.train, cfg)
    keep = np.arange(n_items, len(splits.train))
    retain = splits.train.subset(keep)
    with CompileCounter() as c:
        _, t_re, _ = gtrain.timed_train_gan(retain, cfg)
    # Run time = wall − (tracing + lowering + XLA compile), what a warm second call would not
    # pay. Wall − XLA compile alone left tracing and lowering in Retrain's run time, while the
    # unlearning row's run is a warm second call: a longer Retrain, a larger GAN speed-up.
    setup = c.secs + c.trace_secs
    rows = [{"method": "GAN retrain", "steps": None, "first call s": t_re,
             "second call s": max(t_re - setup, 1e-9), "compile s": setup,
             "XLA compile s": c.secs, "compiles 1st": c.n, "recompiles 2nd": None,
             "note": "one call; run = wall − (trace + lowering + XLA compile)"}]
    info = {}

    def run():
        info["r"] = gunlearn.unlearn_gan(arch, original.g_params, original.d_params,
                                         retain_x=retain.x, forget_x=splits.train.x[:n_items],
                                         heldout_x=splits.val.x)

    r = twice(run)
    rows.append({"method": f"GAN unlearning ({n_items} items)", "steps": info["r"].rounds,
                 "first call s": r["first"], "second call s": r["second"],
                 "compile s": max(0.0, r["first"] - r["second"]),
                 "XLA compile s": r["first_compile_s"], "compiles 1st": r["first_compiles"],
                 "recompiles 2nd": r["second_compiles"], "stopped": info["r"].stopped})
    return rows


def settings(argv=None):
    """``(args, the original's TrainConfig)`` of the command line."""
    ap = ArgumentParser(description=__doc__.split("\n")[0])
    # The original's recipe: one flag per TrainConfig field (--arch, --epochs, ...); seed 0.
    recipe = add_config_flags(ap, train.TrainConfig, title="classifier recipe",
                              exclude=("seed",))
    ap.add_argument("--methods", default=None, action=ListInOne,
                    help="comma list (default: every method and hyperforget_sample; with "
                         "--quick retrain,gradtau)")
    ap.add_argument("--forget-class", type=integer, default=3)
    ap.add_argument("--gan", action=argparse.BooleanOptionalAction, default=None,
                    help="also time GAN retrain and GAN item unlearning (≈2 min; default: "
                         "on, off with --quick)")
    ap.add_argument("--quick", action="store_true",
                    help="seconds: a 1-epoch original, no GAN, and retrain and gradtau, "
                         "unless --epochs, --gan or --methods say otherwise")
    ap.add_argument("--out", default=None)
    args = common.parse_args(ap, argv)
    cfg = recipe.build(args, seed=0)
    # --quick's settings yield to the flags given beside it: a given --methods was replaced
    # until 2026-12-06, --epochs and --gan until stop 62 (the JSON recorded the flag's value).
    if args.quick and "epochs" not in recipe.given(args):
        cfg = dataclasses.replace(cfg, epochs=1)
    if args.gan is None:
        args.gan = not args.quick
    if args.methods is None:
        args.methods = "retrain,gradtau" if args.quick else ALL_METHODS
    # Before the original trains (a wrong name failed after it, 20 s to minutes later).
    unknown = [m for m in args.methods.split(",") if m not in ALL_METHODS.split(",")]
    if unknown:
        ap.error(f"--methods: unknown {', '.join(map(repr, unknown))}; choose from "
                 f"{ALL_METHODS}")
    return args, cfg


def main(argv=None):
    from hyperforget_jax.unlearn import unlearn

    args, cfg = settings(argv)
    splits = data.make_splits(data.load_mnist5k())
    arch = as_model(cfg.arch, splits.train.x.shape[1:], splits.train.num_classes)
    # The request before the original trains (a class that does not exist was refused after).
    split = data.resolve_forget(splits.train, data.ForgetRequest(classes=(args.forget_class,)))
    t0 = time.perf_counter()
    original, _ = train.fit(arch, splits.train, cfg)
    jax.block_until_ready(original.params)
    print(f"original {cfg.arch}: trained in {time.perf_counter() - t0:.1f}s", flush=True)
    rows = []
    for m in args.methods.split(","):
        if m == "hyperforget_sample":
            fn = hyperforget_sampler(splits, (args.forget_class,))
            label = "hyperforget prompt + sample (gpt_mlp, DDIM 20)"
            steps = 20
        else:
            def fn(m=m):  # Retrain: the original's recipe on D_r
                fn.info = unlearn(m, arch, original.params, split, splits.val,
                                  cfg if m == "retrain" else None, seed=0).info
            label, steps = m, None
        r = twice(fn)
        if steps is None:
            steps = fn.info.get("steps")
        rows.append({"method": label, "first call s": r["first"], "second call s": r["second"],
                     "compile s": max(0.0, r["first"] - r["second"]),
                     "XLA compile s": r["first_compile_s"],
                     "compiles 1st": r["first_compiles"], "recompiles 2nd": r["second_compiles"],
                     "steps": steps})
        if hasattr(fn, "sample_s"):
            rows[-1]["sample alone s"] = fn.sample_s
        print(f"[{label}] first {r['first']:.2f}s ({r['first_compiles']} compiles), second "
              f"{r['second']:.2f}s ({r['second_compiles']} compiles)", flush=True)
    retrain = next((r["second call s"] for r in rows if r["method"] == "retrain"), None)
    for r in rows:
        r["speed-up vs retrain"] = retrain / r["second call s"] if retrain else float("nan")
        r["retrain reference"] = cfg.arch
    hf_rows = [r for r in rows if r["method"].startswith("hyperforget")]
    if hf_rows and cfg.arch != "gpt_mlp":
        # HyperForget samples a gpt_mlp: its speed-up is against Retrain of a gpt_mlp.
        g_re = gpt_mlp_retrain_s(splits, split)
        print(f"[retrain gpt_mlp] second call {g_re:.2f}s (HyperForget's reference)", flush=True)
        for r in hf_rows:
            r["speed-up vs retrain"] = g_re / r["second call s"]
            r["retrain reference"] = "gpt_mlp"
            r["retrain reference s"] = g_re
    if args.gan:
        grows = gan_rows(splits)
        gre = grows[0]["second call s"]
        for r in grows:
            r["speed-up vs retrain"] = gre / r["second call s"]
            r["retrain reference"] = "GAN retrain"
            print(f"[{r['method']}] first {r['first call s']:.2f}s, run "
                  f"{r['second call s']:.2f}s", flush=True)
        rows += grows
    print(common.markdown_table(rows, ["method", "steps", "second call s", "speed-up vs retrain",
                                       "retrain reference", "first call s", "compile s",
                                       "XLA compile s", "compiles 1st", "recompiles 2nd",
                                       "sample alone s"]))
    flags = {k: v for k, v in vars(args).items() if v is not UNSET}
    path = common.write_json("end_to_end", {"config": flags, "train_config": cfg.to_json(),
                                            "rows": rows,
                                            "forget": len(split.forget),
                                            "retain": len(split.retain)}, args.out)
    print(f"wrote {path}")
    return rows


if __name__ == "__main__":
    common.run_script("bench_end_to_end", main)
