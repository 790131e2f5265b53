"""The vitaccel command line front door."""
import subprocess
import sys

from vitaccel.cli import main


def test_version(capsys):
    try:
        main(["--version"])
    except SystemExit as exc:
        assert exc.code == 0
    assert "vitaccel 0.1.0" in capsys.readouterr().out


def test_spec_lists_every_format(capsys):
    assert main(["spec"]) == 0
    out = capsys.readouterr().out
    for word in ("uniform", "log2", "shiftlog2", "three_region", "sym", "fixed32", "round_shift"):
        assert word in out


def test_console_script_runs():
    res = subprocess.run([sys.executable, "-m", "vitaccel.cli", "spec"], capture_output=True, text=True)
    assert res.returncode == 0 and "datapath spec v2" in res.stdout
