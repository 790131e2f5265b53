"""Fused host-boundary encoders: float32 host tensor -> codes in one pass (docs/datapath.md 1, 5, 8).

The batched runner encodes large activations (all images of a batch); there the separate steps
``to_fixed`` (section 1), a copy to int64 and the encoder (section 8) each cost a pass over memory.
These kernels read the float input once and write ``uint8`` codes, computing per element exactly the
reference's integers:

* ``x_fx = saturate(floor(float64(x) * 2^F + 0.5), -2^31, 2^31 - 1)`` (saturations and non-finite
  values are counted);
* ``uniform`` / per-patch / dynamic per-patch (sections 8.1, 8.1.1, with outlier extraction);
* ``log2`` and ``shiftlog2`` through **threshold tables**: their code is a monotone step function of
  the integer input (``round_log2`` and ``round_log_sqrt2`` are non-decreasing), so
  ``q = QMAX - #{j : w >= W[j]}`` with ``W[j]`` the smallest input whose code is at most ``QMAX - j``.
  The tables are found once per encoder by bisection on the spec's own scalar functions
  (``kernels_encode.round_log2_scalar`` / ``round_log_sqrt2_scalar``) and then checked at every step
  (``log_code_table``); the count is branch-free and vectorises;
* ``three_region`` with the scalar rule of section 8.3.

Ranges: the input of every encoder is int32 after ``to_fixed`` (the caller uses these kernels only
with ``in_bits <= 32``) and ``R < 2^24``, so ``x * R`` and ``(x + SH) * R`` stay below ``2^57``: no
int64 product can wrap and the reference's ``2^62`` checks cannot fire. Anything the reference would
reject (non-finite input, an int16 outlier overflow in strict mode, a negative softmax input) is
counted and reported to the caller, which then takes the unfused path to raise the reference's error.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from . import formats as F
from .kernels_encode import round_log2_scalar, round_log_sqrt2_scalar
from .kernels_requant import round_shift

I64 = np.int64
INT31 = float(1 << 31)


@njit(cache=True, inline="always")
def _fx(xv, scale):
    """``to_fixed`` of one value with 32 bits: ``(value, saturated, non_finite)`` (branch-free)."""
    fin = np.isfinite(xv)
    f = np.floor(np.float64(xv) * scale + 0.5)
    f = f if fin else 0.0
    g = min(max(f, -INT31), INT31 - 1.0)
    return np.int64(g), g != f, not fin


# --------------------------------------------------------------------------------------------------
# uniform / per-patch / dynamic per-patch (sections 8.1, 8.1.1) and outliers (section 5)
# --------------------------------------------------------------------------------------------------

@njit(cache=True)
def _row_params(x, gr, scale, m_rows, r, z, se, qhi, alpha, use_alpha, dynamic, ladder_r, ladder_t):
    """Reciprocal and zero point of row ``gr``: static (``r[gr % M]``, ``z[gr % M]``) or dynamic
    (inlier range, ladder index ``j`` and ``z`` of section 8.1.1). Returns ``(r, z, j)``."""
    if not dynamic:
        i = gr % m_rows if r.shape[0] > 1 else 0
        iz = gr % m_rows if z.shape[0] > 1 else 0
        return r[i], z[iz], np.int64(0)
    lo_i = np.int64(0)
    hi_i = np.int64(0)
    for c in range(x.shape[1]):
        v, _s, _b = _fx(x[gr, c], scale)
        if use_alpha and abs(v) > alpha:
            continue
        lo_i = min(lo_i, v)
        hi_i = max(hi_i, v)
    sp = hi_i - lo_i
    n_cover = 0
    for jj in range(ladder_t.shape[0]):
        n_cover += ladder_t[jj] >= sp
    ji = max(n_cover - 1, 0)
    ri = ladder_r[ji]
    zi = min(max(round_shift(-lo_i * ri, se), 0), qhi)
    return ri, zi, np.int64(ji)


@njit(cache=True, parallel=True)
def fused_uniform(x, scale, m_rows, r, z, se, qhi, alpha, use_alpha, dynamic, ladder_r, ladder_t,
                  q, n_out, j_row, z_row, r_row):
    """``to_fixed`` + uniform / per-patch encoder of ``x`` ``(R, K)`` float into ``q`` (uint8).

    Per row: its ``R``/``z`` (``_row_params``), then per element ``q = saturate(round_shift(x * R, SE)
    + z, 0, qhi)``, or ``z`` and an outlier count when ``use_alpha`` and ``|x| > alpha``.
    ``j_row``/``z_row``/``r_row`` receive each row's ladder index, zero point and reciprocal.
    Returns ``(host_saturations, non_finite, code_saturations)``.
    """
    rows, k = x.shape
    nch = min(rows, 256)
    hs = np.zeros(nch, np.int64)
    nf = np.zeros(nch, np.int64)
    cs = np.zeros(nch, np.int64)
    rh = np.int64(1) << (se - 1) if se > 0 else np.int64(0)
    for ch in prange(nch):
        for gr in range(ch * rows // nch, (ch + 1) * rows // nch):
            ri, zi, ji = _row_params(x, gr, scale, m_rows, r, z, se, qhi, alpha, use_alpha, dynamic,
                                     ladder_r, ladder_t)
            j_row[gr] = ji
            z_row[gr] = zi
            r_row[gr] = ri
            no = 0
            for c in range(k):
                v, s, b = _fx(x[gr, c], scale)
                hs[ch] += s
                nf[ch] += b
                if use_alpha and abs(v) > alpha:
                    no += 1
                    q[gr, c] = zi
                else:
                    t = ((v * ri + rh) >> se) + zi
                    w = min(max(t, 0), qhi)
                    cs[ch] += w != t
                    q[gr, c] = w
            n_out[gr] = no
    return hs.sum(), nf.sum(), cs.sum()


@njit(cache=True, parallel=True)
def fused_outliers(x, scale, r_row, se_fo, alpha, optr, rows, cols, vals):
    """Sorted outlier list of the rows with outliers (``optr`` from the per-row counts): value
    ``saturate(round_shift(x_fx * R[r], SE - FO), -2^15, 2^15 - 1)`` (section 5). Returns the number of
    int16 overflows."""
    m = x.shape[0]
    k = x.shape[1]
    nof = np.zeros(m, np.int64)
    for i in prange(m):
        pos = optr[i]
        if optr[i + 1] == pos:
            continue
        ri = r_row[i]
        for j in range(k):
            v, _s, _b = _fx(x[i, j], scale)
            if abs(v) > alpha:
                w = round_shift(v * ri, se_fo)
                if w < -32768 or w > 32767:
                    nof[i] += 1
                    w = min(max(w, -32768), 32767)
                rows[pos] = i
                cols[pos] = j
                vals[pos] = w
                pos += 1
    return nof.sum()


# --------------------------------------------------------------------------------------------------
# log2 / shiftlog2 through threshold tables (section 8.2), three_region (section 8.3)
# --------------------------------------------------------------------------------------------------

@njit(cache=True, inline="always")
def _count_at_most(v, thr, steps):
    """``#{j : v >= thr[j]}`` for a sorted table padded to ``2^steps`` entries (``steps`` 1..6;
    branch-free bisection, unrolled)."""
    idx = 0
    if steps >= 6:
        idx += 32 if v >= thr[idx + 31] else 0
    if steps >= 5:
        idx += 16 if v >= thr[idx + 15] else 0
    if steps >= 4:
        idx += 8 if v >= thr[idx + 7] else 0
    if steps >= 3:
        idx += 4 if v >= thr[idx + 3] else 0
    if steps >= 2:
        idx += 2 if v >= thr[idx + 1] else 0
    idx += 1 if v >= thr[idx] else 0
    return idx


@njit(cache=True, parallel=True)
def fused_log_table(x, scale, sh, r, se, pre_zero, zero_thr, zero_code, qmax, thr, steps, q):
    """``to_fixed``, then ``w = round_shift((x_fx + sh) * r, se)`` (``r = 1, se = 0, sh = 0`` for log2:
    ``w = x_fx``) and ``q = qmax - #{j : w >= thr[j]}`` (``thr`` padded with ``2^62`` to ``2^steps``
    entries); with ``pre_zero`` (log2) ``w < zero_thr`` gives ``zero_code``. Returns
    ``(host_saturations, non_finite, negative_inputs)`` (a negative ``x_fx`` is an error of ``encode_log2``)."""
    n = x.shape[0]
    nch = min(n, 256)
    hs = np.zeros(nch, np.int64)
    nf = np.zeros(nch, np.int64)
    neg = np.zeros(nch, np.int64)
    rh = np.int64(1) << (se - 1) if se > 0 else np.int64(0)
    for ch in prange(nch):
        for i in range(ch * n // nch, (ch + 1) * n // nch):
            v, s, b = _fx(x[i], scale)
            hs[ch] += s
            nf[ch] += b
            if pre_zero:
                neg[ch] += v < 0
                cnt = _count_at_most(v, thr, steps)
                q[i] = zero_code if v < zero_thr else qmax - cnt
            else:
                w = ((v + sh) * r + rh) >> se
                q[i] = qmax - _count_at_most(w, thr, steps)
    return hs.sum(), nf.sum(), neg.sum()


def padded_table(thr: np.ndarray) -> tuple[np.ndarray, int]:
    """``thr`` padded with ``2^62`` to a power-of-two length ``2^steps``; returns ``(table, steps)``."""
    steps = max(1, int(np.ceil(np.log2(max(len(thr), 1) + 1))))
    if steps > 6:
        raise ValueError("threshold tables hold at most 63 entries")
    out = np.full(1 << steps, 1 << 62, I64)
    out[:len(thr)] = thr
    return out, steps


@njit(cache=True, parallel=True)
def fused_three_region(x, scale, r, se, bits, m0, m1, q):
    """``to_fixed`` + ``encode_three_region`` (section 8.3). Returns ``(host_saturations, non_finite)``."""
    n = x.shape[0]
    nch = min(n, 256)
    hs = np.zeros(nch, np.int64)
    nf = np.zeros(nch, np.int64)
    p = (np.int64(1) << (bits - 2)) - 1
    nmax = (np.int64(1) << (bits - 1)) - 1
    lf = F.LOG_FRAC
    for ch in prange(nch):
        for i in range(ch * n // nch, (ch + 1) * n // nch):
            v, s, b = _fx(x[i], scale)
            hs[ch] += s
            nf[ch] += b
            w = round_shift(v * r, se)
            if w < 0:
                nn = min(round_shift(-w, lf), nmax)
                q[i] = 0 if nn == 0 else ((nn >> (bits - 2)) << (bits - 1)) | (np.int64(1) << (bits - 2)) | (nn & p)
            else:
                n1 = round_shift(w, lf + m0)
                q[i] = n1 if n1 <= p else (np.int64(1) << (bits - 1)) | min(round_shift(w, lf + m1), p)
    return hs.sum(), nf.sum()


def _first_at_most(g, level: int, lo: int = 1, hi: int = 1 << 62) -> int:
    """Smallest ``w`` in ``[lo, hi)`` with ``g(w) <= level`` for non-increasing ``g`` (``hi`` if none)."""
    if g(hi - 1) > level:
        return hi
    while lo < hi:
        mid = (lo + hi) // 2
        if g(mid) <= level:
            hi = mid
        else:
            lo = mid + 1
    return lo


_TABLES: dict = {}


def log_code_table(kind: str, bits: int, base: str = "2", frac_bits: int = F.SOFTMAX_FRAC) -> np.ndarray:
    """Threshold table of a log encoder (section 8.2), checked against the scalar rule at every step.

    ``shiftlog2``: ``W[j - 1] = min{w >= 1 : C - round_log(w) <= QMAX - j}``, ``j = 1..QMAX`` (``C = 16``
    base 2 with ``round_log2``, ``C = 32`` base sqrt 2 with ``round_log_sqrt2``); the code of ``w`` is
    ``QMAX - #{j : w >= W[j]}`` (``w <= 0`` gives ``QMAX``). ``log2``: ``thr[0] = min{a >= 1 :
    F - round_log2(a) <= QMAX}`` (below it: ZERO), ``thr[j] = min{a : F - round_log2(a) <= QMAX - j}``.
    """
    key = (kind, bits, base, frac_bits)
    hit = _TABLES.get(key)
    if hit is not None:
        return hit
    if kind == "shiftlog2":
        qmax = F.shiftlog2_qmax(bits, base)
        c, rl = (2 * F.LOG_FRAC, round_log_sqrt2_scalar) if base == "sqrt2" else (F.LOG_FRAC, round_log2_scalar)
        g = lambda w: c - int(rl(np.int64(w)))
        thr = [_first_at_most(g, qmax - j) for j in range(1, qmax + 1)]
        code = lambda w: qmax if w <= 0 else min(max(c - int(rl(np.int64(w))), 0), qmax)
        table_code = lambda w: qmax - sum(w >= t for t in thr)
    elif kind == "log2":
        qmax, zero = F.log2_qmax(bits), F.log2_zero_code(bits)
        g = lambda a: frac_bits - int(round_log2_scalar(np.int64(a)))
        thr = [_first_at_most(g, qmax - j) for j in range(0, qmax + 1)]

        def code(a):
            if a == 0:
                return zero
            v = max(frac_bits - int(round_log2_scalar(np.int64(a))), 0)
            return zero if v > qmax else v

        table_code = lambda a: zero if a < thr[0] else qmax - sum(a >= t for t in thr[1:])
    else:
        raise ValueError(f"no threshold table for {kind!r}")
    probes = {0, 1, 2, (1 << 62) - 1}
    for t in thr:
        probes.update(v for v in (t - 1, t, t + 1) if 0 <= v < (1 << 62))
    for w in sorted(probes):
        if code(w) != table_code(w):                   # pragma: no cover - a broken table is a bug
            raise AssertionError(f"{kind} threshold table disagrees with the scalar rule at {w}")
    hit = _TABLES[key] = np.array(thr, I64)
    return hit
