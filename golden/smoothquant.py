"""SQ-b: SmoothQuant with a bias term (MPTQ-ViT), folded into LayerNorm -> Linear pairs.

For every LayerNorm -> Linear pair of a transformer block (``norm1 -> attn.qkv`` and
``norm2 -> mlp.fc1`` in timm ViT/DeiT/Swin blocks) the LayerNorm output ``X`` (tokens x channels)
is shifted and scaled per channel ``j`` before it reaches the linear layer:

.. math::

    \\mu_j = \\operatorname{mean}_t X_{tj}, \\qquad
    \\epsilon_j = \\frac{\\max_t |X_{tj} - \\mu_j|^{\\alpha}}{\\max_i |W_{ij}|^{1-\\alpha}}
    \\quad (\\alpha = 0.5:\\ \\epsilon_j = \\sqrt{\\max_t|X_{tj}-\\mu_j| / \\max_i|W_{ij}|})

    X' = (X - \\mu) / \\epsilon, \\qquad W'_{ij} = W_{ij} \\epsilon_j, \\qquad b' = b + W \\mu

so that ``X' W'^T + b' = X W^T + b`` exactly in real arithmetic (``W`` is ``out x in`` as in
``torch.nn.Linear``). ``X'`` is folded into the LayerNorm affine parameters,
``gamma' = gamma / epsilon`` and ``beta' = (beta - mu) / epsilon``, so the transformed model has the
same graph and (up to float32 rounding) the same outputs; only the quantizers see different ranges.
This is the MPTQ-ViT reparameterisation ``Y W^T + b = ((Y - mu)/eps)(eps W)^T + (b + mu W^T)``:
the mean shift removes the asymmetry of the post-LayerNorm activations, the SmoothQuant factor
migrates the per-channel range between activations and weights.

Guards: a channel whose factor is not a positive finite number (zero activation range, zero weight
column, NaN/inf statistics) and every channel with ``gamma == 0`` (the real DeiT-tiny checkpoint has
exact zeros) gets ``epsilon = 1``. For ``gamma == 0`` channels ``X_j == beta_j`` for every token, so
``mu_j`` is set to ``beta_j`` exactly and the transformed channel is exactly 0.

Statistics are collected with forward hooks on the LayerNorm modules while the (floating-point)
model runs over the calibration data; apply SQ-b to the float model *before* wrapping it with
quantizers.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator

import torch
from torch import nn

__all__ = [
    "NormLinearPair",
    "SmoothingFactors",
    "find_norm_linear_pairs",
    "collect_norm_statistics",
    "smoothing_factors",
    "apply_smoothing",
    "smoothquant_bias",
    "iterate_calibration",
]


@dataclass
class NormLinearPair:
    """A LayerNorm whose output feeds exactly one linear layer (directly, per channel)."""

    norm_name: str
    norm: nn.LayerNorm
    linear_name: str
    linear: nn.Module


@dataclass
class SmoothingFactors:
    """The SQ-b transform of one pair: ``X' = (X - mu) / eps`` (float32 vectors, length = channels)."""

    mu: torch.Tensor
    eps: torch.Tensor
    guarded: int  #: number of channels forced to ``eps = 1``


def _linear_weight(linear: nn.Module) -> torch.Tensor:
    weight = getattr(linear, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        raise TypeError(
            f"SQ-b needs a linear layer with a 2-D .weight (out x in); got {type(linear).__name__}"
        )
    return weight


def find_norm_linear_pairs(model: nn.Module) -> list[NormLinearPair]:
    """Find the ``norm1 -> attn.qkv`` and ``norm2 -> mlp.fc1`` pairs of every transformer block.

    A block is any sub-module with attributes ``norm1`` (LayerNorm) and ``attn.qkv`` and/or
    ``norm2`` (LayerNorm) and ``mlp.fc1`` — the layout of timm ViT, DeiT and Swin blocks.

    Parameters
    ----------
    model : torch.nn.Module
        A timm vision transformer (floating point).

    Returns
    -------
    list of NormLinearPair
        In module order. Empty if the model has no such blocks.
    """
    pairs: list[NormLinearPair] = []
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        for norm_attr, parent_attr, lin_attr in (("norm1", "attn", "qkv"), ("norm2", "mlp", "fc1")):
            norm = getattr(module, norm_attr, None)
            parent = getattr(module, parent_attr, None)
            linear = getattr(parent, lin_attr, None) if parent is not None else None
            if isinstance(norm, nn.LayerNorm) and isinstance(linear, nn.Module):
                pairs.append(
                    NormLinearPair(
                        f"{prefix}{norm_attr}", norm, f"{prefix}{parent_attr}.{lin_attr}", linear
                    )
                )
    return pairs


def iterate_calibration(
    calib: torch.Tensor | Iterable, batch_size: int = 32
) -> Iterator[torch.Tensor]:
    """Yield input batches from a tensor (split into ``batch_size`` chunks) or an iterable.

    Items of an iterable may be tensors or ``(inputs, targets, ...)`` tuples/lists (a DataLoader).
    """
    if isinstance(calib, torch.Tensor):
        if calib.dim() == 0 or calib.shape[0] == 0:
            raise ValueError("calibration tensor is empty")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        yield from torch.split(calib, batch_size)
        return
    count = 0
    for item in calib:
        if isinstance(item, (tuple, list)):
            item = item[0]
        if not isinstance(item, torch.Tensor):
            raise TypeError(f"calibration batches must be tensors, got {type(item).__name__}")
        count += 1
        yield item
    if count == 0:
        raise ValueError("calibration data is empty")


@torch.no_grad()
def collect_norm_statistics(
    model: nn.Module,
    norms: dict[str, nn.LayerNorm],
    calib: torch.Tensor | Iterable,
    batch_size: int = 32,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Per-channel mean, min and max of each LayerNorm's output over all calibration tokens.

    Returns
    -------
    dict
        ``name -> (mean, min, max)``, float64 tensors on the CPU.
    """
    from tqdm.auto import tqdm

    acc: dict[str, list] = {name: [None, None, None, 0] for name in norms}

    def make_hook(name):
        def hook(_module, _inputs, output):
            x = output.detach().reshape(-1, output.shape[-1]).to(torch.float64)
            entry = acc[name]
            s, lo, hi = x.sum(0), x.amin(0), x.amax(0)
            if entry[0] is None:
                entry[0], entry[1], entry[2] = s, lo, hi
            else:
                entry[0] += s
                entry[1] = torch.minimum(entry[1], lo)
                entry[2] = torch.maximum(entry[2], hi)
            entry[3] += x.shape[0]

        return hook

    handles = [norm.register_forward_hook(make_hook(name)) for name, norm in norms.items()]
    was_training = model.training
    model.eval()
    try:
        for batch in tqdm(
            iterate_calibration(calib, batch_size), desc="SQ-b statistics", disable=not progress,
            leave=False,
        ):
            model(batch.to(device) if device is not None else batch)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    out = {}
    for name, (s, lo, hi, n) in acc.items():
        if n == 0:
            raise RuntimeError(f"LayerNorm {name} was never called during calibration")
        out[name] = ((s / n).cpu(), lo.cpu(), hi.cpu())
    return out


def smoothing_factors(
    mean: torch.Tensor,
    xmin: torch.Tensor,
    xmax: torch.Tensor,
    weight: torch.Tensor,
    alpha: float = 0.5,
    gamma: torch.Tensor | None = None,
    beta: torch.Tensor | None = None,
    bias: bool = True,
    center: str = "mean",
) -> SmoothingFactors:
    """SQ-b factors ``mu`` and ``eps`` of one pair from activation statistics and the weight.

    Parameters
    ----------
    mean, xmin, xmax : torch.Tensor
        Per-channel statistics of the LayerNorm output (length ``in_features``).
    weight : torch.Tensor
        Linear weight, ``out x in``.
    alpha : float
        Migration strength in ``[0, 1]``: ``eps = max|X - mu|^alpha / max|W|^(1 - alpha)``.
    gamma, beta : torch.Tensor, optional
        LayerNorm affine parameters; channels with ``gamma == 0`` get ``eps = 1`` and ``mu = beta``.
    bias : bool
        ``False`` gives plain SmoothQuant: ``mu = 0`` and ``eps = max|X|^alpha / max|W|^(1 - alpha)``
        (the "SQ" row of MPTQ-ViT's ablation); ``gamma == 0`` channels keep ``eps = 1``.
    center : str
        The shift ``mu`` of SQ-b: ``"mean"`` (the channel's mean over the calibration tokens) or
        ``"midpoint"`` (``(max + min) / 2``, which centres the channel's range on zero, so that
        ``max|X - mu|`` is as small as a shift can make it).
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if center not in ("mean", "midpoint"):
        raise ValueError(f"center must be 'mean' or 'midpoint', got {center!r}")
    if center == "midpoint":
        mean = (xmax.to(torch.float64) + xmin.to(torch.float64)) / 2  # used as mu below, like the mean
    mean = mean.to(torch.float64)
    if not bias:
        mean = torch.zeros_like(mean)
    act_range = torch.maximum(xmax.to(torch.float64) - mean, mean - xmin.to(torch.float64))
    w_range = weight.detach().abs().amax(0).to(torch.float64).cpu()
    if w_range.shape != mean.shape:
        raise ValueError(
            f"weight has {w_range.shape[0]} input channels but the statistics have {mean.shape[0]}"
        )
    with torch.no_grad():
        eps = act_range.clamp_min(0).pow(alpha) / w_range.pow(1.0 - alpha)
    bad = ~torch.isfinite(eps) | (eps <= 0) | ~torch.isfinite(mean)
    mu = torch.where(torch.isfinite(mean), mean, torch.zeros_like(mean))
    if gamma is not None:
        zero_gamma = gamma.detach().cpu() == 0
        bad |= zero_gamma
        if beta is not None and bias:
            mu = torch.where(zero_gamma, beta.detach().cpu().to(torch.float64), mu)
    eps = torch.where(bad, torch.ones_like(eps), eps)
    return SmoothingFactors(mu.to(torch.float32), eps.to(torch.float32), int(bad.sum()))


@torch.no_grad()
def apply_smoothing(norm: nn.LayerNorm, linear: nn.Module, factors: SmoothingFactors) -> None:
    """Fold ``X' = (X - mu) / eps`` into ``norm`` and the inverse into ``linear`` (in place).

    ``gamma' = gamma / eps``, ``beta' = (beta - mu) / eps``, ``W' = W * eps`` (per input column),
    ``b' = b + W mu`` (computed in float64 from the original ``W``). A linear layer without bias
    gets one.
    """
    if not isinstance(norm, nn.LayerNorm) or norm.weight is None:
        raise TypeError("SQ-b needs a LayerNorm with elementwise affine parameters")
    weight = _linear_weight(linear)
    dev = weight.device
    mu64 = factors.mu.to(torch.float64).to(dev)
    eps64 = factors.eps.to(torch.float64).to(dev)
    w64 = weight.to(torch.float64)
    shift = w64 @ mu64
    bias = getattr(linear, "bias", None)
    if bias is None:
        linear.bias = nn.Parameter(shift.to(weight.dtype))
    else:
        bias.copy_((bias.to(torch.float64) + shift).to(bias.dtype))
    weight.copy_((w64 * eps64[None, :]).to(weight.dtype))
    g64 = norm.weight.to(torch.float64)
    norm.weight.copy_((g64 / eps64.to(norm.weight.device)).to(norm.weight.dtype))
    beta = norm.bias
    if beta is None:
        norm.bias = nn.Parameter(torch.zeros_like(norm.weight))
        beta = norm.bias
    b64 = beta.to(torch.float64)
    beta.copy_(((b64 - mu64.to(beta.device)) / eps64.to(beta.device)).to(beta.dtype))


def smoothquant_bias(
    model: nn.Module,
    calib: torch.Tensor | Iterable,
    alpha: float = 0.5,
    batch_size: int = 32,
    device: str | torch.device | None = None,
    pairs: list[NormLinearPair] | None = None,
    progress: bool = True,
    bias: bool = True,
    center: str = "mean",
) -> dict[str, SmoothingFactors]:
    """Apply SQ-b to every LayerNorm -> Linear pair of ``model`` in place.

    Parameters
    ----------
    model : torch.nn.Module
        Floating-point timm ViT/DeiT/Swin (before quantizers are attached).
    calib : torch.Tensor or iterable
        Calibration images ``(N, 3, H, W)`` or an iterable of batches / ``(images, labels)``.
    alpha : float
        SmoothQuant migration strength (MPTQ-ViT uses 0.5).
    batch_size : int
        Batch size when ``calib`` is a tensor.
    device : str or torch.device, optional
        Where to move the batches (the model must already be there).
    pairs : list of NormLinearPair, optional
        Pairs to transform; default :func:`find_norm_linear_pairs`.
    progress : bool
        Show a tqdm progress bar.
    bias : bool
        Apply the shift ``mu`` (SQ-b, default) or not (plain SmoothQuant).
    center : str
        ``mu`` is the channel mean (``"mean"``) or the middle of its range (``"midpoint"``);
        see :func:`smoothing_factors`.

    Returns
    -------
    dict
        ``linear_name -> SmoothingFactors`` (what was applied).
    """
    if pairs is None:
        pairs = find_norm_linear_pairs(model)
    if not pairs:
        raise ValueError("no LayerNorm -> Linear pairs (norm1 -> attn.qkv, norm2 -> mlp.fc1) found")
    stats = collect_norm_statistics(
        model, {p.norm_name: p.norm for p in pairs}, calib, batch_size, device, progress
    )
    applied = {}
    for p in pairs:
        mean, lo, hi = stats[p.norm_name]
        factors = smoothing_factors(
            mean, lo, hi, _linear_weight(p.linear), alpha, p.norm.weight, p.norm.bias, bias=bias,
            center=center,
        )
        apply_smoothing(p.norm, p.linear, factors)
        applied[p.linear_name] = factors
    return applied
