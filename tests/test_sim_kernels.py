"""numba kernels (sim/kernels_*.py) == plain numpy reference (sim/reference.py), bit for bit.

Property tests draw shapes, widths, formats and parameters with hypothesis (numpy data from a drawn
seed); hand-computed cases are the worked examples of docs/datapath.md, with the expected numbers
written here from the spec text and checked against BOTH implementations.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vitaccel.sim import formats as F
from vitaccel.sim import kernels_decode as kd
from vitaccel.sim import kernels_encode as ke
from vitaccel.sim import kernels_gemm as kg
from vitaccel.sim import kernels_requant as kr
from vitaccel.sim import reference as ref

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
seeds = st.integers(0, 2**32 - 1)
bits_st = st.sampled_from(F.BITS)


def same(f_ref, f_sim):
    """Both raise the same exception class, or both return equal results (arrays compared exactly)."""
    try:
        want = f_ref()
    except Exception as exc:
        with pytest.raises(Exception) as info:
            f_sim()
        assert type(info.value) is type(exc), (type(info.value), type(exc), str(exc))
        return None
    got = f_sim()
    _eq(want, got)
    return got


def _eq(a, b):
    if isinstance(a, tuple):
        assert isinstance(b, tuple) and len(a) == len(b)
        for x, y in zip(a, b):
            _eq(x, y)
    elif isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray) and a.shape == b.shape and b.dtype == np.int64
        np.testing.assert_array_equal(a, b)
    else:
        assert a == b


# --------------------------------------------------------------------------------------------------
# Hand-computed worked examples of the spec, against reference AND numba
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("x,s,want", [(5, 1, 3), (-5, 1, -2), (-6, 2, -1), (7, 2, 2), (9, 0, 9)])
def test_round_shift_spec_examples(x, s, want):                       # section 1
    assert int(ref.round_shift(x, s)) == want
    assert kr.round_shift(np.int64(x), np.int64(s)) == want


def test_decode_three_region_spec_examples():                         # section 4.4
    q = np.array([[0b0011, 0b1010, 0b0111, 0b1101]])
    want = [[12, 64, -3, -5]]
    np.testing.assert_array_equal(ref.decode_three_region(q, 4, 2, 5), want)
    np.testing.assert_array_equal(kd.decode_three_region(q, 4, 2, 5), want)


def test_decode_log2_and_shiftlog2_spec_tables():                     # sections 4.2, 4.3
    # log2 k=4: QMAX 14, ZERO 15; D = 2^(QMAX - q)
    q = np.array([[0, 14, 15]])
    for f in (ref.decode_log2, kd.decode_log2):
        np.testing.assert_array_equal(f(q, 4), [[2**14, 1, 0]])
    # max D column of the table: base 2 -> 2^15 (k=4,6,8); base sqrt2 -> 256*2^7 (k=4), 256*2^15 (k=6,8)
    for f in (ref.decode_shiftlog2, kd.decode_shiftlog2):
        for k in F.BITS:
            assert int(f(np.array([[0]]), k, "2")[0, 0]) == 2**15
        assert int(f(np.array([[0]]), 4, "sqrt2")[0, 0]) == 256 * 2**7
        assert int(f(np.array([[1]]), 4, "sqrt2")[0, 0]) == 181 * 2**7
        assert int(f(np.array([[0]]), 8, "sqrt2")[0, 0]) == 256 * 2**15
        assert int(f(np.array([[31]]), 8, "sqrt2")[0, 0]) == 181    # H - e = 15 - 15


def test_requantize_spec_example():                                   # section 7
    acc = np.array([[1000]])
    for f in (ref.requantize, kr.requantize):
        out, sat = f(acc, [3], 2, [5], [4], [8], 20, "ucode", 8)
        assert int(out[0, 0]) == 255 and sat == 0
        out, sat = f(acc, [3], 2, [5], [4], [8], 21, "ucode", 8)
        assert int(out[0, 0]) == 255 and sat == 1


def test_encode_uniform_spec_example():                               # section 8.1
    x = np.array([[20, -13, 40]])
    for f in (ref.encode_per_patch, ke.encode_per_patch):
        q, o, sat, nof = f(x, [1], 3, [8], 4, 32, 2, True)
        np.testing.assert_array_equal(q, [[11, 6, 8]])
        np.testing.assert_array_equal(o, [[0, 2, 20]])
        assert sat == 0 and nof == 0


def test_encode_per_patch_dynamic_spec_example():                     # section 8.1.1
    # k = 4, F = 4, SE = 20, s_j = 2^(-j/8): T[j] = floor(240 * 2^(-j/8)), R[j] = round(2^16 * 2^(j/8))
    t = [int(np.floor(240 * 2 ** (-j / 8))) for j in range(16)]
    r = [int(np.floor(2**16 * 2 ** (j / 8) + 0.5)) for j in range(16)]
    assert t[15] == 65 and r[15] == 240387
    x = np.array([[20, -13, 40, 3], [40, -50, 33, 0]])                 # row 1: every non-zero is an outlier
    for f in (ref.encode_per_patch_dynamic, ke.encode_per_patch_dynamic):
        q, o, sat, nof, j, z = f(x, r, t, 20, 4, 32)
        np.testing.assert_array_equal(j, [15, 15])
        np.testing.assert_array_equal(z, [3, 0])
        np.testing.assert_array_equal(q, [[8, 0, 3, 4], [0, 0, 0, 0]])
        np.testing.assert_array_equal(o, [[0, 2, 37], [1, 0, 37], [1, 1, -46], [1, 2, 30]])
        assert sat == 0 and nof == 0


def test_encode_log2_spec_example():                                  # section 8.2
    a = np.array([8192, 3, 1, 0])
    for f in (ref.encode_log2, ke.encode_log2):
        np.testing.assert_array_equal(f(a, 15, 4), [2, 13, 15, 15])
    for f in (ref.round_log2, ke.round_log2):
        np.testing.assert_array_equal(f([3, 8192]), [2, 13])


def test_encode_three_region_spec_example():                          # section 8.3
    x = np.array([int(10.6 * 2**16), 40 * 2**16])                     # R = 1, SE = 0 -> w = x
    for f in (ref.encode_three_region, ke.encode_three_region):
        np.testing.assert_array_equal(f(x, 1, 0, 4, 2, 5), [0b0011, 0b1001])


# --------------------------------------------------------------------------------------------------
# Decoders
# --------------------------------------------------------------------------------------------------

@SETTINGS
@given(seed=seeds, bits=bits_st, kind=st.sampled_from(F.A_FORMATS), base=st.sampled_from(F.LOG_BASES),
       m=st.tuples(st.integers(0, 15), st.integers(0, 15)), shape=st.tuples(st.integers(1, 9), st.integers(1, 70)),
       invalid=st.booleans(), dtype=st.sampled_from([np.int64, np.uint8]))
def test_decode_matches_reference(seed, bits, kind, base, m, shape, invalid, dtype):
    rng = np.random.default_rng(seed)
    m0, m1 = sorted(m)
    hi = (1 << bits) - 1
    q = rng.integers(0, hi + 1, shape)
    if not invalid:                        # only valid codes of the format
        lut, valid = kd.lut_for(kind, bits, base, m0, m1)
        ok = np.flatnonzero(valid)
        q = ok[rng.integers(0, len(ok), shape)]
    elif rng.random() < 0.5 and dtype != np.uint8:
        q[0, 0] = rng.choice([-1, hi + 1])  # outside the code range
    q = q.astype(dtype)
    same(lambda: ref.decode(q, kind, bits, base=base, m0=m0, m1=m1),
         lambda: kd.decode(q, kind, bits, base=base, m0=m0, m1=m1))


def test_decode_bad_parameters_raise_like_reference():
    q = np.zeros((2, 3), np.int64)
    for args in (dict(kind="nope", bits=4), dict(kind="uniform", bits=5),
                 dict(kind="three_region", bits=4, m0=3, m1=2), dict(kind="shiftlog2", bits=4, base="e")):
        same(lambda: ref.decode(q, **args), lambda: kd.decode(q, **args))


# --------------------------------------------------------------------------------------------------
# Encoders
# --------------------------------------------------------------------------------------------------

def _fixed(rng, shape, scale):
    x = rng.normal(0, scale, shape)
    x[rng.random(shape) < 0.05] *= 30                                 # heavy tails
    return np.round(x).astype(np.int64)


@SETTINGS
@given(seed=seeds, bits=bits_st, shape=st.tuples(st.integers(1, 12), st.integers(1, 50)),
       per_patch=st.booleans(), mode=st.sampled_from(["none", "some", "many", "overflow"]),
       strict=st.booleans(), se=st.integers(2, 30))
def test_encode_uniform_and_per_patch_match_reference(seed, bits, shape, per_patch, mode, strict, se):
    rng = np.random.default_rng(seed)
    m, _k = shape
    x = _fixed(rng, shape, 2.0**rng.integers(4, 16))
    x[0] = 0                                                          # an all-zero row
    if m > 1:
        x[1] = x[1, 0]                                                # a constant row
    nr = m if per_patch else 1
    r = rng.integers(1, 1 << min(24, se + 2), nr)
    z = rng.integers(0, 1 << bits, nr)
    same(lambda: ref.encode_uniform(x, r, se, z, bits), lambda: ke.encode_uniform(x, r, se, z, bits))
    absx = np.abs(x)
    alpha = {"none": int(absx.max()) + 1, "some": int(np.quantile(absx, 0.9)),
             "many": int(np.quantile(absx, 0.3)), "overflow": int(np.quantile(absx, 0.5))}[mode]
    if mode == "overflow":
        r = np.full(nr, (1 << 24) - 1)                                # outlier values beyond int16
    same(lambda: ref.encode_per_patch(x, r, se, z, bits, alpha, 2, strict),
         lambda: ke.encode_per_patch(x, r, se, z, bits, alpha, 2, strict))


def test_encode_errors_match_reference():
    x = np.array([[1, 2], [3, 1 << 31]])
    same(lambda: ref.encode_uniform(x, 1, 3, 0, 4), lambda: ke.encode_uniform(x, 1, 3, 0, 4))   # not int32
    # the same value as an outlier must be rejected too (wider than int32 input)
    same(lambda: ref.encode_per_patch(x, 1, 3, 0, 4, 10, 2, False),
         lambda: ke.encode_per_patch(x, 1, 3, 0, 4, 10, 2, False))
    same(lambda: ref.encode_per_patch(x, 1, 1, 0, 4, 10, 2), lambda: ke.encode_per_patch(x, 1, 1, 0, 4, 10, 2))  # SE<FO
    same(lambda: ref.encode_uniform(x, 0, 3, 0, 4), lambda: ke.encode_uniform(x, 0, 3, 0, 4))    # R = 0
    same(lambda: ref.encode_uniform(x, [1, 2, 3], 3, 0, 4), lambda: ke.encode_uniform(x, [1, 2, 3], 3, 0, 4))
    same(lambda: ref.encode_log2([[-1]], 15, 4), lambda: ke.encode_log2([[-1]], 15, 4))
    big = np.array([1 << 39])                                         # x * R = 2^62
    same(lambda: ref.encode_three_region(big, (1 << 23), 0, 4, 0, 1),
         lambda: ke.encode_three_region(big, (1 << 23), 0, 4, 0, 1))
    same(lambda: ref.encode_shiftlog2(big, 0, (1 << 23), 0, 4, "2"),
         lambda: ke.encode_shiftlog2(big, 0, (1 << 23), 0, 4, "2"))


def _scale_ladder(rng, n_lad, bits, frac, se, kind, span=1.0):
    """A scale ladder ``(R, T)`` of ``n_lad`` entries: ``spec`` follows section 8.1.1 (``s_j = s_top *
    2^(-j/8)``, placed so that a row of span ``span`` lands anywhere from just above ``T[0]`` to the
    finest entry), ``random`` is any valid ladder (sorted integers, repeats allowed), ``bad`` breaks a rule."""
    if kind == "spec":
        u = rng.uniform(-0.5, (n_lad - 1) / F.LADDER_STEPS + 0.5)
        s_top = max(span, 1.0) / (((1 << bits) - 1) * 2**frac) * 2.0**u
        s = s_top * 2.0 ** (-np.arange(n_lad) / F.LADDER_STEPS)
        t = np.floor(s * ((1 << bits) - 1) * 2**frac).astype(np.int64)
        r = np.clip(np.floor(2.0**se / (s * 2**frac) + 0.5), 1, (1 << 24) - 1).astype(np.int64)
        return r, t
    r = np.sort(rng.integers(1, 1 << int(rng.integers(1, 25)), n_lad))
    t = np.sort(rng.integers(0, 1 << int(rng.integers(1, 35)), n_lad))[::-1].copy()
    if kind == "bad":
        which = int(rng.integers(0, 4))
        if which == 0 and n_lad > 1:
            r, t = r[::-1].copy(), t[::-1].copy()                     # R decreasing, T increasing
        elif which == 1:
            r[-1] = 1 << 24                                           # R out of range
        elif which == 2:
            t[0] = 1 << 34                                            # T out of range
        else:
            r = np.concatenate([r, r[-1:]])                           # sizes differ
    return r, t


@SETTINGS
@given(seed=seeds, bits=bits_st, shape=st.tuples(st.integers(1, 12), st.integers(1, 50)),
       n_lad=st.integers(1, F.LADDER_MAX), ladder=st.sampled_from(["spec", "spec", "random", "bad"]),
       mode=st.sampled_from(["no_outlier_path", "none", "some", "many", "all", "overflow"]),
       strict=st.booleans(), se=st.integers(2, 40))
def test_encode_per_patch_dynamic_matches_reference(seed, bits, shape, n_lad, ladder, mode, strict, se):
    rng = np.random.default_rng(seed)
    m, _k = shape
    frac = int(rng.integers(0, 13))
    x = _fixed(rng, shape, 2.0**rng.integers(2, 16))
    x[0] = 0                                                          # an all-zero row
    if m > 1:
        x[1] = x[1, 0]                                                # a constant row
    if m > 2:
        x[2] = rng.choice([-1, 1], shape[1]) * (1 << 30)             # big row (outliers when alpha is set)
    absx = np.abs(x)
    alpha = {"no_outlier_path": None, "none": int(absx.max()), "some": int(np.quantile(absx, 0.9)),
             "many": int(np.quantile(absx, 0.3)), "all": -1, "overflow": int(np.quantile(absx, 0.5))}[mode]
    inl = np.where(absx <= (absx.max() if alpha is None else alpha), x, 0)
    typical_span = float(np.median(np.maximum(inl.max(axis=1), 0) - np.minimum(inl.min(axis=1), 0)))
    r, t = _scale_ladder(rng, n_lad, bits, frac, se, ladder, typical_span)
    if mode == "overflow":
        r = np.full(n_lad, (1 << 24) - 1)                             # outlier values beyond int16
    fo = 2 if se > 4 or rng.random() < 0.5 else se + 1                # sometimes SE < FO
    got = same(lambda: ref.encode_per_patch_dynamic(x, r, t, se, bits, alpha, fo, strict),
               lambda: ke.encode_per_patch_dynamic(x, r, t, se, bits, alpha, fo, strict))
    if got is not None:
        # the kernel's row range and ladder index are the reference's row_range / select_ladder
        lo, span, j, z = ke.row_range_select_ladder(x, r, t, se, bits, alpha)
        want_lo, want_span = ref.row_range(x, alpha)
        np.testing.assert_array_equal(lo, want_lo)
        np.testing.assert_array_equal(span, want_span)
        np.testing.assert_array_equal(j, ref.select_ladder(want_span, t))
        np.testing.assert_array_equal(z, got[5])
        if ladder == "spec" and t[0] > 0:
            # the chosen scale is the finest covering one: T[j] >= span unless span > T[0] (then j = 0)
            assert np.all((t[j] >= span) | ((j == 0) & (span > t[0])))
            assert np.all((j == n_lad - 1) | (t[np.minimum(j + 1, n_lad - 1)] < span))


def test_encode_per_patch_dynamic_errors_match_reference():
    r, t = [1 << 16, 1 << 17], [200, 100]
    x = np.array([[3, -5], [40, 2]])
    cases = [
        (x, [], [], 20, 4, 32, 2, True),                               # J = 0
        (x, [1] * 65, [5] * 65, 20, 4, 32, 2, True),                   # J = 65
        (x, r[::-1], t, 20, 4, 32, 2, True),                           # R decreasing
        (x, r, t[::-1], 20, 4, 32, 2, True),                           # T increasing
        (x, [0, 1], t, 20, 4, 32, 2, True),                            # R = 0
        (x, r, [1 << 34, 0], 20, 4, 32, 2, True),                      # T = 2^34
        (x, r, t, 57, 4, 32, 2, True),                                 # SE > 56
        (x, r, t, 20, 5, 32, 2, True),                                 # 5-bit codes
        (np.array([[1 << 31, 0]]), r, t, 20, 4, None, 2, True),        # wider than int32
        (np.array([[-(1 << 31) - 1, 0]]), r, t, 20, 4, 32, 2, True),
        (x, r, t, 1, 4, 32, 2, True),                                  # SE < FO
        (x, [(1 << 24) - 1] * 2, t, 8, 4, 32, 2, True),                # outlier beyond int16, strict
        (x, [(1 << 24) - 1] * 2, t, 8, 4, 32, 2, False),               # ... counted
    ]
    for args in cases:
        same(lambda: ref.encode_per_patch_dynamic(*args), lambda: ke.encode_per_patch_dynamic(*args))
    with pytest.raises(ref.OutlierOverflowError):
        ke.encode_per_patch_dynamic(*cases[-2])


@SETTINGS
@given(seed=seeds, bits=bits_st, shape=st.tuples(st.integers(1, 10), st.integers(1, 40)),
       outlier_path=st.booleans(), strict=st.booleans())
def test_run_encoder_dynamic_matches_reference(seed, bits, shape, outlier_path, strict):
    from vitaccel.sim.layer import EncoderSpec, run_encoder_reference
    from vitaccel.sim.simulator import run_encoder

    rng = np.random.default_rng(seed)
    frac, se = 12, 30
    x, _ = ref.to_fixed(rng.normal(0, 2, shape) * np.where(rng.random(shape) < 0.05, 20, 1), frac)
    r, t = _scale_ladder(rng, int(rng.integers(1, F.LADDER_MAX + 1)), bits, frac, se, "spec",
                         float(np.median(np.ptp(x, axis=1))))
    enc = EncoderSpec(kind="uniform", bits=bits, in_frac=frac, se=se, ladder_r=r, ladder_t=t,
                      alpha_fx=int(rng.uniform(1, 8) * 2**frac) if outlier_path else None)
    assert enc.dynamic
    try:
        want = run_encoder_reference(enc, x, strict)
    except ref.DatapathError as exc:
        with pytest.raises(type(exc)):
            run_encoder(enc, x, strict)
        return
    got = run_encoder(enc, x, strict)
    for name in ("codes", "outliers", "row_index", "row_zero"):
        a, b = getattr(want, name), getattr(got, name)
        assert isinstance(b, np.ndarray) and b.dtype == np.int64, name
        np.testing.assert_array_equal(b, a)
    assert (got.saturations, got.outlier_overflows) == (want.saturations, want.outlier_overflows)
    assert got.row_index.shape == got.row_zero.shape == (shape[0],)


@SETTINGS
@given(seed=seeds, bits=bits_st, n=st.integers(1, 300))
def test_encode_log2_and_round_log_match_reference(seed, bits, n):
    rng = np.random.default_rng(seed)
    a = np.concatenate([rng.integers(0, (1 << 15) + 1, n), [0, 1, 2, 3, 1 << 15, 46341, 46340]])
    same(lambda: ref.encode_log2(a, 15, bits), lambda: ke.encode_log2(a, 15, bits))
    v = np.concatenate([rng.integers(1, 1 << 62, n), rng.integers(1, 1 << 17, n), 2 ** np.arange(62),
                        [46340, 46341, 38967, 38968, 55108, 55109]])
    same(lambda: ref.round_log2(v), lambda: ke.round_log2(v))
    same(lambda: ref.round_log_sqrt2(v), lambda: ke.round_log_sqrt2(v))


@SETTINGS
@given(seed=seeds, bits=bits_st, base=st.sampled_from(F.LOG_BASES), se=st.integers(0, 40),
       shape=st.tuples(st.integers(1, 8), st.integers(1, 40)), m=st.tuples(st.integers(0, 15), st.integers(0, 15)))
def test_encode_shiftlog2_and_three_region_match_reference(seed, bits, base, se, shape, m):
    rng = np.random.default_rng(seed)
    frac = int(rng.integers(4, 16))
    x = _fixed(rng, shape, 2.0**frac)
    x[0, 0] = -int(0.17 * 2**frac)                                    # GELU minimum region
    sh = int(rng.integers(0, 2**frac))
    r = int(rng.integers(1, 1 << 24))
    same(lambda: ref.encode_shiftlog2(x, sh, r, se, bits, base), lambda: ke.encode_shiftlog2(x, sh, r, se, bits, base))
    m0, m1 = sorted(m)
    same(lambda: ref.encode_three_region(x, r, se, bits, m0, m1),
         lambda: ke.encode_three_region(x, r, se, bits, m0, m1))


# --------------------------------------------------------------------------------------------------
# Requantiser
# --------------------------------------------------------------------------------------------------

@SETTINGS
@given(seed=seeds, shape=st.tuples(st.integers(1, 9), st.integers(1, 40)), sr=st.integers(0, 16),
       out_fmt=st.sampled_from(F.OUT_FORMATS), out_bits=bits_st, acc_bits=st.integers(8, 48),
       per_row=st.booleans())
def test_requantize_matches_reference(seed, shape, sr, out_fmt, out_bits, acc_bits, per_row):
    rng = np.random.default_rng(seed)
    m, n = shape
    lim = 1 << (acc_bits - 1)
    acc = rng.integers(-lim, lim, shape)
    acc[0, 0] = lim - 1
    mr = rng.integers(0, min(1 << sr, (1 << 16) - 1) + 1, m if per_row else 1)
    mc = rng.integers(0, 1 << 16, n)
    lo, hi = F.out_range(out_fmt, out_bits)
    # Sc chosen so that outputs land around, at and beyond the clamp
    target = max(hi, 1) * rng.uniform(0.2, 4.0)
    sc = np.clip(np.round(np.log2(np.maximum(mc, 1) * lim / target)), 0, F.SC_MAX).astype(np.int64)
    bq = rng.integers(-(1 << 30), 1 << 30, n) * (rng.random() < 0.7)
    z_out = int(rng.integers(0, hi + 1)) if out_fmt == "ucode" else 0
    same(lambda: ref.requantize(acc, mr, sr, mc, sc, bq, z_out, out_fmt, out_bits),
         lambda: kr.requantize(acc, mr, sr, mc, sc, bq, z_out, out_fmt, out_bits))


def test_requantize_range_faults_raise_not_wrap():
    big = np.array([[(1 << 47) - 1, -(1 << 46)]])
    # |acc * Mr| >= 2^62: the reference's round_shift check -> DatapathError
    same(lambda: ref.requantize(big, [65535], 16, [1], [0], [0], 0, "fixed32", 32),
         lambda: kr.requantize(big, [65535], 16, [1], [0], [0], 0, "fixed32", 32))
    # |t * Mc + Bq| >= 2^62 -> DatapathError (int64 would not wrap yet, but the limit is checked)
    with pytest.raises(ref.DatapathError):
        kr.requantize(big, [1], 0, [65535], [47], [0], 0, "fixed32", 32)
    same(lambda: ref.requantize(big, [1], 0, [65535], [47], [0], 0, "fixed32", 32),
         lambda: kr.requantize(big, [1], 0, [65535], [47], [0], 0, "fixed32", 32))
    # beyond the 48-bit accumulator limit
    same(lambda: ref.requantize([[1 << 47]], [1], 0, [1], [0], [0], 0, "fixed32", 32),
         lambda: kr.requantize([[1 << 47]], [1], 0, [1], [0], [0], 0, "fixed32", 32))
    # bad parameters, bad zero point, unknown format
    for args in (([1], 17, [1], [0], [0], 0, "fixed32", 32), ([9], 3, [1], [0], [0], 0, "fixed32", 32),
                 ([1], 0, [1 << 16], [0], [0], 0, "fixed32", 32), ([1], 0, [1], [48], [0], 0, "fixed32", 32),
                 ([1], 0, [1], [0], [1 << 47], 0, "fixed32", 32), ([1], 0, [1], [0], [0], 3, "scode", 4),
                 ([1], 0, [1], [0], [0], 16, "ucode", 4), ([1], 0, [1], [0], [0], 0, "float", 4)):
        same(lambda: ref.requantize([[5, -5]], *args), lambda: kr.requantize([[5, -5]], *args))


# --------------------------------------------------------------------------------------------------
# GEMM: paths, bound, accumulator checks, outlier SpMM
# --------------------------------------------------------------------------------------------------

def test_gemm_path_bound_is_the_spec_bound():
    # section 6: K * Dmax * Bmax < 2^24 -> float32, < 2^53 -> float64, else int64
    assert kg.gemm_path(1, (1 << 24) - 1, 1) == "float32"
    assert kg.gemm_path(1, 1 << 24, 1) == "float64"
    assert kg.gemm_path(2, 1 << 23, 1) == "float64"
    assert kg.gemm_path(1 << 20, 1 << 23, 1 << 9) == "float64"       # 2^52
    assert kg.gemm_path(1 << 21, 1 << 23, 1 << 9) == "int64"          # 2^53
    assert kg.gemm_path(384, 15, 7) == "float32"                      # W4A4, K = 384
    assert kg.gemm_path(3072, 256 << 15, 127) == "float64"            # shiftlog2 sqrt2, W8


def _outliers(rng, m, k, n_per_row_max):
    rows = []
    for r in range(m):
        n = int(rng.integers(0, n_per_row_max + 1))
        for c in np.sort(rng.choice(k, size=min(n, k), replace=False)):
            rows.append([r, c, int(rng.integers(-(1 << 15), 1 << 15))])
    return np.array(rows, np.int64).reshape(-1, 3)


@SETTINGS
@given(seed=seeds, shape=st.tuples(st.integers(1, 12), st.integers(1, 300), st.integers(1, 40)),
       dlog=st.integers(1, 23), bbits=bits_st, fo=st.sampled_from([0, 2]), n_out=st.integers(0, 3))
def test_accumulate_all_paths_match_reference(seed, shape, dlog, bbits, fo, n_out):
    rng = np.random.default_rng(seed)
    m, k, n = shape
    d = rng.integers(-(1 << dlog), (1 << dlog) + 1, (m, k))
    bmax = (1 << (bbits - 1)) - 1
    b = rng.integers(-bmax, bmax + 1, (k, n))
    za = rng.integers(0, 256, m)
    o = _outliers(rng, m, k, n_out) if fo else np.zeros((0, 3), np.int64)
    want = ref.accumulate(d, b, za, fo, o)
    auto = kg.gemm_path(k, int(np.abs(d).max()), int(np.abs(b).max()))
    for path in ("float32", "float64", "int64"):
        if ["float32", "float64", "int64"].index(path) < ["float32", "float64", "int64"].index(auto):
            with pytest.raises(ValueError):                       # a float path beyond the bound is refused
                kg.accumulate(d, b, za, fo, o, path=path)
            continue
        _eq(want, kg.accumulate(d, b, za, fo, o, path=path))
    _eq(want, kg.accumulate(d, b, za, fo, o))


def test_float32_path_would_be_wrong_beyond_the_bound():
    # why the bound matters: 2^24 + 1 is not a float32, the int64 kernel gets it right
    d = np.array([[1 << 23, 1 << 23, 1]])
    b = np.array([[1], [1], [1]])
    assert float((d.astype(np.float32) @ b.astype(np.float32))[0, 0]) != (1 << 24) + 1
    assert kg.gemm_path(3, 1 << 23, 1) == "float64"
    acc_raw, _, _ = kg.accumulate(d, b, 0)
    assert int(acc_raw[0, 0]) == (1 << 24) + 1
    assert int(kg.accumulate(d, b, 0, path="int64")[0][0, 0]) == (1 << 24) + 1


def test_too_narrow_accumulator_is_detected_not_wrapped():
    # kernel level, no static bound consulted: 15 * 7 * 40 = 4200 needs 14 bits signed
    d = np.full((2, 40), 15)
    b = np.full((40, 3), 7)
    acc_raw, _, acc = kg.accumulate(d, b, 0, acc_bits=14)
    assert int(acc.max()) == 4200
    for path in ("float32", "int64"):
        with pytest.raises(ref.AccumulatorOverflowError):
            kg.accumulate(d, b, 0, acc_bits=13, path=path)
    # the int64 kernels refuse a bound that could wrap int64
    with pytest.raises(ref.AccumulatorOverflowError):
        kg.accumulate(np.array([[1 << 40]]), np.array([[1 << 22]]), 0)


def test_accumulate_rejects_bad_outliers_like_reference():
    d = np.ones((3, 4), np.int64)
    b = np.ones((4, 2), np.int64)
    for o in ([[3, 0, 1]], [[0, 4, 1]], [[0, 0, 1 << 15]], [[1, 0, 1], [0, 1, 1]], [[0, 1, 1], [0, 1, 2]]):
        same(lambda: ref.accumulate(d, b, 0, 2, o), lambda: kg.accumulate(d, b, 0, 2, o))



def test_encoder_product_beyond_int64_raises_in_both():
    # x * R = 2^40 * 2^23 = 2^63 wraps to -2^63 in numpy int64; np.abs(-2^63) is negative, so the
    # reference's round_shift check (|x| < 2^62) passes and a wrapped value is encoded silently.
    # The numba encoder detects |x| * R >= 2^62 exactly and raises DatapathError.
    big = np.array([1 << 40])
    with pytest.raises(ref.DatapathError):
        ke.encode_three_region(big, 1 << 23, 0, 4, 0, 1)
    with pytest.raises(ref.DatapathError):
        ref.encode_three_region(big, 1 << 23, 0, 4, 0, 1)
