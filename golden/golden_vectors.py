"""Golden vectors: per-layer integer inputs and expected outputs for the RTL testbenches (``tb/``).

Produced by running the integer simulator (``sim.layer`` numba API, or the numpy reference) on an
exported program for N images. Directory layout (``format_version`` 1, see
``docs/program-format.md``):

* ``golden.json`` — ``format`` = ``"vitaccel-golden"``, ``format_version``, ``n_images``, ``labels``,
  ``backend``, ``layers`` (record name -> program layer name; attention heads are recorded as
  ``LAYER.hJ``), ``encoders`` (record name -> program encoder name);
* ``program/`` — the program the vectors belong to (``manifest.json`` + ``tensors.npz``);
* ``vectors.npz`` — for each layer record ``R``: ``R/a_codes`` ``(n, M, K)``, ``R/acc`` and ``R/out``
  ``(n, M, N)``, ``R/outliers`` ``(total, 4)`` rows ``[image, row, col, val]``, and for run-time B
  operands (``q @ k^T``, ``attn @ v``) ``R/b`` ``(n, K, N)``, for a dynamic per-patch A operand
  (docs/datapath.md 8.1.1) the row parameters it ran with, ``R/mr`` and ``R/za`` ``(n, M)``; for each
  encoder record ``E``: ``enc:E/x_fx``, ``enc:E/codes``, ``enc:E/outliers`` and, for a dynamic
  per-patch encoder, ``enc:E/row_index`` and ``enc:E/row_zero`` ``(n, M)``.

:func:`load_golden` returns ``{record: {"spec": LayerSpec, "a_codes", "outliers", "b", "acc", "out",
"row_mr", "row_za"}}`` where ``outliers`` is a list of ``(k, 3)`` arrays, one per image, and
``row_mr`` / ``row_za`` are ``None`` unless the layer's row parameters come from a dynamic encoder;
:func:`image_spec` gives the layer spec one image ran with.
"""
from __future__ import annotations

import json
import os
from dataclasses import replace

import numpy as np
import torch

from vitaccel.sim.errors import UserError
from vitaccel.sim.outputs import atomic_output_dir, check_output_dir

from .int_eval import ProgramRunner
from .program import Program, ProgramError, load_npz, load_program, read_versioned_manifest, save_program
from .program_check import check_golden

FORMAT = "vitaccel-golden"
FORMAT_VERSION = 2


class GoldenError(UserError):
    """A golden-vector directory is malformed, truncated or of another version."""


def write_golden(prog: Program, images, out_dir: str, labels=None, backend: str = "auto",
                 progress: bool = True, force: bool = False) -> dict:
    """Run ``images`` through the simulator and write the golden vectors to ``out_dir``.

    The directory is written atomically (:func:`vitaccel.sim.outputs.atomic_output_dir`, with
    ``golden.json`` last): an existing non-empty ``out_dir`` is replaced only with ``force``, and
    only once the new vectors are complete.
    """
    check_output_dir(out_dir, force=force, what="golden-vector directory")
    from tqdm.auto import tqdm

    runner = ProgramRunner(prog, backend=backend, trace=True)
    per_layer: dict = {}
    per_enc: dict = {}
    images = list(images)
    if not images:
        raise GoldenError("export-golden needs at least one image")
    for i, img in enumerate(tqdm(images, desc="golden", disable=not progress, leave=False)):
        runner.records, runner.enc_records = {}, {}
        runner.run_image(img)
        for name, rec in runner.records.items():
            d = per_layer.setdefault(name, {"a_codes": [], "acc": [], "out": [], "b": [], "outliers": [],
                                            "mr": [], "za": []})
            d["a_codes"].append(rec["a_codes"])
            if "row_index" in rec:
                d["mr"].append(rec["mr"])
                d["za"].append(rec["za"])
            d["acc"].append(rec["acc"])
            d["out"].append(rec["out"])
            if rec["b"] is not None:
                d["b"].append(rec["b"])
            o = np.asarray(rec["outliers"]).reshape(-1, 3)
            d["outliers"].append(np.concatenate([np.full((len(o), 1), i, np.int64), o], axis=1))
        for name, rec in runner.enc_records.items():
            d = per_enc.setdefault(name, {"x_fx": [], "codes": [], "outliers": [], "row_index": [], "row_zero": []})
            d["x_fx"].append(rec["x_fx"])
            if "row_index" in rec:
                d["row_index"].append(rec["row_index"])
                d["row_zero"].append(rec["row_zero"])
            d["codes"].append(rec["codes"])
            o = rec["outliers"]
            d["outliers"].append(np.concatenate([np.full((len(o), 1), i, np.int64), o], axis=1))
    arrays = {}
    for name, d in per_layer.items():
        arrays[f"{name}/a_codes"] = np.stack(d["a_codes"]).astype(np.int16)
        arrays[f"{name}/acc"] = np.stack(d["acc"]).astype(np.int64)
        arrays[f"{name}/out"] = np.stack(d["out"]).astype(np.int64)
        arrays[f"{name}/outliers"] = np.concatenate(d["outliers"]).astype(np.int64)
        if d["b"]:
            arrays[f"{name}/b"] = np.stack(d["b"]).astype(np.int8)
        if d["mr"]:
            arrays[f"{name}/mr"] = np.stack(d["mr"]).astype(np.int64)
            arrays[f"{name}/za"] = np.stack(d["za"]).astype(np.int64)
    for name, d in per_enc.items():
        arrays[f"enc:{name}/x_fx"] = np.stack(d["x_fx"]).astype(np.int64)
        arrays[f"enc:{name}/codes"] = np.stack(d["codes"]).astype(np.int16)
        arrays[f"enc:{name}/outliers"] = np.concatenate(d["outliers"]).astype(np.int64)
        if d["row_index"]:
            arrays[f"enc:{name}/row_index"] = np.stack(d["row_index"]).astype(np.int64)
            arrays[f"enc:{name}/row_zero"] = np.stack(d["row_zero"]).astype(np.int64)
    def base(rec):
        head = rec.rsplit(".h", 1)
        return head[0] if len(head) == 2 and head[1].isdigit() else rec
    man = {"format": FORMAT, "format_version": FORMAT_VERSION, "n_images": len(images),
           "labels": None if labels is None else [int(x) for x in labels], "backend": backend,
           "layers": {r: base(r) for r in per_layer}, "encoders": {r: base(r) for r in per_enc}}
    with atomic_output_dir(out_dir, force=force, what="golden-vector directory") as tmp:
        save_program(prog, os.path.join(tmp, "program"))
        np.savez_compressed(os.path.join(tmp, "vectors.npz"), **arrays)
        with open(os.path.join(tmp, "golden.json"), "w") as f:  # last: marks the directory complete
            json.dump(man, f, indent=1)
    return man


def _open(path: str):
    mpath = os.path.join(path, "golden.json")
    vpath = os.path.join(path, "vectors.npz")
    if not os.path.isdir(path) or not os.path.isfile(mpath) or not os.path.isfile(vpath):
        raise GoldenError(f"{path} is not a golden-vector directory (needs golden.json, vectors.npz, program/)")
    man = read_versioned_manifest(mpath, FORMAT, FORMAT_VERSION, GoldenError, "golden-vector")
    for key in ("n_images", "layers", "encoders"):
        if key not in man:
            raise GoldenError(f"{mpath} lacks {key!r}")
    arrays = load_npz(vpath, GoldenError, "golden vectors")
    try:
        prog = load_program(os.path.join(path, "program"))
    except ProgramError as exc:
        raise GoldenError(f"golden vectors {path}: their program is unusable: {exc}") from None
    check_golden(man, arrays, prog, GoldenError, f"golden vectors {path}")
    return man, arrays, prog


def _split_outliers(o: np.ndarray, n: int) -> list:
    o = np.asarray(o).reshape(-1, 4)
    return [o[o[:, 0] == i, 1:] for i in range(n)]


def load_golden(path: str) -> dict:
    """``{record: {"spec", "a_codes", "outliers", "b", "acc", "out"}}`` (arrays with a leading image axis)."""
    man, arrays, prog = _open(path)
    n = int(man["n_images"])
    out = {}
    for rec, layer in man["layers"].items():
        try:
            a, acc, o = arrays[f"{rec}/a_codes"], arrays[f"{rec}/acc"], arrays[f"{rec}/out"]
            outl = arrays[f"{rec}/outliers"]
        except KeyError as exc:
            raise GoldenError(f"golden vectors {path}: array {exc} is missing") from None
        if a.shape[0] != n or acc.shape[0] != n or o.shape[0] != n or acc.shape != o.shape:
            raise GoldenError(f"golden vectors {path}: inconsistent shapes for {rec}")
        spec = prog.layer_spec(layer)
        spec.name = rec
        b = arrays.get(f"{rec}/b")
        row_mr, row_za = arrays.get(f"{rec}/mr"), arrays.get(f"{rec}/za")
        if spec.meta.get("dynamic_rows") and (row_mr is None or row_za is None
                                              or row_mr.shape != a.shape[:2] or row_za.shape != a.shape[:2]):
            raise GoldenError(f"golden vectors {path}: {rec} has a dynamic per-patch A operand but no "
                              "(or malformed) per-row mr / za arrays")
        out[rec] = {"spec": spec, "a_codes": a.astype(np.int64), "outliers": _split_outliers(outl, n),
                    "b": None if b is None else b.astype(np.int64), "acc": acc, "out": o,
                    "row_mr": row_mr, "row_za": row_za}
    return out


def image_spec(rec: dict, image: int):
    """The LayerSpec image ``image`` of a :func:`load_golden` record ran with: the program's spec, with
    the per-row ``mr`` / ``za`` of that image for a dynamic per-patch A operand (spec 8.1.1)."""
    spec = rec["spec"]
    if rec.get("row_mr") is None:
        return spec
    return replace(spec, mr=np.asarray(rec["row_mr"][image]), za=np.asarray(rec["row_za"][image]))


def load_golden_encoders(path: str) -> dict:
    """``{record: {"spec": EncoderSpec, "x_fx", "codes", "outliers"}}``."""
    man, arrays, prog = _open(path)
    n = int(man["n_images"])
    out = {}
    for rec, enc in man["encoders"].items():
        try:
            out[rec] = {"spec": prog.encoder_spec(enc), "x_fx": arrays[f"enc:{rec}/x_fx"],
                        "codes": arrays[f"enc:{rec}/codes"].astype(np.int64),
                        "outliers": _split_outliers(arrays[f"enc:{rec}/outliers"], n),
                        "row_index": arrays.get(f"enc:{rec}/row_index"), "row_zero": arrays.get(f"enc:{rec}/row_zero")}
        except KeyError as exc:
            raise GoldenError(f"golden vectors {path}: array {exc} is missing") from None
    return out


def export_golden(program_path: str, images: torch.Tensor, out_dir: str, labels=None, backend: str = "auto",
                  progress: bool = True, force: bool = False) -> dict:
    """Load ``program_path`` and write golden vectors of ``images`` to ``out_dir``."""
    return write_golden(load_program(program_path), images, out_dir, labels, backend, progress, force)
