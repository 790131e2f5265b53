"""Layer engine: one linear layer / attention-matmul GEMM from streams (docs/datapath.md sections 4-7).

Block diagram (see docs/hardware.md for the full description)::

      cmd ─► controller (windows, tile order, registered global stall `en` x copies, cycle counter)
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
when a stream the static schedule needs this cycle has no beat or the output FIFO could be full.
The cycle counter counts ``en`` cycles, so it equals :func:`sim.schedule.layer_cycles` for any stream
timing.

Timing structure (docs/hardware.md, "Fmax"): ``en`` is a register, computed one cycle ahead
(:mod:`hw.stall`): every input stream enters through a 2-entry skid buffer, the controller keeps its
registers in "advance" form (``x_adv`` = value after an enabled cycle), so the stream needs of the
next cycle are known, and the output FIFO must keep a free entry.  ``en`` exists in several identical
register copies (one per group of :data:`PES_PER_ENABLE` PEs, one per output column, one per
outlier correction row, one each for the controller, decoder and drain), so no enable net has more
than a few hundred loads.  The next-cycle stream needs are registers too, computed from registered
equality flags and free-running precomputed window arithmetic, so the enable logic is a few LUT
levels deep.
Starting a layer costs one stalled (not counted) cycle.

Stream order (what the host / DMA must send): tiles are visited column block outer, row tile inner
(:func:`sim.schedule.tile_order`).

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

from .common import CodeFormat, OutFormat, partial_products, sum_products
from vitaccel.sim.engine_config import DIM_BITS, DRAIN_OFFSET, EngineConfig
from .decoders import OperandDecoder
from .mac_array import MacArray
from .outlier_unit import OutlierUnit, outlier_beat_layout
from .requantiser import Requantiser
from .stall import SkidBuffer, enable_copies

__all__ = ["LayerEngine", "build_engine", "cmd_layout", "rowp_layout", "colp_layout", "out_layout", "ZA_BITS"]

#: Width of an A zero point ``za[r]`` (uniform ``z``; ``shiftlog2`` ``Zs`` can reach ~2^23).
ZA_BITS = 24
#: Output lane width (``fixed32`` is the widest output format).
OUT_BITS = 32
#: Input streams (each enters through a 2-entry :class:`hw.stall.SkidBuffer`).
STREAM_PORTS = ("a", "b", "colp", "rowp", "outl")
#: Output FIFO depth; the engine advances only if the FIFO has a free entry in the next cycle.
OUT_FIFO_DEPTH = 4
#: PEs per copy of the enable register (and of the product-stage control) in the MAC array.
PES_PER_ENABLE = 4


def mac_en_groups(rows: int, cols: int) -> int:
    """Number of enable copies driven into the ``rows x cols`` MAC array."""
    return max(1, -(-rows * cols // PES_PER_ENABLE))

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
        :func:`sim.schedule.layer_cycles` ``.total`` when the layer is done.
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

        # ------------------------------------------------------------------ input skid buffers
        bufs = {}
        for name in STREAM_PORTS:
            if name == "outl" and not cfg.has_outliers:
                continue
            port = getattr(self, name)
            buf = m.submodules[f"{name}_buf"] = SkidBuffer(port.payload.shape())
            wiring.connect(m, wiring.flipped(port), buf.i)
            bufs[name] = buf
        a_in, b_in, colp_in, rowp_in = (bufs[n].head for n in ("a", "b", "colp", "rowp"))

        # ------------------------------------------------------------------ layer configuration
        lc = Signal(cmd_layout)
        busy = self.busy
        start = Signal()
        m.d.comb += [self.cmd.ready.eq(~busy), start.eq(self.cmd.valid & ~busy)]

        # ------------------------------------------------------------------ enable copies
        # ``en`` is a register (in several identical copies, see hw/stall.py), computed one cycle
        # ahead; x_adv / x_hold are defined below, after the schedule logic.
        x_adv, x_hold = Signal(), Signal()
        groups = mac_en_groups(R, C)
        en_mac = enable_copies(m, groups, x_adv, x_hold, start, "en_mac")
        en_col = enable_copies(m, C, x_adv, x_hold, start, "en_col")
        en, en_dec, en_drain = enable_copies(m, 3, x_adv, x_hold, start, "en_unit")
        en_ou = enable_copies(m, R, x_adv, x_hold, start, "en_ou") if cfg.has_outliers else []
        en_ctl = en   # controller, loader, B buffer, status

        # ------------------------------------------------------------------ controller state
        # All controller registers advance with en_ctl.  They are written in "advance" form:
        # ``A(x)`` is the value ``x`` takes when the engine advances in this cycle (it keeps its value
        # when it stalls), so the stream needs of the next cycle -- and therefore ``en`` -- are known
        # one cycle ahead.  The window arithmetic (lengths, offsets, tile bounds) is precomputed in
        # free-running registers ``f_*`` from state that is stable for at least two cycles before a
        # window boundary (windows last >= 2 cycles), so the boundary logic only compares for equality.
        wc = Signal(WC)            # cycle within the current window
        wc1 = Signal(WC)           # wc + 1
        wlen = Signal(WC)          # length of the current window
        bnd = Signal()             # last cycle of the window (wc + 1 == wlen)
        a_off = Signal(WC)         # MAC issue offset in the current window
        a_end = Signal(WC)         # a_off + K
        o_start = Signal(WC)       # DRAIN_OFFSET + rows of the previous tile (end of its drain, start of outliers)
        o_end = Signal(WC)         # o_start + outlier beats of the current tile
        epi = Signal()             # current window is the epilogue (drain of the last tile)

        def tile_regs(prefix):
            return dict(
                valid=Signal(name=f"{prefix}_valid"), r0=Signal(DIM_BITS, name=f"{prefix}_r0"),
                m=Signal(DIM_BITS, name=f"{prefix}_m"), c0=Signal(DIM_BITS, name=f"{prefix}_c0"),
                bank=Signal(name=f"{prefix}_bank"),
            )
        cur, prev = tile_regs("cur"), tile_regs("prev")
        cur_nout = Signal(DIM_BITS, name="cur_nout")
        nxt = tile_regs("nxt")
        nxt_desc = Signal(rowp_layout(R))
        nxt_nb = Signal(DIM_BITS, name="nxt_nb")        # outlier beats of the next tile
        cur_desc = Signal(rowp_layout(R))
        prev_desc = Signal(rowp_layout(R))

        # B loader
        ld_active = Signal()
        ld_cnt = Signal(DIM_BITS)
        ld_bank = Signal()
        commit = Signal()          # commit the loaded column data to cur.bank (first cycle of a block)
        mac_rd = Signal(kb, name="mac_rd")          # B buffer row of the MAC issue: wc - a_off
        drain_row = Signal(rbits, name="drain_row")  # shadow row of the drain: wc - DRAIN_OFFSET

        # schedule decisions of the current cycle (registers)
        need_keys = ["a", "rowp", "b", "colp", "drain"] + (["outl"] if cfg.has_outliers else [])
        need = {k: Signal(name=f"need_{k}") for k in need_keys}
        need_at_start = {"a": 0, "rowp": 1, "b": 1, "colp": 1, "drain": 0, "outl": 0}
        mac_issue, need_rowp, need_colp, drain_issue = need["a"], need["rowp"], need["colp"], need["drain"]
        outl_issue = need["outl"] if cfg.has_outliers else Const(0, 1)

        # equality flags of the current state, registered (they feed the next-cycle needs, so the
        # enable logic sees flip-flops, not comparators)
        e_a_end = Signal(name="e_a_end")      # wc1 == a_end   (last MAC issue cycle)
        e_a_off = Signal(name="e_a_off")      # wc1 == a_off   (MAC issue starts next cycle)
        e_o_start = Signal(name="e_o_start")  # wc1 == o_start (drain ends / outliers start next cycle)
        e_o_end = Signal(name="e_o_end")      # wc1 == o_end   (outliers end)
        e_drain0 = Signal(name="e_drain0")    # wc1 == DRAIN_OFFSET (drain starts next cycle)
        e_onz = Signal(name="e_onz")          # o_end != o_start (the current tile has outliers)
        e_ld_last = Signal(name="e_ld_last")  # ld_cnt + 1 == K (last B row of the block)
        flags = [e_a_end, e_a_off, e_o_start, e_o_end, e_drain0, e_onz, e_ld_last]

        ctl_regs = [busy, wc, wc1, wlen, bnd, a_off, a_end, o_start, o_end, epi, cur_nout,
                    ld_active, ld_cnt, ld_bank, commit, mac_rd, drain_row,
                    *cur.values(), *prev.values(), *nxt.values(), *need.values(), *flags]
        adv = {}
        for r in ctl_regs:
            adv[id(r)] = Signal.like(r, name=f"{r.name}_adv")
            m.d.comb += adv[id(r)].eq(r)

        def A(r):
            return adv[id(r)]

        # ------------------------------------------------------------------ free-running precomputation
        def free(value, name):
            reg = Signal(value.shape(), name=name)
            m.d.sync += reg.eq(value)
            return reg
        m_eff = Mux(cur["valid"], cur["m"], 0)      # rows of the tile that becomes ``prev``
        f_a_next = free(Mux(m_eff > lc.k, m_eff - lc.k, 0), "f_a_next")          # a_off of the next window
        f_a_end = free(Mux(m_eff > lc.k, m_eff, lc.k), "f_a_end")                # its a_off + K
        f_m2 = free(m_eff + DRAIN_OFFSET, "f_m2")                                # its o_start
        f_base = free(Mux(m_eff + DRAIN_OFFSET > lc.k, m_eff + DRAIN_OFFSET, lc.k), "f_base")  # W without outliers
        f_w_epi = free(m_eff + DRAIN_OFFSET + cfg.drain_latency, "f_w_epi")       # epilogue length
        f_nxt_m = free(Mux(lc.m - nxt["r0"] < R, lc.m - nxt["r0"], R), "f_nxt_m")  # rows of the next tile
        f_last_rt = free(nxt["r0"] + R >= lc.m, "f_last_rt")                      # next tile: last row tile
        f_more_cb = free(nxt["c0"] + C < lc.n, "f_more_cb")                       # another column block follows
        f_a0 = free(m_eff <= lc.k, "f_a0")                                        # f_a_next == 0
        f_r0z = free(nxt["r0"] == 0, "f_r0z")                                     # next tile starts a block

        # next window's length and outlier end (at the boundary; nxt_nb was registered at wc = 0)
        o_end_next = f_m2 + nxt_nb
        w_out = Mux(nxt_nb != 0, o_end_next, 0)      # m + nb + DRAIN_OFFSET
        w_next = Mux(f_base > w_out, f_base, w_out)

        # ------------------------------------------------------------------ advance logic
        colsum_acc = [Signal(signed(cfg.colsum_bits), name=f"colsum_acc{c}") for c in range(C)]
        colp_scratch = Signal(colp_layout(C))
        colsum_bank = [[Signal(signed(cfg.colsum_bits), name=f"colsum{bk}_{c}") for c in range(C)]
                       for bk in range(2)]
        colp_bank = [Signal(colp_layout(C), name=f"colp{bk}") for bk in range(2)]

        load_start = Signal()       # a boundary that starts loading the next column block
        m.d.comb += load_start.eq(bnd & ~epi & nxt["valid"] & f_r0z & f_more_cb)
        # loader progress (before the window sequencing, whose loader start overrides it)
        with m.If(ld_active):
            m.d.comb += A(ld_cnt).eq(ld_cnt + 1)
            with m.If(e_ld_last):
                m.d.comb += A(ld_active).eq(0)
        with m.If(en_ctl & ld_active):
            for c in range(C):
                m.d.sync += colsum_acc[c].eq(Mux(ld_cnt == 0, 0, colsum_acc[c]) + b_in[c])
            with m.If(ld_cnt == 0):
                m.d.sync += colp_scratch.eq(colp_in)
        m.d.comb += A(commit).eq(0)
        with m.If(bnd):
            m.d.comb += [A(wc).eq(0), A(wc1).eq(1), A(bnd).eq(0), A(mac_rd).eq((-f_a_next)[:kb]),
                         A(drain_row).eq((-DRAIN_OFFSET) % (1 << rbits))]
            with m.If(epi):
                m.d.comb += A(busy).eq(0)
            with m.Else():
                for key in cur:
                    m.d.comb += A(prev[key]).eq(cur[key])
                m.d.comb += A(o_start).eq(f_m2)
                with m.If(nxt["valid"]):
                    m.d.comb += [
                        A(cur["valid"]).eq(1), A(cur["r0"]).eq(nxt["r0"]), A(cur["m"]).eq(f_nxt_m),
                        A(cur["c0"]).eq(nxt["c0"]), A(cur["bank"]).eq(nxt["bank"]),
                        A(cur_nout).eq(nxt_desc.n_out), A(o_end).eq(o_end_next),
                        A(wlen).eq(w_next), A(a_off).eq(f_a_next), A(a_end).eq(f_a_end),
                    ]
                    # advance the next tile: row tiles inner, column blocks outer
                    with m.If(f_last_rt):
                        m.d.comb += [A(nxt["r0"]).eq(0), A(nxt["c0"]).eq(nxt["c0"] + C),
                                     A(nxt["bank"]).eq(~nxt["bank"]), A(nxt["valid"]).eq(f_more_cb)]
                    with m.Else():
                        m.d.comb += A(nxt["r0"]).eq(nxt["r0"] + R)
                    with m.If(f_r0z):            # first tile of a column block
                        m.d.comb += A(commit).eq(1)
                    with m.If(load_start):       # another block follows: load it
                        m.d.comb += [A(ld_active).eq(1), A(ld_cnt).eq(0), A(ld_bank).eq(~nxt["bank"])]
                with m.Else():
                    m.d.comb += [A(cur["valid"]).eq(0), A(epi).eq(1), A(wlen).eq(f_w_epi), A(a_off).eq(0)]
        with m.Else():
            m.d.comb += [A(wc).eq(wc1), A(wc1).eq(wc1 + 1), A(bnd).eq(wc1 + 1 == wlen),
                         A(mac_rd).eq(mac_rd + 1), A(drain_row).eq((wc1 - DRAIN_OFFSET)[:rbits])]

        # needs of the next cycle (only equality compares on registers)
        with m.If(bnd):
            m.d.comb += [
                A(need["a"]).eq(~epi & nxt["valid"] & f_a0),
                A(need["rowp"]).eq(~epi & nxt["valid"] & (~f_last_rt | f_more_cb)),
                A(need["drain"]).eq(0),
            ]
            if cfg.has_outliers:
                m.d.comb += A(need["outl"]).eq(0)
        with m.Else():
            m.d.comb += [
                A(need["a"]).eq(Mux(mac_issue, ~e_a_end, cur["valid"] & e_a_off)),
                A(need["rowp"]).eq(0),
                A(need["drain"]).eq(Mux(drain_issue, ~e_o_start, prev["valid"] & e_drain0)),
            ]
            if cfg.has_outliers:
                m.d.comb += A(need["outl"]).eq(Mux(outl_issue, ~e_o_end, cur["valid"] & e_onz & e_o_start))
        m.d.comb += [A(need["b"]).eq(A(ld_active)), A(need["colp"]).eq(load_start)]
        m.d.comb += [
            A(e_a_end).eq(A(wc1) == A(a_end)), A(e_a_off).eq(A(wc1) == A(a_off)),
            A(e_o_start).eq(A(wc1) == A(o_start)), A(e_o_end).eq(A(wc1) == A(o_end)),
            A(e_drain0).eq(A(wc1) == DRAIN_OFFSET), A(e_onz).eq(A(o_end) != A(o_start)),
            A(e_ld_last).eq(A(ld_cnt) + 1 == lc.k),
        ]

        with m.If(start):
            m.d.sync += [
                lc.eq(self.cmd.payload), busy.eq(1), wc.eq(0), wc1.eq(1), bnd.eq(0), epi.eq(0), a_off.eq(0),
                wlen.eq(Mux(self.cmd.payload.k > 2, self.cmd.payload.k, 2)),
                cur["valid"].eq(0), prev["valid"].eq(0),
                nxt["valid"].eq(1), nxt["r0"].eq(0), nxt["c0"].eq(0), nxt["bank"].eq(0),
                ld_active.eq(1), ld_cnt.eq(0), ld_bank.eq(0), commit.eq(0),
                mac_rd.eq(0), drain_row.eq((-DRAIN_OFFSET) % (1 << rbits)),
                self.cycles.eq(0),
                # flags of the start state (wc1 = 1, a_off = 0, ld_cnt = 0); a_end / o_* are only
                # used once a tile is current, after the first boundary has set them
                e_a_end.eq(0), e_a_off.eq(0), e_o_start.eq(0), e_o_end.eq(0), e_onz.eq(0),
                e_drain0.eq(DRAIN_OFFSET == 1), e_ld_last.eq(self.cmd.payload.k == 1),
            ]
            m.d.sync += [need[k].eq(need_at_start[k]) for k in need_keys]
        with m.Elif(en_ctl):
            m.d.sync += [r.eq(A(r)) for r in ctl_regs]
            m.d.sync += self.cycles.eq(self.cycles + 1)
            with m.If(need_rowp):
                m.d.sync += nxt_desc.eq(rowp_in)
                if cfg.has_outliers:
                    m.d.sync += nxt_nb.eq((rowp_in.n_out + (L - 1)) >> (L.bit_length() - 1))
            with m.If(bnd & ~epi):
                m.d.sync += prev_desc.eq(cur_desc)
                with m.If(nxt["valid"]):
                    m.d.sync += cur_desc.eq(nxt_desc)

        # ------------------------------------------------------------------ stall: streams and enable
        for k, buf in bufs.items():
            m.d.comb += buf.pop.eq(en_ctl & need[k])

        # output FIFO (the enable requires a free entry in the next cycle even without a read)
        fifo = m.submodules.out_fifo = SyncFIFO(width=len(Signal(out_layout(C)).as_value()), depth=OUT_FIFO_DEPTH)
        m.d.comb += [self.out.valid.eq(fifo.r_rdy), self.out.payload.eq(fifo.r_data),
                     fifo.r_en.eq(self.out.ready)]
        push_pending = Signal()    # the requantisers hold a row that is pushed if the engine advances

        # next-cycle enable: x_adv if the engine advances now, x_hold if it stalls now
        ok_adv = A(busy) & (fifo.level + push_pending <= OUT_FIFO_DEPTH - 1)
        ok_hold = busy & (fifo.level <= OUT_FIFO_DEPTH - 1)
        for k, buf in bufs.items():
            ok_adv = ok_adv & (~A(need[k]) | Mux(need[k], buf.avail_if_pop, buf.avail_if_hold))
            ok_hold = ok_hold & (~need[k] | buf.avail_if_hold)
        m.d.comb += [x_adv.eq(ok_adv), x_hold.eq(ok_hold)]

        # ------------------------------------------------------------------ B buffer and loader
        row_shape = data.ArrayLayout(signed(cfg.b_bits), C)
        bmem = m.submodules.bbuf = Memory(shape=row_shape, depth=2 * (1 << kb), init=[])
        wp = bmem.write_port()
        rp_mac = bmem.read_port(domain="sync")
        bank_next = Signal(name="bank_next")      # cur.bank in the next cycle
        m.d.comb += bank_next.eq(Mux(en_ctl, A(cur["bank"]), cur["bank"]))
        b_row = Signal.like(rp_mac.data, name="b_row")
        with m.If(en_ctl):
            m.d.sync += b_row.eq(rp_mac.data)
        m.d.comb += [
            wp.addr.eq(Cat(ld_cnt[:kb], ld_bank)), wp.data.eq(b_in), wp.en.eq(en_ctl & ld_active),
            # read one cycle ahead (address of the next cycle's state), register the row in the fabric
            rp_mac.addr.eq(Cat(Mux(start, 0, Mux(en_ctl, A(mac_rd), mac_rd)), bank_next)), rp_mac.en.eq(1),
        ]
        with m.If(en_ctl & commit):
            for bk in range(2):
                with m.If(cur["bank"] == bk):
                    m.d.sync += colp_bank[bk].eq(colp_scratch)
                    m.d.sync += [colsum_bank[bk][c].eq(colsum_acc[c]) for c in range(C)]

        # ------------------------------------------------------------------ decoder + MAC array
        dec = m.submodules.decoder = OperandDecoder(lanes=R)
        m.d.comb += [
            dec.i.valid.eq(1), dec.o.ready.eq(en_dec),
            dec.fmt.eq(lc.a_fmt), dec.bits.eq(lc.a_k), dec.m0.eq(lc.m0), dec.m1.eq(lc.m1),
            dec.clear.eq(start),
        ]
        for r in range(R):
            m.d.comb += dec.i.payload[r].eq(Mux(mac_issue, a_in[r], 0))
        mac = m.submodules.mac = MacArray(R, C, cfg.b_bits, W, en_copies=groups, drain_copies=C)
        v1, f1, l1 = Signal(), Signal(), Signal()
        with m.If(en_ctl):
            m.d.sync += [v1.eq(mac_issue), f1.eq(wc == a_off), l1.eq(e_a_end)]
        m.d.comb += [mac.en.eq(Cat(*en_mac)), mac.valid.eq(v1), mac.first.eq(f1), mac.last.eq(l1),
                     mac.b.eq(b_row)]
        for r in range(R):
            d = dec.o.payload[r]
            m.d.comb += [mac.a[r].neg.eq(d.neg), mac.a[r].mag.eq(d.mag), mac.a[r].sh.eq(d.sh)]

        # ------------------------------------------------------------------ outlier unit
        # one copy of the drain row per column (shadow / correction row multiplexers)
        drain_row_c = []
        for c in range(C):
            d = Signal(rbits, name=f"drain_row_c{c}")
            with m.If(start):
                m.d.sync += d.eq((-DRAIN_OFFSET) % (1 << rbits))
            with m.Elif(en_col[c]):
                m.d.sync += d.eq(A(drain_row))
            drain_row_c.append(d)
        m.d.comb += [mac.drain_row[c].eq(drain_row_c[c]) for c in range(C)]
        corr_row = [Const(0, 1) for _ in range(C)]
        overflow = Signal()
        range_error = Signal()
        if cfg.has_outliers:
            ou = m.submodules.outliers = OutlierUnit(R, C, cfg.b_bits, cfg.outlier_capacity, L,
                                                     cfg.corr_bits, kb, en_copies=R, drain_copies=C)
            m.d.comb += [
                ou.en.eq(Cat(*en_ou)), ou.issue.eq(outl_issue), ou.entries.eq(bufs["outl"].head),
                ou.row0.eq(cur["r0"]), ou.m.eq(cur["m"]), ou.k.eq(lc.k),
                ou.tile_start.eq(busy & cur["valid"] & (wc == 0)), ou.tile_count.eq(cur_nout),
                ou.drain.eq(drain_issue), ou.drain_row.eq(Cat(*drain_row_c)), ou.clear.eq(start),
                overflow.eq(ou.overflow), range_error.eq(ou.range_error),
            ]
            for l in range(L):
                rp = bmem.read_port(domain="sync")
                # read one cycle ahead from the buffer's next head (ou.rd_addr is the same column one
                # cycle later), register the row in the fabric
                ob_row = Signal.like(rp.data, name=f"ob_row{l}")
                with m.If(en_ou[0]):
                    m.d.sync += ob_row.eq(rp.data)
                m.d.comb += [rp.addr.eq(Cat(bufs["outl"].head_next[l].col[:kb], bank_next)), rp.en.eq(1),
                             ou.rd_data[l].eq(ob_row)]
            corr_row = [ou.corr_row[c] for c in range(C)]

        # ------------------------------------------------------------------ drain: D1 .. D6
        # shared (per row) values advance with en_drain, per-column values with en_col[c]
        def drain_stage(values, prefix):
            """Register ``values`` (a list of (value, enable)) as the next drain stage."""
            regs = []
            for j, (v, e) in enumerate(values):
                r = Signal(v.shape() if not isinstance(v, Signal) else v.shape(), name=f"{prefix}_{j}")
                with m.If(e):
                    m.d.sync += r.eq(v)
                regs.append(r)
            return regs

        def row_stage(values, prefix):
            return drain_stage([(v, en_drain) for v in values], prefix)

        def col_stage(values, prefix):
            return drain_stage([(values[c], en_col[c]) for c in range(C)], prefix)

        # D1: select the drained row (shadow registers, outlier corrections, row parameters); the row
        # parameters za, Mr get one register copy per column (each feeds that column's DSP blocks)
        d1_v, d1_row, d1_col = row_stage([drain_issue, (prev["r0"] + drain_row)[:DIM_BITS], prev["c0"]], "d1")
        za_sel, mr_sel = Signal(ZA_BITS), Signal(16)
        m.d.comb += [za_sel.eq(prev_desc.za[drain_row]), mr_sel.eq(prev_desc.mr[drain_row])]
        d1_za = col_stage([za_sel] * C, "d1_za")
        d1_mr = col_stage([mr_sel] * C, "d1_mr")
        d1_acc = col_stage([mac.shadow_row[c] for c in range(C)], "d1_acc")
        d1_corr = col_stage([corr_row[c] for c in range(C)], "d1_corr")
        d1_cs = col_stage([Mux(prev["bank"], colsum_bank[1][c], colsum_bank[0][c]) for c in range(C)], "d1_cs")
        d1_cp = col_stage([Mux(prev["bank"], colp_bank[1][c].as_value(), colp_bank[0][c].as_value())
                           for c in range(C)], "d1_cp")
        # D2: zero-point partial products za[r] * colsum[c] (18x18 DSP blocks)
        zp_pp = [partial_products(d1_za[c], d1_cs[c]) for c in range(C)]
        d2_v, d2_row, d2_col = row_stage([d1_v, d1_row, d1_col], "d2")
        d2_pp = [drain_stage([(p, en_col[c]) for p, _ in zp_pp[c]], f"d2_pp{c}") for c in range(C)]
        d2_acc, d2_corr, d2_cp, d2_mr = (col_stage(x, f"d2_{n}") for x, n in
                                         ((d1_acc, "acc"), (d1_corr, "corr"), (d1_cp, "cp"), (d1_mr, "mr")))
        # D3: zero-point product (sum of the partial products)
        d3_v, d3_row, d3_col = row_stage([d2_v, d2_row, d2_col], "d3")
        d3_zp = col_stage([sum_products(d2_pp[c], [sh for _, sh in zp_pp[c]]) for c in range(C)], "d3_zp")
        d3_acc, d3_corr, d3_cp, d3_mr = (col_stage(x, f"d3_{n}") for x, n in
                                         ((d2_acc, "acc"), (d2_corr, "corr"), (d2_cp, "cp"), (d2_mr, "mr")))
        # D4: acc_d = acc_raw - za * colsum
        d4_v, d4_row, d4_col = row_stage([d3_v, d3_row, d3_col], "d4")
        d4_diff = col_stage([d3_acc[c] - d3_zp[c] for c in range(C)], "d4_diff")
        d4_corr, d4_cp, d4_mr = (col_stage(x, f"d4_{n}") for x, n in ((d3_corr, "corr"), (d3_cp, "cp"), (d3_mr, "mr")))
        # D5: acc = (acc_d << FO) + corr (full width); lanes inside the layer
        d5_v, d5_row, d5_col = row_stage([d4_v, d4_row, d4_col], "d5")
        d5_full = col_stage([(d4_diff[c] << lc.fo) + d4_corr[c] for c in range(C)], "d5_full")
        d5_in = col_stage([c < lc.n - d4_col for c in range(C)], "d5_in")
        d5_cp, d5_mr = (col_stage(x, f"d5_{n}") for x, n in ((d4_cp, "cp"), (d4_mr, "mr")))
        # D6: truncate to acc_bits, range check (acc_fault)
        d6_v, d6_row, d6_col = row_stage([d5_v, d5_row, d5_col], "d6")
        d6_acc = col_stage([d5_full[c][:W].as_signed() for c in range(C)], "d6_acc")
        d6_bad = col_stage([d5_v & d5_in[c] & ~((d5_full[c] >= -(1 << (W - 1))) & (d5_full[c] <= (1 << (W - 1)) - 1))
                            for c in range(C)], "d6_bad")
        d6_cp = [data.View(col_param_layout, v) for v in col_stage(d5_cp, "d6_cp")]
        d6_mr = col_stage(d5_mr, "d6_mr")
        d_fault = Signal()         # some lane of the drained row overflowed acc_bits (one cycle later)
        with m.If(en_drain):
            m.d.sync += d_fault.eq(Cat(*d6_bad).any())

        # ------------------------------------------------------------------ requantisers (one per column)
        tag_bits = 1 + 2 * DIM_BITS
        rq_fault = []
        outs = []
        for c in range(C):
            rq = Requantiser(acc_bits=W, tag_bits=tag_bits if c == 0 else 1)
            m.submodules[f"requant{c}"] = rq
            cp = d6_cp[c]
            m.d.comb += [
                rq.i.valid.eq(1), rq.o.ready.eq(en_col[c]),
                rq.i.payload.acc.eq(d6_acc[c]), rq.i.payload.mr.eq(d6_mr[c]),
                rq.i.payload.mc.eq(cp.mc), rq.i.payload.sc.eq(cp.sc), rq.i.payload.bq.eq(cp.bq),
                rq.sr.eq(lc.sr), rq.z_out.eq(lc.z_out), rq.out_fmt.eq(lc.out_fmt), rq.bits.eq(lc.out_k),
                rq.clear.eq(start),
            ]
            if c == 0:
                m.d.comb += rq.i.payload.tag.eq(Cat(d6_v, d6_row, d6_col))
                tag0 = rq.o.payload.tag
            else:
                m.d.comb += rq.i.payload.tag.eq(d6_v)
            rq_fault.append(rq.o.payload.fault)
            outs.append(rq.o.payload)
        push = Signal()
        m.d.comb += [push.eq(en_ctl & tag0[0]), push_pending.eq(tag0[0])]
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
        with m.Elif(en_ctl & (d_fault | (push & rq_fault_any))):
            m.d.sync += self.acc_fault.eq(1)
        m.d.comb += [self.invalid_code.eq(dec.invalid_seen), self.overflow.eq(overflow),
                     self.range_error.eq(range_error)]
        return m


def build_engine(**fields) -> LayerEngine:
    """``LayerEngine(EngineConfig(**fields))`` (a factory taking plain values, for caching / CLIs)."""
    return LayerEngine(EngineConfig(**fields))
