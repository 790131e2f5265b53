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

:class:`GlobalStall` puts these together for the engine: the five input skid buffers, the
next-cycle enable (from the controller's stream needs, the buffers' next-cycle occupancy and the
output FIFO fill) and every enable copy.
"""
from __future__ import annotations

from amaranth.hdl import Cat, Module, Mux, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from .engine_layouts import FifoFill, StatusSignature, StreamNeed

__all__ = ["SkidBuffer", "enable_copies", "GlobalStall", "PES_PER_ENABLE", "mac_en_groups"]

#: PEs per copy of the enable register (and of the product-stage control) in the MAC array.
PES_PER_ENABLE = 4


def mac_en_groups(rows: int, cols: int) -> int:
    """Number of enable copies driven into the ``rows x cols`` MAC array."""
    return max(1, -(-rows * cols // PES_PER_ENABLE))


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


class GlobalStall(wiring.Component):
    """Input skid buffers and the registered global enable of the layer engine (all its copies).

    In every cycle the engine either advances (all registers load) or stalls (all hold).  The
    enable of the next cycle is ``x_adv`` if the engine advances now and ``x_hold`` if it stalls now
    (see the module docstring), where ``x`` requires: a layer is running, every stream the schedule
    needs in the next cycle will hold a beat, and the output FIFO has a free entry even if nothing
    is read from it and a pending row is pushed.

    Parameters
    ----------
    streams : dict of str to ShapeLike
        Input streams (name -> payload shape) in the order the enable terms are built; each gets a
        2-entry :class:`SkidBuffer`.  ``"b"`` is the B loader's stream, the others are the
        controller's (see ``need``).
    rows, cols : int
        MAC array size (number of enable copies).
    fifo_depth : int
        Output FIFO depth.

    Attributes
    ----------
    <name> : In(stream.Signature(shape))
        One input stream per entry of ``streams``.
    head : Out(Signature)
        ``head.<name>``: the oldest beat of each stream (valid when the schedule needs it).
    outl_next : Out(shape of ``outl``)
        Head of the ``outl`` buffer in the next cycle (B rows are read one cycle ahead); only with
        an ``outl`` stream.
    need : In(Signature)
        ``need.<name>.now`` / ``.adv`` (:data:`hw.engine_layouts.StreamNeed`) for every stream but ``b``.
    need_b : In(StreamNeed)
        Need of the ``b`` stream (the B loader).
    status : In(StatusSignature)
        ``start`` (clears every enable copy), ``busy``, ``busy_adv``.
    fifo : In(FifoFill)
        Output FIFO ``level`` and ``pending`` (a row enters it if the engine advances).
    en : Out(Signature)
        Identical enable copies: ``ctl`` (controller, loader, buffers, output push), ``dec``
        (operand decoder), ``drain`` (drain row stages), ``mac`` (one per
        :func:`mac_en_groups` group of PEs), ``col`` (one per output column), ``ou`` (one per
        outlier correction row; only with an ``outl`` stream).
    """

    def __init__(self, streams: dict, rows: int, cols: int, fifo_depth: int):
        self.streams, self.rows, self.cols, self.fifo_depth = dict(streams), rows, cols, fifo_depth
        has_outl = "outl" in streams
        en = {"ctl": Out(1), "dec": Out(1), "drain": Out(1), "mac": Out(mac_en_groups(rows, cols)), "col": Out(cols)}
        if has_outl:
            en["ou"] = Out(rows)
        ports = {name: In(stream.Signature(shape)) for name, shape in streams.items()}
        ports.update({
            "head": Out(wiring.Signature({name: Out(shape) for name, shape in streams.items()})),
            "need": In(wiring.Signature({name: Out(StreamNeed) for name in streams if name != "b"})),
            "need_b": In(StreamNeed),
            "status": In(StatusSignature),
            "fifo": In(FifoFill),
            "en": Out(wiring.Signature(en)),
        })
        if has_outl:
            ports["outl_next"] = Out(streams["outl"])
        super().__init__(ports)

    def elaborate(self, platform):
        m = Module()
        bufs, need, need_adv = {}, {}, {}
        for name, shape in self.streams.items():
            buf = m.submodules[f"{name}_buf"] = SkidBuffer(shape)
            wiring.connect(m, wiring.flipped(getattr(self, name)), buf.i)
            m.d.comb += getattr(self.head, name).eq(buf.head)
            bufs[name] = buf
            n = self.need_b if name == "b" else getattr(self.need, name)
            need[name], need_adv[name] = n.now, n.adv
        if "outl" in bufs:
            m.d.comb += self.outl_next.eq(bufs["outl"].head_next)
        # next-cycle enable: x_adv if the engine advances now, x_hold if it stalls now
        st, fifo = self.status, self.fifo
        ok_adv = st.busy_adv & (fifo.level + fifo.pending <= self.fifo_depth - 1)
        ok_hold = st.busy & (fifo.level <= self.fifo_depth - 1)
        for name, buf in bufs.items():
            ok_adv = ok_adv & (~need_adv[name] | Mux(need[name], buf.avail_if_pop, buf.avail_if_hold))
            ok_hold = ok_hold & (~need[name] | buf.avail_if_hold)
        x_adv, x_hold = Signal(), Signal()
        m.d.comb += [x_adv.eq(ok_adv), x_hold.eq(ok_hold)]
        R, C = self.rows, self.cols
        copies = {
            "mac": enable_copies(m, mac_en_groups(R, C), x_adv, x_hold, st.start, "en_mac"),
            "col": enable_copies(m, C, x_adv, x_hold, st.start, "en_col"),
        }
        copies["ctl"], copies["dec"], copies["drain"] = enable_copies(m, 3, x_adv, x_hold, st.start, "en_unit")
        if "outl" in bufs:
            copies["ou"] = enable_copies(m, R, x_adv, x_hold, st.start, "en_ou")
        for name, sigs in copies.items():
            m.d.comb += getattr(self.en, name).eq(sigs if isinstance(sigs, Signal) else Cat(*sigs))
        for name, buf in bufs.items():
            m.d.comb += buf.pop.eq(copies["ctl"] & need[name])
        return m
