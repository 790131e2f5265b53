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
``b`` at 4-bit B, and over radix-4 Booth digits of ``|b|`` at 6- and 8-bit B (:func:`booth_terms`: half
as many terms) (LUT logic; the FPGA's DSP blocks are left to the requantiser and the zero-point
correction).

Pipeline (all registers advance only when ``en`` is high -- the engine's global stall; ``en`` and the
control registers come in ``en_copies`` identical copies, one per group of PEs (one PE per group in
the engine, :data:`hw.stall.PES_PER_ENABLE`), to bound fanout)::

    cycle t   : triples + B row valid at the inputs (decoder register / B buffer row register);
                at the edge magf = mag << sh[0:2], |b|, b < 0            -> broadcast registers
    cycle t+1 : first levels of the adder tree of |b| * magf, sh[2:4]
                (0 when |b| = 0), s = neg ^ (b < 0)                      -> partial-sum registers
    cycle t+2 : p = sum of the partial sums; q = (p << 4 sh[2:4]) ^ -s   -> product register q, s
    cycle t+3 : acc = acc + q + s (one carry chain); last -> shadow;
                the accumulator is cleared by its flip-flops' synchronous reset -> accumulator / shadow

(``MAC_LATENCY = 5`` of :mod:`sim.engine_config` counts these four stages and the decoder register.)
Issue #15 split the product over two stages and moved the one's complement and the coarse shift
out of the accumulate stage: the 8 x 8 W4A4 array alone, placed and routed, went from 118.6 to
150.4 MHz (docs/hardware.md, "Session 33").

The broadcast registers hold one copy of a row's triple / a column's B code per enable group that
uses it (with the group's ``valid`` / ``last``), so the long nets from the array edge end at a few
registers and each group's PEs are driven by a local copy (docs/hardware.md, "Fmax").
"""
from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, ResetSignal, Signal, signed
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from .decoders import TripleLayout     # a decoded A operand as seen by the array (section 4)

__all__ = ["MacArray", "TripleLayout", "adder_tree", "booth_terms", "MAGF_BITS"]


#: Width of a pre-shifted magnitude ``mag << sh[0:2]`` (9 + 3 bits).
MAGF_BITS = 12


def adder_tree(m: Module, terms: list, name: str = "sum", levels: int | None = None):
    """Balanced tree of two-input adds whose intermediate sums are ``keep`` signals.

    Without the ``keep`` wires yosys (``alumacc``) merges a multi-operand sum into one ``$macc`` cell
    and maps it to LUT logic (a single PE product took 124 LUT4 + 103 wide-mux cells instead of
    28 LUT4 + 10 CCU2C carry cells at W4A4).

    With ``levels``, only that many levels of the tree are built and the list of partial sums is
    returned (each a ``keep`` signal), to be registered before the rest of the tree.
    """
    level = 0
    while len(terms) > 1 and (levels is None or level < levels):
        nxt = []
        for i in range(0, len(terms) - 1, 2):
            s = terms[i] + terms[i + 1]
            if len(terms) > 2 or levels is not None:    # an intermediate sum: its own carry chain
                sig = Signal(s.shape(), name=f"{name}_l{level}_{i // 2}", attrs={"keep": 1})
                m.d.comb += sig.eq(s)
                s = sig
            nxt.append(s)
        if len(terms) % 2:
            nxt.append(terms[-1])
        terms = nxt
        level += 1
    return terms if levels is not None else terms[0]


def booth_terms(magf, absb, width: int) -> list:
    """Radix-4 Booth terms of ``|b| * magf`` modulo ``2^width`` (``absb`` unsigned, ``magf`` unsigned).

    ``|b|`` with a 0 above its top bit is recoded into digits ``d_j = -2 b[2j+1] + b[2j] + b[2j-1]`` in
    ``{-2 .. 2}`` (``b[-1] = 0``; the top digit is never negative), so ``|b| = sum d_j 4^j`` with half
    as many terms as bits.  Term ``j`` is ``|d_j| * magf`` (``magf`` or ``magf << 1``), its one's
    complement when ``d_j < 0``, shifted by ``2 j``; the ``+1`` that completes the two's complement
    of term ``j`` is bit ``2 j`` of term ``j + 1`` (a bit that term leaves 0).  Each term bit is a
    function of two ``magf`` bits and three ``b`` bits (one LUT5), and the terms sum to
    ``|b| * magf mod 2^width``.
    """
    nb = len(absb)
    ndig = (nb + 2) // 2
    bits = [Const(0, 1)] + [absb[i] for i in range(nb)] + [Const(0, 1)] * (2 * ndig + 1 - nb)
    terms, prev_neg = [], None
    for j in range(ndig):
        bm1, b0, b1 = bits[2 * j], bits[2 * j + 1], bits[2 * j + 2]
        one = b0 ^ bm1
        two = (b1 & ~b0 & ~bm1) | (~b1 & b0 & bm1)
        neg = b1 & ~(b0 & bm1)
        mag = Mux(two, magf << 1, Mux(one, magf, 0))
        t = ((Cat(mag, Const(0, max(0, width - len(mag)))) ^ neg.replicate(width)) << (2 * j))[:width]
        if prev_neg is not None:       # the previous term's +1, at a bit this term leaves 0
            t = t | (prev_neg << (2 * j - 2))
        terms.append(t)
        prev_neg = neg
    assert nb + 1 <= 2 * ndig    # the top digit reads the 0 above |b|: never negative, no +1 left over
    return terms


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
        :func:`sim.engine_config.check_layer_acc`).
    drain_copies : int
        Number of (identical) copies of :attr:`drain_row` (default 1), to split its fanout.
    a_copies : int
        Number of (identical) copies of the decoded A column on :attr:`a` (default 1): column ``c``'s
        broadcast registers load copy ``c * a_copies // cols``, so each copy's source register drives
        ``cols / a_copies`` columns' registers of its row instead of all of them.
    en_copies : int
        Number of (identical) copies of the global enable driven into the array (default 1).  The
        PEs are split into ``en_copies`` groups of consecutive PEs (row-major); group ``g`` uses
        ``en[g]`` and has its own copy of the product-stage control registers (``valid``,
        ``last``), so no enable or control net drives more than one group.

    Attributes
    ----------
    en : In(en_copies)
        Global enable (pipeline advances), every bit the same value.
    valid, first, last : In(1)
        This cycle carries an operand column; it is the first / last column of a tile.  ``first`` is
        not needed by the datapath (the ``last`` column moves the sum to the shadow register and
        clears the accumulator, and reset clears it too, so every tile starts from 0); the port is
        kept for the interface and documentation of the operand stream.
    a : In(ArrayLayout(TripleLayout, rows * a_copies))
        Decoded A column (one triple per row; copy ``k`` of row ``r`` at ``k * rows + r``).
    b : In(ArrayLayout(signed(b_bits), cols))
        B row.
    drain_row : In(ArrayLayout(range(rows), drain_copies))
        Shadow row selected on :attr:`shadow_row` (combinational read), in ``drain_copies``
        identical copies (column ``c`` uses copy ``c * drain_copies // cols``; one copy is a plain
        ``range(rows)`` port).
    shadow_row : Out(ArrayLayout(signed(acc_bits), cols))
        ``acc_raw`` of the selected row of the last finished tile.
    """

    def __init__(self, rows: int, cols: int, b_bits: int, acc_bits: int, en_copies: int = 1,
                 drain_copies: int = 1, edge_sh: int = 2, a_copies: int = 1):
        self.edge_sh = edge_sh
        if not 1 <= a_copies <= cols:
            raise ValueError(f"MacArray: a_copies must be in 1..{cols}, got {a_copies}")
        self.a_copies = a_copies
        self.magf_bits = 9 + (1 << edge_sh) - 1
        if not 1 <= en_copies <= rows * cols:
            raise ValueError(f"MacArray: en_copies must be in 1..{rows * cols}, got {en_copies}")
        self.rows, self.cols, self.b_bits, self.acc_bits = rows, cols, b_bits, acc_bits
        #: radix-4 Booth terms (:func:`booth_terms`) at 6- and 8-bit B: 3 / 4 terms instead of 5 / 7,
        #: so the product's first stage is one carry chain (two in series at 8-bit B were the 8 x 8
        #: W8A8 engine's worst path, session 45); at 4-bit B the 3 plain terms are kept
        self.booth = b_bits >= 6
        if not 1 <= drain_copies <= cols:
            raise ValueError(f"MacArray: drain_copies must be in 1..{cols}, got {drain_copies}")
        self.en_copies, self.drain_copies = en_copies, drain_copies
        super().__init__({
            "en": In(en_copies),
            "valid": In(1),
            "first": In(1),
            "last": In(1),
            "a": In(data.ArrayLayout(TripleLayout, rows * a_copies)),
            "b": In(data.ArrayLayout(signed(b_bits), cols)),
            "drain_row": In(data.ArrayLayout(range(max(2, rows)), drain_copies)),
            "shadow_row": Out(data.ArrayLayout(signed(acc_bits), cols)),
        })

    def group_of(self, r: int, c: int) -> int:
        """Enable / control group of PE ``(r, c)``."""
        return (r * self.cols + c) * self.en_copies // (self.rows * self.cols)

    def _broadcast(self, m: Module):
        """Operand broadcast registers (one copy per enable group that uses the operand).

        At the array edge each row's triple is pre-shifted by its fine shift (``magf = mag <<
        sh[0:2]``, ``coarse = sh[2:4]``) and each column's B code split into ``|b|`` and its sign;
        group ``g`` registers a copy of the operands of the rows / columns of its PEs and its own
        ``valid`` / ``last``.  Each copy loads on its group's enable ``en[g]``, so no net from the
        array edge drives more than the group registers, and yosys cannot merge the copies.

        Returns ``(a_of, b_of, valid, last)``: ``a_of(g, r)`` = ``(neg, magf, coarse)`` and
        ``b_of(g, c)`` = ``(absb, bneg)`` of group ``g``.
        """
        R, C, E, B = self.rows, self.cols, self.en_copies, self.b_bits
        a_reg, b_reg = {}, {}
        o_valid = [Signal(name=f"o_valid{g}") for g in range(E)]
        o_last = [Signal(name=f"o_last{g}") for g in range(E)]
        for g in range(E):
            with m.If(self.en[g]):
                m.d.sync += [o_valid[g].eq(self.valid), o_last[g].eq(self.last)]
        a_edge, b_edge = [], []
        for i in range(R * self.a_copies):       # copy i // R of row i % R
            t = self.a[i]
            a_edge.append((t.neg, t.mag << t.sh[:self.edge_sh], t.sh[self.edge_sh:4]))
        for c in range(C):
            b = self.b[c]
            b_edge.append((Mux(b[-1], -b, b)[:B - 1], b[-1]))
        for r in range(R):
            for c in range(C):
                g = self.group_of(r, c)
                ai = (c * self.a_copies // C) * R + r
                for key, edge, names, widths, store in (
                        ((g, r), a_edge[ai], ("neg", "magf", "sh"), (1, self.magf_bits, 4 - self.edge_sh), a_reg),
                        ((g, c), b_edge[c], ("absb", "bneg"), (B - 1, 1), b_reg)):
                    if key in store:
                        continue
                    regs = tuple(Signal(w, name=f"bc{g}_{n}{key[1]}") for n, w in zip(names, widths))
                    with m.If(self.en[g]):
                        m.d.sync += [reg.eq(v) for reg, v in zip(regs, edge)]
                    store[key] = regs
        return (lambda g, r: a_reg[g, r]), (lambda g, c: b_reg[g, c]), o_valid, o_last

    def _control(self, m: Module, o_valid, o_last):
        """``valid`` / ``last`` of each group delayed through the two product stages, and the
        accumulators' synchronous clear (domain reset, or the group's ``last`` column accumulating)."""
        E = self.en_copies
        ctl = (o_valid, o_last)
        for st in range(2):
            nxt = ([Signal(name=f"p{st}_valid{g}") for g in range(E)], [Signal(name=f"p{st}_last{g}") for g in range(E)])
            for g in range(E):
                with m.If(self.en[g]):
                    m.d.sync += [nxt[0][g].eq(ctl[0][g]), nxt[1][g].eq(ctl[1][g])]
            ctl = nxt
        p_valid, p_last = ctl
        clear = [Signal(name=f"clear{g}") for g in range(E)]
        m.d.comb += [clear[g].eq(ResetSignal() | (self.en[g] & p_valid[g] & p_last[g])) for g in range(E)]
        return p_valid, p_last, clear

    def _product(self, m: Module, en, a_ops, b_ops, nm: str):
        """PE product stages: ``(q, s)`` registers with ``q = ((|b| * magf) << 4 coarse) ^ -s``.

        Stage 1 registers the first half of the levels of the shift-and-add tree of ``|b| * magf``
        (one carry chain: the 3 plain shift-and-add terms at 4-bit ``b``, the radix-4 Booth terms of
        :func:`booth_terms` at 6 and 8 bits), the coarse shift and the sign; stage 2 adds
        the rest, applies the coarse shift and takes the one's complement of a negative product,
        so the accumulate stage is a single carry chain from register to register.  The coarse-shift
        register loads 0 when ``|b| = 0`` (the product is 0 whatever the shift): each PE's copy then
        has its own input, so synthesis keeps one per PE instead of merging the copies of a group.
        """
        W = self.acc_bits
        neg, magf, sh_c = a_ops
        absb, bneg = b_ops
        pw = len(magf) + len(absb)          # |b| * magf < 2^pw
        if self.booth:
            terms = booth_terms(magf, absb, pw)
        else:
            terms = [Mux(absb[i], magf << i, 0) for i in range(len(absb))]
        terms = adder_tree(m, terms, nm, levels=((len(terms) - 1).bit_length() + 1) // 2)
        part = [Signal(min(len(t), pw), name=f"{nm}_pp{i}") for i, t in enumerate(terms)]
        coarse = Signal(len(sh_c), name=f"{nm}_sh")
        s1 = Signal(name=f"{nm}_s1")
        q = Signal(W, name=f"{nm}_q")
        s = Signal(name=f"{nm}_s")
        # Booth terms sum modulo 2^pw (their carries out of pw bits are dropped)
        prod = (adder_tree(m, list(part), f"{nm}_sum") if len(part) > 1 else part[0])[:pw]
        shifted = (prod << Cat(Const(0, self.edge_sh), coarse))[:W]
        with m.If(en):
            m.d.sync += [p.eq(t) for p, t in zip(part, terms)]
            m.d.sync += [coarse.eq(Mux(absb == 0, 0, sh_c)), s1.eq(neg ^ bneg)]
            m.d.sync += [q.eq(shifted ^ s1.replicate(W)), s.eq(s1)]
        return q, s

    def elaborate(self, platform):
        m = Module()
        R, C, W = self.rows, self.cols, self.acc_bits
        a_of, b_of, o_valid, o_last = self._broadcast(m)
        p_valid, p_last, clear = self._control(m, o_valid, o_last)
        shadows = [[None] * C for _ in range(R)]
        for r in range(R):
            for c in range(C):
                g = self.group_of(r, c)
                q, s = self._product(m, self.en[g], a_of(g, r), b_of(g, c), f"pe{r}_{c}")
                # the accumulator has no domain reset of its own: ``clear`` is its synchronous reset
                # (the flip-flops' LSR input), so no multiplexer follows the carry chain
                acc = Signal(signed(W), name=f"pe{r}_{c}_acc", reset_less=True)
                shadow = Signal(signed(W), name=f"pe{r}_{c}_shadow")
                # acc + (+-p) = acc + (p ^ -s) + s: one W+1-bit carry chain, s as its carry-in
                total = (Cat(s, acc) + Cat(s, q))[1:W + 1].as_signed()
                with m.If(clear[g]):
                    m.d.sync += acc.eq(0)
                with m.Elif(self.en[g] & p_valid[g]):
                    m.d.sync += acc.eq(total)
                with m.If(self.en[g] & p_valid[g] & p_last[g]):
                    m.d.sync += shadow.eq(total)
                shadows[r][c] = shadow
        for c in range(C):
            with m.Switch(self.drain_row[c * self.drain_copies // C]):
                for r in range(R):
                    with m.Case(r):
                        m.d.comb += self.shadow_row[c].eq(shadows[r][c])
        return m
