"""MAC utilisation and simulation speed of the RTL layer engine, measured from its cycle counter.

Runs random W4A4 uniform layers of DeiT shapes on a Verilator build of the engine (ideal streams),
checks every output row against sim/reference.py and the counter against sim/schedule.py, and
prints cycles, MAC utilisation = M*K*N / (cycles * R * C) and simulated cycles per second.

Usage::

    .venv/bin/python benchmarks/rtl_utilisation.py [--rows 16 --cols 16] [--layers deit]
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

from vitaccel.sim.engine_config import EngineConfig
from vitaccel.hw.engine import build_engine
from vitaccel.tb.engine_streams import random_layer
from vitaccel.tb.runner import run_cocotb, verilog_for

LAYERS = {"qkv_197x192x576": (197, 192, 576), "fc2_197x768x192": (197, 768, 192)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=16)
    ap.add_argument("--cols", type=int, default=16)
    ap.add_argument("--layers", nargs="*", default=list(LAYERS), choices=list(LAYERS))
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args(argv)
    cfg = EngineConfig(rows=args.rows, cols=args.cols, a_bits=4, b_bits=4, acc_bits=24, outlier_capacity=8,
                       outlier_lanes=1, max_k=768)
    rng = np.random.default_rng(0)
    cases = []
    for name in args.layers:
        M, K, N = LAYERS[name]
        c = random_layer(cfg, rng, M, K, N, a_kind="uniform", a_bits=4, b_bits=4, out_fmt="ucode", out_bits=4,
                         name=name)
        cases.append(c)
    t0 = time.monotonic()
    v = verilog_for(build_engine, "layer_engine", cfg.to_dict())
    with tempfile.TemporaryDirectory() as tmp:
        rep = Path(tmp) / "r.json"
        # build (cached) and warm up on a tiny layer so the timed run excludes the build
        run_cocotb("layer_engine", [v], "vitaccel.tb.cocotb_engine",
                   data={"cols": cfg.cols, "cases": [random_layer(cfg, rng, 2, 2, 2, a_bits=4, b_bits=4)], "report": str(rep)})
        t_build = time.monotonic() - t0
        t1 = time.monotonic()
        run_cocotb("layer_engine", [v], "vitaccel.tb.cocotb_engine",
                   data={"cols": cfg.cols, "cases": cases, "report": str(rep)})
        t_sim = time.monotonic() - t1
        res = json.loads(rep.read_text())
    total_cycles = sum(r["wall_cycles"] for r in res)
    print(f"engine {cfg.rows}x{cfg.cols} W4A4 (build + warm-up {t_build:.0f} s)")
    for r, c in zip(res, cases):
        M, K, N = r["shape"]
        util = M * K * N / (r["cycles"] * cfg.rows * cfg.cols)
        print(f"  {r['name']}: {r['cycles']} cycles (sim/schedule.py {c['cycles']}), "
              f"MAC utilisation {util:.4f}, {r['rows']} rows exact")
        r["utilisation"] = util
    print(f"  Verilator + cocotb: {total_cycles} cycles in {t_sim:.1f} s = {total_cycles / t_sim:.0f} cycles/s "
          f"(including cocotb stream drivers and checking)")
    if args.json:
        args.json.write_text(json.dumps({"config": cfg.to_dict(), "layers": res, "sim_s": t_sim,
                                         "cycles_per_s": total_cycles / t_sim}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
