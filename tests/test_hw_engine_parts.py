"""The layer engine's components, one at a time, in the Amaranth simulator.

Each test drives one component of :mod:`hw.engine` (controller, global stall, B buffer, column
parameters, tile descriptors, drain pipeline, output stage) with random stimulus and random stalls,
and compares it cycle by cycle with a small Python model written here from the documented behaviour
(docs/hardware.md "Dataflow and schedule", docs/datapath.md sections 1, 5, 6, 7) -- never from the
component's code.  The whole engine is checked bit for bit against ``sim/reference.py`` by
tests/test_rtl_engine.py.
"""
from __future__ import annotations

import random
from collections import deque

import pytest
from amaranth.sim import Simulator

from vitaccel.hw.engine_buffers import BBuffer, ColumnParams, TileDescriptors
from vitaccel.hw.engine_control import EngineController
from vitaccel.hw.engine_drain import DrainPipeline, OutputStage
from vitaccel.hw.push_fifo import CHUNK_BITS, PushFifo, push_chunks
from vitaccel.hw.stall import GlobalStall
from vitaccel.sim.engine_config import (DRAIN_OFFSET, REQUANT_LATENCY, EngineConfig)
from vitaccel.sim.schedule import layer_cycles


def _simulate(dut, bench):
    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()


def _s(v: int, bits: int) -> int:
    """``v`` wrapped to a signed ``bits``-bit integer."""
    v &= (1 << bits) - 1
    return v - (1 << bits) if v >> (bits - 1) else v


def _rs(bits: int, rng) -> int:
    """A random signed ``bits``-bit integer."""
    return rng.randint(-(1 << (bits - 1)), (1 << (bits - 1)) - 1)


# ----------------------------------------------------------------------------------------- controller
def _schedule(cfg: EngineConfig, M: int, K: int, N: int, counts: list[int]) -> list[dict]:
    """What the engine does in each enabled cycle of a layer (docs/hardware.md, "Dataflow and schedule").

    Fill window ``max(K, 3)`` (B block 0, first descriptor), one window per tile (MAC issue from
    ``a_s = max(0, d_prev - K)``, drain of the previous tile from ``DRAIN_OFFSET``, ``d_prev =
    requant_share * m_prev`` cycles, one drain position ``row * requant_share + group`` per cycle, the
    tile's outlier beats after the drain), the epilogue (drain of the last tile + drain and
    requantiser latency).
    """
    R, C, L, S = cfg.rows, cfg.cols, cfg.outlier_lanes, cfg.requant_share
    tiles = [{"r0": r0, "m": min(R, M - r0), "c0": c0, "bank": b % 2, "nb": -(-counts[r0 // R] // L)}
             for b, c0 in enumerate(range(0, N, C)) for r0 in range(0, M, R)]
    ev = []

    def cycle(**kw):
        d = {"a": None, "bank": None, "rowp": False, "colp": False, "drain": None, "outl": False,
             "commit": False, "tile_start": False, "shift": False, "take": False, "block": None, "cur": None}
        d.update(kw)
        ev.append(d)
    for w in range(max(K, 3)):
        cycle(rowp=w == 0, colp=w == 0)
    prev = None
    for s, t in enumerate(tiles):
        ev[-1].update(shift=True, take=True)          # window boundary: t becomes the current tile
        if t["r0"] == 0 and t["c0"] + C < N:
            ev[-1]["block"] = 1 - t["bank"]           # start loading the next column block
        mp = S * prev["m"] if prev else 0
        a = max(0, mp - K)
        W = max(a + K, mp + DRAIN_OFFSET, mp + DRAIN_OFFSET + t["nb"] if t["nb"] else 0)
        for w in range(W):
            cycle(a=w - a if a <= w < a + K else None, bank=t["bank"], cur=t, tile_start=w == 0,
                  rowp=w == 0 and s + 1 < len(tiles), colp=w == 0 and t["r0"] == 0 and t["c0"] + C < N,
                  commit=w == 0 and t["r0"] == 0,
                  drain=(w - DRAIN_OFFSET, prev) if prev and DRAIN_OFFSET <= w < DRAIN_OFFSET + mp else None,
                  outl=t["nb"] > 0 and DRAIN_OFFSET + mp <= w < DRAIN_OFFSET + mp + t["nb"])
        prev = t
    ev[-1].update(shift=True, take=False)             # into the epilogue
    for w in range(DRAIN_OFFSET + S * prev["m"] + cfg.pre_requant_latency + REQUANT_LATENCY):
        cycle(drain=(w - DRAIN_OFFSET, prev) if DRAIN_OFFSET <= w < DRAIN_OFFSET + S * prev["m"] else None)
    return ev


CTL_CFGS = [EngineConfig(rows=3, cols=2, a_bits=4, b_bits=4, acc_bits=24, outlier_capacity=4, outlier_lanes=2,
                         max_k=16),
            EngineConfig(rows=2, cols=3, a_bits=4, b_bits=4, acc_bits=24, outlier_capacity=0, max_k=8),
            EngineConfig(rows=3, cols=4, a_bits=4, b_bits=4, acc_bits=24, outlier_capacity=4, outlier_lanes=1,
                         max_k=16, requant_share=2)]


@pytest.mark.parametrize("cfg", CTL_CFGS, ids=["3x2_L2", "2x3_no_outliers", "3x4_share2"])
def test_engine_controller_follows_the_schedule_under_random_stalls(cfg):
    dut = EngineController(cfg)
    rng = random.Random(11)
    has_o = cfg.has_outliers
    layers = [(5, 4, 3, [1, 3]), (1, 1, 1, [0]), (7, 9, 5, [0, 5, 2]), (6, 1, 2, [2, 0]), (4, 2, 4, [4, 1])]
    if not has_o:
        layers = [(M, min(K, cfg.max_k), N, [0] * -(-M // cfg.rows)) for M, K, N, _ in layers]
    kmask = (1 << cfg.k_bits) - 1
    checked = {"a": 0, "drain": 0, "outl": 0, "rowp": 0}

    async def bench(ctx):
        for M, K, N, counts in layers:
            ev = _schedule(cfg, M, K, N, counts)
            assert len(ev) == layer_cycles(cfg, M, K, N, counts).total     # the model is the schedule
            beats = [-(-counts[r0 // cfg.rows] // cfg.outlier_lanes)
                     for _ in range(0, N, cfg.cols) for r0 in range(0, M, cfg.rows)]
            ctx.set(dut.en, 0)
            for f, v in {"m": M, "k": K, "n": N}.items():
                ctx.set(getattr(dut.cmd.payload, f), v)
            ctx.set(dut.cmd.valid, 1)
            assert ctx.get(dut.cmd.ready) and ctx.get(dut.status.start) and ctx.get(dut.loader.start)
            assert ctx.get(dut.loader.start_k) == K
            await ctx.tick()
            ctx.set(dut.cmd.valid, 0)
            e, loads, b_read = 0, 0, None
            while e < len(ev):
                x, nx = ev[e], (ev[e + 1] if e + 1 < len(ev) else None)
                assert ctx.get(dut.status.busy) and not ctx.get(dut.cmd.ready)
                assert ctx.get(dut.status.busy_adv) == (nx is not None)
                for k in ("a", "rowp", "colp") + (("outl",) if has_o else ()):
                    want = (lambda y: y is not None and bool(y[k] is not None if k == "a" else y[k]))
                    assert ctx.get(getattr(dut.need, k).now) == want(x), (e, k)
                    assert ctx.get(getattr(dut.need, k).adv) == want(nx), (e, k, "adv")
                assert ctx.get(dut.mac.issue) == (x["a"] is not None)
                assert ctx.get(dut.drain.issue) == (x["drain"] is not None)
                if x["a"] is not None:       # the B row addressed one clock earlier is this issue's row k
                    checked["a"] += 1
                    assert b_read == (x["a"] & kmask, x["bank"]), e
                if x["drain"] is not None:
                    checked["drain"] += 1
                    pos, t = x["drain"]
                    assert (ctx.get(dut.drain.pos), ctx.get(dut.drain.r0), ctx.get(dut.drain.c0)) == (pos, t["r0"],
                            t["c0"])
                    assert ctx.get(dut.columns.read_bank) == t["bank"]
                if has_o:
                    assert ctx.get(dut.outliers.issue) == x["outl"]
                    assert ctx.get(dut.outliers.tile_start) == x["tile_start"]
                    if x["outl"]:
                        checked["outl"] += 1
                        assert (ctx.get(dut.outliers.row0), ctx.get(dut.outliers.m)) == (x["cur"]["r0"], x["cur"]["m"])
                assert ctx.get(dut.columns.commit) == x["commit"]
                if x["commit"]:
                    assert ctx.get(dut.columns.commit_bank) == x["cur"]["bank"]
                assert ctx.get(dut.loader.block) == (x["block"] is not None)
                if x["block"] is not None:
                    assert ctx.get(dut.loader.bank) == x["block"]
                if e > 0:                     # operand column reaching the array (one enabled cycle later)
                    p = ev[e - 1]["a"]
                    assert ctx.get(dut.mac.valid) == (p is not None)
                    if p is not None:
                        assert (ctx.get(dut.mac.first), ctx.get(dut.mac.last)) == (p == 0, p == K - 1)
                en = rng.random() < 0.6
                ctx.set(dut.en, en)
                assert ctx.get(dut.descriptors.load) == (en and x["rowp"])
                assert ctx.get(dut.descriptors.shift) == (en and x["shift"])
                if x["shift"]:
                    assert ctx.get(dut.descriptors.take) == x["take"]
                if x["drain"] is not None and nx is not None and nx["drain"] is not None:
                    assert ctx.get(dut.drain.pos_adv) == nx["drain"][0]
                b_read = (ctx.get(dut.b_read.k), ctx.get(dut.b_read.bank))
                await ctx.tick()
                if en and x["rowp"]:          # act as the descriptor registers: beats of the loaded tile
                    checked["rowp"] += 1
                    ctx.set(dut.descriptors.nb, beats[loads])
                    loads += 1
                e += en
            assert not ctx.get(dut.status.busy) and ctx.get(dut.cycles) == len(ev)
            assert loads == len(beats)
            for _ in range(2):
                await ctx.tick()

    _simulate(dut, bench)
    assert checked["a"] > 100 and checked["drain"] > 30 and (checked["outl"] > 5 or not has_o)


# ------------------------------------------------------------------------------------------ global stall
def test_global_stall_enable_buffers_and_invariants():
    streams = {"a": 4, "b": 3, "colp": 5, "rowp": 2, "outl": 6}
    depth, delay = 7, 2
    dut = GlobalStall(streams, fifo_depth=depth, delay=delay)
    rng = random.Random(5)
    counts = {"pops": 0, "en": 0, "stalls": 0, "fifo_stalls": 0, "pushes": 0, "max_level": 0}

    async def bench(ctx):
        q = {s: deque() for s in streams}
        en, busy, level, fifo_ok = 0, 0, 0, 1
        history = deque([0] * delay)        # en of the last `delay` cycles: the back end's enable now
        need = dict.fromkeys(streams, 0)
        outl_next = None
        copies = [dut.en.ctl, dut.en.buf]
        for _ in range(1500):
            start = int(not busy and rng.random() < 0.3)
            busy_adv = int(busy and rng.random() < 0.98)
            need_adv = {s: int(rng.random() < 0.5) for s in streams}
            valid = {s: int(rng.random() < 0.7) for s in streams}
            for s, w in streams.items():
                ctx.set(getattr(dut, s).valid, valid[s])
                ctx.set(getattr(dut, s).payload, rng.getrandbits(w))
                port = dut.need_b if s == "b" else getattr(dut.need, s)
                ctx.set(port.now, need[s])
                ctx.set(port.adv, need_adv[s])
            for name, v in (("start", start), ("busy", busy), ("busy_adv", busy_adv)):
                ctx.set(getattr(dut.status, name), v)
            ctx.set(dut.fifo.level, level)
            # every enable copy is the model's enable; the stall never pops an empty buffer
            assert [ctx.get(c) for c in copies] == [en] * len(copies)
            for s in streams:
                assert ctx.get(getattr(dut, s).ready) == (len(q[s]) < 2)
                if q[s]:
                    assert ctx.get(getattr(dut.head, s)) == q[s][0]
                if en and need[s]:
                    assert q[s], s
            if outl_next is not None and q["outl"]:
                assert outl_next == q["outl"][0]
            payload = {s: ctx.get(getattr(dut, s).payload) for s in streams}
            outl_next = ctx.get(dut.outl_next)
            # model of the clock edge: pop what the schedule needed (if enabled), accept offered beats
            for s in streams:
                accept = valid[s] and len(q[s]) < 2
                if en and need[s]:
                    q[s].popleft()
                    counts["pops"] += 1
                if accept:
                    q[s].append(payload[s])
            # the back end (the engine `delay` cycles ago) may push a row whenever its enable is high;
            # a push must always find a free entry
            push = history[0] and rng.random() < 0.8
            assert not push or level <= depth - 1
            counts["pushes"] += bool(push)
            fifo_ok_n = level <= depth - 3 - delay          # registered in this cycle
            level = level + bool(push) - int(level > 0 and rng.random() < 0.3)
            counts["max_level"] = max(counts["max_level"], level)
            busy_n = 1 if start else (busy_adv if en else busy)
            need_n = {s: (need_adv[s] if en else need[s]) for s in streams}
            if start:
                need_n = {s: int(rng.random() < 0.5) for s in streams}
            # the next cycle is enabled iff a layer runs, every stream it needs holds a beat, and the
            # FIFO level of the last cycle leaves room for the rows still in flight
            ok = bool(busy_n and fifo_ok and all(q[s] or not need_n[s] for s in streams))
            assert ctx.get(dut.x_adv if en else dut.x_hold) == ok or start
            counts["en"] += en
            counts["stalls"] += busy and not en
            counts["fifo_stalls"] += busy_n and not fifo_ok
            history.popleft()
            history.append(en)
            en = int(not start and ok)
            busy, need, fifo_ok = busy_n, need_n, fifo_ok_n
            await ctx.tick()

    _simulate(dut, bench)
    assert counts["pops"] > 500 and counts["en"] > 200 and counts["stalls"] > 200
    assert counts["pushes"] > 200 and counts["fifo_stalls"] > 50 and counts["max_level"] >= depth - 2


# ------------------------------------------------------------------------------------------ B buffer
BUF_CFG = EngineConfig(rows=2, cols=2, a_bits=4, b_bits=4, acc_bits=24, outlier_capacity=2, outlier_lanes=2,
                       max_k=8)


def test_b_buffer_loader_and_read_ahead_rows():
    cfg = BUF_CFG
    dut = BBuffer(cfg)
    rng = random.Random(3)
    kb, C, L = cfg.k_bits, cfg.cols, cfg.outlier_lanes
    stats = {"writes": 0, "nonzero_reads": 0, "collisions": 0}

    async def bench(ctx):
        mem = [[0] * C for _ in range(2 << kb)]
        active, cnt, bank, K = 0, 0, 0, 1
        row, rd, orow, ord_ = [0] * C, [0] * C, [[0] * C] * L, [[0] * C] * L
        for cyc in range(1200):
            start = int(rng.random() < 0.01 or cyc == 0)
            new_k = rng.randint(1, cfg.max_k) if start else K      # K of the layer that starts
            en = int(not start and rng.random() < 0.7)
            block = int(not start and rng.random() < 0.1)
            nbank = rng.randint(0, 1)
            b = [_rs(cfg.b_bits, rng) for _ in range(C)]
            rk, rbank = rng.randint(0, (1 << kb) - 1), rng.randint(0, 1)
            cols = [rng.randint(0, (1 << 16) - 1) for _ in range(L)]
            oen = int(rng.random() < 0.7)
            for name, v in (("start", start), ("start_k", new_k), ("block", block), ("bank", nbank)):
                ctx.set(getattr(dut.ctl, name), v)
            ctx.set(dut.en, en)
            for c in range(C):
                ctx.set(dut.b[c], b[c])
            ctx.set(dut.read.k, rk)
            ctx.set(dut.read.bank, rbank)
            for l in range(L):
                ctx.set(dut.outl_next[l].col, cols[l])
            ctx.set(dut.outl_en, oen)
            # the loader's state and the registered rows
            adv = 1 if block else (0 if active and cnt + 1 == K else active)
            assert (ctx.get(dut.need.now), ctx.get(dut.need.adv)) == (active, adv)
            assert (ctx.get(dut.load.active), ctx.get(dut.load.first)) == (active, cnt == 0)
            assert [ctx.get(dut.load.row[c]) for c in range(C)] == b
            assert [ctx.get(dut.row[c]) for c in range(C)] == row
            assert [[ctx.get(dut.outl_rows[l][c]) for c in range(C)] for l in range(L)] == orow
            stats["nonzero_reads"] += any(row)
            # clock edge: registers load the previous cycle's memory read; the memory reads before it writes
            if en:
                row = rd
            if oen:
                orow = ord_
            # a read of the row written in the same cycle is undefined (the block RAM has no_rw_check);
            # the simulated form returns the old row inverted, so a used collision cannot pass unseen
            waddr = (bank << kb) | cnt if (en and not start and active) else None
            raddr = [(rbank << kb) | rk] + [(rbank << kb) | (cols[l] & ((1 << kb) - 1)) for l in range(L)]
            reads = [[~x if a == waddr else x for x in mem[a]] for a in raddr]
            stats["collisions"] += sum(a == waddr for a in raddr)
            rd, ord_ = reads[0], reads[1:]
            if start:
                active, cnt, bank, K = 1, 0, 0, new_k
            elif en:
                if active:
                    mem[(bank << kb) | cnt] = b
                    stats["writes"] += 1
                if block:
                    active, cnt, bank = 1, 0, nbank
                elif active:
                    cnt += 1
                    active = int(cnt < K)
            await ctx.tick()

    _simulate(dut, bench)
    assert stats["writes"] > 250 and stats["nonzero_reads"] > 300 and stats["collisions"] > 0, stats


# ------------------------------------------------------------------------------------ column parameters
def test_column_params_sum_loaded_rows_and_swap_banks():
    """Column sums and parameters of the loaded block, committed to a bank and read from the other;
    the load and control inputs apply one cycle after they are set (``load_ahead``, ``ctl_ahead``)."""
    cfg = BUF_CFG
    dut = ColumnParams(cfg)
    rng = random.Random(4)
    C, cb = cfg.cols, cfg.colsum_bits
    commits = [0]

    async def bench(ctx):
        acc, scratch = [0] * C, [(0, 0, 0)] * C
        banks = [([0] * C, [(0, 0, 0)] * C) for _ in range(2)]
        applied = {"active": 0, "first": 0, "row": [0] * C, "commit": 0, "commit_bank": 0, "read_bank": 0}
        for _ in range(800):
            en = int(rng.random() < 0.7)
            ahead = {"active": int(rng.random() < 0.8), "first": int(rng.random() < 0.15),
                     "row": [_rs(cfg.b_bits, rng) for _ in range(C)], "commit": int(rng.random() < 0.1),
                     "commit_bank": rng.randint(0, 1), "read_bank": rng.randint(0, 1)}
            colp = [(rng.getrandbits(16), rng.randint(0, 47), _rs(48, rng)) for _ in range(C)]
            ctx.set(dut.en, (1 << len(dut.en)) - 1 if en else 0)      # every column's enable copies
            ctx.set(dut.load_ahead.active, ahead["active"])
            ctx.set(dut.load_ahead.first, ahead["first"])
            for c in range(C):
                ctx.set(dut.load_ahead.row[c], ahead["row"][c])
                ctx.set(dut.colp[c].mc, colp[c][0])
                ctx.set(dut.colp[c].sc, colp[c][1])
                ctx.set(dut.colp[c].bq, colp[c][2])
            for name in ("commit", "commit_bank", "read_bank"):
                ctx.set(getattr(dut.ctl_ahead, name), ahead[name])
            sums, params = banks[applied["read_bank"]]
            assert [ctx.get(dut.colsum[c]) for c in range(C)] == sums
            assert [(ctx.get(dut.params[c].mc), ctx.get(dut.params[c].sc), ctx.get(dut.params[c].bq))
                    for c in range(C)] == params
            if en and applied["commit"]:            # the bank takes the values before this edge
                banks[applied["commit_bank"]] = (list(acc), list(scratch))
                commits[0] += 1
            if en and applied["active"]:
                acc = [_s((0 if applied["first"] else acc[c]) + applied["row"][c], cb) for c in range(C)]
                if applied["first"]:
                    scratch = colp
            applied = ahead
            await ctx.tick()

    _simulate(dut, bench)
    assert commits[0] > 30


# ------------------------------------------------------------------------------------ tile descriptors
@pytest.mark.parametrize("strobe_copies", [0, 3])
def test_tile_descriptors_next_current_previous(strobe_copies):
    """Next / current / previous descriptors and the drained row's ``za`` / ``Mr``; with ``strobe_copies``
    the strobes arrive a cycle ahead (registered in kept copies, each loading a third of the bits)."""
    cfg = EngineConfig(rows=3, cols=2, a_bits=4, b_bits=4, acc_bits=24, outlier_capacity=4, outlier_lanes=2,
                       max_k=8)
    dut = TileDescriptors(cfg, strobe_copies=strobe_copies)
    rng = random.Random(6)
    R, L = cfg.rows, cfg.outlier_lanes
    zero = {"mr": [0] * R, "za": [0] * R, "n_out": 0}
    seen_shift_sel = [0]        # selections that see the shift of their own cycle

    async def bench(ctx):
        nxt, cur, prev, nb = zero, zero, zero, 0
        sel, row_next = (0, 0), 0
        ahead = (0, 0, 0)                       # strobes set a cycle ago (they act now with copies)
        for _ in range(600):
            strobes = tuple(int(rng.random() < p) for p in (0.3, 0.3, 0.8))
            load, shift, take = ahead if strobe_copies else strobes
            ahead = strobes
            d = {"mr": [rng.getrandbits(16) for _ in range(R)], "za": [rng.getrandbits(24) for _ in range(R)],
                 "n_out": rng.choice([0, 1, 2, 3, 7, 8, rng.getrandbits(16)])}
            row = rng.randint(0, R - 1)
            for r in range(R):
                ctx.set(dut.rowp.mr[r], d["mr"][r])
                ctx.set(dut.rowp.za[r], d["za"][r])
            ctx.set(dut.rowp.n_out, d["n_out"])
            for name, v in zip(("load", "shift", "take"), strobes):
                ctx.set(getattr(dut.ctl, name), v)
            ctx.set(dut.drain_row_ahead, row)
            assert ctx.get(dut.ctl.nb) == nb and ctx.get(dut.cur_n_out) == cur["n_out"]
            # za / Mr: registers, selected a cycle ahead from the previous tile after this cycle's shift
            assert (ctx.get(dut.za), ctx.get(dut.mr)) == sel
            after = cur if shift else prev
            sel = (after["za"][row_next], after["mr"][row_next])
            row_next = row                      # the row set now is selected in the next cycle
            seen_shift_sel[0] += shift and cur != prev
            if shift:
                prev, cur = cur, (nxt if take else cur)
            if load:
                nxt, nb = d, -(-d["n_out"] // L)          # ceil(n_out / L) outlier beats
            await ctx.tick()

    _simulate(dut, bench)
    assert seen_shift_sel[0] > 50


# ------------------------------------------------------------------------------------- drain pipeline
DRAIN_CFG = EngineConfig(rows=3, cols=2, a_bits=4, b_bits=4, acc_bits=24, outlier_capacity=2, outlier_lanes=1,
                         max_k=8)


def _shared(cfg: EngineConfig, share: int) -> EngineConfig:
    """``cfg`` with ``requant_share = share`` (and 4 columns when shared: two lanes of two groups)."""
    return cfg if share == 1 else EngineConfig(**{**cfg.to_dict(), "cols": 2 * share, "requant_share": share})


@pytest.mark.parametrize("fo, n, share, b_bits", [(2, 7, 1, 4), (0, 3, 1, 4), (2, 5, 2, 4), (7, 6, 1, 8), (3, 5, 2, 8)])
def test_drain_pipeline_zero_point_fo_outliers(fo, n, share, b_bits):
    """acc = ((acc_raw - za * colsum) << FO) + corr, truncated to acc_bits, with the range flag (section 6);
    with ``requant_share`` 2, lane ``j`` of drain position ``row * 2 + group`` carries column ``group * 2 + j``.
    8-bit B codes with ``max_k`` 1024: ``colsum`` is wider than one DSP operand, so ``za * colsum`` has
    four partial products (the DSP blocks take D1's place, D3 registers the products, D3b is carry-save)."""
    cfg = _shared(DRAIN_CFG if b_bits == 4 else EngineConfig(**{**DRAIN_CFG.to_dict(), "b_bits": b_bits, "max_k": 1024, "acc_bits": 32}),
                  share)
    dut = DrainPipeline(cfg)
    rng = random.Random(fo * 10 + n)
    C, G, S, sb, W = cfg.cols, cfg.drain_lanes, cfg.requant_share, cfg.share_bits, cfg.acc_bits
    pb = max(1, (cfg.rows - 1).bit_length()) + sb
    seen = {"valid": 0, "fault": 0, "groups": set()}

    async def bench(ctx):
        pipe = deque([None] * cfg.pre_requant_latency)   # rows in (D0,) D1 .. D6
        fault = 0
        pos_reg = 0                                     # the per-column copies of the drain position
        ctx.set(dut.fo, fo)
        ctx.set(dut.n, n)
        for cyc in range(700):
            start = int(cyc == 0)
            en = int(not start and rng.random() < 0.7)
            issue = int(rng.random() < 0.6)
            pos, pos_adv = rng.randint(0, cfg.rows * S - 1), rng.randint(0, cfg.rows * S - 1)
            r0, c0 = rng.choice([0, 3, 6, 65533]), rng.choice([0, 2, 4, 6])
            big = rng.random() < 0.2
            za, mr = rng.getrandbits(24 if big else 4), rng.getrandbits(16)
            acc = [_rs(W if big else 12, rng) for _ in range(C)]
            colsum = [_rs(cfg.colsum_bits, rng) for _ in range(C)]
            corr = [_rs(cfg.corr_bits if big else 10, rng) for _ in range(C)]
            params = [(rng.getrandbits(16), rng.randint(0, 47), _rs(48, rng)) for _ in range(C)]
            for name, v in (("issue", issue), ("pos", pos), ("pos_adv", pos_adv), ("r0", r0), ("c0", c0)):
                ctx.set(getattr(dut.ctl, name), v)
            ctx.set(dut.za, za)
            ctx.set(dut.mr, mr)
            ctx.set(dut.start, start)
            ctx.set(dut.en, en)
            ctx.set(dut.en_col, (1 << len(dut.en_col)) - 1 if en else 0)
            for c in range(C):
                ctx.set(dut.acc[c], acc[c])
                ctx.set(dut.colsum[c], colsum[c])
                ctx.set(dut.corr[c], corr[c])
                for f, v in zip(("mc", "sc", "bq"), params[c]):
                    ctx.set(getattr(dut.params[c], f), v)
            # outputs: the row that entered pre_requant_latency enabled cycles ago
            assert [ctx.get(dut.rows[c]) for c in range(C)] == [pos_reg >> sb] * C
            if cfg.gather_stage:     # the MAC array's own register copies of the row
                assert [ctx.get(dut.rows_mac[c]) for c in range(C)] == [pos_reg >> sb] * C
            out = pipe[-1]
            assert ctx.get(dut.o.fault) == fault
            if out is not None:
                assert ctx.get(dut.o.valid) == out["valid"]
                if out["valid"]:
                    seen["valid"] += 1
                    assert (ctx.get(dut.o.row), ctx.get(dut.o.col), ctx.get(dut.o.last)) == \
                        (out["row"], out["col"], out["last"])
                    assert [ctx.get(dut.o.acc[j]) for j in range(G)] == out["acc"]
                    assert ctx.get(dut.o.inside) == sum(int(j < n - out["col"]) << j for j in range(G))
                    assert [ctx.get(dut.o.mr[j]) for j in range(G)] == [out["mr"]] * G
                    assert [tuple(ctx.get(getattr(dut.o.params[j], f)) for f in ("mc", "sc", "bq"))
                            for j in range(G)] == out["params"]
            # model: the drained group's acc (exact integers), then acc_bits; the lanes take the column
            # group of the registered position copies, row / column / last come from ``ctl.pos``
            lane_cols = [(pos_reg % S) * G + j for j in range(G)]
            seen["groups"].add(pos_reg % S)
            col = (c0 + (pos % S) * G) & 0xFFFF
            full = [((acc[c] - za * colsum[c]) << fo) + corr[c] for c in lane_cols]
            new = {"valid": issue, "row": (r0 + (pos >> sb)) & 0xFFFF, "col": col, "last": int(pos % S == S - 1),
                   "mr": mr, "params": [params[c] for c in lane_cols], "acc": [_s(v, W) for v in full],
                   "bad": any(issue and j < n - col and not -(1 << (W - 1)) <= full[j] < (1 << (W - 1))
                              for j in range(G))}
            if start:
                pos_reg = (-DRAIN_OFFSET) % (1 << pb)
            elif en:
                pos_reg = pos_adv
            # the copies' next value (the outlier unit's registered read address)
            assert [ctx.get(dut.rows_nx[c]) for c in range(C)] == [pos_reg >> sb] * C
            if en:
                fault = int(out is not None and out["bad"])
                seen["fault"] += fault
                pipe.pop()
                pipe.appendleft(new)
            await ctx.tick()

    _simulate(dut, bench)
    assert seen["valid"] > 150 and seen["fault"] > 5 and seen["groups"] == set(range(S))


# --------------------------------------------------------------------------------------- output stage
def _requant(acc, mr, mc, sc, bq, sr, z_out, lo, hi, acc_bits):
    """docs/datapath.md section 7, written out: (value, saturated, t out of acc_bits)."""
    def round_shift(x, s):
        return (x + (1 << (s - 1))) >> s if s else x
    t = round_shift(acc * mr, sr)
    t_lo, t_hi = -(1 << (acc_bits - 1)), (1 << (acc_bits - 1)) - 1
    fault = not t_lo <= t <= t_hi
    t = min(max(t, t_lo), t_hi)                      # the RTL clamps t (a config fault, flagged)
    y = round_shift(t * mc + bq, sc) + z_out
    return min(max(y, lo), hi), not lo <= y <= hi, fault


@pytest.mark.parametrize("width", [8, CHUNK_BITS, 2 * CHUNK_BITS + 40])
def test_push_fifo_keeps_order_across_chunks(width):
    """The output FIFO (hw/push_fifo.py): entries leave in push order, each chunk of the row from its
    own storage and write pointer; ``level`` and ``valid`` as a FIFO's.  The caller never pushes into
    a full FIFO (the engine's stall keeps room), so neither does this bench."""
    depth = 8
    dut = PushFifo(width, depth)
    assert len(dut.push) == push_chunks(width) == -(-width // CHUNK_BITS)
    rng = random.Random(width)
    model, popped = deque(), []

    async def bench(ctx):
        for _ in range(600):
            push = int(rng.random() < 0.6 and len(model) < depth)
            ready = int(rng.random() < 0.5)
            word = rng.getrandbits(width)
            ctx.set(dut.push, (1 << len(dut.push)) - 1 if push else 0)
            ctx.set(dut.w_data, word)
            ctx.set(dut.r.ready, ready)
            assert ctx.get(dut.level) == len(model)
            assert ctx.get(dut.r.valid) == bool(model)
            if model:
                assert ctx.get(dut.r.payload) == model[0]
            if ready and model:
                popped.append(model.popleft())
            if push:
                model.append(word)
            await ctx.tick()

    _simulate(dut, bench)
    assert len(popped) > 100            # the bench did read through the FIFO many times


@pytest.mark.parametrize("out_fmt, out_k, z_out, sr, share", [(0, 8, 20, 4, 1), (1, 4, 0, 2, 1), (3, 8, 0, 0, 1),
                                                               (0, 8, 20, 4, 2), (1, 6, 0, 2, 4)],
                         ids=["ucode8", "scode4", "fixed32", "ucode8_share2", "scode6_share4"])
def test_output_stage_requantises_in_order_with_fifo_and_fault(out_fmt, out_k, z_out, sr, share):
    """Requantised rows in order through the FIFO, sticky fault; with ``requant_share`` S the groups of a
    row (``last`` on the final one) are assembled into one FIFO row."""
    cfg = _shared(DRAIN_CFG, share)
    dut = OutputStage(cfg)
    rng = random.Random(out_fmt)
    C, G, S, W = cfg.cols, cfg.drain_lanes, cfg.requant_share, cfg.acc_bits
    lo, hi = {0: (0, (1 << out_k) - 1), 1: (-(1 << (out_k - 1)) + 1, (1 << (out_k - 1)) - 1),
              3: (-(1 << 31), (1 << 31) - 1)}[out_fmt]
    n = 3
    got = {"rows": 0, "sat": 0, "faults": 0}

    async def bench(ctx):
        for name, v in (("sr", sr), ("z_out", z_out), ("out_fmt", out_fmt), ("out_k", out_k)):
            ctx.set(getattr(dut, name), v)
        ctx.set(dut.clear, 1)
        for _ in range(REQUANT_LATENCY + 2):          # the requantisers fill with invalid rows
            await ctx.tick()
        ctx.set(dut.clear, 0)
        pipe = deque([None] * REQUANT_LATENCY)
        fifo, fault, group = deque(), 0, 0
        held = [[(0, False, False)] * G] * (S - 1)       # groups waiting for the row's last group
        for _ in range(900):
            last = pipe[-1]
            pending = int(last is not None and last["valid"] and last["last"])
            en = int(rng.random() < 0.7 and len(fifo) + pending <= 3)   # act as the global stall (one row in flight)
            ready = int(rng.random() < 0.5)
            valid, dfault, clear = int(rng.random() < 0.7), int(rng.random() < 0.02), int(rng.random() < 0.03)
            row, col = rng.getrandbits(16), rng.choice([0, 2, 4]) + group * G
            is_last = int(group == S - 1)
            acc = [_rs(rng.choice([8, 16, W]), rng) for _ in range(G)]
            mr = rng.randint(0, (1 << sr) + (3 if rng.random() < 0.05 else 0))
            params = [(rng.getrandbits(rng.choice([4, 16])), rng.randint(0, 47) if out_fmt == 3 else rng.randint(0, 12),
                       _rs(rng.choice([8, 47]), rng)) for _ in range(G)]
            ctx.set(dut.en, en)
            ctx.set(dut.en_rq, (1 << len(dut.en_rq)) - 1 if en else 0)
            ctx.set(dut.en_fifo, (1 << len(dut.en_fifo)) - 1 if en else 0)
            ctx.set(dut.out.ready, ready)
            ctx.set(dut.clear, clear)
            for name, v in (("valid", valid), ("row", row), ("col", col), ("last", is_last), ("fault", dfault)):
                ctx.set(getattr(dut.i, name), v)
            inside = [int(c < n - col) for c in range(G)]      # as the drain computes it
            ctx.set(dut.i.inside, sum(b << c for c, b in enumerate(inside)))
            for c in range(G):
                ctx.set(dut.i.acc[c], acc[c])
                ctx.set(dut.i.mr[c], mr)
                for f, v in zip(("mc", "sc", "bq"), params[c]):
                    ctx.set(getattr(dut.i.params[c], f), v)
            assert ctx.get(dut.fifo.level) == len(fifo)
            assert ctx.get(dut.out.valid) == bool(fifo) and ctx.get(dut.acc_fault) == fault
            if fifo:
                p = dut.out.payload
                assert (ctx.get(p.row), ctx.get(p.col), [ctx.get(p.data[c]) for c in range(C)],
                        ctx.get(p.sat)) == fifo[0]
            # model of the edge: read, push the row leaving the requantisers, take the new row
            if ready and fifo:
                fifo.popleft()
                got["rows"] += 1
            if en:
                push = pending
                if push:
                    lanes = [x for g in held for x in g] + last["lanes"]
                    fifo.append((last["row"], (last["col"] - (S - 1) * G) & 0xFFFF, [v for v, _, _ in lanes],
                                 sum(int(s) << c for c, (_, s, _) in enumerate(lanes))))
                    got["sat"] += any(s for _, s, _ in lanes)
                elif last is not None and last["valid"] and S > 1:
                    held = held[1:] + [last["lanes"]]
                valid_out = last is not None and last["valid"]
                rq_fault = valid_out and any(f for (_, _, f), ins in zip(last["lanes"], last["inside"]) if ins)
                if (dfault or rq_fault) and not clear:
                    fault = 1
                    got["faults"] += 1
                pipe.pop()
                pipe.appendleft({"valid": valid, "row": row, "col": col, "last": is_last, "inside": inside,
                                 "lanes": [_requant(acc[c], mr, *params[c], sr, z_out, lo, hi, W) for c in range(G)]})
                group = (group + valid) % S
            if clear:
                fault = 0
            await ctx.tick()

    _simulate(dut, bench)
    assert got["rows"] > 150 // S and got["sat"] > 10 and got["faults"] > 3
