"""Layer engine: one linear layer / attention-matmul GEMM from streams (docs/datapath.md sections 4-7).

Block diagram (see docs/hardware.md for the full description; component names in brackets)::

      cmd ─► [EngineController] windows, tile order, stream needs, cycle counter ──► strobes to all
      a, b, colp, rowp, outl ─► [GlobalStall] skid buffers, registered enable `en` x copies
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
(:mod:`hw.stall`): every input stream enters through a 2-entry skid buffer, the controller keeps its
registers in "advance" form (``x_adv`` = value after an enabled cycle), so the stream needs of the
next cycle are known, and the output FIFO must keep a free entry.  ``en`` exists in several identical
register copies (one per group of :data:`hw.stall.PES_PER_ENABLE` PEs, one per output column, one per
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

from amaranth.hdl import Module, Mux, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from vitaccel.sim.engine_config import EngineConfig
from .decoders import OperandDecoder
from .engine_buffers import BBuffer, ColumnParams, TileDescriptors
from .engine_control import EngineController
from .engine_drain import DrainPipeline, OutputStage
# the stream payload layouts and ZA_BITS are the engine's interface: import them from here
# (``from vitaccel.hw.engine import cmd_layout``); hw/synth.py imports mac_en_groups from here
from .engine_layouts import OUT_FIFO_DEPTH, ZA_BITS, cmd_layout, colp_layout, out_layout, rowp_layout
from .mac_array import MacArray
from .outlier_unit import OutlierUnit, outlier_beat_layout
from .stall import GlobalStall, mac_en_groups

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
        streams = {n: getattr(self, n).payload.shape() for n in STREAM_PORTS if hasattr(self, n)}
        stall = m.submodules.stall = GlobalStall(streams, cfg.rows, cfg.cols, OUT_FIFO_DEPTH)
        ctl = m.submodules.control = EngineController(cfg)
        bbuf = m.submodules.bbuf = BBuffer(cfg)
        cols = m.submodules.columns = ColumnParams(cfg)
        desc = m.submodules.descriptors = TileDescriptors(cfg)
        drain = m.submodules.drain = DrainPipeline(cfg)
        outs = m.submodules.output = OutputStage(cfg)
        en, lc, start = stall.en, ctl.layer, ctl.status.start

        # streams in and out; the controller's state and strobes to the units it schedules
        for name in streams:
            wiring.connect(m, wiring.flipped(getattr(self, name)), getattr(stall, name))
        wiring.connect(m, wiring.flipped(self.cmd), ctl.cmd)
        wiring.connect(m, outs.out, wiring.flipped(self.out))
        wiring.connect(m, ctl.status, stall.status)
        wiring.connect(m, ctl.need, stall.need)
        wiring.connect(m, bbuf.need, stall.need_b)
        wiring.connect(m, outs.fifo, stall.fifo)
        wiring.connect(m, ctl.loader, bbuf.ctl)
        wiring.connect(m, ctl.b_read, bbuf.read)
        wiring.connect(m, bbuf.load, cols.load)
        wiring.connect(m, ctl.columns, cols.ctl)
        wiring.connect(m, ctl.descriptors, desc.ctl)
        wiring.connect(m, ctl.drain, drain.ctl)
        wiring.connect(m, drain.o, outs.i)
        m.d.comb += [
            ctl.en.eq(en.ctl), bbuf.en.eq(en.ctl), cols.en.eq(en.ctl), outs.en.eq(en.ctl),
            drain.en.eq(en.drain), drain.en_col.eq(en.col), outs.en_col.eq(en.col),
            drain.start.eq(start), outs.clear.eq(start),
            bbuf.k.eq(lc.k), bbuf.b.eq(stall.head.b), cols.colp.eq(stall.head.colp), desc.rowp.eq(stall.head.rowp),
            desc.drain_row.eq(ctl.drain.row), drain.za.eq(desc.za), drain.mr.eq(desc.mr),
            drain.colsum.eq(cols.colsum), drain.params.eq(cols.params), drain.fo.eq(lc.fo), drain.n.eq(lc.n),
            outs.sr.eq(lc.sr), outs.z_out.eq(lc.z_out), outs.out_fmt.eq(lc.out_fmt), outs.out_k.eq(lc.out_k),
            outs.n.eq(lc.n),
        ]
        self._operands(m, stall, ctl, bbuf, drain)
        if cfg.has_outliers:
            self._outliers(m, stall, ctl, bbuf, desc, drain)
        else:
            m.d.comb += [self.overflow.eq(0), self.range_error.eq(0)]
        m.d.comb += [self.busy.eq(ctl.status.busy), self.cycles.eq(ctl.cycles), self.acc_fault.eq(outs.acc_fault)]
        return m

    def _operands(self, m, stall, ctl, bbuf, drain):
        """Operand decoder and MAC array (docs/datapath.md sections 4 and 6, ``acc_raw``)."""
        cfg, lc = self.cfg, ctl.layer
        dec = m.submodules.decoder = OperandDecoder(lanes=cfg.rows)
        mac = m.submodules.mac = MacArray(cfg.rows, cfg.cols, cfg.b_bits, cfg.acc_bits,
                                          en_copies=mac_en_groups(cfg.rows, cfg.cols), drain_copies=cfg.cols)
        m.d.comb += [
            dec.i.valid.eq(1), dec.o.ready.eq(stall.en.dec), dec.clear.eq(ctl.status.start),
            dec.fmt.eq(lc.a_fmt), dec.bits.eq(lc.a_k), dec.m0.eq(lc.m0), dec.m1.eq(lc.m1),
            mac.en.eq(stall.en.mac), mac.valid.eq(ctl.mac.valid), mac.first.eq(ctl.mac.first),
            mac.last.eq(ctl.mac.last), mac.b.eq(bbuf.row), mac.drain_row.eq(drain.rows),
            drain.acc.eq(mac.shadow_row), self.invalid_code.eq(dec.invalid_seen),
        ]
        for r in range(cfg.rows):     # A codes enter the decoder only on issue cycles (else code 0)
            d = dec.o.payload[r]
            m.d.comb += [dec.i.payload[r].eq(Mux(ctl.mac.issue, stall.head.a[r], 0)),
                         mac.a[r].neg.eq(d.neg), mac.a[r].mag.eq(d.mag), mac.a[r].sh.eq(d.sh)]

    def _outliers(self, m, stall, ctl, bbuf, desc, drain):
        """Sparse outlier unit (docs/datapath.md section 5) and its B buffer read ports."""
        cfg = self.cfg
        ou = m.submodules.outliers = OutlierUnit(cfg.rows, cfg.cols, cfg.b_bits, cfg.outlier_capacity,
                                                 cfg.outlier_lanes, cfg.corr_bits, cfg.k_bits,
                                                 en_copies=cfg.rows, drain_copies=cfg.cols)
        m.d.comb += [
            ou.en.eq(stall.en.ou), ou.issue.eq(ctl.outliers.issue), ou.entries.eq(stall.head.outl),
            ou.row0.eq(ctl.outliers.row0), ou.m.eq(ctl.outliers.m), ou.k.eq(ctl.layer.k),
            ou.tile_start.eq(ctl.outliers.tile_start), ou.tile_count.eq(desc.cur_n_out),
            ou.drain.eq(ctl.drain.issue), ou.drain_row.eq(drain.rows), ou.clear.eq(ctl.status.start),
            bbuf.outl_next.eq(stall.outl_next), bbuf.outl_en.eq(stall.en.ou[0]), ou.rd_data.eq(bbuf.outl_rows),
            drain.corr.eq(ou.corr_row), self.overflow.eq(ou.overflow), self.range_error.eq(ou.range_error),
        ]


def build_engine(**fields) -> LayerEngine:
    """``LayerEngine(EngineConfig(**fields))`` (a factory taking plain values, for caching / CLIs)."""
    return LayerEngine(EngineConfig(**fields))
