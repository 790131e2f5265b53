"""Evaluation protocol for accuracy figures: disjoint image splits, seeds, paired statistics.

Used by ``benchmarks/accuracy.py`` (docs/accuracy.md, "Protocol"). All functions are pure and
deterministic (seeded ``numpy`` generators), so a split or an interval is reproducible from the
numbers written to the results file.

* :func:`split_pool_eval`: one fixed split of ``n`` images into a *pool* (calibration and
  selection: every image a calibration seed may draw and every image a preset choice is made on)
  and a disjoint *evaluation* set (reported figures only);
* :func:`calibration_draw`: the calibration images of one seed, drawn from the pool only; the rest
  of the pool is that seed's selection set (:func:`selection_set`);
* :func:`mean_spread`: mean, sample standard deviation, min and max of a headline row's seeds;
* :func:`paired_bootstrap`: confidence interval of the accuracy difference of two models on the same
  images (resampling images, so per-image correlation between the two is kept);
* :func:`mcnemar`: McNemar's exact test on the discordant pairs of two models on the same images.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from vitaccel.sim.errors import UserError

__all__ = [
    "PairedResult",
    "Split",
    "bootstrap_accuracy",
    "calibration_draw",
    "mcnemar",
    "mean_spread",
    "paired_bootstrap",
    "selection_set",
    "split_pool_eval",
]


@dataclass(frozen=True)
class Split:
    """Indices (into the sorted dataset) of the calibration/selection pool and the evaluation set."""

    pool: tuple[int, ...]
    eval: tuple[int, ...]
    seed: int

    def to_dict(self) -> dict:
        return {"pool": list(self.pool), "eval": list(self.eval), "seed": self.seed}


def split_pool_eval(n: int, pool_size: int, seed: int = 0) -> Split:
    """Split ``range(n)`` into a pool of ``pool_size`` indices and the disjoint rest (both sorted).

    Parameters
    ----------
    n : int
        Number of images in the dataset.
    pool_size : int
        Images reserved for calibration and selection (``1 <= pool_size < n``).
    seed : int
        Seed of the permutation (``numpy.random.default_rng``).
    """
    if n < 2:
        raise UserError(f"a pool/evaluation split needs at least 2 images, got {n}")
    if not 1 <= pool_size < n:
        raise UserError(f"pool size must lie in [1, {n - 1}] for {n} images, got {pool_size}")
    perm = np.random.default_rng(seed).permutation(n)
    pool = tuple(sorted(int(i) for i in perm[:pool_size]))
    rest = tuple(sorted(int(i) for i in perm[pool_size:]))
    return Split(pool, rest, int(seed))


def calibration_draw(pool, size: int, seed: int) -> tuple[int, ...]:
    """``size`` indices drawn without replacement from ``pool`` with ``seed`` (sorted)."""
    pool = list(pool)
    if not 1 <= size <= len(pool):
        raise UserError(f"calibration size must lie in [1, {len(pool)}] (the pool), got {size}; "
                        "enlarge --pool-size or lower --calib-size")
    idx = np.random.default_rng(seed).choice(len(pool), size=size, replace=False)
    return tuple(sorted(pool[int(i)] for i in idx))


def selection_set(pool, calib) -> tuple[int, ...]:
    """The pool images a seed did not calibrate on (where preset choices are compared)."""
    used = set(calib)
    return tuple(i for i in pool if i not in used)


def mean_spread(values) -> dict:
    """``{"mean", "std" (sample, ddof 1; 0 for one value), "min", "max", "n"}`` of the seeds' figures."""
    v = np.asarray(list(values), dtype=np.float64)
    if v.size == 0:
        raise ValueError("mean_spread of no values")
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if v.size > 1 else 0.0,
            "min": float(v.min()), "max": float(v.max()), "n": int(v.size)}


def _as_bool(x, name: str) -> np.ndarray:
    a = np.asarray(x)
    if a.ndim != 1 or a.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D sequence of per-image correctness")
    return a.astype(bool)


def bootstrap_accuracy(correct, n_boot: int = 10000, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval (in %) of the top-1 accuracy over images."""
    c = _as_bool(correct, "correct").astype(np.float64)
    rng = np.random.default_rng(seed)
    means = c[rng.integers(0, c.size, size=(n_boot, c.size))].mean(axis=1) * 100
    lo, hi = np.quantile(means, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


@dataclass(frozen=True)
class PairedResult:
    """Paired comparison of model A against model B on the same images (accuracies in %)."""

    n: int
    acc_a: float
    acc_b: float
    diff: float          #: acc_a - acc_b
    ci_low: float        #: paired bootstrap interval of ``diff``
    ci_high: float
    only_a: int          #: images A gets right and B wrong
    only_b: int          #: images B gets right and A wrong
    p_mcnemar: float     #: exact two-sided McNemar p-value

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def paired_bootstrap(correct_a, correct_b, n_boot: int = 10000, level: float = 0.95,
                     seed: int = 0) -> PairedResult:
    """Accuracy difference ``A - B`` with a paired percentile-bootstrap interval and McNemar's test.

    Each bootstrap replicate resamples *images* (the same indices for both models), so the interval
    reflects only the images on which the two models disagree.
    """
    a, b = _as_bool(correct_a, "correct_a"), _as_bool(correct_b, "correct_b")
    if a.size != b.size:
        raise ValueError(f"paired comparison needs the same images: {a.size} != {b.size} results")
    d = a.astype(np.float64) - b.astype(np.float64)
    rng = np.random.default_rng(seed)
    reps = d[rng.integers(0, d.size, size=(n_boot, d.size))].mean(axis=1) * 100
    lo, hi = np.quantile(reps, [(1 - level) / 2, 1 - (1 - level) / 2])
    only_a, only_b = int((a & ~b).sum()), int((b & ~a).sum())
    return PairedResult(int(a.size), float(a.mean() * 100), float(b.mean() * 100), float(d.mean() * 100),
                        float(lo), float(hi), only_a, only_b, mcnemar(only_a, only_b))


def mcnemar(only_a: int, only_b: int) -> float:
    """Exact two-sided McNemar p-value: ``P(X <= min) * 2`` for ``X ~ Binomial(only_a + only_b, 1/2)``.

    ``only_a`` / ``only_b`` are the discordant counts (A right and B wrong, and the reverse); the
    p-value is capped at 1 and is 1 when there are no discordant images.
    """
    if only_a < 0 or only_b < 0 or int(only_a) != only_a or int(only_b) != only_b:
        raise ValueError(f"discordant counts must be non-negative integers, got {only_a}, {only_b}")
    n = int(only_a + only_b)
    if n == 0:
        return 1.0
    k = min(int(only_a), int(only_b))
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2.0 ** n
    return min(1.0, 2.0 * tail)
