"""What every reproduced study shares: running its protocol, judging it, writing its report.

A study is a module in experiments/ named after it (lstm-adding: experiments/lstm_adding.py, run
with conf/experiment/lstm_adding.yaml) with SCALES (smoke | quick | full -> its sizes) and
`protocol(scale) -> Protocol` (experiments/protocol.py): the claim, the arms, the comparisons,
the negative control and the seeds, fixed before any run. A study that must measure something
before it can name its arms (an average gradient norm, a tuned threshold) also has
`pilot(lab, protocol) -> dict`, run on the protocol's pilot seeds only; the values it returns
fill the arms' overrides ("max_norm={threshold}"). Its report has `table(protocol, values)`
(the options of its comparison table and a note), and may add `notes(runs, protocol, values)`
(lines beside the verdict) and `derive(runs)` (figures computed from a run's record, e.g. a
correlation along its history, as columns).

The runs go through the normal sweep machinery (`gradlab sweep`), so re-running a study reuses
finished runs. The evaluation seeds come in batches; after each batch every comparison is looked
at (a repeated 95% interval of the paired difference, gradlab/stats.py `Sequential`), and the study
stops when each is decided or at the cap. A verdict is computed from the runs, never written by
hand. Each comparison ends:
- holds: it came out as the claim says (superiority: b better than a, the interval clear of 0;
  equivalence: the interval inside the margin; difference: the interval clear of 0);
- contradicted: it came out against the claim (superiority: b worse; equivalence: a difference;
  difference: the interval inside the margin);
- equivalent: (superiority only) the interval lies inside +-the smallest effect of interest: any
  gain is smaller than what the claim needs;
- indistinguishable: undecided at the cap (the line says how many seeds the effect of interest
  would need).
The study's outcome is "not stressed" when the negative control did not come out as it must
(the design cannot test the claim, whatever the arms did); otherwise the worst of its comparisons,
in the order contradicted, equivalent, indistinguishable, holds.
"""

from __future__ import annotations

import math
import platform
import shlex
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import NamedTuple

import pandas as pd
from gradlab.experiments.protocol import DIFFERENCE, EQUIVALENCE, SUPERIORITY, Comparison, Protocol

from gradlab.compare import Comparison as Table
from gradlab.compare import compare, load_runs, readable, to_markdown, write
from gradlab.stats import Look, Sequential, wilson

SCALES = ("smoke", "quick", "full")
HERE = Path(__file__).parent


class Lab:
    """A study's working folder: <root>/<study>/<scale>/<sweep label>/<run>/..."""

    def __init__(self, study, scale: str, root: Path, extra: list[str] = ()):
        self.study, self.scale, self.extra = study, scale, list(extra)
        self.dir = Path(root) / study.NAME / scale
        self.commands: list[str] = []
        self.sections: list[tuple[str, str, Table]] = []  # (label, note, comparison table)
        self.made = self.reused = 0  # runs trained by this call of the study, and runs found finished
        # records say when their run started, to the second: those from before were found finished
        self.began = pd.Timestamp.now(tz="UTC").floor("s")
        self.run_seconds = 0.0  # the runs' own wall time (a group's shared among its members)
        self.timed: set[str] = set()  # the runs counted in run_seconds
        self.seeds: dict[str, set] = {}  # sweep label -> the seeds of its runs

    def sweep(self, label: str, arms: dict[str, list[str]]) -> pd.DataFrame:
        """Run each arm (name -> overrides, comma lists allowed) into one sweep folder; its runs
        (only these), each row with its arm's name in the column `arm`."""
        from gradlab import launch

        frames = []
        for name, arm in arms.items():
            overrides = [*arm, *self.extra, f"name={label}", f"results_root={self.dir}"]
            command = "gradlab sweep " + " ".join(shlex.quote(o) for o in overrides)
            if command not in self.commands:
                self.commands.append(command)
            swept = launch.sweep(overrides)
            frames.append(load_runs(list(dict.fromkeys(swept.runs))).assign(arm=name))
        runs = pd.concat(frames, ignore_index=True)
        runs.attrs["config_keys"] = set().union(*(f.attrs["config_keys"] for f in frames))  # concat drops it
        self.seeds.setdefault(label, set()).update(runs["seed"])
        new = runs[~runs["path"].isin(self.timed)].drop_duplicates("path")
        made = int((pd.to_datetime(new["started"]) >= self.began).sum())  # by this call, not found finished
        self.made, self.reused = self.made + made, self.reused + len(new) - made
        together = new["trained_together"].fillna(1) if "trained_together" in new else 1
        self.run_seconds += float((new["wall_time_s"] / together).sum())
        self.timed |= set(new["path"])
        return self.study.derive(runs) if hasattr(self.study, "derive") else runs

    def table(self, label: str, runs: pd.DataFrame, note: str = "", **options) -> Table:
        """Compare `runs` (options as for gradlab compare), keep the table and plots for the report."""
        from gradlab.plots import plot

        runs = runs.drop(columns="arm").drop_duplicates("path")
        comparison = compare(runs, **options)
        out = self.dir / label
        write(comparison, readable(comparison), out, ["md", "csv"])
        plot(comparison, runs, out)
        self.sections.append((label, note, comparison))
        return comparison


# --- figures: one value per run, picked per arm and seed


def steps_to_target(runs: pd.DataFrame) -> pd.Series:
    """The step at which the run reached its target (stop_at_target), its budget if it never did
    (ran out of steps, or diverged): censored, lower is better."""
    reached = runs["target_step"] if "target_step" in runs else pd.Series(math.nan, index=runs.index)
    return reached.fillna(runs["steps"]).astype(float)


def solved(runs: pd.DataFrame) -> pd.Series:
    """1 if the run reached its target, else 0."""
    return (
        runs["target_step"].notna() if "target_step" in runs else pd.Series(False, index=runs.index)
    ).astype(float)


def final_loss(runs: pd.DataFrame) -> pd.Series:
    """The final held-out loss; a run that did not complete (diverged) counts as twice the worst
    completed one of the study."""
    worst = 2 * runs.loc[runs["status"] == "completed", "eval_loss_final"].max()
    return runs["eval_loss_final"].where(runs["status"] == "completed", worst)


FIGURES = {"steps_to_target": steps_to_target, "solved": solved, "final_loss": final_loss}  # else a column


def per_seed(runs: pd.DataFrame, figure: str, arm: str | float) -> pd.Series:
    """An arm's figure by seed (a number instead of an arm: that number at every seed). A derived
    figure is computed over all of `runs` first (final_loss's worst run is the study's)."""
    if not isinstance(arm, str):
        return pd.Series(float(arm), index=sorted(runs["seed"].unique()))
    mine = runs["arm"] == arm
    if runs.loc[mine, "seed"].duplicated().any():
        raise ValueError(f"arm {arm} holds several runs per seed")
    values = (FIGURES[figure](runs) if figure in FIGURES else runs[figure])[mine]
    return pd.Series(values.to_numpy(float), index=runs.loc[mine, "seed"].to_numpy()).sort_index()


# --- verdicts

HOLDS, CONTRADICTED, EQUIVALENT, INDISTINGUISHABLE, NOT_STRESSED = OUTCOMES = (
    "holds",
    "contradicted",
    "equivalent",
    "indistinguishable",
    "not stressed",
)
WORST_FIRST = (CONTRADICTED, EQUIVALENT, INDISTINGUISHABLE, HOLDS)
TESTS = (
    "Comparisons pair arms by seed (same initialisation and data stream). Seeds come in batches; "
    "after each batch, each comparison's mean paired difference gets a repeated 95% interval "
    "(paired t at the level an alpha-spending boundary sets for that look, so that all looks "
    "together keep 95%): different when it excludes 0, equivalent when it lies inside +-the "
    "smallest effect of interest; a comparison, once decided, stays decided."
)


def outcome(c: Comparison, look: Look) -> str:
    """What a comparison's decisive look says of its claim (see the module's docstring)."""
    gain = -look.mean if c.lower_is_better else look.mean  # b's gain over a
    if look.decision == "different":  # an equivalence claim is contradicted by any difference
        return HOLDS if c.kind == DIFFERENCE or c.kind == SUPERIORITY and gain > 0 else CONTRADICTED
    if look.decision == "equivalent":
        return {EQUIVALENCE: HOLDS, SUPERIORITY: EQUIVALENT, DIFFERENCE: CONTRADICTED}[c.kind]
    return INDISTINGUISHABLE


def seeds_to_tell(c: Comparison, sd: float, n: int) -> str:
    """How many seeds a paired t interval needs to tell the effect of interest (80% power)."""
    if not (sd > 0 and math.isfinite(sd)):
        return "the arms differ by the same amount on every seed: more seeds would not change it"
    need = math.ceil(((1.96 + 0.84) * sd / c.effect) ** 2) + 1
    return f"about {max(need, n + 1)} seeds would tell an effect of {c.effect:g} (sd {sd:.3g})"


class Judged(NamedTuple):
    comparison: Comparison
    look: Look  # the decisive look, or the last one
    outcome: str
    sd: float  # of the paired differences at that look

    def line(self) -> str:
        c, text = self.comparison, str(self.look)
        if self.outcome == INDISTINGUISHABLE:
            text += f"; {seeds_to_tell(c, self.sd, self.look.n)}"
        return f"{c.name}: **{self.outcome}**. {text}"


def overall(control: str, outcomes: list[str]) -> str:
    """The study's outcome: not stressed unless the control held; else its worst comparison."""
    if control != HOLDS:
        return NOT_STRESSED
    return next(o for o in WORST_FIRST if o in outcomes or o == HOLDS)


class Verdict:
    """A study's verdict as its looks decide it: the control, the comparisons, notes, the stop."""

    def __init__(self, protocol: Protocol):
        self.protocol = protocol
        self.looks: list[tuple[int, list[Look]]] = []  # (seeds, each test's look)
        self.judged: dict[Comparison, Judged] = {}
        self.power: list[str] = []
        self.notes: list[str] = []
        self.stop = ""

    def tests(self) -> list[Comparison]:
        return [self.protocol.control.comparison, *self.protocol.comparisons]

    def look(self, design: Sequential, runs: pd.DataFrame, n: int) -> bool:
        """Look at n seeds; whether every test is decided."""
        looks = []
        for c in self.tests():
            a, b = per_seed(runs, c.figure, c.a), per_seed(runs, c.figure, c.b)
            if (b - a).notna().sum() != n:  # a run that did not complete has no such figure
                raise ValueError(
                    f"{c.name}: {n - (b - a).notna().sum()} of {n} seeds lack the figure; judge with a "
                    "figure that counts a run that did not complete (final_loss, steps_to_target, solved)"
                )
            look = design.look(a, b, c.effect)
            looks.append(look)
            if c not in self.judged or self.judged[c].look.decision == "continue":
                sd = float((b - a).dropna().std(ddof=1))
                self.judged[c] = Judged(c, look, outcome(c, look), sd)
        self.looks.append((n, looks))
        return all(j.look.decision != "continue" for j in self.judged.values())

    @property
    def control(self) -> Judged:
        return self.judged[self.protocol.control.comparison]

    @property
    def outcome(self) -> str:
        return overall(self.control.outcome, [self.judged[c].outcome for c in self.protocol.comparisons])

    def lines(self) -> list[str]:
        control = self.control
        said = (
            "came out as it must."
            if control.outcome == HOLDS
            else "did **not** come out as it must, so this design does not stress the claim."
        )
        return [
            f"Negative control: {self.protocol.control.failed}: {said} {control.line()}",
            *[self.judged[c].line() for c in self.protocol.comparisons],
            *self.notes,
        ]


def judge(lab: Lab, protocol: Protocol, verdict: Verdict, values: dict) -> pd.DataFrame:
    """Run the protocol's evaluation seeds batch by batch until every comparison is decided or the
    cap is reached; the runs of the last look."""
    design = protocol.seeds.design()
    for n in design.looks():
        runs = lab.sweep(MAIN, arms(protocol, protocol.seeds.evaluation(n), values))
        if verdict.look(design, runs, n):
            break
    undecided = sum(j.look.decision == "undecided" for j in verdict.judged.values())
    verdict.stop = (
        f"every comparison decided at {n} seeds per arm"
        if not undecided
        else f"the cap of {n} seeds per arm reached with {undecided} comparison(s) undecided"
    )
    return runs


MAIN, PILOT = "main", "pilot"  # the sweeps of a study: its evaluation seeds, its pilot seeds


def arms(protocol: Protocol, seeds: list[int], values: dict) -> dict[str, list[str]]:
    """Each arm's overrides for these seeds, a pilot's `values` filled in."""
    return {
        a.name: [o.format(**values) for o in (*protocol.shared, *a.overrides)] + [seed_list(seeds)]
        for a in protocol.arms
    }


def seed_list(seeds) -> str:
    return "seed=" + ",".join(map(str, seeds))


def on_pilot_seeds(lab: Lab, protocol: Protocol, overrides: list[str], label: str = PILOT) -> pd.DataFrame:
    """A study's own pilot: the shared overrides and `overrides` on the protocol's pilot seeds."""
    return lab.sweep(label, {"pilot": [*protocol.shared, *overrides, seed_list(protocol.seeds.pilot)]})


def power(lab: Lab, protocol: Protocol, verdict: Verdict, values: dict) -> pd.DataFrame:
    """Before the evaluation runs: the arms on the pilot seeds, and for each comparison the chance
    that the design decides it within the cap, from the effect of interest and the pilot's spread
    of the paired differences (simulated: `Sequential.simulate`); the pilot's runs."""
    design = protocol.seeds.design()
    runs = lab.sweep(PILOT, arms(protocol, list(protocol.seeds.pilot), values))
    for c in verdict.tests():
        d = (per_seed(runs, c.figure, c.b) - per_seed(runs, c.figure, c.a)).dropna()
        sd = float(d.std(ddof=1)) if len(d) > 1 else math.nan
        if not sd > 0:
            verdict.power.append(
                f"{c.name}: the pilot's paired differences have no spread ({len(d)} seeds, mean "
                f"{d.mean():+.3g}), so no chance is computed"
            )
            continue
        found = design.simulate(c.effect, sd, c.effect)["different"]
        none = design.simulate(0.0, sd, c.effect)["equivalent"]
        verdict.power.append(
            f"{c.name}: pilot sd {sd:.3g} ({len(d)} seeds); a true effect of {c.effect:g} is found "
            f"(different) within {design.cap} seeds with chance {found:.2f}; no effect is shown "
            f"equivalent with chance {none:.2f}"
        )
    return runs


def run_study(study, scale: str, root: Path, extra: list[str] = ()) -> Path:
    """Run a study at a scale (extra overrides go to every sweep) and write its report.md; its path.

    Its pilot (the study's own, for values its arms need; then the arms themselves) runs on the
    protocol's pilot seeds; then the evaluation seeds, batch by batch (`judge`)."""
    protocol = study.protocol(scale)
    protocol.check()
    lab = Lab(study, scale, root, extra)
    start = time.perf_counter()
    values = study.pilot(lab, protocol) if hasattr(study, "pilot") else {}
    verdict = Verdict(protocol)
    power(lab, protocol, verdict, values)
    runs = judge(lab, protocol, verdict, values)
    lab.table(MAIN, runs, **study.table(protocol, values))
    if hasattr(study, "notes"):
        verdict.notes += study.notes(runs, protocol, values)
    return write_report(study, lab, verdict, time.perf_counter() - start)


def defined(study) -> str:
    """The commit that last changed the study's module (its protocol), and when; or why unknown."""
    path = HERE / f"{study.__name__.rsplit('.', 1)[1]}.py"
    try:
        out = subprocess.run(
            ["git", "log", "-1", "--format=%h %cI", "--", path.name],
            cwd=HERE,
            capture_output=True,
            text=True,
            timeout=30,
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", path.name],
            cwd=HERE,
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "unknown (git is not available)"
    if out.returncode or not out.stdout.strip():
        return "unknown (not in a git checkout)"
    commit, when = out.stdout.split()
    return f"commit {commit} ({when})" + (", with uncommitted changes" if dirty else "")


def write_report(study, lab: Lab, verdict: Verdict, wall_s: float) -> Path:
    import torch

    import gradlab

    protocol = verdict.protocol
    seeds = "; ".join(f"{label}: {len(s)} ({_ranges(s)})" for label, s in lab.seeds.items())
    lines = [
        f"# {study.NAME} ({lab.scale} scale)",
        "",
        f"**Claim.** {protocol.claim}",
        "",
        f"**Source.** {protocol.source}",
        "",
        f"**Protocol.** {protocol.digest()}, defined by {defined(study)}; "
        f"`gradlab reproduce {study.NAME} --scale {lab.scale} --protocol` prints it.",
        "",
        f"## Verdict: {verdict.outcome}",
        "",
        f"Computed from the runs below by the protocol's rules. Stopped: {verdict.stop}.",
        "",
        *[f"- {line}" for line in verdict.lines()],
        "",
        "**Power, before the evaluation runs** (from the pilot seeds):",
        "",
        *[f"- {line}" for line in verdict.power],
        "",
        "**Looks.**",
        "",
        "| seeds | " + " | ".join(c.name for c in verdict.tests()) + " |",
        "|---" * (1 + len(verdict.tests())) + "|",
        *[f"| {n} | " + " | ".join(_cell(look) for look in looks) + " |" for n, looks in verdict.looks],
        "",
        f"**Statistics.** {TESTS} Seeds per arm, by sweep: {seeds}.",
        "",
        "**Departures from the source.**",
        "",
        *[f"- {d}" for d in protocol.departures],
        "",
        *([f"**Notes.** {' '.join(protocol.notes)}", ""] if protocol.notes else []),
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
        f"{lab.run_seconds / 60:.1f} min (a group's time shared among its members).",
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


def _cell(look: Look) -> str:
    return f"{look.mean:+.3g} [{look.low:+.3g}, {look.high:+.3g}] {look.decision}"


def _ranges(seeds: set) -> str:
    """1000-1009, 1012 for {1000..1009, 1012}."""
    ordered, parts = sorted(seeds), []
    for s in ordered:
        if parts and s == parts[-1][1] + 1:
            parts[-1][1] = s
        else:
            parts.append([s, s])
    return ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in parts)


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


def seeds_solved(runs: pd.DataFrame, a: str, b: str) -> str:
    """Seeds that reached the target, b against a, with Wilson intervals and the exact McNemar test."""
    from scipy import stats

    sa, sb = per_seed(runs, "solved", a), per_seed(runs, "solved", b)
    both = pd.concat([sa.rename("a"), sb.rename("b")], axis=1, join="inner").astype(bool)
    b_only, a_only = int((both["b"] & ~both["a"]).sum()), int((both["a"] & ~both["b"]).sum())
    p = float(stats.binomtest(b_only, b_only + a_only, 0.5).pvalue) if b_only + a_only else 1.0
    n, ka, kb = len(both), int(both["a"].sum()), int(both["b"].sum())
    return (
        f"seeds solved {b} {kb}/{n} {wilson(kb, n)}, {a} {ka}/{n} {wilson(ka, n)} (McNemar exact p={p:.2g})"
    )
