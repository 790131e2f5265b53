"""MPTQ-ViT preset end to end on a tiny random timm ViT: SQ-b + Greedy MP + OPT-m through calibrate_model."""
import copy

import pytest
import timm
import torch

from vitaccel.golden.calibrate import calibrate_model
from vitaccel.golden.mixed_precision import average_bits, linear_layers
from vitaccel.golden.presets import preset
from vitaccel.golden.quantizers.three_region import ThreeRegionQuantizer


pytestmark = pytest.mark.usefixtures("torch_one_thread")


def test_mptq_preset_calibrates():
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8,
                              embed_dim=32, depth=2, num_heads=2, num_classes=10).eval()
    fp = copy.deepcopy(model)
    layers = linear_layers(model)
    x = torch.randn(8, 3, 32, 32)
    cfg = preset("mptq", "w4a4", mp_target_bits=6.0)
    qvit = calibrate_model(model, x, cfg, progress=False)
    alloc = {n: (v["w"], v["a"]) for n, v in cfg.layer_bits.items()}
    assert set(alloc) == set(layers) and average_bits(alloc, layers) <= 6.0
    fc2 = qvit.fc2_layers()
    assert len(fc2) == 2
    for name, layer in fc2.items():
        q = layer.input_quantizer
        assert isinstance(q, ThreeRegionQuantizer) and q.calibrated and q.bits == alloc[name][1]
        e = q.export()
        assert 0 <= e["m0"] <= e["m1"] <= 15 and e["s0"] > 0
    with torch.no_grad():
        out, ref = qvit(x), fp(x)
        # SQ-b kept the float path exact: the quantized model with quantizers off equals the FP model
        qvit.set_quant(False, False)
        torch.testing.assert_close(qvit(x), ref, rtol=1e-4, atol=1e-4)
    assert torch.isfinite(out).all()
