"""Where the test suite's XLA compile time goes: a pytest plugin, and a table of its results.

Run the suite with the plugin (each xdist worker writes ``out_<worker>.json`` into
``$COMPILE_STATS_DIR``), then print the table and write the merged JSON (``benchmarks/results/compile_stats.json``)::

    COMPILE_STATS_DIR=/tmp/cstats PYTHONPATH=. python -m pytest -n 2 -q \
        -p benchmarks.compile_stats
    PYTHONPATH=. python benchmarks/compile_stats.py /tmp/cstats

It counts the compilations JAX logs in the test processes (``jax_log_compiles``), per program
name and per test; those of the CLI subprocesses some tests start are not seen. Logging adds
some time of its own: time the suite without it.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import re
from pathlib import Path

from benchmarks.common import write_json

_PATTERN = re.compile(r"Finished XLA compilation of (.*) in ([0-9.eE+-]+) sec")
_by_program: dict[str, list] = collections.defaultdict(lambda: [0.0, 0])
_by_test: dict[str, float] = collections.defaultdict(float)
_current = ["(collection)"]


class _Handler(logging.Handler):
    def emit(self, record):
        m = _PATTERN.search(record.getMessage())
        if m:
            seconds = float(m.group(2))
            entry = _by_program[m.group(1)]
            entry[0] += seconds
            entry[1] += 1
            _by_test[_current[0]] += seconds


def pytest_configure(config):
    import jax

    if "PYTEST_XDIST_WORKER" not in os.environ:
        # The controller (or a run without xdist), before any worker writes: the files of an
        # earlier run in the same directory were merged into this run's table.
        out = Path(os.environ.get("COMPILE_STATS_DIR", "compile_stats"))
        for old in out.glob("out_*.json"):
            old.unlink()

    jax.config.update("jax_log_compiles", True)
    for name, level in (("jax._src.dispatch", logging.WARNING),
                        ("jax._src.interpreters.pxla", logging.ERROR)):
        logger = logging.getLogger(name)
        logger.propagate = False            # counted here, not printed
        logger.setLevel(level)
    logging.getLogger("jax._src.dispatch").addHandler(_Handler())


def pytest_runtest_setup(item):
    _current[0] = item.nodeid


def pytest_unconfigure(config):
    out = Path(os.environ.get("COMPILE_STATS_DIR", "compile_stats"))
    out.mkdir(parents=True, exist_ok=True)
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    (out / f"out_{worker}.json").write_text(json.dumps({"program": dict(_by_program),
                                                        "test": dict(_by_test)}))


def main(directory: str, top: int = 25) -> dict:
    programs: dict[str, list] = collections.defaultdict(lambda: [0.0, 0])
    tests: collections.Counter = collections.Counter()
    for f in sorted(Path(directory).glob("out_*.json")):
        d = json.loads(f.read_text())
        for name, (seconds, count) in d["program"].items():
            programs[name][0] += seconds
            programs[name][1] += count
        tests.update(d["test"])
    total = sum(s for s, _ in programs.values())
    count = sum(c for _, c in programs.values())
    print(f"XLA compilation in the test processes: {total:.0f} s, {count} compiles\n")
    print("| program | seconds | compiles |\n|---|---|---|")
    for name, (s, c) in sorted(programs.items(), key=lambda kv: -kv[1][0])[:top]:
        print(f"| `{name}` | {s:.1f} | {c} |")
    print("\n| test | compile seconds |\n|---|---|")
    for name, s in tests.most_common(top):
        print(f"| `{name}` | {s:.1f} |")
    result = {"total_seconds": total, "compiles": count, "programs": dict(programs),
              "tests": dict(tests)}
    print(f"\nwrote {write_json('compile_stats', result)}")
    return result


def cli(argv=None) -> dict:
    from hyperforget_jax.cli import ArgumentParser

    ap = ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("directory", nargs="?", default="compile_stats",
                    help="the plugin's $COMPILE_STATS_DIR (default ./compile_stats)")
    ap.add_argument("--top", type=int, default=25, help="rows per table")
    args = ap.parse_args(argv)
    if not sorted(Path(args.directory).glob("out_*.json")):     # was "0 s, 0 compiles", exit 0
        ap.error(f"no out_*.json in {args.directory}: run the suite with -p "
                 "benchmarks.compile_stats and COMPILE_STATS_DIR set to it first")
    return main(args.directory, args.top)


if __name__ == "__main__":
    cli()
