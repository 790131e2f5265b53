"""Output paths: checked before any work starts, written atomically, never mixed with old files.

Every ``vitaccel`` command that writes a directory (``calibrate -o``, ``export-golden -o``,
``hw generate -o``, ``hw synth -o``, ``flow -o``) and every command that writes a file (``--json``,
``--csv``, ``--plot``) goes through this module:

* :func:`check_output_dir` / :func:`check_output_file` run *before* the slow part of a command and
  raise :class:`OutputError` (a :class:`~vitaccel.sim.errors.UserError`) for a path that exists as
  the wrong kind (a file where a directory goes, or the reverse), a parent that is not a writable
  directory, a path inside a vitaccel program or golden-vector folder (writing there would mix
  foreign files into it), and an existing non-empty output directory without ``--force``.
* :func:`atomic_output_dir` yields a temporary sibling directory (``.NAME.partial-XXXX`` next to
  ``NAME``); only when the block completes is it renamed to ``NAME`` (an existing ``NAME`` is
  replaced only with ``force``, by an atomic exchange where the OS offers one). An exception or
  Ctrl-C inside the block removes the temporary directory and leaves ``NAME`` untouched, so a
  reader finds either the complete old output or the complete new one, never a mixture.
* :func:`atomic_output_file` does the same for one file (temporary sibling + ``os.replace``).

This module sits in ``vitaccel.sim`` (the ground floor) so that every layer can use it.
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import json
import os
import shutil
import tempfile
from pathlib import Path

from .errors import UserError

__all__ = ["OutputError", "vitaccel_folder", "enclosing_vitaccel_folder", "check_output_dir",
           "check_output_file", "atomic_output_dir", "atomic_output_file", "write_text_atomic",
           "PARTIAL_TAG"]

#: Marker in the names of temporary output siblings (``.NAME.partial-XXXX``).
PARTIAL_TAG = ".partial-"

#: Files that identify a folder written by vitaccel, and the ``format`` each one declares.
_MARKERS = (("manifest.json", "vitaccel-program", "program"),
            ("golden.json", "vitaccel-golden", "golden-vector folder"))


class OutputError(UserError):
    """An output path that cannot or must not be written (checked before any work starts)."""


def vitaccel_folder(path) -> str | None:
    """``"program"`` / ``"golden-vector folder"`` if ``path`` is a folder written by vitaccel, else ``None``.

    A folder counts when it holds ``manifest.json`` / ``golden.json`` whose ``format`` field names
    a vitaccel format (a damaged marker file still counts: the folder is somebody's output).
    """
    p = Path(path)
    for fname, fmt, what in _MARKERS:
        f = p / fname
        if not f.is_file():
            continue
        try:
            with open(f, encoding="utf-8") as fh:
                doc = json.load(fh)
        except (OSError, ValueError):
            return what
        if isinstance(doc, dict) and doc.get("format") == fmt:
            return what
    return None


def enclosing_vitaccel_folder(path) -> tuple[Path, str] | None:
    """The nearest existing ancestor of ``path`` (``path`` included) written by vitaccel, if any."""
    p = Path(os.path.abspath(path))
    for anc in (p, *p.parents):
        if anc.is_dir():
            what = vitaccel_folder(anc)
            if what:
                return anc, what
    return None


def _check_writable_parent(p: Path, what: str) -> None:
    anc = Path(os.path.abspath(p)).parent
    while not anc.exists():
        if anc.is_symlink():  # dangling link
            raise OutputError(f"{what} {p}: {anc} is a broken symbolic link")
        anc = anc.parent
    if not anc.is_dir():
        raise OutputError(f"{what} {p}: {anc} is a file, not a directory")
    if not os.access(anc, os.W_OK | os.X_OK):
        raise OutputError(f"{what} {p}: cannot write to {anc} (permission denied); choose a writable location")


def _is_inside(p: Path, root: Path) -> bool:
    a, r = Path(os.path.abspath(p)), Path(os.path.abspath(root))
    return a == r or r in a.parents


def check_output_dir(path, *, force: bool = False, what: str = "output directory", flag: str = "--force") -> Path:
    """Check an output directory before any work starts; return it as a :class:`Path`.

    Raises
    ------
    OutputError
        ``path`` exists and is not a directory; it is a non-empty directory and ``force`` is false;
        it lies inside another vitaccel program / golden-vector folder; its parent is not a
        writable directory.
    """
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise OutputError(f"{what} {p} exists and is a file, not a directory; give a directory path")
    if p.is_dir() and any(p.iterdir()) and not force:
        kind = vitaccel_folder(p)
        held = f" (it holds a vitaccel {kind})" if kind else ""
        raise OutputError(f"{what} {p} already exists and is not empty{held}; pass {flag} to replace it "
                          f"(the old content is replaced only once the new output is complete), or choose "
                          f"another path")
    inside = enclosing_vitaccel_folder(p.parent)
    if inside:
        raise OutputError(f"{what} {p} is inside the vitaccel {inside[1]} {inside[0]}; writing there would mix "
                          f"files into it: choose a path outside it")
    _check_writable_parent(p, what)
    return p


def check_output_file(path, *, what: str = "output file", not_inside=()) -> Path | None:
    """Check an output file path (``None`` passes) before any work starts.

    ``not_inside`` lists output directories of the same command that the file must not be written
    into (they are replaced as a whole). Raises :class:`OutputError` for a directory at ``path``, a
    parent that is not a writable directory, or a path inside a vitaccel program / golden folder.
    """
    if path is None:
        return None
    p = Path(path)
    if str(path) == "" or p.is_dir():
        raise OutputError(f"{what} {p} is a directory; give a file name")
    for d in not_inside:
        if d is not None and _is_inside(p, Path(d)):
            raise OutputError(f"{what} {p} is inside the output directory {d} of the same command; "
                              f"write it outside that directory")
    inside = enclosing_vitaccel_folder(p.parent)
    if inside:
        raise OutputError(f"{what} {p} is inside the vitaccel {inside[1]} {inside[0]}; writing there would mix "
                          f"files into it: choose a path outside it")
    if p.exists() and not os.access(p, os.W_OK):
        raise OutputError(f"{what} {p} exists and is not writable (permission denied)")
    _check_writable_parent(p, what)
    return p


def _umask() -> int:
    m = os.umask(0o022)
    os.umask(m)
    return m


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux ``renameat2(RENAME_EXCHANGE)``); ``False`` if unsupported."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    rc = fn(_AT_FDCWD, os.fsencode(str(a)), _AT_FDCWD, os.fsencode(str(b)), _RENAME_EXCHANGE)
    return rc == 0


def _commit_dir(tmp: Path, dest: Path, force: bool) -> None:
    """Move the complete ``tmp`` to ``dest`` (replacing ``dest`` only with ``force``)."""
    if dest.is_dir() and any(dest.iterdir()):
        if not force:
            raise OutputError(f"output directory {dest} appeared while this command ran; the new output is "
                              f"kept in {tmp}")
        if _exchange(tmp, dest):
            shutil.rmtree(tmp, ignore_errors=True)  # tmp now holds the old content
            return
        old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old-", dir=dest.parent))
        os.rename(dest, old / dest.name)
        os.rename(tmp, dest)
        shutil.rmtree(old, ignore_errors=True)
        return
    if dest.is_dir():
        dest.rmdir()  # empty: a rename onto it would work on Linux, not everywhere
    os.rename(tmp, dest)


@contextlib.contextmanager
def atomic_output_dir(path, *, force: bool = False, what: str = "output directory"):
    """Yield a temporary sibling directory of ``path``; rename it to ``path`` when the block completes.

    On any exception (including ``KeyboardInterrupt``) the temporary directory is removed and
    ``path`` keeps whatever it held before. An :class:`OSError` while creating or committing the
    directory becomes an :class:`OutputError` naming the path.
    """
    dest = Path(os.path.abspath(path))
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}{PARTIAL_TAG}", dir=dest.parent))
        os.chmod(tmp, 0o777 & ~_umask())
    except OSError as exc:
        raise OutputError(f"cannot create {what} {path}: {exc.strerror or exc}") from None
    try:
        yield tmp
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if exc.filename is not None and _is_inside(Path(os.fsdecode(exc.filename)), tmp):
            raise OutputError(f"cannot write {what} {path}: {exc.strerror or exc}") from None
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        _commit_dir(tmp, dest, force)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise OutputError(f"cannot write {what} {path}: {exc.strerror or exc}") from None


@contextlib.contextmanager
def atomic_output_file(path, *, what: str = "output file"):
    """Yield a temporary sibling path of ``path`` (same suffix); ``os.replace`` it onto ``path`` when
    the block completes; remove it on any exception. ``OSError`` becomes :class:`OutputError`."""
    dest = Path(os.path.abspath(path))
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{dest.stem}{PARTIAL_TAG}", suffix=dest.suffix, dir=dest.parent)
        os.close(fd)
        os.chmod(name, 0o666 & ~_umask())
    except OSError as exc:
        raise OutputError(f"cannot write {what} {path}: {exc.strerror or exc}") from None
    tmp = Path(name)
    try:
        yield tmp
        os.replace(tmp, dest)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if exc.filename is None or os.fsdecode(exc.filename) in (str(tmp), str(dest)):
            raise OutputError(f"cannot write {what} {path}: {exc.strerror or exc}") from None
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(path, text: str, *, what: str = "output file") -> None:
    """Write ``text`` to ``path`` atomically (:func:`atomic_output_file`)."""
    with atomic_output_file(path, what=what) as tmp:
        tmp.write_text(text, encoding="utf-8")
