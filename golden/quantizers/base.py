"""The quantizer protocol shared by every fake-quant quantizer in :mod:`golden`.

Every quantizer is a :class:`Quantizer` (an ``nn.Module``). Quantized layers
(:class:`golden.qlayers.QuantLinear`, :class:`golden.qlayers.QuantMatMul`, ...) hold quantizers as
child modules and call them on their operands; calibration drives them through a small state
machine; export reads their integer parameters.

Protocol
--------
Attributes

``bits``
    Code width ``k`` (4, 6 or 8; see ``docs/datapath.md`` section 3/4).
``enabled``
    ``False`` makes ``forward`` the identity (full-precision pass-through, used for FP evaluation
    and for ablations that leave one operand unquantized).
``observing``
    ``True`` while statistics are collected: ``forward(x)`` calls :meth:`observe` and returns ``x``
    unchanged (the model runs in full precision during observation).
``calibrated``
    ``True`` once :meth:`finalize` fixed the scales.
``fmt``
    The spec format the codes belong to: ``"sym"`` (section 3), ``"uniform"`` (4.1, per tensor or
    per patch), ``"log2"`` (4.2), ``"shiftlog2"`` (4.3) or ``"three_region"`` (4.4).

Methods

``forward(x)``
    Fake quantization: ``dequantize(quantize(x))`` computed in floating point with a
    straight-through estimator (STE) for the rounding, so gradients reach learnable scales
    (:meth:`scale_parameters`) and AdaRound variables (:meth:`rounding_parameters`).
``observe(x)`` / ``finalize()``
    Collect statistics over any number of batches, then fix the scales. ``calibrate(x)`` is
    ``observe(x)`` followed by ``finalize()`` (one-shot, used for weights and in tests).
``quantize(x) -> codes``
    The integer codes of the spec format (an integer-valued tensor, ``torch.int64``).
``dequantize(codes) -> x``
    The real value each code stands for (the decode of the spec, times the scale).
``rounding_parameters()``
    AdaRound ``V`` tensors (only weight quantizers with AdaRound; empty list otherwise).
``scale_parameters()``
    Learnable scale tensors (``nn.Parameter``) for AMO-style reconstruction; may be empty.
``rounding_loss(beta)``
    AdaRound regulariser ``sum(1 - |2 h(V) - 1| ** beta)``; ``0`` for other quantizers.
``export()``
    A ``dict`` with the parameters the integer program needs: always ``"fmt"`` and ``"bits"``,
    then the format's parameters as numpy arrays / Python numbers (``scale``, ``zero_point``,
    ``codes`` for weights, ``shift`` / ``base`` for shiftlog2, ``m0``/``m1`` for three-region, ...).
    Each subclass documents its keys.

Rounding on the integer grid is always ``floor(v + 0.5)`` (round half up, spec section 1):
use :func:`round_half_up` / :func:`round_ste`, never ``torch.round`` (which rounds half to even).
"""
from __future__ import annotations

import functools
import math

import torch
from torch import nn

from vitaccel.sim import formats as SF
from vitaccel.sim.errors import UserError

#: Smallest scale any quantizer may use (zero-range rows/channels, e.g. LayerNorm gamma == 0).
MIN_SCALE = 1e-8


class QuantizerError(UserError, ValueError):
    """Invalid quantizer configuration or calibration data (non-finite statistics, bad bits)."""


#: :func:`sim.formats.check_bits` raising :class:`QuantizerError`: ``check_bits(bits) -> int``.
check_bits = functools.partial(SF.check_bits, error=QuantizerError)


def round_half_up(x: torch.Tensor) -> torch.Tensor:
    """``floor(x + 0.5)``: round to nearest, ties toward +infinity (spec section 1)."""
    return torch.floor(x + 0.5)


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """:func:`round_half_up` in the forward pass, identity gradient (straight-through estimator)."""
    return x + (round_half_up(x) - x).detach()


def floor_ste(x: torch.Tensor) -> torch.Tensor:
    """``floor`` with an identity gradient."""
    return x + (torch.floor(x) - x).detach()


def clamp_ste(x: torch.Tensor, lo, hi) -> torch.Tensor:
    """Clamp whose gradient is zero outside ``[lo, hi]`` (ordinary clamp semantics)."""
    return torch.clamp(x, lo, hi)


def check_finite(x: torch.Tensor, what: str) -> None:
    """Raise :class:`QuantizerError` if ``x`` holds NaN or infinity."""
    if not bool(torch.isfinite(x).all()):
        raise QuantizerError(f"non-finite calibration statistics in {what} (NaN or inf in the activations or weights)")


def safe_scale(scale: torch.Tensor) -> torch.Tensor:
    """Replace zero / tiny / non-positive scales by :data:`MIN_SCALE` (never NaN or 0)."""
    scale = torch.as_tensor(scale, dtype=torch.float32)
    return torch.where(torch.isfinite(scale) & (scale > MIN_SCALE), scale, torch.full_like(scale, MIN_SCALE))


class Quantizer(nn.Module):
    """Base class of every fake-quant quantizer (see the module docstring for the protocol).

    Parameters
    ----------
    bits : int
        Code width, one of ``sim.formats.BITS``.
    name : str, optional
        A label used in error messages and reports (set by the owning layer).
    """

    fmt: str = "none"

    def __init__(self, bits: int = 8, name: str = ""):
        super().__init__()
        self.bits = check_bits(bits)
        self.name = name
        self.enabled = True
        self.observing = False
        self.calibrated = False

    # -- state machine -------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return x
        if self.observing:
            with torch.no_grad():
                self.observe(x.detach())
            return x
        if not self.calibrated:
            raise QuantizerError(f"quantizer {self.name or type(self).__name__} used before calibration")
        return self.fake_quant(x)

    def observe(self, x: torch.Tensor) -> None:
        """Accumulate statistics of ``x`` (called once per calibration batch)."""
        raise NotImplementedError

    def finalize(self) -> None:
        """Fix the scales from the collected statistics; frees the statistics."""
        raise NotImplementedError

    def calibrate(self, x: torch.Tensor) -> "Quantizer":
        """One-shot calibration: ``observe(x)`` then ``finalize()``. Returns ``self``."""
        with torch.no_grad():
            self.observe(x.detach())
        self.finalize()
        return self

    # -- quantization --------------------------------------------------------------------------
    def fake_quant(self, x: torch.Tensor) -> torch.Tensor:
        """``dequantize(quantize(x))`` with straight-through gradients (override for speed/STE)."""
        return self.dequantize(self.quantize(x)).to(x.dtype)

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        """Integer codes of ``x`` in the spec format (``torch.int64``)."""
        raise NotImplementedError

    def dequantize(self, codes: torch.Tensor) -> torch.Tensor:
        """Real values of ``codes``."""
        raise NotImplementedError

    # -- learnable parameters ------------------------------------------------------------------
    def rounding_parameters(self) -> list[torch.Tensor]:
        """AdaRound ``V`` tensors (empty for activation quantizers)."""
        return []

    def scale_parameters(self) -> list[torch.Tensor]:
        """Learnable scales (``nn.Parameter``) for reconstruction (AMO); may be empty."""
        return []

    def rounding_loss(self, beta: float) -> torch.Tensor:
        """AdaRound regulariser; 0 for quantizers without learnable rounding."""
        return torch.zeros(())

    # -- export --------------------------------------------------------------------------------
    def export(self) -> dict:
        """Integer parameters for the program (keys documented by each subclass)."""
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"fmt={self.fmt}, bits={self.bits}, enabled={self.enabled}, calibrated={self.calibrated}"


def mse_search(x: torch.Tensor, candidates, fake_quant_fn) -> int:
    """Index of the candidate whose fake quantization of ``x`` has the smallest squared error."""
    best, best_err = 0, math.inf
    for i, cand in enumerate(candidates):
        err = float(((fake_quant_fn(x, cand) - x) ** 2).mean())
        if err < best_err:
            best, best_err = i, err
    return best


def sample_values(x: torch.Tensor, max_values: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """A flat random subsample of at most ``max_values`` elements of ``x`` (all of it if smaller)."""
    flat = x.detach().reshape(-1).float()
    if flat.numel() <= max_values:
        return flat.clone()
    idx = torch.randint(0, flat.numel(), (max_values,), generator=generator)
    return flat[idx]
