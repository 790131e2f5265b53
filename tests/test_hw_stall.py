"""hw/stall.py: the engine's input skid buffer and the registered enable copies (Amaranth simulation).

Expected values come from a plain Python FIFO model (a deque), never from the RTL.
"""
from __future__ import annotations

import random
from collections import deque

from amaranth.hdl import Module, Signal
from amaranth.sim import Simulator

import pytest

from vitaccel.hw.stall import BackEndEnable, GlobalStall, SkidBuffer, delay_line, enable_copies, fifo_threshold


def _simulate(dut, bench):
    """Run the testbench ``bench`` on ``dut`` with a clock."""
    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()


@pytest.mark.parametrize("slice_bits,depth", [(64, 2), (3, 2), (3, 4)])
def test_skid_buffer_matches_fifo_model_and_predicts_next_cycle(slice_bits, depth):
    dut = SkidBuffer(8, slice_bits=slice_bits, depth=depth)    # 3: three slices with their own control copies
    rng = random.Random(7)
    log = []

    async def bench(ctx):
        model: deque[int] = deque()
        nxt_val = 0
        prev = None          # (avail_if_pop, avail_if_hold, popped, head_next) of the last cycle
        for _ in range(400):
            valid = rng.random() < 0.6
            ctx.set(dut.i.valid, int(valid))
            ctx.set(dut.i.payload, nxt_val)
            nonempty = ctx.get(dut.nonempty)
            pop = nonempty and rng.random() < 0.5
            ctx.set(dut.pop, int(pop))
            # state seen in this cycle against the model
            assert nonempty == (len(model) > 0)
            assert ctx.get(dut.i.ready) == (len(model) < depth)
            if model:
                assert ctx.get(dut.head) == model[0]
            if prev is not None:
                a_pop, a_hold, popped, head_next = prev
                assert (len(model) > 0) == (a_pop if popped else a_hold)
                if model:
                    assert head_next == model[0]
            prev = (ctx.get(dut.avail_if_pop), ctx.get(dut.avail_if_hold), pop, ctx.get(dut.head_next))
            # advance the model exactly as the clock edge will
            pushed = valid and len(model) < depth
            if pop:
                log.append(model.popleft())
            if pushed:
                model.append(nxt_val)
                nxt_val = (nxt_val + 1) % 256
            await ctx.tick()

    _simulate(dut, bench)
    assert len(log) > 100 and log == [i % 256 for i in range(len(log))]   # in order, none lost or repeated


@pytest.mark.parametrize("pop_delay,slice_bits,depth", [(1, 64, 2), (2, 3, 2), (2, 3, 4), (3, 3, 8)])
def test_deferred_skid_buffer_hands_each_taken_beat_to_the_back_end(pop_delay, slice_bits, depth):
    """``pop_delay = d``: the front end's view (nonempty, next-cycle predictions) counts the entries
    not taken yet; ``head`` d cycles after a pop is the beat that pop took; ``ready`` reflects the
    entries still held (a taken entry keeps its place for d cycles)."""
    dut = SkidBuffer(8, slice_bits=slice_bits, pop_delay=pop_delay, depth=depth)
    rng = random.Random(11 + pop_delay)
    taken_log, back_log, fronts = [], [], {}      # fronts: cycle -> oldest beat not taken yet

    async def bench(ctx):
        untaken: deque[int] = deque()          # model: beats not taken yet
        leaving: deque[tuple[int, int]] = deque()   # (cycle it leaves the payload, beat)
        nxt_val, prev = 0, None
        for t in range(500):
            held = len(untaken) + len(leaving)
            valid = rng.random() < 0.5
            ctx.set(dut.i.valid, int(valid))
            ctx.set(dut.i.payload, nxt_val)
            nonempty = ctx.get(dut.nonempty)
            pop = nonempty and rng.random() < 0.6
            ctx.set(dut.pop, int(pop))
            assert nonempty == (len(untaken) > 0)
            assert ctx.get(dut.i.ready) == (held < depth)
            if untaken:
                fronts[t] = untaken[0]
            if t - pop_delay in fronts:    # in general: head(t + d) == the untaken head of cycle t
                assert ctx.get(dut.head) == fronts[t - pop_delay]
            if leaving and leaving[0][0] == t:          # the back end reads the taken beat now
                back_log.append(ctx.get(dut.head))
                assert back_log[-1] == leaving[0][1]
                leaving.popleft()
            if prev is not None:
                a_pop, a_hold, popped = prev
                assert (len(untaken) > 0) == (a_pop if popped else a_hold)
            prev = (ctx.get(dut.avail_if_pop), ctx.get(dut.avail_if_hold), pop)
            pushed = valid and held < depth
            if pop:
                beat = untaken.popleft()
                taken_log.append(beat)
                leaving.append((t + pop_delay, beat))
            if pushed:
                untaken.append(nxt_val)
                nxt_val = (nxt_val + 1) % 256
            await ctx.tick()

    _simulate(dut, bench)
    assert len(back_log) > 80 and back_log == [i % 256 for i in range(len(back_log))]
    assert taken_log[:len(back_log)] == back_log


@pytest.mark.parametrize("depth,full_rate", [(2, False), (4, True)])
def test_deferred_buffer_of_depth_2_plus_delay_takes_a_beat_every_cycle(depth, full_rate):
    """With a source that is always valid and a pop whenever a beat is untaken, a deferred buffer
    (delay 2) of 4 entries pops in every cycle after the first; 2 entries cannot (taken entries hold
    their place for 2 cycles)."""
    dut = SkidBuffer(8, pop_delay=2, depth=depth)
    pops = []

    async def bench(ctx):
        ctx.set(dut.i.valid, 1)
        for _ in range(100):
            p = ctx.get(dut.nonempty)
            ctx.set(dut.pop, p)
            pops.append(p)
            await ctx.tick()

    _simulate(dut, bench)
    assert (sum(pops[1:]) == 99) == full_rate


def test_deferred_stream_front_fields_follow_the_untaken_head():
    """A deferred stream with front-end fields: ``front.<name>`` is the oldest beat not taken yet,
    ``head.<name>`` the beat taken ``delay`` cycles earlier (against a deque model)."""
    from amaranth.lib import data
    lay = data.StructLayout({"n_out": 8, "x": 8})
    dut = GlobalStall({"b": 4, "rowp": lay}, 8, delay=2, deferred={"rowp": ("n_out",)})
    rng = random.Random(5)
    seen = []

    async def bench(ctx):
        ctx.set(dut.status.busy, 1)
        ctx.set(dut.status.busy_adv, 1)
        untaken, leaving, nxt, need = deque(), deque(), 0, 1
        for t in range(400):
            valid = rng.random() < 0.5
            ctx.set(dut.rowp.valid, int(valid))
            ctx.set(dut.rowp.payload, {"n_out": nxt, "x": 255 - nxt})
            need_adv = int(rng.random() < 0.5)     # the schedule: need after an advance
            ctx.set(dut.need.rowp.now, need)
            ctx.set(dut.need.rowp.adv, need_adv)
            ready = ctx.get(dut.rowp.ready)
            assert ready == (len(untaken) + len(leaving) < 2)     # entries leave at the end of the read cycle
            en = ctx.get(dut.en.ctl)
            if untaken:
                assert ctx.get(dut.front.rowp.n_out) == untaken[0]
            if leaving and leaving[0][0] == t:
                beat = leaving.popleft()[1]
                assert ctx.get(dut.head.rowp.n_out) == beat and ctx.get(dut.head.rowp.x) == 255 - beat
                seen.append(beat)
            if en and need:
                assert untaken, "the enable was high with the needed beat missing"
                leaving.append((t + 2, untaken.popleft()))
            if valid and ready:
                untaken.append(nxt)
                nxt = (nxt + 1) % 256
            need = need_adv if en else need
            await ctx.tick()

    _simulate(dut, bench)
    assert len(seen) > 50 and seen == list(range(len(seen)))


def test_deferred_stream_must_be_read_by_the_back_end_only():
    with pytest.raises(ValueError, match="deferred streams"):
        GlobalStall({"a": 4, "b": 4, "outl": 8}, 8, deferred=("outl",))


def test_enable_copies_track_the_next_cycle_enable():
    m = Module()
    x_adv, x_hold, clear = Signal(), Signal(), Signal()
    copies = enable_copies(m, 3, x_adv, x_hold, clear)
    rng = random.Random(3)

    async def bench(ctx):
        en = 0           # model: every copy is the enable of the current cycle
        for _ in range(200):
            a, h, c = (int(rng.random() < p) for p in (0.7, 0.4, 0.1))
            ctx.set(x_adv, a)
            ctx.set(x_hold, h)
            ctx.set(clear, c)
            assert [ctx.get(e) for e in copies] == [en] * 3
            await ctx.tick()
            en = 0 if c else (a if en else h)

    sim = Simulator(m)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()


@pytest.mark.parametrize("delay", [1, 2, 3])
def test_back_end_enable_is_the_front_enable_delayed(delay):
    dut = BackEndEnable({"a": 3, "b": 1}, delay=delay)
    rng = random.Random(delay)
    seen = {"high": 0, "low": 0}

    async def bench(ctx):
        en, past = 0, [0] * delay           # model: the front end's enable and its last `delay` values
        for _ in range(300):
            a, h, c = (int(rng.random() < p) for p in (0.7, 0.4, 0.1))
            ctx.set(dut.x_adv, a)
            ctx.set(dut.x_hold, h)
            ctx.set(dut.start, c)
            want = past[0]                   # en `delay` cycles ago
            assert [ctx.get(dut.en.a[i]) for i in range(3)] + [ctx.get(dut.en.b)] == [want] * 4
            seen["high" if want else "low"] += 1
            await ctx.tick()
            past = past[1:] + [en]
            en = 0 if c else (a if en else h)

    _simulate(dut, bench)
    assert seen["high"] > 50 and seen["low"] > 50


def test_delay_line_and_fifo_threshold():
    m = Module()
    x = Signal(4)
    y = delay_line(m, x, 3, "x")
    vals = [random.Random(1).getrandbits(4) for _ in range(40)]

    async def bench(ctx):
        got = []
        for v in vals:
            ctx.set(x, v)
            got.append(ctx.get(y))
            await ctx.tick()
        assert got[3:] == vals[:-3] and got[:3] == [0, 0, 0]

    sim = Simulator(m)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    assert delay_line(m, x, 0, "z") is x
    # a decision taken now pushes its row delay + 1 cycles later; the level is one cycle old
    assert fifo_threshold(8, 2) == 3 and fifo_threshold(5, 2) == 0
    with pytest.raises(ValueError, match="too small"):
        fifo_threshold(4, 2)
    with pytest.raises(ValueError, match="delay must be >= 1"):
        BackEndEnable({"a": 1}, delay=0)
