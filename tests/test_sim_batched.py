"""Batched simulator (sim/batched.py, sim/kernels_int8.py, sim/kernels_fused.py) == the reference, per group.

``run_layer_batch`` / ``LayerPlan`` on ``G`` groups must equal ``G`` calls of ``run_layer_reference``
(the expected values always come from the numpy reference): every A format and width, shared and
run-time B operands, per-group outlier lists with tiles that start at row 0 of every group (``M`` not
a multiple of the tile), dynamic per-row ``Mr`` / ``za``, every exact GEMM path the bound allows
(``int8`` digit planes, ``float32``, ``float64``, ``int64``), saturating outputs, ``from_fixed``
outputs, and the error classes of the reference. The fused host-boundary encoders (``EncoderPlan``)
are compared with ``to_fixed`` + the reference encoders per group, and the log encoders' threshold
tables with the reference encoders exhaustively over their input range.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vitaccel.sim import batched as B
from vitaccel.sim import formats as F
from vitaccel.sim import kernels_decode as kd
from vitaccel.sim import kernels_fused as kf
from vitaccel.sim import kernels_int8 as k8
from vitaccel.sim import reference as ref
from vitaccel.sim.layer import EncoderSpec, LayerSpec, run_encoder_reference

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def outcome(f):
    try:
        return f(), None
    except Exception as exc:
        return None, exc


def assert_same_batch(spec, q, o=None, b=None, **kw):
    """The batched layer equals the per-group reference (integers, saturations, error class)."""
    want, e_ref = outcome(lambda: B.run_layer_batch_reference(spec, q, o, b, mr=kw.get("mr"), za=kw.get("za"),
                                                              host_frac=kw.get("host_frac"),
                                                              out_dtype=kw.get("out_dtype", np.int64)))
    got, e_sim = outcome(lambda: B.run_layer_batch(spec, q, o, b, **kw))
    if e_ref is not None or e_sim is not None:
        assert type(e_ref) is type(e_sim), (repr(e_ref), repr(e_sim))
        return None
    np.testing.assert_array_equal(got.out, want.out)
    np.testing.assert_array_equal(got.acc, want.acc)
    assert got.out.dtype == want.out.dtype
    assert got.saturations == want.saturations
    return got


# --------------------------------------------------------------------------------------------------
# int8 digit planes
# --------------------------------------------------------------------------------------------------

def test_balanced_digits_and_plans():
    for x in [0, 1, -1, 127, -128, 128, -129, 255, 32767, -32768, 2 ** 23, -(2 ** 23), 123456789]:
        for n in range(1, 5):
            try:
                d = k8.balanced_digits(x, n)
            except ValueError:
                continue
            assert all(-128 <= s <= 127 for s in d) and sum(s * 256 ** i for i, s in enumerate(d)) == x
    assert k8.digit_plan(0, 15) == (1, 0)                 # 4-bit uniform: the codes themselves
    assert k8.digit_plan(-7, 7) == (1, 0)
    assert k8.digit_plan(0, 255) == (1, 128)               # 8-bit uniform: one digit around 128
    assert k8.digit_plan(0, 1 << 14)[0] == 2               # 4-bit log2
    assert k8.digit_plan(0, 1 << 15)[0] == 2               # 4-bit shiftlog2 (base 2 and sqrt 2)
    assert k8.digit_plan(181, 256 << 15)[0] == 3           # 8-bit shiftlog2 base sqrt 2
    # every format's decode table is reproduced exactly by its digits
    for kind in F.A_FORMATS:
        for bits in F.BITS:
            for base in F.LOG_BASES:
                lut, valid = kd.lut_for(kind, bits, base, 3, 15)
                tab, o = k8.digit_lut(lut, valid)
                for c in np.flatnonzero(valid):
                    assert o + sum(int(tab[c, i]) * 256 ** i for i in range(tab.shape[1])) == lut[c]


def test_int8_bound_is_checked_before_the_path():
    # K * 256 * Bmax < 2^31: W8 (Bmax 127) up to K = 66052, W4 (Bmax 7) up to K = 1198372
    assert k8.int8_k_ok(66052, 127) and not k8.int8_k_ok(66053, 127)
    assert k8.int8_k_ok(1198372, 7) and not k8.int8_k_ok(1198373, 7)
    assert not k8.int8_k_ok(1, 128)
    if k8.int8_backend() is None:
        pytest.skip("no int8 GEMM backend on this machine")
    assert "int8" in B.allowed_paths(66052, 255, 127) and "int8" not in B.allowed_paths(66053, 255, 127)
    # a layer beyond the bound falls back (never wraps): the path is not int8, forcing it is refused
    k = 66053
    spec = LayerSpec(name="wide", op="linear", a_kind="uniform", a_bits=8, b=np.zeros((k, 1), np.int8), b_bits=8,
                     za=np.array([0]), mr=np.array([1]), sr=0, mc=np.array([1]), sc=np.array([0]), bq=np.array([0]),
                     out_fmt="fixed32", out_bits=32, acc_bits=48)
    assert B.LayerPlan(spec, 1).path != "int8"
    with pytest.raises(ValueError):
        B.LayerPlan(spec, 1, path="int8")


def test_int8_backend_is_exact_on_extreme_operands():
    fn = k8.int8_backend()
    if fn is None:
        pytest.skip("no int8 GEMM backend on this machine")
    rng = np.random.default_rng(3)
    a = rng.choice(np.array([-128, -127, 0, 126, 127], np.int8), (33, 4099))
    b = rng.choice(np.array([-127, -1, 0, 1, 127], np.int8), (4099, 17))
    np.testing.assert_array_equal(k8.gemm_int8(a, b).astype(np.int64), a.astype(np.int64) @ b.astype(np.int64))
    assert k8.int8_info()["int8_path"] is True


@pytest.mark.parametrize("layout", ["row-major", "transposed"])
def test_int8_gemm_degenerate_shapes_both_layouts(layout):
    """K = 1 (or N = 1) in the transposed B layout LayerPlan stores: strides (1, 1), which the raw
    ``torch._int_mm`` got wrong; every small shape, called twice, equals numpy integers."""
    if k8.int8_backend() is None:
        pytest.skip("no int8 GEMM backend on this machine")
    rng = np.random.default_rng(5)
    for m in (1, 2, 5):
        for k in (1, 2, 3):
            for n in (1, 2, 4):
                a = rng.integers(-128, 128, (m, k)).astype(np.int8)
                b = rng.integers(-127, 128, (k, n)).astype(np.int8)
                if layout == "transposed":
                    b = np.ascontiguousarray(b.T).T
                want = a.astype(np.int64) @ b.astype(np.int64)
                for _ in range(2):
                    out = np.empty((m, n), np.int32)
                    k8.gemm_int8(a, b, out)
                    np.testing.assert_array_equal(out, want, err_msg=f"{(m, k, n)}")


# --------------------------------------------------------------------------------------------------
# random batched layers
# --------------------------------------------------------------------------------------------------

def _codes(rng, spec, shape):
    lut, valid = kd.lut_for(spec.a_kind, spec.a_bits, spec.a_base, spec.m0, spec.m1)
    ok = np.flatnonzero(valid)
    q = ok[rng.integers(0, len(ok), shape)]
    q.reshape(-1, shape[-1])[0] = ok[np.argmax(np.abs(lut[ok]))]     # a maximal row
    return q


@st.composite
def batch_cases(draw):
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
    a_kind = draw(st.sampled_from(F.A_FORMATS))
    a_bits, b_bits = draw(st.sampled_from(F.BITS)), draw(st.sampled_from(F.BITS))
    base = draw(st.sampled_from(F.LOG_BASES))
    m0, m1 = sorted(draw(st.tuples(st.integers(0, 15), st.integers(0, 15))))
    g = draw(st.sampled_from([1, 2, 3, 5]))
    m = draw(st.sampled_from([1, 3, 7, 17]))
    k = draw(st.sampled_from([1, 5, 64, 130]))
    n = draw(st.sampled_from([1, 4, 33]))
    runtime_b = draw(st.booleans())
    dynamic = a_kind == "uniform" and draw(st.booleans())
    fo = 2 if a_kind == "uniform" and draw(st.booleans()) else 0
    out_fmt = draw(st.sampled_from(F.OUT_FORMATS))
    out_bits = draw(st.sampled_from(F.BITS)) if out_fmt in ("ucode", "scode") else int(out_fmt[5:])
    bmax = (1 << (b_bits - 1)) - 1
    b = rng.integers(-bmax, bmax + 1,
                     (g, k, n) if runtime_b else (k, n)).astype(draw(st.sampled_from([np.int8, np.int64])))
    if a_kind == "uniform":
        za = rng.integers(0, 1 << a_bits, m if draw(st.booleans()) else 1)
    elif a_kind == "shiftlog2":
        za = rng.integers(0, 1 << 12, 1)
    else:
        za = np.zeros(1, np.int64)
    sr = int(rng.integers(0, 17))
    mr = rng.integers(0, min(1 << sr, (1 << 16) - 1) + 1, m)
    cap, tile = int(rng.integers(1, 6)), int(rng.integers(1, 9))
    spec = LayerSpec(name="rand", op="linear", a_kind=a_kind, a_bits=a_bits,
                     b=np.zeros((k, 0), np.int64) if runtime_b else b, b_bits=b_bits, za=za, mr=mr, sr=sr,
                     mc=rng.integers(1 << 14, 1 << 16, n), sc=np.zeros(n, np.int64), bq=np.zeros(n, np.int64),
                     out_fmt=out_fmt, out_bits=out_bits, acc_bits=48, a_base=base, m0=m0, m1=m1, fo=fo,
                     outlier_capacity=cap if fo else None, tile_rows=tile)
    spec.acc_bits = int(min(F.ACC_BITS_MAX, spec.acc_bits_required(k) + draw(st.sampled_from([0, 3, -1]))))
    lo, hi = F.out_range(out_fmt, out_bits)
    typical = max(1.0, np.sqrt(k) * spec.dmax() * bmax * (1 << fo))
    spec.sc = np.clip(np.round(np.log2(spec.mc * typical / (hi * rng.uniform(0.3, 3.0, n)))), 0,
                      F.SC_MAX).astype(np.int64)
    spec.bq = np.clip(rng.uniform(-hi, hi, n) * 2.0 ** spec.sc, -(2.0 ** 46), 2.0 ** 46).astype(np.int64)
    spec.z_out = int(rng.integers(0, hi + 1)) if out_fmt == "ucode" else 0
    q = _codes(rng, spec, (g, m, k)).astype(draw(st.sampled_from([np.int64, np.uint8])))   # the runner keeps uint8
    rows = {}
    if dynamic:
        rows = {"mr": rng.integers(0, min(1 << sr, (1 << 16) - 1) + 1, (g, m)),
                "za": rng.integers(0, 1 << a_bits, (g, m))}
    o = None
    density = draw(st.sampled_from(["none", "some", "at_cap", "over_cap"])) if fo else "none"
    if density != "none":
        entries = []
        for gi in range(g):
            for t0 in range(0, m, tile):                 # tiles restart at row 0 of every group
                cells = [(r, c) for r in range(t0, min(m, t0 + tile)) for c in range(k)]
                want = min(len(cells), {"some": int(rng.integers(0, cap + 1)), "at_cap": cap,
                                        "over_cap": cap + 1}[density] if gi == g - 1 else int(rng.integers(0, cap + 1)))
                for i in np.sort(rng.choice(len(cells), size=want, replace=False)):
                    r, c = cells[i]
                    entries.append([gi, r, c, int(rng.integers(-(1 << 15), 1 << 15))])
        o = np.array(sorted(entries), np.int64).reshape(-1, 4)
    host_frac = int(rng.integers(0, 20)) if out_fmt.startswith("fixed") and draw(st.booleans()) else None
    return spec, q, o, (b if runtime_b else None), rows, host_frac


@SETTINGS
@given(case=batch_cases())
def test_run_layer_batch_matches_reference(case):
    spec, q, o, b, rows, host_frac = case
    got = assert_same_batch(spec, q, o, b, host_frac=host_frac, **rows)
    if got is None:
        return
    k = q.shape[2]
    plan = B.LayerPlan(spec, q.shape[1], None if b is None else b.shape[1:], dynamic_rows=bool(rows))
    assert plan.path == B.allowed_paths(k, spec.dmax(), (1 << (spec.b_bits - 1)) - 1)[0]
    for p in B.allowed_paths(k, spec.dmax(), (1 << (spec.b_bits - 1)) - 1):   # every exact path agrees
        again = B.run_layer_batch(spec, q, o, b, path=p, host_frac=host_frac, **rows)
        np.testing.assert_array_equal(again.out, got.out)
        np.testing.assert_array_equal(again.acc, got.acc)


def test_batch_errors_match_reference():
    rng = np.random.default_rng(11)
    spec = LayerSpec(name="e", op="linear", a_kind="uniform", a_bits=4, b=rng.integers(-7, 8, (6, 3)), b_bits=4,
                     za=np.array([8]), mr=np.array([1]), sr=0, mc=np.array([1]), sc=np.array([0]), bq=np.array([0]),
                     out_fmt="fixed32", out_bits=32, acc_bits=24, fo=2, outlier_capacity=1, tile_rows=2)
    q = rng.integers(0, 16, (3, 4, 6))
    bad = q.copy()
    bad[2, 1, 3] = 16                                              # invalid code in the last group
    over = np.array([[1, 0, 0, 5], [1, 1, 2, 5]])                  # two outliers in one tile of group 1
    ok_tiles = np.array([[1, 1, 0, 5], [1, 2, 2, 5]])              # rows 1 and 2: different tiles of group 1
    unsorted = np.array([[1, 2, 2, 5], [0, 1, 0, 5]])
    for qq, oo in [(bad, None), (bad.astype(np.uint8), None), (q, over), (q, ok_tiles), (q, unsorted),
                   (q, np.array([[3, 0, 0, 1]])),
                   (q, np.array([[0, 0, 0, 40000]]))]:
        assert_same_batch(spec, qq, oo)
    narrow = LayerSpec(**{**spec.to_arrays(), "acc_bits": 10, "fo": 0})
    assert_same_batch(narrow, q)                                   # static bound too narrow
    assert_same_batch(spec, q[0])                                  # not (G, M, K)
    assert_same_batch(spec, q, b=rng.integers(-8, 8, (3, 6, 3)))   # invalid run-time B code (-8)


def test_batched_attention_shapes_equal_per_head_reference():
    """q @ k^T and attn @ v for every (image, head) pair in one call, as the program runner does."""
    rng = np.random.default_rng(5)
    g, n, d = 6, 9, 16
    qk = LayerSpec(name="qk", op="qk", a_kind="uniform", a_bits=4, b=np.zeros((d, 0)), b_bits=4, za=np.array([8]),
                   mr=np.array([1]), sr=0, mc=np.array([181]), sc=np.array([8]), bq=np.array([0]),
                   out_fmt="fixed32", out_bits=32, acc_bits=24)
    assert_same_batch(qk, rng.integers(0, 16, (g, n, d)), None, rng.integers(-7, 8, (g, d, n)), host_frac=16)
    av = LayerSpec(name="av", op="av", a_kind="log2", a_bits=4, b=np.zeros((n, 0)), b_bits=4, za=np.array([0]),
                   mr=np.array([1]), sr=0, mc=np.array([1000]), sc=np.array([20]), bq=np.array([0]),
                   out_fmt="ucode", out_bits=4, z_out=8, acc_bits=30)
    attn = rng.integers(0, 16, (g, n, n))
    attn[0, 0] = 0                                                 # D = 2^14: the digit that needs 2 planes
    got = assert_same_batch(av, attn, None, rng.integers(-7, 8, (g, n, d)), out_dtype=np.uint8)
    assert got is not None and got.out.dtype == np.uint8


@pytest.mark.parametrize("out_fmt,host_frac,runtime_b", [("ucode", None, True), ("fixed32", 12, False),
                                                          ("fixed32", 12, True)])
def test_many_rows_fused_runs_with_outlier_rows_between(out_fmt, host_frac, runtime_b):
    """More rows than the drain's 256 chunks: one chunk spans several rows and group boundaries and
    ``_fused_rows`` runs over rows with and without outliers (the correction vector is cleared
    between them); all equal the per-group reference."""
    rng = np.random.default_rng(11)
    g, m, k, n, tile, cap = 9, 97, 64, 33, 16, 64
    b = rng.integers(-7, 8, (g, k, n) if runtime_b else (k, n)).astype(np.int8)
    spec = LayerSpec(name="rows", op="linear", a_kind="uniform", a_bits=4, b=np.zeros((k, 0)) if runtime_b else b,
                     b_bits=4, za=rng.integers(0, 16, m), mr=rng.integers(1 << 14, 1 << 16, m), sr=16,
                     mc=rng.integers(1 << 14, 1 << 16, n), sc=np.full(n, 12 if out_fmt == "ucode" else 2),
                     bq=rng.integers(-4096, 4096, n), out_fmt=out_fmt, out_bits=4 if out_fmt == "ucode" else 32,
                     z_out=8 if out_fmt == "ucode" else 0, acc_bits=48, fo=2, outlier_capacity=cap, tile_rows=tile)
    spec.acc_bits = spec.acc_bits_required(k)
    q = rng.integers(0, 16, (g, m, k)).astype(np.uint8)
    rows = sorted({(int(gi), int(r)) for gi, r in zip(rng.integers(0, g, 60), rng.integers(0, m, 60))})
    o = np.array([[gi, r, int(c), int(rng.integers(-30000, 30000))] for gi, r in rows
                  for c in np.sort(rng.choice(k, 2, replace=False))], np.int64)
    got = assert_same_batch(spec, q, o, b if runtime_b else None, host_frac=host_frac,
                            out_dtype=np.uint8 if out_fmt == "ucode" else np.int64)
    assert got is not None and 0 < got.saturations < g * m * n
    plan = B.LayerPlan(spec, m, (k, n) if runtime_b else None)
    fast = plan.try_fast(q, o, b if runtime_b else None, host_frac=host_frac)
    assert fast is not None                                         # the fast path ran, not the fallback
    np.testing.assert_array_equal(fast.out, got.out)
    dyn = {"mr": rng.integers(0, 1 << 16, (g, m)), "za": rng.integers(0, 16, (g, m))}
    assert assert_same_batch(spec, q, o, b if runtime_b else None, host_frac=host_frac, **dyn) is not None


# --------------------------------------------------------------------------------------------------
# fused encoders
# --------------------------------------------------------------------------------------------------

def test_log_threshold_tables_match_reference_encoders():
    for bits in F.BITS:
        thr = kf.log_code_table("log2", bits)
        table, steps = kf.padded_table(thr[1:])
        a = np.concatenate([np.arange(0, (1 << 16) + 2), np.array([2 ** 20, 2 ** 31 - 1])])
        plan = B.EncoderPlan(EncoderSpec(kind="log2", bits=bits, in_frac=F.SOFTMAX_FRAC), len(a))
        x = (a / 2.0 ** F.SOFTMAX_FRAC).astype(np.float64)[None, :, None]
        np.testing.assert_array_equal(plan.run(x).codes.reshape(-1), ref.encode_log2(a, F.SOFTMAX_FRAC, bits))
        assert len(table) == 1 << steps
        for base in F.LOG_BASES:
            r, se, sh = 1 << 16, 16, 0                               # w = x_fx: every w in the table's range
            enc = EncoderSpec(kind="shiftlog2", bits=bits, in_frac=0, r=np.array([r]), se=se, sh=sh, base=base)
            w = np.concatenate([np.arange(-3, (1 << 17) + 3), np.array([2 ** 24, 2 ** 31 - 1])])
            got = B.EncoderPlan(enc, len(w)).run(w.astype(np.float64)[None, :, None]).codes.reshape(-1)
            np.testing.assert_array_equal(got, ref.encode_shiftlog2(w, sh, r, se, bits, base))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2 ** 32 - 1), kind=st.sampled_from(["uniform", "per_patch", "dynamic", "log2", "shiftlog2",
                                                              "three_region"]),
       bits=st.sampled_from(F.BITS), base=st.sampled_from(F.LOG_BASES), strict=st.booleans(),
       shape=st.tuples(st.integers(1, 4), st.integers(1, 9), st.integers(1, 40)), outliers=st.booleans())
def test_encoder_plan_matches_reference(seed, kind, bits, base, strict, shape, outliers):
    rng = np.random.default_rng(seed)
    g, m, k = shape
    frac = 16
    x = (rng.normal(0, 2, shape) * np.where(rng.random(shape) < 0.05, 30, 1)).astype(np.float32)
    if rng.random() < 0.2:
        x.reshape(-1)[0] = 1e12                                    # a host-boundary saturation
    if kind == "log2":
        x = np.abs(x) / (np.abs(x).max() + 1)
        frac = F.SOFTMAX_FRAC
    se = 30
    enc = EncoderSpec(kind=kind if kind in ("log2", "shiftlog2", "three_region") else "uniform", bits=bits, in_frac=frac,
                      se=se, base=base, sh=int(0.17 * 2 ** frac), m0=1, m1=4,
                      r=np.array([int(rng.integers(1 << 10, 1 << 20))]), z=np.array([int(rng.integers(0, 1 << bits))]))
    if kind == "per_patch":
        enc.r = rng.integers(1 << 10, 1 << 20, m)
        enc.z = rng.integers(0, 1 << bits, m)
    if kind == "dynamic":
        s = 3.0 * 2.0 ** (-np.arange(12) / 8)
        enc.ladder_t = np.floor(s * (2 ** bits - 1) * 2.0 ** frac).astype(np.int64)
        enc.ladder_r = np.floor(2.0 ** se / (s * 2.0 ** frac) + 0.5).astype(np.int64)
    if kind in ("per_patch", "dynamic", "uniform") and outliers:
        enc.alpha_fx = int(rng.uniform(1, 6) * 2 ** frac)
        enc.fo = 2
    want, e_ref = outcome(lambda: B.run_encoder_batch(enc, x, strict, reference=True))
    got, e_sim = outcome(lambda: B.EncoderPlan(enc, m).run(x, strict))
    assert type(e_ref) is type(e_sim), (repr(e_ref), repr(e_sim))
    if e_ref is not None:
        return
    np.testing.assert_array_equal(got.codes, want.codes)
    np.testing.assert_array_equal(got.outliers, want.outliers)
    assert (got.saturations, got.outlier_overflows, got.host_saturations) == \
        (want.saturations, want.outlier_overflows, want.host_saturations)
    for a, b in ((got.row_index, want.row_index), (got.row_zero, want.row_zero)):
        assert (a is None) == (b is None) and (a is None or np.array_equal(a, b))
    # and the reference batch equals one reference call per group
    for gi in range(g):
        x_fx, _ = ref.to_fixed(x[gi], frac, 32)
        r1 = run_encoder_reference(enc, x_fx, strict)
        np.testing.assert_array_equal(want.codes[gi], r1.codes)


def test_encoder_plan_rejects_non_finite_like_the_reference():
    enc = EncoderSpec(kind="shiftlog2", bits=4, in_frac=16, r=np.array([1 << 20]), se=26, sh=11205, base="sqrt2")
    x = np.zeros((1, 2, 3), np.float32)
    x[0, 1, 2] = np.nan
    with pytest.raises(ref.DatapathError):
        B.EncoderPlan(enc, 2).run(x)


def test_single_column_reduction_k1():
    """K = 1 (a degenerate GEMM whose transposed B view has leading dimension 1) on every path."""
    b = np.array([[7, 2, 0]])
    spec = LayerSpec(name="k1", op="linear", a_kind="log2", a_bits=4, b=b, b_bits=4, za=np.array([0]),
                     mr=np.array([16]), sr=4, mc=np.array([56357, 48304, 61247]), sc=np.array([28, 27, 28]),
                     bq=np.array([0, 0, 0]), out_fmt="ucode", out_bits=4, acc_bits=18, z_out=4)
    q = np.arange(16).reshape(2, 8, 1) % 16
    for p in B.allowed_paths(1, spec.dmax(), 7):
        got = assert_same_batch(spec, q, path=p)
        assert got is not None
