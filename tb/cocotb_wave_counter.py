"""cocotb module of the waveform test (``tests/test_tb_waves.py``): an 8-bit counter.

The design (written by the test) is ``module wave_counter(input clk, input rst, output reg [7:0] q)``
counting up after reset.  The test drives the clock for ``cycles`` cycles (test data) and checks the
count every cycle, so the recorded waveform holds a known, non-trivial signal.
"""
from __future__ import annotations

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, FallingEdge

from vitaccel.tb.runner import read_test_data

#: Verilog of the design under test.
VERILOG = """module wave_counter(input clk, input rst, output reg [7:0] q);
  always @(posedge clk) if (rst) q <= 8'd0; else q <= q + 8'd1;
endmodule
"""


@cocotb.test()
async def count(dut):
    """After reset the counter increments once per clock (mod 256)."""
    cycles = int(read_test_data()["cycles"])
    cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
    dut.rst.value = 1
    await ClockCycles(dut.clk, 2)
    await FallingEdge(dut.clk)
    dut.rst.value = 0
    for i in range(1, cycles + 1):
        await FallingEdge(dut.clk)
        assert int(dut.q.value) == i % 256, f"cycle {i}: q = {int(dut.q.value)}"
