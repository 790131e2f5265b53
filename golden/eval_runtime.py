"""CPU budget and the batched integer-simulator loop of ``vitaccel eval`` (docs/performance.md).

* :func:`cpu_budget` splits the machine between DataLoader worker processes (JPEG decoding) and the
  compute threads of one evaluation process. The compute threads are shared by torch's intra-op /
  oneDNN pool and numba's kernels: the simulator calls them in turn, never at the same time, so one
  number sets both (:func:`vitaccel.sim._threads.configure_threads`), and idle OpenMP threads sleep
  instead of spinning (``OMP_WAIT_POLICY=PASSIVE``, set by :mod:`vitaccel.sim`). Defaults: one
  worker per 4 cores (at least 1), and every other core computes (at least 1 thread), so
  ``threads + workers`` equals the number of cores.
* :func:`sim_predict` runs the integer simulator batch by batch (:meth:`ProgramRunner.run_batch`);
  with a fake-quant model it also runs that on the same batches and reports the prediction
  agreement and how many images have bit-identical logits (``vitaccel eval --backend sim
  --agreement``; off by default, since it doubles the work).
"""
from __future__ import annotations

import os
import resource

import torch

from vitaccel.sim._threads import configure_threads
from vitaccel.sim.errors import UserError


def default_workers(cores: int) -> int:
    """DataLoader workers for ``cores`` CPUs: one per 4 cores, at least 1."""
    return max(1, cores // 4)


def cpu_budget(threads: int | None, workers: int | None, cores: int | None = None) -> tuple[int, int]:
    """``(threads, workers)`` from the command line (None = default) for a machine of ``cores`` CPUs;
    applies the thread count to torch and numba. Bad values raise :class:`UserError`."""
    cores = cores or os.cpu_count() or 1
    if threads is not None and threads < 1:
        raise UserError(f"--threads must be >= 1, got {threads}")
    if workers is not None and workers < 0:
        raise UserError(f"--workers must be >= 0, got {workers}")
    workers = default_workers(cores) if workers is None else workers
    threads = max(1, cores - workers) if threads is None else threads
    configure_threads(threads)
    return threads, workers


def cpu_seconds() -> float:
    """CPU time (user + system) of this process and its finished children (DataLoader workers), s."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, MiB (Linux ``ru_maxrss`` is in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def sim_predict(runner, loader, fq_model=None, progress: bool = True) -> dict:
    """Top-5 predictions of the integer simulator over ``loader`` (and, with ``fq_model``, agreement).

    Returns ``{"top5", "labels"}`` and, with a fake-quant model, ``"fq_pred"`` (its top-1) and
    ``"identical"`` (images whose simulator and fake-quant logits are bit-identical).
    """
    from tqdm.auto import tqdm

    tops, labs, fq, same = [], [], [], 0
    for x, y in tqdm(loader, desc="int-sim", leave=False, disable=not progress):
        logits = runner.run_batch(x)
        tops.append(logits.topk(min(5, logits.shape[-1]), dim=-1).indices)
        labs.append(y)
        if fq_model is not None:
            with torch.no_grad():
                ref_logits = fq_model(x)
            fq.append(ref_logits.argmax(-1))
            same += sum(bool(torch.equal(a, b)) for a, b in zip(logits, ref_logits))
    if not tops:
        raise UserError("no image could be evaluated (every image was unreadable)")
    out = {"top5": torch.cat(tops), "labels": torch.cat(labs)}
    if fq_model is not None:
        out.update(fq_pred=torch.cat(fq), identical=same)
    return out
