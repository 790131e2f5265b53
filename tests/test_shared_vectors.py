"""The hand-derived spec vectors (``sim/spec_vectors.py``) through every implementation of the datapath.

The four implementations are independent on purpose (numpy reference ``sim/reference.py``, numba kernels
``sim/kernels_*.py``, torch integer grid ``golden/integer_grid.py``, Amaranth units in ``hw/``); the
other tests check them against each other on random data. Here they are pinned to one table of edge
cases whose expected values come from docs/datapath.md by hand, so a drift of the spec itself (shared
by all four) cannot pass unnoticed. The Amaranth units run in the Amaranth simulator (no Verilator).

Where an implementation does not compute a quantity the table holds, the test says so rather than
skipping silently: the torch grid counts no code saturations (it clamps) and trusts the codes of its own
encoders (only ``log2`` codes are validated on decode); the RTL decoder flags invalid codes instead of
raising.
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from amaranth.hdl import Module, Signal, signed
from amaranth.sim import Simulator

from vitaccel.golden import integer_grid as G
from vitaccel.golden.quantizers.base import round_half_up as torch_round_half_up
from vitaccel.sim import kernels_decode as kd
from vitaccel.sim import kernels_encode as ke
from vitaccel.sim import kernels_requant as kr
from vitaccel.sim import reference as ref
from vitaccel.sim import spec_vectors as V
from vitaccel.sim.reference import DatapathError

from amaranth_helpers import amaranth_stream_run, ladder_writer

IMPLS = ["reference", "numba", "torch", "amaranth"]


def _i64(a) -> np.ndarray:
    return np.asarray(a, dtype=np.int64)


def _t(a) -> torch.Tensor:
    return torch.tensor(a, dtype=torch.int64)


def _fx_to_float(x, frac: int) -> torch.Tensor:
    """Fixed-point integers as the float64 host values the torch grid's ``to_fixed`` maps back to them
    exactly (``x * 2^-F``, exact in float64 for ``|x| < 2^53``)."""
    return torch.tensor(x, dtype=torch.float64) * 2.0 ** -frac


def _comb(signals: dict, outputs: list, m: Module, stimuli: list[dict]) -> list[tuple]:
    """Evaluate combinational logic ``m`` in the Amaranth simulator for each stimulus (name -> value)."""
    got = []

    async def bench(ctx):
        for stim in stimuli:
            for name, value in stim.items():
                ctx.set(signals[name], value)
            got.append(tuple(ctx.get(o) for o in outputs))

    sim = Simulator(m)
    sim.add_testbench(bench)
    sim.run()
    return got


def _dense_outliers(outliers, shape) -> np.ndarray:
    """The outlier list as a dense matrix (0 elsewhere), the torch grid's representation."""
    d = np.zeros(shape, np.int64)
    for row, col, val in outliers:
        d[row, col] = val
    return d


# ------------------------------------------------------------------------------------------------
# section 1
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("impl", IMPLS)
def test_round_shift(impl):
    xs, ss, want = (list(c) for c in zip(*V.ROUND_SHIFT))
    if impl == "reference":
        got = ref.round_shift(_i64(xs), _i64(ss)).tolist()
    elif impl == "numba":
        got = [int(kr.round_shift(np.int64(x), np.int64(s))) for x, s in zip(xs, ss)]
    elif impl == "torch":
        got = [int(G.round_shift(_t(x), s)) for x, s in zip(xs, ss)]
    else:
        from vitaccel.hw.common import round_shift

        m = Module()
        x, s, y = Signal(signed(64)), Signal(range(63)), Signal(signed(66))
        m.d.comb += y.eq(round_shift(x, s))
        got = [g[0] for g in _comb({"x": x, "s": s}, [y], m, [{"x": a, "s": b} for a, b in zip(xs, ss)])]
    assert got == want


@pytest.mark.parametrize("impl", ["reference", "torch"])
def test_round_half_up(impl):
    vs, want = (list(c) for c in zip(*V.ROUND_HALF_UP))
    if impl == "reference":
        got = ref.round_half_up(np.array(vs)).tolist()
    else:
        got = [int(v) for v in torch_round_half_up(torch.tensor(vs, dtype=torch.float64)).tolist()]
    assert got == want


@pytest.mark.parametrize("impl", ["reference", "amaranth"])
def test_saturate(impl):
    """Saturation is inline in the numba and torch encoders/requantizers (checked through them below)."""
    for x, lo, hi, want, count in V.SATURATE:
        if impl == "reference":
            got, n = ref.saturate(_i64(x), lo, hi)
            assert (got.tolist(), n) == (want, count)
        else:
            from vitaccel.hw.common import saturate

            m = Module()
            xs, y, flag = Signal(signed(48)), Signal(signed(48)), Signal()
            v, f = saturate(xs, lo, hi)
            m.d.comb += [y.eq(v), flag.eq(f)]
            got = _comb({"x": xs}, [y, flag], m, [{"x": e} for e in x])
            assert [g[0] for g in got] == want and sum(g[1] for g in got) == count


@pytest.mark.parametrize("impl", ["reference", "torch"])
def test_to_fixed(impl):
    """Host -> fixed point is a host step (the RTL and the numba kernels take fixed-point inputs)."""
    for x, frac, bits, want, nsat in V.TO_FIXED:
        if impl == "reference":
            got, n = ref.to_fixed(np.array([x], np.float32), frac, bits)
            assert (got.tolist(), n) == ([want], nsat), (x, frac, bits)
        else:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                got = G.to_fixed(torch.tensor([x], dtype=torch.float32), frac, bits)
            assert got.tolist() == [want], (x, frac, bits)
            assert bool(caught) == bool(nsat)  # a saturation is reported (a warning), never silent


@pytest.mark.parametrize("impl", IMPLS)
def test_round_log(impl):
    vs, want2, want_s2 = (list(c) for c in zip(*V.ROUND_LOG))
    if impl == "reference":
        got2, got_s2 = ref.round_log2(_i64(vs)).tolist(), ref.round_log_sqrt2(_i64(vs)).tolist()
    elif impl == "numba":
        got2, got_s2 = ke.round_log2(_i64(vs)).tolist(), ke.round_log_sqrt2(_i64(vs)).tolist()
    elif impl == "torch":
        got2, got_s2 = G.round_log2(_t(vs)).tolist(), G.round_log_sqrt2(_t(vs)).tolist()
    else:
        from vitaccel.hw.common import leading_one
        from vitaccel.hw.encoders import mantissa16, round_log2, round_log_sqrt2

        m = Module()
        v, rl2, rls2 = Signal(48), Signal(8), Signal(8)
        p = leading_one(m, v)
        mant = mantissa16(v, p)
        m.d.comb += [rl2.eq(round_log2(p, mant)), rls2.eq(round_log_sqrt2(p, mant))]
        got = _comb({"v": v}, [rl2, rls2], m, [{"v": e} for e in vs])
        got2, got_s2 = [g[0] for g in got], [g[1] for g in got]
    assert got2 == want2
    assert got_s2 == want_s2


# ------------------------------------------------------------------------------------------------
# section 4: decode
# ------------------------------------------------------------------------------------------------
def _fmt_args(g) -> dict:
    return {"base": g.get("base", "2"), "m0": g.get("m0", 0), "m1": g.get("m1", 0)}


def _rtl_decode(cases: list[tuple[dict, int]]) -> list[dict]:
    """Decode ``(config, code)`` pairs with :class:`hw.decoders.OperandDecoder` (one lane, latency 1)."""
    from vitaccel.hw.common import CodeFormat
    from vitaccel.hw.decoders import OperandDecoder

    fmts = {("uniform", "2"): CodeFormat.UNIFORM, ("log2", "2"): CodeFormat.LOG2,
            ("shiftlog2", "2"): CodeFormat.SHIFTLOG2_BASE2, ("shiftlog2", "sqrt2"): CodeFormat.SHIFTLOG2_SQRT2,
            ("three_region", "2"): CodeFormat.THREE_REGION}
    dut = OperandDecoder(lanes=1)
    got = []

    async def bench(ctx):
        ctx.set(dut.o.ready, 1)
        for cfg, code in cases:
            ctx.set(dut.fmt, fmts[(cfg["kind"], cfg.get("base", "2"))])
            ctx.set(dut.bits, cfg["bits"])
            ctx.set(dut.m0, cfg.get("m0", 0))
            ctx.set(dut.m1, cfg.get("m1", 0))
            ctx.set(dut.i.payload, [code])
            ctx.set(dut.i.valid, 1)
            await ctx.tick()
            o = ctx.get(dut.o.payload)[0]
            got.append({"neg": o.neg, "mag": o.mag, "sh": o.sh, "d": o.d, "invalid": o.invalid})

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return got


@pytest.mark.parametrize("impl", IMPLS)
def test_decode(impl):
    """Every A format: triple ``(neg, mag, sh)`` (where the implementation exposes it) and ``D``."""
    if impl == "amaranth":
        cases = [(g, c[0]) for g in V.DECODE for c in g["codes"]]
        want = [{"neg": c[1], "mag": c[2], "sh": c[3], "d": c[4], "invalid": 0} for g in V.DECODE for c in g["codes"]]
        assert _rtl_decode(cases) == want
        return
    for g in V.DECODE:
        codes = [c[0] for c in g["codes"]]
        triples = [tuple(c[1:4]) for c in g["codes"]]
        d_want = [c[4] for c in g["codes"]]
        kind, bits, a = g["kind"], g["bits"], _fmt_args(g)
        if impl == "reference":
            q = _i64(codes)
            if kind == "uniform":
                t = ref.decode_uniform_triple(q, bits)
            elif kind == "log2":
                t = ref.decode_log2_triple(q, bits)
            elif kind == "shiftlog2":
                t = ref.decode_shiftlog2_triple(q, bits, a["base"])
            else:
                t = ref.decode_three_region_triple(q, bits, a["m0"], a["m1"])
            assert list(zip(*(np.asarray(v).tolist() for v in t))) == triples, g
            assert ref.decode(q, kind, bits, **a).tolist() == d_want, g
        elif impl == "numba":
            kid, bid, m0, m1 = kd.format_params(kind, bits, **a)
            got = [kd.decode_triple(np.int64(c), kid, bits, bid, m0, m1) for c in codes]
            assert [(int(n), int(mg), int(s)) for n, mg, s, _ok in got] == triples, g
            assert all(ok for *_t, ok in got), g
            assert kd.decode(_i64([codes]), kind, bits, **a).tolist() == [d_want], g
        else:  # the torch grid has no triples: it multiplies by D directly
            assert G.decode(_t(codes), kind, bits, **a).tolist() == d_want, g


@pytest.mark.parametrize("impl", IMPLS)
def test_invalid_codes_are_rejected(impl):
    for kind, bits, base, code, why in V.INVALID:
        if impl == "reference":
            with pytest.raises(DatapathError):
                ref.decode(_i64([code]), kind, bits, base=base)
        elif impl == "numba":
            with pytest.raises(DatapathError):
                kd.decode(_i64([[code]]), kind, bits, base=base)
        elif impl == "torch":
            if kind != "log2":  # the grid decodes only codes its own encoders produced
                continue
            with pytest.raises(G.IntegerGridError):
                G.decode(_t([code]), kind, bits, base=base)
    if impl == "amaranth":
        got = _rtl_decode([({"kind": k, "bits": b, "base": base}, c) for k, b, base, c, _ in V.INVALID])
        assert got == [{"neg": 0, "mag": 0, "sh": 0, "d": 0, "invalid": 1}] * len(V.INVALID)


# ------------------------------------------------------------------------------------------------
# section 8: encoders
# ------------------------------------------------------------------------------------------------
def _grid_encoder(kind: str, bits: int, in_frac: int = 16, r=(1,), z=(0,), **entry) -> G.GridEncoder:
    tensors = {"r": _i64(r), "z": _i64(z)}
    lad = entry.pop("ladder", None)
    if lad is not None:
        tensors["lr"], tensors["lt"] = _i64(lad[0]), _i64(lad[1])
        entry["ladder"] = {"r": "lr", "t": "lt"}
    return G.GridEncoder({"kind": kind, "bits": bits, "in_frac": in_frac, "r": "r", "z": "z", **entry}, tensors)


def _rtl_per_patch(v, outliers_en: bool) -> dict:
    """:class:`hw.encoders.PerPatchEncoder` on the rows of ``v['x']``: codes, outliers, counts."""
    from vitaccel.hw.encoders import PerPatchEncoder

    items = [{"x": x, "r": v["r"][i], "z": v["z"][i], "row": i, "col": j}
             for i, row in enumerate(v["x"]) for j, x in enumerate(row)]
    cfg = {"se": v["se"], "bits": v["bits"], "alpha": v.get("alpha_fx") or 0, "outliers_en": int(outliers_en)}
    res = amaranth_stream_run(PerPatchEncoder(), items, None, cfg, outputs=("o", "outl"))
    k = len(v["x"][0])
    return {"codes": [[e["code"] for e in res["o"][i * k:(i + 1) * k]] for i in range(len(v["x"]))],
            "saturations": sum(e["sat"] for e in res["o"]),
            "outliers": [(e["row"], e["col"], e["val"]) for e in res["outl"]],
            "overflows": sum(e["overflow"] for e in res["outl"])}


@pytest.mark.parametrize("impl", IMPLS)
def test_encode_uniform(impl):
    for v in V.ENCODE_UNIFORM:
        x, r, z = _i64(v["x"]), _i64(v["r"]), _i64(v["z"])
        if impl == "reference":
            q, sat = ref.encode_uniform(x, r, v["se"], z, v["bits"])
        elif impl == "numba":
            q, sat = ke.encode_uniform(x, r, v["se"], z, v["bits"])
        elif impl == "torch":
            enc = _grid_encoder("uniform", v["bits"], r=v["r"], z=v["z"], se=v["se"])
            q, sat = enc.encode(_fx_to_float(v["x"], 16))[0], v["saturations"]  # the grid clamps, counts nothing
        else:
            res = _rtl_per_patch(v, outliers_en=False)
            q, sat = res["codes"], res["saturations"]
        assert (np.asarray(q).tolist(), int(sat)) == (v["codes"], v["saturations"]), v["x"]


@pytest.mark.parametrize("impl", IMPLS)
def test_encode_per_patch_with_outliers(impl):
    for v in V.ENCODE_PER_PATCH:
        x, r, z = _i64(v["x"]), _i64(v["r"]), _i64(v["z"])
        if impl in ("reference", "numba"):
            f = ref.encode_per_patch if impl == "reference" else ke.encode_per_patch
            q, o, sat, nof = f(x, r, v["se"], z, v["bits"], v["alpha_fx"], v["fo"], strict=False)
            assert (q.tolist(), [tuple(e) for e in o.tolist()], sat, nof) == \
                (v["codes"], v["outliers"], v["saturations"], v["overflows"])
            with pytest.raises(ref.OutlierOverflowError):  # strict mode (the layer API's default) raises
                f(x, r, v["se"], z, v["bits"], v["alpha_fx"], v["fo"], strict=True)
        elif impl == "torch":
            enc = _grid_encoder("uniform", v["bits"], r=v["r"], z=v["z"], se=v["se"], alpha_fx=v["alpha_fx"],
                                fo=v["fo"])
            q, dense, _ = enc.encode(_fx_to_float(v["x"], 16))
            assert q.tolist() == v["codes"]
            assert dense.tolist() == _dense_outliers(v["outliers"], x.shape).tolist()
        else:
            res = _rtl_per_patch(v, outliers_en=True)
            assert res == {k: v[k] for k in ("codes", "saturations", "outliers", "overflows")}


@pytest.mark.parametrize("impl", IMPLS)
def test_encode_per_patch_dynamic(impl):
    for v in V.ENCODE_DYNAMIC:
        x, lr, lt = _i64(v["x"]), _i64(v["ladder_r"]), _i64(v["ladder_t"])
        want = (v["codes"], v["outliers"], v["row_index"], v["row_zero"])
        if impl in ("reference", "numba"):
            f = ref.encode_per_patch_dynamic if impl == "reference" else ke.encode_per_patch_dynamic
            q, o, sat, nof, j, z = f(x, lr, lt, v["se"], v["bits"], v["alpha_fx"], v["fo"], strict=True)
            assert (q.tolist(), [tuple(e) for e in o.tolist()], j.tolist(), z.tolist()) == want
            assert (sat, nof) == (v["saturations"], v["overflows"])
        elif impl == "torch":
            enc = _grid_encoder("uniform", v["bits"], se=v["se"], alpha_fx=v["alpha_fx"], fo=v["fo"],
                                ladder=(v["ladder_r"], v["ladder_t"]))
            q, dense, (j, z) = enc.encode(_fx_to_float(v["x"], 16))
            assert (q.tolist(), j.tolist(), z.tolist()) == (v["codes"], v["row_index"], v["row_zero"])
            if v["alpha_fx"] is not None:
                assert dense.tolist() == _dense_outliers(v["outliers"], x.shape).tolist()
        else:
            from vitaccel.hw.dynamic_per_patch import DynamicPerPatchEncoder

            k = x.shape[1]
            dut = DynamicPerPatchEncoder(max_k=8)
            items = [{"x": int(e), "row": i, "last": int(c == k - 1)} for i, row in enumerate(v["x"])
                     for c, e in enumerate(row)]
            cfg = {"se": v["se"], "bits": v["bits"], "alpha": v["alpha_fx"] or 0,
                   "outliers_en": int(v["alpha_fx"] is not None), "ladder_len": len(v["ladder_r"])}
            res = amaranth_stream_run(dut, items, None, cfg, outputs=("o", "outl", "rowp"),
                                      setup=ladder_writer(dut, list(zip(v["ladder_r"], v["ladder_t"]))))
            codes = [[e["code"] for e in res["o"][i * k:(i + 1) * k]] for i in range(x.shape[0])]
            assert (codes, [(e["row"], e["col"], e["val"]) for e in res["outl"]],
                    [e["j"] for e in res["rowp"]], [e["z"] for e in res["rowp"]]) == want
            assert sum(e["sat"] for e in res["o"]) == v["saturations"]


def _rtl_activation(fmt, bits: int, x: list, **cfg) -> list[int]:
    """:class:`hw.encoders.ActivationEncoder` codes of the inputs ``x`` (none flagged invalid)."""
    from vitaccel.hw.encoders import ActivationEncoder

    config = {"fmt": fmt, "bits": bits, "frac": 0, "sh": 0, "r": 1, "se": 0, "m0": 0, "m1": 0, **cfg}
    got = amaranth_stream_run(ActivationEncoder(), [{"x": e} for e in x], ["code", "invalid"], config)
    assert not any(e["invalid"] for e in got)
    return [e["code"] for e in got]


@pytest.mark.parametrize("impl", IMPLS)
def test_encode_log2(impl):
    from vitaccel.hw.common import CodeFormat

    for v in V.ENCODE_LOG2:
        if impl == "reference":
            got = ref.encode_log2(_i64([v["x"]]), v["frac"], v["bits"])[0].tolist()
        elif impl == "numba":
            got = ke.encode_log2(_i64([v["x"]]), v["frac"], v["bits"])[0].tolist()
        elif impl == "torch":
            got = _grid_encoder("log2", v["bits"],
                                in_frac=v["frac"]).encode(_fx_to_float(v["x"], v["frac"]))[0].tolist()
        else:
            got = _rtl_activation(CodeFormat.LOG2, v["bits"], v["x"], frac=v["frac"])
        assert got == v["codes"], v


@pytest.mark.parametrize("impl", IMPLS)
def test_encode_shiftlog2(impl):
    from vitaccel.hw.common import CodeFormat

    for v in V.ENCODE_SHIFTLOG2:
        args = (v["sh"], v["r"], v["se"], v["bits"], v["base"])
        if impl == "reference":
            got = ref.encode_shiftlog2(_i64([v["x"]]), *args)[0].tolist()
        elif impl == "numba":
            got = ke.encode_shiftlog2(_i64([v["x"]]), *args)[0].tolist()
        elif impl == "torch":
            enc = _grid_encoder("shiftlog2", v["bits"], r=[v["r"]], se=v["se"], sh=v["sh"], base=v["base"])
            got = enc.encode(_fx_to_float(v["x"], 16))[0].tolist()
        else:
            fmt = CodeFormat.SHIFTLOG2_BASE2 if v["base"] == "2" else CodeFormat.SHIFTLOG2_SQRT2
            got = _rtl_activation(fmt, v["bits"], v["x"], sh=v["sh"], r=v["r"], se=v["se"])
        assert got == v["codes"], v


@pytest.mark.parametrize("impl", IMPLS)
def test_encode_three_region(impl):
    from vitaccel.hw.common import CodeFormat

    for v in V.ENCODE_THREE_REGION:
        args = (v["r"], v["se"], v["bits"], v["m0"], v["m1"])
        if impl == "reference":
            got = ref.encode_three_region(_i64([v["x"]]), *args)[0].tolist()
        elif impl == "numba":
            got = ke.encode_three_region(_i64([v["x"]]), *args)[0].tolist()
        elif impl == "torch":
            enc = _grid_encoder("three_region", v["bits"], r=[v["r"]], se=v["se"], m0=v["m0"], m1=v["m1"])
            got = enc.encode(_fx_to_float(v["x"], 16))[0].tolist()
        else:
            got = _rtl_activation(CodeFormat.THREE_REGION, v["bits"], v["x"], r=v["r"], se=v["se"], m0=v["m0"],
                                  m1=v["m1"])
        assert got == v["codes"], v


# ------------------------------------------------------------------------------------------------
# section 7: requantization
# ------------------------------------------------------------------------------------------------
def _grid_requantize(v) -> list:
    tensors = {k: _i64(v[k]) for k in ("mr", "mc", "sc", "bq")}
    tensors["za"] = _i64([0])
    entry = {"a": {"kind": "uniform", "bits": 8, "za": "za"}, "fo": 0, "b": "runtime",
             "requant": {"mr": "mr", "sr": v["sr"], "mc": "mc", "sc": "sc", "bq": "bq", "z_out": v["z_out"]},
             "out_fmt": v["out_fmt"], "out_bits": v["out_bits"], "scales": {"s_out": 1.0}}
    with warnings.catch_warnings():  # a fixed-point saturation is reported as a warning (checked elsewhere)
        warnings.simplefilter("ignore", RuntimeWarning)
        return G.GridGemm("vector", entry, tensors).requantize(_t(v["acc"])).tolist()


def _rtl_requantize(v) -> tuple[list, int]:
    from vitaccel.hw.common import OutFormat
    from vitaccel.hw.requantiser import Requantiser

    fmts = {"ucode": OutFormat.UCODE, "scode": OutFormat.SCODE, "fixed16": OutFormat.FIXED16,
            "fixed32": OutFormat.FIXED32}
    acc = v["acc"]
    n = len(acc[0])
    col = lambda key, c: v[key][c if len(v[key]) > 1 else 0]
    items = [{"acc": a, "mr": v["mr"][r if len(v["mr"]) > 1 else 0], "mc": col("mc", c), "sc": col("sc", c),
              "bq": col("bq", c), "tag": 0} for r, row in enumerate(acc) for c, a in enumerate(row)]
    cfg = {"sr": v["sr"], "z_out": v["z_out"], "out_fmt": fmts[v["out_fmt"]],
           "bits": v["out_bits"] if v["out_fmt"] in ("ucode", "scode") else 8}
    got = amaranth_stream_run(Requantiser(acc_bits=48), items, ["value", "sat", "fault"], cfg)
    assert not any(e["fault"] for e in got)
    values = [e["value"] for e in got]
    return [values[i:i + n] for i in range(0, len(values), n)], sum(e["sat"] for e in got)


@pytest.mark.parametrize("impl", IMPLS)
def test_requantize(impl):
    for v in V.REQUANTIZE:
        args = (_i64(v["acc"]), _i64(v["mr"]), v["sr"], _i64(v["mc"]), _i64(v["sc"]), _i64(v["bq"]), v["z_out"],
                v["out_fmt"], v["out_bits"])
        if impl == "reference":
            out, sat = ref.requantize(*args)
            got = (out.tolist(), sat)
        elif impl == "numba":
            out, sat = kr.requantize(*args)
            got = (out.tolist(), sat)
        elif impl == "torch":
            got = (_grid_requantize(v), v["saturations"])  # the grid clamps, counts nothing
        else:
            got = _rtl_requantize(v)
        assert got == (v["out"], v["saturations"]), v
