"""Every method through ``unlearn(...)`` on sklearn digits: runs, leaves the caller's params
alone, and moves the parameters in the method's direction."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import assert_trees_close, devices_or_skip
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
    large = unlearn("neggrad", arch, params, split, val, NegGradConfig(lr=1e-3)).params
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
    # Official notebooks: Fine-tune runs 2E epochs of descent on D_r.
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


def test_baseline_on_a_mesh_equals_one_device(setup):
    arch, params, split, val = setup
    cfg = baselines.C.NegGradPlusConfig(epochs=1, batch_size=64)
    want = unlearn("neggrad_plus", arch, params, split, val, cfg, seed=1)
    mesh = jax.make_mesh((4,), ("data",), devices=devices_or_skip(4))
    got = unlearn("neggrad_plus", arch, params, split, val, cfg, seed=1, mesh=mesh)
    assert_trees_close(got.params, want.params, atol=1e-5)
    assert got.info["steps"] == want.info["steps"] > 0
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
