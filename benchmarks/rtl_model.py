"""One DeiT-tiny image through the RTL accelerator top: all 12 blocks, patch embedding and head, bit exact.

Front end (not part of the timed RTL run): DeiT-tiny (``../shared/models``) calibrated with ADFQ-ViT
W4A4 (``vitaccel calibrate --method adfq --bits w4a4``; by default without AMO, whose calibration
takes about 30 minutes on the 2-core machines -- ``--amo-iters N`` runs AMO with N iterations) on
``--calib-size`` dev images, golden vectors of one dev image (``vitaccel export-golden``).

RTL run (timed, the issue's 15-minute budget): ``vitaccel tb model`` with the default 16 x 16 engine
(widths, K and buffers sized to the program: w8a8 because patch embedding and head are 8-bit), i.e.
the Verilator build of :class:`hw.accelerator.Accelerator` (cold, in a fresh build folder unless
``--reuse-build``) and the simulation of all 146 GEMMs of the image.  Checked: every output element
against the golden vectors, every layer's cycles against ``vitaccel estimate --dataflow
accelerator``, the bytes on the AXI port against the estimator.

Because the machines are shared, the script records the load average and the other busy processes
before and after the run, and the simulation's CPU time besides its wall time.

Usage::

    .venv/bin/python benchmarks/rtl_model.py [--amo-iters N] [--reuse-front-end] [--reuse-build]
        [--json benchmarks/rtl_model_results.json] [--markdown build/deit_model/model.md]

docs/hardware-deit-tiles.md ("The whole image through the accelerator top") holds the results.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SHARED = ROOT / ".." / "shared"
MODEL = "deit_tiny_patch16_224"


def busy_processes(limit: int = 8) -> list[str]:
    """The busiest other processes (``ps``), to say what shared the machine."""
    try:
        out = subprocess.run(["ps", "-eo", "pid,pcpu,etime,args", "--sort=-pcpu"], capture_output=True, text=True,
                             timeout=10).stdout.splitlines()[1:]
    except (OSError, subprocess.SubprocessError):
        return []
    me = str(os.getpid())
    rows = [ln.strip()[:140] for ln in out if ln.split()[0] != me and "ps -eo" not in ln]
    return rows[:limit]


def machine_state() -> dict:
    return {"loadavg": [round(x, 2) for x in os.getloadavg()], "cpus": os.cpu_count(),
            "busy": busy_processes()}


def front_end(work: Path, shared: Path, *, calib_size: int, amo_iters: int | None, reuse: bool) -> dict:
    """Calibrate (ADFQ W4A4) and export golden vectors of one image with the CLI; return the paths."""
    from vitaccel.cli import main as vitaccel

    prog, gold = work / "program", work / "golden"
    info = {"program": str(prog), "golden": str(gold), "calib_size": calib_size,
            "amo": f"{amo_iters} iterations" if amo_iters else "off (--no-amo)"}
    if reuse and (prog / "manifest.json").exists() and (gold / "golden.json").exists():
        info["reused"] = True
        return info
    data = shared / "imagenet-sample"
    t0 = time.monotonic()
    cmd = ["calibrate", "--model", MODEL, "--weights", str(shared / "models" / f"{MODEL}.safetensors"),
           "--data", str(data / "dev"), "--class-map", str(data / "synsets.txt"), "--method", "adfq",
           "--bits", "w4a4", "--calib-size", str(calib_size), "--batch-size", "16", "--workers", "0",
           "-o", str(prog)]
    cmd += ["--amo-iters", str(amo_iters)] if amo_iters else ["--no-amo"]
    if vitaccel(cmd) != 0:
        raise SystemExit("calibration failed")
    info["calibrate_s"] = round(time.monotonic() - t0, 1)
    info["calibrate_command"] = "vitaccel " + " ".join(cmd)
    t0 = time.monotonic()
    cmd = ["export-golden", "--program", str(prog), "--data", str(data / "dev"), "--class-map",
           str(data / "synsets.txt"), "--images", "1", "--workers", "0", "-o", str(gold)]
    if vitaccel(cmd) != 0:
        raise SystemExit("golden export failed")
    info["golden_s"] = round(time.monotonic() - t0, 1)
    info["golden_command"] = "vitaccel " + " ".join(cmd)
    return info


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", type=Path, default=SHARED)
    ap.add_argument("--work", type=Path, default=ROOT / "build" / "deit_model")
    ap.add_argument("--calib-size", type=int, default=32)
    ap.add_argument("--amo-iters", type=int, default=None, help="run AMO with this many iterations (default: no AMO)")
    ap.add_argument("--reuse-front-end", action="store_true", help="reuse the program and golden vectors in --work")
    ap.add_argument("--reuse-build", action="store_true",
                    help="use the default build folder (a cached Verilator build counts 0 s) instead of a fresh one")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--markdown", type=Path, default=None)
    args = ap.parse_args(argv)

    args.work.mkdir(parents=True, exist_ok=True)
    fe = front_end(args.work, args.shared, calib_size=args.calib_size, amo_iters=args.amo_iters,
                   reuse=args.reuse_front_end)
    if not args.reuse_build:
        build = args.work / f"rtl_build_{time.strftime('%Y%m%d-%H%M%S')}"
        os.environ["VITACCEL_BUILD_DIR"] = str(build)
    before = machine_state()
    from vitaccel.tb.model_run import report_markdown, run_model, write_reports

    t0 = time.monotonic()
    rep = run_model(fe["golden"], image=0, engine_fields={}, program=fe["program"], progress=True)
    wall = time.monotonic() - t0
    after = machine_state()
    rep["benchmark"] = {
        "command": "vitaccel tb model --program {program} --golden {golden}".format(**fe),
        "wall_seconds_including_build": round(wall, 1), "front_end": fe, "machine_before": before,
        "machine_after": after, "fresh_build": not args.reuse_build,
    }
    md = report_markdown(rep)
    print(md)
    print(f"wall {wall:.1f} s including the Verilator build ({rep['build_seconds']} s); simulation "
          f"{rep['sim_seconds']} s wall / {rep['sim_cpu_seconds']} s CPU for {rep['sim_cycles']:,} cycles = "
          f"{rep['sim_cycles_per_second']:,} cycles/s ({rep['sim_cycles_per_cpu_second']:,} per CPU second); "
          f"load average before {before['loadavg']}, after {after['loadavg']}")
    write_reports(rep, args.json, args.markdown)
    ok = rep["all_exact"] and rep["cycles_match"] and rep["bytes_match"]
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
