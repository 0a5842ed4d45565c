"""Writing results: atomic JSON / markdown files, markdown tables and matplotlib figures.

Every file is written to a temporary name in the same directory and renamed into place, so an
interrupted run never leaves a half-written report behind.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Sequence

from hyperforget_jax.errors import ConfigError


def prepare_dir(path: str | os.PathLike) -> Path:
    """Creates ``path`` (absolute) and checks it is writable, failing with a clear error."""
    p = Path(path).expanduser().absolute()
    try:
        p.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=p, prefix=".write-test-"):
            pass
    except OSError as e:
        raise ConfigError(f"output directory {p} is not writable ({e.strerror}); choose another "
                          "--run-dir") from e
    return p


def atomic_write(path: str | os.PathLike, data: str | bytes) -> Path:
    path = Path(path)
    mode = "wb" if isinstance(data, bytes) else "w"
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, mode) as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def _jsonable(x: Any) -> Any:
    if hasattr(x, "tolist"):
        return x.tolist()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    raise TypeError(f"not JSON serialisable: {type(x)}")


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write(path, json.dumps(obj, indent=2, default=_jsonable) + "\n")


def save_figure(fig, path: str | os.PathLike) -> Path:
    """Saves a matplotlib figure atomically as PNG and closes it."""
    import io

    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return atomic_write(path, buf.getvalue())


def fmt(x: Any, digits: int = 2, scale: float = 1.0) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    if isinstance(x, (int, float)):
        return f"{scale * x:.{digits}f}"
    return str(x)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
