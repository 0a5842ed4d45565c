"""Checkpoints: a thin adapter over Orbax for a pytree (e.g. a ``TrainState``) plus a JSON
``meta`` dict per step.

    with Checkpointer("runs/original/checkpoints", max_to_keep=3) as ckpt:
        ckpt.save(int(state.step), state, meta={"config": ..., "arch": "mlp"})
        state, meta = ckpt.restore(template=fresh_state)          # latest step

    save_params("runs/sample/params", params, meta)               # single-shot, no steps
    params, meta = load_params("runs/sample/params", template)

On-disk layout (plain Orbax checkpoints, readable without this module)::

    <dir>/<step>/state/...      arrays, OCDBT/zarr via tensorstore   (ocp.args.StandardSave)
    <dir>/<step>/meta/metadata  JSON                                 (ocp.args.JsonSave)
    <params-path>/params/...    and  <params-path>/meta/metadata

What Orbax does: the atomic commit (a step is written under ``<step>.orbax-checkpoint-tmp*`` and
renamed), retention (``max_to_keep``; dropped steps are first renamed into ``.trash/``, so a
killed deletion never leaves a listed, half-deleted step), asynchronous writes (``save``
returns once the arrays are copied to host; :meth:`Checkpointer.wait_until_finished`, every
restore and ``close`` wait for the commit), and multi-host coordination.

What this adapter adds, because Orbax does not: refusing NaN/inf states and non-array leaves
before anything is written; re-saving an existing step without ever losing it (the old copy is
moved aside and only dropped once the new one is committed; opening the directory puts it back
if the writer died in between); clear :class:`CheckpointError` messages naming the first leaf
whose shape/dtype/structure differs from the template (Orbax would silently cast dtypes) and
for corrupt or truncated files; Ctrl-C held until a write is committed; and removing what a
killed writer left (stale uncommitted writes, the trash) — only in process 0, and stale writes
only by a writer, so a reader never deletes a live writer's files. Loading never executes code:
arrays come from tensorstore, ``meta`` from ``json``.

Importing this module changes no process-wide state. It only depends on
:mod:`hyperforget_jax.errors` and :mod:`.checkpoint_checks`, so it works with any pytree.
"""

from __future__ import annotations

import codecs
import contextlib
import gc
import json
import logging
import operator
import os
import re
import shutil
import signal
import sys
import threading
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

import jax
import numpy as np
import orbax.checkpoint as ocp

from hyperforget_jax import checkpoint_checks as checks
from hyperforget_jax.config import expand_user
from hyperforget_jax.errors import CheckpointError, ConfigError

__all__ = ["Checkpointer", "save_params", "load_params", "load_params_meta",
           "silence_abandoned_reads"]

PyTree = Any
_STATE, _META, _PARAMS = "state", "meta", "params"
_TRASH = ".trash"
_OVERWRITTEN = ".overwritten-"
_IDENTITY = "identity.json"


def _primary() -> bool:
    """Only process 0 renames or deletes (Orbax itself coordinates the writes)."""
    return jax.process_index() == 0


def _check_meta(meta: Any, where: Path) -> dict:
    if not isinstance(meta, dict):
        raise _corrupt(where, TypeError(f"meta is {type(meta).__name__}, not a JSON object"))
    return meta


def _tree_of(item_metadata: Any) -> Any:
    # A TreeMetadata wrapper in Orbax 0.12 (the bare tree before).
    return getattr(item_metadata, "tree", item_metadata)


def _corrupt(where: Path, err: BaseException) -> CheckpointError:
    text = str(err).strip()
    detail = text.splitlines()[0] if text else type(err).__name__
    # TensorStore appends a dump of its spec ("See full TensorStore details: <bound method..."):
    # the cause is before it.
    detail = detail.split(" See full TensorStore details")[0][:240]
    return CheckpointError(f"checkpoint {where} is corrupt or truncated ({type(err).__name__}: "
                           f"{detail}); delete that directory and restore an earlier step, or "
                           "retrain")


# --------------------------------------------------------------------------- local context


@contextlib.contextmanager
def _hold_sigint() -> Iterator[None]:
    """Ctrl-C during a write is delivered once the write is committed (or failed), so an
    interrupted run never leaves a half-done save and the interrupt is one clean
    KeyboardInterrupt outside Orbax. Only the main thread can set signal handlers."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list = []
    previous = signal.signal(signal.SIGINT, lambda *a: caught.append(a))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if caught:
            if callable(previous):
                previous(*caught[0])
            elif previous == signal.SIG_DFL:
                os.kill(os.getpid(), signal.SIGINT)


def _abandoned_read(unraisable: Any) -> bool:
    exc, obj = unraisable.exc_value, unraisable.object
    code = getattr(obj, "cr_code", None)
    return ((obj is None and isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed")
            or (code is not None and f"{os.sep}orbax{os.sep}" in code.co_filename))


def _abandoned_read_log(record: logging.LogRecord) -> bool:
    msg = record.getMessage()
    return not ("exception was never retrieved" in msg
                and ("reading array index" in msg or "TensorStore" in msg))


def _install_read_filters() -> Callable[[], None]:
    """Drops exactly the noise of Orbax reads abandoned after a failed read; returns the undo.

    Each call installs its own filter object: ``Logger.addFilter`` skips a filter that is
    already there and ``removeFilter`` removes it, so sharing one function would let a nested
    install's undo (a failed read inside the CLI) remove the process-wide one as well."""
    previous = sys.unraisablehook
    sys.unraisablehook = lambda u: None if _abandoned_read(u) else previous(u)
    logger = logging.getLogger("asyncio")

    def log_filter(record: logging.LogRecord) -> bool:
        return _abandoned_read_log(record)

    logger.addFilter(log_filter)

    def undo() -> None:
        sys.unraisablehook = previous
        logger.removeFilter(log_filter)

    return undo


@contextlib.contextmanager
def _quiet_failed_read() -> Iterator[None]:
    """When one tensorstore read fails, Orbax abandons its sibling reads; their coroutines and
    callbacks print "Exception ignored ... Event loop is closed" (and the read error again) to
    stderr after our one-line CheckpointError. Those are dropped while the read is in flight,
    and the hooks are restored after it (nothing changes process-wide). Coroutines still held by
    Orbax's event loop may be collected later, at exit: an application that wants a clean
    stderr then calls :func:`silence_abandoned_reads` once (the CLI does)."""
    undo = _install_read_filters()
    try:
        yield
    except BaseException:
        gc.collect()
        raise
    finally:
        undo()


def silence_abandoned_reads() -> Callable[[], None]:
    """For applications: drops, process-wide, the stderr noise of Orbax reads abandoned after
    a failed (corrupt) read, nothing else. Returns a function that undoes it."""
    return _install_read_filters()


def _absolute(directory: str | os.PathLike) -> Path:
    # Orbax rejects relative paths; ``~`` is the home directory, as for every other path the
    # library takes (``rundir``, ``report``), not a directory named "~" in the working one.
    # (``~nosuchuser/ck``: expanduser left it as it was, a directory "~nosuchuser" here)
    path = Path(os.path.abspath(expand_user(directory)))
    _check_utf8_path(path)
    return path


def _check_utf8_path(path: Path) -> None:
    """Refuses a path whose bytes on disk are not its UTF-8 spelling. Python names files in the
    locale's encoding; Orbax's array writer (TensorStore) in UTF-8. Under a Latin-1 locale a
    run directory ``ü`` got its metadata in ``ü`` and its arrays in ``Ã¼`` (exit code 0, a
    checkpoint with no weights, later refused as corrupt); under an ASCII one (``LC_ALL=C``
    with ``PYTHONUTF8=0``) the write failed with "Unable to cast", reported as a full disk.
    Under a UTF-8 locale only a name holding bytes that are not UTF-8 (made under another
    locale) gets here: no locale helps, so the message does not suggest one."""
    name = os.fspath(path)
    try:
        if os.fsencode(name) == name.encode("utf-8"):
            return
    except UnicodeEncodeError:      # bytes the locale could not decode (surrogate escapes)
        pass
    if codecs.lookup(sys.getfilesystemencoding()).name == "utf-8":
        raise ConfigError(
            f"checkpoint path {ascii(name)[1:-1]} holds bytes that are not UTF-8 (a name made "
            "under another locale): Orbax's array writer names files in UTF-8 and cannot "
            "write there; rename it to a UTF-8 name or pass an ASCII path")
    raise ConfigError(
        f"checkpoint path {ascii(name)[1:-1]} is spelt differently by this process's file "
        f"names ({sys.getfilesystemencoding()}) and by Orbax's array writer (UTF-8): the "
        "weights would go to another directory; run under a UTF-8 locale (LC_ALL=C.UTF-8 or "
        "PYTHONUTF8=1) or pass an ASCII path")


def _make_writable_dir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CheckpointError(f"cannot create checkpoint directory {path} ({e.strerror or e}); "
                              "pass a writable directory (on the CLI: --run-dir)") from e
    if not os.access(path, os.W_OK | os.X_OK):
        raise CheckpointError(f"checkpoint directory {path} is not writable; fix its "
                              "permissions or pass a writable directory (on the CLI: --run-dir)")


def _recover(directory: Path, stale_writes: bool) -> None:
    """Finishes what a killed writer left (process 0 only): an ``.overwritten-<step>-*`` copy
    goes back if its step never got re-committed (else it is dropped); the trash is emptied;
    with ``stale_writes`` (a writer, before its first save) uncommitted Orbax writes are
    removed. Readers leave those alone: they may be a live writer's."""
    if not _primary():
        return
    try:
        entries = list(directory.iterdir())
    except OSError:
        return
    for entry in entries:
        name = entry.name
        if name.startswith(_OVERWRITTEN):
            target = directory / name[len(_OVERWRITTEN):].split("-")[0]
            if target.name.isdigit() and not target.exists():
                with contextlib.suppress(OSError):
                    os.replace(entry, target)
                    continue
            shutil.rmtree(entry, ignore_errors=True)
        elif name == _TRASH or (stale_writes and ".orbax-checkpoint-tmp" in name
                                and name.split(".")[0].isdigit()):
            shutil.rmtree(entry, ignore_errors=True)


# --------------------------------------------------------------------------- Checkpointer


class NoCheckpointError(CheckpointError):
    """A checkpoint directory that holds no committed step (never written, or its run stopped
    before its first save): a caller that knows which command writes it can say so."""


def _checked_step(step: Any) -> int:
    """``step`` as an int: an integer >= 0 (NumPy and 0-d JAX integers included). ``int()``
    truncated a float, so saving epochs 1.5 and 1.0 wrote both as step 1, the second replacing
    the first, and ``restore(step=2.7)`` read step 2."""
    try:
        value = None if isinstance(step, (bool, np.bool_)) else operator.index(step)
    except TypeError:
        value = None
    if value is None or value < 0:
        raise ConfigError(f"checkpoint step must be an integer >= 0, got {step!r}")
    return value


class Checkpointer:
    """An Orbax ``CheckpointManager`` for one directory: steps of (state pytree, JSON meta).

    ``latest_step()`` is the highest step on disk; ``max_to_keep`` is Orbax's retention (the
    most recent saves are kept). Saves are asynchronous by default: ``save`` returns once the
    arrays are on the host, and every restore, :meth:`wait_until_finished` and ``close`` (the
    ``with`` block's end) wait for the commit.
    """

    def __init__(self, directory: str | os.PathLike, max_to_keep: int | None = 3,
                 save_interval_steps: int = 1, async_save: bool = True,
                 identity: dict | None = None, read_only: bool = False):
        """Opens (and creates if missing) a checkpoint directory.

        Args:
          directory: relative paths are made absolute (Orbax needs that).
          max_to_keep: keep at most this many steps; ``None`` keeps all.
          save_interval_steps: :meth:`save` skips steps that are not a multiple of this
            unless called with ``force=True``.
          async_save: commit in a background thread (the call returns once the arrays are
            copied to host); False waits for the commit inside :meth:`save`.
          identity: what this run is (JSON: recipe, data, request, role, ...). Stored with the
            first save as ``identity.json``; opening a directory whose steps belong to a
            different identity raises, naming the first differing field, so a resumed run
            (``fit``, ``run_gradtau``, ``train_gan``, ... with this checkpointer) can never
            continue another run.
          read_only: only read it (``save`` refuses): the directory must exist but need not be
            writable, so a run on a read-only mount or archived with ``chmod -w`` can still be
            evaluated and unlearned from (into another ``--out``).

        Raises:
          ConfigError: ``max_to_keep`` < 1 or ``save_interval_steps`` < 1.
          CheckpointError: the directory cannot be created or is not writable (or, with
            ``read_only``, does not exist).
        """
        # bool is an int to Python: True would keep one step, False none.
        if max_to_keep is not None and (not isinstance(max_to_keep, int)
                                        or isinstance(max_to_keep, bool) or max_to_keep < 1):
            raise ConfigError(f"max_to_keep must be None or an int >= 1, got {max_to_keep!r}")
        if (not isinstance(save_interval_steps, int) or isinstance(save_interval_steps, bool)
                or save_interval_steps < 1):
            raise ConfigError(f"save_interval_steps must be an int >= 1, got "
                              f"{save_interval_steps!r}")
        self.directory = _absolute(directory)
        self.identity = (None if identity is None
                         else checks.jsonable_meta(identity, self.directory))
        self.max_to_keep = max_to_keep
        self.save_interval_steps = save_interval_steps
        self.async_save = async_save
        self.read_only = read_only
        if not read_only:
            _make_writable_dir(self.directory)
        elif not self.directory.is_dir():
            raise NoCheckpointError(f"no checkpoint in {self.directory}; train first, or pass "
                                    "the directory a run wrote (on the CLI: --run-dir)")
        _recover(self.directory, stale_writes=False)   # on a read-only one, a no-op
        self._saved = False
        self._closed = False
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, create=not read_only,
            todelete_subdir=_TRASH, enable_async_checkpointing=async_save)
        try:
            self._manager = ocp.CheckpointManager(
                self.directory, options=options,
                # Without a registry a fresh manager on an existing directory cannot tell which
                # handler wrote each item (item_metadata() would be None).
                handler_registry=ocp.handlers.create_default_handler_registry(
                    **{_STATE: ocp.StandardCheckpointHandler(),
                       _META: ocp.JsonCheckpointHandler()}))
        except Exception as e:  # noqa: BLE001 - anything Orbax raises here is a bad directory
            raise CheckpointError(f"cannot open checkpoint directory {self.directory} "
                                  f"({type(e).__name__}: {e}); pass a writable directory (on the "
                                  "CLI: --run-dir) that holds only checkpoints of this run") from e
        if self.identity is not None:
            self._check_identity()

    def _check_identity(self) -> None:
        from hyperforget_jax.rundir import first_difference

        path = self.directory / _IDENTITY
        if not path.exists() or not self.all_steps():
            return
        try:
            stored = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise _corrupt(path, e) from e
        diff = first_difference(stored, self.identity)
        if diff is not None:
            field, was, now = diff
            raise CheckpointError(
                f"{self.directory} holds checkpoints of a different run (its {field} is "
                f"{was!r}, this run's is {now!r}); resuming would continue that run: pass an "
                "empty directory, or the identity the run was started with")

    # -- queries ------------------------------------------------------------------------------

    def all_steps(self) -> list[int]:
        """The committed steps on disk, ascending (re-read, so other processes' saves show;
        waits for this process's own save in flight)."""
        self.wait_until_finished()
        self._manager.reload()
        return sorted(int(s) for s in self._manager.all_steps())

    def latest_step(self) -> int | None:
        """The highest step on disk, or None if there is none."""
        steps = self.all_steps()
        return steps[-1] if steps else None

    def step_dir(self, step: int) -> Path:
        return self.directory / str(int(step))

    # -- save ---------------------------------------------------------------------------------

    def save(self, step: int, state: Any, meta: dict | None = None, force: bool = False) -> None:
        """Writes ``state`` and ``meta`` as step ``step`` (committed in the background).

        Saving a step that already exists replaces it; the old copy is dropped only once the
        new one is committed, so a failed or killed save keeps the previous one.

        Args:
          step: non-negative step number (the directory name).
          state: any pytree of arrays/scalars, e.g. a ``TrainState``.
          meta: JSON-serialisable dict (config, data split, forget request, ...).
          force: save even if ``step`` is not a multiple of ``save_interval_steps``.

        Raises:
          NonFiniteError: a float leaf of ``state`` holds NaN/inf (nothing is written).
          CheckpointError: the checkpointer was opened ``read_only``, ``meta`` is not JSON, a
            leaf is not a numeric array/scalar (or is a Python int past 64 bits), or the write
            (this one or the previous, still committing) failed.
          ConfigError: ``step`` is not an integer >= 0.
        """
        step = _checked_step(step)
        if self.read_only:
            raise CheckpointError(f"{self!r} was opened read_only; open it without read_only to "
                                  "save")
        if not force and step % self.save_interval_steps != 0:
            return
        where = self.step_dir(step)
        meta = checks.jsonable_meta(meta, where)
        if checks.SETTINGS_KEY in meta:     # (overwritten, then dropped on restore)
            raise ConfigError(f"meta key {checks.SETTINGS_KEY!r} is reserved for the JAX "
                              "settings the checkpoint records; name yours otherwise")
        # The JAX settings a resume must share (checks.refuse_other_jax_settings).
        meta = {**meta, checks.SETTINGS_KEY: checks.jax_settings()}
        checks.check_savable(state, f"step {step} to {where}")  # before touching the disk
        state = checks.at_jax_width(state, f"step {step} to {where}")
        with _hold_sigint():
            self.wait_until_finished()
            if not self._saved:
                _recover(self.directory, stale_writes=True)  # earlier processes' debris
                if self.identity is not None and _primary():
                    from hyperforget_jax.report import atomic_write

                    atomic_write(self.directory / _IDENTITY, json.dumps(self.identity) + "\n")
                self._saved = True
            backup = self._move_aside(step) if step in self.all_steps() else None
            try:
                self._manager.save(step, args=ocp.args.Composite(
                    **{_STATE: ocp.args.StandardSave(state), _META: ocp.args.JsonSave(meta)}),
                    force=True)  # our interval check ran; Orbax's skips steps <= latest
                if backup is not None or not self.async_save:
                    self.wait_until_finished()
            except BaseException as e:
                self._abort(where, backup)
                if isinstance(e, CheckpointError) or not isinstance(e, Exception):
                    raise
                raise CheckpointError(f"could not write checkpoint {where} ({type(e).__name__}: "
                                      f"{e}); check disk space and permissions of the run "
                                      "directory") from e
            if backup is not None:
                shutil.rmtree(backup, ignore_errors=True)

    def _move_aside(self, step: int) -> Path | None:
        # Orbax refuses to save over a step; keep the old copy under a name it does not list.
        backup = self.directory / f"{_OVERWRITTEN}{step}-{uuid.uuid4().hex[:8]}"
        if not _primary():
            return None
        try:
            os.replace(self.step_dir(step), backup)
        except OSError as e:
            raise CheckpointError(f"cannot replace existing checkpoint {self.step_dir(step)} "
                                  f"({e}); check the permissions of the run directory") from e
        self._manager.reload()
        return backup

    def _abort(self, where: Path, backup: Path | None) -> None:
        with contextlib.suppress(Exception):
            self._manager.wait_until_finished()
        if _primary():
            for tmp in self.directory.glob(f"{where.name}.orbax-checkpoint-tmp*"):
                shutil.rmtree(tmp, ignore_errors=True)
            if backup is not None:
                shutil.rmtree(where, ignore_errors=True)
                os.replace(backup, where)
        self._manager.reload()

    def wait_until_finished(self) -> None:
        """Blocks until the last save is committed (and its old steps dropped).

        Raises:
          CheckpointError: that save failed in the background.
        """
        try:
            self._manager.wait_until_finished()
        except Exception as e:  # noqa: BLE001
            self._manager.reload()
            raise CheckpointError(f"a checkpoint write into {self.directory} failed "
                                  f"({type(e).__name__}: {e}); check disk space and "
                                  "permissions, then rerun to resume from the last committed "
                                  "step") from e
        if _primary() and (self.directory / _TRASH).exists():
            shutil.rmtree(self.directory / _TRASH, ignore_errors=True)

    # -- restore ------------------------------------------------------------------------------

    def _resolve_step(self, step: int | None) -> int:
        self.wait_until_finished()
        steps = self.all_steps()
        if not steps:
            raise NoCheckpointError(f"no checkpoint in {self.directory}; train first, or pass "
                                    "the directory a run wrote (on the CLI: --run-dir)")
        if step is None:
            return steps[-1]
        step = _checked_step(step)
        if step not in steps:
            raise CheckpointError(f"no checkpoint for step {step} in {self.directory} "
                                  f"(steps on disk: {steps}); pass one of those steps or omit "
                                  "it for the latest")
        return step

    def restore(self, template: Any, step: int | None = None) -> tuple[Any, dict]:
        """Loads a step into the structure of ``template``.

        Args:
          template: pytree with the saved structure, shapes and dtypes, e.g. a freshly
            initialised ``TrainState`` (arrays or ``jax.ShapeDtypeStruct``).
          step: step to load; ``None`` means the latest.

        Returns:
          ``(state, meta)``: ``state`` has ``template``'s exact tree structure.

        Raises:
          CheckpointError: no checkpoint (or not that step), a structure/shape/dtype mismatch
            with ``template`` (naming the first differing leaf), or corrupt/truncated files.
          ConfigError: ``step`` is not None or an integer >= 0.
        """
        step = self._resolve_step(step)
        where = self.step_dir(step)
        with _quiet_failed_read():
            try:
                on_disk = _tree_of(self._manager.item_metadata(step)[_STATE])
            except Exception as e:  # noqa: BLE001
                raise _corrupt(where, e) from e
            if on_disk is None:
                raise _corrupt(where, FileNotFoundError(f"no {_STATE!r} item"))
            template = checks.at_jax_width(template, None)    # as save stored its leaves
            checks.check_template(template, on_disk, where)
            template = _placed(template)
            try:
                out = self._manager.restore(step, args=ocp.args.Composite(
                    **{_STATE: ocp.args.StandardRestore(template),
                       _META: ocp.args.JsonRestore()}))
            except Exception as e:  # noqa: BLE001
                raise _corrupt(where, e) from e
        meta = _check_meta(out[_META], where)
        meta.pop(checks.SETTINGS_KEY, None)         # (written_under reads it)
        return checks.rebuild_like(template, out[_STATE], where), meta

    def restore_meta(self, step: int | None = None) -> dict:
        """Only the JSON meta of a step (no arrays are read); ``None`` means the latest."""
        meta = self._raw_meta(step)
        meta.pop(checks.SETTINGS_KEY, None)
        return meta

    def written_under(self, step: int | None = None) -> dict | None:
        """The JAX settings (``checkpoint_checks.jax_settings``) of the process that saved a
        step (``None``: the latest); None for a step saved before they were recorded."""
        return self._raw_meta(step).get(checks.SETTINGS_KEY)

    def _raw_meta(self, step: int | None) -> dict:
        step = self._resolve_step(step)
        where = self.step_dir(step)
        try:
            out = self._manager.restore(step, args=ocp.args.Composite(
                **{_META: ocp.args.JsonRestore()}))
        except Exception as e:  # noqa: BLE001
            raise _corrupt(where, e) from e
        return _check_meta(out[_META], where)

    # -- lifecycle ----------------------------------------------------------------------------

    def close(self) -> None:
        """Waits for the last commit and releases Orbax's threads. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        with _hold_sigint():
            try:
                self.wait_until_finished()
            finally:
                self._manager.close()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Checkpointer({str(self.directory)!r}, max_to_keep={self.max_to_keep})"


# --------------------------------------------------------------------------- single-shot params


def default_device() -> jax.Device:
    """The device JAX puts new arrays on: ``jax.default_device(...)``'s if set, else this
    process's first. Local, as JAX's own default: ``jax.devices()[0]`` is process 0's in a
    multi-process run (a TPU pod, ``jax.distributed``), where every other process read a sound
    checkpoint onto a device it cannot address and called it corrupt."""
    where = jax.config.jax_default_device
    return (jax.local_devices(backend=where)[0] if isinstance(where, str)
            else where if where is not None else jax.local_devices()[0])


def _placed(template: Any) -> Any:
    """``template`` with a ``jax.ShapeDtypeStruct`` leaf that names no sharding placed on the
    default device: without one Orbax takes the device the checkpoint was written from, and a
    run written on GPU and read on CPU (or from device 3 of 4, read with one) failed with
    "Topology mismatch" as if corrupt."""
    sharding = jax.sharding.SingleDeviceSharding(default_device())
    return jax.tree_util.tree_map(
        lambda l: (jax.ShapeDtypeStruct(l.shape, l.dtype, sharding=sharding,
                                        weak_type=l.weak_type)
                   if isinstance(l, jax.ShapeDtypeStruct) and l.sharding is None else l),
        template)


def _recover_params(path: Path) -> None:
    """Finishes what a killed :func:`save_params` left beside ``path`` (process 0 only, called
    by the next save): its previous copy ``.<name>.old-*`` goes back if ``path`` is missing
    (killed between the two renames), else it is dropped, and stale ``.<name>.tmp-*`` writes
    are removed. A reader changes nothing (it may race a live writer): it reads the previous
    copy where it lies (:func:`_params_dir`)."""
    if not _primary():
        return
    for entry in _leftovers(path, "old"):
        if not path.exists():
            with contextlib.suppress(OSError):
                os.replace(entry, path)
                continue
        shutil.rmtree(entry, ignore_errors=True)
    for entry in _leftovers(path, "tmp"):
        shutil.rmtree(entry, ignore_errors=True)


def _leftovers(path: Path, kind: str) -> list[Path]:
    """The ``.<name>.<kind>-<8 hex>`` directories a :func:`save_params` of ``path`` left beside
    it (with Orbax's ``.orbax-checkpoint-tmp`` write of a ``tmp`` one): exactly those. A prefix
    also matched another checkpoint's, ``<name>.old-best``'s ``.<name>.old-best.old-*``, which a
    load of ``<name>`` then read and a save of it took over (restored as its own, then deleted).
    """
    tail = r"(\.orbax-checkpoint-tmp.*)?" if kind == "tmp" else ""
    pattern = re.compile(rf"\.{re.escape(path.name)}\.{kind}-[0-9a-f]{{8}}{tail}")
    try:
        return [e for e in sorted(path.parent.iterdir()) if pattern.fullmatch(e.name)]
    except OSError:
        return []


def _previous_copy(path: Path) -> Path | None:
    """The complete previous copy a :func:`save_params` killed between its two renames left
    hidden beside a missing ``path``, if any."""
    return next((e for e in _leftovers(path, "old") if _is_params_checkpoint(e)), None)


def _is_params_checkpoint(path: Path) -> bool:
    return (path / _PARAMS).is_dir() and (path / _META).is_dir()


def save_params(path: str | os.PathLike, params: Any, meta: dict | None = None) -> None:
    """Writes one params pytree (no steps) to the directory ``path``, atomically.

    An existing params checkpoint at ``path`` is replaced only once the new one is complete; a
    non-empty directory that is not a params checkpoint is never overwritten. A ``path`` that
    is a symlink is written through (its target is replaced, the link stays). Leaves are stored
    at JAX's width: a float64 NumPy leaf is written as float32 unless ``jax_enable_x64`` is on
    (as JAX itself would hold it).

    Raises:
      NonFiniteError: ``params`` holds NaN/inf (nothing is written).
      CheckpointError: ``meta`` is not JSON, a leaf is a Python int past 64 bits, ``path`` is a
        file or another kind of non-empty directory, or the write failed.
    """
    path = _absolute(path)
    if path.is_symlink():   # renaming the link aside would leave its target holding the old
        path = path.resolve()
    meta = checks.jsonable_meta(meta, path)
    checks.check_savable(params, f"params to {path}")
    params = checks.at_jax_width(params, f"params to {path}")
    if path.exists() and not path.is_dir():
        raise CheckpointError(f"{path} is a file, not a params directory; pass a new path")
    if path.is_dir() and any(path.iterdir()) and not _is_params_checkpoint(path):
        raise CheckpointError(f"refusing to overwrite {path}: it is a non-empty directory but "
                              "not a params checkpoint; pass a new or empty path")
    _make_writable_dir(path.parent)
    _recover_params(path)
    # Orbax's own force=True deletes the old copy before writing; write beside and rename.
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    with _hold_sigint():
        try:
            with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckptr:
                ckptr.save(tmp, args=ocp.args.Composite(
                    **{_PARAMS: ocp.args.StandardSave(params), _META: ocp.args.JsonSave(meta)}))
        except Exception as e:  # noqa: BLE001
            for partial in path.parent.iterdir():      # and Orbax's own tmp of it
                if partial.name.startswith(tmp.name):
                    shutil.rmtree(partial, ignore_errors=True)
            raise CheckpointError(f"could not write params to {path} ({type(e).__name__}: {e});"
                                  " check disk space and permissions") from e
        old = path.parent / f".{path.name}.old-{uuid.uuid4().hex[:8]}" if path.exists() else None
        if old is not None:
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def _params_dir(path: str | os.PathLike) -> Path:
    path = _absolute(path)
    if path.is_symlink():       # save_params writes through a link: its copies lie by the target
        path = path.resolve()
    if not path.exists():       # a save killed between its renames: its previous copy
        path = _previous_copy(path) or path
    if not path.is_dir() or not any(path.iterdir()):
        raise CheckpointError(f"no params checkpoint at {path}; train first or pass the right "
                              "path")
    if not _is_params_checkpoint(path):
        hint = (" (it looks like a run directory: use Checkpointer(...).restore)"
                if any(p.name.isdigit() for p in path.iterdir()) else "")
        raise CheckpointError(f"{path} is not a params checkpoint written by save_params{hint};"
                              " pass the right path")
    return path


def load_params_meta(path: str | os.PathLike) -> dict:
    """Only the JSON meta of a :func:`save_params` checkpoint (no arrays are read)."""
    path = _params_dir(path)
    try:
        with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckptr:
            meta = ckptr.restore(path, args=ocp.args.Composite(
                **{_META: ocp.args.JsonRestore()}))[_META]
    except Exception as e:  # noqa: BLE001
        raise _corrupt(path, e) from e
    return _check_meta(meta, path)


def load_params(path: str | os.PathLike, template: Any = None) -> tuple[Any, dict]:
    """Reads a params checkpoint written by :func:`save_params`.

    Args:
      path: the directory given to :func:`save_params`.
      template: pytree with the saved structure/shapes/dtypes; the result takes its exact
        structure. If None, the raw tree is returned as NumPy arrays in nested dicts and lists
        (a saved tuple comes back as a list, a NamedTuple as a dict of its fields).

    Returns:
      ``(params, meta)``.

    Raises:
      CheckpointError: nothing (or something else) at ``path``, a mismatch with
        ``template``, or corrupt/truncated files.
    """
    path = _params_dir(path)
    with _quiet_failed_read():
        try:
            on_disk = _tree_of(ocp.StandardCheckpointHandler().metadata(path / _PARAMS))
            if on_disk is None:
                raise FileNotFoundError(f"no array metadata in {path / _PARAMS}")
            if template is not None:
                template = checks.at_jax_width(template, None)    # as save stored its leaves
                checks.check_template(template, on_disk, path)
                template = _placed(template)
            else:
                checks.check_readable_width(on_disk, path)
            with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckptr:
                out = ckptr.restore(path, args=ocp.args.Composite(
                    **{_PARAMS: ocp.args.StandardRestore(template),
                       _META: ocp.args.JsonRestore()}))
        except CheckpointError:
            raise
        except Exception as e:  # noqa: BLE001
            raise _corrupt(path, e) from e
    if template is not None:
        params = checks.rebuild_like(template, out[_PARAMS], path)
    else:
        params = jax.tree_util.tree_map(np.asarray, out[_PARAMS])
        bad = checks.first_non_finite(params)
        if bad is not None:
            raise CheckpointError(f"checkpoint {path} is corrupt: leaf {bad!r} contains NaN/inf,"
                                  " which save_params() never writes; write it again")
    return params, _check_meta(out[_META], path)
