"""AMO settings sweep on DeiT-tiny: top-1 on the integer grid after AMO with non-default settings.

Usage (from the repository root; needs ../shared)::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/amo_settings.py --set lr_round=1e-2
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/amo_settings.py --set lr_round=3e-3 --amo-samples 128

Same protocol as ``benchmarks/accuracy.py`` (the ``adfq`` preset; activation ranges and POQ
statistics from the 32 calibration images drawn with seed 0; evaluation on all 500 dev images),
but AMO runs with the :class:`golden.reconstruct.AMOConfig` fields given by ``--set`` on
``--amo-samples`` images (the 32 calibration images plus further images of the same random order).
Besides top-1 on all images (float fake-quant and integer grid) it reports the integer-grid top-1 on
the images AMO never saw (``held_top1``), the fraction of rounding variables still soft before
hardening, and each module's calibration MSE before / after. One JSON line per run is appended to
``--out``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from vitaccel.golden.calibrate import calibrate_model, collect_images
from vitaccel.golden.data import loader
from vitaccel.golden.presets import ABLATIONS, QuantConfig, preset
from vitaccel.golden.program import export_program
from vitaccel.golden.reconstruct import AMOConfig, reconstruct_amo
from shared_data import DEFAULT_SHARED, MODEL, deit_tiny_and_dev

from accuracy import evaluate, positive_int


#: QuantConfig fields ``--quant-set`` may change (the rest is the ``adfq`` preset's).
QUANT_FIELDS = ("weight_search", "alpha_qkv", "alpha_fc1", "act_method")


def parse_settings(items: list[str], cls=AMOConfig, allowed=None, flag="--set") -> dict:
    """``["lr_round=1e-2", "iters=100"]`` -> overrides of dataclass ``cls`` with the fields' own types."""
    default = cls()
    types = {f.name: type(getattr(default, f.name)) for f in dataclasses.fields(cls)
             if (f.name in allowed if allowed else f.name != "num_samples")}
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in types:
            raise SystemExit(f"{flag} expects FIELD=VALUE with a {cls.__name__} field, "
                             f"got {item!r} (fields: {', '.join(sorted(types))})")
        kind = types[key]
        if kind is bool:
            if value.lower() not in ("1", "0", "true", "false", "yes", "no"):
                raise SystemExit(f"{flag} {key}: expected true/false, got {value!r}")
            out[key] = value.lower() in ("1", "true", "yes")
            continue
        try:
            number = float(value) if kind in (int, float) else None
        except ValueError:
            raise SystemExit(f"{flag} {key}: expected a number, got {value!r}") from None
        if kind is int and number != int(number):
            raise SystemExit(f"{flag} {key}: expected an integer, got {value!r}")
        out[key] = int(number) if kind is int else number if kind is float else kind(value)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", default=DEFAULT_SHARED)
    ap.add_argument("--bits", default="w4a4")
    ap.add_argument("--calib", type=int, default=32, help="images for ranges / POQ statistics (default 32)")
    ap.add_argument("--amo-samples", type=int, default=None, help="images for AMO (default: --calib)")
    ap.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE", help="AMOConfig overrides")
    ap.add_argument("--quant-set", nargs="*", default=[], metavar="FIELD=VALUE",
                    help=f"QuantConfig overrides of the adfq preset ({', '.join(QUANT_FIELDS)})")
    ap.add_argument("--threads", type=positive_int, default=1)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "amo_settings_results.jsonl"))
    args = ap.parse_args(argv)
    overrides = parse_settings(args.set)
    quant_over = parse_settings(args.quant_set, QuantConfig, QUANT_FIELDS, "--quant-set")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model, ds = deit_tiny_and_dev(args.shared)
    x, y = map(torch.cat, zip(*loader(ds, 50, workers=1)))
    n_amo = max(args.calib, args.amo_samples or args.calib)
    order = torch.randperm(len(ds), generator=torch.Generator().manual_seed(0))
    cal_idx, amo_idx = sorted(order[:args.calib].tolist()), sorted(order[:n_amo].tolist())
    calib = collect_images(loader(torch.utils.data.Subset(ds, cal_idx), 16, 0), len(cal_idx))
    amo_images = collect_images(loader(torch.utils.data.Subset(ds, amo_idx), 16, 0), len(amo_idx))
    held = torch.ones(len(ds), dtype=torch.bool)
    held[amo_idx] = False

    cfg = preset("adfq", args.bits, **ABLATIONS["no_amo"], **quant_over)
    qvit = calibrate_model(model, calib, cfg, MODEL, progress=False)
    t0 = time.process_time()
    reports = reconstruct_amo(qvit, amo_images, num_samples=len(amo_idx), progress=False, **overrides)
    amo_cpu = time.process_time() - t0
    qvit.eval()
    f1, _, _ = evaluate(qvit, x, y)
    qvit.use_integer_grid(export_program(qvit))
    g1, g5, pred = evaluate(qvit, x, y)
    res = {"bits": args.bits, "set": overrides, **({"quant_set": quant_over} if quant_over else {}),
           "calib": len(cal_idx), "amo_samples": len(amo_idx),
           "eval": len(x), "float_top1": f1, "grid_top1": g1, "grid_top5": g5,
           "held_n": int(held.sum()), "held_top1": 100 * (pred[held] == y[held]).float().mean().item(),
           "amo_cpu_s": round(amo_cpu), "reverted": [r.name for r in reports if r.reverted],
           "soft_fraction_mean": sum(r.rounding_soft_fraction or 0 for r in reports) / len(reports),
           "mse_before_after": [(round(r.mse_before, 4), round(r.mse_after, 4)) for r in reports]}
    print(json.dumps(res), flush=True)
    with open(args.out, "a") as f:
        f.write(json.dumps(res) + "\n")


if __name__ == "__main__":
    main()
