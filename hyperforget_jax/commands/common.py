"""Argument groups and helpers shared by the CLI subcommands."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import jax

from hyperforget_jax import data, report
from hyperforget_jax.checkpoint import Checkpointer
from hyperforget_jax.errors import CheckpointError, ConfigError
from hyperforget_jax.models import Architecture, make_architecture
from hyperforget_jax.train import TrainConfig, fit, init_state, make_optimizer


def add_data_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--dataset", default="mnist5k", choices=data.DATASETS,
                   help="mnist5k (embedded, default), digits (sklearn) or a prepared "
                        "tensorflow-datasets set")
    g.add_argument("--data-dir", default=None,
                   help="tensorflow-datasets data_dir (default: $TFDS_DATA_DIR or "
                        "~/tensorflow_datasets)")
    g.add_argument("--split-seed", type=int, default=0,
                   help="seed of the train/val/test split (default 0)")


def add_request_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    g = p.add_argument_group("forget request (exactly one)")
    m = g.add_mutually_exclusive_group(required=required)
    m.add_argument("--forget-class", type=int, nargs="+", metavar="C",
                   help="forget every training sample of these classes")
    m.add_argument("--forget-fraction", type=float, metavar="F",
                   help="forget a random fraction F in (0, 1) of the training set")
    m.add_argument("--forget-indices", metavar="I,J,...",
                   help="comma-separated training-set indices to forget")
    g.add_argument("--forget-seed", type=int, default=0, help="seed of the random subset")


def add_train_args(p: argparse.ArgumentParser) -> None:
    d = TrainConfig()
    g = p.add_argument_group("training recipe")
    g.add_argument("--arch", default=d.arch, help="gpt_mlp, mlp (default), cnn or resnet18")
    g.add_argument("--epochs", type=int, default=d.epochs)
    g.add_argument("--batch-size", type=int, default=d.batch_size)
    g.add_argument("--lr", type=float, default=d.lr)
    g.add_argument("--weight-decay", type=float, default=d.weight_decay)
    g.add_argument("--seed", type=int, default=0, help="model seed (init and batch order)")


def train_config_from_args(args) -> TrainConfig:
    return TrainConfig(arch=args.arch, epochs=args.epochs, batch_size=args.batch_size,
                       lr=args.lr, weight_decay=args.weight_decay, seed=args.seed)


def load_splits(args) -> data.Splits:
    return data.make_splits(data.load_dataset(args.dataset, args.data_dir), seed=args.split_seed)


def request_from_args(args) -> data.ForgetRequest | None:
    if getattr(args, "forget_class", None) is not None:
        return data.ForgetRequest(classes=tuple(args.forget_class))
    if getattr(args, "forget_fraction", None) is not None:
        return data.ForgetRequest(fraction=args.forget_fraction, seed=args.forget_seed)
    if getattr(args, "forget_indices", None) is not None:
        try:
            idx = tuple(int(s) for s in args.forget_indices.split(",") if s.strip())
        except ValueError as e:
            raise ConfigError(f"--forget-indices must be comma-separated integers, got "
                              f"{args.forget_indices!r}") from e
        return data.ForgetRequest(indices=idx)
    return None


def architecture_for(arch_name: str, splits: data.Splits) -> Architecture:
    return make_architecture(arch_name, splits.train.x.shape[1:], splits.train.num_classes)


def run_meta(args, arch: Architecture, cfg: TrainConfig, request=None, role="original") -> dict:
    return {"role": role, "architecture": arch.to_json(), "train_config": cfg.to_json(),
            "dataset": args.dataset, "split_seed": args.split_seed,
            "request": request.to_json() if request is not None else None}


def train_run(run_dir: Path, arch: Architecture, train_ds: data.Dataset, cfg: TrainConfig,
              meta: dict, progress: bool = True) -> tuple[Any, float]:
    """Trains (resuming from ``run_dir/checkpoints`` if present) and returns (params, seconds)."""
    t0 = time.perf_counter()
    with Checkpointer(run_dir / "checkpoints", max_to_keep=2) as ckpt:
        state, _ = fit(arch, train_ds, cfg, checkpointer=ckpt, meta=meta, progress=progress)
    jax.block_until_ready(state.params)
    return state.params, time.perf_counter() - t0


def load_run(run_dir: str | Path) -> tuple[Architecture, Any, dict]:
    """Loads the final parameters of a run written by ``hyperforget train`` / ``retrain``."""
    run_dir = Path(run_dir).expanduser().absolute()
    if not (run_dir / "checkpoints").is_dir():
        raise CheckpointError(f"no trained model in {run_dir}; run `hyperforget train --run-dir "
                              f"{run_dir}` first")
    with Checkpointer(run_dir / "checkpoints") as ckpt:
        meta = ckpt.restore_meta()
        try:
            arch = Architecture.from_json(meta["architecture"])
            cfg = TrainConfig(**meta["train_config"])
        except (KeyError, TypeError) as e:
            raise CheckpointError(f"checkpoint in {run_dir} has no hyperforget run metadata; "
                                  "was it written by `hyperforget train`?") from e
        template = init_state(arch, make_optimizer(cfg), jax.random.key(0))
        state, meta = ckpt.restore(template)
    return arch, state.params, meta


def write_results(run_dir: Path, results: dict, markdown: str) -> None:
    report.write_json(run_dir / "results.json", results)
    report.atomic_write(run_dir / "report.md", markdown)
