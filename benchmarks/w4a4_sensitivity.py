"""Where does the W4A4 loss of ``adfq`` (no AMO) come from? (DeiT-tiny, needs ../shared)

Calibrates ``adfq`` without AMO on 32 dev images, then evaluates 150 dev images with every quantizer
on ("all") and with one group of quantizers switched back to full precision at a time ("without G").

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/w4a4_sensitivity.py w4a4
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
torch.set_num_threads(2)
model, ds = deit_tiny_and_dev(os.path.join(ROOT, "..", "shared"))
calib = collect_images(loader(subset(ds, 32, 0), 16, 0), 32)
ev = subset(ds, 150, 1)
xs, ys = [], []
for xb, yb in loader(ev, 50, 0):
    xs.append(xb)
    ys.append(yb)
x, y = torch.cat(xs), torch.cat(ys)
bits = sys.argv[1] if len(sys.argv) > 1 else "w4a4"
qvit = calibrate_model(model, calib, preset("adfq", bits, **ABLATIONS["no_amo"]), MODEL)
@torch.no_grad()
def acc():
    p = torch.cat([qvit(x[i:i+50]).argmax(-1) for i in range(0, len(x), 50)])
    return 100*(p==y).float().mean().item()
def setq(pred):
    for n, q in qvit.quantizers():
        q.enabled = pred(n)
print("all", acc(), flush=True)
groups = {"weights": lambda n: "weight_quantizer" in n, "qkv_in": lambda n: "qkv.input" in n, "fc1_in": lambda n: "fc1.input" in n,
 "fc2_in": lambda n: "fc2.input" in n, "proj_in": lambda n: "proj.input" in n, "q_k": lambda n: "qk." in n,
 "softmax": lambda n: "av.a_" in n, "v": lambda n: "av.b_" in n, "embed_head": lambda n: n.startswith(("patch_embed", "head"))}
for g, f in groups.items():
    setq(lambda n, f=f: not f(n))
    print("without", g, acc(), flush=True)
