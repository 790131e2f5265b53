"""``report.md`` / ``report.json`` of ``vitaccel flow``."""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

from .context import FlowContext
from .plots import layer_order

__all__ = ["report_markdown", "write_report"]


def _jsonable(x):
    import numpy as np

    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(float(x)) else None
    return x


def _fmt(v, spec=".2f", unit=" %") -> str:
    return "n/a" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:{spec}}{unit}"


def report_markdown(doc: dict) -> str:
    """The human-readable ``report.md`` from the ``report.json`` document."""
    lines = [f"# vitaccel flow report: {doc['model']} {doc['bits']}", ""]
    lines += [f"Command: `{doc['command']}`", "", f"vitaccel {doc['version']}, {doc['date']}, "
              f"{doc['seconds']:.0f} s in all.", ""]
    d = doc.get("data")
    if d:
        lines += [f"Data: {d['description']}; calibration {d['calib_size']} images, "
                  f"evaluation {d['eval_size']} images.", ""]
    lines += ["## Stages", "", "| stage | status | seconds | result |", "| --- | --- | --- | --- |"]
    for s in doc["stages"]:
        msg = s["message"].replace("|", "\\|").replace("\n", " ")
        lines.append(f"| {s['name']} | {s['status']} | {s['seconds']:.1f} | {msg} |")
    acc = doc.get("accuracy", {})
    if acc:
        lines += ["", "## Accuracy (top-1)", "", f"FP32: {_fmt(acc.get('fp32'))}", "",
                  "| method | float fake-quant | fake-quant on the integer grid | integer sim "
                  "| sim / integer-grid fake-quant agreement |", "| --- | --- | --- | --- | --- |"]
        for m in doc["methods"]:
            lines.append(f"| {m} | {_fmt(acc.get('fakequant_float', {}).get(m))} | {_fmt(acc.get('fakequant', {}).get(m))} "
                         f"| {_fmt(acc.get('intsim', {}).get(m))} "
                         f"| {_fmt(acc.get('intsim_agreement', {}).get(m))} |")
    rtl = doc.get("rtl", {})
    if rtl.get("checks"):
        lines += ["", "## RTL check (every GEMM of one golden image through the accelerator top, Verilator)", ""]
        if rtl.get("command"):
            lines += [f"Command: `{rtl['command']}`; report `{rtl.get('report')}`.", ""]
        lines += ["| record | kind | result | detail |", "| --- | --- | --- | --- |"]
        for c in rtl["checks"]:
            lines.append(f"| {c['record']} | {c['kind']} | {'bit-exact' if c['bit_exact'] else 'MISMATCH'} "
                         f"| {c.get('detail', '')} |")
    if rtl.get("verilog"):
        lines += ["", "Verilog: " + ", ".join(f"`{p}`" for p in rtl["verilog"])]
    est = doc.get("estimate")
    if est:
        s = est["summary"]
        lines += ["", "## Cycle and traffic estimate", "", f"Command: `{est['command']}`", "",
                  f"{s['layers']} GEMM layers, {s['macs']:,} MACs: **{s['cycles']:,} cycles** "
                  f"({s['latency_ms']:.3f} ms at {s['freq_hz'] / 1e6:g} MHz), utilisation "
                  f"{100 * s['utilisation']:.1f} %, DRAM traffic {s['dram_bytes']:,} B, "
                  f"{s['memory_bound_layers']} memory-bound layers."]
    outl = doc.get("outliers_intsim") or doc.get("outliers_calibration")
    if outl:
        lines += ["", "## Outliers (POQ)", "", "| method | layer input | outlier ratio |", "| --- | --- | --- |"]
        for m, layers in outl.items():
            for n, r in sorted(layers.items(), key=lambda kv: layer_order(kv[0])):
                lines.append(f"| {m} | {n} | {100 * r:.4f} % |")
    if doc.get("files"):
        lines += ["", "## Files", ""] + [f"* {k}: `{v}`" for k, v in doc["files"].items()]
        plots = [v for k, v in doc["files"].items() if k.startswith("plot_")]
        if plots:
            lines += [""] + [f"![{Path(p).stem}]({p})" for p in plots]
    return "\n".join(lines) + "\n"


def write_report(ctx: FlowContext, stages: list, seconds: float, command: str = "") -> dict:
    """Write ``report.json`` and ``report.md`` into the output folder; returns the document."""
    from vitaccel import __version__

    a = ctx.args
    doc = {
        "format": "vitaccel-flow-report", "format_version": 1, "version": __version__,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"), "seconds": seconds,
        "command": command,
        "model": ctx.model_name or a.model, "bits": a.bits, "methods": list(a.methods),
        "export_method": ctx.export_method(),
        "hardware": {k: ctx.engine_fields()[k] for k in ("rows", "cols")},
        "stages": [s.to_dict() for s in stages],
        "all_ok": all(s.status == "ok" for s in stages if s.status != "not_requested"),
        **ctx.results,
        "files": dict(ctx.files),
    }
    doc = _jsonable(doc)
    (ctx.out / "report.json").write_text(json.dumps(doc, indent=1))
    (ctx.out / "report.md").write_text(report_markdown(doc))
    return doc
