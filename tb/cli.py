"""``vitaccel tb run GOLDEN_DIR --layer NAME``: run one golden-vector layer on the RTL layer engine.

The layer's ``LayerSpec``, A codes, outliers (and run-time B for ``qk`` / ``av``) come from
``golden.golden_vectors.load_golden``; the engine (Verilator build of :class:`hw.engine.LayerEngine`)
must reproduce the golden ``out`` exactly and its cycle counter must equal :mod:`sim.schedule`.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np

from vitaccel.sim.cli_args import (add_build_dir_arg, add_engine_args, add_json_arg, add_program_arg, apply_build_dir,
                                   engine_fields_from_args, program_from_args)
from vitaccel.sim.engine_config import make_engine_config

__all__ = ["add_subcommands", "run_golden_layer", "run_golden_layers", "engine_config_for",
           "engine_config_for_layers", "cycle_record"]


def engine_config_for(spec, k: int, rows: int, cols: int, lanes: int = 1):
    """Smallest max-width engine that runs ``spec`` with ``K = k`` on a ``rows x cols`` array."""
    from vitaccel.sim.engine_config import EngineConfig
    need = spec.acc_bits_required(k)
    cap = int(spec.outlier_capacity or 0) if spec.fo else 0
    return EngineConfig(rows=rows, cols=cols, a_bits=8, b_bits=8, acc_bits=max(need, spec.acc_bits, 31),
                        outlier_capacity=max(cap, 1) if spec.fo else 0, outlier_lanes=lanes,
                        max_k=max(k, 2))


def engine_config_for_layers(layers, rows: int, cols: int, lanes: int = 1):
    """One engine that runs every ``(spec, k)`` of ``layers``: the field-wise maximum of
    :func:`engine_config_for` (largest ``K`` as ``max_k``, widest accumulator, largest outlier
    capacity), so layers of different depth (e.g. q with K = 192 and FC2 with K = 768) share one
    Verilator build.  For a single layer it is :func:`engine_config_for`."""
    cfgs = [engine_config_for(spec, k, rows, cols, lanes) for spec, k in layers]
    if not cfgs:
        raise ValueError("engine_config_for_layers: no layers")
    fields = cfgs[0].to_dict()
    return cfgs[0].replace(**{f: max(c.to_dict()[f] for c in cfgs) for f in fields})


def cycle_record(cfg, shape, cycles: int, outliers_per_tile=0, name: str | None = None) -> dict:
    """One measured-cycle record ``{rows, cols, M, K, N, cycles, outliers_per_tile, <EngineConfig
    fields>}`` (the format ``tests/test_estimate.py`` replays through the estimator)."""
    M, K, N = (int(x) for x in shape)
    rec = {"name": name, **cfg.to_dict(), "M": M, "K": K, "N": N, "cycles": int(cycles)}
    o = outliers_per_tile
    rec["outliers_per_tile"] = int(o) if np.isscalar(o) else [int(x) for x in o]
    return rec


def _golden_record(vec, golden_dir, layer: str, image: int):
    from vitaccel.sim.errors import UserError

    if layer not in vec:
        raise UserError(f"layer {layer!r} not in {golden_dir}; layers: {', '.join(sorted(vec))}")
    rec = vec[layer]
    n_img = rec["a_codes"].shape[0]
    if not 0 <= image < n_img:
        raise UserError(f"image {image} out of range (the vectors hold {n_img} images)")
    return rec


def _golden_case(vec, golden_dir, layer: str, image: int, cfg):
    from vitaccel.sim.errors import UserError
    from vitaccel.sim.engine_config import ConfigError
    from vitaccel.sim import reference as ref
    from vitaccel.tb.engine_streams import case_from_spec

    from vitaccel.golden.golden_vectors import image_spec

    rec = _golden_record(vec, golden_dir, layer, image)
    spec = image_spec(rec, image)
    q = rec["a_codes"][image]
    b = rec["b"][image] if rec["b"] is not None else spec.b
    o = np.asarray(rec["outliers"][image], np.int64).reshape(-1, 3)
    try:
        case = case_from_spec(cfg, spec, q, o, b=np.asarray(b))
    except ConfigError as exc:
        raise UserError(f"{layer} ({q.shape[0]} x {q.shape[1]} x {np.asarray(b).shape[1]}, {spec.a_bits}-bit "
                        f"{spec.a_kind} A, {spec.b_bits}-bit B) cannot run on the engine {cfg.to_dict()}: "
                        f"{exc}") from None
    gold = np.asarray(rec["out"][image])
    # the golden vectors and sim/reference.py must agree (acc and out) before the RTL is compared with them
    _check_golden_acc(rec, spec, layer, image, q, o)
    for e in case["expected"]:
        g = [int(x) for x in gold[e["row"], e["col"]:e["col"] + e["n"]]]
        if g != e["data"]:
            raise UserError(f"golden out of {layer} row {e['row']} disagrees with sim/reference.py")
    M = q.shape[0]
    counts = ref.outliers_per_tile(o, M, cfg.rows) if len(o) else np.zeros(-(-M // cfg.rows), np.int64)
    return cfg, case, [int(c) for c in counts]


def _check_golden_acc(rec, spec, layer: str, image: int, q, o) -> None:
    """The golden ``acc`` of one image must be the accumulator sim/reference.py computes (spec section 6)."""
    from vitaccel.sim.errors import UserError
    from vitaccel.sim.layer import run_layer_reference

    b = None if rec["b"] is None else np.asarray(rec["b"][image])
    res = run_layer_reference(spec, q, o if len(o) else None, b)
    gold = np.asarray(rec["acc"][image])
    if gold.shape != np.shape(res.acc) or not np.array_equal(gold, np.asarray(res.acc)):
        bad = np.argwhere(gold != np.asarray(res.acc)) if gold.shape == np.shape(res.acc) else [[0, 0]]
        r, c = (int(v) for v in bad[0])
        raise UserError(f"golden acc of {layer} (image {image}) disagrees with sim/reference.py at row {r}, column "
                        f"{c}: the golden vectors are corrupt or from another vitaccel version; re-run "
                        f"`vitaccel export-golden`")


def run_golden_layers(golden_dir: str, layers, *, image: int = 0, rows: int = 4, cols: int = 4, cfg=None,
                      valid_prob: float = 1.0, ready_prob: float = 1.0, waves: bool = False,
                      seed: int = 1) -> list[dict]:
    """Run several golden layers in one simulation of one engine build; return one result per layer.

    Parameters
    ----------
    golden_dir : str
        Directory written by ``vitaccel export-golden`` (:func:`golden.golden_vectors.load_golden`).
    layers : sequence of str
        Layer record names.
    cfg : sim.engine_config.EngineConfig, optional
        Engine to use for every layer (e.g. an engine that is already built); default: one engine
        for all the layers (:func:`engine_config_for_layers`).

    Each result holds the measured ``cycles`` (equal to :mod:`sim.schedule`, asserted by the
    testbench), ``rows`` (exact output rows), ``shape``, ``model_cycles``, ``utilisation``,
    ``outliers_per_tile``, ``record`` (:func:`cycle_record`), ``engine`` (the configuration),
    ``prep_s`` (building the stream images and expected values of this layer) and ``sim_s`` (wall
    time of the whole Verilator simulation, shared by all ``layers``, including the simulator start
    and, when the design was not built yet, the Verilator build).  Any mismatch raises.
    """
    import time

    from vitaccel.golden.golden_vectors import load_golden
    from vitaccel.hw.engine import build_engine
    from vitaccel.tb.runner import run_cocotb, verilog_for

    vec = load_golden(golden_dir)
    layers = list(layers)
    if cfg is None:
        recs = [_golden_record(vec, golden_dir, layer, image) for layer in layers]
        cfg = engine_config_for_layers([(r["spec"], r["a_codes"].shape[2]) for r in recs], rows, cols)
    cases, counts, preps = [], [], []
    for layer in layers:
        t0 = time.monotonic()
        c, case, cnt = _golden_case(vec, golden_dir, layer, image, cfg)
        case.update(valid_prob=valid_prob, ready_prob=ready_prob)
        cases.append(case)
        counts.append(cnt)
        preps.append(time.monotonic() - t0)
    v = verilog_for(build_engine, "layer_engine", cfg.to_dict())
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "cycles.json"
        t0 = time.monotonic()
        run_dir = run_cocotb("layer_engine", [v], "vitaccel.tb.cocotb_engine", waves=waves, seed=seed,
                             data={"cols": cfg.cols, "seed": seed, "cases": cases, "report": str(report)})
        sim_s = time.monotonic() - t0
        results = json.loads(report.read_text())
    if len(results) != len(cases):
        raise AssertionError(f"testbench reported {len(results)} of {len(cases)} layers")
    for res, case, cnt, layer, prep in zip(results, cases, counts, layers, preps):
        res.update(layer=layer, image=image, run_dir=str(run_dir), engine=cfg.to_dict(),
                   model_cycles=case["cycles"], utilisation=case["utilisation"], outliers_per_tile=cnt,
                   record=cycle_record(cfg, case["shape"], res["cycles"], cnt, name=layer),
                   prep_s=round(prep, 2), sim_s=round(sim_s, 2), verilog=str(v))
    return results


def run_golden_layer(golden_dir: str, layer: str, *, image: int = 0, rows: int = 4, cols: int = 4,
                     valid_prob: float = 1.0, ready_prob: float = 1.0, waves: bool = False, cfg=None) -> dict:
    """Run one golden layer on the engine; return ``{cycles, rows, ...}``; raise on any mismatch."""
    return run_golden_layers(golden_dir, [layer], image=image, rows=rows, cols=cols, cfg=cfg,
                             valid_prob=valid_prob, ready_prob=ready_prob, waves=waves)[0]


def _engine_from_args(args, golden_dir, layers, image):
    """The engine of the shared engine flags; flags left out are sized for the layers (largest K,
    widest accumulator and outlier capacity of :func:`engine_config_for_layers`)."""
    from vitaccel.golden.golden_vectors import load_golden

    vec = load_golden(golden_dir)
    recs = [_golden_record(vec, golden_dir, layer, image) for layer in layers]
    fields = engine_fields_from_args(args)
    if args.config is None:
        need = engine_config_for_layers([(r["spec"], r["a_codes"].shape[2]) for r in recs], fields["rows"],
                                        fields["cols"]).to_dict()
        for key in ("max_k", "acc_bits", "outlier_capacity"):
            if getattr(args, key) is None:
                fields[key] = need[key]
    return make_engine_config(fields)


def _run(args) -> int:
    from vitaccel.sim.errors import UserError
    from vitaccel.sim.outputs import check_output_file

    check_output_file(args.json, what="--json file")
    for flag in ("valid_prob", "ready_prob"):
        v = getattr(args, flag)
        if not 0 < v <= 1:
            raise UserError(f"--{flag.replace('_', '-')} must be in (0, 1], got {v}")
    apply_build_dir(args)
    layers = list(dict.fromkeys(args.layer))
    cfg = _engine_from_args(args, str(args.golden_dir), layers, args.image)
    results = run_golden_layers(str(args.golden_dir), layers, image=args.image, cfg=cfg,
                                valid_prob=args.valid_prob, ready_prob=args.ready_prob, waves=args.waves)
    eng = results[0]["engine"]
    print(f"engine {eng['rows']}x{eng['cols']}: " + ", ".join(f"{k} {v}" for k, v in eng.items()
                                                              if k not in ("rows", "cols")))
    for res in results:
        M, K, N = res["shape"]
        print(f"{res['layer']} (image {res['image']}, {M}x{K}x{N}, {sum(res['outliers_per_tile'])} outliers): "
              f"{res['rows']} output rows exact, {res['cycles']} cycles (sim/schedule.py: {res['model_cycles']}), "
              f"MAC utilisation {res['utilisation']:.3f}")
    print(f"run dir {results[0]['run_dir']} (simulation {results[0]['sim_s']:.1f} s)")
    if args.json:
        from vitaccel.sim.outputs import write_text_atomic

        write_text_atomic(args.json, json.dumps(results, indent=1) + "\n", what="--json file")
    return 0


def _model(args) -> int:
    """``vitaccel tb model``: every GEMM of one image through the RTL accelerator top (tb/model_run.py)."""
    from vitaccel.tb.model_run import report_markdown, run_model, write_reports

    apply_build_dir(args)
    program = program_from_args(args)
    fields = engine_fields_from_args(args)
    if args.bits is None and getattr(args, "wbits", None) is None and getattr(args, "abits", None) is None \
            and args.config is None:
        del fields["a_bits"], fields["b_bits"]     # the widest codes of the program (tb/model_run.py)
    records = [r.strip() for r in args.layers.split(",") if r.strip()] if args.layers else None
    buffers = {k: getattr(args, k) for k in ("a_buf_words", "b_buf_words", "outl_buf_words", "rowp_buf_beats",
                                             "colp_buf_beats")}
    rep = run_model(str(args.golden), image=args.image, engine_fields=fields, program=program, records=records,
                    waves=args.waves, progress=not args.no_progress, bus_bits=args.bus_bits,
                    mem_latency=args.mem_latency, buffers=buffers)
    md = report_markdown(rep)
    print(md)
    write_reports(rep, args.json, args.markdown)
    for path in (args.json, args.markdown):
        if path:
            print(f"wrote {path}")
    ok = rep["all_exact"] and rep["cycles_match"] and rep["bytes_match"]
    return 0 if ok else 1


def _add_model_parser(tsub) -> None:
    m = tsub.add_parser("model", help="run every GEMM of one image through the RTL accelerator top (fast bench)",
                        description="Run every GEMM of one image of golden vectors through the RTL accelerator "
                        "top (hw/accelerator.py, Verilator + a C++ AXI memory): bit-exact check per layer, RTL "
                        "cycles against `vitaccel estimate --dataflow accelerator`, bytes on the memory port.")
    add_program_arg(m, required=True, legacy_positional=True,
                    help="the integer program the golden vectors were exported from")
    m.add_argument("--golden", required=True, type=Path, help="directory written by `vitaccel export-golden`")
    m.add_argument("--image", type=int, default=0, help="image index (default 0)")
    m.add_argument("--layers", default=None, help="comma-separated golden records to run (default: all, in order)")
    add_engine_args(m)
    acc = m.add_argument_group("accelerator", "memory port and buffers (default: sized to the program)")
    acc.add_argument("--bus-bits", type=int, default=None, help="AXI4 data width (default max(128, 32 x cols))")
    acc.add_argument("--mem-latency", type=int, default=20, help="bench memory read latency in cycles (default 20)")
    for name, what in (("a-buf-words", "A buffer depth in bus words"), ("b-buf-words", "B buffer depth in bus words"),
                       ("outl-buf-words", "outlier buffer depth in bus words"),
                       ("rowp-buf-beats", "row-parameter buffer depth (row tiles)"),
                       ("colp-buf-beats", "column-parameter buffer depth (column blocks)")):
        acc.add_argument(f"--{name}", type=int, default=None, help=what)
    m.add_argument("--waves", action="store_true",
                   help="on a mismatch, run again with tracing and keep the waveform of the first mismatching layer")
    m.add_argument("--markdown", type=Path, default=None, metavar="PATH", help="write the Markdown report here")
    add_json_arg(m, help="write the JSON report here")
    m.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_build_dir_arg(m)
    m.set_defaults(func=_model)


def add_subcommands(sub) -> None:
    tb = sub.add_parser("tb", help="RTL testbenches (cocotb + Verilator)")
    tsub = tb.add_subparsers(dest="tb_command", metavar="TB_COMMAND")
    tb.set_defaults(func=lambda args: (tb.print_help(), 0)[1])
    r = tsub.add_parser("run", help="run golden-vector layers on the RTL layer engine")
    r.add_argument("golden_dir", type=Path, help="directory written by `vitaccel export-golden`")
    r.add_argument("--layer", required=True, action="append",
                   help="layer record name (see golden.json); repeat to run several layers in one simulation")
    r.add_argument("--image", type=int, default=0, help="image index (default 0)")
    add_engine_args(r)
    r.add_argument("--valid-prob", type=float, default=1.0, help="input valid probability (back-pressure)")
    r.add_argument("--ready-prob", type=float, default=1.0, help="output ready probability (back-pressure)")
    r.add_argument("--waves", action="store_true",
                   help="record a waveform (dump.fst; dump.vcd without liblz4-dev/zlib1g-dev)")
    add_json_arg(r, help="write the per-layer results here")
    add_build_dir_arg(r)
    r.set_defaults(func=_run)
    _add_model_parser(tsub)
