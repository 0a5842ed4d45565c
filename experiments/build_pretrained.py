"""Rebuilds the pretrained hypernetworks shipped in ``hyperforget_jax/pretrained/`` from scratch.

    PYTHONPATH=. python experiments/build_pretrained.py --work runs/pretrained

Runs the same three commands a user would (each resumable: rerun after a kill and it continues
where it stopped), then copies the two ``hypernet.npz`` files into the package and records their
SHA-256 in ``hyperforget_jax/pretrained/__init__.py``::

    hyperforget corpus --out WORK/corpus
    hyperforget hypertrain --corpus WORK/corpus --out WORK/dihyfo2 --variant dihyfo2 --steps N
    hyperforget hypertrain --corpus WORK/corpus --out WORK/dihyfo1 --variant dihyfo1 \\
        --forget-class 3 --steps M

Settings (``CORPUS``, ``DIHYFO2``, ``DIHYFO1`` below) are the ones chosen on validation
originals (docs/hyperforget.md, "Ablations"). Time on 2 idle CPU cores: see the README.
"""

from __future__ import annotations

import hashlib
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hyperforget_jax import cli, report  # noqa: E402
from hyperforget_jax.commands.common import path_arg  # noqa: E402
from hyperforget_jax.hyperforget import store  # noqa: E402

CORPUS: list[str] = []                  # CorpusConfig defaults: 256 originals, 20 pairs
DIHYFO2 = ["--variant", "dihyfo2", "--steps", "24000"]
DIHYFO1 = ["--variant", "dihyfo1", "--forget-class", "3", "--steps", "4000"]
NAMES = {"dihyfo2": ("dihyfo2-gpt_mlp-mnist5k", "dihyfo2_gpt_mlp_mnist5k.npz"),
         "dihyfo1": ("dihyfo1-c3-gpt_mlp-mnist5k", "dihyfo1_c3_gpt_mlp_mnist5k.npz")}


def run(argv: list[str]) -> float:
    print("hyperforget", " ".join(argv), flush=True)
    t = time.perf_counter()
    rc = cli.main(argv)
    if rc != 0:
        raise SystemExit(rc)
    return time.perf_counter() - t


def install(work: Path) -> dict[str, dict[str, str]]:
    """Copies the trained files into the package and rewrites the PRETRAINED table.

    Every file's bytes are built first, then each is replaced atomically, the table last: an
    interruption before that leaves the package as it was (not one new file beside the old
    table's hashes), and one between the renames leaves a file whose hash the table refuses on
    load (its message names this script)."""
    pkg = ROOT / "hyperforget_jax" / "pretrained"
    table, files = {}, {}
    for key, (name, fname) in NAMES.items():
        net, meta = store.load_hypernet(work / key / "hypernet.npz")
        # The shipped file names how it was built, not where (no local paths in the package).
        extra = {k: v for k, v in meta.items() if k not in ("format", "hypernet")}
        extra["corpus"] = "hyperforget corpus --out WORK/corpus (experiments/build_pretrained.py)"
        extra["build"] = {"script": "experiments/build_pretrained.py", "name": name,
                          "hypertrain_args": DIHYFO2 if key == "dihyfo2" else DIHYFO1,
                          "corpus_args": CORPUS}
        files[fname] = store.to_bytes(net, extra)
        table[name] = {"file": fname, "sha256": hashlib.sha256(files[fname]).hexdigest()}
    init = pkg / "__init__.py"
    body = "PRETRAINED: dict[str, dict[str, str]] = {\n" + "".join(
        f'    "{n}": {{\n        "file": "{e["file"]}",\n        "sha256": "{e["sha256"]}",\n'
        "    },\n" for n, e in table.items()) + "}\n"
    text = re.sub(r"PRETRAINED: dict\[str, dict\[str, str\]\] = \{.*?\n\}\n|"
                  r"PRETRAINED: dict\[str, dict\[str, str\]\] = \{\}\n", body,
                  init.read_text(encoding="utf-8"), flags=re.S)
    for fname, raw in files.items():
        report.atomic_write(pkg / fname, raw)
    report.atomic_write(init, text)
    return table


def main(argv=None):
    ap = cli.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=path_arg, default="runs/pretrained")
    ap.add_argument("--no-install", action="store_true",
                    help="train only; do not touch the package")
    a = ap.parse_args(argv)
    work = Path(a.work).expanduser().absolute()     # (--work=~/x built into ./~/x)
    secs = {"corpus": run(["corpus", "--out", str(work / "corpus"), "--quiet", *CORPUS])}
    for key, args in (("dihyfo2", DIHYFO2), ("dihyfo1", DIHYFO1)):
        secs[key] = run(["hypertrain", "--corpus", str(work / "corpus"), "--out",
                         str(work / key), "--quiet", *args])
    print({k: round(v) for k, v in secs.items()})
    if not a.no_install:
        for name, e in install(work).items():
            print(f"installed {name}: {e['file']} sha256 {e['sha256']}")


if __name__ == "__main__":
    report.exit_on_error("build_pretrained", main)
