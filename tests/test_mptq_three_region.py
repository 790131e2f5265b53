"""OPT-m three-region post-GELU quantizer: spec grid, region boundaries, calibration search."""

import numpy as np
import pytest
import torch

from vitaccel.golden.quantizers.base import QuantizerError
from vitaccel.golden.quantizers.three_region import (
    ThreeRegionQuantizer,
    three_region_fake_quant,
    three_region_m1,
)
from vitaccel.sim import formats as F
from vitaccel.sim import reference as ref


pytestmark = pytest.mark.usefixtures("torch_one_thread")


def make(bits, s0, m0, m1):
    q = ThreeRegionQuantizer(bits)
    q.set_params(s0, m0, m1)
    return q


def test_spec_decode_and_encode_examples():
    # docs/datapath.md 4.4 / 8.3 worked examples (k = 4, m0 = 2, m1 = 5), s0 = 1
    q = make(4, 1.0, 2, 5)
    assert q.decode(torch.tensor([0b0011, 0b1010, 0b0111, 0b1101])).tolist() == [12, 64, -3, -5]
    assert q.quantize(torch.tensor([10.6, 40.0])).tolist() == [0b0011, 0b1001]
    assert q.fake_quant(torch.tensor([10.6, 40.0])).tolist() == [12.0, 32.0]


@pytest.mark.parametrize("bits", F.BITS)
@pytest.mark.parametrize("m0,m1", [(0, 0), (0, 3), (2, 5), (3, 9), (15, 15)])
def test_codes_match_reference_encoder(bits, m0, m1):
    frac = 12
    s0 = 2.0 ** -5  # exact: R / 2^SE = 2^16 / (s0 * 2^F) = 2^9
    rng = np.random.default_rng(bits * 100 + m0 * 16 + m1)
    top = int(1.2 * ((1 << (bits - 2)) - 1) * 2 ** m1 * s0 * 2 ** frac) + 64
    x_fx = rng.integers(-int(0.2 * 2 ** frac), top, size=4000)
    x_fx[:200] = np.arange(-100, 100)  # dense around 0 (many exact ties)
    q = make(bits, s0, m0, m1)
    x = torch.from_numpy(ref.from_fixed(x_fx, frac).astype(np.float64))
    codes = q.quantize(x).numpy()
    for r, se in ((512, 0), (1 << 20, 11)):
        np.testing.assert_array_equal(codes, ref.encode_three_region(x_fx, r, se, bits, m0, m1))
    # decode agrees with the reference decode, and fake-quant equals decode * s0
    d = ref.decode_three_region(codes, bits, m0, m1)
    np.testing.assert_array_equal(q.decode(torch.from_numpy(codes)).numpy(), d)
    np.testing.assert_array_equal(three_region_fake_quant(x, s0, bits, m0, m1).numpy(), d * s0)
    # every code of the format decodes identically
    allc = np.arange(1 << bits)
    np.testing.assert_array_equal(q.decode(torch.from_numpy(allc)).numpy(),
                                  ref.decode_three_region(allc, bits, m0, m1))


def test_codes_match_reference_with_integer_reciprocal():
    """A general s0: the encoder uses R ~ 2^(16+SE)/(s0 2^F); codes may differ only at rounding ties
    (spec section 11: < 1 %, by one step)."""
    bits, m0, m1, frac, s0 = 6, 2, 6, 12, 0.0123
    se = 13
    r = round(2 ** (16 + se) / (s0 * 2 ** frac))
    assert r < 2 ** 24
    s0_eff = 2 ** (16 + se) / (r * 2 ** frac)
    rng = np.random.default_rng(1)
    x_fx = rng.integers(-700, 40000, size=20000)
    codes = make(bits, s0_eff, m0, m1).quantize(torch.from_numpy(x_fx / 2.0 ** frac)).numpy()
    expect = ref.encode_three_region(x_fx, r, se, bits, m0, m1)
    diff = codes != expect
    assert diff.mean() < 0.01
    dv = np.abs(ref.decode_three_region(codes, bits, m0, m1) - ref.decode_three_region(expect, bits, m0, m1))
    assert np.all(dv[diff] <= 2 ** m1)


def test_region_boundaries():
    bits, m0, m1 = 4, 1, 4  # P = 3, s1 = 2, s2 = 16 (s0 = 1)
    q = make(bits, 1.0, m0, m1)
    v = torch.tensor([0.0, -0.49, -0.5, -6.5, -7.0, -9.0, 6.99, 7.0, 3.0, 1000.0])
    codes = q.quantize(v).tolist()
    assert codes[0] == 0 and codes[1] == 0          # 0 and tiny negatives -> code 0
    assert codes[2] == 0b0101                        # -0.5 rounds half up to n = 1 (R0)
    assert codes[3] == 0b1111 and codes[4] == 0b1111  # -7 (n = 7 = (1 << 2) | 3)
    assert codes[5] == 0b1111                        # negative side saturates at 2^(k-1) - 1
    assert codes[6] == 0b0011                        # 6.99 / 2 -> 3.495 -> 3 <= P: R1
    assert codes[7] == 0b1000                        # 7 / 2 = 3.5 -> 4 > P: R2, round(7/16) = 0
    assert codes[8] == 0b0010                        # 3 / 2 = 1.5 -> 2 (half up)
    assert codes[9] == 0b1011                        # R2 saturates at P
    assert q.fake_quant(v).tolist() == [0, 0, -1, -7, -7, -7, 6, 0, 4, 48]


def gelu_data(n=20000, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.gelu(torch.randn(n, generator=g) * 2.5 + 0.3)


@pytest.mark.parametrize("bits", F.BITS)
def test_calibration_covers_range_and_search_beats_naive(bits):
    x = gelu_data()
    q = ThreeRegionQuantizer(bits, search_s0=False)
    for chunk in x.split(5000):
        q.observe(chunk)
    q.finalize()
    p, nmax = (1 << (bits - 2)) - 1, (1 << (bits - 1)) - 1
    s0 = float(q.s0.detach())
    assert s0 == pytest.approx(abs(float(x.min())) / nmax, rel=1e-6)
    assert q.m1 == three_region_m1(float(x.max()), s0, bits)
    assert p * s0 * 2 ** q.m1 >= float(x.max())
    assert q.m1 == 0 or p * s0 * 2 ** (q.m1 - 1) < float(x.max())
    assert 0 <= q.m0 <= q.m1
    mse = lambda m0, s=s0, m1=q.m1: float(((three_region_fake_quant(x, s, bits, m0, m1) - x) ** 2).mean())
    searched = mse(q.m0)
    naive = [mse(0), mse(q.m1)]
    assert searched <= min(naive) and searched < max(naive)
    # joint s0 search is at least as good
    q2 = ThreeRegionQuantizer(bits, search_s0=True).calibrate(x)
    assert float(((q2.fake_quant(x).detach() - x) ** 2).mean()) <= searched + 1e-12
    e = q2.export()
    assert e["fmt"] == "three_region" and e["bits"] == bits and (e["m0"], e["m1"]) == (q2.m0, q2.m1)
    assert e["s0"] == e["scale"] > 0


def test_protocol_states_and_gradients():
    q = ThreeRegionQuantizer(4)
    x = gelu_data(100)
    with pytest.raises(QuantizerError, match="before calibration"):
        q(x)
    q.observing = True
    assert torch.equal(q(x), x)
    q.observing = False
    q.finalize()
    q.enabled = False
    assert torch.equal(q(x), x)
    q.enabled = True
    assert not q.s0.requires_grad
    q.s0.requires_grad_(True)
    xr = x.clone().requires_grad_(True)
    y = q(xr)
    y.sum().backward()
    assert q.s0.grad is not None and torch.isfinite(q.s0.grad)
    assert set(xr.grad.unique().tolist()) <= {0.0, 1.0} and xr.grad.sum() > 0
    assert q.scale_parameters() == [q.s0]


def test_bad_parameters_raise():
    with pytest.raises(QuantizerError):
        make(4, 1.0, 3, 2)
    with pytest.raises(QuantizerError):
        make(4, 1.0, 0, 16)
    with pytest.raises(QuantizerError):
        make(4, 0.0, 0, 1)
    with pytest.raises(QuantizerError, match="non-finite"):
        ThreeRegionQuantizer(4).observe(torch.tensor([float("nan")]))
    with pytest.raises(QuantizerError, match="without observed data"):
        ThreeRegionQuantizer(4).finalize()
    with pytest.raises(QuantizerError):
        make(4, 1.0, 0, 1).decode(torch.tensor([16]))
    with pytest.raises(QuantizerError, match="unsupported"):
        ThreeRegionQuantizer(5)


@pytest.mark.parametrize("bits", F.BITS)
def test_region2_clipping_search(bits):
    """``m1_clip``: the candidates are the covering search's plus smaller ``m1``; on data with a few
    large values the search clips region 2 and its error is below the covering search's."""
    torch.manual_seed(3)
    x = torch.cat([gelu_data(), torch.tensor([40.0, 55.0])])     # two far outliers
    cover = ThreeRegionQuantizer(bits).calibrate(x)
    clip = ThreeRegionQuantizer(bits, m1_clip=3).calibrate(x)
    c0, c3 = cover.candidates(), clip.candidates()
    assert set(c0) < set(c3)
    by_s0 = {}
    for s0, _, m1 in c3:
        by_s0.setdefault(s0, set()).add(m1)
    for s0, m1s in by_s0.items():
        top = three_region_m1(55.0, s0, bits)
        assert m1s == set(range(max(top - 3, 0), top + 1))
    err = lambda q: float(((q.fake_quant(x).detach() - x) ** 2).mean())
    assert err(clip) <= err(cover)                  # a superset of candidates
    if bits == 4:                                   # 3 steps per positive region: clipping pays
        assert err(clip) < err(cover)
        assert clip.m1 < three_region_m1(55.0, float(clip.s0), bits)
    with pytest.raises(QuantizerError, match="m1_clip"):
        ThreeRegionQuantizer(4, m1_clip=-1)
    from vitaccel.golden.presets import preset
    assert preset("mptq", "w4a4", fc2_clip=2).fc2_clip == 2
    with pytest.raises(QuantizerError, match="fc2_clip"):
        preset("mptq", "w4a4", fc2_clip=16)
