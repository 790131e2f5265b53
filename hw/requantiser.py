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

from amaranth.hdl import Cat, Const, Module, Mux, Signal, Value, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from .common import OutFormat, carry_save, carry_save_add, partial_operands, round_half
from .dsp import DSP_LATENCY, dsp_products

__all__ = ["Requantiser", "requant_in_layout", "requant_out_layout", "LATENCY"]

#: Register stages between input and output: row multiplier (DSP input and output registers,
#: carry-save terms, sum), ``>> Sr``, range check, column multiplier (DSP input and output
#: registers, carry-save terms, sum), ``>> Sc`` in two steps (coarse, fine), ``+ z_out`` with the
#: range comparisons, saturate.  (14 since issue #15's session 34 registered the DSP blocks' inputs,
#: :mod:`hw.dsp`, and split each sum of partial products in two stages; 10 before.)
LATENCY = 2 * (DSP_LATENCY + 2) + 2 + 2 + 2


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


def fits_after_shift(v: Value, mask: Value, lo: int) -> Value:
    """``v >> s`` fits ``lo + 1`` signed bits, for the shift ``s`` whose thermometer code is ``mask``
    (bit ``i``: ``i < s``): the bits of ``v`` from ``lo + s`` up all equal its sign, i.e. every bit
    ``lo + i`` is equal to the sign or masked by ``i < s`` (one LUT reduction, no comparison)."""
    top = len(v) - 1
    return Cat(*[~(v[lo + i] ^ v[top]) | (mask[i] if i < len(mask) else 0) for i in range(top - lo)]).all()


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
    en_copies : int
        0 (default): a stream pipeline, ``i.ready = ~o.valid | o.ready``.  ``n >= 1``: *lockstep*, as
        the layer engine drives it: input ``en`` (``n`` identical copies of the lane enable, each
        driving the clock enables of a contiguous group of stages) advances the pipeline, ``i.valid``
        must be held 1 (the element's own valid bit travels in ``tag``), ``o.ready`` is ignored and
        ``i.ready = en[0]``; an element leaves :data:`LATENCY` enabled cycles after it entered.  No
        enable logic then sits between the lane enable register and the stage registers (issue #15).

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
    en : In(en_copies)
        Only with ``en_copies >= 1`` (lockstep): the stage enables, ``en_copies`` identical copies.

    Notes
    -----
    Latency :data:`LATENCY` = 14 cycles, one element per cycle.  A stall (``o.valid & ~o.ready``)
    freezes the whole pipeline; ``i.ready = ~o.valid | o.ready``.  Config ports must be stable while
    elements are in flight.
    """

    def __init__(self, acc_bits: int = 40, tag_bits: int = 8, chunk: int = 17, en_copies: int = 0):
        if not 2 <= acc_bits <= 48:
            raise ValueError(f"Requantiser: acc_bits must be in 2..48, got {acc_bits}")
        if tag_bits < 1:
            raise ValueError("Requantiser: tag_bits must be >= 1")
        if not 0 <= en_copies <= LATENCY:
            raise ValueError(f"Requantiser: en_copies must be in 0..{LATENCY}, got {en_copies}")
        self.acc_bits, self.tag_bits, self.chunk, self.en_copies = acc_bits, tag_bits, chunk, en_copies
        ports = {
            "i": In(stream.Signature(requant_in_layout(acc_bits, tag_bits))),
            "o": Out(stream.Signature(requant_out_layout(tag_bits))),
            "sr": In(5),
            "z_out": In(8),
            "out_fmt": In(OutFormat),
            "bits": In(4),
            "sat_count": Out(32),
            "fault_seen": Out(1),
            "clear": In(1),
        }
        if en_copies:
            ports["en"] = In(en_copies)
        super().__init__(ports)

    def _config(self, m, en_row, en_out):
        """Config ports registered, then the constants derived from them registered again.

        ``lo - z_out`` and ``hi - z_out`` are registered a cycle after ``lo`` / ``hi``.  Config ports
        are stable while elements are in flight, and an element needs three cycles to reach the
        first stage that uses them (``rh_row``), so the config registers may sit far from the lanes.
        ``en_row`` / ``en_out`` load ``Sr`` / the output format, width and ``z_out`` (``None``: every
        cycle).  In lockstep they are enable copies of this unit: a register loaded every cycle from
        the same port is one register for synthesis, shared by every requantiser of the engine (8 x 8:
        one ``cfg_sr`` drove the shifters of eight lanes, issue #15); an element reaches the first
        stage using them after three enabled cycles, so the registers hold the new layer's values by then.
        Returns ``(sr, z_out, rh_row, lo, hi, lo_mz, hi_mz)``.
        """
        sr, z_out, out_fmt, bits = (Signal.like(x, name=f"cfg_{nm}") for x, nm in
                                    ((self.sr, "sr"), (self.z_out, "z_out"), (self.out_fmt, "out_fmt"),
                                     (self.bits, "bits")))
        with m.If(Const(1, 1) if en_row is None else en_row):
            m.d.sync += sr.eq(self.sr)
        with m.If(Const(1, 1) if en_out is None else en_out):
            m.d.sync += [z_out.eq(self.z_out), out_fmt.eq(self.out_fmt), bits.eq(self.bits)]
        rh_row = Signal(16, name="rh_row")
        lo = Signal(signed(33), name="sat_lo")
        hi = Signal(signed(33), name="sat_hi")
        lo_mz = Signal(signed(34), name="sat_lo_mz")   # lo - z_out
        hi_mz = Signal(signed(34), name="sat_hi_mz")   # hi - z_out
        lo_c = Signal(signed(33))
        hi_c = Signal(signed(33))
        with m.Switch(out_fmt):
            with m.Case(OutFormat.UCODE):
                m.d.comb += [lo_c.eq(0), hi_c.eq((Const(1, 9) << bits) - 1)]
            with m.Case(OutFormat.SCODE):
                half = (Const(1, 9) << bits) >> 1
                m.d.comb += [lo_c.eq(1 - half), hi_c.eq(half - 1)]
            with m.Case(OutFormat.FIXED16):
                m.d.comb += [lo_c.eq(-(1 << 15)), hi_c.eq((1 << 15) - 1)]
            with m.Case(OutFormat.FIXED32):
                m.d.comb += [lo_c.eq(-(1 << 31)), hi_c.eq((1 << 31) - 1)]
        m.d.sync += [rh_row.eq(round_half(sr, 16)), lo.eq(lo_c), hi.eq(hi_c),
                     lo_mz.eq(lo - z_out), hi_mz.eq(hi - z_out)]       # a cycle after lo / hi
        return sr, z_out, rh_row, lo, hi, lo_mz, hi_mz

    def _sr_mask(self, m, width, en):
        """``width`` bits, bit ``i`` = ``i < Sr``: a layer constant loaded from the ``sr`` port like
        ``cfg_sr`` (from ``cfg_sr``, yosys shared its comparisons with ``rh_row``'s decoder: ``cfg_sr``
        -> ``rh_row`` -> ``sr_mask`` was among the 8 x 8 engines' worst paths, session 44)."""
        sr_mask = Signal(width, name="sr_mask")
        with m.If(en):
            m.d.sync += sr_mask.eq(Cat(*[self.sr > i for i in range(width)]))
        return sr_mask

    def elaborate(self, platform):
        m = Module()
        ab = self.acc_bits
        n = self.en_copies
        if n:
            # lockstep: stage s advances on copy (s - 1) * n // LATENCY of the engine's lane enable
            en_of = [self.en[(s - 1) * n // LATENCY] for s in range(1, LATENCY + 1)]
            m.d.comb += self.i.ready.eq(self.en[0])
        else:
            en = Signal()
            m.d.comb += [en.eq(~self.o.valid | self.o.ready), self.i.ready.eq(en)]
            en_of = [en] * LATENCY

        def ens(s):
            """Enable of stage ``s`` (1 .. LATENCY)."""
            return en_of[s - 1]

        # valid bits of stages 1..LATENCY-1 (the last stage is the output register, o.valid)
        valid = [Signal(name=f"valid{s}") for s in range(1, LATENCY)]
        for s, (src, dst) in enumerate(zip([self.i.valid] + valid, valid + [self.o.valid]), start=1):
            with m.If(ens(s)):
                m.d.sync += dst.eq(src)

        def stage(value, name, s):
            """Register ``value`` as stage ``s`` (loaded when that stage advances)."""
            reg = Signal.like(value, name=name) if isinstance(value, Signal) else Signal(value.shape(), name=name)
            with m.If(ens(s)):
                m.d.sync += reg.eq(value)
            return reg

        def carry(values: dict, s):
            """Stage ``s`` copies of the side values (``{name: value}``), named ``{name}{s}``."""
            return {k: stage(v, f"{k}{s}", s) for k, v in values.items()}

        p = self.i.payload
        # lockstep: the config registers load with the enable copies of the stages using them
        sr, z_out, rh_row, lo, hi, lo_mz, hi_mz = self._config(m, ens(3) if n else None, ens(13) if n else None)

        def summed(products, pp, extra, s, name):
            """``sum(p << shift) + extra``: carry-save terms registered in stage ``s``, their sum in ``s + 1``."""
            terms = [Value.cast(q << sh) for q, (_, _, sh) in zip(products, pp)] + [Value.cast(extra)]
            x, y, shape = carry_save(terms)
            xs, ys = stage(x, f"{name}_cs_x", s), stage(y, f"{name}_cs_y", s)
            return stage(carry_save_add(xs, ys, shape), name, s + 1)

        # ---- row stage: t = round_shift(acc * Mr, Sr)
        # 1, 2: partial products in DSP blocks (their input and output registers, hw/dsp.py)
        pp1 = partial_operands(p.acc, p.mr, self.chunk)
        row_pp = dsp_products(m, platform, [(a, b) for a, b, _ in pp1], ens(1), "row_pp")
        # the column rounding constant 2^(Sc-1) decoded in stage 1, added to Bq in stage 2
        side = carry({"mc": p.mc, "sc": p.sc, "bq": p.bq, "tag": p.tag, "sc_half": round_half(p.sc, 47)}, 1)
        side = carry({"mc": side["mc"], "sc": side["sc"], "tag": side["tag"],
                      "bq_round": side["bq"] + side["sc_half"]}, 2)
        # 3, 4: sum + rounding constant (carry-save terms, then one carry chain)
        row_sum = summed(row_pp, pp1, rh_row, 3, "row_sum")
        side = carry(carry(side, 3), 4)
        # 5: variable right shift by Sr's multiple of 4 (the rest in stage 6), and beside it the range
        # check, t = row_sum >> Sr fits acc_bits, from the layer's mask of Sr (fits_after_shift: a LUT
        # reduction; comparisons with the bounds would be two carry chains in series)
        t_sh = stage(row_sum >> Cat(Const(0, 2), sr[2:]), "t_coarse", 5)     # by Sr's multiple of 4
        top = len(row_sum) - 1
        sr_mask = self._sr_mask(m, max(1, top - ab + 1), ens(3) if n else Const(1, 1))
        t_over = stage(~fits_after_shift(row_sum, sr_mask, ab - 1), "t_over", 5)
        side = carry(side, 5)
        # 6: the rest of the shift (Sr mod 4) and the clamp (the range check's reduction here, over the
        # shifted value, was among the engine's worst paths, issue #15 session 43; the whole shift in
        # stage 5 among the 8 x 8 W4A4 engine's, session 44)
        t_lo, t_hi = -(1 << (ab - 1)), (1 << (ab - 1)) - 1
        t6 = stage(Mux(t_over, Mux(t_sh[-1], t_lo, t_hi), t_sh >> sr[:2])[:ab].as_signed(), "t", 6)
        side = carry({**side, "fault": t_over}, 6)

        # ---- column stage: v = round_shift(t * Mc + Bq, Sc)
        # 7, 8: partial products in DSP blocks
        pp2 = partial_operands(t6, side["mc"], self.chunk)
        col_pp = dsp_products(m, platform, [(a, b) for a, b, _ in pp2], ens(7), "col_pp")
        side = carry({k: side[k] for k in ("sc", "bq_round", "tag", "fault")}, 7)
        side = carry(side, 8)
        # 9, 10: sum (+ Bq + rounding constant)
        col_sum = summed(col_pp, pp2, side["bq_round"], 9, "col_sum")
        side = carry(carry({k: side[k] for k in ("sc", "tag", "fault")}, 9), 10)
        # 11, 12: variable right shift by Sc, coarse (multiples of 8) then fine (0..7)
        v11 = stage(col_sum >> (side["sc"] & 0b111000), "v_coarse", 11)
        # the fine shift's thermometer code (bit i: i < Sc mod 8) for the range check in stage 12
        side = carry({"sc": side["sc"][:3], "sc_th": Cat(*[side["sc"][:3] > i for i in range(7)]),
                      "tag": side["tag"], "fault": side["fault"]}, 11)
        v12 = stage(v11 >> side["sc"], "v", 12)
        # beside the fine shift: v fits 34 signed bits (registered: computed from v in stage 13 it put two
        # wide multiplexers behind the bounds' carry chain, the 8 x 8 W4A4 engine's worst path, session 45)
        v_fits12 = stage(fits_after_shift(v11, side["sc_th"], 33), "v_fits", 12)
        side = carry({k: side[k] for k in ("tag", "fault")}, 12)

        # ---- 13: output: saturate(v + z_out, lo, hi)   (v + z_out < lo  <=>  v < lo - z_out)
        y13 = stage(v12[:32] + z_out, "y", 13)     # only the low 32 bits are used (in range: no wrap)
        # the bounds fit 34 signed bits: compare 34-bit values when v does too, else v's sign decides.
        # Each comparison is the sign of a 35-bit difference (one carry chain; yosys's signed `<` had a
        # second chain for the overflow behind it, the 8 x 8 W4A4 engine's worst path, session 46)
        v34 = v12[:34].as_signed()
        below13 = stage(Mux(v_fits12, (v34 - lo_mz)[-1], v12[-1]), "below", 13)
        above13 = stage(Mux(v_fits12, (hi_mz - v34)[-1], ~v12[-1]), "above", 13)
        side = carry(side, 13)
        # ---- 14: select
        out = self.o.payload
        with m.If(ens(14)):
            m.d.sync += [
                out.value.eq(Mux(below13, lo, Mux(above13, hi, y13))),
                out.sat.eq(below13 | above13),
                out.fault.eq(side["fault"]),
                out.tag.eq(side["tag"]),
            ]

        # ---- status
        fire = self.o.valid & (ens(LATENCY) if n else self.o.ready)
        with m.If(self.clear):
            m.d.sync += [self.sat_count.eq(0), self.fault_seen.eq(0)]
        with m.Else():
            with m.If(fire & out.sat & (self.sat_count != (1 << 32) - 1)):
                m.d.sync += self.sat_count.eq(self.sat_count + 1)
            with m.If(fire & out.fault):
                m.d.sync += self.fault_seen.eq(1)
        return m
