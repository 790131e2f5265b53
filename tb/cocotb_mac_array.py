"""cocotb testbench of :class:`hw.mac_array.MacArray` (docs/datapath.md sections 4 and 6: ``acc_raw``).

The array has no stream ports; its flow control is the engine's global stall ``en`` plus a per-cycle
``valid`` (an issue slot without an operand column).  The testbench therefore has

* a **driver** (:class:`MacArrayDriver`) that issues the operand columns of a list of tiles back to
  back, with random ``en`` stalls (the array must hold every register; random garbage is put on
  ``a``/``b``/``valid``/``first``/``last`` while ``en`` is low) and random ``valid = 0`` bubbles;
* a **monitor** that reads the shadow registers of a finished tile row by row through the
  combinational ``drain_row`` -> ``shadow_row`` port, at the first cycle the tile's ``acc_raw`` is
  there (``MAC_LATENCY - 1`` enabled clock edges after its last column), while the next tile is
  already computing;
* a **scoreboard** comparing the ``m x n`` valid part of each tile (lanes outside it carry random
  padding) with the expected ``acc_raw``.

Expected values are computed on the Python side (:func:`make_tiles`) from ``sim/reference.py``:
the A operand is drawn as *codes* of every format and width (``random_codes``), decoded to triples
with ``decode_<format>_triple`` and to ``D`` with ``decode``, and ``acc_raw`` comes from
``accumulate(D, b, za=0)``.  Launched by ``tests/test_rtl_mac_outlier.py``.
"""
from __future__ import annotations

import random

import cocotb
import numpy as np
from cocotb.triggers import FallingEdge, RisingEdge, Timer

from vitaccel.sim.engine_config import MAC_LATENCY
from vitaccel.tb.bench import Field, PayloadCodec, Scoreboard, Testbench
from vitaccel.tb.runner import read_test_data

#: (A format, base) x width combinations covered; B widths are drawn from 4/6/8.
A_FORMATS = [("uniform", "2"), ("log2", "2"), ("shiftlog2", "2"), ("shiftlog2", "sqrt2"), ("three_region", "2")]


def triple_codec(rows: int) -> PayloadCodec:
    """``ArrayLayout(TripleLayout, rows)``: per row ``neg`` 1, ``mag`` 9, ``sh`` 4 bits."""
    return PayloadCodec([Field("neg", 1), Field("mag", 9), Field("sh", 4)]).repeat(rows)


def b_codec(cols: int, b_bits: int) -> PayloadCodec:
    return PayloadCodec([Field("b", b_bits, True)]).repeat(cols)


def shadow_codec(cols: int, acc_bits: int) -> PayloadCodec:
    return PayloadCodec([Field("acc", acc_bits, True)]).repeat(cols)


def ref_triples(q: np.ndarray, kind: str, bits: int, base: str, m0: int, m1: int):
    """``(neg, mag, sh)`` of codes ``q`` from ``sim.reference.decode_<format>_triple``; checked
    against ``sim.reference.decode``."""
    from vitaccel.sim import reference as ref

    if kind == "uniform":
        t = ref.decode_uniform_triple(q, bits)
    elif kind == "log2":
        t = ref.decode_log2_triple(q, bits)
    elif kind == "shiftlog2":
        t = ref.decode_shiftlog2_triple(q, bits, base)
    else:
        t = ref.decode_three_region_triple(q, bits, m0, m1)
    d = ref.decode(q, kind, bits, base=base, m0=m0, m1=m1)
    assert np.array_equal(ref.triple_to_int(*t), d)
    return [np.asarray(x, np.int64) for x in t], d


def make_tiles(seed: int, rows: int, cols: int, b_bits_max: int = 8, acc_bits: int = 40) -> list[dict]:
    """Tiles covering every A format at 4/6/8 bits, every B width, K = 1 .. 24, full and partial tiles.

    Each tile: ``name``, ``k``, ``m``, ``n``, per-cycle columns ``cols`` (``{neg[r], mag[r], sh[r]}``
    for all ``rows`` lanes; lanes ``>= m`` random padding), ``brows`` (``C`` codes per cycle; lanes
    ``>= n`` random padding), ``expected`` (``m`` lists of ``n`` ``acc_raw`` values).
    """
    from vitaccel.sim import formats as F
    from vitaccel.sim import reference as ref
    from vitaccel.tb.engine_streams import random_codes

    rng = np.random.default_rng(seed)
    tiles = []
    specs = []
    for kind, base in A_FORMATS:
        for bits in F.BITS:
            if kind == "shiftlog2" and base == "2" and bits > 4:
                continue  # base 2 gains nothing above 4 bits (spec 4.3); still legal, covered at k = 4
            specs.append((kind, base, bits))
    specs.append(("shiftlog2", "2", 8))
    ks = [1, 2, 3, 7, 16, 24]
    for i, (kind, base, bits) in enumerate(specs):
        b_bits = F.BITS[i % len(F.BITS)] if b_bits_max == 8 else b_bits_max
        k = ks[i % len(ks)]
        m = rows if i % 2 == 0 else int(rng.integers(1, rows + 1))   # full and partial tiles
        n = cols if i % 3 == 0 else int(rng.integers(1, cols + 1))
        m0 = int(rng.integers(0, 8))
        m1 = int(rng.integers(m0, 16))
        q = random_codes(rng, kind, bits, (rows, k), base)          # all lanes: valid codes
        (neg, mag, sh), d = ref_triples(q, kind, bits, base, m0, m1)
        lo, hi = F.sym_range(b_bits)
        b = rng.integers(lo, hi + 1, (k, cols))
        if i % 4 == 1:  # extreme operands: largest |D| and |b|
            b = np.where(rng.random((k, cols)) < 0.5, lo, hi)
        _raw, _d, _acc = ref.accumulate(d[:m], b[:, :n], 0)
        assert np.abs(_raw).max(initial=0) < (1 << (acc_bits - 1))
        tiles.append({
            "name": f"{kind}{'_' + base if kind == 'shiftlog2' else ''}_a{bits}_w{b_bits}_k{k}_{m}x{n}",
            "k": k, "m": m, "n": n,
            "cols": [{f"{f}[{r}]": int(v[r, j]) for r in range(rows) for f, v in
                      (("neg", neg), ("mag", mag), ("sh", sh))} for j in range(k)],
            "brows": [{f"b[{c}]": int(b[j, c]) for c in range(cols)} for j in range(k)],
            "expected": [[int(x) for x in row] for row in _raw],
        })
    return tiles


class MacArrayDriver:
    """Issues tile columns with random ``en`` stalls / ``valid`` bubbles and checks each tile's shadow.

    The cycle loop runs between rising edges: inputs are set just after an edge, the monitor reads
    ``shadow_row`` at the falling edge.  ``en_edges`` counts enabled rising edges; a tile whose last
    column was taken at enabled edge ``e`` is in the shadow registers after enabled edge
    ``e + MAC_LATENCY - 2`` (broadcast, product and accumulate registers)
    and stays there at least until the next enabled edge.
    """

    def __init__(self, tb: Testbench, rows: int, cols: int, b_bits: int, acc_bits: int,
                 en_prob: float, bubble_prob: float, a_copies: int = 1):
        self.tb, self.dut = tb, tb.dut
        self.rows, self.cols, self.a_copies = rows, cols, a_copies
        self.tc, self.bc = triple_codec(rows * a_copies), b_codec(cols, b_bits)
        self.sc = shadow_codec(cols, acc_bits)
        self.en_prob, self.bubble_prob = en_prob, bubble_prob
        self.rng = random.Random(tb.rng.random())

    def _garbage(self) -> None:
        r = self.rng
        self.dut.a.value = r.getrandbits(self.tc.width)
        self.dut.b.value = r.getrandbits(self.bc.width)
        self.dut.valid.value = r.getrandbits(1)
        self.dut.first.value = r.getrandbits(1)
        self.dut.last.value = r.getrandbits(1)

    def _copies(self, col: dict) -> dict:
        """One A column's triples in every copy of the ``a`` port (copy ``k`` of row ``r`` at ``k * rows + r``)."""
        out = {}
        for key, v in col.items():
            name, r = key[:-1].split("[")
            for k in range(self.a_copies):
                out[f"{name}[{k * self.rows + int(r)}]"] = v
        return out

    async def _read_shadow(self, m: int, n: int) -> list[list[int]]:
        rows = []
        for r in range(m):
            self.dut.drain_row.value = r
            await Timer(100, unit="ps")
            vals = self.sc.unpack(int(self.dut.shadow_row.value))
            rows.append([vals[f"acc[{c}]"] for c in range(n)])
        return rows

    async def run(self, tiles: list[dict], board: Scoreboard) -> int:
        """Issue every tile; return the number of clock cycles used."""
        issue = [(t, j) for t in range(len(tiles)) for j in range(tiles[t]["k"])]
        pos = 0
        en_edges = 0
        due: dict[int, int] = {}        # enabled-edge count after which tile t is in the shadow regs
        last_taken: dict[int, int] = {}
        checked = 0
        cycles = 0
        while checked < len(tiles):
            cycles += 1
            if cycles > 100 * (len(issue) + 10):
                raise AssertionError(f"MacArray driver: timeout, {checked} of {len(tiles)} tiles checked")
            en = self.rng.random() < self.en_prob
            self._garbage()
            self.dut.en.value = int(en)
            issuing = None
            if en and pos < len(issue) and self.rng.random() >= self.bubble_prob:
                t, j = issue[pos]
                tile = tiles[t]
                self.dut.a.value = self.tc.pack(self._copies(tile["cols"][j]))
                self.dut.b.value = self.bc.pack(tile["brows"][j])
                self.dut.valid.value = 1
                self.dut.first.value = int(j == 0)
                self.dut.last.value = int(j == tile["k"] - 1)
                issuing = (t, j)
            elif en:
                self.dut.valid.value = 0
            await RisingEdge(self.tb.clk)
            if en:
                en_edges += 1
                if issuing is not None:
                    pos += 1
                    t, j = issuing
                    if j == tiles[t]["k"] - 1:
                        last_taken[t] = en_edges
                        due[t] = en_edges + MAC_LATENCY - 2
            await FallingEdge(self.tb.clk)
            for t in [t for t, e in due.items() if e == en_edges]:
                tile = tiles[t]
                got = await self._read_shadow(tile["m"], tile["n"])
                board.check({"tile": tile["name"], "acc_raw": got})
                del due[t]
                checked += 1
        return cycles


@cocotb.test()
async def rtl_mac_array(dut):
    """Every tile of the test data through the array: exact ``acc_raw``, under stalls and bubbles."""
    data = read_test_data()
    tb = Testbench(dut, seed=int(data.get("seed", 0)))
    dut.en.value = 0
    dut.valid.value = 0
    dut.drain_row.value = 0
    await tb.start()
    total = 0
    for run in data["runs"]:
        board = Scoreboard(f"mac_array/{run['name']}")
        for t in data["tiles"]:
            board.expect({"tile": t["name"], "acc_raw": t["expected"]})
        drv = MacArrayDriver(tb, int(data["rows"]), int(data["cols"]), int(data["b_bits"]), int(data["acc_bits"]),
                             float(run["en_prob"]), float(run["bubble_prob"]), int(data.get("a_copies", 1)))
        cycles = await drv.run(data["tiles"], board)
        board.result()
        total += board.matched
        dut._log.info("%s: %d tiles exact in %d cycles", run["name"], board.matched, cycles)
    assert total == len(data["tiles"]) * len(data["runs"])
