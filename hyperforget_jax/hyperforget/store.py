"""Saving and loading hypernetworks, and the pretrained one shipped with the package.

One file per hypernetwork, no pickle: an ``.npz`` of float arrays named by their path in the
parameter tree, plus ``__meta__``, the JSON meta (spec, history) as UTF-8 bytes. Read back with
``np.load(..., allow_pickle=False)``; every array is checked against the shapes the spec implies.

The pretrained DiHyFo-2 (``load_hypernet("pretrained")``, ``hyperforget sample --hypernet
pretrained``) lives in ``hyperforget_jax/pretrained/`` and its SHA-256 is recorded in
:data:`hyperforget_jax.pretrained.PRETRAINED`; a file whose hash differs (corrupted, truncated,
replaced) is refused before anything in it is parsed.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import zipfile
from pathlib import Path
import jax
import numpy as np

from hyperforget_jax import report
from hyperforget_jax.config import expand_user
from hyperforget_jax.errors import CheckpointError, ConfigError, NonFiniteError
from hyperforget_jax.hyperforget import denoiser as DN
from hyperforget_jax.hyperforget.spec import Hypernet, HyperSpec
from hyperforget_jax.rundir import array_fingerprint

FILE_NAME = "hypernet.npz"
FORMAT = "hyperforget-hypernet/2"
_META = "__meta__"


def _leaf_name(path) -> str:
    return "/".join(str(getattr(k, "key", k)) for k in path)


def to_bytes(net: Hypernet, extra_meta: dict | None = None) -> bytes:
    """The ``.npz`` bytes of ``net`` (what :func:`save_hypernet` writes)."""
    leaves = jax.tree_util.tree_leaves_with_path(net.params)
    arrays = {_leaf_name(p): np.asarray(v, np.float32) for p, v in leaves}
    if not all(np.isfinite(a).all() for a in arrays.values()):
        raise NonFiniteError("the hypernetwork's parameters contain NaN/inf; nothing written")
    # The record's own keys may not be given other values: they replaced it (a spec or a
    # dataset that loaded as the file's, and sampled another network). The digests and
    # p_uncond are written after extra_meta (computed here), whatever it holds.
    record = {"format": FORMAT, "hypernet": net.spec.to_json(), **(net.built_on or {})}
    clash = sorted(k for k in (extra_meta or {}) if k in record
                   and json.dumps(extra_meta[k], sort_keys=True, default=str)
                   != json.dumps(record[k], sort_keys=True, default=str))
    if clash:
        raise ConfigError(f"extra_meta may not set {clash}: the hypernetwork's own record; "
                          "name your keys otherwise")
    meta = {"format": FORMAT, "hypernet": net.spec.to_json(), **(net.built_on or {}),
            **(extra_meta or {}), "arrays_digest": _arrays_digest(arrays)}
    if net.p_uncond is not None:
        meta["p_uncond"] = net.p_uncond
    try:
        meta["meta_digest"] = _meta_digest(json.loads(json.dumps(meta, default=float)))
        blob = json.dumps(meta, default=float).encode()
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"hypernetwork meta is not JSON-serialisable ({e})") from e
    arrays[_META] = np.frombuffer(blob, np.uint8)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _arrays_digest(arrays: dict) -> str:
    """A hash of the parameter arrays in name order (float32): a file edited into another
    valid ``.npz`` (values rescaled, zeroed) no longer matches its meta."""
    return array_fingerprint(*(np.asarray(arrays[k], np.float32) for k in sorted(arrays)))


def _meta_digest(meta: dict) -> str:
    """A hash of the meta as JSON (its own digest left out): the spec's scales and condition
    statistics, its class and ``p_uncond`` live there, and an edit of them (a change scale
    ×10, another forget class) loaded and sampled without a word."""
    body = {k: v for k, v in meta.items() if k != "meta_digest"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:32]


def save_hypernet(path: str | os.PathLike, net: Hypernet, extra_meta: dict | None = None
                  ) -> Path:
    """Writes ``net`` atomically to ``path`` (a ``.npz`` file, or a directory that receives
    ``hypernet.npz``). Returns the file written."""
    path = expand_user(path).absolute()
    if path.suffix != ".npz":
        report.prepare_dir(path, flag="--out")
        path = path / FILE_NAME
    else:
        report.prepare_dir(path.parent, flag="--out")
    report.atomic_write(path, to_bytes(net, extra_meta))
    return path


#: Where a directory holds its hypernetwork: ``save_hypernet``'s file, or a ``hypertrain`` --out's.
_FILES_IN_DIR = (FILE_NAME, f"hypernet/{FILE_NAME}")


def _resolve(path) -> Path:
    p = expand_user(path)
    if p.is_dir():
        for name in _FILES_IN_DIR:
            if (p / name).is_file():
                return p / name
        if (p / "train_state").is_dir():
            # The --out of a `hypertrain` that was interrupted: "pass the --out of hypertrain"
            # told its user to do what they had done.
            raise CheckpointError(f"{p} is a `hyperforget hypertrain` run that has not "
                                  f"finished (train_state/ but no {FILE_NAME}); rerun the same "
                                  "hypertrain command to finish it (it resumes)")
        raise CheckpointError(f"{p} is not a hypernetwork: it holds no {FILE_NAME}; pass the "
                              "--out of `hyperforget hypertrain`, a .npz file, or 'pretrained'")
    if not p.is_file():
        raise CheckpointError(f"no hypernetwork at {p}; pass the --out of `hyperforget "
                              "hypertrain`, a .npz file, or 'pretrained'")
    return p


def from_bytes(raw: bytes, where: str) -> tuple[Hypernet, dict]:
    """Parses :func:`to_bytes`' output; ``where`` names the source in errors."""
    if not raw.startswith(b"PK"):
        # np.load takes any bytes that are not a zip or .npy for a pickle, so a text file
        # was refused as "pickled (object) data".
        raise CheckpointError(f"{where} is not a readable hypernetwork file (not an .npz "
                              "archive); pass the --out of `hyperforget hypertrain`, its "
                              "hypernet.npz, or 'pretrained'")
    # The sizes the archive declares, before anything is unpacked: to_bytes stores its arrays
    # uncompressed, so together they never exceed the file. A deflated member (a 3 MB file
    # that unpacks to 400 MB, a zip bomb) was unpacked in full before any check refused it.
    try:
        with zipfile.ZipFile(io.BytesIO(raw)) as zf:
            unpacked = sum(i.file_size for i in zf.infolist())
    except (zipfile.BadZipFile, ValueError, OSError) as e:
        raise CheckpointError(f"{where} is not a readable hypernetwork file ({e}); retrain it "
                              "or reinstall the package for the pretrained one") from e
    if unpacked > len(raw):
        raise CheckpointError(f"{where} unpacks to {unpacked} bytes from {len(raw)}: a "
                              "compressed or crafted archive, not one save_hypernet wrote "
                              "(it stores arrays uncompressed); re-save it with "
                              "hf.save_hypernet, or retrain it")
    buf = io.BytesIO(raw)
    try:
        with np.load(buf, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as e:  # noqa: BLE001 — zip/npy/pickle refusals all mean "unreadable"
        raise CheckpointError(f"{where} is not a readable hypernetwork file ({e}); retrain it "
                              "or reinstall the package for the pretrained one") from e
    if _META not in arrays:
        raise CheckpointError(f"{where} is an .npz file but not a hypernetwork (no meta); pass "
                              "the --out of `hyperforget hypertrain`")
    try:
        meta = json.loads(arrays.pop(_META).tobytes().decode())
        if meta.get("format") != FORMAT:
            raise CheckpointError(f"{where} is a {meta.get('format')!r} file, not {FORMAT}; "
                                  "retrain it with this version")
        if "meta_digest" in meta and _meta_digest(meta) != meta["meta_digest"]:
            # (files written before the digest have none)
            raise CheckpointError(f"{where}: the hypernetwork meta does not match its digest "
                                  "(edited or corrupted); retrain or re-save it")
        spec = HyperSpec.from_json(meta["hypernet"])
    except CheckpointError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{where}: the hypernetwork meta is damaged ({e}); retrain it") \
            from e
    shapes = DN.param_shapes(spec.model())
    leaves, treedef = jax.tree_util.tree_flatten_with_path(shapes)
    out = []
    for p, s in leaves:
        name = _leaf_name(p)
        a = arrays.pop(name, None)
        if a is None or a.shape != s.shape or a.dtype.kind != "f":
            got = "missing" if a is None else f"{a.dtype} {a.shape}"
            raise CheckpointError(f"{where}: array {name} is {got}, expected {s.shape}; the "
                                  "file is damaged or from another version")
        if not np.isfinite(a).all():
            raise CheckpointError(f"{where}: array {name} holds NaN/inf; the file is damaged")
        out.append(a.astype(np.float32))
    if arrays:
        raise CheckpointError(f"{where}: unexpected arrays {sorted(arrays)[:3]}; the file is "
                              "from another version")
    want = meta.get("arrays_digest")       # files written before the digest have none
    if want is not None and _arrays_digest(
            {_leaf_name(p): a for (p, _), a in zip(leaves, out)}) != want:
        raise CheckpointError(f"{where}: the parameter arrays do not match the digest in the "
                              "file's meta (edited or corrupted); retrain or re-save it")
    built_on = {k: meta[k] for k in ("dataset", "split_seed", "identity") if k in meta}
    return Hypernet(spec, jax.tree_util.tree_unflatten(treedef, out), _p_uncond(meta),
                    built_on), meta


def _p_uncond(meta: dict) -> float | None:
    """The classifier-free dropout the file's network was trained with: its own record, or
    the ``hypertrain`` history's (files written before the record); None when neither says."""
    history = meta.get("history")
    trained = history.get("train_config") if isinstance(history, dict) else None
    for v in (meta.get("p_uncond"), trained.get("p_uncond") if isinstance(trained, dict)
              else None):
        if isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 1:
            return float(v)
    return None


def load_hypernet(path: str | os.PathLike = "pretrained") -> tuple[Hypernet, dict]:
    """Loads a hypernetwork: ``"pretrained"`` (or ``"pretrained:NAME"``) for one shipped with
    the package (hash-checked), a ``.npz`` file, or the ``--out`` of ``hyperforget hypertrain``.

    Returns:
      (net, meta).

    Raises:
      CheckpointError: missing, unreadable, damaged, or (pretrained) a hash mismatch.
      ConfigError: ``"pretrained"`` while ./pretrained is a hypernetwork too.
    """
    if is_pretrained_name(path):
        _refuse_a_local_namesake(path)
        return load_pretrained(str(path).partition(":")[2] or None)
    p = _resolve(path)
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise CheckpointError(f"cannot read {p} ({e.strerror})") from e
    return from_bytes(raw, str(p))


def _refuse_a_local_namesake(name: str) -> None:
    """``hypertrain --out pretrained`` then ``sample --hypernet pretrained`` sampled the shipped
    network, not the one just trained in ./pretrained: the bare name is refused while it also
    names a hypernetwork in the current directory (either unambiguous spelling works). A file
    named ``pretrained`` counts only as an .npz archive (``from_bytes``' test): a script or a
    note of that name in the working directory is no hypernetwork."""
    from hyperforget_jax import pretrained as PT

    local = Path(name)
    marks = (*_FILES_IN_DIR, "train_state")     # what _resolve reads, or calls unfinished
    if name == "pretrained" and (_is_zip(local) or (local.is_dir() and any(
            (local / m).exists() for m in marks))):
        raise ConfigError(f"'pretrained' names both the hypernetwork shipped with the package "
                          f"and {local.absolute()}; pass ./pretrained for the latter or "
                          f"pretrained:{PT.DEFAULT} for the shipped one")


def _is_zip(path: Path) -> bool:
    if not path.is_file():      # never opens a FIFO or a device
        return False
    try:
        with open(path, "rb") as f:
            return f.read(2) == b"PK"
    except OSError:             # unreadable
        return False


def is_pretrained_name(path) -> bool:
    """``"pretrained"`` or ``"pretrained:NAME"``: a network shipped with the package."""
    return isinstance(path, str) and (path == "pretrained" or path.startswith("pretrained:"))


def sha256(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


def load_pretrained(name: str | None = None) -> tuple[Hypernet, dict]:
    """A hypernetwork shipped in ``hyperforget_jax/pretrained`` (default: DiHyFo-2 for
    ``gpt_mlp`` on MNIST-5k), verified against the SHA-256 recorded in the package."""
    from hyperforget_jax import pretrained as PT

    name = name or PT.DEFAULT
    if name not in PT.PRETRAINED:
        raise ConfigError(f"no pretrained hypernetwork {name!r}; available: "
                          f"{', '.join(sorted(PT.PRETRAINED))}")
    entry = PT.PRETRAINED[name]
    f = Path(PT.__file__).parent / entry["file"]
    try:
        raw = f.read_bytes()
    except OSError as e:
        raise CheckpointError(f"the pretrained hypernetwork {f} is missing ({e.strerror}); "
                              "reinstall hyperforget_jax") from e
    got = sha256(raw)
    if got != entry["sha256"]:
        raise CheckpointError(f"the pretrained hypernetwork {f} is corrupt or was replaced "
                              f"(SHA-256 {got[:12]}…, expected {entry['sha256'][:12]}…); "
                              "reinstall hyperforget_jax (or, if experiments/build_pretrained.py "
                              "was interrupted while installing, rerun it)")
    net, meta = from_bytes(raw, str(f))
    net.built_on = {**PT.BUILT_ON, **(net.built_on or {})}     # kept when saved again
    return net, {**PT.BUILT_ON, **meta, "pretrained_name": name, "sha256": got}
