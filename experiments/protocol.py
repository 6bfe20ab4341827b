"""A study's protocol: everything that decides its verdict, declared before any of its runs.

One `Protocol` per study holds the claim as its source states it, the arms (each one list of
overrides; the columns that pick an arm's runs out of a sweep are derived from them), the
comparisons (the primary figure, superiority or equivalence, the smallest effect of interest and
why), the negative control and what "failed" means, and the seeds: a range of evaluation seeds
that nothing before this protocol used, pilot seeds apart from them, and the sequential design
(seeds in batches, an alpha-spending boundary, a cap). `gradlab reproduce STUDY --protocol`
prints it; its hash goes into the report.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field

from gradlab.stats import LEVEL, SPENDING, Sequential

USED_BEFORE = range(
    0, 200
)  # every seed a study ran before protocols existed (evaluation 0-29, tuning 100-102)
PILOT_SEEDS = range(900, 1000)  # pilots and tuning: never evaluation seeds
EVALUATION_SEEDS = range(1000, 100000)  # each study's evaluation seeds start at its own `first`

SUPERIORITY, EQUIVALENCE, DIFFERENCE = KINDS = ("superiority", "equivalence", "difference")


@dataclass(frozen=True)
class Arm:
    """One arm of a study: a name and the overrides that make it (besides the study's shared ones)."""

    name: str
    overrides: tuple[str, ...]


@dataclass(frozen=True)
class Comparison:
    """b against a on one per-seed figure, paired by seed.

    superiority: the claim is that b is better than a; it holds when the repeated interval lies on
    the better side of 0, is contradicted on the worse side, and ends "equivalent" when the interval
    lies within +-effect (any gain is smaller than what matters). equivalence: the claim is that b
    is a within +-effect; it holds when the interval lies inside, is contradicted when it excludes 0.
    difference: the claim is that b differs from a, either way; it holds when the interval excludes
    0, is contradicted when it lies within +-effect.
    """

    a: str | float  # arm names; a number stands for that value at every seed (a one-arm test)
    b: str | float
    figure: str  # a summary column (eval_loss_final) or a derived figure of experiments/study.py (FIGURES)
    kind: str  # superiority | equivalence
    effect: float  # the smallest effect of interest, in the figure's units (equivalence: the margin)
    why: str  # why that size matters
    lower_is_better: bool = True

    @property
    def name(self) -> str:
        if isinstance(self.a, str) and isinstance(self.b, str):
            return f"{self.b} against {self.a}, {self.figure}"
        arm, value = (self.a, self.b) if isinstance(self.a, str) else (self.b, self.a)
        return f"{arm}'s {self.figure} against {value:g}"

    def arms(self) -> set[str]:
        return {side for side in (self.a, self.b) if isinstance(side, str)}


@dataclass(frozen=True)
class Control:
    """The negative control: a comparison that must come out different in the stated direction (b
    worse than a by its interval), or the design does not stress the claim."""

    comparison: Comparison
    failed: str  # what failing means, in words


@dataclass(frozen=True)
class Seeds:
    """Evaluation seeds first, first + 1, ... in batches of `batch` up to `cap` (a look after each
    batch, `spending` its boundary); pilot seeds apart."""

    first: int
    batch: int
    cap: int
    pilot: tuple[int, ...] = (900, 901, 902)
    spending: str = "obrien_fleming"

    def design(self) -> Sequential:
        return Sequential(self.batch, self.cap, self.spending)

    def evaluation(self, n: int) -> list[int]:
        return list(range(self.first, self.first + n))


@dataclass(frozen=True)
class Protocol:
    """A study's rules, fixed before its runs (see the module's docstring)."""

    name: str  # the study: gradlab reproduce NAME, experiments/<name>.py, conf/experiment/<name>.yaml
    claim: str  # as the source states it: a quotation or a close paraphrase, with its section
    source: str
    shared: tuple[str, ...]  # the overrides every arm has
    arms: tuple[Arm, ...]
    comparisons: tuple[Comparison, ...]
    control: Control
    seeds: Seeds
    departures: tuple[str, ...]  # where the study departs from the source and its code
    notes: tuple[str, ...] = field(default=())  # anything else a reader needs (a pilot, a figure's meaning)

    def arm(self, name: str) -> Arm:
        return next(a for a in self.arms if a.name == name)

    def digest(self) -> str:
        """The protocol's hash: sha256 of its fields as canonical JSON (first 12 hex digits)."""
        text = json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def check(self) -> None:
        """Refuse a protocol that could not be followed: unknown arms, kinds or spending, seeds that
        overlap what was used before or the pilots."""
        names = [a.name for a in self.arms]
        if len(set(names)) != len(names):
            raise ValueError(f"{self.name}: an arm is declared twice: {names}")
        for c in (*self.comparisons, self.control.comparison):
            if c.arms() - set(names) or not c.arms():
                raise ValueError(f"{self.name}: {c.name}: no such arm (arms: {', '.join(names)})")
            if c.kind not in KINDS or not c.effect > 0:
                raise ValueError(f"{self.name}: {c.name}: kind in {KINDS} and an effect > 0")
        if self.seeds.spending not in SPENDING:
            raise ValueError(f"{self.name}: spending {self.seeds.spending}: choose from {SPENDING}")
        evaluation = set(self.seeds.evaluation(self.seeds.cap))
        if (
            evaluation & set(USED_BEFORE)
            or evaluation & set(PILOT_SEEDS)
            or not set(self.seeds.pilot) <= set(PILOT_SEEDS)
        ):
            raise ValueError(
                f"{self.name}: evaluation seeds must lie in {EVALUATION_SEEDS}, pilots in {PILOT_SEEDS}"
            )
        self.seeds.design().looks()

    def text(self) -> str:
        """The protocol as `gradlab reproduce STUDY --protocol` prints it: every field."""
        s = self.seeds
        lines = [
            f"# {self.name}: protocol {self.digest()}",
            "",
            f"claim: {self.claim}",
            f"source: {self.source}",
            f"shared overrides: {' '.join(self.shared)}",
            "arms:",
            *[f"  {a.name}: {' '.join(a.overrides)}" for a in self.arms],
            "comparisons (paired by seed, repeated 95% intervals of mean(b - a)):",
            *[f"  {_comparison(c)}" for c in self.comparisons],
            f"negative control: {_comparison(self.control.comparison)}; failed: {self.control.failed}",
            f"seeds: evaluation from {s.first}, in batches of {s.batch} up to {s.cap} "
            f"(looks at {', '.join(map(str, s.design().looks()))}); pilot seeds "
            f"{', '.join(map(str, s.pilot)) or 'none'}",
            f"stopping rule: after each batch, every comparison and the control is decided (different, or "
            f"equivalent within its effect) or the design goes on; it stops when all are decided or at "
            f"the cap; boundary {s.spending.replace('_', '-')} alpha spending, overall alpha "
            f"{1 - LEVEL:.2g} per comparison",
            "departures:",
            *[f"  - {d}" for d in self.departures],
            *(["notes:", *[f"  - {n}" for n in self.notes]] if self.notes else []),
        ]
        return "\n".join(lines)


def _comparison(c: Comparison) -> str:
    better = "lower" if c.lower_is_better else "higher"
    what = {SUPERIORITY: "b better than a", EQUIVALENCE: "b equal to a", DIFFERENCE: "b differs from a"}[
        c.kind
    ]
    return (
        f"{c.name} ({c.kind}: {what}, {better} is better; smallest effect of interest {c.effect:g}: {c.why})"
    )
