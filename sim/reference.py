"""Plain numpy reference of the vitaccel integer datapath: docs/datapath.md as code.

One function per spec operation, written for clarity, not speed. Every function works on integer numpy
arrays (``int64``) and returns integers; bounds that protect ``int64`` from overflow are checked, never
assumed. The numba kernels (``sim/kernels_*.py``), the RTL (``hw/``) and the testbenches (``tb/``) are
all checked against these functions.

Section numbers in docstrings refer to docs/datapath.md.
"""
from __future__ import annotations

import numpy as np

from . import formats as F
from .errors import UserError

I64 = np.int64


class DatapathError(UserError, ValueError):
    """An input violates the datapath spec (bad code, width, shape or range); a :class:`UserError`
    because a program or golden file a user passes can cause it."""


class AccumulatorOverflowError(DatapathError):
    """The configured accumulator is too narrow for the layer (section 6)."""


class OutlierCapacityError(DatapathError):
    """A tile holds more sparse outliers than the outlier unit's capacity (section 5)."""


class OutlierOverflowError(DatapathError):
    """An outlier value does not fit int16 (section 5, strict mode)."""


def _i64(x) -> np.ndarray:
    a = np.asarray(x)
    if a.dtype.kind not in "iub":
        if a.dtype.kind == "f" and np.all(np.isfinite(a)) and np.all(a == np.floor(a)):
            return a.astype(I64)
        raise DatapathError(f"expected integers, got dtype {a.dtype}")
    return a.astype(I64)


# --------------------------------------------------------------------------------------------------
# Section 1: rounding, saturation, host boundaries
# --------------------------------------------------------------------------------------------------

def round_shift(x, s):
    """``round_shift(x, s)``: ``(x + 2^(s-1)) >> s`` for ``s >= 1``, ``x`` for ``s == 0`` (section 1).

    Rounds ``x / 2^s`` to nearest with ties toward +infinity. ``s`` may be an array (broadcast).
    """
    x = _i64(x)
    s = _i64(s)
    if np.any(s < 0) or np.any(s > 62):
        raise DatapathError("round_shift: shift must be in 0..62")
    if np.any(np.abs(x) >= (1 << 62)):
        raise DatapathError("round_shift: |x| must be < 2^62")
    half = np.where(s > 0, np.left_shift(I64(1), np.maximum(s - 1, 0)), 0)
    return np.right_shift(x + half, s)


def round_half_up(x) -> np.ndarray:
    """``round_half_up(v) = floor(v + 0.5)`` of real numbers, as ``int64`` (section 1).

    The front end's rounding of real values to integers (e.g. ``Bq``, ``Zs``, ``SH`` and the integer
    multipliers derived from float scales): the rule of ``round_shift`` on real numbers. ``x`` is taken
    as float64; non-finite values and results outside ``int64`` raise ``DatapathError``.
    """
    v = np.floor(np.asarray(x, dtype=np.float64) + 0.5)
    if not np.all(np.isfinite(v)) or np.any(np.abs(v) >= 2.0 ** 63):
        raise DatapathError("round_half_up: value is not finite or does not fit int64")
    return v.astype(I64)


def saturate(x, lo: int, hi: int):
    """Clamp to ``[lo, hi]``; return ``(clamped, number_of_clamped_elements)`` (section 1)."""
    x = _i64(x)
    n = int(np.count_nonzero((x < lo) | (x > hi)))
    return np.clip(x, lo, hi), n


def to_fixed(x, frac_bits: int, bits: int = 32):
    """Host float -> signed fixed point with ``frac_bits`` fraction bits (section 1).

    Returns ``(x_fx, saturations)``. Non-finite inputs raise ``DatapathError``.
    """
    x = np.asarray(x, dtype=np.float64)
    if not np.all(np.isfinite(x)):
        raise DatapathError("to_fixed: input contains NaN or infinity")
    v = np.floor(x * (2.0 ** frac_bits) + 0.5)
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    n = int(np.count_nonzero((v < lo) | (v > hi)))
    return np.clip(v, lo, hi).astype(I64), n


def from_fixed(v, frac_bits: int) -> np.ndarray:
    """Fixed point -> host float32: ``float32(float64(v) * 2^-frac_bits)`` (section 1)."""
    return (np.asarray(v, dtype=np.float64) * (2.0 ** -frac_bits)).astype(np.float32)


# --------------------------------------------------------------------------------------------------
# Section 3: B operand
# --------------------------------------------------------------------------------------------------

def check_sym(b, bits: int) -> np.ndarray:
    """Validate signed symmetric ``sym`` codes (section 3); ``-2^(k-1)`` is invalid."""
    F.check_bits(bits)
    b = _i64(b)
    lo, hi = F.sym_range(bits)
    if b.size and (b.min() < lo or b.max() > hi):
        raise DatapathError(f"sym {bits}-bit codes must lie in [{lo}, {hi}]")
    return b


def colsum(b) -> np.ndarray:
    """Per-column sums ``sum_k b[k, c]`` used for zero-point correction (section 3, 6)."""
    return _i64(b).sum(axis=0)


# --------------------------------------------------------------------------------------------------
# Section 4: A operand decode -> triple (neg, mag, sh) and integer D
# --------------------------------------------------------------------------------------------------

def triple_to_int(neg, mag, sh) -> np.ndarray:
    """``D = (-1)^neg * mag * 2^sh``."""
    d = np.left_shift(_i64(mag), _i64(sh))
    return np.where(_i64(neg) != 0, -d, d)


def _check_codes(q, bits: int, name: str) -> np.ndarray:
    F.check_bits(bits)
    q = _i64(q)
    if q.size and (q.min() < 0 or q.max() > (1 << bits) - 1):
        raise DatapathError(f"{name} {bits}-bit codes must lie in [0, {(1 << bits) - 1}]")
    return q


def decode_uniform_triple(q, bits: int):
    """Triple of a ``uniform`` code: ``(0, q, 0)`` (section 4.1)."""
    q = _check_codes(q, bits, "uniform")
    return np.zeros_like(q), q, np.zeros_like(q)


def decode_uniform(q, bits: int) -> np.ndarray:
    """``D`` of a ``uniform`` code (section 4.1): the code itself (zero point corrected at drain)."""
    return triple_to_int(*decode_uniform_triple(q, bits))


def decode_log2_triple(q, bits: int):
    """Triple of a post-softmax ``log2`` code: ``(0, 1, QMAX - q)``, ZERO -> ``(0, 0, 0)`` (section 4.2)."""
    q = _check_codes(q, bits, "log2")
    qmax, zero = F.log2_qmax(bits), F.log2_zero_code(bits)
    bad = (q > qmax) & (q != zero)
    if np.any(bad):
        raise DatapathError(f"invalid log2 {bits}-bit code(s) {np.unique(q[bad]).tolist()} (valid 0..{qmax}, zero {zero})")
    is_zero = q == zero
    mag = np.where(is_zero, 0, 1)
    sh = np.where(is_zero, 0, qmax - q)
    return np.zeros_like(q), mag.astype(I64), sh.astype(I64)


def decode_log2(q, bits: int) -> np.ndarray:
    """``D`` of a post-softmax ``log2`` code in units of ``2^-QMAX`` (section 4.2)."""
    return triple_to_int(*decode_log2_triple(q, bits))


def decode_shiftlog2_triple(q, bits: int, base: str):
    """Triple of a ``shiftlog2`` code: ``(0, C[q & 1], H - e)`` (section 4.3)."""
    q = _check_codes(q, bits, "shiftlog2")
    c, _sqf, h, qmax = F.shiftlog2_params(bits, base)
    if q.size and q.max() > qmax:
        raise DatapathError(f"shiftlog2 base {base} {bits}-bit codes must lie in [0, {qmax}]")
    e = q if base == "2" else np.right_shift(q, 1)
    mag = np.where((q & 1) == 1, c[1], c[0]).astype(I64)
    return np.zeros_like(q), mag, (h - e).astype(I64)


def decode_shiftlog2(q, bits: int, base: str) -> np.ndarray:
    """``D`` of a ``shiftlog2`` code in units of ``s * 2^-(H + SQF)`` (section 4.3)."""
    return triple_to_int(*decode_shiftlog2_triple(q, bits, base))


def _check_m(m0: int, m1: int) -> None:
    if not (0 <= m0 <= m1 <= 15):
        raise DatapathError(f"three_region needs 0 <= m0 <= m1 <= 15, got m0={m0}, m1={m1}")


def decode_three_region_triple(q, bits: int, m0: int, m1: int):
    """Triple of a ``three_region`` code ``[r | g | mag]`` (section 4.4)."""
    q = _check_codes(q, bits, "three_region")
    _check_m(m0, m1)
    r = np.right_shift(q, bits - 1) & 1
    g = np.right_shift(q, bits - 2) & 1
    low = q & ((1 << (bits - 2)) - 1)
    neg = g
    mag = np.where(g == 1, np.left_shift(r, bits - 2) | low, low)
    sh = np.where(g == 1, 0, np.where(r == 1, m1, m0))
    return neg.astype(I64), mag.astype(I64), sh.astype(I64)


def decode_three_region(q, bits: int, m0: int, m1: int) -> np.ndarray:
    """``D`` of a ``three_region`` code in units of ``s0`` (section 4.4)."""
    return triple_to_int(*decode_three_region_triple(q, bits, m0, m1))


def decode(q, kind: str, bits: int, *, base: str = "2", m0: int = 0, m1: int = 0) -> np.ndarray:
    """Decode any A-operand format to ``D``."""
    if kind == "uniform":
        return decode_uniform(q, bits)
    if kind == "log2":
        return decode_log2(q, bits)
    if kind == "shiftlog2":
        return decode_shiftlog2(q, bits, base)
    if kind == "three_region":
        return decode_three_region(q, bits, m0, m1)
    raise DatapathError(f"unknown A format {kind!r}; expected one of {F.A_FORMATS}")


def format_dmax(kind: str, bits: int, *, base: str = "2", m0: int = 0, m1: int = 0) -> int:
    """Largest ``|D|`` of an A format (section 6, accumulator bound)."""
    if kind == "uniform":
        return (1 << bits) - 1
    if kind == "log2":
        return 1 << F.log2_qmax(bits)
    if kind == "shiftlog2":
        c, _sqf, h, _qmax = F.shiftlog2_params(bits, base)
        return max(c) << h
    if kind == "three_region":
        _check_m(m0, m1)
        p = (1 << (bits - 2)) - 1
        return max((1 << (bits - 1)) - 1, p << m1)
    raise DatapathError(f"unknown A format {kind!r}")


# --------------------------------------------------------------------------------------------------
# Sections 5 and 6: outliers and the accumulator
# --------------------------------------------------------------------------------------------------

def check_outliers(outliers, m: int, k: int) -> np.ndarray:
    """Validate an outlier list ``(n, 3)`` of ``[row, col, val]`` sorted by row, then column."""
    o = _i64(outliers).reshape(-1, 3) if np.size(outliers) else np.zeros((0, 3), I64)
    if len(o):
        if o[:, 0].min() < 0 or o[:, 0].max() >= m or o[:, 1].min() < 0 or o[:, 1].max() >= k:
            raise DatapathError("outlier row/column index out of range")
        if o[:, 2].min() < -(1 << 15) or o[:, 2].max() > (1 << 15) - 1:
            raise DatapathError("outlier value does not fit int16")
        key = o[:, 0] * k + o[:, 1]
        if np.any(np.diff(key) <= 0):
            raise DatapathError("outliers must be sorted by row, then column, without duplicates")
    return o


def outliers_per_tile(outliers, m: int, tile_rows: int) -> np.ndarray:
    """Number of outliers in each tile of ``tile_rows`` consecutive rows (section 5)."""
    o = _i64(outliers).reshape(-1, 3)
    n_tiles = max(1, -(-m // tile_rows))
    return np.bincount(o[:, 0] // tile_rows, minlength=n_tiles).astype(I64) if len(o) else np.zeros(n_tiles, I64)


def check_outlier_capacity(outliers, m: int, tile_rows: int, capacity: int | None) -> None:
    """Raise ``OutlierCapacityError`` if any tile exceeds ``capacity`` (section 5)."""
    if capacity is None:
        return
    counts = outliers_per_tile(outliers, m, tile_rows)
    if counts.size and counts.max() > capacity:
        t = int(np.argmax(counts))
        raise OutlierCapacityError(
            f"row tile {t} (rows {t * tile_rows}..{min(m, (t + 1) * tile_rows) - 1}) holds {int(counts[t])} "
            f"outliers, more than the outlier unit's capacity {capacity}"
        )


def acc_bound(k: int, dmax: int, zmax: int, b_bits: int, fo: int = 0, capacity: int | None = 0) -> int:
    """The accumulator bound of section 6."""
    bmax = (1 << (b_bits - 1)) - 1
    cap = k if capacity is None else min(capacity, k)
    return (1 << fo) * k * (dmax + zmax) * bmax + cap * (1 << 15) * bmax


def acc_bits_required(k: int, dmax: int, zmax: int, b_bits: int, fo: int = 0, capacity: int | None = 0) -> int:
    """Signed accumulator width that provably never overflows (section 6)."""
    return acc_bound(k, dmax, zmax, b_bits, fo, capacity).bit_length() + 1


def accumulate(d, b, za, fo: int = 0, outliers=None):
    """The GEMM of section 6.

    Parameters
    ----------
    d : (M, K) int array
        Decoded A operand ``D``.
    b : (K, N) int array
        B operand codes.
    za : int or (M,) int array
        A zero point per row (0 for formats without one).
    fo : int
        Outlier fraction bits of the layer.
    outliers : (n, 3) int array or None
        Sparse ``[row, col, val]`` list.

    Returns
    -------
    acc_raw, acc_d, acc : (M, N) int64 arrays
    """
    d, b = _i64(d), _i64(b)
    if d.ndim != 2 or b.ndim != 2 or d.shape[1] != b.shape[0]:
        raise DatapathError(f"accumulate: shapes {d.shape} and {b.shape} do not chain")
    m, k = d.shape
    za = np.broadcast_to(_i64(za).reshape(-1), (m,)) if np.size(za) != m else _i64(za).reshape(m)
    o = check_outliers(outliers if outliers is not None else np.zeros((0, 3), I64), m, k)
    dmax = int(np.abs(d).max()) if d.size else 0
    bmax = int(np.abs(b).max()) if b.size else 0
    zmax = int(np.abs(za).max()) if za.size else 0
    vmax = int(np.abs(o[:, 2]).max()) if len(o) else 0
    # int64 arithmetic is exact when this bound (section 6 with the actual maxima) is below 2^62;
    # otherwise fall back to Python integers (object arrays), which never overflow.
    exact64 = ((1 << fo) * k * (dmax + zmax) * bmax + len(o) * vmax * bmax) < (1 << 62)
    dt = I64 if exact64 else object
    acc_raw = d.astype(dt) @ b.astype(dt)
    cs = b.astype(dt).sum(axis=0)
    acc_d = acc_raw - za.astype(dt)[:, None] * cs[None, :]
    acc = acc_d * (1 << fo)
    for row, col, val in o.tolist():
        acc[row, :] += val * b[col, :].astype(dt)
    for name, a in (("acc_raw", acc_raw), ("acc_d", acc_d), ("acc", acc)):
        if a.size and max(abs(int(a.max())), abs(int(a.min()))) >= (1 << 62):
            raise AccumulatorOverflowError(f"{name} exceeds 2^62")
    return acc_raw.astype(I64), acc_d.astype(I64), acc.astype(I64)


def check_acc_fits(acc, acc_bits: int) -> None:
    """Raise ``AccumulatorOverflowError`` if any value needs more than ``acc_bits`` signed bits."""
    a = _i64(acc)
    lim = 1 << (acc_bits - 1)
    if a.size and (a.min() < -lim or a.max() > lim - 1):
        raise AccumulatorOverflowError(f"accumulator value outside signed {acc_bits}-bit range")


# --------------------------------------------------------------------------------------------------
# Section 7: requantization
# --------------------------------------------------------------------------------------------------

def requantize(acc, mr, sr: int, mc, sc, bq, z_out: int, out_fmt: str, out_bits: int):
    """Two-stage requantization (section 7).

    ``t = round_shift(acc * Mr[r], Sr)``; ``v = round_shift(t * Mc[c] + Bq[c], Sc[c])``;
    ``out = saturate(v + z_out, lo, hi)``. ``mr`` is a scalar or ``(M,)``; ``mc, sc, bq`` scalars or ``(N,)``.

    Returns
    -------
    out : (M, N) int64
    saturations : int
    """
    acc = _i64(acc)
    m, n = acc.shape
    mr = np.broadcast_to(_i64(mr).reshape(-1), (m,)) if np.size(mr) != m else _i64(mr).reshape(m)
    mc = np.broadcast_to(_i64(mc).reshape(-1), (n,)) if np.size(mc) != n else _i64(mc).reshape(n)
    sc = np.broadcast_to(_i64(sc).reshape(-1), (n,)) if np.size(sc) != n else _i64(sc).reshape(n)
    bq = np.broadcast_to(_i64(bq).reshape(-1), (n,)) if np.size(bq) != n else _i64(bq).reshape(n)
    if not 0 <= sr <= F.SR_MAX:
        raise DatapathError(f"Sr must be in 0..{F.SR_MAX}")
    if np.any(mr < 0) or np.any(mr > (1 << sr)) or np.any(mr >= (1 << F.MULT_BITS)):
        raise DatapathError("Mr[r] must satisfy 0 <= Mr <= 2^Sr and Mr < 2^16 (row gain <= 1)")
    if np.any(mc < 0) or np.any(mc >= (1 << F.MULT_BITS)):
        raise DatapathError("Mc[c] must be in 0..2^16-1")
    if np.any(sc < 0) or np.any(sc > F.SC_MAX):
        raise DatapathError(f"Sc[c] must be in 0..{F.SC_MAX}")
    if np.any(np.abs(bq) >= (1 << (F.BQ_BITS - 1))):
        raise DatapathError("|Bq| must be < 2^47")
    if np.any(np.abs(acc) >= (1 << (F.ACC_BITS_MAX - 1))):
        raise AccumulatorOverflowError("accumulator exceeds the 48-bit limit")
    t = round_shift(acc * mr[:, None], sr)
    prod = t.astype(object) * mc[None, :].astype(object) + bq[None, :].astype(object)
    if prod.size and max(abs(int(prod.max())), abs(int(prod.min()))) >= (1 << 62):
        raise DatapathError("requantize: |t * Mc + Bq| exceeds 2^62")
    v = round_shift(prod.astype(I64), sc[None, :])
    lo, hi = F.out_range(out_fmt, out_bits)
    if out_fmt == "ucode":
        if not 0 <= z_out <= hi:
            raise DatapathError(f"z_out must be in 0..{hi}")
    elif z_out != 0:
        raise DatapathError(f"{out_fmt} output has no zero point (z_out must be 0)")
    return saturate(v + z_out, lo, hi)


# --------------------------------------------------------------------------------------------------
# Section 8: encoders
# --------------------------------------------------------------------------------------------------

def _check_recip(r, se) -> None:
    r = _i64(r)
    if np.any(r <= 0) or np.any(r >= (1 << F.RECIP_BITS)):
        raise DatapathError("encoder reciprocal R must satisfy 0 < R < 2^24")
    if not 0 <= int(se) <= F.SE_MAX:
        raise DatapathError(f"encoder shift SE must be in 0..{F.SE_MAX}")


def _check_input(x, name: str, bits: int = 32) -> np.ndarray:
    """Encoder inputs are signed fixed point of at most 32 bits (section 8); wider input is an error."""
    x = _i64(x)
    if x.size and (x.min() < -(1 << (bits - 1)) or x.max() > (1 << (bits - 1)) - 1):
        raise DatapathError(f"{name}: input must be a signed {bits}-bit fixed-point integer")
    return x


def _rows(v, m: int) -> np.ndarray:
    v = _i64(v).reshape(-1)
    if v.size == 1:
        return np.broadcast_to(v, (m,))
    if v.size != m:
        raise DatapathError(f"per-row parameter has {v.size} entries for {m} rows")
    return v


def encode_uniform(x, r, se: int, z, bits: int):
    """Uniform encoder (section 8.1): ``q = saturate(round_shift(x * R[r], SE) + z[r], 0, 2^k - 1)``.

    ``x`` is ``(M, K)`` fixed point; ``r`` and ``z`` are scalars (per tensor) or ``(M,)`` (per patch).
    Returns ``(q, saturations)``.
    """
    F.check_bits(bits)
    x = _check_input(x, "encode_uniform")
    m = x.shape[0]
    r, z = _rows(r, m), _rows(z, m)
    _check_recip(r, se)
    if np.any(z < 0) or np.any(z > (1 << bits) - 1):
        raise DatapathError(f"zero point must lie in [0, {(1 << bits) - 1}]")
    v = round_shift(x * r[:, None], se) + z[:, None]
    return saturate(v, 0, (1 << bits) - 1)


def encode_per_patch(x, r, se: int, z, bits: int, alpha_fx: int, fo: int = F.OUTLIER_FRAC_BITS, strict: bool = True):
    """Per-patch uniform encoder with outlier extraction (sections 5 and 8.1).

    Returns
    -------
    q : (M, K) int64 dense codes (outlier positions hold ``z[r]``)
    outliers : (n, 3) int64 ``[row, col, val]`` sorted by row then column
    saturations : int   (dense code clipping)
    outlier_overflows : int   (outlier values saturated to int16; raises in strict mode)
    """
    x = _check_input(x, "encode_per_patch")
    m = x.shape[0]
    r, z = _rows(r, m), _rows(z, m)
    if se < fo:
        raise DatapathError("encode_per_patch needs SE >= FO")
    is_out = np.abs(x) > alpha_fx
    q, sat = encode_uniform(np.where(is_out, 0, x), r, se, z, bits)
    q = np.where(is_out, z[:, None], q)
    rows, cols = np.nonzero(is_out)
    vals = round_shift(x[rows, cols] * r[rows], se - fo)
    vals, n_of = saturate(vals, -(1 << 15), (1 << 15) - 1)
    if strict and n_of:
        raise OutlierOverflowError(f"{n_of} outlier value(s) do not fit int16 (section 5)")
    outliers = np.stack([rows, cols, vals], axis=1).astype(I64) if len(rows) else np.zeros((0, 3), I64)
    return q, outliers, sat, n_of


def row_range(x, alpha_fx: int | None):
    """Per-row inlier range of the dynamic per-patch encoder (section 8.1.1).

    Returns ``(lo, span)``: ``lo[r] = min(0, min of the inliers of row r)``,
    ``hi[r] = max(0, max of the inliers)``, ``span[r] = hi[r] - lo[r]`` (inliers: ``|x| <= ALPHA``;
    every element when ``alpha_fx`` is None). A row without inliers has ``lo = span = 0``.
    """
    x = _check_input(x, "row_range")
    inl = np.ones(x.shape, bool) if alpha_fx is None else np.abs(x) <= int(alpha_fx)
    lo = np.minimum(np.where(inl, x, 0).min(axis=1, initial=0), 0)
    hi = np.maximum(np.where(inl, x, 0).max(axis=1, initial=0), 0)
    return lo.astype(I64), (hi - lo).astype(I64)


def check_ladder(ladder_r, ladder_t, se: int) -> tuple[np.ndarray, np.ndarray]:
    """Validate a scale ladder (section 8.1.1): ``1 <= J <= 64`` entries, ``0 < R[j] < 2^24``
    non-decreasing, ``0 <= T[j] < 2^34`` non-increasing."""
    r, t = _i64(ladder_r).reshape(-1), _i64(ladder_t).reshape(-1)
    if not 1 <= r.size <= F.LADDER_MAX or r.size != t.size:
        raise DatapathError(f"a scale ladder has 1..{F.LADDER_MAX} entries of R and T, got {r.size} and {t.size}")
    _check_recip(r, se)
    if np.any(t < 0) or np.any(t >= (1 << 34)):
        raise DatapathError("ladder thresholds T must lie in [0, 2^34)")
    if np.any(np.diff(t) > 0) or np.any(np.diff(r) < 0):
        raise DatapathError("a scale ladder must have non-increasing T and non-decreasing R")
    return r, t


def select_ladder(span, ladder_t) -> np.ndarray:
    """``j[r] = max({0} | {j : T[j] >= span[r]})``: the finest ladder scale whose range covers the row."""
    span = _i64(span).reshape(-1)
    t = _i64(ladder_t).reshape(-1)
    covers = t[None, :] >= span[:, None]
    return np.maximum(covers.sum(axis=1) - 1, 0).astype(I64)


def encode_per_patch_dynamic(x, ladder_r, ladder_t, se: int, bits: int, alpha_fx: int | None,
                             fo: int = F.OUTLIER_FRAC_BITS, strict: bool = True):
    """Dynamic per-patch encoder (section 8.1.1): per-row scale chosen at run time from a ladder.

    Per row: inlier range (:func:`row_range`), ladder index ``j = select_ladder(span)``, reciprocal
    ``R[j]``, zero point ``z = saturate(round_shift(-lo * R[j], SE), 0, 2^k - 1)``, then
    :func:`encode_per_patch` (or :func:`encode_uniform` when ``alpha_fx`` is None) with those
    per-row ``R`` and ``z``.

    Returns
    -------
    q, outliers, saturations, outlier_overflows : as :func:`encode_per_patch`
    j : (M,) int64 ladder index per row (selects the consuming GEMM's row gain ``Mr``)
    z : (M,) int64 zero point per row (the consuming GEMM's ``za``)
    """
    F.check_bits(bits)
    x = _check_input(x, "encode_per_patch_dynamic")
    r_lad, t_lad = check_ladder(ladder_r, ladder_t, se)
    lo, span = row_range(x, alpha_fx)
    j = select_ladder(span, t_lad)
    r = r_lad[j]
    z, _ = saturate(round_shift(-lo * r, se), 0, (1 << bits) - 1)
    if alpha_fx is None:
        q, sat = encode_uniform(x, r, se, z, bits)
        return q, np.zeros((0, 3), I64), sat, 0, j, z
    q, outliers, sat, n_of = encode_per_patch(x, r, se, z, bits, alpha_fx, fo, strict)
    return q, outliers, sat, n_of, j, z


def bit_length(v) -> np.ndarray:
    """``bit_length`` of non-negative integers, elementwise (exact for all int64)."""
    v = _i64(v)
    p = np.zeros_like(v)
    for s in (32, 16, 8, 4, 2, 1):
        big = np.right_shift(v, p + s) > 0
        p = np.where(big, p + s, p)
    return np.where(v > 0, p + 1, 0)


def _mantissa16(v):
    v = _i64(v)
    p = bit_length(v) - 1
    m = np.where(p <= 15, np.left_shift(v, np.maximum(15 - p, 0)), np.right_shift(v, np.maximum(p - 15, 0)))
    return p, m


def round_log2(v) -> np.ndarray:
    """Nearest integer to ``log2(v)`` for ``v >= 1`` via the 16-bit mantissa (section 8.2)."""
    v = _i64(v)
    if np.any(v < 1):
        raise DatapathError("round_log2 needs v >= 1")
    p, m = _mantissa16(v)
    return p + (m >= F.LOG2_THRESHOLD)


def round_log_sqrt2(v) -> np.ndarray:
    """Nearest integer to ``2 * log2(v)`` for ``v >= 1`` via the 16-bit mantissa (section 8.2)."""
    v = _i64(v)
    if np.any(v < 1):
        raise DatapathError("round_log_sqrt2 needs v >= 1")
    p, m = _mantissa16(v)
    t1, t3 = F.LOG_SQRT2_THRESHOLDS
    return 2 * p + (m >= t1) + (m >= t3)


def encode_log2(a, frac_bits: int, bits: int) -> np.ndarray:
    """Post-softmax log2 encoder (section 8.2): ``q = F - round_log2(a)``, 0 -> ZERO, q > QMAX -> ZERO."""
    F.check_bits(bits)
    a = _i64(a)
    if np.any(a < 0):
        raise DatapathError("encode_log2 needs a >= 0")
    qmax, zero = F.log2_qmax(bits), F.log2_zero_code(bits)
    q = frac_bits - round_log2(np.maximum(a, 1))
    q = np.maximum(q, 0)
    return np.where((a == 0) | (q > qmax), zero, q).astype(I64)


def encode_shiftlog2(x, sh: int, r: int, se: int, bits: int, base: str) -> np.ndarray:
    """Shift-Log2 post-GELU encoder (section 8.2): ``w = round_shift((x + SH) * R, SE)``."""
    F.check_bits(bits)
    _check_recip(r, se)
    x = _check_input(x, "encode_shiftlog2")
    if abs(int(sh)) >= (1 << 31):
        raise DatapathError("encode_shiftlog2: SH must fit int32")
    _c, _sqf, _h, qmax = F.shiftlog2_params(bits, base)
    u = x + int(sh)
    w = round_shift(u * int(r), se)
    pos = (u > 0) & (w > 0)
    ws = np.maximum(w, 1)
    if base == "2":
        q = F.LOG_FRAC - round_log2(ws)
    else:
        q = 2 * F.LOG_FRAC - round_log_sqrt2(ws)
    q = np.clip(q, 0, qmax)
    return np.where(pos, q, qmax).astype(I64)


def encode_three_region(x, r: int, se: int, bits: int, m0: int, m1: int) -> np.ndarray:
    """Three-region (MPTQ-ViT OPT-m) post-GELU encoder (section 8.3)."""
    F.check_bits(bits)
    _check_recip(r, se)
    _check_m(m0, m1)
    x = _check_input(x, "encode_three_region")
    w = round_shift(x * int(r), se)
    p = (1 << (bits - 2)) - 1
    lf = F.LOG_FRAC
    # R0 (negative)
    n = np.minimum(round_shift(np.maximum(-w, 0), lf), (1 << (bits - 1)) - 1)
    code_neg = np.where(
        n == 0, 0, (np.right_shift(n, bits - 2) << (bits - 1)) | (1 << (bits - 2)) | (n & p)
    )
    # R1 / R2 (positive)
    wp = np.maximum(w, 0)
    n1 = round_shift(wp, lf + m0)
    n2 = np.minimum(round_shift(wp, lf + m1), p)
    code_pos = np.where(n1 <= p, n1, (1 << (bits - 1)) | n2)
    return np.where(w < 0, code_neg, code_pos).astype(I64)
