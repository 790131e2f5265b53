"""``vitaccel hw generate``: Verilog files + JSON / Markdown summary, and clear errors for bad
configurations (fast: small engines, no Verilator)."""
from __future__ import annotations

import json
import re

import pytest

from vitaccel.cli import main as vitaccel
from vitaccel.sim.engine_config import ConfigError, EngineConfig, acc_bits_at_max_k, check_acc_for_max_k
from vitaccel.sim import reference as ref

SMALL = ["--rows", "2", "--cols", "3", "--bits", "w4a4", "--max-k", "16", "--outlier-capacity", "2"]


def _module_ports(text: str, name: str) -> set[str]:
    m = re.search(rf"^module {name}\((.*?)\);", text, re.S | re.M)
    assert m, f"no module {name}"
    return {p.strip() for p in m.group(1).split(",")}


def test_generate_writes_verilog_and_summary(tmp_path, capsys):
    out = tmp_path / "rtl"
    assert vitaccel(["hw", "generate", *SMALL, "--outlier-lanes", "2", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    for top in ("layer_engine", "mac_array", "outlier_unit"):
        assert f"{top}.v" in printed
    s = json.loads((out / "summary.json").read_text())
    assert s["config"] == EngineConfig(rows=2, cols=3, a_bits=4, b_bits=4, acc_bits=s["config"]["acc_bits"],
                                       outlier_capacity=2, outlier_lanes=2, max_k=16).to_dict()
    # default accumulator: enough for every 4-bit A format at K = max_k = 16 with outliers (section 6)
    assert s["config"]["acc_bits"] >= max(acc_bits_at_max_k(EngineConfig(**s["config"])).values())
    assert set(s["tops"]) == {"layer_engine", "mac_array", "requantiser", "outlier_unit"}
    for top, t in s["tops"].items():
        text = (out / t["file"]).read_text()
        ports = _module_ports(text, top)
        assert {p["name"] for p in t["ports"]} | {"clk", "rst"} == ports, top
        for p in t["ports"]:  # declared widths match the summary
            decl = re.search(rf"^\s*{p['dir']}\s+(?:\[(\d+):0\]\s+)?{re.escape(p['name'])};", text, re.M)
            assert decl, (top, p["name"])
            assert (int(decl.group(1)) + 1 if decl.group(1) else 1) == p["width"], (top, p)
    # the MAC array's B row: 3 lanes of 4-bit codes; its shadow row: 3 accumulators
    mac = {p["name"]: p["width"] for p in s["tops"]["mac_array"]["ports"]}
    assert mac["b"] == 3 * 4 and mac["shadow_row"] == 3 * s["config"]["acc_bits"]
    outl = {p["name"]: p["width"] for p in s["tops"]["outlier_unit"]["ports"]}
    assert outl["entries"] == 2 * (16 + 16 + 16 + 1)   # two lanes of (row, col, val, valid)
    md = (out / "summary.md").read_text()
    assert md.startswith("# vitaccel layer engine 2x3 (W4A4)")
    assert "| `cmd__payload` | input |" in md and "## `mac_array`" in md


def test_generate_without_outlier_unit_and_config_file(tmp_path):
    cfg_file = tmp_path / "engine.json"
    cfg_file.write_text(json.dumps({"rows": 3, "cols": 2, "a_bits": 6, "b_bits": 4, "max_k": 8,
                                    "outlier_capacity": 5}))
    out = tmp_path / "rtl"
    # flags override the file
    assert vitaccel(["hw", "generate", "--config", str(cfg_file), "--outlier-capacity", "0", "-o", str(out)]) == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["config"]["rows"] == 3 and s["config"]["a_bits"] == 6 and s["config"]["outlier_capacity"] == 0
    assert set(s["tops"]) == {"layer_engine", "mac_array", "requantiser"}
    assert not (out / "outlier_unit.v").exists()
    assert "outl__payload" not in (out / "layer_engine.v").read_text()


def test_generate_dynamic_per_patch_encoder_on_request(tmp_path):
    """The dynamic per-patch encoder is an opt-in top (not in the default set, checked above): its
    Verilog and ports, with a row buffer of 2 * max_k elements."""
    from vitaccel.hw.synth import generate

    cfg = EngineConfig(rows=2, cols=2, a_bits=4, b_bits=4, acc_bits=24, outlier_capacity=0, max_k=16)
    s = generate(cfg, tmp_path, tops=["dynamic_per_patch_encoder"])
    assert set(s["tops"]) == {"dynamic_per_patch_encoder"}
    t = s["tops"]["dynamic_per_patch_encoder"]
    text = (tmp_path / t["file"]).read_text()
    assert {p["name"] for p in t["ports"]} | {"clk", "rst"} == _module_ports(text, "dynamic_per_patch_encoder")
    ports = {p["name"]: p["width"] for p in t["ports"]}
    assert ports["i__payload"] == 32 + 16 + 1 and ports["rowp__payload"] == 16 + 6 + 8
    assert ports["ladder_t"] == 34 and ports["ladder_len"] == 7
    assert re.search(r"reg \[31:0\] \w+ \[31:0\];", text)   # the row buffer: 2 * 16 x 32 bits


@pytest.mark.parametrize("flags, message", [
    (["--rows", "0"], "rows must be in 1..64, got 0"),
    (["--cols", "-3"], "cols must be in 1..64, got -3"),
    (["--rows", "65"], "rows must be in 1..64, got 65"),
    (["--max-k", "0"], "max_k must be in 1..65535, got 0"),
    (["--bits", "w5a8"], "unsupported weight width 5"),
    (["--bits", "w8a7"], "unsupported activation width 7"),
    (["--bits", "8"], "not of the form wXaY"),
    (["--wbits", "5"], "unsupported weight width 5"),          # deprecated spelling, same check
    (["--bits", "w8a8", "--acc-bits", "49"], "acc_bits must be at most 48"),
    (["--outlier-lanes", "3"], "outlier_lanes must be 1, 2, 4 or 8"),
    (["--outlier-capacity", "-1"], "outlier_capacity must be in 0..4096"),
    (["--cols", "12", "--requant-share", "8"], "requant_share must be a power of two dividing cols = 12, got 8"),
    (["--requant-share", "3"], "requant_share must be a power of two dividing cols = 16, got 3"),
    # too narrow for a single product of the widest formats
    (["--bits", "w8a8", "--acc-bits", "16"], "cannot hold even one product"),
    # too narrow for K = max_k: 4-bit uniform A x 4-bit B at K = 65535 needs 25 bits
    (["--bits", "w4a4", "--acc-bits", "22", "--max-k", "65535"],
     "acc_bits = 22 is too narrow for K = max_k = 65535"),
])
def test_generate_bad_config_is_a_user_error(tmp_path, capsys, flags, message):
    out = tmp_path / "rtl"
    assert vitaccel(["hw", "generate", *flags, "-o", str(out)]) == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]  # a deprecated spelling prints its warning first
    assert last.startswith("vitaccel hw: error: ") and message in last, err
    assert not out.exists()  # nothing written


def test_acc_too_narrow_for_k_by_hand():
    # uniform 4-bit A (D, z <= 15) x 4-bit B (|b| <= 7), K = 65535, no outliers:
    # bound = 65535 * (15 + 15) * 7 = 13 762 350 < 2^24 -> 24 bits + sign = 25
    assert 65535 * 30 * 7 == 13_762_350 and (13_762_350).bit_length() == 24
    cfg = EngineConfig(rows=2, cols=2, a_bits=4, b_bits=4, acc_bits=25, outlier_capacity=0, max_k=65535)
    assert acc_bits_at_max_k(cfg)["uniform"] == 25 == ref.acc_bits_required(65535, 15, 15, 4)
    check_acc_for_max_k(cfg)
    with pytest.raises(ConfigError, match="too narrow for K = max_k = 65535"):
        check_acc_for_max_k(cfg.replace(acc_bits=24))


def test_generate_rejects_non_integer_flag(capsys):
    with pytest.raises(SystemExit) as exc:
        vitaccel(["hw", "generate", "--rows", "four", "-o", "x"])
    assert exc.value.code == 2
    assert "invalid int value: 'four'" in capsys.readouterr().err


def test_deprecated_wbits_abits_still_work_with_a_warning(tmp_path, capsys, monkeypatch):
    """The old ``--wbits/--abits`` spelling builds the same engine as ``--bits`` and warns (once a process)."""
    from vitaccel.sim import cli_args

    monkeypatch.setattr(cli_args, "_warned", set())
    old, new = tmp_path / "old", tmp_path / "new"
    base = ["--rows", "2", "--cols", "2", "--max-k", "16", "--outlier-capacity", "0"]
    assert vitaccel(["hw", "generate", *base, "--wbits", "6", "--abits", "4", "--json", str(old / "s.json"),
                     "-o", str(old)]) == 0
    assert "--wbits/--abits is deprecated" in capsys.readouterr().err
    assert vitaccel(["hw", "generate", *base, "--bits", "w6a4", "--json", str(new / "s.json"), "-o", str(new)]) == 0
    cfg_old = json.loads((old / "s.json").read_text())["config"]
    cfg_new = json.loads((new / "s.json").read_text())["config"]
    assert cfg_old == cfg_new and (cfg_new["b_bits"], cfg_new["a_bits"]) == (6, 4)


def test_generate_dsp_forms(tmp_path, capsys):
    """``--dsp ecp5`` writes registered MULT18X18D blocks (engine and requantiser top), the default none."""
    for dsp in ("generic", "ecp5"):
        out = tmp_path / dsp
        assert vitaccel(["hw", "generate", *SMALL, "--top", "layer_engine", "--top", "requantiser",
                         "--dsp", dsp, "-o", str(out)]) == 0
        s = json.loads((out / "summary.json").read_text())
        assert s["dsp"] == dsp
        for top in ("layer_engine", "requantiser"):
            n = len(re.findall(r"^\s*MULT18X18D\s", (out / f"{top}.v").read_text(), re.M))
            assert (n > 0) == (dsp == "ecp5"), (dsp, top, n)
    capsys.readouterr()
