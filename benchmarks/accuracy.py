"""Accuracy benchmark: FP vs fake-quant (baseline / ADFQ-ViT / MPTQ-ViT, ablations) vs integer sim.

Protocol (docs/accuracy.md, ``golden/protocol.py``): the dev images are split once
(``--split-seed``) into a calibration/selection pool of ``--pool-size`` images and a disjoint
evaluation set. Each calibration seed (``--seeds``) draws ``--calib-size`` images from the pool only;
rows are evaluated on the evaluation set (``--eval-on eval``, reported figures) or on the seed's
selection set (pool images it did not calibrate on; ``--eval-on selection``, for choosing settings),
on the integer grid and in float fake-quant. Each entry (appended to ``--out`` as it finishes)
records the split, the calibration indices and the per-image correctness of both modes, so
``--table`` (mean +- std over seeds, bootstrap interval) and ``--compare A B`` (paired bootstrap and
McNemar) need no re-run.

Example::

    .venv/bin/python benchmarks/accuracy.py --threads 1 --rows fp baseline:w4a4 mptq:w4a4 --seeds 0 1 2

Two runs side by side must not share ``--out`` (each rewrites the whole file): give the second its
own file and append it afterwards with ``--merge``. ``--table`` on a pre-protocol file
(``benchmarks/accuracy_results.json``) prints its v1 table.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from vitaccel.golden.calibrate import calibrate_model
from vitaccel.golden.data import image_folder, loader
from vitaccel.golden.models import create_model
from vitaccel.golden.presets import ABLATIONS, CALIBRATION_PRESETS, preset
from vitaccel.golden.protocol import calibration_draw, selection_set, split_pool_eval

SHARED = os.path.join(ROOT, "..", "shared")

#: row name -> (method, bits, overrides). "fp" is the float model.
ROWS = {
    "baseline:w4a4": ("baseline", "w4a4", {}),
    "baseline:w6a6": ("baseline", "w6a6", {}),
    "adfq:w4a4": ("adfq", "w4a4", {}),
    "adfq:w6a6": ("adfq", "w6a6", {}),
    "adfq-static:w4a4": ("adfq", "w4a4", ABLATIONS["static_poq"]),
    "adfq-noqdrop:w4a4": ("adfq", "w4a4", ABLATIONS["no_qdrop"]),
    "adfq-block:w4a4": ("adfq", "w4a4", ABLATIONS["block_amo"]),
    "adfq-block:w6a6": ("adfq", "w6a6", ABLATIONS["block_amo"]),
    "adfq-noamo:w4a4": ("adfq", "w4a4", ABLATIONS["no_amo"]),
    "adfq-noamo:w6a6": ("adfq", "w6a6", ABLATIONS["no_amo"]),
    "adfq-noamo-static:w4a4": ("adfq", "w4a4", {**ABLATIONS["no_amo"], **ABLATIONS["static_poq"]}),
    "adfq-noamo-slq2:w4a4": ("adfq", "w4a4", {**ABLATIONS["no_amo"], "slq_base": "2"}),
    "adfq-noamo-nopoq:w4a4": ("adfq", "w4a4", {**ABLATIONS["no_amo"], **ABLATIONS["no_poq"]}),
    "adfq-noamo-noslq:w4a4": ("adfq", "w4a4", {**ABLATIONS["no_amo"], **ABLATIONS["no_slq"]}),
    "mptq:w4a4": ("mptq", "w4a4", {}),
    "mptq:w6a6": ("mptq", "w6a6", {}),
    "mptq-nosq:w4a4": ("mptq", "w4a4", ABLATIONS["no_sq"]),
    "mptq-no3r:w4a4": ("mptq", "w4a4", ABLATIONS["no_three_region"]),
}
# MPTQ-ViT Table 2 (single precision: baseline -> SQ -> SQ-b -> SQ-b + OPT-m) and Table 3 (greedy MP)
for _b in ("w4a4", "w6a6"):
    ROWS[f"mptq-sq:{_b}"] = ("mptq", _b,
                             {**ABLATIONS["no_mp"], **ABLATIONS["no_three_region"], **ABLATIONS["no_sq_bias"]})
    ROWS[f"mptq-sqb:{_b}"] = ("mptq", _b, {**ABLATIONS["no_mp"], **ABLATIONS["no_three_region"]})
    ROWS[f"mptq-sp:{_b}"] = ("mptq", _b, {**ABLATIONS["no_mp"]})
    ROWS[f"mptq-sp-hess:{_b}"] = ("mptq", _b, {**ABLATIONS["no_mp"], "fc2_metric": "hessian", "act_metric": "mse"})
    ROWS[f"mptq-sp-hall:{_b}"] = ("mptq", _b, {**ABLATIONS["no_mp"], "fc2_metric": "hessian", "act_metric": "hessian"})
    ROWS[f"mptq-nosq-sp:{_b}"] = ("mptq", _b, {**ABLATIONS["no_mp"], **ABLATIONS["no_sq"]})
    # the paper's base framework without SQ-b / OPT-m: per-tensor ranges by the Hessian-guided metric
    ROWS[f"baseline-hess:{_b}"] = ("baseline", _b, {"act_metric": "hessian"})
    # the mptq preset before session 24 (ranges and OPT-m by the MSE metric); rows recorded then
    ROWS[f"mptq-mse:{_b}"] = ("mptq", _b, {"fc2_metric": "mse", "act_metric": "mse"})
    ROWS[f"mptq-mse-sq:{_b}"] = ("mptq", _b, {**ROWS[f"mptq-sq:{_b}"][2], "fc2_metric": "mse", "act_metric": "mse"})
    ROWS[f"mptq-mse-sqb:{_b}"] = ("mptq", _b, {**ROWS[f"mptq-sqb:{_b}"][2], "fc2_metric": "mse", "act_metric": "mse"})
ROWS["mptq-mse-mp6:w6a6"] = ("mptq", "w6a6", {"mp_target_bits": 6.0, "fc2_metric": "mse", "act_metric": "mse"})
ROWS["mptq-mse-mp5:w6a6"] = ("mptq", "w6a6", {"mp_target_bits": 5.0, "fc2_metric": "mse", "act_metric": "mse"})
ROWS["mptq-mp6:w6a6"] = ("mptq", "w6a6", {"mp_target_bits": 6.0})
ROWS["mptq-mp5:w6a6"] = ("mptq", "w6a6", {"mp_target_bits": 5.0})
# Table 3's "all modules": the LayerNorm and softmax inputs quantized too (float fake-quant only, session 50)
ROWS["mptq-mp6-all:w6a6"] = ("mptq", "w6a6", {"mp_target_bits": 6.0, "all_modules": True})
ROWS["mptq-mp5-all:w6a6"] = ("mptq", "w6a6", {"mp_target_bits": 5.0, "all_modules": True})
for _b in ("w4a4", "w6a6"):
    ROWS[f"mptq-all:{_b}"] = ("mptq", _b, {"all_modules": True})
# the mptq preset with per-channel weight clipping by the expected output error (Hessian diagonal)
ROWS["mptq-wh:w4a4"] = ("mptq", "w4a4", {"weight_search": "hessian"})
# GPTQ weight rounding of the block linears (golden/gptq.py; session 28), on either preset
for _b in ("w4a4", "w6a6"):
    ROWS[f"mptq-gptq:{_b}"] = ("mptq", _b, {"weight_rounding": "gptq"})
    ROWS[f"adfq-gptq:{_b}"] = ("adfq", _b, {"weight_rounding": "gptq"})
    # lower POQ outlier thresholds (more elements on the sparse path; needs a larger --outlier-capacity)
    ROWS[f"adfq-a35:{_b}"] = ("adfq", _b, {"alpha_qkv": 3.0, "alpha_fc1": 5.0})
    ROWS[f"adfq-a47:{_b}"] = ("adfq", _b, {"alpha_qkv": 4.0, "alpha_fc1": 7.0})
    # ... with AMO also learning the weights' per-channel dequantisation scales (session 42)
    ROWS[f"adfq-a47-ws:{_b}"] = ("adfq", _b, {"alpha_qkv": 4.0, "alpha_fc1": 7.0, "amo_learn_weight_scales": True})
    # ... with AMO correcting each module's last bias by its mean output error (session 46)
    ROWS[f"adfq-a47-bc:{_b}"] = ("adfq", _b, {"alpha_qkv": 4.0, "alpha_fc1": 7.0, "amo_bias_correction": True})
    # SQ-b (MPTQ's SmoothQuant with bias) in front of ADFQ's POQ (session 31)
    ROWS[f"adfq-sq:{_b}"] = ("adfq", _b, {"smoothquant": True})
    # OPT-m's search also clipping the large region (two exponents below the covering one; session 31)
    ROWS[f"mptq-clip:{_b}"] = ("mptq", _b, {"fc2_clip": 2})
    ROWS[f"mptq-clip-gptq:{_b}"] = ("mptq", _b, {"fc2_clip": 2, "weight_rounding": "gptq"})
    # ... and the per-tensor input ranges with each end's own clipping ratio (session 32)
    ROWS[f"mptq-clip-split:{_b}"] = ("mptq", _b, {"fc2_clip": 2, "act_range": "split"})
    ROWS[f"mptq-clip-gptq-split:{_b}"] = ("mptq", _b, {"fc2_clip": 2, "weight_rounding": "gptq", "act_range": "split"})
    # ... with the weight clipping by the Hessian-guided output metric (session 32)
    ROWS[f"mptq-clip-split-wo:{_b}"] = ("mptq", _b, {"fc2_clip": 2, "act_range": "split", "weight_search": "output"})
    ROWS[f"mptq-split-wo:{_b}"] = ("mptq", _b, {"act_range": "split", "weight_search": "output"})
    ROWS[f"adfq-wo:{_b}"] = ("adfq", _b, {"weight_search": "output"})
    # ... with SQ-b's migration strength 0.6 instead of the paper's 0.5 (session 32)
    ROWS[f"mptq-clip-split-a6:{_b}"] = ("mptq", _b, {"fc2_clip": 2, "act_range": "split", "sq_alpha": 0.6})
    ROWS[f"mptq-clip-gptq-split-a6:{_b}"] = ("mptq", _b, {"fc2_clip": 2, "weight_rounding": "gptq",
                                                          "act_range": "split", "sq_alpha": 0.6})


@torch.no_grad()
def evaluate(model, x, y, batch=50):
    top1 = top5 = 0
    preds = []
    for i in range(0, len(x), batch):
        out = model(x[i:i + batch])
        t5 = out.topk(5, dim=-1).indices
        preds.append(t5[:, 0])
        top1 += (t5[:, 0] == y[i:i + batch]).sum().item()
        top5 += (t5 == y[i:i + batch, None]).any(dim=1).sum().item()
    return 100 * top1 / len(x), 100 * top5 / len(x), torch.cat(preds)


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (thread counts)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _amo_iters(e) -> int | None:
    """AMO iterations per module of an ``adfq`` row (None without AMO); 200 is the default."""
    over = e.get("overrides", {})
    if e.get("method") != "adfq" or over.get("amo", True) is False or " " in e["row"]:
        return None
    return over.get("amo_iters") or 200


def table(results) -> str:
    """Markdown table of recorded rows (latest entry per row wins)."""
    last = {}
    v1_sims = set()  # int-sim entries of programs calibrated with the v1 adfq preset
    current = {}     # row -> whether its latest calibration recorded its config (v2 and later)
    for k, e in enumerate(results):  # one line per row and AMO iteration count
        if "sim_images" in e:
            if e["row"].startswith("adfq") and not current.get(e["row"].split(" ")[0], False):
                v1_sims.add(k)
        else:
            current[e["row"]] = "config" in e
        last[(e["row"], _amo_iters(e))] = (k, e)
    fp = last.get(("fp", None), (0, {}))[1].get("top1")
    lines = ["| row | bits | images | top-1 % (integer grid) | top-5 % (integer grid) | top-1 drop vs FP "
             "| top-1 % (float fake-quant) | calib s | eval+calib s |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    sims = []
    stale = False
    for (row, _), (k, e) in last.items():
        if "sim_images" in e:
            sims.append((k, e))
            continue
        if row == "fp" or "grid_top1" in e:
            t1, t5 = e.get("grid_top1", e["top1"]), e.get("grid_top5", e["top5"])
            g1, g5 = f"{t1:.1f}", f"{t5:.1f}"
            drop = "" if fp is None or row == "fp" else f"{fp - t1:.1f}"
        else:  # recorded before the integer-grid mode existed: float fake-quant only
            g1 = g5 = "not measured"
            drop = "" if fp is None else f"({fp - e['top1']:.1f} float)"
        fl = "" if row == "fp" else f"{e['top1']:.1f}"
        amo = _amo_iters(e)
        name = row.split(":")[0] + (f" (AMO {amo} it.)" if amo else "")
        if row != "fp" and "config" not in e and e.get("method") == "adfq":
            name += " (v1 defaults)"  # recorded before the adfq preset changed (see the note below)
            stale = True
        lines.append(f"| {name} | {e.get('bits', 'fp32')} | {e['eval_images']} | {g1} | "
                     f"{g5} | {drop} | {fl} | {e.get('calib_seconds', '')} | {e['seconds']} |")
    for k, e in sims:
        lines.append("")
        if k in v1_sims:
            stale = True
        lines.append(f"Integer simulator ({e['sim_backend']}) on the first {e['sim_images']} eval images of "
                     f"`{e['row'].split(' ')[0]}`{' (v1 defaults)' if k in v1_sims else ''}: top-1 {e['sim_top1']:.1f} % (fake-quant on the same images "
                     f"{e['fq_top1_same_images']:.1f} %), prediction agreement with fake-quant "
                     f"{e['sim_agreement']:.1f} %"
                     + (f" (integer grid; with float fake-quant {e['sim_agreement_float']:.1f} %), bit-identical "
                        f"logits on {e['sim_bit_identical']} images" if "sim_agreement_float" in e
                        else " (float fake-quant; recorded before the integer-grid mode existed)")
                     + f", {e['sim_seconds']} s.")
    if stale:
        lines += ["", "(v1 defaults): recorded before the `adfq` preset moved to dynamic POQ (spec 8.1.1), SLQ "
                  "base sqrt2 at every width and QDrop in AMO; kept for the record, not comparable."]
    return "\n".join(lines)


def _bits(correct) -> str:
    """Per-image correctness as a '0'/'1' string (stored in the results for paired comparisons)."""
    return "".join("1" if c else "0" for c in correct.tolist())


def _load(ds, indices):
    xs, ys = [], []
    for xb, yb in loader(torch.utils.data.Subset(ds, list(indices)), 50, workers=min(2, os.cpu_count() or 1)):
        xs.append(xb)
        ys.append(yb)
    return torch.cat(xs), torch.cat(ys)


def _extra_set(e) -> dict:
    """The ``--set`` overrides of an entry: its overrides beyond its row's own (and ``amo_iters``)."""
    own = ROWS.get(e["row"], (None, None, {}))[2]
    return {k: v for k, v in e.get("overrides", {}).items() if k != "amo_iters" and own.get(k, object()) != v}


def _group_key(e) -> tuple:
    """Entries of one table line: same row, evaluation set and calibration setup (seeds differ)."""
    over = e.get("overrides", {})
    return (e["row"], e["eval_on"], e["eval_images"], e.get("calib_size"), over.get("amo_iters"),
            e.get("preset_name", "fast"), json.dumps(_extra_set(e), sort_keys=True))


def _scores(entries, key="grid_correct"):
    """Per-image score (mean correctness over the seeds' entries) as a float array."""
    import numpy as np

    return np.mean([[c == "1" for c in e[key]] for e in entries], axis=0)


def protocol_groups(results) -> dict:
    """Protocol-2 entries grouped by :func:`_group_key`; the latest entry per seed wins."""
    groups: dict = {}
    for e in results:
        if e.get("protocol") != 2 or "sim_images" in e:
            continue
        groups.setdefault(_group_key(e), {})[e.get("seed")] = e
    return groups


def split_table(results) -> str:
    """Markdown table of protocol-2 rows: mean +- std over calibration seeds, both modes."""
    from vitaccel.golden.protocol import bootstrap_accuracy, mean_spread

    groups = protocol_groups(results)
    fp = {k[1:3]: list(v.values())[-1]["grid_top1"] for k, v in groups.items() if k[0] == "fp"}
    lines = ["| row | bits | eval images | seeds | top-1 % integer grid (mean +- std) | 95 % CI (images) "
             "| drop vs FP | top-1 % float fake-quant (mean +- std) | top-5 % grid | calib s |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for key, by_seed in groups.items():
        es = [by_seed[s] for s in sorted(by_seed, key=lambda s: (s is None, s))]
        extra = "" if key[6] == "{}" else " [" + " ".join(f"{k}={v}" for k, v in json.loads(key[6]).items()) + "]"
        if any(e.get("float_only") for e in es):  # exploration rows and all_modules: float fake-quant only
            f = mean_spread(e["top1"] for e in es)
            base = fp.get(key[1:3])
            drop = "" if base is None else f"{base - f['mean']:.1f} (float)"
            spread = f" +- {f['std']:.1f}" if f["n"] > 1 else ""
            lines.append(f"| {key[0]}{extra} (float only) | {es[0].get('bits')} | {key[2]} | "
                         f"{','.join(str(e.get('seed')) for e in es)} | not measured | | {drop} "
                         f"| {f['mean']:.1f}{spread} | | |")
            continue
        g = mean_spread(e["grid_top1"] for e in es)
        f = mean_spread(e["top1"] for e in es)
        t5 = mean_spread(e["grid_top5"] for e in es)
        lo, hi = bootstrap_accuracy(_scores(es) >= 0.5) if len(es) == 1 else _score_ci(_scores(es))
        name = key[0].split(":")[0]
        if key[4]:
            name += f" (AMO {key[4]} it.)"
        if key[3] != CALIBRATION_PRESETS.get(key[5], {}).get("calib_size", key[3]) and key[0] != "fp":
            name += f" ({key[3]} calibration images)"
        if key[5] != "fast":
            name += f" [{key[5]}]"
        name += extra
        if key[1] != "eval":
            name += f" ({key[1]} images)"
        base = fp.get(key[1:3])
        drop = "" if base is None or key[0] == "fp" else f"{base - g['mean']:.1f}"
        seeds = ",".join(str(e.get("seed")) for e in es) if key[0] != "fp" else "-"
        pm = (lambda s: f"{s['mean']:.1f} +- {s['std']:.1f}" if s["n"] > 1 else f"{s['mean']:.1f}")
        lines.append(f"| {name} | {es[0].get('bits', 'fp32')} | {key[2]} | {seeds} | {pm(g)} | {lo:.1f}-{hi:.1f} "
                     f"| {drop} | {'' if key[0] == 'fp' else pm(f)} | {t5['mean']:.1f} "
                     f"| {round(sum(e.get('calib_seconds', 0) for e in es) / len(es))} |")
    return "\n".join(lines)


def _score_ci(scores, n_boot=10000, seed=0):
    """Percentile bootstrap interval (in %) of the mean of per-image scores in [0, 1]."""
    import numpy as np

    rng = np.random.default_rng(seed)
    reps = scores[rng.integers(0, scores.size, size=(n_boot, scores.size))].mean(axis=1) * 100
    lo, hi = np.quantile(reps, [0.025, 0.975])
    return float(lo), float(hi)


def compare(results, row_a: str, row_b: str, mode: str = "grid") -> list[str]:
    """Paired comparisons of two rows on the same evaluation images, seed by seed and seed-averaged."""
    from vitaccel.golden.protocol import paired_bootstrap

    key = "grid_correct" if mode == "grid" else "float_correct"
    groups = protocol_groups(results)

    def pick(row):  # "ROW", "ROW@calibN" (calibrated on N images), "ROW@itN" (N AMO iterations); no --set extras
        name, *tags = row.split("@")
        want = {}
        for t in tags:
            m = re.fullmatch(r"(calib|it)(\d+)", t)
            if not m:
                raise SystemExit(f"--compare: {row!r}: use ROW, ROW@calibN or ROW@itN")
            want[3 if m[1] == "calib" else 4] = int(m[2])
        found = [(k, v) for k, v in groups.items()
                 if k[0] == name and k[6] == "{}" and all(k[i] == n for i, n in want.items())
                 and (4 in want or k[4] is None)]
        default = [v for k, v in found if k[3] == CALIBRATION_PRESETS.get(k[5], {}).get("calib_size")]
        return default if 3 not in want and default else [v for _, v in found]
    ga, gb = pick(row_a), pick(row_b)
    if not ga or not gb:
        raise SystemExit(f"--compare: no protocol-2 results for {row_a if not ga else row_b}")
    a, b = ga[-1], gb[-1]
    lines = []
    if set(a) == {None} or set(b) == {None}:  # fp has no calibration seed: pair it with every seed
        pairs = [(sa, sb) for sa in a for sb in b]
    else:
        pairs = [(s, s) for s in sorted(set(a) & set(b))]
    if not pairs:
        raise SystemExit(f"--compare: {row_a} and {row_b} share no calibration seed")
    if len({len(a[sa][key]) for sa, _ in pairs} | {len(b[sb][key]) for _, sb in pairs}) != 1:
        raise SystemExit("--compare: the two rows were evaluated on different image sets")
    for sa, sb in pairs:
        r = paired_bootstrap([c == "1" for c in a[sa][key]], [c == "1" for c in b[sb][key]])
        lines.append(f"{row_a} - {row_b} ({mode}, seed {sa if sa is not None else sb}, {r.n} images): "
                     f"{r.diff:+.1f} points (95 % paired bootstrap CI {r.ci_low:+.1f} .. {r.ci_high:+.1f}); "
                     f"{r.only_a} images only {row_a} right, {r.only_b} only {row_b}; McNemar p = {r.p_mcnemar:.3g}")
    if len(pairs) > 1:
        import numpy as np

        da = _scores([a[sa] for sa, _ in pairs], key) - _scores([b[sb] for _, sb in pairs], key)
        rng = np.random.default_rng(0)
        reps = da[rng.integers(0, da.size, size=(10000, da.size))].mean(axis=1) * 100
        lo, hi = np.quantile(reps, [0.025, 0.975])
        lines.append(f"{row_a} - {row_b} ({mode}, mean over {len(pairs)} seeds): {da.mean() * 100:+.1f} points "
                     f"(95 % bootstrap CI over images {lo:+.1f} .. {hi:+.1f})")
    return lines


def _merge(ap, args):
    results = json.load(open(args.out)) if os.path.isfile(args.out) else []
    for path in args.merge:
        try:
            with open(path) as f:
                extra = json.load(f)
        except (OSError, json.JSONDecodeError) as exc:
            ap.error(f"--merge {path}: {exc}")
        if not isinstance(extra, list) or not all(isinstance(e, dict) and "row" in e for e in extra):
            ap.error(f"--merge {path}: not an accuracy.py result file (a list of entries with a 'row')")
        results += extra
        print(f"{path}: {len(extra)} entries appended to {args.out}")
    with open(args.out, "w") as f:
        json.dump(results, f, indent=1)


def _parser():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="deit_tiny_patch16_224")
    ap.add_argument("--weights", default=os.path.join(SHARED, "models", "deit_tiny_patch16_224.safetensors"))
    ap.add_argument("--data", default=os.path.join(SHARED, "imagenet-sample", "dev"))
    ap.add_argument("--class-map", default=os.path.join(SHARED, "imagenet-sample", "synsets.txt"))
    ap.add_argument("--pool-size", type=positive_int, default=150,
                    help="images of the calibration/selection pool (the rest is the evaluation set)")
    ap.add_argument("--split-seed", type=int, default=0, help="seed of the pool/evaluation split")
    ap.add_argument("--calib-size", type=positive_int, default=None,
                    help="calibration images per seed, drawn from the pool (default: the preset's, 32)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0], help="calibration seeds (one row per seed)")
    ap.add_argument("--preset", choices=sorted(CALIBRATION_PRESETS), default="fast",
                    help="calibration schedule: fast (32 images, AMO 200 it.) or paper (1024 images, AMO 3000 it.)")
    ap.add_argument("--eval-on", choices=("eval", "selection"), default="eval",
                    help="evaluate on the evaluation set (reported rows) or on the seed's selection set "
                         "(pool images it did not calibrate on; for choosing settings)")
    ap.add_argument("--eval-limit", type=int, default=None, help="evaluate the first N images of the set only")
    ap.add_argument("--float-only", action="store_true",
                    help="skip the integer-grid evaluation (exploration only; recorded rows need both modes)")
    ap.add_argument("--rows", nargs="+", default=["fp", "baseline:w4a4", "adfq-noamo:w4a4", "mptq:w4a4"],
                    help=f"rows: fp, {', '.join(ROWS)}")
    ap.add_argument("--amo-iters", type=int, default=None, help="AMO iterations per module (default: the preset's)")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="extra QuantConfig overrides for every row (exploration), e.g. sq_alpha=0.6")
    ap.add_argument("--sim-row", default=None, help="row whose program also runs through the integer simulator")
    ap.add_argument("--sim-images", type=int, default=0, help="images for the integer-sim evaluation")
    ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "accuracy_split_results.json"))
    ap.add_argument("--table", action="store_true", help="only print the Markdown table of --out")
    ap.add_argument("--compare", nargs=2, metavar=("ROW_A", "ROW_B"), default=None,
                    help="only print paired comparisons (bootstrap CI, McNemar) of two rows of --out "
                         "(ROW@calibN: the ROW entries calibrated on N images; ROW@itN: with N AMO iterations)")
    ap.add_argument("--compare-mode", choices=("grid", "float"), default="grid")
    ap.add_argument("--merge", nargs="+", metavar="JSON", default=None,
                    help="only append the entries of these result files (runs side by side with their own --out) "
                         "to --out")
    ap.add_argument("--threads", type=positive_int, default=None,
                    help="torch threads (default: all cores; use 1 when two benchmarks share a 2-core machine)")
    return ap


def _parse_set(items) -> dict:
    """``KEY=VALUE`` overrides (values as JSON where they parse); unknown keys or a missing ``=`` are
    refused before anything is loaded."""
    from dataclasses import fields

    from vitaccel.golden.presets import QuantConfig

    known = {f.name for f in fields(QuantConfig)}
    out = {}
    for item in items:
        k, eq, v = item.partition("=")
        if not eq or k not in known:
            raise SystemExit(f"error: --set {item!r}: expected KEY=VALUE with KEY a QuantConfig field "
                             f"({', '.join(sorted(known))})")
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


def _sim_check(entry_row, prog, qvit, x, y, pred, fpred, n_images, record):
    """Run the program through the integer simulator and compare with the integer-grid model."""
    from tqdm.auto import tqdm

    from vitaccel.golden.int_eval import ProgramRunner

    runner = ProgramRunner(prog)
    n = min(n_images, len(x))
    ts = time.time()
    logits = torch.stack([runner.run_image(img) for img in tqdm(x[:n], desc="int-sim")])
    sim = logits.argmax(-1)
    qvit.use_integer_grid(prog)
    with torch.no_grad():
        same = sum(bool(torch.equal(a, b)) for a, b in zip(logits, torch.cat(
            [qvit(x[i:i + 50]) for i in range(0, n, 50)])[:n]))
    qvit.use_float_fakequant()
    record({"row": entry_row + " int-sim", "sim_images": n, "sim_top1": 100 * (sim == y[:n]).float().mean().item(),
            "sim_agreement": 100 * (sim == pred[:n]).float().mean().item(),
            "sim_agreement_float": 100 * (sim == fpred[:n]).float().mean().item(),
            "sim_bit_identical": same,
            "fq_top1_same_images": 100 * (pred[:n] == y[:n]).float().mean().item(),
            "sim_seconds": round(time.time() - ts),
            "sim_backend": "golden.int_eval.ProgramRunner (" + ("numpy reference" if runner.reference
                                                               else "numba / int8 batched plans") + ")"})


def main(argv=None):
    ap = _parser()
    args = ap.parse_args(argv)
    if args.table:
        results = json.load(open(args.out))
        print(split_table(results) if any(e.get("protocol") == 2 for e in results) else table(results))
        return
    if args.compare:
        print("\n".join(compare(json.load(open(args.out)), *args.compare, mode=args.compare_mode)))
        return
    if args.merge:
        _merge(ap, args)
        return
    for row in args.rows:
        if row != "fp" and row not in ROWS:
            ap.error(f"unknown row {row!r}; choose fp or one of {', '.join(ROWS)}")
    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    sched = dict(CALIBRATION_PRESETS[args.preset])
    calib_size = args.calib_size or sched.pop("calib_size")
    sched.pop("calib_size", None)
    extra = _parse_set(args.set)

    model = create_model(args.model, args.weights)
    ds = image_folder(args.data, model, args.class_map)
    split = split_pool_eval(len(ds), args.pool_size, args.split_seed)
    results = json.load(open(args.out)) if os.path.isfile(args.out) else []
    cache = {}

    def eval_set(calib_idx):
        idx = split.eval if args.eval_on == "eval" else selection_set(split.pool, calib_idx)
        idx = idx[:args.eval_limit] if args.eval_limit else idx
        if idx not in cache:
            cache.clear()
            cache[idx] = _load(ds, idx)
        return idx, cache[idx]

    for seed in args.seeds:
        calib_idx = calibration_draw(split.pool, calib_size, seed)
        assert not set(calib_idx) & set(split.eval)  # never evaluate on calibration images
        torch.manual_seed(seed)
        calib = _load(ds, calib_idx)[0]
        for row in args.rows:
            if row == "fp" and seed != args.seeds[0]:
                continue
            idx, (x, y) = eval_set(calib_idx)
            print(f"{row} seed {seed}: eval images {len(x)} ({args.eval_on}), calibration images {len(calib)}",
                  flush=True)
            t0 = time.time()
            base = {"protocol": 2, "row": row, "eval_on": args.eval_on, "eval_images": len(x),
                    "split_seed": args.split_seed, "pool_size": args.pool_size, "dataset_size": len(ds),
                    "eval_indices_first": list(idx[:5]), "model": args.model, "preset_name": args.preset}
            if row == "fp":
                t1, t5, pred = evaluate(create_model(args.model, args.weights), x, y)
                correct = _bits(pred == y)
                base.update(seed=None, top1=t1, top5=t5, grid_top1=t1, grid_top5=t5, grid_correct=correct,
                            float_correct=correct, seconds=round(time.time() - t0))
                _record(results, args.out, base)
                continue
            method, bits, over = ROWS[row]
            over = {**over, **{k: v for k, v in sched.items() if method == "adfq"}, **extra}
            if args.amo_iters is not None:
                over["amo_iters"] = args.amo_iters
            cfg = preset(method, bits, **over)
            qvit = calibrate_model(create_model(args.model, args.weights), calib, cfg, args.model)
            tc = time.time() - t0
            t1, t5, fpred = evaluate(qvit, x, y)
            base.update(seed=seed, method=method, bits=bits, overrides=over, config=cfg.to_dict(),
                        calib_size=len(calib), calib_indices=list(calib_idx), top1=t1, top5=t5,
                        float_correct=_bits(fpred == y), calib_seconds=round(tc),
                        outlier_ratio={n: r["outlier_ratio"] for n, r in qvit.outlier_report().items()})
            if not args.float_only and not cfg.all_modules:  # all_modules: no integer program exists
                from vitaccel.golden.program import export_program

                prog = export_program(qvit)
                qvit.use_integer_grid(prog)
                g1, g5, pred = evaluate(qvit, x, y)
                qvit.use_float_fakequant()
                base.update(grid_top1=g1, grid_top5=g5, grid_correct=_bits(pred == y))
            else:
                base.update(grid_top1=None, grid_top5=None, grid_correct=None, float_only=True)
            base["seconds"] = round(time.time() - t0)
            _record(results, args.out, base)
            if row == args.sim_row and args.sim_images and not base.get("float_only"):
                _sim_check(f"{row} seed {seed}", prog, qvit, x, y, pred, fpred, args.sim_images,
                           lambda e: _record(results, args.out, {**e, "protocol": 2, "eval_on": args.eval_on,
                                                                 "seed": seed}))


def _record(results, out, entry):
    results.append(entry)
    with open(out, "w") as f:
        json.dump(results, f, indent=1)
    print(json.dumps({k: v for k, v in entry.items() if not k.endswith("_correct") and k not in
                      ("config", "outlier_ratio", "calib_indices")}), flush=True)


if __name__ == "__main__":
    main()
