"""Safe loading: reading a checkpoint, a params file, a hypernetwork or a corpus never executes
code. Crafted files (a pickle whose unpickling would create a marker directory, and a ``.npy``
with ``object`` dtype carrying that pickle) are put exactly where the loaders expect their files;
every load must fail with a :class:`CheckpointError` and the marker must never appear.

A static check backs this up: no module of the package imports pickle-like loaders, and every
``np.load`` passes ``allow_pickle=False``.
"""

from __future__ import annotations

import json
import os
import pickle
import re
from pathlib import Path

import jax
import numpy as np
import pytest

from hyperforget_jax import models, train
from hyperforget_jax.checkpoint import Checkpointer, load_params, save_params
from hyperforget_jax.errors import CheckpointError

PKG = Path(__file__).resolve().parents[1] / "hyperforget_jax"


class _Payload:
    """Unpickling this calls ``os.makedirs(marker)``: arbitrary code execution in miniature."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.makedirs, (self.marker,))


@pytest.fixture
def payload(tmp_path):
    marker = tmp_path / "PWNED"
    raw = pickle.dumps(_Payload(str(marker)))
    # Positive control: the payload is live when unpickled.
    pickle.loads(raw)
    assert marker.is_dir()
    marker.rmdir()
    obj_npy = tmp_path / "object.npy"
    np.save(obj_npy, np.array([_Payload(str(marker))], dtype=object), allow_pickle=True)
    return marker, raw, obj_npy.read_bytes()


def _plant(root: Path, raw: bytes, pattern: str = "*") -> int:
    """Overwrites every file under ``root`` matching ``pattern`` with ``raw``."""
    n = 0
    for f in root.rglob(pattern):
        if f.is_file():
            f.write_bytes(raw)
            n += 1
    assert n > 0
    return n


@pytest.fixture(scope="module")
def arch():
    return models.make_architecture("gpt_mlp", (8, 8, 1))


@pytest.mark.parametrize("which", ["pickle", "object_npy"])
def test_params_checkpoint_never_unpickles(arch, payload, tmp_path, which):
    marker, raw, obj = payload
    blob = raw if which == "pickle" else obj
    params = arch.init(jax.random.key(0))
    path = tmp_path / "params"
    save_params(path, params, {"arch": "gpt_mlp"})
    _plant(path, blob)
    for template in (params, None):
        with pytest.raises(CheckpointError):
            load_params(path, template)
    assert not marker.exists()


@pytest.mark.parametrize("which", ["pickle", "object_npy"])
def test_run_checkpoint_never_unpickles(arch, payload, tmp_path, which):
    from hyperforget_jax.commands import common

    marker, raw, obj = payload
    blob = raw if which == "pickle" else obj
    cfg = train.TrainConfig(arch="gpt_mlp", epochs=1)
    state = train.init_state(arch, train.make_optimizer(cfg), jax.random.key(0))
    run = tmp_path / "run"
    meta = {"architecture": arch.to_json(), "train_config": cfg.to_json()}
    with Checkpointer(run / "checkpoints") as ck:
        ck.save(1, state, meta)
        ck.save(2, state, meta)
    # step 2: every file replaced; step 1: only the metadata (JSON) files.
    _plant(run / "checkpoints" / "2", blob)
    _plant(run / "checkpoints" / "1", blob, "*metadata*")
    with Checkpointer(run / "checkpoints") as ck:
        for step in (1, 2):
            with pytest.raises(CheckpointError):
                ck.restore(state, step=step)
            with pytest.raises(CheckpointError):
                ck.restore_meta(step=step)
    with pytest.raises(CheckpointError):
        common.load_run(run)
    assert not marker.exists()


def _fake_corpus(path: Path, arch) -> None:
    """A minimal valid corpus (one shard: one original, two checkpoints) in the format."""
    from hyperforget_jax.hyperforget import corpus as C

    shard = path / "shard_00000"
    shard.mkdir(parents=True)
    k6 = len(C.metric_columns(10))
    arrays = {"originals": np.zeros((1, arch.param_count), np.float32),
              "original_metrics": np.zeros((1, k6), np.float32),
              "trajectory": np.zeros((2, 110), np.float32),
              "rows": np.array([[0, 0, 1], [0, 0, 5]], np.int32),
              "metrics": np.zeros((2, k6), np.float32)}
    for name, a in arrays.items():
        np.save(shard / f"{name}.npy", a, allow_pickle=False)
    index = {"format": C.FORMAT, "config": {"first_seed": 0, "num_seeds": 1, "fleet_size": 1},
             "architecture": arch.to_json(),
             "requests": [[0]], "trained_tensors": [2, 3],
             "class_counts": {s: [1] * 10 for s in ("train", "val", "test")},
             "test_seeds": [], "shards": {"00000": {"dir": "shard_00000", "done": True,
                                                    "seeds": [0], "rows": 2}}}
    (path / "index.json").write_text(json.dumps(index))


@pytest.mark.parametrize("which", ["pickle", "object_npy"])
@pytest.mark.parametrize("target", ["originals.npy", "trajectory.npy", "rows.npy",
                                    "metrics.npy"])
def test_corpus_never_unpickles(arch, payload, tmp_path, which, target):
    from hyperforget_jax.hyperforget.corpus import Corpus

    marker, raw, obj = payload
    path = tmp_path / "corpus"
    _fake_corpus(path, arch)
    assert len(Corpus(path)) == 2  # positive control: the fake corpus is valid
    (path / "shard_00000" / target).write_bytes(raw if which == "pickle" else obj)
    with pytest.raises(CheckpointError, match="unreadable|truncated"):
        Corpus(path)
    assert not marker.exists()


def test_corpus_index_pickle_is_rejected(arch, payload, tmp_path):
    from hyperforget_jax.hyperforget.corpus import Corpus

    marker, raw, _ = payload
    path = tmp_path / "corpus"
    _fake_corpus(path, arch)
    (path / "index.json").write_bytes(raw)
    with pytest.raises(CheckpointError, match="corrupt"):
        Corpus(path)
    assert not marker.exists()


@pytest.mark.parametrize("which", ["pickle", "object_npy", "object_member"])
def test_hypernet_loading_never_unpickles(arch, payload, tmp_path, which):
    import io
    import zipfile

    from hyperforget_jax.hyperforget import dihyfo

    marker, raw, obj = payload
    path = tmp_path / "hypernet.npz"
    if which == "object_member":      # a valid .npz whose one member is an object array
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as z:
            z.writestr("__meta__.npy", obj)
        path.write_bytes(buf.getvalue())
    else:
        path.write_bytes(raw if which == "pickle" else obj)
    with pytest.raises(CheckpointError):
        dihyfo.load_hypernet(path)
    assert not marker.exists()


def test_hypernet_zip_bomb_is_refused_before_it_is_unpacked(tmp_path):
    """The shipped hypernetwork plus a deflated member that unpacks to 64 MiB (a 64 KiB
    addition): unpacked in full, then refused as "unexpected arrays". Refused from the sizes the
    archive declares; the shipped file itself still loads (it is stored uncompressed)."""
    import io
    import zipfile

    from hyperforget_jax import pretrained as PT
    from hyperforget_jax.hyperforget import store

    raw = (Path(PT.__file__).parent / PT.PRETRAINED[PT.DEFAULT]["file"]).read_bytes()
    store.from_bytes(raw, "shipped")
    buf = io.BytesIO(raw)
    with zipfile.ZipFile(buf, "a", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("bomb.npy", bytes(64 << 20))
    with pytest.raises(CheckpointError, match=r"unpacks to \d+ bytes from \d+: a compressed"):
        store.from_bytes(buf.getvalue(), "bomb.npz")


_FORBIDDEN = re.compile(r"^\s*(import|from)\s+(pickle|cPickle|dill|cloudpickle|joblib|shelve|"
                        r"marshal)\b|torch\.load|allow_pickle\s*=\s*True|(?<!\.)\beval\(|"
                        r"(?<!\.)\bexec\(",
                        re.M)


def test_package_has_no_code_executing_loader():
    offenders = []
    for f in sorted(PKG.rglob("*.py")):
        text = f.read_text()
        offenders += [f"{f.relative_to(PKG)}: {m.group(0).strip()}"
                      for m in _FORBIDDEN.finditer(text)]
        for call in re.finditer(r"np\.load\(([^)]*)\)", text):
            if "allow_pickle=False" not in call.group(1):
                offenders.append(f"{f.relative_to(PKG)}: np.load({call.group(1)})")
    assert offenders == []
