"""The ``vitaccel`` command line: one entry point, subcommands registered by each package.

Each package that offers subcommands has a module with a function
``add_subcommands(subparsers)`` that adds its parsers and sets ``func`` (a callable taking the parsed
``argparse.Namespace`` and returning an exit code) with ``parser.set_defaults(func=...)``.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from . import __version__

#: Modules that register subcommands, in the order they appear in ``vitaccel --help``.
SUBCOMMAND_MODULES = (
    "sim.cli",          # spec
    "golden.commands",  # calibrate, eval, export-golden, merge
    "golden.flow",      # flow
    "hw.cli",           # hw generate, hw synth
    "tb.cli",           # tb run
    "sim.perf.cli",     # estimate
)


class UserError(Exception):
    """An error caused by the user's input; printed without a traceback (exit code 2)."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vitaccel",
        description="Low-bit post-training-quantized ViTs: calibrate, export, simulate, "
        "generate RTL, verify and estimate.",
    )
    parser.add_argument("--version", action="version", version=f"vitaccel {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # that subsystem is not built yet
                continue
            raise
        module.add_subcommands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"vitaccel {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
