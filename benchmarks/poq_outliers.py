"""POQ outlier load of DeiT-tiny for several outlier thresholds (what a lower alpha costs the hardware).

For each ``ALPHA_QKV,ALPHA_FC1`` pair, calibrates the ``adfq`` preset without AMO on the calibration
images of the accuracy protocol (``golden/protocol.py``: the pool of ``--pool-size`` dev images,
``--calib-size`` of them drawn with ``--seed``) and prints the mean outlier ratio of the q/k/v and FC1
inputs, the largest outlier count of one row, and of one row tile of 8 and 16 rows (the engine's
``--outlier-capacity`` must hold the tile count of its array height, docs/hardware.md).

Example::

    .venv/bin/python benchmarks/poq_outliers.py --alphas 5,10 4,7 3,5
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from vitaccel.golden.calibrate import calibrate_model
from vitaccel.golden.data import image_folder
from vitaccel.golden.models import create_model
from vitaccel.golden.presets import preset
from vitaccel.golden.protocol import calibration_draw, split_pool_eval

SHARED = os.path.join(ROOT, "..", "shared")


def alpha_pair(text: str) -> tuple[float, float]:
    """argparse type: ``QKV,FC1`` thresholds."""
    try:
        q, f = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected ALPHA_QKV,ALPHA_FC1 (e.g. 5,10), got {text!r}") from None
    if q <= 0 or f <= 0:
        raise argparse.ArgumentTypeError(f"thresholds must be positive, got {text!r}")
    return q, f


def outlier_load(qvit) -> dict:
    """Mean outlier ratio and the largest counts per row and per row tile over the POQ inputs."""
    rep = qvit.outlier_report()
    tiles: dict = {}
    for r in rep.values():
        for t, v in r["max_tile_outliers"].items():
            tiles[int(t)] = max(tiles.get(int(t), 0), int(v))
    return {"layers": len(rep), "mean_ratio": sum(r["outlier_ratio"] for r in rep.values()) / max(1, len(rep)),
            "max_row": max((int(r["max_row_outliers"].max()) for r in rep.values()), default=0),
            "max_tile": dict(sorted(tiles.items()))}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--alphas", nargs="+", type=alpha_pair, default=[(5.0, 10.0), (4.0, 7.0), (3.0, 5.0)])
    ap.add_argument("--bits", default="w4a4")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--calib-size", type=int, default=32)
    ap.add_argument("--pool-size", type=int, default=150)
    ap.add_argument("--split-seed", type=int, default=0)
    ap.add_argument("--model", default="deit_tiny_patch16_224")
    ap.add_argument("--weights", default=os.path.join(SHARED, "models", "deit_tiny_patch16_224.safetensors"))
    ap.add_argument("--data", default=os.path.join(SHARED, "imagenet-sample", "dev"))
    ap.add_argument("--class-map", default=os.path.join(SHARED, "imagenet-sample", "synsets.txt"))
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    for aq, af in args.alphas:
        model = create_model(args.model, args.weights)
        ds = image_folder(args.data, model, args.class_map)
        idx = calibration_draw(split_pool_eval(len(ds), args.pool_size, args.split_seed).pool, args.calib_size,
                               args.seed)
        x = torch.stack([ds[i][0] for i in idx])
        cfg = preset("adfq", args.bits, amo=False, adaround=False, alpha_qkv=aq, alpha_fc1=af)
        load = outlier_load(calibrate_model(model, x, cfg, args.model, progress=False))
        print(json.dumps({"alpha_qkv": aq, "alpha_fc1": af, "bits": args.bits, "seed": args.seed,
                          "calib_size": len(idx), **load}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
