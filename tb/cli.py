"""``vitaccel tb run GOLDEN_DIR --layer NAME``: run one golden-vector layer on the RTL layer engine.

The layer's ``LayerSpec``, A codes, outliers (and run-time B for ``qk`` / ``av``) come from
``golden.golden_vectors.load_golden``; the engine (Verilator build of :class:`hw.engine.LayerEngine`)
must reproduce the golden ``out`` exactly and its cycle counter must equal :mod:`hw.schedule`.
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

__all__ = ["add_subcommands", "run_golden_layer", "run_golden_layers", "engine_config_for", "cycle_record"]


def engine_config_for(spec, k: int, rows: int, cols: int, lanes: int = 1):
    """Smallest max-width engine that runs ``spec`` with ``K = k`` on a ``rows x cols`` array."""
    from hw.config import EngineConfig
    need = spec.acc_bits_required(k)
    cap = int(spec.outlier_capacity or 0) if spec.fo else 0
    return EngineConfig(rows=rows, cols=cols, a_bits=8, b_bits=8, acc_bits=max(need, spec.acc_bits, 31),
                        outlier_capacity=max(cap, 1) if spec.fo else 0, outlier_lanes=lanes,
                        max_k=max(k, 2))


def cycle_record(cfg, shape, cycles: int, outliers_per_tile=0, name: str | None = None) -> dict:
    """One measured-cycle record ``{rows, cols, M, K, N, cycles, outliers_per_tile, <EngineConfig
    fields>}`` (the format ``tests/test_estimate.py`` replays through the estimator)."""
    M, K, N = (int(x) for x in shape)
    rec = {"name": name, **cfg.to_dict(), "M": M, "K": K, "N": N, "cycles": int(cycles)}
    o = outliers_per_tile
    rec["outliers_per_tile"] = int(o) if np.isscalar(o) else [int(x) for x in o]
    return rec


def _golden_case(vec, golden_dir, layer: str, image: int, cfg, rows: int, cols: int):
    from golden.cli import UserError
    from sim import reference as ref
    from tb.engine_streams import case_from_spec

    if layer not in vec:
        raise UserError(f"layer {layer!r} not in {golden_dir}; layers: {', '.join(sorted(vec))}")
    rec = vec[layer]
    n_img = rec["a_codes"].shape[0]
    if not 0 <= image < n_img:
        raise UserError(f"image {image} out of range (the vectors hold {n_img} images)")
    spec = rec["spec"]
    q = rec["a_codes"][image]
    b = rec["b"][image] if rec["b"] is not None else spec.b
    o = np.asarray(rec["outliers"][image], np.int64).reshape(-1, 3)
    if cfg is None:
        cfg = engine_config_for(spec, q.shape[1], rows, cols)
    case = case_from_spec(cfg, spec, q, o, b=np.asarray(b))
    gold = np.asarray(rec["out"][image])
    # the golden vectors and sim/reference.py must agree before the RTL is compared with them
    for e in case["expected"]:
        g = [int(x) for x in gold[e["row"], e["col"]:e["col"] + e["n"]]]
        if g != e["data"]:
            raise UserError(f"golden out of {layer} row {e['row']} disagrees with sim/reference.py")
    M = q.shape[0]
    counts = ref.outliers_per_tile(o, M, cfg.rows) if len(o) else np.zeros(-(-M // cfg.rows), np.int64)
    return cfg, case, [int(c) for c in counts]


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
    cfg : hw.config.EngineConfig, optional
        Engine to use for every layer (e.g. an engine that is already built); default: the smallest
        engine per layer (:func:`engine_config_for`; then every layer must need the same engine).

    Each result holds the measured ``cycles`` (equal to :mod:`hw.schedule`, asserted by the
    testbench), ``rows`` (exact output rows), ``shape``, ``model_cycles``, ``utilisation``,
    ``outliers_per_tile`` and ``record`` (:func:`cycle_record`).  Any mismatch raises.
    """
    from golden.cli import UserError
    from golden.golden_vectors import load_golden
    from hw.engine import build_engine
    from tb.runner import run_cocotb, verilog_for

    vec = load_golden(golden_dir)
    cases, counts, cfgs = [], [], []
    for layer in layers:
        c, case, cnt = _golden_case(vec, golden_dir, layer, image, cfg, rows, cols)
        case.update(valid_prob=valid_prob, ready_prob=ready_prob)
        cases.append(case)
        counts.append(cnt)
        cfgs.append(c)
    if any(c != cfgs[0] for c in cfgs):
        raise UserError("the layers need different engine builds; run them one by one or pass cfg")
    cfg = cfgs[0]
    v = verilog_for(build_engine, "layer_engine", cfg.to_dict())
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "cycles.json"
        run_dir = run_cocotb("layer_engine", [v], "tb.test_engine", waves=waves, seed=seed,
                             data={"cols": cfg.cols, "seed": seed, "cases": cases, "report": str(report)})
        results = json.loads(report.read_text())
    if len(results) != len(cases):
        raise AssertionError(f"testbench reported {len(results)} of {len(cases)} layers")
    for res, case, cnt, layer in zip(results, cases, counts, layers):
        res.update(layer=layer, image=image, run_dir=str(run_dir), engine=cfg.to_dict(),
                   model_cycles=case["cycles"], utilisation=case["utilisation"], outliers_per_tile=cnt,
                   record=cycle_record(cfg, case["shape"], res["cycles"], cnt, name=layer))
    return results


def run_golden_layer(golden_dir: str, layer: str, *, image: int = 0, rows: int = 4, cols: int = 4,
                     valid_prob: float = 1.0, ready_prob: float = 1.0, waves: bool = False, cfg=None) -> dict:
    """Run one golden layer on the engine; return ``{cycles, rows, ...}``; raise on any mismatch."""
    return run_golden_layers(golden_dir, [layer], image=image, rows=rows, cols=cols, cfg=cfg,
                             valid_prob=valid_prob, ready_prob=ready_prob, waves=waves)[0]


def _run(args) -> int:
    res = run_golden_layer(str(args.golden_dir), args.layer, image=args.image, rows=args.rows, cols=args.cols,
                           valid_prob=args.valid_prob, ready_prob=args.ready_prob, waves=args.waves)
    M, K, N = res["shape"]
    print(f"{res['layer']} (image {res['image']}, {M}x{K}x{N}) on a {args.rows}x{args.cols} engine: "
          f"{res['rows']} output rows exact, {res['cycles']} cycles (hw/schedule.py: {res['model_cycles']}), "
          f"MAC utilisation {res['utilisation']:.3f}; run dir {res['run_dir']}")
    return 0


def add_subcommands(sub) -> None:
    tb = sub.add_parser("tb", help="RTL testbenches (cocotb + Verilator)")
    tsub = tb.add_subparsers(dest="tb_command", metavar="TB_COMMAND")
    tb.set_defaults(func=lambda args: (tb.print_help(), 0)[1])
    r = tsub.add_parser("run", help="run one golden-vector layer on the RTL layer engine")
    r.add_argument("golden_dir", type=Path, help="directory written by `vitaccel export-golden`")
    r.add_argument("--layer", required=True, help="layer record name (see golden.json)")
    r.add_argument("--image", type=int, default=0, help="image index (default 0)")
    r.add_argument("--rows", type=int, default=4, help="engine rows (default 4)")
    r.add_argument("--cols", type=int, default=4, help="engine columns (default 4)")
    r.add_argument("--valid-prob", type=float, default=1.0, help="input valid probability (back-pressure)")
    r.add_argument("--ready-prob", type=float, default=1.0, help="output ready probability (back-pressure)")
    r.add_argument("--waves", action="store_true", help="record an FST/VCD waveform")
    r.set_defaults(func=_run)
