"""The resource model of sim/perf/resources.py on the recorded synthesis table: fits and held-back errors.

Usage::

    .venv/bin/python benchmarks/resource_model.py [--table sim/perf/synth_table.json] [--bits w4a4]

Prints, per resource, the model fitted on every recorded configuration of the widths (terms and
coefficients) and a Markdown table of the leave-one-out errors (each recorded configuration predicted
by the model fitted on the others) -- the figures of docs/estimator.md, "Clock and resources".
"""
from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
    from vitaccel.sim.perf import resources as R
    from vitaccel.sim.perf.shapes import parse_bits

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--table", default=None, help="synthesis table (default: the packaged one)")
    ap.add_argument("--bits", default="w4a4")
    args = ap.parse_args(argv)
    w, a = parse_bits(args.bits)
    table = R.load_table(args.table)
    shown = "sim/perf/synth_table.json" if args.table is None else table.path
    print(f"table {shown}: {len(table.entries)} runs, configurations used: "
          f"{', '.join(r.label for r in table.preferred().values())}")
    for res in R.RESOURCES:
        f = R.fit_resource(res, a, w, table=table)
        if f:
            print(f"  {res:13s} = {f.formula}   (fitted on {', '.join(f.points)})")
    print("\n| held back | resource | recorded | predicted | error | model of the others |")
    print("| --- | --- | ---: | ---: | ---: | --- |")
    for e in R.loo_errors(table):
        print(f"| {e['config']} | {e['resource']} | {e['recorded']:,} | {e['predicted']:,.0f} | "
              f"{e['error_pct']:+.1f} % | {' + '.join(e['terms'])} on {', '.join(e['fitted_on'])} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
