"""cocotb testbenches of the encoders in :mod:`hw.encoders` (docs/datapath.md sections 5 and 8).

* ``rtl_encode_per_patch`` -- :class:`hw.encoders.PerPatchEncoder` (toplevel ``per_patch_encoder``):
  dense codes on ``o``, outlier entries on ``outl``; expected values from
  ``sim.reference.encode_per_patch`` / ``encode_uniform`` (``ref_encode_per_patch``).
* ``rtl_encode_activation`` -- :class:`hw.encoders.ActivationEncoder` (toplevel
  ``activation_encoder``): ``encode_log2``, ``encode_shiftlog2`` (base 2 / sqrt 2),
  ``encode_three_region``; expected values from ``sim.reference`` (``ref_encode_activation``).

Launched by ``tests/test_rtl_units.py::test_per_patch_encoder_rtl`` / ``test_activation_encoder_rtl``
(pass ``testcase`` so each toplevel runs only its own test).
"""
from __future__ import annotations

import math

import cocotb
import numpy as np

from vitaccel.sim.formats import BITS
from vitaccel.tb.bench import Field, PayloadCodec, Testbench, run_stream_groups

FORMATS = {"log2": 1, "shiftlog2_base2": 2, "shiftlog2_sqrt2": 3, "three_region": 4}

PP_IN = PayloadCodec([Field("x", 32, True), Field("r", 24), Field("z", 8), Field("row", 16), Field("col", 16)])
PP_OUT = PayloadCodec([Field("code", 8), Field("sat", 1), Field("outlier", 1)])
PP_OUTL = PayloadCodec([Field("row", 16), Field("col", 16), Field("val", 16, True), Field("overflow", 1)])
ACT_IN = PayloadCodec([Field("x", 32, True)])
ACT_OUT = PayloadCodec([Field("code", 8), Field("invalid", 1)])


def recip(value: float) -> tuple[int, int]:
    """``(R, SE)`` with ``R / 2^SE ~ value``, ``0 < R < 2^24``, ``SE`` in 0..56 (largest SE that fits)."""
    se = max(0, min(56, math.floor(math.log2((2 ** 24 - 1) / value))))
    r = max(1, min(2 ** 24 - 1, int(math.floor(value * 2 ** se + 0.5))))
    return r, se


# ----------------------------------------------------------------------------- per-patch encoder

def ref_encode_per_patch(x, r, se, z, bits, alpha_fx, outliers_en=True) -> tuple[list, list, dict]:
    """Expected ``o`` beats, ``outl`` beats and counters, from ``sim.reference``.

    Dense codes and the outlier list come from ``encode_per_patch`` (``strict=False``) or
    ``encode_uniform``; the per-element ``sat`` flag from ``encode_uniform`` on that element alone and
    the per-entry ``overflow`` flag from ``saturate`` of the unsaturated ``round_shift`` value.
    """
    from vitaccel.sim import reference as ref

    x = np.asarray(x, dtype=np.int64)
    m, k = x.shape
    if outliers_en:
        q, outl, sat, n_of = ref.encode_per_patch(x, r, se, z, bits, alpha_fx, strict=False)
        is_out = np.abs(x) > alpha_fx
    else:
        q, sat = ref.encode_uniform(x, r, se, z, bits)
        outl, n_of, is_out = np.zeros((0, 3), np.int64), 0, np.zeros_like(x, bool)
    o = []
    for i in range(m):
        for j in range(k):
            s = 0 if is_out[i, j] else ref.encode_uniform(x[i:i + 1, j:j + 1], r[i], se, z[i], bits)[1]
            o.append({"code": int(q[i, j]), "sat": int(s), "outlier": int(is_out[i, j])})
    ol = []
    for row, col, val in outl.tolist():
        raw = ref.round_shift(x[row, col] * int(r[row]), se - 2)
        ol.append({"row": row, "col": col, "val": val, "overflow": ref.saturate(raw, -(1 << 15), (1 << 15) - 1)[1]})
    assert sum(e["sat"] for e in o) == sat and sum(e["overflow"] for e in ol) == n_of
    return o, ol, {"sat_count": sat, "outlier_count": len(ol), "overflow_count": n_of}


def make_per_patch_groups(seed: int = 0) -> list[dict]:
    """k = 4/6/8 with random outliers, zero-outlier and full-outlier loads, int16 overflow, encode_uniform."""
    rng = np.random.default_rng(seed)
    groups = []
    cases = []
    for bits in BITS:
        cases.append((f"k{bits}_random", bits, 6, 12, 0.03, True))
    cases += [("k4_no_outliers", 4, 4, 8, None, True), ("k8_all_outliers", 8, 3, 8, 0.0, True),
              ("k6_overflow", 6, 3, 8, "overflow", True), ("k8_uniform", 8, 4, 10, 0.03, False)]
    for name, bits, m, k, mode, en in cases:
        f = 12
        s = rng.uniform(0.01, 0.2, m)                       # per-row scales
        r_se = [recip(1.0 / (si * 2 ** f)) for si in s]
        se = min(t[1] for t in r_se)
        r = np.array([max(1, int(math.floor(2 ** se / (si * 2 ** f) + 0.5))) for si in s])
        z = rng.integers(0, 1 << bits, m)
        xr = rng.normal(0, 1, (m, k)) * s[:, None] * (1 << (bits - 1))
        if mode == "overflow":
            xr[:, ::3] = rng.choice([-1, 1], (m, len(range(0, k, 3)))) * 9000 * s[:, None]
            alpha = 1.0
        elif mode is None:
            alpha = 1e6
        else:
            alpha = float(mode) if mode == 0.0 else float(np.quantile(np.abs(xr), 1 - 0.1))
            if mode == 0.03:
                xr[rng.random((m, k)) < 0.05] *= 20
        x = np.clip(np.floor(xr * 2 ** f + 0.5), -(2 ** 31), 2 ** 31 - 1).astype(np.int64)
        alpha_fx = int(math.floor(alpha * 2 ** f)) if alpha < 1e5 else (1 << 32) - 1
        o, ol, counters = ref_encode_per_patch(x, r, se, z, bits, alpha_fx, en)
        if mode == 0.0:
            assert len(ol) == int(np.count_nonzero(x)), name
        if mode is None:
            assert not ol, name
        if mode == "overflow":
            assert counters["overflow_count"] > 0, name
        groups.append({
            "name": name,
            "config": {"se": se, "bits": bits, "alpha": alpha_fx, "outliers_en": int(en)},
            "pulse": ["clear"],
            "inputs": [{"x": int(x[i, j]), "r": int(r[i]), "z": int(z[i]), "row": i, "col": j}
                       for i in range(m) for j in range(k)],
            "expected": o, "expected_outl": ol, "after": counters,
        })
    return groups


@cocotb.test()
async def rtl_encode_per_patch(dut):
    """Per-patch encoder with outliers, random back-pressure on the input and both outputs."""
    from vitaccel.tb.runner import read_test_data

    data = read_test_data()
    tb = Testbench(dut, seed=data.get("seed", 0))
    dut.clear.value = 0
    await tb.start()
    n = await run_stream_groups(tb, data["groups"], "i", PP_IN,
                                {"o": (PP_OUT, "expected"), "outl": (PP_OUTL, "expected_outl")},
                                valid_prob=0.8, ready_prob=0.6)
    dut._log.info("per-patch encoder: %d beats checked", n)


# ----------------------------------------------------------------------------- activation encoder

def ref_encode_activation(fmt: str, x, bits: int, cfg: dict) -> list[dict]:
    """Expected ``o`` beats from ``sim.reference.encode_log2`` / ``encode_shiftlog2`` / ``encode_three_region``."""
    from vitaccel.sim import reference as ref

    x = np.asarray(x, dtype=np.int64)
    if fmt == "log2":
        q = ref.encode_log2(x, cfg["frac"], bits)
    elif fmt.startswith("shiftlog2"):
        q = ref.encode_shiftlog2(x, cfg["sh"], cfg["r"], cfg["se"], bits, "2" if fmt.endswith("base2") else "sqrt2")
    else:
        q = ref.encode_three_region(x, cfg["r"], cfg["se"], bits, cfg["m0"], cfg["m1"])
    return [{"code": int(v), "invalid": 0} for v in q]


def make_activation_groups(seed: int = 0, n: int = 160) -> list[dict]:
    """log2, shiftlog2 base 2 / sqrt 2 and three_region at k = 4/6/8 (random scales, edge inputs)."""
    rng = np.random.default_rng(seed)
    groups = []
    edges = [0, 1, -1, 2, 3, (1 << 31) - 1, -(1 << 31)]
    for fmt in FORMATS:
        for bits in BITS:
            cfg = {"fmt": FORMATS[fmt], "bits": bits, "frac": 15, "sh": 0, "r": 1, "se": 0, "m0": 0, "m1": 0}
            if fmt == "log2":
                a = np.concatenate([rng.integers(0, 1 << 15, n // 2),
                                    np.floor(2.0 ** rng.uniform(0, 15.2, n // 2)).astype(np.int64),
                                    [0, 1, 2, 3, 1 << 15, 46340, 46341, 1 << 14]])
                x = a
            else:
                f = int(rng.integers(8, 14))
                xr = np.concatenate([rng.uniform(-0.17, 0.0, n // 4), rng.exponential(1.0, n // 2),
                                     rng.uniform(0, 12, n // 4)])
                x = np.concatenate([np.floor(xr * 2 ** f + 0.5).astype(np.int64), edges])
                if fmt.startswith("shiftlog2"):
                    shift = float(rng.uniform(0.17, 0.3))
                    s = float(rng.uniform(0.5, 4.0))
                    cfg["sh"] = int(math.floor(shift * 2 ** f + 0.5))
                    cfg["r"], cfg["se"] = recip(2 ** 16 / (s * 2 ** f))
                else:
                    s0 = float(rng.uniform(0.17, 0.4)) / ((1 << (bits - 1)) - 1)
                    m0 = int(rng.integers(0, 5))
                    cfg["m0"], cfg["m1"] = m0, int(rng.integers(m0, 16))
                    cfg["r"], cfg["se"] = recip(2 ** 16 / (s0 * 2 ** f))
            expected = ref_encode_activation(fmt, x, bits, cfg)
            groups.append({"name": f"{fmt}_k{bits}", "config": cfg,
                           "inputs": [{"x": int(v)} for v in x], "expected": expected})
    return groups


@cocotb.test()
async def rtl_encode_activation(dut):
    """log2 / shiftlog2 / three_region encoders with random back-pressure."""
    from vitaccel.tb.runner import read_test_data

    data = read_test_data()
    tb = Testbench(dut, seed=data.get("seed", 0))
    await tb.start()
    n = await run_stream_groups(tb, data["groups"], "i", ACT_IN, {"o": (ACT_OUT, "expected")},
                                valid_prob=0.8, ready_prob=0.7)
    dut._log.info("activation encoder: %d beats checked", n)
