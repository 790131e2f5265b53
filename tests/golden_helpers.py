"""Shared fixtures of the golden tests: tiny randomly initialised timm models and synthetic data."""
from __future__ import annotations

import functools

import torch
from timm.models.vision_transformer import VisionTransformer

from vitaccel.golden.calibrate import calibrate_model
from vitaccel.golden.presets import preset


def tiny_vit(seed: int = 0, depth: int = 2) -> VisionTransformer:
    torch.manual_seed(seed)
    m = VisionTransformer(img_size=32, patch_size=8, embed_dim=64, depth=depth, num_heads=2, num_classes=10)
    with torch.no_grad():  # timm initialises the class token at ~1e-6: give it a trained-like magnitude
        m.cls_token.normal_(std=1.0)
        m.pos_embed.normal_(std=0.5)
    return m.eval()


def images(n: int = 8, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 32, 32, generator=g)


@functools.lru_cache(maxsize=None)
def calibrated(method: str, bits: str = "w4a4", poq_mode: str = "static"):
    """A calibrated tiny QuantViT (cached per session; AMO off to stay fast); ``poq_mode`` for adfq."""
    over = {"poq_mode": poq_mode} if method == "adfq" else {}
    return calibrate_model(tiny_vit(), images(8), preset(method, bits, amo=False, adaround=False,
                                                         mixed_precision=False, **over), "tiny-vit", progress=False)
