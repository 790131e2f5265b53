"""Building blocks shared by the vitaccel datapath units (docs/datapath.md sections 1, 7, 8).

Everything here is a plain function that returns Amaranth expressions (combinational logic) or adds
statements to a given :class:`amaranth.hdl.Module`; the components in :mod:`hw.decoders`,
:mod:`hw.requantiser` and :mod:`hw.encoders` are built from them.

* :func:`round_half` / :func:`round_shift` -- the spec's one rounding rule, ``(x + 2^(s-1)) >> s``.
* :func:`saturate` -- clamp with a "was clamped" flag (every saturation is counted).
* :func:`partial_products` -- split a wide product into chunks that fit an 18x18 DSP block, so a
  multiplier can be registered after the partial products and summed in the next stage
  (:func:`partial_operands`: the operand pairs, for the registered DSP blocks of :mod:`hw.dsp`).
* :func:`carry_save` / :func:`carry_save_add` -- a sum of several terms as 3:2 compressors and one
  carry chain (:func:`sum_products` and :func:`carry_save_sum` use them).
* :func:`leading_one` -- priority encoder (``bit_length(v) - 1``) used by the log encoders.
* :class:`CodeFormat`, :class:`OutFormat` -- run-time format selectors (config ports).
"""
from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal, Value
from amaranth.lib import enum

__all__ = ["CodeFormat", "OutFormat", "LogBase", "round_half", "round_shift", "saturate",
           "partial_products", "partial_operands", "sum_products", "carry_save_sum", "carry_save",
           "carry_save_difference",
           "carry_save_add", "leading_one", "bits_select"]


class CodeFormat(enum.Enum, shape=3):
    """A-operand code format (section 4), the ``fmt`` config port of :class:`hw.decoders.OperandDecoder`."""

    UNIFORM = 0            #: 4.1 ``uniform``
    LOG2 = 1               #: 4.2 ``log2`` (post-softmax)
    SHIFTLOG2_BASE2 = 2    #: 4.3 ``shiftlog2`` base 2
    SHIFTLOG2_SQRT2 = 3    #: 4.3 ``shiftlog2`` base sqrt(2)
    THREE_REGION = 4       #: 4.4 ``three_region``


class OutFormat(enum.Enum, shape=2):
    """Requantiser output format (section 7), the ``out_fmt`` config port."""

    UCODE = 0    #: k-bit unsigned code plus ``z_out``
    SCODE = 1    #: k-bit signed symmetric code
    FIXED16 = 2  #: int16 fixed point
    FIXED32 = 3  #: int32 fixed point


class LogBase(enum.Enum, shape=1):
    """Log base of a ``shiftlog2`` encoder (section 8.2)."""

    BASE2 = 0
    SQRT2 = 1


def round_half(s: Value, width: int) -> Value:
    """``2^(s-1)`` for ``s >= 1`` and 0 for ``s == 0`` (the rounding constant of ``round_shift``).

    Parameters
    ----------
    s : Value
        Unsigned shift amount.
    width : int
        Width of the result (must hold ``2^(max s - 1)``).
    """
    return ((Const(1, width + 1) << s) >> 1)[:width]


def round_shift(x: Value, s: Value) -> Value:
    """``round_shift(x, s) = (x + 2^(s-1)) >> s`` (ties toward +infinity), combinational.

    ``x`` is widened by one bit before the add, so the result never wraps.
    """
    w = len(x) + 1
    return (x + round_half(s, w - 1)) >> s


def saturate(x: Value, lo, hi) -> tuple[Value, Value]:
    """Clamp ``x`` to ``[lo, hi]``; return ``(clamped, clamped_flag)``.

    ``lo`` / ``hi`` may be Python ints or Amaranth values.  The clamped value has the shape of
    ``x`` widened to hold ``lo`` and ``hi``.
    """
    below = x < lo
    above = x > hi
    return Mux(below, lo, Mux(above, hi, x)), below | above


def _chunks(v: Value, chunk: int) -> list[tuple[Value, int]]:
    """Split ``v`` into ``chunk``-bit pieces (LSB first); only the top piece keeps ``v``'s sign."""
    n = len(v)
    if n <= chunk + 1:  # fits one DSP input as is
        return [(v, 0)]
    pieces = []
    for lsb in range(0, n, chunk):
        top = lsb + chunk >= n
        piece = v[lsb:min(n, lsb + chunk)]
        if top and v.shape().signed:
            piece = piece.as_signed()
        pieces.append((piece, lsb))
    return pieces


def partial_products(a: Value, b: Value, chunk: int = 17) -> list[tuple[Value, int]]:
    """Split ``a * b`` into partial products that each fit an 18x18 signed DSP multiplier.

    Returns a list of ``(product, shift)`` with ``a * b == sum(product << shift)``.  Lower chunks are
    unsigned ``chunk``-bit slices, the top chunk of a signed operand is signed, so each factor fits
    18 signed bits when ``chunk = 17``.  Register the products in one pipeline stage and add them
    with :func:`sum_products` in the next.
    """
    return [(pa * pb, sh) for pa, pb, sh in partial_operands(a, b, chunk)]


def partial_operands(a: Value, b: Value, chunk: int = 17) -> list[tuple[Value, Value, int]]:
    """The operand pairs of :func:`partial_products`: ``(a_piece, b_piece, shift)`` with
    ``a * b == sum((a_piece * b_piece) << shift)`` (for registered DSP blocks, :mod:`hw.dsp`)."""
    return [(pa, pb, sa + sb) for pa, sa in _chunks(a, chunk) for pb, sb in _chunks(b, chunk)]


def sum_products(products: list[Value], shifts: list[int], extra: Value | int = 0) -> Value:
    """``sum(p << s) + extra``, exact, as one carry chain (:func:`carry_save_sum`)."""
    terms = [Value.cast(p << s) if s else Value.cast(p) for p, s in zip(products, shifts)]
    if not (isinstance(extra, int) and extra == 0):
        terms.append(Value.cast(extra))
    return carry_save_sum(terms)


def carry_save_sum(terms: list[Value]) -> Value:
    """``sum(terms)``, exact, with the shape Amaranth gives the plain sum, as :func:`carry_save` and one
    carry chain, instead of one carry chain per term in series (issue #15)."""
    if len(terms) < 3:
        return sum(terms[1:], terms[0]) if terms else Const(0, 1)
    x, y, shape = carry_save(terms)
    return carry_save_add(x, y, shape)


def _extend(v: Value, w: int) -> Value:
    """``v`` as a ``w``-bit vector: sign- or zero-extended by its own shape, or its low ``w`` bits."""
    pad = w - len(v)
    if pad <= 0:
        return v[:w]
    return Cat(v, v[-1].replicate(pad) if v.shape().signed else Const(0, pad))


def carry_save(terms: list[Value]) -> tuple[Value, Value, object]:
    """Reduce ``terms`` to two values ``(x, y)`` with ``x + y == sum(terms)`` modulo ``2^W``.

    3:2 compressors (one LUT level each: ``a ^ b ^ c`` and the majority shifted left by one), no
    carry chain.  ``W`` is the width of the shape Amaranth gives the plain sum (returned as the third
    item); the sum fits it, so :func:`carry_save_add` of the two (registered or not) is exact.
    """
    plain = sum(terms[1:], terms[0])
    shape = plain.shape()
    w = shape.width
    ts = [_extend(Value.cast(t), w) for t in terms]
    if len(ts) == 1:
        ts.append(Const(0, w))
    while len(ts) > 2:
        a, b, c = ts[:3]
        maj = (a & b) | (a & c) | (b & c)
        ts = ts[3:] + [(a ^ b ^ c)[:w], Cat(Const(0, 1), maj[:w - 1])]
    return ts[0], ts[1], shape


def carry_save_difference(a: Value, products: list[Value], shifts: list[int]) -> tuple[Value, Value, object]:
    """``a - sum(p << s)`` as two values ``(x, y)`` with ``x + y`` equal to it modulo ``2^W``: 3:2
    compressors only, no carry chain (the final add, :func:`carry_save_add`, can be registered apart).

    ``W`` is the width of the shape Amaranth gives ``a - sum(p << s)`` (returned as the third item).
    Each subtrahend ``t`` enters as ``~t`` (``-t - 1`` modulo ``2^W``) and the constant ``n`` (the number
    of subtrahends) restores the ``-1``s: ``a + sum(~t) + n == a - sum(t)`` modulo ``2^W``.
    """
    ts = [Value.cast(p << sh) if sh else Value.cast(p) for p, sh in zip(products, shifts)]
    shape = (a - sum(ts[1:], ts[0])).shape() if ts else Value.cast(a).shape()
    w = shape.width
    terms = [_extend(Value.cast(a), w)] + [~_extend(t, w) for t in ts] + ([Const(len(ts), w)] if ts else [])
    x, y, _ = carry_save(terms)
    return x[:w], y[:w], shape


def carry_save_add(x: Value, y: Value, shape) -> Value:
    """The final add of :func:`carry_save`: ``x + y`` modulo ``2^W`` read with ``shape``."""
    total = (x + y)[:shape.width]
    return total.as_signed() if shape.signed else total


def leading_one(m: Module, v: Value) -> Value:
    """Index of the most significant set bit of unsigned ``v`` (``bit_length(v) - 1``); 0 for ``v == 0``.

    A balanced binary search (``log2(len(v))`` levels of muxes, one signal per level added to ``m``
    so the levels are shared, not duplicated), used by ``round_log2``.
    """
    n = len(v)
    levels = max(1, (n - 1).bit_length())
    width = 1 << levels
    cur = Signal(width, name="lod_in")
    m.d.comb += cur.eq(v)
    bits = []
    for level in reversed(range(levels)):
        half = 1 << level
        hi_nonzero = Signal(name=f"lod_bit{level}")
        nxt = Signal(half, name=f"lod_l{level}")
        m.d.comb += [hi_nonzero.eq(cur[half:2 * half].any()),
                     nxt.eq(Mux(hi_nonzero, cur[half:2 * half], cur[:half]))]
        bits.append(hi_nonzero)
        cur = nxt
    return Cat(*reversed(bits))  # bits were collected MSB first


def bits_select(m: Module, bits: Value, per_width: dict[int, Value | int], width, default=0) -> Signal:
    """A signal equal to ``per_width[k]`` when the run-time code width ``bits == k``, else ``default``."""
    out = Signal(width)
    with m.Switch(bits):
        for k, val in per_width.items():
            with m.Case(k):
                m.d.comb += out.eq(val)
        with m.Default():
            m.d.comb += out.eq(default)
    return out
