"""Thin adapter around the engine's exact cycle model, :mod:`sim.schedule` (shared with the RTL engine and its benches).

The estimator never computes engine cycles itself: every per-GEMM compute figure comes from
``sim.schedule.layer_cycles(cfg, M, K, N, outliers_per_tile)``, the same function the RTL testbenches
compare measured cycles against. This module only builds the :class:`sim.engine_config.EngineConfig` for a
layer's bit widths and memoizes the calls (a ViT has a few distinct shapes, repeated per block).
"""
from __future__ import annotations

import dataclasses
import functools

from vitaccel.sim import engine_config, schedule


def build_config(rows: int, cols: int, a_bits: int, b_bits: int, max_k: int, *, acc_bits: int | None = None,
                 outlier_capacity: int | None = None, outlier_lanes: int | None = None,
                 requant_share: int | None = None):
    """A :class:`sim.engine_config.EngineConfig` (``None`` keeps a field's default).

    ``a_bits`` / ``b_bits`` are the *widest* codes the build accepts (narrower layers select their
    width at run time, which does not change the schedule); ``max_k`` the B bank depth.
    Raises ``sim.engine_config.ConfigError`` (a ``ValueError``) for an impossible configuration.
    """
    kw = dict(rows=rows, cols=cols, a_bits=a_bits, b_bits=b_bits, max_k=max_k)
    for key, val in (("acc_bits", acc_bits), ("outlier_capacity", outlier_capacity),
                     ("outlier_lanes", outlier_lanes), ("requant_share", requant_share)):
        if val is not None:
            kw[key] = val
    return engine_config.EngineConfig(**kw)


@functools.lru_cache(maxsize=4096)
def layer_cycles(cfg, M: int, K: int, N: int, outliers_per_tile):
    """``sim.schedule.layer_cycles`` for one GEMM instance (memoized; ``outliers_per_tile`` an int or tuple)."""
    return schedule.layer_cycles(cfg, M, K, N, outliers_per_tile)


def breakdown_dict(bd) -> dict:
    """A ``CycleBreakdown`` as a plain dict."""
    if dataclasses.is_dataclass(bd):
        return dataclasses.asdict(bd)
    return {k: getattr(bd, k) for k in ("total", "compute", "fill", "drain", "outlier", "requant", "overhead",
                                        "n_tiles", "macs", "utilisation") if hasattr(bd, k)}
