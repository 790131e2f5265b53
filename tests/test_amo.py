"""AMO (ADFQ-ViT attention-score enhanced module-wise optimisation) on a tiny random timm ViT."""
import copy

import pytest
import timm
import torch

from vitaccel.golden.calibrate import calibrate_model
from vitaccel.golden.presets import preset
from vitaccel.golden.quantizers.base import QuantizerError
from vitaccel.golden.reconstruct import AMOConfig, HARD_V, find_amo_units, reconstruct, reconstruct_amo


pytestmark = pytest.mark.usefixtures("torch_one_thread")


def tiny_vit(seed=0):
    torch.manual_seed(seed)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8,
                              embed_dim=32, depth=2, num_heads=2, num_classes=10).eval()
    with torch.no_grad():  # larger weights than timm's init so that activations are not ~0
        for name, p in model.named_parameters():
            if p.dim() == 2 and "blocks" in name:
                p.mul_(8.0)
    return model


def quantized(seed=0, n=16, **cfg):
    model = tiny_vit(seed)
    fp = copy.deepcopy(model)
    x = torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
    qvit = calibrate_model(model, x, preset("adfq", "w4a4", amo=False, **cfg), progress=False)
    return qvit, fp, x


def assert_grid_is_program(qvit, x):
    """The model's integer grid (its exported program) gives the program runner's logits on ``x``;
    returns them."""
    from vitaccel.golden.int_eval import ProgramRunner
    from vitaccel.golden.program import export_program
    prog = export_program(qvit)
    runner = ProgramRunner(prog, backend="reference")
    with torch.no_grad():
        qvit.use_integer_grid(prog)
        grid = qvit(x)
        qvit.use_float_fakequant()
    assert torch.equal(grid, torch.stack([runner.run_image(img) for img in x]))
    return grid


def test_units_in_order():
    qvit, _, _ = quantized()
    assert find_amo_units(qvit) == [("blocks.0.attn", "mha"), ("blocks.0.mlp", "mlp"),
                                    ("blocks.1.attn", "mha"), ("blocks.1.mlp", "mlp")]


def test_reconstruction_lowers_error_and_hardens():
    qvit, fp, x = quantized()
    # AMO reconstructs the blocks' outputs: compare the features the head reads (the 10 logits of a
    # random head are too weak a signal; they improve for some seeds and not others)
    with torch.no_grad():
        ref, before = fp.forward_features(x), qvit.model.forward_features(x)
    reps = reconstruct_amo(qvit, x, iters=60, batch_size=8, progress=False, revert_if_worse=False,
                           device="cpu")
    assert [r.name for r in reps] == ["blocks.0.attn", "blocks.0.mlp", "blocks.1.attn", "blocks.1.mlp"]
    for r in reps:
        assert len(r.losses) == 60 and all(torch.isfinite(torch.tensor(r.losses)))
        assert (r.kl_before is not None) == (r.kind == "mha")
    # hard-rounded, reconstructed modules are better than nearest rounding on the calibration set
    assert sum(r.mse_after for r in reps) < sum(r.mse_before for r in reps)
    assert sum(r.mse_after < r.mse_before for r in reps) >= 3
    with torch.no_grad():
        after = qvit.model.forward_features(x)
    assert ((after - ref) ** 2).mean() < 0.97 * ((before - ref) ** 2).mean()
    # AdaRound is hard: V = +-HARD_V, hard rounding, integer codes reproducible
    for name, wq in qvit.weight_quantizers():
        if "blocks" in name:
            v = wq.rounding_parameters()[0]
            assert not wq.soft and set(v.unique().tolist()) <= {HARD_V, -HARD_V}
            assert not v.requires_grad
    lin = qvit.model.blocks[0].attn.qkv
    c1 = lin.weight_quantizer.quantize(lin.weight)
    assert torch.equal(c1, lin.weight_quantizer.quantize(lin.weight))
    assert c1.abs().max() <= 7


def test_training_loss_decreases_with_separate_fp_model():
    qvit, fp, x = quantized(seed=1)
    # regulariser off: the (MSE + KL) objective itself must go down while V is optimised
    reps = reconstruct_amo(qvit, x, fp_model=fp, units=[("blocks.0.attn", "mha"), ("blocks.0.mlp", "mlp")],
                           iters=80, batch_size=16, round_weight=0.0, progress=False)
    for r in reps:
        first, last = sum(r.rec_losses[:10]) / 10, sum(r.rec_losses[-10:]) / 10
        assert last < 0.97 * first, (r.name, first, last)
    assert reps[0].kl_before > 0  # FP probabilities from timm's attn_drop (fused attention off)
    assert fp.blocks[0].attn.fused_attn == timm.layers.use_fused_attn()  # restored


def test_scale_only_moves_scales_and_never_worse():
    qvit, fp, x = quantized(seed=1)
    q = qvit.model.blocks[0].attn.proj.input_quantizer
    s0 = q.scale.detach().clone()
    r = reconstruct_amo(qvit, x, units=[("blocks.0.attn", "mha")], iters=30, batch_size=16,
                        adaround=False, lr_scale=1e-3, progress=False)[0]
    assert r.mse_after <= r.mse_before
    assert r.reverted or not torch.equal(q.scale.detach(), s0)
    assert not q.scale.requires_grad


def test_calibrate_entry_point_and_errors():
    qvit, _, x = quantized(seed=2, n=8)
    reps = reconstruct(qvit, x, config=preset("adfq", "w4a4"), progress=False, iters=5, batch_size=4)
    assert len(reps) == 4
    with pytest.raises(ValueError, match="warmup"):
        AMOConfig(warmup=2.0)
    with pytest.raises(ValueError, match="empty"):
        reconstruct_amo(qvit, [], progress=False)
    with pytest.raises(ValueError, match="not found"):
        reconstruct_amo(qvit, x, units=[("blocks.9.attn", "mha")], progress=False)
    qvit.model.blocks[0].mlp.fc2.input_quantizer.calibrated = False
    with pytest.raises(QuantizerError, match="not calibrated"):
        reconstruct_amo(qvit, x, iters=1, progress=False)


def test_swin_windowed_attention():
    """Shifted-window blocks: inputs are (images x windows) rows; mini-batches keep whole images."""
    torch.manual_seed(0)
    model = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, img_size=56, patch_size=4,
                              embed_dim=16, depths=(2, 1), num_heads=(1, 2), window_size=7,
                              num_classes=10).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2 and "blocks" in name:
                p.mul_(8.0)
    x = torch.randn(8, 3, 56, 56)
    qvit = calibrate_model(model, x, preset("adfq", "w4a4", amo=False), progress=False)
    reps = reconstruct_amo(qvit, x, iters=40, batch_size=4, progress=False)
    assert [r.name for r in reps] == ["layers.0.blocks.0.attn", "layers.0.blocks.0.mlp",
                                      "layers.0.blocks.1.attn", "layers.0.blocks.1.mlp",
                                      "layers.1.blocks.0.attn", "layers.1.blocks.0.mlp"]
    assert all(r.kl_before is not None for r in reps if r.kind == "mha")
    assert all(r.mse_after <= r.mse_before for r in reps)  # worse modules are reverted
    assert sum(r.mse_after < r.mse_before and not r.reverted for r in reps) >= 4


def test_ln_error_weights_match_layernorm_first_order():
    """(gamma_c / sigma_t)^2 is what a LayerNorm does to a small error orthogonal to its mean/x-hat."""
    from vitaccel.golden.reconstruct import ln_error_weights

    gen = torch.Generator().manual_seed(3)
    resid = torch.randn(2, 5, 16, generator=gen) * torch.linspace(0.5, 3.0, 5)[None, :, None]
    norm = torch.nn.LayerNorm(16)
    with torch.no_grad():
        norm.weight.copy_(torch.rand(16, generator=gen) + 0.5)
    w = ln_error_weights(resid, [norm], resid).double()
    g = norm.weight.detach().double() ** 2
    sigma2 = resid.double().var(-1, unbiased=False) + norm.eps
    assert torch.allclose(w, (g / g.mean())[None, None, :] / sigma2[..., None])
    # first-order check against the LayerNorm itself: error projected off 1 and x-hat
    xhat = (resid - resid.mean(-1, keepdim=True)) / sigma2.sqrt().float()[..., None]
    e = torch.randn(resid.shape, generator=gen)
    for v in (torch.ones_like(xhat) / 4.0, xhat / 4.0):
        e = e - (e * v).sum(-1, keepdim=True) / (v * v).sum(-1, keepdim=True) * v
    e = 1e-3 * e
    with torch.no_grad():
        nd = norm.double()
        d = nd(resid.double() + e.double()) - nd(resid.double())
    assert torch.allclose((d ** 2).sum(-1), (w * g.mean() * e.double() ** 2).sum(-1), rtol=1e-3)
    # gamma == 0 in one LayerNorm does not hide a channel another one reads
    zero = torch.nn.LayerNorm(16)
    with torch.no_grad():
        zero.weight[4] = 0.0
    w2 = ln_error_weights(resid, [zero, torch.nn.LayerNorm(16)], resid)
    assert bool((w2[..., 4] > 0).all())
    # no LayerNorm after the module, or another layout: plain MSE
    assert ln_error_weights(resid, [], resid) is None
    assert ln_error_weights(resid, [norm], resid.reshape(10, 16)) is None


def test_ln_weighted_reconstruction():
    qvit, fp, x = quantized(seed=4)
    reps = reconstruct_amo(qvit, x, iters=40, batch_size=8, progress=False, ln_weighted=True, device="cpu")
    assert all(r.ln_weighted for r in reps)  # every module, the last MLP through the final norm
    assert all(r.mse_after <= r.mse_before for r in reps)  # revert_if_worse on the weighted error
    assert sum(r.mse_after < r.mse_before for r in reps) >= 2
    plain = reconstruct_amo(quantized(seed=4)[0], x, iters=0, progress=False, device="cpu")
    assert not any(r.ln_weighted for r in plain)


def test_hessian_weight_ranges_use_fp_input_moments():
    qvit, fp, x = quantized(seed=5, weight_search="hessian")
    seen = {}
    hooks = [fp.get_submodule(n).register_forward_pre_hook(
        lambda _m, a, n=n: seen.setdefault(n, []).append(a[0].reshape(-1, a[0].shape[-1])))
        for n in ("blocks.0.attn.qkv", "blocks.1.mlp.fc2", "head")]
    with torch.no_grad():
        fp(x)
    for h in hooks:
        h.remove()
    for n, xs in seen.items():
        ref = (torch.cat(xs).double() ** 2).mean(0).float()
        got = qvit.model.get_submodule(n).weight_quantizer.input_sq
        assert torch.allclose(got, ref, rtol=1e-5), n
    assert qvit.model.patch_embed.proj.weight_quantizer.input_sq is None  # conv: plain mse search
    with torch.no_grad():
        assert torch.isfinite(qvit(x)).all()


def test_readout_last_block_reconstructs_only_the_class_token():
    from vitaccel.golden.reconstruct import readout_rows

    qvit, fp, x = quantized(seed=6)
    units = find_amo_units(qvit)
    assert [readout_rows(qvit.model, n, units) for n, _ in units] == [None, None, [0], [0]]
    fp.global_pool = "avg"
    assert readout_rows(fp, "blocks.1.mlp", units) is None
    last = [("blocks.1.mlp", "mlp")]
    r = reconstruct_amo(qvit, x, units=last, iters=0, progress=False, readout_last_block=True)[0]
    assert r.readout_rows == [0]
    # independently: the class token's output error over its power, on the same inputs
    blk = qvit.model.blocks[1]
    with torch.no_grad():
        qin = []
        h = blk.mlp.register_forward_pre_hook(lambda _m, a: qin.append(a[0]))
        qvit(x)
        h.remove()
        tgt = []
        h = fp.blocks[1].mlp.register_forward_hook(lambda _m, _a, o: tgt.append(o))
        fp(x)
        h.remove()
        out = blk.mlp(qin[0])
    ref = float(((out[:, 0] - tgt[0][:, 0]) ** 2).mean() / (tgt[0][:, 0] ** 2).mean())
    assert r.mse_before == pytest.approx(ref, rel=1e-4)
    rep = reconstruct_amo(qvit, x, units=[("blocks.1.attn", "mha")], iters=5, batch_size=8, progress=False,
                          readout_last_block=True)[0]
    assert rep.readout_rows == [0] and rep.kl_before is not None


def test_input_drop_mixes_fp_and_quantized_inputs():
    """QDrop (input_drop = p): each optimisation step feeds the module a mix of the quantized model's
    input and the FP model's input to it, element by element, with about a fraction p from FP."""
    qvit, fp, x = quantized(seed=2)

    def module_input(model, unit):
        got = []
        h = unit.register_forward_pre_hook(lambda _m, args: got.append(args[0].detach().clone()))
        with torch.no_grad():
            model(x)
        h.remove()
        return got[0]
    unit = qvit.model.blocks[1].attn
    q_in, fp_in = module_input(qvit, unit), module_input(fp, fp.blocks[1].attn)
    differ = (q_in - fp_in).abs() > 1e-6
    assert differ.float().mean() > 0.5
    seen = []
    h = unit.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach().clone()))
    try:
        reconstruct_amo(qvit, x, fp_model=fp, units=[("blocks.1.attn", "mha")], iters=5, batch_size=4,
                        input_drop=0.3, progress=False, revert_if_worse=False, adaround=False,
                        forward_batch=len(x))
    finally:
        h.remove()
    steps = [t for t in seen if t.shape[0] == 4]  # the optimisation steps (evaluation runs all 16 images)
    assert len(steps) == 5
    from_fp = from_q = 0
    for t in steps:
        for img in t:  # the sampled image: the one each element matches in one of the two inputs
            match = ((img - q_in).abs() < 1e-6) | ((img - fp_in).abs() < 1e-6)
            i = int(match.flatten(1).sum(1).argmax())
            assert bool(match[i].all())
            from_fp += int((((img - fp_in[i]).abs() < 1e-6) & differ[i]).sum())
            from_q += int((((img - q_in[i]).abs() < 1e-6) & differ[i]).sum())
    assert 0.25 < from_fp / (from_fp + from_q) < 0.35
    with pytest.raises(ValueError, match="input_drop"):
        AMOConfig(input_drop=1.5)


def test_block_granularity_reconstructs_whole_blocks():
    """granularity="block": one unit per transformer block (attention and MLP with both residual
    additions), its error measured on the block's output, with the attention KL term; its initial
    error equals the block output error computed independently."""
    qvit, fp, x = quantized(seed=3)
    assert find_amo_units(qvit, "block") == [("blocks.0", "block"), ("blocks.1", "block")]
    from vitaccel.golden.reconstruct import readout_rows

    units = find_amo_units(qvit, "block")
    assert [readout_rows(qvit.model, n, units) for n, _ in units] == [None, [0]]
    with torch.no_grad():
        ref, before = fp.forward_features(x), qvit.model.forward_features(x)
    # independently: block 0's output error on the quantized model's input to it, over the FP power
    blk = qvit.model.blocks[0]
    with torch.no_grad():
        qin, tgt = [], []
        h = blk.register_forward_pre_hook(lambda _m, a: qin.append(a[0]))
        qvit(x)
        h.remove()
        h = fp.blocks[0].register_forward_hook(lambda _m, _a, o: tgt.append(o))
        fp(x)
        h.remove()
        out = blk(qin[0])
    ref0 = float(((out - tgt[0]) ** 2).mean() / (tgt[0] ** 2).mean())
    reps = reconstruct_amo(qvit, x, fp_model=fp, iters=60, batch_size=8, progress=False,
                           revert_if_worse=False, device="cpu", granularity="block")
    assert [(r.name, r.kind) for r in reps] == [("blocks.0", "block"), ("blocks.1", "block")]
    assert all(r.kl_before is not None and len(r.losses) == 60 for r in reps)
    assert sum(r.mse_after for r in reps) < sum(r.mse_before for r in reps)
    with torch.no_grad():
        after = qvit.model.forward_features(x)
    assert ((after - ref) ** 2).mean() < ((before - ref) ** 2).mean()
    assert reps[0].mse_before == pytest.approx(ref0, rel=1e-4)
    for name, wq in qvit.weight_quantizers():
        if "blocks" in name:
            assert set(wq.rounding_parameters()[0].unique().tolist()) <= {HARD_V, -HARD_V}
    with pytest.raises(ValueError, match="granularity"):
        AMOConfig(granularity="layer")
    from vitaccel.golden.presets import QuantConfig
    with pytest.raises(QuantizerError, match="granularity"):
        QuantConfig(method="adfq", amo_granularity="layer")


def test_learned_weight_scales_keep_codes_and_fold_into_the_scale():
    """learn_weight_scales: AMO learns a factor of each weight channel's dequantisation scale while the
    codes come from the calibrated scale (AdaRound); the factor is folded into the exported scale and
    the exported codes are the ones AdaRound chose (the same rounding decisions with and without the
    factor, checked against the codes the fold saw), the fake-quant weight is exactly codes x scale."""
    qvit, fp, x = quantized(seed=4)
    lin = qvit.model.blocks[0].mlp.fc1
    wq = lin.weight_quantizer
    s0 = wq.scale.detach().clone()
    seen = {}
    fold = type(wq).fold_dequant_scale

    def spy(self, w):  # the codes and factor just before the fold (hardened AdaRound, calibrated scale)
        if self is wq:
            seen["codes"] = torch.floor(w / s0[:, None]) + (self.h() >= 0.5).to(w.dtype)
            seen["m"] = self.dmul.detach().clone()
        fold(self, w)
    type(wq).fold_dequant_scale = spy
    try:
        reps = reconstruct_amo(qvit, x, fp_model=fp, units=[("blocks.0.mlp", "mlp")], iters=40, batch_size=8,
                               progress=False, revert_if_worse=False, learn_weight_scales=True,
                               lr_weight_scale=1e-2)
    finally:
        type(wq).fold_dequant_scale = fold
    assert len(reps) == 1 and not reps[0].reverted
    want_codes = seen["codes"].clamp(-wq.qmax, wq.qmax)
    assert not torch.equal(seen["m"], torch.ones_like(seen["m"]))  # the factors moved ...
    assert torch.allclose(wq.scale.detach(), s0 * seen["m"])       # ... and are now the scale
    assert wq.dmul is None and wq.alpha is None
    codes = wq.quantize(lin.weight)
    assert torch.equal(codes, want_codes.to(torch.int64))
    assert torch.equal(wq.fake_quant(lin.weight), codes.float() * wq.scale.detach()[:, None])
    exp = wq.export_with(lin.weight)
    assert (exp["codes"] == want_codes.numpy()).all() and (exp["scale"] == wq.scale.detach().numpy()).all()
    # a quantizer whose factor is not folded yet refuses to export
    other = qvit.model.blocks[1].mlp.fc1.weight_quantizer
    other.init_dequant_scale()
    with pytest.raises(QuantizerError, match="not folded"):
        other.export_with(qvit.model.blocks[1].mlp.fc1.weight)
    other.drop_dequant_scale()
    # the setting reaches AMO from the QuantConfig (amo_* fields)
    qvit2, _, x2 = quantized(seed=4)
    before = {n: q.scale.detach().clone() for n, q in qvit2.weight_quantizers() if "blocks" in n}
    reconstruct(qvit2, x2, config=preset("adfq", "w4a4", amo_learn_weight_scales=True, amo_lr_weight_scale=1e-2),
                progress=False, iters=5, batch_size=4, revert_if_worse=False)
    after = dict(qvit2.weight_quantizers())
    assert all(after[n].dmul is None for n in before)
    assert all(not torch.equal(after[n].scale.detach(), s) for n, s in before.items())
    # the exported program (learned scales) is what the integer grid of the model computes
    assert_grid_is_program(qvit2, x2[:2])


def test_bias_correction_zeroes_the_mean_error_on_the_quantized_path_only():
    """bias_correction: after a module's rounding is hard, the bias of its last linear (FC2 here) is
    shifted so that the mean output error per channel over the calibration images is 0 (recomputed
    here from the module's own inputs and FP targets), the output MSE falls, the FP path of the same
    model keeps the FP bias, and the exported program (corrected bias) is what the integer grid computes."""
    qvit, fp, x = quantized(seed=5)
    fc2 = qvit.model.blocks[0].mlp.fc2
    bias0 = fc2.bias.detach().clone()
    reps = reconstruct_amo(qvit, x, units=[("blocks.0.mlp", "mlp")], iters=20, batch_size=8, progress=False,
                           revert_if_worse=False, bias_correction=True, input_drop=0.0)
    assert reps[0].bias_shift is not None and reps[0].bias_shift > 0
    assert fc2.bias_shift is not None and torch.equal(fc2.bias.detach(), bias0)  # the FP bias is untouched
    seen = {}

    def grab(key):
        def hook(_m, args, out):
            seen[key] = (args[0].detach(), out.detach())
        return hook
    h1 = qvit.model.blocks[0].mlp.register_forward_hook(grab("q"))
    h2 = fp.blocks[0].mlp.register_forward_hook(grab("fp"))
    with torch.no_grad():
        qvit.model(x)
        fp(x)
    h1.remove()
    h2.remove()
    q_out, fp_out = seen["q"][1], seen["fp"][1]
    err = (fp_out - q_out).reshape(-1, q_out.shape[-1])
    assert err.mean(0).abs().max() < 1e-4 * err.abs().mean() + 1e-6
    with torch.no_grad():  # without the shift the same inputs give a larger error, off by a constant per channel
        shift, fc2.bias_shift = fc2.bias_shift, None
        raw = qvit.model.blocks[0].mlp(seen["q"][0])
        fc2.bias_shift = shift
    assert ((fp_out - raw) ** 2).mean() > ((fp_out - q_out) ** 2).mean()
    assert torch.allclose(raw + shift, q_out, atol=1e-5)
    # the FP reference path (quantizers off) uses the FP bias
    from vitaccel.golden.reconstruct import _set_enabled
    saved = _set_enabled(qvit, False)
    with torch.no_grad():
        off = qvit.model.blocks[0].mlp(seen["fp"][0])
    _set_enabled(qvit, None, saved)
    assert torch.allclose(off, fp_out, atol=1e-5)
    # the exported program carries the corrected bias: the integer grid equals the program runner
    grid = assert_grid_is_program(qvit, x[:2])
    from vitaccel.golden.int_eval import ProgramRunner
    from vitaccel.golden.program import export_program
    fc2.bias_shift, shift = None, fc2.bias_shift  # ... and that program differs from the uncorrected one
    plain = ProgramRunner(export_program(qvit), backend="reference").run_image(x[0])
    fc2.bias_shift = shift
    assert not torch.equal(plain, grid[0])
