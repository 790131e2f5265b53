"""Constants and code-format descriptions of the vitaccel datapath (docs/datapath.md, section 12).

Every number here is quoted from the spec; the reference, the numba kernels, the RTL generators and the
testbenches import them from this one place.
"""
from __future__ import annotations

import math

#: Supported code bit widths for activations and weights.
BITS = (4, 6, 8)

#: Largest shift of a base-2 log code (post-softmax ``log2`` and ``shiftlog2`` base 2).
LOG2_MAX_SHIFT = 15
#: Largest code of a base-sqrt(2) ``shiftlog2`` code.
LOG_SQRT2_MAX_CODE = 31
#: Fraction bits and mantissa table of the sqrt(2) factor carried by odd base-sqrt(2) codes.
SQRT2_FRAC = 8
SQRT2_C = (256, 181)
#: Fraction bits of the scaled value fed to the log and three-region encoders.
LOG_FRAC = 16
#: Mantissa thresholds (16-bit normalised mantissa) for rounding log2 / log_sqrt2 to nearest.
LOG2_THRESHOLD = 46341
LOG_SQRT2_THRESHOLDS = (38968, 55109)
#: Sparse outlier path: value fraction bits (relative to the row step) and value width.
OUTLIER_FRAC_BITS = 2
OUTLIER_VALUE_BITS = 16
#: Requantizer multiplier width (Mr, Mc), encoder reciprocal width (R), accumulator width limit.
MULT_BITS = 16
RECIP_BITS = 24
ACC_BITS_MAX = 48
SR_MAX = 16
SC_MAX = 47
SE_MAX = 56
BQ_BITS = 48
#: Dynamic per-patch encoder (section 8.1.1): scale ladder steps per octave and largest ladder size
#: (the per-row ladder index ``j`` is 6 bits wide).
LADDER_STEPS = 8
LADDER_MAX = 64
#: Softmax probabilities enter the log2 encoder as unsigned fixed point with this many fraction bits.
SOFTMAX_FRAC = 15

#: A-operand formats (section 4) and output formats (section 7).
A_FORMATS = ("uniform", "log2", "shiftlog2", "three_region")
LOG_BASES = ("2", "sqrt2")
OUT_FORMATS = ("ucode", "scode", "fixed16", "fixed32")
OPS = ("linear", "qk", "av")


def check_bits(bits: int, what: str = "bit width", error: type[Exception] = ValueError) -> int:
    """Return ``bits`` as an ``int`` if it is a supported code width (:data:`BITS`), else raise ``error``.

    ``error`` lets a layer raise its own class (``golden`` raises its ``QuantizerError``); it is called
    with the message, which names the width and the supported ones.
    """
    if isinstance(bits, bool) or int(bits) != bits or int(bits) not in BITS:
        raise error(f"unsupported {what} {bits!r}: vitaccel supports {', '.join(map(str, BITS))} bits")
    return int(bits)


def sym_range(bits: int) -> tuple[int, int]:
    """Range of a signed symmetric ``sym`` code (section 3): ``[-(2^(k-1)-1), 2^(k-1)-1]``."""
    m = (1 << (bits - 1)) - 1
    return -m, m


def log2_qmax(bits: int) -> int:
    """Largest valid post-softmax ``log2`` code (section 4.2)."""
    return min((1 << bits) - 2, LOG2_MAX_SHIFT)


def log2_zero_code(bits: int) -> int:
    """The ``log2`` code that means exactly zero (section 4.2)."""
    return (1 << bits) - 1


def shiftlog2_qmax(bits: int, base: str) -> int:
    """Largest ``shiftlog2`` code (section 4.3)."""
    if base == "2":
        return min((1 << bits) - 1, LOG2_MAX_SHIFT)
    if base == "sqrt2":
        return min((1 << bits) - 1, LOG_SQRT2_MAX_CODE)
    raise ValueError(f"unknown log base {base!r}; expected one of {LOG_BASES}")


def shiftlog2_params(bits: int, base: str) -> tuple[tuple[int, int], int, int, int]:
    """``(C, SQF, H, QMAX)`` of a ``shiftlog2`` code (section 4.3)."""
    qmax = shiftlog2_qmax(bits, base)
    if base == "2":
        return (1, 1), 0, qmax, qmax
    return SQRT2_C, SQRT2_FRAC, qmax >> 1, qmax


def out_range(out_fmt: str, bits: int) -> tuple[int, int]:
    """Saturation range ``[lo, hi]`` of an output format (section 7), before adding nothing."""
    if out_fmt == "ucode":
        return 0, (1 << bits) - 1
    if out_fmt == "scode":
        return sym_range(bits)
    if out_fmt == "fixed16":
        return -(1 << 15), (1 << 15) - 1
    if out_fmt == "fixed32":
        return -(1 << 31), (1 << 31) - 1
    raise ValueError(f"unknown output format {out_fmt!r}; expected one of {OUT_FORMATS}")


def describe_formats() -> str:
    """A human-readable table of every supported code format (``vitaccel spec``)."""
    lines = ["vitaccel datapath spec v2 (docs/datapath.md)", ""]
    lines.append("B operand (weights, K^T, V): sym, signed symmetric, no zero point")
    for k in BITS:
        lo, hi = sym_range(k)
        lines.append(f"  {k}-bit: {lo} .. {hi}")
    lines.append("")
    lines.append("A operand formats -> decode triple (neg, mag, sh), D = (-1)^neg * mag << sh")
    for k in BITS:
        lines.append(f"  uniform {k}-bit: q in 0..{(1 << k) - 1}, zero point z, per tensor or per patch")
    for k in BITS:
        lines.append(f"  log2 {k}-bit (post-softmax): q in 0..{log2_qmax(k)}, zero code {log2_zero_code(k)}")
    for k in BITS:
        for base in LOG_BASES:
            c, sqf, h, qmax = shiftlog2_params(k, base)
            lines.append(f"  shiftlog2 base {base} {k}-bit (post-GELU): q in 0..{qmax}, C={c}, SQF={sqf}, H={h}")
    for k in BITS:
        lines.append(
            f"  three_region {k}-bit (post-GELU): [r|g|mag:{k - 2}], R0 -{(1 << (k - 1)) - 1}..0 * s0, "
            f"R1 0..{(1 << (k - 2)) - 1} * s0*2^m0, R2 0..{(1 << (k - 2)) - 1} * s0*2^m1"
        )
    lines.append("")
    lines.append(f"Sparse outliers: (row u16, col u16, val i16), val in row step * 2^-{OUTLIER_FRAC_BITS}")
    lines.append("Output formats: ucode (k-bit + z_out), scode (k-bit symmetric), fixed16, fixed32")
    lines.append("Rounding: round_shift(x, s) = (x + 2^(s-1)) >> s  (ties toward +infinity)")
    lines.append(f"Log rounding thresholds: {LOG2_THRESHOLD} (base 2), {LOG_SQRT2_THRESHOLDS} (base sqrt 2)")
    return "\n".join(lines)


assert LOG2_THRESHOLD == math.ceil(2**15 * math.sqrt(2))
assert LOG_SQRT2_THRESHOLDS == (math.ceil(2**15 * 2**0.25), math.ceil(2**15 * 2**0.75))
assert SQRT2_C[1] == round(2**SQRT2_FRAC / math.sqrt(2))
