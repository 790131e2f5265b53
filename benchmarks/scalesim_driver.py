"""Run the real SCALE-Sim on GEMM layers and print its per-layer reports as JSON (used by scalesim_parity.py).

Runs inside the interpreter that has SCALE-Sim installed (``benchmarks/scalesim_parity.py`` creates
``build/scalesim-venv`` with ``scalesim==3.0.0`` and ``numpy<2`` for it); imports nothing from vitaccel.

Input (stdin, JSON)::

    {"rows": R, "cols": C, "dataflow": "os"|"ws"|"is", "layers": [[name, M, K, N], ...],
     "ifmap_kb": 8192, "filter_kb": 8192, "ofmap_kb": 8192}

for ``Y[M, N] = A[M, K] @ B[K, N]``. Writes a SCALE-Sim config (``InterfaceBandwidth = CALC``,
i.e. SCALE-Sim's "estimate bandwidth" mode: stall-free reads), a GEMM topology file (SCALE-Sim's
``Layer, M, N, K`` columns, where its ``N`` is our output width and its ``K`` our reduction depth)
and an empty layout file into a temporary directory, runs ``scalesim.scale_sim.scalesim`` (the class
its ``scale.py`` uses) with ``input_type_gemm=True``, and prints one JSON object: the versions and,
per layer, the columns of ``COMPUTE_REPORT.csv`` and ``DETAILED_ACCESS_REPORT.csv``.
"""
from __future__ import annotations

import csv
import json
import sys
import tempfile
import time
from pathlib import Path

CONFIG = """[general]
run_name = parity

[run_presets]
InterfaceBandwidth = CALC
UseRamulatorTrace = False

[architecture_presets]
ArrayHeight = {rows}
ArrayWidth = {cols}
IfmapSramSzkB = {ifmap_kb}
FilterSramSzkB = {filter_kb}
OfmapSramSzkB = {ofmap_kb}
IfmapOffset = 0
FilterOffset = 10000000
OfmapOffset = 20000000
Dataflow = {dataflow}
ReadRequestBuffer = 32
WriteRequestBuffer = 32
Bandwidth = 10

[layout]
IfmapCustomLayout = False
IfmapSRAMBankBandwidth = 10
IfmapSRAMBankNum = 10
IfmapSRAMBankPort = 2
FilterCustomLayout = False
FilterSRAMBankBandwidth = 10
FilterSRAMBankNum = 10
FilterSRAMBankPort = 2

[sparsity]
SparsitySupport = false
SparseRep = ellpack_block
OptimizedMapping = false
BlockSize = 8
RandomNumberGeneratorSeed = 40
"""

COMPUTE_COLS = ("total_cycles_incl_prefetch", "total_cycles", "stall_cycles", "overall_util_pct",
                "mapping_efficiency_pct", "compute_util_pct")
DETAIL_COLS = ("sram_ifmap_start", "sram_ifmap_stop", "sram_ifmap_reads", "sram_filter_start", "sram_filter_stop",
               "sram_filter_reads", "sram_ofmap_start", "sram_ofmap_stop", "sram_ofmap_writes",
               "dram_ifmap_start", "dram_ifmap_stop", "dram_ifmap_reads", "dram_filter_start", "dram_filter_stop",
               "dram_filter_reads", "dram_ofmap_start", "dram_ofmap_stop", "dram_ofmap_writes")


def _rows(path: Path) -> list[list[str]]:
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    return [[c.strip() for c in r if c.strip() != ""] for r in rows[1:] if any(c.strip() for c in r)]


def _num(text: str):
    v = float(text)
    return int(v) if v.is_integer() else v


def run(job: dict) -> dict:
    from importlib.metadata import version

    from scalesim.scale_sim import scalesim

    with tempfile.TemporaryDirectory(prefix="scalesim_parity_") as tmp:
        d = Path(tmp)
        (d / "parity.cfg").write_text(CONFIG.format(**job))
        lines = ["Layer, M, N, K,"] + [f"{n}, {m}, {nn}, {k}," for n, m, k, nn in job["layers"]]
        (d / "topology.csv").write_text("\n".join(lines) + "\n")
        (d / "layout.csv").write_text("Layer,\n")
        t0 = time.perf_counter()
        sim = scalesim(save_disk_space=True, verbose=False, config=str(d / "parity.cfg"),
                       topology=str(d / "topology.csv"), layout=str(d / "layout.csv"), input_type_gemm=True)
        sim.run_scale(top_path=str(d / "out"))
        seconds = time.perf_counter() - t0
        comp = _rows(d / "out" / "parity" / "COMPUTE_REPORT.csv")
        det = _rows(d / "out" / "parity" / "DETAILED_ACCESS_REPORT.csv")
    layers = []
    for (name, m, k, n), c, a in zip(job["layers"], comp, det):
        rec = dict(name=name, M=m, K=k, N=n)
        rec.update({key: _num(v) for key, v in zip(COMPUTE_COLS, c[1:])})
        rec.update({key: _num(v) for key, v in zip(DETAIL_COLS, a[1:])})
        layers.append(rec)
    import numpy
    return dict(scalesim_version=version("scalesim"), numpy_version=numpy.__version__, seconds=round(seconds, 2),
                rows=job["rows"], cols=job["cols"], dataflow=job["dataflow"], layers=layers)


if __name__ == "__main__":
    print(json.dumps(run(json.load(sys.stdin))))
