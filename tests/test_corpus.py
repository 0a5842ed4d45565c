"""Checkpoint corpus: exact trajectories (= fit / run_gradtau), the no-pickle sharded format,
resumability after a killed build, and per-request metrics."""

import dataclasses
import json
import shutil

import numpy as np
import pytest

from hyperforget_jax import data, train
from hyperforget_jax import params as P_
from hyperforget_jax.errors import CheckpointError, ConfigError
from hyperforget_jax.hyperforget import corpus as C
from hyperforget_jax.unlearn import gradtau as GT

CFG = C.CorpusConfig(num_seeds=2, fleet_size=1, test_fraction=0.5, epochs=2,
                     save_every_epochs=1, save_every_steps=5, repair_epochs=1,
                     forget_classes=(4, 5), class_pairs=1)
# Classes 4 and 5 have equal counts in the digits training split: one vmapped ∇τ group, one
# compilation fewer than two classes of different sizes.


@pytest.fixture(scope="module")
def built(tmp_path_factory, digits_splits):
    out = tmp_path_factory.mktemp("corpus")
    stats = C.build_corpus(out, CFG, digits_splits, "digits", progress=False)
    return out, stats


def test_format_and_index(built):
    out, stats = built
    index = json.loads((out / "index.json").read_text())
    assert index["format"] == C.FORMAT and index["test_seeds"] == [1]
    assert all(s["done"] for s in index["shards"].values()) and len(index["shards"]) == 2
    assert len(index["metric_columns"]) == 60
    p = np.load(out / "shard_00000" / "params.npy", mmap_mode="r", allow_pickle=False)
    assert isinstance(p, np.memmap) and p.dtype == np.float32
    corpus = C.Corpus(out)
    assert corpus.arch.param_count == 64 * 10 + 10 + 10 * 10 + 10
    assert len(corpus) == stats["checkpoints"] and stats["checkpoints_per_second"] > 0
    # Per seed: 3 original checkpoints, 3 requests ((4,), (5,), (0, 1)) × ∇τ (+ repair)
    # trajectories starting at the original, 3 × 3 retrain checkpoints.
    assert corpus.requests == [(4,), (5,), (0, 1)]
    assert set(corpus.rows[:, 1]) == {0, 1, 2}
    assert len(corpus.trajectories("gradtau", "train")) == 3
    assert len(corpus.trajectories("gradtau", "test")) == 3
    assert len(corpus.trajectories("retrain", "test")) == 3
    for seed, _, rows in corpus.trajectories("gradtau", "train"):
        np.testing.assert_array_equal(corpus.params(rows[:1])[0],
                                      corpus.params([corpus.find(seed, "original")])[0])
        assert np.all(np.diff(corpus.rows[rows, 3]) > 0)
    assert int((corpus.rows[:, 1] == 2).sum()) == 2 * 3 * 3
    with pytest.raises(ConfigError):
        C.CorpusConfig(forget_classes=(3, 3))


def test_trajectories_are_exact(built, digits_splits):
    out, _ = built
    corpus = C.Corpus(out)
    arch = corpus.arch
    cfg = dataclasses.replace(CFG.train_config, seed=1)
    state, _ = train.fit(arch, digits_splits.train, cfg)
    orig = corpus.params([corpus.find(1, "original")])[0]
    np.testing.assert_allclose(orig, P_.flatten(state.params), atol=1e-5)
    # The ∇τ phase (before repair) equals run_gradtau from the same original.
    fsplit = data.resolve_forget(digits_splits.train, data.ForgetRequest(classes=(4,)))
    params, info = GT.run_gradtau(arch, state.params, fsplit, digits_splits.val,
                                  GT.GradTauConfig(tau_mode="unseen_class"), seed=1,
                                  forget_classes=(4,))
    row = corpus.find(1, "gradtau", 0, info["steps"])
    np.testing.assert_allclose(corpus.params([row])[0], P_.flatten(params), atol=2e-4)
    # Per-request metrics agree with a direct evaluation.
    m = corpus.request_metrics([row], (4,), "train")
    logits = arch.apply(params, fsplit.forget.x)
    assert abs(float(m["forget_acc"][0]) - float(np.mean(np.argmax(logits, -1)
                                                       == fsplit.forget.y))) < 1e-5


def test_resume_after_kill_and_config_mismatch(built, digits_splits, tmp_path):
    out, _ = built
    copy = tmp_path / "c"
    shutil.copytree(out, copy)
    before = np.load(copy / "shard_00001" / "params.npy")
    # A build killed while writing shard 1: no "done" mark, a stale temporary directory.
    index = json.loads((copy / "index.json").read_text())
    del index["shards"]["00001"]
    (copy / "index.json").write_text(json.dumps(index))
    shutil.move(copy / "shard_00001", copy / ".shard_00001.tmp")
    stats = C.build_corpus(copy, CFG, digits_splits, "digits", progress=False)
    assert stats["shards_built"] == 1 and stats["shards_skipped"] == 1
    # The whole-corpus build rate counts the shard built before the "kill" too.
    assert stats["total_checkpoints"] == len(C.Corpus(copy)) > stats["checkpoints"]
    assert stats["total_checkpoints_per_second"] > 0
    np.testing.assert_allclose(np.load(copy / "shard_00001" / "params.npy"), before, atol=1e-6)
    with pytest.raises(CheckpointError, match="different config"):
        C.build_corpus(copy, dataclasses.replace(CFG, epochs=3), digits_splits, "digits",
                       progress=False)
    with pytest.raises(CheckpointError, match="no corpus"):
        C.Corpus(tmp_path / "nothing")
