"""A-operand decoder: code -> decode triple ``(neg, mag, sh)`` and ``D`` (docs/datapath.md section 4).

The decoder sits at the edge of the MAC array.  One :class:`OperandDecoder` decodes ``lanes`` codes
per cycle (one per array row) for every A format at run time; a processing element then computes
``(+-b * mag) << sh``.

The per-format logic lives in the functions :func:`decode_uniform`, :func:`decode_log2`,
:func:`decode_shiftlog2` and :func:`decode_three_region` (same names as in ``sim/reference.py``);
each returns a :class:`Decoded` record of expressions for one *fixed* code width ``k``; the
component instantiates them for every ``k`` in ``sim.formats.BITS`` and selects with the ``bits`` config port.
"""
from __future__ import annotations

from dataclasses import dataclass

from amaranth.hdl import Cat, Const, Module, Mux, Signal, Value, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from vitaccel.sim.formats import BITS

from .common import CodeFormat
from .kept import kept_copies

__all__ = ["OperandDecoder", "DecodedLayout", "TripleLayout", "Decoded", "decode_uniform", "decode_log2",
           "decode_shiftlog2", "decode_three_region", "CODE_BITS", "MAG_BITS", "SH_BITS", "D_BITS"]

#: Widest code the decoder accepts (k <= 8).
CODE_BITS = 8
#: ``mag`` is at most 9 bits unsigned (256 for base-sqrt(2) even codes), ``sh`` at most 15.
MAG_BITS = 9
SH_BITS = 4
#: ``D = (-1)^neg * mag << sh`` fits 25 signed bits (max ``256 << 15 = 2^23``).
D_BITS = 25

#: The triple of a decoded code (what the MAC array uses, :data:`hw.mac_array.TripleLayout`).
TripleLayout = data.StructLayout({"neg": unsigned(1), "mag": unsigned(MAG_BITS), "sh": unsigned(SH_BITS)})

#: Output record of one decoded code.
DecodedLayout = data.StructLayout({
    "neg": unsigned(1),        # sign of D
    "mag": unsigned(MAG_BITS),  # magnitude multiplier
    "sh": unsigned(SH_BITS),   # left shift
    "d": signed(D_BITS),       # D = (-1)^neg * (mag << sh)
    "invalid": unsigned(1),    # code invalid for the configured format/width (triple forced to 0)
})


@dataclass
class Decoded:
    """Combinational decode of one code: triple plus an ``invalid`` flag."""

    neg: Value
    mag: Value
    sh: Value
    invalid: Value


def _high_bits_set(code: Value, k: int) -> Value:
    """Code has bits at or above position ``k`` (not a k-bit code)."""
    return code[k:].any() if len(code) > k else Const(0, 1)


def decode_uniform(code: Value, k: int) -> Decoded:
    """``uniform`` (4.1): triple ``(0, q, 0)``."""
    return Decoded(Const(0, 1), code, Const(0, SH_BITS), _high_bits_set(code, k))


def decode_log2(code: Value, k: int) -> Decoded:
    """``log2`` post-softmax (4.2): ``(0, 1, QMAX - q)``, ``ZERO = 2^k - 1`` -> ``(0, 0, 0)``.

    Codes in ``(QMAX, ZERO)`` are invalid.
    """
    qmax = min((1 << k) - 2, 15)
    zero = (1 << k) - 1
    is_zero = code == zero
    valid = code <= qmax
    sh = Mux(valid, Const(qmax, SH_BITS) - code, 0)[:SH_BITS]
    return Decoded(Const(0, 1), Mux(valid, 1, 0), sh, ~(valid | is_zero))


def decode_shiftlog2(code: Value, k: int, base: str) -> Decoded:
    """``shiftlog2`` (4.3): ``(0, C[q & 1], H - e)``; base 2: ``C = (1, 1)``, ``e = q``, ``H = QMAX``;
    base sqrt(2): ``C = (256, 181)``, ``e = q >> 1``, ``H = QMAX >> 1``.  Codes above QMAX are invalid.
    """
    if base == "2":
        qmax = min((1 << k) - 1, 15)
        c0, c1, h, e = 1, 1, qmax, code
    elif base == "sqrt2":
        qmax = min((1 << k) - 1, 31)
        c0, c1, h, e = 256, 181, qmax >> 1, code >> 1
    else:
        raise ValueError(f"decode_shiftlog2: unknown base {base!r} (expected '2' or 'sqrt2')")
    valid = code <= qmax
    mag = Mux(code[0], c1, c0)
    sh = (Const(h, SH_BITS + 1) - e)[:SH_BITS]
    return Decoded(Const(0, 1), mag, sh, ~valid)


def decode_three_region(code: Value, k: int, m0: Value, m1: Value) -> Decoded:
    """``three_region`` (4.4): ``[r | g | mag(k-2)]``.

    ``g = 0``: ``(0, mag, m0)`` (R1) or ``(0, mag, m1)`` (R2) by ``r``; ``g = 1``:
    ``(1, (r << (k-2)) | mag, 0)`` (R0, negative).
    """
    r = code[k - 1]
    g = code[k - 2]
    low = code[:k - 2]
    mag = Mux(g, low | (r << (k - 2)), low)
    sh = Mux(g, 0, Mux(r, m1, m0))
    return Decoded(g, mag, sh, _high_bits_set(code, k))


class OperandDecoder(wiring.Component):
    """Decode ``lanes`` A-operand codes per cycle into triples ``(neg, mag, sh)`` and ``D``.

    Parameters
    ----------
    lanes : int
        Codes per stream beat (one per MAC-array row), default 1.
    copies : int
        Register copies of the decoded triples (default 1: only :attr:`o`).  With ``copies > 1`` the
        ``(neg, mag, sh)`` of every lane is also registered in ``copies - 1`` further copies
        (:attr:`o_copies`) that synthesis keeps apart (:func:`hw.kept.kept_copies`): each drives its
        own part of the MAC array's broadcast registers (issue #15, session 37).
    config_copies : int
        0 (default): the config ports decode directly.  ``n > 0``: they are registered first, in ``n``
        kept copies (:func:`hw.kept.kept_copies`; lane ``j`` uses copy ``j * n // lanes``), so a
        config change takes effect one cycle after it reaches the ports, and no single config
        register drives every lane's decode (issue #15, session 43: the width register's fanout was
        the 8 x 8 W4A4 engine's worst path, 6.1 ns of routing).
    zero_port : bool
        Add the :attr:`zero` input (default ``False``).

    Attributes
    ----------
    i : In(stream.Signature(ArrayLayout(8, lanes)))
        Codes (``k``-bit codes in the low bits of each 8-bit lane).
    o : Out(stream.Signature(ArrayLayout(DecodedLayout, lanes)))
        One :data:`DecodedLayout` record per lane.  An invalid code (bits above ``k``, a ``log2``
        code in ``(QMAX, ZERO)``, a ``shiftlog2`` code above QMAX) decodes to ``(0, 0, 0)`` with
        ``invalid = 1``.
    fmt : In(CodeFormat)
        Format (``uniform``, ``log2``, ``shiftlog2`` base 2 / sqrt(2), ``three_region``).
    bits : In(4)
        Code width ``k`` (4, 6 or 8; any other value marks every code invalid).
    m0, m1 : In(4)
        ``three_region`` exponents (``0 <= m0 <= m1 <= 15``).
    o_copies : Out(ArrayLayout(ArrayLayout(TripleLayout, lanes), copies - 1))
        Only with ``copies > 1``: the triples of :attr:`o` (``neg``, ``mag``, ``sh``), loaded with them.
    invalid_seen : Out(1)
        Sticky: an invalid code was decoded since reset / ``clear`` (set one cycle after the beat
        carrying it enters ``o``; a beat decoded in the cycle of ``clear`` counts after it).
    zero : In(1)
        Only with ``zero_port``: the beat decodes to the zero triple ``(0, 0, 0)`` with ``invalid`` 0,
        whatever its codes.  The layer engine drives it with "no issue in this cycle" instead of
        masking the codes to 0 in front of the decode, so its issue register enters at the decode's
        last multiplexer (issue #15, session 43: the masked codes put that register's fanout in
        front of the whole decode, 8.96 ns in the 8 x 8 W8A8 engine).
    clear : In(1)
        Clears ``invalid_seen``.

    Notes
    -----
    Latency 1 cycle (registered output).  Config ports must be held stable while beats are in
    flight (with ``config_copies``, from one cycle before the first beat on).
    ``i.ready = ~o.valid | o.ready`` (combinational pass-through of back-pressure).
    """

    def __init__(self, lanes: int = 1, copies: int = 1, config_copies: int = 0, zero_port: bool = False):
        if lanes < 1:
            raise ValueError(f"OperandDecoder: lanes must be >= 1, got {lanes}")
        if copies < 1:
            raise ValueError(f"OperandDecoder: copies must be >= 1, got {copies}")
        if not 0 <= config_copies <= lanes:
            raise ValueError(f"OperandDecoder: config_copies must be in 0..{lanes}, got {config_copies}")
        self.lanes, self.copies, self.config_copies, self.zero_port = lanes, copies, config_copies, zero_port
        extra = {"o_copies": Out(data.ArrayLayout(data.ArrayLayout(TripleLayout, lanes), copies - 1))} if copies > 1 else {}
        if zero_port:
            extra["zero"] = In(1)
        super().__init__({
            "i": In(stream.Signature(data.ArrayLayout(unsigned(CODE_BITS), lanes))),
            "o": Out(stream.Signature(data.ArrayLayout(DecodedLayout, lanes))),
            "fmt": In(CodeFormat),
            "bits": In(4),
            "m0": In(4),
            "m1": In(4),
            "invalid_seen": Out(1),
            "clear": In(1),
            **extra,
        })

    def decode_lane(self, m: Module, code: Value, idle: Value = Const(0, 1), config=None) -> Signal:
        """Combinational decode of one lane under the run-time config (``config``: ``(fmt, bits, m0,
        m1)``, default the ports); returns a DecodedLayout view (the zero triple with ``invalid`` 0
        when ``idle``)."""
        fmt, bits, m0, m1 = config if config is not None else (self.fmt, self.bits, self.m0, self.m1)
        out = Signal(DecodedLayout)
        neg = Signal()
        mag = Signal(MAG_BITS)
        sh = Signal(SH_BITS)
        invalid = Signal()
        m.d.comb += invalid.eq(1)  # unsupported bits / format
        with m.Switch(bits):
            for k in BITS:
                with m.Case(k):
                    cases = {
                        CodeFormat.UNIFORM: decode_uniform(code, k),
                        CodeFormat.LOG2: decode_log2(code, k),
                        CodeFormat.SHIFTLOG2_BASE2: decode_shiftlog2(code, k, "2"),
                        CodeFormat.SHIFTLOG2_SQRT2: decode_shiftlog2(code, k, "sqrt2"),
                        CodeFormat.THREE_REGION: decode_three_region(code, k, m0, m1),
                    }
                    with m.Switch(fmt):
                        for case, dec in cases.items():
                            with m.Case(case):
                                m.d.comb += [neg.eq(dec.neg), mag.eq(dec.mag), sh.eq(dec.sh),
                                             invalid.eq(dec.invalid)]
        kill = invalid | idle
        mag_v = Mux(kill, 0, mag)
        neg_v = Mux(kill, 0, neg)
        sh_v = Mux(kill, 0, sh)
        shifted = (mag_v << sh_v)[:D_BITS - 1]
        m.d.comb += [
            out.neg.eq(neg_v), out.mag.eq(mag_v), out.sh.eq(sh_v), out.invalid.eq(invalid & ~idle),
            out.d.eq(Mux(neg_v, -shifted, shifted)),
        ]
        return out

    def _configs(self, m: Module, platform) -> list:
        """With ``config_copies``: that many kept register copies of ``(fmt, bits, m0, m1)``
        (:func:`hw.kept.kept_copies`), lane ``j`` decoding with copy ``j * config_copies // lanes``."""
        if not self.config_copies:
            return []
        cat = Cat(self.fmt, self.bits, self.m0, self.m1)
        out = []
        for q in kept_copies(m, platform, cat, self.config_copies, "cfg_copy"):
            fmt = Signal(CodeFormat, name=f"{q.name}_fmt")
            w = len(Value.cast(fmt))
            m.d.comb += Value.cast(fmt).eq(q[:w])
            out.append((fmt, q[w:w + 4], q[w + 4:w + 8], q[w + 8:w + 12]))
        return out

    def elaborate(self, platform):
        m = Module()
        en = Signal()
        m.d.comb += [en.eq(~self.o.valid | self.o.ready), self.i.ready.eq(en)]
        lanes_out = []
        configs = self._configs(m, platform)
        for lane in range(self.lanes):
            dec = self.decode_lane(m, self.i.payload[lane], self.zero if self.zero_port else Const(0, 1),
                                   configs[lane * len(configs) // self.lanes] if configs else None)
            lanes_out.append(dec)
        with m.If(en):
            m.d.sync += self.o.valid.eq(self.i.valid)
            with m.If(self.i.valid):
                for lane, dec in enumerate(lanes_out):
                    m.d.sync += self.o.payload[lane].eq(dec)
        if self.copies > 1:
            triples = Cat(*[Cat(d.neg, d.mag, d.sh) for d in lanes_out])
            for k, q in enumerate(kept_copies(m, platform, triples, self.copies - 1, "o_copy", en=en & self.i.valid)):
                m.d.comb += self.o_copies[k].as_value().eq(q)
        # the sticky flag a cycle after the decode: one registered hit per lane, then their OR (the
        # decode logic and the OR of every lane in front of the flag's enable was among the 8 x 8 W8A8
        # engine's worst paths, issue #15 session 43); a code decoded in the cycle of ``clear`` counts
        # after the clear
        hits = Signal(self.lanes, name="invalid_hit")
        m.d.sync += hits.eq(Mux(en & self.i.valid, Cat(*[d.invalid for d in lanes_out]), 0))
        with m.If(self.clear):
            m.d.sync += self.invalid_seen.eq(0)
        with m.Elif(hits.any()):
            m.d.sync += self.invalid_seen.eq(1)
        return m

