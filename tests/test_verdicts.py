"""Study verdicts (experiments/study.py): paired statistics against independent references,
the four outcomes from synthetic runs, and a design whose negative control passes never
says "holds"."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from gradlab.experiments.study import (
    CONTRADICTED,
    HOLDS,
    INDISTINGUISHABLE,
    NOT_STRESSED,
    Verdict,
    against_control,
    better,
    counts,
    difference,
    per_seed,
    same,
)
from scipy import stats

SEEDS = range(8)


def synthetic(none, clipped) -> pd.DataFrame:
    """Runs of two arms on the same seeds, as load_runs gives them: final loss per seed."""
    rows = [
        {"clip.mode": mode, "seed": seed, "eval_loss_final": value}
        for mode, values in (("none", none), ("norm", clipped))
        for seed, value in zip(SEEDS, values)
    ]
    return pd.DataFrame(rows).sample(frac=1, random_state=0)  # order does not matter: pairs go by seed


def judged(runs: pd.DataFrame, control_failed: bool) -> str:
    """A study's verdict on the claim "norm clipping ends at a lower loss than none"."""
    verdict = Verdict()
    verdict.control(control_failed, "no clipping at the stress lr diverges in most seeds")
    a, b = (per_seed(runs, "eval_loss_final", {"clip.mode": mode}) for mode in ("none", "norm"))
    verdict.compare("norm against none, final loss", better(difference(a, b), lower_is_better=True))
    return verdict.outcome


def test_paired_interval_is_scipys_paired_t():
    rng = np.random.default_rng(1)
    a = pd.Series(rng.normal(1, 0.3, 8), index=SEEDS)
    b = a - 0.1 + pd.Series(rng.normal(0, 0.05, 8), index=SEEDS)
    d = difference(a, b)
    reference = stats.ttest_rel(b, a)
    ci = reference.confidence_interval(0.95)
    assert d.n == 8 and math.isclose(d.mean, float((b - a).mean()))
    assert (
        math.isclose(d.low, ci.low) and math.isclose(d.high, ci.high) and math.isclose(d.p, reference.pvalue)
    )


def test_pairs_go_by_seed_not_by_position():
    a = pd.Series([1.0, 2.0, 3.0], index=[0, 1, 2])
    b = pd.Series([3.5, 1.5, 2.5], index=[2, 0, 1])  # every seed 0.5 better, listed in another order
    d = difference(a, b)
    assert d.mean == d.low == d.high == 0.5 and d.p == 0


def test_exact_mcnemar_counts_the_discordant_pairs():
    a = pd.Series([False] * 6 + [True, False], index=SEEDS)
    b = pd.Series([True] * 6 + [True, False], index=SEEDS)
    c = counts(a, b)
    assert (c.n, c.a, c.b, c.b_only, c.a_only) == (8, 1, 7, 6, 0)
    assert math.isclose(c.p, 2 * 0.5**6)  # two-sided exact binomial on 6 discordant pairs, all one way
    assert counts(b, a).b_only == 0 and counts(b, a).a_only == 6 and math.isclose(counts(b, a).p, c.p)
    five = counts(pd.Series([False] * 5, index=range(5)), pd.Series([True] * 5, index=range(5)))
    assert math.isclose(five.p, 2 * 0.5**5)  # five seeds can never tell at p < 0.05


@pytest.mark.parametrize(
    "clipped,outcome",
    [
        ([0.5, 0.6, 0.55, 0.52, 0.58, 0.61, 0.49, 0.57], HOLDS),
        ([1.6, 1.7, 1.55, 1.62, 1.58, 1.71, 1.59, 1.67], CONTRADICTED),
        ([0.8, 1.4, 0.7, 1.5, 0.9, 1.3, 1.2, 0.95], INDISTINGUISHABLE),
    ],
)
def test_each_outcome_from_synthetic_runs(clipped, outcome):
    none = [1.0, 1.1, 0.95, 1.05, 1.02, 1.08, 0.97, 1.03]
    assert judged(synthetic(none, clipped), control_failed=True) == outcome


def test_a_design_whose_control_passes_never_holds():
    """Whatever the arms show, a control that did not fail makes the study "not stressed"."""
    rng = np.random.default_rng(0)
    outcomes = set()
    for _ in range(200):
        none = rng.normal(1, 0.1, 8)
        clipped = none + rng.normal(rng.uniform(-1, 1), rng.uniform(0.01, 0.5), 8)
        runs = synthetic(none, clipped)
        assert judged(runs, control_failed=False) == NOT_STRESSED
        outcomes.add(judged(runs, control_failed=True))
    assert outcomes == {HOLDS, CONTRADICTED, INDISTINGUISHABLE}  # the same data can come out every way


def test_same_uses_its_margin():
    a = pd.Series([1.0] * 6, index=range(6))
    slightly = a + pd.Series([0.01, 0.02, 0.015, 0.012, 0.018, 0.011], index=range(6))
    assert same(difference(a, slightly), margin=0.05).outcome == HOLDS
    assert same(difference(a, slightly), margin=0.001).outcome == CONTRADICTED
    assert same(difference(a, slightly), margin=0.016).outcome == INDISTINGUISHABLE


def test_a_verdict_without_a_control_is_refused_and_one_arm_per_seed():
    with pytest.raises(ValueError, match="negative control"):
        _ = Verdict().outcome
    runs = pd.concat([synthetic([1] * 8, [1] * 8)] * 2)
    with pytest.raises(ValueError, match="not one arm"):
        per_seed(runs, "eval_loss_final", {"clip.mode": "none"})


@pytest.mark.parametrize("share,outcome", [(0.05, HOLDS), (0.005, INDISTINGUISHABLE)])
def test_an_arm_that_rarely_clipped_is_never_support(share, outcome):
    """Solved sooner in every seed, but clipped on under 1% of steps: the same run as none."""
    rows = [
        {"clip.mode": mode, "seed": seed, "target_step": step, "clip_fraction": fraction}
        for seed in SEEDS
        for mode, step, fraction in (("none", math.nan, 0.0), ("norm", 500 + 10 * seed, share))
    ]
    verdict = Verdict()
    against_control(
        verdict, pd.DataFrame(rows), "norm", {"clip.mode": "norm"}, {"clip.mode": "none"}, budget=1000
    )
    assert verdict.findings[0].outcome == outcome
    assert ("the same run as none" in verdict.lines[0]) == (outcome == INDISTINGUISHABLE)
    assert "seeds solved 8/8" in verdict.lines[0]
