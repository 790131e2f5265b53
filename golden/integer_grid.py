"""On-grid fake quantization: the fake-quant model computing every datapath step on the integer grid.

A calibrated :class:`~golden.qmodel.QuantViT` normally fake-quantizes in floating point: a GEMM's
result is ``dequant(A) @ dequant(W) + bias`` in float32 and the next quantizer divides by its scale.
The integer datapath (docs/datapath.md) instead carries integers through integer multipliers and
shifts (``Mr, Sr, Mc, Sc, Bq``; encoder reciprocals ``R, SE``; fixed-point host boundaries with
16 fraction bits). The two differ where a value sits within ~1e-5 of a rounding boundary, and at
4 bits such one-step flips compound over 12 blocks (docs/accuracy.md).

**Integer-grid mode** removes that difference by construction of the *arithmetic*, not by sharing
code: :func:`attach_integer_grid` gives every quantized module of the model the integer parameters
of the model's own program (:func:`golden.program.export_program`) and the modules then compute, in
torch, exactly what the spec says:

* encoders (section 8): ``to_fixed`` at the program's fraction bits, integer reciprocal
  ``round_shift(x * R, SE)``, zero points, outlier extraction, the 16-bit-mantissa ``round_log2``
  thresholds of the log encoders and the three-region encoder;
* GEMMs (sections 4, 6, 7): the decoded integer operands ``D`` (triples), ``acc`` as an exact float64
  matmul of integers (every partial sum is an integer below 2^53: the accumulator bound of
  section 6 is at most 48 bits), the outlier term, and the two-stage requantizer with the
  spec's rounding and saturation; ``fixed32`` results come back as ``from_fixed``, code results as
  ``(c - z) * s`` on the next quantizer's grid (which recovers ``c`` exactly).

Host operations (LayerNorm, softmax, GELU, residual adds, embeddings) stay timm's float32 code. The
result is a batched PyTorch implementation of the datapath, independent of ``sim/`` (nothing here
imports ``sim.reference`` or the numba kernels), so the end-to-end agreement of ``vitaccel eval
--backend sim`` with this mode is a real cross-check of the two implementations; the remaining
differences come from float32 host ops computed on a batch versus one image (summation order).

Only models with a program (timm ViT/DeiT) have a grid; gradients do not flow in this mode (AMO and
calibration use the float fake-quant mode; the grid is attached afterwards).
"""
from __future__ import annotations

import math
import os
import warnings

import numpy as np
import torch

from vitaccel.sim import formats as SF
from vitaccel.sim.errors import UserError

I64 = torch.int64

#: 2^62: no intermediate of the requantizer may reach it (spec section 7); checked, never wrapped.
_INT62 = 1 << 62
#: Elements per chunk of the float64 fast path (a few hundred KiB: stays in the CPU caches).
_CHUNK = 1 << 17


class IntegerGridError(UserError, RuntimeError):
    """An integer-grid computation left the ranges the spec allows (never wrapped silently)."""


# ------------------------------------------------------------------------------------------------
# spec primitives on int64 tensors (section 1)
# ------------------------------------------------------------------------------------------------
def round_shift(x: torch.Tensor, s) -> torch.Tensor:
    """``(x + 2^(s-1)) >> s`` (``x`` for ``s == 0``): round half up; ``s`` int or int64 tensor."""
    s = torch.as_tensor(s, dtype=I64)
    half = torch.where(s > 0, torch.bitwise_left_shift(torch.ones_like(s), (s - 1).clamp(min=0)), torch.zeros_like(s))
    return torch.bitwise_right_shift(x + half, s)


def to_fixed(x: torch.Tensor, frac_bits: int, bits: int = 32) -> torch.Tensor:
    """``saturate(floor(float64(x) * 2^F + 0.5), -2^(bits-1), 2^(bits-1) - 1)`` as int64."""
    if not bool(torch.isfinite(x).all()):
        raise IntegerGridError("non-finite value at a host -> fixed-point boundary")
    v = torch.floor(x.double() * 2.0 ** frac_bits + 0.5)
    lo, hi = -(2.0 ** (bits - 1)), 2.0 ** (bits - 1) - 1
    nsat = int(((v < lo) | (v > hi)).sum())
    if nsat:  # a range fault of the host boundary (spec section 1): saturated, never wrapped, reported
        warnings.warn(f"integer grid: {nsat} value(s) saturated at a host -> fixed-point boundary "
                      f"({bits} bits, {frac_bits} fraction bits)", RuntimeWarning, stacklevel=2)
    return v.clamp(lo, hi).to(I64)


def from_fixed(v: torch.Tensor, frac_bits: int) -> torch.Tensor:
    """``float32(float64(v) * 2^-F)``."""
    return (v.double() * 2.0 ** -frac_bits).float()


_INT8: dict = {}
_HALF = torch.tensor([0.5], dtype=torch.float64)


def _int8_ok() -> bool:
    """Whether ``torch._int_mm`` gives exact int32 products here (checked once against float64 matmuls
    on worst-case int8 operands; exact: every sum is below 2^53). ``VITACCEL_INT8=0`` disables it."""
    if "ok" not in _INT8:
        ok = os.environ.get("VITACCEL_INT8", "1") != "0" and hasattr(torch, "_int_mm")
        if ok:
            try:
                gen = torch.Generator().manual_seed(7)
                for m, k, n in ((1, 1, 1), (5, 3, 2), (33, 129, 17), (197, 768, 40)):
                    for lo_a, hi_a, lo_b, hi_b in ((-128, 128, -127, 128), (127, 128, 127, 128),
                                                   (-128, -127, 127, 128)):
                        a = torch.randint(lo_a, hi_a, (m, k), generator=gen, dtype=torch.int8)
                        b = torch.randint(lo_b, hi_b, (k, n), generator=gen, dtype=torch.int8)
                        got = torch._int_mm(a, b)
                        ok = ok and got.dtype == torch.int32 and torch.equal(got.double(), a.double() @ b.double())
                        bt = b.t().contiguous().t()
                        ok = ok and torch.equal(torch._int_mm(a, bt), got)
            except RuntimeError:
                ok = False
        _INT8["ok"] = bool(ok)
    return _INT8["ok"]


def _strides(shape) -> torch.Tensor:
    """Row-major strides of ``shape`` (int64), to flatten an index ``(n, len(shape))``."""
    st, acc = [], 1
    for d in reversed(shape):
        st.append(acc)
        acc *= d
    return torch.tensor(st[::-1], dtype=I64)


class _Beyond53(Exception):
    """Internal: a float64 product could leave the exact integer range; use the int64 path."""


def to_fixed_f64(x: torch.Tensor, frac_bits: int, bits: int = 32, warn: bool = True):
    """:func:`to_fixed` as exact integers in float64: ``(x_fx, min, max, saturations)``.

    ``float64(x) * 2^F`` is exact and ``+ 0.5`` and ``floor`` of an exactly representable value are
    exact, so the float64 tensor holds the spec's integers; saturation is detected on its range."""
    # one pass: float32 x promoted to float64 inside addcmul (0.5 + x * 2^F, exact), then floor
    # (the float64 operands have a dimension: a 0-dim tensor would not promote a float32 x to float64)
    v = torch.addcmul(_HALF, x, torch.tensor([2.0 ** frac_bits], dtype=torch.float64)).floor_()
    if v.dtype != torch.float64 or v.shape != x.shape:
        raise IntegerGridError("to_fixed: expected a float64 result")  # pragma: no cover
    mn, mx = (float(t) for t in torch.aminmax(v)) if v.numel() else (0.0, 0.0)
    if not (math.isfinite(mn) and math.isfinite(mx)):
        raise IntegerGridError("non-finite value at a host -> fixed-point boundary")
    lo, hi = -(2.0 ** (bits - 1)), 2.0 ** (bits - 1) - 1
    nsat = 0
    if mn < lo or mx > hi:
        nsat = int(((v < lo) | (v > hi)).sum())
        if warn:
            warnings.warn(f"integer grid: {nsat} value(s) saturated at a host -> fixed-point boundary "
                          f"({bits} bits, {frac_bits} fraction bits)", RuntimeWarning, stacklevel=2)
        v.clamp_(lo, hi)
        mn, mx = max(mn, lo), min(mx, hi)
    return v, mn, mx, nsat


def log_thresholds(fn, levels) -> torch.Tensor:
    """``W[i] = min{w >= 1 : fn(w) <= levels[i]}`` for a non-increasing integer function ``fn`` of int64
    tensors (``2^62`` where none): the steps of a log encoder's code (section 8.2), found by bisection on
    this module's own ``round_log2`` / ``round_log_sqrt2`` (all levels at once) and checked at every step."""
    lev = torch.tensor(list(levels), dtype=I64)
    top = 1 << 62
    lo, hi = torch.ones_like(lev), torch.full_like(lev, top)
    none = fn(torch.full_like(lev, top - 1)) > lev
    while bool((lo < hi).any()):
        mid = (lo + hi) // 2
        ok = fn(mid) <= lev
        hi, lo = torch.where(ok, mid, hi), torch.where(ok, lo, mid + 1)
    w = torch.where(none, top, lo)
    inside = w < top                          # the step is exactly there
    good = (fn(w) <= lev) & ((w == 1) | (fn((w - 1).clamp(min=1)) > lev))
    if not bool((good | ~inside).all()):
        raise IntegerGridError("log threshold table is inconsistent")  # pragma: no cover
    return w.to(torch.float64)


_THRESHOLD_TABLES: dict = {}


def _log_threshold_table(kind: str, k: int, in_frac: int | None, base: str | None) -> torch.Tensor:
    """``log_thresholds`` of a log encoder (section 8.2), computed once per process for each
    ``(kind, k, in_frac, base)``: every block's softmax / GELU encoder shares its table."""
    key = (kind, k, in_frac, base)
    if key not in _THRESHOLD_TABLES:
        if kind == "log2":
            qmax = SF.log2_qmax(k)
            thr = log_thresholds(lambda a: in_frac - round_log2(a), range(qmax, -1, -1))
        else:
            qmax = SF.shiftlog2_qmax(k, base)
            c, rl = (2 * SF.LOG_FRAC, round_log_sqrt2) if base == "sqrt2" else (SF.LOG_FRAC, round_log2)
            thr = log_thresholds(lambda w: c - rl(w), range(qmax - 1, -1, -1))
        _THRESHOLD_TABLES[key] = thr
    return _THRESHOLD_TABLES[key].clone()


def bit_length_minus_one(v: torch.Tensor) -> torch.Tensor:
    """``floor(log2(v))`` of int64 ``v >= 1``, exact (float64 estimate, then corrected by shifts)."""
    p = torch.frexp(v.double())[1].to(I64) - 1
    p = torch.where(torch.bitwise_right_shift(v, p.clamp(min=0)) == 0, p - 1, p)
    p = torch.where(torch.bitwise_right_shift(v, (p + 1).clamp(max=62)) != 0, p + 1, p)
    return p


def _mantissa16(v: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    up = torch.bitwise_left_shift(v, (15 - p).clamp(min=0))
    down = torch.bitwise_right_shift(v, (p - 15).clamp(min=0))
    return torch.where(p <= 15, up, down)


def round_log2(v: torch.Tensor) -> torch.Tensor:
    """Nearest integer to ``log2(v)`` for ``v >= 1`` (16-bit mantissa threshold, section 8.2)."""
    p = bit_length_minus_one(v)
    return p + (_mantissa16(v, p) >= SF.LOG2_THRESHOLD).to(I64)


def round_log_sqrt2(v: torch.Tensor) -> torch.Tensor:
    """Nearest integer to ``2 log2(v)`` for ``v >= 1`` (section 8.2)."""
    p = bit_length_minus_one(v)
    m = _mantissa16(v, p)
    t0, t1 = SF.LOG_SQRT2_THRESHOLDS
    return 2 * p + (m >= t0).to(I64) + (m >= t1).to(I64)


# ------------------------------------------------------------------------------------------------
# encoders (section 8)
# ------------------------------------------------------------------------------------------------
class GridEncoder:
    """One encoder of the program: float host tensor -> A codes (and dense outlier values).

    Rows (per-patch ``R``/``z``) run along the second-to-last axis of the input.
    """

    def __init__(self, entry: dict, tensors: dict):
        self.kind = entry["kind"]
        self.bits = int(entry["bits"])
        self.in_frac = int(entry["in_frac"])
        self.in_bits = int(entry.get("in_bits", 32))
        self.r = torch.from_numpy(np.asarray(tensors[entry["r"]], np.int64).reshape(-1))
        self.z = torch.from_numpy(np.asarray(tensors[entry["z"]], np.int64).reshape(-1))
        self.se = int(entry.get("se", 0))
        self.alpha_fx = entry.get("alpha_fx")
        self.fo = int(entry.get("fo") or 0)
        self.sh = int(entry.get("sh", 0))
        self.base = entry.get("base", "2")
        self.m0, self.m1 = int(entry.get("m0", 0)), int(entry.get("m1", 0))
        lad = entry.get("ladder")
        self.ladder_r = None if lad is None else torch.from_numpy(np.asarray(tensors[lad["r"]], np.int64).reshape(-1))
        self.ladder_t = None if lad is None else torch.from_numpy(np.asarray(tensors[lad["t"]], np.int64).reshape(-1))
        self._ladder_t_f = None if lad is None else self.ladder_t.double()   # exact (T < 2^34)
        self._thr = None

    def dynamic_rows(self, x_fx: torch.Tensor):
        """Section 8.1.1 per row (last axis = channels): ``(j, r, z)``, ``r``/``z`` shaped ``(..., M, 1)``."""
        inl = x_fx if self.alpha_fx is None else torch.where(x_fx.abs() > int(self.alpha_fx), 0, x_fx)
        lo = inl.amin(dim=-1).clamp(max=0)
        span = inl.amax(dim=-1).clamp(min=0) - lo
        j = ((self.ladder_t >= span[..., None]).sum(dim=-1) - 1).clamp(min=0)
        r = self.ladder_r[j]
        z = round_shift(-lo * r, self.se).clamp(0, 2 ** self.bits - 1)
        return j, r[..., None], z[..., None]

    def _rows(self, v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if v.numel() == 1:
            return v.reshape(())
        if x.dim() < 2 or x.shape[-2] != v.numel():
            raise IntegerGridError(f"per-patch encoder has {v.numel()} rows, input shape {tuple(x.shape)}")
        return v[:, None]

    def encode(self, x: torch.Tensor):
        """``(codes, outlier_values, rows)``; outlier values (units ``s[r] 2^-FO``, 0 elsewhere) or None;
        ``rows = (j, z)`` per row for the dynamic per-patch encoder (section 8.1.1), else None.

        Codes are int64; the computation is :meth:`encode_sparse` (outliers scattered into a dense tensor)."""
        codes, outl, rows = self.encode_sparse(x)
        codes = codes.to(I64)
        if self.kind != "uniform" or self.alpha_fx is None:
            return codes, None, rows
        dense = torch.zeros(codes.shape, dtype=I64)
        if outl is not None:
            dense[tuple(outl[0].t())] = outl[1]
        return codes, dense, rows

    # -- fast path: exact integers carried in float64 where the bound allows (docs/performance.md) --
    def _log_tables(self):
        """Threshold tables of the log encoders (section 8.2), from this module's ``round_log2`` /
        ``round_log_sqrt2``: ``code = QMAX - #{j : w >= W[j]}`` (log2: below ``W_zero`` the ZERO code)."""
        if getattr(self, "_thr", None) is not None:
            return
        k = self.bits
        if self.kind == "log2":
            thr = _log_threshold_table("log2", k, int(self.in_frac), None)
            self._zero_thr, self._thr = float(thr[0]), thr[1:].contiguous()
        else:
            self._thr = _log_threshold_table("shiftlog2", k, None, self.base)
        # the code of every input up to the last step, as a table (beyond it the code is constant)
        finite = [float(t) for t in self._thr if t < 2.0 ** 62] + ([self._zero_thr] if self.kind == "log2" else [])
        self._wmax = max(finite + [0.0])
        w = torch.arange(int(self._wmax) + 1, dtype=torch.float64)
        cnt = torch.bucketize(w, self._thr, right=True)
        if self.kind == "log2":
            lut = (SF.log2_qmax(k) - cnt).masked_fill_(w < self._zero_thr, SF.log2_zero_code(k))
        else:
            lut = SF.shiftlog2_qmax(k, self.base) - cnt
        self._code_lut = lut.to(torch.int32)

    def _lut_codes(self, w: torch.Tensor) -> torch.Tensor:
        """Codes of the exact integers ``w`` (float64) through the table of :meth:`_log_tables`."""
        idx = w.clamp_(0, self._wmax).to(torch.int32)
        return self._code_lut.index_select(0, idx.reshape(-1)).reshape(w.shape)

    def encode_sparse(self, x: torch.Tensor):
        """``(codes, outliers, rows)`` with sparse outliers ``(index (n, x.dim()), values (n,))`` or None.

        Codes come back as exact integers in float32 (uniform) or int32 (log encoders). The input is
        processed in chunks (whole rows; the intermediates stay in the CPU caches), in float64 where
        every product is checked against ``2^53`` first; beyond it the int64 path
        (:meth:`_encode_int64`) computes the same integers."""
        if self.in_bits > 32 or self.kind == "three_region":
            return self._encode_int64(x)
        self._nsat = 0
        try:
            if self.kind == "uniform":
                res = self._uniform_chunks(x)
            elif self.kind in ("log2", "shiftlog2"):
                res = self._log_chunks(x)
            else:
                raise IntegerGridError(f"unknown encoder kind {self.kind!r}")
        except _Beyond53:
            return self._encode_int64(x)
        if self._nsat:  # a range fault of the host boundary (spec section 1): saturated, never wrapped, reported
            warnings.warn(f"integer grid: {self._nsat} value(s) saturated at a host -> fixed-point boundary "
                          f"({self.in_bits} bits, {self.in_frac} fraction bits)", RuntimeWarning, stacklevel=2)
        return res

    def _fx(self, x: torch.Tensor):
        x_fx, mn, mx, nsat = to_fixed_f64(x, self.in_frac, self.in_bits, warn=False)
        self._nsat += nsat
        return x_fx, max(-mn, mx)

    def _fx_rows(self, x: torch.Tensor):
        """``to_fixed`` (section 1) with per-row ``(min, max)`` instead of the global range."""
        v = torch.addcmul(_HALF, x, torch.tensor([2.0 ** self.in_frac], dtype=torch.float64)).floor_()
        lo_r, hi_r = torch.aminmax(v, dim=-1)
        mn, mx = float(lo_r.min()), float(hi_r.max())
        if not (math.isfinite(mn) and math.isfinite(mx)):
            raise IntegerGridError("non-finite value at a host -> fixed-point boundary")
        lo, hi = -(2.0 ** (self.in_bits - 1)), 2.0 ** (self.in_bits - 1) - 1
        if mn < lo or mx > hi:
            self._nsat += int(((v < lo) | (v > hi)).sum())
            v.clamp_(lo, hi)
            lo_r, hi_r = lo_r.clamp(lo, hi), hi_r.clamp(lo, hi)
        return v, (lo_r, hi_r)

    def encode_index(self, x: torch.Tensor):
        """Log encoders: ``(index, code_lut)`` with ``codes = code_lut[index]`` (the table position of each
        input, :meth:`_log_tables`), so that a GEMM can compose its decode tables with ``code_lut`` and
        skip the codes tensor; None for the other encoders (use :meth:`encode_sparse`)."""
        if self.in_bits > 32 or self.kind not in ("log2", "shiftlog2"):
            return None
        self._nsat = 0
        try:
            index = self._log_chunks(x, index_only=True)[0]
        except _Beyond53:
            return None
        if self._nsat:
            warnings.warn(f"integer grid: {self._nsat} value(s) saturated at a host -> fixed-point boundary "
                          f"({self.in_bits} bits, {self.in_frac} fraction bits)", RuntimeWarning, stacklevel=2)
        return index, self._code_lut

    def _log_chunks(self, x: torch.Tensor, index_only: bool = False):
        self._log_tables()
        flat = x.reshape(-1)
        out = torch.empty(flat.shape, dtype=torch.int32)
        r = int(self.r[0]) if self.kind == "shiftlog2" else 1
        for i0 in range(0, flat.numel(), _CHUNK):
            x_fx, amax = self._fx(flat[i0:i0 + _CHUNK])
            if self.kind == "shiftlog2":
                if (amax + abs(self.sh)) * r + 2.0 ** self.se >= 2.0 ** 53:
                    raise _Beyond53
                rs = r * 2.0 ** -self.se
                x_fx.mul_(rs).add_(self.sh * rs + (0.5 if self.se > 0 else 0.0)).floor_()  # w; w <= 0 -> QMAX
            if index_only:
                out[i0:i0 + _CHUNK] = x_fx.clamp_(0, self._wmax)
            else:
                out[i0:i0 + _CHUNK] = self._lut_codes(x_fx)   # log2: x_fx < 0 counts as 0, as _encode_int64
        return out.reshape(x.shape), None, None

    def _uniform_chunks(self, x: torch.Tensor):
        if x.dim() < 2:
            raise IntegerGridError(f"a uniform encoder needs (..., M, K) input, got shape {tuple(x.shape)}")
        lead, m, k = x.shape[:-2], x.shape[-2], x.shape[-1]
        g = math.prod(lead)
        x3 = x.reshape(g, m, k)
        codes = torch.empty((g, m, k), dtype=torch.float32)
        js, zs, idxs, vals = [], [], [], []
        step = max(1, _CHUNK // (m * k))
        for g0 in range(0, g, step):
            # per-row min / max in one pass: the global range, the dynamic rows' ranges and the rows
            # that can hold outliers all come from it
            x_fx, mm = self._fx_rows(x3[g0:g0 + step])
            q, outl, rows = self._uniform_f64(x_fx, max(-float(mm[0].min()), float(mm[1].max())), mm)
            codes[g0:g0 + step] = q
            if rows is not None:
                js.append(rows[0])
                zs.append(rows[1])
            if outl is not None:
                idx = outl[0].clone()
                idx[:, 0] += g0
                idxs.append(idx)
                vals.append(outl[1])
        rows = None if not js else (torch.cat(js).reshape(*lead, m), torch.cat(zs).reshape(*lead, m))
        outl = None
        if idxs:
            idx, val = torch.cat(idxs), torch.cat(vals)
            if len(lead) != 1:                        # back to the input's own leading dimensions
                gi = torch.stack(torch.unravel_index(idx[:, 0], tuple(lead)), dim=1) if lead else idx[:, :0]
                idx = torch.cat([gi, idx[:, 1:]], dim=1)
            outl = (idx, val)
        return codes.reshape(x.shape), outl, rows

    def _uniform_f64(self, x_fx: torch.Tensor, amax: float, row_minmax=None):
        k, se = self.bits, self.se
        qhi = 2 ** k - 1
        has_out = self.alpha_fx is not None and amax > int(self.alpha_fx)
        idx = None
        if has_out:                        # outliers are few: find them in the rows whose range exceeds alpha
            alpha = int(self.alpha_fx)
            if row_minmax is not None:
                cand = ((row_minmax[0] < -alpha) | (row_minmax[1] > alpha)).reshape(-1).nonzero()[:, 0]
                sub = x_fx.reshape(-1, x_fx.shape[-1])[cand]
                rc = (sub.abs() > alpha).nonzero()
                flat = cand[rc[:, 0]]
                lead = torch.stack(torch.unravel_index(flat, tuple(x_fx.shape[:-1])), dim=1) if x_fx.dim() > 1 \
                    else flat[:, :0]
                idx = torch.cat([lead, rc[:, 1:]], dim=1)
            else:
                idx = (x_fx.abs() > alpha).nonzero()
            has_out = len(idx) > 0
        pos = None if idx is None else tuple(idx.t())
        rows = None
        if self.ladder_r is not None:                         # section 8.1.1, per row
            if row_minmax is None:
                row_minmax = torch.aminmax(x_fx, dim=-1)
            lo, hi = row_minmax
            if has_out:                                       # rows with outliers: min / max of the inliers
                flat_rows = torch.unique(idx[:, :-1] @ _strides(x_fx.shape[:-1]))
                sub = x_fx.reshape(-1, x_fx.shape[-1])[flat_rows]
                sub[sub.abs() > int(self.alpha_fx)] = 0.0
                s_lo, s_hi = torch.aminmax(sub, dim=-1)
                lo, hi = lo.clone().reshape(-1), hi.clone().reshape(-1)
                lo[flat_rows], hi[flat_rows] = s_lo, s_hi
                lo, hi = lo.reshape(x_fx.shape[:-1]), hi.reshape(x_fx.shape[:-1])
            lo, span = lo.clamp(max=0), hi.clamp(min=0) - lo.clamp(max=0)
            j = ((self._ladder_t_f >= span[..., None]).sum(dim=-1) - 1).clamp(min=0)
            r_i = self.ladder_r[j]
            z_i = round_shift(-lo.to(I64) * r_i, se).clamp(0, qhi)
            rows = (j, z_i)
            r, z = r_i[..., None].double(), z_i[..., None].double()
            rmax, zmax = float(self.ladder_r.max()), float(qhi)
        else:
            r, z = self._rows(self.r, x_fx).double(), self._rows(self.z, x_fx).double()
            rmax, zmax = float(self.r.max()), float(self.z.max())
        if amax * rmax + 2.0 ** se + zmax * 2.0 ** se >= 2.0 ** 53:
            raise _Beyond53
        q = torch.addcmul(z + (0.5 if se > 0 else 0.0), x_fx, r * 2.0 ** -se).floor_().clamp_(0, qhi)
        if not has_out:
            return q, None, rows
        q[pos] = z.expand_as(q)[pos]                           # dense code at an outlier = zero point
        xv = x_fx[pos].to(I64)
        rv = r.expand_as(x_fx)[pos].to(I64)
        val = round_shift(xv * rv, se - self.fo).clamp(-2 ** 15, 2 ** 15 - 1)
        return q, (idx, val), rows

    def _encode_int64(self, x, x_fx=None):
        """The int64 encoders of section 8 (any input range); sparse outliers as :meth:`encode_sparse`."""
        if x_fx is None:
            x_fx = to_fixed(x, self.in_frac, self.in_bits)
        else:
            x_fx = x_fx.to(I64)
        k = self.bits
        if self.kind == "uniform":
            rows = None
            if self.ladder_r is not None:
                j, r, z = self.dynamic_rows(x_fx)
                rows = (j, z[..., 0])
            else:
                r, z = self._rows(self.r, x_fx), self._rows(self.z, x_fx)
            q = (round_shift(x_fx * r, self.se) + z).clamp(0, 2 ** k - 1)
            if self.alpha_fx is None:
                return q, None, rows
            out = x_fx.abs() > int(self.alpha_fx)
            val = round_shift(x_fx * r, self.se - self.fo).clamp(-2 ** 15, 2 ** 15 - 1)
            return torch.where(out, z.expand_as(q), q), (out.nonzero(), val[out]), rows
        if self.kind == "log2":
            qmax, zero = SF.log2_qmax(k), SF.log2_zero_code(k)
            a = x_fx.clamp(min=0)
            q = self.in_frac - round_log2(a.clamp(min=1))
            q = torch.where(q < 0, torch.zeros_like(q), q)
            return torch.where((a == 0) | (q > qmax), torch.full_like(q, zero), q), None, None
        if self.kind == "shiftlog2":
            qmax = SF.shiftlog2_qmax(k, self.base)
            u = x_fx + self.sh
            w = round_shift(u * int(self.r[0]), self.se)
            wpos = w.clamp(min=1)
            if self.base == "2":
                q = SF.LOG_FRAC - round_log2(wpos)
            else:
                q = 2 * SF.LOG_FRAC - round_log_sqrt2(wpos)
            q = q.clamp(0, qmax)
            return torch.where((u <= 0) | (w <= 0), torch.full_like(q, qmax), q), None, None
        if self.kind == "three_region":
            p = 2 ** (k - 2) - 1
            w = round_shift(x_fx * int(self.r[0]), self.se)
            n = round_shift(-w, SF.LOG_FRAC).clamp(max=2 ** (k - 1) - 1)
            neg = ((n >> (k - 2)) << (k - 1)) | (1 << (k - 2)) | (n & p)
            neg = torch.where(n == 0, torch.zeros_like(n), neg)
            n1 = round_shift(w, SF.LOG_FRAC + self.m0)
            n2 = (1 << (k - 1)) | round_shift(w, SF.LOG_FRAC + self.m1).clamp(max=p)
            pos = torch.where(n1 <= p, n1, n2)
            return torch.where(w < 0, neg, pos), None, None
        raise IntegerGridError(f"unknown encoder kind {self.kind!r}")


# ------------------------------------------------------------------------------------------------
# decode (section 4) and one GEMM (sections 6, 7)
# ------------------------------------------------------------------------------------------------
def decode(q: torch.Tensor, kind: str, bits: int, base: str = "2", m0: int = 0, m1: int = 0) -> torch.Tensor:
    """The integer operand ``D`` of A codes ``q`` (int64)."""
    q = q.to(I64)
    if kind == "uniform":
        return q
    if kind == "log2":
        qmax, zero = SF.log2_qmax(bits), SF.log2_zero_code(bits)
        if bool(((q > qmax) & (q != zero)).any()) or bool((q < 0).any()):
            raise IntegerGridError("invalid log2 code")
        d = torch.bitwise_left_shift(torch.ones_like(q), (qmax - q).clamp(min=0))
        return torch.where(q == zero, torch.zeros_like(q), d)
    if kind == "shiftlog2":
        c, _sqf, h, _qmax = SF.shiftlog2_params(bits, base)
        e = q if base == "2" else q >> 1
        mant = torch.where((q & 1) == 1, torch.full_like(q, c[1]), torch.full_like(q, c[0]))
        return torch.bitwise_left_shift(mant, h - e)
    if kind == "three_region":
        p = 2 ** (bits - 2) - 1
        r = (q >> (bits - 1)) & 1
        g = (q >> (bits - 2)) & 1
        mag = q & p
        pos = torch.where(r == 0, mag << m0, mag << m1)
        return torch.where(g == 1, -((r << (bits - 2)) | mag), pos)
    raise IntegerGridError(f"unknown A format {kind!r}")


def _vec(tensors: dict, key) -> torch.Tensor:
    return torch.from_numpy(np.asarray(tensors[key], np.int64).reshape(-1))


class GridGemm:
    """One program layer (its requantizer, output format and, for linear layers, B codes)."""

    def __init__(self, name: str, entry: dict, tensors: dict):
        self.name = name
        a = entry["a"]
        self.kind, self.bits = a["kind"], int(a["bits"])
        self.base, self.m0, self.m1 = a.get("base", "2"), int(a.get("m0", 0)), int(a.get("m1", 0))
        self.za = _vec(tensors, a["za"])
        self.dynamic_rows = bool(a.get("dynamic", False))  # Mr / za per row from the encoder (8.1.1)
        self.fo = int(entry.get("fo") or 0)
        rq = entry["requant"]
        self.mr, self.sr = _vec(tensors, rq["mr"]), int(rq["sr"])
        self.mc, self.sc, self.bq = _vec(tensors, rq["mc"]), _vec(tensors, rq["sc"]), _vec(tensors, rq["bq"])
        self.z_out = int(rq["z_out"])
        self.out_fmt, self.out_bits = entry["out_fmt"], int(entry["out_bits"])
        self.out_frac = int(entry.get("out_frac", 0))
        self.s_out = float(entry["scales"]["s_out"])
        self.b = None if entry["b"] == "runtime" else torch.from_numpy(np.asarray(tensors[entry["b"]], np.int64))
        if self.out_fmt == "ucode":
            self.lo, self.hi = 0, 2 ** self.out_bits - 1
        elif self.out_fmt == "scode":
            self.lo, self.hi = -(2 ** (self.out_bits - 1) - 1), 2 ** (self.out_bits - 1) - 1
        else:
            width = 16 if self.out_fmt == "fixed16" else 32
            self.lo, self.hi = -(2 ** (width - 1)), 2 ** (width - 1) - 1

        self.b_bits = int(entry.get("b_bits", 8))
        self._plans: dict = {}
        self._bad, self._nsat = False, 0
        # B operand (exact: |b| <= 127), stored transposed (the layout the float32 GEMM is fastest with)
        # (not for K = 1: a (1, N) view with strides (1, 1) would reach the GEMM with leading dimension 1)
        tr = self.b is not None and self.b.shape[0] > 1
        self._b32 = None if self.b is None else (self.b.t().contiguous().float().t() if tr else self.b.float())
        self._b8 = None if self.b is None else (self.b.t().contiguous().to(torch.int8).t() if tr
                                                 else self.b.to(torch.int8).contiguous())
        self._b64 = None if self.b is None else self.b.double()
        self._colsum = None if self.b is None else self.b.double().sum(dim=0)

    # -- fast path (docs/performance.md): float32 GEMM planes and a float64 requantiser, both exact --
    def _lut(self):
        """``D`` of every code as float64 (NaN for invalid codes) and the range of the valid ones."""
        if getattr(self, "_lut_f", None) is None:
            vals = []
            for c in range(2 ** self.bits):
                try:
                    vals.append(float(decode(torch.tensor([c]), self.kind, self.bits, self.base, self.m0, self.m1)[0]))
                except IntegerGridError:
                    vals.append(float("nan"))
            self._lut_f = torch.tensor(vals, dtype=torch.float64)
            ok = self._lut_f[~torch.isnan(self._lut_f)]
            self._drange = (float(ok.min()), float(ok.max()))
            self._identity = self.kind == "uniform"
        return self._lut_f

    def _plan(self, k: int):
        """Exact float32 GEMM plan for reduction length ``k``: ``X = D - za - O`` is split into balanced
        digits ``|d| <= H`` of base ``P = 2H + 1`` with ``K * H * Bmax < 2^24``, so every partial sum of
        every digit GEMM is an integer below 2^24 (exact in float32 whatever the summation order); and the
        static bounds that make the float64 requantiser exact (``_exact``). Returns None when the float
        path is not exact (the int64 path is used)."""
        force = getattr(self, "force_path", None)              # tests: "int8", "float32" or "int64"
        if (k, force) in self._plans:
            return self._plans[(k, force)]
        if force == "int64":
            return None
        self._lut()
        bmax = 2 ** (self.b_bits - 1) - 1
        zmax = float(2 ** self.bits - 1) if self.dynamic_rows else float(self.za.abs().max())
        zmin = 0.0 if self.dynamic_rows else float(self.za.min())
        dmin, dmax = self._drange
        lo, hi = dmin - zmax, dmax - zmin
        o = math.floor((lo + hi) / 2)
        # int8 digits (|d| <= 127) through torch._int_mm when its int32 partial sums are bounded
        # (K * 256 * Bmax < 2^31, with a margin for kernels that add 128 to one operand) and the
        # backend passed this module's own check (_int8_ok); else float32 digits with K * H * Bmax < 2^24
        int8 = bmax <= 127 and k * 256 * bmax < 2 ** 31 and _int8_ok() and force != "float32"
        if force == "int8" and not int8:
            raise IntegerGridError(f"{self.name}: the int8 path is not exact / available for K = {k}")
        h = 127 if int8 else max(1, (2 ** 24 - 1) // max(1, k * bmax))
        p, n, cover = 2 * h + 1, 1, h
        while cover < max(hi - o, o - lo):
            n, cover = n + 1, cover + h * p ** n
        amax = max(abs(dmin), abs(dmax)) + zmax
        bound = 2 ** self.fo * k * amax * bmax + (k * 2 ** 15 * bmax if self.fo else 0)    # section 6
        mr_max = float(self.mr.max()) if self.mr.numel() else 0.0
        sc_max, bq_max = int(self.sc.max()), float(self.bq.abs().max())
        exact = (n <= 3 and bound * 2.0 ** 16 + 2.0 ** self.sr < 2 ** 52 and
                 bound * float(self.mc.max()) + bq_max + 2.0 ** sc_max + abs(self.z_out) * 2.0 ** sc_max < 2 ** 52)
        plan = None
        if exact:
            ident1 = not self.dynamic_rows and bool((self.mr == 2 ** self.sr).all())
            two_fo = 2.0 ** self.fo
            mc2 = self.mc.double() * 2.0 ** -self.sc.double()
            c2 = (self.bq.double() + torch.where(self.sc > 0, 2.0 ** (self.sc.double() - 1), 0.0)
                  + self.z_out * 2.0 ** self.sc.double()) * 2.0 ** -self.sc.double()
            # the largest |v| the requantiser can produce (section 7 with |t| <= bound): when it is inside
            # [lo, hi] no output can saturate, and the range check / clamp are skipped
            vmax = (bound * float(self.mc.max()) + bq_max + 2.0 ** sc_max) * 2.0 ** -int(self.sc.min()) + abs(self.z_out)
            inside = -vmax >= self.lo and vmax <= self.hi
            nan_possible = not int8 and bool(torch.isnan(self._lut_f).any())
            plan = {"check": nan_possible or (self.out_fmt.startswith("fixed") and not inside), "clamp": not inside,
                    "o": float(o), "h": h, "p": p, "n": n, "int8": int8, "ident1": ident1, "mc2": mc2, "c2": c2,
                    "mc2_fo": mc2 * two_fo, "s1": two_fo * 2.0 ** -self.sr,
                    "half1_t": torch.tensor([0.5 if self.sr > 0 else 0.0], dtype=torch.float64), "mr_max": mr_max}
        self._plans[(k, force)] = plan
        return plan

    def _plane_luts(self, plan) -> list:
        """Per digit plane, the float32 digit of ``X = D - za - O`` for every code (per-tensor ``za``);
        NaN for invalid codes (an invalid code then shows as a non-finite output and raises)."""
        if "luts" not in plan:
            za = float(self.za.reshape(-1)[0])
            x = self._lut_f - (za + plan["o"])
            nan = torch.isnan(x)
            planes = self._digits(x.masked_fill(nan, 0.0), plan)
            if plan["int8"]:                  # int8 has no NaN: invalid codes are checked separately
                plan["luts"] = planes
                plan["valid"] = None if not bool(nan.any()) else (~nan).to(torch.int32)
            else:
                plan["luts"] = [p.masked_fill(nan, float("nan")) for p in planes]
                plan["valid"] = None
        return plan["luts"]

    def _digits(self, x: torch.Tensor, plan) -> list:
        """Balanced base-``P`` digits of the exact float64 integers ``x`` (``|d| <= H``), float32 or int8."""
        dt = torch.int8 if plan["int8"] else torch.float32
        if plan["n"] == 1:
            return [x.to(dt)]
        h, p = plan["h"], plan["p"]
        out = []
        for _ in range(plan["n"] - 1):
            d = torch.remainder(x + h, p).sub_(h)        # exact: |x + h| < 2^53, quotient far from ties
            out.append(d.to(dt))
            x = (x - d).div_(p)                          # exact: x - d is a multiple of p
        out.append(x.to(dt))
        return out

    def _matmul(self, a: torch.Tensor, b, plan) -> torch.Tensor:
        """One digit GEMM: ``a (G, M, K) @ b`` (``(K, N)`` shared or ``(G, K, N)``), exact integers."""
        if not plan["int8"]:
            return torch.matmul(a, b)
        g, m, k = a.shape
        if b.dim() == 2:
            return torch._int_mm(a.reshape(g * m, k), b).reshape(g, m, -1)
        out = torch.empty((g, m, b.shape[2]), dtype=torch.int32)
        for ai, bi, oi in zip(a.unbind(0), b.unbind(0), out.unbind(0)):
            torch._int_mm(ai, bi, out=oi)
        return out

    def run(self, codes: torch.Tensor, outliers=None, rows=None, b: torch.Tensor | None = None,
            code_lut: torch.Tensor | None = None, raws=None) -> torch.Tensor:
        """The layer on codes ``(..., M, K)`` (sections 4, 6, 7): float32 ``from_fixed`` host values for a
        ``fixed`` output, else the output codes (exact small integers in float32). ``outliers = (index,
        values)`` from :meth:`GridEncoder.encode_sparse`; ``b`` the run-time B codes ``(..., K, N)``.

        Rows are processed in chunks of about ``_CHUNK`` elements, so that the float64 intermediates of
        the requantiser stay in the CPU caches (measured 8x faster than whole-tensor passes)."""
        self._row_check(rows)
        k = codes.shape[-1]
        plan = self._plan(k)
        if code_lut is not None and (plan is None or self._identity or self.za.numel() != 1 or self.dynamic_rows):
            codes, code_lut = code_lut.index_select(0, codes.reshape(-1)).reshape(codes.shape), None
        if plan is None:
            return self._to_out(self._run_int64(codes, outliers, rows, b))
        m = codes.shape[-2]
        lead = codes.shape[:-2]
        g = math.prod(lead)
        c3 = codes.reshape(g, m, k)
        if self.dynamic_rows:
            za = rows[1].reshape(g, m, 1).double()
            mr = self.mr[rows[0]].reshape(g, m, 1).double() if not plan["ident1"] else None
        else:
            za = self.za.double().reshape(()) if self.za.numel() == 1 else self.za.double()[:, None]
            mr = None if plan["ident1"] else (self.mr.double().reshape(1) if self.mr.numel() == 1
                                              else self.mr.double()[:, None])
        if b is None:
            b32, colsum, n = (self._b8 if plan["int8"] else self._b32), self._colsum, self._b32.shape[1]
        else:
            b3 = b.reshape(g, k, -1)
            b32 = b3.to(torch.int8).contiguous() if plan["int8"] else b3.float()
            colsum, n = b3.sum(dim=1, keepdim=True, dtype=torch.float64), b3.shape[2]
        orow = None
        if outliers is not None and len(outliers[1]):
            orow = self._outlier_rows(outliers, codes.shape, None if b is None else b.reshape(g, k, -1), m)
        # the digit GEMMs on the whole operand (exact integer results), then the exact finish chunk by chunk
        # (``raws``: the caller computed them, e.g. q / k / v in one GEMM: :func:`_linear_codes`)
        if raws is None:
            raws = [self._matmul(pl, b32, plan) for pl in self._planes(c3, za, plan, code_lut)]
        out = torch.empty((g, m, n), dtype=torch.float32)
        if b is None and (g == 1 or mr is None or mr.dim() != 2):
            # shared B, row parameters per (group, row) or per tensor: chunk over flat rows
            rows_all, step = g * m, max(1, _CHUNK // n)
            flat = [r.reshape(rows_all, n) for r in raws]
            o2 = out.reshape(rows_all, n)
            mr2 = mr.reshape(rows_all, 1) if mr is not None and mr.dim() == 3 else mr
            for r0 in range(0, rows_all, step):
                r1 = min(rows_all, r0 + step)
                self._finish([f[r0:r1] for f in flat], None if mr2 is None else (mr2 if mr2.dim() == 1 else
                             (mr2[r0:r1] if mr2.shape[0] == rows_all else mr2[torch.arange(r0, r1) % m])),
                             colsum, orow, r0, r1, plan, o2[r0:r1])
        else:                                 # run-time B or per-row parameters (M,): chunk over whole groups
            step = max(1, (2 * _CHUNK) // (m * n))
            for g0 in range(0, g, step):
                g1 = min(g, g0 + step)
                sl = slice(g0, g1)
                self._finish([r[sl] for r in raws], mr, colsum if colsum.dim() == 1 else colsum[sl], orow,
                             g0 * m, g1 * m, plan, out[sl])
        self._report()
        return out.reshape(*lead, m, n)

    def _outlier_rows(self, outliers, shape, b3, m):
        """Sparse outliers as ``(flat_row, val * 2^-FO * b[col, :])`` sorted by row (``acc`` is kept in units
        of ``2^FO``: the ``<< FO`` of section 6 is folded into the requantiser's multipliers)."""
        idx, val = outliers
        row = torch.zeros(len(val), dtype=I64)
        for ax in range(idx.shape[1] - 1):
            row = row * shape[ax] + idx[:, ax]
        order = torch.argsort(row, stable=True)
        row, col, val = row[order], idx[order, -1], val[order].double() * 2.0 ** -self.fo
        brows = self._b64[col] if b3 is None else b3.double()[row // m, col]
        return row, val[:, None] * brows

    def _planes(self, c, za, plan, code_lut=None) -> list:
        """Digit planes of ``X = D - za - O`` for codes ``c`` (section 4 decode + digits); with ``code_lut``
        ``c`` holds table positions of a log encoder and the plane tables are composed with it."""
        o = plan["o"]
        if self._identity and plan["n"] == 1:                     # uniform codes: X = q - za - O
            zo = za + o
            return [(c - (zo.float() if isinstance(zo, torch.Tensor) else zo)).to(
                torch.int8 if plan["int8"] else torch.float32)]
        if self.za.numel() == 1 and not self.dynamic_rows:       # X depends on the code alone: tables
            flat = c.reshape(-1)
            flat = flat if flat.dtype in (torch.int32, I64) else flat.to(torch.int32)
            luts, valid = self._plane_luts(plan), plan["valid"]
            if code_lut is not None:                          # composed tables (cached per code table)
                key = ("composed", code_lut.data_ptr(), code_lut.numel())
                if key not in plan:
                    plan[key] = ([t.index_select(0, code_lut) for t in luts],
                                 None if valid is None else valid.index_select(0, code_lut))
                luts, valid = plan[key]
            if valid is not None and not bool(valid.index_select(0, flat).all()):
                raise IntegerGridError(f"{self.name}: invalid A code (no decoded value)")
            return [t.index_select(0, flat).reshape(c.shape) for t in luts]
        d = self._lut_f.index_select(0, c.reshape(-1).to(torch.int32)).reshape(c.shape)
        if plan["int8"] and bool(torch.isnan(d).any()):
            raise IntegerGridError(f"{self.name}: invalid A code (no decoded value)")
        return self._digits(d.sub_(za + o), plan)

    def _finish(self, raws, mr, colsum, orow, r0, r1, plan, out) -> None:
        """Flat rows ``r0:r1`` of the layer from the digit GEMM results ``raws``: ``acc`` (digits combined,
        ``O * colsum``, outliers; in units of ``2^FO``), the requantiser and the output, into ``out``."""
        o = plan["o"]
        acc = raws[0]
        if len(raws) > 1 or o or orow is not None:
            acc = acc.double()
            for i, r in enumerate(raws[1:], start=1):
                acc.add_(r, alpha=float(plan["p"] ** i))
            if o:
                acc.add_(colsum * o)
            if orow is not None:
                row, contrib = orow
                lo_i, hi_i = (int(v) for v in torch.searchsorted(row, torch.tensor([r0, r1])))
                if hi_i > lo_i:
                    a2 = acc.reshape(-1, acc.shape[-1])
                    a2.index_add_(0, row[lo_i:hi_i] - r0, contrib[lo_i:hi_i])
        if mr is None:
            v = torch.addcmul(plan["c2"], acc, plan["mc2_fo"])
        else:
            t = torch.addcmul(plan["half1_t"], acc, mr * plan["s1"]).floor_()
            v = torch.addcmul(plan["c2"], t, plan["mc2"])
        if v.dtype != torch.float64:     # every operand above has a dimension, so float64 wins the promotion
            raise IntegerGridError(f"{self.name}: requantiser not in float64")  # pragma: no cover
        v.floor_()
        if plan["check"]:                    # NaN (invalid code) possible, or a fixed output may saturate
            mn, mx = (float(t) for t in torch.aminmax(v))
            if not (math.isfinite(mn) and math.isfinite(mx)):
                self._bad = True
            elif mn < self.lo or mx > self.hi:
                self._nsat += int(((v < self.lo) | (v > self.hi)).sum())
        if plan["clamp"]:
            v.clamp_(self.lo, self.hi)
        out.copy_(v)
        if self.out_fmt.startswith("fixed"):   # from_fixed: float32(v * 2^-F) = float32(v) * 2^-F (exact scaling)
            out.mul_(2.0 ** -self.out_frac)

    def _report(self) -> None:
        bad, nsat = getattr(self, "_bad", False), getattr(self, "_nsat", 0)
        self._bad, self._nsat = False, 0
        if bad:
            raise IntegerGridError(f"{self.name}: invalid A code (no decoded value)")
        if nsat and self.out_fmt.startswith("fixed"):  # fixed-point saturation is a range fault (section 1)
            warnings.warn(f"integer grid: {self.name}: {nsat} {self.out_fmt} output(s) saturated",
                          RuntimeWarning, stacklevel=3)

    def _to_out(self, v: torch.Tensor) -> torch.Tensor:
        """Exact output integers as :meth:`run` returns them (from_fixed floats, or codes)."""
        return from_fixed(v, self.out_frac) if self.out_fmt.startswith("fixed") else v.float()

    def _run_int64(self, codes, outliers, rows, b):
        """The int64 path (any range): dense outliers, float64 accumulation checked below 2^52,
        int64 requantiser."""
        dense = None
        if outliers is not None and self.fo:
            dense = torch.zeros(codes.shape, dtype=I64)
            dense[tuple(outliers[0].t())] = outliers[1]
        acc = self.accumulate(self.operand(codes.to(I64), rows), self.b if b is None else b.to(I64), dense)
        return self.requantize(acc, rows)

    def code_host(self, codes: torch.Tensor) -> torch.Tensor:
        """Output codes as the host float values the float model would pass on (``(c - z) * s``)."""
        return ((codes.double() - self.z_out) * self.s_out).float()

    def _row_check(self, rows):
        if self.dynamic_rows and rows is None:
            raise IntegerGridError(f"{self.name}: a dynamic per-patch A operand needs the encoder's row parameters")

    def operand(self, codes: torch.Tensor, rows=None) -> torch.Tensor:
        """``D - za`` (rows along the second-to-last axis) as float64 (exact integers); ``rows = (j, z)``
        of a dynamic per-patch encoder give ``za[r] = z[r]``."""
        d = decode(codes, self.kind, self.bits, self.base, self.m0, self.m1)
        self._row_check(rows)
        if self.dynamic_rows:
            za = rows[1][..., None]
        else:
            za = self.za.reshape(()) if self.za.numel() == 1 else self.za[:, None]
        return (d - za).double()

    def accumulate(self, a_op: torch.Tensor, b: torch.Tensor, outliers: torch.Tensor | None) -> torch.Tensor:
        """``acc`` of section 6 as int64: ``((D - za) @ b) << FO + outliers @ b`` (exact float64)."""
        bd = b.double()
        acc = (a_op @ bd) * float(2 ** self.fo)
        if outliers is not None:
            acc = acc + outliers.double() @ bd
        if bool((acc.abs() >= 2.0 ** 52).any()):
            raise IntegerGridError(f"{self.name}: accumulator beyond the exact float64 range")
        return acc.to(I64)

    def requantize(self, acc: torch.Tensor, rows=None) -> torch.Tensor:
        """Section 7 on int64 ``acc`` (rows on the second-to-last axis); returns output integers.
        With ``rows = (j, z)`` of a dynamic per-patch operand the row gain is ``Mr[j[r]]``."""
        self._row_check(rows)
        if self.dynamic_rows:
            mr = self.mr[rows[0]][..., None]
        else:
            mr = self.mr.reshape(()) if self.mr.numel() == 1 else self.mr[:, None]
        x = acc * mr
        if bool((x.abs() >= _INT62).any()):
            raise IntegerGridError(f"{self.name}: |acc * Mr| >= 2^62")
        t = round_shift(x, self.sr)
        p = t * self.mc + self.bq
        if bool((p.abs() >= _INT62).any()):
            raise IntegerGridError(f"{self.name}: |t * Mc + Bq| >= 2^62")
        v = round_shift(p, self.sc) + self.z_out
        if self.out_fmt.startswith("fixed"):
            nsat = int(((v < self.lo) | (v > self.hi)).sum())
            if nsat:  # fixed-point output saturation is a range fault (spec section 1), reported
                warnings.warn(f"integer grid: {self.name}: {nsat} {self.out_fmt} output(s) saturated",
                              RuntimeWarning, stacklevel=2)
        return v.clamp(self.lo, self.hi)

    def to_host(self, out: torch.Tensor) -> torch.Tensor:
        """Output integers as the float32 values the next host step / quantizer sees."""
        if self.out_fmt.startswith("fixed"):
            return from_fixed(out, self.out_frac)
        return ((out - self.z_out).double() * self.s_out).float()


# ------------------------------------------------------------------------------------------------
# attaching the grid to a QuantViT
# ------------------------------------------------------------------------------------------------
def attach_integer_grid(qvit, prog):
    """Switch ``qvit`` to integer-grid mode with the parameters of the program ``prog`` (a
    :class:`golden.program.Program`, e.g. ``export_program(qvit)``; :meth:`golden.qmodel.QuantViT.use_integer_grid`
    exports it when none is given).

    Returns ``prog``. :func:`detach_integer_grid` returns to float fake-quant.
    """
    from .program import check_integer_path

    check_integer_path(qvit, IntegerGridError)
    mods = dict(qvit.model.named_modules())
    man, ten = prog.manifest, prog.tensors
    detach_integer_grid(qvit)
    for ename, e in man["encoders"].items():
        q = mods.get(e["quantizer"])
        if q is None:
            raise IntegerGridError(f"program encoder {ename} names an unknown quantizer {e['quantizer']}")
        q.grid_encoder = GridEncoder(e, ten)
    for lname, e in man["layers"].items():
        gemm = GridGemm(lname, e, ten)
        if e["op"] in ("qk", "av"):
            mods[lname.rsplit(".", 1)[0] + "." + e["op"]].grid = [gemm]
            continue
        mname = "patch_embed.proj" if lname == "patch_embed" else lname
        if lname.endswith((".attn.q", ".attn.k", ".attn.v")):
            mname = lname[:-1] + "qkv"
        mod = mods[mname]
        parts = getattr(mod, "grid", None) or []
        parts.append(gemm)
        mod.grid = parts
    qvit.grid_program = prog
    return prog


def detach_integer_grid(qvit) -> None:
    """Back to float fake-quant (removes every grid attribute)."""
    for m in qvit.model.modules():
        for attr in ("grid", "grid_encoder"):
            if getattr(m, attr, None) is not None:
                setattr(m, attr, None)
    qvit.grid_program = None


def _input_codes(quantizer, x: torch.Tensor):
    """``(codes, sparse outliers, rows)`` of a quantized module's input: the program's encoder, or (an
    operand that is the integer output of an earlier GEMM) the quantizer's own codes."""
    enc = getattr(quantizer, "grid_encoder", None)
    if enc is not None:
        return enc.encode_sparse(x)
    return quantizer.quantize(x), None, None


def _input_index(quantizer, x: torch.Tensor):
    """``(codes or table positions, sparse outliers, rows, code_lut)`` of a module input: a log encoder
    gives table positions and its code table (:meth:`GridEncoder.encode_index`), the rest codes."""
    enc = getattr(quantizer, "grid_encoder", None)
    if enc is not None:
        got = enc.encode_index(x)
        if got is not None:
            return got[0], None, None, got[1]
    return (*_input_codes(quantizer, x), None)


def _fused_raws(layer, codes, rows):
    """The digit GEMMs of every part of a split layer (q / k / v) as one GEMM with the parts' B operands
    side by side, when the parts decode their (shared) input identically; per part the column slices
    of the results (exact integers, as each part's own GEMM would give), else None."""
    parts = layer.grid
    k = codes.shape[-1]
    plans = [g._plan(k) for g in parts]
    p0, g0 = plans[0], parts[0]
    same = p0 is not None and all(
        p is not None and p["int8"] == p0["int8"] and p["n"] == p0["n"] and p["o"] == p0["o"] and p["h"] == p0["h"]
        and g.dynamic_rows == g0.dynamic_rows and torch.equal(g.za, g0.za) and g.kind == g0.kind and g.b is not None
        for g, p in zip(parts, plans))
    if not same or len(parts) < 2 or codes.dim() < 2:
        return None
    cat = getattr(layer, "_grid_bcat", None)
    if cat is None:
        bc = torch.cat([g.b for g in parts], dim=1)
        bt = bc.t().contiguous()
        cat = layer._grid_bcat = ((bt.to(torch.int8).t(), bt.float().t()) if k > 1 else
                                  (bc.to(torch.int8).contiguous(), bc.float().contiguous()))
    m = codes.shape[-2]
    g = math.prod(codes.shape[:-2])
    za = rows[1].reshape(g, m, 1).double() if g0.dynamic_rows else (
        g0.za.double().reshape(()) if g0.za.numel() == 1 else g0.za.double()[:, None])
    planes = g0._planes(codes.reshape(g, m, k), za, p0)
    raws = [g0._matmul(pl, cat[0] if p0["int8"] else cat[1], p0) for pl in planes]
    out, c0 = [], 0
    for part in parts:
        n = part.b.shape[1]
        out.append([r[..., c0:c0 + n] for r in raws])
        c0 += n
    return out


def _linear_codes(layer, codes, outl, rows, host: bool = True, code_lut=None):
    """Every program layer of a QuantLinear (q/k/v parts or one) on the same input codes."""
    outs = []
    fused = _fused_raws(layer, codes, rows) if code_lut is None and len(layer.grid) > 1 else None
    for i, g in enumerate(layer.grid):
        v = g.run(codes, outl if g.fo else None, rows, code_lut=code_lut, raws=None if fused is None else fused[i])
        outs.append(g.code_host(v) if host and not g.out_fmt.startswith("fixed") else v)
    return outs


@torch.no_grad()
def linear_forward(layer, x: torch.Tensor) -> torch.Tensor:
    """Integer-grid forward of a QuantLinear (``x``: (..., M, K) or (B, K)); parts = q/k/v or one."""
    squeeze = x.dim() == 2
    if squeeze:
        x = x[:, None, :]
    codes, outl, rows, code_lut = _input_index(layer.input_quantizer, x)
    outs = _linear_codes(layer, codes, outl, rows, code_lut=code_lut)
    y = torch.cat(outs, dim=-1) if len(outs) > 1 else outs[0]
    return y[:, 0, :] if squeeze else y


@torch.no_grad()
def patch_embed_forward(conv, x: torch.Tensor) -> torch.Tensor:
    """Integer-grid patch embedding: patchify (channel, row, column order), encode, GEMM, back to NCHW."""
    b, c, hh, ww = x.shape
    p = conv.stride[0]
    patches = x.reshape(b, c, hh // p, p, ww // p, p).permute(0, 2, 4, 1, 3, 5).reshape(b, -1, c * p * p)
    y = linear_forward(conv, patches)  # (B, P, D)
    return y.transpose(1, 2).reshape(b, -1, hh // p, ww // p)


@torch.no_grad()
def matmul_forward(mm, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Integer-grid ``q @ k^T`` / ``attn @ v`` on host float operands (per head, batched); the qk gain
    is inside ``Mc``. (:func:`attention_forward` passes the integer codes directly instead.)"""
    g = mm.grid[0]
    a_codes, _, _ = _input_codes(mm.a_quantizer, a)
    b_codes = mm.b_quantizer.quantize(b)
    v = g.run(a_codes, None, None, b_codes)
    return v if g.out_fmt.startswith("fixed") else g.code_host(v)


@torch.no_grad()
def attention_forward(att, x: torch.Tensor) -> torch.Tensor:
    """Integer-grid multi-head attention (QuantAttention of a ViT with a program): the integer codes of
    q, k, v, the softmax codes and the proj input pass from GEMM to GEMM as integers; softmax is the
    host's float32 op on ``from_fixed(q @ k^T)``, as in the float model."""
    bsz, n, _ = x.shape
    h, hd = att.num_heads, att.head_dim
    codes, outl, rows = _input_codes(att.qkv.input_quantizer, x)
    q, k, v = _linear_codes(att.qkv, codes, outl, rows, host=False)
    q = q.reshape(bsz, n, h, hd).transpose(1, 2)                    # (B, H, N, hd) codes
    kt = k.reshape(bsz, n, h, hd).permute(0, 2, 3, 1)                # (B, H, hd, N)
    v = v.reshape(bsz, n, h, hd).transpose(1, 2)
    gqk, gav = att.qk.grid[0], att.av.grid[0]
    s = gqk.run(q, None, None, kt)                                    # fixed32 -> float32 (B, H, N, N)
    attn = s.softmax(dim=-1)
    a_idx, _, _, a_lut = _input_index(att.av.a_quantizer, attn)
    o = gav.run(a_idx, None, None, v, code_lut=a_lut)               # proj input codes (B, H, N, hd)
    o = o.transpose(1, 2).reshape(bsz, n, h * hd)
    (y,) = _linear_codes(att.proj, o, None, None)
    return y
