"""``hyperforget corpus | hypertrain | sample``: HyperForget from the command line.

    hyperforget corpus --out runs/corpus --seeds 24
    hyperforget hypertrain --corpus runs/corpus --out runs/dihyfo2 --variant dihyfo2
    hyperforget sample --hypernet runs/dihyfo2 --corpus runs/corpus --start-seed 23 \\
        --forget-class 3 --out runs/sample3

A start network comes from ``--run-dir`` (a model written by ``hyperforget train --arch
gpt_mlp``) or from the corpus (``--start-seed``: that run's original network; held-out seeds are
listed in the corpus index as ``test_seeds``).
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp

from pathlib import Path

from hyperforget_jax import checkpoint, configflags, data, report, rundir
from hyperforget_jax import params as P_
from hyperforget_jax.commands import common
from hyperforget_jax.configflags import finite_float, non_negative_int, seed_int
from hyperforget_jax.errors import ConfigError
from hyperforget_jax.evaluation import evaluate_unlearning
from hyperforget_jax.hyperforget import corpus as C
from hyperforget_jax.hyperforget import denoiser as DN
from hyperforget_jax.hyperforget import dihyfo as H


def cmd_corpus(args) -> int:
    cfg = args._corpus_flags.build(args)
    splits = common.load_splits(args)
    identity = {"role": "corpus", "config": cfg.to_json(), **common.data_identity(args, splits)}
    # Corpora built before run.json existed are adopted; their index has its own config check.
    legacy = lambda path: {} if (path / "index.json").exists() else None
    with common.open_run(args.out, identity, args, flag="--out", legacy=legacy) as run:
        stats = C.build_corpus(run.path, cfg, splits, args.dataset, args.split_seed,
                               progress=common.progress(args))
        corpus = C.Corpus(run.path)
    md = (f"corpus {corpus.path}: {len(corpus)} checkpoints built in "
          f"{stats['total_build_seconds']:.1f} s ({stats['total_checkpoints_per_second']:.0f} "
          f"checkpoints/s); this call: {stats['checkpoints']} new in {stats['seconds']:.1f} s, "
          f"{stats['shards_skipped']} shard(s) already done; test seeds "
          f"{corpus.index['test_seeds']}")
    common.emit(args, {**stats, "path": str(corpus.path), "checkpoints_total": len(corpus),
                       "test_seeds": corpus.index["test_seeds"]}, md)
    return 0


def cmd_hypertrain(args) -> int:
    corpus = C.Corpus(args.corpus)
    den = args._denoiser_flags.build(args)
    cfg = args._hypertrain_flags.build(args)
    if args.variant == "dihyfo1" and args.forget_class is None:
        raise ConfigError("--variant dihyfo1 needs --forget-class C")
    fc = args.forget_class if args.variant == "dihyfo1" else None
    identity = {"role": "hypernet", "variant": args.variant, "forget_class": fc,
                "denoiser": den.to_json(), "train": cfg.to_json(),
                "corpus": rundir.read_identity(args.corpus) or str(corpus.path)}
    with common.open_run(args.out, identity, args, reads=[args.corpus], flag="--out") as run:
        net, hist = H.train_hypernet(corpus, args.variant, fc, den, cfg,
                                     progress=common.progress(args))
        H.save_hypernet(run.path / "hypernet", net, {"corpus": str(corpus.path),
                                                     "history": hist})
        report.write_json(run.path / "history.json", hist)
    common.emit(args, {"variant": args.variant, "steps": cfg.steps, "history": hist,
                       "hypernet": str(run.path / "hypernet")},
                f"{args.variant}: {cfg.steps} steps in {hist['seconds']:.0f} s, final loss "
                f"{hist['loss'][-1]:.5f}; saved {run.path / 'hypernet'}")
    return 0


def _start_network(args):
    if args.run_dir is not None:
        return common.load_run(args.run_dir)[1]
    if args.corpus is None or args.start_seed is None:
        raise ConfigError("give a start network: --run-dir DIR or --corpus DIR --start-seed S")
    corpus = C.Corpus(args.corpus)
    flat = corpus.params([corpus.find(args.start_seed, "original")])[0]
    return P_.unflatten(jnp.asarray(flat), corpus.arch.param_shapes())


def cmd_sample(args) -> int:
    net, _ = H.load_hypernet(args.hypernet)
    splits = common.load_splits(args)
    params = _start_network(args)
    classes = tuple(args.forget_class)
    prompt = H.make_prompt(net, params, splits.train, classes, args.forget_target,
                           args.retain_target)
    request = data.ForgetRequest(classes=classes)
    identity = {"role": "hyperforget-sample",
                "hypernet": rundir.read_identity(args.hypernet) or str(Path(args.hypernet)
                                                                       .absolute()),
                "start": ({"run": common.load_run(args.run_dir)[2]["identity"]}
                          if args.run_dir is not None else
                          {"corpus": str(Path(args.corpus).absolute()),
                           "seed": args.start_seed}),
                "request": request.to_json(), "forget_target": args.forget_target,
                "retain_target": args.retain_target, "num_steps": args.num_steps,
                "method": args.method, "seed": args.seed, **common.data_identity(args, splits)}
    reads = [p for p in (args.hypernet, args.run_dir, args.corpus) if p is not None]
    # Claimed before sampling: a refused --out costs nothing.
    with common.open_run(args.out, identity, args, reads=reads, flag="--out") as run:
        t0 = time.perf_counter()
        out = H.sample(jax.random.key(args.seed), net, params, prompt, args.num_steps,
                       args.method)
        jax.block_until_ready(out)
        secs = time.perf_counter() - t0
        fsplit = data.resolve_forget(splits.train, request)
        arch = net.spec.arch
        ev_start = evaluate_unlearning(arch, params, splits, fsplit, request, args.seed)
        ev = evaluate_unlearning(arch, out, splits, fsplit, request, args.seed)
        _write_sample(run.path, args, net, out, arch, request, prompt, ev_start, ev, secs)
    return 0


def _write_sample(run_dir, args, net, out, arch, request, prompt, ev_start, ev, secs):
    checkpoint.save_params(run_dir / "params", out, {"role": "hyperforget-sample",
                                                     "architecture": arch.to_json(),
                                                     "request": request.to_json(),
                                                     "prompt": {k: jnp.asarray(v).tolist() for
                                                                k, v in prompt._asdict().items()}})
    md = (f"# HyperForget sample ({net.spec.variant}), forgetting {request.describe()}\n\n"
          + report.markdown_table(
              ["model", "RA %", "FA %", "TA %", "mia_loss_lr"],
              [[n, *(report.fmt(e[k], 2, 100.0) for k in ("retain_acc", "forget_acc",
                                                          "test_acc")),
                report.fmt(e["mia_loss_lr"], 3)] for n, e in (("start", ev_start),
                                                               ("sample", ev))])
          + f"\n\nsampling time {secs:.2f} s ({args.method}, {args.num_steps} steps, "
            "including compilation)\n")
    results = {"start": ev_start, "sample": ev, "seconds": secs, "request": request.to_json()}
    common.write_results(run_dir, results, md)
    common.emit(args, results, md)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("corpus", help="build (or resume) a HyperForget checkpoint corpus")
    common.add_data_args(p)
    p.add_argument("--out", required=True, help="corpus directory (resumable)")
    flags = configflags.add_config_flags(
        p, C.CorpusConfig, title="corpus", rename={"num_seeds": "seeds", "class_pairs": "pairs"},
        choices={"tau_mode": ("unseen_class", "chance")})
    common.add_output_args(p)
    p.set_defaults(func=cmd_corpus, _corpus_flags=flags)

    p = sub.add_parser("hypertrain", help="train a DiHyFo-1/2 hypernetwork on a corpus")
    p.add_argument("--corpus", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--variant", choices=H.VARIANTS, default="dihyfo2")
    p.add_argument("--forget-class", type=common.class_id, default=None,
                   help="DiHyFo-1's class")
    train_flags = configflags.add_config_flags(p, DN.HyperTrainConfig,
                                               title="hypernetwork training")
    den_flags = configflags.add_config_flags(p, DN.DenoiserConfig, title="denoiser",
                                             rename={"num_layers": "layers",
                                                     "num_heads": "heads"})
    common.add_output_args(p)
    p.set_defaults(func=cmd_hypertrain, _hypertrain_flags=train_flags,
                   _denoiser_flags=den_flags)

    p = sub.add_parser("sample", help="sample an unlearned network from a hypernetwork")
    common.add_data_args(p)
    p.add_argument("--hypernet", required=True, help="--out of hypertrain")
    p.add_argument("--forget-class", type=common.class_id, nargs="+", required=True,
                   metavar="C")
    p.add_argument("--run-dir", default=None, help="start network from `hyperforget train`")
    p.add_argument("--corpus", default=None)
    p.add_argument("--start-seed", type=seed_int, default=None,
                   help="corpus run to start from")
    p.add_argument("--forget-target", type=finite_float, default=None)
    p.add_argument("--retain-target", type=finite_float, default=None)
    p.add_argument("--num-steps", type=non_negative_int, default=20, help="DDIM steps")
    p.add_argument("--method", choices=("ddim", "ddpm"), default="ddim")
    p.add_argument("--seed", type=seed_int, default=0)
    p.add_argument("--out", required=True)
    common.add_output_args(p, quiet=False)
    p.set_defaults(func=cmd_sample)
