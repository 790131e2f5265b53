"""Tests of the engine's cycle model (sim/schedule.py) and configuration checks (sim/engine_config.py).

The RTL equality ``cycle counter == layer_cycles`` is tested in tests/test_rtl_engine.py; here the
closed-form formulas are checked against hand-computed values.
"""
from __future__ import annotations

import pytest

from vitaccel.sim.engine_config import ConfigError, EngineConfig, check_layer_acc, check_layer_shape
from vitaccel.sim.schedule import layer_cycles, tile_cycles, tile_order, window_cycles


def test_single_tile_hand_computed():
    cfg = EngineConfig(rows=4, cols=4, acc_bits=40)
    # fill K=10, one window W=max(10, 0+4)=10, drain 4 + 3 rows + 7, requant 14 -> 10+10+14+14
    assert tile_cycles(cfg, 3, 10, 4) == 48
    b = layer_cycles(cfg, 3, 10, 4)
    assert (b.fill, b.compute, b.overhead, b.outlier, b.drain, b.requant) == (10, 10, 0, 0, 14, 14)
    assert b.total == b.fill + b.compute + b.overhead + b.outlier + b.drain + b.requant


def test_windows_small_k_and_outliers():
    cfg = EngineConfig(rows=4, cols=4, acc_bits=40, outlier_lanes=2)
    # DRAIN_OFFSET = 4 (MAC_LATENCY 5: decoder, broadcast, partial sums, product, accumulator),
    # outlier_latency 4 (8-bit B codes: DSP product stages), 3 with 4-bit B codes: never longer than
    # DRAIN_OFFSET, so the same windows for both
    assert window_cycles(cfg, 10, 4, 0) == 10           # drain (4 rows + 4) hidden under K
    assert window_cycles(cfg, 3, 4, 0) == 8             # a = 1 -> 1 + 3 = 4; drain needs 4 + 4
    assert window_cycles(cfg, 10, 4, 9) == 13           # 5 outlier beats after the drain: 4 + 4 + 5
    assert cfg.outlier_latency == 4 and cfg.replace(b_bits=4).outlier_latency == 3
    assert window_cycles(cfg.replace(b_bits=4), 10, 4, 9) == 13
    assert window_cycles(cfg, 1, 0, 0) == 4             # first window lasts at least DRAIN_OFFSET
    # K <= 2: the fill still lasts FILL_MIN = 3 cycles (descriptor read, beat count registered, the
    # controller's second precompute stage); 3 + W0 = max(2, 0 + 4) + drain 4 + 4 + 7 + requant 14
    assert layer_cycles(cfg, 4, 2, 4).fill == 3 and layer_cycles(cfg, 4, 2, 4).total == 3 + 4 + 15 + 14
    assert layer_cycles(cfg, 4, 1, 4).fill == 3 and layer_cycles(cfg, 4, 3, 4).fill == 3
    # two tiles of 4 rows, K = 3: fill 3, W0 = 4, W1 = 8, drain 4 + 4 + 7, requant 14
    assert layer_cycles(cfg, 8, 3, 4).total == 3 + 4 + 8 + 15 + 14
    # per-row-tile outlier counts: only the second tile pays (13 instead of 10)
    b = layer_cycles(cfg, 8, 10, 4, [0, 9])
    assert b.outlier == 3 and b.total == layer_cycles(cfg, 8, 10, 4).total + 3


def test_shared_requantisers_stretch_the_drain():
    """``requant_share`` S: the drain of a tile lasts S * m cycles (hand-computed windows)."""
    cfg = EngineConfig(rows=4, cols=4, acc_bits=40, outlier_lanes=2, requant_share=2)
    assert window_cycles(cfg, 20, 4, 0) == 20           # drain 2 * 4 + 4 = 12 still hidden under K = 20
    assert window_cycles(cfg, 4, 4, 0) == 12            # a = 8 - 4 = 4 -> 4 + 4 = 8; drain needs 8 + 4
    assert window_cycles(cfg, 20, 4, 9) == 20           # 5 outlier beats after the drain: 8 + 4 + 5 = 17
    assert window_cycles(cfg, 12, 4, 9) == 17
    # two tiles of 4 rows, K = 4: fill 4, W0 = 4, W1 = 12, drain 4 + 8 + 7 + 1 (the gather stage D0
    # of a shared build), requant 14 (unshared: 45)
    assert layer_cycles(cfg, 8, 4, 4).total == 4 + 4 + 12 + 20 + 14
    assert layer_cycles(EngineConfig(rows=4, cols=4, acc_bits=40), 8, 4, 4).total == 4 + 4 + 8 + 15 + 14
    # DeiT-tiny shapes on 16 x 16: K >= 2 * 16 + 4 keeps every window at K with S = 2, only the last
    # tile's drain (5 of 197 rows) is 5 cycles longer, plus the gather stage's cycle; the K = 64 attention matmul pays with S = 4
    # (4 * 16 + 4 = 68 > 64: 4 cycles after each of the 12 full row tiles of its 13 column blocks)
    plain, s2, s4 = (EngineConfig(rows=16, cols=16, requant_share=s) for s in (1, 2, 4))
    for M, K, N in [(197, 192, 576), (197, 768, 192), (197, 64, 197), (197, 197, 64)]:
        assert layer_cycles(s2, M, K, N).total == layer_cycles(plain, M, K, N).total + 5 + 1
    assert layer_cycles(plain, 197, 64, 197).overhead == 0
    assert layer_cycles(s4, 197, 64, 197).overhead == 12 * 13 * 4


def test_tile_order_column_blocks_outer():
    cfg = EngineConfig(rows=2, cols=3, acc_bits=40)
    assert tile_order(cfg, 3, 4) == [(0, 2, 0, 3), (2, 1, 0, 3), (0, 2, 3, 1), (2, 1, 3, 1)]


def test_deit_tiles_reach_90_percent():
    cfg = EngineConfig(rows=16, cols=16)
    assert layer_cycles(cfg, 197, 192, 576).utilisation >= 0.90
    assert layer_cycles(cfg, 197, 768, 192).utilisation >= 0.90
    # 197 = 12 * 16 + 5 rows: the partial row tile bounds utilisation by 197 / 208
    assert layer_cycles(cfg, 197, 192, 576).utilisation <= 197 / 208


def test_bad_configs_and_layers():
    with pytest.raises(ConfigError, match="rows"):
        EngineConfig(rows=0)
    with pytest.raises(ConfigError, match="a_bits"):
        EngineConfig(a_bits=5)
    with pytest.raises(ConfigError, match="acc_bits"):
        EngineConfig(acc_bits=12)
    with pytest.raises(ConfigError, match="outlier_lanes"):
        EngineConfig(outlier_lanes=3)
    for share in (0, 3, 32):                       # not a power of two / does not divide cols = 16
        with pytest.raises(ConfigError, match="requant_share"):
            EngineConfig(requant_share=share)
    cfg = EngineConfig(rows=4, cols=4, acc_bits=24, a_bits=4, b_bits=4, max_k=256)
    with pytest.raises(ConfigError, match="K"):
        check_layer_shape(cfg, 4, 0, 4)
    with pytest.raises(ConfigError, match="max_k"):
        check_layer_shape(cfg, 4, 300, 4)
    with pytest.raises(ConfigError, match="tile"):
        tile_cycles(cfg, 5, 8, 4)
    # uniform W4A4, K = 192 needs 17 bits (docs/datapath.md section 6 table): fits 24
    assert check_layer_acc(cfg, 192, "uniform", 4, 4, 15, 0) == 17
    # shiftlog2 base 2 at K = 256 needs more than 24 bits
    with pytest.raises(ConfigError, match="accumulator"):
        check_layer_acc(cfg, 256, "shiftlog2", 4, 4, 1 << 15, 0)
    with pytest.raises(ConfigError, match="exceed"):
        check_layer_acc(cfg, 16, "uniform", 8, 4, 0, 0)
