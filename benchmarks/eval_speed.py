"""Images per second of ``vitaccel eval`` with the FP32 model, the integer-grid fake-quant and the simulator.

Runs, in one session and alternating round by round (so that all backends see the same machine
load), the three commands a user runs on real ImageNet images (DeiT-tiny, needs ``../shared``)::

    vitaccel eval --backend fp        --model deit_tiny_patch16_224 --weights ... --data ... --class-map ...
    vitaccel eval --backend fakequant --program PROGRAM ...      (integer grid: golden/integer_grid.py)
    vitaccel eval --backend sim       --program PROGRAM ...      (integer simulator: golden/int_eval.py)

each as its own process with ``--batch-size 32 --limit N --json``, and reads from the JSON: images/s
of the evaluation loop (data loading included, model loading and imports excluded), peak RSS of the
process (DataLoader workers are separate processes and not included, for every backend alike) and
the top-1. The whole-process wall time is reported too. A final ``--backend sim --agreement`` run
checks that the simulator's logits are bit-identical to the integer-grid fake-quant on every image.

Prints the ratios the targets are stated in (sim / FP32 and integer grid / FP32 throughput, sim /
FP32 peak RSS) and the load average. Usage (repository root)::

    .venv/bin/python benchmarks/eval_speed.py --program out/prog-adfq-w4a4 [--images 128] [--rounds 2]
        [--threads N] [--workers W] [--json out.json]

The program: ``vitaccel calibrate --model deit_tiny_patch16_224 --weights ... --data ... --class-map ...
--method adfq --bits w4a4 --amo-iters 5 -o PROGRAM`` (speed does not depend on the AMO result).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from shared_data import DEFAULT_SHARED, MODEL

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--program", required=True, help="DeiT-tiny program directory (vitaccel calibrate)")
    p.add_argument("--images", type=int, default=128, help="images per run (default 128)")
    p.add_argument("--rounds", type=int, default=2, help="rounds of fp / fakequant / sim (default 2)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=None, help="passed to every eval (default: eval's own)")
    p.add_argument("--workers", type=int, default=None, help="passed to every eval (default: eval's own)")
    p.add_argument("--no-agreement", action="store_true", help="skip the final --agreement run")
    p.add_argument("--shared", default=DEFAULT_SHARED)
    p.add_argument("--json", default=None, help="also write the results as JSON")
    return p.parse_args(argv)


def run_eval(args, backend: str, extra=()) -> dict:
    """One ``vitaccel eval`` process; its JSON result plus the process wall time."""
    root = os.path.join(args.shared, "imagenet-sample")
    cmd = [os.path.join(ROOT, ".venv", "bin", "vitaccel"), "eval", "--backend", backend,
           "--data", os.path.join(root, "dev"), "--class-map", os.path.join(root, "synsets.txt"),
           "--batch-size", str(args.batch_size), "--limit", str(args.images)]
    if backend == "fp":
        cmd += ["--model", MODEL, "--weights", os.path.join(args.shared, "models", f"{MODEL}.safetensors")]
    else:
        cmd += ["--program", args.program]
    for flag, val in (("--threads", args.threads), ("--workers", args.workers)):
        if val is not None:
            cmd += [flag, str(val)]
    cmd += list(extra)
    with tempfile.TemporaryDirectory() as tmp:
        js = os.path.join(tmp, "r.json")
        t0 = time.time()
        proc = subprocess.run(cmd + ["--json", js], capture_output=True, text=True)
        wall = time.time() - t0
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
        with open(js) as f:
            res = json.load(f)
    for key in ("indices", "top5_pred", "labels"):
        res.pop(key, None)
    res.update(wall=round(wall, 1), command=" ".join(cmd[1:]), stdout=proc.stdout.strip().splitlines()[-1])
    return res


def main(argv=None) -> int:
    args = parse_args(argv)
    backends = ("fp", "fakequant", "sim")
    runs: dict = {b: [] for b in backends}
    load0 = os.getloadavg()
    for rnd in range(args.rounds):
        for b in backends:
            r = run_eval(args, b)
            runs[b].append(r)
            print(f"round {rnd + 1} {b:9s}: {r['images_per_s']:.2f} images/s  loop {r['seconds']} s  CPU "
                  f"{r['cpu_s']} s  process {r['wall']} s  peak RSS {r['peak_rss_mb']:.0f} MiB  top-1 {r['top1']:.2f} %  "
                  f"(threads {r['threads']}, workers {r['workers']}, load {os.getloadavg()[0]:.1f})",
                  file=sys.stderr)
    agree = None if args.no_agreement else run_eval(args, "sim", ["--agreement"])
    load1 = os.getloadavg()
    best = {b: max(runs[b], key=lambda r: r["images_per_s"]) for b in backends}
    # paired ratios: each round's backend against the same round's FP32 run (same machine load)
    ratios = {b: sorted(runs[b][i]["images_per_s"] / runs["fp"][i]["images_per_s"] for i in range(args.rounds))
              for b in backends}
    cpu = {b: min(r["cpu_s"] / r["n"] for r in runs[b]) for b in backends}
    print(f"DeiT-tiny W4A4 program {args.program}, {args.images} ImageNet dev images, batch {args.batch_size}, "
          f"{args.rounds} round(s); threads {best['fp']['threads']}, DataLoader workers {best['fp']['workers']}; "
          f"load average {load0[0]:.1f} -> {load1[0]:.1f} on {os.cpu_count()} cores")
    print()
    print("| backend | images/s (best round) | throughput / FP32 (best rounds) | per-round ratios to FP32 "
          "| CPU s / image | CPU h per 1000 images | process wall time (s) | peak RSS (MiB) | top-1 (%) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for b in backends:
        r = best[b]
        print(f"| {b} | {r['images_per_s']:.2f} | {r['images_per_s'] / best['fp']['images_per_s']:.2f}x | "
              f"{', '.join(f'{x:.2f}x' for x in ratios[b])} | {cpu[b]:.3f} | {cpu[b] * 1000 / 3600:.2f} | "
              f"{r['wall']} | {r['peak_rss_mb']:.0f} | {r['top1']:.2f} |")
    print()
    print("CPU s / image: CPU time of the evaluation loop (compute threads and DataLoader workers) per image, "
          "best round: the projected time per image on one core.")
    rss = best["sim"]["peak_rss_mb"] / best["fp"]["peak_rss_mb"]
    print(f"sim / FP32 peak RSS: {rss:.2f}x")
    if agree:
        print(f"sim --agreement: {agree['stdout']}  ({agree['images_per_s']:.2f} images/s with both passes)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"runs": runs, "agreement": agree, "loadavg": [load0, load1], "images": args.images,
                       "batch_size": args.batch_size, "program": args.program}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
