"""Generic systolic-array cycle model following the public SCALE-Sim conventions.

SCALE-Sim (Samajdar et al., "SCALE-Sim: Systolic CNN Accelerator Simulator", arXiv:1811.02883, and
"A Systematic Methodology for Characterizing Scalability of DNN Accelerators using SCALE-Sim",
ISPASS 2020) maps a GEMM onto an ``R x C`` array with three *operand dimensions*:
``Sr`` (mapped on the array rows), ``Sc`` (mapped on the array columns) and ``T`` (streamed in time).
The mapping per dataflow is the one of SCALE-Sim v2's ``systolic_compute_{os,ws,is}.py``
(``set_params``), for ``Y[M, N] = A[M, K] @ B[K, N]`` (A = ifmap operand matrix, B = filter):

==========  ======  ======  ======
dataflow    Sr      Sc      T
==========  ======  ======  ======
``os``      M       N       K
``ws``      K       N       M
``is``      K       M       N
==========  ======  ======  ======

The ISPASS 2020 closed form for one array ("scale-up") is

    cycles = (2 R + C + T - 2) * ceil(Sr / R) * ceil(Sc / C)

i.e. each of the ``ceil(Sr/R) * ceil(Sc/C)`` folds costs ``2R + C + T - 2`` cycles (operand skew /
fill ``R + C - 2``, ``T`` streaming steps, ``R`` cycles to load the stationary operand or drain the
results). SRAM reads follow SCALE-Sim v2's request counting (each fold reads the part of the streamed
operands it uses): see :func:`scalesim_sram_reads`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

DATAFLOWS = ("os", "ws", "is")


def operand_dims(dataflow: str, M: int, K: int, N: int) -> tuple[int, int, int]:
    """``(Sr, Sc, T)`` of a GEMM under ``dataflow`` (table in the module docstring)."""
    if dataflow == "os":
        return M, N, K
    if dataflow == "ws":
        return K, N, M
    if dataflow == "is":
        return K, M, N
    raise ValueError(f"unknown dataflow {dataflow!r}; expected one of {DATAFLOWS}")


@dataclass(frozen=True)
class ScaleSimCycles:
    """Cycles of one GEMM instance under the SCALE-Sim closed form."""

    dataflow: str
    Sr: int
    Sc: int
    T: int
    row_folds: int
    col_folds: int
    cycles_per_fold: int
    total: int
    macs: int
    utilisation: float


def scalesim_cycles(dataflow: str, rows: int, cols: int, M: int, K: int, N: int) -> ScaleSimCycles:
    """``(2R + C + T - 2) * ceil(Sr/R) * ceil(Sc/C)`` for one GEMM instance."""
    if rows < 1 or cols < 1:
        raise ValueError(f"array must be at least 1x1, got {rows}x{cols}")
    sr, sc, t = operand_dims(dataflow, M, K, N)
    rf, cf = math.ceil(sr / rows), math.ceil(sc / cols)
    per = 2 * rows + cols + t - 2
    total = per * rf * cf
    macs = M * K * N
    return ScaleSimCycles(dataflow, sr, sc, t, rf, cf, per, total, macs, macs / (rows * cols * total))


def scalesim_sram_reads(dataflow: str, rows: int, cols: int, M: int, K: int, N: int) -> dict:
    """Element counts read from / written to SRAM, as SCALE-Sim v2 counts its requests.

    Returns ``dict(ifmap=..., filter=..., ofmap=...)`` in elements:

    * ``os``: ifmap ``M K ceil(N/C)`` (A re-read per column fold), filter ``K N ceil(M/R)``, ofmap ``M N``.
    * ``ws``: ifmap ``M K ceil(N/C)``, filter ``K N`` (each weight loaded once), ofmap ``M N ceil(K/R)``
      (a partial output per row fold).
    * ``is``: ifmap ``K M`` (loaded once), filter ``K N ceil(M/C)``, ofmap ``M N ceil(K/R)``.
    """
    c = scalesim_cycles(dataflow, rows, cols, M, K, N)
    if dataflow == "os":
        return dict(ifmap=M * K * c.col_folds, filter=K * N * c.row_folds, ofmap=M * N)
    if dataflow == "ws":
        return dict(ifmap=M * K * c.col_folds, filter=K * N, ofmap=M * N * c.row_folds)
    return dict(ifmap=K * M, filter=K * N * c.col_folds, ofmap=M * N * c.row_folds)
