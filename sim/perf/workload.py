"""Typed entry points of the estimator: a whole model (traced timm shapes) or an exported program.

``vitaccel estimate`` and ``vitaccel flow`` both call these (no argv in between). Errors a user can
cause (unknown model, bad widths, a program that does not load, SRAM too small, impossible engine)
raise :class:`vitaccel.sim.errors.UserError` with a message that names the problem.
"""
from __future__ import annotations

import sys

from vitaccel.sim.cli_args import parse_bits
from vitaccel.sim.errors import UserError

from .estimate import Hardware, ModelEstimate, estimate, with_synthesis
from .shapes import UnknownModelError, suggest_models, trace_gemms, with_outliers
from .traffic import SramTooSmall

__all__ = ["estimate_model", "estimate_program", "run_estimate_checked"]


def run_estimate_checked(gemms, hw: Hardware, *, freq_mhz: float | None = None, device: str | None = None,
                         **kw) -> ModelEstimate:
    """:func:`sim.perf.estimate.estimate` plus the clock and resources of :func:`with_synthesis`
    (``freq_mhz`` given, else the measured Fmax of the configuration, else an assumed clock, said so;
    resources checked against ``device``), with errors turned into :class:`UserError`."""
    from .resources import DEFAULT_DEVICE, load_table

    device = device or DEFAULT_DEVICE
    if device not in load_table().devices:
        raise UserError(f"unknown --device {device!r}; known: {', '.join(sorted(load_table().devices))}")
    try:
        hw.validate()
        est = estimate(gemms, hw, progress=len(gemms) > 400 and sys.stderr.isatty(), **kw)
    except SramTooSmall as exc:
        raise UserError(f"SRAM too small for the minimum tile: {exc}") from None
    except ValueError as exc:  # sim.engine_config.ConfigError and Hardware.validate
        raise UserError(str(exc)) from None
    return with_synthesis(est, freq_mhz=freq_mhz, device=device)


def estimate_program(program: str, hw: Hardware, *, batch: int = 1, freq_mhz: float | None = None,
                     device: str | None = None) -> ModelEstimate:
    """Estimate an exported integer program (its per-layer shapes, widths and measured outliers per tile).

    Parameters
    ----------
    program : str
        Program directory written by ``vitaccel calibrate`` (or its ``manifest.json``).
    hw : Hardware
        The accelerator.
    batch : int
        Images per inference.
    freq_mhz, device : optional
        Clock (default: measured Fmax, else assumed) and FPGA of the resource check (:func:`run_estimate_checked`).
    """
    from .program import ProgramError, load_program_gemms

    _check_batch(batch)
    try:
        gemms, meta = load_program_gemms(program, batch=batch)
    except ProgramError as exc:
        raise UserError(str(exc)) from None
    est = run_estimate_checked(gemms, hw, model=meta.get("model", program), batch=batch,
                               bits=meta.get("bits", "program"), source="program", freq_mhz=freq_mhz,
                               device=device)
    est.notes.extend(meta.get("notes", []))
    return est


def estimate_model(model: str, hw: Hardware, *, bits: str = "w8a8", batch: int = 1, edge_bits: int | None = 8,
                   img_size: int | None = None, outliers_per_tile: int = 0, freq_mhz: float | None = None,
                   device: str | None = None) -> ModelEstimate:
    """Estimate a timm model from its traced GEMM shapes (no weights).

    Parameters
    ----------
    model : str
        timm model name.
    bits : str
        ``wXaY`` code widths of the linear and attention layers.
    edge_bits : int or None
        Width of the patch embedding and the head (``None``: ``bits``).
    img_size : int, optional
        Input resolution (default: the model's).
    outliers_per_tile : int
        Assumed outliers per row tile on the q/k/v/fc1 inputs.
    freq_mhz, device : optional
        As for :func:`estimate_program`.
    """
    parse_bits(bits)
    _check_batch(batch)
    if outliers_per_tile < 0:
        raise UserError(f"--outliers-per-tile must be >= 0, got {outliers_per_tile}")
    try:
        gemms = trace_gemms(model, batch, bits, edge_bits=edge_bits, img_size=img_size)
    except UnknownModelError:
        close = suggest_models(model)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise UserError(f"unknown timm model {model!r}{hint}") from None
    if not any(g.kind == "qk" for g in gemms):
        raise UserError(f"{model} has no attention layers: estimate models vision transformers (timm ViT, DeiT, "
                        "Swin), the networks vitaccel quantizes")
    gemms = with_outliers(gemms, outliers_per_tile)
    est = run_estimate_checked(gemms, hw, model=model, batch=batch, bits=bits.lower(), source="timm",
                               freq_mhz=freq_mhz, device=device)
    if edge_bits is not None:
        est.notes.append(f"patch embedding and head at {edge_bits} bits (--edge-bits)")
    return est


def _check_batch(batch: int) -> None:
    if batch < 1:
        raise UserError(f"--batch-size must be >= 1, got {batch}")
