"""Drain side of the layer engine: zero-point / FO / outlier drain pipeline, requantisers, output FIFO.

* :class:`DrainPipeline` -- turns the drained shadow row ``acc_raw[r, :]`` into ``acc[r, :]``
  (docs/datapath.md section 6)::

      acc_d[r, c] = acc_raw[r, c] - za[r] * colsum[c]
      acc[r, c]   = (acc_d[r, c] << FO) + corr[r, c]        (corr: the outlier sum of section 5)

  in :data:`sim.engine_config.PRE_REQUANT_LATENCY` = 7 register stages (8 with shared requantisers:
  :attr:`sim.engine_config.EngineConfig.pre_requant_latency`), then truncates to
  ``acc_bits`` and flags values that do not fit (``acc_fault``; section 6, accumulator bound).
* :class:`OutputStage` -- one :class:`hw.requantiser.Requantiser` per lane (section 7), the output
  row assembly and the output FIFO, and the sticky ``acc_fault`` flag.

With ``requant_share = S`` (:class:`sim.engine_config.EngineConfig`) both work on ``cols / S`` lanes,
one column group of a row per cycle (``S`` cycles a row); the output stage holds the first ``S - 1``
groups and pushes the whole row with the last.

Per-row values (valid, row, column) advance with the drain's enable copy, per-column values with
that column's copy (fanout of the global enable, :mod:`hw.stall`).
"""
from __future__ import annotations

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal, Value, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from vitaccel.sim.engine_config import DIM_BITS, DRAIN_OFFSET, EngineConfig
from .common import OutFormat, carry_save_add, carry_save_difference, partial_operands, sum_products
from .dsp import dsp_products
from .engine_layouts import (OUT_FIFO_DEPTH, ZA_BITS, DrainControl, DrainedRowSignature, FifoFill, colp_layout,
                             drain_row_group, out_layout, row_bits)
from .kept import kept_copies
from .push_fifo import PushFifo, push_chunks
from .requantiser import Requantiser

__all__ = ["DrainPipeline", "OutputStage", "DRAIN_EN_COPIES", "FO_COPY_BITS", "REQUANT_EN_COPIES", "fifo_push_copies"]

#: Enable copies per drain column: copy 0 drives the position, D0 - D3 and the zero-point DSP blocks,
#: copy 1 drives D3b - D6 and ``FO`` (each about 350 flip-flops of the 8 x 8 W8A8 engine instead of 700;
#: one copy's clock-enable net was among its worst paths, issue #15, session 44).
DRAIN_EN_COPIES = 2

#: Bits of D5's shifted ``acc_d`` per kept copy of ``FO`` (the shift's select lines; issue #15, session 44).
FO_COPY_BITS = 16

#: Enable copies per requantiser (each drives the clock enables of ``LATENCY / 6`` = 2 stages, about
#: 170 flip-flops and their DSP blocks' ``CE``; issue #15, session 34).
REQUANT_EN_COPIES = 6


def fifo_push_copies(cols: int) -> int:
    """Enable copies of the output FIFO's push strobes (:func:`hw.push_fifo.push_chunks` of a row)."""
    return push_chunks(len(Signal(out_layout(cols)).as_value()))


def _low(x, bits: int):
    """The low ``bits`` bits of ``x`` (sign-extended first), unsigned."""
    return (x & ((1 << bits) - 1))[:bits]


def _high_flags(hi):
    """``hi == 0``, ``hi == -1``, ``hi == -2`` (three equality reductions side by side)."""
    return Cat(hi == 0, hi == -1, hi == -2)


def _fits_high(flags, carry, top):
    """``hi + carry + top == 0`` (``carry``, ``top`` single bits; ``flags``: :func:`_high_flags` of ``hi``)
    without an adder."""
    return Mux(carry & top, flags[2], Mux(carry | top, flags[1], flags[0]))


def _stage(m: Module, values: list, prefix: str) -> list[Signal]:
    """Register ``values`` (a list of ``(value, enable)``) as the next drain stage."""
    regs = []
    for j, (v, e) in enumerate(values):
        r = Signal(v.shape(), name=f"{prefix}_{j}")
        with m.If(e):
            m.d.sync += r.eq(v)
        regs.append(r)
    return regs


class DrainPipeline(wiring.Component):
    """Drain stages D1..D6 (and D3b: seven) between the MAC array's shadow row and the requantisers (section 6).

    ======  ==========================================================================================
    stage   register contents
    ======  ==========================================================================================
    (D0)    only with ``requant_share > 1`` (:attr:`EngineConfig.gather_stage`): every column's
            ``acc_raw``, ``corr``, ``colsum``, ``Mc/Sc/Bq`` of the drained row at that column; the
            column group, ``za[r]``, ``Mr[r]`` per lane (D1 multiplexes from these registers)
    D1      drained column group: ``acc_raw``, ``corr``, ``colsum``, ``Mc/Sc/Bq``; ``za[r]``, ``Mr[r]`` per lane
    D2, D3  partial products of ``za[r] * colsum[c]`` (DSP blocks: D2 their input registers, D3 their
            output registers, :mod:`hw.dsp`)
    D3b     ``za[r] * colsum[c]`` (the sum of its two partial products, B codes up to 6 bits); with four
            (8-bit B codes), ``acc_raw - za[r] * colsum[c]`` as two carry-save vectors
            (:func:`hw.common.carry_save_difference`: 3:2 compressors from the DSP outputs, no carry
            chain)
    D4      ``acc_d << FO[0]``, ``acc_d = acc_raw - za * colsum`` (one carry chain, a 2:1 multiplexer);
            ``N - c0`` of the drained column group
    D5      ``(acc_d << FO) + corr`` (the rest of the shift, by ``FO[2:1]``, a 4:1 multiplexer) as two sums
            split at bit ``acc_bits`` (low part with its carry, high part); lane inside the layer
            (``c < N - c0``)
    D6      ``acc`` truncated to ``acc_bits``; lane out of range (-> ``o.fault`` one cycle later)
    ======  ==========================================================================================

    It also holds the ``cols`` register copies of the drain position (row, column group): the row
    number (:attr:`rows`) selects the shadow row in the MAC array and the correction row in the
    outlier unit, lane ``j`` takes column ``group * (cols / S) + j`` of them.

    Parameters
    ----------
    cfg : EngineConfig

    Attributes
    ----------
    en : In(1)
        Enable copy of the per-row stage registers.
    en_col : In(cols * DRAIN_EN_COPIES)
        Enable copies per column: ``en_col[c]`` for the position and D0 - D3 of column / lane ``c``,
        ``en_col[cols + c]`` for its D3b - D6 (:data:`DRAIN_EN_COPIES`).
    start : In(1)
        Layer start (resets :attr:`rows`).
    ctl : In(DrainControl(rows, share_bits))
        Drain issue, position (and its value after an advance), previous tile's ``r0``, ``c0``.
    fo, n : In(3), In(16)
        The layer's ``FO`` and ``N``.
    za, mr : In(ZA_BITS), In(16)
        ``za[r]``, ``Mr[r]`` of the drained row.
    acc : In(ArrayLayout(signed(acc_bits), cols))
        Shadow row (``acc_raw``) selected by :attr:`rows`.
    corr : In(ArrayLayout(signed(corr_bits), cols))
        Correction row selected by :attr:`rows` (only with outliers; else 0).
    colsum : In(ArrayLayout(signed(colsum_bits), cols)), params : In(colp_layout(cols))
        Column data of the drained tile's block.
    rows : Out(ArrayLayout(unsigned(row_bits), cols))
        Drained row number, one register copy per column.
    rows_nx : Out(ArrayLayout(unsigned(row_bits), cols))
        The value :attr:`rows` takes after this cycle (the outlier unit registers its correction
        memories' read address from it; with the gather stage since session 37, always since session 44).
    rows_mac : Out(ArrayLayout(unsigned(row_bits), cols))
        Only with the gather stage: :attr:`rows` again, from kept register copies of their own (the
        MAC array's shadow-row select).
    o : Out(DrainedRowSignature(cols / S, acc_bits))
        The column group entering the requantisers.
    """

    def __init__(self, cfg: EngineConfig):
        self.cfg = cfg
        C, G = cfg.cols, cfg.drain_lanes
        ports = {
            "en": In(1), "en_col": In(C * DRAIN_EN_COPIES), "start": In(1), "ctl": In(DrainControl(cfg.rows, cfg.share_bits)),
            "fo": In(3), "n": In(DIM_BITS), "za": In(ZA_BITS), "mr": In(16),
            "acc": In(data.ArrayLayout(signed(cfg.acc_bits), C)),
            "colsum": In(data.ArrayLayout(signed(cfg.colsum_bits), C)), "params": In(colp_layout(C)),
            "rows": Out(data.ArrayLayout(row_bits(cfg.rows), C)),
            "o": Out(DrainedRowSignature(G, cfg.acc_bits)),
        }
        if cfg.has_outliers:
            ports["corr"] = In(data.ArrayLayout(signed(cfg.corr_bits), C))
        ports["rows_nx"] = Out(data.ArrayLayout(row_bits(cfg.rows), C))
        if cfg.gather_stage:
            ports["rows_mac"] = Out(data.ArrayLayout(row_bits(cfg.rows), C))
        super().__init__(ports)

    def elaborate(self, platform):
        m = Module()
        C, G, W = self.cfg.cols, self.cfg.drain_lanes, self.cfg.acc_bits
        S, sb = self.cfg.requant_share, self.cfg.share_bits
        pb = row_bits(self.cfg.rows) + sb
        ctl = self.ctl
        pos = [Signal(pb, name=f"pos{c}") for c in range(C)]
        init = (-DRAIN_OFFSET) % (1 << pb)
        for c in range(C):       # one copy of the drain position per column (shadow / correction row muxes)
            nx = Signal(pb, name=f"pos_nx{c}")          # its value after this cycle
            m.d.comb += [nx.eq(Mux(self.start, init, Mux(self.en_col[c], ctl.pos_adv, pos[c]))),
                         self.rows_nx[c].eq(drain_row_group(nx, sb)[0])]
            with m.If(self.start):
                m.d.sync += pos[c].eq(init)
            with m.Elif(self.en_col[c]):
                m.d.sync += pos[c].eq(ctl.pos_adv)
            m.d.comb += self.rows[c].eq(drain_row_group(pos[c], sb)[0])

        def row_stage(values, prefix):
            return _stage(m, [(v, self.en) for v in values], prefix)

        def col_stage(values, prefix, late=False):
            """Per-lane stage on the lane's enable copy (``late``: the copy of D3b - D6)."""
            return _stage(m, [(values[j], self.en_col[C * late + j]) for j in range(G)], prefix)

        def late_stage(values, prefix):
            return col_stage(values, prefix, late=True)

        gather = self.cfg.gather_stage
        sel, src = self._sources(m, platform, pos, col_stage) if gather else self._direct(pos)
        src_acc, src_corr, src_cp, src_cs, src_za, src_mr = (src[k] for k in ("acc", "corr", "cp", "cs", "za", "mr"))

        def grouped(values):
            """Lane ``j`` of the drained column group: column ``group * G + j`` (group from copy ``j``)."""
            if S == 1:
                return list(values)
            return [Array(values[g * G + j] for g in range(S))[sel[j]] for j in range(G)]
        corr = grouped(src_corr) if self.cfg.has_outliers else [Const(0, 1)] * G
        row, group = drain_row_group(ctl.pos, sb)
        # D1: select the drained row (and column group); Mr gets one register copy per lane, za too
        # (or the lane's DSP input registers take it directly: _zero_point_products)
        d1_in = [ctl.issue, (ctl.r0 + row)[:DIM_BITS], (ctl.c0 + group * G)[:DIM_BITS], group == S - 1]
        if gather:
            d1_in = row_stage(d1_in, "d0")
        d1_v, d1_row, d1_col, d1_last = row_stage(d1_in, "d1")
        d1_mr = col_stage(src_mr, "d1_mr")
        d1_acc = col_stage(grouped(src_acc), "d1_acc")
        d1_corr = col_stage(corr, "d1_corr")
        d1_cp = col_stage(grouped(src_cp), "d1_cp")
        d3_pp, shifts = self._zero_point_products(m, platform, src_za, grouped(src_cs), col_stage)
        d2_v, d2_row, d2_col, d2_last = row_stage([d1_v, d1_row, d1_col, d1_last], "d2")
        d2_acc, d2_corr, d2_cp, d2_mr = (col_stage(x, f"d2_{n}") for x, n in
                                         ((d1_acc, "acc"), (d1_corr, "corr"), (d1_cp, "cp"), (d1_mr, "mr")))
        d3_v, d3_row, d3_col, d3_last = row_stage([d2_v, d2_row, d2_col, d2_last], "d3")
        d3_acc, d3_corr, d3_cp, d3_mr = (col_stage(x, f"d3_{n}") for x, n in
                                         ((d2_acc, "acc"), (d2_corr, "corr"), (d2_cp, "cp"), (d2_mr, "mr")))
        # D3b: with up to two partial products (4- and 6-bit B codes) their sum (one carry chain) and
        # acc_raw; with more (8-bit B codes: four), acc_raw - za * colsum as two carry-save vectors (3:2
        # compressors, no carry chain: the sum of four products after the route out of the DSP row was
        # the 8 x 8 W8A8 engine's second-worst path, session 43).  D4: acc_d = acc_raw - za * colsum,
        # one carry chain either way
        d3b_v, d3b_row, d3b_col, d3b_last = row_stage([d3_v, d3_row, d3_col, d3_last], "d3b")
        if all(len(pp) <= 2 for pp in d3_pp):
            d3b_acc = late_stage(d3_acc, "d3b_acc")
            d3b_zp = late_stage([sum_products(d3_pp[c], shifts[c]) for c in range(G)], "d3b_zp")
            diff = [d3b_acc[c] - d3b_zp[c] for c in range(G)]
        else:
            zd = [carry_save_difference(d3_acc[c], d3_pp[c], shifts[c]) for c in range(G)]
            d3b_dx = late_stage([x for x, _, _ in zd], "d3b_dx")
            d3b_dy = late_stage([y for _, y, _ in zd], "d3b_dy")
            diff = [carry_save_add(d3b_dx[c], d3b_dy[c], zd[c][2]) for c in range(G)]
        d3b_corr, d3b_cp, d3b_mr = (late_stage(x, f"d3b_{n}") for x, n in ((d3_corr, "corr"), (d3_cp, "cp"),
                                                                           (d3_mr, "mr")))
        d4_v, d4_row, d4_col, d4_last = row_stage([d3b_v, d3b_row, d3b_col, d3b_last], "d4")
        # columns of the layer from the group's first on, N - col (signed), for D5's inside bits (the
        # subtraction and the lanes' compares in one cycle were the worst path of session 45's (Q8))
        (d4_rem,) = row_stage([self.n - d3b_col], "d4_rem")
        # acc_d << FO[0] (one 2:1 multiplexer after the carry chain; the rest of the shift in D5)
        d4_diff = late_stage([self._fo_shift(m, platform, diff[c], c, 0, 1) for c in range(G)], "d4_diff")
        d4_corr, d4_cp, d4_mr = (late_stage(x, f"d4_{n}") for x, n in ((d3b_corr, "corr"), (d3b_cp, "cp"),
                                                                       (d3b_mr, "mr")))
        # D5: acc = (acc_d << FO) + corr (two halves); lanes inside the layer.  FO is a layer constant;
        # each lane shifts by kept copies of its own, one per FO_COPY_BITS bits of the shifted value
        # (the select lines of a whole lane's shifter from one register were among the 8 x 8 W8A8
        # engine's worst paths, session 43), not by one register routed to every lane; D4 did the
        # shift by FO[0] (the whole 8:1 shift before the sums was the worst path of session 44's
        # 8 x 8 W4A4 engine, 3 - 4 LUT levels before a carry chain)
        d5_v, d5_row, d5_col, d5_last = row_stage([d4_v, d4_row, d4_col, d4_last], "d5")
        # split at bit W into two carry chains side by side (the full-width sum was one 57-bit chain
        # after the shift, 8 x 8 W4A4): lo = low W bits of both (+ carry), hi = the rest of both
        shifted = [self._fo_shift(m, platform, d4_diff[c], c, 1, 3) for c in range(G)]
        d5_lo = late_stage([_low(shifted[c], W) + _low(d4_corr[c], W) for c in range(G)], "d5_lo")
        d5_hi = late_stage([(shifted[c] >> W) + (d4_corr[c] >> W) for c in range(G)], "d5_hi")
        d5_in = late_stage([c < d4_rem for c in range(G)], "d5_in")
        d5_cp, d5_mr = (late_stage(x, f"d5_{n}") for x, n in ((d4_cp, "cp"), (d4_mr, "mr")))
        # D6: truncate to acc_bits, range check (acc_fault)
        d6_v, d6_row, d6_col, d6_last = row_stage([d5_v, d5_row, d5_col, d5_last], "d6")
        # acc = hi * 2^W + lo fits acc_bits iff its bits from W - 1 up are equal: hi + lo[W] + lo[W - 1]
        # == 0, i.e. hi equals 0, -1 or -2: D6 registers the three equality reductions (no carry chain)
        # and lo[W]; the choice among them and the OR over the lanes load the fault register (the whole
        # decision in D6 was among the 8 x 8 W8A8 engine's worst paths, session 43)
        d6_acc = late_stage([d5_lo[c][:W].as_signed() for c in range(G)], "d6_acc")
        d6_fit = late_stage([Cat(_high_flags(d5_hi[c]), d5_lo[c][W]) for c in range(G)], "d6_fit")
        d6_in = late_stage(d5_in, "d6_in")
        d6_cp = late_stage(d5_cp, "d6_cp")
        d6_mr = late_stage(d5_mr, "d6_mr")
        fault = Signal()         # some lane of the drained row overflowed acc_bits (one cycle later)
        bad = [d6_v & d6_in[c] & ~_fits_high(d6_fit[c][:3], d6_fit[c][3], d6_acc[c][W - 1]) for c in range(G)]
        with m.If(self.en):
            m.d.sync += fault.eq(Cat(*bad).any())
        o = self.o
        m.d.comb += [o.valid.eq(d6_v), o.row.eq(d6_row), o.col.eq(d6_col), o.last.eq(d6_last), o.fault.eq(fault),
                     o.inside.eq(Cat(*d6_in))]
        m.d.comb += [x for c in range(G)
                     for x in (o.acc[c].eq(d6_acc[c]), o.mr[c].eq(d6_mr[c]), o.params[c].eq(d6_cp[c]))]
        return m

    def _zero_point_products(self, m: Module, platform, za, cs, col_stage):
        """Partial products of ``za[r] * colsum[c]`` per lane at D3 and their shifts.

        Up to two products (B codes up to 6 bits): D1 registers ``za`` (one copy per lane) and
        ``colsum`` in the fabric, D2 / D3 are the DSP blocks' input / output registers.  With more
        (8-bit B codes: four), the DSP blocks' input registers take D1's place (fed from the same
        sources D1 would register), their output registers are D2, and D3 is a fabric register of each
        product, which the placer can put beside its DSP block: the route out of the DSP row no longer
        shares a cycle with D3b's compressors (session 43's worst path of the 8 x 8 W8A8 engine).
        Same register count on the path, so the drain's latency is unchanged."""
        G = self.cfg.drain_lanes
        four = len(partial_operands(Signal.like(za[0]), Signal.like(cs[0]))) > 2
        if not four:
            # D1: za[r] (one register copy per lane) and colsum[c] in the fabric, beside the row multiplexers
            za, cs = col_stage(za, "d1_za"), col_stage(cs, "d1_cs")
        pp = [partial_operands(za[c], cs[c]) for c in range(G)]
        products = [dsp_products(m, platform, [(a, b) for a, b, _ in pp[c]], self.en_col[c], f"d3_pp{c}_")
                    for c in range(G)]
        if four:
            products = [_stage(m, [(p, self.en_col[c]) for p in products[c]], f"d3_pq{c}") for c in range(G)]
        return products, [[sh for *_, sh in pp[c]] for c in range(G)]

    def _fo_shift(self, m: Module, platform, diff, c: int, lo: int, hi: int):
        """``diff << (FO & mask)`` for lane ``c``, the mask taking bits ``lo .. hi - 1`` of ``FO``; each
        :data:`FO_COPY_BITS` output bits selected by a kept copy of those bits of their own
        (:func:`hw.kept.kept_copies`, loaded with the lane's late enable copy)."""
        diff = Value.cast(diff)
        width = len(diff) + (((1 << (hi - lo)) - 1) << lo)
        n = -(-width // FO_COPY_BITS)
        fo = kept_copies(m, platform, self.fo[lo:hi], n, f"fo{lo}_{c}_", en=self.en_col[self.cfg.cols + c])
        out = Cat(*[(diff << Cat(Const(0, lo), fo[k]))[k * FO_COPY_BITS:min(width, (k + 1) * FO_COPY_BITS)]
                    for k in range(n)])
        return out.as_signed() if diff.shape().signed else out

    def _direct(self, pos):
        """Without the gather stage: D1 selects from the ports (lane group from the position copies)."""
        C, G, sb = self.cfg.cols, self.cfg.drain_lanes, self.cfg.share_bits
        sel = [drain_row_group(pos[j], sb)[1] for j in range(G)]
        return sel, {"acc": [self.acc[c] for c in range(C)], "cs": [self.colsum[c] for c in range(C)],
                     "corr": [self.corr[c] for c in range(C)] if self.cfg.has_outliers else None,
                     "cp": [self.params[c].as_value() for c in range(C)], "za": [self.za] * G, "mr": [self.mr] * G}

    def _sources(self, m: Module, platform, pos, col_stage):
        """The gather stage D0 (``requant_share > 1``): the drained row's values registered at their
        columns, the column group and ``za`` / ``Mr`` per lane (D1 multiplexes the lane's group from
        these registers); :attr:`rows_nx`, the position copies' next value (the outlier unit's
        registered read address), and :attr:`rows_mac`, a kept register copy of each column's row
        (:func:`hw.kept.kept_copies`) for the MAC array's shadow-row multiplexer, so that the
        position copy and the multiplexer need not be placed together."""
        C, G, sb, ctl = self.cfg.cols, self.cfg.drain_lanes, self.cfg.share_bits, self.ctl
        pb = len(pos[0])
        init = (-DRAIN_OFFSET) % (1 << pb)
        for c in range(C):
            # loads exactly as pos[c] does (start, else the column's enable), row bits only
            row_c, = kept_copies(m, platform, drain_row_group(Mux(self.start, init, ctl.pos_adv), sb)[0], 1,
                                 f"mac_row{c}_", en=self.start | self.en_col[c])
            m.d.comb += self.rows_mac[c].eq(row_c)

        def per_col(values, prefix):
            return _stage(m, [(values[c], self.en_col[c]) for c in range(C)], prefix)
        sel = col_stage([drain_row_group(pos[j], sb)[1] for j in range(G)], "d0_grp")
        return sel, {"acc": per_col([self.acc[c] for c in range(C)], "d0_acc"),
                     "corr": per_col([self.corr[c] for c in range(C)], "d0_corr") if self.cfg.has_outliers else None,
                     "cp": per_col([self.params[c].as_value() for c in range(C)], "d0_cp"),
                     "cs": per_col([self.colsum[c] for c in range(C)], "d0_cs"),
                     "za": col_stage([self.za] * G, "d0_za"), "mr": col_stage([self.mr] * G, "d0_mr")}


class OutputStage(wiring.Component):
    """``cols / S`` requantisers (section 7), output row assembly, output FIFO and the ``acc_fault`` flag.

    Each requantiser runs in lockstep (:class:`hw.requantiser.Requantiser` ``en_copies``) on
    :data:`REQUANT_EN_COPIES` enable copies of its own (input ``en_rq``; its input is always valid,
    the element's valid bit travels in the tag).  Requantiser 0 carries the group's tag (valid, row, column, last); the first ``S - 1``
    groups of a row wait in holding registers, and a valid tag of a row's last group at its output
    pushes the assembled row into the FIFO when the engine advances (the global stall keeps room for it from the
    FIFO ``level``, hw/stall.py ``fifo_threshold``, so the FIFO never refuses a write: :class:`hw.push_fifo.PushFifo`,
    one push strobe per storage chunk, each from its own enable copy ``en_fifo``).

    Parameters
    ----------
    cfg : EngineConfig

    Attributes
    ----------
    en : In(1)
        Global enable (row assembly, ``acc_fault``).
    en_fifo : In(fifo_push_copies(cols))
        Enable copies of the FIFO's push strobes, one per storage chunk.
    en_rq : In(cols / S * REQUANT_EN_COPIES)
        Enable copies of the requantisers: lane ``j`` takes copies ``j * REQUANT_EN_COPIES ..``.
    clear : In(1)
        Layer start: clears ``acc_fault`` and the requantisers' status.
    sr, z_out, out_fmt, out_k : In
        The layer's ``Sr``, ``z_out``, output format and output code width.
    i : In(DrainedRowSignature(cols / S, acc_bits))
        Drained column group from :class:`DrainPipeline`.
    out : Out(stream.Signature(out_layout(cols)))
        Output rows.
    fifo : Out(FifoFill)
        FIFO level, for the global stall.
    acc_fault : Out(1)
        Sticky: a lane inside the layer did not fit ``acc_bits`` (drain or requantiser ``t``); a
        lane's ``i.inside`` bit travels with it through its requantiser (in the tag).
    """

    def __init__(self, cfg: EngineConfig):
        self.cfg = cfg
        C = cfg.cols
        super().__init__({
            "en": In(1), "en_fifo": In(fifo_push_copies(C)), "en_rq": In(cfg.drain_lanes * REQUANT_EN_COPIES),
            "clear": In(1),
            "sr": In(5), "z_out": In(8), "out_fmt": In(OutFormat), "out_k": In(4),
            "i": In(DrainedRowSignature(cfg.drain_lanes, cfg.acc_bits)),
            "out": Out(stream.Signature(out_layout(C))),
            "fifo": Out(FifoFill),
            "acc_fault": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        C, G, W, S = self.cfg.cols, self.cfg.drain_lanes, self.cfg.acc_bits, self.cfg.requant_share
        fifo = m.submodules.fifo = PushFifo(len(Signal(out_layout(C)).as_value()), OUT_FIFO_DEPTH)
        wiring.connect(m, fifo.r, wiring.flipped(self.out))
        # tag: lane 0 carries (valid, row, col, last, inside), the other lanes (valid, inside)
        tag_bits = 3 + 2 * DIM_BITS
        outs = []
        for c in range(G):
            k = REQUANT_EN_COPIES
            rq = m.submodules[f"requant{c}"] = Requantiser(acc_bits=W, tag_bits=tag_bits if c == 0 else 2,
                                                           en_copies=k)
            cp = self.i.params[c]
            m.d.comb += [
                rq.i.valid.eq(1), rq.en.eq(self.en_rq[c * k:(c + 1) * k]),
                rq.i.payload.acc.eq(self.i.acc[c]), rq.i.payload.mr.eq(self.i.mr[c]),
                rq.i.payload.mc.eq(cp.mc), rq.i.payload.sc.eq(cp.sc), rq.i.payload.bq.eq(cp.bq),
                rq.sr.eq(self.sr), rq.z_out.eq(self.z_out), rq.out_fmt.eq(self.out_fmt), rq.bits.eq(self.out_k),
                rq.clear.eq(self.clear),
                rq.i.payload.tag.eq(Cat(self.i.valid, self.i.row, self.i.col, self.i.last, self.i.inside[c]) if c == 0
                                    else Cat(self.i.valid, self.i.inside[c])),
            ]
            outs.append(rq.o.payload)
        tag0 = outs[0].tag
        valid, col, last = tag0[0], tag0[1 + DIM_BITS:1 + 2 * DIM_BITS], tag0[1 + 2 * DIM_BITS]
        # row assembly: the first S - 1 column groups wait in ``held`` (oldest first), the last
        # group completes the row
        groups = [[(Signal(signed(32), name=f"held{g}_{c}"), Signal(name=f"held_sat{g}_{c}")) for c in range(G)]
                  for g in range(S - 1)]
        with m.If(self.en & valid & ~last):
            for g in range(S - 1):
                src = groups[g + 1] if g + 1 < S - 1 else [(o.value, o.sat) for o in outs]
                m.d.sync += [x.eq(y) for (hv, hs), (sv, ss) in zip(groups[g], src) for x, y in ((hv, sv), (hs, ss))]
        lanes = [lane for g in groups for lane in g] + [(o.value, o.sat) for o in outs]
        m.d.comb += [fifo.push.eq(Cat(*[e & valid & last for e in self.en_fifo])), self.fifo.level.eq(fifo.level)]
        w = Signal(out_layout(C))
        m.d.comb += [w.row.eq(tag0[1:1 + DIM_BITS]), w.col.eq(col - (S - 1) * G)]
        m.d.comb += [x for c in range(C) for x in (w.data[c].eq(lanes[c][0]), w.sat[c].eq(lanes[c][1]))]
        m.d.comb += fifo.w_data.eq(w.as_value())
        # a requantiser fault counts in a lane inside the layer (its tag's last bit)
        rq_fault_any = Cat(*[outs[c].fault & outs[c].tag[-1] for c in range(G)]).any()
        with m.If(self.clear):
            m.d.sync += self.acc_fault.eq(0)
        with m.Elif(self.en & (self.i.fault | (valid & rq_fault_any))):
            m.d.sync += self.acc_fault.eq(1)
        return m
