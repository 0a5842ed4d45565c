"""Bad input, everywhere: a table of bad inputs to the API and the CLI.

Every API case must raise the named :class:`HyperforgetError` subclass with a message that names
the problem; every CLI case must exit 2 with exactly one line on stderr (checked at the file
descriptor, so stray library logging would be caught too) and must leave nothing half-written in
its output directory.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import save_zero_hypernet, tiny_hyperspec

from hyperforget_jax import cli, data, models, params as P_, train
from hyperforget_jax.checkpoint import Checkpointer, load_params, save_params
from hyperforget_jax.errors import (ArchitectureError, CheckpointError, ConfigError, DataError,
                                    ForgetRequestError, HyperforgetError, NonFiniteError)

# A damaged checkpoint makes Orbax leave un-awaited read coroutines behind; harmless noise.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ["--dataset", "digits"]
TINY = [*DIGITS, "--arch", "gpt_mlp", "--epochs", "1", "--batch-size", "64", "--quiet"]


# ------------------------------------------------------------------------------ shared fixtures


class Ctx:
    """Everything the cases need, built once per module (one tiny 1-epoch training run)."""


def _corrupt_copy(src: Path, dst: Path, how: str) -> Path:
    shutil.copytree(src, dst)
    files = sorted((p for p in (dst / "checkpoints").rglob("*") if p.is_file()
                    and "state" in p.parts), key=lambda p: p.stat().st_size)
    big = files[-1]  # the array data file
    raw = big.read_bytes()
    if how == "truncate":
        big.write_bytes(raw[: len(raw) // 3])
    elif how == "garbage":
        big.write_bytes(bytes(np.random.default_rng(0).integers(0, 256, len(raw), np.uint8)))
    elif how == "delete":
        for f in files:
            f.unlink()
    return dst


@pytest.fixture(scope="module")
def ctx(tmp_path_factory, digits_splits):
    c = Ctx()
    root = tmp_path_factory.mktemp("bad")
    c.root = root
    c.splits = digits_splits
    c.train = digits_splits.train
    c.arch = models.make_architecture("gpt_mlp", (8, 8, 1))
    c.params = c.arch.init(jax.random.key(0))
    c.mlp_params = models.make_architecture("mlp", (8, 8, 1)).init(jax.random.key(0))
    # A real run written by the CLI, and damaged copies of it.
    c.run = root / "run"
    assert cli.main(["train", "--run-dir", str(c.run), *TINY]) == 0
    c.truncated = _corrupt_copy(c.run, root / "truncated", "truncate")
    c.garbage = _corrupt_copy(c.run, root / "garbage", "garbage")
    c.emptied = _corrupt_copy(c.run, root / "emptied", "delete")
    # Another run's checkpoints copied in: run.json names seed 7, the checkpoints seed 0.
    c.copied = root / "copied"
    shutil.copytree(c.run, c.copied)
    run_json = json.loads((c.copied / "run.json").read_text())
    run_json["identity"]["train_config"]["seed"] = 7
    (c.copied / "run.json").write_text(json.dumps(run_json))
    # A checkpoint that is not a hyperforget run (no run metadata).
    c.foreign = root / "foreign"
    with Checkpointer(c.foreign / "checkpoints") as ck:
        ck.save(1, {"w": np.ones(3, np.float32)}, {"written_by": "someone else"})
    # A run whose metadata says gpt_mlp but whose arrays are an mlp's (e.g. files mixed up).
    c.mixed = root / "mixed"
    meta = json.loads((c.run / "results.json").read_text())["meta"]
    cfg = train.TrainConfig(**meta["train_config"])
    state = train.init_state(c.arch, train.make_optimizer(cfg), None, c.mlp_params)
    with Checkpointer(c.mixed / "checkpoints") as ck:
        ck.save(1, state, {**meta, "epoch": 1})
    # A params checkpoint, and a file where a directory is expected.
    c.saved = root / "saved_params"
    save_params(c.saved, c.params, {"arch": "gpt_mlp"})
    # An mlp's parameters saved as a run (the hypernetworks below sample gpt_mlp networks).
    c.mlp_run = root / "mlp_run"
    save_params(c.mlp_run / "params", c.mlp_params, {
        "architecture": models.make_architecture("mlp", (8, 8, 1)).to_json()})
    c.a_file = root / "a_file"
    c.a_file.write_text("not a directory\n")
    c.empty_dir = root / "empty"
    c.empty_dir.mkdir()
    _hypernets(c)
    return c


def _hypernets(c) -> None:
    """Two untrained, tiny hypernetworks (DiHyFo-1 for class 3, DiHyFo-2 for single-class
    requests): in memory for the API cases (refusals never read the weights), and the DiHyFo-1
    one saved like ``hyperforget hypertrain`` does (zero weights) for the CLI cases."""
    from hyperforget_jax.hyperforget import dihyfo as H

    c.hyper = {variant: H.Hypernet(tiny_hyperspec(c.arch, variant, fc), None)
               for variant, fc in (("dihyfo1", 3), ("dihyfo2", None))}
    save_zero_hypernet(c.root / "dihyfo1", c.hyper["dihyfo1"].spec)
    from hyperforget_jax import rundir
    save_zero_hypernet(c.root / "dihyfo1_digits", c.hyper["dihyfo1"].spec, {
        "dataset": "digits", "split_seed": 0,
        "identity": {"data": rundir.data_fingerprint(c.splits)}})


def _hyper_call(fn_name, *args, **kw):
    from hyperforget_jax.hyperforget import dihyfo as H

    return getattr(H, fn_name)(*args, **kw)


def _hyper_spec(**kw):
    from hyperforget_jax.hyperforget import denoiser as DN
    from hyperforget_jax.hyperforget import dihyfo as H

    from conftest import tiny_hyperspec

    arch = models.make_architecture("gpt_mlp", (8, 8, 1))
    return H.HyperSpec(arch=arch, weights=tiny_hyperspec(arch).weights,
                       denoiser=DN.DenoiserConfig(tokens="units"), **kw)


def _nan_digits(ctx) -> data.Dataset:
    x = ctx.train.x.copy()
    x[5, 2, 3, 0] = np.nan
    return ctx.train.replace(x=x)


def _unlearn(c, method, mnist_like=False, params=None, arch=None, **kw):
    from hyperforget_jax.unlearn import unlearn

    split = data.resolve_forget(c.train, data.ForgetRequest(classes=(3,)))
    if mnist_like:
        big = np.zeros((len(split.forget), 28, 28, 1), np.float32)
        split = split._replace(forget=split.forget.replace(x=big))
    return unlearn(method, c.arch if arch is None else arch,
                   c.params if params is None else params, split, c.splits.val, **kw)


def _seven_outputs(c):
    """gpt_mlp with 7 outputs, and its parameters, for 10-class data."""
    arch = models.make_architecture("gpt_mlp", (8, 8, 1), num_classes=7)
    return {"arch": arch, "params": arch.init(jax.random.key(0))}


def _split_with(c, **replace):
    """The class-3 split with its retain set's fields replaced (labels, images)."""
    split = data.resolve_forget(c.train, data.ForgetRequest(classes=(3,)))
    return split._replace(retain=split.retain.replace(**replace))


def _doubled(split, part):
    """``split`` with its ``part`` ("forget" or "retain") set given twice, rows and indices."""
    idx = np.tile(getattr(split, f"{part}_idx"), 2)
    return split._replace(**{part: getattr(split, part).subset(np.tile(
        np.arange(len(getattr(split, part))), 2)), f"{part}_idx": idx})


def _unlearn_split(c, split, method="gradtau", val=None, arch=None, params=None):
    from hyperforget_jax.unlearn import unlearn

    return unlearn(method, c.arch if arch is None else arch,
                   c.params if params is None else params, split,
                   c.splits.val if val is None else val)


def _five_output_module():
    """A user's flax module with 5 outputs and no ``num_classes`` field, with its params."""
    import flax.linen as nn

    class Net5(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(5)(x.reshape(x.shape[0], -1))

    return {"arch": Net5(), "params": Net5().init(jax.random.key(0),
                                                  jnp.zeros((1, 8, 8, 1)))["params"]}


def _evaluate(c, fsplit, request, splits=None):
    from hyperforget_jax.evaluation import evaluate_unlearning

    return evaluate_unlearning(c.arch, c.params, c.splits if splits is None else splits,
                               fsplit, request)


def _sweep_two_classes(c):
    from hyperforget_jax.unlearn import unlearn_sweep

    s3, s4 = (data.resolve_forget(c.train, data.ForgetRequest(classes=(k,))) for k in (3, 4))
    n = min(len(s3.forget), len(s4.forget))     # equal sizes: one program for both members
    s3, s4 = (s._replace(forget=s.forget.subset(np.arange(n)),
                         forget_idx=s.forget_idx[:n]) for s in (s3, s4))
    s3, s4 = (s._replace(retain=s.retain.subset(np.arange(len(c.train) - 2 * n)),
                         retain_idx=s.retain_idx[:len(c.train) - 2 * n]) for s in (s3, s4))
    return unlearn_sweep("gradtau", c.arch, c.params, [s3, s4], c.splits.val, seeds=[0, 1])


def _tiny_gan(c):
    """A dense GAN for digits' 8×8 images, untrained (refusals never train it)."""
    from hyperforget_jax.gan.models import make_gan_arch

    arch = make_gan_arch("mlp", (8, 8, 1))
    g, d = arch.init(jax.random.key(0))
    return arch, g, d


def _gan_unlearn(c, g_params=None, **images):
    from hyperforget_jax.gan import ITEM_RECIPE, unlearn_gan

    arch, g, d = _tiny_gan(c)
    x = c.train.x
    kw = {"retain_x": x[10:], "forget_x": x[:10], "heldout_x": c.splits.val.x, **images}
    return unlearn_gan(arch, g if g_params is None else g_params, d, cfg=ITEM_RECIPE, **kw)


def _class3(c):
    return data.resolve_forget(c.train, data.ForgetRequest(classes=(3,)))


def _gan_evaluate_with_forget_y_minus_1(c):
    """Members labelled -1 were dropped by the class matching: 1 of 8 left, AUC 0.0."""
    from hyperforget_jax.gan.metrics import EvalConfig, Judge, evaluate_gan

    y = np.full(8, -1)
    y[0] = 3
    return evaluate_gan(*_tiny_gan(c), Judge(c.arch, c.params), c.splits, c.train.x[:8],
                        c.train.x[8:], None, EvalConfig(num_samples=64, downstream_samples=0),
                        forget_y=y)


def _gan_evaluate_with_a_5_class_judge(c):
    from hyperforget_jax.gan.metrics import Judge, evaluate_gan

    arch, g, d = _tiny_gan(c)
    jarch = models.make_architecture("mlp", (8, 8, 1), 5)
    return evaluate_gan(arch, g, d, Judge(jarch, jarch.init(jax.random.key(0))), c.splits,
                        c.train.x[:10], c.train.x[10:], (3,))


def _gan_evaluate_with_a_5_output_judge_that_does_not_say(c):
    """A user's judge (an apply_fn: no class count) with 5 outputs on 10-class data: class
    7's share read 0.0, every class from 5 up never drawn."""
    from hyperforget_jax.gan.metrics import EvalConfig, Judge, evaluate_gan

    jarch = models.make_architecture("mlp", (8, 8, 1), 5)
    user = models.as_model(jarch.apply, (8, 8, 1))
    return evaluate_gan(*_tiny_gan(c), Judge(user, jarch.init(jax.random.key(0))), c.splits,
                        c.train.x[:10], c.train.x[10:], (7,), EvalConfig(num_samples=64,
                                                                          downstream_samples=0))


def _gan_evaluate_with_a_5_output_judge_that_says_10(c):
    """Declared ``num_classes=10``, a 5-output judge was taken at its word (only a judge that
    did not say was measured): class 7's share read 0.0."""
    from hyperforget_jax.gan.metrics import EvalConfig, Judge, evaluate_gan

    jarch = models.make_architecture("mlp", (8, 8, 1), 5)
    user = models.as_model(jarch.apply, (8, 8, 1), 10)
    return evaluate_gan(*_tiny_gan(c), Judge(user, jarch.init(jax.random.key(0))), c.splits,
                        c.train.x[:10], c.train.x[10:], (7,), EvalConfig(num_samples=64,
                                                                          downstream_samples=0))


def _gan_evaluate_a_tanh_generator(c):
    """A user's G ending in tanh (the usual DCGAN) drew 44 % negative pixels, and every metric
    was computed on images the judge never saw."""
    import flax.linen as nn

    from hyperforget_jax.gan.metrics import EvalConfig, Judge, evaluate_gan
    from hyperforget_jax.gan.models import make_gan_arch

    class G(nn.Module):
        @nn.compact
        def __call__(self, z):
            return jnp.tanh(nn.Dense(64)(z)).reshape((-1, 8, 8, 1))

    class D(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(1)(x.reshape((x.shape[0], -1)))[:, 0]

    arch = make_gan_arch(generator=G(), discriminator=D(), latent_dim=16, image_shape=(8, 8, 1))
    g, d = arch.init(jax.random.key(0))
    return evaluate_gan(arch, g, d, Judge(c.arch, c.params), c.splits, c.train.x[:10],
                        c.train.x[10:], (3,), EvalConfig(num_samples=64, downstream_samples=0))


def _gan_evaluate_on(c, splits, reference_feats=None):
    """``evaluate_gan`` of the tiny GAN on 64 samples with a 10-class judge, ``splits`` and
    ``reference_feats``."""
    from hyperforget_jax.gan.metrics import EvalConfig, Judge, evaluate_gan

    return evaluate_gan(*_tiny_gan(c), Judge(c.arch, c.params), splits, c.train.x[:10],
                        c.train.x[10:], (3,), EvalConfig(num_samples=64, downstream_samples=64),
                        reference_feats)


def _tiny_corpus(c, **kw):
    """A 2-seed, 1-epoch digits corpus under ``never/`` (which must stay empty)."""
    from hyperforget_jax.hyperforget import corpus as C

    cfg = C.CorpusConfig(num_seeds=2, fleet_size=2, epochs_range=(1, 1), unlearn_epochs=1,
                         checkpoints=1, class_pairs=1)
    return C.build_corpus(c.root / "never" / "corpus", cfg, c.splits, progress=False, **kw)


def _fleet(c, **kw):
    return train.fit_fleet(c.arch, c.train, train.TrainConfig(arch="gpt_mlp", epochs=1), **kw)


def _hyper_prompt(c):
    return _hyper_call("make_prompt", c.hyper["dihyfo2"], c.params, c.train, (1,))


def _stream(c, n_forget=100, n_retain=1000, labels=None, images=None, params=None,
            forget_rows=100):
    """∇τ from streamed pairs of 100 + 100 digits, 1 forget batch per epoch."""
    from hyperforget_jax.unlearn import GradTauConfig
    from hyperforget_jax.unlearn.gradtau_stream import run_gradtau_stream

    x, y = c.train.x, c.train.y
    rx = x[200:300] if images is None else images
    ry = y[200:300] if labels is None else labels
    pair = ((x[:forget_rows], y[:forget_rows]), (rx, ry))
    params = c.params if params is None else params
    return run_gradtau_stream(c.arch, params, lambda e: [pair], n_forget=n_forget,
                              n_retain=n_retain, config=GradTauConfig(batch_size=100),
                              tau=2.3)


# ------------------------------------------------------------------------------ API cases

API_CASES = [
    # forget requests
    ("request-empty-classes", lambda c: data.ForgetRequest(classes=()), ForgetRequestError,
     "empty forget request"),
    ("request-two-kinds", lambda c: data.ForgetRequest(classes=(1,), fraction=0.1),
     ForgetRequestError, "exactly one of classes, fraction or indices"),
    ("request-duplicate-classes", lambda c: data.ForgetRequest(classes=(1, 1)),
     ForgetRequestError, "duplicated classes"),
    # A seed draws a fraction's subset only: a class or index request kept it in its record
    # and gave the same split for every seed.
    ("request-seed-for-classes", lambda c: data.ForgetRequest(classes=(1,), seed=7),
     ForgetRequestError, "seed=7 would be ignored: .* a request of classes has none"),
    ("request-seed-for-indices", lambda c: data.ForgetRequest(indices=(1, 2), seed=1),
     ForgetRequestError, "seed=1 would be ignored: .* a request of indices has none"),
    ("unknown-class", lambda c: data.resolve_forget(c.train, data.ForgetRequest(classes=(10,))),
     ForgetRequestError, "class 10 does not exist"),
    ("negative-class", lambda c: data.resolve_forget(c.train, data.ForgetRequest(classes=(-1,))),
     ForgetRequestError, "class -1 does not exist"),
    ("all-classes", lambda c: data.resolve_forget(
        c.train, data.ForgetRequest(classes=tuple(range(10)))),
     ForgetRequestError, "whole training set"),
    ("fraction-zero", lambda c: data.ForgetRequest(fraction=0.0), ForgetRequestError,
     "strictly between 0 and 1"),
    ("fraction-one", lambda c: data.ForgetRequest(fraction=1.0), ForgetRequestError,
     "strictly between 0 and 1"),
    ("fraction-negative", lambda c: data.ForgetRequest(fraction=-0.2), ForgetRequestError,
     "strictly between 0 and 1"),
    ("fraction-nan", lambda c: data.ForgetRequest(fraction=float("nan")), ForgetRequestError,
     "strictly between 0 and 1"),
    ("fraction-forgets-nothing", lambda c: data.resolve_forget(
        c.train, data.ForgetRequest(fraction=1e-6)), ForgetRequestError, "forgets nothing"),
    ("indices-empty", lambda c: data.ForgetRequest(indices=()), ForgetRequestError,
     "empty forget set"),
    ("indices-overlapping", lambda c: data.ForgetRequest(indices=(3, 4, 3)),
     ForgetRequestError, "duplicated indices"),
    ("indices-out-of-range", lambda c: data.resolve_forget(
        c.train, data.ForgetRequest(indices=(0, len(c.train)))), ForgetRequestError,
     "out of range"),
    ("indices-negative", lambda c: data.resolve_forget(
        c.train, data.ForgetRequest(indices=(-1,))), ForgetRequestError, "out of range"),
    # data
    ("nan-images", lambda c: data.from_arrays(_nan_digits(c).x, c.train.y), DataError,
     "NaN"),
    ("flat-images", lambda c: data.from_arrays(c.train.x.reshape(len(c.train), -1), c.train.y),
     DataError, r"\(N, H, W, C\)"),
    ("label-count-mismatch", lambda c: data.from_arrays(c.train.x, c.train.y[:-1]), DataError,
     "labels"),
    ("labels-out-of-range", lambda c: data.from_arrays(c.train.x, c.train.y + 5, 10),
     DataError, r"labels must lie in \[0, 10\)"),
    ("empty-dataset", lambda c: data.from_arrays(c.train.x[:0], c.train.y[:0]), DataError,
     "empty"),
    ("unknown-dataset", lambda c: data.load_dataset("imagenet"), DataError,
     "unknown dataset 'imagenet'"),
    ("unprepared-dataset", lambda c: data.load_dataset("mnist", str(c.empty_dir)), DataError,
     "mnist"),
    ("wrong-image-shape-fit", lambda c: train.fit(
        models.make_architecture("gpt_mlp", (28, 28, 1)), c.train,
        train.TrainConfig(arch="gpt_mlp", epochs=1)), DataError, r"\(8, 8, 1\).*\(28, 28, 1\)"),
    # architectures and parameters
    ("unknown-arch", lambda c: models.make_architecture("vit", (8, 8, 1)), ConfigError,
     "unknown architecture 'vit'"),
    ("wrong-arch-params", lambda c: c.arch.check_params(c.mlp_params), ArchitectureError,
     "do not fit gpt_mlp"),
    ("flat-vector-wrong-length", lambda c: P_.unflatten(jnp.zeros(P_.param_count(c.params) - 1),
                                                        c.params),
     ArchitectureError, "parameters"),
    ("flat-vector-2d", lambda c: P_.unflatten(jnp.zeros((2, P_.param_count(c.params))),
                                              c.params), ArchitectureError, "shape"),
    # unlearning
    ("unlearn-unknown-method", lambda c: _unlearn(c, "forgetful"), ConfigError,
     "unknown unlearning method"),
    ("unlearn-mnist-images-digits-model", lambda c: _unlearn(c, "gradtau", mnist_like=True),
     DataError, r"forget set has images of shape \(28, 28, 1\)"),
    ("unlearn-wrong-arch-params", lambda c: _unlearn(c, "gradtau", params=c.mlp_params),
     ArchitectureError, "another architecture"),
    ("unlearn-labels-beyond-the-outputs", lambda c: _unlearn(c, "scrub", **_seven_outputs(c)),
     DataError, "has label 9 but the gpt_mlp model has 7 outputs"),
    ("unlearn-forget-classes-not-the-requests", lambda c: _unlearn(
        c, "gradtau", forget_classes=(5,)), ForgetRequestError,
     r"forget_classes \(5,\) does not match the forget set, whose samples are of classes "
     r"\(3,\)"),
    ("unlearn-nan-start", lambda c: _unlearn(
        c, "gradtau", params=jax.tree.map(lambda a: a * np.nan, c.params)), NonFiniteError,
     "the starting parameters hold NaN/inf"),
    ("unlearn-negative-labels", lambda c: _unlearn_split(
        c, _split_with(c, y=np.where(_split_with(c).retain.y == 7, -3,
                                     _split_with(c).retain.y))),
     DataError, "retain set has label -3"),
    ("unlearn-uint8-images", lambda c: _unlearn_split(
        c, _split_with(c, x=(_split_with(c).retain.x * 255).astype(np.uint8))),
     DataError, "retain set has images of dtype uint8.*divide by 255"),
    ("unlearn-float-labels", lambda c: _unlearn_split(
        c, _split_with(c, y=_split_with(c).retain.y.astype(np.float32))),
     DataError, "labels of shape .* and dtype float32"),
    ("unlearn-budget-zero", lambda c: _unlearn_split(
        c, data.resolve_forget(c.train, data.ForgetRequest(fraction=0.8))),
     ForgetRequestError, r"batches \(N_f, \d+ samples\) against the retain set's .* budget E "
                         r"= int\(6·N_r/\(2·N_f\)\) 0, and the model would be returned unchanged"
                         r".*on the CLI --config.epochs=N"),
    ("unlearn-overlapping-split", lambda c: _unlearn_split(
        c, _split_with(c)._replace(retain=c.train, retain_idx=np.arange(len(c.train)))),
     ForgetRequestError, "share training indices"),
    ("unlearn-negative-index-split", lambda c: _unlearn_split(      # -1 is also retain's n − 1
        c, _split_with(c)._replace(forget=c.train.subset([len(c.train) - 1]),
                                   forget_idx=np.array([-1]), retain=c.train,
                                   retain_idx=np.arange(len(c.train)))),
     ForgetRequestError, "split.forget_idx holds the negative index -1"),
    ("unlearn-repeated-forget-index-split", lambda c: _unlearn_split(    # α₀ counted it twice
        c, _doubled(_split_with(c), "forget")), ForgetRequestError,
     r"split.forget_idx repeats training index \d+ \(\d+ repeated\)"),
    ("unlearn-repeated-retain-index-split", lambda c: _unlearn_split(
        c, _doubled(_split_with(c), "retain"), method="neggrad_plus"), ForgetRequestError,
     "split.retain_idx repeats training index"),
    ("unlearn-user-module-of-5-outputs", lambda c: _unlearn_split(
        c, _split_with(c), **_five_output_module()),
     ArchitectureError, "has 5 outputs but the data has 10 classes"),
    ("unlearn-empty-validation-set", lambda c: _unlearn_split(
        c, _split_with(c), val=c.splits.val.subset(np.arange(0))),
     DataError, "validation set is empty"),
    ("unlearn-not-a-split", lambda c: _unlearn_split(c, data.ForgetRequest(classes=(3,))),
     ConfigError, "got ForgetRequest"),
    ("sweep-per-seed-splits-of-other-classes", _sweep_two_classes, ConfigError,
     "remove different classes"),
    ("evaluate-split-of-another-request", lambda c: _evaluate(
        c, _split_with(c), data.ForgetRequest(classes=(5,))),
     ForgetRequestError, "fsplit is not the split of class 5"),
    ("evaluate-test-set-without-the-class", lambda c: _evaluate(
        c, _split_with(c), data.ForgetRequest(classes=(3,)), c.splits._replace(
            test=c.splits.test.subset(np.flatnonzero(c.splits.test.y != 3)))),
     DataError, r"test set has 0 samples of the forgotten classes.*too few samples to reach "
                r"its test split can only be forgotten as items: hf.ForgetRequest\(indices="),
    ("evaluate-test-set-without-one-of-the-classes", lambda c: _evaluate(   # was a number
        c, data.resolve_forget(c.train, data.ForgetRequest(classes=(3, 5))),
        data.ForgetRequest(classes=(3, 5)), c.splits._replace(
            test=c.splits.test.subset(np.flatnonzero(c.splits.test.y != 5)))),
     DataError, r"no samples of forgotten class\(es\) \[5\] of \(3, 5\).*ForgetRequest\(indices="),
    ("from-arrays-fractional-labels", lambda c: data.from_arrays(c.train.x, c.train.y + 0.5),
     DataError, "whole-number class ids"),
    ("from-arrays-one-hot-labels", lambda c: data.from_arrays(
        c.train.x, np.eye(10)[c.train.y]), DataError, r"1-D .* y.argmax\(-1\)"),
    ("from-arrays-int64-images", lambda c: data.from_arrays(
        (c.train.x * 255).astype(np.int64), c.train.y), DataError, "dtype int64"),
    ("make-splits-empty-test", lambda c: data.make_splits(
        c.train.subset(np.unique(c.train.y, return_index=True)[1][:2])),   # two images
     DataError, "split of .* is empty"),
    ("request-json-unknown-key", lambda c: data.ForgetRequest.from_json({"class": [3]}),
     ForgetRequestError, "unknown forget request key 'class'"),
    ("request-json-not-an-object", lambda c: data.ForgetRequest.from_json("[3]"),
     ForgetRequestError, "JSON object"),
    ("request-fraction-string", lambda c: data.ForgetRequest(fraction="abc"),
     ForgetRequestError, "must be a number"),
    ("gan-unlearn-zero-lr", lambda c: __import__(
        "hyperforget_jax.gan", fromlist=["UnlearnConfig"]).UnlearnConfig(lr=0.0), ConfigError,
     "G's learning rate"),
    # Positive, but 0 in float32: the GAN configs took it and trained nothing (stop 63).
    ("gan-unlearn-lr-zero-in-float32", lambda c: __import__(
        "hyperforget_jax.gan", fromlist=["UnlearnConfig"]).UnlearnConfig(d_lr=1e-46),
     ConfigError, r"d_lr must be a positive number that float32 holds \(this one is 0"),
    ("gan-train-lr-zero-in-float32", lambda c: __import__(
        "hyperforget_jax.gan", fromlist=["GANConfig"]).GANConfig(lr=1e-46), ConfigError,
     r"learning rate must be a positive number that float32 holds \(this one is 0"),
    # Raw errors from deep inside (stop 63): NumPy's concatenate, Flax's InvalidRngError, a
    # reshape inside the model.
    # ~user of no user: pathlib's RuntimeError "Could not determine home directory".
    ("corpus-tilde-of-no-user", lambda c: __import__(
        "hyperforget_jax.hyperforget.corpus", fromlist=["x"]).Corpus("~nosuchuser-hf/c"),
     ConfigError, "cannot expand '~nosuchuser-hf'"),
    ("hypernet-tilde-of-no-user", lambda c: __import__(
        "hyperforget_jax.hyperforget.store", fromlist=["x"]).load_hypernet(
            "~nosuchuser-hf/h.npz"), ConfigError, "cannot expand '~nosuchuser-hf'"),
    # The library's own checkpoint and run paths wrote into a literal ./~nosuchuser (stop 64).
    ("save-params-tilde-of-no-user", lambda c: __import__(
        "hyperforget_jax.checkpoint", fromlist=["x"]).save_params("~nosuchuser-hf/p", c.params),
     ConfigError, "cannot expand '~nosuchuser-hf'"),
    ("checkpointer-tilde-of-no-user", lambda c: __import__(
        "hyperforget_jax.checkpoint", fromlist=["x"]).Checkpointer("~nosuchuser-hf/ck"),
     ConfigError, "cannot expand '~nosuchuser-hf'"),
    ("open-run-tilde-of-no-user", lambda c: __import__(
        "hyperforget_jax.rundir", fromlist=["x"]).open_run("~nosuchuser-hf/r", {}).__enter__(),
     ConfigError, "cannot expand '~nosuchuser-hf'"),
    # A string read digit by digit (1.5 ± 0.71), None a NaN mean (stop 63).
    ("mean-std-a-string", lambda c: __import__(
        "hyperforget_jax.metrics", fromlist=["x"]).mean_std("12"), DataError,
     "mean_std takes one number per seed"),
    # An int past float64's range: an OverflowError / TypeError traceback (stop 64).
    ("train-lr-int-past-float64", lambda c: train.TrainConfig(lr=10**400), ConfigError,
     r"TrainConfig.lr \(learning rate\) must be a finite number > 0, got inf"),
    ("gan-lr-int-past-float64", lambda c: __import__(
        "hyperforget_jax.gan", fromlist=["GANConfig"]).GANConfig(lr=10**400), ConfigError,
     "learning rate must be a positive number"),
    # metrics.evaluate scored float 0..255 images without a word (stop 64).
    ("evaluate-float-0-255", lambda c: __import__(
        "hyperforget_jax.metrics", fromlist=["x"]).evaluate(
        c.arch.apply, c.params, c.train.x * 255, c.train.y, 10), DataError,
     r"values up to 255 \(0..255 pixel values\?\)"),
    ("attack-complex-features", lambda c: __import__(
        "hyperforget_jax.metrics", fromlist=["x"]).mia_loss_lr(
        np.ones(4) + 1j, np.zeros(4)), DataError, "member_losses holds complex values"),
    # The GAN / HyperForget API's unchecked arguments (stop 64's fuzz): a fake-label seed of
    # 2**32 + 5 drew seed 5's codes; a chunk of 0 or an empty D batch were bare errors; a
    # mixture std or a prompt target 0 (or inf) in float32, "2" read as 2.0.
    ("fake-label-seed-past-2-32", lambda c: __import__(
        "hyperforget_jax.gan.unlearn", fromlist=["x"]).fake_label(
        "generated", _tiny_gan(c)[0], _tiny_gan(c)[1], _tiny_gan(c)[2], seed=2**32 + 5),
     ConfigError, "fake_label seed"),
    ("fake-label-no-latents", lambda c: __import__(
        "hyperforget_jax.gan.unlearn", fromlist=["x"]).fake_label(
        "generated", _tiny_gan(c)[0], _tiny_gan(c)[1], _tiny_gan(c)[2], num_latents=0),
     ConfigError, "fake_label: num_latents must be an integer >= 1"),
    ("d-scores-chunk-zero", lambda c: __import__(
        "hyperforget_jax.gan.train", fromlist=["x"]).d_scores(
        _tiny_gan(c)[0], _tiny_gan(c)[2], c.train.x[:4], chunk=0),
     ConfigError, r"chunk must be an integer >= 1 \(rows per call\)"),
    ("plan-batches-fractional-epochs", lambda c: __import__(
        "hyperforget_jax.unlearn.gradtau", fromlist=["x"]).plan_batches(10, 20, 4, 2.7, 0),
     ConfigError, r"plan_batches: epochs \(forget-epochs E\) must be an integer"),
    ("mixture-sigma-zero-in-float32", lambda c: __import__(
        "hyperforget_jax.gan.models", fromlist=["x"]).check_latent_prior("mixture", 20, 1e-320),
     ConfigError, "mixture_sigma must be a positive number that float32 holds"),
    ("prompt-target-a-string", lambda c: __import__(
        "hyperforget_jax.hyperforget.spec", fromlist=["x"]).check_target("forget target", "2"),
     ForgetRequestError, "prompt forget target must be a number, got '2'"),
    ("prompt-target-zero-in-float32", lambda c: __import__(
        "hyperforget_jax.hyperforget.spec", fromlist=["x"]).check_target("forget target",
                                                                          1e-50),
     ForgetRequestError, "prompt forget target must be a positive finite loss"),
    # format_mean_std turned "12" into [1., 2.] before mean_std's check ("1.50 ± 0.71").
    ("format-mean-std-a-string", lambda c: __import__(
        "hyperforget_jax.metrics", fromlist=["x"]).format_mean_std("12"), DataError,
     "mean_std takes one number per seed"),
    ("format-over-seeds-a-string", lambda c: __import__(
        "hyperforget_jax.metrics", fromlist=["x"]).format_over_seeds("12"), DataError,
     "mean_std takes one number per seed"),
    # The review's and the second fuzz's (stop 64): the record key overwritten and dropped;
    # a hypernetwork's own record replaced by extra_meta; eps 0 a NaN IS; NaN items flagging
    # arbitrary codes; channel-first images judged as they came.
    ("checkpoint-meta-reserved-key", lambda c: __import__(
        "hyperforget_jax.checkpoint", fromlist=["x"]).Checkpointer(c.root / "never" / "ck").save(
        1, {"w": np.zeros(2, np.float32)}, {"jax_settings": 1}), ConfigError,
     "meta key 'jax_settings' is reserved"),
    ("save-hypernet-extra-meta-record-key", lambda c: save_zero_hypernet(
        c.root / "never" / "h.npz", tiny_hyperspec(c.arch, "dihyfo2"), {"format": "mine"}),
     ConfigError, r"extra_meta may not set \['format'\]"),
    ("classifier-is-eps-zero", lambda c: __import__(
        "hyperforget_jax.gan.metrics", fromlist=["x"]).classifier_is(np.eye(3), eps=0.0),
     ConfigError, r"classifier_is: eps .* must be a number in \(0, 1e-3\]"),
    ("flag-item-codes-nan-items", lambda c: __import__(
        "hyperforget_jax.gan.unlearn", fromlist=["x"]).flag_item_codes(
        np.zeros((6, 4)), np.full((2, 4), np.nan)), DataError,
     "items and samples must be finite numbers"),
    ("judge-outputs-channel-first", lambda c: __import__(
        "hyperforget_jax.gan.metrics", fromlist=["x"]).judge_outputs(
        __import__("hyperforget_jax.gan.metrics", fromlist=["x"]).Judge(
            models.make_architecture("mlp", (8, 8, 1)),
            models.make_architecture("mlp", (8, 8, 1)).init(jax.random.key(0))),
        np.zeros((4, 1, 8, 8), np.float32)), DataError, "model takes"),
    ("mean-std-one-number", lambda c: __import__(
        "hyperforget_jax.metrics", fromlist=["x"]).mean_std(3.0), DataError,
     r"mean_std takes one number per seed \(a list\), got 3.0; pass \[3.0\]"),
    ("make-splits-empty", lambda c: data.make_splits(c.train.subset(np.arange(0))), DataError,
     "make_splits: .* is empty"),
    ("init-an-int-seed", lambda c: c.arch.init(0), ConfigError,
     r"init takes a PRNG key, jax.random.key\(seed\); got 0"),
    ("init-a-jax-int-seed", lambda c: c.arch.init(__import__("jax").numpy.int32(0)),
     ConfigError, r"init takes a PRNG key, jax.random.key\(seed\)"),
    ("gradtau-update-empty-batch", lambda c: (lambda gt: gt.update(
        c.params, gt.init(c.params), (c.train.x[:0], c.train.y[:0]),
        (c.train.x[:8], c.train.y[:8])))(__import__(
            "hyperforget_jax.unlearn.gradtau", fromlist=["x"]).nabla_tau(
                train.per_example_ce(c.arch.apply), 0.5, tau=2.0)), DataError,
     "nabla_tau update: forget_batch is empty"),
    # A judge of 0 + 0 epochs labelled at random, and its metrics were reported (stop 63).
    ("gan-judge-untrained", lambda c: __import__(
        "hyperforget_jax.gan.metrics", fromlist=["x"]).judge_recipe(
            train.TrainConfig(epochs=0), anneal_epochs=0), ConfigError,
     "the judge's recipe trains it for 0 epochs and 0 anneal epochs"),
    ("gan-unlearn-beta1", lambda c: __import__(
        "hyperforget_jax.gan", fromlist=["UnlearnConfig"]).UnlearnConfig(beta1=1.5),
     ConfigError, r"beta1 .* must lie in \[0, 1\)"),
    ("damaged-architecture-record", lambda c: models.Architecture.from_json(5),
     CheckpointError, "architecture record .* is damaged"),
    # GAN unlearning and HyperForget
    ("gan-unlearn-images-in-0-255", lambda c: _gan_unlearn(c, retain_x=c.train.x[10:] * 255),
     DataError, r"retain_x .* has values in \[0, 255\].*divide"),
    ("gan-unlearn-empty-retain-set", lambda c: _gan_unlearn(c, retain_x=c.train.x[:0]),
     DataError, "retain_x .* holds 0 images"),
    ("gan-unlearn-flat-images", lambda c: _gan_unlearn(
        c, forget_x=c.train.x[:10].reshape(10, -1)), DataError, "forget_x has images of shape"),
    ("gan-evaluate-judge-of-other-classes", _gan_evaluate_with_a_5_class_judge, ConfigError,
     "the judge has 5 classes but the data 10"),
    ("gan-evaluate-judge-of-other-classes-unsaid",
     _gan_evaluate_with_a_5_output_judge_that_does_not_say, ConfigError,
     "the judge has 5 classes but the data 10"),
    ("gan-evaluate-judge-of-other-classes-misdeclared",
     _gan_evaluate_with_a_5_output_judge_that_says_10, ConfigError,
     "the judge has 5 classes but the data 10"),
    ("gan-grid-of-0-255-images", lambda c: __import__(
        "hyperforget_jax.gan.train", fromlist=["x"]).save_grid(
        c.train.x[:4] * 255, c.root / "never" / "grid.png"), DataError,
     r"save_grid: images with values in \[0, 255\]; pass images in \[0, 1\]"),
    ("gan-evaluate-samples-outside-0-1", _gan_evaluate_a_tanh_generator, DataError,
     r"the generator's samples lie in \[-0\.\d+, 0\.\d+\], not in \[0, 1\].*\(x \+ 1\) / 2"),
    # Beside config=, arch_name / epochs were ignored (the config's trained instead).
    ("gan-judge-epochs-beside-config", lambda c: __import__(
        "hyperforget_jax.gan.metrics", fromlist=["x"]).train_judge(
        c.train, config=train.TrainConfig(epochs=1), epochs=5), ConfigError,
     "epochs=5 would be ignored beside config="),
    # Images in [-1, 1] (a tanh GAN's convention) were told to divide by 255.
    ("gan-train-images-in-minus-1-1", lambda c: __import__(
        "hyperforget_jax.gan", fromlist=["train_gan"]).train_gan(
        c.train.replace(x=c.train.x * 2 - 1), __import__(
            "hyperforget_jax.gan", fromlist=["GANConfig"]).GANConfig(arch="mlp", epochs=1)),
     DataError, r"values in \[-1, 1\]; images must lie in \[0, 1\] \(\(x \+ 1\) / 2 for "
                r"images in \[-1, 1\]\)"),
    # [0, 2] images were told to divide by 255 (leaving them in [0, 0.008]).
    ("gan-train-images-in-0-2", lambda c: __import__(
        "hyperforget_jax.gan", fromlist=["train_gan"]).train_gan(
        c.train.replace(x=c.train.x * 2), __import__(
            "hyperforget_jax.gan", fromlist=["GANConfig"]).GANConfig(arch="mlp", epochs=1)),
     DataError, r"values in \[0, 2\]; images must lie in \[0, 1\] \(rescale them"),
    # A resize's slight undershoot was told (x + 1) / 2, squeezing the images into [0.5, 1].
    ("gan-train-images-slightly-below-0", lambda c: __import__(
        "hyperforget_jax.gan", fromlist=["train_gan"]).train_gan(
        c.train.replace(x=c.train.x * 1.02 - 0.02), __import__(
            "hyperforget_jax.gan", fromlist=["GANConfig"]).GANConfig(arch="mlp", epochs=1)),
     DataError, r"values in \[-0\.02, 1\]; images must lie in \[0, 1\] \(np\.clip\(x, 0, 1\)"),
    ("gan-train-images-in-0-255", lambda c: __import__(
        "hyperforget_jax.gan", fromlist=["train_gan"]).train_gan(
        c.train.replace(x=c.train.x * 255), __import__(
            "hyperforget_jax.gan", fromlist=["GANConfig"]).GANConfig(arch="mlp", epochs=1)),
     DataError, "values in"),
    # The documented data helpers: Splits gave an AttributeError, batch size 0 a
    # ZeroDivisionError.
    ("augment-affine-of-splits", lambda c: data.augment_affine(c.splits, 2), DataError,
     "augment_affine takes a Dataset \\(e.g. splits.train\\), got a Splits"),
    ("iterate-batches-of-0", lambda c: list(data.iterate_batches(c.train, 0, 0)), DataError,
     "iterate_batches: batch_size must be an integer >= 1, got 0"),
    # 200 images with 20 labels trained on 20 (fit, downstream_accuracy's labels=), without a
    # word; float labels there were truncated to other classes.
    ("dataset-fewer-labels-than-images", lambda c: data.Dataset(
        c.train.x[:200], c.train.y[:20], 10, "mine"), DataError,
     "Dataset 'mine' has 200 images but 20 labels; pass one label per image"),
    ("gan-downstream-float-labels", lambda c: __import__(
        "hyperforget_jax.gan.metrics", fromlist=["x"]).downstream_accuracy(
        c.train.x[:50], None, c.splits.test, labels=c.train.y[:50] + 0.7), DataError,
     "labels must be 1-D integer class ids, got float64"),
    # A batch larger than the set repeated images in every batch, without a word.
    ("gan-train-batch-larger-than-the-set", lambda c: __import__(
        "hyperforget_jax.gan", fromlist=["train_gan"]).train_gan(
        c.train.replace(x=c.train.x[:40], y=c.train.y[:40]), __import__(
            "hyperforget_jax.gan", fromlist=["GANConfig"]).GANConfig(arch="mlp", epochs=1)),
     ConfigError, r"batch_size 64 is larger than the GAN's training set \(40 images\)"),
    # A string beta1 was a bare TypeError in the range check.
    ("gan-config-string-beta1", lambda c: __import__(
        "hyperforget_jax.gan", fromlist=["GANConfig"]).GANConfig(beta1="0.5"),
     ConfigError, "beta1 must be a number in"),
    ("gan-config-fractional-latent-dim", lambda c: __import__(
        "hyperforget_jax.gan", fromlist=["GANConfig"]).GANConfig(latent_dim=2.5),
     ConfigError, "latent_dim must be an integer"),
    # make_gan_arch truncated 16.7 to 16 and (8.9, 8, 1) to (8, 8, 1), took True as 1 and
    # (0, 0, 1) as a shape; "16" was a bare TypeError.
    ("gan-arch-fractional-latent-dim", lambda c: __import__(
        "hyperforget_jax.gan", fromlist=["x"]).make_gan_arch("mlp", (8, 8, 1), latent_dim=16.7),
     ConfigError, r"latent_dim must be an integer >= 1, got 16.7"),
    ("gan-arch-bool-latent-dim", lambda c: __import__(
        "hyperforget_jax.gan", fromlist=["x"]).make_gan_arch("mlp", (8, 8, 1), latent_dim=True),
     ConfigError, r"latent_dim must be an integer >= 1, got True"),
    ("gan-arch-string-latent-dim", lambda c: __import__(
        "hyperforget_jax.gan", fromlist=["x"]).make_gan_arch("mlp", (8, 8, 1), latent_dim="16"),
     ConfigError, r"latent_dim must be an integer >= 1, got '16'"),
    ("gan-arch-empty-image-shape", lambda c: __import__(
        "hyperforget_jax.gan", fromlist=["x"]).make_gan_arch("mlp", (0, 0, 1)),
     ConfigError, r"image_shape must be \(H, W, C\), three integers >= 1, got \(0, 0, 1\)"),
    ("gan-arch-auto-of-a-number", lambda c: __import__(
        "hyperforget_jax.gan", fromlist=["x"]).make_gan_arch("auto", 16),
     ConfigError, r"image_shape must be \(H, W, C\), three integers >= 1, got 16"),
    ("gan-arch-fractional-image-shape", lambda c: __import__(
        "hyperforget_jax.gan", fromlist=["x"]).make_gan_arch("mlp", (8.9, 8, 1)),
     ConfigError, r"three integers >= 1, got \(8.9, 8, 1\)"),
    # A GAN function given the pair's name (or a GANConfig) for arch: an AttributeError.
    ("gan-sample-arch-by-name", lambda c: __import__(
        "hyperforget_jax.gan", fromlist=["x"]).sample("mlp", _tiny_gan(c)[1], 4),
     ConfigError, r"sample takes arch=the GANArch train_gan returned .*got str"),
    ("gan-unlearn-arch-config", lambda c: __import__(
        "hyperforget_jax.gan", fromlist=["x"]).unlearn_gan(
        __import__("hyperforget_jax.gan", fromlist=["x"]).GANConfig(), *_tiny_gan(c)[1:],
        forget_x=c.train.x[:4], retain_x=c.train.x[4:], heldout_x=None),
     ConfigError, r"unlearn_gan takes arch=the GANArch .*got GANConfig"),
    ("gan-evaluate-forget-y-out-of-range", _gan_evaluate_with_forget_y_minus_1,
     DataError, r"forget_y holds labels -1..3, but the data has classes 0..9"),
    ("gan-unlearn-config-fractional-check-every", lambda c: __import__(
        "hyperforget_jax.gan", fromlist=["UnlearnConfig"]).UnlearnConfig(check_every=2.5),
     ConfigError, "check_every must be an integer"),
    ("hyper-sample-nan-start", lambda c: _hyper_call(
        "sample", jax.random.key(0), c.hyper["dihyfo2"],
        jax.tree.map(lambda l: l * np.nan, c.params), None), NonFiniteError,
     "start network's parameters contain NaN"),
    ("hyper-prompt-fractional-class", lambda c: _hyper_call(
        "make_prompt", c.hyper["dihyfo2"], c.params, c.train, (1.5,)), ForgetRequestError,
     "must be integers"),
    ("hyper-prompt-images-in-0-255", lambda c: _hyper_call(
        "make_prompt", c.hyper["dihyfo2"], c.params, c.train.replace(x=c.train.x * 255), (1,)),
     DataError, r"training set has images with values up to 255 .*takes images in \[0, 1\]"),
    ("hyper-sample-not-a-key", lambda c: _hyper_call(
        "sample", 123, c.hyper["dihyfo2"], c.params, _hyper_prompt(c)), ConfigError,
     "PRNG key"),
    ("hyper-best-of-not-a-key", lambda c: _hyper_call(      # was jax's error from split
        "sample_best_of", 123, c.hyper["dihyfo2"], c.params, None, c.train),
     ConfigError, "PRNG key"),
    ("hyper-sample-fractional-steps", lambda c: _hyper_call(
        "sample", jax.random.key(0), c.hyper["dihyfo2"], c.params, _hyper_prompt(c), 2.5),
     ConfigError, "num_steps must be an integer"),
    # the streams and the fleet: the checks of the in-memory drivers
    ("stream-budget-zero", lambda c: _stream(c, n_forget=400, n_retain=100),
     ForgetRequestError, "budget E = int.* 0, and the model would be returned unchanged"),
    ("stream-negative-retain-labels", lambda c: _stream(c, labels=-c.train.y[100:200] - 1),
     DataError, "retain batch has label -"),
    # The batches the schedule is computed for: 150-row forget batches for a batch_size of
    # 100, or a forget stream of 2 of the 100 forget rows, ran to the end with the config's
    # steps, E and α₀ in their info.
    ("stream-forget-batch-past-the-config-s", lambda c: _stream(c, forget_rows=150),
     ConfigError, r"a forget batch of 150 rows, but config.batch_size 100 gives batches of at "
                  r"most 100"),
    ("stream-truncated-forget-stream", lambda c: _stream(c, forget_rows=2), ConfigError,
     "streamed 2 forget rows, fewer than n_forget = 100"),
    ("stream-uint8-retain-images", lambda c: _stream(
        c, images=(c.train.x[100:200] * 255).astype(np.uint8)), DataError, "dtype uint8"),
    ("fit-stream-negative-labels", lambda c: train.fit_stream(
        c.arch, [(c.train.x[:64], c.train.y[:64] - 5)],
        train.TrainConfig(arch="gpt_mlp", epochs=1, batch_size=64)), DataError, "has label -"),
    ("fleet-subsets-out-of-range", lambda c: train.fit_fleet(
        c.arch, c.train, train.TrainConfig(epochs=1), seeds=[0, 1],
        subsets=np.full((2, 10), len(c.train))), ConfigError, r"subsets must be \(2, n\)"),
    ("fit-labels-beyond-the-outputs", lambda c: train.fit(
        _seven_outputs(c)["arch"], c.train, train.TrainConfig(epochs=1)), DataError,
     "training set 'digits' has label 9"),
    # configs
    ("negative-epochs", lambda c: train.TrainConfig(epochs=-1), ConfigError, "epochs"),
    ("zero-batch", lambda c: train.TrainConfig(batch_size=0), ConfigError, "batch_size"),
    # Every pair without its targets: the conditional model the samplers use never saw one.
    ("hypertrain-p-uncond-one", lambda c: __import__(
        "hyperforget_jax.hyperforget.denoiser", fromlist=["x"]).HyperTrainConfig(p_uncond=1.0),
     ConfigError, r"p_uncond must be >= 0 and < 1, got 1"),
    # A list of devices for mesh= was an unhashable-type TypeError in the program cache.
    ("fit-mesh-a-list", lambda c: train.fit(c.arch, c.train, train.TrainConfig(epochs=1),
                                            mesh=jax.devices()), ConfigError,
     "fit: mesh= takes a jax.sharding.Mesh, got a list"),
    ("unlearn-mesh-a-device", lambda c: __import__("hyperforget_jax").unlearn(
        "neggrad", c.arch, c.params, data.resolve_forget(c.train, data.ForgetRequest(
            classes=(1,))), c.splits.val, mesh=jax.devices()[0]), ConfigError,
     "neggrad: mesh= takes a jax.sharding.Mesh, got a Device"),
    # ... and where the sharding helpers take one (the review: the same AttributeError there).
    ("put-sharded-mesh-a-list", lambda c: train.put_sharded(c.train.x[:8], jax.devices()),
     ConfigError, "put_sharded: mesh= takes a jax.sharding.Mesh, got a list"),
    ("replicate-mesh-a-list", lambda c: __import__(
        "hyperforget_jax.distributed", fromlist=["x"]).replicate(c.params, jax.devices()),
     ConfigError, "distributed.replicate: mesh= takes a jax.sharding.Mesh, got a list"),
    ("zero-lr", lambda c: train.TrainConfig(lr=0.0), ConfigError, "learning rate"),
    ("nan-lr", lambda c: train.TrainConfig(lr=float("nan")), ConfigError, "learning rate"),
    # Positive, but 0 in float32: it passed "> 0" and trained nothing, without a word.
    ("lr-zero-in-float32", lambda c: train.TrainConfig(lr=1e-46), ConfigError,
     r"lr \(learning rate\)=1e-46 is 0 in float32, where it runs"),
    # Counts past int32 passed and ended in an OverflowError traceback mid-run (stop 63).
    ("gan-train-epochs-past-int32", lambda c: __import__(
        "hyperforget_jax.gan", fromlist=["GANConfig"]).GANConfig(epochs=2**31), ConfigError,
     r"epochs must be >= 0 and <= 2147483647"),
    ("gan-unlearn-check-every-past-int32", lambda c: __import__(
        "hyperforget_jax.gan", fromlist=["UnlearnConfig"]).UnlearnConfig(check_every=2**31),
     ConfigError, r"UnlearnConfig.check_every must be <= 2147483647"),
    ("epochs-past-int32", lambda c: train.TrainConfig(epochs=2**31), ConfigError,
     r"TrainConfig.epochs must be <= 2147483647 \(2\*\*31 - 1: counts run as int32\)"),
    ("negative-weight-decay", lambda c: train.TrainConfig(weight_decay=-1.0), ConfigError,
     "weight_decay"),
    ("max-to-keep-zero", lambda c: Checkpointer(c.root / "never", max_to_keep=0), ConfigError,
     "max_to_keep"),
    ("negative-step", lambda c: Checkpointer(c.root / "neg").save(-1, {"w": np.ones(2)}),
     ConfigError, "step must be an integer >= 0"),
    # checkpoints
    ("no-checkpoint", lambda c: Checkpointer(c.empty_dir).restore({"w": np.ones(2)}),
     CheckpointError, "no checkpoint"),
    ("truncated-checkpoint", lambda c: load_run_api(c.truncated), CheckpointError,
     "corrupt or truncated"),
    ("garbage-checkpoint", lambda c: load_run_api(c.garbage), CheckpointError, "corrupt"),
    ("checkpoint-files-deleted", lambda c: load_run_api(c.emptied), CheckpointError,
     "corrupt"),
    ("foreign-checkpoint", lambda c: load_run_api(c.foreign), CheckpointError,
     "no hyperforget run metadata"),
    ("mixed-arch-checkpoint", lambda c: load_run_api(c.mixed), CheckpointError,
     "another architecture"),
    ("params-wrong-template", lambda c: load_params(c.saved, c.mlp_params), CheckpointError,
     "another architecture"),
    ("params-not-a-checkpoint", lambda c: load_params(c.run), CheckpointError,
     "not a params checkpoint"),
    ("params-path-is-file", lambda c: save_params(c.a_file, c.params), CheckpointError,
     "is a file"),
    ("unwritable-checkpoint-dir", lambda c: Checkpointer(c.a_file / "sub"), CheckpointError,
     "cannot create checkpoint directory"),
    ("save-nan-params", lambda c: save_params(c.root / "nan_params", jax.tree.map(
        lambda l: l * jnp.nan, c.params)), NonFiniteError, "NaN/inf"),
    # requests a hypernetwork was not trained for, and bad hypernetwork settings
    ("hyper-dihyfo1-other-class", lambda c: _hyper_call(
        "make_prompt", c.hyper["dihyfo1"], c.params, c.train, (4,)), ForgetRequestError,
     "trained to forget class 3 only"),
    ("hyper-unknown-class", lambda c: _hyper_call(
        "make_prompt", c.hyper["dihyfo2"], c.params, c.train, (10,)), ForgetRequestError,
     "class 10 does not exist"),
    ("hyper-untrained-request-size", lambda c: _hyper_call(
        "make_prompt", c.hyper["dihyfo2"], c.params, c.train, (1, 2)), ForgetRequestError,
     r"trained on requests of \[1\] class"),
    ("hyper-empty-request", lambda c: _hyper_call(
        "make_prompt", c.hyper["dihyfo2"], c.params, c.train, ()), ForgetRequestError,
     "empty forget request"),
    ("hyper-wrong-arch-start", lambda c: _hyper_call(
        "make_prompt", c.hyper["dihyfo2"], c.mlp_params, c.train, (1,)), ArchitectureError,
     "do not fit gpt_mlp"),
    ("hyper-unknown-variant", lambda c: _hyper_spec(variant="dihyfo3"), ConfigError,
     "unknown hypernetwork variant"),
    ("hyper-dihyfo1-without-class", lambda c: _hyper_spec(variant="dihyfo1"), ConfigError,
     "exactly one forget_class"),
    ("hyper-not-a-hypernet", lambda c: _hyper_call("load_hypernet", c.saved), CheckpointError,
     "not a hypernetwork"),
    ("corpus-missing", lambda c: __import__(
        "hyperforget_jax.hyperforget.corpus", fromlist=["Corpus"]).Corpus(c.empty_dir),
     CheckpointError, "no corpus"),
    # arguments of the wrong kind, at the public boundary (were bare TypeErrors / flax errors
    # deep inside, or a silent result)
    ("fleet-seeds-a-prng-key", lambda c: _fleet(c, seeds=jax.random.PRNGKey(0)),  # 2 twins
     ConfigError, "fit_fleet: seeds must be a sequence of integers, got a JAX PRNG key"),
    ("fleet-seeds-a-float", lambda c: _fleet(c, seeds=2.5), ConfigError,
     "seeds must be a sequence of integers, got 2.5"),
    # round 17: 0..255 float images, channel-first images, a validation set with fewer
    # classes, a flat vector longer than its chunks (each was taken without a word)
    ("unlearn-float-0-255-images", lambda c: _unlearn_split(c, _split_with(
        c, x=_class3(c).retain.x * 255.0)),
     DataError, r"values up to 255 \(0\.\.255 pixel values\?\).*divide them by 255"),
    ("fit-float-0-255-images", lambda c: train.fit(c.arch, c.train.replace(x=c.train.x * 255.0),
                                                    train.TrainConfig(epochs=1)),
     DataError, "takes images in \\[0, 1\\]"),
    ("from-arrays-channel-first", lambda c: data.from_arrays(
        np.zeros((4, 3, 32, 32), np.uint8), np.arange(4)), DataError,
     r"look channel-first \(C, H, W\).*x\.transpose\(0, 2, 3, 1\)"),
    ("from-arrays-channel-first-not-square", lambda c: data.from_arrays(
        np.zeros((4, 3, 218, 178), np.uint8), np.arange(4)), DataError,
     r"\(3, 218, 178\) look channel-first"),
    ("unlearn-val-with-fewer-classes", lambda c: _unlearn_split(
        c, _class3(c), val=data.from_arrays(c.splits.val.x[c.splits.val.y < 9],
                                            c.splits.val.y[c.splits.val.y < 9])),
     DataError, "validation set has 9 classes but the training set 10"),
    ("unlearn-val-of-training-images", lambda c: _unlearn_split(
        c, _class3(c), val=c.train.subset(np.arange(200))), DataError,
     r"200 of the 200 images of the validation set are training images.*splits\.val"),
    ("evaluate-test-of-training-images", lambda c: _evaluate(
        c, _class3(c), data.ForgetRequest(classes=(3,)),
        splits=c.splits._replace(test=c.train.subset(np.arange(300)))), DataError,
     r"300 of the 300 images of the test set are training images"),
    ("tokenize-a-longer-vector", lambda c: P_.tokenize(
        jnp.zeros(P_.flatten(c.params).shape[0] + 5), P_.chunk_spans(c.params)),
     ArchitectureError, "flat vectors of .* values for chunks covering"),
    ("fleet-vectorize-a-list", lambda c: _fleet(c, vectorize=["map"]), ConfigError,
     "vectorize must be one of vmap, map"),
    ("fit-arrays-for-a-dataset", lambda c: train.fit(
        c.arch, (c.train.x, c.train.y), train.TrainConfig(epochs=1)), DataError,
     r"must be a Dataset, got tuple.*from_arrays"),
    ("fit-stream-a-dataset-for-the-batches", lambda c: train.fit_stream(
        c.arch, c.train, train.TrainConfig(arch="gpt_mlp", epochs=1)), ConfigError,
     "got Dataset; a Dataset in memory trains with hf.fit"),
    ("fit-stream-batches-not-pairs", lambda c: train.fit_stream(
        c.arch, [c.train.x[:64]], train.TrainConfig(arch="gpt_mlp", epochs=1)), DataError,
     r"batch 0 is a ndarray, not an \(x, y\) pair"),
    ("fit-stream-generator-for-two-epochs", lambda c: train.fit_stream(
        c.arch, iter([(c.train.x[:64], c.train.y[:64])]),
        train.TrainConfig(arch="gpt_mlp", epochs=2)), ConfigError,
     r"one-shot iterator \(list_iterator\), which feeds one epoch, but the recipe asks for 2"),
    ("architecture-name-a-list", lambda c: models.make_architecture(["gpt_mlp"]),
     ConfigError, "unknown architecture"),
    ("architecture-fractional-classes", lambda c: models.make_architecture(
        "gpt_mlp", (8, 8, 1), 2.5), ConfigError, "num_classes must be an integer >= 1, got 2.5"),
    ("as-model-fractional-channels", lambda c: models.as_model("gpt_mlp", (8, 8, 1.5)),
     ConfigError, r"input_shape must be .* got \(8, 8, 1.5\)"),
    ("resolve-forget-a-tuple-for-the-request", lambda c: data.resolve_forget(c.train, (3,)),
     ForgetRequestError, r"as a ForgetRequest, got tuple.*ForgetRequest\(classes=\(3,\)\)"),
    ("resolve-forget-the-splits-for-train", lambda c: data.resolve_forget(
        c.splits, data.ForgetRequest(classes=(3,))), DataError, "got Splits; pass splits.train"),
    ("evaluate-a-tuple-for-the-request", lambda c: _evaluate(c, _split_with(c), (3,)),
     ForgetRequestError, "as a ForgetRequest"),
    ("make-splits-of-an-array", lambda c: data.make_splits(c.train.x), DataError,
     "make_splits takes a Dataset, got ndarray"),
    ("make-splits-fraction-string", lambda c: data.make_splits(c.train, val_frac="0.1"),
     DataError, "must be numbers in"),
    ("make-splits-fraction-a-Fraction", lambda c: data.make_splits(   # numbers.Real, but
        c.train, val_frac=__import__("fractions").Fraction(1, 10)),  # numpy's rint TypeError
     DataError, "must be numbers in"),
    ("request-a-float-class", lambda c: data.ForgetRequest(classes=3.0), ForgetRequestError,
     "classes must be a sequence of integers, got 3.0"),
    ("request-typed-key-indices", lambda c: data.ForgetRequest(indices=jax.random.key(0)),
     ForgetRequestError, "got a JAX PRNG key"),
    ("sweep-params-stacked-an-array", lambda c: __import__(
        "hyperforget_jax.unlearn", fromlist=["unlearn_sweep"]).unlearn_sweep(
        "gradtau", c.arch, c.params, _split_with(c), c.splits.val,
        params_stacked=np.ones(2, bool)), ConfigError, "params_stacked must be True, False"),
    ("gap-to-retrain-of-a-string", lambda c: __import__(
        "hyperforget_jax.evaluation", fromlist=["gap_to_retrain"]).gap_to_retrain("abc", {}),
     ConfigError, "result must be a dict of metrics"),
    ("nabla-tau-fractional-refresh", lambda c: __import__(
        "hyperforget_jax.unlearn", fromlist=["nabla_tau"]).nabla_tau(
        lambda p, b: b[1], 0.5, tau_fn=lambda p: 1.0, refresh_every=2.5), ConfigError,
     "refresh_every must be an integer >= 1"),
    ("nabla-tau-alpha-none", lambda c: __import__(
        "hyperforget_jax.unlearn", fromlist=["nabla_tau"]).nabla_tau(
        lambda p, b: b[1], None, tau=2.3), ConfigError, "alpha=None: α is a number in \\[0, 1\\]"),
    ("gan-train-on-an-array", lambda c: __import__(
        "hyperforget_jax.gan", fromlist=["train_gan"]).train_gan(
        c.train.x, __import__("hyperforget_jax.gan", fromlist=["GANConfig"]).GANConfig(
            arch="mlp", epochs=1)), ConfigError, "train_gan takes train=a Dataset"),
    ("gan-evaluate-a-dataset-for-the-splits", lambda c: _gan_evaluate_on(c, c.train),
     ConfigError, "splits=the Splits"),
    ("gan-evaluate-reference-features-flat", lambda c: _gan_evaluate_on(   # numpy's error,
        c, c.splits, np.zeros(50, np.float32)), ConfigError,               # after sampling
     r"reference_feats must be the judge's features of retain_x.*got shape \(50,\)"),
    ("gan-unlearn-no-forget-images", lambda c: _gan_unlearn(c, forget_x=None), DataError,
     "forget_x must be an array of images"),
    ("corpus-config-of-another-kind", lambda c: __import__(
        "hyperforget_jax.hyperforget.corpus", fromlist=["build_corpus"]).build_corpus(
        c.root / "never" / "corpus", train.TrainConfig(), c.splits, progress=False),
     ConfigError, "build_corpus takes ccfg=a CorpusConfig .* got a TrainConfig and a Splits"),
    ("corpus-fractional-split-seed", lambda c: _tiny_corpus(c, split_seed=2.5),  # was
     ConfigError, "build_corpus: split_seed must be an integer >= 0, got 2.5"),  # recorded
    ("hyper-best-of-another-datasets-images", lambda c: _hyper_call(   # flax's error, after k
        "sample_best_of", jax.random.key(0), c.hyper["dihyfo2"], c.params, _hyper_prompt(c),
        data.from_arrays(np.zeros((20, 28, 28, 1), np.float32), np.arange(20) % 10), 2),
     DataError, r"images of shape \(28, 28, 1\) but the gpt_mlp model takes \(8, 8, 1\)"),
    # host-side drivers called inside the user's jax.jit (a TracerArrayConversionError or a
    # ConcretizationTypeError from deep inside before)
    ("unlearn-under-jit", lambda c: jax.jit(lambda p: __import__(
        "hyperforget_jax.unlearn", fromlist=["unlearn"]).unlearn(
        "neggrad", c.arch, p, _class3(c), c.splits.val).params)(c.params),
     ConfigError, r"unlearn\('neggrad'\) runs its own compiled loops on the host and cannot "
                  r"be called inside jax.jit"),
    ("sweep-under-jit", lambda c: jax.jit(lambda p: __import__(
        "hyperforget_jax.unlearn", fromlist=["unlearn_sweep"]).unlearn_sweep(
        "gradtau", c.arch, p, _class3(c), c.splits.val, seeds=[0, 1])[0].params)(c.params),
     ConfigError, r"unlearn_sweep\('gradtau'\) runs its own compiled loops"),
    ("evaluate-under-jit", lambda c: jax.jit(lambda p: __import__(
        "hyperforget_jax.evaluation", fromlist=["x"]).evaluate_unlearning(
        c.arch, p, c.splits, _class3(c), data.ForgetRequest(classes=(3,)))["forget_acc"])(
        c.params), ConfigError, "evaluate_unlearning runs its own compiled loops"),
    ("fit-under-vmap", lambda c: jax.vmap(lambda p: train.fit(
        c.arch, c.train, train.TrainConfig(epochs=1), init_params=p)[0].params)(
        jax.tree.map(lambda a: a[None], c.params)), ConfigError, "fit runs its own compiled"),
    ("fit-stream-under-jit", lambda c: jax.jit(lambda p: train.fit_stream(
        c.arch, [(c.train.x[:64], c.train.y[:64])], train.TrainConfig(epochs=1),
        init_params=p)[0].params)(c.params), ConfigError, "fit_stream runs its own compiled"),
    ("gradtau-stream-under-jit", lambda c: jax.jit(lambda p: _stream(c, params=p)[0])(
        c.params), ConfigError, "run_gradtau_stream runs its own compiled loops"),
    ("gan-unlearn-under-jit", lambda c: jax.jit(lambda g: _gan_unlearn(c, g_params=g).params)(
        _tiny_gan(c)[1]), ConfigError, "unlearn_gan runs its own compiled loops"),
    # Stop 64: Python's format errors, optax's AttributeError, and silent values.
    ("format-mean-std-negative-digits", lambda c: __import__(
        "hyperforget_jax.metrics").metrics.format_mean_std([1.0, 2.0], digits=-1),
     ConfigError, r"digits must be an integer >= 0 \(decimals shown\), got -1"),
    ("format-over-seeds-float-digits", lambda c: __import__(
        "hyperforget_jax.metrics").metrics.format_over_seeds([None], digits=1.5),
     ConfigError, r"digits must be an integer >= 0 \(decimals shown\), got 1.5"),
    ("skip-nonfinite-none", lambda c: train.skip_nonfinite(None), ConfigError,
     r"skip_nonfinite wraps an optax.GradientTransformation, got NoneType"),
    # A 1-vs-1 SVC's "efficacy" was 0 or 1 by which side each sample fell on.
    ("svc-one-retain-sample", lambda c: __import__(
        "hyperforget_jax.metrics").metrics.mia_efficacy_svc([0.9], [0.5, 0.6], [0.7]),
     DataError, r"retain_conf has 1 samples but the attack needs at least 2"),
    # eigh read one triangle: [[1, 2], [0, 1]] against I gave 0.0, its transpose 0.54.
    ("fid-non-symmetric-covariance", lambda c: __import__(
        "hyperforget_jax.gan.metrics", fromlist=["x"]).frechet_distance(
        np.zeros(2), np.array([[1.0, 2.0], [0.0, 1.0]]), np.zeros(2), np.eye(2)),
     DataError, r"sigma1 is not symmetric, so not a covariance"),
    ("fid-negative-definite-covariance", lambda c: __import__(
        "hyperforget_jax.gan.metrics", fromlist=["x"]).frechet_distance(
        np.zeros(2), np.eye(2), np.zeros(2), -np.eye(2)),
     DataError, r"sigma2 has a negative eigenvalue"),
    ("fid-mismatched-widths", lambda c: __import__(
        "hyperforget_jax.gan.metrics", fromlist=["x"]).frechet_distance(
        np.zeros(3), np.eye(2), np.zeros(2), np.eye(2)),
     DataError, r"two means of shape \(F,\) and two covariances of shape \(F, F\)"),
]


def load_run_api(run_dir):
    from hyperforget_jax.commands import common

    return common.load_run(run_dir)


def _files_under(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file()) \
        if path.is_dir() else []


@pytest.mark.parametrize("name,fn,err,pattern", API_CASES, ids=[c[0] for c in API_CASES])
def test_api_bad_input(ctx, name, fn, err, pattern):
    before = {p: _files_under(p) for p in (ctx.run, ctx.saved)}
    with pytest.raises(err, match=pattern) as info:
        fn(ctx)
    assert isinstance(info.value, HyperforgetError)
    assert len(str(info.value)) < 1000  # a message, not a dump
    # A failed call never touches what was already on disk, and writes nothing new.
    assert {p: _files_under(p) for p in (ctx.run, ctx.saved)} == before
    for new in ("never", "neg", "nan_params"):
        assert _files_under(ctx.root / new) == [], new
    assert not Path("~nosuchuser-hf").exists()     # (a literal ./~user, stop 64)


# ------------------------------------------------------------------------------ CLI cases

# (id, argv(ctx, out) -> list, words the single stderr line must contain)
CLI_CASES = [
    ("cli-unknown-arch", lambda c, o: ["train", "--run-dir", o, *TINY, "--arch", "vit"],
     "unknown architecture"),
    ("cli-negative-epochs", lambda c, o: ["train", "--run-dir", o, *TINY, "--epochs", "-3"],
     "epochs must be >= 0"),
    ("cli-zero-lr", lambda c, o: ["train", "--run-dir", o, *TINY, "--lr", "0"],
     "--lr: TrainConfig.lr (learning rate) must be > 0"),      # the flag typed, then why
    ("cli-unlearn-config-lr-zero", lambda c, o: [
        "unlearn", "--method", "gradtau", "--run-dir", o, *TINY, "--forget-class", "3",
        "--config.lr=0", "--no-retrain"], "--config.lr: GradTauConfig.lr"),
    ("cli-unknown-config-field", lambda c, o: [
        "unlearn", "--method", "gradtau", "--run-dir", o, *TINY, "--forget-class", "3",
        "--config.bogus=1"], "`hyperforget unlearn --help` lists each method's fields"),
    ("cli-zero-batch", lambda c, o: ["train", "--run-dir", o, *TINY, "--batch-size", "0"],
     "batch_size"),
    ("cli-unknown-class", lambda c, o: ["retrain", "--run-dir", o, *TINY, "--forget-class",
                                        "11"], "class 11 does not exist"),
    ("cli-fraction-above-one", lambda c, o: ["retrain", "--run-dir", o, *TINY,
                                             "--forget-fraction", "1.5"],
     "strictly between 0 and 1"),
    ("cli-fraction-zero", lambda c, o: ["train", "--run-dir", o, *TINY, "--forget-fraction",
                                        "0"], "strictly between 0 and 1"),
    ("cli-indices-not-ints", lambda c, o: ["retrain", "--run-dir", o, *TINY,
                                           "--forget-indices", "1,x"],
     "comma-separated integers"),
    ("cli-indices-out-of-range", lambda c, o: ["retrain", "--run-dir", o, *TINY,
                                               "--forget-indices", "1,999999"], "out of range"),
    ("cli-indices-overlapping", lambda c, o: ["retrain", "--run-dir", o, *TINY,
                                              "--forget-indices", "4,4"], "duplicated"),
    ("cli-unprepared-dataset", lambda c, o: ["train", "--run-dir", o, "--dataset", "mnist",
                                             "--data-dir", str(c.empty_dir), "--quiet"],
     "mnist"),
    ("cli-run-dir-is-file", lambda c, o: ["train", "--run-dir", str(c.a_file / "x"), *TINY],
     "not writable"),
    # The advised command reads this command's data (was: `train --run-dir D`, on mnist5k) ...
    ("cli-evaluate-missing-run", lambda c, o: ["evaluate", "--run-dir", str(c.empty_dir),
                                               "--out", o, *DIGITS, "--forget-class", "1"],
     "no trained model in {empty}; run `hyperforget train --run-dir {empty} --dataset digits` "
     "first"),
    # ... and a missing Retrain is made by `retrain` with the run's recipe and request (was:
    # `train`, whose original the next evaluate refused as "not a Retrain").
    ("cli-evaluate-missing-retrain", lambda c, o: [
        "evaluate", "--run-dir", str(c.run), "--retrain-dir", str(c.empty_dir), "--out", o,
        *DIGITS, "--forget-class", "1"],
     "run `hyperforget retrain --run-dir {empty} --dataset digits --arch gpt_mlp --epochs 1 "
     "--batch-size 64 --forget-class 1` first"),
    ("cli-evaluate-truncated", lambda c, o: ["evaluate", "--run-dir", str(c.truncated), "--out",
                                             o, *DIGITS, "--forget-class", "1"],
     "corrupt or truncated"),
    ("cli-evaluate-garbage", lambda c, o: ["evaluate", "--run-dir", str(c.garbage), "--out", o,
                                           *DIGITS, "--forget-class", "1"], "corrupt"),
    # evaluate reported the copied-in model under the run's name; unlearn wrote the run's
    # identity beside the other run's recipe.
    ("cli-evaluate-copied-checkpoints", lambda c, o: [
        "evaluate", "--run-dir", str(c.copied), "--out", o, *DIGITS, "--forget-class", "1"],
     "its checkpoints record train_config.seed = 0, its run.json 7: the checkpoints are "
     "another run's"),
    ("cli-unlearn-copied-checkpoints", lambda c, o: [
        "unlearn", "--method", "gradtau", "--run-dir", str(c.copied), "--out", o, *DIGITS,
        "--forget-class", "1", "--no-retrain"], "the checkpoints are another run's"),
    ("cli-evaluate-foreign", lambda c, o: ["evaluate", "--run-dir", str(c.foreign), "--out", o,
                                           *DIGITS, "--forget-class", "1"],
     "no hyperforget run metadata"),
    ("cli-evaluate-mixed-arch", lambda c, o: ["evaluate", "--run-dir", str(c.mixed), "--out", o,
                                              *DIGITS, "--forget-class", "1"],
     "another architecture"),
    ("cli-evaluate-no-request", lambda c, o: ["evaluate", "--run-dir", str(c.run), "--out", o,
                                              *DIGITS], "give a forget request"),
    ("cli-evaluate-wrong-image-shape", lambda c, o: ["evaluate", "--run-dir", str(c.run),
                                                     "--out", o, "--forget-class", "1"],
     "(8, 8, 1)"),
    ("cli-evaluate-unwritable-out", lambda c, o: ["evaluate", "--run-dir", str(c.run), "--out",
                                                  str(c.a_file / "x"), *DIGITS,
                                                  "--forget-class", "1"], "not writable"),
    # The advised `train` reads this command's data: an mlp trained on mnist5k is not an 8×8 one.
    ("cli-sample-start-of-another-arch", lambda c, o: [
        "sample", "--hypernet", str(c.root / "dihyfo1_digits"), "--run-dir", str(c.mlp_run),
        *DIGITS, "--forget-class", "3", "--out", o],
     "train one with `hyperforget train --arch gpt_mlp --dataset digits --run-dir NEW_DIR`"),
    ("cli-sample-dihyfo1-other-class", lambda c, o: [
        "sample", "--hypernet", str(c.root / "dihyfo1"), "--run-dir", str(c.run), *DIGITS,
        "--forget-class", "4", "--out", o], "trained to forget class 3 only"),
    ("cli-sample-not-a-hypernet", lambda c, o: [
        "sample", "--hypernet", str(c.run), "--run-dir", str(c.run), *DIGITS,
        "--forget-class", "1", "--out", o], "holds no hypernet.npz"),
    ("cli-sample-wrong-dataset", lambda c, o: [
        "sample", "--hypernet", str(c.root / "dihyfo1"), "--run-dir", str(c.run),
        "--forget-class", "3", "--out", o], "--dataset the model was trained on"),
    # A hypernetwork's prompts are read against its corpus's data: other data was accepted.
    ("cli-sample-other-split-than-the-corpus", lambda c, o: [
        "sample", "--hypernet", str(c.root / "dihyfo1_digits"), "--run-dir", str(c.run),
        *DIGITS, "--split-seed", "1", "--forget-class", "3", "--out", o],
     "hypernetwork's corpus"),
    ("cli-sample-pretrained-on-another-split", lambda c, o: [
        "sample", "--hypernet", "pretrained", "--run-dir", str(c.run), "--split-seed", "2",
        "--forget-class", "3", "--out", o], "hypernetwork's corpus in pretrained was trained "
                                            "with --split-seed 0"),
    ("cli-unlearn-wrong-dataset", lambda c, o: [
        "unlearn", "--method", "gradtau", "--run-dir", str(c.run), "--forget-class", "3",
        "--out", o, "--no-retrain", "--quiet"], "--dataset the model was trained on"),
    ("cli-unlearn-no-request", lambda c, o: [
        "unlearn", "--method", "gradtau", "--run-dir", str(c.run), *DIGITS, "--out", o,
        "--no-retrain", "--quiet"], "give a forget request"),
    # α₀'s clamp warning came first: two lines, --quiet or not (stop 63); the hint names the
    # CLI's flag.
    ("cli-unlearn-budget-zero", lambda c, o: [
        "unlearn", "--method", "gradtau", "--run-dir", str(c.run), *DIGITS, "--out", o,
        "--forget-fraction", "0.8", "--no-retrain", "--quiet"],
     "make the paper's budget E = int(6·N_r/(2·N_f)) 0"),
    # A home of no user: a RuntimeError traceback, or a literal ./~nosuchuser (stop 63).
    ("cli-tilde-of-no-user", lambda c, o: ["train", "--run-dir", "~nosuchuser-hf/run",
                                           *TINY], "cannot expand '~nosuchuser-hf'"),
    ("cli-refresh-past-int32", lambda c, o: [
        "unlearn", "--method", "gradtau", "--run-dir", str(c.run), *DIGITS, "--out", o,
        "--forget-class", "3", "--config.tau_refresh_epochs", "2147483648", "--no-retrain",
        "--quiet"], "GradTauConfig.tau_refresh_epochs must be <= 2147483647"),
    ("cli-hypertrain-batch-past-int32", lambda c, o: [
        "hypertrain", "--corpus", str(c.run), "--out", o, "--batch-size", "2147483648",
        "--quiet"], "--batch-size: HyperTrainConfig.batch_size must be <= 2147483647"),
    ("cli-hypertrain-no-corpus", lambda c, o: [
        "hypertrain", "--corpus", str(c.run), "--out", o, "--quiet"], "no corpus"),
    ("cli-corpus-one-seed", lambda c, o: [
        "corpus", "--out", o, "--seeds", "1", *DIGITS, "--quiet"], ">= 2 seeds"),
    ("cli-gan-negative-epochs", lambda c, o: [
        "gan", "train", "--run-dir", o, "--epochs", "-2", "--quiet"], "epochs must be >= 0"),
    # Checked before the run directory is claimed (it used to keep run.json and checkpoints/).
    ("cli-gan-zero-width", lambda c, o: [
        "gan", "train", "--run-dir", o, *DIGITS, "--width", "0", "--quiet"],
     "width must be an integer >= 4"),
    ("cli-model-draws-random-numbers", lambda c, o: [
        "train", "--run-dir", o, *DIGITS, "--arch", "user_model:StochasticNet", "--epochs", "1",
        "--quiet"], "draws random numbers in its forward pass"),
    ("cli-gan-dcgan-on-8x8", lambda c, o: [
        "gan", "train", "--run-dir", o, *DIGITS, "--gan-arch", "dcgan", "--quiet"],
     "supports 28×28 and 32×32 images, got 8×8; use the mlp pair"),
    # A 0-epoch run would hold no model, and every reader would say "train first".
    ("cli-zero-epochs", lambda c, o: ["train", "--run-dir", o, *TINY, "--epochs", "0"],
     "--epochs 0 trains nothing"),
    ("cli-gan-zero-epochs", lambda c, o: [
        "gan", "train", "--run-dir", o, *DIGITS, "--gan-arch", "mlp", "--epochs", "0",
        "--quiet"], "--epochs 0 trains nothing"),
    ("cli-indices-empty-item", lambda c, o: ["retrain", "--run-dir", o, *TINY,
                                             "--forget-indices", "1,,2"], "empty item"),
    # --out is checked before the original is trained into the new --run-dir (o here).
    ("cli-unlearn-out-is-a-file", lambda c, o: [
        "unlearn", "--method", "gradtau", "--run-dir", o, *TINY, "--forget-class", "3",
        "--out", str(c.a_file), "--no-retrain"], "is a file"),
    ("cli-unlearn-out-not-a-run", lambda c, o: [
        "unlearn", "--method", "gradtau", "--run-dir", o, *TINY, "--forget-class", "3",
        "--out", str(c.root), "--no-retrain"], "holds no hyperforget run"),
    ("cli-sample-two-starts", lambda c, o: [
        "sample", "--hypernet", str(c.root / "dihyfo1"), "--run-dir", str(c.run), *DIGITS,
        "--corpus", str(c.empty_dir), "--start-seed", "1", "--forget-class", "3", "--out", o],
     "give one start network"),
    ("cli-sample-negative-guidance", lambda c, o: [
        "sample", "--hypernet", str(c.root / "dihyfo1"), "--run-dir", str(c.run), *DIGITS,
        "--forget-class", "3", "--guidance", "-1", "--out", o], "guidance"),
    ("cli-evaluate-run-dir-is-a-file", lambda c, o: [
        "evaluate", "--run-dir", str(c.a_file), "--out", o, *DIGITS, "--forget-class", "1"],
     "is a file, not a run directory"),
    ("cli-corpus-holds-out-every-seed", lambda c, o: [
        "corpus", "--out", o, "--seeds", "2", "--test-fraction", "0.9", *DIGITS, "--quiet"],
     "holds out all 2 seeds"),
    ("cli-sample-hypernet-is-a-text-file", lambda c, o: [  # was "contains pickled data"
        "sample", "--hypernet", str(c.a_file), "--run-dir", str(c.run), *DIGITS,
        "--forget-class", "3", "--out", o], "not an .npz archive"),
    ("cli-hypertrain-corpus-is-a-file", lambda c, o: [     # was a NotADirectoryError traceback
        "hypertrain", "--corpus", str(c.a_file), "--out", o, "--quiet"], "not a directory"),
    # A blank path (an unset shell variable): --retrain-dir "" evaluated without the Retrain
    # (exit 0, no Avg. Gap), --run-dir "" wrote into the current directory.
    ("cli-blank-retrain-dir", lambda c, o: [
        "evaluate", "--run-dir", str(c.run), "--retrain-dir", "", "--out", o, *DIGITS,
        "--forget-class", "1"], "--retrain-dir: expected a path, got ''"),
    ("cli-blank-data-dir", lambda c, o: ["train", "--run-dir", o, *TINY, "--data-dir", " "],
     "--data-dir: expected a path"),
    # The embedded sets read no directory: --data-dir without --dataset mnist trained on
    # MNIST-5k, exit 0.
    ("cli-data-dir-for-an-embedded-set", lambda c, o: [
        "train", "--run-dir", o, *TINY, "--data-dir", str(c.empty_dir)],
     "would be ignored: 'digits' is embedded in the package"),
    ("cli-argparse-bad-int", lambda c, o: ["train", "--run-dir", o, "--epochs", "ten"],
     "expected an integer"),
    ("cli-argparse-unknown-dataset", lambda c, o: ["train", "--run-dir", o, "--dataset", "x"],
     "invalid choice"),
]


def _run_cli(argv: list[str]) -> int:
    try:
        return cli.main(argv)
    except SystemExit as e:  # argparse errors exit through SystemExit
        return int(e.code)


@pytest.mark.parametrize("name,argv,words", CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_cli_bad_input(ctx, capfd, tmp_path, name, argv, words):
    out = tmp_path / "new" / "out"         # its parent is missing too
    before = _files_under(ctx.run)
    capfd.readouterr()
    rc = _run_cli([str(a) for a in argv(ctx, str(out))])
    captured = capfd.readouterr()
    lines = captured.err.strip().splitlines()
    assert rc == 2, (rc, captured.err)
    assert len(lines) == 1, captured.err
    assert words.replace("{empty}", str(ctx.empty_dir)) in lines[0], lines[0]
    assert lines[0].startswith("hyperforget"), lines[0]
    # Nothing half-written: no output directory at all (not even empty folders in it, nor the
    # missing parent it would have made); the input run untouched.
    assert not out.parent.exists(), sorted(out.parent.rglob("*"))
    assert _files_under(ctx.run) == before


def test_an_unlearn_runs_checkpoints_copied_from_another_unlearn_run_are_refused(
        ctx, capfd, tmp_path):
    """`evaluate` read an `unlearn` run's checkpoints as its run.json's run, so another
    request's (or method's) unlearned model copied in was reported under this run's name."""
    runs = {}
    for cls in ("1", "2"):
        runs[cls] = tmp_path / f"unlearn{cls}"
        assert _run_cli(["unlearn", "--method", "neggrad", "--run-dir", str(ctx.run), "--out",
                         str(runs[cls]), *DIGITS, "--forget-class", cls, "--no-retrain",
                         "--quiet"]) == 0
    # The run itself is read, and its copy elsewhere too (a moved run is no other run).
    moved = tmp_path / "moved"
    shutil.copytree(runs["1"], moved)
    for run in (runs["1"], moved):
        assert _run_cli(["evaluate", "--run-dir", str(run), "--out", str(run / "ev"), *DIGITS,
                         "--forget-class", "1", "--quiet"]) == 0
    shutil.rmtree(runs["1"] / "checkpoints")
    shutil.copytree(runs["2"] / "checkpoints", runs["1"] / "checkpoints")
    capfd.readouterr()
    out = tmp_path / "ev"
    assert _run_cli(["evaluate", "--run-dir", str(runs["1"]), "--out", str(out), *DIGITS,
                     "--forget-class", "1"]) == 2
    err = capfd.readouterr().err
    assert "its checkpoints record request.classes" in err, err
    assert "the checkpoints are another run's" in err and not out.exists()
    # Copied into a `train` run, they were resumed as its model (the same TrainState, the
    # original's recipe), and from then on read as its original.
    trained = tmp_path / "trained"                # a `train --epochs 8` run (step 5 of 8)
    shutil.copytree(ctx.run, trained)
    shutil.rmtree(trained / "checkpoints")
    shutil.copytree(runs["2"] / "checkpoints", trained / "checkpoints")
    run_json = json.loads((trained / "run.json").read_text())
    run_json["identity"]["train_config"]["epochs"] = 8
    (trained / "run.json").write_text(json.dumps(run_json))
    before = _files_under(trained)
    assert _run_cli(["train", "--run-dir", str(trained), *TINY, "--epochs", "8"]) == 2
    err = capfd.readouterr().err
    assert 'its checkpoints record role = "unlearned:neggrad", its run.json "original"' in err
    assert _files_under(trained) == before


def test_a_missing_retrain_of_a_sampled_network_is_advised_with_its_architecture(
        ctx, capfd, tmp_path):
    """A sampled network's params record no recipe: the advised `retrain` trained the default
    mlp, which the next evaluate refused as another architecture than the gpt_mlp sample."""
    sampled = tmp_path / "sampled"
    save_params(sampled / "params", ctx.params, {
        "role": "hyperforget-sample", "architecture": ctx.arch.to_json(),
        "request": {"classes": [3]}})
    capfd.readouterr()
    assert _run_cli(["evaluate", "--run-dir", str(sampled), "--retrain-dir", str(ctx.empty_dir),
                     "--out", str(tmp_path / "ev"), *DIGITS, "--forget-class", "3"]) == 2
    assert (f"`hyperforget retrain --run-dir {ctx.empty_dir} --dataset digits --arch gpt_mlp "
            "--forget-class 3` first") in capfd.readouterr().err


def test_a_corpus_that_diverges_in_its_first_fleet_leaves_nothing(tmp_path, monkeypatch,
                                                                    capfd):
    """``corpus --weight-decay 1e9`` stopped on a NaN in its first fleet and left run.json and
    index.json: a rerun with a fixed recipe was refused as "a different 'corpus' run". The
    build is stubbed (what it writes first, then the error) to keep the test cheap."""
    from hyperforget_jax.commands import hyper
    from hyperforget_jax.errors import NonFiniteError

    def diverge(out, *a, **k):
        (Path(out) / "index.json").write_text("{}")
        raise NonFiniteError("non-finite loss or parameters at step 3")

    monkeypatch.setattr(hyper.C, "build_corpus", diverge)
    out = tmp_path / "corpus"
    assert _run_cli(["corpus", "--out", str(out), *DIGITS, "--quiet"]) == 2
    assert "non-finite" in capfd.readouterr().err
    assert not out.exists()


def test_cli_bad_input_in_a_real_process(ctx, tmp_path):
    """The same contract for a real ``python -m hyperforget_jax.cli`` process (no pytest
    capture in between): exit 2, one stderr line, nothing written."""
    out = tmp_path / "out"
    p = subprocess.run([sys.executable, "-m", "hyperforget_jax.cli", "evaluate", "--run-dir",
                        str(ctx.truncated), "--out", str(out), *DIGITS, "--forget-class", "1"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120,
                       env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert p.returncode == 2, p.stderr
    assert len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert "corrupt or truncated" in p.stderr
    assert not out.exists()


def test_sample_takes_the_hypernet_file_itself(ctx, tmp_path, capfd):
    # `--hypernet` takes a directory or its hypernet.npz (README, --help); the file used to be
    # read as a directory and refused with "fix its permissions".
    outs = {}
    for how, hypernet in (("dir", ctx.root / "dihyfo1"),
                          ("file", ctx.root / "dihyfo1" / "hypernet.npz")):
        outs[how] = tmp_path / how
        assert _run_cli(["sample", "--hypernet", str(hypernet), "--run-dir", str(ctx.run),
                         *DIGITS, "--forget-class", "3", "--num-steps", "2", "--out",
                         str(outs[how])]) == 0, capfd.readouterr().err
    a, b = (load_params(outs[h] / "params")[0] for h in ("dir", "file"))
    jax.tree.map(np.testing.assert_array_equal, a, b)
    ident = json.loads((outs["file"] / "run.json").read_text())["identity"]["hypernet"]
    assert ident["file"].endswith("hypernet.npz") and len(ident["sha256"]) == 64


def test_a_failed_report_leaves_no_results_of_another_request(ctx, tmp_path, monkeypatch,
                                                              capfd):
    # `evaluate` replaces an earlier evaluation in its --out; if the new one fails midway, the
    # directory must not pair the new request (run.json) with the old request's numbers.
    from hyperforget_jax.commands import core

    out = tmp_path / "ev"
    argv = ["evaluate", "--run-dir", str(ctx.run), *DIGITS, "--out", str(out)]
    assert _run_cli([*argv, "--forget-class", "1"]) == 0
    assert json.loads((out / "evaluation.json").read_text())["request"]["classes"] == [1]

    def fail(*a, **k):
        raise DataError("stopped midway")
    monkeypatch.setattr(core, "evaluate_unlearning", fail)
    assert _run_cli([*argv, "--forget-class", "2"]) == 2
    assert not (out / "evaluation.json").exists() and not (out / "evaluation.md").exists()
    ident = json.loads((out / "run.json").read_text())["identity"]
    assert ident["request"]["classes"] == [2]
    monkeypatch.undo()
    assert _run_cli([*argv, "--forget-class", "2"]) == 0      # the rerun completes it
    assert json.loads((out / "evaluation.json").read_text())["request"]["classes"] == [2]


def test_resumes_never_continue_another_run(ctx, tmp_path):
    """A checkpoint directory given to the Python API again must hold the same run: training
    a GAN with another recipe or other images, unlearning another original, or reading a
    hypernetwork file whose arrays were edited is refused (the CLI's run.json guards its own
    directories; these guard the API's)."""
    import dataclasses

    from hyperforget_jax.gan import ITEM_RECIPE, train_gan, unlearn_gan
    from hyperforget_jax.hyperforget import dihyfo as H

    from reliability_worker import gan_config

    # The GAN, forget set and cascade length of test_reliability_resume's `gan unlearn` (one
    # epoch of gan_config, the first 16 digits, 3 rounds): the same programs, compiled once
    # for both tests (the recipe's size plays no part in what is refused here).
    cfg = gan_config(1)
    with Checkpointer(tmp_path / "gan") as ck:
        state, _, arch = train_gan(ctx.train, cfg, checkpointer=ck)
    with Checkpointer(tmp_path / "gan") as ck:
        again, _, _ = train_gan(ctx.train, cfg, checkpointer=ck)       # the same run: resumes
        jax.tree.map(np.testing.assert_array_equal, again.g_params, state.g_params)
        with pytest.raises(CheckpointError, match="another recipe .* lr is 0.001"):
            train_gan(ctx.train, dataclasses.replace(cfg, lr=5e-4), checkpointer=ck)
        with pytest.raises(CheckpointError, match="trained on other data"):
            train_gan(ctx.train.replace(x=ctx.train.x[::-1].copy()), cfg, checkpointer=ck)

    x = ctx.train.x
    kw = dict(retain_x=x[16:], forget_x=x[:16], heldout_x=ctx.splits.val.x,
              cfg=dataclasses.replace(ITEM_RECIPE, max_rounds=3))
    with Checkpointer(tmp_path / "unl") as ck:
        unlearn_gan(arch, state.g_params, state.d_params, checkpointer=ck, **kw)
        other_g = jax.tree.map(lambda l: l * 0.5, state.g_params)
        with pytest.raises(CheckpointError, match="another recipe, forget set, judge"):
            unlearn_gan(arch, other_g, state.d_params, checkpointer=ck, **kw)

    ones = H.Hypernet(ctx.hyper["dihyfo2"].spec, jax.tree.map(
        lambda l: np.ones(l.shape, l.dtype),
        __import__("hyperforget_jax.hyperforget.denoiser", fromlist=["x"]).param_shapes(
            ctx.hyper["dihyfo2"].spec.model())), 0.1)
    path = H.save_hypernet(tmp_path / "h", ones)
    H.load_hypernet(path)                                              # intact: loads
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    name = next(k for k in arrays if k != "__meta__")
    arrays[name] = arrays[name] * 3                                    # still a valid file
    np.savez(path, **arrays)
    with pytest.raises(CheckpointError, match="do not match the digest"):
        H.load_hypernet(path)
    # The meta holds the spec (scales, condition statistics, class) and p_uncond: a change
    # scale ×10 or another forget class loaded and sampled without a word.
    import json

    H.save_hypernet(path, ones)
    H.load_hypernet(path)                                              # intact: loads
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(arrays["__meta__"].tobytes().decode())
    meta["p_uncond"] = 0.2
    arrays["__meta__"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    np.savez(path, **arrays)
    with pytest.raises(CheckpointError, match="meta does not match its digest"):
        H.load_hypernet(path)


def test_a_user_models_prompt_takes_the_inputs_its_corpus_was_built_on(digits_splits):
    """Standardised features trained a user's model, its corpus and its hypernetwork, then
    make_prompt refused them: "images must lie in [0, 1] (divide 0..255 images by 255)". A
    registered model refused them too, though fit, unlearn and build_corpus take them (only
    0..255 images are refused, as everywhere)."""
    from hyperforget_jax.hyperforget import dihyfo as H
    train = digits_splits.train.subset(np.arange(300))
    train = train.replace(x=train.x * 4 - 2)                                 # in [-2, 2]
    user = models.as_model(models.MLP(hidden=(10,)), (8, 8, 1), 10)
    params = user.init(jax.random.key(0))
    prompt = H.make_prompt(H.Hypernet(tiny_hyperspec(user, "dihyfo2"), None), params, train,
                           (3,))
    logp = jax.nn.log_softmax(user.apply(params, train.x))[np.arange(len(train)), train.y]
    assert float(prompt.forget_start) == pytest.approx(-float(logp[train.y == 3].mean()), 1e-5)
    registered = models.make_architecture("gpt_mlp", (8, 8, 1))
    rparams = registered.init(jax.random.key(0))
    rprompt = H.make_prompt(H.Hypernet(tiny_hyperspec(registered, "dihyfo2"), None), rparams,
                            train, (3,))
    logp = jax.nn.log_softmax(registered.apply(rparams, train.x))[np.arange(len(train)),
                                                                   train.y]
    assert float(rprompt.forget_start) == pytest.approx(-float(logp[train.y == 3].mean()), 1e-5)
    with pytest.raises(DataError, match=r"values up to 255 \(0..255 pixel values\?\)"):
        H.make_prompt(H.Hypernet(tiny_hyperspec(registered, "dihyfo2"), None), rparams,
                      train.replace(x=(train.x + 2) * 255 / 4), (3,))
    nan = train.replace(x=np.where(np.arange(len(train))[:, None, None, None] == 0, np.nan,
                                   train.x))
    with pytest.raises(DataError, match="NaN or inf"):
        H.make_prompt(H.Hypernet(tiny_hyperspec(user, "dihyfo2"), None), params, nan, (3,))


def test_integer_inputs_are_told_how_token_ids_pass_not_only_to_divide_by_255():
    """Token ids for a user's nn.Embed model were told "divide by 255", which maps every id
    below 255 to 0 once the model casts back; uint8 images are still told to divide."""
    arch = models.make_architecture("gpt_mlp", (4, 1, 1))
    tokens = np.arange(8, dtype=np.int32).reshape(2, 4, 1, 1)
    for check in (lambda x: arch.check_inputs(x, "data"),
                  lambda x: __import__("hyperforget_jax.metrics").metrics._check_xy(
                      x, np.zeros(2, np.int32))):
        with pytest.raises(DataError, match=r"int32.*token ids: pass x.astype\(np.float32\)"):
            check(tokens)
        with pytest.raises(DataError, match=r"uint8.*uint8 images: .*divide by 255"):
            check(tokens.astype(np.uint8))


def test_the_cnn_refuses_images_its_pools_leave_empty():
    """Channel-first (1, 8, 8) digits, or (D, 1, 1) feature vectors, given to the registered
    cnn failed with a ZeroDivisionError inside Flax's initialiser."""
    for shape in ((1, 8, 8), (7, 1, 1), (3, 32, 32)):
        with pytest.raises(ConfigError, match=r"at least 4×4 .*x.transpose\(0, 2, 3, 1\)"):
            models.make_architecture("cnn", shape)
    assert models.make_architecture("cnn", (4, 4, 1)).param_count > 0
