"""Fast layer API (sim/simulator.py) == reference layer API (sim/layer.py), bit for bit.

``run_layer`` vs ``run_layer_reference`` and ``run_encoder`` vs ``run_encoder_reference`` over random
layers: every A format and base, widths 4/6/8, zero points, requantiser scales, outlier densities up
to and beyond the capacity, all-zero / constant rows, saturating outputs, every output format, and
too-narrow accumulators. Plus the worked layer example of docs/datapath.md section 10 by hand.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vitaccel.sim import formats as F
from vitaccel.sim import kernels_decode as kd
from vitaccel.sim import reference as ref
from vitaccel.sim import simulator as S
from vitaccel.sim.layer import EncoderSpec, LayerSpec, run_encoder_reference, run_layer_reference

SETTINGS = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def outcome(f):
    try:
        return f(), None
    except Exception as exc:
        return None, exc


def assert_same_layer(spec, q, o=None, b=None, **kw):
    want, e_ref = outcome(lambda: run_layer_reference(spec, q, o, b))
    got, e_sim = outcome(lambda: S.run_layer(spec, q, o, b, **kw))
    if e_ref is not None or e_sim is not None:
        assert type(e_ref) is type(e_sim), (repr(e_ref), repr(e_sim))
        return None
    np.testing.assert_array_equal(got.acc, want.acc)
    np.testing.assert_array_equal(got.out, want.out)
    assert got.acc.dtype == np.int64 and got.out.dtype == np.int64
    assert got.saturations == want.saturations
    return got


# --------------------------------------------------------------------------------------------------
# Worked examples
# --------------------------------------------------------------------------------------------------

def _section10_spec(**kw):
    b = np.array([[1, -7], [2, 3], [-1, 0]])
    args = dict(name="ex10", op="linear", a_kind="uniform", a_bits=4, b=b, b_bits=4, za=np.array([8, 9]),
                mr=np.array([1]), sr=0, mc=np.array([1]), sc=np.array([0]), bq=np.array([0]),
                out_fmt="fixed32", out_bits=32, acc_bits=24, fo=2, outlier_capacity=4)
    args.update(kw)
    return LayerSpec(**args)


def test_worked_layer_example_section10():
    q = np.array([[3, 8, 15], [0, 9, 9]])
    o = np.array([[1, 0, 37]])
    want_acc = [[-48, 140], [1, -7]]                    # hand-computed in docs/datapath.md section 10
    spec = _section10_spec()
    for run in (run_layer_reference, S.run_layer):
        res = run(spec, q, o)
        np.testing.assert_array_equal(res.acc, want_acc)
        np.testing.assert_array_equal(res.out, want_acc)   # identity requantiser into fixed32
        assert res.saturations == 0
    # with a requantiser: Mr = 1/2 (2^-1), Mc = 3/4 -> v = round_half_up(acc * 3 / 8), scode 4-bit
    spec = _section10_spec(mr=np.array([1]), sr=1, mc=np.array([3]), sc=np.array([2]), out_fmt="scode", out_bits=4)
    # t = round_shift(acc, 1) = [[-24, 70], [1, -3]] (0.5 -> 1, -3.5 -> -3)
    # v = round_shift(3 t, 2) = [[-18, 52.5 -> 53], [0.75 -> 1, -2.25 -> -2]] -> clamp to [-7, 7]
    for run in (run_layer_reference, S.run_layer):
        res = run(spec, q, o)
        np.testing.assert_array_equal(res.out, [[-7, 7], [1, -2]])
        assert res.saturations == 2


def test_section10_capacity_and_static_bound():
    q = np.array([[3, 8, 15], [0, 9, 9]])
    o = np.array([[0, 1, 5], [1, 0, 37]])
    # capacity 1 per tile of 2 rows: 2 outliers -> OutlierCapacityError in both
    spec = _section10_spec(outlier_capacity=1, tile_rows=2)
    for run in (run_layer_reference, S.run_layer):
        with pytest.raises(ref.OutlierCapacityError):
            run(spec, q, o)
    # tile of one row: capacity 1 is exactly enough
    assert_same_layer(_section10_spec(outlier_capacity=1, tile_rows=1), q, o)
    # static bound (section 6): 2^2 * 3 * (15 + 9) * 7 + 3 * 32767 * 7 = 690123 -> 20 + 1 = 21 bits
    assert _section10_spec(outlier_capacity=None).acc_bits_required(3) == 21
    for run in (run_layer_reference, S.run_layer):
        with pytest.raises(ref.AccumulatorOverflowError):
            run(_section10_spec(outlier_capacity=None, acc_bits=20), q, o)
        run(_section10_spec(outlier_capacity=None, acc_bits=21), q, o)


def test_static_accumulator_table_w4a4():
    # section 6 table: uniform W4A4, K = 192 needs 17 bits
    b = np.ones((192, 2), np.int64)
    q = np.zeros((1, 192), np.int64)
    spec = LayerSpec(name="t", op="linear", a_kind="uniform", a_bits=4, b=b, b_bits=4, za=np.array([15]),
                     mr=np.array([1]), sr=0, mc=np.array([1]), sc=np.array([0]), bq=np.array([0]),
                     out_fmt="fixed32", out_bits=32, acc_bits=16)
    for run in (run_layer_reference, S.run_layer):
        with pytest.raises(ref.AccumulatorOverflowError):
            run(spec, q)
    spec.acc_bits = 17
    assert_same_layer(spec, q)


# --------------------------------------------------------------------------------------------------
# Random layers
# --------------------------------------------------------------------------------------------------

def _codes(rng, spec, m, k, row_modes):
    lut, valid = kd.lut_for(spec.a_kind, spec.a_bits, spec.a_base, spec.m0, spec.m1)
    ok = np.flatnonzero(valid)
    q = ok[rng.integers(0, len(ok), (m, k))]
    dz = np.flatnonzero(lut[ok] == 0)
    for r in range(m):
        mode = row_modes[r % len(row_modes)]
        if mode == "zero" and len(dz):
            q[r] = ok[dz[0]]                                       # D = 0 everywhere
        elif mode == "const":
            q[r] = q[r, 0]
        elif mode == "max":
            q[r] = ok[np.argmax(np.abs(lut[ok]))]
    return q


@st.composite
def layer_cases(draw):
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    a_kind = draw(st.sampled_from(F.A_FORMATS))
    a_bits, b_bits = draw(st.sampled_from(F.BITS)), draw(st.sampled_from(F.BITS))
    base = draw(st.sampled_from(F.LOG_BASES))
    m0, m1 = sorted(draw(st.tuples(st.integers(0, 15), st.integers(0, 15))))
    m = draw(st.sampled_from([1, 2, 3, 7, 16, 33]))
    k = draw(st.sampled_from([1, 5, 17, 64, 129, 300]))
    n = draw(st.sampled_from([1, 3, 8, 31, 65]))
    per_patch = draw(st.booleans())
    fo = 2 if (a_kind == "uniform" and draw(st.booleans())) else 0
    density = draw(st.sampled_from(["none", "some", "at_cap", "over_cap"])) if fo else "none"
    out_fmt = draw(st.sampled_from(F.OUT_FORMATS))
    out_bits = draw(st.sampled_from(F.BITS)) if out_fmt in ("ucode", "scode") else int(out_fmt[5:])
    row_modes = draw(st.lists(st.sampled_from(["rand", "zero", "const", "max"]), min_size=1, max_size=4))
    acc_slack = draw(st.sampled_from([0, 1, 5, 0, -1]))

    bmax = (1 << (b_bits - 1)) - 1
    b = rng.integers(-bmax, bmax + 1, (k, n)).astype(draw(st.sampled_from([np.int64, np.int8])))
    b[:, 0] = bmax if rng.random() < 0.5 else b[:, 0]              # a saturating column
    nr = m if per_patch else 1
    if a_kind == "uniform":
        za = rng.integers(0, 1 << a_bits, nr)
    elif a_kind == "shiftlog2":
        za = rng.integers(0, 1 << 12, 1)
    else:
        za = np.zeros(1, np.int64)
    sr = int(rng.integers(0, 17))
    mr = rng.integers(0, min(1 << sr, (1 << 16) - 1) + 1, nr)
    if not per_patch:
        sr = min(sr, 15)
        mr = np.array([1 << sr])
    cap = int(rng.integers(1, 6))
    tile = int(rng.integers(1, 9))
    spec = LayerSpec(name="rand", op="linear", a_kind=a_kind, a_bits=a_bits, b=b, b_bits=b_bits, za=za,
                     mr=mr, sr=sr, mc=np.zeros(n, np.int64), sc=np.zeros(n, np.int64), bq=np.zeros(n, np.int64),
                     out_fmt=out_fmt, out_bits=out_bits, acc_bits=48, a_base=base, m0=m0, m1=m1, fo=fo,
                     outlier_capacity=cap if fo else None, tile_rows=tile)
    need = spec.acc_bits_required(k)
    spec.acc_bits = int(min(F.ACC_BITS_MAX, need + acc_slack))
    # requantiser scaled so that outputs fall around, at and beyond the clamp
    lo, hi = F.out_range(out_fmt, out_bits)
    typical = max(1.0, np.sqrt(k) * spec.dmax() * bmax * (1 << fo))
    mc = rng.integers(1 << 14, 1 << 16, n)
    target = hi * rng.uniform(0.3, 3.0, n)
    spec.mc = mc
    spec.sc = np.clip(np.round(np.log2(mc * typical / target)), 0, F.SC_MAX).astype(np.int64)
    bias = rng.uniform(-hi, hi, n) * 2.0**spec.sc if rng.random() < 0.6 else np.zeros(n)
    spec.bq = np.clip(bias, -(2.0**46), 2.0**46).astype(np.int64)
    spec.z_out = int(rng.integers(0, hi + 1)) if out_fmt == "ucode" else 0

    q = _codes(rng, spec, m, k, row_modes)
    o = np.zeros((0, 3), np.int64)
    if density != "none":
        n_tiles = -(-m // tile)
        entries = []
        for t in range(n_tiles):
            rows = np.arange(t * tile, min(m, (t + 1) * tile))
            cells = [(r, c) for r in rows for c in range(k)]
            want = {"some": int(rng.integers(0, cap + 1)), "at_cap": cap, "over_cap": cap + 1}[density]
            want = min(want, len(cells))
            for i in np.sort(rng.choice(len(cells), size=want, replace=False)):
                r, c = cells[i]
                entries.append([r, c, int(rng.integers(-(1 << 15), 1 << 15))])
                q[r, c] = za[r % len(za)] if len(za) > 1 else za[0]   # dense code = zero point
        o = np.array(sorted(entries), np.int64).reshape(-1, 3)
    return spec, q, o


@SETTINGS
@given(case=layer_cases())
def test_run_layer_matches_reference(case):
    spec, q, o = case
    got = assert_same_layer(spec, q, o)
    if got is not None:                          # and every exact path that the bound allows agrees
        paths = S.layer_paths(spec, q.shape[1])
        assert paths[0] == S.layer_gemm_path(spec, q.shape[1]) and paths[-1] == "int64"
        for p in paths[1:]:
            again = S.run_layer(spec, q, o, path=p)
            np.testing.assert_array_equal(again.acc, got.acc)
            np.testing.assert_array_equal(again.out, got.out)


def test_blas_path_only_when_the_bound_allows():
    rng = np.random.default_rng(1)
    k = 384
    b = rng.integers(-7, 8, (k, 5))
    q = rng.integers(0, 16, (4, k))
    spec = LayerSpec(name="p", op="linear", a_kind="uniform", a_bits=4, b=b, b_bits=4, za=np.array([7]),
                     mr=np.array([1]), sr=0, mc=np.array([1]), sc=np.array([0]), bq=np.array([0]),
                     out_fmt="fixed32", out_bits=32, acc_bits=30)
    assert "float32" in S.layer_paths(spec, k)                         # 384 * 15 * 7 < 2^24
    res = [S.run_layer(spec, q, path=p) for p in ("float32", "float64", "int64")]
    for r in res[1:]:
        np.testing.assert_array_equal(r.acc, res[0].acc)
    # shiftlog2 base sqrt2, 8-bit: Dmax = 256 * 2^15 -> 384 * 2^23 * 7 >= 2^24: float32 refused
    spec8 = LayerSpec(name="p8", op="linear", a_kind="shiftlog2", a_base="sqrt2", a_bits=8, b=b, b_bits=4,
                      za=np.array([100]), mr=np.array([1]), sr=0, mc=np.array([1]), sc=np.array([0]),
                      bq=np.array([0]), out_fmt="fixed32", out_bits=32, acc_bits=48)
    q8 = rng.integers(0, 32, (4, k))
    assert "float32" not in S.layer_paths(spec8, k) and "float64" in S.layer_paths(spec8, k)
    with pytest.raises(ValueError):
        S.run_layer(spec8, q8, path="float32")
    a = S.run_layer(spec8, q8)
    np.testing.assert_array_equal(a.acc, S.run_layer(spec8, q8, path="int64").acc)
    np.testing.assert_array_equal(a.acc, run_layer_reference(spec8, q8).acc)


def test_run_layer_errors_match_reference():
    spec = _section10_spec()
    q = np.array([[3, 8, 15], [0, 9, 9]])
    o = np.array([[1, 0, 37]])
    bad_b = np.array([[1, -8], [2, 3], [-1, 0]])                        # -8 is invalid for sym 4-bit
    cases = [
        (spec, q[0], o, None),                                           # A not 2-D
        (spec, q, o, bad_b),                                             # invalid B code
        (spec, np.array([[3, 8, 16], [0, 9, 9]]), o, None),              # invalid A code
        (spec, q[:, :2], o, None),                                       # K mismatch
        (_section10_spec(fo=0), q, o, None),                             # outliers without FO
        (spec, q, np.array([[1, 5, 37]]), None),                         # outlier column out of range
        (spec, q, np.array([[1, 0, 40000]]), None),                      # outlier beyond int16
        (spec, q, np.array([[1, 1, 3], [1, 0, 37]]), None),              # unsorted outliers
        (_section10_spec(mr=np.array([3]), sr=1), q, o, None),           # row gain > 1
        (_section10_spec(z_out=1), q, o, None),                          # fixed32 with a zero point
        (_section10_spec(mc=np.array([1, 2, 3])), q, o, None),           # Mc length
        (_section10_spec(a_bits=5), q, o, None),                         # bad width
        (_section10_spec(out_fmt="float"), q, o, None),                  # bad output format
        (_section10_spec(acc_bits=49), q, o, None),                      # accumulator above 48
    ]
    for sp, qq, oo, bb in cases:
        want, e_ref = outcome(lambda: run_layer_reference(sp, qq, oo, bb))
        assert e_ref is not None, (sp, qq, oo)
        assert_same_layer(sp, qq, oo, bb)
    # a bad B and a bad A code together: the reference reports B first
    assert_same_layer(spec, np.array([[3, 8, 16], [0, 9, 9]]), o, bad_b)


def test_qk_and_av_layers_with_runtime_b():
    rng = np.random.default_rng(5)
    m, d = 9, 16
    q = rng.integers(0, 16, (m, d))
    kt = rng.integers(-7, 8, (d, m))
    qk = LayerSpec(name="qk", op="qk", a_kind="uniform", a_bits=4, b=np.zeros((0, 0)), b_bits=4, za=np.array([8]),
                   mr=np.array([1]), sr=0, mc=np.array([181]), sc=np.array([8]), bq=np.array([0]),
                   out_fmt="fixed16", out_bits=16, acc_bits=24)
    assert_same_layer(qk, q, None, kt)
    attn = rng.integers(0, 16, (m, m))                                   # log2 4-bit codes (15 = ZERO)
    v = rng.integers(-7, 8, (m, d))
    av = LayerSpec(name="av", op="av", a_kind="log2", a_bits=4, b=np.zeros((0, 0)), b_bits=4, za=np.array([0]),
                   mr=np.array([1]), sr=0, mc=np.array([1000]), sc=np.array([20]), bq=np.array([0]),
                   out_fmt="ucode", out_bits=4, z_out=8, acc_bits=30)
    assert_same_layer(av, attn, None, v)


# --------------------------------------------------------------------------------------------------
# Encoders through the layer API
# --------------------------------------------------------------------------------------------------

@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), kind=st.sampled_from(["uniform", "per_patch", "log2", "shiftlog2", "three_region"]),
       bits=st.sampled_from(F.BITS), base=st.sampled_from(F.LOG_BASES), strict=st.booleans(),
       shape=st.tuples(st.integers(1, 10), st.integers(1, 40)))
def test_run_encoder_matches_reference(seed, kind, bits, base, strict, shape):
    rng = np.random.default_rng(seed)
    frac = 12
    x, _ = ref.to_fixed(rng.normal(0, 2, shape) * np.where(rng.random(shape) < 0.05, 20, 1), frac)
    m = shape[0]
    if kind in ("uniform", "per_patch"):
        s = rng.uniform(0.01, 0.5, m)
        se = 30
        r = np.round(2.0**se / (s * 2**frac)).astype(np.int64)
        enc = EncoderSpec(kind="uniform", bits=bits, in_frac=frac, r=r, se=se, z=rng.integers(0, 1 << bits, m),
                          alpha_fx=int(rng.uniform(1, 8) * 2**frac) if kind == "per_patch" else None)
    elif kind == "log2":
        x = rng.integers(0, (1 << 15) + 1, shape) * (rng.random(shape) < 0.8)
        enc = EncoderSpec(kind="log2", bits=bits, in_frac=15)
    elif kind == "shiftlog2":
        se = 20
        enc = EncoderSpec(kind="shiftlog2", bits=bits, in_frac=frac, r=np.array([int(2.0**(16 + se - frac) / 0.3)]),
                          se=se, sh=int(0.2 * 2**frac), base=base)
    else:
        m0 = int(rng.integers(0, 4))
        enc = EncoderSpec(kind="three_region", bits=bits, in_frac=frac, r=np.array([int(2.0**(16 + 20 - frac) / 0.02)]),
                          se=20, m0=m0, m1=m0 + int(rng.integers(0, 4)))
    want, e_ref = outcome(lambda: run_encoder_reference(enc, x, strict))
    got, e_sim = outcome(lambda: S.run_encoder(enc, x, strict))
    assert type(e_ref) is type(e_sim), (repr(e_ref), repr(e_sim))
    if want is not None:
        np.testing.assert_array_equal(got.codes, want.codes)
        np.testing.assert_array_equal(got.outliers, want.outliers.reshape(-1, 3))
        assert got.outliers.dtype == np.int64 and got.codes.dtype == np.int64
        assert (got.saturations, got.outlier_overflows) == (want.saturations, want.outlier_overflows)


def test_encoder_then_layer_pipeline():
    # fixed point -> per-patch codes + outliers -> layer, both implementations
    rng = np.random.default_rng(7)
    m, k, n = 20, 48, 12
    x, _ = ref.to_fixed(rng.normal(0, 1, (m, k)) * np.where(rng.random((m, k)) < 0.02, 15, 1), 10)
    s = rng.uniform(0.05, 0.2, m)
    enc = EncoderSpec(kind="uniform", bits=4, in_frac=10, r=np.round(2.0**28 / (s * 2**10)).astype(np.int64), se=28,
                      z=np.full(m, 8), alpha_fx=4 << 10)
    e_ref, e_sim = run_encoder_reference(enc, x), S.run_encoder(enc, x)
    np.testing.assert_array_equal(e_sim.codes, e_ref.codes)
    np.testing.assert_array_equal(e_sim.outliers, e_ref.outliers)
    assert len(e_ref.outliers) > 0
    b = rng.integers(-7, 8, (k, n))
    spec = LayerSpec(name="fc1", op="linear", a_kind="uniform", a_bits=4, b=b, b_bits=4, za=np.full(m, 8),
                     mr=np.round(s / s.max() * 2**16).clip(0, 2**16 - 1).astype(np.int64), sr=16,
                     mc=np.full(n, 40000), sc=np.full(n, 24), bq=np.zeros(n, np.int64), out_fmt="ucode",
                     out_bits=4, z_out=8, acc_bits=32, fo=2, outlier_capacity=64)
    assert_same_layer(spec, e_ref.codes, e_ref.outliers)


def test_static_bound_covers_int16_min_outliers():
    """The section-6 bound counts each outlier as ``2^15 * Bmax`` (int16 allows ``-2^15``).

    Worst case: three_region 4-bit (m0 = m1 = 0, Dmax = 7) with an outlier path, sym 8-bit, K = 37,
    capacity 4: bound = 4*37*7*127 + 4*32768*127 = 16777340 >= 2^24, so 26 bits are required, and
    D = -7, b = -127 with four outliers of -32768 give acc = 131572 + 16646144 = 16777716 > 2^24 - 1,
    which a 25-bit accumulator could not hold: the static check rejects 25 bits in both implementations.
    """
    k = 37
    b = np.full((k, 1), -127)
    q = np.full((1, k), 0b1111)                                 # R0, magnitude 7 -> D = -7
    o = np.array([[0, c, -32768] for c in range(4)])
    spec = LayerSpec(name="gap", op="linear", a_kind="three_region", a_bits=4, b=b, b_bits=8, za=np.array([0]),
                     mr=np.array([1]), sr=0, mc=np.array([1]), sc=np.array([0]), bq=np.array([0]),
                     out_fmt="fixed32", out_bits=32, acc_bits=25, fo=2, outlier_capacity=4)
    assert spec.acc_bits_required(k) == 26
    for run in (run_layer_reference, S.run_layer):
        with pytest.raises(ref.AccumulatorOverflowError):
            run(spec, q, o)
    spec.acc_bits = 26
    res = assert_same_layer(spec, q, o)
    assert int(res.acc[0, 0]) == 16777716
