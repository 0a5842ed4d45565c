"""Every method through ``unlearn(...)`` on sklearn digits: runs, leaves the caller's params
alone, and moves the parameters in the method's direction."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import CompileCounter, assert_trees_close, devices_or_skip
from hyperforget_jax import data, models, train
from hyperforget_jax.errors import ConfigError, ForgetRequestError
from hyperforget_jax.unlearn import (METHODS, GradTauConfig, NegGradConfig, SalUnConfig,
                                     baselines, unlearn)


@pytest.fixture(scope="module")
def setup(digits_splits):
    arch = models.make_architecture("mlp", digits_splits.train.x.shape[1:])
    state, _ = train.fit(arch, digits_splits.train, train.TrainConfig(epochs=10))
    split = data.resolve_forget(digits_splits.train, data.ForgetRequest(classes=(3,)))
    return arch, state.params, split, digits_splits.val


def _loss_acc(arch, params, ds):
    logits = arch.apply(params, jnp.asarray(ds.x))
    return (float(optax.softmax_cross_entropy_with_integer_labels(logits, ds.y).mean()),
            float(np.mean(np.argmax(logits, -1) == ds.y)))


# Each method with a config small enough to be fast, and the direction it must move.
CASES = {
    "gradtau": (None, "forget_up"),
    "finetune": (None, "retain_down"),
    "retrain": (train.TrainConfig(epochs=3), "forget_forgotten"),
    "neggrad": (NegGradConfig(lr=1e-3), "forget_up"),
    "neggrad_plus": (None, "forget_up"),
    "random_labels": (None, "forget_forgotten"),
    "salun": (None, "forget_forgotten"),
    "scrub": (None, "forget_up"),
    "bad_teacher": (None, "forget_up"),
}


def test_cases_cover_every_method():
    assert set(CASES) == set(METHODS)


@pytest.mark.parametrize("method", sorted(CASES))
def test_method_moves_params_in_its_direction(setup, method):
    arch, params, split, val = setup
    before = jax.tree.map(np.asarray, params)
    cfg, direction = CASES[method]
    res = unlearn(method, arch, params, split, val, config=cfg, seed=0)
    assert res.info["method"] == method and res.info["steps"] > 0
    assert res.info["wall_time_s"] > 0
    assert_trees_close(params, before, atol=0)             # caller's params untouched
    arch.check_params(res.params)
    lf0, af0 = _loss_acc(arch, params, split.forget)
    lr0, _ = _loss_acc(arch, params, split.retain)
    lf1, af1 = _loss_acc(arch, res.params, split.forget)
    lr1, ar1 = _loss_acc(arch, res.params, split.retain)
    if direction == "forget_up":
        assert lf1 > lf0 * 1.05, (lf0, lf1)
    elif direction == "retain_down":
        assert lr1 < lr0, (lr0, lr1)
    else:
        assert af1 < 0.2 and ar1 > 0.8, (af1, ar1)


def test_neggrad_raises_forget_loss_more_with_larger_lr(setup):
    arch, params, split, val = setup
    small = unlearn("neggrad", arch, params, split, val, NegGradConfig(lr=1e-4)).params
    # fit's parameters are uncommitted, those restored from a checkpoint committed to their
    # device: both run one compiled program (the second compiled it again, ≈ 1 s on digits).
    restored = jax.device_put(params, jax.devices()[0])
    with CompileCounter() as c:
        large = unlearn("neggrad", arch, restored, split, val, NegGradConfig(lr=1e-3)).params
    assert c.n == 0
    assert _loss_acc(arch, large, split.forget)[0] > _loss_acc(arch, small, split.forget)[0]


def test_salun_mask_freezes_non_salient_weights(setup):
    arch, params, split, _ = setup
    mask = baselines.saliency_mask(arch, params, split, 0.5)
    share = sum(float(m.sum()) for m in jax.tree.leaves(mask)) / sum(
        m.size for m in jax.tree.leaves(mask))
    assert share == pytest.approx(0.5, abs=0.01)
    res = unlearn("salun", arch, params, split, setup[3], SalUnConfig(epochs=1))
    for new, old, m in zip(jax.tree.leaves(res.params), jax.tree.leaves(params),
                           jax.tree.leaves(mask)):
        frozen = np.asarray(m) == 0
        np.testing.assert_array_equal(np.asarray(new)[frozen], np.asarray(old)[frozen])



def test_salun_saliency_counts_each_forget_image_once(setup):
    # SalUn's generate_mask sums -mean CE over the forget loader's batches, the last one
    # holding only the remaining images. The scan's last row used to be filled with repeats of
    # the first images, which then counted twice (class 3 at batch 256: 162 of 350 images).
    arch, params, split, _ = setup
    n, bs = len(split.forget), 48
    x, y = jnp.asarray(split.forget.x), jnp.asarray(split.forget.y)
    ce = train.per_example_ce(arch.apply)
    # Jitted (CI time: op by op, each batch's gradient was dispatched op by op, ≈ 5x slower).
    grad = jax.jit(jax.grad(lambda q, xb, yb: -ce(q, (xb, yb)).mean()))
    g = jax.tree.map(jnp.zeros_like, params)
    for start in range(0, n, bs):
        sl = slice(start, min(start + bs, n))
        g = jax.tree.map(jnp.add, g, grad(params, x[sl], y[sl]))
    flat = np.concatenate([np.abs(np.asarray(l)).ravel() for l in jax.tree.leaves(g)])
    k = int(round(0.5 * flat.size))
    threshold = np.sort(flat)[flat.size - k]
    mask = baselines.saliency_mask(arch, params, split, 0.5, batch_size=bs)
    assert n % bs                                        # a partial last batch
    got = np.concatenate([np.asarray(m).ravel() for m in jax.tree.leaves(mask)])
    np.testing.assert_array_equal(got, ((flat >= threshold) & (flat > 0)).astype(np.float32))

def test_salun_mask_is_one_compiled_program(caplog):
    """The mask of the summed saliency (|g|, one global threshold by sort, comparisons) is one
    compiled program; run op by op it compiled about five programs per parameter leaf on a
    model's first SalUn call (≈ 1 s of a digits run). Same bits: the tests above compare it
    with NumPy."""
    import logging

    rng = np.random.default_rng(0)
    ds = data.from_arrays(rng.random((40, 5, 7, 1), np.float32), np.arange(40) % 3, 3, "odd")
    split = data.resolve_forget(ds, data.ForgetRequest(classes=(1,)))
    arch = models.make_architecture("mlp", (5, 7, 1), 3)   # leaf shapes no other test uses
    params = arch.init(jax.random.key(0))

    def compiled(ratio):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="jax"), jax.log_compiles(True):
            out = baselines.saliency_mask(arch, params, split, ratio)
        names = [r.getMessage().split()[1] for r in caplog.records
                 if r.getMessage().startswith("Compiling ")]
        # the saliency program itself and the staging of its inputs aside
        return out, [n for n in names if n not in ("jit(summed)", "jit(stage)")]

    mask, first = compiled(0.3)
    assert len(first) <= 2, first          # the mask program (and k's int32): was 34
    again, second = compiled(0.7)          # another ratio: k is traced, nothing new
    assert second == [], second
    assert 0 < sum(float(m.sum()) for m in jax.tree.leaves(mask)) < sum(
        float(m.sum()) for m in jax.tree.leaves(again))


def test_salun_mask_leaves_out_weights_with_no_saliency(setup):
    # Digits' always-black pixels give their input weights a saliency of exactly 0. Asked for
    # more than the non-zero share, the threshold is 0: ties must not fill the mask.
    arch, params, split, _ = setup
    full = baselines.saliency_mask(arch, params, split, 1.0)
    assert all(np.all(np.asarray(m) == 1) for m in jax.tree.leaves(full))
    dead = np.all(split.forget.x.reshape(len(split.forget), -1) == 0, axis=0)   # per pixel
    assert dead.any()
    first = jax.tree.leaves(params)[1]          # Dense_0 kernel: (pixels, units)
    assert first.shape[0] == dead.size
    n = sum(l.size for l in jax.tree.leaves(params))
    ratio = 1 - 0.5 * int(dead.sum()) * first.shape[1] / n     # beyond the non-zero share
    mask = baselines.saliency_mask(arch, params, split, ratio)
    kernel = np.asarray(jax.tree.leaves(mask)[1])
    assert np.all(kernel[dead] == 0)            # no zero-saliency weight is let through
    share = sum(float(m.sum()) for m in jax.tree.leaves(mask)) / n
    assert 0 < share < ratio


def test_finetune_runs_twice_the_gradtau_budget(setup):
    # Official notebooks: Fine-tune runs int(6·N_r/N_f) epochs of descent on D_r (here N_r = 5,
    # N_f = 1: exactly 2E; tests/test_gradtau.py covers the 2E + 1 case).
    arch, params, split, val = setup
    gt = unlearn("gradtau", arch, params, split, val)
    ft = unlearn("finetune", arch, params, split, val)
    assert ft.info["epochs"] == 2 * gt.info["epochs"] and ft.info["steps"] == 2 * gt.info["steps"]
    assert ft.info["alpha0"] == 0.0 and gt.info["alpha0"] > 0 and ft.info["forget_loss"] == []
    fixed = unlearn("finetune", arch, params, split, val, GradTauConfig(epochs=3))
    assert fixed.info["epochs"] == 3          # an explicit budget is used as is


def test_salun_masked_updates_is_an_optax_wrapper():
    mask = {"w": jnp.array([1.0, 0.0, 1.0])}
    tx = baselines.masked_updates(baselines.sgd(0.1, 0.9, 5e-4), mask)
    p = {"w": jnp.ones(3)}
    state = tx.init(p)
    for _ in range(3):
        u, state = tx.update({"w": jnp.array([1.0, 2.0, -1.0])}, state, p)
        p = optax.apply_updates(p, u)
    assert float(p["w"][1]) == 1.0                       # frozen exactly
    assert float(p["w"][0]) < 1.0 < float(p["w"][2])


def test_masked_updates_takes_a_users_prefix_or_bool_mask_and_refuses_a_misfit():
    """A user's "unlearn the head only" mask as optax.masked writes it (a prefix of the
    parameters, Python bools) failed with a bare AttributeError; a misfit is a ConfigError."""
    p = {"body": {"w": jnp.ones(3), "b": jnp.ones(2)}, "head": {"w": jnp.ones(3)}}
    g = jax.tree.map(jnp.ones_like, p)
    for mask in ({"body": False, "head": True},
                 {"body": {"w": False, "b": 0.0}, "head": {"w": jnp.ones(3, bool)}}):
        tx = train.skip_nonfinite(baselines.masked_updates(optax.adamw(0.1), mask))
        new = jax.jit(lambda p: optax.apply_updates(p, tx.update(g, tx.init(p), p)[0]))(p)
        assert jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), new["body"],
                            p["body"]) == {"w": True, "b": True}
        assert float(new["head"]["w"][0]) < 1.0
    with pytest.raises(ConfigError, match="mask does not fit"):
        baselines.masked_updates(optax.sgd(0.1), {"head": True, "neck": False}).init(p)


def test_objectives_refuse_a_loss_fn_returning_loss_and_aux():
    """loss_fn is losses only: a has_aux-style (losses, aux) failed in jnp.mean with a bare
    TypeError about tuples; now a ConfigError that names the contract."""
    loss_fn = train.per_example_ce(lambda p, x: x @ p)
    aux_loss = lambda p, b: (loss_fn(p, b), b[1])
    p, b = jnp.eye(3), (jnp.eye(3), jnp.arange(3))
    calls = [lambda: baselines.neggrad(aux_loss).update(p, (), b),
             lambda: baselines.neggrad_plus(aux_loss, 0.5).update(p, (), b, b),
             lambda: baselines.descent(aux_loss).update(p, (), b),
             lambda: baselines.weighted_descent(aux_loss).update(p, (), b + (jnp.ones(3),))]
    for call in calls:
        with pytest.raises(ConfigError, match="per-example losses of shape"):
            jax.eval_shape(call)


def test_baseline_on_a_mesh_equals_one_device(setup):
    arch, params, split, val = setup
    cfg = baselines.C.NegGradPlusConfig(epochs=1, batch_size=64)
    want = unlearn("neggrad_plus", arch, params, split, val, cfg, seed=1)
    mesh = jax.make_mesh((4,), ("data",), devices=devices_or_skip(4))
    got = unlearn("neggrad_plus", arch, params, split, val, cfg, seed=1, mesh=mesh)
    assert_trees_close(got.params, want.params, atol=1e-5)
    assert got.info["steps"] == want.info["steps"] > 0
    # The record says what ran: 4 devices on the mesh, one without (however many are visible).
    assert (got.info["devices"], want.info["devices"]) == (4, 1)
    assert got.info["device_kind"] == want.info["device_kind"] == jax.devices()[0].device_kind
    # A 2×2 ("model", "data") mesh: 4 devices, each batch split over the 2 of its data axis
    # ("devices" alone said 4 shared it).
    grid = jax.make_mesh((2, 2), ("model", "data"), devices=devices_or_skip(4))
    two = unlearn("neggrad_plus", arch, params, split, val, cfg, seed=1, mesh=grid)
    assert (two.info["devices"], two.info["batch_split"]) == (4, 2)
    assert got.info["batch_split"] == 4 and "batch_split" not in want.info
    assert_trees_close(two.params, want.params, atol=1e-5)
    # Batches of 30 do not divide over 4 devices: split unevenly (they used to be refused).
    odd = baselines.C.ScrubConfig(epochs=1, msteps=1, retain_batch_size=30, forget_batch_size=6)
    assert_trees_close(unlearn("scrub", arch, params, split, val, odd, seed=1, mesh=mesh).params,
                       unlearn("scrub", arch, params, split, val, odd, seed=1).params, atol=1e-5)


def test_retrain_equals_fit_on_retain(setup):
    arch, params, split, val = setup
    cfg = train.TrainConfig(epochs=2, seed=5)
    res = unlearn("retrain", arch, params, split, val, cfg)
    want, _ = train.fit(arch, split.retain, cfg)
    assert_trees_close(res.params, want.params, atol=1e-6)
    assert res.info["seed"] == 5          # the seed that ran (the config's), not the default 0


def test_retrain_refuses_a_seed_its_config_contradicts(setup):
    # A loop `for s in seeds: unlearn("retrain", ..., cfg, seed=s)` retrained every "seed" with
    # cfg.seed and recorded s: seed-to-seed spread 0, published as the Retrain's std.
    arch, params, split, val = setup
    with pytest.raises(ConfigError, match=r"replace\(config, seed=2\)"):
        unlearn("retrain", arch, params, split, val, train.TrainConfig(epochs=1, seed=0), seed=2)


def test_errors(setup):
    arch, params, split, val = setup
    with pytest.raises(ConfigError, match="gradtau, retrain, finetune"):
        unlearn("forget_everything", arch, params, split, val)
    with pytest.raises(ConfigError, match="NegGradConfig"):
        unlearn("neggrad", arch, params, split, val, config=GradTauConfig())
    empty = split._replace(forget=split.forget.subset(np.arange(0)))
    with pytest.raises(ForgetRequestError, match="non-empty"):
        unlearn("gradtau", arch, params, empty, val)
    with pytest.raises(ForgetRequestError, match="empty"):
        data.ForgetRequest(classes=())
    with pytest.raises(ConfigError, match="does not checkpoint"):
        unlearn("scrub", arch, params, split, val, checkpointer=object())


def test_building_block_runners_refuse_another_methods_config(setup):
    """run_method / run_gradtau (the runners docs/unlearning.md offers for one's own loop)
    ran NegGrad with a SalUnConfig's values (the configs share field names) and failed with a
    bare AttributeError / KeyError on other configs or an unknown method."""
    from hyperforget_jax.unlearn import run_gradtau

    arch, params, split, val = setup
    with pytest.raises(ConfigError, match="neggrad takes a NegGradConfig, got SalUnConfig"):
        baselines.run_method("neggrad", arch, params, split, SalUnConfig(epochs=1))
    with pytest.raises(ConfigError, match="unknown baseline 'gradtau'; choose one of neggrad"):
        baselines.run_method("gradtau", arch, params, split, GradTauConfig())
    with pytest.raises(ConfigError, match="finetune takes a GradTauConfig, got NegGradConfig"):
        run_gradtau(arch, params, split, val, NegGradConfig(), method="finetune")


# --- fidelity to the published baselines ------------------------------------------------

def test_scrub_kl_is_the_official_distillkl_scaled_by_T_squared():
    # meghdadk/SCRUB helper/KD.py (RepDistiller's DistillKL):
    #   kl_div(log_softmax(s/T), softmax(t/T), sum) * T**2 / batch
    # Without the T² factor, kd_T = 4 makes the max-step (and the retain KL) 16x weaker.
    T = 4.0
    t = jax.random.normal(jax.random.key(0), (8, 10)) * 3
    x = jax.random.normal(jax.random.key(1), (8, 5))
    w = jax.random.normal(jax.random.key(2), (5, 10))
    y = jnp.zeros(8, jnp.int32)

    def distill_kl(student, teacher):
        p_t = jax.nn.softmax(teacher / T)
        return jnp.sum(p_t * (jnp.log(p_t) - jax.nn.log_softmax(student / T))) * T ** 2 / 8

    obj = baselines.scrub(lambda p, xx: xx @ p, T, 0.99, 0.001)
    _, _, m_max = obj.update(w, (), (x, t), (x, y, t), True)
    assert float(m_max["loss"]) == pytest.approx(-float(distill_kl(x @ w, t)), rel=1e-5)
    _, _, m_min = obj.update(w, (), (x, t), (x, y, t), False)
    ce = optax.softmax_cross_entropy_with_integer_labels(x @ w, y).mean()
    assert float(m_min["loss"]) == pytest.approx(
        float(0.99 * ce + 0.001 * distill_kl(x @ w, t)), rel=1e-5)


def test_scrub_and_bad_teacher_refuse_batches_of_another_form():
    # A dict batch failed with a bare KeyError: 0, SCRUB's retain batch given as a pair with an
    # IndexError; a list of the same items stays accepted.
    x, t, w = jnp.ones((4, 5)), jnp.zeros((4, 3)), jnp.zeros((5, 3))
    y = jnp.zeros(4, jnp.int32)
    scrub = baselines.scrub(lambda p, xx: xx @ p, 2.0, 0.99, 0.001)
    bad = baselines.bad_teacher(lambda p, xx: xx @ p, 2.0)
    with pytest.raises(ConfigError, match=r"scrub's forget batch takes batches \(x, "
                                          r"teacher_logits\), got a dict with keys \['image'"):
        scrub.update(w, (), {"image": x, "teacher_logits": t}, (x, y, t), True)
    with pytest.raises(ConfigError, match=r"scrub's retain batch takes batches \(x, y, "
                                          r"teacher_logits\), got a tuple of 2; pass .*teacher"):
        scrub.update(w, (), (x, t), (x, y), False)
    with pytest.raises(ConfigError, match=r"bad_teacher takes batches \(x, teacher_logits\), "
                                          r"got a dict"):
        bad.update(w, (), {"x": x, "teacher_logits": t})
    _, _, m = bad.update(w, (), [x, t])
    _, _, want = bad.update(w, (), (x, t))
    assert float(m["loss"]) == float(want["loss"])


def _forget_row_weights(plan, row, nf):
    """Per forget sample of one plan row: (its share of the row's mean loss, its labels)."""
    idx, y = np.asarray(plan["idx"][row]), np.asarray(plan["y"][row])
    w = np.asarray(plan["w"][row]) if "w" in plan else np.ones(idx.shape, np.float32)
    share = np.bincount(idx, weights=w, minlength=nf)[:nf] / w.sum()
    labels = [set(y[(idx == i) & (w > 0)].tolist()) for i in range(nf)]
    return share, labels


@pytest.mark.parametrize("method", ["random_labels", "salun"])
def test_relabel_forget_pass_smaller_than_a_batch_sees_each_sample_once(setup, method):
    # A forget set smaller than the batch (10 < 256): SalUn's forget loader gives one batch of
    # the 10 samples, each with one random label. The plan must not repeat each sample ~25
    # times with ~25 different random labels (a target that averages to uniform).
    arch, params, split, _ = setup
    small = split._replace(forget=split.forget.subset(np.arange(10)),
                           forget_idx=np.asarray(split.forget_idx)[:10])
    cfg = (baselines.C.RandomLabelsConfig(epochs=2) if method == "random_labels"
           else SalUnConfig(epochs=2))
    prep = baselines.prepare(method, arch, params, small, cfg, seed=0)
    rows_per_epoch = len(prep.plan["idx"]) // 2
    for row in (0, rows_per_epoch):              # the forget pass of each epoch
        share, labels = _forget_row_weights(prep.plan, row, 10)
        np.testing.assert_allclose(share, 0.1, rtol=1e-6)
        assert all(len(s) == 1 for s in labels)
    # the retain pass is unchanged: full batches, weight 1
    r = prep.plan["idx"][1]
    assert (r >= 10).all() and ("w" not in prep.plan or np.all(prep.plan["w"][1] == 1))


def test_relabel_forget_batch_is_not_capped_by_a_small_retain_set(setup):
    # The forget pass's batch is min(batch_size, |D_f|), whatever |D_r| is: a retain set of
    # 40 must not cut a 200-sample forget pass into batches of 40 (5 steps instead of 1).
    arch, params, split, _ = setup
    base = np.concatenate([split.forget.x, split.retain.x])
    ys = np.concatenate([split.forget.y, split.retain.y])
    forget = split.retain.replace(x=base[:200], y=ys[:200])
    retain = split.retain.replace(x=base[200:240], y=ys[200:240])
    big = split._replace(forget=forget, retain=retain, forget_idx=np.arange(200),
                         retain_idx=np.arange(200, 240))
    prep = baselines.prepare("random_labels", arch, params, big,
                             baselines.C.RandomLabelsConfig(epochs=1, batch_size=256), seed=0)
    idx = np.asarray(prep.plan["idx"])
    w = np.asarray(prep.plan["w"]) if "w" in prep.plan else np.ones(idx.shape)
    assert len(idx) == 2                      # one forget batch of 200, one retain batch of 40
    assert w[0].sum() == 200 and w[1].sum() == 40 and set(idx[1][w[1] > 0]) == set(range(200, 240))


def test_relabel_small_forget_set_equals_a_loop_over_unique_samples(setup):
    # End to end through unlearn: Random labels (plain SGD) on a 10-sample forget set equals a
    # hand-written loop whose forget step is the mean CE over the 10 samples, each with one
    # random label (the plan's first label for it), followed by the retain pass's batches.
    arch, params, split, val = setup
    small = split._replace(forget=split.forget.subset(np.arange(10)),
                           forget_idx=np.asarray(split.forget_idx)[:10])
    cfg = baselines.C.RandomLabelsConfig(epochs=1, momentum=0.0, weight_decay=0.0)
    got = unlearn("random_labels", arch, params, small, val, cfg, seed=0).params
    prep = baselines.prepare("random_labels", arch, params, small, cfg, seed=0)
    x = jnp.asarray(prep.shared["x"])
    # Jitted (CI time: op by op, each step was dispatched op by op, ≈ 5x slower).
    sgd = jax.jit(lambda p, xb, yb: jax.tree.map(lambda a, g: a - cfg.lr * g, p, jax.grad(
        lambda q: optax.softmax_cross_entropy_with_integer_labels(arch.apply(q, xb), yb)
        .mean())(p)))
    idx, y = np.asarray(prep.plan["idx"]), np.asarray(prep.plan["y"])
    label = {int(i): int(l) for i, l in zip(idx[0][::-1], y[0][::-1])}   # first one wins
    want = sgd(params, x[:10], jnp.array([label[i] for i in range(10)]))
    for row in range(1, len(idx)):
        want = sgd(want, x[idx[row]], jnp.asarray(y[row]))
    assert_trees_close(got, want, atol=1e-5)


def test_salun_nonfinite_gradients_raise_like_random_labels(digits_splits):
    # SalUn's masked optimiser must keep the NaN guard's flag readable: a finite loss with a
    # NaN gradient (d sqrt|b| / db at b = 0) is refused by Random labels; SalUn used to skip
    # every update silently and return the original parameters as its result.
    from hyperforget_jax.errors import NonFiniteError
    split = data.resolve_forget(digits_splits.train, data.ForgetRequest(classes=(3,)))

    def apply(p, x):
        return x.reshape(x.shape[0], -1) @ p["w"] + jnp.sqrt(jnp.abs(p["b"]))

    params = {"w": 0.01 * jax.random.normal(jax.random.key(0), (64, 10)), "b": jnp.zeros(10)}
    model = models.as_model(apply)
    for method, cfg in [("random_labels", baselines.C.RandomLabelsConfig(epochs=1)),
                        ("salun", SalUnConfig(epochs=1))]:
        with pytest.raises(NonFiniteError, match=method):
            unlearn(method, model, params, split, digits_splits.val, cfg)


def test_teacher_logits_of_a_large_set_are_computed_in_chunks(monkeypatch):
    """SCRUB / Bad Teacher's teacher logits: a set above metrics.WHOLE_CALL_ROWS rows is run in
    chunks of that many (one call over CIFAR's 45,000 retain images holds ≈ 25 GiB for the cnn),
    with the same logits."""
    from hyperforget_jax import metrics
    from hyperforget_jax.unlearn import baselines

    monkeypatch.setattr(metrics, "WHOLE_CALL_ROWS", 8, raising=False)
    seen = []

    def apply(p, x):
        seen.append(x.shape[0])          # at trace time: the rows of each compiled call
        return x.reshape(x.shape[0], -1) @ p["w"]

    model = models.as_model(apply, (2, 2, 1), 3, init_fn=lambda k: {"w": jnp.ones((4, 3))})
    x = np.random.default_rng(0).random((21, 2, 2, 1), dtype=np.float32)
    got = np.asarray(baselines._logits(model, {"w": jnp.arange(12.0).reshape(4, 3)}, x))
    np.testing.assert_allclose(got, x.reshape(21, 4) @ np.arange(12.0).reshape(4, 3), rtol=1e-6)
    assert max(seen) <= 8, seen


@pytest.mark.parametrize("make, words", [
    (lambda: baselines.neggrad_plus(train.per_example_ce(lambda p, x: x @ p), 1.5),
     "neggrad_plus.beta must be >= 0 and <= 1, got 1.5"),
    (lambda: baselines.scrub(lambda p, x: x @ p, 0.0, 1.0, 1.0),
     "scrub.kd_T must be > 0, got 0.0"),
    (lambda: baselines.scrub(lambda p, x: x @ p, 4.0, -1.0, 1.0),
     "scrub.gamma must be >= 0, got -1.0"),
    (lambda: baselines.scrub(lambda p, x: x @ p, 4.0, 1.0, float("nan")), "scrub.alpha must be a finite number >= 0, got nan"),
    (lambda: baselines.bad_teacher(lambda p, x: x @ p, 0), "bad_teacher.temperature must be > 0, got 0.0"),
    (lambda: baselines.bad_teacher(lambda p, x: x @ p, (1.0, 2.0)), "must be one number")])
def test_objectives_refuse_the_settings_their_configs_refuse(make, words):
    # NegGrad+ at β 1.5 descended on the forget set; SCRUB and Bad Teacher at temperature 0
    # returned NaN losses. Their configs refused these; the building blocks took them.
    with pytest.raises(ConfigError, match=re.escape(words)):
        make()


def test_neggrad_plus_and_bad_teacher_objectives_equal_their_formulas():
    # NegGrad+: β·CE(B_r) − (1 − β)·CE(B_f); β = 0.9, not 0.5, so a β on the wrong term shows.
    # Bad Teacher: KL(teacher ‖ student) [paper: the student matches the teacher's
    # distribution], not the reverse KL, which weighs the classes by the student's beliefs.
    ce = lambda logits, y: np.mean(np.log(np.exp(logits).sum(1)) - logits[np.arange(len(y)), y])
    rng = np.random.default_rng(0)
    w, xf, xr = rng.normal(size=(5, 4)), rng.normal(size=(6, 5)), rng.normal(size=(7, 5))
    yf, yr = rng.integers(0, 4, 6), rng.integers(0, 4, 7)
    # Jitted (CI time: op by op, the two objectives compiled ≈ 80 programs).
    obj = baselines.neggrad_plus(train.per_example_ce(lambda p, x: x @ p), 0.9)
    _, _, m = jax.jit(obj.update)(jnp.asarray(w), (), (xf, yf), (xr, yr))
    assert float(m["loss"]) == pytest.approx(0.9 * ce(xr @ w, yr) - 0.1 * ce(xf @ w, yf),
                                             rel=1e-5)
    teacher, T = rng.normal(size=(6, 4)) * 3, 2.0
    softmax = lambda z: np.exp(z - z.max(1, keepdims=True)) / np.exp(
        z - z.max(1, keepdims=True)).sum(1, keepdims=True)
    p, q = softmax(teacher / T), softmax(xf @ w / T)
    obj = baselines.bad_teacher(lambda p_, x: x @ p_, T)
    _, _, m = jax.jit(obj.update)(jnp.asarray(w), (), (xf, teacher))
    assert float(m["loss"]) == pytest.approx(np.mean(np.sum(p * np.log(p / q), 1)), rel=1e-5)


def test_sgd_is_pytorchs_sgd_with_weight_decay():
    # torch.optim.SGD: d = g + wd·θ; buf = m·buf + d (buf = d at the first step); θ −= lr·buf.
    # Decay applied after the momentum would add wd·θ to the update unscaled by −lr.
    lr, m, wd = 0.1, 0.9, 0.05
    theta, grads = np.array([1.0, -2.0, 0.5]), [np.array([0.3, 0.1, -0.2]) * k for k in (1, 2, 3)]
    tx = baselines.sgd(lr, m, wd)
    p, want, buf = jnp.asarray(theta), theta.copy(), None
    state = tx.init(p)
    for g in grads:
        upd, state = tx.update(jnp.asarray(g), state, p)
        p = optax.apply_updates(p, upd)
        d = g + wd * want
        buf = d if buf is None else m * buf + d
        want = want - lr * buf
    np.testing.assert_allclose(p, want, rtol=1e-6)


def test_random_labels_are_uniform_over_every_class(setup):
    # SalUn's code draws np.random.randint(0, num_classes): every class, the true one included
    # (a random label that can never be the true one is another method), uniformly.
    arch, params, split, _ = setup
    prep = baselines.prepare("random_labels", arch, params, split,
                             baselines.C.RandomLabelsConfig(epochs=10), seed=0)
    nf = len(split.forget)
    idx, y, w = (np.asarray(prep.plan[k]) for k in ("idx", "y", "w"))
    forget_rows = (idx < nf).all(1)
    labels = y[forget_rows][w[forget_rows] > 0]
    assert len(labels) == 10 * nf
    counts = np.bincount(labels, minlength=10)
    np.testing.assert_allclose(counts / len(labels), 0.1, atol=0.03)
    assert counts[split.forget.y[0]] > 0.07 * len(labels)          # the true label too


def test_scrub_plan_runs_msteps_max_passes_first(setup):
    # SCRUB [official code]: epochs < msteps run a max-pass over D_f, then a min-pass over D_r.
    # From an untrained network (CE ≈ 2.3): the first step maximises KL(teacher ‖ student)
    # with student = teacher, loss 0 (up to rounding); the last is a min-step, γ·CE + α·KL.
    arch, params, split, _ = setup
    cfg = baselines.C.ScrubConfig(epochs=3, msteps=2)
    prep = baselines.prepare("scrub", arch, params, split, cfg, seed=0)
    nf, nr = len(split.forget), len(split.retain)
    per_f, per_r = -(-nf // cfg.forget_batch_size), -(-nr // cfg.retain_batch_size)
    want = ([0] * per_f + [1] * per_r) * 2 + [1] * per_r
    np.testing.assert_array_equal(prep.plan["kind"], want)
    _, info = baselines.run_method("scrub", arch, arch.init(jax.random.key(1)), split,
                                   baselines.C.ScrubConfig(epochs=1, msteps=1), seed=0)
    assert abs(info["first_loss"]) < 1e-5 and info["last_loss"] > 1.0


def test_objectives_under_shard_map_and_pmap_give_the_one_device_gradient():
    # Under shard_map's default check_vma=True autodiff sums the replicated parameters' gradient
    # over the devices: the usual pmean afterwards gave 4 × the batch's gradient on 4 devices,
    # silently. axis_name= now gives the one-device gradient; without it, split batches are
    # refused. Under pmap (no vma) axis_name averages as before a user's own pmean did.
    from jax.sharding import NamedSharding, PartitionSpec as P

    devices = devices_or_skip(4)
    mesh = jax.sharding.Mesh(np.array(devices), ("data",))
    rng = np.random.default_rng(0)
    w = jnp.asarray(rng.normal(size=(5, 4)), jnp.float32)
    fb = (jnp.asarray(rng.normal(size=(8, 5)), jnp.float32), jnp.asarray(rng.integers(0, 4, 8)))
    rb = (jnp.asarray(rng.normal(size=(8, 5)), jnp.float32), jnp.asarray(rng.integers(0, 4, 8)))
    loss_fn = train.per_example_ce(lambda p, x: x @ p)
    make = lambda axis_name=None: baselines.neggrad_plus(loss_fn, 0.9, axis_name)  # noqa: E731
    want = make().update(w, (), fb, rb)[0]

    def sharded(obj):
        f = lambda p, f_, r_: jax.lax.pmean(obj.update(p, (), f_, r_)[0], "data")  # noqa: E731
        sm = jax.shard_map(f, mesh=mesh, in_specs=(P(), P("data"), P("data")), out_specs=P())
        return jax.jit(sm)(jax.device_put(w, NamedSharding(mesh, P())),
                           *jax.device_put((fb, rb), NamedSharding(mesh, P("data"))))

    np.testing.assert_allclose(sharded(make("data")), want, atol=1e-6)
    with pytest.raises(ConfigError, match="pass axis_name="):
        sharded(make())
    got = jax.pmap(lambda p, f_, r_: make("data").update(p, (), f_, r_)[0], axis_name="data",
                   in_axes=(None, 0, 0), devices=devices)(w, *train.shard_batch((fb, rb), 4))
    np.testing.assert_allclose(got[0], want, atol=1e-6)


def test_weighted_descent_under_shard_map_names_a_fix_it_takes():
    # Its refusal of split rows said "pass axis_name=", which weighted_descent does not take;
    # it names what works now, and the fix it names gives the one-device gradient.
    from jax.sharding import PartitionSpec as P

    mesh = jax.sharding.Mesh(np.array(devices_or_skip(4)), ("data",))
    rng = np.random.default_rng(0)
    w = jnp.asarray(rng.normal(size=(5, 4)), jnp.float32)
    b = (jnp.asarray(rng.normal(size=(8, 5)), jnp.float32), jnp.asarray(rng.integers(0, 4, 8)),
         jnp.asarray(rng.uniform(size=8), jnp.float32))
    obj = baselines.weighted_descent(train.per_example_ce(lambda p, x: x @ p))
    grad = jax.jit(lambda rows: obj.update(w, (), rows)[0])     # jitted: eager ops cost ~4 s
    on_mesh = lambda spec: jax.jit(jax.shard_map(grad, mesh=mesh, in_specs=spec,  # noqa: E731
                                                 out_specs=P()))(b)
    with pytest.raises(ConfigError, match=r"weighted_descent: .*takes no axis_name.*under jit "
                                          r"outside shard_map.*replicated \(in_specs P\(\)\)"):
        on_mesh(P("data"))
    np.testing.assert_allclose(on_mesh(P()), grad(b), atol=1e-6)   # the fix named: replicated


def test_objectives_with_a_batch_split_over_two_mesh_axes_give_the_one_device_gradient():
    # axis_name=("a", "b") for rows split over both axes of a 2 × 2 mesh: the tuple was never
    # cast to device-varying, so under check_vma=True autodiff summed the four devices'
    # gradients and the pmean kept the sum (4 × the gradient, silently; nabla_tau and
    # train.make_train_step too: they share the check now, and its refusal shows it).
    from jax.sharding import PartitionSpec as P

    from hyperforget_jax.unlearn import gradtau

    mesh = jax.sharding.Mesh(np.array(devices_or_skip(4)).reshape(2, 2), ("a", "b"))
    rng = np.random.default_rng(0)
    w = jnp.asarray(rng.normal(size=(5, 4)), jnp.float32)
    fb = (jnp.asarray(rng.normal(size=(8, 5)), jnp.float32), jnp.asarray(rng.integers(0, 4, 8)))
    loss_fn = train.per_example_ce(lambda p, x: x @ p)
    grad = lambda b, ax=None: baselines.neggrad(loss_fn, ax).update(w, (), b)[0]  # noqa: E731

    def on_mesh(f, *specs):
        return jax.shard_map(f, mesh=mesh, in_specs=specs, out_specs=P())(*[fb] * len(specs))

    # Rows over both axes; and over one of the two named (a pmean over a mix of varying and
    # replicated values was a bare ValueError under check_vma). One program: compile time.
    got = on_mesh(lambda both, one: (grad(both, ("a", "b")), grad(one, ("a", "b"))),
                  P(("a", "b")), P("a"))
    x, y, wn = np.asarray(fb[0], np.float64), np.asarray(fb[1]), np.asarray(w, np.float64)
    z = np.exp(x @ wn - (x @ wn).max(1, keepdims=True))
    want = -x.T @ (z / z.sum(1, keepdims=True) - np.eye(4)[y]) / len(y)   # −∇ mean CE, NumPy
    for g in got:
        np.testing.assert_allclose(g, want, atol=1e-6)
    # Naming one of the two axes is refused (the other's devices would be summed).
    tx = optax.sgd(1.0)
    ts = train.TrainState(jnp.int32(0), w, tx.init(w))
    gt = gradtau.nabla_tau(loss_fn, 0.5, tau=9.0, axis_name="a")
    for f in (lambda b: grad(b, "a"), lambda b: gt.update(w, gt.init(w), b, b)[0],
              lambda b: train.make_train_step(lambda p, x: x @ p, tx, "a")(ts, b)[0].params):
        with pytest.raises(ConfigError, match=r"axis_name='a' does not name them all"):
            on_mesh(f, P(("a", "b")))


def test_salun_mask_of_a_batch_statistics_model_runs_its_short_last_batch_alone(digits_splits):
    # Rows padded into the last batch entered a batch-statistics model's statistics, so the
    # real rows' gradients (12 % of a digits mask) differed from SalUn's short last batch.
    def apply_fn(p, x):
        h = x.reshape(x.shape[0], -1) @ p["w"]
        h = (h - h.mean(0)) / jnp.sqrt(h.var(0) + 1e-5)
        return jax.nn.relu(h) @ p["v"]

    k1, k2 = jax.random.split(jax.random.key(0))
    params = {"w": 0.1 * jax.random.normal(k1, (64, 16)), "v": 0.1 * jax.random.normal(k2, (16, 10))}
    arch = models.as_model(apply_fn, (8, 8, 1), 10)
    split = data.resolve_forget(digits_splits.train, data.ForgetRequest(fraction=0.12, seed=0))
    n, bs = len(split.forget), 64
    assert n % bs
    x, y = jnp.asarray(split.forget.x), jnp.asarray(split.forget.y)
    ce = train.per_example_ce(apply_fn)
    grad = jax.jit(jax.grad(lambda q, xb, yb: -ce(q, (xb, yb)).mean()))
    g = jax.tree.map(jnp.zeros_like, params)
    for start in range(0, n, bs):
        g = jax.tree.map(jnp.add, g, grad(params, x[start:start + bs], y[start:start + bs]))
    flat = np.concatenate([np.abs(np.asarray(l)).ravel() for l in jax.tree.leaves(g)])
    threshold = np.sort(flat)[flat.size - int(round(0.5 * flat.size))]
    mask = baselines.saliency_mask(arch, params, split, 0.5, batch_size=bs)
    got = np.concatenate([np.asarray(m).ravel() for m in jax.tree.leaves(mask)])
    np.testing.assert_array_equal(got, ((flat >= threshold) & (flat > 0)).astype(np.float32))


def test_relabel_passes_of_a_batch_statistics_model_run_at_their_own_width(digits_splits):
    """Random labels on a model that centres its hidden layer by the batch's statistics, with a
    forget set smaller than the retain batch: the forget pass was padded to the retain width
    with weight-0 rows, which entered the real rows' statistics (a forget step's gradient
    10.7 % off on MNIST-5k). Now equal to a loop whose forget batch holds the forget rows
    alone, as SalUn's loader gives it; a sweep's members equal their lone runs."""
    from hyperforget_jax.unlearn import RandomLabelsConfig, baselines, unlearn, unlearn_sweep

    def apply_fn(p, x):
        h = x.reshape(x.shape[0], -1) @ p["w"] + p["b"]
        h = (h - h.mean(0)) / jnp.sqrt(h.var(0) + 1e-5)
        return jax.nn.relu(h) @ p["v"]

    def init_fn(key):
        k1, k2 = jax.random.split(key)
        return {"w": 0.1 * jax.random.normal(k1, (64, 32)), "b": jnp.zeros(32),
                "v": 0.1 * jax.random.normal(k2, (32, 10))}

    arch = models.as_model(apply_fn, (8, 8, 1), 10, init_fn=init_fn, name="centred_mlp")
    params = init_fn(jax.random.key(0))
    fsplit = data.resolve_forget(digits_splits.train, data.ForgetRequest(fraction=0.05))
    cfg = RandomLabelsConfig(epochs=2, momentum=0.0, weight_decay=0.0, batch_size=128)
    got = unlearn("random_labels", arch, params, fsplit, digits_splits.val, cfg, seed=0).params
    prep = baselines.prepare("random_labels", arch, params, fsplit, cfg, seed=0)
    x = jnp.asarray(prep.shared["x"])
    idx, y, w = (np.asarray(prep.plan[k]) for k in ("idx", "y", "w"))
    assert (w == 0).any()                      # a padded pass: the case at hand
    sgd = jax.jit(lambda p, xb, yb: jax.tree.map(lambda a, g: a - cfg.lr * g, p, jax.grad(
        lambda q: optax.softmax_cross_entropy_with_integer_labels(apply_fn(q, xb), yb)
        .mean())(p)))
    want = params
    for i, wi, yi in zip(idx, w, y):
        real = wi > 0
        want = sgd(want, x[i[real]], jnp.asarray(yi[real]))
    assert_trees_close(got, want, atol=1e-6)
    swept = unlearn_sweep("random_labels", arch, params, fsplit, digits_splits.val,
                          seeds=[0, 1], configs=[cfg])
    assert_trees_close(swept[0].params, got, atol=1e-6)


def test_teachers_of_a_batch_statistics_model_see_the_student_s_batch(digits_splits):
    """SCRUB / Bad Teacher took a batch-statistics model's teacher logits over the whole set at
    once, the student's over its batch: SCRUB's first max-step (teacher = student) read a KL
    of 0.02 and pushed along a spurious gradient; the reference loops run the teacher on the
    student's batch, where that KL is 0."""
    from hyperforget_jax.unlearn import (BadTeacherConfig, ScrubConfig, baselines,
                                         unlearn)

    def apply_fn(p, x):
        h = x.reshape(x.shape[0], -1) @ p["w"]     # (a bias: centred away, Adam's noise)
        h = (h - h.mean(0)) / jnp.sqrt(h.var(0) + 1e-5)
        return jax.nn.relu(h) @ p["v"]

    def init_fn(key):
        k1, k2 = jax.random.split(key)
        return {"w": 0.1 * jax.random.normal(k1, (64, 32)),
                "v": 0.5 * jax.random.normal(k2, (32, 10))}

    arch = models.as_model(apply_fn, (8, 8, 1), 10, init_fn=init_fn, name="centred_mlp")
    params = init_fn(jax.random.key(0))
    fsplit = data.resolve_forget(digits_splits.train, data.ForgetRequest(classes=(3,)))
    res = unlearn("scrub", arch, params, fsplit, digits_splits.val,
                  ScrubConfig(epochs=1, msteps=1), seed=0)
    assert abs(res.info["first_loss"]) < 1e-6, res.info          # −KL(teacher ‖ student) = 0
    # Bad Teacher's first step: KL of the student against the teachers on that same batch.
    cfg = BadTeacherConfig(epochs=1)
    res = unlearn("bad_teacher", arch, params, fsplit, digits_splits.val, cfg, seed=0)
    prep = baselines.prepare("bad_teacher", arch, params, fsplit, cfg, 0)
    pos = np.asarray(prep.member["pos"])[np.asarray(prep.plan["idx"][0])]
    xb = jnp.asarray(prep.shared["x"])[pos]
    t = jnp.where((pos < len(fsplit.forget))[:, None],
                  apply_fn(prep.member["incompetent_params"], xb), apply_fn(params, xb))
    want = baselines.kl_divergence(t, apply_fn(params, xb), cfg.kl_temperature)
    assert res.info["first_loss"] == pytest.approx(float(want), rel=1e-5)
    from hyperforget_jax.unlearn import unlearn_sweep

    for method, c in (("scrub", ScrubConfig(epochs=1, msteps=1)), ("bad_teacher", cfg)):
        swept = unlearn_sweep(method, arch, params, fsplit, digits_splits.val, seeds=[0, 1],
                              configs=[c])
        alone = unlearn(method, arch, params, fsplit, digits_splits.val, c, seed=1)
        assert_trees_close(swept[1].params, alone.params, atol=1e-5)


def test_the_distillation_blocks_refuse_logits_of_other_shapes_and_labels_of_another_form():
    """kl_divergence broadcast a (1, K) teacher over the batch (every row distilled towards
    row 0's) and read a (B, 1) student's KL as −0.94; dict outputs died in a bare TypeError.
    SCRUB's min-step skipped per_example_ce's label check (optax's "3 vs. 2" for a (B, 1)
    label column)."""
    from hyperforget_jax.errors import ArchitectureError, DataError
    from hyperforget_jax.unlearn import baselines as B

    rng = np.random.default_rng(0)
    w = jnp.asarray(rng.normal(size=(5, 3)) * 0.3, jnp.float32)
    x = jnp.asarray(rng.normal(size=(4, 5)), jnp.float32)
    y = jnp.array([0, 1, 2, 1])
    apply_fn = lambda p, x: x @ p                              # noqa: E731
    teacher = apply_fn(w, x)
    update = B.bad_teacher(apply_fn, 1.0).update
    for bad, words in ((teacher[:1], r"teacher's logits have shape \(1, 3\) but the model's "
                                     r"\(4, 3\)"),
                       (teacher[:, :1], r"\(4, 1\) but the model's \(4, 3\)")):
        with pytest.raises(DataError, match=words):
            jax.eval_shape(update, w, (), (x, bad))
    with pytest.raises(DataError, match=r"\(4, 3\) but the model's \(4, 1\)"):
        jax.eval_shape(B.bad_teacher(lambda p, x: (x @ p)[:, :1], 1.0).update, w, (),
                       (x, teacher))
    with pytest.raises(ArchitectureError, match="the model's logits are a dict"):
        jax.eval_shape(B.bad_teacher(lambda p, x: {"logits": x @ p}, 1.0).update, w, (),
                       (x, teacher))
    assert float(update(w, (), (x, teacher))[2]["loss"]) == pytest.approx(0.0, abs=1e-6)
    scrub = B.scrub(apply_fn, 4.0, 0.99, 0.001).update
    for is_max in (True, False):
        with pytest.raises(DataError, match=r"teacher's logits have shape \(1, 3\)"):
            jax.eval_shape(scrub, w, (), (x, teacher[:1]), (x, y, teacher), is_max)
    with pytest.raises(DataError, match=r"scrub's retain batch: labels of shape \(4, 1\).*"
                                        r"y\[:, 0\]"):
        jax.eval_shape(scrub, w, (), (x, teacher), (x, y[:, None], teacher), False)


@pytest.mark.parametrize("kw, words", [
    ({"ratio": 0.0}, r"ratio"), ({"ratio": -0.3}, r"ratio"), ({"ratio": 1.7}, r"ratio"),
    ({"ratio": "0.5"}, r"ratio='0.5' must be one number"),
    ({"ratio": 0.5, "batch_size": 0}, r"batch_size must be an integer >= 1")])
def test_saliency_mask_refuses_what_salun_config_refuses(digits_splits, kw, words):
    """ratio 0 or −0.3 still let a weight move, 1.7 all of them; batch 0 divided by zero."""
    from hyperforget_jax.unlearn import baselines as B

    arch = models.make_architecture("mlp", (8, 8, 1), 10)
    split = data.resolve_forget(digits_splits.train, data.ForgetRequest(classes=(3,)))
    with pytest.raises(ConfigError, match=words):
        B.saliency_mask(arch, arch.init(jax.random.key(0)), split, **kw)
