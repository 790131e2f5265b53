"""Per-channel symmetric weight quantizer with optional AdaRound (spec section 3, ``sym`` codes).

Codes ``b in [-(2^(k-1)-1), 2^(k-1)-1]`` (the code ``-2^(k-1)`` is never produced), one scale per
output channel (axis 0 of the weight; for ``nn.Linear`` that is column ``c`` of ``W^T``, the B operand
of the GEMM). Nearest rounding is ``floor(w / s + 0.5)``.

AdaRound (Nagel et al. 2020) replaces nearest rounding by ``floor(w / s) + h(V)`` with the rectified
sigmoid ``h(V) = clamp(sigmoid(V) * (zeta - gamma) + gamma, 0, 1)``, ``zeta = 1.1``, ``gamma = -0.1``;
the regulariser is ``sum(1 - |2 h(V) - 1| ** beta)``. After optimisation (``soft = False``) the
rounding is hard, ``floor(w / s) + (h(V) >= 0.5)``, so codes stay on the same integer grid.

Learned dequantisation scale (AMO's ``learn_weight_scales``): the codes keep coming from the fixed
scale ``s`` (nearest or AdaRound), but the dequantised weight is ``b * s * m`` with a learnable
per-channel factor ``m`` (initially 1). :meth:`fold_dequant_scale` ends it: the exported scale
becomes ``s * m`` and the codes stay exactly what they were, so the integer program is the same
kind of program (one scale per output channel, folded into the requantiser).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .base import Quantizer, QuantizerError, check_finite, floor_ste, round_half_up, round_ste, safe_scale

ZETA = 1.1
GAMMA = -0.1


class PerChannelWeightQuantizer(Quantizer):
    """Symmetric per-output-channel weight quantizer (``sym`` format), AdaRound-capable.

    Parameters
    ----------
    bits : int
        Code width (4, 6 or 8).
    search : {"minmax", "mse", "hessian"}
        Range choice per channel: the absolute maximum, or the clipping ratio (from 1.0 down to
        0.55) that minimises the squared error of that channel; ``"hessian"`` weights that error
        by the second moment of the layer's input, ``sum_i E[x_i^2] (q_ci s_c - w_ci)^2`` (the
        diagonal of the layer-output Hessian ``E[x x^T]``, set with
        :meth:`set_input_second_moment`), so the clipping minimises the expected output error
        instead of the weight error. Without that moment it is the plain ``"mse"`` search.
        ``"output"`` starts as ``"mse"``; :meth:`select` then re-chooses each channel's ratio by a
        metric of the layer's output (``golden.calibrate.output_weight_ranges``: PTQ4ViT's
        Hessian-guided metric on calibration rows).

    ``export()`` keys: ``fmt="sym"``, ``bits``, ``scale`` (float32, one per output channel),
    ``codes`` (int8, the weight's shape).
    """

    fmt = "sym"

    def __init__(self, bits: int = 8, search: str = "mse", name: str = ""):
        super().__init__(bits, name)
        if search not in ("minmax", "mse", "hessian", "output"):
            raise QuantizerError(f"unknown weight range search {search!r} "
                                 "(use 'minmax', 'mse', 'hessian' or 'output')")
        self.search = search
        self.qmax = 2 ** (self.bits - 1) - 1
        self.scale = nn.Parameter(torch.ones(1), requires_grad=False)
        self.alpha = None  # AdaRound V, created by init_adaround()
        self.soft = False
        self.input_sq = None  # E[x_i^2] of the layer input ("hessian" search)
        #: GPTQ's compensated weight (``golden.gptq``): when set, it is rounded instead of the layer's
        #: weight (nearest rounding of it gives GPTQ's codes); cleared when the scales are re-chosen.
        self.replacement = None
        #: learned per-channel dequantisation factor ``m`` (``init_dequant_scale``), or None
        self.dmul = None

    def set_input_second_moment(self, sq: torch.Tensor) -> None:
        """``E[x_i^2]`` per input feature of the layer (one value per weight column), for ``"hessian"``."""
        sq = torch.as_tensor(sq, dtype=torch.float32).detach().reshape(-1)
        check_finite(sq, f"input second moment of {self.name or 'layer'}")
        if bool((sq < 0).any()):
            raise QuantizerError(f"negative input second moment for {self.name or 'layer'}")
        self.input_sq = sq

    # -- calibration ---------------------------------------------------------------------------
    def observe(self, w: torch.Tensor) -> None:
        self._w = w.detach().float()

    def finalize(self) -> None:
        w = self._w
        del self._w
        check_finite(w, f"weights of {self.name or 'layer'}")
        flat = w.reshape(w.shape[0], -1)
        if self.search in ("mse", "hessian", "output"):
            h = None
            if self.search == "hessian" and self.input_sq is not None:
                if self.input_sq.numel() != flat.shape[1]:
                    raise QuantizerError(f"{self.name or 'layer'}: input second moment has {self.input_sq.numel()} "
                                         f"values for {flat.shape[1]} weight columns")
                h = (self.input_sq + 1e-12 * float(self.input_sq.max().clamp_min(1e-30)))[None, :]
            weight = h if h is not None else 1.0
            self.select(flat, lambda dw: (dw ** 2 * weight).sum(dim=1))
            return
        scale = safe_scale(flat.abs().amax(dim=1) / self.qmax)  # zero channels get MIN_SCALE, never 0 or NaN
        self.scale = nn.Parameter(scale, requires_grad=False)
        self.replacement = None
        self.calibrated = True

    def select(self, w: torch.Tensor, metric) -> torch.Tensor:
        """Choose each output channel's clipping ratio, ``r`` from 1.0 down to 0.55 in 16 steps, by
        ``metric(dw)``, which maps the weight error ``dw = Q(w) - w`` (output channels x inputs) to one
        error per output channel; returns the chosen errors. Ties go to the wider range. The
        ``"mse"`` / ``"hessian"`` searches of :meth:`finalize` are this with the (weighted) squared
        weight error; ``golden.calibrate.output_weight_ranges`` passes the layer-output metric."""
        flat = w.detach().float().reshape(w.shape[0], -1)
        absmax = flat.abs().amax(dim=1)
        best_err = torch.full_like(absmax, float("inf"))
        best = absmax.clone()
        for ratio in torch.linspace(1.0, 0.55, 16):
            s = safe_scale(absmax * ratio / self.qmax)
            q = torch.clamp(round_half_up(flat / s[:, None]), -self.qmax, self.qmax)
            err = metric(q * s[:, None] - flat)
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best = torch.where(better, absmax * ratio, best)
        self.scale = nn.Parameter(safe_scale(best / self.qmax), requires_grad=False)  # zero channels: MIN_SCALE
        self.replacement = None
        self.calibrated = True
        return best_err

    # -- AdaRound ------------------------------------------------------------------------------
    def init_adaround(self, w: torch.Tensor) -> None:
        """Create ``V`` so that ``h(V)`` equals the fractional part of ``w / s`` (start = nearest;
        from GPTQ's compensated weight when there is one)."""
        w = self._source(w)
        x = w.detach().float() / self._bscale(w)
        rest = (x - torch.floor(x)).clamp(1e-4, 1 - 1e-4)
        v = -torch.log((ZETA - GAMMA) / (rest - GAMMA) - 1)
        self.alpha = nn.Parameter(v)
        self.soft = True

    def h(self) -> torch.Tensor:
        """The rectified sigmoid ``h(V)``."""
        return torch.clamp(torch.sigmoid(self.alpha) * (ZETA - GAMMA) + GAMMA, 0, 1)

    def rounding_parameters(self) -> list[torch.Tensor]:
        return [self.alpha] if self.alpha is not None else []

    def scale_parameters(self) -> list[torch.Tensor]:
        return [self.scale]

    # -- learned dequantisation scale -------------------------------------------------------------
    def init_dequant_scale(self) -> None:
        """Start learning the per-channel factor ``m`` of the dequantisation scale (``m = 1``)."""
        self.dmul = nn.Parameter(torch.ones_like(self.scale.detach()))

    def dequant_scale_parameters(self) -> list[torch.Tensor]:
        return [self.dmul] if self.dmul is not None else []

    def drop_dequant_scale(self) -> None:
        """Forget the learned factor (dequantise with ``s`` again)."""
        self.dmul = None

    def fold_dequant_scale(self, w: torch.Tensor) -> None:
        """Make the learned factor permanent without changing a code: the scale becomes ``s * m``
        and the rounded weight becomes ``b * s * m`` (its nearest rounding at the new scale is ``b``);
        AdaRound's variables are dropped (the codes are in the rounded weight). No-op without ``m``."""
        if self.dmul is None:
            return
        with torch.no_grad():
            codes = self._int(w, ste=False)
            self.scale = nn.Parameter(safe_scale(self.scale.detach() * self.dmul.detach()), requires_grad=False)
            self.replacement = codes * self._bscale(w)
        self.dmul = None
        self.alpha = None
        self.soft = False
        if not torch.equal(self._int(w, ste=False), codes):
            raise QuantizerError(f"{self.name or 'layer'}: folding the learned scale changed a code")

    def rounding_loss(self, beta: float) -> torch.Tensor:
        if self.alpha is None:
            return torch.zeros(())
        return (1 - (2 * self.h() - 1).abs().pow(beta)).sum()

    # -- quantization --------------------------------------------------------------------------
    def _bscale(self, w: torch.Tensor) -> torch.Tensor:
        return self.scale.reshape((-1,) + (1,) * (w.dim() - 1))

    def _source(self, w: torch.Tensor) -> torch.Tensor:
        """The weight that is rounded: ``w``, or GPTQ's compensated weight in its place."""
        r = self.replacement
        if r is None:
            return w
        if r.shape != w.shape:
            raise QuantizerError(f"{self.name or 'layer'}: GPTQ weight {tuple(r.shape)} does not match the "
                                 f"weight {tuple(w.shape)}")
        return r.to(w.dtype)

    def _int(self, w: torch.Tensor, ste: bool) -> torch.Tensor:
        x = self._source(w) / self._bscale(w)
        if self.alpha is not None:
            hard = (self.h() >= 0.5).to(x.dtype)
            up = self.h() if (ste and self.soft) else hard
            q = (floor_ste(x) if ste else torch.floor(x)) + up
        else:
            q = round_ste(x) if ste else round_half_up(x)
        return torch.clamp(q, -self.qmax, self.qmax)

    def quantize(self, w: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self._int(w, ste=False).to(torch.int64)

    def _dscale(self, w: torch.Tensor) -> torch.Tensor:
        """The dequantisation scale: ``s``, or ``s * m`` while a factor is learned."""
        s = self._bscale(w)
        m = getattr(self, "dmul", None)  # absent in models pickled before it existed
        return s if m is None else s * m.reshape(s.shape)

    def dequantize(self, codes: torch.Tensor) -> torch.Tensor:
        return codes.to(self.scale.dtype) * self._dscale(codes)

    def fake_quant(self, w: torch.Tensor) -> torch.Tensor:
        return self._int(w, ste=True) * self._dscale(w)

    def harden(self) -> None:
        """End AdaRound optimisation: hard rounding from now on."""
        self.soft = False

    def export_with(self, w: torch.Tensor) -> dict:
        """``export()`` for weight ``w`` (weights are not stored in the quantizer)."""
        if getattr(self, "dmul", None) is not None:
            raise QuantizerError(f"{self.name or 'layer'}: a learned dequantisation scale is not folded yet "
                                 "(fold_dequant_scale)")
        codes = self.quantize(w).cpu().numpy()
        if np.abs(codes).max(initial=0) > self.qmax:
            raise QuantizerError("weight code outside the sym range")
        return {"fmt": "sym", "bits": self.bits,
                "scale": self.scale.detach().cpu().numpy().astype(np.float32),
                "codes": codes.astype(np.int8)}

    def export(self) -> dict:
        raise QuantizerError("weight quantizers export through export_with(weight) (the owning layer calls it)")
