"""``hw.sta``: static timing of nextpnr's SDF, on hand-written SDF text with hand-computed paths.

(The agreement with nextpnr's own critical path on a real routed design is in tests/test_hw_synth.py.)
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from vitaccel.hw.sta import SdfError, endpoint_delays, parse_sdf, unit_of, unit_timing, worst_path

ROOT = Path(__file__).resolve().parent.parent


def _cell(ctype: str, inst: str, iopaths=(), setups=()) -> str:
    io = "".join(f"(IOPATH {a} {b} ({d // 2}:{d}:{d}) ({d // 2}:{d}:{d}))" for a, b, d in iopaths)
    su = "".join(f"(SETUPHOLD (posedge {p}) (posedge CLK) ({s}:{s}:{s}) (0:0:0))" for p, s in setups)
    return (f'(CELL (CELLTYPE "{ctype}") (INSTANCE {inst}) (DELAY (ABSOLUTE {io}))'
            + (f" (TIMINGCHECK {su})" if su else "") + ")\n")


def _net(a: str, b: str, d: int) -> str:
    return f"(INTERCONNECT {a} {b} ({d // 3}:{d // 2}:{d}) ({d // 3}:{d // 2}:{d}))\n"


def _sdf(cells: str, nets: str) -> str:
    return (f'(DELAYFILE (SDFVERSION "3.0") (DIVIDER /) (TIMESCALE 1ps)\n'
            f'(CELL (CELLTYPE "top") (INSTANCE ) (DELAY (ABSOLUTE\n{nets})))\n{cells})\n')


FF = lambda inst: _cell("TRELLIS_FF", inst, [("CLK", "Q", 500)], [("DI", 100), ("CE", 0)])


def _design() -> str:
    """u.a -> LUT -> carry slice (two halves) -> v.b; w.c -> v.b's CE directly; an unclocked top pin."""
    cells = (FF("u.a") + FF("v.b") + FF("w.c")
             + _cell("TRELLIS_COMB", "u.lut", [("A", "F", 200), ("B", "F", 200)])
             + _cell("TRELLIS_COMB", r"u.add\$CCU2_COMB0", [("A", "FCO", 450), ("FCI", "FCO", 70), ("FCI", "F", 440)])
             + _cell("TRELLIS_COMB", r"u.add\$CCU2_COMB1", [("FCI", "FCO", 70), ("FCI", "F", 440)]))
    nets = (_net("u.a/Q", "u.lut/A", 1000) + _net("u.lut/F", r"u.add\$CCU2_COMB0/A", 300)
            + _net(r"u.add\$CCU2_COMB0/FCO", r"u.add\$CCU2_COMB1/FCI", 0)
            + _net(r"u.add\$CCU2_COMB1/F", "v.b/DI", 600)
            + _net("w.c/Q", "v.b/CE", 4000) + _net("in_pin/X", "u.lut/B", 9000))
    return _sdf(cells, nets)


def test_longest_path_is_the_hand_sum_with_one_carry_delay_per_slice():
    g = parse_sdf(_design())
    ends = {e: (s, d) for e, s, d in endpoint_delays(g)}
    # clk-to-q 0.5 + net 1.0 + LUT 0.2 + net 0.3 + A->FCO 0.45 + (COMB1 FCI->FCO not on the path)
    # + COMB1 FCI->F 0.44 + net 0.6 + setup 0.1; the top-level pin is not a timed start
    assert ends["v.b/DI"] == ("u.a/Q", pytest.approx(0.5 + 1.0 + 0.2 + 0.3 + 0.45 + 0.44 + 0.6 + 0.1))
    assert ends["v.b/CE"] == ("w.c/Q", pytest.approx(0.5 + 4.0))
    assert "u.a/DI" not in ends                      # nothing drives it
    # the second half's FCI -> FCO counts 0 (nextpnr's carry model), the first half's its own delay
    arcs = dict(g.arcs[r"u.add$CCU2_COMB1/FCI"])
    assert arcs[r"u.add$CCU2_COMB1/FCO"] == 0.0
    assert dict(g.arcs[r"u.add$CCU2_COMB0/FCI"])[r"u.add$CCU2_COMB0/FCO"] == pytest.approx(0.07)


def test_worst_path_lists_the_hand_summed_arcs():
    steps = worst_path(parse_sdf(_design()), "v.b/DI")
    assert [p for p, _, _ in steps] == ["u.a/Q", "u.lut/A", "u.lut/F", r"u.add$CCU2_COMB0/A", r"u.add$CCU2_COMB0/FCO",
                                        r"u.add$CCU2_COMB1/FCI", r"u.add$CCU2_COMB1/F", "v.b/DI", "v.b/DI (setup)"]
    assert [d for _, d, _ in steps] == pytest.approx([0.5, 1.0, 0.2, 0.3, 0.45, 0.0, 0.44, 0.6, 0.1])
    assert steps[-1][2] == pytest.approx(3.59)
    with pytest.raises(SdfError, match="not a timed endpoint"):
        worst_path(parse_sdf(_design()), "u.lut/F")


def test_unit_timing_groups_paths_by_the_unit_they_end_in():
    t = unit_timing(_design(), target_mhz=250.0)        # period 4 ns
    worst = 0.5 + 1.0 + 0.2 + 0.3 + 0.45 + 0.44 + 0.6 + 0.1
    assert t["endpoints"] == 2 and t["failing"] == 1   # 3.59 ns passes, 4.5 ns fails
    assert t["units"]["v"]["endpoints"] == 2 and t["units"]["v"]["failing"] == 1
    assert t["units"]["v"]["worst_ns"] == pytest.approx(4.5) and t["fmax_mhz"] == pytest.approx(1000 / 4.5, abs=0.01)
    assert t["worst"][0]["start"] == "w.c/Q" and t["worst"][1]["ns"] == pytest.approx(worst, abs=1e-3)
    assert sum(t["histogram"].values()) == 2
    assert unit_of(r"drain$330.d5_full_TRELLIS_FF_Q/M") == "drain" and unit_of("cycles_TRELLIS_FF_Q/DI") == "(top)"


def test_bad_sdf_text_is_named():
    with pytest.raises(SdfError, match="TIMESCALE"):
        parse_sdf("(DELAYFILE)")
    with pytest.raises(SdfError, match="no CELL"):
        parse_sdf("(DELAYFILE (TIMESCALE 1ps))")
    loop = _sdf(_cell("TRELLIS_COMB", "x.l1", [("A", "F", 200)]) + _cell("TRELLIS_COMB", "x.l2", [("A", "F", 200)]),
                _net("x.l1/F", "x.l2/A", 100) + _net("x.l2/F", "x.l1/A", 100))
    with pytest.raises(SdfError, match="loop"):
        endpoint_delays(parse_sdf(loop))
    comb_only = _sdf(_cell("TRELLIS_COMB", "x.l1", [("A", "F", 200)]), _net("x.l1/F", "x.l2/A", 100))
    with pytest.raises(SdfError, match="no register-to-register"):   # synthesize() records this message
        unit_timing(comb_only, 100.0)


def test_timing_by_unit_script_names_a_directory_without_a_routed_design(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("tbu", ROOT / "benchmarks" / "timing_by_unit.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no routed design" in err and str(tmp_path) in err and "--pnr" in err
    # a directory with an SDF is timed without nextpnr
    (tmp_path / "layer_engine.sdf").write_text(_design())
    assert mod.main([str(tmp_path), "--freq", "250", "--json", str(tmp_path / "t.json")]) == 0
    out = capsys.readouterr().out
    assert "2 endpoints, 1 miss 250 MHz" in out and "| `v` | 2 | 1 | 4.50 |" in out


def test_a_registered_dsp_output_starts_a_timed_path():
    """MULT18X18D with its output register: ``CLK0 -> P3`` is a clock-to-out, so d.m/P3 launches a
    path (0.735 + 2.0 + 0.1 setup); its input ``A0`` is an endpoint with its own setup time."""
    dsp = _cell("MULT18X18D", "d.m", [("CLK0", "P3", 735)], [("A0", 68)])
    text = _sdf(FF("u.a") + FF("v.b") + dsp, _net("d.m/P3", "v.b/DI", 2000) + _net("u.a/Q", "d.m/A0", 500))
    ends = {e: (s, d) for e, s, d in endpoint_delays(parse_sdf(text))}
    assert ends["v.b/DI"] == ("d.m/P3", pytest.approx(0.735 + 2.0 + 0.1))
    assert ends["d.m/A0"] == ("u.a/Q", pytest.approx(0.5 + 0.5 + 0.068))
    t = unit_timing(text, target_mhz=400.0)
    assert t["endpoints"] == 2 and t["fmax_mhz"] == pytest.approx(1000 / 2.835, abs=0.01)
