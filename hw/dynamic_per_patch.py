"""Dynamic per-patch encoder: per-row scale ladder selection (docs/datapath.md section 8.1.1).

The hardware of ``sim.reference.encode_per_patch_dynamic`` and its helpers ``row_range``,
``select_ladder`` and ``check_ladder``:

* :class:`RowRangeUnit` -- dynamic per patch front end: consumes one row of ``x``, tracks the inlier
  range (``row_range``: ``lo = min(0, min inliers)``, ``hi = max(0, max inliers)``), and at the end
  of the row selects the ladder index ``j`` (``select_ladder``, a binary search of the ladder
  threshold table ``T``), reads ``r = R[j]`` and computes the row's zero point
  ``z = saturate(round_shift(-lo * R[j], SE), 0, 2^k - 1)`` with one multiplier.  One output beat
  per row: ``row, len, j, r, z``.
* :class:`DynamicPerPatchEncoder` -- the whole ``encode_per_patch_dynamic``: a circular row buffer
  (:class:`amaranth.lib.memory.Memory`), the :class:`RowRangeUnit` and the existing
  :class:`hw.encoders.PerPatchEncoder` (reused as is).  ``x`` enters once; each row is encoded from
  the buffer as soon as its ``(j, r, z)`` is known, while the next row is written behind it.
  Outputs: dense codes and outliers (the layouts of :class:`~hw.encoders.PerPatchEncoder`) and one
  ``(row, j, z)`` beat per row (the consuming GEMM's ``Mr = MrL[j]``, ``za = z``).

Both are built once for 8-bit codes with ``k``, ``SE``, ``ALPHA``, the ladder and its length ``J`` as
run-time config; the ladder ``(R[j], T[j])``, ``j < J <= 64`` is written through a small write port
(``ladder_we``, ``ladder_addr``, ``ladder_r``, ``ladder_t``) while the unit is idle.
"""
from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from vitaccel.sim.formats import BITS

from .common import bits_select, partial_products, round_half, sum_products
from .encoders import PER_PATCH_LATENCY, PER_PATCH_OUT, PER_PATCH_OUTL, PerPatchEncoder

__all__ = ["RowRangeUnit", "DynamicPerPatchEncoder", "ROW_IN", "ROW_PARAMS", "ROW_OUT", "LADDER_MAX",
           "LADDER_ENTRY", "RANGE_LATENCY", "RANGE_BUSY_CYCLES", "DYNAMIC_LATENCY"]

#: Largest scale ladder (``sim.formats.LADDER_MAX``): ``j`` is 6 bits, ``J`` is 1..64.
LADDER_MAX = 64
#: Input element of both units: ``x`` (signed 32, ``F`` fraction bits), ``row`` (16), ``last`` (last
#: element of the row).
ROW_IN = data.StructLayout({"x": signed(32), "row": unsigned(16), "last": unsigned(1)})
#: One :class:`RowRangeUnit` output beat per row: ``row``, ``len`` (elements in the row, 1..max_k),
#: ladder index ``j``, reciprocal ``r = R[j]``, zero point ``z``.
ROW_PARAMS = data.StructLayout({"row": unsigned(16), "len": unsigned(16), "j": unsigned(6),
                                "r": unsigned(24), "z": unsigned(8)})
#: One :class:`DynamicPerPatchEncoder` ``rowp`` beat per row: what the consuming GEMM needs.
ROW_OUT = data.StructLayout({"row": unsigned(16), "j": unsigned(6), "z": unsigned(8)})
#: One ladder entry: reciprocal ``R[j]`` (``0 < R < 2^24``) and span threshold ``T[j]`` (``< 2^34``).
LADDER_ENTRY = data.StructLayout({"r": unsigned(24), "t": unsigned(34)})
#: :class:`RowRangeUnit`: a row's output beat is valid this many cycles after the cycle that accepted
#: its last element (input register 1, row capture 1, span 1, 7 ladder reads 1 each, multiplier
#: partial products 1, sum 1, shift 1, output register 1).
RANGE_LATENCY = 14
#: :class:`RowRangeUnit`: cycles its per-row sequencer is busy (span .. output); a row costs
#: ``max(K, RANGE_BUSY_CYCLES + 1)`` cycles in steady state, i.e. one element per cycle for ``K >= 13``.
RANGE_BUSY_CYCLES = 12
#: :class:`DynamicPerPatchEncoder`: the first code of a row is valid on ``o`` this many cycles after the
#: cycle that accepted the row's last element (all outputs ready): :data:`RANGE_LATENCY`, row start 1,
#: buffer read 1, fabric register 1, :data:`hw.encoders.PER_PATCH_LATENCY` 5.
DYNAMIC_LATENCY = RANGE_LATENCY + 3 + PER_PATCH_LATENCY


def _check_max_k(max_k: int) -> int:
    if isinstance(max_k, bool) or int(max_k) != max_k or not 1 <= int(max_k) <= 65535:
        raise ValueError(f"max_k (the longest row) must be an integer in 1..65535, got {max_k!r}")
    return int(max_k)


class RowRangeUnit(wiring.Component):
    """Row range + ladder selection of ``encode_per_patch_dynamic`` (section 8.1.1).

    Per row: ``lo = min(0, min inliers)``, ``hi = max(0, max inliers)`` (inliers ``|x| <= ALPHA``, or
    every element with ``outliers_en = 0``), ``span = hi - lo``,
    ``j = max({0} | {j < J : T[j] >= span})``, ``r = R[j]``,
    ``z = saturate(round_shift(-lo * R[j], SE), 0, 2^k - 1)``.

    Parameters
    ----------
    max_k : int
        Longest row (1..65535).  A row still open after ``max_k`` elements is cut there (its
        ``max_k``-th element is treated as ``last``) and :attr:`row_overflow` is set.
    chunk : int
        Multiplier split width (17 -> 18x18 DSP partial products).

    Attributes
    ----------
    i : In(stream.Signature(ROW_IN))
        ``x`` (signed 32), ``row`` (16, passed to the output), ``last`` (ends the row).
    o : Out(stream.Signature(ROW_PARAMS))
        One beat per row: ``row``, ``len`` (elements), ``j`` (6), ``r`` (24, ``R[j]``), ``z`` (8).
    alpha : In(32)
        ``ALPHA``: ``|x| > ALPHA`` is an outlier and does not count in the range.
    outliers_en : In(1)
        0 -> every element is an inlier (``alpha_fx = None`` in the reference).
    bits : In(4)
        Code width ``k`` (4, 6, 8; another value gives ``z = 0``).
    se : In(6)
        ``SE`` shared by the ladder's reciprocals (0..56).
    ladder_len : In(7)
        ``J`` (1..64): entries ``j >= J`` are never selected.
    ladder_we, ladder_addr, ladder_r, ladder_t : In(1), In(6), In(24), In(34)
        Ladder write port: ``(R[addr], T[addr]) <- (ladder_r, ladder_t)`` when ``ladder_we``.  Write
        only while no row is in flight.  ``T`` must be non-increasing and ``R`` non-decreasing in
        ``j`` (``sim.reference.check_ladder``): the binary search relies on it.
    row_overflow : Out(1)
        Sticky: a row longer than ``max_k`` was cut.
    clear : In(1)
        Clears :attr:`row_overflow`.

    Notes
    -----
    The accumulate stage takes one element per cycle.  At a row's last element the final
    ``(lo, hi)`` move to a per-row sequencer (so the next row accumulates meanwhile): ``span``, then
    a binary search over the ladder memory (one read of ``R[0]``, then six reads of
    ``T[j | 2^b]``, ``b = 5 .. 0``, one cycle each: registered address, asynchronous LUT-RAM read,
    compare), then ``-lo * R[j]`` as registered DSP partial products, sum with ``2^(SE-1)``,
    shift, saturate.  The output beat is valid :data:`RANGE_LATENCY` = 14 cycles after the cycle
    that accepted the row's last element; the sequencer is busy :data:`RANGE_BUSY_CYCLES` = 12
    cycles per row, and the input stalls only when another row ends while it is busy (or while the
    output register is full), so rows of ``K >= 13`` elements flow at one element per cycle.
    """

    def __init__(self, max_k: int = 1024, chunk: int = 17):
        self.max_k = _check_max_k(max_k)
        self.chunk = chunk
        super().__init__({
            "i": In(stream.Signature(ROW_IN)),
            "o": Out(stream.Signature(ROW_PARAMS)),
            "alpha": In(32),
            "outliers_en": In(1),
            "bits": In(4),
            "se": In(6),
            "ladder_len": In(7),
            "ladder_we": In(1),
            "ladder_addr": In(6),
            "ladder_r": In(24),
            "ladder_t": In(34),
            "row_overflow": Out(1),
            "clear": In(1),
        })

    def elaborate(self, platform):
        m = Module()
        p = self.i.payload

        # ---------------------------------------------------------------- S1: input register
        cnt = Signal(16)                 # elements of the current row accepted so far
        force = cnt == self.max_k - 1
        last_eff = p.last | force
        v1, inl1, last1 = Signal(), Signal(), Signal()
        x1 = Signal(signed(32))
        row1, len1 = Signal(16), Signal(16)
        busy = Signal()
        stall = Signal()
        m.d.comb += [stall.eq(v1 & last1 & busy), self.i.ready.eq(~stall)]
        fire = self.i.valid & ~stall
        absx = Mux(p.x < 0, -p.x, p.x)
        with m.If(~stall):
            m.d.sync += [v1.eq(self.i.valid), x1.eq(p.x), inl1.eq(~self.outliers_en | (absx <= self.alpha)),
                         last1.eq(last_eff), row1.eq(p.row), len1.eq(cnt + 1)]
        with m.If(fire):
            m.d.sync += cnt.eq(Mux(last_eff, 0, cnt + 1))
        with m.If(self.clear):
            m.d.sync += self.row_overflow.eq(0)
        with m.Elif(fire & force & ~p.last):
            m.d.sync += self.row_overflow.eq(1)

        # ---------------------------------------------------------------- row_range accumulate
        lo, hi = Signal(signed(32)), Signal(signed(32))          # 0 at the start of every row
        lo_n = Mux(inl1 & (x1 < lo), x1, lo)
        hi_n = Mux(inl1 & (x1 > hi), x1, hi)
        lo_w, hi_w = Signal(signed(32)), Signal(signed(32))      # the finished row (sequencer)
        row_w, len_w = Signal(16), Signal(16)
        capture = v1 & last1 & ~busy
        with m.If(v1 & ~stall):
            with m.If(last1):
                m.d.sync += [lo.eq(0), hi.eq(0), lo_w.eq(lo_n), hi_w.eq(hi_n), row_w.eq(row1), len_w.eq(len1)]
            with m.Else():
                m.d.sync += [lo.eq(lo_n), hi.eq(hi_n)]

        # ---------------------------------------------------------------- ladder memory
        # 64 x 58 bits with an asynchronous read port: LUT RAM, read and compared in the same cycle
        lad = m.submodules.ladder = Memory(shape=LADDER_ENTRY, depth=LADDER_MAX, init=[])
        wp = lad.write_port()
        rp = lad.read_port(domain="comb")
        m.d.comb += [wp.addr.eq(self.ladder_addr), wp.data.r.eq(self.ladder_r), wp.data.t.eq(self.ladder_t),
                     wp.en.eq(self.ladder_we)]
        rd_addr = Signal(6)
        m.d.comb += rp.addr.eq(rd_addr)

        # ---------------------------------------------------------------- per-row sequencer
        span = Signal(32)                # hi - lo in 0 .. 2^32 - 1
        neg_lo = Signal(32)              # -lo in 0 .. 2^31
        step_bit = Signal(7)             # 64: the R[0] read; 32 .. 1: the binary search bit
        j, r = Signal(6), Signal(24)
        pp = partial_products(neg_lo, r, self.chunk)
        pp_regs = [Signal.like(prod, name=f"zpp{n}") for n, (prod, _) in enumerate(pp)]
        zsum = Signal(57)
        zsh = Signal(57)
        zmax = bits_select(m, self.bits, {k: (1 << k) - 1 for k in BITS}, 8)
        with m.If(self.o.ready):
            m.d.sync += self.o.valid.eq(0)
        with m.FSM(name="row_seq"):
            with m.State("IDLE"):
                m.d.comb += busy.eq(0)
                with m.If(capture):
                    m.next = "SPAN"
            with m.State("SPAN"):
                m.d.comb += busy.eq(1)
                m.d.sync += [span.eq(hi_w - lo_w), neg_lo.eq(-lo_w), rd_addr.eq(0), step_bit.eq(64)]
                m.next = "CHECK"
            with m.State("CHECK"):       # rp.data = ladder[rd_addr]; one step per cycle
                m.d.comb += busy.eq(1)
                first = step_bit[6]
                hit = (rd_addr < self.ladder_len) & (rp.data.t >= span)
                j_new = Mux(first, 0, Mux(hit, rd_addr, j))
                m.d.sync += j.eq(j_new)
                with m.If(first | hit):
                    m.d.sync += r.eq(rp.data.r)
                nxt = step_bit >> 1
                m.d.sync += [step_bit.eq(nxt), rd_addr.eq(j_new | nxt[:6])]
                with m.If(step_bit[0]):
                    m.next = "MUL"
            with m.State("MUL"):         # partial products of -lo * R[j]
                m.d.comb += busy.eq(1)
                m.d.sync += [reg.eq(prod) for reg, (prod, _) in zip(pp_regs, pp)]
                m.next = "SUM"
            with m.State("SUM"):
                m.d.comb += busy.eq(1)
                m.d.sync += zsum.eq(sum_products(pp_regs, [sh for _, sh in pp], round_half(self.se, 56)))
                m.next = "SHIFT"
            with m.State("SHIFT"):
                m.d.comb += busy.eq(1)
                m.d.sync += zsh.eq(zsum >> self.se)
                m.next = "OUT"
            with m.State("OUT"):         # saturate(., 0, 2^k - 1) into the output register
                m.d.comb += busy.eq(1)
                with m.If(~self.o.valid | self.o.ready):
                    m.d.sync += [
                        self.o.valid.eq(1),
                        self.o.payload.row.eq(row_w),
                        self.o.payload.len.eq(len_w),
                        self.o.payload.j.eq(j),
                        self.o.payload.r.eq(r),
                        self.o.payload.z.eq(Mux(zsh > zmax, zmax, zsh)),
                    ]
                    m.next = "IDLE"
        return m


class DynamicPerPatchEncoder(wiring.Component):
    """``encode_per_patch_dynamic``: row buffer + :class:`RowRangeUnit` + :class:`~hw.encoders.PerPatchEncoder`.

    Parameters
    ----------
    max_k : int
        Longest row (1..65535).  The row buffer holds ``2 * 2^ceil(log2(max_k))`` elements (32 bits
        each), so one row is encoded while the next is written.
    chunk : int
        Multiplier split width (17 -> 18x18 DSP partial products).

    Attributes
    ----------
    i : In(stream.Signature(ROW_IN))
        ``x`` (signed 32, ``F`` fraction bits), ``row`` (16), ``last`` (ends the row; rows of 1 ..
        ``max_k`` elements, columns in order).
    o : Out(stream.Signature(StructLayout))
        Dense code per element, the layout of :attr:`hw.encoders.PerPatchEncoder.o` (``code``,
        ``sat``, ``outlier``), in input order.
    outl : Out(stream.Signature(StructLayout))
        One entry per outlier, the layout of :attr:`hw.encoders.PerPatchEncoder.outl` (``row``,
        ``col``, ``val`` in units of ``s_j * 2^-2``, ``overflow``), sorted by row then column.
    rowp : Out(stream.Signature(ROW_OUT))
        One beat per row: ``row``, ladder index ``j`` (the GEMM's ``Mr = MrL[j]``), ``z`` (its
        ``za``).  Offered when the row's first element enters the encoder pipeline, i.e. before its
        first code.
    se, bits, alpha, outliers_en : In(6), In(4), In(32), In(1)
        As :class:`~hw.encoders.PerPatchEncoder` (``SE >= 2`` with outliers).
    ladder_len, ladder_we, ladder_addr, ladder_r, ladder_t : In(7), In(1), In(6), In(24), In(34)
        ``J`` and the ladder write port (see :class:`RowRangeUnit`).
    sat_count, outlier_count, overflow_count : Out(32)
        The encoder's counters.
    row_overflow : Out(1)
        Sticky: a row longer than ``max_k`` was cut.
    clear : In(1)
        Clears the counters and :attr:`row_overflow`.

    Notes
    -----
    Elements are written into the circular row buffer as they arrive and into the range unit in
    the same cycle.  When the range unit's beat for the oldest unread row appears, the reader emits
    ``rowp`` and streams the row out of the buffer (one synchronous read per cycle and a fabric
    register, both stalled with the encoder) into :class:`~hw.encoders.PerPatchEncoder` with
    ``r = R[j]``, ``z``.  The first code of a row is valid :data:`DYNAMIC_LATENCY` = 22 cycles after
    the cycle that accepted the row's last element (one row plus 22 cycles after its first
    element).  Consecutive rows are read without a gap and the writer runs up to a whole buffer
    (``>= 2 * max_k`` elements) ahead, so in steady state a row of ``K`` elements costs ``K``
    cycles when ``K >= 13`` (:data:`RANGE_BUSY_CYCLES` + 1) and 13 cycles when it is shorter;
    ``M`` rows of ``K >= 13`` take ``M * K + K - 1 + 22`` cycles from the first element in to the
    last code out.
    """

    def __init__(self, max_k: int = 1024, chunk: int = 17):
        self.max_k = _check_max_k(max_k)
        self.chunk = chunk
        #: log2 of the row buffer depth.
        self.buf_bits = (self.max_k - 1).bit_length() + 1
        super().__init__({
            "i": In(stream.Signature(ROW_IN)),
            "o": Out(stream.Signature(PER_PATCH_OUT)),
            "outl": Out(stream.Signature(PER_PATCH_OUTL)),
            "rowp": Out(stream.Signature(ROW_OUT)),
            "se": In(6),
            "bits": In(4),
            "alpha": In(32),
            "outliers_en": In(1),
            "ladder_len": In(7),
            "ladder_we": In(1),
            "ladder_addr": In(6),
            "ladder_r": In(24),
            "ladder_t": In(34),
            "sat_count": Out(32),
            "outlier_count": Out(32),
            "overflow_count": Out(32),
            "row_overflow": Out(1),
            "clear": In(1),
        })

    @property
    def buffer_depth(self) -> int:
        """Elements the row buffer holds (``2 * 2^ceil(log2(max_k))``)."""
        return 1 << self.buf_bits

    def elaborate(self, platform):
        m = Module()
        rng = m.submodules.row_range = RowRangeUnit(self.max_k, self.chunk)
        enc = m.submodules.encoder = PerPatchEncoder(self.chunk)
        depth = self.buffer_depth
        buf = m.submodules.row_buffer = Memory(shape=signed(32), depth=depth, init=[])
        wp = buf.write_port()
        rp = buf.read_port(domain="sync")

        # ---------------------------------------------------------------- config fan-out, status
        m.d.comb += [
            rng.alpha.eq(self.alpha), rng.outliers_en.eq(self.outliers_en), rng.bits.eq(self.bits),
            rng.se.eq(self.se), rng.ladder_len.eq(self.ladder_len), rng.ladder_we.eq(self.ladder_we),
            rng.ladder_addr.eq(self.ladder_addr), rng.ladder_r.eq(self.ladder_r),
            rng.ladder_t.eq(self.ladder_t), rng.clear.eq(self.clear),
            enc.se.eq(self.se), enc.bits.eq(self.bits), enc.alpha.eq(self.alpha),
            enc.outliers_en.eq(self.outliers_en), enc.clear.eq(self.clear),
            self.sat_count.eq(enc.sat_count), self.outlier_count.eq(enc.outlier_count),
            self.overflow_count.eq(enc.overflow_count), self.row_overflow.eq(rng.row_overflow),
        ]
        # encoder outputs are the unit's outputs
        for port in ("o", "outl"):
            src, dst = getattr(enc, port), getattr(self, port)
            m.d.comb += [dst.valid.eq(src.valid), dst.payload.eq(src.payload), src.ready.eq(dst.ready)]

        # ---------------------------------------------------------------- writer: buffer + range unit
        used = Signal(range(depth + 1))
        wptr, rptr = Signal(self.buf_bits), Signal(self.buf_bits)
        space = used != depth
        m.d.comb += [rng.i.valid.eq(self.i.valid & space), rng.i.payload.eq(self.i.payload),
                     self.i.ready.eq(rng.i.ready & space)]
        wfire = self.i.valid & self.i.ready
        m.d.comb += [wp.addr.eq(wptr), wp.data.eq(self.i.payload.x), wp.en.eq(wfire)]
        with m.If(wfire):
            m.d.sync += wptr.eq(wptr + 1)

        # ---------------------------------------------------------------- reader: buffer -> encoder
        rd_active = Signal()                       # a row is being read
        rd_col, rd_len, rd_row = Signal(16), Signal(16), Signal(16)
        rd_r, rd_z = Signal(24), Signal(8)
        # two stages advance together: the read port's output (dv1) and a fabric register (dv2, feeds
        # enc.i) that keeps the memory's clock-to-out off the encoder's first stage
        dv1, dv2 = Signal(), Signal()
        d1 = {n: Signal(w, name=f"{n}1") for n, w in (("col", 16), ("row", 16), ("r", 24), ("z", 8))}
        d2 = {n: Signal(w, name=f"{n}2") for n, w in (("col", 16), ("row", 16), ("r", 24), ("z", 8))}
        x2 = Signal(signed(32))
        adv = ~dv2 | enc.i.ready
        issue = adv & rd_active
        last_issue = issue & (rd_col == rd_len - 1)
        m.d.comb += rng.o.ready.eq((~rd_active | last_issue) & (~self.rowp.valid | self.rowp.ready))
        load = rng.o.valid & rng.o.ready
        m.d.comb += [rp.addr.eq(rptr), rp.en.eq(adv)]
        with m.If(adv):
            m.d.sync += [dv1.eq(rd_active), d1["col"].eq(rd_col), d1["row"].eq(rd_row), d1["r"].eq(rd_r),
                         d1["z"].eq(rd_z), dv2.eq(dv1), x2.eq(rp.data)]
            m.d.sync += [d2[n].eq(d1[n]) for n in d2]
        with m.If(issue):
            m.d.sync += [rptr.eq(rptr + 1), rd_col.eq(rd_col + 1)]
            with m.If(last_issue):
                m.d.sync += rd_active.eq(0)
        with m.If(self.rowp.ready):
            m.d.sync += self.rowp.valid.eq(0)
        with m.If(load):
            q = rng.o.payload
            m.d.sync += [rd_active.eq(1), rd_col.eq(0), rd_len.eq(q.len), rd_row.eq(q.row), rd_r.eq(q.r),
                         rd_z.eq(q.z), self.rowp.valid.eq(1), self.rowp.payload.row.eq(q.row),
                         self.rowp.payload.j.eq(q.j), self.rowp.payload.z.eq(q.z)]
        m.d.sync += used.eq(used + wfire - issue)
        m.d.comb += [enc.i.valid.eq(dv2), enc.i.payload.x.eq(x2), enc.i.payload.r.eq(d2["r"]),
                     enc.i.payload.z.eq(d2["z"]), enc.i.payload.row.eq(d2["row"]), enc.i.payload.col.eq(d2["col"])]
        return m
