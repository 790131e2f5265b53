"""Registered 18 x 18 products: the DSP blocks of the requantisers and the drain (issue #15).

yosys maps a ``$mul`` to an ECP5 ``MULT18X18D`` without the block's own registers, so a product
computed between two fabric registers pays the route into the DSP row, the multiplier and the route
back out in one cycle (about 11 ns on the LFE5U-85F, docs/hardware.md "Session 34").  Here every
product takes :data:`DSP_LATENCY` = 2 register stages that are the block's own input and output
registers::

    cycle t      operands a, b   ->  input registers  A, B      (stage 1)
    cycle t + 1  A * B           ->  output register  P         (stage 2)

:func:`dsp_products` builds them in one of two equivalent forms, chosen by the Amaranth *platform*
passed to elaboration (:func:`dsp_kind`):

* ``generic`` (the default, ``platform=None``): plain registers around an Amaranth ``*``.  This is
  the Verilog every RTL test simulates.
* ``ecp5`` (:data:`ECP5_DSP`, used by ``vitaccel hw synth``): an ``Instance("MULT18X18D")`` with
  ``REG_INPUTA_CLK = REG_INPUTB_CLK = REG_OUTPUT_CLK = "CLK0"``, clock enable ``CE0`` = the stage
  enable, no reset, both operands signed 18-bit (each operand is sign- or zero-extended from its
  own shape, so an unsigned 17-bit chunk stays positive).  ``tests/test_hw_dsp.py`` simulates this
  form in Verilator with the behavioural model ``tb/csrc/mult18x18d_model.v`` against the generic form.

The same choice selects the form of the B buffer's block RAM (:mod:`hw.bram`, used by
:class:`hw.engine_buffers.BBuffer`): ``DP16KD`` blocks with their output registers in the ECP5 form;
the generic form checks in every simulation that no read in the cycle its row is written is used
(``no_rw_check``) by inverting the data of a colliding read.

Neither form resets the three registers (the DSP block's registers have no reset here): a product
is meaningful only once its operands have passed, which every user tracks with its own valid bits.
"""
from __future__ import annotations

from amaranth.hdl import ClockSignal, Const, Instance, Module, Signal, Value, signed

__all__ = ["DSP_LATENCY", "DspTarget", "ECP5_DSP", "dsp_kind", "dsp_products"]

#: Register stages of a product (input and output registers of the DSP block).
DSP_LATENCY = 2
#: Operand width of one ``MULT18X18D`` (signed).
DSP_BITS = 18


class DspTarget:
    """A minimal Amaranth *platform* object selecting the DSP form (``verilog.convert(..., platform=)``)."""

    def __init__(self, dsp: str):
        if dsp not in ("generic", "ecp5"):
            raise ValueError(f"DspTarget: unknown DSP form {dsp!r} (generic or ecp5)")
        self.vitaccel_dsp = dsp

    def __repr__(self):
        return f"DspTarget({self.vitaccel_dsp!r})"


#: The platform of the ECP5 synthesis flow: products become registered ``MULT18X18D`` blocks.
ECP5_DSP = DspTarget("ecp5")


def dsp_kind(platform) -> str:
    """``"ecp5"`` or ``"generic"``: the DSP form a component elaborated for ``platform`` builds."""
    return getattr(platform, "vitaccel_dsp", "generic")


def _fits(v: Value) -> bool:
    """``v`` fits one signed 18-bit DSP operand (unsigned values up to 17 bits)."""
    return len(v) <= (DSP_BITS if v.shape().signed else DSP_BITS - 1)


def dsp_products(m: Module, platform, pairs, en: Value, name: str) -> list[Signal]:
    """Registered products ``a * b`` for each ``(a, b)`` of ``pairs``, :data:`DSP_LATENCY` cycles later.

    Parameters
    ----------
    m : Module
        Where the registers (or instances) are added.
    platform
        The elaboration platform; :func:`dsp_kind` chooses the form.
    pairs : list of (Value, Value)
        Operands, each fitting a signed 18-bit DSP input (e.g. from
        :func:`hw.common.partial_products`, whose chunks do).
    en : Value
        Stage enable of both register stages (the DSP block's ``CE0``).
    name : str
        Prefix of the register / instance names (``{name}{j}_a``, ``{name}{j}``).

    Returns
    -------
    list of Signal
        One product register per pair, with the exact shape of ``a * b``.
    """
    kind = dsp_kind(platform)
    out = []
    for j, (a, b) in enumerate(pairs):
        a, b = Value.cast(a), Value.cast(b)
        if not (_fits(a) and _fits(b)):
            raise ValueError(f"dsp_products: operands of {name}{j} ({a.shape()} x {b.shape()}) do not fit "
                             f"{DSP_BITS}-bit signed DSP inputs; split them with hw.common.partial_products")
        p = Signal((a * b).shape(), name=f"{name}{j}", reset_less=True)
        if kind == "generic":
            ra = Signal(a.shape(), name=f"{name}{j}_a", reset_less=True)
            rb = Signal(b.shape(), name=f"{name}{j}_b", reset_less=True)
            with m.If(en):
                m.d.sync += [ra.eq(a), rb.eq(b), p.eq(ra * rb)]
        else:
            a18 = Signal(signed(DSP_BITS), name=f"{name}{j}_ain")
            b18 = Signal(signed(DSP_BITS), name=f"{name}{j}_bin")
            p36 = Signal(signed(2 * DSP_BITS), name=f"{name}{j}_pout")
            m.d.comb += [a18.eq(a), b18.eq(b), p.eq(p36[:len(p)])]
            ports = {"i_CLK0": ClockSignal(), "i_CE0": en, "i_RST0": Const(0, 1),
                     "i_SIGNEDA": Const(1, 1), "i_SIGNEDB": Const(1, 1),
                     "i_SOURCEA": Const(0, 1), "i_SOURCEB": Const(0, 1)}
            ports.update({f"i_A{k}": a18[k] for k in range(DSP_BITS)})
            ports.update({f"i_B{k}": b18[k] for k in range(DSP_BITS)})
            ports.update({f"o_P{k}": p36[k] for k in range(2 * DSP_BITS)})
            m.submodules[f"{name}{j}_dsp"] = Instance(
                "MULT18X18D",
                p_REG_INPUTA_CLK="CLK0", p_REG_INPUTA_CE="CE0", p_REG_INPUTA_RST="RST0",
                p_REG_INPUTB_CLK="CLK0", p_REG_INPUTB_CE="CE0", p_REG_INPUTB_RST="RST0",
                p_REG_INPUTC_CLK="NONE", p_REG_PIPELINE_CLK="NONE",
                p_REG_OUTPUT_CLK="CLK0", p_REG_OUTPUT_CE="CE0", p_REG_OUTPUT_RST="RST0",
                p_GSR="DISABLED", p_RESETMODE="SYNC", p_MULT_BYPASS="DISABLED",
                **ports)
        out.append(p)
    return out
