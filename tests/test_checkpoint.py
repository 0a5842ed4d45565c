"""Tests for hyperforget_jax.checkpoint: round trips, step bookkeeping, and every failure mode
(missing, wrong architecture, corrupt files, NaN) surfacing as a named error."""

from __future__ import annotations

import codecs
import functools
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from hyperforget_jax.checkpoint import (Checkpointer, load_params, save_params,
                                        silence_abandoned_reads)
from hyperforget_jax.errors import CheckpointError, ConfigError, NonFiniteError


class TrainState(NamedTuple):
    # Same shape as hyperforget_jax.train.TrainState; redefined so this test is independent.
    step: jax.Array
    params: Any
    opt_state: Any


class MLP(nn.Module):
    hidden: int = 16

    @nn.compact
    def __call__(self, x):
        return nn.Dense(3)(nn.relu(nn.Dense(self.hidden)(x)))


@functools.lru_cache(maxsize=None)  # states are immutable; re-creating them costs compiles
def make_state(hidden: int = 16, seed: int = 0, step: int = 0) -> TrainState:
    return _build_state(hidden, seed, step)


# One compile per shape instead of dozens of eager op compiles: keeps the file fast on 2 cores.
@functools.partial(jax.jit, static_argnums=(0, 1))
def _build_state(hidden: int, seed: int, step) -> TrainState:
    params = MLP(hidden).init(jax.random.PRNGKey(seed), jnp.ones((1, 5)))
    tx = optax.adamw(1e-2)
    opt_state = tx.init(params)
    # One real update so the Adam moments and count are non-trivial (not all zeros).
    grads = jax.tree.map(lambda p: jnp.full_like(p, 0.5 + seed), params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return TrainState(jnp.asarray(step, jnp.int32), optax.apply_updates(params, updates), opt_state)


@pytest.fixture(scope="module")
def state() -> TrainState:
    return make_state()


META = {
    "config": {"arch": "mlp", "lr": 0.01, "epochs": 3},
    "split": {"train": [0, 1, 2], "seed": 7},
    "forget": {"classes": [3], "kind": "class"},
    "arch": "mlp",
    "n_params": 147,
    "note": None,
    "ok": True,
}


def assert_trees_equal(a, b):
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        assert np.asarray(x).dtype == np.asarray(y).dtype
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def step_dirs(directory: Path) -> list[str]:
    return sorted(p.name for p in Path(directory).iterdir() if p.is_dir())


def data_files(step_dir: Path) -> list[Path]:
    # Orbax/OCDBT keeps array bytes in "d/" folders under the state item.
    files = [p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d"]
    assert files, f"expected array data files under {step_dir / 'state'}"
    return files


# --------------------------------------------------------------------------- round trips


def test_round_trip_exact_and_namedtuples_preserved(tmp_path, state):
    with Checkpointer(tmp_path / "run") as ckpt:
        ckpt.save(3, state, META)
        template = make_state(seed=1)  # same structure, different values
        restored, meta = ckpt.restore(template)
    assert_trees_equal(restored, state)
    assert type(restored) is TrainState
    assert type(restored.opt_state[0]) is type(state.opt_state[0])  # optax ScaleByAdamState
    assert type(restored.opt_state[0]).__name__ == "ScaleByAdamState"
    assert int(restored.opt_state[0].count) == 1
    assert meta == META


def test_restore_into_shape_dtype_struct_template(tmp_path, state):
    with Checkpointer(tmp_path) as ckpt:
        ckpt.save(1, state)
        abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)
        restored, meta = ckpt.restore(abstract)
    assert_trees_equal(restored, state)
    assert meta == {}


def test_meta_with_numpy_scalars_is_normalised(tmp_path, state):
    with Checkpointer(tmp_path) as ckpt:
        ckpt.save(1, state, {"n_params": np.int64(147), "acc": np.float32(0.5)})
        assert ckpt.restore_meta() == {"n_params": 147, "acc": 0.5}


def test_restore_specific_step(tmp_path):
    with Checkpointer(tmp_path, max_to_keep=None) as ckpt:
        for s in (1, 2):
            ckpt.save(s, make_state(seed=s, step=s), {"step": s})
        restored, meta = ckpt.restore(make_state(), step=1)
        assert int(restored.step) == 1 and meta == {"step": 1}
        assert_trees_equal(restored, make_state(seed=1, step=1))
        with pytest.raises(CheckpointError, match=r"no checkpoint for step 7.*\[1, 2\]"):
            ckpt.restore(make_state(), step=7)


# --------------------------------------------------------------------------- step bookkeeping


def test_latest_all_steps_and_max_to_keep_pruning(tmp_path, state):
    with Checkpointer(tmp_path, max_to_keep=2) as ckpt:
        assert ckpt.latest_step() is None and ckpt.all_steps() == []
        for s in range(1, 5):
            ckpt.save(s, state)
        assert ckpt.all_steps() == [3, 4]
        assert ckpt.latest_step() == 4
    assert step_dirs(tmp_path) == ["3", "4"]


def test_resume_new_checkpointer_sees_latest(tmp_path):
    with Checkpointer(tmp_path, max_to_keep=None) as ckpt:
        for s in range(1, 6):
            ckpt.save(s, make_state(step=s), {"step": s})
    with Checkpointer(tmp_path, max_to_keep=None) as again:
        assert again.latest_step() == 5
        assert again.all_steps() == [1, 2, 3, 4, 5]
        restored, meta = again.restore(make_state())
    assert int(restored.step) == 5 and meta == {"step": 5}


def test_save_over_existing_step_overwrites(tmp_path):
    a, b = make_state(seed=0, step=2), make_state(seed=1, step=2)
    with Checkpointer(tmp_path) as ckpt:
        ckpt.save(2, a, {"v": "a"})
        ckpt.save(2, b, {"v": "b"})
        assert ckpt.all_steps() == [2]
        restored, meta = ckpt.restore(make_state())
    assert_trees_equal(restored, b)
    assert meta == {"v": "b"}
    assert step_dirs(tmp_path) == ["2"]  # no backup copy left behind
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".overwritten")]


def test_saving_an_older_step_keeps_the_newest(tmp_path, state):
    with Checkpointer(tmp_path, max_to_keep=3) as ckpt:
        for s in (3, 4, 5):
            ckpt.save(s, state)
        ckpt.save(2, state)  # e.g. re-saving after resuming from an earlier point
        assert ckpt.all_steps() == [2, 4, 5]
        assert ckpt.latest_step() == 5


def test_fit_and_train_gan_save_their_end_whatever_the_interval(tmp_path, digits_splits):
    """A Checkpointer with save_interval_steps 2 and a 3-epoch run: fit kept epoch 2 as the
    run's latest (a later load got the epoch-2 model), train_gan saved nothing."""
    from hyperforget_jax import models, train
    from hyperforget_jax.gan.train import GANConfig, train_gan

    ds = digits_splits.train.subset(np.arange(128))
    arch = models.make_architecture("mlp", ds.x.shape[1:])
    with Checkpointer(tmp_path / "fit", save_interval_steps=2) as ck:
        state, _ = train.fit(arch, ds, train.TrainConfig(epochs=3, batch_size=64), checkpointer=ck)
    with Checkpointer(tmp_path / "fit") as ck:
        assert ck.all_steps() == [2, 3]
        restored = ck.restore(state)[0].params
        for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(state.params)):
            np.testing.assert_array_equal(a, b)
    with Checkpointer(tmp_path / "gan", save_interval_steps=2) as ck:
        train_gan(ds, GANConfig(epochs=3, batch_size=64, latent_prior="normal"), checkpointer=ck)
    with Checkpointer(tmp_path / "gan") as ck:
        assert ck.latest_step() == 3


def test_save_interval_steps_and_force(tmp_path, state):
    with Checkpointer(tmp_path, save_interval_steps=5) as ckpt:
        ckpt.save(3, state)
        assert ckpt.all_steps() == []
        ckpt.save(5, state)
        ckpt.save(7, state, force=True)
        assert ckpt.all_steps() == [5, 7]


def test_step_must_be_an_integer(tmp_path, state):
    # int() truncated: save(1.5) wrote step 1 (replacing it), restore(step=1.9) read step 1.
    with Checkpointer(tmp_path) as ckpt:
        ckpt.save(np.int64(1), state)
        for bad in (1.5, "2", True, -1):
            with pytest.raises(ConfigError, match="integer >= 0"):
                ckpt.save(bad, state)
        with pytest.raises(ConfigError, match="integer >= 0"):
            ckpt.restore(state, step=1.9)
        assert ckpt.all_steps() == [1]
        assert_trees_equal(ckpt.restore(state, step=jnp.int32(1))[0], state)


def test_relative_directory_is_made_absolute(tmp_path, monkeypatch, state):
    monkeypatch.chdir(tmp_path)
    with Checkpointer(os.path.join("runs", "rel")) as ckpt:
        assert ckpt.directory.is_absolute()
        assert ckpt.directory == tmp_path / "runs" / "rel"
        ckpt.save(1, state)
        restored, _ = ckpt.restore(make_state(seed=1))
    assert_trees_equal(restored, state)
    assert (tmp_path / "runs" / "rel" / "1").is_dir()


def test_bad_options_rejected(tmp_path):
    with pytest.raises(ConfigError, match="max_to_keep"):
        Checkpointer(tmp_path, max_to_keep=0)
    with pytest.raises(ConfigError, match="save_interval_steps"):
        Checkpointer(tmp_path, save_interval_steps=0)
    # A bool is an int to Python: max_to_keep=True kept one step, False was refused as < 1
    # only by accident of its value.
    with pytest.raises(ConfigError, match="max_to_keep"):
        Checkpointer(tmp_path, max_to_keep=True)
    with pytest.raises(ConfigError, match="save_interval_steps"):
        Checkpointer(tmp_path, save_interval_steps=True)


def test_unwritable_directory_names_path(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    with pytest.raises(CheckpointError, match="a_file"):
        Checkpointer(blocker / "run")


# --------------------------------------------------------------------------- failure modes


def test_restore_from_empty_dir(tmp_path):
    with Checkpointer(tmp_path / "empty") as ckpt:
        with pytest.raises(CheckpointError, match=r"no checkpoint in .*empty.*train first"):
            ckpt.restore(make_state())
        with pytest.raises(CheckpointError, match="no checkpoint in"):
            ckpt.restore_meta()


def test_mismatched_template_shape_names_leaf_and_shapes(tmp_path, state):
    with Checkpointer(tmp_path) as ckpt:
        ckpt.save(1, state)
        with pytest.raises(CheckpointError) as info:
            ckpt.restore(make_state(hidden=32))
    msg = str(info.value)
    assert "another architecture" in msg
    # Template order is step, params, opt_state; Dense_0 (the 16->3 output layer, created
    # first) has an equal bias, so its kernel is the first differing leaf.
    assert "'params.params.Dense_0.kernel'" in msg
    assert "(16, 3) in the checkpoint" in msg and "(32, 3) in the template" in msg


def test_mismatched_template_structure_and_dtype(tmp_path, state):
    with Checkpointer(tmp_path) as ckpt:
        ckpt.save(1, state)
        extra = state._replace(params={"params": {**state.params["params"], "x": jnp.ones(2)}})
        with pytest.raises(CheckpointError, match=r"params\.params\.x"):
            ckpt.restore(extra)
        # Orbax alone would silently cast float32 -> bfloat16; we refuse instead.
        bf16 = jax.tree.map(
            lambda x: x.astype(jnp.bfloat16) if x.dtype == jnp.float32 else x, state
        )
        with pytest.raises(CheckpointError, match="dtype float32 in the checkpoint"):
            ckpt.restore(bf16)


@pytest.mark.parametrize("damage", ["garbage", "delete", "truncate"])
def test_corrupt_array_files_raise_checkpoint_error(tmp_path, state, damage):
    with Checkpointer(tmp_path) as ckpt:
        ckpt.save(4, state, META)
        ckpt.wait_until_finished()  # saves commit in the background
        rng = np.random.default_rng(0)
        for f in data_files(tmp_path / "4"):
            if damage == "garbage":
                f.write_bytes(rng.bytes(f.stat().st_size))
            elif damage == "delete":
                f.unlink()
            else:
                f.write_bytes(f.read_bytes()[:10])
        with pytest.raises(CheckpointError, match=r"checkpoint .*[/\\]4 is corrupt") as info:
            ckpt.restore(make_state())
    assert "restore an earlier step" in str(info.value)


def _asyncio_record(msg: str) -> logging.LogRecord:
    return logging.LogRecord("asyncio", logging.ERROR, __file__, 1, msg, None, None)


def test_silenced_abandoned_reads_stay_silenced_after_a_failed_read(tmp_path, state):
    """The CLI silences abandoned Orbax reads for the whole process; a failed read inside it
    (which installs and undoes its own filters) must not undo the CLI's, or the noise of reads
    collected later, at exit, reaches stderr after the one-line error."""
    noise = _asyncio_record("Task exception was never retrieved\nfuture: <Task "
                            "exception=Exception('Encountered error while reading array index')>")
    other = _asyncio_record("Task exception was never retrieved\nfuture: <Task "
                            "exception=ValueError('a user bug')>")
    logger = logging.getLogger("asyncio")
    hook = sys.unraisablehook
    undo = silence_abandoned_reads()
    try:
        with Checkpointer(tmp_path) as ckpt:
            ckpt.save(1, state)
            ckpt.wait_until_finished()
            for f in data_files(tmp_path / "1"):
                f.write_bytes(f.read_bytes()[:10])
            with pytest.raises(CheckpointError, match="corrupt"):
                ckpt.restore(make_state())
        assert not logger.filter(noise)  # still dropped
        assert logger.filter(other)  # other asyncio errors still show
    finally:
        undo()
    assert logger.filter(noise)  # the undo restores the logger
    assert sys.unraisablehook is hook


def test_corrupt_array_metadata_raises_checkpoint_error(tmp_path, state):
    with Checkpointer(tmp_path) as ckpt:
        ckpt.save(1, state)
        ckpt.wait_until_finished()
        (tmp_path / "1" / "state" / "_METADATA").write_text("{not json")
        with pytest.raises(CheckpointError, match="corrupt"):
            ckpt.restore(make_state())


def test_corrupt_meta_json_raises_checkpoint_error(tmp_path, state):
    with Checkpointer(tmp_path) as ckpt:
        ckpt.save(1, state, META)
        ckpt.wait_until_finished()
        meta_file = tmp_path / "1" / "meta" / "metadata"
        on_disk = json.loads(meta_file.read_text())     # the file we corrupt is the meta
        assert on_disk.pop("jax_settings") == ckpt.written_under() and on_disk == META
        meta_file.write_text('{"config": {"arch": "ml')
        with pytest.raises(CheckpointError, match=r"[/\\]1 is corrupt"):
            ckpt.restore_meta()
        with pytest.raises(CheckpointError, match=r"[/\\]1 is corrupt"):
            ckpt.restore(make_state())


def test_nan_state_refused_and_nothing_written(tmp_path, state):
    with Checkpointer(tmp_path) as ckpt:
        ckpt.save(1, state)
        ckpt.wait_until_finished()
        before = step_dirs(tmp_path)
        bad = state._replace(
            params=jax.tree.map(lambda x: x.at[0].set(jnp.nan), state.params)
        )
        with pytest.raises(NonFiniteError, match="step 2"):
            ckpt.save(2, bad)
        inf_opt = state._replace(
            opt_state=jax.tree.map(
                lambda x: jnp.full_like(x, jnp.inf) if x.ndim else x, state.opt_state
            )
        )
        with pytest.raises(NonFiniteError, match="opt_state"):
            ckpt.save(1, inf_opt)  # refused overwrite must keep the good step 1
        assert ckpt.all_steps() == [1]
        assert step_dirs(tmp_path) == before
        restored, _ = ckpt.restore(make_state())
    assert_trees_equal(restored, state)


def test_a_stored_nan_reads_as_corrupt(tmp_path, state, monkeypatch):
    """docs/guarantees.md §5: a restored checkpoint holding NaN/inf is reported as corrupt
    (save() never writes one, so its bytes were damaged), never handed back as a state. Written
    here with save's refusal switched off, as a damaged file or another writer would leave it;
    no other test reached that check."""
    from hyperforget_jax import checkpoint_checks

    bad = state._replace(params=jax.tree.map(lambda x: x.at[0].set(jnp.nan), state.params))
    with Checkpointer(tmp_path) as ckpt:
        with monkeypatch.context() as m:
            m.setattr(checkpoint_checks, "first_non_finite", lambda tree: None)
            ckpt.save(1, bad)
            ckpt.wait_until_finished()
        with pytest.raises(CheckpointError, match="corrupt.*NaN/inf"):
            ckpt.restore(make_state())


def test_non_array_leaf_refused_and_nothing_written(tmp_path, state):
    with Checkpointer(tmp_path) as ckpt:
        with pytest.raises(CheckpointError, match=r"leaf 'name' is a str"):
            ckpt.save(1, {"w": jnp.ones(2), "name": "mlp"})
        assert ckpt.all_steps() == []
    assert list(tmp_path.iterdir()) == []  # not even an Orbax tmp directory


def test_failed_overwrite_keeps_previous_step(tmp_path, state, monkeypatch):
    with Checkpointer(tmp_path) as ckpt:
        ckpt.save(1, state, {"v": "old"})

        def disk_full(*args, **kwargs):
            (tmp_path / "1.orbax-checkpoint-tmp").mkdir()  # what a real failed write leaves
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(ckpt._manager, "save", disk_full)
        with pytest.raises(CheckpointError, match="No space left"):
            ckpt.save(1, make_state(seed=1), {"v": "new"})
        monkeypatch.undo()
        assert ckpt.all_steps() == [1]
        restored, meta = ckpt.restore(make_state(seed=1))
    assert_trees_equal(restored, state)
    assert meta == {"v": "old"}
    assert step_dirs(tmp_path) == ["1"]


def test_non_json_meta_refused_and_nothing_written(tmp_path, state):
    with Checkpointer(tmp_path) as ckpt:
        with pytest.raises(CheckpointError, match="JSON"):
            ckpt.save(1, state, {"fn": print})
        assert ckpt.all_steps() == []


# ------------------------------------------------------------------------ save_params/load_params


def test_save_load_params_round_trip(tmp_path, state):
    path = tmp_path / "out" / "params"
    save_params(path, state.params, {"arch": "mlp", "n_params": 147})
    params, meta = load_params(path, template=make_state(seed=1).params)
    assert_trees_equal(params, state.params)
    assert meta == {"arch": "mlp", "n_params": 147}

    raw, _ = load_params(path)  # no template: nested dicts of NumPy arrays
    assert isinstance(raw, dict) and isinstance(raw["params"]["Dense_0"], dict)
    assert all(isinstance(x, np.ndarray) for x in jax.tree.leaves(raw))
    np.testing.assert_array_equal(
        raw["params"]["Dense_0"]["kernel"], np.asarray(state.params["params"]["Dense_0"]["kernel"])
    )

    # Overwriting an existing params checkpoint replaces it.
    other = make_state(seed=2).params
    save_params(path, other, {"v": 2})
    params, meta = load_params(path, template=other)
    assert_trees_equal(params, other)
    assert meta == {"v": 2}
    assert sorted(p.name for p in path.parent.iterdir()) == ["params"]


def test_save_load_params_errors(tmp_path, state):
    with pytest.raises(CheckpointError, match="no params checkpoint"):
        load_params(tmp_path / "missing")
    path = tmp_path / "p"
    save_params(path, state.params)
    with pytest.raises(CheckpointError, match="another architecture"):
        load_params(path, template=make_state(hidden=8).params)
    with pytest.raises(NonFiniteError):
        save_params(tmp_path / "nan", {"w": jnp.array([1.0, jnp.nan])})
    assert not (tmp_path / "nan").exists()

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("precious")
    with pytest.raises(CheckpointError, match="refusing to overwrite"):
        save_params(foreign, state.params)
    assert (foreign / "keep.txt").read_text() == "precious"
    with pytest.raises(CheckpointError, match="not a params checkpoint"):
        load_params(foreign)

    (path / "meta" / "metadata").write_text("garbage{")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_params(path)


def test_a_path_orbax_would_spell_otherwise_is_refused(tmp_path, state, monkeypatch):
    # Python names files in the locale's encoding, Orbax's TensorStore in UTF-8. A file name
    # the locale could not decode (surrogate escapes, here under UTF-8) failed the write with
    # "Unable to cast", reported as a full disk; under a Latin-1 locale a run directory "ü"
    # got the metadata and its arrays went to "Ã¼" (exit 0, no weights in the checkpoint).
    monkeypatch.setattr(os, "fsencode", lambda p: os.fspath(p).encode("latin-1"))
    monkeypatch.setattr(sys, "getfilesystemencoding", lambda: "iso8859-1")
    with pytest.raises(ConfigError, match="UTF-8 locale .* or pass an ASCII path"):
        save_params(tmp_path / "r\u2207" / "p", state.params)    # not even Latin-1
    with pytest.raises(ConfigError, match=r"r\\xfc/p is spelt differently .* \(UTF-8\)"):
        save_params(tmp_path / "r\xfc" / "p", state.params)
    with pytest.raises(ConfigError, match="spelt differently"):
        Checkpointer(tmp_path / "r\xfc" / "c")
    assert sorted(os.listdir(tmp_path)) == []          # refused before anything is written
    save_params(tmp_path / "ascii" / "p", state.params)    # what each locale spells alike


def test_a_name_that_is_not_utf8_is_not_told_to_change_the_locale(tmp_path, state):
    # Under a UTF-8 locale, a directory made under a Latin-1 one (byte 0xfc, argv's "\udcfc")
    # was refused as "spelt differently by this process's file names (utf-8) and by Orbax's
    # array writer (UTF-8)", told to run under a UTF-8 locale: it already did, and no locale
    # helps. A lone surrogate (no bytes at all) was a raw UnicodeEncodeError from fsencode.
    if codecs.lookup(sys.getfilesystemencoding()).name != "utf-8":
        pytest.skip("the case of a UTF-8 locale")
    for bad in ("r\udcfc", "r\ud800"):
        with pytest.raises(ConfigError, match="not UTF-8 .* rename it") as e:
            save_params(tmp_path / bad / "p", state.params)
        assert "locale (" not in str(e.value) and "\\ud" in str(e.value)
    assert os.listdir(tmp_path) == []


def test_a_save_params_killed_between_its_renames_is_read_and_finished_by_the_next_save(
        tmp_path, state, monkeypatch):
    """A kill after the old copy was renamed aside and before the new one was renamed in left
    no ``params`` at all: the load said "no params checkpoint; train first" with a complete
    copy hidden beside it, and both hidden directories stayed for good. The load reads that
    copy where it lies (a reader may race a live writer, so it moves nothing); the next save
    cleans up."""
    import hyperforget_jax.checkpoint as ck

    path = tmp_path / "params"
    save_params(path, state.params, {"v": 1})
    replace = os.replace

    def killed_after_first_rename(src, dst):
        replace(src, dst)
        raise KeyboardInterrupt

    monkeypatch.setattr(ck.os, "replace", killed_after_first_rename)
    with pytest.raises(KeyboardInterrupt):
        save_params(path, make_state(seed=2).params, {"v": 2})
    monkeypatch.setattr(ck.os, "replace", replace)
    assert not path.exists()
    params, meta = load_params(path, template=state.params)    # the previous copy
    assert_trees_equal(params, state.params)
    assert meta == {"v": 1}
    (tmp_path / "links").mkdir()
    (tmp_path / "links" / "p").symlink_to(path)                  # dangling, as path is gone
    assert load_params(tmp_path / "links" / "p")[1] == {"v": 1}
    assert not path.exists()

    class FullDisk:     # a next save that fails puts the copy back first: it must not lose it
        def __init__(self, *args, **kwargs):
            pass

        def __enter__(self):
            raise OSError(28, "No space left on device")

        def __exit__(self, *exc_info):
            return False

    with monkeypatch.context() as m:
        m.setattr(ck.ocp, "Checkpointer", FullDisk)
        with pytest.raises(CheckpointError, match="could not write params"):
            save_params(path, make_state(seed=4).params, {"v": 4})
    assert path.is_dir() and ck.load_params_meta(path) == {"v": 1}
    save_params(path, make_state(seed=3).params, {"v": 3})       # the stale copies are removed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["links", "params"]
    assert load_params(path)[1] == {"v": 3}


def test_the_leftovers_of_a_killed_save_params_are_its_paths_own(tmp_path, state):
    """``m.old-best``'s previous copy, left hidden as ``.m.old-best.old-*`` by a save of it
    killed between its renames, starts with ``.m.old-``: a load of a missing ``m`` read it as
    m's, and a save of ``m`` restored it as m's own, then deleted it (``m.old-best`` lost)."""
    best = tmp_path / "m.old-best"
    save_params(best, state.params, {"who": "best"})
    os.replace(best, tmp_path / ".m.old-best.old-1234abcd")       # killed between its renames
    with pytest.raises(CheckpointError, match="no params checkpoint"):
        load_params(tmp_path / "m")
    save_params(tmp_path / "m", make_state(seed=2).params, {"who": "m"})
    assert load_params(best)[1] == {"who": "best"}                # still its previous copy
    assert load_params(tmp_path / "m")[1] == {"who": "m"}


def test_a_save_params_on_a_full_disk_keeps_the_old_copy_and_leaves_nothing(tmp_path, state):
    """A full disk (here the file-size limit, as ``ulimit -f``): Orbax's partial write of the
    new copy, ``.<name>.tmp-*.orbax-checkpoint-tmp``, was left beside it, holding the space."""
    import resource
    import signal

    path = tmp_path / "params"
    save_params(path, state.params, {"v": 1})
    big = {"w": np.random.default_rng(0).random(50_000).astype(np.float32)}   # incompressible
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # EFBIG instead of a kill
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, hard))
    try:
        with pytest.raises(CheckpointError, match="could not write params"):
            save_params(path, big, {"v": 2})
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params"]
    assert load_params(path)[1] == {"v": 1}


def test_paths_with_a_tilde_a_space_or_a_symlink(tmp_path, state, monkeypatch):
    """``~`` made a directory named "~" in the working one (the rest of the library expands
    it), and saving to a symlink replaced the link by a directory, leaving its target stale."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    save_params("~/p ü", state.params)
    with Checkpointer("~/ck") as ckpt:
        assert ckpt.directory == tmp_path / "home" / "ck"
    assert not (tmp_path / "~").exists()
    assert_trees_equal(load_params(tmp_path / "home" / "p ü", state.params)[0], state.params)

    (tmp_path / "link").symlink_to(tmp_path / "home" / "p ü")
    other = make_state(seed=2).params
    save_params(tmp_path / "link", other)
    assert (tmp_path / "link").is_symlink()
    assert_trees_equal(load_params(tmp_path / "home" / "p ü", other)[0], other)


def test_a_read_only_checkpoint_directory_is_read(tmp_path, state, monkeypatch):
    """An archived run (read-only mount, ``chmod -w``, another user's) could not be evaluated
    at all: reading opened the directory as a writer, "not writable; fix its permissions"."""
    import hyperforget_jax.checkpoint as ck

    with Checkpointer(tmp_path / "run") as ckpt:
        ckpt.save(1, state, {"v": 1})
    access = os.access
    monkeypatch.setattr(ck.os, "access", lambda p, mode, **k: (
        not mode & os.W_OK and access(p, mode, **k)))     # as root, chmod would not stop us
    with Checkpointer(tmp_path / "run", read_only=True) as ckpt:
        restored, meta = ckpt.restore(make_state(seed=1))
        with pytest.raises(CheckpointError, match="read_only"):
            ckpt.save(2, state)
    assert_trees_equal(restored, state)
    assert meta == {"v": 1}
    with pytest.raises(CheckpointError, match="no checkpoint in"):
        Checkpointer(tmp_path / "missing", read_only=True)
    assert not (tmp_path / "missing").exists()


# ------------------------------------------------------------------------ adapter hygiene


def test_import_changes_no_process_wide_state():
    """Importing the checkpoint module (and the package) leaves logging levels, the
    unraisable hook and the SIGINT handler as they were."""
    import subprocess
    import sys

    code = (
        "import logging, signal, sys\n"
        "before = (logging.getLogger('absl').level, sys.unraisablehook,"
        " signal.getsignal(signal.SIGINT), list(logging.getLogger('asyncio').filters))\n"
        "import hyperforget_jax, hyperforget_jax.checkpoint, hyperforget_jax.cli\n"
        "after = (logging.getLogger('absl').level, sys.unraisablehook,"
        " signal.getsignal(signal.SIGINT), list(logging.getLogger('asyncio').filters))\n"
        "assert before == after, (before, after)\n")
    root = Path(__file__).resolve().parents[1]
    p = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(root)}, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]


def test_saves_are_async_and_only_process_0_cleans_up(tmp_path, state, monkeypatch):
    from hyperforget_jax import checkpoint

    with Checkpointer(tmp_path, max_to_keep=1) as ckpt:
        ckpt.save(1, state)
        ckpt.save(2, state)  # drops step 1 through Orbax's retention (.trash/, then deleted)
        ckpt.wait_until_finished()
        assert step_dirs(tmp_path) == ["2"]
        restored, _ = ckpt.restore(make_state(seed=1))
    assert_trees_equal(restored, state)
    # Debris of a killed writer: only process 0 removes it.
    (tmp_path / ".trash" / "1").mkdir(parents=True)
    monkeypatch.setattr(checkpoint, "_primary", lambda: False)
    with Checkpointer(tmp_path):
        assert (tmp_path / ".trash" / "1").is_dir()
    monkeypatch.undo()
    with Checkpointer(tmp_path) as ckpt:
        assert ckpt.all_steps() == [2]
    assert step_dirs(tmp_path) == ["2"]


def test_identity_refuses_to_resume_another_run(tmp_path, digits_splits):
    """API-level resume check: ``fit`` with a Checkpointer whose identity (recipe, role, ...)
    differs from the stored one is refused before anything is restored; the same identity
    resumes."""
    from hyperforget_jax import models, train

    arch = models.make_architecture("gpt_mlp", (8, 8, 1))
    cfg = train.TrainConfig(arch="gpt_mlp", epochs=1, batch_size=64)
    ident = lambda c, role: {"role": role, "train_config": c.to_json()}
    with Checkpointer(tmp_path, identity=ident(cfg, "original")) as ckpt:
        train.fit(arch, digits_splits.train, cfg, checkpointer=ckpt)
    assert json.loads((tmp_path / "identity.json").read_text())["role"] == "original"
    with pytest.raises(CheckpointError, match="its role is 'original', this run's is 'retrain'"):
        Checkpointer(tmp_path, identity=ident(cfg, "retrain"))
    seed1 = train.TrainConfig(arch="gpt_mlp", epochs=1, batch_size=64, seed=1)
    with pytest.raises(CheckpointError, match="its train_config.seed is 0, this run's is 1"):
        Checkpointer(tmp_path, identity=ident(seed1, "original"))
    with Checkpointer(tmp_path, identity=ident(cfg, "original")) as ckpt:
        assert ckpt.latest_step() == 1


def _as_if_written_on_gpu(path: Path) -> None:
    # Orbax records each array's device; a run written on a GPU names "cuda:0" there.
    files = list(path.rglob("_sharding"))
    assert files
    for f in files:
        f.write_text(f.read_text().replace("cpu:", "cuda:"))


def test_shape_templates_restore_a_checkpoint_written_on_another_device(tmp_path):
    """Commands read runs into ``jax.ShapeDtypeStruct`` templates (no model initialisation);
    with no sharding in them Orbax placed the arrays on the device that wrote them, and a run
    written on GPU read on CPU was refused as corrupt ("Topology mismatch")."""
    tree = {"w": jnp.arange(6.0).reshape(2, 3), "b": jnp.ones((3,), jnp.float32)}
    shapes = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), tree)
    with Checkpointer(tmp_path / "ck") as ckpt:
        ckpt.save(1, tree, {"v": 1})
    save_params(tmp_path / "params", tree, {"v": 2})
    _as_if_written_on_gpu(tmp_path / "ck")
    _as_if_written_on_gpu(tmp_path / "params")
    with Checkpointer(tmp_path / "ck") as ckpt:
        got, _ = ckpt.restore(shapes)
    params, _ = load_params(tmp_path / "params", shapes)
    for out in (got, params):
        for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(tree)):
            np.testing.assert_array_equal(a, b)
            assert a.devices() == {jax.devices()[0]}


def test_a_checkpoint_written_under_x64_is_refused_without_it(tmp_path):
    """A float64 leaf saved under jax_enable_x64 was read back as float32 without a word
    without x64 (through load_params with no template, or a float64 template); now a
    CheckpointError names the setting. Under x64 it reads back exactly."""
    with jax.enable_x64(True):
        params = {"w": jnp.arange(3, dtype=jnp.float64) / 3}
        save_params(tmp_path / "p", params)
        with Checkpointer(tmp_path / "c") as ckpt:
            ckpt.save(1, params)
        got, _ = load_params(tmp_path / "p")
        assert got["w"].dtype == np.float64 and np.array_equal(got["w"], params["w"])
    template = {"w": jax.ShapeDtypeStruct((3,), jnp.float64)}
    for read in (lambda: load_params(tmp_path / "p"), lambda: load_params(tmp_path / "p", template),
                 lambda: Checkpointer(tmp_path / "c").restore(template)):
        with pytest.raises(CheckpointError, match="float64 leaf 'w' .*jax_enable_x64"):
            read()


def test_python_and_numpy_64_bit_leaves_saved_without_x64_read_back(tmp_path):
    """Without x64 a Python int / float or a NumPy int64 array (``Checkpointer.save`` takes
    "any pytree of arrays/scalars") was written as a 64-bit leaf, which the x64 check then
    refused to read back in the very setting that wrote it ("written with jax_enable_x64").
    Such leaves are now stored at JAX's width; an int that int32 cannot hold is refused."""
    state = {"w": jnp.ones(2), "epoch": 3, "lr": 0.5, "order": np.arange(4)}
    save_params(tmp_path / "p", state)
    with Checkpointer(tmp_path / "c") as ckpt:
        ckpt.save(1, state)
    for got in (load_params(tmp_path / "p")[0], load_params(tmp_path / "p", state)[0],
                Checkpointer(tmp_path / "c").restore(state)[0]):
        assert int(got["epoch"]) == 3 and float(got["lr"]) == 0.5
        np.testing.assert_array_equal(got["order"], np.arange(4))
        assert np.asarray(got["order"]).dtype == np.int32
    with pytest.raises(CheckpointError, match="'big' holds int64 values out of int32's range"):
        save_params(tmp_path / "q", {"big": np.array([2**40])})
    assert not (tmp_path / "q").exists()


def test_a_python_int_past_64_bits_is_refused_before_anything_is_written(tmp_path):
    """A Python int past 64 bits reads as a NumPy object array: orbax failed mid-write
    ("Unsupported data type", blamed on disk space) and left a tmp directory; Checkpointer.save
    returned and failed at close. Refused up front under x64 too, with nothing on disk."""
    for x64 in (False, True):
        with jax.enable_x64(x64):
            for v in (2**70, -2**70):
                with pytest.raises(CheckpointError, match="'n' is a Python int of 71 bits, "
                                                          "past the 64-bit integers"):
                    save_params(tmp_path / "p", {"w": np.ones(2, np.float32), "n": v})
                with Checkpointer(tmp_path / "c") as ckpt, \
                        pytest.raises(CheckpointError, match="Python int of 71 bits"):
                    ckpt.save(1, {"n": v})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"] and not any((tmp_path / "c")
                                                                           .iterdir())


def test_a_float64_past_float32s_range_is_refused_not_saved_as_inf(tmp_path):
    """Narrowing a finite float64 leaf (1e39) to float32 made it inf after ``check_savable``
    had passed it: save_params returned, and load_params then called the checkpoint corrupt
    ("contains NaN/inf, which save_params() never writes"). Refused up front, nothing written;
    a float64 inf (refused by the finite check) and a small float64 still behave as before."""
    for where, save in (("p", lambda t: save_params(tmp_path / "p", t)),
                        ("c", lambda t: Checkpointer(tmp_path / "c").save(1, t))):
        with pytest.raises(CheckpointError, match="'w' holds float64 values out of float32's "
                                                  "range, .* as inf"):
            save({"w": np.array([1.0, 1e39])})
        assert not (tmp_path / where).exists() or not any((tmp_path / where).iterdir())
    save_params(tmp_path / "ok", {"w": np.array([1e-3, -2.5])})
    np.testing.assert_allclose(load_params(tmp_path / "ok")[0]["w"], [1e-3, -2.5], rtol=1e-6)
