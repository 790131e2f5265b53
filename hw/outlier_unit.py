"""Sparse outlier unit (docs/datapath.md sections 5 and 6: the per-patch outlier path).

For each outlier ``(row, col, val)`` of a row tile the unit adds ``val * b[col, :]`` into a per-tile
*correction* row ``corr[row - row0, :]`` (held in small memories, one word per tile row); the engine's drain adds ``corr[r, :]`` to
``acc_d[r, :] << FO`` before requantisation::

    acc[r, c] = (acc_d[r, c] << FO) + sum_{(r, j, val)} val * b[j, c]

Throughput: ``lanes`` entries per cycle (one stream beat holds ``lanes`` entries, each with its own
``valid`` bit); several lanes of one beat may hit the same row.  Capacity: the unit is sized for
``capacity`` entries per row tile (a correction word holds ``min(CAP, K) * (2^15-1) * Bmax``);
a tile that announces more raises the sticky :attr:`OutlierUnit.overflow` flag -- the entries are
still consumed and added, never dropped.  An entry whose row is outside the tile or whose column is
``>= K`` raises :attr:`OutlierUnit.range_error` and is not added.

Pipeline (registers advance only when ``en`` is high; ``latency`` =
:func:`sim.engine_config.outlier_latency` = 3 for B codes up to 4 bits)::

    cycle t   : beat issued: entries registered, B buffer read addresses = col (sync read ports)
    cycle t+1 : two partial products of val_l * b[col_l, c]          -> partial product registers
    cycle t+2 : p[l, c] = sum of the two partial products             -> product registers
                and corr_l[row_l - row0, c] read (or forwarded from stage 3) -> word registers
    cycle t+3 : corr_l[row_l - row0, c] = word + p[l, c]              -> lane l's correction memories

The product is split in two stages so that each holds one carry chain (issue #15: the single-stage
shift-and-add was the 8 x 8 engine's critical path, 12.6 ns).  Wider B codes (``latency`` 4) take
the product from a DSP block with its input and output registers (cycles t+1, t+2) and register it
once more in the fabric (t+3: the route out of the DSP row alone is about 4.7 ns); the read of the
correction word moves to cycle t+3 and the write to t+4 (issue #15, session 43: the combinational
``MULT18X18D`` was the 8 x 8 W8A8 engine's worst path).

The B rows come from read ports of the engine's B buffer: :attr:`rd_addr` is driven in cycle ``t``,
:attr:`rd_data` must hold the row in cycle ``t+1``.
"""
from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from vitaccel.sim.engine_config import DIM_BITS, OUTLIER_LUT_PRODUCT_BITS, outlier_latency
from .dsp import dsp_products
from .mac_array import adder_tree

__all__ = ["OutlierUnit", "OutlierEntryLayout", "outlier_beat_layout", "val_times_b_halves"]

#: One sparse outlier entry (section 5): row and column (uint16), value (int16, units of
#: ``s[r] * 2^-FO``), and a lane-valid bit.
OutlierEntryLayout = data.StructLayout({
    "row": unsigned(DIM_BITS), "col": unsigned(DIM_BITS), "val": signed(16), "valid": unsigned(1),
})


def outlier_beat_layout(lanes: int) -> data.ArrayLayout:
    """Payload of one outlier stream beat: ``lanes`` entries."""
    return data.ArrayLayout(OutlierEntryLayout, lanes)


def val_times_b_halves(m: Module, val, b, b_bits: int, name: str = "outl_p"):
    """``val * b`` (``b`` signed ``b_bits``) as two partial products ``(lo, hi)`` with
    ``lo + hi == val * b``, to be registered before their sum.

    For ``b_bits <= 4`` a shift-and-add in LUTs (faster than the ECP5 DSP block's combinational
    multiplier), split so that each half is one carry chain: ``lo`` sums the terms of the low half of
    ``b``'s magnitude bits, ``hi`` the remaining terms minus the sign term (weight ``-2^(k-1)``).
    Wider ``b``: ``lo = val * b`` and ``hi = 0`` (the outlier unit itself takes wider codes' products
    from a registered DSP block instead, :meth:`OutlierUnit._product`).
    """
    if b_bits > 4:
        return val * b, Const(0, 1)
    terms = [Mux(b[i], val << i, 0) for i in range(b_bits - 1)]
    neg = Mux(b[b_bits - 1], val << (b_bits - 1), 0)          # sign bit has weight -2^(k-1)
    half = (len(terms) + 1) // 2
    lo = adder_tree(m, terms[:half], f"{name}_lo") if half else Const(0, 1)
    rest = terms[half:]
    hi = (adder_tree(m, rest, f"{name}_hi") - neg) if rest else -neg
    return lo, hi


class OutlierUnit(wiring.Component):
    """Sparse outlier accumulation into per-row corrections (one memory per lane and column).

    Parameters
    ----------
    rows, cols : int
        MAC array size (a tile has at most ``rows`` rows, ``cols`` columns).
    b_bits : int
        B code width.
    capacity : int
        Outliers per row tile the correction width is sized for (``CAP``).
    lanes : int
        Entries per beat.
    corr_bits : int
        Signed width of a correction word.
    addr_bits : int
        Width of a B buffer read address (``col`` is truncated to it after the range check).
    en_copies : int
        Identical copies of the enable (default 1): copy 0 drives the entry / product stages, the
        valid bits and the flags; column ``c``'s memory writes use copy ``c * en_copies // cols``
        (fanout of the enable).
    drain_copies : int
        Identical copies of :attr:`drain_row` (default 1).
    addr_reg : bool
        Drive each memory's read address from a register (default ``False``: a multiplexer of the
        stage-2 row and :attr:`drain_row`); the register loads the value that multiplexer has in the
        next cycle, computed from :attr:`drain_row_nx`.  The engine sets it with the drain's gather
        stage (:attr:`sim.engine_config.EngineConfig.gather_stage`).

    Attributes
    ----------
    en : In(en_copies)
        Global enable (every bit the same value).
    issue : In(1)
        :attr:`entries` hold a beat to process this cycle.
    entries : In(outlier_beat_layout(lanes))
    row0 : In(16)
        First row of the current tile (entries carry absolute rows).
    m : In(16), k : In(16)
        Rows of the current tile and the layer's ``K`` (range check).  ``row0`` and ``m`` must be
        stable from the cycle before the tile's first issue (the unit registers ``row0 + m``; the
        engine sets them at the window's start, its announce cycle, at least ``DRAIN_OFFSET`` cycles
        before).
    tile_start : In(1), tile_count : In(16)
        A new tile announces its outlier count (checked against ``capacity``).
    rd_addr : Out(ArrayLayout(addr_bits, lanes)), rd_data : In(ArrayLayout(ArrayLayout(signed(b_bits), cols), lanes))
        B buffer read ports (one per lane).
    drain : In(1), drain_row : In(ArrayLayout(range(rows), drain_copies))
        :attr:`corr_row` shows correction row ``drain_row`` (combinationally) whenever stage 3 does
        not accumulate (they share each memory's read port; the engine's schedule never drains and
        accumulates in the same cycle); ``drain`` clears that row (when ``en``; the engine raises it
        with the row's last column group).  ``drain_copies`` identical copies of the row number
        (column ``c`` uses copy ``c * drain_copies // cols``; one copy is a plain ``range(rows)`` port).
    drain_row_nx : In(ArrayLayout(range(rows), drain_copies))
        Only with ``addr_reg``: the value :attr:`drain_row` takes in the next cycle.
    corr_row : Out(ArrayLayout(signed(corr_bits), cols))
    overflow, range_error : Out(1)
        Sticky error flags, cleared by :attr:`clear`; ``range_error`` rises one enabled cycle after
        the issue of the entry out of range.
    clear : In(1)
    """

    def __init__(self, rows: int, cols: int, b_bits: int, capacity: int, lanes: int, corr_bits: int,
                 addr_bits: int, en_copies: int = 1, drain_copies: int = 1, addr_reg: bool = False):
        if not 1 <= en_copies <= rows:
            raise ValueError(f"OutlierUnit: en_copies must be in 1..{rows}, got {en_copies}")
        if not 1 <= drain_copies <= cols:
            raise ValueError(f"OutlierUnit: drain_copies must be in 1..{cols}, got {drain_copies}")
        self.en_copies, self.drain_copies, self.addr_reg = en_copies, drain_copies, addr_reg
        self.rows, self.cols, self.b_bits = rows, cols, b_bits
        self.capacity, self.lanes, self.corr_bits, self.addr_bits = capacity, lanes, corr_bits, addr_bits
        #: Register stages after a beat is issued, minus one (:func:`sim.engine_config.outlier_latency`).
        self.latency = outlier_latency(b_bits)
        super().__init__({
            "en": In(en_copies),
            "issue": In(1),
            "entries": In(outlier_beat_layout(lanes)),
            "row0": In(DIM_BITS),
            "m": In(DIM_BITS),
            "k": In(DIM_BITS),
            "tile_start": In(1),
            "tile_count": In(DIM_BITS),
            "rd_addr": Out(data.ArrayLayout(unsigned(addr_bits), lanes)),
            "rd_data": In(data.ArrayLayout(data.ArrayLayout(signed(b_bits), cols), lanes)),
            "drain": In(1),
            "drain_row": In(data.ArrayLayout(range(max(2, rows)), drain_copies)),
            **({"drain_row_nx": In(data.ArrayLayout(range(max(2, rows)), drain_copies))} if addr_reg else {}),
            "corr_row": Out(data.ArrayLayout(signed(corr_bits), cols)),
            "overflow": Out(1),
            "range_error": Out(1),
            "clear": In(1),
        })

    def elaborate(self, platform):
        m = Module()
        R, L = self.rows, self.lanes
        en0 = self.en[0]

        rbits = max(1, (R - 1).bit_length())

        # ---- stage 0: range check, register entries, address the B rows
        rel = [Signal(DIM_BITS + 1, name=f"rel{l}") for l in range(L)]
        ok = [Signal(name=f"ok{l}") for l in range(L)]
        bad = []
        # the tile's end row, registered: row0 and m are stable from the tile's announce cycle on, so
        # the range check is comparisons side by side (row - row0 < m in this cycle was the worst path
        # of the 8 x 8 W4A4 engine in session 45, through a carry-save level and a carry chain)
        row_end = Signal(DIM_BITS + 1, name="row_end")
        m.d.sync += row_end.eq(self.row0 + self.m)
        for l in range(L):
            e = self.entries[l]
            m.d.comb += [
                rel[l].eq(e.row - self.row0),
                ok[l].eq(e.valid & (e.row >= self.row0) & (e.row < row_end) & (e.col < self.k)),
                self.rd_addr[l].eq(e.col[:self.addr_bits]),
            ]
            bad.append(e.valid & ~ok[l])
        s1_ok = [Signal(name=f"s1_ok{l}") for l in range(L)]
        s1_row = [Signal(rbits, name=f"s1_row{l}") for l in range(L)]
        s1_val = [Signal(signed(16), name=f"s1_val{l}") for l in range(L)]
        with m.If(en0):
            for l in range(L):
                m.d.sync += [s1_ok[l].eq(self.issue & ok[l]), s1_row[l].eq(rel[l][:rbits]),
                             s1_val[l].eq(self.entries[l].val)]

        # ---- the product val * b[col, c] (registered in stage N = latency), the entries' row and
        # valid bit beside it (stages 1 .. N); the correction memories read in stage N - 1, write in N
        N = self.latency
        ok_s = [s1_ok] + [[Signal(name=f"s{i}_ok{l}") for l in range(L)] for i in range(2, N + 1)]
        row_s = [s1_row] + [[Signal(rbits, name=f"s{i}_row{l}") for l in range(L)] for i in range(2, N + 1)]
        with m.If(en0):
            for i in range(1, N):
                for l in range(L):
                    m.d.sync += [ok_s[i][l].eq(ok_s[i - 1][l]), row_s[i][l].eq(row_s[i - 1][l])]
        p_last = [self._product(m, platform, l, s1_val[l], en0) for l in range(L)]
        self._corrections(m, ok_s[N - 3], row_s[N - 3], ok_s[N - 2], row_s[N - 2], ok_s[N - 1], row_s[N - 1], p_last)
        # ---- error flags (an entry out of range is registered first, then sets the flag on the next
        # enabled cycle: the range check's two carry chains and the flag's clock enable were one path)
        bad_issue = Signal()
        with m.If(self.clear):
            m.d.sync += [self.overflow.eq(0), self.range_error.eq(0), bad_issue.eq(0)]
        with m.Elif(en0):
            with m.If(self.tile_start & (self.tile_count > self.capacity)):
                m.d.sync += self.overflow.eq(1)
            m.d.sync += bad_issue.eq(self.issue & Cat(*bad).any())
            with m.If(bad_issue):
                m.d.sync += self.range_error.eq(1)
        return m

    def _product(self, m: Module, platform, l: int, val, en) -> list[Signal]:
        """Lane ``l``'s products ``val * b[col, c]`` for every column ``c``, registered in stage
        :attr:`latency` (``val`` is the stage-1 entry value, :attr:`rd_data` holds the B row then).

        B codes up to :data:`~sim.engine_config.OUTLIER_LUT_PRODUCT_BITS` bits: shift-and-add in LUTs,
        two partial products (stage 2, :func:`val_times_b_halves`) and their sum (stage 3).  Wider
        codes: a DSP block with its input and output registers (stages 2 and 3, :func:`hw.dsp.dsp_products`;
        the ``generic`` form is plain registers around ``*``) and a fabric register of the product
        (stage 4), so that neither the multiplier nor the route out of the DSP row meets the
        correction memories' read-modify-write in one cycle.
        """
        pbits = 16 + self.b_bits
        out = []
        for c in range(self.cols):
            b = self.rd_data[l][c]
            p = Signal(signed(pbits), name=f"s{self.latency}_p{l}_{c}")
            if self.b_bits <= OUTLIER_LUT_PRODUCT_BITS:
                lo, hi = val_times_b_halves(m, val, b, self.b_bits, f"outl_p{l}_{c}")
                s2_lo = Signal(signed(pbits), name=f"s2_lo{l}_{c}")
                s2_hi = Signal(signed(pbits), name=f"s2_hi{l}_{c}")
                with m.If(en):
                    m.d.sync += [s2_lo.eq(lo), s2_hi.eq(hi), p.eq(s2_lo + s2_hi)]
            else:
                prod, = dsp_products(m, platform, [(val, b)], en, f"outl_p{l}_{c}_")
                with m.If(en):
                    m.d.sync += p.eq(prod)
            out.append(p)
        return out

    def _corrections(self, m: Module, pre_ok, pre_row, rd_ok, rd_row, wr_ok, wr_row, p) -> None:
        """Correction storage: one memory of ``rows`` words per lane and column (section 5).

        Lane ``l``'s products go only to its own memories, so the entries of one beat never compete
        for a write port, whatever their rows; the correction of row ``r`` is the sum over the lanes.
        Each memory has one write port and one asynchronous read port.  The read-modify-write is
        split over two cycles: the stage before the product's (``N - 1``, ``N`` = :attr:`latency`;
        ``rd_ok`` / ``rd_row``) reads the word of its entry's row into a register (the word being
        written by stage ``N`` in the same cycle is forwarded instead when the rows are equal; the
        comparison is registered a cycle ahead from ``pre_ok`` / ``pre_row``, stage ``N - 2``), stage
        ``N`` (``wr_ok`` / ``wr_row``) writes ``word + p``.  The read port serves the drain when stage
        ``N - 1`` holds no entry: the engine's schedule never drains while an entry is in stages
        1 - ``N`` (``latency <= DRAIN_OFFSET``).  A valid bit per lane and row replaces clearing the
        words: the drain clears the row's bits, and a word whose bit is clear reads as 0.  On ECP5 the
        memories map to distributed RAM (``TRELLIS_DPR16X4``) instead of ``rows x cols`` registers
        and adders.
        """
        R, C, L = self.rows, self.cols, self.lanes
        depth, rbits = max(2, R), max(1, (R - 1).bit_length())
        drain_row = [self.drain_row[c * self.drain_copies // C] for c in range(C)]
        vld = [Signal(depth, name=f"corr_vld{l}") for l in range(L)]
        lane_rows = []
        for l in range(L):
            # stage N writes the row that stage N - 1 reads in the same cycle (registered a cycle ahead)
            fwd = Signal(name=f"corr_fwd{l}")
            with m.If(self.en[0]):
                m.d.sync += fwd.eq(rd_ok[l] & (rd_row[l] == pre_row[l]))
            row = []
            for c in range(C):
                mem = m.submodules[f"corr{l}_{c}"] = Memory(shape=signed(self.corr_bits), depth=depth, init=[])
                wp, rp = mem.write_port(), mem.read_port(domain="comb")
                if self.addr_reg:   # the same address from a register loaded with its next value
                    addr = self._next_address(m, l, c, (pre_ok[l], pre_row[l]), (rd_ok[l], rd_row[l]), rbits)
                else:
                    addr = Mux(rd_ok[l], rd_row[l], drain_row[c][:rbits])
                word = Mux(vld[l].bit_select(addr, 1), rp.data, 0)
                s3_word = Signal(signed(self.corr_bits), name=f"s{self.latency}_word{l}_{c}")
                new = Signal(signed(self.corr_bits), name=f"corr_new{l}_{c}")
                en = self.en[c * self.en_copies // C]
                m.d.comb += [rp.addr.eq(addr), new.eq(s3_word + p[l][c]),
                             wp.addr.eq(wr_row[l]), wp.data.eq(new), wp.en.eq(en & wr_ok[l])]
                with m.If(en):
                    m.d.sync += s3_word.eq(Mux(fwd, new, word))
                row.append(word)
            lane_rows.append(row)
            with m.If(self.en[0]):
                for r in range(R):
                    with m.If(self.drain & (drain_row[0] == r)):
                        m.d.sync += vld[l][r].eq(0)
                    with m.Elif(wr_ok[l] & (wr_row[l] == r)):
                        m.d.sync += vld[l][r].eq(1)
        for c in range(C):
            total = lane_rows[0][c]
            for l in range(1, L):
                total = total + lane_rows[l][c]
            m.d.comb += self.corr_row[c].eq(total)

    def _next_address(self, m: Module, l: int, c: int, s1, s2, rbits: int) -> Signal:
        """Read address of lane ``l``'s column-``c`` memory as a register (``addr_reg``): loaded every
        cycle with the value ``Mux(rd_ok, rd_row, drain_row)`` (``s2`` = the reading stage ``N - 1``,
        ``s1`` the stage before it) takes in the next cycle, so it equals
        that multiplexer in every cycle and the memory's read address comes from a flip-flop beside
        it, not from the drain position across the array (issue #15, session 37)."""
        en0 = self.en[0]                                 # stage N - 1 loads stage N - 2 when en0 is high
        nx = Mux(Mux(en0, s1[0], s2[0]), Mux(en0, s1[1], s2[1]),
                 self.drain_row_nx[c * self.drain_copies // self.cols][:rbits])
        addr = Signal(rbits, name=f"corr_ra{l}_{c}")
        m.d.sync += addr.eq(nx)
        return addr
