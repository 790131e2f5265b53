"""Requantiser: the per-patch scale pipeline of docs/datapath.md section 7.

```
t   = round_shift(acc * Mr, Sr)                 (per row / patch, "row stage")
v   = round_shift(t * Mc + Bq, Sc)              (per column, with bias, "column stage")
out = saturate(v + z_out, lo, hi)               (lo/hi from out_fmt and k)
```

Every element carries its own ``Mr``, ``Mc``, ``Sc`` and ``Bq`` in the stream payload (the engine
reads them from its row / column parameter tables as the accumulators drain), so this unit holds no
state but its pipeline registers and the saturation counter.  ``Sr``, ``z_out``, ``out_fmt`` and
``bits`` are per-layer config ports.
"""
from __future__ import annotations

from amaranth.hdl import Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from .common import OutFormat, partial_products, round_half, sum_products

__all__ = ["Requantiser", "requant_in_layout", "requant_out_layout", "LATENCY"]

#: Register stages between input and output: row multiplier (partials, sum), ``>> Sr``, range
#: check, column multiplier (partials, sum), ``>> Sc`` in two steps (coarse, fine), ``+ z_out`` with
#: the range comparisons, saturate.
LATENCY = 10


def requant_in_layout(acc_bits: int, tag_bits: int) -> data.StructLayout:
    """Input payload: accumulator and the element's row/column parameters (+ a pass-through tag)."""
    return data.StructLayout({
        "acc": signed(acc_bits),   # acc[r, c]
        "mr": unsigned(16),        # Mr[r], 0 <= Mr <= 2^Sr
        "mc": unsigned(16),        # Mc[c]
        "sc": unsigned(6),         # Sc[c], 0..47
        "bq": signed(48),          # Bq[c], |Bq| < 2^47
        "tag": unsigned(tag_bits),  # user data carried to the output (row/col/last), not interpreted
    })


def requant_out_layout(tag_bits: int) -> data.StructLayout:
    """Output payload: the saturated result and its flags."""
    return data.StructLayout({
        "value": signed(32),       # out[r, c] (ucode/scode codes or fixed16/fixed32 values)
        "sat": unsigned(1),        # this element was clamped to [lo, hi]
        "fault": unsigned(1),      # t did not fit acc_bits (Mr > 2^Sr: a config fault); t was clamped
        "tag": unsigned(tag_bits),
    })


class Requantiser(wiring.Component):
    """Two-stage integer requantiser (section 7), pipelined, with a saturation counter.

    Parameters
    ----------
    acc_bits : int
        Signed accumulator width (default 40, at most 48).
    tag_bits : int
        Width of the pass-through ``tag`` field (default 8, >= 1).
    chunk : int
        Multiplier split width: each partial product is at most ``(chunk+1) x (chunk+1)`` signed bits
        (17 -> ECP5 18x18 DSP blocks).

    Attributes
    ----------
    i : In(stream.Signature(requant_in_layout))
        ``acc, mr, mc, sc, bq, tag`` per element.
    o : Out(stream.Signature(requant_out_layout))
        ``value, sat, fault, tag``.
    sr : In(5)
        Row shift ``Sr`` (0..16).
    z_out : In(8)
        Output zero point (``ucode`` only; 0 for the other formats).
    out_fmt : In(OutFormat)
        ``ucode``, ``scode``, ``fixed16``, ``fixed32``.
    bits : In(4)
        Code width ``k`` for ``ucode`` / ``scode`` (4, 6 or 8).
    sat_count : Out(32)
        Saturated elements delivered since reset / ``clear`` (the spec's saturation count).
    fault_seen : Out(1)
        Sticky: some ``t`` overflowed ``acc_bits``.
    clear : In(1)
        Clears ``sat_count`` and ``fault_seen``.

    Notes
    -----
    Latency :data:`LATENCY` = 10 cycles, one element per cycle.  A stall (``o.valid & ~o.ready``)
    freezes the whole pipeline; ``i.ready = ~o.valid | o.ready``.  Config ports must be stable while
    elements are in flight.
    """

    def __init__(self, acc_bits: int = 40, tag_bits: int = 8, chunk: int = 17):
        if not 2 <= acc_bits <= 48:
            raise ValueError(f"Requantiser: acc_bits must be in 2..48, got {acc_bits}")
        if tag_bits < 1:
            raise ValueError("Requantiser: tag_bits must be >= 1")
        self.acc_bits, self.tag_bits, self.chunk = acc_bits, tag_bits, chunk
        super().__init__({
            "i": In(stream.Signature(requant_in_layout(acc_bits, tag_bits))),
            "o": Out(stream.Signature(requant_out_layout(tag_bits))),
            "sr": In(5),
            "z_out": In(8),
            "out_fmt": In(OutFormat),
            "bits": In(4),
            "sat_count": Out(32),
            "fault_seen": Out(1),
            "clear": In(1),
        })

    def elaborate(self, platform):
        m = Module()
        ab = self.acc_bits
        en = Signal()
        m.d.comb += [en.eq(~self.o.valid | self.o.ready), self.i.ready.eq(en)]

        # valid bits of stages 1..LATENCY-1 (the last stage is the output register, o.valid)
        valid = [Signal(name=f"valid{s}") for s in range(1, LATENCY)]
        with m.If(en):
            m.d.sync += valid[0].eq(self.i.valid)
            for s in range(1, len(valid)):
                m.d.sync += valid[s].eq(valid[s - 1])
            m.d.sync += self.o.valid.eq(valid[-1])

        def stage(value, name):
            """Register ``value`` (loaded when the pipeline advances)."""
            reg = Signal.like(value, name=name) if isinstance(value, Signal) else Signal(value.shape(), name=name)
            with m.If(en):
                m.d.sync += reg.eq(value)
            return reg

        p = self.i.payload
        # config-derived constants, registered (config ports are stable while elements are in flight;
        # an element needs at least one cycle to reach the first stage that uses them)
        rh_row = Signal(16, name="rh_row")
        lo = Signal(signed(33), name="sat_lo")
        hi = Signal(signed(33), name="sat_hi")
        lo_mz = Signal(signed(34), name="sat_lo_mz")   # lo - z_out
        hi_mz = Signal(signed(34), name="sat_hi_mz")   # hi - z_out
        lo_c = Signal(signed(33))
        hi_c = Signal(signed(33))
        with m.Switch(self.out_fmt):
            with m.Case(OutFormat.UCODE):
                m.d.comb += [lo_c.eq(0), hi_c.eq((Const(1, 9) << self.bits) - 1)]
            with m.Case(OutFormat.SCODE):
                half = (Const(1, 9) << self.bits) >> 1
                m.d.comb += [lo_c.eq(1 - half), hi_c.eq(half - 1)]
            with m.Case(OutFormat.FIXED16):
                m.d.comb += [lo_c.eq(-(1 << 15)), hi_c.eq((1 << 15) - 1)]
            with m.Case(OutFormat.FIXED32):
                m.d.comb += [lo_c.eq(-(1 << 31)), hi_c.eq((1 << 31) - 1)]
        m.d.sync += [rh_row.eq(round_half(self.sr, 16)), lo.eq(lo_c), hi.eq(hi_c),
                     lo_mz.eq(lo_c - self.z_out), hi_mz.eq(hi_c - self.z_out)]

        # ---- row stage: t = round_shift(acc * Mr, Sr)
        # 1: partial products (18x18 DSP blocks)
        pp1 = partial_products(p.acc, p.mr, self.chunk)
        s1 = [stage(prod, f"row_pp{j}") for j, (prod, _) in enumerate(pp1)]
        mc1, sc1, bq1, tag1 = (stage(p.mc, "mc1"), stage(p.sc, "sc1"), stage(p.bq, "bq1"), stage(p.tag, "tag1"))
        # 2: sum + rounding constant; column rounding constant + bias precomputed alongside
        sum1 = sum_products(s1, [sh for _, sh in pp1], rh_row)
        prod_r2 = stage(sum1, "row_sum")
        mc2, tag2 = stage(mc1, "mc2"), stage(tag1, "tag2")
        sc2 = stage(sc1, "sc2")
        bqr2 = stage(bq1 + round_half(sc1, 47), "bq_round2")
        # 3: variable right shift by Sr (its own stage)
        t_sh = stage(prod_r2 >> self.sr, "t_shifted")
        mc3, sc3, bqr3, tag3 = stage(mc2, "mc3"), stage(sc2, "sc3"), stage(bqr2, "bq_round3"), stage(tag2, "tag3")
        # 4: range check against acc_bits and clamp: t fits iff its bits from ab - 1 up are all equal
        # (a LUT reduction; comparisons with the bounds would be two carry chains in series)
        t_lo, t_hi = -(1 << (ab - 1)), (1 << (ab - 1)) - 1
        top = t_sh[ab - 1:]
        t_fault = ~(top.all() | ~top.any())
        t4 = stage(Mux(t_fault, Mux(t_sh[-1], t_lo, t_hi), t_sh)[:ab].as_signed(), "t")
        fault4 = stage(t_fault, "fault4")
        mc4, sc4, bqr4, tag4 = stage(mc3, "mc4"), stage(sc3, "sc4"), stage(bqr3, "bq_round4"), stage(tag3, "tag4")

        # ---- column stage: v = round_shift(t * Mc + Bq, Sc)
        # 5: partial products
        pp2 = partial_products(t4, mc4, self.chunk)
        s5 = [stage(prod, f"col_pp{j}") for j, (prod, _) in enumerate(pp2)]
        sc5, bqr5 = stage(sc4, "sc5"), stage(bqr4, "bq_round5")
        tag5, fault5 = stage(tag4, "tag5"), stage(fault4, "fault5")
        # 6: sum (+ Bq + rounding constant)
        sum2 = sum_products(s5, [sh for _, sh in pp2], bqr5)
        s6 = stage(sum2, "col_sum")
        sc6, tag6, fault6 = stage(sc5, "sc6"), stage(tag5, "tag6"), stage(fault5, "fault6")
        # 7, 8: variable right shift by Sc, coarse (multiples of 8) then fine (0..7)
        v7 = stage(s6 >> (sc6 & 0b111000), "v_coarse")
        sc7, tag7, fault7 = stage(sc6[:3], "sc7"), stage(tag6, "tag7"), stage(fault6, "fault7")
        v8 = stage(v7 >> sc7, "v")
        tag8, fault8 = stage(tag7, "tag8"), stage(fault7, "fault8")

        # ---- 9: output: saturate(v + z_out, lo, hi)   (v + z_out < lo  <=>  v < lo - z_out)
        y9 = stage(v8[:32] + self.z_out, "y")       # only the low 32 bits are used (in range: no wrap)
        # the bounds fit 34 signed bits: compare 34-bit values when v does too (one short carry chain),
        # else v's sign decides (a LUT reduction instead of a full-width comparison)
        v_top = v8[33:]
        v_fits = v_top.all() | ~v_top.any()
        v34 = v8[:34].as_signed()
        below9 = stage(Mux(v_fits, v34 < lo_mz, v8[-1]), "below")
        above9 = stage(Mux(v_fits, v34 > hi_mz, ~v8[-1]), "above")
        tag9, fault9 = stage(tag8, "tag9"), stage(fault8, "fault9")
        # ---- 10: select
        out = self.o.payload
        with m.If(en):
            m.d.sync += [
                out.value.eq(Mux(below9, lo, Mux(above9, hi, y9))),
                out.sat.eq(below9 | above9),
                out.fault.eq(fault9),
                out.tag.eq(tag9),
            ]

        # ---- status
        fire = self.o.valid & self.o.ready
        with m.If(self.clear):
            m.d.sync += [self.sat_count.eq(0), self.fault_seen.eq(0)]
        with m.Else():
            with m.If(fire & out.sat & (self.sat_count != (1 << 32) - 1)):
                m.d.sync += self.sat_count.eq(self.sat_count + 1)
            with m.If(fire & out.fault):
                m.d.sync += self.fault_seen.eq(1)
        return m
