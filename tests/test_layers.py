"""The package map and the layer rule (docs/architecture.md, "Layers"), checked on the source (AST).

sim is the ground floor; hw and golden use sim; tb uses sim, hw and golden; the root package
``vitaccel`` (CLI, flow) uses all. No module imports upward, and nothing imports the folders by
their bare names (``import sim``): they exist only as ``vitaccel.sim`` etc.
"""
from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
#: folder -> layer (import name under vitaccel)
FOLDERS = {"sim": "sim", "hw": "hw", "golden": "golden", "tb": "tb", "vitaccel": "root"}
#: layer -> layers it may import
ALLOWED = {
    "sim": {"sim"},
    "hw": {"sim", "hw"},
    "golden": {"sim", "golden"},
    "tb": {"sim", "hw", "golden", "tb"},
    "root": {"sim", "hw", "golden", "tb", "root"},
}
BARE = {"sim", "hw", "golden", "tb"}


def _module_name(path: Path) -> tuple[str, str]:
    """(layer, dotted module name under ``vitaccel``) of a source file."""
    rel = path.relative_to(ROOT)
    folder = rel.parts[0]
    parts = list(rel.with_suffix("").parts)
    if folder != "vitaccel":
        parts = ["vitaccel"] + parts
    return FOLDERS[folder], ".".join(parts)


def _layer_of(module: str) -> str | None:
    """The layer of an absolute module name, ``None`` for a third-party module."""
    parts = module.split(".")
    if parts[0] != "vitaccel":
        return None
    if len(parts) > 1 and parts[1] in BARE:
        return parts[1]
    return "root"


def _imports(path: Path):
    """``(lineno, absolute module name, bare_folder_import)`` of every import in ``path``."""
    _, mod = _module_name(path)
    package = mod.removesuffix(".__init__") if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
    yield from _imports_of(path.read_text(), package)


def _imports_of(text: str, package: str):
    """Imports of source ``text`` of a module in ``package`` (relative imports resolved)."""
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, alias.name.split(".")[0] in BARE
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
                yield node.lineno, target, False
            else:
                yield node.lineno, node.module or "", (node.module or "").split(".")[0] in BARE


def _sources():
    for folder in FOLDERS:
        yield from sorted((ROOT / folder).rglob("*.py"))


def test_no_upward_or_bare_imports():
    bad = []
    for path in _sources():
        layer, _ = _module_name(path)
        for line, target, bare in _imports(path):
            where = f"{path.relative_to(ROOT)}:{line}"
            if bare:
                bad.append(f"{where}: bare import of {target!r} (use vitaccel.{target})")
                continue
            tl = _layer_of(target)
            if tl is not None and tl not in ALLOWED[layer]:
                bad.append(f"{where}: {layer} imports {target} ({tl} layer)")
    assert not bad, "layer rule broken:\n" + "\n".join(bad)


def test_scanner_sees_upward_imports():
    """The scanner itself: a relative and an absolute upward import are both recognised."""
    src = "from ...hw import engine\nfrom vitaccel.golden import qmodel\nimport sim.reference\nimport numpy\n"
    found = [(t, bare) for _, t, bare in _imports_of(src, "vitaccel.sim.perf")]
    assert found == [("vitaccel.hw", False), ("vitaccel.golden", False), ("sim.reference", True),
                     ("numpy", False)]
    assert [_layer_of(t) for t, _ in found] == ["hw", "golden", None, None]


def test_package_list_names_every_folder():
    """pyproject's explicit package list and package-dir map cover every package folder (setuptools
    auto-discovery does not follow a package-dir mapping, so a missed folder would not install)."""
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    want = set()
    for folder in FOLDERS:
        for init in (ROOT / folder).rglob("__init__.py"):
            _, mod = _module_name(init)
            want.add(mod.removesuffix(".__init__"))
    assert set(cfg["packages"]) == want
    assert cfg["package-dir"] == {"vitaccel": "vitaccel", **{f"vitaccel.{f}": f for f in BARE}}


@pytest.mark.parametrize("limit", [120])
def test_no_long_library_functions(limit):
    """No library function is longer than ~120 lines unless a reason is written next to it
    (a comment containing ``long-function:`` within the three lines above its ``def``)."""
    long = []
    for path in _sources():
        text = path.read_text()
        lines = text.splitlines()
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                first = min([node.lineno] + [d.lineno for d in node.decorator_list])
                above = "\n".join(lines[max(0, first - 4):first - 1])
                if n > limit and "long-function:" not in above:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({n} lines)")
    assert not long, "functions over the limit without a reason:\n" + "\n".join(long)
