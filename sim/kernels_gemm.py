"""numba kernels of the GEMM, zero-point correction and sparse outlier path (docs/datapath.md, 5-6).

```
acc_raw[r, c] = sum_k D[r, k] * b[k, c]                    (dense GEMM: BLAS when exact, else int64)
acc_d[r, c]   = acc_raw[r, c] - za[r] * colsum[c]          (zero-point correction at drain)
acc[r, c]     = (acc_d[r, c] << FO) + sum_{(r, j, val)} val * b[j, c]   (outlier SpMM)
```

Exact BLAS path (section 6): ``gemm_path`` decides from ``K``, ``Dmax`` and ``Bmax`` alone. When
``K * Dmax * Bmax < 2^24`` every product and every partial sum of ``D @ b`` (whatever the summation
order, FMA or not) is an integer of magnitude ``< 2^24``, which float32 represents exactly, so a
float32 BLAS matmul returns the exact integers; ``< 2^53`` gives the same for float64. Otherwise the
tiled int64 kernel ``gemm_int64`` is used (int64 cannot wrap there either: ``int64_bound`` is checked).

The drain (``drain_row``) converts the matmul result to int64 and applies the zero-point correction,
the ``<< FO`` and the outliers of its row (CSR by row); ``drain_requant`` fuses it with the
requantiser of ``sim/kernels_requant.py`` so that each output row is touched once.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from . import reference as ref
from .kernels_requant import N_ERR, as_int2d, requantize_row, requantize_row_unchecked, round_half
from .reference import AccumulatorOverflowError, DatapathError

I64 = np.int64

#: Exactness limits of the BLAS path: all partial sums must stay below these (section 6).
FLOAT32_EXACT = 1 << 24
FLOAT64_EXACT = 1 << 53
#: int64 safety limit used by the integer path and the drain (the reference's 2^62 limit).
INT62 = 1 << 62

#: Tile sizes of the int64 GEMM kernel (rows per block, columns per block).
TILE_ROWS = 4
TILE_COLS = 256


def gemm_path(k: int, dmax: int, bmax: int) -> str:
    """Choose how ``acc_raw = D @ b`` is computed exactly (section 6, "Exact BLAS path").

    Parameters
    ----------
    k : int
        Reduction length ``K``.
    dmax, bmax : int
        Largest ``|D|`` of the A operand and largest ``|b|`` of the B operand.

    Returns
    -------
    {"float32", "float64", "int64"}
        ``"float32"`` if ``K * Dmax * Bmax < 2^24``, ``"float64"`` if ``< 2^53`` (every partial sum is
        then exactly representable), else ``"int64"`` (the numba integer kernel).
    """
    worst = int(k) * int(dmax) * int(bmax)         # Python int: no overflow in the bound itself
    if worst < FLOAT32_EXACT:
        return "float32"
    if worst < FLOAT64_EXACT:
        return "float64"
    return "int64"


PATH_DTYPE = {"float32": np.float32, "float64": np.float64, "int64": I64}


def int64_bound(k: int, dmax: int, bmax: int, zmax: int, fo: int, max_outliers_per_row: int) -> int:
    """Upper bound of ``|acc_raw|``, ``|za * colsum|``, ``|acc_d|`` and ``|acc|`` (Python int).

    ``2^FO * K * (Dmax + Zmax) * Bmax + n_out * 2^15 * Bmax``; the kernels require it to be ``< 2^62``
    so that nothing can wrap in int64 (``int64_check``).
    """
    return (1 << fo) * k * (dmax + zmax) * bmax + max_outliers_per_row * (1 << 15) * bmax


def int64_check(k: int, dmax: int, bmax: int, zmax: int, fo: int, max_outliers_per_row: int) -> None:
    """Raise ``AccumulatorOverflowError`` if the int64 kernels could overflow (bound ``>= 2^62``)."""
    bound = int64_bound(k, dmax, bmax, zmax, fo, max_outliers_per_row)
    if bound >= INT62:
        raise AccumulatorOverflowError(
            f"accumulator bound {bound} >= 2^62 (K = {k}, Dmax = {dmax}, Bmax = {bmax}, Zmax = {zmax}, "
            f"FO = {fo}): the integer kernels cannot represent it"
        )


# --------------------------------------------------------------------------------------------------
# B operand preparation and the dense GEMM
# --------------------------------------------------------------------------------------------------

@njit(cache=True, parallel=True)
def prepare_b(b, bmax, out, nchunks=8):
    """Copy ``b`` (any int dtype) into ``out`` (the GEMM operand dtype), compute ``colsum`` and count
    codes outside ``[-bmax, bmax]`` (section 3). Returns ``(colsum, n_invalid)``.

    The rows are split into ``nchunks`` parallel chunks with private column sums."""
    k, n = b.shape
    nch = max(1, min(k, nchunks))
    part = np.zeros((nch, n), np.int64)
    lo = np.zeros(nch, np.int64)
    hi = np.zeros(nch, np.int64)
    for ch in prange(nch):
        k0 = ch * k // nch
        k1 = (ch + 1) * k // nch
        mn = np.int64(0)
        mx = np.int64(0)
        for kk in range(k0, k1):
            for c in range(n):
                v = np.int64(b[kk, c])
                part[ch, c] += v
                out[kk, c] = v
                mn = min(mn, v)
                mx = max(mx, v)
        lo[ch] = mn
        hi[ch] = mx
    cs = np.zeros(n, np.int64)
    for ch in range(nch):
        for c in range(n):
            cs[c] += part[ch, c]
    nbad = 0
    if lo.min() < -bmax or hi.max() > bmax:         # rare: count the invalid codes for the message
        for kk in range(k):
            for c in range(n):
                v = np.int64(b[kk, c])
                nbad += (v < -bmax) | (v > bmax)
    return cs, nbad


@njit(cache=True, parallel=True)
def gemm_int64(d, b):
    """``acc_raw = D @ b`` with int64 accumulation, tiled (``TILE_ROWS`` x ``TILE_COLS``) for cache.

    The caller guarantees ``K * max|D| * max|b| < 2^62`` (``int64_check``), so nothing wraps.
    """
    m, k = d.shape
    n = b.shape[1]
    acc = np.zeros((m, n), np.int64)
    nrb = (m + TILE_ROWS - 1) // TILE_ROWS
    for rb in prange(nrb):
        r0 = rb * TILE_ROWS
        r1 = min(m, r0 + TILE_ROWS)
        for c0 in range(0, n, TILE_COLS):
            c1 = min(n, c0 + TILE_COLS)
            for kk in range(k):
                for r in range(r0, r1):
                    dv = np.int64(d[r, kk])
                    if dv != 0:
                        for c in range(c0, c1):
                            acc[r, c] += dv * np.int64(b[kk, c])
    return acc


def gemm_raw(d_op, b_op, out=None) -> np.ndarray:
    """``D @ b`` on prepared operands: BLAS matmul for float operands, ``gemm_int64`` for int64.

    ``out`` (float paths only) receives the product; the int64 kernel allocates its own result."""
    if d_op.dtype == I64:
        return gemm_int64(d_op, b_op)
    if out is None:
        return d_op @ b_op
    return np.matmul(d_op, b_op, out=out)


# --------------------------------------------------------------------------------------------------
# Drain: zero-point correction, << FO, outlier SpMM (and the fused requantiser)
# --------------------------------------------------------------------------------------------------

@njit(cache=True)
def drain_row(raw_row, zr, colsum, scale, optr0, optr1, ocol, oval, b, acc_row):
    """``acc_row = (int(raw_row) - zr * colsum) * 2^FO + sum of the row's outliers``."""
    n = acc_row.shape[0]
    for c in range(n):
        acc_row[c] = (np.int64(raw_row[c]) - zr * colsum[c]) * scale
    for j in range(optr0, optr1):
        col = ocol[j]
        val = oval[j]
        for c in range(n):
            acc_row[c] += val * np.int64(b[col, c])


@njit(cache=True)
def count_outside(acc_row, lim):
    """Number of elements outside the signed range ``[-lim, lim - 1]``."""
    nb = 0
    for c in range(acc_row.shape[0]):
        a = acc_row[c]
        nb += (a < -lim) | (a > lim - 1)
    return nb


@njit(cache=True, parallel=True)
def drain(raw, za, colsum, fo, optr, ocol, oval, b, lim, acc_d, acc):
    """Zero-point correction and outliers for a whole matrix; returns the count of ``acc`` values
    outside ``[-lim, lim - 1]``. ``acc_d`` receives the correction alone (no shift, no outliers)."""
    m, n = raw.shape
    bad = np.zeros(m, np.int64)
    scale = np.int64(1) << fo
    for r in prange(m):
        drain_row(raw[r], za[r], colsum, np.int64(1), 0, 0, ocol, oval, b, acc_d[r])
        drain_row(raw[r], za[r], colsum, scale, optr[r], optr[r + 1], ocol, oval, b, acc[r])
        bad[r] = count_outside(acc[r], lim)
    return bad.sum()


@njit(cache=True, parallel=True)
def drain_requant(raw, za, colsum, fo, optr, ocol, oval, b, lim, do_requant, checked,
                  mr, sr, mc, sc, bq, z_out, lo, hi, acc, out):
    """Fused drain + two-stage requantiser, one pass per output row.

    Returns ``(n_acc_outside, saturations, errs)``: the number of ``acc`` values outside the signed
    ``acc_bits`` range ``[-lim, lim - 1]``, the output saturation count and the requantiser's range
    fault counters (``kernels_requant.ERR_*``). With ``do_requant`` false only ``acc`` is computed.
    ``checked`` false skips the requantiser's range-fault counters: the caller must have proven them
    unreachable (``requant_needs_checks``).
    """
    m, n = raw.shape
    bad = np.zeros(m, np.int64)
    sats = np.zeros(m, np.int64)
    errs = np.zeros((m, N_ERR), np.int64)
    sc_half = np.empty(n, np.int64)
    for c in range(n):
        sc_half[c] = round_half(sc[c])
    scale = np.int64(1) << fo
    for r in prange(m):
        drain_row(raw[r], za[r], colsum, scale, optr[r], optr[r + 1], ocol, oval, b, acc[r])
        nb = count_outside(acc[r], lim)
        bad[r] = nb
        if do_requant and nb == 0:
            if checked:
                sats[r] = requantize_row(acc[r], mr[r], sr, mc, sc_half, sc, bq, z_out, lo, hi, out[r], errs[r])
            else:
                sats[r] = requantize_row_unchecked(acc[r], mr[r], sr, mc, sc_half, sc, bq, z_out, lo, hi, out[r])
    return bad.sum(), sats.sum(), errs.sum(axis=0)


@njit(cache=True)
def _requant_store_row(arow, lim, mr, sr, mc, sc_half, sc, bq, z_out, lo, hi, host_scale, out_row):
    """Range check of ``acc`` against ``[-lim, lim - 1]`` fused with the unchecked requantiser
    (``requantize_row_unchecked``) and the store: integers, or ``from_fixed`` float32
    (``float32(float64(v) * host_scale)``, section 1) when ``host_scale`` is non-zero.
    Returns ``(n_outside, saturations)``; the caller discards the row's results if ``n_outside``."""
    n = arow.shape[0]
    rh = round_half(sr)
    nb = 0
    sat = 0
    if host_scale != 0.0:
        for c in range(n):
            a = arow[c]
            nb += (a < -lim) | (a > lim - 1)
            t = (a * mr + rh) >> sr
            v = ((t * mc[c] + bq[c] + sc_half[c]) >> sc[c]) + z_out
            w = min(max(v, lo), hi)
            sat += w != v
            out_row[c] = np.float32(np.float64(w) * host_scale)
    else:
        for c in range(n):
            a = arow[c]
            nb += (a < -lim) | (a > lim - 1)
            t = (a * mr + rh) >> sr
            v = ((t * mc[c] + bq[c] + sc_half[c]) >> sc[c]) + z_out
            w = min(max(v, lo), hi)
            sat += w != v
            out_row[c] = w
    return nb, sat


@njit(cache=True)
def _fused_rows(raw_g, za_g, colsum_row, mr_g, optr, base, r_lo, r_hi, ocol, oval, b_g, scale, sr, mc, sc_half, sc,
                bq, z_out, lo, hi, host_scale, out_g):
    """Rows ``r_lo .. r_hi - 1`` of one group in one loop nest (one digit plane, ``acc`` not kept):
    zero-point correction, ``<< FO``, the row's outliers (``optr[base + r] .. optr[base + r + 1]``
    into ``ocol`` / ``oval``, products with ``b_g``, collected in a correction vector first), unchecked
    requantiser, store. No accumulator range check: the caller has proven the static bound of
    section 6 for every row (``proven`` of ``drain_requant_groups``; the check cost a fifth of the
    loop). One call per run of rows rather than per row: the call and its array views cost as much
    as the arithmetic of a 197-column row. Returns the number of saturated outputs."""
    n = out_g.shape[1]
    rh = round_half(sr)
    bqs = np.empty(n, np.int64)
    for c in range(n):
        bqs[c] = bq[c] + sc_half[c]
    corr = np.zeros(n, np.int64)
    dirty = False
    sat = 0
    for r in range(r_lo, r_hi):
        if dirty:
            corr[:] = 0
            dirty = False
        for j in range(optr[base + r], optr[base + r + 1]):
            val = oval[j]
            brow = b_g[ocol[j]]
            for c in range(n):
                corr[c] += val * np.int64(brow[c])
            dirty = True
        r0 = raw_g[r]
        zr = za_g[r]
        mr = mr_g[r]
        out_row = out_g[r]
        # two copies of the loop on purpose: with the store's branch inside one loop numba's LLVM
        # does not unswitch it and the drain of q@k^T took 6.4 instead of 4.4 ms
        if host_scale != 0.0:
            for c in range(n):
                a = (np.int64(r0[c]) - zr * colsum_row[c]) * scale + corr[c]
                t = (a * mr + rh) >> sr
                v = ((t * mc[c] + bqs[c]) >> sc[c]) + z_out
                w = min(max(v, lo), hi)
                sat += w != v
                out_row[c] = np.float32(np.float64(w) * host_scale)
        else:
            for c in range(n):
                a = (np.int64(r0[c]) - zr * colsum_row[c]) * scale + corr[c]
                t = (a * mr + rh) >> sr
                v = ((t * mc[c] + bqs[c]) >> sc[c]) + z_out
                w = min(max(v, lo), hi)
                sat += w != v
                out_row[c] = w
    return sat


@njit(cache=True)
def _store_row(v, out_row, host_scale):
    """``out_row = v`` (integers), or ``from_fixed`` float32 when ``host_scale`` (``2^-F``) is non-zero."""
    if host_scale != 0.0:
        for c in range(v.shape[0]):
            out_row[c] = np.float32(np.float64(v[c]) * host_scale)
    else:
        for c in range(v.shape[0]):
            out_row[c] = v[c]


@njit(cache=True)
def _combine_row(raw, g, r, zr, colsum_row, scale, arow):
    """``arow = (sum_i raw[g, i, r] << 8i - zr * colsum) * 2^FO`` (digit planes of the int8 path)."""
    nd = raw.shape[1]
    n = arow.shape[0]
    r0 = raw[g, 0, r]
    if nd == 1:
        for c in range(n):
            arow[c] = (np.int64(r0[c]) - zr * colsum_row[c]) * scale
    else:
        r1 = raw[g, 1, r]
        for c in range(n):
            arow[c] = np.int64(r0[c]) + (np.int64(r1[c]) << 8) - zr * colsum_row[c]
        for i in range(2, nd):
            ri = raw[g, i, r]
            for c in range(n):
                arow[c] += np.int64(ri[c]) << (8 * i)
        for c in range(n):
            arow[c] *= scale


@njit(cache=True, parallel=True)
def drain_requant_groups(raw, za, colsum, fo, optr, ocol, oval, b, lim, proven, do_requant, checked,
                         mr, sr, mc, sc, bq, z_out, lo, hi, host_scale, want_acc, acc, out):
    """``drain_requant`` for ``G`` groups of ``M`` rows and a digit axis (the batched layer API).

    ``raw`` is ``(G, n, M, N)``: ``n`` digit-plane products of the int8 path (int32, combined as
    ``sum_i raw[g, i] << 8i``) or ``n = 1`` for the float / int64 paths; ``za`` and ``mr`` are ``(G, M)``
    (``za`` already minus the digit centre ``O``); ``colsum`` ``(Gb, N)`` and ``b`` ``(Gb, K, N)`` with
    ``Gb`` 1 (shared B) or ``G``; ``optr`` the CSR row pointers of the outliers over the ``G * M``
    stacked rows. Per row: ``acc = (raw - za * colsum) << FO + outliers``, range check against
    ``[-lim, lim - 1]`` (skipped when ``proven``: the caller has established the static accumulator
    bound of section 6 for every row -- operand code ranges, zero points, outlier capacity -- so no
    ``acc`` can leave the range), then the two-stage requantiser into ``out`` (``(G, M, N)``, any integer dtype, or
    float32 with ``host_scale = 2^-F``: ``from_fixed``). ``acc`` is stored only if ``want_acc``.
    ``checked`` selects the requantiser with range-fault counters (``acc_bits > 46``).
    Returns ``(n_acc_outside, saturations, errs)`` as ``drain_requant``; when ``n_acc_outside`` is
    non-zero the outputs are not meaningful (the caller raises).
    """
    g_n, nd, m, n = raw.shape
    gb = colsum.shape[0]
    rows = g_n * m
    nch = min(rows, 256)
    bad = np.zeros(nch, np.int64)
    sats = np.zeros(nch, np.int64)
    errs = np.zeros((nch, N_ERR), np.int64)
    sc_half = np.empty(n, np.int64)
    for c in range(n):
        sc_half[c] = round_half(sc[c])
    scale = np.int64(1) << fo
    fused = proven and nd == 1 and do_requant and not checked and not want_acc
    for ch in prange(nch):
        arow = np.empty(n, np.int64)
        vrow = np.empty(n, np.int64)
        lo_gr, hi_gr = ch * rows // nch, (ch + 1) * rows // nch
        if fused:
            # the chunk's rows of each group in one call
            gr = lo_gr
            while gr < hi_gr:
                g = gr // m
                bg = g if gb > 1 else 0
                seg = min(hi_gr, (g + 1) * m)
                sats[ch] += _fused_rows(raw[g, 0], za[g], colsum[bg], mr[g], optr, g * m, gr - g * m, seg - g * m,
                                        ocol, oval, b[bg], scale, sr, mc, sc_half, sc, bq, z_out, lo, hi, host_scale,
                                        out[g])
                gr = seg
            continue
        for gr in range(lo_gr, hi_gr):
            g = gr // m
            r = gr - g * m
            bg = g if gb > 1 else 0
            _combine_row(raw, g, r, za[g, r], colsum[bg], scale, arow)
            for j in range(optr[gr], optr[gr + 1]):
                col = ocol[j]
                val = oval[j]
                brow = b[bg, col]
                for c in range(n):
                    arow[c] += val * np.int64(brow[c])
            if want_acc:
                acc_row = acc[g, r]
                for c in range(n):
                    acc_row[c] = arow[c]
            if not do_requant:
                bad[ch] += count_outside(arow, lim)
            elif checked:
                nb = count_outside(arow, lim)
                bad[ch] += nb
                if nb == 0:
                    sats[ch] += requantize_row(arow, mr[g, r], sr, mc, sc_half, sc, bq, z_out, lo, hi, vrow, errs[ch])
                    _store_row(vrow, out[g, r], host_scale)
            else:
                nb, st = _requant_store_row(arow, lim, mr[g, r], sr, mc, sc_half, sc, bq, z_out, lo, hi,
                                            host_scale, out[g, r])
                bad[ch] += nb
                sats[ch] += st
    return bad.sum(), sats.sum(), errs.sum(axis=0)


@njit(cache=True, parallel=True)
def prepare_b_groups(b, bmax, out, colsum):
    """``prepare_b`` for ``(Gb, K, N)`` B operands: copy into ``out`` (the GEMM operand dtype), column
    sums into ``colsum`` ``(Gb, N)``; returns the number of codes outside ``[-bmax, bmax]``."""
    gb, k, n = b.shape
    nbad = np.zeros(gb, np.int64)
    for g in prange(gb):
        for c in range(n):
            colsum[g, c] = 0
        nb = 0
        for kk in range(k):
            for c in range(n):
                v = np.int64(b[g, kk, c])
                colsum[g, c] += v
                out[g, kk, c] = v
                nb += (v < -bmax) | (v > bmax)
        nbad[g] = nb
    return nbad.sum()


@njit(cache=True, parallel=True)
def scan_outliers_groups(o, g_n, m, k, tile_rows):
    """``scan_outliers`` for a grouped list ``(n, 4)`` of ``[group, row, col, val]`` sorted by group, row,
    column: validity, CSR pointers over the ``G * M`` stacked rows, and the largest count in any tile of
    ``tile_rows`` rows *of one group* (tiles start at row 0 of every group, as for one image).
    Returns ``(ok, optr, max_tile_count)``."""
    n = o.shape[0]
    optr = np.zeros(g_n * m + 1, np.int64)
    ok = True
    prev = np.int64(-1)
    for i in range(n):
        g = o[i, 0]
        r = o[i, 1]
        c = o[i, 2]
        v = o[i, 3]
        if g < 0 or g >= g_n or r < 0 or r >= m or c < 0 or c >= k or v < -32768 or v > 32767:
            ok = False
            break
        key = (g * m + r) * k + c
        if key <= prev:
            ok = False
            break
        prev = key
        optr[g * m + r + 1] += 1
    max_tile = 0
    if ok:
        for gr in range(g_n * m):
            optr[gr + 1] += optr[gr]
        t_count = 0
        t_cur = np.int64(-1)
        for i in range(n):
            t = o[i, 0] * m + (o[i, 1] // tile_rows) * tile_rows       # first stacked row of the tile
            if t != t_cur:
                t_cur = t
                t_count = 0
            t_count += 1
            max_tile = max(max_tile, t_count)
    return ok, optr, max_tile


def requant_needs_checks(acc_bits: int) -> bool:
    """Whether the requantiser's 2^62 range checks can fire once ``|acc| < 2^(acc_bits-1)`` is known.

    With ``Mr, Mc < 2^16`` and ``|Bq| < 2^47``: ``|acc * Mr| < 2^(acc_bits+15)`` and
    ``|t * Mc + Bq| < 2^(acc_bits+15) + 2^47``, both ``<= 2^62`` for ``acc_bits <= 46``.
    """
    return acc_bits > 46


@njit(cache=True)
def scan_outliers(o, m, k, tile_rows):
    """One pass over an ``(n, 3)`` outlier list: validity (the conditions of ``reference.check_outliers``:
    indices in range, values in int16, sorted by row then column without duplicates), CSR row pointers
    and the largest per-tile count (section 5). Returns ``(ok, optr, max_tile_count)``."""
    n = o.shape[0]
    optr = np.zeros(m + 1, np.int64)
    ok = True
    prev = np.int64(-1)
    for i in range(n):
        r = o[i, 0]
        c = o[i, 1]
        v = o[i, 2]
        if r < 0 or r >= m or c < 0 or c >= k or v < -32768 or v > 32767:
            ok = False
            break
        key = r * k + c
        if key <= prev:
            ok = False
            break
        prev = key
        optr[r + 1] += 1
    max_tile = 0
    if ok:
        t_count = 0
        t_cur = np.int64(-1)
        for r in range(m):
            optr[r + 1] += optr[r]
        for i in range(n):
            t = o[i, 0] // tile_rows
            if t != t_cur:
                t_cur = t
                t_count = 0
            t_count += 1
            max_tile = max(max_tile, t_count)
    return ok, optr, max_tile


def outlier_csr(o: np.ndarray, m: int):
    """Row pointers, columns and values of a validated, row-sorted outlier list ``(n, 3)``."""
    if len(o) == 0:
        return np.zeros(m + 1, I64), np.zeros(0, I64), np.zeros(0, I64)
    counts = np.bincount(o[:, 0], minlength=m)
    optr = np.zeros(m + 1, I64)
    np.cumsum(counts, out=optr[1:])
    return optr, np.ascontiguousarray(o[:, 1]), np.ascontiguousarray(o[:, 2])




def _absmax(a) -> int:
    return int(max(abs(int(a.max())), abs(int(a.min())))) if a.size else 0


def accumulate(d, b, za, fo: int = 0, outliers=None, acc_bits: int | None = None, path: str | None = None):
    """The GEMM of section 6 (kernel level), numba; same results as ``reference.accumulate``.

    Parameters
    ----------
    d : (M, K) int array, decoded A operand ``D``.
    b : (K, N) int array, B operand.
    za : int or (M,) int array, A zero point per row.
    fo : int, outlier fraction bits.
    outliers : (n, 3) int array or None, sorted ``[row, col, val]``.
    acc_bits : int or None
        If given, raise ``AccumulatorOverflowError`` when an ``acc`` value lies outside the signed
        ``acc_bits``-bit range (checked on the actual values; no static bound is consulted here).
    path : {None, "float32", "float64", "int64"}
        Force a GEMM path. ``None`` chooses with ``gemm_path`` (actual ``max|D|``, ``max|b|``); forcing a
        float path that the bound does not allow raises ``ValueError``.

    Returns
    -------
    acc_raw, acc_d, acc : (M, N) int64
    """
    d, b = as_int2d(d, "accumulate: D"), as_int2d(b, "accumulate: B")
    if d.shape[1] != b.shape[0]:
        raise DatapathError(f"accumulate: shapes {d.shape} and {b.shape} do not chain")
    m, k = d.shape
    n = b.shape[1]
    za = np.asarray(za)
    za = ref._i64(za).reshape(-1)
    za = np.full(m, za[0], I64) if za.size == 1 and m != 1 else np.ascontiguousarray(za.reshape(m))
    o = ref.check_outliers(outliers if outliers is not None else np.zeros((0, 3), I64), m, k)
    dmax, bmax, zmax = _absmax(d), _absmax(b), _absmax(za)
    per_row = int(np.bincount(o[:, 0], minlength=1).max()) if len(o) else 0
    int64_check(k, dmax, bmax, zmax, fo, per_row)
    auto = gemm_path(k, dmax, bmax)
    if path is None:
        path = auto
    elif path not in PATH_DTYPE:
        raise ValueError(f"unknown GEMM path {path!r}; expected one of {tuple(PATH_DTYPE)}")
    elif path != "int64" and ["float32", "float64", "int64"].index(path) < ["float32", "float64", "int64"].index(auto):
        raise ValueError(f"the {path} BLAS path is not exact for K={k}, Dmax={dmax}, Bmax={bmax} (section 6)")
    dt = PATH_DTYPE[path]
    b_op = np.empty((k, n), dt)
    colsum, _ = prepare_b(b, bmax, b_op)
    raw = gemm_raw(d.astype(dt), b_op)
    optr, ocol, oval = outlier_csr(o, m)
    lim = INT62 if acc_bits is None else 1 << (int(acc_bits) - 1)
    acc_d = np.empty((m, n), I64)
    acc = np.empty((m, n), I64)
    nbad = drain(np.ascontiguousarray(raw), za, colsum, int(fo), optr, ocol, oval, b, lim, acc_d, acc)
    if nbad:
        raise AccumulatorOverflowError(
            f"{nbad} accumulator value(s) outside the signed {acc_bits}-bit range (section 6)")
    acc_raw = raw if raw.dtype == I64 else raw.astype(I64)
    return acc_raw, acc_d, acc
