"""Throughput of the bit-accurate simulator on the DeiT-Small GEMM shapes at W4A4, against float32 BLAS.

For every shape (M x K x N) it times, in one run, interleaved call by call and on the same data:

* ``int8``: the exact layer through ``sim.batched.LayerPlan.run`` (a layer prepared once, as the
  program runner uses it) on the int8 path (``torch._int_mm`` on digit planes) -- 4-bit per-patch
  uniform A codes (per-row zero points and row gains ``Mr``), 4-bit ``sym`` weights, 0.1 % sparse
  outliers (FO = 2), two-stage requantisation to 4-bit ``ucode``, accumulator range checks,
  saturation counting;
* ``float``: the same prepared layer forced onto the exact float BLAS path (float32, or float64 where
  the bound of docs/datapath.md section 6 needs it);
* ``run_layer``: the one-off single-layer API (validation and B preparation in every call);
* ``reference``: ``sim.layer.run_layer_reference`` (plain numpy, exact Python ints; fewer calls);
* ``BLAS``: a float32 matmul of the same shape with numpy (OpenBLAS) and with torch (MKL); the ratios
  use the faster of the two.

The per-head shapes (``q @ k^T``, ``attn @ v``) run as one batched call over the 6 heads of
``--head-images`` images (default 32, the evaluation batch; run-time B per head, as the program
runner does), against float32 BLAS on the same heads (``np.matmul`` / ``torch.bmm`` on the stacks).

Warm-up calls are excluded; each figure is from the median (and the fastest) of ``--repeat`` calls.
Prints a Markdown table, the CPU's VNNI / AMX support and the load average (and writes ``--json``)::

    .venv/bin/python benchmarks/sim_throughput.py [--repeat 30] [--threads 1] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

SHAPES = [  # (name, M, K, N, heads): DeiT-Small, 197 tokens, d = 384, 6 heads of 64
    ("qkv", 197, 384, 1152, 0),
    ("proj", 197, 384, 384, 0),
    ("fc1", 197, 384, 1536, 0),
    ("fc2", 197, 1536, 384, 0),
    ("q@k^T", 197, 64, 197, 6),
    ("attn@v", 197, 197, 64, 6),
]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=30, help="timed calls per figure (median), default 30")
    p.add_argument("--ref-repeat", type=int, default=2, help="timed calls of the slow reference, default 2")
    p.add_argument("--threads", type=int, default=1, help="numba, torch and BLAS threads (default 1)")
    p.add_argument("--outlier-fraction", type=float, default=0.001, help="fraction of A elements that are outliers")
    p.add_argument("--head-images", type=int, default=32,
                   help="images per call of the per-head shapes (6 heads each; default 32, the eval batch)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="also write the results as JSON to this file")
    return p.parse_args(argv)


def make_layer(name, m, k, n, rng, outlier_fraction, groups=0):
    """A W4A4 per-patch layer with sparse outliers and a 4-bit ucode output, plus its inputs.

    ``groups`` > 0: that many groups (heads) with a run-time B each; returns ``(spec, q, o, b)`` with
    ``q`` ``(G, M, K)``, ``o`` ``[group, row, col, val]`` and ``b`` ``(G, K, N)`` (else ``b`` is None and
    ``q`` ``(M, K)``, ``o`` ``(n, 3)``)."""
    import numpy as np

    from vitaccel.sim import formats as F
    from vitaccel.sim.layer import LayerSpec

    g = max(groups, 1)
    z = rng.integers(4, 12, m)
    q = rng.integers(0, 16, (g, m, k))
    n_out = int(round(outlier_fraction * g * m * k))
    flat = np.sort(rng.choice(g * m * k, size=n_out, replace=False))
    gi, rows, cols = flat // (m * k), (flat // k) % m, flat % k
    q[gi, rows, cols] = z[rows]                                     # dense code at an outlier = zero point
    vals = rng.integers(-4000, 4000, n_out)
    o4 = np.stack([gi, rows, cols, vals], axis=1).astype(np.int64)
    b = rng.integers(-7, 8, (g, k, n)).astype(np.int8)               # 4-bit sym codes, stored as int8
    tile = 16
    cap = max(8, int(np.bincount(gi * m + rows // tile * tile).max()) if n_out else 8)
    spec = LayerSpec(name=name, op="linear", a_kind="uniform", a_bits=4, b=b[0] if not groups else np.zeros((k, 0)),
                     b_bits=4, za=z, mr=rng.integers(1 << 15, 1 << 16, m), sr=16,
                     mc=rng.integers(1 << 15, 1 << 16, n), sc=np.full(n, 0), bq=np.zeros(n, np.int64),
                     out_fmt="ucode", out_bits=4, z_out=8, acc_bits=48, fo=2, outlier_capacity=cap, tile_rows=tile)
    spec.acc_bits = spec.acc_bits_required(k)
    # Sc so that the typical |acc| maps to ~4 output steps: outputs spread over the range, some clamp
    typical = np.sqrt(k) * 7 * 7 * 4
    spec.sc = np.full(n, int(np.round(np.log2(2**15 * typical / 4))), np.int64)
    spec.bq = rng.integers(-(1 << int(spec.sc[0])), 1 << int(spec.sc[0]), n)
    assert spec.acc_bits <= F.ACC_BITS_MAX
    if groups:
        return spec, q, o4, b
    return spec, q[0], o4[:, 1:], None


def median_times(fs, repeat):
    """``(median, fastest)`` time of each callable, calling them round-robin ``repeat`` times."""
    import numpy as np

    ts = [[] for _ in fs]
    for _ in range(repeat):
        for f, t in zip(fs, ts):
            t0 = time.perf_counter()
            f()
            t.append(time.perf_counter() - t0)
    return [(float(np.median(t)), float(np.min(t))) for t in ts]


def measure(name, m, k, n, heads, rng, args):
    """Check every path against the reference on this data, then time them interleaved."""
    import numpy as np
    import torch

    from vitaccel.sim import batched as B
    from vitaccel.sim import simulator as S

    spec, q, o, b = make_layer(name, m, k, n, rng, args.outlier_fraction, heads)
    g = max(heads, 1)
    q3 = q if heads else q[None]
    o4 = o if heads else np.concatenate([np.zeros((len(o), 1), np.int64), o], axis=1)
    bshape = None if b is None else (k, n)
    paths = B.allowed_paths(k, spec.dmax(), 7)
    float_path = next(p for p in paths if p != "int8")
    plan_i8 = B.LayerPlan(spec, m, bshape) if "int8" in paths else None
    plan_fl = B.LayerPlan(spec, m, bshape, path=float_path)
    want = B.run_layer_batch_reference(spec, q3, o4, b)             # correctness on this very data first
    q3 = q3.astype(np.uint8)                                        # codes as the program runner keeps them
    calls = {}
    for label, plan in (("int8", plan_i8), ("float", plan_fl)):
        if plan is None:
            continue
        got = plan.run(q3, o4, b, want_acc=True)
        assert np.array_equal(got.out, want.out) and np.array_equal(got.acc, want.acc) \
            and got.saturations == want.saturations, label
        calls[label] = (lambda plan=plan: plan.run(q3, o4, b, out_dtype=np.uint8))    # codes as the runner keeps them
    if not heads:
        calls["run_layer"] = lambda: S.run_layer(spec, q, o)
    af = q3.astype(np.float32)
    bf = (b if heads else spec.b[None]).astype(np.float32)
    ta, tb = torch.from_numpy(af), torch.from_numpy(bf)
    if heads:
        calls["blas_numpy"] = lambda: np.matmul(af, bf)
        calls["blas_torch"] = lambda: torch.bmm(ta, tb)
    else:
        a2, b2, tb2 = af[0], bf[0], tb[0]
        calls["blas_numpy"] = lambda: a2 @ b2
        calls["blas_torch"] = lambda: torch.mm(ta[0], tb2)
    for f in calls.values():                                       # warm-up (compilation, BLAS threads)
        for _ in range(3):
            f()
    res = dict(zip(calls, median_times(list(calls.values()), args.repeat)))
    t0 = time.perf_counter()
    for _ in range(args.ref_repeat):
        B.run_layer_batch_reference(spec, q3, o4, b)
    res["reference"] = ((time.perf_counter() - t0) / args.ref_repeat,) * 2
    return dict(name=name, M=m, K=k, N=n, groups=g, macs=g * m * k * n, outliers=len(o4), acc_bits=spec.acc_bits,
                float_path=float_path, digits=1 if plan_i8 is None else plan_i8._digits_n(),
                saturations=want.saturations, times=res)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
            os.environ[var] = str(args.threads)
    import numba
    import numpy as np
    import torch
    from tqdm import tqdm

    from vitaccel.sim.kernels_int8 import int8_info

    torch.set_num_threads(args.threads or os.cpu_count())
    rng = np.random.default_rng(args.seed)
    shapes = [(f"{nm} ({h} heads x {args.head_images} images, one call)" if h else nm, m, k, n, h * args.head_images)
              for nm, m, k, n, h in SHAPES]
    rows = [measure(*s, rng, args) for s in tqdm(shapes, desc="shapes", file=sys.stderr)]
    info = int8_info()
    load = os.getloadavg()
    print(f"W4A4 exact layer (per-patch scales, {args.outlier_fraction:.1%} outliers, requantization); "
          f"numba threads {numba.get_num_threads()}, torch threads {torch.get_num_threads()}, "
          f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print(f"CPU: avx512_vnni {info['avx512_vnni']}, avx_vnni {info['avx_vnni']}, amx_int8 {info['amx_int8']}; "
          f"torch {info.get('torch')} CPU capability {info.get('cpu_capability')}; int8 path available: "
          f"{info['int8_path']}")
    print()
    print("| layer | M x K x N | int8 GMAC/s (digits) | float path GMAC/s | run_layer GMAC/s | reference GMAC/s "
          "| f32 BLAS numpy / torch GMAC/s | int8 / BLAS (median, best-of) | float / BLAS (median, best-of) |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    tot: dict = {}
    tot_macs: dict = {}
    for r in rows:
        t = r["times"]
        for key, (med, best) in t.items():
            a = tot.setdefault(key, [0.0, 0.0])
            a[0] += med
            a[1] += best
            tot_macs[key] = tot_macs.get(key, 0) + r["macs"]
    tot_row = dict(name="**all shapes** (sum of times)", M="", macs=tot_macs, times=tot, float_path="", digits="")
    for r in rows + [tot_row]:
        t = r["times"]
        g = lambda key, i=0: ((r["macs"][key] if isinstance(r["macs"], dict) else r["macs"]) / t[key][i] / 1e9
                              if key in t else float("nan"))
        blas_med = min(t["blas_numpy"][0], t["blas_torch"][0])
        blas_best = min(t["blas_numpy"][1], t["blas_torch"][1])
        # (the total's run_layer column covers the linear shapes only; its ratios are not shown)
        ratio = lambda key: (f"{blas_med / t[key][0]:.2f}x, {blas_best / t[key][1]:.2f}x"
                             if key in t else "")
        shape = f"{r['groups']}x{r['M']}x{r['K']}x{r['N']}".removeprefix("1x") if r["M"] else ""
        print(f"| {r['name']} | {shape} | {g('int8'):.1f} ({r['digits']}) | {g('float'):.1f} ({r['float_path']}) | "
              f"{g('run_layer'):.1f} | {g('reference'):.3f} | {g('blas_numpy'):.1f} / {g('blas_torch'):.1f} | "
              f"{ratio('int8')} | {ratio('float')} |")
    print()
    print("GMAC/s from the median call; ratios: BLAS time (faster of numpy and torch) / layer time, from the "
          "median and from the fastest call of each (less sensitive to other processes).")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(dict(rows=rows, total=tot, threads=numba.get_num_threads(), loadavg=load, cpu=info,
                           outlier_fraction=args.outlier_fraction), fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    sys.exit(main())
