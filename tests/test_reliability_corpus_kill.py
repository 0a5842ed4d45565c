"""A HyperForget corpus build SIGKILLed for real (mid-shard-write, then at a random point of
the next shard's computation), resumed, equals an uninterrupted build array for array.

Two shards of one seed, three classes, one epoch and a 4-step distillation
(``reliability_worker.corpus_config``): the kill points, not the corpus size, are what is
tested. A simulated-kill version is ``tests/test_corpus.py::
test_resume_after_kill_and_config_mismatch``.
"""

from __future__ import annotations

import json
import os
import random
import sys
from pathlib import Path

import numpy as np

from test_reliability_resume import (SEED, _kill_after, _run_to_death, _spawn, _wait_until,
                                    _worker_cmd)


def _index(path: Path) -> dict:
    try:
        return json.loads((path / "index.json").read_text())
    except (OSError, ValueError):
        return {"shards": {}}


def _done(path: Path) -> list[str]:
    return sorted(k for k, v in _index(path)["shards"].items() if v.get("done"))


class _DoneWatch:
    """``_done`` for a poll loop: index.json is parsed again only when it was replaced."""

    def __init__(self, path: Path):
        self.path, self.stamp, self.done = path, None, []

    def __call__(self) -> list[str]:
        try:
            st = os.stat(self.path / "index.json")  # replaced atomically: a new inode
            stamp = st.st_ino, st.st_mtime_ns, st.st_size
        except OSError:
            return self.done
        if stamp != self.stamp:
            self.stamp, self.done = stamp, _done(self.path)
        return self.done


def test_corpus_build_killed_and_resumed_equals_uninterrupted(digits_splits, tmp_path):
    sys.path.insert(0, str(Path(__file__).parent))
    from reliability_worker import corpus_config, save_splits

    from hyperforget_jax.hyperforget import corpus as C

    rng = random.Random(SEED)
    out = tmp_path / "corpus"
    data = tmp_path / "digits.npz"  # digits_splits for the victims, without importing sklearn
    save_splits(digits_splits, data)
    # (1) while shard 0 is being written (one array in its temporary directory).
    _run_to_death(_worker_cmd("--kill-mid-shard-write", "--data", str(data), "corpus", str(out)))
    assert _done(out) == [] and len(list((out / ".shard_00000.tmp").iterdir())) == 1
    # (2) at a random point of shard 1 (shard 0 committed). This victim takes about as long
    # for shard 1 (compiling its distillation) as for shard 0 (loading every program from the
    # cache victim (1) wrote): 2.2 s and 2.5 s on 2 cores. The index records shard 0's time,
    # so the kill falls uniformly within shard 1 on any machine.
    proc = _spawn(_worker_cmd("--data", str(data), "corpus", str(out)))
    done = _DoneWatch(out)
    if _wait_until(proc, lambda: done() == ["00000"]):
        _kill_after(proc, rng.uniform(0.0, _index(out)["shards"]["00000"]["seconds"]))
    else:
        proc.communicate()
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
