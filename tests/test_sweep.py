"""unlearn_sweep: seeds × configs as vmapped programs, every member equal to the one-by-one
``unlearn`` call (to 1e-4), grouping by shapes, stacked or shared originals."""

import dataclasses

import jax
import numpy as np
import pytest

from conftest import CompileCounter, assert_trees_close
from hyperforget_jax import data, models, train
from hyperforget_jax.errors import ArchitectureError, ConfigError, NonFiniteError
from hyperforget_jax.params import tree_index
from hyperforget_jax.unlearn import baselines
from hyperforget_jax.unlearn import (METHODS, BadTeacherConfig, GradTauConfig, NegGradConfig,
                                     NegGradPlusConfig, RandomLabelsConfig, SalUnConfig,
                                     ScrubConfig, unlearn, unlearn_sweep)

SEEDS = [0, 3]


@pytest.fixture(scope="module")
def setup(digits_splits):
    arch = models.make_architecture("gpt_mlp", digits_splits.train.x.shape[1:])
    fleet, _ = train.fit_fleet(arch, digits_splits.train,
                               train.TrainConfig(arch="gpt_mlp", epochs=4, lr=1e-2), SEEDS)
    split = data.resolve_forget(digits_splits.train, data.ForgetRequest(classes=(3,)))
    return arch, fleet.params, split, digits_splits.val


# Two configs each (float hyperparameters differ: one program), kept small for speed.
CONFIGS = {
    "gradtau": [GradTauConfig(epochs=3), GradTauConfig(epochs=3, lr=3e-3, alpha_scale=1.0)],
    "finetune": [GradTauConfig(epochs=2), GradTauConfig(epochs=2, weight_decay=0.0)],
    "retrain": [train.TrainConfig(arch="gpt_mlp", epochs=2),
                train.TrainConfig(arch="gpt_mlp", epochs=2, lr=3e-3)],
    "neggrad": [NegGradConfig(epochs=2, lr=1e-3), NegGradConfig(epochs=2, lr=3e-3)],
    "neggrad_plus": [NegGradPlusConfig(epochs=1), NegGradPlusConfig(epochs=1, beta=0.9)],
    "random_labels": [RandomLabelsConfig(epochs=1), RandomLabelsConfig(epochs=1, lr=0.03)],
    "salun": [SalUnConfig(epochs=1), SalUnConfig(epochs=1, mask_ratio=0.2, lr=0.02)],
    "scrub": [ScrubConfig(epochs=2, msteps=1), ScrubConfig(epochs=2, msteps=1, lr=2e-3)],
    "bad_teacher": [BadTeacherConfig(), BadTeacherConfig(lr=3e-4)],
}


def test_every_method_is_covered():
    assert set(CONFIGS) == set(METHODS)


@pytest.mark.parametrize("method", sorted(CONFIGS))
def test_sweep_members_equal_one_by_one_runs(setup, method):
    arch, stacked, split, val = setup
    configs = CONFIGS[method]
    results = unlearn_sweep(method, arch, stacked, split, val, seeds=SEEDS, configs=configs)
    assert len(results) == len(SEEDS) * len(configs)
    assert {r.info["group_size"] for r in results} == {4}      # one vmapped program
    k = 0
    for si, seed in enumerate(SEEDS):
        for cfg in configs:
            if method == "retrain":
                cfg = dataclasses.replace(cfg, seed=seed)
            one = unlearn(method, arch, tree_index(stacked, si), split, val, cfg, seed)
            res = results[k]
            assert res.info["seed"] == seed and res.info["steps"] == one.info["steps"]
            assert_trees_close(res.params, one.params, atol=1e-4)
            # and the same record: ∇τ's class-removal τ (log K) read log(the last run's
            # length of forget-epochs) in a sweep, 0.0 here (a loop variable shadowed K)
            for key, want in one.info.items():
                if isinstance(want, (str, dict, bool)) or want is None:
                    assert res.info[key] == want, key
                elif key != "wall_time_s":
                    assert res.info[key] == pytest.approx(want, rel=1e-4, abs=1e-6), key
            k += 1
    # members really differ (seeds and configs are not collapsed into one run)
    flat = lambda p: np.concatenate([np.ravel(l) for l in jax.tree.leaves(p)])
    assert np.abs(flat(results[0].params) - flat(results[1].params)).max() > 1e-5


def test_groups_by_shape_and_shares_one_original(setup):
    arch, stacked, split, val = setup
    original = tree_index(stacked, 0)
    configs = [GradTauConfig(epochs=2), GradTauConfig(epochs=2, batch_size=128),
               GradTauConfig(epochs=2, lr=2e-3)]
    results = unlearn_sweep("gradtau", arch, original, split, val, seeds=[1], configs=configs)
    assert [r.info["group_size"] for r in results] == [2, 1, 2]
    for r, cfg in zip(results, configs):
        one = unlearn("gradtau", arch, original, split, val, cfg, seed=1)
        assert_trees_close(r.params, one.params, atol=1e-4)
        np.testing.assert_allclose(r.info["forget_loss"], one.info["forget_loss"], rtol=1e-4)
    with CompileCounter() as c:  # the same shapes again: every program is the model's own
        unlearn_sweep("gradtau", arch, original, split, val, seeds=[1], configs=configs)
    assert c.n == 0


def test_gradtau_sweeps_over_forget_set_sizes_share_a_program(setup, digits_splits):
    """A sweep of one request passes its D_f and D_r rows joined (|D| rows, as ``unlearn``
    does): another forget-set size whose batch plan has the same shape (126 and 113 samples
    at batch 64: 2 × 64) compiles nothing (it compiled the vmapped run again per size)."""
    arch, stacked, _, val = setup
    original, cfg = tree_index(stacked, 0), [GradTauConfig(epochs=1, batch_size=64)]
    a, b = (data.resolve_forget(digits_splits.train, data.ForgetRequest(fraction=f, seed=1))
            for f in (0.1, 0.09))
    unlearn_sweep("gradtau", arch, original, a, val, configs=cfg)    # a fleet of one
    with CompileCounter() as c:
        unlearn_sweep("gradtau", arch, original, b, val, configs=cfg)
    assert c.n == 0 and len(a.forget) != len(b.forget)


def test_sweep_errors(setup):
    arch, stacked, split, val = setup
    with pytest.raises(ConfigError, match="seed must be an integer >= 0"):
        unlearn_sweep("gradtau", arch, stacked, split, val, seeds=[0, -1])
    with pytest.raises(ConfigError, match="at least one seed"):
        unlearn_sweep("gradtau", arch, stacked, split, val, seeds=[])
    # An empty grid ran the published config once per seed, as configs=None.
    with pytest.raises(ConfigError, match="at least one config"):
        unlearn_sweep("gradtau", arch, stacked, split, val, SEEDS, [])
    with pytest.raises(ConfigError, match="got a JAX PRNG key"):   # ran as the seeds [0, 0]
        unlearn_sweep("gradtau", arch, stacked, split, val, seeds=jax.random.PRNGKey(0))
    with pytest.raises(ConfigError, match="takes a GradTauConfig"):
        unlearn_sweep("gradtau", arch, stacked, split, val, SEEDS, [NegGradConfig()])
    # None seeds, or one config instead of a list: a ConfigError naming the form, not the
    # TypeError of the loop over them.
    with pytest.raises(ConfigError, match="must be sequences.*seeds=\\[0, 1\\]"):
        unlearn_sweep("gradtau", arch, stacked, split, val, seeds=None)
    with pytest.raises(ConfigError, match="GradTauConfig configs.*configs=\\[config\\]"):
        unlearn_sweep("gradtau", arch, stacked, split, val, SEEDS, GradTauConfig())
    # not a request, or not one per seed: an AttributeError / TypeError deep in the sweep
    with pytest.raises(ConfigError, match="a ForgetSplit.*got a list of Dataset, ForgetSplit"):
        unlearn_sweep("gradtau", arch, stacked, [split, val], val, SEEDS)
    with pytest.raises(ConfigError, match="or a list of them .one per seed., got a Dataset$"):
        unlearn_sweep("gradtau", arch, stacked, val, val, SEEDS)
    with pytest.raises(ConfigError, match="params_stacked must be True, False or None"):
        unlearn_sweep("gradtau", arch, stacked, split, val, SEEDS, params_stacked="no")
    # the originals as a list of trees (a loop of fit calls): not "another architecture"
    with pytest.raises(ArchitectureError, match="list of 2 parameter sets.*np.stack"):
        unlearn_sweep("gradtau", arch, [tree_index(stacked, i) for i in range(2)], split, val,
                      SEEDS)


def test_a_diverging_member_is_named_by_its_place_in_the_sweep(setup):
    """Configs of other shapes run in groups apart; a group's NaN error named the member by
    its place in the group: "sweep member 1", a healthy config, for member 2 (stop 63)."""
    arch, stacked, split, val = setup
    orig = tree_index(stacked, 0)
    for method, cfgs in (
            ("gradtau", [GradTauConfig(epochs=2), GradTauConfig(epochs=3),
                         GradTauConfig(epochs=2, lr=1e30)]),
            ("neggrad", [NegGradConfig(epochs=2), NegGradConfig(epochs=1),
                         NegGradConfig(epochs=2, lr=1e30)]),
            ("retrain", [train.TrainConfig(arch="gpt_mlp", epochs=2),
                         train.TrainConfig(arch="gpt_mlp", epochs=1),
                         train.TrainConfig(arch="gpt_mlp", epochs=2, lr=1e30)])):
        with pytest.raises(NonFiniteError, match=r"\(sweep member 2\)"):
            unlearn_sweep(method, arch, orig, split, val, seeds=[0], configs=cfgs)


def test_a_stack_of_other_than_one_original_per_seed_is_refused(setup):
    """params_stacked=True with 2 originals for 1 seed ran, the second never used; inferred,
    it was blamed on "another architecture" (stop 63)."""
    arch, stacked, split, val = setup
    with pytest.raises(ConfigError, match=r"params_stacked=True, but the parameters' leading "
                                          r"axes are \[2\] for 1 seed"):
        unlearn_sweep("gradtau", arch, stacked, split, val, seeds=[0], params_stacked=True)
    with pytest.raises(ConfigError, match="the parameters are 2 stacked originals for 3 seed"):
        unlearn_sweep("gradtau", arch, stacked, split, val, seeds=[0, 1, 2])


def test_stacked_params_of_a_model_without_init_must_be_declared(setup):
    # An apply_fn has no shapes to compare with: stacked originals were taken for one network
    # (each member started from the whole stack) and crashed with a raw broadcasting error.
    arch, stacked, split, val = setup
    apply_fn = lambda p, x: arch.apply(p, x)
    with pytest.raises(ConfigError, match="params_stacked=True or False"):
        unlearn_sweep("neggrad", apply_fn, stacked, split, val, SEEDS, [NegGradConfig(epochs=1)])


def _spy_shared_rows(monkeypatch, replace_with=None):
    """Records what :func:`data.shared_rows` returned in each runner (or makes it return
    ``replace_with(...)``): the modules import it by name."""
    import sys

    from hyperforget_jax.unlearn import baselines, gradtau_run
    U = sys.modules["hyperforget_jax.unlearn"]    # (the package's ``unlearn`` is the function)

    got = []

    def spy(splits):
        out = data.shared_rows(splits) if replace_with is None else replace_with(splits)
        got.append(out)
        return out
    for mod in (baselines, gradtau_run, U):
        monkeypatch.setattr(mod, "shared_rows", spy)
    return got


@pytest.mark.parametrize("method", ["gradtau", "retrain", "salun"])
def test_one_split_per_seed(setup, method, digits_splits, monkeypatch):
    # Random forgetting drawn with each seed: equal sizes, different contents. As many samples
    # as class 3 has, so the one-by-one runs have test_sweep_members_equal_one_by_one_runs'
    # shapes (Retrain's and SalUn's programs are shared; ∇τ's τ mode differs).
    arch, stacked, class_split, val = setup
    fraction = len(class_split.forget) / len(digits_splits.train)
    splits = [data.resolve_forget(digits_splits.train,
                                  data.ForgetRequest(fraction=fraction, seed=s))
              for s in SEEDS]
    assert len(splits[0].forget) == len(class_split.forget)
    # ∇τ: one run of 2 forget-epochs (runs of 2 + 1 chained: test_sweep_members_...).
    cfg = GradTauConfig(epochs=2) if method == "gradtau" else CONFIGS[method][0]
    got = _spy_shared_rows(monkeypatch)
    results = unlearn_sweep(method, arch, stacked, splits, val, seeds=SEEDS, configs=[cfg])
    assert results[0].info["group_size"] == 2
    # the members' data went to the device once: the training set's rows and two row maps
    assert len(got) == 1 and got[0].x.shape[0] == len(digits_splits.train)
    monkeypatch.undo()
    for si, (seed, sp) in enumerate(zip(SEEDS, splits)):
        c = dataclasses.replace(cfg, seed=seed) if method == "retrain" else cfg
        one = unlearn(method, arch, tree_index(stacked, si), sp, val, c, seed)
        assert_trees_close(results[si].params, one.params, atol=1e-4)
    with pytest.raises(ConfigError, match="equal forget and retain sizes"):
        other = data.resolve_forget(digits_splits.train, data.ForgetRequest(fraction=0.2))
        unlearn_sweep(method, arch, stacked, [splits[0], other], val, seeds=SEEDS)


def test_shared_rows_hold_each_row_once_and_give_back_every_split(digits_splits):
    train_ds = digits_splits.train
    splits = [data.resolve_forget(train_ds, data.ForgetRequest(fraction=0.1, seed=s))
              for s in (0, 1, 2)]
    rows = data.shared_rows(splits)
    assert rows.x.shape[0] == len(train_ds) and rows.forget.shape == (3, len(splits[0].forget))
    for k, sp in enumerate(splits):
        for idx, part in ((rows.forget[k], sp.forget), (rows.retain[k], sp.retain)):
            np.testing.assert_array_equal(rows.x[idx], part.x)
            np.testing.assert_array_equal(rows.y[idx], part.y)
    # U-LiRA's shadows: subsets of the training set, rows past the last one used not held
    sub = [data.ForgetSplit(train_ds.subset(f), train_ds.subset(r), f, r)
           for f, r in ((np.arange(0, 10), np.arange(10, 50)), (np.arange(5, 15),
                                                                np.arange(20, 60)))]
    rows = data.shared_rows(sub)
    assert rows.x.shape[0] == 60
    np.testing.assert_array_equal(rows.x[rows.retain[1]], sub[1].retain.x)
    # rows that do not agree where two splits place them, unequal sizes, one split: copies
    f, r = splits[1].forget_idx, splits[1].retain_idx
    moved = data.ForgetSplit(train_ds.subset((f + 1) % len(train_ds)), train_ds.subset(r),
                             f, r)
    assert data.shared_rows([splits[0], moved]) is None
    assert data.shared_rows([splits[0], sub[0]]) is None
    assert data.shared_rows(splits[:1]) is None


@pytest.mark.parametrize("method", ["neggrad_plus", "random_labels", "scrub", "bad_teacher",
                                    "retrain"])
def test_per_seed_sweep_on_shared_rows_is_bit_identical_to_copies(setup, method,
                                                                  digits_splits, monkeypatch):
    # The shared rows change where each member's batches are gathered from, not their values:
    # the same bits as the sweep that stacks a copy of each member's data (the path that
    # splits without a common training set still take).
    arch, stacked, class_split, val = setup
    fraction = len(class_split.forget) / len(digits_splits.train)
    splits = [data.resolve_forget(digits_splits.train,
                                  data.ForgetRequest(fraction=fraction, seed=s + 5))
              for s in SEEDS]
    cfg = CONFIGS[method][:1]
    got = _spy_shared_rows(monkeypatch)
    shared = unlearn_sweep(method, arch, stacked, splits, val, seeds=SEEDS, configs=cfg)
    assert got and got[0] is not None
    _spy_shared_rows(monkeypatch, replace_with=lambda splits: None)
    copies = unlearn_sweep(method, arch, stacked, splits, val, seeds=SEEDS, configs=cfg)
    for a, b in zip(shared, copies):
        assert_trees_close(a.params, b.params, atol=0.0)
        assert a.info.get("last_loss") == b.info.get("last_loss")     # Retrain has none
    if method == "bad_teacher":     # its members hold positions of D_f ∪ D_r, not images
        prep = baselines.prepare(method, arch, tree_index(stacked, 0), splits[0], cfg[0], 0)
        assert set(prep.member) == {"pos", "teacher"} and prep.member["pos"].ndim == 1


@pytest.mark.parametrize("method", ["gradtau", "retrain", "scrub"])
def test_map_vectorisation_equals_vmap(setup, method):
    # vectorize="map": members one after another inside one program (the CPU-friendly choice).
    # Every config, so the vmapped sweep is test_sweep_members_equal_one_by_one_runs' program
    # (for ∇τ one run of 2 forget-epochs: the first of that test's runs of 2 + 1).
    arch, stacked, split, val = setup
    cfgs = CONFIGS[method]
    if method == "gradtau":
        cfgs = [dataclasses.replace(c, epochs=2) for c in cfgs]
    a = unlearn_sweep(method, arch, stacked, split, val, SEEDS, cfgs, vectorize="map")
    b = unlearn_sweep(method, arch, stacked, split, val, SEEDS, cfgs)
    for x, y in zip(a, b):
        assert_trees_close(x.params, y.params, atol=1e-5)
    with pytest.raises(ConfigError, match="vectorize must be one of"):
        unlearn_sweep(method, arch, stacked, split, val, SEEDS, cfgs, vectorize="pmap")
