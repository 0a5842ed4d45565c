"""``hyperforget demo``: the end-to-end run on the embedded MNIST-5k.

    hyperforget demo --run-dir runs/demo

Trains the original classifier (MLP 784→256→256→10) and Retrain (the same recipe on D_r) for
several seeds, evaluates both against the class-removal request, then runs each method section
(∇τ, HyperForget, GAN unlearning) and writes ``report.md``, ``results.json`` and PNG plots into
the run directory. Budget: under 5 minutes on 2 CPU cores.

A section is a module with ``demo_section(ctx: DemoContext) -> {"markdown": str,
"results": dict}``; it reads what it needs from the context and writes its own files into
``ctx.run_dir``.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from hyperforget_jax import data, report
from hyperforget_jax.errors import ConfigError
from hyperforget_jax.evaluation import evaluate_unlearning
from hyperforget_jax.metrics import format_mean_std
from hyperforget_jax.models import Architecture, make_architecture
from hyperforget_jax.train import TrainConfig, fit

SECTIONS = {"gradtau": "hyperforget_jax.unlearn.demo",
            "hyperforget": "hyperforget_jax.hyperforget.demo",
            "gan": "hyperforget_jax.gan.demo"}


@dataclasses.dataclass
class DemoContext:
    """What the core of the demo hands to each section (index ``i`` ↔ ``seeds[i]``)."""

    run_dir: Path
    splits: data.Splits
    arch: Architecture
    train_config: TrainConfig
    request: data.ForgetRequest
    fsplit: data.ForgetSplit
    seeds: list[int]
    originals: list[Any]
    retrains: list[Any]
    retrain_seconds: list[float]
    evals_original: list[dict]
    evals_retrain: list[dict]
    progress: bool = True

    def evaluate(self, params: Any, seed: int = 0) -> dict:
        return evaluate_unlearning(self.arch, params, self.splits, self.fsplit, self.request,
                                   seed)


ROW_KEYS = (("retain_acc", "RA %", 100.0), ("forget_acc", "FA %", 100.0),
            ("test_acc", "TA %", 100.0), ("test_acc_kept", "TA kept %", 100.0),
            ("mia_loss_lr", "mia_loss_lr", 1.0), ("mia_entropy_lr", "mia_entropy_lr", 1.0),
            ("mia_efficacy_svc", "mia_efficacy_svc", 1.0))


def mean_std_row(name: str, evals: list[dict], extra: list[str] = ()) -> list[str]:
    """A table row of ``mean ± std`` over seeds for the :data:`ROW_KEYS` metrics."""
    return [name] + [format_mean_std([e[k] for e in evals], scale=s)
                     for k, _, s in ROW_KEYS] + list(extra)


def row_header(extra: list[str] = ()) -> list[str]:
    return ["model"] + [h for _, h, _ in ROW_KEYS] + list(extra)


def _plot(ctx: DemoContext, path: Path, methods: dict[str, list[dict]] | None = None) -> None:
    """Per-class test accuracy (mean ± std over seeds) of Original, Retrain and each method
    section that returned per-seed evaluations (∇τ). Built without pyplot, as
    :func:`~hyperforget_jax.gan.train.save_grid`: ``matplotlib.use("Agg")`` switched the
    process's backend, so ``cli.main(["demo"])`` in a notebook turned its inline plots off."""
    from matplotlib.figure import Figure

    series = [("Original", ctx.evals_original), ("Retrain", ctx.evals_retrain),
              *(methods or {}).items()]
    fig = Figure(figsize=(7, 3.2))
    ax = fig.subplots()
    k = ctx.splits.test.num_classes
    w = 0.8 / len(series)
    for i, (name, evals) in enumerate(series):
        acc = np.array([e["per_class_test_acc"] for e in evals]) * 100
        std = acc.std(0, ddof=1) if len(acc) > 1 else np.zeros(k)
        ax.bar(np.arange(k) + (i - (len(series) - 1) / 2) * w, acc.mean(0), w, yerr=std,
               label=name)
    ax.set_xticks(range(k))
    ax.set_xlabel("class")
    ax.set_ylabel("test accuracy %")
    ax.set_title(f"Per-class test accuracy, forgetting {ctx.request.describe()} "
                 f"({len(ctx.seeds)} seed{'s' * (len(ctx.seeds) != 1)})")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
    report.save_figure(fig, path)


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def run_demo(args) -> dict:
    t_start = time.perf_counter()
    splits = data.make_splits(data.load_mnist5k())
    request = data.ForgetRequest(classes=(args.forget_class,))
    fsplit = data.resolve_forget(splits.train, request)
    if args.seeds < 1:
        raise ConfigError(f"--seeds must be >= 1, got {args.seeds}")
    # "all" means every section that is installed (each method package ships its own).
    names = [n for n, m in SECTIONS.items() if _installed(m)] if args.sections == "all" else (
        [] if args.sections == "none" else [s.strip() for s in args.sections.split(",")])
    unknown = [s for s in names if s not in SECTIONS]
    if unknown:
        raise ConfigError(f"unknown demo section {unknown[0]!r}; choose from "
                             f"{', '.join(SECTIONS)}, all or none")
    twice = [s for i, s in enumerate(names) if s in names[:i]]
    if twice:     # ran twice, the report holding both and results.json the second
        raise ConfigError(f"demo section {twice[0]!r} is given twice in --sections; list each "
                          "once")
    identity = {"role": "demo", "forget_class": args.forget_class, "seeds": args.seeds,
                "sections": names}
    from hyperforget_jax.commands.common import open_run

    # The report, its table and plots are written at the end: an interrupted demo of other
    # settings must not leave the previous demo's beside its identity.
    outputs = ("results.json", "report.md", "per_class_accuracy.png", "gan_original.png",
               "gan_retrain.png", "gan_unlearned.png")
    with open_run(args.run_dir, identity, args, flag="--run-dir", replace_role=True,
                  outputs=outputs) as run:
        results, md = _run(args, run.path, splits, request, fsplit, names, t_start)
    from hyperforget_jax.commands.common import emit

    emit(args, results, md + f"\n\nwrote {run.path}/report.md, results.json and plots")
    return results


def _run(args, run_dir: Path, splits, request, fsplit, names, t_start):
    from hyperforget_jax.commands.common import progress

    # As every command's: off with --quiet and when stderr is not a terminal (a batch job's
    # log got a tqdm frame about ten times a second of each training).
    show = progress(args)
    cfg = TrainConfig()
    arch = make_architecture(cfg.arch)
    seeds = list(range(args.seeds))
    originals, retrains, r_secs = [], [], []
    for s in seeds:
        c = dataclasses.replace(cfg, seed=s)
        originals.append(fit(arch, splits.train, c, progress=show)[0].params)
        if s == seeds[0]:
            # One untimed epoch on D_r compiles Retrain's program. The first Retrain was timed
            # with its compilation against warm ∇τ runs: `--seeds 1` reported ≈ 9× where warm
            # runs give ≈ 4×.
            fit(arch, fsplit.retain, dataclasses.replace(c, epochs=1), progress=False)
        t0 = time.perf_counter()
        p = fit(arch, fsplit.retain, c, progress=show)[0].params
        p = jax_block(p)
        r_secs.append(time.perf_counter() - t0)
        retrains.append(p)
    ctx = DemoContext(run_dir, splits, arch, cfg, request, fsplit, seeds, originals, retrains,
                      r_secs, [], [], progress=show)
    ctx.evals_original = [ctx.evaluate(p, s) for p, s in zip(originals, seeds)]
    ctx.evals_retrain = [ctx.evaluate(p, s) for p, s in zip(retrains, seeds)]

    results: dict[str, Any] = {
        "request": request.to_json(), "seeds": seeds, "train_config": cfg.to_json(),
        "architecture": arch.to_json(),
        "original": ctx.evals_original, "retrain": ctx.evals_retrain,
        "retrain_seconds": r_secs}
    n_seeds = f"{len(seeds)} seed{'s' * (len(seeds) != 1)}"
    md = [f"# hyperforget demo: forgetting class {args.forget_class} of MNIST-5k\n",
          f"Classifier {arch.name} ({arch.param_count:,} parameters), {n_seeds}, "
          f"mean ± std. Train / val / test = {len(splits.train)} / {len(splits.val)} / "
          f"{len(splits.test)} images; forget set {len(fsplit.forget)} images.\n",
          "## Original vs Retrain\n",
          report.markdown_table(row_header(), [mean_std_row("Original", ctx.evals_original),
                                               mean_std_row("Retrain", ctx.evals_retrain)]),
          "\nMIA non-members for class removal are held-out test images of the forgotten "
          "class (see `hyperforget_jax.evaluation`).\n",
          "![per-class accuracy](per_class_accuracy.png)\n\nPer-class test accuracy of "
          "Original, Retrain and ∇τ (when its section runs), mean ± std over seeds.\n"]
    for name in names:
        t0 = time.perf_counter()
        section: Callable = importlib.import_module(SECTIONS[name]).demo_section
        out = section(ctx)
        results[name] = {**out["results"], "section_seconds": time.perf_counter() - t0}
        md.append(out["markdown"])
    # Drawn after the sections so the methods they ran (∇τ) stand beside Original and Retrain.
    _plot(ctx, run_dir / "per_class_accuracy.png",
          {label: results[name]["evals"] for name, label in (("gradtau", "∇τ"),)
           if isinstance(results.get(name), dict) and results[name].get("evals")})
    results["total_seconds"] = time.perf_counter() - t_start
    md.append(f"\nTotal demo time: {results['total_seconds']:.0f} s.\n")
    from hyperforget_jax.commands.common import write_results

    write_results(run_dir, results, "\n".join(md))
    return results, "\n".join(md)


def jax_block(tree):
    import jax

    return jax.block_until_ready(tree)
