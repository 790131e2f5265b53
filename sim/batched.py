"""Batched layer and encoder API of the simulator: many images (or image x head pairs) per call.

One call of ``run_layer_batch`` runs ``G`` *groups* of one layer -- the images of a batch for a linear
layer, or every (image, head) pair for ``q @ k^T`` / ``attn @ v`` -- with the exact results of ``G``
separate calls of ``sim.simulator.run_layer`` (and so of the reference, ``run_layer_batch_reference``):
the same integers, saturation counts and error classes. Per-patch parameters (``Mr[r]``, ``za[r]``),
outlier tiles and capacity stay per group (a tile of ``T`` rows starts at row 0 of every group, as
for one image). Batching removes the per-call costs that dominated the small shapes: validation and
parameter checks are done once per layer (``LayerPlan``), and a linear layer of a batch is **one GEMM**
of ``G * M`` rows.

Pipeline of ``LayerPlan.run`` (docs/datapath.md sections 4-7):

1. outlier list ``[group, row, col, val]``: validity, CSR pointers, per-group tile capacity
   (``kernels_gemm.scan_outliers_groups``);
2. decode the codes into the operand of the GEMM path chosen from the accumulator bound of section 6:
   ``int8`` (balanced base-256 digit planes, ``kernels_int8``), else ``float32`` / ``float64`` BLAS,
   else ``int64`` (numba);
3. the GEMM: one ``torch._int_mm`` / BLAS call for a shared B operand, one per group for run-time B;
4. ``kernels_gemm.drain_requant_groups``: digits combined in int64, zero-point correction, ``<< FO``,
   outliers, accumulator range check on the actual values, two-stage requantiser, saturation count;
   fixed-point outputs may come back directly as ``from_fixed`` floats (``host_frac``).

Anything unusual (an invalid code or B value, an outlier list that is unsorted or over capacity, an
accumulator value beyond ``acc_bits``, a requantiser range fault, invalid parameters) makes the call
re-run group by group through ``run_layer``, which raises the reference's error in the reference's
order: the batched fast path never decides an error case by itself.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from . import formats as F
from . import kernels_encode, kernels_fused
from . import reference as ref
from .kernels_decode import decode_lut_2d, lut_for
from .kernels_gemm import (
    FLOAT32_EXACT,
    FLOAT64_EXACT,
    drain_requant_groups,
    gemm_int64,
    prepare_b_groups,
    requant_needs_checks,
    scan_outliers_groups,
)
from .kernels_int8 import (decode_digits, decode_identity, digit_lut, gemm_int8, gemm_int8_groups, int8_backend,
                          int8_k_ok, is_identity, packed_digit_table)
from .kernels_requant import requant_params
from .layer import EncoderSpec, LayerSpec, run_encoder_reference, run_layer_reference

I64 = np.int64
#: GEMM paths in order of preference.
PATHS = ("int8", "float32", "float64", "int64")
_FLOAT = {"float32": np.float32, "float64": np.float64}


@dataclass
class BatchLayerResult:
    """Exact outputs of ``G`` groups of one layer."""

    out: np.ndarray                    # (G, M, N) output integers (or from_fixed floats with host_frac)
    saturations: int = 0
    acc: np.ndarray | None = None      # (G, M, N) int64 section 6 ``acc`` (if requested)


@dataclass
class BatchEncoderResult:
    """Codes of ``G`` groups from one encoder; outliers as ``[group, row, col, val]``."""

    codes: np.ndarray                  # (G, M, K)
    outliers: np.ndarray               # (n, 4) int64
    saturations: int = 0               # code clipping
    outlier_overflows: int = 0
    host_saturations: int = 0          # to_fixed range faults (section 1)
    row_index: np.ndarray | None = None  # (G, M) dynamic per-patch ladder index
    row_zero: np.ndarray | None = None   # (G, M) dynamic per-patch zero point
    x_fx: np.ndarray | None = None       # (G, M, K) fixed-point input (if requested)


def allowed_paths(k: int, dmax: int, bmax: int) -> list[str]:
    """The exact GEMM paths for reduction length ``k``, ``max|D| = dmax``, ``max|b| = bmax`` (section 6):
    ``int8`` when the checked int8 backend exists and ``K * 256 * Bmax < 2^31``; ``float32`` /
    ``float64`` when ``K * Dmax * Bmax < 2^24`` / ``2^53``; ``int64`` always."""
    worst = int(k) * int(dmax) * int(bmax)
    out = []
    if int8_k_ok(k, bmax) and int8_backend() is not None:
        out.append("int8")
    if worst < FLOAT32_EXACT:
        out.append("float32")
    if worst < FLOAT64_EXACT:
        out.append("float64")
    out.append("int64")
    return out


def _rows2d(v, g: int, m: int) -> np.ndarray:
    a = ref._i64(np.asarray(v))
    if a.ndim == 2:
        return np.ascontiguousarray(a.reshape(g, m))
    a = a.reshape(-1)
    return np.ascontiguousarray(np.broadcast_to(a if a.size == m else a[:1], (g, m)))


class _Fallback(Exception):
    """Internal: the fast path saw something unusual; re-run group by group."""


class LayerPlan:
    """One layer prepared for repeated batched calls (section 9): validated once, B operand converted once.

    Parameters
    ----------
    spec : LayerSpec
    m : int
        Rows per group (tokens of one image).
    b_shape : (K, N), optional
        Shape of a run-time B operand (``qk``/``av``: ``spec.b`` is an empty placeholder); default
        ``spec.b.shape``.
    path : str, optional
        Force a GEMM path (tests); ``ValueError`` if the bound does not allow it.
    """

    def __init__(self, spec: LayerSpec, m: int, b_shape: tuple | None = None, path: str | None = None,
                 dynamic_rows: bool | None = None):
        self.spec, self.m = spec, int(m)
        shared = b_shape is None
        bb = np.asarray(spec.b)
        self.k, self.n = (int(bb.shape[0]), int(bb.shape[1])) if shared else (int(b_shape[0]), int(b_shape[1]))
        self.shared_b = shared
        self.dynamic_rows = bool(spec.meta.get("dynamic_rows", False)) if dynamic_rows is None else dynamic_rows
        self.bmax = (1 << (int(spec.b_bits) - 1)) - 1 if spec.b_bits in F.BITS else 127
        self.error: Exception | None = None
        try:
            if bb.ndim != 2 or (shared and bb.dtype.kind not in "iu"):
                raise _Fallback("B operand")
            self._prepare(bb if shared else np.zeros((self.k, self.n), np.int8))
        except (ValueError, _Fallback) as exc:            # any spec problem: run_layer raises it per group
            self.error = exc
        if path is not None and path not in PATHS:
            raise ValueError(f"unknown GEMM path {path!r}; expected one of {PATHS}")
        self.path = "int64"
        if self.error is None:
            allowed = allowed_paths(self.k, self.dmax, self.bmax)
            if path is not None and path not in allowed:
                raise ValueError(f"{spec.name}: the {path} path is not exact for this layer (allowed: {allowed})")
            self.path = path or allowed[0]
        self.b_op = None
        self.colsum = None
        if self.error is None:
            self._tables()
            if shared:
                self.b_op, self.colsum = self._prep_b(bb[None])

    # -- set-up ---------------------------------------------------------------------------------
    def _prepare(self, b_check: np.ndarray) -> None:
        spec = self.spec
        if self.dynamic_rows:         # Mr / za come with every call (checked there); validate the rest
            spec = replace(spec, mr=np.zeros(1, I64), za=np.zeros(1, I64))
        spec.validate(m=self.m, b=b_check)
        self.dmax = spec.dmax()
        self.rq = requant_params(self.m, self.n, spec.mr, spec.sr, spec.mc, spec.sc, spec.bq, spec.z_out,
                                 spec.out_fmt, spec.out_bits)
        lo, hi = F.out_range(spec.out_fmt, spec.out_bits)
        if spec.out_fmt == "ucode" and not 0 <= spec.z_out <= hi or spec.out_fmt != "ucode" and spec.z_out != 0:
            raise _Fallback("z_out")

    def _tables(self) -> None:
        spec = self.spec
        self.lut_i64, self.valid = lut_for(spec.a_kind, spec.a_bits, spec.a_base, spec.m0, spec.m1)
        if self.path == "int8":
            self.digits, self.offset = digit_lut(self.lut_i64, self.valid)
            self.identity = self.digits.shape[1] == 1 and is_identity(self.lut_i64, self.valid)
            self.packed = packed_digit_table(self.digits, self.valid)
        else:
            self.offset = 0
            dt = _FLOAT.get(self.path, I64)
            self.lut = lut_for(spec.a_kind, spec.a_bits, spec.a_base, spec.m0, spec.m1, dt)[0]

    def _op_dtype(self):
        return np.int8 if self.path == "int8" else _FLOAT.get(self.path, I64)

    def _prep_b(self, b3: np.ndarray):
        b3 = np.ascontiguousarray(b3)
        if b3.dtype.kind not in "iu":
            raise _Fallback("non-integer B")
        if self.path == "int8" and b3.shape[0] == 1:
            # a shared int8 B operand is stored transposed (N, K): oneDNN's int8 GEMM is fastest with it
            # (for K = 1 the view's strides are ambiguous; ``gemm_int8`` passes a row-major copy then)
            out = np.empty((1, b3.shape[2], b3.shape[1]), np.int8).transpose(0, 2, 1)
        else:
            out = np.empty(b3.shape, self._op_dtype())
        colsum = np.empty((b3.shape[0], b3.shape[2]), I64)
        if prepare_b_groups(b3, self.bmax, out, colsum):
            raise _Fallback("invalid B code")
        return out, colsum

    # -- one call -------------------------------------------------------------------------------
    def run(self, a_codes, outliers=None, b=None, *, mr=None, za=None, host_frac: int | None = None,
            out_dtype=I64, want_acc: bool = False) -> BatchLayerResult:
        """Run ``G`` groups: ``a_codes`` ``(G, M, K)``; ``outliers`` ``(n, 4)`` ``[group, row, col, val]``
        sorted by group, row, column; ``b`` ``(G, K, N)`` for a run-time B operand; ``mr`` / ``za``
        ``(G, M)`` per-row overrides (dynamic per-patch operands, section 8.1.1). ``host_frac`` returns a
        fixed-point output as ``from_fixed`` float32 values. Equal to ``G`` calls of ``run_layer``."""
        q = np.asarray(a_codes)
        res = self.try_fast(q, outliers, b, mr=mr, za=za, host_frac=host_frac, out_dtype=out_dtype,
                            want_acc=want_acc)
        if res is None:
            return _per_group(self.spec, q, outliers, b, mr, za, host_frac, out_dtype, want_acc)
        return res

    def try_fast(self, q, outliers=None, b=None, *, mr=None, za=None, host_frac=None, out_dtype=I64,
                 want_acc=False) -> BatchLayerResult | None:
        """``run`` without the fallback: None when the call needs the group-by-group path."""
        try:
            return self._fast(np.asarray(q), outliers, b, mr, za, host_frac, out_dtype, want_acc)
        except _Fallback:
            return None

    def _fast(self, q, outliers, b, mr, za, host_frac, out_dtype, want_acc) -> BatchLayerResult:
        spec = self.spec
        if self.error is not None or q.ndim != 3 or q.shape[1:] != (self.m, self.k) or q.dtype.kind not in "iu":
            raise _Fallback("shape")
        g = q.shape[0]
        if self.shared_b == (b is not None):
            raise _Fallback("B operand")
        mr_r, sr, mc, sc, bq, z_out, lo, hi = self.rq
        if self.dynamic_rows and (mr is None or za is None):
            raise _Fallback("dynamic rows need Mr and za")
        mr2 = _rows2d(mr_r if mr is None else mr, g, self.m)
        za2 = _rows2d(spec.za if za is None else za, g, self.m)
        if mr is not None and (mr2.min() < 0 or mr2.max() > (1 << sr) or mr2.max() >= (1 << F.MULT_BITS)):
            raise _Fallback("Mr")
        if za is not None:
            zmax = int(np.abs(za2).max()) if za2.size else 0
            cap = spec.outlier_capacity if spec.fo else 0
            if ref.acc_bits_required(self.k, self.dmax, zmax, spec.b_bits, spec.fo, cap) > spec.acc_bits:
                raise _Fallback("static bound")
        optr, ocol, oval = self._outliers(outliers, g)
        # decode
        qc = np.ascontiguousarray(q)
        if self.path == "int8" and self.identity and self.offset == 0 and qc.dtype == np.uint8 and len(self.valid) <= 128:
            # uint8 codes below 128 are their own int8 digit: check the range, reinterpret, no copy
            nbad = int(qc.size > 0 and int(qc.max()) > len(self.valid) - 1)
            op = qc.view(np.int8).reshape(g, 1, self.m, self.k)
        else:
            op = np.empty((g, self._digits_n(), self.m, self.k), self._op_dtype())
            if self.path == "int8" and self.identity:
                nbad = decode_identity(qc, self.offset, len(self.valid) - 1, op)
            elif self.path == "int8":
                nbad = decode_digits(qc, self.packed, self.digits.shape[1], op)
            else:
                nbad = decode_lut_2d(qc.reshape(g * self.m, self.k), self.lut, self.valid,
                                     op.reshape(g * self.m, self.k))
        if nbad:
            raise _Fallback("invalid A code")
        b_op, colsum, b_raw = self.b_op, self.colsum, None
        if b is not None:
            b_raw = np.ascontiguousarray(b)
            if b_raw.ndim != 3 or b_raw.shape != (g, self.k, self.n):
                raise _Fallback("B shape")
            b_op, colsum = self._prep_b(b_raw)
        raw = self._gemm(op, b_op)
        za_eff = za2 - self.offset if self.offset else za2
        if host_frac is not None:
            out = np.empty((g, self.m, self.n), np.float32)
            host_scale = 2.0 ** -int(host_frac)
        else:
            out = np.empty((g, self.m, self.n), out_dtype)
            host_scale = 0.0
        acc = np.empty((g, self.m, self.n) if want_acc else (1, 1, 1), I64)
        lim = 1 << (spec.acc_bits - 1)
        # proven: spec.validate (in _prepare) checked acc_bits against the bound for spec.za, the za
        # override was checked above, codes and the outlier tiles are checked before the GEMM
        nbad_acc, sat, errs = drain_requant_groups(
            raw, za_eff, colsum, int(spec.fo), optr, ocol, oval, b_op, lim, True, True,
            requant_needs_checks(spec.acc_bits), mr2, sr, mc, sc, bq, z_out, lo, hi, host_scale, want_acc, acc, out)
        if nbad_acc or errs.any():
            raise _Fallback("accumulator / requantiser range")
        return BatchLayerResult(out, int(sat), acc if want_acc else None)

    def _digits_n(self) -> int:
        return self.digits.shape[1] if self.path == "int8" else 1

    def _outliers(self, outliers, g):
        spec = self.spec
        if outliers is None or np.size(outliers) == 0:
            return np.zeros(g * self.m + 1, I64), np.zeros(0, I64), np.zeros(0, I64)
        if spec.fo == 0:
            raise _Fallback("outliers without an outlier path")
        o = np.asarray(outliers)
        if o.ndim != 2 or o.shape[1] != 4 or o.dtype.kind not in "iu":
            raise _Fallback("outlier list")
        o = np.ascontiguousarray(o, dtype=I64)
        ok, optr, max_tile = scan_outliers_groups(o, g, self.m, self.k, int(spec.tile_rows))
        if not ok or (spec.outlier_capacity is not None and max_tile > spec.outlier_capacity):
            raise _Fallback("outliers")
        return optr, np.ascontiguousarray(o[:, 2]), np.ascontiguousarray(o[:, 3])

    def _gemm(self, op: np.ndarray, b_op: np.ndarray) -> np.ndarray:
        """``raw[g, i] = op[g, i] @ b_op[g or 0]`` for every group and digit plane."""
        g, nd, m, k = op.shape
        n = b_op.shape[2]
        if self.path == "int8":
            raw = np.empty((g, nd, m, n), np.int32)
            if b_op.shape[0] == 1:
                gemm_int8(op.reshape(g * nd * m, k), b_op[0], raw.reshape(g * nd * m, n))
            else:
                gemm_int8_groups(op.reshape(g, nd * m, k), b_op, raw.reshape(g, nd * m, n))
            return raw
        if self.path == "int64":
            raw = np.empty((g, 1, m, n), I64)
            for j in range(g):
                raw[j, 0] = gemm_int64(op[j, 0], b_op[j if b_op.shape[0] > 1 else 0])
            return raw
        if b_op.shape[0] == 1:
            return np.matmul(op.reshape(g * m, k), b_op[0]).reshape(g, 1, m, n)
        return np.matmul(op[:, 0], b_op)[:, None]


def _per_group(spec, q, outliers, b, mr, za, host_frac, out_dtype, want_acc, run_layer=None) -> BatchLayerResult:
    """``G`` calls of ``run_layer`` (or ``run_layer``-like ``run_layer``): the reference's errors and order."""
    if run_layer is None:
        from .simulator import run_layer
    q = np.asarray(q)
    if q.ndim != 3:
        raise ref.DatapathError(f"{spec.name}: batched A codes must be (G, M, K), got shape {q.shape}")
    g, m = q.shape[0], q.shape[1]
    o = None if outliers is None or np.size(outliers) == 0 else np.asarray(outliers).reshape(-1, 4)
    outs, accs, sat = [], [], 0
    for j in range(g):
        sp = spec
        if mr is not None or za is not None:
            sp = replace(spec, mr=spec.mr if mr is None else _rows2d(mr, g, m)[j],
                         za=spec.za if za is None else _rows2d(za, g, m)[j])
        oj = None if o is None else o[o[:, 0] == j][:, 1:]
        res = run_layer(sp, q[j], oj if oj is not None and len(oj) else None, None if b is None else b[j])
        out = np.asarray(res.out)
        outs.append(ref.from_fixed(out, host_frac) if host_frac is not None else out.astype(out_dtype))
        accs.append(np.asarray(res.acc))
        sat += int(res.saturations)
    shape = (0, m, 0)
    out = np.stack(outs) if outs else np.zeros(shape, np.float32 if host_frac is not None else out_dtype)
    return BatchLayerResult(out, sat, (np.stack(accs) if accs else np.zeros(shape, I64)) if want_acc else None)


def run_layer_batch(spec: LayerSpec, a_codes, outliers=None, b=None, *, mr=None, za=None, path: str | None = None,
                    host_frac: int | None = None, out_dtype=I64, want_acc: bool = True) -> BatchLayerResult:
    """Run ``G`` groups of one layer (``a_codes`` ``(G, M, K)``) with the numba/int8 simulator; see
    ``LayerPlan.run``. Equal to ``G`` calls of ``sim.simulator.run_layer`` (and of the reference)."""
    q = np.asarray(a_codes)
    if q.ndim != 3:
        raise ref.DatapathError(f"{spec.name}: batched A codes must be (G, M, K), got shape {q.shape}")
    bshape = None if b is None else np.shape(b)[1:]
    if bshape is not None and len(bshape) != 2:
        return _per_group(spec, q, outliers, b, mr, za, host_frac, out_dtype, want_acc)
    plan = LayerPlan(spec, q.shape[1], bshape, path=path, dynamic_rows=mr is not None or za is not None)
    return plan.run(q, outliers, b, mr=mr, za=za, host_frac=host_frac, out_dtype=out_dtype, want_acc=want_acc)


def run_layer_batch_reference(spec: LayerSpec, a_codes, outliers=None, b=None, *, mr=None, za=None,
                              host_frac: int | None = None, out_dtype=I64, want_acc: bool = True) -> BatchLayerResult:
    """``G`` calls of the numpy reference ``run_layer_reference`` (the expected values of the batch API)."""
    return _per_group(spec, a_codes, outliers, b, mr, za, host_frac, out_dtype, want_acc, run_layer=run_layer_reference)


# --------------------------------------------------------------------------------------------------
# encoders
# --------------------------------------------------------------------------------------------------

def _tile_rows(v, g: int, m: int) -> np.ndarray:
    a = ref._i64(np.asarray(v)).reshape(-1)
    return a if a.size == 1 else np.tile(a, g)


class _EncFallback(Exception):
    """Internal: the fused encoder saw something the reference rejects; take the unfused path."""


class EncoderPlan:
    """One encoder prepared for repeated batched calls: parameters checked once, threshold tables of the
    log encoders built once (``sim.kernels_fused``); ``run`` equals ``run_encoder_batch``."""

    def __init__(self, enc: EncoderSpec, m: int):
        self.enc, self.m = enc, int(m)
        self.ok = True
        try:
            self._check()
        except (ValueError, _EncFallback):
            self.ok = False

    def _check(self) -> None:
        enc = self.enc
        F.check_bits(enc.bits)
        if enc.in_bits > 32:
            raise _EncFallback("in_bits")
        self.scale = 2.0 ** int(enc.in_frac)
        self.qhi = (1 << enc.bits) - 1
        if enc.kind == "uniform":
            if enc.dynamic:
                self.ladder_r, self.ladder_t = (np.ascontiguousarray(a) for a in ref.check_ladder(
                    enc.ladder_r, enc.ladder_t, enc.se))
                self.r, self.z = np.ones(1, I64), np.zeros(1, I64)
            else:
                self.r = np.ascontiguousarray(ref._i64(enc.r).reshape(-1))
                self.z = np.ascontiguousarray(ref._i64(enc.z).reshape(-1))
                if self.r.size not in (1, self.m) or self.z.size not in (1, self.m):
                    raise _EncFallback("rows")
                ref._check_recip(self.r, enc.se)
                if np.any(self.z < 0) or np.any(self.z > self.qhi):
                    raise _EncFallback("zero point")
                self.ladder_r = self.ladder_t = np.ones(1, I64)
            if enc.alpha_fx is not None and enc.se < enc.fo:
                raise _EncFallback("SE < FO")
            return
        if enc.kind == "log2":
            thr = kernels_fused.log_code_table("log2", enc.bits, frac_bits=int(enc.in_frac))
            self.zero_thr = int(thr[0])
            self.thr, self.steps = kernels_fused.padded_table(thr[1:])
            return
        self.r0 = int(np.asarray(enc.r).reshape(-1)[0])
        ref._check_recip(self.r0, enc.se)
        if enc.kind == "shiftlog2":
            if abs(int(enc.sh)) >= (1 << 31):
                raise _EncFallback("SH")
            self.thr, self.steps = kernels_fused.padded_table(kernels_fused.log_code_table("shiftlog2", enc.bits,
                    enc.base))
            return
        if enc.kind == "three_region":
            ref._check_m(enc.m0, enc.m1)
            return
        raise _EncFallback("kind")

    def run(self, x_host, strict: bool = True) -> BatchEncoderResult:
        x = np.asarray(x_host)
        if self.ok and x.ndim == 3 and x.shape[1] == self.m and x.dtype in (np.float32, np.float64):
            try:
                return self._fast(np.ascontiguousarray(x), strict)
            except _EncFallback:
                pass
        return run_encoder_batch(self.enc, x, strict)

    def _fast(self, x, strict) -> BatchEncoderResult:
        enc = self.enc
        g, m, k = x.shape
        rows = g * m
        codes = np.empty((g, m, k), np.uint8)
        if enc.kind == "uniform":
            return self._uniform(x.reshape(rows, k), codes, strict)
        flat, qf = x.reshape(-1), codes.reshape(-1)
        if enc.kind == "log2":
            hs, nf, neg = kernels_fused.fused_log_table(flat, self.scale, 0, 1, 0, True, self.zero_thr,
                                                        F.log2_zero_code(enc.bits), F.log2_qmax(enc.bits), self.thr,
                                                        self.steps, qf)
            if nf or neg:
                raise _EncFallback("input")
        elif enc.kind == "shiftlog2":
            hs, nf, _ = kernels_fused.fused_log_table(flat, self.scale, int(enc.sh), self.r0, int(enc.se), False, 0, 0,
                                                      F.shiftlog2_qmax(enc.bits, enc.base), self.thr, self.steps, qf)
        else:
            hs, nf = kernels_fused.fused_three_region(flat, self.scale, self.r0, int(enc.se), int(enc.bits),
                                                      int(enc.m0), int(enc.m1), qf)
        if nf:
            raise _EncFallback("non-finite")
        return BatchEncoderResult(codes, np.zeros((0, 4), I64), 0, 0, int(hs))

    def _uniform(self, x2, codes, strict) -> BatchEncoderResult:
        enc = self.enc
        rows, k = x2.shape
        use_alpha = enc.alpha_fx is not None
        alpha = min(max(int(enc.alpha_fx), -1), 1 << 40) if use_alpha else 0
        q2 = codes.reshape(rows, k)
        n_out = np.empty(rows, I64)
        j_row, z_row, r_row = np.empty(rows, I64), np.empty(rows, I64), np.empty(rows, I64)
        hs, nf, cs = kernels_fused.fused_uniform(x2, self.scale, self.m, self.r, self.z, int(enc.se), self.qhi, alpha,
                                                 use_alpha, enc.dynamic, self.ladder_r, self.ladder_t,
                                                 q2, n_out, j_row, z_row, r_row)
        if nf:
            raise _EncFallback("non-finite")
        o4, nof = np.zeros((0, 4), I64), 0
        if use_alpha:
            optr = np.zeros(rows + 1, I64)
            np.cumsum(n_out, out=optr[1:])
            n = int(optr[-1])
            if n:
                r_, c_, v_ = np.empty(n, I64), np.empty(n, I64), np.empty(n, I64)
                nof = int(kernels_fused.fused_outliers(x2, self.scale, r_row, int(enc.se - enc.fo), alpha, optr,
                                                       r_, c_, v_))
                if strict and nof:
                    raise _EncFallback("outlier overflow")
                o4 = np.empty((n, 4), I64)
                o4[:, 0], o4[:, 1] = np.divmod(r_, self.m)
                o4[:, 2], o4[:, 3] = c_, v_
        g = rows // self.m
        jr = (j_row.reshape(g, self.m), z_row.reshape(g, self.m)) if enc.dynamic else (None, None)
        return BatchEncoderResult(codes, o4, int(cs), nof, int(hs), jr[0], jr[1])


def run_encoder_batch(enc: EncoderSpec, x_host, strict: bool = True, *, reference: bool = False,
                      keep_x_fx: bool = False) -> BatchEncoderResult:
    """Encode ``G`` groups of a host float tensor ``(G, M, K)``: ``to_fixed`` at the encoder's fraction
    bits (section 1), then the encoder (section 8) on all ``G * M`` rows at once with per-patch ``R``/``z``
    repeated per group (every encoder is row-local, so this equals ``G`` separate calls).

    ``reference`` uses the numpy reference (``to_fixed``, ``run_encoder_reference``) instead of numba.
    """
    x = np.asarray(x_host)
    if x.ndim != 3:
        raise ref.DatapathError(f"batched encoder input must be (G, M, K), got shape {x.shape}")
    g, m, k = x.shape
    if reference:
        x_fx, nsat = ref.to_fixed(x, enc.in_frac, enc.in_bits)
    else:
        x_fx, nsat = kernels_encode.to_fixed(x, enc.in_frac, enc.in_bits,
                                             out_dtype=np.int32 if enc.in_bits <= 32 else I64)
    x2 = x_fx.reshape(g * m, k)
    enc_t = enc if enc.dynamic else replace(enc, r=_tile_rows(enc.r, g, m), z=_tile_rows(enc.z, g, m))
    if reference:
        res = run_encoder_reference(enc_t, x2, strict)
    else:
        from .simulator import run_encoder
        res = run_encoder(enc_t, x2, strict)
    o = np.asarray(res.outliers).reshape(-1, 3)
    o4 = np.empty((len(o), 4), I64)
    if len(o):
        o4[:, 0], o4[:, 1] = np.divmod(o[:, 0], m)
        o4[:, 2:] = o[:, 1:]
    rows = (None, None) if res.row_index is None else (np.asarray(res.row_index).reshape(g, m),
                                                        np.asarray(res.row_zero).reshape(g, m))
    return BatchEncoderResult(np.asarray(res.codes).reshape(g, m, k), o4, int(res.saturations),
                              int(res.outlier_overflows), nsat, rows[0], rows[1],
                              x_fx.reshape(g, m, k) if keep_x_fx else None)
