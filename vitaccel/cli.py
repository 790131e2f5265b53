"""The ``vitaccel`` command line: one entry point, subcommands registered by each package.

Errors a user can cause derive from :class:`vitaccel.sim.errors.UserError`; :func:`main` prints them
as ``vitaccel COMMAND: error: MESSAGE`` without a traceback and returns 2. Ctrl-C returns 130 after
one line. Any other exception is an internal bug and keeps its traceback.

Each package that offers subcommands has a module with a function
``add_subcommands(subparsers)`` that adds its parsers and sets ``func`` (a callable taking the parsed
``argparse.Namespace`` and returning an exit code) with ``parser.set_defaults(func=...)``.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from . import __version__
from .sim.errors import UserError

__all__ = ["UserError", "build_parser", "main"]

#: Modules that register subcommands, in the order they appear in ``vitaccel --help``.
SUBCOMMAND_MODULES = (
    "vitaccel.sim.cli",          # spec
    "vitaccel.golden.commands",  # calibrate, eval, export-golden, merge
    "vitaccel.flow.cli",         # flow
    "vitaccel.hw.cli",           # hw generate, hw synth
    "vitaccel.tb.cli",           # tb run
    "vitaccel.sim.perf.cli",     # estimate
    "vitaccel.sim.perf.explore", # explore
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vitaccel",
        description="Low-bit post-training-quantized ViTs: calibrate, export, simulate, "
        "generate RTL, verify and estimate.",
    )
    parser.add_argument("--version", action="version", version=f"vitaccel {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        importlib.import_module(name).add_subcommands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    name = args.command
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"vitaccel {name}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # outputs are written to temporary siblings and renamed into place only when complete
        # (vitaccel.sim.outputs): nothing partial is left behind
        print(f"vitaccel {name}: interrupted; no partial output was written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
