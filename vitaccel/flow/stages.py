"""The software stages of ``vitaccel flow``: model and data, evaluations, calibration, export,
golden vectors and the estimate. Each takes the :class:`~vitaccel.flow.context.FlowContext`, calls
the owning package's library API (no argv in between) and returns a one-line summary."""
from __future__ import annotations

import copy
import json
import time

from vitaccel.sim.errors import UserError

from .context import FlowContext, StageError, top1

__all__ = ["DEFAULT_METHODS", "EMBEDDED_MODEL", "stage_setup", "stage_fp_eval", "stage_calibrate",
           "stage_fq_eval", "stage_export", "stage_int_eval", "stage_golden", "stage_estimate"]

DEFAULT_METHODS = ("baseline", "adfq", "mptq")
EMBEDDED_MODEL = "vitaccel-digits"


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
    acc = top1(pred, ctx.eval_labels)
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
        fl[method] = top1(pred, ctx.eval_labels)
        prog = ctx.programs.get(method)
        if prog is not None:
            qvit.use_integer_grid(prog)
            try:
                pred = _predict(qvit, ctx.eval_images, ctx.args.batch_size)
            finally:
                qvit.use_float_fakequant()
        ctx.fq_pred[method] = pred
        grid[method] = top1(pred, ctx.eval_labels)
    return ", ".join(f"{m} {v:.2f} % (float {fl[m]:.2f} %)" for m, v in grid.items())


def stage_export(ctx: FlowContext) -> str:
    from vitaccel.golden.program import export_program, save_program

    done, failed = [], {}
    for method, qvit in ctx.qvits.items():
        try:
            prog = export_program(qvit, ctx.data_config, ctx.args.outlier_capacity,
                                  tile_rows=ctx.engine_fields()["rows"])
        except Exception as exc:
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
        res[method] = top1(pred, ctx.eval_labels)
        if method in ctx.fq_pred:
            agree[method] = float(100.0 * (pred == ctx.fq_pred[method].numpy()).mean())
        if n_el:
            measured[method] = {n: n_out[n] / n_el[n] for n in n_el}
        ctx.results.setdefault("saturations", {})[method] = int(runner.saturations)
    if measured:
        ctx.results["outliers_intsim"] = measured
    return ", ".join(f"{m} {v:.2f} % (agreement {agree.get(m, float('nan')):.1f} %)" for m, v in res.items())


def stage_golden(ctx: FlowContext) -> str:
    """Golden vectors of the exported method (:func:`vitaccel.golden.golden_vectors.write_golden`)."""
    from vitaccel.golden.golden_vectors import write_golden

    method = ctx.export_method()
    path = ctx.out / "golden"
    n = min(ctx.args.golden_images, len(ctx.eval_images))
    man = write_golden(ctx.programs[method], list(ctx.eval_images[:n]), str(path), ctx.eval_labels[:n].tolist(),
                       backend=ctx.args.sim_backend, progress=True)
    ctx.files["golden"] = ctx.rel(path)
    ctx.results["golden"] = {"method": method, "images": man.get("n_images", n),
                             "records": len(man.get("layers", {})), "path": ctx.rel(path)}
    return f"{len(man.get('layers', {}))} layer records of {n} image(s) ({method})"


def stage_estimate(ctx: FlowContext) -> str:
    """Per-layer cycles and DRAM traffic of the exported program (:func:`vitaccel.sim.perf.workload.estimate_program`)."""
    from vitaccel.sim.perf import report
    from vitaccel.sim.perf.estimate import Hardware
    from vitaccel.sim.perf.workload import estimate_program

    method = ctx.export_method()
    prog_dir = ctx.out / "programs" / method
    eng = ctx.engine_fields()
    hw = Hardware(rows=eng["rows"], cols=eng["cols"], acc_bits=eng.get("acc_bits"),
                  outlier_capacity=eng.get("outlier_capacity"), outlier_lanes=eng.get("outlier_lanes"),
                  max_k=eng.get("max_k"))
    est = estimate_program(str(prog_dir), hw)
    ctx.estimate = est
    path = ctx.out / "estimate.json"
    path.write_text(report.to_json(est))
    ctx.files["estimate_json"] = ctx.rel(path)
    doc = json.loads(path.read_text())
    s = doc["summary"]
    command = f"vitaccel estimate --program {ctx.rel(prog_dir)} --rows {eng['rows']} --cols {eng['cols']}"
    for key in ("acc_bits", "outlier_capacity", "outlier_lanes", "max_k"):
        if eng.get(key) is not None:
            command += f" --{key.replace('_', '-')} {eng[key]}"
    ctx.results["estimate"] = {"method": method, "command": command, "summary": s, "layers": doc["layers"]}
    return (f"{s['cycles']:,} cycles ({s['latency_ms']:.3f} ms at {s['freq_hz'] / 1e6:g} MHz), "
            f"DRAM {s['dram_bytes']:,} B, utilisation {100 * s['utilisation']:.1f} %")
