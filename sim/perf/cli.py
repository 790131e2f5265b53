"""``vitaccel estimate``: per-layer cycles and memory traffic of a whole model on a configurable engine."""
from __future__ import annotations

import argparse
import sys

EXAMPLES = """examples:
  vitaccel estimate --model deit_small_patch16_224 --rows 16 --cols 16 --bits w4a4 --freq 200e6 \\
      --dram-bw 16 --sram-kib 256
  vitaccel estimate --model swin_tiny_patch4_window7_224 --bits w8a8 --dataflow ws --csv swin.csv
  vitaccel estimate --program out/program.json --rows 32 --cols 32 --plot est.png --json est.json
"""


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None


def add_subcommands(subparsers) -> None:
    """Register ``estimate``."""
    p = subparsers.add_parser(
        "estimate", help="per-layer cycles and memory traffic of a model on the accelerator",
        description="Estimate per-layer cycles (engine: sim.schedule; or SCALE-Sim os/ws/is), DRAM/SRAM "
        "traffic, stalls, latency and utilisation of a timm ViT/DeiT/Swin or an exported integer program. "
        "Model in docs/estimator.md.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_argument_group("workload")
    src.add_argument("--model", help="timm model name (shapes traced without weights)")
    src.add_argument("--program", metavar="FILE", help="exported integer program manifest (golden/program.py): "
                     "uses its per-layer shapes, bit widths and measured outliers per tile")
    src.add_argument("--bits", default="w8a8", help="wXaY code widths for --model (4, 6, 8; default w8a8)")
    src.add_argument("--edge-bits", default="8", choices=("4", "6", "8", "same"),
                     help="bits of patch embedding and head for --model (default 8; 'same' = --bits)")
    src.add_argument("--batch", type=int, default=1, help="images per inference (default 1)")
    src.add_argument("--img-size", type=int, default=None, help="override the model's input resolution")
    src.add_argument("--outliers-per-tile", type=int, default=0,
                     help="assumed outliers per row tile on q/k/v/fc1 inputs for --model (default 0)")
    hw = p.add_argument_group("hardware")
    hw.add_argument("--rows", type=int, default=16, help="MAC array rows (default 16)")
    hw.add_argument("--cols", type=int, default=16, help="MAC array columns (default 16)")
    hw.add_argument("--freq", type=_float, default=None,
                    help="clock in Hz (default: the measured Fmax of the configuration in sim/perf/synth_table.json, "
                    "else 200 MHz, stated as assumed)")
    hw.add_argument("--dram-bw", type=_float, default=16.0, help="DRAM bandwidth, bytes/cycle (default 16)")
    hw.add_argument("--sram-kib", type=_float, default=256.0, help="on-chip buffer, KiB (default 256)")
    hw.add_argument("--dataflow", default="engine", choices=("engine", "os", "ws", "is"),
                    help="engine = exact vitaccel engine (sim.schedule); os/ws/is = SCALE-Sim closed form")
    hw.add_argument("--acc-bits", type=int, default=None, help="accumulator width (EngineConfig default)")
    hw.add_argument("--outlier-capacity", type=int, default=None,
                    help="outliers per tile the engine holds (EngineConfig default)")
    hw.add_argument("--outlier-lanes", type=int, default=None, help="outlier unit lanes (EngineConfig default)")
    hw.add_argument("--max-k", type=int, default=None,
                    help="depth of each engine B bank (default: the largest K of the workload)")
    # --- synthesis data (sim/perf/resources.py): device for the fits / does-not-fit check -------------
    hw.add_argument("--device", default=None, help="FPGA for the resource check (default LFE5U-85F; "
                    "LFE5U-25F, LFE5U-45F, LFE5U-85F)")
    # ---------------------------------------------------------------------------------------------------
    out = p.add_argument_group("output")
    out.add_argument("--csv", metavar="F", help="write per-layer CSV")
    out.add_argument("--json", metavar="F", help="write summary + per-layer JSON")
    out.add_argument("--plot", metavar="PNG", help="write stacked cycle/traffic bars and a roofline")
    out.add_argument("--max-rows", type=int, default=None, help="print at most this many layer lines")
    out.add_argument("--quiet", action="store_true", help="print only the totals")
    p.set_defaults(func=run_estimate)


def build_estimate(args):
    """Turn parsed arguments into a :class:`sim.perf.estimate.ModelEstimate` (raises ``UserError``)."""
    from vitaccel.sim.errors import UserError

    from .estimate import Hardware, estimate
    from .shapes import UnknownModelError, parse_bits, suggest_models, trace_gemms, with_outliers
    from .traffic import SramTooSmall

    if (args.model is None) == (args.program is None):
        raise UserError("give exactly one of --model NAME or --program FILE")
    if args.batch < 1:
        raise UserError(f"--batch must be >= 1, got {args.batch}")
    if args.outliers_per_tile < 0:
        raise UserError(f"--outliers-per-tile must be >= 0, got {args.outliers_per_tile}")
    hw = Hardware(rows=args.rows, cols=args.cols, freq=args.freq if args.freq is not None else 200e6,
                  dram_bw=args.dram_bw, sram_kib=args.sram_kib,
                  dataflow=args.dataflow, acc_bits=args.acc_bits, outlier_capacity=args.outlier_capacity,
                  outlier_lanes=args.outlier_lanes, max_k=args.max_k)
    try:
        hw.validate()
    except ValueError as exc:
        raise UserError(str(exc)) from None
    notes = []
    if args.program:
        from .program import ProgramError, load_program_gemms

        try:
            gemms, meta = load_program_gemms(args.program, batch=args.batch)
        except ProgramError as exc:
            raise UserError(str(exc)) from None
        name, bits, source = meta.get("model", args.program), meta.get("bits", "program"), "program"
        notes += meta.get("notes", [])
    else:
        try:
            parse_bits(args.bits)
        except ValueError as exc:
            raise UserError(str(exc)) from None
        edge = None if args.edge_bits == "same" else int(args.edge_bits)
        try:
            gemms = trace_gemms(args.model, args.batch, args.bits, edge_bits=edge, img_size=args.img_size)
        except UnknownModelError:
            close = suggest_models(args.model)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise UserError(f"unknown timm model {args.model!r}{hint}") from None
        gemms = with_outliers(gemms, args.outliers_per_tile)
        name, bits, source = args.model, args.bits.lower(), "timm"
        if edge is not None:
            notes.append(f"patch embedding and head at {edge} bits (--edge-bits)")
    try:
        est = estimate(gemms, hw, model=name, batch=args.batch, bits=bits, source=source,
                       progress=len(gemms) > 400 and sys.stderr.isatty())
    except SramTooSmall as exc:
        raise UserError(f"SRAM too small for the minimum tile: {exc}") from None
    except ValueError as exc:  # sim.engine_config.ConfigError is a ValueError
        raise UserError(str(exc)) from None
    est.notes.extend(notes)
    # --- clock and resources from synthesis (sim/perf/resources.py, docs/estimator.md) ---------------
    from .estimate import with_synthesis
    from .resources import DEFAULT_DEVICE, load_table

    device = getattr(args, "device", None) or DEFAULT_DEVICE
    if device not in load_table().devices:
        raise UserError(f"unknown --device {device!r}; known: {', '.join(sorted(load_table().devices))}")
    with_synthesis(est, freq_mhz=None if args.freq is None else args.freq / 1e6, device=device)
    # ---------------------------------------------------------------------------------------------------
    return est


def run_estimate(args) -> int:
    from . import report

    est = build_estimate(args)
    if args.quiet:
        print(report.summary_text(est))
    else:
        print(report.table(est, max_rows=args.max_rows))
    for path, text in ((args.csv, report.to_csv), (args.json, report.to_json)):
        if path:
            with open(path, "w", encoding="utf-8") as f:
                f.write(text(est))
            print(f"wrote {path}")
    if args.plot:
        report.plot(est, args.plot)
        print(f"wrote {args.plot}")
    return 0
