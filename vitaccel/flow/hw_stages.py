"""The hardware stages of ``vitaccel flow``: Verilog of the layer engine sized for the exported
program (``vitaccel hw generate``) and every GEMM of one golden image through the RTL accelerator top
(``vitaccel tb model``: Verilator + C++ memory, bit-exact, cycles and bytes against the estimator)."""
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


def stage_rtl_check(ctx: FlowContext) -> str:
    """Every GEMM of one golden image through the RTL accelerator top (:func:`vitaccel.tb.model_run.run_model`,
    as ``vitaccel tb model``): bit-exact per layer, RTL cycles == ``estimate --dataflow accelerator``,
    bytes on the memory port == the estimator's.  ``--rtl-layers`` restricts it to some records."""
    import shutil

    from vitaccel.tb.model_run import run_model, write_reports

    golden_dir = ctx.out / "golden"
    man = json.loads((golden_dir / "golden.json").read_text())
    prog = ctx.programs[ctx.export_method()]
    records = None
    if ctx.args.rtl_layers:
        records = [r.strip() for r in ctx.args.rtl_layers.split(",") if r.strip()]
        unknown = [r for r in records if r not in man["layers"]]
        if unknown:
            raise StageError(f"--rtl-layers {', '.join(unknown)} not in the golden vectors; records are e.g. "
                             + ", ".join(list(man["layers"])[:8]))
    fields = {k: v for k, v in ctx.engine_fields().items() if k not in ("a_bits", "b_bits")}
    t0 = time.time()
    rep = run_model(str(golden_dir), image=0, engine_fields=fields, records=records, progress=False,
                    log=lambda msg: print(f"  {msg}", flush=True))
    out = ctx.out / "rtl"
    out.mkdir(parents=True, exist_ok=True)
    write_reports(rep, out / "model.json", out / "model.md")
    acc = rep["accelerator"]
    e = acc["engine"]
    command = (f"vitaccel tb model --program {ctx.rel(golden_dir / 'program')} --golden {ctx.rel(golden_dir)} "
               f"--rows {e['rows']} --cols {e['cols']}")
    checks = []
    for c in rep["layers"]:
        checks.append({"record": c["name"], "kind": prog.manifest["layers"][man["layers"][c["name"]]]["op"],
                       "bit_exact": bool(c["exact"]), "cycles": c.get("rtl_cycles"),
                       "model_cycles": c.get("estimate_cycles"), "engine_cycles": c.get("engine_cycles"),
                       "bytes": c.get("bytes_total"), "shape": c.get("shape"),
                       "detail": (f"{c['rtl_cycles']:,} cycles (estimator {c['estimate_cycles']:,}), "
                                  f"{c['bytes_total']:,} bytes on the memory port") if "shape" in c
                       else c.get("detail", "")})
    rtl = ctx.results.setdefault("rtl", {})
    rtl.update(checks=checks, command=command, report=ctx.rel(out / "model.md"), accelerator=acc,
               total_cycles=rep["total_cycles"], sim_cycles_per_second=rep["sim_cycles_per_second"],
               seconds=round(time.time() - t0, 1))
    from vitaccel.sim.accelerator import AcceleratorConfig
    from vitaccel.tb.accel_bench import accelerator_verilog_file

    vfile = accelerator_verilog_file(AcceleratorConfig.from_dict(acc))
    shutil.copyfile(vfile, out / "accelerator.v")
    rtl.setdefault("verilog", []).append(ctx.rel(out / "accelerator.v"))
    bad = [c for c in rep["layers"] if not c["exact"]]
    if bad or not rep["all_exact"]:
        fm = rep["first_mismatch"] or {}
        raise StageError(f"RTL mismatch in {len(bad)} of {len(rep['layers'])} layers; first: layer {fm.get('layer')} "
                         f"row {fm.get('row')} column {fm.get('column')}: expected {fm.get('expected')}, "
                         f"got {fm.get('got')} ({command} --waves keeps its waveform)")
    if not (rep["cycles_match"] and rep["bytes_match"]):
        raise StageError("RTL cycles or memory-port bytes differ from the estimator: see " + ctx.rel(out / "model.md"))
    return (f"{len(rep['layers'])} GEMM layers of one image bit-exact in the {e['rows']}x{e['cols']} accelerator top, "
            f"{rep['total_cycles']:,} cycles == estimator, {rep['sim_cycles_per_second']:,} simulated cycles/s")
