"""The embedded default: scikit-learn's 8x8 handwritten digits and a tiny timm ViT trained on them.

A fresh clone has no ImageNet weights, no ImageNet images and (often) no network. The digits data set
ships inside scikit-learn (``sklearn.datasets.load_digits``, 1797 grey-scale 8x8 images, 10 classes,
no download), and the model checkpoint ``vitaccel_digits.safetensors`` is committed next to this
module, so every ``vitaccel`` command has a real, trained model and real data to work on.

Data
----
Pixels in the scikit-learn array are integers 0..16. They are mapped to 8-bit grey levels
``g = floor(v * 255 / 16 + 0.5)`` (exactly what a PNG export stores), and the model input is
``g / 255`` replicated to 3 channels, normalised with mean 0.5 and std 0.5 per channel
(:data:`MEAN`, :data:`STD`). :func:`load_digits_split` and the PNG folder written by
:func:`export_image_folder` therefore give bit-identical model inputs.

The split is stratified per class with a fixed seed (:data:`SPLIT_SEED`, numpy PCG64): per class,
20 % test, 10 % calibration, the rest train. Sizes: train 1259, calibration 179, test 359
(:data:`SPLIT_SIZES`, checked by ``tests/test_embedded.py``).

Model
-----
:data:`MODEL_NAME` (``"vitaccel-digits"``) is a timm :class:`~timm.models.vision_transformer.VisionTransformer`
shaped like DeiT (class token, learned positional embedding, pre-norm blocks, LayerNorm eps 1e-6,
GELU MLP): ``img_size=8, patch_size=2, in_chans=3, embed_dim=64, depth=4, num_heads=4, mlp_ratio=4,
num_classes=10`` — 16 patches + 1 class token = 17 tokens, head dimension 16.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

#: Name under which the golden front end's model loader finds this model.
MODEL_NAME = "vitaccel-digits"
#: The committed checkpoint (float32 state dict, safetensors).
CHECKPOINT = Path(__file__).with_name("vitaccel_digits.safetensors")
#: Architecture hyper-parameters passed to timm's ``VisionTransformer``.
MODEL_KWARGS = dict(
    img_size=8,
    patch_size=2,
    in_chans=3,
    num_classes=10,
    embed_dim=64,
    depth=4,
    num_heads=4,
    mlp_ratio=4.0,
    qkv_bias=True,
    class_token=True,
    global_pool="token",
)
#: Per-channel normalisation of ``g / 255`` inputs.
MEAN = (0.5, 0.5, 0.5)
STD = (0.5, 0.5, 0.5)
#: Seed of the deterministic train / calibration / test split.
SPLIT_SEED = 20240601
#: Fractions of each class that go to the test and calibration splits.
TEST_FRACTION = 0.2
CALIB_FRACTION = 0.1
SPLITS = ("train", "calib", "test")
#: Split sizes that the seeded stratified split produces.
SPLIT_SIZES = {"train": 1259, "calib": 179, "test": 359}
#: Class names (folder names of the exported image folder).
CLASS_NAMES = tuple(f"digit{i}" for i in range(10))
#: timm ``pretrained_cfg`` entries that describe the expected input.
PRETRAINED_CFG = dict(
    input_size=(3, 8, 8),
    mean=MEAN,
    std=STD,
    crop_pct=1.0,
    crop_mode="center",
    interpolation="bilinear",
    num_classes=10,
    first_conv="patch_embed.proj",
    classifier="head",
)


# --------------------------------------------------------------------------------------- data


def _digits_raw():
    """Return the scikit-learn digits as (uint8 grey levels (N, 8, 8), int64 labels)."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    pixels = bunch.images.astype(np.float64)  # integers 0..16
    grey = np.floor(pixels * 255.0 / 16.0 + 0.5).astype(np.uint8)
    return grey, bunch.target.astype(np.int64)


def split_indices(labels: np.ndarray, seed: int = SPLIT_SEED) -> dict[str, np.ndarray]:
    """Deterministic stratified split of sample indices into train / calib / test.

    Parameters
    ----------
    labels : numpy.ndarray
        Integer class labels of all samples.
    seed : int
        Seed of the numpy PCG64 generator.

    Returns
    -------
    dict
        ``{"train": idx, "calib": idx, "test": idx}``: disjoint, covering all samples, each ordered
        by class, then by sample index (the order of the exported image folder).
    """
    rng = np.random.Generator(np.random.PCG64(seed))
    parts: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}
    for cls in np.unique(labels):
        idx = np.flatnonzero(labels == cls)
        idx = idx[rng.permutation(len(idx))]
        n_test = int(round(TEST_FRACTION * len(idx)))
        n_cal = int(round(CALIB_FRACTION * len(idx)))
        parts["test"].append(np.sort(idx[:n_test]))
        parts["calib"].append(np.sort(idx[n_test:n_test + n_cal]))
        parts["train"].append(np.sort(idx[n_test + n_cal:]))
    return {s: np.concatenate(p) for s, p in parts.items()}


def load_digits_split(split: str, normalize: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Load one split of the digits as model-shaped images.

    Parameters
    ----------
    split : {"train", "calib", "test", "all"}
        Which part of the seeded split (see :data:`SPLIT_SIZES`).
    normalize : bool
        If False (default), pixels are ``g / 255`` in [0, 1]; if True, they are normalised with
        :data:`MEAN` / :data:`STD`, i.e. exactly the model input.

    Returns
    -------
    images : numpy.ndarray
        float32, shape (N, 3, 8, 8) (the grey channel repeated three times).
    labels : numpy.ndarray
        int64, shape (N,).
    """
    if split not in SPLITS + ("all",):
        raise ValueError(f"unknown digits split {split!r}; expected one of {SPLITS + ('all',)}")
    grey, labels = _digits_raw()
    if split != "all":
        idx = split_indices(labels)[split]
        grey, labels = grey[idx], labels[idx]
    images = grey.astype(np.float32) / np.float32(255.0)
    images = np.repeat(images[:, None, :, :], 3, axis=1)
    if normalize:
        images = normalize_images(images)
    return np.ascontiguousarray(images), labels


def normalize_images(images: np.ndarray) -> np.ndarray:
    """Apply the model's per-channel normalisation to [0, 1] images (N, 3, H, W)."""
    mean = np.asarray(MEAN, dtype=np.float32)[None, :, None, None]
    std = np.asarray(STD, dtype=np.float32)[None, :, None, None]
    return ((images - mean) / std).astype(np.float32)


def digits_dataset(split: str):
    """A ``torch.utils.data.TensorDataset`` of normalised images and labels of one split."""
    import torch

    images, labels = load_digits_split(split, normalize=True)
    return torch.utils.data.TensorDataset(torch.from_numpy(images), torch.from_numpy(labels))


def digits_loader(split: str, batch_size: int = 128, shuffle: bool = False, seed: int = 0, limit: int | None = None):
    """A ``DataLoader`` over one split (normalised inputs, labels).

    Parameters
    ----------
    split : str
        ``"train"``, ``"calib"``, ``"test"`` or ``"all"``.
    batch_size : int
        Batch size.
    shuffle : bool
        Shuffle with a generator seeded by ``seed``.
    limit : int, optional
        Use only the first ``limit`` samples of the split.
    """
    import torch

    ds = digits_dataset(split)
    if limit is not None:
        if limit <= 0:
            raise ValueError(f"limit must be positive, got {limit}")
        ds = torch.utils.data.Subset(ds, range(min(limit, len(ds))))
    gen = torch.Generator().manual_seed(seed)
    return torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=shuffle, generator=gen)


def export_image_folder(out_dir, split: str = "test") -> dict:
    """Write one split as an ImageNet-style folder: ``out_dir/digitK/NNNN.png`` plus ``class_map.txt``.

    The PNGs are 8x8 8-bit grey-scale; loading them as RGB and applying ToTensor + Normalize
    (:data:`MEAN`, :data:`STD`) gives exactly ``load_digits_split(split, normalize=True)``.

    Parameters
    ----------
    out_dir : str or Path
        Target folder (created).
    split : str
        Which split to export.

    Returns
    -------
    dict
        ``{"root": Path, "class_map": Path, "count": int}``. ``class_map.txt`` lists the folder
        names one per line in class-index order (the format timm's ``class_map`` option reads).
    """
    from PIL import Image

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    grey, labels = _digits_raw()
    idx = split_indices(labels)[split] if split != "all" else np.arange(len(labels))
    for name in CLASS_NAMES:
        (out / name).mkdir(exist_ok=True)
    for i in idx:
        Image.fromarray(grey[i], mode="L").save(out / CLASS_NAMES[labels[i]] / f"{i:04d}.png")
    class_map = out / "class_map.txt"
    class_map.write_text("\n".join(CLASS_NAMES) + "\n")
    (out / "split.json").write_text(json.dumps({"split": split, "seed": SPLIT_SEED, "count": int(len(idx))}))
    return {"root": out, "class_map": class_map, "count": int(len(idx))}


# -------------------------------------------------------------------------------------- model


def build_model():
    """Create the untrained ``vitaccel-digits`` ViT with its ``pretrained_cfg`` set."""
    from timm.models.vision_transformer import VisionTransformer

    model = VisionTransformer(**MODEL_KWARGS)
    cfg = dict(PRETRAINED_CFG)
    cfg["architecture"] = MODEL_NAME
    model.pretrained_cfg = cfg
    model.default_cfg = cfg
    return model


def create_embedded_model(pretrained: bool = True, checkpoint=None):
    """Create the ``vitaccel-digits`` model, by default with the committed trained weights.

    Parameters
    ----------
    pretrained : bool
        Load the weights from ``checkpoint``; False gives the randomly initialised model.
    checkpoint : str or Path, optional
        A safetensors state dict; default :data:`CHECKPOINT`.

    Returns
    -------
    timm.models.vision_transformer.VisionTransformer
        In ``eval()`` mode.
    """
    model = build_model()
    if pretrained:
        from safetensors.torch import load_file

        path = Path(checkpoint) if checkpoint is not None else CHECKPOINT
        if not path.is_file():
            raise FileNotFoundError(
                f"embedded checkpoint {path} not found; recreate it with "
                "`python -m golden.embedded.train_digits`"
            )
        state = load_file(str(path))
        own = model.state_dict()
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
                  for k in own if k in state and state[k].shape != own[k].shape]
        if missing or unexpected or shapes:
            raise RuntimeError(f"checkpoint {path} does not match {MODEL_NAME}: missing {missing[:5]}, "
                               f"unexpected {unexpected[:5]}, shape mismatches {shapes[:5]}")
        model.load_state_dict(state)
    return model.eval()


def eval_transform():
    """The torchvision transform for PIL images of the exported folder (ToTensor + Normalize)."""
    from torchvision import transforms

    return transforms.Compose([
        transforms.Grayscale(num_output_channels=3),
        transforms.ToTensor(),
        transforms.Normalize(MEAN, STD),
    ])


def evaluate_fp(model=None, split: str = "test", batch_size: int = 256) -> float:
    """Top-1 accuracy (fraction) of a float model on one digits split."""
    import torch

    model = create_embedded_model() if model is None else model
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for x, y in digits_loader(split, batch_size=batch_size):
            correct += int((model(x).argmax(-1) == y).sum())
            total += len(y)
    return correct / total
