"""Per-sample metrics, batched evaluation and the membership-inference attacks of METHODS.md §4.

Every attack is named by its variant (``mia_loss_lr``, ``mia_entropy_lr``, ``mia_efficacy_svc``),
never just "MIA": the variants measure different things and their ideal values differ.

Every function that runs a model takes anything :func:`hyperforget_jax.models.as_model` takes: an
``apply_fn(params, x) -> logits``, a Flax module, a registered name or an ``Architecture`` (whose
compiled batch function is then reused across calls).
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from hyperforget_jax import xla
from hyperforget_jax.config import check_count, is_scalar_number
from hyperforget_jax.data import _check_seed, integer_inputs_fix
from hyperforget_jax.errors import ConfigError, DataError, NonFiniteError
from hyperforget_jax.params import committed

ApplyFn = Any  # apply_fn(params, x) -> logits, or any model hf.as_model takes

#: Keys of :func:`avg_gap` by default: FA, RA, TA and the loss attack (METHODS.md §4).
DEFAULT_GAP_KEYS = ("forget_acc", "retain_acc", "test_acc", "mia_loss_lr")


# --------------------------------------------------------------------------------------------
# Per-sample functions (pure JAX, jit-able; only the static shapes are checked, when traced)
# --------------------------------------------------------------------------------------------

def _check_labels(logits: jax.Array, labels: jax.Array, fn: str) -> None:
    """Raises :class:`DataError` unless ``labels`` has ``logits``' shape less the class axis:
    (N, 1) labels (Keras' CIFAR-10) or one-hot rows would broadcast against the (N,) argmax."""
    want = tuple(jnp.shape(logits))[:-1]
    dtype = jnp.asarray(labels).dtype
    if not jnp.issubdtype(dtype, jnp.integer):
        # A float 2.7 was cut to class 2 by cross_entropy while correct() compared it as 2.7.
        raise DataError(f"{fn}: labels of dtype {dtype}; pass integer class ids "
                        "(labels.astype(int) if they are whole numbers)")
    if tuple(jnp.shape(labels)) != want:
        raise DataError(f"{fn}: labels of shape {tuple(jnp.shape(labels))} for logits of shape "
                        f"{tuple(jnp.shape(logits))}; pass integer class ids of shape {want} "
                        "(not one-hot, not (N, 1): labels.reshape(-1) or labels.argmax(-1))")


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Per-sample softmax cross-entropy.

    Args:
      logits: ``(N, C)`` unnormalised scores.
      labels: ``(N,)`` integer labels in ``[0, C)``.

    Returns:
      ``(N,)`` float array, ``-log softmax(logits)[label]``.
    """
    _check_labels(logits, labels, "cross_entropy")
    labels = label_ids(labels)
    # log_softmax instead of log(softmax): stays finite for confident, large-margin logits.
    logp = jax.nn.log_softmax(logits, axis=-1)
    ce = -jnp.take_along_axis(logp, labels[:, None].astype(jnp.int32), axis=-1)[:, 0]
    # take_along_axis reads −1 as the last class (NumPy's rule): NaN, as past the last one.
    return nan_where_invalid(ce, (labels >= 0) & (labels < jnp.shape(logits)[-1]))


def label_ids(labels: jax.Array) -> jax.Array:
    """Integer labels narrower than int32 as int32, others as they are. Compared with the
    class count K, a narrow label array cast K to its own dtype: 256 classes made K 0 in
    uint8 (200 made it −56 in int8), so every label read as past the last class and every
    loss was NaN."""
    labels = jnp.asarray(labels)
    if jnp.issubdtype(labels.dtype, jnp.integer) and jnp.iinfo(labels.dtype).bits < 32:
        return labels.astype(jnp.int32)
    return labels


def nan_where_invalid(values: jax.Array, valid: jax.Array) -> jax.Array:
    """``values`` where ``valid``, NaN elsewhere, with no NaN made where every row is valid:
    ``jnp.where(valid, values, jnp.nan)`` made a NaN constant, on which ``jax_debug_nans``
    stopped every un-jitted loss (``jax.disable_jit()``, JAX's way to find a NaN's source).
    Adds √(valid − 1): 0 for a valid row (the same bits), NaN for an invalid one."""
    return values + jnp.sqrt(jnp.asarray(valid, values.dtype) - 1)


def prediction_entropy(logits: jax.Array) -> jax.Array:
    """Per-sample entropy (in nats) of the softmax prediction.

    Args:
      logits: ``(N, C)`` unnormalised scores.

    Returns:
      ``(N,)`` float array in ``[0, log C]``.
    """
    logp = jax.nn.log_softmax(logits, axis=-1)
    p = jnp.exp(logp)
    # 0·log 0 := 0; the where guards against -inf·0 = NaN when a logit is -inf (masked class).
    return -jnp.sum(jnp.where(p > 0, p * logp, 0.0), axis=-1)


def confidence(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Per-sample softmax probability of the true label.

    Args:
      logits: ``(N, C)`` unnormalised scores.
      labels: ``(N,)`` integer labels in ``[0, C)``.

    Returns:
      ``(N,)`` float array in ``[0, 1]``.
    """
    return jnp.exp(-cross_entropy(logits, labels))


def correct(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Per-sample top-1 correctness.

    Args:
      logits: ``(N, C)`` unnormalised scores.
      labels: ``(N,)`` integer labels.

    Returns:
      ``(N,)`` bool array, ``argmax(logits) == label``.
    """
    _check_labels(logits, labels, "correct")
    return jnp.argmax(logits, axis=-1) == labels


# --------------------------------------------------------------------------------------------
# Batched evaluation
# --------------------------------------------------------------------------------------------

def at_least_float32(logits: jax.Array) -> jax.Array:
    """``logits`` in float32 (float64 stays): a model that computes in bfloat16 / float16 gives
    low-precision logits, and a loss taken in that precision is rounded to a few bits
    (``x - logsumexp(x)`` loses every loss below ~0.4 % of the largest logit: most members'
    losses read exactly 0), which biased mean losses and fed the attacks tied features."""
    return logits.astype(jnp.promote_types(logits.dtype, jnp.float32))


def _batch_outputs_impl(apply_fn: ApplyFn, params: Any, xb: jax.Array,
                        yb: jax.Array) -> dict[str, jax.Array]:
    logits = at_least_float32(apply_fn(params, xb))
    return {"loss": cross_entropy(logits, yb), "entropy": prediction_entropy(logits),
            "confidence": confidence(logits, yb), "correct": correct(logits, yb),
            "logits": logits}


def _batch_fn(model: Any) -> Callable:
    # The compiled batch function is the model's own (models.Architecture.program): repeated
    # evaluations (retain / forget / test, every seed) reuse one executable, and nothing
    # module-level keeps a user's apply_fn alive.
    from hyperforget_jax.models import model_of

    m = model_of(model)
    return m.program("batch_outputs", lambda: xla.jit(functools.partial(_batch_outputs_impl,
                                                                        m.apply)))


def _check_xy(x: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x)
    y = np.asarray(y)
    if x.ndim == 0 or x.shape[0] == 0:
        raise DataError(f"evaluation inputs are empty (x has shape {x.shape}); pass at least one "
                        "sample, e.g. check that the split or forget set is not empty")
    if y.ndim != 1:
        raise DataError(f"labels must be a 1-D integer array, got shape {y.shape}; pass integer "
                        "class ids, not one-hot vectors")
    if len(x) != len(y):
        raise DataError(f"x has {len(x)} samples but y has {len(y)} labels; pass matching arrays")
    if not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"labels must be integers, got dtype {y.dtype}; cast them with "
                        "y.astype(np.int32)")
    if y.min() < 0:
        raise DataError(f"labels must be >= 0, found {int(y.min())}; use class ids 0..C-1")
    if not jnp.issubdtype(x.dtype, jnp.floating):        # bfloat16 and float8 included
        # fit / unlearn / evaluate_unlearning refuse them too (Architecture.check_inputs): a
        # uint8 image reached the model unscaled, 0..255, and scored a silently wrong accuracy.
        raise DataError(f"x has dtype {x.dtype}; the models take floating-point inputs. "
                        f"{integer_inputs_fix(x.dtype)}")
    if np.issubdtype(x.dtype, np.floating) and not np.all(np.isfinite(x)):
        raise DataError("x contains NaN or inf values; clean or re-prepare the dataset")
    return x, y


def _check_batch_size(batch_size: int) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
            or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
    return int(batch_size)


def refuse_non_finite_outputs(out: dict[str, np.ndarray], where: str = "",
                              y: Any = None) -> None:
    """NonFiniteError when :func:`per_sample_outputs`' ``out`` holds NaN or +inf logits, or NaN
    losses (``where``: e.g. " on the retain set"). NaN logits have argmax 0: a diverged model
    would score class 0's share as its accuracy. −inf logits are a model's way to rule a class
    out (a mask), not a divergence. With the labels ``y``, a loss of +inf whose true-label logit
    is finite is refused too: finite logits whose spread overflows float32 (±2e38, a diverged
    model), not a mask, which :func:`~hyperforget_jax.evaluation.evaluate_unlearning` would
    otherwise report as a not-applicable loss attack."""
    logits = out["logits"]
    bad = np.isnan(logits).any(-1) | np.isposinf(logits).any(-1) | np.isnan(out["loss"])
    if y is not None:
        true = np.take_along_axis(logits, np.asarray(y)[:, None], -1)[:, 0]
        bad |= np.isposinf(out["loss"]) & np.isfinite(true)
    if bad.any():
        raise NonFiniteError(f"the model's outputs{where} are NaN/inf for {int(bad.sum())} of "
                             f"{len(bad)} samples (first: sample {int(np.argmax(bad))}); its "
                             "parameters diverged or its logits overflow - evaluate a finite "
                             "model")


def per_sample_outputs(apply_fn: ApplyFn, params: Any, x: Any, y: Any,
                       batch_size: int = 1024) -> dict[str, np.ndarray]:
    """Runs the model over ``x`` in fixed-size batches and returns per-sample outputs.

    The last batch is padded (by repeating its last sample) to the batch size, so the jitted
    function is compiled once per input shape, not once more for a ragged tail. A model whose
    rows depend on their batch (batch statistics, :func:`~hyperforget_jax.unlearn.gradtau_run.
    per_example`) runs the whole set in one call, as its teacher logits and τ do: batches of
    ``batch_size`` gave it other outputs for every batch size, and a padded last batch held
    mostly copies of one sample (a user's BatchNorm-style MLP on MNIST-5k: 83 % instead of
    95 % on the retain set's last 78 rows).

    Args:
      apply_fn: ``apply_fn(params, x_batch) -> logits`` of shape ``(B, C)``.
      params: model parameters passed through to ``apply_fn``.
      x: ``(N, ...)`` inputs.
      y: ``(N,)`` integer labels.
      batch_size: samples per jitted call; the effective size is ``min(batch_size, N)`` (``N``
        for a model whose rows depend on their batch).

    Returns:
      A dict of numpy arrays of length ``N``: ``loss`` (cross-entropy), ``entropy``,
      ``confidence`` (true-label probability), ``correct`` (bool) and ``logits`` ``(N, C)``.

    Raises:
      DataError: for empty inputs, mismatched lengths, NaN inputs or out-of-range labels.
      ConfigError: for a non-positive batch size.
    """
    x, y = _check_xy(x, y)
    result = _run_batches(apply_fn, params, x, y, _check_batch_size(batch_size),
                          "per_sample_outputs")
    num_classes = result["logits"].shape[-1]
    if y.max() >= num_classes:
        raise DataError(f"label {int(y.max())} is out of range for a model with {num_classes} "
                        "outputs; check that the dataset and the architecture match")
    return result


def _distinct_rows(x: Any, k: int = 4) -> np.ndarray | None:
    """The first ``k`` distinct rows among the first 256 of ``x``; None for fewer than 2
    (repeated rows have no batch statistics to show)."""
    head = np.asarray(x[:256])
    _, first = np.unique(head.reshape(len(head), -1), axis=0, return_index=True)
    return head[np.sort(first)[:k]] if len(first) >= 2 else None


def rows_independent(apply: Callable, params: Any, x: Any) -> bool:
    """Whether ``apply(params, x)``'s output row of an input does not depend on the other rows of
    its batch: 4 distinct rows of ``x`` computed whole and one by one agree (a forward pass
    with batch statistics, e.g. BatchNorm without running averages or centring by the batch
    mean, differs). ``apply`` returns an array or a tuple of arrays, one row per input.

    The rows are the first 4 distinct ones (fewer than 2 distinct ones cannot tell: False),
    and the parameters are perturbed (:func:`~hyperforget_jax.params.perturbed`): a
    batch-dependent branch behind a gate initialised to 0 passed at the initial parameters,
    and the answer is kept for the model. Where the perturbed outputs are not finite (a
    running variance pushed below 0), the parameters as given decide."""
    rows = _distinct_rows(x)
    return False if rows is None else _rows_agree(apply, params, rows)


def _rows_agree(apply: Callable, params: Any, rows: np.ndarray) -> bool:
    from hyperforget_jax.params import perturbed

    xs = jnp.asarray(rows)
    apply = jax.jit(apply)

    def outputs(p):
        whole = [np.asarray(o, np.float64) for o in jax.tree.leaves(apply(p, xs))]
        alone = [np.concatenate(o) for o in zip(*(
            [np.asarray(o, np.float64) for o in jax.tree.leaves(apply(p, xs[i:i + 1]))]
            for i in range(len(xs))))]
        return whole, alone

    whole, alone = outputs(perturbed(params))
    if not all(np.isfinite(w).all() and np.isfinite(a).all() for w, a in zip(whole, alone)):
        whole, alone = outputs(params)
    # The scale of the finite outputs: a masked class's −inf made the tolerance inf (and numpy
    # warn), so any two outputs compared equal.
    return all(np.allclose(w, a, rtol=1e-3, atol=1e-3 * (1 + np.abs(
        np.where(np.isfinite(w), w, 0.0)).max(initial=0.0))) for w, a in zip(whole, alone))


class _CannotTell(Exception):
    """Rows that cannot tell (fewer than 2 distinct): no answer to keep."""


def rows_independent_once(owner: Any, key: Any, apply: Callable, params: Any, x: Any) -> bool:
    """:func:`rows_independent`, asked once per ``key`` of ``owner`` (a model or a GAN
    architecture: its ``program`` cache): True for the registered models (per-example by
    construction); False, not checked (nor kept), for traced parameters (inside a user's
    transformation the check cannot run) and for fewer than 2 distinct rows (they cannot
    tell: a first evaluation of blank images kept False for the model, and its later real
    sets ran as one batch). Once kept, the answer costs a cache lookup."""
    if owner.registered:
        return True
    if len(x) < 2 or any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(params)):
        return False

    def decide() -> bool:
        rows = _distinct_rows(x)
        if rows is None:
            raise _CannotTell      # (a build that raises keeps nothing)
        return _rows_agree(apply, params, rows)

    try:
        return owner.program(key, decide)
    except _CannotTell:
        return False


def chunked_apply(fn: Callable, params: Any, x: Any, chunk: int, whole: bool = False) -> Any:
    """``fn(params, batch)`` over ``x`` in chunks of equal rows (the last one zero-padded, so a
    jitted ``fn`` compiles once per size), as host arrays without the padding. ``fn`` may return
    an array or a tuple of arrays; ``x`` must be non-empty.

    The chunk is ``chunk`` rows, or the power of two ≥ ``len(x)`` (at least 16) when that is
    smaller: 64 images are not padded to 2,048, and sizes still share a few compilations.
    ``whole``: ``x`` in one call, unpadded, for a ``fn`` whose rows depend on their batch
    (:func:`rows_independent`): chunks and zero rows gave its rows other values for every
    ``len(x)`` and ``chunk``."""
    # (0 was range()'s ValueError, 2.5 or None a TypeError)
    chunk = check_count(chunk, "chunk", " (rows per call)")
    if whole:
        return jax.tree.map(np.asarray, fn(params, jnp.asarray(np.asarray(x))))
    chunk = min(chunk, max(16, 1 << max(len(x) - 1, 0).bit_length()))
    outs = []
    for i in range(0, len(x), chunk):
        xx = np.asarray(x[i:i + chunk])
        pad = chunk - len(xx)
        if pad:
            xx = np.concatenate([xx, np.zeros((pad, *xx.shape[1:]), xx.dtype)])
        outs.append(jax.tree.map(lambda o: np.asarray(o)[: chunk - pad],
                                 fn(params, jnp.asarray(xx))))
    return jax.tree.map(lambda *o: np.concatenate(o), *outs)


#: Rows of a data set that a one-call forward pass (SCRUB's and Bad Teacher's teacher logits,
#: U-LiRA's confidences) takes whole; a larger set is computed in chunks (:func:`in_row_chunks`).
#: A whole call holds every row's activations at once: the ``cnn`` needs ≈ 0.56 MB per 32×32×3
#: image, ≈ 25 GiB for CIFAR-10's 45,000 retain images in one call (benchmarks/bench_scale.py).
WHOLE_CALL_ROWS = 4096


def in_row_chunks(fn: Callable, params: Any, arrays: tuple, rows: int, axis: int = 0
                  ) -> np.ndarray:
    """``fn(params, *arrays)`` as a host array, computed ``rows`` rows of ``arrays`` at a time
    when they have more (one call otherwise, as before). The last chunk is filled with repeats
    of its last row (a valid input; the extra outputs are dropped), so a jitted ``fn`` compiles
    once more at most. ``axis`` is the output axis that holds the rows (1 for a fleet's
    ``(members, rows)`` output). Only for models whose rows are independent (no batch
    statistics)."""
    n = len(arrays[0])
    if n <= rows:
        return np.asarray(fn(params, *arrays))
    outs = []
    for i in range(0, n, rows):
        part = [a[i:i + rows] for a in arrays]
        pad = rows - len(part[0])
        if pad:
            part = [jnp.concatenate([a, jnp.repeat(a[-1:], pad, axis=0)]) for a in part]
        out = np.asarray(fn(params, *part))
        outs.append(np.take(out, np.arange(rows - pad), axis=axis))
    return np.concatenate(outs, axis=axis)


def _run_batches(apply_fn: ApplyFn, params: Any, x: np.ndarray, y: np.ndarray,
                 batch_size: int, what: str) -> dict[str, np.ndarray]:
    from hyperforget_jax.models import model_of
    from hyperforget_jax.unlearn.gradtau_run import per_example

    n = len(x)
    bs = min(batch_size, n)
    model = model_of(apply_fn)
    # Parameters of another model: an extra leaf was taken, a transposed kernel was Flax's
    # ScopeParamShapeError (not a ValueError), an apply_fn's own TypeError came out bare. (A
    # bare apply_fn takes what its author says: Flax variables, or no parameters at all.)
    if model.param_shapes() is not None:
        model.check_params(params, shapes_only=True)
    # Images of another shape: not "parameters". Their values too: float 0..255 images were
    # scored without a word (evaluate_unlearning refused them; stop 64).
    model.check_inputs(x, what)
    model.num_outputs(params, np.shape(x)[1:], what, bs)
    if bs < n and not per_example(model, params, x):
        bs = n      # batch statistics: the set's own, not those of a chunk or of padding
    fn = _batch_fn(apply_fn)
    params = committed(params)      # one executable for loaded and freshly trained parameters
    chunks = []
    for start in range(0, n, bs):
        xb, yb = x[start:start + bs], y[start:start + bs]
        pad = bs - len(xb)
        if pad:
            # Repeat a real sample rather than zeros: always a valid input for the model
            # (normalisation layers, embeddings), and padded outputs are discarded anyway.
            xb = np.concatenate([xb, np.repeat(xb[-1:], pad, axis=0)])
            yb = np.concatenate([yb, np.repeat(yb[-1:], pad)])
        out = jax.device_get(fn(params, xb, yb.astype(np.int32)))
        chunks.append({k: np.asarray(v)[:bs - pad] for k, v in out.items()})
    return {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}


def evaluate(apply_fn: ApplyFn, params: Any, x: Any, y: Any, num_classes: int,
             batch_size: int = 1024) -> dict[str, Any]:
    """Accuracy and mean cross-entropy, overall and per class.

    Args:
      apply_fn: ``apply_fn(params, x_batch) -> logits`` of shape ``(B, num_classes)``.
      params: model parameters passed through to ``apply_fn``.
      x: ``(N, ...)`` inputs.
      y: ``(N,)`` integer labels in ``[0, num_classes)``.
      num_classes: number of classes, the length of the per-class lists.
      batch_size: samples per jitted call (see :func:`per_sample_outputs`).

    Returns:
      A JSON-friendly dict of plain Python values: ``accuracy`` and ``loss`` (floats),
      ``per_class_accuracy`` and ``per_class_loss`` (lists of ``num_classes`` floats, NaN for a
      class absent from ``y``) and ``n`` (int).

    Raises:
      DataError: for empty inputs, mismatched lengths, NaN inputs or out-of-range labels.
      ConfigError: for a bad ``num_classes`` / ``batch_size`` or a model whose output width
        differs from ``num_classes``.
      NonFiniteError: the model's logits are NaN or +inf (or its losses NaN, or +inf where
        the true class's logit is finite: logits whose spread overflows) for some samples
        (−inf logits, a masked class, are accepted).
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) \
            or num_classes < 1:
        raise ConfigError(f"num_classes must be a positive integer, got {num_classes!r}")
    x, y = _check_xy(x, y)
    if y.max() >= num_classes:
        raise DataError(f"label {int(y.max())} is out of range for num_classes={num_classes}; "
                        "check that the dataset and the architecture match")
    out = _run_batches(apply_fn, params, x, y, _check_batch_size(batch_size), "evaluate")
    if out["logits"].shape[-1] != num_classes:
        raise ConfigError(f"num_classes={num_classes} but the model outputs "
                          f"{out['logits'].shape[-1]} logits; pass the architecture's class count")
    refuse_non_finite_outputs(out, y=y)
    # float64 on the host: means over tens of thousands of float32 losses lose digits otherwise.
    loss = out["loss"].astype(np.float64)
    corr = out["correct"].astype(np.float64)
    counts = np.bincount(y, minlength=num_classes).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        pc_acc = np.bincount(y, weights=corr, minlength=num_classes) / counts
        pc_loss = np.bincount(y, weights=loss, minlength=num_classes) / counts
    return {"accuracy": float(corr.mean()), "loss": float(loss.mean()),
            "per_class_accuracy": [float(v) for v in pc_acc],
            "per_class_loss": [float(v) for v in pc_loss], "n": int(len(y))}


# --------------------------------------------------------------------------------------------
# Membership-inference attacks
# --------------------------------------------------------------------------------------------

def _as_1d(name: str, values: Any, min_len: int = 1) -> np.ndarray:
    if np.iscomplexobj(values):     # (taken as the real part, with NumPy's warning only)
        raise DataError(f"{name} holds complex values; pass real per-sample values (losses, "
                        "entropies, confidences)")
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise DataError(f"{name} must be a 1-D array of per-sample values, got shape {arr.shape}")
    if len(arr) < min_len:
        raise DataError(f"{name} has {len(arr)} samples but the attack needs at least {min_len}; "
                        "use a larger forget / retain / test set")
    if not np.all(np.isfinite(arr)):
        raise DataError(f"{name} contains NaN or inf values; the model diverged or its outputs "
                        "overflowed - check the checkpoint before attacking it")
    return arr


def _equalise(a: np.ndarray, b: np.ndarray, rng: np.random.Generator
              ) -> tuple[np.ndarray, np.ndarray]:
    # Balanced classes: otherwise an attack that always answers the majority class scores above
    # 0.5 without learning anything about membership.
    m = min(len(a), len(b))
    if len(a) > m:
        a = a[rng.permutation(len(a))[:m]]
    if len(b) > m:
        b = b[rng.permutation(len(b))[:m]]
    return a, b


#: p-value of the χ² test of homogeneity below which two sets' class mixes differ by more
#: than sampling noise (:func:`class_matched_rows`).
CLASS_MIX_P = 1e-3
#: the least expected count of every cell for the χ² test to be read (Cochran's rule); a
#: table with fewer is matched whenever its two class mixes differ.
MIN_EXPECTED = 5


def class_matched_rows(y_a: Any, y_b: Any, seed: int, p_min: float = CLASS_MIX_P
                       ) -> tuple[np.ndarray, np.ndarray, float] | None:
    """Rows of two labelled sets with the same class mix, or None when their mixes agree
    within sampling noise (the χ² test of homogeneity's p-value at least ``p_min``, in a table
    whose every cell expects at least :data:`MIN_EXPECTED` rows; in a smaller one the test is
    not valid, and the sets are matched whenever their mixes differ), or when either set is
    empty.

    An attack told members from non-members by their classes when the two sets' class mixes
    differ (long-tailed training data beside a balanced test set, or one forgotten class more
    common among the members and another among the non-members): a model that never saw the
    data read 0.87 instead of 0.5. The matched rows hold, per class, min(count in a, count
    in b) of each set, drawn without replacement. Returns ``(rows_a, rows_b, p_value)``."""
    from scipy.stats import chi2_contingency

    y_a, y_b = np.asarray(y_a), np.asarray(y_b)
    classes = np.union1d(y_a, y_b)
    # Counted per class in linear memory (a rows × classes mask took 1.3 GB for ImageNet's
    # 1.28M rows and 1,000 classes).
    table = np.stack([np.bincount(np.searchsorted(classes, y), minlength=len(classes))
                      for y in (y_a, y_b)])
    if len(classes) < 2 or not table.sum(1).all():
        return None
    p = float(chi2_contingency(table, correction=False)[1])
    if p >= p_min:
        # Where a cell's expected count is under MIN_EXPECTED the test is not valid (Cochran's
        # rule) and has no power, while the attack's bias from the class mix does not shrink
        # with the set: three forgotten items of one class, from a model that never saw them
        # and favours that class, read 0.88 unmatched (p 0.003). Such small sets are matched
        # whenever their mixes differ at all.
        expected = np.outer(table.sum(1), table.sum(0)) / table.sum()
        share = table / table.sum(1, keepdims=True)
        if expected.min() >= MIN_EXPECTED or np.allclose(share[0], share[1]):
            return None
    rng = np.random.default_rng([_attack_seed(seed), 7])
    rows_a, rows_b = [], []
    for c, n_a, n_b in zip(classes, *table):
        m = min(n_a, n_b)
        rows_a.append(rng.permutation(np.flatnonzero(y_a == c))[:m])
        rows_b.append(rng.permutation(np.flatnonzero(y_b == c))[:m])
    return np.sort(np.concatenate(rows_a)), np.sort(np.concatenate(rows_b)), p


def _attack_seed(seed: Any) -> int:
    # numpy and sklearn would fail deep inside (a TypeError for 1.5 or a JAX key, sklearn's
    # "between 0 and 2**32 - 1" after the subsampling ran) or read True as seed 1.
    return _check_seed(seed, "attack seed", ConfigError)


def _lr_attack(members: np.ndarray, nonmembers: np.ndarray, n_splits: int, seed: int) -> float:
    if isinstance(n_splits, bool) or not isinstance(n_splits, (int, np.integer)) or n_splits < 1:
        raise ConfigError(f"n_splits must be a positive integer, got {n_splits!r}")
    seed = _attack_seed(seed)
    members, nonmembers = _equalise(members, nonmembers, np.random.default_rng(seed))
    x = np.concatenate([members, nonmembers])[:, None]
    y = np.concatenate([np.ones(len(members), np.int64), np.zeros(len(nonmembers), np.int64)])
    # The kit's default test_size=0.1, rounded up to an even size, at least one test sample
    # per class, so that forget sets of a few dozen samples still split. An odd size put one
    # more sample of one side in every test split and one more of the other in its training
    # part: a model that learns nothing predicts the training majority, the test minority, and
    # identical members and non-members read 0.33 (15 each) or 0.49 (105 each) instead of 0.5.
    test_size = 2 * max(1, math.ceil(0.05 * len(y)))
    from sklearn import linear_model, model_selection  # ~1-3 s to import: only when attacking

    cv = model_selection.StratifiedShuffleSplit(n_splits=n_splits, test_size=test_size,
                                                random_state=seed)
    scores = model_selection.cross_val_score(linear_model.LogisticRegression(), x, y, cv=cv,
                                             scoring="accuracy")
    return float(np.mean(scores))


def mia_loss_lr(member_losses: Any, nonmember_losses: Any, n_splits: int = 10,
                seed: int = 0) -> float:
    """Loss-based logistic-regression membership inference ("simple_mia").

    Follows the NeurIPS 2023 machine-unlearning starting kit: the larger set is randomly
    subsampled (seeded) to the size of the smaller, the per-sample loss is the single feature,
    members are labelled 1 and non-members 0, and a ``LogisticRegression`` is scored by
    ``StratifiedShuffleSplit`` cross-validation. Members are the forget-set samples, non-members
    held-out test samples; the ideal is the retrained model's value (about 0.5). The test
    share is the kit's 0.1, rounded up to an even number of samples [ours]: with an odd one
    (the kit's, e.g. 21 of 105 + 105) every split holds one member more than non-members or
    the reverse, and an attack that learns nothing read below chance (0.49 at 105 a side,
    0.33 at 15).

    As in the kit, the raw loss is not standardised and ``LogisticRegression`` keeps its default
    L2 penalty (``C=1``): losses that differ only below ~1e-3 are not told apart (two perfectly
    separated sets of losses in [0, 1e-3] and [1e-3, 2e-3] read 0.50; scaled by 10, 0.99), so
    a value near 0.5 on a very confident model is no proof of no leakage. With a handful of
    forget samples the value is a few cross-validated guesses (±0.1 and more between attack
    seeds); U-LiRA (:mod:`hyperforget_jax.ulira`) asks per example.

    Args:
      member_losses: ``(N,)`` per-sample losses of the members (forget set).
      nonmember_losses: ``(M,)`` per-sample losses of the non-members (held-out test samples).
      n_splits: cross-validation splits (10 in the kit).
      seed: seeds the subsampling and the splits (the kit's ``random_state=0`` by default).

    Returns:
      Mean attack accuracy over the splits, in ``[0, 1]``.

    Raises:
      DataError: for fewer than 2 samples on a side, a non-1-D input or NaN/inf values.
      ConfigError: for a non-positive ``n_splits`` or a seed that is not an integer in
        [0, 2**32).
    """
    return _lr_attack(_as_1d("member_losses", member_losses, 2),
                      _as_1d("nonmember_losses", nonmember_losses, 2), n_splits, seed)


def mia_entropy_lr(member_entropies: Any, nonmember_entropies: Any, n_splits: int = 10,
                   seed: int = 0) -> float:
    """Entropy-based logistic-regression membership inference.

    The :func:`mia_loss_lr` protocol with the prediction entropy as the feature instead of the
    loss; it needs no labels, so it also probes what the model predicts rather than how well.

    Args:
      member_entropies: ``(N,)`` per-sample prediction entropies of the members (forget set).
      nonmember_entropies: ``(M,)`` per-sample entropies of the non-members (test samples).
      n_splits: cross-validation splits.
      seed: seeds the subsampling and the splits.

    Returns:
      Mean attack accuracy over the splits, in ``[0, 1]``; ideal is Retrain's value (about 0.5).

    Raises:
      DataError: for fewer than 2 samples on a side, a non-1-D input or NaN/inf values.
      ConfigError: for a non-positive ``n_splits`` or a seed that is not an integer in
        [0, 2**32).
    """
    return _lr_attack(_as_1d("member_entropies", member_entropies, 2),
                      _as_1d("nonmember_entropies", nonmember_entropies, 2), n_splits, seed)


def mia_efficacy_svc(retain_conf: Any, test_conf: Any, forget_conf: Any, seed: int = 0) -> float:
    """MIA-Efficacy of SalUn / Unlearn-Sparse: share of forget samples judged non-members.

    An ``SVC(kernel='rbf', C=3, gamma='auto')`` is trained to tell retain samples (members, 1)
    from test samples (non-members, 0), with the larger side subsampled (seeded) to the size of
    the smaller, and then classifies the forget samples. Higher means more forgotten; the ideal is
    Retrain's value, which is not 1 because well-generalised test samples look like members.

    SalUn reports this as a percentage (multiply by 100). Unlearn-Sparse's attack uses entropy
    and confidence features; here the single feature is the true-label confidence.

    Args:
      retain_conf: ``(R,)`` true-label softmax probabilities on the retain set.
      test_conf: ``(T,)`` true-label probabilities on held-out test samples.
      forget_conf: ``(F,)`` true-label probabilities on the forget set.
      seed: seeds the subsampling.

    Returns:
      The fraction of forget samples predicted as non-members, in ``[0, 1]``.

    Raises:
      DataError: for fewer than 2 retain or test samples, an empty forget set, a non-1-D
        input or NaN/inf values.
      ConfigError: for a seed that is not an integer in [0, 2**32).
    """
    # At least 2 a side, as the other attacks: 1 retain sample trained the SVC on one
    # member and one non-member (its "efficacy" was 0 or 1 by which side each fell on).
    retain = _as_1d("retain_conf", retain_conf, 2)
    test = _as_1d("test_conf", test_conf, 2)
    forget = _as_1d("forget_conf", forget_conf)
    retain, test = _equalise(retain, test, np.random.default_rng(_attack_seed(seed)))
    x = np.concatenate([retain, test])[:, None]
    y = np.concatenate([np.ones(len(retain), np.int64), np.zeros(len(test), np.int64)])
    from sklearn import svm

    # random_state: without one, SVC.fit draws its libsvm seed from the global np.random
    # (the caller's stream moved on by one draw); libsvm uses it only for probabilities.
    clf = svm.SVC(kernel="rbf", C=3, gamma="auto", random_state=0)
    clf.fit(x, y)
    return float(np.mean(clf.predict(forget[:, None]) == 0))


# --------------------------------------------------------------------------------------------
# Aggregation over methods and seeds
# --------------------------------------------------------------------------------------------

def avg_gap(metrics: dict[str, float], retrain: dict[str, float],
            keys: Sequence[str] = DEFAULT_GAP_KEYS) -> float:
    """Avg. Gap: mean absolute difference to Retrain over ``keys`` (METHODS.md §4).

    Args:
      metrics: the method's metrics; values in the same units as ``retrain`` (scale both to
        percentages for the papers' numbers).
      retrain: Retrain's metrics under the same seed.
      keys: metric names to average over; FA, RA, TA and ``mia_loss_lr`` by default.

    Returns:
      ``mean(|metrics[k] - retrain[k]| for k in keys)``; 0 means indistinguishable from Retrain.

    Raises:
      ConfigError: for empty ``keys``, a key missing from either dict or a value that is not
        a number (None, a string, a bool).
      DataError: for a NaN/inf value, which would make the gap meaningless.
    """
    keys = tuple(keys)
    if not keys:
        raise ConfigError("avg_gap needs at least one metric key; pass keys=(...) or the default")
    gaps = []
    for k in keys:
        for name, d in (("metrics", metrics), ("retrain", retrain)):
            if k not in d:
                raise ConfigError(f"avg_gap: key {k!r} missing from {name} (has "
                                  f"{sorted(d)}); evaluate it or pass keys= without it")
        for name, v in (("metrics", metrics[k]), ("retrain", retrain[k])):
            # float() raised a TypeError for None (an attack not applicable), read "0.5" as a
            # number and True as 1.0.
            if not is_scalar_number(v):
                raise ConfigError(f"avg_gap: {name}[{k!r}] is {v!r}, not a number; pass a "
                                  "number, or keys= without it (hf.evaluation.gap_keys)")
        a, b = float(metrics[k]), float(retrain[k])
        if not (math.isfinite(a) and math.isfinite(b)):
            raise DataError(f"avg_gap: {k!r} is not finite (method {a}, retrain {b}); fix the "
                            "evaluation or leave the key out")
        gaps.append(abs(a - b))
    return float(np.mean(gaps))


def mean_std(values: Iterable[float]) -> tuple[float, float]:
    """Mean and sample standard deviation over seeds.

    Uses ``ddof=1`` (the unbiased-variance estimate usual for mean ± std over a handful of
    seeds) when there are at least 2 values; a single value has std 0. NaN values propagate
    into the result instead of raising, so a table shows a diverged run as ``nan``.

    Args:
      values: one value per seed.

    Returns:
      ``(mean, std)`` as Python floats.

    Raises:
      DataError: for no values.
    """
    if is_scalar_number(values):    # (a TypeError: "'float' object is not iterable")
        raise DataError(f"mean_std takes one number per seed (a list), got {values!r}; pass "
                        f"[{values!r}] for one seed")
    values = [values] if isinstance(values, (str, bytes)) else list(values)
    if any(v is None or isinstance(v, (str, bytes)) for v in values):
        # "12" read digit by digit (1.5 ± 0.71); None made the mean NaN (stop 63)
        raise DataError(f"mean_std takes one number per seed, got {values!r}; leave out the "
                        "seeds without a value (format_over_seeds marks them)")
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    if arr.size == 0:
        raise DataError("mean_std needs at least one value; run at least one seed")
    std = float(np.std(arr, ddof=1)) if arr.size >= 2 else 0.0
    return float(np.mean(arr)), std


def format_over_seeds(values: Iterable[float | None], scale: float = 1.0, digits: int = 2
                      ) -> str:
    """:func:`format_mean_std` over the seeds that have a value: ``"–"`` where none has one
    (not applicable: all None), ``"NaN [k of n seeds]"`` where the values are NaN, and
    ``"[k of n seeds]"`` appended where only some have one (a None, or a NaN), so a seed that
    is missing is never silently left out of the mean."""
    _check_digits(digits)
    if is_scalar_number(values) or isinstance(values, (str, bytes)):
        mean_std(values)            # its DataError, naming the fix
    values = list(values)
    ok = [v for v in values if v is not None and np.isfinite(v)]
    if not ok:
        # Every seed NaN is not "not applicable": it read as the same "–".
        nan = sum(v is not None for v in values)
        return "–" if not nan else f"NaN [{nan} of {len(values)} seeds]"
    text = format_mean_std(ok, scale, digits)
    return text if len(ok) == len(values) else f"{text} [{len(ok)} of {len(values)} seeds]"


def _check_digits(digits: Any) -> None:
    # (Python's "Format specifier missing precision" for -1, "Invalid format specifier" for 1.5)
    if isinstance(digits, bool) or not isinstance(digits, (int, np.integer)) or digits < 0:
        raise ConfigError(f"digits must be an integer >= 0 (decimals shown), got {digits!r}")


def format_mean_std(values: Iterable[float], scale: float = 1.0, digits: int = 2) -> str:
    """Formats values over seeds as ``"mean ± std"``.

    Args:
      values: one value per seed.
      scale: multiplies the values first, e.g. 100 for fractions shown as percentages.
      digits: decimals of both numbers.

    Returns:
      For example ``"12.34 ± 0.56"``; ``"12.34 ± –"`` for a single value, whose std is not
      defined (``± 0.00`` would read as a spread measured to be zero).

    Raises:
      DataError: for no values.
    """
    _check_digits(digits)
    # mean_std's checks on the values as given: "12" was read digit by digit ("1.50 ± 0.71")
    if not (is_scalar_number(values) or isinstance(values, (str, bytes))):
        values = list(values)
    mean, std = mean_std(values)
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    if values.size == 1:
        return f"{mean * scale:.{digits}f} ± –"
    return f"{mean * scale:.{digits}f} ± {std * abs(scale):.{digits}f}"
