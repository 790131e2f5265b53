"""Shared helper of the Amaranth-simulator unit tests: push a stream through a ``wiring.Component``."""
from __future__ import annotations

from amaranth.sim import Simulator


def amaranth_stream_run(dut, items, out_fields, config, max_cycles=20000, outputs=("o",), count_port="o",
                         setup=None, count=None, cycles=None):
    """Push ``items`` (dicts for dut.i.payload) through ``dut`` in the Amaranth simulator.

    Every port in ``outputs`` is always ready; beats are recorded when ``valid``.  Returns the list of
    ``count_port`` payload dicts (fields ``out_fields``) when ``outputs`` has one port, else a dict of
    lists per port (all payload fields).  Stops once ``count_port`` delivered ``count`` (default
    ``len(items)``) beats.  ``setup`` (optional ``async setup(ctx)``) runs after the config is set,
    before the first item; ``cycles`` (optional list) receives the number of cycles from the first
    item to the last recorded beat.
    """
    results = {port: [] for port in outputs}
    count = len(items) if count is None else count

    async def bench(ctx):
        for name, value in config.items():
            ctx.set(getattr(dut, name), value)
        if setup is not None:
            await setup(ctx)
        for port in outputs:
            ctx.set(getattr(dut, port).ready, 1)
        pending = list(items)
        for cycle in range(max_cycles):
            if pending:
                ctx.set(dut.i.payload, pending[0])
                ctx.set(dut.i.valid, 1)
            else:
                ctx.set(dut.i.valid, 0)
            took = bool(pending) and ctx.get(dut.i.ready)
            beats = {port: ctx.get(getattr(dut, port).payload) for port in outputs
                     if ctx.get(getattr(dut, port).valid)}
            await ctx.tick()
            if took:
                pending.pop(0)
            for port, beat in beats.items():
                fields = out_fields if len(outputs) == 1 else list(beat.shape().members)
                results[port].append({f: int(getattr(beat, f)) for f in fields})
            if len(results[count_port]) == count:
                if cycles is not None:
                    cycles.append(cycle + 1)
                return
        raise AssertionError(f"timeout: {len(results[count_port])} of {count} outputs")

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return results[outputs[0]] if len(outputs) == 1 else results


def ladder_writer(dut, ladder):
    """``async setup(ctx)`` for :func:`amaranth_stream_run`: write the ``[R, T]`` ladder entries."""

    async def setup(ctx):
        for addr, (r, t) in enumerate(ladder):
            ctx.set(dut.ladder_we, 1)
            ctx.set(dut.ladder_addr, addr)
            ctx.set(dut.ladder_r, r)
            ctx.set(dut.ladder_t, t)
            await ctx.tick()
        ctx.set(dut.ladder_we, 0)

    return setup
