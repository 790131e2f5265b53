"""Greedy MP on DeiT-tiny (after SQ-b): per-layer SQNR and the allocation for a target width.

Usage (repository root; needs ../shared)::

    .venv/bin/python benchmarks/greedy_mp_deit_tiny.py --calib 32 --target 6.0

Prints JSON: the allocation (layer -> bits), its numel-weighted average, the greedy steps with
their scores, and the wall-clock / CPU time of building the SQNR table.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from vitaccel.golden.data import loader, subset
from vitaccel.golden.mixed_precision import average_bits, greedy_mixed_precision, linear_layers, linear_output_sqnr_fn
from shared_data import deit_tiny_and_dev
from vitaccel.golden.smoothquant import smoothquant_bias


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared"))
    ap.add_argument("--calib", type=int, default=32)
    ap.add_argument("--target", type=float, default=6.0)
    ap.add_argument("--no-sq", action="store_true", help="skip SQ-b")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model, ds = deit_tiny_and_dev(args.shared)
    ds = subset(ds, args.calib)
    calib = torch.cat([x for x, _ in loader(ds, batch_size=16, workers=0)])
    if not args.no_sq:
        smoothquant_bias(model, calib, progress=False)
    layers = linear_layers(model)
    t0, c0 = time.time(), time.process_time()
    fn = linear_output_sqnr_fn(model, calib, progress=False)
    table = {n: {b: round(fn(n, b), 2) for b in (6, 4)} for n in layers}
    t_tab, c_tab = time.time() - t0, time.process_time() - c0
    trace = []
    alloc = greedy_mixed_precision(layers, lambda n, b: table[n][b], args.target, trace=trace)
    print(json.dumps({
        "target": args.target, "smoothquant": not args.no_sq, "calib": args.calib,
        "average_bits": average_bits(alloc, layers),
        "count_by_bits": {b: sum(1 for v in alloc.values() if v[0] == b) for b in (8, 6, 4)},
        "allocation": {n: v[0] for n, v in alloc.items()},
        "sqnr_db": table,
        "steps": [(n, b, round(s, 1)) for n, b, s in trace],
        "sqnr_table_seconds": round(t_tab, 1), "sqnr_table_cpu_seconds": round(c_tab, 1),
    }, indent=1))


if __name__ == "__main__":
    main()
