"""Accuracy benchmark: FP vs fake-quant (baseline / ADFQ-ViT / MPTQ-ViT, ablations) vs integer sim.

Default data (``../shared`` beside the checkout): DeiT-tiny weights and the 500 ImageNet dev images.
Calibration uses ``--calib-size`` images drawn (``--seed``) from the same dev folder (PTQ needs no
labels; there is no separate calibration split in ``../shared``); evaluation uses all dev images
(or ``--eval-limit``). Results are appended to ``--out`` (JSON, one entry per row) as they finish.

Example::

    .venv/bin/python benchmarks/accuracy.py --rows fp baseline:w4a4 adfq:w4a4 --eval-limit 100

Two runs side by side must not share ``--out`` (each rewrites the whole file): give the second its
own file and append it afterwards with ``--merge``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from vitaccel.golden.calibrate import calibrate_model, collect_images  # noqa: E402
from vitaccel.golden.data import image_folder, loader, subset  # noqa: E402
from vitaccel.golden.models import create_model  # noqa: E402
from vitaccel.golden.presets import ABLATIONS, preset  # noqa: E402

SHARED = os.path.join(ROOT, "..", "shared")

#: row name -> (method, bits, overrides). "fp" is the float model.
ROWS = {
    "baseline:w4a4": ("baseline", "w4a4", {}),
    "baseline:w6a6": ("baseline", "w6a6", {}),
    "adfq:w4a4": ("adfq", "w4a4", {}),
    "adfq:w6a6": ("adfq", "w6a6", {}),
    "adfq-static:w4a4": ("adfq", "w4a4", ABLATIONS["static_poq"]),
    "adfq-noqdrop:w4a4": ("adfq", "w4a4", ABLATIONS["no_qdrop"]),
    "adfq-noamo:w4a4": ("adfq", "w4a4", ABLATIONS["no_amo"]),
    "adfq-noamo:w6a6": ("adfq", "w6a6", ABLATIONS["no_amo"]),
    "adfq-noamo-static:w4a4": ("adfq", "w4a4", {**ABLATIONS["no_amo"], **ABLATIONS["static_poq"]}),
    "adfq-noamo-slq2:w4a4": ("adfq", "w4a4", {**ABLATIONS["no_amo"], "slq_base": "2"}),
    "adfq-noamo-nopoq:w4a4": ("adfq", "w4a4", {**ABLATIONS["no_amo"], **ABLATIONS["no_poq"]}),
    "adfq-noamo-noslq:w4a4": ("adfq", "w4a4", {**ABLATIONS["no_amo"], **ABLATIONS["no_slq"]}),
    "mptq:w4a4": ("mptq", "w4a4", {}),
    "mptq:w6a6": ("mptq", "w6a6", {}),
    "mptq-nosq:w4a4": ("mptq", "w4a4", ABLATIONS["no_sq"]),
    "mptq-no3r:w4a4": ("mptq", "w4a4", ABLATIONS["no_three_region"]),
}


@torch.no_grad()
def evaluate(model, x, y, batch=50):
    top1 = top5 = 0
    preds = []
    for i in range(0, len(x), batch):
        out = model(x[i:i + batch])
        t5 = out.topk(5, dim=-1).indices
        preds.append(t5[:, 0])
        top1 += (t5[:, 0] == y[i:i + batch]).sum().item()
        top5 += (t5 == y[i:i + batch, None]).any(dim=1).sum().item()
    return 100 * top1 / len(x), 100 * top5 / len(x), torch.cat(preds)


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (thread counts)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _amo_iters(e) -> int | None:
    """AMO iterations per module of an ``adfq`` row (None without AMO); 200 is the default."""
    over = e.get("overrides", {})
    if e.get("method") != "adfq" or over.get("amo", True) is False or " " in e["row"]:
        return None
    return over.get("amo_iters") or 200


def table(results) -> str:
    """Markdown table of recorded rows (latest entry per row wins)."""
    last = {}
    v1_sims = set()  # int-sim entries of programs calibrated with the v1 adfq preset
    current = {}     # row -> whether its latest calibration recorded its config (v2 and later)
    for k, e in enumerate(results):  # one line per row and AMO iteration count
        if "sim_images" in e:
            if e["row"].startswith("adfq") and not current.get(e["row"].split(" ")[0], False):
                v1_sims.add(k)
        else:
            current[e["row"]] = "config" in e
        last[(e["row"], _amo_iters(e))] = (k, e)
    fp = last.get(("fp", None), (0, {}))[1].get("top1")
    lines = ["| row | bits | images | top-1 % (integer grid) | top-5 % (integer grid) | top-1 drop vs FP "
             "| top-1 % (float fake-quant) | calib s | eval+calib s |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    sims = []
    stale = False
    for (row, _), (k, e) in last.items():
        if "sim_images" in e:
            sims.append((k, e))
            continue
        if row == "fp" or "grid_top1" in e:
            t1, t5 = e.get("grid_top1", e["top1"]), e.get("grid_top5", e["top5"])
            g1, g5 = f"{t1:.1f}", f"{t5:.1f}"
            drop = "" if fp is None or row == "fp" else f"{fp - t1:.1f}"
        else:  # recorded before the integer-grid mode existed: float fake-quant only
            g1 = g5 = "not measured"
            drop = "" if fp is None else f"({fp - e['top1']:.1f} float)"
        fl = "" if row == "fp" else f"{e['top1']:.1f}"
        amo = _amo_iters(e)
        name = row.split(":")[0] + (f" (AMO {amo} it.)" if amo else "")
        if row != "fp" and "config" not in e and e.get("method") == "adfq":
            name += " (v1 defaults)"  # recorded before the adfq preset changed (see the note below)
            stale = True
        lines.append(f"| {name} | {e.get('bits', 'fp32')} | {e['eval_images']} | {g1} | "
                     f"{g5} | {drop} | {fl} | {e.get('calib_seconds', '')} | {e['seconds']} |")
    for k, e in sims:
        lines.append("")
        if k in v1_sims:
            stale = True
        lines.append(f"Integer simulator ({e['sim_backend']}) on the first {e['sim_images']} eval images of "
                     f"`{e['row'].split(' ')[0]}`{' (v1 defaults)' if k in v1_sims else ''}: top-1 {e['sim_top1']:.1f} % (fake-quant on the same images "
                     f"{e['fq_top1_same_images']:.1f} %), prediction agreement with fake-quant "
                     f"{e['sim_agreement']:.1f} %"
                     + (f" (integer grid; with float fake-quant {e['sim_agreement_float']:.1f} %), bit-identical "
                        f"logits on {e['sim_bit_identical']} images" if "sim_agreement_float" in e
                        else " (float fake-quant; recorded before the integer-grid mode existed)")
                     + f", {e['sim_seconds']} s.")
    if stale:
        lines += ["", "(v1 defaults): recorded before the `adfq` preset moved to dynamic POQ (spec 8.1.1), SLQ "
                  "base sqrt2 at every width and QDrop in AMO; kept for the record, not comparable."]
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="deit_tiny_patch16_224")
    ap.add_argument("--weights", default=os.path.join(SHARED, "models", "deit_tiny_patch16_224.safetensors"))
    ap.add_argument("--data", default=os.path.join(SHARED, "imagenet-sample", "dev"))
    ap.add_argument("--class-map", default=os.path.join(SHARED, "imagenet-sample", "synsets.txt"))
    ap.add_argument("--calib-size", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval-limit", type=int, default=None, help="evaluate this many images (default all)")
    ap.add_argument("--rows", nargs="+", default=["fp", "baseline:w4a4", "adfq-noamo:w4a4", "mptq:w4a4"],
                    help=f"rows: fp, {', '.join(ROWS)}")
    ap.add_argument("--amo-iters", type=int, default=None, help="AMO iterations per module (default: reconstruct's)")
    ap.add_argument("--sim-row", default=None, help="row whose program also runs through the integer simulator")
    ap.add_argument("--sim-images", type=int, default=0, help="images for the integer-sim evaluation")
    ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "accuracy_results.json"))
    ap.add_argument("--table", action="store_true", help="only print the Markdown table of --out")
    ap.add_argument("--merge", nargs="+", metavar="JSON", default=None,
                    help="only append the entries of these result files (runs side by side with their own --out) "
                         "to --out")
    ap.add_argument("--threads", type=positive_int, default=None,
                    help="torch threads (default: all cores; use 1 when two benchmarks share a 2-core machine)")
    args = ap.parse_args(argv)
    if args.table:
        print(table(json.load(open(args.out))))
        return
    if args.merge:
        results = json.load(open(args.out)) if os.path.isfile(args.out) else []
        for path in args.merge:
            try:
                with open(path) as f:
                    extra = json.load(f)
            except (OSError, json.JSONDecodeError) as exc:
                ap.error(f"--merge {path}: {exc}")
            if not isinstance(extra, list) or not all(isinstance(e, dict) and "row" in e for e in extra):
                ap.error(f"--merge {path}: not an accuracy.py result file (a list of entries with a 'row')")
            results += extra
            print(f"{path}: {len(extra)} entries appended to {args.out}")
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)
        return
    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    torch.manual_seed(args.seed)

    model = create_model(args.model, args.weights)
    ds = image_folder(args.data, model, args.class_map)
    ev = subset(ds, args.eval_limit, 1) if args.eval_limit else ds
    x, y = [], []
    for xb, yb in loader(ev, 50, workers=min(2, os.cpu_count() or 1)):
        x.append(xb)
        y.append(yb)
    x, y = torch.cat(x), torch.cat(y)
    calib = collect_images(loader(subset(ds, args.calib_size, args.seed), 16, 0), args.calib_size)
    print(f"eval images {len(x)}, calibration images {len(calib)}", flush=True)
    results = json.load(open(args.out)) if os.path.isfile(args.out) else []

    def record(entry):
        entry.update(eval_images=len(x), calib_size=len(calib), seed=args.seed, model=args.model)
        results.append(entry)
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)
        print(json.dumps(entry), flush=True)

    fp_pred = None
    for row in args.rows:
        t0 = time.time()
        if row == "fp":
            t1, t5, fp_pred = evaluate(create_model(args.model, args.weights), x, y)
            record({"row": "fp", "top1": t1, "top5": t5, "seconds": round(time.time() - t0)})
            continue
        method, bits, over = ROWS[row]
        over = dict(over)
        if args.amo_iters is not None:
            over["amo_iters"] = args.amo_iters
        cfg = preset(method, bits, **over)
        qvit = calibrate_model(create_model(args.model, args.weights), calib, cfg, args.model)
        tc = time.time() - t0
        t1, t5, fpred = evaluate(qvit, x, y)
        entry = {"row": row, "method": method, "bits": bits, "overrides": over, "config": cfg.to_dict(),
                 "top1": t1, "top5": t5,
                 "calib_seconds": round(tc),
                 "outlier_ratio": {n: r["outlier_ratio"] for n, r in qvit.outlier_report().items()}}
        # the same model on the integer grid of its program (golden/integer_grid.py)
        from vitaccel.golden.program import export_program  # noqa: PLC0415

        prog = export_program(qvit)
        qvit.use_integer_grid(prog)
        g1, g5, pred = evaluate(qvit, x, y)
        qvit.use_float_fakequant()
        entry.update(grid_top1=g1, grid_top5=g5, seconds=round(time.time() - t0))
        record(entry)
        if row == args.sim_row and args.sim_images:
            from vitaccel.golden.int_eval import ProgramRunner  # noqa: PLC0415

            runner = ProgramRunner(prog)
            from tqdm.auto import tqdm  # noqa: PLC0415

            n = min(args.sim_images, len(x))
            ts = time.time()
            logits = torch.stack([runner.run_image(img) for img in tqdm(x[:n], desc="int-sim")])
            sim = logits.argmax(-1)
            qvit.use_integer_grid(prog)
            with torch.no_grad():
                same = sum(bool(torch.equal(a, b)) for a, b in zip(logits, torch.cat(
                    [qvit(x[i:i + 50]) for i in range(0, n, 50)])[:n]))
            qvit.use_float_fakequant()
            record({"row": row + " int-sim", "sim_images": n, "sim_top1": 100 * (sim == y[:n]).float().mean().item(),
                    "sim_agreement": 100 * (sim == pred[:n]).float().mean().item(),
                    "sim_agreement_float": 100 * (sim == fpred[:n]).float().mean().item(),
                    "sim_bit_identical": same,
                    "fq_top1_same_images": 100 * (pred[:n] == y[:n]).float().mean().item(),
                    "sim_seconds": round(time.time() - ts),
                    "sim_backend": runner.run_layer.__module__ + "." + runner.run_layer.__name__})


if __name__ == "__main__":
    main()
