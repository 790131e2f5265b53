"""OPT-m three-region post-GELU quantizer (MPTQ-ViT), spec format ``three_region``.

Codes follow docs/datapath.md section 4.4 (decode) and 8.3 (encode). With ``P = 2^(k-2) - 1``,
``s1 = s0 * 2^m0`` and ``s2 = s0 * 2^m1`` (integers ``0 <= m0 <= m1 <= 15``), a value ``x`` with
``v = x / s0`` is encoded as

* ``v < 0`` (region R0): ``n = min(floor(-v + 1/2), 2^(k-1) - 1)``; ``n == 0`` gives code 0, else
  ``[r | g | mag] = [n >> (k-2) | 1 | n & P]`` and the value ``-n * s0``;
* ``v >= 0``: ``n1 = floor(v / 2^m0 + 1/2)``; if ``n1 <= P`` the code is ``n1`` (region R1, value
  ``n1 * s1``), else ``1 << (k-1) | min(floor(v / 2^m1 + 1/2), P)`` (region R2, value ``n2 * s2``).

Rounding is round-half-up (``floor(v + 0.5)``), the rule of the integer encoder, so for a scale that
is exactly representable the codes equal ``sim.reference.encode_three_region`` bit for bit
(see ``tests/test_mptq_three_region.py``).

Calibration (OPT-m, MSE variant)
--------------------------------
``observe`` records the minimum ``x_low``, the maximum ``x_up`` and a random sample of the values.
``finalize``:

1. ``s0 = |x_low| / (2^(k-1) - 1)`` — the negative region covers GELU's negative range
   (``x_low >= -0.17``) with ``k-1`` magnitude bits;
2. ``m1 = ceil(log2(x_up / (P * s0)))`` clamped to ``[0, 15]`` — the smallest exponent whose region-2
   range ``P * s2`` covers ``x_up`` (if even ``m1 = 15`` cannot, ``s0`` is raised to
   ``x_up / (P * 2^15)``);
3. ``m0`` in ``0..m1`` (and, with ``search_s0``, ``s0`` scaled by each factor of ``s0_factors``, ``m1``
   recomputed for it) chosen by the smallest mean squared quantization error on the sample.

With ``m1_clip = d > 0`` the search also tries ``m1 - 1 .. m1 - d`` for every ``s0`` (region 2 then
clips the largest values at ``P * s2``), i.e. a clipping search of the large region as PTQ4ViT's
twin-uniform search does with its scale range; ``m1_clip = 0`` (the default) always covers ``x_up``.

MPTQ-ViT selects the ratio with a Hessian-guided metric: ``QuantConfig.fc2_metric = "hessian"`` re-runs
the same search (:meth:`ThreeRegionQuantizer.select`) with the FC2 layer's output error weighted by
the squared task-loss gradient (``golden.calibrate.hessian_three_region``); the quantizer alone uses
the plain MSE of its output (docs/quantization-methods.md).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .base import (
    MIN_SCALE,
    Quantizer,
    QuantizerError,
    check_finite,
    round_half_up,
    round_ste,
    sample_values,
)

__all__ = ["ThreeRegionQuantizer", "three_region_fake_quant", "three_region_m1"]

#: Largest region exponent (spec section 4.4: ``0 <= m0 <= m1 <= 15``).
M_MAX = 15


def _check_m(m0: int, m1: int) -> None:
    if not (0 <= m0 <= m1 <= M_MAX) or int(m0) != m0 or int(m1) != m1:
        raise QuantizerError(f"three_region needs integers 0 <= m0 <= m1 <= {M_MAX}, got m0={m0}, m1={m1}")


def three_region_fake_quant(x: torch.Tensor, s0, bits: int, m0: int, m1: int) -> torch.Tensor:
    """Fake-quantize ``x`` on the three-region grid (real values, straight-through gradients).

    ``s0`` may be a float or a tensor (a learnable scale receives LSQ-style gradients); the gradient
    with respect to ``x`` is the identity inside each region's range and 0 where it clips.
    """
    _check_m(m0, m1)
    p = (1 << (bits - 2)) - 1
    nmax = (1 << (bits - 1)) - 1
    s0 = torch.as_tensor(s0, dtype=x.dtype, device=x.device)
    s1 = s0 * (2.0 ** m0)
    s2 = s0 * (2.0 ** m1)
    with torch.no_grad():
        v = x / s0
        neg = v < 0
        in_r1 = round_half_up(v / (2.0 ** m0)) <= p
    y_neg = -torch.clamp(round_ste(-x / s0), 0, nmax) * s0
    y_r1 = torch.clamp(round_ste(x / s1), 0, p) * s1
    y_r2 = torch.clamp(round_ste(x / s2), 0, p) * s2
    return torch.where(neg, y_neg, torch.where(in_r1, y_r1, y_r2))


def three_region_m1(x_up: float, s0: float, bits: int) -> int:
    """Smallest ``m1`` in ``[0, 15]`` with ``(2^(k-2) - 1) * s0 * 2^m1 >= x_up``."""
    p = (1 << (bits - 2)) - 1
    if x_up <= 0:
        return 0
    m1 = math.ceil(math.log2(x_up / (p * s0)) - 1e-12)
    return int(min(max(m1, 0), M_MAX))


class ThreeRegionQuantizer(Quantizer):
    """OPT-m three-region quantizer for post-GELU activations (format ``three_region``).

    Parameters
    ----------
    bits : int
        Code width ``k`` (4, 6 or 8).
    name : str, optional
        Label for messages.
    search_s0 : bool
        Also search ``s0`` (scaled by ``s0_factors``) jointly with ``m0`` by MSE.
    s0_factors : sequence of float
        Candidate multipliers of the initial ``s0`` when ``search_s0`` is set.
    max_samples : int
        Values kept for the MSE search (random sample over all observed batches).
    learn_scale : bool
        Expose ``s0`` through :meth:`scale_parameters` (AMO learns it; the parameter is created with
        ``requires_grad=False`` and the optimiser switches it on).
    m1_clip : int
        Also try the ``m1_clip`` exponents below the one that covers ``x_up`` (clipping region 2).

    Export keys
    -----------
    ``fmt`` (``"three_region"``), ``bits``, ``scale`` and ``s0`` (the real value of one ``D`` unit,
    ``u_A = s0``), ``m0``, ``m1``, ``zero_point`` (0).
    """

    fmt = "three_region"

    def __init__(
        self,
        bits: int = 8,
        name: str = "",
        search_s0: bool = True,
        s0_factors=(1.0, 0.9, 0.8, 0.7, 0.6, 0.5),
        max_samples: int = 1 << 16,
        learn_scale: bool = True,
        m1_clip: int = 0,
    ):
        super().__init__(bits, name)
        if int(m1_clip) != m1_clip or not 0 <= m1_clip <= M_MAX:
            raise QuantizerError(f"m1_clip must be an integer in 0..{M_MAX}, got {m1_clip}")
        self.m1_clip = int(m1_clip)
        self.search_s0 = bool(search_s0)
        self.s0_factors = tuple(float(f) for f in s0_factors)
        if not self.s0_factors or any(not (f > 0) for f in self.s0_factors):
            raise QuantizerError("s0_factors must be positive numbers")
        self.max_samples = int(max_samples)
        self.learn_scale = bool(learn_scale)
        # requires_grad is switched on by the optimiser that learns it (AMO), off otherwise
        self.s0 = nn.Parameter(torch.tensor(1.0), requires_grad=False)
        self.m0 = 0
        self.m1 = 0
        self._lo = math.inf
        self._hi = -math.inf
        self._samples: list[torch.Tensor] = []
        self._n_seen = 0
        self._gen = torch.Generator().manual_seed(0)
        self.range: tuple[float, float] | None = None  #: (x_low, x_up) seen by the last finalize

    # -- calibration ---------------------------------------------------------------------------
    def observe(self, x: torch.Tensor) -> None:
        x = x.detach().float()
        check_finite(x, f"three_region quantizer {self.name}")
        if x.numel() == 0:
            return
        self._lo = min(self._lo, float(x.min()))
        self._hi = max(self._hi, float(x.max()))
        self._samples.append(sample_values(x.cpu(), self.max_samples, self._gen))
        self._n_seen += x.numel()
        kept = sum(s.numel() for s in self._samples)
        if kept > 2 * self.max_samples:  # keep memory bounded: resample the pool
            pool = torch.cat(self._samples)
            self._samples = [sample_values(pool, self.max_samples, self._gen)]

    def _initial_s0(self, x_low: float, x_up: float) -> float:
        nmax = (1 << (self.bits - 1)) - 1
        p = (1 << (self.bits - 2)) - 1
        s0 = abs(min(x_low, 0.0)) / nmax
        s0 = max(s0, x_up / (p * 2.0 ** M_MAX), MIN_SCALE)
        return s0

    def finalize(self) -> None:
        if self._n_seen == 0:
            raise QuantizerError(f"three_region quantizer {self.name or ''} finalized without observed data")
        x_low, x_up = self._lo, self._hi
        sample = torch.cat(self._samples)
        if sample.numel() > self.max_samples:
            sample = sample_values(sample, self.max_samples, self._gen)
        self.range = (x_low, x_up)
        with torch.no_grad():
            self.select(lambda s0, m0, m1: float(
                ((three_region_fake_quant(sample, s0, self.bits, m0, m1) - sample) ** 2).mean()))
        self._samples = []
        self._lo, self._hi, self._n_seen = math.inf, -math.inf, 0

    def candidates(self) -> list[tuple[float, int, int]]:
        """The ``(s0, m0, m1)`` grid OPT-m searches, from the observed range (set by :meth:`finalize`).

        ``s0`` is the initial ``|x_low| / (2^(k-1) - 1)`` times each of ``s0_factors`` (only 1.0
        without ``search_s0``), ``m1`` the smallest exponent that covers ``x_up`` for that ``s0`` (and
        the ``m1_clip`` exponents below it, down to 0) and ``m0`` every integer in ``0..m1``.
        """
        if getattr(self, "range", None) is None:
            raise QuantizerError(f"three_region quantizer {self.name or ''}: candidates() before finalize()")
        x_low, x_up = self.range
        base = self._initial_s0(x_low, x_up)
        p = (1 << (self.bits - 2)) - 1
        out = []
        for f in (self.s0_factors if self.search_s0 else (1.0,)):
            s0 = max(base * f, x_up / (p * 2.0 ** M_MAX), MIN_SCALE)
            cover = three_region_m1(x_up, s0, self.bits)
            for m1 in range(cover, max(cover - self.m1_clip, 0) - 1, -1):
                out += [(s0, m0, m1) for m0 in range(m1 + 1)]
        return out

    def select(self, metric) -> float:
        """Set the candidate (:meth:`candidates`) with the smallest ``metric(s0, m0, m1)``; returns it.

        Ties go to the earlier candidate. ``finalize`` uses the quantization MSE of the sample;
        ``golden.calibrate.hessian_three_region`` the Hessian-guided output error of the layer.
        """
        best = None
        for s0, m0, m1 in self.candidates():
            err = float(metric(s0, m0, m1))
            if best is None or err < best[0]:
                best = (err, s0, m0, m1)
        self.set_params(*best[1:])
        return best[0]

    def set_params(self, s0: float, m0: int, m1: int) -> None:
        """Set ``s0``, ``m0``, ``m1`` directly (marks the quantizer calibrated)."""
        _check_m(m0, m1)
        if not (math.isfinite(s0) and s0 > 0):
            raise QuantizerError(f"three_region needs a positive finite s0, got {s0}")
        with torch.no_grad():
            self.s0.fill_(float(s0))
        self.m0, self.m1 = int(m0), int(m1)
        self.calibrated = True

    # -- quantization --------------------------------------------------------------------------
    def fake_quant(self, x: torch.Tensor) -> torch.Tensor:
        s0 = self.s0.abs().clamp_min(MIN_SCALE)
        return three_region_fake_quant(x, s0.to(x.dtype), self.bits, self.m0, self.m1)

    @torch.no_grad()
    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        """``[r | g | mag]`` codes (``torch.int64``), spec section 8.3 on real values."""
        k = self.bits
        p = (1 << (k - 2)) - 1
        nmax = (1 << (k - 1)) - 1
        s0 = float(self.s0.abs().clamp_min(MIN_SCALE))
        v = x.detach().to(torch.float64) / s0
        n = torch.clamp(round_half_up(-v), 0, nmax).to(torch.int64)
        code_neg = torch.where(n == 0, torch.zeros_like(n), ((n >> (k - 2)) << (k - 1)) | (1 << (k - 2)) | (n & p))
        n1 = round_half_up(v.clamp_min(0) / 2.0 ** self.m0)
        n2 = torch.clamp(round_half_up(v.clamp_min(0) / 2.0 ** self.m1), max=p).to(torch.int64)
        code_pos = torch.where(n1 <= p, n1.clamp(max=p).to(torch.int64), (1 << (k - 1)) | n2)
        return torch.where(v < 0, code_neg, code_pos)

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """``D`` in units of ``s0`` (spec section 4.4 decode), ``torch.int64``."""
        k = self.bits
        codes = torch.as_tensor(codes).to(torch.int64)
        if bool(((codes < 0) | (codes >= (1 << k))).any()):
            raise QuantizerError(f"three_region codes must lie in [0, {(1 << k) - 1}]")
        r = (codes >> (k - 1)) & 1
        g = (codes >> (k - 2)) & 1
        low = codes & ((1 << (k - 2)) - 1)
        neg_val = -((r << (k - 2)) | low)
        pos_val = low << torch.where(r == 1, self.m1, self.m0)
        return torch.where(g == 1, neg_val, pos_val)

    def dequantize(self, codes: torch.Tensor) -> torch.Tensor:
        return self.decode(codes).to(torch.float32) * self.s0.detach().abs().clamp_min(MIN_SCALE)

    # -- learnable parameters / export ---------------------------------------------------------
    def scale_parameters(self) -> list[torch.Tensor]:
        return [self.s0] if self.learn_scale else []

    def export(self) -> dict:
        if not self.calibrated:
            raise QuantizerError(f"three_region quantizer {self.name or ''} exported before calibration")
        s0 = float(self.s0.detach().abs().clamp_min(MIN_SCALE))
        return {"fmt": self.fmt, "bits": self.bits, "scale": s0, "s0": s0, "m0": self.m0, "m1": self.m1,
                "zero_point": 0}

    def extra_repr(self) -> str:
        return super().extra_repr() + f", s0={float(self.s0.detach()):.4g}, m0={self.m0}, m1={self.m1}"
