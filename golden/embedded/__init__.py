"""The embedded default model and data: a tiny ViT trained on scikit-learn's 8x8 digits.

See :mod:`golden.embedded.digits` for the data split, the model definition and the input
normalisation; ``python -m golden.embedded.train_digits`` recreates the committed checkpoint.
"""
from .digits import (
    CHECKPOINT,
    CLASS_NAMES,
    MEAN,
    MODEL_NAME,
    SPLIT_SIZES,
    STD,
    create_embedded_model,
    digits_dataset,
    digits_loader,
    eval_transform,
    evaluate_fp,
    export_image_folder,
    load_digits_split,
    normalize_images,
)

__all__ = [
    "CHECKPOINT",
    "CLASS_NAMES",
    "MEAN",
    "MODEL_NAME",
    "SPLIT_SIZES",
    "STD",
    "create_embedded_model",
    "digits_dataset",
    "digits_loader",
    "eval_transform",
    "evaluate_fp",
    "export_image_folder",
    "load_digits_split",
    "normalize_images",
]
