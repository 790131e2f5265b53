"""RTL unit tests of the MAC array and the sparse outlier unit (cocotb + Verilator).

One small Verilator build each (2 x 3 MacArray, 4 x 4 OutlierUnit with two lanes); stimuli and
expected values are made here from ``sim/reference.py`` (``decode_<format>_triple``, ``decode``,
``accumulate``), never from the RTL.  Each testbench runs its tiles twice: with ideal control and
with random ``en`` stalls plus issue bubbles.
"""
from __future__ import annotations

import pytest

from vitaccel.sim import formats as F
from vitaccel.tb.runner import run_cocotb, verilog_for

RUNS = [{"name": "ideal", "en_prob": 1.0, "bubble_prob": 0.0},
        {"name": "stalls_bubbles", "en_prob": 0.7, "bubble_prob": 0.3}]

MAC = dict(rows=2, cols=3, b_bits=8, acc_bits=40)
OUTL = dict(rows=4, cols=4, b_bits=8, capacity=4, lanes=2, max_k=32)


def test_mac_array_stimuli_cover_formats():
    """The MAC tiles cover every A format at 4/6/8 bits, B at 4/6/8 bits, K = 1 and partial tiles."""
    from vitaccel.tb import cocotb_mac_array as tbm

    tiles = tbm.make_tiles(1, MAC["rows"], MAC["cols"])
    names = [t["name"] for t in tiles]
    for kind in ("uniform", "log2", "shiftlog2_2", "shiftlog2_sqrt2", "three_region"):
        for bits in F.BITS:
            if kind == "shiftlog2_2" and bits == 6:
                continue
            assert any(n.startswith(f"{kind}_a{bits}_") for n in names), (kind, bits)
    assert {n.split("_w")[1].split("_")[0] for n in names} == {str(b) for b in F.BITS}
    assert any(t["k"] == 1 for t in tiles)
    assert any(t["m"] < MAC["rows"] or t["n"] < MAC["cols"] for t in tiles)


def test_outlier_stimuli_cover_loads():
    """Zero, full and over-capacity loads, range errors, partial tiles."""
    from vitaccel.tb import cocotb_outlier_unit as tbm

    tiles = tbm.make_tiles(1, OUTL["rows"], OUTL["cols"], OUTL["capacity"], OUTL["max_k"])
    counts = [len(t["entries"]) - t["bad"] for t in tiles]
    assert 0 in counts and OUTL["capacity"] in counts and max(counts) > OUTL["capacity"]
    assert any(t["after"]["overflow"] for t in tiles) and any(t["after"]["range_error"] for t in tiles)
    assert any(t["m"] < OUTL["rows"] for t in tiles)
    # the hand-checkable case: one outlier, K = 1, one row -> corr = val * b[0, :]
    one = next(t for t in tiles if t["name"] == "one_row_k1")
    (_r, _c, val), = one["entries"]
    assert one["expected"] == [[val * x for x in one["b"][0]]]


@pytest.mark.slow
@pytest.mark.parametrize("a_copies", [1, 2])
def test_mac_array_rtl(a_copies):
    """MacArray 2 x 3 in Verilator: exact acc_raw for every A format / width under stalls and bubbles
    (with one A column on ``a``, and with two copies of it: columns 0, 1 read copy 0, column 2 copy 1)."""
    from vitaccel.hw.mac_array import MacArray
    from vitaccel.tb import cocotb_mac_array as tbm

    params = {**MAC, "a_copies": a_copies}
    name = "mac_array" + ("" if a_copies == 1 else f"_a{a_copies}")
    v = verilog_for(MacArray, name, params)
    tiles = tbm.make_tiles(1, MAC["rows"], MAC["cols"], acc_bits=MAC["acc_bits"])
    run_cocotb(name, [v], "vitaccel.tb.cocotb_mac_array",
               data={**params, "tiles": tiles, "runs": RUNS, "seed": 3})


@pytest.mark.slow
@pytest.mark.parametrize("addr_reg, b_bits", [(False, 4), (True, 8)],
                         ids=["mux_address_lut_product_w4", "registered_address_dsp_product_w8"])
def test_outlier_unit_rtl(addr_reg, b_bits):
    """OutlierUnit 4 x 4, L = 2 in Verilator: exact correction rows and overflow / range_error flags
    (4-bit B: the shift-and-add product, the memories' read address multiplexed; 8-bit B: the product
    of a registered DSP block and one more register, ``outlier_latency`` 4, the read address
    registered from ``drain_row_nx``)."""
    from vitaccel.hw.outlier_unit import OutlierUnit
    from vitaccel.tb import cocotb_outlier_unit as tbm

    addr_bits = max(1, (OUTL["max_k"] - 1).bit_length())
    corr_bits = tbm.corr_bits_for(OUTL["capacity"], b_bits)
    params = dict(rows=OUTL["rows"], cols=OUTL["cols"], b_bits=b_bits, capacity=OUTL["capacity"],
                  lanes=OUTL["lanes"], corr_bits=corr_bits, addr_bits=addr_bits, addr_reg=addr_reg)
    name = f"outlier_unit_w{b_bits}" + ("_ra" if addr_reg else "")
    v = verilog_for(OutlierUnit, name, params)
    tiles = tbm.make_tiles(1, OUTL["rows"], OUTL["cols"], OUTL["capacity"], OUTL["max_k"], max_b_bits=b_bits)
    assert max(max(abs(x) for row in t["b"] for x in row) for t in tiles) < 1 << (b_bits - 1)
    run_cocotb(name, [v], "vitaccel.tb.cocotb_outlier_unit",
               data={**params, "tiles": tiles, "runs": RUNS, "seed": 4})


@pytest.mark.parametrize("mag_bits", [3, 5, 7], ids=["b4", "b6", "b8"])
def test_booth_terms_sum_to_the_product(mag_bits):
    """``booth_terms``: for every ``|b|`` of a 4-, 6- and 8-bit B code and ``magf`` at its edges and
    random values, the radix-4 terms sum (modulo ``2^(12 + mag_bits)``, as the PE adds them) to
    ``|b| * magf`` (Python integers); half as many terms as ``|b|`` has bits, rounded up."""
    import random

    from amaranth.hdl import Module, Signal
    from amaranth.sim import Simulator

    from vitaccel.hw.mac_array import MAGF_BITS, booth_terms

    pw = MAGF_BITS + mag_bits
    m = Module()
    magf, absb, total = Signal(MAGF_BITS), Signal(mag_bits), Signal(pw)
    terms = booth_terms(magf, absb, pw)
    assert len(terms) == (mag_bits + 2) // 2
    acc = terms[0]
    for t in terms[1:]:
        acc = acc + t
    m.d.comb += total.eq(acc[:pw])
    rng = random.Random(mag_bits)
    mags = [0, 1, 2, 3, (1 << MAGF_BITS) - 1, (1 << MAGF_BITS) - 2] + [rng.randrange(1 << MAGF_BITS) for _ in range(6)]
    bad = []

    async def bench(ctx):
        for b in range(1 << mag_bits):
            for mg in mags:
                ctx.set(absb, b)
                ctx.set(magf, mg)
                if ctx.get(total) != b * mg:
                    bad.append((b, mg, ctx.get(total)))

    sim = Simulator(m)
    sim.add_testbench(bench)
    sim.run()
    assert not bad, bad[:5]
