"""Method presets: which quantizer sits at each GEMM operand, and the calibration steps.

========  ==================================================================================
preset    components
========  ==================================================================================
baseline  per-tensor uniform activations everywhere (MSE range), log2 post-softmax, per-channel
          weights (nearest rounding, MSE range); no reconstruction.
adfq      ADFQ-ViT: POQ (per-patch + outliers, alpha_qkv = 5, alpha_fc1 = 10) on the q/k/v and
          FC1 inputs, with each row's scale chosen at run time from the scale ladder of
          docs/datapath.md 8.1.1 (``poq_mode="dynamic"``; ``static_poq`` gives the paper's
          per-position calibrated scales), SLQ (shift-log2, base sqrt2) on the FC2 input, AMO
          (module reconstruction of rounding + activation scales with QDrop input mixing,
          ``golden.reconstruct``).
mptq      MPTQ-ViT: SQ-b (SmoothQuant with bias, ``golden.smoothquant``), OPT-m three-region
          FC2 input (``golden.quantizers.three_region``); single precision, or greedy mixed
          precision (``golden.mixed_precision``) when ``mp_target_bits`` is given
          (``--mp-target-bits``).
========  ==================================================================================

Every component is a switch of :class:`QuantConfig` (ablation rows: ``--no-poq``, ``--no-slq``,
``--no-amo``, ``--no-qdrop``, ``--static-poq``, ``--no-sq``, ``--no-three-region``, ``--no-mp``). Bits are given as ``w4a4``,
``w6a6``, ``w8a8``; patch embedding and head default to 8 bits.

Operand roles (``build_quantizer(config, role, bits, name)``):
``qkv_in``, ``fc1_in`` (post-LayerNorm), ``fc2_in`` (post-GELU), ``proj_in`` (attn @ v output),
``q`` (A of q @ k^T), ``k`` / ``v`` (B operands), ``softmax`` (A of attn @ v), ``embed_in``, ``head_in``;
with ``all_modules`` (fake-quant only) also ``softmax_in`` (the scaled attention logits, per-tensor
uniform) and ``ln_in`` (every LayerNorm input, power-of-two factor per channel,
``golden.quantizers.ptf``).
"""
from __future__ import annotations


from dataclasses import asdict, dataclass, field, replace

from vitaccel.sim.cli_args import parse_bits

from .quantizers import (Log2Quantizer, PerPatchOutlierQuantizer, QuantizerError, ShiftLog2Quantizer,
                         SymmetricQuantizer, UniformQuantizer, check_bits)
from .quantizers.ptf import PowerOfTwoFactorQuantizer
from .quantizers.three_region import ThreeRegionQuantizer

METHODS = ("baseline", "adfq", "mptq")


@dataclass
class QuantConfig:
    """Everything that decides the quantized model (serialised into the program manifest)."""

    method: str = "baseline"
    w_bits: int = 4
    a_bits: int = 4
    embed_bits: int = 8
    head_bits: int = 8
    act_method: str = "mse"           # per-tensor range search: minmax | percentile | mse
    weight_search: str = "mse"        # per-channel weight range: minmax | mse | hessian | output
    weight_rounding: str = "nearest"  # block linears' weight codes: nearest | gptq (golden.gptq)
    gptq_source: str = "target"       # GPTQ's rows / target: fp | quant | target (golden.gptq)
    poq: bool = False                 # ADFQ POQ on qkv / fc1 inputs
    alpha_qkv: float | None = 5.0
    alpha_fc1: float | None = 10.0
    poq_mode: str = "static"          # static (per token position) | dynamic (per row at run time, spec 8.1.1)
    fc2: str = "uniform"              # uniform | slq | three_region
    slq_base: str | None = None       # "2" | "sqrt2" | None (sqrt2)
    amo: bool = False                 # ADFQ AMO block reconstruction (golden.reconstruct)
    adaround: bool = False            # rounding optimisation inside reconstruction
    amo_iters: int | None = None      # AMO overrides (None: golden.reconstruct.AMOConfig defaults)
    amo_num_samples: int | None = None
    amo_batch_size: int | None = None
    amo_input_drop: float | None = None  # QDrop probability in AMO (None: AMOConfig default, 0.5)
    amo_granularity: str | None = None  # AMO units: module (MHA / MLP, the paper) | block (None: module)
    amo_learn_weight_scales: bool | None = None  # AMO also learns the weights' dequantisation scales
    amo_lr_weight_scale: float | None = None     # ... with this Adam learning rate (None: AMOConfig's)
    amo_bias_correction: bool | None = None      # AMO shifts each module's last bias by its mean output error
    smoothquant: bool = False         # MPTQ SQ-b
    sq_alpha: float = 0.5
    sq_bias: bool = True              # SQ-b's mean shift mu (False: plain SmoothQuant, the Table 2 "SQ" row)
    sq_center: str = "mean"           # SQ-b's mu: channel mean | midpoint of the channel's range
    fc2_metric: str = "mse"           # OPT-m search metric for the three-region FC2 input: mse | hessian
    fc2_clip: int = 0                 # OPT-m: also try this many region-2 exponents below the covering one
    act_metric: str = "mse"           # range search of block linears' per-tensor uniform inputs: mse | hessian
    act_range: str = "joint"          # hessian range search: one ratio for both ends | split (each end its own)
    all_modules: bool = False         # also quantize the LayerNorm and softmax inputs (MPTQ-ViT Table 3's
                                      # "all modules"; fake-quant only: no integer program, docs/accuracy.md)
    mixed_precision: bool = False     # MPTQ greedy mixed precision
    mp_target_bits: float | None = None
    layer_bits: dict = field(default_factory=dict)   # layer name -> {"w": bits, "a": bits} overrides

    def __post_init__(self):
        for b in (self.w_bits, self.a_bits, self.embed_bits, self.head_bits):
            check_bits(b)
        if self.method not in METHODS:
            raise QuantizerError(f"unknown method {self.method!r}; choose one of {METHODS}")
        if self.weight_search not in ("minmax", "mse", "hessian", "output"):
            raise QuantizerError(f"unknown weight range search {self.weight_search!r} "
                                 "(use 'minmax', 'mse', 'hessian' or 'output')")
        if self.weight_rounding not in ("nearest", "gptq"):
            raise QuantizerError(f"unknown weight rounding {self.weight_rounding!r} (use 'nearest' or 'gptq')")
        if self.gptq_source not in ("fp", "quant", "target"):
            raise QuantizerError(f"unknown GPTQ source {self.gptq_source!r} (use 'fp', 'quant' or 'target')")
        if self.poq_mode not in ("static", "dynamic"):
            raise QuantizerError(f"unknown POQ mode {self.poq_mode!r} (use 'static' or 'dynamic')")
        if self.amo_input_drop is not None and not 0.0 <= self.amo_input_drop <= 1.0:
            raise QuantizerError(f"amo_input_drop must be a probability in [0, 1], got {self.amo_input_drop}")
        if self.amo_granularity not in (None, "module", "block"):
            raise QuantizerError(f"unknown AMO granularity {self.amo_granularity!r} (use 'module' or 'block')")
        if self.act_metric not in ("mse", "hessian"):
            raise QuantizerError(f"unknown activation range metric {self.act_metric!r} (use 'mse' or 'hessian')")
        if self.act_range not in ("joint", "split"):
            raise QuantizerError(f"unknown activation range search {self.act_range!r} (use 'joint' or 'split')")
        if self.act_range == "split" and self.act_metric != "hessian":
            raise QuantizerError("act_range='split' refines the Hessian-guided range search: it needs "
                                 "act_metric='hessian' (the mptq preset), or use act_range='joint'")
        if self.fc2_metric not in ("mse", "hessian"):
            raise QuantizerError(f"unknown OPT-m metric {self.fc2_metric!r} (use 'mse' or 'hessian')")
        if self.sq_center not in ("mean", "midpoint"):
            raise QuantizerError(f"unknown SQ-b centre {self.sq_center!r} (use 'mean' or 'midpoint')")
        if int(self.fc2_clip) != self.fc2_clip or not 0 <= self.fc2_clip <= 15:
            raise QuantizerError(f"fc2_clip must be an integer in 0..15, got {self.fc2_clip}")
        if self.fc2 not in ("uniform", "slq", "three_region"):
            raise QuantizerError(f"unknown FC2 input quantizer {self.fc2!r}")

    def bits_for(self, layer: str, which: str) -> int:
        """Bits of ``which`` ("w" or "a") for ``layer`` (mixed-precision overrides first)."""
        over = self.layer_bits.get(layer, {})
        if which in over:
            return int(over[which])
        return self.w_bits if which == "w" else self.a_bits

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "QuantConfig":
        return cls(**d)


def preset(method: str, bits: str = "w4a4", **overrides) -> QuantConfig:
    """The :class:`QuantConfig` of a method preset, with keyword overrides (ablations)."""
    w, a = parse_bits(bits)
    if method == "baseline":
        cfg = QuantConfig(method=method, w_bits=w, a_bits=a)
    elif method == "adfq":
        cfg = QuantConfig(method=method, w_bits=w, a_bits=a, poq=True, poq_mode="dynamic", fc2="slq", amo=True,
                          adaround=True)
    elif method == "mptq":  # single precision (the paper's Table 1/2) unless a Greedy MP target is given;
        # ranges and OPT-m chosen by the paper's Hessian-guided metric (docs/accuracy.md, session 24)
        cfg = QuantConfig(method=method, w_bits=w, a_bits=a, smoothquant=True, fc2="three_region",
                          fc2_metric="hessian", act_metric="hessian",
                          mixed_precision=overrides.get("mp_target_bits") is not None)
    else:
        raise QuantizerError(f"unknown method {method!r}; choose one of {METHODS}")
    return replace(cfg, **overrides) if overrides else cfg


def build_quantizer(cfg: QuantConfig, role: str, bits: int, name: str = ""):
    """The activation quantizer for operand ``role`` (see the module docstring)."""
    if role in ("qkv_in", "fc1_in"):
        if cfg.poq:
            alpha = cfg.alpha_qkv if role == "qkv_in" else cfg.alpha_fc1
            return PerPatchOutlierQuantizer(bits, alpha=alpha, name=name, dynamic=cfg.poq_mode == "dynamic")
        return UniformQuantizer(bits, method=cfg.act_method, name=name)
    if role == "fc2_in":
        if cfg.fc2 == "slq":
            return ShiftLog2Quantizer(bits, base=cfg.slq_base, name=name)
        if cfg.fc2 == "three_region":
            return ThreeRegionQuantizer(bits, name=name, m1_clip=cfg.fc2_clip)
        return UniformQuantizer(bits, method=cfg.act_method, name=name)
    if role in ("proj_in", "q", "embed_in", "head_in"):
        return UniformQuantizer(bits, method=cfg.act_method, name=name)
    if role in ("k", "v"):
        return SymmetricQuantizer(bits, method=cfg.act_method, name=name)
    if role == "softmax":
        return Log2Quantizer(bits, name=name)
    if role == "softmax_in":  # the scaled attention logits (all_modules only)
        return UniformQuantizer(bits, method=cfg.act_method, name=name)
    if role == "ln_in":  # the residual stream in front of a LayerNorm (all_modules only)
        return PowerOfTwoFactorQuantizer(bits, name=name)
    raise QuantizerError(f"unknown operand role {role!r}")


#: Ablation switches: CLI flag -> QuantConfig override.
ABLATIONS = {
    "no_poq": {"poq": False},
    "no_slq": {"fc2": "uniform"},
    "no_amo": {"amo": False, "adaround": False},
    "no_qdrop": {"amo_input_drop": 0.0},
    "block_amo": {"amo_granularity": "block"},
    "static_poq": {"poq_mode": "static"},
    "no_sq": {"smoothquant": False},
    "no_sq_bias": {"sq_bias": False},
    "no_three_region": {"fc2": "uniform"},
    "no_mp": {"mixed_precision": False},
}

#: Calibration schedules of the benchmarks (``benchmarks/accuracy.py --preset``): calibration images
#: per seed and the AMO overrides applied to ``adfq`` rows. ``fast`` is what the 2-core machine runs
#: (AMO defaults of ``golden.reconstruct.AMOConfig``: 200 iterations, batch 8); ``paper`` is the
#: ADFQ-ViT paper's schedule (1 024 calibration images, 3 000 AMO iterations per module, batch 32).
CALIBRATION_PRESETS = {
    "fast": {"calib_size": 32},
    "paper": {"calib_size": 1024, "amo_iters": 3000, "amo_num_samples": 1024, "amo_batch_size": 32},
}
