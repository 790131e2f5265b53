"""GPTQ weight rounding (Frantar et al. 2022, "GPTQ: Accurate Post-Training Quantization for GPT").

The per-channel ``sym`` weight codes of docs/datapath.md section 3 are chosen column by column
(input feature by input feature) instead of by nearest rounding: after each column is rounded, its
error is spread over the columns not yet rounded through the inverse Hessian of the layer's output
error, ``H = X^T X`` (``X``: the layer's input rows over the calibration images), so the layer
output ``X W^T`` moves as little as possible. The scales (the quantizer's range search) are kept;
only which integer each weight rounds to changes, so the codes stay on the same grid and the
integer path is unchanged.

The result is stored as the quantizer's *compensated weight* (``PerChannelWeightQuantizer.replacement``):
the value each weight had when GPTQ rounded it. Nearest rounding of it gives GPTQ's codes exactly
(the same float32 division and ``floor(x + 0.5)`` as the quantizer), and AdaRound
(:mod:`golden.reconstruct`) starts from it when AMO follows.

``source`` picks the rows ``X`` (and the target):

``"fp"``      the layer's input with every quantizer off (plain GPTQ on the float model);
``"quant"``   the layer's *quantized* input ``X~`` (activation quantizers on, weights off): the rows
              the quantized weight actually multiplies;
``"target"``  ``X~`` as above, and the target output ``X W^T`` of the unquantized input: GPTQ runs on
              the least-squares weight ``W* = W (X^T X~) (X~^T X~)^-1``, since
              ``|X W^T - X~ Q^T|^2 = |X~ (W* - Q)^T|^2 + const`` (so it also compensates the input's
              own quantization error).
"""
from __future__ import annotations

import torch
from tqdm.auto import tqdm

from .qlayers import QuantConv2d
from .quantizers.base import QuantizerError, round_half_up

__all__ = ["SOURCES", "gptq_round", "gptq_model", "layer_statistics"]

SOURCES = ("fp", "quant", "target")


def gptq_round(w: torch.Tensor, h: torch.Tensor, scale: torch.Tensor, qmax: int, damp: float = 0.01,
               act_order: bool = True, block: int = 128) -> torch.Tensor:
    """GPTQ with fixed per-row scales: the compensated weight (float32, ``w``'s shape).

    Parameters
    ----------
    w : (out, in) tensor
        Weight to round (or the least-squares target weight).
    h : (in, in) tensor
        ``X^T X`` of the rows the weight multiplies (any positive multiple).
    scale : (out,) tensor
        Per-row scale; codes are ``clamp(floor(wc / scale + 0.5), -qmax, qmax)`` of the result ``wc``.
    damp : float
        Ridge added to ``H``'s diagonal, relative to its mean diagonal (GPTQ's 1 %).
    act_order : bool
        Round the columns in order of decreasing ``H`` diagonal (GPTQ's "act-order").
    """
    if w.dim() != 2 or h.shape != (w.shape[1], w.shape[1]) or scale.shape != (w.shape[0],):
        raise QuantizerError(f"gptq_round: weight {tuple(w.shape)}, Hessian {tuple(h.shape)} and scale "
                             f"{tuple(scale.shape)} do not match")
    if not (torch.isfinite(w).all() and torch.isfinite(h).all()):
        raise QuantizerError("gptq_round: non-finite weight or Hessian")
    n = w.shape[1]
    W = w.detach().double().clone()
    H = h.detach().double().clone()
    dead = torch.diag(H) <= 0
    H[dead, dead] = 1.0                                   # inputs never seen: nearest rounding, no spread
    perm = torch.argsort(torch.diag(H), descending=True) if act_order else torch.arange(n)
    W, H = W[:, perm], H[perm][:, perm]
    H += damp * torch.diag(H).mean() * torch.eye(n, dtype=H.dtype)
    U = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    s32 = scale.detach().float()
    s64 = s32.double()
    out = torch.empty_like(W)
    for i1 in range(0, n, block):
        i2 = min(i1 + block, n)
        W1 = W[:, i1:i2].clone()
        E1 = torch.zeros_like(W1)
        U1 = U[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = W1[:, i].float()                         # the value the quantizer will see
            q = torch.clamp(round_half_up(col / s32), -qmax, qmax)
            out[:, i1 + i] = col.double()
            err = (col.double() - q.double() * s64) / U1[i, i]
            W1[:, i:] -= err[:, None] * U1[i, i:][None, :]
            E1[:, i] = err
        W[:, i2:] -= E1 @ U[i1:i2, i2:]
    res = torch.empty_like(out)
    res[:, perm] = out
    return res.float()


@torch.no_grad()
def layer_statistics(qvit, images: torch.Tensor, layers: dict, source: str, batch_size: int = 16,
                     progress: bool = True) -> dict:
    """``name -> (H, C, rows)``: ``H = X~^T X~`` (or ``X^T X`` for ``"fp"``), ``C = X^T X~``
    (``"target"`` only, else ``None``) of each layer's input rows over ``images`` (float64)."""
    if source not in SOURCES:
        raise QuantizerError(f"unknown GPTQ source {source!r}; choose one of {SOURCES}")
    stats = {n: [torch.zeros(l.in_features, l.in_features, dtype=torch.float64), None, 0]
             for n, l in layers.items()}
    if source == "target":
        for n, l in layers.items():
            stats[n][1] = torch.zeros(l.in_features, l.in_features, dtype=torch.float64)

    def hook(name):
        def fwd(_mod, args, out):
            xq = out.detach().reshape(-1, out.shape[-1]).double()
            st = stats[name]
            st[0] += xq.t() @ xq
            if st[1] is not None:
                st[1] += args[0].detach().reshape(-1, out.shape[-1]).double().t() @ xq
            st[2] += xq.shape[0]
        return fwd

    handles = [l.input_quantizer.register_forward_hook(hook(n)) for n, l in layers.items()]
    saved = {q: q.enabled for _, q in qvit.quantizers()}
    qvit.set_quant(weights=False, activations=source != "fp")
    try:
        for i in tqdm(range(0, len(images), batch_size), desc="GPTQ statistics", disable=not progress, leave=False):
            qvit(images[i:i + batch_size])
    finally:
        for h in handles:
            h.remove()
        for q, flag in saved.items():
            q.enabled = flag
    return {n: tuple(v) for n, v in stats.items()}


def gptq_model(qvit, images: torch.Tensor, source: str = "target", damp: float = 0.01, act_order: bool = True,
               batch_size: int = 16, progress: bool = True) -> dict:
    """GPTQ-round every block linear of ``qvit`` (the weight scales must be calibrated).

    The patch embedding and the head keep nearest rounding (the head sees one row per image, too
    few for its Hessian). Returns ``name -> relative output error`` ``|X~ (W - Q)^T|^2 / |X~ W^T|^2``
    (on the statistics' rows) before and after, as ``(nearest, gptq)``.
    """
    layers = {n: l for n, l in qvit.quant_layers().items()
              if "blocks." in n and not isinstance(l, QuantConv2d) and l.weight_quantizer.enabled}
    if not layers:
        return {}
    stats = layer_statistics(qvit, images, layers, source, batch_size, progress)
    report = {}
    for n, layer in tqdm(layers.items(), desc="GPTQ", disable=not progress, leave=False):
        wq = layer.weight_quantizer
        if not wq.calibrated:
            layer.calibrate_weight()
        wq.replacement = None
        h, c, _rows = stats[n]
        w = layer.weight.detach()
        target = w.double()
        if c is not None:   # W* = W C H^-1 (H damped as in the rounding)
            hd = h + damp * torch.diag(h).mean().clamp_min(1e-30) * torch.eye(h.shape[0], dtype=h.dtype)
            target = torch.linalg.solve(hd, (target @ c).t()).t()
        wc = gptq_round(target, h, wq.scale.detach().reshape(-1), wq.qmax, damp=damp, act_order=act_order)

        def out_err(q):
            d = (w.double() - q.double())
            return float(torch.einsum("oi,ij,oj->", d, h, d) / torch.einsum("oi,ij,oj->", w.double(), h, w.double()))
        nearest = wq.dequantize(wq.quantize(w))
        wq.replacement = wc
        report[n] = (out_err(nearest), out_err(wq.dequantize(wq.quantize(w))))
    return report
