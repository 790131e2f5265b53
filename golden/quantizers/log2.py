"""Post-softmax ``log2`` quantizer (spec 4.2 and the ``encode_log2`` rule of 8.2).

Softmax probabilities ``a in [0, 1]`` are first put on the encoder's input grid,
``a_fx = floor(a * 2^15 + 0.5)`` (``SOFTMAX_FRAC = 15``), then ``q = 15 - round(log2(a_fx))`` with
round-to-nearest in the log domain (no ties exist for integer ``a_fx``); ``a_fx == 0`` or
``q > QMAX`` gives the ZERO code, ``q < 0`` is clamped to 0. The value of code ``q`` is ``2^-q``
(ZERO means exactly 0). ``QMAX = min(2^k - 2, 15)``, ``ZERO = 2^k - 1``. No calibration: the scale
is 1.

``export()`` keys: ``fmt="log2"``, ``bits``, ``qmax``, ``zero_code``, ``in_frac`` (15).
"""
from __future__ import annotations

import torch

from .base import Quantizer, round_half_up

SOFTMAX_FRAC = 15
LOG2_MAX_SHIFT = 15


class Log2Quantizer(Quantizer):
    """Post-softmax log2 quantizer; forward uses a straight-through gradient."""

    fmt = "log2"

    def __init__(self, bits: int = 4, name: str = ""):
        super().__init__(bits, name)
        self.qmax = min(2 ** self.bits - 2, LOG2_MAX_SHIFT)
        self.zero_code = 2 ** self.bits - 1
        self.calibrated = True

    def observe(self, x: torch.Tensor) -> None:
        pass

    def finalize(self) -> None:
        self.calibrated = True

    def quantize(self, a: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            a_fx = round_half_up(a.double() * 2 ** SOFTMAX_FRAC)
            r = round_half_up(torch.log2(torch.clamp(a_fx, min=1.0)))
            q = torch.clamp(SOFTMAX_FRAC - r, min=0)
            q = torch.where((a_fx <= 0) | (q > self.qmax), torch.full_like(q, self.zero_code), q)
            return q.to(torch.int64)

    def dequantize(self, codes: torch.Tensor) -> torch.Tensor:
        v = torch.pow(2.0, -codes.float())
        return torch.where(codes == self.zero_code, torch.zeros_like(v), v)

    def fake_quant(self, a: torch.Tensor) -> torch.Tensor:
        return a + (self.dequantize(self.quantize(a)).to(a.dtype) - a).detach()

    def export(self) -> dict:
        return {"fmt": "log2", "bits": self.bits, "qmax": self.qmax, "zero_code": self.zero_code,
                "in_frac": SOFTMAX_FRAC}
