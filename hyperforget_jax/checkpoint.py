"""Checkpoints: a pytree (e.g. a ``TrainState``) plus a JSON ``meta`` dict per step, via Orbax.

    with Checkpointer("runs/original", max_to_keep=3) as ckpt:
        ckpt.save(int(state.step), state, meta={"config": ..., "arch": "mlp", "n_params": 269322})
        ...
        state, meta = ckpt.restore(template=fresh_state)        # latest step

    save_params("runs/original/params", state.params, meta)       # single-shot, no steps
    params, meta = load_params("runs/original/params", template)

On-disk layout (both are plain Orbax checkpoints, readable without this module)::

    <run-dir>/<step>/state/...      arrays, OCDBT/zarr via tensorstore   (ocp.args.StandardSave)
    <run-dir>/<step>/meta/metadata  JSON                                 (ocp.args.JsonSave)
    <params-path>/params/...        and  <params-path>/meta/metadata

Guarantees:

* Nothing half-written: :meth:`Checkpointer.save` returns only after the write is committed
  (Orbax writes to a temporary directory and renames it), and refuses
  (:class:`NonFiniteError`) to write a state with NaN/inf in it.
* Crash-safe at every point (SIGKILL tested, tests/test_reliability_resume.py): pruning renames
  a step out of the listing before deleting it; re-saving a step keeps the old copy aside until
  the new one commits; opening a directory puts such a copy back if the new one never committed
  and removes what a killed process left (the writer also removes stale uncommitted writes
  before its first save).
* Loading never executes code: arrays come from tensorstore, ``meta`` from ``json``; no pickle.
* Every failure a user can cause (no checkpoint, wrong architecture, truncated or corrupt files,
  unwritable directory, meta that is not JSON) is a :class:`CheckpointError` naming the
  directory and the fix, never a raw Orbax/tensorstore traceback.

This module only depends on :mod:`hyperforget_jax.errors`, so it works with any pytree.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import sys
import uuid
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from hyperforget_jax.errors import CheckpointError, ConfigError, NonFiniteError

__all__ = ["Checkpointer", "save_params", "load_params"]

PyTree = Any

# Orbax logs every save/restore/prune through absl at INFO, which floods the CLI whenever an
# application turns on INFO logging; we report problems ourselves as CheckpointErrors, so only
# its warnings and errors are kept. (Process-wide, like any absl verbosity setting.)
logging.getLogger("absl").setLevel(max(logging.getLogger("absl").level, logging.WARNING))

_STATE = "state"
_META = "meta"
_PARAMS = "params"


# --------------------------------------------------------------------------- pytree helpers


def _key_name(key: Any) -> str:
    # Mirrors Orbax's own leaf naming ("opt_state.0.mu.params.Dense_0.kernel"): a NamedTuple
    # field and the dict key Orbax stores it under then get the same name, so template and
    # on-disk metadata can be compared leaf by leaf without depending on Orbax internals.
    if isinstance(key, jax.tree_util.DictKey):
        return str(key.key)
    if isinstance(key, jax.tree_util.GetAttrKey):
        return key.name
    if isinstance(key, jax.tree_util.SequenceKey):
        return str(key.idx)
    if isinstance(key, jax.tree_util.FlattenedIndexKey):
        return str(key.key)
    return str(key)


def _path_name(path: tuple) -> str:
    return ".".join(_key_name(k) for k in path) or "<root>"


def _named_leaves(tree: PyTree) -> list[tuple[str, Any]]:
    leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
    return [(_path_name(path), leaf) for path, leaf in leaves]


def _shape_dtype(leaf: Any) -> tuple[tuple[int, ...] | None, np.dtype | None]:
    """Shape and dtype of an array, ShapeDtypeStruct, Orbax ArrayMetadata or Python scalar."""
    shape = getattr(leaf, "shape", None)
    dtype = getattr(leaf, "dtype", None)
    if shape is None and isinstance(leaf, (bool, int, float, complex, np.generic)):
        shape = ()
    try:
        dtype = np.dtype(dtype) if dtype is not None else None
    except TypeError:
        dtype = None
    return (tuple(shape) if shape is not None else None), dtype


def _first_non_finite(tree: PyTree) -> str | None:
    """Path of the first float/complex leaf containing NaN or inf, or None if all are finite."""
    for name, leaf in _named_leaves(tree):
        if isinstance(leaf, (float, complex)):
            if not (math.isfinite(leaf.real) and math.isfinite(leaf.imag)):
                return name
            continue
        dtype = getattr(leaf, "dtype", None)
        if dtype is None or not jnp.issubdtype(dtype, jnp.inexact):
            continue
        if isinstance(leaf, jax.ShapeDtypeStruct):
            continue
        # jnp handles bfloat16 and device arrays alike; one bool per leaf comes back to host.
        if not bool(jnp.all(jnp.isfinite(leaf))):
            return name
    return None


def _check_template(template: PyTree, on_disk: PyTree, where: Path) -> None:
    """Raise CheckpointError at the first leaf where ``template`` and the stored tree differ."""
    fix = (
        "restore with a template built from the same architecture/optimizer config the "
        "checkpoint was written with (see its meta), or use a fresh --run-dir"
    )
    stored = dict(_named_leaves(on_disk))
    wanted = _named_leaves(template)
    prefix = f"checkpoint {where} was written for another architecture: "
    for name, leaf in wanted:
        if name not in stored:
            raise CheckpointError(
                f"{prefix}leaf {name!r} of the template is not in the checkpoint; {fix}"
            )
        want_shape, want_dtype = _shape_dtype(leaf)
        have_shape, have_dtype = _shape_dtype(stored[name])
        if want_shape is not None and have_shape is not None and want_shape != have_shape:
            raise CheckpointError(
                f"{prefix}leaf {name!r} has shape {have_shape} in the checkpoint but "
                f"{want_shape} in the template; {fix}"
            )
        # Orbax would silently cast on restore (tensorstore "cast" driver), so a float32
        # checkpoint would load into a bfloat16 template without complaint; check it here.
        if (
            want_dtype is not None
            and have_dtype is not None
            and hasattr(leaf, "dtype")
            and want_dtype != have_dtype
        ):
            raise CheckpointError(
                f"{prefix}leaf {name!r} has dtype {have_dtype} in the checkpoint but "
                f"{want_dtype} in the template; {fix}"
            )
    wanted_names = {name for name, _ in wanted}
    extra = [name for name in stored if name not in wanted_names]
    if extra:
        raise CheckpointError(
            f"{prefix}leaf {extra[0]!r} of the checkpoint is not in the template "
            f"({len(extra)} extra leaves); {fix}"
        )


def _rebuild_like(template: PyTree, restored: PyTree, where: Path) -> PyTree:
    """Put restored leaves into the template's exact treedef (NamedTuples, custom nodes)."""
    by_name = dict(_named_leaves(restored))
    names = [name for name, _ in _named_leaves(template)]
    missing = [n for n in names if n not in by_name]
    if missing:
        raise CheckpointError(
            f"checkpoint {where} restored without leaf {missing[0]!r}; it is corrupt or from "
            "another architecture: restore an earlier step or retrain"
        )
    treedef = jax.tree_util.tree_structure(template)
    return jax.tree_util.tree_unflatten(treedef, [by_name[n] for n in names])


def _jsonable_meta(meta: dict | None, where: Path) -> dict:
    """Normalise ``meta`` to exactly what a JSON round trip returns (or raise CheckpointError)."""
    if meta is None:
        return {}
    if not isinstance(meta, dict):
        raise CheckpointError(
            f"meta for {where} must be a dict, got {type(meta).__name__}; pass a dict of "
            "JSON-serialisable values (config, data split, forget request, ...)"
        )

    def default(obj: Any) -> Any:
        # Param counts and config values often arrive as NumPy/JAX scalars or small arrays.
        if isinstance(obj, (np.generic, np.ndarray, jax.Array)):
            return np.asarray(obj).tolist()
        if isinstance(obj, (set, frozenset)):
            return sorted(obj)
        if isinstance(obj, os.PathLike):
            return os.fspath(obj)
        raise TypeError(f"{type(obj).__name__} is not JSON-serialisable")

    try:
        return json.loads(json.dumps(meta, default=default))
    except (TypeError, ValueError) as e:
        raise CheckpointError(
            f"meta for {where} is not JSON-serialisable ({e}); convert it to "
            "str/int/float/bool/list/dict (e.g. dataclasses.asdict(config))"
        ) from e


def _absolute_dir(directory: str | os.PathLike) -> Path:
    # Orbax rejects relative paths; resolve against the current directory once, up front.
    return Path(os.path.abspath(os.fspath(directory)))


def _make_writable_dir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CheckpointError(
            f"cannot create checkpoint directory {path} ({e.strerror or e}); pass a writable "
            "--run-dir / path"
        ) from e
    if not os.access(path, os.W_OK | os.X_OK):
        raise CheckpointError(
            f"checkpoint directory {path} is not writable; fix its permissions or pass a "
            "writable --run-dir / path"
        )


_closed_loop_filter_installed = False


def _silence_stray_closed_loop_errors() -> None:
    """Drop the noise a failed Orbax restore leaves behind on stderr.

    When one tensorstore read fails, Orbax's ``run_sync`` closes its event loop while sibling
    reads are still in flight; when those finish, their callbacks hit the closed loop and
    Python prints ``Exception ignored in: None ... RuntimeError: Event loop is closed`` to
    stderr, after our one-line CheckpointError. Installed before the first restore (the stray
    callbacks can fire before our ``except`` runs) and it drops only that exact message,
    unraisable errors of abandoned Orbax coroutines, and asyncio's "exception was never
    retrieved" log records about those reads; everything else reaches the previous hook.
    """
    global _closed_loop_filter_installed
    if _closed_loop_filter_installed:
        return
    _closed_loop_filter_installed = True
    previous = sys.unraisablehook

    def hook(unraisable: Any) -> None:
        exc = unraisable.exc_value
        if (
            unraisable.object is None
            and isinstance(exc, RuntimeError)
            and str(exc) == "Event loop is closed"
        ):
            return
        # The sibling reads themselves: Orbax coroutines abandoned mid-read, which raise their
        # own copy of the read error when garbage-collected ("Exception ignored in: <coroutine
        # object _read_array_index_and_device_put ...>"), possibly after our message.
        code = getattr(unraisable.object, "cr_code", None)
        if code is not None and f"{os.sep}orbax{os.sep}" in code.co_filename:
            return
        previous(unraisable)

    sys.unraisablehook = hook
    # Same story through asyncio's logger: "_GatheringFuture exception was never retrieved"
    # for the gather of the abandoned reads, logged when it is garbage-collected.
    logging.getLogger("asyncio").addFilter(_drop_abandoned_read_logs)


def _drop_abandoned_read_logs(record: logging.LogRecord) -> bool:
    try:
        msg = record.getMessage()
    except Exception:  # noqa: BLE001 - never break logging
        return True
    return not ("exception was never retrieved" in msg
                and ("reading array index" in msg or "TensorStore" in msg))


def _corrupt(where: Path, err: BaseException) -> CheckpointError:
    detail = str(err).strip().splitlines()[0][:300] if str(err).strip() else type(err).__name__
    return CheckpointError(
        f"checkpoint {where} is corrupt or truncated ({type(err).__name__}: {detail}); "
        "delete that directory and restore an earlier step, or retrain"
    )


def _tree_of(item_metadata: Any) -> Any:
    # StandardCheckpointHandler's metadata is a TreeMetadata wrapper in Orbax 0.12 (and was the
    # bare tree before); accept both.
    return getattr(item_metadata, "tree", item_metadata)


def _check_restored_finite(tree: PyTree, where: Path) -> None:
    # save() never writes NaN/inf, so any found on load means the bytes were damaged.
    bad = _first_non_finite(tree)
    if bad is not None:
        raise CheckpointError(
            f"checkpoint {where} is corrupt: leaf {bad!r} contains NaN/inf, which save() "
            "never writes; delete that directory and restore an earlier step, or retrain"
        )


def _check_savable(state: PyTree, what: str) -> None:
    # Orbax fails on these only mid-write, leaving a *.orbax-checkpoint-tmp directory behind.
    for name, leaf in _named_leaves(state):
        if isinstance(leaf, (bool, int, float)):
            continue
        # ml_dtypes (bfloat16, float8) report NumPy kind "V", so it is accepted too.
        numeric = "biufcV"
        if isinstance(leaf, (jax.Array, np.ndarray, np.generic)) and leaf.dtype.kind in numeric:
            continue
        kind = "abstract (no values)" if isinstance(leaf, jax.ShapeDtypeStruct) else "not an array"
        raise CheckpointError(
            f"cannot save {what}: leaf {name!r} is a {type(leaf).__name__}, {kind}; checkpoints "
            "hold numeric arrays and scalars only (put strings and other values in meta)"
        )
    bad = _first_non_finite(state)
    if bad is not None:
        raise NonFiniteError(
            f"refusing to save {what}: leaf {bad!r} contains NaN/inf; nothing was written. "
            "Lower the learning rate / enable gradient clipping and resume from the last "
            "finite checkpoint"
        )


# --------------------------------------------------------------------------- Checkpointer


_OVERWRITTEN = ".overwritten-"
_PRUNING = ".pruning-"


def _recover_interrupted(directory: Path, stale_writes: bool = False) -> None:
    """Finishes or rolls back what a process killed inside :class:`Checkpointer` left behind.

    * ``.overwritten-<step>-*``: the old copy of a step moved aside by :meth:`Checkpointer.save`
      before the new copy was committed. If the new copy never got committed it is put back
      (so re-saving a step can never lose it); otherwise it is deleted.
    * ``.pruning-<step>-*``: a step already unlisted by pruning; deleted.
    * ``<step>.orbax-checkpoint-tmp*`` (only with ``stale_writes``, i.e. from the writer, before
      its first save): an uncommitted Orbax write (never listed); deleted. Readers leave them
      alone, so evaluating a run while it trains does not break the trainer's current write.

    Assumes one writer per run directory (as does Orbax).
    """
    try:
        entries = list(directory.iterdir())
    except OSError:
        return
    for entry in entries:
        name = entry.name
        if name.startswith(_OVERWRITTEN):
            step = name[len(_OVERWRITTEN):].split("-")[0]
            target = directory / step
            if step.isdigit() and not target.exists():
                try:
                    os.replace(entry, target)
                    continue
                except OSError:
                    pass
            shutil.rmtree(entry, ignore_errors=True)
        elif name.startswith(_PRUNING) or (
            stale_writes and ".orbax-checkpoint-tmp" in name and name.split(".")[0].isdigit()
        ):
            shutil.rmtree(entry, ignore_errors=True)


class Checkpointer:
    """Wraps orbax.checkpoint.CheckpointManager for one run directory.

    Each step directory holds the state pytree and a JSON ``meta`` dict. Steps are kept in
    step order: ``latest_step()`` is the highest step on disk, and pruning (``max_to_keep``)
    drops the lowest steps, but never the one just saved.
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        max_to_keep: int | None = 3,
        save_interval_steps: int = 1,
    ):
        """Opens (and creates if missing) a run directory.

        Args:
            directory: Run directory; relative paths are made absolute (Orbax needs that).
            max_to_keep: Keep at most this many steps (the highest, plus the one just saved);
                ``None`` keeps all.
            save_interval_steps: :meth:`save` skips steps that are not a multiple of this
                unless called with ``force=True``.

        Raises:
            ConfigError: ``max_to_keep`` < 1 or ``save_interval_steps`` < 1.
            CheckpointError: The directory cannot be created or is not writable.
        """
        if max_to_keep is not None and (not isinstance(max_to_keep, int) or max_to_keep < 1):
            raise ConfigError(f"max_to_keep must be None or an int >= 1, got {max_to_keep!r}")
        if not isinstance(save_interval_steps, int) or save_interval_steps < 1:
            raise ConfigError(
                f"save_interval_steps must be an int >= 1, got {save_interval_steps!r}"
            )
        self.directory = _absolute_dir(directory)
        self.max_to_keep = max_to_keep
        self.save_interval_steps = save_interval_steps
        _make_writable_dir(self.directory)
        _recover_interrupted(self.directory)
        self._saved = False
        options = ocp.CheckpointManagerOptions(
            # Pruning and the save interval are done here: Orbax prunes in write order (so
            # re-saving an old step would evict a newer one) and silently skips any step
            # <= its latest unless forced.
            max_to_keep=None,
            save_interval_steps=1,
            create=True,
            # save() blocks until the write is committed anyway, so async buys nothing, and a
            # failed async save leaves background threads waiting on signals for minutes.
            enable_async_checkpointing=False,
        )
        try:
            self._manager = ocp.CheckpointManager(
                self.directory,
                options=options,
                # Without a registry a fresh manager on an existing run directory does not
                # know which handler wrote each item, and item_metadata() returns None for
                # it (Orbax only learns handlers from the args of a save in this process).
                handler_registry=ocp.handlers.create_default_handler_registry(
                    **{_STATE: ocp.StandardCheckpointHandler(), _META: ocp.JsonCheckpointHandler()}
                ),
            )
        except Exception as e:  # noqa: BLE001 - anything Orbax raises here is a bad directory
            raise CheckpointError(
                f"cannot open checkpoint directory {self.directory} ({type(e).__name__}: {e}); "
                "pass a writable --run-dir that holds only checkpoints of this run"
            ) from e
        self._closed = False

    # -- queries ------------------------------------------------------------------------------

    def all_steps(self) -> list[int]:
        """Returns the steps on disk, ascending (re-read, so other processes' saves show)."""
        self._manager.reload()
        return sorted(int(s) for s in self._manager.all_steps())

    def latest_step(self) -> int | None:
        """Returns the highest step on disk, or None if the directory has no checkpoint."""
        steps = self.all_steps()
        return steps[-1] if steps else None

    def step_dir(self, step: int) -> Path:
        """Returns the directory a step is (or would be) stored in."""
        return self.directory / str(int(step))

    # -- save ---------------------------------------------------------------------------------

    def save(self, step: int, state: Any, meta: dict | None = None, force: bool = False) -> None:
        """Writes ``state`` and ``meta`` as step ``step`` and waits until they are committed.

        Saving a step that already exists replaces it; the old copy is only removed once the
        new one is complete, so a failed save leaves the previous checkpoint intact.

        Args:
            step: Non-negative step number (the directory name).
            state: Any pytree of arrays/scalars, e.g. a ``TrainState``.
            meta: JSON-serialisable dict (config, data split, forget request, architecture
                name and parameter count, ...). NumPy scalars are converted.
            force: Save even if ``step`` is not a multiple of ``save_interval_steps``.

        Raises:
            NonFiniteError: A float leaf of ``state`` contains NaN/inf (nothing is written).
            CheckpointError: ``meta`` is not JSON-serialisable, a leaf is not a numeric
                array/scalar, or the write failed (the previous copy of the step is kept).
            ConfigError: ``step`` is negative.
        """
        step = int(step)
        if step < 0:
            raise ConfigError(f"checkpoint step must be >= 0, got {step}")
        if not force and step % self.save_interval_steps != 0:
            return
        where = self.step_dir(step)
        # Validate everything before touching the disk, so a refused save changes nothing.
        meta = _jsonable_meta(meta, where)
        _check_savable(state, f"step {step} to {where}")

        if not self._saved:
            # First save of this writer: earlier processes' uncommitted writes are stale.
            _recover_interrupted(self.directory, stale_writes=True)
            self._saved = True
        backup = None
        if step in self.all_steps():
            # Orbax refuses to save over an existing step (and force=True does not change
            # that); move the old one aside under a name Orbax does not list as a step.
            backup = self.directory / f"{_OVERWRITTEN}{step}-{uuid.uuid4().hex[:8]}"
            try:
                os.replace(where, backup)
            except OSError as e:
                raise CheckpointError(
                    f"cannot replace existing checkpoint {where} ({e}); check the permissions "
                    "of the run directory"
                ) from e
            self._manager.reload()
        try:
            self._manager.save(
                step,
                args=ocp.args.Composite(
                    **{_STATE: ocp.args.StandardSave(state), _META: ocp.args.JsonSave(meta)}
                ),
                # Our own interval check already ran; Orbax's would also skip steps <= latest.
                force=True,
            )
            self._manager.wait_until_finished()
        except Exception as e:  # noqa: BLE001
            self._abort_save(where, backup)
            if isinstance(e, OSError):
                raise CheckpointError(
                    f"could not write checkpoint {where} ({e}); check disk space and "
                    "permissions of the run directory"
                ) from e
            raise CheckpointError(
                f"could not write checkpoint {where} ({type(e).__name__}: {e}); the state must "
                "be a pytree of arrays/scalars"
            ) from e
        if backup is not None:
            shutil.rmtree(backup, ignore_errors=True)
        self._prune(keep=step)

    def _abort_save(self, where: Path, backup: Path | None) -> None:
        try:
            self._manager.wait_until_finished()
        except Exception:  # noqa: BLE001 - already reporting the original failure
            pass
        # Orbax writes into "<step>.orbax-checkpoint-tmp*" and renames on commit; a failed
        # write leaves that behind (and possibly a partial step directory).
        for tmp in self.directory.glob(f"{where.name}.orbax-checkpoint-tmp*"):
            shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(where, ignore_errors=True)
        if backup is not None:
            os.replace(backup, where)
        self._manager.reload()

    def _prune(self, keep: int) -> None:
        if self.max_to_keep is None:
            return
        others = [s for s in self.all_steps() if s != keep]
        excess = len(others) - (self.max_to_keep - 1)
        for old in others[: max(excess, 0)]:
            # Rename first (atomic), delete after: a crash mid-delete then leaves a hidden
            # directory that the next open removes, never a listed, half-deleted step.
            doomed = self.directory / f"{_PRUNING}{old}-{uuid.uuid4().hex[:8]}"
            try:
                os.replace(self.step_dir(old), doomed)
            except OSError:
                self._manager.reload()
                self._manager.delete(old)
                continue
            self._manager.reload()
            shutil.rmtree(doomed, ignore_errors=True)

    # -- restore ------------------------------------------------------------------------------

    def _resolve_step(self, step: int | None) -> int:
        steps = self.all_steps()
        if not steps:
            raise CheckpointError(
                f"no checkpoint in {self.directory}; train first or pass the right --run-dir"
            )
        if step is None:
            return steps[-1]
        if int(step) not in steps:
            raise CheckpointError(
                f"no checkpoint for step {int(step)} in {self.directory} (steps on disk: "
                f"{steps}); pass one of those steps or omit it for the latest"
            )
        return int(step)

    def restore(self, template: Any, step: int | None = None) -> tuple[Any, dict]:
        """Loads a step into the structure of ``template``.

        Args:
            template: Pytree with the structure, shapes and dtypes that were saved, e.g. a
                freshly initialised ``TrainState`` (arrays or ``jax.ShapeDtypeStruct``).
            step: Step to load; ``None`` means the latest.

        Returns:
            ``(state, meta)``: ``state`` has ``template``'s exact tree structure (NamedTuples
            preserved); ``meta`` is the dict given to :meth:`save`.

        Raises:
            CheckpointError: No checkpoint (or not that step), a structure/shape/dtype
                mismatch with ``template`` (naming the first differing leaf), or corrupt or
                truncated files.
        """
        step = self._resolve_step(step)
        where = self.step_dir(step)
        _silence_stray_closed_loop_errors()
        try:
            item_meta = self._manager.item_metadata(step)
            on_disk = _tree_of(item_meta[_STATE])
        except Exception as e:  # noqa: BLE001
            raise _corrupt(where, e) from e
        if on_disk is None:
            raise _corrupt(where, FileNotFoundError(f"no {_STATE!r} item"))
        _check_template(template, on_disk, where)
        try:
            out = self._manager.restore(
                step,
                args=ocp.args.Composite(
                    **{_STATE: ocp.args.StandardRestore(template), _META: ocp.args.JsonRestore()}
                ),
            )
            state, meta = out[_STATE], out[_META]
        except Exception as e:  # noqa: BLE001
            raise _corrupt(where, e) from e
        state = _rebuild_like(template, state, where)
        _check_restored_finite(state, where)
        return state, _check_meta(meta, where)

    def restore_meta(self, step: int | None = None) -> dict:
        """Loads only the JSON meta of a step (cheap: no arrays are read).

        Args:
            step: Step to read; ``None`` means the latest.

        Returns:
            The meta dict given to :meth:`save`.

        Raises:
            CheckpointError: No checkpoint (or not that step), or corrupt meta JSON.
        """
        step = self._resolve_step(step)
        where = self.step_dir(step)
        try:
            out = self._manager.restore(
                step, args=ocp.args.Composite(**{_META: ocp.args.JsonRestore()})
            )
            meta = out[_META]
        except Exception as e:  # noqa: BLE001
            raise _corrupt(where, e) from e
        return _check_meta(meta, where)

    # -- lifecycle ----------------------------------------------------------------------------

    def close(self) -> None:
        """Waits for pending work and releases Orbax's threads. Safe to call twice."""
        if not self._closed:
            self._closed = True
            self._manager.close()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Checkpointer({str(self.directory)!r}, max_to_keep={self.max_to_keep})"


def _check_meta(meta: Any, where: Path) -> dict:
    if not isinstance(meta, dict):
        raise _corrupt(where, TypeError(f"meta is {type(meta).__name__}, not a JSON object"))
    return meta


# --------------------------------------------------------------------------- single-shot params


def _is_params_checkpoint(path: Path) -> bool:
    return (path / _PARAMS).is_dir() and (path / _META).is_dir()


def save_params(path: str | os.PathLike, params: Any, meta: dict | None = None) -> None:
    """Writes a single params pytree (no steps) to the directory ``path``, atomically.

    An existing params checkpoint at ``path`` is replaced only once the new one is complete.
    A non-empty directory that is not a params checkpoint is never overwritten.

    Args:
        path: Destination directory (e.g. ``hyperforget train --out``); made absolute.
        params: Pytree of arrays (e.g. Flax params).
        meta: JSON-serialisable dict stored next to the params.

    Raises:
        NonFiniteError: ``params`` contains NaN/inf (nothing is written).
        CheckpointError: ``meta`` is not JSON, ``path`` is another kind of non-empty
            directory or a file, or the write failed.
    """
    path = _absolute_dir(path)
    meta = _jsonable_meta(meta, path)
    _check_savable(params, f"params to {path}")
    if path.exists() and not path.is_dir():
        raise CheckpointError(f"{path} is a file, not a params directory; pass a new path")
    if path.is_dir() and any(path.iterdir()) and not _is_params_checkpoint(path):
        raise CheckpointError(
            f"refusing to overwrite {path}: it is a non-empty directory but not a params "
            "checkpoint; pass a new or empty path"
        )
    _make_writable_dir(path.parent)
    # Write next to the destination and rename into place, so readers never see a partial
    # checkpoint and a failed write keeps the previous one.
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckptr:
            ckptr.save(
                tmp,
                args=ocp.args.Composite(
                    **{_PARAMS: ocp.args.StandardSave(params), _META: ocp.args.JsonSave(meta)}
                ),
            )
    except Exception as e:  # noqa: BLE001
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(
            f"could not write params to {path} ({type(e).__name__}: {e}); check disk space and "
            "permissions, and that params is a pytree of arrays"
        ) from e
    old = None
    if path.exists():
        old = path.parent / f".{path.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(path, old)
    os.replace(tmp, path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _params_checkpoint_dir(path: str | os.PathLike) -> Path:
    """The absolute ``path`` if it holds a :func:`save_params` checkpoint, else a clear error."""
    path = _absolute_dir(path)
    if not path.is_dir() or not any(path.iterdir()):
        raise CheckpointError(
            f"no params checkpoint at {path}; train first (hyperforget train --out {path}) or "
            "pass the right path"
        )
    if not _is_params_checkpoint(path):
        hint = (
            " (it looks like a run directory: use Checkpointer(...).restore)"
            if any(p.name.isdigit() for p in path.iterdir())
            else ""
        )
        raise CheckpointError(
            f"{path} is not a params checkpoint written by save_params{hint}; pass the right path"
        )
    return path


def load_params_meta(path: str | os.PathLike) -> dict:
    """Only the JSON meta of a :func:`save_params` checkpoint (no arrays are read)."""
    path = _params_checkpoint_dir(path)
    _silence_stray_closed_loop_errors()
    try:
        with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckptr:
            meta = ckptr.restore(
                path, args=ocp.args.Composite(**{_META: ocp.args.JsonRestore()})
            )[_META]
    except Exception as e:  # noqa: BLE001
        raise _corrupt(path, e) from e
    return _check_meta(meta, path)


def load_params(path: str | os.PathLike, template: Any = None) -> tuple[Any, dict]:
    """Reads a params checkpoint written by :func:`save_params`.

    Args:
        path: The directory given to :func:`save_params`.
        template: Pytree with the saved structure/shapes/dtypes; the result takes its exact
            structure. If None, the raw tree is returned as nested dicts (lists for
            sequences) of NumPy arrays.

    Returns:
        ``(params, meta)``.

    Raises:
        CheckpointError: Nothing (or something else) at ``path``, a mismatch with
            ``template``, or corrupt/truncated files.
    """
    path = _params_checkpoint_dir(path)
    handler = ocp.CompositeCheckpointHandler()
    _silence_stray_closed_loop_errors()
    try:
        with ocp.Checkpointer(handler) as ckptr:
            if template is not None:
                on_disk = _tree_of(ocp.StandardCheckpointHandler().metadata(path / _PARAMS))
                if on_disk is None:
                    raise FileNotFoundError(f"no array metadata in {path / _PARAMS}")
            else:
                on_disk = None
            if on_disk is not None:
                _check_template(template, on_disk, path)
            out = ckptr.restore(
                path,
                args=ocp.args.Composite(
                    **{
                        _PARAMS: ocp.args.StandardRestore(template),
                        _META: ocp.args.JsonRestore(),
                    }
                ),
            )
            params, meta = out[_PARAMS], out[_META]
    except CheckpointError:
        raise
    except Exception as e:  # noqa: BLE001
        raise _corrupt(path, e) from e
    if template is not None:
        params = _rebuild_like(template, params, path)
    else:
        params = jax.tree_util.tree_map(np.asarray, params)
    _check_restored_finite(params, path)
    return params, _check_meta(meta, path)
