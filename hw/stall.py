"""Registered global stall of the layer engine: skid buffers, enable copies, the delayed back end.

The engine (:mod:`hw.engine`) is a statically scheduled machine with a global stall: its registers
advance together when the enable ``en`` is high.  To keep ``en`` off the critical path it is a
*register* (several identical copies, see :func:`enable_copies`), computed one cycle ahead from
registered state only:

* every input stream enters through a 2-entry :class:`SkidBuffer`, whose ``ready`` is a register
  bit and whose occupancy in the next cycle is known one cycle ahead;
* the controller computes which streams the schedule needs in the next cycle, both for the case
  that the engine advances now (``en = 1``) and for the case that it stalls (``en = 0``, then the
  needs stay as they are);
* the output FIFO is required to have room for every row that can still reach it (below).

Each copy ``en_i`` is loaded with ``Mux(en_i, X1, X0)`` where ``X1`` / ``X0`` are the next-cycle
enable for "advance now" / "stall now".  The copies are always equal, but each one feeds back into
its own next-state multiplexer, so synthesis cannot merge them (yosys ``opt_merge`` merges only
structurally identical flip-flops).

Front end and delayed back end
------------------------------
Only the *front end* (controller, skid buffer accounting, B buffer, the next tile's outlier count)
runs on ``en`` itself.  The *back end* (operand decoder, MAC array, outlier unit, tile descriptors,
column parameters, drain, requantisers, output FIFO, the payload of the deferred buffers) is the same machine :data:`BACK_END_DELAY` cycles later: every signal it takes from the
front end passes through that many free-running registers (:func:`delay_line`,
:func:`connect_delayed`), and its enable copies are ``en`` delayed by as many cycles
(:class:`BackEndEnable`: the recurrence ``e <= Mux(e, X1, X0)`` on ``X1`` / ``X0`` delayed, so the
copies stay distinct registers).  A back-end register therefore holds at cycle ``t`` exactly what it
held at ``t - BACK_END_DELAY`` in an engine without the delay, and the output rows, their order and
the ``en`` cycle count are unchanged.  The gain: the enable's logic and its copies sit in the front
end; only plain registers and the delayed copies' one-LUT recurrence span the array.

The output FIFO is the one feedback from back to front: a decision ``en = 1`` taken now pushes its row
up to ``BACK_END_DELAY + 1`` cycles later, so the stall requires (from a registered copy of the FIFO
level, one cycle old) ``level <= depth - 1 - (BACK_END_DELAY + 2)`` (:func:`fifo_threshold`).

:class:`GlobalStall` puts the front-end part together: the five input skid buffers, the next-cycle
enable (from the controller's stream needs, the buffers' next-cycle occupancy and the FIFO check)
and the front end's enable copies.  A stream only the back end reads (``colp``) gets a *deferred*
buffer (``SkidBuffer(pop_delay=BACK_END_DELAY)``): the front end takes its beat for the enable's
accounting, the beat leaves the payload registers when the back end reads it, so no front-end enable
drives those (wide) registers.
"""
from __future__ import annotations

from amaranth.hdl import Cat, Module, Mux, Signal, Value
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from vitaccel.sim.engine_config import BACK_END_DELAY
from .engine_layouts import FifoFill, StatusSignature, StreamNeed

__all__ = ["SkidBuffer", "enable_copies", "GlobalStall", "PES_PER_ENABLE", "mac_en_groups", "BACK_END_DELAY",
           "BackEndEnable", "delay_line", "connect_delayed", "fifo_threshold"]

#: Payload bits per copy of a skid buffer's control (:class:`SkidBuffer`).  16 since issue #15's
#: session 35 (32 in session 34, 64 before): the pop of one slice drives the clock enables of its
#: payload flip-flops, placed beside their consumers across the chip (`columns.colp` /
#: `descriptors.rowp` load enables: 5.2 ns nets with 32).
SKID_SLICE_BITS = 16

#: PEs per copy of the enable register (and of the product-stage control) in the MAC array.  One
#: since issue #15's session 33: with four, the accumulators' clear and the shadow registers' load
#: enable each drove 128 flip-flops of four PEs, the MAC array's slowest nets (122.3 MHz alone, 8 x 8
#: W4A4, against 150.4 with one copy per PE; docs/hardware.md).
PES_PER_ENABLE = 1


def mac_en_groups(rows: int, cols: int) -> int:
    """Number of enable copies driven into the ``rows x cols`` MAC array."""
    return max(1, -(-rows * cols // PES_PER_ENABLE))


class SkidBuffer(wiring.Component):
    """Small register FIFO (2 entries by default) on an input stream, with next-cycle occupancy outputs.

    Parameters
    ----------
    shape : ShapeLike
        Payload shape.
    slice_bits : int
        The payload is split into slices of at most this many bits, each with its own (identical)
        copy of the occupancy register and push / pop logic, so that no control net of a wide
        buffer (the ``colp`` and ``rowp`` beats are hundreds of bits) drives every payload register.
    pop_delay : int
        0: :attr:`pop` removes the head at the end of the same cycle.  ``d > 0`` (a *deferred*
        buffer, for a payload only the delayed back end reads): :attr:`pop` takes the head for the
        front end's accounting (:attr:`nonempty` and the ``avail_*`` outputs count only entries not
        taken yet), but the entry leaves the payload registers ``d`` cycles later, so :attr:`head`
        ``d`` cycles after a pop is the entry that pop took.  The payload slices are then driven by
        a registered per-slice copy of the delayed pop, never by the front end's enable, and
        :attr:`i` accepts a beat only when the payload registers have room (taken entries hold
        their place until they leave).
    depth : int
        Entries (a power of two, >= 2).  A deferred buffer needs ``2 + pop_delay`` (rounded up) to
        take a beat in every cycle like a 2-entry buffer does.

    Attributes
    ----------
    i : In(stream.Signature(shape))
        Input stream; ``i.ready`` is a register bit (the buffer is not full).
    head : Out(shape)
        Oldest entry (valid when :attr:`nonempty`; deferred: the oldest entry still held).
    nonempty : Out(1)
        The buffer holds at least one entry not taken yet.
    pop : In(1)
        Take the head in this cycle (must only be high when :attr:`nonempty`).
    head_next : Out(shape)
        The head in the next cycle (for reading a memory one cycle ahead of the head); only
        without ``pop_delay``.
    avail_if_pop, avail_if_hold : Out(1)
        The buffer will hold at least one entry not taken yet in the next cycle if :attr:`pop` is
        high / low now (including an entry accepted from :attr:`i` in this cycle).
    """

    def __init__(self, shape, slice_bits: int = SKID_SLICE_BITS, pop_delay: int = 0, depth: int = 2):
        if pop_delay < 0:
            raise ValueError(f"SkidBuffer: pop_delay must be >= 0, got {pop_delay}")
        if depth < 2 or depth & (depth - 1):
            raise ValueError(f"SkidBuffer: depth must be a power of two >= 2, got {depth}")
        self.shape = shape
        self.slice_bits = slice_bits
        self.pop_delay = pop_delay
        self.depth = depth
        ports = {
            "i": In(stream.Signature(shape)),
            "head": Out(shape),
            "nonempty": Out(1),
            "pop": In(1),
            "avail_if_pop": Out(1),
            "avail_if_hold": Out(1),
        }
        if not pop_delay:
            ports["head_next"] = Out(shape)
        super().__init__(ports)

    def elaborate(self, platform):
        m = Module()
        data_in = Value.cast(self.i.payload)
        width, d, depth = len(data_in), self.pop_delay, self.depth
        cb = depth.bit_length()                   # count registers hold 0 .. depth (depth: top bit)
        n = max(1, -(-width // self.slice_bits))
        # the pop as the payload registers see it: d - 1 shared registers, then one per slice (below)
        pop_shared = delay_line(m, self.pop, d - 1, "pop_late") if d else self.pop
        heads, nexts, levels = [], [], []
        for j in range(n):       # one copy of the control per slice of the payload (bounded fanout)
            lo, hi = j * width // n, (j + 1) * width // n
            level = Signal(cb, name=f"level_{j}")         # entries held (every copy equal)
            pop = Signal(name=f"pop_{j}")
            if d:
                # the slice's own pop register; "& level != 0" holds whenever the pop arrives (the
                # entry is still held) and keeps the copies distinct for synthesis
                m.d.sync += pop.eq(pop_shared & (level != 0))
            else:
                m.d.comb += pop.eq(self.pop & (level != 0))
            head, nxt = self._slice(m, j, data_in[lo:hi], level, pop)
            heads.append(head)
            nexts.append(nxt)
            levels.append(level)
        m.d.comb += Value.cast(self.head).eq(Cat(*heads))
        if d:
            # front-end view: its own copy of the payload occupancy (for ready / push) and the count
            # of entries not taken yet (for the enable predictions)
            held, untaken = Signal(cb, name="held"), Signal(cb, name="untaken")
            push = Signal(name="push_front")
            left = delay_line(m, self.pop, d, "pop_left")       # the entry leaves the payload now
            m.d.comb += push.eq(self.i.valid & ~held[-1])
            m.d.sync += [held.eq(held + push - left), untaken.eq(untaken + push - self.pop)]
            ready = ~held[-1]
        else:
            m.d.comb += Value.cast(self.head_next).eq(Cat(*nexts))
            untaken = levels[0]
            push = self.i.valid          # accepted whenever the buffer is not full (a full one is != 0)
            ready = ~untaken[-1]
        m.d.comb += [
            self.i.ready.eq(ready),
            self.nonempty.eq(untaken != 0),
            # next count = untaken + push - pop
            self.avail_if_hold.eq((untaken != 0) | push),
            self.avail_if_pop.eq((untaken >= 2) | ((untaken == 1) & push)),
        ]
        return m

    def _slice(self, m, j, data_in, level, pop):
        """One payload slice: entries ``e0`` (head) .. ``e{depth-1}``, its occupancy copy ``level``.

        On a pop every entry takes its successor's value; a pushed beat goes to entry
        ``level - pop`` (the first free one after the pop)."""
        w, depth = len(data_in), self.depth
        e = [Signal(w, name=f"e{i}_{j}") for i in range(depth)]
        push = Signal(name=f"push_{j}")
        m.d.comb += push.eq(self.i.valid & ~level[-1])
        nxt = []
        for i in range(depth):
            ni = Signal(w, name=f"next{i}_{j}")
            base = Mux(pop, e[i + 1], e[i]) if i + 1 < depth else e[i]
            m.d.comb += ni.eq(Mux(push & (level - pop == i), data_in, base))
            m.d.sync += e[i].eq(ni)
            nxt.append(ni)
        m.d.sync += level.eq(level + push - pop)
        return e[0], nxt[0]


def fifo_threshold(depth: int, delay: int = BACK_END_DELAY) -> int:
    """Highest output FIFO level (as registered one cycle earlier) at which the engine may advance.

    A decision taken in cycle ``t`` (``en`` of cycle ``t + 1``) pushes its row in cycle
    ``t + 1 + delay`` at the latest; between the level register's sample (cycle ``t - 1``) and that
    push at most ``delay + 2`` rows enter the FIFO, so the level must be at most
    ``depth - 1 - (delay + 2)`` for the push to find a free entry.
    """
    thr = depth - 3 - delay
    if thr < 0:
        raise ValueError(f"output FIFO depth {depth} is too small for a back-end delay of {delay}")
    return thr


def delay_line(m: Module, value, cycles: int, name: str):
    """``value`` delayed by ``cycles`` free-running registers (``value`` itself for 0 cycles)."""
    shape = value.shape()
    for i in range(cycles):
        reg = Signal(shape, name=f"{name}_d{i + 1}")
        m.d.sync += reg.eq(value)
        value = reg
    return value


def connect_delayed(m: Module, src, dst, cycles: int, prefix: str, names=None):
    """Drive every port of ``dst`` (or those in ``names``) from the same-named port of ``src``,
    delayed by ``cycles`` registers (:func:`delay_line`)."""
    for name in names or dst.signature.members:
        m.d.comb += getattr(dst, name).eq(delay_line(m, getattr(src, name), cycles, f"{prefix}_{name}"))


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
    """Input skid buffers and the registered global enable of the layer engine's front end.

    In every cycle the engine either advances (all registers load) or stalls (all hold).  The
    enable of the next cycle is ``x_adv`` if the engine advances now and ``x_hold`` if it stalls now
    (see the module docstring), where ``x`` requires: a layer is running, every stream the schedule
    needs in the next cycle will hold a beat, and the output FIFO has room for every row the back end
    may still push (:func:`fifo_threshold`).  ``x_adv`` / ``x_hold`` are outputs too: the back end's
    enable copies (:class:`BackEndEnable`) are built from them.

    Parameters
    ----------
    streams : dict of str to ShapeLike
        Input streams (name -> payload shape) in the order the enable terms are built; each gets a
        2-entry :class:`SkidBuffer`.  ``"b"`` is the B loader's stream, the others are the
        controller's (see ``need``).
    fifo_depth : int
        Output FIFO depth.
    delay : int
        Back-end delay (:data:`BACK_END_DELAY`).
    deferred : iterable of str, or dict of str to tuple of str
        Streams whose payload the back end reads: their buffers are deferred
        (``SkidBuffer(pop_delay=delay)``), so their payload registers are driven by the back end's
        delayed pop and never by ``en``.  As a dict, each stream maps to the payload fields the
        front end reads as well (kept in a small non-deferred buffer beside it, port ``front``).
    full_rate : iterable of str
        Deferred streams the schedule may need in consecutive cycles (``a``): their buffers get
        ``2 + delay`` entries (rounded up to a power of two), so they take a beat per cycle as a
        2-entry buffer does.  The others (one beat per tile or column block) keep 2 entries.

    Attributes
    ----------
    <name> : In(stream.Signature(shape))
        One input stream per entry of ``streams``.
    head : Out(Signature)
        ``head.<name>``: the oldest beat of each stream (valid when the schedule needs it); for a
        deferred stream, the beat taken ``delay`` cycles earlier (what the back end reads then).
    front : Out(Signature)
        ``front.<name>``: the front end's fields of a deferred stream's oldest beat not taken yet
        (only for deferred streams with fields).
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
        Output FIFO ``level``.
    en : Out(Signature)
        Identical enable copies of the front end: ``ctl`` (controller, B loader, skid buffer pops),
        ``buf`` (outlier B row registers).
    x_adv, x_hold : Out(1)
        Next-cycle enable if the engine advances / stalls now (for :class:`BackEndEnable`).
    """

    def __init__(self, streams: dict, fifo_depth: int, delay: int = BACK_END_DELAY, deferred=(), full_rate=()):
        self.streams, self.fifo_depth, self.delay = dict(streams), fifo_depth, delay
        self.deferred = {name: tuple(fields) for name, fields in
                         (deferred.items() if isinstance(deferred, dict) else ((name, ()) for name in deferred))}
        if not set(self.deferred) <= set(self.streams) - {"b", "outl"}:
            raise ValueError(f"GlobalStall: deferred streams {sorted(self.deferred)} must be among "
                             f"{sorted(set(self.streams) - {'b', 'outl'})} (b and outl are read by the front end)")
        self.depths = {name: 1 << (1 + delay).bit_length() if name in full_rate else 2 for name in self.deferred}
        self.threshold = fifo_threshold(fifo_depth, delay)
        has_outl = "outl" in streams
        en = {"ctl": Out(1), "buf": Out(1)}
        ports = {name: In(stream.Signature(shape)) for name, shape in streams.items()}
        ports.update({
            "head": Out(wiring.Signature({name: Out(shape) for name, shape in streams.items()})),
            "need": In(wiring.Signature({name: Out(StreamNeed) for name in streams if name != "b"})),
            "need_b": In(StreamNeed),
            "status": In(StatusSignature),
            "fifo": In(FifoFill),
            "en": Out(wiring.Signature(en)),
            "x_adv": Out(1),
            "x_hold": Out(1),
        })
        if has_outl:
            ports["outl_next"] = Out(streams["outl"])
        self.front_layouts = {name: data.StructLayout({f: data.Layout.cast(streams[name]).members[f] for f in fields})
                              for name, fields in self.deferred.items() if fields}
        if self.front_layouts:
            ports["front"] = Out(wiring.Signature({name: Out(lay) for name, lay in self.front_layouts.items()}))
        super().__init__(ports)

    def elaborate(self, platform):
        m = Module()
        bufs, need, need_adv = {}, {}, {}
        for name, shape in self.streams.items():
            deferred = name in self.deferred
            buf = SkidBuffer(shape, pop_delay=self.delay if deferred else 0, depth=self.depths.get(name, 2))
            m.submodules[f"{name}_buf"] = buf
            wiring.connect(m, wiring.flipped(getattr(self, name)), buf.i)
            m.d.comb += getattr(self.head, name).eq(buf.head)
            bufs[name] = buf
            n = self.need_b if name == "b" else getattr(self.need, name)
            need[name], need_adv[name] = n.now, n.adv
        if "outl" in bufs:
            m.d.comb += self.outl_next.eq(bufs["outl"].head_next)
        fronts = {}
        for name, layout in self.front_layouts.items():     # the front end's fields of a deferred stream
            fb = fronts[name] = m.submodules[f"{name}_front"] = SkidBuffer(layout)
            src = getattr(self, name)
            # it takes every beat the deferred buffer takes (its entries are a subset of those held)
            m.d.comb += [fb.i.valid.eq(src.valid & bufs[name].i.ready), getattr(self.front, name).eq(fb.head),
                         *[fb.i.payload[f].eq(src.payload[f]) for f in self.deferred[name]]]
        # next-cycle enable: x_adv if the engine advances now, x_hold if it stalls now
        st = self.status
        fifo_ok = Signal()          # the FIFO level of the last cycle leaves room (fifo_threshold)
        m.d.sync += fifo_ok.eq(self.fifo.level <= self.threshold)
        ok_adv = st.busy_adv & fifo_ok
        ok_hold = st.busy & fifo_ok
        for name, buf in bufs.items():
            ok_adv = ok_adv & (~need_adv[name] | Mux(need[name], buf.avail_if_pop, buf.avail_if_hold))
            ok_hold = ok_hold & (~need[name] | buf.avail_if_hold)
        x_adv, x_hold = Signal(), Signal()
        m.d.comb += [x_adv.eq(ok_adv), x_hold.eq(ok_hold), self.x_adv.eq(x_adv), self.x_hold.eq(x_hold)]
        ctl, buf_en = enable_copies(m, 2, x_adv, x_hold, st.start, "en_unit")
        m.d.comb += [self.en.ctl.eq(ctl), self.en.buf.eq(buf_en)]
        for name, buf in bufs.items():
            m.d.comb += buf.pop.eq(ctl & need[name])
            if name in fronts:
                m.d.comb += fronts[name].pop.eq(buf.pop)
        return m


class BackEndEnable(wiring.Component):
    """Enable copies of the engine's back end: the front end's ``en`` delayed by ``delay`` cycles.

    ``en(t + 1) = ~start(t) & Mux(en(t), x_adv(t), x_hold(t))``, so ``en(t - d)`` obeys the same
    recurrence on ``start``, ``x_adv`` and ``x_hold`` delayed by ``d``.  Each copy runs that
    recurrence on its own output (:func:`enable_copies`), so the copies stay distinct registers
    (a plain delay tree would be merged into one flip-flop by synthesis) and each is one LUT away
    from the three delayed inputs.

    Parameters
    ----------
    groups : dict of str to int
        Copy groups (name -> number of copies).
    delay : int
        Back-end delay in cycles (>= 1).

    Attributes
    ----------
    x_adv, x_hold, start : In(1)
        The front end's next-cycle enable terms and layer start (:class:`GlobalStall`).
    en : Out(Signature)
        ``en.<group>``: that group's copies, each equal to the front end's ``en`` ``delay`` cycles ago.
    """

    def __init__(self, groups: dict, delay: int = BACK_END_DELAY):
        if delay < 1:
            raise ValueError(f"BackEndEnable: delay must be >= 1, got {delay}")
        self.groups, self.delay = dict(groups), delay
        super().__init__({
            "x_adv": In(1), "x_hold": In(1), "start": In(1),
            "en": Out(wiring.Signature({name: Out(n) for name, n in self.groups.items()})),
        })

    def elaborate(self, platform):
        m = Module()
        xa, xh, clear = (delay_line(m, getattr(self, n), self.delay, f"be_{n}") for n in ("x_adv", "x_hold", "start"))
        for name, n in self.groups.items():
            m.d.comb += getattr(self.en, name).eq(Cat(*enable_copies(m, n, xa, xh, clear, f"en_{name}")))
        return m
