"""Block RAM with registered read ports (hw/bram.py): both forms against a model of the memory."""
from __future__ import annotations

import random
import re

import pytest
from amaranth.back import verilog
from amaranth.sim import Simulator

from vitaccel.hw.bram import RegisteredReadMemory, dp16kd_shape
from vitaccel.hw.dsp import ECP5_DSP


def _stimulus(rng: random.Random, width: int, depth: int, reads: int, cycles: int, collisions: bool) -> list[dict]:
    """Random cycles: writes to a small address window (so reads hit written rows; with a neighbour of
    one row in every address bit, so a wrong address mapping aliases two of them), random enables;
    without ``collisions`` no read addresses the row written in the same cycle."""
    base = rng.randrange(depth)
    window = rng.sample(range(depth), 6) + [0, depth - 1, base] + [base ^ (1 << b) for b in range((depth - 1).bit_length())]
    out = []
    for _ in range(cycles):
        w_en = int(rng.random() < 0.6)
        w_addr = rng.choice(window)
        r_addr = [rng.choice(window) for _ in range(reads)]
        if not collisions:
            r_addr = [a if not (w_en and a == w_addr) else (a + 1) % depth for a in r_addr]
        out.append({"w_addr": w_addr, "w_data": rng.getrandbits(width), "w_en": w_en, "r_addr": r_addr,
                    "oce": [int(rng.random() < 0.7) for _ in range(reads)]})
    return out


def model(cycles: list[dict], width: int, reads: int) -> list[list]:
    """The data registers after each clock edge (None until a read of a written row has reached them).

    At an edge each read port's latch takes the row its address selects (the contents before this
    edge's write; a row read while it is written gives its inverted old data, the generic form's
    collision check), and the data register takes the latch of the edge before when ``oce`` is high.
    """
    mem: dict[int, int] = {}
    mask = (1 << width) - 1
    latch: list = [None] * reads
    reg: list = [None] * reads
    out = []
    for c in cycles:
        new_latch = []
        for j in range(reads):
            v = mem.get(c["r_addr"][j])
            if v is not None and c["w_en"] and c["w_addr"] == c["r_addr"][j]:
                v = ~v & mask
            new_latch.append(v)
        reg = [latch[j] if c["oce"][j] else reg[j] for j in range(reads)]
        latch = new_latch
        if c["w_en"]:
            mem[c["w_addr"]] = c["w_data"]
        out.append(list(reg))
    return out


@pytest.mark.parametrize("depth, width, lsb", [(512, 18, 4), (1024, 18, 4), (2048, 9, 3), (4096, 4, 2),
                                                (8192, 2, 1), (16384, 1, 0)])
def test_dp16kd_configuration_by_depth(depth, width, lsb):
    assert dp16kd_shape(depth) == (width, lsb)


def test_dp16kd_shape_rejects_deeper_memories():
    with pytest.raises(ValueError, match="16384 rows"):
        dp16kd_shape(16385)


@pytest.mark.parametrize("width, depth, reads", [(32, 2048, 2), (20, 1024, 1), (7, 4096, 3)])
def test_generic_form_against_model(width, depth, reads):
    """The simulated (generic) form, including reads of a row written in the same cycle."""
    dut = RegisteredReadMemory(width, depth, reads)
    cycles = _stimulus(random.Random(width + depth), width, depth, reads, 400, collisions=True)
    want = model(cycles, width, reads)
    checked = []

    async def bench(ctx):
        for c, w in zip(cycles, want):
            ctx.set(dut.w_addr, c["w_addr"])
            ctx.set(dut.w_data, c["w_data"])
            ctx.set(dut.w_en, c["w_en"])
            for j in range(reads):
                ctx.set(dut.r_addr[j], c["r_addr"][j])
            ctx.set(dut.oce, sum(b << j for j, b in enumerate(c["oce"])))
            await ctx.tick()
            for j in range(reads):
                if w[j] is not None:
                    assert ctx.get(dut.r_data[j]) == w[j]
                    checked.append(j)

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    assert len(checked) > 200 * reads      # most cycles compared, on every port
    assert set(checked) == set(range(reads))


@pytest.mark.parametrize("width, depth, reads, per_read, bw", [(32, 2048, 2, 4, 9), (20, 1024, 1, 2, 18),
                                                               (7, 4096, 3, 2, 4)])
def test_ecp5_form_is_dp16kd_with_output_register(width, depth, reads, per_read, bw):
    """The ECP5 form: one DP16KD per read port and slice, the read port's output register on, its
    clock enable from ``oce``; no memory left for yosys to map."""
    text = verilog.convert(RegisteredReadMemory(width, depth, reads), name="top", emit_src=False, platform=ECP5_DSP)
    insts = re.findall(r"DP16KD\s+#\((.*?)\)\s+\S+\s+\((.*?)\);", text, re.S)
    assert len(insts) == reads * per_read
    for params, ports in insts:
        assert re.search(r"\.REGMODE_B\(\"OUTREG\"\)", params) and re.search(r"\.REGMODE_A\(\"NOREG\"\)", params)
        assert re.search(rf"\.DATA_WIDTH_A\(32'd{bw}\)", params) and re.search(rf"\.DATA_WIDTH_B\(32'd{bw}\)", params)
        assert re.search(r"\.OCEB\(\s*\S*oce", ports)
    generic = verilog.convert(RegisteredReadMemory(width, depth, reads), name="top", emit_src=False)
    assert "DP16KD" not in generic and "reg [" in generic


def test_ecp5_form_deeper_than_one_block_keeps_the_memory():
    """More than 16 384 rows (``max_k`` above 8 192): no DP16KD instance, the memory is left to yosys."""
    text = verilog.convert(RegisteredReadMemory(8, 32768, 1), name="top", emit_src=False, platform=ECP5_DSP)
    assert "DP16KD" not in text and "reg [7:0] mem" in text


@pytest.mark.slow
@pytest.mark.parametrize("width, depth, reads", [(32, 2048, 2), (20, 1024, 1), (5, 4096, 2)])
def test_ecp5_form_rtl(width, depth, reads):
    """The ECP5 form in Verilator with tb/csrc/dp16kd_model.v (the project's model of the block in this
    configuration) against the model above, without same-cycle read / write collisions."""
    from pathlib import Path

    import vitaccel.tb as tbpkg
    from vitaccel.tb.runner import run_cocotb, verilog_for

    src = verilog_for(RegisteredReadMemory, "bram", {"width": width, "depth": depth, "reads": reads},
                      platform=ECP5_DSP)
    assert "DP16KD" in src.read_text()
    cycles = _stimulus(random.Random(depth), width, depth, reads, 300, collisions=False)
    run_cocotb("bram", [src, Path(tbpkg.__file__).parent / "csrc" / "dp16kd_model.v"], "vitaccel.tb.cocotb_bram",
               data={"width": width, "abits": (depth - 1).bit_length(), "reads": reads, "cycles": cycles,
                     "expected": model(cycles, width, reads)},
               run_name=f"bram_{width}_{depth}_{reads}")
