"""How far XLA:CPU's rounding moves a small GAN: LLVM optimisation level (the default vs 0, which
the test suite uses), XLA:CPU's fusion emitters and codegen split (the default vs the older
emitters in one LLVM module, which the test suite also uses:
``--xla_cpu_use_fusion_emitters=false --xla_cpu_parallel_codegen_split_count=1``) and 1 vs 4
fake CPU devices. Behind the figures in tests/conftest.py, in
tests/test_reliability_resume.py's ``_env`` and in the README's Tests section::

    PYTHONPATH=. python benchmarks/xla_rounding.py

Each configuration trains the GAN of the kill-and-resume test (``tests/reliability_worker.py``:
the dense pair, 3 epochs on sklearn's digits) in a fresh process; the table gives the largest
parameter difference between two configurations. Writes benchmarks/results/xla_rounding.json.
"""

from __future__ import annotations

import argparse

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {"default, 1 device": "", "default, 4 devices": "4", "level 0, 1 device": "0",
           "level 0, 4 devices": "0 4", "level 0, 4 devices (again)": "0 4",
           "level 0, older emitters, 4 devices": "0 4 e",
           "level 0, older emitters, 4 devices (again)": "0 4 e"}


def _train(out: str) -> None:
    sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
    import jax
    from reliability_worker import gan_config

    from hyperforget_jax import data
    from hyperforget_jax.gan.train import train_gan

    state, _, _ = train_gan(data.make_splits(data.load_digits()).train, gan_config(3))
    np.savez(out, *[np.asarray(x) for x in jax.tree.leaves((state.g_params, state.d_params))])


def _run(spec: str, out: str) -> list[np.ndarray]:
    flags = []
    if "0" in spec.split():
        flags.append("--xla_backend_optimization_level=0")
    if "4" in spec.split():
        flags.append("--xla_force_host_platform_device_count=4")
    if "e" in spec.split():
        flags += ["--xla_cpu_use_fusion_emitters=false",
                  "--xla_cpu_parallel_codegen_split_count=1"]
    env = dict(os.environ, XLA_FLAGS=" ".join(flags), JAX_PLATFORMS="cpu")
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    subprocess.run([sys.executable, __file__, "--train", out], env=env, check=True)
    z = np.load(out)
    return [z[k] for k in z.files]


def _max_diff(a, b) -> float:
    return max(float(np.max(np.abs(x.astype(np.float64) - y))) for x, y in zip(a, b, strict=True))


def main() -> None:
    from benchmarks.common import write_json

    with tempfile.TemporaryDirectory() as tmp:
        params = {name: _run(spec, f"{tmp}/{i}.npz") for i, (name, spec) in
                  enumerate(CONFIGS.items())}
    pairs = [("default, 1 device", "default, 4 devices"),
             ("level 0, 1 device", "level 0, 4 devices"),
             ("default, 1 device", "level 0, 1 device"),
             ("level 0, 4 devices", "level 0, 4 devices (again)"),
             ("level 0, 4 devices", "level 0, older emitters, 4 devices"),
             ("level 0, older emitters, 4 devices", "level 0, older emitters, 4 devices (again)")]
    rows = [{"a": a, "b": b, "max_abs_diff": _max_diff(params[a], params[b])} for a, b in pairs]
    print("| configuration A | configuration B | largest parameter difference |\n|---|---|---|")
    for r in rows:
        print(f"| {r['a']} | {r['b']} | {r['max_abs_diff']:.3g} |")
    print("wrote", write_json("xla_rounding", {"rows": rows}))


if __name__ == "__main__":
    from hyperforget_jax.cli import ArgumentParser

    # --help (or a typo) started the whole run; --train PATH is the script's own subprocess.
    ap = ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--train", metavar="PATH", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.train:
        _train(args.train)
    else:
        main()
