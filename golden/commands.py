"""``vitaccel calibrate | eval | export-golden | merge`` (the golden front end's CLI).

* ``calibrate`` writes a program directory: ``manifest.json`` + ``tensors.npz`` (the integer program,
  ViT/DeiT only), ``fakequant.pt`` (the calibrated fake-quant model, a pickled ``QuantViT``: load
  only files you trust) and ``calibration.json`` (config, outlier report, timings).
* ``eval --backend fp|fakequant|sim`` reports top-1/top-5 (``sim`` also the prediction agreement
  with the fake-quant model). Fake-quant runs on the program's integer grid
  (:mod:`golden.integer_grid`) when the directory holds a program, else (or with
  ``--float-fakequant``) in floating point; ``--shard I/N`` evaluates every N-th image and writes per-image
  predictions to ``--json``; ``merge`` combines shard files.
* ``export-golden PROGRAM --data DIR --images N -o DIR`` writes golden vectors for ``tb/``.
"""
from __future__ import annotations

import argparse
import json
import os
import time
import warnings

import numpy as np
import torch

from vitaccel.sim import formats as SF
from vitaccel.sim.cli_args import add_json_arg, add_program_arg, parse_bits, program_from_args
from vitaccel.sim.errors import UserError


# ------------------------------------------------------------------------------------------------
def _threads():
    n = os.cpu_count() or 1
    torch.set_num_threads(n)
    return n


def _data_args(p, required=True):
    p.add_argument("--data", required=required, metavar="DIR",
                   help="ImageNet-layout folder ROOT/CLASS/*.JPEG, or embedded:digits[:split]")
    p.add_argument("--class-map", metavar="FILE", help="class folder names, one per line (e.g. synsets.txt)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=None,
                   help="DataLoader worker processes (eval default: one per 4 cores, at least 1; else all cores)")


def _model_args(p, required=True):
    p.add_argument("--model", required=required, help="timm model name or vitaccel-digits")
    p.add_argument("--weights", metavar="FILE", help=".safetensors / .pth checkpoint")
    p.add_argument("--pretrained-download", action="store_true", help="let timm download pretrained weights")


def _transform_for(model_name: str, model=None, data_config: dict | None = None):
    if model_name == "vitaccel-digits":
        from .embedded import eval_transform  # noqa: PLC0415

        return eval_transform()
    from timm.data import create_transform, resolve_data_config  # noqa: PLC0415

    cfg = dict(data_config) if data_config else _data_config(model_name, model)
    cfg = {k: (tuple(v) if isinstance(v, list) else v) for k, v in cfg.items()}
    return create_transform(**cfg, is_training=False)


def _dataset(args, model_name, model=None, data_config=None):
    from .data import image_folder  # noqa: PLC0415

    if args.data.startswith("embedded:"):
        return image_folder(args.data)
    return image_folder(args.data, class_map=args.class_map,
                        transform=_transform_for(model_name, model, data_config))


def _data_config(model_name, model):
    if model_name == "vitaccel-digits":
        return {}
    from timm.data import resolve_data_config  # noqa: PLC0415

    cfg = resolve_data_config({}, model=model)
    pe = getattr(model, "patch_embed", None)
    if getattr(pe, "img_size", None) is not None:  # models built directly (no pretrained cfg)
        cfg["input_size"] = (int(cfg["input_size"][0]), *(int(v) for v in pe.img_size))
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items()}


def _loader(ds, args):
    from .data import loader  # noqa: PLC0415

    return loader(ds, args.batch_size, args.workers if args.workers is not None else min(4, os.cpu_count() or 1))


def _shard(ds, shard: str | None):
    if not shard:
        return ds, list(range(len(ds)))
    try:
        i, n = (int(v) for v in shard.split("/"))
        assert 0 <= i < n
    except Exception:
        raise UserError(f"--shard must be I/N with 0 <= I < N, got {shard!r}") from None
    idx = list(range(i, len(ds), n))
    return torch.utils.data.Subset(ds, idx), idx


# ------------------------------------------------------------------------------------------------
def cmd_calibrate(args) -> int:
    from .calibrate import calibrate_model, collect_images  # noqa: PLC0415
    from .data import subset  # noqa: PLC0415
    from .models import create_model  # noqa: PLC0415
    from .presets import ABLATIONS, preset  # noqa: PLC0415
    from .program import ProgramError, export_program, save_program  # noqa: PLC0415
    from .quantizers import QuantizerError  # noqa: PLC0415

    _threads()
    parse_bits(args.bits)
    torch.manual_seed(args.seed)
    model = create_model(args.model, args.weights, args.pretrained_download)
    ds = _dataset(args, args.model, model)
    calib = subset(ds, args.calib_size, args.seed)
    images = collect_images(_loader(calib, args), args.calib_size)
    overrides = {}
    for flag, over in ABLATIONS.items():
        if getattr(args, flag, False):
            overrides.update(over)
    for key in ("alpha_qkv", "alpha_fc1", "poq_mode", "slq_base", "act_method", "weight_search", "mp_target_bits",
                "amo_iters"):
        v = getattr(args, key, None)
        if v is not None:
            overrides[key] = v
    for key in ("embed_bits", "head_bits"):
        v = getattr(args, key, None)
        if v is not None:
            overrides[key] = v
    try:
        cfg = preset(args.method, args.bits, **overrides)
        t0 = time.time()
        qvit = calibrate_model(model, images, cfg, args.model, batch_size=min(args.batch_size, 16))
    except QuantizerError as exc:
        raise UserError(str(exc)) from None
    dt = time.time() - t0
    os.makedirs(args.output, exist_ok=True)
    torch.save(qvit, os.path.join(args.output, "fakequant.pt"))
    report = {"model": args.model, "method": cfg.method, "bits": args.bits, "config": cfg.to_dict(),
              "calib_size": len(images), "seed": args.seed, "seconds": round(dt, 1),
              "outliers": {n: {"outlier_ratio": r["outlier_ratio"], "max_tile_outliers": r["max_tile_outliers"]}
                           for n, r in qvit.outlier_report().items()}}
    exported = True
    try:
        prog = export_program(qvit, _data_config(args.model, model), args.outlier_capacity)
        save_program(prog, args.output)
    except ProgramError as exc:
        exported = False
        report["program"] = f"not exported: {exc}"
        warnings.warn(f"integer program not exported: {exc}", stacklevel=1)
    for path in [os.path.join(args.output, "calibration.json")] + ([str(args.json)] if args.json else []):
        with open(path, "w") as f:
            json.dump(report, f, indent=1, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o))
    for n, r in report["outliers"].items():
        print(f"  outliers {n}: {100 * r['outlier_ratio']:.4f} %")
    print(f"calibrated {args.model} ({cfg.method}, {args.bits}) on {len(images)} images in {dt:.0f} s -> "
          f"{args.output}{'' if exported else ' (fake-quant model only)'}")
    return 0


def _load_fakequant(path):
    f = os.path.join(path, "fakequant.pt")
    if not os.path.isfile(f):
        raise UserError(f"{path} has no fakequant.pt (run `vitaccel calibrate ... -o {path}`)")
    return torch.load(f, map_location="cpu", weights_only=False)


def _topk_stats(top5: torch.Tensor, labels: torch.Tensor) -> dict:
    n = len(labels)
    t1 = (top5[:, 0] == labels).float().sum().item()
    t5 = (top5 == labels[:, None]).any(dim=1).float().sum().item()
    return {"n": n, "top1": 100 * t1 / max(n, 1), "top5": 100 * t5 / max(n, 1)}


def cmd_eval(args) -> int:
    from .calibrate import predict  # noqa: PLC0415
    from .models import create_model  # noqa: PLC0415

    from .eval_runtime import cpu_budget, cpu_seconds, peak_rss_mb, sim_predict  # noqa: PLC0415  (issue 20)

    args.program = program_from_args(args)
    threads, args.workers = cpu_budget(getattr(args, "threads", None), args.workers)
    if getattr(args, "agreement", False) and (args.backend != "sim" or not args.program or not os.path.isfile(
            os.path.join(args.program, "fakequant.pt"))):
        raise UserError("--agreement compares --backend sim with the program's fake-quant model: it needs "
                        "--backend sim and a program directory with fakequant.pt (from `vitaccel calibrate`)")
    res: dict = {"backend": args.backend, "threads": threads, "workers": args.workers}
    if args.backend == "fp":
        if not args.model:
            raise UserError("eval --backend fp needs --model")
        model = create_model(args.model, args.weights, args.pretrained_download)
        name, dcfg = args.model, None
    else:
        if not args.program:
            raise UserError(f"eval --backend {args.backend} needs --program PATH (a directory from `vitaccel calibrate`)")
        if args.backend == "sim":
            from .program import load_program  # noqa: PLC0415

            prog = load_program(args.program)
            name, dcfg = prog.manifest["model"]["name"], prog.manifest["model"].get("data_config") or None
        want_fq = args.backend == "fakequant" or getattr(args, "agreement", False)  # sim: only with --agreement
        model = _load_fakequant(args.program) if (want_fq and (args.backend == "fakequant" or os.path.isfile(
            os.path.join(args.program, "fakequant.pt")))) else None
        if args.backend == "fakequant":
            name, dcfg = model.model_name, None
        if model is not None and not args.float_fakequant \
                and os.path.isfile(os.path.join(args.program, "manifest.json")):
            from .program import load_program  # noqa: PLC0415

            model.use_integer_grid(prog if args.backend == "sim" else load_program(args.program))
            res["fakequant_mode"] = "integer grid"
        elif model is not None:
            res["fakequant_mode"] = "float"
    ds = _dataset(args, name, model.model if hasattr(model, "model") else model, dcfg)
    if args.limit:
        from .data import subset  # noqa: PLC0415

        ds = subset(ds, args.limit, 0)
    ds, idx = _shard(ds, args.shard)
    t0, cpu0 = time.time(), cpu_seconds()
    if args.backend in ("fp", "fakequant"):
        top5, labels = predict(model, _loader(ds, args), desc=args.backend)
    else:
        from .int_eval import ProgramRunner  # noqa: PLC0415

        runner = ProgramRunner(prog, backend=args.sim_backend)
        out = sim_predict(runner, _loader(ds, args), model)
        top5, labels = out["top5"], out["labels"]
        if "fq_pred" in out:
            fq = out["fq_pred"]
            res["agreement"] = 100 * (fq == top5[:, 0]).float().mean().item()
            res["fakequant_top1"] = 100 * (fq == labels).float().mean().item()
            res["identical_logits"] = out["identical"]
        res["saturations"] = runner.saturations
    res.update(_topk_stats(top5, labels))
    res["seconds"] = round(time.time() - t0, 1)
    res["images_per_s"] = round(res["n"] / max(time.time() - t0, 1e-9), 3)
    res["peak_rss_mb"] = round(peak_rss_mb(), 1)
    res["cpu_s"] = round(cpu_seconds() - cpu0, 1)   # evaluation loop incl. DataLoader workers
    line = f"{args.backend}: top-1 {res['top1']:.2f} %  top-5 {res['top5']:.2f} %  ({res['n']} images)"
    if "agreement" in res:
        line += (f"  agreement with fake-quant ({res['fakequant_mode']}) {res['agreement']:.2f} %, "
                 f"bit-identical logits {res['identical_logits']}/{res['n']}")
    elif args.backend == "fakequant":
        line += f"  [{res['fakequant_mode']}]"
    print(line)
    if args.json:
        res.update({"indices": idx, "top5_pred": top5.tolist(), "labels": labels.tolist(), "shard": args.shard})
        with open(args.json, "w") as f:
            json.dump(res, f)
    return 0


def cmd_merge(args) -> int:
    parts = []
    for path in args.files:
        try:
            with open(path) as f:
                parts.append(json.load(f))
        except (OSError, json.JSONDecodeError) as exc:
            raise UserError(f"cannot read shard result {path}: {exc}") from None
        if "top5_pred" not in parts[-1] or "indices" not in parts[-1]:
            raise UserError(f"{path} is not a per-image eval result (run eval with --shard and --json)")
    seen = {}
    for p in parts:
        for i, t, y in zip(p["indices"], p["top5_pred"], p["labels"]):
            if i in seen:
                raise UserError(f"image {i} appears in more than one shard")
            seen[i] = (t, y)
    order = sorted(seen)
    top5 = torch.tensor([seen[i][0] for i in order])
    labels = torch.tensor([seen[i][1] for i in order])
    res = _topk_stats(top5, labels)
    res["backend"] = parts[0].get("backend")
    print(f"merged {len(parts)} shards: top-1 {res['top1']:.2f} %  top-5 {res['top5']:.2f} %  ({res['n']} images)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f)
    return 0


def cmd_export_golden(args) -> int:
    from .golden_vectors import write_golden  # noqa: PLC0415
    from .program import load_program  # noqa: PLC0415

    args.program = program_from_args(args)
    _threads()
    prog = load_program(args.program)
    name = prog.manifest["model"]["name"]
    ds = _dataset(args, name, None, prog.manifest["model"].get("data_config") or None)
    if args.images < 1:
        raise UserError("--images must be >= 1")
    xs, ys = [], []
    for i in range(min(args.images, len(ds))):
        x, y = ds[i]
        xs.append(x)
        ys.append(int(y))
    man = write_golden(prog, xs, args.output, ys, backend=args.sim_backend)
    print(f"golden vectors of {man['n_images']} image(s), {len(man['layers'])} layer records -> {args.output}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(man, f, indent=1, default=str)
    return 0


# ------------------------------------------------------------------------------------------------
def add_subcommands(subparsers) -> None:
    from .presets import METHODS  # noqa: PLC0415

    p = subparsers.add_parser("calibrate", help="calibrate a timm ViT and export its integer program")
    _model_args(p)
    _data_args(p)
    p.add_argument("--method", choices=METHODS, default="adfq")
    p.add_argument("--bits", default="w4a4", help="w4a4, w6a6 or w8a8")
    p.add_argument("--calib-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--alpha-qkv", type=float, dest="alpha_qkv")
    p.add_argument("--alpha-fc1", type=float, dest="alpha_fc1")
    p.add_argument("--poq-mode", choices=("static", "dynamic"), dest="poq_mode",
                   help="POQ per-patch scales: static per token position, or chosen per row at run time "
                        "from a scale ladder (docs/datapath.md 8.1.1)")
    p.add_argument("--slq-base", choices=("2", "sqrt2"), dest="slq_base")
    p.add_argument("--act-method", choices=("minmax", "percentile", "mse"), dest="act_method")
    p.add_argument("--weight-search", choices=("minmax", "mse", "hessian"), dest="weight_search",
                   help="per-channel weight clipping: abs max, weight MSE (default), or expected output "
                        "error weighted by the input second moments")
    p.add_argument("--embed-bits", type=int, choices=SF.BITS, dest="embed_bits")
    p.add_argument("--head-bits", type=int, choices=SF.BITS, dest="head_bits")
    p.add_argument("--mp-target-bits", type=float, dest="mp_target_bits")
    p.add_argument("--amo-iters", type=int, dest="amo_iters")
    p.add_argument("--outlier-capacity", type=int, default=None,
                   help="outliers per row tile the hardware holds (default: unlimited in the bound)")
    for flag in ("no-poq", "no-slq", "no-amo", "no-qdrop", "no-sq", "no-three-region", "no-mp"):
        p.add_argument(f"--{flag}", action="store_true", dest=flag.replace("-", "_"), help=f"ablation: {flag[3:]} off")
    p.add_argument("--static-poq", action="store_true", dest="static_poq",
                   help="ablation: POQ with static per-position scales (same as --poq-mode static)")
    p.add_argument("-o", "--output", required=True, metavar="PROGRAM", help="output program directory")
    add_json_arg(p, help="also write the calibration report (calibration.json) to this file")
    p.set_defaults(func=cmd_calibrate)

    p = subparsers.add_parser("eval", help="top-1/top-5 of the FP, fake-quant or integer-simulated model")
    add_program_arg(p, required=False, legacy_positional=True,
                    help="program directory written by `vitaccel calibrate` (fakequant / sim backends)")
    p.add_argument("--backend", choices=("fp", "fakequant", "sim"), default="fakequant")
    p.add_argument("--sim-backend", choices=("auto", "numba", "reference"), default="auto")
    p.add_argument("--float-fakequant", action="store_true",
                   help="fake-quant in floating point instead of on the program's integer grid "
                        "(the default when the directory holds a program; see golden/integer_grid.py)")
    _model_args(p, required=False)
    _data_args(p)
    p.add_argument("--limit", type=int, help="evaluate a random subset of this many images")
    p.add_argument("--shard", metavar="I/N", help="evaluate images I, I+N, I+2N, ...")
    # issue 20: CPU budget and the optional agreement pass (golden/eval_runtime.py)
    p.add_argument("--threads", type=int, default=None,
                   help="compute threads (torch/oneDNN and numba, which run in turn); default: the cores "
                        "left after --workers, at least 1")
    p.add_argument("--agreement", action="store_true",
                   help="sim backend: also run the fake-quant model on the same batches and report the "
                        "prediction agreement and bit-identical logits (doubles the work)")
    add_json_arg(p, help="write results (with per-image predictions) as JSON")
    p.set_defaults(func=cmd_eval)

    p = subparsers.add_parser("export-golden", help="golden vectors (per-layer codes, acc, out) for tb/")
    add_program_arg(p, required=True, legacy_positional=True)
    _data_args(p)
    p.add_argument("--images", type=int, default=2)
    p.add_argument("--sim-backend", choices=("auto", "numba", "reference"), default="auto")
    p.add_argument("-o", "--output", required=True, metavar="DIR")
    add_json_arg(p, help="also write the golden-vector manifest (golden.json) to this file")
    p.set_defaults(func=cmd_export_golden)

    p = subparsers.add_parser("merge", help="combine sharded `eval --shard --json` results")
    p.add_argument("files", nargs="+")
    add_json_arg(p, help="write the merged result as JSON")
    p.set_defaults(func=cmd_merge)
