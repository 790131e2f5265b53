"""Shift-Log2 Quantizer (ADFQ-ViT SLQ) for the post-GELU activation (FC2 input), spec 4.3 / 8.2.

GELU's minimum is -0.16997, so a static ``shift >= 0.17`` makes ``x + shift > 0``; the code ``q``
quantizes ``x + shift`` logarithmically with scale ``s``:

* base 2:        ``x + shift ~ s * 2^-q``,        ``q = clamp(floor(-log2((x + shift) / s) + 0.5), 0, QMAX)``
* base sqrt(2):  ``x + shift ~ s * 2^(-q / 2)``,  ``q = clamp(floor(-2 log2((x + shift) / s) + 0.5), 0, QMAX)``

``x + shift <= 0`` gives ``QMAX`` (underflow to the smallest level). Dequantization uses exactly the
values the integer datapath represents: with ``(C, SQF, H, QMAX)`` from spec 4.3, operand unit
``u_A = s * 2^-(H + SQF)``, ``D = C[q & 1] * 2^(H - e)`` (``e = q`` for base 2, ``q >> 1`` for
sqrt(2)) and the shift folded into the zero point ``Zs = floor(shift / u_A + 0.5)``, the value is
``u_A * (D - Zs)`` (so odd sqrt(2) codes use ``181 / 256``, not ``1 / sqrt(2)``).

``export()`` keys: ``fmt="shiftlog2"``, ``bits``, ``base``, ``scale`` (s), ``shift``, ``zs`` (Zs),
``unit`` (u_A), ``qmax``, ``H``, ``SQF``, ``C``.
"""
from __future__ import annotations

import torch
from torch import nn

from vitaccel.sim import formats as SF
from vitaccel.sim import reference as ref

from .base import Quantizer, QuantizerError, check_finite, round_half_up, safe_scale, sample_values

#: GELU's global minimum is -0.169971...; the smallest allowed shift.
MIN_SHIFT = 0.17


class ShiftLog2Quantizer(Quantizer):
    """SLQ with base ``"2"`` or ``"sqrt2"`` (default ``"sqrt2"`` at every width, spec 4.3).

    Base sqrt(2) makes neighbouring levels differ by a factor 1.41 instead of 2; at 4 bits its 16
    levels span ``s * 2^-7.5 .. s`` instead of ``s * 2^-15 .. s``, which trades range below GELU's
    minimum (``x + shift`` near 0, where nothing needs resolving) for twice the resolution around
    ``x = 0``, where most post-GELU values lie. It measured better on DeiT-tiny W4A4
    (docs/accuracy.md) and is also the base of the released ADFQ-ViT code.

    The scale search (``search="mse"``) compares candidates ``top * 2^(-t/8)`` (``t = 0 .. 24``,
    ``top`` the largest observed ``x + shift``) by the squared error on a random sample of the
    calibration values drawn with a fixed seed, so calibration is deterministic.
    """

    fmt = "shiftlog2"

    def __init__(self, bits: int = 4, base: str | None = None, shift: float | None = None,
                 search: str = "mse", name: str = "", seed: int = 0):
        super().__init__(bits, name)
        base = base or "sqrt2"
        if base not in SF.LOG_BASES:
            raise QuantizerError(f"unknown shift-log2 base {base!r}; use '2' or 'sqrt2'")
        if search not in ("minmax", "mse"):
            raise QuantizerError(f"unknown shift-log2 range search {search!r}")
        self.base = base
        self.search = search
        self.C, self.SQF, self.H, self.qmax = SF.shiftlog2_params(self.bits, base)
        self.fixed_shift = shift
        self.shift = MIN_SHIFT if shift is None else float(shift)
        if self.shift < MIN_SHIFT:
            raise QuantizerError(f"shift-log2 shift must be >= {MIN_SHIFT} (GELU minimum -0.16997)")
        self.scale = nn.Parameter(torch.tensor(1.0), requires_grad=False)
        self._min = None
        self._max = None
        self._samples = []
        self.gen = torch.Generator().manual_seed(seed)

    # -- helpers -------------------------------------------------------------------------------
    def unit(self, s=None):
        s = self.scale if s is None else s
        return s * 2.0 ** -(self.H + self.SQF)

    def zs(self, s=None) -> int:
        u = float(self.unit(s).detach()) if torch.is_tensor(s) else float(self.unit(s))
        return int(ref.round_half_up(self.shift / u))

    def _codes(self, x: torch.Tensor, s) -> torch.Tensor:
        u = (x + self.shift).double()
        ratio = torch.clamp(u / float(s), min=1e-300)
        lg = -torch.log2(ratio) * (1 if self.base == "2" else 2)
        q = torch.clamp(round_half_up(lg), 0, self.qmax)
        return torch.where(u > 0, q, torch.full_like(q, self.qmax)).to(torch.int64)

    def _d(self, q: torch.Tensor) -> torch.Tensor:
        e = q if self.base == "2" else q >> 1
        c = torch.where((q & 1) == 1, torch.tensor(float(self.C[1])), torch.tensor(float(self.C[0])))
        return c * torch.pow(2.0, (self.H - e).double()).float()

    def _value(self, q: torch.Tensor, s) -> torch.Tensor:
        zs = self.zs(s)
        return self.unit(s) * (self._d(q) - zs)

    # -- calibration ---------------------------------------------------------------------------
    def observe(self, x: torch.Tensor) -> None:
        lo_t, hi_t = torch.aminmax(x.detach().float())
        check_finite(torch.stack([lo_t, hi_t]), f"activation {self.name}")
        lo, hi = float(lo_t), float(hi_t)
        self._min = lo if self._min is None else min(self._min, lo)
        self._max = hi if self._max is None else max(self._max, hi)
        if self.search == "mse" and len(self._samples) < 32:
            self._samples.append(sample_values(x, 1 << 14, self.gen))

    def finalize(self) -> None:
        if self._min is None:
            raise QuantizerError(f"quantizer {self.name} saw no calibration data")
        if self.fixed_shift is None:
            self.shift = max(MIN_SHIFT, -self._min + 1e-3)
        top = max(self._max + self.shift, 1e-6)
        s = top
        if self.search == "mse" and self._samples:
            smp = torch.cat(self._samples)
            best = float("inf")
            for t in range(0, 25):
                cand = top * 2.0 ** (-t / 8)
                err = float(((self._value(self._codes(smp, cand), torch.tensor(cand)) - smp) ** 2).mean())
                if err < best:
                    best, s = err, cand
        self.scale = nn.Parameter(safe_scale(torch.tensor(s)), requires_grad=False)
        self._samples = []
        self._min = self._max = None
        self.calibrated = True

    # -- quantization --------------------------------------------------------------------------
    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self._codes(x, float(self.scale))

    def dequantize(self, codes: torch.Tensor) -> torch.Tensor:
        return self._value(codes.to(torch.int64), self.scale)

    def fake_quant(self, x: torch.Tensor) -> torch.Tensor:
        v = self._value(self.quantize(x), self.scale).to(x.dtype)
        return v + (x - x.detach())  # straight-through for x, true gradient for the scale

    def scale_parameters(self) -> list[torch.Tensor]:
        return [self.scale]

    def export(self) -> dict:
        return {"fmt": "shiftlog2", "bits": self.bits, "base": self.base, "scale": float(self.scale.detach()),
                "shift": float(self.shift), "zs": self.zs(), "unit": float(self.unit().detach()),
                "qmax": self.qmax, "H": self.H, "SQF": self.SQF, "C": list(self.C)}
