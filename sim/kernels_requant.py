"""numba kernels of the two-stage requantiser (docs/datapath.md, section 7) and the rounding helpers.

``round_shift`` (section 1) and the scalar row kernel ``requantize_row`` are shared with the GEMM drain
(``sim/kernels_gemm.py``) and the encoders (``sim/kernels_encode.py``).

Exactness (int64 throughout, nothing wraps silently)
----------------------------------------------------
The reference (``sim.reference.requantize``) computes ``t * Mc + Bq`` with Python integers and raises
``DatapathError`` when ``|t * Mc + Bq| >= 2^62``. Here everything is int64; the checked preconditions

* ``|acc| < 2^47`` (48-bit accumulator limit, checked per element),
* ``0 <= Mr <= 2^Sr``, ``Mr < 2^16``, ``0 <= Mc < 2^16``, ``|Bq| < 2^47`` (checked per parameter),

give ``|acc * Mr| < 2^63`` (no wrap; ``>= 2^62`` is detected like the reference's ``round_shift``
check), ``|t| <= |acc| < 2^47`` (row gain <= 1, rounding cannot leave the integer range) and so
``|t * Mc + Bq| < (2^47 - 1)(2^16 - 1) + 2^47 < 2^63``: the int64 sum is the true integer, and the
reference's ``>= 2^62`` condition is then detected on it and raised as ``DatapathError``.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from . import formats as F
from . import reference as ref
from .reference import AccumulatorOverflowError, DatapathError


def as_int2d(x, what: str) -> np.ndarray:
    """A contiguous 2-D integer array for the kernels; raise ``DatapathError`` naming ``what`` otherwise."""
    a = np.asarray(x)
    if a.dtype.kind not in "iu":
        a = ref._i64(a)
    if a.ndim != 2:
        raise DatapathError(f"{what} must be (M, K) / 2-D, got shape {a.shape}")
    return np.ascontiguousarray(a)

I64 = np.int64

#: ``2^62``: the reference's limit on the argument of ``round_shift`` and on ``t * Mc + Bq``.
INT62 = 1 << 62
#: ``2^47``: the 48-bit accumulator limit (section 6, ``ACC_BITS_MAX``).
ACC48 = 1 << (F.ACC_BITS_MAX - 1)

# Error counters returned by ``requantize_row`` (index into the per-row error array).
ERR_ACC48 = 0      # |acc| >= 2^47
ERR_T62 = 1        # |acc * Mr| >= 2^62   (reference: round_shift argument check)
ERR_P62 = 2        # |t * Mc + Bq| >= 2^62
N_ERR = 3


@njit(cache=True)
def round_shift(x, s):
    """``round_shift(x, s) = (x + 2^(s-1)) >> s`` (``x`` for ``s == 0``): round half up (section 1)."""
    if s == 0:
        return x
    return (x + (np.int64(1) << (s - 1))) >> s


@njit(cache=True)
def round_half(s):
    """The rounding constant ``2^(s-1)`` of ``round_shift`` (0 for ``s == 0``)."""
    if s == 0:
        return np.int64(0)
    return np.int64(1) << (s - 1)


@njit(cache=True)
def requantize_row(acc_row, mr, sr, mc, sc_half, sc, bq, z_out, lo, hi, out_row, errs):
    """Requantise one output row in place (section 7); return the number of saturated elements.

    ``t = round_shift(acc * Mr, Sr)``, ``v = round_shift(t * Mc + Bq, Sc)``, ``out = saturate(v + z_out)``.
    ``sc_half[c]`` is ``round_half(Sc[c])``. Range faults are counted into ``errs[ERR_*]`` (the caller
    raises); the loop is branch-free so that it vectorises.
    """
    n = acc_row.shape[0]
    rh = round_half(sr)
    sat = 0
    e48 = 0
    e_t = 0
    e_p = 0
    for c in range(n):
        a = acc_row[c]
        e48 += (a >= ACC48) | (a <= -ACC48)
        x = a * mr
        e_t += (x >= INT62) | (x <= -INT62)
        t = (x + rh) >> sr
        p = t * mc[c] + bq[c]
        e_p += (p >= INT62) | (p <= -INT62)
        v = ((p + sc_half[c]) >> sc[c]) + z_out
        bad = (v < lo) | (v > hi)
        sat += bad
        v = min(max(v, lo), hi)
        out_row[c] = v
    errs[ERR_ACC48] += e48
    errs[ERR_T62] += e_t
    errs[ERR_P62] += e_p
    return sat


@njit(cache=True)
def requantize_row_unchecked(acc_row, mr, sr, mc, sc_half, sc, bq, z_out, lo, hi, out_row):
    """``requantize_row`` without the range-fault counters, for callers that proved them unreachable
    (``|acc| < 2^46``: see ``kernels_gemm.requant_needs_checks``)."""
    n = acc_row.shape[0]
    rh = round_half(sr)
    sat = 0
    for c in range(n):
        t = (acc_row[c] * mr + rh) >> sr
        v = ((t * mc[c] + bq[c] + sc_half[c]) >> sc[c]) + z_out
        sat += (v < lo) | (v > hi)
        out_row[c] = min(max(v, lo), hi)
    return sat


@njit(cache=True, parallel=True)
def _requantize_kernel(acc, mr, sr, mc, sc, bq, z_out, lo, hi, out):
    m, n = acc.shape
    sc_half = np.empty(n, np.int64)
    for c in range(n):
        sc_half[c] = round_half(sc[c])
    sats = np.zeros(m, np.int64)
    errs = np.zeros((m, N_ERR), np.int64)
    for r in prange(m):
        sats[r] = requantize_row(acc[r], mr[r], sr, mc, sc_half, sc, bq, z_out, lo, hi, out[r], errs[r])
    return sats.sum(), errs.sum(axis=0)


def _vec(v, n: int, name: str) -> np.ndarray:
    a = np.asarray(v)
    if a.dtype.kind not in "iub":
        from .reference import _i64
        a = _i64(a)
    a = a.reshape(-1).astype(I64, copy=False)
    if a.size == n:
        return np.ascontiguousarray(a)
    if a.size == 1:
        return np.full(n, a[0], I64)
    raise DatapathError(f"requantize: {name} has {a.size} entries, expected 1 or {n}")


def requant_params(m: int, n: int, mr, sr: int, mc, sc, bq, z_out: int, out_fmt: str, out_bits: int):
    """Validate and broadcast the requantiser parameters exactly as ``reference.requantize`` does.

    Returns ``(mr, sr, mc, sc, bq, z_out, lo, hi)`` as int64 arrays / ints, or raises ``DatapathError``.
    An unknown output format gives ``lo = hi = 0``: the reference raises its ``ValueError`` only after
    the range checks on ``acc``, so callers call ``formats.out_range`` again after the kernel.
    """
    mr, mc, sc, bq = _vec(mr, m, "Mr"), _vec(mc, n, "Mc"), _vec(sc, n, "Sc"), _vec(bq, n, "Bq")
    if not 0 <= sr <= F.SR_MAX:
        raise DatapathError(f"Sr must be in 0..{F.SR_MAX}")
    if mr.size and (mr.min() < 0 or mr.max() > (1 << sr) or mr.max() >= (1 << F.MULT_BITS)):
        raise DatapathError("Mr[r] must satisfy 0 <= Mr <= 2^Sr and Mr < 2^16 (row gain <= 1)")
    if mc.size and (mc.min() < 0 or mc.max() >= (1 << F.MULT_BITS)):
        raise DatapathError("Mc[c] must be in 0..2^16-1")
    if sc.size and (sc.min() < 0 or sc.max() > F.SC_MAX):
        raise DatapathError(f"Sc[c] must be in 0..{F.SC_MAX}")
    if bq.size and (bq.min() <= -(1 << (F.BQ_BITS - 1)) or bq.max() >= (1 << (F.BQ_BITS - 1))):
        raise DatapathError("|Bq| must be < 2^47")
    try:
        lo, hi = F.out_range(out_fmt, out_bits)
    except ValueError:          # the reference raises this after computing; callers call out_range again
        lo, hi = 0, 0
    return mr, int(sr), mc, sc, bq, int(z_out), lo, hi


def check_z_out(z_out: int, out_fmt: str, hi: int) -> None:
    """The reference's output zero-point rule (section 7): ``ucode`` 0..hi, every other format 0."""
    if out_fmt == "ucode":
        if not 0 <= z_out <= hi:
            raise DatapathError(f"z_out must be in 0..{hi}")
    elif z_out != 0:
        raise DatapathError(f"{out_fmt} output has no zero point (z_out must be 0)")


def raise_requant_errors(errs) -> None:
    """Raise the reference's error for the first (in reference order) nonzero error counter."""
    if errs[ERR_ACC48]:
        raise AccumulatorOverflowError("accumulator exceeds the 48-bit limit")
    if errs[ERR_T62]:
        raise DatapathError("round_shift: |x| must be < 2^62 (requantize: |acc * Mr| >= 2^62)")
    if errs[ERR_P62]:
        raise DatapathError("requantize: |t * Mc + Bq| exceeds 2^62")


def requantize(acc, mr, sr: int, mc, sc, bq, z_out: int, out_fmt: str, out_bits: int):
    """Two-stage requantisation (section 7), numba; same arguments, results and errors as the reference.

    Returns
    -------
    out : (M, N) int64
    saturations : int
    """
    a = np.asarray(acc)
    if a.dtype.kind not in "iub":
        from .reference import _i64
        a = _i64(a)
    a = np.ascontiguousarray(a, dtype=I64)
    if a.ndim != 2:
        raise DatapathError(f"requantize: acc must be (M, N), got shape {a.shape}")
    m, n = a.shape
    mr, sr, mc, sc, bq, z_out, lo, hi = requant_params(m, n, mr, sr, mc, sc, bq, z_out, out_fmt, out_bits)
    out = np.empty((m, n), I64)
    sat, errs = _requantize_kernel(a, mr, sr, mc, sc, bq, z_out, lo, hi, out)
    raise_requant_errors(errs)
    lo, hi = F.out_range(out_fmt, out_bits)
    check_z_out(z_out, out_fmt, hi)
    return out, int(sat)
