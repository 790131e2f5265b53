"""SQ-b (SmoothQuant with bias, MPTQ-ViT): FP equivalence, statistics and guards."""
import math

import pytest
import timm
import torch
from torch import nn

from vitaccel.golden.smoothquant import (
    apply_smoothing,
    find_norm_linear_pairs,
    smoothing_factors,
    smoothquant_bias,
)


pytestmark = pytest.mark.usefixtures("torch_one_thread")


def tiny_vit(seed=0):
    torch.manual_seed(seed)
    model = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, embed_dim=32,
        depth=2, num_heads=2, num_classes=10,
    ).eval()
    with torch.no_grad():
        for name, mod in model.named_modules():
            if isinstance(mod, nn.LayerNorm):
                mod.weight.normal_(1.0, 0.5)
                mod.bias.normal_(0.0, 0.5)
        # the real DeiT checkpoint has LayerNorm gammas that are exactly zero
        model.blocks[0].norm1.weight[[3, 7]] = 0.0
        model.blocks[1].norm2.weight[5] = 0.0
    return model


def test_pairs_found():
    model = tiny_vit()
    names = [(p.norm_name, p.linear_name) for p in find_norm_linear_pairs(model)]
    assert names == [
        ("blocks.0.norm1", "blocks.0.attn.qkv"), ("blocks.0.norm2", "blocks.0.mlp.fc1"),
        ("blocks.1.norm1", "blocks.1.attn.qkv"), ("blocks.1.norm2", "blocks.1.mlp.fc1"),
    ]


@pytest.mark.parametrize("alpha", [0.5, 0.8])
def test_fp_equivalent(alpha):
    model = tiny_vit()
    calib = torch.randn(16, 3, 32, 32)
    test = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        before = model(test)
    applied = smoothquant_bias(model, calib, alpha=alpha, batch_size=5, progress=False)
    with torch.no_grad():
        after = model(test)
    assert set(applied) == {p.linear_name for p in find_norm_linear_pairs(model)}
    for f in applied.values():
        assert torch.isfinite(f.eps).all() and (f.eps > 0).all() and torch.isfinite(f.mu).all()
    # the transform is non-trivial
    assert any((f.eps - 1).abs().max() > 1e-2 for f in applied.values())
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-4)
    for p in find_norm_linear_pairs(model):
        assert torch.isfinite(p.norm.weight).all() and torch.isfinite(p.norm.bias).all()


def test_zero_gamma_channels_get_eps_one():
    model = tiny_vit()
    applied = smoothquant_bias(model, torch.randn(8, 3, 32, 32), progress=False)
    f = applied["blocks.0.attn.qkv"]
    assert f.eps[3] == 1.0 and f.eps[7] == 1.0
    assert applied["blocks.1.mlp.fc1"].eps[5] == 1.0
    # the transformed channel is exactly zero (mu = beta)
    assert model.blocks[0].norm1.bias[3] == 0.0 and model.blocks[0].norm1.weight[3] == 0.0


def test_transformed_activations_are_centred_and_factor_formula():
    model = tiny_vit()
    calib = torch.randn(8, 3, 32, 32)
    captured = {}
    norm = model.blocks[0].norm2
    h = norm.register_forward_hook(lambda m, i, o: captured.setdefault("x", o.detach().clone()))
    with torch.no_grad():
        model(calib)
    h.remove()
    x = captured.pop("x").reshape(-1, 32).double()
    w = model.blocks[0].mlp.fc1.weight.detach().double().clone()
    applied = smoothquant_bias(model, calib, progress=False)
    f = applied["blocks.0.mlp.fc1"]
    mu = x.mean(0)
    expect = ((x - mu).abs().amax(0) / w.abs().amax(0)).sqrt()  # alpha = 0.5
    torch.testing.assert_close(f.mu.double(), mu, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(f.eps.double(), expect, rtol=1e-5, atol=1e-7)
    h = norm.register_forward_hook(lambda m, i, o: captured.setdefault("x", o.detach().clone()))
    with torch.no_grad():
        model(calib)
    h.remove()
    x2 = captured["x"].reshape(-1, 32).double()
    assert x2.mean(0).abs().max() < 1e-4
    # the scaled range max|X'_j| * max|W'_j| is balanced: max|X'_j| == max|W'_j| (alpha = 0.5)
    torch.testing.assert_close(
        x2.abs().amax(0), model.blocks[0].mlp.fc1.weight.detach().double().abs().amax(0),
        rtol=1e-4, atol=1e-6,
    )


def test_guards_nan_and_zero_ranges():
    mean = torch.tensor([0.0, 1.0, float("nan"), 2.0])
    lo = torch.tensor([-1.0, 1.0, 0.0, 1.0])
    hi = torch.tensor([1.0, 1.0, 0.0, 3.0])
    w = torch.tensor([[4.0, 1.0, 1.0, 0.0]])
    f = smoothing_factors(mean, lo, hi, w)
    assert f.eps.tolist() == [0.5, 1.0, 1.0, 1.0]  # sqrt(1/4); zero act range; NaN; zero weight
    assert f.guarded == 3
    assert torch.isfinite(f.mu).all()


def test_linear_without_bias_and_bad_input():
    norm, lin = nn.LayerNorm(4), nn.Linear(4, 3, bias=False)
    x = torch.randn(10, 4)
    ref = lin(norm(x))
    f = smoothing_factors(torch.full((4,), 0.5), torch.full((4,), -1.0), torch.full((4,), 2.0),
                          lin.weight)
    apply_smoothing(norm, lin, f)
    torch.testing.assert_close(lin(norm(x)), ref, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="alpha"):
        smoothing_factors(torch.zeros(4), torch.zeros(4), torch.ones(4), lin.weight, alpha=2)
    with pytest.raises(ValueError, match="no LayerNorm"):
        smoothquant_bias(nn.Sequential(nn.Linear(2, 2)), torch.zeros(1, 2), progress=False)
    with pytest.raises(ValueError, match="empty"):
        smoothquant_bias(tiny_vit(), [], progress=False)


def test_fp_equivalent_on_swin():
    torch.manual_seed(0)
    model = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, img_size=56, patch_size=4,
                              embed_dim=16, depths=(2, 1), num_heads=(1, 2), window_size=7,
                              num_classes=10).eval()
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, nn.LayerNorm):
                mod.weight.normal_(1.0, 0.5)
                mod.bias.normal_(0.0, 0.5)
    test = torch.randn(4, 3, 56, 56)
    with torch.no_grad():
        before = model(test)
    applied = smoothquant_bias(model, torch.randn(8, 3, 56, 56), progress=False)
    assert list(applied) == ["layers.0.blocks.0.attn.qkv", "layers.0.blocks.0.mlp.fc1",
                             "layers.0.blocks.1.attn.qkv", "layers.0.blocks.1.mlp.fc1",
                             "layers.1.blocks.0.attn.qkv", "layers.1.blocks.0.mlp.fc1"]
    with torch.no_grad():
        torch.testing.assert_close(model(test), before, rtol=1e-4, atol=1e-5)


def test_plain_smoothquant_without_bias():
    """bias=False (the "SQ" row of MPTQ-ViT's ablation): mu = 0, eps = max|X|^a / max|W|^(1-a), FP kept."""
    xmin, xmax = torch.tensor([-1.0, -4.0, 0.5]), torch.tensor([3.0, 2.0, 2.0])
    mean = torch.tensor([1.0, -1.0, 1.2])
    w = torch.tensor([[1.0, -0.25, 4.0], [-2.0, 0.5, 1.0]])
    f = smoothing_factors(mean, xmin, xmax, w, alpha=0.5, bias=False)
    # max|X| = 3, 4, 2 ; max|W| per input column = 2, 0.5, 4 -> eps = sqrt(3/2), sqrt(4/0.5), sqrt(2/4)
    torch.testing.assert_close(f.eps, torch.tensor([math.sqrt(1.5), math.sqrt(8.0), math.sqrt(0.5)]))
    assert (f.mu == 0).all()
    fb = smoothing_factors(mean, xmin, xmax, w, alpha=0.5)  # SQ-b: ranges around the mean
    torch.testing.assert_close(fb.eps, torch.tensor([math.sqrt(2.0 / 2), math.sqrt(3.0 / 0.5), math.sqrt(0.8 / 4)]))
    model = tiny_vit()
    test = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        before = model(test)
    applied = smoothquant_bias(model, torch.randn(8, 3, 32, 32), progress=False, bias=False)
    assert all((a.mu == 0).all() for a in applied.values())
    with torch.no_grad():
        torch.testing.assert_close(model(test), before, rtol=1e-4, atol=1e-4)


def test_midpoint_centre():
    """center="midpoint": mu = (max + min) / 2, eps from the half range (max - min) / 2; FP kept."""
    xmin, xmax = torch.tensor([-1.0, -4.0, 0.5]), torch.tensor([3.0, 2.0, 2.0])
    mean = torch.tensor([1.0, -1.0, 1.2])
    w = torch.tensor([[1.0, -0.25, 4.0], [-2.0, 0.5, 1.0]])
    f = smoothing_factors(mean, xmin, xmax, w, alpha=0.5, center="midpoint")
    torch.testing.assert_close(f.mu, torch.tensor([1.0, -1.0, 1.25]))
    # half ranges 2, 3, 0.75 ; max|W| per input column 2, 0.5, 4
    torch.testing.assert_close(f.eps, torch.tensor([math.sqrt(2.0 / 2), math.sqrt(3.0 / 0.5), math.sqrt(0.75 / 4)]))
    with pytest.raises(ValueError, match="center"):
        smoothing_factors(mean, xmin, xmax, w, center="median")
    model = tiny_vit()
    test = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        before = model(test)
    applied = smoothquant_bias(model, torch.randn(8, 3, 32, 32), progress=False, center="midpoint")
    assert any((a.mu != 0).any() for a in applied.values())
    with torch.no_grad():
        torch.testing.assert_close(model(test), before, rtol=1e-4, atol=1e-4)
