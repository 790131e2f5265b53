"""``vitaccel flow`` command line: arguments, ``--quick``, checks, then :func:`vitaccel.flow.run.run_flow`."""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from vitaccel.sim.cli_args import (add_build_dir_arg, add_engine_args, add_force_arg, add_json_arg, apply_build_dir,
                                   engine_fields_from_args, parse_bits, positive_int)
from vitaccel.sim.engine_config import make_engine_config
from vitaccel.sim.errors import UserError
from vitaccel.sim.outputs import atomic_output_dir, check_output_dir, check_output_file, write_text_atomic

from .run import run_flow
from .stages import DEFAULT_METHODS, EMBEDDED_MODEL

__all__ = ["add_subcommands", "cmd_flow", "command_line", "apply_quick", "QUICK"]


def command_line(args: argparse.Namespace) -> str:
    """The ``vitaccel flow`` command line equivalent to ``args`` (options that differ from defaults)."""
    parser = argparse.ArgumentParser()
    add_subcommands(parser.add_subparsers())
    defaults = vars(parser.parse_args(["flow"]))
    parts = ["vitaccel", "flow"]
    for key, value in vars(args).items():
        if key in ("func", "command") or key not in defaults or value == defaults[key]:
            continue
        flag = "--" + key.replace("_", "-")
        if value is True:
            parts.append(flag)
        elif isinstance(value, tuple):
            parts += [flag, ",".join(value)]
        elif value not in (False, None):
            parts += [flag, str(value)]
    return " ".join(parts)


def _methods(text: str) -> tuple:
    from vitaccel.golden.presets import METHODS

    items = tuple(m.strip() for m in text.split(",") if m.strip())
    bad = [m for m in items if m not in METHODS]
    if not items or bad:
        raise argparse.ArgumentTypeError(f"methods must be a comma list of {', '.join(METHODS)}; got {text!r}")
    return tuple(dict.fromkeys(items))


#: Settings of ``--quick`` (applied to options left at their defaults).
QUICK = {"methods": ("baseline", "adfq"), "calib_size": 32, "eval_size": 64, "amo_iters": 10, "rows": 4, "cols": 4}


def apply_quick(args: argparse.Namespace) -> None:
    """Replace options still at their defaults by the ``--quick`` settings."""
    parser = argparse.ArgumentParser()
    add_subcommands(parser.add_subparsers())
    defaults = vars(parser.parse_args(["flow"]))
    for key, value in QUICK.items():
        if getattr(args, key) == defaults[key]:
            setattr(args, key, value)


def cmd_flow(args: argparse.Namespace) -> int:
    """``vitaccel flow``: check the arguments (before any work), run the flow, print the stage list."""
    if args.quick:
        apply_quick(args)
    apply_build_dir(args)
    parse_bits(args.bits)
    make_engine_config(engine_fields_from_args(argparse.Namespace(**{**vars(args), "bits": None})))
    if args.export_method and args.export_method not in args.methods:
        raise UserError(f"--export-method {args.export_method} is not one of --methods {','.join(args.methods)}")
    if args.weights and not os.path.isfile(args.weights):
        raise UserError(f"weights file not found: {args.weights}")
    if args.data and not os.path.isdir(args.data):
        raise UserError(f"data folder not found: {args.data}")
    if args.class_map and not os.path.isfile(args.class_map):
        raise UserError(f"class map file not found: {args.class_map}")
    if args.class_map and not args.data:
        raise UserError("--class-map needs --data")
    if args.model != EMBEDDED_MODEL and not args.data:
        raise UserError(f"--model {args.model} needs --data DIR (the embedded digits only fit {EMBEDDED_MODEL})")
    check_output_dir(args.output, force=args.force)
    check_output_file(args.json, what="--json file")
    if args.threads is not None and args.threads < 1:
        raise UserError(f"--threads must be >= 1, got {args.threads}")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    # the whole folder is built next to OUT and renamed into place when the flow ends (also when some
    # stages failed: the report says which); a setup error or Ctrl-C leaves OUT untouched
    with atomic_output_dir(args.output, force=args.force) as tmp:
        doc = run_flow(argparse.Namespace(**{**vars(args), "output": str(tmp)}), command=command_line(args),
                       label=str(args.output))
    if args.json:
        write_text_atomic(args.json, (Path(args.output) / "report.json").read_text(), what="--json file")
    print(f"\nreport: {Path(args.output) / 'report.md'}")
    width = max(len(s["name"]) for s in doc["stages"])
    for s in doc["stages"]:
        print(f"  {s['name']:<{width}}  {s['status']:<13} {s['message']}")
    return 0 if doc["all_ok"] else 1


EXAMPLES = """examples:
  vitaccel flow                                   # embedded digits ViT, all methods, -> vitaccel-flow/
  vitaccel flow --methods baseline,adfq --bits w4a4 --rows 4 --cols 4 -o out/digits
  vitaccel flow --model deit_tiny_patch16_224 \\
      --weights ../shared/models/deit_tiny_patch16_224.safetensors \\
      --data ../shared/imagenet-sample/dev --class-map ../shared/imagenet-sample/synsets.txt \\
      --methods adfq --bits w4a4 --calib-size 32 --eval-size 100 -o out/deit
"""


def add_subcommands(subparsers) -> None:
    """Register ``flow``."""
    p = subparsers.add_parser(
        "flow", help="calibrate, evaluate, export, generate RTL, verify on golden vectors, estimate; one report",
        description="Run the whole vitaccel flow and write OUT/report.md, OUT/report.json, the programs, golden "
        "vectors, Verilog and PNG plots. Default: the embedded digits ViT (no network, no downloads).",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-o", "--output", default="vitaccel-flow", metavar="DIR",
                   help="output folder (default vitaccel-flow)")
    add_force_arg(p)
    g = p.add_argument_group("model and data")
    g.add_argument("--model", default=EMBEDDED_MODEL, help=f"timm model name (default {EMBEDDED_MODEL})")
    g.add_argument("--weights", metavar="FILE", help="local .safetensors / .pth checkpoint of --model")
    g.add_argument("--data", metavar="DIR", help="ImageNet-layout folder ROOT/CLASS/*.JPEG (default: embedded digits)")
    g.add_argument("--class-map", metavar="FILE", help="class folder names, one per line (e.g. synsets.txt)")
    g.add_argument("--calib-size", type=positive_int, default=128, help="calibration images (default 128)")
    g.add_argument("--eval-size", type=positive_int, default=200,
                   help="evaluation images (default 200; the integer simulator runs image by image)")
    g.add_argument("--batch-size", type=positive_int, default=64)
    g.add_argument("--seed", type=int, default=0)
    q = p.add_argument_group("quantization")
    q.add_argument("--methods", type=_methods, default=DEFAULT_METHODS,
                   help="comma list of baseline, adfq, mptq (default all three)")
    q.add_argument("--bits", default="w8a8", help="w4a4, w6a6 or w8a8 (default w8a8)")
    q.add_argument("--export-method", default=None,
                   help="method whose program feeds golden vectors, RTL check and estimate "
                   "(default: adfq if listed, else the first of --methods)")
    q.add_argument("--amo-iters", type=int, default=50,
                   help="ADFQ AMO reconstruction iterations per block (default 50; `vitaccel calibrate` uses 200)")
    q.add_argument("--sim-backend", choices=("auto", "numba", "reference"), default="auto")
    h = add_engine_args(p, with_bits=False)
    h.add_argument("--golden-images", type=positive_int, default=1, help="images in the golden vectors (default 1)")
    h.add_argument("--rtl-layers", default=None, metavar="R1,R2",
                   help="golden records to run through the RTL accelerator top (default: every GEMM of the "
                   "image, e.g. blocks.0.attn.q,blocks.0.attn.qk.h0 for two)")
    h.add_argument("--skip-rtl", action="store_true", help="skip Verilog generation and the RTL check")
    add_build_dir_arg(h)
    p.add_argument("--quick", action="store_true",
                   help="a fast smoke run: " + " ".join(f"--{k.replace('_', '-')} {v if not isinstance(v, tuple) else ','.join(v)}"
                                                        for k, v in QUICK.items()) + " (explicit options win)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("-v", "--verbose", action="store_true", help="print tracebacks of failed stages")
    add_json_arg(p, help="also write report.json to this file")
    p.set_defaults(func=cmd_flow)
