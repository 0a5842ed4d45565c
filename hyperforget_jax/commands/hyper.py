"""``hyperforget corpus | hypertrain | sample``: HyperForget from the command line.

    hyperforget sample --hypernet pretrained --run-dir runs/g --forget-class 3 --out runs/s3
    hyperforget corpus --out runs/corpus                 # rebuild the pretrained network's data
    hyperforget hypertrain --corpus runs/corpus --out runs/dihyfo2 --variant dihyfo2

A start network comes from ``--run-dir`` (a model written by ``hyperforget train``; it must be
the hypernetwork's architecture, ``gpt_mlp`` for the pretrained one) or from a corpus
(``--corpus DIR --start-seed S``: that run's original network).
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp

from hyperforget_jax import checkpoint, data, report
from hyperforget_jax import params as P_
from hyperforget_jax.commands import common
from hyperforget_jax.errors import ArchitectureError, ConfigError
from hyperforget_jax.evaluation import evaluate_unlearning
from hyperforget_jax.hyperforget import corpus as C
from hyperforget_jax.hyperforget import denoiser as DN
from hyperforget_jax.hyperforget import dihyfo as H
from hyperforget_jax.hyperforget.spec import check_target


def cmd_corpus(args) -> int:
    cfg = C.CorpusConfig(arch=args.arch, num_seeds=args.seeds, first_seed=args.first_seed,
                         fleet_size=args.fleet_size, test_fraction=args.test_fraction,
                         lr_range=tuple(args.lr_range), epochs_range=tuple(args.epochs_range),
                         class_pairs=args.pairs,
                         forget_classes=tuple(args.forget_classes) if args.forget_classes
                         else None, unlearn_layers=args.unlearn_layers,
                         unlearn_lr=args.unlearn_lr, unlearn_epochs=args.unlearn_epochs,
                         checkpoints=args.checkpoints)
    splits = common.load_splits(args)
    stats = C.build_corpus(args.out, cfg, splits, args.dataset, args.split_seed,
                           progress=not args.quiet)
    corpus = C.Corpus(args.out)
    print(f"corpus {corpus.path}: {len(corpus.originals)} originals, {len(corpus)} trajectory "
          f"checkpoints built in {stats['total_build_seconds']:.1f} s; this call: "
          f"{stats['checkpoints']} new in {stats['seconds']:.1f} s, {stats['shards_skipped']} "
          f"shard(s) already done; test seeds {corpus.index['test_seeds']}")
    return 0


def cmd_hypertrain(args) -> int:
    if args.variant == "dihyfo1" and args.forget_class is None:
        raise ConfigError("--variant dihyfo1 needs --forget-class C")
    if args.variant == "dihyfo2" and args.forget_class is not None:
        raise ConfigError("--variant dihyfo2 serves every class and takes no --forget-class; "
                          "drop it, or use --variant dihyfo1 for a one-class network")
    den = DN.DenoiserConfig(num_layers=args.layers, width=args.width, num_heads=args.heads)
    cfg = DN.HyperTrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                              ema_decay=args.ema_decay, permute=not args.no_permute,
                              endpoint_fraction=args.endpoint_fraction,
                              p_uncond=args.p_uncond, seed=args.seed)
    corpus = C.Corpus(args.corpus)
    out = report.prepare_dir(args.out)
    net, hist = H.train_hypernet(corpus, args.variant, args.forget_class, den, cfg,
                                 checkpoint_dir=out / "train_state", progress=not args.quiet)
    path = H.save_hypernet(out, net, {"corpus": str(corpus.path), "history": hist,
                                      "corpus_config": corpus.index["config"]})
    report.write_json(out / "history.json", hist)
    print(f"{args.variant}: {cfg.steps} steps in {hist['seconds']:.0f} s, final loss "
          f"{hist['loss'][-1]:.5f}; saved {path}")
    return 0


def _start_network(args, net):
    if args.run_dir is not None:
        arch, params, _ = common.load_run(args.run_dir)
        if arch.param_count != net.spec.arch.param_count or arch.name != net.spec.arch.name:
            raise ArchitectureError(
                f"the start network in {args.run_dir} is a {arch.name} ({arch.param_count:,} "
                f"parameters) but this hypernetwork samples {net.spec.arch.name} networks; "
                f"train one with `hyperforget train --arch {net.spec.arch.name}`")
        return params
    if args.corpus is None or args.start_seed is None:
        raise ConfigError("give a start network: --run-dir DIR or --corpus DIR --start-seed S")
    corpus = C.Corpus(args.corpus)
    return P_.unflatten(jnp.asarray(corpus.original(args.start_seed)),
                        corpus.arch.param_shapes())


def cmd_sample(args) -> int:
    # The prompt first: a bad target is named as such, before any file is read.
    ft = None if args.forget_target is None else check_target("--forget-target",
                                                               args.forget_target)
    rt = None if args.retain_target is None else check_target("--retain-target",
                                                               args.retain_target)
    net, _ = H.load_hypernet(args.hypernet)
    classes = tuple(args.forget_class)
    H.check_request(net.spec, classes)
    splits = common.load_splits(args)
    net.spec.arch.check_inputs(splits.train.x, f"dataset {args.dataset!r}")
    params = _start_network(args, net)
    prompt = H.make_prompt(net, params, splits.train, classes, ft, rt)
    key = jax.random.key(args.seed)
    t0 = time.perf_counter()
    if args.best_of > 1:
        out, _ = H.sample_best_of(key, net, params, prompt, splits.train, args.best_of,
                                  args.num_steps, args.guidance)
    else:
        out = H.sample(key, net, params, prompt, args.num_steps, args.method, args.guidance)
    jax.block_until_ready(out)
    secs = time.perf_counter() - t0
    request = data.ForgetRequest(classes=classes)
    fsplit = data.resolve_forget(splits.train, request)
    arch = net.spec.arch
    ev_start = evaluate_unlearning(arch, params, splits, fsplit, request, args.seed)
    ev = evaluate_unlearning(arch, out, splits, fsplit, request, args.seed)
    run_dir = report.prepare_dir(args.out)
    prompt_json = {k: jnp.asarray(v).tolist() for k, v in prompt._asdict().items()}
    checkpoint.save_params(run_dir / "params", out, {"role": "hyperforget-sample",
                                                     "architecture": arch.to_json(),
                                                     "request": request.to_json(),
                                                     "prompt": prompt_json})
    how = (f"{args.method}, {args.num_steps} steps" + (f", guidance {args.guidance:g}"
                                                       if args.guidance else "")
           + (f", best of {args.best_of}" if args.best_of > 1 else ""))
    md = (f"# HyperForget sample ({net.spec.variant}), forgetting {request.describe()}\n\n"
          + report.markdown_table(
              ["model", "RA %", "FA %", "TA %", "TA kept %", "mia_loss_lr"],
              [[n, *(report.fmt(e[k], 2, 100.0) for k in ("retain_acc", "forget_acc",
                                                          "test_acc", "test_acc_kept")),
                report.fmt(e["mia_loss_lr"], 3)] for n, e in (("start", ev_start),
                                                               ("sample", ev))])
          + f"\n\nsampling time {secs:.2f} s ({how}, including compilation)\n")
    common.write_results(run_dir, {"start": ev_start, "sample": ev, "seconds": secs,
                                   "request": request.to_json(), "prompt": prompt_json,
                                   "hypernet": str(args.hypernet)}, md)
    print(md)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("corpus", help="build (or resume) a HyperForget checkpoint corpus")
    common.add_data_args(p)
    d = C.CorpusConfig()
    p.add_argument("--out", required=True, help="corpus directory (resumable)")
    p.add_argument("--arch", default=d.arch)
    p.add_argument("--seeds", type=int, default=d.num_seeds, help="number of original networks")
    p.add_argument("--first-seed", type=int, default=d.first_seed)
    p.add_argument("--fleet-size", type=int, default=d.fleet_size, help="seeds per shard")
    p.add_argument("--test-fraction", type=float, default=d.test_fraction)
    p.add_argument("--lr-range", type=float, nargs=2, default=d.lr_range, metavar=("LO", "HI"))
    p.add_argument("--epochs-range", type=int, nargs=2, default=d.epochs_range,
                   metavar=("LO", "HI"))
    p.add_argument("--forget-classes", type=int, nargs="+", default=None, metavar="C",
                   help="classes of the single-class requests (default: every class)")
    p.add_argument("--pairs", type=int, default=d.class_pairs,
                   help="two-class requests to add (0..45)")
    p.add_argument("--unlearn-layers", choices=("head", "all"), default=d.unlearn_layers)
    p.add_argument("--unlearn-lr", type=float, default=d.unlearn_lr)
    p.add_argument("--unlearn-epochs", type=int, default=d.unlearn_epochs)
    p.add_argument("--checkpoints", type=int, default=d.checkpoints,
                   help="checkpoints per unlearning trajectory")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_corpus)

    p = sub.add_parser("hypertrain", help="train a DiHyFo-1/2 hypernetwork on a corpus")
    t, n = DN.HyperTrainConfig(), DN.DenoiserConfig()
    p.add_argument("--corpus", required=True)
    p.add_argument("--out", required=True, help="output directory (resumes an interrupted run)")
    p.add_argument("--variant", choices=H.VARIANTS, default="dihyfo2")
    p.add_argument("--forget-class", type=int, default=None,
                   help="DiHyFo-1's class (DiHyFo-2 takes none)")
    p.add_argument("--steps", type=int, default=t.steps)
    p.add_argument("--batch-size", type=int, default=t.batch_size)
    p.add_argument("--lr", type=float, default=t.lr)
    p.add_argument("--ema-decay", type=float, default=t.ema_decay)
    p.add_argument("--no-permute", action="store_true", help="no permutation augmentation")
    p.add_argument("--endpoint-fraction", type=float, default=t.endpoint_fraction,
                   help="share of training pairs targeting the trajectory's end")
    p.add_argument("--p-uncond", type=float, default=t.p_uncond,
                   help="guidance dropout of the loss targets")
    p.add_argument("--layers", type=int, default=n.num_layers)
    p.add_argument("--width", type=int, default=n.width)
    p.add_argument("--heads", type=int, default=n.num_heads)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_hypertrain)

    p = sub.add_parser("sample", help="sample an unlearned network from a hypernetwork")
    common.add_data_args(p)
    p.add_argument("--hypernet", required=True,
                   help="'pretrained' (shipped DiHyFo-2 for gpt_mlp) or the --out of hypertrain")
    p.add_argument("--forget-class", type=int, nargs="+", required=True, metavar="C")
    p.add_argument("--run-dir", default=None, help="start network from `hyperforget train`")
    p.add_argument("--corpus", default=None)
    p.add_argument("--start-seed", type=int, default=None, help="corpus run to start from")
    p.add_argument("--forget-target", type=float, default=None,
                   help="forget loss to reach (default: the hypernetwork's)")
    p.add_argument("--retain-target", type=float, default=None,
                   help="retain loss to reach (default: the start's, times the corpus ratio)")
    p.add_argument("--num-steps", type=int, default=20, help="DDIM steps")
    p.add_argument("--method", choices=("ddim", "ddpm"), default="ddim")
    p.add_argument("--guidance", type=float, default=0.0,
                   help="classifier-free guidance weight (0: none)")
    p.add_argument("--best-of", type=int, default=1,
                   help="draw N samples, keep the closest to the prompt [beyond]")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_sample)
