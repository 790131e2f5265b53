"""GPTQ weight rounding (golden/gptq.py) against an independent numpy reference, and in a tiny model."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from vitaccel.golden.calibrate import calibrate_model
from vitaccel.golden.gptq import gptq_model, gptq_round
from vitaccel.golden.int_eval import ProgramRunner
from vitaccel.golden.presets import preset
from vitaccel.golden.program import export_program
from vitaccel.golden.quantizers.base import QuantizerError
from vitaccel.golden.quantizers.weight import PerChannelWeightQuantizer

from golden_helpers import images, tiny_vit


def obq_reference(w, h, scale, qmax, damp=0.01, act_order=True):
    """Optimal Brain Quantization's column loop (numpy, float64), the update GPTQ reorganises.

    After column ``i`` is rounded (float32, ``floor(x + 0.5)`` as the quantizer), every remaining
    column ``j`` moves by ``-err * Hinv[i, j] / Hinv[i, i]`` and ``i`` is eliminated from the inverse
    Hessian by its Schur complement. No Cholesky factor, no blocks.
    """
    W = np.array(w, np.float64)
    H = np.array(h, np.float64)
    d = np.diag(H).copy()
    dead = d <= 0
    H[dead, dead] = 1.0
    order = np.argsort(-np.diag(H), kind="stable") if act_order else np.arange(W.shape[1])
    H = H + damp * np.diag(H).mean() * np.eye(W.shape[1])
    Hinv = np.linalg.inv(H)
    s32 = np.asarray(scale, np.float32)
    out = np.zeros_like(W)
    codes = np.zeros(W.shape, np.int64)
    for i in order:
        col = W[:, i].astype(np.float32)
        q = np.clip(np.floor(col / s32 + np.float32(0.5)), -qmax, qmax)
        out[:, i], codes[:, i] = col, q
        err = (col.astype(np.float64) - q * s32.astype(np.float64)) / Hinv[i, i]
        W -= err[:, None] * Hinv[i, :][None, :]
        Hinv = Hinv - np.outer(Hinv[:, i], Hinv[i, :]) / Hinv[i, i]
    return out, codes


def _problem(seed, out=12, n=40, rows=400, corr=True):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out, n, generator=g)
    x = torch.randn(rows, n, generator=g)
    if corr:   # correlated inputs of uneven size, as a layer's input features are
        x = x @ (torch.randn(n, n, generator=g) * 0.4 + torch.eye(n)) * (torch.rand(n, generator=g) + 0.1)
    h = (x.double().t() @ x.double())
    wq = PerChannelWeightQuantizer(4).calibrate(w)
    return w, x, h, wq


def _codes(wc, scale, qmax):
    s = np.asarray(scale, np.float32)[:, None]
    return np.clip(np.floor(np.asarray(wc, np.float32) / s + np.float32(0.5)), -qmax, qmax).astype(np.int64)


@pytest.mark.parametrize("seed,act_order", [(0, True), (1, False), (2, True)])
def test_gptq_round_equals_obq_reference(seed, act_order):
    w, _x, h, wq = _problem(seed)
    h[5, :] = h[:, 5] = 0.0          # an input never seen (dead column): nearest rounding there
    wc = gptq_round(w, h, wq.scale.detach(), wq.qmax, act_order=act_order, block=16)
    ref_w, ref_codes = obq_reference(w.numpy(), h.numpy(), wq.scale.detach().numpy(), wq.qmax, act_order=act_order)
    assert _codes(wc.numpy(), wq.scale.detach().numpy(), wq.qmax).tolist() == ref_codes.tolist()
    np.testing.assert_allclose(wc.numpy(), ref_w, rtol=1e-5, atol=1e-6)
    assert ref_codes[:, 5].tolist() == _codes(w.numpy(), wq.scale.detach().numpy(), wq.qmax)[:, 5].tolist()


def test_gptq_lowers_the_output_error_and_is_nearest_for_independent_inputs():
    w, x, h, wq = _problem(3)
    s = wq.scale.detach().numpy()
    wc = gptq_round(w, h, wq.scale.detach(), wq.qmax)

    def out_err(codes):   # numpy: |X (W - Q s)^T|^2 on the rows the Hessian came from
        return float((((w.numpy() - codes * s[:, None]) @ x.numpy().T.astype(np.float64)) ** 2).sum())
    nearest = _codes(w.numpy(), s, wq.qmax)
    assert out_err(_codes(wc.numpy(), s, wq.qmax)) < 0.7 * out_err(nearest)
    # a diagonal Hessian gives nothing to spread the error to: the codes are nearest rounding
    wd = gptq_round(w, torch.diag(torch.rand(w.shape[1], dtype=torch.float64) + 0.5), wq.scale.detach(), wq.qmax)
    assert _codes(wd.numpy(), s, wq.qmax).tolist() == nearest.tolist()


def test_gptq_round_rejects_mismatched_shapes_and_nan():
    w, _x, h, wq = _problem(4)
    with pytest.raises(QuantizerError, match="do not match"):
        gptq_round(w, h[:-1, :-1], wq.scale.detach(), wq.qmax)
    h2 = h.clone()
    h2[0, 0] = float("nan")
    with pytest.raises(QuantizerError, match="non-finite"):
        gptq_round(w, h2, wq.scale.detach(), wq.qmax)


@pytest.mark.parametrize("source", ["fp", "quant", "target"])
def test_gptq_in_a_model_sets_codes_on_the_same_grid(source):
    cfg = preset("mptq", "w4a4", mixed_precision=False, weight_rounding="gptq", gptq_source=source)
    qvit = calibrate_model(tiny_vit(), images(8), cfg, "tiny-vit", progress=False)
    layers = qvit.quant_layers()
    blocks = [n for n in layers if "blocks." in n]
    assert blocks and all(layers[n].weight_quantizer.replacement is not None for n in blocks)
    assert all(layers[n].weight_quantizer.replacement is None for n in layers if n not in blocks)  # embed, head
    changed = 0
    for n in blocks:
        wq, w = layers[n].weight_quantizer, layers[n].weight.detach()
        s = wq.scale.detach().numpy()
        want = _codes(wq.replacement.numpy(), s, wq.qmax)
        assert wq.quantize(w).tolist() == want.tolist()
        assert wq.export_with(w)["codes"].tolist() == want.tolist()
        changed += int((want != _codes(w.numpy(), s, wq.qmax)).sum())
        # AdaRound starts from GPTQ's codes
        ada = copy.deepcopy(wq)
        ada.init_adaround(w)
        ada.harden()
        assert ada.quantize(w).tolist() == want.tolist()
    assert changed > 0
    # new scales invalidate the compensated weight
    wq = layers[blocks[0]].weight_quantizer
    layers[blocks[0]].calibrate_weight()
    assert wq.replacement is None


def test_gptq_report_and_integer_program(torch_one_thread):
    cfg = preset("mptq", "w4a4", mixed_precision=False)
    qvit = calibrate_model(tiny_vit(), images(16), cfg, "tiny-vit", progress=False)
    report = gptq_model(qvit, images(16), source="quant", progress=False)
    before = np.mean([b for b, _ in report.values()])
    after = np.mean([a for _, a in report.values()])
    assert after < 0.8 * before
    # the integer program of a GPTQ model: integer grid == numpy reference, bit for bit
    prog = export_program(qvit)
    x = images(2, seed=7)
    with torch.no_grad():
        qvit.use_integer_grid(prog)
        grid_logits = qvit(x)
    runner = ProgramRunner(prog, backend="reference")
    assert torch.equal(grid_logits, torch.stack([runner.run_image(img) for img in x]))


def test_gptq_config_errors():
    with pytest.raises(QuantizerError, match="unknown weight rounding"):
        preset("mptq", "w4a4", weight_rounding="optq")
    with pytest.raises(QuantizerError, match="unknown GPTQ source"):
        preset("mptq", "w4a4", gptq_source="both")
    w, _x, _h, wq = _problem(5)
    wq.replacement = torch.zeros(3, 3)
    with pytest.raises(QuantizerError, match="does not match"):
        wq.quantize(w)
