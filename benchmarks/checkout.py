"""Import vitaccel's layers from *this* checkout, and name the commit of the code that was imported.

An editable install maps ``vitaccel.sim`` / ``.hw`` / ``.golden`` / ``.tb`` to the folders of the
checkout it was installed from; ``sys.path.insert(0, ROOT)`` does not change that (the root package
has no ``hw/`` below it, so the installed mapping answers). A benchmark run from a second worktree
with the first checkout's ``.venv`` would then measure the first checkout's code while recording the
second one's commit. :func:`use_this_checkout` loads the layers from ``root`` before anything else
imports them, and :func:`code_commit` names the commit (``+dirty`` with uncommitted changes) of the
checkout the imported ``vitaccel.hw`` actually comes from.
"""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

LAYERS = ("sim", "hw", "golden", "tb")       # in import order: each uses only the ones before it


def use_this_checkout(root: Path) -> None:
    """Make ``vitaccel`` and its layers import from ``root`` (call before importing any of them)."""
    root = Path(root).resolve()
    sys.path.insert(0, str(root))
    import vitaccel
    if Path(vitaccel.__file__).resolve().parent != root / "vitaccel":
        raise SystemExit(f"vitaccel was already imported from {Path(vitaccel.__file__).parent}, not {root}")
    for layer in LAYERS:
        name = f"vitaccel.{layer}"
        have = sys.modules.get(name)
        if have is not None and Path(have.__file__).resolve().parent == root / layer:
            continue
        spec = importlib.util.spec_from_file_location(name, root / layer / "__init__.py",
                                                      submodule_search_locations=[str(root / layer)])
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        setattr(vitaccel, layer, module)


def code_root() -> Path:
    """The checkout the imported ``vitaccel.hw`` comes from."""
    import vitaccel.hw
    return Path(vitaccel.hw.__file__).resolve().parent.parent


def code_commit() -> str:
    """``git rev-parse HEAD`` of :func:`code_root` (``+dirty`` when tracked files have changes)."""
    root = code_root()
    rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                           capture_output=True, text=True).stdout.strip()
    return rev + ("+dirty" if dirty else "")
