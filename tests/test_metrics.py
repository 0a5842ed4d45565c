"""Tests of hyperforget_jax.metrics: per-sample values against hand-computed numpy, batched
evaluation on a model whose accuracy is known exactly, and the named membership-inference attacks
on distributions where the right answer is known."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import CompileCounter
from hyperforget_jax import metrics
from hyperforget_jax.errors import ConfigError, DataError

LOGITS = np.array([[2.0, 1.0, 0.0],
                   [0.0, 0.0, 0.0],
                   [-1.0, 3.0, 0.5],
                   [10.0, -10.0, 0.0]], np.float32)
LABELS = np.array([0, 2, 0, 1], np.int32)


def _softmax_np(z):
    z = z.astype(np.float64)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


# ------------------------------------------------------------------ per-sample functions

def test_cross_entropy_matches_numpy():
    p = _softmax_np(LOGITS)
    expected = -np.log(p[np.arange(4), LABELS])
    got = np.asarray(jax.jit(metrics.cross_entropy)(LOGITS, LABELS))
    assert got.shape == (4,)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    # Uniform logits over 3 classes: exactly log 3.
    assert got[1] == pytest.approx(math.log(3), abs=1e-6)
    # A confidently wrong sample has a large but finite loss (log_softmax, not log(softmax)).
    assert np.isfinite(got[3]) and got[3] == pytest.approx(20.0, abs=1e-3)


def test_prediction_entropy_matches_numpy():
    p = _softmax_np(LOGITS)
    expected = -(p * np.log(p)).sum(axis=1)
    got = np.asarray(jax.jit(metrics.prediction_entropy)(LOGITS))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert got[1] == pytest.approx(math.log(3), abs=1e-6)  # maximal for uniform
    # A -inf logit (masked class) contributes 0, not NaN.
    masked = metrics.prediction_entropy(jnp.array([[0.0, 0.0, -jnp.inf]]))
    assert float(masked[0]) == pytest.approx(math.log(2), abs=1e-6)


def test_confidence_and_correct():
    p = _softmax_np(LOGITS)
    np.testing.assert_allclose(np.asarray(jax.jit(metrics.confidence)(LOGITS, LABELS)),
                               p[np.arange(4), LABELS], rtol=1e-5, atol=1e-7)
    got = np.asarray(jax.jit(metrics.correct)(LOGITS, LABELS))
    assert got.dtype == np.bool_
    # argmax per row: 0, 0 (tie -> first), 1, 0.
    np.testing.assert_array_equal(got, [True, False, False, False])


def test_labels_of_another_shape_are_refused_not_broadcast():
    """(N, 1) labels (Keras' CIFAR-10) broadcast against the (N,) argmax into an (N, N)
    comparison: ``correct(...).mean()`` was a silent, wrong accuracy."""
    for bad in (LABELS[:, None], jax.nn.one_hot(LABELS, 3).astype(jnp.int32)):
        for fn in (metrics.correct, metrics.cross_entropy, metrics.confidence):
            with pytest.raises(DataError, match="labels of shape"):
                jax.jit(fn)(LOGITS, bad)


# ------------------------------------------------------------------ evaluate

def _linear_problem():
    """A 3-class linear model whose predictions are known by construction.

    x is one-hot of the *predicted* class; logits = 5 * x, so the model predicts exactly the hot
    index. Labels agree with it on a chosen subset.
    """
    n = 23
    pred = np.arange(n) % 3                     # classes 0,1,2 with counts 8,8,7
    y = pred.copy()
    wrong = np.array([0, 4, 5, 10, 20])         # classes 0,1,2,1,2 -> y changed
    y[wrong] = (pred[wrong] + 1) % 3
    x = np.eye(3, dtype=np.float32)[pred]
    params = {"w": 5.0 * jnp.eye(3)}
    return x, y.astype(np.int32), pred, params


def test_evaluate_known_accuracy_per_class_and_single_trace():
    x, y, pred, params = _linear_problem()
    traces = []

    def apply_fn(p, xb):
        traces.append(xb.shape)  # Python side effect: runs only while tracing
        return xb @ p["w"]

    res = metrics.evaluate(apply_fn, params, x, y, num_classes=3, batch_size=5)  # 23 = 4*5 + 3
    corr = pred == y
    assert res["n"] == 23
    assert res["accuracy"] == pytest.approx(18 / 23)
    expected_pc = [corr[y == c].mean() for c in range(3)]
    assert res["per_class_accuracy"] == pytest.approx(expected_pc)
    logits = x.astype(np.float64) @ (5.0 * np.eye(3))
    ce = -np.log(_softmax_np(logits)[np.arange(23), y])
    assert res["loss"] == pytest.approx(ce.mean(), rel=1e-5)
    assert res["per_class_loss"] == pytest.approx([ce[y == c].mean() for c in range(3)], rel=1e-5)
    assert all(type(v) is float for v in [res["accuracy"], res["loss"]]
               + res["per_class_accuracy"] + res["per_class_loss"])
    # The ragged tail was padded: exactly one trace at the fixed batch shape, besides two
    # one-time checks: that the parameters run through the model (an abstract trace at that
    # shape) and, on up to 4 distinct rows whole and one by one, that its rows are
    # independent.
    distinct = min(4, len(np.unique(x, axis=0)))
    assert [s for s in traces if s[0] not in (distinct, 1)] == [(5, 3), (5, 3)]
    # A second evaluation of the same function and shapes reuses the compiled executable.
    n = len(traces)
    res2 = metrics.evaluate(apply_fn, params, x, y, num_classes=3, batch_size=5)
    assert res2 == res and len(traces) == n


def test_evaluate_absent_class_is_nan_and_batch_larger_than_n():
    x, y, _, params = _linear_problem()
    keep = y != 2
    res = metrics.evaluate(lambda p, xb: jnp.pad(xb @ p["w"], ((0, 0), (0, 1))), params,
                           x[keep], y[keep], num_classes=4, batch_size=1024)
    assert res["n"] == int(keep.sum())
    assert math.isnan(res["per_class_accuracy"][2]) and math.isnan(res["per_class_loss"][3])
    assert not math.isnan(res["per_class_accuracy"][0])


def test_per_sample_outputs_shapes_and_values():
    x, y, pred, params = _linear_problem()
    out = metrics.per_sample_outputs(lambda p, xb: xb @ p["w"], params, x, y, batch_size=7)
    assert set(out) == {"loss", "entropy", "confidence", "correct", "logits"}
    assert all(isinstance(v, np.ndarray) and len(v) == 23 for v in out.values())
    assert out["logits"].shape == (23, 3)
    np.testing.assert_array_equal(out["correct"], pred == y)
    np.testing.assert_allclose(out["confidence"], np.exp(-out["loss"]), rtol=1e-6)
    np.testing.assert_allclose(out["logits"], 5.0 * x)


def test_a_model_with_batch_statistics_is_evaluated_on_the_whole_set():
    """Batches of 7 (and a last one padded with copies of one sample) gave a model whose rows
    depend on their batch other outputs than its whole set; a per-row model is unchanged."""
    x, y, _, params = _linear_problem()
    centred = lambda p, xb: (xb - xb.mean(0)) @ p["w"]         # batch statistics
    # The same with class 2 masked out: its -inf made the independence check's tolerance inf.
    masked = lambda p, xb: centred(p, xb) + jnp.array([0.0, 0.0, -jnp.inf])
    for fn in (centred, masked):
        whole = metrics.per_sample_outputs(fn, params, x, y, batch_size=len(x))
        got = metrics.per_sample_outputs(fn, params, x, y, batch_size=7)
        np.testing.assert_allclose(got["logits"], whole["logits"], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(metrics.per_sample_outputs(lambda p, xb: xb @ p["w"], params,
                                                          x, y, batch_size=7)["logits"], 5.0 * x)


def test_a_bound_method_reuses_its_compiled_evaluation():
    """``metrics.evaluate(module.apply, ...)``: a bound method is a new object at every access,
    so each call wrapped it afresh and compiled three programs again (the evaluation and the
    batch-statistics check); its adapter is kept on the module, per method name."""
    import flax.linen as nn

    from hyperforget_jax.models import as_model

    net = nn.Dense(3)
    x, y, _, _ = _linear_problem()
    variables = net.init(jax.random.key(0), x[:1])
    first = metrics.evaluate(net.apply, variables, x, y, num_classes=3, batch_size=5)
    with CompileCounter() as c:
        again = metrics.evaluate(net.apply, variables, x, y, num_classes=3, batch_size=5)
    assert c.n == 0 and again == first
    assert as_model(net.apply) is as_model(net.apply)
    assert as_model(net.init) is not as_model(net.apply)     # per method


def test_loaded_and_fresh_parameters_share_one_compiled_evaluation():
    """Parameters restored from disk are committed to their device, fresh ones (fit, Retrain)
    are not: the CLI's Retrain beside a loaded original compiled each evaluation twice."""
    x, y, _, params = _linear_problem()
    fresh = {"w": jnp.asarray(params["w"]) * 1.0}
    apply_fn = lambda p, xb: xb @ p["w"]
    first = metrics.per_sample_outputs(apply_fn, fresh, x, y, batch_size=7)
    with CompileCounter() as c:
        again = metrics.per_sample_outputs(apply_fn, jax.device_put(fresh, jax.devices()[0]),
                                           x, y, batch_size=7)
    assert c.n == 0
    np.testing.assert_array_equal(first["logits"], again["logits"])


def test_low_precision_logits_are_scored_in_float32():
    # A model with bfloat16 compute (float32 params, which the README allows) returns bf16
    # logits; the loss taken in bf16 rounded log(1 + 2e^-10) ≈ 9.1e-5 to exactly 0 (and most
    # members' losses with it), biasing mean losses and tying the attacks' features.
    x = np.array([[10.0, 0.0, 0.0], [0.0, 10.0, 0.0]], np.float32)
    y = np.array([0, 1], np.int32)
    out = metrics.per_sample_outputs(lambda p, xb: xb.astype(jnp.bfloat16), None, x, y)
    want = math.log1p(2 * math.exp(-10.0))
    np.testing.assert_allclose(out["loss"], [want, want], rtol=1e-3)
    assert out["loss"].dtype == np.float32 and out["logits"].dtype == np.float32
    assert metrics.evaluate(lambda p, xb: xb.astype(jnp.bfloat16), None, x, y, 3)["loss"] > 0


@pytest.mark.parametrize("x, y, match", [
    (np.zeros((0, 3), np.float32), np.zeros((0,), np.int32), "empty"),
    (np.zeros((4, 3), np.float32), np.zeros((3,), np.int32), "4 samples but y has 3"),
    (np.array([[np.nan, 0, 0]] * 2, np.float32), np.zeros((2,), np.int32), "NaN"),
    (np.zeros((2, 3), np.float32), np.zeros((2,), np.float32), "integers"),
    (np.zeros((2, 3), np.float32), np.array([0, 3], np.int32), "out of range"),
    (np.zeros((2, 3), np.float32), np.array([0, -1], np.int32), ">= 0"),
    # uint8 images reached the model unscaled (0..255): a silently wrong accuracy.
    (np.full((2, 3), 255, np.uint8), np.zeros((2,), np.int32), "dtype uint8"),
])
def test_evaluate_bad_inputs(x, y, match):
    apply_fn = lambda p, xb: xb @ p["w"]
    params = {"w": jnp.eye(3)}
    with pytest.raises(DataError, match=match):
        metrics.evaluate(apply_fn, params, x, y, num_classes=3)
    with pytest.raises(DataError):
        metrics.per_sample_outputs(apply_fn, params, x, y)


def test_evaluate_takes_every_floating_image_dtype():
    # The uint8 refusal named bfloat16 alone: float8 images, which from_arrays and
    # Architecture.check_inputs take, were refused as "not floating-point".
    import ml_dtypes

    x, y, _, params = _linear_problem()
    apply_fn = lambda p, xb: xb.astype(jnp.float32) @ p["w"]
    want = metrics.evaluate(apply_fn, params, x, y, num_classes=3)["accuracy"]
    for dtype in (jnp.bfloat16, ml_dtypes.float8_e4m3fn, np.float16):
        got = metrics.evaluate(apply_fn, params, x.astype(dtype), y, num_classes=3)["accuracy"]
        assert got == want, dtype


def test_evaluate_bad_config():
    x, y, _, params = _linear_problem()
    apply_fn = lambda p, xb: xb @ p["w"]
    with pytest.raises(ConfigError, match="batch_size"):
        metrics.evaluate(apply_fn, params, x, y, num_classes=3, batch_size=0)
    with pytest.raises(ConfigError, match="outputs 3 logits"):
        metrics.evaluate(apply_fn, params, x, y, num_classes=5)
    with pytest.raises(ConfigError, match="num_classes"):
        metrics.evaluate(apply_fn, params, x, y, num_classes=0)


# ------------------------------------------------------------------ LR attacks

@pytest.mark.parametrize("attack", [metrics.mia_loss_lr, metrics.mia_entropy_lr])
def test_lr_attack_identical_distributions_is_chance(attack):
    rng = np.random.default_rng(1)
    a = rng.normal(1.0, 0.5, 500)
    b = rng.normal(1.0, 0.5, 500)
    assert attack(a, b) == pytest.approx(0.5, abs=0.06)


def test_mia_loss_lr_perfectly_separated():
    rng = np.random.default_rng(2)
    members = 0.01 + 0.005 * rng.random(300)        # forget set, still memorised
    nonmembers = 3.0 + 0.5 * rng.random(300)        # held-out test samples
    assert metrics.mia_loss_lr(members, nonmembers) >= 0.99


def test_mia_loss_lr_equalises_unequal_sizes():
    # Without equalisation, always answering "non-member" would score 1000/1100 ≈ 0.91.
    rng = np.random.default_rng(3)
    members = rng.normal(1.0, 0.5, 100)
    nonmembers = rng.normal(1.0, 0.5, 1000)
    assert metrics.mia_loss_lr(members, nonmembers) == pytest.approx(0.5, abs=0.1)
    assert metrics.mia_loss_lr(nonmembers, members) == pytest.approx(0.5, abs=0.1)
    # Separated and unequal still gives a near-perfect attack.
    assert metrics.mia_loss_lr(members * 0.01, nonmembers + 5.0) >= 0.99


def test_lr_attack_deterministic_given_seed_and_small_sets_work():
    rng = np.random.default_rng(4)
    a, b = rng.normal(0, 1, 200), rng.normal(0.3, 1, 120)
    assert metrics.mia_loss_lr(a, b, seed=7) == metrics.mia_loss_lr(a, b, seed=7)
    assert metrics.mia_entropy_lr(a, b, seed=7) == metrics.mia_entropy_lr(a, b, seed=7)
    seeds = {metrics.mia_loss_lr(a, b, seed=s) for s in range(4)}
    assert len(seeds) > 1  # the seed actually changes the subsample / splits
    # A tiny forget set (e.g. one class of a small dataset) still splits.
    score = metrics.mia_loss_lr([0.1, 0.2, 0.15], [2.0, 2.5, 3.0, 2.2], n_splits=3)
    assert 0.0 <= score <= 1.0


@pytest.mark.parametrize("members, nonmembers, match", [
    ([], [1.0, 2.0], "at least 2"),
    ([1.0], [1.0, 2.0], "at least 2"),
    ([1.0, np.nan, 2.0], [1.0, 2.0], "NaN"),
    ([1.0, np.inf, 2.0], [1.0, 2.0], "NaN or inf"),
    (np.ones((3, 2)), [1.0, 2.0], "1-D"),
])
def test_lr_attack_bad_inputs(members, nonmembers, match):
    with pytest.raises(DataError, match=match):
        metrics.mia_loss_lr(members, nonmembers)
    with pytest.raises(DataError, match=match):
        metrics.mia_entropy_lr(nonmembers, members)


def test_lr_attack_bad_n_splits():
    with pytest.raises(ConfigError, match="n_splits"):
        metrics.mia_loss_lr([1.0, 2.0, 3.0], [1.0, 2.0, 3.0], n_splits=0)


@pytest.mark.parametrize("seed", [1.5, -1, 2**40, True, jax.random.key(0)])
def test_every_attack_refuses_a_seed_that_is_not_a_seed(seed):
    # Were a TypeError (1.5, a key), numpy's / sklearn's bare ValueError, or seed 1 (True).
    a, b = [0.1, 0.2, 0.3], [0.5, 0.6, 0.7, 0.8]
    for attack in (lambda: metrics.mia_loss_lr(a, b, seed=seed),
                   lambda: metrics.mia_entropy_lr(a, b, seed=seed),
                   lambda: metrics.mia_efficacy_svc(a, b, a, seed=seed)):
        with pytest.raises(ConfigError, match="attack seed must be"):
            attack()


# ------------------------------------------------------------------ SVC MIA-Efficacy

def _conf_distributions(rng, n_retain=1000, n_test=400):
    retain = 1.0 - np.abs(rng.normal(0.0, 0.01, n_retain))   # memorised: confidence ≈ 1
    test = rng.uniform(0.05, 0.7, n_test)                     # held out: spread and lower
    return retain, test


def test_mia_efficacy_svc_forget_like_test_is_judged_nonmember():
    rng = np.random.default_rng(5)
    retain, test = _conf_distributions(rng)
    forget_like_test = rng.uniform(0.05, 0.7, 200)
    assert metrics.mia_efficacy_svc(retain, test, forget_like_test) > 0.8


def test_mia_efficacy_svc_forget_like_retain_is_judged_member():
    rng = np.random.default_rng(6)
    retain, test = _conf_distributions(rng)
    forget_like_retain = 1.0 - np.abs(rng.normal(0.0, 0.01, 200))
    assert metrics.mia_efficacy_svc(retain, test, forget_like_retain) < 0.2


def test_mia_efficacy_svc_deterministic_and_bad_inputs():
    rng = np.random.default_rng(7)
    retain, test = _conf_distributions(rng, 300, 100)
    forget = rng.uniform(0.0, 1.0, 50)
    v = metrics.mia_efficacy_svc(retain, test, forget, seed=3)
    assert v == metrics.mia_efficacy_svc(retain, test, forget, seed=3)
    assert 0.0 <= v <= 1.0
    with pytest.raises(DataError, match="forget_conf"):
        metrics.mia_efficacy_svc(retain, test, [])
    with pytest.raises(DataError, match="test_conf.*NaN"):
        metrics.mia_efficacy_svc(retain, np.append(test, np.nan), forget)


def test_attacks_leave_the_global_numpy_random_state_alone():
    """A researcher's own ``np.random`` stream is not moved by an evaluation: sklearn's SVC drew
    its libsvm seed from the global state (one draw per ``mia_efficacy_svc``, so per
    ``evaluate_unlearning``). The value does not depend on that seed."""
    rng = np.random.default_rng(7)
    retain, test = _conf_distributions(rng, 300, 100)
    forget = rng.uniform(0.0, 1.0, 50)
    np.random.seed(123)
    state = np.random.get_state()
    v = metrics.mia_efficacy_svc(retain, test, forget)
    metrics.mia_loss_lr(retain, test, n_splits=2)
    after = np.random.get_state()
    assert after[2] == state[2] and np.array_equal(after[1], state[1])
    np.random.seed(5)     # another global state: the same value
    assert metrics.mia_efficacy_svc(retain, test, forget) == v


# ------------------------------------------------------------------ aggregation

def test_avg_gap_constructed_case():
    m = {"forget_acc": 90.0, "retain_acc": 99.0, "test_acc": 85.0, "mia_loss_lr": 60.0,
         "extra": 1.0}
    r = {"forget_acc": 85.0, "retain_acc": 100.0, "test_acc": 86.0, "mia_loss_lr": 50.0}
    assert metrics.avg_gap(m, r) == pytest.approx((5 + 1 + 1 + 10) / 4)
    assert metrics.avg_gap(m, r, keys=("retain_acc",)) == pytest.approx(1.0)
    assert metrics.avg_gap(r, r) == 0.0


def test_avg_gap_errors():
    r = {"forget_acc": 1.0, "retain_acc": 1.0, "test_acc": 1.0, "mia_loss_lr": 0.5}
    with pytest.raises(ConfigError, match="'mia_loss_lr' missing from metrics"):
        metrics.avg_gap({k: v for k, v in r.items() if k != "mia_loss_lr"}, r)
    with pytest.raises(ConfigError, match="'extra' missing from retrain"):
        metrics.avg_gap({**r, "extra": 1.0}, r, keys=("extra",))
    with pytest.raises(ConfigError):
        metrics.avg_gap(r, r, keys=())
    with pytest.raises(DataError, match="not finite"):
        metrics.avg_gap({**r, "test_acc": float("nan")}, r)


@pytest.mark.parametrize("value", [None, "0.5", True, np.bool_(True)])
def test_avg_gap_refuses_values_that_are_not_numbers(value):
    """None (an attack not applicable) raised float()'s TypeError; "0.5", True and NumPy's
    True (not a bool subclass) were read as the numbers 0.5 and 1.0."""
    r = {"forget_acc": 1.0, "retain_acc": 1.0, "test_acc": 1.0, "mia_loss_lr": 0.5}
    with pytest.raises(ConfigError, match=f"retrain\\['mia_loss_lr'\\] is {value!r}, not a "):
        metrics.avg_gap(r, {**r, "mia_loss_lr": value})


def test_mean_std_and_format():
    mean, std = metrics.mean_std([1.0, 2.0, 3.0])
    assert mean == pytest.approx(2.0) and std == pytest.approx(1.0)  # ddof=1
    assert metrics.mean_std([4.5]) == (4.5, 0.0)
    assert type(mean) is float and type(std) is float
    assert metrics.format_mean_std([0.1234, 0.1334, 0.1134], scale=100) == "12.34 ± 1.00"
    assert metrics.format_mean_std([1.0, 2.0], digits=1) == "1.5 ± 0.7"
    with pytest.raises(DataError):
        metrics.mean_std([])
    with pytest.raises(DataError):
        metrics.format_mean_std([])


@pytest.mark.parametrize("n", [1, 17, 64, 300, 1000])
def test_chunked_apply_pads_small_inputs_to_a_power_of_two_only(n):
    """Outputs equal the unchunked function; every call sees the same row count per input
    size: ``chunk`` rows, or the power of two ≥ n (at least 16) when smaller."""
    seen = []

    def fn(params, x):
        seen.append(x.shape[0])
        return x * params, x.sum(1)

    x = np.random.default_rng(n).random((n, 3)).astype(np.float32)
    a, b = metrics.chunked_apply(fn, 2.0, x, chunk=256)
    np.testing.assert_allclose(a, x * 2.0)
    np.testing.assert_allclose(b, x.sum(1), rtol=1e-6)
    want = min(256, max(16, 1 << (n - 1).bit_length()))
    assert set(seen) == {want} and len(seen) == -(-n // want)


def test_report_fmt_scales_numpy_scalars():
    # A "RA %" cell of an np.float32 accuracy was printed unscaled ("0.953"), and np.float32
    # NaN as "nan" instead of "–": only Python int/float were treated as numbers.
    from hyperforget_jax import report

    for v in (0.953, np.float64(0.953), np.float32(0.953)):
        assert report.fmt(v, 2, 100.0) == "95.30"
    assert report.fmt(np.int64(1), 1, 100.0) == "100.0"
    assert report.fmt(np.float32("nan")) == report.fmt(float("nan")) == report.fmt(None) == "–"
    assert report.fmt("n/a") == "n/a"
    # 0-d arrays, JAX's too (jnp.mean(acc)): written unscaled ("0.953") before.
    for v in (jnp.float32(0.953), jnp.mean(jnp.array([0.953, 0.953])), np.array(0.953)):
        assert report.fmt(v, 2, 100.0) == "95.30"
    assert report.fmt(jnp.float32(jnp.nan)) == "–" and report.fmt(jnp.array(True)) == "True"
    assert report.fmt(np.array([0.5, 0.5])) == "[0.5 0.5]"          # not a number: as str


def test_lr_attack_equals_the_starting_kits_simple_mia():
    """The NeurIPS 2023 starting kit's ``simple_mia`` written out (equal sizes, so nothing is
    subsampled): one feature, members 1 / non-members 0, ``LogisticRegression()``,
    ``StratifiedShuffleSplit(n_splits, random_state=0)`` with its default test share 0.1,
    mean accuracy (3 splits instead of the kit's 10, for time). 150 a side: a test share of
    0.1 is 30, even, where the library keeps the kit's size (an odd one it rounds up)."""
    from sklearn import linear_model, model_selection

    rng = np.random.default_rng(8)
    members, nonmembers = rng.gamma(1.0, 0.3, 150), rng.gamma(1.5, 0.5, 150)
    x = np.r_[members, nonmembers][:, None]
    y = np.r_[np.ones(150), np.zeros(150)]
    cv = model_selection.StratifiedShuffleSplit(n_splits=3, random_state=0)
    want = model_selection.cross_val_score(linear_model.LogisticRegression(), x, y, cv=cv,
                                           scoring="accuracy").mean()
    assert 0.55 < want < 0.95
    assert metrics.mia_loss_lr(members, nonmembers, n_splits=3) == pytest.approx(want, abs=1e-12)
    assert metrics.mia_entropy_lr(members, nonmembers, n_splits=3) == pytest.approx(want,
                                                                                   abs=1e-12)


@pytest.mark.parametrize("n", [15, 25, 105])
@pytest.mark.parametrize("attack", [metrics.mia_loss_lr, metrics.mia_entropy_lr])
def test_lr_attack_on_identical_sets_reads_chance_at_every_size(attack, n):
    # An odd test size (3 of 30, 21 of 210) left every split unbalanced: a classifier that
    # learns nothing answers its training majority, the test minority (0.33 at 15 each).
    assert attack(np.ones(n), np.ones(n)) == pytest.approx(0.5)


@pytest.mark.parametrize("fn", [metrics.cross_entropy, metrics.correct, metrics.confidence])
def test_per_sample_metrics_refuse_float_labels(fn):
    logits = jnp.eye(3)
    with pytest.raises(DataError, match="labels of dtype float32; pass integer class ids"):
        fn(logits, jnp.array([2.7, 0.2, 1.0]))
    assert fn(logits, np.arange(3)).shape == (3,)         # int64 ids are fine


def test_parameters_of_another_model_are_refused_by_name():
    """metrics.evaluate / per_sample_outputs never checked the parameters: an extra leaf was
    taken, a transposed kernel was Flax's ScopeParamShapeError (not a ValueError), and an
    apply_fn's own TypeError came out bare (evaluate_unlearning's too)."""
    from hyperforget_jax import models
    from hyperforget_jax.errors import ArchitectureError

    mlp = models.make_architecture("mlp", (8, 8, 1), 10)
    p = mlp.init(jax.random.key(0))
    x = np.random.default_rng(0).random((6, 8, 8, 1)).astype(np.float32)
    y = np.arange(6) % 10
    transposed = {**p, "Dense_0": {**p["Dense_0"], "kernel": p["Dense_0"]["kernel"].T}}
    for bad, words in ((transposed, r"\['Dense_0'\]\['kernel'\] has shape \(256, 64\)"),
                       ({**p, "Extra": {"kernel": np.ones(3, np.float32)}}, "unexpected")):
        for fn in (metrics.evaluate, metrics.per_sample_outputs):
            kw = {"num_classes": 10} if fn is metrics.evaluate else {}
            with pytest.raises(ArchitectureError, match=words):
                fn(mlp, bad, x, y, **kw)

    def apply_fn(q, xb):
        return xb.reshape(len(xb), -1) @ q["w"] + q["b"]

    bad = {"w": np.ones((10, 64), np.float32), "b": np.zeros(10, np.float32)}
    with pytest.raises(ArchitectureError, match="evaluate: the parameters do not run through "
                                                "model 'apply_fn' \\(TypeError"):
        metrics.evaluate(apply_fn, bad, x, y, 10)
    # The review: the evaluators compare paths and shapes only (a bfloat16 copy of the
    # parameters evaluates, as it did), and images of another shape are named as such (they
    # were "the parameters do not run through model 'mlp'").
    half = jax.tree.map(lambda a: a.astype(jnp.bfloat16), p)
    assert metrics.evaluate(mlp, half, x, y, 10)["n"] == 6
    with pytest.raises(DataError, match=r"has images of shape \(4, 4, 4\) but the mlp model "
                                        r"takes \(8, 8, 1\)"):
        metrics.evaluate(mlp, p, x.reshape(6, 4, 4, 4), y, 10)


def test_seeds_that_are_all_nan_are_not_read_as_not_applicable():
    """Every seed NaN printed "–", the mark of a metric that does not apply (all None)."""
    nan = float("nan")
    assert metrics.format_over_seeds([None, None]) == "–"
    assert metrics.format_over_seeds([nan, nan, None]) == "NaN [2 of 3 seeds]"
    assert metrics.format_over_seeds([0.5, nan]) == "0.50 ± – [1 of 2 seeds]"
