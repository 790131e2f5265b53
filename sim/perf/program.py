"""GEMM list from an exported integer program (``--program DIR``).

Reads the ``manifest.json`` of a program written by :func:`golden.program.export_program`
(``format = "vitaccel-program"``, ``format_version`` 2, docs/program-format.md); the tensors are not
needed. GEMMs are taken in execution order from the manifest's ``graph``: every ``gemm`` step is one
layer; every ``attention`` step contributes its ``qk`` and ``av`` layers with ``count = heads``. Per
layer the estimator uses ``shape`` ``[M, K, N]`` (per image; linear rows and head counts are scaled by
``--batch``), the A format and width ``a.kind`` / ``a.bits`` and ``b_bits`` (mixed precision as
exported), ``fo`` (outlier path), ``out_fmt`` / ``out_bits``, and the measured ``max_tile_outliers``
(largest outlier count seen in a tile of ``tile_rows`` rows during calibration). Whether an A operand is
per patch comes from the encoder whose ``quantizer`` is the layer's ``quantizer_in``.

For hand-written workloads a simpler manifest is also accepted: ``{"layers": [{"name", "op", "M", "K",
"N", "count", "a_bits", "b_bits", "a_fmt", "out_fmt", "fo", "max_outliers_per_tile"}, ...]}``.
"""
from __future__ import annotations

import json
from pathlib import Path

from vitaccel.sim.errors import UserError
from vitaccel.sim.formats import A_FORMATS, BITS, OPS, OUT_FORMATS

from .shapes import OUTLIER_KINDS, Gemm


class ProgramError(UserError, ValueError):
    """A missing or malformed program manifest."""


_OUT_BITS = {"fixed16": 16, "fixed32": 32}


def _int(layer: dict, key: str, where: str, *, default=None, lo: int = 1) -> int:
    v = layer.get(key, default)
    if v is None:
        raise ProgramError(f"{where}: missing field {key!r}")
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise ProgramError(f"{where}: field {key!r} must be an integer >= {lo}, got {v!r}")
    return v


def _kind(name: str, op: str) -> str:
    if op in ("qk", "av"):
        return op
    last = name.split(".")[-1]
    for k in ("q", "k", "v", "proj", "fc1", "fc2", "head"):
        if last == k:
            return k
    if "patch_embed" in name:
        return "patch_embed"
    if "reduction" in name or "downsample" in name:
        return "merge"
    return "linear"


def gemms_from_manifest(doc: dict, *, batch: int = 1, source: str = "program") -> tuple[list[Gemm], dict]:
    """Convert a parsed manifest into GEMMs (scaled to ``batch`` images when the manifest records its
    own ``batch``, default 1: linear rows and per-head counts scale by ``batch / manifest batch``)."""
    if not isinstance(doc, dict) or not isinstance(doc.get("layers"), list) or not doc["layers"]:
        raise ProgramError(f"{source}: expected a JSON object with a non-empty 'layers' list")
    pb = doc.get("batch", 1)
    if not isinstance(pb, int) or pb < 1:
        raise ProgramError(f"{source}: 'batch' must be a positive integer, got {pb!r}")
    gemms = []
    for i, layer in enumerate(doc["layers"]):
        if not isinstance(layer, dict):
            raise ProgramError(f"{source}: layer {i} is not an object")
        name = str(layer.get("name", f"layer{i}"))
        where = f"{source}: layer {i} ({name})"
        op = layer.get("op")
        if op not in OPS:
            raise ProgramError(f"{where}: field 'op' must be one of {OPS}, got {op!r}")
        if "shape" in layer:
            shp = layer["shape"]
            if not (isinstance(shp, list) and len(shp) == 3 and all(isinstance(v, int) and v > 0 for v in shp)):
                raise ProgramError(f"{where}: 'shape' must be [M, K, N] of positive integers, got {shp!r}")
            M, K, N = shp
        else:
            M, K, N = (_int(layer, k, where) for k in ("M", "K", "N"))
        count = _int(layer, "count", where, default=1)
        a_bits = _int(layer, "a_bits", where)
        b_bits = _int(layer, "b_bits", where)
        for key, b in (("a_bits", a_bits), ("b_bits", b_bits)):
            if b not in BITS:
                raise ProgramError(f"{where}: {key} = {b} is not a supported width {BITS}")
        a_fmt = layer.get("a_fmt", "uniform" if op != "av" else "log2")
        if a_fmt not in A_FORMATS:
            raise ProgramError(f"{where}: a_fmt must be one of {A_FORMATS}, got {a_fmt!r}")
        out_fmt = layer.get("out_fmt", "fixed32")
        if out_fmt not in OUT_FORMATS:
            raise ProgramError(f"{where}: out_fmt must be one of {OUT_FORMATS}, got {out_fmt!r}")
        out_bits = layer.get("out_bits", _OUT_BITS.get(out_fmt, a_bits))
        fo = _int(layer, "fo", where, default=0, lo=0)
        kind = _kind(name, op)
        outl = layer.get("outliers_per_tile", layer.get("max_outliers_per_tile", 0))
        if isinstance(outl, list):
            if not all(isinstance(v, int) and v >= 0 for v in outl):
                raise ProgramError(f"{where}: outliers_per_tile must hold non-negative integers")
            outl = max(outl, default=0)
        elif isinstance(outl, bool) or not isinstance(outl, int) or outl < 0:
            raise ProgramError(f"{where}: max_outliers_per_tile must be a non-negative integer, got {outl!r}")
        per_patch = bool(layer.get("per_patch", a_fmt == "uniform" and op == "linear"))
        a_zero = a_fmt in ("uniform", "shiftlog2")
        if op == "linear":
            M = M * batch // pb if (M * batch) % pb == 0 else M * batch / pb
            if not float(M).is_integer():
                raise ProgramError(f"{where}: M = {layer.get('M')} is not divisible by the program batch {pb}")
            M = int(M)
        else:
            if (count * batch) % pb:
                raise ProgramError(f"{where}: count = {count} is not divisible by the program batch {pb}")
            count = count * batch // pb
        gemms.append(Gemm(name, kind, op, M, K, N, count, a_bits, b_bits, a_fmt, per_patch, a_zero, out_fmt,
                          int(out_bits), fo > 0 or (kind in OUTLIER_KINDS and outl > 0), outl,
                          str(layer.get("block", ""))))
    ab = sorted({g.a_bits for g in gemms})
    wb = sorted({g.b_bits for g in gemms if g.op == "linear"})
    bits = f"w{'/'.join(map(str, wb))}a{'/'.join(map(str, ab))}" + (" mixed" if len(ab) + len(wb) > 2 else "")
    meta = dict(model=str(doc.get("model", source)), bits=bits,
                notes=[f"shapes, bit widths and outliers from program {source}"])
    return gemms, meta


PROGRAM_FORMAT = "vitaccel-program"
PROGRAM_FORMAT_VERSION = 2


def gemms_from_program_manifest(man: dict, *, batch: int = 1, source: str = "program"):
    """GEMMs of a ``vitaccel-program`` manifest (see the module docstring)."""
    if man.get("format_version") != PROGRAM_FORMAT_VERSION:
        raise ProgramError(f"{source}: program format_version {man.get('format_version')!r} is not supported "
                           f"(this estimator reads version {PROGRAM_FORMAT_VERSION})")
    for key in ("graph", "layers"):
        if not isinstance(man.get(key), (list, dict)) or not man.get(key):
            raise ProgramError(f"{source}: program manifest lacks the {key!r} section")
    layers, graph = man["layers"], man["graph"]
    if not isinstance(layers, dict) or not isinstance(graph, list):
        raise ProgramError(f"{source}: 'layers' must be an object and 'graph' a list")
    per_patch_q = {e.get("quantizer"): bool(e.get("per_patch")) for e in man.get("encoders", {}).values()
                   if isinstance(e, dict)}
    order: list[tuple[str, int]] = []
    for i, step in enumerate(graph):
        if not isinstance(step, dict):
            raise ProgramError(f"{source}: graph step {i} is not an object")
        if step.get("op") == "gemm":
            order.append((step.get("layer"), 1))
        elif step.get("op") == "attention":
            heads = step.get("heads")
            if isinstance(heads, bool) or not isinstance(heads, int) or heads < 1:
                raise ProgramError(f"{source}: graph step {i} (attention) needs a positive 'heads', got {heads!r}")
            order += [(step.get("qk"), heads), (step.get("av"), heads)]
    if not order:
        raise ProgramError(f"{source}: the program graph has no GEMM layers")
    simple = []
    tile_rows_seen = set()
    missing_outl = []
    for name, count in order:
        e = layers.get(name) if isinstance(name, str) else None
        if not isinstance(e, dict):
            raise ProgramError(f"{source}: graph refers to layer {name!r}, which the manifest does not define")
        a = e.get("a")
        if not isinstance(a, dict):
            raise ProgramError(f"{source}: layer {name}: missing or malformed field 'a'")
        fo = e.get("fo", 0) or 0
        outl = e.get("max_tile_outliers") if fo else 0
        if fo and outl is None:
            missing_outl.append(name)
            outl = 0
        if fo:
            tile_rows_seen.add(e.get("tile_rows"))
        simple.append(dict(name=name, op=e.get("op"), shape=e.get("shape"), count=count, a_bits=a.get("bits"),
                           b_bits=e.get("b_bits"), a_fmt=a.get("kind"), out_fmt=e.get("out_fmt"),
                           out_bits=e.get("out_bits"), fo=fo, max_outliers_per_tile=outl,
                           per_patch=per_patch_q.get(e.get("quantizer_in"), False) if e.get("op") == "linear"
                           else False))
    model = man.get("model", {})
    name = model.get("name", source) if isinstance(model, dict) else str(model)
    gemms, meta = gemms_from_manifest(dict(model=name, batch=1, layers=simple), batch=batch, source=source)
    if isinstance(man.get("bits"), str) and meta["bits"].endswith("mixed") is False:
        meta["bits"] = man["bits"]
    if tile_rows_seen - {None}:
        meta["notes"].append(f"outlier counts are per tile of {sorted(t for t in tile_rows_seen if t)} rows "
                             "(as calibrated)")
    if missing_outl:
        meta["notes"].append(f"{len(missing_outl)} outlier layer(s) without max_tile_outliers: counted as 0")
    return gemms, meta


def load_program_gemms(path: str, *, batch: int = 1) -> tuple[list[Gemm], dict]:
    """Read a program manifest file (see module docstring)."""
    p = Path(path)
    if p.is_dir():
        for cand in ("manifest.json", "program.json"):
            if (p / cand).is_file():
                p = p / cand
                break
    if not p.is_file():
        raise ProgramError(f"program {path} does not exist (expected a program directory with manifest.json, "
                           "or a manifest file)")
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProgramError(f"program file {p} is not valid JSON (malformed or truncated): {exc}") from None
    if isinstance(doc, dict) and "format" in doc:
        if doc["format"] != PROGRAM_FORMAT:
            raise ProgramError(f"{p} is not a vitaccel program manifest (format {doc['format']!r})")
        return gemms_from_program_manifest(doc, batch=batch, source=str(path))
    return gemms_from_manifest(doc, batch=batch, source=str(path))
