"""Clock and resources from synthesis (sim/perf/resources.py, sim/perf/synth_table.json) and their use in
``vitaccel estimate``: recorded table against docs/hardware.md, clock sources, the fitted resource model on
synthetic tables with known coefficients, the device check."""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

from vitaccel.cli import main
from vitaccel.sim.perf import resources as R

DOCS = Path(__file__).resolve().parent.parent / "docs"
DEV = {"LFE5U-85F": {"TRELLIS_COMB": 83640, "TRELLIS_FF": 83640, "MULT18X18D": 156, "DP16KD": 208}}


def _entry(rows, cols, a=4, b=4, fmax=None, **vals):
    e = dict(rows=rows, cols=cols, a_bits=a, b_bits=b, acc_bits=32, max_k=1024, outlier_capacity=32, outlier_lanes=1,
             fmax_mhz=fmax, device="LFE5U-85F", placed=fmax is not None, seed=1, lut_mapper="abc9",
             commit="0" * 40, command="synthetic")
    e.update({k: vals.get(k) for k in R.RESOURCES})
    return e


def _table(entries):
    return R.SynthTable.from_dict(dict(format="vitaccel-synth-table", version=1, devices=DEV, entries=entries))


def _linear(r, c):
    """A synthetic resource law with all four terms."""
    return 1000 + 200 * r * c + 50 * c + 30 * r


# ------------------------------------------------------------------------------------ recorded table

def test_recorded_table_numbers_are_the_ones_docs_hardware_reports():
    doc = (DOCS / "hardware.md").read_text()
    table = R.load_table()
    assert table.entries, "the synthesis table is empty"
    for e in table.entries:
        for k, v in e.values.items():
            if v is not None:
                assert f"{v:,}".replace(",", " ") in doc, (e.label, k, v)
        if e.fmax_mhz is not None:
            assert f"{e.fmax_mhz:g} MHz" in doc
        assert e.command.split(" -o ")[0].replace(".venv/bin/", "") in doc.replace(".venv/bin/", "")
        assert re.fullmatch(r"[0-9a-f]{40}", e.commit)
    # the device capacities the doc quotes from nextpnr
    assert table.device("LFE5U-85F")["TRELLIS_COMB"] == 83640 and "83 640" in doc


def _recorded_fmax(rows, cols, a, b):
    """The Fmax the recorded table holds for this configuration (the file, not the code under test)."""
    entries = json.loads((Path(R.__file__).parent / "synth_table.json").read_text())["entries"]
    (fmax,) = [e["fmax_mhz"] for e in entries if (e["rows"], e["cols"], e["a_bits"], e["b_bits"]) == (rows, cols, a, b)
               and e.get("requant_share", 1) == 1]
    return fmax


def test_clock_measured_assumed_modelled_given():
    c = R.engine_clock(8, 8, 4, 4)
    assert (c.source, c.mhz) == ("measured", _recorded_fmax(8, 8, 4, 4))
    assert "measured Fmax of 8x8 w4a4 on LFE5U-85F" in c.text
    c = R.engine_clock(16, 16, 8, 8)
    assert c.source == "assumed" and c.mhz == R.ASSUMED_MHZ and "ASSUMED" in c.text and "--freq" in c.text
    c = R.engine_clock(16, 16, 8, 8, allow_model=True)    # the nearest placed run (which one: synthetic table below)
    entries = json.loads((Path(R.__file__).parent / "synth_table.json").read_text())["entries"]
    placed = {e["fmax_mhz"]: f"{e['rows']}x{e['cols']} w{e['b_bits']}a{e['a_bits']}" for e in entries if e["fmax_mhz"]}
    assert c.source == "modelled" and c.mhz in placed and placed[c.mhz] in c.text
    c = R.engine_clock(8, 8, 4, 4, freq_mhz=123.0)
    assert (c.source, c.mhz, c.hz) == ("given", 123.0, 123e6)


def test_modelled_clock_is_the_nearest_measured_configuration():
    t = _table([_entry(4, 4, fmax=120.0, LUT4=1), _entry(16, 16, fmax=60.0, LUT4=2), _entry(64, 64, LUT4=3)])
    assert R.engine_clock(8, 4, 4, 4, allow_model=True, table=t).mhz == 120.0
    assert R.engine_clock(32, 32, 4, 4, allow_model=True, table=t).mhz == 60.0
    # 64x64 was synthesized but not placed: no measured Fmax
    assert R.engine_clock(64, 64, 4, 4, table=t).source == "assumed"


def test_a_seed_sweep_is_quoted_as_its_best_seed_with_the_others_beside_it():
    e = _entry(8, 8, fmax=140.5, LUT4=1)
    e.update(seed=3, fmax_by_seed={"1": 133.8, "2": 128.0, "3": 140.5})
    c = R.engine_clock(8, 8, 4, 4, table=_table([e]))
    assert (c.source, c.mhz) == ("measured", 140.5)
    assert "best of seeds 1, 2, 3: seed 3 (the others 133.8 / 128 MHz)" in c.text
    e.update(fmax_by_seed=None)        # a single run keeps the plain wording
    assert "placed and routed, seed 3," in R.engine_clock(8, 8, 4, 4, table=_table([e])).text


# ----------------------------------------------------------------------------------------- model

def test_fit_recovers_fixed_per_pe_per_row_per_col_terms():
    sizes = [(4, 4), (8, 8), (16, 16), (8, 16), (16, 4), (32, 8)]
    t = _table([_entry(r, c, **{k: _linear(r, c) for k in R.RESOURCES}) for r, c in sizes])
    f = R.fit_resource("LUT4", 4, 4, table=t)
    assert set(f.terms) == {"fixed", "per_pe", "per_row", "per_col"}
    coef = dict(zip(f.terms, f.coef))
    for term, want in (("fixed", 1000), ("per_pe", 200), ("per_col", 50), ("per_row", 30)):
        assert coef[term] == pytest.approx(want, rel=1e-9)
    assert f.predict(64, 16) == pytest.approx(_linear(64, 16))
    res = R.engine_resources(64, 16, 4, 4, table=t)
    assert res.source == "model" and res.values["LUT4"] == _linear(64, 16) and "ESTIMATED" in res.text()
    # held-back points are predicted exactly by a law the remaining five points determine
    errs = [e for e in R.loo_errors(t) if e["resource"] == "LUT4"]
    assert len(errs) == 6 and all(abs(e["error_pct"]) < 1e-6 for e in errs)


def test_terms_follow_the_number_of_points_and_their_rank():
    two = _table([_entry(8, 8, LUT4=26115, DSP=48), _entry(16, 16, LUT4=79753, DSP=96)])
    assert R.fit_resource("LUT4", 4, 4, table=two).terms == ("per_pe", "fixed")
    dsp = R.fit_resource("DSP", 4, 4, table=two)
    assert dsp.terms == ("per_col", "fixed") and dsp.predict(32, 32) == pytest.approx(6 * 32)
    # square arrays only: rows and columns cannot be told apart, so per_row never enters
    sq = _table([_entry(n, n, LUT4=_linear(n, n)) for n in (4, 8, 16, 32, 64)])
    assert "per_row" not in R.fit_resource("LUT4", 4, 4, table=sq).terms
    # one point: proportional to the PEs
    one = _table([_entry(8, 8, LUT4=6400)])
    f = R.fit_resource("LUT4", 4, 4, table=one)
    assert f.terms == ("per_pe",) and f.predict(16, 16) == pytest.approx(25600)


def test_measured_resources_and_unsynthesized_widths_are_marked():
    t = _table([_entry(8, 8, LUT4=100, CCU2C=10, TRELLIS_COMB=None, FF=50, DSP=4, BRAM=2),
                _entry(16, 16, LUT4=400, CCU2C=40, TRELLIS_COMB=500, FF=200, DSP=8, BRAM=4)])
    m = R.engine_resources(8, 8, 4, 4, table=t, cfg=dict(acc_bits=32, max_k=1536, outlier_capacity=32,
                                                         outlier_lanes=1))
    assert m.source == "measured" and m.values["LUT4"] == 100
    assert m.values["TRELLIS_COMB"] is not None  # filled from the model, and said so
    assert any("TRELLIS_COMB" in n for n in m.notes) and any("max_k 1536" in n for n in m.notes)
    w8 = R.engine_resources(8, 8, 8, 8, table=t)
    assert w8.source == "model" and any("w8a8 not synthesized" in n for n in w8.notes)


def test_check_fit_and_sram_blocks():
    f = R.check_fit(dict(TRELLIS_COMB=90000, FF=1000, DSP=10, BRAM=8), "LFE5U-85F", extra_bram=100)
    assert not f.fits and f.limiting == "TRELLIS_COMB" and f.use["BRAM"] == (108, 208)
    assert "DOES NOT FIT" in f.text()
    assert R.check_fit(dict(TRELLIS_COMB=80000, FF=1000, DSP=156, BRAM=200)).fits
    assert not R.check_fit(dict(TRELLIS_COMB=1, FF=1, DSP=1, BRAM=8), extra_bram=201).fits
    # 256 KiB SRAM, 8 KiB of it the engine's B banks: (262144 - 8192) / 2048 = 124 DP16KD
    assert R.sram_bram(256 * 1024, 8192) == 124
    with pytest.raises(ValueError, match="unknown device"):
        R.load_table().device("XC7A35T")


# ------------------------------------------------------------------------------- vitaccel estimate

def _manifest(tmp_path, bits):
    layers = [dict(name=f"l{i}", op="linear", M=40, K=64, N=48, a_bits=bits, b_bits=bits, a_fmt="uniform",
                   out_fmt="fixed32") for i in range(3)]
    p = tmp_path / f"w{bits}.json"
    p.write_text(json.dumps(dict(model="toy", layers=layers)))
    return str(p)


def test_estimate_quotes_measured_clock_and_resources(tmp_path, capsys):
    out_json = tmp_path / "e.json"
    assert main(["estimate", "--program", _manifest(tmp_path, 4), "--rows", "8", "--cols", "8", "--quiet",
                 "--json", str(out_json)]) == 0
    text = capsys.readouterr().out
    fmax = _recorded_fmax(8, 8, 4, 4)
    entry = R.load_table().lookup(8, 8, 4, 4)
    assert f"clock: measured Fmax of 8x8 w4a4 on LFE5U-85F ({fmax:g} MHz" in text
    assert f"resources: LUT4 {entry.values['LUT4']:,}" in text and "fits LFE5U-85F" in text
    s = json.loads(out_json.read_text())["summary"]
    assert s["clock_source"] == "measured" and s["freq_hz"] == pytest.approx(fmax * 1e6)
    assert math.isclose(s["latency_ms"], s["cycles"] / (fmax * 1e3), rel_tol=1e-12)
    assert s["resource_source"] == "measured" and s["fits_device"] is True


def test_estimate_states_an_assumed_clock_and_a_misfit(tmp_path, capsys):
    # 32 x 32 w8a8: in no recorded run (the table holds 8 x 8 and 16 x 16), far beyond the device
    assert main(["estimate", "--program", _manifest(tmp_path, 8), "--rows", "32", "--cols", "32", "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "clock: ASSUMED 200 MHz" in text and "ESTIMATED" in text and "DOES NOT FIT LFE5U-85F" in text
    assert main(["estimate", "--program", _manifest(tmp_path, 8), "--quiet", "--freq", "100e6"]) == 0
    assert "clock: 100 MHz (given with --freq)" in capsys.readouterr().out
    assert main(["estimate", "--program", _manifest(tmp_path, 8), "--dataflow", "ws", "--quiet"]) == 0
    assert "ASSUMED 200 MHz: generic SCALE-Sim ws array" in capsys.readouterr().out
    assert main(["estimate", "--program", _manifest(tmp_path, 8), "--device", "nope", "--quiet"]) == 2
    assert "unknown --device" in capsys.readouterr().err


def test_unplaced_run_gets_trellis_comb_from_the_packing_ratio_of_placed_runs():
    """A yosys-only run has no TRELLIS_COMB: (LUT4 + 2 CCU2C) x the placed runs' mean TRELLIS_COMB /
    (LUT4 + 2 CCU2C), said in a note, and the fit uses it as a point of its width."""
    placed = [_entry(8, 8, fmax=90.0, LUT4=100, CCU2C=10, TRELLIS_COMB=132, FF=50, DSP=6, BRAM=1),
              _entry(4, 4, a=8, b=8, fmax=80.0, LUT4=50, CCU2C=25, TRELLIS_COMB=90, FF=20, DSP=4, BRAM=1)]
    t = _table(placed + [_entry(16, 16, LUT4=400, CCU2C=50, FF=200, DSP=24, BRAM=4)])
    ratio = (132 / 120 + 90 / 100) / 2
    assert R.packing_ratio(t) == pytest.approx(ratio)
    assert R.resource_value(t.lookup(16, 16, 4, 4), "TRELLIS_COMB", t) == (pytest.approx(500 * ratio), True)
    assert R.resource_value(t.lookup(8, 8, 4, 4), "TRELLIS_COMB", t) == (132, False)
    m = R.engine_resources(16, 16, 4, 4, table=t)
    assert m.source == "measured" and m.values["TRELLIS_COMB"] == round(500 * ratio)
    assert any("packing ratio" in n and f"{ratio:.3f}" in n for n in m.notes)
    f = R.fit_resource("TRELLIS_COMB", 4, 4, table=t)      # two w4a4 points: the measured and the derived one
    assert sorted(f.points) == ["16x16 w4a4", "8x8 w4a4"] and f.terms == ("per_pe", "fixed")
    assert f.predict(8, 8) == pytest.approx(132) and f.predict(16, 16) == pytest.approx(500 * ratio)
    # derived values are not scored as if they were recorded
    assert not [e for e in R.loo_errors(t) if e["config"] == "16x16 w4a4" and e["resource"] == "TRELLIS_COMB"]
    # without a placed run nothing is derived
    bare = _table([_entry(16, 16, LUT4=400, CCU2C=50)])
    assert R.packing_ratio(bare) is None and R.resource_value(bare.lookup(16, 16, 4, 4), "TRELLIS_COMB", bare) == (None, False)


def test_resource_validation_scores_predictions_of_unrecorded_runs(tmp_path):
    """benchmarks/resource_validation.py: prediction of a run's configuration from a table that does not
    hold it, against the run's own cell counts; a configuration the table records is skipped."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("resval", Path(__file__).parent.parent / "benchmarks" /
                                                  "resource_validation.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    t = _table([_entry(r, c, LUT4=_linear(r, c), CCU2C=_linear(r, c) // 10, FF=_linear(r, c) // 2, DSP=6 * c, BRAM=c)
                for r, c in ((8, 8), (16, 16), (16, 8))])
    run = {"config": dict(rows=8, cols=16, a_bits=4, b_bits=4), "lut_mapper": "abc",
           "cells": {"LUT4": 30000, "CCU2C": 3000, "TRELLIS_FF": 15000, "MULT18X18D": 96, "DP16KD": 16}}
    v = mod.validate(run, t)
    pred = R.engine_resources(8, 16, 4, 4, table=t).values
    assert v["source"] == "model" and v["measured"]["comb"] == 36000
    assert v["predicted"]["comb"] == pred["LUT4"] + 2 * pred["CCU2C"]
    assert v["error_pct"]["LUT4"] == pytest.approx(100 * (pred["LUT4"] - 30000) / 30000)
    assert v["error_pct"]["DSP"] == pytest.approx(0.0)
    run["config"] = dict(rows=16, cols=8, a_bits=4, b_bits=4)
    assert mod.validate(run, t) is None
    bad = tmp_path / "x.json"
    bad.write_text("{}")
    with pytest.raises(SystemExit, match="not an engine.json"):
        mod.main([str(bad)])


def test_unsynthesized_width_uses_the_next_wider_synthesized_width():
    """w6a6 with w4a4 and w8a8 runs (two sizes each): the w8a8 model, an upper bound, said in a note;
    with only narrower runs, every run (no width dependence)."""
    runs = [_entry(r, c, a=a, b=a, LUT4=k * _linear(r, c), CCU2C=k * 10 * r * c, FF=k * 5 * r * c, DSP=k * c,
                   BRAM=c) for a, k in ((4, 1), (8, 2)) for r, c in ((8, 8), (16, 16))]
    t = _table(runs)
    m = R.engine_resources(32, 32, 6, 6, table=t)
    w8 = R.fit_resource("LUT4", 8, 8, table=t)
    assert m.source == "model" and m.values["LUT4"] == round(w8.predict(32, 32))
    assert m.values["LUT4"] == pytest.approx(2 * _linear(32, 32), rel=0.05)   # the 8-bit law, not the 4-bit one
    assert any("model of the w8a8 runs" in n and "upper bound" in n for n in m.notes)
    assert sorted(R.fit_resource("LUT4", 6, 6, table=t).points) == ["16x16 w8a8", "8x8 w8a8"]
    narrow = _table(runs[:2])           # w4a4 only: a w6a6 build falls back to every run
    m = R.engine_resources(32, 32, 6, 6, table=narrow)
    assert any("fitted on other widths" in n for n in m.notes)


def test_shared_requantiser_builds_are_looked_up_not_fitted():
    """Runs built with requant_share > 1 are quoted for that build only; the model and the unshared
    lookups ignore them; an unsynthesized sharing falls back to the unshared build with a note."""
    plain = [_entry(8, 8, fmax=90.0, LUT4=100, CCU2C=10, TRELLIS_COMB=132, FF=50, DSP=6, BRAM=1),
             _entry(16, 16, LUT4=400, CCU2C=50, TRELLIS_COMB=530, FF=200, DSP=24, BRAM=4)]
    shared = {**_entry(16, 16, fmax=70.0, LUT4=300, CCU2C=40, TRELLIS_COMB=400, FF=150, DSP=12, BRAM=4),
              "requant_share": 2}
    t = _table(plain + [shared])
    assert t.lookup(16, 16, 4, 4).values["LUT4"] == 400 and t.lookup(16, 16, 4, 4, 2).values["LUT4"] == 300
    f = R.fit_resource("LUT4", 4, 4, table=t)
    assert f.predict(16, 16) == pytest.approx(400)            # fitted on the unshared runs only
    m = R.engine_resources(16, 16, 4, 4, cfg=dict(rows=16, cols=16, requant_share=2), table=t)
    assert m.source == "measured" and m.values["LUT4"] == 300 and "requant_share 2" in m.basis and not m.notes
    # an unsynthesized sharing: the unshared build less the saving per shared-away column, fitted on
    # the recorded pair (16x16: 400 -> 300 LUT4 with 8 columns shared away, 12.5 a column)
    m4 = R.engine_resources(16, 16, 4, 4, cfg=dict(rows=16, cols=16, requant_share=4), table=t)
    assert m4.source == "model" and any("requant_share 4 not synthesized" in n for n in m4.notes)
    assert m4.values["LUT4"] == 400 - 12 * 12.5 and m4.values["DSP"] == 24 - 12 * 1.5 and m4.values["BRAM"] == 4
    m8 = R.engine_resources(8, 8, 4, 4, cfg=dict(rows=8, cols=8, requant_share=2), table=t)
    assert m8.values["FF"] == 50 - 4 * 6.25 and "less 4 shared-away" in m8.basis
    # other widths take the saving of the recorded widths, and say so
    w8 = R.engine_resources(16, 16, 8, 8, cfg=dict(rows=16, cols=16, requant_share=2), table=t)
    assert any("w8a8 shared builds not synthesized" in n for n in w8.notes)
    # without any recorded shared run: the unshared build, an upper bound
    u = R.engine_resources(16, 16, 4, 4, cfg=dict(rows=16, cols=16, requant_share=4), table=_table(plain))
    assert u.values["LUT4"] == 400 and any("upper bound" in n for n in u.notes)
    assert R.engine_clock(16, 16, 4, 4, table=t, requant_share=2).mhz == 70.0
    c = R.engine_clock(8, 8, 4, 4, table=t, requant_share=2)
    assert (c.mhz, c.source) == (90.0, "modelled") and "requant_share 2 not placed" in c.text
    assert R.engine_clock(16, 16, 4, 4, table=t).source == "assumed"   # the shared run's clock is not the unshared one
