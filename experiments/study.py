"""What every reproduced study shares: running its sweeps, tabulating them, writing its report.

A study is a module in experiments/ with NAME, CLAIM, SOURCE, SCALES (smoke | quick | full
-> its sizes) and `run(lab, size) -> list of verdict lines`. Its sweeps go through the
normal sweep machinery (`gradlab sweep`), so re-running a study reuses finished runs;
its verdict is computed from the comparison tables, never written by hand.
"""

from __future__ import annotations

import platform
import shlex
import time
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from gradlab.compare import Comparison, compare, load_runs, readable, to_markdown, write

SCALES = ("smoke", "quick", "full")


class Lab:
    """A study's working folder: <root>/<study>/<scale>/<sweep label>/<run>/..."""

    def __init__(self, study, scale: str, root: Path, extra: list[str] = ()):
        self.study, self.scale, self.extra = study, scale, list(extra)
        self.dir = Path(root) / study.NAME / scale
        self.commands: list[str] = []
        self.sections: list[tuple[str, str, Comparison]] = []  # (label, note, comparison)

    def sweep(self, label: str, *arms: list[str]) -> pd.DataFrame:
        """Run each arm (a list of overrides, comma lists allowed) into one sweep folder; return its
        runs (only these: runs of other settings that the folder may hold are left out)."""
        from gradlab import launch

        runs = []
        for arm in arms:
            overrides = [*arm, *self.extra, f"name={label}", f"results_root={self.dir}"]
            self.commands.append("gradlab sweep " + " ".join(shlex.quote(o) for o in overrides))
            runs += launch.sweep(overrides).runs
        return load_runs(list(dict.fromkeys(runs)))

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
    """Run a study at a scale (extra overrides go to every sweep) and write its report.md; returns its path."""
    lab = Lab(study, scale, root, extra)
    start = time.perf_counter()
    verdict = study.run(lab, study.SCALES[scale])
    return write_report(study, lab, verdict, time.perf_counter() - start)


def write_report(study, lab: Lab, verdict: list[str], wall_s: float) -> Path:
    import torch

    import gradlab

    lines = [f"# {study.NAME} ({lab.scale} scale)", "", f"**Claim.** {study.CLAIM}", "",
             f"**Source.** {study.SOURCE}", "", "## Verdict (computed from the tables below)", ""]
    lines += [f"- {line}" for line in verdict]
    command = " ".join(["gradlab reproduce", study.NAME, "--scale", lab.scale, *map(shlex.quote, lab.extra)])
    lines += ["", "## Setup", "", f"Reproduce: `{command}`, which runs:", "",
              "```", *lab.commands, "```", "",
              f"Made {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC on {platform.machine()} "
              f"({platform.processor() or 'cpu'}, {torch.get_num_threads()} threads"
              f"{', ' + torch.cuda.get_device_name() if torch.cuda.is_available() else ''}); "
              f"gradlab {gradlab.__version__}, torch {torch.__version__}, python {platform.python_version()}; "
              f"wall time {wall_s / 60:.1f} min (finished runs reused when re-run).", ""]
    for label, note, comparison in lab.sections:
        lines += [f"## {label}", ""] + ([note, ""] if note else [])
        lines += [to_markdown(readable(comparison)), f"![{label}]({label}/curves.png)", ""]
        if (lab.dir / label / "threshold.png").exists():
            lines += [f"![{label}: final metric against the threshold]({label}/threshold.png)", ""]
    path = lab.dir / "report.md"
    path.write_text("\n".join(lines))
    return path


def arms(comparison: Comparison) -> dict:
    """Table rows by arm label: the clip mode with its knob values (`none`, `norm1`, `value0.5`),
    then `key=value` for the other grouping keys (`norm1 lr=0.001`, `accum_steps=4 mistake=-`)."""
    table, by = comparison.table, comparison.by
    labelled = {}
    for _, r in table.iterrows():
        clip = [r["clip.mode"] + "".join(r[k] for k in by if k.startswith("clip.") and k != "clip.mode" and r[k] != "-")
                ] if "clip.mode" in by else []
        others = [f"{k.split('.')[-1]}={r[k]}" for k in by if not k.startswith("clip.")]
        labelled[" ".join(clip + others)] = r
    return labelled


def reached(r: pd.Series) -> float:
    """Share of the arm's runs that reached the target."""
    k, n = r["reached_target"].split("/")
    return int(k) / int(n) if int(n) else 0.0


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


def within_noise(candidate: pd.Series, rows, figure: str) -> bool:
    """Is candidate's mean of a (lower-is-better) figure within noise of the best row's?

    Noise: twice the best row's seed std, and at least 0.5% of its value."""
    best = min(rows, key=lambda r: r[f"{figure}_mean"])
    spread = best[f"{figure}_std"] if best[f"{figure}_std"] == best[f"{figure}_std"] else 0.0  # nan: one seed
    return candidate[f"{figure}_mean"] <= best[f"{figure}_mean"] + max(2 * spread, 0.005 * abs(best[f"{figure}_mean"]))


def judge(arm: dict, claimed: list, what: str) -> str:
    """Inconclusive when no arm reaches the target; otherwise, does every claimed arm reach it in
    a majority of seeds, at least as often as no clipping, without diverging?"""
    if not any(reached(r) for r in arm.values()):
        return "No arm reaches the target at this scale: inconclusive."
    if all(reached(r) >= max(reached(arm["none"]), 0.5) and r["diverged"] == 0 for r in claimed):
        return f"{what} reach the target in most seeds, at least as often as no clipping, and never diverge: the claim holds here."
    return f"{what} reach the target less often than no clipping or in few seeds, or diverge: the claim does not hold here."


def outcomes(arm: dict, extra=lambda r: "") -> str:
    """`none 2/3, norm1 3/3 (1 diverged), ...`: seeds reaching the target per arm."""
    return ", ".join(f"{name} {r['reached_target']}{extra(r)}" + (f" ({r['diverged']} diverged)" if r["diverged"] else "")
                     for name, r in arm.items())


def growth(gaps: dict, subject: str, measurable: bool) -> str:
    """The verdict line on whether clipping's advantage grows with the sequence length T."""
    if not measurable:
        return "Whether clipping matters more as T grows cannot be told: no arm reached the target."
    short, long = min(gaps), max(gaps)
    return (f"Advantage of {subject} over no clipping (share of seeds reaching the target): "
            f"{gaps[short]:+.2f} at T={short}, {gaps[long]:+.2f} at T={long}: "
            + ("clipping matters more at the longer sequence." if gaps[long] > gaps[short] else
               "no sign here that clipping matters more as T grows."))
