"""Where a calibrated row loses its accuracy, on images it never saw (DeiT-tiny, needs ../shared).

For each calibration seed the row (any row of ``benchmarks/accuracy.py``, e.g. ``adfq:w4a4``) is
calibrated exactly as ``benchmarks/accuracy.py`` does (same split, same calibration draw, same
schedule), then evaluated in float fake-quant with every quantizer on ("all") and with one group of
quantizers back at full precision at a time ("G in FP"). Each group's figure is a paired comparison
against "all" on the same images (bootstrap interval, McNemar), seed by seed and averaged over the
seeds, so the recovery of a group is read with its noise.

    .venv/bin/python benchmarks/loss_groups.py --row adfq:w4a4 --seeds 0 1 --threads 1 --out build/groups.json

The protocol's first rule holds: the images evaluated (``--eval-on eval``, the default) are disjoint
from the calibration images. This script measures float fake-quant only (switching a group off has
no integer-grid counterpart).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import accuracy as acc

from vitaccel.golden.calibrate import calibrate_model
from vitaccel.golden.data import image_folder
from vitaccel.golden.models import create_model
from vitaccel.golden.presets import CALIBRATION_PRESETS, preset
from vitaccel.golden.protocol import (calibration_draw, paired_bootstrap, selection_set,
                                      split_pool_eval)

#: Quantizer groups by name (the names ``QuantViT.quantizers()`` gives).
GROUPS = {
    "weights": lambda n: "weight_quantizer" in n and not n.startswith(("patch_embed", "head")),
    "qkv_in": lambda n: "qkv.input" in n,
    "fc1_in": lambda n: "fc1.input" in n,
    "fc2_in": lambda n: "fc2.input" in n,
    "proj_in": lambda n: "attn.proj.input" in n,
    "q_k": lambda n: "qk." in n,
    "softmax": lambda n: "av.a_" in n,
    "v": lambda n: "av.b_" in n,
    "embed_head": lambda n: n.startswith(("patch_embed", "head")),
}


def group_members(names) -> dict[str, list[str]]:
    """Quantizer names of each group; an empty group is an error (the names changed)."""
    out = {g: [n for n in names if f(n)] for g, f in GROUPS.items()}
    empty = [g for g, m in out.items() if not m]
    if empty:
        raise SystemExit(f"error: no quantizer matches the group(s) {', '.join(empty)}; the quantizer names "
                         f"are {', '.join(names)}. Update GROUPS in benchmarks/loss_groups.py.")
    return out


def group_correct(qvit, x, y, members: dict[str, list[str]], evaluate) -> dict:
    """Per-image correctness with every quantizer on (``"all"``) and with each group in full precision.

    ``evaluate(model, x, y)`` returns ``(top1, top5, predictions)``; every quantizer is enabled again
    afterwards.
    """
    quantizers = dict(qvit.quantizers())
    correct = {"all": evaluate(qvit, x, y)[2] == y}
    for g, names in members.items():
        try:
            for n in names:
                quantizers[n].enabled = False
            correct[g] = evaluate(qvit, x, y)[2] == y
        finally:
            for n in names:
                quantizers[n].enabled = True
    return correct


def seed_average(per_seed: list[dict]) -> dict:
    """Mean difference over seeds and the mean of the per-seed interval ends (as ``accuracy.py --compare``)."""
    return {k: float(np.mean([p[k] for p in per_seed])) for k in ("diff", "ci_low", "ci_high")}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--row", default="adfq:w4a4", help=f"one of {', '.join(acc.ROWS)}")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--eval-on", choices=("eval", "selection"), default="eval")
    ap.add_argument("--calib-size", type=acc.positive_int, default=None,
                    help="calibration images per seed (default: the fast schedule's, 32)")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="QuantConfig overrides on top of the row's (as in benchmarks/accuracy.py)")
    ap.add_argument("--threads", type=acc.positive_int, default=None)
    ap.add_argument("--out", default=None, help="JSON file for the results (default: print only)")
    args = ap.parse_args(argv)
    if args.row not in acc.ROWS:
        ap.error(f"unknown row {args.row!r}; choose one of {', '.join(acc.ROWS)}")
    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    sched = dict(CALIBRATION_PRESETS["fast"])
    calib_size = args.calib_size or sched.pop("calib_size")
    sched.pop("calib_size", None)
    method, bits, over = acc.ROWS[args.row]
    over = {**over, **(sched if method == "adfq" else {}), **acc._parse_set(args.set)}
    a = acc._parser().parse_args([])   # the accuracy benchmark's model, data and split defaults
    cfg = preset(method, bits, **over)

    model = create_model(a.model, a.weights)
    ds = image_folder(a.data, model, a.class_map)
    split = split_pool_eval(len(ds), a.pool_size, a.split_seed)
    results = {"row": args.row, "overrides": over, "config": cfg.to_dict(), "eval_on": args.eval_on,
               "calib_size": calib_size, "seeds": {}}
    fp_cache = {}
    for seed in args.seeds:
        calib_idx = calibration_draw(split.pool, calib_size, seed)
        idx = split.eval if args.eval_on == "eval" else selection_set(split.pool, calib_idx)
        assert not set(calib_idx) & set(idx)
        torch.manual_seed(seed)
        calib = acc._load(ds, calib_idx)[0]
        x, y = acc._load(ds, idx)
        if idx not in fp_cache:
            fp_cache[idx] = acc.evaluate(create_model(a.model, a.weights), x, y)[2] == y
        t0 = time.time()
        qvit = calibrate_model(create_model(a.model, a.weights), calib, cfg, a.model)
        calib_seconds = round(time.time() - t0)
        members = group_members([n for n, _ in qvit.quantizers()])
        correct = group_correct(qvit, x, y, members, acc.evaluate)
        rows = {"fp": float(fp_cache[idx].float().mean() * 100), "all": float(correct["all"].float().mean() * 100)}
        paired = {g: paired_bootstrap(correct[g].numpy(), correct["all"].numpy()).to_dict() for g in members}
        results["seeds"][str(seed)] = {"eval_images": len(idx), "calib_seconds": calib_seconds,
                                       "top1": rows, "group_in_fp": paired,
                                       "group_sizes": {g: len(m) for g, m in members.items()}}
        print(f"seed {seed}: FP {rows['fp']:.1f} %, all quantized {rows['all']:.1f} % ({len(idx)} images)")
        for g, p in paired.items():
            print(f"  {g:10s} in FP: {p['acc_a']:.1f} %  ({p['diff']:+.1f}, CI {p['ci_low']:+.1f} .. "
                  f"{p['ci_high']:+.1f}, McNemar p = {p['p_mcnemar']:.3f})", flush=True)
        if args.out:
            with open(args.out, "w") as f:
                json.dump(results, f, indent=1)
    if len(args.seeds) > 1:
        print(f"mean over seeds {args.seeds}:")
        for g in GROUPS:
            m = seed_average([s["group_in_fp"][g] for s in results["seeds"].values()])
            results.setdefault("mean", {})[g] = m
            print(f"  {g:10s} in FP: {m['diff']:+.1f} (CI {m['ci_low']:+.1f} .. {m['ci_high']:+.1f})")
        if args.out:
            with open(args.out, "w") as f:
                json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
