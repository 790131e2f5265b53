"""Parity of ``vitaccel estimate --dataflow os|ws|is`` with the real SCALE-Sim 3.0.0.

Usage::

    .venv/bin/python benchmarks/scalesim_parity.py [--arrays 8x8 16x16 32x32 32x16] [--dataflows os ws is]
        [--models deit_small_patch16_224 vit_base_patch16_224 swin_tiny_patch4_window7_224]
        [--max-cycles 60000] [--json build/scalesim_parity.json] [--record tests/data/scalesim_parity.json]

1. SCALE-Sim: ``--scalesim-python PY`` if given, else ``build/scalesim-venv`` (``$VITACCEL_BUILD_DIR``
   instead of ``build``), created on first use with ``pip install scalesim==3.0.0 "numpy<2"``.
   SCALE-Sim is not a vitaccel dependency; it gets its own environment because 3.0.0 stops with
   ``TypeError: only 0-dimensional arrays can be converted to Python scalars`` under the project's
   numpy 2.4 (``int(max(...))`` over 1-element arrays in its memory model) and runs under numpy 1.26.
2. Workload: the distinct GEMM shapes of each model (``vitaccel.sim.perf.shapes.trace_gemms``: patch
   embedding, q/k/v, per-head ``q @ k^T`` and ``attn @ v``, proj, fc1, fc2, Swin patch merging, head),
   one SCALE-Sim layer per shape (identical shapes give identical reports; per-head products are one
   instance). SCALE-Sim builds a Python demand trace of one row per cycle and runs its memory model
   over it (about 4 000 rows/s here), so a shape runs on an array / dataflow only when its predicted
   cycle count is at most ``--max-cycles`` (default 60 000: all per-head attention products, the
   classifier heads and the smaller linear layers on the 32 x 32 and 32 x 16 arrays), and the shapes of
   ``--always`` on every array (default the DeiT-S q/k/v/proj shape 197 x 384 x 384, up to 504 k cycles
   on 8 x 8); the printout lists what ran and what was skipped. Plus a 4 x 4 array with two small
   hand-checkable shapes. 100 layer runs, 809 s on the shared 2-core machine.
3. Comparison per layer: SCALE-Sim's "Total Cycles" (and its "Stall Cycles", which must be 0),
   "Overall Util", "Mapping Efficiency", "Compute Util" and "SRAM IFMAP Reads" / "SRAM Filter Reads" /
   "SRAM OFMAP Writes" against ``sim.perf.estimate.estimate_layer`` with ``Hardware(dataflow=...)``
   (compute cycles, breakdown, ``traffic.extra['scalesim_report_counts']``), and the ISPASS 2020
   closed form the estimator used before (``scalesim.paper_cycles``) for reference.

Prints a Markdown table (docs/performance.md) and exits 1 if any cycle count or SRAM count differs.
``--record F`` writes SCALE-Sim's reports of the small shapes (per-head attention products, the
DeiT-S q/k/v/proj shape, the 4 x 4 hand shapes) as test data for tests/test_scalesim_parity.py.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DRIVER = Path(__file__).resolve().parent / "scalesim_driver.py"
MODELS = ("deit_small_patch16_224", "vit_base_patch16_224", "swin_tiny_patch4_window7_224")
#: Hand-checkable shapes on a 4 x 4 array (docs/estimator.md and tests/test_estimate.py use the first).
HAND_LAYERS = (("hand_6x5x3", 6, 5, 3), ("odd_20x30x13", 20, 30, 13))
#: Shapes whose SCALE-Sim reports --record keeps (all per-head products of DeiT/ViT and Swin, one linear).
RECORD_SHAPES = {(197, 64, 197), (197, 197, 64), (49, 32, 49), (49, 49, 32), (197, 384, 384), (6, 5, 3),
                 (20, 30, 13)}
SCALESIM_PIN = ("scalesim==3.0.0", "numpy<2")


def dims(count: int, what: str):
    """argparse type: ``AxB`` (``count`` positive integers joined by ``x``) as a tuple."""
    form = "x".join("RC" if count == 2 else "MKN")

    def parse(text: str) -> tuple[int, ...]:
        parts = text.lower().split("x")
        if len(parts) != count or not all(p.isdigit() and int(p) > 0 for p in parts):
            raise argparse.ArgumentTypeError(f"bad {what} {text!r}: expected {form} with positive integers, "
                                             f"e.g. {'x'.join(['16'] * count)}")
        return tuple(int(p) for p in parts)
    return parse


def check_models(ap: argparse.ArgumentParser, models) -> None:
    """Stop with an argument error naming every model that is not a timm model (before anything runs)."""
    import timm

    from vitaccel.sim.perf.shapes import suggest_models

    known = set(timm.list_models())
    for m in models:
        if m not in known:
            close = suggest_models(m)
            ap.error(f"--models: {m!r} is not a timm model" + (f" (did you mean {', '.join(close)}?)" if close else ""))


def ensure_scalesim(python: str | None) -> str:
    """Interpreter with SCALE-Sim 3.0.0 (create ``build/scalesim-venv`` on first use)."""
    if python:
        return python
    venv = Path(os.environ.get("VITACCEL_BUILD_DIR", "build")) / "scalesim-venv"
    py = venv / "bin" / "python"
    check = "import scalesim.scale_sim, importlib.metadata as m; assert m.version('scalesim') == '3.0.0'"
    if py.exists() and subprocess.run([str(py), "-c", check], capture_output=True).returncode == 0:
        return str(py)
    print(f"installing SCALE-Sim into {venv}: pip install {' '.join(SCALESIM_PIN)}", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(py), "-m", "pip", "install", "-q", *SCALESIM_PIN], check=True)
    subprocess.run([str(py), "-c", check], check=True)
    return str(py)


def model_shapes(models) -> dict:
    """``{(M, K, N): [(model, kind, first layer name, layers of that kind), ...]}`` over ``models``."""
    from vitaccel.sim.perf.shapes import trace_gemms

    shapes: dict = {}
    for m in models:
        seen: dict = {}
        for g in trace_gemms(m, 1, "w8a8"):
            key = ((g.M, g.K, g.N), g.kind)
            if key in seen:
                seen[key][3] += 1
            else:
                seen[key] = [m, g.kind, g.name, 1]
        for (shape, _), v in seen.items():
            shapes.setdefault(shape, []).append(tuple(v))
    return shapes


def run_scalesim(python: str, rows: int, cols: int, dataflow: str, layers) -> dict:
    job = dict(rows=rows, cols=cols, dataflow=dataflow, layers=[list(l) for l in layers],
               ifmap_kb=8192, filter_kb=8192, ofmap_kb=8192)
    p = subprocess.run([python, str(DRIVER)], input=json.dumps(job), capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"SCALE-Sim failed on {rows}x{cols} {dataflow}:\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def compare(rec: dict, rows: int, cols: int, dataflow: str) -> dict:
    """vitaccel's estimate of one SCALE-Sim layer record, and the differences."""
    from vitaccel.sim.perf.estimate import Hardware, estimate_layer
    from vitaccel.sim.perf.scalesim import paper_cycles
    from vitaccel.sim.perf.shapes import Gemm

    M, K, N = rec["M"], rec["K"], rec["N"]
    hw = Hardware(rows=rows, cols=cols, dataflow=dataflow, dram_bw=1e12, sram_kib=float(1 << 20))
    l = estimate_layer(Gemm(rec["name"], "linear", "linear", M, K, N), hw)
    counts = l.traffic.extra["scalesim_report_counts"]
    ss_compute = rec["total_cycles"] - rec["stall_cycles"]
    util = M * K * N / (rows * cols * l.compute)

    def close(a, b):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)

    paper = paper_cycles(dataflow, rows, cols, M, K, N)
    return dict(
        vitaccel_cycles=l.compute, scalesim_cycles=ss_compute, cycles_equal=l.compute == ss_compute,
        stall_cycles=rec["stall_cycles"],
        util_equal=close(util, rec["overall_util_pct"] / 100),
        mapping_equal=close(l.breakdown["mapping_efficiency"], rec["mapping_efficiency_pct"] / 100),
        compute_util_equal=close(l.breakdown["compute_utilisation"], rec["compute_util_pct"] / 100),
        sram_equal=(counts["ifmap"], counts["filter"], counts["ofmap"])
        == (rec["sram_ifmap_reads"], rec["sram_filter_reads"], rec["sram_ofmap_writes"]),
        vitaccel_sram=counts, paper_cycles=paper, paper_error_pct=100 * (paper - ss_compute) / ss_compute)


def plan(shapes: dict, arrays, dataflows, max_cycles: int, always=()):
    """``[(rows, cols, df, [(name, M, K, N)], skipped)]``: the shapes at most ``max_cycles`` (or in ``always``)."""
    from vitaccel.sim.perf.scalesim import scalesim_cycles

    jobs = []
    for r, c in arrays:
        for df in dataflows:
            run, skip = [], []
            for (M, K, N), users in shapes.items():
                name = f"{users[0][1]}_{M}x{K}x{N}"
                small = scalesim_cycles(df, r, c, M, K, N).total <= max_cycles
                (run if small or (M, K, N) in always else skip).append((name, M, K, N))
            jobs.append((r, c, df, run, skip))
    return jobs


def _kind(name: str) -> str:
    return "attention" if name.split("_")[0] in ("qk", "av") else "hand" if name.startswith(("hand", "odd")) \
        else "linear"


def table(results: list[dict]) -> str:
    """Markdown: one row per array x dataflow."""
    head = ("| array | dataflow | layers run (linear + attention + hand) | cycles equal | stall | util, mapping eff, "
            "compute util equal | SRAM reads / writes equal | ISPASS 2020 form: error linear | error attention |")
    lines = [head, "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for res in results:
        L = res["layers"]
        n = len(L)
        by = {k: [l for l in L if _kind(l["name"]) == k] for k in ("linear", "attention", "hand")}

        def err(ls):
            if not ls:
                return "-"
            if all(l["paper_cycles"] - l["scalesim_cycles"] == 1 for l in ls):
                return "+1 cycle"
            lo, hi = (f"+{f(l['paper_error_pct'] for l in ls):.1f}" for f in (min, max))
            return f"{lo} %" if lo == hi else f"{lo} .. {hi} %"

        lines.append(
            f"| {res['rows']}x{res['cols']} | {res['dataflow']} | {n} ({len(by['linear'])} + {len(by['attention'])}"
            f" + {len(by['hand'])}) | {sum(l['cycles_equal'] for l in L)}/{n} | {max(l['stall_cycles'] for l in L)} | "
            f"{sum(l['util_equal'] and l['mapping_equal'] and l['compute_util_equal'] for l in L)}/{n} | "
            f"{sum(l['sram_equal'] for l in L)}/{n} | {err(by['linear'])} | {err(by['attention'])} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=list(MODELS))
    ap.add_argument("--arrays", nargs="+", type=dims(2, "array"), default=[(8, 8), (16, 16), (32, 32), (32, 16)],
                    help="RxC arrays (default 8x8 16x16 32x32 32x16)")
    ap.add_argument("--dataflows", nargs="+", default=["os", "ws", "is"], choices=("os", "ws", "is"))
    ap.add_argument("--max-cycles", type=int, default=60000,
                    help="run a shape on an array/dataflow only if its predicted cycles are at most this")
    ap.add_argument("--always", nargs="*", type=dims(3, "shape"), default=[(197, 384, 384)],
                    help="MxKxN shapes run on every array whatever --max-cycles (default: DeiT-S q/k/v/proj)")
    ap.add_argument("--scalesim-python", help="interpreter with scalesim 3.0.0 (default: build/scalesim-venv)")
    ap.add_argument("--json", type=Path, default=Path("build/scalesim_parity.json"), help="all records")
    ap.add_argument("--record", type=Path, help="write the small shapes' SCALE-Sim reports as test data")
    ap.add_argument("--table-from", type=Path, metavar="JSON", help="only print the table of an earlier --json")
    args = ap.parse_args(argv)
    if args.max_cycles < 1:
        ap.error(f"--max-cycles must be >= 1, got {args.max_cycles}")
    if args.table_from:
        try:
            doc = json.loads(args.table_from.read_text())
            text = f"{doc['command']}\n\n{table(doc['results'])}"
        except (OSError, ValueError, KeyError, TypeError) as e:
            ap.error(f"--table-from {args.table_from}: not a JSON written by --json ({type(e).__name__}: {e})")
        print(text)
        return 0
    check_models(ap, args.models)
    arrays = args.arrays
    py = ensure_scalesim(args.scalesim_python)
    shapes = model_shapes(args.models)
    jobs = [(4, 4, df, list(HAND_LAYERS), []) for df in args.dataflows]
    always = set(args.always)
    jobs += plan(shapes, arrays, args.dataflows, args.max_cycles, always)
    results, t_all = [], time.perf_counter()
    for r, c, df, run, skip in jobs:
        if not run:
            continue
        out = run_scalesim(py, r, c, df, run)
        for rec in out["layers"]:
            rec.update(compare(rec, r, c, df))
        out["skipped"] = [s[0] for s in skip]
        results.append(out)
        bad = [l["name"] for l in out["layers"] if not (l["cycles_equal"] and l["sram_equal"])]
        print(f"{r}x{c} {df}: {len(run)} layers in {out['seconds']:.1f} s, skipped {len(skip)}"
              + (f"; DIFFER: {bad}" if bad else ""), file=sys.stderr, flush=True)
    wall = time.perf_counter() - t_all
    print(f"SCALE-Sim {results[0]['scalesim_version']} (numpy {results[0]['numpy_version']}), "
          f"{sum(len(r['layers']) for r in results)} layer runs, {wall:.0f} s\n")
    print(table(results))
    print("\nshapes (M x K x N) and where they come from; arrays/dataflows run:")
    for (M, K, N), users in shapes.items():
        ran = [f"{r['rows']}x{r['cols']} {r['dataflow']}" for r in results
               if any((l["M"], l["K"], l["N"]) == (M, K, N) for l in r["layers"])]
        who = ", ".join(f"{m.split('_')[0]} {k} x{n}" for m, k, _, n in users)
        print(f"  {M}x{K}x{N} ({who}): {', '.join(ran) if ran else 'not run (above --max-cycles)'}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(dict(command=" ".join(sys.argv), max_cycles=args.max_cycles, results=results),
                                    indent=1))
    print(f"\nwrote {args.json}")
    if args.record:
        keep = ("name", "M", "K", "N", "total_cycles", "stall_cycles", "overall_util_pct", "mapping_efficiency_pct",
                "compute_util_pct", "sram_ifmap_reads", "sram_filter_reads", "sram_ofmap_writes")
        recs = [dict(rows=r["rows"], cols=r["cols"], dataflow=r["dataflow"], **{k: l[k] for k in keep})
                for r in results for l in r["layers"] if (l["M"], l["K"], l["N"]) in RECORD_SHAPES]
        doc = dict(source=f"SCALE-Sim {results[0]['scalesim_version']} (pip install scalesim==3.0.0, numpy "
                          f"{results[0]['numpy_version']}), InterfaceBandwidth CALC, 8192 kB SRAMs",
                   command="benchmarks/scalesim_parity.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                   records=recs)
        args.record.parent.mkdir(parents=True, exist_ok=True)
        args.record.write_text(json.dumps(doc, indent=1) + "\n")
        print(f"wrote {args.record} ({len(recs)} records)")
    ok = all(l["cycles_equal"] and l["sram_equal"] and l["stall_cycles"] == 0 for r in results for l in r["layers"])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
