"""Throughput of the bit-accurate simulator on the DeiT-Small GEMM shapes at W4A4.

For every shape (M x K x N) it times, in one run and on the same data:

* ``sim``: ``sim.simulator.run_layer`` -- the full exact layer: 4-bit per-patch uniform A codes
  (per-row zero points and row gains ``Mr``), 4-bit ``sym`` weights, 0.1 % sparse outliers (FO = 2),
  two-stage requantisation to 4-bit ``ucode``, accumulator range checks, saturation counting;
* ``reference``: ``sim.layer.run_layer_reference`` on the same layer (plain numpy, exact Python ints);
* ``blas``: a float32 numpy matmul of the same shapes (the speed-of-light of the host).

Warm-up calls (numba compilation, BLAS threads) are excluded; each figure is the median of
``--repeat`` calls (sim and BLAS interleaved so both see the same machine load); the last column
also compares the fastest call of each. Prints a Markdown table (and writes ``--json``)::

    .venv/bin/python benchmarks/sim_throughput.py [--repeat 30] [--threads N] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

SHAPES = [  # (name, M, K, N): DeiT-Small, 197 tokens, d = 384, 6 heads of 64
    ("qkv", 197, 384, 1152),
    ("proj", 197, 384, 384),
    ("fc1", 197, 384, 1536),
    ("fc2", 197, 1536, 384),
    ("q@k^T (per head)", 197, 64, 197),
    ("attn@v (per head)", 197, 197, 64),
]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=30, help="timed calls per figure (median), default 30")
    p.add_argument("--ref-repeat", type=int, default=3, help="timed calls of the slow reference, default 3")
    p.add_argument("--threads", type=int, default=None, help="numba and BLAS threads (default: all cores)")
    p.add_argument("--outlier-fraction", type=float, default=0.001, help="fraction of A elements that are outliers")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="also write the results as JSON to this file")
    return p.parse_args(argv)


def make_layer(name, m, k, n, rng, outlier_fraction):
    """A W4A4 per-patch linear layer with sparse outliers and a 4-bit ucode output, plus its inputs."""
    import numpy as np

    from vitaccel.sim import formats as F
    from vitaccel.sim.layer import LayerSpec

    z = rng.integers(4, 12, m)
    q = rng.integers(0, 16, (m, k))
    n_out = int(round(outlier_fraction * m * k))
    flat = np.sort(rng.choice(m * k, size=n_out, replace=False))
    rows, cols = flat // k, flat % k
    q[rows, cols] = z[rows]                                         # dense code at an outlier = zero point
    vals = rng.integers(-4000, 4000, n_out)
    outliers = np.stack([rows, cols, vals], axis=1).astype(np.int64)
    b = rng.integers(-7, 8, (k, n)).astype(np.int8)                  # 4-bit sym weights, stored as int8
    tile = 16
    cap = max(8, int(np.bincount(rows // tile).max()) if n_out else 8)
    spec = LayerSpec(name=name, op="linear", a_kind="uniform", a_bits=4, b=b, b_bits=4, za=z,
                     mr=rng.integers(1 << 15, 1 << 16, m), sr=16, mc=rng.integers(1 << 15, 1 << 16, n),
                     sc=np.full(n, 0), bq=np.zeros(n, np.int64), out_fmt="ucode", out_bits=4, z_out=8,
                     acc_bits=48, fo=2, outlier_capacity=cap, tile_rows=tile)
    spec.acc_bits = spec.acc_bits_required(k)
    # Sc so that the typical |acc| maps to ~4 output steps: outputs spread over the range, some clamp
    typical = np.sqrt(k) * 7 * 7 * 4
    spec.sc = np.full(n, int(np.round(np.log2(2**15 * typical / 4))), np.int64)
    spec.bq = rng.integers(-(1 << int(spec.sc[0])), 1 << int(spec.sc[0]), n)
    assert spec.acc_bits <= F.ACC_BITS_MAX
    return spec, q, outliers


def median_time(f, repeat):
    import numpy as np

    ts = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts))


def median_times(fs, repeat):
    """Median time of each callable, calling them round-robin ``repeat`` times."""
    import numpy as np

    ts = [[] for _ in fs]
    for _ in range(repeat):
        for f, t in zip(fs, ts):
            t0 = time.perf_counter()
            f()
            t.append(time.perf_counter() - t0)
    return [(float(np.median(t)), float(np.min(t))) for t in ts]


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
            os.environ[var] = str(args.threads)
    import numba
    import numpy as np
    from tqdm import tqdm

    from vitaccel.sim import simulator as S
    from vitaccel.sim.layer import run_layer_reference

    rng = np.random.default_rng(args.seed)
    rows = []
    for name, m, k, n in tqdm(SHAPES, desc="shapes", file=sys.stderr):
        spec, q, o = make_layer(name, m, k, n, rng, args.outlier_fraction)
        macs = m * k * n
        # correctness on this very data before timing
        want = run_layer_reference(spec, q, o)
        got = S.run_layer(spec, q, o)
        assert np.array_equal(got.acc, want.acc) and np.array_equal(got.out, want.out)
        assert got.saturations == want.saturations
        af, bf = q.astype(np.float32), spec.b.astype(np.float32)
        for _ in range(3):                                          # warm-up
            S.run_layer(spec, q, o)
            af @ bf
        # interleaved, so that both see the same machine load
        (t_sim, b_sim), (t_blas, b_blas) = median_times([lambda: S.run_layer(spec, q, o), lambda: af @ bf],
                                                        args.repeat)
        t_ref = median_time(lambda: run_layer_reference(spec, q, o), args.ref_repeat)
        rows.append(dict(name=name, M=m, K=k, N=n, macs=macs, outliers=len(o), path=S.layer_gemm_path(spec, k),
                         acc_bits=spec.acc_bits, saturations=got.saturations,
                         t_sim=t_sim, t_ref=t_ref, t_blas=t_blas, best_sim=b_sim, best_blas=b_blas))
    tot = {key: sum(r[key] for r in rows) for key in ("macs", "t_sim", "t_ref", "t_blas", "best_sim", "best_blas")}
    load = os.getloadavg()
    print(f"W4A4 exact linear layer (per-patch scales, {args.outlier_fraction:.1%} outliers, requantization); "
          f"numba threads {numba.get_num_threads()}, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print()
    print("| layer | M x K x N | GEMM path | sim GMAC/s | reference GMAC/s | float32 BLAS GMAC/s | sim / BLAS "
          "| best-of sim / BLAS |")
    print("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for r in rows + [dict(tot, name="**all shapes** (sum of times)", M="", K="", N="", path="")]:
        g = lambda t: r["macs"] / t / 1e9
        shape = f"{r['M']}x{r['K']}x{r['N']}" if r["M"] else ""
        print(f"| {r['name']} | {shape} | {r['path']} | {g(r['t_sim']):.2f} | {g(r['t_ref']):.4f} | "
              f"{g(r['t_blas']):.2f} | {r['t_blas'] / r['t_sim']:.0%} | {r['best_blas'] / r['best_sim']:.0%} |")
    print()
    print("GMAC/s from the median of the timed calls; 'best-of' compares the fastest call of each "
          "(less sensitive to other processes on a shared machine).")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(dict(rows=rows, total=tot, threads=numba.get_num_threads(), loadavg=load,
                           outlier_fraction=args.outlier_fraction), fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    sys.exit(main())
