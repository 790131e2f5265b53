"""Top-1 of ``adfq`` W4A4 without AMO against the number of calibration images (DeiT-tiny, ../shared).

Evaluates 150 dev images (FP first), then calibrates once per size given on the command line:

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/calib_size_deit_tiny.py 32 128
"""
import sys
import os
import torch
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
from shared_data import deit_tiny_and_dev, MODEL
from vitaccel.golden.calibrate import calibrate_model, collect_images
from vitaccel.golden.data import loader, subset
from vitaccel.golden.presets import preset, ABLATIONS
import copy
torch.set_num_threads(1)
model, ds = deit_tiny_and_dev(os.path.join(ROOT, "..", "shared"))
ev = subset(ds, 150, 1)
xs, ys = [], []
for xb, yb in loader(ev, 50, 0):
    xs.append(xb)
    ys.append(yb)
x, y = torch.cat(xs), torch.cat(ys)
@torch.no_grad()
def acc(m):
    p = torch.cat([m(x[i:i+50]).argmax(-1) for i in range(0, len(x), 50)])
    return 100*(p==y).float().mean().item()
print("fp", acc(model), flush=True)
for n in [int(a) for a in sys.argv[1:]]:
    calib = collect_images(loader(subset(ds, n, 0), 16, 0), n)
    q = calibrate_model(copy.deepcopy(model), calib, preset("adfq", "w4a4", **ABLATIONS["no_amo"]), MODEL,
                        progress=False)
    print("calib", n, acc(q), flush=True)
