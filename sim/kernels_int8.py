"""Exact int8 x int8 -> int32 GEMM path of the simulator (docs/datapath.md section 6, "Exact int8 path").

Every A format's operand ``D`` lies in a known range ``[Dmin, Dmax]`` (its decode table). The int8 path
writes it as a centre ``O`` plus *balanced base-256 digits*::

    D = O + sum_i s_i * 256^i,        s_i in [-128, 127],  i < n

(``digit_plan``: ``O`` is the middle of the range, ``n`` the fewest digits that cover ``D - O``; a 4-bit
``uniform`` code is one digit with ``O = 0``, an 8-bit one one digit with ``O = 128``, a 4-bit ``log2``
or ``shiftlog2`` operand (``D <= 2^15``) two digits). Then

    acc_raw = D @ b = sum_i 256^i * (S_i @ b) + O * colsum(b)

so each digit is one int8 x int8 GEMM with int32 results, combined in int64 by the drain, and the
``O * colsum`` term folds into the zero-point correction (``za' = za - O``). The B operand (``sym``
codes, ``|b| <= 127``) is int8 as it is.

Exactness: every digit GEMM's partial sums are bounded by ``K * 128 * Bmax``; the path is taken only if
``K * 256 * Bmax < 2^31`` (``INT8_K_BOUND``: a factor 2 of margin for implementations that add 128 to
the A operand internally, as VNNI ``u8 x s8`` kernels do), so no int32 partial sum can wrap whatever
the summation order. The GEMM itself is ``torch._int_mm`` (oneDNN; AVX-512 VNNI / AMX when the CPU has
them). Because that is a library whose internals this project does not control (older x86 kernels
without VNNI use ``vpmaddubsw``, which *saturates* int16 pair sums), ``int8_backend`` checks it once per
process on worst-case operands (every extreme of ``s8 x s8`` at several shapes) against exact numpy
integers; if any result differs, or torch is missing, the int8 path is disabled and the simulator
uses the float / int64 paths (``VITACCEL_INT8=0`` disables it by hand).
"""
from __future__ import annotations

import os

import numpy as np
from numba import njit, prange

I64 = np.int64

#: The int8 path needs ``K * INT8_A_SPAN * Bmax < INT8_ACC_LIMIT`` (int32 partial sums, 2x margin).
INT8_A_SPAN = 256
INT8_ACC_LIMIT = 1 << 31
#: At most this many base-256 digits (``|D| <= 2^23`` for every format: 3 suffice; 4 is the cap).
MAX_DIGITS = 4

_BACKEND: dict = {}


def digit_plan(dmin: int, dmax: int) -> tuple[int, int]:
    """``(n, O)``: the centre ``O`` and the number of balanced base-256 digits of ``D - O`` for
    ``D in [dmin, dmax]`` (``n`` digits cover ``[-128 * (256^n - 1) / 255, 127 * (256^n - 1) / 255]``)."""
    dmin, dmax = int(dmin), int(dmax)
    if dmin > dmax:
        raise ValueError("digit_plan: empty range")
    if -128 <= dmin and dmax <= 127:
        return 1, 0
    o = (dmin + dmax + 1) // 2
    lo, hi = dmin - o, dmax - o
    n = 1
    while not (-128 * ((256 ** n - 1) // 255) <= lo and hi <= 127 * ((256 ** n - 1) // 255)):
        n += 1
    return n, o


def balanced_digits(x: int, n: int) -> list[int]:
    """The ``n`` balanced base-256 digits ``s_i in [-128, 127]`` of ``x`` (``x = sum s_i 256^i``)."""
    out = []
    for _ in range(n):
        s = ((x + 128) % 256) - 128
        out.append(s)
        x = (x - s) // 256
    if x != 0:
        raise ValueError("balanced_digits: value does not fit n digits")
    return out


_DIGIT_CACHE: dict = {}


def digit_lut(lut: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, int]:
    """Digit table ``(2^k, n)`` int8 of a format's decode table ``lut`` (``D`` per code) and its centre ``O``.

    Invalid codes get digits of ``O`` (they are counted and rejected by the decoder anyway)."""
    key = (np.asarray(lut, I64).tobytes(), np.asarray(valid).tobytes())
    hit = _DIGIT_CACHE.get(key)
    if hit is None:
        hit = _DIGIT_CACHE[key] = _digit_lut(lut, valid)
    return hit


def is_identity(lut: np.ndarray, valid: np.ndarray) -> bool:
    """Whether every code is valid and decodes to itself (``uniform``): ``decode_identity`` applies."""
    return bool(np.all(valid)) and np.array_equal(np.asarray(lut, I64), np.arange(len(lut)))


def _digit_lut(lut, valid):
    ok = np.flatnonzero(valid)
    d = np.asarray(lut, I64)
    dmin, dmax = (int(d[ok].min()), int(d[ok].max())) if len(ok) else (0, 0)
    n, o = digit_plan(dmin, dmax)
    tab = np.zeros((len(d), n), np.int8)
    for q in ok:
        tab[q] = balanced_digits(int(d[q]) - o, n)
    return tab, o


def int8_k_ok(k: int, bmax: int) -> bool:
    """The int8 path's exactness bound: ``K * 256 * Bmax < 2^31`` and ``Bmax <= 127`` (section 6)."""
    return int(bmax) <= 127 and int(k) * INT8_A_SPAN * int(bmax) < INT8_ACC_LIMIT


def _probe(int_mm) -> bool:
    """``int_mm`` equals exact integer products on worst-case int8 operands at several shapes."""
    import torch

    rng = np.random.default_rng(12345)
    shapes = [(1, 1, 1), (3, 1, 4), (3, 5, 2), (2, 4, 1), (17, 129, 9), (64, 256, 48), (197, 64, 197), (200, 1024, 33)]
    for m, k, n in shapes:
        for mode in ("random", "max", "min", "mixed"):
            if mode == "random":
                a = rng.integers(-128, 128, (m, k))
                b = rng.integers(-127, 128, (k, n))
            elif mode == "max":          # (a + 128) * b pairs at their largest: 255 * 127 every product
                a = np.full((m, k), 127)
                b = np.full((k, n), 127)
            elif mode == "min":
                a = np.full((m, k), -128)
                b = np.full((k, n), 127)
            else:
                a = np.where(rng.random((m, k)) < 0.5, -128, 127)
                b = np.where(rng.random((k, n)) < 0.5, -127, 127)
            want = a.astype(I64) @ b.astype(I64)
            b8 = b.astype(np.int8)
            b8t = np.ascontiguousarray(b8.T).T        # the transposed layout LayerPlan stores B in
            for bl in (b8, b8t):
                got = int_mm(torch.from_numpy(a.astype(np.int8)), torch.from_numpy(_mm_layout(bl)))
                if got.dtype != torch.int32 or not np.array_equal(got.numpy().astype(I64), want):
                    return False
    return True


def _mm_layout(b8: np.ndarray) -> np.ndarray:
    """``b8`` as it is when its strides are exactly row-major or exactly a transpose with both sides
    > 1, else a fresh row-major copy. A transposed ``(K, N)`` view with ``K = 1`` has strides ``(1, 1)``
    (numpy calls it contiguous all the same), which torch 2.14's ``_int_mm`` on CPU gets wrong (found
    by tests/test_sim_layer.py)."""
    k, n = b8.shape
    s = b8.itemsize
    if b8.strides == (n * s, s) or (b8.strides == (s, k * s) and min(k, n) > 1):
        return b8
    return np.array(b8, order="C", copy=True)


def int8_backend():
    """The checked int8 GEMM ``f(a8, b8) -> int32`` (torch tensors), or None when unavailable.

    Cached per process; disabled by ``VITACCEL_INT8=0``, a missing ``torch._int_mm`` or a failed
    worst-case probe (``_probe``)."""
    if "fn" in _BACKEND:
        return _BACKEND["fn"]
    fn = None
    if os.environ.get("VITACCEL_INT8", "1") != "0":
        try:
            import torch

            cand = getattr(torch, "_int_mm", None)
            if cand is not None and _probe(cand):
                fn = cand
        except Exception:
            fn = None
    _BACKEND["fn"] = fn
    return fn


def int8_info() -> dict:
    """What the int8 path runs on: backend, oneDNN ISA, VNNI / AMX CPU flags (for benchmark reports)."""
    flags = set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    info = {"int8_path": int8_backend() is not None,
            "avx512_vnni": "avx512_vnni" in flags, "avx_vnni": "avx_vnni" in flags,
            "amx_int8": "amx_int8" in flags, "avx512f": "avx512f" in flags}
    try:
        import torch

        info["torch"] = torch.__version__
        info["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    except Exception:
        pass
    return info


def gemm_int8(a8: np.ndarray, b8: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """``a8 @ b8`` (int8 ``(M, K)`` x ``(K, N)``) as int32 through the checked backend.

    The caller has checked ``int8_k_ok``; ``out`` (int32 ``(M, N)``, C-contiguous) receives the result."""
    import torch

    fn = int8_backend()
    ta, tb = torch.from_numpy(_mm_layout(a8)), torch.from_numpy(_mm_layout(b8))
    if out is None:
        return fn(ta, tb).numpy()
    fn(ta, tb, out=torch.from_numpy(out))
    return out


def gemm_int8_groups(a8: np.ndarray, b8: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``out[g] = a8[g] @ b8[g]`` for ``G`` groups (int8 ``(G, M, K)`` x ``(G, K, N)`` -> int32, C-contiguous),
    one checked-backend call per group on views made once (the per-call overhead matters at 197 x 64)."""
    import torch

    fn = int8_backend()
    for a, b, o in zip(torch.from_numpy(a8).unbind(0), torch.from_numpy(b8).unbind(0), torch.from_numpy(out).unbind(0)):
        fn(a, b, out=o)
    return out


@njit(cache=True, parallel=True)
def decode_identity(q, offset, qmax, out):
    """``out[g, 0, r, j] = q[g, r, j] - offset`` for formats whose ``D`` is the code itself (``uniform``):
    one int8 digit plane; returns the number of codes outside ``[0, qmax]``."""
    g_n, m, k = q.shape
    rows = g_n * m
    nch = min(rows, 256)
    bad = np.zeros(nch, np.int64)
    for ch in prange(nch):
        nb = 0
        for gr in range(ch * rows // nch, (ch + 1) * rows // nch):
            g = gr // m
            r = gr - g * m
            qr = q[g, r]
            o0 = out[g, 0, r]
            for j in range(k):
                c = np.int64(qr[j])
                nb += (c < 0) | (c > qmax)
                o0[j] = np.int8(c - offset)
        bad[ch] = nb
    return bad.sum()


def packed_digit_table(tab: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """256-entry int32 table: the digit bytes of code ``c`` (``byte i`` = digit ``i``) and bit 31 set for
    codes that are invalid or outside the format's ``2^k`` codes (``decode_digits``)."""
    n = tab.shape[1]
    packed = np.full(256, np.int32(-(1 << 31)), np.int32)
    for c in range(min(len(tab), 256)):
        if valid[c]:
            v = 0
            for i in range(n):
                v |= (int(tab[c, i]) & 0xFF) << (8 * i)
            packed[c] = v
    return packed


@njit(cache=True, parallel=True)
def decode_digits(q, packed, n, out):
    """``out[g, i, r, j]`` = digit ``i`` of code ``q[g, r, j]`` (``packed_digit_table``) for codes ``q``
    ``(G, M, K)``: the int8 digit planes of ``D - O``; returns the number of invalid codes."""
    g_n, m, k = q.shape
    rows = g_n * m
    nch = min(rows, 256)
    bad = np.zeros(nch, np.int64)
    for ch in prange(nch):
        nb = 0
        for gr in range(ch * rows // nch, (ch + 1) * rows // nch):
            g = gr // m
            r = gr - g * m
            qr = q[g, r]
            o0 = out[g, 0, r]
            if n == 1:
                for j in range(k):
                    c = np.int64(qr[j])
                    p = packed[c & 255]
                    nb += (p < 0) | (c < 0) | (c > 255)
                    o0[j] = np.int8(p & 255)
            else:
                o1 = out[g, 1, r]
                for j in range(k):
                    c = np.int64(qr[j])
                    p = packed[c & 255]
                    nb += (p < 0) | (c < 0) | (c > 255)
                    o0[j] = np.int8(p & 255)
                    o1[j] = np.int8((p >> 8) & 255)
                for i in range(2, n):
                    oi = out[g, i, r]
                    for j in range(k):
                        oi[j] = np.int8((packed[np.int64(qr[j]) & 255] >> (8 * i)) & 255)
        bad[ch] = nb
    return bad.sum()
