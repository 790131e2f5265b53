"""Simulation speed of the accelerator bench (tb/accel_bench.py) on the small top, and what cocotb's
``--public-flat-rw`` would cost it.

Runs ``--layers`` random 17 x 256 x 64 W4A4 layers with outliers (``tb.accel_image.random_image_layer``)
through :data:`tb.accel_bench.SMALL_ACCEL` (4 x 4 engine, 128-bit port), once per ``--variant``:
``default`` (the bench build) and ``public`` (the same build plus ``--public-flat-rw``, the option
cocotb's Verilator runner adds to every build).  Every output is checked against ``sim/reference.py``.
Prints simulated cycles per wall second and per CPU second of the bench process (the machines are
shared; the CPU figure is what one unloaded core would do).

Usage::

    .venv/bin/python benchmarks/accel_bench_speed.py [--layers 40] [--repeat 2] [--variant default public]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main(argv=None) -> int:
    import numpy as np

    from vitaccel.tb.accel_bench import SMALL_ACCEL, build_bench, run_bench
    from vitaccel.tb.accel_image import build_image, random_image_layer, read_outputs

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=40)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--variant", nargs="+", default=["default", "public"], choices=["default", "public"])
    args = ap.parse_args(argv)
    cfg = SMALL_ACCEL
    rng = np.random.default_rng(5)
    layers = [random_image_layer(rng, f"l{i}", 17, 256, 64, rows=cfg.engine.rows, a_bits=4, b_bits=4,
                                 outliers_per_tile=2) for i in range(args.layers)]
    img = build_image(cfg, layers)
    print(f"load average {os.getloadavg()}")
    for variant in args.variant:
        exe = build_bench(cfg, extra_args=["--public-flat-rw"] if variant == "public" else [], progress=print)
        for r in range(args.repeat):
            with tempfile.TemporaryDirectory() as tmp:
                run = run_bench(exe, img, Path(tmp), latency=cfg.mem_latency)
            exact = all(np.array_equal(read_outputs(img, run.mem, i), lay.expected) for i, lay in enumerate(layers))
            print(f"{variant:8s} run {r}: {run.cycles:,} cycles, {run.seconds:.2f} s wall, {run.cpu_seconds:.2f} s CPU: "
                  f"{run.cycles_per_second:,.0f} cycles/s, {run.cycles_per_cpu_second:,.0f} per CPU second, "
                  f"exact {exact}")
            if not exact:
                return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
