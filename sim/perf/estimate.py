"""Whole-model cycle / traffic estimate: per-layer compute (sim.schedule or SCALE-Sim), traffic, stalls.

Overlap model (docs/estimator.md, "Overlap model"): layers run one after another and do not overlap;
inside a layer the SRAM is double buffered, so the DRAM transfers of the layer proceed while it
computes. With ``C`` the layer's compute cycles (from :func:`sim.schedule.layer_cycles`, which already
contain the engine's own B fill, drain and requantiser pipeline; or the SCALE-Sim closed form, which
contains the fold fill/drain), ``D`` its DRAM bytes and ``bw`` the DRAM bandwidth in bytes/cycle::

    total = max(C, ceil(D / bw))        stall = total - C

i.e. per tile ``max(compute, transfer)`` summed over the tiles of a layer, with the transfers spread
evenly over them. A layer is *memory bound* when ``D / bw > C``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from . import engine as engine_mod
from .scalesim import DATAFLOWS, scalesim_cycles, scalesim_report_counts, sram_requests
from .shapes import Gemm
from .traffic import Traffic, engine_traffic, layer_traffic

ACC_BYTES = 4  # partial sums of the generic SCALE-Sim dataflows are int32


@dataclass(frozen=True)
class Hardware:
    """Accelerator parameters.

    Attributes
    ----------
    rows, cols : int
        MAC array size.
    freq : float
        Clock in Hz.
    dram_bw : float
        DRAM bandwidth in bytes per cycle.
    sram_kib : float
        On-chip buffer size in KiB (1024 bytes).
    dataflow : str
        ``engine`` (cycles from sim.schedule) or a SCALE-Sim dataflow ``os``/``ws``/``is``.
    acc_bits, outlier_capacity, outlier_lanes, requant_share : int or None
        Passed to ``sim.engine_config.EngineConfig`` (``None`` = its default).
    max_k : int or None
        Depth of each engine B bank (``None``: the largest K of the workload).
    """

    rows: int = 16
    cols: int = 16
    freq: float = 200e6
    dram_bw: float = 16.0
    sram_kib: float = 256.0
    dataflow: str = "engine"
    acc_bits: int | None = None
    outlier_capacity: int | None = None
    outlier_lanes: int | None = None
    requant_share: int | None = None
    max_k: int | None = None
    # dataflow "accelerator" (sim/perf/accelerator.py): memory port width (bits; None = the default
    # of sim.accelerator.default_bus_bits) and memory read latency (cycles; None = 20)
    bus_bits: int | None = None
    mem_latency: int | None = None

    @property
    def sram_bytes(self) -> int:
        return int(self.sram_kib * 1024)

    @property
    def peak_macs_per_cycle(self) -> int:
        return self.rows * self.cols

    def validate(self) -> None:
        """Raise ``ValueError`` with a clear message for impossible values."""
        for name in ("rows", "cols"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"--{name} must be a positive integer, got {v!r}")
        if not (self.freq > 0 and math.isfinite(self.freq)):
            raise ValueError(f"--freq must be a positive clock in Hz, got {self.freq!r}")
        if not (self.dram_bw > 0 and math.isfinite(self.dram_bw)):
            raise ValueError(f"--dram-bw must be a positive number of bytes per cycle, got {self.dram_bw!r}")
        if not (self.sram_kib > 0 and math.isfinite(self.sram_kib)):
            raise ValueError(f"--sram-kib must be positive, got {self.sram_kib!r}")
        if self.dataflow not in ("engine", "accelerator") + DATAFLOWS:
            raise ValueError(f"unknown dataflow {self.dataflow!r}; expected engine, accelerator, os, ws or is")
        for name in ("acc_bits", "outlier_capacity", "outlier_lanes", "requant_share", "max_k"):
            v = getattr(self, name)
            if v is not None and v < (1 if name != "outlier_capacity" else 0):
                raise ValueError(f"--{name.replace('_', '-')} must be positive, got {v}")


@dataclass
class LayerEstimate:
    """Estimate of one GEMM layer (all its instances)."""

    gemm: Gemm
    compute: int
    breakdown: dict
    traffic: Traffic
    dram_cycles: float
    total: int
    stall: int
    bound: str

    @property
    def macs(self) -> int:
        return self.gemm.macs

    def utilisation(self, hw: Hardware) -> float:
        return self.macs / (hw.peak_macs_per_cycle * self.total) if self.total else 0.0

    @property
    def intensity(self) -> float:
        """Arithmetic intensity, operations (2 per MAC) per DRAM byte."""
        d = self.traffic.dram_total
        return 2 * self.macs / d if d else math.inf


@dataclass
class ModelEstimate:
    """Estimate of a whole model."""

    model: str
    hw: Hardware
    batch: int
    bits: str
    layers: list[LayerEstimate]
    source: str = "timm"
    notes: list[str] = field(default_factory=list)
    engine_config: dict | None = None
    #: set by :func:`with_synthesis`: where the clock comes from, the configuration's resources, device fit
    clock: object | None = None
    resources: object | None = None
    device_fit: object | None = None

    @property
    def cycles(self) -> int:
        return sum(l.total for l in self.layers)

    @property
    def compute_cycles(self) -> int:
        return sum(l.compute for l in self.layers)

    @property
    def stall_cycles(self) -> int:
        return sum(l.stall for l in self.layers)

    @property
    def macs(self) -> int:
        return sum(l.macs for l in self.layers)

    @property
    def latency_s(self) -> float:
        return self.cycles / self.hw.freq

    @property
    def inferences_per_s(self) -> float:
        return self.batch / self.latency_s if self.cycles else math.inf

    @property
    def utilisation(self) -> float:
        return self.macs / (self.hw.peak_macs_per_cycle * self.cycles) if self.cycles else 0.0

    @property
    def dram_bytes(self) -> int:
        return sum(l.traffic.dram_total for l in self.layers)

    @property
    def sram_bytes(self) -> int:
        return sum(l.traffic.sram_read + l.traffic.sram_write for l in self.layers)

    @property
    def intensity(self) -> float:
        return 2 * self.macs / self.dram_bytes if self.dram_bytes else math.inf

    @property
    def weight_params(self) -> int:
        return sum(l.gemm.weight_params for l in self.layers)

    @property
    def weight_bytes(self) -> int:
        """Packed weight storage of the configuration (codes only)."""
        return sum(l.traffic.b_codes for l in self.layers if l.gemm.op == "linear")

    @property
    def compression_vs_fp16(self) -> float:
        return 2 * self.weight_params / self.weight_bytes if self.weight_bytes else math.nan

    @property
    def compression_vs_int8(self) -> float:
        return self.weight_params / self.weight_bytes if self.weight_bytes else math.nan

    def summary(self) -> dict:
        """Whole-model figures as a flat dict (used by the table, CSV and JSON outputs)."""
        return dict(
            model=self.model, source=self.source, bits=self.bits, batch=self.batch,
            rows=self.hw.rows, cols=self.hw.cols, dataflow=self.hw.dataflow, freq_hz=self.hw.freq,
            dram_bw_bytes_per_cycle=self.hw.dram_bw, sram_kib=self.hw.sram_kib,
            layers=len(self.layers), macs=self.macs, cycles=self.cycles, compute_cycles=self.compute_cycles,
            stall_cycles=self.stall_cycles, latency_ms=1e3 * self.latency_s,
            inferences_per_s=self.inferences_per_s, utilisation=self.utilisation,
            dram_bytes=self.dram_bytes, sram_bytes=self.sram_bytes,
            arithmetic_intensity_ops_per_byte=self.intensity,
            weight_params=self.weight_params, weight_bytes=self.weight_bytes,
            compression_vs_fp16=self.compression_vs_fp16, compression_vs_int8=self.compression_vs_int8,
            memory_bound_layers=sum(l.bound == "memory" for l in self.layers),
            engine_config=self.engine_config, **self._synthesis_summary(),
        )

    def _synthesis_summary(self) -> dict:
        out: dict = {}
        if self.clock is not None:
            out.update(clock_source=self.clock.source, clock=self.clock.text)
        if self.resources is not None:
            r = self.resources
            out.update(resource_source=r.source, resource_basis=r.basis, resource_notes=list(r.notes),
                       **{f"res_{k}": v for k, v in r.values.items()})
        if self.device_fit is not None:
            f = self.device_fit
            out.update(device=f.device, fits_device=f.fits, limiting_resource=f.limiting,
                       bram_total=f.use.get("BRAM", (None,))[0])
        return out


def _overlap(compute: int, tr: Traffic, bw: float) -> tuple[int, float, str]:
    dram_cycles = tr.dram_total / bw
    total = max(compute, math.ceil(dram_cycles - 1e-9))
    return total, dram_cycles, ("memory" if dram_cycles > compute else "compute")


def _engine_layer(g: Gemm, cfg) -> tuple[int, dict]:
    o = g.outliers_per_tile if isinstance(g.outliers_per_tile, int) else tuple(g.outliers_per_tile)
    bd = engine_mod.layer_cycles(cfg, g.M, g.K, g.N, o if g.outliers else 0)
    d = engine_mod.breakdown_dict(bd)
    out = {k: (v * g.count if isinstance(v, int) else v) for k, v in d.items()}
    return int(bd.total) * g.count, out


def _scalesim_layer(g: Gemm, hw: Hardware) -> tuple[int, dict]:
    """SCALE-Sim 3.0.0 compute cycles of all instances: each instance is one SCALE-Sim layer."""
    c = scalesim_cycles(hw.dataflow, hw.rows, hw.cols, g.M, g.K, g.N)
    return c.total * g.count, dict(total=c.total * g.count, Sr=c.Sr, Sc=c.Sc, T=c.T, row_folds=c.row_folds,
                                   col_folds=c.col_folds, cycles_per_fold=c.cycles_per_fold,
                                   n_tiles=c.row_folds * c.col_folds * g.count, macs=g.macs,
                                   mapping_efficiency=c.mapping_efficiency,
                                   compute_utilisation=c.compute_utilisation)


def _scalesim_traffic(g: Gemm, hw: Hardware) -> Traffic:
    """Traffic under a SCALE-Sim dataflow: ``os`` uses :func:`traffic.layer_traffic`; ``ws`` / ``is``
    keep their stationary operand (B / A) loaded once and stream the other one once per column fold
    unless it fits in the SRAM left over, and accumulate ``ceil(K/R)`` partial outputs (int32) per
    column fold, which go to DRAM and back when one column fold's partial outputs do not fit next to
    the cached operand."""
    tr = layer_traffic(g, hw.rows, hw.cols, hw.sram_bytes)
    reads = sram_requests(hw.dataflow, hw.rows, hw.cols, g.M, g.K, g.N)
    extra = dict(scalesim_sram_elements=reads,
                 scalesim_report_counts=scalesim_report_counts(hw.dataflow, hw.rows, hw.cols, g.M, g.K, g.N))
    if hw.dataflow == "os":
        tr.extra.update(extra)
        return tr
    c = scalesim_cycles(hw.dataflow, hw.rows, hw.cols, g.M, g.K, g.N)
    a_once, b_once = tr.a_once // g.count, tr.b_once // g.count
    avail = hw.sram_bytes - tr.min_sram
    if hw.dataflow == "ws":
        am, bm = (1 if a_once <= avail else c.col_folds), 1
    else:
        am, bm = 1, (1 if b_once <= avail else c.col_folds)
    # SCALE-Sim visits folds column fold outer, row (K) fold inner: the partial outputs of one column
    # fold (ws: M x cols, is: cols x N, int32) accumulate over the ceil(K/R) row folds; they spill to
    # DRAM (written and read back once per extra row fold) only when that region does not fit.
    psum_bytes = g.M * g.N * ACC_BYTES
    region = (g.M * min(hw.cols, g.N) if hw.dataflow == "ws" else min(hw.cols, g.M) * g.N) * ACC_BYTES
    spill = c.row_folds > 1 and region + (a_once if am == 1 and hw.dataflow == "ws" else 0) \
        + (b_once if bm == 1 and hw.dataflow == "is" else 0) > avail
    psum = psum_bytes * (c.row_folds - 1) * g.count if spill else 0
    dram_a, dram_b = a_once * am * g.count, b_once * bm * g.count
    scale_a = reads["ifmap"] / (g.M * g.K)
    scale_b = reads["filter"] / (g.K * g.N)
    return Traffic(
        schedule=hw.dataflow, a_codes=tr.a_codes, a_vectors=tr.a_vectors, outliers=tr.outliers,
        b_codes=tr.b_codes, b_params=tr.b_params, out=tr.out, psum=psum, a_refetch=am, b_refetch=bm,
        dram_a=dram_a, dram_b=dram_b, dram_out=tr.dram_out,
        sram_read=int(tr.a_once * scale_a + tr.b_once * scale_b
                      + (c.row_folds - 1) * psum_bytes * g.count),
        sram_write=dram_a + dram_b + tr.dram_out + c.row_folds * psum_bytes * g.count,
        min_sram=tr.min_sram, extra=extra)


def with_synthesis(est: ModelEstimate, *, freq_mhz: float | None = None, device: str | None = None,
                   allow_model_clock: bool = False) -> ModelEstimate:
    """Set the estimate's clock from synthesis results and attach resources and the device check.

    Engine dataflow (docs/estimator.md, "Clock and resources"): the clock is ``freq_mhz`` when given,
    else the measured Fmax of the ``R x C wXaY`` build (widest codes of the workload) recorded in
    ``sim/perf/synth_table.json``, else (``allow_model_clock``) the nearest measured configuration's,
    else :data:`resources.ASSUMED_MHZ`, labelled assumed. Resources are the recorded ones or the fitted
    model's; the device check adds the DP16KD blocks of the SRAM beyond the engine's B banks. SCALE-Sim
    dataflows describe a generic array without synthesis data: given or assumed clock, no resources.
    """
    from dataclasses import replace

    from . import resources as res
    from .traffic import engine_bank_bytes

    device = device or res.DEFAULT_DEVICE
    cfg = est.engine_config
    if est.hw.dataflow != "engine" or not cfg:
        if freq_mhz is not None:
            clock = res.Clock(float(freq_mhz), "given", f"{freq_mhz:g} MHz (given with --freq)")
        else:
            clock = res.Clock(res.ASSUMED_MHZ, "assumed", f"ASSUMED {res.ASSUMED_MHZ:g} MHz: generic SCALE-Sim "
                              f"{est.hw.dataflow} array, no synthesis data (pass --freq to set the clock)")
        est.hw, est.clock = replace(est.hw, freq=clock.hz), clock
        return est
    R, C, a, b = cfg["rows"], cfg["cols"], cfg["a_bits"], cfg["b_bits"]
    clock = res.engine_clock(R, C, a, b, freq_mhz=freq_mhz, allow_model=allow_model_clock,
                             requant_share=cfg.get("requant_share", 1))
    resources = res.engine_resources(R, C, a, b, cfg=cfg)
    extra = res.sram_bram(est.hw.sram_bytes, engine_bank_bytes(C, cfg["max_k"], b))
    est.hw, est.clock, est.resources = replace(est.hw, freq=clock.hz), clock, resources
    est.device_fit = res.check_fit(resources.values, device, extra_bram=extra)
    return est


def engine_config_for(gemms: list[Gemm], hw: Hardware):
    """The EngineConfig an estimate of ``gemms`` uses: widest A/B codes of the workload, B banks
    ``max_k`` deep (the largest K unless ``hw.max_k`` is given)."""
    max_k = hw.max_k if hw.max_k is not None else max(g.K for g in gemms)
    return engine_mod.build_config(hw.rows, hw.cols, max(g.a_bits for g in gemms), max(g.b_bits for g in gemms),
                                   max_k, acc_bits=hw.acc_bits, outlier_capacity=hw.outlier_capacity,
                                   outlier_lanes=hw.outlier_lanes, requant_share=hw.requant_share)


def estimate_layer(g: Gemm, hw: Hardware, cfg=None) -> LayerEstimate:
    """Estimate one GEMM layer.

    Raises ``traffic.SramTooSmall`` or ``sim.engine_config.ConfigError``.
    """
    if hw.dataflow == "accelerator":   # the AXI top around the engine (sim/perf/accelerator.py)
        from . import accelerator
        if cfg is None:
            cfg = accelerator.accelerator_config_for([g], hw, engine_config_for([g], hw))
        return accelerator.estimate_layer(g, hw, cfg)
    if hw.dataflow == "engine":
        if cfg is None:
            cfg = engine_config_for([g], hw)
        compute, bd = _engine_layer(g, cfg)
        tr = engine_traffic(g, hw.rows, hw.cols, hw.sram_bytes, max_k=cfg.max_k, bank_bits=cfg.b_bits)
    else:
        compute, bd = _scalesim_layer(g, hw)
        tr = _scalesim_traffic(g, hw)
    total, dram_cycles, bound = _overlap(compute, tr, hw.dram_bw)
    return LayerEstimate(g, compute, bd, tr, dram_cycles, total, total - compute, bound)


def estimate(gemms: list[Gemm], hw: Hardware, *, model: str = "", batch: int = 1, bits: str = "",
             source: str = "timm", progress: bool = False) -> ModelEstimate:
    """Estimate every layer of ``gemms`` on ``hw``."""
    hw.validate()
    if not gemms:
        raise ValueError("the workload has no GEMM layers")
    cfg = engine_config_for(gemms, hw) if hw.dataflow in ("engine", "accelerator") else None
    if hw.dataflow == "accelerator":   # sim/perf/accelerator.py
        from . import accelerator
        cfg = accelerator.accelerator_config_for(gemms, hw, cfg)
    it = gemms
    if progress:
        from tqdm import tqdm
        it = tqdm(gemms, desc="estimate", unit="layer", leave=False)
    layers = [estimate_layer(g, hw, cfg) for g in it]
    est = ModelEstimate(model, hw, batch, bits, layers, source)
    if hw.dataflow == "accelerator":
        note = accelerator.buffer_note(cfg, layers, hw.sram_bytes)
        est.notes.extend([accelerator.port_note(cfg)] + ([note] if note else []))
        cfg = cfg.engine
    if cfg is not None:
        est.engine_config = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(vars(cfg))
        over = [l.gemm.name for l in layers if l.gemm.outliers
                and (max(l.gemm.outliers_per_tile) if not isinstance(l.gemm.outliers_per_tile, int)
                     else l.gemm.outliers_per_tile) > cfg.outlier_capacity]
        if over:
            est.notes.append(f"{len(over)} layer(s) exceed outlier_capacity = {cfg.outlier_capacity} per tile "
                             f"(the RTL flags overflow), e.g. {over[0]}")
    return est
