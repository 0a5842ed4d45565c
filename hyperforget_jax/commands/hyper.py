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
import dataclasses
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from hyperforget_jax import checkpoint, configflags, data, report, rundir
from hyperforget_jax import params as P_
from hyperforget_jax.commands import common
from hyperforget_jax.configflags import finite_float, seed_int
from hyperforget_jax.errors import ArchitectureError, CheckpointError, ConfigError, shell_quote
from hyperforget_jax.evaluation import evaluate_unlearning
from hyperforget_jax.hyperforget import corpus as C
from hyperforget_jax.hyperforget import denoiser as DN
from hyperforget_jax.hyperforget import dihyfo as H
from hyperforget_jax.hyperforget import store
from hyperforget_jax.hyperforget.spec import check_target, coverage


def cmd_corpus(args) -> int:
    cfg = args._corpus_flags.build(args)
    splits = common.load_splits(args)
    identity = {"role": "corpus", "config": cfg.to_json(), **common.data_identity(args, splits)}
    # Corpora built before run.json existed are adopted, compared on the config their index
    # records (adopted on none, a refused rerun had its flags written over the corpus's).
    legacy = _legacy_corpus
    # The index alone (no shard done yet) is rewritten by any rerun: a build that fails in its
    # first fleet (a diverged recipe) leaves --out as it found it, so a rerun with a fixed
    # recipe is not refused as "a different corpus".
    with common.open_run(args.out, identity, args, flag="--out", legacy=legacy,
                         caches=("index.json",)) as run:
        stats = C.build_corpus(run.path, cfg, splits, args.dataset, args.split_seed,
                               progress=common.progress(args))
        corpus = C.Corpus(run.path)
    md = (f"corpus {corpus.path}: {len(corpus.originals)} originals, {len(corpus)} trajectory "
          f"checkpoints built in {stats['total_build_seconds']:.1f} s; this call: "
          # (networks: stats count the originals with the checkpoints, "48 checkpoints; this
          # call: 52 new" read as more new than in all)
          f"{stats['checkpoints']} networks (originals included) new in "
          f"{stats['seconds']:.1f} s, {stats['shards_skipped']} "
          f"shard(s) already done; test seeds {corpus.index['test_seeds']}")
    common.emit(args, {**stats, "path": str(corpus.path), "originals": len(corpus.originals),
                       "checkpoints_total": len(corpus),
                       "test_seeds": corpus.index["test_seeds"]}, md)
    return 0


def _legacy_corpus(path: Path) -> dict | None:
    """The identity fields an older version's corpus records in its index (None: no corpus)."""
    if not (path / "index.json").exists():
        return None
    try:
        config = json.loads((path / "index.json").read_text(encoding="utf-8")).get("config")
    except (OSError, ValueError, AttributeError):
        return {}          # unreadable: build_corpus names what is wrong with it
    return {"role": "corpus", "config": config} if isinstance(config, dict) else {}


def _legacy_hypertrain(path: Path, den: DN.DenoiserConfig) -> dict | None:
    """The identity fields an older version's hypertrain run records in its hypernet.npz
    (None: no run; {} for a run not finished, whose training state checks itself). Tokens
    "auto" are compared as given: the spec stores what they resolved to on this corpus."""
    done = path / store.FILE_NAME
    if not done.is_file():
        return {} if (path / "train_state").exists() else None
    try:
        net, meta = H.load_hypernet(done)
    except CheckpointError:
        return {}          # a damaged file is named when read
    trained = (meta.get("history") or {}).get("train_config")
    stored = net.spec.denoiser.to_json()
    if den.tokens == "auto":
        stored = {**stored, "tokens": "auto"}
    return {"role": "hypernet", "variant": net.spec.variant,
            "forget_class": net.spec.forget_class, "denoiser": stored,
            **({"train": trained} if isinstance(trained, dict) else {})}


def cmd_hypertrain(args) -> int:
    # Refused before anything is read or written (issue 16, 13a).
    if args.variant == "dihyfo1" and args.forget_class is None:
        raise ConfigError("--variant dihyfo1 needs --forget-class C")
    if args.variant == "dihyfo2" and args.forget_class is not None:
        raise ConfigError("--variant dihyfo2 serves every class and takes no --forget-class; "
                          "drop it, or use --variant dihyfo1 for a one-class network")
    den = args._denoiser_flags.build(args)
    cfg = args._hypertrain_flags.build(args)
    corpus = C.Corpus(args.corpus)
    H.resolve_tokens(corpus.arch, den)      # a flag the denoiser would not read: refused here
    identity = {"role": "hypernet", "variant": args.variant, "forget_class": args.forget_class,
                "denoiser": den.to_json(), "train": cfg.to_json(),
                "corpus": rundir.read_identity(args.corpus) or str(corpus.path)}
    # Runs started before run.json existed are adopted: a finished one is compared on what its
    # hypernet.npz records (adopted on nothing, any flags took the "already trained" exit and
    # were written over its recipe); an unfinished one's training state checks its own spec
    # and config on resume.
    legacy = lambda path: _legacy_hypertrain(path, den)    # noqa: E731
    with common.open_run(args.out, identity, args, reads=[args.corpus], flag="--out",
                         legacy=legacy) as run:
        done = run.path / store.FILE_NAME
        if done.is_file():
            # Written only when training has finished (atomically), for this very run (the
            # identity check above): a rerun is a no-op, not a retrain over its history.
            _, meta = H.load_hypernet(done)
            hist = meta.get("history", {})
            # A run of an earlier version, or a damaged history.json (kept as it was, where
            # `train` and `gan unlearn` reruns rewrite a damaged results.json).
            if not _parses(run.path / "history.json"):
                report.write_json(run.path / "history.json", hist)
            common.emit(args, {"variant": args.variant, "steps": cfg.steps, "history": hist,
                               "hypernet": str(done), "already_done": True},
                        f"{args.variant}: already trained ({cfg.steps} steps); {done}")
            return 0
        net, hist = H.train_hypernet(corpus, args.variant, args.forget_class, den, cfg,
                                     checkpoint_dir=run.path / "train_state",
                                     progress=common.progress(args))
        # history.json first: hypernet.npz marks the run finished, and a kill between the two
        # left a finished run without history.json for good (a rerun found it done). The
        # corpus's data goes with the network (net.built_on), for `sample`'s check.
        report.write_json(run.path / "history.json", hist)
        path = H.save_hypernet(run.path, net, {"corpus": str(corpus.path), "history": hist,
                                               "corpus_config": corpus.index["config"]})
    common.emit(args, {"variant": args.variant, "steps": cfg.steps, "history": hist,
                       "hypernet": str(path)},
                f"{args.variant}: {cfg.steps} steps in {hist['seconds']:.0f} s, final loss "
                f"{hist['loss'][-1] if hist['loss'] else float('nan'):.5f}; saved {path}")
    return 0


def _start_network(args, net, splits):
    """(params, identity of the start) from --run-dir or --corpus/--start-seed, refused when it
    was trained on other data than ``splits`` (the prompt and the evaluation use them)."""
    if args.run_dir is not None and (args.corpus is not None or args.start_seed is not None):
        raise ConfigError("give one start network: --run-dir DIR, or --corpus DIR "
                          "--start-seed S, not both")
    want = net.spec.arch
    # The advised `train` reads this command's data: on another dataset the same name is
    # another network (an mlp on 28×28 images is not the one for 8×8).
    train = f"--arch {want.name}{common.data_flags(args)}"
    if args.run_dir is not None:
        arch, params, meta = common.load_run(
            args.run_dir, first=f"hyperforget train --run-dir {shell_quote(args.run_dir)} "
                                f"{train}")
        if arch.param_count != want.param_count or arch.name != want.name:
            raise ArchitectureError(
                f"the start network in {args.run_dir} is a {arch.name} ({arch.param_count:,} "
                f"parameters) but this hypernetwork samples {want.name} networks; train one "
                f"with `hyperforget train {train} --run-dir NEW_DIR`")
        common.check_same_data(meta, args, splits, args.run_dir, "start network")
        return params, {"run": meta["identity"]}
    if args.corpus is None or args.start_seed is None:
        raise ConfigError("give a start network: --run-dir DIR or --corpus DIR --start-seed S")
    corpus = C.Corpus(args.corpus)
    arch = corpus.arch
    if arch.param_count != want.param_count or arch.name != want.name:
        # A corpus of another model with the same parameter tree (a tanh gpt_mlp) was
        # unflattened into it, sampled and evaluated as this hypernetwork's model, exit 0.
        raise ArchitectureError(
            f"the corpus {args.corpus} holds {arch.name} networks ({arch.param_count:,} "
            f"parameters) but this hypernetwork samples {want.name} networks; pass its own "
            f"corpus, or a start network trained with `hyperforget train {train} --run-dir "
            "NEW_DIR` as --run-dir")
    common.check_same_data(corpus.data_record(), args, splits, args.corpus,
                           "corpus's start network")
    params = P_.unflatten(jnp.asarray(corpus.original(args.start_seed)),
                          corpus.arch.param_shapes())
    return params, {"corpus": str(Path(args.corpus).absolute()), "seed": args.start_seed}


def _parses(path: Path) -> bool:
    """Whether ``path`` is a file holding JSON."""
    try:
        json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return True


def _hypernet_identity(args, meta) -> dict | str:
    if store.is_pretrained_name(args.hypernet):
        return {"pretrained": meta.get("pretrained_name"), "sha256": meta.get("sha256")}
    path = Path(args.hypernet).expanduser().absolute()
    if path.is_file():          # a hypernet.npz given by itself: its content is its identity
        return {"file": str(path), "sha256": store.sha256(path.read_bytes())}
    return rundir.read_identity(path) or str(path)


def cmd_sample(args) -> int:
    # The prompt first: a bad target is named as such, before any file is read.
    ft = None if args.forget_target is None else check_target("--forget-target",
                                                               args.forget_target)
    rt = None if args.retain_target is None else check_target("--retain-target",
                                                               args.retain_target)
    sc = args._sample_flags.build(args)
    if sc.method == "ddpm" and "num_steps" in args._sample_flags.given(args):
        raise ConfigError("--num-steps counts DDIM's steps; --method ddpm runs every one of "
                          "the hypernetwork's T diffusion steps whatever it says: drop "
                          "--num-steps, or use --method ddim")
    net, meta = H.load_hypernet(args.hypernet)
    if net.spec.variant == "dihyfo1" and rt is not None and sc.best_of == 1:
        # DiHyFo-1's conditions are forget losses only: the sample ignored the target, while
        # the results recorded it in the prompt as if it had been asked for.
        raise ConfigError("--retain-target: a DiHyFo-1 network conditions on the forget loss "
                          "only, so the sample would ignore it; drop it, add --best-of K (it "
                          "keeps the sample closest to both targets), or use a DiHyFo-2 network")
    H.check_guidance(net, sc.guidance)      # before any data is read or anything written
    if sc.method == "ddpm":     # recorded as run: every one of the T steps
        sc = dataclasses.replace(sc, num_steps=net.spec.num_train_steps)
    classes = tuple(args.forget_class)
    H.check_request(net.spec, classes)
    splits = common.load_splits(args)
    net.spec.arch.check_inputs(splits.train.x, f"dataset {args.dataset!r}")
    # Prompts are the start network's losses on this data, read against the corpus's
    # statistics: data other than the corpus's gives prompts the network never saw.
    common.check_same_data(meta, args, splits, args.hypernet, "hypernetwork's corpus")
    params, start = _start_network(args, net, splits)
    prompt = H.make_prompt(net, params, splits.train, classes, ft, rt)
    request = data.ForgetRequest(classes=classes)
    identity = {"role": "hyperforget-sample", "hypernet": _hypernet_identity(args, meta),
                "start": start, "request": request.to_json(), "forget_target": ft,
                "retain_target": rt, **sc.to_json(), "seed": args.seed,
                **common.data_identity(args, splits)}
    reads = [p for p in (args.run_dir, args.corpus) if p is not None]
    if not store.is_pretrained_name(args.hypernet):
        reads.append(args.hypernet)
    # Claimed before sampling: a refused --out costs nothing.
    with common.open_run(args.out, identity, args, reads=reads, flag="--out") as run:
        key = jax.random.key(args.seed)
        t0 = time.perf_counter()
        picked = None
        if sc.best_of > 1:
            out, picked = H.sample_best_of(key, net, params, prompt, splits.train, sc.best_of,
                                           sc.num_steps, sc.guidance, sc.method)
        else:
            out = H.sample(key, net, params, prompt, sc.num_steps, sc.method, sc.guidance)
        jax.block_until_ready(out)
        secs = time.perf_counter() - t0
        fsplit = data.resolve_forget(splits.train, request)
        arch = net.spec.arch
        ev_start = evaluate_unlearning(arch, params, splits, fsplit, request, args.seed)
        ev = evaluate_unlearning(arch, out, splits, fsplit, request, args.seed)
        _write_sample(run.path, args, sc, net, out, arch, request, prompt, ev_start, ev,
                      secs, picked, start)
    return 0


def _write_sample(run_dir, args, sc, net, out, arch, request, prompt, ev_start, ev, secs,
                  picked: dict | None, start: dict | None = None):
    """``picked``: with --best-of K, which of the K samples was kept (``chosen``, 0-based in
    the order of ``jax.random.split(key, K)``) and its training-set losses that chose it;
    ``start``: the start network's identity (:func:`_start_network`)."""
    prompt_json = {k: jnp.asarray(v).tolist() for k, v in prompt._asdict().items()}
    checkpoint.save_params(run_dir / "params", out, {"role": "hyperforget-sample",
                                                     "architecture": arch.to_json(),
                                                     "request": request.to_json(),
                                                     "prompt": prompt_json})
    cov = coverage(net.spec, request.classes, float(prompt.forget_target))
    cov.update(_reached(net.spec, prompt, ev))
    run = (start or {}).get("run")
    role = run.get("role") if isinstance(run, dict) else None
    how = (f"{sc.method}, {sc.num_steps} steps" + (f", guidance {sc.guidance:g}"
                                                   if sc.guidance else "")
           + (f", best of {sc.best_of}: sample {picked['chosen']} kept" if picked else ""))
    from hyperforget_jax.commands.unlearn import KEYS   # unlearn's columns and rounding

    md = (f"# HyperForget sample ({net.spec.variant}), forgetting {request.describe()}\n\n"
          + report.markdown_table(
              ["model"] + [h for _, h, _ in KEYS],
              [[n, *(report.fmt(e.get(k), 2, s) for k, _, s in KEYS)]
               for n, e in (("start", ev_start), ("sample", ev))])
          + f"\n\nsampling time {secs:.2f} s ({how}, including compilation)\n"
          + _coverage_note(cov, prompt, ev) + _start_note(run, role))
    results = {"start": ev_start, "sample": ev, "seconds": secs, "request": request.to_json(),
               **({"start_run": {"role": role, "request": run.get("request")}}
                  if role not in (None, "original") else {}),
               "dataset": args.dataset, "split_seed": args.split_seed, "prompt": prompt_json,
               "coverage": cov,
               "hypernet": str(args.hypernet), "sample_config": sc.to_json(), "seed": args.seed,
               **({"best_of": picked} if picked else {})}
    common.write_results(run_dir, results, md)
    common.emit(args, results, md)


def _start_note(run: dict | None, role: str | None) -> str:
    """The report's words for a start network that is not an original (``run``: its run's
    record, ``role`` its role: a Retrain, an unlearned run, another sample): sampled and
    reported as the request's unlearning of it, without a word, while it had forgotten classes
    of its own."""
    if role in (None, "original"):
        return ""
    req = run.get("request")
    try:
        what = f" (its request: {data.ForgetRequest.from_json(req).describe()})" if req else ""
    except data.ForgetRequestError:
        what = ""
    return (f"\nNote: the start network is {rundir._a(role)} run{what}, not an original: the "
            "hypernetwork learnt to unlearn from originals, and the sample also lacks what the "
            "start had forgotten.\n")


def _reached(spec, prompt, ev: dict) -> dict:
    """Whether the sample reached its forget target (its training-set forget loss at least
    half the prompted one), and how far the start network's forget loss lies from the corpus's
    starts (standard deviations of the log loss): a start trained with a recipe outside the
    corpus's came back unchanged (FA 99.7-100 %, exit 0, no word) when its forget loss lay
    8-12 of them below."""
    target = float(prompt.forget_target)
    got = ev.get("forget_loss")
    z = None
    if spec.scalar_mean:
        z = float((np.log(max(float(prompt.forget_start), 1e-12)) - spec.scalar_mean[0])
                  / spec.scalar_std[0])
    return {"forget_target_reached": None if got is None else bool(got >= 0.5 * target),
            "start_forget_loss_z": z}


def _coverage_note(cov: dict, prompt, ev: dict | None = None) -> str:
    """The report's words for what of the request the corpus did not hold (was: a forget target
    far outside the corpus's losses was sampled and reported with no word of it). ``ev``: the
    sample's evaluation, whose forget loss and accuracy a missed target names."""
    notes = []
    if cov["request_in_corpus"] is False:
        notes.append("this class set was no request of the corpus: it is served through the "
                     "class tokens")
    if cov["forget_target_in_range"] is False:
        lo, hi = cov["forget_loss_range"]
        notes.append(f"the forget target {float(prompt.forget_target):.4g} lies outside the "
                     f"corpus's forget losses {lo:.4g}..{hi:.4g} (5th-95th percentile): the "
                     "hypernetwork was not trained for it, compare the sample's forget loss")
    if cov.get("forget_target_reached") is False:
        z = cov.get("start_forget_loss_z")
        where = (f"; the start network's forget loss {float(prompt.forget_start):.3g} lies "
                 f"{abs(z):.1f} standard deviations {'below' if z < 0 else 'above'} the "
                 "corpus's starts (a network trained with another recipe?)"
                 if z is not None and abs(z) > 3 else "")
        # The loss alone: a sample at FA 0 % whose loss fell short was called "not forgotten"
        # beside its own table.
        got, acc = (ev or {}).get("forget_loss"), (ev or {}).get("forget_acc")
        loss = f" {got:.4g}" if got is not None else ""
        fa = f" (forget accuracy {100 * acc:.1f} %)" if acc is not None else ""
        notes.append(f"the sample did not reach its forget target: its forget loss{loss} is "
                     f"below half of {float(prompt.forget_target):.4g}{fa}{where}; compare "
                     "with Retrain, or unlearn it with a method (hyperforget unlearn)")
    return "".join(f"\nNote: {n}.\n" for n in notes)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("corpus", help="build (or resume) a HyperForget checkpoint corpus")
    common.add_data_args(p)
    p.add_argument("--out", required=True, type=common.path_arg,
                   help="corpus directory (resumable)")
    flags = configflags.add_config_flags(
        p, C.CorpusConfig, title="corpus", rename={"num_seeds": "seeds", "class_pairs": "pairs"},
        choices={"unlearn_layers": ("head", "all"), "forget_readout": ("zero", "train")})
    common.add_output_args(p)
    p.set_defaults(func=cmd_corpus, _corpus_flags=flags)

    p = sub.add_parser("hypertrain", help="train a DiHyFo-1/2 hypernetwork on a corpus")
    p.add_argument("--corpus", required=True, type=common.path_arg,
                   help="the corpus directory (`hyperforget corpus --out`)")
    p.add_argument("--out", required=True, type=common.path_arg,
                   help="output directory (resumes an interrupted run)")
    p.add_argument("--variant", choices=H.VARIANTS, default="dihyfo2",
                   help="dihyfo1 (one class, --forget-class) or dihyfo2 (every class; default)")
    p.add_argument("--forget-class", type=common.class_id, default=None,
                   help="DiHyFo-1's class (DiHyFo-2 serves every class and takes none)")
    train_flags = configflags.add_config_flags(p, DN.HyperTrainConfig,
                                               title="hypernetwork training")
    den_flags = configflags.add_config_flags(p, DN.DenoiserConfig, title="denoiser",
                                             rename={"num_layers": "layers",
                                                     "num_heads": "heads"},
                                             choices={"tokens": ("auto", "chunks", "units")})
    common.add_output_args(p)
    p.set_defaults(func=cmd_hypertrain, _hypertrain_flags=train_flags,
                   _denoiser_flags=den_flags)

    p = sub.add_parser("sample", help="sample an unlearned network from a hypernetwork")
    common.add_data_args(p)
    p.add_argument("--hypernet", required=True, type=common.path_arg,
                   help="'pretrained' (the shipped DiHyFo-2 for gpt_mlp on mnist5k), a .npz "
                        "file, or the --out of hypertrain")
    p.add_argument("--forget-class", type=common.class_id, nargs="+", required=True,
                   metavar="C", help="the class, or pair of classes, to forget (space-separated)")
    p.add_argument("--run-dir", type=common.path_arg, default=None,
                   help="start network from `hyperforget train` (of the hypernetwork's "
                        "architecture: --arch gpt_mlp for the pretrained one)")
    p.add_argument("--corpus", type=common.path_arg, default=None,
                   help="start from a corpus original instead of --run-dir (with --start-seed)")
    p.add_argument("--start-seed", type=seed_int, default=None,
                   help="corpus run to start from")
    p.add_argument("--forget-target", type=finite_float, default=None,
                   help="forget loss to reach (default: the hypernetwork's)")
    p.add_argument("--retain-target", type=finite_float, default=None,
                   help="retain loss to reach (default: the start's, times the corpus ratio; "
                        "DiHyFo-1 conditions on the forget loss only: with --best-of only)")
    sample_flags = configflags.add_config_flags(p, H.SampleConfig, title="sampling",
                                                choices={"method": ("ddim", "ddpm")})
    p.add_argument("--seed", type=seed_int, default=0,
                   help="seed of the diffusion noise and of the attacks (default 0)")
    p.add_argument("--out", required=True, type=common.path_arg,
                   help="output directory (never a run it reads)")
    common.add_output_args(p, quiet=False)
    p.set_defaults(func=cmd_sample, _sample_flags=sample_flags, _resumes=False)
