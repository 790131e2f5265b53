"""On-chip buffers of the layer engine: B buffer with its loader, column parameters, tile descriptors.

* :class:`BBuffer` -- the B loader (load counter) and the two-bank B memory (``2 x max_k`` rows of
  ``C`` ``sym`` codes, docs/datapath.md section 3), read by the MAC array (section 6, ``acc_raw``)
  and by the outlier unit (section 5, ``val * b[col, :]``).  Column block ``nb + 1`` is loaded into
  one bank while block ``nb`` computes from the other.
* :class:`ColumnParams` -- per column block: the column sums ``colsum[c] = sum_k b[k, c]`` of the
  zero-point correction (section 6) and the requantiser's ``Mc, Sc, Bq`` (section 7), two banks.
* :class:`TileDescriptors` -- per tile: ``Mr[r]`` (section 7), ``za[r]`` (section 6) and the row
  tile's outlier count (section 5), for the next, current and previous tile.

All registers advance only with the engine's global enable (``en`` or strobes qualified with it).
"""
from __future__ import annotations

from amaranth.hdl import Cat, Module, Mux, Signal, Value, signed
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from vitaccel.sim.engine_config import DIM_BITS, EngineConfig
from .bram import RegisteredReadMemory
from .engine_layouts import (ZA_BITS, BReadSignature, ColumnControl, DescriptorControl, LoadSignature,
                             LoaderControl, StreamNeed, colp_layout, row_bits, rowp_layout)
from .kept import kept_copies
from .outlier_unit import outlier_beat_layout

__all__ = ["BBuffer", "ColumnParams", "TileDescriptors", "ROW_SELECT_COPIES", "COLP_EN_COPIES", "desc_strobe_copies"]

#: Enable copies per column of :class:`ColumnParams`, each the clock enable of a part of its bits (4 since
#: session 45: with 2, one copy's clock-enable net was among the 8 x 8 W4A4 engine's worst paths).
COLP_EN_COPIES = 4

#: Copies of the drained row in :class:`TileDescriptors`: one per 8 bits of ``za`` (24) and ``Mr`` (16).
ROW_SELECT_COPIES = -(-ZA_BITS // 8) + 2


class BBuffer(wiring.Component):
    """B loader and two-bank B buffer, with registered read-ahead rows for the MAC array and outliers.

    The loader writes one B row per enabled cycle while it is active: ``K`` rows of a column block
    into one bank, started by :attr:`ctl` (``start``: block 0 into bank 0; ``block``: the next
    block into ``bank``).  Its state is kept in advance form (``need.adv`` is the need after an
    enabled cycle, :mod:`hw.engine_control`).  Reads are one cycle ahead: the memory is addressed
    with the row of the next cycle and the row is registered when ``en`` is high (in the fabric, or in
    the block RAM's output register in the ECP5 form, :func:`hw.bram.registered_reads`).

    Parameters
    ----------
    cfg : EngineConfig

    Attributes
    ----------
    en : In(1)
        Global enable.
    ctl : In(LoaderControl)
        Loader start (with the layer's ``K``) / next block.
    need : Out(StreamNeed)
        The loader needs a ``b`` beat now / after an advance.
    b : In(ArrayLayout(signed(b_bits), cols))
        Head of the ``b`` stream (written when the loader is active).
    load : Out(LoadSignature(b_bits, cols))
        The row being loaded this cycle (for the column sums).
    read : In(BReadSignature(k_bits))
        Row and bank the MAC array reads in the next cycle.
    row : Out(ArrayLayout(signed(b_bits), cols))
        The MAC array's B row (registered).
    outl_next, outl_en : In(outlier_beat_layout(lanes)), In(1)
        Outlier beat of the next cycle (its columns address one read port per lane) and the
        enable of the outlier rows' registers.  Only with outliers.
    outl_rows : Out(ArrayLayout(ArrayLayout(signed(b_bits), cols), lanes))
        B rows of the outlier entries (registered).  Only with outliers.
    """

    def __init__(self, cfg: EngineConfig):
        self.cfg = cfg
        row = data.ArrayLayout(signed(cfg.b_bits), cfg.cols)
        ports = {
            "en": In(1), "ctl": In(LoaderControl), "need": Out(StreamNeed),
            "b": In(row), "load": Out(LoadSignature(cfg.b_bits, cfg.cols)),
            "read": In(BReadSignature(cfg.k_bits)), "row": Out(row),
        }
        if cfg.has_outliers:
            ports.update({"outl_next": In(outlier_beat_layout(cfg.outlier_lanes)), "outl_en": In(1),
                          "outl_rows": Out(data.ArrayLayout(row, cfg.outlier_lanes))})
        super().__init__(ports)

    def _loader(self, m):
        """Load counter in advance form; returns ``(active, count, bank)``.

        ``last`` (``cnt + 1 == K``) after a cycle is one equality compare of two registers per case
        of the count: ``K - 1`` and ``K - 2`` are registers loaded at the layer's start (issue #15:
        ``cnt + 2 == K`` put a carry chain before the compare, the worst path of a 16 x 16 run).
        """
        active, cnt, bank, last = Signal(name="ld_active"), Signal(DIM_BITS, name="ld_cnt"), \
            Signal(name="ld_bank"), Signal(name="e_ld_last")      # last: cnt + 1 == K
        km1, km2 = Signal(signed(DIM_BITS + 1), name="ld_km1"), Signal(signed(DIM_BITS + 1), name="ld_km2")
        k1 = Signal(name="ld_k1")                                 # K == 1
        regs = [active, cnt, bank, last]
        adv = {id(r): Signal.like(r, name=f"{r.name}_adv") for r in regs}
        A = lambda r: adv[id(r)]          # value after an enabled cycle
        m.d.comb += [A(r).eq(r) for r in regs]
        with m.If(active):
            m.d.comb += A(cnt).eq(cnt + 1)
            with m.If(last):
                m.d.comb += A(active).eq(0)
        with m.If(self.ctl.block):       # the next column block overrides the progress
            m.d.comb += [A(active).eq(1), A(cnt).eq(0), A(bank).eq(self.ctl.bank)]
        # last after the cycle, A(cnt) + 1 == K, written as one compare per case of A(cnt) (0, cnt + 1,
        # cnt) so the controller's block signal reaches only the final multiplexer
        m.d.comb += A(last).eq(Mux(self.ctl.block, k1, Mux(active, cnt == km2, cnt == km1)))
        with m.If(self.ctl.start):
            k = self.ctl.start_k
            m.d.sync += [active.eq(1), cnt.eq(0), bank.eq(0), last.eq(k == 1),
                         k1.eq(k == 1), km1.eq(k - 1), km2.eq(k - 2)]
        with m.Elif(self.en):
            m.d.sync += [r.eq(A(r)) for r in regs]
        m.d.comb += [self.need.now.eq(active), self.need.adv.eq(A(active))]
        return active, cnt, bank

    def elaborate(self, platform):
        m = Module()
        cfg, kb = self.cfg, self.cfg.k_bits
        active, cnt, bank = self._loader(m)
        m.d.comb += [self.load.active.eq(active), self.load.first.eq(cnt == 0), self.load.row.eq(self.b)]
        # no_rw_check: the schedule never uses a row read in the cycle it is written (the loader writes
        # the bank no tile reads; in the fill window the read address runs one row ahead of the
        # write), so yosys need not emulate read-first across the block RAM's ports (issue #15:
        # that logic put the enable-dependent read address on a comparator path).  The generic
        # (simulated) form checks the claim (hw/bram.py).  Each read port's row register is the block
        # RAM's own output register in the ECP5 form (session 40: the read without it was 5.83 ns).
        width = len(self.row.as_value())
        reads = [(Cat(self.read.k, self.read.bank), self.en)]
        if cfg.has_outliers:
            # read one cycle ahead from the outlier buffer's next head (the outlier unit sees the
            # same column one cycle later), registered with the outlier rows' enable
            reads += [(Cat(self.outl_next[l].col[:kb], self.read.bank), self.outl_en) for l in range(cfg.outlier_lanes)]
        mem = m.submodules.mem = RegisteredReadMemory(width, 2 * (1 << kb), len(reads))
        m.d.comb += [mem.w_addr.eq(Cat(cnt[:kb], bank)), mem.w_data.eq(self.b.as_value()), mem.w_en.eq(self.en & active),
                     *[x for j, (addr, oce) in enumerate(reads) for x in (mem.r_addr[j].eq(addr), mem.oce[j].eq(oce))],
                     self.row.as_value().eq(mem.r_data[0])]
        for l in range(len(reads) - 1):
            m.d.comb += self.outl_rows[l].as_value().eq(mem.r_data[1 + l])
        return m


class ColumnParams(wiring.Component):
    """Column sums and column requantiser parameters of the two B banks.

    While a block loads, ``colsum[c]`` accumulates the loaded B rows and the block's ``colp`` beat
    is captured with its first row; ``ctl.commit`` copies both into bank ``ctl.commit_bank`` (the
    first cycle of the block's first tile).  The drain reads bank ``ctl.read_bank`` (the previous
    tile's) combinationally.  The load and control inputs arrive a cycle ahead (``load_ahead``,
    ``ctl_ahead``) and are registered here, with the strobes the clock enables need already combined
    (``active & first``, ``commit & commit_bank == bk``), so each column's clock enable is one LUT
    after its enable copy (issue #15).  Every column has its own kept copy of these strobe registers
    (:func:`hw.kept.kept_copies`) and :data:`COLP_EN_COPIES` enable copies, each the clock enable of a
    part of the column's bits (session 39: one copy drove a column's 70 scratch bits and 140 bank bits).

    Parameters
    ----------
    cfg : EngineConfig

    Attributes
    ----------
    en : In(cols * COLP_EN_COPIES)
        Enable copies, :data:`COLP_EN_COPIES` per column (copies ``c * COLP_EN_COPIES ..`` drive only
        column ``c``'s registers: the clock enables of the 2 x 560 bank bits of an 8 x 8 engine were one
        net before, issue #15).
    load_ahead : In(LoadSignature(b_bits, cols))
        The B row loaded in the next cycle.
    colp : In(colp_layout(cols))
        Head of the ``colp`` stream (taken with the block's first row).
    ctl_ahead : In(ColumnControl)
        Commit / read bank of the next cycle.
    colsum : Out(ArrayLayout(signed(colsum_bits), cols))
        ``colsum[c]`` of the read bank.
    params : Out(colp_layout(cols))
        ``Mc, Sc, Bq`` of the read bank.
    """

    def __init__(self, cfg: EngineConfig):
        self.cfg = cfg
        super().__init__({
            "en": In(cfg.cols * COLP_EN_COPIES), "load_ahead": In(LoadSignature(cfg.b_bits, cfg.cols)),
            "colp": In(colp_layout(cfg.cols)), "ctl_ahead": In(ColumnControl),
            "colsum": Out(data.ArrayLayout(signed(cfg.colsum_bits), cfg.cols)),
            "params": Out(colp_layout(cfg.cols)),
        })

    def elaborate(self, platform):
        m = Module()
        C, cb, k = self.cfg.cols, self.cfg.colsum_bits, COLP_EN_COPIES
        acc = [Signal(signed(cb), name=f"colsum_acc{c}") for c in range(C)]
        scratch = Signal(colp_layout(C), name="colp_scratch")
        colsum_bank = [[Signal(signed(cb), name=f"colsum{bk}_{c}") for c in range(C)] for bk in range(2)]
        colp_bank = [Signal(colp_layout(C), name=f"colp{bk}") for bk in range(2)]
        la, ca = self.load_ahead, self.ctl_ahead
        row, sel = Signal.like(la.row, name="ld_row"), Signal(name="read_bank")
        m.d.sync += [row.eq(la.row), sel.eq(ca.read_bank)]
        # the strobes of the next cycle, one kept register copy per column (active, first, take,
        # commit to bank 0 / 1); the drain's bank select stays one register (a copy per column was
        # placed with the strobes, away from the column's multiplexer: session 39)
        nxt = Cat(la.active, la.first, la.active & la.first, *[ca.commit & (ca.commit_bank == bk) for bk in range(2)])
        strobes = [tuple(q) for q in kept_copies(m, platform, nxt, C, "col_strobe")]
        for c in range(C):       # column c: its own strobes and enable copies, each copy for a part of its bits
            active, first, take, *commit_to = strobes[c]
            en = self.en[c * k:(c + 1) * k]
            with m.If(en[0] & active):
                m.d.sync += acc[c].eq(Mux(first, 0, acc[c]) + row[c])
            w = len(scratch[c].as_value())
            for j in range(k):
                lo, hi = j * w // k, (j + 1) * w // k
                with m.If(en[j] & take):
                    m.d.sync += scratch[c].as_value()[lo:hi].eq(self.colp[c].as_value()[lo:hi])
                for bk in range(2):
                    with m.If(en[j] & commit_to[bk]):
                        m.d.sync += colp_bank[bk][c].as_value()[lo:hi].eq(scratch[c].as_value()[lo:hi])
                        if j == k - 1:
                            m.d.sync += colsum_bank[bk][c].eq(acc[c])
            m.d.comb += [self.colsum[c].eq(Mux(sel, colsum_bank[1][c], colsum_bank[0][c])),
                         self.params[c].eq(Mux(sel, colp_bank[1][c].as_value(), colp_bank[0][c].as_value()))]
        return m


#: Descriptor bits loaded by one kept copy of the tile descriptors' strobes (issue #15, session 44).
DESC_BITS_PER_STROBE = 96


def desc_strobe_copies(cfg: EngineConfig) -> int:
    """Strobe copies of the engine's :class:`TileDescriptors`: one per :data:`DESC_BITS_PER_STROBE` bits."""
    return -(-len(Signal(rowp_layout(cfg.rows)).as_value()) // DESC_BITS_PER_STROBE)


class TileDescriptors(wiring.Component):
    """Tile descriptors (``Mr[r]``, ``za[r]``, outlier count) of the next, current and previous tile.

    ``ctl.load`` takes the ``rowp`` head as the next tile's descriptor (and its outlier beat count
    ``ceil(n_out / lanes)``, returned on ``ctl.nb``); ``ctl.shift`` moves current -> previous and,
    with ``ctl.take``, next -> current.  The drain reads ``za`` and ``Mr`` of the previous tile's row
    ``drain_row`` from registers: they are selected a cycle ahead, with the next cycle's row and the
    previous tile as it will be after this cycle's shift, so no row multiplexer sits between the
    drain position and the drain's per-lane copies (issue #15).  The next cycle's row is held in
    :data:`ROW_SELECT_COPIES` kept copies (:func:`hw.kept.kept_copies`), each selecting 8 of the 40 bits.

    Parameters
    ----------
    cfg : EngineConfig
    strobe_copies : int
        0 (default): the strobes act in the cycle they arrive.  ``n >= 1``: they arrive a cycle
        ahead and are registered in ``n`` kept copies (:func:`hw.kept.kept_copies`), each loading
        ``1 / n`` of the descriptor registers (one strobe register drove the clock enables of all 336
        bits of the current descriptor in the 8 x 8 engine, issue #15 session 43); same behaviour.

    Attributes
    ----------
    rowp : In(rowp_layout(rows))
        Head of the ``rowp`` stream.
    ctl : In(DescriptorControl)
        Load / shift strobes (already qualified with the enable; a cycle ahead with
        ``strobe_copies``); ``nb`` out.
    cur_n_out : Out(16)
        Outlier count of the current tile (the outlier unit's capacity check).
    drain_row_ahead : In(range(rows))
        Row of the previous tile drained two cycles later.
    za, mr : Out(ZA_BITS), Out(16)
        ``za[drain_row]``, ``Mr[drain_row]`` of the previous tile (registers; ``drain_row`` is
        ``drain_row_ahead`` of two cycles before).
    """

    def __init__(self, cfg: EngineConfig, strobe_copies: int = 0):
        if strobe_copies < 0:
            raise ValueError(f"TileDescriptors: strobe_copies must be >= 0, got {strobe_copies}")
        self.cfg, self.strobe_copies = cfg, strobe_copies
        super().__init__({
            "rowp": In(rowp_layout(cfg.rows)), "ctl": In(DescriptorControl), "cur_n_out": Out(DIM_BITS),
            "drain_row_ahead": In(row_bits(cfg.rows)), "za": Out(ZA_BITS), "mr": Out(16),
        })

    def elaborate(self, platform):
        m = Module()
        cfg, L = self.cfg, self.cfg.outlier_lanes
        layout = rowp_layout(cfg.rows)
        nxt, cur, prev = Signal(layout, name="nxt_desc"), Signal(layout, name="cur_desc"), Signal(layout,
                name="prev_desc")
        nb = Signal(DIM_BITS, name="nxt_nb")            # outlier beats of the next tile
        if self.strobe_copies:
            strobes = [(q[0], q[1], q[2]) for q in kept_copies(
                m, platform, Cat(self.ctl.load, self.ctl.shift, self.ctl.take), self.strobe_copies, "strobe")]
        else:
            strobes = [(self.ctl.load, self.ctl.shift, self.ctl.take)]
        load, shift, _ = strobes[0]
        with m.If(load):
            if cfg.has_outliers:
                m.d.sync += nb.eq((self.rowp.n_out + (L - 1)) >> (L.bit_length() - 1))
        width = len(nxt.as_value())
        for j, (load, shift, take) in enumerate(strobes):     # copy j loads its share of the bits
            lo, hi = j * width // len(strobes), (j + 1) * width // len(strobes)
            with m.If(load):
                m.d.sync += nxt.as_value()[lo:hi].eq(self.rowp.as_value()[lo:hi])
            with m.If(shift):
                m.d.sync += prev.as_value()[lo:hi].eq(cur.as_value()[lo:hi])
                with m.If(take):
                    m.d.sync += cur.as_value()[lo:hi].eq(nxt.as_value()[lo:hi])
        shift = strobes[-1][1]
        # the previous tile after this cycle (the shift copies current -> previous), row of the next
        # cycle: one kept copy of the row per 8 selected bits
        rows = kept_copies(m, platform, self.drain_row_ahead, ROW_SELECT_COPIES, "row_next")
        for out, field in ((self.za, "za"), (self.mr, "mr")):
            for lo in range(0, len(out), 8):
                row = rows.pop(0)
                hi = min(lo + 8, len(out))
                sel = [Value.cast(getattr(t, field)[row])[lo:hi] for t in (cur, prev)]
                m.d.sync += out[lo:hi].eq(Mux(shift, *sel))
        m.d.comb += [self.ctl.nb.eq(nb), self.cur_n_out.eq(cur.n_out)]
        return m
