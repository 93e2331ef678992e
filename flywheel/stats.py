"""Bootstrap intervals: how sure a mean is, and how sure a difference between two
candidates on the same items is (paired: both resampled with the same item indices); and
a bound that stays valid however often a growing sample is looked at."""

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


def anytime_upper(mean, n, alpha: float = 0.05):
    """An upper bound on the true mean of scores in [0, 1] after `n` of them, valid at every
    `n` at once (P(the true mean ever exceeds it) <= alpha). At each n it is the Chernoff
    bound: the largest q with n * kl(mean, q) <= log(1 / alpha_n), alpha split as
    alpha_n = alpha / (n (n + 1)), which sums to alpha. It holds for any scores in [0, 1]
    (Hoeffding 1963, Theorem 1), not only 0/1 ones, and is never looser than Hoeffding's
    mean + sqrt(log(1 / alpha_n) / 2n); far from 1/2 it is much tighter. A check that runs on
    each new batch of evidence and may stop at any of them needs this; a fixed-n interval
    checked again and again would stop on noise far more often than alpha. Takes scalars or
    numpy arrays (elementwise)."""
    mean = numpy.clip(numpy.asarray(mean, dtype=float), 0.0, 1.0)
    n = numpy.asarray(n, dtype=float)
    looks = numpy.maximum(n, 1)
    budget = numpy.log(looks * (looks + 1) / alpha) / looks
    low, high = mean.copy(), numpy.ones_like(mean * n)
    for _ in range(40):  # bisection: kl(mean, q) grows with q above the mean; `high` stays on the safe side
        middle = (low + high) / 2
        over = _kl(mean, middle) > budget
        high, low = numpy.where(over, middle, high), numpy.where(over, low, middle)
    upper = numpy.where(n < 1, 1.0, high)
    return float(upper) if upper.ndim == 0 else upper
