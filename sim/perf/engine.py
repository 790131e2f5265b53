"""Thin adapter around the engine's exact cycle model, :mod:`hw.schedule` (owned by the RTL engine).

The estimator never computes engine cycles itself: every per-GEMM compute figure comes from
``hw.schedule.layer_cycles(cfg, M, K, N, outliers_per_tile)``, the same function the RTL testbenches
compare measured cycles against. This module only builds the :class:`hw.config.EngineConfig` for a
layer's bit widths and memoizes the calls (a ViT has a few distinct shapes, repeated per block).
"""
from __future__ import annotations

import dataclasses
import functools


class EngineModelMissing(RuntimeError):
    """``hw.schedule`` / ``hw.config`` are not importable."""


def _modules():
    try:
        from hw import config as hw_config
        from hw import schedule as hw_schedule
    except ImportError as exc:  # pragma: no cover - depends on the checkout state
        raise EngineModelMissing(
            f"the engine cycle model hw/schedule.py + hw/config.py is not available ({exc}); "
            "use --dataflow os|ws|is for the generic SCALE-Sim model") from exc
    return hw_config, hw_schedule


def build_config(rows: int, cols: int, a_bits: int, b_bits: int, max_k: int, *, acc_bits: int | None = None,
                 outlier_capacity: int | None = None, outlier_lanes: int | None = None):
    """A :class:`hw.config.EngineConfig` (``None`` keeps a field's default).

    ``a_bits`` / ``b_bits`` are the *widest* codes the build accepts (narrower layers select their
    width at run time, which does not change the schedule); ``max_k`` the B bank depth.
    Raises ``hw.config.ConfigError`` (a ``ValueError``) for an impossible configuration.
    """
    hw_config, _ = _modules()
    kw = dict(rows=rows, cols=cols, a_bits=a_bits, b_bits=b_bits, max_k=max_k)
    for key, val in (("acc_bits", acc_bits), ("outlier_capacity", outlier_capacity),
                     ("outlier_lanes", outlier_lanes)):
        if val is not None:
            kw[key] = val
    return hw_config.EngineConfig(**kw)


@functools.lru_cache(maxsize=4096)
def layer_cycles(cfg, M: int, K: int, N: int, outliers_per_tile):
    """``hw.schedule.layer_cycles`` for one GEMM instance (memoized; ``outliers_per_tile`` an int or tuple)."""
    _, hw_schedule = _modules()
    return hw_schedule.layer_cycles(cfg, M, K, N, outliers_per_tile)


def breakdown_dict(bd) -> dict:
    """A ``CycleBreakdown`` as a plain dict."""
    if dataclasses.is_dataclass(bd):
        return dataclasses.asdict(bd)
    return {k: getattr(bd, k) for k in ("total", "compute", "fill", "drain", "outlier", "requant", "overhead",
                                        "n_tiles", "macs", "utilisation") if hasattr(bd, k)}
