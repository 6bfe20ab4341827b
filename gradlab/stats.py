"""The statistics gradlab reports beside its comparisons: paired t intervals over shared seeds,
equivalence within a declared margin (paired TOST), a group-sequential paired design (seeds added
in batches until the comparison is decided, under an alpha-spending boundary) and Wilson intervals
of success rates. Every interval is a 95% one."""

from __future__ import annotations

import functools
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


def paired(a: pd.Series, b: pd.Series) -> pd.Series:
    """b - a over the seeds both have (by index), non-finite pairs dropped."""
    d = (b - a).dropna()
    return d[np.isfinite(d)]


def difference(a: pd.Series, b: pd.Series) -> Difference:
    """Paired t interval of mean(b - a) over the seeds in both (by index); non-finite pairs are dropped."""
    from scipy import stats

    d = paired(a, b)
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


class Equivalence(NamedTuple):
    """Paired TOST of b - a against the margin (-margin, margin): equivalent when both one-sided
    t-tests reject at 5%, i.e. when the 90% interval [low, high] lies inside the margin."""

    n: int
    mean: float
    low: float
    high: float
    p: float  # the larger of the two one-sided p-values
    margin: float

    @property
    def equivalent(self) -> bool:
        return self.p < 1 - LEVEL

    def __str__(self) -> str:
        said = "equivalent" if self.equivalent else "not shown equivalent"
        return (
            f"{self.mean:+.4g} [{self.low:+.4g}, {self.high:+.4g}] within ±{self.margin:.4g}: {said} "
            f"(paired TOST, {self.n} seeds, p={self.p:.2g})"
        )


def equivalence(a: pd.Series, b: pd.Series, margin: float) -> Equivalence:
    """Paired two one-sided tests (Schuirmann 1987) of mean(b - a) within (-margin, margin), margin > 0."""
    from scipy import stats

    d, alpha = paired(a, b), 1 - LEVEL
    n = len(d)
    if n < 2:
        return Equivalence(n, float(d.mean()) if n else math.nan, -math.inf, math.inf, 1.0, margin)
    mean, se = float(d.mean()), float(d.std(ddof=1)) / math.sqrt(n)
    if se == 0:
        return Equivalence(n, mean, mean, mean, 0.0 if abs(mean) < margin else 1.0, margin)
    p = max(stats.t.sf((mean + margin) / se, n - 1), stats.t.cdf((mean - margin) / se, n - 1))
    half = stats.t.isf(alpha, n - 1) * se
    return Equivalence(n, mean, mean - half, mean + half, float(p), margin)


SPENDING = ("obrien_fleming", "pocock")  # Lan & DeMets 1983's two alpha-spending functions


def spent(kind: str, fraction: float, alpha: float) -> float:
    """The type I error spent by information fraction t (0 < t <= 1): O'Brien-Fleming-type
    2 - 2 Phi(z_{1-alpha/2} / sqrt(t)), or Pocock-type alpha ln(1 + (e - 1) t)."""
    from scipy import stats

    if kind == "obrien_fleming":
        return float(2 * stats.norm.sf(stats.norm.isf(alpha / 2) / math.sqrt(fraction)))
    if kind == "pocock":
        return alpha * math.log(1 + (math.e - 1) * fraction)
    raise ValueError(f"spending={kind}: choose from {', '.join(SPENDING)}")


def boundaries(fractions: list[float], alpha: float = 1 - LEVEL, kind: str = "obrien_fleming") -> list:
    """Two-sided z boundaries c_k at the looks' information fractions (increasing, the last 1): under
    no difference, the chance that |Z| first reaches c_k at look k is spent(t_k) - spent(t_{k-1}).

    Computed by numerical integration of the score's density over the looks (Armitage, McPherson &
    Rowe 1969; Jennison & Turnbull 2000, ch. 19), the information at look k being t_k."""
    from scipy import optimize, stats

    cs, grid, density, before, spent_before = [], None, None, 0.0, 0.0
    for t in fractions:
        target = spent(kind, t, alpha) - spent_before
        if grid is None:  # the first look: Z is standard normal
            c = float(stats.norm.isf(target / 2))
        else:  # the paths still going on (weighted, on the grid): their score moves by N(0, t - before)
            weights, sd = density * _trapezoid(grid), math.sqrt(t - before)
            paths = (grid, weights, sd, math.sqrt(t), target)
            c = float(optimize.brentq(_beyond, 0.1, 40.0, args=paths, xtol=1e-10))
        new = np.linspace(-c * math.sqrt(t), c * math.sqrt(t), 801)
        if grid is None:
            density = stats.norm.pdf(new, scale=math.sqrt(t))
        else:
            density = (weights[None, :] * stats.norm.pdf((new[:, None] - grid[None, :]) / sd) / sd).sum(1)
        grid, before, spent_before = new, t, spent_before + target
        cs.append(c)
    return cs


def _beyond(
    c: float, grid: np.ndarray, weights: np.ndarray, sd: float, root_t: float, target: float
) -> float:
    """The chance that a path still going on ends this look beyond +-c (its z), less the target."""
    from scipy import stats

    edge = c * root_t
    return float(weights @ (stats.norm.cdf((-edge - grid) / sd) + stats.norm.sf((edge - grid) / sd))) - target


@functools.cache
def _boundaries(fractions: tuple, alpha: float, kind: str) -> tuple:
    return tuple(boundaries(list(fractions), alpha, kind))


def _trapezoid(grid: np.ndarray) -> np.ndarray:
    w = np.full(len(grid), grid[1] - grid[0])
    w[[0, -1]] /= 2
    return w


class Look(NamedTuple):
    """One look of a sequential design at the seeds so far: the repeated 95% interval of mean(b - a)
    (its level at this look set by the boundary) and what it decides."""

    n: int
    mean: float
    low: float
    high: float
    bound: float  # this look's z boundary
    decision: str  # different | equivalent | continue | undecided (at the cap)

    def __str__(self) -> str:
        return (
            f"{self.mean:+.4g} [{self.low:+.4g}, {self.high:+.4g}] (repeated interval at {self.n} seeds, "
            f"boundary z={self.bound:.3f}): {self.decision}"
        )


class Sequential(NamedTuple):
    """A group-sequential paired design: seeds in batches of `batch` (>= 3), up to `cap`, a look after
    each batch. The boundary comes from an alpha-spending function over the fraction of the cap's
    seeds (`boundaries`); at each look the paired t interval at the boundary's nominal level is a
    repeated confidence interval (Jennison & Turnbull 1989): all looks' intervals cover the true mean
    together with probability about 95%. The design stops when the interval excludes 0 (different)
    or lies inside (-margin, margin) (equivalent; only with a margin), and otherwise at the cap."""

    batch: int
    cap: int
    spending: str = "obrien_fleming"

    def looks(self) -> list[int]:
        if self.batch < 3 or self.cap < self.batch:
            raise ValueError(
                f"batch={self.batch}, cap={self.cap}: a batch of 3 seeds or more, a cap >= the batch"
            )
        return list(range(self.batch, self.cap, self.batch)) + [self.cap]

    def bounds(self) -> tuple:
        return _boundaries(tuple(n / self.cap for n in self.looks()), 1 - LEVEL, self.spending)

    def bound(self, n: int) -> float:
        """The z boundary of the look at n seeds."""
        return self.bounds()[self.looks().index(n)]

    def _decide(self, differences: np.ndarray, margin: float | None) -> tuple:
        """Each row's (mean, low, high, decision) at the look at its n seeds (its columns)."""
        from scipy import stats

        n = differences.shape[-1]
        mean = differences.mean(-1)
        half = stats.t.isf(stats.norm.sf(self.bound(n)), n - 1) * differences.std(-1, ddof=1) / math.sqrt(n)
        low, high = mean - half, mean + half
        different = (low > 0) | (high < 0)
        equivalent = ~different & (-margin < low) & (high < margin) if margin is not None else False
        rest = "undecided" if n == self.cap else "continue"
        return mean, low, high, np.where(different, "different", np.where(equivalent, "equivalent", rest))

    def look(self, a: pd.Series, b: pd.Series, margin: float | None = None) -> Look:
        """The decision at the seeds both a and b have (a number of seeds this design looks at)."""
        d = paired(a, b)
        if len(d) not in self.looks():
            raise ValueError(f"{len(d)} seeds: this design looks at {self.looks()}")
        mean, low, high, decision = self._decide(d.to_numpy(float), margin)
        return Look(len(d), float(mean), float(low), float(high), self.bound(len(d)), str(decision))

    def simulate(
        self, effect: float, sd: float, margin: float | None = None, reps: int = 20000, seed: int = 0
    ):
        """The shares of `reps` simulated studies (paired differences normal with mean `effect` and sd
        `sd`) that end different, equivalent, and undecided at the cap."""
        d = np.random.default_rng(seed).normal(effect, sd, (reps, self.cap))
        ended = np.full(reps, "continue", dtype=object)
        for n in self.looks():
            ended = np.where(ended == "continue", self._decide(d[:, :n], margin)[3], ended)
        return {k: float(np.mean(ended == k)) for k in ("different", "equivalent", "undecided")}
