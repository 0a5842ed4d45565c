"""A HyperForget corpus build SIGKILLed for real (mid-shard-write, then at a random point of
the next shard's computation), resumed, equals an uninterrupted build array for array.

≈ 45 s on 2 CPU cores (three classes, one epoch: the kill points, not the corpus size, are
what is tested). A simulated-kill version is ``tests/test_corpus.py::
test_resume_after_kill_and_config_mismatch``.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import numpy as np

from test_reliability_resume import SEED, _kill_when, _run_to_death, _spawn, _worker_cmd

def _done(path: Path) -> list[str]:
    try:
        index = json.loads((path / "index.json").read_text())
    except (OSError, ValueError):
        return []
    return sorted(k for k, v in index["shards"].items() if v.get("done"))


def test_corpus_build_killed_and_resumed_equals_uninterrupted(digits_splits, tmp_path):
    sys.path.insert(0, str(Path(__file__).parent))
    from reliability_worker import corpus_config

    from hyperforget_jax.hyperforget import corpus as C

    rng = random.Random(SEED)
    out = tmp_path / "corpus"
    # (1) while shard 0 is being written (one array in its temporary directory).
    _run_to_death(_worker_cmd("--kill-mid-shard-write", "corpus", str(out)))
    assert _done(out) == [] and len(list((out / ".shard_00000.tmp").iterdir())) == 1
    # (2) at a random point of shard 1 (shard 0 committed).
    started = lambda: _done(out) == ["00000"]
    _kill_when(_spawn(_worker_cmd("corpus", str(out))), started, delay=rng.uniform(0.0, 5.0))
    done_before = _done(out)
    assert "00000" in done_before, SEED
    stats = C.build_corpus(out, corpus_config(), digits_splits, "digits", progress=False)
    assert stats["shards_skipped"] == len(done_before) and _done(out) == ["00000", "00001"]
    assert sorted(p.name for p in out.iterdir()) == ["index.json", "shard_00000",
                                                      "shard_00001"]  # no debris
    ref = tmp_path / "ref"
    C.build_corpus(ref, corpus_config(), digits_splits, "digits", progress=False)
    a, b = C.Corpus(out), C.Corpus(ref)
    assert np.array_equal(a.rows, b.rows)
    np.testing.assert_allclose(a.metrics, b.metrics, atol=1e-6)
    np.testing.assert_allclose(a.params(np.arange(len(a))), b.params(np.arange(len(b))),
                               atol=1e-6)
