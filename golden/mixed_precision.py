"""Greedy MP: layer-wise bit allocation of MPTQ-ViT.

Every quantizable layer starts at W8A8. While the average bit width is above the target, the layer
whose *next lower* width (8 -> 6 -> 4, weights and activations together) costs least is lowered by
one step. The cost is measured by the score

.. math::

    \\text{score}(l) = \\mathrm{SQNR}_l(b_{\\text{next}}) \\cdot \\ln(\\text{numel}_l)

and the layer with the **largest** score is lowered: a high SQNR at the lower width means the layer
is insensitive, a large ``numel`` means lowering it saves more bits. ``SQNR`` is in decibels.
Ties go to the layer listed first.

The average is ``sum_l numel_l * b_l / sum_l numel_l`` (``weighting="numel"``, the storage
average, default) or the plain mean over layers (``weighting="layer"``); the loop stops as soon as
the average is ``<= target`` (the last step may overshoot below the target).

:func:`greedy_mixed_precision` is a pure function of the layer sizes and an SQNR callback.
:func:`linear_output_sqnr_fn` builds the callback for a floating-point timm model: SQNR of a linear
layer's **output** on calibration data, ``10 log10(sum Y^2 / sum (Y - Y_q)^2)``, where ``Y`` is the FP
output for the FP input ``X`` and ``Y_q`` uses both the weight quantized per output channel
(``PerChannelWeightQuantizer``, ``sym``) and the input quantized per tensor (``UniformQuantizer``,
``uniform``) at the candidate width. Each layer is measured alone (all other layers in FP).
"""
from __future__ import annotations

import math
from typing import Callable, Iterable, Mapping, Sequence

import torch
from torch import nn

from vitaccel.sim.formats import BITS

from .quantizers.uniform import UniformQuantizer
from .quantizers.weight import PerChannelWeightQuantizer
from .smoothquant import iterate_calibration

__all__ = [
    "BIT_LADDER",
    "average_bits",
    "greedy_mixed_precision",
    "linear_layers",
    "linear_output_sqnr_fn",
    "sqnr_db",
]

#: Widths a layer steps through, highest first (every width of ``sim.formats.BITS``).
BIT_LADDER = tuple(sorted(BITS, reverse=True))


def sqnr_db(reference: torch.Tensor, approx: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio ``10 log10(sum ref^2 / sum (ref - approx)^2)`` in dB.

    Returns ``inf`` when the two are equal.
    """
    ref = reference.detach().double()
    noise = float(((ref - approx.detach().double()) ** 2).sum())
    signal = float((ref ** 2).sum())
    if noise == 0.0:
        return math.inf
    if signal == 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


def average_bits(
    allocation: Mapping[str, tuple[int, int]], numel: Mapping[str, int], weighting: str = "numel"
) -> float:
    """Average of ``(w_bits + a_bits) / 2`` over the layers, weighted by ``numel`` or plain."""
    if weighting not in ("numel", "layer"):
        raise ValueError(f"weighting must be 'numel' or 'layer', got {weighting!r}")
    if not allocation:
        raise ValueError("empty allocation")
    bits = {n: (w + a) / 2.0 for n, (w, a) in allocation.items()}
    if weighting == "layer":
        return sum(bits.values()) / len(bits)
    total = sum(numel[n] for n in bits)
    return sum(numel[n] * b for n, b in bits.items()) / total


def greedy_mixed_precision(
    layers: Mapping[str, int] | Sequence[tuple[str, int]],
    sqnr_fn: Callable[[str, int], float],
    target_bits: float,
    ladder: Sequence[int] = BIT_LADDER,
    weighting: str = "numel",
    trace: list | None = None,
) -> dict[str, tuple[int, int]]:
    """Greedy layer-wise bit allocation (MPTQ-ViT Greedy MP).

    Parameters
    ----------
    layers : mapping or sequence of (name, numel)
        Quantizable layers in model order with their size (weight element count).
    sqnr_fn : callable
        ``sqnr_fn(name, bits) -> float``: SQNR in dB of the layer at ``bits`` (weights and
        activations). Called at most once per (layer, width); results are cached.
    target_bits : float
        Stop when the average width is ``<= target_bits`` (e.g. 4.0, 5.0, 6.0).
    ladder : sequence of int
        Widths from highest to lowest (default 8, 6, 4). Every layer starts at ``ladder[0]``.
    weighting : {"numel", "layer"}
        Average weighted by ``numel`` or over layers.
    trace : list, optional
        If given, receives one ``(name, new_bits, score)`` tuple per step.

    Returns
    -------
    dict
        ``name -> (w_bits, a_bits)`` (equal widths).
    """
    items = list(layers.items()) if isinstance(layers, Mapping) else [tuple(x) for x in layers]
    if not items:
        raise ValueError("greedy_mixed_precision needs at least one layer")
    names = [n for n, _ in items]
    if len(set(names)) != len(names):
        raise ValueError("duplicate layer names")
    numel = {}
    for n, k in items:
        if int(k) != k or k < 1:
            raise ValueError(f"layer {n!r}: numel must be a positive integer, got {k!r}")
        numel[n] = int(k)
    ladder = tuple(int(b) for b in ladder)
    if not ladder or list(ladder) != sorted(set(ladder), reverse=True):
        raise ValueError(f"ladder must be strictly decreasing, got {ladder}")
    if not ladder[-1] <= target_bits:
        raise ValueError(
            f"target {target_bits} bits is below the lowest width {ladder[-1]}: unreachable"
        )
    if weighting not in ("numel", "layer"):
        raise ValueError(f"weighting must be 'numel' or 'layer', got {weighting!r}")

    level = {n: 0 for n in names}
    cache: dict[tuple[str, int], float] = {}

    def alloc():
        return {n: (ladder[level[n]], ladder[level[n]]) for n in names}

    def score(n: str) -> float:
        b = ladder[level[n] + 1]
        if (n, b) not in cache:
            s = float(sqnr_fn(n, b))
            if math.isnan(s):
                raise ValueError(f"SQNR of layer {n!r} at {b} bits is NaN")
            cache[(n, b)] = s
        return cache[(n, b)] * math.log(numel[n]) if numel[n] > 1 else cache[(n, b)]

    while average_bits(alloc(), numel, weighting) > target_bits:
        best_name, best_score = None, -math.inf
        for n in names:
            if level[n] + 1 >= len(ladder):
                continue
            s = score(n)
            if best_name is None or s > best_score:
                best_name, best_score = n, s
        if best_name is None:  # every layer at the lowest width (only if target < ladder[-1])
            break
        level[best_name] += 1
        if trace is not None:
            trace.append((best_name, ladder[level[best_name]], best_score))
    return alloc()


def linear_layers(model: nn.Module, include: Callable[[str, nn.Module], bool] | None = None) -> dict[str, int]:
    """``name -> weight numel`` of the ``nn.Linear`` layers to allocate.

    Default ``include``: linear layers inside transformer blocks (``qkv``, ``proj``, ``fc1``, ``fc2``);
    patch embedding and head stay at 8 bits.
    """
    if include is None:
        include = lambda name, mod: "blocks." in name
    out = {}
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear) and include(name, mod):
            out[name] = mod.weight.numel()
    if not out:
        raise ValueError("no linear layers selected for mixed precision")
    return out


@torch.no_grad()
def linear_output_sqnr_fn(
    model: nn.Module,
    calib: torch.Tensor | Iterable,
    layer_names: Iterable[str] | None = None,
    batch_size: int = 16,
    max_rows: int = 4096,
    device: str | torch.device | None = None,
    act_method: str = "minmax",
    weight_search: str = "mse",
    progress: bool = True,
) -> Callable[[str, int], float]:
    """Build ``sqnr_fn(name, bits)`` for :func:`greedy_mixed_precision` from a float model.

    One forward pass over ``calib`` records, for each selected ``nn.Linear``, a random subset of at
    most ``max_rows`` input rows (tokens). ``sqnr_fn(name, b)`` then quantizes that layer's weight
    (per channel, ``weight_search``) and input (per tensor, ``act_method``) to ``b`` bits and returns
    the SQNR of its output in dB (see the module docstring).
    """
    from tqdm.auto import tqdm

    modules = dict(model.named_modules())
    names = list(layer_names) if layer_names is not None else list(linear_layers(model))
    for n in names:
        if not isinstance(modules.get(n), nn.Linear):
            raise ValueError(f"{n!r} is not an nn.Linear of the model")
    rows: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    gen = torch.Generator().manual_seed(0)

    def make_hook(n):
        def hook(_m, inputs, _o):
            x = inputs[0].detach().reshape(-1, inputs[0].shape[-1]).float().cpu()
            if x.shape[0] > max_rows:
                x = x[torch.randperm(x.shape[0], generator=gen)[:max_rows]]
            rows[n].append(x)
        return hook

    handles = [modules[n].register_forward_hook(make_hook(n)) for n in names]
    was_training = model.training
    model.eval()
    try:
        for batch in tqdm(iterate_calibration(calib, batch_size), desc="Greedy MP inputs",
                          disable=not progress, leave=False):
            model(batch.to(device) if device is not None else batch)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    inputs = {}
    for n, xs in rows.items():
        if not xs:
            raise RuntimeError(f"layer {n} was never called during calibration")
        x = torch.cat(xs)
        if x.shape[0] > max_rows:
            x = x[torch.randperm(x.shape[0], generator=gen)[:max_rows]]
        inputs[n] = x

    def sqnr_fn(name: str, bits: int) -> float:
        lin = modules[name]
        x = inputs[name]
        w = lin.weight.detach().float().cpu()
        b = lin.bias.detach().float().cpu() if lin.bias is not None else None
        y = nn.functional.linear(x, w, b)
        wq = PerChannelWeightQuantizer(bits, search=weight_search).calibrate(w)
        aq = UniformQuantizer(bits, method=act_method).calibrate(x)
        yq = nn.functional.linear(aq.fake_quant(x), wq.fake_quant(w), b)
        return sqnr_db(y, yq)

    return sqnr_fn
