"""Standard image datasets (mnist, fashion_mnist, cifar10) through tensorflow-datasets.

Works without TensorFlow: data is read with ``tfds.data_source`` (the array_record based
random-access API), never ``tfds.load``. METHODS.md §5.

Offline, tfds retries a download for about 200 s before failing, so :func:`load_tfds` first makes
a cheap filesystem check (:func:`is_prepared`) and raises :class:`DataError` at once, naming the
data_dir and how to prepare it. It then calls ``tfds.data_source(..., download=False)``, so tfds
itself never tries the network either.

``tensorflow_datasets`` is imported lazily, inside the functions that need it, so
``import hyperforget_jax`` stays fast and never touches tfds.

Testing with ``tfds.testing.mock_data``: the mock replaces the data, not the files, so
:func:`is_prepared` is False under it. Tests patch the check explicitly, e.g.
``monkeypatch.setattr(tfds_source, "is_prepared", lambda *a, **k: True)``, and use
``mock_data(policy=MockPolicy.USE_CODE, num_examples=n)`` (see tests/test_tfds_source.py).
"""

from __future__ import annotations

import importlib.metadata
import os
from typing import Any, NamedTuple, Sequence

import numpy as np

from hyperforget_jax.errors import DataError


class TfdsSpec(NamedTuple):
    """What a supported tfds dataset must look like once loaded."""

    image_shape: tuple[int, int, int]
    num_classes: int


SUPPORTED: dict[str, TfdsSpec] = {
    "mnist": TfdsSpec((28, 28, 1), 10),
    "fashion_mnist": TfdsSpec((28, 28, 1), 10),
    "cifar10": TfdsSpec((32, 32, 3), 10),
}

# Records fetched per ``__getitems__`` call (array_record reads a batch in parallel).
_READ_CHUNK = 4096


def default_data_dir() -> str:
    """The directory tfds uses when none is given: ``$TFDS_DATA_DIR`` (``~`` expanded, as tfds
    does; empty means unset) or ``~/tensorflow_datasets``. A literal ``~/tfds`` (a Dockerfile's
    ``ENV``) passed the prepared-check, then went unexpanded to tfds, which found nothing."""
    env = os.environ.get("TFDS_DATA_DIR")
    return (os.path.expanduser(env) if env
            else os.path.join(os.path.expanduser("~"), "tensorflow_datasets"))


def _resolve_data_dir(data_dir: str | os.PathLike | None) -> str:
    return os.path.expanduser(os.fspath(data_dir)) if data_dir else default_data_dir()


def _check_name(name: str) -> TfdsSpec:
    if name not in SUPPORTED:
        raise DataError(
            f"unknown tfds dataset {name!r}; choose one of {', '.join(SUPPORTED)}"
        )
    return SUPPORTED[name]


def is_prepared(name: str, data_dir: str | None = None) -> bool:
    """True if ``<data_dir>/<name>/<version>/dataset_info.json`` exists for any version.

    A pure filesystem check: no tfds import, no builder, no network.
    """
    root = os.path.join(_resolve_data_dir(data_dir), name)
    try:
        versions = os.listdir(root)
    except OSError:
        return False
    return any(
        os.path.isfile(os.path.join(root, v, "dataset_info.json"))
        for v in versions
        if not v.startswith("incomplete.")  # tfds prefix of an interrupted preparation
    )


def prepare_command(name: str, data_dir: str | None = None, overwrite: bool = False) -> str:
    """The shell command that prepares ``name`` in a form :func:`load_tfds` can read.
    ``overwrite``: for a prepared copy that is damaged; without ``--overwrite`` tfds finds the
    version's folder, logs "Reusing dataset" and rebuilds nothing."""
    return (
        "python -m tensorflow_datasets.scripts.download_and_prepare "
        f"--datasets={name} --data_dir={_resolve_data_dir(data_dir)} --file_format=array_record"
        + (" --overwrite" if overwrite else "")
    )


def _not_prepared_message(name: str, data_dir: str) -> str:
    return (
        f"tfds dataset {name!r} is not prepared in data_dir {data_dir!r} "
        f"(no {os.path.join(data_dir, name, '<version>', 'dataset_info.json')}). "
        f"Prepare it on a machine with network access: `{prepare_command(name, data_dir)}` "
        f"(needs TensorFlow there, not here), then copy the prepared folder "
        f"{os.path.join(data_dir, name)!r} to this machine; or pass data_dir= (the CLI's "
        f"--data-dir) / set $TFDS_DATA_DIR to where it already is"
    )


def _prepared_versions(name: str, data_dir: str) -> list[str]:
    root = os.path.join(data_dir, name)
    try:
        return sorted(v for v in os.listdir(root)
                      if os.path.isfile(os.path.join(root, v, "dataset_info.json")))
    except OSError:
        return []


def _expected_version(name: str) -> str:
    try:
        import tensorflow_datasets as tfds  # noqa: PLC0415

        return str(tfds.builder_cls(name).VERSION)
    except Exception:  # noqa: BLE001  (only used to word an error message)
        return "?"


def _open_failed_message(name: str, split: str, data_dir: str, err: BaseException) -> str:
    detail = " ".join(str(err).split())
    if len(detail) > 400:
        detail = detail[:400] + "..."
    return (
        f"tfds cannot read {name!r} split {split!r} from data_dir {data_dir!r} "
        f"(versions prepared there: {_prepared_versions(name, data_dir) or 'none'}; "
        f"the installed tfds reads version {_expected_version(name)}, array_record format): "
        f"{type(err).__name__}: {detail.rstrip('.')}. Check the split name ({name} has 'train' "
        f"and 'test'), or re-prepare with `{prepare_command(name, data_dir, overwrite=True)}`"
    )


def _tfds():
    try:
        import tensorflow_datasets as tfds  # noqa: PLC0415  (lazy by design)
    except ImportError as e:  # includes the undeclared `importlib_resources` dependency
        raise DataError(
            f"tensorflow-datasets cannot be imported ({e}); install it with "
            "`pip install tensorflow-datasets importlib_resources array_record pillow` "
            "(TensorFlow is not needed)"
        ) from e
    except Exception as e:  # noqa: BLE001  (a broken install fails its import in other ways)
        # tfds 4.9.0-4.9.1 raise TypeError here under protobuf >= 4 (old generated modules).
        raise DataError(
            f"tensorflow-datasets {_dist_version('tensorflow-datasets')} is installed but fails "
            f"to import ({type(e).__name__}: {' '.join(str(e).split())[:200]}); upgrade it "
            "with `pip install -U 'tensorflow-datasets>=4.9.10'`"
        ) from e
    return tfds


def _dist_version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def _feature_shape(info: Any, key: str) -> tuple | None:
    try:
        return tuple(info.features[key].shape)
    except Exception:  # noqa: BLE001  (metadata is optional; the arrays are checked anyway)
        return None


def _read_all(source: Any) -> list[dict]:
    """All records of a tfds data source, fetched in batches."""
    n = len(source)
    records: list[dict] = []
    batched = True
    for lo in range(0, n, _READ_CHUNK):
        keys = list(range(lo, min(lo + _READ_CHUNK, n)))
        if batched:
            try:
                records.extend(source.__getitems__(keys))
                continue
            except TypeError:
                # tfds.testing.mock_data (4.9.10) assigns a plain functools.partial as the
                # mock's `__getitems__`, which is then called without `self`; only
                # `__getitem__` works there. Fall back to one record at a time.
                if lo:
                    raise
                batched = False
        records.extend(source[i] for i in keys)
    return records


def _to_arrays(name: str, split: str, records: list[dict], spec: TfdsSpec,
               data_dir: str) -> tuple[np.ndarray, np.ndarray]:
    where = f"tfds dataset {name!r} split {split!r} in data_dir {data_dir!r}"
    if not records:
        raise DataError(f"{where} is empty; re-prepare it with "
                        f"`{prepare_command(name, data_dir, overwrite=True)}`")
    images = np.empty((len(records),) + spec.image_shape, dtype=np.uint8)
    labels = np.empty((len(records),), dtype=np.int32)
    for i, rec in enumerate(records):
        img = np.asarray(rec["image"])
        if img.shape != spec.image_shape:
            raise DataError(
                f"{where}: record {i} has image shape {img.shape}, expected {spec.image_shape}; "
                f"the prepared data is not the standard {name}: re-prepare it with "
                f"`{prepare_command(name, data_dir, overwrite=True)}`"
            )
        images[i] = img
        labels[i] = rec["label"]
    if labels.min() < 0 or labels.max() >= spec.num_classes:
        raise DataError(
            f"{where}: labels span [{labels.min()}, {labels.max()}], expected "
            f"[0, {spec.num_classes - 1}]; re-prepare it with "
            f"`{prepare_command(name, data_dir, overwrite=True)}`"
        )
    return images, labels


def load_tfds(
    name: str,
    data_dir: str | None = None,
    splits: Sequence[str] = ("train", "test"),
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Loads whole splits of a prepared tfds dataset into memory.

    Args:
      name: one of ``SUPPORTED`` (mnist, fashion_mnist, cifar10).
      data_dir: tfds data directory; defaults to :func:`default_data_dir`.
      splits: tfds split names (slices such as ``"train[:10%]"`` work too).

    Returns:
      ``{split: (images, labels)}``: images uint8 (N, H, W, C), labels int32 (N,).

    Raises:
      DataError: unknown name; data not prepared in ``data_dir`` (raised at once, without
        touching the network); prepared data tfds cannot read as a random-access source
        (e.g. prepared as tfrecord instead of array_record); image shape or labels unlike
        the standard dataset.
    """
    spec = _check_name(name)
    if isinstance(splits, str):
        splits = (splits,)
    data_dir = _resolve_data_dir(data_dir)
    if not is_prepared(name, data_dir):
        raise DataError(_not_prepared_message(name, data_dir))

    tfds = _tfds()
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for split in splits:
        try:
            # download=False: never reach for the network, even if the check above was fooled.
            source = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
        except Exception as e:  # noqa: BLE001  (any failure to open prepared files is a data problem)
            raise DataError(_open_failed_message(name, split, data_dir, e)) from e
        declared = _feature_shape(source.dataset_info, "image")
        if declared is not None and declared != spec.image_shape:
            raise DataError(
                f"tfds dataset {name!r} in data_dir {data_dir!r} declares image shape {declared}, "
                f"expected {spec.image_shape}; re-prepare it with "
                f"`{prepare_command(name, data_dir, overwrite=True)}`"
            )
        try:
            records = _read_all(source)
        except Exception as e:  # noqa: BLE001  (missing/corrupt shard, undecodable image, ...)
            raise DataError(_open_failed_message(name, split, data_dir, e)) from e
        out[split] = _to_arrays(name, split, records, spec, data_dir)
    return out
