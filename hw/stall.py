"""Registered global stall of the layer engine: input skid buffers and the enable register copies.

The engine (:mod:`hw.engine`) is a statically scheduled machine with a global stall: all its
registers advance together when the enable ``en`` is high.  To keep ``en`` off the critical path it
is a *register* (several identical copies, one per group of loads, see :func:`enable_copies`),
computed one cycle ahead from registered state only:

* every input stream enters through a 2-entry :class:`SkidBuffer`, whose ``ready`` is a register
  bit and whose occupancy in the next cycle is known one cycle ahead;
* the controller computes which streams the schedule needs in the next cycle, both for the case
  that the engine advances now (``en = 1``) and for the case that it stalls (``en = 0``, then the
  needs stay as they are);
* the output FIFO is required to have a free entry in the next cycle even if nothing is read from
  it (an "almost full" threshold).

Each copy ``en_i`` is loaded with ``Mux(en_i, X1, X0)`` where ``X1`` / ``X0`` are the next-cycle
enable for "advance now" / "stall now".  The copies are always equal, but each one feeds back into
its own next-state multiplexer, so synthesis cannot merge them (yosys ``opt_merge`` merges only
structurally identical flip-flops).
"""
from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal, unsigned
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["SkidBuffer", "enable_copies"]


class SkidBuffer(wiring.Component):
    """Two-entry register FIFO on an input stream, with next-cycle occupancy outputs.

    Parameters
    ----------
    shape : ShapeLike
        Payload shape.

    Attributes
    ----------
    i : In(stream.Signature(shape))
        Input stream; ``i.ready`` is a register bit (the buffer is not full).
    head : Out(shape)
        Oldest entry (valid when :attr:`nonempty`).
    nonempty : Out(1)
        The buffer holds at least one entry.
    pop : In(1)
        Remove the head at the end of this cycle (must only be high when :attr:`nonempty`).
    head_next : Out(shape)
        The head in the next cycle (for reading a memory one cycle ahead of the head).
    avail_if_pop, avail_if_hold : Out(1)
        The buffer will hold at least one entry in the next cycle if :attr:`pop` is high / low now
        (including an entry accepted from :attr:`i` in this cycle).
    """

    def __init__(self, shape):
        self.shape = shape
        super().__init__({
            "i": In(stream.Signature(shape)),
            "head": Out(shape),
            "head_next": Out(shape),
            "nonempty": Out(1),
            "pop": In(1),
            "avail_if_pop": Out(1),
            "avail_if_hold": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        e0 = Signal(self.shape, name="e0")
        e1 = Signal(self.shape, name="e1")
        level = Signal(2)          # 0, 1 or 2 entries
        push = Signal()
        m.d.comb += [
            self.i.ready.eq(~level[1]),
            push.eq(self.i.valid & ~level[1]),
            self.head.eq(e0),
            self.nonempty.eq(level != 0),
            # next occupancy = level + push - pop
            self.avail_if_hold.eq((level != 0) | self.i.valid),
            self.avail_if_pop.eq(level[1] | (level[0] & self.i.valid)),
        ]
        pop = Signal()
        m.d.comb += pop.eq(self.pop & (level != 0))
        m.d.comb += self.head_next.eq(e0)
        with m.If(pop):
            m.d.comb += self.head_next.eq(e1)
        with m.If(push):
            with m.If((level == 0) | ((level == 1) & pop)):
                m.d.comb += self.head_next.eq(self.i.payload)
            with m.Else():
                m.d.sync += e1.eq(self.i.payload)
        m.d.sync += e0.eq(self.head_next)
        m.d.sync += level.eq(level + push - pop)
        return m


def enable_copies(m: Module, n: int, x_adv, x_hold, clear, prefix: str = "en") -> list[Signal]:
    """``n`` identical enable registers: ``en_i <= ~clear & Mux(en_i, x_adv, x_hold)``.

    Parameters
    ----------
    m : Module
    n : int
        Number of copies.
    x_adv, x_hold : Value
        Next-cycle enable if the engine advances / stalls in this cycle.
    clear : Value
        Force every copy low in the next cycle (layer start).
    """
    copies = []
    for i in range(n):
        e = Signal(name=f"{prefix}{i}")
        m.d.sync += e.eq(~clear & Mux(e, x_adv, x_hold))
        copies.append(e)
    return copies
