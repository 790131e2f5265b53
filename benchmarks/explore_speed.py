"""Speed of ``vitaccel explore``: 100 configurations of DeiT-S (target <= 10 s).

Usage::

    .venv/bin/python benchmarks/explore_speed.py [--model deit_small_patch16_224] [--repeat 3]

The sweep is rows {4, 8, 16, 32, 64} x cols {4, 8, 16, 32, 64} x bits {w4a4, w8a8} x SRAM {256, 512} KiB
= 100 configurations. Timed in one process: the one-off import of torch + timm, the first sweep (traces
the model twice, once per bit setting, builds the cycle-model caches) and repeated sweeps with the
trace cached (best of ``--repeat``); then the whole command line ``vitaccel explore`` in a fresh process
(import included). The target counts the first in-process sweep (trace + 100 estimates + resources).
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

SWEEP = ["--rows", "4..64", "--cols", "4..64", "--bits", "w4a4", "w8a8", "--sram-kib", "256", "512"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="deit_small_patch16_224")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)
    t = time.perf_counter()
    import timm  # noqa: F401
    import torch  # noqa: F401

    from vitaccel.cli import build_parser
    from vitaccel.sim.perf import engine, shapes
    from vitaccel.sim.perf.explore import sweep
    t_import = time.perf_counter() - t
    ns = build_parser().parse_args(["explore", "--model", args.model, *SWEEP])
    shapes._trace_raw.cache_clear()
    engine.layer_cycles.cache_clear()
    t = time.perf_counter()
    points, meta = sweep(ns)
    t_first = time.perf_counter() - t
    best = min(_timed(sweep, ns) for _ in range(args.repeat))
    exe = Path(sys.executable).with_name("vitaccel")
    t = time.perf_counter()
    subprocess.run([str(exe), "explore", "--model", args.model, *SWEEP], check=True, capture_output=True)
    t_cli = time.perf_counter() - t
    print(f"model {args.model}: {meta['points']} configurations ({meta['feasible']} estimable, {meta['fit']} fit "
          f"{meta['device']})")
    print(f"import torch + timm + vitaccel (one-off)  : {t_import:.2f} s")
    print(f"first sweep (trace + caches cold)         : {t_first:.2f} s")
    print(f"sweep, trace cached (best of {args.repeat})          : {best:.2f} s")
    print(f"'vitaccel explore' command, fresh process  : {t_cli:.2f} s (import included)")
    ok = meta["points"] == 100 and t_first <= 10.0
    print(f"target 100 configurations <= 10 s (first sweep): {'met' if ok else 'NOT met'}")
    return 0 if ok else 1


def _timed(fn, ns) -> float:
    t = time.perf_counter()
    fn(ns)
    return time.perf_counter() - t


if __name__ == "__main__":
    sys.exit(main())
