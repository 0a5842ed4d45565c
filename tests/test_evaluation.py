
import numpy as np
import pytest

from hyperforget_jax import data, models, train
from hyperforget_jax.evaluation import evaluate_unlearning, gap_keys, gap_to_retrain

ARCH = models.make_architecture("gpt_mlp", (8, 8, 1))
CFG = train.TrainConfig(arch="gpt_mlp", epochs=15, batch_size=64, lr=1e-2)


@pytest.fixture(scope="module")
def setting(digits_splits):
    req = data.ForgetRequest(classes=(4,))
    fs = data.resolve_forget(digits_splits.train, req)
    orig = train.fit(ARCH, digits_splits.train, CFG)[0].params
    retrain = train.fit(ARCH, fs.retain, CFG)[0].params
    return digits_splits, req, fs, orig, retrain


def test_class_removal_metrics(setting):
    splits, req, fs, orig, retrain = setting
    o = evaluate_unlearning(ARCH, orig, splits, fs, req)
    r = evaluate_unlearning(ARCH, retrain, splits, fs, req)
    assert o["forget_acc"] > 0.8 and r["forget_acc"] == 0.0
    assert r["test_acc_forgotten"] == 0.0 and r["per_class_test_acc"][4] == 0.0
    assert abs(r["test_acc_kept"] - o["test_acc_kept"]) < 0.1
    # Non-members are unseen images of class 4: Retrain saw neither, so the attack is near chance.
    assert 0.3 < r["mia_loss_lr"] < 0.7
    # Retrain is confidently wrong on class 4 -> its forget samples look like non-members.
    assert r["mia_efficacy_svc"] > 0.9 > o["mia_efficacy_svc"]
    assert gap_to_retrain(r, r) == 0.0
    gap = gap_to_retrain(o, r)
    expected = np.mean([100 * abs(o[k] - r[k]) for k in
                        ("forget_acc", "retain_acc", "test_acc", "mia_loss_lr")])
    assert gap == pytest.approx(expected) and gap > 20


def test_random_forgetting_uses_all_test_samples(setting):
    splits, _, _, orig, _ = setting
    req = data.ForgetRequest(fraction=0.1, seed=0)
    fs = data.resolve_forget(splits.train, req)
    out = evaluate_unlearning(ARCH, orig, splits, fs, req)
    assert "test_acc_kept" not in out
    assert out["forget_acc"] >= out["test_acc"] - 0.05  # seen samples are fit at least as well


def test_fsplit_of_another_split_seed_is_refused(digits_splits):
    """A fraction request picks the same indices on any training set of that size: the split
    of another split seed passed the index check, and its "forget" images (some in this test
    set) were attacked as members."""
    import jax

    from hyperforget_jax.errors import ForgetRequestError

    other = data.make_splits(data.load_digits(), seed=1)
    req = data.ForgetRequest(fraction=0.1)
    wrong = data.resolve_forget(other.train, req)
    params = ARCH.init(jax.random.key(0))
    with pytest.raises(ForgetRequestError, match="not splits.train's rows"):
        evaluate_unlearning(ARCH, params, digits_splits, wrong, req)
    # A reduced retain set (a subset of the rest, as unlearn() accepts) is still this split.
    right = data.resolve_forget(digits_splits.train, req)
    half = len(right.retain) // 2
    reduced = right._replace(retain=right.retain.subset(np.arange(half)),
                             retain_idx=right.retain_idx[:half])
    assert 0 <= evaluate_unlearning(ARCH, params, digits_splits, reduced, req)["retain_acc"] <= 1


def test_gap_keys_leave_out_not_applicable_metrics():
    """The unlearn report's Avg. Gap heading named mia_loss_lr even when the attack was not
    applicable (one-item forget set) and the mean was over FA, RA, TA only."""
    from hyperforget_jax.evaluation import GAP_LABELS

    row = {"forget_acc": 1.0, "retain_acc": 0.9, "test_acc": 0.8, "mia_loss_lr": None}
    assert gap_keys(row, dict(row, mia_loss_lr=0.5)) == ("forget_acc", "retain_acc", "test_acc")
    assert [GAP_LABELS[k] for k in gap_keys(dict(row, mia_loss_lr=0.5), dict(
        row, mia_loss_lr=0.5))] == ["FA", "RA", "TA", "mia_loss_lr"]
    assert gap_to_retrain(row, dict(row, forget_acc=0.7)) == pytest.approx(10.0)


def test_gap_to_retrain_refuses_a_row_without_a_gap_metric():
    """A missing metric (not None: absent) was dropped like a not-applicable one, so a row of
    other metrics gave a gap over fewer keys, as if it were the Avg. Gap; metrics.avg_gap
    refuses it, and so does gap_to_retrain now."""
    from hyperforget_jax.errors import ConfigError

    row = {"forget_acc": 1.0, "retain_acc": 0.9, "test_acc": 0.8, "mia_loss_lr": 0.6}
    partial = {k: v for k, v in row.items() if k != "mia_loss_lr"}
    with pytest.raises(ConfigError, match="result has no mia_loss_lr.*evaluate_unlearning"):
        gap_to_retrain(partial, row)
    with pytest.raises(ConfigError, match="retrain has no forget_acc"):
        gap_to_retrain(row, {"accuracy": 0.9})


def test_splits_with_different_class_counts_are_named(digits_splits):
    """A test set built with from_arrays without class 9 infers 9 classes: the evaluation then
    built a 9-output model and blamed the parameters ("trained for another architecture?")."""
    import jax

    from hyperforget_jax.errors import DataError

    te = digits_splits.test.subset(np.flatnonzero(digits_splits.test.y != 9))
    splits = digits_splits._replace(test=data.from_arrays(te.x, te.y))
    req = data.ForgetRequest(classes=(3,))
    fs = data.resolve_forget(splits.train, req)
    with pytest.raises(DataError, match="disagree on the number of classes"):
        evaluate_unlearning("gpt_mlp", ARCH.init(jax.random.key(0)), splits, fs, req)


def test_fsplit_rows_check_compares_every_label_and_a_sample_of_images(digits_splits):
    """The images are compared on a sample of rows (a whole comparison gathered the training
    set on every call); the labels are all compared."""
    import dataclasses

    import jax

    from hyperforget_jax.errors import ForgetRequestError

    req = data.ForgetRequest(fraction=0.1)
    fs = data.resolve_forget(digits_splits.train, req)
    y = fs.retain.y.copy()
    y[1] = (y[1] + 1) % 10                       # one label, off the sampled rows' grid
    bad = fs._replace(retain=dataclasses.replace(fs.retain, y=y))
    with pytest.raises(ForgetRequestError, match="not splits.train's rows"):
        evaluate_unlearning(ARCH, ARCH.init(jax.random.key(0)), digits_splits, bad, req)


def test_every_metric_equals_numpy_on_the_right_sets(setting):
    """Class removal, every metric from the model's logits in numpy: accuracies on D_r, D_f,
    D_t, its kept and forgotten classes; the LR attacks on (forget, forgotten-class test) with
    the loss and the entropy; the SVC trained on (retain, test), applied to forget."""
    from hyperforget_jax import metrics

    splits, req, fs, orig, _ = setting
    out = evaluate_unlearning(ARCH, orig, splits, fs, req, seed=1)

    def feats(ds):
        z = np.asarray(ARCH.apply(orig, ds.x), np.float64)
        logp = z - z.max(1, keepdims=True)
        logp = logp - np.log(np.exp(logp).sum(1, keepdims=True))
        loss = -logp[np.arange(len(ds.y)), ds.y]
        return (z.argmax(1) == ds.y), loss, -(np.exp(logp) * logp).sum(1), np.exp(-loss)

    (cr, _, _, conf_r), (cf, loss_f, ent_f, conf_f), (ct, loss_t, ent_t, conf_t) = (
        feats(fs.retain), feats(fs.forget), feats(splits.test))
    gone = np.isin(splits.test.y, req.classes)
    assert out["retain_acc"] == pytest.approx(cr.mean())
    assert out["forget_acc"] == pytest.approx(cf.mean())
    assert out["test_acc"] == pytest.approx(ct.mean())
    assert out["test_acc_kept"] == pytest.approx(ct[~gone].mean())
    assert out["test_acc_forgotten"] == pytest.approx(ct[gone].mean())
    assert out["test_acc_kept"] != pytest.approx(out["test_acc"], abs=1e-3)
    assert out["mia_loss_lr"] == pytest.approx(
        metrics.mia_loss_lr(loss_f, loss_t[gone], seed=1), abs=1e-6)
    assert out["mia_entropy_lr"] == pytest.approx(
        metrics.mia_entropy_lr(ent_f, ent_t[gone], seed=1), abs=1e-6)
    assert out["mia_entropy_lr"] != out["mia_loss_lr"]
    assert out["mia_efficacy_svc"] == pytest.approx(
        metrics.mia_efficacy_svc(conf_r, conf_t, conf_f, seed=1), abs=1e-6)


def test_attacks_take_members_and_non_members_of_one_class_mix(setting):
    """Two forgotten classes, 5 common among the members and rare among the non-members, 6 the
    reverse, and a fixed model that never saw the data: the LR attacks learned the class, not
    membership (0.87). Beyond sampling noise (χ² test) both sides now hold each class equally;
    a stratified split (the fixture's) is left as it was."""
    import jax.numpy as jnp

    from hyperforget_jax import metrics

    rng = np.random.default_rng(0)
    proto = rng.uniform(0.1, 0.9, size=(10, 4, 4, 1)).astype(np.float32)

    def mk(counts, name):
        y = np.repeat(np.arange(10), counts)
        x = np.clip(proto[y] + 0.05 * rng.normal(size=(len(y), 4, 4, 1)), 0, 1)
        return data.from_arrays(x.astype(np.float32), y, 10, name)

    tr, te = [50] * 10, [20] * 10
    tr[5], tr[6], te[5], te[6] = 90, 10, 10, 90
    splits = data.Splits(mk(tr, "train"), mk([10] * 10, "val"), mk(te, "test"))

    def apply_fn(params, x):     # nearest prototype; class 6 never recognised (a high loss)
        d = -((x.reshape(x.shape[0], 1, -1) - params[None]) ** 2).sum(-1) * 20.0
        return d.at[:, 6].add(-50.0)

    params = jnp.asarray(proto.reshape(10, -1))
    req = data.ForgetRequest(classes=(5, 6))
    fs = data.resolve_forget(splits.train, req)
    out = evaluate_unlearning(apply_fn, params, splits, fs, req, seed=0)
    lr = out["attacks_class_matched"]["lr"]
    assert lr["p_value"] < metrics.CLASS_MIX_P and lr["members"] == lr["nonmembers"] == 20
    gone = np.isin(splits.test.y, (5, 6))
    model = models.as_model(apply_fn, (4, 4, 1), 10)
    f = metrics.per_sample_outputs(model, params, fs.forget.x, fs.forget.y)["loss"]
    t = metrics.per_sample_outputs(model, params, splits.test.x[gone], splits.test.y[gone])["loss"]
    assert metrics.mia_loss_lr(f, t, seed=0) > 0.8                 # the class, not membership
    rows_f, rows_t, _ = metrics.class_matched_rows(fs.forget.y, splits.test.y[gone], 0)
    assert out["mia_loss_lr"] == pytest.approx(metrics.mia_loss_lr(f[rows_f], t[rows_t], seed=0))
    assert out["mia_loss_lr"] < 0.7
    from hyperforget_jax.evaluation import class_matched_note   # what the CLI's reports say

    assert "took 20 members and 20 non-members, class by class" in class_matched_note(out)
    # Items of a class the test set lacks: no rows survive the matching, and the reason counts
    # them so (it read "got 0 forget ... samples" for a 20-item forget set).
    te9 = [20] * 9 + [0]
    no9 = data.Splits(splits.train, splits.val, mk(te9, "test"))
    items = data.ForgetRequest(indices=tuple(int(i) for i in
                                             np.flatnonzero(splits.train.y == 9)[:20]))
    out9 = evaluate_unlearning(apply_fn, params, no9, data.resolve_forget(splits.train, items),
                               items, seed=0)
    assert out9["mia_loss_lr"] is None
    assert out9["not_applicable"]["mia_loss_lr"].endswith(
        "got 0 of 20 forget and 0 of 180 held-out samples after class matching (the classes "
        "both sets hold)")
    d_splits, d_req, d_fs, orig, _ = setting
    assert "attacks_class_matched" not in evaluate_unlearning(ARCH, orig, d_splits, d_fs, d_req,
                                                              seed=1)


_ONE = {"s": np.float32(1.0)}


def _favours_class_0(n_train=1000, n_test=500, classes=10, test_classes=None):
    """Splits whose rows carry their logits in the first ``classes`` columns, class 0's raised
    by 3 for every row: a model that never saw any data and favours class 0."""
    rng = np.random.default_rng(0)

    def mk(n, name, pool):
        y = rng.choice(pool, n)
        x = rng.normal(size=(n, classes + 3, 1, 1)).astype(np.float32)
        x[:, 0] += 3.0
        return data.from_arrays(x, y, classes, name)

    every = np.arange(classes)
    splits = data.Splits(mk(n_train, "train", every), mk(30, "val", every),
                         mk(n_test, "test", every if test_classes is None else test_classes))
    return splits, (lambda params, x: x.reshape(len(x), -1)[:, :classes] * params["s"])


def test_a_few_items_of_one_class_are_matched_by_class_though_too_few_to_test():
    """Three items of class 0 from a model that never saw them and favours class 0 read
    mia_loss_lr 0.88 (mean over seeds): the χ² test of the class mixes (p 0.003) has no power at
    such sizes, so the attack compared class 0 with the whole test set. Where a cell expects
    fewer than MIN_EXPECTED rows, differing mixes are now matched."""
    from hyperforget_jax import metrics
    from hyperforget_jax.evaluation import class_matched_note

    splits, apply_fn = _favours_class_0()
    req = data.ForgetRequest(indices=tuple(int(i) for i in
                                           np.flatnonzero(splits.train.y == 0)[:3]))
    fs = data.resolve_forget(splits.train, req)
    out = evaluate_unlearning(apply_fn, _ONE, splits, fs, req, seed=0)
    lr = out["attacks_class_matched"]["lr"]
    assert lr["members"] == lr["nonmembers"] == 3 and lr["p_value"] > metrics.CLASS_MIX_P
    model = models.as_model(apply_fn, (13, 1, 1), 10)
    f = metrics.per_sample_outputs(model, _ONE, fs.forget.x, fs.forget.y)["loss"]
    t = metrics.per_sample_outputs(model, _ONE, splits.test.x, splits.test.y)["loss"]
    rows_f, rows_t, _ = metrics.class_matched_rows(fs.forget.y, splits.test.y, 0)
    assert (splits.test.y[rows_t] == 0).all()
    assert out["mia_loss_lr"] == pytest.approx(metrics.mia_loss_lr(f[rows_f], t[rows_t], seed=0))
    assert "class by class (χ² p = " in class_matched_note(out)
    assert "too few rows for the test to be read" in class_matched_note(out)
    # A large set of the same mix as the test set is still left as it is.
    assert metrics.class_matched_rows(splits.train.y, splits.test.y, 0) is None


def test_a_test_set_without_the_retain_set_s_classes_leaves_the_svc_not_applicable():
    """A test set holding only the forgotten class raised scipy's bare ValueError (the χ²
    test's "expected frequencies has a zero element") from the SVC's class matching."""
    splits, apply_fn = _favours_class_0(n_train=300, n_test=90, classes=3, test_classes=[2])
    req = data.ForgetRequest(indices=tuple(int(i) for i in np.flatnonzero(splits.train.y == 2)))
    fs = data.resolve_forget(splits.train, req)
    out = evaluate_unlearning(apply_fn, _ONE, splits, fs, req, seed=0)
    assert out["mia_efficacy_svc"] is None
    assert "holds no sample of the classes the retain set holds" in \
        out["not_applicable"]["mia_efficacy_svc"]
    assert out["mia_loss_lr"] is not None


def test_a_single_retain_sample_leaves_the_svc_not_applicable():
    """Forgetting all but one training sample trained the SVC on one member and one
    non-member: an "efficacy" of 0 or 1 by which side each sample fell on. It is now not
    applicable, as the LR attacks are below two samples a side; mia_efficacy_svc itself refuses
    it."""
    from hyperforget_jax import metrics
    from hyperforget_jax.errors import DataError

    splits, apply_fn = _favours_class_0(n_train=40, n_test=60, classes=3)
    keep = int(np.flatnonzero(splits.train.y == 1)[0])
    req = data.ForgetRequest(indices=tuple(i for i in range(40) if i != keep))
    fs = data.resolve_forget(splits.train, req)
    assert len(fs.retain) == 1
    out = evaluate_unlearning(apply_fn, _ONE, splits, fs, req, seed=0)
    assert out["mia_efficacy_svc"] is None
    assert out["not_applicable"]["mia_efficacy_svc"].startswith(
        "needs at least 2 retain (members) and test samples (non-members), got 1 and ")
    assert out["mia_loss_lr"] is not None
    with pytest.raises(DataError, match="test_conf has 1 samples but the attack needs at "
                                        "least 2"):
        metrics.mia_efficacy_svc([0.9, 0.8], [0.5], [0.7])


def test_gap_to_retrain_refuses_rows_in_percent():
    """Rows hold fractions and the gap is in points: rows in percent (a table's numbers) gave
    a gap 100× too large (625.0 for a 25-point FA gap), one row of each 8043.75, silently."""
    from hyperforget_jax.errors import ConfigError

    row = {"forget_acc": 0.9, "retain_acc": 0.95, "test_acc": 0.9, "mia_loss_lr": 0.5}
    pct = {k: 100 * v for k, v in row.items()}
    with pytest.raises(ConfigError, match="outside \\[0, 1\\].*divide percentages by 100"):
        gap_to_retrain(pct, dict(pct, forget_acc=65.0))
    with pytest.raises(ConfigError, match="retrain has .*outside"):
        gap_to_retrain(row, pct)
    with pytest.raises(ConfigError, match="'0.5', not a number"):
        gap_to_retrain(row, dict(row, mia_loss_lr="0.5"))
    assert gap_to_retrain(row, dict(row, forget_acc=0.65)) == pytest.approx(25 / 4)


def test_a_masked_class_leaves_the_loss_attack_not_applicable(digits_splits):
    """A model that masks the forgotten class (a −inf logit) has a loss of +inf on it: the
    loss attack refused the evaluation as a diverged model's ("contains NaN or inf values;
    the model diverged"). The loss attack is now not applicable, with the reason; the rest is
    evaluated."""
    import jax.numpy as jnp

    req = data.ForgetRequest(classes=(3,))
    fs = data.resolve_forget(digits_splits.train, req)
    w = jnp.asarray(np.random.default_rng(0).normal(size=(64, 10)), jnp.float32)

    def masked(p, x):
        return (x.reshape(len(x), -1) @ p).at[:, 3].set(-jnp.inf)

    out = evaluate_unlearning(masked, w, digits_splits, fs, req)
    n_f, n_t = len(fs.forget), int(np.sum(digits_splits.test.y == 3))
    assert out["mia_loss_lr"] is None and out["not_applicable"] == {"mia_loss_lr": (
        f"the loss is +inf (probability 0 on the true label, e.g. a -inf logit) for {n_f} of {n_f} "
        f"forget and {n_t} of {n_t} held-out samples")}
    assert out["forget_acc"] == 0.0 and 0 <= out["mia_entropy_lr"] <= 1
    assert "mia_loss_lr" not in gap_keys(out, dict(out, mia_loss_lr=0.5))


def test_a_loss_overflowing_to_inf_is_refused_not_marked_not_applicable(digits_splits):
    """Finite logits whose spread overflows float32 (±3e38: a diverged model) also give a loss
    of +inf, with a finite true-label logit: evaluated as a masked class's, the loss attack
    read "not applicable (... a -inf logit)" and the diverged model got accuracies and a gap.
    Refused, as a model with NaN or +inf logits is."""
    import jax.numpy as jnp

    from hyperforget_jax.errors import NonFiniteError

    req = data.ForgetRequest(classes=(3,))
    fs = data.resolve_forget(digits_splits.train, req)
    w = jnp.asarray(np.random.default_rng(0).normal(size=(64, 10)), jnp.float32)

    def overflowing(p, x):
        return jnp.clip(1e38 * (x.reshape(len(x), -1) @ p), -3e38, 3e38)

    with pytest.raises(NonFiniteError, match="diverged or its logits overflow"):
        evaluate_unlearning(overflowing, w, digits_splits, fs, req)


def test_gap_to_retrain_takes_numpy_and_jax_scalars():
    """The type check refused 0-d NumPy and JAX values (a row averaged over seeds with
    ``jnp.mean``), which the gap read as the numbers they are; a NumPy bool is still refused."""
    import jax.numpy as jnp

    from hyperforget_jax.errors import ConfigError

    row = {"forget_acc": 0.9, "retain_acc": 0.95, "test_acc": 0.9, "mia_loss_lr": 0.5}
    other = dict(row, forget_acc=0.65)
    for cast in (jnp.float32, np.asarray, np.float32):
        assert gap_to_retrain({k: cast(v) for k, v in row.items()}, other) == pytest.approx(
            25 / 4)
    with pytest.raises(ConfigError, match="True_?, not a number"):
        gap_to_retrain(row, dict(row, mia_loss_lr=np.bool_(True)))
