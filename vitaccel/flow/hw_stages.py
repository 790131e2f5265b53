"""The hardware stages of ``vitaccel flow``: Verilog of the layer engine sized for the exported
program (``vitaccel hw generate``) and the cocotb + Verilator check on golden vectors (``vitaccel tb run``)."""
from __future__ import annotations

import json
import time

from .context import FlowContext, StageError

__all__ = ["stage_verilog", "stage_rtl_check", "program_widths"]


def program_widths(prog) -> dict:
    """``{max_k, a_bits, b_bits}``: largest K, widest A and B codes over the GEMM layers of a program."""
    layers = prog.manifest["layers"].values()
    return {"max_k": max(int(lay["shape"][1]) for lay in layers),
            "a_bits": max(int(lay["a"]["bits"]) for lay in layers),
            "b_bits": max(int(lay["b_bits"]) for lay in layers)}


def stage_verilog(ctx: FlowContext) -> str:
    """Verilog of the layer engine sized for the exported program (:func:`vitaccel.hw.synth.generate`)."""
    from vitaccel.hw.synth import generate
    from vitaccel.sim.engine_config import make_engine_config

    prog = ctx.programs.get(ctx.export_method())
    fields = ctx.engine_fields(**(program_widths(prog) if prog is not None else {}))
    cfg = make_engine_config(fields)
    path = ctx.out / "rtl"
    summary = generate(cfg, path)
    files = [ctx.rel(path / t["file"]) for t in summary["tops"].values()]
    ctx.files["verilog"] = ctx.rel(path)
    command = (f"vitaccel hw generate --rows {cfg.rows} --cols {cfg.cols} --bits w{cfg.b_bits}a{cfg.a_bits} "
               f"--max-k {cfg.max_k} --outlier-capacity {cfg.outlier_capacity} -o {ctx.rel(path)}")
    ctx.results.setdefault("rtl", {}).update(verilog=files, engine_config=cfg.to_dict(), generate_command=command)
    return f"{len(files)} Verilog files for a {cfg.rows}x{cfg.cols} engine (max_k {cfg.max_k}, acc {cfg.acc_bits} bits)"


def _default_rtl_records(golden_layers: dict, prog) -> list[str]:
    """One linear layer (one with an outlier path when there is one) and one ``q @ k^T`` head."""
    layers = prog.manifest["layers"]
    linear = [r for r, l in golden_layers.items() if layers.get(l, {}).get("op") == "linear"
              and r.startswith("blocks.")]
    with_outliers = [r for r in linear if layers[golden_layers[r]].get("fo", 0)]
    qk = [r for r, l in golden_layers.items() if layers.get(l, {}).get("op") == "qk"]
    picks = []
    if with_outliers or linear:
        picks.append((with_outliers or linear)[0])
    if qk:
        picks.append(qk[0])
    return picks


def stage_rtl_check(ctx: FlowContext) -> str:
    """Run the cocotb layer-engine testbench in Verilator on golden records
    (:func:`vitaccel.tb.cli.run_golden_layer`, as ``vitaccel tb run``)."""
    from vitaccel.tb.cli import run_golden_layer

    eng = ctx.engine_fields()
    golden_dir = ctx.out / "golden"
    man = json.loads((golden_dir / "golden.json").read_text())
    prog = ctx.programs[ctx.export_method()]
    if ctx.args.rtl_layers:
        records = [r.strip() for r in ctx.args.rtl_layers.split(",") if r.strip()]
        unknown = [r for r in records if r not in man["layers"]]
        if unknown:
            raise StageError(f"--rtl-layers {', '.join(unknown)} not in the golden vectors; records are e.g. "
                             + ", ".join(list(man["layers"])[:8]))
    else:
        records = _default_rtl_records(man["layers"], prog)
    if not records:
        raise StageError("the golden vectors hold no linear or attention records")
    checks = []
    for rec in records:
        op = prog.manifest["layers"][man["layers"][rec]]["op"]
        entry = {"record": rec, "kind": op, "bit_exact": False,
                 "command": f"vitaccel tb run {ctx.rel(golden_dir)} --layer {rec} --rows {eng['rows']} "
                            f"--cols {eng['cols']}"}
        t0 = time.time()
        try:
            res = run_golden_layer(str(golden_dir), rec, rows=eng["rows"], cols=eng["cols"])
        except AssertionError as exc:  # the testbench's scoreboard / cycle / flag checks
            entry["detail"] = str(exc).splitlines()[0][:300]
        else:
            entry.update(bit_exact=True, cycles=int(res["cycles"]), model_cycles=int(res["model_cycles"]),
                         rows=int(res["rows"]), shape=list(res["shape"]), engine=res.get("engine"),
                         detail=f"{res['rows']} output rows exact; {res['cycles']} cycles "
                                f"(sim/schedule.py {res['model_cycles']})")
        entry["seconds"] = round(time.time() - t0, 1)
        checks.append(entry)
    ctx.results.setdefault("rtl", {})["checks"] = checks
    bad = [c["record"] for c in checks if not c["bit_exact"]]
    if bad:
        raise StageError(f"RTL mismatch on {', '.join(bad)}: " + "; ".join(
            c.get("detail", "") for c in checks if not c["bit_exact"]))
    return ", ".join(f"{c['record']} ({c['kind']}) bit-exact" for c in checks)
