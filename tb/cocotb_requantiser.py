"""cocotb testbench of :class:`hw.requantiser.Requantiser` (docs/datapath.md section 7).

``ref_requantize`` (``sim.reference.requantize`` per element) gives the expected outputs; the cocotb
test ``rtl_requantize`` streams the same elements through the Verilated requantiser with random
valid/ready back-pressure and checks value, saturation flag, tag order and the saturation counter.

Launched by ``tests/test_rtl_units.py::test_requantiser_rtl``.
"""
from __future__ import annotations

import math
import random

import cocotb
import numpy as np

from vitaccel.tb.bench import Field, PayloadCodec, Testbench, run_stream_groups

ACC_BITS = 40
TAG_BITS = 8
OUT_FORMATS = {"ucode": 0, "scode": 1, "fixed16": 2, "fixed32": 3}


def in_codec(acc_bits: int = ACC_BITS) -> PayloadCodec:
    """Must match ``hw.requantiser.requant_in_layout``."""
    return PayloadCodec([Field("acc", acc_bits, True), Field("mr", 16), Field("mc", 16), Field("sc", 6),
                         Field("bq", 48, True), Field("tag", TAG_BITS)])


def out_codec() -> PayloadCodec:
    """Must match ``hw.requantiser.requant_out_layout``."""
    return PayloadCodec([Field("value", 32, True), Field("sat", 1), Field("fault", 1), Field("tag", TAG_BITS)])


def ref_requantize(e: dict, sr: int, z_out: int, out_fmt: str, bits: int) -> dict:
    """Expected output of one element from ``sim.reference.requantize``."""
    from vitaccel.sim import reference as ref

    out, nsat = ref.requantize(np.array([[e["acc"]]]), e["mr"], sr, e["mc"], e["sc"], e["bq"], z_out, out_fmt, bits)
    return {"value": int(out[0, 0]), "sat": int(nsat), "fault": 0, "tag": e["tag"]}


def _element(rng: random.Random, sr: int, hi: int, acc_bits: int, tag: int) -> dict:
    """A random valid element whose output lands in, near or beyond ``[lo, hi]``."""
    amax = (1 << (acc_bits - 1)) - 1
    acc = int(rng.choice([1, -1]) * min(amax, int(2 ** rng.uniform(0, acc_bits - 1))))
    if rng.random() < 0.05:
        acc = rng.choice([amax, -amax - 1, 0, 1, -1])
    mr = rng.randint(0, min(1 << sr, (1 << 16) - 1))
    if rng.random() < 0.2:
        mr = min(1 << sr, (1 << 16) - 1)
    mc = rng.randint(1, (1 << 16) - 1) if rng.random() < 0.95 else rng.choice([0, (1 << 16) - 1])
    t = abs(acc) * mr / (1 << sr) + 1
    target = 2 ** rng.uniform(-1, math.log2(4 * hi + 2))
    sc = int(min(47, max(0, round(math.log2(t * mc / target))))) if mc else rng.randint(0, 47)
    bq_lim = min((1 << 47) - 1, int(target * 2 ** sc) + 1)
    bq = rng.randint(-bq_lim, bq_lim)
    if rng.random() < 0.05:
        bq = rng.choice([1, -1]) * ((1 << 47) - 1)
    return {"acc": acc, "mr": mr, "mc": mc, "sc": sc, "bq": bq, "tag": tag % (1 << TAG_BITS)}


def make_groups(seed: int = 0, n: int = 96, acc_bits: int = ACC_BITS) -> list[dict]:
    """Groups per output format and width (ucode/scode k = 4/6/8, fixed16, fixed32) plus the spec example."""
    from vitaccel.sim import formats as F

    rng = random.Random(seed)
    groups = []
    # docs/datapath.md section 7 worked example (hand-computed expected values from the spec text)
    ex = {"acc": 1000, "mr": 3, "mc": 5, "sc": 4, "bq": 8}
    groups.append({"name": "spec_example_z20", "config": {"sr": 2, "z_out": 20, "out_fmt": 0, "bits": 8},
                   "pulse": ["clear"], "inputs": [dict(ex, tag=1)],
                   "expected": [{"value": 255, "sat": 0, "fault": 0, "tag": 1}], "after": {"sat_count": 0}})
    groups.append({"name": "spec_example_z21", "config": {"sr": 2, "z_out": 21, "out_fmt": 0, "bits": 8},
                   "pulse": ["clear"], "inputs": [dict(ex, tag=2)],
                   "expected": [{"value": 255, "sat": 1, "fault": 0, "tag": 2}], "after": {"sat_count": 1}})
    configs = [(f, k) for f in ("ucode", "scode") for k in F.BITS] + [("fixed16", 8), ("fixed32", 8)]
    for out_fmt, bits in configs:
        lo, hi = F.out_range(out_fmt, bits)
        sr = rng.choice([0, 1, 8, 12, 15, 16, rng.randint(0, 16)])
        z_out = rng.randint(0, hi) if out_fmt == "ucode" else 0
        elems = [_element(rng, sr, hi, acc_bits, i) for i in range(n)]
        expected = [ref_requantize(e, sr, z_out, out_fmt, bits) for e in elems]
        groups.append({
            "name": f"{out_fmt}_k{bits}_sr{sr}_z{z_out}",
            "config": {"sr": sr, "z_out": z_out, "out_fmt": OUT_FORMATS[out_fmt], "bits": bits},
            "pulse": ["clear"], "inputs": elems, "expected": expected,
            "after": {"sat_count": sum(x["sat"] for x in expected), "fault_seen": 0},
        })
    return groups


@cocotb.test()
async def rtl_requantize(dut):
    """Random elements per output format through the requantiser, with back-pressure."""
    from vitaccel.tb.runner import read_test_data

    data = read_test_data()
    tb = Testbench(dut, seed=data.get("seed", 0))
    dut.clear.value = 0
    await tb.start()
    n = await run_stream_groups(tb, data["groups"], "i", in_codec(data.get("acc_bits", ACC_BITS)),
                                {"o": (out_codec(), "expected")},
                                valid_prob=data.get("valid_prob", 0.8), ready_prob=data.get("ready_prob", 0.6))
    dut._log.info("requantiser: %d elements checked", n)
