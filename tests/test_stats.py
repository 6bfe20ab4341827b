"""gradlab.stats against independent references: statsmodels' TOST, the joint normal probabilities
of the looks (scipy's multivariate normal), published boundaries, and simulation."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats

from gradlab.stats import SPENDING, Sequential, boundaries, equivalence, spent


@pytest.mark.parametrize("shift,margin", [(0.02, 0.3), (0.25, 0.3), (-0.1, 0.05), (0.0, 1.0)])
def test_tost_equals_statsmodels(shift, margin):
    from statsmodels.stats.weightstats import ttost_paired

    rng = np.random.default_rng(7)
    a = pd.Series(rng.normal(1.0, 0.3, 9))
    b = a + shift + pd.Series(rng.normal(0, 0.2, 9))
    got = equivalence(a, b, margin)
    p, *_ = ttost_paired(b.to_numpy(), a.to_numpy(), -margin, margin)
    assert got.p == pytest.approx(p, rel=1e-9)
    assert got.equivalent == (p < 0.05) == (-margin < got.low and got.high < margin)


def test_the_spending_functions_spend_alpha_by_the_end_and_nothing_at_the_start():
    for kind in SPENDING:
        assert spent(kind, 1.0, 0.05) == pytest.approx(0.05)
        assert spent(kind, 1e-9, 0.05) == pytest.approx(0.0, abs=1e-8)
    assert boundaries([1.0]) == pytest.approx([scipy_stats.norm.isf(0.025)])


@pytest.mark.parametrize("kind", SPENDING)
@pytest.mark.parametrize("fractions", [[0.2, 0.4, 0.6, 0.8, 1.0], [0.25, 0.6, 1.0]])
def test_each_look_spends_what_its_function_allows(kind, fractions):
    """P(|Z_j| < c_j for every look j <= k) from scipy's multivariate normal (Genz's algorithm, not
    the recursive integration that made the boundaries), Z's correlations sqrt(t_i / t_j)."""
    c = np.array(boundaries(fractions, 0.05, kind))
    t = np.array(fractions)
    corr = np.sqrt(np.minimum.outer(t, t) / np.maximum.outer(t, t))
    for k in range(1, len(t) + 1):
        joint = scipy_stats.multivariate_normal(np.zeros(k), corr[:k, :k], abseps=1e-7, releps=1e-7)
        inside = joint.cdf(c[:k], lower_limit=-c[:k], rng=np.random.default_rng(0))
        assert 1 - inside == pytest.approx(spent(kind, t[k - 1], 0.05), abs=2e-4)


def test_pocock_type_boundaries_equal_the_published_ones():
    """Lan & DeMets' Pocock-type spending, 5 equally spaced looks, two-sided 0.05, as tabulated in
    the group-sequential literature."""
    assert boundaries([0.2, 0.4, 0.6, 0.8, 1.0], 0.05, "pocock") == pytest.approx(
        [2.438, 2.427, 2.410, 2.397, 2.386], abs=2e-3
    )


@pytest.mark.parametrize("design", [Sequential(3, 15), Sequential(4, 12, "pocock"), Sequential(5, 20)])
def test_a_sequential_design_keeps_its_overall_type_one_error(design):
    """Under no difference, the share of simulated studies that end `different` at any look is 5%,
    up to the t approximation of the boundaries (which adds a few tenths of a percent at 3-5 seeds
    per batch) and the simulation's own error (sd 0.0015 at 20,000 studies)."""
    ends = design.simulate(effect=0.0, sd=1.0, reps=20000)
    assert 0.045 <= ends["different"] <= 0.058
    assert ends["equivalent"] == 0


def test_equivalence_at_the_margin_is_rarely_declared_and_within_it_usually():
    design = Sequential(3, 15)
    at_margin = design.simulate(effect=0.5, sd=1.0, margin=0.5, reps=20000)
    assert at_margin["equivalent"] <= 0.03  # the repeated 95% interval: at most 2.5% per side
    inside = design.simulate(effect=0.0, sd=1.0, margin=1.0, reps=20000)
    assert inside["equivalent"] > 0.8


def test_a_look_decides_from_its_repeated_interval():
    design = Sequential(3, 9)
    a = pd.Series(np.zeros(3))
    big = design.look(a, pd.Series([1.0, 1.001, 0.999]))  # a first look demands a lot: z >= 3.39
    assert big.decision == "different" and big.low > 0
    noisy = design.look(a, pd.Series([1.0, -1.0, 0.5]))
    assert noisy.decision == "continue" and noisy.low < 0 < noisy.high
    wide = design.look(pd.Series(np.zeros(9)), pd.Series(np.linspace(-1, 1, 9)))
    assert wide.decision == "undecided"
    tight = design.look(pd.Series(np.zeros(9)), pd.Series(np.linspace(-0.01, 0.01, 9)), margin=0.1)
    assert tight.decision == "equivalent"
    bound = design.bounds()[0]
    half = scipy_stats.t.isf(scipy_stats.norm.sf(bound), 2) * 0.001 / math.sqrt(3)
    assert (big.low, big.high) == pytest.approx((1.0 - half, 1.0 + half))
    with pytest.raises(ValueError, match="4 seeds: this design looks at"):
        design.look(pd.Series(np.zeros(4)), pd.Series(np.ones(4)))
