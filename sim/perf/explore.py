"""``vitaccel explore``: sweep engine configurations for one model or program; latency, resources, Pareto front.

For every point of ``rows x cols x bits x requant_share x SRAM x DRAM bandwidth x batch`` the estimator
(:func:`sim.perf.estimate.estimate`, engine dataflow: the exact cycle model of sim/schedule.py) gives
cycles, MAC utilisation and DRAM traffic; :func:`sim.perf.estimate.with_synthesis` gives the clock
(measured Fmax of the configuration, else the nearest measured configuration's, marked *modelled*;
``--freq`` MHz overrides), the resources (measured or fitted model, marked) and whether they fit the
device. The Pareto front minimises latency and logic (``TRELLIS_COMB``) over the estimable points.
Model and assumptions: docs/estimator.md ("Clock and resources", "Design-space exploration").
"""
from __future__ import annotations

import argparse
import csv
import io
import itertools
import json
import math
import sys
import time
from dataclasses import dataclass, field

EXAMPLES = """examples:
  vitaccel explore --model deit_small_patch16_224 --csv deit_s.csv --json deit_s.json --plot deit_s.png
  vitaccel explore --model deit_small_patch16_224 --rows 4..64 --cols 4..64 --bits w4a4 w8a8 --sram-kib 256 512
  vitaccel explore --program out/program --rows 8 16 --cols 8..32 --dram-bw 8 16 32 --batch 1 4
sizes: a list (8 16 32), a range of powers of two (4..64) or a stepped range (8..32:8)
"""

#: Columns of the CSV (and keys of each JSON point), in order.
COLUMNS = ("rows", "cols", "bits", "requant_share", "sram_kib", "dram_bw", "batch", "feasible", "reason", "a_bits", "b_bits",
           "cycles", "compute_cycles", "stall_cycles", "fmax_mhz", "clock_source", "latency_ms",
           "inferences_per_s", "utilisation", "dram_bytes", "LUT4", "CCU2C", "TRELLIS_COMB", "FF", "DSP",
           "BRAM_engine", "BRAM_total", "resource_source", "device", "fits", "limiting_resource",
           "inferences_per_s_per_klut", "pareto")


def parse_sizes(tokens: list[str], what: str) -> list[int]:
    """``["8", "16"]``, ``["4..64"]`` (powers of two) or ``["8..32:8"]`` (step) -> sorted unique ints."""
    from vitaccel.sim.errors import UserError

    out: set[int] = set()
    for tok in tokens:
        for part in str(tok).split(","):
            part = part.strip()
            if not part:
                continue
            try:
                if ".." in part:
                    lo_s, hi_s = part.split("..", 1)
                    step = None
                    if ":" in hi_s:
                        hi_s, st = hi_s.split(":", 1)
                        step = int(st)
                    lo, hi = int(lo_s), int(hi_s)
                    if step is not None:
                        if step < 1:
                            raise ValueError
                        out.update(range(lo, hi + 1, step))
                    else:
                        v = 1
                        while v <= hi:
                            if v >= lo:
                                out.add(v)
                            v *= 2
                else:
                    out.add(int(part))
            except ValueError:
                raise UserError(f"--{what}: cannot read {part!r}; give sizes (8 16 32), a power-of-two range "
                                "(4..64) or a stepped range (8..32:8)") from None
    if any(v < 1 for v in out):
        raise UserError(f"--{what}: sizes must be positive, got {sorted(out)}")
    return sorted(out)


def add_subcommands(subparsers) -> None:
    """Register ``explore``."""
    p = subparsers.add_parser(
        "explore", help="sweep array size, bit width, SRAM, bandwidth and batch: latency, resources, Pareto front",
        description="Design-space exploration of the layer engine for one timm model or exported program: "
        "per configuration the cycles (exact engine model), clock (measured Fmax, else modelled from the nearest "
        "synthesized configuration; --freq overrides), latency, inferences/s, MAC utilisation, DRAM traffic, "
        "FPGA resources (measured or modelled) and whether they fit the device; CSV, JSON and a Pareto plot. "
        "Model in docs/estimator.md.", epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    w = p.add_argument_group("workload")
    w.add_argument("--model", help="timm model name (shapes traced without weights)")
    w.add_argument("--program", metavar="PATH", help="exported integer program (its per-layer widths are used)")
    w.add_argument("--edge-bits", default="same", choices=("4", "6", "8", "same"),
                   help="patch embedding / head bits for --model (default same: the engine is built for the swept "
                   "width; 8 makes every point an 8-bit build)")
    w.add_argument("--outliers-per-tile", type=int, default=0, help="assumed outliers per row tile (--model)")
    s = p.add_argument_group("sweep (every combination is one point)")
    s.add_argument("--rows", nargs="+", default=["4..64"], help="array rows (default 4..64: 4 8 16 32 64)")
    s.add_argument("--cols", nargs="+", default=["4..64"], help="array columns (default 4..64)")
    s.add_argument("--square", action="store_true", help="only rows == cols")
    s.add_argument("--bits", nargs="+", default=None, help="wXaY settings for --model (default w4a4 w6a6 w8a8)")
    s.add_argument("--requant-share", nargs="+", type=int, default=[1], metavar="S",
                   help="columns per requantiser (1 2 4 ...: powers of two dividing --cols; default 1). Shared builds "
                   "drain S cycles a row and save the other columns' requantisers (resources: docs/estimator.md)")
    s.add_argument("--sram-kib", nargs="+", type=float, default=[256.0], help="on-chip buffer KiB (default 256)")
    s.add_argument("--dram-bw", nargs="+", type=float, default=[16.0], help="DRAM bytes/cycle (default 16)")
    s.add_argument("--batch-size", "--batch", dest="batch", nargs="+", type=int, default=[1],
                   help="images per inference (default 1)")
    h = p.add_argument_group("hardware")
    h.add_argument("--freq", type=float, default=None,
                   help="clock in MHz for every point (default: measured Fmax, else modelled from the nearest "
                   "synthesized configuration)")
    h.add_argument("--device", default=None, help="FPGA for the fit check (default LFE5U-85F)")
    h.add_argument("--max-k", type=int, default=None, help="B bank depth (default: the largest K of the workload)")
    o = p.add_argument_group("output")
    o.add_argument("--csv", metavar="F", help="write one CSV line per point")
    o.add_argument("--json", metavar="F", help="write the sweep, every point and the Pareto front as JSON")
    o.add_argument("--plot", metavar="PNG", help="Pareto plot: latency vs logic, inferences/s per kLUT")
    o.add_argument("--all", action="store_true", help="print every point, not only the Pareto front")
    p.set_defaults(func=run_explore)


@dataclass
class Point:
    """One configuration of the sweep and its figures (``row`` holds the :data:`COLUMNS`)."""

    rows: int
    cols: int
    bits: str
    sram_kib: float
    dram_bw: float
    batch: int
    requant_share: int = 1
    row: dict = field(default_factory=dict)

    @property
    def feasible(self) -> bool:
        return bool(self.row.get("feasible"))


def _workloads(args, bits_list, batches):
    """``{(bits, batch): (gemms, name)}`` (raises ``UserError``)."""
    from vitaccel.sim.errors import UserError

    from .shapes import UnknownModelError, parse_bits, suggest_models, trace_gemms, with_outliers

    out = {}
    for bits, batch in itertools.product(bits_list, batches):
        if batch < 1:
            raise UserError(f"--batch must be >= 1, got {batch}")
        if args.program:
            from .program import ProgramError, load_program_gemms
            try:
                gemms, meta = load_program_gemms(args.program, batch=batch)
            except ProgramError as exc:
                raise UserError(str(exc)) from None
            out[(bits, batch)] = (gemms, meta.get("model", args.program))
            continue
        try:
            parse_bits(bits)
        except ValueError as exc:
            raise UserError(str(exc)) from None
        edge = None if args.edge_bits == "same" else int(args.edge_bits)
        try:
            gemms = trace_gemms(args.model, batch, bits, edge_bits=edge)
        except UnknownModelError:
            close = suggest_models(args.model)
            raise UserError(f"unknown timm model {args.model!r}"
                            + (f"; did you mean {', '.join(close)}?" if close else "")) from None
        out[(bits, batch)] = (with_outliers(gemms, args.outliers_per_tile), args.model)
    return out


def evaluate(gemms, name: str, pt: Point, *, freq_mhz=None, device=None, max_k=None) -> Point:
    """Estimate one point and fill ``pt.row`` (infeasible points get ``feasible = False`` and a reason)."""
    from .estimate import Hardware, estimate, with_synthesis
    from .traffic import SramTooSmall

    row = dict(rows=pt.rows, cols=pt.cols, bits=pt.bits, requant_share=pt.requant_share, sram_kib=pt.sram_kib,
               dram_bw=pt.dram_bw, batch=pt.batch)
    hw = Hardware(rows=pt.rows, cols=pt.cols, freq=1e6, dram_bw=pt.dram_bw, sram_kib=pt.sram_kib, max_k=max_k,
                  requant_share=pt.requant_share)
    try:
        hw.validate()
        est = estimate(gemms, hw, model=name, batch=pt.batch, bits=pt.bits)
    except SramTooSmall as exc:
        row.update(feasible=False, reason=f"SRAM too small: {exc}")
    except ValueError as exc:  # ConfigError (array above 64, K above max_k, ...) and bad values
        row.update(feasible=False, reason=str(exc))
    else:
        with_synthesis(est, freq_mhz=freq_mhz, device=device, allow_model_clock=True)
        s, r, f = est.summary(), est.resources, est.device_fit
        comb = r.values.get("TRELLIS_COMB")
        row.update(
            feasible=True, reason="", a_bits=est.engine_config["a_bits"], b_bits=est.engine_config["b_bits"],
            cycles=s["cycles"], compute_cycles=s["compute_cycles"], stall_cycles=s["stall_cycles"],
            fmax_mhz=est.clock.mhz, clock_source=est.clock.source, latency_ms=s["latency_ms"],
            inferences_per_s=s["inferences_per_s"], utilisation=s["utilisation"], dram_bytes=s["dram_bytes"],
            **{k: r.values.get(k) for k in ("LUT4", "CCU2C", "TRELLIS_COMB", "FF", "DSP")},
            BRAM_engine=r.values.get("BRAM"), BRAM_total=f.use.get("BRAM", (None,))[0],
            resource_source=r.source, device=f.device, fits=f.fits, limiting_resource=f.limiting,
            inferences_per_s_per_klut=(1e3 * s["inferences_per_s"] / comb) if comb else None)
    row.setdefault("pareto", False)
    pt.row = row
    return pt


def mark_pareto(points: list[Point]) -> list[Point]:
    """Set ``pareto`` on the feasible points that no other point dominates (at most the latency and at most
    the TRELLIS_COMB of the point, lower in one); points tied with a front point in both are on it too."""
    cand = sorted((p for p in points if p.feasible and p.row["TRELLIS_COMB"] is not None),
                  key=lambda p: (p.row["TRELLIS_COMB"], p.row["latency_ms"]))
    front, best, last = [], math.inf, None
    for p in cand:
        key = (p.row["TRELLIS_COMB"], p.row["latency_ms"])
        if p.row["latency_ms"] < best or key == last:
            best, last = p.row["latency_ms"], key
            p.row["pareto"] = True
            front.append(p)
    return front


def sweep(args) -> tuple[list[Point], dict]:
    """Evaluate every point of the sweep (raises ``UserError`` for an empty or impossible sweep)."""
    from vitaccel.sim.errors import UserError

    from .resources import DEFAULT_DEVICE, load_table

    if (args.model is None) == (args.program is None):
        raise UserError("give exactly one of --model NAME or --program DIR")
    if args.program and args.bits:
        raise UserError("--bits does not apply to --program: the program's per-layer widths are used")
    device = args.device or DEFAULT_DEVICE
    if device not in load_table().devices:
        raise UserError(f"unknown --device {device!r}; known: {', '.join(sorted(load_table().devices))}")
    if args.freq is not None and not (args.freq > 0 and math.isfinite(args.freq)):
        raise UserError(f"--freq must be a positive clock in MHz, got {args.freq}")
    rows, cols = parse_sizes(args.rows, "rows"), parse_sizes(args.cols, "cols")
    bits_list = ["program"] if args.program else [b.lower() for b in (args.bits or ["w4a4", "w6a6", "w8a8"])]
    grid = [(r, c) for r in rows for c in cols if not args.square or r == c]
    shares = sorted(set(args.requant_share))
    if any(v < 1 or v & (v - 1) for v in shares):
        raise UserError(f"--requant-share: give powers of two (1 2 4 ...), got {shares}")
    combos = list(itertools.product(grid, bits_list, args.sram_kib, args.dram_bw, args.batch, shares))
    if not combos:
        raise UserError("empty sweep: no (rows, cols) combination"
                        + (" with rows == cols (--square)" if args.square else "") + "; check --rows / --cols")
    work = _workloads(args, bits_list, sorted(set(args.batch)))
    it = combos
    if len(combos) > 20 and sys.stderr.isatty():
        from tqdm import tqdm
        it = tqdm(combos, desc="explore", unit="config", leave=False)
    points = []
    for (r, c), bits, sram, bw, batch, share in it:
        gemms, name = work[(bits, batch)]
        points.append(evaluate(gemms, name, Point(r, c, bits, sram, bw, batch, share), freq_mhz=args.freq,
                               device=device, max_k=args.max_k))
    if not any(p.feasible for p in points):
        reasons = sorted({p.row["reason"].split(":")[0] if p.row["reason"].startswith("SRAM") else p.row["reason"]
                          for p in points})
        raise UserError(f"impossible sweep: none of the {len(points)} configurations can run the workload: "
                        + "; ".join(reasons[:3]))
    mark_pareto(points)
    meta = dict(model=work[next(iter(work))][1], device=device, points=len(points),
                feasible=sum(p.feasible for p in points), fit=sum(bool(p.row.get("fits")) for p in points))
    return points, meta


def _label(p: Point, vary: set) -> str:
    s = f"{p.rows}x{p.cols} {p.bits}"
    if "requant_share" in vary:
        s += f" s{p.requant_share}"
    if "sram_kib" in vary:
        s += f" {p.sram_kib:g}K"
    if "dram_bw" in vary:
        s += f" {p.dram_bw:g}B/c"
    if "batch" in vary:
        s += f" b{p.batch}"
    return s


def _varying(points) -> set:
    return {k for k in ("requant_share", "sram_kib", "dram_bw", "batch") if len({getattr(p, k) for p in points}) > 1}


def table(points: list[Point], meta: dict, *, show_all: bool = False) -> str:
    """Terminal summary: the Pareto front (or every point) and the counts."""
    vary = _varying(points)
    shown = [p for p in points if p.feasible and (show_all or p.row["pareto"])]
    shown.sort(key=lambda p: p.row["latency_ms"])
    head = (f"{'configuration':26s} {'cycles':>12s} {'MHz':>6s} {'clock':>8s} {'ms':>9s} {'inf/s':>8s} "
            f"{'util':>6s} {'DRAM MiB':>9s} {'COMB':>8s} {'DSP':>5s} {'BRAM':>5s} {'res':>8s} {'fits':>5s} pareto")
    lines = [head, "-" * len(head)]
    for p in shown:
        r = p.row
        lines.append(f"{_label(p, vary):26s} {r['cycles']:12,d} {r['fmax_mhz']:6.1f} {r['clock_source']:>8s} "
                     f"{r['latency_ms']:9.2f} {r['inferences_per_s']:8.2f} {100 * r['utilisation']:5.1f}% "
                     f"{r['dram_bytes'] / 2**20:9.2f} {r['TRELLIS_COMB']:8,.0f} {r['DSP']:5,.0f} "
                     f"{r['BRAM_total']:5,.0f} {r['resource_source']:>8s} {'yes' if r['fits'] else 'NO':>5s} "
                     f"{'*' if r['pareto'] else ''}")
    bad = [p for p in points if not p.feasible]
    lines.append("-" * len(head))
    lines.append(f"{meta['model']}: {meta['points']} configurations, {meta['feasible']} estimable, {meta['fit']} fit "
                 f"{meta['device']} ({meta.get('seconds', 0):.2f} s); "
                 f"{'all points' if show_all else 'Pareto front (latency vs TRELLIS_COMB)'} shown")
    if bad:
        lines.append(f"  not estimable: {len(bad)}, e.g. {_label(bad[0], vary)}: {bad[0].row['reason'][:140]}")
    lines.append("  clock: measured = Fmax of that synthesized configuration; modelled = the nearest measured "
                 "configuration's Fmax; res: measured or model (sim/perf/synth_table.json, docs/estimator.md)")
    return "\n".join(lines)


def to_csv(points: list[Point]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(COLUMNS), lineterminator="\n", extrasaction="ignore")
    w.writeheader()
    for p in points:
        w.writerow({k: p.row.get(k) for k in COLUMNS})
    return buf.getvalue()


def to_json(points: list[Point], meta: dict, args) -> str:
    def clean(v):
        return None if isinstance(v, float) and not math.isfinite(v) else v
    sweep_args = {k: getattr(args, k) for k in ("model", "program", "rows", "cols", "square", "bits", "requant_share",
                                                  "sram_kib",
                                                  "dram_bw", "batch", "freq", "device", "edge_bits", "max_k")}
    doc = dict(sweep=sweep_args, summary=meta,
               points=[{k: clean(p.row.get(k)) for k in COLUMNS} for p in points],
               pareto=[{k: clean(p.row.get(k)) for k in COLUMNS} for p in points if p.row.get("pareto")])
    return json.dumps(doc, indent=1)


def run_explore(args) -> int:
    t0 = time.perf_counter()
    points, meta = sweep(args)
    meta["seconds"] = round(time.perf_counter() - t0, 3)
    print(table(points, meta, show_all=args.all))
    for path, text in ((args.csv, to_csv(points) if args.csv else ""),
                       (args.json, to_json(points, meta, args) if args.json else "")):
        if path:
            with open(path, "w", encoding="utf-8") as f:
                f.write(text)
            print(f"wrote {path}")
    if args.plot:
        from .explore_plot import plot_pareto
        plot_pareto(points, meta, args.plot)
        print(f"wrote {args.plot}")
    return 0
