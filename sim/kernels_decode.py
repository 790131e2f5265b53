"""numba kernels of the A-operand decoders (docs/datapath.md, section 4).

Each format has a scalar ``decode_<format>_triple`` that returns the triple ``(neg, mag, sh, valid)``
of one code, exactly as in the spec. Because every code has at most 8 bits, the array decoder first
tabulates ``D = (-1)^neg * mag << sh`` for all ``2^k`` codes with the scalar decoder
(``decode_lut``) and then maps a code tensor through that table in one parallel pass
(``decode_lut_2d``), counting invalid codes. ``decode`` is the array API with the reference's
arguments, results (int64 ``D``) and errors (on an invalid code it calls the reference decoder, which
raises the reference's own message).
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from . import formats as F
from . import reference as ref
from .reference import DatapathError

I64 = np.int64

#: Integer ids of the A formats (``formats.A_FORMATS`` order) used inside the kernels.
KIND_ID = {name: i for i, name in enumerate(F.A_FORMATS)}
UNIFORM, LOG2, SHIFTLOG2, THREE_REGION = (KIND_ID[n] for n in ("uniform", "log2", "shiftlog2", "three_region"))
#: ``shiftlog2`` bases: 0 = base 2, 1 = base sqrt(2).
BASE_ID = {"2": 0, "sqrt2": 1}


@njit(cache=True)
def decode_uniform_triple(q, bits):
    """``uniform`` (section 4.1): ``(0, q, 0)``; valid for ``0 <= q < 2^k``."""
    valid = (q >= 0) and (q <= (1 << bits) - 1)
    return 0, q, 0, valid


@njit(cache=True)
def decode_log2_triple(q, bits):
    """Post-softmax ``log2`` (section 4.2): ``(0, 1, QMAX - q)``; ZERO ``= 2^k - 1`` -> ``(0, 0, 0)``."""
    qmax = min((1 << bits) - 2, F.LOG2_MAX_SHIFT)
    zero = (1 << bits) - 1
    if q == zero:
        return 0, 0, 0, True
    valid = (q >= 0) and (q <= qmax)
    return 0, 1, qmax - q, valid


@njit(cache=True)
def decode_shiftlog2_triple(q, bits, base_id):
    """``shiftlog2`` (section 4.3): ``(0, C[q & 1], H - e)``, base 2 (``base_id`` 0) or sqrt(2) (1)."""
    if base_id == 0:
        qmax = min((1 << bits) - 1, F.LOG2_MAX_SHIFT)
        c0, c1 = 1, 1
        h = qmax
        e = q
    else:
        qmax = min((1 << bits) - 1, F.LOG_SQRT2_MAX_CODE)
        c0, c1 = F.SQRT2_C[0], F.SQRT2_C[1]
        h = qmax >> 1
        e = q >> 1
    mag = c1 if (q & 1) == 1 else c0
    valid = (q >= 0) and (q <= qmax)
    return 0, mag, h - e, valid


@njit(cache=True)
def decode_three_region_triple(q, bits, m0, m1):
    """``three_region`` (section 4.4): code ``[r | g | mag]`` -> R1 ``(0, mag, m0)``, R2 ``(0, mag, m1)``,
    R0 ``(1, (r << (k-2)) | mag, 0)``."""
    r = (q >> (bits - 1)) & 1
    g = (q >> (bits - 2)) & 1
    low = q & ((1 << (bits - 2)) - 1)
    valid = (q >= 0) and (q <= (1 << bits) - 1)
    if g == 1:
        return 1, (r << (bits - 2)) | low, 0, valid
    if r == 1:
        return 0, low, m1, valid
    return 0, low, m0, valid


@njit(cache=True)
def decode_triple(q, kind_id, bits, base_id, m0, m1):
    """Dispatch to the scalar triple decoder of format ``kind_id``."""
    if kind_id == UNIFORM:
        return decode_uniform_triple(q, bits)
    if kind_id == LOG2:
        return decode_log2_triple(q, bits)
    if kind_id == SHIFTLOG2:
        return decode_shiftlog2_triple(q, bits, base_id)
    return decode_three_region_triple(q, bits, m0, m1)


@njit(cache=True)
def decode_lut(kind_id, bits, base_id, m0, m1):
    """Table of ``D`` for every ``k``-bit code, and a validity table (uint8)."""
    n = 1 << bits
    lut = np.zeros(n, np.int64)
    valid = np.zeros(n, np.uint8)
    for q in range(n):
        neg, mag, sh, ok = decode_triple(np.int64(q), kind_id, bits, base_id, m0, m1)
        d = np.int64(mag) << sh
        lut[q] = -d if neg else d
        valid[q] = 1 if ok else 0
    return lut, valid


@njit(cache=True, parallel=True)
def decode_lut_2d(q, lut, valid, out):
    """``out[r, j] = lut[q[r, j]]`` for an ``(M, K)`` code tensor; return the number of invalid codes.

    Codes outside ``0 .. len(lut) - 1`` or marked invalid are counted (and written as ``lut[0]``).
    ``out`` may be int64, float32 or float64 (the GEMM operand of the chosen path).
    """
    m, k = q.shape
    nl = lut.shape[0]
    bad = np.zeros(m, np.int64)
    for r in prange(m):
        nb = 0
        for j in range(k):
            c = np.int64(q[r, j])
            inside = (c >= 0) & (c < nl)
            idx = c if inside else 0
            nb += (not inside) | (valid[idx] == 0)
            out[r, j] = lut[idx]
        bad[r] = nb
    return bad.sum()


def format_params(kind: str, bits: int, base: str = "2", m0: int = 0, m1: int = 0) -> tuple[int, int, int, int]:
    """Check a format's parameters the way the reference does; return kernel ids ``(kind, base, m0, m1)``."""
    if kind not in KIND_ID:
        raise DatapathError(f"unknown A format {kind!r}; expected one of {F.A_FORMATS}")
    F.check_bits(bits)
    base_id = 0
    if kind == "shiftlog2":
        F.shiftlog2_qmax(bits, base)          # ValueError for an unknown base, as the reference
        base_id = BASE_ID[base]
    if kind == "three_region":
        ref._check_m(m0, m1)
    return KIND_ID[kind], base_id, int(m0), int(m1)


_LUT_CACHE: dict = {}


def lut_for(kind: str, bits: int, base: str = "2", m0: int = 0, m1: int = 0, dtype=I64):
    """Cached ``(lut, valid)`` of a format, ``lut`` cast to ``dtype`` (exact: ``|D| <= 2^23``)."""
    key = (kind, bits, base if kind == "shiftlog2" else "", m0 if kind == "three_region" else 0,
           m1 if kind == "three_region" else 0, np.dtype(dtype).str)
    hit = _LUT_CACHE.get(key)
    if hit is None:
        kid, bid, a0, a1 = format_params(kind, bits, base, m0, m1)
        lut, valid = decode_lut(kid, bits, bid, a0, a1)
        hit = (lut.astype(dtype), valid)
        _LUT_CACHE[key] = hit
    return hit


def as_int_codes(q) -> np.ndarray:
    """A C-contiguous integer view of a code tensor (float integers accepted as by the reference)."""
    a = np.asarray(q)
    if a.dtype.kind not in "iu":
        a = ref._i64(a)
    return np.ascontiguousarray(a)


def decode_into(q, out, kind: str, bits: int, base: str = "2", m0: int = 0, m1: int = 0) -> np.ndarray:
    """Decode 2-D codes ``q`` into ``out`` (same shape; int64 / float32 / float64).

    Raises the reference's error (by calling ``reference.decode``, which raises) on any invalid code.
    """
    lut, valid = lut_for(kind, bits, base, m0, m1, out.dtype)
    nbad = decode_lut_2d(q, lut, valid, out)
    if nbad:
        ref.decode(q, kind, bits, base=base, m0=m0, m1=m1)    # raises the reference's own message
        raise DatapathError(f"{nbad} invalid {kind} {bits}-bit code(s)")   # pragma: no cover
    return out


def decode(q, kind: str, bits: int, *, base: str = "2", m0: int = 0, m1: int = 0) -> np.ndarray:
    """Decode any A-operand format to ``D`` (int64), numba; same results and errors as ``reference.decode``."""
    qa = as_int_codes(q)
    format_params(kind, bits, base, m0, m1)
    out = np.empty(qa.shape, I64)
    if qa.size == 0:
        return out
    q2 = qa.reshape(1, 1) if qa.ndim == 0 else qa.reshape(-1, qa.shape[-1])
    decode_into(q2, out.reshape(q2.shape), kind, bits, base, m0, m1)
    return out


def decode_uniform(q, bits: int) -> np.ndarray:
    """``D`` of ``uniform`` codes (section 4.1)."""
    return decode(q, "uniform", bits)


def decode_log2(q, bits: int) -> np.ndarray:
    """``D`` of post-softmax ``log2`` codes (section 4.2)."""
    return decode(q, "log2", bits)


def decode_shiftlog2(q, bits: int, base: str) -> np.ndarray:
    """``D`` of ``shiftlog2`` codes, base ``"2"`` or ``"sqrt2"`` (section 4.3)."""
    return decode(q, "shiftlog2", bits, base=base)


def decode_three_region(q, bits: int, m0: int, m1: int) -> np.ndarray:
    """``D`` of ``three_region`` codes (section 4.4)."""
    return decode(q, "three_region", bits, m0=m0, m1=m1)
