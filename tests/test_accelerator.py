"""The accelerator top (hw/accelerator.py) and its memory format / cycle and byte model (sim/accelerator.py).

Fast tests check that the specification in ``sim`` matches the RTL's layouts, that the loader packs
beats exactly like the engine's stream format, and that a layer the build cannot run gets a clear
error.  The slow test builds the small top (:data:`tb.accel_bench.SMALL_ACCEL`, one Verilator build)
and runs random layers of every A format, output format, outlier load and shape edge through it:
every output element equals ``sim/reference.py``, every layer's cycles equal
:func:`sim.accelerator.layer_cycles_top` for two memory latencies, and the bytes the bench logs on
the AXI port equal :func:`sim.accelerator.model_traffic`.
"""
from __future__ import annotations

import numpy as np
import pytest

from vitaccel.sim import accelerator as spec
from vitaccel.sim.accelerator import AccelError, AcceleratorConfig, LayerGeometry, layer_cycles_top, layer_plan
from vitaccel.sim.engine_config import EngineConfig
from vitaccel.sim.errors import UserError
from vitaccel.tb.accel_bench import SMALL_ACCEL
from vitaccel.tb.accel_image import build_image, random_image_layer, read_outputs, read_status


def test_spec_widths_match_the_rtl_layouts():
    from vitaccel.hw.accelerator import desc_layout, status_layout
    from vitaccel.hw.engine import ZA_BITS, cmd_layout, colp_layout, rowp_layout
    from vitaccel.hw.outlier_unit import outlier_beat_layout

    assert cmd_layout.size == spec.CMD_BITS
    assert ZA_BITS == spec.ZA_BITS
    for n in (1, 3, 4, 16, 64):
        assert rowp_layout(n).size == spec.ROWP_BEAT_BITS(n)
        assert colp_layout(n).size == spec.COLP_BEAT_BITS(n)
    for lanes in (1, 2, 4, 8):
        assert outlier_beat_layout(lanes).size == spec.OUTL_ENTRY_BITS * lanes
    assert desc_layout().size == spec.DESC_BITS >= spec.desc_layout_bits()
    assert status_layout().size == spec.STATUS_BITS
    assert dict(spec.DESC_FIELDS)["cmd"] >= spec.CMD_BITS


def test_loader_packs_beats_like_the_engine_streams():
    """Every region of a random layer, unpacked from the memory image, equals the engine's stream
    words (tb/engine_streams.py packs them with the Amaranth layouts)."""
    from vitaccel.tb.engine_streams import layer_case

    cfg = SMALL_ACCEL
    rng = np.random.default_rng(3)
    lay = random_image_layer(rng, "x", 10, 9, 7, rows=cfg.engine.rows, a_bits=6, b_bits=6, outliers_per_tile=3,
                             out_fmt="scode", out_bits=6)
    img = build_image(cfg, [lay])
    case = layer_case(cfg.engine, q=lay.q, b=lay.b, a_kind=lay.a_kind, a_bits=lay.a_bits, b_bits=lay.b_bits,
                      za=lay.za, mr=lay.mr, sr=lay.sr, mc=lay.mc, sc=lay.sc, bq=lay.bq, out_fmt=lay.out_fmt,
                      out_bits=lay.out_bits, fo=lay.fo, outliers=lay.outliers)
    plan = img.plans[0]
    R, C = cfg.engine.rows, cfg.engine.cols
    for name in spec.REGIONS:
        reg = plan.regions[name]
        a = img.region_addr[0].get(name)
        if reg.words == 0:
            continue
        raw = int.from_bytes(bytes(img.data[a:a + reg.words * cfg.bus_bytes]), "little")
        beats = [(raw >> (i * reg.slot_bits)) & ((1 << reg.slot_bits) - 1) for i in range(reg.beats)]
        want = case["streams"][name]
        if name == "a":      # the stream repeats A per column block; lanes at the layer width
            want = want[:reg.beats]
            beats = [sum(((x >> (r * lay.a_bits)) & ((1 << lay.a_bits) - 1)) << (r * cfg.engine.a_bits)
                         for r in range(R)) for x in beats]
        if name in ("rowp", "outl"):
            want = want[:reg.beats]
        if name == "b":      # memory holds b_k-bit lanes; the stream sign-extends them to b_bits
            def ext(x):
                out = 0
                for c in range(C):
                    v = (x >> (c * lay.b_bits)) & ((1 << lay.b_bits) - 1)
                    v -= (v >> (lay.b_bits - 1)) << lay.b_bits
                    out |= (v & ((1 << cfg.engine.b_bits) - 1)) << (c * cfg.engine.b_bits)
                return out
            beats = [ext(x) for x in beats]
        assert beats == want, name


def test_layer_plan_errors_name_the_limit():
    cfg = SMALL_ACCEL
    g = LayerGeometry("big_k", 8, 300, 8, 4, 4, "fixed32", 32)
    with pytest.raises(AccelError, match="max_k = 256"):
        layer_plan(cfg, g)
    with pytest.raises(AccelError, match="b_buf_words = 4096"):
        layer_plan(cfg, LayerGeometry("wide_n", 8, 256, 300, 8, 8, "fixed32", 32))
    with pytest.raises(AccelError, match="colp_buf_beats = 128"):
        layer_plan(cfg, LayerGeometry("many_blocks", 8, 16, 600, 8, 8, "fixed32", 32))
    with pytest.raises(AccelError, match="outlier_capacity = 16"):
        layer_plan(cfg, LayerGeometry("outl", 8, 16, 8, 4, 4, "fixed32", 32, (17, 0)))
    with pytest.raises(AccelError, match="w8a8"):
        layer_plan(cfg.replace(engine=cfg.engine.replace(a_bits=4, b_bits=4)),
                   LayerGeometry("bits", 8, 16, 8, 8, 8, "fixed32", 32))
    narrow = AcceleratorConfig(engine=EngineConfig(rows=8, cols=8, acc_bits=40, max_k=64), bus_bits=128)
    with pytest.raises(AccelError, match="--bus-bits 256"):
        layer_plan(narrow, LayerGeometry("out", 8, 16, 8, 8, 8, "fixed32", 32))
    with pytest.raises(UserError, match="big_k"):
        build_image(cfg, [random_image_layer(np.random.default_rng(0), "big_k", 4, 300, 4, rows=4)])
    # the accumulator width (spec section 6): K = 256 of 8-bit Shift-Log2 codes needs 32 bits, the build has 31
    narrow_acc = cfg.replace(engine=cfg.engine.replace(acc_bits=31))
    with pytest.raises(UserError, match=r"layer wide_acc: K = 256 .* needs a 32-bit accumulator .*acc_bits = 31 \(--acc-bits\)"):
        build_image(narrow_acc, [random_image_layer(np.random.default_rng(0), "wide_acc", 4, 256, 4, rows=4,
                                                    a_kind="shiftlog2")])
    # outliers beyond the built capacity, through the loader (the message names the layer and the limit)
    with pytest.raises(UserError, match=r"many_outl: .*outlier_capacity = 16 \(--outlier-capacity 17\)"):
        build_image(cfg, [random_image_layer(np.random.default_rng(0), "many_outl", 4, 16, 4, rows=4,
                                             outliers_per_tile=17)])
    with pytest.raises(AccelError, match="bus_bits"):
        AcceleratorConfig(engine=EngineConfig(rows=64, cols=4, max_k=64, acc_bits=40), bus_bits=128)


def test_model_is_additive_and_counts_bursts():
    cfg = SMALL_ACCEL
    g = LayerGeometry("l", 17, 256, 64, 4, 4, "fixed32", 32)
    plan = layer_plan(cfg, g)
    tc = layer_cycles_top(cfg, plan)
    assert tc.total == tc.desc + tc.load + tc.prime + tc.run + tc.status
    assert tc.stall == tc.total - tc.engine.total
    bursts = spec.read_bursts(cfg, plan)
    assert sum(n for _r, n in bursts) == sum(r.words for r in plan.regions.values())
    assert all(n <= cfg.max_burst for _r, n in bursts)
    tr = spec.model_traffic(cfg, plan)
    assert tr["read"] == sum(n for _r, n in bursts) * cfg.bus_bytes + cfg.desc_words * cfg.bus_bytes


def _random_layers(rng, rows):
    L = []
    for i, (kind, bits, base) in enumerate([("uniform", 4, "2"), ("uniform", 6, "2"), ("uniform", 8, "2"),
                                             ("log2", 4, "2"), ("shiftlog2", 4, "2"), ("shiftlog2", 6, "sqrt2"),
                                             ("three_region", 8, "2")]):
        M, K, N = (int(x) for x in rng.integers(1, 14, 3))
        L.append(random_image_layer(rng, f"{kind}{bits}_{i}", M, K + 1, N, rows=rows, a_kind=kind, a_bits=bits,
                                    b_bits=bits, base=base))
    for fmt, ob in (("ucode", 4), ("scode", 6), ("fixed16", 16), ("ucode", 8)):
        L.append(random_image_layer(rng, f"out_{fmt}{ob}", 7, 11, 9, rows=rows, out_fmt=fmt, out_bits=ob,
                                    a_bits=4, b_bits=4))
    # outliers: none, some, full capacity; edge shapes: 1 x K x 1, K = 1, a large layer (several bursts)
    L.append(random_image_layer(rng, "outl_3", 13, 20, 6, rows=rows, outliers_per_tile=3))
    L.append(random_image_layer(rng, "outl_full", 9, 40, 5, rows=rows, outliers_per_tile=16))
    L.append(random_image_layer(rng, "one_row", 1, 64, 1, rows=rows, a_bits=8, b_bits=8))
    L.append(random_image_layer(rng, "k1", 6, 1, 6, rows=rows))
    L.append(random_image_layer(rng, "large", 17, 256, 40, rows=rows, a_bits=4, b_bits=4))
    return L


@pytest.mark.slow
@pytest.mark.parametrize("latency", [37, 1])
def test_random_layers_on_the_rtl_top(tmp_path, latency):
    from vitaccel.tb.accel_bench import build_bench, port_traffic, run_bench

    cfg = SMALL_ACCEL.replace(mem_latency=latency)
    layers = _random_layers(np.random.default_rng(11), cfg.engine.rows)
    img = build_image(cfg, layers, pause_after={2})
    run = run_bench(build_bench(cfg), img, tmp_path / "run", latency=latency)
    assert run.status == 1 and run.error == 0 and run.layers_done == len(layers)
    assert len(run.extra["irqs"]) == 2          # the pause and the end
    traffic = port_traffic(img, run)
    for i, (lay, plan, cyc) in enumerate(zip(layers, img.plans, run.layer_cycles())):
        got = read_outputs(img, run.mem, i)
        assert np.array_equal(got, lay.expected), lay.name
        st = read_status(img, run.mem, i)
        model = layer_cycles_top(cfg, plan)
        assert st["magic"] == spec.STATUS_MAGIC and st["layer_id"] == i and st["flags"] == 0, (lay.name, st)
        assert st["engine_cycles"] == model.engine.total, lay.name
        assert st["run_cycles"] == model.run - 1, lay.name
        assert st["layer_cycles"] == model.total - model.status, lay.name
        assert cyc == model.total, lay.name
        want = spec.model_traffic(cfg, plan)
        for op, nbytes in traffic[i].items():
            assert nbytes == want[op], (lay.name, op)
        assert sum(traffic[i].values()) == want["read"] + want["write"], lay.name


def test_estimate_dataflow_accelerator(tmp_path, capsys):
    """``vitaccel estimate --dataflow accelerator`` reports sim/accelerator.py's cycles and bytes for
    every layer (the figures tests/test_rtl_model.py checks against the RTL)."""
    import json

    from vitaccel.cli import main as vitaccel
    from vitaccel.sim.perf.accelerator import gemm_geometry
    from vitaccel.sim.perf.estimate import Hardware
    from vitaccel.sim.perf.workload import estimate_model

    hw = Hardware(rows=16, cols=16, dataflow="accelerator", bus_bits=512, mem_latency=33)
    est = estimate_model("deit_tiny_patch16_224", hw, bits="w4a4", outliers_per_tile=5)
    eng = EngineConfig(rows=16, cols=16, a_bits=8, b_bits=8, max_k=768)
    cfg = AcceleratorConfig(engine=eng, bus_bits=512, a_buf_words=1 << 20, b_buf_words=1 << 20,
                            outl_buf_words=1 << 20, rowp_buf_beats=1 << 20, colp_buf_beats=1 << 20, mem_latency=33)
    assert len(est.layers) == 1 + 8 * 12 + 1
    for l in est.layers:
        plan = layer_plan(cfg, gemm_geometry(l.gemm, 16))
        tc = layer_cycles_top(cfg, plan)
        by = spec.model_traffic(cfg, plan)
        c = l.gemm.count
        assert l.total == tc.total * c and l.compute == tc.engine.total * c and l.stall == tc.stall * c, l.gemm.name
        assert l.traffic.dram_total == (by["read"] + by["write"]) * c, l.gemm.name
        assert l.traffic.extra["bytes"] == {k: v * c for k, v in by.items()}
    assert any("512-bit AXI4" in n for n in est.notes)

    out = tmp_path / "est.json"
    assert vitaccel(["estimate", "--model", "deit_tiny_patch16_224", "--bits", "w4a4", "--dataflow", "accelerator",
                     "--bus-bits", "512", "--mem-latency", "33", "--outliers-per-tile", "5", "--quiet",
                     "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["summary"]["cycles"] == est.cycles and doc["summary"]["dataflow"] == "accelerator"
    capsys.readouterr()
    assert vitaccel(["estimate", "--model", "deit_tiny_patch16_224", "--dataflow", "accelerator",
                     "--bus-bits", "96"]) == 2
    assert "bus_bits must be 128, 256, 512 or 1024" in capsys.readouterr().err


def test_hw_generate_top_accelerator(tmp_path, capsys):
    """``vitaccel hw generate --top accelerator``: the AXI4 top's Verilog (memories initialised by a
    loop, not one line per word), its ports and configuration in the summary; a bad port width is a
    clear error."""
    import json

    from vitaccel.cli import main as vitaccel

    out = tmp_path / "rtl"
    assert vitaccel(["hw", "generate", "--top", "accelerator", "--rows", "2", "--cols", "2", "--max-k", "16",
                     "--a-buf-words", "1024", "--bus-bits", "256", "-o", str(out),
                     "--json", str(tmp_path / "s.json")]) == 0
    text = (out / "accelerator.v").read_text()
    assert "module accelerator(" in text and "vitaccel_zero_init_" in text
    assert "mem[1023] =" not in text
    s = json.loads((tmp_path / "s.json").read_text())
    assert list(s["tops"]) == ["accelerator"]
    ports = {p["name"]: p for p in s["tops"]["accelerator"]["ports"]}
    assert ports["m_axi_rdata"]["width"] == 256 and ports["m_axi_wstrb"]["width"] == 32
    assert ports["m_axi_araddr"]["dir"] == "output" and ports["start"]["dir"] == "input"
    assert s["accelerator"]["a_buf_words"] == 1024 and s["accelerator"]["bus_bits"] == 256
    capsys.readouterr()
    assert vitaccel(["hw", "generate", "--top", "accelerator", "--rows", "2", "--cols", "2", "--bus-bits", "100",
                     "-o", str(tmp_path / "bad")]) == 2
    assert "bus_bits must be 128, 256, 512 or 1024" in capsys.readouterr().err
    assert vitaccel(["hw", "generate", "--top", "nope", "-o", str(tmp_path / "bad2")]) == 2
    assert "unknown --top nope" in capsys.readouterr().err
