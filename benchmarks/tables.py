"""Prints the markdown tables of the latest results (``benchmarks/results/*.json``), for pasting
into ``benchmarks/README.md``::

    PYTHONPATH=. python benchmarks/tables.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import common  # noqa: E402

TABLES = {
    "gradtau_vs_torch": ["model", "impl", "ascent on", "steps/s", "ms/step", "GFLOP/s",
                         "% of matmul peak", "vs torch eager", "vs best torch"],
    "fleet": ["model", "N", "impl", "models·steps/s", "vs jax loop", "state KiB/model",
              "XLA temp KiB/model"],
    "efficiency": ["N", "batch", "variant", "ms/step", "models·steps/s", "GFLOP/s",
                   "% of peak", "peak GFLOP/s", "vs library"],
    "end_to_end": ["method", "steps", "second call s", "speed-up vs retrain",
                   "retrain reference", "first call s",
                   "compile s", "XLA compile s", "compiles 1st", "recompiles 2nd",
                   "sample alone s"],
    "hyperforget_sampling": ["contender", "requests", "ms", "ms per request", "vs one sample",
                             "vs sample_many N=1", "MFLOP per denoiser call", "GFLOP/s",
                             "% of peak"],
    "conv_layers": ["layer", "input", "kernel", "path", "lax ms", "library ms", "speed-up",
                    "max rel. diff"],
}
UNLEARN_COLUMNS = ["model", "path", "impl", "steps", "ascent on", "steps/s", "ms/step", "ms/call",
                   "vs torch eager"]


def main(argv: list[str] | None = None) -> None:
    from hyperforget_jax.cli import ArgumentParser

    # No flags (`tables.py --bogus` printed the tables, exit 0).
    ArgumentParser(description=__doc__.split("\n")[0]).parse_args(argv)
    for name, cols in TABLES.items():
        path = common.RESULTS / f"{name}.json"
        if not path.exists():
            print(f"### {name}: no results (run benchmarks/bench_{name}.py)\n")
            continue
        d = json.loads(path.read_text())
        m = d["machine"]
        print(f"### {name} — `{d['command']}` at {d['timestamp']} "
              f"({m['cpu']}, {m['cores']} cores, jax {m['jax']}, torch {m['torch']})\n")
        if d.get("unlearn_rows"):   # gradtau_vs_torch's §1 table (the headline ratios)
            print(common.markdown_table(d["unlearn_rows"], UNLEARN_COLUMNS) + "\n")
        print(common.markdown_table(d["rows"], cols))
        for key in ("equivalence", "memory", "jax_over_torch_eager"):
            if key in d:
                print(f"\n{key}: `{json.dumps(d[key], default=float)}`")
        print()


if __name__ == "__main__":
    main()
