"""``vitaccel flow``: the whole co-design loop in one command, with a report.

Stages (each a small function below; :data:`STAGES` lists them with their dependencies):

=============  ====================================================================================
``setup``      model (timm name + ``--weights``, default the embedded ``vitaccel-digits``) and data
               (``--data DIR``; default: the embedded digits written as PNG folders, so the default
               goes through the same timm image-folder path as ImageNet); disjoint calibration and
               evaluation subsets.
``fp_eval``    top-1 of the float model.
``calibrate``  one calibration per ``--methods`` entry (:func:`golden.calibrate.calibrate_model`).
``export``     integer program of each method (:func:`golden.program.export_program`).
``fq_eval``    top-1 of each fake-quant model, in float and on the integer grid of its program
               (:mod:`golden.integer_grid`).
``int_eval``   top-1 of each program in the bit-accurate integer simulator
               (:class:`golden.int_eval.ProgramRunner`), agreement with fake-quant, outliers.
``golden``     golden vectors of the exported method (:func:`golden.golden_vectors.write_golden`).
``verilog``    Verilog of the layer engine for ``--rows`` x ``--cols`` (``hw``).
``rtl_check``  the cocotb testbench in Verilator on the golden vectors of one linear layer and one
               attention matmul (``tb``), bit-exact comparison.
``estimate``   per-layer cycles and DRAM traffic of the whole program (``sim.perf``).
``plots``      PNG figures.
=============  ====================================================================================

A stage whose module is missing or that raises is recorded as ``failed`` with its message; stages
that need its results are ``skipped``; the report (``report.md``, ``report.json``) is always written
and lists every stage's status. The exit code is 0 only when every stage that was requested ran.
"""
from __future__ import annotations

import argparse
import copy
import importlib
import json
import math
import os
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from vitaccel.sim.errors import UserError

DEFAULT_METHODS = ("baseline", "adfq", "mptq")
EMBEDDED_MODEL = "vitaccel-digits"


# ------------------------------------------------------------------------------------------------
# stage bookkeeping
# ------------------------------------------------------------------------------------------------
class StageError(RuntimeError):
    """A stage cannot run (missing module, missing API, failed check); the message says why."""


@dataclass
class StageResult:
    """Outcome of one stage."""

    name: str
    status: str = "pending"  # ok | failed | skipped
    seconds: float = 0.0
    message: str = ""

    def to_dict(self) -> dict:
        return {"name": self.name, "status": self.status, "seconds": round(self.seconds, 2),
                "message": self.message}


@dataclass
class FlowContext:
    """Everything the stages share: arguments, output folder, intermediate objects and results."""

    args: argparse.Namespace
    out: Path
    model: object = None
    model_name: str = ""
    data_config: dict = field(default_factory=dict)
    calib_images: object = None
    eval_images: object = None
    eval_labels: object = None
    qvits: dict = field(default_factory=dict)
    programs: dict = field(default_factory=dict)
    fq_pred: dict = field(default_factory=dict)
    estimate: object = None
    results: dict = field(default_factory=dict)
    files: dict = field(default_factory=dict)

    def export_method(self) -> str:
        """The method whose program feeds golden vectors, the RTL check and the estimate
        (``--export-method``; default adfq when it is among ``--methods``, else the first)."""
        if self.args.export_method:
            return self.args.export_method
        return "adfq" if "adfq" in self.args.methods else self.args.methods[0]

    def rel(self, path) -> str:
        """``path`` relative to the output folder (for the report)."""
        try:
            return str(Path(path).resolve().relative_to(self.out.resolve()))
        except ValueError:
            return str(path)


def _need_module(name: str, owner: str):
    """Import ``name`` or raise :class:`StageError` naming the missing module."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name and name.startswith(exc.name):
            raise StageError(f"module {name} ({owner}) is not available: {exc}") from None
        raise


def _need_attr(module, attr: str):
    fn = getattr(module, attr, None)
    if fn is None:
        raise StageError(f"{module.__name__} has no {attr}() (API needed by vitaccel flow)")
    return fn


def _parse_with(module_name: str, argv: list[str]) -> argparse.Namespace:
    """Parse ``argv`` with the subcommand parsers a module registers (its defaults and checks)."""
    mod = _need_module(module_name, module_name)
    parser = argparse.ArgumentParser(prog="vitaccel")
    sub = parser.add_subparsers(dest="command")
    _need_attr(mod, "add_subcommands")(sub)
    try:
        return parser.parse_args(argv)
    except SystemExit:
        raise StageError(f"{module_name} rejected the arguments {' '.join(argv)}") from None


def _top1(pred, labels) -> float:
    import numpy as np

    pred, labels = np.asarray(pred), np.asarray(labels)
    return float(100.0 * (pred == labels).mean()) if len(labels) else float("nan")


# ------------------------------------------------------------------------------------------------
# stages
# ------------------------------------------------------------------------------------------------
def _image_folder(root: str, model, class_map: str | None):
    """A dataset of ``root`` through the golden front end (timm image folder, the model's eval transform)."""
    from vitaccel.golden import data

    return data.image_folder(root, model=model, class_map=class_map)


def _stack(ds, indices, desc: str):
    import torch
    from tqdm.auto import tqdm

    xs, ys = [], []
    for i in tqdm(indices, desc=desc, leave=False, disable=len(indices) < 200):
        x, y = ds[int(i)]
        xs.append(x)
        ys.append(int(y))
    return torch.stack(xs), torch.tensor(ys, dtype=torch.int64)


def stage_setup(ctx: FlowContext) -> str:
    """Create the model and the calibration / evaluation image tensors."""
    import torch

    from vitaccel.golden.models import create_model

    a = ctx.args
    torch.manual_seed(a.seed)
    ctx.model_name = a.model
    ctx.model = create_model(a.model, a.weights)
    data_dir = ctx.out / "data"
    if a.data is None:
        if a.model != EMBEDDED_MODEL:
            raise UserError(f"--model {a.model} needs --data DIR (the embedded digits only fit {EMBEDDED_MODEL})")
        from vitaccel.golden.embedded import export_image_folder

        calib_info = export_image_folder(data_dir / "digits-calib", "calib")
        test_info = export_image_folder(data_dir / "digits-test", "test")
        calib_ds = _image_folder(str(calib_info["root"]), ctx.model, str(calib_info["class_map"]))
        eval_ds = _image_folder(str(test_info["root"]), ctx.model, str(test_info["class_map"]))
        g = torch.Generator().manual_seed(a.seed)
        calib_idx = torch.randperm(len(calib_ds), generator=g)[:a.calib_size].sort().values.tolist()
        n_eval = len(eval_ds) if a.eval_size is None else min(a.eval_size, len(eval_ds))
        eval_idx = torch.randperm(len(eval_ds), generator=g)[:n_eval].sort().values.tolist()
        data_desc = (f"embedded digits (PNG folders in {ctx.rel(data_dir)}): calibration split "
                     f"{len(calib_ds)}, test split {len(eval_ds)}")
    else:
        calib_ds = eval_ds = _image_folder(a.data, ctx.model, a.class_map)
        n = len(eval_ds)
        if a.calib_size >= n:
            raise UserError(f"--calib-size {a.calib_size} leaves no evaluation images in {a.data} ({n} images)")
        g = torch.Generator().manual_seed(a.seed)
        perm = torch.randperm(n, generator=g).tolist()
        calib_idx = sorted(perm[:a.calib_size])
        rest = perm[a.calib_size:]
        eval_idx = sorted(rest if a.eval_size is None else rest[:a.eval_size])
        data_desc = f"{a.data} ({n} images; calibration and evaluation subsets are disjoint)"
    ctx.calib_images, _ = _stack(calib_ds, calib_idx, "calibration images")
    ctx.eval_images, ctx.eval_labels = _stack(eval_ds, eval_idx, "evaluation images")
    if a.model != EMBEDDED_MODEL:
        from timm.data import resolve_data_config

        cfg = resolve_data_config({}, model=ctx.model)
        ctx.data_config = {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items()}
    ctx.results["data"] = {"description": data_desc, "calib_size": len(calib_idx), "eval_size": len(eval_idx),
                           "input_shape": list(ctx.eval_images.shape[1:])}
    return f"{a.model}; {len(calib_idx)} calibration + {len(eval_idx)} evaluation images"


def _predict(model, images, batch_size: int):
    import torch

    preds = []
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            preds.append(model(images[i:i + batch_size]).argmax(-1))
    return torch.cat(preds)


def stage_fp_eval(ctx: FlowContext) -> str:
    pred = _predict(ctx.model, ctx.eval_images, ctx.args.batch_size)
    acc = _top1(pred, ctx.eval_labels)
    ctx.results.setdefault("accuracy", {})["fp32"] = acc
    return f"FP32 top-1 {acc:.2f} %"


def _method_config(ctx: FlowContext, method: str):
    from vitaccel.golden.presets import preset

    cfg = preset(method, ctx.args.bits)
    if ctx.args.amo_iters is not None and cfg.amo:
        cfg.amo_iters = ctx.args.amo_iters  # read by golden.reconstruct (``amo_*`` attributes)
    return cfg


def stage_calibrate(ctx: FlowContext) -> str:
    from vitaccel.golden.calibrate import calibrate_model

    times = {}
    outliers = {}
    for method in ctx.args.methods:
        cfg = _method_config(ctx, method)
        t0 = time.time()
        qvit = calibrate_model(copy.deepcopy(ctx.model), ctx.calib_images, cfg, ctx.model_name,
                               batch_size=min(16, ctx.args.batch_size), progress=True)
        times[method] = round(time.time() - t0, 2)
        ctx.qvits[method] = qvit
        rep = getattr(qvit, "outlier_report", lambda: {})()
        if rep:
            outliers[method] = {n: float(r["outlier_ratio"]) for n, r in rep.items()}
    ctx.results["calibration"] = {"seconds": times, "bits": ctx.args.bits, "calib_size": len(ctx.calib_images),
                                  "configs": {m: q.config.to_dict() for m, q in ctx.qvits.items()}}
    if outliers:
        ctx.results["outliers_calibration"] = outliers
    return ", ".join(f"{m} {t:.0f} s" for m, t in times.items())


def stage_fq_eval(ctx: FlowContext) -> str:
    """Fake-quant top-1: float fake quantization, and on the integer grid of the exported program
    (:mod:`golden.integer_grid`; the int-sim agreement is measured against the latter)."""
    acc = ctx.results.setdefault("accuracy", {})
    fl = acc.setdefault("fakequant_float", {})
    grid = acc.setdefault("fakequant", {})
    for method, qvit in ctx.qvits.items():
        pred = _predict(qvit, ctx.eval_images, ctx.args.batch_size)
        fl[method] = _top1(pred, ctx.eval_labels)
        prog = ctx.programs.get(method)
        if prog is not None:
            qvit.use_integer_grid(prog)
            try:
                pred = _predict(qvit, ctx.eval_images, ctx.args.batch_size)
            finally:
                qvit.use_float_fakequant()
        ctx.fq_pred[method] = pred
        grid[method] = _top1(pred, ctx.eval_labels)
    return ", ".join(f"{m} {v:.2f} % (float {fl[m]:.2f} %)" for m, v in grid.items())


def stage_export(ctx: FlowContext) -> str:
    from vitaccel.golden.program import export_program, save_program

    done, failed = [], {}
    for method, qvit in ctx.qvits.items():
        try:
            prog = export_program(qvit, ctx.data_config, ctx.args.outlier_capacity, tile_rows=ctx.args.rows)
        except Exception as exc:  # noqa: BLE001 - reported per method
            failed[method] = f"{type(exc).__name__}: {exc}"
            continue
        path = ctx.out / "programs" / method
        save_program(prog, str(path))
        ctx.programs[method] = prog
        ctx.files[f"program_{method}"] = ctx.rel(path)
        done.append(method)
    ctx.results["export"] = {"programs": {m: ctx.files[f"program_{m}"] for m in done}, "failed": failed}
    if not done:
        raise StageError("no program could be exported: " + "; ".join(f"{m}: {e}" for m, e in failed.items()))
    if ctx.export_method() not in ctx.programs:
        raise StageError(f"the program of --export-method {ctx.export_method()} failed: {failed.get(ctx.export_method())}")
    return "programs: " + ", ".join(done) + (f" (failed: {', '.join(failed)})" if failed else "")


def stage_int_eval(ctx: FlowContext) -> str:
    import numpy as np
    import torch
    from tqdm.auto import tqdm

    from vitaccel.golden.int_eval import ProgramRunner

    res = ctx.results.setdefault("accuracy", {}).setdefault("intsim", {})
    agree = ctx.results["accuracy"].setdefault("intsim_agreement", {})
    measured = {}
    for method, prog in ctx.programs.items():
        runner = ProgramRunner(prog, backend=ctx.args.sim_backend, trace=True)
        preds = []
        n_out: dict = {}
        n_el: dict = {}
        for img in tqdm(ctx.eval_images, desc=f"int-sim {method}", leave=False):
            runner.records = {}
            preds.append(int(torch.argmax(runner.run_image(img))))
            for name, rec in runner.records.items():
                spec_fo = prog.manifest["layers"].get(name, {}).get("fo", 0)
                if spec_fo:
                    a = np.asarray(rec["a_codes"])
                    n_out[name] = n_out.get(name, 0) + len(np.asarray(rec["outliers"]).reshape(-1, 3))
                    n_el[name] = n_el.get(name, 0) + a.size
        pred = np.array(preds)
        res[method] = _top1(pred, ctx.eval_labels)
        if method in ctx.fq_pred:
            agree[method] = float(100.0 * (pred == ctx.fq_pred[method].numpy()).mean())
        if n_el:
            measured[method] = {n: n_out[n] / n_el[n] for n in n_el}
        ctx.results.setdefault("saturations", {})[method] = int(runner.saturations)
    if measured:
        ctx.results["outliers_intsim"] = measured
    return ", ".join(f"{m} {v:.2f} % (agreement {agree.get(m, float('nan')):.1f} %)" for m, v in res.items())


def stage_golden(ctx: FlowContext) -> str:
    gv = _need_module("vitaccel.golden.golden_vectors", "H2")
    write = _need_attr(gv, "write_golden")
    method = ctx.export_method()
    path = ctx.out / "golden"
    n = min(ctx.args.golden_images, len(ctx.eval_images))
    man = write(ctx.programs[method], list(ctx.eval_images[:n]), str(path), ctx.eval_labels[:n].tolist(),
                backend=ctx.args.sim_backend, progress=True)
    ctx.files["golden"] = ctx.rel(path)
    ctx.results["golden"] = {"method": method, "images": man.get("n_images", n),
                             "records": len(man.get("layers", {})), "path": ctx.rel(path)}
    return f"{len(man.get('layers', {}))} layer records of {n} image(s) ({method})"


def stage_verilog(ctx: FlowContext) -> str:
    return _verilog(ctx)


def stage_rtl_check(ctx: FlowContext) -> str:
    return _rtl_check(ctx)


def stage_estimate(ctx: FlowContext) -> str:
    perf_cli = _need_module("vitaccel.sim.perf.cli", "H6")
    report = _need_module("vitaccel.sim.perf.report", "H6")
    build = _need_attr(perf_cli, "build_estimate")
    method = ctx.export_method()
    prog_dir = ctx.out / "programs" / method
    a = ctx.args
    argv = ["estimate", "--program", str(prog_dir), "--rows", str(a.rows), "--cols", str(a.cols)]
    if a.outlier_capacity is not None:
        argv += ["--outlier-capacity", str(a.outlier_capacity)]
    ns = _parse_with("vitaccel.sim.perf.cli", argv)
    est = build(ns)
    ctx.estimate = est
    path = ctx.out / "estimate.json"
    path.write_text(report.to_json(est))
    ctx.files["estimate_json"] = ctx.rel(path)
    doc = json.loads(path.read_text())
    s = doc["summary"]
    ctx.results["estimate"] = {"method": method, "command": "vitaccel " + " ".join(
        argv[:2] + [ctx.rel(prog_dir)] + argv[3:]), "summary": s, "layers": doc["layers"]}
    return (f"{s['cycles']:,} cycles ({s['latency_ms']:.3f} ms at {s['freq_hz'] / 1e6:g} MHz), "
            f"DRAM {s['dram_bytes']:,} B, utilisation {100 * s['utilisation']:.1f} %")


def stage_plots(ctx: FlowContext) -> str:
    made = make_plots(ctx)
    for k, p in made.items():
        ctx.files[f"plot_{k}"] = ctx.rel(p)
    if not made:
        raise StageError("no data to plot")
    return ", ".join(ctx.rel(p) for p in made.values())


@dataclass(frozen=True)
class Stage:
    name: str
    func: object
    needs: tuple = ()
    rtl: bool = False
    title: str = ""


STAGES = (
    Stage("setup", stage_setup, (), title="model and data"),
    Stage("fp_eval", stage_fp_eval, ("setup",), title="evaluate FP32"),
    Stage("calibrate", stage_calibrate, ("setup",), title="calibrate"),
    Stage("export", stage_export, ("calibrate",), title="export integer programs"),
    Stage("fq_eval", stage_fq_eval, ("calibrate",), title="evaluate fake-quant (float and integer grid)"),
    Stage("int_eval", stage_int_eval, ("export",), title="evaluate integer simulator"),
    Stage("golden", stage_golden, ("export",), title="golden vectors"),
    Stage("verilog", stage_verilog, (), rtl=True, title="generate Verilog"),
    Stage("rtl_check", stage_rtl_check, ("golden", "verilog"), rtl=True, title="cocotb + Verilator on golden vectors"),
    Stage("estimate", stage_estimate, ("export",), title="estimate cycles and traffic"),
    Stage("plots", stage_plots, (), title="plots"),
)


# ------------------------------------------------------------------------------------------------
# hardware stages (hw/, tb/)
# ------------------------------------------------------------------------------------------------
def _program_widths(prog) -> tuple[int, int, int]:
    """(largest K, widest A code, widest B code) over the GEMM layers of a program."""
    layers = prog.manifest["layers"].values()
    max_k = max(int(l["shape"][1]) for l in layers)
    a_bits = max(int(l["a"]["bits"]) for l in layers)
    b_bits = max(int(l["b_bits"]) for l in layers)
    return max_k, a_bits, b_bits


def _verilog(ctx: FlowContext) -> str:
    """Verilog of the layer engine sized for the exported program (``vitaccel hw generate``)."""
    hw_cli = _need_module("vitaccel.hw.cli", "H5")
    synth = _need_module("vitaccel.hw.synth", "H5")
    config_from_args = _need_attr(hw_cli, "config_from_args")
    generate = _need_attr(synth, "generate")
    a = ctx.args
    path = ctx.out / "rtl"
    argv = ["hw", "generate", "--rows", str(a.rows), "--cols", str(a.cols)]
    prog = ctx.programs.get(ctx.export_method())
    if prog is not None:
        max_k, a_bits, b_bits = _program_widths(prog)
        argv += ["--max-k", str(max_k), "--abits", str(a_bits), "--wbits", str(b_bits)]
    if a.outlier_capacity is not None:
        argv += ["--outlier-capacity", str(a.outlier_capacity)]
    argv += ["-o", str(path)]
    cfg = config_from_args(_parse_with("vitaccel.hw.cli", argv))
    summary = generate(cfg, path)
    files = [ctx.rel(path / t["file"]) for t in summary["tops"].values()]
    ctx.files["verilog"] = ctx.rel(path)
    ctx.results.setdefault("rtl", {}).update(
        verilog=files, engine_config=cfg.to_dict(),
        generate_command="vitaccel " + " ".join(argv[:-1] + [ctx.rel(path)]))
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


def _rtl_check(ctx: FlowContext) -> str:
    """Run the cocotb layer-engine testbench in Verilator on golden records (``vitaccel tb run``)."""
    tb_cli = _need_module("vitaccel.tb.cli", "H5")
    run_golden_layer = _need_attr(tb_cli, "run_golden_layer")
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
                 "command": f"vitaccel tb run {ctx.rel(golden_dir)} --layer {rec} --rows {ctx.args.rows} "
                            f"--cols {ctx.args.cols}"}
        t0 = time.time()
        try:
            res = run_golden_layer(str(golden_dir), rec, rows=ctx.args.rows, cols=ctx.args.cols)
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


# ------------------------------------------------------------------------------------------------
# plots
# ------------------------------------------------------------------------------------------------
def _plot_accuracy(ctx: FlowContext, path: Path) -> bool:
    import matplotlib.pyplot as plt
    import numpy as np

    acc = ctx.results.get("accuracy", {})
    methods = list(ctx.args.methods)
    kinds = [("fakequant_float", "float fake-quant"), ("fakequant", "fake-quant, integer grid"), ("intsim", "integer sim")]
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
    names = sorted({n for _, d in series for n in d}, key=_layer_order)
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


def _layer_order(name: str):
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


# ------------------------------------------------------------------------------------------------
# report
# ------------------------------------------------------------------------------------------------
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
        lines += ["", "## RTL check (cocotb + Verilator on golden vectors)", "",
                  "| record | kind | result | detail |", "| --- | --- | --- | --- |"]
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
            for n, r in sorted(layers.items(), key=lambda kv: _layer_order(kv[0])):
                lines.append(f"| {m} | {n} | {100 * r:.4f} % |")
    if doc.get("files"):
        lines += ["", "## Files", ""] + [f"* {k}: `{v}`" for k, v in doc["files"].items()]
        plots = [v for k, v in doc["files"].items() if k.startswith("plot_")]
        if plots:
            lines += [""] + [f"![{Path(p).stem}]({p})" for p in plots]
    return "\n".join(lines) + "\n"


def write_report(ctx: FlowContext, stages: list, seconds: float) -> dict:
    from . import __version__

    a = ctx.args
    doc = {
        "format": "vitaccel-flow-report", "format_version": 1, "version": __version__,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"), "seconds": seconds,
        "command": command_line(a),
        "model": ctx.model_name or a.model, "bits": a.bits, "methods": list(a.methods),
        "export_method": ctx.export_method(),
        "hardware": {"rows": a.rows, "cols": a.cols},
        "stages": [s.to_dict() for s in stages],
        "all_ok": all(s.status == "ok" for s in stages if s.status != "not_requested"),
        **ctx.results,
        "files": dict(ctx.files),
    }
    doc = _jsonable(doc)
    (ctx.out / "report.json").write_text(json.dumps(doc, indent=1))
    (ctx.out / "report.md").write_text(report_markdown(doc))
    return doc


# ------------------------------------------------------------------------------------------------
# driver
# ------------------------------------------------------------------------------------------------
def run_flow(args: argparse.Namespace) -> dict:
    """Run every stage, print a stage list, write the report; returns the report document."""
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    ctx = FlowContext(args=args, out=out)
    results: dict[str, StageResult] = {}
    t_all = time.time()
    todo = [s for s in STAGES if not (s.rtl and args.skip_rtl)]
    print(f"vitaccel flow: {len(todo)} stages -> {out}", file=sys.stderr)
    for i, stage in enumerate(STAGES):
        res = StageResult(stage.name)
        results[stage.name] = res
        if stage.rtl and args.skip_rtl:
            res.status, res.message = "not_requested", "--skip-rtl"
            continue
        blocked = [n for n in stage.needs if results.get(n) is None or results[n].status != "ok"]
        tag = f"[{todo.index(stage) + 1}/{len(todo)}] {stage.title or stage.name}"
        if blocked:
            res.status, res.message = "skipped", "needs " + ", ".join(blocked)
            print(f"{tag}: skipped ({res.message})", file=sys.stderr)
            continue
        print(f"{tag} ...", file=sys.stderr, flush=True)
        t0 = time.time()
        try:
            res.message = stage.func(ctx) or ""
            res.status = "ok"
        except UserError:
            raise
        except StageError as exc:
            res.status, res.message = "failed", str(exc)
        except Exception as exc:  # noqa: BLE001 - recorded in the report, flow continues
            res.status, res.message = "failed", f"{type(exc).__name__}: {exc}"
            if args.verbose:
                traceback.print_exc()
        res.seconds = time.time() - t0
        mark = "ok" if res.status == "ok" else "FAILED"
        print(f"{tag}: {mark} ({res.seconds:.1f} s) {res.message}", file=sys.stderr, flush=True)
    doc = write_report(ctx, list(results.values()), time.time() - t_all)
    return doc


def command_line(args: argparse.Namespace) -> str:
    """The ``vitaccel flow`` command line equivalent to ``args`` (options that differ from defaults)."""
    parser = argparse.ArgumentParser()
    add_subcommands(parser.add_subparsers())
    defaults = vars(parser.parse_args(["flow"]))
    parts = ["vitaccel", "flow"]
    for key, value in vars(args).items():
        if key in ("func", "command") or key not in defaults or value == defaults[key]:
            continue
        flag = "--" + key.replace("_", "-")
        if value is True:
            parts.append(flag)
        elif isinstance(value, tuple):
            parts += [flag, ",".join(value)]
        elif value not in (False, None):
            parts += [flag, str(value)]
    return " ".join(parts)


def _methods(text: str) -> tuple:
    from vitaccel.golden.presets import METHODS

    items = tuple(m.strip() for m in text.split(",") if m.strip())
    bad = [m for m in items if m not in METHODS]
    if not items or bad:
        raise argparse.ArgumentTypeError(f"methods must be a comma list of {', '.join(METHODS)}; got {text!r}")
    return tuple(dict.fromkeys(items))


def _positive(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
    return v


#: Settings of ``--quick`` (applied to options left at their defaults).
QUICK = {"methods": ("baseline", "adfq"), "calib_size": 32, "eval_size": 64, "amo_iters": 10, "rows": 4, "cols": 4}


def apply_quick(args: argparse.Namespace) -> None:
    """Replace options still at their defaults by the ``--quick`` settings."""
    parser = argparse.ArgumentParser()
    add_subcommands(parser.add_subparsers())
    defaults = vars(parser.parse_args(["flow"]))
    for key, value in QUICK.items():
        if getattr(args, key) == defaults[key]:
            setattr(args, key, value)


def cmd_flow(args: argparse.Namespace) -> int:
    from vitaccel.golden.presets import parse_bits
    from vitaccel.golden.quantizers import QuantizerError

    if args.quick:
        apply_quick(args)
    try:
        parse_bits(args.bits)
    except QuantizerError as exc:
        raise UserError(f"--bits {args.bits}: {exc}") from None
    if args.export_method and args.export_method not in args.methods:
        raise UserError(f"--export-method {args.export_method} is not one of --methods {','.join(args.methods)}")
    if args.weights and not os.path.isfile(args.weights):
        raise UserError(f"weights file not found: {args.weights}")
    if args.data and not os.path.isdir(args.data):
        raise UserError(f"data folder not found: {args.data}")
    if args.class_map and not os.path.isfile(args.class_map):
        raise UserError(f"class map file not found: {args.class_map}")
    if args.class_map and not args.data:
        raise UserError("--class-map needs --data")
    if args.model != EMBEDDED_MODEL and not args.data:
        raise UserError(f"--model {args.model} needs --data DIR (the embedded digits only fit {EMBEDDED_MODEL})")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    doc = run_flow(args)
    print(f"\nreport: {Path(args.output) / 'report.md'}")
    width = max(len(s["name"]) for s in doc["stages"])
    for s in doc["stages"]:
        print(f"  {s['name']:<{width}}  {s['status']:<13} {s['message']}")
    return 0 if doc["all_ok"] else 1


EXAMPLES = """examples:
  vitaccel flow                                   # embedded digits ViT, all methods, -> vitaccel-flow/
  vitaccel flow --methods baseline,adfq --bits w4a4 --rows 4 --cols 4 -o out/digits
  vitaccel flow --model deit_tiny_patch16_224 \\
      --weights ../shared/models/deit_tiny_patch16_224.safetensors \\
      --data ../shared/imagenet-sample/dev --class-map ../shared/imagenet-sample/synsets.txt \\
      --methods adfq --bits w4a4 --calib-size 32 --eval-size 100 -o out/deit
"""


def add_subcommands(subparsers) -> None:
    """Register ``flow``."""
    p = subparsers.add_parser(
        "flow", help="calibrate, evaluate, export, generate RTL, verify on golden vectors, estimate; one report",
        description="Run the whole vitaccel flow and write OUT/report.md, OUT/report.json, the programs, golden "
        "vectors, Verilog and PNG plots. Default: the embedded digits ViT (no network, no downloads).",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-o", "--output", default="vitaccel-flow", metavar="DIR", help="output folder (default vitaccel-flow)")
    g = p.add_argument_group("model and data")
    g.add_argument("--model", default=EMBEDDED_MODEL, help=f"timm model name (default {EMBEDDED_MODEL})")
    g.add_argument("--weights", metavar="FILE", help="local .safetensors / .pth checkpoint of --model")
    g.add_argument("--data", metavar="DIR", help="ImageNet-layout folder ROOT/CLASS/*.JPEG (default: embedded digits)")
    g.add_argument("--class-map", metavar="FILE", help="class folder names, one per line (e.g. synsets.txt)")
    g.add_argument("--calib-size", type=_positive, default=128, help="calibration images (default 128)")
    g.add_argument("--eval-size", type=_positive, default=200,
                   help="evaluation images (default 200; the integer simulator runs image by image)")
    g.add_argument("--batch-size", type=_positive, default=64)
    g.add_argument("--seed", type=int, default=0)
    q = p.add_argument_group("quantization")
    q.add_argument("--methods", type=_methods, default=DEFAULT_METHODS,
                   help="comma list of baseline, adfq, mptq (default all three)")
    q.add_argument("--bits", default="w8a8", help="w4a4, w6a6 or w8a8 (default w8a8)")
    q.add_argument("--export-method", default=None,
                   help="method whose program feeds golden vectors, RTL check and estimate "
                   "(default: adfq if listed, else the first of --methods)")
    q.add_argument("--amo-iters", type=int, default=50,
                   help="ADFQ AMO reconstruction iterations per block (default 50; `vitaccel calibrate` uses 200)")
    q.add_argument("--sim-backend", choices=("auto", "numba", "reference"), default="auto")
    h = p.add_argument_group("hardware")
    h.add_argument("--rows", type=_positive, default=8, help="MAC array rows (default 8)")
    h.add_argument("--cols", type=_positive, default=8, help="MAC array columns (default 8)")
    h.add_argument("--outlier-capacity", type=int, default=None, help="outliers per row tile (default: engine default)")
    h.add_argument("--golden-images", type=_positive, default=1, help="images in the golden vectors (default 1)")
    h.add_argument("--rtl-layers", default=None, metavar="R1,R2",
                   help="golden records to check in RTL (default: the first block linear layer, preferring one "
                   "with an outlier path, and the first q @ k^T head, e.g. blocks.0.attn.q,blocks.0.attn.qk.h0)")
    h.add_argument("--skip-rtl", action="store_true", help="skip Verilog generation and the RTL check")
    p.add_argument("--quick", action="store_true",
                   help="a fast smoke run: " + " ".join(f"--{k.replace('_', '-')} {v if not isinstance(v, tuple) else ','.join(v)}"
                                                        for k, v in QUICK.items()) + " (explicit options win)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("-v", "--verbose", action="store_true", help="print tracebacks of failed stages")
    p.set_defaults(func=cmd_flow)
