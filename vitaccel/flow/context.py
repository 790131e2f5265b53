"""Stage bookkeeping of ``vitaccel flow``: the shared context, stage results and the stage record."""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["StageError", "StageResult", "FlowContext", "Stage", "top1"]


class StageError(RuntimeError):
    """A stage cannot run (missing module, missing API, failed check); the message says why."""


@dataclass
class StageResult:
    """Outcome of one stage."""

    name: str
    status: str = "pending"  # ok | failed | skipped
    seconds: float = 0.0
    message: str = ""

    def to_dict(self) -> dict:
        return {"name": self.name, "status": self.status, "seconds": round(self.seconds, 2),
                "message": self.message}


@dataclass
class FlowContext:
    """Everything the stages share: arguments, output folder, intermediate objects and results."""

    args: argparse.Namespace
    out: Path
    model: object = None
    model_name: str = ""
    data_config: dict = field(default_factory=dict)
    calib_images: object = None
    eval_images: object = None
    eval_labels: object = None
    qvits: dict = field(default_factory=dict)
    programs: dict = field(default_factory=dict)
    fq_pred: dict = field(default_factory=dict)
    estimate: object = None
    results: dict = field(default_factory=dict)
    files: dict = field(default_factory=dict)

    def export_method(self) -> str:
        """The method whose program feeds golden vectors, the RTL check and the estimate
        (``--export-method``; default adfq when it is among ``--methods``, else the first)."""
        if self.args.export_method:
            return self.args.export_method
        return "adfq" if "adfq" in self.args.methods else self.args.methods[0]

    def engine_fields(self, **workload) -> dict:
        """EngineConfig fields of the shared engine flags (``--rows``, ``--cols``, ``--config``, ...),
        with ``workload`` (e.g. the program's largest K and widest codes) filling what the flags leave
        open. The flow's ``--bits`` is the quantization width; the engine takes the program's widths."""
        from vitaccel.sim.cli_args import engine_fields_from_args

        ns = argparse.Namespace(**vars(self.args))
        ns.bits = None
        return engine_fields_from_args(ns, **workload)

    def rel(self, path) -> str:
        """``path`` relative to the output folder (for the report)."""
        try:
            return str(Path(path).resolve().relative_to(self.out.resolve()))
        except ValueError:
            return str(path)


@dataclass(frozen=True)
class Stage:
    name: str
    func: object
    needs: tuple = ()
    rtl: bool = False
    title: str = ""


def top1(pred, labels) -> float:
    import numpy as np

    pred, labels = np.asarray(pred), np.asarray(labels)
    return float(100.0 * (pred == labels).mean()) if len(labels) else float("nan")
