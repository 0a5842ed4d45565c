"""Shared helpers of the benchmark scripts: machine description, interleaved timing, output.

Timings on a shared machine are noisy, so every reported number is a *median over interleaved
repeats*: each repeat runs every contender once, in turn, so a burst of load from a neighbour
hits all contenders alike and ratios stay meaningful.
"""

from __future__ import annotations

import os
import platform
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

RESULTS = Path(__file__).resolve().parent / "results"


def parse_args(ap, argv: Sequence[str] | None, quick: dict | None = None):
    """``ap.parse_args(argv)`` where ``--quick`` sets ``quick``'s values as defaults only: a
    flag given on the command line keeps its value (``--quick --sizes 1,2`` timed N = 1, 4,
    the given sizes dropped without a word). An ``--out`` that cannot be the JSON file (empty,
    a directory) is refused here, before the run (it failed after it, losing the run)."""
    args = ap.parse_args(argv)
    if quick and getattr(args, "quick", False):
        ap.set_defaults(**quick)
        args = ap.parse_args(argv)
    out = getattr(args, "out", None)
    if out is not None:
        from hyperforget_jax.config import expand_user
        from hyperforget_jax.errors import ConfigError

        try:        # (`~nosuchuser/x.json`: pathlib's RuntimeError traceback)
            expand_user(out)
        except ConfigError as e:
            ap.error(f"--out {out!r}: {e}")
    if out is not None and (not str(out).strip() or Path(out).expanduser().is_dir()):
        ap.error(f"--out {out!r} must name the JSON file to write (not a directory)")
    return args


def int_list(ap, text: str, flag: str, least: int = 1) -> list[int]:
    """Comma-separated integers >= ``least``, or ``ap.error`` naming ``flag`` (one line, exit
    2; a bare ``int()`` raised a traceback)."""
    items = str(text).split(",")
    # ASCII digits only: int() also reads "1_0" as 10 and "٣" as 3.
    if not all(re.fullmatch(r"\s*[+-]?[0-9]+\s*", v) for v in items):
        ap.error(f"{flag} {text!r}: pass comma-separated integers, e.g. 1,10,32")
    values = [int(v) for v in items]
    if not values or min(values) < least:
        ap.error(f"{flag} {text!r}: every value must be >= {least}")
    return values


def run_script(name: str, main: Callable[[], object]) -> None:
    """``main()`` as the CLI runs its commands: a library error (a forget class that does not
    exist, an unknown model) is one line on stderr and exit code 2, not a traceback."""
    from hyperforget_jax import report

    report.exit_on_error(name, main, resumes=False)


def num_cores() -> int:
    """Cores this process may run on (the cgroup / affinity mask, not the host's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        return os.cpu_count() or 1


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info() -> dict:
    """The machine, the versions and the settings a figure depends on. ``xla_options``: the
    compiler options the library's programs were compiled with (``hyperforget_jax.xla``;
    None when ``HYPERFORGET_XLA_OPTIONS=0`` turned them off: the cnn's gradient is then 1.8×
    slower, with ``XLA_FLAGS`` unchanged); ``omp_wait_policy``: whether PyTorch's
    OpenMP threads spin or sleep at barriers (the scripts with PyTorch set PASSIVE)."""
    import jax
    import jaxlib

    from hyperforget_jax import xla

    info = {"cpu": cpu_model(), "cores": num_cores(), "python": platform.python_version(),
            "jax": jax.__version__, "jaxlib": jaxlib.__version__,
            "backend": jax.default_backend(), "devices": len(jax.devices()),
            "xla_flags": os.environ.get("XLA_FLAGS", ""), "xla_options": xla.compiler_options(),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY")}
    try:
        import torch

        info["torch"] = torch.__version__
    except ImportError:
        info["torch"] = None
    return info


def timed(fn: Callable[[], object]) -> float:
    """Wall seconds of ``fn()``; ``fn`` must block until its device work is done."""
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def interleaved(contenders: dict[str, Callable[[], object]], repeats: int,
                warmup: int = 1, alternate: bool = False) -> dict[str, list[float]]:
    """Runs every contender ``warmup`` times (not recorded), then ``repeats`` rounds in which each
    contender runs once, in turn; with ``alternate`` every other round runs them in reverse
    order, so each runs as often first as last (a program timed right after a large one can pay
    for it). Returns the wall seconds of every recorded run per contender."""
    for fn in contenders.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in contenders}
    names = list(contenders)
    for r in range(repeats):
        for name in (names[::-1] if alternate and r % 2 else names):
            times[name].append(timed(contenders[name]))
    return times


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs))


def rel_err(a, b) -> float:
    """The largest |a − b| / max |b| over the leaves of two pytrees of arrays."""
    import jax
    import jax.numpy as jnp
    return max(float(jnp.max(jnp.abs(u - v)) / jnp.max(jnp.abs(v)))
               for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def xla_flops(compiled) -> float:
    """XLA's count of the floating-point operations of a compiled program (NaN if none)."""
    ca = compiled.cost_analysis()
    ca = ca[0] if isinstance(ca, (list, tuple)) else ca
    return float(ca.get("flops", float("nan")))


MATMUL_PEAK = "matmul 2048²"


def matmul_peak_contender(n: int = 2048) -> tuple[Callable[[], object], float]:
    """A jitted float32 ``jnp.dot`` of two n×n matrices and its FLOPs. Timed among the other
    contenders (under :data:`MATMUL_PEAK`), it measures the machine's matmul peak at the moment
    they run, so a step's share of it stays meaningful when the machine's speed drifts."""
    import jax
    import jax.numpy as jnp

    a = jnp.ones((n, n), jnp.float32)
    mm = jax.jit(jnp.dot)
    return (lambda: jax.block_until_ready(mm(a, a))), 2.0 * n ** 3


def peak_understated(rows: list[dict], key: str) -> str | None:
    """A warning when a row ran above 100 % of the matmul peak measured beside it: on a loaded
    machine the one long matmul call loses more to other processes than the short steps timed
    with it (an audit saw rows at 118-172 % under a load of 7-10 on 2 cores), so every "% of
    peak" of that run is too high. None when all rows are at or below it."""
    over = [r for r in rows if r.get(key, 0) > 100]
    if not over:
        return None
    top = max(r[key] for r in over)
    return (f"WARNING: {len(over)} row(s) above 100 % of the matmul peak (up to {top:.0f} %): "
            "the machine was loaded and the peak is understated, so every '% of peak' of this "
            "run is too high; rerun on an idle machine")


def markdown_table(rows: list[dict], columns: list[str] | None = None) -> str:
    if not rows:
        return "(no rows)"
    columns = columns or list(rows[0])

    def fmt(v):
        if isinstance(v, float):
            if v != v:
                return "n/a"
            if abs(v) >= 100:
                return f"{v:,.0f}"
            return f"{v:.3g}" if abs(v) < 10 else f"{v:.1f}"
        return "—" if v is None else str(v)

    out = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    out += ["| " + " | ".join(fmt(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(out)


def write_json(name: str, payload: dict, out: str | None = None) -> Path:
    path = Path(out) if out else RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"benchmark": name, "command": " ".join([Path(sys.executable).name, *sys.argv]),
               "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S"), "machine": machine_info(),
               **payload}
    from hyperforget_jax import report

    # Strict JSON (NaN, e.g. a ratio without PyTorch, as null: json.dumps wrote the token NaN,
    # which strict parsers refuse), written whole or not at all.
    return report.write_json(path, payload)


def pretrained_dihyfo2(splits, seed: int = 0):
    """``(net, params)``: the pretrained DiHyFo-2 for ``gpt_mlp`` shipped with the package (the
    cost of sampling does not depend on its weights, but these are the ones users run) and a
    trained ``gpt_mlp`` start network."""
    from hyperforget_jax import train
    from hyperforget_jax.hyperforget import store
    from hyperforget_jax.models import make_architecture

    arch = make_architecture("gpt_mlp")
    original, _ = train.fit(arch, splits.train, train.TrainConfig(arch="gpt_mlp", seed=seed))
    net, _ = store.load_pretrained()
    return net, original.params
