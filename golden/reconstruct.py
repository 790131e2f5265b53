"""AMO: Attention-score enhanced Module-wise Optimization (ADFQ-ViT).

The MHA (``blocks.i.attn``) and MLP (``blocks.i.mlp``) modules of every transformer block are
reconstructed one after the other, in model order:

* **inputs** are what the *quantized* model feeds the module (computed after all earlier modules
  were reconstructed, so their remaining error propagates); with ``input_drop = p`` (QDrop, as in
  the released ADFQ-ViT code) each input element of each optimisation step is replaced by the FP
  model's input with probability ``p``, so the module learns to reduce its own quantization error
  instead of memorising the upstream error of the few calibration images;
* **targets** are the outputs of the floating-point module on the floating-point model's own inputs
  (the same model with every quantizer disabled, or a separate FP model);
* the optimised variables are the AdaRound variables ``V`` of the module's weight quantizers (Adam,
  ``lr_round = 3e-3``) and the scales of its activation quantizers (Adam, ``lr_scale = 4e-5``);
  weight scales stay fixed;
* the loss is

  .. math::

     L = \\frac{\\lVert \\hat y - y\\rVert^2}{\\lVert y \\rVert^2}
         + \\lambda \\, \\overline{\\textstyle\\sum (1 - |2 h(V) - 1|^{\\beta})}
         + \\kappa \\, \\mathrm{KL}(P_{\\text{FP}} \\,\\Vert\\, P_{\\text{Q}})

  the output MSE normalised by the mean target power over the calibration set (a constant, so it
  is the output MSE up to a scale that makes ``lambda`` and ``kappa`` model independent); the
  AdaRound regulariser averaged over all rounding variables, switched on after a warm-up
  (``warmup`` fraction of the iterations) with ``beta`` annealed linearly from ``beta_start = 10``
  to ``beta_end = 2``; and, for MHA modules, the KL divergence between the FP and the quantized
  attention probabilities (the softmax output entering ``attn @ v``; rows summed, averaged over
  batch, heads and query tokens).

At the end of each module the rounding is made hard (``V`` set to ``+-8`` according to the
decision ``h(V) >= 0.5`` and the quantizer switched to hard rounding), so the exported integer
weights are deterministic. If the hard-rounded module is worse than before reconstruction (output
MSE on the calibration set) the module is restored to its initial state (nearest rounding, initial
scales) and the report says so.

Works on :class:`golden.qmodel.QuantViT` (attention probabilities are captured at the input of the
``attn @ v`` :class:`golden.qlayers.QuantMatMul`, ``.av``) and on any model whose blocks have
``attn`` and ``mlp`` children with quantized layers that expose ``weight`` + ``weight_quantizer``
(AdaRound protocol of :class:`golden.quantizers.weight.PerChannelWeightQuantizer`); for a plain
timm ``Attention`` the probabilities are taken at its ``attn_drop`` (``fused_attn`` is switched off
during reconstruction).
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Iterable

import torch
from torch import nn
from tqdm.auto import tqdm

from .quantizers.base import Quantizer, QuantizerError

__all__ = ["AMOConfig", "UnitReport", "find_amo_units", "reconstruct_amo", "resolve_device"]

#: ``V`` after hardening: ``h(+-8)`` is exactly 1 / 0 with the rectified sigmoid (zeta 1.1, gamma -0.1).
HARD_V = 8.0


@dataclass
class AMOConfig:
    """Settings of :func:`reconstruct_amo` (defaults: DeiT-tiny W4A4 within ~30 min on 2 CPU cores).

    Attributes
    ----------
    iters : int
        Adam iterations per module.
    batch_size : int
        Images per iteration.
    num_samples : int or None
        Calibration images used (``None``: all given).
    lr_round, lr_scale : float
        Adam learning rates of the AdaRound variables and of the activation scales.
    round_weight : float
        ``lambda``, weight of the (mean) AdaRound regulariser.
    beta_start, beta_end, warmup : float
        AdaRound temperature schedule and warm-up fraction without regulariser.
    kl_weight : float
        ``kappa``, weight of the attention KL term (MHA modules; 0 disables it).
    adaround : bool
        Optimise rounding (otherwise only activation scales).
    learn_scales : bool
        Optimise activation-quantizer scales.
    learn_weight_scales : bool
        Also learn a per-output-channel factor of each weight's dequantisation scale (Adam on the
        factor, from 1, learning rate ``lr_weight_scale``). The codes still come from the calibrated
        scale (nearest or AdaRound); at the end of the module the factor is folded into the exported
        scale (:meth:`PerChannelWeightQuantizer.fold_dequant_scale`), no code changes.
    lr_weight_scale : float
        Adam learning rate of those factors (a relative step: 1e-3 moves a scale by ~0.1 % per step).
    bias_correction : bool
        After a module's rounding is hard, shift the bias of its last linear (proj / FC2) by the
        per-channel mean of target minus output over all calibration images
        (:func:`correct_output_bias`: the constant per channel that minimises the output MSE). The
        shift lives in the layer's ``bias_shift``: the quantized path and the exported program use
        it, the FP reference path of the same model does not.
    forward_batch : int
        Images per forward pass when collecting inputs/targets.
    revert_if_worse : bool
        Restore a module whose final MSE is above its initial MSE.
    ln_weighted : bool
        Weight the output error by what the *next* LayerNorm makes of it (see
        :func:`ln_error_weights`): ``(gamma_c / sigma_t)^2`` per token ``t`` and channel ``c``.
    readout_last_block : bool
        In the last transformer block of a model whose classifier reads only the class token
        (timm ``global_pool="token"``), reconstruct only that token's output (and its attention
        row): the other tokens' outputs of that block reach nothing.
    input_drop : float
        QDrop-style input mixing: in every optimisation step each element of the module's input is
        taken from the FP model's input to the module with this probability, else from the
        quantized model's (0 disables it; 0.5, the default, is what the released ADFQ-ViT code uses).
    granularity : str
        ``"module"`` (the ADFQ-ViT paper: every MHA and every MLP module reconstructed on its own,
        24 units in DeiT-tiny) or ``"block"`` (BRECQ-style: each transformer block, attention and
        MLP with both residual additions, is one unit whose output is the block's output; the
        attention KL term covers the block's attention).
    device : str
        ``"auto"`` (cuda when available), ``"cpu"``, ``"cuda"``, ...
    seed : int
        Mini-batch sampling seed.
    progress : bool
        tqdm progress bars.
    """

    iters: int = 200
    batch_size: int = 8
    num_samples: int | None = 64
    lr_round: float = 3e-3
    lr_scale: float = 4e-5
    round_weight: float = 0.01
    beta_start: float = 10.0
    beta_end: float = 2.0
    warmup: float = 0.2
    kl_weight: float = 1.0
    adaround: bool = True
    learn_scales: bool = True
    learn_weight_scales: bool = False
    lr_weight_scale: float = 1e-3
    bias_correction: bool = False
    forward_batch: int = 32
    revert_if_worse: bool = True
    ln_weighted: bool = False
    readout_last_block: bool = False
    input_drop: float = 0.5
    granularity: str = "module"
    device: str = "auto"
    seed: int = 0
    progress: bool = True

    def __post_init__(self):
        if self.iters < 0 or self.batch_size < 1 or self.forward_batch < 1:
            raise ValueError("iters must be >= 0, batch_size and forward_batch >= 1")
        if self.num_samples is not None and self.num_samples < 1:
            raise ValueError("num_samples must be >= 1 or None")
        if not 0.0 <= self.warmup <= 1.0:
            raise ValueError(f"warmup must be a fraction in [0, 1], got {self.warmup}")
        if self.beta_start < self.beta_end or self.beta_end <= 0:
            raise ValueError("need beta_start >= beta_end > 0")
        if not 0.0 <= self.input_drop <= 1.0:
            raise ValueError(f"input_drop must be a probability in [0, 1], got {self.input_drop}")
        if self.granularity not in ("module", "block"):
            raise ValueError(f"granularity must be 'module' or 'block', got {self.granularity!r}")


@dataclass
class UnitReport:
    """What happened to one module."""

    name: str
    kind: str  #: "mha" or "mlp"
    mse_before: float  #: output MSE (LayerNorm-weighted with ``ln_weighted``) / mean target power
    mse_after: float
    kl_before: float | None = None
    kl_after: float | None = None
    loss_first: float | None = None
    loss_last: float | None = None
    rounding_soft_fraction: float | None = None  #: fraction of h(V) in (0.01, 0.99) before hardening
    ln_weighted: bool = False  #: the error was weighted by the next LayerNorm (AMOConfig.ln_weighted)
    readout_rows: list | None = None  #: token rows reconstructed (readout_last_block); None: all
    reverted: bool = False
    bias_shift: float | None = None  #: mean |bias correction| of the last linear (bias_correction)
    seconds: float = 0.0  #: total time of this module (collection, evaluation, optimisation)
    seconds_optimize: float = 0.0  #: time of the Adam iterations
    losses: list = field(default_factory=list, repr=False)  #: total loss per iteration
    rec_losses: list = field(default_factory=list, repr=False)  #: MSE (+ KL) part per iteration

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("losses")
        d.pop("rec_losses")
        return d


class _Stop(Exception):
    """Raised by a hook to end a forward pass early."""


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``"auto"``/``None`` -> cuda when available, else cpu."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but CUDA is not available")
    return dev


def _root(model: nn.Module) -> nn.Module:
    inner = getattr(model, "model", None)
    return inner if isinstance(inner, nn.Module) and hasattr(model, "quant_layers") else model


def find_amo_units(model: nn.Module, granularity: str = "module") -> list[tuple[str, str]]:
    """``[(module_name, kind)]`` of the units to reconstruct, in model order.

    ``granularity="module"``: the MHA (``"mha"``) and MLP (``"mlp"``) modules of every block;
    ``"block"``: the blocks themselves (``"block"``: modules with ``attn`` and ``mlp`` children).
    Names are relative to the timm model (``QuantViT.model`` for a QuantViT).
    """
    units = []
    for name, mod in _root(model).named_modules():
        attn, mlp = getattr(mod, "attn", None), getattr(mod, "mlp", None)
        if isinstance(attn, nn.Module) and isinstance(mlp, nn.Module):
            prefix = f"{name}." if name else ""
            if granularity == "block":
                units.append((name, "block"))
            else:
                units.append((f"{prefix}attn", "mha"))
                units.append((f"{prefix}mlp", "mlp"))
    return units


def _calib_tensor(calib, num_samples: int | None) -> torch.Tensor:
    if isinstance(calib, torch.Tensor):
        x = calib
    else:
        parts, n = [], 0
        for item in calib:
            if isinstance(item, (tuple, list)):
                item = item[0]
            if not isinstance(item, torch.Tensor):
                raise TypeError(f"calibration batches must be tensors, got {type(item).__name__}")
            parts.append(item)
            n += item.shape[0]
            if num_samples is not None and n >= num_samples:
                break
        if not parts:
            raise ValueError("calibration data is empty")
        x = torch.cat(parts)
    if x.dim() == 0 or x.shape[0] == 0:
        raise ValueError("calibration data is empty")
    return x[:num_samples] if num_samples is not None else x


def _attention(unit: nn.Module) -> nn.Module:
    """The attention module of ``unit``: its ``attn`` child (a block unit), else ``unit`` itself."""
    attn = getattr(unit, "attn", None)
    return attn if isinstance(attn, nn.Module) else unit


def _probs_site(unit: nn.Module):
    """``(module, how)``: where the attention probabilities of ``unit`` (an attention module, or a
    block with an ``attn`` child) can be observed."""
    unit = _attention(unit)
    av = getattr(unit, "av", None)
    if isinstance(av, nn.Module):
        return av, "input0"
    drop = getattr(unit, "attn_drop", None)
    if isinstance(drop, nn.Module):
        return drop, "output"
    return None, None


class _Capture:
    """Run a model until ``unit`` has run (or was entered) and record what it saw."""

    def __init__(self, unit: nn.Module, want_input: bool, want_output: bool, want_probs: bool,
                 keep_grad: bool = False, next_norm_in: nn.Module | None = None):
        self.unit = unit
        self.want_input, self.want_output, self.want_probs = want_input, want_output, want_probs
        self.keep_grad = keep_grad
        #: with a model here, the pass goes on after ``unit`` until the first LayerNorm of that
        #: model runs, and records its input and module (``next_norm``; None if no LayerNorm follows)
        self.next_norm_in = next_norm_in
        self.args = self.kwargs = self.output = None
        self.next_norm = self.next_norm_input = None
        self.probs: list[torch.Tensor] = []
        self.handles = []

    def __enter__(self):
        u = self.unit
        if self.want_input:
            def pre(_m, args, kwargs):
                self.args, self.kwargs = args, kwargs
                if not self.want_output:
                    raise _Stop
            self.handles.append(u.register_forward_pre_hook(pre, with_kwargs=True))
        if self.want_output:
            def post(_m, _args, output):
                self.output = output
                if self.next_norm_in is None:
                    raise _Stop
            self.handles.append(u.register_forward_hook(post))
        if self.next_norm_in is not None:
            def norm_pre(mod, args):
                if self.output is not None:
                    self.next_norm, self.next_norm_input = mod, args[0].detach()
                    raise _Stop
            for m in self.next_norm_in.modules():
                if isinstance(m, nn.LayerNorm):
                    self.handles.append(m.register_forward_pre_hook(norm_pre))
        if self.want_probs:
            site, how = _probs_site(u)
            if site is None:
                raise QuantizerError(f"cannot observe the attention probabilities of {type(u).__name__}")
            au = _attention(u)
            if getattr(au, "fused_attn", False):
                au.fused_attn = False
                self.handles.append(_Restore(au, "fused_attn", True))
            if how == "input0":
                self.handles.append(site.register_forward_pre_hook(
                    lambda _m, args: self.probs.append(args[0] if self.keep_grad else args[0].detach())))
            else:
                self.handles.append(site.register_forward_hook(
                    lambda _m, _a, out: self.probs.append(out if self.keep_grad else out.detach())))
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()
        return False


class _Restore:
    def __init__(self, obj, attr, value):
        self.obj, self.attr, self.value = obj, attr, value

    def remove(self):
        setattr(self.obj, self.attr, self.value)


def _run_until(model: nn.Module, x: torch.Tensor, cap: "_Capture | None" = None) -> None:
    try:
        model(x)
    except _Stop:
        return
    if cap is not None and cap.output is not None:  # the unit ran; no LayerNorm after it
        return
    raise RuntimeError("the module to reconstruct was not called by the model's forward pass")


def ln_error_weights(target: torch.Tensor, norms: list[nn.LayerNorm],
                     norm_input: torch.Tensor | None) -> torch.Tensor | None:
    """Per-element weights ``g_c / sigma_t^2`` of a module's output error, or ``None`` (plain MSE).

    ``norm_input`` is the residual stream (FP model) the module's output is added to, as the next
    LayerNorm reads it; ``norms`` are that LayerNorm and every later one of the model that reads the
    same stream. To first order a LayerNorm maps an error ``e`` on token ``t``, channel ``c`` of
    its input to ``gamma_c / sigma_t * e`` (less the token mean of that, ignored here), so an error
    on a token with a large standard deviation ``sigma_t`` matters less downstream. The residual
    stream carries the error to *every* later LayerNorm, so the channel weight ``g_c`` is the mean
    of ``gamma_c^2`` over ``norms``, rescaled to mean 1 (a ``gamma_c == 0`` in one LayerNorm does not
    hide channel ``c`` from the others). Returns ``None`` when there is no such LayerNorm or the
    residual is laid out differently from the output (Swin's windows).
    """
    if not norms or norm_input is None or norm_input.shape != target.shape:
        return None
    width = norm_input.shape[-1]
    gammas = [(n.weight.detach().double() if n.weight is not None else torch.ones(width, dtype=torch.float64))
              for n in norms if n.normalized_shape == (width,)]
    g = torch.stack([gm.to(norm_input.device) ** 2 for gm in gammas]).mean(dim=0)
    g = g / g.mean().clamp_min(1e-12)
    x = norm_input.double()
    inv_var = 1.0 / (x.var(dim=-1, unbiased=False, keepdim=True) + norms[0].eps)
    return (inv_var * g).to(target.dtype)


def _split_images(t: torch.Tensor, n_img: int) -> list[torch.Tensor]:
    """Split a batch tensor into ``n_img`` equal per-image parts along dim 0 (detached)."""
    if t.shape[0] % n_img:
        raise RuntimeError(f"batch dimension {t.shape[0]} is not a multiple of {n_img} images")
    return list(t.detach().split(t.shape[0] // n_img))


class _UnitData:
    """Per-image tensors of one module: inputs (positional args), kwargs, targets, FP probs."""

    def __init__(self):
        self.args: list[list[torch.Tensor]] = []
        self.fp_args: list[list[torch.Tensor]] = []  # the FP model's inputs (input_drop)
        self.kwargs = None
        self.targets: list[torch.Tensor] = []
        self.probs: list[torch.Tensor] = []
        self.weights: list[torch.Tensor] = []  # LayerNorm-aware error weights (ln_weighted), per image
        self.rows = None  # rows of dim 0 per image

    def add_inputs(self, args, kwargs, n_img, fp: bool = False):
        tensors = [a for a in args if isinstance(a, torch.Tensor)]
        if len(tensors) != len(args):
            raise RuntimeError("module inputs must be tensors")
        per = [_split_images(a, n_img) for a in tensors]
        (self.fp_args if fp else self.args).extend(list(z) for z in zip(*per))
        if not fp:
            self.kwargs = kwargs
            self.rows = tensors[0].shape[0] // n_img

    def fp_batch(self, idx, device):
        return [torch.cat([self.fp_args[i][j] for i in idx]).to(device) for j in range(len(self.fp_args[0]))]

    def batch(self, idx, device):
        args = [torch.cat([self.args[i][j] for i in idx]).to(device) for j in range(len(self.args[0]))]
        tgt = torch.cat([self.targets[i] for i in idx]).to(device)
        probs = torch.cat([self.probs[i] for i in idx]).to(device) if self.probs else None
        wts = torch.cat([self.weights[i] for i in idx]).to(device) if self.weights else None
        return args, tgt, probs, wts


def readout_rows(root: nn.Module, name: str, units: list[tuple[str, str]]) -> list[int] | None:
    """Token rows of module ``name``'s output that the classifier reads, or ``None`` (all of them).

    ``units`` are all the model's units (:func:`find_amo_units`). Only the modules of the last
    block (the last two ``units``) of a timm model with
    ``global_pool == "token"`` qualify: its head reads ``x[:, 0]`` after that block, so the other
    tokens' outputs of that block reach nothing. With block units only the last unit qualifies.
    """
    if getattr(root, "global_pool", None) != "token" or not units:
        return None
    if units[-1][1] == "block":
        return [0] if name == units[-1][0] else None
    if len(units) < 2:
        return None
    if name not in {n for n, _ in units[-2:]} or units[-2][0].rsplit(".", 1)[0] != units[-1][0].rsplit(".", 1)[0]:
        return None
    return [0]


def _sq_error(out: torch.Tensor, tgt: torch.Tensor, wts: torch.Tensor | None) -> torch.Tensor:
    """Mean squared error, weighted per element when ``wts`` is given."""
    se = (out - tgt) ** 2
    return (se * wts).mean() if wts is not None else se.mean()


def _query_rows(probs: torch.Tensor, rows: list[int] | None) -> torch.Tensor:
    return probs if rows is None else probs[..., rows, :]


def _kl(p_fp: torch.Tensor, p_q: torch.Tensor) -> torch.Tensor:
    tiny = 1e-12
    return (p_fp * (torch.log(p_fp.clamp_min(tiny)) - torch.log(p_q.clamp_min(tiny)))).sum(-1).mean()


def _weight_layers(unit: nn.Module) -> list[nn.Module]:
    return [m for m in unit.modules() if isinstance(getattr(m, "weight_quantizer", None), Quantizer)
            and isinstance(getattr(m, "weight", None), torch.Tensor)]


def _set_enabled(model: nn.Module, flag: bool | None, saved: dict | None = None) -> dict:
    """Enable/disable every quantizer; with ``saved`` restore the previous flags instead."""
    out = {}
    for m in model.modules():
        if isinstance(m, Quantizer):
            out[m] = m.enabled
            m.enabled = saved[m] if saved is not None else flag
    return out


@dataclass
class _Setup:
    """What :func:`reconstruct_amo` resolves once for all modules (:func:`prepare_amo`)."""

    cfg: AMOConfig
    device: torch.device
    chunks: list  #: calibration images split into forward batches of ``cfg.forward_batch``
    n_img: int
    units: list
    qmodel: nn.Module
    qroot: nn.Module
    fp_ref: nn.Module  #: the FP reference: ``fp_model``, or ``qmodel`` itself with quantizers off
    fproot: nn.Module
    own_fp: bool  #: ``fp_ref`` is ``qmodel`` (its quantizers are switched off while it runs as FP)
    qmods: dict
    fpmods: dict
    fp_norms: list  #: the FP model's LayerNorms, in model order (``ln_weighted``)


@dataclass
class _UnitJob:
    """One module being reconstructed: the quantized module and what was collected for it."""

    name: str
    qunit: nn.Module
    data: _UnitData
    use_kl: bool  #: MHA module with ``kl_weight > 0``: the loss has the attention KL term
    rows: list | None  #: token rows reconstructed (``readout_last_block``); None: all
    power: float  #: mean target power, the normaliser of the output MSE
    device: torch.device
    n_img: int
    forward_batch: int


def prepare_amo(qmodel: nn.Module, calib, fp_model: nn.Module | None, config: AMOConfig | None,
                units: list[tuple[str, str]] | None, overrides: dict) -> _Setup:
    """Resolve the settings, calibration images and modules of :func:`reconstruct_amo`; check them.

    Raises ``ValueError`` for unknown or mistyped units and :class:`QuantizerError` when a quantizer
    (other than a weight quantizer, which calibrates from its weight) is not calibrated.
    """
    cfg = replace(config or AMOConfig(), **overrides) if overrides else (config or AMOConfig())
    device = resolve_device(cfg.device)
    x_all = _calib_tensor(calib, cfg.num_samples)
    units = units if units is not None else find_amo_units(qmodel, cfg.granularity)
    if not units:
        raise ValueError("no MHA / MLP modules found (blocks with 'attn' and 'mlp' children)")
    qroot = _root(qmodel)
    fp_ref = fp_model if fp_model is not None else qmodel
    fproot = _root(fp_ref)
    qmods, fpmods = dict(qroot.named_modules()), dict(fproot.named_modules())
    for name, kind in units:
        if name not in qmods or name not in fpmods:
            raise ValueError(f"module {name!r} not found in the quantized and FP models")
        if kind not in ("mha", "mlp", "block"):
            raise ValueError(f"unit kind must be 'mha', 'mlp' or 'block', got {kind!r}")
    lazy = {id(l.weight_quantizer) for l in _weight_layers(qroot)}  # calibrate from their weight
    for m in qroot.modules():
        if isinstance(m, Quantizer) and m.enabled and id(m) not in lazy and (m.observing or not m.calibrated):
            raise QuantizerError(
                f"quantizer {m.name or type(m).__name__} is not calibrated: calibrate the model before AMO"
            )
    qmodel.to(device).eval()
    fp_ref.to(device).eval()
    return _Setup(cfg=cfg, device=device, chunks=list(torch.split(x_all, cfg.forward_batch)),
                  n_img=x_all.shape[0], units=units, qmodel=qmodel, qroot=qroot, fp_ref=fp_ref, fproot=fproot,
                  own_fp=fp_model is None, qmods=qmods, fpmods=fpmods,
                  fp_norms=[m for m in fproot.modules() if isinstance(m, nn.LayerNorm)])


def _run_fp_reference(s: _Setup, fpunit: nn.Module, xb: torch.Tensor, use_kl: bool) -> _Capture:
    """Run the FP reference on ``xb`` up to ``fpunit`` (on to the next LayerNorm with ``ln_weighted``)."""
    saved = _set_enabled(s.fp_ref, False) if s.own_fp else None
    try:
        with _Capture(fpunit, s.cfg.input_drop > 0, True, use_kl,
                      next_norm_in=s.fproot if s.cfg.ln_weighted else None) as cap:
            _run_until(s.fp_ref, xb, cap)
    finally:
        if saved is not None:
            _set_enabled(s.fp_ref, None, saved)
    return cap


@torch.no_grad()
def collect_unit_data(s: _Setup, qunit: nn.Module, fpunit: nn.Module, use_kl: bool) -> _UnitData:
    """Per image: the quantized model's inputs to ``qunit``, the FP targets (the FP module's outputs on
    the FP model's own inputs) and, as the settings ask, the FP inputs (QDrop), the LayerNorm error
    weights and the FP attention probabilities."""
    cfg = s.cfg
    data = _UnitData()
    for xb in s.chunks:
        xb = xb.to(s.device)
        n = xb.shape[0]
        with _Capture(qunit, True, False, False) as cap:
            _run_until(s.qmodel, xb)
        data.add_inputs(cap.args, cap.kwargs, n)
        cap = _run_fp_reference(s, fpunit, xb, use_kl)
        if cfg.input_drop > 0:
            data.add_inputs(cap.args, cap.kwargs, n, fp=True)
        data.targets.extend(t.cpu() for t in _split_images(cap.output, n))
        if cfg.ln_weighted:
            later = s.fp_norms[s.fp_norms.index(cap.next_norm):] if cap.next_norm in s.fp_norms else []
            wts = ln_error_weights(cap.output, later, cap.next_norm_input)
            if wts is not None:
                data.weights.extend(w.cpu() for w in _split_images(wts, n))
        if use_kl:
            data.probs.extend(p.cpu() for p in _split_images(torch.cat(cap.probs), n))
    if data.weights and len(data.weights) != len(data.targets):
        data.weights = []  # a layout the weighting does not cover in some batch: plain MSE
    return data


def restrict_to_readout_rows(data: _UnitData, rows: list[int] | None) -> list[int] | None:
    """Weight the error of only the token ``rows`` (and keep only their attention rows); returns the
    rows, or ``None`` when all rows count (no ``rows``, or outputs without a token axis)."""
    if rows is None or data.targets[0].dim() != 3:
        return None
    mask = torch.zeros_like(data.targets[0])
    mask[:, rows, :] = 1.0
    data.weights = [w * mask for w in data.weights] if data.weights else [mask] * len(data.targets)
    if data.probs:  # only the read-out tokens' attention rows (queries)
        data.probs = [p[..., rows, :] for p in data.probs]
    return rows


def target_power(data: _UnitData) -> float:
    """Mean (weighted) power of the targets over the calibration set, the MSE normaliser (1 if zero)."""
    power = float(torch.stack([_sq_error(t.double(), torch.zeros((), dtype=torch.float64),
                                         data.weights[i].double() if data.weights else None)
                               for i, t in enumerate(data.targets)]).mean())
    return power if power > 0 else 1.0


def evaluate_unit(job: _UnitJob) -> tuple[float, float | None]:
    """Normalised output MSE of the quantized module on all calibration images (and the attention KL)."""
    data = job.data
    se, kl_sum, count = 0.0, 0.0, 0
    with torch.no_grad():
        for start in range(0, job.n_img, job.forward_batch):
            idx = list(range(start, min(job.n_img, start + job.forward_batch)))
            args, tgt, probs, wts = data.batch(idx, job.device)
            with _Capture(job.qunit, False, False, job.use_kl, keep_grad=False) as cap:
                out = job.qunit(*args, **(data.kwargs or {}))
            se += float(_sq_error(out.double(), tgt.double(), None if wts is None else wts.double())) \
                / job.power * len(idx)
            if job.use_kl:
                kl_sum += float(_kl(probs, _query_rows(torch.cat(cap.probs), job.rows))) * len(idx)
            count += len(idx)
    return se / count, (kl_sum / count if job.use_kl else None)


def correct_output_bias(job: _UnitJob, layers: list[nn.Module]) -> float | None:
    """Bias correction of the module's last linear (``layers[-1]`` with a ``bias_shift``: proj / FC2).

    Adds to its ``bias_shift`` the per-output-channel mean of ``target - output`` over all calibration
    images (weighted like the MSE: LayerNorm / read-out row weights), the constant per channel that
    minimises the module's output MSE when the output is that linear's output plus terms the bias
    does not reach. Undone if the MSE does not fall (an output that is not linear in that bias).
    Returns the mean absolute shift applied, or ``None`` (no such linear, kept nothing)."""
    last = [l for l in layers if getattr(l, "bias", None) is not None and hasattr(l, "bias_shift")]
    if not last:
        return None
    lin, data = last[-1], job.data
    num = den = None
    with torch.no_grad():
        for start in range(0, job.n_img, job.forward_batch):
            idx = list(range(start, min(job.n_img, start + job.forward_batch)))
            args, tgt, _, wts = data.batch(idx, job.device)
            out = job.qunit(*args, **(data.kwargs or {}))
            if out.shape[-1] != lin.out_features:
                return None
            w = torch.ones_like(tgt) if wts is None else wts
            r = ((tgt - out) * w).double().reshape(-1, out.shape[-1]).sum(0)
            c = w.double().reshape(-1, out.shape[-1]).sum(0)
            num, den = (r, c) if num is None else (num + r, den + c)
        delta = torch.where(den > 0, num / den.clamp_min(1e-300), torch.zeros_like(num)).to(lin.bias.dtype)
        before = evaluate_unit(job)[0]
        old = lin.bias_shift
        lin.bias_shift = delta if old is None else old + delta
        if evaluate_unit(job)[0] > before:
            lin.bias_shift = old
            return None
    return float(delta.abs().mean())


def _scale_parameters(act_quants: list[Quantizer]) -> list[torch.Tensor]:
    """The distinct floating-point scale tensors of the activation quantizers, in module order."""
    params, seen = [], set()
    for q in act_quants:
        for p in q.scale_parameters():
            if isinstance(p, torch.Tensor) and p.is_floating_point() and id(p) not in seen:
                seen.add(id(p))
                params.append(p)
    return params


def _rounding_parameters(layers: list[nn.Module]) -> list[torch.Tensor]:
    """The AdaRound variables ``V`` of the layers' enabled weight quantizers (initialised if new)."""
    params = []
    for l in layers:
        wq = l.weight_quantizer
        if not wq.enabled or not hasattr(wq, "init_adaround"):
            continue
        if not wq.rounding_parameters():
            wq.init_adaround(l.weight.detach())
        params.extend(wq.rounding_parameters())
    return params


def qdrop_mix(args: list[torch.Tensor], fp_args: list[torch.Tensor], p: float, gen: torch.Generator,
              device: torch.device) -> list[torch.Tensor]:
    """QDrop: each input element from the FP model's input with probability ``p``, else the quantized one.

    Draws one ``torch.rand`` of each argument's shape from ``gen`` (on the CPU, so a seed gives the same
    mask on every device)."""
    return [torch.where(torch.rand(a.shape, generator=gen).to(device) < p, f, a) for a, f in zip(args, fp_args)]


def adaround_beta(cfg: AMOConfig, it: int, warm: int) -> float:
    """AdaRound temperature at iteration ``it >= warm``: linear from ``beta_start`` to ``beta_end``."""
    rel = (it - warm) / max(1, cfg.iters - warm)
    return cfg.beta_end + (cfg.beta_start - cfg.beta_end) * (1.0 - rel)


def optimise_unit(job: _UnitJob, cfg: AMOConfig, layers: list[nn.Module], scale_params: list[torch.Tensor],
                  round_params: list[torch.Tensor], gen: torch.Generator, report: UnitReport,
                  wscale_params: list[torch.Tensor] = ()) -> None:
    """Adam on the AdaRound variables, activation scales and (``wscale_params``) the weights' learned
    dequantisation factors for ``cfg.iters`` mini-batches (sampled with ``gen``); appends the losses
    to ``report`` (``losses``, ``rec_losses``, ``loss_first/last``)."""
    groups = []
    if round_params:
        groups.append({"params": round_params, "lr": cfg.lr_round})
    if scale_params:
        groups.append({"params": scale_params, "lr": cfg.lr_scale})
    if wscale_params:
        groups.append({"params": list(wscale_params), "lr": cfg.lr_weight_scale})
    if not groups or cfg.iters <= 0:
        return
    n_round = sum(p.numel() for p in round_params)
    warm = int(cfg.warmup * cfg.iters)
    data = job.data
    opt = torch.optim.Adam(groups)
    inner = tqdm(range(cfg.iters), desc=f"  {job.name}", leave=False, disable=not cfg.progress)
    for it in inner:
        idx = torch.randint(0, job.n_img, (min(cfg.batch_size, job.n_img),), generator=gen).tolist()
        args, tgt, probs, wts = data.batch(idx, job.device)
        if cfg.input_drop > 0:
            args = qdrop_mix(args, data.fp_batch(idx, job.device), cfg.input_drop, gen, job.device)
        with _Capture(job.qunit, False, False, job.use_kl, keep_grad=True) as cap:
            out = job.qunit(*args, **(data.kwargs or {}))
        loss = _sq_error(out, tgt, wts) / job.power
        if job.use_kl:
            loss = loss + cfg.kl_weight * _kl(probs, _query_rows(torch.cat(cap.probs), job.rows))
        report.rec_losses.append(loss.item())
        if n_round and it >= warm and cfg.round_weight > 0:
            beta = adaround_beta(cfg, it, warm)
            reg = sum(l.weight_quantizer.rounding_loss(beta) for l in layers
                      if l.weight_quantizer.rounding_parameters())
            loss = loss + cfg.round_weight * reg / n_round
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():  # scales stay positive
            for p in scale_params:
                p.clamp_(min=1e-8)
            for p in wscale_params:  # a factor, not a scale: keep it well away from 0
                p.clamp_(min=0.1)
        report.losses.append(loss.item())
        if it % 20 == 0:
            inner.set_postfix(loss=f"{report.losses[-1]:.4g}")
    report.loss_first, report.loss_last = report.losses[0], report.losses[-1]


def harden_rounding(layers: list[nn.Module], n_round: int) -> float | None:
    """Make every learned rounding hard (``V = +-HARD_V`` by ``h(V) >= 0.5``); returns the fraction of
    ``h(V)`` that was still soft (in (0.01, 0.99)) before, or ``None`` without rounding variables."""
    soft = []
    for l in layers:
        wq = l.weight_quantizer
        if wq.rounding_parameters():
            h = wq.h().detach()
            soft.append(((h > 0.01) & (h < 0.99)).float().sum())
            with torch.no_grad():
                for v in wq.rounding_parameters():
                    v.copy_(torch.where(h >= 0.5, torch.full_like(v, HARD_V), torch.full_like(v, -HARD_V)))
            wq.harden()
    return float(sum(soft)) / n_round if soft and n_round else None


def _weight_scale_parameters(layers: list[nn.Module]) -> list[torch.Tensor]:
    """New learned dequantisation factors (``m = 1``) of the layers' enabled weight quantizers."""
    params = []
    for l in layers:
        wq = l.weight_quantizer
        if wq.enabled and hasattr(wq, "init_dequant_scale"):
            wq.init_dequant_scale()
            params.extend(wq.dequant_scale_parameters())
    return params


def restore_initial_state(layers: list[nn.Module], scale_params: list[torch.Tensor],
                          scale_backup: list[torch.Tensor]) -> None:
    """Undo a reconstruction: the initial activation scales, nearest rounding of the weights and their
    calibrated dequantisation scales."""
    with torch.no_grad():
        for p, b in zip(scale_params, scale_backup):
            p.copy_(b)
    for l in layers:
        wq = l.weight_quantizer
        if getattr(wq, "alpha", None) is not None:
            wq.alpha = None
            wq.soft = False
        if hasattr(wq, "drop_dequant_scale"):
            wq.drop_dequant_scale()


def reconstruct_unit(s: _Setup, name: str, kind: str, gen: torch.Generator) -> UnitReport:
    """Reconstruct one MHA / MLP module (collect, evaluate, optimise, harden, maybe revert)."""
    t0 = time.time()
    cfg = s.cfg
    qunit, fpunit = s.qmods[name], s.fpmods[name]
    use_kl = kind in ("mha", "block") and cfg.kl_weight > 0
    data = collect_unit_data(s, qunit, fpunit, use_kl)
    ln_ok = bool(data.weights)
    rows = readout_rows(s.qroot, name, find_amo_units(s.qmodel, cfg.granularity)) if cfg.readout_last_block else None
    rows = restrict_to_readout_rows(data, rows)
    job = _UnitJob(name=name, qunit=qunit, data=data, use_kl=use_kl, rows=rows, power=target_power(data), device=s.device,
                   n_img=s.n_img, forward_batch=cfg.forward_batch)
    layers = _weight_layers(qunit)
    wquants = {id(l.weight_quantizer) for l in layers}
    for l in layers:
        if not l.weight_quantizer.calibrated:
            l.weight_quantizer.calibrate(l.weight.detach())
    act_quants = [m for m in qunit.modules() if isinstance(m, Quantizer) and id(m) not in wquants and m.enabled]
    mse0, kl0 = evaluate_unit(job)
    t_opt = time.time()
    scale_params = _scale_parameters(act_quants) if cfg.learn_scales else []
    scale_backup = [p.detach().clone() for p in scale_params]  # for a revert
    round_params = _rounding_parameters(layers) if cfg.adaround else []
    wscale_params = _weight_scale_parameters(layers) if cfg.learn_weight_scales else []
    for p in scale_params + round_params + wscale_params:
        p.requires_grad_(True)
    report = UnitReport(name, kind, mse0, mse0, kl0, kl0, ln_weighted=ln_ok, readout_rows=rows)
    optimise_unit(job, cfg, layers, scale_params, round_params, gen, report, wscale_params)
    report.seconds_optimize = time.time() - t_opt
    report.rounding_soft_fraction = harden_rounding(layers, sum(p.numel() for p in round_params))
    for p in scale_params + round_params + wscale_params:
        p.requires_grad_(False)
    report.mse_after, report.kl_after = evaluate_unit(job)
    if cfg.revert_if_worse and report.mse_after > report.mse_before:
        restore_initial_state(layers, scale_params, scale_backup)
        report.mse_after, report.kl_after = evaluate_unit(job)
        report.reverted = True
    if cfg.bias_correction:
        report.bias_shift = correct_output_bias(job, layers)
        report.mse_after, report.kl_after = evaluate_unit(job)
    for l in layers:  # the learned factors become the exported scales (codes unchanged)
        if hasattr(l.weight_quantizer, "fold_dequant_scale"):
            l.weight_quantizer.fold_dequant_scale(l.weight.detach())
    report.seconds = time.time() - t0
    return report


def reconstruct_amo(
    qmodel: nn.Module,
    calib: torch.Tensor | Iterable,
    fp_model: nn.Module | None = None,
    config: AMOConfig | None = None,
    units: list[tuple[str, str]] | None = None,
    **overrides,
) -> list[UnitReport]:
    """Reconstruct every MHA and MLP module of a calibrated fake-quant ViT in place (AMO).

    Parameters
    ----------
    qmodel : torch.nn.Module
        The quantized model (:class:`golden.qmodel.QuantViT`), quantizers calibrated.
    calib : torch.Tensor or iterable
        Calibration images ``(N, 3, H, W)`` or batches / ``(images, labels)``; the first
        ``config.num_samples`` images are used.
    fp_model : torch.nn.Module, optional
        Floating-point reference with the same module names. Default: ``qmodel`` itself with every
        quantizer disabled (the FP path of the fake-quant model).
    config : AMOConfig, optional
        Settings; keyword ``overrides`` replace single fields (``iters=50``, ``device="cpu"``, ...).
    units : list of (name, kind), optional
        Modules to reconstruct; default :func:`find_amo_units`.

    Returns
    -------
    list of UnitReport
        One entry per module: initial/final MSE (and KL for MHA), losses, time, reverted flag.
    """
    s = prepare_amo(qmodel, calib, fp_model, config, units, overrides)
    gen = torch.Generator().manual_seed(s.cfg.seed)  # mini-batches and QDrop masks of every module, in order
    reports: list[UnitReport] = []
    outer = tqdm(s.units, desc="AMO", disable=not s.cfg.progress)
    for name, kind in outer:
        report = reconstruct_unit(s, name, kind, gen)
        reports.append(report)
        outer.set_postfix(mse=f"{report.mse_before:.3g}->{report.mse_after:.3g}")
    return reports


def reconstruct(qvit: nn.Module, images: torch.Tensor | Iterable, config=None, progress: bool = True,
                **amo_overrides) -> list[UnitReport]:
    """AMO entry point for :func:`golden.calibrate.calibrate_model`.

    ``config`` is the :class:`golden.presets.QuantConfig` (or ``None``); its ``adaround`` switch
    selects rounding optimisation; optional ``amo_*`` attributes (``amo_iters``,
    ``amo_batch_size``, ``amo_num_samples``, ``amo_device``) and keyword ``amo_overrides``
    (any :class:`AMOConfig` field) replace the defaults.
    """
    kw = {"progress": progress}
    if config is not None:
        kw["adaround"] = bool(getattr(config, "adaround", True))
        for f in fields(AMOConfig):
            v = getattr(config, f"amo_{f.name}", None)
            if v is not None:
                kw[f.name] = v
    kw.update(amo_overrides)
    return reconstruct_amo(qvit, images, config=AMOConfig(**kw))
