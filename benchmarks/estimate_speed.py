"""Speed of ``vitaccel estimate`` on deit_base_patch16_224 (target: whole-model estimate < 1 s).

Run:  .venv/bin/python benchmarks/estimate_speed.py [--model NAME] [--repeat N]

Prints the one-off import time of torch + timm, the time of the first (cold) estimate, which traces the
model on the meta device, and the best of ``--repeat`` further estimates (warm: trace cached, cycle model
memoized per shape), for the engine model and the SCALE-Sim OS model. No weights are loaded.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="deit_base_patch16_224")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()

    t0 = time.perf_counter()
    import timm  # noqa: F401
    import torch  # noqa: F401
    t_import = time.perf_counter() - t0

    from vitaccel.sim.perf import engine
    from vitaccel.sim.perf.estimate import Hardware, estimate
    from vitaccel.sim.perf.shapes import _trace_raw, trace_gemms

    hw = Hardware(rows=16, cols=16, freq=200e6, dram_bw=16, sram_kib=512)

    def run(dataflow: str):
        g = trace_gemms(args.model, 1, "w4a4")
        return estimate(g, Hardware(**{**hw.__dict__, "dataflow": dataflow}), model=args.model, bits="w4a4")

    t0 = time.perf_counter()
    est = run("engine")
    t_cold = time.perf_counter() - t0
    warm = []
    for _ in range(args.repeat):
        _trace_raw.cache_clear()
        engine.layer_cycles.cache_clear()
        t0 = time.perf_counter()
        run("engine")
        warm.append(time.perf_counter() - t0)
    cached = []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        run("engine")
        cached.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    run("os")
    t_os = time.perf_counter() - t0
    print(f"model {args.model}: {len(est.layers)} GEMM layers, {est.macs / 1e9:.2f} GMAC, {est.cycles:,} cycles")
    print(f"import torch+timm (one-off)           : {t_import:.2f} s")
    print(f"first estimate (timm model build+trace): {t_cold:.3f} s")
    print(f"estimate, trace + cycle caches cleared : best {min(warm):.3f} s of {args.repeat}")
    print(f"estimate, trace cached                 : best {min(cached) * 1e3:.1f} ms of {args.repeat}")
    print(f"estimate --dataflow os, trace cached   : {t_os * 1e3:.1f} ms")
    ok = min(warm) < 1.0
    print(f"target < 1 s (uncached trace + estimate): {'met' if ok else 'MISSED'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
