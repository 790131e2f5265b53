"""Fuzzing of program and golden-vector files (hypothesis): nothing loads silently wrong.

Each example takes a valid program / golden-vector directory of a tiny calibrated ViT, applies one
corruption — truncated file, changed dtype, NaN, out-of-range value, missing key, wrong-typed JSON
value — and loads it. The load must either succeed with the *same result* as the original (same
logits of the integer program on a fixed image and the same model facts; the same golden records)
or raise :class:`vitaccel.sim.errors.UserError` (the base class the CLI prints without a traceback).
Any other exception, or a load that succeeds with a different result, fails the test.
"""
from __future__ import annotations

import json
import math
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vitaccel.golden.calibrate import calibrate_model
from vitaccel.golden.golden_vectors import load_golden, write_golden
from vitaccel.golden.int_eval import ProgramRunner
from vitaccel.golden.presets import preset
from vitaccel.golden.program import export_program, load_program, save_program
from vitaccel.sim.errors import UserError

from golden_helpers import images, tiny_vit

SETTINGS = settings(max_examples=60, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
#: A timm-style data config (exercises the manifest's data_config checks).
DATA_CONFIG = {"input_size": [3, 32, 32], "interpolation": "bicubic", "mean": [0.485, 0.456, 0.406],
               "std": [0.229, 0.224, 0.225], "crop_pct": 0.9, "crop_mode": "center"}


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A dynamic-POQ (outliers, scale ladder) + SLQ program of a one-block ViT and its golden vectors."""
    root = tmp_path_factory.mktemp("fuzz")
    cfg = preset("adfq", "w4a4", amo=False, adaround=False, mixed_precision=False, alpha_qkv=2.0, alpha_fc1=2.0)
    qvit = calibrate_model(tiny_vit(depth=1), images(8), cfg, "tiny-vit", progress=False)
    prog = export_program(qvit, DATA_CONFIG, outlier_capacity=64)
    save_program(prog, str(root / "program"))
    image = images(1, seed=5)[0]
    write_golden(load_program(str(root / "program")), [image], str(root / "golden"), [3], backend="reference",
                 progress=False)
    return {"root": root, "image": image, "program": _program_result(load_program(str(root / "program")), image),
            "golden": _golden_result(load_golden(str(root / "golden")))}


def _program_result(prog, image):
    m = prog.manifest["model"]
    logits = ProgramRunner(prog, backend="reference").run_image(image)
    facts = {k: m[k] for k in ("img_size", "patch_size", "in_chans", "num_classes", "num_tokens", "data_config")}
    return logits, facts


def _golden_result(g):
    out = {}
    for rec, r in g.items():
        spec = r["spec"].to_arrays()
        spec["meta"] = {k: v for k, v in spec["meta"].items() if k != "quantizer_out"}  # a name, for traces only
        out[rec] = {k: v for k, v in r.items() if k != "spec"} | {"spec": spec}
    return out


def _same(a, b) -> bool:
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, (np.ndarray, torch.Tensor)) or isinstance(b, (np.ndarray, torch.Tensor)):
        return np.array_equal(np.asarray(a), np.asarray(b))
    return a == b


# ------------------------------------------------------------------------------------------------ mutations
_BAD_INT = [None, "zzz", [], {}, True, 2.5, math.nan, 2 ** 70, -2 ** 70]
_BAD_FLOAT = [None, "zzz", [], {}, True, math.nan, math.inf, -math.inf]
_BAD_STR = [None, 7, [], {}, True, "", "zzz"]
_BAD_OTHER = [None, "zzz", [], {}, 7, 2.5, True, math.nan, 2 ** 70]


def _paths(obj, prefix=()):
    """Every (path, value) of a JSON document (containers and leaves)."""
    yield prefix, obj
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, prefix + (i,))


def _mutate_json(doc, data):
    """One corruption of a JSON document: a missing key or a wrong-typed / out-of-range value."""
    paths = [p for p, _ in _paths(doc) if p]
    path = data.draw(st.sampled_from(paths), label="path")
    parent = doc
    for k in path[:-1]:
        parent = parent[k]
    value = parent[path[-1]]
    if isinstance(parent, dict) and data.draw(st.booleans(), label="delete"):
        del parent[path[-1]]
        return f"delete {path}"
    if type(value) is int:
        bad = _BAD_INT
    elif type(value) is float:
        bad = _BAD_FLOAT
    elif isinstance(value, str):
        bad = _BAD_STR
    else:
        bad = _BAD_OTHER
    new = data.draw(st.sampled_from(bad), label="value")
    parent[path[-1]] = new
    return f"{path} = {new!r}"


def _mutate_arrays(arrays: dict, data):
    """One corruption of an .npz content: a missing array, another dtype, NaN or an out-of-range value."""
    key = data.draw(st.sampled_from(sorted(arrays)), label="array")
    a = arrays[key]
    kind = data.draw(st.sampled_from(["delete", "dtype", "nan", "range"]), label="kind")
    if kind == "delete":
        del arrays[key]
        return f"delete {key}"
    if kind == "dtype":
        t = data.draw(st.sampled_from(["float64", "float32", "float16", "int64", "int32", "int16", "uint16"]),
                      label="dtype")
        b = a.astype(t)
        if a.dtype.kind in "iu" and t.startswith(("int", "uint")) and not np.array_equal(b, a):
            t, b = "float64", a.astype("float64")  # a lossy integer cast is not a dtype change but new values
        arrays[key] = b
        return f"{key} as {t}"
    flat = a.astype(np.float64 if kind == "nan" or a.dtype.kind == "f" else np.int64).reshape(-1).copy()
    if flat.size == 0:
        arrays[key] = flat.reshape(a.shape)
        return f"{key} empty"
    i = data.draw(st.integers(0, flat.size - 1), label="index")
    if kind == "nan":
        flat[i] = np.nan
    elif flat.dtype.kind == "f":
        flat[i] = data.draw(st.sampled_from([np.inf, -np.inf]), label="inf")
    else:
        flat[i] = data.draw(st.sampled_from([1 << 60, -(1 << 60)]), label="big")
    arrays[key] = flat.reshape(a.shape)
    return f"{key}[{i}] {kind}"


def _mutate_dir(src: Path, dst: Path, json_name: str, npz_name: str, data) -> str:
    """Copy ``src`` to ``dst`` and corrupt one of its files."""
    shutil.copytree(src, dst)
    what = data.draw(st.sampled_from(["json"] * 4 + ["npz"] * 4 + ["truncate-json", "truncate-npz"]), label="file")
    jpath, npath = dst / json_name, dst / npz_name
    if what.startswith("truncate"):
        p = jpath if what.endswith("json") else npath
        raw = p.read_bytes()
        cut = data.draw(st.integers(0, len(raw) - 1), label="cut")
        p.write_bytes(raw[:cut])
        return f"{p.name} truncated to {cut} of {len(raw)} bytes"
    if what == "json":
        doc = json.loads(jpath.read_text())
        desc = _mutate_json(doc, data)
        jpath.write_text(json.dumps(doc))
        return desc
    with np.load(npath) as z:
        arrays = {k: z[k] for k in z.files}
    desc = _mutate_arrays(arrays, data)
    np.savez(npath, **arrays)
    return desc


def _check(load, result, expected, desc):
    try:
        got = result(load())
    except UserError:
        return
    assert _same(got, expected), f"loaded with a different result after: {desc}"


# ------------------------------------------------------------------------------------------------ tests
@SETTINGS
@given(data=st.data())
def test_program_load_is_exact_or_a_user_error(base, data):
    tmp = Path(tempfile.mkdtemp(dir=base["root"]))
    try:
        desc = _mutate_dir(base["root"] / "program", tmp / "p", "manifest.json", "tensors.npz", data)
        _check(lambda: load_program(str(tmp / "p")), lambda p: _program_result(p, base["image"]), base["program"], desc)
    finally:
        shutil.rmtree(tmp)


@SETTINGS
@given(data=st.data())
def test_golden_load_is_exact_or_a_user_error(base, data):
    tmp = Path(tempfile.mkdtemp(dir=base["root"]))
    try:
        desc = _mutate_dir(base["root"] / "golden", tmp / "g", "golden.json", "vectors.npz", data)
        _check(lambda: load_golden(str(tmp / "g")), _golden_result, base["golden"], desc)
    finally:
        shutil.rmtree(tmp)


@SETTINGS
@given(data=st.data())
def test_golden_program_copy_load_is_exact_or_a_user_error(base, data):
    """The program inside a golden-vector directory is checked as strictly as a program directory."""
    tmp = Path(tempfile.mkdtemp(dir=base["root"]))
    try:
        shutil.copytree(base["root"] / "golden", tmp / "g")
        shutil.rmtree(tmp / "g" / "program")
        desc = _mutate_dir(base["root"] / "golden" / "program", tmp / "g" / "program", "manifest.json",
                           "tensors.npz", data)
        _check(lambda: load_golden(str(tmp / "g")), _golden_result, base["golden"], desc)
    finally:
        shutil.rmtree(tmp)
