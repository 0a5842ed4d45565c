"""Determinism on this machine (CPU): the same config and seed give bit-identical parameters and
identical reports (results.json minus timing fields); a different seed gives different ones.

What holds on GPU and what does not is in docs/guarantees.md. Determinism *across processes*
(fresh compilation, fresh Orbax) is covered by tests/test_reliability_resume.py, whose resumed
subprocess runs must end where the in-process run does.
"""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from hyperforget_jax import cli, data, models, train
from hyperforget_jax.commands import common

FAST = ["--dataset", "digits", "--arch", "gpt_mlp", "--epochs", "4", "--batch-size", "64",
        "--lr", "0.01", "--quiet"]
TIMING = ("seconds", "wall_time_s", "time")


def strip_timing(obj):
    """results.json without wall-clock fields (any key naming seconds or time)."""
    if isinstance(obj, dict):
        return {k: strip_timing(v) for k, v in obj.items()
                if not any(t in k for t in TIMING)}
    if isinstance(obj, list):
        return [strip_timing(v) for v in obj]
    return obj


def assert_bit_identical(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(la, lb, strict=True):
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == y.dtype and x.shape == y.shape
        assert x.tobytes() == y.tobytes(), f"max diff {np.max(np.abs(x - y))}"


def max_diff(a, b) -> float:
    return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


@pytest.fixture(scope="module")
def retrain_runs(tmp_path_factory):
    """``hyperforget retrain --forget-class 2`` three times: seed 0, seed 0 again, seed 1.
    The report includes RA/FA/TA and every named MIA, so they are checked too."""
    root = tmp_path_factory.mktemp("det")
    out = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        run_dir = root / name
        argv = ["retrain", "--forget-class", "2", "--run-dir", str(run_dir), "--seed", str(seed)]
        assert cli.main(argv + FAST) == 0
        _, params, _ = common.load_run(run_dir)
        out[name] = (params, json.loads((run_dir / "results.json").read_text()))
    return out


def test_cli_same_seed_gives_bit_identical_params_and_report(retrain_runs):
    (pa, ra), (pb, rb) = retrain_runs["a"], retrain_runs["b"]
    assert_bit_identical(pa, pb)
    assert "train_seconds" in ra  # the timing field exists and is the only thing dropped
    assert strip_timing(ra) == strip_timing(rb)
    assert ra["eval"]["mia_loss_lr"] == rb["eval"]["mia_loss_lr"]


def test_cli_different_seed_differs(retrain_runs):
    (pa, ra), (pc, rc) = retrain_runs["a"], retrain_runs["c"]
    assert max_diff(pa, pc) > 1e-3
    assert strip_timing(ra) != strip_timing(rc)


@pytest.fixture(scope="module")
def digits_model(digits_splits):
    arch = models.make_architecture("gpt_mlp", (8, 8, 1))
    cfg = train.TrainConfig(arch="gpt_mlp", epochs=3, batch_size=64, lr=0.01)
    state, _ = train.fit(arch, digits_splits.train, cfg)
    return arch, state.params


@pytest.mark.parametrize("method", ["gradtau", "neggrad_plus"])
def test_unlearning_is_deterministic(digits_splits, digits_model, method):
    from hyperforget_jax.unlearn import GradTauConfig, NegGradPlusConfig, unlearn

    arch, params = digits_model
    split = data.resolve_forget(digits_splits.train, data.ForgetRequest(fraction=0.1, seed=0))
    cfg = GradTauConfig(epochs=3) if method == "gradtau" else NegGradPlusConfig(epochs=1)
    run = lambda seed: unlearn(method, arch, params, split, digits_splits.val, cfg, seed=seed)
    r0, r0b, r1 = run(0), run(0), run(1)
    assert_bit_identical(r0.params, r0b.params)
    assert strip_timing(r0.info) == strip_timing(r0b.info)
    assert max_diff(r0.params, r1.params) > 0  # another batch order


def test_gan_training_and_unlearning_are_deterministic(digits_splits):
    from hyperforget_jax.gan.train import GANConfig, train_gan
    from hyperforget_jax.gan.unlearn import UnlearnConfig, unlearn_gan

    # The GAN recipe, images, cascade and requests of tests/test_gan_unlearn.py's tiny GAN and
    # short cascade (2 epochs, not 8): the programs those tests compile (the scanned epoch, the
    # cascade's chunk) serve here too, in this process or from the shared XLA cache.
    train = digits_splits.train.subset(np.arange(512))
    cfg = GANConfig(epochs=2, latent_prior="normal", seed=0)
    (s0, h0, arch), (s0b, h0b, _) = (train_gan(train, cfg) for _ in range(2))
    s1, _, _ = train_gan(train, GANConfig(**{**cfg.to_json(), "seed": 1}))
    assert_bit_identical(s0, s0b)
    assert h0 == h0b
    assert max_diff(s0.g_params, s1.g_params) > 1e-4

    ucfg = UnlearnConfig(fake_label="hard", substitution="data", check_every=10, max_rounds=30,
                         pool_size=256)
    x = digits_splits.train.x
    run = lambda: unlearn_gan(arch, s0.g_params, s0.d_params, retain_x=x[16:512],
                              forget_x=x[:16], heldout_x=digits_splits.val.x, cfg=ucfg)
    u0, u0b = run(), run()
    assert_bit_identical((u0.g_params, u0.d_params), (u0b.g_params, u0b.d_params))
    assert strip_timing(u0.history) == strip_timing(u0b.history) and u0.rounds == u0b.rounds
