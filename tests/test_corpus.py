"""Checkpoint corpus: originals equal ``train.fit`` with their recipe, trajectories equal a plain
masked-distillation loop, the no-pickle sharded format, resumability after a killed build,
per-request metrics, and the index/shard validation of issue 16 (item 4)."""

import dataclasses
import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import CompileCounter
from hyperforget_jax import data, models, train
from hyperforget_jax import params as P_
from hyperforget_jax.errors import CheckpointError, ConfigError, NonFiniteError
from hyperforget_jax.hyperforget import corpus as C

# 1258 training images in unlearning batches of 512: 2 steps an epoch, 4 in all, so the 4
# checkpoints are steps 1..4 and every stretch between two of them is one step long (one
# compiled program per build instead of one per stretch length).
CFG = C.CorpusConfig(num_seeds=2, first_seed=7, fleet_size=1, test_fraction=0.5,
                     epochs_range=(2, 3), lr_range=(1e-3, 3e-3), unlearn_epochs=2,
                     checkpoints=4, forget_classes=(4, 5), class_pairs=1,
                     unlearn_batch_size=512)


@pytest.fixture(scope="module")
def built(tmp_path_factory, digits_splits):
    out = tmp_path_factory.mktemp("corpus")
    stats = C.build_corpus(out, CFG, digits_splits, progress=False)   # dataset: the splits'
    return out, stats


def test_a_named_dataset_without_splits_is_the_data_built_on(built, tmp_path):
    # build_corpus(dataset="digits") built on MNIST-5k and recorded it as digits.
    out, _ = built
    C.build_corpus(tmp_path / "c", CFG, dataset="digits", progress=False)
    index = json.loads((tmp_path / "c" / "index.json").read_text())
    want = json.loads((out / "index.json").read_text())
    assert (index["dataset"], index["split_seed"]) == ("digits", 0)
    assert index["data_fingerprint"] == want["data_fingerprint"]
    assert index["architecture"]["input_shape"] == [8, 8, 1]


def test_format_and_index(built):
    out, stats = built
    index = json.loads((out / "index.json").read_text())
    assert index["format"] == C.FORMAT and index["test_seeds"] == [8]
    assert index["dataset"] == "digits"     # was "mnist5k" for any splits given without a name
    # Splits given without their seed: not known (was 0 whatever seed made them, and
    # `sample --split-seed 3` was then refused for a corpus of seed-3 splits).
    assert index["split_seed"] is None
    assert all(s["done"] for s in index["shards"].values()) and len(index["shards"]) == 2
    assert index["trained_tensors"] == [2, 3]           # Dense_1 bias and kernel
    corpus = C.Corpus(out)
    assert corpus.arch.param_count == 64 * 10 + 10 + 10 * 10 + 10
    assert corpus.requests == [(4,), (5,), (0, 1)]
    assert corpus.originals.shape == (2, 760) and corpus.trajectory.shape[1] == 110
    with pytest.raises(CheckpointError, match=r"no original for seed 0; pass one of its "
                       r"seeds 7\.\.8 \(held out of hypernetwork training: \[8\]\)"):
        corpus.original(0)      # `sample --start-seed 0`: the seeds a user would try first
    # Per seed: 3 requests × 4 checkpoints (geometric in the step, the last at the end).
    assert len(corpus) == 2 * 3 * 4 and stats["checkpoints"] == len(corpus) + 2
    steps = sorted(set(corpus.rows[:, 2].tolist()))
    per_epoch = len(data.batch_indices(0, 0, sum(index["class_counts"]["train"]),
                                       CFG.unlearn_batch_size))
    assert len(steps) == 4 and steps[-1] == 2 * per_epoch and steps[0] == 1
    assert len(corpus.trajectories("train")) == 3 and len(corpus.trajectories("test")) == 3
    for typo in ("Test", "heldout", "val"):     # returned the training runs
        with pytest.raises(ConfigError, match="split must be 'train' or 'test'"):
            corpus.trajectories(typo)
    for o, _, rows in corpus.trajectories("train"):
        assert corpus.original_seeds[o] == 7 and np.all(np.diff(corpus.rows[rows, 2]) > 0)
    p = np.load(out / "shard_00000" / "trajectory.npy", allow_pickle=False)
    assert p.dtype == np.float32
    with pytest.raises(ConfigError):
        C.CorpusConfig(forget_classes=(3, 3))
    with pytest.raises(ConfigError, match="lr_range"):
        C.CorpusConfig(lr_range=(3e-3, 1e-3))


def test_originals_and_trajectories_are_exact(built, digits_splits):
    out, _ = built
    corpus = C.Corpus(out)
    arch = corpus.arch
    lr, epochs = CFG.recipe(7)
    assert 1e-3 <= lr <= 3e-3 and 2 <= epochs <= 3
    state, _ = train.fit(arch, digits_splits.train, train.TrainConfig(
        arch="gpt_mlp", seed=7, lr=lr, epochs=epochs))
    np.testing.assert_allclose(corpus.original(7), P_.flatten(state.params), atol=1e-5)
    # Masked self-distillation of the output layer, written as a plain optax loop; with
    # forget_readout="zero" (the default) the forgotten class's kernel column is not distilled
    # but shrinks to exactly 0 at the last step.
    x, n = jnp.asarray(digits_splits.train.x), len(digits_splits.train)
    p0 = state.params
    teacher = arch.apply(p0, x) - 1e9 * jax.nn.one_hot(4, 10)

    def loss(h, xb, tb):
        return jnp.mean(optax.softmax_cross_entropy(arch.apply({**p0, "Dense_1": h}, xb),
                                                    jax.nn.softmax(tb)))

    tx = optax.adamw(CFG.unlearn_lr, weight_decay=CFG.weight_decay)

    @jax.jit        # one program (op by op, the gradient and update compile dozens)
    def plain_step(head, opt, xb, tb):
        u, opt = tx.update(jax.grad(loss)(head, xb, tb), opt, head)
        return optax.apply_updates(head, u), opt

    def plain_loop(zero):
        head = dict(p0["Dense_1"])
        col0 = head["kernel"][:, 4]
        opt = tx.init(head)
        want = {}
        total = CFG.unlearn_epochs * len(data.batch_indices(0, 0, n, CFG.unlearn_batch_size))
        for e in range(CFG.unlearn_epochs):
            for b in data.batch_indices(7 + 7919, e, n, CFG.unlearn_batch_size):
                head, opt = plain_step(head, opt, x[b], teacher[b])
                t = len(want) + 1
                if zero:    # not distilled: shrinks evenly in log-step, 0 at the last step
                    shrink = 1.0 - np.log1p(t) / np.log1p(total)
                    head = {**head, "kernel": head["kernel"].at[:, 4].set(shrink * col0)}
                want[t] = np.asarray(P_.flatten({"Dense_1": head}))
        return want

    o, r, rows = corpus.trajectories("train")[0]
    assert corpus.requests[r] == (4,)
    want = plain_loop(zero=True)
    for row in rows:
        np.testing.assert_allclose(corpus.trajectory[row], want[int(corpus.rows[row, 2])],
                                   atol=2e-5)
    kernel = corpus.trajectory[rows[-1]][10:].reshape(10, 10)
    assert np.all(kernel[:, 4] == 0.0) and np.all(kernel[:, 5] != 0.0)
    # forget_readout="train" distils the forgotten column like every other value.
    steps, vals = C.unlearn_trajectories(arch, dataclasses.replace(CFG, forget_readout="train"),
                                         x, corpus.original(7)[None], [7], [(4,)])
    want = plain_loop(zero=False)
    for t, v in zip(steps, vals):
        np.testing.assert_allclose(v[0], want[t], atol=2e-5)
    assert np.all(vals[-1][0][10:].reshape(10, 10)[:, 4] != 0.0)
    # Per-request metrics agree with a direct evaluation.
    m = corpus.request_metrics(rows[-1:], (4,), "train")
    full = P_.unflatten(jnp.asarray(corpus.params(rows[-1:])[0]), arch.param_shapes())
    fsplit = data.resolve_forget(digits_splits.train, data.ForgetRequest(classes=(4,)))
    logits = arch.apply(full, fsplit.forget.x)
    assert abs(float(m["forget_acc"][0]) - float(np.mean(np.argmax(logits, -1)
                                                       == fsplit.forget.y))) < 1e-5
    assert float(m["forget_acc"][0]) == 0.0 and float(m["forget_loss"][0]) > 2.0


def test_every_shard_runs_the_same_compiled_programs(built, digits_splits):
    """A shard's fleet epoch, teacher and distillation stretches are the model's programs, the
    shard's arrays their arguments: another shard of the same shapes compiles nothing (each
    shard compiled them again, ≈ 40 % of a small build's compile time), with the same bits."""
    out, _ = built
    corpus = C.Corpus(out)
    x, y = jnp.asarray(digits_splits.train.x), jnp.asarray(digits_splits.train.y)
    with CompileCounter() as c:
        originals = C.train_originals(corpus.arch, CFG, x, y, [8])
        steps, vals = C.unlearn_trajectories(corpus.arch, CFG, x, originals, [8],
                                             CFG.requests(10))
    assert c.n == 0
    np.testing.assert_array_equal(originals[0], corpus.original(8))
    o = int(np.flatnonzero(corpus.original_seeds == 8)[0])
    for m, req in enumerate(CFG.requests(10)):
        rows = next(rows for oo, r, rows in corpus.trajectories("test")
                    if oo == o and corpus.requests[r] == req)
        np.testing.assert_array_equal(vals[:, m], corpus.trajectory[rows])


def test_readout_keep_mask_names_the_forgotten_columns():
    arch = models.make_architecture("gpt_mlp", input_shape=(8, 8, 1))
    head = C.trained_span(arch, "head")
    m = C.readout_keep_mask(arch, head, [(4,), (0, 9)])
    assert m.shape == (2, 110)
    k0 = m[0, 10:].reshape(10, 10)
    assert np.all(k0[:, 4] == 0) and k0.sum() == 90 and np.all(m[:, :10] == 1)
    k1 = m[1, 10:].reshape(10, 10)
    assert np.all(k1[:, [0, 9]] == 0) and k1.sum() == 80
    # Over every tensor the zeros sit at the output kernel's offset.
    full = C.readout_keep_mask(arch, C.trained_span(arch, "all"), [(4,)])
    assert full.shape == (1, arch.param_count) and full.sum() == arch.param_count - 10
    np.testing.assert_array_equal(full[0, -110:], m[0])
    with pytest.raises(ConfigError, match="forget_readout='train'"):
        C.readout_keep_mask(arch, [0, 1], [(4,)])      # the span lacks the output kernel


def test_resume_after_kill_and_config_mismatch(built, digits_splits, tmp_path):
    out, _ = built
    copy = tmp_path / "c"
    shutil.copytree(out, copy)
    before = np.load(copy / "shard_00001" / "trajectory.npy")
    # A build killed while writing shard 1: no "done" mark, a stale temporary directory.
    index = json.loads((copy / "index.json").read_text())
    del index["shards"]["00001"]
    (copy / "index.json").write_text(json.dumps(index))
    shutil.move(copy / "shard_00001", copy / ".shard_00001.tmp")
    stats = C.build_corpus(copy, CFG, digits_splits, "digits", progress=False)
    assert stats["shards_built"] == 1 and stats["shards_skipped"] == 1
    assert stats["total_checkpoints"] > stats["checkpoints"] > 0
    np.testing.assert_allclose(np.load(copy / "shard_00001" / "trajectory.npy"), before,
                               atol=1e-6)
    # A damaged shard: the refusal says to delete its directory and resume, which rebuilds it
    # (was: the resume skipped the shard marked done and was refused again, file missing).
    (copy / "shard_00001" / "trajectory.npy").write_text("garbage")
    with pytest.raises(CheckpointError, match=f"delete {copy / 'shard_00001'} and resume"):
        C.Corpus(copy)
    shutil.rmtree(copy / "shard_00001")
    stats = C.build_corpus(copy, CFG, digits_splits, "digits", progress=False)
    assert stats["shards_built"] == 1 and stats["shards_skipped"] == 1
    np.testing.assert_allclose(C.Corpus(copy).trajectory, C.Corpus(out).trajectory, atol=1e-6)
    with pytest.raises(CheckpointError, match="different config"):
        C.build_corpus(copy, dataclasses.replace(CFG, unlearn_epochs=3), digits_splits,
                       "digits", progress=False)
    with pytest.raises(CheckpointError, match="no corpus"):
        C.Corpus(tmp_path / "nothing")


def test_a_full_disk_while_writing_a_shard_is_one_named_error(built, digits_splits, tmp_path,
                                                               monkeypatch):
    """ENOSPC while saving a shard's arrays ended `hyperforget corpus` with numpy's traceback
    (exit 1); now a CheckpointError names the shard, the finished shards stay and the partial
    one is removed."""
    import errno

    out, _ = built
    copy = tmp_path / "c"
    shutil.copytree(out, copy)
    index = json.loads((copy / "index.json").read_text())
    del index["shards"]["00001"]
    (copy / "index.json").write_text(json.dumps(index))
    shutil.rmtree(copy / "shard_00001")

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(C, "build_shard", lambda *a: {"rows": np.zeros((1, 3), np.int32)})
    monkeypatch.setattr(C.np, "save", full)
    with pytest.raises(CheckpointError, match="shard_00001 .No space left on device"):
        C.build_corpus(copy, CFG, digits_splits, "digits", progress=False)
    assert (copy / "shard_00000").is_dir() and not (copy / ".shard_00001.tmp").exists()
    assert not json.loads((copy / "index.json").read_text())["shards"].get("00001")


def test_an_interrupted_build_closes_its_progress_bar(digits_splits, tmp_path, monkeypatch):
    """Ctrl-C inside a shard left the bar open while the traceback lived (a notebook keeps the
    last one): the rerun's bar was drawn a line down and the stale one redrawn at exit."""
    from tqdm.auto import tqdm

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(C, "build_shard", interrupted)
    before = set(tqdm._instances)
    with pytest.raises(KeyboardInterrupt) as info:
        C.build_corpus(tmp_path / "c", CFG, digits_splits, "digits", progress=True)
    assert info.traceback and not set(tqdm._instances) - before


def test_a_digits_corpus_an_older_version_recorded_as_mnist5k_resumes(built, digits_splits,
                                                                       tmp_path):
    """Before 2026-12-06 build_corpus recorded any splits passed without a name as "mnist5k":
    the same call on the same digits splits was then refused ("a different dataset") though
    the recorded fingerprint is the data's. It resumes, and the index takes the data's name."""
    out, _ = built
    copy = tmp_path / "c"
    shutil.copytree(out, copy)
    index = json.loads((copy / "index.json").read_text())
    (copy / "index.json").write_text(json.dumps({**index, "dataset": "mnist5k"}))
    stats = C.build_corpus(copy, CFG, digits_splits, progress=False)
    assert stats["shards_built"] == 0 and stats["shards_skipped"] == 2
    assert json.loads((copy / "index.json").read_text())["dataset"] == "digits"
    # Other arrays under the name are still another dataset.
    (copy / "index.json").write_text(json.dumps({**index, "data_fingerprint": "0" * 24}))
    with pytest.raises(CheckpointError, match="different data_fingerprint"):
        C.build_corpus(copy, CFG, digits_splits, progress=False)


def _damage(path, what):
    index = json.loads((path / "index.json").read_text())
    shard = path / "shard_00000"
    if what == "list":
        index = []
    elif what == "no-shards":
        del index["shards"]
    elif what == "bad-request":
        index["requests"] = [[42]]
    elif what == "bad-shard-entry":
        index["shards"]["00000"]["seeds"] = "seven"
    elif what == "metrics-shape":
        np.save(shard / "metrics.npy", np.zeros((3, 7), np.float32))
    elif what == "rows-shape":
        np.save(shard / "rows.npy", np.zeros((12, 4), np.int32))
    elif what == "huge-header":    # 4e12 bytes claimed by a 100-byte file: nothing allocated
        with open(shard / "metrics.npy", "wb") as f:
            np.lib.format.write_array_header_1_0(
                f, {"descr": "<f4", "fortran_order": False, "shape": (10**11, 10)})
            f.write(bytes(16))
    elif what == "nan-trajectory":  # its tensor's change scale was NaN, read as "not diffused"
        t = np.load(shard / "trajectory.npy")
        t[3, 5] = np.nan
        np.save(shard / "trajectory.npy", t)
    elif what == "swapped":        # loaded under the other's seeds (a test network trained on)
        shard.rename(path / "tmp")
        (path / "shard_00001").rename(shard)
        (path / "tmp").rename(path / "shard_00001")
    elif what in ("merged", "listed-twice"):  # read as part of the corpus (stop 63)
        n = len(index["shards"])
        entry = dict(index["shards"]["00000"], dir=f"shard_{n:05d}")
        if what == "merged":       # another corpus's fleet: its held-out network trained on
            entry["seeds"] = [s + 10**5 for s in entry["seeds"]]
        index["shards"][f"{n:05d}"] = entry
        shutil.copytree(shard, path / entry["dir"])
    elif what == "huge-num-seeds":   # every seed listed first: a MemoryError (stop 64)
        index["config"]["num_seeds"] = 10**12
    elif what == "negative-num-seeds":
        index["config"]["num_seeds"] = -3
    elif what == "rows-range":
        r = np.load(shard / "rows.npy")
        r[0, 1] = 9
        np.save(shard / "rows.npy", r)
    (path / "index.json").write_text(json.dumps(index))


@pytest.mark.parametrize("what, match", [
    ("list", "index.json holds a JSON list"),
    ("no-shards", "index.json: field 'shards' is missing"),
    ("bad-request", "field 'requests' holds \\[42\\]"),
    ("bad-shard-entry", "field 'shards.00000.seeds'"),
    ("metrics-shape", "metrics.npy has float32 \\(3, 7\\)"),
    ("rows-shape", "rows.npy has int32 \\(12, 4\\)"),
    ("rows-range", "refers to originals, requests or steps"),
    ("huge-header", "metrics.npy is unreadable"),
    ("nan-trajectory", "trajectory.npy holds NaN/inf values .*the shard is damaged"),
    ("swapped", "shard_00000 is not the shard index.json records \\(swapped"),
    ("merged", "is not one of this corpus's fleets .*merged in from another corpus"),
    ("listed-twice", "is not one of this corpus's fleets .*merged in from another corpus"),
    ("huge-num-seeds", "field 'config.first_seed/num_seeds/fleet_size' must be integers "
                       ".*first_seed \\+ num_seeds <= 2\\*\\*32"),
    ("negative-num-seeds", "field 'config.first_seed/num_seeds/fleet_size' must be integers "
                           "\\(first_seed, num_seeds >= 0"),
])
def test_damaged_index_or_shard_is_named(built, tmp_path, what, match):
    out, _ = built
    copy = tmp_path / "c"
    shutil.copytree(out, copy)
    _damage(copy, what)
    with pytest.raises(CheckpointError, match=match):
        C.Corpus(copy)


def test_the_build_and_hypertraining_run_under_rank_promotion_raise(built, tmp_path,
                                                                   digits_splits):
    """A caller's jax_numpy_rank_promotion="raise" stopped the corpus build and the
    hypernetwork's training with JAX's ValueError from deep inside ((N, K) by (K,)
    broadcasts). It only refuses, so they run under "allow" with the same bits (stop 63)."""
    from hyperforget_jax.hyperforget import denoiser as DN, dihyfo as H

    out, _ = built
    tiny = dict(denoiser=DN.DenoiserConfig(num_layers=1, width=32, num_heads=2, tokens="units"),
                config=DN.HyperTrainConfig(steps=2, batch_size=8))
    expected = H.train_hypernet(C.Corpus(out), "dihyfo2", **tiny)[0].params
    with jax.numpy_rank_promotion("raise"):
        C.build_corpus(tmp_path / "c", CFG, digits_splits, progress=False)
        got = H.train_hypernet(C.Corpus(out), "dihyfo2", **tiny)[0].params
        assert jax.config.jax_numpy_rank_promotion == "raise"
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expected)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    for name in C.CI.SHARD_ARRAYS:
        np.testing.assert_array_equal(np.load(tmp_path / "c" / "shard_00000" / f"{name}.npy"),
                                      np.load(out / "shard_00000" / f"{name}.npy"))


def test_user_model_by_import_path(tmp_path, digits_splits):
    """A corpus of a user's own model, named by import path as ``hyperforget train --arch``
    takes it (was: "unknown architecture ... or pass ... an import path 'pkg.module:Name'")."""
    small = data.Splits(*(dataclasses.replace(ds, x=ds.x[:256], y=ds.y[:256])
                          for ds in digits_splits))
    cfg = dataclasses.replace(CFG, arch="user_model:TinyNet", epochs_range=(1, 1),
                              unlearn_epochs=1, checkpoints=1, class_pairs=0,
                              forget_classes=(4,))
    # CFG's unlearning batch of 512 wrapped round these 256 images (rows repeated in every
    # batch) without a word: refused, naming the field and its flag, before anything is made.
    with pytest.raises(ConfigError, match=r"CorpusConfig.unlearn_batch_size 512 is larger than "
                                          r"the training set \(256 images\).*"
                                          r"\(--unlearn-batch-size\)"):
        C.build_corpus(tmp_path / "c", cfg, small, "digits-256", progress=False)
    assert not (tmp_path / "c").exists()
    cfg = dataclasses.replace(cfg, unlearn_batch_size=256)
    C.build_corpus(tmp_path, cfg, small, "digits-256", progress=False)
    corpus = C.Corpus(tmp_path)
    assert corpus.arch.source == "user_model:TinyNet" and corpus.originals.shape == (2, 2410)
    # TinyNet builds its output layer first (Dense_0, called last): that is the head trained.
    assert corpus.index["trained_tensors"] == [0, 1]


def test_head_is_the_module_called_last():
    """resnet18's output Dense sorts before its `_BasicBlock_7` by name: the head is found by
    call order (was: the last residual block, refused as "has no output layer")."""
    arch = models.make_architecture("resnet18", (28, 28, 1), 10)
    leaves = jax.tree_util.tree_leaves_with_path(arch.param_shapes())
    names = [jax.tree_util.keystr(leaves[i][0]) for i in C.trained_span(arch, "head")]
    assert names == ["['Dense_0']['bias']", "['Dense_0']['kernel']"]
    assert C.readout_keep_mask(arch, C.trained_span(arch, "head"), [(3,)]).sum() == 10 + 512 * 9


def test_pairs_on_two_class_data_are_refused():
    """On 2-class data the one pair forgets every class: its retain losses were NaN and the
    hypertraining failed on "conditions' statistics must be finite ... nan"."""
    with pytest.raises(ConfigError, match="forgets every class"):
        C.CorpusConfig(class_pairs=1).requests(2)
    assert C.CorpusConfig(class_pairs=0).requests(2) == [(0,), (1,)]
    assert C.CorpusConfig(class_pairs=20).requests(3)[3:] == [(0, 1), (0, 2), (1, 2)]


def test_more_pairs_than_ten_classes_have_are_taken_on_more_classes():
    """class_pairs was bounded by 45, the pairs of 10 classes: 100-class data could not have
    more; each count is a cap on the data's own pairs."""
    reqs = C.CorpusConfig(class_pairs=60).requests(100)
    assert len(reqs) == 160 and len(set(reqs[100:])) == 60
    assert len(C.CorpusConfig(class_pairs=60).requests(10)) == 10 + 45


def test_requests_of_a_class_without_training_images_are_refused(tmp_path, digits_splits):
    """Data without class 3 (here: removed from the training split): the corpus was built,
    trajectories of the empty request included, and only hypertraining failed, on "the
    conditions' statistics must be finite ... nan"."""
    tr = digits_splits.train
    keep = tr.y != 3
    splits = digits_splits._replace(train=data.Dataset(tr.x[keep], tr.y[keep], 10, "digits"))
    cfg = C.CorpusConfig(num_seeds=2, first_seed=0, fleet_size=2, class_pairs=2)
    with pytest.raises(ConfigError, match=r"class\(es\) \[3\] have no training images.*"
                                          r"\[\(3,\), \(2, 3\)\]"):
        C.build_corpus(tmp_path / "c", cfg, splits, "digits", progress=False)
    assert not (tmp_path / "c").exists()


def test_resume_refuses_an_index_of_another_trained_span(tmp_path, digits_splits):
    """resnet18's "head" was its last block before the head was found by call order: resuming
    such a corpus built its new shards on the new span under the old index's span."""
    small = data.Splits(*(dataclasses.replace(ds, x=ds.x[:256], y=ds.y[:256])
                          for ds in digits_splits))
    cfg = dataclasses.replace(CFG, epochs_range=(1, 1), unlearn_epochs=1, checkpoints=1,
                              class_pairs=0, forget_classes=(4,), unlearn_layers="head",
                              unlearn_batch_size=256)
    C.build_corpus(tmp_path, cfg, small, "digits-256", progress=False)
    index = json.loads((tmp_path / "index.json").read_text())
    index["trained_tensors"] = [0, 1]               # as an older rule would have named it
    del index["shards"]["00001"]                    # killed before its second shard
    (tmp_path / "index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="different trained_tensors"):
        C.build_corpus(tmp_path, cfg, small, "digits-256", progress=False)


def test_head_is_the_last_called_module_with_parameters():
    """A parameter-free module called after the output layer (a scaling, an activation
    module) sent the search back to name order, which picked the hidden layer."""
    import flax.linen as nn

    class Scale(nn.Module):
        @nn.compact
        def __call__(self, x):
            return x / 2.0

    class Net(nn.Module):
        num_classes: int = 10

        @nn.compact
        def __call__(self, x):
            h = nn.relu(nn.Dense(32, name="trunk")(x.reshape(x.shape[0], -1)))
            return Scale()(nn.Dense(self.num_classes, name="head")(h))

    arch = models.as_model(Net(), (8, 8, 1), 10)
    leaves = jax.tree_util.tree_leaves_with_path(arch.param_shapes())
    names = [jax.tree_util.keystr(leaves[i][0]) for i in C.trained_span(arch, "head")]
    assert names == ["['head']['bias']", "['head']['kernel']"]


def test_head_unlearning_of_a_model_whose_logits_follow_its_head_is_refused(tmp_path,
                                                                          digits_splits):
    """unlearn_layers='head' distils the output layer's output (inputs @ kernel + bias)
    towards the model's softmax: for a model dividing it by a temperature of 4 it distilled
    another model (its endpoints' retain loss 3× the original's), without a word. Refused
    before anything is trained or written; 'all' takes it."""
    cfg = dataclasses.replace(CFG, arch="user_model:TemperedNet", epochs_range=(1, 1),
                              unlearn_epochs=1, checkpoints=1, class_pairs=0,
                              forget_classes=(4,))
    with pytest.raises(ConfigError, match=r"logits are not its output layer 'Dense_0''s output"
                                          r".*use unlearn_layers='all'"):
        C.build_corpus(tmp_path / "c", cfg, digits_splits, "digits", progress=False)
    assert not (tmp_path / "c").exists()
    C._check_head_is_output(models.as_model("user_model:TinyNet", (8, 8, 1), 10),
                            digits_splits.train.x[:64])              # its untempered twin
    import flax.linen as nn

    def with_head(head):
        """A model of one hidden layer whose logits are ``head(hidden)``."""
        class Net(nn.Module):
            @nn.compact
            def __call__(self, x):
                return head(nn.relu(nn.Dense(32)(x.reshape(x.shape[0], -1))))
        return models.as_model(Net(), (8, 8, 1), 10)

    class Wrapped(nn.Module):
        @nn.compact
        def __call__(self, h):
            return nn.Dense(10)(h)

    x = digits_splits.train.x[:64]
    # Taken: a head computing in bfloat16 (a float32 recomputation of inputs @ kernel + bias
    # refused it, as it would the TF32 matmuls of a GPU), and a log_softmax after the head (the
    # same softmax, so head distillation is exact; it was refused).
    for head in (lambda h: nn.Dense(10, dtype=jnp.bfloat16, param_dtype=jnp.float32)(h),
                 lambda h: jax.nn.log_softmax(nn.Dense(10)(h))):
        C._check_head_is_output(with_head(head), x)
    # Refused: a temperature after a zero-initialised head (ViT-style: at the initial
    # parameters it outputs 0, and so do its logits; it was taken), and a head without a bias
    # or wrapped in a submodule (a KeyError traceback in the distillation program, after the
    # originals had trained).
    with pytest.raises(ConfigError, match="logits are not its output layer 'Dense_1''s output"):
        C._check_head_is_output(with_head(
            lambda h: nn.Dense(10, kernel_init=nn.initializers.zeros)(h) / 4.0), x)
    for head in (lambda h: nn.Dense(10, use_bias=False)(h), lambda h: Wrapped()(h)):
        with pytest.raises(ConfigError, match=r"needs an output layer that is one nn.Dense "
                                              r"with a bias .*unlearn_layers='all'"):
            C._check_head_is_output(with_head(head), x)


@pytest.mark.parametrize("field, value, words", [
    # The last distillation update left finite but huge head weights: NaN metrics were written
    # as the shard (exit 0), refused only when a hypernetwork was trained on them.
    ("unlearn_lr", 2e38, r"the unlearning trajectories of seed 7 give NaN/inf losses on the "
                         r"data; lower unlearn_lr \(--unlearn-lr\)"),
    # Originals whose one step left NaN outputs were blamed on unlearn_lr.
    ("lr_range", (2e38, 2e38), r"the originals of seed 7 give NaN/inf losses on the data; "
                               r"lower lr_range \(--lr-range\)")])
def test_a_corpus_whose_networks_give_nan_losses_is_refused_not_written(tmp_path, digits_splits,
                                                                        field, value, words):
    from hyperforget_jax.errors import NonFiniteError

    n = len(digits_splits.train)
    cfg = dataclasses.replace(CFG, epochs_range=(1, 1), unlearn_epochs=1, checkpoints=1,
                              class_pairs=0, forget_classes=(4,), unlearn_batch_size=n,
                              batch_size=n, **{field: value})
    with pytest.raises(NonFiniteError, match=words):
        C.build_corpus(tmp_path / "c", cfg, digits_splits, "digits", progress=False)
    assert not list((tmp_path / "c").glob("shard*"))


def test_metrics_of_large_splits_take_fewer_checkpoints_per_call(monkeypatch, digits_splits):
    """64 checkpoints per call up to C.METRIC_EVALS / 64 images in all splits, fewer
    above (64 checkpoints over CIFAR-10's training set hold ≈ 3.9 GiB of activations), with the
    same metrics."""
    arch = models.make_architecture("gpt_mlp", digits_splits.train.x.shape[1:])
    flat = np.stack([P_.flatten(arch.init(jax.random.key(s))) for s in range(5)])
    whole = C.make_metrics_fn(arch, digits_splits)
    assert whole.chunk == 64
    monkeypatch.setattr(C, "METRIC_EVALS", 2 * sum(len(ds.x) for ds in digits_splits))
    fn = C.make_metrics_fn(arch, digits_splits)
    assert fn.chunk == 2
    np.testing.assert_allclose(fn(flat), whole(flat), rtol=1e-5, atol=1e-6)


def test_metrics_take_the_splits_as_arguments_of_one_program():
    """The metrics program takes the splits as arguments: metrics over other data of the same
    shapes compile nothing new (as constants of a closure, MNIST-5k's splits made a 15.9 MB
    program compiled per corpus build), and still read that data."""
    rng = np.random.default_rng(0)
    arch = models.make_architecture("gpt_mlp", (3, 5, 1), 3)   # shapes no other test uses
    flat = rng.normal(size=(2, P_.param_spans(arch.param_shapes())[-1].stop)).astype("f4")

    def splits():
        x = rng.random((60, 3, 5, 1), np.float32)
        return data.make_splits(data.from_arrays(x, np.arange(60) % 3, 3, "odd"))

    first = C.make_metrics_fn(arch, splits())(flat)
    with CompileCounter() as c:
        other = C.make_metrics_fn(arch, splits())(flat)
    assert c.n == 0
    assert not np.array_equal(first, other)


def test_checkpoint_steps_keep_at_most_count_and_say_so():
    """Rounding merges the first geometric steps: the default corpus (27 batches × 20 epochs)
    stores 15 checkpoints per request, not ``CorpusConfig.checkpoints`` = 16 (256 originals ×
    30 requests × 15 = the 115,200 of docs/hyperforget.md); the docstrings said exactly 16."""
    cfg = C.CorpusConfig()
    total = data.batch_indices(0, 0, 3500, cfg.unlearn_batch_size).shape[0] * cfg.unlearn_epochs
    steps = C.checkpoint_steps(total, cfg.checkpoints)
    assert steps[-1] == total and np.all(np.diff(steps) > 0) and len(steps) == 15
    assert cfg.num_seeds * (10 + cfg.class_pairs) * len(steps) == 115_200


def test_train_fleet_members_stop_at_the_end_of_their_own_runs(digits_splits):
    """Members of one fleet with other epochs and index sets each equal fit on their own rows:
    a member whose run is over (fewer epochs, or fewer batches in an epoch) takes no step."""
    arch = models.make_architecture("gpt_mlp", (8, 8, 1))
    ds = digits_splits.train
    sets = [np.arange(300), np.arange(100, 300)]
    recipes = [(1e-2, 1), (3e-3, 2)]
    got = C.train_fleet(arch, jnp.asarray(ds.x), jnp.asarray(ds.y), [3, 5], recipes, sets,
                        batch_size=64)
    # Under a caller's strict promotion: optax's TypePromotionError, as fit's was (stop 64).
    with jax.numpy_dtype_promotion("strict"):
        strict = C.train_fleet(arch, jnp.asarray(ds.x), jnp.asarray(ds.y), [3, 5], recipes,
                               sets, batch_size=64)
    np.testing.assert_array_equal(strict, got)
    for row, seed, ix, (lr, epochs) in zip(got, [3, 5], sets, recipes):
        state, _ = train.fit(arch, ds.subset(ix), train.TrainConfig(
            arch="gpt_mlp", seed=seed, lr=lr, epochs=epochs, batch_size=64))
        np.testing.assert_allclose(row, P_.flatten(state.params), atol=1e-5)
    # zip() dropped a third seed without an index set (it came back as its initialisation);
    # a set smaller than the batch was wrapped round (rows repeated), where fit caps its batch.
    x, y = jnp.asarray(ds.x), jnp.asarray(ds.y)
    with pytest.raises(ConfigError, match=r"3 seeds, 3 recipes and 2 index sets; give one"):
        C.train_fleet(arch, x, y, [3, 5, 7], recipes + [(1e-2, 1)], sets, batch_size=64)
    with pytest.raises(ConfigError, match=r"2 seeds, 1 recipes"):
        C.train_fleet(arch, x, y, [3, 5], recipes[:1], sets, batch_size=64)
    with pytest.raises(ConfigError, match=r"member 1 trains on 40 rows, fewer than batch_size "
                                          r"64; use batch_size <= 40"):
        C.train_fleet(arch, x, y, [3, 5], recipes, [np.arange(300), np.arange(40)],
                      batch_size=64)
    # A last update that left finite parameters with NaN/inf outputs came back as a network
    # (fit refuses it; stop 63).
    with pytest.raises(NonFiniteError, match=r"train_fleet: the last update left finite "
                                             r"parameters whose outputs are NaN/inf \(fleet "
                                             r"member 1\)"):
        C.train_fleet(arch, x, y, [3, 5], [(1e-2, 1), (1e30, 1)], [np.arange(64)] * 2,
                      batch_size=64)


def test_one_checkpoint_is_the_end_of_the_trajectory():
    # np.geomspace(1, total, 1) is [1]: the first unlearning step was stored as the endpoint.
    assert C.checkpoint_steps(540, 1).tolist() == [540]
    assert C.checkpoint_steps(540, 2).tolist() == [1, 540]
    assert C.checkpoint_steps(540, 16)[-1] == 540 and len(C.checkpoint_steps(540, 16)) == 15


def test_a_corpus_resumed_under_other_jax_settings_is_refused(built, tmp_path, digits_splits):
    """A build resumed under another jax_default_prng_impl (or x64, or threefry
    partitioning) went on without a word: its later shards' originals 0.62 apart from an
    uninterrupted build's, a mixed corpus (stop 64). A complete corpus is not rebuilt, so it is
    not refused; an index without the record (older versions) is not compared."""
    out, _ = built
    copy = tmp_path / "c"
    shutil.copytree(out, copy)
    index = json.loads((copy / "index.json").read_text())
    assert index["jax_settings"] == {"jax_default_prng_impl": "threefry2x32",
                                     "jax_threefry_partitionable": True,
                                     "jax_enable_x64": False}
    shutil.rmtree(copy / "shard_00001")            # a build killed before its last shard
    before = jax.config.jax_default_prng_impl
    jax.config.update("jax_default_prng_impl", "rbg")
    try:
        C.build_corpus(out, CFG, digits_splits, progress=False)         # complete: nothing to do
        with pytest.raises(CheckpointError, match="holds a corpus written under "
                                                  "jax_default_prng_impl='threefry2x32', and "
                                                  "this process runs under 'rbg'"):
            C.build_corpus(copy, CFG, digits_splits, progress=False)
        del index["jax_settings"]
        (copy / "index.json").write_text(json.dumps(index))
        C.build_corpus(copy, CFG, digits_splits, progress=False)        # older: not compared
    finally:
        jax.config.update("jax_default_prng_impl", before)
