"""Layer engine: one linear layer / attention-matmul GEMM from streams (docs/datapath.md sections 4-7).

Block diagram (see docs/hardware.md for the full description)::

      cmd ─► controller (windows, tile order, global stall `en`, cycle counter)
                 │
      rowp ─► tile descriptors (Mr[r], za[r], n_outliers) ─────────────────────────┐
      colp ─► column params (Mc, Sc, Bq) ─┐                                        │
      b ────► B loader ─► B buffer (2 banks x max_k rows x C codes) ──┐ colsum     │
                               │ read k           │ read col (L ports)│            │
      a ────► OperandDecoder ─►│ MacArray R x C ──┼─ shadow rows ─────┼► drain: acc_raw - za*colsum,
                               │                  │                   │   << FO, + corr  ──► C x Requantiser
      outl ─► OutlierUnit ─────┴──────────────────┘ corr rows ────────┘                         │
                                                                                    out FIFO ◄──┘ ─► out

Every register of the engine advances only when the global enable ``en`` is high; ``en`` is low
when a stream the static schedule needs this cycle is not valid or the output FIFO is full.  The
cycle counter counts ``en`` cycles, so it equals :func:`hw.schedule.layer_cycles` for any stream
timing.

Stream order (what the host / DMA must send): tiles are visited column block outer, row tile inner
(:func:`hw.schedule.tile_order`).

* ``b``:    for each column block, ``K`` beats (B rows ``b[k, c0:c0+C]``, lanes ``>= n`` are 0).
* ``colp``: one beat per column block (``Mc, Sc, Bq`` per lane), with the block's first B beat.
* ``rowp``: one beat per tile (``Mr, za`` per row of the tile, ``n_outliers`` of its row tile).
* ``a``:    per tile, ``K`` beats: beat ``k`` holds ``A[r0 + r, k]`` in lane ``r`` (lanes ``>= m`` are 0).
* ``outl``: per tile, ``ceil(n_outliers / L)`` beats of ``L`` entries (absolute row, column, value),
  the row tile's outliers in order (the same list again for every column block).
* ``out``:  per tile, ``m`` beats, one output row (``C`` lanes, lanes ``>= n`` meaningless) with its
  absolute row index, the block's first column and a per-lane saturation mask.
"""
from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFO
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .common import CodeFormat, OutFormat
from .config import DIM_BITS, DRAIN_OFFSET, EngineConfig
from .decoders import OperandDecoder
from .mac_array import MacArray
from .outlier_unit import OutlierUnit, outlier_beat_layout
from .requantiser import Requantiser

__all__ = ["LayerEngine", "build_engine", "cmd_layout", "rowp_layout", "colp_layout", "out_layout", "ZA_BITS"]

#: Width of an A zero point ``za[r]`` (uniform ``z``; ``shiftlog2`` ``Zs`` can reach ~2^23).
ZA_BITS = 24
#: Output lane width (``fixed32`` is the widest output format).
OUT_BITS = 32

#: Command (layer configuration), accepted when the engine is idle; starts the layer.
cmd_layout = data.StructLayout({
    "m": unsigned(DIM_BITS), "k": unsigned(DIM_BITS), "n": unsigned(DIM_BITS),
    "a_fmt": CodeFormat, "a_k": unsigned(4), "m0": unsigned(4), "m1": unsigned(4),
    "fo": unsigned(3), "sr": unsigned(5), "z_out": unsigned(8), "out_fmt": OutFormat, "out_k": unsigned(4),
})


def rowp_layout(rows: int) -> data.StructLayout:
    """Tile descriptor: per-row ``Mr`` and ``za`` plus the row tile's outlier count."""
    return data.StructLayout({
        "mr": data.ArrayLayout(unsigned(16), rows),
        "za": data.ArrayLayout(unsigned(ZA_BITS), rows),
        "n_out": unsigned(DIM_BITS),
    })


#: Per-column requantiser parameters.
col_param_layout = data.StructLayout({"mc": unsigned(16), "sc": unsigned(6), "bq": signed(48)})


def colp_layout(cols: int) -> data.ArrayLayout:
    return data.ArrayLayout(col_param_layout, cols)


def out_layout(cols: int) -> data.StructLayout:
    return data.StructLayout({
        "row": unsigned(DIM_BITS), "col": unsigned(DIM_BITS),
        "data": data.ArrayLayout(signed(OUT_BITS), cols), "sat": unsigned(cols),
    })


class LayerEngine(wiring.Component):
    """The vitaccel layer engine (MAC array + sparse outlier unit + requantisers + scheduler).

    Parameters
    ----------
    cfg : EngineConfig

    Attributes
    ----------
    cmd : In(stream(cmd_layout))
        Layer command (shape, A format and width, ``FO``, ``Sr``, ``z_out``, output format / width).
    a, b, colp, rowp, outl : In(stream)
        Operand and parameter streams (order: module docstring).  ``outl`` exists only when
        ``cfg.outlier_capacity > 0``.
    out : Out(stream(out_layout(cols)))
        Output rows.
    busy : Out(1)
        A layer is running.
    cycles : Out(32)
        Engine cycles (``en`` cycles) of the current / last layer; equals
        :func:`hw.schedule.layer_cycles` ``.total`` when the layer is done.
    overflow, range_error, invalid_code, acc_fault : Out(1)
        Sticky error flags of the current / last layer: outlier capacity exceeded; outlier entry
        outside its tile; invalid A code; accumulator or requantiser value outside ``acc_bits``.
    """

    def __init__(self, cfg: EngineConfig):
        self.cfg = cfg
        R, C = cfg.rows, cfg.cols
        ports = {
            "cmd": In(stream.Signature(cmd_layout)),
            "a": In(stream.Signature(data.ArrayLayout(unsigned(cfg.a_bits), R))),
            "b": In(stream.Signature(data.ArrayLayout(signed(cfg.b_bits), C))),
            "colp": In(stream.Signature(colp_layout(C))),
            "rowp": In(stream.Signature(rowp_layout(R))),
            "out": Out(stream.Signature(out_layout(C))),
            "busy": Out(1),
            "cycles": Out(32),
            "overflow": Out(1),
            "range_error": Out(1),
            "invalid_code": Out(1),
            "acc_fault": Out(1),
        }
        if cfg.has_outliers:
            ports["outl"] = In(stream.Signature(outlier_beat_layout(cfg.outlier_lanes)))
        super().__init__(ports)

    def elaborate(self, platform):
        m = Module()
        cfg = self.cfg
        R, C, L = cfg.rows, cfg.cols, cfg.outlier_lanes
        W = cfg.acc_bits
        kb = cfg.k_bits
        rbits = max(1, (R - 1).bit_length())
        WC = DIM_BITS + 2

        # ------------------------------------------------------------------ layer configuration
        lc = Signal(cmd_layout)
        busy = self.busy
        start = Signal()
        m.d.comb += [self.cmd.ready.eq(~busy), start.eq(self.cmd.valid & ~busy)]

        # ------------------------------------------------------------------ controller state
        en = Signal()
        wc = Signal(WC)            # cycle within the current window
        wlen = Signal(WC)          # length of the current window
        a_off = Signal(WC)         # MAC issue offset in the current window
        epi = Signal()             # current window is the epilogue (drain of the last tile)

        def tile_regs(prefix):
            return dict(
                valid=Signal(name=f"{prefix}_valid"), r0=Signal(DIM_BITS, name=f"{prefix}_r0"),
                m=Signal(DIM_BITS, name=f"{prefix}_m"), c0=Signal(DIM_BITS, name=f"{prefix}_c0"),
                bank=Signal(name=f"{prefix}_bank"),
            )
        cur, prev = tile_regs("cur"), tile_regs("prev")
        cur_nb = Signal(DIM_BITS, name="cur_nb")        # outlier beats of the current tile
        cur_nout = Signal(DIM_BITS, name="cur_nout")
        nxt = tile_regs("nxt")
        nxt_desc = Signal(rowp_layout(R))
        cur_desc = Signal(rowp_layout(R))
        prev_desc = Signal(rowp_layout(R))

        nxt_m = Signal(DIM_BITS)
        m.d.comb += nxt_m.eq(Mux(lc.m - nxt["r0"] < R, lc.m - nxt["r0"], R))

        # ------------------------------------------------------------------ schedule decisions (comb)
        prev_m_eff = Mux(prev["valid"], prev["m"], 0)
        mac_issue = Signal()
        drain_issue = Signal()
        outl_issue = Signal()
        need_rowp = Signal()
        m.d.comb += [
            mac_issue.eq(busy & cur["valid"] & (wc >= a_off) & (wc < a_off + lc.k)),
            drain_issue.eq(busy & prev["valid"] & (wc >= DRAIN_OFFSET) & (wc < DRAIN_OFFSET + prev["m"])),
            need_rowp.eq(busy & (wc == 0) & nxt["valid"]),
        ]
        if cfg.has_outliers:
            o_start = DRAIN_OFFSET + prev_m_eff
            m.d.comb += outl_issue.eq(busy & cur["valid"] & (wc >= o_start) & (wc < o_start + cur_nb))

        # B loader
        ld_active = Signal()
        ld_cnt = Signal(DIM_BITS)
        ld_bank = Signal()
        need_colp = Signal()
        m.d.comb += need_colp.eq(ld_active & (ld_cnt == 0))

        # output FIFO
        fifo = m.submodules.out_fifo = SyncFIFO(width=len(Signal(out_layout(C)).as_value()), depth=4)
        m.d.comb += [self.out.valid.eq(fifo.r_rdy), self.out.payload.eq(fifo.r_data),
                     fifo.r_en.eq(self.out.ready)]

        # global enable
        ok = fifo.w_rdy
        ok = ok & (~need_rowp | self.rowp.valid)
        ok = ok & (~mac_issue | self.a.valid)
        ok = ok & (~ld_active | self.b.valid)
        ok = ok & (~need_colp | self.colp.valid)
        if cfg.has_outliers:
            ok = ok & (~outl_issue | self.outl.valid)
        m.d.comb += en.eq(busy & ok)
        m.d.comb += [
            self.rowp.ready.eq(en & need_rowp),
            self.a.ready.eq(en & mac_issue),
            self.b.ready.eq(en & ld_active),
            self.colp.ready.eq(en & need_colp),
        ]
        if cfg.has_outliers:
            m.d.comb += self.outl.ready.eq(en & outl_issue)

        # ------------------------------------------------------------------ window sequencing
        boundary = Signal()
        m.d.comb += boundary.eq(wc + 1 >= wlen)
        # next window's length from the registers (valid during the boundary cycle)
        new_prev_m = Mux(cur["valid"], cur["m"], 0)
        nb_next = (nxt_desc.n_out + (L - 1)) >> (L.bit_length() - 1) if cfg.has_outliers else Const(0, 1)
        a_next = Mux(new_prev_m > lc.k, new_prev_m - lc.k, 0)
        w_mac = a_next + lc.k
        w_drain = new_prev_m + DRAIN_OFFSET
        w_out = Mux(nb_next != 0, new_prev_m + nb_next + DRAIN_OFFSET, 0)
        w1 = Mux(w_mac > w_drain, w_mac, w_drain)
        w_next = Mux(w1 > w_out, w1, w_out)
        w_epi = new_prev_m + DRAIN_OFFSET + cfg.drain_latency

        commit = Signal()          # commit the loaded column data to cur.bank (first cycle of a block)
        colsum_acc = [Signal(signed(cfg.colsum_bits), name=f"colsum_acc{c}") for c in range(C)]
        colp_scratch = Signal(colp_layout(C))
        colsum_bank = [[Signal(signed(cfg.colsum_bits), name=f"colsum{bk}_{c}") for c in range(C)]
                       for bk in range(2)]
        colp_bank = [Signal(colp_layout(C), name=f"colp{bk}") for bk in range(2)]

        # loader progress (before the window sequencing, whose loader start overrides it)
        with m.If(en & ld_active):
            m.d.sync += ld_cnt.eq(ld_cnt + 1)
            with m.If(ld_cnt + 1 >= lc.k):
                m.d.sync += ld_active.eq(0)
            for c in range(C):
                m.d.sync += colsum_acc[c].eq(Mux(ld_cnt == 0, 0, colsum_acc[c]) + self.b.payload[c])
            with m.If(ld_cnt == 0):
                m.d.sync += colp_scratch.eq(self.colp.payload)
        with m.If(start):
            m.d.sync += [
                lc.eq(self.cmd.payload), busy.eq(1), wc.eq(0), epi.eq(0), a_off.eq(0),
                wlen.eq(Mux(self.cmd.payload.k > 2, self.cmd.payload.k, 2)),
                cur["valid"].eq(0), prev["valid"].eq(0),
                nxt["valid"].eq(1), nxt["r0"].eq(0), nxt["c0"].eq(0), nxt["bank"].eq(0),
                ld_active.eq(1), ld_cnt.eq(0), ld_bank.eq(0), commit.eq(0),
                self.cycles.eq(0),
            ]
        with m.Elif(en):
            m.d.sync += self.cycles.eq(self.cycles + 1)
            m.d.sync += commit.eq(0)
            with m.If(need_rowp):
                m.d.sync += nxt_desc.eq(self.rowp.payload)
            with m.If(boundary):
                m.d.sync += wc.eq(0)
                with m.If(epi):
                    m.d.sync += busy.eq(0)
                with m.Else():
                    for key in cur:
                        m.d.sync += prev[key].eq(cur[key])
                    m.d.sync += prev_desc.eq(cur_desc)
                    with m.If(nxt["valid"]):
                        m.d.sync += [
                            cur["valid"].eq(1), cur["r0"].eq(nxt["r0"]), cur["m"].eq(nxt_m),
                            cur["c0"].eq(nxt["c0"]), cur["bank"].eq(nxt["bank"]),
                            cur_desc.eq(nxt_desc), cur_nb.eq(nb_next), cur_nout.eq(nxt_desc.n_out),
                            wlen.eq(w_next), a_off.eq(a_next),
                        ]
                        # advance the next tile: row tiles inner, column blocks outer
                        last_row_tile = nxt["r0"] + R >= lc.m
                        with m.If(last_row_tile):
                            m.d.sync += [nxt["r0"].eq(0), nxt["c0"].eq(nxt["c0"] + C),
                                         nxt["bank"].eq(~nxt["bank"]),
                                         nxt["valid"].eq(nxt["c0"] + C < lc.n)]
                        with m.Else():
                            m.d.sync += nxt["r0"].eq(nxt["r0"] + R)
                        with m.If(nxt["r0"] == 0):   # first tile of a column block
                            m.d.sync += commit.eq(1)
                            with m.If(nxt["c0"] + C < lc.n):   # another block follows: load it
                                m.d.sync += [ld_active.eq(1), ld_cnt.eq(0), ld_bank.eq(~nxt["bank"])]
                    with m.Else():
                        m.d.sync += [cur["valid"].eq(0), epi.eq(1), wlen.eq(w_epi), a_off.eq(0)]
            with m.Else():
                m.d.sync += wc.eq(wc + 1)

        # ------------------------------------------------------------------ B buffer and loader
        row_shape = data.ArrayLayout(signed(cfg.b_bits), C)
        bmem = m.submodules.bbuf = Memory(shape=row_shape, depth=2 * (1 << kb), init=[])
        wp = bmem.write_port()
        rp_mac = bmem.read_port(domain="sync")
        m.d.comb += [
            wp.addr.eq(Cat(ld_cnt[:kb], ld_bank)), wp.data.eq(self.b.payload), wp.en.eq(en & ld_active),
            rp_mac.addr.eq(Cat((wc - a_off)[:kb], cur["bank"])), rp_mac.en.eq(en),
        ]
        with m.If(en & commit):
            for bk in range(2):
                with m.If(cur["bank"] == bk):
                    m.d.sync += colp_bank[bk].eq(colp_scratch)
                    m.d.sync += [colsum_bank[bk][c].eq(colsum_acc[c]) for c in range(C)]

        # ------------------------------------------------------------------ decoder + MAC array
        dec = m.submodules.decoder = OperandDecoder(lanes=R)
        m.d.comb += [
            dec.i.valid.eq(1), dec.o.ready.eq(en),
            dec.fmt.eq(lc.a_fmt), dec.bits.eq(lc.a_k), dec.m0.eq(lc.m0), dec.m1.eq(lc.m1),
            dec.clear.eq(start),
        ]
        for r in range(R):
            m.d.comb += dec.i.payload[r].eq(Mux(mac_issue & self.a.valid, self.a.payload[r], 0))
        mac = m.submodules.mac = MacArray(R, C, cfg.b_bits, W)
        v1, f1, l1 = Signal(), Signal(), Signal()
        with m.If(en):
            m.d.sync += [v1.eq(mac_issue), f1.eq(wc == a_off), l1.eq(wc + 1 == a_off + lc.k)]
        m.d.comb += [mac.en.eq(en), mac.valid.eq(v1), mac.first.eq(f1), mac.last.eq(l1),
                     mac.b.eq(rp_mac.data)]
        for r in range(R):
            d = dec.o.payload[r]
            m.d.comb += [mac.a[r].neg.eq(d.neg), mac.a[r].mag.eq(d.mag), mac.a[r].sh.eq(d.sh)]

        # ------------------------------------------------------------------ outlier unit
        drain_row = Signal(rbits)
        m.d.comb += drain_row.eq((wc - DRAIN_OFFSET)[:rbits])
        m.d.comb += mac.drain_row.eq(drain_row)
        corr_row = [Const(0, 1) for _ in range(C)]
        overflow = Signal()
        range_error = Signal()
        if cfg.has_outliers:
            ou = m.submodules.outliers = OutlierUnit(R, C, cfg.b_bits, cfg.outlier_capacity, L,
                                                     cfg.corr_bits, kb)
            m.d.comb += [
                ou.en.eq(en), ou.issue.eq(outl_issue), ou.entries.eq(self.outl.payload),
                ou.row0.eq(cur["r0"]), ou.m.eq(cur["m"]), ou.k.eq(lc.k),
                ou.tile_start.eq(busy & cur["valid"] & (wc == 0)), ou.tile_count.eq(cur_nout),
                ou.drain.eq(drain_issue), ou.drain_row.eq(drain_row), ou.clear.eq(start),
                overflow.eq(ou.overflow), range_error.eq(ou.range_error),
            ]
            for l in range(L):
                rp = bmem.read_port(domain="sync")
                m.d.comb += [rp.addr.eq(Cat(ou.rd_addr[l], cur["bank"])), rp.en.eq(en),
                             ou.rd_data[l].eq(rp.data)]
            corr_row = [ou.corr_row[c] for c in range(C)]

        # ------------------------------------------------------------------ drain: D1, D2, D3
        d1_v = Signal()
        d1_row = Signal(DIM_BITS)
        d1_col = Signal(DIM_BITS)
        d1_acc = [Signal(signed(W), name=f"d1_acc{c}") for c in range(C)]
        d1_corr = [Signal(signed(cfg.corr_bits), name=f"d1_corr{c}") for c in range(C)]
        d1_za = Signal(ZA_BITS)
        d1_mr = Signal(16)
        d1_cs = [Signal(signed(cfg.colsum_bits), name=f"d1_cs{c}") for c in range(C)]
        d1_cp = Signal(colp_layout(C))
        with m.If(en):
            m.d.sync += [
                d1_v.eq(drain_issue), d1_row.eq(prev["r0"] + drain_row), d1_col.eq(prev["c0"]),
                d1_za.eq(prev_desc.za[drain_row]), d1_mr.eq(prev_desc.mr[drain_row]),
                d1_cp.eq(Mux(prev["bank"], colp_bank[1].as_value(), colp_bank[0].as_value())),
            ]
            for c in range(C):
                m.d.sync += [d1_acc[c].eq(mac.shadow_row[c]), d1_corr[c].eq(corr_row[c]),
                             d1_cs[c].eq(Mux(prev["bank"], colsum_bank[1][c], colsum_bank[0][c]))]
        d2_v = Signal()
        d2_row, d2_col, d2_mr = Signal(DIM_BITS), Signal(DIM_BITS), Signal(16)
        d2_acc = [Signal(signed(W), name=f"d2_acc{c}") for c in range(C)]
        d2_corr = [Signal(signed(cfg.corr_bits), name=f"d2_corr{c}") for c in range(C)]
        d2_zp = [Signal(signed(ZA_BITS + cfg.colsum_bits + 1), name=f"d2_zp{c}") for c in range(C)]
        d2_cp = Signal(colp_layout(C))
        with m.If(en):
            m.d.sync += [d2_v.eq(d1_v), d2_row.eq(d1_row), d2_col.eq(d1_col), d2_mr.eq(d1_mr), d2_cp.eq(d1_cp)]
            for c in range(C):
                m.d.sync += [d2_acc[c].eq(d1_acc[c]), d2_corr[c].eq(d1_corr[c]),
                             d2_zp[c].eq(d1_za * d1_cs[c])]
        d3_v = Signal()
        d3_row, d3_col, d3_mr = Signal(DIM_BITS), Signal(DIM_BITS), Signal(16)
        d3_acc = [Signal(signed(W), name=f"d3_acc{c}") for c in range(C)]
        d3_cp = Signal(colp_layout(C))
        d3_fault = Signal()
        faults = []
        with m.If(en):
            m.d.sync += [d3_v.eq(d2_v), d3_row.eq(d2_row), d3_col.eq(d2_col), d3_mr.eq(d2_mr), d3_cp.eq(d2_cp)]
            for c in range(C):
                full = ((d2_acc[c] - d2_zp[c]) << lc.fo) + d2_corr[c]
                fits = (full >= -(1 << (W - 1))) & (full <= (1 << (W - 1)) - 1)
                faults.append(~fits & (c < lc.n - d2_col))
                m.d.sync += d3_acc[c].eq(full[:W].as_signed())
            m.d.sync += d3_fault.eq(d2_v & Cat(*faults).any())

        # ------------------------------------------------------------------ requantisers (one per column)
        tag_bits = 1 + 2 * DIM_BITS
        rq_fault = []
        outs = []
        for c in range(C):
            rq = Requantiser(acc_bits=W, tag_bits=tag_bits if c == 0 else 1)
            m.submodules[f"requant{c}"] = rq
            cp = d3_cp[c]
            m.d.comb += [
                rq.i.valid.eq(1), rq.o.ready.eq(en),
                rq.i.payload.acc.eq(d3_acc[c]), rq.i.payload.mr.eq(d3_mr),
                rq.i.payload.mc.eq(cp.mc), rq.i.payload.sc.eq(cp.sc), rq.i.payload.bq.eq(cp.bq),
                rq.sr.eq(lc.sr), rq.z_out.eq(lc.z_out), rq.out_fmt.eq(lc.out_fmt), rq.bits.eq(lc.out_k),
                rq.clear.eq(start),
            ]
            if c == 0:
                m.d.comb += rq.i.payload.tag.eq(Cat(d3_v, d3_row, d3_col))
                tag0 = rq.o.payload.tag
            else:
                m.d.comb += rq.i.payload.tag.eq(d3_v)
            rq_fault.append(rq.o.payload.fault)
            outs.append(rq.o.payload)
        push = Signal()
        m.d.comb += push.eq(en & tag0[0])
        w = Signal(out_layout(C))
        m.d.comb += [w.row.eq(tag0[1:1 + DIM_BITS]), w.col.eq(tag0[1 + DIM_BITS:])]
        for c in range(C):
            m.d.comb += [w.data[c].eq(outs[c].value), w.sat[c].eq(outs[c].sat)]
        m.d.comb += [fifo.w_en.eq(push), fifo.w_data.eq(w.as_value())]
        ncols_valid = lc.n - w.col
        rq_fault_any = Cat(*[rq_fault[c] & (c < ncols_valid) for c in range(C)]).any()

        # ------------------------------------------------------------------ status flags
        with m.If(start):
            m.d.sync += self.acc_fault.eq(0)
        with m.Elif(en & (d3_fault | (push & rq_fault_any))):
            m.d.sync += self.acc_fault.eq(1)
        m.d.comb += [self.invalid_code.eq(dec.invalid_seen), self.overflow.eq(overflow),
                     self.range_error.eq(range_error)]
        return m


def build_engine(**fields) -> LayerEngine:
    """``LayerEngine(EngineConfig(**fields))`` (a factory taking plain values, for caching / CLIs)."""
    return LayerEngine(EngineConfig(**fields))
