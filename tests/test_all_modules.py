"""MPTQ-ViT's "all modules" setting (``QuantConfig.all_modules``): the LayerNorm inputs through the
power-of-two-factor quantizer, the softmax inputs through a per-tensor uniform one; fake-quant only."""
import numpy as np
import pytest
import torch
from torch import nn

from vitaccel.golden.calibrate import calibrate_model
from vitaccel.golden.presets import preset
from vitaccel.golden.program import ProgramError, export_program
from vitaccel.golden.qlayers import QuantAttention, QuantLayerNorm
from vitaccel.golden.quantizers import QuantizerError
from vitaccel.golden.quantizers.ptf import PowerOfTwoFactorQuantizer
from vitaccel.sim.errors import UserError

from golden_helpers import images, tiny_vit


def _ptf_reference(x: np.ndarray, bits: int, max_exp: int):
    """The power-of-two-factor codes of golden/quantizers/ptf.py's docstring, in numpy (float32 steps)."""
    qmax = 2 ** bits - 1
    lo, hi = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
    coarse = np.float32((hi - lo) / qmax)
    z = np.float32(np.clip(np.floor(np.float32(-lo) / coarse + np.float32(0.5)), 0, qmax))
    s = np.float32(coarse / np.float32(2 ** max_exp))

    def codes(a):
        step = np.float32(s * np.float32(2.0 ** a))
        return np.clip(np.floor(x / step + np.float32(0.5)) + z, 0, qmax), step

    errs = []
    for a in range(max_exp + 1):
        q, step = codes(a)
        errs.append((((q - z) * step - x).astype(np.float64) ** 2).sum(0))
    errs = np.stack(errs)
    alpha = np.array([max(a for a in range(max_exp + 1) if errs[a, c] <= errs[:, c].min() * (1 + 1e-9))
                      for c in range(x.shape[1])])
    q = np.stack([codes(alpha[c])[0][:, c] for c in range(x.shape[1])], axis=1)
    return alpha, q.astype(np.int64), z


@pytest.mark.parametrize("bits", [4, 6, 8])
def test_ptf_codes_and_exponents_match_the_reference(bits):
    g = torch.Generator().manual_seed(bits)
    # channel widths 2^-3 .. 2^3 times a unit and one channel 20 times wider (the residual stream's outliers)
    width = torch.tensor([2.0 ** (c % 7 - 3) for c in range(15)] + [20.0])
    x = (torch.randn(400, 16, generator=g) * width - 0.3 * width).float()
    q = PowerOfTwoFactorQuantizer(bits).calibrate(x)
    alpha, codes, z = _ptf_reference(x.numpy(), bits, q.max_exp)
    assert float(q.zero_point) == float(z)
    assert q.alpha.int().tolist() == alpha.tolist()
    assert torch.equal(q.quantize(x), torch.from_numpy(codes))
    # the widest channel sets the range (largest exponent); narrower ones take finer steps
    assert int(q.alpha[15]) == q.max_exp and int(q.alpha[:15].min()) < q.max_exp
    # dequantize(quantize) is the fake quantization; zero is exact
    assert torch.allclose(q.dequantize(q.quantize(x)), q(x))
    assert float(q(torch.zeros(1, 16)).abs().max()) == 0.0


def test_ptf_refuses_export_and_bad_input():
    q = PowerOfTwoFactorQuantizer(6, name="blocks.0.norm1.input").calibrate(torch.randn(10, 4))
    with pytest.raises(QuantizerError, match="fake-quant only"):
        q.export()
    with pytest.raises(QuantizerError, match="saw no calibration data"):
        PowerOfTwoFactorQuantizer(6).finalize()
    with pytest.raises(QuantizerError, match="non-finite"):
        PowerOfTwoFactorQuantizer(6).observe(torch.tensor([[1.0, float("nan")]]))
    with pytest.raises(QuantizerError, match="max_exp"):
        PowerOfTwoFactorQuantizer(6, max_exp=9)


def test_all_modules_quantizes_every_layernorm_and_softmax_input():
    fp = tiny_vit()
    x = images(8)
    with torch.no_grad():
        ref = fp(x)
    n_norms = sum(isinstance(m, nn.LayerNorm) for m in fp.modules())
    # baseline: no SQ-b reparameterisation, so with every quantizer off the model is the float one
    qvit = calibrate_model(tiny_vit(), x, preset("baseline", "w6a6", all_modules=True), "tiny-vit", progress=False)
    wrapped = [m for m in qvit.model.modules() if isinstance(m, QuantLayerNorm)]
    attns = [m for m in qvit.model.modules() if isinstance(m, QuantAttention)]
    assert len(wrapped) == n_norms == 5 and all(w.input_quantizer.calibrated for w in wrapped)
    assert attns and all(a.softmax_quantizer is not None and a.softmax_quantizer.calibrated for a in attns)
    names = {n for n, _ in qvit.activation_quantizers()}
    assert "blocks.0.norm1.input_quantizer" in names and "blocks.1.attn.softmax_quantizer" in names
    with torch.no_grad():
        assert not torch.allclose(qvit(x), ref, rtol=0, atol=1e-3)
        # every quantizer off: the float model again (the LayerNorms' parameters are the model's own)
        assert torch.allclose(qvit.set_quant(False, False)(x), ref, rtol=0, atol=1e-5)
        qvit.set_quant(True, True)
        # only the new quantizers on: the output moves (they are in the forward path)
        for _, q in qvit.quantizers():
            q.enabled = isinstance(q, PowerOfTwoFactorQuantizer) or q.name.endswith("softmax_in")
        assert not torch.allclose(qvit(x), ref, rtol=0, atol=1e-3)
    # without the setting nothing is wrapped
    plain = calibrate_model(tiny_vit(), x, preset("baseline", "w6a6"), "tiny-vit", progress=False)
    assert not any(isinstance(m, QuantLayerNorm) for m in plain.model.modules())
    assert all(a.softmax_quantizer is None for a in plain.model.modules() if isinstance(a, QuantAttention))


def test_all_modules_has_no_integer_program():
    qvit = calibrate_model(tiny_vit(), images(8), preset("mptq", "w6a6", all_modules=True), "tiny-vit",
                           progress=False)
    with pytest.raises(ProgramError, match="no integer program or integer grid"):
        export_program(qvit)
    with pytest.raises(UserError, match="all_modules"):
        qvit.use_integer_grid()
    assert not qvit.on_integer_grid
