"""The corpus recipe's own endpoints on hyperforget_eval's test originals, beside Retrain.

    PYTHONPATH=. python experiments/hyperforget_endpoint_mia.py        # ≈ 1.7 min on 2 cores

For each test original of ``experiments/hyperforget_eval.py`` (``TEST_ORIGINALS``) and each
single-class request: the masked self-distillation of the shipped corpus (its recorded
``CorpusConfig``) in three variants: output layer with the forgotten readout distilled
(``forget_readout="train"``, the previous corpus), all layers with it distilled, and output
layer with the forgotten readout shrunk to 0 (``"zero"``, the shipped corpus); then ΔRA, FA
and Δmia_loss_lr against Retrain of the same seed and recipe. It tells whether a gap of the samples
comes from the sampler or from what the corpus teaches (the hypernetwork cannot beat its corpus).
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "experiments"))

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import hyperforget_eval as E  # noqa: E402
from hyperforget_jax import data, metrics, report, train  # noqa: E402
from hyperforget_jax import params as P_  # noqa: E402
from hyperforget_jax.cli import ArgumentParser  # noqa: E402
from hyperforget_jax.hyperforget import corpus as C  # noqa: E402
from hyperforget_jax.hyperforget import dihyfo as H  # noqa: E402


def main(argv=None) -> dict:
    # No options; parsed so that --help answers (and a mistyped flag is refused) instead of
    # starting the 2-minute run.
    ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args(argv)
    splits = data.make_splits(data.load_mnist5k(), seed=0)
    net, meta = H.load_hypernet("pretrained")
    arch = net.spec.arch
    ccfg = C.CorpusConfig(**{k: tuple(v) if isinstance(v, list) else v
                             for k, v in meta["corpus_config"].items()})
    ev = E.Evaluator(arch, splits)
    x, y = jnp.asarray(splits.train.x), jnp.asarray(splits.train.y)
    singles = [(c,) for c in range(arch.num_classes)]
    retain = [np.flatnonzero(~np.isin(splits.train.y, r)) for r in singles]
    # Each test original and its Retrain fleet (one per class), shared by both layer choices.
    bases = []
    for _, s, lr, ep in E.TEST_ORIGINALS:
        st, _ = train.fit(arch, splits.train, train.TrainConfig(arch=arch.name, seed=s,
                                                                lr=lr, epochs=ep))
        retr = C.train_fleet(arch, x, y, [s] * len(singles), [(lr, ep)] * len(singles), retain)
        bases.append((s, np.asarray(P_.flatten(st.params))[None], ev(retr, singles, s)[0]))
    out = {}
    for layers, readout in (("head", "train"), ("all", "train"), ("head", "zero")):
        cc = dataclasses.replace(ccfg, unlearn_layers=layers, forget_readout=readout,
                                 forget_classes=None, class_pairs=0)
        idx = C.span_index(arch, C.trained_span(arch, layers))
        name = f"{layers}, readout {readout}"
        per = {"dmia": [], "dra": [], "fa": []}
        for s, f0, r in bases:
            _, vals = C.unlearn_trajectories(arch, cc, x, f0, [s], singles)
            ends = np.repeat(f0, len(singles), 0)
            ends[:, idx] = vals[-1]
            e, _ = ev(ends, singles, s)
            per["dmia"].append(np.mean([a["mia_loss_lr"] - b["mia_loss_lr"] for a, b in zip(e, r)]))
            per["dra"].append(100 * np.mean([a["retain_acc"] - b["retain_acc"]
                                             for a, b in zip(e, r)]))
            per["fa"].append(100 * np.mean([a["forget_acc"] for a in e]))
        out[name] = {k: metrics.format_mean_std([float(v) for v in vals], 1, 3)
                     for k, vals in per.items()}
        print(f"endpoints, {name}: ΔRA {out[name]['dra']}, FA % {out[name]['fa']},"
              f" Δmia_loss_lr {out[name]['dmia']} (mean ± std over {len(per['fa'])} originals)",
              flush=True)
    return out


def _print_main() -> int:
    # Through report.exit_on_error as the other scripts: its lines hold ΔRA and ±, which a
    # non-UTF-8 stdout refused after the run's 1.7 minutes.
    print(json.dumps(main(), indent=1))
    return 0


if __name__ == "__main__":
    report.exit_on_error("hyperforget_endpoint_mia", _print_main, resumes=False)
