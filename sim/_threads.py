"""Thread settings of the simulator's two parallel runtimes (numba kernels and torch / oneDNN).

The batched simulator alternates numba ``prange`` kernels and torch operations (``torch._int_mm``,
softmax, LayerNorm); both run OpenMP thread pools. By default an OpenMP worker *spins* for a while
after each parallel region, so the idle pool of one runtime keeps cores busy while the other
runtime's threads wait for them: on the 2-core machine (shared with other jobs) a batch of 32
DeiT-tiny images took 29 s with spinning pools and 6.5 s with ``OMP_WAIT_POLICY=PASSIVE``
(docs/performance.md). This module, imported first by :mod:`vitaccel.sim` (before numba or torch
start their runtimes), therefore sets ``OMP_WAIT_POLICY=PASSIVE`` unless the user set it.

:func:`configure_threads` sets one thread count for both runtimes (``vitaccel eval --threads``).
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def configure_threads(n: int | None = None) -> int:
    """Use ``n`` threads (default: every CPU) in torch's intra-op pool and in numba's kernels.

    The two pools never run at the same time (the simulator calls them in turn), so the same ``n``
    for both does not oversubscribe the cores. Returns ``n``.
    """
    n = int(n or os.cpu_count() or 1)
    if n < 1:
        raise ValueError("the thread count must be >= 1")
    try:
        import torch

        torch.set_num_threads(n)
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    try:
        import numba

        numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    except ImportError:  # pragma: no cover
        pass
    return n
