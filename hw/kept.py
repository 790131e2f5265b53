"""Register copies that synthesis keeps apart (issue #15).

A register loaded from the same input with the same enable as another is one register for yosys
(``opt_merge``), whatever the Amaranth design says and whatever attribute the signal carries
(``benchmarks/yosys_keep_merge.py``).  A select or control signal needed by many registers across
the chip then drives all of them from one flip-flop: in the 8 x 8 W4A4 engine of session 35 the
drained row's select of the tile descriptors was a 5.4 ns net.  :func:`kept_copies` builds ``n``
copies in one of two forms, chosen like the DSP form by the Amaranth *platform* (:func:`hw.dsp.dsp_kind`):

* ``generic`` (``platform=None``, what every RTL test simulates): plain registers;
* ``ecp5``: one ``TRELLIS_FF`` instance per bit (clock enable ``CE``, synchronous reset ``LSR`` from
  the domain's reset, ``M`` left unconnected as yosys' own flip-flop mapping does: nextpnr's packer
  uses it).  yosys never merges vendor cells, so the copies stay apart; nextpnr places each
  near its own loads.  ``tb/csrc/trellis_ff_model.v`` is the project's model of this configuration
  (``tests/test_rtl_engine.py::test_engine_ecp5_form`` simulates the engine's ECP5 form with it).
"""
from __future__ import annotations

from amaranth.hdl import ClockSignal, Const, Instance, Module, ResetSignal, Signal, Value

from .dsp import dsp_kind

__all__ = ["kept_copies"]


def kept_copies(m: Module, platform, value, n: int, name: str, en=None) -> list[Signal]:
    """``n`` registers each loaded with ``value`` (when ``en`` is high; every cycle without ``en``).

    Parameters
    ----------
    m : Module
    platform
        The elaboration platform (:func:`hw.dsp.dsp_kind` chooses the form).
    value : Value
        What every copy holds one cycle later.
    n : int
        Number of copies (>= 1).
    name : str
        Copy ``j`` is named ``{name}{j}``.
    en : Value, optional
        Clock enable of every copy.

    Returns
    -------
    list of Signal
        The copies, each with ``value``'s shape and reset value 0.
    """
    if n < 1:
        raise ValueError(f"kept_copies: n must be >= 1, got {n}")
    value = Value.cast(value)
    en = Const(1, 1) if en is None else en
    out = [Signal(value.shape(), name=f"{name}{j}") for j in range(n)]
    if dsp_kind(platform) == "generic":
        with m.If(en):
            m.d.sync += [q.eq(value) for q in out]
        return out
    for j, q in enumerate(out):
        for k in range(len(value)):
            m.submodules[f"{name}{j}_ff{k}"] = Instance(
                "TRELLIS_FF", p_GSR="DISABLED", p_CEMUX="CE", p_CLKMUX="CLK", p_LSRMUX="LSR",
                p_SRMODE="LSR_OVER_CE", p_REGSET="RESET",
                i_CLK=ClockSignal(), i_LSR=ResetSignal(), i_CE=en, i_DI=value[k], o_Q=q[k])
    return out
