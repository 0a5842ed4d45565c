"""Writing results: atomic JSON / markdown files, markdown tables and matplotlib figures.

Every file is written to a temporary name in the same directory and renamed into place, so an
interrupted run never leaves a half-written report behind.
"""

from __future__ import annotations

import codecs
import contextlib
import json
import math
import numbers
import os
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from hyperforget_jax.config import expand_user
from hyperforget_jax.errors import (CheckpointError, ConfigError, HyperforgetError,
                                    RunDirError)


def prepare_dir(path: str | os.PathLike, flag: str = "--run-dir", *,
                not_a_run: bool | str = False) -> Path:
    """Creates ``path`` (absolute) and checks it is writable, failing with a clear error that
    names ``flag``, the option that chose ``path``. With ``not_a_run`` (the experiment
    scripts' ``--out``), a directory holding a command's run (``run.json``) is refused: the
    script's ``results.json`` / ``report.md`` would replace that run's. ``not_a_run`` may name
    the role of the script's own runs (:func:`~hyperforget_jax.rundir.open_sweep`): those it
    resumes."""
    p = expand_user(path).absolute()
    if not_a_run and (p / "run.json").is_file() and (
            not isinstance(not_a_run, str) or _role(p) != not_a_run):
        raise RunDirError(f"{flag} {p} holds a hyperforget run (run.json); this script's results "
                          f"would replace that run's results.json and report: pass another {flag}")
    try:
        p.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=p, prefix=".write-test-"):
            pass
    except OSError as e:
        raise ConfigError(f"output directory {p} is not writable ({e.strerror}); choose another "
                          f"{flag}") from e
    return p


def _role(path: Path) -> object:
    from hyperforget_jax.rundir import read_identity    # rundir imports this module

    return (read_identity(path) or {}).get("role")


def atomic_write(path: str | os.PathLike, data: str | bytes) -> Path:
    """Writes ``data`` to ``path`` via a temporary file in the same directory and a rename, so a
    reader never sees a half-written file. The file gets the process umask's mode (0644 under
    umask 022), like any file a tool creates (``mkstemp`` would make it 0600).

    Raises:
      CheckpointError: the file system refused (a full disk, a read-only directory): named
        with the path and the fix, so the CLI ends with one line, not a traceback.
    """
    path = Path(path)
    data = data.encode() if isinstance(data, str) else data
    try:
        for _ in range(100):
            tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:12]}.tmp"
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
                break
            except FileExistsError:
                continue
        else:  # pragma: no cover - 100 uuid collisions
            raise FileExistsError(f"cannot create a temporary file next to {path}")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
    except OSError as e:
        raise CheckpointError(f"could not write {path} ({e.strerror or e}); check the disk "
                              "space and permissions there, then rerun") from e
    return path


def _escape(error: UnicodeError) -> tuple[str | bytes, int]:
    """``surrogateescape`` where it applies (a path's undecodable bytes, given back as they
    came, as Python's stdout does under a C locale), else ``backslashreplace``."""
    try:
        return codecs.lookup_error("surrogateescape")(error)
    except UnicodeError:
        return codecs.backslashreplace_errors(error)


@contextlib.contextmanager
def encodable_output() -> Iterator[None]:
    """While the block runs, ``sys.stdout`` and ``sys.stderr`` write a character their encoding
    lacks as an escape (``\\u2207`` for ∇), as Python's own stderr does, and restore after.

    Reports, tables and ``--help`` hold ∇τ, α₀, ±, ≈. Under a locale that is not UTF-8
    (``LC_ALL=C`` with ``PYTHONUTF8=0``, ``PYTHONIOENCODING=ascii``, a Latin-1 ``LANG``), the
    first such character raised ``UnicodeEncodeError``: a finished run, its files written,
    ended with a traceback and exit code 1 at its last print. A UTF-8 stream is left alone."""
    codecs.register_error("hyperforget.escape", _escape)    # idempotent
    changed = []
    for stream in (sys.stdout, sys.stderr):
        encoding = getattr(stream, "encoding", None) or "utf-8"
        errors = getattr(stream, "errors", None)
        with contextlib.suppress(LookupError):
            encoding = codecs.lookup(encoding).name
        if (encoding != "utf-8" and errors in ("strict", "surrogateescape")
                and hasattr(stream, "reconfigure")):
            stream.reconfigure(errors="hyperforget.escape")
            changed.append((stream, errors))
    try:
        yield
    finally:
        for stream, errors in changed:
            with contextlib.suppress(ValueError):     # a stream closed meanwhile
                stream.reconfigure(errors=errors)


def jsonable(x: Any) -> Any:
    """``x`` as strict JSON values: NumPy/JAX arrays and scalars to Python, tuples to lists,
    NaN/inf to None (``json.dumps`` would write the invalid tokens ``NaN`` / ``Infinity``)."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if hasattr(x, "tolist") and not isinstance(x, (str, bytes)):
        return jsonable(x.tolist())
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, os.PathLike):
        return os.fspath(x)
    return x


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write(path, json.dumps(jsonable(obj), indent=2) + "\n")


def read_results(path: Path, script: str, keys: Sequence[str]) -> dict:
    """The ``results.json`` that ``script`` wrote into ``path`` (its ``--out``), for
    ``--render-only``. A missing file (an unfinished run), a damaged one (not JSON) or another
    writer's (not an object with ``keys``, the fields the report reads) is refused with the fix,
    not a JSON decoder's or the renderer's traceback."""
    f = path / "results.json"
    if not path.is_dir():
        raise ConfigError(f"--out {path} does not exist: --render-only re-renders the "
                          f"results.json of a finished run; pass the --out of a run of {script}")
    if not f.is_file():
        raise ConfigError(f"--out {path} holds no results.json (a run that has not finished: "
                          "rerun its command to resume it)")
    try:
        out = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:      # UnicodeDecodeError is a ValueError too
        raise CheckpointError(f"{f} is not readable JSON ({e}); rerun {script}'s command "
                              "without --render-only to write it again") from e
    missing = [k for k in keys if k not in out] if isinstance(out, dict) else list(keys)
    if missing:
        raise CheckpointError(f"{f} is not a results.json written by {script} (no "
                              f"{', '.join(missing)}); pass an --out that {script} "
                              "wrote, or rerun its command without --render-only")
    return out


def save_figure(fig, path: str | os.PathLike) -> Path:
    """Saves a matplotlib figure atomically as PNG and closes it (a pyplot figure; one built
    without pyplot, as :func:`~hyperforget_jax.gan.train.save_grid`'s, holds nothing open and
    imports no pyplot, which would pick a backend)."""
    import io
    import sys

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt = sys.modules.get("matplotlib.pyplot")
    if plt is not None:       # a figure pyplot made: imported it already
        plt.close(fig)
    return atomic_write(path, buf.getvalue())


def fmt(x: Any, digits: int = 2, scale: float = 1.0) -> str:
    """A table cell: ``scale * x`` with ``digits`` decimals for any real number (Python or
    NumPy scalar, e.g. ``np.float32``, or a 0-d NumPy / JAX array: ``jnp.mean(acc)`` was
    written unscaled as ``0.6666667`` in a column of percentages), "–" for None / NaN,
    ``str(x)`` for anything else (booleans included, which are not numbers to scale)."""
    if x is None:
        return "–"
    if (not isinstance(x, (numbers.Number, np.generic)) and hasattr(x, "__array__")
            and np.ndim(x) == 0 and np.issubdtype(np.asarray(x).dtype, np.number)):
        x = np.asarray(x)[()]       # its NumPy scalar: a number below, as np.float32 is
    if isinstance(x, (bool, np.bool_)) or not isinstance(x, numbers.Real):
        return str(x)
    x = float(x)
    if math.isnan(x):
        return "–"
    return f"{scale * x:.{digits}f}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table. Cells are escaped: a row label holding ``|`` (a run directory named
    ``orig|lr=0.01``) shifted every value after it one column right, under the wrong header."""
    cell = lambda c: str(c).replace("|", "\\|").replace("\n", " ")  # noqa: E731
    lines = ["| " + " | ".join(cell(h) for h in header) + " |",
             "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def exit_on_error(script: str, main: Callable[[], Any], resumes: bool = True) -> None:
    """Runs an experiment script's ``main`` and exits with its return value; a
    :class:`HyperforgetError` (e.g. an unwritable ``--out``) ends as the CLI's do: one line on
    stderr, exit code 2, and Ctrl-C as the CLI's: one line, exit code 130 (``resumes``: whether
    a rerun of the same command resumes the run). The report it prints last is printable under
    any locale (:func:`encodable_output`)."""
    from hyperforget_jax import _sigint

    _sigint.install()       # (a Ctrl-C inside JAX's gc callback was dropped)
    with encodable_output():
        try:
            code = main()
        except HyperforgetError as e:
            print(f"{script}: error: {' '.join(str(e).split())}", file=sys.stderr)
            sys.exit(2)
        except KeyboardInterrupt:
            # A 76-line traceback, and the interpreter's shutdown with XLA's threads mid-work
            # segfaulted (exit 139), as the CLI's did: what is on disk is committed and the
            # run's lock released by now, so the process ends here (stop 64).
            then = ("rerun the same command to resume" if resumes else "rerun the command to "
                    "run it again (it starts over: this script does not resume)")
            print(f"{script}: interrupted; {then}", file=sys.stderr)
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(130)
    sys.exit(code if isinstance(code, int) else 0)
