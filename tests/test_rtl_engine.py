"""RTL tests of the layer engine (Amaranth -> Verilog -> Verilator -> cocotb, tb/cocotb_engine.py).

Expected outputs come from ``sim/reference.py`` and expected cycle counts from ``sim/schedule.py``;
the cocotb checker asserts exact rows, ``cycles == layer_cycles(...).total`` and the error flags
for every case.  Two small engines are built (max widths, run-time format / width config); the
16-column engine is in tests/test_rtl_engine_wide.py, the helpers in tests/engine_helpers.py.
"""
from __future__ import annotations

import numpy as np
import pytest
from engine_helpers import bp as _bp
from engine_helpers import run as _run

from vitaccel.sim.engine_config import EngineConfig
from vitaccel.tb.engine_streams import SMALL_ENGINE, SMALL_ENGINE_2X3, random_layer

CFG_A = SMALL_ENGINE
CFG_B = SMALL_ENGINE_2X3


@pytest.mark.slow
def test_engine_formats_outliers_backpressure(tmp_path):
    """4x4 engine, L = 2: every A format and width, tiles that do not divide the array, zero / full /
    over-capacity outlier loads, all output formats, random back-pressure and a mid-stream reset."""
    cfg = CFG_A
    rng = np.random.default_rng(1)
    cases = []
    # every A code type at 4/6/8 bits (log2 ZERO codes, three_region negative/R1/R2 included)
    for kind, bits, base in [("uniform", 4, "2"), ("uniform", 6, "2"), ("uniform", 8, "2"),
                             ("log2", 4, "2"), ("log2", 6, "2"), ("log2", 8, "2"),
                             ("shiftlog2", 4, "2"), ("shiftlog2", 6, "sqrt2"), ("shiftlog2", 8, "sqrt2"),
                             ("three_region", 4, "2"), ("three_region", 6, "2"), ("three_region", 8, "2")]:
        cases.append(_bp(random_layer(cfg, rng, 5, 9, 6, a_kind=kind, a_bits=bits, b_bits=bits, base=base),
                         0.8, 0.8))
    # output formats
    for fmt, ob in [("ucode", 4), ("scode", 6), ("fixed16", 16), ("ucode", 8)]:
        cases.append(_bp(random_layer(cfg, rng, 7, 11, 5, out_fmt=fmt, out_bits=ob, a_bits=6, b_bits=6), 0.7, 0.6))
    # outliers: zero, full capacity (6 per row tile), over capacity (flag, still exact), lanes partly used
    cases.append(_bp(random_layer(cfg, rng, 8, 12, 4, fo=2, outliers_per_tile=0), 0.9, 0.9))
    cases.append(_bp(random_layer(cfg, rng, 8, 12, 8, fo=2, outliers_per_tile=6), 0.7, 0.7))
    cases.append(_bp(random_layer(cfg, rng, 6, 5, 5, fo=2, outliers_per_tile=[3, 5]), 1.0, 1.0))
    cases.append(_bp(random_layer(cfg, rng, 4, 10, 4, fo=2, outliers_per_tile=7), 1.0, 1.0))
    # small K (window stretched by the drain), K = 1
    cases.append(_bp(random_layer(cfg, rng, 9, 2, 6), 1.0, 1.0))
    cases.append(_bp(random_layer(cfg, rng, 3, 1, 2), 0.6, 0.5))
    # a larger layer with a reset in the middle of its streams, then the same layer again
    cases.append(_bp(random_layer(cfg, rng, 13, 40, 10, fo=2, outliers_per_tile=4), 0.7, 0.7, reset_after=150))
    res = _run(cfg, cases, tmp_path, seed=3)
    assert res[-1]["cycles"] == cases[-1]["cycles"]


@pytest.mark.slow
def test_engine_2x3_single_lane(tmp_path):
    """2x3 engine, one outlier lane: odd shapes, per-tensor and per-patch A, ideal and random streams."""
    cfg = CFG_B
    rng = np.random.default_rng(2)
    cases = [
        _bp(random_layer(cfg, rng, 1, 1, 1), 1.0, 1.0),
        _bp(random_layer(cfg, rng, 2, 3, 3, per_patch=False), 1.0, 1.0),
        _bp(random_layer(cfg, rng, 5, 7, 8, a_kind="log2", a_bits=4, b_bits=4, out_fmt="ucode", out_bits=4), 0.5, 0.5),
        _bp(random_layer(cfg, rng, 7, 13, 4, fo=2, outliers_per_tile=3), 0.8, 0.7),
        _bp(random_layer(cfg, rng, 4, 6, 7, a_kind="three_region", a_bits=6, b_bits=4), 0.9, 0.4),
        _bp(random_layer(cfg, rng, 3, 25, 3, a_kind="shiftlog2", a_bits=8, b_bits=8, base="sqrt2",
                         out_fmt="scode", out_bits=8), 1.0, 1.0),
    ]
    _run(cfg, cases, tmp_path, seed=5)


@pytest.mark.slow
def test_engine_ecp5_form(tmp_path):
    """The ECP5 form of the 2x3 engine (registered MULT18X18D blocks in the requantisers and the drain,
    the B buffer without the collision check; what hw synth builds) with tb/csrc/mult18x18d_model.v:
    exact rows and cycles, with outliers and random streams."""
    from vitaccel.hw.dsp import ECP5_DSP

    cfg = CFG_B
    rng = np.random.default_rng(9)
    cases = [
        _bp(random_layer(cfg, rng, 7, 13, 4, fo=2, outliers_per_tile=3), 0.8, 0.7),
        _bp(random_layer(cfg, rng, 5, 7, 8, a_kind="log2", a_bits=4, b_bits=4, out_fmt="ucode", out_bits=4), 0.6, 0.5),
        _bp(random_layer(cfg, rng, 3, 25, 3, a_kind="shiftlog2", a_bits=8, b_bits=8, base="sqrt2",
                         out_fmt="scode", out_bits=8), 1.0, 1.0),
    ]
    _run(cfg, cases, tmp_path, seed=11, platform=ECP5_DSP)


@pytest.mark.slow
@pytest.mark.parametrize("share", [2, 4])
def test_engine_shared_requantisers(tmp_path, share):
    """3 x 4 engine with ``requant_share`` 2 / 4 (2 / 1 requantisers, the drain takes ``share`` cycles a
    row): exact rows, and cycles equal the schedule's stretched windows (small K) under back-pressure,
    with outliers on two lanes (corrections cleared with the last column group) and a mid-stream reset."""
    cfg = EngineConfig(rows=3, cols=4, a_bits=8, b_bits=8, acc_bits=40, outlier_capacity=5, outlier_lanes=2,
                       max_k=32, requant_share=share)
    rng = np.random.default_rng(10 + share)
    cases = [
        _bp(random_layer(cfg, rng, 1, 1, 1), 1.0, 1.0),
        _bp(random_layer(cfg, rng, 7, 2, 9), 1.0, 1.0),                       # K < share * rows: drain-bound
        _bp(random_layer(cfg, rng, 8, 20, 7, a_kind="log2", a_bits=4, b_bits=4, out_fmt="ucode", out_bits=4),
            0.6, 0.5),
        _bp(random_layer(cfg, rng, 7, 13, 6, fo=2, outliers_per_tile=[2, 5, 0]), 0.8, 0.7),
        _bp(random_layer(cfg, rng, 6, 5, 5, fo=2, outliers_per_tile=4), 1.0, 1.0),   # outliers stretch windows
        _bp(random_layer(cfg, rng, 5, 9, 8, a_kind="three_region", a_bits=6, b_bits=6, out_fmt="scode", out_bits=6),
            0.9, 0.4),
        _bp(random_layer(cfg, rng, 10, 30, 10, fo=2, outliers_per_tile=3), 0.7, 0.7, reset_after=120),
        _bp(random_layer(cfg, rng, 10, 30, 10, fo=2, outliers_per_tile=3), 0.7, 0.7),
    ]
    res = _run(cfg, cases, tmp_path, seed=7)
    # the shared drain is visible in the count: a K = 2 layer costs more cycles than with one
    # requantiser per column (same layer, model of the unshared engine)
    from vitaccel.sim.schedule import layer_cycles
    plain = EngineConfig(**{**cfg.to_dict(), "requant_share": 1})
    assert res[1]["cycles"] > layer_cycles(plain, 7, 2, 9).total
