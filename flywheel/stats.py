"""Bootstrap intervals: how sure a mean is, and how sure a difference between two
candidates on the same items is (paired: both resampled with the same item indices)."""

from __future__ import annotations

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
