"""Per-tensor uniform activation quantizers: asymmetric ``uniform`` (spec 4.1) and symmetric ``sym`` (spec 3).

* :class:`UniformQuantizer` — asymmetric codes ``q in [0, 2^k - 1]``, zero point ``z``, value
  ``s * (q - z)``. Used for the baseline's activations, for Q (A operand of ``q @ k^T``) and for the
  proj input (output of ``attn @ v``).
* :class:`SymmetricQuantizer` — signed symmetric codes ``b in [-(2^(k-1)-1), 2^(k-1)-1]``, value
  ``s * b``. Used for K and V (B operands of ``q @ k^T`` and ``attn @ v``).

Range search (``method``): ``"minmax"`` (observed extremes), ``"percentile"`` (the
``percentile``-th quantiles of a random sample of the observed values) or ``"mse"`` (the clipping
ratio of the extremes, from 1.0 down to 0.2, with the smallest squared error on the sample).
The range always contains 0. Codes use ``floor(x / s + 0.5)`` (round half up).
"""
from __future__ import annotations

import torch
from torch import nn

from .base import (Quantizer, QuantizerError, check_finite, round_half_up, round_ste, safe_scale,
                   sample_values)

METHODS = ("minmax", "percentile", "mse")
#: Clipping ratios of the range searches (the MSE search, the Hessian-guided candidates, each end of a
#: split range): 1.0 down to 0.2 in 25 steps.
CLIP_RATIOS = torch.linspace(1.0, 0.2, 25).tolist()


class _RangeObserver:
    """Running min/max plus a bounded random sample of the observed values."""

    def __init__(self, max_samples: int = 1 << 16, per_batch: int = 1 << 13, seed: int = 0):
        self.lo = None
        self.hi = None
        self.samples: list[torch.Tensor] = []
        self.n = 0
        self.max_samples = max_samples
        self.per_batch = per_batch
        self.gen = torch.Generator().manual_seed(seed)

    def add(self, x: torch.Tensor, what: str) -> None:
        x = x.detach().float()
        lo_t, hi_t = torch.aminmax(x)  # NaN propagates through min/max
        check_finite(torch.stack([lo_t, hi_t]), what)
        lo, hi = float(lo_t), float(hi_t)
        self.lo = lo if self.lo is None else min(self.lo, lo)
        self.hi = hi if self.hi is None else max(self.hi, hi)
        if self.n < self.max_samples:
            s = sample_values(x, self.per_batch, self.gen)
            self.samples.append(s)
            self.n += s.numel()

    def sample(self) -> torch.Tensor:
        return torch.cat(self.samples)


class UniformQuantizer(Quantizer):
    """Asymmetric per-tensor uniform quantizer (``uniform`` format, spec 4.1).

    ``export()`` keys: ``fmt="uniform"``, ``bits``, ``scale`` (float), ``zero_point`` (int).
    """

    fmt = "uniform"
    symmetric = False

    def __init__(self, bits: int = 8, method: str = "mse", percentile: float = 99.99, name: str = ""):
        super().__init__(bits, name)
        if method not in METHODS:
            raise QuantizerError(f"unknown range method {method!r}; choose one of {METHODS}")
        self.method = method
        self.percentile = percentile
        self.scale = nn.Parameter(torch.tensor(1.0), requires_grad=False)
        self.register_buffer("zero_point", torch.tensor(0.0))
        self._obs = None
        self.range = None  #: (lo, hi) observed before the last finalize
        if self.symmetric:
            self.qmin, self.qmax = -(2 ** (self.bits - 1) - 1), 2 ** (self.bits - 1) - 1
        else:
            self.qmin, self.qmax = 0, 2 ** self.bits - 1

    def observe(self, x: torch.Tensor) -> None:
        if self._obs is None:
            self._obs = _RangeObserver()
        self._obs.add(x, f"activation {self.name}")

    # range (lo, hi) -> (scale, zero point)
    def _params(self, lo: float, hi: float):
        lo, hi = min(lo, 0.0), max(hi, 0.0)
        if self.symmetric:
            s = safe_scale(torch.tensor(max(abs(lo), abs(hi)) / self.qmax))
            return s, torch.tensor(0.0)
        s = safe_scale(torch.tensor((hi - lo) / (self.qmax - self.qmin)))
        z = torch.clamp(round_half_up(-lo / s), self.qmin, self.qmax)
        return s, z

    def _fq(self, x, s, z):
        return (torch.clamp(round_half_up(x / s) + z, self.qmin, self.qmax) - z) * s

    def finalize(self) -> None:
        if self._obs is None:
            raise QuantizerError(f"quantizer {self.name} saw no calibration data")
        obs, self._obs = self._obs, None
        lo, hi = obs.lo, obs.hi
        self.range = (lo, hi)
        if self.method == "percentile":
            smp = obs.sample()
            q = torch.quantile(smp[: 1 << 24], torch.tensor([1 - self.percentile / 100, self.percentile / 100]))
            lo, hi = float(q[0]), float(q[1])
        elif self.method == "mse":
            smp = obs.sample()
            best, best_err = (lo, hi), float("inf")
            for r in CLIP_RATIOS:
                s, z = self._params(lo * r, hi * r)
                err = float(((self._fq(smp, s, z) - smp) ** 2).mean())
                if err < best_err:
                    best, best_err = (lo * r, hi * r), err
            lo, hi = best
        s, z = self._params(lo, hi)
        self.scale = nn.Parameter(s.float(), requires_grad=False)
        self.zero_point = z.float()
        self.calibrated = True

    def candidates(self, ratios=None) -> list[tuple[float, float]]:
        """Clipped ranges ``(lo * r, hi * r)`` of the observed range (set by :meth:`finalize`)."""
        if getattr(self, "range", None) is None:
            raise QuantizerError(f"quantizer {self.name}: candidates() before finalize()")
        lo, hi = self.range
        ratios = CLIP_RATIOS if ratios is None else ratios
        return [(lo * r, hi * r) for r in ratios]

    def select(self, metric, split: bool = False) -> float:
        """Set the candidate range with the smallest ``metric(fake_quant)``; returns that metric.

        ``fake_quant`` maps a tensor to its fake-quantized value under the candidate's scale and zero
        point (round half up, as :meth:`finalize`'s MSE search). Ties go to the wider range.

        ``split=True`` (asymmetric quantizers only) then refines the two ends on their own: starting
        from the best common ratio, a coordinate search tries every ratio of the low end with the high
        end fixed, then every ratio of the high end with the low end fixed, and repeats while either
        end moves (at most three rounds). The joint candidates are a subset of what it scores, so its
        metric is never larger than the joint search's.
        """
        scores: dict = {}

        def score(lo, hi):
            key = (lo, hi)
            if key not in scores:
                s, z = self._params(lo, hi)
                scores[key] = (float(metric(lambda x, s=s, z=z: self._fq(x, s, z))), s, z)
            return scores[key][0]

        best = None
        for lo, hi in self.candidates():
            err = score(lo, hi)
            if best is None or err < best[0]:
                best = (err, lo, hi)
        if split and not self.symmetric:
            lo0, hi0 = self.range
            for _ in range(3):
                moved = False
                for end in ("lo", "hi"):
                    for r in CLIP_RATIOS:
                        lo, hi = (lo0 * r, best[2]) if end == "lo" else (best[1], hi0 * r)
                        err = score(lo, hi)
                        if err < best[0]:
                            best, moved = (err, lo, hi), True
                if not moved:
                    break
        _, s, z = scores[(best[1], best[2])]
        self.chosen_range = (best[1], best[2])  #: the (lo, hi) candidate kept by the last select
        self.scale = nn.Parameter(s.float(), requires_grad=False)
        self.zero_point = z.float()
        self.calibrated = True
        return best[0]

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            s = self.scale.detach()
            return torch.clamp(round_half_up(x / s) + self.zero_point, self.qmin, self.qmax).to(torch.int64)

    def dequantize(self, codes: torch.Tensor) -> torch.Tensor:
        return (codes.float() - self.zero_point) * self.scale

    def fake_quant(self, x: torch.Tensor) -> torch.Tensor:
        s = self.scale
        q = torch.clamp(round_ste(x / s) + self.zero_point, self.qmin, self.qmax)
        return (q - self.zero_point) * s

    def scale_parameters(self) -> list[torch.Tensor]:
        return [self.scale]

    def export(self) -> dict:
        return {"fmt": self.fmt, "bits": self.bits, "scale": float(self.scale.detach()),
                "zero_point": int(self.zero_point)}


class SymmetricQuantizer(UniformQuantizer):
    """Signed symmetric per-tensor quantizer (``sym`` format, spec section 3); K and V codes.

    ``export()`` keys: ``fmt="sym"``, ``bits``, ``scale`` (float), ``zero_point`` (always 0).
    """

    fmt = "sym"
    symmetric = True
