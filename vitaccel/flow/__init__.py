"""``vitaccel flow``: the whole co-design loop in one command, with a report.

Stages (:data:`vitaccel.flow.run.STAGES` lists them with their dependencies; the software stages are in
:mod:`~vitaccel.flow.stages`, the hardware stages in :mod:`~vitaccel.flow.hw_stages`, figures in
:mod:`~vitaccel.flow.plots`, ``report.md`` / ``report.json`` in :mod:`~vitaccel.flow.report`, the command line
in :mod:`~vitaccel.flow.cli`):

=============  ====================================================================================
``setup``      model (timm name + ``--weights``, default the embedded ``vitaccel-digits``) and data
               (``--data DIR``; default: the embedded digits written as PNG folders, so the default
               goes through the same timm image-folder path as ImageNet); disjoint calibration and
               evaluation subsets.
``fp_eval``    top-1 of the float model.
``calibrate``  one calibration per ``--methods`` entry (:func:`vitaccel.golden.calibrate.calibrate_model`).
``export``     integer program of each method (:func:`vitaccel.golden.program.export_program`).
``fq_eval``    top-1 of each fake-quant model, in float and on the integer grid of its program
               (:mod:`vitaccel.golden.integer_grid`).
``int_eval``   top-1 of each program in the bit-accurate integer simulator
               (:class:`vitaccel.golden.int_eval.ProgramRunner`), agreement with fake-quant, outliers.
``golden``     golden vectors of the exported method (:func:`vitaccel.golden.golden_vectors.write_golden`).
``verilog``    Verilog of the layer engine for ``--rows`` x ``--cols`` (``hw``).
``rtl_check``  every GEMM of one golden image through the RTL accelerator top in Verilator
               (``tb.model_run``, as ``vitaccel tb model``): bit-exact, cycles and memory bytes
               equal to ``estimate --dataflow accelerator``.
``estimate``   per-layer cycles and DRAM traffic of the whole program (``sim.perf``).
``plots``      PNG figures.
=============  ====================================================================================

A stage that raises is recorded as ``failed`` with its message; stages
that need its results are ``skipped``; the report (``report.md``, ``report.json``) is always written
and lists every stage's status. The exit code is 0 only when every stage that was requested ran.
"""
from __future__ import annotations

from .cli import QUICK, add_subcommands, apply_quick, cmd_flow, command_line
from .context import FlowContext, Stage, StageError, StageResult
from .plots import make_plots
from .report import report_markdown, write_report
from .run import STAGES, run_flow
from .stages import DEFAULT_METHODS, EMBEDDED_MODEL

__all__ = ["QUICK", "STAGES", "DEFAULT_METHODS", "EMBEDDED_MODEL", "FlowContext", "Stage", "StageError", "StageResult",
           "add_subcommands", "apply_quick", "cmd_flow", "command_line", "make_plots", "report_markdown", "run_flow",
           "write_report"]
