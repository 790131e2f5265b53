"""Measured RTL cycle records of the layer engine, for the estimator's replay test.

Runs layers on the 4 x 4 RTL layer engine of the RTL tests (:data:`tb.engine_streams.SMALL_ENGINE`,
Verilator + cocotb, random valid/ready back-pressure): golden-vector layers of the embedded
``vitaccel-digits`` model (calibrated with ADFQ-ViT through the CLI, with their real per-tile
outlier counts) and random layers with odd shapes and zero / full / over-capacity outlier loads.
Every output row is checked against ``sim/reference.py`` and every cycle counter against
``sim/schedule.py`` by the testbench; the measured counters are written as records
``{name, rows, cols, ..., M, K, N, cycles, outliers_per_tile}`` that ``tests/test_estimate.py``
(``test_replay_measured_rtl_cycles``) replays through ``sim.perf.estimate_layer``.

Usage::

    .venv/bin/python benchmarks/engine_cycles.py -o docs/engine_cycles_measured.json
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vitaccel.cli import main as vitaccel
from vitaccel.hw.engine import build_engine
from vitaccel.tb.cli import cycle_record, run_golden_layers
from vitaccel.tb.engine_streams import SMALL_ENGINE, random_layer
from vitaccel.tb.runner import run_cocotb, verilog_for

GOLDEN_LAYERS = ["blocks.0.mlp.fc1", "blocks.0.attn.q", "blocks.0.attn.proj", "blocks.0.attn.qk.h0",
                 "blocks.0.attn.av.h0", "blocks.1.attn.qk.h2", "blocks.1.attn.av.h2"]
#: (M, K, N, outliers per row tile) of the random layers
RANDOM_LAYERS = [(17, 64, 24, [0, 2, 6, 1, 7]), (9, 2, 6, 0), (13, 40, 10, 4), (5, 1, 3, 0), (8, 12, 8, 6)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-o", "--output", type=Path, default=Path("docs/engine_cycles_measured.json"))
    args = ap.parse_args(argv)
    cfg = SMALL_ENGINE
    records = []
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        rc = vitaccel(["calibrate", "--model", "vitaccel-digits", "--data", "embedded:digits", "--method", "adfq",
                       "--no-amo", "--bits", "w4a4", "--calib-size", "4", "--batch-size", "4", "--workers", "0",
                       "--alpha-qkv", "3", "--alpha-fc1", "3", "--outlier-capacity", "16", "-o", str(tmp / "prog")])
        rc = rc or vitaccel(["export-golden", "--program", str(tmp / "prog"), "--data", "embedded:digits", "--images", "1",
                             "--workers", "0", "-o", str(tmp / "vec")])
        if rc:
            return rc
        for res in run_golden_layers(str(tmp / "vec"), GOLDEN_LAYERS, cfg=cfg, valid_prob=0.8, ready_prob=0.8):
            records.append(dict(res["record"], source="golden vitaccel-digits adfq w4a4 (no AMO), image 0"))
        rng = np.random.default_rng(11)
        cases = []
        for M, K, N, o in RANDOM_LAYERS:
            cases.append(random_layer(cfg, rng, M, K, N, a_bits=4, b_bits=4, fo=2 if np.any(o) else 0,
                                      outliers_per_tile=o))
            cases[-1].update(valid_prob=0.7, ready_prob=0.7)
        rep = tmp / "random.json"
        run_cocotb("layer_engine", [verilog_for(build_engine, "layer_engine", cfg.to_dict())], "vitaccel.tb.cocotb_engine",
                   seed=11, data={"cols": cfg.cols, "seed": 11, "cases": cases, "report": str(rep)})
        for (M, K, N, o), res in zip(RANDOM_LAYERS, json.loads(rep.read_text())):
            records.append(dict(cycle_record(cfg, res["shape"], res["cycles"], o, name=res["name"]),
                                source="random layer, tb/engine_streams.random_layer"))
    doc = {"description": "cycle counter of the RTL layer engine (Verilator), measured; every layer's "
                          "outputs were exact vs sim/reference.py and its counter equal to sim/schedule.py",
           "command": ".venv/bin/python benchmarks/engine_cycles.py -o " + str(args.output),
           "records": records}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(doc, indent=1) + "\n")
    for r in records:
        print(f"{r['name']:40s} {r['M']:4d} x {r['K']:4d} x {r['N']:4d}  outliers {r['outliers_per_tile']}: "
              f"{r['cycles']} cycles")
    print(f"{len(records)} records -> {args.output} ({time.monotonic() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
