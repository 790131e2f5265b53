"""The simulator's two OpenMP pools (numba, torch): batch time with spinning vs sleeping idle threads.

Runs one batch of DeiT-tiny images through ``ProgramRunner.run_batch`` (after a warm-up batch) in a
fresh process per setting, ``OMP_WAIT_POLICY=ACTIVE`` (threads spin after each parallel region) and
``PASSIVE`` (they sleep; the default :mod:`vitaccel.sim` sets), with the same thread count for torch and
numba, and prints the wall time of each (needs ``../shared`` and a program)::

    .venv/bin/python benchmarks/omp_wait_policy.py --program out/prog-adfq-w4a4 [--threads 2] [--images 32]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys

CHILD = r"""
import os, sys, time, torch
sys.path.insert(0, {bench!r})
from shared_data import deit_tiny_and_dev
from vitaccel.golden.program import load_program
from vitaccel.golden.int_eval import ProgramRunner
from vitaccel.sim._threads import configure_threads
configure_threads({threads})
prog = load_program({program!r})
_, ds = deit_tiny_and_dev()
x = torch.stack([ds[i][0] for i in range({images})])
r = ProgramRunner(prog)
r.run_batch(x)
t0 = time.time()
r.run_batch(x)
print(f"{{time.time() - t0:.2f}}")
"""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--program", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args(argv)
    bench = os.path.dirname(os.path.abspath(__file__))
    code = CHILD.format(bench=bench, threads=args.threads, program=args.program, images=args.images)
    res: dict = {"ACTIVE": [], "PASSIVE": []}
    for _ in range(args.rounds):
        for policy in res:
            env = dict(os.environ, OMP_WAIT_POLICY=policy)
            out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
            res[policy].append(float(out.stdout.strip().splitlines()[-1]))
    load = os.getloadavg()
    print(f"{args.images} DeiT-tiny images, one batch, {args.threads} threads (torch and numba), "
          f"load average {load[0]:.1f}")
    for policy, ts in res.items():
        print(f"OMP_WAIT_POLICY={policy}: " + ", ".join(f"{t:.2f} s" for t in ts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
