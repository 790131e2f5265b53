"""Layer engine: one linear layer / attention-matmul GEMM from streams (docs/datapath.md sections 4-7).

Block diagram (see docs/hardware.md for the full description; component names in brackets)::

      cmd ─► [EngineController] windows, tile order, stream needs, cycle counter ──► strobes to all
      a, b, colp, rowp, outl ─► [GlobalStall] skid buffers, registered enable `en` (front end)
                                [BackEndEnable] `en` BACK_END_DELAY cycles later x copies (back end)
      rowp ─► [TileDescriptors] Mr[r], za[r], n_outliers (next / current / previous tile) ───────┐
      colp ─► [ColumnParams] Mc, Sc, Bq + colsum, 2 banks ◄── loaded rows ─┐                     │
      b ────► [BBuffer] B loader ─► 2 banks x max_k rows x C codes ────────┘                     │
                               │ read k           │ read col (L ports)                           │
      a ────► OperandDecoder ─►│ MacArray R x C ──┼─ shadow rows ───► [DrainPipeline] D1..D6: ◄──┘
                               │                  │                    acc_raw - za*colsum, << FO, + corr
      outl ─► OutlierUnit ─────┴──────────────────┘ corr rows ────────►   │
                                                       [OutputStage] C x Requantiser ─► out FIFO ─► out

Components (docs/hardware-units.md, "Layer engine components"): :class:`hw.engine_control.EngineController`,
:class:`hw.stall.GlobalStall`, :class:`hw.engine_buffers.BBuffer`, :class:`hw.engine_buffers.ColumnParams`,
:class:`hw.engine_buffers.TileDescriptors`, :class:`hw.engine_drain.DrainPipeline`,
:class:`hw.engine_drain.OutputStage`, plus the units :class:`hw.decoders.OperandDecoder`,
:class:`hw.mac_array.MacArray`, :class:`hw.outlier_unit.OutlierUnit` (and the
:class:`hw.requantiser.Requantiser` inside the output stage).  Their internal interfaces are the
signatures of :mod:`hw.engine_layouts`.

Every register of the engine advances only when the global enable ``en`` is high; ``en`` is low
when a stream the static schedule needs this cycle has no beat or the output FIFO could be full.
The cycle counter counts ``en`` cycles, so it equals :func:`sim.schedule.layer_cycles` for any stream
timing.

Timing structure (docs/hardware.md, "Fmax"): ``en`` is a register, computed one cycle ahead
(:mod:`hw.stall`): every input stream enters through a small skid buffer, the controller keeps its
registers in "advance" form (``x_adv`` = value after an enabled cycle), so the stream needs of the
next cycle are known, and the output FIFO keeps room for the rows in flight.  The next-cycle stream
needs are registers too, computed from registered equality flags and free-running precomputed window
arithmetic, so the enable logic is a few LUT levels deep.  Only the *front end* (controller, skid
buffer accounting, B buffer, the next tile's outlier count) uses ``en`` directly; the *back end*
(operand decoder, MAC array, outlier unit, tile descriptors, column parameters, drain, output stage) receives every front-end signal through
:data:`sim.engine_config.BACK_END_DELAY` free-running registers and its own enable copies (one per
group of :data:`hw.stall.PES_PER_ENABLE` PEs, per output column, per outlier correction row, per
unit), which equal ``en`` of that many cycles ago (:class:`hw.stall.BackEndEnable`).  So no enable
net has more than a few hundred loads, none spans the chip from the enable logic, and the back end
computes exactly what it would without the delay, ``BACK_END_DELAY`` cycles later.  The streams only
the back end reads (``a``, ``colp``, ``rowp``) have *deferred* skid buffers: the front end takes a
beat for its accounting, the beat leaves the buffer when the back end reads it, so those payload
registers are driven only by back-end signals (the front end keeps ``rowp``'s outlier count).
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

from amaranth.hdl import Cat, Module, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from vitaccel.sim.engine_config import EngineConfig
from .decoders import OperandDecoder
from .engine_buffers import COLP_EN_COPIES, BBuffer, ColumnParams, TileDescriptors, desc_strobe_copies
from .engine_control import EngineController
from .engine_drain import DRAIN_EN_COPIES, REQUANT_EN_COPIES, DrainPipeline, OutputStage, fifo_push_copies
# the stream payload layouts and ZA_BITS are the engine's interface: import them from here
# (``from vitaccel.hw.engine import cmd_layout``); hw/synth.py imports mac_en_groups from here
from .engine_layouts import (OUT_FIFO_DEPTH, ZA_BITS, cmd_layout, colp_layout, drain_row_group, out_layout,
                             rowp_layout)
from .mac_array import MacArray
from .outlier_unit import OutlierUnit, outlier_beat_layout
from .stall import BACK_END_DELAY, BackEndEnable, GlobalStall, connect_delayed, delay_line, mac_en_groups

__all__ = ["LayerEngine", "build_engine", "cmd_layout", "rowp_layout", "colp_layout", "out_layout", "ZA_BITS"]

#: Input streams, in the order of the enable terms (each enters through a 2-entry
#: :class:`hw.stall.SkidBuffer` inside :class:`hw.stall.GlobalStall`).
STREAM_PORTS = ("a", "b", "colp", "rowp", "outl")


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
        R, C, d = cfg.rows, cfg.cols, BACK_END_DELAY
        assert d >= 2, "the tile descriptors select the drained row two cycles ahead (BACK_END_DELAY >= 2)"
        streams = {n: getattr(self, n).payload.shape() for n in STREAM_PORTS if hasattr(self, n)}
        # a, colp and rowp are read by the back end (operand decoder, column parameters, tile
        # descriptors): their buffers pop d cycles late, so their payload and occupancy registers sit
        # with the back end and the enable sees only small front-end counters; the front end keeps
        # rowp's outlier count (for the schedule)
        deferred = {"a": (), "colp": (), "rowp": ("n_out",)}
        stall = m.submodules.stall = GlobalStall(streams, OUT_FIFO_DEPTH, d, deferred=deferred, full_rate=("a",))
        groups = {"mac": mac_en_groups(R, C), "col": C * DRAIN_EN_COPIES, "cp": C * COLP_EN_COPIES, "rq": cfg.drain_lanes * REQUANT_EN_COPIES, "unit": 3,
                  "fifo": fifo_push_copies(C)}
        if cfg.has_outliers:
            groups["ou"] = R
        back = m.submodules.back_en = BackEndEnable(groups)
        ctl = m.submodules.control = EngineController(cfg)
        bbuf = m.submodules.bbuf = BBuffer(cfg)
        cols = m.submodules.columns = ColumnParams(cfg)
        # the tile descriptors live in the back end; the front-end copy only provides the controller
        # with the next tile's outlier beat count (synthesis removes its unused registers)
        desc_front = m.submodules.descriptors_nb = TileDescriptors(cfg)
        desc = m.submodules.descriptors = TileDescriptors(cfg, strobe_copies=desc_strobe_copies(cfg))
        drain = m.submodules.drain = DrainPipeline(cfg)
        outs = m.submodules.output = OutputStage(cfg)
        en, lc, start = stall.en, ctl.layer, ctl.status.start
        late = _delayer(m)                                          # front end -> back end
        late_start = late(start, "start")
        _, en_drain, en_out = back.en.unit          # [0]: the operand decoder's

        # front end: streams in, the controller's state and strobes to the units it schedules
        for name in streams:
            wiring.connect(m, wiring.flipped(getattr(self, name)), getattr(stall, name))
        wiring.connect(m, wiring.flipped(self.cmd), ctl.cmd)
        wiring.connect(m, ctl.status, stall.status)
        wiring.connect(m, ctl.need, stall.need)
        wiring.connect(m, bbuf.need, stall.need_b)
        wiring.connect(m, ctl.loader, bbuf.ctl)
        wiring.connect(m, ctl.b_read, bbuf.read)
        wiring.connect(m, ctl.descriptors, desc_front.ctl)
        m.d.comb += [
            back.x_adv.eq(stall.x_adv), back.x_hold.eq(stall.x_hold), back.start.eq(start),
            ctl.en.eq(en.ctl), bbuf.en.eq(en.ctl), bbuf.b.eq(stall.head.b),
            desc_front.rowp.n_out.eq(stall.front.rowp.n_out), desc_front.drain_row_ahead.eq(0),
        ]
        # back end (BACK_END_DELAY cycles later): column parameters, drain, output stage
        wiring.connect(m, outs.out, wiring.flipped(self.out))
        wiring.connect(m, outs.fifo, stall.fifo)
        wiring.connect(m, drain.o, outs.i)
        connect_delayed(m, bbuf.load, cols.load_ahead, d - 1, "load")        # ColumnParams adds the last register
        connect_delayed(m, ctl.columns, cols.ctl_ahead, d - 1, "columns")
        connect_delayed(m, ctl.drain, drain.ctl, d, "drain_ctl")
        drain_row, _ = drain_row_group(ctl.drain.pos, cfg.share_bits)
        # the descriptors register their strobes in kept copies (a cycle ahead here: same timing)
        connect_delayed(m, ctl.descriptors, desc.ctl, d - 1, "desc_ctl", names=("load", "shift", "take"))
        m.d.comb += [
            cols.en.eq(back.en.cp), cols.colp.eq(stall.head.colp),
            drain.en.eq(en_drain), drain.en_col.eq(back.en.col), drain.start.eq(late_start),
            desc.rowp.eq(stall.head.rowp), desc.drain_row_ahead.eq(delay_line(m, drain_row, d - 2, "desc_row")),
            drain.za.eq(desc.za), drain.mr.eq(desc.mr),
            drain.colsum.eq(cols.colsum), drain.params.eq(cols.params),
            drain.fo.eq(late(lc.fo, "fo")), drain.n.eq(late(lc.n, "n")),
            outs.en.eq(en_out), outs.en_fifo.eq(back.en.fifo), outs.en_rq.eq(back.en.rq), outs.clear.eq(late_start),
            *[getattr(outs, k).eq(late(getattr(lc, k), k)) for k in ("sr", "z_out", "out_fmt", "out_k")],
        ]
        self._operands(m, stall, ctl, bbuf, drain, back, late_start)
        if cfg.has_outliers:
            self._outliers(m, stall, ctl, bbuf, desc, drain, back, late_start)
        else:
            m.d.comb += [self.overflow.eq(0), self.range_error.eq(0)]
        # busy until the back end has pushed the layer's last row (busy of the last d cycles)
        busy = [ctl.status.busy]
        for i in range(d):
            busy.append(delay_line(m, busy[-1], 1, f"busy_back{i}"))
        m.d.comb += [self.busy.eq(Cat(*busy).any()), self.cycles.eq(ctl.cycles), self.acc_fault.eq(outs.acc_fault)]
        return m

    def _operands(self, m, stall, ctl, bbuf, drain, back, late_start):
        """Operand decoder and MAC array, both in the back end (docs/datapath.md sections 4 and 6).

        The A codes of an issue cycle (the zero triple otherwise) reach the decoder ``BACK_END_DELAY`` cycles
        later from the deferred ``a`` buffer; the decoder register is the array's first stage
        (``MAC_LATENCY``)."""
        cfg, lc, late = self.cfg, ctl.layer, _delayer(m)
        # the layer's A format registered inside the decoder, one kept copy per lane: BACK_END_DELAY - 1
        # registers here, the copy is the last
        dec = m.submodules.decoder = OperandDecoder(lanes=cfg.rows, copies=cfg.a_copies, config_copies=cfg.rows,
                                                    zero_port=True)
        mac = m.submodules.mac = MacArray(cfg.rows, cfg.cols, cfg.b_bits, cfg.acc_bits,
                                          en_copies=mac_en_groups(cfg.rows, cfg.cols), drain_copies=cfg.cols,
                                          a_copies=cfg.a_copies)
        # the deferred a buffer's head, d cycles later; a cycle without an issue decodes to the zero
        # triple (the decoder's zero input, at the decode's last multiplexer)
        issue = late(ctl.mac.issue, "a_issue")
        m.d.comb += [
            dec.i.valid.eq(1), dec.zero.eq(~issue), dec.o.ready.eq(back.en.unit[0]),
            *[dec.i.payload[r].eq(stall.head.a[r]) for r in range(cfg.rows)],       # a_bits-bit codes, zero-extended
            dec.clear.eq(late_start), *[getattr(dec, k).eq(delay_line(m, getattr(lc, f), BACK_END_DELAY - 1, f"dec_{k}"))
                                        for k, f in (("fmt", "a_fmt"), ("bits", "a_k"), ("m0", "m0"), ("m1", "m1"))],
            self.invalid_code.eq(dec.invalid_seen),
            mac.en.eq(back.en.mac), mac.b.eq(late(bbuf.row, "mac_b")),
            mac.drain_row.eq(drain.rows_mac if cfg.gather_stage else drain.rows),
            drain.acc.eq(mac.shadow_row),
        ]
        connect_delayed(m, ctl.mac, mac, BACK_END_DELAY, "mac", names=("valid", "first", "last"))
        for r in range(cfg.rows):
            d = dec.o.payload[r]
            m.d.comb += [mac.a[r].neg.eq(d.neg), mac.a[r].mag.eq(d.mag), mac.a[r].sh.eq(d.sh)]
            for k in range(1, cfg.a_copies):        # the decoder's register copies of the triples
                m.d.comb += mac.a[k * cfg.rows + r].eq(dec.o_copies[k - 1][r])

    def _outliers(self, m, stall, ctl, bbuf, desc, drain, back, late_start):
        """Sparse outlier unit (back end; docs/datapath.md section 5) and its B buffer read ports."""
        cfg, late = self.cfg, _delayer(m)
        _, group = drain_row_group(ctl.drain.pos, cfg.share_bits)
        ou = m.submodules.outliers = OutlierUnit(cfg.rows, cfg.cols, cfg.b_bits, cfg.outlier_capacity,
                                                 cfg.outlier_lanes, cfg.corr_bits, cfg.k_bits,
                                                 en_copies=cfg.rows, drain_copies=cfg.cols, addr_reg=True)
        # the correction memories' read address from registers beside them (with requant_share = 1 too
        # since session 44: the drain position's route into the memories was an 8 x 8 W8A8 worst path)
        m.d.comb += ou.drain_row_nx.eq(drain.rows_nx)
        connect_delayed(m, ctl.outliers, ou, BACK_END_DELAY, "outl", names=("issue", "row0", "m", "tile_start"))
        m.d.comb += [
            ou.en.eq(back.en.ou), ou.entries.eq(late(stall.head.outl, "outl_entries")), ou.k.eq(late(ctl.layer.k, "k")),
            # a correction row is cleared with the drain of its last column group
            ou.tile_count.eq(desc.cur_n_out), ou.drain.eq(late(ctl.drain.issue & (group == cfg.requant_share - 1),
                                                               "outl_drain")),
            ou.drain_row.eq(drain.rows), ou.clear.eq(late_start),
            bbuf.outl_next.eq(stall.outl_next), bbuf.outl_en.eq(stall.en.buf),
            ou.rd_data.eq(late(bbuf.outl_rows, "outl_rows")),
            drain.corr.eq(ou.corr_row), self.overflow.eq(ou.overflow), self.range_error.eq(ou.range_error),
        ]


def _delayer(m: Module):
    """``late(value, name)``: ``value`` through the ``BACK_END_DELAY`` registers to the back end."""
    return lambda value, name: delay_line(m, value, BACK_END_DELAY, name)


def build_engine(**fields) -> LayerEngine:
    """``LayerEngine(EngineConfig(**fields))`` (a factory taking plain values, for caching / CLIs)."""
    return LayerEngine(EngineConfig(**fields))
