"""Subprocess helper of the kill-and-resume tests (tests/test_reliability_resume.py).

Runs one job and, on request, SIGKILLs *itself* at an exact point inside Orbax, which a kill from
outside can only hit by luck:

    python tests/reliability_worker.py [FAULT] cli -- train --run-dir R --dataset digits ...
    python tests/reliability_worker.py [FAULT] [--data NPZ] gan DIR EPOCHS
    python tests/reliability_worker.py [FAULT] [--data NPZ] corpus DIR
    python tests/reliability_worker.py overwrite DIR

FAULT (at most one):
  --kill-before-commit STEP  die once step STEP (or, with ``any``, the first step) is fully
                             written to its ``*.orbax-checkpoint-tmp`` directory, just before
                             the rename that commits it;
  --kill-mid-prune STEP      die half-way through deleting the files of step STEP (dropped by
                             retention into .trash/);
  --kill-mid-shard-write     (corpus) die after the first array of a shard is written to its
                             temporary directory.

``gan`` and ``corpus`` train on sklearn's digits split as ``data.make_splits(data.load_digits())``
(the tests' ``digits_splits``), or on the same arrays read from ``--data`` (written by
:func:`save_splits`), which spares the victim the ~2 s import of scikit-learn.

``overwrite`` saves step 1, then saves step 1 again and dies after the old copy was moved aside
and before the new one is committed (the replace window of ``Checkpointer.save``).

The process is the victim: every injected fault ends it with SIGKILL, no cleanup handlers run,
exactly as after ``kill -9`` or a power cut.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path


def _die() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def install_faults(before_commit: int | str | None, mid_prune: int | None) -> None:
    from orbax.checkpoint._src.path import atomicity

    if before_commit is not None:
        rename = atomicity.async_path.rename

        async def killing_rename(src, dst, *a, **k):
            step = Path(dst).name
            if str(before_commit) in (step, "any"):
                _die()
            return await rename(src, dst, *a, **k)

        atomicity.async_path.rename = killing_rename

    if mid_prune is not None:
        import shutil

        rmtree = shutil.rmtree

        def killing_rmtree(path, *a, **k):
            # Orbax's retention renames a dropped step into ".trash/STEP"; the Checkpointer then
            # deletes the trash (once the save that dropped it has committed).
            if Path(path).name == ".trash" and (Path(path) / str(mid_prune)).exists():
                files = sorted(p for p in Path(path).rglob("*") if p.is_file())
                for f in files[: max(1, len(files) // 2)]:
                    f.unlink()
                _die()
            return rmtree(path, *a, **k)

        shutil.rmtree = killing_rmtree


SPLITS = ("train", "val", "test")


def save_splits(splits, path) -> None:
    """Writes the arrays of ``splits`` (a ``data.Splits``) for ``--data``."""
    import numpy as np

    arrays = {}
    for name, ds in zip(SPLITS, splits):
        arrays.update({f"{name}_x": ds.x, f"{name}_y": ds.y,
                       f"{name}_meta": np.asarray([ds.name, str(ds.num_classes)])})
    np.savez(path, **arrays)


def load_splits(path: str | None):
    """``--data``'s splits, bit for bit those saved; without it, sklearn's digits split."""
    from hyperforget_jax import data

    if path is None:
        return data.make_splits(data.load_digits())
    import numpy as np

    with np.load(path) as f:
        return data.Splits(*(data.Dataset(f[f"{n}_x"], f[f"{n}_y"], int(f[f"{n}_meta"][1]),
                                          str(f[f"{n}_meta"][0])) for n in SPLITS))


def run_gan(directory: str, epochs: int, data_file: str | None = None) -> None:
    from hyperforget_jax.checkpoint import Checkpointer
    from hyperforget_jax.gan.train import train_gan

    splits = load_splits(data_file)
    with Checkpointer(directory, max_to_keep=2) as ckpt:
        train_gan(splits.train, gan_config(epochs), checkpointer=ckpt, save_every=1)


def gan_config(epochs: int):
    from hyperforget_jax.gan.train import GANConfig

    return GANConfig(arch="mlp", latent_dim=16, epochs=epochs, batch_size=64, lr=1e-3, seed=3)


def corpus_config():
    """Two one-seed shards (one per fleet) of three single-class requests. Every seed gets
    the same recipe (one learning rate, one epoch), and the self-distillation runs 4 steps
    (1,258 training digits in batches of 256) with a checkpoint after each: every run
    between two checkpoints has one length, so a shard compiles one distillation program,
    not one per length."""
    from hyperforget_jax.hyperforget.corpus import CorpusConfig

    return CorpusConfig(num_seeds=2, fleet_size=1, test_fraction=0.5, lr_range=(2e-3, 2e-3),
                        epochs_range=(1, 1), forget_classes=(0, 1, 2), class_pairs=0,
                        unlearn_epochs=1, unlearn_batch_size=256, checkpoints=4)


def run_corpus(directory: str, kill_mid_shard_write: bool = False,
               data_file: str | None = None) -> None:
    from hyperforget_jax.hyperforget.corpus import build_corpus

    if kill_mid_shard_write:
        import numpy as np

        save = np.save

        def save_then_die(path, *a, **k):
            # First array of the first shard written into its temporary directory: die.
            save(path, *a, **k)
            if ".shard_" in os.fspath(path):
                _die()

        np.save = save_then_die

    splits = load_splits(data_file)
    build_corpus(directory, corpus_config(), splits, "digits", progress=False)


def run_overwrite(directory: str) -> None:
    import numpy as np

    from hyperforget_jax.checkpoint import Checkpointer

    with Checkpointer(directory) as ckpt:
        ckpt.save(1, {"w": np.ones(3, np.float32)}, {"v": "old"})
        real_replace = os.replace

        def replace_then_die(src, dst):
            real_replace(src, dst)
            if ".overwritten-" in os.fspath(dst):
                _die()

        os.replace = replace_then_die
        ckpt.save(1, {"w": np.full(3, 2.0, np.float32)}, {"v": "new"})


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--kill-before-commit", help="a step number, or 'any' (the first commit)")
    p.add_argument("--kill-mid-prune", type=int)
    p.add_argument("--kill-mid-shard-write", action="store_true",
                   help="corpus: die after the first array file of a shard is written")
    p.add_argument("--data", help="gan / corpus: the splits, an .npz written by save_splits")
    p.add_argument("job", choices=("cli", "gan", "corpus", "overwrite"))
    p.add_argument("rest", nargs=argparse.REMAINDER)
    a = p.parse_args(argv)
    install_faults(a.kill_before_commit, a.kill_mid_prune)
    rest = a.rest[1:] if a.rest[:1] == ["--"] else a.rest
    if a.job == "cli":
        from hyperforget_jax import cli

        return cli.main(rest)
    if a.job == "gan":
        run_gan(rest[0], int(rest[1]), a.data)
        return 0
    if a.job == "corpus":
        run_corpus(rest[0], a.kill_mid_shard_write, a.data)
        return 0
    run_overwrite(rest[0])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
