"""Where MPTQ-ViT loses accuracy: one quantizer group back in full precision at a time (float fake-quant).

Protocol of ``benchmarks/accuracy.py`` (golden/protocol.py): calibration on ``--calib-size`` pool images
drawn with ``--seed``, top-1 on that seed's *selection* images (pool images it did not calibrate on),
never on the evaluation set. Usage::

    .venv/bin/python benchmarks/mptq_sensitivity.py --bits w4a4 --threads 1 [--set key=value ...]

``benchmarks/loss_groups.py`` measures the same on the evaluation images, paired per group, for any row.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import accuracy as acc
from loss_groups import group_correct  # the same per-group evaluation, paired, on the evaluation images

from vitaccel.golden.calibrate import calibrate_model
from vitaccel.golden.models import create_model
from vitaccel.golden.presets import preset
from vitaccel.golden.data import image_folder
from vitaccel.golden.protocol import calibration_draw, selection_set, split_pool_eval

GROUPS = {
    "weights": lambda n: "weight_quantizer" in n,
    "qkv_in": lambda n: "qkv.input" in n,
    "fc1_in": lambda n: "fc1.input" in n,
    "fc2_in": lambda n: "fc2.input" in n,
    "proj_in": lambda n: "proj.input" in n,
    "q_k": lambda n: "qk.a" in n or "qk.b" in n,
    "softmax": lambda n: "av.a" in n,
    "v": lambda n: "av.b" in n,
}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bits", default="w4a4")
    ap.add_argument("--method", default="mptq")
    ap.add_argument("--set", nargs="*", default=[])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--calib-size", type=int, default=32)
    ap.add_argument("--pool-size", type=int, default=150)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = create_model("deit_tiny_patch16_224",
                         os.path.join(acc.SHARED, "models", "deit_tiny_patch16_224.safetensors"))
    ds = image_folder(os.path.join(acc.SHARED, "imagenet-sample", "dev"), model,
                      os.path.join(acc.SHARED, "imagenet-sample", "synsets.txt"))
    split = split_pool_eval(len(ds), args.pool_size, 0)
    cidx = calibration_draw(split.pool, args.calib_size, args.seed)
    calib = acc._load(ds, cidx)[0]
    x, y = acc._load(ds, selection_set(split.pool, cidx))
    cfg = preset(args.method, args.bits, **acc._parse_set(args.set))
    qvit = calibrate_model(model, calib, cfg, progress=False)
    out = {"config": args.set, "bits": args.bits, "images": len(x)}
    qvit.set_quant(False, False)
    out["fp"] = acc.evaluate(qvit, x, y)[0]
    qvit.set_quant(True, True)
    names = [n for n, _ in qvit.quantizers()]
    members = {g: [n for n in names if f(n)] for g, f in GROUPS.items()}
    correct = group_correct(qvit, x, y, members, acc.evaluate)
    for g, c in correct.items():
        label = "everything" if g == "all" else g
        out[f"all but {label}"] = 100 * c.float().mean().item()
        print(label, round(out[f"all but {label}"], 1), flush=True)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
