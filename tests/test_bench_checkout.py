"""benchmarks/checkout.py: a benchmark run from another checkout imports that checkout's layers (not the
editable install's) and records the commit of the code it imported."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


def _fake_checkout(root: Path) -> None:
    """A checkout with the project's layout whose layers say where they come from."""
    (root / "vitaccel").mkdir(parents=True)
    (root / "vitaccel" / "__init__.py").write_text("")
    for layer in ("sim", "hw", "golden", "tb"):
        (root / layer).mkdir()
        (root / layer / "__init__.py").write_text(f"WHERE = {str(root)!r}\n")
    (root / "hw" / "unit.py").write_text("from vitaccel.sim import WHERE as SIM_WHERE\n")
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    subprocess.run(["git", "add", "-A"], cwd=root, check=True)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x"], cwd=root, check=True)


def _run(code: str) -> list[str]:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return out.split()


def test_layers_and_commit_come_from_the_given_checkout(tmp_path):
    root = tmp_path / "wt"
    _fake_checkout(root)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True).stdout.strip()
    got = _run(f"import sys; sys.path.insert(0, {str(BENCH)!r}); from pathlib import Path\n"
               f"from checkout import use_this_checkout, code_root, code_commit\n"
               f"use_this_checkout(Path({str(root)!r}))\n"
               "import vitaccel.hw, vitaccel.hw.unit, vitaccel.golden, vitaccel.tb\n"
               "print(vitaccel.hw.WHERE, vitaccel.hw.unit.SIM_WHERE, vitaccel.golden.WHERE, vitaccel.tb.WHERE)\n"
               "print(code_root(), code_commit())")
    assert got[:4] == [str(root)] * 4
    assert got[4:] == [str(root.resolve()), head]
    (root / "hw" / "__init__.py").write_text("WHERE = 'changed'\n")       # uncommitted change: +dirty
    got = _run(f"import sys; sys.path.insert(0, {str(BENCH)!r}); from pathlib import Path\n"
               f"from checkout import use_this_checkout, code_commit\n"
               f"use_this_checkout(Path({str(root)!r})); print(code_commit())")
    assert got == [head + "+dirty"]


def test_the_installed_checkout_is_left_as_it_is():
    root = BENCH.parent
    got = _run(f"import sys; sys.path.insert(0, {str(BENCH)!r})\n"
               f"from checkout import use_this_checkout, code_root\n"
               f"from pathlib import Path; use_this_checkout(Path({str(root)!r}))\n"
               "import vitaccel.hw.synth; print(code_root(), Path(vitaccel.hw.synth.__file__).parent.parent)")
    assert got == [str(root.resolve())] * 2
