"""One validation for every config dataclass: types from the annotations, ranges from the fields.

A config declares its fields with :func:`field` (a ``dataclasses.field`` carrying bounds) and
calls :func:`check_config` in ``__post_init__``. Every field is then checked once, the same way:

* ``int`` fields take integers only (a ``bool``, ``2.5`` or ``"3"`` is a :class:`ConfigError`,
  numpy integers are converted);
* ``float`` fields take real numbers (ints are converted to float), never NaN or ±inf, never a
  ``bool``;
* ``str`` / ``bool`` fields take exactly that type; ``X | None`` also takes None; a
  ``tuple[int, ...]`` takes a sequence of integers (converted to a tuple);
* bounds ``gt`` / ``ge`` / ``lt`` / ``le`` and ``choices`` from :func:`field`.

Messages name the config, the field, the value and the fix, e.g.
``GradTauConfig.lr must be a finite number > 0, got inf``.

>>> import dataclasses
>>> @dataclasses.dataclass(frozen=True)
... class Demo:
...     epochs: int = field(3, ge=0)
...     lr: float = field(0.1, gt=0)
...     def __post_init__(self):
...         check_config(self)
>>> Demo(lr=1).lr
1.0
>>> Demo(epochs=2.5)
Traceback (most recent call last):
...
hyperforget_jax.errors.ConfigError: Demo.epochs must be an integer, got 2.5 (float)
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import operator
import os
import pathlib
import types
import typing
from typing import Any

import numpy as np

from hyperforget_jax.errors import ConfigError

_MISSING = dataclasses.MISSING
#: Seeds are below 2**32: ``jax.random.key`` keeps a seed's low 32 bits (without x64), so
#: seed 2**32 + s would draw seed s's keys (with its own NumPy batch order).
SEED_LIMIT = 2**32
#: Config numbers run in float32 on the device: a value beyond its range is inf there.
FLOAT32_MAX = float(np.finfo(np.float32).max)


def field(default: Any = _MISSING, *, gt: float | None = None, ge: float | None = None,
          lt: float | None = None, le: float | None = None,
          choices: tuple | None = None, label: str | None = None, **kwargs) -> Any:
    """A ``dataclasses.field`` with bounds that :func:`check_config` enforces.

    Args:
      default: the default value.
      gt, ge, lt, le: strict / inclusive lower and upper bounds (numbers, or each element of a
        tuple of numbers).
      choices: the allowed values.
      label: a plain-words name used in error messages (e.g. "learning rate").
      **kwargs: passed to ``dataclasses.field``.
    """
    meta = {k: v for k, v in dict(gt=gt, ge=ge, lt=lt, le=le, choices=choices,
                                  label=label).items() if v is not None}
    return dataclasses.field(default=default, metadata={"bounds": meta}, **kwargs)


INT32_MAX = 2**31 - 1


def _bound_text(b: dict) -> str:
    parts = [f"{op} {b[k]}" for k, op in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<="))
             if k in b]
    return " and ".join(parts)


def check_number(owner: str, name: str, value: Any, kind: type, bounds: dict) -> Any:
    if isinstance(value, (bool, np.bool_)):
        raise ConfigError(f"{owner}.{name} must be {'an integer' if kind is int else 'a number'}"
                          f", got the bool {value}")
    if kind is int:
        if isinstance(value, numbers.Integral):
            value = int(value)
        else:
            raise ConfigError(f"{owner}.{name} must be an integer, got {value!r} "
                              f"({type(value).__name__})")
        if value > INT32_MAX and not any(bounds.get(k, 0) > INT32_MAX for k in ("lt", "le")):
            # Counts run as int32 on the device (and NumPy shapes): 2**31 ended in an
            # OverflowError traceback mid-run. Seeds have their own bound.
            raise ConfigError(f"{owner}.{name} must be <= {INT32_MAX} (2**31 - 1: counts run "
                              f"as int32), got {value}")
    else:
        if not isinstance(value, numbers.Real):
            raise ConfigError(f"{owner}.{name} must be a number, got {value!r} "
                              f"({type(value).__name__})")
        try:
            value = float(value)
        except OverflowError:       # an int past float64's range (10**400)
            value = math.inf if value > 0 else -math.inf
        if not math.isfinite(value) or abs(value) > FLOAT32_MAX:
            rule = _bound_text(bounds)
            beyond = "" if not math.isfinite(value) else " (beyond float32's ±3.4e38)"
            raise ConfigError(f"{owner}.{name} must be a finite number"
                              f"{' ' + rule if rule else ''}, got {value}{beyond}")
    bad = (("gt" in bounds and not value > bounds["gt"])
           or ("ge" in bounds and not value >= bounds["ge"])
           or ("lt" in bounds and not value < bounds["lt"])
           or ("le" in bounds and not value <= bounds["le"]))
    if bad:
        raise ConfigError(f"{owner}.{name} must be {_bound_text(bounds)}, got {value}")
    if kind is not int and bounds.get("gt", -1) >= 0 and value and np.float32(value) == 0:
        # lr=1e-46 passed "> 0" and ran as 0 on the device (nothing trained, no word).
        raise ConfigError(f"{owner}.{name}={value} is 0 in float32, where it runs (below "
                          "1.4e-45); pass a value float32 holds")
    return value


def _split_optional(tp) -> tuple[Any, bool]:
    """(inner type, None allowed) of ``X | None`` / ``Optional[X]``."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return (args[0] if len(args) == 1 else tp), type(None) in typing.get_args(tp)
    return tp, False


def _check_value(owner: str, name: str, value: Any, tp, bounds: dict) -> Any:
    inner, optional = _split_optional(tp)
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{owner}.{name} must be given, got None")
    if inner in (int, float):
        value = check_number(owner, name, value, inner, bounds)
    elif inner is bool:
        if not isinstance(value, (bool, np.bool_)):
            raise ConfigError(f"{owner}.{name} must be True or False, got {value!r}")
        value = bool(value)
    elif inner is str:
        if not isinstance(value, str):
            raise ConfigError(f"{owner}.{name} must be a string, got {value!r}")
    elif typing.get_origin(inner) is tuple:
        elem = (typing.get_args(inner) or (Any,))[0]
        if isinstance(value, (str, bytes)) or not isinstance(value, (tuple, list, np.ndarray)):
            raise ConfigError(f"{owner}.{name} must be a sequence, got {value!r}")
        if elem in (int, float):
            value = tuple(check_number(owner, f"{name}[{i}]", v, elem, bounds)
                          for i, v in enumerate(value))
        else:
            value = tuple(value)
    if "choices" in bounds and value not in bounds["choices"]:
        raise ConfigError(f"{owner}.{name} must be one of "
                          f"{', '.join(map(repr, bounds['choices']))}; got {value!r}")
    return value


def check_config(cfg: Any) -> None:
    """Checks (and normalises, e.g. int → float for a float field) every field of the frozen
    dataclass ``cfg`` against its annotation and :func:`field` bounds.

    Raises:
      ConfigError: the first bad field, named with its config, value and the allowed range.
    """
    owner = type(cfg).__name__
    hints = typing.get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        if not f.init:
            continue
        value = getattr(cfg, f.name)
        bounds = f.metadata.get("bounds", {})
        name = f"{f.name} ({bounds['label']})" if "label" in bounds else f.name
        new = _check_value(owner, name, value, hints.get(f.name, Any), bounds)
        if new is not value:
            object.__setattr__(cfg, f.name, new)


def refuse_unread(cfg: Any, unread: typing.Iterable[tuple[str, str, str]],
                  accepted: typing.Sequence[Any]) -> None:
    """Raises ConfigError for the first ``(name, why, fix)`` of ``unread`` (fields of ``cfg``
    that another field, the request or the model leaves unread) whose value is none of the
    ``accepted`` configs' (the defaults, or the recipes a value may be copied from): such a
    field ran as if absent, yet the run recorded it as given. ``why`` completes "it ...",
    ``fix`` what follows "; "."""
    for name, why, fix in unread:
        value = getattr(cfg, name)
        if all(value != getattr(a, name) for a in accepted):
            raise ConfigError(f"{type(cfg).__name__}.{name}={value!r} would be ignored: it "
                              f"{why}; {fix}")


def whole_number(value: Any) -> int | None:
    """``value`` as an ``int`` if it is an integer: Python, NumPy or 0-d JAX (a ``jnp`` shape's
    elements, ``y.max() + 1``), not a bool; else None (a float is not rounded)."""
    if isinstance(value, (bool, np.bool_)) or getattr(value, "dtype", None) == np.bool_:
        return None
    try:
        return operator.index(value)
    except TypeError:
        return None


def is_number(value: Any) -> bool:
    """A real number or real numeric array: Python, NumPy or JAX (not a bool, a complex, a
    string, None or a ``Fraction``, which NumPy cannot compute with)."""
    if isinstance(value, (bool, np.bool_)):
        return False
    dtype = getattr(value, "dtype", None)
    return isinstance(value, (int, float)) or (
        dtype is not None and np.issubdtype(dtype, np.number)
        and not np.issubdtype(dtype, np.complexfloating))


def is_scalar_number(value: Any) -> bool:
    """One real number (:func:`is_number`, 0-d): a Python or NumPy scalar or a 0-d array (a
    JAX mean over seeds' rows); not a bool, a string or None."""
    return is_number(value) and np.ndim(value) == 0


def check_as_config(value: Any, cls: type, field: str, who: str, name: str | None = None,
                    per_member: bool = False) -> None:
    """Refuses a concrete ``value`` (the argument ``name``, default ``field``) that config
    ``cls`` refuses for ``field`` (its bounds, :func:`check_number`'s check); traced values (the
    library's compiled steps pass them) cannot be checked. The building blocks took what their
    configs refuse: NegGrad+ at β 1.5 descended on the forget set, SCRUB and Bad Teacher at
    temperature 0 returned NaN losses, ∇τ's ``initial_alpha`` gave α₀ 1.5. ``per_member``: an
    array of values (one per member of a fleet) is fine, each checked."""
    import jax                                    # the config module itself needs no JAX

    name = name or field
    if isinstance(value, jax.core.Tracer):
        return
    if not is_number(value) or (np.shape(value) != () and not per_member):
        raise ConfigError(f"{who}: {name}={value!r} must be one number")
    bounds = next(f.metadata["bounds"] for f in dataclasses.fields(cls) if f.name == field)
    for v in np.ravel(np.asarray(value, np.float64)):
        check_number(who, name, float(v), float, bounds)


def expand_user(path: Any) -> Any:
    """``Path(path).expanduser()``, with a ConfigError for ``~user`` of no user (pathlib's
    RuntimeError "Could not determine home directory" otherwise)."""
    text = os.fspath(path)
    if isinstance(text, str) and text.startswith("~") and os.path.expanduser(text) == text:
        raise ConfigError(f"cannot expand {text.split('/')[0]!r} in {text!r}: no such user; "
                          "give the full path")
    return pathlib.Path(path).expanduser()


def check_count(value: Any, what: str, unit: str = "", error: type = ConfigError) -> int:
    """``value`` as an ``int`` if it is an integer >= 1 (a bool or a float is not), else
    ``error``: "``what`` must be an integer >= 1``unit``, got ``value``"."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise error(f"{what} must be an integer >= 1{unit}, got {value!r}")
    return int(value)


def float_fields(cfg: Any) -> tuple[str, ...]:
    """Names of the ``float`` (or ``float | None``) fields of a config: the hyperparameters a
    sweep may trace (their values never change a compiled program's shapes)."""
    hints = typing.get_type_hints(type(cfg))
    return tuple(f.name for f in dataclasses.fields(cfg)
                 if _split_optional(hints.get(f.name))[0] is float)
