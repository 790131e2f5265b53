"""Exact cycle model of the layer engine (:mod:`hw.engine`), in pure Python.

The engine is a statically scheduled machine with a global stall: every cycle in which a stream the
schedule needs is not ready (no input beat buffered, output FIFO possibly full) freezes the whole
engine, and the engine's cycle counter counts only the cycles in which it advances (the stall is a
registered decision, :mod:`hw.stall`; it never changes the count).  The counter therefore equals the
numbers below for any stream timing; with ideal streams the wall-clock time is one cycle more (the
engine stalls in the cycle after it accepts the command, while its registered enable is computed).

Schedule (output-stationary ``R x C`` array, ``R = cfg.rows``, ``C = cfg.cols``)
--------------------------------------------------------------------------------
The output is tiled into ``R x C`` tiles; tiles are visited column block by column block
(``nb = 0 .. ceil(N/C)-1`` outer), row tile by row tile (``mb = 0 .. ceil(M/R)-1`` inner), so a B block
(``K x C`` codes) is loaded once and reused by every row tile.  Tile ``s`` has ``m_s <= R`` rows.

1. **Fill** (once per layer): ``K`` cycles loading B block 0 into the B buffer
   (one B row per cycle) while the first tile descriptor is read, ``fill = max(K, FILL_MIN)`` (``FILL_MIN = 3``).
2. **Windows**: one window of ``W_s`` cycles per tile ``s``.  In window ``s``

   * the MAC array issues ``K`` operand columns of tile ``s`` (one A beat = ``R`` codes per cycle)
     starting at cycle ``a_s = max(0, m_{s-1} - K)``;
   * the drain of tile ``s-1`` issues one output row per ``S = requant_share`` cycles (one group of
     ``C / S`` columns per cycle) at cycles ``DRAIN_OFFSET .. DRAIN_OFFSET + d_{s-1} - 1``,
     ``d_{s-1} = S * m_{s-1}`` (zero-point correction, outliers, requantiser);
   * the outlier unit consumes the ``n_s`` outliers of tile ``s`` (``nb_s = ceil(n_s / L)`` beats of
     ``L = outlier_lanes`` entries) starting at cycle ``DRAIN_OFFSET + d_{s-1}``;
   * the B loader fills the other B bank with the next column block (first window of a block).

   With ``m_{-1} = 0`` and ``a_s = max(0, d_{s-1} - K)``::

       W_s = max(a_s + K,  d_{s-1} + DRAIN_OFFSET,
                 d_{s-1} + nb_s + max(DRAIN_OFFSET, outlier_latency)  if nb_s > 0)

   so for every layer with ``K >= S * R + DRAIN_OFFSET`` and ``nb_s + DRAIN_OFFSET <= K - S * R``,
   ``W_s = K``: drain, requantisation, outliers and B loading are completely hidden.
   (``DRAIN_OFFSET = 4``, ``outlier_latency`` 3 (B codes up to 4 bits) or 4, ``PRE_REQUANT_LATENCY = 7``,
   ``REQUANT_LATENCY = 14``, see :mod:`sim.engine_config`.)
3. **Drain** of the last tile: ``DRAIN_OFFSET + S * m_last + P`` cycles plus
   ``requant = REQUANT_LATENCY`` cycles, ``P = EngineConfig.pre_requant_latency``
   (``PRE_REQUANT_LATENCY``, one more with ``S > 1``: the drain's gather stage); the counter
   stops in the cycle the last output row enters the output FIFO.

``total = fill + sum_s W_s + drain + requant``; it is split as ``compute = n_tiles * K``,
``overhead = sum_s (W_s^0 - K)`` (window stretch when ``K`` is small; ``W_s^0`` is ``W_s`` with no
outliers) and ``outlier = sum_s (W_s - W_s^0)``.  ``utilisation = M*K*N / (total * R * C)``.

Outliers are counted per *row tile* (``R`` consecutive rows); every column block sees the same row
tiles again, so the outlier list of a row tile is streamed once per column block.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

from .engine_config import (DRAIN_OFFSET, FILL_MIN, ConfigError, EngineConfig,
                     check_layer_shape)

__all__ = ["CycleBreakdown", "tile_cycles", "layer_cycles", "window_cycles", "tile_order"]


@dataclass(frozen=True)
class CycleBreakdown:
    """Cycle count of one layer on the engine (see the module docstring for the formulas).

    ``total == fill + compute + overhead + outlier + drain + requant``.
    """

    total: int
    compute: int
    fill: int
    drain: int
    outlier: int
    requant: int
    overhead: int
    n_tiles: int
    macs: int
    utilisation: float

    def to_dict(self) -> dict:
        return asdict(self)


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def tile_order(cfg: EngineConfig, m: int, n: int) -> list[tuple[int, int, int, int]]:
    """The engine's tile order: a list of ``(row0, rows, col0, cols)``, column blocks outer."""
    out = []
    for c0 in range(0, n, cfg.cols):
        for r0 in range(0, m, cfg.rows):
            out.append((r0, min(cfg.rows, m - r0), c0, min(cfg.cols, n - c0)))
    return out


def window_cycles(cfg: EngineConfig, k: int, m_prev: int, n_outliers: int) -> int:
    """Length ``W_s`` of a tile window: ``k`` reduction length, ``m_prev`` rows of the previous tile
    (0 for the first tile), ``n_outliers`` outliers of this tile."""
    d = cfg.requant_share * m_prev          # drain cycles of the previous tile
    a = max(0, d - k)
    w = max(a + k, d + DRAIN_OFFSET)
    nb = _ceil_div(n_outliers, cfg.outlier_lanes)
    if nb:
        w = max(w, d + DRAIN_OFFSET + nb, d + nb + cfg.outlier_latency)
    return w


def _per_row_tile(cfg: EngineConfig, m: int, outliers_per_tile) -> list[int]:
    mt = _ceil_div(m, cfg.rows)
    if isinstance(outliers_per_tile, (int,)) and not isinstance(outliers_per_tile, bool):
        counts = [int(outliers_per_tile)] * mt
    else:
        counts = [int(c) for c in outliers_per_tile]
        if len(counts) != mt:
            raise ConfigError(f"outliers_per_tile has {len(counts)} entries; the layer has {mt} row tiles "
                              f"of {cfg.rows} rows")
    if any(c < 0 for c in counts):
        raise ConfigError("outliers_per_tile: counts must be non-negative")
    if any(counts) and not cfg.has_outliers:
        raise ConfigError("outliers given but the engine has no outlier unit (outlier_capacity = 0)")
    return counts


def layer_cycles(cfg: EngineConfig, M: int, K: int, N: int,
                 outliers_per_tile: int | Sequence[int] = 0) -> CycleBreakdown:
    """Exact engine cycles of an ``M x K x N`` GEMM (counter value at the end of the layer).

    Parameters
    ----------
    cfg : EngineConfig
    M, K, N : int
        Layer shape (any positive sizes up to the engine's limits; tiles need not divide the array).
    outliers_per_tile : int or sequence of int
        Outliers in each row tile of ``cfg.rows`` rows (one count for all, or ``ceil(M / rows)``
        counts).  Counts above ``outlier_capacity`` still cost cycles (the RTL flags ``overflow``).
    """
    check_layer_shape(cfg, M, K, N)
    counts = _per_row_tile(cfg, M, outliers_per_tile)
    tiles = tile_order(cfg, M, N)
    m_prev = 0
    windows = 0
    windows0 = 0
    for r0, m, _c0, _n in tiles:
        windows += window_cycles(cfg, K, m_prev, counts[r0 // cfg.rows])
        windows0 += window_cycles(cfg, K, m_prev, 0)
        m_prev = m
    fill = max(K, FILL_MIN)
    compute = len(tiles) * K
    drain = DRAIN_OFFSET + cfg.requant_share * m_prev + cfg.pre_requant_latency
    requant = cfg.requant_latency
    total = fill + windows + drain + requant
    macs = M * K * N
    return CycleBreakdown(
        total=total, compute=compute, fill=fill, drain=drain, outlier=windows - windows0,
        requant=requant, overhead=windows0 - compute, n_tiles=len(tiles), macs=macs,
        utilisation=macs / (total * cfg.rows * cfg.cols),
    )


def tile_cycles(cfg: EngineConfig, m: int, k: int, n: int, outliers: int = 0) -> int:
    """Engine cycles of a single output tile (``m <= rows``, ``n <= cols``) run as a layer."""
    if not 1 <= m <= cfg.rows or not 1 <= n <= cfg.cols:
        raise ConfigError(f"tile {m} x {n} does not fit the {cfg.rows} x {cfg.cols} array")
    return layer_cycles(cfg, m, k, n, outliers).total
