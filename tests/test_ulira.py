"""U-LiRA on constructed confidences (separable → high, identical → 0.5) and a tiny end-to-end
run on sklearn digits."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import assert_trees_close
from hyperforget_jax import data, models, train, ulira
from hyperforget_jax.errors import ConfigError, DataError, NonFiniteError


def test_logit_confidence_matches_definition():
    logits = jnp.array([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0]])
    y = jnp.array([0, 2])
    p = jax.nn.softmax(logits)[jnp.arange(2), y]
    np.testing.assert_allclose(ulira.logit_confidence(logits, y), np.log(p / (1 - p)),
                               rtol=1e-5)
    big = jnp.array([[60.0, 0.0, 0.0]])     # p ≈ 1: still finite
    assert np.isfinite(ulira.logit_confidence(big, jnp.array([0])))[0]


def _shadows(rng, S, n, mu_u, mu_r, sd=1.0):
    targeted = rng.random((S, n)) < 0.5
    targeted[0] = True
    per_u = rng.normal(mu_u, 0.5, n)
    per_r = rng.normal(mu_r, 0.5, n)
    return (per_u + rng.normal(0, sd, (S, n)), per_r + rng.normal(0, sd, (S, n)), targeted,
            per_u, per_r)


def test_logit_confidence_of_bf16_logits_is_computed_in_float32():
    logits = jnp.asarray([[10.0, 0.0, 0.0]], jnp.bfloat16)
    phi = ulira.logit_confidence(logits, jnp.asarray([1]))
    # z_y − logsumexp(others) = 0 − (10 + log(1 + e^-10)); bf16 rounds the tail away.
    assert phi.dtype == jnp.float32
    np.testing.assert_allclose(float(phi[0]), -(10.0 + math.log1p(math.exp(-10.0))), rtol=1e-6)


def test_separable_is_detected():
    rng = np.random.default_rng(0)
    phi_u, phi_r, tgt, per_u, per_r = _shadows(rng, 16, 300, 8.0, 0.0)
    out = ulira.ulira_test(phi_u, phi_r, tgt, per_u + rng.normal(0, 1, 300),
                           per_r + rng.normal(0, 1, 300))
    assert out["accuracy"] > 0.95 and out["auc"] > 0.98


def test_identical_is_chance():
    rng = np.random.default_rng(1)
    phi_u, phi_r, tgt, per_u, _ = _shadows(rng, 16, 2000, 3.0, 3.0)
    # retrained and unlearned targets drawn from the same distribution
    out = ulira.ulira_test(phi_u, phi_r, tgt, per_u + rng.normal(0, 1, 2000),
                           per_u + rng.normal(0, 1, 2000))
    assert abs(out["accuracy"] - 0.5) < 0.04 and abs(out["auc"] - 0.5) < 0.04


def test_a_method_identical_to_retrain_reads_exactly_chance():
    """Λ = 0 (identical shadows and targets: e.g. Retrain audited as the method) is a
    "retrained" decision, so the ideal model reads the ideal 0.5, not 0 (a tie on the
    retrained target counted as wrong) or 1."""
    rng = np.random.default_rng(0)
    phi = rng.normal(0, 1, (6, 10))
    tgt = rng.random((6, 10)) < 0.5
    tgt[:2] = True                  # every example targeted at least twice
    target = rng.normal(0, 1, 10)
    out = ulira.ulira_test(phi, phi.copy(), tgt, target, target.copy())
    assert out["accuracy"] == 0.5 and out["auc"] == 0.5


def test_untargeted_examples_are_skipped_and_none_fails():
    tgt = np.zeros((4, 5), bool)
    tgt[:, :2] = True
    z = np.zeros((4, 5))
    out = ulira.ulira_test(z + 1, z, tgt, np.ones(5), np.zeros(5))
    assert out["n_examples"] == 2 and out["accuracy"] == 1.0
    with pytest.raises(ConfigError, match="targeted"):
        ulira.ulira_test(z, z, np.zeros((4, 5), bool), np.zeros(5), np.zeros(5))
    with pytest.raises(ConfigError, match="num_shadows must be >= 3"):
        ulira.ULiRAConfig(num_shadows=1)


def test_non_finite_confidences_name_the_model():
    """A diverged shadow or target ended in scikit-learn's bare 'Input contains NaN'; NaN of an
    untargeted entry (never used) is not an error."""
    tgt = np.zeros((4, 5), bool)
    tgt[:, :2] = True
    z = np.zeros((4, 5))
    bad = z.copy()
    bad[2, 1] = np.nan
    with pytest.raises(NonFiniteError, match="unlearned shadow 2"):
        ulira.ulira_test(bad, z, tgt, np.ones(5), np.zeros(5))
    with pytest.raises(NonFiniteError, match="retrained shadow 2"):
        ulira.ulira_test(z, bad, tgt, np.ones(5), np.zeros(5))
    with pytest.raises(NonFiniteError, match="retrained target"):
        ulira.ulira_test(z, z, tgt, np.ones(5), np.array([0, np.inf, 0, 0, 0]))
    untargeted = z.copy()
    untargeted[:, 4] = np.nan
    assert ulira.ulira_test(untargeted, z, tgt, np.ones(5), np.zeros(5))["n_examples"] == 2
    # Leave one shadow out: shadow 3's NaN was named "shadow 2" (an index into the others),
    # shadow 0's blamed "the target model", and an untargeted NaN (never scored) was refused.
    rng = np.random.default_rng(0)
    phi = rng.normal(size=(4, 5))
    for row, name in ((3, "unlearned shadow 3"), (0, "unlearned shadow 0")):
        nan = phi.copy()
        nan[row, 1] = np.nan
        with pytest.raises(NonFiniteError, match=name):
            ulira.ulira_loso_test(nan, phi, tgt)
    loose = phi.copy()
    loose[2, 4] = np.nan
    assert ulira.ulira_loso_test(loose, phi, tgt) == ulira.ulira_loso_test(phi, phi, tgt)
    # Shapes: a 1-D row was read as 5 shadows of one example; other widths were IndexErrors.
    for args in ((phi[0], phi[0], tgt[0]), (phi, phi[:, :3], tgt), (phi, phi, tgt[:, :3])):
        with pytest.raises(DataError, match=r"ulira_loso_test takes \(S, n\) shadow"):
            ulira.ulira_loso_test(*args)


def test_ulira_refuses_traced_parameters():
    """Called inside a caller's jit, ulira died in JAX's TracerArrayConversionError (its test
    is NumPy on the host): refused by name, as the evaluators refuse traced parameters."""
    rng = np.random.default_rng(0)
    ds = data.from_arrays(rng.random((24, 3, 4, 1), np.float32), np.arange(24) % 3, 3, "t")
    split = data.resolve_forget(ds, data.ForgetRequest(classes=(1,)))
    arch = models.make_architecture("gpt_mlp", (3, 4, 1), 3)
    p = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), arch.param_shapes())
    stack = jax.tree.map(lambda a: jnp.stack([a, a]), p)
    sh = ulira.Shadows(stack, stack, np.stack([split.forget_idx[:4]] * 2),
                       np.stack([split.retain_idx[:8]] * 2))
    with pytest.raises(ConfigError, match="ulira runs its own .* inside jax.jit"):
        jax.jit(lambda q: ulira.ulira(arch, sh, stack, ds, split, q, p)["auc"])(p)


def test_no_variance_without_an_example_targeted_twice(digits_splits, monkeypatch):
    """Every example targeted by one shadow: the pooled σ had no degree of freedom and was the
    1e-3 floor, and U-LiRA reported a nearest-mean guess (accuracy 1.0 here). Refused, by
    train_shadows before it trains (a 2-example forget set whose 2 shadows, split seed 0,
    target different examples), and arrays of mismatched shapes are named."""
    tgt = np.eye(2, 4, dtype=bool)
    z = np.zeros((2, 4))
    with pytest.raises(ConfigError, match="targeted by one shadow only"):
        ulira.ulira_test(z + 1, z, tgt, np.ones(4), np.zeros(4))
    monkeypatch.setattr(ulira, "_fit_fleet_on_subsets",
                        lambda *a: pytest.fail("trained shadows for a test that cannot run"))
    split = data.resolve_forget(digits_splits.train, data.ForgetRequest(indices=(0, 1)))
    with pytest.raises(ConfigError, match="targeted by one shadow only"):
        ulira.train_shadows("mlp", digits_splits.train, split, train.TrainConfig(),
                            ulira.ULiRAConfig(num_shadows=3, seed=0))
    with pytest.raises(DataError, match="one column per forget example"):   # was IndexError
        ulira.ulira_test(z, z, tgt, np.ones(5), np.zeros(5))


@pytest.fixture(scope="module")
def digits_shadows(digits_splits):
    """4 shadows on sklearn digits (a random request), for the end-to-end and sweep tests."""
    arch = models.make_architecture("gpt_mlp", digits_splits.train.x.shape[1:])
    cfg = train.TrainConfig(arch="gpt_mlp", epochs=4)
    split = data.resolve_forget(digits_splits.train, data.ForgetRequest(fraction=0.1))
    sh = ulira.train_shadows(arch, digits_splits.train, split, cfg,
                             ulira.ULiRAConfig(num_shadows=4))
    return arch, cfg, split, sh


def test_shadows_of_another_training_set_or_request_are_refused(digits_splits,
                                                                 digits_shadows):
    """Shadows were matched to the scored request by index alone: those of split seed 0 scored
    a request on split seed 1's training set (the same indices, other images), and class-3
    shadows scored a request for classes 3 and 5 on its class-3 half, without a word."""
    from hyperforget_jax.errors import ForgetRequestError

    arch, cfg, split, sh = digits_shadows
    tr = digits_splits.train
    assert np.array_equal(sh.forget_idx, split.forget_idx)
    other_tr = data.make_splits(data.load_digits(), seed=1).train
    assert len(other_tr) == len(tr)
    other_split = data.resolve_forget(other_tr, data.ForgetRequest(fraction=0.1))
    assert np.array_equal(other_split.forget_idx, split.forget_idx)   # indices alone agree
    one = jax.tree.map(lambda v: v[0], sh.in_params)
    with pytest.raises(DataError, match="ulira: the shadows were trained on another training"):
        ulira.ulira(arch, sh, sh.in_params, other_tr, other_split, one, one)
    with pytest.raises(DataError, match="unlearn_shadows: the shadows were trained on another"):
        ulira.unlearn_shadows(sh, lambda p, sp, s: p, other_tr)
    another = data.resolve_forget(tr, data.ForgetRequest(fraction=0.1, seed=1))
    with pytest.raises(ForgetRequestError, match="trained for another request"):
        ulira.ulira(arch, sh, sh.in_params, tr, another, one, one)
    # The split of another training set given with the shadows' own: its rows are not tr's.
    with pytest.raises(ForgetRequestError, match="not splits.train's rows"):
        ulira.ulira(arch, sh, sh.in_params, tr, other_split, one, one)
    # Parameters of another architecture failed in Flax (not a ValueError).
    from hyperforget_jax.errors import ArchitectureError

    mlp = models.make_architecture("mlp", tr.x.shape[1:]).init(jax.random.key(0))
    with pytest.raises(ArchitectureError):
        ulira.ulira(arch, sh, sh.in_params, tr, split, mlp, one)
    # A split naming a forget index twice: every shadow trained on it twice, the test counted
    # it twice (unlearn refuses such a split).
    twice = np.r_[split.forget_idx, split.forget_idx[:2]]
    dup = data.ForgetSplit(tr.subset(twice), split.retain, twice, split.retain_idx)
    for call in (lambda: ulira.train_shadows(arch, tr, dup, cfg),
                 lambda: ulira.ulira(arch, sh, sh.in_params, tr, dup, one, one)):
        with pytest.raises(ForgetRequestError, match="split.forget_idx repeats training index"):
            call()


def test_end_to_end_on_digits(digits_splits, digits_shadows):
    arch, cfg, split, sh = digits_shadows
    tr = digits_splits.train
    assert sh.forget_sets.shape == (4, len(split.forget) // 2)
    assert not np.isin(sh.forget_sets, sh.retain_sets).any()
    # the vmapped shadow fleet is fit() on each member's subset (member 1, seed 1000·0 + 2)
    sub = np.concatenate([sh.forget_sets[1], sh.retain_sets[1]])
    one = train.fit(arch, tr.subset(sub), train.TrainConfig(arch="gpt_mlp", epochs=4,
                                                            seed=2))[0].params
    for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(sh.in_params)):
        np.testing.assert_allclose(np.asarray(b)[1], np.asarray(a), atol=1e-5)
    # ulira() feeds ulira_test the right confidences and mask: recomputed here one shadow at a
    # time, with the mask from Python sets ("unlearning" that does nothing vs Retrain). The
    # targets: the model fit above, which saw half the forget set, and the retrained shadow 1,
    # which saw none of it (CI time: a fit on the whole set and a Retrain compiled two more
    # training programs; ulira() only reads the targets' confidences).
    original, retrained = one, jax.tree.map(lambda v: v[1], sh.retrain_params)
    out = ulira.ulira(arch, sh, sh.in_params, tr, split, original, retrained)
    x, y = jnp.asarray(split.forget.x), jnp.asarray(split.forget.y)
    conf = lambda p: np.asarray(ulira.logit_confidence(arch.apply(p, x), y))
    member = lambda stacked, s: jax.tree.map(lambda v: v[s], stacked)
    phi_u = np.stack([conf(member(sh.in_params, s)) for s in range(4)])
    phi_r = np.stack([conf(member(sh.retrain_params, s)) for s in range(4)])
    mask = np.array([[int(i) in set(sh.forget_sets[s].tolist()) for i in split.forget_idx]
                     for s in range(4)])
    want = ulira.ulira_test(phi_u, phi_r, mask, conf(original), conf(retrained))
    assert out["n_examples"] == want["n_examples"] == mask.any(0).sum() > 0
    for k in ("accuracy", "auc"):
        assert out[f"target_pair_{k}"] == pytest.approx(want[k], abs=1e-6), k
    for k in ("sigma_unlearned", "sigma_retrained"):
        assert out[k] == pytest.approx(want[k], abs=1e-6), k
    # The headline: each shadow pair the target in turn, Gaussians from the other shadows,
    # written out here example by example.
    s_u, s_r = [], []
    for t in range(4):
        for j in np.flatnonzero(mask[t]):
            others = [q for q in range(4) if q != t and mask[q, j]]
            if others:
                s_u.append((t, j, others))
    def pooled(phi, t):
        rest = [q for q in range(4) if q != t]
        res, dof = [], 0
        for j in range(mask.shape[1]):
            qs = [q for q in rest if mask[q, j]]
            if qs:
                v = phi[qs, j]
                res += list(v - v.mean())
                dof += len(qs) - 1
        return max(np.sqrt(np.sum(np.square(res)) / dof), 1e-3)
    lam = lambda phi_t, t, j, others: (
        -0.5 * ((phi_t - phi_u[others, j].mean()) / pooled(phi_u, t)) ** 2 - np.log(pooled(phi_u, t))
        + 0.5 * ((phi_t - phi_r[others, j].mean()) / pooled(phi_r, t)) ** 2 + np.log(pooled(phi_r, t)))
    lu = np.array([lam(phi_u[t, j], t, j, o) for t, j, o in s_u])
    lr = np.array([lam(phi_r[t, j], t, j, o) for t, j, o in s_u])
    assert out["n_decisions"] == len(lu)
    assert out["accuracy"] == pytest.approx(0.5 * (np.mean(lu > 0) + np.mean(lr <= 0)), abs=1e-9)


def test_shadow_sweep_equals_the_loop(digits_splits, digits_shadows):
    from hyperforget_jax.unlearn import GradTauConfig, unlearn

    # The end-to-end test's shadows (CI time: 3 shadows of their own trained two more fleets).
    arch, _, _, sh = digits_shadows
    gcfg = GradTauConfig(epochs=2)
    loop = ulira.unlearn_shadows(sh, lambda p, sp, s: unlearn(
        "gradtau", arch, p, sp, digits_splits.val, gcfg, seed=s).params, digits_splits.train)
    swept = ulira.unlearn_shadows_sweep(sh, "gradtau", arch, digits_splits.train,
                                        digits_splits.val, gcfg)
    assert_trees_close(swept, loop, atol=1e-4)


def test_pooled_sigma_is_unbiased():
    # Known σ = 1 (unlearned) and 3 (retrained) around per-example means; 8 shadows, each
    # targeting half the examples (as train_shadows). Each example's mean uses ~4 shadows, so
    # the residuals lose one degree of freedom per example: dividing by their count gave
    # σ ≈ 0.86 / 2.6 instead of 1 / 3.
    rng = np.random.default_rng(0)
    S, n = 8, 4000
    mu_u = rng.normal(0, 2, n)
    mu_r = mu_u + 1.0
    tgt = np.zeros((S, n), bool)
    for s in range(S):
        tgt[s, rng.permutation(n)[: n // 2]] = True
    out = ulira.ulira_test(mu_u + rng.normal(0, 1, (S, n)), mu_r + rng.normal(0, 3, (S, n)),
                           tgt, mu_u + rng.normal(0, 1, n), mu_r + rng.normal(0, 3, n))
    assert out["sigma_unlearned"] == pytest.approx(1.0, rel=0.03)
    assert out["sigma_retrained"] == pytest.approx(3.0, rel=0.03)


def test_confidences_of_a_large_forget_set_are_computed_in_chunks(monkeypatch):
    """U-LiRA's confidences over a forget set above metrics.WHOLE_CALL_ROWS rows run in chunks of
    WHOLE_CALL_ROWS model evaluations (rows × shadows), with the same values: a fleet of 8 shadows
    over 5,000 forget images in one call held 40,000 images' activations."""
    from hyperforget_jax import metrics

    monkeypatch.setattr(metrics, "WHOLE_CALL_ROWS", 8, raising=False)
    seen = []

    def apply(p, x):
        seen.append(x.shape[0])
        return x.reshape(x.shape[0], -1) @ p["w"]

    model = models.as_model(apply, (2, 2, 1), 3, init_fn=lambda k: {"w": jnp.ones((4, 3))})
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.random((19, 2, 2, 1), dtype=np.float32))
    y = jnp.asarray(rng.integers(0, 3, 19).astype(np.int32))
    stacked = {"w": jnp.asarray(rng.normal(size=(2, 4, 3)).astype(np.float32))}
    got = ulira._phi_fleet(model, stacked, x, y)
    one = ulira._phi(model, {"w": stacked["w"][0]}, x, y)
    assert max(seen) <= 8, seen
    want = np.stack([np.asarray(ulira.logit_confidence(apply(jax.tree.map(lambda l: l[i], stacked),
                                                             x), y)) for i in range(2)])
    assert got.shape == (2, 19)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(one, want[0], rtol=1e-5, atol=1e-6)


def test_confidences_of_a_one_member_fleet_in_chunks(monkeypatch):
    # The chunk size was measured on the stacked parameters when the fleet had one member: a
    # Flax model (whose per-example check runs it) raised ScopeParamShapeError on them.
    import flax.linen as nn

    from hyperforget_jax import metrics

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(3)(x.reshape(x.shape[0], -1))

    monkeypatch.setattr(metrics, "WHOLE_CALL_ROWS", 8, raising=False)
    model = models.as_model(Net(), (2, 2, 1), 3)
    params = model.init(jax.random.key(0))
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.random((19, 2, 2, 1), dtype=np.float32))
    y = jnp.asarray(rng.integers(0, 3, 19).astype(np.int32))
    got = ulira._phi_fleet(model, jax.tree.map(lambda l: l[None], params), x, y)
    want = np.asarray(ulira.logit_confidence(model.apply(params, x), y))
    assert got.shape == (1, 19)
    np.testing.assert_allclose(got[0], want, rtol=1e-5, atol=1e-6)


def test_ulira_test_equals_the_likelihood_ratio_written_out():
    """Steps 4–5 of the module docstring as a plain loop over examples, with scipy's Gaussian
    log-density and scikit-learn's AUC: per-example means over the targeting shadows, σ pooled
    with one degree of freedom per example, Λ = log N(φ; μ_unl, σ_unl) − log N(φ; μ_ret, σ_ret),
    "unlearned" when Λ > 0. σ_unl ≠ σ_ret, so the log σ terms matter."""
    from scipy.stats import norm
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(3)
    S, n = 6, 40
    tgt = rng.random((S, n)) < 0.5
    tgt[:, -1] = False                                # never targeted: skipped
    tgt[0, :-1] = True
    phi_u = rng.normal(1.0, 0.5, (S, n))
    phi_r = rng.normal(0.0, 2.0, (S, n))
    t_u, t_r = rng.normal(1.0, 0.5, n), rng.normal(0.0, 2.0, n)
    out = ulira.ulira_test(phi_u, phi_r, tgt, t_u, t_r)
    ex = [i for i in range(n) if tgt[:, i].any()]
    mu_u = {i: phi_u[tgt[:, i], i].mean() for i in ex}
    mu_r = {i: phi_r[tgt[:, i], i].mean() for i in ex}
    dof = sum(tgt[:, i].sum() - 1 for i in ex)
    sd_u = math.sqrt(sum(((phi_u[tgt[:, i], i] - mu_u[i]) ** 2).sum() for i in ex) / dof)
    sd_r = math.sqrt(sum(((phi_r[tgt[:, i], i] - mu_r[i]) ** 2).sum() for i in ex) / dof)
    lam = lambda t: np.array([norm.logpdf(t[i], mu_u[i], sd_u) - norm.logpdf(t[i], mu_r[i], sd_r)
                              for i in ex])
    s_u, s_r = lam(t_u), lam(t_r)
    assert out["n_examples"] == len(ex) == n - 1
    assert out["sigma_unlearned"] == pytest.approx(sd_u, rel=1e-9)
    assert out["sigma_retrained"] == pytest.approx(sd_r, rel=1e-9)
    assert out["accuracy"] == pytest.approx(0.5 * ((s_u > 0).mean() + (s_r <= 0).mean()))
    assert out["auc"] == pytest.approx(
        roc_auc_score(np.r_[np.ones(len(ex)), np.zeros(len(ex))], np.r_[s_u, s_r]))
    assert 0.5 < out["auc"] < 1.0                     # informative, not saturated


def test_shadow_fleets_train_on_the_right_subsets(monkeypatch):
    """Step 1–2 of the module docstring: shadow s keeps F_s (half of D_f) and R_s (half of
    D_r); its "in" model trains on F_s ∪ R_s, its "retrain" model on R_s alone, never on F_s
    (the fleets' training itself is replaced: only the subsets are checked)."""
    seen = []
    monkeypatch.setattr(ulira, "_fit_fleet_on_subsets",
                        lambda arch, ds, subsets, cfg, seeds: seen.append(subsets) or None)
    ds = data.from_arrays(np.zeros((40, 2, 2, 1), np.float32), np.arange(40) % 2,
                          num_classes=2)
    forget_idx, retain_idx = np.arange(0, 40, 4), np.setdiff1d(np.arange(40), np.arange(0, 40, 4))
    split = data.ForgetSplit(ds.subset(forget_idx), ds.subset(retain_idx), forget_idx,
                             retain_idx)
    sh = ulira.train_shadows("gpt_mlp", ds, split, train.TrainConfig(epochs=1),
                             ulira.ULiRAConfig(num_shadows=3))
    inn, ret = seen
    for s in range(3):
        f, r = sh.forget_sets[s], sh.retain_sets[s]
        assert len(set(f)) == 5 and set(f) <= set(forget_idx)
        assert len(set(r)) == 15 and set(r) <= set(retain_idx)
        assert sorted(inn[s]) == sorted(np.r_[f, r])
        assert sorted(ret[s]) == sorted(r)


def test_shadow_sweep_takes_shadows_whose_halves_remove_different_classes(monkeypatch):
    """Half of a class-removal forget set can miss a small class (here class 1, one sample):
    that shadow's request is class 0 alone, and the sweep refused the shadows as "per-seed
    splits remove different classes", naming a fix (separate sweeps) a U-LiRA user has not.
    Each request's shadows are now a sweep of their own (``unlearn_sweep`` is replaced by one
    that keeps its refusal and tags each start with its seed: the grouping is checked)."""
    import importlib

    U = importlib.import_module("hyperforget_jax.unlearn")  # hf.unlearn is the function

    def sweep(method, arch, starts, splits, val, seeds, configs, params_stacked, vectorize):
        assert len({U._forget_classes(sp) for sp in splits}) == 1, "one request per sweep"
        return [U.UnlearnResult({"w": starts["w"][i] + 100 * s}, {}) for i, s in
                enumerate(seeds)]

    monkeypatch.setattr(U, "unlearn_sweep", sweep)
    ds = data.from_arrays(np.zeros((12, 2, 2, 1), np.float32), [0, 0, 0, 1] + [2] * 8, 3)
    sh = ulira.Shadows({"w": np.array([1.0, 2.0, 3.0])}, None,
                       np.array([[0, 3], [1, 2], [2, 3]]), np.arange(4, 10).reshape(3, 2))
    swept = ulira.unlearn_shadows_sweep(sh, "gradtau", "gpt_mlp", ds, ds)
    np.testing.assert_array_equal(swept["w"], [1.0, 102.0, 203.0])
