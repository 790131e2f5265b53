"""Where the clock goes: every register-to-register path of a routed design, grouped by unit.

nextpnr reports one critical path per clock.  To see how many paths miss a target and in which
unit they end, :func:`unit_timing` re-times the whole routed design from the SDF file nextpnr writes
(``--sdf``: the delay of every routed net arc and every cell arc) with a plain static timing
analysis: arrival time of every pin (clock-to-out of every clocked cell, plus cell and net delays
along the longest path), required time at every clocked input (period minus its setup time).  Its
worst path is nextpnr's critical path to within about 0.05 ns (``tests/test_hw_synth.py`` checks the
agreement on a real run): the SDF gives the second half of a carry slice the first half's
``FCI -> F`` delay (0.443 ns) where nextpnr's own model uses 0.40 ns, so a path ending in a carry
chain's last bit reads up to 0.04 ns longer here.  On the 8 x 8 W4A4 engine (session 29) nextpnr
reports 10.44 ns (95.77 MHz) and this analysis gives 10.442 ns for the same endpoint; its own worst
path there (10.47 ns, a distributed-RAM write after a carry chain) is one of those 0.04 ns cases.

Delays are the SDF's slow corner (the third value of each ``(min:typ:max)`` triple, the value
nextpnr's own report prints).  A ``CCU2C`` carry slice is two ``TRELLIS_COMB`` halves; the SDF
gives both halves a ``FCI -> FCO`` delay, nextpnr's timing (and its critical path report) counts it
once per slice, on the first half: so does this analysis.  Paths through the contents of
distributed RAM (write clock to read data) and from top-level ports are not timed, as in nextpnr's
report of an out-of-context design.  A ``MULT18X18D`` with its registers (hw/dsp.py) launches from its
``CLK0``-``CLK3`` pins (``CLK0 -> P*``) like any register; until session 36 only ``CLK``, ``CLKA``,
``CLKB`` and ``WCK`` were clocks here, so paths starting at a DSP's output register were not timed.

A *unit* is the first component of an instance name with yosys' ``$N`` suffixes removed
(``mac``, ``drain``, ``output``, ``stall`` ...): the engine's submodule names (hw/engine.py), from
which nextpnr's cell names are derived; cells yosys named after a top-level net form the unit
``(top)``.
"""
from __future__ import annotations

import re
from collections import defaultdict, deque
from dataclasses import dataclass, field

__all__ = ["SdfError", "TimingGraph", "parse_sdf", "endpoint_delays", "worst_path", "unit_timing", "unit_of"]

_CELL = re.compile(r'\(CELL\s*\(CELLTYPE\s+"([^"]*)"\)\s*\(INSTANCE\s*([^)]*)\)')
_IOPATH = re.compile(r'\(IOPATH\s+(\S+)\s+(\S+)\s+\(([-\d.]+):([-\d.]+):([-\d.]+)\)')
_SETUP = re.compile(r'\(SETUPHOLD\s+\((?:posedge|negedge)\s+(\S+)\)\s+\((?:posedge|negedge)\s+(\S+)\)\s+'
                    r'\(([-\d.]+):([-\d.]+):([-\d.]+)\)')
_NET = re.compile(r'\(INTERCONNECT\s+(\S+)\s+(\S+)\s+\(([-\d.]+):([-\d.]+):([-\d.]+)\)')
_TIMESCALE = re.compile(r'\(TIMESCALE\s+(\d+)\s*(ps|ns)\)')
_CLOCK_PIN = re.compile(r"CLK[AB0-3]?|WCK")     # FF / DPR16X4 / DP16KD ports A, B / MULT18X18D CLK0-3


class SdfError(ValueError):
    """The SDF text is not the kind nextpnr writes (no cells, no timescale, or a timing loop)."""


def _unescape(name: str) -> str:
    return name.replace("\\", "")


@dataclass
class TimingGraph:
    """Pins (``instance/pin``) and their arcs, in nanoseconds.

    ``launch[p]``: clock-to-out delay of a clocked output pin ``p``; ``setup[p]``: setup time of a
    clocked input pin; ``arcs[p]``: ``(q, delay)`` for every cell or net arc ``p -> q``.
    """

    launch: dict = field(default_factory=dict)
    setup: dict = field(default_factory=dict)
    arcs: dict = field(default_factory=lambda: defaultdict(list))


def parse_sdf(text: str) -> TimingGraph:
    """Timing graph of an SDF file written by nextpnr (cell ``IOPATH`` / ``SETUPHOLD``, ``INTERCONNECT``)."""
    ts = _TIMESCALE.search(text)
    if ts is None:
        raise SdfError("no TIMESCALE in the SDF text: not an SDF file written by nextpnr --sdf")
    scale = float(ts.group(1)) * (1e-3 if ts.group(2) == "ps" else 1.0)
    g = TimingGraph()
    starts = [(mt.start(), mt) for mt in _CELL.finditer(text)]
    if not starts:
        raise SdfError("no CELL entries in the SDF text: was the design placed and routed?")
    bounds = [s for s, _ in starts[1:]] + [len(text)]
    for (s, mt), e in zip(starts, bounds):
        inst = _unescape(mt.group(2).strip())
        if not inst:           # the top cell: its INTERCONNECT entries follow
            continue
        body = text[s:e]
        for a, b, _, _, worst in _IOPATH.findall(body):
            d = float(worst) * scale
            if _CLOCK_PIN.fullmatch(a):
                g.launch[f"{inst}/{b}"] = max(g.launch.get(f"{inst}/{b}", 0.0), d)
            elif not (a == "FCI" and b == "FCO" and inst.endswith("$CCU2_COMB1")):
                g.arcs[f"{inst}/{a}"].append((f"{inst}/{b}", d))
            else:   # one carry delay per slice (see the module docstring)
                g.arcs[f"{inst}/{a}"].append((f"{inst}/{b}", 0.0))
        for pin, _clk, _, _, worst in _SETUP.findall(body):
            p = f"{inst}/{pin}"
            g.setup[p] = max(g.setup.get(p, 0.0), float(worst) * scale)
    for a, b, _, _, worst in _NET.findall(text):
        g.arcs[_unescape(a)].append((_unescape(b), float(worst) * scale))
    return g


def _arrivals(g: TimingGraph) -> tuple[dict, dict]:
    """Longest-path arrival time of every pin a clocked output reaches, and its predecessor arc."""
    indeg = defaultdict(int)
    for p, outs in g.arcs.items():
        for q, _ in outs:
            indeg[q] += 1
    arrival, pred = dict(g.launch), {}
    nodes = set(g.arcs) | set(indeg) | set(g.launch)
    queue = deque(p for p in nodes if indeg[p] == 0)
    seen = 0
    while queue:
        p = queue.popleft()
        seen += 1
        t = arrival.get(p)
        for q, d in g.arcs.get(p, ()):
            if t is not None and t + d > arrival.get(q, -1.0):
                arrival[q], pred[q] = t + d, (p, d)
            indeg[q] -= 1
            if indeg[q] == 0:
                queue.append(q)
    if seen != len(nodes):
        raise SdfError(f"combinational loop in the timing graph ({len(nodes) - seen} pins on or after it)")
    return arrival, pred


def _start(pin: str, pred: dict) -> str:
    while pin in pred:
        pin = pred[pin][0]
    return pin


def endpoint_delays(g: TimingGraph) -> list[tuple[str, str, float]]:
    """``(endpoint pin, start pin, delay ns)`` of the longest path into every clocked input.

    The delay includes the start's clock-to-out and the endpoint's setup time, so ``1000 / delay``
    is the Fmax that endpoint allows.  Pins no clocked output reaches are left out.
    """
    arrival, pred = _arrivals(g)
    return [(p, _start(p, pred), arrival[p] + s) for p, s in g.setup.items() if p in arrival]


def worst_path(g: TimingGraph, endpoint: str) -> list[tuple[str, float, float]]:
    """The longest path into ``endpoint``: ``(pin, delay of the arc into it, arrival ns)`` from its
    start (clock-to-out as the first delay) to the endpoint (its setup time added as a last step)."""
    arrival, pred = _arrivals(g)
    if endpoint not in g.setup or endpoint not in arrival:
        raise SdfError(f"{endpoint} is not a timed endpoint of the SDF (give instance/PIN of a clocked input)")
    steps, p = [], endpoint
    while p in pred:
        steps.append((p, pred[p][1], arrival[p]))
        p = pred[p][0]
    steps.append((p, g.launch[p], arrival[p]))
    steps.reverse()
    steps.append((f"{endpoint} (setup)", g.setup[endpoint], arrival[endpoint] + g.setup[endpoint]))
    return steps


def unit_of(pin: str) -> str:
    """The unit of an instance pin: first name component, without yosys' ``$N`` suffix."""
    inst = pin.rsplit("/", 1)[0]
    head = re.split(r"[.$\[]", inst, maxsplit=1)[0]
    return head if "." in inst and head else "(top)"


def unit_timing(sdf_text: str, target_mhz: float, top_paths: int = 10) -> dict:
    """Per-unit endpoint count, failing count and worst path at ``target_mhz``, from nextpnr's SDF.

    Returns ``{"target_mhz", "fmax_mhz", "endpoints", "failing", "histogram", "units", "worst"}``:
    ``units[u]`` = ``{"endpoints", "failing", "worst_ns", "fmax_mhz", "worst_start", "worst_end"}`` for the paths
    that *end* in unit ``u``; ``histogram`` counts endpoints per Fmax band; ``worst`` lists the
    ``top_paths`` worst paths from distinct (start unit, end unit) pairs.
    """
    ends = endpoint_delays(parse_sdf(sdf_text))
    if not ends:
        raise SdfError("no register-to-register paths in the SDF text")
    period = 1000.0 / target_mhz
    units: dict = {}
    for end, start, d in ends:
        u = units.setdefault(unit_of(end), {"endpoints": 0, "failing": 0, "worst_ns": 0.0, "worst_start": ""})
        u["endpoints"] += 1
        u["failing"] += d > period
        if d > u["worst_ns"]:
            u["worst_ns"], u["worst_start"], u["worst_end"] = d, start, end
    for u in units.values():
        u["worst_ns"] = round(u["worst_ns"], 3)
        u["fmax_mhz"] = round(1000.0 / u["worst_ns"], 2)
    bands = [50, 75, 100, 125, 150, 175, 200]
    hist = {f"< {b} MHz": sum(1 for _, _, d in ends if 1000.0 / d < b and (i == 0 or 1000.0 / d >= bands[i - 1]))
            for i, b in enumerate(bands)}
    hist[f">= {bands[-1]} MHz"] = sum(1 for _, _, d in ends if 1000.0 / d >= bands[-1])
    worst, pairs = [], set()
    for end, start, d in sorted(ends, key=lambda x: -x[2]):
        key = (unit_of(start), unit_of(end))
        if key in pairs:
            continue
        pairs.add(key)
        worst.append({"start": start, "end": end, "ns": round(d, 3), "mhz": round(1000.0 / d, 2)})
        if len(worst) == top_paths:
            break
    dmax = max(d for _, _, d in ends)
    return {"target_mhz": target_mhz, "fmax_mhz": round(1000.0 / dmax, 2), "endpoints": len(ends),
            "failing": sum(1 for _, _, d in ends if d > period), "histogram": hist,
            "units": dict(sorted(units.items(), key=lambda kv: -kv[1]["worst_ns"])), "worst": worst}


def register_groups(endpoints, target_mhz: float) -> list[dict]:
    """Endpoints grouped by register family: the instance name up to ``_TRELLIS`` with every number
    replaced by ``#``, plus the pin (``pe#_#_acc/LSR``).  ``endpoints`` as :func:`endpoint_delays`
    returns them; the groups come worst first, each with its count, the count missing
    ``target_mhz``, and its worst delay and start."""
    import re
    limit = 1000.0 / target_mhz
    groups: dict = {}
    for end, start, ns in endpoints:
        inst, _, pin = end.rpartition("/")
        key = re.sub(r"\d+", "#", inst.split("_TRELLIS")[0]) + "/" + pin
        g = groups.setdefault(key, {"group": key, "endpoints": 0, "failing": 0, "worst_ns": 0.0, "worst_start": ""})
        g["endpoints"] += 1
        g["failing"] += ns > limit
        if ns > g["worst_ns"]:
            g["worst_ns"], g["worst_start"] = round(ns, 3), start
    return sorted(groups.values(), key=lambda g: -g["worst_ns"])

