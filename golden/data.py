"""Datasets: ImageNet-layout image folders (timm ``create_dataset``) or the embedded digits set.

An image folder is ``ROOT/SYNSET/*.JPEG`` (any image extension); ``class_map`` is a text file with
one class folder name per line whose line number is the label (ImageNet ``synsets.txt``), so labels
match the model's 1000 classes even when the folder holds a subset. Images go through timm's eval
transform for the model (``resolve_data_config`` + ``create_transform``).
"""
from __future__ import annotations

import os

import torch

from vitaccel.sim.errors import UserError

EMBEDDED_DATA = "embedded:digits"


def eval_transform(model):
    from timm.data import create_transform, resolve_data_config  # noqa: PLC0415

    cfg = resolve_data_config({}, model=model)
    return create_transform(**cfg, is_training=False)


def image_folder(root: str, model=None, class_map: str | None = None, transform=None):
    """A timm image-folder dataset with ``transform`` (default: the model's timm eval transform).

    ``root`` may also be ``embedded:digits[:split]`` (the embedded digits tensors, already normalised).
    Bad input raises :class:`vitaccel.sim.errors.UserError` with a clear message.
    """
    if root == EMBEDDED_DATA or root.startswith("embedded:"):
        from .embedded import digits_dataset  # noqa: PLC0415

        split = root.split(":", 1)[1] if ":" in root else "test"
        split = "test" if split == "digits" else split
        return digits_dataset(split)
    from timm.data import create_dataset  # noqa: PLC0415

    if not os.path.isdir(root):
        raise UserError(f"data folder not found: {root}")
    if class_map and not os.path.isfile(class_map):
        raise UserError(f"class map file not found: {class_map}")
    if class_map:
        names = [ln.strip() for ln in open(class_map) if ln.strip()]
        folders = [d for d in sorted(os.listdir(root)) if os.path.isdir(os.path.join(root, d))]
        unknown = [d for d in folders if d not in set(names)]
        if unknown:
            raise UserError(f"class map {class_map} does not list the folder(s) {', '.join(unknown[:5])}"
                            f"{' ...' if len(unknown) > 5 else ''} found in {root}")
    try:
        ds = create_dataset("", root=root, class_map=class_map or "",
                            transform=transform if transform is not None else eval_transform(model))
    except Exception as exc:
        raise UserError(f"cannot read image folder {root}: {exc}") from None
    if len(ds) == 0:
        raise UserError(f"no images found in {root} (expected ROOT/CLASS/*.JPEG)")
    return ds


def subset(ds, n: int | None, seed: int = 0):
    """A random subset of ``n`` items (all of ``ds`` if ``n`` is None or larger)."""
    if n is None or n >= len(ds):
        return ds
    if n <= 0:
        raise UserError("subset size must be positive")
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(ds), generator=g)[:n].sort().values.tolist()
    return torch.utils.data.Subset(ds, idx)


def loader(ds, batch_size: int = 32, workers: int | None = None):
    workers = min(2, os.cpu_count() or 1) if workers is None else workers
    return torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=workers)
