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

from hyperforget_jax import checkpoint, data, report
from hyperforget_jax import params as P_
from hyperforget_jax.commands import common
from hyperforget_jax.errors import ConfigError
from hyperforget_jax.evaluation import evaluate_unlearning
from hyperforget_jax.hyperforget import corpus as C
from hyperforget_jax.hyperforget import denoiser as DN
from hyperforget_jax.hyperforget import dihyfo as H


def cmd_corpus(args) -> int:
    cfg = C.CorpusConfig(arch=args.arch, num_seeds=args.seeds, first_seed=args.first_seed,
                         fleet_size=args.fleet_size, test_fraction=args.test_fraction,
                         epochs=args.epochs, class_pairs=args.pairs,
                         forget_classes=tuple(args.forget_classes) if args.forget_classes
                         else None, save_every_epochs=args.save_every_epochs,
                         save_every_steps=args.save_every_steps,
                         repair_epochs=args.repair_epochs,
                         retrain=not args.no_retrain, tau_mode=args.tau_mode)
    splits = common.load_splits(args)
    stats = C.build_corpus(args.out, cfg, splits, args.dataset, args.split_seed,
                           progress=not args.quiet)
    corpus = C.Corpus(args.out)
    print(f"corpus {corpus.path}: {len(corpus)} checkpoints built in "
          f"{stats['total_build_seconds']:.1f} s ({stats['total_checkpoints_per_second']:.0f} "
          f"checkpoints/s); this call: {stats['checkpoints']} new in {stats['seconds']:.1f} s, "
          f"{stats['shards_skipped']} shard(s) already done; test seeds "
          f"{corpus.index['test_seeds']}")
    return 0


def cmd_hypertrain(args) -> int:
    corpus = C.Corpus(args.corpus)
    den = DN.DenoiserConfig(num_layers=args.layers, width=args.width, num_heads=args.heads)
    cfg = DN.HyperTrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                              ema_decay=args.ema_decay, permute=not args.no_permute,
                              from_start=args.from_start, seed=args.seed)
    if args.variant == "dihyfo1" and args.forget_class is None:
        raise ConfigError("--variant dihyfo1 needs --forget-class C")
    fc = args.forget_class if args.variant == "dihyfo1" else None
    net, hist = H.train_hypernet(corpus, args.variant, fc, den, cfg, progress=not args.quiet)
    out = report.prepare_dir(args.out)
    H.save_hypernet(out / "hypernet", net, {"corpus": str(corpus.path), "history": hist})
    report.write_json(out / "history.json", hist)
    print(f"{args.variant}: {cfg.steps} steps in {hist['seconds']:.0f} s, final loss "
          f"{hist['loss'][-1]:.5f}; saved {out / 'hypernet'}")
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
    t0 = time.perf_counter()
    out = H.sample(jax.random.key(args.seed), net, params, prompt, args.num_steps, args.method)
    jax.block_until_ready(out)
    secs = time.perf_counter() - t0
    request = data.ForgetRequest(classes=classes)
    fsplit = data.resolve_forget(splits.train, request)
    arch = net.spec.arch
    ev_start = evaluate_unlearning(arch, params, splits, fsplit, request, args.seed)
    ev = evaluate_unlearning(arch, out, splits, fsplit, request, args.seed)
    run_dir = report.prepare_dir(args.out)
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
    common.write_results(run_dir, {"start": ev_start, "sample": ev, "seconds": secs,
                                   "request": request.to_json()}, md)
    print(md)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("corpus", help="build (or resume) a HyperForget checkpoint corpus")
    common.add_data_args(p)
    d = C.CorpusConfig()
    p.add_argument("--out", required=True, help="corpus directory (resumable)")
    p.add_argument("--arch", default=d.arch)
    p.add_argument("--seeds", type=int, default=d.num_seeds, help="number of runs")
    p.add_argument("--first-seed", type=int, default=d.first_seed)
    p.add_argument("--fleet-size", type=int, default=d.fleet_size, help="seeds per shard")
    p.add_argument("--test-fraction", type=float, default=d.test_fraction)
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--forget-classes", type=int, nargs="+", default=None, metavar="C",
                   help="classes of the single-class requests (default: every class)")
    p.add_argument("--pairs", type=int, default=0, help="two-class requests to add (0..45)")
    p.add_argument("--save-every-epochs", type=int, default=d.save_every_epochs)
    p.add_argument("--save-every-steps", type=int, default=d.save_every_steps)
    p.add_argument("--repair-epochs", type=int, default=d.repair_epochs,
                   help="repair phase after ∇τ, in forget-epochs (0: none)")
    p.add_argument("--tau-mode", choices=("unseen_class", "chance"),
                   default=C.CorpusConfig().tau_mode)
    p.add_argument("--no-retrain", action="store_true", help="skip Retrain trajectories")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_corpus)

    p = sub.add_parser("hypertrain", help="train a DiHyFo-1/2 hypernetwork on a corpus")
    t, n = DN.HyperTrainConfig(), DN.DenoiserConfig()
    p.add_argument("--corpus", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--variant", choices=H.VARIANTS, default="dihyfo2")
    p.add_argument("--forget-class", type=int, default=None, help="DiHyFo-1's class")
    p.add_argument("--steps", type=int, default=t.steps)
    p.add_argument("--batch-size", type=int, default=t.batch_size)
    p.add_argument("--lr", type=float, default=t.lr)
    p.add_argument("--ema-decay", type=float, default=t.ema_decay)
    p.add_argument("--no-permute", action="store_true", help="no permutation augmentation")
    p.add_argument("--from-start", type=float, default=t.from_start,
                   help="share of training pairs starting at the original network")
    p.add_argument("--layers", type=int, default=n.num_layers)
    p.add_argument("--width", type=int, default=n.width)
    p.add_argument("--heads", type=int, default=n.num_heads)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_hypertrain)

    p = sub.add_parser("sample", help="sample an unlearned network from a hypernetwork")
    common.add_data_args(p)
    p.add_argument("--hypernet", required=True, help="--out of hypertrain")
    p.add_argument("--forget-class", type=int, nargs="+", required=True, metavar="C")
    p.add_argument("--run-dir", default=None, help="start network from `hyperforget train`")
    p.add_argument("--corpus", default=None)
    p.add_argument("--start-seed", type=int, default=None, help="corpus run to start from")
    p.add_argument("--forget-target", type=float, default=None)
    p.add_argument("--retain-target", type=float, default=None)
    p.add_argument("--num-steps", type=int, default=20, help="DDIM steps")
    p.add_argument("--method", choices=("ddim", "ddpm"), default="ddim")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_sample)
