"""Bootstrap intervals: how sure a mean is, and how sure a difference between two
candidates on the same items is (paired: both resampled with the same item indices); and
Chernoff bounds on the mean of scores in [0, 1], at one sample size or valid however often a
growing sample is looked at."""

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


def _kl(p: numpy.ndarray, q: numpy.ndarray) -> numpy.ndarray:
    """KL divergence between Bernoulli(p) and Bernoulli(q), for q in (0, 1)."""
    with numpy.errstate(divide="ignore", invalid="ignore"):
        return (numpy.where(p > 0, p * numpy.log(p / q), 0.0)
                + numpy.where(p < 1, (1 - p) * numpy.log((1 - p) / (1 - q)), 0.0))


def upper_bound(mean, n, alpha: float = 0.05, anytime: bool = False):
    """An upper confidence bound on the true mean of `n` scores in [0, 1] whose mean is `mean`:
    the Chernoff bound, the largest q with n * kl(mean, q) <= log(1 / alpha). It holds for any
    scores in [0, 1] (Hoeffding 1963, Theorem 1), not only 0/1 ones, is never looser than
    Hoeffding's mean + sqrt(log(1 / alpha) / 2n), and is much tighter far from 1/2; unlike a
    percentile bootstrap it does not collapse to the mean when every score is 0 or 1.

    With `anytime`, alpha is split as alpha / (n (n + 1)) over every n, which sums to alpha:
    the bound then holds at every n at once, as a check that runs on each new batch of
    evidence and may stop at any of them needs (a fixed-n bound checked again and again stops
    on noise far more often than alpha). Takes scalars or numpy arrays (elementwise)."""
    mean = numpy.clip(numpy.asarray(mean, dtype=float), 0.0, 1.0)
    n = numpy.asarray(n, dtype=float)
    looks = numpy.maximum(n, 1)
    budget = numpy.log(looks * (looks + 1) / alpha if anytime else 1 / alpha) / looks
    low, high = mean.copy(), numpy.ones_like(mean * n)
    for _ in range(40):  # bisection: kl(mean, q) grows with q above the mean; `high` stays on the safe side
        middle = (low + high) / 2
        over = _kl(mean, middle) > budget
        high, low = numpy.where(over, middle, high), numpy.where(over, low, middle)
    upper = numpy.where(n < 1, 1.0, high)
    return float(upper) if upper.ndim == 0 else upper


def lower_bound(mean, n, alpha: float = 0.05, anytime: bool = False):
    """`upper_bound`'s mirror: a lower confidence bound on the true mean."""
    return 1 - upper_bound(1 - numpy.asarray(mean, dtype=float), n, alpha, anytime)
