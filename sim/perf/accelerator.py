"""``vitaccel estimate --dataflow accelerator``: per-layer cycles and bytes of the accelerator top.

The figures are those of :mod:`sim.accelerator` -- the exact cycle and byte model of
:class:`hw.accelerator.Accelerator` that ``vitaccel tb model`` checks against the RTL layer by layer
-- so for the same configuration (array, outlier lanes, memory port width, memory latency) and the
same per-tile outlier counts the estimate equals the RTL's cycle count and the bytes logged on its
AXI port.  Differences to the ``engine`` dataflow's traffic model are listed in docs/estimator.md
("Accelerator dataflow").

Mapping onto the estimator's :class:`sim.perf.traffic.Traffic`: ``dram_a`` = A codes + row
parameters + outlier list regions, ``dram_b`` = B codes + column parameters regions + the
descriptor, ``dram_out`` = output rows (bytes written by strobe) + the status record; ``compute`` is
the engine's cycle counter (:func:`sim.schedule.layer_cycles`), ``total`` the top's cycles
(descriptor, load, prime, engine run, status; no overlap), ``stall = total - compute``.
"""
from __future__ import annotations

from vitaccel.sim import accelerator as acc
from vitaccel.sim.accelerator import AcceleratorConfig, LayerGeometry

from .shapes import Gemm
from .traffic import Traffic

__all__ = ["gemm_geometry", "accelerator_config_for", "estimate_layer", "buffer_note", "port_note",
           "DEFAULT_MEM_LATENCY"]

#: Memory read latency (cycles) assumed when ``--mem-latency`` is not given.
DEFAULT_MEM_LATENCY = 20


def gemm_geometry(g: Gemm, rows: int) -> LayerGeometry:
    """The accelerator's view of one instance of ``g`` (outliers per row tile of ``rows`` rows)."""
    n_m = -(-g.M // rows)
    o = g.outliers_per_tile if g.outliers else 0
    counts = (int(o),) * n_m if isinstance(o, int) else tuple(int(c) for c in o)
    return LayerGeometry(g.name, g.M, g.K, g.N, g.a_bits, g.b_bits, g.out_fmt, g.out_bits, counts)


def accelerator_config_for(gemms: list[Gemm], hw, engine_cfg) -> AcceleratorConfig:
    """The top an estimate uses: ``engine_cfg``, a memory port of ``hw.bus_bits`` (default
    :func:`sim.accelerator.default_bus_bits`), ``hw.mem_latency``, and buffers just large enough
    for the largest region of the workload (:func:`sim.accelerator.sized_config`)."""
    return acc.sized_config(engine_cfg, [gemm_geometry(g, engine_cfg.rows) for g in gemms],
                            bus_bits=getattr(hw, "bus_bits", None),
                            mem_latency=getattr(hw, "mem_latency", None) or DEFAULT_MEM_LATENCY, exact=True)


def estimate_layer(g: Gemm, hw, cfg: AcceleratorConfig):
    """A :class:`sim.perf.estimate.LayerEstimate` of ``g`` (all ``count`` instances) on the top ``cfg``.

    Raises :class:`sim.accelerator.AccelError` (a ``ValueError``) when the layer does not fit.
    """
    from .estimate import LayerEstimate

    plan = acc.layer_plan(cfg, gemm_geometry(g, cfg.engine.rows))
    cyc = acc.layer_cycles_top(cfg, plan)
    by = acc.model_traffic(cfg, plan)
    c = g.count
    reads = {r: plan.regions[r].words * cfg.bus_bytes for r in acc.REGIONS}
    need = sum(reads.values())
    feed = (reads["a"] + reads["rowp"] + reads["outl"]) * plan.n_blocks + reads["b"] + reads["colp"]
    tr = Traffic(
        schedule="accelerator", a_codes=by["a"] * c, a_vectors=by["rowp"] * c, outliers=by["outl"] * c,
        b_codes=by["b"] * c, b_params=by["colp"] * c, out=by["out"] * c, psum=0, a_refetch=1, b_refetch=1,
        dram_a=(by["a"] + by["rowp"] + by["outl"]) * c, dram_b=(by["b"] + by["colp"] + by["desc"]) * c,
        dram_out=(by["out"] + by["status"]) * c, sram_read=feed * c, sram_write=need * c, min_sram=need,
        extra={"bytes": {k: v * c for k, v in by.items()}, "phases": cyc.to_dict()})
    bd = {"total": cyc.total * c, "engine": cyc.engine.total * c, "desc": cyc.desc * c, "load": cyc.load * c,
          "prime": cyc.prime * c, "run": cyc.run * c, "status": cyc.status * c, "n_tiles": cyc.engine.n_tiles * c,
          "macs": g.macs}
    compute, total = cyc.engine.total * c, cyc.total * c
    dram_cycles = (by["read"] + by["write"]) * c / cfg.bus_bytes
    bound = "memory" if total - compute > compute else "compute"
    return LayerEstimate(g, compute, bd, tr, dram_cycles, total, total - compute, bound)


def buffer_note(cfg: AcceleratorConfig, layers, sram_bytes: int) -> str | None:
    """A note when the accelerator's buffers (a layer's whole input, :data:`Traffic.min_sram`) exceed
    ``--sram-kib`` (the accelerator model does not spill; the figures assume the buffers exist)."""
    worst = max(layers, key=lambda l: l.traffic.min_sram)
    total = (cfg.a_buf_words + cfg.b_buf_words + cfg.outl_buf_words) * cfg.bus_bytes
    if worst.traffic.min_sram <= sram_bytes:
        return None
    return (f"accelerator buffers hold a whole layer's inputs: {worst.gemm.name} needs "
            f"{worst.traffic.min_sram / 1024:.1f} KiB (all buffers {total / 1024:.1f} KiB + parameters), more than "
            f"--sram-kib {sram_bytes / 1024:g}")


def port_note(cfg: AcceleratorConfig) -> str:
    """What the accelerator dataflow assumes of the memory (``--dram-bw`` is not used)."""
    return (f"accelerator: {cfg.bus_bits}-bit AXI4 memory port ({cfg.bus_bytes} B/cycle), read latency "
            f"{cfg.mem_latency} cycles (--bus-bits, --mem-latency; --dram-bw is not used)")
