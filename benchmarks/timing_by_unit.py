"""Where the clock goes in routed engines: register-to-register paths per unit (hw/sta.py).

For each ``vitaccel hw synth`` / ``benchmarks/synth.py`` output directory that holds a routed design
(``layer_engine_routed.json``, or the ``layer_engine.sdf`` newer runs write), print the endpoints
of every unit, how many miss the target clock, the unit's worst path and Fmax, and the histogram of
endpoint Fmax.  Runs without an SDF get one from nextpnr (the routed design reloaded, about a
minute each).

    .venv/bin/python benchmarks/timing_by_unit.py build/s29_8x8/8x8_w4a4 [more dirs] [--freq 150] [--json OUT]
    .venv/bin/python benchmarks/timing_by_unit.py DIR --path 'mac.pe3_3_acc_TRELLIS_FF_Q_28/DI'   # one path, arc by arc
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from vitaccel.hw.sta import SdfError, endpoint_delays, parse_sdf, register_groups, worst_path
from vitaccel.hw.synth import SynthToolError, retime


def table(name: str, t: dict) -> list[str]:
    tgt = t["target_mhz"]
    lines = [f"**{name}**: {t['endpoints']} endpoints, {t['failing']} miss {tgt:g} MHz; worst path "
             f"{t['fmax_mhz']:g} MHz", "",
             f"| unit (paths ending in it) | endpoints | miss {tgt:g} MHz | worst path ns | Fmax of the unit | worst path from -> to |",
             "| --- | --- | --- | --- | --- | --- |"]
    for u, v in t["units"].items():
        lines.append(f"| `{u}` | {v['endpoints']} | {v['failing']} | {v['worst_ns']:.2f} | {v['fmax_mhz']:.1f} MHz | "
                     f"`{v['worst_start'].rsplit('/', 1)[0]}` -> `{v['worst_end']}` |")
    lines += ["", "| endpoint Fmax | " + " | ".join(t["histogram"]) + " |",
              "| --- |" + " --- |" * len(t["histogram"]),
              "| endpoints | " + " | ".join(str(n) for n in t["histogram"].values()) + " |"]
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dirs", nargs="+", type=Path, help="synthesis output directories (routed)")
    ap.add_argument("--top", default="layer_engine")
    ap.add_argument("--freq", type=float, default=150.0, help="target clock, MHz (default 150)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--path", metavar="PIN", help="print the longest path into this endpoint (instance/PIN, as in "
                    "the tables' 'to' column) arc by arc instead of the tables")
    ap.add_argument("--groups", type=int, metavar="N", help="print the N worst register families (endpoints "
                    "grouped by instance name with numbers as '#', and pin) of the first directory instead")
    args = ap.parse_args(argv)
    missing = [d for d in args.dirs if not ((d / f"{args.top}.sdf").is_file() or (d / f"{args.top}_routed.json").is_file())]
    if missing:
        print(f"error: no routed design ({args.top}_routed.json or {args.top}.sdf) in "
              f"{', '.join(map(str, missing))}: place and route it first (benchmarks/synth.py --pnr ...)",
              file=sys.stderr)
        return 2
    if args.path:
        try:
            steps = worst_path(parse_sdf((args.dirs[0] / f"{args.top}.sdf").read_text()), args.path)
        except (OSError, SdfError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        for pin, d, t in steps:
            print(f"{t:8.3f} ns  +{d:.3f}  {pin}")
        return 0
    if args.groups:
        try:
            g = parse_sdf((args.dirs[0] / f"{args.top}.sdf").read_text())
        except (OSError, SdfError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(f"| register family | endpoints | miss {args.freq:g} MHz | worst ns | MHz | from |")
        print("| --- | --- | --- | --- | --- | --- |")
        for r in register_groups(endpoint_delays(g), args.freq)[:args.groups]:
            print(f"| `{r['group']}` | {r['endpoints']} | {r['failing']} | {r['worst_ns']:.3f} | "
                  f"{1000 / r['worst_ns']:.1f} | `{r['worst_start']}` |")
        return 0
    out = {}
    for d in args.dirs:
        try:
            out[str(d)] = t = retime(d, args.top, freq=args.freq)
        except (SynthToolError, SdfError) as exc:
            print(f"error: {d}: {exc}", file=sys.stderr)
            return 2
        print("\n".join(table(str(d), t)) + "\n", flush=True)
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
