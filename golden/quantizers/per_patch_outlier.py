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

**Dynamic mode** (``dynamic=True``, spec section 8.1.1): instead of one calibrated ``(s[r], z[r])``
per token position, every row of every input takes its scale at run time from its own inlier range:
the finest scale of the per-layer ladder ``s_j = s_top * 2^(-j/8)`` (``j = 0 .. 63``) whose range
``s_j * (2^k - 1)`` covers the row's span ``max(0, max inlier) - min(0, min inlier)``, and the zero
point ``z = floor(-lo / s_j + 0.5)``. Calibration only fixes ``s_top`` (the largest inlier row span
seen, over ``2^k - 1``); the outlier path is unchanged. Rows are independent of the token position,
so a dynamic quantizer works for any number of tokens.
The quantizer records the outlier ratio and the largest per-row / per-tile outlier counts seen
during calibration (:meth:`outlier_report`), so the program can state the capacity it needs.

``export()`` keys: ``fmt="uniform"``, ``per_patch=True``, ``dynamic``, ``bits``, ``scale`` (float32,
``(M,)``; dynamic: the ladder ``(J,)``), ``zero_point`` (int64, ``(M,)``; dynamic: ``(1,)`` holding
the largest possible ``2^k - 1``), ``alpha`` (float), ``fo`` (2), ``outlier_ratio``,
``max_row_outliers`` (int64 ``(M,)``), ``max_tile_outliers`` (dict tile_rows -> count).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from vitaccel.sim import formats as SF

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
        Per-row range (static mode): the inlier extremes, or the clipping ratio of those extremes
        with the smallest squared error on a per-row sample.
    dynamic : bool
        Choose each row's scale at run time from the scale ladder (spec 8.1.1) instead of using
        static per-position scales.
    """

    fmt = "uniform"

    def __init__(self, bits: int = 8, alpha: float | None = 5.0, search: str = "mse", name: str = "",
                 samples_per_row: int = 512, seed: int = 0, dynamic: bool = False):
        super().__init__(bits, name)
        self.dynamic = bool(dynamic)
        self.ladder_size = SF.LADDER_MAX
        self.top = nn.Parameter(torch.ones(()), requires_grad=False)  # s_top of the dynamic ladder
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
        self._span_max = 0.0

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
        if self._lo is not None and self._lo.numel() != m and not self.dynamic:
            raise QuantizerError(f"{self.name}: per-patch quantizer saw {m} rows, expected {self._lo.numel()} "
                                 "(the number of tokens must be the same for every image)")
        out = self._outlier_mask(x)
        inl = torch.where(out, torch.zeros_like(x), x)
        row_lo, row_hi = inl.amin(dim=2).clamp(max=0), inl.amax(dim=2).clamp(min=0)  # zero is an inlier value
        self._span_max = max(self._span_max, float((row_hi - row_lo).max()))
        inl_lo = row_lo.amin(dim=0)
        inl_hi = row_hi.amax(dim=0)
        if self._lo is None or self._lo.numel() != m:  # (dynamic mode: any number of rows)
            self._lo, self._hi = inl_lo, inl_hi
        else:
            self._lo, self._hi = torch.minimum(self._lo, inl_lo), torch.maximum(self._hi, inl_hi)
        per_row = out.sum(dim=2)  # (b, m)
        self._n_out += int(per_row.sum())
        self._n_total += x.numel()
        rmax = per_row.amax(dim=0)
        same = self._max_row is not None and self._max_row.numel() == rmax.numel()
        self._max_row = torch.maximum(self._max_row, rmax) if same else rmax
        for t in TILE_SIZES:
            pad = (-m) % t
            pr = torch.nn.functional.pad(per_row, (0, pad)).reshape(b, -1, t).sum(dim=2)
            self._max_tile[t] = max(self._max_tile[t], int(pr.max()))
        if self.search == "mse" and not self.dynamic and self._n_samples < self.samples_per_row:
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
        # dynamic ladder top: the widest inlier row seen needs no clipping (MIN_SCALE if all rows are 0)
        self.top = nn.Parameter(safe_scale(torch.tensor(self._span_max / self.qmax)), requires_grad=False)
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
        if not self.dynamic and xr.shape[1] != self.scale.numel():
            raise QuantizerError(f"{self.name}: input has {xr.shape[1]} token rows but the quantizer was "
                                 f"calibrated for {self.scale.numel()}")

    def ladder(self) -> torch.Tensor:
        """The dynamic scale ladder ``s_j = s_top * 2^(-j/8)``, ``j = 0 .. J-1`` (spec 8.1.1)."""
        j = torch.arange(self.ladder_size, dtype=torch.float32, device=self.top.device)
        return self.top * torch.pow(2.0, -j / SF.LADDER_STEPS)

    def row_params(self, xr: torch.Tensor):
        """Per-row ``(j, s, z)`` of a ``(batch, rows, C)`` input in dynamic mode (``j`` int64 ``(B, M)``,
        ``s`` and ``z`` ``(B, M, 1)``; ``s`` keeps the gradient of ``s_top``)."""
        with torch.no_grad():
            inl = torch.where(self._outlier_mask(xr), torch.zeros_like(xr), xr)
            lo = inl.amin(dim=-1).clamp(max=0)
            span = inl.amax(dim=-1).clamp(min=0) - lo
        lad = self.ladder()
        covers = (lad.detach() * self.qmax)[None, None, :] >= span[..., None]
        j = (covers.sum(dim=-1) - 1).clamp(min=0)
        s = lad[j][..., None]
        z = torch.clamp(round_half_up(-lo[..., None] / s.detach()), 0, self.qmax)
        return j, s, z

    def _scale_zero(self, xr: torch.Tensor):
        if self.dynamic:
            _j, s, z = self.row_params(xr)
            return s, z
        return self.scale[:, None], self.zero_point[:, None]

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        """Dense codes (``z[r]`` at outliers), shaped like ``x``."""
        with torch.no_grad():
            xr = rows_view(x)
            self._check_rows(xr)
            s, z = self._scale_zero(xr)
            q = torch.clamp(round_half_up(xr / s) + z, 0, self.qmax)
            q = torch.where(self._outlier_mask(xr), z.expand_as(q), q)
            return q.reshape(x.shape).to(torch.int64)

    def outlier_values(self, x: torch.Tensor) -> torch.Tensor:
        """Sparse-path values in units of ``s[r] * 2^-FO`` (0 where not an outlier), shaped like ``x``."""
        with torch.no_grad():
            xr = rows_view(x)
            s, _z = self._scale_zero(xr)
            v = torch.clamp(round_half_up(xr / s * 2 ** FO), -2 ** 15, 2 ** 15 - 1)
            return torch.where(self._outlier_mask(xr), v, torch.zeros_like(v)).reshape(x.shape).to(torch.int64)

    def dequantize(self, codes: torch.Tensor, rows=None) -> torch.Tensor:
        """Real values of dense codes; dynamic mode needs ``rows = (j, z)`` per row (from the encoder)."""
        xr = rows_view(codes.float())
        if self.dynamic:
            if rows is None:
                raise QuantizerError(f"{self.name}: dynamic per-patch codes need their per-row (j, z) to dequantize")
            j, z = (torch.as_tensor(v, dtype=torch.int64).reshape(xr.shape[:2]) for v in rows)
            s = self.ladder().detach()[j][..., None]
            return ((xr - z[..., None].float()) * s).reshape(codes.shape)
        return ((xr - self.zero_point[:, None]) * self.scale[:, None]).reshape(codes.shape)

    def fake_quant(self, x: torch.Tensor) -> torch.Tensor:
        xr = rows_view(x)
        self._check_rows(xr)
        s, z = self._scale_zero(xr)
        dense = (torch.clamp(round_ste(xr / s) + z, 0, self.qmax) - z) * s
        if self.alpha is not None:
            outv = torch.clamp(round_ste(xr / s * 2 ** FO), -2 ** 15, 2 ** 15 - 1) * s / 2 ** FO
            dense = torch.where(self._outlier_mask(xr), outv, dense)
        return dense.reshape(x.shape)

    def scale_parameters(self) -> list[torch.Tensor]:
        return [self.top] if self.dynamic else [self.scale]

    def export(self) -> dict:
        st = self.stats
        if self.dynamic:
            scale = self.ladder().detach().cpu().numpy().astype(np.float32)
            zero = np.array([self.qmax], np.int64)
        else:
            scale = self.scale.detach().cpu().numpy().astype(np.float32)
            zero = self.zero_point.detach().cpu().numpy().astype(np.int64)
        return {"fmt": "uniform", "per_patch": True, "dynamic": self.dynamic, "bits": self.bits,
                "scale": scale, "zero_point": zero, "alpha": self.alpha, "fo": self.fo,
                "outlier_ratio": float(st.get("outlier_ratio", 0.0)),
                "max_row_outliers": st.get("max_row_outliers"),
                "max_tile_outliers": {int(k): int(v) for k, v in st.get("max_tile_outliers", {}).items()}}

    def extra_repr(self) -> str:
        return super().extra_repr() + f", alpha={self.alpha}, dynamic={self.dynamic}"
