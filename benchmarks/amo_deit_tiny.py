"""AMO (ADFQ-ViT block reconstruction) on DeiT-tiny: wall-clock time and top-1 before/after.

Usage (from the repository root; needs ../shared)::

    .venv/bin/python benchmarks/amo_deit_tiny.py --bits w4a4 --calib 64 --iters 200 --eval 436

Calibrates the ``adfq`` preset without AMO on ``--calib`` images of the 500-image ImageNet sample,
evaluates top-1 on ``--eval`` other images, runs :func:`golden.reconstruct.reconstruct_amo` with
the given settings, evaluates again and prints a JSON summary (time per module, MSE before/after).
``amo_cpu_seconds`` is the process CPU time of the reconstruction: with ``--threads 1`` it is the
wall-clock time on an unloaded core, a fair figure on a shared machine.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from vitaccel.golden.calibrate import calibrate_model
from vitaccel.golden.data import loader, subset
from shared_data import deit_tiny_and_dev
from vitaccel.golden.presets import preset
from vitaccel.golden.reconstruct import AMOConfig, reconstruct_amo


@torch.no_grad()
def top1(model, images, labels, batch_size=50):
    correct = 0
    for i in range(0, len(images), batch_size):
        correct += int((model(images[i:i + batch_size]).argmax(-1) == labels[i:i + batch_size]).sum())
    return 100.0 * correct / len(images)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared"))
    ap.add_argument("--bits", default="w4a4")
    ap.add_argument("--calib", type=int, default=64)
    ap.add_argument("--eval", type=int, default=436)
    ap.add_argument("--iters", type=int, default=AMOConfig.iters)
    ap.add_argument("--batch-size", type=int, default=AMOConfig.batch_size)
    ap.add_argument("--units", type=int, default=None, help="only the first N modules (timing runs)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model, ds = deit_tiny_and_dev(args.shared)
    n = min(len(ds), args.calib + args.eval)
    ds = subset(ds, n, seed=0)
    xs, ys = [], []
    for x, y in loader(ds, batch_size=50, workers=0):
        xs.append(x)
        ys.append(y)
    images, labels = torch.cat(xs), torch.cat(ys)
    calib, ev_x, ev_y = images[:args.calib], images[args.calib:], labels[args.calib:]
    fp_top1 = top1(model, ev_x, ev_y)
    t0 = time.time()
    qvit = calibrate_model(model, calib, preset("adfq", args.bits, amo=False), "deit_tiny_patch16_224")
    t_cal = time.time() - t0
    before = top1(qvit, ev_x, ev_y)
    from vitaccel.golden.reconstruct import find_amo_units
    units = find_amo_units(qvit)
    if args.units:
        units = units[:args.units]
    t0, c0 = time.time(), time.process_time()
    reps = reconstruct_amo(qvit, calib, units=units, iters=args.iters, batch_size=args.batch_size,
                           num_samples=args.calib, device=args.device)
    t_amo, c_amo = time.time() - t0, time.process_time() - c0
    after = top1(qvit, ev_x, ev_y)
    print(json.dumps({
        "bits": args.bits, "calib": args.calib, "eval_images": len(ev_x), "iters": args.iters,
        "batch_size": args.batch_size, "threads": torch.get_num_threads(), "units": len(units),
        "fp32_top1": fp_top1, "calibrated_top1": before, "amo_top1": after,
        "calibrate_seconds": round(t_cal, 1), "amo_seconds": round(t_amo, 1),
        "amo_cpu_seconds": round(c_amo, 1),
        "modules": [r.to_dict() for r in reps],
    }, indent=1))


if __name__ == "__main__":
    main()
