"""The golden CLI (calibrate, eval, export-golden, merge) and its user errors."""
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from vitaccel.golden import models as golden_models
from vitaccel.golden.calibrate import calibrate_model
from vitaccel.cli import UserError, main
from vitaccel.golden.golden_vectors import load_golden
from vitaccel.golden.presets import ABLATIONS, preset
from vitaccel.golden.quantizers import QuantizerError

from golden_helpers import tiny_vit


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(0)
    for c in ("n001", "n002"):
        os.makedirs(root / c)
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (40, 44, 3), dtype=np.uint8)).save(root / c / f"{i}.JPEG")
    cmap = root / "synsets.txt"
    cmap.write_text("n000\nn001\nn002\n")
    return str(root), str(cmap)


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    return code, capsys.readouterr()


def test_unknown_model_suggests_close_names(capsys, folder, tmp_path):
    code, out = run(capsys, "calibrate", "--model", "deit_tiny_patch16_22", "--data", folder[0], "-o", tmp_path / "p")
    assert code == 2
    assert "unknown model 'deit_tiny_patch16_22'" in out.err and "deit_tiny_patch16_224" in out.err


def test_bad_bits(capsys, folder, tmp_path):
    code, out = run(capsys, "calibrate", "--model", "deit_tiny_patch16_224", "--data", folder[0], "--bits", "w5a5",
                    "-o", tmp_path / "p")
    assert code == 2 and "unsupported weight width 5" in out.err
    code, out = run(capsys, "calibrate", "--model", "deit_tiny_patch16_224", "--data", folder[0], "--bits", "w4",
                    "-o", tmp_path / "p")
    assert code == 2 and "w4a4" in out.err
    # a GPTQ option without GPTQ rounding is refused, not silently ignored (nothing is written)
    code, out = run(capsys, "calibrate", "--model", "deit_tiny_patch16_224", "--data", folder[0], "--gptq-source", "fp",
                    "-o", tmp_path / "p")
    assert code == 2 and "add --weight-rounding gptq" in out.err and "Traceback" not in out.err
    assert not (tmp_path / "p").exists()


def test_weights_mismatch_and_corrupt(tmp_path):
    from safetensors.torch import save_file

    bad = tmp_path / "bad.safetensors"
    save_file({"foo.weight": torch.zeros(2), "cls_token": torch.zeros(1, 1, 7)}, str(bad))
    with pytest.raises(UserError, match=r"missing keys: .*unexpected keys: foo\.weight.*shape mismatches: cls_token"):
        golden_models.create_model("vit_tiny_patch16_224", weights=str(bad))
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x00\x01garbage" * 10)
    with pytest.raises(UserError, match="corrupt"):
        golden_models.create_model("vit_tiny_patch16_224", weights=str(corrupt))
    with pytest.raises(UserError, match="not found"):
        golden_models.create_model("vit_tiny_patch16_224", weights=str(tmp_path / "none.pth"))


def test_data_errors(tmp_path, folder):
    from vitaccel.golden.data import image_folder

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match="no images|cannot read image folder"):
        image_folder(str(empty), transform=lambda x: x)
    with pytest.raises(UserError, match="not found"):
        image_folder(str(tmp_path / "missing"), transform=lambda x: x)
    cmap = tmp_path / "map.txt"
    cmap.write_text("n001\n")
    with pytest.raises(UserError, match="does not list the folder"):
        image_folder(folder[0], class_map=str(cmap), transform=lambda x: x)


def test_nonfinite_calibration_raises():
    x = torch.randn(2, 3, 32, 32)
    x[0, 0, 0, 0] = float("nan")
    with pytest.raises(QuantizerError, match="NaN"):
        calibrate_model(tiny_vit(), x, preset("baseline", "w4a4"), progress=False)


def test_cli_calibrate_eval_shards_merge_golden(capsys, folder, tmp_path, monkeypatch):
    monkeypatch.setattr(golden_models, "create_model", lambda name, *a, **k: tiny_vit())
    data, cmap = folder
    prog = tmp_path / "prog"
    code, out = run(capsys, "calibrate", "--model", "vit_tiny_patch16_224", "--data", data, "--class-map", cmap,
                    "--method", "adfq", "--no-amo", "--bits", "w4a4", "--calib-size", "4", "--workers", "0",
                    "--weight-search", "hessian", "--weight-rounding", "gptq", "--gptq-source", "quant", "-o", prog)
    assert code == 0, out.err
    assert {"manifest.json", "tensors.npz", "fakequant.pt", "calibration.json"} <= set(os.listdir(prog))
    config = json.loads((prog / "manifest.json").read_text())["config"]
    assert (config["weight_search"], config["weight_rounding"], config["gptq_source"]) == ("hessian", "gptq", "quant")
    rep = json.loads((prog / "calibration.json").read_text())
    assert rep["calib_size"] == 4 and "blocks.0.attn.qkv" in rep["outliers"]
    code, out = run(capsys, "eval", "--program", prog, "--backend", "fakequant", "--data", data, "--class-map", cmap,
                    "--workers", "0")
    assert code == 0 and "fakequant: top-1" in out.out and "[integer grid]" in out.out
    code, out = run(capsys, "eval", "--program", prog, "--backend", "fakequant", "--float-fakequant", "--data", data,
                    "--class-map", cmap, "--workers", "0")
    assert code == 0 and "[float]" in out.out
    shards = []
    for i in range(2):
        js = tmp_path / f"s{i}.json"
        code, out = run(capsys, "eval", "--program", prog, "--backend", "sim", "--sim-backend",
                        "reference" if i == 0 else "auto", "--data", data, "--class-map", cmap, "--workers", "0",
                        "--shard", f"{i}/2", "--json", js, "--agreement", "--threads", "1")
        assert code == 0, out.err
        # the integer grid fake-quant and the simulator (numpy reference / numba + int8) compute the same integers
        assert "agreement with fake-quant (integer grid) 100.00 %, bit-identical logits 3/3" in out.out
        res = json.loads(js.read_text())
        assert res["identical_logits"] == 3 and res["threads"] == 1 and res["peak_rss_mb"] > 0
        shards.append(js)
    code, out = run(capsys, "eval", "--program", prog, "--backend", "sim", "--data", data, "--class-map", cmap,
                    "--workers", "0")
    assert code == 0 and "agreement" not in out.out            # the agreement pass is opt-in
    for bad in (["--threads", "0"], ["--workers", "-1"]):  # argparse rejects them (exit 2) before any work
        with pytest.raises(SystemExit) as exc:
            run(capsys, "eval", "--program", prog, "--backend", "sim", "--data", data, "--class-map", cmap, *bad)
        assert exc.value.code == 2 and "must be >=" in capsys.readouterr().err
    code, out = run(capsys, "eval", "--program", prog, "--backend", "fakequant", "--data", data, "--agreement")
    assert code == 2 and "--agreement" in out.err
    code, out = run(capsys, "merge", *shards, "--json", tmp_path / "m.json")
    assert code == 0 and "(6 images)" in out.out
    merged = json.loads((tmp_path / "m.json").read_text())
    assert merged["n"] == 6
    code, out = run(capsys, "merge", shards[0], shards[0])
    assert code == 2 and "more than one shard" in out.err
    code, out = run(capsys, "eval", prog, "--backend", "sim", "--data", data, "--shard", "3/2")  # old positional
    assert code == 2 and "--shard" in out.err
    code, out = run(capsys, "eval", prog, "--program", prog, "--backend", "sim", "--data", data)
    assert code == 2 and "give the program once" in out.err
    gdir = tmp_path / "golden"
    code, out = run(capsys, "export-golden", "--program", prog, "--data", data, "--class-map", cmap, "--images", "2",
                    "--sim-backend", "reference", "-o", gdir)
    assert code == 0, out.err
    g = load_golden(str(gdir))
    assert g["blocks.0.attn.q"]["a_codes"].shape[0] == 2
    code, out = run(capsys, "eval", "--program", tmp_path / "nope", "--backend", "sim", "--data", data)
    assert code == 2 and "program not found" in out.err


@pytest.mark.parametrize("flags,mode", [((), "dynamic"), (("--static-poq",), "static"),
                                        (("--poq-mode", "static"), "static")])
def test_cli_calibrate_poq_mode(capsys, folder, tmp_path, monkeypatch, flags, mode):
    """The adfq preset uses dynamic per-patch POQ (spec 8.1.1); --static-poq / --poq-mode static give
    the per-position scales; the manifest's config and the layers' A formats say which."""
    monkeypatch.setattr(golden_models, "create_model", lambda name, *a, **k: tiny_vit())
    data, cmap = folder
    prog = tmp_path / "prog"
    code, out = run(capsys, "calibrate", "--model", "vit_tiny_patch16_224", "--data", data, "--class-map", cmap,
                    "--method", "adfq", "--no-amo", "--no-qdrop", "--bits", "w4a4", "--calib-size", "4",
                    "--workers", "0", *flags, "-o", prog)
    assert code == 0, out.err
    man = json.loads((prog / "manifest.json").read_text())
    assert man["config"]["poq_mode"] == mode and man["config"]["amo_input_drop"] == 0.0
    layers = man["layers"]
    assert bool(layers["blocks.0.attn.q"]["a"].get("dynamic")) == (mode == "dynamic")
    assert bool(layers["blocks.0.mlp.fc1"]["a"].get("dynamic")) == (mode == "dynamic")
    assert not layers["blocks.0.mlp.fc2"]["a"].get("dynamic")


def test_quant_config_rejects_bad_qdrop_probability():
    with pytest.raises(QuantizerError, match="amo_input_drop"):
        preset("adfq", "w4a4", amo_input_drop=1.5)
    assert preset("adfq", "w4a4", **ABLATIONS["no_qdrop"]).amo_input_drop == 0.0


def test_cli_calibrate_block_amo(capsys, folder, tmp_path, monkeypatch):
    """--amo-granularity block reconstructs whole blocks; the manifest records the choice and the
    calibration report lists one AMO unit per block."""
    from vitaccel.golden import reconstruct as rec
    monkeypatch.setattr(golden_models, "create_model", lambda name, *a, **k: tiny_vit())
    seen = []
    real = rec.reconstruct_unit
    monkeypatch.setattr(rec, "reconstruct_unit", lambda s, name, kind, gen: seen.append((name, kind))
                        or real(s, name, kind, gen))
    data, cmap = folder
    prog = tmp_path / "prog"
    code, out = run(capsys, "calibrate", "--model", "vit_tiny_patch16_224", "--data", data, "--class-map", cmap,
                    "--method", "adfq", "--amo-iters", "2", "--amo-granularity", "block", "--bits", "w4a4",
                    "--calib-size", "4", "--workers", "0", "-o", prog)
    assert code == 0, out.err
    man = json.loads((prog / "manifest.json").read_text())
    assert man["config"]["amo_granularity"] == "block"
    depth = len(tiny_vit().blocks)
    assert seen == [(f"blocks.{i}", "block") for i in range(depth)]
    with pytest.raises(SystemExit) as exc:
        run(capsys, "calibrate", "--model", "vit_tiny_patch16_224", "--data", data, "--class-map", cmap,
            "--method", "adfq", "--amo-granularity", "layer", "-o", tmp_path / "p2")
    assert exc.value.code == 2 and "--amo-granularity: invalid choice" in capsys.readouterr().err
    assert not (tmp_path / "p2").exists()


def _tiny_calibrate_args(folder, monkeypatch) -> list:
    """``vitaccel calibrate`` arguments for a tiny random ViT on the synthetic folder (W4A4, 4 images)."""
    monkeypatch.setattr(golden_models, "create_model", lambda name, *a, **k: tiny_vit())
    data, cmap = folder
    return ["calibrate", "--model", "vit_tiny_patch16_224", "--data", data, "--class-map", cmap, "--bits", "w4a4",
            "--calib-size", "4", "--workers", "0"]


def test_cli_fc2_clip(capsys, folder, tmp_path, monkeypatch):
    """--fc2-clip reaches the OPT-m search of an mptq program (recorded in the manifest); it is refused
    where there is no three-region input, and out of range, with a one-line error and nothing written."""
    common = _tiny_calibrate_args(folder, monkeypatch)
    code, out = run(capsys, *common, "--method", "mptq", "--fc2-clip", "2", "-o", tmp_path / "prog")
    assert code == 0, out.err
    config = json.loads((tmp_path / "prog" / "manifest.json").read_text())["config"]
    assert config["fc2_clip"] == 2 and config["fc2"] == "three_region"
    for extra, msg in ((["--method", "adfq"], "only applies to the three-region FC2 input"),
                       (["--method", "mptq", "--no-three-region"], "only applies to the three-region FC2 input"),
                       (["--method", "mptq", "--fc2-clip", "16"], "fc2_clip must be an integer in 0..15")):
        args = extra if "--fc2-clip" in extra else extra + ["--fc2-clip", "2"]
        code, out = run(capsys, *common, *args, "-o", tmp_path / "bad")
        assert code == 2 and msg in out.err and "Traceback" not in out.err, out.err
        assert not (tmp_path / "bad").exists()


def test_cli_act_range(capsys, folder, tmp_path, monkeypatch):
    """--act-range split reaches the Hessian-guided range search of an mptq program (recorded in the
    manifest); with another method it is refused with a one-line error and nothing written."""
    common = _tiny_calibrate_args(folder, monkeypatch)
    code, out = run(capsys, *common, "--method", "mptq", "--act-range", "split", "-o", tmp_path / "prog")
    assert code == 0, out.err
    config = json.loads((tmp_path / "prog" / "manifest.json").read_text())["config"]
    assert config["act_range"] == "split" and config["act_metric"] == "hessian"
    code, out = run(capsys, *common, "--method", "adfq", "--act-range", "split", "-o", tmp_path / "bad")
    assert code == 2 and "--act-range split only applies" in out.err and "Traceback" not in out.err, out.err
    assert not (tmp_path / "bad").exists()


def test_cli_all_modules_writes_the_fake_quant_model_only(capsys, folder, tmp_path, monkeypatch):
    """--all-modules (MPTQ-ViT's Table 3 setting, with Greedy MP) calibrates and saves the fake-quant
    model with the LayerNorm / softmax input quantizers; no integer program is written, and the
    command says so (a warning and the last line), exit 0; `eval` then runs it in float fake-quant."""
    common = _tiny_calibrate_args(folder, monkeypatch)
    code, out = run(capsys, *common[:-6], "--bits", "w6a6", "--calib-size", "4", "--workers", "0", "--method", "mptq",
                    "--mp-target-bits", "6", "--all-modules", "-o", tmp_path / "prog", "--json", tmp_path / "c.json")
    assert code == 0, out.err
    assert "integer program not exported" in out.err and "all_modules" in out.err and "Traceback" not in out.err
    assert "(fake-quant model only)" in out.out
    assert (tmp_path / "prog" / "fakequant.pt").is_file() and not (tmp_path / "prog" / "manifest.json").exists()
    report = json.loads((tmp_path / "c.json").read_text())
    assert report["config"]["all_modules"] is True and report["config"]["mixed_precision"] is True
    assert "no integer program" in report["program"]
    qvit = torch.load(tmp_path / "prog" / "fakequant.pt", weights_only=False)
    assert any(n.endswith("norm1.input_quantizer") for n, _ in qvit.activation_quantizers())
    code, out = run(capsys, "eval", "--program", tmp_path / "prog", "--data", folder[0], "--class-map", folder[1],
                    "--workers", "0", "--json", tmp_path / "e.json")
    assert code == 0, out.err
    assert json.loads((tmp_path / "e.json").read_text())["fakequant_mode"] == "float"


@pytest.mark.parametrize("flag, key", [("--learn-weight-scales", "learn_weight_scales"),
                                       ("--bias-correction", "bias_correction")])
def test_cli_amo_flags(capsys, folder, tmp_path, monkeypatch, flag, key):
    """--learn-weight-scales / --bias-correction reach AMO (recorded in the manifest; what they do is
    tested in tests/test_amo.py); without AMO the flag is refused with a one-line error and nothing written."""
    from vitaccel.golden import reconstruct as rec
    common = _tiny_calibrate_args(folder, monkeypatch)
    seen = []
    real = rec.reconstruct_amo
    monkeypatch.setattr(rec, "reconstruct_amo", lambda *a, **k: seen.append(getattr(k["config"], key))
                        or real(*a, **k))
    code, out = run(capsys, *common, "--method", "adfq", "--amo-iters", "3", flag, "-o", tmp_path / "prog")
    assert code == 0, out.err
    assert seen == [True]
    config = json.loads((tmp_path / "prog" / "manifest.json").read_text())["config"]
    assert config[f"amo_{key}"] is True
    for extra in (["--method", "mptq"], ["--method", "adfq", "--no-amo"]):
        code, out = run(capsys, *common, *extra, flag, "-o", tmp_path / "bad")
        assert code == 2 and f"{flag} only applies to AMO" in out.err and "Traceback" not in out.err
        assert not (tmp_path / "bad").exists()
