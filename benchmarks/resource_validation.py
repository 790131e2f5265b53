"""Check the estimator's resource model against synthesis runs it was not fitted on.

For every ``engine.json`` given (written by ``benchmarks/synth.py`` beside each run), predicts the
run's configuration from a recorded table (``--table``, default ``sim/perf/synth_table.json``; give an
older copy to score the model before the run was recorded) and prints predicted, measured and the
error of LUT4, CCU2C, LUT4 + 2 CCU2C, FF, DSP and BRAM. A configuration that the table itself holds is
skipped (its value would be the recorded one, not a prediction).

Example::

    .venv/bin/python benchmarks/resource_validation.py build/synth_8x16y/8x16_w4a4/engine.json
"""
from __future__ import annotations

import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from vitaccel.sim.perf import resources as R

KEYS = ("LUT4", "CCU2C", "comb", "FF", "DSP", "BRAM")
CELLS = {"LUT4": "LUT4", "CCU2C": "CCU2C", "FF": "TRELLIS_FF", "DSP": "MULT18X18D", "BRAM": "DP16KD"}


def measured(run: dict) -> dict:
    """Cell counts of an ``engine.json`` under the table's resource names (``comb`` = LUT4 + 2 CCU2C)."""
    c = run["cells"]
    out = {k: int(c.get(cell, 0)) for k, cell in CELLS.items()}
    out["comb"] = out["LUT4"] + 2 * out["CCU2C"]
    return out


def validate(run: dict, table) -> dict | None:
    """Predicted vs measured resources of one run (``None`` if the table records its configuration)."""
    cfg = run["config"]
    key = (cfg["rows"], cfg["cols"], cfg["a_bits"], cfg["b_bits"])
    if table.lookup(*key) is not None:
        return None
    est = R.engine_resources(*key, table=table)
    pred = {k: est.values[k] for k in CELLS}
    pred["comb"] = pred["LUT4"] + 2 * pred["CCU2C"]
    meas = measured(run)
    return {"config": R.label(*key), "lut_mapper": run.get("lut_mapper"), "source": est.source,
            "notes": list(est.notes), "predicted": pred, "measured": meas,
            "error_pct": {k: 100.0 * (pred[k] - meas[k]) / meas[k] if meas[k] else None for k in KEYS}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="engine.json files of synthesis runs")
    ap.add_argument("--table", default=None, help="recorded table (default sim/perf/synth_table.json)")
    args = ap.parse_args(argv)
    table = R.load_table(args.table)
    print(f"table {args.table or 'sim/perf/synth_table.json'}: {', '.join(R.label(*k) for k in sorted(table.preferred()))}")
    print("| run | mapper | " + " | ".join(f"{k} predicted / measured (error)" for k in KEYS) + " |")
    print("| --- | --- |" + " ---: |" * len(KEYS))
    for path in args.runs:
        try:
            run = json.load(open(path))
        except (OSError, json.JSONDecodeError) as exc:
            raise SystemExit(f"{path}: cannot read an engine.json ({exc})") from None
        if "cells" not in run or "config" not in run:
            raise SystemExit(f"{path}: not an engine.json of benchmarks/synth.py (no cells / config)")
        v = validate(run, table)
        if v is None:
            print(f"| {path} | recorded in the table: skipped |")
            continue
        cells = [f"{v['predicted'][k]:,} / {v['measured'][k]:,} ({v['error_pct'][k]:+.1f} %)"
                 if v["error_pct"][k] is not None else f"{v['predicted'][k]:,} / 0" for k in KEYS]
        print(f"| {v['config']} | {v['lut_mapper']} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
