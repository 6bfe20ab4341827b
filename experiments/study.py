"""What every reproduced study shares: running its sweeps, tabulating them, judging them, writing its report.

A study is a module in experiments/ with NAME, CLAIM, SOURCE, DEPARTURES (where it departs
from the paper and its code), SCALES (smoke | quick | full -> its sizes) and
`run(lab, size) -> Verdict`. Its sweeps go through the normal sweep machinery
(`gradlab sweep`), so re-running a study reuses finished runs.

A verdict is computed from the runs, never written by hand, and is one of four outcomes:
- holds: the negative control failed the claim's criterion, as it must, and every
  comparison the claim makes came out for it, with its interval clear of no difference;
- contradicted: a comparison came out against the claim, its interval clear of it;
- indistinguishable: the data cannot tell at this size (each such line says how many seeds
  could);
- not stressed: the negative control (an arm that must fail the claim's criterion, e.g.
  no clipping at the stress learning rate) did not fail, so the design cannot test the
  claim, whatever the other arms did.
Arms share seeds (the same initialisation and data stream), so they are compared as pairs.
"""

from __future__ import annotations

import math
import platform
import shlex
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import NamedTuple

import pandas as pd

from gradlab.compare import Comparison, compare, load_runs, readable, to_markdown, write
from gradlab.stats import Difference, difference, wilson  # noqa: F401 (the studies import them from here)

SCALES = ("smoke", "quick", "full")


class Lab:
    """A study's working folder: <root>/<study>/<scale>/<sweep label>/<run>/..."""

    def __init__(self, study, scale: str, root: Path, extra: list[str] = ()):
        self.study, self.scale, self.extra = study, scale, list(extra)
        self.dir = Path(root) / study.NAME / scale
        self.commands: list[str] = []
        self.sections: list[tuple[str, str, Comparison]] = []  # (label, note, comparison)
        self.made = self.reused = 0  # runs trained by this call of the study, and runs found finished
        self.run_seconds = 0.0  # the runs' own wall time, however long ago they were made
        self.seeds: dict[str, set] = {}  # sweep label -> the seeds of its runs

    def sweep(self, label: str, *arms: list[str]) -> pd.DataFrame:
        """Run each arm (a list of overrides, comma lists allowed) into one sweep folder; return its
        runs (only these: runs of other settings that the folder may hold are left out)."""
        from gradlab import launch

        runs = []
        for arm in arms:
            overrides = [*arm, *self.extra, f"name={label}", f"results_root={self.dir}"]
            self.commands.append("gradlab sweep " + " ".join(shlex.quote(o) for o in overrides))
            swept = launch.sweep(overrides)
            runs += swept.runs
            self.reused += swept.counts.get("skipped", 0)
            self.made += sum(swept.counts.values()) - swept.counts.get("skipped", 0)
        loaded = load_runs(list(dict.fromkeys(runs)))
        self.seeds.setdefault(label, set()).update(loaded["seed"])
        self.run_seconds += float(loaded["wall_time_s"].sum())
        return loaded

    def table(self, label: str, runs: pd.DataFrame, note: str = "", **options) -> Comparison:
        """Compare `runs` (options as for gradlab compare), keep the table and plots for the report."""
        from gradlab.plots import plot

        comparison = compare(runs, **options)
        out = self.dir / label
        write(comparison, readable(comparison), out, ["md", "csv"])
        plot(comparison, runs, out)
        self.sections.append((label, note, comparison))
        return comparison


def run_study(study, scale: str, root: Path, extra: list[str] = ()) -> Path:
    """Run a study at a scale (extra overrides go to every sweep) and write its report.md; its path."""
    lab = Lab(study, scale, root, extra)
    start = time.perf_counter()
    verdict = study.run(lab, study.SCALES[scale])
    return write_report(study, lab, verdict, time.perf_counter() - start)


def write_report(study, lab: Lab, verdict: Verdict, wall_s: float) -> Path:
    import torch

    import gradlab

    seeds = "; ".join(
        f"{label}: {len(s)} ({', '.join(map(str, sorted(s)))})" for label, s in lab.seeds.items()
    )
    lines = [
        f"# {study.NAME} ({lab.scale} scale)",
        "",
        f"**Claim.** {study.CLAIM}",
        "",
        f"**Source.** {study.SOURCE}",
        "",
        f"## Verdict: {verdict.outcome}",
        "",
        "Computed from the runs below, by rules fixed before they ran (experiments/study.py and the "
        "study's module): holds, contradicted, indistinguishable, or not stressed.",
        "",
    ]
    lines += [f"- {line}" for line in verdict.lines]
    lines += [
        "",
        f"**Statistics.** {TESTS} Seeds per arm, by sweep: {seeds}.",
        "",
        f"**Departures from the paper.** {study.DEPARTURES}",
        "",
    ]
    command = " ".join(["gradlab reproduce", study.NAME, "--scale", lab.scale, *map(shlex.quote, lab.extra)])
    runs = (
        f"all {lab.made} runs made by this call (a first run)"
        if not lab.reused
        else f"{lab.made} runs made by this call, {lab.reused} found finished and reused"
    )
    lines += [
        "## Setup",
        "",
        f"Reproduce: `{command}`, which runs:",
        "",
        "```",
        *lab.commands,
        "```",
        "",
        f"Made {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC on {platform.machine()} "
        f"({platform.processor() or 'cpu'}, {torch.get_num_threads()} threads"
        f"{', ' + torch.cuda.get_device_name() if torch.cuda.is_available() else ''}); "
        f"gradlab {gradlab.__version__}, torch {torch.__version__}, python {platform.python_version()}; "
        f"wall time {wall_s / 60:.1f} min, {runs}; the runs' own wall times add up to "
        f"{lab.run_seconds / 60:.1f} min.",
        "",
    ]
    for label, note, comparison in lab.sections:
        lines += [f"## {label}", ""] + ([note, ""] if note else [])
        lines += [to_markdown(readable(comparison)), f"![{label}]({label}/curves.png)", ""]
        if (lab.dir / label / "threshold.png").exists():
            lines += [f"![{label}: final metric against the threshold]({label}/threshold.png)", ""]
    path = lab.dir / "report.md"
    path.write_text("\n".join(lines))
    return path


REFERENCE = Path("results/reference")


def publish_report(report: Path) -> Path:
    """Copy a study's report, tables and plots (not its runs) to results/reference/<study>/<scale>/."""
    import shutil

    scale_dir = report.parent
    target = REFERENCE / scale_dir.parent.name / scale_dir.name
    if target.exists():
        shutil.rmtree(target)
    for path in [report, *scale_dir.glob("*/comparison.*"), *scale_dir.glob("*/*.png")]:
        destination = target / path.relative_to(scale_dir)
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, destination)
    runs = load_runs([scale_dir])
    runs.drop(columns=["path"]).to_csv(target / "runs.csv", index=False)  # every run's config and summary
    return target


# --- verdicts: four outcomes, from paired seeds

HOLDS, CONTRADICTED, INDISTINGUISHABLE, NOT_STRESSED = OUTCOMES = (
    "holds",
    "contradicted",
    "indistinguishable",
    "not stressed",
)
RARE = 0.01  # an arm that clipped on fewer steps than this is the same run as none
TESTS = (
    "Comparisons pair arms by seed (same initialisation and data stream). Continuous figures: "
    "paired t interval (95%) of the mean difference over the shared seeds. Success counts: "
    "exact McNemar test (two-sided binomial test on the discordant pairs), with Wilson 95% "
    "intervals of each arm's success rate."
)


class Finding(NamedTuple):
    outcome: str  # holds | contradicted | indistinguishable (of one comparison)
    text: str  # the comparison with its interval or p-value


def per_seed(runs: pd.DataFrame, figure: str, where: dict) -> pd.Series:
    """One arm's figure by seed: the runs whose columns equal `where` ({"clip.mode": "none", "lr": 0.1})."""
    chosen = runs
    for key, value in where.items():
        chosen = chosen[chosen[key] == value]
    if chosen["seed"].duplicated().any():
        raise ValueError(f"{where} is not one arm: it holds several runs per seed")
    return chosen.set_index("seed")[figure].sort_index()


def better(diff: Difference, lower_is_better: bool) -> Finding:
    """Is b better than a? holds when the whole interval lies on the better side, contradicted
    when it lies wholly on the worse side, else indistinguishable."""
    sign = -1 if lower_is_better else 1
    gain_low, gain_high = sorted((sign * diff.low, sign * diff.high))
    if gain_low > 0:
        return Finding(HOLDS, str(diff))
    if gain_high < 0:
        return Finding(CONTRADICTED, str(diff))
    return Finding(INDISTINGUISHABLE, f"{diff}; {seeds_to_tell(diff)}")


def seeds_to_tell(diff: Difference, margin: float = 0.0) -> str:
    """How many seeds a paired t interval would need to tell a difference the size seen (80% power)."""
    effect = abs(diff.mean) if not margin else margin
    if not (diff.sd and effect) or not math.isfinite(diff.sd):
        return "more seeds would not tell: the arms differ by nothing measurable"
    n = math.ceil(((1.96 + 0.84) * diff.sd / effect) ** 2) + 1
    return f"about {max(n, diff.n + 1)} seeds would tell a difference of {effect:.3g}"


class Counts(NamedTuple):
    """Paired successes of two arms over their shared seeds."""

    n: int
    a: int  # successes of a
    b: int  # successes of b
    b_only: int  # seeds where b succeeded and a did not
    a_only: int
    p: float  # exact McNemar: two-sided binomial test on the discordant pairs

    def __str__(self) -> str:
        return (
            f"{self.b}/{self.n} {wilson(self.b, self.n)} vs {self.a}/{self.n} {wilson(self.a, self.n)} "
            f"(McNemar exact p={self.p:.2g})"
        )


def counts(a: pd.Series, b: pd.Series) -> Counts:
    """Paired success counts (boolean series by seed) of b against a."""
    from scipy import stats

    both = pd.concat([a.rename("a"), b.rename("b")], axis=1, join="inner").astype(bool)
    b_only = int((both["b"] & ~both["a"]).sum())
    a_only = int((both["a"] & ~both["b"]).sum())
    discordant = a_only + b_only
    p = float(stats.binomtest(b_only, discordant, 0.5).pvalue) if discordant else 1.0
    return Counts(len(both), int(both["a"].sum()), int(both["b"].sum()), b_only, a_only, p)


def overall(control_failed: bool, findings: list[Finding]) -> str:
    """The study's outcome: not stressed when the negative control did not fail; else contradicted
    if any finding is, holds if every one does, and otherwise indistinguishable."""
    if not control_failed:
        return NOT_STRESSED
    outcomes = {f.outcome for f in findings}
    if CONTRADICTED in outcomes:
        return CONTRADICTED
    return HOLDS if outcomes == {HOLDS} else INDISTINGUISHABLE


class Verdict:
    """A study's verdict as it is computed: its negative controls, its comparisons, its notes."""

    def __init__(self):
        self.controls: list[bool] = []
        self.findings: list[Finding] = []
        self.lines: list[str] = []

    def control(self, failed: bool, text: str) -> None:
        """A negative control: an arm that must fail the claim's criterion (`text`: which, and how it did)."""
        self.controls.append(bool(failed))
        self.lines.append(
            f"Negative control: {text}: "
            + (
                "failed, as it must."
                if failed
                else "did **not** fail, so this design does not stress the claim."
            )
        )

    def compare(self, what: str, finding: Finding) -> None:
        self.findings.append(finding)
        self.lines.append(f"{what}: **{finding.outcome}**. {finding.text}")

    def note(self, text: str) -> None:
        self.lines.append(text)

    @property
    def outcome(self) -> str:
        if not self.controls:
            raise ValueError("a study's verdict needs a negative control")
        return overall(all(self.controls), self.findings)


def steps_to_target(runs: pd.DataFrame, where: dict, budget: int) -> pd.Series:
    """Per seed, the step at which the arm's run reached its target (stop_at_target); `budget`
    for a run that never did (ran out of steps, or diverged): a censored figure, lower is better."""
    reached = runs["target_step"] if "target_step" in runs else pd.Series(math.nan, index=runs.index)
    return per_seed(runs.assign(to_target=reached.fillna(budget)), "to_target", where)


def solved(runs: pd.DataFrame, where: dict) -> pd.Series:
    """Per seed, did the arm's run reach its target."""
    reached = runs["target_step"].notna() if "target_step" in runs else pd.Series(False, index=runs.index)
    return per_seed(runs.assign(solved=reached), "solved", where)


def fired(runs: pd.DataFrame, where: dict) -> float:
    """The arm's mean share of steps that clipped."""
    return float(per_seed(runs, "clip_fraction", where).mean())


def against_control(
    verdict: Verdict, runs: pd.DataFrame, name: str, arm: dict, control: dict, budget: int
) -> None:
    """The claim "arm reaches the target, where the control does not": steps to the target
    (censored at the budget), paired t, as the comparison; seeds solved, exact McNemar, beside it.
    An arm that clipped on under 1% of steps is the same run as none: its comparison never holds."""
    share = fired(runs, arm)
    c = counts(solved(runs, control), solved(runs, arm))
    finding = better(
        difference(steps_to_target(runs, control, budget), steps_to_target(runs, arm, budget)),
        lower_is_better=True,
    )
    if not (c.a or c.b):
        finding = finding._replace(
            text=f"neither arm reached the target within {budget} steps: a longer budget, "
            "not more seeds, could tell"
        )
    finding = finding._replace(text=f"{finding.text}; seeds solved {c}; clipped on {share:.1%} of steps")
    if share < RARE:  # whatever its numbers say, it is not support for the claim
        finding = finding._replace(
            outcome=INDISTINGUISHABLE if finding.outcome == HOLDS else finding.outcome,
            text=f"{finding.text}; rarely fired ({share:.2%} of steps): the same run as none",
        )
    verdict.compare(f"{name} against the control, steps to the target (censored at {budget})", finding)


def control_fails(runs: pd.DataFrame, control: dict, name: str) -> tuple[bool, str]:
    """A control "fails" when it reaches the target in at most half of its seeds."""
    ok = solved(runs, control)
    return int(ok.sum()) * 2 <= len(ok), f"{name} reaches the target in {int(ok.sum())}/{len(ok)} seeds"


def same(diff: Difference, margin: float) -> Finding:
    """Are the two arms the same run, up to `margin`? holds when the whole interval lies within
    ±margin, contradicted when it lies wholly outside, else indistinguishable."""
    if -margin < diff.low and diff.high < margin:
        return Finding(HOLDS, f"{diff}, within ±{margin:.3g}")
    if diff.low > margin or diff.high < -margin:
        return Finding(CONTRADICTED, f"{diff}, outside ±{margin:.3g}")
    return Finding(INDISTINGUISHABLE, f"{diff}, margin ±{margin:.3g}; {seeds_to_tell(diff, margin)}")


def within(values: pd.Series, low: float, high: float, what: str) -> Finding:
    """Does the mean of a per-seed figure lie in [low, high]? By its t interval: holds inside,
    contradicted wholly outside, else indistinguishable."""
    d = difference(pd.Series(0.0, index=values.index), values)
    text = (
        f"{what} {d.mean:.4g} [{d.low:.4g}, {d.high:.4g}] (t interval, {d.n} seeds), "
        f"allowed [{low:g}, {high:g}]"
    )
    if low <= d.low and d.high <= high:
        return Finding(HOLDS, text)
    if d.high < low or d.low > high:
        return Finding(CONTRADICTED, text)
    return Finding(INDISTINGUISHABLE, text)


def differs(diff: Difference, margin: float) -> Finding:
    """The claim "these arms are not the same run": `same` with holds and contradicted swapped."""
    f = same(diff, margin)
    return f._replace(outcome={HOLDS: CONTRADICTED, CONTRADICTED: HOLDS}.get(f.outcome, f.outcome))


def seed_noise(values: pd.Series) -> float:
    """Half the seed-to-seed standard deviation of an arm's figure: the margin within which two
    arms count as the same run (declared here, before any study ran)."""
    return 0.5 * float(values.std(ddof=1)) if len(values) > 1 else 0.0
