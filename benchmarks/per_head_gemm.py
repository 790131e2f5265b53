"""The per-head GEMM choices behind the q@k^T row of docs/performance.md (issue 20), side by side.

For the 192 per-(image, head) products of a DeiT-S batch of 32 (197 x 64 x 197, ``q @ k^T``) and
``attn @ v`` (197 x 197 x 64), interleaved call by call, one thread each:

* ``int8 loop``: one ``torch._int_mm`` per head (what ``sim.kernels_int8.gemm_int8_groups`` does);
* ``f32 bmm``: one float32 ``torch.bmm`` over all heads (exact here, but the alternative);
* ``layer``: the exact W4A4 layer ``sim.batched.LayerPlan.run`` on the same heads (decode, the int8
  loop above, drain and requantiser), as ``benchmarks/sim_throughput.py`` times it.

Prints median and fastest times (ms)::

    .venv/bin/python benchmarks/per_head_gemm.py [--repeat 25]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=25)
    args = ap.parse_args(argv)
    import numba
    import numpy as np
    import torch
    from threadpoolctl import threadpool_limits

    from sim_throughput import make_layer
    from vitaccel.sim import batched as B

    torch.set_num_threads(1)
    numba.set_num_threads(1)
    threadpool_limits(1)
    rng = np.random.default_rng(0)
    print(f"load average {os.getloadavg()}; 192 heads, one thread; ms (median, fastest)")
    for name, m, k, n in (("q@k^T", 197, 64, 197), ("attn@v", 197, 197, 64)):
        spec, q, o4, b = make_layer(name, m, k, n, rng, 0.001, 192)
        plan = B.LayerPlan(spec, m, (k, n))
        q3 = q.astype(np.uint8)
        a8 = torch.from_numpy((q3.astype(np.int16) - 8).astype(np.int8))
        b8 = torch.from_numpy(b.astype(np.int8))
        af, bf = a8.float(), b8.float()
        raw = torch.empty((192, m, n), dtype=torch.int32)

        def int8_loop():
            for ai, bi, oi in zip(a8.unbind(0), b8.unbind(0), raw.unbind(0)):
                torch._int_mm(ai, bi, out=oi)

        calls = {"int8 loop": int8_loop, "f32 bmm": lambda: torch.bmm(af, bf),
                 "layer": lambda: plan.run(q3, o4, b, out_dtype=np.uint8)}
        for f in calls.values():
            f()
        ts = {key: [] for key in calls}
        for _ in range(args.repeat):
            for key, f in calls.items():
                t0 = time.perf_counter()
                f()
                ts[key].append(time.perf_counter() - t0)
        print(name, "  ".join(f"{key}: {np.median(t) * 1e3:.1f} / {min(t) * 1e3:.1f}" for key, t in ts.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
