"""Run directories: who wrote them (``run.json``), who is writing them (a lock), and which
directories a command may write into.

Every command that writes a directory (``train``, ``retrain``, ``unlearn``, ``evaluate``,
``corpus``, ``hypertrain``, ``sample``, ``gan train | unlearn | evaluate``, ``demo``) opens it with
:func:`open_run`, passing the *identity* of what it is about to write: its role and everything
that determines the result (the whole recipe, architecture, dataset, split seed, a fingerprint of
the data, the forget request, the run it starts from). Then:

* **Resume checks.** A directory that already holds a run is only resumed (or, for one-shot
  outputs, replaced by a rerun) when its stored identity equals the new one, field by field;
  otherwise :class:`~hyperforget_jax.errors.RunDirError` names the first differing field and the
  fix. A Retrain can therefore never resume from an original, a seed-1 run never returns a
  seed-0 model, and ``--epochs 1`` never returns a 3-epoch model.
* **No overwriting what a command reads.** The output may not be a directory the command reads
  from, nor lie inside one's ``checkpoints/`` or ``params/``, nor contain one there.
* **One writer.** A lock file (``.hyperforget.lock``: pid, host, command) is held while writing;
  a second writer is refused while the owner lives, and a stale lock (owner gone, e.g. after
  ``kill -9``) is taken over. Liveness comes from an ``fcntl`` lock on the file, which the kernel
  drops when the owner dies, so a recycled pid never blocks a directory.
* **Nothing half-written.** If the command fails before writing anything but ``run.json``, the
  directory is left as it was found (removed if the command created it).

Identity values are JSON; the comparison is exact except that the identity of an older
hyperforget version may lack fields (they are compared as ``None``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fnmatch
import hashlib
import itertools
import json
import os
import re
import shutil
import socket
import stat
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from hyperforget_jax import report
from hyperforget_jax.config import expand_user
from hyperforget_jax.errors import RunDirError

__all__ = ["RunDirError", "RunDir", "open_run", "check_output", "read_identity",
           "check_readable", "first_difference", "data_fingerprint", "LOCK_NAME", "IDENTITY_NAME",
           "Cells", "CELLS_NAME", "open_sweep"]

IDENTITY_NAME = "run.json"
LOCK_NAME = ".hyperforget.lock"
CELLS_NAME = "cells"
# Sub-directories that belong to a run and that no other output may be placed in.
RESERVED = ("checkpoints", "params", "hypernet")


def _abs(path: str | os.PathLike) -> Path:
    # (``~nosuchuser/run``: expanduser left it as it was, a directory "~nosuchuser" here)
    return Path(os.path.abspath(expand_user(path)))


def _is_primary() -> bool:
    # In a multi-host job every process runs the same command; only process 0 writes run.json
    # and holds the lock (the others would otherwise lock each other out).
    try:
        import jax

        return jax.process_index() == 0
    except Exception:  # noqa: BLE001 - no backend yet (e.g. in a helper process)
        return True


# --------------------------------------------------------------------------- data fingerprint


def data_fingerprint(*datasets: Any) -> str:
    """A short hash of the images and labels of ``datasets`` (``Dataset`` or ``Splits``).

    Identifies the data a run was trained on independently of where it was loaded from, so a
    resumed run notices a changed dataset under the same name. ~40 ms for MNIST-5k.
    """
    arrays = []
    for ds in datasets:
        parts = ds if isinstance(ds, tuple) else (ds,)  # Splits is a NamedTuple of Datasets
        arrays += [a for d in parts for a in (d.x, d.y)]
    return array_fingerprint(*arrays)


def array_fingerprint(*arrays: Any) -> str:
    """A short hash of ``arrays`` (dtypes, shapes and bytes, in order)."""
    h = hashlib.blake2b(digest_size=12)
    for arr in arrays:
        a = np.ascontiguousarray(arr)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.reshape(-1).view(np.uint8))      # the same bytes; bfloat16 too
    return h.hexdigest()


# --------------------------------------------------------------------------- identity


def first_difference(stored: Any, wanted: Any, prefix: str = "") -> tuple[str, Any, Any] | None:
    """The first (dotted path, stored value, wanted value) at which two JSON trees differ, in
    the key order of ``wanted``; ``None`` when equal. Missing keys compare as ``None``."""
    if isinstance(stored, dict) and isinstance(wanted, dict):
        keys = list(wanted) + [k for k in stored if k not in wanted]
        for k in keys:
            d = first_difference(stored.get(k), wanted.get(k), f"{prefix}.{k}" if prefix else k)
            if d is not None:
                return d
        return None
    if isinstance(stored, list) and isinstance(wanted, list) and len(stored) == len(wanted):
        for i, (a, b) in enumerate(zip(stored, wanted)):
            d = first_difference(a, b, f"{prefix}[{i}]")
            if d is not None:
                return d
        return None
    return None if stored == wanted else (prefix or "<identity>", stored, wanted)


def _json_default(o: Any) -> Any:
    if dataclasses.is_dataclass(o) and not isinstance(o, type):
        return dataclasses.asdict(o)
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, os.PathLike):
        return os.fspath(o)
    raise TypeError(f"{type(o).__name__} in a run identity is not JSON")


def _normalise(identity: dict) -> dict:
    """What a JSON round trip returns (tuples → lists, dataclasses → dicts, NumPy → lists)."""
    return json.loads(json.dumps(identity, default=_json_default))


# The checkpoints beside a damaged run.json may be sound: deleting the directory is the last
# resort, not the advice.
_DAMAGED_ADVICE = ("restore it from a copy (the other files in the directory are untouched), "
                   "or pass another directory")


def read_identity(path: str | os.PathLike) -> dict | None:
    """The identity stored in run directory ``path``, or ``None`` if it has none."""
    f = _abs(path) / IDENTITY_NAME
    try:
        text = f.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except NotADirectoryError:
        raise RunDirError(f"{_abs(path)} is a file, not a run directory; pass the directory "
                          "the command wrote") from None
    except OSError as e:
        raise RunDirError(f"cannot read {f} ({e.strerror}); fix its permissions") from e
    try:
        ident = json.loads(text)
    except ValueError as e:
        raise RunDirError(f"{f} is not valid JSON (damaged?); {_DAMAGED_ADVICE}") from e
    ident = ident.get("identity", ident) if isinstance(ident, dict) else ident
    if not isinstance(ident, dict):     # ({"identity": [1]} was a TypeError in the comparison)
        raise RunDirError(f"{f} does not hold a run identity; {_DAMAGED_ADVICE}")
    return ident


def _describe(value: Any) -> str:
    s = json.dumps(value, sort_keys=True) if not isinstance(value, str) else repr(value)
    return s if len(s) <= 80 else s[:77] + "..."


# --------------------------------------------------------------------------- lock


def _lock_info(lock_file: Path) -> dict:
    try:
        info = json.loads(lock_file.read_text(encoding="utf-8") or "{}")
        return info if isinstance(info, dict) else {}
    except (OSError, ValueError):
        return {}


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class _Lock:
    """An exclusive, non-blocking lock on ``<dir>/.hyperforget.lock``.

    The file records the owner (pid, host, command, start time) for the error message of a
    refused writer; the ``fcntl.flock`` on it is what decides, and the kernel releases it when
    the owner dies. Where flock is not supported, a lock whose pid is alive on this host, or
    whose owner runs on another host (its liveness cannot be checked), is honoured; a lock of a
    dead process on this host is treated as stale.
    """

    def __init__(self, directory: Path, command: str):
        self.path = directory / LOCK_NAME
        self.command = command
        self.fd: int | None = None

    def acquire(self) -> None:
        import fcntl

        for _ in range(20):
            fd = self._open()
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                os.close(fd)
                if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    self._refuse(_lock_info(self.path))
                if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                    raise
                self._acquire_without_flock()
                return
            # The previous owner may have unlinked the file between our open and our flock:
            # then we locked an orphan inode; retry on the current file.
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            try:
                self._write_info(fd)
            except OSError as e:
                # A full disk: a traceback, and an empty lock left in the directory (which
                # open_run then could not remove; stop 64).
                os.close(fd)
                with contextlib.suppress(OSError):
                    os.unlink(self.path)
                raise RunDirError(f"cannot write the lock file {self.path} ({e.strerror}); "
                                  "check the disk space and permissions there") from e
            self.fd = fd
            return
        raise RunDirError(f"could not lock {self.path} (another process keeps replacing it); "
                          "make sure only one command writes this directory")

    def _acquire_without_flock(self) -> None:
        info = _lock_info(self.path)
        pid = info.get("pid")
        host = info.get("host")
        if isinstance(pid, int) and (pid, host) != (os.getpid(), socket.gethostname()):
            if host == socket.gethostname():
                if _pid_alive(pid):
                    self._refuse(info)
            else:
                # The owner runs on another machine (a shared file system without flock): its
                # liveness cannot be checked from here, so the lock is honoured, not taken over.
                self._refuse(info, elsewhere=True)
        fd = self._open()
        self.fd = fd
        self._write_info(fd)

    def _open(self) -> int:
        """The lock file, opened for writing. Never through a symbolic link or into anything
        but a regular file: taking the lock truncates the file, so a ``.hyperforget.lock`` link
        planted in a shared run directory (a colleague's tarball) truncated and overwrote
        the file it pointed to, anywhere the user can write, and the release removed the link."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK,
                         0o666)
        except OSError as e:
            if e.errno != errno.ELOOP:
                raise
            fd = None
        if fd is None or not stat.S_ISREG(os.fstat(fd).st_mode):
            if fd is not None:
                os.close(fd)
            raise RunDirError(f"{self.path} is not a lock file hyperforget wrote (a symbolic "
                              "link or a special file): it would write through it; delete it "
                              "and check where the run directory came from")
        return fd

    def _write_info(self, fd: int) -> None:
        info = {"pid": os.getpid(), "host": socket.gethostname(), "command": self.command,
                # Local time with its UTC offset: the refusal may be read on another host,
                # in another zone (a shared file system).
                "started": time.strftime("%Y-%m-%d %H:%M:%S %z")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)

    def _refuse(self, info: dict, elsewhere: bool = False) -> None:
        who = (f"process {info.get('pid', '?')} on {info.get('host', '?')} "
               f"(`{info.get('command', '?')}`, started {info.get('started', '?')})")
        how = (" (this file system has no flock, so whether it still runs cannot be checked "
               "from this host)" if elsewhere else "")
        raise RunDirError(f"{self.path.parent} is being written by {who}{how}; wait for it to "
                          f"finish or pass another directory (if that process is gone, delete "
                          f"{self.path})")

    def release(self) -> None:
        if self.fd is None:
            return
        with contextlib.suppress(OSError):
            os.unlink(self.path)  # unlink while still locked: no one can lock this inode
        with contextlib.suppress(OSError):
            os.close(self.fd)
        self.fd = None


def locked_by_other(path: str | os.PathLike) -> dict | None:
    """Owner info if another live process holds the lock of run directory ``path``."""
    lock_file = _abs(path) / LOCK_NAME
    if not lock_file.exists():
        return None
    import fcntl

    try:
        fd = os.open(lock_file, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return _lock_info(lock_file)
        return None
    finally:
        os.close(fd)
    return None


# --------------------------------------------------------------------------- run directories


def _inside(child: Path, parent: Path) -> bool:
    try:
        child.relative_to(parent)
        return True
    except ValueError:
        return False


def _check_not_an_input(out: Path, reads: Sequence[Path], flag: str) -> None:
    for src in reads:
        src_r, out_r = src.resolve(), out.resolve()
        if out_r == src_r:
            raise RunDirError(f"{flag} {out} is the run this command reads from; writing there "
                              "would destroy it: pass another output directory")
        for sub in RESERVED:
            if _inside(out_r, src_r / sub):
                raise RunDirError(f"{flag} {out} lies inside {src / sub}, which belongs to the "
                                  "run this command reads from; pass another output directory")
            if _inside(src_r, out_r / sub):
                raise RunDirError(f"the run this command reads from ({src}) lies inside "
                                  f"{out / sub}, which this command writes; pass another output "
                                  "directory")


def check_readable(path: str | os.PathLike) -> None:
    """Refuses to read run directory ``path`` while another process is writing it."""
    info = locked_by_other(path)
    if info is not None:
        raise RunDirError(f"{_abs(path)} is being written by process {info.get('pid', '?')} on "
                          f"{info.get('host', '?')} (`{info.get('command', '?')}`); reading it "
                          "now would give an unfinished result: wait until it finishes")


def _entries(path: Path) -> list[str]:
    try:
        return sorted(p.name for p in path.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []


def _ours(name: str) -> bool:
    return name in (IDENTITY_NAME, LOCK_NAME) or name.startswith(".write-test-")


class RunDir:
    """An open run directory (see :func:`open_run`); ``path`` is absolute."""

    def __init__(self, path: Path, identity: dict, existed: bool, resumed: bool):
        self.path = path
        self.identity = identity
        self.resumed = resumed
        self._existed = existed

    def __truediv__(self, other: str) -> Path:
        return self.path / other

    def __fspath__(self) -> str:
        return os.fspath(self.path)


@contextlib.contextmanager
def open_run(path: str | os.PathLike, identity: dict, *, reads: Sequence[str | os.PathLike] = (),
             flag: str = "--run-dir", replace_role: bool = False,
             command: str = "hyperforget",
             legacy: Callable[[Path], dict | None] | None = None,
             outputs: Sequence[str] = (), caches: Sequence[str] = ()) -> Iterator[RunDir]:
    """Claims ``path`` for writing a run of ``identity`` (see the module docstring).

    Args:
      path: the output directory (created if missing).
      identity: JSON-able dict; ``identity["role"]`` names the kind of run. Its first
        differing field against a stored identity is named in the error.
      reads: directories the command reads; the output may not be (or overlap the reserved
        sub-directories of) any of them.
      flag: the option that named ``path``, for messages (``--run-dir``, ``--out``).
      replace_role: one-shot reports (``evaluate``, ``demo``): an existing output of the same
        role is replaced even if its identity differs (never one of another role).
      command: recorded in the lock file, for the message a refused second writer sees.
      legacy: for directories written before ``run.json`` existed: returns the identity fields
        their own files record (compared like a stored identity), or None (refused).
      outputs: the files a one-shot report writes at its end (with ``replace_role``). They are
        removed when the directory changes identity, so a report that fails or is interrupted
        never leaves the previous report's results beside the new identity.
      caches: entries that a rerun rebuilds (a GAN unlearning run's ``judge/``, a corpus's
        ``index.json``). A command that fails before writing anything else removes them with
        the rest, so the directory is left as it was found and a rerun with other settings is
        not refused.

    Yields:
      A :class:`RunDir`; ``resumed`` tells whether the directory already held this run.

    Raises:
      RunDirError: the directory holds another run, is locked by a live process, is not empty
        and holds no run, or is one the command reads.
      ConfigError: the directory cannot be created or written.
    """
    identity = _normalise(identity)
    out = _abs(path)
    existed, stored, others = _check_place(out, reads, flag)
    _check_identity(out, _or_legacy(out, stored, others, legacy), identity, others, flag,
                    replace_role)
    primary = _is_primary()
    created = not existed
    # The missing folders above it too (``runs/`` of ``runs/orig``): a failed start removes
    # those it made, if still empty.
    made_above = list(itertools.takewhile(lambda a: not a.exists(), out.parents))
    report.prepare_dir(out, flag)
    lock = _Lock(out, command)
    if primary:
        try:
            lock.acquire()
        except BaseException:
            if created:
                _remove_if_empty(out, made_above)
            raise
    ok, before = False, set()
    try:
        # Re-read under the lock: another writer may have finished in between.
        stored = read_identity(out)
        others = [n for n in _entries(out) if not _ours(n)]
        before = set(others)      # a directory of an older version's run, adopted: its own
        _check_identity(out, _or_legacy(out, stored, others, legacy), identity, others, flag,
                        replace_role)
        if primary and stored != identity:
            for name in outputs:               # the previous identity's results
                with contextlib.suppress(FileNotFoundError, IsADirectoryError):
                    (out / name).unlink()
            report.write_json(out / IDENTITY_NAME, {"identity": identity})
        yield RunDir(out, identity, existed, resumed=stored == identity and bool(others))
        ok = True
    finally:
        if not ok and primary and stored is None:
            # Failed before writing anything of its own (at most empty folders, such as a
            # checkpoint manager's): leave the directory as it was. An older version's run
            # adopted (no run.json, its files) keeps them, and loses the run.json written for
            # it: a refused `corpus` left its flags recorded over a corpus built with others,
            # and the right flags were then refused.
            written = [n for n in _entries(out) if not _ours(n) and n not in before]
            if all(n in caches or _empty_tree(out / n) for n in written):
                with contextlib.suppress(OSError):
                    for n in written:
                        if n in caches and (out / n).is_dir():
                            shutil.rmtree(out / n)
                        elif n in caches:       # a file (a corpus's index.json)
                            (out / n).unlink()
                        else:
                            _remove_empty_tree(out / n)
                    (out / IDENTITY_NAME).unlink()
        lock.release()
        if not ok and created:
            _remove_if_empty(out, made_above)


def _check_place(out: Path, reads: Sequence[str | os.PathLike], flag: str
                 ) -> tuple[bool, dict | None, list[str]]:
    _check_not_an_input(out, [_abs(r) for r in reads], flag)
    try:
        existed = out.exists()
    except OSError as e:    # ENAMETOOLONG: Path.exists re-raised it (a traceback)
        raise RunDirError(f"{flag} {out}: {e.strerror}; pass a shorter path") from e
    if existed and not out.is_dir():
        raise RunDirError(f"{flag} {out} is a file, not a directory; pass a directory")
    stored = read_identity(out) if existed else None
    return existed, stored, [n for n in _entries(out) if not _ours(n)]


def check_output(path: str | os.PathLike, *, reads: Sequence[str | os.PathLike] = (),
                 flag: str = "--out", known: dict | None = None) -> None:
    """The checks of :func:`open_run` that need no identity, for a command that must do long
    work before it knows its output's identity: ``path`` is not one of ``reads``, not a file,
    and not a non-empty directory that holds no run. ``known``: the fields of the identity
    known up front (role, method, request, ...); a run there that differs in one of them is
    refused now, not after the long work (``unlearn`` first trained an original into an empty
    ``--run-dir``, then exited 2 on an ``--out`` holding another command's run). A field the
    stored identity lacks (an older version's) is left to :func:`open_run`. It repeats them."""
    out = _abs(path)
    _, stored, others = _check_place(out, reads, flag)
    if stored is None:          # refused if it holds anything (a legacy run is not an output)
        _check_identity(out, None, {}, others, flag, False)
    elif known:
        wanted = _normalise(known)      # as stored: lists, not tuples
        _check_identity(out, {k: v for k, v in stored.items() if k in wanted},
                        {k: v for k, v in wanted.items() if k in stored}, others, flag, False)


def _or_legacy(out: Path, stored: dict | None, others: list[str],
               legacy: Callable[[Path], dict | None] | None) -> dict | None:
    if stored is not None or not others or legacy is None:
        return stored
    found = legacy(out)
    return None if found is None else {**found, _LEGACY: True}


_LEGACY = "__legacy__"


def _a(role: Any) -> str:
    return f"{'an' if str(role)[:1].lower() in 'aeiou' else 'a'} {role!r}"


def _empty_tree(path: Path) -> bool:
    """A folder holding nothing but (empty) folders."""
    return (path.is_dir() and not path.is_symlink()
            and all(_empty_tree(path / n) for n in _entries(path)))


def _remove_empty_tree(path: Path) -> None:
    for n in _entries(path):
        _remove_empty_tree(path / n)
    path.rmdir()


def _remove_if_empty(path: Path, made_above: Sequence[Path] = ()) -> None:
    """Removes ``path`` if it holds nothing (but write tests), then those of ``made_above``
    (its parents, innermost first) that are empty."""
    with contextlib.suppress(OSError):
        for n in _entries(path):
            if n.startswith(".write-test-"):
                (path / n).unlink()
        path.rmdir()
        for parent in made_above:
            parent.rmdir()


def _check_identity(out: Path, stored: dict | None, identity: dict, others: list[str],
                    flag: str, replace_role: bool) -> None:
    if stored is None:
        if others:
            listed = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
            raise RunDirError(f"{flag} {out} is not empty ({listed}) and holds no hyperforget run "
                              f"({IDENTITY_NAME}); pass a new or empty directory")
        return
    if not others:
        return  # only an identity (a run that died before writing anything): nothing to keep
    if replace_role and stored.get("role") == identity.get("role"):
        return
    if stored.pop(_LEGACY, False):  # only the fields an older version recorded are compared
        stored = {**{k: identity[k] for k in identity if k not in stored}, **stored}
    diff = first_difference(stored, identity)
    if diff is None:
        return
    field, was, now = diff
    role = stored.get("role", "?")
    if field == "role":
        # Another command's run: this command can neither resume it nor should it advise
        # deleting it (a trained model the user still needs, in a mistyped path).
        raise RunDirError(f"{flag} {out} holds {_a(role)} run, not {_a(identity.get('role'))} "
                          f"one; pass a new {flag} to start this run")
    what = (f"holds a different {role!r} run: its {field} is {_describe(was)}, this "
            f"command's is {_describe(now)}")
    raise RunDirError(f"{flag} {out} {what}; pass a new {flag} (or delete that directory) to "
                      "start this run, or rerun with the settings it was written with to resume")


# --------------------------------------------------------------------------- sweep cells


class Cells:
    """The completed cells of a long sweep (e.g. one setting of
    ``experiments/unlearning_table.py``, one seed × request × method of
    ``experiments/gan_unlearning.py``), kept in ``<run dir>/cells/`` so that rerunning an
    interrupted command resumes where it stopped instead of starting over.

    Each cell is stored, atomically and only once complete, beside the exact configuration that
    produced it (its key, the run's identity and what it was computed from, e.g. a fingerprint of
    the models it starts from). It is reused only when that configuration equals the new one
    exactly; otherwise it is computed again and replaced, never mixed in. A fresh result goes
    through the same JSON round trip as a stored one (NumPy scalars to Python numbers, tuples
    to lists, NaN kept), so a report built from reused cells is the one an uninterrupted run
    builds. Use it inside :func:`open_run`, whose lock keeps a second
    writer out.
    """

    def __init__(self, run: RunDir | str | os.PathLike):
        self.path = Path(run) / CELLS_NAME
        #: The run's identity (from :func:`open_sweep`): every cell's configuration holds it.
        self.identity: dict = getattr(run, "identity", {})
        self.reused: list[str] = []

    def file(self, key: str, suffix: str = ".json") -> Path:
        """Where cell ``key`` (or a file that belongs to it, e.g. ``suffix=".png"``) is kept."""
        slug = re.sub(r"[^A-Za-z0-9._-]+", "_", key)[:60]
        tag = hashlib.blake2b(key.encode(), digest_size=6).hexdigest()  # slugs may collide
        return self.path / f"{slug}-{tag}{suffix}"

    def get(self, key: str, config: dict, files: Sequence[str] = ()) -> Any | None:
        """The stored result of ``key`` if it was computed with exactly ``config`` (and the
        files of ``files``, suffixes for :meth:`file`, are there), else ``None``; a stored
        ``None`` is one too (:meth:`compute` computes it again), not counted as reused."""
        try:
            stored = json.loads(self.file(key).read_text(encoding="utf-8"))
        except (OSError, ValueError):         # not computed yet, or damaged: compute it again
            return None
        if (not isinstance(stored, dict) or stored.get("key") != key
                or stored.get("config") != _normalise(config)
                or stored.get("result") is None
                or not all(self.file(key, f).is_file() for f in files)):
            return None
        self.reused.append(key)
        return stored.get("result")

    def put(self, key: str, config: dict, result: Any) -> Any:
        """Stores ``result`` as cell ``key`` of ``config``; returns it as :meth:`get` will."""
        self.path.mkdir(exist_ok=True)
        # NaN stays NaN (JSON's extension, read back by json.loads): a report built from the
        # cells shows what one built from the fresh values shows.
        text = json.dumps({"key": key, "config": _normalise(config), "result": result},
                          default=_json_default, indent=1)
        report.atomic_write(self.file(key), text + "\n")
        return json.loads(text)["result"]

    def compute(self, key: str, config: dict, fn: Callable[[], Any],
                files: Sequence[str] = ()) -> Any:
        """The stored result of ``key`` for ``config``, or ``fn()`` (which writes ``files``),
        stored."""
        found = self.get(key, config, files)
        return found if found is not None else self.put(key, config, fn())

    def clear(self) -> None:
        """Forgets every stored cell (a run started over)."""
        shutil.rmtree(self.path, ignore_errors=True)


@contextlib.contextmanager
def open_sweep(path: str | os.PathLike, identity: dict, *, outputs: Sequence[str],
               restart: bool = False, command: str = "hyperforget") -> Iterator[Cells]:
    """:func:`open_run` for an experiment script's ``--out``: yields its :class:`Cells`.

    The same command resumes (its stored cells are reused), another configuration is refused
    (:class:`RunDirError` naming the first differing field), and a second writer is locked
    out. ``outputs`` (names or glob patterns: ``results.json``, ``grid_*.png``) are the files
    the script writes at its end: those of an earlier run are removed now, so an interrupted
    run never leaves a report that looks finished. With ``restart``, a run of the same script
    with any configuration is replaced: its cells are dropped too. A directory an older version
    of the script wrote (only ``outputs``, no ``run.json``) is replaced like one of ours.
    """
    ours = lambda name: any(fnmatch.fnmatch(name, pat) for pat in outputs)
    legacy = lambda out: ({"role": identity["role"]}
                          if all(ours(n) for n in _entries(out) if not _ours(n)) else None)
    with open_run(path, identity, flag="--out", replace_role=restart, command=command,
                  legacy=legacy) as run:
        cells = Cells(run)
        for name in _entries(run.path):
            if ours(name):
                (run.path / name).unlink()
        if restart:
            cells.clear()
        yield cells
