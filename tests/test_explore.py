"""``vitaccel explore`` on tiny synthetic workloads: size parsing, per-point figures, clock / resource marks,
the Pareto front (checked by brute force), CSV / JSON / PNG outputs and the errors for empty or
impossible sweeps."""
from __future__ import annotations

import csv
import json
import math

import pytest

from vitaccel.cli import build_parser, main
from vitaccel.sim.errors import UserError
from vitaccel.sim.perf import resources as R
from vitaccel.sim.perf.explore import COLUMNS, parse_sizes, sweep


def _program(tmp_path, bits=4):
    layers = [dict(name="fc1", op="linear", M=40, K=64, N=96, a_bits=bits, b_bits=bits, a_fmt="uniform",
                   out_fmt="fixed16"),
              dict(name="fc2", op="linear", M=40, K=96, N=64, a_bits=bits, b_bits=bits, a_fmt="shiftlog2",
                   out_fmt="fixed32"),
              dict(name="qk", op="qk", M=40, K=16, N=40, count=2, a_bits=bits, b_bits=bits, out_fmt="fixed16")]
    p = tmp_path / "prog.json"
    p.write_text(json.dumps(dict(model="toy", layers=layers)))
    return str(p)


def _args(*argv):
    return build_parser().parse_args(["explore", *argv])


def test_parse_sizes():
    assert parse_sizes(["4..64"], "rows") == [4, 8, 16, 32, 64]
    assert parse_sizes(["8..32:8"], "rows") == [8, 16, 24, 32]
    assert parse_sizes(["16", "8,8", "3..5"], "rows") == [4, 8, 16]
    assert parse_sizes(["64..4"], "rows") == []
    for bad in (["x"], ["4..y"], ["8..32:0"], ["0"]):
        with pytest.raises(UserError, match="--rows"):
            parse_sizes(bad, "rows")


def test_points_clock_resources_and_pareto(tmp_path):
    points, meta = sweep(_args("--program", _program(tmp_path), "--rows", "4", "8", "16", "--cols", "4", "8"))
    assert meta["points"] == len(points) == 6 and meta["feasible"] == 6
    by = {(p.rows, p.cols): p.row for p in points}
    # 8x8 w4a4 is synthesized: measured clock and resources; the others are modelled, and marked
    rec = R.load_table().lookup(8, 8, 4, 4)           # the recorded run (sim/perf/synth_table.json)
    assert by[(8, 8)]["clock_source"] == "measured" and by[(8, 8)]["fmax_mhz"] == rec.fmax_mhz
    assert by[(8, 8)]["resource_source"] == "measured" and by[(8, 8)]["TRELLIS_COMB"] == rec.values["TRELLIS_COMB"]
    assert {by[k]["clock_source"] for k in by if k != (8, 8)} == {"modelled"}
    for k in by:   # measured exactly where the recorded table holds the configuration (16 x 8 since session 28)
        assert by[k]["resource_source"] == ("measured" if R.load_table().lookup(*k, 4, 4) else "model"), k
    for r in by.values():
        assert math.isclose(r["latency_ms"], r["cycles"] / (r["fmax_mhz"] * 1e3), rel_tol=1e-12)
        assert math.isclose(r["inferences_per_s"], 1e3 * r["batch"] / r["latency_ms"], rel_tol=1e-12)
        assert 0 < r["utilisation"] <= 1 and r["dram_bytes"] > 0 and r["fits"] in (True, False)
    # Pareto front by brute force: no other point is at least as good in both and better in one
    for p in points:
        a = p.row
        dominated = any(q.row["latency_ms"] <= a["latency_ms"] and q.row["TRELLIS_COMB"] <= a["TRELLIS_COMB"]
                        and (q.row["latency_ms"], q.row["TRELLIS_COMB"]) != (a["latency_ms"], a["TRELLIS_COMB"])
                        for q in points)
        assert a["pareto"] == (not dominated), (p.rows, p.cols)


def test_freq_sram_bandwidth_and_batch_axes(tmp_path):
    points, _ = sweep(_args("--program", _program(tmp_path), "--rows", "8", "--cols", "8", "--freq", "50",
                            "--sram-kib", "64", "256", "--dram-bw", "1", "64", "--batch", "1", "2"))
    assert len(points) == 8
    assert {p.row["clock_source"] for p in points} == {"given"} and {p.row["fmax_mhz"] for p in points} == {50.0}
    row = {(p.sram_kib, p.dram_bw, p.batch): p.row for p in points}
    # a narrower DRAM link can only add stall cycles; batch 2 doubles the rows of the linear layers
    assert row[(256, 1, 1)]["cycles"] >= row[(256, 64, 1)]["cycles"]
    assert row[(256, 64, 2)]["cycles"] > row[(256, 64, 1)]["cycles"]
    # the SRAM beyond the engine's B banks is counted in BRAM
    assert row[(256, 64, 1)]["BRAM_total"] > row[(64, 64, 1)]["BRAM_total"]


def test_requant_share_axis(tmp_path, capsys):
    """Shared requantisers: the drain takes S cycles a row (cycles from sim.schedule, never fewer), the
    resources are the shared build's (looked up or modelled as the unshared build less the saving per
    shared-away column, docs/estimator.md); an S that does not divide the columns is not estimable."""
    from vitaccel.sim.perf.estimate import Hardware, estimate
    from vitaccel.sim.perf.program import load_program_gemms

    prog = _program(tmp_path)
    points, meta = sweep(_args("--program", prog, "--rows", "8", "--cols", "4", "8", "--requant-share", "1", "2", "8"))
    by = {(p.cols, p.requant_share): p.row for p in points}
    assert len(points) == 6 and not by[(4, 8)]["feasible"] and "requant_share" in by[(4, 8)]["reason"]
    gemms, _ = load_program_gemms(prog)
    for (c, s), r in by.items():
        if not r["feasible"]:
            continue
        want = estimate(gemms, Hardware(rows=8, cols=c, freq=1e6, requant_share=s), model="toy").summary()["cycles"]
        assert r["cycles"] == want and r["requant_share"] == s
        base = by[(c, 1)]
        assert r["cycles"] >= base["cycles"]
        if s > 1:
            expect = R.engine_resources(8, c, 4, 4, cfg=dict(rows=8, cols=c, requant_share=s))
            assert r["TRELLIS_COMB"] == expect.values["TRELLIS_COMB"] < base["TRELLIS_COMB"]
    with pytest.raises(UserError, match="--requant-share: give powers of two"):
        sweep(_args("--program", prog, "--rows", "8", "--cols", "8", "--requant-share", "3"))
    assert main(["explore", "--program", prog, "--rows", "8", "--cols", "8", "--requant-share", "1", "2", "--all"]) == 0
    out = capsys.readouterr().out
    assert "8x8 program s1" in out and "8x8 program s2" in out


def test_outputs_csv_json_png(tmp_path, capsys):
    c, j, png = tmp_path / "x.csv", tmp_path / "x.json", tmp_path / "x.png"
    assert main(["explore", "--program", _program(tmp_path), "--rows", "4", "8", "--cols", "4", "8",
                 "--csv", str(c), "--json", str(j), "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    assert "Pareto front" in out and "4 configurations, 4 estimable" in out
    rows = list(csv.DictReader(c.open()))
    assert len(rows) == 4 and list(rows[0]) == list(COLUMNS)
    doc = json.loads(j.read_text())
    assert len(doc["points"]) == 4 and doc["pareto"] == [p for p in doc["points"] if p["pareto"]]
    assert doc["summary"]["device"] == "LFE5U-85F" and doc["sweep"]["rows"] == ["4", "8"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20000


def test_empty_and_impossible_sweeps(tmp_path, capsys):
    prog = _program(tmp_path)
    with pytest.raises(UserError, match="empty sweep"):
        sweep(_args("--program", prog, "--rows", "64..4"))
    with pytest.raises(UserError, match="empty sweep.*--square"):
        sweep(_args("--program", prog, "--rows", "4", "--cols", "8", "--square"))
    with pytest.raises(UserError, match="impossible sweep.*rows must be in 1..64"):
        sweep(_args("--program", prog, "--rows", "128", "--cols", "8"))
    with pytest.raises(UserError, match="impossible sweep: none of the 1"):
        sweep(_args("--program", prog, "--rows", "8", "--cols", "8", "--sram-kib", "1"))
    with pytest.raises(UserError, match="--bits does not apply"):
        sweep(_args("--program", prog, "--bits", "w4a4"))
    with pytest.raises(UserError, match="exactly one"):
        sweep(_args())
    assert main(["explore", "--program", prog, "--rows", "128", "--cols", "8"]) == 2
    assert "vitaccel explore: error: impossible sweep" in capsys.readouterr().err
    assert main(["explore", "--program", prog, "--device", "XC7"]) == 2
    assert "unknown --device" in capsys.readouterr().err


def test_model_sweep_over_bit_widths():
    points, meta = sweep(_args("--model", "deit_tiny_patch16_224", "--rows", "8", "--cols", "8", "--bits", "w4a4",
                               "w8a8"))
    by = {p.bits: p.row for p in points}
    # --edge-bits same (default): each point is the engine build of its own width, measured when the
    # recorded table (sim/perf/synth_table.json) has a placed run of it, else modelled
    table = R.load_table()
    for bits, k in (("w4a4", 4), ("w8a8", 8)):
        rec = table.lookup(8, 8, k, k)
        placed = rec is not None and rec.fmax_mhz is not None
        assert (by[bits]["a_bits"], by[bits]["b_bits"]) == (k, k)
        assert by[bits]["clock_source"] == ("measured" if placed else "modelled")
        assert by[bits]["resource_source"] == ("measured" if rec is not None else "model")
    assert by["w8a8"]["dram_bytes"] > by["w4a4"]["dram_bytes"]
    assert meta["model"] == "deit_tiny_patch16_224"
