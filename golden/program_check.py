"""Load-time validation of program and golden-vector files (docs/program-format.md, docs/datapath.md).

A program or golden file may be truncated, hand-edited, produced by another tool or corrupted on
disk. :func:`check_program` and :func:`check_golden` check every field the integer simulator, the
fake-quant grid and the testbenches read — type, range, presence, tensor dtype, shape and value
range, and the consistency between the graph, the layers and the encoders — so that a load either
returns a program that runs exactly as exported, or raises a :class:`~vitaccel.sim.errors.UserError`
subclass naming the file, the entry and the problem. Nothing is cast silently: integer codes stored
as floats are refused (``astype(int64)`` would truncate them), non-finite floats are refused.

Ranges are those of the spec: codes (section 3/4), outliers (5), accumulator (6), requantizer
``Mr, Sr, Mc, Sc, Bq, z_out`` (7), encoders ``R, SE, z, ALPHA, SH, m0/m1`` and the scale ladder
(8, 8.1.1).
"""
from __future__ import annotations

import math

import numpy as np

from vitaccel.sim import formats as F

__all__ = ["check_program", "check_golden", "INT_KINDS"]

#: numpy dtype kinds accepted for integer arrays (never floats: a cast would truncate).
INT_KINDS = "iu"
#: Graph step ops and the keys each one needs (besides ``op``).
STEP_KEYS = {
    "patchify": ("in", "out", "patch_size"),
    "encode": ("encoder", "in", "out"),
    "gemm": ("layer", "in", "out"),
    "embed": ("in", "out", "cls_token", "pos_embed"),
    "layernorm": ("in", "out", "weight", "bias", "eps"),
    "add": ("in", "out"),
    "gelu": ("in", "out"),
    "pool": ("in", "out"),
    "attention": ("heads", "head_dim", "qk", "softmax", "av", "q", "k", "v", "out"),
}
#: ``data_config`` keys (timm ``resolve_data_config``) and their checks.
DATA_CONFIG_KEYS = ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")
_BIG = 1 << 62


class _Checker:
    """Collects the context (file, entry) of the checks and raises ``error`` with it."""

    def __init__(self, error, where: str):
        self.error, self.where = error, where

    def fail(self, msg: str):
        raise self.error(f"{self.where}: {msg}")

    # ---- scalars --------------------------------------------------------------------------
    def int_(self, v, name: str, lo: int = -_BIG, hi: int = _BIG) -> int:
        if type(v) is not int:
            self.fail(f"{name} must be an integer, got {v!r}")
        if not lo <= v <= hi:
            self.fail(f"{name} = {v} is out of range {lo}..{hi}")
        return v

    def float_(self, v, name: str, positive: bool = False) -> float:
        if type(v) not in (int, float) or not math.isfinite(v):
            self.fail(f"{name} must be a finite number, got {v!r}")
        if positive and not v > 0:
            self.fail(f"{name} must be > 0, got {v!r}")
        return float(v)

    def str_(self, v, name: str, choices=None) -> str:
        if not isinstance(v, str) or not v:
            self.fail(f"{name} must be a non-empty string, got {v!r}")
        if choices is not None and v not in choices:
            self.fail(f"{name} = {v!r} is not one of {', '.join(choices)}")
        return v

    def bool_(self, v, name: str) -> bool:
        if type(v) is not bool:
            self.fail(f"{name} must be true or false, got {v!r}")
        return v

    def dict_(self, v, name: str) -> dict:
        if not isinstance(v, dict):
            self.fail(f"{name} must be an object, got {type(v).__name__}")
        return v

    def get(self, d: dict, key: str, name: str):
        if key not in d:
            self.fail(f"{name} lacks the required key {key!r}")
        return d[key]

    def bits(self, v, name: str) -> int:
        self.int_(v, name)
        if v not in F.BITS:
            self.fail(f"{name} = {v} is not a supported width {F.BITS}")
        return v

    # ---- arrays ---------------------------------------------------------------------------
    def int_array(self, a, name: str, lo: int, hi: int, sizes=None, shape=None) -> np.ndarray:
        a = np.asarray(a)
        if a.dtype.kind not in INT_KINDS:
            self.fail(f"array {name} must hold integers, got dtype {a.dtype} (integer codes are never cast)")
        if shape is not None and tuple(a.shape) != tuple(shape):
            self.fail(f"array {name} has shape {tuple(a.shape)}, expected {tuple(shape)}")
        if sizes is not None and (a.ndim > 1 or a.size not in sizes):
            self.fail(f"array {name} has shape {tuple(a.shape)}, expected a vector of {' or '.join(map(str, sizes))}"
                      " entries")
        if a.size:
            mn, mx = int(a.min()), int(a.max())
            if mn < lo or mx > hi:
                self.fail(f"array {name} holds {mn if mn < lo else mx}, outside the range {lo}..{hi}")
        return a.astype(np.int64)

    def float_array(self, a, name: str, shape=None) -> np.ndarray:
        a = np.asarray(a)
        if a.dtype not in (np.float32, np.float64):
            self.fail(f"array {name} must be float32, got dtype {a.dtype}")
        if shape is not None and tuple(a.shape) != tuple(shape):
            self.fail(f"array {name} has shape {tuple(a.shape)}, expected {tuple(shape)}")
        if not np.all(np.isfinite(a)):
            self.fail(f"array {name} holds NaN or infinite values")
        return a


# ================================================================================================
# program
# ================================================================================================
def _check_model(c: _Checker, model) -> dict:
    c.dict_(model, "model")
    out = {"name": c.str_(c.get(model, "name", "model"), "model.name")}
    c.str_(c.get(model, "kind", "model"), "model.kind", ("vit",))
    for key in ("embed_dim", "depth", "num_heads", "num_tokens", "patch_size", "in_chans", "num_classes"):
        out[key] = c.int_(c.get(model, key, "model"), f"model.{key}", 1, 1 << 20)
    c.int_(c.get(model, "num_prefix_tokens", "model"), "model.num_prefix_tokens", 1, 1)
    size = c.get(model, "img_size", "model")
    if not isinstance(size, list) or len(size) != 2:
        c.fail(f"model.img_size must be [H, W], got {size!r}")
    h, w = (c.int_(v, "model.img_size", 1, 1 << 16) for v in size)
    p = out["patch_size"]
    if h % p or w % p or (h // p) * (w // p) + 1 != out["num_tokens"]:
        c.fail(f"model.img_size {size} with patch_size {p} does not give num_tokens = {out['num_tokens']}")
    dc = c.dict_(c.get(model, "data_config", "model"), "model.data_config")
    for key in dc:
        if key not in DATA_CONFIG_KEYS:
            c.fail(f"model.data_config has the unknown key {key!r} (known: {', '.join(DATA_CONFIG_KEYS)})")
    if dc:
        for key in DATA_CONFIG_KEYS:
            c.get(dc, key, "model.data_config")
        isz = dc["input_size"]
        if not isinstance(isz, list) or len(isz) != 3:
            c.fail(f"model.data_config.input_size must be [C, H, W], got {isz!r}")
        for v in isz:
            c.int_(v, "model.data_config.input_size", 1, 1 << 16)
        if isz != [out["in_chans"], h, w]:
            c.fail(f"model.data_config.input_size {isz} does not match in_chans {out['in_chans']} and img_size {size}")
        for key in ("mean", "std"):
            v = dc[key]
            if not isinstance(v, list) or len(v) != out["in_chans"]:
                c.fail(f"model.data_config.{key} must list one number per channel, got {v!r}")
            for x in v:
                c.float_(x, f"model.data_config.{key}", positive=key == "std")
        c.float_(dc["crop_pct"], "model.data_config.crop_pct", positive=True)
        c.str_(dc["interpolation"], "model.data_config.interpolation",
               ("bilinear", "bicubic", "nearest", "box", "hamming", "lanczos", "random"))
        c.str_(dc["crop_mode"], "model.data_config.crop_mode", ("center", "squash", "border"))
    return out


def _za_range(a: dict, bits: int) -> tuple[int, int]:
    kind = a["kind"]
    if kind == "uniform":
        return 0, (1 << bits) - 1
    if kind == "shiftlog2":
        return 0, 1 << 40  # Zs lies in the D domain; the accumulator bound limits it further
    return 0, 0


def _check_layer(c: _Checker, name: str, e, t: dict) -> dict:
    """One layer entry and its tensors; returns the facts the graph checks need."""
    w = f"layer {name}"
    c.dict_(e, w)
    op = c.str_(c.get(e, "op", w), f"{w}.op", F.OPS)
    shape = c.get(e, "shape", w)
    if not isinstance(shape, list) or len(shape) != 3:
        c.fail(f"{w}.shape must be [M, K, N], got {shape!r}")
    m, k, n = (c.int_(v, f"{w}.shape", 1, 1 << 24) for v in shape)
    a = c.dict_(c.get(e, "a", w), f"{w}.a")
    kind = c.str_(c.get(a, "kind", f"{w}.a"), f"{w}.a.kind", F.A_FORMATS)
    a_bits = c.bits(c.get(a, "bits", f"{w}.a"), f"{w}.a.bits")
    dynamic = c.bool_(a["dynamic"], f"{w}.a.dynamic") if "dynamic" in a else False
    if dynamic and kind != "uniform":
        c.fail(f"{w}: only a uniform A operand can be dynamic")
    if kind == "shiftlog2":
        c.str_(c.get(a, "base", f"{w}.a"), f"{w}.a.base", F.LOG_BASES)
    if kind == "three_region":
        m0 = c.int_(c.get(a, "m0", f"{w}.a"), f"{w}.a.m0", 0, 15)
        c.int_(c.get(a, "m1", f"{w}.a"), f"{w}.a.m1", m0, 15)
    b_bits = c.bits(c.get(e, "b_bits", w), f"{w}.b_bits")
    fo = c.int_(c.get(e, "fo", w), f"{w}.fo", 0, 4)
    cap = c.get(e, "outlier_capacity", w)
    if cap is not None:
        c.int_(cap, f"{w}.outlier_capacity", 0, 1 << 20)
    c.int_(c.get(e, "tile_rows", w), f"{w}.tile_rows", 1, 1 << 16)
    out_fmt = c.str_(c.get(e, "out_fmt", w), f"{w}.out_fmt", F.OUT_FORMATS)
    out_bits = c.int_(c.get(e, "out_bits", w), f"{w}.out_bits")
    want_bits = {"fixed16": (16,), "fixed32": (32,)}.get(out_fmt, F.BITS)
    if out_bits not in want_bits:
        c.fail(f"{w}.out_bits = {out_bits} does not fit out_fmt {out_fmt}")
    c.int_(c.get(e, "out_frac", w), f"{w}.out_frac", 0, 31 if out_fmt.startswith("fixed") else 0)
    c.int_(c.get(e, "acc_bits", w), f"{w}.acc_bits", 1, F.ACC_BITS_MAX)
    rq = c.dict_(c.get(e, "requant", w), f"{w}.requant")
    sr = c.int_(c.get(rq, "sr", f"{w}.requant"), f"{w}.requant.sr", 0, F.SR_MAX)
    z_hi = (1 << out_bits) - 1 if out_fmt == "ucode" else 0
    c.int_(c.get(rq, "z_out", f"{w}.requant"), f"{w}.requant.z_out", 0, z_hi)
    for key in ("quantizer_in", "quantizer_out"):
        if e.get(key) is not None:
            c.str_(e[key], f"{w}.{key}")
    if e.get("max_tile_outliers") is not None:
        c.int_(e["max_tile_outliers"], f"{w}.max_tile_outliers", 0, 1 << 40)

    def arr(key_holder, key, label):
        ref = c.str_(c.get(key_holder, key, label), f"{label}.{key}")
        if ref not in t:
            c.fail(f"{label}.{key} names the array {ref!r}, which tensors.npz lacks")
        return ref, t[ref]

    b_ref = c.get(e, "b", w)
    if b_ref == "runtime":
        if op == "linear":
            c.fail(f"{w}: a linear layer needs stored weights, not b = 'runtime'")
    else:
        ref, b = arr(e, "b", w)
        lo, hi = F.sym_range(b_bits)
        c.int_array(b, ref, lo, hi, shape=(k, n))
    if op != "linear" and b_ref != "runtime":
        c.fail(f"{w}: a {op} layer takes its B operand at run time (b must be 'runtime')")
    za_ref, za = arr(a, "za", f"{w}.a")
    zlo, zhi = _za_range(a, a_bits)
    if dynamic:
        zlo = zhi = (1 << a_bits) - 1
    c.int_array(za, za_ref, zlo, zhi, sizes=(1, m))
    mr_ref, mr = arr(rq, "mr", f"{w}.requant")
    mr_sizes = range(1, F.LADDER_MAX + 1) if dynamic else (1, m)
    mr = c.int_array(mr, mr_ref, 0, min(1 << sr, (1 << F.MULT_BITS) - 1), sizes=mr_sizes)
    ncols = (1, n)
    for key, lo, hi in (("mc", 0, (1 << F.MULT_BITS) - 1), ("sc", 0, F.SC_MAX),
                        ("bq", -(1 << (F.BQ_BITS - 1)) + 1, (1 << (F.BQ_BITS - 1)) - 1)):
        ref, v = arr(rq, key, f"{w}.requant")
        c.int_array(v, ref, lo, hi, sizes=ncols)
    if "bias" in e:
        ref, v = arr(e, "bias", w)
        c.float_array(v, ref)
    return {"op": op, "m": m, "k": k, "n": n, "kind": kind, "bits": a_bits, "b_bits": b_bits, "dynamic": dynamic,
            "fo": fo, "mr_size": int(mr.size), "out_fmt": out_fmt, "out_bits": out_bits, "a": a}


def _check_encoder(c: _Checker, name: str, e, t: dict) -> dict:
    w = f"encoder {name}"
    c.dict_(e, w)
    kind = c.str_(c.get(e, "kind", w), f"{w}.kind", F.A_FORMATS)
    bits = c.bits(c.get(e, "bits", w), f"{w}.bits")
    c.int_(c.get(e, "in_frac", w), f"{w}.in_frac", 0, 31)
    if "in_bits" in e:
        c.int_(e["in_bits"], f"{w}.in_bits", 2, 32)
    se = c.int_(c.get(e, "se", w), f"{w}.se", 0, F.SE_MAX)
    if e.get("quantizer") is not None:
        c.str_(e["quantizer"], f"{w}.quantizer")

    def arr(holder, key, label):
        ref = c.str_(c.get(holder, key, label), f"{label}.{key}")
        if ref not in t:
            c.fail(f"{label}.{key} names the array {ref!r}, which tensors.npz lacks")
        return ref, t[ref]

    r_ref, r = arr(e, "r", w)
    r = c.int_array(r, r_ref, 1, (1 << F.RECIP_BITS) - 1, sizes=range(1, 1 << 24))
    z_ref, z = arr(e, "z", w)
    c.int_array(z, z_ref, 0, (1 << bits) - 1 if kind == "uniform" else 0, sizes=(1, r.size))
    outliers = e.get("alpha_fx") is not None
    fo = 0
    if kind != "uniform" and ("alpha_fx" in e or "ladder" in e):
        c.fail(f"{w}: only a uniform encoder can have outliers (alpha_fx) or a scale ladder")
    if outliers:
        c.int_(e["alpha_fx"], f"{w}.alpha_fx", 0, (1 << 31) - 1)
        fo = c.int_(e["fo"], f"{w}.fo", 0, 4) if "fo" in e else F.OUTLIER_FRAC_BITS
        if se < fo:
            c.fail(f"{w}: se = {se} is below fo = {fo} (section 5 needs SE >= FO)")
    ladder_size = None
    if "ladder" in e:
        lad = c.dict_(e["ladder"], f"{w}.ladder")
        lr_ref, lr = arr(lad, "r", f"{w}.ladder")
        lt_ref, lt = arr(lad, "t", f"{w}.ladder")
        lr = c.int_array(lr, lr_ref, 1, (1 << F.RECIP_BITS) - 1, sizes=range(1, F.LADDER_MAX + 1))
        lt = c.int_array(lt, lt_ref, 0, (1 << 34) - 1, sizes=(lr.size,))
        if np.any(np.diff(lt) > 0) or np.any(np.diff(lr) < 0):
            c.fail(f"{w}.ladder must have non-increasing t and non-decreasing r (section 8.1.1)")
        ladder_size = int(lr.size)
    if kind == "shiftlog2":
        c.str_(c.get(e, "base", w), f"{w}.base", F.LOG_BASES)
        c.int_(c.get(e, "sh", w), f"{w}.sh", -(1 << 31) + 1, (1 << 31) - 1)
    if kind == "three_region":
        m0 = c.int_(c.get(e, "m0", w), f"{w}.m0", 0, 15)
        c.int_(c.get(e, "m1", w), f"{w}.m1", m0, 15)
    return {"kind": kind, "bits": bits, "fo": fo, "outliers": outliers, "ladder": ladder_size,
            "rows": int(r.size), "base": e.get("base"), "m0": e.get("m0"), "m1": e.get("m1")}


def _check_host(c: _Checker, host, t: dict) -> set:
    c.dict_(host, "host")
    refs = set()
    for name, ref in host.items():
        c.str_(ref, f"host.{name}")
        if ref not in t:
            c.fail(f"host.{name} names the array {ref!r}, which tensors.npz lacks")
        c.float_array(t[ref], ref)
        refs.add(ref)
    return refs


def _link(c: _Checker, lname: str, lay: dict, ename: str, enc: dict) -> None:
    """An encoder feeding a layer must produce the layer's A format (graph consistency)."""
    a = lay["a"]
    w = f"layer {lname} (fed by encoder {ename})"
    if (enc["kind"], enc["bits"]) != (lay["kind"], lay["bits"]):
        c.fail(f"{w}: A operand is {lay['bits']}-bit {lay['kind']}, the encoder makes {enc['bits']}-bit {enc['kind']}")
    if (enc["ladder"] is not None) != lay["dynamic"]:
        c.fail(f"{w}: a.dynamic must be true exactly when the encoder has a scale ladder")
    if lay["dynamic"] and lay["mr_size"] != enc["ladder"]:
        c.fail(f"{w}: requant.mr has {lay['mr_size']} entries, the encoder's ladder {enc['ladder']}")
    if (lay["fo"] > 0) != enc["outliers"] or (enc["outliers"] and lay["fo"] != enc["fo"]):
        c.fail(f"{w}: fo = {lay['fo']} does not match the encoder's outlier path (fo = {enc['fo']}, "
               f"alpha_fx {'set' if enc['outliers'] else 'unset'})")
    if enc["rows"] not in (1, lay["m"]) and enc["ladder"] is None:
        c.fail(f"{w}: the encoder has {enc['rows']} per-row scales for M = {lay['m']} rows")
    if lay["kind"] == "shiftlog2" and a.get("base") != enc["base"]:
        c.fail(f"{w}: log base {a.get('base')!r} differs from the encoder's {enc['base']!r}")
    if lay["kind"] == "three_region" and (a.get("m0"), a.get("m1")) != (enc["m0"], enc["m1"]):
        c.fail(f"{w}: m0/m1 differ from the encoder's")


def _check_graph(c: _Checker, graph, layers: dict, encoders: dict, t: dict, model: dict) -> None:
    if not isinstance(graph, list) or not graph:
        c.fail("graph must be a non-empty list of steps")
    defined = {"image": "image"}  # variable -> kind: "image", "float", "codes:ENC", "int:LAYER"
    used: dict = {}
    last_def: dict = {"image": -1}
    d = model["embed_dim"]

    def use(var, i, step):
        c.str_(var, f"graph step {i} ({step['op']}) input")
        if var not in defined:
            c.fail(f"graph step {i} ({step['op']}) reads {var!r}, which no earlier step produces")
        used[(var, last_def[var])] = True
        return defined[var]

    def define(var, kind, i, step):
        c.str_(var, f"graph step {i} ({step['op']}) output")
        if var in last_def and (var, last_def[var]) not in used and var != "image":
            c.fail(f"graph step {i} ({step['op']}) overwrites {var!r} before anything read it")
        defined[var], last_def[var] = kind, i

    def tensor(ref, i, shape):
        c.str_(ref, f"graph step {i} tensor key")
        if ref not in t:
            c.fail(f"graph step {i} names the array {ref!r}, which tensors.npz lacks")
        c.float_array(t[ref], ref, shape=shape)

    for i, step in enumerate(graph):
        c.dict_(step, f"graph step {i}")
        op = c.str_(c.get(step, "op", f"graph step {i}"), f"graph step {i}.op", tuple(STEP_KEYS))
        for key in STEP_KEYS[op]:
            c.get(step, key, f"graph step {i} ({op})")
        if op == "patchify":
            if use(step["in"], i, step) != "image":
                c.fail(f"graph step {i} (patchify) must read the image")
            if c.int_(step["patch_size"], f"graph step {i}.patch_size", 1, 1 << 16) != model["patch_size"]:
                c.fail(f"graph step {i}: patch_size differs from model.patch_size {model['patch_size']}")
            define(step["out"], "float", i, step)
        elif op == "encode":
            if use(step["in"], i, step) != "float":
                c.fail(f"graph step {i} (encode) must read a host float tensor")
            en = c.str_(step["encoder"], f"graph step {i}.encoder")
            if en not in encoders:
                c.fail(f"graph step {i} names the encoder {en!r}, which the manifest does not define")
            define(step["out"], f"codes:{en}", i, step)
        elif op == "gemm":
            ln = c.str_(step["layer"], f"graph step {i}.layer")
            if ln not in layers:
                c.fail(f"graph step {i} names the layer {ln!r}, which the manifest does not define")
            lay = layers[ln]
            if lay["op"] != "linear":
                c.fail(f"graph step {i}: layer {ln} is a {lay['op']} layer; it runs inside an attention step")
            src = use(step["in"], i, step)
            if src.startswith("codes:"):
                _link(c, ln, lay, src[6:], encoders[src[6:]])
            elif src.startswith("int:"):
                prev = layers[src[4:]]
                if (prev["out_fmt"], prev["out_bits"]) != ("ucode", lay["bits"]) or lay["kind"] != "uniform":
                    c.fail(f"graph step {i}: layer {ln} reads the {prev['out_fmt']} output of {src[4:]} as its "
                           f"{lay['bits']}-bit {lay['kind']} A operand")
            else:
                c.fail(f"graph step {i}: layer {ln} needs A codes (an encode or integer GEMM output)")
            define(step["out"], "float" if lay["out_fmt"].startswith("fixed") else f"int:{ln}", i, step)
        elif op == "embed":
            if use(step["in"], i, step) != "float":
                c.fail(f"graph step {i} (embed) must read host floats")
            tensor(step["cls_token"], i, (d,))
            tensor(step["pos_embed"], i, (model["num_tokens"], d))
            define(step["out"], "float", i, step)
        elif op == "layernorm":
            if use(step["in"], i, step) != "float":
                c.fail(f"graph step {i} (layernorm) must read host floats")
            tensor(step["weight"], i, (d,))
            tensor(step["bias"], i, (d,))
            c.float_(step["eps"], f"graph step {i}.eps", positive=True)
            define(step["out"], "float", i, step)
        elif op == "add":
            ins = step["in"]
            if not isinstance(ins, list) or len(ins) != 2:
                c.fail(f"graph step {i} (add) needs two inputs, got {ins!r}")
            for v in ins:
                if use(v, i, step) != "float":
                    c.fail(f"graph step {i} (add) must read host floats")
            define(step["out"], "float", i, step)
        elif op == "gelu":
            if use(step["in"], i, step) != "float":
                c.fail(f"graph step {i} (gelu) must read host floats")
            c.str_(step.get("approximate", "none"), f"graph step {i}.approximate", ("none", "tanh"))
            define(step["out"], "float", i, step)
        elif op == "pool":
            if use(step["in"], i, step) != "float":
                c.fail(f"graph step {i} (pool) must read host floats")
            c.str_(step.get("kind", "token"), f"graph step {i}.kind", ("token",))
            define(step["out"], "float", i, step)
        elif op == "attention":
            _check_attention(c, i, step, layers, encoders, use)
            define(step["out"], f"int:{step['av']}", i, step)
    if "logits" not in defined or defined["logits"] != "float":
        c.fail("graph never produces the float 'logits'")
    used[("logits", last_def["logits"])] = True
    dead = [v for v, j in last_def.items() if (v, j) not in used and v != "image"]
    if dead:
        c.fail(f"graph step {last_def[dead[0]]} produces {dead[0]!r}, which no later step reads")


def _check_attention(c: _Checker, i: int, step: dict, layers: dict, encoders: dict, use) -> None:
    heads = c.int_(step["heads"], f"graph step {i}.heads", 1, 1 << 12)
    hd = c.int_(step["head_dim"], f"graph step {i}.head_dim", 1, 1 << 16)
    for key, op in (("qk", "qk"), ("av", "av")):
        ln = c.str_(step[key], f"graph step {i}.{key}")
        if ln not in layers or layers[ln]["op"] != op:
            c.fail(f"graph step {i}: {key} must name a {op} layer, got {ln!r}")
    qk, av = layers[step["qk"]], layers[step["av"]]
    sm = c.str_(step["softmax"], f"graph step {i}.softmax")
    if sm not in encoders or encoders[sm]["kind"] != "log2":
        c.fail(f"graph step {i}: softmax must name a log2 encoder, got {sm!r}")
    _link(c, step["av"], av, sm, encoders[sm])
    srcs = {}
    for key in ("q", "k", "v"):
        src = use(step[key], i, step)
        if not src.startswith("int:"):
            c.fail(f"graph step {i}: {key} must be the integer output of a GEMM")
        srcs[key] = layers[src[4:]]
    q, k, v = srcs["q"], srcs["k"], srcs["v"]
    if (q["out_fmt"], q["out_bits"]) != ("ucode", qk["bits"]) or qk["kind"] != "uniform":
        c.fail(f"graph step {i}: the Q codes do not match the A operand of {step['qk']}")
    for name, src, lay in (("K", k, qk), ("V", v, av)):
        if (src["out_fmt"], src["out_bits"]) != ("scode", lay["b_bits"]):
            c.fail(f"graph step {i}: the {name} codes must be {lay['b_bits']}-bit scode (the B operand of "
                   f"{step['qk' if name == 'K' else 'av']})")
    for name, lay, mkn in (("qk", qk, (q["m"], hd, k["m"])), ("av", av, (q["m"], k["m"], hd))):
        if (lay["m"], lay["k"], lay["n"]) != mkn:
            c.fail(f"graph step {i}: layer {step[name]} has shape {[lay['m'], lay['k'], lay['n']]}, the attention "
                   f"needs {list(mkn)}")
    if heads * hd != q["n"] or q["n"] != k["n"] or q["n"] != v["n"]:
        c.fail(f"graph step {i}: heads x head_dim = {heads * hd} does not match the q/k/v widths")


def check_program(man: dict, tensors: dict, error, where: str) -> None:
    """Validate a program manifest + tensors (see module docstring); raise ``error`` naming ``where``."""
    c = _Checker(error, where)
    if man.get("spec_version", 2) != 2:
        c.fail(f"spec_version {man.get('spec_version')!r} is not 2 (docs/datapath.md)")
    model = _check_model(c, man["model"])
    layers_in = c.dict_(man["layers"], "layers")
    enc_in = c.dict_(man["encoders"], "encoders")
    layers = {n: _check_layer(c, n, e, tensors) for n, e in layers_in.items()}
    encoders = {n: _check_encoder(c, n, e, tensors) for n, e in enc_in.items()}
    _check_host(c, man["host"], tensors)
    _check_graph(c, man["graph"], layers, encoders, tensors, model)
    for key in ("enc_in_frac", "out_frac"):
        if key in man:
            c.int_(man[key], key, 0, 31)


# ================================================================================================
# golden vectors
# ================================================================================================
def _code_range(spec) -> tuple[int, int]:
    """Valid stored A codes of a layer spec (section 4)."""
    if spec.a_kind == "shiftlog2":
        return 0, F.shiftlog2_qmax(spec.a_bits, spec.a_base)
    return 0, (1 << spec.a_bits) - 1


def check_golden(man: dict, arrays: dict, prog, error, where: str) -> int:
    """Validate a golden-vector manifest + arrays against its program; returns ``n_images``."""
    c = _Checker(error, where)
    n = c.int_(man["n_images"], "n_images", 1, 1 << 24)
    labels = man.get("labels")
    if labels is not None:
        if not isinstance(labels, list) or len(labels) != n:
            c.fail(f"labels must be a list of {n} integers or null")
        for v in labels:
            c.int_(v, "labels", -1, 1 << 24)
    if "backend" in man:
        c.str_(man["backend"], "backend")
    for section, names in (("layers", prog.manifest["layers"]), ("encoders", prog.manifest["encoders"])):
        c.dict_(man[section], section)
        for rec, base in man[section].items():
            c.str_(base, f"{section}.{rec}")
            if base not in names:
                c.fail(f"{section}.{rec} names {base!r}, which the program does not define")
            head = rec[len(base):]
            if rec != base and not (head.startswith(".h") and head[2:].isdigit()):
                c.fail(f"record name {rec!r} does not belong to {base!r}")
    for key in arrays:  # every array belongs to a listed record (a record missing from golden.json is an error)
        rec, _, field = key.rpartition("/")
        listed = man["encoders"] if rec.startswith("enc:") else man["layers"]
        if rec.removeprefix("enc:") not in listed:
            c.fail(f"vectors.npz holds {key!r}, but golden.json does not list the record {rec.removeprefix('enc:')!r}")
    for rec, base in man["layers"].items():
        _check_golden_layer(c, rec, prog.layer_spec(base), arrays, n)
    for rec, base in man["encoders"].items():
        _check_golden_encoder(c, rec, prog.encoder_spec(base), arrays, n)
    return n


def _need(c: _Checker, arrays: dict, key: str):
    if key not in arrays:
        c.fail(f"vectors.npz lacks the array {key!r}")
    return arrays[key]


def _check_outliers(c: _Checker, o, key: str, n: int, m: int, k: int) -> None:
    o = c.int_array(o, key, -(1 << 31), 1 << 31)
    if o.ndim != 2 or o.shape[1] != 4:
        c.fail(f"array {key} must have shape (count, 4) rows [image, row, col, val], got {tuple(o.shape)}")
    for col, hi, what in ((0, n - 1, "image"), (1, m - 1, "row"), (2, k - 1, "col")):
        if o.size and (o[:, col].min() < 0 or o[:, col].max() > hi):
            c.fail(f"array {key}: an outlier {what} index is outside 0..{hi}")
    if o.size and (o[:, 3].min() < -(1 << 15) or o[:, 3].max() > (1 << 15) - 1):
        c.fail(f"array {key}: an outlier value does not fit int16 (section 5)")


def _check_golden_layer(c: _Checker, rec: str, spec, arrays: dict, n: int) -> None:
    a = _need(c, arrays, f"{rec}/a_codes")
    if np.asarray(a).ndim != 3 or np.asarray(a).shape[0] != n:
        c.fail(f"array {rec}/a_codes must have shape (n_images = {n}, M, K), got {tuple(np.asarray(a).shape)}")
    _, m, k = np.asarray(a).shape
    lo, hi = _code_range(spec)
    c.int_array(a, f"{rec}/a_codes", lo, hi)
    nb = spec.b.shape[1] if spec.b.shape[1] else None
    if spec.op in ("qk", "av"):
        b = _need(c, arrays, f"{rec}/b")
        b = np.asarray(b)
        if b.ndim != 3 or b.shape[:2] != (n, k):
            c.fail(f"array {rec}/b must have shape ({n}, {k}, N), got {tuple(b.shape)}")
        blo, bhi = F.sym_range(spec.b_bits)
        c.int_array(b, f"{rec}/b", blo, bhi)
        nb = b.shape[2]
    elif spec.b.shape[0] != k:
        c.fail(f"array {rec}/a_codes has K = {k}, the program layer {spec.b.shape[0]}")
    acc_lim = (1 << (spec.acc_bits - 1))
    c.int_array(_need(c, arrays, f"{rec}/acc"), f"{rec}/acc", -acc_lim, acc_lim - 1, shape=(n, m, nb))
    olo, ohi = F.out_range(spec.out_fmt, spec.out_bits)
    c.int_array(_need(c, arrays, f"{rec}/out"), f"{rec}/out", olo, ohi, shape=(n, m, nb))
    _check_outliers(c, _need(c, arrays, f"{rec}/outliers"), f"{rec}/outliers", n, m, k)
    if spec.meta.get("dynamic_rows"):
        c.int_array(_need(c, arrays, f"{rec}/mr"), f"{rec}/mr", 0, (1 << F.MULT_BITS) - 1, shape=(n, m))
        c.int_array(_need(c, arrays, f"{rec}/za"), f"{rec}/za", 0, (1 << spec.a_bits) - 1, shape=(n, m))


def _check_golden_encoder(c: _Checker, rec: str, enc, arrays: dict, n: int) -> None:
    x = np.asarray(_need(c, arrays, f"enc:{rec}/x_fx"))
    if x.ndim != 2 + 1 or x.shape[0] != n:
        c.fail(f"array enc:{rec}/x_fx must have shape ({n}, M, K), got {tuple(x.shape)}")
    lim = 1 << (enc.in_bits - 1)
    c.int_array(x, f"enc:{rec}/x_fx", -lim, lim - 1)
    c.int_array(_need(c, arrays, f"enc:{rec}/codes"), f"enc:{rec}/codes", 0, (1 << enc.bits) - 1, shape=x.shape)
    _check_outliers(c, _need(c, arrays, f"enc:{rec}/outliers"), f"enc:{rec}/outliers", n, x.shape[1], x.shape[2])
    if enc.dynamic:
        c.int_array(_need(c, arrays, f"enc:{rec}/row_index"), f"enc:{rec}/row_index", 0,
                    len(enc.ladder_r) - 1, shape=x.shape[:2])
        c.int_array(_need(c, arrays, f"enc:{rec}/row_zero"), f"enc:{rec}/row_zero", 0, (1 << enc.bits) - 1,
                    shape=x.shape[:2])
