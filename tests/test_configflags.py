"""CLI flags generated from the config dataclasses: every field of every config in the package
has a flag that parses (its own default round-trips), docstrings become help, and wrong field
names or wrong types are one clear error."""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import pkgutil
import re
from typing import Literal

import pytest

import hyperforget_jax
from hyperforget_jax import cli, configflags
from hyperforget_jax.errors import ConfigError


def _package_configs() -> list[type]:
    """Every dataclass named ``*Config`` in the package (found, not listed, so renamed or new
    configs are covered)."""
    found = {}
    for mod in pkgutil.walk_packages(hyperforget_jax.__path__, "hyperforget_jax."):
        if mod.name.endswith(("__main__", "cli")) or ".commands" in mod.name:
            continue
        m = importlib.import_module(mod.name)
        for name, obj in vars(m).items():
            if (isinstance(obj, type) and dataclasses.is_dataclass(obj)
                    and name.endswith("Config") and obj.__module__ == m.__name__):
                found[f"{obj.__module__}.{name}"] = obj
    return [found[k] for k in sorted(found)]


CONFIGS = _package_configs()


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise ValueError(message)


def _as_flag_value(v):
    if v is None:
        return ["none"]
    if isinstance(v, tuple):
        return [str(x) for x in v]
    return [str(v)]


@pytest.mark.parametrize("cls", CONFIGS, ids=[c.__name__ for c in CONFIGS])
def test_every_field_of_every_config_has_a_working_flag(cls):
    assert len(CONFIGS) >= 8  # TrainConfig, GradTauConfig, the baselines, GAN, corpus, ...
    p = _Parser()
    flags = configflags.add_config_flags(p, cls)
    fields = [f for f in dataclasses.fields(cls) if f.init]
    assert set(flags.flags) == {f.name for f in fields}
    assert flags.build(p.parse_args([])) == cls()
    argv = []
    for f in fields:
        v = getattr(cls(), f.name)
        if isinstance(v, bool):
            argv.append(flags.flags[f.name] if v else "--no-" + flags.flags[f.name][2:])
        else:
            argv += [flags.flags[f.name], *_as_flag_value(v)]
    args = p.parse_args(argv)
    assert set(flags.given(args)) == {f.name for f in fields}  # every field was set by a flag
    assert flags.build(args) == cls()


def test_help_comes_from_the_attributes_docstring():
    @dataclasses.dataclass(frozen=True)
    class Demo:
        """A demo config.

        Attributes:
          lr, wd: AdamW learning rate and
            weight decay (two fields, one entry).
          mode: how to run.
          seed (int): seed of everything.

        Example:
          not: a field
        """

        lr: float = 1e-3
        wd: float = 0.0
        mode: Literal["a", "b"] = "a"
        seed: int = 0
        steps: int | None = None
        classes: tuple[int, ...] = (1, 2)

    docs = configflags.field_docs(Demo)
    assert docs == {"lr": "AdamW learning rate and weight decay (two fields, one entry).",
                    "wd": "AdamW learning rate and weight decay (two fields, one entry).",
                    "mode": "how to run.", "seed": "seed of everything."}
    p = _Parser()
    flags = configflags.add_config_flags(p, Demo)
    text = p.format_help()
    assert "AdamW learning rate and weight decay" in text and "default: 0.001" in text
    args = p.parse_args(["--mode", "b", "--steps", "none", "--classes", "3", "4", "--lr", "2"])
    assert flags.build(args) == Demo(lr=2.0, mode="b", steps=None, classes=(3, 4))
    # A caller's own text replaces the docstring's; a text for no field is refused.
    p2 = _Parser()
    configflags.add_config_flags(p2, Demo, help_texts={"lr": "the judge's rate"})
    assert "the judge's rate" in p2.format_help() and "weight decay (two" in p2.format_help()
    for kw in ({"help_texts": {"lrr": "x"}}, {"help_extra": {"lrr": "x"}}):
        with pytest.raises(configflags.ConfigError, match="no field 'lrr'"):
            configflags.add_config_flags(_Parser(), Demo, **kw)
    for bad, msg in ((["--mode", "c"], "choose one of a, b"),
                     (["--seed", "-1"], "a seed must be an integer in [0, 2**32)"),
                     (["--lr", "inf"], "expected a finite number"),
                     (["--steps", "2.5"], "expected an integer")):
        with pytest.raises(ValueError, match=re.escape(msg)):
            p.parse_args(bad)


def test_config_namespace_sets_any_field_of_the_chosen_class():
    unlearn = importlib.import_module("hyperforget_jax.unlearn")
    classes = dict(unlearn.DEFAULT_CONFIGS)
    p = _Parser()
    ns = configflags.add_config_namespace(p, "config", classes)
    for key, cls in classes.items():
        for f in dataclasses.fields(cls):
            v = getattr(cls(), f.name)
            text = "none" if v is None else ",".join(map(str, v)) if isinstance(v, tuple) \
                else str(v)
            args = p.parse_args([f"--config.{f.name}={text}"])
            assert ns.build(args, key) == cls(), (key, f.name)
    salun = ns.build(p.parse_args(["--config.lr=0.02", "--config.mask_ratio", "0.3"]), "salun")
    assert (salun.lr, salun.mask_ratio) == (0.02, 0.3)
    with pytest.raises(ConfigError, match="--config.mask_ratio is not a field of gradtau's"
                       ".*drop it, or use --method salun$"):
        ns.build(p.parse_args(["--config.mask_ratio=0.3"]), "gradtau")
    with pytest.raises(ConfigError, match="--config.lr=abc: expected a number"):
        ns.build(p.parse_args(["--config.lr=abc"]), "salun")


def test_unlearn_help_documents_every_baseline_field(capsys):
    with pytest.raises(SystemExit):
        cli.main(["unlearn", "--help"])
    text = capsys.readouterr().out
    unlearn = importlib.import_module("hyperforget_jax.unlearn")
    for cls in unlearn.DEFAULT_CONFIGS.values():
        for f in dataclasses.fields(cls):
            assert f"--config.{f.name}" in text


def test_a_namespace_field_of_several_types_names_each_keys_type():
    """``epochs`` is ``int | None`` for gradtau / finetune and ``int`` for the baselines: the
    help read "int or none" for every method, and neggrad then refused `none`."""
    import argparse

    unlearn = next(a for a in cli.build_parser()._actions
                   if isinstance(a, argparse._SubParsersAction)).choices["unlearn"]
    helps = {a.option_strings[0]: a.help for a in unlearn._actions if a.option_strings}
    text = " ".join(helps["--config.epochs"].split())
    assert "[gradtau, finetune: int or none; neggrad, " in text, text
    assert "bad_teacher: int; default by method: gradtau none" in text, text
    # A field of one type keeps one type name.
    assert "[float; default by method:" in " ".join(helps["--config.lr"].split())


def test_count_flags_refuse_values_past_int32():
    """Counts run as int32 (device counters, NumPy shapes): a flag of 2**31 or more ended in
    an OverflowError / "Maximum allowed dimension" traceback, some after seconds of work
    (stop 63). The seed flag keeps its own bound, 2**32."""
    for parse in (configflags.positive_int, configflags.non_negative_int):
        assert parse("2147483647") == 2**31 - 1
        with pytest.raises(argparse.ArgumentTypeError, match=r"must be <= 2147483647"):
            parse("2147483648")
    assert configflags.seed_int("4294967295") == 2**32 - 1


def test_integers_are_ascii_digits_and_negative_infinity_reaches_the_check():
    """int() read "1_0" as 10 and Arabic-Indic "٣" as 3; `--lr -inf` was argparse's "expected
    one argument" instead of the finite-number check (stop 63)."""
    for text in ("1_0", "٣", "0x10", "2.5", ""):
        with pytest.raises(argparse.ArgumentTypeError, match="expected an integer"):
            configflags.positive_int(text)
    assert configflags.positive_int(" +7 ") == 7
    assert cli._join_negative_values(["--lr", "-inf", "--seed", "-1"]) == [
        "--lr=-inf", "--seed", "-1"]


def test_every_integer_flag_takes_ascii_digits_only():
    """Stop 63's rule missed the forget request (`--forget-indices 1_0,2_5` forgot rows 10 and
    25, `--forget-class ٣` class 3), the demo's --seeds and the experiments' and benchmarks'
    integer flags (stop 64)."""
    import re as re_
    from pathlib import Path

    from benchmarks import common as bench_common
    from hyperforget_jax.cli import ArgumentParser
    from hyperforget_jax.commands import common
    from hyperforget_jax.errors import ConfigError

    for text in ("1_0", "٣"):
        with pytest.raises(argparse.ArgumentTypeError, match="expected a class id"):
            common.class_id(text)
    assert common.class_id(" 3 ") == 3
    p = ArgumentParser()
    common.add_request_args(p)
    with pytest.raises(ConfigError, match="--forget-indices must be comma-separated integers"):
        common.request_from_args(p.parse_args(["--forget-indices", "1_0,2_5"]))
    assert common.request_from_args(p.parse_args(["--forget-indices", "10, 25"])).indices == (
        10, 25)
    with pytest.raises(SystemExit):
        bench_common.int_list(ArgumentParser(), "1_0,2", "--sizes")
    assert bench_common.int_list(ArgumentParser(), "1, 2", "--sizes") == [1, 2]
    root = Path(__file__).resolve().parents[1]
    for py in [*root.glob("experiments/*.py"), *root.glob("benchmarks/bench_*.py"),
               *root.glob("hyperforget_jax/commands/*.py")]:
        assert not re_.search(r"type=int\b", py.read_text(encoding="utf-8")), py
