"""Tests of hyperforget_jax.tfds_source (tensorflow-datasets without TensorFlow, offline).

Two ways of getting data without network:
  * ``tfds.testing.mock_data(policy=MockPolicy.USE_CODE)``: random records with the real
    features. The mock replaces records, not files, so the filesystem check ``is_prepared`` is
    patched to True (fixture ``mocked``).
  * A tiny real array_record dataset written to a tmp data_dir by a local builder named
    ``mnist`` (PNG bytes encoded with PIL, so TensorFlow is not needed): exercises the real
    ``is_prepared`` -> ``tfds.data_source`` -> decode path end to end.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from hyperforget_jax import tfds_source
from hyperforget_jax.errors import DataError
from hyperforget_jax.tfds_source import (
    SUPPORTED,
    TfdsSpec,
    default_data_dir,
    is_prepared,
    load_tfds,
)


def _tfds():
    pytest.importorskip("importlib_resources")  # imported by tfds 4.9.10 but not declared
    pytest.importorskip("array_record")
    return pytest.importorskip("tensorflow_datasets")


@pytest.fixture
def mocked(monkeypatch):
    """tfds with the preparedness check patched (mock_data has no files on disk)."""
    tfds = _tfds()
    monkeypatch.setattr(tfds_source, "is_prepared", lambda name, data_dir=None: True)
    return tfds


def _mock(tfds, n):
    return tfds.testing.mock_data(num_examples=n, policy=tfds.testing.MockPolicy.USE_CODE)


# ---------------------------------------------------------------------------------------------
# mock_data path


@pytest.mark.parametrize("name,n", [("mnist", 37), ("cifar10", 23), ("fashion_mnist", 11)])
def test_mock_load_shapes_dtypes_labels(mocked, tmp_path, name, n):
    with _mock(mocked, n):
        out = load_tfds(name, data_dir=str(tmp_path))
    assert set(out) == {"train", "test"}
    h, w, c = SUPPORTED[name].image_shape
    for split, (x, y) in out.items():
        assert x.shape == (n, h, w, c), split
        assert x.dtype == np.uint8
        assert y.shape == (n,)
        assert y.dtype == np.int32
        assert 0 <= y.min() and y.max() < 10
        assert x.max() > 0  # random images, not a zero-filled buffer
    assert "tensorflow" not in sys.modules  # TensorFlow is never needed


def test_mock_single_split_as_string(mocked, tmp_path):
    with _mock(mocked, 5):
        out = load_tfds("mnist", data_dir=str(tmp_path), splits="test")
    assert list(out) == ["test"]
    assert out["test"][0].shape == (5, 28, 28, 1)


def test_mock_declared_shape_mismatch_raises(mocked, tmp_path, monkeypatch):
    monkeypatch.setitem(SUPPORTED, "mnist", TfdsSpec((32, 32, 3), 10))
    with _mock(mocked, 4), pytest.raises(DataError, match=r"declares image shape.*\(32, 32, 3\)"):
        load_tfds("mnist", data_dir=str(tmp_path))


# ---------------------------------------------------------------------------------------------
# errors that must come at once, without tfds or network


def test_unprepared_fails_fast_naming_data_dir(tmp_path):
    data_dir = str(tmp_path / "empty_tfds")
    os.makedirs(data_dir)
    t0 = time.perf_counter()
    with pytest.raises(DataError) as info:
        load_tfds("mnist", data_dir=data_dir)
    assert time.perf_counter() - t0 < 5.0
    msg = str(info.value)
    assert "not prepared" in msg and data_dir in msg
    assert "download_and_prepare" in msg and "--datasets=mnist" in msg
    assert f"--data_dir={data_dir}" in msg
    assert "pass data_dir= (the CLI's --data-dir)" in msg     # the CLI has no data_dir=
    assert isinstance(info.value, ValueError)


def test_unprepared_default_data_dir_from_env(tmp_path, monkeypatch):
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))
    t0 = time.perf_counter()
    with pytest.raises(DataError, match=str(tmp_path)):
        load_tfds("cifar10")
    assert time.perf_counter() - t0 < 5.0


@pytest.mark.parametrize("name", ["imagenet", "MNIST", "", "mnist5k"])
def test_unknown_name_raises_listing_supported(name, tmp_path):
    with pytest.raises(DataError) as info:
        load_tfds(name, data_dir=str(tmp_path))
    for ok in SUPPORTED:
        assert ok in str(info.value)


def test_supported_specs():
    assert SUPPORTED["mnist"].image_shape == (28, 28, 1)
    assert SUPPORTED["fashion_mnist"].image_shape == (28, 28, 1)
    assert SUPPORTED["cifar10"].image_shape == (32, 32, 3)
    assert all(s.num_classes == 10 for s in SUPPORTED.values())


# ---------------------------------------------------------------------------------------------
# is_prepared / default_data_dir


def test_is_prepared_fake_layout(tmp_path):
    assert not is_prepared("mnist", str(tmp_path))
    (tmp_path / "mnist" / "3.0.1").mkdir(parents=True)
    assert not is_prepared("mnist", str(tmp_path))  # version folder without dataset_info.json
    (tmp_path / "mnist" / "3.0.1" / "dataset_info.json").write_text("{}")
    assert is_prepared("mnist", str(tmp_path))
    assert not is_prepared("cifar10", str(tmp_path))


def test_is_prepared_ignores_incomplete_and_uses_env(tmp_path, monkeypatch):
    (tmp_path / "cifar10" / "incomplete.ABC_3.0.2").mkdir(parents=True)
    (tmp_path / "cifar10" / "incomplete.ABC_3.0.2" / "dataset_info.json").write_text("{}")
    assert not is_prepared("cifar10", str(tmp_path))
    (tmp_path / "cifar10" / "3.0.2").mkdir()
    (tmp_path / "cifar10" / "3.0.2" / "dataset_info.json").write_text("{}")
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))
    assert is_prepared("cifar10")  # data_dir=None -> $TFDS_DATA_DIR


def test_default_data_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))
    assert default_data_dir() == str(tmp_path)
    monkeypatch.delenv("TFDS_DATA_DIR")
    assert default_data_dir() == os.path.join(os.path.expanduser("~"), "tensorflow_datasets")
    tfds = _tfds()
    assert default_data_dir() == tfds.core.constants.get_default_data_dir()
    # A literal ~ (a Dockerfile's ENV TFDS_DATA_DIR=~/tfds) is expanded as tfds expands it:
    # it went to tfds unexpanded, which found no prepared data where is_prepared had; an empty
    # value meant the current directory.
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("TFDS_DATA_DIR", "~/tfds")
    assert default_data_dir() == str(tmp_path / "tfds")
    monkeypatch.setenv("TFDS_DATA_DIR", "")
    assert default_data_dir() == str(tmp_path / "tensorflow_datasets")


def test_import_is_lazy():
    code = (
        "import sys, hyperforget_jax.tfds_source as t; "
        "assert 'tensorflow_datasets' not in sys.modules, 'tfds imported eagerly'; "
        "t.is_prepared('mnist', '/nonexistent'); t.default_data_dir(); "
        "assert 'tensorflow_datasets' not in sys.modules"
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=root, timeout=60)


def test_a_tfds_that_fails_its_import_is_data_error(tmp_path, monkeypatch):
    """tfds 4.9.0 installs beside protobuf 7 and its import raises TypeError ("Descriptors
    cannot be created directly"): that escaped as a traceback instead of a DataError (exit 2)
    naming the upgrade. The failing import is simulated; no tfds is needed."""
    import builtins

    real_import = builtins.__import__

    def broken(name, *a, **k):
        if name == "tensorflow_datasets":
            raise TypeError("Descriptors cannot be created directly.")
        return real_import(name, *a, **k)

    monkeypatch.delitem(sys.modules, "tensorflow_datasets", raising=False)
    monkeypatch.setattr(builtins, "__import__", broken)
    monkeypatch.setattr(tfds_source, "is_prepared", lambda name, data_dir=None: True)
    with pytest.raises(DataError, match=r"fails to import \(TypeError: Descriptors.*>=4\.9\.10"):
        load_tfds("mnist", data_dir=str(tmp_path))


# ---------------------------------------------------------------------------------------------
# real array_record files, prepared locally (no network, no TensorFlow)


def _prepare_local(tfds, data_dir, shape, n_train=20, n_test=8, version="3.0.1"):
    """Writes a real ``mnist`` array_record dataset with random images; returns the images."""
    from PIL import Image

    made = {"train": [], "test": []}

    class LocalMnist(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        name = "mnist"
        VERSION = tfds.core.Version(version)

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=shape),
                "label": tfds.features.ClassLabel(num_classes=10),
            }))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples("train", n_train, 0),
                    "test": self._generate_examples("test", n_test, 1)}

        def _generate_examples(self, split, n, seed):
            rng = np.random.default_rng(seed)
            for i in range(n):
                img = rng.integers(0, 256, shape, dtype=np.uint8)
                made[split].append((img, i % 10))
                buf = io.BytesIO()
                Image.fromarray(img[..., 0] if shape[-1] == 1 else img).save(buf, format="PNG")
                yield i, {"image": buf.getvalue(), "label": i % 10}

    builder = LocalMnist(data_dir=str(data_dir), file_format="array_record")
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    return made


@pytest.fixture(scope="module")
def local_mnist(tmp_path_factory):
    tfds = _tfds()
    pytest.importorskip("PIL")
    data_dir = tmp_path_factory.mktemp("tfds_real")
    made = _prepare_local(tfds, data_dir, (28, 28, 1))
    return str(data_dir), made


def _sorted_bytes(images):
    return sorted(np.asarray(im).tobytes() for im in images)


@pytest.mark.parametrize("chunk", [4096, 7])  # one batch read, and several (7 < 20 records)
def test_real_array_record_roundtrip(local_mnist, monkeypatch, chunk):
    data_dir, made = local_mnist
    monkeypatch.setattr(tfds_source, "_READ_CHUNK", chunk)
    assert is_prepared("mnist", data_dir)
    out = load_tfds("mnist", data_dir=data_dir)
    for split, n in (("train", 20), ("test", 8)):
        x, y = out[split]
        assert x.shape == (n, 28, 28, 1) and x.dtype == np.uint8
        assert y.shape == (n,) and y.dtype == np.int32
        # tfds shuffles record order: compare contents as multisets, and image<->label pairs.
        assert _sorted_bytes(x) == _sorted_bytes(im for im, _ in made[split])
        assert sorted(zip((im.tobytes() for im in x), y.tolist())) == sorted(
            (im.tobytes(), lab) for im, lab in made[split])
    assert "tensorflow" not in sys.modules


def test_real_slice_split(local_mnist):
    data_dir, _ = local_mnist
    out = load_tfds("mnist", data_dir=data_dir, splits=("train[:5]", "test"))
    assert out["train[:5]"][0].shape == (5, 28, 28, 1)
    assert out["test"][1].shape == (8,)


def test_real_unknown_split_is_data_error(local_mnist):
    data_dir, _ = local_mnist
    with pytest.raises(DataError, match="validation"):
        load_tfds("mnist", data_dir=data_dir, splits=("validation",))


def test_real_wrong_image_shape_raises(tmp_path):
    tfds = _tfds()
    pytest.importorskip("PIL")
    _prepare_local(tfds, tmp_path, (32, 32, 3), n_train=3, n_test=2)
    assert is_prepared("mnist", str(tmp_path))
    with pytest.raises(DataError, match=r"\(28, 28, 1\)") as info:
        load_tfds("mnist", data_dir=str(tmp_path))
    assert str(tmp_path) in str(info.value)
    # tfds reuses a prepared version's folder ("Reusing dataset"): only --overwrite rebuilds it.
    assert "--file_format=array_record --overwrite`" in str(info.value)


def test_real_other_version_only_is_data_error(tmp_path):
    tfds = _tfds()
    pytest.importorskip("PIL")
    _prepare_local(tfds, tmp_path, (28, 28, 1), n_train=3, n_test=2, version="1.0.0")
    assert is_prepared("mnist", str(tmp_path))  # any version counts for the cheap check
    t0 = time.perf_counter()
    with pytest.raises(DataError, match=r"1\.0\.0") as info:
        load_tfds("mnist", data_dir=str(tmp_path))
    assert time.perf_counter() - t0 < 5.0  # download=False: no network retries
    assert "array_record" in str(info.value)


@pytest.mark.parametrize("content", ["{}", "not json"])
def test_corrupt_dataset_info_is_data_error(tmp_path, content):
    _tfds()
    (tmp_path / "mnist" / "3.0.1").mkdir(parents=True)
    (tmp_path / "mnist" / "3.0.1" / "dataset_info.json").write_text(content)
    t0 = time.perf_counter()
    with pytest.raises(DataError, match=str(tmp_path)):
        load_tfds("mnist", data_dir=str(tmp_path))
    assert time.perf_counter() - t0 < 5.0


def test_missing_shard_is_data_error(tmp_path):
    tfds = _tfds()
    pytest.importorskip("PIL")
    _prepare_local(tfds, tmp_path, (28, 28, 1), n_train=3, n_test=2)
    version_dir = tmp_path / "mnist" / "3.0.1"
    for f in os.listdir(version_dir):
        if "train.array_record" in f:
            os.remove(version_dir / f)
    with pytest.raises(DataError, match="train.*re-prepare with `.* --overwrite`"):
        load_tfds("mnist", data_dir=str(tmp_path))
