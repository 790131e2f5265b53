"""Memory traffic of one GEMM: bytes per operand, SRAM and DRAM, with re-fetch.

Worked examples and the rationale are in docs/estimator.md ("Memory traffic"). Two models:

* :func:`engine_traffic` -- the vitaccel engine (sim/schedule.py): output-stationary ``rows x cols``
  tiles, column blocks outer, row tiles inner; a B block (``K x cols`` codes) sits in one of the two
  B banks (``max_k`` deep each) and is reused by every row tile, so **B is read from DRAM once**.
  The A row strips are streamed again for every column block (``nN = ceil(N / cols)`` times), unless
  the whole A operand fits in the SRAM left after the B banks and the staging buffers, in which case
  it is read from DRAM once and re-read from SRAM.
* :func:`layer_traffic` -- a generic output-stationary array with a free loop order (used for the
  SCALE-Sim ``os`` dataflow): the cheapest feasible of the schedules below.

Bytes per operand (one GEMM instance)
    * A codes ``ceil(M K a_bits / 8)`` (packed); per-patch vectors ``M * 3`` (``Mr`` uint16 + zero point
      byte) when the A operand is per patch; outlier list ``6 * (outliers of all row tiles)`` bytes
      (spec section 5: uint16 row + uint16 col + int16 value).
    * B codes ``ceil(K N b_bits / 8)`` (weights stored packed at their width); per-column parameters for a
      linear layer ``N * (4 + 9)`` (``colsum`` int32 when the A format has a zero point, ``Mc`` uint16 +
      ``Sc`` byte + ``Bq`` 48 bit); for ``qk``/``av`` (per-tensor B) one 9-byte requantizer set.
    * Output ``ceil(M N out_bits / 8)``, written once. Partial sums: 0 (K is never split).

Generic schedules (``S`` = SRAM bytes; ``avail`` = ``S`` minus the double-buffered output tile and
streaming chunks of ``kc = min(K, rows)`` reduction steps of both operands):

    ===========  ============================================  ==============  ==============
    schedule     needs in ``avail``                            A from DRAM     B from DRAM
    ===========  ============================================  ==============  ==============
    resident     ``A + 2 * Bstrip`` or ``B + 2 * Astrip``      ``A``           ``B``
    b-strip      ``2 * Bstrip`` (B strips outer, A streamed)   ``A * nN``      ``B``
    a-strip      ``2 * Astrip`` (A strips outer, B streamed)   ``A``           ``B * nM``
    stream       nothing                                       ``A * nN``      ``B * nM``
    ===========  ============================================  ==============  ==============

SRAM traffic: every tile reads its A and B strips from on-chip buffers into the array: reads
``A * nN + B * nM``; writes are the DRAM fills plus the outputs.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from vitaccel.sim.errors import UserError

from .shapes import Gemm

#: Bytes of one outlier list entry (row uint16, col uint16, val int16), docs/datapath.md section 5.
OUTLIER_ENTRY_BYTES = 6
#: Per-row vector bytes of a per-patch A operand: ``Mr`` (uint16) + zero point (one byte).
ROW_VECTOR_BYTES = 3
#: Per-column ``colsum`` bytes (int32).
COLSUM_BYTES = 4
#: Per-column requantizer bytes: ``Mc`` uint16 + ``Sc`` byte + ``Bq`` 48 bit.
REQUANT_COL_BYTES = 2 + 1 + 6

SCHEDULES = ("resident", "b-strip", "a-strip", "stream")


class SramTooSmall(UserError, ValueError):
    """The SRAM cannot hold the minimum working set of a tile."""


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _bits_to_bytes(bits: int) -> int:
    return _ceil_div(bits, 8)


@dataclass
class Traffic:
    """Bytes moved for one layer (all ``count`` instances).

    ``dram_*`` are DRAM reads per operand (after re-fetch) and the output write; ``*_once`` the
    operand sizes (read exactly once when everything is reused). ``sram_read`` / ``sram_write`` are
    on-chip buffer accesses.
    """

    schedule: str
    a_codes: int
    a_vectors: int
    outliers: int
    b_codes: int
    b_params: int
    out: int
    psum: int
    a_refetch: int
    b_refetch: int
    dram_a: int
    dram_b: int
    dram_out: int
    sram_read: int
    sram_write: int
    min_sram: int
    extra: dict = field(default_factory=dict)

    @property
    def dram_read(self) -> int:
        return self.dram_a + self.dram_b

    @property
    def dram_total(self) -> int:
        return self.dram_a + self.dram_b + self.dram_out + 2 * self.psum

    @property
    def a_once(self) -> int:
        return self.a_codes + self.a_vectors + self.outliers

    @property
    def b_once(self) -> int:
        return self.b_codes + self.b_params


def total_outliers(g: Gemm, rows: int) -> int:
    """Outliers of all row tiles of one instance (``outliers_per_tile`` is a count or a per-tile list)."""
    o = g.outliers_per_tile
    if isinstance(o, int):
        return o * _ceil_div(g.M, rows)
    return int(sum(o))


def max_outliers_per_tile(g: Gemm) -> int:
    o = g.outliers_per_tile
    return o if isinstance(o, int) else max(o, default=0)


def operand_bytes(g: Gemm, rows: int) -> dict:
    """Sizes in bytes of one instance's operands (see module docstring)."""
    a_codes = _bits_to_bytes(g.M * g.K * g.a_bits)
    a_vec = g.M * ROW_VECTOR_BYTES if g.per_patch else 0
    outl = OUTLIER_ENTRY_BYTES * total_outliers(g, rows) if g.outliers else 0
    b_codes = _bits_to_bytes(g.K * g.N * g.b_bits)
    if g.op == "linear":
        b_par = g.N * ((COLSUM_BYTES if g.a_zero else 0) + REQUANT_COL_BYTES)
    else:
        b_par = REQUANT_COL_BYTES
    out = _bits_to_bytes(g.M * g.N * g.out_bits)
    return dict(a_codes=a_codes, a_vectors=a_vec, outliers=outl, b_codes=b_codes, b_params=b_par, out=out)


def min_working_set(g: Gemm, rows: int, cols: int) -> int:
    """Bytes always reserved: double-buffered output tile and streaming chunks (``kc = min(K, rows)``)."""
    kc = min(g.K, rows)
    out_tile = _bits_to_bytes(rows * cols * g.out_bits)
    chunks = _bits_to_bytes(rows * kc * g.a_bits) + _bits_to_bytes(kc * cols * g.b_bits)
    return 2 * out_tile + 2 * chunks


def layer_traffic(g: Gemm, rows: int, cols: int, sram_bytes: int) -> Traffic:
    """DRAM and SRAM bytes of ``g`` on a ``rows x cols`` engine with ``sram_bytes`` of buffer.

    Raises
    ------
    SramTooSmall
        When the minimum working set does not fit.
    """
    if rows < 1 or cols < 1:
        raise ValueError(f"array must be at least 1x1, got {rows}x{cols}")
    ob = operand_bytes(g, rows)
    n_m, n_n = _ceil_div(g.M, rows), _ceil_div(g.N, cols)
    a_tot = ob["a_codes"] + ob["a_vectors"] + ob["outliers"]
    b_tot = ob["b_codes"] + ob["b_params"]
    # one strip (the widest, i.e. a full one; edge strips are smaller)
    r_eff, c_eff = min(rows, g.M), min(cols, g.N)
    a_strip = (_bits_to_bytes(r_eff * g.K * g.a_bits) + (r_eff * ROW_VECTOR_BYTES if g.per_patch else 0)
               + (OUTLIER_ENTRY_BYTES * max_outliers_per_tile(g) if g.outliers else 0))
    b_strip = _bits_to_bytes(g.K * c_eff * g.b_bits) + (ob["b_params"] * c_eff // g.N if g.op == "linear"
                                                         else ob["b_params"])
    base = min_working_set(g, rows, cols)
    if base > sram_bytes:
        raise SramTooSmall(
            f"layer {g.name} (M={g.M}, K={g.K}, N={g.N}) needs at least {base} bytes of SRAM for its minimum "
            f"tile on a {rows}x{cols} array (double-buffered output tile and operand chunks), but the SRAM "
            f"has {sram_bytes} bytes")
    avail = sram_bytes - base
    cands = []  # (dram read bytes, schedule, a_mult, b_mult)
    if a_tot + 2 * b_strip <= avail or b_tot + 2 * a_strip <= avail:
        cands.append(("resident", 1, 1))
    if 2 * b_strip <= avail:
        cands.append(("b-strip", n_n, 1))
    if 2 * a_strip <= avail:
        cands.append(("a-strip", 1, n_m))
    cands.append(("stream", n_n, n_m))
    sched, am, bm = min(cands, key=lambda c: a_tot * c[1] + b_tot * c[2])
    c = g.count
    dram_a, dram_b, dram_out = a_tot * am * c, b_tot * bm * c, ob["out"] * c
    sram_read = (a_tot * n_n + b_tot * n_m) * c
    sram_write = dram_a + dram_b + dram_out
    return Traffic(
        schedule=sched, a_codes=ob["a_codes"] * c, a_vectors=ob["a_vectors"] * c, outliers=ob["outliers"] * c,
        b_codes=ob["b_codes"] * c, b_params=ob["b_params"] * c, out=dram_out, psum=0,
        a_refetch=am, b_refetch=bm, dram_a=dram_a, dram_b=dram_b, dram_out=dram_out,
        sram_read=sram_read, sram_write=sram_write, min_sram=base,
    )


def engine_bank_bytes(cols: int, max_k: int, bank_bits: int) -> int:
    """Bytes of the engine's two B banks (``max_k`` rows of ``cols`` codes of ``bank_bits`` each)."""
    return 2 * _bits_to_bytes(max_k * cols * bank_bits)


def engine_traffic(g: Gemm, rows: int, cols: int, sram_bytes: int, *, max_k: int, bank_bits: int) -> Traffic:
    """DRAM and SRAM bytes of ``g`` on the vitaccel engine (loop order of sim/schedule.py).

    The SRAM of ``sram_bytes`` holds the two B banks (:func:`engine_bank_bytes`), the double-buffered
    output tile and A staging chunks (:func:`min_working_set`); what is left caches the whole A operand
    when it fits (A read from DRAM once), otherwise A is streamed once per column block.

    Raises
    ------
    SramTooSmall
        When the B banks and staging buffers do not fit.
    """
    if rows < 1 or cols < 1:
        raise ValueError(f"array must be at least 1x1, got {rows}x{cols}")
    banks = engine_bank_bytes(cols, max_k, bank_bits)
    stage = min_working_set(g, rows, cols)
    if banks + stage > sram_bytes:
        raise SramTooSmall(
            f"layer {g.name} (M={g.M}, K={g.K}, N={g.N}): the engine's two B banks ({max_k} x {cols} x "
            f"{bank_bits} bit = {banks} bytes) plus the staging buffers ({stage} bytes) need {banks + stage} "
            f"bytes of SRAM, but the SRAM has {sram_bytes} bytes")
    ob = operand_bytes(g, rows)
    n_m, n_n = _ceil_div(g.M, rows), _ceil_div(g.N, cols)
    a_tot = ob["a_codes"] + ob["a_vectors"] + ob["outliers"]
    b_tot = ob["b_codes"] + ob["b_params"]
    avail = sram_bytes - banks - stage
    am = 1 if (a_tot <= avail or n_n == 1) else n_n
    sched = "a-cached" if (am == 1 and n_n > 1) else ("single" if n_n == 1 else "a-refetch")
    c = g.count
    dram_a, dram_b, dram_out = a_tot * am * c, b_tot * c, ob["out"] * c
    return Traffic(
        schedule=sched, a_codes=ob["a_codes"] * c, a_vectors=ob["a_vectors"] * c, outliers=ob["outliers"] * c,
        b_codes=ob["b_codes"] * c, b_params=ob["b_params"] * c, out=dram_out, psum=0,
        a_refetch=am, b_refetch=1, dram_a=dram_a, dram_b=dram_b, dram_out=dram_out,
        sram_read=(a_tot * n_n + ob["b_codes"] * n_m + ob["b_params"]) * c,
        sram_write=dram_a + dram_b + dram_out, min_sram=banks + stage,
    )
