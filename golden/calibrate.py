"""Post-training calibration of a float timm model into a :class:`golden.qmodel.QuantViT`.

Steps (each switched by :class:`golden.presets.QuantConfig`):

1. SQ-b SmoothQuant with bias (``config.smoothquant``; ``golden.smoothquant``) on the float model;
2. greedy mixed precision (``config.mixed_precision``; ``golden.mixed_precision``): per-layer bits
   with average ``<= config.mp_target_bits`` (default: the preset's weight bits);
3. wrap with quantizers (:func:`golden.qmodel.quantize_model`);
4. weight scales (per channel; with ``weight_search="hessian"`` chosen by the expected output
   error, from the second moments of each layer's input), then activation statistics over the
   calibration images with the model in full precision (``observing``), then ``finalize`` of
   every activation quantizer;
5. AMO block reconstruction (``config.amo``; ``golden.reconstruct``) when that module exists.
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
            sq.smoothquant_bias(model, images, alpha=config.sq_alpha, batch_size=batch_size, progress=progress)
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
    observe_activations(qvit, images, batch_size, progress)
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
