"""Quantizers of golden/: codes on the spec grids, agreement with sim/reference.py encoders."""
import math

import numpy as np
import pytest
import torch

from vitaccel.golden.program import encoder_recip
from vitaccel.golden.quantizers import (Log2Quantizer, PerChannelWeightQuantizer, PerPatchOutlierQuantizer,
                               QuantizerError, ShiftLog2Quantizer, SymmetricQuantizer, UniformQuantizer)
from vitaccel.sim import formats as SF
from vitaccel.sim import reference as ref


@pytest.mark.parametrize("bits", SF.BITS)
def test_uniform_codes_on_grid_and_round_half_up(bits):
    x = torch.randn(4, 50, 16) * 3
    q = UniformQuantizer(bits, method="mse").calibrate(x)
    c = q.quantize(x)
    assert c.min() >= 0 and c.max() <= 2 ** bits - 1
    torch.testing.assert_close(q(x), (c.float() - q.zero_point) * q.scale.detach())
    # a value exactly half-way between two grid points rounds up (floor(v + 0.5)), unlike torch.round
    q.scale.data.fill_(0.5)
    q.zero_point.fill_(3.0)
    tie = torch.tensor([0.25, -0.25, 0.75])  # 0.5, -0.5, 1.5 steps
    assert q.quantize(tie).tolist() == [4, 3, 5]


@pytest.mark.parametrize("bits", SF.BITS)
def test_sym_codes_never_use_most_negative(bits):
    x = torch.randn(1000) * 5
    q = SymmetricQuantizer(bits, method="minmax").calibrate(x)
    c = q.quantize(x * 10)
    lo, hi = SF.sym_range(bits)
    assert c.min() == lo and c.max() == hi


def test_weight_quantizer_zero_channel_and_adaround():
    w = torch.randn(6, 20)
    w[2] = 0  # LayerNorm gamma == 0 style zero channel
    q = PerChannelWeightQuantizer(4).calibrate(w)
    assert torch.isfinite(q.scale).all() and (q.scale > 0).all()
    c = q.quantize(w)
    assert c.abs().max() <= 7 and (c[2] == 0).all()
    nearest = c.clone()
    q.init_adaround(w)
    assert q.rounding_parameters()
    # at initialisation h(V) equals the fractional part -> hard decision == nearest rounding
    assert (q.quantize(w) - nearest).abs().max() <= 1
    assert float((q.quantize(w) != nearest).float().mean()) < 0.02
    loss = q.rounding_loss(2.0)
    assert loss.item() >= 0 and loss.requires_grad
    q.harden()
    assert torch.isfinite(q(w)).all()


def test_poq_outliers_and_reference_encoder():
    torch.manual_seed(0)
    x = torch.randn(6, 12, 32)
    x[:, 3, 5] = 9.0      # outliers above alpha = 5
    x[:, 7, 1] = -12.0
    x[:, 10] = 0.0        # a zero-range row
    q = PerPatchOutlierQuantizer(4, alpha=5.0, search="minmax").calibrate(x)
    s, z = q.scale.detach(), q.zero_point
    assert (s > 0).all() and torch.isfinite(s).all() and s.numel() == 12
    c = q.quantize(x)
    assert c[0, 3, 5] == z[3] and c[0, 7, 1] == z[7]
    fq = q(x)
    assert math.isclose(float(fq[0, 3, 5]), math.floor(9.0 / float(s[3]) * 4 + 0.5) / 4 * float(s[3]), rel_tol=1e-6)
    rep = q.outlier_report()
    assert rep["outliers"] == 12 and 0 < rep["outlier_ratio"] < 0.01
    assert rep["max_tile_outliers"][16] == 2
    # against sim/reference.py: the integer encoder with R/SE derived from the scales
    xi = x[0].numpy()
    x_fx, _ = ref.to_fixed(xi, 16)
    r, se = encoder_recip(s.numpy(), 16, 0, min_se=2)
    qi, outl, _, _ = ref.encode_per_patch(x_fx, r, se, z.numpy().astype(np.int64), 4, math.floor(5.0 * 2 ** 16))
    d = np.abs(qi - c[0].numpy())
    assert d.max() <= 1 and (d > 0).mean() <= 0.01
    assert outl[:, :2].tolist() == [[3, 5], [7, 1]]
    vals = q.outlier_values(x)[0]
    assert outl[:, 2].tolist() == [int(vals[3, 5]), int(vals[7, 1])]


def test_shiftlog2_default_base_and_deterministic_calibration():
    """Base sqrt(2) at every width by default; the scale search does not depend on the global RNG."""
    x = torch.nn.functional.gelu(torch.randn(64, 197, 96, generator=torch.Generator().manual_seed(3)) * 2)
    scales = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        q = ShiftLog2Quantizer(4)
        for chunk in x.split(8):
            q.observe(chunk)
        q.finalize()
        scales.append(float(q.scale))
        assert q.base == "sqrt2" and q.qmax == 15
    assert scales[0] == scales[1]


@pytest.mark.parametrize("bits", SF.BITS)
def test_dynamic_poq_matches_reference_encoder(bits):
    """Dynamic per-patch POQ (spec 8.1.1): per-row ladder scale from the row's own inlier range."""
    g = torch.Generator().manual_seed(bits)
    x = torch.randn(4, 12, 32, generator=g) * torch.rand(4, 12, 1, generator=g) * 3  # rows of different ranges
    x[:, 3, 5] = 9.0      # outliers above alpha = 5
    x[:, 10] = 0.0        # a zero-range row
    q = PerPatchOutlierQuantizer(bits, alpha=5.0, dynamic=True).calibrate(x)
    lad = q.ladder().detach()
    inl = torch.where(x.abs() > 5, 0.0, x)
    span = inl.amax(-1).clamp(min=0) - inl.amin(-1).clamp(max=0)
    assert math.isclose(float(q.top), float(span.max()) / (2 ** bits - 1), rel_tol=1e-6)
    assert lad.numel() == SF.LADDER_MAX and torch.allclose(lad[8], q.top.detach() / 2)
    # the scale of a row: the finest ladder step whose range covers the row (checked by brute force)
    j, s, z = q.row_params(x)
    for b in range(4):
        for r in range(12):
            jj = int(j[b, r])
            assert span[b, r] <= lad[jj] * (2 ** bits - 1) or jj == 0
            assert jj == SF.LADDER_MAX - 1 or span[b, r] > lad[jj + 1] * (2 ** bits - 1)
    assert int(j[0, 10]) == SF.LADDER_MAX - 1 and len(set(j.flatten().tolist())) > 3
    # against sim/reference.py with the ladder integers derived the way the exporter does
    e = q.export()
    assert e["dynamic"] and len(e["scale"]) == SF.LADDER_MAX
    r_lad, se = encoder_recip(e["scale"], 16, 0, min_se=2)
    t_lad = np.floor(np.asarray(e["scale"], np.float64) * (2 ** bits - 1) * 2 ** 16).astype(np.int64)
    c = q.quantize(x)
    for b in range(4):
        x_fx, _ = ref.to_fixed(x[b].numpy(), 16)
        qi, outl, _, _, ji, zi = ref.encode_per_patch_dynamic(x_fx, r_lad, t_lad, se, bits, math.floor(5.0 * 2 ** 16))
        d = np.abs(qi - c[b].numpy())
        assert d.max() <= 1 and (d > 0).mean() <= 0.01
        assert (ji != j[b].numpy()).mean() <= 0.1 and (zi != z[b, :, 0].numpy()).mean() <= 0.1
        assert outl[:, :2].tolist() == torch.nonzero(x[b].abs() > 5).tolist() and [3, 5] in outl[:, :2].tolist()
    # no per-position state: any number of token rows quantizes
    assert q.quantize(x[:, :7]).shape == (4, 7, 32)
    # the real value of a code: (q - z[r]) * s_j[r], given the row parameters
    deq = q.dequantize(c, rows=(j, z[..., 0]))
    fq = q(x)
    inl_mask = x.abs() <= 5
    torch.testing.assert_close(deq[inl_mask], fq[inl_mask])
    with pytest.raises(QuantizerError, match="row"):
        q.dequantize(c)


@pytest.mark.parametrize("bits,base", [(4, "2"), (4, "sqrt2"), (6, "sqrt2"), (8, "sqrt2"), (6, "2")])
def test_shiftlog2_matches_reference(bits, base):
    torch.manual_seed(1)
    x = torch.nn.functional.gelu(torch.randn(4000) * 2)
    q = ShiftLog2Quantizer(bits, base=base).calibrate(x)
    e = q.export()
    c = q.quantize(x).numpy()
    _, _, _, qmax = SF.shiftlog2_params(bits, base)
    assert c.min() >= 0 and c.max() <= qmax
    x_fx, _ = ref.to_fixed(x.numpy(), 16)
    r, se = encoder_recip([e["scale"]], 16, 16)
    sh = int(ref.round_half_up(e["shift"] * 2 ** 16))
    ci = ref.encode_shiftlog2(x_fx, sh, int(r[0]), se, bits, base)
    d = np.abs(ci - c)
    assert d.max() <= 1 and (d > 0).mean() <= 0.01
    # dequantized values are exactly the datapath values u_A * (D - Zs)
    want = e["unit"] * (ref.decode_shiftlog2(c, bits, base).astype(np.float64) - e["zs"])
    np.testing.assert_allclose(q.dequantize(torch.from_numpy(c)).numpy(), want, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("bits", SF.BITS)
def test_log2_matches_reference_exactly(bits):
    torch.manual_seed(2)
    a = torch.softmax(torch.randn(20, 50) * 4, dim=-1)
    q = Log2Quantizer(bits)
    c = q.quantize(a).numpy()
    a_fx, _ = ref.to_fixed(a.numpy(), SF.SOFTMAX_FRAC)
    np.testing.assert_array_equal(c, ref.encode_log2(a_fx, SF.SOFTMAX_FRAC, bits))
    v = q.dequantize(torch.from_numpy(c)).numpy()
    np.testing.assert_allclose(v, ref.decode_log2(c, bits) * 2.0 ** -SF.log2_qmax(bits))


def test_bad_bits_and_nonfinite_statistics():
    with pytest.raises(QuantizerError, match="unsupported bit width"):
        UniformQuantizer(5)
    with pytest.raises(QuantizerError, match="non-finite"):
        UniformQuantizer(4).calibrate(torch.tensor([1.0, float("nan")]))
    with pytest.raises(QuantizerError, match="non-finite"):
        PerPatchOutlierQuantizer(4).calibrate(torch.full((2, 3, 4), float("inf")))
    with pytest.raises(QuantizerError, match="non-finite"):
        PerChannelWeightQuantizer(4).calibrate(torch.tensor([[1.0, float("nan")]]))


def test_hessian_weight_search_minimises_expected_output_error():
    gen = torch.Generator().manual_seed(5)
    w = torch.randn(24, 40, generator=gen) * (torch.rand(24, 1, generator=gen) + 0.2)
    w[:, 3] *= 6.0  # a large column, as on ViT outlier channels
    sq = torch.rand(40, generator=gen) ** 4  # input second moments, very uneven
    sq[3] = 1e-4    # ... and that large column sees almost no input
    mse = PerChannelWeightQuantizer(4, search="mse").calibrate(w)
    hq = PerChannelWeightQuantizer(4, search="hessian")
    hq.set_input_second_moment(sq)
    hq.calibrate(w)
    assert hq.quantize(w).abs().max() <= 7

    def expected_output_error(q):  # numpy, from the codes: sum_i E[x_i^2] (w_q - w)^2 per channel
        deq = q.quantize(w).numpy() * q.scale.detach().numpy()[:, None]
        return (((deq - w.numpy()) ** 2) * sq.numpy()[None, :]).sum(axis=1)

    e_h, e_m = expected_output_error(hq), expected_output_error(mse)
    assert np.all(e_h <= e_m * (1 + 1e-6))  # the search grid contains the mse choice
    assert e_h.sum() < 0.9 * e_m.sum()
    # without the moment it is the plain mse search; wrong sizes and bad values are errors
    plain = PerChannelWeightQuantizer(4, search="hessian").calibrate(w)
    assert torch.equal(plain.scale, mse.scale)
    bad = PerChannelWeightQuantizer(4, search="hessian")
    bad.set_input_second_moment(torch.ones(39))
    with pytest.raises(QuantizerError, match="39 values for 40"):
        bad.calibrate(w)
    with pytest.raises(QuantizerError, match="non-finite"):
        bad.set_input_second_moment(torch.tensor([1.0, float("nan")]))
    with pytest.raises(QuantizerError, match="unknown weight range search"):
        PerChannelWeightQuantizer(4, search="hess")
    from vitaccel.golden.presets import preset
    with pytest.raises(QuantizerError, match="unknown weight range search 'hess'"):
        preset("adfq", "w4a4", weight_search="hess")
