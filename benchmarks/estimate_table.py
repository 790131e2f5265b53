"""Markdown table of whole-model estimates (docs/estimator.md): models x bit settings x array sizes.

Run:  .venv/bin/python benchmarks/estimate_table.py [--freq 200 --dram-bw 16 --sram-kib 256]

Each row is exactly what ``vitaccel estimate --model M --bits B --rows R --cols R --freq F --dram-bw W
--sram-kib S`` reports (engine dataflow, batch 1, patch embedding and head at 8 bits, no outliers).
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

MODELS = ("deit_tiny_patch16_224", "deit_small_patch16_224", "vit_base_patch16_224")
BITS = ("w4a4", "w6a6", "w8a8")
ARRAYS = (16, 32)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--freq", type=float, default=200.0, help="clock in MHz (default 200)")
    ap.add_argument("--dram-bw", type=float, default=16.0)
    ap.add_argument("--sram-kib", type=float, default=256.0)
    ap.add_argument("--dataflow", default="engine")
    args = ap.parse_args()
    from vitaccel.sim.perf.estimate import Hardware, estimate
    from vitaccel.sim.perf.shapes import trace_gemms

    print("| model | bits | array | cycles | stall | latency (ms) | inf/s | MAC util | DRAM MiB | "
          "weights MiB | mem-bound layers |")
    print("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for m in MODELS:
        for b in BITS:
            g = trace_gemms(m, 1, b)
            for r in ARRAYS:
                hw = Hardware(rows=r, cols=r, freq=args.freq * 1e6, dram_bw=args.dram_bw, sram_kib=args.sram_kib,
                              dataflow=args.dataflow)
                e = estimate(g, hw, model=m, bits=b)
                s = e.summary()
                print(f"| {m} | {b.upper()} | {r}x{r} | {s['cycles']:,} | {s['stall_cycles']:,} | "
                      f"{s['latency_ms']:.2f} | {s['inferences_per_s']:.1f} | {100 * s['utilisation']:.1f} % | "
                      f"{s['dram_bytes'] / 2**20:.2f} | {s['weight_bytes'] / 2**20:.2f} | "
                      f"{s['memory_bound_layers']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
