"""Fast bit-accurate layer API of the integer datapath (docs/datapath.md, section 9), numba + BLAS.

``run_layer`` and ``run_encoder`` have the signatures and results of ``sim.layer.run_layer_reference``
and ``sim.layer.run_encoder_reference`` (equal integers, the same saturation counts, the same error
classes); see docs/simulator.md.

Pipeline of ``run_layer`` (each step a numba kernel unless noted):

1. cheap parameter validation with the reference's own helpers (``LayerSpec.validate`` incl. the
   static accumulator bound, outlier capacity);
2. ``gemm_path`` picks float32 / float64 BLAS or the int64 kernel from ``K``, ``Dmax``, ``Bmax``;
3. decode the A codes through the format's table straight into the GEMM operand dtype
   (``kernels_decode.decode_lut_2d``), counting invalid codes;
4. convert / validate ``b`` and compute ``colsum`` (``kernels_gemm.prepare_b``);
5. ``acc_raw = D @ b`` (numpy BLAS matmul, or ``gemm_int64``);
6. fused drain + requantiser (``kernels_gemm.drain_requant``): zero-point correction, ``<< FO``,
   outlier SpMM, accumulator range check on the actual values, two-stage requantisation, saturation.

Errors are raised in the reference's order: checks that are expensive to do up front (the range of
``b``) are only evaluated when some other error is about to be raised, so the happy path does not pay
for them twice.
"""
from __future__ import annotations

import threading

import numpy as np

from . import formats as F
from . import reference as ref
from . import kernels_encode
from .kernels_decode import as_int_codes, decode_into
from .kernels_gemm import (
    PATH_DTYPE,
    drain_requant,
    gemm_path,
    gemm_raw,
    outlier_csr,
    prepare_b,
    scan_outliers,
    requant_needs_checks,
)
from .kernels_requant import check_z_out, raise_requant_errors, requant_params
from .batched import PATHS, LayerPlan, allowed_paths
from .layer import EncoderResult, EncoderSpec, LayerResult, LayerSpec, run_encoder_with
from .reference import AccumulatorOverflowError, DatapathError

I64 = np.int64
_PATH_ORDER = ("float32", "float64", "int64")
_WORKSPACE = threading.local()


def _scratch(tag: str, shape: tuple, dtype) -> np.ndarray:
    """A reusable (per thread) scratch array for the GEMM operands, never returned to the caller
    (large fresh allocations cost page faults on every call)."""
    cache = getattr(_WORKSPACE, "arrays", None)
    if cache is None:
        cache = _WORKSPACE.arrays = {}
    key = (tag, shape, dtype)
    a = cache.get(key)
    if a is None:
        if len(cache) > 24:
            cache.clear()
        a = cache[key] = np.empty(shape, dtype)
    return a


def _rows_i64(v, m: int) -> np.ndarray:
    a = ref._i64(np.asarray(v)).reshape(-1)
    if a.size == m:
        return np.ascontiguousarray(a)
    return np.full(m, a[0] if a.size else 0, I64)


def layer_gemm_path(spec: LayerSpec, k: int) -> str:
    """The GEMM path ``run_layer`` takes for ``spec`` with reduction length ``k``: the first of
    ``layer_paths`` (``int8`` when the checked int8 backend exists and ``K * 256 * Bmax < 2^31``, else
    ``gemm_path`` on the format's ``Dmax`` and the ``sym`` format's ``Bmax = 2^(kb-1) - 1``)."""
    return layer_paths(spec, k)[0]


def layer_paths(spec: LayerSpec, k: int) -> list[str]:
    """Every exact GEMM path of ``spec`` at reduction length ``k``, preferred first (section 6)."""
    return allowed_paths(k, spec.dmax(), (1 << (spec.b_bits - 1)) - 1)


def _fast_single(spec: LayerSpec, q, outliers, b, path):
    """The batched fast path (``sim.batched.LayerPlan``) for one group, or None if it declines."""
    if q.ndim != 2 or q.dtype.kind not in "iu":
        return None
    bb = None if b is None else np.asarray(b)
    if bb is not None and (bb.ndim != 2 or bb.dtype.kind not in "iu"):
        return None
    o4 = None
    if outliers is not None and np.size(outliers):
        o = np.asarray(outliers)
        if o.ndim != 2 or o.shape[1] != 3 or o.dtype.kind not in "iu":
            return None
        o4 = np.concatenate([np.zeros((len(o), 1), I64), o.astype(I64)], axis=1)
    plan = LayerPlan(spec, q.shape[0], None if bb is None else bb.shape, path=path, dynamic_rows=False)
    res = plan.try_fast(q[None], o4, None if bb is None else bb[None], want_acc=True)
    return None if res is None else LayerResult(res.acc[0], res.out[0], res.saturations)


def _checked_path(spec: LayerSpec, k: int, path: str | None) -> str:
    """The GEMM path of a layer: ``path`` when given and exact for it (section 6 bound), else the
    fastest exact one (``gemm_path``); ``ValueError`` for an unknown or inexact forced path."""
    auto = gemm_path(k, spec.dmax(), (1 << (spec.b_bits - 1)) - 1)
    if path is None:
        return auto
    if path not in PATH_DTYPE:
        raise ValueError(f"unknown GEMM path {path!r}; expected one of {_PATH_ORDER}")
    if _PATH_ORDER.index(path) < _PATH_ORDER.index(auto):
        raise ValueError(f"{spec.name}: the {path} path is not exact for this layer (section 6 needs {auto})")
    return path


def run_layer(spec: LayerSpec, a_codes, outliers=None, b=None, *, path: str | None = None) -> LayerResult:
    """Run one layer bit-exactly: decode, GEMM, drain, check, requantise (section 9).

    Parameters
    ----------
    spec : LayerSpec
    a_codes : (M, K) int array of A codes.
    outliers : (n, 3) int array ``[row, col, val]`` or None.
    b : (K, N) int array or None; the B operand (defaults to ``spec.b``; ``qk``/``av`` pass it here).
    path : {None, "int8", "float32", "float64", "int64"}
        Force the GEMM path (testing); ``None`` uses ``layer_gemm_path``. A path that the exactness
        bound does not allow raises ``ValueError``.

    Returns
    -------
    LayerResult
        ``acc`` and ``out`` (int64) and the saturation count, equal to ``run_layer_reference``.

    The common case runs through the batched fast path (``sim.batched.LayerPlan`` with one group:
    int8 or BLAS GEMM, fused drain); anything it declines (an error about to be raised, unusual input
    types) takes the step-by-step path below, which raises the reference's errors in its order.
    """
    q = np.asarray(a_codes)
    if path is not None and path not in PATHS:
        raise ValueError(f"unknown GEMM path {path!r}; expected one of {PATHS}")
    fast = _fast_single(spec, q, outliers, b, path)
    if fast is not None:
        return fast
    if path == "int8":              # an exact path like the others: the checked path below decides
        path = None
    if q.ndim != 2:
        raise DatapathError(f"{spec.name}: A codes must be (M, K), got shape {q.shape}")
    F.check_bits(spec.b_bits)
    bb = np.asarray(spec.b if b is None else b)
    if bb.dtype.kind not in "iu":
        bb = ref._i64(bb)

    def b_first(exc: Exception):
        # the reference validates b (check_sym) before anything else: report a bad b first
        if bb.ndim >= 1:
            ref.check_sym(bb, spec.b_bits)
        return exc

    try:
        spec.validate(m=q.shape[0], b=bb)
    except ValueError as exc:
        raise b_first(exc) from None
    m, k = q.shape
    if k != bb.shape[0]:
        raise b_first(DatapathError(f"{spec.name}: A has K = {k} columns but B has K = {bb.shape[0]} rows"))
    n = bb.shape[1]
    o = np.zeros((0, 3), I64) if outliers is None else np.asarray(outliers)
    if np.size(o) and spec.fo == 0:
        raise b_first(DatapathError(f"{spec.name}: outliers given to a layer without an outlier path (FO = 0)"))
    o_ok, o_arr, optr = False, None, None
    if o.ndim == 2 and o.shape[1] == 3 and o.dtype.kind in "iu":
        o_arr = np.ascontiguousarray(o, dtype=I64)
        o_ok, optr, max_tile = scan_outliers(o_arr, m, k, int(spec.tile_rows))
        cap = spec.outlier_capacity
        o_ok = o_ok and (cap is None or max_tile <= cap)
    if not o_ok:           # let the reference raise its capacity error (or pass) in its order
        try:
            ref.check_outlier_capacity(o, m, spec.tile_rows, spec.outlier_capacity)
        except ValueError as exc:
            raise b_first(exc) from None

    dt = PATH_DTYPE[_checked_path(spec, k, path)]
    bmax = (1 << (spec.b_bits - 1)) - 1

    # 3. decode (reference order: codes are checked before the outlier list)
    qi = as_int_codes(q)
    d_op = _scratch("D", (m, k), dt)
    try:
        decode_into(qi, d_op, spec.a_kind, spec.a_bits, spec.a_base, spec.m0, spec.m1)
        if not o_ok:
            o_arr = ref.check_outliers(o, m, k)
            optr = outlier_csr(o_arr, m)[0]
    except ValueError as exc:
        raise b_first(exc) from None
    # 4. B operand
    bb = np.ascontiguousarray(bb)
    b_op = _scratch("B", (k, n), dt)
    colsum, nbad_b = prepare_b(bb, bmax, b_op)
    if nbad_b:
        ref.check_sym(bb, spec.b_bits)
        raise DatapathError(f"{spec.name}: {nbad_b} invalid sym {spec.b_bits}-bit code(s)")  # pragma: no cover
    # 5. dense GEMM
    raw = gemm_raw(d_op, b_op, _scratch("raw", (m, n), dt))
    # 6. drain + requantiser
    ocol, oval = np.ascontiguousarray(o_arr[:, 1]), np.ascontiguousarray(o_arr[:, 2])
    za = _rows_i64(spec.za, m)
    try:
        mr, sr, mc, sc, bq, z_out, lo, hi = requant_params(
            m, n, spec.mr, spec.sr, spec.mc, spec.sc, spec.bq, spec.z_out, spec.out_fmt, spec.out_bits)
        perr = None
    except DatapathError as exc:
        perr = exc
        mr = np.zeros(m, I64)
        sr, mc, sc, bq, z_out, lo, hi = 0, np.zeros(n, I64), np.zeros(n, I64), np.zeros(n, I64), 0, 0, 0
    acc = np.empty((m, n), I64)
    out = np.empty((m, n), I64)
    lim = 1 << (spec.acc_bits - 1)
    nbad_acc, sat, errs = drain_requant(
        np.ascontiguousarray(raw), za, colsum, int(spec.fo), optr, ocol, oval, bb, lim,
        perr is None, requant_needs_checks(spec.acc_bits), mr, sr, mc, sc, bq, z_out, lo, hi, acc, out)
    if nbad_acc:
        raise AccumulatorOverflowError(
            f"{spec.name}: {nbad_acc} accumulator value(s) outside the signed {spec.acc_bits}-bit range")
    if perr is not None:
        raise perr
    raise_requant_errors(errs)
    lo, hi = F.out_range(spec.out_fmt, spec.out_bits)
    check_z_out(z_out, spec.out_fmt, hi)
    return LayerResult(acc, out, int(sat))


def run_encoder(enc: EncoderSpec, x_fx, strict: bool = True) -> EncoderResult:
    """Encode a fixed-point tensor ``(M, K)`` with the numba encoders (section 8).

    The dispatch of ``sim.layer.run_encoder_reference`` (``sim.layer.run_encoder_with``) on the numba
    encoders: the same results and errors.
    """
    return run_encoder_with(kernels_encode, enc, x_fx, strict)
