"""Quick W4A4 screen on DeiT-tiny: the ``adfq`` preset without AMO, with QuantConfig overrides.

Same protocol as ``benchmarks/accuracy.py`` (32 calibration images drawn with seed 0, all 500 dev
images evaluated, float fake-quant and integer-grid top-1), but one configuration per call and no
reconstruction, so a change to a quantizer can be judged in a few minutes::

    .venv/bin/python benchmarks/screen_w4a4.py --quant-set weight_search=hessian
    .venv/bin/python benchmarks/screen_w4a4.py --fp-weights      # weights unquantized (upper bound)

One JSON line per call is appended to ``--out``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from vitaccel.golden.calibrate import calibrate_model, collect_images
from vitaccel.golden.data import loader, subset
from vitaccel.golden.presets import ABLATIONS, QuantConfig, preset
from vitaccel.golden.program import export_program
from shared_data import DEFAULT_SHARED, MODEL, deit_tiny_and_dev

from accuracy import evaluate, positive_int
from amo_settings import QUANT_FIELDS, parse_settings


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", default=DEFAULT_SHARED)
    ap.add_argument("--bits", default="w4a4")
    ap.add_argument("--calib", type=int, default=32)
    ap.add_argument("--quant-set", nargs="*", default=[], metavar="FIELD=VALUE",
                    help=f"QuantConfig overrides ({', '.join(QUANT_FIELDS)})")
    ap.add_argument("--fp-weights", action="store_true", help="leave the block weights unquantized (float only)")
    ap.add_argument("--threads", type=positive_int, default=1)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "screen_w4a4_results.jsonl"))
    args = ap.parse_args(argv)
    over = parse_settings(args.quant_set, QuantConfig, QUANT_FIELDS, "--quant-set")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model, ds = deit_tiny_and_dev(args.shared)
    x, y = map(torch.cat, zip(*loader(ds, 50, workers=1)))
    calib = collect_images(loader(subset(ds, args.calib, 0), 16, 0), args.calib)
    t0 = time.time()
    qvit = calibrate_model(model, calib, preset("adfq", args.bits, **ABLATIONS["no_amo"], **over), MODEL,
                           progress=False)
    res = {"bits": args.bits, "quant_set": over, "calib": args.calib, "eval": len(x),
           "calib_s": round(time.time() - t0)}
    if args.fp_weights:
        for name, wq in qvit.weight_quantizers():
            if name.startswith("blocks."):
                wq.enabled = False
        res["fp_weights"] = True
        res["float_top1"] = evaluate(qvit, x, y)[0]
    else:
        res["float_top1"] = evaluate(qvit, x, y)[0]
        qvit.use_integer_grid(export_program(qvit))
        res["grid_top1"] = evaluate(qvit, x, y)[0]
    res["seconds"] = round(time.time() - t0)
    print(json.dumps(res), flush=True)
    with open(args.out, "a") as f:
        f.write(json.dumps(res) + "\n")


if __name__ == "__main__":
    main()
