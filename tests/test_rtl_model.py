"""A whole model through the RTL: ``vitaccel tb model`` on the embedded digits model.

The session fixture ``digits_golden`` (tests/conftest.py) calibrates ``vitaccel-digits`` (ADFQ W4A4,
POQ outliers, Shift-Log2) and exports golden vectors of one image.  ``vitaccel tb model`` then runs
every GEMM of that image -- patch embedding, q/k/v, 4 x (qk, av) heads, proj, fc1, fc2 per block,
head: 58 layers -- through the 4 x 4 accelerator top (:data:`tb.accel_bench.SMALL_ACCEL`, the build
tests/test_accelerator.py uses).  Checks: every output element equals the golden ``out``, every
layer's RTL cycles equal ``vitaccel estimate --dataflow accelerator`` and its engine cycles
``sim/schedule.py``, the bytes logged on the AXI port equal the estimator's per operand.

A second test checks the command's clear errors (no Verilator build).
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from vitaccel.cli import main as vitaccel
from vitaccel.golden.golden_vectors import load_golden
from vitaccel.sim import reference as ref
from vitaccel.sim.schedule import layer_cycles
from vitaccel.tb.accel_bench import SMALL_ACCEL


def small_accel_flags(cfg=SMALL_ACCEL) -> list[str]:
    """``vitaccel tb model`` flags that select :data:`SMALL_ACCEL` (so the test reuses its build)."""
    e = cfg.engine
    return ["--rows", str(e.rows), "--cols", str(e.cols), "--bits", f"w{e.b_bits}a{e.a_bits}",
            "--acc-bits", str(e.acc_bits), "--outlier-capacity", str(e.outlier_capacity),
            "--outlier-lanes", str(e.outlier_lanes), "--max-k", str(e.max_k), "--bus-bits", str(cfg.bus_bits),
            "--mem-latency", str(cfg.mem_latency), "--a-buf-words", str(cfg.a_buf_words),
            "--b-buf-words", str(cfg.b_buf_words), "--outl-buf-words", str(cfg.outl_buf_words),
            "--rowp-buf-beats", str(cfg.rowp_buf_beats), "--colp-buf-beats", str(cfg.colp_buf_beats)]


@pytest.mark.slow
def test_digits_model_through_the_rtl_top(tmp_path, digits_golden):
    prog, golden = digits_golden
    out = tmp_path / "model.json"
    rc = vitaccel(["tb", "model", "--program", prog, "--golden", golden, "--image", "0", "--no-progress",
                   "--json", str(out), "--markdown", str(tmp_path / "model.md"), *small_accel_flags()])
    rep = json.loads(out.read_text())
    assert rc == 0
    vec = load_golden(golden)
    assert [c["name"] for c in rep["layers"]] == list(vec)          # every GEMM record, in order
    ops = {vec[c["name"]]["spec"].op for c in rep["layers"]}
    assert ops == {"linear", "qk", "av"}
    assert any(c["outliers"] for c in rep["layers"])                # the POQ outlier path is exercised
    assert rep["all_exact"] and rep["cycles_match"] and rep["bytes_match"]
    e = SMALL_ACCEL.engine
    for c in rep["layers"]:
        assert c["exact"] and c["status_ok"] and not c["flags"], c["name"]
        assert c["rtl_cycles"] == c["estimate_cycles"], c["name"]
        assert c["bytes"] == c["estimate_bytes"], c["name"]
        M, K, N = c["shape"]
        o = np.asarray(vec[c["name"]]["outliers"][0], np.int64).reshape(-1, 3)
        counts = [int(x) for x in ref.outliers_per_tile(o, M, e.rows)] if len(o) else 0
        assert c["engine_cycles"] == layer_cycles(e, M, K, N, counts).total, c["name"]
        assert c["stall_cycles"] == c["rtl_cycles"] - c["engine_cycles"] > 0, c["name"]
    assert rep["total_cycles"] == sum(c["rtl_cycles"] for c in rep["layers"])
    assert rep["sim_cycles_per_second"] > 0
    assert "| head |" in (tmp_path / "model.md").read_text()


@pytest.mark.slow
def test_tb_model_errors(tmp_path, digits_golden, monkeypatch, capsys):
    """Clear errors: a layer larger than a buffer (named, with the limit), golden vectors of another
    program, no Verilator."""
    prog, golden = digits_golden
    flags = small_accel_flags(SMALL_ACCEL.replace(b_buf_words=8))
    assert vitaccel(["tb", "model", "--program", prog, "--golden", golden, "--no-progress", *flags]) == 2
    err = capsys.readouterr().err
    assert "b_buf_words = 8" in err and "--b-buf-words" in err

    flags = small_accel_flags(SMALL_ACCEL.replace(engine=SMALL_ACCEL.engine.replace(max_k=32)))
    assert vitaccel(["tb", "model", "--program", prog, "--golden", golden, "--no-progress", *flags]) == 2
    assert "max_k = 32" in capsys.readouterr().err

    other = tmp_path / "other"
    assert vitaccel(["calibrate", "--model", "vitaccel-digits", "--data", "embedded:digits", "--method", "baseline",
                     "--bits", "w8a8", "--calib-size", "2", "--batch-size", "2", "--workers", "0",
                     "-o", str(other)]) == 0
    capsys.readouterr()
    assert vitaccel(["tb", "model", "--program", str(other), "--golden", golden, "--no-progress",
                     *small_accel_flags()]) == 2
    assert "exported from another program" in capsys.readouterr().err

    import vitaccel.tb.accel_bench as bench
    from vitaccel.tb.runner import VerilatorNotFoundError

    def no_verilator():
        raise VerilatorNotFoundError("Verilator not found: install ...")
    monkeypatch.setattr(bench, "verilator_bin_dir", no_verilator)
    monkeypatch.setenv("VITACCEL_BUILD_DIR", str(tmp_path / "empty_build"))
    assert vitaccel(["tb", "model", "--program", prog, "--golden", golden, "--no-progress",
                     *small_accel_flags()]) == 2
    assert "Verilator not found" in capsys.readouterr().err


@pytest.mark.slow
def test_tb_model_reports_the_first_mismatch(tmp_path, digits_golden):
    """A golden vector changed in one element: the run fails (exit 1) and reports exactly that
    element as the first mismatch (layer, row, column, expected, got)."""
    import shutil

    prog, golden = digits_golden
    bad = tmp_path / "golden_bad"
    shutil.copytree(golden, bad)
    with np.load(bad / "vectors.npz") as z:
        arrays = {k: z[k] for k in z.files}
    layer, row, col = "blocks.1.mlp.fc1", 5, 77
    good = int(arrays[f"{layer}/out"][0, row, col])
    arrays[f"{layer}/out"][0, row, col] = good + 1
    np.savez_compressed(bad / "vectors.npz", **arrays)
    out = tmp_path / "model.json"
    rc = vitaccel(["tb", "model", "--program", prog, "--golden", str(bad), "--no-progress", "--json", str(out),
                   *small_accel_flags()])
    rep = json.loads(out.read_text())
    assert rc == 1 and not rep["all_exact"] and rep["cycles_match"]
    assert rep["first_mismatch"] == {"layer": layer, "row": row, "column": col, "expected": good + 1, "got": good,
                                     "elements": 1}
    assert [c["name"] for c in rep["layers"] if not c["exact"]] == [layer]
