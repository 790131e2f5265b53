"""Quantized layers of the fake-quant ViT: the GEMMs of docs/datapath.md section 2 as ``nn.Module`` s.

* :class:`QuantLinear` -- ``nn.Linear`` with a per-channel ``sym`` weight quantizer and an A-operand
  (input) quantizer (qkv, proj, FC1, FC2, head);
* :class:`QuantConv2d` -- the patch-embedding convolution as a GEMM over patches;
* :class:`QuantMatMul` -- activation x activation GEMM (``q @ k^T``, ``attn @ v``);
* :class:`QuantAttention` / :class:`QuantWindowAttention` -- explicit multi-head attention (timm
  ``Attention`` / Swin ``WindowAttention``) built from the above;
* :class:`QuantLayerNorm` -- ``nn.LayerNorm`` behind an input quantizer (only with
  ``QuantConfig.all_modules``, fake-quant only, as the softmax input quantizer of the attention).

Each GEMM computes in float fake quantization, or on the integer grid when a program layer is attached
to it (``.grid``, set by :func:`golden.integer_grid.attach_integer_grid`). The whole model wrapper is
:class:`golden.qmodel.QuantViT`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vitaccel.sim.errors import UserError

from . import integer_grid
from .quantizers.base import Quantizer
from .quantizers.weight import PerChannelWeightQuantizer

__all__ = ["UnsupportedModelError", "QuantLinear", "QuantConv2d", "QuantMatMul", "QuantAttention",
           "QuantWindowAttention", "QuantLayerNorm"]


class UnsupportedModelError(UserError, ValueError):
    """The model contains a module the quantized wrapper cannot convert."""


class QuantLinear(nn.Module):
    """``nn.Linear`` with a per-channel weight quantizer and an A-operand (input) quantizer.

    The weight and bias are the wrapped layer's own parameters (shared, not copied).
    The outlier path of POQ lives inside the input quantizer (``PerPatchOutlierQuantizer``).
    """

    def __init__(self, linear: nn.Linear, w_bits: int, input_quantizer: Quantizer, name: str = "",
                 weight_search: str = "mse"):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = linear.weight
        self.bias = linear.bias
        self.bias_shift = None  # AMO's bias correction (quantized path only; see qbias)
        self.name = name
        self.weight_quantizer = PerChannelWeightQuantizer(w_bits, search=weight_search, name=name + ".weight")
        self.input_quantizer = input_quantizer
        input_quantizer.name = input_quantizer.name or name + ".input"

    def calibrate_weight(self) -> None:
        self.weight_quantizer.calibrate(self.weight.detach())

    def qweight(self) -> torch.Tensor:
        wq = self.weight_quantizer
        if not wq.enabled or wq.observing:
            return self.weight
        if not wq.calibrated:
            self.calibrate_weight()
        return wq.fake_quant(self.weight)

    def exported_bias(self) -> torch.Tensor | None:
        """The quantized layer's bias: the shared FP bias plus AMO's bias correction (``bias_shift``,
        :func:`golden.reconstruct.correct_output_bias`), what the integer program exports."""
        if self.bias is None or self.bias_shift is None:
            return self.bias
        return self.bias + self.bias_shift

    def qbias(self) -> torch.Tensor | None:
        """The bias of the forward pass: :meth:`exported_bias` while the weight quantizer is on; the FP
        bias with it off (the FP reference path of the same model stays the FP model)."""
        return self.exported_bias() if self.weight_quantizer.enabled else self.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if getattr(self, "grid", None):
            return integer_grid.linear_forward(self, x)
        return F.linear(self.input_quantizer(x), self.qweight(), self.qbias())

    def extra_repr(self) -> str:
        return f"{self.name}: in={self.in_features}, out={self.out_features}"


class QuantConv2d(QuantLinear):
    """Patch-embedding convolution (kernel = stride = patch) as a quantized GEMM over patches."""

    def __init__(self, conv: nn.Conv2d, w_bits: int, input_quantizer: Quantizer, name: str = "",
                 weight_search: str = "mse"):
        nn.Module.__init__(self)
        if conv.kernel_size != conv.stride or conv.padding not in (0, (0, 0)) or conv.groups != 1:
            raise UnsupportedModelError(f"{name}: only non-overlapping patch convolutions are supported")
        self.in_features = conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1]
        self.out_features = conv.out_channels
        self.weight, self.bias = conv.weight, conv.bias
        self.bias_shift = None
        self.stride = conv.stride
        self.name = name
        self.weight_quantizer = PerChannelWeightQuantizer(w_bits, search=weight_search, name=name + ".weight")
        self.input_quantizer = input_quantizer
        input_quantizer.name = input_quantizer.name or name + ".input"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if getattr(self, "grid", None):
            return integer_grid.patch_embed_forward(self, x)
        return F.conv2d(self.input_quantizer(x), self.qweight(), self.qbias(), stride=self.stride)


class QuantMatMul(nn.Module):
    """Activation x activation GEMM ``quant_a(a) @ quant_b(b)`` (``q @ k^T`` and ``attn @ v``)."""

    def __init__(self, a_quantizer: Quantizer, b_quantizer: Quantizer, name: str = ""):
        super().__init__()
        self.name = name
        self.a_quantizer = a_quantizer
        self.b_quantizer = b_quantizer
        a_quantizer.name = a_quantizer.name or name + ".a"
        b_quantizer.name = b_quantizer.name or name + ".b"

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if getattr(self, "grid", None):
            return integer_grid.matmul_forward(self, a, b)
        return self.a_quantizer(a) @ self.b_quantizer(b)


class QuantAttention(nn.Module):
    """Explicit multi-head attention with quantized q/k/v/proj linears and both matmuls."""

    def __init__(self, attn: nn.Module, qkv: QuantLinear, proj: QuantLinear, qk: QuantMatMul, av: QuantMatMul,
                 name: str = ""):
        super().__init__()
        if getattr(attn, "gate", None) is not None:
            raise UnsupportedModelError(f"{name}: gated attention is not supported")
        self.name = name
        self.num_heads = attn.num_heads
        self.head_dim = getattr(attn, "head_dim", qkv.out_features // 3 // attn.num_heads)
        self.scale = attn.scale
        self.qkv, self.proj, self.qk, self.av = qkv, proj, qk, av
        #: Softmax input quantizer (MPTQ-ViT's "all modules" setting, fake-quant only; None: host float)
        self.softmax_quantizer = None
        self.q_norm = getattr(attn, "q_norm", nn.Identity())
        self.k_norm = getattr(attn, "k_norm", nn.Identity())
        self.norm = getattr(attn, "norm", nn.Identity())

    def attention(self, q, k, v, bias=None):
        attn = self.qk(q, k.transpose(-2, -1))
        if not getattr(self.qk, "grid", None):  # on the integer grid the scale is folded into Mc
            attn = attn * self.scale
        if self.softmax_quantizer is not None:  # the scaled logits; Swin's position bias and mask follow
            attn = self.softmax_quantizer(attn)
        if bias is not None:
            attn = attn + bias
        attn = attn.softmax(dim=-1)
        return self.av(attn, v)

    def forward(self, x: torch.Tensor, attn_mask=None, is_causal: bool = False) -> torch.Tensor:
        if attn_mask is not None or is_causal:
            raise UnsupportedModelError("attention masks are not supported by the quantized ViT")
        if getattr(self.qkv, "grid", None) and getattr(self.qk, "grid", None) and getattr(self.proj, "grid", None):
            return integer_grid.attention_forward(self, x)      # integer codes from GEMM to GEMM
        b, n, _ = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        o = self.attention(q, k, v)
        o = o.transpose(1, 2).reshape(b, n, self.num_heads * self.head_dim)
        return self.proj(self.norm(o))


class QuantWindowAttention(QuantAttention):
    """Swin ``WindowAttention`` with relative position bias and shifted-window mask."""

    def __init__(self, attn: nn.Module, *args, **kw):
        super().__init__(attn, *args, **kw)
        self.head_dim = attn.qkv.out_features // 3 // attn.num_heads
        self.relative_position_bias_table = attn.relative_position_bias_table
        self.register_buffer("relative_position_index", attn.relative_position_index, persistent=False)
        self.window_area = attn.window_area

    def _rel_bias(self):
        t = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        return t.view(self.window_area, self.window_area, -1).permute(2, 0, 1).unsqueeze(0)

    def forward(self, x: torch.Tensor, mask=None) -> torch.Tensor:
        b, n, _ = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        bias = self._rel_bias()
        if mask is not None:
            nw = mask.shape[0]
            bias = (bias.unsqueeze(1) + mask.unsqueeze(1).unsqueeze(0)).expand(b // nw, -1, -1, -1, -1)
            bias = bias.reshape(b, self.num_heads, n, n)
        o = self.attention(q, k, v, bias)
        o = o.transpose(1, 2).reshape(b, n, -1)
        return self.proj(o)


class QuantLayerNorm(nn.Module):
    """``nn.LayerNorm`` with its input fake-quantized (MPTQ-ViT's "all modules" setting).

    The LayerNorm itself (its affine parameters, shared with the wrapped module) stays float32; only
    its input passes ``input_quantizer`` (:class:`golden.quantizers.ptf.PowerOfTwoFactorQuantizer`).
    No integer program holds this quantizer (docs/datapath.md section 9: LayerNorm is a host operation).
    """

    def __init__(self, norm: nn.LayerNorm, input_quantizer: Quantizer, name: str = ""):
        super().__init__()
        self.norm = norm
        self.name = name
        self.input_quantizer = input_quantizer
        input_quantizer.name = input_quantizer.name or name + ".input"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.input_quantizer(x))

    def extra_repr(self) -> str:
        return self.name
