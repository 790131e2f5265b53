"""Power-of-two-factor quantizer of the LayerNorm inputs (fake-quant only; no spec format).

MPTQ-ViT's Table 3 "all modules" setting also quantizes the inputs of LayerNorm and softmax, which
the integer datapath keeps on the host in float32 (docs/datapath.md section 9). The residual stream
in front of a LayerNorm has a few channels tens of times wider than the rest (docs/accuracy.md), so
one per-tensor scale would leave most channels with one or two steps. :class:`PowerOfTwoFactorQuantizer`
follows FQ-ViT's power-of-two factor (the fully quantized ViT the MPTQ-ViT paper compares its
Table 3 with): one asymmetric scale ``s`` and zero point ``z`` per tensor, and per channel ``c`` an
exponent ``alpha_c`` in ``0 .. K`` so that the channel's step is ``2^alpha_c * s`` (a shift in
hardware):

* ``S = (hi - lo) / (2^k - 1)`` from the observed extremes (the range always contains 0),
  ``z = clamp(floor(-lo / S + 0.5), 0, 2^k - 1)`` and ``s = S / 2^K``: with ``alpha_c = K`` every
  channel is covered;
* ``alpha_c`` is the exponent with the smallest squared error on that channel's observed values
  (ties to the larger exponent); a narrow channel takes a small one, i.e. a fine step;
* codes ``q = clamp(floor(x / (2^alpha_c s) + 0.5) + z, 0, 2^k - 1)``, value ``(q - z) 2^alpha_c s``.

The last dimension of the input is the channel dimension. ``export()`` raises: no integer program
holds these codes (:func:`golden.program.export_program` refuses a model that uses them).
"""
from __future__ import annotations

import torch

from .base import Quantizer, QuantizerError, check_finite, round_half_up, round_ste, safe_scale

#: Largest channel exponent (FQ-ViT's K = 3: channel steps s, 2s, 4s, 8s).
PTF_MAX_EXP = 3


class PowerOfTwoFactorQuantizer(Quantizer):
    """Per-tensor asymmetric codes with a power-of-two step factor per channel (see the module docstring).

    Parameters
    ----------
    bits : int
        Code width ``k``.
    max_exp : int
        ``K``: channel exponents ``0 .. K``.
    max_rows : int
        Observed rows (tokens) kept for the exponents' error search (a random subset beyond it).
    """

    fmt = "ptf"

    def __init__(self, bits: int = 8, max_exp: int = PTF_MAX_EXP, max_rows: int = 1 << 14, name: str = ""):
        super().__init__(bits, name)
        if int(max_exp) != max_exp or not 0 <= max_exp <= 8:
            raise QuantizerError(f"max_exp must be an integer in 0..8, got {max_exp}")
        self.max_exp, self.max_rows = int(max_exp), int(max_rows)
        self.qmax = 2 ** self.bits - 1
        self.register_buffer("scale", torch.tensor(1.0))
        self.register_buffer("zero_point", torch.tensor(0.0))
        self.register_buffer("alpha", torch.zeros(0))
        self._rows: list[torch.Tensor] = []
        self._n = 0
        self._gen = None  # the row sampler while observing (dropped by finalize: the model is pickled)

    def observe(self, x: torch.Tensor) -> None:
        rows = x.detach().float().reshape(-1, x.shape[-1])
        check_finite(torch.stack(torch.aminmax(rows)), f"activation {self.name}")
        if self._rows and rows.shape[1] != self._rows[0].shape[1]:
            raise QuantizerError(f"quantizer {self.name}: {rows.shape[1]} channels after {self._rows[0].shape[1]}")
        if self._n >= self.max_rows:
            return
        if rows.shape[0] > self.max_rows - self._n:
            self._gen = self._gen or torch.Generator().manual_seed(0)
            rows = rows[torch.randperm(rows.shape[0], generator=self._gen)[:self.max_rows - self._n]]
        self._rows.append(rows)
        self._n += rows.shape[0]

    def _fq(self, x, step, z):
        return (torch.clamp(round_half_up(x / step) + z, 0, self.qmax) - z) * step

    def finalize(self) -> None:
        if not self._rows:
            raise QuantizerError(f"quantizer {self.name} saw no calibration data")
        rows, self._rows, self._n, self._gen = torch.cat(self._rows), [], 0, None
        lo, hi = min(float(rows.min()), 0.0), max(float(rows.max()), 0.0)
        coarse = safe_scale(torch.tensor((hi - lo) / self.qmax))
        z = torch.clamp(round_half_up(-lo / coarse), 0, self.qmax)
        s = coarse / 2 ** self.max_exp
        errs = torch.stack([((self._fq(rows, s * 2 ** a, z) - rows) ** 2).sum(0)
                            for a in range(self.max_exp + 1)])            # (K + 1, channels)
        best = errs.min(0).values
        # the largest exponent among the ties: never a clipping step where a covering one is as good
        alpha = (self.max_exp - torch.flip(errs, [0]).le(best).int().argmax(0)).float()
        self.scale, self.zero_point, self.alpha = s.float(), z.float(), alpha
        self.calibrated = True

    def step(self) -> torch.Tensor:
        """Per-channel step ``2^alpha_c * s``."""
        return self.scale * torch.pow(2.0, self.alpha)

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return torch.clamp(round_half_up(x / self.step()) + self.zero_point, 0, self.qmax).to(torch.int64)

    def dequantize(self, codes: torch.Tensor) -> torch.Tensor:
        return (codes.float() - self.zero_point) * self.step()

    def fake_quant(self, x: torch.Tensor) -> torch.Tensor:
        step = self.step()
        q = torch.clamp(round_ste(x / step) + self.zero_point, 0, self.qmax)
        return ((q - self.zero_point) * step).to(x.dtype)

    def export(self) -> dict:
        raise QuantizerError(f"quantizer {self.name}: the power-of-two-factor LayerNorm input is fake-quant "
                             "only (no integer format in docs/datapath.md)")
