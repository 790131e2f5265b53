"""Registered DSP products (hw/dsp.py) and carry-save sums (hw/common.py): both forms, exactness."""
from __future__ import annotations

import random
import re

import pytest
from amaranth.hdl import Fragment, Module, Signal, signed, unsigned
from amaranth.sim import Simulator

from vitaccel.hw.common import carry_save_add, carry_save_difference, carry_save_sum, partial_operands, sum_products
from vitaccel.hw.dsp import DSP_LATENCY, ECP5_DSP, DspTarget, dsp_kind, dsp_products


def _rand(rng, shape):
    lo = -(1 << (shape.width - 1)) if shape.signed else 0
    hi = (1 << (shape.width - 1 if shape.signed else shape.width)) - 1
    return rng.choice([lo, hi, 0, rng.randint(lo, hi)])


def _shape(rng, lo=1, hi=24):
    return signed(rng.randint(max(2, lo), hi)) if rng.random() < 0.5 else unsigned(rng.randint(lo, hi))


def test_carry_save_sums_are_exact():
    """sum_products / carry_save_sum against Python integers: 1..6 terms, mixed signedness, shifts."""
    rng = random.Random(5)
    for _ in range(25):
        n = rng.randint(1, 6)
        terms = [Signal(_shape(rng), name=f"t{i}") for i in range(n)]
        shifts = [rng.choice([0, 0, 1, 17, 34]) for _ in range(n)]
        extra = Signal(_shape(rng, 2, 40), name="extra")
        m = Module()
        o1 = Signal(sum_products(terms, shifts, extra).shape())
        o2 = Signal(carry_save_sum(terms).shape())
        m.d.comb += [o1.eq(sum_products(terms, shifts, extra)), o2.eq(carry_save_sum(terms))]
        sim = Simulator(m)

        async def bench(ctx, terms=terms, shifts=shifts, extra=extra, o1=o1, o2=o2):
            for _ in range(60):
                vals = [_rand(rng, t.shape()) for t in terms]
                e = _rand(rng, extra.shape())
                for t, v in zip(terms, vals):
                    ctx.set(t, v)
                ctx.set(extra, e)
                assert ctx.get(o1) == sum(v << s for v, s in zip(vals, shifts)) + e
                assert ctx.get(o2) == sum(vals)

        sim.add_testbench(bench)
        sim.run()


def test_carry_save_difference_is_exact():
    """carry_save_difference + carry_save_add (the drain's D3b / D4) against Python integers:
    ``a - sum(p << s)`` for 0..4 products of mixed signedness, extreme and random values."""
    rng = random.Random(7)
    for _ in range(25):
        n = rng.randint(0, 4)
        a = Signal(_shape(rng, 2, 40), name="a")
        prods = [Signal(_shape(rng, 1, 36), name=f"p{i}") for i in range(n)]
        shifts = [rng.choice([0, 0, 17, 34]) for _ in range(n)]
        x, y, shape = carry_save_difference(a, prods, shifts)
        m = Module()
        o = Signal(shape)
        m.d.comb += o.eq(carry_save_add(x, y, shape))
        sim = Simulator(m)

        async def bench(ctx, a=a, prods=prods, shifts=shifts, o=o):
            for _ in range(60):
                av, vals = _rand(rng, a.shape()), [_rand(rng, p.shape()) for p in prods]
                ctx.set(a, av)
                for p, v in zip(prods, vals):
                    ctx.set(p, v)
                assert ctx.get(o) == av - sum(v << s for v, s in zip(vals, shifts))

        sim.add_testbench(bench)
        sim.run()


def test_generic_dsp_products_take_two_enabled_cycles():
    """Generic form: the product of the operands present at an enabled edge appears after the second one."""
    rng = random.Random(2)
    a, b = Signal(signed(40)), Signal(unsigned(16))
    pp = partial_operands(a, b)
    en = Signal()
    m = Module()
    prods = dsp_products(m, None, [(x, y) for x, y, _ in pp], en, "p")
    assert DSP_LATENCY == 2 and len(prods) == 3
    total = Signal(sum_products(prods, [s for *_, s in pp]).shape())
    m.d.comb += total.eq(sum_products(prods, [s for *_, s in pp]))
    sim = Simulator(m)
    sim.add_clock(1e-6)

    async def bench(ctx):
        sent = []                          # operands loaded at each enabled edge
        for _ in range(300):
            va, vb, ve = _rand(rng, a.shape()), _rand(rng, b.shape()), int(rng.random() < 0.6)
            ctx.set(a, va)
            ctx.set(b, vb)
            ctx.set(en, ve)
            await ctx.tick()
            if ve:
                sent.append(va * vb)
            if len(sent) >= 2:
                assert ctx.get(total) == sent[-2]

    sim.add_testbench(bench)
    sim.run()


def test_dsp_products_reject_operands_wider_than_a_dsp_block():
    m = Module()
    with pytest.raises(ValueError, match="partial_products"):
        dsp_products(m, None, [(Signal(unsigned(18)), Signal(unsigned(4)))], Signal(), "p")
    Fragment.get(m, None)           # elaborated, so Amaranth does not warn about an unused module
    with pytest.raises(ValueError, match="unknown DSP form"):
        DspTarget("xilinx")
    assert dsp_kind(None) == "generic" and dsp_kind(ECP5_DSP) == "ecp5"


def test_ecp5_form_instantiates_registered_mult18x18d():
    """The ECP5 Verilog of the engine's requantiser holds one MULT18X18D per partial product, with the
    input and output registers on CLK0 / CE0, and no '*' left in the fabric."""
    from amaranth.back import verilog

    from vitaccel.hw.requantiser import Requantiser

    text = verilog.convert(Requantiser(acc_bits=32, tag_bits=1, en_copies=2), name="rq", emit_src=False,
                           platform=ECP5_DSP)
    insts = re.findall(r"MULT18X18D\s+#\((.*?)\)\s+\S+\s+\(", text, re.S)
    assert len(insts) == 2 * len(partial_operands(Signal(signed(32)), Signal(unsigned(16))))
    for params in insts:
        for p in ("REG_INPUTA_CLK", "REG_INPUTB_CLK", "REG_OUTPUT_CLK"):
            assert re.search(rf"\.{p}\(\"CLK0\"\)", params), p
        assert re.search(r"\.REG_PIPELINE_CLK\(\"NONE\"\)", params)
    generic = verilog.convert(Requantiser(acc_bits=32, tag_bits=1, en_copies=2), name="rq", emit_src=False)
    assert "MULT18X18D" not in generic and " * " in generic
    assert " * " not in text


@pytest.mark.slow
def test_requantiser_ecp5_form_rtl():
    """The ECP5 form of the requantiser in Verilator (with tb/csrc/mult18x18d_model.v, the project's
    model of the block in this configuration) against sim.reference, as test_requantiser_rtl."""
    from pathlib import Path

    import vitaccel.tb as tbpkg
    from vitaccel.hw.requantiser import Requantiser
    from vitaccel.tb import cocotb_requantiser as tbm
    from vitaccel.tb.runner import run_cocotb, verilog_for

    src = verilog_for(Requantiser, "requantiser", {"acc_bits": tbm.ACC_BITS, "tag_bits": tbm.TAG_BITS},
                      platform=ECP5_DSP)
    assert "MULT18X18D" in src.read_text()
    model = Path(tbpkg.__file__).parent / "csrc" / "mult18x18d_model.v"
    run_cocotb("requantiser", [src, model], "vitaccel.tb.cocotb_requantiser",
               data={"groups": tbm.make_groups(seed=7), "seed": 7})
