"""What the test suite's XLA flags save per compilation: XLA's backend-compile seconds of a fresh
process that fits a model for 1 epoch and runs ∇τ (``unlearn("gradtau")``) for 1 forget-epoch on
sklearn's digits, with the flags ``tests/conftest.py`` sets on CPU, one set at a time. Behind the
per-program figures in tests/conftest.py and the README's Tests section::

    PYTHONPATH=. python benchmarks/compile_flags.py [--repeats 2] [--cores 1]

Each process starts without a persistent compilation cache; the seconds are the sum of JAX's
``/jax/core/compile/backend_compile_duration`` events (the compilations `compile_stats.py`
counts in the suite). Repeats are interleaved (every flag set once per round), the table gives
medians; ``--cores 1`` pins every process to one core (``taskset``), as a busy test worker runs.
Writes benchmarks/results/compile_flags.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys

LEVEL0 = "--xla_backend_optimization_level=0"
FLAG_SETS = {
    "level 0": [LEVEL0],
    "level 0, older emitters": [LEVEL0, "--xla_cpu_use_fusion_emitters=false"],
    "level 0, older emitters, one module": [LEVEL0, "--xla_cpu_use_fusion_emitters=false",
                                            "--xla_cpu_parallel_codegen_split_count=1"],
}
ARCHS = ("gpt_mlp", "cnn")


def _child(arch: str) -> None:
    import collections

    import numpy as np
    from jax import monitoring
    from jax.flatten_util import ravel_pytree

    seconds = collections.defaultdict(float)
    monitoring.register_event_duration_secs_listener(
        lambda event, d, **kw: seconds.__setitem__(event, seconds[event] + d))
    import hyperforget_jax as hf
    from hyperforget_jax import data, models
    from hyperforget_jax.unlearn import GradTauConfig, unlearn

    splits = data.make_splits(data.load_digits())
    fsplit = data.resolve_forget(splits.train, data.ForgetRequest(classes=(4,)))
    model = models.make_architecture(arch, splits.train.x.shape[1:])
    params = hf.fit(model, splits.train, hf.TrainConfig(epochs=1, lr=3e-3))[0].params
    out = unlearn("gradtau", model, params, fsplit, splits.val, GradTauConfig(epochs=1)).params
    checksum = float(np.sum(ravel_pytree(out)[0]))
    print(json.dumps({"compile_s": seconds["/jax/core/compile/backend_compile_duration"],
                      "checksum": checksum}))


def _run(arch: str, flags: list[str], cores: int | None) -> dict:
    env = dict(os.environ, XLA_FLAGS=" ".join(flags), JAX_PLATFORMS="cpu")
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    cmd = [sys.executable, __file__, "--child", arch]
    if cores and shutil.which("taskset"):
        cmd = ["taskset", "-c", ",".join(str(c) for c in range(cores))] + cmd
    done = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    from benchmarks.common import median, write_json

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--cores", type=int, default=None, help="pin each process to this many cores")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    runs = {(a, name): [] for a in ARCHS for name in FLAG_SETS}
    for _ in range(args.repeats):
        for a in ARCHS:
            for name, flags in FLAG_SETS.items():
                runs[a, name].append(_run(a, flags, args.cores))
    rows = []
    print("| model | XLA flags | backend compile s (median) | vs level 0 | parameter checksum |")
    print("|---|---|---|---|---|")
    for a in ARCHS:
        base = median([r["compile_s"] for r in runs[a, "level 0"]])
        for name in FLAG_SETS:
            s = median([r["compile_s"] for r in runs[a, name]])
            sums = sorted({r["checksum"] for r in runs[a, name]})
            rows.append({"model": a, "flags": FLAG_SETS[name], "name": name,
                         "compile_s": [r["compile_s"] for r in runs[a, name]],
                         "median_s": s, "speedup": base / s, "checksums": sums})
            print(f"| {a} | {name} | {s:.2f} | {base / s:.2f}× | {', '.join(map(str, sums))} |")
    print("wrote", write_json("compile_flags", {"repeats": args.repeats, "cores": args.cores,
                                                "rows": rows}, args.out))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        _child(sys.argv[2])
    else:
        main()
