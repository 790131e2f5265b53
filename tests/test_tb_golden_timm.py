"""Golden vectors of a tiny randomly initialised timm ViT, run bit exact on the RTL layer engine.

The CI counterpart of ``benchmarks/rtl_deit_tiles.py`` (which uses the real DeiT-tiny checkpoint):
the same Python path -- ``golden.calibrate.calibrate_model`` (ADFQ-ViT W4A4 without AMO: POQ
per-patch codes with outliers on the q/k/v and FC1 inputs, Shift-Log2 codes on the FC2 input),
``golden.program.export_program``, ``golden.golden_vectors.write_golden`` (one image, through
``sim/``) -- then ``vitaccel tb run`` with several ``--layer`` and an engine ``--config`` runs
``q``, ``fc1`` and ``fc2`` of block 0 in one Verilator simulation of the 4 x 4 engine the other
RTL tests build (:data:`tb.engine_streams.SMALL_ENGINE`, max_k 64 = the FC2 depth of this model).

Checks: every output row equals the golden ``out`` (itself checked equal to ``sim/reference.py``),
and each cycle counter equals ``sim.schedule.layer_cycles`` for the layer's real per-tile outlier
counts.  The fast tests check ``vitaccel tb run``'s errors on the same vectors (no Verilator).
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from vitaccel.cli import main as vitaccel
from vitaccel.golden.golden_vectors import load_golden
from vitaccel.sim.schedule import layer_cycles
from vitaccel.sim import reference as ref
from vitaccel.tb.engine_streams import SMALL_ENGINE

LAYERS = ["blocks.0.attn.q", "blocks.0.mlp.fc1", "blocks.0.mlp.fc2"]


def _tiny_timm_vit():
    """Random timm ViT: 17 tokens, embed 16, MLP 64 (FC2 K = 64 fits SMALL_ENGINE), 2 heads."""
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    m = VisionTransformer(img_size=32, patch_size=8, embed_dim=16, depth=1, num_heads=2, mlp_ratio=4,
                          num_classes=10)
    with torch.no_grad():  # timm initialises these near zero; give them a trained-like magnitude
        m.cls_token.normal_(std=1.0)
        m.pos_embed.normal_(std=0.5)
    return m.eval()


@pytest.fixture(scope="module")
def golden_dir(tmp_path_factory):
    from vitaccel.golden.calibrate import calibrate_model
    from vitaccel.golden.golden_vectors import write_golden
    from vitaccel.golden.presets import ABLATIONS, preset
    from vitaccel.golden.program import export_program

    g = torch.Generator().manual_seed(1)
    x = torch.randn(9, 3, 32, 32, generator=g)
    # alpha 2 (instead of ADFQ's 5 / 10) so that the random model's LayerNorm outputs have POQ outliers
    cfg = preset("adfq", "w4a4", **ABLATIONS["no_amo"], alpha_qkv=2.0, alpha_fc1=2.0)
    qvit = calibrate_model(_tiny_timm_vit(), x[:8], cfg, "tiny-timm-vit", progress=False)
    out = tmp_path_factory.mktemp("tiny_timm_golden")
    write_golden(export_program(qvit), [x[8]], str(out), [0], progress=False)
    return out


def test_tb_run_rejects_bad_layer_and_engine(golden_dir, tmp_path, capsys):
    """Unknown record, a layer deeper than the engine's B buffer, a bad config file: exit 2, clear message."""
    rc = vitaccel(["tb", "run", str(golden_dir), "--layer", "blocks.0.mlp.fc9"])
    assert rc == 2 and "blocks.0.mlp.fc9" in capsys.readouterr().err
    small = tmp_path / "small.json"
    small.write_text(json.dumps({**SMALL_ENGINE.to_dict(), "max_k": 32}))
    rc = vitaccel(["tb", "run", str(golden_dir), "--layer", "blocks.0.mlp.fc2", "--config", str(small)])
    err = capsys.readouterr().err
    assert rc == 2 and "blocks.0.mlp.fc2" in err and "max_k = 32" in err, err
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"rows": 4, "lanes": 3}))
    rc = vitaccel(["tb", "run", str(golden_dir), "--layer", "blocks.0.attn.q", "--config", str(bad)])
    err = capsys.readouterr().err
    assert rc == 2 and "lanes" in err, err


@pytest.mark.slow
def test_tiny_timm_golden_layers_bit_exact_in_rtl(golden_dir, tmp_path):
    vec = load_golden(str(golden_dir))
    assert vec["blocks.0.mlp.fc2"]["spec"].a_kind == "shiftlog2"          # SLQ codes on the FC2 input
    assert len(vec["blocks.0.attn.q"]["outliers"][0]) > 0                    # POQ outliers on real activations
    assert len(vec["blocks.0.mlp.fc1"]["outliers"][0]) > 0
    cfg_file = tmp_path / "engine.json"
    cfg_file.write_text(json.dumps(SMALL_ENGINE.to_dict()))
    out = tmp_path / "results.json"
    argv = ["tb", "run", str(golden_dir), "--config", str(cfg_file), "--valid-prob", "0.85", "--ready-prob", "0.85",
            "--json", str(out)]
    for layer in LAYERS:
        argv += ["--layer", layer]
    assert vitaccel(argv) == 0
    results = json.loads(out.read_text())
    assert [r["layer"] for r in results] == LAYERS
    cfg = SMALL_ENGINE
    for res in results:
        rec = vec[res["layer"]]
        M, K = rec["a_codes"].shape[1:]
        N = np.asarray(rec["out"][0]).shape[1]
        o = np.asarray(rec["outliers"][0], np.int64).reshape(-1, 3)
        counts = [int(c) for c in ref.outliers_per_tile(o, M, cfg.rows)]
        assert res["engine"] == cfg.to_dict()
        assert res["shape"] == [M, K, N]
        # one output row per (row, column block), each compared lane by lane with the golden out
        assert res["rows"] == M * -(-N // cfg.cols), res["layer"]
        assert res["outliers_per_tile"] == counts
        assert res["cycles"] == layer_cycles(cfg, M, K, N, counts).total, res["layer"]


def test_engine_config_for_layers_covers_every_layer(golden_dir):
    """One default engine for layers of different depth: largest K as max_k, widest accumulator."""
    from vitaccel.sim.engine_config import check_layer_acc
    from vitaccel.tb.cli import engine_config_for, engine_config_for_layers

    vec = load_golden(str(golden_dir))
    layers = [(vec[n]["spec"], vec[n]["a_codes"].shape[2]) for n in LAYERS]
    cfg = engine_config_for_layers(layers, rows=4, cols=4)
    assert cfg.max_k == max(k for _s, k in layers) == 64
    assert engine_config_for_layers(layers[:1], 4, 4) == engine_config_for(*layers[0], 4, 4)
    for spec, k in layers:
        check_layer_acc(cfg, k, spec.a_kind, spec.a_bits, spec.b_bits, int(np.max(spec.za)), spec.fo,
                        a_base=spec.a_base, m0=spec.m0, m1=spec.m1)
