"""cocotb testbench of the dynamic per-patch encoder (docs/datapath.md section 8.1.1).

* ``rtl_dynamic_per_patch`` -- :class:`hw.dynamic_per_patch.DynamicPerPatchEncoder` (toplevel
  ``dynamic_per_patch_encoder``): per group, the scale ladder is loaded through the ladder write
  port, then rows of ``x`` are streamed in (random valid gaps) and the three outputs are checked
  in order under random ready back-pressure: dense codes ``o``, outlier entries ``outl`` and the
  per-row ``rowp`` beats ``(row, j, z)``; the encoder's counters once the group has drained.

Structure: driver (:class:`tb.bench.StreamDriver` on ``i``, plus the ladder writes), monitors
(:class:`tb.bench.StreamMonitor` on ``o``, ``outl``, ``rowp``), model (:func:`ref_encode_dynamic`:
``sim.reference.encode_per_patch_dynamic``, with the per-element flags from
``tb.cocotb_encoders.ref_encode_per_patch``), checker (:class:`tb.bench.Scoreboard` per output).
Stimuli (:func:`make_groups`) use ladders built as in the spec, ``s_j = s_top * 2^(-j/8)``,
``T[j] = floor(s_j * (2^k - 1) * 2^F)``, ``R[j] = round(2^SE / (s_j * 2^F))`` with one shared
``SE``, and include rows without inliers, inlier spans above ``T[0]``, all-zero rows, spans exactly at
and just above a threshold, int32 extremes, rows of 1 and ``max_k`` elements and a ladder with
``J = 1``.

Launched by ``tests/test_rtl_units.py::test_dynamic_per_patch_encoder_rtl``; the same groups drive
the Amaranth-simulator tests of :class:`hw.dynamic_per_patch.RowRangeUnit` (``expected_range``) and
of the whole encoder there.
"""
from __future__ import annotations

import math

import cocotb
import numpy as np
from cocotb.triggers import RisingEdge

from vitaccel.tb.bench import Field, PayloadCodec, Testbench, run_stream_groups
from vitaccel.tb.cocotb_encoders import PP_OUT, PP_OUTL, recip, ref_encode_per_patch

#: Longest row of the Verilated encoder (row buffer of 2 * 32 elements).
MAX_K = 32

DYN_IN = PayloadCodec([Field("x", 32, True), Field("row", 16), Field("last", 1)])
ROWP_OUT = PayloadCodec([Field("row", 16), Field("j", 6), Field("z", 8)])
RANGE_OUT = PayloadCodec([Field("row", 16), Field("len", 16), Field("j", 6), Field("r", 24), Field("z", 8)])


# ----------------------------------------------------------------------------- model

def make_ladder(bits: int, frac: int, s_top: float, n: int, se: int | None = None) -> tuple[list, list, int]:
    """Scale ladder of section 8.1.1: ``(R, T, SE)`` for ``s_j = s_top * 2^(-j/8)``, ``j < n``.

    ``T[j] = floor(s_j * (2^k - 1) * 2^F)``; ``R[j] = round(2^SE / (s_j * 2^F))`` with the largest
    shared ``SE`` that keeps ``R[n-1] < 2^24`` unless ``se`` is given.  Validated by
    ``sim.reference.check_ladder``.
    """
    from vitaccel.sim import formats as F
    from vitaccel.sim import reference as ref

    s = [s_top * 2.0 ** (-j / F.LADDER_STEPS) for j in range(n)]
    if se is None:
        se = recip(1.0 / (s[-1] * 2 ** frac))[1]
    r = [max(1, int(math.floor(2 ** se / (sj * 2 ** frac) + 0.5))) for sj in s]
    t = [int(math.floor(sj * ((1 << bits) - 1) * 2 ** frac)) for sj in s]
    ref.check_ladder(r, t, se)
    return r, t, se


def ref_encode_dynamic(x, ladder_r, ladder_t, se: int, bits: int, alpha_fx: int, outliers_en: bool,
                       row0: int = 0) -> dict:
    """Expected beats of every output for the rows of ``x`` (numbered from ``row0``).

    ``j``, ``z``, the dense codes and the outlier list come from
    ``sim.reference.encode_per_patch_dynamic`` (``alpha_fx = None`` without outliers,
    ``strict=False``); the per-element ``sat`` / per-entry ``overflow`` flags from
    ``tb.cocotb_encoders.ref_encode_per_patch`` with ``R[j[r]]`` and ``z[r]`` (both built on
    ``sim.reference``, and checked to agree).
    """
    from vitaccel.sim import reference as ref

    x = np.asarray(x, dtype=np.int64)
    m, k = x.shape
    q, outl, sat, n_of, j, z = ref.encode_per_patch_dynamic(
        x, ladder_r, ladder_t, se, bits, alpha_fx if outliers_en else None, strict=False)
    r = np.asarray(ladder_r, dtype=np.int64)[j]
    o, ol, counters = ref_encode_per_patch(x, r, se, z, bits, alpha_fx, outliers_en)
    assert [e["code"] for e in o] == q.reshape(-1).tolist()
    assert [[e["row"], e["col"], e["val"]] for e in ol] == outl.tolist()
    assert counters["sat_count"] == sat and counters["overflow_count"] == n_of
    for e in ol:
        e["row"] += row0
    return {
        "inputs": [{"x": int(x[i, c]), "row": row0 + i, "last": int(c == k - 1)} for i in range(m) for c in range(k)],
        "expected": o, "expected_outl": ol,
        "expected_rowp": [{"row": row0 + i, "j": int(j[i]), "z": int(z[i])} for i in range(m)],
        "expected_range": [{"row": row0 + i, "len": k, "j": int(j[i]), "r": int(r[i]), "z": int(z[i])}
                           for i in range(m)],
        "counters": counters,
    }


# ----------------------------------------------------------------------------- stimuli

def _rows(rng, m: int, k: int, bits: int, frac: int, s_top: float, n_lad: int, t: list, alpha_fx: int,
          outliers_en: bool, special: bool) -> np.ndarray:
    """``m`` random rows of ``k`` elements whose spans sweep the ladder (above ``T[0]`` to below
    ``T[J-1]``), with ~6 % outliers; ``special`` adds the edge rows (at most ``m`` of them)."""
    qmax = (1 << bits) - 1
    x = np.zeros((m, k), dtype=np.int64)
    for i in range(m):
        s_row = s_top * 2.0 ** (-rng.uniform(-0.6, (n_lad - 1) / 8 + 0.6))
        width = s_row * qmax * 2 ** frac
        mu = rng.uniform(-0.4, 0.4) * width
        x[i] = np.floor(rng.normal(mu, width / 5, k) + 0.5)
        if outliers_en:
            hit = rng.random(k) < 0.06
            x[i, hit] = rng.choice([-1, 1], hit.sum()) * np.floor(alpha_fx * rng.uniform(1.05, 3.0, hit.sum()))
    if special and k >= 2:
        lim = alpha_fx if outliers_en else t[0]
        jb = int(rng.integers(0, n_lad))
        edge = [
            np.zeros(k),                                                        # all zero: j = J-1, z = 0
            rng.choice([-1, 1], k) * np.floor(alpha_fx * rng.uniform(1.01, 2.0, k)) if outliers_en
            else np.full(k, -(1 << 31)),                                        # no inliers / int32 min
            np.resize([-lim, lim], k),                                          # inlier span > T[0]: j = 0
            np.resize([0, t[jb]], k),                                           # span exactly T[jb]
            np.resize([-(t[jb] + 1), 0], k),                                    # span T[jb] + 1, lo < 0
            np.resize([(1 << 31) - 1, -(1 << 31), 0], k),                       # int32 extremes
        ]
        for e, i in zip(edge, rng.permutation(m)):
            x[i] = e
    return np.clip(x, -(1 << 31), (1 << 31) - 1)


def make_groups(seed: int = 0, max_k: int = MAX_K) -> list[dict]:
    """Groups of rows, each under its own ladder and config (k = 4/6/8, with and without outliers).

    Each group: ``config`` (port values), ``ladder`` (``[R, T]`` pairs written before the group),
    ``inputs``, ``expected`` / ``expected_outl`` / ``expected_rowp`` (the encoder's outputs),
    ``expected_range`` (:class:`~hw.dynamic_per_patch.RowRangeUnit` beats) and ``after`` (counters).
    A group holds one or more ``(M, K)`` blocks (different row lengths back to back).
    """
    from vitaccel.sim import reference as ref

    rng = np.random.default_rng(seed)
    groups = []
    # name, bits, F, s_top, J, outliers, blocks [(M, K)], se (None: largest)
    cases = [
        ("spec_example", 4, 4, 1.0, 16, True, [(1, 4)], 20),
        ("k8_outliers_J64", 8, 12, 0.9, 64, True, [(8, 24), (3, max_k)], None),
        ("k4_outliers_J24", 4, 10, 2.5, 24, True, [(12, 20)], None),
        ("k6_outliers_J40_short_rows", 6, 12, 0.3, 40, True, [(6, 6), (5, 1), (4, 3)], None),
        ("k6_no_outliers_J48", 6, 12, 1.7, 48, False, [(8, 16), (2, max_k)], None),
        ("k8_no_outliers_J1", 8, 8, 0.5, 1, False, [(6, 10)], None),
        ("k4_no_outliers_J64", 4, 14, 0.05, 64, False, [(8, 12)], None),
    ]
    row0 = 0
    for name, bits, frac, s_top, n_lad, en, blocks, se in cases:
        lad_r, lad_t, se = make_ladder(bits, frac, s_top, n_lad, se)
        alpha_fx = int(math.floor(0.8 * lad_t[0])) if en else 0
        if name == "spec_example":
            alpha_fx = 32
            x_blocks = [np.array([[20, -13, 40, 3]])]
        else:
            x_blocks = [_rows(rng, m, k, bits, frac, s_top, n_lad, lad_t, alpha_fx, en, special=(b == 0))
                        for b, (m, k) in enumerate(blocks)]
        group = {"name": name, "config": {"se": se, "bits": bits, "alpha": alpha_fx, "outliers_en": int(en),
                                          "ladder_len": n_lad},
                 "ladder": [[r, t] for r, t in zip(lad_r, lad_t)],
                 "inputs": [], "expected": [], "expected_outl": [], "expected_rowp": [], "expected_range": [],
                 "after": {"sat_count": 0, "outlier_count": 0, "overflow_count": 0, "row_overflow": 0}}
        for x in x_blocks:
            res = ref_encode_dynamic(x, lad_r, lad_t, se, bits, alpha_fx, en, row0)
            row0 += x.shape[0]
            for key in ("inputs", "expected", "expected_outl", "expected_rowp", "expected_range"):
                group[key] += res[key]
            for c, v in res["counters"].items():
                group["after"][c] += v
        if name == "spec_example":   # the worked example of section 8.1.1 (reference and spec agree)
            q, outl, _, _, j, z = ref.encode_per_patch_dynamic(x_blocks[0], lad_r, lad_t, se, bits, alpha_fx)
            assert lad_t == [240, 220, 201, 185, 169, 155, 142, 130, 120, 110, 100, 92, 84, 77, 71, 65]
            assert lad_r[15] == 240387 and j.tolist() == [15] and z.tolist() == [3]
            assert q.tolist() == [[8, 0, 3, 4]] and outl.tolist() == [[0, 2, 37]]
        groups.append(group)
    return groups


# ----------------------------------------------------------------------------- cocotb test

async def load_ladder(tb: Testbench, ladder: list) -> None:
    """Write ``(R[j], T[j])`` for ``j = 0 .. len(ladder) - 1`` through the ladder write port."""
    dut = tb.dut
    for addr, (r, t) in enumerate(ladder):
        dut.ladder_we.value = 1
        dut.ladder_addr.value = addr
        dut.ladder_r.value = int(r)
        dut.ladder_t.value = int(t)
        await RisingEdge(tb.clk)
    dut.ladder_we.value = 0


async def run_dynamic_groups(tb: Testbench, groups: list[dict], *, valid_prob: float = 0.8,
                             ready_prob: float = 0.6) -> int:
    """Per group: config, ladder, ``clear`` pulse, then stream the rows and check all three outputs and
    the counters (the previous group has drained before the next ladder is written)."""
    outs = {"o": (PP_OUT, "expected"), "outl": (PP_OUTL, "expected_outl"), "rowp": (ROWP_OUT, "expected_rowp")}
    for group in groups:
        group.setdefault("pulse", ["clear"])
    checked = await run_stream_groups(
        tb, groups, "i", DYN_IN, outs, valid_prob=valid_prob, ready_prob=ready_prob,
        setup=lambda tb_, group: load_ladder(tb_, group["ladder"]),
        extra_cycles=lambda group: 25 * len(group["expected_rowp"]))  # row buffer: a row's latency
    for group in groups:
        tb.dut._log.info("group %s: %d rows, %d codes, %d outliers ok", group["name"], len(group["expected_rowp"]),
                         len(group["expected"]), len(group["expected_outl"]))
    return checked


@cocotb.test()
async def rtl_dynamic_per_patch(dut):
    """Dynamic per-patch encoder: ladders, random rows, back-pressure on the input and all three outputs."""
    from vitaccel.tb.runner import read_test_data

    data = read_test_data()
    tb = Testbench(dut, seed=data.get("seed", 0))
    dut.clear.value = 0
    dut.ladder_we.value = 0
    await tb.start()
    n = await run_dynamic_groups(tb, data["groups"], valid_prob=0.8, ready_prob=0.6)
    dut._log.info("dynamic per-patch encoder: %d beats checked", n)
