"""Datasets: ImageNet-layout image folders or the embedded digits set, read without silent substitutions.

An image folder is ``ROOT/SYNSET/*.JPEG`` (any image extension); ``class_map`` is a text file with
one class folder name per line whose line number is the label (ImageNet ``synsets.txt``), so labels
match the model's 1000 classes even when the folder holds a subset. Images go through timm's eval
transform for the model (``resolve_data_config`` + ``create_transform``).

timm's ``ImageDataset`` answers an unreadable image with the *next* sample (so a folder with
corrupt files reports copies of other images). :class:`ImageFolder` never does that: reading an
unreadable image raises :class:`BadImageError` naming the file; :func:`loader` with
``skip_bad=True`` (``--skip-bad-images``) leaves such images out and counts them
(:attr:`CheckedLoader.skipped`), never replacing them.
"""
from __future__ import annotations

import hashlib
import os

import torch

from vitaccel.sim.errors import UserError

EMBEDDED_DATA = "embedded:digits"
#: Splits of the embedded digits set (``embedded:digits[:split]``).
EMBEDDED_SPLITS = ("train", "calib", "test", "all")


class BadImageError(UserError):
    """An image file that cannot be read or decoded (named in the message)."""


def eval_transform(model):
    from timm.data import create_transform, resolve_data_config

    cfg = resolve_data_config({}, model=model)
    return create_transform(**cfg, is_training=False)


def embedded_split(root: str) -> str:
    """The split of ``embedded:digits[:split]`` or the short ``embedded:split`` (default ``test``);
    :class:`UserError` otherwise."""
    parts = root.split(":")
    rest = parts[1:]
    if rest and rest[0] == "digits":
        rest = rest[1:]
    if parts[0] != "embedded" or len(rest) > 1:
        raise UserError(f"unknown embedded data set {root!r}: use embedded:digits[:split] with split one of "
                        f"{', '.join(EMBEDDED_SPLITS)}")
    split = rest[0] if rest else "test"
    if split not in EMBEDDED_SPLITS:
        raise UserError(f"unknown split {split!r} of {EMBEDDED_DATA}: use one of {', '.join(EMBEDDED_SPLITS)}")
    return split


class ImageFolder(torch.utils.data.Dataset):
    """Images ``(path, label)`` through ``transform``; an unreadable file raises :class:`BadImageError`.

    Attributes
    ----------
    root : str
    samples : list of (str, int)
        Absolute paths and labels, in timm's order (sorted class folders, sorted files).
    class_names : list of str
        Class folder names in label order (from the class map when given).
    class_map : str or None
    """

    def __init__(self, root: str, samples, class_names, transform, class_map: str | None = None):
        self.root, self.samples, self.class_names = root, list(samples), list(class_names)
        self.transform, self.class_map = transform, class_map

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        from PIL import Image

        path, label = self.samples[index]
        try:
            with Image.open(path) as im:
                img = im.convert("RGB")  # decodes every pixel: truncated files fail here
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            raise BadImageError(f"cannot read image {path}: {exc}; remove or replace it, or pass "
                                f"--skip-bad-images to leave unreadable images out (they are counted)") from None
        return (self.transform(img) if self.transform is not None else img), label

    def fingerprint(self) -> str:
        """SHA-256 of the sorted relative file list with labels and of the class map's content."""
        h = hashlib.sha256()
        for path, label in sorted(self.samples):
            h.update(f"{os.path.relpath(path, self.root)}\t{label}\n".encode())
        if self.class_map:
            with open(self.class_map, "rb") as f:
                h.update(f.read())
        return h.hexdigest()


def image_folder(root: str, model=None, class_map: str | None = None, transform=None):
    """The dataset of ``root`` with ``transform`` (default: the model's timm eval transform).

    ``root`` may also be ``embedded:digits[:split]`` (the embedded digits tensors, already normalised).
    Bad input raises :class:`vitaccel.sim.errors.UserError` with a clear message.
    """
    if root.startswith("embedded:"):
        from .embedded import digits_dataset

        return digits_dataset(embedded_split(root))
    from timm.data import create_dataset

    if not os.path.isdir(root):
        raise UserError(f"data folder not found: {root}")
    if class_map and not os.path.isfile(class_map):
        raise UserError(f"class map file not found: {class_map}")
    if class_map:
        try:
            with open(class_map, encoding="utf-8") as f:
                names = [ln.strip() for ln in f if ln.strip()]
        except (OSError, UnicodeDecodeError) as exc:
            raise UserError(f"cannot read class map {class_map}: {exc}") from None
        folders = [d for d in sorted(os.listdir(root)) if os.path.isdir(os.path.join(root, d))]
        unknown = [d for d in folders if d not in set(names)]
        if unknown:
            raise UserError(f"class map {class_map} does not list the folder(s) {', '.join(unknown[:5])}"
                            f"{' ...' if len(unknown) > 5 else ''} found in {root}")
    try:
        ds = create_dataset("", root=root, class_map=class_map or "", transform=None)
    except Exception as exc:
        raise UserError(f"cannot read image folder {root}: {exc}") from None
    reader = ds.reader
    if len(reader) == 0:
        raise UserError(f"no images found in {root} (expected ROOT/CLASS/*.JPEG)")
    idx_to_class = {v: k for k, v in reader.class_to_idx.items()}
    class_names = [idx_to_class[i] for i in sorted(idx_to_class)]
    if transform is None:
        transform = eval_transform(model)
    samples = [(os.path.abspath(p), int(t)) for p, t in reader.samples]
    return ImageFolder(root, samples, class_names, transform, class_map or None)


def base_dataset(ds):
    """The dataset under any ``torch.utils.data.Subset`` wrappers."""
    while isinstance(ds, torch.utils.data.Subset):
        ds = ds.dataset
    return ds


def data_fingerprint(ds, data: str) -> str:
    """Identity of a data source for shard consistency: the sorted file list (+ class map) of an
    image folder, or the name of an embedded split."""
    base = base_dataset(ds)
    if isinstance(base, ImageFolder):
        return base.fingerprint()
    return hashlib.sha256(f"{data}\t{len(base)}".encode()).hexdigest()


def check_labels(ds, num_classes: int | None, data: str, *, strict: bool) -> str | None:
    """Check that folder-order labels can be right when no ``--class-map`` is given.

    Without a class map, labels are the positions of the class folders in sorted order; they match
    the model only if the folder holds exactly the model's classes. Returns a message (or ``None``)
    and raises :class:`UserError` with it when ``strict``.
    """
    base = base_dataset(ds)
    if not isinstance(base, ImageFolder) or base.class_map or num_classes is None:
        return None
    n = len(base.class_names)
    if n == num_classes:
        return None
    msg = (f"{data} has {n} class folder(s) but the model has {num_classes} classes, and no --class-map was "
           f"given: labels would be the folder order, not the model's classes. Pass --class-map FILE (one class "
           f"folder name per line in the model's class order, e.g. ImageNet's synsets.txt)")
    if strict:
        raise UserError(msg)
    return msg


def check_input_shape(ds, expected, who: str, data: str) -> None:
    """Raise :class:`UserError` when the images of ``ds`` are not ``expected`` = ``(C, H, W)``."""
    expected = tuple(int(v) for v in expected)
    base = base_dataset(ds)
    x = None
    for i in range(min(len(ds), 16)):
        try:
            x = ds[i][0]
            break
        except BadImageError:
            continue
    if x is None or not hasattr(x, "shape"):
        return
    got = tuple(int(v) for v in x.shape)
    if got != expected:
        hint = (" (the embedded digits are 3 x 8 x 8 images for vitaccel-digits)" if not isinstance(base, ImageFolder)
                else "")
        raise UserError(f"{who} expects {'x'.join(map(str, expected))} inputs but {data} gives "
                        f"{'x'.join(map(str, got))} images{hint}; use data and a model that fit each other")


def subset(ds, n: int | None, seed: int = 0):
    """A random subset of ``n`` items (all of ``ds`` if ``n`` is None or larger)."""
    if n is not None and n <= 0:
        raise UserError(f"subset size must be positive, got {n}")
    if n is None or n >= len(ds):
        return ds
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(ds), generator=g)[:n].sort().values.tolist()
    return torch.utils.data.Subset(ds, idx)


class _Bad:
    """An unreadable item (carried through the DataLoader instead of an exception)."""

    def __init__(self, message: str):
        self.message = message


class _Marking(torch.utils.data.Dataset):
    def __init__(self, ds):
        self.ds = ds

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, i):
        try:
            return self.ds[i]
        except BadImageError as exc:
            return _Bad(str(exc))


def _collate(items):
    good = [(p, it) for p, it in enumerate(items) if not isinstance(it, _Bad)]
    bad = [(p, it.message) for p, it in enumerate(items) if isinstance(it, _Bad)]
    batch = torch.utils.data.default_collate([it for _, it in good]) if good else None
    return batch, [p for p, _ in good], bad


class CheckedLoader:
    """Iterates ``(x, y)`` batches of a dataset in order; unreadable images raise
    :class:`BadImageError` or, with ``skip_bad``, are left out.

    Attributes
    ----------
    kept : list of int
        Positions (in the dataset) of the images that were delivered, in order.
    skipped : list of (int, str)
        Position and message of every image left out.
    """

    def __init__(self, ds, batch_size: int, workers: int, skip_bad: bool = False):
        if batch_size < 1:
            raise UserError(f"--batch-size must be >= 1, got {batch_size}")
        if workers < 0:
            raise UserError(f"--workers must be >= 0, got {workers}")
        self.dataset, self.skip_bad = ds, skip_bad
        self._dl = torch.utils.data.DataLoader(_Marking(ds), batch_size=batch_size, shuffle=False,
                                               num_workers=workers, collate_fn=_collate)
        self.batch_size = batch_size
        self.kept: list[int] = []
        self.skipped: list[tuple[int, str]] = []

    def __len__(self) -> int:
        return len(self._dl)

    def __iter__(self):
        self.kept, self.skipped = [], []
        for b, (batch, good, bad) in enumerate(self._dl):
            start = b * self.batch_size
            if bad and not self.skip_bad:
                raise BadImageError(bad[0][1])
            self.skipped += [(start + p, m) for p, m in bad]
            self.kept += [start + p for p in good]
            if batch is not None:
                yield batch


def loader(ds, batch_size: int = 32, workers: int | None = None, skip_bad: bool = False) -> CheckedLoader:
    """A :class:`CheckedLoader` over ``ds`` (in order; ``workers`` default: up to 2)."""
    workers = min(2, os.cpu_count() or 1) if workers is None else workers
    return CheckedLoader(ds, batch_size, workers, skip_bad)
