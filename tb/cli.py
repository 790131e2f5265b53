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

__all__ = ["add_subcommands", "run_golden_layer", "engine_config_for"]

#: Verilator option needed for the engine's size (see tests/test_rtl_engine.py).
BUILD_ARGS = ["--output-split", "0"]


def engine_config_for(spec, k: int, rows: int, cols: int, lanes: int = 1):
    """Smallest max-width engine that runs ``spec`` with ``K = k`` on a ``rows x cols`` array."""
    from hw.config import EngineConfig
    need = spec.acc_bits_required(k)
    cap = int(spec.outlier_capacity or 0) if spec.fo else 0
    return EngineConfig(rows=rows, cols=cols, a_bits=8, b_bits=8, acc_bits=max(need, spec.acc_bits, 31),
                        outlier_capacity=max(cap, 1) if spec.fo else 0, outlier_lanes=lanes,
                        max_k=max(k, 2))


def run_golden_layer(golden_dir: str, layer: str, *, image: int = 0, rows: int = 4, cols: int = 4,
                     valid_prob: float = 1.0, ready_prob: float = 1.0, waves: bool = False) -> dict:
    """Run one golden layer on the engine; return ``{cycles, rows, ...}``; raise on any mismatch."""
    from golden.cli import UserError
    from golden.golden_vectors import load_golden
    from hw.engine import build_engine
    from tb.engine_streams import case_from_spec
    from tb.runner import run_cocotb, verilog_for

    vec = load_golden(golden_dir)
    if layer not in vec:
        raise UserError(f"layer {layer!r} not in {golden_dir}; layers: {', '.join(sorted(vec))}")
    rec = vec[layer]
    n_img = rec["a_codes"].shape[0]
    if not 0 <= image < n_img:
        raise UserError(f"image {image} out of range (the vectors hold {n_img} images)")
    spec = rec["spec"]
    q = rec["a_codes"][image]
    b = rec["b"][image] if rec["b"] is not None else spec.b
    o = rec["outliers"][image]
    cfg = engine_config_for(spec, q.shape[1], rows, cols)
    case = case_from_spec(cfg, spec, q, o, b=np.asarray(b))
    gold = np.asarray(rec["out"][image])
    # the golden vectors and sim/reference.py must agree before the RTL is compared with them
    for e in case["expected"]:
        g = [int(x) for x in gold[e["row"], e["col"]:e["col"] + e["n"]]]
        if g != e["data"]:
            raise UserError(f"golden out of {layer} row {e['row']} disagrees with sim/reference.py")
    case.update(valid_prob=valid_prob, ready_prob=ready_prob)
    v = verilog_for(build_engine, "layer_engine", cfg.to_dict())
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "cycles.json"
        run_dir = run_cocotb("layer_engine", [v], "tb.test_engine", build_args=BUILD_ARGS, waves=waves,
                             data={"cols": cfg.cols, "cases": [case], "report": str(report)})
        res = json.loads(report.read_text())[0]
    res.update(layer=layer, image=image, run_dir=str(run_dir), engine=cfg.to_dict(),
               model_cycles=case["cycles"], utilisation=case["utilisation"])
    return res


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
