"""Layer-level description and API of the integer datapath (docs/datapath.md, section 9).

``LayerSpec`` describes one GEMM layer of an integer program (codes, weights, scales as integer
multipliers, outlier path, output format); ``EncoderSpec`` describes the quantizer unit that turns a
host fixed-point tensor into the layer's A codes. ``run_layer_reference`` / ``run_encoder_reference``
evaluate them with the plain numpy reference (``sim/reference.py``); the numba simulator provides
``run_layer`` / ``run_encoder`` with the same signatures and bit-identical results.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields

import numpy as np

from . import formats as F
from . import reference as ref
from .reference import DatapathError

I64 = np.int64


@dataclass
class LayerResult:
    """Exact integer outputs of one layer."""

    acc: np.ndarray            # (M, N) int64, section 6 ``acc`` (after zero-point correction and outliers)
    out: np.ndarray            # (M, N) int64, section 7 output codes / fixed point
    saturations: int = 0       # output elements clamped by the requantizer


@dataclass
class LayerSpec:
    """One GEMM layer of an integer program (section 9).

    Attributes
    ----------
    name : str
    op : {"linear", "qk", "av"}
    a_kind : {"uniform", "log2", "shiftlog2", "three_region"}
    a_bits : int
    b : (K, N) int array of ``sym`` codes (for ``qk``/``av`` the B operand comes at run time and ``b``
        may be an empty placeholder; pass ``b=`` to ``run_layer``)
    b_bits : int
    za : (1,) or (M,) int array, the A zero point (``uniform`` z, ``shiftlog2`` Zs, else 0)
    a_base : "2" or "sqrt2" (``shiftlog2`` only)
    m0, m1 : int (``three_region`` only)
    fo : int, outlier fraction bits (2 with an outlier path, else 0)
    outlier_capacity : int or None, per row tile of ``tile_rows`` rows
    tile_rows : int
    mr : (1,) or (M,) int array; sr : int; mc, sc, bq : (N,) int arrays; z_out : int
    out_fmt : {"ucode", "scode", "fixed16", "fixed32"}; out_bits : int; out_frac : int (fixed formats)
    acc_bits : int, configured accumulator width (checked against the bound of section 6)
    """

    name: str
    op: str
    a_kind: str
    a_bits: int
    b: np.ndarray
    b_bits: int
    za: np.ndarray
    mr: np.ndarray
    sr: int
    mc: np.ndarray
    sc: np.ndarray
    bq: np.ndarray
    out_fmt: str
    out_bits: int
    acc_bits: int
    z_out: int = 0
    out_frac: int = 0
    a_base: str = "2"
    m0: int = 0
    m1: int = 0
    fo: int = 0
    outlier_capacity: int | None = None
    tile_rows: int = 16
    meta: dict = field(default_factory=dict)

    # ---------------------------------------------------------------------------------------------
    def dmax(self) -> int:
        return ref.format_dmax(self.a_kind, self.a_bits, base=self.a_base, m0=self.m0, m1=self.m1)

    def acc_bits_required(self, k: int) -> int:
        zmax = int(np.max(np.abs(self.za))) if np.size(self.za) else 0
        cap = self.outlier_capacity if self.fo else 0
        return ref.acc_bits_required(k, self.dmax(), zmax, self.b_bits, self.fo, cap)

    def validate(self, m: int | None = None, b: np.ndarray | None = None) -> None:
        """Raise ``DatapathError`` on inconsistent shapes, widths or parameters."""
        if self.op not in F.OPS:
            raise DatapathError(f"{self.name}: unknown op {self.op!r}")
        if self.a_kind not in F.A_FORMATS:
            raise DatapathError(f"{self.name}: unknown A format {self.a_kind!r}")
        if self.out_fmt not in F.OUT_FORMATS:
            raise DatapathError(f"{self.name}: unknown output format {self.out_fmt!r}")
        try:
            F.check_bits(self.a_bits, "A bit width")
            F.check_bits(self.b_bits, "B bit width")
            if self.out_fmt in ("ucode", "scode"):
                F.check_bits(self.out_bits, "output bit width")
        except ValueError as exc:
            raise DatapathError(f"{self.name}: {exc}") from None
        if self.a_kind == "shiftlog2" and self.a_base not in F.LOG_BASES:
            raise DatapathError(f"{self.name}: unknown log base {self.a_base!r}")
        if not 0 <= self.fo <= 4:
            raise DatapathError(f"{self.name}: FO must be in 0..4")
        if not 1 <= self.acc_bits <= F.ACC_BITS_MAX:
            raise DatapathError(f"{self.name}: acc_bits must be in 1..{F.ACC_BITS_MAX}")
        bb = self.b if b is None else b
        bb = np.asarray(bb)
        if bb.ndim != 2:
            raise DatapathError(f"{self.name}: B must be a (K, N) matrix, got shape {bb.shape}")
        k, n = bb.shape
        for nm in ("mc", "sc", "bq"):
            v = np.asarray(getattr(self, nm)).reshape(-1)
            if v.size not in (1, n):
                raise DatapathError(f"{self.name}: {nm} has {v.size} entries for N = {n} columns")
        if m is not None:
            for nm in ("mr", "za"):
                v = np.asarray(getattr(self, nm)).reshape(-1)
                if v.size not in (1, m):
                    raise DatapathError(f"{self.name}: {nm} has {v.size} entries for M = {m} rows")
        need = self.acc_bits_required(k)
        if need > self.acc_bits:
            raise ref.AccumulatorOverflowError(
                f"{self.name}: a {self.acc_bits}-bit accumulator is too narrow for K = {k} "
                f"({self.a_kind} {self.a_bits}-bit x sym {self.b_bits}-bit, FO = {self.fo}); "
                f"the bound of section 6 needs {need} bits"
            )

    def decode(self, q) -> np.ndarray:
        return ref.decode(q, self.a_kind, self.a_bits, base=self.a_base, m0=self.m0, m1=self.m1)

    def to_arrays(self) -> dict:
        """Flatten to plain values / arrays (for serialisation)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass
class EncoderSpec:
    """The quantizer unit producing a layer's A codes from a host fixed-point tensor (section 8).

    ``kind``: ``uniform`` (per tensor or, with ``r``/``z`` of length M, per patch; with ``alpha_fx`` it
    extracts outliers), ``log2``, ``shiftlog2``, ``three_region``. ``in_frac`` is the fraction bits of
    the fixed-point input (``to_fixed``) and ``in_bits`` its width.

    With ``ladder_r`` / ``ladder_t`` set (``uniform`` only) the encoder is the *dynamic* per-patch
    encoder of section 8.1.1: ``r`` and ``z`` are ignored, each row's reciprocal and zero point are
    chosen at run time from the scale ladder, and the result carries the per-row ladder index and
    zero point (``EncoderResult.row_index``, ``.row_zero``) for the consuming GEMM.
    """

    kind: str
    bits: int
    in_frac: int
    in_bits: int = 32
    r: np.ndarray = field(default_factory=lambda: np.ones(1, I64))
    se: int = 0
    z: np.ndarray = field(default_factory=lambda: np.zeros(1, I64))
    alpha_fx: int | None = None
    fo: int = F.OUTLIER_FRAC_BITS
    sh: int = 0
    base: str = "2"
    m0: int = 0
    m1: int = 0
    ladder_r: np.ndarray | None = None
    ladder_t: np.ndarray | None = None

    @property
    def dynamic(self) -> bool:
        return self.ladder_r is not None


@dataclass
class EncoderResult:
    codes: np.ndarray
    outliers: np.ndarray = field(default_factory=lambda: np.zeros((0, 3), I64))
    saturations: int = 0
    outlier_overflows: int = 0
    row_index: np.ndarray | None = None  #: dynamic per-patch: ladder index j[r] per row
    row_zero: np.ndarray | None = None   #: dynamic per-patch: zero point z[r] per row


def run_encoder_with(impl, enc: EncoderSpec, x_fx, strict: bool = True) -> EncoderResult:
    """Encode a fixed-point tensor ``(M, K)`` as ``enc`` says, with the section 8 encoders of ``impl``.

    ``impl`` is a module with ``encode_per_patch_dynamic``, ``encode_per_patch``, ``encode_uniform``,
    ``encode_log2``, ``encode_shiftlog2`` and ``encode_three_region`` of the reference's signatures:
    :mod:`sim.reference` (:func:`run_encoder_reference`) or :mod:`sim.kernels_encode`
    (``sim.simulator.run_encoder``). The one mapping from an :class:`EncoderSpec` to an encoder call.
    """
    x = np.asarray(x_fx)
    if enc.kind == "uniform" and enc.dynamic:            # dynamic per-patch scales (section 8.1.1)
        q, o, sat, nof, j, z = impl.encode_per_patch_dynamic(x, enc.ladder_r, enc.ladder_t, enc.se, enc.bits,
                                                             enc.alpha_fx, enc.fo, strict)
        return EncoderResult(q, o, sat, nof, row_index=j, row_zero=z)
    if enc.kind == "uniform":
        if enc.alpha_fx is not None:
            q, o, sat, nof = impl.encode_per_patch(x, enc.r, enc.se, enc.z, enc.bits, enc.alpha_fx, enc.fo, strict)
            return EncoderResult(q, o, sat, nof)
        q, sat = impl.encode_uniform(x, enc.r, enc.se, enc.z, enc.bits)
        return EncoderResult(q, saturations=sat)
    if enc.kind == "log2":
        return EncoderResult(impl.encode_log2(x, enc.in_frac, enc.bits))
    r0 = int(np.asarray(enc.r).reshape(-1)[0])  # one reciprocal (per tensor) for the activation encoders
    if enc.kind == "shiftlog2":
        return EncoderResult(impl.encode_shiftlog2(x, enc.sh, r0, enc.se, enc.bits, enc.base))
    if enc.kind == "three_region":
        return EncoderResult(impl.encode_three_region(x, r0, enc.se, enc.bits, enc.m0, enc.m1))
    raise DatapathError(f"unknown encoder kind {enc.kind!r}")


def run_encoder_reference(enc: EncoderSpec, x_fx, strict: bool = True) -> EncoderResult:
    """Encode a fixed-point tensor ``(M, K)`` with the reference encoders (section 8)."""
    return run_encoder_with(ref, enc, x_fx, strict)


def run_layer_reference(spec: LayerSpec, a_codes, outliers=None, b=None) -> LayerResult:
    """Run one layer with the reference: decode, accumulate, check width, requantize (section 9)."""
    q = np.asarray(a_codes)
    if q.ndim != 2:
        raise DatapathError(f"{spec.name}: A codes must be (M, K), got shape {q.shape}")
    bb = ref.check_sym(spec.b if b is None else b, spec.b_bits)
    spec.validate(m=q.shape[0], b=bb)
    if q.shape[1] != bb.shape[0]:
        raise DatapathError(f"{spec.name}: A has K = {q.shape[1]} columns but B has K = {bb.shape[0]} rows")
    o = np.zeros((0, 3), I64) if outliers is None else np.asarray(outliers)
    if np.size(o) and spec.fo == 0:
        raise DatapathError(f"{spec.name}: outliers given to a layer without an outlier path (FO = 0)")
    o = ref.check_outliers(o, q.shape[0], q.shape[1])
    ref.check_outlier_capacity(o, q.shape[0], spec.tile_rows, spec.outlier_capacity)
    d = spec.decode(q)
    _raw, _accd, acc = ref.accumulate(d, bb, spec.za, spec.fo, o)
    ref.check_acc_fits(acc, spec.acc_bits)
    out, sat = ref.requantize(acc, spec.mr, spec.sr, spec.mc, spec.sc, spec.bq, spec.z_out, spec.out_fmt, spec.out_bits)
    return LayerResult(acc, out, sat)
