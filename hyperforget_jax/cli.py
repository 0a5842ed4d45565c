"""``hyperforget``: the command-line interface (a thin layer over the library).

Errors a user can cause (:class:`~hyperforget_jax.errors.HyperforgetError`, bad arguments) end
with exit code 2 and one line on stderr; Ctrl-C ends with exit code 130 and one line.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import logging
import os
import re
import sys
import warnings
from typing import Iterator

from hyperforget_jax import _sigint
from hyperforget_jax.errors import HyperforgetError

COMMAND_MODULES = ("core", "unlearn", "hyper", "gan")


class _Store(argparse._StoreAction):
    """argparse's ``store``, refusing a list flag (``nargs`` "+" or "*") given twice: argparse
    keeps the last list alone (``--forget-class 3 --forget-class 4`` forgot class 4 only, exit
    code 0), where a reader expects both lists. Scalar flags keep last-one-wins, the override
    that scripts rely on (``$BASE --epochs 3``)."""

    def __call__(self, parser, namespace, values, option_string=None):
        before = getattr(namespace, self.dest, self.default)
        if (self.nargs in ("+", "*") or isinstance(self, ListInOne)) and before is not self.default:
            # A ListInOne's items are joined with commas, also once its type made them a list.
            sep = "," if isinstance(self, ListInOne) else " "

            def show(v):
                if isinstance(v, str):
                    return v
                unparse = getattr(self, "unparse", None)    # a ListInOne's type's inverse
                return unparse(v) if unparse else sep.join(map(str, v))
            first, then = show(before) or "no items", show(values) or "no items"
            joined = sep.join(t for t in (show(before), show(values)) if t)
            parser.error(f"argument {option_string}: given twice ({first}, then {then}), and "
                         "only the last would be used; give it once with every item: "
                         f"{option_string} {joined}")
        super().__call__(parser, namespace, values, option_string)


class ListInOne(_Store):
    """The action of a flag whose one value is a comma-separated list (``--forget-indices
    1,2,5``): refused given twice, as a list flag is. ``unparse`` writes a value its ``type``
    made back as the flag's text, for the joined form the refusal suggests."""

    def __init__(self, *a, unparse=None, **k):
        super().__init__(*a, **k)
        self.unparse = unparse


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` with the CLI's conventions: a usage error is one line on
    stderr (``<prog>: error: <message> (see --help)``) and exit code 2, options are never
    abbreviated, and a list flag is given once (:class:`_Store`). The experiment scripts use
    it too."""

    def __init__(self, *a, **k):
        # No prefix matching: with flags generated from configs, a new field could silently
        # change what an abbreviation means.
        k.setdefault("allow_abbrev", False)
        super().__init__(*a, **k)
        for name in (None, "store"):    # argument groups and sub-commands share the registry
            self.register("action", name, _Store)

    def refuse_beside(self, args: argparse.Namespace, flag: str, keep=("out",),
                      does: str = "re-renders <out>/results.json as it was run, with its own "
                                  "settings") -> None:
        """A usage error for any option but ``keep`` given with other than its default beside
        ``flag`` (a store-true flag, or one taking a value) that reads none of them (an
        experiment's ``--render-only`` re-rendered the stored run, exit 0, with ``--dataset`` or
        ``--seeds`` ignored). ``does``: what ``flag`` does instead, for the message."""
        dest = flag.lstrip("-").replace("-", "_")
        value = getattr(args, dest, None)
        if value:
            base = vars(self.parse_args([flag] if value is True else [f"{flag}={value}"]))
            extra = [k for k, v in vars(args).items()
                     if not k.startswith("_") and k not in (dest, *keep) and v != base.get(k)]
            if extra:
                name = "--" + extra[0].replace("_", "-")
                self.error(f"{name} would be ignored: {flag} {does}; drop {name} (or drop "
                           f"{flag} to run them)")

    def error(self, message):  # one line instead of argparse's usage block
        m = re.match(r"unrecognized arguments: .*?--(\w+)\.([\w-]+)", message)
        if m:   # only `unlearn` takes --config.FIELD; its --help lists each method's fields
            self.exit(2, f"{self.prog}: error: --{m.group(1)}.{m.group(2)} is not a config "
                         "field of any method (`hyperforget unlearn --help` lists each "
                         "method's fields)\n")
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="hyperforget", description=(
        "Machine unlearning in JAX: train, unlearn (gradtau and baselines), sample unlearned "
        "models (HyperForget), GAN unlearning, and honest evaluation against Retrain."))
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        mod = f"hyperforget_jax.commands.{name}"
        if importlib.util.find_spec(mod) is not None:
            importlib.import_module(mod).register(sub)
    return parser


_NEGATIVE_VALUE = re.compile(r"^-([\d.]|inf|nan)", re.IGNORECASE)   # (-inf: "expected one
# argument" before stop 63, instead of "expected a finite number")
# What argparse itself takes as a negative number (a value, never an option).
_PLAIN_NEGATIVE = re.compile(r"^-\d+$|^-\d*\.\d+$")


def _join_negative_values(argv: list[str]) -> list[str]:
    """``--forget-indices -1,5`` → ``--forget-indices=-1,5``: argparse takes a value that starts
    with ``-`` for an option unless it is a plain negative number, and would answer "expected one
    argument" instead of checking the value. Plain negative numbers are left to argparse: joined,
    ``--forget-class -1 3`` gave the flag one value and left "unrecognized arguments: 3"."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        a = argv[i]
        if (a.startswith("--") and "=" not in a and i + 1 < len(argv)
                and _NEGATIVE_VALUE.match(argv[i + 1])
                and not _PLAIN_NEGATIVE.match(argv[i + 1])):
            out.append(f"{a}={argv[i + 1]}")
            i += 2
            continue
        out.append(a)
        i += 1
    return out


def _orbax_traceback(record: logging.LogRecord) -> bool:
    """False for a traceback Orbax logs from a failed background write (a full disk: hundreds
    of lines from each of its threads): the same exception reaches the checkpoint's caller,
    which ends the command with its one line."""
    return not (record.exc_info and f"{os.sep}orbax{os.sep}" in record.pathname)


@contextlib.contextmanager
def _cli_output(name: str, program: bool) -> Iterator[None]:
    """What the CLI, as the application, sets for its own run (and restores after, since tests
    call :func:`main` in-process): Python warnings as one ``hyperforget <cmd>: warning:`` line,
    and Orbax's INFO chatter through absl hidden (warnings and errors still show). As the
    program itself (``program``), it also drops the noise abandoned Orbax reads print at exit
    after a corrupt checkpoint, for the rest of the process."""
    if program:
        from hyperforget_jax.checkpoint import silence_abandoned_reads

        silence_abandoned_reads()
    absl = logging.getLogger("absl")
    level = absl.level
    absl.setLevel(max(level, logging.WARNING))
    # A main() inside another (a command run from a command's Python) leaves the outer's filter.
    added = _orbax_traceback not in absl.filters
    absl.addFilter(_orbax_traceback)
    damaged: set[str] = set()

    def step_metadata(record: logging.LogRecord) -> bool:
        # A damaged _CHECKPOINT_METADATA (Orbax's step record; the parameters load without
        # it) printed "ERROR:absl:Failed to json parse" at each of Orbax's 4-7 reads, exit 0.
        text = record.getMessage()
        if text.startswith("Metadata file does not exist"):
            # An empty step directory printed this 4-5 times before its one error line; a
            # step without the record loads (the parameters do not need it).
            return False
        if not text.startswith(("Failed to json parse Metadata file",
                                "Failed to read Metadata file")):
            return True
        path = text.split(":", 1)[-1].strip().split()[0] if ":" in text else text
        if path not in damaged:
            damaged.add(path)
            print(f"hyperforget {name}: warning: a checkpoint's step metadata does not parse "
                  f"({' '.join(text.split())[:200]}); ignored, the checkpoint itself loads",
                  file=sys.stderr)
        return False

    absl.addFilter(step_metadata)
    show = warnings.showwarning

    def one_line(message, category, filename, lineno, file=None, line=None):
        print(f"hyperforget {name}: warning: {' '.join(str(message).split())}",
              file=file or sys.stderr)

    warnings.showwarning = one_line
    try:
        yield
    finally:
        warnings.showwarning = show
        absl.setLevel(level)
        absl.removeFilter(step_metadata)
        if added:
            absl.removeFilter(_orbax_traceback)


def main(argv: list[str] | None = None) -> int:
    from hyperforget_jax.report import encodable_output

    # Help, reports and messages hold ∇τ, ±, ≈: printable under any locale (report.py says why).
    with encodable_output():
        return _main(argv)


def _main(argv: list[str] | None) -> int:
    program = argv is None  # the `hyperforget` program, not a call from Python
    if program:
        # First (the package installs it earlier when imported by the program itself): parsing
        # imports the commands (JAX, Flax, Orbax; seconds), and a Ctrl-C landing in JAX's gc
        # callback then was dropped (the run trained to the end, exit 0).
        _sigint.install()
    else:
        _sigint.uninstall_startup()
    argv = _join_negative_values(list(sys.argv[1:] if argv is None else argv))
    try:
        args = build_parser().parse_args(argv)
    except KeyboardInterrupt:   # (a traceback, before)
        return _interrupted("hyperforget", program)
    args._argv = argv   # what ran, for the lock file (not sys.argv when called)
    name = " ".join(x for x in (args.command, getattr(args, "gan_command", None)) if x)
    try:
        with _cli_output(name, program):
            return int(args.func(args) or 0)
    except HyperforgetError as e:
        msg = " ".join(str(e).split())  # exactly one line
        print(f"hyperforget {name}: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return _interrupted(f"hyperforget {name}", program, getattr(args, "_resumes", True))


def _interrupted(who: str, program: bool, resumes: bool = True) -> int:
    # Checkpoint writes hold Ctrl-C until they commit (checkpoint.py), so what is on disk is
    # complete and a rerun with the same flags resumes. The demo and the evaluations keep no
    # checkpoints: their rerun starts over (it said "to resume").
    then = ("rerun the same command to resume" if resumes else
            "rerun the command to run it again (it starts over: this command does not resume)")
    print(f"{who}: interrupted; {then}", file=sys.stderr)
    if program:
        # Interpreter shutdown with XLA's and Orbax's native threads mid-work segfaulted (exit
        # 139 after this line, 3 of 10 interrupts): what is on disk is committed and the
        # run's lock released by now, so the program ends here.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(130)
    return 130


if __name__ == "__main__":
    sys.exit(main())
