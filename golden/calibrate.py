"""Post-training calibration of a float timm model into a :class:`golden.qmodel.QuantViT`.

Steps (each switched by :class:`golden.presets.QuantConfig`):

1. SQ-b SmoothQuant with bias (``config.smoothquant``; ``golden.smoothquant``) on the float model;
2. greedy mixed precision (``config.mixed_precision``; ``golden.mixed_precision``): per-layer bits
   with average ``<= config.mp_target_bits`` (default: the preset's weight bits);
3. wrap with quantizers (:func:`golden.qmodel.quantize_model`);
4. weight scales (per channel; with ``weight_search="hessian"`` chosen by the expected output
   error, from the second moments of each layer's input; with ``"output"`` by the Hessian-guided
   metric of each block linear's output), then activation statistics over the
   calibration images with the model in full precision (``observing``), then ``finalize`` of
   every activation quantizer (and the Hessian-guided range searches when configured);
5. GPTQ weight rounding of the block linears (``config.weight_rounding == "gptq"``; ``golden.gptq``);
6. AMO block reconstruction (``config.amo``; ``golden.reconstruct``) when that module exists.
"""
from __future__ import annotations

import importlib
import warnings

import torch
from tqdm.auto import tqdm

from .presets import QuantConfig
from .qlayers import QuantConv2d
from .qmodel import QuantViT, quantize_model
from .quantizers.base import QuantizerError
from .quantizers.three_region import ThreeRegionQuantizer, three_region_fake_quant
from .quantizers.uniform import UniformQuantizer


def _batches(images: torch.Tensor, batch_size: int):
    for i in range(0, len(images), batch_size):
        yield images[i:i + batch_size]


def collect_images(loader, n: int | None = None) -> torch.Tensor:
    """Stack the images of a DataLoader (``(x, y)`` batches) into one tensor (at most ``n``)."""
    xs, total = [], 0
    for batch in loader:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        xs.append(x)
        total += len(x)
        if n is not None and total >= n:
            break
    if not xs:
        raise QuantizerError("no calibration images")
    out = torch.cat(xs)
    return out[:n] if n is not None else out


def _optional(module: str):
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name == module:
            return None
        raise


@torch.no_grad()
def hessian_weight_ranges(qvit: QuantViT, images: torch.Tensor, batch_size: int = 16, progress: bool = True) -> None:
    """Re-choose every linear layer's weight clipping by the expected output error (``"hessian"``).

    Collects ``E[x_i^2]`` of each :class:`golden.qlayers.QuantLinear`'s full-precision input over the
    calibration images (activation quantizers disabled) and re-runs its weight range search with
    it (:class:`golden.quantizers.weight.PerChannelWeightQuantizer`, ``search="hessian"``). The
    patch-embedding convolution keeps the plain MSE search.
    """
    layers = {n: l for n, l in qvit.quant_layers().items()
              if not isinstance(l, QuantConv2d) and l.weight_quantizer.search == "hessian"}
    if not layers:
        return
    sums = {n: torch.zeros(l.in_features, dtype=torch.float64) for n, l in layers.items()}
    counts = dict.fromkeys(layers, 0)

    def hook(name):
        def pre(_mod, args):
            x = args[0].detach().reshape(-1, args[0].shape[-1]).double()
            sums[name] += (x * x).sum(dim=0)
            counts[name] += x.shape[0]
        return pre

    handles = [l.register_forward_pre_hook(hook(n)) for n, l in layers.items()]
    saved = {q: q.enabled for _, q in qvit.quantizers()}
    qvit.set_quant(weights=False, activations=False)
    try:
        for x in tqdm(list(_batches(images, batch_size)), desc="input moments", disable=not progress, leave=False):
            qvit(x)
    finally:
        for h in handles:
            h.remove()
        for q, flag in saved.items():
            q.enabled = flag
    for n, l in layers.items():
        l.weight_quantizer.set_input_second_moment((sums[n] / max(1, counts[n])).float())
        l.calibrate_weight()


def fc2_output_gradients(qvit: QuantViT, images: torch.Tensor, layers: dict, batch_size: int = 8,
                         max_rows: int = 4096, progress: bool = True) -> dict:
    """FP input rows of each layer in ``layers`` and the task-loss gradient at its output, per row.

    The model runs in full precision (every quantizer disabled); the loss is the cross entropy of
    its logits against its own top-1 prediction (the float model's label, so no dataset labels are
    needed), summed over images. A zero leaf tensor that requires grad is added to each hooked
    layer's output, so one backward pass gives ``dL/dO`` of every hooked layer as the leaf's gradient
    (the graph through later layers stays whole). Returns ``name -> (X rows, dL/dO rows)`` with at most
    ``max_rows`` random token rows (fixed seed) per layer.
    """
    rows = {n: ([], []) for n in layers}
    leaves: dict = {}

    def hook(name):
        def fwd(_mod, args, out):
            leaf = torch.zeros_like(out, requires_grad=True)
            leaves[name] = (args[0].detach(), leaf)
            return out + leaf
        return fwd

    handles = [l.register_forward_hook(hook(n)) for n, l in layers.items()]
    saved = {q: q.enabled for _, q in qvit.quantizers()}
    qvit.set_quant(weights=False, activations=False)
    try:
        for x in tqdm(list(_batches(images, batch_size)), desc="OPT-m gradients", disable=not progress, leave=False):
            leaves.clear()
            with torch.enable_grad():
                logits = qvit(x)
                loss = torch.nn.functional.cross_entropy(logits, logits.detach().argmax(-1), reduction="sum")
                loss.backward()
            for n, (inp, leaf) in leaves.items():
                rows[n][0].append(inp.reshape(-1, inp.shape[-1]))
                rows[n][1].append(leaf.grad.reshape(-1, leaf.shape[-1]))
    finally:
        for h in handles:
            h.remove()
        for q, flag in saved.items():
            q.enabled = flag
    gen = torch.Generator().manual_seed(0)
    out = {}
    for n, (xs, gs) in rows.items():
        x, g = torch.cat(xs), torch.cat(gs)
        if x.shape[0] > max_rows:
            keep = torch.randperm(x.shape[0], generator=gen)[:max_rows]
            x, g = x[keep], g[keep]
        out[n] = (x, g)
    return out


def _gradient_search(qvit: QuantViT, images: torch.Tensor, layers: dict, choose, batch_size: int,
                     progress: bool) -> dict:
    """Run ``choose(layer, x, g2)`` for every layer of ``layers`` on its FP input rows ``x`` and
    squared output gradients ``g2`` (:func:`fc2_output_gradients`); returns ``name -> its result``."""
    if not layers:
        return {}
    data = fc2_output_gradients(qvit, images, layers, batch_size, progress=progress)
    return {n: choose(layer, x, g * g) for n, layer in layers.items() for x, g in [data[n]]}


@torch.no_grad()
def output_weight_ranges(qvit: QuantViT, images: torch.Tensor, batch_size: int = 8, progress: bool = True) -> dict:
    """Re-choose every block linear's per-channel weight clipping by the Hessian-guided output metric.

    For each :class:`golden.qlayers.QuantLinear` inside the blocks whose weight search is
    ``"output"``, each output channel ``c`` takes the clipping ratio (the MSE search's candidates)
    with the smallest ``sum_rows (dL/dO_c)^2 (x . (Q(w_c) - w_c))^2`` on the FP input rows ``x``
    and the task-loss gradients of :func:`fc2_output_gradients`: PTQ4ViT's / MPTQ-ViT's metric
    applied to the weights (the layer's full input, cross terms included, where ``"hessian"`` uses
    only the diagonal ``E[x_i^2]``). Returns ``name -> summed chosen metric``.
    """
    layers = {n: l for n, l in qvit.quant_layers().items()
              if "blocks." in n and not isinstance(l, QuantConv2d) and l.weight_quantizer.search == "output"}

    def choose(layer, x, g2):
        return float(layer.weight_quantizer.select(layer.weight, lambda dw: (g2 * (x @ dw.t()) ** 2).sum(dim=0)).sum())
    return _gradient_search(qvit, images, layers, choose, batch_size, progress)


@torch.no_grad()
def hessian_input_ranges(qvit: QuantViT, images: torch.Tensor, batch_size: int = 8, progress: bool = True,
                         split: bool = False) -> dict:
    """Hessian-guided range search (PTQ4ViT / MPTQ-ViT) of every block linear's per-tensor input.

    Every :class:`golden.qlayers.QuantLinear` inside the blocks whose input quantizer is an
    asymmetric per-tensor :class:`UniformQuantizer` (q/k/v, proj, FC1, a uniform FC2) re-chooses its
    clipping ratio among the MSE search's candidates by ``sum (dL/dO)^2 (O^q - O)^2`` (see
    :func:`hessian_three_region`), the same metric OPT-m uses; ``split`` lets each end of the range
    take its own ratio (:meth:`UniformQuantizer.select`). Returns ``name -> chosen metric``.
    """
    layers = {n: l for n, l in qvit.quant_layers().items()
              if "blocks." in n and type(l.input_quantizer) is UniformQuantizer}

    def choose(layer, x, g2):
        w = layer.qweight().detach()
        ref = x @ w.t()
        return layer.input_quantizer.select(lambda fq: float((g2 * (fq(x) @ w.t() - ref) ** 2).sum()), split=split)
    return _gradient_search(qvit, images, layers, choose, batch_size, progress)


@torch.no_grad()
def hessian_three_region(qvit: QuantViT, images: torch.Tensor, batch_size: int = 8, progress: bool = True) -> dict:
    """OPT-m with the Hessian-guided metric: re-choose every three-region FC2 input's ``(s0, m0, m1)``.

    For each FC2 layer with a :class:`ThreeRegionQuantizer` input, the candidates of its search
    (:meth:`ThreeRegionQuantizer.candidates`) are scored by the PTQ4ViT / MPTQ-ViT Hessian-guided
    metric, the diagonal (Fisher) approximation of the task-loss change
    ``sum_rows sum_c (dL/dO_c)^2 (O^q_c - O_c)^2`` with ``O = X W_q^T + b`` on the FP input ``X`` and
    ``O^q = Q(X) W_q^T + b`` (``W_q`` the layer's quantized weight), and the smallest is kept.
    Returns ``name -> chosen metric``.
    """
    layers = {n: l for n, l in qvit.fc2_layers().items() if isinstance(l.input_quantizer, ThreeRegionQuantizer)}

    def choose(layer, x, g2):
        w = layer.qweight().detach()
        ref = x @ w.t()
        q = layer.input_quantizer
        return q.select(lambda s0, m0, m1: float(
            (g2 * (three_region_fake_quant(x, s0, q.bits, m0, m1) @ w.t() - ref) ** 2).sum()))
    return _gradient_search(qvit, images, layers, choose, batch_size, progress)


@torch.no_grad()
def observe_activations(qvit: QuantViT, images: torch.Tensor, batch_size: int = 16, progress: bool = True) -> None:
    """Run the calibration images through the model with every activation quantizer observing."""
    qvit.set_observing(True)
    try:
        for x in tqdm(list(_batches(images, batch_size)), desc="calibrate", disable=not progress, leave=False):
            qvit(x)
    finally:
        qvit.set_observing(False)
    for _, q in qvit.activation_quantizers():
        q.finalize()


def calibrate_model(model: torch.nn.Module, images: torch.Tensor, config: QuantConfig, model_name: str = "",
                    batch_size: int = 16, progress: bool = True) -> QuantViT:
    """Calibrate ``model`` (float, modified in place) on ``images`` and return the QuantViT.

    Parameters
    ----------
    images : (N, C, H, W) tensor
        Calibration images, already transformed.
    """
    if not torch.isfinite(images).all():
        raise QuantizerError("calibration images contain NaN or inf")
    model.eval()
    notes = {}
    if config.smoothquant:
        sq = _optional("vitaccel.golden.smoothquant")
        if sq is None:
            warnings.warn("golden.smoothquant is missing: SQ-b skipped", stacklevel=2)
        else:
            sq.smoothquant_bias(model, images, alpha=config.sq_alpha, batch_size=batch_size, progress=progress,
                                bias=config.sq_bias, center=config.sq_center)
            notes["smoothquant"] = True
    if config.mixed_precision:
        mp = _optional("vitaccel.golden.mixed_precision")
        if mp is None:
            warnings.warn("golden.mixed_precision is missing: greedy MP skipped", stacklevel=2)
        else:
            target = config.mp_target_bits if config.mp_target_bits is not None else float(config.w_bits)
            layers = mp.linear_layers(model)
            fn = mp.linear_output_sqnr_fn(model, images, list(layers), batch_size=batch_size,
                                          act_method=config.act_method, progress=progress)
            alloc = mp.greedy_mixed_precision(layers, fn, target)
            config.layer_bits = {n: {"w": int(w), "a": int(a)} for n, (w, a) in alloc.items()}
    qvit = quantize_model(model, config, model_name)
    qvit.calibrate_weights()
    if config.weight_search == "hessian":
        hessian_weight_ranges(qvit, images, batch_size, progress)
    elif config.weight_search == "output":
        output_weight_ranges(qvit, images, progress=progress)
    observe_activations(qvit, images, batch_size, progress)
    if config.act_metric == "hessian":
        hessian_input_ranges(qvit, images, progress=progress, split=config.act_range == "split")
    if config.fc2 == "three_region" and config.fc2_metric == "hessian":
        hessian_three_region(qvit, images, progress=progress)
    if config.weight_rounding == "gptq":
        from .gptq import gptq_model
        gptq_model(qvit, images, source=config.gptq_source, batch_size=batch_size, progress=progress)
    if config.amo:
        rec = _optional("vitaccel.golden.reconstruct")
        if rec is None:
            warnings.warn("golden.reconstruct (AMO) is missing: reconstruction skipped", stacklevel=2)
        else:
            rec.reconstruct(qvit, images, config=config, progress=progress)
    qvit.eval()
    return qvit


@torch.no_grad()
def predict(model: torch.nn.Module, loader, progress: bool = True, desc: str = "eval"):
    """Logits-free evaluation: returns (top5 predictions (N, 5), labels (N,))."""
    preds, labels = [], []
    for x, y in tqdm(loader, desc=desc, disable=not progress, leave=False):
        out = model(x)
        preds.append(out.topk(min(5, out.shape[-1]), dim=-1).indices)
        labels.append(y)
    return torch.cat(preds), torch.cat(labels)
