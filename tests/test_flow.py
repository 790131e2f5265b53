"""``vitaccel flow``: argument checks, stage bookkeeping, and one end-to-end run on the embedded default."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from vitaccel import flow
from vitaccel.cli import main


def _parse(argv):
    parser = argparse.ArgumentParser()
    flow.add_subcommands(parser.add_subparsers(dest="command"))
    return parser.parse_args(["flow", *argv])


# ------------------------------------------------------------------------------------ fast checks
def test_defaults_and_command_line():
    args = _parse([])
    assert args.model == flow.EMBEDDED_MODEL and args.data is None
    assert args.methods == ("baseline", "adfq", "mptq")
    assert flow.command_line(args) == "vitaccel flow"
    args = _parse(["--methods", "adfq,baseline,adfq", "--rows", "4", "--skip-rtl", "-o", "x"])
    assert args.methods == ("adfq", "baseline")  # duplicates dropped, order kept
    assert flow.command_line(args) == "vitaccel flow --output x --methods adfq,baseline --rows 4 --skip-rtl"


def test_quick_only_replaces_defaults():
    args = _parse(["--quick", "--rows", "2"])
    flow.apply_quick(args)
    assert args.rows == 2  # given explicitly: kept
    assert args.cols == flow.QUICK["cols"] and args.methods == flow.QUICK["methods"]
    assert args.calib_size == flow.QUICK["calib_size"] and args.eval_size == flow.QUICK["eval_size"]


def test_bad_arguments(capsys, tmp_path):
    with pytest.raises(SystemExit):
        _parse(["--methods", "gptq"])
    assert main(["flow", "--rows", "0", "-o", str(tmp_path / "r")]) == 2   # the same check as hw generate
    assert "rows must be in 1..64, got 0" in capsys.readouterr().err
    assert main(["flow", "--bits", "w3a3", "-o", str(tmp_path / "a")]) == 2
    assert "w3a3" in capsys.readouterr().err
    assert main(["flow", "--methods", "baseline", "--export-method", "adfq", "-o", str(tmp_path / "b")]) == 2
    assert "--export-method" in capsys.readouterr().err
    assert main(["flow", "--data", str(tmp_path / "missing"), "-o", str(tmp_path / "c")]) == 2
    assert "data folder not found" in capsys.readouterr().err
    assert main(["flow", "--weights", str(tmp_path / "w.safetensors"), "-o", str(tmp_path / "d")]) == 2
    assert "weights file not found" in capsys.readouterr().err
    assert main(["flow", "--model", "deit_tiny_patch16_224", "-o", str(tmp_path / "e")]) == 2
    assert "needs --data" in capsys.readouterr().err


def test_export_method_default():
    ctx = flow.FlowContext(args=_parse(["--methods", "baseline,adfq"]), out=Path("."))
    assert ctx.export_method() == "adfq"
    ctx = flow.FlowContext(args=_parse(["--methods", "mptq,baseline"]), out=Path("."))
    assert ctx.export_method() == "mptq"
    ctx = flow.FlowContext(args=_parse(["--methods", "baseline,adfq", "--export-method", "baseline"]), out=Path("."))
    assert ctx.export_method() == "baseline"


def test_failed_stage_skips_dependants_and_report_says_so(tmp_path, monkeypatch):
    """A stage that raises is 'failed'; stages that need it are 'skipped'; the report is written."""
    ran = []

    def ok(ctx):
        ran.append("a")
        ctx.results["accuracy"] = {"fp32": 50.0}
        return "fine"

    def boom(ctx):
        raise flow.StageError("stage b cannot run: x.y is not available")

    def never(ctx):
        ran.append("c")
        return ""

    def independent(ctx):
        ran.append("d")
        return "done"

    stages = (flow.Stage("a", ok), flow.Stage("b", boom, ("a",)), flow.Stage("c", never, ("b",)),
              flow.Stage("d", independent, ("a",)), flow.Stage("r", never, (), rtl=True))
    args = _parse(["-o", str(tmp_path), "--skip-rtl"])
    doc = flow.run_flow(args, stages=stages)
    status = {s["name"]: (s["status"], s["message"]) for s in doc["stages"]}
    assert ran == ["a", "d"]
    assert status["a"] == ("ok", "fine")
    assert status["b"] == ("failed", "stage b cannot run: x.y is not available")
    assert status["c"] == ("skipped", "needs b")
    assert status["d"] == ("ok", "done")
    assert status["r"][0] == "not_requested"
    assert doc["all_ok"] is False
    on_disk = json.loads((tmp_path / "report.json").read_text())
    assert on_disk["stages"] == doc["stages"]
    md = (tmp_path / "report.md").read_text()
    assert "| b | failed |" in md and "x.y is not available" in md


# ------------------------------------------------------------------------------------ end to end
@pytest.mark.slow
def test_flow_end_to_end_on_embedded_default(tmp_path):
    out = tmp_path / "flow"
    # the engine flags select tb.accel_bench.SMALL_ACCEL for the RTL check (the build the other RTL tests use)
    rc = main(["flow", "--methods", "baseline,adfq", "--bits", "w8a8", "--amo-iters", "5",
               "--calib-size", "24", "--eval-size", "16", "--rows", "4", "--cols", "4", "--acc-bits", "40",
               "--outlier-capacity", "16", "--outlier-lanes", "2", "--threads", "1", "-o", str(out)])
    doc = json.loads((out / "report.json").read_text())
    status = {s["name"]: s for s in doc["stages"]}
    failed = {n: s["message"] for n, s in status.items() if s["status"] != "ok"}
    assert not failed, failed
    assert rc == 0 and doc["all_ok"] is True
    assert [s["name"] for s in doc["stages"]] == [s.name for s in flow.STAGES]

    # data and accuracy: numbers in range, computed on the requested sizes
    assert doc["data"]["calib_size"] == 24 and doc["data"]["eval_size"] == 16
    acc = doc["accuracy"]
    assert 50.0 <= acc["fp32"] <= 100.0  # the trained digits model, not chance (10 %)
    assert acc["intsim_agreement"] == {"baseline": 100.0, "adfq": 100.0}  # sim == integer-grid fake-quant
    for kind in ("fakequant_float", "fakequant", "intsim", "intsim_agreement"):
        assert set(acc[kind]) == {"baseline", "adfq"}
        for v in acc[kind].values():
            assert 0.0 <= v <= 100.0
            # 16 images: every percentage is a multiple of 100/16
            assert abs(v * 16 / 100 - round(v * 16 / 100)) < 1e-9

    # RTL: every GEMM of the golden image ran bit-exact through the accelerator top, cycles == estimator
    assert doc["export_method"] == "adfq"
    checks = doc["rtl"]["checks"]
    golden = json.loads((out / "golden" / "golden.json").read_text())
    assert [c["record"] for c in checks] == list(golden["layers"])
    kinds = {c["kind"] for c in checks}
    assert kinds == {"linear", "qk", "av"}
    for c in checks:
        assert c["bit_exact"] is True, c
        assert c["cycles"] == c["model_cycles"] > c["engine_cycles"] > 0
    from vitaccel.tb.accel_bench import SMALL_ACCEL
    assert doc["rtl"]["accelerator"] == SMALL_ACCEL.to_dict()
    assert doc["rtl"]["verilog"] and all((out / v).is_file() for v in doc["rtl"]["verilog"])
    assert any("module layer_engine" in (out / v).read_text() for v in doc["rtl"]["verilog"])

    # estimate: every GEMM layer of the program, positive totals that add up
    est = doc["estimate"]
    s = est["summary"]
    manifest = json.loads((out / "programs" / "adfq" / "manifest.json").read_text())
    depth = manifest["model"]["depth"]
    assert s["layers"] == len(est["layers"]) == 1 + 8 * depth + 1  # embed, q k v qk av proj fc1 fc2 per block, head
    assert s["cycles"] > 0 and s["dram_bytes"] > 0 and s["macs"] > 0
    assert s["cycles"] == sum(l["total_cycles"] for l in est["layers"])
    assert s["rows"] == 4 and s["cols"] == 4

    # files
    for rel in ("report.md", "golden/golden.json", "golden/vectors.npz", "programs/baseline/manifest.json",
                "plots/accuracy.png", "plots/layers.png", "estimate.json"):
        assert (out / rel).is_file(), rel
    for key, rel in doc["files"].items():
        assert (out / rel).exists(), (key, rel)
    md = (out / "report.md").read_text()
    assert "bit-exact" in md and "## Accuracy" in md
