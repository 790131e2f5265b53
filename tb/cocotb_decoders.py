"""cocotb testbench of :class:`hw.decoders.OperandDecoder` (docs/datapath.md section 4).

``ref_decode`` (this module, built on ``sim.reference.decode_*_triple``) produces the expected
triples; ``rtl_decode`` (the cocotb test) drives the same codes through the Verilated decoder with
random valid/ready back-pressure and compares every output lane.

Launched by ``tests/test_rtl_units.py::test_decoder_rtl`` through :func:`tb.runner.run_cocotb`.
"""
from __future__ import annotations

import random

import cocotb
import numpy as np

from vitaccel.sim.formats import BITS
from vitaccel.tb.bench import Field, PayloadCodec, Testbench, run_stream_groups

LANES = 2
CODE_BITS = 8
#: Must match ``hw.decoders.DecodedLayout`` (field order = bit order, LSB first).
DECODED_FIELDS = [Field("neg", 1), Field("mag", 9), Field("sh", 4), Field("d", 25, True), Field("invalid", 1)]
#: ``hw.common.CodeFormat`` values.
FORMATS = {"uniform": 0, "log2": 1, "shiftlog2_base2": 2, "shiftlog2_sqrt2": 3, "three_region": 4}


def in_codec(lanes: int = LANES) -> PayloadCodec:
    return PayloadCodec([Field(f"code[{i}]", CODE_BITS) for i in range(lanes)])


def out_codec(lanes: int = LANES) -> PayloadCodec:
    return PayloadCodec(DECODED_FIELDS).repeat(lanes)


def ref_decode(code: int, fmt: str, bits: int, m0: int = 0, m1: int = 0) -> dict:
    """Expected decoder output for one code, from ``sim/reference.py``.

    Codes the reference rejects (``DatapathError``) are expected as ``invalid = 1`` with a zero
    triple (spec: invalid codes are rejected by every implementation).
    """
    from vitaccel.sim import reference as ref

    q = np.array([code])
    try:
        if fmt == "uniform":
            t = ref.decode_uniform_triple(q, bits)
        elif fmt == "log2":
            t = ref.decode_log2_triple(q, bits)
        elif fmt.startswith("shiftlog2"):
            t = ref.decode_shiftlog2_triple(q, bits, "2" if fmt.endswith("base2") else "sqrt2")
        elif fmt == "three_region":
            t = ref.decode_three_region_triple(q, bits, m0, m1)
        else:
            raise ValueError(fmt)
    except ref.DatapathError:
        return {"neg": 0, "mag": 0, "sh": 0, "d": 0, "invalid": 1}
    neg, mag, sh = (int(v[0]) for v in t)
    return {"neg": neg, "mag": mag, "sh": sh, "d": int(ref.triple_to_int(*t)[0]), "invalid": 0}


def make_groups(formats=None, bits_list=BITS, seed: int = 0, lanes: int = LANES) -> list[dict]:
    """One group per (format, bits[, m0/m1]) covering every 8-bit code value (valid and invalid)."""
    rng = random.Random(seed)
    groups = []
    for fmt in formats or FORMATS:
        for bits in bits_list:
            mpairs = [(0, 0)]
            if fmt == "three_region":
                mpairs = [(2, 5), (0, 15), (rng.randint(0, 7), rng.randint(8, 15))]
            for m0, m1 in mpairs:
                codes = list(range(1 << CODE_BITS))  # every code incl. out-of-width ones
                rng.shuffle(codes)
                codes += [rng.randrange(1 << bits) for _ in range(lanes * 16)]
                codes += [0] * (-len(codes) % lanes)
                beats = [codes[i:i + lanes] for i in range(0, len(codes), lanes)]
                groups.append({
                    "name": f"{fmt}_k{bits}_m{m0}_{m1}",
                    "config": {"fmt": FORMATS[fmt], "bits": bits, "m0": m0, "m1": m1},
                    "pulse": ["clear"],
                    "inputs": [{f"code[{i}]": c for i, c in enumerate(beat)} for beat in beats],
                    "expected": [
                        {f"{k}[{i}]": v for i, c in enumerate(beat) for k,
                         v in ref_decode(c, fmt, bits, m0, m1).items()}
                        for beat in beats],
                    "after": {"invalid_seen": int(any(ref_decode(c, fmt, bits, m0, m1)["invalid"] for c in codes))},
                })
    return groups


@cocotb.test()
async def rtl_decode(dut):
    """Every code of every configured format/width through the decoder, with back-pressure."""
    from vitaccel.tb.runner import read_test_data

    data = read_test_data()
    tb = Testbench(dut, seed=data.get("seed", 0))
    dut.clear.value = 0
    await tb.start()
    lanes = data.get("lanes", LANES)
    n = await run_stream_groups(tb, data["groups"], "i", in_codec(lanes), {"o": (out_codec(lanes), "expected")},
                                valid_prob=data.get("valid_prob", 0.8), ready_prob=data.get("ready_prob", 0.7))
    dut._log.info("decoder: %d beats checked", n)
