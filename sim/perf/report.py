"""Outputs of ``vitaccel estimate``: terminal table, CSV, JSON and a PNG (stacked bars + roofline)."""
from __future__ import annotations

import csv
import io
import json
import math

from .estimate import LayerEstimate, ModelEstimate


def _si(x: float, unit: str = "") -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    for div, p in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:.2f}{p}{unit}"
    return f"{x:.0f}{unit}" if float(x).is_integer() else f"{x:.2f}{unit}"


def _kib(b: float) -> str:
    return f"{b / 1024:.1f}"


def layer_row(l: LayerEstimate, hw) -> dict:
    """One layer as a flat dict (CSV / JSON columns)."""
    g, t = l.gemm, l.traffic
    row = dict(
        name=g.name, kind=g.kind, op=g.op, M=g.M, K=g.K, N=g.N, count=g.count, a_bits=g.a_bits,
        b_bits=g.b_bits, out_fmt=g.out_fmt, outliers_per_tile=g.outliers_per_tile, macs=l.macs,
        compute_cycles=l.compute, stall_cycles=l.stall, total_cycles=l.total, bound=l.bound,
        utilisation=l.utilisation(hw), arithmetic_intensity=l.intensity, schedule=t.schedule,
        a_refetch=t.a_refetch, b_refetch=t.b_refetch,
        dram_a_bytes=t.dram_a, dram_b_bytes=t.dram_b, dram_out_bytes=t.dram_out, dram_psum_bytes=2 * t.psum,
        dram_total_bytes=t.dram_total, a_code_bytes=t.a_codes, a_vector_bytes=t.a_vectors,
        outlier_bytes=t.outliers, b_code_bytes=t.b_codes, b_param_bytes=t.b_params, out_bytes=t.out,
        sram_read_bytes=t.sram_read, sram_write_bytes=t.sram_write, min_sram_bytes=t.min_sram,
    )
    for k, v in l.breakdown.items():
        if k in ("mapping_efficiency", "compute_utilisation"):  # SCALE-Sim fold averages (fractions)
            row[f"scalesim_{k}"] = v
        elif k not in ("total", "macs", "utilisation") and isinstance(v, (int, float)):
            row[f"cyc_{k}"] = v
    return row


def table(est: ModelEstimate, *, max_rows: int | None = None) -> str:
    """Readable fixed-width table: one line per layer and a totals block."""
    hw = est.hw
    head = (f"{'layer':34s} {'M':>5s} {'K':>5s} {'N':>5s} {'x':>4s} {'bits':>5s} {'compute':>9s} "
            f"{'stall':>8s} {'total':>9s} {'util':>6s} {'DRAM KiB':>9s} {'A':>7s} {'B':>7s} {'out':>7s} "
            f"{'sched':>8s} {'bound':>7s}")
    lines = [head, "-" * len(head)]
    rows = est.layers if max_rows is None else est.layers[:max_rows]
    for l in rows:
        g, t = l.gemm, l.traffic
        name = g.name if len(g.name) <= 34 else "..." + g.name[-31:]
        lines.append(
            f"{name:34s} {g.M:5d} {g.K:5d} {g.N:5d} {g.count:4d} {f'{g.b_bits}/{g.a_bits}':>5s} {l.compute:9d} "
            f"{l.stall:8d} {l.total:9d} {100 * l.utilisation(hw):5.1f}% {_kib(t.dram_total):>9s} "
            f"{_kib(t.dram_a):>7s} {_kib(t.dram_b):>7s} {_kib(t.dram_out):>7s} {t.schedule:>8s} {l.bound:>7s}")
    if max_rows is not None and len(est.layers) > max_rows:
        lines.append(f"... {len(est.layers) - max_rows} more layers (use --csv/--json for all)")
    lines.append("-" * len(head))
    lines.append(summary_text(est))
    return "\n".join(lines)


def summary_text(est: ModelEstimate) -> str:
    """The whole-model totals as a few readable lines."""
    hw = est.hw
    s = est.summary()
    lines = [f"model {s['model']} ({s['source']}), {s['bits']}, batch {s['batch']}, array {hw.rows}x{hw.cols} "
              f"({hw.dataflow}), {hw.freq / 1e6:g} MHz, DRAM {hw.dram_bw:g} B/cycle "
              f"({hw.dram_bw * hw.freq / 1e9:.2f} GB/s), SRAM {hw.sram_kib:g} KiB",
              f"  layers {s['layers']} ({s['memory_bound_layers']} memory bound), MACs {_si(s['macs'])}",
              f"  cycles {s['cycles']:,} (compute {s['compute_cycles']:,}, stall {s['stall_cycles']:,})",
              f"  latency {s['latency_ms']:.3f} ms, {s['inferences_per_s']:.2f} inferences/s, "
              f"MAC utilisation {100 * s['utilisation']:.1f} %",
              f"  DRAM traffic {s['dram_bytes'] / 2**20:.2f} MiB, SRAM traffic {s['sram_bytes'] / 2**20:.2f} MiB, "
              f"arithmetic intensity {s['arithmetic_intensity_ops_per_byte']:.1f} ops/byte",
              f"  weights {s['weight_params']:,} params = {s['weight_bytes'] / 2**20:.2f} MiB packed; "
              f"compression x{s['compression_vs_fp16']:.2f} vs FP16, x{s['compression_vs_int8']:.2f} vs INT8"]
    if est.engine_config:
        c = est.engine_config
        lines.append("  engine: " + ", ".join(f"{k}={v}" for k, v in c.items()))
    if est.clock is not None:
        lines.append(f"  clock: {est.clock.text}")
    if est.resources is not None:
        lines.append(f"  resources: {est.resources.text()}")
        lines += [f"    note: {n}" for n in est.resources.notes]
    if est.device_fit is not None:
        lines.append(f"  device: {est.device_fit.text()} (BRAM includes the SRAM beyond the B banks)")
    for n in est.notes:
        lines.append(f"  note: {n}")
    return "\n".join(lines)


def to_csv(est: ModelEstimate) -> str:
    """Per-layer CSV (one header line, one line per layer)."""
    rows = [layer_row(l, est.hw) for l in est.layers]
    keys: list[str] = []
    for r in rows:
        for k in r:
            if k not in keys:
                keys.append(k)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow(r)
    return buf.getvalue()


def _jsonable(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_jsonable(v) for v in x]
    return x


def to_json(est: ModelEstimate) -> str:
    """Summary plus every layer, as JSON."""
    doc = dict(summary=est.summary(), notes=est.notes, layers=[layer_row(l, est.hw) for l in est.layers])
    return json.dumps(_jsonable(doc), indent=1)


def plot(est: ModelEstimate, path: str) -> None:
    """PNG with per-layer stacked cycle bars, per-layer stacked DRAM traffic bars and a roofline."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hw = est.hw
    L = est.layers
    x = list(range(len(L)))
    fig = plt.figure(figsize=(max(12, 0.12 * len(L) + 6), 11), constrained_layout=True)
    gs = fig.add_gridspec(3, 2, height_ratios=[1, 1, 1.25])
    ax1 = fig.add_subplot(gs[0, :])
    ax2 = fig.add_subplot(gs[1, :], sharex=ax1)
    ax3 = fig.add_subplot(gs[2, 0])
    ax4 = fig.add_subplot(gs[2, 1])

    # cycles: compute parts from the engine breakdown (when present) + stall
    parts = ["compute", "fill", "drain", "outlier", "requant", "overhead"]
    colors = dict(compute="tab:blue", fill="tab:orange", drain="tab:green", outlier="tab:purple",
                  requant="tab:olive", overhead="tab:brown")
    have = [p for p in parts if all(p in l.breakdown for l in L)]
    bottom = [0.0] * len(L)
    if hw.dataflow == "engine" and have:
        for p in have:
            vals = [float(l.breakdown[p]) for l in L]
            ax1.bar(x, vals, bottom=bottom, label=p, width=0.85, color=colors[p])
            bottom = [b + v for b, v in zip(bottom, vals)]
        rest = [l.compute - b for l, b in zip(L, bottom)]
        if any(abs(r) > 0.5 for r in rest):
            ax1.bar(x, rest, bottom=bottom, label="other", width=0.85)
            bottom = [b + r for b, r in zip(bottom, rest)]
    else:
        vals = [float(l.compute) for l in L]
        ax1.bar(x, vals, label=f"compute ({hw.dataflow})", width=0.85)
        bottom = vals
    ax1.bar(x, [float(l.stall) for l in L], bottom=bottom, label="stall / DRAM", color="tab:red", width=0.85)
    ax1.set_ylabel("cycles")
    ax1.set_title(f"{est.model} {est.bits} batch {est.batch} on {hw.rows}x{hw.cols} ({hw.dataflow}), "
                  f"{hw.freq / 1e6:g} MHz, {hw.dram_bw:g} B/cycle, {hw.sram_kib:g} KiB SRAM: "
                  f"{est.cycles:,} cycles, {1e3 * est.latency_s:.2f} ms, util {100 * est.utilisation:.1f} %")
    ax1.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))

    comp = [("A codes", lambda t: t.dram_a - (t.a_vectors + t.outliers) * t.a_refetch),
            ("A vectors+outliers", lambda t: (t.a_vectors + t.outliers) * t.a_refetch),
            ("B codes", lambda t: t.dram_b - t.b_params * t.b_refetch),
            ("B params", lambda t: t.b_params * t.b_refetch),
            ("output", lambda t: t.dram_out), ("partial sums", lambda t: 2 * t.psum)]
    bottom = [0.0] * len(L)
    for lab, f in comp:
        vals = [f(l.traffic) / 1024 for l in L]
        if any(v > 0 for v in vals):
            ax2.bar(x, vals, bottom=bottom, label=lab, width=0.85)
            bottom = [b + v for b, v in zip(bottom, vals)]
    ax2.set_ylabel("DRAM traffic (KiB)")
    ax2.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    step = max(1, len(L) // 60)
    ax2.set_xticks(x[::step])
    ax2.set_xticklabels([L[i].gemm.name for i in x[::step]], rotation=90, fontsize=6)
    plt.setp(ax1.get_xticklabels(), visible=False)

    # roofline: ops/s vs ops/byte
    peak = 2 * hw.rows * hw.cols * hw.freq
    bw = hw.dram_bw * hw.freq
    ais = [l.intensity for l in L if math.isfinite(l.intensity)]
    lo, hi = min(ais + [1.0]) / 2, max(ais + [peak / bw]) * 2
    xs = [lo * (hi / lo) ** (i / 200) for i in range(201)]
    ax3.loglog(xs, [min(peak, a * bw) for a in xs], "k-", lw=1.5, label="roofline")
    ax3.axvline(peak / bw, color="grey", ls=":", lw=1)
    by_kind: dict[str, list] = {}
    for l in L:
        if math.isfinite(l.intensity) and l.total:
            by_kind.setdefault(l.gemm.kind, []).append((l.intensity, 2 * l.macs / (l.total / hw.freq)))
    for k, pts in by_kind.items():
        ax3.scatter([p[0] for p in pts], [p[1] for p in pts], s=18, label=k)
    ax3.set_xlabel("arithmetic intensity (ops / DRAM byte)")
    ax3.set_ylabel("achieved ops/s")
    ax3.set_title(f"roofline: peak {peak / 1e9:.1f} GOPS, {bw / 1e9:.2f} GB/s, ridge {peak / bw:.1f} ops/B")
    ax3.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))

    # per-kind totals
    agg: dict[str, list[float]] = {}
    for l in L:
        a = agg.setdefault(l.gemm.kind, [0.0, 0.0, 0.0])
        a[0] += l.compute
        a[1] += l.stall
        a[2] += l.traffic.dram_total
    ks = list(agg)
    ax4.barh(ks, [agg[k][0] for k in ks], label="compute")
    ax4.barh(ks, [agg[k][1] for k in ks], left=[agg[k][0] for k in ks], label="stall", color="tab:red")
    ax4.set_xlabel("cycles (sum over layers)")
    ax4.set_title("cycles by layer kind")
    ax4.legend(fontsize=8)
    ax4.invert_yaxis()
    fig.savefig(path, dpi=110)
    plt.close(fig)
