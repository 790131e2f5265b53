"""numba kernels of the encoders / quantizer units (docs/datapath.md, section 8).

``encode_uniform``, ``encode_per_patch`` (with sparse outlier extraction), ``encode_per_patch_dynamic``
(per-row scale chosen at run time from a scale ladder), ``encode_log2``, ``encode_shiftlog2`` (base 2
and sqrt(2)) and ``encode_three_region`` take the reference's arguments
and return the reference's results (int64 codes, sorted outlier list, saturation counts); parameter
checks reuse the reference's helpers, per-element faults are counted in the kernels and raised here
with the reference's error classes. The scalar ``round_log2`` / ``round_log_sqrt2`` implement the
16-bit-mantissa rounding of section 8.2.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from . import formats as F
from . import reference as ref
from .kernels_requant import as_int2d, round_shift
from .reference import DatapathError, OutlierOverflowError

I64 = np.int64
INT62_M1 = (1 << 62) - 1
INT31 = 1 << 31
I16_LO, I16_HI = -(1 << 15), (1 << 15) - 1


# --------------------------------------------------------------------------------------------------
# scalar helpers
# --------------------------------------------------------------------------------------------------

@njit(cache=True)
def bit_length(v):
    """``bit_length`` of a non-negative int64."""
    n = 0
    if v >= (np.int64(1) << 32):
        v >>= 32
        n += 32
    if v >= 65536:
        v >>= 16
        n += 16
    if v >= 256:
        v >>= 8
        n += 8
    if v >= 16:
        v >>= 4
        n += 4
    if v >= 4:
        v >>= 2
        n += 2
    if v >= 2:
        v >>= 1
        n += 1
    return n + (1 if v >= 1 else 0)


@njit(cache=True)
def mantissa16(v):
    """``(p, m)``: ``p = bit_length(v) - 1`` and the 16-bit normalised mantissa ``2^15 <= m < 2^16``."""
    p = bit_length(v) - 1
    if p <= 15:
        return p, v << (15 - p)
    return p, v >> (p - 15)


@njit(cache=True)
def round_log2_scalar(v):
    """``round_log2(v) = p + (m >= 46341)`` for ``v >= 1`` (section 8.2)."""
    p, m = mantissa16(v)
    return p + (1 if m >= F.LOG2_THRESHOLD else 0)


@njit(cache=True)
def round_log_sqrt2_scalar(v):
    """``round_log_sqrt2(v) = 2p + (m >= 38968) + (m >= 55109)`` for ``v >= 1`` (section 8.2)."""
    p, m = mantissa16(v)
    return 2 * p + (1 if m >= F.LOG_SQRT2_THRESHOLDS[0] else 0) + (1 if m >= F.LOG_SQRT2_THRESHOLDS[1] else 0)


@njit(cache=True, parallel=True)
def _round_log_kernel(v, sqrt2, out):
    for i in prange(v.shape[0]):
        out[i] = round_log_sqrt2_scalar(v[i]) if sqrt2 else round_log2_scalar(v[i])


def _flat_i64(v) -> np.ndarray:
    return np.ascontiguousarray(ref._i64(v)).reshape(-1)


def round_log2(v) -> np.ndarray:
    """Nearest integer to ``log2(v)``, ``v >= 1``, elementwise (section 8.2)."""
    a = ref._i64(v)
    if np.any(a < 1):
        raise DatapathError("round_log2 needs v >= 1")
    out = np.empty(a.size, I64)
    _round_log_kernel(_flat_i64(a), False, out)
    return out.reshape(a.shape)


def round_log_sqrt2(v) -> np.ndarray:
    """Nearest integer to ``2 log2(v)``, ``v >= 1``, elementwise (section 8.2)."""
    a = ref._i64(v)
    if np.any(a < 1):
        raise DatapathError("round_log_sqrt2 needs v >= 1")
    out = np.empty(a.size, I64)
    _round_log_kernel(_flat_i64(a), True, out)
    return out.reshape(a.shape)


# --------------------------------------------------------------------------------------------------
# uniform / per-patch (section 8.1)
# --------------------------------------------------------------------------------------------------

@njit(cache=True, parallel=True)
def _encode_uniform_kernel(x, r, se, z, qhi, alpha, use_alpha, q, n_out):
    """Dense codes; elements with ``|x| > alpha`` (if ``use_alpha``) get ``z[r]`` and are counted per row.

    Returns ``(saturations, n_not_int32)``; outlier positions count a saturation when ``z[r]`` itself is
    outside ``[0, qhi]``, exactly as the reference (which encodes 0 there before overwriting).
    """
    m, k = x.shape
    sats = np.zeros(m, np.int64)
    bigs = np.zeros(m, np.int64)
    for i in prange(m):
        ri = r[i]
        zi = z[i]
        s = 0
        bg = 0
        no = 0
        for j in range(k):
            xv = np.int64(x[i, j])
            is_out = use_alpha and abs(xv) > alpha
            if is_out:
                no += 1
                v = zi
                s += (v < 0) | (v > qhi)
                q[i, j] = zi
            else:
                bg += (xv >= INT31) | (xv <= -INT31)
                v = round_shift(xv * ri, se) + zi
                s += (v < 0) | (v > qhi)
                q[i, j] = min(max(v, 0), qhi)
        sats[i] = s
        bigs[i] = bg
        n_out[i] = no
    return sats.sum(), bigs.sum()


@njit(cache=True, parallel=True)
def _extract_outliers_kernel(x, r, se_fo, alpha, optr, rows, cols, vals):
    """Fill the sorted outlier list; returns ``(n_int16_overflows, n_beyond_2^62)``."""
    m, k = x.shape
    nof = np.zeros(m, np.int64)
    nbig = np.zeros(m, np.int64)
    for i in prange(m):
        pos = optr[i]
        if optr[i + 1] == pos:
            continue
        ri = r[i]
        lim = INT62_M1 // ri
        for j in range(k):
            xv = np.int64(x[i, j])
            if abs(xv) > alpha:
                if abs(xv) > lim:
                    nbig[i] += 1
                    v = np.int64(0)
                else:
                    v = round_shift(xv * ri, se_fo)
                if v < I16_LO or v > I16_HI:
                    nof[i] += 1
                    v = min(max(v, I16_LO), I16_HI)
                rows[pos] = i
                cols[pos] = j
                vals[pos] = v
                pos += 1
    return nof.sum(), nbig.sum()




def _rows(v, m: int) -> np.ndarray:
    return np.ascontiguousarray(ref._rows(v, m), dtype=I64)


def _check_zero_point(z, bits: int) -> None:
    if np.any(z < 0) or np.any(z > (1 << bits) - 1):
        raise DatapathError(f"zero point must lie in [0, {(1 << bits) - 1}]")


def encode_uniform(x, r, se: int, z, bits: int):
    """Uniform encoder (section 8.1), numba: ``q = saturate(round_shift(x * R[r], SE) + z[r], 0, 2^k - 1)``.

    Returns ``(q, saturations)`` like ``reference.encode_uniform``.
    """
    F.check_bits(bits)
    x = as_int2d(x, "encoder input")
    ref._check_input(x, "encode_uniform")
    m = x.shape[0]
    r, z = _rows(r, m), _rows(z, m)
    ref._check_recip(r, se)
    _check_zero_point(z, bits)
    q = np.empty(x.shape, I64)
    n_out = np.zeros(m, I64)
    sat, big = _encode_uniform_kernel(x, r, int(se), z, (1 << bits) - 1, 0, False, q, n_out)
    if big:
        raise DatapathError("encoder input must be int32")
    return q, int(sat)


def encode_per_patch(x, r, se: int, z, bits: int, alpha_fx: int, fo: int = F.OUTLIER_FRAC_BITS, strict: bool = True):
    """Per-patch uniform encoder with outlier extraction (sections 5, 8.1), numba.

    Returns ``(q, outliers, saturations, outlier_overflows)`` like ``reference.encode_per_patch``;
    raises ``OutlierOverflowError`` in strict mode when an outlier value does not fit int16.
    """
    x = as_int2d(x, "encoder input")
    ref._check_input(x, "encode_per_patch")
    m = x.shape[0]
    r, z = _rows(r, m), _rows(z, m)
    if se < fo:
        raise DatapathError("encode_per_patch needs SE >= FO")
    F.check_bits(bits)
    ref._check_recip(r, se)
    _check_zero_point(z, bits)
    alpha = int(np.floor(alpha_fx))
    q = np.empty(x.shape, I64)
    n_out = np.zeros(m, I64)
    sat, big = _encode_uniform_kernel(x, r, int(se), z, (1 << bits) - 1, alpha, True, q, n_out)
    if big:
        raise DatapathError("encoder input must be int32")
    optr = np.zeros(m + 1, I64)
    np.cumsum(n_out, out=optr[1:])
    n = int(optr[-1])
    rows, cols, vals = np.empty(n, I64), np.empty(n, I64), np.empty(n, I64)
    n_of = 0
    if n:
        n_of, nbig = _extract_outliers_kernel(x, r, int(se - fo), alpha, optr, rows, cols, vals)
        if nbig:
            raise DatapathError("round_shift: |x| must be < 2^62 (outlier value x * R)")
    if strict and n_of:
        raise OutlierOverflowError(f"{n_of} outlier value(s) do not fit int16 (section 5)")
    outliers = np.stack([rows, cols, vals], axis=1) if n else np.zeros((0, 3), I64)
    return q, outliers, int(sat), int(n_of)


# --------------------------------------------------------------------------------------------------
# dynamic per-patch (section 8.1.1): row range + ladder selection, then the per-patch kernels above
# --------------------------------------------------------------------------------------------------

@njit(cache=True, parallel=True)
def _row_range_select_ladder_kernel(x, alpha, use_alpha, ladder_r, ladder_t, se, qhi, lo, span, j_row, z_row):
    """Per row: inlier range (``row_range``), ladder index (``select_ladder``) and zero point.

    ``lo[r] = min(0, min inliers)``, ``span[r] = max(0, max inliers) - lo[r]`` (inliers ``|x| <= alpha``,
    every element unless ``use_alpha``); ``j_row[r]`` = (number of ladder entries with
    ``T[j] >= span[r]``) - 1, at least 0 (the finest covering scale for a validated, non-increasing
    ``T``); ``z_row[r] = saturate(round_shift(-lo[r] * R[j], SE), 0, qhi)``. The input is int32
    (checked by the caller), so ``|lo * R| < 2^31 * 2^24`` never wraps.
    """
    m, k = x.shape
    n_lad = ladder_t.shape[0]
    for i in prange(m):
        lo_i = np.int64(0)
        hi_i = np.int64(0)
        for c in range(k):
            xv = np.int64(x[i, c])
            if use_alpha and abs(xv) > alpha:
                continue                                        # outlier: not part of the row range
            lo_i = min(lo_i, xv)
            hi_i = max(hi_i, xv)
        sp = hi_i - lo_i
        n_cover = 0
        for jj in range(n_lad):
            n_cover += ladder_t[jj] >= sp
        ji = max(n_cover - 1, 0)
        lo[i] = lo_i
        span[i] = sp
        j_row[i] = ji
        z_row[i] = min(max(round_shift(-lo_i * ladder_r[ji], se), 0), qhi)


def row_range_select_ladder(x, ladder_r, ladder_t, se: int, bits: int, alpha_fx: int | None):
    """``(lo, span, j, z)`` per row of the dynamic per-patch encoder (section 8.1.1), numba.

    ``lo, span`` as ``reference.row_range``, ``j`` as ``reference.select_ladder``, ``z`` the row's zero
    point. Checks (bits, int32 input, ladder) are the reference's, in its order.
    """
    F.check_bits(bits)
    x = as_int2d(x, "encoder input")
    ref._check_input(x, "encode_per_patch_dynamic")
    r_lad, t_lad = ref.check_ladder(ladder_r, ladder_t, se)
    m = x.shape[0]
    # the reference's inlier test is |x| <= int(alpha_fx); |x| <= 2^31, so clamping alpha keeps it exact
    alpha = 0 if alpha_fx is None else min(max(int(alpha_fx), -1), 1 << 40)
    lo, span, j, z = (np.empty(m, I64) for _ in range(4))
    _row_range_select_ladder_kernel(x, alpha, alpha_fx is not None, np.ascontiguousarray(r_lad),
                                    np.ascontiguousarray(t_lad), int(se), (1 << bits) - 1, lo, span, j, z)
    return lo, span, j, z


def encode_per_patch_dynamic(x, ladder_r, ladder_t, se: int, bits: int, alpha_fx: int | None,
                             fo: int = F.OUTLIER_FRAC_BITS, strict: bool = True):
    """Dynamic per-patch encoder (section 8.1.1), numba: each row's scale is picked from a scale ladder.

    ``row_range_select_ladder`` gives each row's ladder index ``j`` and zero point ``z``; the codes and
    outliers then come from ``encode_per_patch`` (``encode_uniform`` when ``alpha_fx`` is None) with
    the per-row reciprocal ``R[j[r]]`` and ``z[r]``. Returns
    ``(q, outliers, saturations, outlier_overflows, j, z)`` like ``reference.encode_per_patch_dynamic``,
    with the same error classes.
    """
    F.check_bits(bits)
    x = as_int2d(x, "encoder input")
    _lo, _span, j, z = row_range_select_ladder(x, ladder_r, ladder_t, se, bits, alpha_fx)
    r_row = np.ascontiguousarray(ref._i64(ladder_r).reshape(-1)[j])
    if alpha_fx is None:
        q, sat = encode_uniform(x, r_row, se, z, bits)
        return q, np.zeros((0, 3), I64), sat, 0, j, z
    q, outliers, sat, n_of = encode_per_patch(x, r_row, se, z, bits, alpha_fx, fo, strict)
    return q, outliers, sat, n_of, j, z


# --------------------------------------------------------------------------------------------------
# log encoders (section 8.2) and three_region (section 8.3)
# --------------------------------------------------------------------------------------------------

@njit(cache=True, parallel=True)
def _encode_log2_kernel(a, frac_bits, qmax, zero, q):
    n = a.shape[0]
    for i in prange(n):
        av = np.int64(a[i])
        if av == 0:
            q[i] = zero
        else:
            v = frac_bits - round_log2_scalar(av)
            v = max(v, 0)
            q[i] = zero if v > qmax else v


def encode_log2(a, frac_bits: int, bits: int) -> np.ndarray:
    """Post-softmax log2 encoder (section 8.2), numba; same results and errors as the reference."""
    F.check_bits(bits)
    a = ref._i64(a)
    if a.size and a.min() < 0:
        raise DatapathError("encode_log2 needs a >= 0")
    q = np.empty(a.size, I64)
    _encode_log2_kernel(np.ascontiguousarray(a).reshape(-1), int(frac_bits), F.log2_qmax(bits),
                        F.log2_zero_code(bits), q)
    return q.reshape(a.shape)


@njit(cache=True, parallel=True)
def _encode_shiftlog2_kernel(x, sh, r, se, sqrt2, qmax, q):
    n = x.shape[0]
    lim = INT62_M1 // r
    big = np.zeros(n, np.int64)
    for i in prange(n):
        u = np.int64(x[i]) + sh
        if abs(u) > lim:
            big[i] = 1
            q[i] = qmax
            continue
        w = round_shift(u * r, se)
        if u <= 0 or w <= 0:
            q[i] = qmax
            continue
        if sqrt2:
            v = 2 * F.LOG_FRAC - round_log_sqrt2_scalar(w)
        else:
            v = F.LOG_FRAC - round_log2_scalar(w)
        q[i] = min(max(v, 0), qmax)
    return big.sum()


def encode_shiftlog2(x, sh: int, r: int, se: int, bits: int, base: str) -> np.ndarray:
    """Shift-Log2 post-GELU encoder (section 8.2), base ``"2"`` or ``"sqrt2"``, numba."""
    F.check_bits(bits)
    ref._check_recip(r, se)
    x = ref._check_input(x, "encode_shiftlog2")
    if abs(int(sh)) >= (1 << 31):
        raise DatapathError("encode_shiftlog2: SH must fit int32")
    _c, _sqf, _h, qmax = F.shiftlog2_params(bits, base)
    q = np.empty(x.size, I64)
    big = _encode_shiftlog2_kernel(np.ascontiguousarray(x).reshape(-1), int(sh), int(r), int(se),
                                   base == "sqrt2", qmax, q)
    if big:
        raise DatapathError("round_shift: |x| must be < 2^62 ((x + SH) * R)")
    return q.reshape(x.shape)


@njit(cache=True, parallel=True)
def _encode_three_region_kernel(x, r, se, bits, m0, m1, q):
    n = x.shape[0]
    lim = INT62_M1 // r
    p = (np.int64(1) << (bits - 2)) - 1
    nmax = (np.int64(1) << (bits - 1)) - 1
    lf = F.LOG_FRAC
    big = np.zeros(n, np.int64)
    for i in prange(n):
        xv = np.int64(x[i])
        if abs(xv) > lim:
            big[i] = 1
            q[i] = 0
            continue
        w = round_shift(xv * r, se)
        if w < 0:                                       # R0, negative
            nn = min(round_shift(-w, lf), nmax)
            if nn == 0:
                q[i] = 0
            else:
                q[i] = ((nn >> (bits - 2)) << (bits - 1)) | (np.int64(1) << (bits - 2)) | (nn & p)
        else:
            n1 = round_shift(w, lf + m0)
            if n1 <= p:                                 # R1, small positive
                q[i] = n1
            else:                                       # R2, large positive
                q[i] = (np.int64(1) << (bits - 1)) | min(round_shift(w, lf + m1), p)
    return big.sum()


def encode_three_region(x, r: int, se: int, bits: int, m0: int, m1: int) -> np.ndarray:
    """Three-region (MPTQ-ViT OPT-m) post-GELU encoder (section 8.3), numba."""
    F.check_bits(bits)
    ref._check_recip(r, se)
    ref._check_m(m0, m1)
    x = ref._check_input(x, "encode_three_region")
    q = np.empty(x.size, I64)
    big = _encode_three_region_kernel(np.ascontiguousarray(x).reshape(-1), int(r), int(se), int(bits),
                                      int(m0), int(m1), q)
    if big:
        raise DatapathError("round_shift: |x| must be < 2^62 (x * R)")
    return q.reshape(x.shape)


# --------------------------------------------------------------------------------------------------
# host -> fixed point (section 1)
# --------------------------------------------------------------------------------------------------

@njit(cache=True)
def _to_fixed_range(x, scale, lo, hi, out, i0, i1):
    """``_to_fixed_kernel`` on ``x[i0:i1]``; returns ``(saturations, non_finite)``."""
    s = 0
    nb = 0
    for i in range(i0, i1):
        xv = np.float64(x[i])
        if not np.isfinite(xv):
            nb += 1
            out[i] = 0
            continue
        f = np.floor(xv * scale + 0.5)
        s += (f < lo) | (f > hi)
        out[i] = np.int64(min(max(f, lo), hi))
    return s, nb


@njit(cache=True, parallel=True)
def _to_fixed_kernel(x, scale, lo, hi, out):
    """``out = saturate(floor(float64(x) * 2^F + 0.5), lo, hi)`` on a flat array; returns
    ``(saturations, non_finite)``."""
    n = x.shape[0]
    nch = min(n, 256)
    sats = np.zeros(nch, np.int64)
    bad = np.zeros(nch, np.int64)
    for ch in prange(nch):
        s, nb = _to_fixed_range(x, scale, lo, hi, out, ch * n // nch, (ch + 1) * n // nch)
        sats[ch] = s
        bad[ch] = nb
    return sats.sum(), bad.sum()


def to_fixed(x, frac_bits: int, bits: int = 32, out_dtype=I64):
    """Host float -> signed fixed point (section 1), numba; ``(x_fx, saturations)`` like the reference.

    ``x_fx`` has ``x``'s shape and ``out_dtype`` (int64, or int32 when ``bits <= 32``); non-finite inputs
    raise ``DatapathError``. The float64 product by ``2^F`` is exact, so the result is the reference's.
    """
    a = np.asarray(x)
    if a.dtype not in (np.float32, np.float64):
        a = a.astype(np.float64)
    if np.dtype(out_dtype) == np.int32 and bits > 32:
        raise ValueError("to_fixed: an int32 result needs bits <= 32")
    flat = np.ascontiguousarray(a).reshape(-1)
    out = np.empty(flat.size, out_dtype)
    lo, hi = float(-(1 << (bits - 1))), float((1 << (bits - 1)) - 1)
    nsat, nbad = _to_fixed_kernel(flat, 2.0 ** frac_bits, lo, hi, out)
    if nbad:
        raise DatapathError("to_fixed: input contains NaN or infinity")
    return out.reshape(a.shape), int(nsat)
