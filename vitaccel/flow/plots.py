"""PNG figures of ``vitaccel flow``: accuracy per method, per-layer estimate, POQ outliers."""
from __future__ import annotations

from pathlib import Path

from .context import FlowContext

__all__ = ["make_plots", "layer_order"]


def _plot_accuracy(ctx: FlowContext, path: Path) -> bool:
    import matplotlib.pyplot as plt
    import numpy as np

    acc = ctx.results.get("accuracy", {})
    methods = list(ctx.args.methods)
    kinds = [("fakequant_float", "float fake-quant"), ("fakequant", "fake-quant, integer grid"),
             ("intsim", "integer sim")]
    if not any(acc.get(k) for k, _ in kinds) and "fp32" not in acc:
        return False
    fig, ax = plt.subplots(figsize=(max(5, 1.6 * len(methods) + 2), 4), constrained_layout=True)
    x = np.arange(len(methods))
    w = 0.27
    for i, (k, label) in enumerate(kinds):
        vals = [acc.get(k, {}).get(m, np.nan) for m in methods]
        bars = ax.bar(x + (i - 1) * w, vals, w, label=label)
        for b, v in zip(bars, vals):
            if np.isfinite(v):
                ax.text(b.get_x() + b.get_width() / 2, v, f"{v:.1f}", ha="center", va="bottom", fontsize=8)
    if "fp32" in acc:
        ax.axhline(acc["fp32"], color="k", ls="--", lw=1, label=f"FP32 {acc['fp32']:.1f} %")
    ax.set_xticks(x)
    ax.set_xticklabels(methods)
    ax.set_ylabel("top-1 (%)")
    ax.set_ylim(0, 105)
    n = ctx.results.get("data", {}).get("eval_size", "?")
    ax.set_title(f"{ctx.model_name} {ctx.args.bits}: top-1 on {n} images")
    ax.legend(fontsize=8, loc="lower right")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _plot_layers(ctx: FlowContext, path: Path) -> bool:
    import matplotlib.pyplot as plt
    import numpy as np

    est = ctx.results.get("estimate")
    if not est or not est.get("layers"):
        return False
    layers = est["layers"]
    names = [str(l.get("name", i)) for i, l in enumerate(layers)]
    x = np.arange(len(layers))
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(max(8, 0.22 * len(layers) + 3), 7), sharex=True,
                                   constrained_layout=True)

    def val(l, key):
        return float(l.get(key) or 0)

    bottom = np.zeros(len(layers))
    for key, label in (("compute_cycles", "compute"), ("stall_cycles", "stall (DRAM)")):
        v = np.array([val(l, key) for l in layers])
        ax1.bar(x, v, bottom=bottom, label=label, width=0.85)
        bottom += v
    ax1.set_ylabel("cycles")
    ax1.legend(fontsize=8)
    s = est["summary"]
    ax1.set_title(f"{ctx.model_name} ({est['method']}, {s.get('bits')}) on {s.get('rows')}x{s.get('cols')}: "
                  f"{s.get('cycles', 0):,} cycles, {s.get('dram_bytes', 0):,} B DRAM")
    bottom = np.zeros(len(layers))
    for key, label in (("dram_a_bytes", "A (codes, vectors, outliers)"), ("dram_b_bytes", "B (codes, params)"),
                       ("dram_out_bytes", "output"), ("dram_psum_bytes", "partial sums")):
        v = np.array([val(l, key) / 1024 for l in layers])
        if v.any():
            ax2.bar(x, v, bottom=bottom, label=label, width=0.85)
            bottom += v
    ax2.set_ylabel("DRAM traffic (KiB)")
    ax2.legend(fontsize=8)
    ax2.set_xticks(x)
    ax2.set_xticklabels(names, rotation=90, fontsize=6)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _plot_outliers(ctx: FlowContext, path: Path) -> bool:
    import matplotlib.pyplot as plt
    import numpy as np

    series = []
    for key, label in (("outliers_calibration", "calibration"), ("outliers_intsim", "integer sim (eval images)")):
        for method, layers in ctx.results.get(key, {}).items():
            series.append((f"{method}, {label}", layers))
    if not series:
        return False
    names = sorted({n for _, d in series for n in d}, key=layer_order)
    fig, ax = plt.subplots(figsize=(max(7, 0.35 * len(names) + 3), 4), constrained_layout=True)
    w = 0.8 / len(series)
    x = np.arange(len(names))
    for i, (label, d) in enumerate(series):
        ax.bar(x + (i - (len(series) - 1) / 2) * w, [100 * d.get(n, np.nan) for n in names], w, label=label)
    ax.set_xticks(x)
    ax.set_xticklabels(names, rotation=90, fontsize=7)
    ax.set_ylabel("outlier ratio (% of elements)")
    ax.set_title("POQ outliers per layer input (|x| > alpha)")
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def layer_order(name: str):
    parts = name.split(".")
    return [int(p) if p.isdigit() else p for p in parts]


def make_plots(ctx: FlowContext) -> dict:
    """Write the PNG figures that have data; returns ``{kind: path}``."""
    import matplotlib

    matplotlib.use("Agg")
    plot_dir = ctx.out / "plots"
    plot_dir.mkdir(parents=True, exist_ok=True)
    made = {}
    for kind, fn in (("accuracy", _plot_accuracy), ("layers", _plot_layers), ("outliers", _plot_outliers)):
        p = plot_dir / f"{kind}.png"
        if fn(ctx, p):
            made[kind] = p
    if ctx.estimate is not None:  # the estimator's own figure (stacked breakdowns, roofline)
        try:
            from vitaccel.sim.perf import report as perf_report

            p = plot_dir / "estimate.png"
            perf_report.plot(ctx.estimate, str(p))
            made["estimate"] = p
        except (ImportError, AttributeError):
            pass
    return made
