"""Per-Patch Outlier-aware Quantizer (ADFQ-ViT POQ) for post-LayerNorm activations (spec 4.1 + 5).

Used for the inputs of the q/k/v projections and FC1. The activation ``x`` has shape
``(batch, rows..., C)``; its *row* index ``r`` is the token position (all dimensions between the batch
and the channel dimension, flattened). Each row gets its own static ``(s[r], z[r])`` (the per-patch
``uniform`` format of spec 4.1), calibrated per position over the whole calibration set.

Elements with ``|x| > alpha`` are *outliers* (spec section 5): they are excluded from the range
statistics, their dense code is the row's zero point ``z[r]`` (contributing 0) and their value goes
through the sparse path with ``FO = 2`` extra fraction bits: fake quantization keeps them at
``s[r] * 2^-FO * saturate(floor(x / s[r] * 2^FO + 0.5), -2^15, 2^15 - 1)``.

Defaults follow ADFQ-ViT: ``alpha = 5`` for the q/k/v input, ``alpha = 10`` for the FC1 input.
The quantizer records the outlier ratio and the largest per-row / per-tile outlier counts seen
during calibration (:meth:`outlier_report`), so the program can state the capacity it needs.

``export()`` keys: ``fmt="uniform"``, ``per_patch=True``, ``bits``, ``scale`` (float32, ``(M,)``),
``zero_point`` (int64, ``(M,)``), ``alpha`` (float), ``fo`` (2), ``outlier_ratio``,
``max_row_outliers`` (int64 ``(M,)``), ``max_tile_outliers`` (dict tile_rows -> count).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .base import Quantizer, QuantizerError, check_finite, round_half_up, round_ste, safe_scale

#: Outlier value fraction bits (spec ``OUTLIER_FRAC_BITS``).
FO = 2
#: Tile heights for which the calibration records the largest outlier count per tile.
TILE_SIZES = (1, 2, 4, 8, 16, 32, 64)


def rows_view(x: torch.Tensor) -> torch.Tensor:
    """``x`` as ``(batch, rows, C)``: every dimension between batch and channel is a row index."""
    if x.dim() < 2:
        raise QuantizerError(f"per-patch quantizer needs (batch, rows..., C) input, got shape {tuple(x.shape)}")
    if x.dim() == 2:
        return x.unsqueeze(1)
    return x.reshape(x.shape[0], -1, x.shape[-1])


class PerPatchOutlierQuantizer(Quantizer):
    """POQ: per-token-row asymmetric uniform codes plus a sparse full-precision outlier path.

    Parameters
    ----------
    bits : int
    alpha : float or None
        Outlier threshold on ``|x|``; ``None`` disables the outlier path (plain per-patch uniform).
    search : {"minmax", "mse"}
        Per-row range: the inlier extremes, or the clipping ratio of those extremes with the
        smallest squared error on a per-row sample.
    """

    fmt = "uniform"

    def __init__(self, bits: int = 8, alpha: float | None = 5.0, search: str = "mse", name: str = "",
                 samples_per_row: int = 512, seed: int = 0):
        super().__init__(bits, name)
        if search not in ("minmax", "mse"):
            raise QuantizerError(f"unknown per-patch range search {search!r}")
        self.alpha = None if alpha is None else float(alpha)
        self.search = search
        self.qmax = 2 ** self.bits - 1
        self.samples_per_row = samples_per_row
        self.gen = torch.Generator().manual_seed(seed)
        self.scale = nn.Parameter(torch.ones(1), requires_grad=False)
        self.register_buffer("zero_point", torch.zeros(1))
        self._reset_stats()
        self.stats = {}

    def _reset_stats(self):
        self._lo = self._hi = None
        self._samples = []
        self._n_samples = 0
        self._n_out = 0
        self._n_total = 0
        self._max_row = None
        self._max_tile = {t: 0 for t in TILE_SIZES}

    @property
    def fo(self) -> int:
        return FO if self.alpha is not None else 0

    def _outlier_mask(self, x: torch.Tensor) -> torch.Tensor:
        if self.alpha is None:
            return torch.zeros_like(x, dtype=torch.bool)
        return x.abs() > self.alpha

    # -- calibration ---------------------------------------------------------------------------
    def observe(self, x: torch.Tensor) -> None:
        x = rows_view(x.detach().float())
        lo_t, hi_t = torch.aminmax(x)
        check_finite(torch.stack([lo_t, hi_t]), f"activation {self.name}")
        b, m, c = x.shape
        if self._lo is not None and self._lo.numel() != m:
            raise QuantizerError(f"{self.name}: per-patch quantizer saw {m} rows, expected {self._lo.numel()} "
                                 "(the number of tokens must be the same for every image)")
        out = self._outlier_mask(x)
        inl_lo = torch.where(out, torch.zeros_like(x), x).amin(dim=(0, 2))
        inl_hi = torch.where(out, torch.zeros_like(x), x).amax(dim=(0, 2))
        self._lo = inl_lo if self._lo is None else torch.minimum(self._lo, inl_lo)
        self._hi = inl_hi if self._hi is None else torch.maximum(self._hi, inl_hi)
        per_row = out.sum(dim=2)  # (b, m)
        self._n_out += int(per_row.sum())
        self._n_total += x.numel()
        rmax = per_row.amax(dim=0)
        self._max_row = rmax if self._max_row is None else torch.maximum(self._max_row, rmax)
        for t in TILE_SIZES:
            pad = (-m) % t
            pr = torch.nn.functional.pad(per_row, (0, pad)).reshape(b, -1, t).sum(dim=2)
            self._max_tile[t] = max(self._max_tile[t], int(pr.max()))
        if self.search == "mse" and self._n_samples < self.samples_per_row:
            flat = x.permute(1, 0, 2).reshape(m, b * c)
            k = min(flat.shape[1], max(1, self.samples_per_row // 4))
            idx = torch.randint(0, flat.shape[1], (k,), generator=self.gen)
            smp = flat[:, idx]
            smp = torch.where(self._outlier_mask(smp), torch.full_like(smp, float("nan")), smp)
            self._samples.append(smp)
            self._n_samples += k

    def _row_params(self, lo: torch.Tensor, hi: torch.Tensor):
        lo, hi = torch.clamp(lo, max=0), torch.clamp(hi, min=0)
        s = (hi - lo) / self.qmax
        # zero-range rows (all values 0, e.g. LayerNorm gamma == 0) get the largest row scale (or
        # MIN_SCALE): any positive scale codes them exactly, and keeping the scales of one tensor
        # within a narrow ratio keeps the encoder reciprocals R[r] (shared shift SE) precise.
        top = float(s.max()) if s.numel() else 0.0
        s = safe_scale(torch.where(s > 0, s, torch.full_like(s, top)))
        z = torch.clamp(round_half_up(-lo / s), 0, self.qmax)
        return s, z

    def finalize(self) -> None:
        if self._lo is None:
            raise QuantizerError(f"quantizer {self.name} saw no calibration data")
        lo, hi = self._lo, self._hi
        if self.search == "mse" and self._samples:
            smp = torch.cat(self._samples, dim=1)  # (m, S), NaN = outlier
            valid = ~torch.isnan(smp)
            v = torch.nan_to_num(smp)
            best_err = torch.full_like(lo, float("inf"))
            best_lo, best_hi = lo.clone(), hi.clone()
            for ratio in torch.linspace(1.0, 0.3, 36):
                s, z = self._row_params(lo * ratio, hi * ratio)
                fq = (torch.clamp(round_half_up(v / s[:, None]) + z[:, None], 0, self.qmax) - z[:, None]) * s[:, None]
                err = (((fq - v) ** 2) * valid).sum(dim=1)
                better = err < best_err
                best_err = torch.where(better, err, best_err)
                best_lo = torch.where(better, lo * ratio, best_lo)
                best_hi = torch.where(better, hi * ratio, best_hi)
            lo, hi = best_lo, best_hi
        s, z = self._row_params(lo, hi)
        self.scale = nn.Parameter(s.float(), requires_grad=False)
        self.zero_point = z.float()
        self.stats = {
            "outlier_ratio": self._n_out / max(1, self._n_total),
            "outliers": self._n_out,
            "elements": self._n_total,
            "max_row_outliers": self._max_row.to(torch.int64).numpy().copy(),
            "max_tile_outliers": dict(self._max_tile),
        }
        self._reset_stats()
        self.calibrated = True

    def outlier_report(self) -> dict:
        """Outlier statistics of the calibration set (ratio, counts, largest per row / tile)."""
        return dict(self.stats)

    # -- quantization --------------------------------------------------------------------------
    def _check_rows(self, xr: torch.Tensor) -> None:
        if xr.shape[1] != self.scale.numel():
            raise QuantizerError(f"{self.name}: input has {xr.shape[1]} token rows but the quantizer was "
                                 f"calibrated for {self.scale.numel()}")

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        """Dense codes (``z[r]`` at outliers), shaped like ``x``."""
        with torch.no_grad():
            xr = rows_view(x)
            self._check_rows(xr)
            s, z = self.scale[:, None], self.zero_point[:, None]
            q = torch.clamp(round_half_up(xr / s) + z, 0, self.qmax)
            q = torch.where(self._outlier_mask(xr), z.expand_as(q), q)
            return q.reshape(x.shape).to(torch.int64)

    def outlier_values(self, x: torch.Tensor) -> torch.Tensor:
        """Sparse-path values in units of ``s[r] * 2^-FO`` (0 where not an outlier), shaped like ``x``."""
        with torch.no_grad():
            xr = rows_view(x)
            v = torch.clamp(round_half_up(xr / self.scale[:, None] * 2 ** FO), -2 ** 15, 2 ** 15 - 1)
            return torch.where(self._outlier_mask(xr), v, torch.zeros_like(v)).reshape(x.shape).to(torch.int64)

    def dequantize(self, codes: torch.Tensor) -> torch.Tensor:
        xr = rows_view(codes.float())
        return ((xr - self.zero_point[:, None]) * self.scale[:, None]).reshape(codes.shape)

    def fake_quant(self, x: torch.Tensor) -> torch.Tensor:
        xr = rows_view(x)
        self._check_rows(xr)
        s, z = self.scale[:, None], self.zero_point[:, None]
        dense = (torch.clamp(round_ste(xr / s) + z, 0, self.qmax) - z) * s
        if self.alpha is not None:
            outv = torch.clamp(round_ste(xr / s * 2 ** FO), -2 ** 15, 2 ** 15 - 1) * s / 2 ** FO
            dense = torch.where(self._outlier_mask(xr), outv, dense)
        return dense.reshape(x.shape)

    def scale_parameters(self) -> list[torch.Tensor]:
        return [self.scale]

    def export(self) -> dict:
        st = self.stats
        return {"fmt": "uniform", "per_patch": True, "bits": self.bits,
                "scale": self.scale.detach().cpu().numpy().astype(np.float32),
                "zero_point": self.zero_point.detach().cpu().numpy().astype(np.int64),
                "alpha": self.alpha, "fo": self.fo,
                "outlier_ratio": float(st.get("outlier_ratio", 0.0)),
                "max_row_outliers": st.get("max_row_outliers"),
                "max_tile_outliers": {int(k): int(v) for k, v in st.get("max_tile_outliers", {}).items()}}
