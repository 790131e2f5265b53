"""cocotb testbench of the layer engine (:class:`hw.engine.LayerEngine`).

Structure (matrix-multiplier example style):

* **driver** -- one :class:`tb.bench.StreamDriver` per input stream (``cmd``, ``a``, ``b``, ``colp``,
  ``rowp``, ``outl``) with random valid gaps;
* **monitor** -- a :class:`tb.bench.StreamMonitor` on ``out`` with random ready back-pressure;
* **model** -- expected rows from ``sim/reference.py`` and expected cycles from :mod:`sim.schedule`,
  computed before the simulation (:mod:`tb.engine_streams`) and handed over as JSON;
* **checker** -- a :class:`tb.bench.Scoreboard` comparing each output row (lanes ``< n``) in order,
  plus the cycle counter and the sticky error flags at the end of the layer.

Test data (``VITACCEL_TB_DATA``): ``{"cols": C, "cases": [case, ...]}``; a case is a
:func:`tb.engine_streams.layer_case` dict plus ``valid_prob``, ``ready_prob`` and optionally
``reset_after`` (cycles after which reset is pulsed mid-stream; the layer is then run again from a
clean start and must still be exact).  Per-case measured cycles are written to
``engine_cycles.json`` in the run directory.
"""
from __future__ import annotations

import json
import os
import random

import cocotb
from cocotb.triggers import ClockCycles, RisingEdge

from vitaccel.tb.bench import Scoreboard, StreamDriver, StreamMonitor, Testbench
from vitaccel.tb.engine_streams import unpack_out
from vitaccel.tb.runner import read_test_data

PORTS = ("a", "b", "colp", "rowp", "outl")


class EngineTestbench(Testbench):
    """Drivers, monitor, scoreboard and status checks around one LayerEngine DUT."""

    def __init__(self, dut, cols: int, seed: int = 0):
        super().__init__(dut, seed)
        self.cols = cols
        self.has_outl = hasattr(dut, "outl__valid")
        self.drivers: dict[str, StreamDriver] = {}
        self.monitor: StreamMonitor | None = None

    def _attach(self, case: dict, board: Scoreboard | None) -> None:
        self._detach()
        vp = float(case.get("valid_prob", 1.0))
        rp = float(case.get("ready_prob", 1.0))
        self.drivers["cmd"] = StreamDriver(self.dut, "cmd", self.clk, 1.0, random.Random(self.rng.random()))
        for p in PORTS:
            if p == "outl" and not self.has_outl:
                continue
            self.drivers[p] = StreamDriver(self.dut, p, self.clk, vp, random.Random(self.rng.random()))

        def on_out(word: int) -> None:
            if board is None:
                return
            got = unpack_out(word, self.cols)
            exp_n = board.expected[0][0]["n"] if board.expected else self.cols
            board.check({"row": got["row"], "col": got["col"], "data": got["data"][:exp_n],
                         "sat": got["sat"] & ((1 << exp_n) - 1)})
        self.monitor = StreamMonitor(self.dut, "out", self.clk, rp, random.Random(self.rng.random()), on_out)

    def _detach(self) -> None:
        for d in self.drivers.values():
            d.stop()
        self.drivers = {}
        if self.monitor is not None:
            self.monitor.stop()
            self.monitor = None

    def _send(self, case: dict) -> None:
        self.drivers["cmd"].send([case["cmd"]])
        for p in PORTS:
            if p in self.drivers:
                self.drivers[p].send(case["streams"][p])

    async def run_case(self, case: dict) -> dict:
        """Run one layer; return measured numbers; raise AssertionError on any mismatch."""
        if case.get("reset_after"):
            self._attach(case, None)
            self._send(case)
            await ClockCycles(self.clk, int(case["reset_after"]))
            self._detach()
            self.dut.rst.value = 1
            await ClockCycles(self.clk, 3)
            self.dut.rst.value = 0
            await RisingEdge(self.clk)
            assert int(self.dut.busy.value) == 0, "engine still busy after reset"
        board = Scoreboard(case["name"], fields=["row", "col", "data", "sat"])
        for e in case["expected"]:
            board.expect({"row": e["row"], "col": e["col"], "data": e["data"], "sat": e["sat"], "n": e["n"]})
        self._attach(case, board)
        self._send(case)
        wall = 0
        # wait for the command to be taken, then for the layer to finish and all rows to arrive
        while self.drivers["cmd"].sent == 0:
            await RisingEdge(self.clk)
            wall += 1
        limit = 50 * int(case["cycles"]) + 1000
        while int(self.dut.busy.value) == 1 or board.expected:
            await RisingEdge(self.clk)
            wall += 1
            if wall > limit:
                raise AssertionError(f"{case['name']}: timeout after {wall} cycles "
                                     f"({len(board.expected)} rows missing, busy={int(self.dut.busy.value)})")
        await ClockCycles(self.clk, 2)
        self._detach()
        board.result()
        measured = int(self.dut.cycles.value)
        flags = {f: int(getattr(self.dut, f).value) for f in case["flags"]}
        assert measured == case["cycles"], (
            f"{case['name']}: RTL cycle counter {measured} != sim.schedule {case['cycles']}")
        assert flags == case["flags"], f"{case['name']}: flags {flags} != expected {case['flags']}"
        return {"name": case["name"], "cycles": measured, "wall_cycles": wall, "rows": board.matched,
                "shape": case["shape"], "utilisation": case.get("utilisation")}


@cocotb.test()
async def engine_layers(dut):
    """Every case of the test data: exact outputs, cycle count == sim.schedule, flags."""
    data = read_test_data()
    tb = EngineTestbench(dut, int(data["cols"]), seed=int(data.get("seed", 0)))
    await tb.start()
    results = []
    for case in data["cases"]:
        res = await tb.run_case(case)
        dut._log.info("%s: %d cycles (model %d), %d wall cycles, %d rows", res["name"], res["cycles"],
                      case["cycles"], res["wall_cycles"], res["rows"])
        results.append(res)
    out = data.get("report")
    if out:
        with open(out, "w") as fh:
            json.dump(results, fh, indent=1)
    else:
        with open(os.path.join(os.getcwd(), "engine_cycles.json"), "w") as fh:
            json.dump(results, fh, indent=1)
