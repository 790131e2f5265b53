"""Block RAM with registered read ports: the data register is the block's own output register (issue #15).

An ECP5 ``DP16KD`` read without its output register (``REGMODE = "NOREG"``, what yosys' memory
mapping always builds) gives the data 5.83 ns after the clock edge (nextpnr's timing model of the
LFE5U-85F, speed grade 6), so any fabric register after it is at least that plus the route away:
the worst path of several 8 x 8 runs of sessions 39 and 40 (docs/hardware.md "Session 40"), and a
bound near 130 - 146 MHz on any engine that reads through it.
Every read port here ends in a register with its own clock enable, built in one of two equivalent
forms chosen by the elaboration platform (:func:`hw.dsp.dsp_kind`, the same choice as the DSP form):

* ``generic``: an Amaranth :class:`~amaranth.lib.memory.Memory` with a synchronous read port (the
  address registered every cycle) and a fabric register loaded from it when the port's ``oce`` is
  high.  The memory carries ``no_rw_check`` (its users never read a row in the cycle it is written);
  this form checks that claim in every simulation by returning the inverted data of a colliding read.
* ``ecp5``: one ``DP16KD`` per read port and slice of data (9 bits at 2 048 rows, :func:`dp16kd_shape`),
  port A writing (every copy gets every write), port B reading with ``REGMODE_B = "OUTREG"``: ``CEB = 1`` (the address register,
  as in the generic form) and ``OCEB = oce`` (the output register, in place of the fabric register).
  ``tb/csrc/dp16kd_model.v`` is the project's model of this configuration for the RTL tests.  A memory
  deeper than one block (more than 16 384 rows, ``max_k`` above 8 192) keeps the generic form, which
  yosys maps to cascaded blocks without their output registers.

Both forms: ``data(t + 1) = mem[addr(t - 1)]`` when ``oce(t)``, else ``data(t)``; the register has no
reset (a read is used only after its address was issued, which every user tracks).
"""
from __future__ import annotations

from amaranth.hdl import Cat, ClockSignal, Const, Instance, Module, Mux, Signal, Value
from amaranth.lib import data, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .dsp import dsp_kind

__all__ = ["DP16KD_BITS", "RegisteredReadMemory", "dp16kd_shape", "registered_reads"]

#: Bits of one ``DP16KD`` (16 Kbit; the 9- and 18-bit widths add a ninth bit per byte).
DP16KD_BITS = 16384
#: Data widths of a true-dual-port ``DP16KD`` port, and the low address bits each leaves unused.
_WIDTHS = {18: 4, 9: 3, 4: 2, 2: 1, 1: 0}


def dp16kd_shape(depth: int) -> tuple[int, int]:
    """``(width, address_lsb)`` of the widest ``DP16KD`` port configuration holding ``depth`` rows.

    Raises
    ------
    ValueError
        If ``depth`` exceeds 16 384 rows (one block at 1 bit).
    """
    for width, lsb in _WIDTHS.items():
        if depth <= DP16KD_BITS >> lsb:
            return width, lsb
    raise ValueError(f"registered_reads: depth {depth} exceeds one DP16KD (16384 rows); cascade not supported")


def registered_reads(m: Module, platform, *, width: int, depth: int, write, reads, name: str) -> list[Value]:
    """A ``depth`` x ``width`` memory with one write port and registered read ports.

    Parameters
    ----------
    m : Module
        Where the memory (or the ``DP16KD`` instances) is added.
    platform
        The elaboration platform; :func:`hw.dsp.dsp_kind` chooses the form.
    width, depth : int
        Row width in bits and number of rows.
    write : tuple of (Value, Value, Value)
        ``(addr, data, en)`` of the write port (written on the clock edge when ``en`` is high).
    reads : list of tuple of (Value, Value)
        ``(addr, oce)`` per read port: the address is registered every cycle, the data register
        loads when ``oce`` is high.
    name : str
        Prefix of the submodule and signal names.

    Returns
    -------
    list of Value
        The data register of each read port (``width`` bits, unsigned).
    """
    w_addr, w_data, w_en = (Value.cast(v) for v in write)
    if dsp_kind(platform) == "generic" or depth > DP16KD_BITS:
        return _generic(m, width, depth, w_addr, w_data, w_en, reads, name)
    return _ecp5(m, width, depth, w_addr, w_data, w_en, reads, name)


def _generic(m, width, depth, w_addr, w_data, w_en, reads, name):
    mem = m.submodules[name] = Memory(shape=width, depth=depth, init=[], attrs={"no_rw_check": 1})
    wp = mem.write_port()
    m.d.comb += [wp.addr.eq(w_addr), wp.data.eq(w_data), wp.en.eq(w_en)]
    out = []
    for j, (addr, oce) in enumerate(reads):
        rp = mem.read_port(domain="sync")
        collided = Signal(name=f"{name}_rd{j}_collided")
        reg = Signal(width, name=f"{name}_rd{j}", reset_less=True)
        m.d.comb += [rp.addr.eq(addr), rp.en.eq(1)]
        m.d.sync += collided.eq(w_en & (w_addr == addr))
        with m.If(oce):
            m.d.sync += reg.eq(Mux(collided, ~rp.data, rp.data))
        out.append(reg)
    return out


def _ecp5(m, width, depth, w_addr, w_data, w_en, reads, name):
    bw, lsb = dp16kd_shape(depth)
    abits = (depth - 1).bit_length()
    # the write port's byte enables (address bits 0, 1 at 18 bits) are held high
    low = Const((1 << lsb) - 1 if bw == 18 else 0, lsb)

    def address(addr):
        """The 14-bit address bus: the row number above the configuration's unused low bits."""
        v = Cat(low, Value.cast(addr)[:abits])
        return Cat(v, Const(0, 14 - len(v)))

    out = []
    for j, (addr, oce) in enumerate(reads):
        data = Signal(width, name=f"{name}_rd{j}")
        for s, lo in enumerate(range(0, width, bw)):
            hi = min(width, lo + bw)
            do = Signal(18, name=f"{name}_rd{j}_s{s}_do")
            di = Signal(18, name=f"{name}_rd{j}_s{s}_di")
            a_wr, a_rd = Signal(14, name=f"{name}_rd{j}_s{s}_ada"), Signal(14, name=f"{name}_rd{j}_s{s}_adb")
            m.d.comb += [di.eq(w_data[lo:hi]), a_wr.eq(address(w_addr)), a_rd.eq(address(addr)),
                         data[lo:hi].eq(do[:hi - lo])]
            ports = {"i_CLKA": ClockSignal(), "i_CEA": Const(1, 1), "i_OCEA": Const(1, 1), "i_WEA": w_en,
                     "i_RSTA": Const(0, 1), "i_CLKB": ClockSignal(), "i_CEB": Const(1, 1), "i_OCEB": oce,
                     "i_WEB": Const(0, 1), "i_RSTB": Const(0, 1)}
            ports.update({f"i_CS{p}{k}": Const(0, 1) for p in "AB" for k in range(3)})
            ports.update({f"i_DIA{k}": di[k] for k in range(18)})
            ports.update({f"i_DIB{k}": Const(0, 1) for k in range(18)})
            ports.update({f"i_ADA{k}": a_wr[k] for k in range(14)})
            ports.update({f"i_ADB{k}": a_rd[k] for k in range(14)})
            ports.update({f"o_DOB{k}": do[k] for k in range(18)})
            m.submodules[f"{name}_rd{j}_s{s}"] = Instance(
                "DP16KD", p_DATA_WIDTH_A=bw, p_DATA_WIDTH_B=bw, p_REGMODE_A="NOREG", p_REGMODE_B="OUTREG",
                p_RESETMODE="SYNC", p_ASYNC_RESET_RELEASE="SYNC", p_CSDECODE_A="0b000", p_CSDECODE_B="0b000",
                p_WRITEMODE_A="NORMAL", p_WRITEMODE_B="NORMAL", p_GSR="DISABLED", **ports)
        out.append(data)
    return out


class RegisteredReadMemory(wiring.Component):
    """:func:`registered_reads` as a component (one write port, ``reads`` registered read ports).

    Parameters
    ----------
    width, depth, reads : int
        Row width in bits, number of rows, number of read ports.

    Attributes
    ----------
    w_addr, w_data, w_en : In(range(depth)), In(width), In(1)
        Write port.
    r_addr : In(ArrayLayout(range(depth), reads))
        Address of each read port (registered every cycle).
    oce : In(reads)
        Clock enable of each read port's data register.
    r_data : Out(ArrayLayout(width, reads))
        Data register of each read port.
    """

    def __init__(self, width: int, depth: int, reads: int):
        self.width, self.depth, self.reads = width, depth, reads
        super().__init__({"w_addr": In(range(depth)), "w_data": In(width), "w_en": In(1),
                          "r_addr": In(data.ArrayLayout(range(depth), reads)), "oce": In(reads),
                          "r_data": Out(data.ArrayLayout(width, reads))})

    def elaborate(self, platform):
        m = Module()
        rows = registered_reads(m, platform, width=self.width, depth=self.depth,
                                write=(self.w_addr, self.w_data, self.w_en),
                                reads=[(self.r_addr[j], self.oce[j]) for j in range(self.reads)], name="mem")
        m.d.comb += [self.r_data[j].eq(rows[j]) for j in range(self.reads)]
        return m
