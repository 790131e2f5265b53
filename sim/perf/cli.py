"""``vitaccel estimate``: per-layer cycles and memory traffic of a whole model on a configurable engine."""
from __future__ import annotations

import argparse

from vitaccel.sim.cli_args import (ENGINE_DEFAULTS, add_engine_args, add_freq_arg, add_json_arg, add_program_arg,
                                   deprecated, engine_fields_from_args, freq_mhz_from_args, parse_bits,
                                   positive_int, program_from_args)
from vitaccel.sim.errors import UserError
from vitaccel.sim.outputs import atomic_output_file, check_output_file, write_text_atomic

#: Clock assumed when ``--freq`` is not given (MHz).
DEFAULT_FREQ_MHZ = 200.0


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None


EXAMPLES = """examples:
  vitaccel estimate --model deit_small_patch16_224 --rows 16 --cols 16 --bits w4a4 --freq 200 \\
      --dram-bw 16 --sram-kib 256
  vitaccel estimate --model swin_tiny_patch4_window7_224 --bits w8a8 --dataflow ws --csv swin.csv
  vitaccel estimate --program out/program --rows 32 --cols 32 --plot est.png --json est.json
"""


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
    add_program_arg(src, required=False, help="exported integer program (directory or manifest.json, "
                    "golden/program.py): uses its per-layer shapes, bit widths and measured outliers per tile")
    src.add_argument("--edge-bits", default="8", choices=("4", "6", "8", "same"),
                     help="bits of patch embedding and head for --model (default 8; 'same' = --bits)")
    src.add_argument("--batch-size", type=int, default=1, help="images per inference (default 1)")
    src.add_argument("--batch", type=int, default=None, help=argparse.SUPPRESS)  # deprecated spelling
    src.add_argument("--img-size", type=positive_int, default=None,
                     help="override the model's input resolution (a multiple of its patch size)")
    src.add_argument("--outliers-per-tile", type=int, default=0,
                     help="assumed outliers per row tile on q/k/v/fc1 inputs for --model (default 0)")
    eng = add_engine_args(p, bits_help="wXaY code widths of the --model workload, X and Y in 4, 6, 8 "
                          "(default w8a8; the engine is built for the widest codes of the workload)")
    add_freq_arg(eng, default=None, help="clock in MHz (default: the measured Fmax of the configuration in "
                 "sim/perf/synth_table.json, else 200 MHz, stated as assumed)")
    eng.add_argument("--dram-bw", type=_float, default=16.0, help="DRAM bandwidth, bytes/cycle (default 16)")
    eng.add_argument("--sram-kib", type=_float, default=256.0, help="on-chip buffer, KiB (default 256)")
    eng.add_argument("--dataflow", default="engine", choices=("engine", "accelerator", "os", "ws", "is"),
                     help="engine = exact vitaccel engine (sim.schedule); accelerator = the engine inside the "
                     "AXI top (sim/accelerator.py: descriptor, load, run, status per layer); os/ws/is = "
                     "SCALE-Sim closed form")
    # --dataflow accelerator only (sim/perf/accelerator.py)
    eng.add_argument("--bus-bits", type=int, default=None,
                     help="accelerator: memory port width in bits (default max(128, 32 x cols))")
    eng.add_argument("--mem-latency", type=int, default=None,
                     help="accelerator: memory read latency in cycles (default 20)")
    eng.add_argument("--device", default=None, help="FPGA for the resource check (default LFE5U-85F; "
                     "LFE5U-25F, LFE5U-45F, LFE5U-85F)")
    out = p.add_argument_group("output")
    out.add_argument("--csv", metavar="F", help="write per-layer CSV")
    add_json_arg(out, help="write summary + per-layer JSON")
    out.add_argument("--plot", metavar="PNG", help="write stacked cycle/traffic bars and a roofline")
    out.add_argument("--max-rows", type=int, default=None, help="print at most this many layer lines")
    out.add_argument("--quiet", action="store_true", help="print only the totals")
    p.set_defaults(func=run_estimate)


def hardware_from_args(args):
    """The :class:`sim.perf.estimate.Hardware` of the shared engine flags and ``--freq`` (MHz)."""
    from .estimate import Hardware

    fields = engine_fields_from_args(args)
    freq = freq_mhz_from_args(args)
    return Hardware(rows=fields["rows"], cols=fields["cols"], freq=(freq or DEFAULT_FREQ_MHZ) * 1e6,
                    dram_bw=args.dram_bw, sram_kib=args.sram_kib, dataflow=args.dataflow,
                    acc_bits=fields.get("acc_bits"), outlier_capacity=fields.get("outlier_capacity"),
                    outlier_lanes=fields.get("outlier_lanes"), requant_share=fields.get("requant_share"),
                    max_k=fields.get("max_k"),
                    bus_bits=args.bus_bits, mem_latency=args.mem_latency)


def build_estimate(args):
    """Turn parsed arguments into a :class:`sim.perf.estimate.ModelEstimate` (raises ``UserError``)."""
    from .workload import estimate_model, estimate_program

    program = program_from_args(args)
    if (args.model is None) == (program is None):
        raise UserError("give exactly one of --model NAME or --program PATH")
    for flag in ("wbits", "abits"):
        if getattr(args, flag, None) is not None:
            raise UserError(f"estimate takes the workload's widths as --bits wXaY, not --{flag}")
    if args.batch is not None:
        deprecated("estimate --batch", "--batch-size")
        args.batch_size = args.batch
    hw = hardware_from_args(args)
    clock = dict(freq_mhz=freq_mhz_from_args(args), device=args.device)
    if program is not None:
        return estimate_program(program, hw, batch=args.batch_size, **clock)
    bits = args.bits or ENGINE_DEFAULTS["bits"]
    parse_bits(bits)
    edge = None if args.edge_bits == "same" else int(args.edge_bits)
    return estimate_model(args.model, hw, bits=bits, batch=args.batch_size, edge_bits=edge, img_size=args.img_size,
                          outliers_per_tile=args.outliers_per_tile, **clock)


def run_estimate(args) -> int:
    from . import report

    for flag in ("csv", "json", "plot"):  # before any work (vitaccel.sim.outputs)
        check_output_file(getattr(args, flag), what=f"--{flag} file")
    est = build_estimate(args)
    if args.quiet:
        print(report.summary_text(est))
    else:
        print(report.table(est, max_rows=args.max_rows))
    for flag, path, text in (("csv", args.csv, report.to_csv), ("json", args.json, report.to_json)):
        if path:
            write_text_atomic(path, text(est), what=f"--{flag} file")
            print(f"wrote {path}")
    if args.plot:
        with atomic_output_file(args.plot, what="--plot file") as tmp:
            report.plot(est, str(tmp))
        print(f"wrote {args.plot}")
    return 0
