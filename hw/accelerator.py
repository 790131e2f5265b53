"""Accelerator top: the layer engine behind an AXI4 memory port, driven by a descriptor sequencer.

Block diagram (docs/hardware.md, "Accelerator top"; memory format: docs/program-format.md)::

   host ports: start, desc_addr, resume ──► Sequencer FSM ──► busy, done, irq, error, layer_index
                                              │  descriptor (1024 bits)     layer_done
     m_axi_ar*/r* ◄──► ReadDMA ──► words ─────┼──► A buffer    ──► feeder ──► engine.a
                      (bursts,              ├──► rowp buffer ──► feeder ──► engine.rowp
                       8 in flight)         ├──► outl buffer ──► feeder ──► engine.outl
                                            ├──► B buffer    ──► feeder ──► engine.b
                                            └──► colp buffer ──► feeder ──► engine.colp
     m_axi_aw*/w*/b* ◄── OutputWriter ◄── engine.out (one row per write) ◄── LayerEngine
                           ▲ status record (one write per layer)

Per layer the sequencer reads the descriptor, loads the five input regions into the on-chip buffers,
starts the feeders, issues the engine command once every feeder holds its first beat, waits for the
engine and the last write response, writes the status record, and goes on with the next descriptor
(or pauses / stops).  The phases do not overlap, and inside the run phase the engine never waits
for an operand or for the writer, so the cycles of a layer are a closed form
(:func:`sim.accelerator.layer_cycles_top`).

The memory port is an AXI4 subset: INCR bursts of full-width beats (``AxSIZE = log2(bus_bits / 8)``),
no IDs (responses in order), reads of up to :attr:`AcceleratorConfig.max_burst` beats (never across
4 KiB), single-beat writes with byte strobes, ``RRESP`` / ``BRESP`` other than OKAY set ``bus_error``.
"""
from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFO
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from vitaccel.sim import accelerator as spec
from vitaccel.sim.accelerator import AcceleratorConfig
from vitaccel.sim.engine_config import DIM_BITS

from .common import OutFormat
from .engine import LayerEngine, cmd_layout, colp_layout, out_layout, rowp_layout
from .outlier_unit import outlier_beat_layout

__all__ = ["Accelerator", "ReadDMA", "OperandBuffer", "OutputWriter", "build_accelerator", "desc_layout",
           "status_layout", "OUT_LANE_OPTIONS"]

#: Output lane widths the writer packs (``out_bits`` of codes, 16 / 32 of fixed point).
OUT_LANE_OPTIONS = (4, 6, 8, 16, 32)
#: DMA tags: the descriptor and the input regions (``sim.accelerator.REGIONS`` order).
TAG_DESC = 0
TAG = {name: i + 1 for i, name in enumerate(spec.REGIONS)}
#: Depth of a feeder's word FIFO (words read ahead of the unpacker).
FEED_FIFO_DEPTH = 4


def desc_layout() -> data.StructLayout:
    """The descriptor (:data:`sim.accelerator.DESC_FIELDS`, padded to ``DESC_BITS``)."""
    fields = {name: unsigned(bits) for name, bits in spec.DESC_FIELDS}
    fields["pad"] = unsigned(spec.DESC_BITS - spec.desc_layout_bits())
    return data.StructLayout(fields)


def status_layout() -> data.StructLayout:
    """The status record (:data:`sim.accelerator.STATUS_FIELDS`)."""
    return data.StructLayout({name: unsigned(bits) for name, bits in spec.STATUS_FIELDS})


def _log2(x: int) -> int:
    return x.bit_length() - 1


# ============================================================================================ read DMA
class ReadDMA(wiring.Component):
    """Read DMA: splits transfers into AXI4 read bursts and hands every returned word on with its tag.

    A transfer (``req``: byte address, length in words, tag) becomes bursts of at most ``max_burst``
    words, issued one per cycle while fewer than ``outstanding`` bursts are in flight; the next
    transfer is taken in the cycle its predecessor's last burst is issued.  Every data beat appears on
    ``word`` / ``tag`` / ``word_valid`` (no back-pressure: the buffers take a word per cycle).
    """

    def __init__(self, bus_bits: int, max_burst: int, outstanding: int = spec.DMA_OUTSTANDING):
        self.bus_bits, self.max_burst, self.outstanding = bus_bits, max_burst, outstanding
        super().__init__({
            "req": In(stream.Signature(data.StructLayout({"addr": 32, "words": 24, "tag": 3}))),
            "araddr": Out(32), "arlen": Out(8), "arvalid": Out(1), "arready": In(1),
            "rdata": In(bus_bits), "rresp": In(2), "rlast": In(1), "rvalid": In(1), "rready": Out(1),
            "word": Out(bus_bits), "tag": Out(3), "word_valid": Out(1),
            "idle": Out(1), "bus_error": Out(1), "clear": In(1),
        })

    def elaborate(self, platform):
        m = Module()
        mb = self.max_burst
        active, addr, remaining, tag = Signal(), Signal(32), Signal(24), Signal(3)
        tags = m.submodules.tags = SyncFIFO(width=3, depth=self.outstanding)
        n = Signal(range(mb + 1))
        last_burst = Signal()
        m.d.comb += [n.eq(Mux(remaining > mb, mb, remaining)), last_burst.eq(remaining <= mb)]
        ar_hs = Signal()
        m.d.comb += [
            self.arvalid.eq(active & tags.w_rdy), ar_hs.eq(self.arvalid & self.arready),
            self.araddr.eq(addr), self.arlen.eq(n - 1),
            self.req.ready.eq(~active | (ar_hs & last_burst)),
            tags.w_en.eq(ar_hs), tags.w_data.eq(tag),
        ]
        with m.If(self.req.valid & self.req.ready):
            p = self.req.payload
            m.d.sync += [active.eq(p.words != 0), addr.eq(p.addr), remaining.eq(p.words), tag.eq(p.tag)]
        with m.Elif(ar_hs):
            m.d.sync += [addr.eq(addr + n * (self.bus_bits // 8)), remaining.eq(remaining - n)]
            with m.If(last_burst):
                m.d.sync += active.eq(0)
        m.d.comb += [
            self.rready.eq(1), self.word.eq(self.rdata), self.tag.eq(tags.r_data),
            self.word_valid.eq(self.rvalid & tags.r_rdy), tags.r_en.eq(self.rvalid & self.rlast),
            self.idle.eq(~active & ~tags.r_rdy),
        ]
        with m.If(self.clear):
            m.d.sync += self.bus_error.eq(0)
        with m.Elif(self.rvalid & (self.rresp != 0)):
            m.d.sync += self.bus_error.eq(1)
        return m


# ============================================================================================ buffers
class OperandBuffer(wiring.Component):
    """One input region: on-chip buffer, its loader (bus words in) and its feeder (engine beats out).

    Parameters
    ----------
    bus_bits : int
    depth : int
        Buffer entries (bus words for a packed region, beats for a wide one).
    kind : {"packed", "wide"}
        Packed: ``bus_bits / slot`` beats per word, beat ``i`` of a word at bit ``i * slot``.
        Wide: ``wpb`` words per beat (``wpb * bus_bits`` bits per entry).
    wpb : int
        Words per beat (wide regions).
    out_shape : ShapeLike
        Payload of the engine stream the feeder drives.
    options : list of (slot_bits, convert)
        Run-time variants selected by ``sel``: the slot width and a function turning the slot's
        bits into the payload (e.g. A lanes of ``a_k`` bits zero-extended to ``a_bits``).

    The feeder streams ``beats`` beats (``words`` words) ``repeats`` times after ``start``; it reads
    the buffer ahead into a :data:`FEED_FIFO_DEPTH`-word FIFO, so it delivers one beat per cycle.
    """

    def __init__(self, bus_bits: int, depth: int, kind: str, wpb: int, out_shape, options):
        self.bus_bits, self.depth, self.kind, self.wpb = bus_bits, depth, kind, wpb
        self.options = options
        self.width = bus_bits * (wpb if kind == "wide" else 1)
        super().__init__({
            "wr_word": In(bus_bits), "wr_en": In(1), "clear": In(1),
            "start": In(1), "words": In(24), "beats": In(24), "repeats": In(16),
            "sel": In(range(max(2, len(options)))),
            "o": Out(stream.Signature(out_shape)),
            "primed": Out(1),
        })

    def _loader(self, m, wp):
        ptr = Signal(range(self.depth + 1))
        if self.kind == "packed":
            m.d.comb += [wp.addr.eq(ptr), wp.data.eq(self.wr_word), wp.en.eq(self.wr_en)]
            with m.If(self.clear):
                m.d.sync += ptr.eq(0)
            with m.Elif(self.wr_en):
                m.d.sync += ptr.eq(ptr + 1)
            return
        asm = Signal(self.width - self.bus_bits) if self.wpb > 1 else None
        cnt = Signal(range(self.wpb))
        beat = Cat(asm, self.wr_word) if asm is not None else self.wr_word
        m.d.comb += [wp.addr.eq(ptr), wp.data.eq(beat), wp.en.eq(self.wr_en & (cnt == self.wpb - 1))]
        with m.If(self.clear):
            m.d.sync += [ptr.eq(0), cnt.eq(0)]
        with m.Elif(self.wr_en):
            if asm is not None:
                m.d.sync += asm.eq(beat[self.bus_bits:])
            with m.If(cnt == self.wpb - 1):
                m.d.sync += [cnt.eq(0), ptr.eq(ptr + 1)]
            with m.Else():
                m.d.sync += cnt.eq(cnt + 1)

    def elaborate(self, platform):
        m = Module()
        mem = m.submodules.mem = Memory(shape=unsigned(self.width), depth=self.depth, init=[])
        self._loader(m, mem.write_port())
        rp = mem.read_port(domain="sync")
        fifo = m.submodules.words = SyncFIFO(width=self.width, depth=FEED_FIFO_DEPTH)

        # reader: words 0 .. words-1, repeats times
        rd_ptr, rd_rep, rd_active, inflight = Signal(24), Signal(16), Signal(), Signal()
        can_read = Signal()
        entries = self.words if self.kind == "packed" else self.beats   # buffer entries per repeat
        m.d.comb += [can_read.eq(rd_active & (fifo.level + inflight < FEED_FIFO_DEPTH)),
                     rp.addr.eq(rd_ptr), rp.en.eq(1), fifo.w_en.eq(inflight), fifo.w_data.eq(rp.data)]
        m.d.sync += inflight.eq(can_read & ~self.start)
        with m.If(self.start):
            m.d.sync += [rd_ptr.eq(0), rd_rep.eq(0),
                         rd_active.eq((entries != 0) & (self.beats != 0) & (self.repeats != 0))]
        with m.Elif(can_read):
            with m.If(rd_ptr + 1 == entries):
                m.d.sync += [rd_ptr.eq(0), rd_rep.eq(rd_rep + 1)]
                with m.If(rd_rep + 1 == self.repeats):
                    m.d.sync += rd_active.eq(0)
            with m.Else():
                m.d.sync += rd_ptr.eq(rd_ptr + 1)

        # unpacker: slot si of the current word, beat bc of the current repeat
        cur, have = Signal(self.width), Signal()
        si, bc = Signal(16), Signal(24)
        slot_bits = [s for s, _ in self.options]
        per_word = [max(1, self.bus_bits // s) if self.kind == "packed" else 1 for s in slot_bits]
        last_slot = Signal()
        m.d.comb += last_slot.eq(self._select([si == p - 1 for p in per_word]))
        payload = self._select([conv(cur[:s]) for s, conv in self.options])
        m.d.comb += [self.o.valid.eq(have), self.o.payload.eq(payload)]
        consume, end_rep, end_word = Signal(), Signal(), Signal()
        m.d.comb += [consume.eq(have & self.o.ready), end_rep.eq(bc + 1 == self.beats),
                     end_word.eq(end_rep | last_slot)]
        with m.If(consume):
            m.d.sync += [bc.eq(Mux(end_rep, 0, bc + 1)), si.eq(Mux(end_word, 0, si + 1))]
            if max(per_word) > 1:       # several beats per word: shift the next one down
                m.d.sync += cur.eq(self._select([cur >> s if p > 1 else cur for s, p in zip(slot_bits, per_word)]))
            with m.If(end_word):
                m.d.sync += have.eq(0)
        with m.If((~have | (consume & end_word)) & fifo.r_rdy):
            m.d.comb += fifo.r_en.eq(1)
            m.d.sync += [cur.eq(fifo.r_data), have.eq(1)]
        with m.If(self.start):
            m.d.sync += [have.eq(0), si.eq(0), bc.eq(0)]
        m.d.comb += self.primed.eq(have | (self.beats == 0) | (self.repeats == 0))
        return m

    def _select(self, values):
        """``values[sel]`` (the last option for larger ``sel``)."""
        if len(values) == 1:
            return values[0]
        out = values[-1]
        for i in range(len(values) - 2, -1, -1):
            out = Mux(self.sel == i, values[i], out)
        return out


# ============================================================================================ writer
class OutputWriter(wiring.Component):
    """Writes engine output rows (and the sequencer's status records) with single-beat AXI4 writes.

    Row ``i`` of a layer (in engine order) goes to slot ``i`` of the output region: slot width
    ``slot = max(8, pow2ceil(cols * ob))`` (``ob`` the output lane width, :data:`OUT_LANE_OPTIONS`
    selected by ``ob_sel``), ``bus_bits / slot`` slots per word; the row is replicated over the word
    and the byte strobes select its slot.  Lanes past the layer's ``n`` columns are written as 0.
    """

    def __init__(self, cols: int, bus_bits: int):
        self.cols, self.bus_bits = cols, bus_bits
        super().__init__({
            "i": In(stream.Signature(out_layout(cols))),
            "raw": In(stream.Signature(data.StructLayout({"addr": 32, "data": spec.STATUS_BITS}))),
            "n": In(DIM_BITS), "ob_sel": In(3), "out_addr": In(32), "clear": In(1),
            "awaddr": Out(32), "awlen": Out(8), "awvalid": Out(1), "awready": In(1),
            "wdata": Out(bus_bits), "wstrb": Out(bus_bits // 8), "wlast": Out(1), "wvalid": Out(1), "wready": In(1),
            "bresp": In(2), "bvalid": In(1), "bready": Out(1),
            "idle": Out(1), "bus_error": Out(1),
        })

    def _row_word(self, m):
        """(data, strobes, word byte offset) of the incoming row at output index ``idx``."""
        C, bus = self.cols, self.bus_bits
        idx = Signal(24, name="out_idx")
        row = self.i.payload
        lanes_ok = [row.col + c < self.n for c in range(C)]
        datas, strbs, offs = [], [], []
        for ob in OUT_LANE_OPTIONS:
            slot = spec._slot(C * ob)
            if slot > bus:          # cannot occur for a valid descriptor (checked at decode)
                slot = bus
            per_word = bus // slot
            packed = Cat(*[Mux(lanes_ok[c], row.data[c][:ob], 0) for c in range(C)])
            packed = Cat(packed, Const(0, slot - C * ob)) if slot > C * ob else packed[:slot]
            datas.append(Cat(*([packed] * per_word)))
            pos = idx[:_log2(per_word)] if per_word > 1 else Const(0, 1)
            sb = slot // 8
            strbs.append(Const((1 << sb) - 1, bus // 8) << (pos * sb))
            offs.append((idx >> _log2(per_word)) << _log2(bus // 8))
        sel = self.ob_sel

        def pick(vals):
            out = vals[-1]
            for i in range(len(vals) - 2, -1, -1):
                out = Mux(sel == i, vals[i], out)
            return out
        return idx, pick(datas), pick(strbs), pick(offs)

    def elaborate(self, platform):
        m = Module()
        bus = self.bus_bits
        idx, row_data, row_strb, row_off = self._row_word(m)
        aw_pend, w_pend = Signal(), Signal()
        aw_hs, w_hs, b_hs = Signal(), Signal(), Signal()
        m.d.comb += [aw_hs.eq(self.awvalid & self.awready), w_hs.eq(self.wvalid & self.wready),
                     b_hs.eq(self.bvalid & self.bready),
                     self.awvalid.eq(aw_pend), self.wvalid.eq(w_pend), self.awlen.eq(0), self.wlast.eq(1),
                     self.bready.eq(1)]
        free = Signal()
        m.d.comb += [free.eq((~aw_pend | aw_hs) & (~w_pend | w_hs)),
                     self.raw.ready.eq(free), self.i.ready.eq(free & ~self.raw.valid)]
        rec_bytes = spec.STATUS_BITS // 8
        with m.If(self.raw.valid & self.raw.ready):
            a = self.raw.payload.addr
            m.d.sync += [self.awaddr.eq(a & ~(bus // 8 - 1)),
                         self.wdata.eq(Cat(*([self.raw.payload.data] * (bus // spec.STATUS_BITS)))),
                         self.wstrb.eq(Const((1 << rec_bytes) - 1, bus // 8) << a[:_log2(bus // 8)]),
                         aw_pend.eq(1), w_pend.eq(1)]
        with m.Elif(self.i.valid & self.i.ready):
            m.d.sync += [self.awaddr.eq(self.out_addr + row_off), self.wdata.eq(row_data),
                         self.wstrb.eq(row_strb), aw_pend.eq(1), w_pend.eq(1), idx.eq(idx + 1)]
        with m.Else():
            m.d.sync += [aw_pend.eq(aw_pend & ~aw_hs), w_pend.eq(w_pend & ~w_hs)]
        with m.If(self.clear):
            m.d.sync += idx.eq(0)
        outstanding = Signal(8)
        m.d.sync += outstanding.eq(outstanding + w_hs - b_hs)
        m.d.comb += self.idle.eq(~aw_pend & ~w_pend & (outstanding == 0) & ~self.i.valid)
        with m.If(self.clear):
            m.d.sync += self.bus_error.eq(0)
        with m.Elif(b_hs & (self.bresp != 0)):
            m.d.sync += self.bus_error.eq(1)
        return m


# ============================================================================================ top
def _axi_ports(bus_bits: int) -> dict:
    """The AXI4 master port (flat, ``m_axi_*`` names) of the top."""
    return {
        "m_axi_araddr": Out(32), "m_axi_arlen": Out(8), "m_axi_arsize": Out(3), "m_axi_arburst": Out(2),
        "m_axi_arvalid": Out(1), "m_axi_arready": In(1),
        "m_axi_rdata": In(bus_bits), "m_axi_rresp": In(2), "m_axi_rlast": In(1), "m_axi_rvalid": In(1),
        "m_axi_rready": Out(1),
        "m_axi_awaddr": Out(32), "m_axi_awlen": Out(8), "m_axi_awsize": Out(3), "m_axi_awburst": Out(2),
        "m_axi_awvalid": Out(1), "m_axi_awready": In(1),
        "m_axi_wdata": Out(bus_bits), "m_axi_wstrb": Out(bus_bits // 8), "m_axi_wlast": Out(1),
        "m_axi_wvalid": Out(1), "m_axi_wready": In(1),
        "m_axi_bresp": In(2), "m_axi_bvalid": In(1), "m_axi_bready": Out(1),
    }


class Accelerator(wiring.Component):
    """The vitaccel accelerator: :class:`hw.engine.LayerEngine` + buffers + DMA + sequencer.

    Parameters
    ----------
    cfg : sim.accelerator.AcceleratorConfig

    Attributes
    ----------
    m_axi_* :
        AXI4 master (see the module docstring), ``cfg.bus_bits`` data bits, 32-bit byte addresses.
    start : In(1)
        Pulse: run the descriptor list at ``desc_addr`` (ignored while ``busy``).
    desc_addr : In(32)
        Byte address of the first descriptor (:data:`sim.accelerator.DESC_BITS` / 8 aligned).
    resume : In(1)
        Pulse: continue after a descriptor with the ``pause`` flag.
    busy, done, paused : Out(1)
        Running; finished (until the next ``start``); waiting for ``resume``.
    irq : Out(1)
        One-cycle pulse when the sequencer stops (done, error) or pauses.
    error : Out(8)
        Sticky flags of the run (:data:`sim.accelerator.STATUS_FLAG_BITS`), ORed over the layers.
    layer_index : Out(16)
        Descriptors completed since ``start``.
    layer_done : Out(1)
        One-cycle pulse after each layer's status record is written.
    """

    def __init__(self, cfg: AcceleratorConfig):
        self.cfg = cfg
        ports = _axi_ports(cfg.bus_bits)
        ports.update({"start": In(1), "desc_addr": In(32), "resume": In(1), "busy": Out(1), "done": Out(1),
                      "paused": Out(1), "irq": Out(1), "error": Out(8), "layer_index": Out(16),
                      "layer_done": Out(1)})
        super().__init__(ports)

    # ------------------------------------------------------------------ operand buffers
    def _buffers(self, m) -> dict:
        cfg, e = self.cfg, self.cfg.engine
        R, C = e.rows, e.cols
        a_shape = data.ArrayLayout(unsigned(e.a_bits), R)
        b_shape = data.ArrayLayout(signed(e.b_bits), C)

        def lanes(n, k, width, signed_ext):
            """``n`` lanes of ``k`` bits -> ``n`` lanes of ``width`` bits (zero / sign extended)."""
            def conv(bits):
                out = []
                for i in range(n):
                    v = bits[i * k:(i + 1) * k]
                    ext = [v[k - 1]] * (width - k) if signed_ext else [Const(0, width - k)]
                    out.append(Cat(v, *ext) if width > k else v)
                return Cat(*out)
            return conv
        a_opts = [(spec._slot(R * k), lanes(R, k, e.a_bits, False)) for k in (4, 6, 8) if k <= e.a_bits]
        b_opts = [(spec._slot(C * k), lanes(C, k, e.b_bits, True)) for k in (4, 6, 8) if k <= e.b_bits]
        shapes = {"a": a_shape, "b": b_shape, "rowp": rowp_layout(R), "colp": colp_layout(C)}
        depth = {"a": cfg.a_buf_words, "b": cfg.b_buf_words, "rowp": cfg.rowp_buf_beats,
                 "colp": cfg.colp_buf_beats, "outl": cfg.outl_buf_words}
        opts = {"a": a_opts, "b": b_opts}
        if e.has_outliers:
            shapes["outl"] = outlier_beat_layout(e.outlier_lanes)
        bufs = {}
        for name, shape in shapes.items():
            kind, size = cfg.region_kind(name)
            width = data.Layout.cast(shape).size
            slot = size if kind == "packed" else size * cfg.bus_bits
            options = opts.get(name) or [(slot, lambda bits, w=width: bits[:w])]
            buf = OperandBuffer(cfg.bus_bits, max(1, depth[name]), kind, size if kind == "wide" else 1,
                                shape, options)
            m.submodules[f"{name}_buf"] = bufs[name] = buf
        return bufs

    def elaborate(self, platform):
        m = Module()
        cfg, e = self.cfg, self.cfg.engine
        eng = m.submodules.engine = LayerEngine(e)
        dma = m.submodules.dma = ReadDMA(cfg.bus_bits, cfg.max_burst)
        wr = m.submodules.writer = OutputWriter(e.cols, cfg.bus_bits)
        bufs = self._buffers(m)
        size = _log2(cfg.bus_bytes)
        m.d.comb += [
            self.m_axi_araddr.eq(dma.araddr), self.m_axi_arlen.eq(dma.arlen), self.m_axi_arsize.eq(size),
            self.m_axi_arburst.eq(1), self.m_axi_arvalid.eq(dma.arvalid), dma.arready.eq(self.m_axi_arready),
            dma.rdata.eq(self.m_axi_rdata), dma.rresp.eq(self.m_axi_rresp), dma.rlast.eq(self.m_axi_rlast),
            dma.rvalid.eq(self.m_axi_rvalid), self.m_axi_rready.eq(dma.rready),
            self.m_axi_awaddr.eq(wr.awaddr), self.m_axi_awlen.eq(wr.awlen), self.m_axi_awsize.eq(size),
            self.m_axi_awburst.eq(1), self.m_axi_awvalid.eq(wr.awvalid), wr.awready.eq(self.m_axi_awready),
            self.m_axi_wdata.eq(wr.wdata), self.m_axi_wstrb.eq(wr.wstrb), self.m_axi_wlast.eq(wr.wlast),
            self.m_axi_wvalid.eq(wr.wvalid), wr.wready.eq(self.m_axi_wready),
            wr.bresp.eq(self.m_axi_bresp), wr.bvalid.eq(self.m_axi_bvalid), self.m_axi_bready.eq(wr.bready),
        ]
        for name, buf in bufs.items():
            wiring.connect(m, buf.o, getattr(eng, name))
            m.d.comb += [buf.wr_word.eq(dma.word), buf.wr_en.eq(dma.word_valid & (dma.tag == TAG[name]))]
        wiring.connect(m, eng.out, wr.i)
        self._sequencer(m, eng, dma, wr, bufs)
        return m

    # ------------------------------------------------------------------ sequencer
    def _sequencer(self, m, eng, dma, wr, bufs):
        cfg = self.cfg
        dl = desc_layout()
        dwords = cfg.desc_words
        desc_raw = Signal(dwords * cfg.bus_bits)
        desc = data.View(dl, desc_raw[:spec.DESC_BITS])
        cmd = data.View(cmd_layout, desc.cmd[:cmd_layout.size])
        desc_ptr = Signal(32)
        layer_cyc, run_cyc = Signal(32), Signal(32)
        flags = Signal(8)
        pending = Signal(len(spec.REGIONS))      # regions still to request in LOAD
        with m.If(dma.word_valid & (dma.tag == TAG_DESC)):
            m.d.sync += desc_raw.eq(Cat(desc_raw[cfg.bus_bits:], dma.word) if dwords > 1 else dma.word)

        # per-layer settings of the buffers, the writer and the engine
        ob = Signal(6)
        m.d.comb += ob.eq(Mux(cmd.out_fmt == OutFormat.FIXED32, 32, Mux(cmd.out_fmt == OutFormat.FIXED16, 16,
                                                                         cmd.out_k)))
        ob_sel = Signal(3)
        for i, w in enumerate(OUT_LANE_OPTIONS):
            with m.If(ob == w):
                m.d.comb += ob_sel.eq(i)
        k_sel = lambda k: Mux(k == 4, 0, Mux(k == 6, 1, 2))
        settings = {"a": (desc.a_words, desc.a_beats, desc.n_blocks, k_sel(cmd.a_k)),
                    "rowp": (desc.rowp_words, desc.n_row_tiles, desc.n_blocks, 0),
                    "outl": (desc.outl_words, desc.outl_beats, desc.n_blocks, 0),
                    "b": (desc.b_words, desc.b_beats, 1, k_sel(desc.b_k)),
                    "colp": (desc.colp_words, desc.n_blocks, 1, 0)}
        for name, buf in bufs.items():
            words, beats, reps, sel = settings[name]
            m.d.comb += [buf.words.eq(words), buf.beats.eq(beats), buf.repeats.eq(reps), buf.sel.eq(sel)]
        m.d.comb += [wr.n.eq(cmd.n), wr.ob_sel.eq(ob_sel), wr.out_addr.eq(desc.out_addr),
                     eng.cmd.payload.as_value().eq(cmd.as_value())]
        bad = self._desc_error(m, desc, cmd, ob)
        self._fsm(m, eng, dma, wr, bufs, desc, desc_ptr, layer_cyc, run_cyc, flags, pending, bad)

    def _desc_error(self, m, desc, cmd, ob):
        """A descriptor the build cannot run (the loader never writes one): region larger than its
        buffer, ``K > max_k``, codes wider than the engine, an output row wider than the bus."""
        cfg, e = self.cfg, self.cfg.engine
        bad = Signal()
        over = [desc.a_words > cfg.a_buf_words, desc.b_words > cfg.b_buf_words,
                desc.n_row_tiles > cfg.rowp_buf_beats, desc.n_blocks > cfg.colp_buf_beats,
                cmd.k > e.max_k, cmd.k == 0, cmd.m == 0, cmd.n == 0, cmd.a_k > e.a_bits, desc.b_k > e.b_bits,
                (ob * e.cols) > cfg.bus_bits]
        over.append(desc.outl_words > cfg.outl_buf_words if e.has_outliers else desc.outl_words != 0)
        m.d.comb += bad.eq(Cat(*over).any())
        return bad

    def _fsm(self, m, eng, dma, wr, bufs, desc, desc_ptr, layer_cyc, run_cyc, flags, pending, bad):
        cfg = self.cfg
        region_words = [getattr(desc, f"{r}_words") for r in spec.REGIONS]
        region_addr = [getattr(desc, f"{r}_addr") for r in spec.REGIONS]
        first = Signal(range(len(spec.REGIONS)))
        for i in reversed(range(len(spec.REGIONS))):
            with m.If(pending[i]):
                m.d.comb += first.eq(i)
        st = Signal(data.StructLayout({name: unsigned(bits) for name, bits in spec.STATUS_FIELDS}))
        m.d.comb += [st.engine_cycles.eq(eng.cycles), st.layer_cycles.eq(layer_cyc), st.run_cycles.eq(run_cyc),
                     st.flags.eq(flags), st.layer_id.eq(desc.layer_id), st.magic.eq(spec.STATUS_MAGIC),
                     wr.raw.payload.addr.eq(desc.status_addr), wr.raw.payload.data.eq(st.as_value())]
        m.d.sync += [self.irq.eq(0), self.layer_done.eq(0), layer_cyc.eq(layer_cyc + 1), run_cyc.eq(run_cyc + 1)]
        clear = Signal()
        m.d.comb += [dma.clear.eq(clear), wr.clear.eq(clear)]
        for buf in bufs.values():
            m.d.comb += buf.clear.eq(clear)
        with m.FSM(name="seq"):
            with m.State("IDLE"):
                with m.If(self.start):
                    m.d.sync += [desc_ptr.eq(self.desc_addr), self.done.eq(0), self.error.eq(0),
                                 self.layer_index.eq(0), self.busy.eq(1), layer_cyc.eq(0)]
                    m.next = "DESC"
            with m.State("DESC"):
                m.d.comb += [dma.req.valid.eq(1), dma.req.payload.addr.eq(desc_ptr),
                             dma.req.payload.words.eq(cfg.desc_words), dma.req.payload.tag.eq(TAG_DESC)]
                with m.If(dma.req.ready):
                    m.next = "DESC_WAIT"
            with m.State("DESC_WAIT"):
                with m.If(dma.idle):
                    m.next = "DECODE"
            with m.State("DECODE"):
                m.d.comb += clear.eq(1)
                m.d.sync += [flags.eq(0), pending.eq(Cat(*[w != 0 for w in region_words]))]
                with m.If(bad):
                    m.d.sync += [self.error.eq(self.error | (1 << spec.STATUS_FLAG_BITS.index("desc_error")))]
                    m.next = "STOP"
                with m.Else():
                    m.next = "LOAD"
            with m.State("LOAD"):
                with m.If(pending == 0):
                    m.next = "LOAD_WAIT"
                with m.Else():
                    m.d.comb += [dma.req.valid.eq(1), dma.req.payload.tag.eq(first + 1)]
                    for i in range(len(spec.REGIONS)):
                        with m.If(first == i):
                            m.d.comb += [dma.req.payload.addr.eq(region_addr[i]),
                                         dma.req.payload.words.eq(region_words[i])]
                    with m.If(dma.req.ready):
                        m.d.sync += pending.eq(pending & ~(1 << first))
            with m.State("LOAD_WAIT"):
                with m.If(dma.idle):
                    for buf in bufs.values():
                        m.d.comb += buf.start.eq(1)
                    m.next = "PRIME"
            with m.State("PRIME"):
                with m.If(Cat(*[b.primed for b in bufs.values()]).all()):
                    m.next = "CMD"
            with m.State("CMD"):
                m.d.comb += eng.cmd.valid.eq(1)
                with m.If(eng.cmd.ready):
                    m.d.sync += run_cyc.eq(0)
                    m.next = "RUN"
            with m.State("RUN"):
                with m.If(~eng.busy & wr.idle & (run_cyc != 0)):
                    m.d.sync += flags.eq(Cat(eng.overflow, eng.range_error, eng.invalid_code, eng.acc_fault,
                                             Const(0, 1), dma.bus_error | wr.bus_error))
                    m.next = "STATUS"
            with m.State("STATUS"):
                m.d.comb += wr.raw.valid.eq(1)
                with m.If(wr.raw.ready):
                    m.next = "STATUS_WAIT"
            with m.State("STATUS_WAIT"):
                with m.If(wr.idle):
                    m.d.sync += [self.layer_done.eq(1), self.layer_index.eq(self.layer_index + 1),
                                 self.error.eq(self.error | flags), layer_cyc.eq(0),
                                 desc_ptr.eq(desc_ptr + spec.DESC_BITS // 8)]
                    with m.If(desc.last):
                        m.next = "STOP"
                    with m.Elif(desc.pause):
                        m.d.sync += [self.irq.eq(1), self.paused.eq(1)]
                        m.next = "PAUSE"
                    with m.Else():
                        m.next = "DESC"
            with m.State("PAUSE"):
                with m.If(self.resume):
                    m.d.sync += [self.paused.eq(0), layer_cyc.eq(0)]
                    m.next = "DESC"
            with m.State("STOP"):
                m.d.sync += [self.busy.eq(0), self.done.eq(1), self.irq.eq(1)]
                m.next = "IDLE"


def build_accelerator(**fields) -> Accelerator:
    """``Accelerator(AcceleratorConfig.from_dict(fields))`` (plain values, for caching / CLIs)."""
    return Accelerator(AcceleratorConfig.from_dict(fields))


_INIT_RE = None


def compact_memory_init(text: str, min_words: int = 16) -> str:
    """Replace the all-zero ``initial`` blocks Amaranth writes for every memory word (``mem[0] = ...;``
    one line per word) by an equivalent ``for`` loop when a memory has at least ``min_words`` words.

    The accelerator's buffers hold thousands of words; unrolled, their initialisation makes the
    Verilog tens of megabytes and the Verilator build minutes longer.  Semantics are unchanged
    (every word starts at zero); yosys and Verilator both accept the loop.
    """
    import re

    global _INIT_RE
    if _INIT_RE is None:
        _INIT_RE = re.compile(r"  initial begin\n((?:    [^\n\[]+\[\d+\] = \d+'h0+;\n)+)  end\n")
    count = [0]

    def repl(mt):
        lines = mt.group(1).splitlines()
        if len(lines) < min_words:
            return mt.group(0)
        first = re.match(r"    ([^\n\[]+)\[(\d+)\] = (\d+)'h", lines[0])
        name, width = first.group(1), int(first.group(3))
        for i, ln in enumerate(lines):
            if not ln.startswith(f"    {name}[{i}] = "):
                return mt.group(0)
        count[0] += 1
        blk = f"vitaccel_zero_init_{count[0]}"
        return (f"  initial begin : {blk}\n    integer i;\n    for (i = 0; i < {len(lines)}; i = i + 1)\n"
                f"      {name}[i] = {width}'h0;\n  end\n")
    return _INIT_RE.sub(repl, text)


def accelerator_verilog(cfg: AcceleratorConfig, name: str = "accelerator") -> str:
    """Verilog of the top (:func:`compact_memory_init` applied)."""
    from amaranth.back import verilog

    return compact_memory_init(verilog.convert(Accelerator(cfg), name=name, emit_src=False))
