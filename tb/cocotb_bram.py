"""cocotb testbench of :class:`hw.bram.RegisteredReadMemory` (the ECP5 form with ``tb/csrc/dp16kd_model.v``).

The test data holds one input vector per cycle (write port, read addresses, output-register enables)
and the data registers the Python model of ``tests/test_hw_bram.py`` expects after that cycle's
clock edge; ``rtl_registered_reads`` applies the vectors and checks every read port every cycle.

Launched by ``tests/test_hw_bram.py::test_ecp5_form_rtl``.
"""
from __future__ import annotations

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import FallingEdge, RisingEdge

from vitaccel.tb.runner import read_test_data


def _pack(values: list[int], bits: int) -> int:
    return sum(v << (bits * j) for j, v in enumerate(values))


@cocotb.test()
async def rtl_registered_reads(dut):
    d = read_test_data()
    width, abits, reads = d["width"], d["abits"], d["reads"]
    cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
    dut.rst.value = 0
    for name in ("w_addr", "w_data", "w_en", "r_addr", "oce"):
        getattr(dut, name).value = 0
    await FallingEdge(dut.clk)
    for t, (vec, want) in enumerate(zip(d["cycles"], d["expected"])):
        dut.w_addr.value, dut.w_data.value, dut.w_en.value = vec["w_addr"], vec["w_data"], vec["w_en"]
        dut.r_addr.value = _pack(vec["r_addr"], abits)
        dut.oce.value = _pack(vec["oce"], 1)
        await RisingEdge(dut.clk)
        await FallingEdge(dut.clk)
        got = int(dut.r_data.value)
        for j in range(reads):
            if want[j] is None:          # not yet defined (no read has reached the register)
                continue
            value = (got >> (width * j)) & ((1 << width) - 1)
            assert value == want[j], f"cycle {t}, read port {j}: got {value:#x}, model {want[j]:#x}"
