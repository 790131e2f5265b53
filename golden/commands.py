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

Nothing is lost and nothing is mixed: every output path is checked before the slow part starts
(:mod:`vitaccel.sim.outputs`), output directories are written to a temporary sibling and renamed
into place when complete (an existing non-empty one is replaced only with ``--force``), and an
unreadable image is an error naming the file (or, with ``--skip-bad-images``, left out and counted).
"""
from __future__ import annotations

import json
import os
import sys
import time

import torch

from vitaccel.sim import formats as SF
from vitaccel.sim.cli_args import (add_force_arg, add_json_arg, add_program_arg, nonneg_int, parse_bits, positive_int,
                                   program_from_args)
from vitaccel.sim.errors import UserError
from vitaccel.sim.outputs import atomic_output_dir, check_output_dir, check_output_file, write_text_atomic


# ------------------------------------------------------------------------------------------------
def _threads():
    n = os.cpu_count() or 1
    torch.set_num_threads(n)
    return n


def _warn(cmd: str, msg: str) -> None:
    print(f"vitaccel {cmd}: warning: {msg}", file=sys.stderr)


def _data_args(p, required=True):
    p.add_argument("--data", required=required, metavar="DIR",
                   help="ImageNet-layout folder ROOT/CLASS/*.JPEG, or embedded:digits[:split] (short: "
                   "embedded:split; split: train, calib, test (default), all)")
    p.add_argument("--class-map", metavar="FILE", help="class folder names, one per line (e.g. synsets.txt)")
    p.add_argument("--batch-size", type=positive_int, default=32)
    p.add_argument("--workers", type=nonneg_int, default=None,
                   help="DataLoader worker processes (eval default: one per 4 cores, at least 1; else up to 4)")
    p.add_argument("--skip-bad-images", action="store_true",
                   help="leave unreadable images out (they are counted and listed in the report) instead of "
                   "stopping with an error that names the file")


def _model_args(p, required=True):
    p.add_argument("--model", required=required, help="timm model name or vitaccel-digits")
    p.add_argument("--weights", metavar="FILE", help=".safetensors / .pth checkpoint")
    p.add_argument("--pretrained-download", action="store_true", help="let timm download pretrained weights")


def _transform_for(model_name: str, model=None, data_config: dict | None = None):
    if model_name == "vitaccel-digits":
        from .embedded import eval_transform

        return eval_transform()
    from timm.data import create_transform

    cfg = dict(data_config) if data_config else _data_config(model_name, model)
    cfg = {k: (tuple(v) if isinstance(v, list) else v) for k, v in cfg.items()}
    return create_transform(**cfg, is_training=False)


def _dataset(args, model_name, model=None, data_config=None):
    from .data import image_folder

    if args.data.startswith("embedded:"):
        if args.class_map:
            raise UserError("--class-map applies to image folders; the embedded digits carry their own labels")
        return image_folder(args.data)
    return image_folder(args.data, class_map=args.class_map,
                        transform=_transform_for(model_name, model, data_config))


def _data_config(model_name, model):
    if model_name == "vitaccel-digits":
        return {}
    from timm.data import resolve_data_config

    cfg = resolve_data_config({}, model=model)
    pe = getattr(model, "patch_embed", None)
    if getattr(pe, "img_size", None) is not None:  # models built directly (no pretrained cfg)
        cfg["input_size"] = (int(cfg["input_size"][0]), *(int(v) for v in pe.img_size))
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items()}


def _model_facts(model=None, manifest: dict | None = None) -> tuple[tuple | None, int | None]:
    """``((C, H, W) input shape, number of classes)`` of a float/fake-quant model or a program."""
    if manifest is not None:
        m = manifest["model"]
        return (m["in_chans"], *m["img_size"]), m["num_classes"]
    net = getattr(model, "model", model)  # QuantViT wraps the timm model
    pe = getattr(net, "patch_embed", None)
    shape = None
    if pe is not None and getattr(pe, "img_size", None) is not None and getattr(pe, "proj", None) is not None:
        shape = (int(pe.proj.weight.shape[1]), *(int(v) for v in pe.img_size))
    n = getattr(net, "num_classes", None)
    return shape, (int(n) if isinstance(n, int) else None)


def _check_data(args, ds, who: str, model=None, manifest=None, strict_labels: bool = True) -> None:
    """Input shape of the data vs the model, and folder-order labels without a class map."""
    from .data import check_input_shape, check_labels

    shape, classes = _model_facts(model, manifest)
    if shape is not None:
        check_input_shape(ds, shape, who, args.data)
    msg = check_labels(ds, classes, args.data, strict=strict_labels)
    if msg:
        _warn(args.command, msg)


def _loader(ds, args):
    from .data import loader

    workers = args.workers if args.workers is not None else min(4, os.cpu_count() or 1)
    return loader(ds, args.batch_size, workers, skip_bad=getattr(args, "skip_bad_images", False))


def _report_skipped(cmd: str, skipped) -> list:
    """Print a warning for images left out by ``--skip-bad-images``; return them as records."""
    if skipped:
        _warn(cmd, f"{len(skipped)} unreadable image(s) left out (--skip-bad-images); first: {skipped[0][1]}")
    return [{"index": int(i), "error": m} for i, m in skipped]


def _dump(obj) -> str:
    return json.dumps(obj, indent=1, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o))


# ------------------------------------------------------------------------------------------------
def _capacity_warnings(prog, cap) -> list[str]:
    """Layers whose calibration saw more outliers in one tile than ``--outlier-capacity`` holds."""
    if prog is None or cap is None:
        return []
    out = []
    for name, e in prog.manifest["layers"].items():
        seen = e.get("max_tile_outliers")
        if e.get("fo") and seen is not None and seen > cap:
            out.append(f"{name}: {seen} outliers in one {e.get('tile_rows')}-row tile during calibration, "
                       f"--outlier-capacity {cap}")
    return out


def cmd_calibrate(args) -> int:
    from .calibrate import calibrate_model, collect_images
    from .data import subset
    from .models import create_model
    from .presets import ABLATIONS, preset
    from .program import ProgramError, export_program, save_program

    if getattr(args, "fc2_clip", None) and (args.method != "mptq" or getattr(args, "no_three_region", False)):
        raise UserError(f"--fc2-clip {args.fc2_clip} only applies to the three-region FC2 input of "
                        "--method mptq: drop it or use --method mptq without --no-three-region")
    if getattr(args, "act_range", None) == "split" and args.method != "mptq":
        raise UserError("--act-range split only applies to the Hessian-guided input range search of "
                        "--method mptq: drop it or use --method mptq")
    if getattr(args, "gptq_source", None) is not None and getattr(args, "weight_rounding", None) != "gptq":
        raise UserError(f"--gptq-source {args.gptq_source} only applies to GPTQ rounding: "
                        "add --weight-rounding gptq (or drop --gptq-source)")
    for key, flag in (("amo_learn_weight_scales", "--learn-weight-scales"), ("amo_bias_correction", "--bias-correction")):
        if getattr(args, key, None) and (args.method != "adfq" or getattr(args, "no_amo", False)):
            raise UserError(f"{flag} only applies to AMO reconstruction (--method adfq): drop it or "
                            "use --method adfq without --no-amo")
    check_output_dir(args.output, force=args.force, what="program directory")
    check_output_file(args.json, what="--json file", not_inside=[args.output])
    _threads()
    parse_bits(args.bits)
    torch.manual_seed(args.seed)
    model = create_model(args.model, args.weights, args.pretrained_download)
    ds = _dataset(args, args.model, model)
    _check_data(args, ds, f"model {args.model}", model=model, strict_labels=False)
    calib = subset(ds, args.calib_size, args.seed)
    ld = _loader(calib, args)
    images = collect_images(ld, args.calib_size)
    skipped = _report_skipped("calibrate", ld.skipped)
    overrides = {}
    for flag, over in ABLATIONS.items():
        if getattr(args, flag, False):
            overrides.update(over)
    for key in ("alpha_qkv", "alpha_fc1", "poq_mode", "slq_base", "act_method", "weight_search", "weight_rounding",
                "gptq_source", "mp_target_bits", "fc2_clip", "act_range",
                "amo_iters", "amo_granularity", "amo_learn_weight_scales", "amo_bias_correction", "embed_bits",
                "head_bits", "all_modules"):
        v = getattr(args, key, None)
        if v is not None:
            overrides[key] = v
    cfg = preset(args.method, args.bits, **overrides)
    t0 = time.time()
    qvit = calibrate_model(model, images, cfg, args.model, batch_size=min(args.batch_size, 16))
    dt = time.time() - t0
    report = {"model": args.model, "method": cfg.method, "bits": args.bits, "config": cfg.to_dict(),
              "calib_size": len(images), "seed": args.seed, "seconds": round(dt, 1), "skipped_images": skipped,
              "outliers": {n: {"outlier_ratio": r["outlier_ratio"], "max_tile_outliers": r["max_tile_outliers"]}
                           for n, r in qvit.outlier_report().items()}}
    try:
        prog = export_program(qvit, _data_config(args.model, model), args.outlier_capacity)
    except ProgramError as exc:
        prog = None
        report["program"] = f"not exported: {exc}"
        _warn("calibrate", f"integer program not exported: {exc}")
    over = _capacity_warnings(prog, args.outlier_capacity)
    if over:
        report["capacity_warnings"] = over
        _warn("calibrate", f"--outlier-capacity {args.outlier_capacity} is below the outliers measured in "
              f"{len(over)} layer(s); the simulator and the hardware will stop on such tiles. First: {over[0]}. "
              "Raise --outlier-capacity (or leave it unset)")
    with atomic_output_dir(args.output, force=args.force, what="program directory") as tmp:
        torch.save(qvit, os.path.join(tmp, "fakequant.pt"))
        if prog is not None:
            save_program(prog, str(tmp))
        with open(os.path.join(tmp, "calibration.json"), "w") as f:
            f.write(_dump(report))
    if args.json:
        write_text_atomic(args.json, _dump(report), what="--json file")
    for n, r in report["outliers"].items():
        print(f"  outliers {n}: {100 * r['outlier_ratio']:.4f} %")
    print(f"calibrated {args.model} ({cfg.method}, {args.bits}) on {len(images)} images in {dt:.0f} s -> "
          f"{args.output}{'' if prog is not None else ' (fake-quant model only)'}")
    return 0


def _load_fakequant(path):
    from .qmodel import QuantViT

    f = os.path.join(path, "fakequant.pt")
    if not os.path.isfile(f):
        raise UserError(f"{path} has no fakequant.pt (run `vitaccel calibrate ... -o {path}`)")
    try:
        obj = torch.load(f, map_location="cpu", weights_only=False)
    except Exception as exc:  # truncated zip, foreign pickle, missing class: all a bad file
        raise UserError(f"cannot load {f}: truncated, corrupt or not written by `vitaccel calibrate` "
                        f"({type(exc).__name__}: {str(exc)[:200]}); re-run `vitaccel calibrate`") from None
    if not isinstance(obj, QuantViT):
        raise UserError(f"{f} holds a {type(obj).__name__}, not a vitaccel fake-quant model; re-run "
                        "`vitaccel calibrate`")
    return obj


def _topk_stats(top5: torch.Tensor, labels: torch.Tensor) -> dict:
    n = len(labels)
    t1 = (top5[:, 0] == labels).float().sum().item() if n else 0.0
    t5 = (top5 == labels[:, None]).any(dim=1).float().sum().item() if n else 0.0
    return {"n": n, "top1": 100 * t1 / max(n, 1), "top5": 100 * t5 / max(n, 1)}


def _eval_model(args, res: dict):
    """``(model, program, name, data_config, manifest, source)`` of ``eval``'s backend."""
    from .models import create_model
    from .program import load_program, program_digest
    from .shards import file_sha256

    if args.backend == "fp":
        if not args.model:
            raise UserError("eval --backend fp needs --model")
        if args.program:
            raise UserError("eval --backend fp evaluates --model; --program is for --backend fakequant / sim")
        model = create_model(args.model, args.weights, args.pretrained_download)
        source = {"model": args.model, "weights_sha256": file_sha256(args.weights) if args.weights else None,
                  "pretrained_download": bool(args.pretrained_download)}
        return model, None, args.model, None, None, source
    if not args.program:
        raise UserError(f"eval --backend {args.backend} needs --program PATH (a directory from `vitaccel calibrate`)")
    given = [f for f, v in (("--model", args.model), ("--weights", args.weights),
                            ("--pretrained-download", args.pretrained_download)) if v]
    if given:
        raise UserError(f"{'/'.join(given)} select the float model of --backend fp; --backend {args.backend} takes "
                        f"its model from --program {args.program}: drop {' '.join(given)}")
    has_manifest = os.path.isfile(os.path.join(args.program, "manifest.json"))
    prog = load_program(args.program) if (args.backend == "sim" or (has_manifest and not args.float_fakequant)) \
        else None
    if args.backend == "fakequant" and not os.path.isdir(args.program):
        raise UserError(f"program not found: {args.program}")
    use_fq = args.backend == "fakequant" or (getattr(args, "agreement", False)  # sim: only with --agreement
                                             and os.path.isfile(os.path.join(args.program, "fakequant.pt")))
    model = _load_fakequant(args.program) if use_fq else None
    if model is not None and prog is not None and not args.float_fakequant:
        model.use_integer_grid(prog)
        res["fakequant_mode"] = "integer grid"
    elif model is not None:
        res["fakequant_mode"] = "float"
    if args.backend == "sim":
        name, dcfg, man = prog.manifest["model"]["name"], prog.manifest["model"].get("data_config") or None, \
            prog.manifest
    else:
        name, dcfg, man = model.model_name, None, None
    source = {"program_sha256": program_digest(args.program, ("fakequant.pt",) if use_fq else ())}
    return model, prog, name, dcfg, man, source


def _run_sim(args, prog, model, ld, res):
    """Integer-simulator predictions in batches (:meth:`ProgramRunner.run_batch`, docs/simulator.md);
    with a fake-quant model (``--agreement``) also its predictions and bit-identical logits."""
    from .eval_runtime import sim_predict
    from .int_eval import ProgramRunner

    runner = ProgramRunner(prog, backend=args.sim_backend)
    out = sim_predict(runner, ld, model)
    top5, labels = out["top5"], out["labels"]
    if "fq_pred" in out:
        fq = out["fq_pred"]
        res["agreement"] = 100 * (fq == top5[:, 0]).float().mean().item()
        res["fakequant_top1"] = 100 * (fq == labels).float().mean().item()
        res["identical_logits"] = out["identical"]
    res["saturations"] = runner.saturations
    return top5, labels


def cmd_eval(args) -> int:
    from .calibrate import predict
    from .data import data_fingerprint, subset
    from .shards import parse_shard, provenance

    args.program = program_from_args(args)
    from .eval_runtime import cpu_budget, cpu_seconds, peak_rss_mb

    shard = parse_shard(args.shard)
    check_output_file(args.json, what="--json file")
    threads, args.workers = cpu_budget(getattr(args, "threads", None), args.workers)
    if getattr(args, "agreement", False) and (args.backend != "sim" or not args.program or not os.path.isfile(
            os.path.join(args.program, "fakequant.pt"))):
        raise UserError("--agreement compares --backend sim with the program's fake-quant model: it needs "
                        "--backend sim and a program directory with fakequant.pt (from `vitaccel calibrate`)")
    res: dict = {"backend": args.backend, "threads": threads, "workers": args.workers}
    model, prog, name, dcfg, man, source = _eval_model(args, res)
    net = model.model if hasattr(model, "model") else model
    ds_all = _dataset(args, name, net, dcfg)
    _check_data(args, ds_all, f"{args.backend} model {name}", model=net, manifest=man)
    ds = subset(ds_all, args.limit, 0) if args.limit else ds_all
    selected = len(ds)
    idx = list(range(selected))
    if shard:
        idx = idx[shard[0]::shard[1]]
        ds = torch.utils.data.Subset(ds, idx)
    if not idx:
        raise UserError(f"shard {args.shard} of {selected} image(s) holds no image: use at most {selected} shards")
    ld = _loader(ds, args)
    t0, cpu0 = time.time(), cpu_seconds()
    if args.backend in ("fp", "fakequant"):
        if not len(ds):
            raise UserError("no images to evaluate")
        top5, labels = predict(model, ld, desc=args.backend)
    else:
        top5, labels = _run_sim(args, prog, model, ld, res)
    skipped = _report_skipped("eval", [(idx[p], m) for p, m in ld.skipped])
    kept = [idx[p] for p in ld.kept]
    res.update(_topk_stats(top5, labels))
    res["seconds"] = round(time.time() - t0, 1)
    res["images_per_s"] = round(res["n"] / max(time.time() - t0, 1e-9), 3)
    res["peak_rss_mb"] = round(peak_rss_mb(), 1)
    res["cpu_s"] = round(cpu_seconds() - cpu0, 1)   # evaluation loop incl. DataLoader workers
    line = f"{args.backend}: top-1 {res['top1']:.2f} %  top-5 {res['top5']:.2f} %  ({res['n']} images)"
    if skipped:
        line += f"  [{len(skipped)} unreadable image(s) left out]"
    if "agreement" in res:
        line += (f"  agreement with fake-quant ({res['fakequant_mode']}) {res['agreement']:.2f} %, "
                 f"bit-identical logits {res['identical_logits']}/{res['n']}")
    elif args.backend == "fakequant":
        line += f"  [{res['fakequant_mode']}]"
    print(line)
    if args.json:
        data = {"spec": args.data, "sha256": data_fingerprint(ds_all, args.data), "images": len(ds_all)}
        res.update({"indices": kept, "top5_pred": top5.tolist(), "labels": labels.tolist(), "shard": args.shard,
                    "skipped": skipped,
                    "provenance": provenance(backend=args.backend, fakequant_mode=res.get("fakequant_mode"),
                                             model=source, data=data, limit=args.limit, selected=selected,
                                             shard=shard, skip_bad_images=args.skip_bad_images)})
        write_text_atomic(args.json, json.dumps(res), what="--json file")
    return 0


def cmd_merge(args) -> int:
    from .shards import merge_results

    check_output_file(args.json, what="--json file")
    order, top5, labels, info = merge_results(args.files)
    res = _topk_stats(torch.tensor(top5), torch.tensor(labels))
    res["backend"] = info["provenance"]["backend"]
    res.update(info)
    extra = f", {len(info['skipped'])} unreadable image(s) left out" if info["skipped"] else ""
    print(f"merged {info['shards']} shards: top-1 {res['top1']:.2f} %  top-5 {res['top5']:.2f} %  "
          f"({res['n']} images{extra})")
    if args.json:
        write_text_atomic(args.json, json.dumps(res), what="--json file")
    return 0


def cmd_export_golden(args) -> int:
    from .data import BadImageError
    from .golden_vectors import write_golden
    from .program import load_program

    args.program = program_from_args(args)
    check_output_dir(args.output, force=args.force, what="golden-vector directory")
    check_output_file(args.json, what="--json file", not_inside=[args.output])
    _threads()
    prog = load_program(args.program)
    name = prog.manifest["model"]["name"]
    ds = _dataset(args, name, None, prog.manifest["model"].get("data_config") or None)
    _check_data(args, ds, f"program {args.program}", manifest=prog.manifest, strict_labels=False)
    xs, ys, skipped = [], [], []
    for i in range(len(ds)):
        if len(xs) == args.images:
            break
        try:
            x, y = ds[i]
        except BadImageError as exc:
            if not args.skip_bad_images:
                raise
            skipped.append((i, str(exc)))
            continue
        xs.append(x)
        ys.append(int(y))
    _report_skipped("export-golden", skipped)
    if not xs:
        raise UserError(f"no readable image in {args.data}")
    man = write_golden(prog, xs, args.output, ys, backend=args.sim_backend, force=args.force)
    print(f"golden vectors of {man['n_images']} image(s), {len(man['layers'])} layer records -> {args.output}")
    if args.json:
        write_text_atomic(args.json, json.dumps(man, indent=1, default=str), what="--json file")
    return 0


# ------------------------------------------------------------------------------------------------
def add_subcommands(subparsers) -> None:
    from .presets import METHODS

    p = subparsers.add_parser("calibrate", help="calibrate a timm ViT and export its integer program")
    _model_args(p)
    _data_args(p)
    p.add_argument("--method", choices=METHODS, default="adfq")
    p.add_argument("--bits", default="w4a4", help="w4a4, w6a6 or w8a8")
    p.add_argument("--calib-size", type=positive_int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--alpha-qkv", type=float, dest="alpha_qkv")
    p.add_argument("--alpha-fc1", type=float, dest="alpha_fc1")
    p.add_argument("--poq-mode", choices=("static", "dynamic"), dest="poq_mode",
                   help="POQ per-patch scales: static per token position, or chosen per row at run time "
                        "from a scale ladder (docs/datapath.md 8.1.1)")
    p.add_argument("--slq-base", choices=("2", "sqrt2"), dest="slq_base")
    p.add_argument("--act-method", choices=("minmax", "percentile", "mse"), dest="act_method")
    p.add_argument("--weight-search", choices=("minmax", "mse", "hessian", "output"), dest="weight_search",
                   help="per-channel weight clipping: abs max, weight MSE (default), expected output "
                        "error weighted by the input second moments, or the block linears' output error "
                        "weighted by the squared task-loss gradient (output)")
    p.add_argument("--weight-rounding", choices=("nearest", "gptq"), dest="weight_rounding",
                   help="block linears' weight codes: nearest rounding (default) or GPTQ (error spread "
                        "through the layer's input Hessian; AMO's AdaRound then starts from it)")
    p.add_argument("--gptq-source", choices=("fp", "quant", "target"), dest="gptq_source",
                   help="GPTQ's input rows: float model, quantized input, or quantized input with the "
                        "unquantized input's output as target (default)")
    p.add_argument("--fc2-clip", type=nonneg_int, dest="fc2_clip", metavar="D",
                   help="OPT-m (three-region FC2 input): also try the D region-2 exponents below the one "
                        "that covers the largest value, i.e. clip it (default 0; 2 measured best at W4A4, "
                        "docs/accuracy.md)")
    p.add_argument("--act-range", choices=("joint", "split"), dest="act_range",
                   help="Hessian-guided range search of the per-tensor block-linear inputs (--method mptq): one "
                        "clipping ratio for both ends (default) or each end its own (split; measured at "
                        "W4A4 in docs/accuracy.md)")
    p.add_argument("--embed-bits", type=int, choices=SF.BITS, dest="embed_bits")
    p.add_argument("--head-bits", type=int, choices=SF.BITS, dest="head_bits")
    p.add_argument("--mp-target-bits", type=float, dest="mp_target_bits")
    p.add_argument("--amo-iters", type=int, dest="amo_iters")
    p.add_argument("--amo-granularity", choices=("module", "block"), dest="amo_granularity",
                   help="AMO units: every MHA and MLP module (default, the ADFQ-ViT paper) or whole "
                        "transformer blocks (BRECQ-style)")
    p.add_argument("--learn-weight-scales", action="store_const", const=True, dest="amo_learn_weight_scales",
                   help="AMO also learns each weight channel's dequantisation scale (codes unchanged; the "
                        "learned scale is exported; measured in docs/accuracy.md)")
    p.add_argument("--bias-correction", action="store_const", const=True, dest="amo_bias_correction",
                   help="AMO shifts the bias of each module's last linear (proj / FC2) by the module's mean "
                        "output error per channel after its rounding is fixed (measured in docs/accuracy.md)")
    p.add_argument("--all-modules", action="store_const", const=True, dest="all_modules",
                   help="also quantize every LayerNorm input (power-of-two factor per channel) and softmax "
                        "input (MPTQ-ViT's Table 3 \"all modules\"); fake-quant only: no integer program is "
                        "exported (docs/accuracy.md)")
    p.add_argument("--outlier-capacity", type=nonneg_int, default=None,
                   help="outliers per row tile the hardware holds (default: unlimited in the bound)")
    for flag in ("no-poq", "no-slq", "no-amo", "no-qdrop", "no-sq", "no-three-region", "no-mp"):
        p.add_argument(f"--{flag}", action="store_true", dest=flag.replace("-", "_"), help=f"ablation: {flag[3:]} off")
    p.add_argument("--static-poq", action="store_true", dest="static_poq",
                   help="ablation: POQ with static per-position scales (same as --poq-mode static)")
    p.add_argument("-o", "--output", required=True, metavar="PROGRAM", help="output program directory")
    add_force_arg(p)
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
    p.add_argument("--limit", type=positive_int,
                   help="evaluate a random subset of this many images (seed 0: the same subset in every shard)")
    p.add_argument("--shard", metavar="I/N", help="evaluate images I, I+N, I+2N, ...")
    # issue 20: CPU budget and the optional agreement pass (golden/eval_runtime.py)
    p.add_argument("--threads", type=positive_int, default=None,
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
    p.add_argument("--images", type=positive_int, default=2)
    p.add_argument("--sim-backend", choices=("auto", "numba", "reference"), default="auto")
    p.add_argument("-o", "--output", required=True, metavar="DIR")
    add_force_arg(p)
    add_json_arg(p, help="also write the golden-vector manifest (golden.json) to this file")
    p.set_defaults(func=cmd_export_golden)

    p = subparsers.add_parser("merge", help="combine sharded `eval --shard --json` results")
    p.add_argument("files", nargs="+")
    add_json_arg(p, help="write the merged result as JSON")
    p.set_defaults(func=cmd_merge)
