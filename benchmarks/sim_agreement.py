"""Where do fake-quant and the integer simulator part ways? (DeiT-tiny, needs ../shared)

Calibrates one accuracy row (see ``benchmarks/accuracy.py`` ROWS), exports its program, runs N dev
images through both the fake-quant model and the integer simulator, prints the prediction agreement,
and then the layer-local comparison of docs/datapath.md section 11 (``golden.int_eval.layer_agreement``,
last traced image) for the worst layers.

Usage (repository root)::

    .venv/bin/python benchmarks/sim_agreement.py --row adfq-noamo:w6a6 --images 8
    .venv/bin/python benchmarks/sim_agreement.py --row adfq:w6a6 --amo-iters 8 --images 24
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(__file__))
from accuracy import ROWS
from shared_data import DEFAULT_SHARED, MODEL, deit_tiny_and_dev

from vitaccel.golden.calibrate import calibrate_model, collect_images
from vitaccel.golden.data import loader, subset
from vitaccel.golden.int_eval import ProgramRunner, layer_agreement
from vitaccel.golden.presets import preset
from vitaccel.golden.program import export_program


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--row", default="adfq-noamo:w6a6", choices=sorted(ROWS))
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--calib-size", type=int, default=32)
    ap.add_argument("--amo-iters", type=int, default=None)
    ap.add_argument("--worst", type=int, default=8, help="layers to list")
    ap.add_argument("--shared", default=DEFAULT_SHARED)
    args = ap.parse_args(argv)
    torch.set_num_threads(os.cpu_count() or 1)

    model, ds = deit_tiny_and_dev(args.shared)
    calib = collect_images(loader(subset(ds, args.calib_size, 0), 16, 0), args.calib_size)
    x = collect_images(loader(subset(ds, args.images, 1), 8, 0), args.images)
    method, bits, over = ROWS[args.row]
    over = dict(over)
    if args.amo_iters is not None:
        over["amo_iters"] = args.amo_iters
    qvit = calibrate_model(model, calib, preset(method, bits, **over), MODEL)
    prog = export_program(qvit)
    runner = ProgramRunner(prog, trace=True)
    with torch.no_grad():
        fq = qvit(x).argmax(-1).tolist()
        qvit.use_integer_grid(prog)
        grid_logits = qvit(x)
        qvit.use_float_fakequant()
    grid = grid_logits.argmax(-1).tolist()
    sim_logits = torch.stack([runner.run_image(img) for img in x])
    sim = sim_logits.argmax(-1).tolist()
    agree = sum(a == b for a, b in zip(fq, sim))
    agree_grid = sum(a == b for a, b in zip(grid, sim))
    exact = sum(bool(torch.equal(a, b)) for a, b in zip(grid_logits, sim_logits))
    print(f"{args.row} (amo_iters {args.amo_iters}): prediction agreement of the integer sim with "
          f"float fake-quant {agree}/{len(x)}, with integer-grid fake-quant {agree_grid}/{len(x)} "
          f"(bit-identical logits on {exact}/{len(x)} images)")
    rep = layer_agreement(qvit, runner.prog, runner)
    key = lambda kv: -max(kv[1].get("frac_diff", 0.0), kv[1].get("rel_err", 0.0))
    for name, r in sorted(rep.items(), key=key)[: args.worst]:
        print(f"  {name}: {json.dumps(r)}")


if __name__ == "__main__":
    main()
