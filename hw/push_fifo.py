"""Output FIFO of the layer engine whose writes are never refused (issue #15).

Amaranth's :class:`amaranth.lib.fifo.SyncFIFO` writes when ``w_en & w_rdy``: its ``level`` register,
a compare and the write request form one clock-enable net to every LUT-RAM cell of the storage (296
cells' ``WRE`` in the 8 x 8 engine, the worst path of session 35's seed-2 run: 9.27 ns).  In the layer
engine the global stall already keeps room for every row that can reach the FIFO (hw/stall.py
``fifo_threshold``), so the full check is redundant there.  :class:`PushFifo` writes on every
``push`` and splits its storage into chunks of :data:`CHUNK_BITS` bits, each with its own copy of
the push strobe and its own write pointer, so no write-enable net spans the whole row.

A push into a full FIFO is a design error of the caller; it overwrites the oldest row, which every
RTL test that checks the output rows would see.
"""
from __future__ import annotations

from amaranth.hdl import Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

__all__ = ["PushFifo", "CHUNK_BITS", "push_chunks"]

#: Storage bits per write-enable copy (16 ``TRELLIS_DPR16X4`` cells of 4 bits).
CHUNK_BITS = 64


def push_chunks(width: int) -> int:
    """Number of storage chunks (and push copies) of a :class:`PushFifo` of ``width`` bits."""
    return -(-width // CHUNK_BITS)


class PushFifo(wiring.Component):
    """Synchronous FIFO with unconditional writes and a combinational read, like ``SyncFIFO``.

    Parameters
    ----------
    width : int
        Bits of an entry.
    depth : int
        Entries (a power of two).

    Attributes
    ----------
    push : In(push_chunks(width))
        Write strobes, one per chunk; all copies must be equal (the caller's separate registers).
    w_data : In(width)
        The entry written by ``push``.
    level : Out(range(depth + 1))
        Unread entries (as ``SyncFIFO.level``; read and write in one cycle keep it).
    r : Out(stream.Signature(width))
        Read side: ``valid`` while ``level != 0``, ``payload`` the oldest entry, taken with ``ready``.
    """

    def __init__(self, width: int, depth: int):
        if depth < 2 or depth & (depth - 1):
            raise ValueError(f"PushFifo: depth must be a power of two >= 2, got {depth}")
        self.width, self.depth = width, depth
        super().__init__({
            "push": In(push_chunks(width)), "w_data": In(width),
            "level": Out(range(depth + 1)), "r": Out(stream.Signature(width)),
        })

    def elaborate(self, platform):
        m = Module()
        W, D, n = self.width, self.depth, push_chunks(self.width)
        consume = Signal(range(D), name="consume")
        pop = Signal()
        m.d.comb += [self.r.valid.eq(self.level != 0), pop.eq(self.r.valid & self.r.ready)]
        for j in range(n):
            lo, hi = j * CHUNK_BITS, min(W, (j + 1) * CHUNK_BITS)
            mem = m.submodules[f"storage{j}"] = Memory(shape=hi - lo, depth=D, init=[])
            produce = Signal(range(D), name=f"produce{j}")      # one write pointer per chunk
            wp, rp = mem.write_port(), mem.read_port(domain="comb")
            m.d.comb += [wp.addr.eq(produce), wp.data.eq(self.w_data[lo:hi]), wp.en.eq(self.push[j]),
                         rp.addr.eq(consume), self.r.payload[lo:hi].eq(rp.data)]
            with m.If(self.push[j]):
                m.d.sync += produce.eq(produce + 1)
        with m.If(pop):
            m.d.sync += consume.eq(consume + 1)
        with m.If(self.push[0] & ~pop):
            m.d.sync += self.level.eq(self.level + 1)
        with m.If(pop & ~self.push[0]):
            m.d.sync += self.level.eq(self.level - 1)
        return m
