"""Command-line flags generated from config dataclasses: each field once, in its dataclass.

    p = argparse.ArgumentParser()
    recipe = add_config_flags(p, TrainConfig)                  # --arch --epochs ... --seed
    args = p.parse_args()
    cfg = recipe.build(args)                                   # TrainConfig(**given flags)

    method = add_config_namespace(p, "config", {"salun": SalUnConfig, ...})   # --config.lr=0.02
    cfg = method.build(args, "salun")

Flag types come from the field's type hint (``typing.get_type_hints``), the ``--help`` text from
the class docstring's Google-style ``Attributes:`` section, the default from the field. A value
of the wrong type (``--epochs 2.5``, ``--lr nan``, ``--seed -1``) and, for the ``--config.``
namespace, a field the chosen class does not have are one clear error line (exit 2 in the CLI).
Experiments and benchmarks build their parsers with the same two functions.

Supported types: ``int`` (strict; fields named ``seed`` / ``*_seed`` must lie in
[0, 2**32)), ``float`` (finite unless the default is not), ``bool`` (``--x`` / ``--no-x``),
``str`` (``Literal[...]`` gives choices), ``X | None`` (the word ``none`` gives None),
``tuple[T, ...]`` (several values, or comma-separated in ``--config.``), anything else as JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import re
import types
import typing
from typing import Any, Callable, Collection, Mapping, Sequence

from hyperforget_jax.config import INT32_MAX
from hyperforget_jax.errors import ConfigError

__all__ = ["add_config_flags", "add_config_namespace", "field_docs", "ConfigFlags",
           "ConfigNamespace", "UNSET", "parse_value", "non_negative_int", "seed_int",
           "finite_float"]


class _Unset:
    def __repr__(self) -> str:
        return "UNSET"

    def __bool__(self) -> bool:
        return False


UNSET: Any = _Unset()  #: argparse default of a generated flag that was not given


# --------------------------------------------------------------------------- docstrings


_SECTION = re.compile(r"^\s*(Args|Arguments|Attributes|Returns|Raises|Yields|Example|Examples|"
                      r"Note|Notes|References|See Also)\s*:\s*$")


def field_docs(cls: type) -> dict[str, str]:
    """Field name → text of the Google-style ``Attributes:`` section of ``cls``'s docstring.

    An entry may document several fields at once (``lr, weight_decay: AdamW ...``); continuation
    lines are joined. Fields without an entry are absent.
    """
    doc = cls.__doc__ or ""
    lines = doc.expandtabs().splitlines()
    out: dict[str, str] = {}
    start = next((i for i, l in enumerate(lines) if l.strip() == "Attributes:"), None)
    if start is None:
        return out
    entry_indent = None
    names: list[str] = []
    text: list[str] = []

    def flush():
        for n in names:
            out[n] = " ".join(text).strip()

    for line in lines[start + 1:]:
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip())
        if _SECTION.match(line) or (entry_indent is not None and indent < entry_indent):
            break
        m = re.match(r"^\s*([A-Za-z_][\w]*(?:\s*,\s*[A-Za-z_][\w]*)*)\s*(\([^)]*\))?\s*:\s*(.*)$",
                     line)
        if entry_indent is None:
            entry_indent = indent
        if m and indent == entry_indent:
            flush()
            names = [n.strip() for n in m.group(1).split(",")]
            text = [m.group(3)]
        else:
            text.append(line.strip())
    flush()
    return out


def _summary(cls: type) -> str:
    doc = (cls.__doc__ or "").strip()
    first = doc.split("\n\n")[0]
    return " ".join(first.split())


# --------------------------------------------------------------------------- value parsers


def non_negative_int(text: str) -> int:
    """argparse type: an integer in [0, 2**31) (counts)."""
    v = _int(text)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return _int32(v, text)


def positive_int(text: str) -> int:
    """argparse type: an integer in [1, 2**31) (sizes, copies)."""
    v = _int(text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return _int32(v, text)


def _int32(v: int, text: str) -> int:
    # Counts run as int32 (device counters, NumPy shapes): 2**31 and beyond ended in an
    # OverflowError / "Maximum allowed dimension" traceback, some after seconds of work.
    if v > INT32_MAX:
        raise argparse.ArgumentTypeError(f"must be <= {INT32_MAX} (2**31 - 1), got {text}")
    return v


def seed_int(text: str) -> int:
    """argparse type: a seed, an integer in [0, 2**32) (what NumPy and JAX both accept)."""
    v = _int(text)
    if not 0 <= v < 2**32:
        raise argparse.ArgumentTypeError(f"a seed must be an integer in [0, 2**32), got {text}")
    return v


def integer(text: str) -> int:
    """argparse type: an integer written in ASCII digits (``int`` also reads "1_0" as 10 and
    "٣" as 3)."""
    return _int(text)


def _int(text: str) -> int:
    # ASCII digits only: int() also reads "1_0" as 10 and "٣" as 3 (stop 63).
    if not isinstance(text, str) or not re.fullmatch(r"\s*[+-]?[0-9]+\s*", text):
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}")
    return int(text)


def finite_float(text: str) -> float:
    """argparse type: a finite float (``nan`` / ``inf`` are refused)."""
    v = _float(text)
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return v


def _float(text: str) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def _bool(text: str) -> bool:
    t = str(text).strip().lower()
    if t in ("1", "true", "yes", "on"):
        return True
    if t in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _union_args(tp: Any) -> tuple | None:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return typing.get_args(tp)
    return None


def _optional_inner(tp: Any) -> tuple[Any, bool]:
    args = _union_args(tp)
    if args and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return (rest[0] if len(rest) == 1 else typing.Union[tuple(rest)]), True
    return tp, False


def _scalar_parser(tp: Any, name: str, default: Any) -> Callable[[str], Any]:
    if tp is bool:
        return _bool
    if tp is int:
        return seed_int if name == "seed" or name.endswith("_seed") else _int
    if tp is float:
        lenient = isinstance(default, float) and not math.isfinite(default)
        return _float if lenient else finite_float
    if tp is str:
        return str
    if typing.get_origin(tp) is typing.Literal:
        choices = typing.get_args(tp)

        def literal(text: str) -> Any:
            for c in choices:
                if str(c) == text:
                    return c
            raise argparse.ArgumentTypeError(
                f"choose one of {', '.join(map(str, choices))}, got {text!r}")

        return literal

    def as_json(text: str) -> Any:
        try:
            return json.loads(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a JSON value, got {text!r}") from None

    return as_json


def _tuple_item(tp: Any) -> Any | None:
    """The item type of ``tuple[T, ...]`` / ``list[T]`` / ``Sequence[T]``, else None."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        return args[0]
    if origin in (list, Sequence, typing.Sequence) and len(args) == 1:
        return args[0]
    return None


def parse_value(tp: Any, text: str, name: str = "", default: Any = None) -> Any:
    """Parses one string into a value of field type ``tp`` (the ``--config.`` syntax: tuples
    are comma-separated or a JSON list, ``none`` is None for optional fields).

    Raises:
      argparse.ArgumentTypeError: ``text`` is not a value of that type.
    """
    inner, optional = _optional_inner(tp)
    if optional and text.strip().lower() in ("none", "null"):
        return None
    item = _tuple_item(inner)
    if item is not None:
        parts = json.loads(text) if text.strip().startswith("[") else [
            s for s in text.split(",") if s.strip()]
        one = _scalar_parser(item, name, None)
        return tuple(one(str(p)) for p in parts)
    return _scalar_parser(inner, name, default)(text)


def _type_name(tp: Any) -> str:
    inner, optional = _optional_inner(tp)
    item = _tuple_item(inner)
    base = (f"{getattr(item, '__name__', str(item))}, ..." if item is not None
            else getattr(inner, "__name__", str(inner)))
    if typing.get_origin(inner) is typing.Literal:
        base = "|".join(map(str, typing.get_args(inner)))
    return f"{base} or none" if optional else base


# --------------------------------------------------------------------------- per-field flags


def _hints(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except Exception:  # noqa: BLE001 - unresolvable annotation: fall back to JSON parsing
        return {f.name: Any for f in dataclasses.fields(cls)}


def _default(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return field.default_factory()  # type: ignore[misc]
    return dataclasses.MISSING


def _fmt_default(v: Any) -> str:
    if v is dataclasses.MISSING:
        return "required"
    if v is None:
        return "none"
    if isinstance(v, tuple):
        return " ".join(map(str, v)) or "()"
    return str(v)


@dataclasses.dataclass
class ConfigFlags:
    """The flags of one config class on a parser (returned by :func:`add_config_flags`)."""

    cls: type
    dests: dict[str, str]          # field name -> argparse dest
    flags: dict[str, str]          # field name -> option string
    sequences: frozenset = frozenset()  # fields given as several values (tuples)

    def given(self, args: argparse.Namespace) -> dict[str, Any]:
        """The fields whose flags were given on the command line, with their values."""
        out = {}
        for f, d in self.dests.items():
            v = getattr(args, d, UNSET)
            if v is UNSET:
                continue
            if f in self.sequences:  # argparse gives a list; `none` alone means None
                v = None if list(v) == [None] else tuple(v)
            out[f] = v
        return out

    def build(self, args: argparse.Namespace, base: Any = None, **overrides: Any) -> Any:
        """A config from the given flags on top of ``base`` (default: the class defaults),
        then ``overrides``. Invalid combinations raise the config's own ConfigError."""
        given = self.given(args)
        return _build_naming_flags(self.cls, base, {**given, **overrides},
                                   {f: self.flags[f] for f in given})

    def value(self, args: argparse.Namespace, field: str) -> Any:
        """A field's flag value, or the class default when not given."""
        v = getattr(args, self.dests[field], UNSET)
        if v is UNSET:
            return _default({f.name: f for f in dataclasses.fields(self.cls)}[field])
        return v


def _build_naming_flags(cls: type, base: Any, values: dict, flags: dict[str, str]) -> Any:
    """``cls(**values)`` (or ``base`` with ``values`` replaced); a ConfigError about one of
    the given fields (``Class.field ...``) is prefixed with the flag the user typed."""
    try:
        return dataclasses.replace(base, **values) if base is not None else cls(**values)
    except ConfigError as e:
        for field, flag in flags.items():
            if f"{cls.__name__}.{field}" in str(e):
                raise ConfigError(f"{flag}: {e}") from None
        raise


def add_config_flags(parser: argparse.ArgumentParser | Any, cls: type, *,
                     title: str | None = None, rename: Mapping[str, str] | None = None,
                     exclude: Sequence[str] = (), choices: Mapping[str, Sequence] | None = None,
                     defaults: Mapping[str, Any] | None = None, dest_prefix: str = "",
                     help_extra: Mapping[str, str] | None = None,
                     help_texts: Mapping[str, str] | None = None,
                     description: str | None = None) -> ConfigFlags:
    """Adds one ``--field-name`` flag per field of dataclass ``cls`` (an argument group).

    Args:
      parser: an ``argparse`` parser (or group).
      cls: a dataclass; its ``Attributes:`` docstring section gives the help texts.
      title: argument-group title (default: the class name and docstring summary).
      rename: field → flag name (without ``--``) where the CLI keeps an older name
        (``{"num_seeds": "seeds"}``).
      exclude: fields without a flag (set by the command itself).
      choices: field → allowed values (when the type hint is a plain ``str``).
      defaults: field → default shown in ``--help`` when it differs from the class's (e.g. a
        recipe chosen at run time); the value is still applied by the caller.
      dest_prefix: prefix of the argparse dests (two config classes on one parser).
      help_extra: field → text appended to its help.
      help_texts: field → text shown instead of its docstring's, where the caller's recipe
        gives the field another meaning (the GAN judge's ``epochs``).
      description: the group's description (default: the class's docstring summary).

    Returns:
      A :class:`ConfigFlags` whose ``build(args)`` makes the config.
    """
    rename = dict(rename or {})
    choices = dict(choices or {})
    shown = dict(defaults or {})
    extra = dict(help_extra or {})
    texts = dict(help_texts or {})
    unknown = [n for n in (*rename, *exclude, *choices, *shown, *extra, *texts) if n not in
               {f.name for f in dataclasses.fields(cls)}]
    if unknown:
        raise ConfigError(f"{cls.__name__} has no field {unknown[0]!r}")
    docs = field_docs(cls)
    hints = _hints(cls)
    add_group = getattr(parser, "add_argument_group", None)
    group = (add_group(title or f"{cls.__name__}", description or _summary(cls)) if add_group
             else parser)
    dests, flags, sequences = {}, {}, set()
    for f in dataclasses.fields(cls):
        if f.name in exclude or not f.init:
            continue
        tp = hints.get(f.name, Any)
        default = _default(f)
        flag = "--" + rename.get(f.name, f.name.replace("_", "-"))
        dest = dest_prefix + f.name
        doc = texts.get(f.name, docs.get(f.name, ""))
        shown_default = shown.get(f.name, default)
        help_text = " ".join(x for x in (doc, extra.get(f.name, ""),
                                         f"[{_type_name(tp)}; default: "
                                         f"{_fmt_default(shown_default)}]") if x)
        help_text = help_text.replace("%", "%%")
        inner, optional = _optional_inner(tp)
        kw: dict[str, Any] = {"dest": dest, "default": UNSET, "help": help_text}
        if inner is bool and not optional:
            kw["action"] = argparse.BooleanOptionalAction
        else:
            item = _tuple_item(inner)
            if item is not None:
                kw["nargs"] = "+"
                one = _scalar_parser(item, f.name, None)
                kw["type"] = ((lambda t, p=one: None if t.strip().lower() == "none" else p(t))
                              if optional else one)
                kw["metavar"] = flag[2:].replace("-", "_").upper()
                sequences.add(f.name)
            else:
                parse = _scalar_parser(inner, f.name, default)
                kw["type"] = ((lambda t, p=parse: None if t.strip().lower() == "none" else p(t))
                              if optional else parse)
                kw["metavar"] = flag[2:].replace("-", "_").upper()
            if f.name in choices:
                kw["choices"] = list(choices[f.name])
                kw.pop("metavar", None)
        group.add_argument(flag, **kw)
        dests[f.name] = dest
        flags[f.name] = flag
    return ConfigFlags(cls, dests, flags, frozenset(sequences))


# --------------------------------------------------------------------------- --config.FIELD


@dataclasses.dataclass
class ConfigNamespace:
    """``--<name>.FIELD=VALUE`` flags over several config classes (one per method)."""

    name: str
    classes: dict[str, type]
    dests: dict[str, str]          # field -> dest
    key_name: str = "method"
    refused: Mapping[str, Collection[str]] = dataclasses.field(default_factory=dict)

    def given(self, args: argparse.Namespace) -> dict[str, str]:
        """Raw strings of the ``--config.`` flags given."""
        return {f: getattr(args, d) for f, d in self.dests.items()
                if getattr(args, d, UNSET) is not UNSET}

    def build(self, args: argparse.Namespace, key: str, base: Any = None) -> Any:
        """The config of ``classes[key]`` with the given ``--config.`` fields applied.

        Raises:
          ConfigError: a given field is not one of that class's, or its value does not parse.
        """
        cls = self.classes[key]
        raw = self.given(args)
        fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
        bad = [f for f in raw if f not in fields]
        if bad:
            # The keys that take it, so the refusal can say which one the user meant.
            owners = [k for k, c in self.classes.items()
                      if bad[0] in {f.name for f in dataclasses.fields(c) if f.init}
                      and bad[0] not in self.refused.get(k, ())]
            use = f", or use --{self.key_name} {' / '.join(owners)}" if owners else ""
            raise ConfigError(f"--{self.name}.{bad[0]} is not a field of {key}'s "
                              f"{cls.__name__}; its fields: {', '.join(fields)}; drop it{use}")
        hints = _hints(cls)
        values = {}
        for f, text in raw.items():
            try:
                values[f] = parse_value(hints.get(f, Any), text, f, _default(fields[f]))
            except (argparse.ArgumentTypeError, ValueError) as e:
                raise ConfigError(f"--{self.name}.{f}={text}: {e} ({f} of {cls.__name__} is "
                                  f"{_type_name(hints.get(f, Any))})") from None
        return _build_naming_flags(cls, base, values, {f: f"--{self.name}.{f}" for f in values})


def add_config_namespace(parser: argparse.ArgumentParser, name: str,
                         classes: Mapping[str, type], title: str | None = None,
                         key_name: str = "method",
                         refused: Mapping[str, Collection[str]] | None = None
                         ) -> ConfigNamespace:
    """Adds ``--<name>.FIELD`` for every field of every class in ``classes`` (key → class, e.g.
    method → its config), with help naming the keys that take it and their defaults.
    ``refused``: key → fields of its class that the command refuses for it (Fine-tune's α and τ
    fields of the GradTauConfig it shares with ∇τ); their help names the key as refusing them
    instead of listing a default it would never use.

    Returns:
      A :class:`ConfigNamespace`; ``build(args, key)`` makes ``classes[key]``'s config.
    """
    by_field: dict[str, list[tuple[str, type, dataclasses.Field]]] = {}
    for key, cls in classes.items():
        for f in dataclasses.fields(cls):
            if f.init and f.name not in (refused or {}).get(key, ()):
                by_field.setdefault(f.name, []).append((key, cls, f))
    group = parser.add_argument_group(
        title or f"{key_name} config (--{name}.FIELD=VALUE)",
        f"Any field of the chosen {key_name}'s config; unknown fields and values of the wrong "
        "type are refused.")
    dests = {}
    docs_cache: dict[type, dict[str, str]] = {}
    for field, users in by_field.items():
        # The same field may mean different things per key (``lr``: AdamW for gradtau, SGD for
        # the baselines): each distinct text is shown with the keys it documents.
        texts: dict[str, list[str]] = {}
        for key, cls, _f in users:
            docs_cache.setdefault(cls, field_docs(cls))
            text = docs_cache[cls].get(field, "")
            if text:
                texts.setdefault(text, []).append(key)
        doc = (next(iter(texts), "") if len(texts) <= 1 else
               " ".join(f"{', '.join(keys)}: {text}" for text, keys in texts.items()))
        # The type per key where they differ (epochs: int or none for gradtau, int for the
        # baselines, whose help read "int or none" for every method).
        types: dict[str, list[str]] = {}
        for key, cls, _f in users:
            types.setdefault(_type_name(_hints(cls).get(field, Any)), []).append(key)
        type_text = (next(iter(types)) if len(types) == 1 else
                     "; ".join(f"{', '.join(keys)}: {t}" for t, keys in types.items()))
        used = ", ".join(f"{k} {_fmt_default(_default(f))}" for k, _, f in users)
        no = [k for k, fields in (refused or {}).items() if field in fields]
        used += f"; refused by {', '.join(no)}" if no else ""
        help_text = f"{doc} [{type_text}; default by {key_name}: {used}]".strip()
        dest = f"{name}__{field}"
        group.add_argument(f"--{name}.{field}", dest=dest, default=UNSET, metavar="VALUE",
                           help=help_text.replace("%", "%%"))
        dests[field] = dest
    return ConfigNamespace(name, dict(classes), dests, key_name, dict(refused or {}))
