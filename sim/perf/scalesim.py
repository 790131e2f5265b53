"""Generic systolic-array cycle model: what the released SCALE-Sim 3.0.0 computes, in closed form.

SCALE-Sim (Samajdar et al., arXiv:1811.02883; ISPASS 2020; PyPI package ``scalesim`` 3.0.0, the
code of github.com/scalesim-project/scale-sim-v2) maps ``Y[M, N] = A[M, K] @ B[K, N]`` (A = ifmap
operand matrix, B = filter) onto an ``R x C`` array with three *operand dimensions*: ``Sr`` (array
rows), ``Sc`` (array columns) and ``T`` (streamed in time), per dataflow as in its
``compute/systolic_compute_{os,ws,is}.py`` (``set_params``):

==========  ======  ======  ======
dataflow    Sr      Sc      T
==========  ======  ======  ======
``os``      M       N       K
``ws``      K       N       M
``is``      K       M       N
==========  ======  ======  ======

SCALE-Sim does not evaluate a formula: it builds per-fold *demand matrices* (one row per cycle) and
runs them through its SRAM model. The closed form below was derived from how those matrices are
built (docs/estimator.md, "SCALE-Sim 3.0.0"); ``benchmarks/scalesim_parity.py`` checks it against
the real simulator and ``tests/test_scalesim_parity.py`` against recorded outputs. With
``F = ceil(Sr / R) * ceil(Sc / C)`` folds:

* rows of one fold's demand trace: ``os``: ``R + C + T - 2`` (``T`` streaming rows, ``C - 1``/``R - 1``
  drain rows, skew ``R - 1``/``C - 1``); ``ws``/``is``: ``2R + C + T - 2`` (plus ``R`` rows loading the
  stationary operand);
* reported cycles ("Total Cycles" of ``COMPUTE_REPORT.csv``, no stalls): the index of the last
  demand row, ``F * fold_rows - 1``.

The ISPASS 2020 closed form ``(2R + C + T - 2) * F`` (:func:`paper_cycles`) is therefore one cycle
high for ``ws``/``is`` and ``R`` cycles per fold high for ``os``.
"""
from __future__ import annotations

from dataclasses import dataclass

DATAFLOWS = ("os", "ws", "is")
#: The SCALE-Sim release this model reproduces (``pip install scalesim==3.0.0``).
SCALESIM_VERSION = "3.0.0"


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def operand_dims(dataflow: str, M: int, K: int, N: int) -> tuple[int, int, int]:
    """``(Sr, Sc, T)`` of a GEMM under ``dataflow`` (table in the module docstring)."""
    if dataflow == "os":
        return M, N, K
    if dataflow == "ws":
        return K, N, M
    if dataflow == "is":
        return K, M, N
    raise ValueError(f"unknown dataflow {dataflow!r}; expected one of {DATAFLOWS}")


def fold_rows(dataflow: str, rows: int, cols: int, T: int) -> int:
    """Rows (cycles) of one fold's demand trace in SCALE-Sim 3.0.0 (docs/estimator.md)."""
    if dataflow == "os":
        return rows + cols + T - 2
    return 2 * rows + cols + T - 2


@dataclass(frozen=True)
class ScaleSimCycles:
    """SCALE-Sim 3.0.0 compute report of one GEMM instance (no memory stalls).

    ``total`` is "Total Cycles"; ``utilisation`` "Overall Util" (MACs over ``R C total``);
    ``mapping_efficiency`` and ``compute_utilisation`` the per-fold averages SCALE-Sim reports as
    "Mapping Efficiency" and "Compute Util" (fractions, not percent).
    """

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
    mapping_efficiency: float
    compute_utilisation: float

    @property
    def folds(self) -> int:
        return self.row_folds * self.col_folds


def _check_array(rows: int, cols: int) -> None:
    if rows < 1 or cols < 1:
        raise ValueError(f"array must be at least 1x1, got {rows}x{cols}")


def scalesim_cycles(dataflow: str, rows: int, cols: int, M: int, K: int, N: int) -> ScaleSimCycles:
    """Cycles, utilisation and mapping efficiency of one GEMM instance as SCALE-Sim 3.0.0 reports them.

    ``total = F * fold_rows - 1`` (module docstring). SCALE-Sim's per-fold "compute utilisation"
    divides the fold's MACs by ``R C`` times the *unskewed* length of the demand matrix it measures,
    ``fold_rows`` for ``os`` and ``fold_rows + C - 1`` for ``ws``/``is``; since every fold streams
    ``T`` steps, the average over folds is ``T Sr Sc / (R C F len)``; the mapping efficiency is
    ``Sr Sc / (R C F)``.
    """
    _check_array(rows, cols)
    sr, sc, t = operand_dims(dataflow, M, K, N)
    rf, cf = _cdiv(sr, rows), _cdiv(sc, cols)
    per = fold_rows(dataflow, rows, cols, t)
    folds = rf * cf
    total = folds * per - 1
    macs = M * K * N
    pe_folds = rows * cols * folds
    util_len = per if dataflow == "os" else per + cols - 1
    return ScaleSimCycles(dataflow, sr, sc, t, rf, cf, per, total, macs,
                          macs / (rows * cols * total), sr * sc / pe_folds, t * sr * sc / (pe_folds * util_len))


def paper_cycles(dataflow: str, rows: int, cols: int, M: int, K: int, N: int) -> int:
    """The ISPASS 2020 closed form ``(2R + C + T - 2) * ceil(Sr/R) * ceil(Sc/C)`` (for comparison only)."""
    _check_array(rows, cols)
    sr, sc, t = operand_dims(dataflow, M, K, N)
    return (2 * rows + cols + t - 2) * _cdiv(sr, rows) * _cdiv(sc, cols)


def sram_requests(dataflow: str, rows: int, cols: int, M: int, K: int, N: int) -> dict:
    """Elements the array reads from / writes to SRAM under SCALE-Sim 3.0.0's fold order.

    Returns ``dict(ifmap=..., filter=..., ofmap=...)``:

    * ``os``: ifmap ``M K ceil(N/C)`` (A re-read per column fold), filter ``K N ceil(M/R)``, ofmap ``M N``.
    * ``ws``: ifmap ``M K ceil(N/C)``, filter ``K N`` (each weight loaded once), ofmap ``M N ceil(K/R)``
      (a partial output per row fold).
    * ``is``: ifmap ``M K`` (loaded once), filter ``K N ceil(M/C)``, ofmap ``M N ceil(K/R)``.
    """
    _check_array(rows, cols)
    if dataflow == "os":
        return dict(ifmap=M * K * _cdiv(N, cols), filter=K * N * _cdiv(M, rows), ofmap=M * N)
    if dataflow == "ws":
        return dict(ifmap=M * K * _cdiv(N, cols), filter=K * N, ofmap=M * N * _cdiv(K, rows))
    if dataflow == "is":
        return dict(ifmap=M * K, filter=K * N * _cdiv(M, cols), ofmap=M * N * _cdiv(K, rows))
    raise ValueError(f"unknown dataflow {dataflow!r}; expected one of {DATAFLOWS}")


def scalesim_report_counts(dataflow: str, rows: int, cols: int, M: int, K: int, N: int) -> dict:
    """"SRAM IFMAP Reads", "SRAM Filter Reads", "SRAM OFMAP Writes" as SCALE-Sim 3.0.0 prints them.

    Equal to :func:`sram_requests` except ``os`` ofmap: SCALE-Sim's ``systolic_compute_os`` adds,
    besides the ``M N`` written elements, the height plus width of each padded ``R x C`` output fold,
    i.e. ``R + C`` per fold, to its write counter (a bookkeeping artefact, not SRAM writes; the
    estimator's traffic uses :func:`sram_requests`).
    """
    req = sram_requests(dataflow, rows, cols, M, K, N)
    if dataflow == "os":
        req = dict(req, ofmap=req["ofmap"] + _cdiv(M, rows) * _cdiv(N, cols) * (rows + cols))
    return req
