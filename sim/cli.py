"""``vitaccel spec``: print the supported code formats of the datapath spec."""
from __future__ import annotations

from . import formats


def _spec(args) -> int:
    print(formats.describe_formats())
    return 0


def add_subcommands(subparsers) -> None:
    p = subparsers.add_parser("spec", help="print the supported code formats (docs/datapath.md)")
    p.set_defaults(func=_spec)
