"""Greedy MP (MPTQ-ViT): bit allocation on synthetic layers and the SQNR callback."""
import math

import pytest
import timm
import torch

from vitaccel.golden.mixed_precision import (
    average_bits,
    greedy_mixed_precision,
    linear_layers,
    linear_output_sqnr_fn,
    sqnr_db,
)
from vitaccel.sim import formats as F


pytestmark = pytest.mark.usefixtures("torch_one_thread")


# synthetic layers: (numel, SQNR at 6 bits, SQNR at 4 bits) in dB
LAYERS = {
    "a": (1000, 30.0, 18.0),   # insensitive
    "b": (1000, 20.0, 8.0),    # sensitive
    "c": (1000, 34.0, 22.0),   # least sensitive
    "d": (4000, 25.0, 12.0),   # big
}


def fn(name, bits):
    calls.append((name, bits))
    return LAYERS[name][1 if bits == 6 else 2]


calls = []


def numels():
    return {n: v[0] for n, v in LAYERS.items()}


@pytest.mark.parametrize("target", [7.5, 7.0, 6.0, 5.0, 4.0])
@pytest.mark.parametrize("weighting", ["numel", "layer"])
def test_meets_target(target, weighting):
    alloc = greedy_mixed_precision(numels(), fn, target, weighting=weighting)
    assert set(alloc) == set(LAYERS)
    assert all(w == a and w in F.BITS for w, a in alloc.values())
    avg = average_bits(alloc, numels(), weighting)
    assert avg <= target
    # greedy stops at the first allocation that meets the target: undoing the last step exceeds it
    trace = []
    greedy_mixed_precision(numels(), fn, target, weighting=weighting, trace=trace)
    if trace:
        name, bits, _ = trace[-1]
        undone = dict(alloc)
        undone[name] = (bits + 2, bits + 2)
        assert average_bits(undone, numels(), weighting) > target


def test_least_sensitive_first_and_score():
    trace = []
    greedy_mixed_precision(numels(), fn, 4.0, trace=trace)
    # first step: scores SQNR_6 * ln(numel): a=30*6.91=207, b=138, c=235, d=25*8.29=207.4 -> c
    assert trace[0][0] == "c" and trace[0][1] == 6
    assert trace[0][2] == pytest.approx(34.0 * math.log(1000))
    # the most sensitive layer is lowered last
    assert [t[0] for t in trace].index("b") > [t[0] for t in trace].index("a")
    assert trace[-1][0] == "b"
    assert len(trace) == 8  # every layer 8 -> 6 -> 4


def test_large_layer_preferred_at_equal_sqnr():
    layers = {"small": 100, "large": 10000}
    alloc = greedy_mixed_precision(layers, lambda n, b: 20.0, 7.9, weighting="layer")
    assert alloc == {"small": (8, 8), "large": (6, 6)}


def test_callback_cached_and_errors():
    calls.clear()
    greedy_mixed_precision(numels(), fn, 4.0)
    assert len(calls) == len(set(calls)) == 8
    with pytest.raises(ValueError, match="unreachable"):
        greedy_mixed_precision(numels(), fn, 3.5)
    with pytest.raises(ValueError, match="at least one"):
        greedy_mixed_precision({}, fn, 6.0)
    with pytest.raises(ValueError, match="numel"):
        greedy_mixed_precision({"x": 0}, fn, 6.0)
    with pytest.raises(ValueError, match="NaN"):
        greedy_mixed_precision({"x": 10}, lambda n, b: float("nan"), 6.0)
    assert greedy_mixed_precision(numels(), fn, 8.0) == {n: (8, 8) for n in LAYERS}


def test_sqnr_db():
    y = torch.tensor([3.0, 4.0])
    assert sqnr_db(y, y) == math.inf
    assert sqnr_db(y, y + torch.tensor([0.5, 0.0])) == pytest.approx(10 * math.log10(25 / 0.25))


def test_sqnr_callback_on_tiny_vit():
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8,
                              embed_dim=32, depth=1, num_heads=2, num_classes=10).eval()
    layers = linear_layers(model)
    assert list(layers) == ["blocks.0.attn.qkv", "blocks.0.attn.proj", "blocks.0.mlp.fc1", "blocks.0.mlp.fc2"]
    sq = linear_output_sqnr_fn(model, torch.randn(4, 3, 32, 32), progress=False, max_rows=256)
    for name in layers:
        s8, s6, s4 = sq(name, 8), sq(name, 6), sq(name, 4)
        assert s8 > s6 > s4 > 0  # fewer bits -> more noise
    alloc = greedy_mixed_precision(layers, sq, 6.0)
    assert average_bits(alloc, layers) <= 6.0
    with pytest.raises(ValueError, match="not an nn.Linear"):
        linear_output_sqnr_fn(model, torch.randn(1, 3, 32, 32), layer_names=["blocks.0.norm1"])
