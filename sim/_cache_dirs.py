"""Where vitaccel caches files: never inside the installed package (docs/architecture.md,
"Where files are written").

numba's on-disk cache of the ``cache=True`` kernels goes to ``$XDG_CACHE_HOME/vitaccel/numba``
(default ``~/.cache/vitaccel/numba``) unless ``NUMBA_CACHE_DIR`` is already set. Imported first by
:mod:`vitaccel.sim`, before any kernel module imports numba.
"""
from __future__ import annotations

import os


def user_cache_dir() -> str:
    """``$XDG_CACHE_HOME/vitaccel`` (default ``~/.cache/vitaccel``)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "vitaccel")


os.environ.setdefault("NUMBA_CACHE_DIR", os.path.join(user_cache_dir(), "numba"))
