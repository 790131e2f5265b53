"""Residual-stream statistics of DeiT-tiny at every LayerNorm input (needs ../shared).

For 16 dev images (seed 0): the per-token standard deviation (min / median / max, and the class
token's mean), the three channels with the largest absolute value, and those channels' LayerNorm
``gamma`` against the median ``|gamma|``. This is what motivates AMO's ``ln_weighted`` option
(docs/quantization-methods.md)::

    .venv/bin/python benchmarks/residual_stats_deit_tiny.py
"""
from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from vitaccel.golden.data import loader, subset
from shared_data import deit_tiny_and_dev


def main():
    model, ds = deit_tiny_and_dev()
    x, _ = next(iter(loader(subset(ds, 16, 0), 16, 0)))
    inputs, norms = {}, dict(model.named_modules())
    for name, mod in norms.items():
        if isinstance(mod, torch.nn.LayerNorm):
            mod.register_forward_pre_hook(lambda _m, a, name=name: inputs.__setitem__(name, a[0].detach()))
    with torch.no_grad():
        model(x)
    for name, r in inputs.items():
        sd = r.std(-1)
        gamma = norms[name].weight.detach()
        top = r.abs().amax((0, 1)).topk(3)
        print(f"{name:16s} token std min {sd.min():.2f} median {sd.median():.2f} max {sd.max():.2f} "
              f"class token {sd[:, 0].mean():.2f} | largest |x| {top.values.numpy().round(1)} "
              f"on channels {top.indices.numpy()}, gamma there {gamma[top.indices].numpy().round(3)}, "
              f"median |gamma| {gamma.abs().median():.3f}")


if __name__ == "__main__":
    main()
