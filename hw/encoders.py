"""Quantizer (encoder) units: fixed point -> codes (docs/datapath.md sections 5 and 8).

Two components, each built once for 8-bit codes with the code width and format as run-time config:

* :class:`PerPatchEncoder` -- ``encode_per_patch`` (and ``encode_uniform`` with outliers disabled):
  per-row reciprocal ``R[r]`` and zero point ``z[r]`` in the stream payload, outlier extraction
  (``|x| > ALPHA``) onto a second stream of ``(row, col, val)`` entries.
* :class:`ActivationEncoder` -- ``encode_log2`` (post-softmax), ``encode_shiftlog2`` (base 2 and
  base sqrt(2), post-GELU) and ``encode_three_region`` (post-GELU) behind one multiplier
  ``w = round_shift(u * R, SE)`` and one leading-one detector.

The spec operations are the functions :func:`round_log2`, :func:`round_log_sqrt2`,
:func:`encode_log2`, :func:`encode_shiftlog2` and :func:`encode_three_region` below (they build the
final combinational step from registered intermediates); the components pipeline around them.
"""
from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal, Value, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from vitaccel.sim.formats import BITS

from .common import CodeFormat, leading_one, partial_products, round_half, sum_products

__all__ = ["PerPatchEncoder", "ActivationEncoder", "encode_per_patch", "round_log2", "round_log_sqrt2",
           "encode_log2", "encode_shiftlog2", "encode_three_region", "PER_PATCH_LATENCY",
           "ACTIVATION_LATENCY", "PER_PATCH_OUT", "PER_PATCH_OUTL", "OUTLIER_FRAC_BITS", "LOG2_THRESHOLD",
           "LOG_SQRT2_THRESHOLDS"]

OUTLIER_FRAC_BITS = 2
LOG2_THRESHOLD = 46341
LOG_SQRT2_THRESHOLDS = (38968, 55109)
LOG_FRAC = 16
#: :class:`PerPatchEncoder` output layouts (also those of :class:`hw.dynamic_per_patch.DynamicPerPatchEncoder`):
#: dense code per element and one outlier entry.
PER_PATCH_OUT = data.StructLayout({"code": unsigned(8), "sat": unsigned(1), "outlier": unsigned(1)})
PER_PATCH_OUTL = data.StructLayout({"row": unsigned(16), "col": unsigned(16), "val": signed(16),
                                    "overflow": unsigned(1)})
#: Register stages of :class:`PerPatchEncoder`: partial products, sum, rounding add, shift, output.
PER_PATCH_LATENCY = 5
#: Register stages of :class:`ActivationEncoder`: products, sum, shift, leading one, mantissa, output.
ACTIVATION_LATENCY = 6


def _pipeline_regs(m: Module, en: Signal):
    """Return ``stage(value, name)``: a register loaded from ``value`` when ``en``."""

    def stage(value, name):
        reg = Signal(Value.cast(value).shape(), name=name)
        with m.If(en):
            m.d.sync += reg.eq(value)
        return reg

    return stage


def _sticky_counter(m: Module, counter: Signal, inc: Value, clear: Value) -> None:
    with m.If(clear):
        m.d.sync += counter.eq(0)
    with m.Elif(inc & (counter != (1 << len(counter)) - 1)):
        m.d.sync += counter.eq(counter + 1)


# ============================================================================ encode_per_patch

def encode_per_patch(m: Module, k: int, dense_rs: Value, z: Value, is_outlier: Value) -> tuple[Value, Value]:
    """Dense code of ``encode_per_patch`` for code width ``k``: ``saturate(round_shift(x*R, SE) + z, 0, 2^k-1)``,
    ``z`` at an outlier position.  Returns ``(code, saturated)``; outliers are never counted as saturated.
    """
    v = dense_rs + z
    hi = (1 << k) - 1
    code = Mux(is_outlier, z, Mux(v < 0, 0, Mux(v > hi, hi, v)))
    sat = ~is_outlier & ((v < 0) | (v > hi))
    return code, sat


class PerPatchEncoder(wiring.Component):
    """``encode_per_patch``: uniform per-patch codes with sparse outlier extraction (sections 5, 8.1).

    Parameters
    ----------
    chunk : int
        Multiplier split width (17 -> 18x18 DSP partial products).

    Attributes
    ----------
    i : In(stream.Signature(StructLayout))
        ``x`` (signed 32, fixed point with ``F`` fraction bits), ``r`` (24, ``R[row]``), ``z``
        (8, ``z[row]``), ``row`` (16), ``col`` (16).  Feed rows in order, columns in order within a
        row, so the outlier list comes out sorted by row then column.
    o : Out(stream.Signature(StructLayout))
        Dense code per input: ``code`` (8), ``sat`` (code clipped at 0 / 2^k-1), ``outlier``
        (this position is an outlier; ``code = z``).
    outl : Out(stream.Signature(StructLayout))
        One entry per outlier: ``row``, ``col``, ``val`` (signed 16, units ``s[r] * 2^-2``),
        ``overflow`` (``val`` saturated to int16: a range fault).
    se : In(6)
        ``SE`` (0..56; ``>= 2`` when outliers are enabled).
    bits : In(4)
        Code width ``k`` (4, 6, 8).
    alpha : In(32)
        ``ALPHA = floor(alpha * 2^F)``: ``|x| > ALPHA`` is an outlier.
    outliers_en : In(1)
        0 -> ``encode_uniform`` (no outliers).
    sat_count, outlier_count, overflow_count : Out(32)
        Counters since reset / ``clear`` (dense saturations, outlier entries, int16 overflows).
    clear : In(1)

    Notes
    -----
    Latency :data:`PER_PATCH_LATENCY` = 5.  The pipeline advances when both outputs can take a
    beat (``i.ready = (~o.valid | o.ready) & (~outl.valid | outl.ready)``).
    """

    def __init__(self, chunk: int = 17):
        self.chunk = chunk
        super().__init__({
            "i": In(stream.Signature(data.StructLayout({
                "x": signed(32), "r": unsigned(24), "z": unsigned(8), "row": unsigned(16), "col": unsigned(16)}))),
            "o": Out(stream.Signature(PER_PATCH_OUT)),
            "outl": Out(stream.Signature(PER_PATCH_OUTL)),
            "se": In(6),
            "bits": In(4),
            "alpha": In(32),
            "outliers_en": In(1),
            "sat_count": Out(32),
            "outlier_count": Out(32),
            "overflow_count": Out(32),
            "clear": In(1),
        })

    def elaborate(self, platform):
        m = Module()
        en = Signal()
        m.d.comb += [en.eq((~self.o.valid | self.o.ready) & (~self.outl.valid | self.outl.ready)),
                     self.i.ready.eq(en)]
        stage = _pipeline_regs(m, en)
        valid = [Signal(name=f"valid{s}") for s in range(1, PER_PATCH_LATENCY)]
        with m.If(en):
            m.d.sync += valid[0].eq(self.i.valid)
            for s in range(1, len(valid)):
                m.d.sync += valid[s].eq(valid[s - 1])

        p = self.i.payload
        fo = OUTLIER_FRAC_BITS
        # S1: partial products of x * R; outlier test |x| > ALPHA
        absx = Mux(p.x < 0, -p.x, p.x)
        pp = partial_products(p.x, p.r, self.chunk)
        s1 = [stage(prod, f"pp{j}") for j, (prod, _) in enumerate(pp)]
        side = {"z": p.z, "row": p.row, "col": p.col, "out": self.outliers_en & (absx > self.alpha)}
        side1 = {n: stage(v, f"{n}1") for n, v in side.items()}
        # S2: product
        prod2 = stage(sum_products(s1, [sh for _, sh in pp]), "prod")
        side2 = {n: stage(v, f"{n}2") for n, v in side1.items()}
        # S3: rounding adds for SE (dense) and SE - FO (outlier value)
        se_o = Mux(self.se >= fo, self.se - fo, 0)[:6]
        d3 = stage(prod2 + round_half(self.se, 56), "dense_sum")
        o3 = stage(prod2 + round_half(se_o, 56), "outl_sum")
        side3 = {n: stage(v, f"{n}3") for n, v in side2.items()}
        # S4: shifts
        d4 = stage(d3 >> self.se, "dense_rs")
        o4 = stage(o3 >> se_o, "outl_rs")
        side4 = {n: stage(v, f"{n}4") for n, v in side3.items()}
        # S5 (outputs): encode_per_patch dense code, outlier value saturate to int16
        code = Signal(8)
        sat = Signal()
        m.d.comb += [code.eq(0), sat.eq(1)]
        with m.Switch(self.bits):
            for k in BITS:
                with m.Case(k):
                    c, s = encode_per_patch(m, k, d4, side4["z"], side4["out"])
                    m.d.comb += [code.eq(c), sat.eq(s)]
        ovf = (o4 < -(1 << 15)) | (o4 > (1 << 15) - 1)
        val = Mux(o4 < -(1 << 15), -(1 << 15), Mux(o4 > (1 << 15) - 1, (1 << 15) - 1, o4))
        last_valid = valid[-1]
        with m.If(en):
            m.d.sync += [
                self.o.valid.eq(last_valid),
                self.o.payload.code.eq(code),
                self.o.payload.sat.eq(sat),
                self.o.payload.outlier.eq(side4["out"]),
                self.outl.valid.eq(last_valid & side4["out"]),
                self.outl.payload.row.eq(side4["row"]),
                self.outl.payload.col.eq(side4["col"]),
                self.outl.payload.val.eq(val),
                self.outl.payload.overflow.eq(ovf),
            ]
        o_fire = self.o.valid & self.o.ready
        ol_fire = self.outl.valid & self.outl.ready
        # While the pipeline is held by the other output, a consumed beat must not be offered again.
        with m.If(~en):
            with m.If(o_fire):
                m.d.sync += self.o.valid.eq(0)
            with m.If(ol_fire):
                m.d.sync += self.outl.valid.eq(0)
        _sticky_counter(m, self.sat_count, o_fire & self.o.payload.sat, self.clear)
        _sticky_counter(m, self.outlier_count, ol_fire, self.clear)
        _sticky_counter(m, self.overflow_count, ol_fire & self.outl.payload.overflow, self.clear)
        return m


# ============================================================================ log / three-region

def _signed(v: Value) -> Value:
    """Unsigned ``v`` as a signed value of the same magnitude (one bit wider)."""
    return Cat(v, Const(0, 1)).as_signed()


def round_log2(p: Value, mant: Value) -> Value:
    """``round_log2(v) = p + (m >= 46341)`` from ``p = bit_length(v) - 1`` and the 16-bit mantissa."""
    return p + (mant >= LOG2_THRESHOLD)


def round_log_sqrt2(p: Value, mant: Value) -> Value:
    """``round_log_sqrt2(v) = 2p + (m >= 38968) + (m >= 55109)``."""
    t1, t3 = LOG_SQRT2_THRESHOLDS
    return (p << 1) + (mant >= t1) + (mant >= t3)


def mantissa16(v: Value, p: Value) -> Value:
    """16-bit normalised mantissa: ``v << (15 - p)`` if ``p <= 15`` else ``v >> (p - 15)``."""
    return Mux(p <= 15, (v << (15 - p)[:4])[:16], (v >> (p - 15)[:len(p)])[:16])


def encode_log2(k: int, a_zero: Value, rl2: Value, frac: Value) -> Value:
    """``encode_log2`` (post-softmax): ``a == 0 -> ZERO``; ``q = F - round_log2(a)``; ``q < 0 -> 0``;
    ``q > QMAX -> ZERO``."""
    qmax, zero = min((1 << k) - 2, 15), (1 << k) - 1
    q = _signed(frac) - _signed(rl2)
    return Mux(a_zero, zero, Mux(q < 0, 0, Mux(q > qmax, zero, q)))


def encode_shiftlog2(k: int, base: str, nonpos: Value, rl: Value) -> Value:
    """``encode_shiftlog2``: ``u <= 0 or w <= 0 -> QMAX``; base 2: ``saturate(16 - round_log2(w), 0, QMAX)``;
    base sqrt(2): ``saturate(32 - round_log_sqrt2(w), 0, QMAX)``."""
    if base == "2":
        qmax, top = min((1 << k) - 1, 15), LOG_FRAC
    else:
        qmax, top = min((1 << k) - 1, 31), 2 * LOG_FRAC
    q = top - _signed(rl)
    return Mux(nonpos, qmax, Mux(q < 0, 0, Mux(q > qmax, qmax, q)))


def encode_three_region(k: int, w_neg: Value, n: Value, n1: Value, n2: Value) -> Value:
    """``encode_three_region`` final step for width ``k`` from ``n = round_shift(-w, 16)``,
    ``n1 = round_shift(w, 16 + m0)``, ``n2 = round_shift(w, 16 + m1)``."""
    P = (1 << (k - 2)) - 1
    nmax = (1 << (k - 1)) - 1
    nc = Mux(n > nmax, nmax, n)[:k - 1]
    code_neg = Mux(nc == 0, 0, Cat(nc[:k - 2], Const(1, 1), nc[k - 2]))
    n2c = Mux(n2 > P, P, n2)[:k - 2]
    code_pos = Mux(n1 <= P, n1[:k - 2], Cat(n2c, Const(0, 1), Const(1, 1)))
    return Mux(w_neg, code_neg, code_pos)


class ActivationEncoder(wiring.Component):
    """``encode_log2`` / ``encode_shiftlog2`` (base 2, sqrt 2) / ``encode_three_region`` (section 8.2, 8.3).

    ``w = round_shift(u * R, SE)`` with ``u = x + SH`` (shiftlog2) or ``u = x`` (three_region); for
    ``log2`` the multiplier is bypassed (``w = a = x``, ``R``/``SE``/``SH`` ignored).

    Attributes
    ----------
    i : In(stream.Signature(StructLayout))
        ``x`` (signed 32): fixed point with ``F`` fraction bits (``a`` for log2, ``a >= 0``).
    o : Out(stream.Signature(StructLayout))
        ``code`` (8) and ``invalid`` (negative ``a`` for log2, unsupported ``fmt``/``bits``; code 0).
    fmt : In(CodeFormat)
        ``LOG2``, ``SHIFTLOG2_BASE2``, ``SHIFTLOG2_SQRT2`` or ``THREE_REGION`` (``UNIFORM`` is invalid
        here: use :class:`PerPatchEncoder`).
    bits : In(4)
        Code width ``k`` (4, 6, 8).
    frac : In(5)
        ``F`` of the log2 input (15 for softmax).
    sh : In(32)
        ``SH = round_half_up(shift * 2^F)`` (shiftlog2).
    r : In(24), se : In(6)
        ``R`` and ``SE`` (shiftlog2, three_region).
    m0, m1 : In(4)
        three_region exponents.

    Notes
    -----
    Latency :data:`ACTIVATION_LATENCY` = 6; ``i.ready = ~o.valid | o.ready``.
    """

    def __init__(self, chunk: int = 17):
        self.chunk = chunk
        super().__init__({
            "i": In(stream.Signature(data.StructLayout({"x": signed(32)}))),
            "o": Out(stream.Signature(data.StructLayout({"code": unsigned(8), "invalid": unsigned(1)}))),
            "fmt": In(CodeFormat),
            "bits": In(4),
            "frac": In(5),
            "sh": In(32),
            "r": In(24),
            "se": In(6),
            "m0": In(4),
            "m1": In(4),
        })

    def elaborate(self, platform):
        m = Module()
        en = Signal()
        m.d.comb += [en.eq(~self.o.valid | self.o.ready), self.i.ready.eq(en)]
        stage = _pipeline_regs(m, en)
        valid = [Signal(name=f"valid{s}") for s in range(1, ACTIVATION_LATENCY)]
        with m.If(en):
            m.d.sync += valid[0].eq(self.i.valid)
            for s in range(1, len(valid)):
                m.d.sync += valid[s].eq(valid[s - 1])
            m.d.sync += self.o.valid.eq(valid[-1])

        fmt = self.fmt
        is_log2 = fmt == CodeFormat.LOG2
        is_shift = (fmt == CodeFormat.SHIFTLOG2_BASE2) | (fmt == CodeFormat.SHIFTLOG2_SQRT2)
        x = self.i.payload.x
        # S1: u, partial products of u * R
        u = Signal(signed(34))
        m.d.comb += u.eq(Mux(is_shift, x + self.sh, x))
        r_eff = Mux(is_log2, 1, self.r)[:24]
        se_eff = Mux(is_log2, 0, self.se)[:6]
        pp = partial_products(u, r_eff, self.chunk)
        s1 = [stage(prod, f"pp{j}") for j, (prod, _) in enumerate(pp)]
        unonpos1 = stage(u <= 0, "unonpos1")
        bad1 = stage(is_log2 & (x < 0), "bad1")
        # S2: w * 2^SE + half
        # |u| < 2^34 and R < 2^24, so |u * R + 2^(SE-1)| < 2^59: 60 signed bits hold it exactly.
        sum2 = stage(sum_products(s1, [sh for _, sh in pp], round_half(se_eff, 56))[:60].as_signed(), "wsum")
        unonpos2, bad2 = stage(unonpos1, "unonpos2"), stage(bad1, "bad2")
        # S3: w
        w3 = stage(sum2 >> se_eff, "w")
        unonpos3, bad3 = stage(unonpos2, "unonpos3"), stage(bad2, "bad3")
        # S4: leading one of w (> 0); three_region rounding adds
        wpos = Signal(len(w3) - 1)
        m.d.comb += wpos.eq(Mux(w3 > 0, w3, 0))
        w4 = stage(wpos, "wpos")
        p4 = stage(leading_one(m, wpos), "p")
        nonpos4 = stage(unonpos3 | (w3 <= 0), "nonpos4")
        wneg4 = stage(w3 < 0, "wneg4")
        wzero4 = stage(w3 == 0, "wzero4")
        nsum4 = stage(-w3 + (1 << (LOG_FRAC - 1)), "nsum")
        n1sum4 = stage(w3 + round_half(LOG_FRAC + self.m0, 32), "n1sum")
        n2sum4 = stage(w3 + round_half(LOG_FRAC + self.m1, 32), "n2sum")
        bad4 = stage(bad3, "bad4")
        # S5: mantissa, rounded logs; three_region shifts
        mant = mantissa16(w4, p4)
        rl2_5 = stage(round_log2(p4, mant), "rl2")
        rls2_5 = stage(round_log_sqrt2(p4, mant), "rls2")
        nonpos5, wneg5, wzero5, bad5 = (stage(nonpos4, "nonpos5"), stage(wneg4, "wneg5"),
                                        stage(wzero4, "wzero5"), stage(bad4, "bad5"))
        n5 = stage(nsum4 >> LOG_FRAC, "n")
        n1_5 = stage(n1sum4 >> (LOG_FRAC + self.m0), "n1")
        n2_5 = stage(n2sum4 >> (LOG_FRAC + self.m1), "n2")
        # S6 (output): final code per format and width
        code = Signal(8)
        invalid = Signal()
        m.d.comb += [code.eq(0), invalid.eq(1)]
        with m.Switch(self.bits):
            for k in BITS:
                with m.Case(k):
                    with m.Switch(fmt):
                        with m.Case(CodeFormat.LOG2):
                            m.d.comb += [code.eq(Mux(bad5, 0, encode_log2(k, wzero5, rl2_5, self.frac))),
                                         invalid.eq(bad5)]
                        with m.Case(CodeFormat.SHIFTLOG2_BASE2):
                            m.d.comb += [code.eq(encode_shiftlog2(k, "2", nonpos5, rl2_5)), invalid.eq(0)]
                        with m.Case(CodeFormat.SHIFTLOG2_SQRT2):
                            m.d.comb += [code.eq(encode_shiftlog2(k, "sqrt2", nonpos5, rls2_5)), invalid.eq(0)]
                        with m.Case(CodeFormat.THREE_REGION):
                            m.d.comb += [code.eq(encode_three_region(k, wneg5, n5, n1_5, n2_5)), invalid.eq(0)]
        with m.If(en):
            m.d.sync += [self.o.payload.code.eq(code), self.o.payload.invalid.eq(invalid)]
        return m
