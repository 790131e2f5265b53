"""Output-stationary ``R x C`` MAC array (docs/datapath.md sections 4 and 6: ``acc_raw``).

Dataflow
--------
Outer-product, output-stationary: in every issue cycle the array receives one *column* of the A
tile, already decoded at the row edge into triples ``(neg, mag, sh)`` (one per row, broadcast along
the row), and one *row* of the B tile (``C`` signed ``sym`` codes, broadcast down the columns).
Processing element ``(r, c)`` computes

    acc[r, c] += ((-1)^neg[r] * b[c] * mag[r]) << sh[r]

so after ``K`` issue cycles PE ``(r, c)`` holds ``acc_raw[r, c] = sum_k D[r, k] * b[k, c]``.  One MAC
per PE per cycle in steady state; no skew, so no systolic fill/drain bubbles.

Each PE has a *shadow* register: the last product of a tile goes to ``shadow = acc + p`` (the finished
``acc_raw``) while the next tile's first product starts the accumulator again (``acc = p``), so
the drain (one shadow row per cycle, :attr:`MacArray.drain_row`) overlaps the next tile's compute.

The PE multiplier ``|b| * mag`` is written as a shift-and-add over the ``b_bits - 1`` magnitude bits of
``b`` (LUT logic; the FPGA's DSP blocks are left to the requantiser and the zero-point correction).

Pipeline (all registers advance only when ``en`` is high -- the engine's global stall)::

    cycle t   : triples + B row valid at the inputs (decoder register / B buffer read data)
    cycle t   : p = (|b| * mag) << sh, sign = neg ^ (b < 0)          -> product register
    cycle t+1 : acc = first ? +-p : acc +- p ; last -> shadow        -> accumulator / shadow
"""
from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["MacArray", "TripleLayout", "pe_product"]

#: A decoded A operand as seen by the array (docs/datapath.md section 4).
TripleLayout = data.StructLayout({"neg": unsigned(1), "mag": unsigned(9), "sh": unsigned(4)})


def pe_product(m: Module, b, mag, b_bits: int, mag_bits: int = 9):
    """``|b| * mag`` as a shift-and-add (no ``*`` operator, so no DSP block is inferred).

    Returns ``(product, b_negative)``; ``product`` is unsigned ``b_bits - 1 + mag_bits`` bits.
    """
    absb = Signal(b_bits - 1)
    m.d.comb += absb.eq(Mux(b[-1], -b, b)[:b_bits - 1])
    terms = [Mux(absb[i], mag << i, 0) for i in range(b_bits - 1)]
    # balanced adder tree
    while len(terms) > 1:
        nxt = [terms[i] + terms[i + 1] for i in range(0, len(terms) - 1, 2)]
        if len(terms) % 2:
            nxt.append(terms[-1])
        terms = nxt
    prod = Signal(b_bits - 1 + mag_bits)
    m.d.comb += prod.eq(terms[0])
    return prod, b[-1]


class MacArray(wiring.Component):
    """``rows x cols`` output-stationary MAC array with shadow (drain) registers.

    Parameters
    ----------
    rows, cols : int
        Array size.
    b_bits : int
        Width of the signed B codes.
    acc_bits : int
        Accumulator width (signed); products and sums are exact as long as the layer respects the
        accumulator bound of docs/datapath.md section 6 (checked by the host,
        :func:`hw.config.check_layer_acc`).

    Attributes
    ----------
    en : In(1)
        Global enable (pipeline advances).
    valid, first, last : In(1)
        This cycle carries an operand column; it is the first / last column of a tile.
    a : In(ArrayLayout(TripleLayout, rows))
        Decoded A column (one triple per row).
    b : In(ArrayLayout(signed(b_bits), cols))
        B row.
    drain_row : In(range(rows))
        Shadow row selected on :attr:`shadow_row` (combinational read).
    shadow_row : Out(ArrayLayout(signed(acc_bits), cols))
        ``acc_raw`` of the selected row of the last finished tile.
    """

    def __init__(self, rows: int, cols: int, b_bits: int, acc_bits: int):
        self.rows, self.cols, self.b_bits, self.acc_bits = rows, cols, b_bits, acc_bits
        super().__init__({
            "en": In(1),
            "valid": In(1),
            "first": In(1),
            "last": In(1),
            "a": In(data.ArrayLayout(TripleLayout, rows)),
            "b": In(data.ArrayLayout(signed(b_bits), cols)),
            "drain_row": In(range(max(2, rows))),
            "shadow_row": Out(data.ArrayLayout(signed(acc_bits), cols)),
        })

    def elaborate(self, platform):
        m = Module()
        R, C, W = self.rows, self.cols, self.acc_bits
        # product stage control
        p_valid = Signal()
        p_first = Signal()
        p_last = Signal()
        with m.If(self.en):
            m.d.sync += [p_valid.eq(self.valid), p_first.eq(self.first), p_last.eq(self.last)]
        shadows = []
        for r in range(R):
            row_sh = []
            trip = self.a[r]
            for c in range(C):
                prod, bneg = pe_product(m, self.b[c], trip.mag, self.b_bits)
                shifted = Signal(W, name=f"pe{r}_{c}_p")
                sign = Signal(name=f"pe{r}_{c}_s")
                acc = Signal(signed(W), name=f"pe{r}_{c}_acc")
                shadow = Signal(signed(W), name=f"pe{r}_{c}_shadow")
                with m.If(self.en & self.valid):
                    m.d.sync += [shifted.eq((prod << trip.sh)[:W]), sign.eq(trip.neg ^ bneg)]
                term = Mux(sign, -shifted, shifted)
                base = Mux(p_first, 0, acc)
                total = (base + term)[:W].as_signed()
                with m.If(self.en & p_valid):
                    with m.If(p_last):
                        m.d.sync += [shadow.eq(total), acc.eq(0)]
                    with m.Else():
                        m.d.sync += acc.eq(total)
                row_sh.append(shadow)
            shadows.append(row_sh)
        with m.Switch(self.drain_row):
            for r in range(R):
                with m.Case(r):
                    m.d.comb += [self.shadow_row[c].eq(shadows[r][c]) for c in range(C)]
        return m
