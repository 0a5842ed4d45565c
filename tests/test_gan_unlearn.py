"""GAN unlearning: fake labels on a constructed D, substitution on a constructed case, and a
short cascade on a tiny GAN that lowers D's score on the forgotten items."""

import dataclasses
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import load_experiment
from hyperforget_jax import data, xla
from hyperforget_jax.errors import ConfigError, DataError, ForgetRequestError
from hyperforget_jax.gan import unlearn as U
from hyperforget_jax.gan.models import make_gan_arch
from hyperforget_jax.gan.train import GANConfig, d_scores, generate, train_gan
from hyperforget_jax.gan.train import sample as T_sample, save_grid as T_save_grid
from hyperforget_jax.models import make_architecture


class _ConstArch:
    """A stand-in GAN: G(z) = z reshaped to 1×1×1 images; D(x) = logit of the pixel value,
    so σ(D(x)) = x exactly."""

    image_shape = (1, 1, 1)
    latent_dim = 1

    def generate(self, g, z):
        return jnp.clip(z * 0 + g, 0, 1).reshape(-1, 1, 1, 1)

    def discriminate(self, d, x):
        p = jnp.clip(x.reshape(x.shape[0]), 1e-6, 1 - 1e-6)
        return jnp.log(p) - jnp.log1p(-p)

    def sample_latents(self, key, n):
        return jax.random.normal(key, (n, 1))

    def check_images(self, x, what, min_count=1):    # GANArch's check (d_scores reads it)
        from hyperforget_jax.gan.models import GANArch
        return GANArch.check_images(self, x, what, min_count)

    def program(self, key, build):  # GANArch's owner of compiled programs; none kept here
        return build()

    def whole_calls(self, role, params, x):    # per-sample networks: chunks are exact
        return False


def test_fake_labels_on_constructed_discriminator():
    arch = _ConstArch()
    assert U.fake_label("hard", arch, None, None) == 0.0
    # G emits the constant 0.3 image, so σ(D(G(z))) = 0.3 for every code.
    assert U.fake_label("generated", arch, jnp.float32(0.3), None) == pytest.approx(0.3, abs=1e-5)
    held = np.array([0.2, 0.4, 0.9], np.float32).reshape(3, 1, 1, 1)
    assert U.fake_label("heldout", arch, None, None, heldout_x=held) == pytest.approx(0.5)
    with pytest.raises(ConfigError):
        U.fake_label("heldout", arch, None, None)
    with pytest.raises(ConfigError):
        U.UnlearnConfig(fake_label="soft")


def test_class_substitution_flags_the_right_codes():
    # Fake generator: sample i is a 2×2 image filled with value i/10; fake classifier: label =
    # round(10 * mean pixel) % 3. Forget class 1 → codes 1, 4, 7.
    codes = np.arange(9, dtype=np.float32)[:, None] * np.ones((1, 2), np.float32)
    samples = np.repeat((np.arange(9) / 10)[:, None, None, None], 2, 1).repeat(2, 2)
    classify = lambda x: np.round(10 * x.mean((1, 2, 3))).astype(int) % 3
    flagged = U.flag_class_codes(samples, classify, [1])
    np.testing.assert_array_equal(np.flatnonzero(flagged), [1, 4, 7])
    # Latent level: each flagged code takes the sample of its nearest unflagged code
    # (1 → 0 or 2, ties to the first: 0; 4 → 3; 7 → 6).
    sub = U.substitutes("latent", codes, samples, flagged, retain_x=samples[:0])
    np.testing.assert_allclose(sub[:, 0, 0, 0], [0.0, 0.3, 0.6])
    # Data level: the nearest retained real image in pixel space.
    retain = np.stack([np.full((2, 2, 1), v, np.float32) for v in (0.05, 0.42, 0.9)])
    sub = U.substitutes("data", codes, samples, flagged, retain_x=retain)
    np.testing.assert_allclose(sub[:, 0, 0, 0], [0.05, 0.42, 0.9])


def test_kept_class_mix_and_its_drift():
    labels = np.array([0, 0, 1, 2, 2, 2, 3, 3])              # forget class 1
    mix = U.kept_class_mix(labels, [1])
    assert mix == pytest.approx({0: 2 / 7, 2: 3 / 7, 3: 2 / 7})
    collapsed = U.kept_class_mix(np.array([2, 2, 2, 2, 1]), [1])   # everything on class 2
    assert collapsed == {2: 1.0}
    assert U.mix_drift(mix, mix) == 0.0
    assert U.mix_drift(collapsed, mix) == pytest.approx(4 / 7)      # 0.5·(2/7 + 4/7 + 2/7)
    assert U.mix_drift({0: 1.0}, {2: 1.0}) == 1.0
    assert U.mix_drift({}, mix) == 1.0                              # nothing kept at all
    with pytest.raises(ConfigError, match=r"max_kept_drift is a total-variation distance"):
        U.UnlearnConfig(max_kept_drift=1.5)


def test_item_substitution_flags_nearest_samples():
    samples = np.array([0.0, 0.1, 0.5, 0.52, 0.9, 1.0], np.float32).reshape(6, 1, 1, 1)
    items = np.array([0.49, 0.93], np.float32).reshape(2, 1, 1, 1)
    np.testing.assert_array_equal(np.flatnonzero(U.flag_item_codes(samples, items, k=1)), [2, 4])
    np.testing.assert_array_equal(np.flatnonzero(U.flag_item_codes(samples, items, k=2)),
                                  [2, 3, 4, 5])
    # k = -1 flagged all six, 0 none; no items or items of another shape were NumPy's errors
    # (stop 63).
    for k in (-1, 0, True, 1.5):
        with pytest.raises(ConfigError, match="flag_item_codes: k must be an integer >= 1"):
            U.flag_item_codes(samples, items, k=k)
    for bad in (items[:0], items.reshape(2, 1, 1)):
        with pytest.raises(DataError, match="flag_item_codes: items must be at least one"):
            U.flag_item_codes(samples, bad)


@pytest.fixture(scope="module")
def tiny_gan(digits_splits):
    # The normal prior: after 8 epochs the mixture's G still draws one grey blob (pixel std
    # across samples 0.004; 0.16 by 30 epochs, docs/gan.md), and the stand-in judges below
    # need samples that differ. The mixture is trained in test_gan_models.py / test_gan_cli.py.
    gan, _, arch = train_gan(digits_splits.train.subset(np.arange(512)),
                             GANConfig(epochs=8, latent_prior="normal"))
    return gan, arch


# Data level here (its compiled chunk is shared with the resume test below); the latent-level
# cascade runs end to end in tests/test_gan_cli.py (the class recipe).
@pytest.mark.parametrize("substitution", ["data"])
def test_short_cascade_lowers_d_score_on_forgotten_items(digits_splits, tiny_gan, substitution):
    train = digits_splits.train
    gan, arch = tiny_gan
    forget = train.x[:16]
    before = d_scores(arch, gan.d_params, forget).mean()
    cfg = U.UnlearnConfig(fake_label="hard", substitution=substitution, check_every=10,
                          max_rounds=30, pool_size=256)
    # Params committed to a device, as `load_gan_run` restores them for `gan unlearn`: every
    # chunk then gets its state committed alike, so the chunks run one program (the first
    # used to get uncommitted counters: a second compilation of the chunk).
    placed, programs = [], []
    chunk_of = U._compiled_rounds

    def spy(arch, key):
        run = chunk_of(arch, key)

        def call(state, *rest):
            placed.append({a.committed for a in jax.tree.leaves(state)})
            out = run(state, *rest)
            programs.append(run._cache_size())
            return out
        return call

    g, d = jax.device_put((gan.g_params, gan.d_params), jax.devices()[0])
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(U, "_compiled_rounds", spy)
        res = U.unlearn_gan(arch, g, d, retain_x=train.x[16:512], forget_x=forget,
                            heldout_x=digits_splits.val.x, cfg=cfg)
    assert len(placed) == res.rounds // 10 >= 2 and all(p == {True} for p in placed), placed
    assert programs[0] == programs[-1], programs
    after = d_scores(arch, res.d_params, forget).mean()
    assert after < before - 0.1, (before, after)
    assert res.rounds >= 10 and res.y_f == 0.0 and res.history[0]["flagged"] > 0
    for leaf in jax.tree.leaves(res.g_params):
        assert np.all(np.isfinite(np.asarray(leaf)))


def test_a_sweep_over_rates_and_weights_reuses_the_compiled_chunk(digits_splits, tiny_gan):
    """unlearn_gan calls that differ only in lr, d_lr, λ_s or λ_u (a sweep in one process)
    run one compiled chunk: each learning rate and weight used to compile its own (7-10 s and
    ≈ 20 MB for the digits MLP GAN, kept for the life of the process)."""
    from conftest import CompileCounter

    train = digits_splits.train
    gan, arch = tiny_gan
    # The chunk of test_short_cascade_lowers_d_score_on_forgotten_items (same structure).
    cfg = U.UnlearnConfig(fake_label="hard", substitution="data", check_every=10,
                          max_rounds=10, pool_size=256)
    kw = dict(retain_x=train.x[16:512], forget_x=train.x[:16], heldout_x=digits_splits.val.x)
    g, d = jax.device_put((gan.g_params, gan.d_params), jax.devices()[0])
    first = U.unlearn_gan(arch, g, d, cfg=cfg, **kw)
    other = dataclasses.replace(cfg, lr=2 * cfg.lr, d_lr=cfg.d_lr / 2, lambda_s=0.3,
                                lambda_u=8.0)
    with CompileCounter() as c:
        second = U.unlearn_gan(arch, g, d, cfg=other, **kw)
    assert c.n == 0
    assert not np.array_equal(np.asarray(jax.tree.leaves(first.g_params)[0]),
                              np.asarray(jax.tree.leaves(second.g_params)[0]))


def test_an_interrupted_cascade_closes_its_progress_bar(digits_splits, tiny_gan, monkeypatch):
    """Ctrl-C (or a NonFiniteError) inside the loop left the bar open while the traceback lived
    (a notebook keeps the last one): the rerun's bar was drawn a line down."""
    from tqdm.auto import tqdm

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    gan, arch = tiny_gan
    train = digits_splits.train
    monkeypatch.setattr(U, "_check", interrupted)
    before = set(tqdm._instances)
    with pytest.raises(KeyboardInterrupt) as info:
        U.unlearn_gan(arch, gan.g_params, gan.d_params, retain_x=train.x[16:512],
                      forget_x=train.x[:16], heldout_x=digits_splits.val.x,
                      cfg=U.UnlearnConfig(fake_label="hard", substitution="data",
                                          check_every=10, max_rounds=10, pool_size=256),
                      progress=True)
    assert info.traceback and not set(tqdm._instances) - before


def test_class_request_needs_a_classifier_that_names_the_forget_images():
    arch = make_gan_arch("mlp", (8, 8, 1))
    g, d = arch.init(jax.random.key(0))
    x = np.zeros((4, 8, 8, 1), np.float32)
    with pytest.raises(ConfigError):
        U.unlearn_gan(arch, g, d, retain_x=x, forget_x=x, heldout_x=x, forget_classes=(1,))
    # A class the classifier never names would read a share of 0 and stop at once "met".
    with pytest.raises(ForgetRequestError, match=r"files 25% of them under those classes "
                                                 r"\(mostly under 0, 1\)"):
        U.unlearn_gan(arch, g, d, retain_x=x, forget_x=x, heldout_x=x, forget_classes=(1,),
                      classify=lambda s: np.array([0, 0, 0, 1]))
    # An item request does not read classify: documented where the parameter is, since one
    # call with forget_classes=request.classes, classify=... serves both kinds of request.
    assert "Not read for item unlearning" in " ".join(U.unlearn_gan.__doc__.split())


def test_the_default_recipe_is_the_one_of_the_request_kind(monkeypatch):
    """``unlearn_gan`` without a ``cfg`` runs the recipe ``hyperforget gan unlearn`` runs for
    the same request (``default_recipe``). It ran ITEM_RECIPE for every request, so a class
    request from Python got the item recipe (held-out fake label, λ_u 4, 400 rounds, no
    anchor) where the CLI ran CLASS_RECIPE: other numbers for the same settings."""
    arch = make_gan_arch("mlp", (8, 8, 1))
    g, d = arch.init(jax.random.key(0))
    x = np.zeros((4, 8, 8, 1), np.float32)
    seen = []

    def stop(kind, *a, **k):     # the first step that reads the recipe: record it, stop there
        seen.append(kind)
        raise KeyboardInterrupt

    monkeypatch.setattr(U, "fake_label", stop)
    for classes, recipe in (((1,), U.CLASS_RECIPE), (None, U.ITEM_RECIPE)):
        with pytest.raises(KeyboardInterrupt):
            U.unlearn_gan(arch, g, d, retain_x=x, forget_x=x, heldout_x=x,
                          forget_classes=classes, classify=lambda s: np.ones(len(s), np.int32))
        assert seen[-1] == recipe.fake_label, (classes, seen)
    assert U.CLASS_RECIPE.fake_label != U.ITEM_RECIPE.fake_label


@pytest.mark.parametrize("classes,field", [
    (None, dict(substitution="none", lambda_s=5.0)),
    ((1,), dict(fake_label="hard", track_fake_label=False)),
    ((1,), dict(item_neighbours=5)),
    (None, dict(max_share=0.05)), (None, dict(confirm_size=64))])
def test_unlearn_gan_refuses_a_field_the_request_never_reads(monkeypatch, classes, field):
    """Each field ran unread in this request's cascade (no substitutes, a constant y_f, a
    class request's judge, an item request's lack of a share), yet the checkpoint's
    recipe recorded it as given; ``hyperforget gan unlearn`` refused the flags, Python did not.
    A recipe's own value of the field stays accepted: it was not chosen."""
    arch = make_gan_arch("mlp", (8, 8, 1))
    g, d = arch.init(jax.random.key(0))
    x = np.zeros((4, 8, 8, 1), np.float32)
    kw = dict(retain_x=x, forget_x=x, heldout_x=x, forget_classes=classes,
              classify=lambda s: np.ones(len(s), np.int32))

    class Started(Exception):
        pass

    def stop(*a, **k):                    # past the checks: the cascade would start here
        raise Started

    monkeypatch.setattr(U, "fake_label", stop)
    name = next(k for k in field if k not in ("substitution", "fake_label"))
    with pytest.raises(ConfigError, match=rf"UnlearnConfig\.{name}=.* would be ignored"):
        U.unlearn_gan(arch, g, d, cfg=U.UnlearnConfig(**field), **kw)
    base = U.default_recipe(classes is not None)
    with pytest.raises(Started):
        U.unlearn_gan(arch, g, d, cfg=dataclasses.replace(
            base, **{k: v for k, v in field.items() if k != name}), **kw)


def test_wrong_configs_judges_and_seeds_are_config_errors():
    """The GAN's Python API raised bare AttributeErrors for a GANConfig (or a dict) passed as
    unlearn_gan's recipe and for a judge that is not one, and jax's TypeError for a PRNG key
    passed as sample's seed."""
    from hyperforget_jax.data import Splits
    from hyperforget_jax.gan.metrics import EvalConfig, evaluate_gan
    from hyperforget_jax.gan.train import sample

    arch = make_gan_arch("mlp", (8, 8, 1))
    g, d = arch.init(jax.random.key(0))
    x = np.zeros((4, 8, 8, 1), np.float32)
    for cfg in (GANConfig(), {"max_rounds": 1}):
        with pytest.raises(ConfigError, match="takes cfg=an UnlearnConfig"):
            U.unlearn_gan(arch, g, d, retain_x=x, forget_x=x, heldout_x=x, cfg=cfg)
    with pytest.raises(ConfigError, match=r"judge=train_judge\(splits.train\).*NoneType"):
        evaluate_gan(arch, g, d, None, Splits(None, None, None), x, x, cfg=EvalConfig())
    with pytest.raises(ConfigError, match="GAN sample seed .*JAX PRNG key"):
        sample(arch, g, 4, jax.random.key(0))


def test_a_round_that_leaves_nan_samples_stops_the_cascade(digits_splits, tiny_gan, tmp_path):
    """lr 1e30: the round's parameters stay finite (its guard passes) but G draws NaN. The
    check read NaN samples as unflagged and the run stopped "by the criteria", returned (and
    on the CLI saved) as a success; save_grid wrote a NaN grid (min/max tests are False for
    NaN)."""
    from hyperforget_jax.errors import NonFiniteError
    from hyperforget_jax.gan.train import save_grid

    gan, arch = tiny_gan
    train = digits_splits.train
    cfg = U.UnlearnConfig(fake_label="hard", substitution="data", check_every=1, max_rounds=1,
                          pool_size=256, lr=1e30, lambda_u_attempts=1)
    with pytest.raises(NonFiniteError, match="generator's samples at the check after 1 rounds"):
        U.unlearn_gan(arch, gan.g_params, gan.d_params, retain_x=train.x[16:512],
                      forget_x=train.x[:16], heldout_x=digits_splits.val.x, cfg=cfg)
    with pytest.raises(NonFiniteError, match="NaN/inf; the generator diverged"):
        save_grid(np.full((4, 8, 8, 1), np.nan, np.float32), tmp_path / "g.png", nrow=2)
    assert not (tmp_path / "g.png").exists()


def test_save_grid_leaves_the_matplotlib_backend_alone(tmp_path):
    """save_grid called matplotlib.use("Agg"): in a notebook every later plot stopped showing."""
    import matplotlib

    from hyperforget_jax.gan.train import save_grid

    before = matplotlib.get_backend()
    matplotlib.use("svg")            # stands for a user's backend (inline, Qt, ...)
    try:
        save_grid(np.zeros((3, 8, 8, 1), np.float32), tmp_path / "g.png", nrow=2)
        assert matplotlib.get_backend() == "svg"
    finally:
        matplotlib.use(before)
    assert (tmp_path / "g.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_save_every_below_one_is_refused_before_any_training():
    """save_every=0 with a checkpointer trained a whole epoch (GAN) / 1000 steps (DiHyFo) and
    then died in `% 0` with a ZeroDivisionError, nothing saved. Checked first: no data needed."""
    from hyperforget_jax.hyperforget.dihyfo import train_hypernet

    for bad in (0, -1, 2.5):
        with pytest.raises(ConfigError, match="save_every must be an integer >= 1 \\(epochs\\)"):
            train_gan(None, GANConfig(), checkpointer=object(), save_every=bad)
        with pytest.raises(ConfigError, match="save_every must be an integer >= 1 \\(steps\\)"):
            train_hypernet(None, checkpoint_dir="unused", save_every=bad)


def _by_the_judge(x, classify, n=16):
    """The first ``n`` images a stand-in judge files under class 1 as the forget set, the next
    496 others as the retain set."""
    ones = np.asarray(classify(x)) == 1
    return {"forget_x": x[ones][:n], "retain_x": x[~ones][:496]}


def _flat(res):
    return np.concatenate([np.ravel(a) for a in jax.tree.leaves((res.g_params, res.d_params))])


def test_cascade_resumes_from_checkpoint_exactly(tmp_path, digits_splits, tiny_gan):
    """A run cut after its 20-round checkpoint resumes there and ends bit-for-bit where an
    uninterrupted run ends; a finished directory returns its result; another recipe is
    refused."""
    import dataclasses
    import shutil

    from hyperforget_jax.checkpoint import Checkpointer
    from hyperforget_jax.errors import CheckpointError

    gan, arch = tiny_gan
    x = digits_splits.train.x
    kw = dict(retain_x=x[16:512], forget_x=x[:16], heldout_x=digits_splits.val.x)
    # Same compiled chunk as the data-level cascade test above (check_every 10, batch 64,
    # pool 256).
    cfg = U.UnlearnConfig(fake_label="hard", substitution="data", check_every=10,
                          max_rounds=30, tol=0.0, pool_size=256)
    ref = U.unlearn_gan(arch, gan.g_params, gan.d_params, cfg=cfg, **kw)
    assert ref.rounds == 30 and ref.stopped == "max_rounds"
    with Checkpointer(tmp_path / "ck", max_to_keep=None) as ck:
        U.unlearn_gan(arch, gan.g_params, gan.d_params, cfg=cfg, checkpointer=ck, **kw)
        assert ck.all_steps() == [10, 20, 30]
        shutil.rmtree(ck.step_dir(30))         # as if killed before the last commit
    seconds = []
    for _ in range(2):                          # resume from 20; then the finished directory
        with Checkpointer(tmp_path / "ck", max_to_keep=None) as ck:
            res = U.unlearn_gan(arch, gan.g_params, gan.d_params, cfg=cfg, checkpointer=ck,
                                **kw)
        np.testing.assert_array_equal(_flat(res), _flat(ref))
        assert res.history == ref.history and res.rounds == 30
        seconds.append(res.seconds)
    # The finished directory returns the result the run returned, its time included (it
    # returned its time plus the final checkpoint's write: `gan unlearn` run twice reported
    # 41.21 s, then 41.04 s).
    assert seconds[1] == seconds[0] > 0
    other = dataclasses.replace(cfg, lambda_u=2.0)
    with Checkpointer(tmp_path / "ck") as ck, pytest.raises(CheckpointError, match="another"):
        U.unlearn_gan(arch, gan.g_params, gan.d_params, cfg=other, checkpointer=ck, **kw)
    # The forget set in another order (or another set of equal pixel sum) resumed the run:
    # its count and pixel sum were all the checkpoint compared.
    flipped = dict(kw, forget_x=x[:16][::-1])
    with Checkpointer(tmp_path / "ck") as ck, pytest.raises(CheckpointError, match="another"):
        U.unlearn_gan(arch, gan.g_params, gan.d_params, cfg=cfg, checkpointer=ck, **flipped)


def test_escalation_restarts_and_its_last_attempt_equals_a_lone_cascade(tmp_path, digits_splits,
                                                                          tiny_gan):
    """An attempt that ends at max_rounds without the criteria is followed by a fresh cascade
    from (G₀, D₀) at λ_u × growth; the last attempt is bit-for-bit the cascade run alone at its
    weight, and a run cut right after an attempt ended resumes into the next one exactly."""
    import dataclasses
    import shutil

    from hyperforget_jax.checkpoint import Checkpointer

    gan, arch = tiny_gan
    x = digits_splits.train.x
    kw = dict(retain_x=x[16:512], forget_x=x[:16], heldout_x=digits_splits.val.x)
    # tol 0: the score criterion is never met, so every attempt runs to max_rounds.
    cfg = U.UnlearnConfig(fake_label="hard", substitution="data", check_every=10,
                          max_rounds=10, tol=0.0, pool_size=256, lambda_u=0.5,
                          lambda_u_attempts=3, lambda_u_growth=2.0)
    res = U.unlearn_gan(arch, gan.g_params, gan.d_params, cfg=cfg, **kw)
    assert [a["lambda_u"] for a in res.attempts] == [0.5, 1.0, 2.0]
    assert [a["rounds"] for a in res.attempts] == [10, 10, 10]
    assert [a["stopped"] for a in res.attempts] == ["max_rounds"] * 3
    assert res.rounds == 30 and res.lambda_u == 2.0 and res.stopped == "max_rounds"
    assert [h["attempt"] for h in res.history] == [0, 0, 1, 1, 2, 2]
    lone = U.unlearn_gan(arch, gan.g_params, gan.d_params, **kw,
                         cfg=dataclasses.replace(cfg, lambda_u=2.0, lambda_u_attempts=1))
    np.testing.assert_array_equal(_flat(res), _flat(lone))
    strip = lambda h: {k: v for k, v in h.items() if k != "attempt"}
    assert [strip(h) for h in res.history[-2:]] == [strip(h) for h in lone.history]
    assert lone.attempts == [res.attempts[-1]] and lone.rounds == 10

    with Checkpointer(tmp_path / "ck", max_to_keep=None) as ck:
        U.unlearn_gan(arch, gan.g_params, gan.d_params, cfg=cfg, checkpointer=ck, **kw)
        assert ck.all_steps() == [10, 20, 30]
        for step in (20, 30):                  # killed after the first attempt's last save
            shutil.rmtree(ck.step_dir(step))
    for _ in range(2):                          # resume at step 10; then the finished directory
        with Checkpointer(tmp_path / "ck", max_to_keep=None) as ck:
            again = U.unlearn_gan(arch, gan.g_params, gan.d_params, cfg=cfg, checkpointer=ck,
                                  **kw)
        np.testing.assert_array_equal(_flat(again), _flat(res))
        assert again.history == res.history and again.attempts == res.attempts
        assert again.rounds == 30 and again.lambda_u == 2.0


@pytest.mark.parametrize("bad", [dict(lambda_u_attempts=0), dict(lambda_u_growth=1.0),
                                 dict(lambda_u_growth=float("nan"))])
def test_escalation_settings_are_checked(bad):
    with pytest.raises(ConfigError, match="lambda_u_"):
        U.UnlearnConfig(**bad)


@pytest.mark.parametrize("share", [2.0, -0.01, float("nan")])
def test_max_share_is_a_fraction(share):
    # --max-share 2 (meant as 2 %) would let every pool pass the share criterion.
    with pytest.raises(ConfigError, match=r"max_share is a fraction of the pool in \[0, 1\]"):
        U.UnlearnConfig(max_share=share)
    assert U.UnlearnConfig(max_share=0.0).max_share == 0.0
    assert U.UnlearnConfig(max_share=1.0).max_share == 1.0


def test_class_recipe_escalates_to_16():
    r = U.CLASS_RECIPE
    assert [r.lambda_u * r.lambda_u_growth ** k for k in range(r.lambda_u_attempts)] == [1, 4, 16]
    assert U.ITEM_RECIPE.lambda_u_attempts == 1


# The round tests below use the recipe, batch and shapes of the data-level cascade above
# (UnlearnConfig defaults: G at 5e-4, D at 2e-3, λ_s 0.1, batch 64; retained and forgotten
# images padded as unlearn_gan pads them; a 256-code bank), and compile a round as the library
# compiles its chunks (xla.jit): λ_u 4 with data-level substitutes is one program for all three
# tests, and the 10-round chunk is the cascade's.
_LR, _D_LR, _LAMBDA_S, _BATCH = 5e-4, 2e-3, 0.1, 64


def _round_inputs(arch, x, key_seed=3, count=5):
    """A round's arguments: data streams, a substitution bank with ``count`` entries, y_f."""
    rng = np.random.default_rng(key_seed)
    data = (U._padded(x[16:512]), jnp.int32(496), U._padded(x[:16]), jnp.int32(16))
    pool = 256
    bank = U.SubstitutionBank(jnp.asarray(rng.normal(size=(pool, arch.latent_dim)), jnp.float32),
                              jnp.asarray(rng.random((pool, *arch.image_shape)), jnp.float32),
                              jnp.int32(count))
    return data, bank, jnp.float32(0.3), jax.random.key(key_seed)


@pytest.mark.parametrize("sub_real_weight", [0.0, 1.0])
def test_round_losses_equal_separate_forward_passes(digits_splits, tiny_gan, sub_real_weight):
    """The round pushes its streams through D and G as single concatenated batches; its losses
    equal the cascade's formulas computed with one forward pass per stream (and the data-level
    term BCE(D(x_sub), 1) is there exactly when substitutes count as real)."""
    from hyperforget_jax.gan.train import bce_with_logits, init_gan_state, make_optimizer

    gan, arch = tiny_gan
    lam_u, lam_s, bs = 4.0, _LAMBDA_S, _BATCH
    tx = make_optimizer(_LR)
    fn = xla.jit(U.make_round(arch, tx, lam_u, lam_s, sub_real_weight, bs, make_optimizer(_D_LR)))
    data, bank, y_f, key = _round_inputs(arch, digits_splits.train.x)
    state = init_gan_state(arch, tx, jax.random.key(0), gan.g_params, gan.d_params)
    new, m = fn(state, data, bank, y_f, key)

    # The same draws as the round (its documented key split), one forward pass per stream
    # (one compiled program for both cases, the weight an argument, instead of an XLA
    # compilation per operation and shape).
    @jax.jit
    def formulas(d0, g0, d1, w_sub):
        kr, ku, kd, kg, ks = jax.random.split(key, 5)
        xr = data[0][jax.random.randint(kr, (bs,), 0, data[1])]
        xu = data[2][jax.random.randint(ku, (bs,), 0, data[3])]
        zd, zg = arch.sample_latents(kd, bs), arch.sample_latents(kg, bs)
        si = jax.random.randint(ks, (bs,), 0, 5)
        zs, xs = bank.codes[si], bank.targets[si]
        D, G = arch.discriminate, arch.generate
        want_d = (bce_with_logits(D(d0, xr), 1.0) + bce_with_logits(D(d0, G(g0, zd)), 0.0)
                  + lam_u * bce_with_logits(D(d0, xu), y_f)
                  + w_sub * bce_with_logits(D(d0, xs), 1.0))
        sub = jnp.mean((G(g0, zs) - xs) ** 2)
        want_g = bce_with_logits(D(d1, G(g0, zg)), 1.0) + lam_s * sub
        return want_d, sub, want_g

    want_d, sub, want_g = formulas(gan.d_params, gan.g_params, new.d_params,
                                   jnp.float32(sub_real_weight))
    np.testing.assert_allclose(float(m["d_loss"]), float(want_d), rtol=2e-5)
    np.testing.assert_allclose(float(m["sub_loss"]), float(sub), rtol=2e-5)
    np.testing.assert_allclose(float(m["g_loss"]), float(want_g), rtol=2e-5)


def test_d_lr_sets_the_discriminator_learning_rate_only(digits_splits, tiny_gan):
    """``tx_d`` (UnlearnConfig.d_lr) updates D alone: D after a round with (G: A, D: B) equals
    D after a round with B for both; G differs from that run (its own rate, A)."""
    from hyperforget_jax.gan.train import init_gan_state, make_optimizer

    gan, arch = tiny_gan
    slow, fast = make_optimizer(_LR), make_optimizer(_D_LR)
    data, bank, y_f, key = _round_inputs(arch, digits_splits.train.x)
    outs = []
    for tx_g, tx_d in ((slow, fast), (fast, fast)):
        fn = xla.jit(U.make_round(arch, tx_g, 4.0, _LAMBDA_S, 1.0, _BATCH, tx_d))
        state = init_gan_state(arch, tx_g, jax.random.key(0), gan.g_params, gan.d_params)
        outs.append(fn(state, data, bank, y_f, key)[0])
    for a, b in zip(jax.tree.leaves(outs[0].d_params), jax.tree.leaves(outs[1].d_params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    diff = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b)))) for a, b in
               zip(jax.tree.leaves(outs[0].g_params), jax.tree.leaves(outs[1].g_params)))
    assert diff > 1e-4


def test_lambda_u_is_an_argument_of_one_compiled_program(digits_splits, tiny_gan):
    """The cascade's compiled rounds take λ_u, the learning rates and λ_s as arguments: one
    program (one compilation) serves every attempt of the escalation and every recipe of a
    sweep that differs in them, and its numbers equal the round with them compiled in as
    constants (bit for bit on CPU)."""
    from hyperforget_jax.gan.train import init_gan_state, make_optimizer

    gan, arch = tiny_gan
    data, bank, y_f, key = _round_inputs(arch, digits_splits.train.x)
    # (beta1, anchored, sub_real_weight, batch_size, rounds per call): no anchor. The
    # data-level cascade's chunk (test_short_cascade_lowers_d_score_on_forgotten_items).
    n = 10
    cfg_key = (0.5, False, 1.0, _BATCH, n)
    run = U._compiled_rounds(arch, cfg_key)
    assert U._compiled_rounds(arch, cfg_key) is run
    copy = lambda tree: jax.tree.map(jnp.copy, tree)      # the program donates its state
    start = lambda: init_gan_state(arch, make_optimizer(), jax.random.key(0),
                                   copy(gan.g_params), copy(gan.d_params))
    # Committed, as unlearn_gan commits its state: the cascade tests' program, not another.
    fresh = lambda: jax.device_put(start(), jax.devices()[0])
    finals, programs = [], []
    # Two recipes, each against a round compiled with its numbers as constants; the first's
    # round is the one test_round_losses_equal_separate_forward_passes[1.0] and
    # test_d_lr_sets_the_discriminator_learning_rate_only compile (the same HLO and the same
    # uncommitted state: the shared XLA cache serves it; a committed state was another
    # compilation, with the same bits), so only the second's is compiled here.
    for lam_u, lr, d_lr, lam_s in ((4.0, _LR, _D_LR, _LAMBDA_S),
                                   (16.0, 2 * _LR, _D_LR / 2, 3 * _LAMBDA_S)):
        tx, tx_d = make_optimizer(lr, 0.5), make_optimizer(d_lr, 0.5)
        # With the chunk's compiler options (xla.jit): under plain jax.jit XLA:CPU picks other
        # dot kernels at batch 64, which round differently whatever λ_u is.
        fixed = xla.jit(U.make_round(arch, tx, lam_u, lam_s, 1.0, _BATCH, tx_d))
        want = start()
        for _ in range(n):
            want, _ = fixed(want, data, bank, y_f, jax.random.fold_in(key, want.step))
        rates = jnp.asarray((lr, d_lr, lam_s, 0.0), jnp.float32)
        got, m = run(fresh(), data, bank, y_f, jnp.float32(lam_u), key, rates)
        programs.append(run._cache_size())
        assert m["d_loss"].shape == (n,) and int(got.step) == n
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
            if jax.default_backend() == "cpu":
                np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
            else:                                       # other backends may fuse differently
                np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
        finals.append(np.concatenate([np.ravel(a) for a in jax.tree.leaves(got.d_params)]))
    # Two recipes, one compilation: the recipe after the first adds no program (the cascade
    # tests that share this chunk may have compiled it before, for their own arguments).
    assert programs[0] == programs[1] >= 1
    assert not np.array_equal(finals[0], finals[1])     # and the weight does reach D


def test_bad_d_lr_is_refused():
    with pytest.raises(ConfigError, match="d_lr"):
        U.UnlearnConfig(d_lr=0.0)
    with pytest.raises(ConfigError, match="d_lr"):
        U.UnlearnConfig(d_lr=-1e-3)


def test_capped_class_cascade_returns_its_lowest_share_check(tmp_path, digits_splits, tiny_gan):
    """When no attempt meets the criteria, a class request returns the (G, D) of the check with
    the lowest pool share over all attempts, not the last round's: that G draws exactly the
    kept share on the kept check's pool. A resumed run and the finished directory return the
    same, and `load_gan_run` reads the kept (G, D)."""
    import shutil

    from hyperforget_jax.checkpoint import Checkpointer
    from hyperforget_jax.commands.gan import load_gan_run
    from hyperforget_jax.errors import CheckpointError
    from hyperforget_jax.gan.train import generate

    gan, arch = tiny_gan
    x = digits_splits.train.x
    # A stand-in judge: "class 1" is a dark sample. Its threshold splits the Original's
    # samples in two, so the pool share moves from check to check; it files 12 of the 16
    # forget images under class 1.
    bright = lambda s: np.asarray(s).reshape(len(s), -1).mean(1)
    thr = float(np.median(bright(generate(arch, gan.g_params,
                                          arch.sample_latents(jax.random.key(7), 512)))))
    classify = lambda s: (bright(s) <= thr).astype(np.int32)
    kw = dict(retain_x=x[16:512], forget_x=x[:16], heldout_x=digits_splits.val.x,
              forget_classes=(1,), classify=classify)
    # tol 0: the score criterion is never met, so both attempts run to max_rounds. Same
    # compiled chunk as the cascade tests above (data level, check_every 10, pool 256).
    cfg = U.UnlearnConfig(fake_label="hard", substitution="data", check_every=10,
                          max_rounds=20, tol=0.0, pool_size=256, lambda_u_attempts=2,
                          lambda_u_growth=2.0)
    res = U.unlearn_gan(arch, gan.g_params, gan.d_params, cfg=cfg, **kw)
    assert res.stopped == "max_rounds" and res.rounds == 40
    checks = [h for h in res.history if h["round"] > 0]
    low = min(h["share"] for h in checks)
    at = max(i for i, h in enumerate(checks) if h["share"] == low)   # the latest of equals
    assert res.kept == {"attempt": checks[at]["attempt"], "round": checks[at]["round"],
                        "lambda_u": cfg.lambda_u * 2.0 ** checks[at]["attempt"], "share": low}
    assert res.lambda_u == res.kept["lambda_u"]
    assert at != len(checks) - 1 and checks[-1]["share"] > low   # the last check is not kept
    # The returned G on the kept check's pool (a pure function of the seed and the round).
    codes = arch.sample_latents(jax.random.fold_in(jax.random.key(cfg.seed),
                                                   10**9 + res.kept["round"]), cfg.pool_size)
    assert float(np.mean(classify(generate(arch, res.g_params, codes)))) == low

    run, meta = tmp_path / "run", {"gan_arch": arch.to_json()}
    with Checkpointer(run / "checkpoints", max_to_keep=None) as ck:
        U.unlearn_gan(arch, gan.g_params, gan.d_params, cfg=cfg, checkpointer=ck, meta=meta,
                      **kw)
        assert ck.all_steps() == [10, 20, 30, 40]
        shutil.rmtree(ck.step_dir(40))          # as if killed before the last commit
    for _ in range(2):                          # resume from 30; then the finished directory
        with Checkpointer(run / "checkpoints", max_to_keep=None) as ck:
            again = U.unlearn_gan(arch, gan.g_params, gan.d_params, cfg=cfg, checkpointer=ck,
                                  meta=meta, **kw)
        np.testing.assert_array_equal(_flat(again), _flat(res))
        assert again.kept == res.kept and again.history == res.history
    _, state, _ = load_gan_run(run)
    np.testing.assert_array_equal(_flat(state), _flat(res))
    # Another judge (a threshold that files other samples under class 1) resumed the run: the
    # rounds after the restart ran under it and the result matched neither run. Refused.
    other = dict(kw, classify=lambda s: (bright(s) <= np.quantile(bright(s), 0.4)).astype(
        np.int32))
    with Checkpointer(run / "checkpoints", max_to_keep=None) as ck, pytest.raises(
            CheckpointError, match="another recipe, forget set, judge"):
        U.unlearn_gan(arch, gan.g_params, gan.d_params, cfg=cfg, checkpointer=ck, meta=meta,
                      **other)
    # So was another latent prior (the same parameters): a resumed run ended at neither's G.
    mixture = dataclasses.replace(arch, latent_prior="mixture")
    with Checkpointer(run / "checkpoints", max_to_keep=None) as ck, pytest.raises(
            CheckpointError, match=r"judge \(classify\) or GAN architecture \(pair or latent "
                                   r"prior\)"):
        U.unlearn_gan(mixture, gan.g_params, gan.d_params, cfg=cfg, checkpointer=ck,
                      meta=meta, **kw)


@pytest.mark.filterwarnings("ignore:the original generator draws only")  # stand-in judges
def test_class_check_with_a_drifted_kept_mix_neither_stops_nor_is_kept(digits_splits, tiny_gan):
    """A G that empties the class by drawing the kept classes in another mix is no stop: the
    check that met every other criterion at max_kept_drift 1 is refused at a bound below its
    drift, and no check above the bound is ever kept."""
    from hyperforget_jax.gan.train import generate

    gan, arch = tiny_gan
    x = digits_splits.train.x
    # A stand-in judge with three classes by brightness terciles of the Original's samples;
    # "class 1" (the middle tercile) is forgotten, 0 and 2 are kept.
    bright = lambda s: np.asarray(s).reshape(len(s), -1).mean(1)
    original = generate(arch, gan.g_params, arch.sample_latents(jax.random.key(7), 512))
    cuts = np.quantile(bright(original), [1 / 3, 2 / 3])
    classify = lambda s: np.searchsorted(cuts, bright(s)).astype(np.int32)
    kw = dict(**_by_the_judge(x, classify), heldout_x=digits_splits.val.x,
              forget_classes=(1,), classify=classify)
    # Share and score criteria that the first check meets (max_share 1, tol just below 1).
    cfg = U.UnlearnConfig(fake_label="hard", substitution="data", check_every=10,
                          max_rounds=30, tol=0.99, max_share=1.0, pool_size=256,
                          max_kept_drift=1.0)
    loose = U.unlearn_gan(arch, gan.g_params, gan.d_params, cfg=cfg, **kw)
    assert loose.stopped == "criteria" and loose.rounds == 10
    assert loose.history[0]["kept_drift"] == 0.0              # round 0: G is the Original
    drift = loose.history[-1]["kept_drift"]
    assert drift > 0
    bound = drift / 2
    strict = U.unlearn_gan(arch, gan.g_params, gan.d_params,
                           cfg=dataclasses.replace(cfg, max_kept_drift=bound), **kw)
    assert strict.history[1]["kept_drift"] == drift           # the same check, now refused
    assert strict.rounds > 10
    if strict.stopped == "criteria":
        assert strict.history[-1]["kept_drift"] <= bound
    if strict.kept is not None:                               # capped: a sound check is kept
        at = next(h for h in strict.history if h["round"] == strict.kept["round"])
        assert at["kept_drift"] <= bound
    # The experiment's record of what the guard did, from this run's own history: the
    # refused check met the share bound (max_share 1).
    guard_summary = load_experiment("gan_unlearning").guard_summary
    summary = guard_summary(strict.history, dataclasses.replace(cfg, max_kept_drift=bound))
    assert summary["refused"] >= summary["refused_at_share_bound"] >= 1
    assert summary["max_drift"] >= drift and summary["checks"] == len(strict.history)
    assert guard_summary(loose.history, cfg)["refused"] == 0


@pytest.mark.filterwarnings("ignore:the original generator draws only")  # stand-in judges
def test_a_pool_that_reads_low_by_chance_is_confirmed_before_it_stops_the_run(digits_splits,
                                                                            tiny_gan):
    """With confirm_size, a check whose pool passes the share bound draws that many more codes
    and stops the run only if the share of all of them passes; a refuted check is kept (at the
    cap) with its confirmed share, never the pool's."""
    gan, arch = tiny_gan
    x = digits_splits.train.x
    cfg = U.UnlearnConfig(fake_label="hard", substitution="data", check_every=10,
                          max_rounds=20, tol=0.99, max_share=0.05, pool_size=256)
    seen = []                                 # the confirmation batches the judge was given

    def judge(confirmation_label):
        # A stand-in judge that files the forget images under class 1 and every pool sample
        # under class 0: each pool reads a share of 0. The confirmation codes (the only
        # batches of confirm_size) are labelled by `confirmation_label`.
        def classify(s):
            n = len(s)
            if n == 16:
                return np.ones(n, np.int32)
            if n == cfg.pool_size:
                return np.zeros(n, np.int32)
            seen.append(np.asarray(s))
            return confirmation_label(n)
        return classify

    halves = lambda n: np.arange(n, dtype=np.int32) % 2           # 50 % "class 1"
    kw = dict(retain_x=x[16:512], forget_x=x[:16], heldout_x=digits_splits.val.x,
              forget_classes=(1,))
    lone = U.unlearn_gan(arch, gan.g_params, gan.d_params, cfg=cfg, classify=judge(halves),
                         **kw)
    assert lone.stopped == "criteria" and lone.rounds == 10 and not seen   # the pool decides
    confirmed = dataclasses.replace(cfg, confirm_size=64)
    res = U.unlearn_gan(arch, gan.g_params, gan.d_params, cfg=confirmed,
                        classify=judge(halves), **kw)
    # 0 of 256 pool codes and 32 of 64 confirmation codes: 0.1 > 0.05 at every check.
    assert res.stopped == "max_rounds" and res.rounds == 20
    checks = [h for h in res.history if h["round"] > 0]
    assert [h["share"] for h in checks] == [0.0, 0.0]
    assert [h["confirm_share"] for h in checks] == [32 / 320] * 2
    assert res.kept["share"] == 32 / 320 and res.kept["round"] == 20      # latest of equals
    assert [len(b) for b in seen] == [64, 64]
    assert not np.array_equal(seen[0], seen[1])              # fresh codes at every check
    # Confirmation codes the judge files under the kept classes confirm the pool at once.
    seen.clear()
    ok = U.unlearn_gan(arch, gan.g_params, gan.d_params, cfg=confirmed,
                       classify=judge(lambda n: np.zeros(n, np.int32)), **kw)
    assert ok.stopped == "criteria" and ok.rounds == 10 and ok.kept is None
    assert ok.history[-1]["confirm_share"] == 0.0 and len(seen) == 1
    np.testing.assert_array_equal(_flat(ok), _flat(lone))    # the same run up to that check
    # The bound is inclusive for the confirmation as for the stop: a pool at exactly max_share
    # (0, the strictest bound) is confirmed too, and its 10 % refutes it (with "<" it stopped
    # the run on the pool alone).
    at_bound = U.unlearn_gan(arch, gan.g_params, gan.d_params, classify=judge(halves),
                             cfg=dataclasses.replace(confirmed, max_share=0.0, max_rounds=10),
                             **kw)
    assert at_bound.stopped == "max_rounds" and at_bound.history[-1]["confirm_share"] > 0
    with pytest.raises(ConfigError, match="confirm_size"):
        U.UnlearnConfig(confirm_size=-1)
    assert U.CLASS_RECIPE.confirm_size == 8192 and U.ITEM_RECIPE.confirm_size == 0


def test_anchor_mask_keeps_codes_flagged_neither_now_nor_by_the_original():
    now = np.array([True, False, False, True, False])
    original = np.array([False, True, False, True, False])
    np.testing.assert_array_equal(U.anchor_mask(now, original), [False, False, True, False, True])


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf")])
def test_bad_anchor_weight_is_refused(bad):
    with pytest.raises(ConfigError, match="lambda_a"):
        U.UnlearnConfig(lambda_a=bad)


def test_a_concrete_zero_lambda_a_is_the_round_without_anchor():
    """λ_a given as a concrete JAX zero (``jnp.float32(0.0)``, not traced) is no anchor, as a
    Python 0 is: the five-key round. Since λ_a may be traced, every jax.Array counted as not 0:
    the anchored round (one more G stream; a TypeError on a bank without anchor codes). Traced
    here only (a jaxpr, nothing compiled), on the stand-in GAN."""
    from hyperforget_jax.gan.train import init_gan_state, make_optimizer

    arch, tx = _ConstArch(), make_optimizer()
    pool = 8
    bank = U.SubstitutionBank(jnp.zeros((pool, 1)), jnp.zeros((pool, 1, 1, 1)), jnp.int32(2),
                              jnp.zeros((pool, 1)), jnp.zeros((pool, 1, 1, 1)), jnp.int32(2))
    x = jnp.full((pool, 1, 1, 1), 0.5)
    data = (x, jnp.int32(pool), x, jnp.int32(pool))
    state = init_gan_state(arch, tx, jax.random.key(0), jnp.float32(0.3), jnp.float32(0.0))

    def program(lambda_a):
        round_fn = U.make_round(arch, tx, 4.0, 1.0, 0.0, 4, lambda_a=lambda_a)
        return str(jax.make_jaxpr(round_fn)(state, data, bank, jnp.float32(0.0),
                                            jax.random.key(1)))

    assert program(jnp.float32(0.0)) == program(0.0) == program(0)
    assert program(2.0) != program(0.0)         # the anchor is there when λ_a is not 0


def test_anchor_term_of_the_round_equals_its_formula(digits_splits, tiny_gan):
    """With λ_a > 0 the round draws an anchor batch from a sixth key and adds
    λ_a · mean‖G(z_a) − x_a‖² to L_G (computed here with separate forward passes)."""
    from hyperforget_jax.gan.train import bce_with_logits, init_gan_state, make_optimizer

    gan, arch = tiny_gan
    lam_a, n_anchor = 3.0, 7
    tx = make_optimizer(_LR)
    data, bank, y_f, key = _round_inputs(arch, digits_splits.train.x)
    rng = np.random.default_rng(11)
    bank = bank._replace(
        anchor_codes=jnp.asarray(rng.normal(size=bank.codes.shape), jnp.float32),
        anchor_targets=jnp.asarray(rng.random(bank.targets.shape), jnp.float32),
        anchor_count=jnp.int32(n_anchor))
    fn = xla.jit(U.make_round(arch, tx, 4.0, _LAMBDA_S, 0.0, _BATCH, make_optimizer(_D_LR),
                              lambda_a=lam_a))
    state = init_gan_state(arch, tx, jax.random.key(0), gan.g_params, gan.d_params)
    new, m = fn(state, data, bank, y_f, key)

    @jax.jit
    def formulas(g0, d1):
        _, _, _, kg, ks, ka = jax.random.split(key, 6)
        zg = arch.sample_latents(kg, _BATCH)
        si = jax.random.randint(ks, (_BATCH,), 0, 5)
        ai = jax.random.randint(ka, (_BATCH,), 0, n_anchor)
        G = arch.generate
        sub = jnp.mean((G(g0, bank.codes[si]) - bank.targets[si]) ** 2)
        held = jnp.mean((G(g0, bank.anchor_codes[ai]) - bank.anchor_targets[ai]) ** 2)
        want_g = (bce_with_logits(arch.discriminate(d1, G(g0, zg)), 1.0) + _LAMBDA_S * sub
                  + lam_a * held)
        return held, want_g

    held, want_g = formulas(gan.g_params, new.d_params)
    assert float(held) > 0
    np.testing.assert_allclose(float(m["anchor_loss"]), float(held), rtol=2e-5)
    np.testing.assert_allclose(float(m["g_loss"]), float(want_g), rtol=2e-5)
    # An empty anchor bank adds nothing: the same round (same six-key batches) without the
    # anchor's term.
    empty = bank._replace(anchor_count=jnp.int32(0))
    _, m0 = fn(state, data, empty, y_f, key)
    np.testing.assert_allclose(float(m0["g_loss"]), float(want_g - lam_a * held), rtol=2e-5)
    assert float(m0["anchor_loss"]) == 0.0          # reported as the term it adds: nothing
    # Likewise an empty substitution bank adds nothing, and its reported loss is 0.
    _, m1 = fn(state, data, empty._replace(count=jnp.int32(0)), y_f, key)
    assert float(m1["sub_loss"]) == 0.0 and float(m0["sub_loss"]) > 0


def test_anchor_holds_the_kept_samples_to_the_original(digits_splits, tiny_gan):
    """A class cascade with a heavy anchor stays closer to G₀ on the codes neither G₀ nor the
    cascade draws as the forgotten class than the same cascade without it, and its anchor bank
    holds exactly those codes with G₀'s samples."""
    from hyperforget_jax.gan.train import generate

    gan, arch = tiny_gan
    x = digits_splits.train.x
    bright = lambda s: np.asarray(s).reshape(len(s), -1).mean(1)
    thr = float(np.median(bright(generate(arch, gan.g_params,
                                          arch.sample_latents(jax.random.key(7), 512)))))
    classify = lambda s: (bright(s) <= thr).astype(np.int32)        # "class 1": dark samples
    kw = dict(retain_x=x[16:512], forget_x=x[:16], heldout_x=digits_splits.val.x,
              forget_classes=(1,), classify=classify)
    cfg = U.UnlearnConfig(fake_label="hard", substitution="latent", check_every=10,
                          max_rounds=30, tol=0.0, pool_size=256)

    # The bank on a pool, against its definition.
    codes = np.asarray(arch.sample_latents(jax.random.key(3), cfg.pool_size))
    g0 = np.asarray(generate(arch, gan.g_params, jnp.asarray(codes)))
    now = np.arange(cfg.pool_size) % 3 == 0                          # any flags of "now"
    (a_codes, a_targets, count), by_g0 = U._anchor_bank(arch, gan.g_params, codes, now,
                                                        x[:16], (1,), classify, cfg)
    keep = ~now & (classify(g0) != 1)
    np.testing.assert_array_equal(by_g0, classify(g0) == 1)
    assert int(count) == keep.sum() > 0
    np.testing.assert_array_equal(np.asarray(a_codes)[:int(count)], codes[keep])
    np.testing.assert_allclose(np.asarray(a_targets)[:int(count)], g0[keep], atol=1e-6)

    far = {}
    for lam_a in (0.0, 100.0):
        res = U.unlearn_gan(arch, gan.g_params, gan.d_params,
                            cfg=dataclasses.replace(cfg, lambda_a=lam_a), **kw)
        assert res.rounds == 30
        assert ("anchor_loss" in res.history[0]) == bool(lam_a)
        after = np.asarray(generate(arch, res.g_params, jnp.asarray(codes)))
        kept = (classify(g0) != 1) & (classify(after) != 1)
        far[lam_a] = float(np.mean((after[kept] - g0[kept]) ** 2))
    assert far[100.0] < 0.5 * far[0.0], far


def test_escalation_judges_the_originals_pools_once(digits_splits, tiny_gan, monkeypatch):
    """With the anchor, a later attempt of the escalation reuses G₀'s flags of each pool (the
    pools are a pure function of the attempt's round) instead of judging G₀'s samples again:
    its checks after the first call the classifier once each, and its result is still bit for
    bit the cascade run alone at its weight. An attempt's first check, where G is G₀, neither draws
    nor judges G₀'s first pool again (JudgeCNN's pass over 2,048 codes: ≈ 1.4 s)."""
    gan, arch = tiny_gan
    x = digits_splits.train.x
    bright = lambda s: np.asarray(s).reshape(len(s), -1).mean(1)
    thr = float(np.median(bright(generate(arch, gan.g_params,
                                          arch.sample_latents(jax.random.key(7), 512)))))
    calls, drawn, generate_ = [], [], U.generate
    monkeypatch.setattr(U, "generate", lambda *a, **k: (drawn.append(1), generate_(*a, **k))[1])

    def classify(s):                                        # "class 1": dark samples
        calls.append(len(s))
        return (bright(s) <= thr).astype(np.int32)

    kw = dict(retain_x=x[16:512], forget_x=x[:16], heldout_x=digits_splits.val.x,
              forget_classes=(1,), classify=classify)
    # tol 0: the score criterion is never met, so both attempts run to max_rounds. λ_a is the
    # heavy anchor's above: its compiled chunk (λ_a is part of the chunk's key), not another.
    cfg = U.UnlearnConfig(fake_label="hard", substitution="latent", check_every=10,
                          max_rounds=20, tol=0.0, pool_size=256, lambda_a=100.0,
                          lambda_u=0.5, lambda_u_attempts=2, lambda_u_growth=2.0)
    one = dataclasses.replace(cfg, lambda_u_attempts=1)
    U.unlearn_gan(arch, gan.g_params, gan.d_params, cfg=one, **kw)
    n_first = len(calls)
    # The forget images, G₀'s first pool (the kept-class reference, whose flags and samples
    # also serve the check and anchor bank of round 0), the current G at rounds 10 and 20,
    # G₀'s pool of round 10.
    assert n_first == 5, calls
    # Drawn: G₀'s first pool, the current G's and G₀'s pools of round 10, the current G's of 20.
    assert len(drawn) == 4
    calls.clear()
    res = U.unlearn_gan(arch, gan.g_params, gan.d_params, cfg=cfg, **kw)
    assert [a["rounds"] for a in res.attempts] == [20, 20]
    # The second attempt's checks at rounds 10 and 20 judge only the current G's pools.
    assert len(calls) == n_first + 2, (len(calls), n_first)
    calls.clear()
    lone = U.unlearn_gan(arch, gan.g_params, gan.d_params, **kw,
                         cfg=dataclasses.replace(one, lambda_u=1.0))
    assert len(calls) == n_first                 # alone, it judges G₀'s pools itself
    np.testing.assert_array_equal(_flat(res), _flat(lone))
    strip = lambda h: {k: v for k, v in h.items() if k != "attempt"}
    assert [strip(h) for h in res.history[-3:]] == [strip(h) for h in lone.history]


def test_a_class_the_original_does_not_draw_is_warned_about(digits_splits, tiny_gan):
    """If the Original draws no more of the class than ``max_share``, the share criterion holds
    from the first check and the run can only make D forget: the run warns and says why; a
    class the Original draws raises no such warning."""
    import warnings

    gan, arch = tiny_gan
    x = digits_splits.train.x
    forget = np.asarray(x[:16], np.float32)
    known = {a.tobytes() for a in forget}
    # "class 1" is exactly the forget images, which G never reproduces.
    exact = lambda s: np.array([a.tobytes() in known for a in np.asarray(s, np.float32)],
                               np.int32)
    bright = lambda s: np.asarray(s).reshape(len(s), -1).mean(1)
    thr = float(np.median(bright(generate(arch, gan.g_params,
                                          arch.sample_latents(jax.random.key(7), 512)))))
    dark = lambda s: (bright(s) <= thr).astype(np.int32)           # half of G's samples
    kw = dict(retain_x=x[16:512], forget_x=forget, heldout_x=digits_splits.val.x,
              forget_classes=(1,),
              cfg=U.UnlearnConfig(fake_label="hard", substitution="latent", check_every=10,
                                  max_rounds=10, tol=0.0, pool_size=256))
    with pytest.warns(UserWarning, match=r"draws only 0\.00 % of class\(es\) 1 on 256 codes"):
        U.unlearn_gan(arch, gan.g_params, gan.d_params, classify=exact, **kw)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        U.unlearn_gan(arch, gan.g_params, gan.d_params, classify=dark, **kw)
    assert not [w for w in caught if "draws only" in str(w.message)]
    # The opposite end: a G that draws only the forgotten class has no kept class to keep.
    # Every check's drift read 1.0: the attempts ran to their cap (data substitution) or
    # ended on "use data-level substitution", which cannot help either.
    everything = lambda s: np.ones(len(s), np.int32)
    for sub in ("latent", "data"):
        with pytest.raises(ForgetRequestError, match=r"draws only class\(es\) 1 on 256 codes "
                                                     r"\(by the judge\): there is no kept"):
            U.unlearn_gan(arch, gan.g_params, gan.d_params, classify=everything,
                          **dict(kw, cfg=dataclasses.replace(kw["cfg"], substitution=sub)))


def test_max_rounds_is_a_hard_cap_when_not_a_multiple_of_check_every(digits_splits, tiny_gan):
    """max_rounds caps an attempt: with check_every 10 and max_rounds 15 the attempt runs a
    10-round chunk, then a 5-round one, and stops at 15 (it ran 20 when the last chunk was
    always a whole check_every)."""
    gan, arch = tiny_gan
    x = digits_splits.train.x
    cfg = U.UnlearnConfig(fake_label="hard", substitution="data", check_every=10,
                          max_rounds=15, tol=0.0, pool_size=256, lambda_u_attempts=2)
    res = U.unlearn_gan(arch, gan.g_params, gan.d_params, retain_x=x[16:512], forget_x=x[:16],
                        heldout_x=digits_splits.val.x, cfg=cfg)
    assert [a["rounds"] for a in res.attempts] == [15, 15] and res.rounds == 30
    assert [(h["attempt"], h["round"]) for h in res.history] == [
        (0, 0), (0, 10), (0, 15), (1, 0), (1, 10), (1, 15)]


def test_your_own_gan_in_docs_trains_unlearns_and_is_scored(capsys):
    """docs/gan.md "Your own GAN" runs as written: a user's Linen pair through train_gan,
    unlearn_gan (an item request) and evaluate_gan."""
    text = (Path(__file__).resolve().parent.parent / "docs" / "gan.md").read_text()
    section = text.split("## Your own GAN\n", 1)[1].split("\n## ", 1)[0]
    ns: dict = {}
    exec(compile(re.findall(r"```python\n(.*?)```", section, re.S)[0], "gan.md", "exec"), ns)
    arch, res, forget = ns["arch"], ns["res"], ns["forget"]
    assert not arch.registered and arch.name == "MyG/MyD" and arch.latent_dim == 16
    before = d_scores(arch, ns["gan"].d_params, forget).mean()
    after = d_scores(arch, res.d_params, forget).mean()
    # The item recipe's stop: D scores the forgotten items like held-out images (y_f).
    assert res.stopped == "criteria" and abs(after - res.y_f) < abs(before - res.y_f), (
        before, after, res.y_f)
    m = ns["metrics"]
    assert 0 <= m["d_mia_auc"] <= 1 and np.isfinite(m["classifier_fid"]) and m["classifier_fid"] > 0
    assert capsys.readouterr().out.startswith("criteria ")


def test_a_user_pair_of_the_mlp_modules_is_the_registered_mlp(tmp_path, digits_splits, tiny_gan):
    """The registered mlp's own modules passed as a user's pair train to the registered
    path's parameters exactly; a checkpoint of one pair refuses another."""
    from hyperforget_jax.checkpoint import Checkpointer
    from hyperforget_jax.errors import CheckpointError
    from hyperforget_jax.gan.models import MLPDiscriminator, MLPGenerator

    _, arch = tiny_gan
    pair = dict(generator=MLPGenerator((8, 8, 1)), discriminator=MLPDiscriminator((8, 8, 1)))
    user = make_gan_arch(image_shape=(8, 8, 1), **pair)
    assert not user.registered and user != arch and user.param_counts() == arch.param_counts()
    train = digits_splits.train
    cfg = GANConfig(epochs=1, latent_prior="normal")           # tiny_gan's compiled epoch
    with Checkpointer(tmp_path / "ck") as ck:
        mine, _, got = train_gan(train.subset(np.arange(64)), cfg, checkpointer=ck, **pair)
    theirs, _, _ = train_gan(train.subset(np.arange(64)), cfg)
    assert got == user
    for a, b in zip(jax.tree.leaves(mine), jax.tree.leaves(theirs)):
        np.testing.assert_array_equal(a, b)
    # (unlearn_gan and evaluate_gan on a user's pair: the docs test above.)
    # The config does not name the pair: resuming with another one (or the registered mlp,
    # whose parameters have the same shapes) is refused, not run on the stored state.
    for other in (dict(generator=MLPGenerator((8, 8, 1), hidden=(256, 256)),
                       discriminator=pair["discriminator"]), {}):
        with Checkpointer(tmp_path / "ck") as ck, pytest.raises(CheckpointError,
                                                                match="another pair"):
            train_gan(train.subset(np.arange(64)), dataclasses.replace(cfg, epochs=2),
                      checkpointer=ck, **other)


def test_unlearn_gan_refuses_a_pair_with_batch_statistics():
    """The rounds feed D the real, generated and forgotten streams as one batch and flag codes
    in a pool of their own: a user's D centred by its batch mean ran without a word, its
    losses mixing the streams. It is refused naming per-sample normalisation; the same pair
    without the centring passes the check (and would run)."""
    import flax.linen as nn

    class G(nn.Module):
        @nn.compact
        def __call__(self, z):
            return nn.sigmoid(nn.Dense(64)(z)).reshape(-1, 8, 8, 1)

    class D(nn.Module):
        centre: bool = True

        @nn.compact
        def __call__(self, x):
            h = nn.Dense(8)(x.reshape(len(x), -1))
            return nn.Dense(1)(nn.relu(h - h.mean(0) if self.centre else h))[:, 0]

    x = np.random.default_rng(0).uniform(size=(6, 8, 8, 1)).astype(np.float32)
    for centre in (True, False):
        arch = make_gan_arch(generator=G(), discriminator=D(centre), image_shape=(8, 8, 1),
                             latent_dim=4)
        g, d = arch.init(jax.random.key(0))
        if centre:
            with pytest.raises(ConfigError, match="discriminator D computes an output from "
                                                  "the rest of its batch.*nn.GroupNorm"):
                U.unlearn_gan(arch, g, d, retain_x=x[2:], forget_x=x[:2], heldout_x=None,
                              cfg=U.UnlearnConfig(fake_label="hard", max_rounds=1, check_every=1,
                                                  pool_size=8, batch_size=2))
        else:
            U._refuse_batch_statistics(arch, g, d, x)


def test_unlearn_gan_refuses_training_images_as_held_out_and_a_g_outside_0_1(
        digits_splits, tiny_gan, monkeypatch):
    """heldout_x of training images set the heldout fake label at the members' score (an item
    run stopped "by the criteria" with its items still scored as members); retain_x holding
    the forget set kept D training on it; a G ending in tanh ran its whole cascade on [-1, 1]
    images and met the criteria; evaluate_gan scored another split's test set (training
    images) as non-members."""
    from hyperforget_jax.errors import DataError
    from hyperforget_jax.gan import metrics as M

    gan, arch = tiny_gan
    x = digits_splits.train.x
    cfg = U.UnlearnConfig(fake_label="heldout", max_rounds=5, check_every=5, pool_size=64)
    good = dict(retain_x=x[16:512], forget_x=x[:16], heldout_x=digits_splits.val.x)
    for bad, words in ((dict(good, heldout_x=x[16:256]), "240 of the 240 images of heldout_x "
                                                         "are training images"),
                       (dict(good, retain_x=x[:512]), "16 of the 16 images of forget_x are "
                                                      "training images; retain_x holds them")):
        with pytest.raises(DataError, match=re.escape(words)):
            U.unlearn_gan(arch, gan.g_params, gan.d_params, cfg=cfg, **bad)
    # A G whose samples are in [-1, 1] (a tanh output): refused at the first check, on G₀.
    monkeypatch.setattr(U, "generate", lambda a, g, z, _real=U.generate: 2 * _real(a, g, z) - 1)
    for fake in ("heldout", "generated"):     # (generated: the fake label reads G₀'s samples)
        with pytest.raises(DataError, match=r"samples lie in \[-.*map a tanh output"):
            U.unlearn_gan(arch, gan.g_params, gan.d_params,
                          cfg=dataclasses.replace(cfg, fake_label=fake), **good)
    monkeypatch.undo()
    shuffled = data.make_splits(data.load_digits(), seed=5)   # another split's test set
    jarch = make_architecture("mlp", (8, 8, 1), 10)
    judge = M.Judge(jarch, jarch.init(jax.random.key(1)))
    with pytest.raises(DataError, match=r"images of splits.test \(the attack's non-members\) "
                                        r"are training images"):
        M.evaluate_gan(arch, gan.g_params, gan.d_params, judge, shuffled, x[:16], x[16:],
                       cfg=M.EvalConfig(num_samples=64, downstream_samples=0))


@pytest.mark.parametrize("call, err, words", [
    (lambda arch, g, d, x: d_scores(arch, d, x * 16), "DataError", "d_scores' images"),
    (lambda arch, g, d, x: d_scores(arch, d, x.reshape(len(x), -1)), "DataError", "shape"),
    (lambda arch, g, d, x: T_sample(arch, g, -1), "ConfigError", "(an integer >= 0), got -1"),
    (lambda arch, g, d, x: T_sample(arch, g, 2.5), "ConfigError", "got 2.5"),
    (lambda arch, g, d, x: T_save_grid(x, "/nonexistent/g.png", nrow=0), "ConfigError",
     "save_grid: nrow must be an integer >= 1"),
    (lambda arch, g, d, x: T_save_grid(x[0], "/nonexistent/g.png"), "DataError",
     "(N, H, W, C)"),
    (lambda arch, g, d, x: U.UnlearnConfig(track_fake_label="no"), "ConfigError",
     "track_fake_label must be True or False"),
    (lambda arch, g, d, x: U.UnlearnConfig(lambda_u="1"), "ConfigError",
     "lambda_u must be a number")])
def test_the_gan_helpers_refuse_bad_arguments(digits_splits, tiny_gan, call, err, words):
    # 0..16 images saturated D's scores to 1e-17 without a word; n=-1 an MLIR error, 2.5 a
    # TypeError; nrow 0 a ZeroDivisionError; "no" kept tracking on; "1" a TypeError.
    from hyperforget_jax import errors

    gan, arch = tiny_gan
    with pytest.raises(getattr(errors, err), match=re.escape(words)):
        call(arch, gan.g_params, gan.d_params, digits_splits.train.x[:8])
