"""Controller of the layer engine: command register, tile/window sequencer, stream needs, cycle counter.

The engine runs the static schedule of :mod:`sim.schedule` (docs/hardware.md, "Dataflow and
schedule"): tiles in :func:`sim.schedule.tile_order` (column block outer, row tile inner), one window
of ``W_s`` cycles per tile, in which the MAC array issues the ``K`` operand columns of tile ``s``
(docs/datapath.md section 6, ``acc_raw``), the drain of tile ``s - 1`` issues its rows (sections 6
and 7) and the outlier unit consumes the outliers of tile ``s`` (section 5).  This module holds the
state that decides *what happens in which cycle*; the data path is elsewhere.

"Advance" form
--------------
Every controller register advances only when the enable ``en`` is high.  They are written in
advance form: ``A(x)`` is the value ``x`` takes when the engine advances in this cycle (it keeps its
value when it stalls), so the stream needs of the next cycle -- and therefore the registered enable
of :class:`hw.stall.GlobalStall` -- are known one cycle ahead.  The window arithmetic (lengths,
offsets, tile bounds) is precomputed in free-running registers ``f_*`` from state that is stable for
at least two cycles before a window boundary, and what depends on the next tile's outlier beat count
(loaded in a window's first cycle) in a second stage after them (windows last >= 3 cycles,
``FILL_MIN``), so the boundary logic only loads and compares registers; the equality flags ``e_*``
and the next cycle's window boundary (``bnd_pre``) are registers too.
"""
from __future__ import annotations

from types import SimpleNamespace

from amaranth.hdl import Const, Module, Mux, Signal, signed
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from vitaccel.sim.engine_config import DIM_BITS, DRAIN_OFFSET, FILL_MIN, EngineConfig
from .engine_layouts import (BReadSignature, ColumnControl, DescriptorControl, DrainControl, LoaderControl,
                             MacControl, OutlierControl, StatusSignature, StreamNeed, cmd_layout, row_bits)
from .kept import kept_copies

__all__ = ["EngineController", "need_signature"]

# bnd_pre is 0 after a boundary: wc + 2 = 2 never equals a window length
assert FILL_MIN >= 3, "hw.engine_control's bnd_pre needs windows of >= 3 cycles"


def need_signature(has_outliers: bool) -> wiring.Signature:
    """Needs of the streams the controller schedules: ``a``, ``rowp``, ``colp`` (and ``outl``)."""
    names = ["a", "rowp", "colp"] + (["outl"] if has_outliers else [])
    return wiring.Signature({n: Out(StreamNeed) for n in names})


class EngineController(wiring.Component):
    """Layer command register, window / tile sequencer and cycle counter of the layer engine.

    Holds the layer command, the window counter (``wc``, its length and the offsets of the MAC
    issue, drain and outlier phases, docs/hardware.md "Dataflow and schedule"), the next / current /
    previous tile (``r0``, ``m``, ``c0``, B bank), the stream needs in advance form and the
    ``cycles`` counter (``== sim.schedule.layer_cycles(...).total`` at the end of a layer).

    Parameters
    ----------
    cfg : EngineConfig

    Attributes
    ----------
    cmd : In(stream.Signature(cmd_layout))
        Layer command; accepted (``ready``) when idle.
    en : In(1)
        Global enable (the engine advances in this cycle).
    layer : Out(cmd_layout)
        The running layer's command.
    status : Out(StatusSignature)
        ``start`` (command accepted now), ``busy``, ``busy_adv`` (busy after an advance).
    cycles : Out(32)
        Enabled cycles since the layer started.
    need : Out(need_signature(cfg.has_outliers))
        Stream needs of ``a``, ``rowp``, ``colp`` (``outl``): now and after an advance.
    descriptors : Out(DescriptorControl)
        Strobes of the tile descriptor registers.
    loader : Out(LoaderControl)
        B loader start / next column block.
    columns : Out(ColumnControl)
        Column parameter bank commit / read bank.
    b_read : Out(BReadSignature(cfg.k_bits))
        B buffer row read by the MAC array in the next cycle.
    mac : Out(MacControl)
        Operand issue (``a`` beat consumed) and the array's ``valid`` / ``first`` / ``last``.
    outliers : Out(OutlierControl)
        Outlier issue and the current tile's bounds.
    drain : Out(DrainControl(cfg.rows))
        Drain issue and row of the previous tile.
    """

    def __init__(self, cfg: EngineConfig):
        self.cfg = cfg
        super().__init__({
            "cmd": In(stream.Signature(cmd_layout)),
            "en": In(1),
            "layer": Out(cmd_layout),
            "status": Out(StatusSignature),
            "cycles": Out(32),
            "need": Out(need_signature(cfg.has_outliers)),
            "descriptors": Out(DescriptorControl),
            "loader": Out(LoaderControl),
            "columns": Out(ColumnControl),
            "b_read": Out(BReadSignature(cfg.k_bits)),
            "mac": Out(MacControl),
            "outliers": Out(OutlierControl),
            "drain": Out(DrainControl(cfg.rows, cfg.share_bits)),
        })

    # ------------------------------------------------------------------------------------ state
    def _state(self):
        """Controller registers (a namespace ``s``); ``s.regs`` are the ones written in advance form."""
        cfg = self.cfg
        WC = DIM_BITS + 2

        s = SimpleNamespace()
        s.busy = Signal(name="busy")
        s.wc = Signal(WC, name="wc")              # cycle within the current window
        s.wc1 = Signal(WC, name="wc1")            # wc + 1
        s.wc2 = Signal(WC, name="wc2")            # wc + 2 (the flags compare it, no incrementer before them)
        s.wc3 = Signal(WC, name="wc3")            # wc + 3 (bnd_pre compares it)
        s.wlen = Signal(WC, name="wlen")          # length of the current window
        s.bnd = Signal(name="bnd")                # last cycle of the window (wc + 1 == wlen)
        # wc + 2 == wlen: bnd of the next cycle, registered a cycle ahead so no comparison with wlen
        # sits before bnd and adv_nxt (wlen -> adv_nxt was the worst path of session 44's 8 x 8 W8A8 engine,
        # issue #15); windows last >= FILL_MIN = 3 cycles, so it is 0 after a boundary
        s.bnd_pre = Signal(name="bnd_pre")
        s.a_off = Signal(WC, name="a_off")        # MAC issue offset in the current window
        s.a_end = Signal(WC, name="a_end")        # a_off + K
        s.o_start = Signal(WC, name="o_start")    # DRAIN_OFFSET + rows of the previous tile
        s.o_end = Signal(WC, name="o_end")        # o_start + outlier beats of the current tile
        s.epi = Signal(name="epi")                # current window is the epilogue (drain of the last tile)
        s.commit = Signal(name="commit")          # commit the loaded column data (first cycle of a block)
        s.mac_rd = Signal(cfg.k_bits, name="mac_rd")            # B row of the MAC issue: wc - a_off
        # mac_rd + 1, so the B memories' read address (the next cycle's mac_rd) has no incrementer
        # (mac_rd -> + 1 -> the B memory's address was among the 8 x 8 W8A8 engine's worst paths, session 44)
        s.mac_rd1 = Signal(cfg.k_bits, name="mac_rd1")
        s.drain_pos = Signal(row_bits(cfg.rows) + cfg.share_bits, name="drain_pos")  # drain: shadow row, group

        def tile(prefix):
            return {"valid": Signal(name=f"{prefix}_valid"), "r0": Signal(DIM_BITS, name=f"{prefix}_r0"),
                    "m": Signal(DIM_BITS, name=f"{prefix}_m"), "c0": Signal(DIM_BITS, name=f"{prefix}_c0"),
                    "bank": Signal(name=f"{prefix}_bank")}
        s.cur, s.prev, s.nxt = tile("cur"), tile("prev"), tile("nxt")
        # drain cycles of the current tile: its rows times the requantiser sharing, 0 without a tile
        # (a register, so no valid multiplexer sits before the window arithmetic)
        s.m_eff = Signal(DIM_BITS + cfg.share_bits, name="cur_m_eff")
        s.k_do = Signal(signed(DIM_BITS + 1), name="k_do")     # K - DRAIN_OFFSET of the layer (set at start)
        # rows and columns left from the next tile on: M - nxt.r0, N - nxt.c0 (kept beside r0 / c0, so
        # the next tile's arithmetic compares them with constants instead of subtracting first)
        s.nxt_rem = Signal(DIM_BITS, name="nxt_rem")
        s.nxt_ncrem = Signal(signed(DIM_BITS + 1), name="nxt_ncrem")
        # schedule decisions of the current cycle
        keys = ["a", "rowp", "colp", "drain"] + (["outl"] if cfg.has_outliers else [])
        s.need = {k: Signal(name=f"need_{k}") for k in keys}
        s.need_at_start = {"a": 0, "rowp": 1, "colp": 1, "drain": 0, "outl": 0}
        # equality flags of the current state, registered (they feed the next-cycle needs)
        s.e_a_end = Signal(name="e_a_end")        # wc1 == a_end   (last MAC issue cycle)
        s.e_a_off = Signal(name="e_a_off")        # wc1 == a_off   (MAC issue starts next cycle)
        s.e_o_start = Signal(name="e_o_start")    # wc1 == o_start (drain ends / outliers start next cycle)
        s.e_o_end = Signal(name="e_o_end")        # wc1 == o_end   (outliers end)
        s.e_drain0 = Signal(name="e_drain0")      # wc1 == DRAIN_OFFSET (drain starts next cycle)
        s.e_onz = Signal(name="e_onz")            # o_end != o_start (the current tile has outliers)
        flags = [s.e_a_end, s.e_a_off, s.e_o_start, s.e_o_end, s.e_drain0, s.e_onz]
        s.regs = [s.busy, s.wc, s.wc1, s.wc2, s.wc3, s.bnd_pre, s.m_eff, s.nxt_rem, s.nxt_ncrem, s.wlen, s.bnd, s.a_off, s.a_end, s.o_start, s.o_end, s.epi, s.commit,
                  s.mac_rd, s.mac_rd1, s.drain_pos, *s.cur.values(), *s.prev.values(), *s.nxt.values(),
                  *s.need.values(), *flags]
        return s

    def _precompute(self, m, s, m_effs):
        """Free-running window arithmetic for the next boundary (registers ``f_*``, no enable).

        ``m_effs``: four kept copies of ``s.m_eff`` (:func:`hw.kept.kept_copies`), each feeding two of
        the eight results (one register feeding all of them was a 7.7 ns net in session 35)."""
        cfg, lc = self.cfg, self.layer
        R, C = cfg.rows, cfg.cols

        def free(value, name):
            reg = Signal(value.shape(), name=name)
            m.d.sync += reg.eq(value)
            return reg
        nxt = s.nxt
        # drain cycles of the tile that becomes ``prev``
        m_eff, m_eff1, m_eff2, m_eff3 = m_effs
        f = {
            "a_next": free(Mux(m_eff > lc.k, m_eff - lc.k, 0), "f_a_next"),       # a_off of the next window
            # its negation modulo 2^k_bits, the first B row the next window reads (an own register, so
            # no carry chain sits between it and the B buffer's read address)
            "neg_a_next": free(Mux(m_eff > lc.k, lc.k - m_eff, 0)[:cfg.k_bits], "f_neg_a_next"),
            "a_end": free(Mux(m_eff1 > lc.k, m_eff1, lc.k), "f_a_end"),          # its a_off + K
            "m2": free(m_eff2 + DRAIN_OFFSET, "f_m2"),                            # its o_start
            # W without outliers, max(m2, K), and its slack over m2 (compares against the layer's K - DRAIN_OFFSET
            # register beside the additions, not after them)
            "base": free(Mux(m_eff3 > s.k_do, m_eff3 + DRAIN_OFFSET, lc.k), "f_base"),
            "slack": free(Mux(m_eff3 > s.k_do, 0, s.k_do - m_eff3), "f_slack"),
            "w_epi": free(m_eff2 + DRAIN_OFFSET + cfg.drain_latency, "f_w_epi"),  # epilogue length
            "nxt_m": free(Mux(s.nxt_rem < R, s.nxt_rem, R), "f_nxt_m"),           # rows of the next tile
            "last_rt": free(s.nxt_rem <= R, "f_last_rt"),                          # next tile: last row tile
            "more_cb": free(s.nxt_ncrem > C, "f_more_cb"),                         # another column block follows
            "a0": free(m_eff1 <= lc.k, "f_a0"),                                    # f_a_next == 0
            "r0z": free(nxt["r0"] == 0, "f_r0z"),                                  # next tile starts a block
        }
        # the next tile's outlier window from its beat count ``nb`` (the descriptor register loaded in
        # the window's first cycle): a second free-running stage, valid from the window's third cycle,
        # so ``nb`` and the additions after it never sit before a boundary's registers (every window
        # lasts >= 3 cycles: fill max(K, 3), tile windows >= DRAIN_OFFSET)
        nb = self.descriptors.nb
        WC = len(s.o_end)
        o_end_next = f["m2"] + nb
        f["o_end"] = free(o_end_next, "f_o_end")                                   # its o_end
        f["o_end1"] = free(o_end_next[:WC] == 1, "f_o_end1")                       # its o_end == 1
        # max(base, nb ? m2 + nb : 0) = max(base, m2 + nb) (base >= m2): m2 + nb > base <=> nb > slack
        f["w"] = free(Mux(nb > f["slack"], o_end_next, f["base"]), "f_w")          # its window length
        f["onz"] = free(nb != 0, "f_onz")                                          # it has outliers
        # the next window's first B row + 1 (mac_rd1 after the boundary), a stage after f_neg_a_next (in
        # the same stage, the subtraction and the increment were two carry chains: session 45's (S8))
        f["neg_a_next1"] = free((f["neg_a_next"] + 1)[:cfg.k_bits], "f_neg_a_next1")
        # a boundary without a next tile: o_start becomes m2, o_end stays (o_end changes only at
        # boundaries, so this register is valid from a window's third cycle like the ones above)
        f["o_ne"] = free(s.o_end != f["m2"][:WC], "f_o_ne")
        return f

    def _advance(self, m, s, f, A):
        """Next state after an enabled cycle (window boundary: next tile; else count the window)."""
        cfg = self.cfg
        R, C, rbits = cfg.rows, cfg.cols, row_bits(cfg.rows) + cfg.share_bits
        cur, prev, nxt = s.cur, s.prev, s.nxt
        # the window boundary through kept copies of bnd: counters, tile state (each copy
        # drives one group's clock enables; one bnd drove all of them, session 35)
        b_count, b_tile = s.bnd_copies[:2]
        m.d.comb += A(s.commit).eq(0)
        with m.If(b_count):
            m.d.comb += [A(s.wc).eq(0), A(s.wc1).eq(1), A(s.wc2).eq(2), A(s.wc3).eq(3), A(s.bnd).eq(0),
                         A(s.bnd_pre).eq(0), A(s.mac_rd).eq(f["neg_a_next"]),
                         A(s.mac_rd1).eq(f["neg_a_next1"]),
                         A(s.drain_pos).eq((-DRAIN_OFFSET) % (1 << rbits))]
        with m.Else():
            m.d.comb += [A(s.wc).eq(s.wc1), A(s.wc1).eq(s.wc2), A(s.wc2).eq(s.wc3), A(s.wc3).eq(s.wc3 + 1),
                         A(s.bnd).eq(s.bnd_pre), A(s.bnd_pre).eq(s.wc3 == s.wlen),
                         A(s.mac_rd).eq(s.mac_rd1), A(s.mac_rd1).eq(s.mac_rd1 + 1), A(s.drain_pos).eq((s.wc1 - DRAIN_OFFSET)[:rbits])]
        with m.If(s.adv_nxt):                      # bnd & ~epi & nxt_valid, its own register
            # advance the next tile: row tiles inner, column blocks outer
            with m.If(f["last_rt"]):
                m.d.comb += [A(nxt["r0"]).eq(0), A(nxt["c0"]).eq(nxt["c0"] + C),
                             A(s.nxt_rem).eq(self.layer.m), A(s.nxt_ncrem).eq(s.nxt_ncrem - C),
                             A(nxt["bank"]).eq(~nxt["bank"]), A(nxt["valid"]).eq(f["more_cb"])]
            with m.Else():
                m.d.comb += [A(nxt["r0"]).eq(nxt["r0"] + R), A(s.nxt_rem).eq(s.nxt_rem - R)]
        with m.If(b_tile):
            with m.If(s.epi):
                m.d.comb += A(s.busy).eq(0)
            with m.Else():
                m.d.comb += [A(prev[key]).eq(cur[key]) for key in cur]
                m.d.comb += A(s.o_start).eq(f["m2"])
                with m.If(nxt["valid"]):
                    m.d.comb += [
                        A(cur["valid"]).eq(1), A(cur["r0"]).eq(nxt["r0"]), A(cur["m"]).eq(f["nxt_m"]),
                        A(s.m_eff).eq(f["nxt_m"][:DIM_BITS] << cfg.share_bits),
                        A(cur["c0"]).eq(nxt["c0"]), A(cur["bank"]).eq(nxt["bank"]), A(s.o_end).eq(f["o_end"]),
                        A(s.wlen).eq(f["w"]), A(s.a_off).eq(f["a_next"]), A(s.a_end).eq(f["a_end"]),
                    ]
                    with m.If(f["r0z"]):             # first tile of a column block
                        m.d.comb += A(s.commit).eq(1)
                with m.Else():
                    m.d.comb += [A(cur["valid"]).eq(0), A(s.m_eff).eq(0), A(s.epi).eq(1), A(s.wlen).eq(f["w_epi"]),
                                 A(s.a_off).eq(0)]

    def _needs(self, m, s, f, A, load_start):
        """Stream needs of the next cycle (only equality compares on registers) and the flags."""
        cfg, need = self.cfg, s.need
        cur, prev, nxt = s.cur, s.prev, s.nxt
        bnd = s.bnd_copies[2]
        with m.If(bnd):
            m.d.comb += [
                A(need["a"]).eq(~s.epi & nxt["valid"] & f["a0"]),
                A(need["rowp"]).eq(~s.epi & nxt["valid"] & (~f["last_rt"] | f["more_cb"])),
                A(need["drain"]).eq(0),
            ]
            if cfg.has_outliers:
                m.d.comb += A(need["outl"]).eq(0)
        with m.Else():
            m.d.comb += [
                A(need["a"]).eq(Mux(need["a"], ~s.e_a_end, cur["valid"] & s.e_a_off)),
                A(need["rowp"]).eq(0),
                A(need["drain"]).eq(Mux(need["drain"], ~s.e_o_start, prev["valid"] & s.e_drain0)),
            ]
            if cfg.has_outliers:
                m.d.comb += A(need["outl"]).eq(Mux(need["outl"], ~s.e_o_end, cur["valid"] & s.e_onz & s.e_o_start))
        m.d.comb += A(need["colp"]).eq(load_start)

        def hits(x):
            """``A(wc1) == A(x)``: at a boundary wc1 becomes 1 (and x its new value); otherwise wc1
            becomes wc2 and x (written only at boundaries) stays."""
            return Mux(bnd, A(x) == 1, s.wc2 == x)
        # A(o_end) != A(o_start): a boundary that takes a tile sets o_end = o_start + nb (mod 2^WC,
        # nb < 2^WC), one without a tile sets o_start alone; between boundaries neither changes, so
        # e_onz holds (before the first boundary it is 0 whatever stale o_end / o_start say: no tile
        # is current then, and need_outl asks cur_valid).  Only registers enter here (the comparisons
        # with o_start / m2 in this cycle were the 8 x 8 W4A4 engine's fourth-worst path, session 44)
        takes = ~s.epi & nxt["valid"]               # a boundary now takes the next tile
        onz_bnd = Mux(nxt["valid"], f["onz"], f["o_ne"])
        m.d.comb += [
            A(s.e_a_end).eq(hits(s.a_end)), A(s.e_a_off).eq(hits(s.a_off)),
            A(s.e_o_start).eq(hits(s.o_start)),
            # hits(o_end) with A(o_end) == 1 precomputed (f_o_end1) where the boundary loads it
            A(s.e_o_end).eq(Mux(bnd, Mux(takes, f["o_end1"], s.o_end == 1), s.wc2 == s.o_end)),
            A(s.e_drain0).eq(Mux(bnd, DRAIN_OFFSET == 1, s.wc2 == DRAIN_OFFSET)),
            A(s.e_onz).eq(Mux(bnd & ~s.epi, onz_bnd, s.e_onz)),
        ]

    def _registers(self, m, s, A, start):
        """Layer start (reset of the schedule state) and the enabled update."""
        rbits = row_bits(self.cfg.rows) + self.cfg.share_bits
        cmd, nxt = self.cmd.payload, s.nxt
        with m.If(start):
            m.d.sync += [
                self.layer.eq(cmd), s.k_do.eq(cmd.k - DRAIN_OFFSET), s.busy.eq(1), s.wc.eq(0), s.wc1.eq(1), s.wc2.eq(2), s.wc3.eq(3), s.bnd.eq(0),
                s.bnd_pre.eq(0), s.epi.eq(0),
                s.a_off.eq(0), s.wlen.eq(Mux(cmd.k > FILL_MIN, cmd.k, FILL_MIN)),
                s.cur["valid"].eq(0), s.m_eff.eq(0), s.prev["valid"].eq(0),
                nxt["valid"].eq(1), nxt["r0"].eq(0), nxt["c0"].eq(0), nxt["bank"].eq(0),
                s.nxt_rem.eq(cmd.m), s.nxt_ncrem.eq(cmd.n),
                s.commit.eq(0), s.mac_rd.eq(0), s.mac_rd1.eq(1), s.drain_pos.eq((-DRAIN_OFFSET) % (1 << rbits)),
                self.cycles.eq(0),
                # flags of the start state (wc1 = 1, a_off = 0); a_end / o_* are only used once a
                # tile is current, after the first boundary has set them
                s.e_a_end.eq(0), s.e_a_off.eq(0), s.e_o_start.eq(0), s.e_o_end.eq(0), s.e_onz.eq(0),
                s.e_drain0.eq(DRAIN_OFFSET == 1),
            ]
            m.d.sync += [s.need[k].eq(s.need_at_start[k]) for k in s.need]
        with m.Elif(self.en):
            m.d.sync += [r.eq(A(r)) for r in s.regs]
            m.d.sync += self.cycles.eq(self.cycles + 1)

    def elaborate(self, platform):
        m = Module()
        s = self._state()
        adv = {}
        for r in s.regs:
            adv[id(r)] = Signal.like(r, name=f"{r.name}_adv")
            m.d.comb += adv[id(r)].eq(r)

        def A(r):
            return adv[id(r)]
        en, busy, cur, prev, nxt, need = self.en, s.busy, s.cur, s.prev, s.nxt, s.need
        start = Signal()
        m.d.comb += [self.cmd.ready.eq(~busy), start.eq(self.cmd.valid & ~busy)]
        # copies of m_eff for the window arithmetic: loaded like m_eff itself (start, else the advance)
        m_effs = kept_copies(m, platform, Mux(start, 0, A(s.m_eff)), 4, "m_eff_c", en=start | en)
        s.bnd_copies = kept_copies(m, platform, Mux(start, 0, A(s.bnd)), 3, "bnd_c", en=start | en)
        # a boundary that advances the next tile (bnd & ~epi & nxt_valid) as one register of its own, loaded
        # like bnd: the next tile's clock enables hang on it alone (session 41: nxt_valid -> those enables
        # through a LUT was a 10.4 ns net at 16 x 16)
        (s.adv_nxt,) = kept_copies(m, platform, Mux(start, 0, A(s.bnd) & ~A(s.epi) & A(nxt["valid"])), 1, "adv_nxt_c",
                                   en=start | en)
        f = self._precompute(m, s, m_effs)
        load_start = Signal()       # a boundary that starts loading the next column block
        m.d.comb += load_start.eq(s.adv_nxt & f["r0z"] & f["more_cb"])
        self._advance(m, s, f, A)
        self._needs(m, s, f, A, load_start)
        self._registers(m, s, A, start)
        # need_rowp again, for the front-end descriptors' load alone (need_rowp -> a LUT shared with the
        # stall's rowp pop -> both clock enables was among the 8 x 8 W4A4 engine's worst paths, session 45)
        (need_rowp_d,) = kept_copies(m, platform, Mux(start, s.need_at_start["rowp"], A(need["rowp"])), 1,
                                     "need_rowp_c", en=start | en)
        mac_v, mac_f, mac_l = Signal(), Signal(), Signal()     # operand column reaching the array
        with m.If(en):
            m.d.sync += [mac_v.eq(need["a"]), mac_f.eq(s.wc == s.a_off), mac_l.eq(s.e_a_end)]
        body = ~start & en          # the enabled update (a start takes priority)
        m.d.comb += [
            self.status.start.eq(start), self.status.busy.eq(busy), self.status.busy_adv.eq(A(busy)),
            *[x for k in self.need.signature.members
              for x in (getattr(self.need, k).now.eq(need[k]), getattr(self.need, k).adv.eq(A(need[k])))],
            self.descriptors.load.eq(body & need_rowp_d), self.descriptors.shift.eq(body & s.bnd & ~s.epi),
            self.descriptors.take.eq(nxt["valid"]),
            self.loader.start.eq(start), self.loader.start_k.eq(self.cmd.payload.k),
            self.loader.block.eq(load_start), self.loader.bank.eq(~nxt["bank"]),
            self.columns.commit.eq(s.commit), self.columns.commit_bank.eq(cur["bank"]),
            self.columns.read_bank.eq(prev["bank"]),
            # read one cycle ahead: the address of the next cycle's state.  A start cycle's read is not
            # used (no MAC issue in the cycle after a start: need_a starts at 0), so the start (from
            # busy) is not in front of the address (busy -> the B memories' read address was among the
            # 8 x 8 W8A8 engine's worst paths, session 45)
            self.b_read.k.eq(Mux(en, A(s.mac_rd), s.mac_rd)),
            self.b_read.bank.eq(Mux(en, A(cur["bank"]), cur["bank"])),
            self.mac.issue.eq(need["a"]), self.mac.valid.eq(mac_v), self.mac.first.eq(mac_f),
            self.mac.last.eq(mac_l),
            self.outliers.issue.eq(need["outl"] if self.cfg.has_outliers else Const(0, 1)),
            self.outliers.row0.eq(cur["r0"]), self.outliers.m.eq(cur["m"]),
            self.outliers.tile_start.eq(busy & cur["valid"] & (s.wc == 0)),
            self.drain.issue.eq(need["drain"]), self.drain.pos.eq(s.drain_pos),
            self.drain.pos_adv.eq(A(s.drain_pos)), self.drain.r0.eq(prev["r0"]), self.drain.c0.eq(prev["c0"]),
        ]
        return m
