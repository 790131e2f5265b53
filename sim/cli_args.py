"""One command-line vocabulary for every ``vitaccel`` subcommand.

Every subcommand that describes an engine (``hw generate``, ``hw synth``, ``tb run``, ``estimate``,
``flow``) takes the same flags with the same defaults from :func:`add_engine_args`; code widths are
always ``--bits wXaY``; clocks are always MHz (:func:`add_freq_arg`); a program is always
``--program PATH`` (:func:`add_program_arg`); results go to ``--json PATH`` (:func:`add_json_arg`).

Old spellings that user scripts may contain (``--wbits/--abits``, ``estimate --freq`` in Hz, the
positional program of ``eval`` / ``export-golden``) keep working for one release with a
:class:`DeprecationWarning` printed once on stderr.

This module sits in ``vitaccel.sim`` (the ground floor) so that every layer's CLI can use it.
"""
from __future__ import annotations

import argparse
import math
import re
import sys
from pathlib import Path

from vitaccel.sim import formats as F
from vitaccel.sim.errors import UserError

__all__ = [
    "ENGINE_DEFAULTS", "parse_bits", "positive_int", "add_engine_args", "engine_fields_from_args",
    "engine_config_from_args", "add_freq_arg", "freq_mhz_from_args", "add_program_arg", "program_from_args",
    "add_json_arg", "deprecated", "BUILD_DIR_ENV", "add_build_dir_arg", "apply_build_dir", "nonneg_int",
    "add_force_arg",
]

#: Defaults of the shared engine flags (the same in every subcommand; docs/user-guide.md).
ENGINE_DEFAULTS = {"rows": 16, "cols": 16, "bits": "w8a8"}

_BITS_RE = re.compile(r"w(\d+)a(\d+)")


def parse_bits(text: str) -> tuple[int, int]:
    """``"w4a4"`` -> ``(w_bits, a_bits)`` = ``(4, 4)`` (case-insensitive).

    Raises
    ------
    UserError
        For anything not of the form ``wXaY`` or a width outside :data:`sim.formats.BITS`.
    """
    m = _BITS_RE.fullmatch(str(text).strip().lower())
    if not m:
        raise UserError(f"bit setting {text!r} is not of the form wXaY (e.g. w4a4, w6a6, w8a8)")
    w, a = int(m.group(1)), int(m.group(2))
    for b, what in ((w, "weight"), (a, "activation")):
        if b not in F.BITS:
            raise UserError(f"unsupported {what} width {b} in {text!r}: supported widths are "
                            f"{', '.join(map(str, F.BITS))}")
    return w, a


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
    return v


def nonneg_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {v}")
    return v


def positive_seconds(text: str) -> float:
    """argparse type: a finite number of seconds > 0 (tool time limits)."""
    v = _number(text)
    if not math.isfinite(v) or v <= 0:
        raise argparse.ArgumentTypeError(f"must be a number of seconds > 0, got {text!r}")
    return v


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None


_warned: set[str] = set()


def deprecated(old: str, new: str) -> None:
    """Print a one-line deprecation notice for ``old`` (once per process)."""
    if old in _warned:
        return
    _warned.add(old)
    print(f"vitaccel: warning: {old} is deprecated and will be removed in the next release; use {new}",
          file=sys.stderr)


# ------------------------------------------------------------------------------------------------ engine
def add_engine_args(parser: argparse.ArgumentParser, *, bits_help: str | None = None,
                    with_bits: bool = True) -> argparse._ArgumentGroup:
    """Add the shared engine flags (one argument group ``engine``) to ``parser``.

    ``--rows``/``--cols`` (default 16 x 16), ``--bits wXaY`` (widest codes the engine accepts,
    default w8a8), ``--acc-bits``, ``--outlier-capacity``, ``--outlier-lanes``, ``--max-k``,
    ``--requant-share`` and
    ``--config FILE`` (a JSON of :class:`sim.engine_config.EngineConfig` fields that the flags
    override). Flags left out are ``None`` so a subcommand can fill them from its workload (e.g.
    ``--max-k`` from the largest K of a program). ``with_bits=False`` leaves ``--bits`` to the
    subcommand (``flow`` uses its quantization ``--bits`` for the engine too).
    """
    g = parser.add_argument_group("engine", "the accelerator configuration (same flags and defaults in "
                                  "hw generate, hw synth, tb run, estimate and flow)")
    g.add_argument("--rows", type=int, default=None,
                   help=f"MAC array rows R (default {ENGINE_DEFAULTS['rows']})")
    g.add_argument("--cols", type=int, default=None,
                   help=f"MAC array columns C (default {ENGINE_DEFAULTS['cols']})")
    if with_bits:
        g.add_argument("--bits", default=None, metavar="wXaY",
                       help=bits_help or f"widest weight/activation codes wXaY, X and Y in 4, 6, 8 "
                       f"(default {ENGINE_DEFAULTS['bits']})")
        g.add_argument("--wbits", type=int, default=None, help=argparse.SUPPRESS)  # deprecated
        g.add_argument("--abits", type=int, default=None, help=argparse.SUPPRESS)  # deprecated
    g.add_argument("--acc-bits", type=int, default=None,
                   help="accumulator width (default: enough for every A format at K = max-k with outliers, "
                   "docs/datapath.md section 6)")
    g.add_argument("--outlier-capacity", type=int, default=None,
                   help="outliers per row tile (default 32; 0 = no outlier unit)")
    g.add_argument("--outlier-lanes", type=int, default=None, help="outlier entries per cycle: 1, 2, 4, 8 (default 1)")
    g.add_argument("--max-k", type=int, default=None,
                   help="B buffer depth = largest K (default 1024, or the largest K of the workload)")
    g.add_argument("--requant-share", type=int, default=None, metavar="S",
                   help="columns per requantiser, a power of two dividing --cols (default 1); the drain "
                   "then takes S cycles per output row (docs/hardware.md)")
    g.add_argument("--config", type=Path, default=None, metavar="FILE",
                   help="JSON file with EngineConfig fields (the flags above override it)")
    return g


def _bits_from_args(args) -> tuple[int, int] | None:
    """``(w_bits, a_bits)`` from ``--bits`` or the deprecated ``--wbits/--abits``; ``None`` if unset."""
    bits = getattr(args, "bits", None)
    wbits, abits = getattr(args, "wbits", None), getattr(args, "abits", None)
    if wbits is not None or abits is not None:
        deprecated("--wbits/--abits", "--bits wXaY")
        if bits is not None:
            raise UserError("give either --bits wXaY or the deprecated --wbits/--abits, not both")
        w_def, a_def = parse_bits(ENGINE_DEFAULTS["bits"])
        w = w_def if wbits is None else wbits
        a = a_def if abits is None else abits
        return parse_bits(f"w{w}a{a}")
    return None if bits is None else parse_bits(bits)


def engine_fields_from_args(args, **workload) -> dict:
    """EngineConfig fields from the shared flags: ``--config`` file, then ``workload`` (values a
    subcommand derives from its program, e.g. ``max_k``, ``a_bits``), then explicit flags, then the
    :data:`ENGINE_DEFAULTS` for anything still unset. ``acc_bits`` is left out when not given."""
    from vitaccel.sim.engine_config import EngineConfig

    fields = EngineConfig.from_file(args.config).to_dict() if getattr(args, "config", None) else {}
    fields.update({k: v for k, v in workload.items() if v is not None})
    bits = _bits_from_args(args)
    if bits is not None:
        fields["b_bits"], fields["a_bits"] = bits
    for flag in ("rows", "cols", "acc_bits", "outlier_capacity", "outlier_lanes", "max_k", "requant_share"):
        v = getattr(args, flag, None)
        if v is not None:
            fields[flag] = v
    fields.setdefault("rows", ENGINE_DEFAULTS["rows"])
    fields.setdefault("cols", ENGINE_DEFAULTS["cols"])
    w, a = parse_bits(ENGINE_DEFAULTS["bits"])
    fields.setdefault("b_bits", w)
    fields.setdefault("a_bits", a)
    return fields


def engine_config_from_args(args, **workload):
    """The :class:`sim.engine_config.EngineConfig` of the shared flags (see
    :func:`engine_fields_from_args`); ``acc_bits`` defaults by
    :func:`sim.engine_config.default_acc_bits`. Raises :class:`UserError` when invalid."""
    from vitaccel.sim.engine_config import make_engine_config

    return make_engine_config(engine_fields_from_args(args, **workload))


# ------------------------------------------------------------------------------------------------ clock
#: ``--freq`` values above this are taken as Hz (the old ``estimate --freq 200e6`` spelling).
_HZ_THRESHOLD = 1e5


def add_freq_arg(parser, *, default: float | None, help: str) -> None:
    """``--freq MHZ`` (clock in MHz everywhere)."""
    parser.add_argument("--freq", type=_number, default=default, metavar="MHZ", help=help)


def freq_mhz_from_args(args) -> float | None:
    """``--freq`` in MHz; a value above 100 000 is read as the deprecated Hz spelling (with a
    warning). Raises :class:`UserError` for a non-positive clock."""
    f = getattr(args, "freq", None)
    if f is None:
        return None
    if f > _HZ_THRESHOLD:
        deprecated(f"--freq {f:g} (Hz)", f"--freq {f / 1e6:g} (MHz)")
        f = f / 1e6
    if not f > 0:
        raise UserError(f"--freq must be a positive clock in MHz, got {f:g}")
    return float(f)


# ------------------------------------------------------------------------------------------------ program
def add_program_arg(parser, *, required: bool, legacy_positional: bool = False, help: str | None = None) -> None:
    """``--program PATH`` (a program directory written by ``vitaccel calibrate``, or its manifest).

    ``legacy_positional`` also accepts the old positional spelling (deprecated)."""
    text = help or "integer program directory written by `vitaccel calibrate` (or its manifest.json)"
    parser.add_argument("--program", metavar="PATH", default=None, help=text)
    if legacy_positional:
        parser.add_argument("legacy_program", nargs="?", default=None, metavar="PROGRAM", help=argparse.SUPPRESS)
    parser.set_defaults(_program_required=required)


def program_from_args(args) -> str | None:
    """The program path of ``--program`` (or the deprecated positional); :class:`UserError` when a
    required program is missing or both spellings are given."""
    prog, legacy = getattr(args, "program", None), getattr(args, "legacy_program", None)
    if legacy is not None:
        if prog is not None:
            raise UserError("give the program once, as --program PATH")
        deprecated("the positional PROGRAM argument", "--program PATH")
        prog = legacy
    if prog is None and getattr(args, "_program_required", False):
        raise UserError("no program given: pass --program PATH (a directory written by `vitaccel calibrate`)")
    return prog


# ------------------------------------------------------------------------------------------------ outputs
#: Environment variable naming the root of generated RTL build and run folders (read by vitaccel.tb.runner).
BUILD_DIR_ENV = "VITACCEL_BUILD_DIR"


def add_build_dir_arg(parser) -> None:
    """``--build-dir DIR``: where Verilog, Verilator builds and cocotb runs go."""
    parser.add_argument("--build-dir", type=Path, default=None, metavar="DIR",
                        help=f"folder for generated Verilog, Verilator builds and cocotb runs (default: build/ in the "
                        f"working directory, or ${BUILD_DIR_ENV}); never inside the installed package")


def apply_build_dir(args) -> None:
    """Make ``--build-dir`` (when given) the build root of this process."""
    import os

    if getattr(args, "build_dir", None) is not None:
        os.environ[BUILD_DIR_ENV] = str(Path(args.build_dir).resolve())


def add_json_arg(parser, *, help: str = "write the results as JSON to this file") -> None:
    """``--json PATH``."""
    parser.add_argument("--json", type=Path, default=None, metavar="PATH", help=help)


def add_force_arg(parser, *, what: str = "the output directory") -> None:
    """``--force``: replace an existing non-empty output directory (atomically, once the new output
    is complete; :mod:`vitaccel.sim.outputs`). Without it such a directory is refused up front."""
    parser.add_argument("--force", action="store_true",
                        help=f"replace {what} if it exists and is not empty (the old content stays until the "
                        f"new output is complete)")
