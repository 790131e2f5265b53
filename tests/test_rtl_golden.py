"""Golden-vector driven RTL layer test: front end -> integer program -> golden vectors -> layer engine.

The tiny embedded model ``vitaccel-digits`` (no ``../shared``) is calibrated through the real CLI
(``vitaccel calibrate``, ADFQ-ViT with POQ outliers and Shift-Log2 post-GELU codes, AMO off to keep it
fast) and its golden vectors are exported (``vitaccel export-golden``, one image): the session fixture
``digits_golden`` of tests/conftest.py, shared with tests/test_rtl_model.py.  Then one linear
layer with the outlier path (``FO = 2``), the ``q`` projection, one ``q @ k^T`` and one ``attn @ v``
matmul (log2 A codes) run on the 4 x 4 RTL layer engine the other engine tests build
(:data:`tb.engine_streams.SMALL_ENGINE`, so no extra Verilator build).

Checks: every output row equals the golden ``out`` (which itself must equal ``sim/reference.py``,
checked in :func:`tb.cli.run_golden_layers`), and the RTL cycle counter equals
``sim.schedule.layer_cycles`` for the layer's real per-tile outlier counts.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from vitaccel.golden.golden_vectors import load_golden
from vitaccel.sim.schedule import layer_cycles
from vitaccel.sim import reference as ref
from vitaccel.tb.cli import run_golden_layers
from vitaccel.tb.engine_streams import SMALL_ENGINE


@pytest.mark.slow
def test_golden_layers_on_rtl_engine(tmp_path, digits_golden):
    golden_dir = digits_golden[1]
    vec = load_golden(golden_dir)
    cfg = SMALL_ENGINE
    # the linear layer with the outlier path that has the most outliers on image 0 (K must fit max_k)
    fo_layers = [n for n, r in vec.items() if r["spec"].op == "linear" and r["spec"].fo
                 and r["a_codes"].shape[2] <= cfg.max_k]
    assert fo_layers, "ADFQ program without an outlier (POQ) layer"
    fo_layer = max(fo_layers, key=lambda n: (len(vec[n]["outliers"][0]), n))
    layers = list(dict.fromkeys([fo_layer, "blocks.0.attn.q", "blocks.0.attn.qk.h0", "blocks.0.attn.av.h0"]))
    kinds = {vec[n]["spec"].op for n in layers}
    assert kinds == {"linear", "qk", "av"}, kinds
    assert vec["blocks.0.attn.av.h0"]["spec"].a_kind == "log2"

    results = run_golden_layers(golden_dir, layers, cfg=cfg, valid_prob=0.85, ready_prob=0.85, seed=7)

    records = []
    for name, res in zip(layers, results):
        rec = vec[name]
        M, K = rec["a_codes"].shape[1:]
        N = np.asarray(rec["out"][0]).shape[1]
        o = np.asarray(rec["outliers"][0], np.int64).reshape(-1, 3)
        counts = [int(c) for c in ref.outliers_per_tile(o, M, cfg.rows)] if len(o) else 0
        assert res["shape"] == [M, K, N], name
        # one output row per (row, column block), each compared lane by lane with the golden out
        assert res["rows"] == M * -(-N // cfg.cols), name
        assert res["cycles"] == layer_cycles(cfg, M, K, N, counts).total, name
        records.append(res["record"])
    (tmp_path / "engine_cycles_golden.json").write_text(json.dumps({"records": records}, indent=1))
    print({r["name"]: r["cycles"] for r in records})
