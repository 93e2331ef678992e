"""Bootstrap intervals: how sure a mean is, and how sure a difference between two
candidates on the same items is (paired: both resampled with the same item indices); and
a bound that stays valid however often a growing sample is looked at."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy

SAMPLES = 2_000


def interval(values: Sequence[float], seed: int = 0, samples: int = SAMPLES) -> dict[str, float]:
    """`mean`, and the 95% percentile bootstrap interval `low`..`high`."""
    data = numpy.asarray(values, dtype=float)
    if not len(data):
        return {"mean": float("nan"), "low": float("nan"), "high": float("nan"), "n": 0}
    rng = numpy.random.default_rng(seed)
    means = data[rng.integers(0, len(data), size=(samples, len(data)))].mean(axis=1)
    low, high = numpy.percentile(means, [2.5, 97.5])
    return {"mean": float(data.mean()), "low": float(low), "high": float(high), "n": len(data)}


def paired_difference(candidate: Sequence[float], incumbent: Sequence[float], seed: int = 0,
                      samples: int = SAMPLES) -> dict[str, float]:
    """candidate - incumbent on the same items: mean and 95% interval of the difference."""
    if len(candidate) != len(incumbent):
        raise ValueError("paired scores need the same items")
    return interval(numpy.asarray(candidate, dtype=float) - numpy.asarray(incumbent, dtype=float), seed, samples)


def anytime_upper(mean: float, n: int, alpha: float = 0.05) -> float:
    """An upper bound on the true mean of scores in [0, 1] after `n` of them, valid at every
    `n` at once (P(the true mean ever exceeds it) <= alpha): Hoeffding's bound at each n with
    alpha split as alpha / (n (n + 1)), which sums to alpha. A check that runs on each new
    batch of evidence and may stop at any of them needs this; a fixed-n interval checked
    again and again would stop on noise far more often than alpha."""
    if n < 1:
        return 1.0
    return min(1.0, mean + math.sqrt(math.log(n * (n + 1) / alpha) / (2 * n)))
