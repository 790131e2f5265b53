"""Fingerprint of AMO on a tiny random timm ViT, to prove a refactor of golden/reconstruct.py is exact.

Runs :func:`vitaccel.golden.reconstruct.reconstruct_amo` in several settings that together take every
branch of it (QDrop input mixing with the model's own FP path, a separate FP model, LayerNorm-weighted
error, read-out rows of the last block, scale-only, forced revert, no iterations) and records the
fake-quant logits (float and on the integer grid of the exported program), every learned parameter and
the per-module reports (losses per iteration included). Save the fingerprint before a change and
compare after it; equal means bit-identical tensors and identical report values::

    .venv/bin/python benchmarks/amo_fingerprint.py --save /tmp/amo_before.pt     # at the old commit
    .venv/bin/python benchmarks/amo_fingerprint.py --compare /tmp/amo_before.pt  # after the change

(about a minute on 2 CPU cores).
"""
from __future__ import annotations

import argparse
import copy
import math
import sys

import timm
import torch

from vitaccel.golden.calibrate import calibrate_model
from vitaccel.golden.presets import preset
from vitaccel.golden.program import export_program
from vitaccel.golden.reconstruct import reconstruct_amo

#: name -> (reconstruct_amo keyword arguments, use a separate FP model)
SETTINGS = {
    "qdrop_default": (dict(iters=25, batch_size=4), False),
    "separate_fp_ln_readout": (dict(iters=20, batch_size=8, ln_weighted=True, readout_last_block=True,
                                    input_drop=0.0), True),
    "scale_only_kl0": (dict(iters=15, batch_size=4, adaround=False, lr_scale=1e-3, kl_weight=0.0,
                            input_drop=0.3), True),
    "forced_revert": (dict(iters=10, batch_size=4, lr_round=5.0, lr_scale=0.5, round_weight=0.0), False),
    "no_iterations": (dict(iters=0), False),
}


def tiny_vit(seed: int = 0):
    torch.manual_seed(seed)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8,
                              embed_dim=32, depth=2, num_heads=2, num_classes=10).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2 and "blocks" in name:
                p.mul_(8.0)
    return model


def fingerprint() -> dict:
    torch.set_num_threads(1)
    out = {}
    for i, (name, (kw, separate_fp)) in enumerate(SETTINGS.items()):
        model = tiny_vit(i)
        fp = copy.deepcopy(model)
        x = torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(i))
        qvit = calibrate_model(model, x, preset("adfq", "w4a4", amo=False), progress=False)
        reps = reconstruct_amo(qvit, x, fp_model=fp if separate_fp else None, progress=False, device="cpu",
                               seed=i, **kw)
        with torch.no_grad():
            logits = qvit(x)
            qvit.use_integer_grid(export_program(qvit))
            grid = qvit(x)
            qvit.use_float_fakequant()
        out[name] = {
            "logits": logits, "grid_logits": grid,
            "state": {k: v.detach().clone() for k, v in qvit.state_dict().items()},
            "reports": [{**r.to_dict(), "losses": list(r.losses), "rec_losses": list(r.rec_losses),
                         "seconds": None, "seconds_optimize": None} for r in reps],
        }
    return out


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, float) and math.isnan(a):
        return isinstance(b, float) and math.isnan(b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(u, v) for u, v in zip(a, b))
    return a == b


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--save", metavar="FILE")
    g.add_argument("--compare", metavar="FILE")
    args = p.parse_args(argv)
    now = fingerprint()
    for name, fpr in now.items():
        print(f"{name}: " + ", ".join(f"{r['name']} {r['mse_before']:.4g}->{r['mse_after']:.4g}"
                                      f"{' (reverted)' if r['reverted'] else ''}" for r in fpr["reports"]))
    if args.save:
        torch.save(now, args.save)
        print(f"saved {args.save}")
        return 0
    before = torch.load(args.compare, weights_only=False)
    bad = [n for n in before if n not in now or not _same(before[n], now[n])]
    bad += [n for n in now if n not in before]
    for n in bad:
        print(f"DIFFERENT: {n}")
    print("bit-identical" if not bad else f"{len(bad)} setting(s) differ")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
