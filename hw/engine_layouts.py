"""Stream payloads of the layer engine and the signatures that join its parts.

The payload layouts (``cmd_layout``, ``rowp_layout``, ``colp_layout``, ``out_layout``) are the engine's
external interface (stream order: :mod:`hw.engine`); the signatures below are the internal
interfaces between the engine's components (:mod:`hw.engine` joins them with ``wiring.connect``).
Every signature is written from the side that *drives* it (the controller, the B buffer, the drain
pipeline, the output stage): that side holds ``Out(signature)``, the consumer ``In(signature)``.
A member marked ``In`` flows back to the driver (e.g. the next tile's outlier beat count).

Widths follow docs/datapath.md: ``Mr`` u16, ``za`` up to 2^23 (section 6, ``Zs`` of ``shiftlog2``),
``Mc`` u16, ``Sc`` 0..47, ``Bq`` ``|Bq| < 2^47`` (section 7), outlier indices u16 (section 5).
"""
from __future__ import annotations

from amaranth.hdl import Const, signed, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from vitaccel.sim.engine_config import DIM_BITS
from .common import CodeFormat, OutFormat

__all__ = [
    "ZA_BITS", "OUT_BITS", "OUT_FIFO_DEPTH", "cmd_layout", "rowp_layout", "col_param_layout", "colp_layout",
    "out_layout", "row_bits", "StreamNeed", "StatusSignature", "DescriptorControl", "LoaderControl",
    "LoadSignature", "BReadSignature", "ColumnControl", "MacControl", "OutlierControl", "DrainControl", "drain_row_group",
    "DrainedRowSignature", "FifoFill",
]

#: Width of an A zero point ``za[r]`` (uniform ``z``; ``shiftlog2`` ``Zs`` can reach ~2^23).
ZA_BITS = 24
#: Output lane width (``fixed32`` is the widest output format).
OUT_BITS = 32
#: Output FIFO depth; the engine advances only if the FIFO has room for every row that may still
#: reach it (hw/stall.py ``fifo_threshold``: level <= depth - 3 - BACK_END_DELAY).
OUT_FIFO_DEPTH = 8

#: Command (layer configuration), accepted when the engine is idle; starts the layer.
cmd_layout = data.StructLayout({
    "m": unsigned(DIM_BITS), "k": unsigned(DIM_BITS), "n": unsigned(DIM_BITS),
    "a_fmt": CodeFormat, "a_k": unsigned(4), "m0": unsigned(4), "m1": unsigned(4),
    "fo": unsigned(3), "sr": unsigned(5), "z_out": unsigned(8), "out_fmt": OutFormat, "out_k": unsigned(4),
})


def rowp_layout(rows: int) -> data.StructLayout:
    """Tile descriptor: per-row ``Mr`` and ``za`` plus the row tile's outlier count."""
    return data.StructLayout({
        "mr": data.ArrayLayout(unsigned(16), rows),
        "za": data.ArrayLayout(unsigned(ZA_BITS), rows),
        "n_out": unsigned(DIM_BITS),
    })


#: Per-column requantiser parameters.
col_param_layout = data.StructLayout({"mc": unsigned(16), "sc": unsigned(6), "bq": signed(48)})


def colp_layout(cols: int) -> data.ArrayLayout:
    """Column parameters of one column block: ``cols`` x (``Mc``, ``Sc``, ``Bq``)."""
    return data.ArrayLayout(col_param_layout, cols)


def out_layout(cols: int) -> data.StructLayout:
    """One output row: absolute row, first column of the block, ``cols`` lanes, saturation mask."""
    return data.StructLayout({
        "row": unsigned(DIM_BITS), "col": unsigned(DIM_BITS),
        "data": data.ArrayLayout(signed(OUT_BITS), cols), "sat": unsigned(cols),
    })


def row_bits(rows: int) -> int:
    """Width of a row index inside a tile (``0 .. rows - 1``; at least 1 bit)."""
    return max(1, (rows - 1).bit_length())


# ----------------------------------------------------------------------------------------- signatures
#: Whether the schedule needs a stream beat now (``now``) and in the next cycle if the engine
#: advances in this one (``adv``); consumed by :class:`hw.stall.GlobalStall`.
StreamNeed = wiring.Signature({"now": Out(1), "adv": Out(1)})

#: Controller state the global stall needs: a command was accepted (``start``), a layer is running
#: now (``busy``) and after an advance in this cycle (``busy_adv``).
StatusSignature = wiring.Signature({"start": Out(1), "busy": Out(1), "busy_adv": Out(1)})

#: Strobes of the tile descriptor registers (:class:`hw.engine_buffers.TileDescriptors`): ``load``
#: the ``rowp`` head as the next tile's descriptor; ``shift`` current -> previous and, if ``take``,
#: next -> current (a window boundary); ``nb`` returns the next tile's outlier beat count.
DescriptorControl = wiring.Signature({
    "load": Out(1), "shift": Out(1), "take": Out(1), "nb": In(DIM_BITS),
})

#: Loader commands (:class:`hw.engine_buffers.BBuffer`): ``start`` a layer of ``start_k`` rows (load
#: block 0 into bank 0), or at a window boundary start loading the next column ``block`` into ``bank``.
LoaderControl = wiring.Signature({"start": Out(1), "start_k": Out(DIM_BITS), "block": Out(1), "bank": Out(1)})


def LoadSignature(b_bits: int, cols: int) -> wiring.Signature:
    """The B row being loaded this cycle (``active``), and whether it is the block's first (``first``)."""
    return wiring.Signature({
        "active": Out(1), "first": Out(1), "row": Out(data.ArrayLayout(signed(b_bits), cols)),
    })


def BReadSignature(k_bits: int) -> wiring.Signature:
    """B buffer row ``k`` of ``bank`` that the MAC array reads in the *next* cycle (read one cycle ahead)."""
    return wiring.Signature({"k": Out(k_bits), "bank": Out(1)})


#: Column parameter bank strobes (:class:`hw.engine_buffers.ColumnParams`): ``commit`` the loaded block
#: into ``commit_bank``; the drain reads ``read_bank``.
ColumnControl = wiring.Signature({"commit": Out(1), "commit_bank": Out(1), "read_bank": Out(1)})

#: Operand issue control of the MAC array: ``issue`` (an A beat is consumed now), ``valid``,
#: ``first``, ``last`` (the decoded column reaching the array, one cycle later).
MacControl = wiring.Signature({"issue": Out(1), "valid": Out(1), "first": Out(1), "last": Out(1)})

#: Outlier unit control: ``issue`` (an ``outl`` beat is consumed now), current tile ``row0`` / ``m``,
#: ``tile_start`` (first cycle of the tile's window).
OutlierControl = wiring.Signature({
    "issue": Out(1), "row0": Out(DIM_BITS), "m": Out(DIM_BITS), "tile_start": Out(1),
})


def DrainControl(rows: int, share_bits: int = 0) -> wiring.Signature:
    """Drain issue of the previous tile: ``issue``, drain position ``pos`` (and ``pos_adv``, its
    value after an advance), the previous tile's first row ``r0`` and first column ``c0``.

    ``pos = (row << share_bits) | group``: the shadow row and, when the engine shares each
    requantiser between ``2^share_bits`` columns, the column group drained this cycle
    (:func:`drain_row_group`)."""
    pb = row_bits(rows) + share_bits
    return wiring.Signature({
        "issue": Out(1), "pos": Out(pb), "pos_adv": Out(pb), "r0": Out(DIM_BITS), "c0": Out(DIM_BITS),
    })


def drain_row_group(pos, share_bits: int):
    """``(row, group)`` of a drain position (``group`` is ``Const(0, 1)`` without sharing)."""
    if share_bits == 0:
        return pos, Const(0, 1)
    return pos[share_bits:], pos[:share_bits]


def DrainedRowSignature(lanes: int, acc_bits: int) -> wiring.Signature:
    """One drained column group entering the requantisers (docs/datapath.md section 7 inputs).

    ``valid`` / ``row`` / ``col``: a row of the layer, its absolute index and the group's first
    column; ``last``: the row's last column group (always 1 without requantiser sharing);
    ``acc``: ``acc[r, c]`` truncated to ``acc_bits``; ``mr``: ``Mr[r]`` per lane;
    ``params``: ``Mc, Sc, Bq`` per lane; ``inside``: per lane, its column is inside the layer
    (``col + lane < N``); ``fault``: a lane inside the layer of the group of the *previous* engine
    cycle did not fit ``acc_bits``.
    """
    return wiring.Signature({
        "valid": Out(1), "row": Out(DIM_BITS), "col": Out(DIM_BITS), "last": Out(1),
        "acc": Out(data.ArrayLayout(signed(acc_bits), lanes)),
        "mr": Out(data.ArrayLayout(unsigned(16), lanes)),
        "params": Out(colp_layout(lanes)),
        "inside": Out(lanes),
        "fault": Out(1),
    })


#: Output FIFO fill seen by the global stall: ``level`` entries (hw/stall.py ``fifo_threshold``).
FifoFill = wiring.Signature({"level": Out(range(OUT_FIFO_DEPTH + 1))})
