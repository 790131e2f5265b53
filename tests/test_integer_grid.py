"""Integer-grid fake quantization (golden/integer_grid.py) against the spec and the numpy reference.

The torch primitives and encoders are an implementation of docs/datapath.md independent of
``sim/reference.py``; these tests compare the two on random inputs and the spec's worked examples,
and then whole tiny models: the fake-quant model on the integer grid must give the same logits, bit
for bit, as the numpy reference running the exported program image by image.
"""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vitaccel.golden import integer_grid as G
from vitaccel.golden.int_eval import ProgramRunner
from vitaccel.golden.program import export_program
from vitaccel.sim import formats as F
from vitaccel.sim import reference as ref

from golden_helpers import calibrated, images


def _t(a):
    return torch.tensor(a, dtype=torch.int64)


def test_round_shift_spec_examples():
    # docs/datapath.md section 1: 2.5 -> 3, -2.5 -> -2, -1.5 -> -1, 1.75 -> 2; s = 0 is the identity
    assert G.round_shift(_t([5, -5, -6, 7]), _t([1, 1, 2, 2])).tolist() == [3, -2, -1, 2]
    assert G.round_shift(_t([-3, 9]), 0).tolist() == [-3, 9]


def test_round_log_spec_examples_and_exact_bit_length():
    # section 8.2: a = 8192 -> 13, a = 3 -> 2 (mantissa 49152 >= 46341)
    assert G.round_log2(_t([8192, 3, 1])).tolist() == [13, 2, 0]
    vals = [1, 2, 3, 2 ** 31 - 1, 2 ** 31, 2 ** 53 - 1, 2 ** 53, 2 ** 53 + 1, 2 ** 61 + 12345, 2 ** 62 - 1]
    assert G.bit_length_minus_one(_t(vals)).tolist() == [v.bit_length() - 1 for v in vals]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 2 ** 40), min_size=1, max_size=64))
def test_round_log_matches_reference(vals):
    v = np.array(vals, np.int64)
    assert G.round_log2(torch.from_numpy(v)).tolist() == ref.round_log2(v).tolist()
    assert G.round_log_sqrt2(torch.from_numpy(v)).tolist() == ref.round_log_sqrt2(v).tolist()


def test_three_region_encoder_spec_example():
    # section 8.3: k = 4, m0 = 2, m1 = 5; w = 10.6 * 2^16 -> 0b0011, w = 40 * 2^16 -> 0b1001
    enc = G.GridEncoder({"kind": "three_region", "bits": 4, "in_frac": 16, "r": "r", "z": "z", "se": 16,
                         "m0": 2, "m1": 5}, {"r": np.array([1 << 16]), "z": np.array([0])})
    codes, _, _ = enc.encode(torch.tensor([10.6, 40.0, -1.0, 0.0]))
    ref_codes = ref.encode_three_region(ref.to_fixed(np.array([10.6, 40.0, -1.0, 0.0], np.float32), 16, 32)[0],
                                        1 << 16, 16, 4, 2, 5)
    assert codes.tolist()[:2] == [0b0011, 0b1001]
    assert codes.tolist() == ref_codes.tolist()


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2 ** 31 - 1), bits=st.sampled_from(F.BITS), base=st.sampled_from(["2", "sqrt2"]))
def test_encoders_match_reference(seed, bits, base):
    rng = np.random.default_rng(seed)
    m, k = 5, 7
    x = (rng.standard_normal((m, k)) * rng.choice([0.05, 1.0, 6.0])).astype(np.float32)
    x_fx, _ = ref.to_fixed(x, 16, 32)
    r = rng.integers(1 << 10, 1 << 23, m)
    z = rng.integers(0, 2 ** bits, m)
    tens = {"r": r, "z": z, "r1": r[:1], "z0": np.zeros(1, np.int64)}
    # per-patch uniform with outliers
    e = G.GridEncoder({"kind": "uniform", "bits": bits, "in_frac": 16, "r": "r", "z": "z", "se": 30,
                       "alpha_fx": 2 << 16, "fo": 2}, tens)
    q, o, _ = e.encode(torch.from_numpy(x))
    rq, ro, _, _ = ref.encode_per_patch(x_fx, r, 30, z, bits, 2 << 16, 2, False)
    dense = np.zeros((m, k), np.int64)
    for rr, cc, vv in np.asarray(ro).reshape(-1, 3):
        dense[rr, cc] = vv
    assert q.tolist() == rq.tolist() and o.tolist() == dense.tolist()
    # shift-log2 (post-GELU range)
    g = torch.nn.functional.gelu(torch.from_numpy(x))
    g_fx, _ = ref.to_fixed(g.numpy(), 16, 32)
    e = G.GridEncoder({"kind": "shiftlog2", "bits": bits, "in_frac": 16, "r": "r1", "z": "z0", "se": 28,
                       "sh": 11141, "base": base}, tens)
    assert e.encode(g)[0].tolist() == ref.encode_shiftlog2(g_fx, 11141, int(r[0]), 28, bits, base).tolist()
    idx, lut = e.encode_index(g)                      # table positions + code table (composed by the GEMM)
    assert lut[idx.long()].tolist() == e.encode(g)[0].tolist()
    # post-softmax log2
    p = torch.softmax(torch.from_numpy(x) * 4, dim=-1)
    p_fx, _ = ref.to_fixed(p.numpy(), 15, 32)
    e = G.GridEncoder({"kind": "log2", "bits": bits, "in_frac": 15, "r": "r1", "z": "z0"}, tens)
    assert e.encode(p)[0].tolist() == ref.encode_log2(p_fx, 15, bits).tolist()
    idx, lut = e.encode_index(p)
    assert lut[idx.long()].tolist() == ref.encode_log2(p_fx, 15, bits).tolist()


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2 ** 31 - 1), bits=st.sampled_from(F.BITS), outliers=st.booleans())
def test_dynamic_per_patch_encoder_matches_reference(seed, bits, outliers):
    """Section 8.1.1 in torch (batched, rows on the second-to-last axis) == sim/reference.py."""
    rng = np.random.default_rng(seed)
    b, m, k, nj, se = 2, 6, 9, 20, 36
    x = (rng.standard_normal((b, m, k)) * rng.choice([0.01, 1.0, 8.0], size=(b, m, 1))).astype(np.float32)
    x[0, 1] = 0.0  # an all-zero row
    s = 3.0 * 2.0 ** (-np.arange(nj) / 8)  # ladder s_j = s_top * 2^(-j/8), T, R as the exporter builds them
    t = np.floor(s * (2 ** bits - 1) * 2.0 ** 16).astype(np.int64)
    r = np.floor(2.0 ** se / (s * 2.0 ** 16) + 0.5).astype(np.int64)
    alpha = (2 << 16) if outliers else None
    e = G.GridEncoder({"kind": "uniform", "bits": bits, "in_frac": 16, "r": "r", "z": "z", "se": se,
                       "alpha_fx": alpha, "fo": 2, "ladder": {"r": "lr", "t": "lt"}},
                      {"r": r[:1], "z": np.zeros(1, np.int64), "lr": r, "lt": t})
    q, o, (j, z) = e.encode(torch.from_numpy(x))
    for i in range(b):
        x_fx, _ = ref.to_fixed(x[i], 16, 32)
        rq, ro, _, _, rj, rz = ref.encode_per_patch_dynamic(x_fx, r, t, se, bits, alpha, 2, False)
        assert q[i].tolist() == rq.tolist() and j[i].tolist() == rj.tolist() and z[i].tolist() == rz.tolist()
        dense = np.zeros((m, k), np.int64)
        for rr, cc, vv in np.asarray(ro).reshape(-1, 3):
            dense[rr, cc] = vv
        assert (o[i].tolist() if o is not None else np.zeros((m, k)).tolist()) == dense.tolist()


@pytest.mark.parametrize("method,bits,poq_mode", [("adfq", "w4a4", "static"), ("adfq", "w4a4", "dynamic"),
                                                  ("adfq", "w6a6", "static"), ("mptq", "w4a4", "static"),
                                                  ("baseline", "w8a8", "static")])
def test_grid_fakequant_equals_reference_program(method, bits, poq_mode, torch_one_thread):
    qvit = copy.deepcopy(calibrated(method, bits, poq_mode))
    prog = export_program(qvit)
    x = images(3, seed=7)
    with torch.no_grad():
        float_logits = qvit(x)
        qvit.use_integer_grid(prog)
        assert qvit.on_integer_grid
        grid_logits = qvit(x)
        qvit.use_float_fakequant()
        assert not qvit.on_integer_grid
        assert torch.equal(qvit(x), float_logits)  # detaching restores float fake-quant exactly
    runner = ProgramRunner(prog, backend="reference")
    sim_logits = torch.stack([runner.run_image(img) for img in x])
    assert torch.equal(grid_logits, sim_logits), float((grid_logits - sim_logits).abs().max())
    # and the grid is a real change: float fake-quant is close but not bit-identical
    assert torch.allclose(float_logits, sim_logits, atol=0.25 * float(sim_logits.abs().max()))


def test_grid_rejects_wrong_row_count():
    qvit = copy.deepcopy(calibrated("adfq", "w4a4"))
    qvit.use_integer_grid()
    enc = qvit.model.blocks[0].attn.qkv.input_quantizer.grid_encoder
    with pytest.raises(G.IntegerGridError, match="rows"):
        enc.encode(torch.zeros(1, 3, 64))


def test_host_boundary_saturation_is_reported_not_wrapped():
    with pytest.warns(RuntimeWarning, match="saturated"):
        v = G.to_fixed(torch.tensor([1e6, -1e6, 0.5]), 16, 32)
    assert v.tolist() == [2 ** 31 - 1, -2 ** 31, 2 ** 15]
    with pytest.raises(G.IntegerGridError, match="non-finite"):
        G.to_fixed(torch.tensor([float("nan")]), 16)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2 ** 31 - 1), kind=st.sampled_from(F.A_FORMATS), bits=st.sampled_from(F.BITS),
       b_bits=st.sampled_from(F.BITS), base=st.sampled_from(["2", "sqrt2"]), runtime=st.booleans(),
       fo=st.booleans(), out_fmt=st.sampled_from(["ucode", "scode", "fixed32", "fixed16"]),
       shape=st.tuples(st.integers(1, 3), st.integers(1, 9), st.sampled_from([1, 7, 64, 200]), st.integers(1, 20)))
def test_grid_gemm_paths_match_reference(seed, kind, bits, b_bits, base, runtime, fo, out_fmt, shape):
    """GridGemm.run (int8 digit planes, float32 digit planes, the int64 path) == the numpy reference."""
    from vitaccel.sim import kernels_decode as kd
    from vitaccel.sim.layer import LayerSpec, run_layer_reference

    rng = np.random.default_rng(seed)
    g, m, k, n = shape
    fo = 2 if fo and kind == "uniform" else 0
    bmax = 2 ** (b_bits - 1) - 1
    b = rng.integers(-bmax, bmax + 1, (g, k, n) if runtime else (k, n))
    lut, valid = kd.lut_for(kind, bits, base, 1, 5)
    ok = np.flatnonzero(valid)
    q = ok[rng.integers(0, len(ok), (g, m, k))]
    za = rng.integers(0, 2 ** bits, m if rng.random() < 0.5 else 1) if kind == "uniform" else \
        (rng.integers(0, 2 ** 12, 1) if kind == "shiftlog2" else np.zeros(1, np.int64))
    sr = int(rng.integers(0, 17))
    mode = rng.integers(0, 3)                        # per-row gains, one identity gain, one general gain
    sr = sr if mode == 0 else min(sr, 15)
    mr = rng.integers(0, min(2 ** sr, 2 ** 16 - 1) + 1, m if mode == 0 else 1)
    mr = np.array([2 ** sr]) if mode == 1 else mr
    out_bits = {"fixed32": 32, "fixed16": 16}.get(out_fmt, bits)
    lo, hi = F.out_range(out_fmt, out_bits)
    spec = LayerSpec(name="g", op="linear", a_kind=kind, a_bits=bits, b=b if not runtime else np.zeros((k, 0)),
                     b_bits=b_bits, za=za, mr=mr, sr=sr, mc=rng.integers(2 ** 14, 2 ** 16, n),
                     sc=np.zeros(n, np.int64), bq=np.zeros(n, np.int64), out_fmt=out_fmt, out_bits=out_bits,
                     acc_bits=48, a_base=base, m0=1, m1=5, fo=fo, outlier_capacity=None)
    typical = max(1.0, np.sqrt(k) * spec.dmax() * bmax * (1 << fo))
    spec.sc = np.clip(np.round(np.log2(spec.mc * typical / (hi * rng.uniform(0.3, 3.0, n)))), 0, F.SC_MAX).astype(np.int64)
    spec.bq = np.clip(rng.uniform(-hi, hi, n) * 2.0 ** spec.sc, -(2.0 ** 46), 2.0 ** 46).astype(np.int64)
    spec.z_out = int(rng.integers(0, hi + 1)) if out_fmt == "ucode" else 0
    outl = []
    if fo:
        for gi in range(g):
            for r in range(m):
                for c in rng.choice(k, size=int(rng.integers(0, min(k, 3) + 1)), replace=False):
                    q[gi, r, c] = za[r % len(za)]
                    outl.append([gi, r, int(c), int(rng.integers(-2 ** 15, 2 ** 15))])
    outl = np.array(sorted(outl), np.int64).reshape(-1, 4)
    tensors = {"b": b.reshape(k, n) if not runtime else np.zeros(1), "za": za, "mr": mr, "mc": spec.mc,
               "sc": spec.sc, "bq": spec.bq}
    entry = {"a": {"kind": kind, "bits": bits, "za": "za", "base": base, "m0": 1, "m1": 5}, "fo": fo,
             "b": "runtime" if runtime else "b", "b_bits": b_bits, "out_fmt": out_fmt, "out_bits": out_bits,
             "out_frac": 12, "scales": {"s_out": 1.0},
             "requant": {"mr": "mr", "sr": sr, "mc": "mc", "sc": "sc", "bq": "bq", "z_out": spec.z_out}}
    want = []
    for gi in range(g):
        o = outl[outl[:, 0] == gi][:, 1:]
        want.append(run_layer_reference(spec, q[gi], o if len(o) else None, b[gi] if runtime else None).out)
    want = np.stack(want)
    want = ref.from_fixed(want, 12) if out_fmt.startswith("fixed") else want.astype(np.float32)
    sparse = (torch.from_numpy(outl[:, :3]), torch.from_numpy(outl[:, 3])) if len(outl) else None
    for path in ("int8", "float32", "int64"):
        gemm = G.GridGemm("g", entry, tensors)
        gemm.force_path = path
        try:
            import warnings as _w
            with _w.catch_warnings():
                _w.simplefilter("ignore", RuntimeWarning)
                got = gemm.run(torch.from_numpy(q), sparse, None, torch.from_numpy(b) if runtime else None)
        except G.IntegerGridError:
            assert path == "int8"                               # not exact for this K / not available
            continue
        np.testing.assert_array_equal(got.numpy(), want, err_msg=path)
