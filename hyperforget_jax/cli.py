"""``hyperforget``: the command-line interface (a thin layer over the library).

Errors a user can cause (:class:`~hyperforget_jax.errors.HyperforgetError`, bad arguments) end
with exit code 2 and one line on stderr.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys

from hyperforget_jax.errors import HyperforgetError

COMMAND_MODULES = ("core", "unlearn", "hyper", "gan")


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line instead of argparse's usage block
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="hyperforget", description="Machine unlearning in JAX: train, "
                     "unlearn (gradtau and baselines), sample unlearned models (HyperForget), "
                     "GAN unlearning, and honest evaluation against Retrain.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        mod = f"hyperforget_jax.commands.{name}"
        if importlib.util.find_spec(mod) is not None:
            importlib.import_module(mod).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except HyperforgetError as e:
        msg = " ".join(str(e).split())  # exactly one line
        print(f"hyperforget {args.command}: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("hyperforget: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
