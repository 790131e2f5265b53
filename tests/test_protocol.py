"""The accuracy protocol (golden/protocol.py, benchmarks/accuracy.py): splits, seeds, paired statistics.

Expected values are worked out by hand in the comments (binomial tails, bootstrap of constant
differences), never taken from the code under test.
"""
import importlib.util
import os

import pytest

from vitaccel.golden.protocol import (bootstrap_accuracy, calibration_draw, mcnemar, mean_spread,
                                      paired_bootstrap, selection_set, split_pool_eval)
from vitaccel.sim.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_split_is_disjoint_complete_and_seeded():
    s = split_pool_eval(500, 150, seed=0)
    assert len(s.pool) == 150 and len(s.eval) == 350
    assert not set(s.pool) & set(s.eval)
    assert sorted(s.pool + s.eval) == list(range(500))
    assert list(s.pool) == sorted(s.pool) and list(s.eval) == sorted(s.eval)
    assert split_pool_eval(500, 150, seed=0) == s  # reproducible from the seed
    assert split_pool_eval(500, 150, seed=1).pool != s.pool
    assert s.to_dict()["seed"] == 0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_calibration_draws_only_from_the_pool(seed):
    s = split_pool_eval(60, 20, seed=3)
    calib = calibration_draw(s.pool, 8, seed)
    assert len(set(calib)) == 8 and set(calib) <= set(s.pool)
    assert not set(calib) & set(s.eval)
    sel = selection_set(s.pool, calib)
    assert len(sel) == 12 and not set(sel) & set(calib) and set(sel) | set(calib) == set(s.pool)
    assert calibration_draw(s.pool, 8, seed) == calib


def test_calibration_draws_differ_between_seeds():
    pool = tuple(range(100))
    assert len({calibration_draw(pool, 10, s) for s in range(3)}) == 3


def test_split_errors():
    with pytest.raises(UserError, match="pool size"):
        split_pool_eval(10, 10)
    with pytest.raises(UserError, match="pool size"):
        split_pool_eval(10, 0)
    with pytest.raises(UserError, match="calibration size"):
        calibration_draw(range(5), 6, 0)


def test_mcnemar_hand_checked():
    # only_a = 0, only_b = 5: P(X <= 0) = 1/32 for X ~ B(5, 1/2), two-sided 2/32
    assert mcnemar(0, 5) == pytest.approx(2 / 32)
    assert mcnemar(5, 0) == pytest.approx(2 / 32)
    # 1 vs 9: P(X <= 1) = (1 + 10) / 1024, two-sided 22/1024
    assert mcnemar(1, 9) == pytest.approx(22 / 1024)
    # 3 vs 3: P(X <= 3) = (1 + 6 + 15 + 20) / 64 = 42/64 > 1/2, capped at 1
    assert mcnemar(3, 3) == 1.0
    assert mcnemar(0, 0) == 1.0
    with pytest.raises(ValueError):
        mcnemar(-1, 2)


def test_paired_bootstrap_hand_checked():
    # identical models: every replicate difference is 0
    r = paired_bootstrap([1, 0, 1, 1], [1, 0, 1, 1])
    assert (r.diff, r.ci_low, r.ci_high, r.only_a, r.only_b, r.p_mcnemar) == (0.0, 0.0, 0.0, 0, 0, 1.0)
    # A right on all 10, B wrong on all 10: every replicate is +100
    r = paired_bootstrap([1] * 10, [0] * 10)
    assert (r.acc_a, r.acc_b, r.diff, r.ci_low, r.ci_high) == (100.0, 0.0, 100.0, 100.0, 100.0)
    assert (r.only_a, r.only_b) == (10, 0) and r.p_mcnemar == pytest.approx(2 / 1024)
    # 4 images, A right on 3, B on 1 (the shared one): diff +50, discordant 2 vs 0, p = 2 * 1/4
    r = paired_bootstrap([1, 1, 1, 0], [1, 0, 0, 0], n_boot=2000)
    assert r.diff == 50.0 and (r.only_a, r.only_b) == (2, 0) and r.p_mcnemar == pytest.approx(0.5)
    # per-image differences are 0 or +1, so replicates lie in [0, 100]; the interval holds the mean
    assert 0.0 <= r.ci_low <= 50.0 <= r.ci_high <= 100.0
    with pytest.raises(ValueError, match="same images"):
        paired_bootstrap([1, 0], [1, 0, 1])


def test_bootstrap_accuracy_and_mean_spread():
    lo, hi = bootstrap_accuracy([1] * 7 + [0] * 3, seed=1)
    assert 0.0 <= lo <= 70.0 <= hi <= 100.0
    assert bootstrap_accuracy([1, 1, 1]) == (100.0, 100.0)
    assert mean_spread([1.0, 2.0, 3.0]) == {"mean": 2.0, "std": 1.0, "min": 1.0, "max": 3.0, "n": 3}
    assert mean_spread([5.0])["std"] == 0.0


def _accuracy_module():
    spec = importlib.util.spec_from_file_location("accuracy_bench", os.path.join(ROOT, "benchmarks", "accuracy.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _entry(row, seed, correct, grid=True):
    bits = "".join(str(c) for c in correct)
    t1 = 100 * sum(correct) / len(correct)
    return {"protocol": 2, "row": row, "eval_on": "eval", "eval_images": len(correct), "seed": seed,
            "calib_size": 32, "bits": "w4a4", "top1": t1, "top5": t1, "grid_top1": t1, "grid_top5": t1,
            "grid_correct": bits, "float_correct": bits, "overrides": {}}


def test_benchmark_table_and_compare_on_synthetic_results():
    acc = _accuracy_module()
    results = [_entry("fp", None, [1, 1, 1, 1]),
               _entry("a:w4a4", 0, [1, 1, 0, 0]), _entry("a:w4a4", 1, [1, 1, 1, 0]),
               _entry("b:w4a4", 0, [1, 0, 0, 0]), _entry("b:w4a4", 1, [1, 0, 0, 0])]
    text = acc.split_table(results)
    # a: seeds 50 and 75 -> mean 62.5, sample std 17.7; drop vs FP 100 - 62.5
    assert "| a | w4a4 | 4 | 0,1 | 62.5 +- 17.7 |" in text and "| 37.5 |" in text
    lines = acc.compare(results, "a:w4a4", "b:w4a4")
    # seed 0: 2 vs 1 correct, A-only 1 image -> +25; seed 1: 3 vs 1 -> +50; mean over seeds +37.5
    assert "+25.0 points" in lines[0] and "1 images only a:w4a4 right, 0 only b:w4a4" in lines[0]
    assert "+50.0 points" in lines[1] and "McNemar p = 0.5" in lines[1]
    assert "mean over 2 seeds): +37.5 points" in lines[2]


def test_compare_selects_rows_by_calibration_size():
    """``ROW@calibN`` compares the entries of one row calibrated on N images with another setup."""
    acc = _accuracy_module()
    big = _entry("a:w4a4", 0, [1, 1, 1, 1])
    big["calib_size"] = 64
    results = [_entry("a:w4a4", 0, [1, 0, 0, 0]), big]
    lines = acc.compare(results, "a:w4a4@calib64", "a:w4a4@calib32")
    assert "+75.0 points" in lines[0] and "3 images only a:w4a4@calib64 right" in lines[0]
    # plain ROW is the preset's calibration size (32), whatever order the entries came in
    assert "-75.0 points" in acc.compare(results, "a:w4a4", "a:w4a4@calib64")[0]
    assert "| a (64 calibration images) | w4a4 |" in acc.split_table(results)
    with pytest.raises(SystemExit, match="no protocol-2 results for a:w4a4@calib16"):
        acc.compare(results, "a:w4a4@calib16", "a:w4a4")
    with pytest.raises(SystemExit, match="ROW@itN"):
        acc.compare(results, "a:w4a4@calib", "a:w4a4")


def test_float_only_rows_report_float_mean_spread_and_drop():
    """A row without an integer grid (``all_modules``, or ``--float-only``) shows its float fake-quant
    mean +- std and drop against FP; ``--compare-mode float`` pairs it with another row."""
    acc = _accuracy_module()
    rows = [_entry("c:w6a6", 0, [1, 1, 0, 0]), _entry("c:w6a6", 1, [1, 1, 1, 0])]
    for e in rows:
        e.update(grid_top1=None, grid_top5=None, grid_correct=None, float_only=True)
    results = [_entry("fp", None, [1, 1, 1, 1]), *rows, _entry("b:w6a6", 0, [1, 0, 0, 0]),
               _entry("b:w6a6", 1, [1, 0, 0, 0])]
    text = acc.split_table(results)
    assert "| c:w6a6 (float only) | w4a4 | 4 | 0,1 | not measured | | 37.5 (float) | 62.5 +- 17.7 | | |" in text
    assert "mean over 2 seeds): +37.5 points" in acc.compare(results, "c:w6a6", "b:w6a6", mode="float")[2]
    assert acc.ROWS["mptq-mp5-all:w6a6"][2] == {"mp_target_bits": 5.0, "all_modules": True}


def test_set_overrides_are_their_own_table_line_and_compare_ignores_them():
    """An exploration entry run with ``--set`` (overrides beyond its row's own) neither replaces the
    row's recorded entry of the same seed nor is compared in its place."""
    acc = _accuracy_module()
    tuned = _entry("a:w4a4", 0, [1, 1, 1, 1])
    tuned["overrides"] = {"sq_alpha": 0.3}
    results = [_entry("a:w4a4", 0, [1, 0, 0, 0]), tuned, _entry("b:w4a4", 0, [1, 0, 0, 0])]
    text = acc.split_table(results)
    assert "| a | w4a4 | 4 | 0 | 25.0 |" in text and "| a [sq_alpha=0.3] | w4a4 | 4 | 0 | 100.0 |" in text
    assert "+0.0 points" in acc.compare(results, "a:w4a4", "b:w4a4")[0]
    # a row's own overrides (from ROWS) are not extras
    own = _entry("mptq-sp:w4a4", 0, [1, 0, 0, 0])
    own["overrides"] = dict(acc.ROWS["mptq-sp:w4a4"][2])
    assert acc._extra_set(own) == {}


def test_set_overrides_parse_and_refuse_unknown_keys():
    """``--set``: JSON values where they parse, strings otherwise; an unknown key or a missing ``=`` is a
    one-line error naming the known keys (nothing is loaded or run)."""
    acc = _accuracy_module()
    assert acc._parse_set(["fc2_clip=2", "sq_center=midpoint", "smoothquant=true"]) == {
        "fc2_clip": 2, "sq_center": "midpoint", "smoothquant": True}
    for bad in ("fc2clip=2", "fc2_clip"):
        with pytest.raises(SystemExit, match="expected KEY=VALUE with KEY a QuantConfig field.*fc2_clip"):
            acc._parse_set([bad])


def test_sim_check_records_agreement_with_the_integer_grid():
    """``--sim-row``: the program runs through the integer simulator; the record says how many logits
    are bit-identical to the integer-grid fake-quant model and which backend ran."""
    import copy

    import torch
    from golden_helpers import calibrated, images

    from vitaccel.golden.int_eval import ProgramRunner
    from vitaccel.golden.program import export_program

    acc = _accuracy_module()
    qvit = copy.deepcopy(calibrated("baseline"))
    prog = export_program(qvit)
    x = images(4, seed=5)
    y = torch.zeros(4, dtype=torch.long)
    with torch.no_grad():
        fpred = qvit(x).argmax(-1)
        qvit.use_integer_grid(prog)
        grid = qvit(x)
        qvit.use_float_fakequant()
    rec = []
    acc._sim_check("baseline:w4a4 seed 0", prog, qvit, x, y, grid.argmax(-1), fpred, 3, rec.append)
    (r,) = rec
    sim = torch.stack([ProgramRunner(prog).run_image(img) for img in x[:3]])
    assert r["row"] == "baseline:w4a4 seed 0 int-sim" and r["sim_images"] == 3
    assert r["sim_bit_identical"] == sum(bool(torch.equal(a, b)) for a, b in zip(sim, grid[:3])) == 3
    assert r["sim_agreement"] == 100.0 and "numba" in r["sim_backend"]


def test_poq_outlier_load_counts_tiles_of_a_tiny_model():
    """benchmarks/poq_outliers.py: the outlier load it prints is the quantizers' own calibration counts."""
    import argparse

    import pytest
    from golden_helpers import calibrated

    spec = importlib.util.spec_from_file_location("poq_bench", os.path.join(ROOT, "benchmarks", "poq_outliers.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.alpha_pair("4,7") == (4.0, 7.0)
    for bad in ("4", "a,b", "0,3"):
        with pytest.raises(argparse.ArgumentTypeError):
            mod.alpha_pair(bad)
    qvit = calibrated("adfq", "w4a4")
    load = mod.outlier_load(qvit)
    reps = [q.stats for _, q in qvit.activation_quantizers() if getattr(q, "alpha", None) is not None
            and getattr(q, "stats", None)]
    assert load["layers"] == len(reps) > 0
    assert load["max_row"] == max(int(r["max_row_outliers"].max()) for r in reps)
    for t, v in load["max_tile"].items():
        assert v == max(int(r["max_tile_outliers"][t]) for r in reps)
    assert load["max_tile"][min(load["max_tile"])] <= load["max_tile"][max(load["max_tile"])]


def test_loss_groups_partition_the_quantizers_and_restore_them():
    """benchmarks/loss_groups.py: the groups split a model's quantizers, each group is switched off
    and on again, and "all" is the plain evaluation."""
    import torch
    from golden_helpers import calibrated, images

    spec = importlib.util.spec_from_file_location("loss_groups", os.path.join(ROOT, "benchmarks", "loss_groups.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    qvit = calibrated("adfq", "w4a4")
    names = [n for n, _ in qvit.quantizers()]
    members = mod.group_members(names)
    flat = [n for m in members.values() for n in m]
    assert sorted(flat) == sorted(names)          # every quantizer in exactly one group
    with pytest.raises(SystemExit, match="no quantizer matches"):
        mod.group_members([n for n in names if "fc2.input" not in n])

    x = images(6)
    with torch.no_grad():
        y = qvit(x).argmax(-1)                     # labels: the fully quantized model's own predictions
    seen = []

    def evaluate(model, xs, ys):
        off = sorted(n for n, q in model.quantizers() if not q.enabled)
        seen.append(off)
        with torch.no_grad():
            p = model(xs).argmax(-1)
        return None, None, p

    correct = mod.group_correct(qvit, x, y, members, evaluate)
    assert seen == [[]] + [sorted(m) for m in members.values()]
    assert bool(correct["all"].all())
    assert all(q.enabled for _, q in qvit.quantizers())
    assert mod.seed_average([{"diff": 1.0, "ci_low": -2.0, "ci_high": 4.0},
                             {"diff": 3.0, "ci_low": 0.0, "ci_high": 6.0}]) == {"diff": 2.0, "ci_low": -1.0,
                                                                              "ci_high": 5.0}
