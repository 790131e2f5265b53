"""Tests of ``vitaccel estimate`` (sim/perf): engine cycles == sim.schedule, hand-checked traffic,
shape tracing of DeiT-tiny / Swin-tiny, the SCALE-Sim closed form, the overlap model and the CLI."""
from __future__ import annotations

import json
import math

import pytest

from vitaccel.sim.errors import UserError
from vitaccel.sim.perf.estimate import Hardware, estimate, estimate_layer
from vitaccel.sim.perf.scalesim import paper_cycles, scalesim_cycles, scalesim_report_counts, sram_requests
from vitaccel.sim.perf.shapes import Gemm, parse_bits, trace_gemms
from vitaccel.sim.perf.traffic import SramTooSmall, engine_traffic, layer_traffic

from vitaccel.sim import engine_config as hw_config
from vitaccel.sim import schedule as hw_schedule


# ------------------------------------------------------------------------------------------ shapes

@pytest.fixture(scope="module")
def deit_tiny():
    return trace_gemms("deit_tiny_patch16_224", 1, "w4a4")


def test_deit_tiny_gemm_list(deit_tiny):
    """12 blocks, dim 192, 3 heads (head dim 64), 197 tokens, MLP 768, 196 patches of 16x16x3."""
    g = deit_tiny
    kinds = [x.kind for x in g]
    assert len(g) == 1 + 12 * 8 + 1
    for k in ("q", "k", "v", "qk", "av", "proj", "fc1", "fc2"):
        assert kinds.count(k) == 12, k
    assert kinds[0] == "patch_embed" and kinds[-1] == "head"
    # execution order inside a block
    assert kinds[1:9] == ["q", "k", "v", "qk", "av", "proj", "fc1", "fc2"]
    shape = {k: next((x.M, x.K, x.N, x.count) for x in g if x.kind == k) for k in set(kinds)}
    assert shape["patch_embed"] == (196, 16 * 16 * 3, 192, 1)
    for k in ("q", "k", "v", "proj"):
        assert shape[k] == (197, 192, 192, 1)
    assert shape["qk"] == (197, 64, 197, 3)
    assert shape["av"] == (197, 197, 64, 3)
    assert shape["fc1"] == (197, 192, 768, 1)
    assert shape["fc2"] == (197, 768, 192, 1)
    assert shape["head"] == (1, 192, 1000, 1)
    # formats of the spec's operand table: outliers on q/k/v/fc1 inputs, qk -> fixed, av -> ucode
    assert {x.kind for x in g if x.outliers} == {"q", "k", "v", "fc1"}
    assert next(x for x in g if x.kind == "av").a_fmt == "log2"
    assert next(x for x in g if x.kind == "k").out_fmt == "scode"
    # patch embedding and head default to 8-bit codes, the blocks to w4a4
    assert (g[0].a_bits, g[0].b_bits, g[1].a_bits, g[1].b_bits) == (8, 8, 4, 4)
    # MACs of DeiT-tiny: known ~1.26 GMAC
    assert 1.2e9 < sum(x.macs for x in g) < 1.3e9


def test_batch_scales_rows_and_heads():
    g2 = trace_gemms("deit_tiny_patch16_224", 2, "w4a4")
    q = next(x for x in g2 if x.kind == "q")
    qk = next(x for x in g2 if x.kind == "qk")
    assert (q.M, qk.count, qk.M) == (2 * 197, 2 * 3, 197)


def test_swin_tiny_window_attention_and_merging():
    g = trace_gemms("swin_tiny_patch4_window7_224", 1, "w8a8")
    qk = [x for x in g if x.kind == "qk"]
    assert len(qk) == 2 + 2 + 6 + 2  # depths of Swin-T
    # 7x7 windows: 49 tokens, head dim 32; windows x heads per stage: 64x3, 16x6, 4x12, 1x24
    assert {(x.M, x.K, x.N) for x in qk} == {(49, 32, 49)}
    assert [x.count for x in qk] == [192] * 2 + [96] * 2 + [48] * 6 + [24] * 2
    av = [x for x in g if x.kind == "av"]
    assert {(x.M, x.K, x.N) for x in av} == {(49, 49, 32)}
    merge = [(x.M, x.K, x.N) for x in g if x.kind == "merge"]
    # patch merging: 2x2 neighbours concatenated (4C) -> 2C, on a 28x28, 14x14, 7x7 grid
    assert merge == [(28 * 28, 4 * 96, 192), (14 * 14, 4 * 192, 384), (7 * 7, 4 * 384, 768)]
    q0 = next(x for x in g if x.kind == "q")
    assert (q0.M, q0.K, q0.N) == (56 * 56, 96, 96)
    assert g[0].kind == "patch_embed" and (g[0].M, g[0].K, g[0].N) == (3136, 4 * 4 * 3, 96)


def test_parse_bits():
    assert parse_bits("w4a4") == (4, 4) and parse_bits("W6A8") == (6, 8)
    for bad in ("w5a4", "4/4", "w4", "wxa4"):
        with pytest.raises(UserError):
            parse_bits(bad)


# ------------------------------------------------------------------------------------------ cycles

def test_engine_cycles_equal_hw_schedule(deit_tiny):
    """Every layer's compute cycles are sim.schedule.layer_cycles(...).total times its instance count."""
    gemms = [g if not g.outliers else Gemm(**{**g.__dict__, "outliers_per_tile": 3}) for g in deit_tiny]
    hw = Hardware(rows=16, cols=16, dram_bw=1e6, sram_kib=1024)
    est = estimate(gemms, hw, model="deit_tiny", bits="w4a4")
    cfg = hw_config.EngineConfig(rows=16, cols=16, a_bits=8, b_bits=8, max_k=768)
    for l in est.layers:
        g = l.gemm
        ref = hw_schedule.layer_cycles(cfg, g.M, g.K, g.N, g.outliers_per_tile if g.outliers else 0)
        assert l.compute == ref.total * g.count, g.name
        assert l.total == l.compute and l.stall == 0  # bandwidth is plentiful here
    assert est.cycles == sum(l.compute for l in est.layers)


def test_scalesim_closed_form_by_hand():
    # 4x4 array, M=6, K=5, N=3; SCALE-Sim 3.0.0 reports F * fold_rows - 1 (docs/estimator.md)
    # OS: Sr=M=6, Sc=N=3, T=K=5 -> F = 2 * 1, fold_rows = R + C + T - 2 = 11 -> 21
    assert scalesim_cycles("os", 4, 4, 6, 5, 3).total == 21
    # WS: Sr=K=5, Sc=N=3, T=M=6 -> F = 2, fold_rows = 2R + C + T - 2 = 16 -> 31
    assert scalesim_cycles("ws", 4, 4, 6, 5, 3).total == 31
    # IS: Sr=K=5, Sc=M=6, T=N=3 -> F = 4, fold_rows = 8 + 4 + 3 - 2 = 13 -> 51
    assert scalesim_cycles("is", 4, 4, 6, 5, 3).total == 51
    # the ISPASS 2020 form, kept for comparison: (2R + C + T - 2) * F
    assert [paper_cycles(d, 4, 4, 6, 5, 3) for d in ("os", "ws", "is")] == [30, 32, 52]
    # SRAM requests: OS re-reads A per column fold (1) and B per row fold (2)
    assert sram_requests("os", 4, 4, 6, 5, 3) == dict(ifmap=30, filter=30, ofmap=18)
    # SCALE-Sim's os write counter adds R + C per fold: 18 + 2 * 8
    assert scalesim_report_counts("os", 4, 4, 6, 5, 3)["ofmap"] == 34
    # WS: partial outputs once per row fold (2)
    assert sram_requests("ws", 4, 4, 6, 5, 3) == dict(ifmap=30, filter=15, ofmap=36)
    hw = Hardware(rows=4, cols=4, dataflow="ws", dram_bw=1e6, sram_kib=64)
    l = estimate_layer(Gemm("x", "linear", "linear", 6, 5, 3), hw)
    assert l.compute == 31 and l.total == 31


# ------------------------------------------------------------------------------------------ traffic

def _layer(**kw):
    base = dict(name="t", kind="q", op="linear", M=64, K=32, N=64, count=1, a_bits=4, b_bits=4,
                a_fmt="uniform", per_patch=True, a_zero=True, out_fmt="fixed16", out_bits=16,
                outliers=True, outliers_per_tile=2)
    base.update(kw)
    return Gemm(**base)


def test_engine_traffic_fits_reads_once():
    g = _layer()
    # A: codes 64*32*4/8 = 1024, per-patch vectors 64 rows * 3 = 192, outliers 2/tile * 4 tiles * 6 = 48
    a = 1024 + 192 + 48
    # B: codes 32*64*4/8 = 1024, per column colsum 4 + Mc 2 + Sc 1 + Bq 6 = 13 -> 64 * 13 = 832
    b = 1024 + 832
    out = 64 * 64 * 2  # fixed16
    t = engine_traffic(g, 16, 16, 256 * 1024, max_k=32, bank_bits=8)
    assert (t.dram_a, t.dram_b, t.dram_out) == (a, b, out)
    assert t.a_refetch == 1 and t.b_refetch == 1 and t.schedule == "a-cached"
    assert t.dram_total == a + b + out


def test_engine_traffic_refetches_when_a_does_not_fit():
    g = _layer()
    # SRAM needs: two B banks 2 * (32 rows * 16 cols * 8 bit / 8) = 1024 bytes; staging: output tile
    # 2 * 16*16*16/8 = 1024 plus A/B chunks (kc = min(32, 16) = 16) 2 * (16*16*4/8 + 16*16*4/8) = 512
    # -> 2560 bytes. With 3000 bytes, 440 remain < A = 1264, so A is streamed once per column block:
    # nN = 64 / 16 = 4 -> 4 * 1264 = 5056 bytes; B is still read once (B banks).
    t = engine_traffic(g, 16, 16, 3000, max_k=32, bank_bits=8)
    assert t.min_sram == 2560
    assert (t.dram_a, t.dram_b, t.a_refetch, t.schedule) == (5056, 1856, 4, "a-refetch")
    with pytest.raises(SramTooSmall):
        engine_traffic(g, 16, 16, 2559, max_k=32, bank_bits=8)


def test_generic_os_traffic_weight_refetch():
    # plain 8-bit layer, no vectors/outliers; M=128, K=64, N=128 on 16x16 -> nM = nN = 8
    g = _layer(M=128, K=64, N=128, a_bits=8, b_bits=8, per_patch=False, outliers=False, outliers_per_tile=0,
               a_fmt="shiftlog2", out_fmt="fixed32", out_bits=32, kind="fc2")
    A = 128 * 64                 # 8192
    B = 128 * 64 + 128 * 13      # 8192 codes + 1664 params = 9856
    base = 2 * 16 * 16 * 4 + 2 * (16 * 16 + 16 * 16)   # out tile 2048 + chunks 1024 = 3072
    # a) everything fits: read once
    t = layer_traffic(g, 16, 16, 64 * 1024)
    assert (t.dram_a, t.dram_b, t.schedule) == (A, B, "resident")
    # b) avail = 4000: A strip = 16*64 = 1024 (2x = 2048 fits), B strip = 16*64 + 16*13 = 1232
    #    (2x = 2464 fits); neither A + 2 Bstrip (10656) nor B + 2 Astrip (11904) fits.
    #    b-strip: A*8 + B = 65536 + 9856 = 75392; a-strip: A + B*8 = 8192 + 78848 = 87040 -> b-strip
    t = layer_traffic(g, 16, 16, base + 4000)
    assert (t.dram_a, t.dram_b, t.schedule) == (8 * A, B, "b-strip")
    # c) avail = 2100: only the A strip pair fits (2048) -> weights re-fetched per row tile
    t = layer_traffic(g, 16, 16, base + 2100)
    assert (t.dram_a, t.dram_b, t.schedule, t.b_refetch) == (A, 8 * B, "a-strip", 8)
    # d) avail = 0: both streamed per tile
    t = layer_traffic(g, 16, 16, base)
    assert (t.dram_a, t.dram_b, t.schedule) == (8 * A, 8 * B, "stream")


def test_overlap_memory_bound():
    g = _layer()
    hw = Hardware(rows=16, cols=16, dram_bw=0.5, sram_kib=256)
    l = estimate_layer(g, hw)
    d = 1264 + 1856 + 8192
    assert l.traffic.dram_total == d
    assert l.bound == "memory" and l.total == math.ceil(d / 0.5) and l.stall == l.total - l.compute
    fast = estimate_layer(g, Hardware(rows=16, cols=16, dram_bw=1000, sram_kib=256))
    assert fast.bound == "compute" and fast.total == fast.compute == l.compute


# ------------------------------------------------------------------------------------------ CLI

def _run(capsys, *argv):
    """Run ``vitaccel estimate ARGV`` the way vitaccel.cli.main does (only this package's subcommand is
    registered, so the test does not depend on the other subsystems' CLI modules)."""
    import argparse
    import sys

    from vitaccel.sim.errors import UserError
    from vitaccel.sim.perf.cli import add_subcommands

    parser = argparse.ArgumentParser(prog="vitaccel")
    add_subcommands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["estimate", *argv])
    try:
        rc = int(args.func(args) or 0)
    except UserError as exc:
        print(f"vitaccel {args.command}: error: {exc}", file=sys.stderr)
        rc = 2
    return rc, capsys.readouterr()


def test_cli_outputs(tmp_path, capsys):
    csv_p, json_p = tmp_path / "e.csv", tmp_path / "e.json"
    rc, out = _run(capsys, "--model", "deit_tiny_patch16_224", "--rows", "16", "--cols", "16", "--bits", "w4a4",
                   "--freq", "200", "--dram-bw", "16", "--sram-kib", "256", "--csv", str(csv_p),
                   "--json", str(json_p), "--max-rows", "5")
    assert rc == 0, out.err
    assert "inferences/s" in out.out and "blocks.0.attn.q" in out.out
    doc = json.loads(json_p.read_text())
    assert len(doc["layers"]) == 98 and doc["summary"]["cycles"] == sum(l["total_cycles"] for l in doc["layers"])
    assert len(csv_p.read_text().splitlines()) == 99


@pytest.mark.parametrize("argv, msg", [
    (["--model", "deit_tiny_patch16_2244"], "did you mean deit_tiny_patch16_224"),
    (["--model", "deit_tiny_patch16_224", "--bits", "w5a4"], "unsupported weight width 5"),
    (["--model", "deit_tiny_patch16_224", "--rows", "0"], "--rows must be a positive integer"),
    (["--model", "deit_tiny_patch16_224", "--dram-bw", "-1"], "--dram-bw must be a positive"),
    (["--model", "deit_tiny_patch16_224", "--sram-kib", "8"], "SRAM too small for the minimum tile"),
    (["--model", "deit_tiny_patch16_224", "--max-k", "100"], "exceeds the engine's B buffer depth"),
    (["--program", "/nonexistent/p.json"], "does not exist"),
    ([], "give exactly one of --model NAME or --program PATH"),
])
def test_cli_errors(capsys, argv, msg):
    rc, out = _run(capsys, *argv)
    assert rc == 2
    assert msg in out.err


def test_cli_program(tmp_path, capsys):
    prog = dict(model="toy", batch=1, layers=[
        dict(name="blocks.0.attn.q", op="linear", M=197, K=192, N=192, a_bits=4, b_bits=6, a_fmt="uniform",
             out_fmt="ucode", fo=2, max_outliers_per_tile=5),
        dict(name="blocks.0.attn.qk", op="qk", M=197, K=64, N=197, count=3, a_bits=6, b_bits=6,
             out_fmt="fixed16"),
    ])
    p = tmp_path / "program.json"
    p.write_text(json.dumps(prog))
    png = tmp_path / "e.png"
    rc, out = _run(capsys, "--program", str(p), "--plot", str(png), "--dram-bw", "1e6")
    assert rc == 0, out.err
    assert png.stat().st_size > 10_000
    cfg = hw_config.EngineConfig(rows=16, cols=16, a_bits=6, b_bits=6, max_k=192)
    assert f"cycles {hw_schedule.layer_cycles(cfg, 197, 192, 192, 5).total + 3 * hw_schedule.layer_cycles(cfg, 197, 64, 197).total:,}" in out.out
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(dict(layers=[dict(name="x", op="linear", M=1, K=2, a_bits=4, b_bits=4)])))
    rc, out = _run(capsys, "--program", str(bad))
    assert rc == 2 and "missing field 'N'" in out.err
    bad.write_text("{not json")
    rc, out = _run(capsys, "--program", str(bad))
    assert rc == 2 and "not valid JSON" in out.err


def _program_manifest():
    """A hand-written manifest in the golden/program.py layout (one block of a 2-head toy ViT)."""
    lin = lambda shape, bits, b_bits, fo=0, outl=None, qin=None, out=("fixed32", 32): dict(
        op="linear", shape=shape, a=dict(kind="uniform", bits=bits, za="x/za"), b_bits=b_bits, fo=fo,
        tile_rows=16, out_fmt=out[0], out_bits=out[1], quantizer_in=qin, max_tile_outliers=outl)
    layers = {
        "patch_embed": lin([16, 48, 32], 8, 8, qin="pe.q"),
        "blocks.0.attn.q": lin([17, 32, 32], 4, 6, fo=2, outl=7, qin="qkv.q", out=("ucode", 4)),
        "blocks.0.attn.k": lin([17, 32, 32], 4, 6, fo=2, outl=7, qin="qkv.q", out=("scode", 4)),
        "blocks.0.attn.v": lin([17, 32, 32], 4, 6, fo=2, outl=7, qin="qkv.q", out=("scode", 4)),
        "blocks.0.attn.qk": dict(op="qk", shape=[17, 16, 17], a=dict(kind="uniform", bits=4), b_bits=4,
                                 fo=0, out_fmt="fixed32", out_bits=32),
        "blocks.0.attn.av": dict(op="av", shape=[17, 17, 16], a=dict(kind="log2", bits=4), b_bits=4, fo=0,
                                 out_fmt="ucode", out_bits=4),
        "head": lin([1, 32, 10], 8, 8, qin="head.q"),
    }
    graph = [{"op": "gemm", "layer": "patch_embed"}, {"op": "layernorm"},
             {"op": "gemm", "layer": "blocks.0.attn.q"}, {"op": "gemm", "layer": "blocks.0.attn.k"},
             {"op": "gemm", "layer": "blocks.0.attn.v"},
             {"op": "attention", "heads": 2, "qk": "blocks.0.attn.qk", "av": "blocks.0.attn.av"},
             {"op": "gemm", "layer": "head"}]
    encoders = {"blocks.0.attn.qkv.in": dict(kind="uniform", bits=4, quantizer="qkv.q", per_patch=True),
                "head.in": dict(kind="uniform", bits=8, quantizer="head.q", per_patch=False)}
    return dict(format="vitaccel-program", format_version=2, model=dict(name="toy_vit"), bits="w6a4",
                graph=graph, layers=layers, encoders=encoders, host={})


def test_program_manifest_layers(tmp_path):
    from vitaccel.sim.perf.program import ProgramError, load_program_gemms

    d = tmp_path / "prog"
    d.mkdir()
    (d / "manifest.json").write_text(json.dumps(_program_manifest()))
    gemms, meta = load_program_gemms(str(d), batch=2)
    assert [g.name for g in gemms] == ["patch_embed", "blocks.0.attn.q", "blocks.0.attn.k", "blocks.0.attn.v",
                                       "blocks.0.attn.qk", "blocks.0.attn.av", "head"]
    q = gemms[1]
    assert (q.M, q.K, q.N, q.a_bits, q.b_bits, q.outliers, q.outliers_per_tile, q.per_patch) == \
        (34, 32, 32, 4, 6, True, 7, True)
    qk = gemms[4]
    assert (qk.M, qk.count, qk.op, gemms[5].a_fmt) == (17, 4, "qk", "log2")
    assert meta["model"] == "toy_vit"
    bad = _program_manifest()
    bad["graph"].append({"op": "gemm", "layer": "nope"})
    (d / "manifest.json").write_text(json.dumps(bad))
    with pytest.raises(ProgramError, match="does not define"):
        load_program_gemms(str(d))
    bad = _program_manifest()
    bad["format_version"] = 99
    (d / "manifest.json").write_text(json.dumps(bad))
    with pytest.raises(ProgramError, match="format_version"):
        load_program_gemms(str(d))
    (d / "manifest.json").write_text(json.dumps(_program_manifest())[:200])
    with pytest.raises(ProgramError, match="truncated"):
        load_program_gemms(str(d))


def _measured_records():
    import glob
    import os
    root = os.path.join(os.path.dirname(__file__), "..")
    files = []
    for pat in ("tb/**/engine_cycles*.json", "benchmarks/**/engine_cycles*.json", "docs/**/engine_cycles*.json"):
        files += glob.glob(os.path.join(root, pat), recursive=True)
    return sorted(set(files))


@pytest.mark.parametrize("path", _measured_records() or [None])
def test_replay_measured_rtl_cycles(path):
    """Replay RTL cycle measurements (records ``{rows, cols, M, K, N, cycles, [outliers_per_tile, EngineConfig
    fields]}``) through the estimator: its per-layer compute cycles must equal the measured counter."""
    if path is None:
        pytest.skip("no measured RTL cycle records (engine_cycles*.json) in this checkout")
    recs = json.loads(open(path).read())
    recs = recs.get("records", recs) if isinstance(recs, dict) else recs
    assert recs, path
    known = {"rows", "cols", "a_bits", "b_bits", "acc_bits", "outlier_capacity", "outlier_lanes", "max_k"}
    for r in recs:
        cfg_kw = {k: r[k] for k in known if k in r}
        cfg_kw.setdefault("max_k", max(int(r["K"]), 1))
        hw = Hardware(rows=r["rows"], cols=r["cols"], dram_bw=1e9, sram_kib=4096,
                      outlier_capacity=r.get("outlier_capacity"), outlier_lanes=r.get("outlier_lanes"),
                      acc_bits=r.get("acc_bits"), max_k=cfg_kw["max_k"])
        o = r.get("outliers_per_tile", 0)
        g = Gemm("rec", "q" if o else "linear", "linear", r["M"], r["K"], r["N"], a_bits=r.get("a_bits", 8),
                 b_bits=r.get("b_bits", 8), outliers=bool(o), outliers_per_tile=o if isinstance(o, int) else tuple(o))
        assert estimate_layer(g, hw).compute == r["cycles"], r


def test_cli_freq_is_mhz_and_old_hz_spelling_warns(capsys, monkeypatch):
    """``--freq`` is MHz; the old Hz spelling (``250e6``) gives the same latency with a deprecation warning."""
    from vitaccel.sim import cli_args

    monkeypatch.setattr(cli_args, "_warned", set())
    outs = [_run(capsys, "--model", "deit_tiny_patch16_224", "--freq", freq, "--quiet") for freq in ("250", "250e6")]
    assert [rc for rc, _ in outs] == [0, 0]
    assert "deprecated" not in outs[0][1].err and "--freq 250 (MHz)" in outs[1][1].err
    assert outs[0][1].out == outs[1][1].out and "250 MHz" in outs[0][1].out
