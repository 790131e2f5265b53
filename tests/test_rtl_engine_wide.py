"""RTL test of a 16-column layer engine (its own file so that ``pytest -n 2 --dist loadfile`` builds it
beside the other engines of tests/test_rtl_engine.py, not after them)."""
from __future__ import annotations

import numpy as np
import pytest
from engine_helpers import bp as _bp
from engine_helpers import run as _run

from vitaccel.sim.engine_config import EngineConfig
from vitaccel.tb.engine_streams import random_layer


@pytest.mark.slow
def test_engine_16_columns_ecp5_form(tmp_path):
    """2 x 16 engine, ``requant_share`` 4, in its ECP5 form: the operand decoder's four kept register
    copies of the A column (``EngineConfig.a_copies``, one per four columns), the drain's gather stage
    and the registered correction read addresses (issue #15, session 37) with the project's
    ``TRELLIS_FF`` / ``MULT18X18D`` models: exact rows and cycles, with outliers and random streams."""
    from vitaccel.hw.dsp import ECP5_DSP

    cfg = EngineConfig(rows=2, cols=16, a_bits=4, b_bits=4, acc_bits=24, outlier_capacity=4, outlier_lanes=1,
                       max_k=24, requant_share=4)
    assert cfg.a_copies == 4 and cfg.gather_stage
    rng = np.random.default_rng(16)
    cases = [
        _bp(random_layer(cfg, rng, 5, 20, 23, a_bits=4, b_bits=4, fo=2, outliers_per_tile=2), 0.8, 0.7),
        _bp(random_layer(cfg, rng, 3, 3, 16, a_kind="three_region", a_bits=4, b_bits=4), 1.0, 1.0),
        _bp(random_layer(cfg, rng, 4, 9, 30, a_kind="log2", a_bits=4, b_bits=4, out_fmt="ucode", out_bits=4),
            0.6, 0.5),
    ]
    _run(cfg, cases, tmp_path, seed=13, platform=ECP5_DSP)
