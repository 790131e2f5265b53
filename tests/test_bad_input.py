"""Bad input as a new user feeds it: every case of issue 19 ("Nothing lost, nothing silently wrong").

Each case runs the real command line (``vitaccel.cli.main``) on tiny random timm models and synthetic
files and asserts the exit code (2 for a user error, 130 for Ctrl-C), a message that names the
problem, no traceback, and that no output directory is left half-written or mixed (no temporary
``.NAME.partial-*`` sibling, old outputs byte-identical when a command fails).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vitaccel.cli import main
from vitaccel.golden import models as golden_models
from vitaccel.sim.outputs import PARTIAL_TAG

from golden_helpers import tiny_vit

TINY = ("--model", "vit_tiny_patch16_224")  # create_model is patched to the tiny ViT below
REAL_CREATE_MODEL = golden_models.create_model


# ------------------------------------------------------------------------------------------------ helpers
def run(capsys, *argv):
    """``(exit code, stdout, stderr)`` of ``vitaccel ARGV`` (argparse errors exit with SystemExit(2))."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:
        code = exc.code
    out = capsys.readouterr()
    assert "Traceback" not in out.err, out.err
    return code, out.out, out.err


def user_error(capsys, *argv, says, code=2):
    """Run, expect a user error (one ``vitaccel ...: error:`` line naming the problem)."""
    rc, out, err = run(capsys, *argv)
    assert rc == code, (rc, out, err)
    for text in ([says] if isinstance(says, str) else says):
        assert text in err, err
    return err


def digest(path: Path) -> dict:
    """Relative path -> sha256 of every file under ``path`` (to prove a folder is untouched)."""
    return {str(f.relative_to(path)): hashlib.sha256(f.read_bytes()).hexdigest()
            for f in sorted(path.rglob("*")) if f.is_file()}


def no_partial(*dirs):
    for d in dirs:
        left = [p.name for p in Path(d).iterdir() if PARTIAL_TAG in p.name]
        assert not left, f"temporary outputs left in {d}: {left}"


def write_images(root: Path, n_per_class: int = 3, classes=("n001", "n002"), seed: int = 0):
    rng = np.random.default_rng(seed)
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            Image.fromarray(rng.integers(0, 255, (40, 44, 3), dtype=np.uint8)).save(root / c / f"{i}.JPEG")


# ------------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def patched():
    """``create_model`` returns the tiny ViT (32 x 32 inputs, 10 classes) for the whole module."""
    mp = pytest.MonkeyPatch()
    mp.setattr(golden_models, "create_model", lambda *a, **k: tiny_vit())
    yield
    mp.undo()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_images(root / "imgs")
    (root / "synsets.txt").write_text("n000\nn001\nn002\n")
    bad = root / "bad"  # 2 readable + 2 unreadable images
    write_images(bad, n_per_class=1)
    (bad / "n001" / "0_garbage.JPEG").write_bytes(b"this is not a JPEG" * 10)
    raw = (bad / "n002" / "0.JPEG").read_bytes()
    (bad / "n002" / "1_truncated.JPEG").write_bytes(raw[: len(raw) // 3])
    return {"imgs": str(root / "imgs"), "map": str(root / "synsets.txt"), "bad": str(bad), "root": root}


def calibrate_args(data, out, *extra):
    return ["calibrate", *TINY, "--data", data["imgs"], "--class-map", data["map"], "--method", "adfq", "--no-amo",
            "--bits", "w4a4", "--calib-size", "4", "--workers", "0", *extra, "-o", out]


@pytest.fixture(scope="module")
def progs(patched, data, tmp_path_factory):
    """Two programs (adfq, baseline) and golden vectors of the first."""
    root = tmp_path_factory.mktemp("progs")
    for argv in (calibrate_args(data, root / "p1"), calibrate_args(data, root / "p2", "--seed", "1"),
                 ["export-golden", "--program", root / "p1", "--data", data["imgs"], "--class-map", data["map"],
                  "--images", "1", "--sim-backend", "reference", "-o", root / "golden"]):
        assert main([str(a) for a in argv]) == 0
    return {"p1": root / "p1", "p2": root / "p2", "golden": root / "golden", "root": root}


def eval_args(data, prog, *extra):
    return ["eval", "--program", prog, "--backend", "fakequant", "--data", data["imgs"], "--class-map", data["map"],
            "--workers", "0", *extra]


# ================================================================================================
# 1. stale or mixed output folders
# ================================================================================================
def test_calibrate_refuses_an_existing_program_without_force(capsys, patched, data, progs, tmp_path):
    dest = tmp_path / "p"
    shutil.copytree(progs["p1"], dest)
    before = digest(dest)
    user_error(capsys, *calibrate_args(data, dest), says=["already exists and is not empty", "--force",
                                                          "vitaccel program"])
    assert digest(dest) == before
    no_partial(tmp_path)


def test_calibrate_force_replaces_the_whole_folder(capsys, patched, data, progs, tmp_path, monkeypatch):
    """A fake-quant-only calibration (a model the exporter refuses) over a program: with --force the
    folder holds only the new files, never the old manifest / tensors next to the new model."""
    from timm.models.vision_transformer import VisionTransformer

    dest = tmp_path / "p"
    shutil.copytree(progs["p1"], dest)
    monkeypatch.setattr(golden_models, "create_model", lambda *a, **k: VisionTransformer(
        img_size=32, patch_size=8, embed_dim=64, depth=1, num_heads=2, num_classes=10, global_pool="avg").eval())
    rc, out, err = run(capsys, *calibrate_args(data, dest, "--force"))
    assert rc == 0, err
    assert "fake-quant model only" in out and "integer program not exported" in err
    assert sorted(os.listdir(dest)) == ["calibration.json", "fakequant.pt"]
    user_error(capsys, "export-golden", "--program", dest, "--data", data["imgs"], "-o", tmp_path / "g",
               says="manifest.json is missing")
    no_partial(tmp_path)


def test_ctrl_c_while_writing_over_a_program_keeps_the_old_one(capsys, patched, data, progs, tmp_path, monkeypatch):
    dest = tmp_path / "p"
    shutil.copytree(progs["p1"], dest)
    before = digest(dest)
    real_save = torch.save

    def interrupted(obj, f, *a, **k):
        real_save(obj, f, *a, **k)
        Path(f).write_bytes(Path(f).read_bytes()[:100])  # half-written
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", interrupted)
    rc, out, err = run(capsys, *calibrate_args(data, dest, "--force"))
    assert rc == 130
    assert err.strip().splitlines()[-1] == "vitaccel calibrate: interrupted; no partial output was written"
    assert digest(dest) == before
    no_partial(tmp_path)
    rc, _, err = run(capsys, *calibrate_args(data, tmp_path / "new"))  # a new folder: not created at all
    assert rc == 130 and not (tmp_path / "new").exists()
    no_partial(tmp_path)


def test_failure_while_writing_leaves_no_half_written_folder(capsys, patched, data, tmp_path, monkeypatch):
    from vitaccel.golden import program

    def full_disk(prog, path):
        Path(path, "tensors.npz").write_bytes(b"PK")
        raise OSError(28, "No space left on device", str(Path(path, "tensors.npz")))

    monkeypatch.setattr(program, "save_program", full_disk)
    user_error(capsys, *calibrate_args(data, tmp_path / "p"), says=["cannot write program directory",
                                                                    "No space left on device"])
    assert not (tmp_path / "p").exists()
    no_partial(tmp_path)


def test_export_golden_refuses_existing_vectors_without_force(capsys, data, progs, tmp_path):
    dest = tmp_path / "g"
    shutil.copytree(progs["golden"], dest)
    before = digest(dest)
    argv = ["export-golden", "--program", progs["p2"], "--data", data["imgs"], "--class-map", data["map"],
            "--images", "1", "--sim-backend", "reference", "-o", dest]
    user_error(capsys, *argv, says=["already exists", "golden-vector folder", "--force"])
    assert digest(dest) == before
    rc, _, err = run(capsys, *argv, "--force")
    assert rc == 0, err
    assert digest(dest) != before and (dest / "golden.json").is_file()
    no_partial(tmp_path)


def test_hw_generate_never_writes_into_a_program(capsys, progs, tmp_path):
    dest = tmp_path / "p"
    shutil.copytree(progs["p1"], dest)
    before = digest(dest)
    small = ["--rows", "2", "--cols", "2", "--max-k", "16", "--outlier-capacity", "0"]
    user_error(capsys, "hw", "generate", *small, "-o", dest, says=["holds a vitaccel program", "--force"])
    user_error(capsys, "hw", "generate", *small, "-o", dest / "rtl", says=["inside the vitaccel program", str(dest)])
    user_error(capsys, "calibrate", *TINY, "--data", "x", "-o", dest / "sub", says="inside the vitaccel program")
    assert digest(dest) == before
    no_partial(tmp_path, dest)


def test_incomplete_program_folder_is_refused_by_readers(capsys, data, progs, tmp_path):
    dest = tmp_path / "p"
    shutil.copytree(progs["p1"], dest)
    (dest / "tensors.npz").unlink()
    user_error(capsys, "export-golden", "--program", dest, "--data", data["imgs"], "-o", tmp_path / "g",
               says="tensors.npz is missing")
    user_error(capsys, "estimate", "--program", tmp_path / "none", says="does not exist")


# ================================================================================================
# 2. merge refuses shard sets that do not add up
# ================================================================================================
@pytest.fixture(scope="module")
def shards(patched, data, progs, tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    other = root / "other_data"
    shutil.copytree(data["imgs"], other)
    write_images(other, n_per_class=1, classes=("n002",), seed=9)  # overwrite one image: same names...
    Image.new("RGB", (40, 44)).save(other / "n002" / "extra.JPEG")  # ...and one more file
    runs = {
        "s0": eval_args(data, progs["p1"], "--shard", "0/2"),
        "s1": eval_args(data, progs["p1"], "--shard", "1/2"),
        "p2_s1": eval_args(data, progs["p2"], "--shard", "1/2"),
        "float_s1": eval_args(data, progs["p1"], "--shard", "1/2", "--float-fakequant"),
        "fp_s1": ["eval", "--backend", "fp", *TINY, "--data", data["imgs"], "--class-map", data["map"],
                  "--workers", "0", "--shard", "1/2"],
        "n3_s1": eval_args(data, progs["p1"], "--shard", "1/3"),
        "lim_s1": eval_args(data, progs["p1"], "--shard", "1/2", "--limit", "4"),
        "data_s1": ["eval", "--program", progs["p1"], "--backend", "fakequant", "--data", other, "--class-map",
                    data["map"], "--workers", "0", "--shard", "1/2"],
    }
    files = {}
    for name, argv in runs.items():
        files[name] = root / f"{name}.json"
        assert main([str(a) for a in argv] + ["--json", str(files[name])]) == 0, name
    return files


def test_merge_of_a_complete_shard_set(capsys, shards, tmp_path):
    rc, out, err = run(capsys, "merge", shards["s1"], shards["s0"], "--json", tmp_path / "m.json")
    assert rc == 0, err
    assert "merged 2 shards" in out and "(6 images)" in out
    m = json.loads((tmp_path / "m.json").read_text())
    assert m["n"] == 6 and m["shards"] == 2 and m["provenance"]["backend"] == "fakequant"


@pytest.mark.parametrize("other,says", [
    ("p2_s1", "model differs"),                # another program (content hash)
    ("fp_s1", "backend differs"),              # another backend
    ("float_s1", "fakequant_mode differs"),    # float vs integer-grid fake-quant
    ("lim_s1", "limit differs"),               # a --limit subset
    ("data_s1", "data differs"),               # another data folder (file list)
    ("n3_s1", "different shard counts"),
])
def test_merge_refuses_inconsistent_shards(capsys, shards, other, says):
    user_error(capsys, "merge", shards["s0"], shards[other], says=[says, Path(shards[other]).name])


def test_merge_refuses_missing_repeated_and_edited_shards(capsys, shards, tmp_path):
    user_error(capsys, "merge", shards["s0"], says=["shard(s) 1/2 missing", "1 of 2"])
    user_error(capsys, "merge", shards["s0"], shards["s0"], says="appears in more than one shard file")
    doc = json.loads(Path(shards["s1"]).read_text())
    cut = dict(doc, top5_pred=doc["top5_pred"][:-1])  # lists of different lengths (zip would truncate)
    (tmp_path / "cut.json").write_text(json.dumps(cut))
    user_error(capsys, "merge", shards["s0"], tmp_path / "cut.json", says=["cut.json is inconsistent", "lengths"])
    fewer = dict(doc, **{k: doc[k][:-1] for k in ("indices", "top5_pred", "labels")})
    (tmp_path / "fewer.json").write_text(json.dumps(fewer))
    user_error(capsys, "merge", shards["s0"], tmp_path / "fewer.json", says="not exactly those of shard 1/2")
    old = {k: v for k, v in doc.items() if k != "provenance"}
    (tmp_path / "old.json").write_text(json.dumps(old))
    user_error(capsys, "merge", shards["s0"], tmp_path / "old.json", says="older vitaccel")


# ================================================================================================
# 3. corrupt images are errors (or skipped with --skip-bad-images), never replaced
# ================================================================================================
def test_corrupt_images_are_named_or_skipped(capsys, patched, data, progs, tmp_path):
    bad = ["--data", data["bad"], "--class-map", data["map"], "--workers", "0"]
    user_error(capsys, "eval", "--program", progs["p1"], "--backend", "fakequant", *bad,
               says=["cannot read image", "0_garbage.JPEG", "--skip-bad-images"])
    rc, out, err = run(capsys, "eval", "--program", progs["p1"], "--backend", "fakequant", *bad, "--skip-bad-images",
                       "--json", tmp_path / "e.json")
    assert rc == 0, err
    assert "(2 images)" in out and "2 unreadable image(s) left out" in out
    res = json.loads((tmp_path / "e.json").read_text())
    assert res["n"] == 2 and len(res["indices"]) == 2 and len(res["skipped"]) == 2
    assert any("1_truncated.JPEG" in s["error"] for s in res["skipped"])
    user_error(capsys, *calibrate_args({**data, "imgs": data["bad"]}, tmp_path / "p"), says="0_garbage.JPEG")
    assert not (tmp_path / "p").exists()
    user_error(capsys, "export-golden", "--program", progs["p1"], *bad, "-o", tmp_path / "g",
               says="0_garbage.JPEG")
    rc, out, err = run(capsys, "export-golden", "--program", progs["p1"], *bad, "--skip-bad-images", "--images", "2",
                       "--sim-backend", "reference", "-o", tmp_path / "g")
    assert rc == 0 and "golden vectors of 2 image(s)" in out, err
    no_partial(tmp_path)


# ================================================================================================
# 4. silently accepted data
# ================================================================================================
def test_float_codes_in_tensors_are_refused(capsys, data, progs, tmp_path):
    dest = tmp_path / "p"
    shutil.copytree(progs["p1"], dest)
    with np.load(dest / "tensors.npz") as z:
        arrays = {k: z[k] for k in z.files}
    arrays["blocks.0.attn.q/b"] = arrays["blocks.0.attn.q/b"].astype(np.float64) + 0.4
    np.savez(dest / "tensors.npz", **arrays)
    user_error(capsys, "eval", "--program", dest, "--backend", "sim", "--data", data["imgs"],
               says=["blocks.0.attn.q/b must hold integers", "float64"])


def test_tb_run_compares_the_golden_acc(capsys, progs, tmp_path):
    dest = tmp_path / "g"
    shutil.copytree(progs["golden"], dest)
    with np.load(dest / "vectors.npz") as z:
        arrays = {k: z[k] for k in z.files}
    arrays["blocks.0.attn.proj/acc"][0, 3, 5] += 1  # in range, but not what the datapath computes
    np.savez(dest / "vectors.npz", **arrays)
    user_error(capsys, "tb", "run", dest, "--layer", "blocks.0.attn.proj",
               says=["golden acc of blocks.0.attn.proj", "row 3, column 5", "sim/reference.py"])


def test_eval_refuses_model_flags_with_a_program(capsys, data, progs):
    user_error(capsys, *eval_args(data, progs["p1"]), "--weights", "w.safetensors",
               says=["--weights", "--backend fp", "drop"])
    user_error(capsys, *eval_args(data, progs["p1"]), *TINY, says="--model")


def test_folder_labels_without_class_map(capsys, data, progs, patched, tmp_path):
    user_error(capsys, "eval", "--program", progs["p1"], "--backend", "fakequant", "--data", data["imgs"],
               "--workers", "0", says=["2 class folder(s)", "10 classes", "--class-map"])
    rc, _, err = run(capsys, "calibrate", *TINY, "--data", data["imgs"], "--method", "baseline", "--calib-size", "2",
                     "--workers", "0", "-o", tmp_path / "p")
    assert rc == 0 and "warning" in err and "--class-map" in err  # labels are not used by calibration


@pytest.mark.parametrize("argv,says", [
    (["estimate", "--model", "resnet18"], "resnet18 has no attention layers"),
    (["estimate", "--model", "deit_tiny_patch16_224", "--img-size", "17"], "multiple of its patch size 16"),
    (["estimate", "--model", "deit_tiny_patch16_224", "--img-size", "0"], "--img-size: must be >= 1"),
])
def test_estimate_refuses_what_it_cannot_model(capsys, argv, says):
    user_error(capsys, *argv, says=says)


@pytest.mark.parametrize("flags,says", [
    (("--limit", "0"), "--limit: must be >= 1"),
    (("--batch-size", "0"), "--batch-size: must be >= 1"),
    (("--workers", "-1"), "--workers: must be >= 0"),
    (("--shard", "2/2"), "--shard must be I/N"),
])
def test_eval_numeric_flags(capsys, data, progs, flags, says):
    user_error(capsys, *eval_args(data, progs["p1"]), *flags, says=says)


def test_outlier_capacity(capsys, patched, data, tmp_path):
    user_error(capsys, *calibrate_args(data, tmp_path / "neg", "--outlier-capacity", "-1"),
               says="--outlier-capacity: must be >= 0")
    assert not (tmp_path / "neg").exists()
    prog = tmp_path / "cap"
    rc, _, err = run(capsys, *calibrate_args(data, prog, "--alpha-qkv", "1", "--alpha-fc1", "1",
                                             "--outlier-capacity", "1"))
    assert rc == 0
    assert "--outlier-capacity 1 is below the outliers measured" in err and "blocks.0.attn.q" in err
    assert json.loads((prog / "calibration.json").read_text())["capacity_warnings"]
    # ... and the simulator stops with a message naming the layer, not a traceback
    user_error(capsys, "eval", "--program", prog, "--backend", "sim", "--sim-backend", "reference",
               "--data", data["imgs"], "--class-map", data["map"], "--workers", "0",
               says=["layer blocks.0.attn.", "capacity 1", "--outlier-capacity"])


# ================================================================================================
# work lost after the slow part: outputs are checked before any work starts
# ================================================================================================
def test_output_paths_are_checked_before_any_work(capsys, data, progs, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(golden_models, "create_model", lambda *a, **k: calls.append(1) or tiny_vit())
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    user_error(capsys, *calibrate_args(data, a_file), says=["exists and is a file", str(a_file)])
    user_error(capsys, *calibrate_args(data, tmp_path / "p"), "--json", a_file / "r.json",
               says="is a file, not a directory")
    user_error(capsys, *calibrate_args(data, tmp_path / "p"), "--json", tmp_path / "p" / "r.json",
               says="inside the output directory")
    user_error(capsys, *calibrate_args(data, tmp_path / "p"), "--json", progs["p1"] / "r.json",
               says="inside the vitaccel program")
    assert not calls  # refused before the model was even created
    user_error(capsys, "export-golden", "--program", progs["p1"], "--data", data["imgs"], "-o", a_file,
               says="exists and is a file")
    user_error(capsys, *eval_args(data, progs["p1"]), "--json", a_file / "e.json", says="is a file, not a directory")
    user_error(capsys, *eval_args(data, progs["p1"]), "--json", tmp_path, says="is a directory")
    user_error(capsys, "estimate", "--model", "deit_tiny_patch16_224", "--csv", a_file / "x.csv",
               says="--csv file")
    if os.geteuid() != 0:  # root can write anywhere
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        try:
            user_error(capsys, *eval_args(data, progs["p1"]), "--json", ro / "e.json", says="permission denied")
        finally:
            ro.chmod(0o700)


# ================================================================================================
# tracebacks instead of messages
# ================================================================================================
def test_non_vit_model(capsys, data, tmp_path, monkeypatch):
    monkeypatch.setattr(golden_models, "create_model", lambda *a, **k: torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 10)))
    user_error(capsys, *calibrate_args(data, tmp_path / "p"), says="not a ViT/DeiT/Swin model")
    assert not (tmp_path / "p").exists()


def _edit_program(src, dest, *, manifest=None, tensors=None):
    shutil.copytree(src, dest)
    if manifest:
        man = json.loads((dest / "manifest.json").read_text())
        manifest(man)
        (dest / "manifest.json").write_text(json.dumps(man))
    if tensors:
        with np.load(dest / "tensors.npz") as z:
            arrays = {k: z[k] for k in z.files}
        tensors(arrays)
        np.savez(dest / "tensors.npz", **arrays)
    return dest


@pytest.mark.parametrize("edit,says", [
    (dict(tensors=lambda t: t.__setitem__("blocks.0.attn.q/b", t["blocks.0.attn.q/b"] * 4)),
     "blocks.0.attn.q/b holds"),                                              # codes beyond 4 bits
    (dict(tensors=lambda t: t["host/pos_embed"].__setitem__((0, 0), np.nan)), "NaN"),   # NaN host tensor
    (dict(tensors=lambda t: t.__setitem__("blocks.0.mlp.fc1/mc", t["blocks.0.mlp.fc1/mc"] + 70000)),
     "blocks.0.mlp.fc1/mc holds"),                                            # Mc beyond 16 bits
    (dict(manifest=lambda m: m["layers"]["blocks.0.mlp.fc2"].pop("requant")),
     "layer blocks.0.mlp.fc2 lacks the required key 'requant'"),             # a layer missing a key
    (dict(manifest=lambda m: m["encoders"]["blocks.0.attn.qkv.in"].__setitem__("se", -3)), "se = -3"),
])
def test_bad_programs(capsys, data, progs, tmp_path, edit, says):
    dest = _edit_program(progs["p1"], tmp_path / "p", **edit)
    user_error(capsys, "eval", "--program", dest, "--backend", "sim", "--data", data["imgs"], says=says)


def test_integer_grid_error_is_a_user_error(capsys, data, progs, tmp_path):
    dest = _edit_program(progs["p1"], tmp_path / "p", manifest=lambda m: m["encoders"]["head.in"].__setitem__(
        "quantizer", "no.such.quantizer"))  # fake-quant model and program do not belong together
    user_error(capsys, *eval_args(data, dest), says="no.such.quantizer")


def test_tb_run_rows_zero(capsys, progs):
    user_error(capsys, "tb", "run", progs["golden"], "--layer", "blocks.0.attn.q", "--rows", "0",
               says="rows must be in 1..64")


@pytest.mark.parametrize("content,says", [
    ([torch.zeros(2)], "holds a list, not a state dict"),
    (7, "holds a int, not a state dict"),
    (torch.zeros(3), "holds a Tensor, not a state dict"),
    ({"cls_token": "a string"}, "entry 'cls_token' holds a str"),
])
def test_pth_that_is_not_a_state_dict(capsys, data, tmp_path, monkeypatch, content, says):
    monkeypatch.setattr(golden_models, "create_model", REAL_CREATE_MODEL)
    f = tmp_path / "w.pth"
    torch.save(content, f)
    user_error(capsys, "eval", "--backend", "fp", "--model", "vit_tiny_patch16_224", "--weights", f,
               "--data", data["imgs"], "--class-map", data["map"], says=[says, str(f)])


def test_model_and_data_of_different_input_sizes(capsys, data, monkeypatch):
    monkeypatch.setattr(golden_models, "create_model", REAL_CREATE_MODEL)
    user_error(capsys, "eval", "--backend", "fp", "--model", "vitaccel-digits", "--data", data["imgs"],
               "--class-map", data["map"], "--workers", "0", says=["expects 3x8x8 inputs", "gives 3x40x44 images"])
    user_error(capsys, "eval", "--backend", "fp", "--model", "deit_tiny_patch16_224", "--data", "embedded:digits",
               says=["expects 3x224x224 inputs", "embedded:digits gives 3x8x8", "vitaccel-digits"])


def test_embedded_data_with_a_split(capsys, monkeypatch):
    monkeypatch.setattr(golden_models, "create_model", REAL_CREATE_MODEL)
    rc, out, err = run(capsys, "eval", "--backend", "fp", "--model", "vitaccel-digits", "--data",
                       "embedded:digits:test", "--limit", "8", "--workers", "0")
    assert rc == 0 and "(8 images)" in out, err
    rc, out2, err = run(capsys, "eval", "--backend", "fp", "--model", "vitaccel-digits", "--data", "embedded:test",
                        "--limit", "8", "--workers", "0")  # the short form of the user guide
    assert rc == 0 and out2 == out, err
    user_error(capsys, "eval", "--backend", "fp", "--model", "vitaccel-digits", "--data", "embedded:digits:dev",
               says="unknown split 'dev'")


def test_truncated_fakequant(capsys, data, progs, tmp_path):
    dest = tmp_path / "p"
    shutil.copytree(progs["p1"], dest)
    raw = (dest / "fakequant.pt").read_bytes()
    (dest / "fakequant.pt").write_bytes(raw[: len(raw) // 2])
    user_error(capsys, *eval_args(data, dest), says=["cannot load", "fakequant.pt", "truncated"])
    torch.save({"not": "a model"}, dest / "fakequant.pt")
    user_error(capsys, *eval_args(data, dest), says="holds a dict, not a vitaccel fake-quant model")


def test_ctrl_c_in_eval_writes_no_json(capsys, data, progs, tmp_path, monkeypatch):
    from vitaccel.golden import calibrate

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(calibrate, "predict", interrupted)
    rc, _, err = run(capsys, *eval_args(data, progs["p1"]), "--json", tmp_path / "e.json")
    assert rc == 130 and err.strip().splitlines() == ["vitaccel eval: interrupted; no partial output was written"]
    assert not (tmp_path / "e.json").exists()


def test_internal_bugs_keep_their_traceback(data, progs, monkeypatch):
    from vitaccel.golden import calibrate

    def bug(*a, **k):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(calibrate, "predict", bug)
    with pytest.raises(ZeroDivisionError):
        main([str(a) for a in eval_args(data, progs["p1"])])
