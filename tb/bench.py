"""cocotb driver / monitor / scoreboard classes for Amaranth stream ports (used by every ``tb/cocotb_*.py``).

Amaranth's Verilog flattens a ``stream.Signature`` port ``p`` into ``p__valid``, ``p__ready`` and
``p__payload`` (struct payloads are packed LSB first in field order).  :class:`PayloadCodec` packs /
unpacks such payloads from a field list; :class:`StreamDriver` and :class:`StreamMonitor` implement
random valid / ready back-pressure; :class:`Scoreboard` compares in-order transactions against the
expected values (computed by ``sim/reference.py``, never by the design); :class:`Testbench` ties
them together for one DUT with a clock and a reset.

Timing convention: inputs change just after a rising clock edge; handshakes are sampled at the
falling edge (everything is settled there) and take effect at the next rising edge.
"""
from __future__ import annotations

import random
from collections import deque
from typing import Any, Callable, Iterable, Sequence

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, FallingEdge, RisingEdge, Timer

__all__ = ["Field", "PayloadCodec", "StreamDriver", "StreamMonitor", "Scoreboard", "Testbench"]

CLOCK_PERIOD_NS = 10


class Field:
    """One payload field: ``name``, ``width`` bits, ``signed``."""

    def __init__(self, name: str, width: int, signed: bool = False):
        self.name, self.width, self.signed = name, int(width), bool(signed)

    def __repr__(self) -> str:
        return f"Field({self.name!r}, {self.width}, signed={self.signed})"


class PayloadCodec:
    """Pack/unpack a flat payload integer from named fields (LSB first, like Amaranth StructLayout).

    Parameters
    ----------
    fields : sequence of Field or (name, width[, signed]) tuples
    """

    def __init__(self, fields: Sequence[Field | tuple]):
        self.fields = [f if isinstance(f, Field) else Field(*f) for f in fields]
        self.width = sum(f.width for f in self.fields)

    def pack(self, values: dict[str, int]) -> int:
        """Pack ``values`` (missing fields are 0); raises if a value does not fit its field."""
        word, pos = 0, 0
        for f in self.fields:
            v = int(values.get(f.name, 0))
            lo, hi = (-(1 << (f.width - 1)), (1 << (f.width - 1)) - 1) if f.signed else (0, (1 << f.width) - 1)
            if not lo <= v <= hi:
                raise ValueError(f"payload field {f.name}={v} does not fit {f.width} "
                                 f"{'signed' if f.signed else 'unsigned'} bits")
            word |= (v & ((1 << f.width) - 1)) << pos
            pos += f.width
        return word

    def unpack(self, word: int) -> dict[str, int]:
        """Split a payload integer into a ``{field: int}`` dict (signed fields sign-extended)."""
        out, pos = {}, 0
        for f in self.fields:
            v = (word >> pos) & ((1 << f.width) - 1)
            if f.signed and v >> (f.width - 1):
                v -= 1 << f.width
            out[f.name] = v
            pos += f.width
        return out

    def repeat(self, n: int) -> "PayloadCodec":
        """Codec of an ``ArrayLayout`` of ``n`` copies (field names get a ``[i]`` suffix)."""
        return PayloadCodec([Field(f"{f.name}[{i}]", f.width, f.signed) for i in range(n) for f in self.fields])


def _read_int(handle) -> int:
    return int(handle.value)


class StreamDriver:
    """Drive a stream port ``<prefix>__valid/__payload`` with random idle cycles (valid back-pressure).

    Once ``valid`` is raised it stays high with a stable payload until the beat is accepted.

    Parameters
    ----------
    dut, prefix : cocotb handle, str
        Port ``prefix`` of ``dut`` (``i`` -> ``i__valid``, ``i__ready``, ``i__payload``).
    clk : handle
    valid_prob : float
        Probability of presenting the next queued beat in a cycle (1.0 = no gaps).
    rng : random.Random
    """

    def __init__(self, dut, prefix: str, clk, valid_prob: float = 1.0, rng: random.Random | None = None):
        self.valid = getattr(dut, f"{prefix}__valid")
        self.ready = getattr(dut, f"{prefix}__ready")
        self.payload = getattr(dut, f"{prefix}__payload")
        self.clk = clk
        self.valid_prob = valid_prob
        self.rng = rng or random.Random(0)
        self.queue: deque[int] = deque()
        self.sent = 0
        self.valid.value = 0
        self._task = cocotb.start_soon(self._run())

    def send(self, words: Iterable[int]) -> None:
        """Queue packed payload words."""
        self.queue.extend(int(w) for w in words)

    @property
    def idle(self) -> bool:
        return not self.queue and self._current is None

    _current: int | None = None

    async def _run(self) -> None:
        while True:
            if self._current is None and self.queue and self.rng.random() < self.valid_prob:
                self._current = self.queue.popleft()
            if self._current is not None:
                self.payload.value = self._current
                self.valid.value = 1
            else:
                self.valid.value = 0
            await FallingEdge(self.clk)
            fire = self._current is not None and _read_int(self.ready) == 1
            await RisingEdge(self.clk)
            if fire:
                self._current = None
                self.sent += 1

    def stop(self) -> None:
        self._task.cancel()
        self.valid.value = 0


class StreamMonitor:
    """Accept beats from an output stream port with random ``ready`` (ready back-pressure).

    Every accepted payload word is appended to :attr:`received` and passed to ``callback``.
    """

    def __init__(self, dut, prefix: str, clk, ready_prob: float = 1.0, rng: random.Random | None = None,
                 callback: Callable[[int], None] | None = None):
        self.valid = getattr(dut, f"{prefix}__valid")
        self.ready = getattr(dut, f"{prefix}__ready")
        self.payload = getattr(dut, f"{prefix}__payload")
        self.clk = clk
        self.ready_prob = ready_prob
        self.rng = rng or random.Random(1)
        self.callback = callback
        self.received: list[int] = []
        self.ready.value = 0
        self._task = cocotb.start_soon(self._run())

    async def _run(self) -> None:
        while True:
            self.ready.value = 1 if self.rng.random() < self.ready_prob else 0
            await FallingEdge(self.clk)
            if _read_int(self.valid) == 1 and _read_int(self.ready) == 1:
                word = _read_int(self.payload)
                self.received.append(word)
                if self.callback is not None:
                    self.callback(word)
            await RisingEdge(self.clk)

    def stop(self) -> None:
        self._task.cancel()
        self.ready.value = 0


class Scoreboard:
    """In-order comparison of received transactions with expected ones.

    Parameters
    ----------
    name : str
        Used in messages.
    fields : sequence of str, optional
        Only these keys of the (dict) transactions are compared.
    """

    def __init__(self, name: str, fields: Sequence[str] | None = None, max_report: int = 10):
        self.name = name
        self.fields = list(fields) if fields is not None else None
        self.expected: deque[tuple[Any, Any]] = deque()
        self.errors: list[str] = []
        self.matched = 0
        self.max_report = max_report

    def expect(self, value: dict, context: Any = None) -> None:
        """Queue one expected transaction (``context`` is printed on mismatch, e.g. the input)."""
        self.expected.append((value, context))

    def check(self, got: dict) -> None:
        """Compare one received transaction with the oldest expected one."""
        if not self.expected:
            self.errors.append(f"{self.name}: unexpected extra transaction {got}")
            return
        exp, ctx = self.expected.popleft()
        keys = self.fields if self.fields is not None else list(exp)
        diff = {k: (got.get(k), exp[k]) for k in keys if got.get(k) != exp[k]}
        if diff:
            self.errors.append(f"{self.name}: got != expected for {diff} (input {ctx})")
        else:
            self.matched += 1

    def result(self) -> None:
        """Raise ``AssertionError`` listing mismatches / missing transactions; no-op when clean."""
        msgs = list(self.errors)
        if self.expected:
            msgs.append(f"{self.name}: {len(self.expected)} expected transactions never arrived")
        if msgs:
            head = "\n  ".join(msgs[:self.max_report])
            more = f"\n  ... and {len(msgs) - self.max_report} more" if len(msgs) > self.max_report else ""
            raise AssertionError(f"{self.name}: {len(msgs)} problem(s), {self.matched} matched:\n  {head}{more}")


class Testbench:
    """Clock, reset and config helpers around one Amaranth DUT (clock ``clk``, reset ``rst``).

    Parameters
    ----------
    dut : cocotb handle
    seed : int
        Seed of the back-pressure random generator.
    """

    def __init__(self, dut, seed: int = 0):
        self.dut = dut
        self.clk = dut.clk
        self.rng = random.Random(seed)
        self._clock = None

    async def start(self, reset_cycles: int = 3) -> None:
        """Start the clock and pulse reset."""
        self._clock = cocotb.start_soon(Clock(self.clk, CLOCK_PERIOD_NS, unit="ns").start())
        self.dut.rst.value = 1
        await ClockCycles(self.clk, reset_cycles)
        self.dut.rst.value = 0
        await RisingEdge(self.clk)

    def configure(self, **values: int) -> None:
        """Set config ports (``name=value``); hold them stable while beats are in flight."""
        for name, value in values.items():
            getattr(self.dut, name).value = int(value)

    async def wait_until(self, cond: Callable[[], bool], timeout_cycles: int, what: str) -> None:
        """Wait (whole cycles) until ``cond()`` is true; ``AssertionError`` after ``timeout_cycles``."""
        for _ in range(timeout_cycles):
            if cond():
                return
            await RisingEdge(self.clk)
        if not cond():
            raise AssertionError(f"timeout after {timeout_cycles} cycles waiting for {what}")

    async def cycles(self, n: int) -> None:
        await ClockCycles(self.clk, n)

    async def settle(self) -> None:
        """Let combinational outputs settle after a config change (half a cycle)."""
        await Timer(1, unit="ns")


async def run_stream_groups(tb: Testbench, groups: Sequence[dict], in_port: str, in_codec: PayloadCodec,
                            out_ports: dict[str, tuple[PayloadCodec, str]], *, valid_prob: float = 0.7,
                            ready_prob: float = 0.7, setup=None, extra_cycles=None) -> int:
    """Run groups of stream transactions, each under its own config, and check every output.

    Each group is a dict with

    * ``"name"``: label for messages,
    * ``"config"``: ``{port: int}`` config values, set while the pipeline is empty,
    * ``"pulse"`` (optional): 1-bit ports pulsed high for one cycle before the group (e.g. ``clear``),
    * ``"inputs"``: list of ``{field: int}`` dicts for ``in_port``,
    * one key per output port (named by ``out_ports[port][1]``): the expected ``{field: int}`` list,
    * ``"after"`` (optional): ``{port: int}`` expected values of status ports once the group drained.

    ``setup`` (optional): ``async setup(tb, group)`` run after the config is set, before the pulses
    (e.g. loading a table). ``extra_cycles`` (optional): ``extra_cycles(group)``, cycles of latency
    the group may take beyond its input count (long-latency units) before the wait times out.

    Returns the number of checked output transactions.
    """
    driver = StreamDriver(tb.dut, in_port, tb.clk, valid_prob, random.Random(tb.rng.random()))
    monitors = {p: StreamMonitor(tb.dut, p, tb.clk, ready_prob, random.Random(tb.rng.random()))
                for p in out_ports}
    checked = 0
    for group in groups:
        name = group.get("name", "?")
        tb.configure(**group.get("config", {}))
        if setup is not None:
            await setup(tb, group)
        for port in group.get("pulse", []):
            getattr(tb.dut, port).value = 1
            await RisingEdge(tb.clk)
            getattr(tb.dut, port).value = 0
        await RisingEdge(tb.clk)
        boards = {}
        for port, (codec, key) in out_ports.items():
            board = Scoreboard(f"{name}/{port}")
            for exp, inp in zip(group[key], _contexts(group, len(group[key]))):
                board.expect(exp, inp)
            boards[port] = board
            monitors[port].callback = (lambda b, c: (lambda w: b.check(c.unpack(w))))(board, codec)
        driver.send(in_codec.pack(v) for v in group["inputs"])
        n = len(group["inputs"]) + (extra_cycles(group) if extra_cycles is not None else 0)
        await tb.wait_until(lambda: driver.idle and all(not b.expected for b in boards.values()),
                            40 * n + 200, f"group {name}: all outputs")
        await ClockCycles(tb.clk, 2)
        for board in boards.values():
            board.result()
            checked += board.matched
        for port, want in group.get("after", {}).items():
            got = int(getattr(tb.dut, port).value)
            if got != int(want):
                raise AssertionError(f"group {name}: status port {port} = {got}, expected {want}")
    driver.stop()
    for mon in monitors.values():
        mon.stop()
    return checked


def _contexts(group: dict, n: int) -> list:
    """Per-output context for messages: the input with the same index when counts match."""
    inputs = group.get("inputs", [])
    return inputs if len(inputs) == n else [None] * n
