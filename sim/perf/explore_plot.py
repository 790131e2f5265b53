"""Pareto plot of ``vitaccel explore`` (matplotlib, Agg): latency vs logic, and inferences/s per kLUT."""
from __future__ import annotations

#: Colour per bit setting (others cycle through the default colours).
BIT_COLOURS = {"w4a4": "tab:blue", "w6a6": "tab:orange", "w8a8": "tab:green", "program": "tab:purple"}


def plot_pareto(points, meta: dict, path: str) -> None:
    """Two panels over the estimable points.

    Left: latency (ms, log) against logic (``TRELLIS_COMB``, log), colour = bit setting, filled marker =
    measured resources, hollow = modelled, faded = does not fit the device; the Pareto front (no point
    has both lower latency and less logic) as a red step line with every front point labelled, and the
    device's ``TRELLIS_COMB`` as a dashed line. Right: inferences/s per 1 000 ``TRELLIS_COMB`` against
    logic, the front points highlighted and the most efficient fitting point labelled.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .explore import _label, _varying
    from .resources import load_table

    pts = [p for p in points if p.feasible and p.row.get("TRELLIS_COMB")]
    vary = _varying(points)
    cap = load_table().device(meta["device"])["TRELLIS_COMB"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(15, 6.5), constrained_layout=True)
    seen = set()
    order = sorted({p.bits for p in pts}, reverse=True)  # widest first, drawn largest: ties stay visible as rings
    size = {b: 28 + 22 * i for i, b in enumerate(reversed(order))}
    for p in sorted(pts, key=lambda p: order.index(p.bits)):
        r = p.row
        col = BIT_COLOURS.get(p.bits, "tab:gray")
        measured = r["resource_source"] == "measured"
        kw = dict(s=size[p.bits], alpha=1.0 if r["fits"] else 0.3, linewidths=1.3,
                  edgecolors=col, facecolors=col if measured else "none", zorder=3)
        lab = p.bits if p.bits not in seen else None
        seen.add(p.bits)
        ax1.scatter(r["TRELLIS_COMB"], r["latency_ms"], label=lab, **kw)
        ax2.scatter(r["TRELLIS_COMB"], r["inferences_per_s_per_klut"], **kw)
    front = sorted((p for p in pts if p.row["pareto"]), key=lambda p: p.row["TRELLIS_COMB"])
    if front:
        xs = [p.row["TRELLIS_COMB"] for p in front]
        ys = [p.row["latency_ms"] for p in front]
        ax1.step(xs, ys, where="post", color="red", lw=1.6, zorder=2, label="Pareto front")
        groups: dict = {}
        for p in front:  # points tied in both coordinates share one label
            groups.setdefault((p.row["TRELLIS_COMB"], p.row["latency_ms"]), []).append(_label(p, vary))
        for (x, y), labs in groups.items():
            ax1.annotate(" / ".join(labs), (x, y), textcoords="offset points", xytext=(6, 4), fontsize=7.5,
                         color="darkred")
        for p in front:
            ax2.scatter(p.row["TRELLIS_COMB"], p.row["inferences_per_s_per_klut"], s=150, facecolors="none",
                        edgecolors="red", linewidths=1.4, zorder=4)
    fitting = [p for p in pts if p.row["fits"]]
    if fitting:
        best = max(fitting, key=lambda p: p.row["inferences_per_s_per_klut"])
        ax2.annotate(f"best fitting: {_label(best, vary)}\n{best.row['inferences_per_s']:.2f} inf/s, "
                     f"{best.row['fmax_mhz']:.1f} MHz ({best.row['clock_source']})",
                     (best.row["TRELLIS_COMB"], best.row["inferences_per_s_per_klut"]), textcoords="offset points",
                     xytext=(10, -28), fontsize=8, arrowprops=dict(arrowstyle="->", lw=0.8))
    ax2.set_ylim(0, 1.25 * max((p.row["inferences_per_s_per_klut"] for p in pts), default=1.0))
    for ax in (ax1, ax2):
        ax.axvline(cap, color="k", ls="--", lw=1)
        ax.text(cap, 0.02, f" {meta['device']}\n {cap:,} TRELLIS_COMB", fontsize=8, va="bottom",
                transform=ax.get_xaxis_transform())
        ax.set_xscale("log")
        ax.set_xlabel("logic: TRELLIS_COMB (filled: measured, hollow: modelled; faded: does not fit)")
        ax.grid(True, which="both", alpha=0.25)
    ax1.set_yscale("log")
    ax1.set_ylabel("latency per inference batch (ms, at measured / modelled Fmax)")
    ax1.set_title(f"{meta['model']}: latency vs logic, Pareto front in red")
    ax1.legend(fontsize=8, loc="upper right")
    ax2.set_ylabel("inferences/s per 1 000 TRELLIS_COMB")
    ax2.set_title("efficiency: inferences/s per kLUT (front points circled)")
    fig.savefig(path, dpi=110)
    plt.close(fig)
