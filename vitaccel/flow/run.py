"""The stage table of ``vitaccel flow`` and the driver that runs it."""
from __future__ import annotations

import argparse
import sys
import time
import traceback
from pathlib import Path

from vitaccel.sim.errors import UserError

from .context import FlowContext, Stage, StageError, StageResult
from .hw_stages import stage_rtl_check, stage_verilog
from .plots import make_plots
from .report import write_report
from .stages import (stage_calibrate, stage_estimate, stage_export, stage_fp_eval, stage_fq_eval, stage_golden,
                     stage_int_eval, stage_setup)

__all__ = ["STAGES", "run_flow", "stage_plots"]


def stage_plots(ctx: FlowContext) -> str:
    made = make_plots(ctx)
    for k, p in made.items():
        ctx.files[f"plot_{k}"] = ctx.rel(p)
    if not made:
        raise StageError("no data to plot")
    return ", ".join(ctx.rel(p) for p in made.values())


STAGES = (
    Stage("setup", stage_setup, (), title="model and data"),
    Stage("fp_eval", stage_fp_eval, ("setup",), title="evaluate FP32"),
    Stage("calibrate", stage_calibrate, ("setup",), title="calibrate"),
    Stage("export", stage_export, ("calibrate",), title="export integer programs"),
    Stage("fq_eval", stage_fq_eval, ("calibrate",), title="evaluate fake-quant (float and integer grid)"),
    Stage("int_eval", stage_int_eval, ("export",), title="evaluate integer simulator"),
    Stage("golden", stage_golden, ("export",), title="golden vectors"),
    Stage("verilog", stage_verilog, (), rtl=True, title="generate Verilog"),
    Stage("rtl_check", stage_rtl_check, ("golden", "verilog"), rtl=True,
          title="every GEMM of one image in the RTL accelerator top"),
    Stage("estimate", stage_estimate, ("export",), title="estimate cycles and traffic"),
    Stage("plots", stage_plots, (), title="plots"),
)


def run_flow(args: argparse.Namespace, *, stages: tuple = STAGES, command: str = "", label: str | None = None) -> dict:
    """Run ``stages`` in order, print a stage list, write the report; returns the report document.

    A stage whose dependencies did not end ``ok`` is ``skipped``; a stage that raises
    :class:`StageError`, a :class:`UserError` (e.g. a program the simulator refuses) or any other
    error is ``failed`` and the flow goes on; a :class:`UserError` of the ``setup`` stage (model,
    data) stops the flow. ``command`` is the command line recorded in the report; ``label`` the
    output folder named in the progress line (default ``args.output``)."""
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    ctx = FlowContext(args=args, out=out)
    results: dict[str, StageResult] = {}
    t_all = time.time()
    todo = [s for s in stages if not (s.rtl and args.skip_rtl)]
    print(f"vitaccel flow: {len(todo)} stages -> {label or out}", file=sys.stderr)
    for stage in stages:
        res = StageResult(stage.name)
        results[stage.name] = res
        if stage.rtl and args.skip_rtl:
            res.status, res.message = "not_requested", "--skip-rtl"
            continue
        blocked = [n for n in stage.needs if results.get(n) is None or results[n].status != "ok"]
        tag = f"[{todo.index(stage) + 1}/{len(todo)}] {stage.title or stage.name}"
        if blocked:
            res.status, res.message = "skipped", "needs " + ", ".join(blocked)
            print(f"{tag}: skipped ({res.message})", file=sys.stderr)
            continue
        print(f"{tag} ...", file=sys.stderr, flush=True)
        t0 = time.time()
        try:
            res.message = stage.func(ctx) or ""
            res.status = "ok"
        except UserError as exc:
            if stage.name == "setup":
                raise
            res.status, res.message = "failed", f"error: {exc}"
        except StageError as exc:
            res.status, res.message = "failed", str(exc)
        except Exception as exc:
            res.status, res.message = "failed", f"{type(exc).__name__}: {exc}"
            if args.verbose:
                traceback.print_exc()
        res.seconds = time.time() - t0
        mark = "ok" if res.status == "ok" else "FAILED"
        print(f"{tag}: {mark} ({res.seconds:.1f} s) {res.message}", file=sys.stderr, flush=True)
    doc = write_report(ctx, list(results.values()), time.time() - t_all, command)
    return doc
