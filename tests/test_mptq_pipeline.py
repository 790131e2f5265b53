"""MPTQ-ViT preset end to end on a tiny random timm ViT: SQ-b + Greedy MP + OPT-m through calibrate_model."""
import copy

import pytest
import timm
import torch

from vitaccel.golden.calibrate import calibrate_model
from vitaccel.golden.mixed_precision import average_bits, linear_layers
from vitaccel.golden.presets import preset
from vitaccel.golden.quantizers import QuantizerError
from vitaccel.golden.quantizers.three_region import ThreeRegionQuantizer


pytestmark = pytest.mark.usefixtures("torch_one_thread")


def test_mptq_preset_calibrates():
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8,
                              embed_dim=32, depth=2, num_heads=2, num_classes=10).eval()
    fp = copy.deepcopy(model)
    layers = linear_layers(model)
    x = torch.randn(8, 3, 32, 32)
    cfg = preset("mptq", "w4a4", mp_target_bits=6.0)
    qvit = calibrate_model(model, x, cfg, progress=False)
    alloc = {n: (v["w"], v["a"]) for n, v in cfg.layer_bits.items()}
    assert set(alloc) == set(layers) and average_bits(alloc, layers) <= 6.0
    fc2 = qvit.fc2_layers()
    assert len(fc2) == 2
    for name, layer in fc2.items():
        q = layer.input_quantizer
        assert isinstance(q, ThreeRegionQuantizer) and q.calibrated and q.bits == alloc[name][1]
        e = q.export()
        assert 0 <= e["m0"] <= e["m1"] <= 15 and e["s0"] > 0
    with torch.no_grad():
        out, ref = qvit(x), fp(x)
        # SQ-b kept the float path exact: the quantized model with quantizers off equals the FP model
        qvit.set_quant(False, False)
        torch.testing.assert_close(qvit(x), ref, rtol=1e-4, atol=1e-4)
    assert torch.isfinite(out).all()


def _tiny(seed=0):
    torch.manual_seed(seed)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8,
                             embed_dim=32, depth=2, num_heads=2, num_classes=10).eval()


def test_fc2_output_gradients_match_autograd_on_a_copy():
    """dL/dO of each FC2 from the detached-leaf hooks equals torch.autograd.grad on a plain FP copy."""
    from vitaccel.golden.calibrate import fc2_output_gradients

    model = _tiny()
    fp = copy.deepcopy(model)
    x = torch.randn(4, 3, 32, 32)
    qvit = calibrate_model(model, x, preset("mptq", "w4a4", mixed_precision=False), progress=False)
    data = fc2_output_gradients(qvit, x, qvit.fc2_layers(), batch_size=4, progress=False)
    outs = {}
    hooks = [fp.get_submodule(n).register_forward_hook(lambda m, a, o, n=n: outs.__setitem__(n, (a[0], o)))
             for n in data]
    logits = fp(x)
    loss = torch.nn.functional.cross_entropy(logits, logits.detach().argmax(-1), reduction="sum")
    grads = torch.autograd.grad(loss, [outs[n][1] for n in data])
    for h in hooks:
        h.remove()
    for (n, (xr, gr)), g in zip(data.items(), grads):
        # the mptq model is SQ-b-transformed, but FC2's input and output are the FP model's
        torch.testing.assert_close(xr, outs[n][0].reshape(-1, xr.shape[-1]), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(gr, g.reshape(-1, g.shape[-1]), rtol=1e-3, atol=1e-6)


def test_hessian_opt_m_minimises_the_weighted_output_error():
    """The Hessian-guided choice has the smallest gradient-weighted FC2 output error of all candidates
    (recomputed here in float64), and is a valid three-region parameter set."""
    from vitaccel.golden.calibrate import fc2_output_gradients
    from vitaccel.golden.quantizers.three_region import three_region_fake_quant

    x = torch.randn(6, 3, 32, 32)
    qvit = calibrate_model(_tiny(), x, preset("mptq", "w4a4", mixed_precision=False, fc2_metric="hessian"),
                           progress=False)
    data = fc2_output_gradients(qvit, x, qvit.fc2_layers(), batch_size=3, progress=False)
    for n, layer in qvit.fc2_layers().items():
        q = layer.input_quantizer
        xr, g = (t.double() for t in data[n])
        w = layer.qweight().detach().double()

        def err(s0, m0, m1):
            xq = three_region_fake_quant(xr.float(), s0, q.bits, m0, m1).double()
            return float(((g * ((xq - xr) @ w.t())) ** 2).sum())

        errs = [err(*c) for c in q.candidates()]
        e = q.export()
        assert err(e["s0"], e["m0"], e["m1"]) <= min(errs) * (1 + 1e-6)
        assert max(errs) > min(errs)  # the metric separates the candidates


def test_hessian_input_ranges_minimise_the_weighted_output_error():
    """act_metric=hessian: each block linear's uniform input range is the candidate with the smallest
    gradient-weighted output error (recomputed here in float64 from the FP rows and gradients)."""
    from vitaccel.golden.calibrate import fc2_output_gradients
    from vitaccel.golden.quantizers.uniform import UniformQuantizer

    x = torch.randn(6, 3, 32, 32)
    qvit = calibrate_model(_tiny(), x, preset("baseline", "w4a4", act_metric="hessian"), progress=False)
    layers = {n: l for n, l in qvit.quant_layers().items() if "blocks." in n}
    assert all(type(l.input_quantizer) is UniformQuantizer for l in layers.values())
    data = fc2_output_gradients(qvit, x, layers, batch_size=3, progress=False)
    for n, layer in layers.items():
        q = layer.input_quantizer
        xr, g = (t.double() for t in data[n])
        w = layer.qweight().detach().double()

        def err(s, z):
            xq = ((torch.clamp(torch.floor(xr / s + 0.5) + z, q.qmin, q.qmax) - z) * s)
            return float(((g * ((xq - xr) @ w.t())) ** 2).sum())

        errs = [err(*(float(t) for t in q._params(lo, hi))) for lo, hi in q.candidates()]
        assert err(float(q.scale), float(q.zero_point)) <= min(errs) * (1 + 1e-6)


def test_split_range_search_is_coordinatewise_best():
    """act_range=split: starting from the joint search, each end of the range takes its own clipping
    ratio. On data with a few far positive outliers and a short negative side, the ends are clipped by
    different ratios; the chosen pair is at least as good as every joint candidate and no single-end move on the
    ratio grid improves it (checked here in float64 with an independent fake quantizer)."""
    from vitaccel.golden.quantizers.uniform import UniformQuantizer

    gen = torch.Generator().manual_seed(3)
    x = torch.cat([torch.randn(4000, generator=gen).abs() * -0.3,            # short negative side
                   torch.randn(4000, generator=gen).abs() * 0.3,
                   torch.tensor([6.0, 5.5, 5.0])])                          # far positive outliers
    xd = x.double()

    def err_of(q, lo, hi):
        s, z = (float(t) for t in q._params(lo, hi))
        xq = (torch.clamp(torch.floor(xd / s + 0.5) + z, q.qmin, q.qmax) - z) * s
        return float(((xq - xd) ** 2).sum())

    def metric(fq):
        return float(((fq(x).double() - xd) ** 2).sum())

    joint, split = UniformQuantizer(4, name="j"), UniformQuantizer(4, name="s")
    for q in (joint, split):
        q.observe(x)
        q.finalize()
    e_joint = joint.select(metric)
    e_split = split.select(metric, split=True)
    assert e_split < e_joint                                  # the split search found a better range
    lo0, hi0 = split.range
    lo, hi = split.chosen_range
    assert abs(lo / lo0 - hi / hi0) > 0.1                     # the ends took different ratios
    best = err_of(split, lo, hi)
    assert abs(best - e_split) <= 1e-6 * best
    assert min(err_of(split, a, b) for a, b in split.candidates()) >= best * (1 - 1e-9)
    # no single-end move on the ratio grid is better: a coordinate-wise optimum
    for r in torch.linspace(1.0, 0.2, 25).tolist():
        assert err_of(split, lo0 * r, hi) >= best * (1 - 1e-9)
        assert err_of(split, lo, hi0 * r) >= best * (1 - 1e-9)
    with pytest.raises(QuantizerError, match="activation range search"):
        preset("mptq", "w4a4", act_range="both")
    with pytest.raises(QuantizerError, match="needs act_metric='hessian'"):  # would otherwise do nothing
        preset("baseline", "w4a4", act_range="split")


def test_output_weight_ranges_minimise_the_weighted_output_error():
    """weight_search=output: each block linear's output channel keeps the clipping ratio with the
    smallest gradient-weighted output error (recomputed here in float64 from the FP rows and
    gradients for every candidate ratio), and the choice differs from the plain weight-MSE search."""
    from vitaccel.golden.calibrate import fc2_output_gradients

    x = torch.randn(6, 3, 32, 32)
    qvit = calibrate_model(_tiny(), x, preset("baseline", "w4a4", weight_search="output"), progress=False)
    ref = calibrate_model(_tiny(), x, preset("baseline", "w4a4"), progress=False)
    layers = {n: l for n, l in qvit.quant_layers().items() if "blocks." in n}
    data = fc2_output_gradients(qvit, x, layers, batch_size=3, progress=False)
    differs = 0
    for n, layer in layers.items():
        xr, g = (t.double() for t in data[n])
        w = layer.weight.detach().double()
        qmax = 7
        absmax = w.abs().amax(dim=1)

        def err(scale):
            q = torch.clamp(torch.floor(w / scale[:, None] + 0.5), -qmax, qmax)
            return ((g * (xr @ (q * scale[:, None] - w).t())) ** 2).sum(dim=0)

        cands = torch.stack([err(absmax * r / qmax) for r in torch.linspace(1.0, 0.55, 16).double()])
        chosen = err(layer.weight_quantizer.scale.detach().double())
        assert bool((chosen <= cands.min(dim=0).values * (1 + 1e-5) + 1e-12).all()), n
        differs += int((layer.weight_quantizer.scale != ref.quant_layers()[n].weight_quantizer.scale).sum())
    assert differs > 0
    with pytest.raises(QuantizerError, match="weight range search"):
        preset("mptq", "w4a4", weight_search="grad")
