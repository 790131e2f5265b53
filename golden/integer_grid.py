"""On-grid fake quantization: the fake-quant model computing every datapath step on the integer grid.

A calibrated :class:`~golden.qmodel.QuantViT` normally fake-quantizes in floating point: a GEMM's
result is ``dequant(A) @ dequant(W) + bias`` in float32 and the next quantizer divides by its scale.
The integer datapath (docs/datapath.md) instead carries integers through integer multipliers and
shifts (``Mr, Sr, Mc, Sc, Bq``; encoder reciprocals ``R, SE``; fixed-point host boundaries with
16 fraction bits). The two differ where a value sits within ~1e-5 of a rounding boundary, and at
4 bits such one-step flips compound over 12 blocks (docs/accuracy.md).

**Integer-grid mode** removes that difference by construction of the *arithmetic*, not by sharing
code: :func:`attach_integer_grid` gives every quantized module of the model the integer parameters
of the model's own program (:func:`golden.program.export_program`) and the modules then compute, in
torch, exactly what the spec says:

* encoders (section 8): ``to_fixed`` at the program's fraction bits, integer reciprocal
  ``round_shift(x * R, SE)``, zero points, outlier extraction, the 16-bit-mantissa ``round_log2``
  thresholds of the log encoders and the three-region encoder;
* GEMMs (sections 4, 6, 7): the decoded integer operands ``D`` (triples), ``acc`` as an exact float64
  matmul of integers (every partial sum is an integer below 2^53: the accumulator bound of
  section 6 is at most 48 bits), the outlier term, and the two-stage requantizer with the
  spec's rounding and saturation; ``fixed32`` results come back as ``from_fixed``, code results as
  ``(c - z) * s`` on the next quantizer's grid (which recovers ``c`` exactly).

Host operations (LayerNorm, softmax, GELU, residual adds, embeddings) stay timm's float32 code. The
result is a batched PyTorch implementation of the datapath, independent of ``sim/`` (nothing here
imports ``sim.reference`` or the numba kernels), so the end-to-end agreement of ``vitaccel eval
--backend sim`` with this mode is a real cross-check of the two implementations; the remaining
differences come from float32 host ops computed on a batch versus one image (summation order).

Only models with a program (timm ViT/DeiT) have a grid; gradients do not flow in this mode (AMO and
calibration use the float fake-quant mode; the grid is attached afterwards).
"""
from __future__ import annotations

import warnings

import numpy as np
import torch

from vitaccel.sim import formats as SF
from vitaccel.sim.errors import UserError

I64 = torch.int64

#: 2^62: no intermediate of the requantizer may reach it (spec section 7); checked, never wrapped.
_INT62 = 1 << 62


class IntegerGridError(UserError, RuntimeError):
    """An integer-grid computation left the ranges the spec allows (never wrapped silently)."""


# ------------------------------------------------------------------------------------------------
# spec primitives on int64 tensors (section 1)
# ------------------------------------------------------------------------------------------------
def round_shift(x: torch.Tensor, s) -> torch.Tensor:
    """``(x + 2^(s-1)) >> s`` (``x`` for ``s == 0``): round half up; ``s`` int or int64 tensor."""
    s = torch.as_tensor(s, dtype=I64)
    half = torch.where(s > 0, torch.bitwise_left_shift(torch.ones_like(s), (s - 1).clamp(min=0)), torch.zeros_like(s))
    return torch.bitwise_right_shift(x + half, s)


def to_fixed(x: torch.Tensor, frac_bits: int, bits: int = 32) -> torch.Tensor:
    """``saturate(floor(float64(x) * 2^F + 0.5), -2^(bits-1), 2^(bits-1) - 1)`` as int64."""
    if not bool(torch.isfinite(x).all()):
        raise IntegerGridError("non-finite value at a host -> fixed-point boundary")
    v = torch.floor(x.double() * 2.0 ** frac_bits + 0.5)
    lo, hi = -(2.0 ** (bits - 1)), 2.0 ** (bits - 1) - 1
    nsat = int(((v < lo) | (v > hi)).sum())
    if nsat:  # a range fault of the host boundary (spec section 1): saturated, never wrapped, reported
        warnings.warn(f"integer grid: {nsat} value(s) saturated at a host -> fixed-point boundary "
                      f"({bits} bits, {frac_bits} fraction bits)", RuntimeWarning, stacklevel=2)
    return v.clamp(lo, hi).to(I64)


def from_fixed(v: torch.Tensor, frac_bits: int) -> torch.Tensor:
    """``float32(float64(v) * 2^-F)``."""
    return (v.double() * 2.0 ** -frac_bits).float()


def bit_length_minus_one(v: torch.Tensor) -> torch.Tensor:
    """``floor(log2(v))`` of int64 ``v >= 1``, exact (float64 estimate, then corrected by shifts)."""
    p = torch.frexp(v.double())[1].to(I64) - 1
    p = torch.where(torch.bitwise_right_shift(v, p.clamp(min=0)) == 0, p - 1, p)
    p = torch.where(torch.bitwise_right_shift(v, (p + 1).clamp(max=62)) != 0, p + 1, p)
    return p


def _mantissa16(v: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    up = torch.bitwise_left_shift(v, (15 - p).clamp(min=0))
    down = torch.bitwise_right_shift(v, (p - 15).clamp(min=0))
    return torch.where(p <= 15, up, down)


def round_log2(v: torch.Tensor) -> torch.Tensor:
    """Nearest integer to ``log2(v)`` for ``v >= 1`` (16-bit mantissa threshold, section 8.2)."""
    p = bit_length_minus_one(v)
    return p + (_mantissa16(v, p) >= SF.LOG2_THRESHOLD).to(I64)


def round_log_sqrt2(v: torch.Tensor) -> torch.Tensor:
    """Nearest integer to ``2 log2(v)`` for ``v >= 1`` (section 8.2)."""
    p = bit_length_minus_one(v)
    m = _mantissa16(v, p)
    t0, t1 = SF.LOG_SQRT2_THRESHOLDS
    return 2 * p + (m >= t0).to(I64) + (m >= t1).to(I64)


# ------------------------------------------------------------------------------------------------
# encoders (section 8)
# ------------------------------------------------------------------------------------------------
class GridEncoder:
    """One encoder of the program: float host tensor -> A codes (and dense outlier values).

    Rows (per-patch ``R``/``z``) run along the second-to-last axis of the input.
    """

    def __init__(self, entry: dict, tensors: dict):
        self.kind = entry["kind"]
        self.bits = int(entry["bits"])
        self.in_frac = int(entry["in_frac"])
        self.in_bits = int(entry.get("in_bits", 32))
        self.r = torch.from_numpy(np.asarray(tensors[entry["r"]], np.int64).reshape(-1))
        self.z = torch.from_numpy(np.asarray(tensors[entry["z"]], np.int64).reshape(-1))
        self.se = int(entry.get("se", 0))
        self.alpha_fx = entry.get("alpha_fx")
        self.fo = int(entry.get("fo") or 0)
        self.sh = int(entry.get("sh", 0))
        self.base = entry.get("base", "2")
        self.m0, self.m1 = int(entry.get("m0", 0)), int(entry.get("m1", 0))
        lad = entry.get("ladder")
        self.ladder_r = None if lad is None else torch.from_numpy(np.asarray(tensors[lad["r"]], np.int64).reshape(-1))
        self.ladder_t = None if lad is None else torch.from_numpy(np.asarray(tensors[lad["t"]], np.int64).reshape(-1))

    def dynamic_rows(self, x_fx: torch.Tensor):
        """Section 8.1.1 per row (last axis = channels): ``(j, r, z)``, ``r``/``z`` shaped ``(..., M, 1)``."""
        inl = x_fx if self.alpha_fx is None else torch.where(x_fx.abs() > int(self.alpha_fx), 0, x_fx)
        lo = inl.amin(dim=-1).clamp(max=0)
        span = inl.amax(dim=-1).clamp(min=0) - lo
        j = ((self.ladder_t >= span[..., None]).sum(dim=-1) - 1).clamp(min=0)
        r = self.ladder_r[j]
        z = round_shift(-lo * r, self.se).clamp(0, 2 ** self.bits - 1)
        return j, r[..., None], z[..., None]

    def _rows(self, v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if v.numel() == 1:
            return v.reshape(())
        if x.dim() < 2 or x.shape[-2] != v.numel():
            raise IntegerGridError(f"per-patch encoder has {v.numel()} rows, input shape {tuple(x.shape)}")
        return v[:, None]

    def encode(self, x: torch.Tensor):
        """``(codes, outlier_values, rows)``; outlier values (units ``s[r] 2^-FO``, 0 elsewhere) or None;
        ``rows = (j, z)`` per row for the dynamic per-patch encoder (section 8.1.1), else None."""
        x_fx = to_fixed(x, self.in_frac, self.in_bits)
        k = self.bits
        if self.kind == "uniform":
            rows = None
            if self.ladder_r is not None:
                j, r, z = self.dynamic_rows(x_fx)
                rows = (j, z[..., 0])
            else:
                r, z = self._rows(self.r, x_fx), self._rows(self.z, x_fx)
            q = (round_shift(x_fx * r, self.se) + z).clamp(0, 2 ** k - 1)
            if self.alpha_fx is None:
                return q, None, rows
            out = x_fx.abs() > int(self.alpha_fx)
            val = round_shift(x_fx * r, self.se - self.fo).clamp(-2 ** 15, 2 ** 15 - 1)
            return torch.where(out, z.expand_as(q), q), torch.where(out, val, torch.zeros_like(val)), rows
        if self.kind == "log2":
            qmax, zero = SF.log2_qmax(k), SF.log2_zero_code(k)
            a = x_fx.clamp(min=0)
            q = self.in_frac - round_log2(a.clamp(min=1))
            q = torch.where(q < 0, torch.zeros_like(q), q)
            return torch.where((a == 0) | (q > qmax), torch.full_like(q, zero), q), None, None
        if self.kind == "shiftlog2":
            qmax = SF.shiftlog2_qmax(k, self.base)
            u = x_fx + self.sh
            w = round_shift(u * int(self.r[0]), self.se)
            wpos = w.clamp(min=1)
            if self.base == "2":
                q = SF.LOG_FRAC - round_log2(wpos)
            else:
                q = 2 * SF.LOG_FRAC - round_log_sqrt2(wpos)
            q = q.clamp(0, qmax)
            return torch.where((u <= 0) | (w <= 0), torch.full_like(q, qmax), q), None, None
        if self.kind == "three_region":
            p = 2 ** (k - 2) - 1
            w = round_shift(x_fx * int(self.r[0]), self.se)
            n = round_shift(-w, SF.LOG_FRAC).clamp(max=2 ** (k - 1) - 1)
            neg = ((n >> (k - 2)) << (k - 1)) | (1 << (k - 2)) | (n & p)
            neg = torch.where(n == 0, torch.zeros_like(n), neg)
            n1 = round_shift(w, SF.LOG_FRAC + self.m0)
            n2 = (1 << (k - 1)) | round_shift(w, SF.LOG_FRAC + self.m1).clamp(max=p)
            pos = torch.where(n1 <= p, n1, n2)
            return torch.where(w < 0, neg, pos), None, None
        raise IntegerGridError(f"unknown encoder kind {self.kind!r}")


# ------------------------------------------------------------------------------------------------
# decode (section 4) and one GEMM (sections 6, 7)
# ------------------------------------------------------------------------------------------------
def decode(q: torch.Tensor, kind: str, bits: int, base: str = "2", m0: int = 0, m1: int = 0) -> torch.Tensor:
    """The integer operand ``D`` of A codes ``q`` (int64)."""
    q = q.to(I64)
    if kind == "uniform":
        return q
    if kind == "log2":
        qmax, zero = SF.log2_qmax(bits), SF.log2_zero_code(bits)
        if bool(((q > qmax) & (q != zero)).any()) or bool((q < 0).any()):
            raise IntegerGridError("invalid log2 code")
        d = torch.bitwise_left_shift(torch.ones_like(q), (qmax - q).clamp(min=0))
        return torch.where(q == zero, torch.zeros_like(q), d)
    if kind == "shiftlog2":
        c, _sqf, h, _qmax = SF.shiftlog2_params(bits, base)
        e = q if base == "2" else q >> 1
        mant = torch.where((q & 1) == 1, torch.full_like(q, c[1]), torch.full_like(q, c[0]))
        return torch.bitwise_left_shift(mant, h - e)
    if kind == "three_region":
        p = 2 ** (bits - 2) - 1
        r = (q >> (bits - 1)) & 1
        g = (q >> (bits - 2)) & 1
        mag = q & p
        pos = torch.where(r == 0, mag << m0, mag << m1)
        return torch.where(g == 1, -((r << (bits - 2)) | mag), pos)
    raise IntegerGridError(f"unknown A format {kind!r}")


def _vec(tensors: dict, key) -> torch.Tensor:
    return torch.from_numpy(np.asarray(tensors[key], np.int64).reshape(-1))


class GridGemm:
    """One program layer (its requantizer, output format and, for linear layers, B codes)."""

    def __init__(self, name: str, entry: dict, tensors: dict):
        self.name = name
        a = entry["a"]
        self.kind, self.bits = a["kind"], int(a["bits"])
        self.base, self.m0, self.m1 = a.get("base", "2"), int(a.get("m0", 0)), int(a.get("m1", 0))
        self.za = _vec(tensors, a["za"])
        self.dynamic_rows = bool(a.get("dynamic", False))  # Mr / za per row from the encoder (8.1.1)
        self.fo = int(entry.get("fo") or 0)
        rq = entry["requant"]
        self.mr, self.sr = _vec(tensors, rq["mr"]), int(rq["sr"])
        self.mc, self.sc, self.bq = _vec(tensors, rq["mc"]), _vec(tensors, rq["sc"]), _vec(tensors, rq["bq"])
        self.z_out = int(rq["z_out"])
        self.out_fmt, self.out_bits = entry["out_fmt"], int(entry["out_bits"])
        self.out_frac = int(entry.get("out_frac", 0))
        self.s_out = float(entry["scales"]["s_out"])
        self.b = None if entry["b"] == "runtime" else torch.from_numpy(np.asarray(tensors[entry["b"]], np.int64))
        if self.out_fmt == "ucode":
            self.lo, self.hi = 0, 2 ** self.out_bits - 1
        elif self.out_fmt == "scode":
            self.lo, self.hi = -(2 ** (self.out_bits - 1) - 1), 2 ** (self.out_bits - 1) - 1
        else:
            width = 16 if self.out_fmt == "fixed16" else 32
            self.lo, self.hi = -(2 ** (width - 1)), 2 ** (width - 1) - 1

    def _row_check(self, rows):
        if self.dynamic_rows and rows is None:
            raise IntegerGridError(f"{self.name}: a dynamic per-patch A operand needs the encoder's row parameters")

    def operand(self, codes: torch.Tensor, rows=None) -> torch.Tensor:
        """``D - za`` (rows along the second-to-last axis) as float64 (exact integers); ``rows = (j, z)``
        of a dynamic per-patch encoder give ``za[r] = z[r]``."""
        d = decode(codes, self.kind, self.bits, self.base, self.m0, self.m1)
        self._row_check(rows)
        if self.dynamic_rows:
            za = rows[1][..., None]
        else:
            za = self.za.reshape(()) if self.za.numel() == 1 else self.za[:, None]
        return (d - za).double()

    def accumulate(self, a_op: torch.Tensor, b: torch.Tensor, outliers: torch.Tensor | None) -> torch.Tensor:
        """``acc`` of section 6 as int64: ``((D - za) @ b) << FO + outliers @ b`` (exact float64)."""
        bd = b.double()
        acc = (a_op @ bd) * float(2 ** self.fo)
        if outliers is not None:
            acc = acc + outliers.double() @ bd
        if bool((acc.abs() >= 2.0 ** 52).any()):
            raise IntegerGridError(f"{self.name}: accumulator beyond the exact float64 range")
        return acc.to(I64)

    def requantize(self, acc: torch.Tensor, rows=None) -> torch.Tensor:
        """Section 7 on int64 ``acc`` (rows on the second-to-last axis); returns output integers.
        With ``rows = (j, z)`` of a dynamic per-patch operand the row gain is ``Mr[j[r]]``."""
        self._row_check(rows)
        if self.dynamic_rows:
            mr = self.mr[rows[0]][..., None]
        else:
            mr = self.mr.reshape(()) if self.mr.numel() == 1 else self.mr[:, None]
        x = acc * mr
        if bool((x.abs() >= _INT62).any()):
            raise IntegerGridError(f"{self.name}: |acc * Mr| >= 2^62")
        t = round_shift(x, self.sr)
        p = t * self.mc + self.bq
        if bool((p.abs() >= _INT62).any()):
            raise IntegerGridError(f"{self.name}: |t * Mc + Bq| >= 2^62")
        v = round_shift(p, self.sc) + self.z_out
        if self.out_fmt.startswith("fixed"):
            nsat = int(((v < self.lo) | (v > self.hi)).sum())
            if nsat:  # fixed-point output saturation is a range fault (spec section 1), reported
                warnings.warn(f"integer grid: {self.name}: {nsat} {self.out_fmt} output(s) saturated",
                              RuntimeWarning, stacklevel=2)
        return v.clamp(self.lo, self.hi)

    def to_host(self, out: torch.Tensor) -> torch.Tensor:
        """Output integers as the float32 values the next host step / quantizer sees."""
        if self.out_fmt.startswith("fixed"):
            return from_fixed(out, self.out_frac)
        return ((out - self.z_out).double() * self.s_out).float()


# ------------------------------------------------------------------------------------------------
# attaching the grid to a QuantViT
# ------------------------------------------------------------------------------------------------
def attach_integer_grid(qvit, prog):
    """Switch ``qvit`` to integer-grid mode with the parameters of the program ``prog`` (a
    :class:`golden.program.Program`, e.g. ``export_program(qvit)``; :meth:`golden.qmodel.QuantViT.use_integer_grid`
    exports it when none is given).

    Returns ``prog``. :func:`detach_integer_grid` returns to float fake-quant.
    """
    mods = dict(qvit.model.named_modules())
    man, ten = prog.manifest, prog.tensors
    detach_integer_grid(qvit)
    for ename, e in man["encoders"].items():
        q = mods.get(e["quantizer"])
        if q is None:
            raise IntegerGridError(f"program encoder {ename} names an unknown quantizer {e['quantizer']}")
        q.grid_encoder = GridEncoder(e, ten)
    for lname, e in man["layers"].items():
        gemm = GridGemm(lname, e, ten)
        if e["op"] in ("qk", "av"):
            mods[lname.rsplit(".", 1)[0] + "." + e["op"]].grid = [gemm]
            continue
        mname = "patch_embed.proj" if lname == "patch_embed" else lname
        if lname.endswith((".attn.q", ".attn.k", ".attn.v")):
            mname = lname[:-1] + "qkv"
        mod = mods[mname]
        parts = getattr(mod, "grid", None) or []
        parts.append(gemm)
        mod.grid = parts
    qvit.grid_program = prog
    return prog


def detach_integer_grid(qvit) -> None:
    """Back to float fake-quant (removes every grid attribute)."""
    for m in qvit.model.modules():
        for attr in ("grid", "grid_encoder"):
            if getattr(m, attr, None) is not None:
                setattr(m, attr, None)
    qvit.grid_program = None


def _input_codes(quantizer, x: torch.Tensor):
    enc = getattr(quantizer, "grid_encoder", None)
    if enc is not None:
        return enc.encode(x)
    return quantizer.quantize(x), None, None


@torch.no_grad()
def linear_forward(layer, x: torch.Tensor) -> torch.Tensor:
    """Integer-grid forward of a QuantLinear (``x``: (..., M, K) or (B, K)); parts = q/k/v or one."""
    squeeze = x.dim() == 2
    if squeeze:
        x = x[:, None, :]
    codes, outl, rows = _input_codes(layer.input_quantizer, x)
    outs = []
    for g in layer.grid:
        acc = g.accumulate(g.operand(codes, rows), g.b, outl if g.fo else None)
        outs.append(g.to_host(g.requantize(acc, rows)))
    y = torch.cat(outs, dim=-1) if len(outs) > 1 else outs[0]
    return y[:, 0, :] if squeeze else y


@torch.no_grad()
def patch_embed_forward(conv, x: torch.Tensor) -> torch.Tensor:
    """Integer-grid patch embedding: patchify (channel, row, column order), encode, GEMM, back to NCHW."""
    b, c, hh, ww = x.shape
    p = conv.stride[0]
    patches = x.reshape(b, c, hh // p, p, ww // p, p).permute(0, 2, 4, 1, 3, 5).reshape(b, -1, c * p * p)
    y = linear_forward(conv, patches)  # (B, P, D)
    return y.transpose(1, 2).reshape(b, -1, hh // p, ww // p)


@torch.no_grad()
def matmul_forward(mm, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Integer-grid ``q @ k^T`` / ``attn @ v`` (per head, batched); the qk gain is inside ``Mc``."""
    g = mm.grid[0]
    a_codes, _, _ = _input_codes(mm.a_quantizer, a)
    b_codes = mm.b_quantizer.quantize(b)
    acc = g.accumulate(g.operand(a_codes), b_codes, None)
    return g.to_host(g.requantize(acc))
