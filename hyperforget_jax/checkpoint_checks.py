"""What may go into a checkpoint and whether a stored tree fits a template: the checks
:mod:`hyperforget_jax.checkpoint` runs around Orbax, which would otherwise fail mid-write,
silently cast dtypes, or report a mismatch as a raw tensorstore error.

Leaves are named as Orbax names them (``opt_state.0.mu.params.Dense_0.kernel``), so a
NamedTuple field and the dict key Orbax stores it under compare equal.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from hyperforget_jax.errors import CheckpointError, NonFiniteError

PyTree = Any

def named_leaves(tree: PyTree) -> list[tuple[str, Any]]:
    # Orbax's own leaf naming ("opt_state.0.mu.params.Dense_0.kernel"): a NamedTuple field and
    # the dict key Orbax stores it under get the same name, so template and on-disk metadata
    # compare leaf by leaf.
    def name(k: Any) -> str:
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                return str(getattr(k, attr))
        return str(k)

    leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
    return [(".".join(name(k) for k in path) or "<root>", leaf) for path, leaf in leaves]


def shape_dtype(leaf: Any) -> tuple[tuple | None, np.dtype | None]:
    shape = getattr(leaf, "shape", () if isinstance(leaf, (int, float, np.generic)) else None)
    try:
        dtype = np.dtype(leaf.dtype) if hasattr(leaf, "dtype") else None
    except TypeError:
        dtype = None
    return (tuple(shape) if shape is not None else None), dtype


def _all_finite(leaf) -> bool:
    # On the host (NumPy) where the process holds the whole leaf: it is read there to be
    # written anyway, and an op-by-op jnp check compiles two programs per leaf shape.
    if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
        return bool(jnp.all(jnp.isfinite(leaf)))
    return bool(np.isfinite(np.asarray(leaf)).all())


def first_non_finite(tree: PyTree) -> str | None:
    """Path of the first float leaf containing NaN or inf, or None."""
    for name, leaf in named_leaves(tree):
        if isinstance(leaf, float):
            if not math.isfinite(leaf):
                return name
        elif (isinstance(leaf, (jax.Array, np.ndarray, np.generic))
              and jnp.issubdtype(leaf.dtype, jnp.inexact)
              and not _all_finite(leaf)):
            return name
    return None


@contextlib.contextmanager
def naming_non_finite_start(fn: str, params: PyTree | None, name: str = "init_params"):
    """A run that stops on NaN/inf names its starting parameters when they hold it (checked
    only then: finite ones cost nothing), instead of blaming the data or the learning rate."""
    try:
        yield
    except NonFiniteError:
        bad = None if params is None else first_non_finite(params)
        if bad is None:
            raise
        raise NonFiniteError(f"{fn}: {name} hold NaN/inf (at {bad}); pass finite starting "
                             "parameters (a trained model's)") from None


def check_savable(state: PyTree, what: str) -> None:
    # Orbax would fail on these only mid-write, leaving a tmp directory behind.
    for name, leaf in named_leaves(state):
        if isinstance(leaf, int) and not isinstance(leaf, bool) \
                and not -2 ** 63 <= leaf < 2 ** 64:
            # NumPy reads it as an object array, which orbax failed on mid-write ("Unsupported
            # data type", blamed on the disk), leaving a tmp directory behind.
            raise CheckpointError(
                f"cannot save {what}: leaf {name!r} is a Python int of {leaf.bit_length()} "
                "bits, past the 64-bit integers a checkpoint holds; nothing was written. Put "
                "it in meta (JSON holds any int), or save it as a float or as smaller ints")
        if isinstance(leaf, (bool, int, float)):
            continue
        # ml_dtypes (bfloat16, float8) report NumPy kind "V".
        if isinstance(leaf, (jax.Array, np.ndarray, np.generic)) and leaf.dtype.kind in "biufcV":
            continue
        kind = "abstract (no values)" if isinstance(leaf, jax.ShapeDtypeStruct) else "not an array"
        raise CheckpointError(
            f"cannot save {what}: leaf {name!r} is a {type(leaf).__name__}, {kind}; checkpoints "
            "hold numeric arrays and scalars only (put strings and other values in meta)")
    bad = first_non_finite(state)
    if bad is not None:
        raise NonFiniteError(
            f"refusing to save {what}: leaf {bad!r} contains NaN/inf; nothing was written. "
            "Lower the learning rate / enable gradient clipping and resume from the last "
            "finite checkpoint")


def at_jax_width(state: PyTree, what: str | None) -> PyTree:
    """``state`` with its NumPy / Python 64-bit leaves stored as JAX without ``jax_enable_x64``
    reads them (int32, float32, ...), x64 being off: a ``{"epoch": 3}`` or a NumPy int64 array
    was written as int64, which :func:`check_readable_width` then refused to read back in the
    very setting that wrote it. An int that int32 cannot hold is refused (reading it back
    would wrap it), and so is a finite float that float32 cannot hold (it would be written as
    inf, which :func:`check_savable` had passed). Under x64 (or for jax.Arrays, never 64-bit
    without it) nothing changes.
    ``what``: the save, for the error; None for a restore template (its values are unused).

    Raises:
      CheckpointError: an integer or float leaf out of the 32-bit range.
    """
    if jax.config.jax_enable_x64:
        return state

    def narrow(name, leaf):
        if isinstance(leaf, bool) or not isinstance(leaf, (int, float, np.ndarray, np.generic)):
            return leaf
        a = np.asarray(leaf)
        want = jax.dtypes.canonicalize_dtype(a.dtype)
        if want == a.dtype:
            return leaf
        with np.errstate(over="ignore", invalid="ignore"):
            out = a.astype(want)
        if a.dtype.kind in "iu":
            fits = not a.size or (np.iinfo(want).min <= a.min() and a.max() <= np.iinfo(want).max)
        else:   # a finite float64 past float32's range became inf, written unchecked
            fits = bool(np.all(np.isfinite(out) | ~np.isfinite(a)))
        if what is not None and not fits:
            raise CheckpointError(
                f"cannot save {what}: leaf {name!r} holds {a.dtype} values out of {want}'s "
                f"range, which JAX without x64 would read back "
                f"{'wrapped' if a.dtype.kind in 'iu' else 'as inf'}; enable "
                "jax.config.update('jax_enable_x64', True), or put the value in meta")
        return out

    names = iter(n for n, _ in named_leaves(state))
    return jax.tree.map(lambda leaf: narrow(next(names), leaf), state)


def check_readable_width(on_disk: PyTree, where: Path) -> None:
    """Raise CheckpointError for a 64-bit leaf (written under ``jax_enable_x64``) when x64 is
    off: JAX would read it as 32 bits without a word, whatever the template says."""
    if jax.config.jax_enable_x64:
        return
    for name, leaf in named_leaves(on_disk):
        dtype = shape_dtype(leaf)[1]
        if dtype is not None and dtype != jax.dtypes.canonicalize_dtype(dtype):
            raise CheckpointError(
                f"checkpoint {where} holds {dtype} leaf {name!r} (written with jax_enable_x64, "
                "or a NumPy / Python 64-bit value by a version before 2026-12-06), "
                f"which JAX without x64 would read as "
                f"{jax.dtypes.canonicalize_dtype(dtype)}; read it with "
                "jax.config.update('jax_enable_x64', True) (or JAX_ENABLE_X64=1)")


def check_template(template: PyTree, on_disk: PyTree, where: Path) -> None:
    """Raise CheckpointError at the first leaf where ``template`` and the stored tree differ."""
    check_readable_width(on_disk, where)
    fix = ("restore with a template built from the same architecture/optimizer config the "
           "checkpoint was written with (see its meta), or use a fresh --run-dir")
    prefix = f"checkpoint {where} was written for another architecture: "
    stored = dict(named_leaves(on_disk))
    wanted = named_leaves(template)
    for name, leaf in wanted:
        if name not in stored:
            raise CheckpointError(f"{prefix}leaf {name!r} of the template is not in the "
                                  f"checkpoint; {fix}")
        (ws, wd), (hs, hd) = shape_dtype(leaf), shape_dtype(stored[name])
        if ws is not None and hs is not None and ws != hs:
            raise CheckpointError(f"{prefix}leaf {name!r} has shape {hs} in the checkpoint but "
                                  f"{ws} in the template; {fix}")
        # Orbax would cast on restore, so a float32 checkpoint would load into a bfloat16
        # template without complaint.
        if wd is not None and hd is not None and hasattr(leaf, "dtype") and wd != hd:
            raise CheckpointError(f"{prefix}leaf {name!r} has dtype {hd} in the checkpoint but "
                                  f"{wd} in the template; {fix}")
    extra = [n for n in stored if n not in {n for n, _ in wanted}]
    if extra:
        raise CheckpointError(f"{prefix}leaf {extra[0]!r} of the checkpoint is not in the "
                              f"template ({len(extra)} extra leaves); {fix}")


def rebuild_like(template: PyTree, restored: PyTree, where: Path) -> PyTree:
    """Restored leaves in the template's exact treedef (NamedTuples, custom nodes)."""
    by_name = dict(named_leaves(restored))
    names = [n for n, _ in named_leaves(template)]
    missing = [n for n in names if n not in by_name]
    if missing:
        raise CheckpointError(f"checkpoint {where} restored without leaf {missing[0]!r}; it is "
                              "corrupt or from another architecture: restore an earlier step or "
                              "retrain")
    restored = jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(template),
                                            [by_name[n] for n in names])
    # save() never writes NaN/inf, so any found on load means the bytes were damaged.
    bad = first_non_finite(restored)
    if bad is not None:
        raise CheckpointError(f"checkpoint {where} is corrupt: leaf {bad!r} contains NaN/inf, "
                              "which save() never writes; delete that directory and restore an "
                              "earlier step, or retrain")
    return restored


def jsonable_meta(meta: dict | None, where: Path) -> dict:
    """``meta`` exactly as a JSON round trip returns it (or CheckpointError)."""
    if meta is None:
        return {}
    if not isinstance(meta, dict):
        raise CheckpointError(f"meta for {where} must be a dict, got {type(meta).__name__}; "
                              "pass a dict of JSON-serialisable values")

    def default(obj: Any) -> Any:
        if isinstance(obj, (np.generic, np.ndarray, jax.Array)):
            return np.asarray(obj).tolist()
        if isinstance(obj, (set, frozenset)):
            return sorted(obj)
        if isinstance(obj, os.PathLike):
            return os.fspath(obj)
        raise TypeError(f"{type(obj).__name__} is not JSON-serialisable")

    try:
        return json.loads(json.dumps(meta, default=default))
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"meta for {where} is not JSON-serialisable ({e}); convert it to "
                              "str/int/float/bool/list/dict (e.g. dataclasses.asdict(config))"
                              ) from e


def model_identity(model_json: dict) -> dict:
    """The fields of a model's ``to_json()`` that name it (its name, and its import path when
    it has one): what a checkpoint of another model differs in when its parameter tree is the
    same (the restore template compares names, shapes and dtypes only)."""
    return {k: model_json[k] for k in ("name", "source") if model_json.get(k) is not None}


def refuse_another_model(where: Path, stored: Any, model_json: dict, what: str) -> None:
    """CheckpointError when the checkpoint's stored model record (``stored``: a
    ``to_json()``; none in checkpoints written before it) names another model than
    ``model_json``. A module edited under the same name is not seen."""
    if not isinstance(stored, dict):
        return
    was, now = model_identity(stored), model_identity(model_json)
    if was and was != now:
        raise CheckpointError(f"{where} holds {what} trained as {_model_words(was)}, not "
                              f"{_model_words(now)} (parameters of the same shapes, another "
                              "model); use another checkpoint directory, or the model it was "
                              "trained with")


def _model_words(ident: dict) -> str:
    return repr(ident.get("source") or ident.get("name"))


def refuse_another_run(where: Path, stored: dict, config: dict, data_id: str | None,
                       start: int, epochs: int, *, config_key: str, data_key: str,
                       what: str, config_name: str, init_id: str | None = None) -> None:
    """Raises :class:`CheckpointError` unless a checkpoint's meta ``stored`` (with ``start``
    epochs done) belongs to the run about to resume it: the same recipe ``config`` (a
    ``to_json()``; more ``epochs`` may resume), the same ``data_id``, the same starting
    parameters ``init_id`` (stored as ``init_params``; None: a fresh initialisation) and no
    more epochs done than asked for. Fields a run stored before they existed are not compared,
    so older checkpoints still resume. ``what`` names the model ("a model", "a GAN")."""
    now = json.loads(json.dumps(config))           # tuples compare equal to stored lists
    was = stored.get(config_key) or {}
    differ = [k for k in was if k != "epochs" and k in now and was[k] != now[k]]
    if differ:
        raise CheckpointError(f"{where} holds {what} trained with another recipe (its "
                              f"{differ[0]} is {was[differ[0]]!r}, this config's "
                              f"{now[differ[0]]!r}); use another checkpoint directory or the "
                              f"same {config_name}")
    if stored.get(data_key, data_id) != data_id:
        raise CheckpointError(f"{where} holds {what} trained on other data; use another "
                              "checkpoint directory or the same training set")
    if stored.get("init_params", init_id) != init_id:
        raise CheckpointError(f"{where} holds {what} trained from other init_params; use "
                              "another checkpoint directory or the same init_params")
    if start > epochs:
        raise CheckpointError(f"{where} holds {what} trained for {start} epochs, more than the "
                              f"{epochs} asked for; ask for >= {start} epochs or use another "
                              "directory")


#: The process-wide JAX settings that change a run's random streams or its arithmetic: a run
#: resumed under another value continues with a mix of the two (a corpus under rbg after
#: threefry: its later shards' originals 0.62 apart from an uninterrupted build).
JAX_SETTINGS = ("jax_default_prng_impl", "jax_threefry_partitionable", "jax_enable_x64")
SETTINGS_KEY = "jax_settings"


def jax_settings() -> dict:
    """This process's :data:`JAX_SETTINGS`, as checkpoints and corpus indexes record them."""
    return {k: (str if k == "jax_default_prng_impl" else bool)(getattr(jax.config, k))
            for k in JAX_SETTINGS}


def refuse_other_jax_settings(where: Path, stored: Any, what: str) -> None:
    """CheckpointError when a run recorded ``stored`` (:func:`jax_settings` of the process that
    wrote it; None or missing in what older versions wrote: not compared) and this process
    differs in one of them: the resume would mix two random streams or precisions."""
    if not isinstance(stored, dict):
        return
    now = jax_settings()
    for k in JAX_SETTINGS:
        if k in stored and stored[k] != now[k]:
            raise CheckpointError(
                f"{where} holds {what} written under {k}={stored[k]!r}, and this process runs "
                f"under {now[k]!r}: resuming would mix two random streams or precisions; "
                f"resume it with jax.config.update({k!r}, {stored[k]!r}) (environment variable "
                f"{k.upper()}), or use another directory")
