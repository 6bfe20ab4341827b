"""The statistics gradlab reports beside its comparisons: paired t intervals over shared seeds and
Wilson intervals of success rates. Every interval is a 95% one."""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import pandas as pd

LEVEL = 0.95  # every interval is a 95% interval; a test "tells" at p < 1 - LEVEL


class Difference(NamedTuple):
    """The paired difference b - a of a figure over the seeds both arms have."""

    n: int
    mean: float
    low: float
    high: float
    p: float
    sd: float

    def __str__(self) -> str:
        return (
            f"{self.mean:+.4g} [{self.low:+.4g}, {self.high:+.4g}] (paired t, {self.n} seeds, p={self.p:.2g})"
        )


def difference(a: pd.Series, b: pd.Series) -> Difference:
    """Paired t interval of mean(b - a) over the seeds in both (by index); non-finite pairs are dropped."""
    from scipy import stats

    d = (b - a).dropna()
    d = d[np.isfinite(d)]
    n = len(d)
    if n < 2:
        return Difference(n, float(d.mean()) if n else math.nan, -math.inf, math.inf, math.nan, math.nan)
    mean, sd = float(d.mean()), float(d.std(ddof=1))
    if sd == 0:  # every pair differs by the same amount (or not at all): no sampling noise to allow for
        return Difference(n, mean, mean, mean, 0.0 if mean else 1.0, 0.0)
    half = stats.t.ppf((1 + LEVEL) / 2, n - 1) * sd / math.sqrt(n)
    p = float(2 * stats.t.sf(abs(mean) / (sd / math.sqrt(n)), n - 1))
    return Difference(n, mean, mean - half, mean + half, p, sd)


def wilson_interval(k: int, n: int) -> tuple[float, float]:
    """The Wilson 95% interval of a success rate k/n (nan, nan without trials)."""
    from scipy import stats

    if not n:
        return math.nan, math.nan
    ci = stats.binomtest(k, n).proportion_ci(LEVEL, method="wilson")
    return float(ci.low), float(ci.high)


def wilson(k: int, n: int) -> str:
    """`[low, high]`: the Wilson 95% interval of a success rate k/n."""
    low, high = wilson_interval(k, n)
    return "[n/a]" if math.isnan(low) else f"[{low:.2f}, {high:.2f}]"
