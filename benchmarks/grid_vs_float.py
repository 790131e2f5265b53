"""Where a calibrated row's integer grid departs from its float fake-quant (DeiT-tiny, needs ../shared).

The row (any ``benchmarks/accuracy.py`` row) is calibrated exactly as the accuracy protocol does for
one seed, then run on the seed's selection images (or the evaluation images) in both modes: float
fake-quant (what calibration optimises) and the integer grid (what the hardware computes). Printed:
top-1 of both, their top-1 agreement, and the relative difference ``|grid - float| / |float|`` of
the residual stream after every transformer block.

    .venv/bin/python benchmarks/grid_vs_float.py --row adfq:w4a4 --seed 0
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import accuracy as acc

from vitaccel.golden.calibrate import calibrate_model
from vitaccel.golden.data import image_folder
from vitaccel.golden.models import create_model
from vitaccel.golden.presets import CALIBRATION_PRESETS, preset
from vitaccel.golden.program import export_program
from vitaccel.golden.protocol import calibration_draw, selection_set, split_pool_eval


def block_outputs(qvit, x, batch: int = 50):
    """Logits and the output of every block of ``qvit`` on ``x`` (in the model's current mode)."""
    outs: dict = {}
    hooks = [b.register_forward_hook(lambda m, a, o, i=i: outs.setdefault(i, []).append(o.detach()))
             for i, b in enumerate(qvit.model.blocks)]
    try:
        with torch.no_grad():
            logits = torch.cat([qvit(x[i:i + batch]) for i in range(0, len(x), batch)])
    finally:
        for h in hooks:
            h.remove()
    return logits, {i: torch.cat(v) for i, v in outs.items()}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--row", required=True, choices=sorted(acc.ROWS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval-on", choices=("selection", "eval"), default="selection")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--model", default="deit_tiny_patch16_224")
    ap.add_argument("--weights", default=os.path.join(acc.SHARED, "models", "deit_tiny_patch16_224.safetensors"))
    ap.add_argument("--data", default=os.path.join(acc.SHARED, "imagenet-sample", "dev"))
    ap.add_argument("--class-map", default=os.path.join(acc.SHARED, "imagenet-sample", "synsets.txt"))
    args = ap.parse_args(argv)
    extra = acc._parse_set(args.set)
    torch.set_num_threads(args.threads)
    model = create_model(args.model, args.weights)
    ds = image_folder(args.data, model, args.class_map)
    split = split_pool_eval(len(ds), 150, 0)
    calib_idx = calibration_draw(split.pool, CALIBRATION_PRESETS["fast"]["calib_size"], args.seed)
    torch.manual_seed(args.seed)
    calib = acc._load(ds, calib_idx)[0]
    x, y = acc._load(ds, split.eval if args.eval_on == "eval" else selection_set(split.pool, calib_idx))
    method, bits, over = acc.ROWS[args.row]
    t0 = time.time()
    qvit = calibrate_model(create_model(args.model, args.weights), calib, preset(method, bits, **over, **extra),
                           args.model)
    lf, bf = block_outputs(qvit, x)
    qvit.use_integer_grid(export_program(qvit))
    lg, bg = block_outputs(qvit, x)
    pf, pg = lf.argmax(-1), lg.argmax(-1)
    report = {"row": args.row, "seed": args.seed, "overrides": extra, "images": len(x), "eval_on": args.eval_on,
              "float_top1": 100 * (pf == y).float().mean().item(), "grid_top1": 100 * (pg == y).float().mean().item(),
              "agreement": 100 * (pf == pg).float().mean().item(),
              "block_rel_diff": [float((bg[i] - bf[i]).norm() / bf[i].norm()) for i in sorted(bf)],
              "seconds": round(time.time() - t0)}
    print(json.dumps(report))


if __name__ == "__main__":
    main()
