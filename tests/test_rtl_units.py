"""RTL unit tests: operand decoder, requantiser, encoders, dynamic per-patch encoder (cocotb + Verilator,
plus Amaranth sim).

Each Verilator test elaborates one unit at its maximum widths (run-time format / width config), builds
it once per design hash (cached in ``build/sim``), and runs the cocotb testbench in ``tb/`` with stimuli
drawn here and expected values from ``sim/reference.py``.

Run one unit: ``pytest tests/test_rtl_units.py -k decoder``; waveforms: ``VITACCEL_WAVES=1 pytest ...``
(the run directory with ``dump.vcd``/``dump.fst`` is printed).
"""
from __future__ import annotations

import pytest

from vitaccel.tb.runner import run_cocotb, verilog_for

from amaranth_helpers import amaranth_stream_run, ladder_writer


# ----------------------------------------------------------------------------- operand decoder

def _decoder_verilog():
    from vitaccel.hw.decoders import OperandDecoder
    from vitaccel.tb import cocotb_decoders as tbm

    return verilog_for(OperandDecoder, "operand_decoder", {"lanes": tbm.LANES})


@pytest.mark.slow
def test_decoder_rtl():
    """OperandDecoder in Verilator: all 256 codes x 5 formats x k = 4/6/8 (three_region with 3 m0/m1)."""
    from vitaccel.tb import cocotb_decoders as tbm

    groups = tbm.make_groups(seed=1)
    run_cocotb("operand_decoder", [_decoder_verilog()], "vitaccel.tb.cocotb_decoders",
               data={"groups": groups, "seed": 1})


@pytest.mark.parametrize("copies, config_copies", [(1, 0), (3, 0), (1, 1)])
def test_decoder_amaranth_sim(copies, config_copies):
    """OperandDecoder in the Amaranth simulator, every code of every format/width (fast); with
    ``copies = 3`` the two register copies of the triple (``o_copies``) too; with ``config_copies``
    the config registered inside (set a cycle before each group's first code, as the engine does)."""
    from amaranth.sim import Simulator

    from vitaccel.hw.common import CodeFormat
    from vitaccel.hw.decoders import OperandDecoder
    from vitaccel.tb import cocotb_decoders as tbm

    dut = OperandDecoder(lanes=1, copies=copies, config_copies=config_copies)
    groups = tbm.make_groups(seed=2, lanes=1)
    errors = []

    async def bench(ctx):
        ctx.set(dut.o.ready, 1)
        for g in groups:
            cfg = g["config"]
            ctx.set(dut.fmt, CodeFormat(cfg["fmt"]))
            ctx.set(dut.bits, cfg["bits"])
            ctx.set(dut.m0, cfg["m0"])
            ctx.set(dut.m1, cfg["m1"])
            if config_copies:           # the config registers load; no beat in this cycle
                ctx.set(dut.i.valid, 0)
                await ctx.tick()
            for inp, exp in zip(g["inputs"], g["expected"]):
                ctx.set(dut.i.payload, [inp["code[0]"]])
                ctx.set(dut.i.valid, 1)
                await ctx.tick()
                o = ctx.get(dut.o.payload)[0]
                got = {"neg": o.neg, "mag": o.mag, "sh": o.sh, "d": o.d, "invalid": o.invalid}
                want = {k[:-3]: v for k, v in exp.items()}
                if got != want:
                    errors.append((g["name"], inp, got, want))
                for k in range(copies - 1):
                    t = ctx.get(dut.o_copies[k])[0]
                    if (t.neg, t.mag, t.sh) != (want["neg"], want["mag"], want["sh"]):
                        errors.append((g["name"], inp, f"copy {k}", (t.neg, t.mag, t.sh), want))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    n = sum(len(g["inputs"]) for g in groups)
    assert n > 5 * 3 * 256
    assert not errors, f"{len(errors)} mismatches, first: {errors[:3]}"


def test_decoder_copies_follow_the_register_under_stalls():
    """``o_copies`` load exactly when ``o.payload`` does (``i.valid`` and ``~o.valid | o.ready``): under
    random valid / ready each copy holds the reference decode of the last code the decoder took."""
    import random

    from amaranth.sim import Simulator

    from vitaccel.hw.common import CodeFormat
    from vitaccel.hw.decoders import OperandDecoder
    from vitaccel.tb import cocotb_decoders as tbm

    dut = OperandDecoder(lanes=1, copies=2)
    g = next(g for g in tbm.make_groups(seed=4, lanes=1) if CodeFormat(g["config"]["fmt"]) == CodeFormat.THREE_REGION)
    rng = random.Random(5)
    seen = {"taken": 0, "held": 0}

    async def bench(ctx):
        cfg = g["config"]
        for name in ("bits", "m0", "m1"):
            ctx.set(getattr(dut, name), cfg[name])
        ctx.set(dut.fmt, CodeFormat(cfg["fmt"]))
        held = None
        for inp, exp in zip(g["inputs"] * 2, g["expected"] * 2):
            valid, ready = rng.random() < 0.6, rng.random() < 0.6
            ctx.set(dut.i.payload, [inp["code[0]"]])
            ctx.set(dut.i.valid, int(valid))
            ctx.set(dut.o.ready, int(ready))
            taken = valid and (not ctx.get(dut.o.valid) or ready)
            await ctx.tick()
            if taken:
                held = (exp["neg[0]"], exp["mag[0]"], exp["sh[0]"])
                seen["taken"] += 1
            elif held is not None:
                seen["held"] += 1
            if held is not None:
                t = ctx.get(dut.o_copies[0])[0]
                assert (t.neg, t.mag, t.sh) == held

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    assert seen["taken"] > 50 and seen["held"] > 50


def test_decoder_zero_port():
    """``zero_port`` (the engine's cycles without an issue): a beat with ``zero`` high decodes to the
    zero triple with ``invalid`` 0 in ``o`` and every copy and leaves ``invalid_seen`` alone; other
    beats decode as the reference does (invalid codes included)."""
    import random

    from amaranth.sim import Simulator

    from vitaccel.hw.common import CodeFormat
    from vitaccel.hw.decoders import OperandDecoder
    from vitaccel.tb import cocotb_decoders as tbm

    dut = OperandDecoder(lanes=1, copies=2, config_copies=1, zero_port=True)
    g = next(g for g in tbm.make_groups(seed=6, lanes=1)
             if CodeFormat(g["config"]["fmt"]) == CodeFormat.LOG2 and g["after"]["invalid_seen"])
    rng = random.Random(8)
    seen = {"zero": 0, "decoded": 0, "invalid": 0, "cleared": 0}

    async def bench(ctx):
        cfg = g["config"]
        for name in ("bits", "m0", "m1"):
            ctx.set(getattr(dut, name), cfg[name])
        ctx.set(dut.fmt, CodeFormat(cfg["fmt"]))
        ctx.set(dut.i.valid, 1)
        ctx.set(dut.o.ready, 1)
        ctx.set(dut.zero, 1)
        await ctx.tick()                      # the config copy loads
        seen_flag = pending = 0              # model: the sticky flag, the hit of the last beat
        for j, (inp, exp) in enumerate(zip(g["inputs"], g["expected"])):
            zero = rng.random() < 0.4
            clear = int(j % 97 == 50)       # clears wipe the flag and the hit in flight; their beat counts
            ctx.set(dut.i.payload, [inp["code[0]"]])
            ctx.set(dut.zero, int(zero))
            ctx.set(dut.clear, clear)
            await ctx.tick()
            want = (0, 0, 0, 0) if zero else (exp["neg[0]"], exp["mag[0]"], exp["sh[0]"], exp["invalid[0]"])
            seen["cleared"] += clear and int(bool(seen_flag | pending))
            seen_flag, pending = 0 if clear else seen_flag | pending, want[3]
            o, t = ctx.get(dut.o.payload)[0], ctx.get(dut.o_copies[0])[0]
            assert (o.neg, o.mag, o.sh, o.invalid) == want, (inp, zero)
            assert (t.neg, t.mag, t.sh) == want[:3]
            assert ctx.get(dut.invalid_seen) == seen_flag      # the flag follows a cycle after the beat
            seen["zero" if zero else "decoded"] += 1
            seen["invalid"] += int(bool(exp["invalid[0]"]) and zero)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    assert seen["zero"] > 50 and seen["decoded"] > 50 and seen["invalid"] > 5   # invalid codes masked too
    assert seen["cleared"] >= 1                                                  # a set flag was cleared


# ----------------------------------------------------------------------------- requantiser

def _requantiser_verilog():
    from vitaccel.hw.requantiser import Requantiser
    from vitaccel.tb import cocotb_requantiser as tbm

    return verilog_for(Requantiser, "requantiser", {"acc_bits": tbm.ACC_BITS, "tag_bits": tbm.TAG_BITS})


def test_requantiser_reference_groups_saturate():
    """The generated stimuli exercise both in-range and saturated outputs in every format."""
    from vitaccel.tb import cocotb_requantiser as tbm

    for g in tbm.make_groups(seed=3)[2:]:
        sats = sum(e["sat"] for e in g["expected"])
        assert 0 < sats < len(g["expected"]), (g["name"], sats)


@pytest.mark.slow
def test_requantiser_rtl():
    """Requantiser in Verilator: spec example, ucode/scode k = 4/6/8, fixed16, fixed32, back-pressure."""
    from vitaccel.tb import cocotb_requantiser as tbm

    groups = tbm.make_groups(seed=1)
    run_cocotb("requantiser", [_requantiser_verilog()], "vitaccel.tb.cocotb_requantiser",
               data={"groups": groups, "seed": 1})


def test_requantiser_amaranth_sim():
    """Requantiser in the Amaranth simulator: random elements vs sim.reference, plus the fault path."""
    from vitaccel.hw.common import OutFormat
    from vitaccel.hw.requantiser import Requantiser
    from vitaccel.tb import cocotb_requantiser as tbm

    groups = tbm.make_groups(seed=4, n=24)
    for g in groups:
        dut = Requantiser(acc_bits=tbm.ACC_BITS, tag_bits=tbm.TAG_BITS)
        cfg = dict(g["config"])
        cfg["out_fmt"] = OutFormat(cfg["out_fmt"])
        got = amaranth_stream_run(dut, g["inputs"], ["value", "sat", "fault", "tag"], cfg)
        assert got == g["expected"], g["name"]

    # Fault path (hand-derived): Mr = 2 > 2^Sr = 1 doubles acc = 2^39 - 1 beyond 40 bits -> t clamped to
    # 2^39 - 1, fault = 1; Mc = 1, Sc = 0, Bq = 0 -> fixed32 saturates at 2^31 - 1.
    dut = Requantiser(acc_bits=40, tag_bits=8)
    got = amaranth_stream_run(dut, [{"acc": (1 << 39) - 1, "mr": 2, "mc": 1, "sc": 0, "bq": 0, "tag": 7}],
                               ["value", "sat", "fault", "tag"],
                               {"sr": 0, "z_out": 0, "out_fmt": OutFormat.FIXED32, "bits": 8})
    assert got == [{"value": (1 << 31) - 1, "sat": 1, "fault": 1, "tag": 7}]


def test_requantiser_row_clamp_every_shift():
    """The row stage's range check and clamp (an ``Mr > 2^Sr`` config fault) for every ``Sr``, against
    Python integers: ``t = (acc * Mr + 2^(Sr-1)) >> Sr`` clamped to 32 bits, ``fault`` when it was.
    ``Mc = 1, Sc = 0, Bq = 0`` and ``fixed32`` pass ``t`` to the output unchanged."""
    import random

    from vitaccel.hw.common import OutFormat
    from vitaccel.hw.requantiser import Requantiser

    ab = 32
    rng = random.Random(12)
    seen = {"fault": 0, "fits": 0}
    for sr in range(17):                     # Sr is 0..16 (docs/datapath.md section 7)
        elems, want = [], []
        for j in range(24):
            mr = rng.randint(1, (1 << 16) - 1)
            edge = rng.choice([1, -1]) * (1 << (ab - 1)) + rng.randint(-3, 3)      # t near either bound
            acc = (edge << sr) // mr + rng.randint(-2, 2) if j % 3 else rng.randint(-(1 << (ab - 1)), (1 << (ab - 1)) - 1)
            acc = max(-(1 << (ab - 1)), min((1 << (ab - 1)) - 1, acc))
            t = (acc * mr + ((1 << (sr - 1)) if sr else 0)) >> sr
            fits = -(1 << (ab - 1)) <= t < (1 << (ab - 1))
            clamped = t if fits else (-(1 << (ab - 1)) if t < 0 else (1 << (ab - 1)) - 1)
            elems.append({"acc": acc, "mr": mr, "mc": 1, "sc": 0, "bq": 0, "tag": j})
            want.append({"value": clamped, "sat": 0, "fault": int(not fits), "tag": j})
            seen["fits" if fits else "fault"] += 1
        got = amaranth_stream_run(Requantiser(acc_bits=ab, tag_bits=8), elems, ["value", "sat", "fault", "tag"],
                                  {"sr": sr, "z_out": 0, "out_fmt": OutFormat.FIXED32, "bits": 8})
        assert got == want, sr
    assert seen["fault"] > 100 and seen["fits"] > 100


def test_requantiser_output_range_every_column_shift():
    """The output stage's saturation when ``v`` is near and beyond 34 bits (where the bounds'
    comparison hands over to ``v``'s sign, the range check registered beside the fine shift) for every
    ``Sc`` the 40-bit accumulator reaches, in fixed32 and ucode with a zero point, against
    ``sim.reference.requantize`` (``ref_requantize``)."""
    import random

    from vitaccel.hw.common import OutFormat
    from vitaccel.hw.requantiser import Requantiser
    from vitaccel.tb import cocotb_requantiser as tbm

    ab, rng = 40, random.Random(45)
    amax = (1 << (ab - 1)) - 1
    seen = {"sat": 0, "in": 0}
    for sc in range(24):
        for fmt, bits, z_out in (("fixed32", 8, 0), ("ucode", 8, 77)):
            elems = []
            for j in range(24):
                mc = rng.randint(1, (1 << 16) - 1)
                k = rng.choice([0, 0, 1, 2, 4, 8, 14]) if j % 4 else None
                v0 = rng.choice([1, -1]) * ((1 << (33 + k)) if k is not None else rng.randint(0, 300))
                v0 += rng.randint(-3, 3)
                acc = max(-amax - 1, min(amax, (v0 << sc) // mc))
                bq = max(-(1 << 47) + 1, min((1 << 47) - 1, (v0 << sc) - acc * mc + rng.randint(-2, 2)))
                elems.append({"acc": acc, "mr": 1, "mc": mc, "sc": sc, "bq": bq, "tag": j})
            want = [tbm.ref_requantize(e, 0, z_out, fmt, bits) for e in elems]
            for w in want:
                seen["sat" if w["sat"] else "in"] += 1
            got = amaranth_stream_run(Requantiser(acc_bits=ab, tag_bits=8), elems, ["value", "sat", "fault", "tag"],
                                      {"sr": 0, "z_out": z_out, "out_fmt": OutFormat[fmt.upper()], "bits": bits})
            assert got == want, (sc, fmt)
    assert seen["sat"] > 300 and seen["in"] > 100


# ----------------------------------------------------------------------------- encoders

def test_encoder_groups_cover_edge_cases():
    """Stimuli: every code width, zero and full outlier loads, int16 overflow, every log code range."""
    from vitaccel.sim import formats as F
    from vitaccel.tb import cocotb_encoders as tbm

    pp = tbm.make_per_patch_groups(seed=1)
    assert {g["config"]["bits"] for g in pp} == set(F.BITS)
    assert any(not g["expected_outl"] for g in pp if g["config"]["outliers_en"])
    assert any(g["after"]["overflow_count"] > 0 for g in pp)
    assert any(len(g["expected_outl"]) == len(g["inputs"]) - sum(1 for i in g["inputs"] if i["x"] == 0) for g in pp)
    act = tbm.make_activation_groups(seed=1)
    for g in act:
        codes = {e["code"] for e in g["expected"]}
        assert len(codes) >= 4, (g["name"], codes)


@pytest.mark.slow
def test_per_patch_encoder_rtl():
    """PerPatchEncoder (encode_per_patch / encode_uniform) in Verilator with back-pressure on 3 ports."""
    from vitaccel.hw.encoders import PerPatchEncoder
    from vitaccel.tb import cocotb_encoders as tbm

    v = verilog_for(PerPatchEncoder, "per_patch_encoder", {})
    run_cocotb("per_patch_encoder", [v], "vitaccel.tb.cocotb_encoders", testcase="rtl_encode_per_patch",
               data={"groups": tbm.make_per_patch_groups(seed=1), "seed": 1})


@pytest.mark.slow
def test_activation_encoder_rtl():
    """ActivationEncoder (encode_log2 / encode_shiftlog2 base 2, sqrt 2 / encode_three_region) in Verilator."""
    from vitaccel.hw.encoders import ActivationEncoder
    from vitaccel.tb import cocotb_encoders as tbm

    v = verilog_for(ActivationEncoder, "activation_encoder", {})
    run_cocotb("activation_encoder", [v], "vitaccel.tb.cocotb_encoders", testcase="rtl_encode_activation",
               data={"groups": tbm.make_activation_groups(seed=1), "seed": 1})


def test_encoders_amaranth_sim():
    """Both encoders in the Amaranth simulator on a subset of the cocotb stimuli (fast)."""
    from vitaccel.hw.common import CodeFormat
    from vitaccel.hw.encoders import ActivationEncoder, PerPatchEncoder
    from vitaccel.tb import cocotb_encoders as tbm

    for g in tbm.make_per_patch_groups(seed=5):
        res = amaranth_stream_run(PerPatchEncoder(), g["inputs"], None, g["config"], outputs=("o", "outl"))
        assert res["o"] == g["expected"], g["name"]
        assert res["outl"] == g["expected_outl"], g["name"]
    for g in tbm.make_activation_groups(seed=5, n=40):
        cfg = dict(g["config"])
        cfg["fmt"] = CodeFormat(cfg["fmt"])
        got = amaranth_stream_run(ActivationEncoder(), g["inputs"], ["code", "invalid"], cfg)
        assert got == g["expected"], g["name"]


# ----------------------------------------------------------------------------- dynamic per-patch encoder

def test_dynamic_per_patch_groups_cover_edge_cases():
    """Stimuli: k = 4/6/8 with and without outliers, rows without inliers, inlier spans above T[0],
    all-zero rows, spans exactly at a threshold, J = 1 and J = 64, rows of 1 and max_k elements."""
    from vitaccel.sim import reference as ref
    from vitaccel.tb import cocotb_dynamic_per_patch as tbm

    from vitaccel.hw.dynamic_per_patch import LADDER_MAX
    from vitaccel.sim import formats as F

    assert LADDER_MAX == F.LADDER_MAX
    groups = tbm.make_groups(seed=1)
    assert {(g["config"]["bits"], g["config"]["outliers_en"]) for g in groups} >= {(4, 1), (6, 1), (8, 1), (4, 0),
                                                                                   (6, 0), (8, 0)}
    assert {g["config"]["ladder_len"] for g in groups} >= {1, 64}
    seen = {"no_inliers": 0, "above_t0": 0, "all_zero": 0, "at_threshold": 0, "len1": 0, "len_max": 0}
    for g in groups:
        cfg, t = g["config"], [e[1] for e in g["ladder"]]
        rows = {}
        for e in g["inputs"]:
            rows.setdefault(e["row"], []).append(e["x"])
        for xs in rows.values():
            x = [xs]
            inl = [v for v in xs if not cfg["outliers_en"] or abs(v) <= cfg["alpha"]]
            _, span = ref.row_range(x, cfg["alpha"] if cfg["outliers_en"] else None)
            seen["no_inliers"] += cfg["outliers_en"] and not inl
            seen["above_t0"] += bool(inl) and int(span[0]) > t[0]
            seen["all_zero"] += not any(xs)
            seen["at_threshold"] += int(span[0]) in t[:cfg["ladder_len"]] and int(span[0]) > 0
            seen["len1"] += len(xs) == 1
            seen["len_max"] += len(xs) == tbm.MAX_K
    assert all(seen.values()), seen


@pytest.mark.slow
def test_dynamic_per_patch_encoder_rtl():
    """DynamicPerPatchEncoder (encode_per_patch_dynamic, max_k = 32) in Verilator: ladders loaded through
    the write port, k = 4/6/8 with and without outliers, back-pressure on the input and all three outputs."""
    from vitaccel.hw.dynamic_per_patch import DynamicPerPatchEncoder
    from vitaccel.tb import cocotb_dynamic_per_patch as tbm

    v = verilog_for(DynamicPerPatchEncoder, "dynamic_per_patch_encoder", {"max_k": tbm.MAX_K})
    run_cocotb("dynamic_per_patch_encoder", [v], "vitaccel.tb.cocotb_dynamic_per_patch", testcase="rtl_dynamic_per_patch",
               data={"groups": tbm.make_groups(seed=1), "seed": 1})


def test_row_range_unit_amaranth_sim():
    """RowRangeUnit in the Amaranth simulator: (row, len, j, R[j], z) per row vs sim.reference (fast)."""
    from vitaccel.hw.dynamic_per_patch import RowRangeUnit
    from vitaccel.tb import cocotb_dynamic_per_patch as tbm

    for g in tbm.make_groups(seed=5):
        dut = RowRangeUnit(max_k=tbm.MAX_K)
        got = amaranth_stream_run(dut, g["inputs"], ["row", "len", "j", "r", "z"], g["config"],
                                   setup=ladder_writer(dut, g["ladder"]), count=len(g["expected_range"]))
        assert got == g["expected_range"], g["name"]

    # a row longer than max_k is cut after max_k elements (row_overflow): two beats, each the reference
    # of its piece
    g = tbm.make_groups(seed=5)[1]
    dut = RowRangeUnit(max_k=4)
    items = [dict(e, row=7, last=int(n == 5)) for n, e in enumerate(g["inputs"][:6])]
    got = amaranth_stream_run(dut, items, ["row", "len", "j", "r", "z"], g["config"],
                               setup=ladder_writer(dut, g["ladder"]), count=2)
    lad_r, lad_t = [e[0] for e in g["ladder"]], [e[1] for e in g["ladder"]]
    for beat, piece in zip(got, ([e["x"] for e in items[:4]], [e["x"] for e in items[4:]])):
        exp = tbm.ref_encode_dynamic([piece], lad_r, lad_t, g["config"]["se"], g["config"]["bits"],
                                     g["config"]["alpha"], True, row0=7)["expected_range"]
        assert [beat] == exp


def test_dynamic_per_patch_encoder_amaranth_sim():
    """DynamicPerPatchEncoder in the Amaranth simulator: codes, outliers and (row, j, z) vs sim.reference,
    and the steady-state rate: M rows of K >= 13 elements take M*K + K - 1 + DYNAMIC_LATENCY cycles (fast)."""
    import numpy as np

    from vitaccel.hw.dynamic_per_patch import DYNAMIC_LATENCY, RANGE_BUSY_CYCLES, DynamicPerPatchEncoder
    from vitaccel.tb import cocotb_dynamic_per_patch as tbm

    for g in tbm.make_groups(seed=5):
        dut = DynamicPerPatchEncoder(max_k=tbm.MAX_K)
        res = amaranth_stream_run(dut, g["inputs"], None, g["config"], outputs=("o", "outl", "rowp"),
                                   setup=ladder_writer(dut, g["ladder"]))
        assert res["o"] == g["expected"], g["name"]
        assert res["outl"] == g["expected_outl"], g["name"]
        assert res["rowp"] == g["expected_rowp"], g["name"]

    m = 6
    for k in (RANGE_BUSY_CYCLES + 1, tbm.MAX_K):
        lad_r, lad_t, se = tbm.make_ladder(8, 12, 1.0, 64)
        x = np.random.default_rng(k).integers(-3000, 3000, (m, k))
        exp = tbm.ref_encode_dynamic(x, lad_r, lad_t, se, 8, 2000, True)
        dut = DynamicPerPatchEncoder(max_k=tbm.MAX_K)
        cycles = []
        res = amaranth_stream_run(dut, exp["inputs"], None,
                                   {"se": se, "bits": 8, "alpha": 2000, "outliers_en": 1, "ladder_len": 64},
                                   outputs=("o", "outl", "rowp"), setup=ladder_writer(dut, list(zip(lad_r, lad_t))),
                                   cycles=cycles)
        assert res["o"] == exp["expected"] and res["outl"] == exp["expected_outl"]
        assert res["rowp"] == exp["expected_rowp"]
        assert cycles == [m * k + k - 1 + DYNAMIC_LATENCY], (k, cycles)


def test_design_hash_covers_sim_constants():
    """The Verilog cache key covers ``sim/`` too: the gateware takes constants from
    ``sim/engine_config.py`` (e.g. ``outlier_latency``), so a change there must rebuild."""
    from pathlib import Path

    from vitaccel.tb.runner import design_sources

    names = {(p.parent.name, p.name) for p in design_sources()}
    assert ("sim", "engine_config.py") in names and ("hw", "outlier_unit.py") in names
    assert all(Path(p).suffix == ".py" for p in design_sources())
