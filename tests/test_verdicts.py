"""Study verdicts (experiments/study.py): each comparison kind's outcomes, the sequential looks
from synthetic runs, a design whose negative control does not come out as it must never says
"holds", and the paired statistics beside them against independent references."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from gradlab.experiments.protocol import (
    DIFFERENCE,
    EQUIVALENCE,
    SUPERIORITY,
    Arm,
    Comparison,
    Control,
    Protocol,
    Seeds,
)
from gradlab.experiments.study import (
    CONTRADICTED,
    EQUIVALENT,
    HOLDS,
    INDISTINGUISHABLE,
    NOT_STRESSED,
    Verdict,
    outcome,
    overall,
    per_seed,
    seeds_solved,
)
from scipy import stats

from gradlab.stats import Look, difference

SEEDS = range(1000, 1008)


def look(mean: float, low: float, high: float, decision: str) -> Look:
    return Look(8, mean, low, high, 2.0, decision)


@pytest.mark.parametrize(
    "kind,lower,at,expected",
    [
        (SUPERIORITY, True, look(-0.3, -0.5, -0.1, "different"), HOLDS),  # b lower, lower is better
        (SUPERIORITY, True, look(0.3, 0.1, 0.5, "different"), CONTRADICTED),
        (SUPERIORITY, False, look(0.3, 0.1, 0.5, "different"), HOLDS),  # b higher, higher is better
        (SUPERIORITY, True, look(0.0, -0.01, 0.01, "equivalent"), EQUIVALENT),
        (SUPERIORITY, True, look(0.0, -0.5, 0.5, "undecided"), INDISTINGUISHABLE),
        (EQUIVALENCE, True, look(0.0, -0.01, 0.01, "equivalent"), HOLDS),
        (EQUIVALENCE, True, look(-0.3, -0.5, -0.1, "different"), CONTRADICTED),  # either way
        (EQUIVALENCE, False, look(0.3, 0.1, 0.5, "different"), CONTRADICTED),
        (EQUIVALENCE, True, look(0.0, -0.5, 0.5, "undecided"), INDISTINGUISHABLE),
        (DIFFERENCE, True, look(0.3, 0.1, 0.5, "different"), HOLDS),
        (DIFFERENCE, True, look(-0.3, -0.5, -0.1, "different"), HOLDS),
        (DIFFERENCE, True, look(0.0, -0.01, 0.01, "equivalent"), CONTRADICTED),
        (DIFFERENCE, True, look(0.0, -0.5, 0.5, "undecided"), INDISTINGUISHABLE),
    ],
)
def test_each_kind_reads_a_decisive_look_as_its_claim_says(kind, lower, at, expected):
    c = Comparison("none", "norm", "eval_loss_final", kind, 0.05, "test", lower_is_better=lower)
    assert outcome(c, at) == expected


def test_a_study_is_not_stressed_unless_its_control_holds_else_its_worst_comparison():
    for control in (CONTRADICTED, EQUIVALENT, INDISTINGUISHABLE):
        assert overall(control, [HOLDS, HOLDS]) == NOT_STRESSED
    assert overall(HOLDS, [HOLDS, HOLDS]) == HOLDS
    assert overall(HOLDS, [HOLDS, INDISTINGUISHABLE]) == INDISTINGUISHABLE
    assert overall(HOLDS, [INDISTINGUISHABLE, EQUIVALENT, HOLDS]) == EQUIVALENT
    assert overall(HOLDS, [EQUIVALENT, CONTRADICTED]) == CONTRADICTED


def design(effect: float = 0.05, cap: int = 8) -> Protocol:
    """Norm against none, final loss, superiority; the control: none worse than a calm lr."""
    return Protocol(
        name="synthetic",
        claim="norm ends lower than none",
        source="a test",
        shared=(),
        arms=(Arm("none", ("clip=none",)), Arm("norm", ("clip=norm",)), Arm("calm", ("lr=0.001",))),
        comparisons=(Comparison("none", "norm", "eval_loss_final", SUPERIORITY, effect, "a test"),),
        control=Control(
            Comparison("none", "calm", "eval_loss_final", SUPERIORITY, effect, "a test"),
            "none is worse than calm",
        ),
        seeds=Seeds(1000, 4, cap),
        departures=(),
    )


def synthetic(values: dict[str, list[float]]) -> pd.DataFrame:
    """Runs of each arm on the same seeds, as a study's sweeps give them: final loss per seed."""
    rows = [
        {"arm": arm, "seed": seed, "eval_loss_final": value}
        for arm, column in values.items()
        for seed, value in zip(SEEDS, column)
    ]
    return pd.DataFrame(rows).sample(frac=1, random_state=0)  # order does not matter: pairs go by seed


def judged(runs: pd.DataFrame, protocol: Protocol) -> Verdict:
    verdict = Verdict(protocol)
    for n in protocol.seeds.design().looks():
        if verdict.look(protocol.seeds.design(), runs[runs["seed"] < 1000 + n], n):
            break
    return verdict


NONE = [1.0, 1.1, 0.95, 1.05, 1.02, 1.08, 0.97, 1.03]
CALM = [v - 0.5 for v in NONE]


@pytest.mark.parametrize(
    "norm,expected,seeds",
    [
        ([v - 0.4 + 0.01 * i for i, v in enumerate(NONE)], HOLDS, 4),  # decided at the first look
        ([v + 0.4 - 0.01 * i for i, v in enumerate(NONE)], CONTRADICTED, 4),
        ([v + 0.001 * (-1) ** i for i, v in enumerate(NONE)], EQUIVALENT, 4),
        ([0.8, 1.4, 0.7, 1.5, 0.9, 1.3, 1.2, 0.95], INDISTINGUISHABLE, 8),  # undecided at the cap
    ],
)
def test_each_outcome_from_synthetic_runs_and_the_look_that_decided(norm, expected, seeds):
    verdict = judged(synthetic({"none": NONE, "norm": norm, "calm": CALM}), design())
    assert verdict.outcome == expected and verdict.looks[-1][0] == seeds


def test_a_decided_comparison_stays_decided_at_later_looks():
    norm = [v - 0.4 for v in NONE[:4]] + [v + 0.4 for v in NONE[4:]]  # better first, worse later
    calm = [v + 0.3 * (-1) ** i for i, v in enumerate(NONE[:4])] + [v - 1.5 for v in NONE[4:]]  # decided at 8
    verdict = judged(synthetic({"none": NONE, "norm": norm, "calm": calm}), design())
    assert [n for n, _ in verdict.looks] == [4, 8] and verdict.looks[1][1][1].decision != "different"
    assert verdict.judged[design().comparisons[0]].look.n == 4 and verdict.outcome == HOLDS


def test_a_design_whose_control_does_not_hold_never_holds():
    """Whatever the arms show, a control that does not come out as it must makes it "not stressed";
    with a control that holds, the same arms come out every way the data say."""
    rng = np.random.default_rng(0)
    stressed, unstressed = [], []
    for _ in range(100):
        none = rng.normal(1, 0.1, 8)
        norm = list(none + rng.normal(rng.choice([-0.5, 0, 0.5]), rng.choice([0.001, 0.5]), 8))
        stressed.append(
            judged(synthetic({"none": list(none), "norm": norm, "calm": list(none - 0.5)}), design())
        )
        calm = list(none + rng.normal(0, 0.3, 8))  # no better than none: the control has nothing to find
        unstressed.append(judged(synthetic({"none": list(none), "norm": norm, "calm": calm}), design()))
    assert all(v.outcome == NOT_STRESSED for v in unstressed if v.control.outcome != HOLDS)
    assert sum(v.outcome == NOT_STRESSED for v in unstressed) >= 90
    assert {v.outcome for v in stressed} == {HOLDS, CONTRADICTED, EQUIVALENT, INDISTINGUISHABLE}


def test_a_number_in_place_of_an_arm_is_that_number_at_every_seed():
    runs = synthetic({"none": NONE})
    assert per_seed(runs, "eval_loss_final", 0.5).to_dict() == dict.fromkeys(SEEDS, 0.5)
    assert per_seed(runs, "eval_loss_final", "none").tolist() == NONE  # sorted by seed
    with pytest.raises(ValueError, match="several runs per seed"):
        per_seed(pd.concat([runs, runs]), "eval_loss_final", "none")


def test_seeds_solved_beside_a_comparison_is_the_exact_mcnemar_test():
    rows = [
        {"arm": arm, "seed": seed, "target_step": step}
        for seed in SEEDS
        for arm, step in (("none", 500.0 if seed >= 1006 else math.nan), ("norm", 300.0))
    ]
    said = seeds_solved(pd.DataFrame(rows), "none", "norm")
    p = stats.binomtest(6, 6, 0.5).pvalue  # 6 discordant pairs, all one way
    assert "norm 8/8" in said and "none 2/8" in said and f"p={p:.2g}" in said


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
