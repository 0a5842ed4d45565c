"""NaN/inf guard: NaNs injected in the data, the loss or the parameters stop the run with a
:class:`NonFiniteError` naming the exact step, and never leave a corrupt checkpoint behind (the
steps already on disk stay restorable and finite; the failing epoch is not saved)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hyperforget_jax import data, models, train
from hyperforget_jax.checkpoint import Checkpointer
from hyperforget_jax.errors import CheckpointError, ConfigError, DataError, NonFiniteError

CFG = train.TrainConfig(arch="gpt_mlp", epochs=2, batch_size=64, lr=0.01)


@pytest.fixture(scope="module")
def arch():
    return models.make_architecture("gpt_mlp", (8, 8, 1))


def _with_nan_sample(ds: data.Dataset, i: int) -> data.Dataset:
    x = ds.x.copy()
    x[i, 4, 4, 0] = np.nan  # bypasses from_arrays' check, as a corrupted array in memory would
    return ds.replace(x=x)


def _first_step_using(sample: int, ds_len: int, cfg: train.TrainConfig, epoch: int) -> int:
    idx = data.batch_indices(cfg.seed, epoch, ds_len, cfg.batch_size)
    per_epoch = idx.shape[0]
    batch = int(np.argwhere(idx == sample)[0][0])
    return epoch * per_epoch + batch


def _assert_clean(ckpt_dir, template, steps):
    with Checkpointer(ckpt_dir) as ck:
        assert ck.all_steps() == steps
        for s in steps:
            state, _ = ck.restore(template, step=s)
            assert all(np.isfinite(np.asarray(l)).all() for l in jax.tree.leaves(state))
    leftovers = [p.name for p in ckpt_dir.iterdir() if not p.name.isdigit()]
    assert leftovers == []


def test_nan_in_data_mid_run_names_the_step_and_keeps_checkpoints(arch, digits_splits, tmp_path):
    """A NaN in one training image that epoch 0 leaves out (its last partial batch is dropped)
    and epoch 1 uses: epoch 0 runs clean and is checkpointed, and the run stops at exactly the
    first step of epoch 1 whose batch holds that image, leaving epoch 0's checkpoint intact."""
    ds = digits_splits.train
    idx0, idx1 = (data.batch_indices(CFG.seed, e, len(ds), CFG.batch_size) for e in (0, 1))
    bad_sample = int(np.setdiff1d(idx1, idx0)[0])
    want = _first_step_using(bad_sample, len(ds), CFG, epoch=1)
    ckpt_dir = tmp_path / "ckpt"
    with Checkpointer(ckpt_dir, max_to_keep=2) as ck:
        with pytest.raises(NonFiniteError, match=rf"at step {want} \(epoch 1, batch "):
            train.fit(arch, _with_nan_sample(ds, bad_sample), CFG, checkpointer=ck)
    template = train.init_state(arch, train.make_optimizer(CFG), jax.random.key(0))
    _assert_clean(ckpt_dir, template, [1])
    state1, _ = train.fit(arch, ds, dataclasses.replace(CFG, epochs=1))
    with Checkpointer(ckpt_dir) as ck:
        restored, _ = ck.restore(template)
    assert all(np.array_equal(a, b) for a, b in
               zip(jax.tree.leaves(restored.params), jax.tree.leaves(state1.params)))
    # Resuming that checkpoint on data that changed since (here: the NaN appearing between
    # two runs) is refused as other data; the checkpoint stays as it was.
    with Checkpointer(ckpt_dir, max_to_keep=2) as ck:
        with pytest.raises(CheckpointError, match="other data"):
            train.fit(arch, _with_nan_sample(ds, int(idx0[0, 0])), CFG, checkpointer=ck)
    _assert_clean(ckpt_dir, template, [1])


def test_overflowing_loss_stops_at_step_zero(arch, digits_splits, tmp_path):
    """Finite data whose loss overflows ((x − 0.5) · 1e38 → inf logits → NaN loss; centred,
    so the registered model's check for 0..255 images does not stop it first)."""
    ds = digits_splits.train
    huge = ds.replace(x=(ds.x - np.float32(0.5)) * np.float32(1e38))
    with Checkpointer(tmp_path / "ckpt") as ck:
        with pytest.raises(NonFiniteError, match=r"at step 0 \(epoch 0, batch 0\)"):
            train.fit(arch, huge, CFG, checkpointer=ck)
    assert list((tmp_path / "ckpt").iterdir()) == []


def test_nan_parameters_stop_at_step_zero(arch, digits_splits, tmp_path):
    # NaN starting parameters are named as the cause: the message blamed the data or the
    # learning rate ("Check the data for NaN/inf or lower the learning rate").
    from hyperforget_jax.unlearn.gradtau_stream import run_gradtau_stream
    params = arch.init(jax.random.key(0))
    params = jax.tree.map(lambda l: l.at[(0,) * l.ndim].set(jnp.nan), params)
    named = r": {} hold NaN/inf \(at Dense_0\.bias\); pass finite starting parameters"
    with Checkpointer(tmp_path / "ckpt") as ck:
        with pytest.raises(NonFiniteError, match="^fit" + named.format("init_params")):
            train.fit(arch, digits_splits.train, CFG, checkpointer=ck, init_params=params)
    assert list((tmp_path / "ckpt").iterdir()) == []
    ds = digits_splits.train
    batch = (ds.x[:64], ds.y[:64])
    with pytest.raises(NonFiniteError, match="^fit_stream" + named.format("init_params")):
        train.fit_stream(arch, [batch], CFG, init_params=params)
    with pytest.raises(NonFiniteError, match="^run_gradtau_stream" + named.format("params")):
        run_gradtau_stream(arch, params, lambda e: [(batch, batch)], n_forget=64, n_retain=64,
                           tau=2.0)


def test_step_guard_keeps_the_old_state(arch, digits_splits):
    """The jitted step itself never applies a non-finite update."""
    tx = train.make_optimizer(CFG)
    state = train.init_state(arch, tx, jax.random.key(0))
    step = jax.jit(train.make_train_step(arch.apply, tx))
    x = jnp.asarray(digits_splits.train.x[:8]).at[0, 0, 0, 0].set(jnp.inf)
    new, m = step(state, (x, jnp.asarray(digits_splits.train.y[:8])))
    assert not bool(m["finite"])
    assert int(new.step) == 0
    assert all(np.array_equal(a, b) for a, b in
               zip(jax.tree.leaves(new.params), jax.tree.leaves(state.params)))


def test_guards_keep_the_old_state_on_their_own_and_however_many_in_a_row():
    """guarded_apply keeps the old state by itself (with an optimiser that has no guard), and
    skip_nonfinite skips every non-finite update of a run of them, not only the first."""
    import optax

    p = {"w": jnp.ones(3)}
    nan = {"w": jnp.array([jnp.nan, 1.0, 1.0])}
    sgd = optax.sgd(0.1)
    for loss, grads in ((jnp.float32(1.0), nan), (jnp.float32(jnp.nan), {"w": jnp.ones(3)})):
        new, _, finite = train.guarded_apply(p, sgd.init(p), grads, loss, sgd)
        assert not bool(finite) and new["w"].tolist() == [1.0] * 3
    tx = train.skip_nonfinite(sgd)
    s = tx.init(p)
    for _ in range(3):
        u, s = tx.update(nan, s, p)
        assert u["w"].tolist() == [0.0] * 3 and not bool(train.update_was_finite(s))


def test_update_was_finite_reads_a_guard_inside_the_users_chain():
    """A skip_nonfinite inside a user's chain / inject_hyperparams / SalUn's masked_updates was
    not read (True: "no guard"), so apply_step counted the skipped update as a step and a loop
    keeping its ∇τ state on skipped steps ran α a step ahead. (Inside MultiSteps it is left
    unread: stale between the k-th calls.)"""
    import optax

    from hyperforget_jax.unlearn import baselines

    p = {"w": jnp.ones(3)}
    nan = {"w": jnp.array([jnp.nan, 1.0, 1.0])}
    guarded = lambda lr=0.1: train.skip_nonfinite(optax.sgd(lr))
    for tx in (optax.chain(optax.clip_by_global_norm(1.0), guarded()),
               optax.inject_hyperparams(guarded)(lr=0.1),
               baselines.masked_updates(guarded(), {"w": jnp.ones(3)})):
        @jax.jit
        def check(s, tx=tx):
            flags = [train.update_was_finite(tx.update(g, s, p)[1]) for g in ({"w": p["w"]}, nan)]
            return flags, train.apply_step(train.TrainState(jnp.int32(0), p, s), nan,
                                           jnp.float32(1.0), tx)
        (ok, bad), (ts, finite) = check(tx.init(p))
        assert bool(ok) and not bool(bad) and not bool(finite)
        assert int(ts.step) == 0 and ts.params["w"].tolist() == [1.0] * 3


def test_fleet_names_member_and_step(arch, digits_splits):
    seeds = [0, 1]
    n = len(digits_splits.train)
    used = [set(data.batch_indices(s, 0, n, CFG.batch_size).ravel().tolist()) for s in seeds]
    sample = min(used[0] & used[1])
    ds = _with_nan_sample(digits_splits.train, sample)
    steps = [_first_step_using(sample, n, dataclasses.replace(CFG, seed=s), 0) for s in seeds]
    want, member = min(steps), int(np.argmin(steps))
    with pytest.raises(NonFiniteError, match=rf"at step {want} .*\(fleet member {member}\)"):
        train.fit_fleet(arch, ds, dataclasses.replace(CFG, epochs=1), seeds)


def test_gradtau_names_the_step(arch, digits_splits):
    from hyperforget_jax.unlearn import GradTauConfig, unlearn

    params = arch.init(jax.random.key(0))
    split = data.resolve_forget(digits_splits.train, data.ForgetRequest(classes=(3,)))
    # A step at lr 1e30 leaves finite parameters of ~1e30, whose next loss is not finite.
    with pytest.raises(NonFiniteError, match=r"at step 1 \(forget-epoch 1, batch pair 0\)"):
        unlearn("gradtau", arch, params, split, digits_splits.val,
                GradTauConfig(epochs=2, lr=1e30))
    # NaN images are refused before any step, naming the set.
    nan_forget = split.forget.replace(x=np.full_like(split.forget.x, np.nan))
    bad = split._replace(forget=nan_forget)
    with pytest.raises(DataError, match="forget set has NaN or inf images"):
        unlearn("gradtau", arch, params, bad, digits_splits.val, GradTauConfig(epochs=1))


def test_update_that_overflows_the_parameters_is_flagged(arch, digits_splits):
    """Finite loss and gradients whose update overflows the parameters (a huge learning rate):
    ``skip_nonfinite`` only sees the gradients, so the flag must look at the new parameters, or
    a run whose last step overflows returns NaN/inf parameters as if they were fine."""
    import optax

    tx = train.skip_nonfinite(optax.sgd(1.0))
    state = train.TrainState(jnp.zeros((), jnp.int32), {"w": jnp.array([3e38], jnp.float32)},
                             tx.init({"w": jnp.zeros(1)}))
    new, finite = train.apply_step(state, {"w": jnp.array([-3e38], jnp.float32)},
                                   jnp.float32(1.0), tx)
    assert not bool(finite) and int(new.step) == 0
    # End to end: NegGrad's one SGD step (one batch, one epoch) on large weights overflows
    # them at a learning rate that float32 holds (it returned NaN/inf parameters); 1e39, inf
    # in float32, is refused up front.
    from hyperforget_jax.unlearn import NegGradConfig, unlearn

    with pytest.raises(ConfigError, match=r"beyond float32"):
        NegGradConfig(lr=1e39)
    ds = digits_splits.train
    split = data.resolve_forget(ds, data.ForgetRequest(classes=(3,)))
    large = jax.tree.map(lambda l: 10 * l, arch.init(jax.random.key(0)))
    with pytest.raises(NonFiniteError, match="neggrad: non-finite loss, parameters or optimiser "
                                             "state at step 0"):
        unlearn("neggrad", arch, large, split, digits_splits.val,
                NegGradConfig(lr=3e38, epochs=1, batch_size=4096))


def test_an_optimiser_state_overflowing_to_inf_is_flagged(digits_splits):
    """A finite gradient whose square overflows float32 set Adam's nu to inf: that weight's
    update was 0 in every later step, the loss and parameters finite, the step counted as
    applied; fit returned the frozen weight (with a Checkpointer it failed at the first save).
    A state value that was inf before the step (e.g. reduce_on_plateau's best value) is not
    read."""
    import optax

    def apply_fn(p, x):
        return x.reshape(x.shape[0], -1) @ p["w"] + p["b"] * 1e21

    p0 = {"w": jnp.zeros((64, 10), jnp.float32), "b": jnp.zeros((10,), jnp.float32)}
    with pytest.raises(NonFiniteError, match=r"optimiser state at step 0 \(epoch 0, batch 0\)"):
        train.fit(apply_fn, digits_splits.train, train.TrainConfig(epochs=1, weight_decay=0.0),
                  init_params=p0)
    tx = optax.adam(1e-3)
    for step in (train.guarded_update, train.apply_step):
        state = train.TrainState(jnp.zeros((), jnp.int32), p0, tx.init(p0))
        grads = {"w": jnp.zeros((64, 10)), "b": jnp.full((10,), 1e20, jnp.float32)}
        new, finite = step(state, grads, jnp.float32(1.0), tx)
        assert not bool(finite) and int(new.step) == 0
    keeps_inf = optax.GradientTransformation(lambda p: {"best": jnp.float32(jnp.inf)},
                                             lambda u, s, p=None: (u, s))
    plateau = optax.chain(optax.adam(1e-3), keeps_inf)
    state = train.TrainState(jnp.zeros((), jnp.int32), p0, plateau.init(p0))
    assert not all(np.isfinite(l).all() for l in jax.tree.leaves(state.opt_state))   # inf
    new, finite = train.guarded_update(state, jax.tree.map(jnp.ones_like, p0), jnp.float32(1.0),
                                       plateau)
    assert bool(finite) and int(new.step) == 1


def test_a_last_update_leaving_nan_outputs_is_refused(arch, digits_splits, tmp_path):
    """lr 1e30, one step: the parameters stay finite (the step's guard passes) but the model's
    outputs are NaN. fit, ∇τ, Fine-tune and NegGrad returned them as results; ∇τ measured a
    NaN forget loss and only warned ("raise ... the learning rate"); a checkpointed run saved
    them as its end. The sweeps' fleets too."""
    from hyperforget_jax.unlearn import DEFAULT_CONFIGS, unlearn, unlearn_sweep

    small = digits_splits.train.subset(np.arange(64))
    with pytest.raises(NonFiniteError, match="fit: the last update left finite parameters "
                                             "whose outputs are NaN/inf"):
        train.fit(arch, small, dataclasses.replace(CFG, epochs=1, lr=1e30))
    with pytest.raises(NonFiniteError, match=r"fit_fleet: .* NaN/inf \(fleet member 0\)"):
        train.fit_fleet(arch, small, dataclasses.replace(CFG, epochs=1, lr=1e30), seeds=[0, 1])
    params, _ = train.fit(arch, small, dataclasses.replace(CFG, epochs=1))
    split = data.resolve_forget(digits_splits.train, data.ForgetRequest(classes=(3,)))
    for method in ("gradtau", "finetune", "neggrad"):
        cfg = DEFAULT_CONFIGS[method](lr=1e30, epochs=1)
        with pytest.raises(NonFiniteError, match=f"{method}: the last update left"):
            unlearn(method, arch, params.params, split, digits_splits.val, config=cfg,
                    forget_classes=(3,))
    ckpt = tmp_path / "gt"
    with Checkpointer(ckpt) as c, pytest.raises(NonFiniteError, match="gradtau: the last"):
        unlearn("gradtau", arch, params.params, split, digits_splits.val,
                config=DEFAULT_CONFIGS["gradtau"](lr=1e30, epochs=1), forget_classes=(3,),
                checkpointer=c)
    with Checkpointer(ckpt) as c:
        assert c.latest_step() is None               # nothing saved as the run's end
    for method in ("gradtau", "neggrad"):
        with pytest.raises(NonFiniteError, match=f"{method} sweep: .* \\(sweep member 0\\)"):
            unlearn_sweep(method, arch, params.params, split, digits_splits.val,
                          configs=[DEFAULT_CONFIGS[method](lr=1e30, epochs=1)] * 2,
                          forget_classes=(3,))


def test_a_model_that_masks_a_class_with_minus_inf_is_not_refused_at_the_end(digits_splits):
    """A −inf logit rules a class out (the evaluation takes it so); the end-of-run output check
    read it as a divergence and refused fit's and every method's result."""
    from hyperforget_jax.unlearn import DEFAULT_CONFIGS, unlearn

    def init_fn(key):
        k1, k2 = jax.random.split(key)
        return {"w": 0.1 * jax.random.normal(k1, (64, 32)),
                "v": 0.1 * jax.random.normal(k2, (32, 10))}

    def apply_fn(p, x):
        logits = jax.nn.relu(x.reshape(x.shape[0], -1) @ p["w"]) @ p["v"]
        return logits.at[:, 9].set(-jnp.inf)          # class 9 masked out

    masked = models.as_model(apply_fn, (8, 8, 1), 10, init_fn=init_fn, name="masked_mlp")
    tr = digits_splits.train.subset(np.flatnonzero(digits_splits.train.y != 9))
    val = digits_splits.val.subset(np.flatnonzero(digits_splits.val.y != 9))
    state, _ = train.fit(masked, tr, train.TrainConfig(epochs=1, batch_size=64, lr=0.01))
    fs = data.resolve_forget(tr, data.ForgetRequest(classes=(3,)))
    for method in ("finetune", "neggrad_plus"):
        unlearn(method, masked, state.params, fs, val, DEFAULT_CONFIGS[method](epochs=1))
    # Outputs with no finite logit in a row stay refused, as NaN and +inf do.
    from hyperforget_jax.train_run import _sound
    assert not bool(_sound(jnp.full((2, 3), -jnp.inf))) and bool(_sound(
        jnp.array([[0.0, -jnp.inf], [1.0, 2.0]])))
    assert not bool(_sound(jnp.array([[jnp.inf, 0.0]]))) and not bool(_sound(
        jnp.array([[jnp.nan, 0.0]])))


def test_evaluate_refuses_non_finite_outputs(arch, digits_splits):
    """NaN logits have argmax 0: a diverged model used to score class 0's share as accuracy."""
    from hyperforget_jax import metrics

    params = jax.tree.map(lambda l: l.at[(0,) * l.ndim].set(jnp.nan), arch.init(jax.random.key(0)))
    test = digits_splits.test
    with pytest.raises(NonFiniteError, match=rf"NaN/inf for {len(test)} of {len(test)} samples"):
        metrics.evaluate(arch.apply, params, test.x, test.y, test.num_classes)
    # A class ruled out with −inf logits (a mask) is no divergence: evaluated as usual.
    masked = lambda p, x: arch.apply(p, x).at[:, 9].set(-jnp.inf)
    out = metrics.evaluate(masked, arch.init(jax.random.key(0)), test.x, test.y, test.num_classes)
    assert out["per_class_accuracy"][9] == 0.0 and 0.0 <= out["accuracy"] <= 1.0
    # Finite logits whose spread overflows the loss (±3e38) are a diverged model too: the
    # evaluation reported `loss: inf` (null in results.json) as the model's test loss.
    spread = lambda p, x: jnp.where(jnp.arange(10) % 2 == 0, 3e38, -3e38) + 0 * arch.apply(p, x)
    with pytest.raises(NonFiniteError, match="NaN/inf for"):
        metrics.evaluate(spread, arch.init(jax.random.key(0)), test.x, test.y,
                         test.num_classes)
    # Finite parameters whose outputs overflow (what one step at lr 1e38 leaves): the
    # unlearning evaluation names the model, not the attacks' "member_losses contains NaN or
    # inf values ... check the checkpoint" (a DataError for data that was fine).
    from hyperforget_jax.evaluation import evaluate_unlearning

    huge = jax.tree.map(lambda l: 1e30 * l, arch.init(jax.random.key(0)))
    request = data.ForgetRequest(classes=(3,))
    fsplit = data.resolve_forget(digits_splits.train, request)
    with pytest.raises(NonFiniteError, match=r"outputs on the retain set \('digits'\) are "
                                             r"NaN/inf for \d+ of \d+ samples"):
        evaluate_unlearning(arch, huge, digits_splits, fsplit, request)


def test_evaluate_gan_refuses_a_diverged_generator_or_discriminator(digits_splits):
    """NaN samples all get the judge's class 0: forgotten_share read 0.0 (perfect forgetting)
    and FID / IS finite; NaN D scores ended in scikit-learn's 'Input contains NaN'."""
    from hyperforget_jax.gan import metrics as GM
    from hyperforget_jax.gan import train as GT

    splits = digits_splits
    garch = GT.gan_arch_of(GT.GANConfig(arch="mlp"), splits.train.x.shape[1:])
    g, d = garch.init(jax.random.key(0))
    jarch = models.make_architecture("mlp", splits.train.x.shape[1:], splits.train.num_classes)
    judge = GM.Judge(jarch, jarch.init(jax.random.key(1)))
    nan = lambda p: jax.tree.map(lambda l: l.at[(0,) * l.ndim].set(jnp.nan), p)
    forget = splits.train.x[splits.train.y == 3]
    retain = splits.train.x[splits.train.y != 3]
    cfg = GM.EvalConfig(num_samples=64, downstream_samples=0)
    with pytest.raises(NonFiniteError, match="generator's samples hold NaN/inf"):
        GM.evaluate_gan(garch, nan(g), d, judge, splits, forget, retain, [3], cfg)
    with pytest.raises(NonFiniteError, match="discriminator's scores hold NaN/inf"):
        GM.evaluate_gan(garch, g, nan(d), judge, splits, forget, retain, [3], cfg)
    # A diverged judge: forgotten_share read 0.0 with a finite classifier-FID (ReLU kept the
    # features finite), only classifier-IS was NaN.
    with pytest.raises(NonFiniteError, match=r"judge's outputs on the generator's samples hold "
                                              r"NaN/inf \(64 of 64\); the judge's parameters"):
        GM.evaluate_gan(garch, g, d, GM.Judge(jarch, nan(judge.params)), splits, forget, retain,
                        [3], cfg)


def test_unlearn_gan_names_a_diverged_original_as_the_cause(digits_splits, monkeypatch):
    """It stopped at round 0 advising a lower learning rate or λ_u, which cannot help."""
    from hyperforget_jax.gan import train as GT
    from hyperforget_jax.gan import unlearn as GU

    splits = digits_splits
    garch = GT.gan_arch_of(GT.GANConfig(arch="mlp"), splits.train.x.shape[1:])
    g, d = garch.init(jax.random.key(0))
    d = jax.tree.map(lambda l: l.at[(0,) * l.ndim].set(jnp.inf), d)
    cfg = dataclasses.replace(GU.ITEM_RECIPE, max_rounds=1, check_every=1, pool_size=64,
                              fake_label="hard")
    # The rounds stand in for the compiled chunk (≈ 8 s to compile here): they report what
    # any chunk run from this D reports, a non-finite step.
    monkeypatch.setattr(GU, "_compiled_rounds", lambda arch, key: (
        lambda state, *_: (state, {"finite": np.zeros(1, bool)})))
    with pytest.raises(NonFiniteError, match=r"^the original discriminator's parameters hold "
                                             r"NaN/inf \(at Dense_0\.bias\); unlearn a finite"):
        GU.unlearn_gan(garch, g, d, retain_x=splits.train.x[8:], forget_x=splits.train.x[:8],
                       heldout_x=splits.val.x, cfg=cfg)


def test_update_was_finite_reads_every_guard_of_a_multi_transform():
    """With one guard per group of ``optax.multi_transform``, only the first in tree order was
    read: a NaN gradient in the second group skipped that group's update, yet the step was
    reported as applied (and counted by apply_step)."""
    import optax

    p = {"a": jnp.ones(2), "b": jnp.ones(2)}
    guarded = train.skip_nonfinite(optax.sgd(0.1))
    tx = optax.multi_transform({"a": guarded, "b": guarded}, {"a": "a", "b": "b"})
    s = tx.init(p)
    for bad in ("a", "b"):
        grads = {**p, bad: jnp.array([jnp.nan, 1.0])}
        ts, finite = train.apply_step(train.TrainState(jnp.int32(0), p, s), grads,
                                      jnp.float32(1.0), tx)
        assert not bool(finite) and int(ts.step) == 0, bad
        assert ts.params[bad].tolist() == [1.0, 1.0]
    assert bool(train.update_was_finite(tx.update(p, s, p)[1]))
