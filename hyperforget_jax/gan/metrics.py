"""Generator evaluation: a judge classifier trained here, classifier-FID / classifier-IS on its
features, the forgotten-class share, discriminator-score membership inference and downstream
classification (METHODS.md §3 metrics).

"classifier-FID" and "classifier-IS" are the Fréchet distance and Inception Score computed with
the *judge classifier* (trained on the real training set with
:func:`hyperforget_jax.train.fit`: :data:`JUDGE` with :data:`JUDGE_AUGMENT` copies in the
experiments, the package's MLP by default here), on its penultimate features (the input of its
last Dense layer) and its softmax outputs. They are **not** Inception-v3 FID/IS: numbers
are comparable between generators judged by the same classifier, not with published values.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import flax.linen as nn
import jax
import numpy as np

from hyperforget_jax import layers, xla
from hyperforget_jax.config import SEED_LIMIT, is_scalar_number
from hyperforget_jax.data import (Dataset, ForgetRequest, Splits, check_unit_images,
                                  images_only, refuse_training_rows)
from hyperforget_jax.errors import (ArchitectureError, CheckpointError, ConfigError, DataError,
                                    ForgetRequestError, NonFiniteError)
from hyperforget_jax.metrics import (at_least_float32, chunked_apply, class_matched_rows,
                                     per_sample_outputs)
from hyperforget_jax.models import Architecture, as_model, make_architecture
from hyperforget_jax.params import refuse_traced
from hyperforget_jax.train import TrainConfig, fit

Params = Any


class JudgeCNN(nn.Module):
    """The GAN judge [ours]: two blocks of two 3×3 convolutions (32, 64 channels) with 2×2
    average pooling, then a 256-unit layer (the penultimate features). Trained with
    :data:`JUDGE`, :data:`JUDGE_AUGMENT` and :data:`JUDGE_ANNEAL` it reaches 98.2–98.5 % on
    MNIST-5k's test set, where the package's ``cnn`` reaches 96.9 % (docs/gan.md)."""

    num_classes: int = 10

    @nn.compact
    def __call__(self, x):
        for ch in (32, 64):
            x = nn.relu(layers.Conv(ch, (3, 3))(x))
            x = nn.relu(layers.Conv(ch, (3, 3))(x))
            x = nn.avg_pool(x, (2, 2), (2, 2))
        x = x.reshape(x.shape[0], -1)
        x = nn.relu(nn.Dense(256)(x))
        return nn.Dense(self.num_classes)(x)


#: The experiments' judge recipe: :class:`JudgeCNN`, 6 epochs over the training set and
#: :data:`JUDGE_AUGMENT` − 1 affine copies of it (60 passes over the real images), then
#: :data:`JUDGE_ANNEAL` epochs at lr 1e-4 [ours: chosen on the validation split: 98.8 %
#: without the last 2 epochs, 99.4 % with them].
JUDGE = TrainConfig(arch="hyperforget_jax.gan.metrics:JudgeCNN", epochs=6)
#: Copies of the training set the judge trains on (the first is the images themselves).
JUDGE_AUGMENT = 10
#: Epochs at a tenth of the learning rate after :data:`JUDGE`.
JUDGE_ANNEAL = 2


class Judge(NamedTuple):
    """A classifier used to label, count and featurise generated images."""

    arch: Architecture
    params: Params


def _refuse_out_of_range(samples) -> None:
    """DataError for generated images outside [0, 1] (D, the judge and the reference images
    live there; a user's G ending in tanh drew 44 % negative pixels, and every metric was
    computed on images the judge never saw)."""
    lo, hi = float(np.min(samples)), float(np.max(samples))
    if lo < -1e-6 or hi > 1 + 1e-6:
        raise DataError(f"the generator's samples lie in [{lo:.3g}, {hi:.3g}], not in [0, 1] "
                        "like the real images D and the judge were trained on; end the "
                        "generator with a sigmoid, or map a tanh output with (x + 1) / 2")


def train_judge(train: Dataset, seed: int | None = None, arch_name: str = "mlp",
                epochs: int = 20, config: TrainConfig | None = None,
                augment: int = 1, anneal_epochs: int = 0, progress: bool = False) -> Judge:
    """Trains the judge classifier on real images (the full training set, so that it knows
    every class, the forgotten ones included).

    Args:
      train: the real training images and labels.
      seed: initialisation, batch order and augmentation (replaces ``config.seed``; None:
        ``config.seed``, or 0 without a config: a judge-seed sweep written as
        ``config=TrainConfig(seed=k)`` trained the seed-0 judge every time).
      arch_name, epochs: the classifier and its epochs when ``config`` is None (beside a
        ``config`` they are refused: its ``arch`` and ``epochs`` were trained instead).
      config: the full recipe (:class:`~hyperforget_jax.train.TrainConfig`), e.g. from
        generated ``--judge-*`` flags; :data:`JUDGE` is the experiments' one.
      augment: train on the images and ``augment − 1`` randomly rotated, zoomed and shifted
        copies of them (:func:`hyperforget_jax.data.augment_affine`); 1 = the images only.
      anneal_epochs: after the recipe, this many more epochs at a tenth of its learning rate
        (same data, fresh AdamW state).
      progress: a progress bar per training phase (on stderr).

    Returns:
      The trained :class:`Judge`.
    """
    from hyperforget_jax.data import augment_affine

    if config is not None and (arch_name, epochs) != ("mlp", 20):
        raise ConfigError(f"train_judge: arch_name={arch_name!r} / epochs={epochs} would be "
                          "ignored beside config= (its arch and epochs are trained); set them "
                          "in the TrainConfig, or drop config")
    cfg = config or TrainConfig(arch=arch_name, epochs=epochs)
    _refuse_untrained_judge(cfg.epochs, anneal_epochs)
    cfg = dataclasses.replace(cfg, seed=seed if seed is not None else
                              (config.seed if config is not None else 0))
    arch = as_model(cfg.arch, train.x.shape[1:], train.num_classes)   # a name or import path
    if augment != 1:
        train = augment_affine(train, augment, cfg.seed)     # seed=None: the config's
    state, _ = fit(arch, train, cfg, progress=progress)
    if anneal_epochs:
        state, _ = fit(arch, train, dataclasses.replace(cfg, lr=cfg.lr / 10,
                                                        epochs=anneal_epochs),
                       init_params=state.params, progress=progress)
    return Judge(arch, state.params)


def _refuse_untrained_judge(epochs: int, anneal_epochs: int) -> None:
    # A judge of 0 + 0 epochs is its initialisation: its labels are random, and the GAN
    # metrics it reported (forgotten share 0.00 %, IS 1.0, "Judge: JudgeCNN (trained)") were
    # read as results (stop 63).
    if epochs == 0 and not anneal_epochs:
        raise ConfigError("the judge's recipe trains it for 0 epochs and 0 anneal epochs: its "
                          "labels would be random; give it at least one epoch (--judge-epochs "
                          "or --judge-anneal)")


def judge_recipe(config: TrainConfig | None = None, augment: int = JUDGE_AUGMENT,
                 anneal_epochs: int = JUDGE_ANNEAL, seed: int | None = None) -> dict:
    """The JSON identity of a judge recipe (the arguments of :func:`train_judge`); defaults
    are the experiments' judge (:data:`JUDGE`, :data:`JUDGE_AUGMENT`, :data:`JUDGE_ANNEAL`).
    ``seed``: replaces the config's (None: ``config.seed``, as :func:`train_judge` takes it;
    the default 0 replaced it, so a seed-7 recipe trained the seed-0 judge)."""
    cfg = config or JUDGE
    _refuse_untrained_judge(cfg.epochs, anneal_epochs)
    cfg = dataclasses.replace(cfg, seed=cfg.seed if seed is None else seed)
    return {"config": cfg.to_json(), "augment": int(augment),
            "anneal_epochs": int(anneal_epochs)}


def judge_from_recipe(train: Dataset, recipe: dict, progress: bool = False) -> Judge:
    """:func:`train_judge` with the arguments ``recipe`` (from :func:`judge_recipe`) records."""
    cfg = TrainConfig(**recipe["config"])
    return train_judge(train, seed=cfg.seed, config=cfg, augment=recipe["augment"],
                       anneal_epochs=recipe["anneal_epochs"], progress=progress)


def cached_judge(train: Dataset, recipe: dict, path: str | Path | None, data_id: str,
                 search: Sequence[str | Path] = (), keep_found: bool = False,
                 progress: bool = False) -> tuple[Judge, bool]:
    """:func:`train_judge` with ``recipe`` (from :func:`judge_recipe`), stored at ``path``.

    The judge is read back instead of trained when ``path`` or one of the ``search``
    directories holds a judge written here with the same recipe and the same ``data_id``
    (e.g. :func:`hyperforget_jax.rundir.data_fingerprint` of the splits). A judge with another
    recipe or other data is ignored, never reused. Training is deterministic on one machine,
    so a stored judge equals one freshly trained there; a judge stored on another CPU is
    reused too, and can differ from a fresh one (XLA's float rounding differs between CPUs:
    docs/gan.md, "The same command on another CPU"). With ``keep_found``, a judge read from
    ``search`` is also stored at ``path`` (a run that reused a judge then carries it, for its
    evaluation). With ``progress``, training it shows progress bars.

    Returns:
      ``(judge, reused)``.

    Raises:
      CheckpointError: a stored judge whose identity matches is corrupt.
    """
    from hyperforget_jax import checkpoint

    arch = as_model(recipe["config"]["arch"], train.x.shape[1:], train.num_classes)
    want = {"role": "gan-judge", "recipe": recipe, "data": data_id}

    def holds_it(where) -> bool:
        if where is None or not Path(where).is_dir():
            return False
        try:
            return checkpoint.load_params_meta(where) == want
        except CheckpointError:             # not a params checkpoint: not a judge of ours
            return False

    for where in (*search, path):
        if holds_it(where):
            params, _ = checkpoint.load_params(where, arch.param_shapes())
            if keep_found and where is not path and path is not None and not holds_it(path):
                checkpoint.save_params(path, params, want)
            return Judge(arch, params), True
    judge = judge_from_recipe(train, recipe, progress=progress)
    if path is not None:
        checkpoint.save_params(path, judge.params, want)
    return judge, False


def _penultimate_apply(arch: Architecture, params: Params, x: jax.Array):
    """Logits and the input of the last Dense layer (the penultimate features)."""
    seen = []

    def record(next_fun, args, kwargs, context):
        if isinstance(context.module, nn.Dense) and context.method_name == "__call__":
            seen.append(args[0])
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
        logits = arch.apply(params, x)
    if not seen:        # an IndexError (a judge ending in a 1×1 convolution, an NNX Linear)
        raise ArchitectureError(
            f"the judge {arch.name} calls no flax.linen.Dense layer: classifier-FID / IS read "
            "the input of its last nn.Dense as the penultimate features; end the judge's Linen "
            "module with nn.Dense(num_classes), or use train_judge's judge")
    return logits, seen[-1].reshape(x.shape[0], -1)


def _compiled_judge(arch: Architecture):
    # Owned by the judge's model (Architecture.program), so a user's classifier used as the
    # judge is freed with it; registered models share one program per shape.
    def build():
        def fn(params, x):
            logits, feats = _penultimate_apply(arch, params, x)
            return jax.nn.softmax(at_least_float32(logits), -1), feats
        return xla.jit(fn)

    return arch.program(("gan_judge",), build)


#: Rows per judge call. A 2,048-image batch of :class:`JudgeCNN` holds ≈ 200 MB per 28×28×32
#: activation; at 512 the outputs are the same (per-image computations;
#: ``tests/test_gan_metrics.py``) and, in exploratory probes on CPU, the call was ≈ 20 % and a
#: class cascade ≈ 1.14× faster.
JUDGE_CHUNK = 512


def judge_outputs(judge: Judge, x: np.ndarray, chunk: int = JUDGE_CHUNK
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(class probabilities (N, K), penultimate features (N, F)) of the judge, in chunks; in
    one call for a user's judge whose outputs depend on their batch (batch statistics,
    :func:`~hyperforget_jax.unlearn.gradtau_run.per_example`) or for one image, which the
    chunks would pad with zero images."""
    from hyperforget_jax.unlearn.gradtau_run import per_example

    # The judge's own check of its inputs (stop 64): uint8 images were judged unscaled
    # (classifier-FID of the real digits against themselves as uint8: 1.3e7), channel-first
    # ones as they came, or failed inside Flax; evaluate_gan checked them, this did not.
    judge.arch.check_inputs(x, "judge_outputs' images", values=False)
    x = np.asarray(x, np.float32)
    # No image was a bare TypeError in chunked_apply; NaN images gave finite, near-uniform
    # probabilities (ReLU zeroed them), where d_scores refuses them.
    if x.ndim != 4 or not len(x):
        raise DataError(f"judge_outputs takes (N, H, W, C) images with N >= 1, got shape "
                        f"{x.shape}")
    if not np.isfinite(x).all():
        raise DataError("judge_outputs: the images hold NaN/inf values")
    check_unit_images(x, "judge_outputs' images")       # (float 0..255 images too)
    # The registered models and the experiments' JudgeCNN are per-image by construction: no
    # check (≈ 1 s of compilation for JudgeCNN).
    own = judge.arch.registered or type(judge.arch.flax_module) is JudgeCNN
    whole = not own and not per_example(judge.arch, judge.params, x)
    return chunked_apply(_compiled_judge(judge.arch), judge.params, x, chunk, whole)


# --- distribution metrics ---------------------------------------------------------------------

def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray,
                     sigma2: np.ndarray) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2):
    ‖mu1 − mu2‖² + tr(sigma1 + sigma2 − 2 (sigma1 sigma2)^½).

    >>> round(frechet_distance(np.zeros(2), np.eye(2), np.ones(2), np.eye(2)), 6)
    2.0
    """
    # The PSD check's slack follows the inputs' precision: a float32 covariance of low-rank
    # ReLU features has rounding eigenvalues near −1.5e-6 of its scale.
    eps = max((np.finfo(np.asarray(s).dtype).eps
               if np.issubdtype(np.asarray(s).dtype, np.floating) else 0.0)
              for s in (sigma1, sigma2))
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    if not all(np.isfinite(a).all() for a in (mu1, mu2, sigma1, sigma2)):
        raise DataError("frechet_distance: the means or covariances hold NaN/inf (features of "
                        "NaN images?)")
    f = mu1.shape[0] if mu1.ndim == 1 else -1
    if mu1.ndim != 1 or mu2.shape != (f,) or sigma1.shape != (f, f) or sigma2.shape != (f, f):
        raise DataError(f"frechet_distance takes two means of shape (F,) and two covariances of "
                        f"shape (F, F), got {mu1.shape}, {sigma1.shape}, {mu2.shape}, "
                        f"{sigma2.shape}; pass feature_stats() of features of the same width")
    for name, s in (("sigma1", sigma1), ("sigma2", sigma2)):
        # eigh reads one triangle only: a non-symmetric matrix gave a distance of its lower
        # triangle's (0.0 for [[1, 2], [0, 1]] against I, 0.54 for its transpose), and a
        # negative definite one was clipped to 0 (distance 0.0 from I).
        scale = max(float(np.abs(s).max(initial=0.0)), 1e-300)
        if not np.allclose(s, s.T, rtol=1e-6, atol=1e-9 * scale):
            raise DataError(f"frechet_distance: {name} is not symmetric, so not a covariance; "
                            "pass np.cov(features, rowvar=False) (feature_stats)")
        if f and np.linalg.eigvalsh(s).min() < -max(1e-6, 50 * eps * np.sqrt(f)) * scale:
            raise DataError(f"frechet_distance: {name} has a negative eigenvalue, so it is "
                            "not a covariance; pass np.cov(features, rowvar=False) "
                            "(feature_stats)")
    # tr((Σ1 Σ2)^½) = tr((Σ1^½ Σ2 Σ1^½)^½): a symmetric PSD matrix, so eigh is stable even when
    # ReLU features leave Σ singular (dead units), where sqrtm of Σ1 Σ2 is not.
    w, v = np.linalg.eigh(sigma1)
    half = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    m = half @ sigma2 @ half
    tr_covmean = np.sum(np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)))
    diff = mu1 - mu2
    return float(max(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * tr_covmean, 0.0))


def feature_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of ``(N, F)`` features, N >= 2: one row has no covariance (numpy's
    NaN matrix failed in ``eigh`` with "Eigenvalues did not converge")."""
    f = np.asarray(features, np.float64)
    if f.ndim != 2 or len(f) < 2:
        raise DataError(f"features must be an (N, F) array with N >= 2 rows to estimate a "
                        f"covariance, got shape {f.shape}; pass judge_outputs(judge, x)[1] of "
                        "at least 2 images")
    if not np.isfinite(f).all():    # (eigh's bare LinAlgError, or a NaN FID)
        raise DataError("features hold NaN/inf values; pass judge_outputs(judge, x)[1] of "
                        "finite images")
    return f.mean(0), np.cov(f, rowvar=False)


def classifier_fid(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """classifier-FID: Fréchet distance between Gaussians fitted to two feature sets (of the
    same width, at least 2 rows each; fewer rows than features is fine: the covariances are
    singular, which :func:`frechet_distance` handles exactly)."""
    a, b = feature_stats(features_a), feature_stats(features_b)
    if a[0].shape != b[0].shape:
        raise DataError(f"classifier_fid: features of width {a[0].shape[0]} and "
                        f"{b[0].shape[0]}; pass features of the same judge")
    return frechet_distance(*a, *b)


def classifier_is(probs: np.ndarray, eps: float = 1e-12) -> float:
    """classifier-IS: exp(E_x KL(p(y|x) ‖ p(y))) over the judge's predictions.
    Uniform predictions give 1; confident predictions balanced over K classes give K."""
    if isinstance(eps, (bool, np.bool_)) or not is_scalar_number(eps) \
            or not 0 < float(eps) <= 1e-3:
        # (0 or NaN gave NaN, True read as 1, 1e6 a meaningless 1.0)
        raise ConfigError(f"classifier_is: eps (the log's guard) must be a number in "
                          f"(0, 1e-3], got {eps!r}")
    p = np.asarray(probs, np.float64)
    if p.ndim != 2 or len(p) == 0:     # no rows: NaN, with numpy's "Mean of empty slice"
        raise DataError(f"classifier_is takes (N, K) class probabilities with N >= 1, got "
                        f"shape {p.shape}")
    # (rows of a bfloat16 softmax sum to 1 within ≈ 5e-3)
    if not np.isfinite(p).all() or (p < 0).any() or not np.allclose(p.sum(1), 1, atol=1e-2):
        # NaN rows gave NaN, logits passed by mistake NaN, rows summing to 5 an IS of 5.9.
        raise DataError("classifier_is takes class probabilities: finite, >= 0, each row "
                        "summing to 1 (judge_outputs(judge, x)[0], a softmax, not logits)")
    py = p.mean(0, keepdims=True)
    kl = np.sum(p * (np.log(p + eps) - np.log(py + eps)), axis=1)
    return float(np.exp(kl.mean()))


def _check_judge_labels(labels: Any, fn: str, num_classes: int | None = None) -> np.ndarray:
    """``labels`` as a non-empty 1-D integer array (in [0, ``num_classes``) when given): the
    share of no sample read 0.0 (class_shares) or NaN (forgotten_share), and a label >= K was
    dropped from class_shares, whose shares then summed to less than 1."""
    labels = np.asarray(labels)
    if labels.ndim != 1 or len(labels) == 0 or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{fn} takes the judge's labels of at least one sample, a 1-D integer "
                        f"array (probs.argmax(1)), got shape {labels.shape}, dtype "
                        f"{labels.dtype}")
    if num_classes is not None and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(f"{fn}: labels span {int(labels.min())}..{int(labels.max())} but "
                        f"num_classes={num_classes}; pass the judge's class count")
    return labels


def class_shares(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Fraction of samples per class (labels are the judge's argmax)."""
    labels = _check_judge_labels(labels, "class_shares", num_classes)
    return np.bincount(labels, minlength=num_classes) / len(labels)


def forgotten_share(labels: np.ndarray, classes: Sequence[int],
                    num_classes: int | None = None) -> float:
    """Share of samples the judge assigns to any of the forgotten ``classes`` (``num_classes``:
    the judge's K, when known: a class past it is refused)."""
    labels = _check_judge_labels(labels, "forgotten_share", num_classes)
    # Validated as a forget request's classes: "3", [3.5] or [] read as "nothing of them"
    # (share 0.0, perfectly forgotten); 3 alone was a TypeError.
    classes = checked_classes(classes, "forgotten_share", num_classes)
    return float(np.mean(np.isin(labels, list(classes))))


def checked_classes(classes: Any, fn: str, num_classes: int | None = None) -> tuple[int, ...]:
    """``classes`` as a forget request's class ids (ForgetRequestError otherwise): "3", [3.5],
    [] or [-7] read as "nothing of them", a share of 0.0 (perfectly forgotten); so did a class
    past the judge's last, ``num_classes`` - 1, when it is given."""
    classes = ForgetRequest(classes=classes).classes
    if min(classes) < 0:
        raise ForgetRequestError(f"{fn}: class {min(classes)} is negative; classes are the "
                                 "judge's class ids 0..K-1")
    if num_classes is not None and max(classes) >= num_classes:
        raise ForgetRequestError(f"{fn}: class {max(classes)} is not one of the judge's "
                                 f"{num_classes} classes (0..{num_classes - 1})")
    return classes


# --- membership inference on the discriminator -------------------------------------------------

def d_score_mia(member_scores: np.ndarray, nonmember_scores: np.ndarray) -> dict:
    """Discriminator-score membership inference: members (the forgotten items) against
    held-out non-members, attacked by thresholding σ(D(x)) (higher = "member").

    Returns:
      ``d_mia_auc``: ROC AUC of the score (0.5 = no membership signal; below 0.5 means the
      items now look *less* real than unseen data, itself a tell-tale);
      ``d_mia_acc``: best balanced accuracy over thresholds (optimistic, in-sample: with no
      membership signal at all it reads ≈ 0.51 for 1,000 members vs 1,000 non-members, 0.54
      for 64 members, 0.60 for 8 and 0.75 for one; compare it with Retrain's at equal sizes);
      mean scores of both groups.
    """
    from sklearn.metrics import roc_auc_score, roc_curve

    m, n = np.asarray(member_scores, np.float64), np.asarray(nonmember_scores, np.float64)
    if len(m) == 0 or len(n) == 0:
        raise ConfigError("membership inference needs at least one member and one non-member")
    if m.ndim != 1 or n.ndim != 1:      # not a divergence: say the shape, not "diverged"
        raise DataError(f"d_score_mia takes 1-D discriminator scores, one per image, got "
                        f"shapes {m.shape}, {n.shape}; pass d_scores(arch, d_params, x)")
    if not (np.isfinite(m).all() and np.isfinite(n).all()):
        # sklearn's own "Input contains NaN" was a plain ValueError naming no fix.
        raise DataError(f"d_score_mia takes finite discriminator scores, got "
                        f"{int(np.sum(~np.isfinite(m)))} + {int(np.sum(~np.isfinite(n)))} "
                        "NaN/inf; the discriminator diverged - evaluate a finite one")
    y = np.r_[np.ones(len(m)), np.zeros(len(n))]
    s = np.r_[m, n]
    fpr, tpr, _ = roc_curve(y, s)
    return {"d_mia_auc": float(roc_auc_score(y, s)),
            "d_mia_acc": float(np.max((tpr + 1 - fpr) / 2)),
            "d_score_members": float(m.mean()), "d_score_nonmembers": float(n.mean())}


# --- downstream classification ----------------------------------------------------------------

def downstream_accuracy(images: np.ndarray, judge: Judge, test: Dataset, seed: int = 0,
                        arch_name: str = "mlp", epochs: int = 10,
                        kept_classes: Sequence[int] | None = None,
                        labels: np.ndarray | None = None) -> dict:
    """Trains a classifier on generated ``images`` labelled by the judge and tests it on real
    ``test`` data: overall accuracy and, if given, accuracy on the kept classes. ``labels``:
    the judge's labels of ``images`` when the caller already has them."""
    if kept_classes is not None and not np.isin(test.y, list(kept_classes)).any():
        # Checked before training: the kept-class accuracy would be a mean over no image (NaN).
        raise DataError(f"downstream_accuracy: the test set has no image of the kept classes "
                        f"{[int(c) for c in kept_classes]}; pass kept classes the test set "
                        "holds, or kept_classes=None")
    if labels is None:
        labels = judge_outputs(judge, images)[0].argmax(1)
    elif np.ndim(labels) != 1 or not np.issubdtype(np.asarray(labels).dtype, np.integer):
        # Float labels (y + 0.7) were truncated to other classes without a word.
        raise DataError(f"downstream_accuracy: labels must be 1-D integer class ids, got "
                        f"{np.asarray(labels).dtype} {np.shape(labels)}")
    synth = Dataset(np.asarray(images, np.float32), np.asarray(labels, np.int32),
                    test.num_classes, "generated")
    arch = make_architecture(arch_name, test.x.shape[1:], test.num_classes)
    state, _ = fit(arch, synth, TrainConfig(arch=arch_name, epochs=epochs, seed=seed))
    correct = per_sample_outputs(arch.apply, state.params, test.x, test.y)["correct"]
    out = {"downstream_acc": float(np.mean(correct))}
    if kept_classes is not None:
        out["downstream_acc_kept"] = float(np.mean(correct[np.isin(test.y, list(kept_classes))]))
    return out


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """How a generator is evaluated: ``num_samples`` ≥ 10k for the share / FID / IS;
    ``downstream_samples`` (≤ ``num_samples``: the first of those samples) train the
    downstream classifier (0 skips it)."""

    num_samples: int = 10_000
    downstream_samples: int = 10_000
    downstream_epochs: int = 10
    seed: int = 1234

    def __post_init__(self):
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)) \
                or not 0 <= self.seed < SEED_LIMIT:
            raise ConfigError(f"EvalConfig.seed must be an integer in [0, 2**32), got "
                              f"{self.seed!r}")
        # Counts shape and slice arrays: 100.0 or NaN (NaN passes every bound below) failed
        # inside the evaluation with a TypeError, after the judge had run.
        for name in ("num_samples", "downstream_samples", "downstream_epochs"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise ConfigError(f"EvalConfig.{name} must be an integer, got {v!r}")
        # classifier-FID needs a covariance: at least two samples.
        if self.num_samples < 2:
            raise ConfigError(f"the evaluation needs at least 2 generated samples (classifier-"
                              f"FID estimates a covariance), got {self.num_samples}; the "
                              f"experiments use 10,000")
        if self.downstream_samples < 0 or self.downstream_epochs < 1:
            raise ConfigError(f"downstream_samples must be >= 0 and downstream_epochs >= 1, "
                              f"got {self.downstream_samples}, {self.downstream_epochs}")
        # The downstream classifier trains on the first downstream_samples of the
        # num_samples generated images: more than that would silently train on fewer.
        if self.downstream_samples > self.num_samples:
            raise ConfigError(f"downstream_samples ({self.downstream_samples}) must be <= "
                              f"num_samples ({self.num_samples}): the downstream classifier "
                              f"trains on the evaluation's generated samples")


def _raise_if_nonfinite(values: np.ndarray, what: str, player: str) -> None:
    values = np.asarray(values)
    if not np.isfinite(values).all():
        bad = ~np.isfinite(values.reshape(len(values), -1)).all(1)
        raise NonFiniteError(f"{what} hold NaN/inf ({int(bad.sum())} of {len(values)}); the "
                             f"{player}'s parameters diverged - evaluate a finite {player}")


def _check_reference_feats(ref: Any, width: int | None) -> None:
    """Raises ConfigError unless ``ref`` is an (n, ``width``) array of numbers, n >= 2 (a
    scalar, another judge's features or one row failed in numpy's matmul or covariance);
    ``width`` None: any width (checked before sampling, the width once the judge has run)."""
    try:
        a = np.asarray(ref, np.float64)
    except (TypeError, ValueError):
        a = None
    if a is None or a.ndim != 2 or len(a) < 2 or width not in (None, a.shape[1]):
        got = f"shape {a.shape}" if a is not None else type(ref).__name__
        wide = "" if width is None else f"{width}-wide "
        raise ConfigError(f"reference_feats must be the judge's {wide}features of retain_x, "
                          f"judge_outputs(judge, retain_x)[1], got {got}")


def evaluate_gan(arch, g_params: Params, d_params: Params, judge: Judge, splits: Splits,
                 forget_x: np.ndarray, retain_x: np.ndarray, forget_classes=None,
                 cfg: EvalConfig = EvalConfig(), reference_feats: np.ndarray | None = None,
                 *, forget_y: np.ndarray | None = None) -> dict:
    """Every GAN-unlearning metric of one (G, D) pair.

    Args:
      arch: the :class:`~hyperforget_jax.gan.models.GANArch`.
      g_params, d_params: generator and discriminator parameters.
      judge: the judge classifier (:func:`train_judge`).
      splits: the data splits; ``splits.test`` supplies the MIA non-members and the downstream
        test set.
      forget_x: the forgotten training images (MIA members).
      retain_x: the retained training images D_r: the classifier-FID reference set.
      forget_classes: class ids for class unlearning (share and kept-class accuracy), or None.
      cfg: sample counts and seed.
      reference_feats: precomputed judge features of ``retain_x`` (saves time across calls).
      forget_y: the labels of ``forget_x``. Given, the discriminator attack compares members
        and non-members class by class where their class mixes differ
        (:func:`hyperforget_jax.metrics.class_matched_rows`, recorded as
        ``attacks_class_matched``): 64 items of one class against the whole test set read
        ``d_mia_auc`` 0.80 on a discriminator that never saw them, and 0.29 on a Retrain's.
        Without it the attack takes every row, as before.

    Returns:
      A flat dict: ``forgotten_share`` (class requests), ``class_shares``, ``classifier_fid``,
      ``classifier_is``, ``d_mia_auc``, ``d_mia_acc``, ``d_score_members``,
      ``d_score_nonmembers``, ``downstream_acc`` (and ``downstream_acc_kept``).

    Raises:
      ConfigError: ``judge`` not a :class:`Judge`, ``splits`` not :class:`Splits`, ``cfg``
        not an :class:`EvalConfig`, ``reference_feats`` not the judge's features.
      NonFiniteError: the generator's samples, the discriminator's scores or the judge's
        outputs hold NaN/inf.
    """
    from hyperforget_jax.gan.models import check_gan_arch
    from hyperforget_jax.gan.train import d_scores, sample

    if not isinstance(judge, Judge) or not isinstance(cfg, EvalConfig):
        raise ConfigError(f"evaluate_gan takes judge=train_judge(splits.train) and cfg=an "
                          f"EvalConfig, got a {type(judge).__name__} and a {type(cfg).__name__}")
    if not isinstance(splits, Splits):      # else an AttributeError on .test
        raise ConfigError(f"evaluate_gan takes splits=the Splits the GAN was trained from "
                          f"(hf.make_splits(ds)), got a {type(splits).__name__}")
    if reference_feats is not None:
        _check_reference_feats(reference_feats, None)
    k = splits.test.num_classes
    refuse_traced((g_params, d_params), "evaluate_gan")
    check_gan_arch(arch, "evaluate_gan")
    arch.check_params(g_params, d_params)
    judge.arch.check_inputs(np.zeros((1, *arch.image_shape), np.float32), "the GAN's samples")
    # The judge's class count is measured (shape only, cached), never taken from what it
    # says: a 5-output judge on 10-class data read every class from 5 up as never drawn, so
    # a forgotten class 7 had a share of 0 (perfectly forgotten), without a word; declared
    # num_classes=10, such a judge still passed.
    width = judge.arch.num_outputs(judge.params, arch.image_shape, "evaluate_gan's judge")
    if width != k:
        raise ConfigError(f"the judge has {width} classes but the data {k}; train the judge "
                          "on this dataset (train_judge(splits.train))")
    forget_x = arch.check_images(forget_x, "forget_x (the MIA members)")
    if forget_y is not None:
        forget_y = np.asarray(forget_y)
        if forget_y.shape != (len(forget_x),) or not np.issubdtype(forget_y.dtype, np.integer):
            raise DataError(f"forget_y must hold one integer label per forget_x image "
                            f"({len(forget_x)}), got {forget_y.dtype} of shape {forget_y.shape}"
                            "; pass the forget split's labels (fs.forget.y)")
        if len(forget_y) and (forget_y.min() < 0 or forget_y.max() >= k):
            # Members labelled -1 were dropped by the class matching (1 of 8 left, AUC 0.0).
            raise DataError(f"forget_y holds labels {forget_y.min()}..{forget_y.max()}, but the "
                            f"data has classes 0..{k - 1}; pass the forget split's labels "
                            "(fs.forget.y)")
    retain_x = arch.check_images(retain_x, "retain_x (the classifier-FID reference)", 2)
    arch.check_images(splits.test.x, "splits.test")
    # The attack's non-members and the downstream test images must be unseen: another split
    # seed's test set (263 of its 359 images training images) was scored without a word.
    forget_ds, retain_ds = images_only(forget_x, "forget"), images_only(retain_x, "retain")
    refuse_training_rows(splits.test, "splits.test (the attack's non-members)", "pass the "
                         "splits the GAN was trained from", forget_ds, retain_ds)
    # D_r is the reference without the forgotten images (unlearn_gan refuses the same pair):
    # the whole training set as reference moved classifier-FID (48.4 → 46.3), without a word.
    refuse_training_rows(forget_ds, "forget_x", "retain_x (the classifier-FID reference, "
                         "D_r) holds them too: pass D_r without them (fs.retain.x)", retain_ds)
    if forget_classes is not None:
        forget_classes = ForgetRequest(classes=forget_classes).classes
        bad = [c for c in forget_classes if not 0 <= c < k]
        if bad:
            raise ForgetRequestError(f"forget class {bad[0]} does not exist: the data has "
                                     f"classes 0..{k - 1}")
    samples = sample(arch, g_params, cfg.num_samples, cfg.seed)
    # NaN images have the judge's argmax 0: every share, FID and IS would be garbage (a
    # forgotten class other than 0 would read as perfectly forgotten).
    _raise_if_nonfinite(samples, "the generator's samples", "generator")
    _refuse_out_of_range(samples)
    probs, feats = judge_outputs(judge, samples)
    # The same for a diverged judge: NaN probabilities have argmax 0 (forgotten_share 0.0 for
    # any other class) while ReLU can leave its features finite (a plausible classifier-FID).
    _raise_if_nonfinite(np.concatenate([probs, feats], 1), "the judge's outputs on the "
                        "generator's samples", "judge")
    labels = probs.argmax(1)
    if reference_feats is None:
        reference_feats = judge_outputs(judge, retain_x)[1]
    else:
        _check_reference_feats(reference_feats, feats.shape[1])
    _raise_if_nonfinite(reference_feats, "the judge's features of retain_x", "judge")
    out: dict[str, Any] = {"class_shares": class_shares(labels, k).tolist(),
                           "classifier_fid": classifier_fid(feats, reference_feats),
                           "classifier_is": classifier_is(probs)}
    nonmembers, nonmember_y = splits.test.x, np.asarray(splits.test.y)
    if forget_classes is not None:
        out["forgotten_share"] = forgotten_share(labels, forget_classes, k)
        # Unseen images of the forgotten class are the fair non-members for class removal.
        keep = np.isin(nonmember_y, list(forget_classes))
        nonmembers, nonmember_y = nonmembers[keep], nonmember_y[keep]
        if not len(nonmembers):
            raise DataError(f"the test set holds no image of class(es) {list(forget_classes)}"
                            ": the membership attack needs unseen images of them")
    matched = None if forget_y is None else class_matched_rows(forget_y, nonmember_y, cfg.seed)
    if matched is not None:
        forget_x, nonmembers = forget_x[matched[0]], nonmembers[matched[1]]
        if not len(forget_x):
            raise DataError(f"no class of the {len(forget_y)} forgotten images is in the test "
                            "set: the membership attack needs unseen images of their classes")
        out["attacks_class_matched"] = {"d_mia": {
            "p_value": matched[2], "members": len(matched[0]), "nonmembers": len(matched[1])}}
    members, nonmembers = d_scores(arch, d_params, forget_x), d_scores(arch, d_params, nonmembers)
    _raise_if_nonfinite(np.concatenate([members, nonmembers]), "the discriminator's scores",
                        "discriminator")
    out.update(d_score_mia(members, nonmembers))
    if cfg.downstream_samples:
        kept = None if forget_classes is None else [c for c in range(k)
                                                    if c not in set(forget_classes)]
        n = cfg.downstream_samples
        out.update(downstream_accuracy(samples[:n], judge, splits.test, cfg.seed,
                                       epochs=cfg.downstream_epochs, kept_classes=kept,
                                       labels=labels[:n]))
    return out
