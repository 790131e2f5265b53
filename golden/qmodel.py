"""The quantized (fake-quant) ViT :class:`QuantViT` (its layers are in :mod:`golden.qlayers`).

A timm model is converted in place (:func:`quantize_model`):

* every transformer block's ``nn.Linear`` (``attn.qkv``, ``attn.proj``, ``mlp.fc1``, ``mlp.fc2``)
  becomes a :class:`QuantLinear` (``.weight_quantizer``: per-channel ``sym``; ``.input_quantizer``:
  the A-operand quantizer of the GEMM, e.g. POQ for qkv/FC1, SLQ or three-region for FC2);
* the attention module (timm ``Attention`` of ViT/DeiT, ``WindowAttention`` of Swin; both use fused
  SDPA in timm 1.x) is replaced by :class:`QuantAttention` / :class:`QuantWindowAttention`, an
  explicit ``q @ k^T -> softmax -> attn @ v`` with two :class:`QuantMatMul` (``.qk``: Q ``uniform``
  x K ``sym``; ``.av``: softmax ``log2`` x V ``sym``); the ``1/sqrt(d)`` scale multiplies the
  *output* of ``q @ k^T`` (it is folded into ``Mc`` in the integer program);
* the patch embedding convolution becomes :class:`QuantConv2d` and the classifier a
  :class:`QuantLinear` (8 bits by default, spec section "Bit widths").

Host operations (LayerNorm, softmax, GELU, residual adds, embeddings) stay in float32 exactly as
timm computes them. With ``config.all_modules`` (MPTQ-ViT's Table 3 setting, fake-quant only) the
inputs of every LayerNorm (:class:`QuantLayerNorm`) and of every softmax
(``QuantAttention.softmax_quantizer``) are quantized too; such a model has no integer program.

Quantizers are built by :func:`golden.presets.build_quantizer` from a
:class:`golden.presets.QuantConfig`; any quantizer can be swapped afterwards, e.g.
``qvit.set_input_quantizer("blocks.3.mlp.fc2", ThreeRegionQuantizer(4))`` or for all FC2 layers
``qvit.replace_fc2_input_quantizers(lambda name, bits: ThreeRegionQuantizer(bits, name=name))``.
"""
from __future__ import annotations

from typing import Callable, Iterator

import torch
from torch import nn

from . import integer_grid
from .presets import build_quantizer
from .program import export_program
from .qlayers import (QuantAttention, QuantConv2d, QuantLayerNorm, QuantLinear, QuantMatMul,
                      QuantWindowAttention, UnsupportedModelError)
from .quantizers.base import Quantizer
from .quantizers.weight import PerChannelWeightQuantizer


def _is_attention(m: nn.Module) -> str | None:
    name = type(m).__name__
    if name == "WindowAttention":
        return "window"
    if name == "Attention" and hasattr(m, "qkv") and hasattr(m, "proj"):
        return "mhsa"
    return None


class QuantViT(nn.Module):
    """A timm ViT/DeiT/Swin with quantized GEMMs (built by :func:`quantize_model`).

    Attributes
    ----------
    model : nn.Module
        The converted timm model (its forward is timm's own).
    config : golden.presets.QuantConfig
    model_name : str
    """

    def __init__(self, model: nn.Module, config, model_name: str = ""):
        super().__init__()
        self.model = model
        self.config = config
        self.model_name = model_name
        self.grid_program = None

    # -- integer grid ---------------------------------------------------------------------------
    def use_integer_grid(self, prog=None):
        """Compute on the integer grid of ``prog`` (default: this model's own export,
        :func:`golden.program.export_program`); see :mod:`golden.integer_grid`. Returns the program."""
        return integer_grid.attach_integer_grid(self, export_program(self) if prog is None else prog)

    def use_float_fakequant(self) -> None:
        """Back to float fake quantization (the calibration / AMO mode)."""
        integer_grid.detach_integer_grid(self)

    @property
    def on_integer_grid(self) -> bool:
        return getattr(self, "grid_program", None) is not None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    # -- access ---------------------------------------------------------------------------------
    def quant_layers(self) -> dict[str, QuantLinear]:
        """Every :class:`QuantLinear` / :class:`QuantConv2d`, by module name."""
        return {n: m for n, m in self.model.named_modules() if isinstance(m, QuantLinear)}

    def matmuls(self) -> dict[str, QuantMatMul]:
        return {n: m for n, m in self.model.named_modules() if isinstance(m, QuantMatMul)}

    def attentions(self) -> dict[str, QuantAttention]:
        return {n: m for n, m in self.model.named_modules() if isinstance(m, QuantAttention)}

    def quantizers(self) -> Iterator[tuple[str, Quantizer]]:
        """``(name, quantizer)`` for every quantizer (weights and activations)."""
        for n, m in self.model.named_modules():
            if isinstance(m, Quantizer):
                yield n, m

    def activation_quantizers(self) -> Iterator[tuple[str, Quantizer]]:
        for n, q in self.quantizers():
            if not isinstance(q, PerChannelWeightQuantizer):
                yield n, q

    def weight_quantizers(self) -> Iterator[tuple[str, PerChannelWeightQuantizer]]:
        for n, q in self.quantizers():
            if isinstance(q, PerChannelWeightQuantizer):
                yield n, q

    # -- switches -------------------------------------------------------------------------------
    def set_quant(self, weights: bool = True, activations: bool = True) -> "QuantViT":
        """Enable/disable weight and activation fake quantization (False = full precision)."""
        for _, q in self.quantizers():
            q.enabled = weights if isinstance(q, PerChannelWeightQuantizer) else activations
        return self

    def set_observing(self, flag: bool) -> None:
        for _, q in self.activation_quantizers():
            q.observing = flag

    def calibrate_weights(self) -> None:
        for layer in self.quant_layers().values():
            layer.calibrate_weight()

    # -- replacing quantizers ------------------------------------------------------------------
    def set_input_quantizer(self, layer_name: str, quantizer: Quantizer) -> None:
        """Replace the A-operand quantizer of the linear layer ``layer_name``."""
        layer = self.quant_layers().get(layer_name)
        if layer is None:
            raise KeyError(f"no quantized linear layer {layer_name!r}")
        quantizer.name = quantizer.name or layer_name + ".input"
        layer.input_quantizer = quantizer

    def fc2_layers(self) -> dict[str, QuantLinear]:
        return {n: m for n, m in self.quant_layers().items() if n.endswith("mlp.fc2")}

    def replace_fc2_input_quantizers(self, factory: Callable[[str, int], Quantizer]) -> None:
        """``factory(layer_name, bits)`` builds the new quantizer of every FC2 input (post-GELU)."""
        for n, layer in self.fc2_layers().items():
            self.set_input_quantizer(n, factory(n, layer.input_quantizer.bits))

    def outlier_report(self) -> dict[str, dict]:
        """Outlier statistics of every POQ input quantizer (layer name -> report)."""
        out = {}
        for n, layer in self.quant_layers().items():
            rep = getattr(layer.input_quantizer, "outlier_report", None)
            if rep is not None and getattr(layer.input_quantizer, "alpha", None) is not None:
                out[n] = rep()
        return out


def _set_module(root: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, new)


def _quantize_host_inputs(model: nn.Module, config) -> None:
    """MPTQ-ViT's "all modules" setting (``config.all_modules``, fake-quant only): every softmax input
    (the scaled ``q @ k^T``) and every LayerNorm input also pass a quantizer of ``config.a_bits`` bits."""
    for name, m in list(model.named_modules()):
        if isinstance(m, QuantAttention):
            m.softmax_quantizer = build_quantizer(config, "softmax_in", config.a_bits, f"{name}.softmax_in")
        elif isinstance(m, nn.LayerNorm):
            _set_module(model, name, QuantLayerNorm(m, build_quantizer(config, "ln_in", config.a_bits, f"{name}.input"),
                                                    name))


def quantize_model(model: nn.Module, config, model_name: str = "") -> QuantViT:
    """Convert a timm ViT/DeiT/Swin to a :class:`QuantViT` (in place) with quantizers from ``config``.

    Raises :class:`UnsupportedModelError` if the model has no transformer blocks this wrapper knows.
    """
    model.eval()
    b = config.bits_for
    n_attn = 0
    for name, m in list(model.named_modules()):
        kind = _is_attention(m)
        if kind is None:
            continue
        n_attn += 1
        qkv = QuantLinear(m.qkv, b(f"{name}.qkv", "w"), build_quantizer(config, "qkv_in", b(f"{name}.qkv", "a"), f"{name}.qkv.input"),
                          f"{name}.qkv", config.weight_search)
        proj = QuantLinear(m.proj, b(f"{name}.proj", "w"), build_quantizer(config, "proj_in", b(f"{name}.proj", "a"), f"{name}.proj.input"),
                           f"{name}.proj", config.weight_search)
        abits = b(f"{name}.qk", "a")
        qk = QuantMatMul(build_quantizer(config, "q", abits, f"{name}.qk.a"),
                         build_quantizer(config, "k", abits, f"{name}.qk.b"), f"{name}.qk")
        abits = b(f"{name}.av", "a")
        av = QuantMatMul(build_quantizer(config, "softmax", abits, f"{name}.av.a"),
                         build_quantizer(config, "v", abits, f"{name}.av.b"), f"{name}.av")
        cls = QuantWindowAttention if kind == "window" else QuantAttention
        _set_module(model, name, cls(m, qkv, proj, qk, av, name))
    if n_attn == 0:
        raise UnsupportedModelError("no timm Attention/WindowAttention modules found: not a ViT/DeiT/Swin model")
    if getattr(config, "all_modules", False):
        _quantize_host_inputs(model, config)
    for name, m in list(model.named_modules()):
        if isinstance(m, nn.Linear) and (name.endswith("mlp.fc1") or name.endswith("mlp.fc2")):
            role = "fc1_in" if name.endswith("fc1") else "fc2_in"
            _set_module(model, name, QuantLinear(m, b(name, "w"), build_quantizer(config, role, b(name, "a"), f"{name}.input"),
                                                 name, config.weight_search))
    pe = getattr(getattr(model, "patch_embed", None), "proj", None)
    if isinstance(pe, nn.Conv2d):
        _set_module(model, "patch_embed.proj",
                    QuantConv2d(pe, config.embed_bits, build_quantizer(config, "embed_in", config.embed_bits, "patch_embed.proj.input"),
                                "patch_embed.proj", config.weight_search))
    head = getattr(model, "head", None)
    head_name = "head"
    if head is not None and not isinstance(head, nn.Linear):
        head = getattr(head, "fc", None)
        head_name = "head.fc"
    if isinstance(head, nn.Linear):
        _set_module(model, head_name,
                    QuantLinear(head, config.head_bits, build_quantizer(config, "head_in", config.head_bits, f"{head_name}.input"),
                                head_name, config.weight_search))
    return QuantViT(model, config, model_name)
