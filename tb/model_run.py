"""``vitaccel tb model``: every GEMM of one image through the RTL accelerator top, checked layer by layer.

:func:`run_model` takes golden vectors (:func:`golden.golden_vectors.load_golden`; they hold the
integer inputs of every GEMM of an image -- the host's float work between the GEMMs was done by the
golden export), builds one memory image (:mod:`tb.accel_image`), runs the fast bench
(:mod:`tb.accel_bench`: Verilator model + C++ AXI memory) once for all layers, and reports per layer

* ``exact``: every output element equals the golden ``out`` (first difference: layer, row, column,
  expected, got);
* ``rtl_cycles``: the layer's cycles measured on the bench (``layer_done`` to ``layer_done``), and the
  status record the sequencer wrote (engine cycle counter, layer cycles);
* ``estimate_cycles``: ``vitaccel estimate --dataflow accelerator`` for the same top, memory and the
  image's outlier counts (:func:`sim.perf.estimate.estimate`);
* ``stall_cycles``: cycles of the layer in which the engine did not advance (``rtl_cycles`` minus the
  engine's counter);
* ``bytes``: bytes per operand logged on the AXI port, against the estimator's.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from vitaccel.sim import accelerator as spec
from vitaccel.sim.accelerator import AccelError, AcceleratorConfig, LayerGeometry
from vitaccel.sim.errors import UserError

__all__ = ["run_model", "size_for_layers", "check_golden_program", "report_markdown", "estimate_for_layers"]


def check_golden_program(program: str, golden_dir: str) -> None:
    """Raise :class:`UserError` unless ``golden_dir`` was exported from ``program`` (same manifest and
    the same arrays)."""
    from vitaccel.golden.program import load_program

    mine = load_program(program)
    theirs = load_program(str(Path(golden_dir) / "program"))
    same = mine.manifest == theirs.manifest and set(mine.tensors) == set(theirs.tensors) and all(
        np.array_equal(np.asarray(mine.tensors[k]), np.asarray(theirs.tensors[k])) for k in mine.tensors)
    if not same:
        m = mine.manifest.get("model", {})
        t = theirs.manifest.get("model", {})
        raise UserError(
            f"the golden vectors in {golden_dir} were exported from another program ({t.get('name')}, "
            f"{theirs.manifest.get('method')} {theirs.manifest.get('bits')}) than {program} ({m.get('name')}, "
            f"{mine.manifest.get('method')} {mine.manifest.get('bits')}); export them again: "
            f"vitaccel export-golden --program {program} ... -o {golden_dir}")


def _worst_case_geometry(lay, cap: int, rows: int) -> LayerGeometry:
    M, K, N = lay.shape
    counts = (cap,) * -(-M // rows) if lay.fo else ()
    return LayerGeometry(lay.name, M, K, N, lay.a_bits, lay.b_bits, lay.out_fmt, lay.out_bits, counts)


def size_for_layers(layers, engine_fields: dict, *, bus_bits: int | None = None, mem_latency: int = 20,
                    buffers: dict | None = None) -> AcceleratorConfig:
    """The accelerator for ``layers`` (:class:`tb.accel_image.ImageLayer`): the engine of
    ``engine_fields`` (flags; unset ``max_k``, ``a_bits`` / ``b_bits`` and outlier capacity sized to
    the layers: largest K, widest codes, capacity at least 32) and buffers for the largest region
    with every outlier tile full, so every image of the same program runs on the same build."""
    from vitaccel.sim.engine_config import make_engine_config

    fields = dict(engine_fields)
    caps = [int(lay.capacity) for lay in layers if lay.fo and lay.capacity]
    fields.setdefault("max_k", max(lay.shape[1] for lay in layers))
    fields.setdefault("a_bits", max(lay.a_bits for lay in layers))
    fields.setdefault("b_bits", max(lay.b_bits for lay in layers))
    fields.setdefault("outlier_capacity", max([32] + caps))
    try:
        eng = make_engine_config(fields)
        geo = [_worst_case_geometry(lay, eng.outlier_capacity, eng.rows) for lay in layers]
        return spec.sized_config(eng, geo, bus_bits=bus_bits, mem_latency=mem_latency, **(buffers or {}))
    except (AccelError, ValueError) as exc:
        raise UserError(str(exc)) from None


def estimate_for_layers(cfg: AcceleratorConfig, layers) -> list:
    """``vitaccel estimate --dataflow accelerator`` of ``layers`` with this top, this memory and each
    layer's own outlier counts: one :class:`sim.perf.estimate.LayerEstimate` per layer."""
    from vitaccel.sim.perf.estimate import Hardware, estimate
    from vitaccel.sim.perf.program import _kind
    from vitaccel.sim.perf.shapes import Gemm

    e = cfg.engine
    gemms = []
    for lay in layers:
        M, K, N = lay.shape
        geo = lay.geometry(e.rows)
        op = lay.op
        gemms.append(Gemm(lay.name, _kind(lay.name, op), op, M, K, N, 1, lay.a_bits, lay.b_bits, lay.a_kind,
                          lay.a_kind == "uniform" and op == "linear", lay.a_kind in ("uniform", "shiftlog2"),
                          lay.out_fmt, lay.out_bits, bool(lay.fo), tuple(geo.outliers_per_tile)))
    hw = Hardware(rows=e.rows, cols=e.cols, dataflow="accelerator", outlier_capacity=e.outlier_capacity,
                  outlier_lanes=e.outlier_lanes, acc_bits=e.acc_bits, max_k=e.max_k, bus_bits=cfg.bus_bits,
                  mem_latency=cfg.mem_latency, sram_kib=1 << 20)
    return estimate(gemms, hw).layers


def _first_mismatch(name: str, got: np.ndarray, want: np.ndarray) -> dict:
    bad = np.argwhere(got != want)
    r, c = (int(x) for x in bad[0])
    return {"layer": name, "row": r, "column": c, "expected": int(want[r, c]), "got": int(got[r, c]),
            "elements": int(len(bad))}


def _check(img, run, estimates) -> list[dict]:
    from vitaccel.tb.accel_bench import port_traffic
    from vitaccel.tb.accel_image import read_outputs, read_status

    traffic = port_traffic(img, run)
    cycles = run.layer_cycles()
    out = []
    for i, (lay, plan) in enumerate(zip(img.layers, img.plans)):
        if i >= len(cycles):
            out.append({"name": lay.name, "exact": False, "detail": "the layer did not finish"})
            continue
        got = read_outputs(img, run.mem, i)
        st = read_status(img, run.mem, i)
        est = estimates[i]
        exact = bool(np.array_equal(got, lay.expected))
        want_bytes = est.traffic.extra["bytes"]
        meas = {k: int(v) for k, v in sorted(traffic[i].items())}
        M, K, N = lay.shape
        out.append({
            "name": lay.name, "shape": [M, K, N], "exact": exact,
            "rtl_cycles": int(cycles[i]), "estimate_cycles": int(est.total), "engine_cycles": int(st["engine_cycles"]),
            "estimate_engine_cycles": int(est.compute), "stall_cycles": int(cycles[i] - st["engine_cycles"]),
            "estimate_stall_cycles": int(est.stall), "status_layer_cycles": int(st["layer_cycles"]),
            "bytes": meas, "bytes_total": sum(meas.values()),
            "estimate_bytes": {k: int(want_bytes[k]) for k in meas},
            "flags": {k: v for k, v in spec.status_flags(st["flags"]).items() if v},
            "status_ok": st["magic"] == spec.STATUS_MAGIC and st["layer_id"] == i,
            "outliers": int(len(lay.outliers)),
            "mismatch": None if exact else _first_mismatch(lay.name, got, lay.expected),
        })
    return out


def run_model(golden_dir: str, *, image: int = 0, cfg: AcceleratorConfig | None = None,
              engine_fields: dict | None = None, program: str | None = None, records=None, waves: bool = False,
              progress: bool = True, bus_bits: int | None = None, mem_latency: int = 20, buffers: dict | None = None,
              log=print) -> dict:
    """Run every GEMM record (or ``records``) of image ``image`` through the RTL top; return the report.

    ``cfg`` defaults to :func:`size_for_layers` of the engine flags in ``engine_fields``.  With
    ``program`` the golden directory must have been exported from it.  With ``waves`` and a mismatch
    the first mismatching layer is run again in a tracing build and its waveform kept.
    """
    from vitaccel.golden.golden_vectors import load_golden
    from vitaccel.tb.accel_bench import build_bench, run_bench
    from vitaccel.tb.accel_image import build_image, layers_from_golden
    from vitaccel.tb.runner import VerilatorNotFoundError, build_root, wave_format

    if program is not None:
        check_golden_program(program, golden_dir)
    vec = load_golden(golden_dir)
    if records is not None:
        unknown = [r for r in records if r not in vec]
        if unknown:
            raise UserError(f"{', '.join(unknown)} not in {golden_dir}; records are e.g. {', '.join(list(vec)[:6])}")
    layers = layers_from_golden(vec, image, records)
    if cfg is None:
        cfg = size_for_layers(layers, engine_fields or {}, bus_bits=bus_bits, mem_latency=mem_latency,
                              buffers=buffers)
    img = build_image(cfg, layers)
    estimates = estimate_for_layers(cfg, layers)
    t0 = time.monotonic()
    try:
        exe = build_bench(cfg, progress=log if progress else None)
    except VerilatorNotFoundError as exc:
        raise UserError(str(exc)) from None
    t_build = time.monotonic() - t0
    run_dir = build_root() / "runs" / f"model_{Path(golden_dir).name}_img{image}_{time.strftime('%Y%m%d-%H%M%S')}"
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(layers), desc="tb model", unit="layer")

    def on_layer(idx, _cycle):
        if bar is not None:
            bar.update(1)
            bar.set_postfix_str(layers[idx - 1].name[-28:])
    t1 = time.monotonic()
    run = run_bench(exe, img, run_dir, latency=cfg.mem_latency, on_layer=on_layer)
    wall = time.monotonic() - t1
    if bar is not None:
        bar.close()
    checked = _check(img, run, estimates)
    first = next((c["mismatch"] or {"layer": c["name"], "detail": c.get("detail")}
                  for c in checked if not c["exact"]), None)
    report = {
        "program": program, "golden": str(golden_dir), "image": image, "accelerator": cfg.to_dict(),
        "layers": checked, "all_exact": all(c["exact"] for c in checked) and run.status == 1,
        "cycles_match": all(c.get("rtl_cycles") == c.get("estimate_cycles") for c in checked),
        "bytes_match": all(c.get("bytes") == c.get("estimate_bytes") for c in checked),
        "total_cycles": int(sum(c.get("rtl_cycles", 0) for c in checked)),
        "estimate_total_cycles": int(sum(e.total for e in estimates)),
        "sim_cycles": int(run.cycles), "sim_seconds": round(run.seconds, 3),
        "sim_cycles_per_second": round(run.cycles_per_second), "sim_cpu_seconds": round(run.cpu_seconds, 3),
        "sim_cycles_per_cpu_second": round(run.cycles_per_cpu_second), "run_wall_seconds": round(wall, 2),
        "build_seconds": round(t_build, 1), "error_flags": run.error, "status": run.status,
        "first_mismatch": first, "run_dir": str(run_dir), "memory_bytes": img.size, "waves": None,
    }
    if first is not None and waves:
        i = next(k for k, c in enumerate(checked) if not c["exact"])
        fmt = wave_format(True)
        exe_w = build_bench(cfg, waves=True, progress=log if progress else None)
        wdir = run_dir / "waves"
        path = wdir / f"{layers[i].name.replace('/', '_')}.{fmt}"
        run_bench(exe_w, img, wdir, latency=cfg.mem_latency, waves=path, wave_layer=i)
        report["waves"] = str(path)
    return report


def report_markdown(rep: dict) -> str:
    """The report as Markdown: a summary and one table row per layer."""
    acc = rep["accelerator"]
    e = acc["engine"]
    lines = [
        f"# RTL model run: image {rep['image']} of {rep['golden']}", "",
        f"Accelerator: {e['rows']}x{e['cols']} engine (w{e['b_bits']}a{e['a_bits']}, acc {e['acc_bits']} bits, "
        f"outlier capacity {e['outlier_capacity']} x {e['outlier_lanes']} lanes, max_k {e['max_k']}), "
        f"{acc['bus_bits']}-bit AXI4 port, memory latency {acc['mem_latency']} cycles.", "",
        f"- all layers bit-exact: **{'yes' if rep['all_exact'] else 'NO'}**",
        f"- RTL cycles == estimator cycles for every layer: **{'yes' if rep['cycles_match'] else 'NO'}**",
        f"- bytes on the memory port == estimator bytes for every layer: **{'yes' if rep['bytes_match'] else 'NO'}**",
        f"- total {rep['total_cycles']:,} cycles (estimator {rep['estimate_total_cycles']:,}), "
        f"{rep['sim_cycles_per_second']:,} simulated cycles/s ({rep['sim_cycles']:,} cycles in {rep['sim_seconds']} s "
        f"wall, {rep['sim_cpu_seconds']} s CPU = {rep['sim_cycles_per_cpu_second']:,} cycles per CPU second; "
        f"Verilator build {rep['build_seconds']} s)",
    ]
    if rep["first_mismatch"]:
        fm = rep["first_mismatch"]
        what = fm.get("detail") or f"{fm.get('elements')} elements differ"
        lines.append(f"- first mismatch: layer {fm.get('layer')}, row {fm.get('row')}, column {fm.get('column')}: "
                     f"expected {fm.get('expected')}, got {fm.get('got')} ({what})")
    if rep.get("waves"):
        lines.append(f"- waveform of that layer: {rep['waves']}")
    lines += ["", "| layer | M x K x N | exact | RTL cycles | estimate | engine | stall | read bytes | written bytes |",
              "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for c in rep["layers"]:
        if "shape" not in c:
            lines.append(f"| {c['name']} | | no | | | | | | |")
            continue
        b = c["bytes"]
        rd = sum(v for k, v in b.items() if k not in ("out", "status"))
        wr = b.get("out", 0) + b.get("status", 0)
        lines.append(f"| {c['name']} | {'x'.join(map(str, c['shape']))} | {'yes' if c['exact'] else '**no**'} | "
                     f"{c['rtl_cycles']:,} | {c['estimate_cycles']:,} | {c['engine_cycles']:,} | "
                     f"{c['stall_cycles']:,} | {rd:,} | {wr:,} |")
    return "\n".join(lines) + "\n"


def write_reports(rep: dict, json_path: Path | None, md_path: Path | None) -> None:
    if json_path:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(rep, indent=1) + "\n")
    if md_path:
        md_path.parent.mkdir(parents=True, exist_ok=True)
        md_path.write_text(report_markdown(rep))
