"""Stream images and expected results for the layer engine testbench (pure Python, no simulator).

:func:`layer_case` turns one GEMM layer (codes, weights, requantiser parameters, outliers) into the
packed stream words the engine consumes (order: :mod:`hw.engine`) plus the expected output rows and
cycle count.  Expected values come from ``sim/reference.py`` (decode, ``accumulate``, ``requantize``)
and expected cycles from :mod:`sim.schedule`; nothing is computed by the design under test.

:func:`random_layer` draws a random valid layer for a given format / width; :func:`case_from_spec`
wraps a ``sim.layer.LayerSpec`` (golden vectors).
"""
from __future__ import annotations

import numpy as np

from vitaccel.hw.common import CodeFormat, OutFormat
from vitaccel.sim.engine_config import EngineConfig, check_layer_acc, check_layer_shape
from vitaccel.hw.engine import ZA_BITS, cmd_layout, colp_layout, rowp_layout
from vitaccel.hw.outlier_unit import outlier_beat_layout
from vitaccel.sim.schedule import layer_cycles, tile_order
from vitaccel.sim import formats as F
from vitaccel.sim import reference as ref

__all__ = ["layer_case", "random_layer", "case_from_spec", "random_codes", "unpack_out", "SMALL_ENGINE",
           "SMALL_ENGINE_2X3"]

#: The small engines the RTL tests build (one Verilator build each, shared by tests/test_rtl_engine.py
#: and tests/test_rtl_golden.py): 4 x 4 with two outlier lanes, and 2 x 3 with one.
SMALL_ENGINE = EngineConfig(rows=4, cols=4, a_bits=8, b_bits=8, acc_bits=40, outlier_capacity=6, outlier_lanes=2,
                            max_k=64)
SMALL_ENGINE_2X3 = EngineConfig(rows=2, cols=3, a_bits=8, b_bits=8, acc_bits=40, outlier_capacity=3,
                                outlier_lanes=1, max_k=32)

_FMT = {"uniform": CodeFormat.UNIFORM, "log2": CodeFormat.LOG2, "three_region": CodeFormat.THREE_REGION}
_OUT = {"ucode": OutFormat.UCODE, "scode": OutFormat.SCODE, "fixed16": OutFormat.FIXED16,
        "fixed32": OutFormat.FIXED32}


def _pack(layout, value) -> int:
    return int(layout.const(value).as_value().value)


def _code_format(kind: str, base: str) -> CodeFormat:
    if kind == "shiftlog2":
        return CodeFormat.SHIFTLOG2_SQRT2 if base == "sqrt2" else CodeFormat.SHIFTLOG2_BASE2
    return _FMT[kind]


def unpack_out(word: int, cols: int) -> dict:
    """Split an ``out`` payload word (``out_layout(cols)``) into row, col, data list and sat mask."""
    row = word & 0xFFFF
    col = (word >> 16) & 0xFFFF
    data = []
    for c in range(cols):
        v = (word >> (32 + 32 * c)) & 0xFFFFFFFF
        data.append(v - (1 << 32) if v >> 31 else v)
    sat = (word >> (32 + 32 * cols)) & ((1 << cols) - 1)
    return {"row": row, "col": col, "data": data, "sat": sat}


def layer_case(cfg: EngineConfig, *, q, b, a_kind: str, a_bits: int, b_bits: int, za, mr, sr: int, mc, sc, bq,
               out_fmt: str, out_bits: int, z_out: int = 0, fo: int = 0, outliers=None, a_base: str = "2",
               m0: int = 0, m1: int = 0, name: str = "layer", check_acc: bool = True) -> dict:
    """Build the stream words, expected rows and expected cycles of one layer.

    Returns a JSON-able dict: ``name``, ``cmd`` (word), ``streams`` (``{port: [words]}``),
    ``expected`` (list of ``{row, col, n, data, sat}``), ``cycles`` (expected counter value),
    ``flags`` (expected sticky flags), ``tile_cycles`` (per-tile windows, informational),
    ``shape``.
    """
    q = np.asarray(q, dtype=np.int64)
    b = ref.check_sym(b, b_bits)
    M, K = q.shape
    N = b.shape[1]
    check_layer_shape(cfg, M, K, N)
    za = np.broadcast_to(np.asarray(za, np.int64).reshape(-1), (M,)).copy()
    mr = np.broadcast_to(np.asarray(mr, np.int64).reshape(-1), (M,)).copy()
    mc = np.broadcast_to(np.asarray(mc, np.int64).reshape(-1), (N,)).copy()
    sc = np.broadcast_to(np.asarray(sc, np.int64).reshape(-1), (N,)).copy()
    bq = np.broadcast_to(np.asarray(bq, np.int64).reshape(-1), (N,)).copy()
    if za.size and (za.min() < 0 or za.max() >= (1 << ZA_BITS)):
        raise ValueError(f"za must be in 0..2^{ZA_BITS}-1 for the engine")
    o = np.zeros((0, 3), np.int64) if outliers is None else np.asarray(outliers, np.int64).reshape(-1, 3)
    if check_acc:
        check_layer_acc(cfg, K, a_kind, a_bits, b_bits, int(za.max()) if za.size else 0, fo,
                        a_base=a_base, m0=m0, m1=m1)

    # ---- expected values: sim/reference.py
    d = ref.decode(q, a_kind, a_bits, base=a_base, m0=m0, m1=m1)
    _raw, _accd, acc = ref.accumulate(d, b, za, fo, o)
    out, _nsat = ref.requantize(acc, mr, sr, mc, sc, bq, z_out, out_fmt, out_bits)
    lo, hi = F.out_range(out_fmt, out_bits)
    v_unsat = None  # saturation mask: recompute v + z_out before the clamp
    t = ref.round_shift(acc * mr[:, None], sr)
    prod = t.astype(object) * mc[None, :].astype(object) + bq[None, :].astype(object)
    v_unsat = ref.round_shift(prod.astype(np.int64), sc[None, :]) + z_out
    satmask = (v_unsat < lo) | (v_unsat > hi)

    R, C, L = cfg.rows, cfg.cols, cfg.outlier_lanes
    counts = ref.outliers_per_tile(o, M, R) if len(o) else np.zeros(-(-M // R), np.int64)
    cmd = _pack(cmd_layout, {
        "m": M, "k": K, "n": N, "a_fmt": _code_format(a_kind, a_base), "a_k": a_bits, "m0": m0, "m1": m1,
        "fo": fo, "sr": sr, "z_out": z_out, "out_fmt": _OUT[out_fmt], "out_k": out_bits if out_bits <= 8 else 0,
    })
    streams = {"a": [], "b": [], "colp": [], "rowp": [], "outl": []}
    expected = []
    rl, cl, ol = rowp_layout(R), colp_layout(C), outlier_beat_layout(L)
    from vitaccel.hw.engine import LayerEngine  # noqa: F401  (layouts above come from the engine module)
    a_lane = (1 << cfg.a_bits) - 1
    for r0, m, c0, n in tile_order(cfg, M, N):
        if r0 == 0:  # first tile of a column block: its B rows and column parameters
            for k in range(K):
                streams["b"].append(_pack(data_array(cfg.b_bits, C, signed=True),
                                          [int(b[k, c0 + c]) if c < n else 0 for c in range(C)]))
            streams["colp"].append(_pack(cl, [
                {"mc": int(mc[c0 + c]), "sc": int(sc[c0 + c]), "bq": int(bq[c0 + c])} if c < n
                else {"mc": 0, "sc": 0, "bq": 0} for c in range(C)]))
        ti = r0 // R
        streams["rowp"].append(_pack(rl, {
            "mr": [int(mr[r0 + r]) if r < m else 0 for r in range(R)],
            "za": [int(za[r0 + r]) if r < m else 0 for r in range(R)],
            "n_out": int(counts[ti]),
        }))
        for k in range(K):
            streams["a"].append(_pack(data_array(cfg.a_bits, R, signed=False),
                                      [int(q[r0 + r, k]) & a_lane if r < m else 0 for r in range(R)]))
        if cfg.has_outliers:
            ent = o[(o[:, 0] >= r0) & (o[:, 0] < r0 + R)] if len(o) else o
            for i in range(0, len(ent), L):
                chunk = ent[i:i + L]
                streams["outl"].append(_pack(ol, [
                    {"row": int(chunk[j, 0]), "col": int(chunk[j, 1]), "val": int(chunk[j, 2]), "valid": 1}
                    if j < len(chunk) else {"row": 0, "col": 0, "val": 0, "valid": 0} for j in range(L)]))
        for r in range(m):
            expected.append({
                "row": r0 + r, "col": c0, "n": n,
                "data": [int(out[r0 + r, c0 + c]) for c in range(n)],
                "sat": int(sum(1 << c for c in range(n) if satmask[r0 + r, c0 + c])),
            })
    cyc = layer_cycles(cfg, M, K, N, [int(c) for c in counts])
    flags = {"overflow": int(cfg.has_outliers and len(o) > 0 and counts.max() > cfg.outlier_capacity),
             "range_error": 0, "invalid_code": 0, "acc_fault": 0}
    return {"name": name, "cmd": cmd, "streams": streams, "expected": expected, "cycles": cyc.total,
            "flags": flags, "shape": [M, K, N], "utilisation": cyc.utilisation}


def data_array(bits: int, n: int, signed: bool):
    from amaranth.hdl import signed as s_, unsigned as u_
    from amaranth.lib import data
    return data.ArrayLayout(s_(bits) if signed else u_(bits), n)


def random_codes(rng: np.random.Generator, kind: str, bits: int, shape, base: str = "2") -> np.ndarray:
    """Random valid A codes of a format, covering every code type (e.g. ``log2`` ZERO, all regions)."""
    if kind == "uniform":
        return rng.integers(0, 1 << bits, shape)
    if kind == "log2":
        qmax, zero = F.log2_qmax(bits), F.log2_zero_code(bits)
        q = rng.integers(0, qmax + 1, shape)
        return np.where(rng.random(shape) < 0.15, zero, q)
    if kind == "shiftlog2":
        return rng.integers(0, F.shiftlog2_qmax(bits, base) + 1, shape)
    if kind == "three_region":
        return rng.integers(0, 1 << bits, shape)
    raise ValueError(kind)


def random_layer(cfg: EngineConfig, rng: np.random.Generator, M: int, K: int, N: int, *, a_kind: str = "uniform",
                 a_bits: int = 8, b_bits: int = 8, base: str = "2", fo: int = 0, outliers_per_tile=0,
                 out_fmt: str = "fixed32", out_bits: int = 32, per_patch: bool = True, name: str | None = None) -> dict:
    """A random valid layer as a :func:`layer_case`.

    ``outliers_per_tile`` (int or list per row tile): outlier entries of each row tile (requires
    ``a_kind == 'uniform'`` and ``fo > 0``; their dense codes are set to the row's zero point).
    """
    q = random_codes(rng, a_kind, a_bits, (M, K), base)
    lo_b, hi_b = F.sym_range(b_bits)
    b = rng.integers(lo_b, hi_b + 1, (K, N))
    m0 = m1 = 0
    if a_kind == "uniform":
        za = rng.integers(0, 1 << a_bits, M) if per_patch else np.full(M, int(rng.integers(0, 1 << a_bits)))
    elif a_kind == "shiftlog2":
        za = np.full(M, int(rng.integers(0, 1 << 12)))
    else:
        za = np.zeros(M, np.int64)
    if a_kind == "three_region":
        m0 = int(rng.integers(0, 8))
        m1 = int(rng.integers(m0, 16))
    outl = np.zeros((0, 3), np.int64)
    n_rt = -(-M // cfg.rows)
    counts = [outliers_per_tile] * n_rt if np.isscalar(outliers_per_tile) else list(outliers_per_tile)
    if any(counts):
        assert a_kind == "uniform" and fo > 0
        rows = []
        for t, cnt in enumerate(counts):
            r0, m = t * cfg.rows, min(cfg.rows, M - t * cfg.rows)
            cells = rng.choice(m * K, size=min(cnt, m * K), replace=False)
            for cell in sorted(cells):
                r, k = r0 + cell // K, cell % K
                rows.append((r, k, int(rng.integers(-(1 << 15), 1 << 15))))
                q[r, k] = za[r]
        outl = np.array(sorted(rows), np.int64).reshape(-1, 3)
    # requantiser parameters: row gain in (1/2, 1] (a gain near 0 would make the outputs blind to A),
    # column gain scaled to the output range
    sr = int(rng.integers(0, 17))
    mr = rng.integers((1 << sr) // 2 + 1, (1 << sr) + 1, M) if per_patch else np.full(M, 1 << sr)
    mr = np.minimum(mr, (1 << 16) - 1)
    d = ref.decode(q, a_kind, a_bits, base=base, m0=m0, m1=m1)
    _r, _d, acc = ref.accumulate(d, b, za, fo, outl)
    amax = max(1, int(np.abs(acc).max()))
    lo, hi = F.out_range(out_fmt, out_bits)
    mc = rng.integers(1 << 14, 1 << 16, N)
    # choose Sc so that amax * Mc / 2^Sc is about 1.5x the output range (some saturation)
    target = max(1, hi)
    sc = np.clip(np.array([(amax * int(x)).bit_length() - target.bit_length() for x in mc]), 0, 47)
    bq = rng.integers(-(1 << 20), 1 << 20, N) * (1 << np.minimum(sc, 26)) // (1 << 20)
    z_out = int(rng.integers(0, hi + 1)) if out_fmt == "ucode" else 0
    return layer_case(cfg, q=q, b=b, a_kind=a_kind, a_bits=a_bits, b_bits=b_bits, za=za, mr=mr, sr=sr,
                      mc=mc, sc=sc, bq=bq, out_fmt=out_fmt, out_bits=out_bits, z_out=z_out, fo=fo,
                      outliers=outl, a_base=base, m0=m0, m1=m1,
                      name=name or f"{a_kind}{'_' + base if a_kind == 'shiftlog2' else ''}_w{b_bits}a{a_bits}_"
                                   f"{M}x{K}x{N}_o{sum(counts)}_{out_fmt}")


def case_from_spec(cfg: EngineConfig, spec, a_codes, outliers=None, b=None) -> dict:
    """A :func:`layer_case` from a ``sim.layer.LayerSpec`` (golden vectors)."""
    bb = spec.b if b is None else b
    return layer_case(cfg, q=a_codes, b=bb, a_kind=spec.a_kind, a_bits=spec.a_bits, b_bits=spec.b_bits,
                      za=spec.za, mr=spec.mr, sr=spec.sr, mc=spec.mc, sc=spec.sc, bq=spec.bq,
                      out_fmt=spec.out_fmt, out_bits=spec.out_bits, z_out=spec.z_out, fo=spec.fo,
                      outliers=outliers, a_base=spec.a_base, m0=spec.m0, m1=spec.m1, name=spec.name)
