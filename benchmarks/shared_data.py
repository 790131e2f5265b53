"""The real data in ``../shared`` used by the DeiT-tiny benchmarks (never by unit tests)."""
from __future__ import annotations

import os

from vitaccel.golden.data import image_folder
from vitaccel.golden.models import create_model

#: ``../shared`` beside the checkout (CI has it too).
DEFAULT_SHARED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared")
MODEL = "deit_tiny_patch16_224"


def deit_tiny_and_dev(shared: str = DEFAULT_SHARED):
    """The pretrained DeiT-tiny and the 500-image ImageNet dev folder (timm eval transform, class map)."""
    root = os.path.join(shared, "imagenet-sample")
    model = create_model(MODEL, weights=os.path.join(shared, "models", f"{MODEL}.safetensors"))
    ds = image_folder(os.path.join(root, "dev"), model, class_map=os.path.join(root, "synsets.txt"))
    return model, ds
