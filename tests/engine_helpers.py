"""Helpers of the layer engine's RTL tests (``test_rtl_engine*.py``): build the engine (cached), run the
cocotb bench (tb/cocotb_engine.py) on a list of cases, and give a case its stream timing."""
from __future__ import annotations

import json
from pathlib import Path

from vitaccel.hw.engine import build_engine
from vitaccel.sim.engine_config import EngineConfig
from vitaccel.tb.runner import run_cocotb, verilog_for


def run(cfg: EngineConfig, cases: list[dict], tmp_path, seed: int = 0, platform=None) -> list[dict]:
    v = verilog_for(build_engine, "layer_engine", cfg.to_dict(), platform=platform)
    sources = [v]
    if platform is not None:         # the ECP5 form instantiates MULT18X18D, TRELLIS_FF, DP16KD: add the project's models
        import vitaccel.tb as tbpkg
        text = v.read_text()
        assert "MULT18X18D" in text and "TRELLIS_FF" in text and "DP16KD" in text
        sources += [Path(tbpkg.__file__).parent / "csrc" / f for f in ("mult18x18d_model.v", "trellis_ff_model.v", "dp16kd_model.v")]
    report = tmp_path / "cycles.json"
    run_cocotb("layer_engine", sources, "vitaccel.tb.cocotb_engine", seed=seed,
               data={"cols": cfg.cols, "seed": seed, "cases": cases, "report": str(report)})
    res = json.loads(report.read_text())
    assert len(res) == len(cases)
    for r, c in zip(res, cases):  # the checker asserted this; keep it visible in the pytest report too
        assert r["cycles"] == c["cycles"]
    return res


def bp(case: dict, vp: float, rp: float, reset_after: int | None = None) -> dict:
    case["valid_prob"], case["ready_prob"] = vp, rp
    if reset_after:
        case["reset_after"] = reset_after
    return case
