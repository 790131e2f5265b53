"""The integer program: export of a calibrated :class:`~golden.qmodel.QuantViT` and its loader.

Format (``format_version`` 1, documented in ``docs/program-format.md``): a directory holding

* ``manifest.json`` — model description, method/config, the graph (execution order of host steps,
  encoders and GEMM layers) and, per layer / encoder, every scalar parameter plus the names of its
  array parameters;
* ``tensors.npz`` — every array (B codes, ``za``, ``Mr``, ``Mc``, ``Sc``, ``Bq``, encoder ``R``/``z``,
  host LayerNorm weights, class token, positional embedding).

Integer parameters are derived from the calibrated float scales as docs/datapath.md sections 7/8
prescribe (:func:`requant_params`, :func:`encoder_recip`): each shift is the largest that keeps its
multiplier within its width, which maximises precision.

Only plain ViT/DeiT models (timm ``VisionTransformer``: class token, absolute position embedding,
token pooling, no LayerScale) can be exported; Swin runs calibrate + fake-quant eval only.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import zipfile
import zlib
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from vitaccel.sim import formats as SF
from vitaccel.sim.errors import UserError
from vitaccel.sim.layer import EncoderSpec, LayerSpec
from vitaccel.sim.reference import round_half_up

from .program_check import check_program
from .qlayers import QuantAttention, QuantConv2d, QuantLinear

FORMAT = "vitaccel-program"
FORMAT_VERSION = 2
#: Fraction bits of host -> fixed conversions feeding the encoders (int32 inputs).
ENC_IN_FRAC = 16
#: Fraction bits of ``fixed32`` GEMM outputs (residual branch, softmax input, GELU input, logits).
OUT_FRAC = 16
#: Default tile height (array rows) used for the outlier capacity bookkeeping.
TILE_ROWS = 16


class ProgramError(UserError):
    """A program file is malformed, truncated, of another version, or cannot be exported."""


# ------------------------------------------------------------------------------------------------
# parameter derivation (spec sections 7 and 8)
# ------------------------------------------------------------------------------------------------
def requant_params(u_a, s_b, fo: int, s_out: float, bias=None, gain: float = 1.0, acc_bound: int = 1 << 40):
    """``(Mr, Sr, Mc, Sc, Bq)`` for ``y = u_A[r] s_b[c] 2^-FO acc + bias`` and output step ``s_out``.

    ``Mr[r] / 2^Sr = u_A[r] / u_max`` (``Sr = 16`` with ``Mr < 2^16`` for per-row units, identity
    ``Mr = 1, Sr = 0`` for a single unit); per column ``Sc[c]`` is the largest shift in ``0..47``
    with ``Mc[c] = round(ratio * 2^Sc) < 2^16``, ``|Bq| < 2^47`` and ``|t Mc + Bq| < 2^62``, where
    ``ratio = u_max s_b[c] 2^-FO gain / s_out``.
    """
    u_a = np.asarray(u_a, np.float64).reshape(-1)
    s_b = np.asarray(s_b, np.float64).reshape(-1)
    u_max = float(u_a.max())
    if not (np.all(np.isfinite(u_a)) and u_max > 0 and np.all(np.isfinite(s_b))):
        raise ProgramError("non-finite or non-positive scale in requantizer derivation")
    if u_a.size > 1:
        sr = SF.SR_MAX
        mr = np.minimum(round_half_up(u_a / u_max * 2.0 ** sr), (1 << SF.MULT_BITS) - 1)
    else:
        sr, mr = 0, np.ones(1, np.int64)
    ratio = u_max * s_b * 2.0 ** -fo * gain / s_out
    bias = np.zeros_like(ratio) if bias is None else np.asarray(bias, np.float64).reshape(-1)
    shifts = np.arange(SF.SC_MAX + 1)[:, None]
    mc = np.floor(ratio[None, :] * 2.0 ** shifts + 0.5)  # float64: no int64 overflow for large shifts
    bq_f = np.broadcast_to(bias, ratio.shape)[None, :] / s_out * 2.0 ** shifts
    ok = ((mc < (1 << SF.MULT_BITS)) & (np.abs(bq_f) < 2.0 ** (SF.BQ_BITS - 1) - 1)
          & (float(acc_bound) * mc + np.abs(bq_f) < 2.0 ** 61))
    if not ok.any(axis=0).all():
        bad = int(np.argmin(ok.any(axis=0)))
        raise ProgramError(f"requantizer gain {ratio[bad]:.3g} of column {bad} cannot be represented "
                           f"(Mc < 2^16 needs gain < 2^16)")
    sc = (SF.SC_MAX - np.argmax(ok[::-1], axis=0)).astype(np.int64)
    cols = np.arange(ratio.size)
    mc = mc[sc, cols].astype(np.int64)
    bq = round_half_up(np.broadcast_to(bias, ratio.shape) / s_out * 2.0 ** sc)
    return mr.astype(np.int64), int(sr), mc.astype(np.int64), sc, bq


def encoder_recip(scale, in_frac: int, extra_bits: int = 0, min_se: int = 0):
    """``(R, SE)`` with ``R[r] / 2^SE ~ 2^extra / (s[r] 2^F)``: the largest ``SE <= 56`` with ``R < 2^24``."""
    s = np.asarray(scale, np.float64).reshape(-1)
    target = 2.0 ** extra_bits / (s * 2.0 ** in_frac)
    if not np.all(np.isfinite(target)) or np.any(target <= 0):
        raise ProgramError("non-finite encoder scale")
    tmax = float(target.max())
    se = SF.SE_MAX
    limit = (1 << SF.RECIP_BITS) - 0.5  # R = floor(t + 0.5) < 2^24  <=>  t < 2^24 - 1/2 (compared in float64)
    while se > 0 and tmax * 2.0 ** se >= limit:
        se -= 1
    if tmax * 2.0 ** se >= limit:
        raise ProgramError(f"encoder reciprocal {tmax:.3g} does not fit 24 bits (scale too small)")
    if se < min_se:
        raise ProgramError(f"encoder shift SE = {se} below the required {min_se}")
    r = np.maximum(round_half_up(target * 2.0 ** se), 1)
    return r.astype(np.int64), int(se)


# ------------------------------------------------------------------------------------------------
# the Program object
# ------------------------------------------------------------------------------------------------
@dataclass
class Program:
    """An integer program in memory: ``manifest`` (JSON-able dict) and ``tensors`` (name -> array)."""

    manifest: dict
    tensors: dict

    @property
    def graph(self) -> list:
        return self.manifest["graph"]

    def t(self, key: str) -> np.ndarray:
        try:
            return self.tensors[key]
        except KeyError:
            raise ProgramError(f"program tensor {key!r} is missing from tensors.npz") from None

    def layer_spec(self, name: str) -> LayerSpec:
        """The :class:`sim.layer.LayerSpec` of GEMM layer ``name`` (``b`` empty for runtime B)."""
        try:
            e = self.manifest["layers"][name]
        except KeyError:
            raise ProgramError(f"program has no layer {name!r}") from None
        try:
            return self._layer_spec(name, e)
        except (KeyError, TypeError, AttributeError, IndexError) as exc:
            raise ProgramError(f"program layer {name!r} is malformed ({type(exc).__name__}: {exc})") from None

    def _layer_spec(self, name: str, e: dict) -> LayerSpec:
        a = e["a"]
        rq = e["requant"]
        b = self.t(e["b"]) if e["b"] != "runtime" else np.zeros((e["shape"][1], 0), np.int64)
        return LayerSpec(
            name=name, op=e["op"], a_kind=a["kind"], a_bits=a["bits"], b=b.astype(np.int64), b_bits=e["b_bits"],
            za=self.t(a["za"]).astype(np.int64), mr=self.t(rq["mr"]).astype(np.int64), sr=rq["sr"],
            mc=self.t(rq["mc"]).astype(np.int64), sc=self.t(rq["sc"]).astype(np.int64),
            bq=self.t(rq["bq"]).astype(np.int64), out_fmt=e["out_fmt"], out_bits=e["out_bits"],
            acc_bits=e["acc_bits"], z_out=rq["z_out"], out_frac=e.get("out_frac", 0), a_base=a.get("base", "2"),
            m0=a.get("m0", 0), m1=a.get("m1", 0), fo=e["fo"], outlier_capacity=e.get("outlier_capacity"),
            tile_rows=e.get("tile_rows", TILE_ROWS),
            meta={"quantizer_out": e.get("quantizer_out"), "dynamic_rows": bool(a.get("dynamic", False))})

    def encoder_spec(self, name: str) -> EncoderSpec:
        try:
            e = self.manifest["encoders"][name]
        except KeyError:
            raise ProgramError(f"program has no encoder {name!r}") from None
        try:
            return self._encoder_spec(e)
        except (KeyError, TypeError, AttributeError, IndexError) as exc:
            raise ProgramError(f"program encoder {name!r} is malformed ({type(exc).__name__}: {exc})") from None

    def _encoder_spec(self, e: dict) -> EncoderSpec:
        lad = e.get("ladder")
        return EncoderSpec(kind=e["kind"], bits=e["bits"], in_frac=e["in_frac"], in_bits=e.get("in_bits", 32),
                           r=self.t(e["r"]).astype(np.int64), se=e["se"], z=self.t(e["z"]).astype(np.int64),
                           alpha_fx=e.get("alpha_fx"), fo=e.get("fo", SF.OUTLIER_FRAC_BITS), sh=e.get("sh", 0),
                           base=e.get("base", "2"), m0=e.get("m0", 0), m1=e.get("m1", 0),
                           ladder_r=None if lad is None else self.t(lad["r"]).astype(np.int64),
                           ladder_t=None if lad is None else self.t(lad["t"]).astype(np.int64))

    def layer_names(self) -> list[str]:
        return list(self.manifest["layers"])


def save_program(prog: Program, path: str) -> None:
    """Write ``path/manifest.json`` and ``path/tensors.npz``."""
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "tensors.npz"), "wb") as f:
        np.savez_compressed(f, **prog.tensors)
    with open(os.path.join(path, "manifest.json"), "w") as f:
        json.dump(prog.manifest, f, indent=1, sort_keys=False)


def _refs(obj, out: set):
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k in ("b", "za", "mr", "mc", "sc", "bq", "r", "z", "t", "bias", "weight", "cls_token", "pos_embed",
                     "s_b", "u_a") and isinstance(v, str) and v != "runtime":
                out.add(v)
            _refs(v, out)
    elif isinstance(obj, list):
        for v in obj:
            _refs(v, out)


def read_versioned_manifest(mpath: str, fmt: str, version: int, error: type[Exception], what: str,
                            hint: str = "") -> dict:
    """Read a JSON manifest and check its ``format`` and ``format_version``; raise ``error`` clearly."""
    try:
        with open(mpath, encoding="utf-8") as f:
            man = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise error(f"{what} manifest {mpath} is malformed or truncated: {exc}") from None
    except OSError as exc:
        raise error(f"cannot read {what} manifest {mpath}: {exc.strerror or exc}") from None
    if not isinstance(man, dict) or man.get("format") != fmt:
        raise error(f"{mpath} is not a vitaccel {what} manifest")
    if man.get("format_version") != version:
        raise error(f"{what} {os.path.dirname(mpath)} has format_version {man.get('format_version')!r}; "
                    f"this vitaccel reads version {version}{hint}")
    return man


def load_npz(path: str, error: type[Exception], what: str) -> dict:
    """Every array of an ``.npz`` file (no pickles); a truncated, corrupt or foreign file raises ``error``."""
    try:
        with np.load(path, allow_pickle=False) as z:
            if not isinstance(z, np.lib.npyio.NpzFile):
                raise ValueError("not an .npz archive")
            return {k: z[k] for k in z.files}
    except (zipfile.BadZipFile, zlib.error, ValueError, OSError, EOFError, KeyError) as exc:
        raise error(f"{what} {path} are malformed or truncated: {exc}") from None
    except AttributeError:  # np.load returned a plain array (a .npy file): no context manager
        raise error(f"{what} {path} are not an .npz archive") from None


def load_program(path: str) -> Program:
    """Load and validate a program directory; malformed, truncated or foreign files raise ProgramError."""
    mpath, tpath = os.path.join(path, "manifest.json"), os.path.join(path, "tensors.npz")
    if not os.path.isdir(path):
        raise ProgramError(f"program not found: {path} (expected a directory with manifest.json and tensors.npz)")
    for p in (mpath, tpath):
        if not os.path.isfile(p):
            raise ProgramError(f"program {path} is incomplete: {os.path.basename(p)} is missing")
    man = read_versioned_manifest(mpath, FORMAT, FORMAT_VERSION, ProgramError, "program",
                                  hint=" (re-export it with `vitaccel calibrate`)")
    for key in ("model", "graph", "layers", "encoders", "host"):
        if key not in man:
            raise ProgramError(f"program manifest {mpath} lacks the {key!r} section")
    if not os.access(tpath, os.R_OK):
        raise ProgramError(f"cannot read program tensors {tpath} (permission denied)")
    tensors = load_npz(tpath, ProgramError, "program tensors")
    need: set = set()
    _refs({k: man[k] for k in ("layers", "encoders", "host")}, need)
    missing = sorted(need - set(tensors))
    if missing:
        raise ProgramError(f"program {path}: tensors.npz lacks {', '.join(missing[:5])}"
                           f"{' ...' if len(missing) > 5 else ''}")
    check_program(man, tensors, ProgramError, f"program {path}")
    prog = Program(man, tensors)
    for name in man["layers"]:
        spec = prog.layer_spec(name)
        try:
            spec.validate(b=spec.b if spec.b.shape[1] else np.zeros((spec.b.shape[0], 1), np.int64))
        except ValueError as exc:
            raise ProgramError(f"program {path}: layer {name} is invalid: {exc}") from None
    return prog


def program_digest(path: str, extra: tuple = ()) -> str:
    """SHA-256 of a program's content (``manifest.json``, ``tensors.npz`` and the files ``extra``,
    e.g. ``fakequant.pt``, that exist): the identity recorded in shard results (``eval --json``)."""
    h = hashlib.sha256()
    for name in ("manifest.json", "tensors.npz", *extra):
        f = os.path.join(path, name)
        if not os.path.isfile(f):
            continue
        h.update(name.encode() + b"\0")
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


# ------------------------------------------------------------------------------------------------
# export
# ------------------------------------------------------------------------------------------------
def _unit(qexp: dict) -> np.ndarray:
    """Real value of one ``D`` unit (``u_A``) of an exported A quantizer."""
    fmt = qexp["fmt"]
    if fmt == "uniform":
        return np.asarray(qexp["scale"], np.float64).reshape(-1)
    if fmt == "log2":
        return np.array([2.0 ** -qexp["qmax"]])
    if fmt == "shiftlog2":
        return np.array([qexp["unit"]])
    if fmt == "three_region":
        return np.array([qexp["s0"]])
    raise ProgramError(f"format {fmt!r} cannot be an A operand")


def _za(qexp: dict) -> np.ndarray:
    """The A zero point of the program; for a dynamic per-patch operand (chosen at run time) the
    largest possible ``2^k - 1``, which is what the accumulator bound needs."""
    fmt = qexp["fmt"]
    if fmt == "uniform" and qexp.get("dynamic"):
        return np.array([(1 << qexp["bits"]) - 1], np.int64)
    if fmt == "uniform":
        return np.asarray(qexp["zero_point"], np.int64).reshape(-1)
    if fmt == "shiftlog2":
        return np.array([qexp["zs"]], np.int64)
    return np.zeros(1, np.int64)


class _Exporter:
    def __init__(self, qvit, outlier_capacity: int | None, tile_rows: int):
        self.qvit = qvit
        self.m = qvit.model
        self.cap = outlier_capacity
        self.tile_rows = tile_rows
        self.tensors: dict = {}
        self.layers: dict = {}
        self.encoders: dict = {}
        self.host: dict = {}
        self.graph: list = []

    def put(self, key, arr) -> str:
        self.tensors[key] = np.ascontiguousarray(arr)
        return key

    # ---- encoders ---------------------------------------------------------------------------
    def encoder(self, name: str, q, rows: int, quantizer_name: str) -> None:
        e = q.export()
        fmt = e["fmt"]
        ent = {"kind": fmt, "bits": e["bits"], "in_bits": 32, "quantizer": quantizer_name}
        if fmt == "uniform":
            scale = np.asarray(e["scale"], np.float64).reshape(-1)
            per_patch = bool(e.get("per_patch"))
            dynamic = bool(e.get("dynamic"))
            if per_patch and not dynamic and scale.size != rows:
                raise ProgramError(f"{name}: per-patch quantizer has {scale.size} rows, the program {rows}")
            fo = int(e.get("fo") or 0)
            r, se = encoder_recip(scale, ENC_IN_FRAC, 0, min_se=SF.OUTLIER_FRAC_BITS if fo else 0)
            ent.update(in_frac=ENC_IN_FRAC, se=se, r=self.put(f"{name}/r", r),
                       z=self.put(f"{name}/z", np.asarray(e["zero_point"], np.int64).reshape(-1)),
                       scale=scale.tolist() if scale.size == 1 else None, per_patch=per_patch)
            if dynamic:  # spec 8.1.1: the scale ladder (R[j] shares SE; T[j] = floor(s_j (2^k - 1) 2^F))
                t = np.floor(scale * ((1 << e["bits"]) - 1) * 2.0 ** ENC_IN_FRAC).astype(np.int64)
                if np.any(t >= 1 << 34) or np.any(np.diff(t) > 0):
                    raise ProgramError(f"{name}: dynamic scale ladder thresholds out of range")
                ent["ladder"] = {"r": self.put(f"{name}/ladder_r", r), "t": self.put(f"{name}/ladder_t", t),
                                 "s_top": float(scale[0]), "steps_per_octave": SF.LADDER_STEPS}
            if fo:
                ent.update(alpha=e["alpha"], alpha_fx=int(math.floor(e["alpha"] * 2 ** ENC_IN_FRAC)), fo=fo,
                           outlier_ratio=e.get("outlier_ratio"),
                           max_tile_outliers=e.get("max_tile_outliers"))
        elif fmt == "log2":
            ent.update(in_frac=SF.SOFTMAX_FRAC, se=0, r=self.put(f"{name}/r", np.ones(1, np.int64)),
                       z=self.put(f"{name}/z", np.zeros(1, np.int64)))
        elif fmt == "shiftlog2":
            r, se = encoder_recip([e["scale"]], ENC_IN_FRAC, SF.LOG_FRAC)
            ent.update(in_frac=ENC_IN_FRAC, se=se, r=self.put(f"{name}/r", r),
                       z=self.put(f"{name}/z", np.zeros(1, np.int64)), base=e["base"],
                       sh=int(round_half_up(e["shift"] * 2.0 ** ENC_IN_FRAC)), scale=e["scale"], shift=e["shift"], zs=e["zs"])
        elif fmt == "three_region":
            r, se = encoder_recip([e["s0"]], ENC_IN_FRAC, SF.LOG_FRAC)
            ent.update(in_frac=ENC_IN_FRAC, se=se, r=self.put(f"{name}/r", r),
                       z=self.put(f"{name}/z", np.zeros(1, np.int64)), m0=int(e["m0"]), m1=int(e["m1"]), s0=e["s0"])
        else:
            raise ProgramError(f"{name}: quantizer format {fmt!r} has no encoder")
        self.encoders[name] = ent

    # ---- layers -----------------------------------------------------------------------------
    def layer(self, name, op, a_exp, m, k, n, b_codes, b_bits, s_b, out, bias=None, gain=1.0,
              quantizer_in=None, quantizer_out=None):
        """``out = (fmt, s_out, z_out, bits, quantizer-name)``."""
        out_fmt, s_out, z_out, out_bits = out
        fo = int(a_exp.get("fo") or 0) if a_exp["fmt"] == "uniform" else 0
        u_a = _unit(a_exp)
        za = _za(a_exp)
        a = {"kind": a_exp["fmt"], "bits": a_exp["bits"], "za": self.put(f"{name}/za", za)}
        if a_exp.get("dynamic"):  # row gains Mr[r] = requant.mr[j[r]], za[r] = z[r] from the encoder (8.1.1)
            a["dynamic"] = True
        if a_exp["fmt"] == "shiftlog2":
            a["base"] = a_exp["base"]
        if a_exp["fmt"] == "three_region":
            a["m0"], a["m1"] = int(a_exp["m0"]), int(a_exp["m1"])
        cap = self.cap if fo else None
        spec_probe = LayerSpec(name=name, op=op, a_kind=a["kind"], a_bits=a["bits"], b=np.zeros((k, 1), np.int64),
                               b_bits=b_bits, za=za, mr=np.ones(1, np.int64), sr=0, mc=np.ones(1, np.int64),
                               sc=np.zeros(1, np.int64), bq=np.zeros(1, np.int64), out_fmt=out_fmt, out_bits=out_bits,
                               acc_bits=48, a_base=a.get("base", "2"), m0=a.get("m0", 0), m1=a.get("m1", 0), fo=fo,
                               outlier_capacity=cap)
        acc_bits = spec_probe.acc_bits_required(k)
        if acc_bits > SF.ACC_BITS_MAX:
            raise ProgramError(f"{name}: needs a {acc_bits}-bit accumulator (> {SF.ACC_BITS_MAX})")
        bound = 1 << (acc_bits - 1)
        mr, sr, mc, sc, bq = requant_params(u_a, s_b, fo, s_out, bias, gain, bound)
        ent = {"op": op, "shape": [int(m), int(k), int(n)], "a": a, "b_bits": int(b_bits), "fo": fo,
               "outlier_capacity": cap, "tile_rows": self.tile_rows,
               "requant": {"mr": self.put(f"{name}/mr", mr), "sr": sr, "mc": self.put(f"{name}/mc", mc),
                           "sc": self.put(f"{name}/sc", sc), "bq": self.put(f"{name}/bq", bq), "z_out": int(z_out)},
               "out_fmt": out_fmt, "out_bits": int(out_bits), "out_frac": OUT_FRAC if out_fmt.startswith("fixed") else 0,
               "acc_bits": int(acc_bits), "quantizer_in": quantizer_in, "quantizer_out": quantizer_out,
               "scales": {"u_a_max": float(u_a.max()), "s_out": float(s_out), "gain": float(gain),
                          "s_b": self.put(f"{name}/s_b", np.asarray(s_b, np.float32).reshape(-1))}}
        if b_codes is None:
            ent["b"] = "runtime"
        else:
            ent["b"] = self.put(f"{name}/b", np.asarray(b_codes, np.int8))
        if bias is not None:
            ent["bias"] = self.put(f"{name}/bias", np.asarray(bias, np.float32))
        if fo:
            ent["max_tile_outliers"] = a_exp.get("max_tile_outliers", {}).get(self.tile_rows)
        self.layers[name] = ent

    @staticmethod
    def out_of(q):
        """Output format tuple of a GEMM whose result is quantized by ``q`` (next A/B operand)."""
        e = q.export()
        if e["fmt"] == "uniform" and not e.get("per_patch"):
            return ("ucode", float(e["scale"]), int(e["zero_point"]), e["bits"])
        if e["fmt"] == "sym":
            return ("scode", float(e["scale"]), 0, e["bits"])
        raise ProgramError(f"GEMM output cannot be requantized to {e['fmt']} codes")

    FIXED = ("fixed32", 2.0 ** -OUT_FRAC, 0, 32)

    def linear(self, name, layer, rows, out, rows_sel=None, qname_in=None, qname_out=None):
        w = layer.weight.detach()
        b = layer.exported_bias()
        b = b.detach() if b is not None else None
        if w.dim() == 4:
            w = w.reshape(w.shape[0], -1)
        wexp = layer.weight_quantizer.export_with(w)
        codes, s_b = wexp["codes"], wexp["scale"]
        if rows_sel is not None:
            codes, s_b = codes[rows_sel], s_b[rows_sel]
            b = b[rows_sel] if b is not None else None
        self.layer(name, "linear", layer.input_quantizer.export(), rows, codes.shape[1], codes.shape[0],
                   codes.T, wexp["bits"], s_b, out, None if b is None else b.numpy().astype(np.float64),
                   quantizer_in=qname_in, quantizer_out=qname_out)

    def host_tensor(self, name, t) -> str:
        self.host[name] = self.put(f"host/{name}", t.detach().float().numpy())
        return self.host[name]

    def ln(self, name, mod, src, dst):
        self.graph.append({"op": "layernorm", "in": src, "out": dst, "weight": self.host_tensor(f"{name}.weight", mod.weight),
                           "bias": self.host_tensor(f"{name}.bias", mod.bias), "eps": float(mod.eps)})

    def run(self) -> None:
        m = self.m
        if type(m).__name__ != "VisionTransformer" or not isinstance(getattr(m.patch_embed, "proj", None), QuantConv2d):
            raise ProgramError(f"integer program export supports timm VisionTransformer (ViT/DeiT) models, not "
                               f"{type(m).__name__}; Swin runs calibrate + fake-quant eval only")
        for attr in ("norm_pre", "fc_norm", "head_drop"):
            mod = getattr(m, attr, None)
            if mod is not None and not isinstance(mod, (nn.Identity, nn.Dropout)):
                raise ProgramError(f"export: {attr} = {type(mod).__name__} is not supported")
        if getattr(m, "reg_token", None) is not None or m.cls_token is None or m.global_pool != "token" \
                or getattr(m, "no_embed_class", False) or not isinstance(m.patch_embed.norm, nn.Identity):
            raise ProgramError("export supports class-token ViT/DeiT (global_pool='token', no register tokens)")
        if not isinstance(m.head, QuantLinear):
            raise ProgramError("export needs a linear classifier head")
        pe = m.patch_embed
        p = pe.patch_size[0]
        n_patch = pe.num_patches
        n_tok = n_patch + 1
        d = m.embed_dim
        pq = pe.proj
        self.graph.append({"op": "patchify", "in": "image", "out": "patches", "patch_size": p})
        self.encoder("patch_embed.in", pq.input_quantizer, n_patch, "patch_embed.proj.input_quantizer")
        self.graph.append({"op": "encode", "encoder": "patch_embed.in", "in": "patches", "out": "patches.q"})
        self.linear("patch_embed", pq, n_patch, self.FIXED, qname_in="patch_embed.proj.input_quantizer")
        self.graph.append({"op": "gemm", "layer": "patch_embed", "in": "patches.q", "out": "tokens"})
        self.graph.append({"op": "embed", "in": "tokens", "out": "x", "cls_token": self.host_tensor("cls_token", m.cls_token[0, 0]),
                           "pos_embed": self.host_tensor("pos_embed", m.pos_embed[0])})
        for i, blk in enumerate(m.blocks):
            pfx = f"blocks.{i}"
            for attr in ("ls1", "ls2"):
                if not isinstance(getattr(blk, attr, nn.Identity()), nn.Identity):
                    raise ProgramError(f"{pfx}: LayerScale is not supported by the program exporter")
            at = blk.attn
            if not isinstance(at, QuantAttention) or not isinstance(at.q_norm, nn.Identity) \
                    or not isinstance(at.norm, nn.Identity):
                raise ProgramError(f"{pfx}: only plain multi-head attention can be exported")
            h, hd = at.num_heads, at.head_dim
            self.ln(f"{pfx}.norm1", blk.norm1, "x", "h")
            qn = f"{pfx}.attn.qkv.input_quantizer"
            self.encoder(f"{pfx}.attn.qkv.in", at.qkv.input_quantizer, n_tok, qn)
            self.graph.append({"op": "encode", "encoder": f"{pfx}.attn.qkv.in", "in": "h", "out": "h.q"})
            outs = {"q": (self.out_of(at.qk.a_quantizer), f"{pfx}.attn.qk.a_quantizer"),
                    "k": (self.out_of(at.qk.b_quantizer), f"{pfx}.attn.qk.b_quantizer"),
                    "v": (self.out_of(at.av.b_quantizer), f"{pfx}.attn.av.b_quantizer")}
            for j, part in enumerate("qkv"):
                self.linear(f"{pfx}.attn.{part}", at.qkv, n_tok, outs[part][0], slice(j * h * hd, (j + 1) * h * hd),
                            qname_in=qn, qname_out=outs[part][1])
                self.graph.append({"op": "gemm", "layer": f"{pfx}.attn.{part}", "in": "h.q", "out": part})
            # q @ k^T: Q uniform per tensor x K^T sym, output fixed32 (softmax input), 1/sqrt(d) in Mc
            qe, ke, ve = at.qk.a_quantizer.export(), at.qk.b_quantizer.export(), at.av.b_quantizer.export()
            self.layer(f"{pfx}.attn.qk", "qk", qe, n_tok, hd, n_tok, None, ke["bits"], [ke["scale"]], self.FIXED,
                       gain=float(at.scale), quantizer_in=f"{pfx}.attn.qk.a_quantizer")
            self.encoder(f"{pfx}.attn.softmax", at.av.a_quantizer, n_tok, f"{pfx}.attn.av.a_quantizer")
            pout = self.out_of(at.proj.input_quantizer)
            self.layer(f"{pfx}.attn.av", "av", at.av.a_quantizer.export(), n_tok, n_tok, hd, None, ve["bits"],
                       [ve["scale"]], pout, quantizer_in=f"{pfx}.attn.av.a_quantizer",
                       quantizer_out=f"{pfx}.attn.proj.input_quantizer")
            self.graph.append({"op": "attention", "heads": h, "head_dim": hd, "qk": f"{pfx}.attn.qk",
                               "softmax": f"{pfx}.attn.softmax", "av": f"{pfx}.attn.av",
                               "q": "q", "k": "k", "v": "v", "out": "o"})
            self.linear(f"{pfx}.attn.proj", at.proj, n_tok, self.FIXED, qname_in=f"{pfx}.attn.proj.input_quantizer")
            self.graph.append({"op": "gemm", "layer": f"{pfx}.attn.proj", "in": "o", "out": "y"})
            self.graph.append({"op": "add", "in": ["x", "y"], "out": "x"})
            self.ln(f"{pfx}.norm2", blk.norm2, "x", "h")
            mlp = blk.mlp
            if not isinstance(getattr(mlp, "norm", nn.Identity()), nn.Identity) or not isinstance(mlp.act, nn.GELU):
                raise ProgramError(f"{pfx}: only Linear-GELU-Linear MLPs can be exported")
            self.encoder(f"{pfx}.mlp.fc1.in", mlp.fc1.input_quantizer, n_tok, f"{pfx}.mlp.fc1.input_quantizer")
            self.graph.append({"op": "encode", "encoder": f"{pfx}.mlp.fc1.in", "in": "h", "out": "h.q"})
            self.linear(f"{pfx}.mlp.fc1", mlp.fc1, n_tok, self.FIXED, qname_in=f"{pfx}.mlp.fc1.input_quantizer")
            self.graph.append({"op": "gemm", "layer": f"{pfx}.mlp.fc1", "in": "h.q", "out": "f"})
            self.graph.append({"op": "gelu", "in": "f", "out": "g", "approximate": mlp.act.approximate})
            self.encoder(f"{pfx}.mlp.fc2.in", mlp.fc2.input_quantizer, n_tok, f"{pfx}.mlp.fc2.input_quantizer")
            self.graph.append({"op": "encode", "encoder": f"{pfx}.mlp.fc2.in", "in": "g", "out": "g.q"})
            self.linear(f"{pfx}.mlp.fc2", mlp.fc2, n_tok, self.FIXED, qname_in=f"{pfx}.mlp.fc2.input_quantizer")
            self.graph.append({"op": "gemm", "layer": f"{pfx}.mlp.fc2", "in": "g.q", "out": "y"})
            self.graph.append({"op": "add", "in": ["x", "y"], "out": "x"})
        self.ln("norm", m.norm, "x", "x")
        self.graph.append({"op": "pool", "kind": "token", "in": "x", "out": "pooled"})
        self.encoder("head.in", m.head.input_quantizer, 1, "head.input_quantizer")
        self.graph.append({"op": "encode", "encoder": "head.in", "in": "pooled", "out": "pooled.q"})
        self.linear("head", m.head, 1, self.FIXED, qname_in="head.input_quantizer")
        self.graph.append({"op": "gemm", "layer": "head", "in": "pooled.q", "out": "logits"})
        self.model_info = {"kind": "vit", "embed_dim": d, "depth": len(m.blocks), "num_heads": m.blocks[0].attn.num_heads,
                           "num_tokens": n_tok, "num_prefix_tokens": 1, "img_size": list(pe.img_size),
                           "patch_size": p, "in_chans": pq.weight.shape[1], "num_classes": m.head.out_features}


def check_integer_path(qvit, error=None) -> None:
    """Raise ``error`` (default :class:`ProgramError`) when ``qvit`` quantizes an operand no integer
    program holds: the LayerNorm and softmax inputs of ``QuantConfig.all_modules`` (docs/datapath.md
    section 9 keeps both on the host in float32)."""
    if getattr(qvit.config, "all_modules", False):
        raise (error or ProgramError)(
            "this model quantizes the LayerNorm and softmax inputs (all_modules, MPTQ-ViT's Table 3 setting): "
            "the integer datapath keeps both on the host in float32 (docs/datapath.md section 9), so there is "
            "no integer program or integer grid for it; evaluate it in float fake-quant, or calibrate without "
            "--all-modules")


def export_program(qvit, data_config: dict | None = None, outlier_capacity: int | None = None,
                   tile_rows: int = TILE_ROWS) -> Program:
    """Build the integer :class:`Program` of a calibrated QuantViT (ViT/DeiT only)."""
    check_integer_path(qvit, ProgramError)
    ex = _Exporter(qvit, outlier_capacity, tile_rows)
    with torch.no_grad():
        ex.run()
    cfg = qvit.config
    man = {"format": FORMAT, "format_version": FORMAT_VERSION, "spec_version": 2,
           "model": {"name": qvit.model_name, **ex.model_info, "data_config": data_config or {}},
           "method": cfg.method, "bits": f"w{cfg.w_bits}a{cfg.a_bits}", "config": cfg.to_dict(),
           "enc_in_frac": ENC_IN_FRAC, "out_frac": OUT_FRAC,
           "graph": ex.graph, "layers": ex.layers, "encoders": ex.encoders, "host": ex.host}
    return Program(json.loads(json.dumps(man, default=_json_default)), ex.tensors)


def _json_default(o):
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    raise TypeError(f"not JSON serialisable: {type(o)}")
