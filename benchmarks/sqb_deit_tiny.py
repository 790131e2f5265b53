"""SQ-b on the real DeiT-tiny checkpoint: FP equivalence, guarded channels, post-LN asymmetry.

Usage (repository root; needs ../shared)::

    .venv/bin/python benchmarks/sqb_deit_tiny.py --calib 32 --test 16

Prints JSON: max |logit difference| before/after SQ-b on held-out images, top-1 agreement, the
number of channels forced to eps = 1 (LayerNorm gamma == 0 and other guards) and, averaged over the
qkv/fc1 inputs, the per-channel asymmetry |mean| / (max - min) before and after (constant channels excluded).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from vitaccel.golden.data import loader, subset
from shared_data import deit_tiny_and_dev
from vitaccel.golden.smoothquant import collect_norm_statistics, find_norm_linear_pairs, smoothquant_bias


def asymmetry(model, x):
    pairs = find_norm_linear_pairs(model)
    stats = collect_norm_statistics(model, {p.norm_name: p.norm for p in pairs}, x, progress=False)
    vals = []
    for m, lo, hi in stats.values():
        live = (hi - lo) > 1e-6  # constant channels (LayerNorm gamma == 0) have no range
        vals.append(float((m[live].abs() / (hi - lo)[live]).mean()))
    return sum(vals) / len(vals)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared"))
    ap.add_argument("--calib", type=int, default=32)
    ap.add_argument("--test", type=int, default=16)
    ap.add_argument("--alpha", type=float, default=0.5)
    args = ap.parse_args()
    model, ds = deit_tiny_and_dev(args.shared)
    ds = subset(ds, args.calib + args.test, seed=0)
    images = torch.cat([x for x, _ in loader(ds, batch_size=16, workers=0)])
    calib, test = images[:args.calib], images[args.calib:]
    zero_gamma = sum(int((p.norm.weight == 0).sum()) for p in find_norm_linear_pairs(model))
    asym_before = asymmetry(model, calib)
    with torch.no_grad():
        before = model(test)
    applied = smoothquant_bias(model, calib, alpha=args.alpha, progress=False)
    with torch.no_grad():
        after = model(test)
    print(json.dumps({
        "alpha": args.alpha, "calib": args.calib, "test": args.test,
        "max_abs_logit_diff": float((after - before).abs().max()),
        "max_abs_logit": float(before.abs().max()),
        "top1_agreement": float((after.argmax(-1) == before.argmax(-1)).float().mean()),
        "zero_gamma_channels": zero_gamma,
        "guarded_channels": sum(f.guarded for f in applied.values()),
        "eps_range": [min(float(f.eps.min()) for f in applied.values()),
                      max(float(f.eps.max()) for f in applied.values())],
        "mean_abs_channel_mean_over_range_before": asym_before,
        "mean_abs_channel_mean_over_range_after": asymmetry(model, calib),
    }, indent=1))


if __name__ == "__main__":
    main()
