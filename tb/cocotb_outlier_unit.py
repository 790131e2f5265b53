"""cocotb testbench of :class:`hw.outlier_unit.OutlierUnit` (docs/datapath.md sections 5 and 6).

The unit adds ``val * b[col, :]`` of every sparse outlier ``(row, col, val)`` of a row tile into the
correction row ``corr[row - row0, :]`` that the engine's drain adds to ``acc_d << FO``.  It has no
stream ports of its own: the engine hands it one beat of ``L`` entries per ``issue`` cycle under the
global stall ``en``.  The testbench provides

* a **driver** (:class:`OutlierUnitDriver`) that announces each tile (``tile_start``,
  ``tile_count``), issues its beats with random ``en`` stalls and ``issue = 0`` bubbles (garbage on
  the entry lanes while not issuing), and then drains the tile's rows;
* a **B buffer model**: a synchronous read port per lane with enable ``en`` (as in
  :mod:`hw.engine`): ``rd_data`` of an enabled edge is the B row addressed by ``rd_addr`` before it;
* a **monitor / scoreboard**: during the drain, each correction row (``corr_row`` for
  ``drain_row``) is compared with the expected row, and after each tile the sticky ``overflow`` and
  ``range_error`` flags are compared with their expected values.

Expected correction rows come from ``sim.reference.accumulate`` (``D = 0``, ``za = 0``, ``FO = 0``,
so ``acc = sum val * b[col, :]``) over the in-range entries (:func:`make_tiles`).  Launched by
``tests/test_rtl_mac_outlier.py``.
"""
from __future__ import annotations

import random

import cocotb
import numpy as np
from cocotb.triggers import FallingEdge, RisingEdge, Timer

from vitaccel.tb.bench import Field, PayloadCodec, Scoreboard, Testbench
from vitaccel.tb.runner import read_test_data
from vitaccel.sim.engine_config import outlier_latency


def entry_codec(lanes: int) -> PayloadCodec:
    """``outlier_beat_layout(lanes)``: per lane ``row`` u16, ``col`` u16, ``val`` s16, ``valid`` 1."""
    return PayloadCodec([Field("row", 16), Field("col", 16), Field("val", 16, True), Field("valid", 1)]).repeat(lanes)


def corr_bits_for(capacity: int, b_bits: int) -> int:
    """Correction width of ``sim.engine_config.EngineConfig.corr_bits`` (``CAP * 2^15 * Bmax``, signed)."""
    return (max(1, capacity) * (1 << 15) * ((1 << (b_bits - 1)) - 1)).bit_length() + 1


def _make_tile(rng, name, *, rows, cols, k, m, row0, b_bits, count, vmax=1 << 15, extreme=False, announce=None,
          bad=()) -> dict:
    """One tile: ``count`` unique sorted in-range entries (+ ``bad`` out-of-range ones) and expected rows."""
    from vitaccel.sim import formats as F
    from vitaccel.sim import reference as ref

    lo, hi = F.sym_range(b_bits)
    b = rng.integers(lo, hi + 1, (k, cols))
    if extreme:
        b = np.where(rng.random((k, cols)) < 0.5, lo, hi)
    cells = sorted(rng.choice(m * k, size=count, replace=False).tolist()) if count else []
    vals = rng.integers(-vmax, vmax, count)
    if extreme and count:
        vals = np.where(rng.random(count) < 0.5, -(1 << 15), (1 << 15) - 1)
    ent = [(row0 + c // k, c % k, int(v)) for c, v in zip(cells, vals)]
    rel = np.array([(r - row0, c, v) for r, c, v in ent], np.int64).reshape(-1, 3)
    _raw, _d, acc = ref.accumulate(np.zeros((m, k), np.int64), b, 0, 0, rel)
    stream = list(ent)
    for pos, e in bad:  # out-of-range entries, inserted into the stream (not added by the unit)
        stream.insert(min(pos, len(stream)), e)
    return {"name": name, "row0": row0, "m": m, "k": k, "b": b.tolist(), "entries": stream,
            "count": len(stream) if announce is None else announce,
            "expected": [[int(x) for x in row] for row in acc], "bad": len(bad)}


def make_tiles(seed: int, rows: int, cols: int, capacity: int, max_k: int, max_b_bits: int = 8) -> list[dict]:
    """Tiles: zero / full / over-capacity loads, extreme values, partial tiles, 4/6/8-bit B, range errors.

    Each tile carries ``after`` (expected sticky flags once it is drained) and ``clear`` (pulse the
    unit's ``clear`` before it).  B codes are at most ``max_b_bits`` wide (a unit built for narrower
    codes gets each tile's codes at its own width).
    """
    rng = np.random.default_rng(seed)
    tiles = []

    def _tile(*a, b_bits, **k):
        return _make_tile(*a, b_bits=min(b_bits, max_b_bits), **k)
    kw = dict(rows=rows, cols=cols)
    tiles.append(_tile(rng, "zero", k=9, m=rows, row0=0, b_bits=8, count=0, **kw))
    tiles.append(_tile(rng, "full_extreme_w8", k=5, m=rows, row0=rows, b_bits=8, count=capacity, extreme=True, **kw))
    tiles.append(_tile(rng, "full_w4_partial", k=13, m=rows - 1, row0=2 * rows, b_bits=4, count=capacity, **kw))
    tiles.append(_tile(rng, "odd_w6", k=max_k, m=max(1, rows - 2), row0=197, b_bits=6, count=capacity - 1, **kw))
    tiles.append(_tile(rng, "one_row_k1", k=1, m=1, row0=60000, b_bits=8, count=1, **kw))
    # same row in both lanes of a beat: a tile of one row
    tiles.append(_tile(rng, "one_row_dense", k=capacity, m=1, row0=5, b_bits=8, count=capacity, **kw))
    for t in tiles:
        t["after"] = {"overflow": 0, "range_error": 0}
    # over capacity: the flag is raised, the entries are still added (moderate values keep the sum in
    # the correction width, which is sized for `capacity` entries)
    over = _tile(rng, "over_capacity", k=12, m=rows, row0=8, b_bits=8, count=capacity + 3, vmax=1 << 12, **kw)
    over["after"] = {"overflow": 1, "range_error": 0}
    tiles.append(over)
    nxt = _tile(rng, "after_over_sticky", k=7, m=rows, row0=12, b_bits=6, count=2, **kw)
    nxt["after"] = {"overflow": 1, "range_error": 0}
    tiles.append(nxt)
    # announced above capacity (flag) but fewer entries sent: still exact
    ann = _tile(rng, "announced_over", k=6, m=rows, row0=0, b_bits=8, count=2, announce=capacity + 1, **kw)
    ann["clear"] = True
    ann["after"] = {"overflow": 1, "range_error": 0}
    tiles.append(ann)
    # range errors: row below row0, row >= row0 + m, col >= K; not added
    row0, m, k = 40, max(1, rows - 1), 6
    bad = [(0, (row0 - 1, 0, 1000)), (1, (row0 + m, 1, -77)), (2, (row0, k, 5))]
    rng_t = _tile(rng, "range_errors", k=k, m=m, row0=row0, b_bits=8, count=min(capacity, 3), bad=bad,
                  announce=min(capacity, 3), **kw)
    rng_t["clear"] = True
    rng_t["after"] = {"overflow": 0, "range_error": 1}
    tiles.append(rng_t)
    clean = _tile(rng, "after_clear", k=10, m=rows, row0=44, b_bits=4, count=capacity, **kw)
    clean["clear"] = True
    clean["after"] = {"overflow": 0, "range_error": 0}
    tiles.append(clean)
    return tiles


class OutlierUnitDriver:
    """Announce, issue and drain tiles with random ``en`` stalls and issue bubbles; model the B buffer."""

    def __init__(self, tb: Testbench, rows: int, cols: int, lanes: int, b_bits: int, corr_bits: int,
                 addr_bits: int, en_prob: float, bubble_prob: float, addr_reg: bool = False):
        self.tb, self.dut = tb, tb.dut
        self.addr_reg = addr_reg            # the unit reads drain_row_nx a cycle ahead (registered address)
        self.row_now = self.row_nx = 0      # drain_row of this cycle and of the next one
        self.rows, self.cols, self.lanes, self.b_bits = rows, cols, lanes, b_bits
        self.ec = entry_codec(lanes)
        self.addr = PayloadCodec([Field("a", addr_bits)]).repeat(lanes)
        self.bcodec = PayloadCodec([Field("b", b_bits, True)]).repeat(cols * lanes)
        self.corr = PayloadCodec([Field("c", corr_bits, True)]).repeat(cols)
        self.en_prob, self.bubble_prob = en_prob, bubble_prob
        self.rng = random.Random(tb.rng.random())
        self.b = [[0] * cols]

    async def _cycle(self, en: bool) -> None:
        """Finish one clock cycle: sample ``rd_addr``, clock, update the B read data if enabled."""
        await FallingEdge(self.tb.clk)
        addrs = self.addr.unpack(int(self.dut.rd_addr.value))
        await RisingEdge(self.tb.clk)
        self.row_now = self.row_nx
        if en:
            words = {}
            for l in range(self.lanes):
                a = addrs[f"a[{l}]"]
                row = self.b[a] if a < len(self.b) else [self.rng.randint(-8, 7) for _ in range(self.cols)]
                for c in range(self.cols):
                    words[f"b[{l * self.cols + c}]"] = row[c]
            self.dut.rd_data.value = self.bcodec.pack(words)

    def _idle_inputs(self, row_nx: int | None = None) -> None:
        """Random inputs, nothing issued; ``drain_row`` is the row chosen a cycle earlier and the
        next cycle's (``row_nx``, random if ``None``) is shown on ``drain_row_nx`` with ``addr_reg``."""
        r = self.rng
        self.dut.issue.value = 0
        self.dut.entries.value = r.getrandbits(self.ec.width)
        self.dut.tile_start.value = 0
        self.dut.tile_count.value = r.getrandbits(16)
        self.dut.drain.value = r.getrandbits(1)
        self.row_nx = r.randrange(self.rows) if row_nx is None else row_nx
        self.dut.drain_row.value = self.row_now
        if self.addr_reg:
            self.dut.drain_row_nx.value = self.row_nx
        self.dut.clear.value = 0

    def _en(self) -> bool:
        en = self.rng.random() < self.en_prob
        self.dut.en.value = int(en)
        return en

    async def run_tile(self, tile: dict, board: Scoreboard) -> None:
        dut = self.dut
        self.b = tile["b"]
        if tile.get("clear"):
            self._idle_inputs()
            dut.drain.value = 0
            dut.en.value = 0
            dut.clear.value = 1
            await self._cycle(False)
        dut.row0.value, dut.m.value, dut.k.value = tile["row0"], tile["m"], tile["k"]
        # announce the tile (takes effect on an enabled edge)
        while True:
            self._idle_inputs()
            dut.drain.value = 0
            en = self._en()
            dut.tile_start.value = 1
            dut.tile_count.value = tile["count"]
            await self._cycle(en)
            if en:
                break
        beats = [tile["entries"][i:i + self.lanes] for i in range(0, len(tile["entries"]), self.lanes)]
        pos = 0
        while pos < len(beats):
            self._idle_inputs()
            dut.drain.value = 0
            en = self._en()
            if self.rng.random() >= self.bubble_prob:
                words = {}
                for l in range(self.lanes):
                    if l < len(beats[pos]):
                        r, c, v = beats[pos][l]
                        words.update({f"row[{l}]": r, f"col[{l}]": c, f"val[{l}]": v, f"valid[{l}]": 1})
                    else:  # unused lane: random contents, valid = 0
                        words.update({f"row[{l}]": self.rng.getrandbits(16), f"col[{l}]": self.rng.getrandbits(16),
                                      f"val[{l}]": self.rng.randint(-(1 << 15), (1 << 15) - 1), f"valid[{l}]": 0})
                dut.entries.value = self.ec.pack(words)
                dut.issue.value = 1
                if en:
                    pos += 1
            await self._cycle(en)
        # outlier_latency(b_bits) more enabled edges: the product's stages, then the correction registers
        done = 0
        while done < outlier_latency(self.b_bits):
            self._idle_inputs(row_nx=0)             # the drain starts at row 0
            dut.drain.value = 0
            en = self._en()
            await self._cycle(en)
            done += int(en)
        # drain rows 0 .. m-1 (a row is read and cleared on an enabled cycle)
        got = []
        r = 0
        while r < tile["m"]:
            en = self._en()
            self._idle_inputs(row_nx=(r + int(en)) % self.rows)   # drain_row is r (chosen a cycle earlier)
            if en:
                dut.drain.value = 1
                await Timer(100, unit="ps")
                vals = self.corr.unpack(int(dut.corr_row.value))
                got.append([vals[f"c[{c}]"] for c in range(self.cols)])
                r += 1
            await self._cycle(en)
        board.check({"tile": tile["name"], "corr": got,
                     "overflow": int(dut.overflow.value), "range_error": int(dut.range_error.value)})


@cocotb.test()
async def rtl_outlier_unit(dut):
    """Every tile of the test data: exact correction rows and sticky flags, under stalls and bubbles."""
    data = read_test_data()
    tb = Testbench(dut, seed=int(data.get("seed", 0)))
    for p in ("en", "issue", "tile_start", "drain", "clear"):
        getattr(dut, p).value = 0
    await tb.start()
    cols = int(data["cols"])
    for run in data["runs"]:
        board = Scoreboard(f"outlier_unit/{run['name']}")
        for t in data["tiles"]:
            exp_rows = [row[:cols] for row in t["expected"]]
            board.expect({"tile": t["name"], "corr": exp_rows, **t["after"]})
        drv = OutlierUnitDriver(tb, int(data["rows"]), cols, int(data["lanes"]), int(data["b_bits"]),
                                int(data["corr_bits"]), int(data["addr_bits"]), float(run["en_prob"]),
                                float(run["bubble_prob"]), bool(data.get("addr_reg", False)))
        dut.clear.value = 1
        await RisingEdge(tb.clk)
        dut.clear.value = 0
        for t in data["tiles"]:
            await drv.run_tile(t, board)
        board.result()
        dut._log.info("%s: %d tiles exact", run["name"], board.matched)
