"""Run records -> comparison tables: which clipping, which threshold?

One row per run (flattened config + summary), grouped by the configuration keys that
vary across runs (seeds are aggregated over), from local files alone.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import NamedTuple

import pandas as pd

from gradlab import figures, records
from gradlab.config import NOT_IDENTITY, clip_knobs
from gradlab.errors import ConfigError
from gradlab.tracking import flatten

TARGETED = ("loss", "eval_loss", "eval_acc")  # the history series a --target can be reached in
SHOWN = ("eval_loss_final", "eval_acc_final", "train_loss_final", "train_loss_best")  # as mean ± std
PRIORITY = ("model.name", "task.name", "clip.mode")  # preferred grouping keys, in this order


def load_runs(paths: list) -> pd.DataFrame:
    """Every run record under `paths`, one row each; a record that is not complete and readable
    (records.load) is skipped with a one-line warning."""
    rows, from_config = [], set()
    for root in map(Path, paths):
        if not root.exists():
            raise ConfigError(f"{root}: no such file or folder")
        found = (
            [p.parent for p in sorted(root.rglob(records.SUMMARY)) if not _hidden(p.relative_to(root))]
            if root.is_dir()
            else []
        )
        if not found:
            raise ConfigError(f"{root}: no run records (summary.json) found")
        for run in found:
            try:
                summary, config = records.load(run)
            except records.Unreadable as e:
                print(f"warning: skipping {run}: unreadable record ({e})", file=sys.stderr)
                continue
            config = flatten({k: v for k, v in config.items() if k not in NOT_IDENTITY})
            rows.append({**config, **flatten(summary), "path": str(run)})
            from_config |= set(config)
    if not rows:
        raise ConfigError(f"{', '.join(map(str, paths))}: no readable run records")
    frame = pd.DataFrame(rows)
    for column in frame.columns:  # lists (e.g. model.hidden) become hashable labels
        if frame[column].map(lambda v: isinstance(v, list)).any():
            frame[column] = frame[column].map(lambda v: str(v) if isinstance(v, list) else v)
    frame.attrs["config_keys"] = from_config  # pandas carries attrs through copies and selections
    return frame


def _hidden(path: Path) -> bool:
    """Inside a folder kept out of sight: gradlab's working folder (runs being made), or the user's."""
    return any(part.startswith(".") for part in path.parts)


def config_keys(runs: pd.DataFrame) -> list[str]:
    """Columns that come from the records' config.yaml (as load_runs noted), not their summaries."""
    return [c for c in runs.columns if c in runs.attrs["config_keys"]]


def _knob_copies(keys: list[str]) -> set:
    """Top-level knobs that a clip mode reads through its own clip.<knob>: those of every clip mode
    gradlab has, and any other clip.* key in the records."""
    return clip_knobs() | {k.split(".", 1)[1] for k in keys if k.startswith("clip.")}


def effective_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """Runs that differ only in a knob their clip mode ignores (clip=none at max_norm 1 and 5) are one run."""
    keys = config_keys(runs)
    effective = [k for k in keys if k not in _knob_copies(keys)]
    return runs.loc[runs[effective].astype(str).drop_duplicates().index]


def grouping_keys(runs: pd.DataFrame) -> list[str]:
    """The configuration keys that tell runs apart, seeds aside, without redundancy.

    A top-level knob that a clip mode reads (max_norm -> clip.max_norm) is grouped by its
    clip.* copy, which is empty where the mode ignores it: so `clip=none` with several
    max_norm values is one group, not several fake ones. A key that splits runs exactly
    as the keys already chosen (model.cell beside model.name) adds nothing and is left out.
    """
    keys = [k for k in config_keys(runs) if k != "seed"]
    keys = [k for k in keys if k not in _knob_copies(keys)]
    varying = [k for k in keys if runs[k].nunique(dropna=False) > 1]
    ordered = [k for k in PRIORITY if k in varying] + sorted(k for k in varying if k not in PRIORITY)
    chosen: list[str] = []
    for key in ordered:
        if _combinations(runs, chosen + [key]) > _combinations(runs, chosen):
            chosen.append(key)
    return chosen


def _combinations(runs: pd.DataFrame, keys: list) -> int:
    return len(runs[keys].astype(str).drop_duplicates()) if keys else 1


def resolve_metric(runs: pd.DataFrame, metric: str) -> str:
    """`eval_loss` means eval_loss_final; anything else must be a known summary figure present in the runs."""
    name = figures.figure_name(metric)
    available = [m for m in figures.metrics() if m in runs.columns and runs[m].notna().any()]
    if name not in available:
        raise ConfigError(f"--metric {metric}: not in these runs; choose from {', '.join(available)}")
    return name


def check_keys(runs: pd.DataFrame, by: list[str]) -> None:
    unknown = [k for k in by if k not in config_keys(runs)]  # a summary figure (status) groups nothing
    if unknown:
        valid = ", ".join(k for k in config_keys(runs) if runs[k].nunique(dropna=False) > 1) or "(none vary)"
        raise ConfigError(f"--by {','.join(unknown)}: no such key; keys that vary here: {valid}")


def read_history(run_dir: str, columns: list) -> pd.DataFrame | None:
    """The run's per-step series (float columns), or None where it has none (failed before a step,
    salvaged)."""
    try:
        history = pd.read_csv(Path(run_dir) / "history.csv", usecols=["step", *columns], dtype=float)
    except (OSError, ValueError):
        return None
    return history if len(history) else None


def steps_to_target(path: str, metric: str, target: float) -> float | None:
    """First optimizer step at which the metric's series reaches target (nan: never; None: the
    series cannot be read)."""
    column = figures.source(metric)
    history = read_history(path, [column])
    if history is None:
        return None
    history = history.dropna()
    values = history[column].rolling(10, min_periods=1).mean() if column == "loss" else history[column]
    reached = values >= target if figures.higher_is_better(metric) else values <= target
    return float(history["step"][reached].iloc[0]) if reached.any() else math.nan


def _interval(values: pd.Series) -> float:
    """Half-width of the 95% t-interval of the mean (n >= 3), else nan."""
    values = values.dropna()
    if len(values) < 3:
        return math.nan
    from scipy import stats

    return float(stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values)))


class Comparison(NamedTuple):
    table: pd.DataFrame  # one row per group, best first (per task, when the runs are of several), raw numbers
    metric: str  # the summary figure it is sorted by
    by: list  # the grouping keys
    tasks: int = 1  # tasks among the runs: rows are ranked within each task
    members: list = ()  # per row of the table, its runs (every status)


def compare(
    runs: pd.DataFrame,
    by: list[str] | None = None,
    metric: str = "eval_loss",
    target: float | None = None,
    relative: bool = False,
    paired: bool = False,
    design: Design | None = None,
) -> Comparison:
    """Group runs, aggregate over seeds, sort by metric and mark the best group.

    Means and spreads are over completed runs; diverged, pruned and failed runs are counted. Runs of
    different tasks (losses of different kinds) are never ranked against each other: the task
    leads the grouping, and each task has its own best row. `relative`: each row's norm
    threshold over its runs' median pre-clip norm. `paired`: each row against its task's best
    row, seed by seed; under the sequential `design` its seeds followed (seed=auto), if any.
    """
    if not (runs["status"] == "completed").any():
        counts = ", ".join(f"{n} {status}" for status, n in runs["status"].value_counts().items())
        raise ConfigError(f"no completed run to compare among these {len(runs)} records ({counts})")
    metric = resolve_metric(runs, metric)
    runs = effective_runs(runs)
    by = by if by is not None else grouping_keys(runs)
    check_keys(runs, by)
    tasks = runs["task.name"].nunique() if "task.name" in runs else 1
    if tasks > 1:
        by = ["task.name", *(k for k in by if k != "task.name")]
    if relative and ("grad_norm_median" not in runs or runs["grad_norm_median"].isna().all()):
        raise ConfigError(
            "--relative: no run here records its median gradient norm (grad_norm_median); "
            "run the sweep again with --force to record it"
        )
    if target is not None and not math.isfinite(target):
        raise ConfigError(f"--target {target}: a finite number (the {metric} value to reach)")
    if target is not None and figures.source(metric) not in TARGETED:
        raise ConfigError(f"--target needs a loss or accuracy metric, not {metric}")
    if target is not None:
        steps = {
            p: steps_to_target(p, metric, target)
            for p, s in zip(runs["path"], runs["status"])
            if s == "completed"
        }
        for path in [p for p, s in steps.items() if s is None]:
            print(f"warning: skipping {path}: unreadable record (history.csv)", file=sys.stderr)
        runs = runs[runs["path"].map(lambda p: steps.get(p, math.nan) is not None)]
        runs = runs.assign(steps_to_target=runs["path"].map(lambda p: steps.get(p, math.nan)).astype(float))
    rows, members = [], []
    for labels, group in runs.groupby(by, dropna=False, sort=False) if by else [((), runs)]:
        done = group[group["status"] == "completed"]
        labels = labels if isinstance(labels, tuple) else (labels,)
        row = {key: _label(value) for key, value in zip(by, labels)}
        row.update(
            runs=len(group),
            completed=len(done),
            diverged=int((group["status"] == "diverged").sum()),
            pruned=int((group["status"] == "pruned").sum()),  # a search's pruner stopped them
            failed=int((group["status"] == "failed").sum()),
        )
        for m in [m for m in figures.metrics() if m in runs.columns]:
            row[f"{m}_mean"] = done[m].mean()
            row[f"{m}_std"] = done[m].std(ddof=1) if len(done) > 1 else math.nan
            row[f"{m}_ci95"] = _interval(done[m])
        row["grad_norm_max_max"] = done["grad_norm_max"].max() if "grad_norm_max" in done else math.nan
        if target is not None:
            reached = done["steps_to_target"].dropna()
            row["steps_to_target_mean"] = reached.mean() if len(reached) else math.nan
            row["reached_target"] = f"{len(reached)}/{len(group)}"
        if relative:
            row["relative_threshold"] = relative_threshold(group)
        rows.append(row)
        members.append(group)
    table = pd.DataFrame(rows)
    order = ["task.name"] if tasks > 1 else []
    table = table.sort_values(
        [*order, f"{metric}_mean"],
        ascending=[*(True for _ in order), not figures.higher_is_better(metric)],
        na_position="last",
    )
    members = [members[i] for i in table.index]
    table = table.reset_index(drop=True)
    ranked = table[table[f"{metric}_mean"].notna()]
    best = ranked.groupby("task.name", sort=False).head(1).index if tasks > 1 else ranked.index[:1]
    table.insert(0, "best", ["*" if i in best else "" for i in table.index])
    if paired:
        table = table.join(against_best(table, members, metric, best, design))
    return Comparison(table, metric, by, tasks, members)


def relative_threshold(group: pd.DataFrame) -> float:
    """The group's threshold on the total gradient norm (clip=norm max_norm) over the median of
    its runs' median pre-clip norms (a diverged run's too: its norms before the end), so
    c / median ||g||, where 1 means "about the norm the runs typically had". nan where the group
    does not clip the total norm at one threshold, or no run measured its norms."""
    if "clip.max_norm" not in group or "grad_norm_median" not in group or not len(group):
        return math.nan
    thresholds = group["clip.max_norm"].unique()
    if (group["clip.mode"] != "norm").any() or len(thresholds) != 1:
        return math.nan
    return float(thresholds[0]) / group["grad_norm_median"].median()


def by_seed(group: pd.DataFrame, metric: str) -> pd.Series | None:
    """A group's metric by seed over its completed runs; None when it holds several runs of a seed."""
    done = group[group["status"] == "completed"]
    return None if done["seed"].duplicated().any() else done.set_index("seed")[metric]


def against_best(table: pd.DataFrame, members: list, metric: str, best, design=None) -> pd.DataFrame:
    """Each row's paired difference to the best row of its task (row - best, over the seeds both
    completed): mean, 95% paired t interval, p-value and the number of pairs. Under a sequential
    `design` the interval is the design's repeated interval at its look (no p-value), with what it
    decides; a row whose pairs are not a look of the design is not compared."""
    from gradlab.stats import difference

    tasks = table["task.name"] if "task.name" in table else pd.Series("", index=table.index)
    best_of = {tasks[i]: i for i in best}
    rows = []
    for i in table.index:
        j = best_of.get(tasks[i])
        a, b = (None, None) if j is None else (by_seed(members[j], metric), by_seed(members[i], metric))
        if i == j or a is None or b is None:
            rows.append({})
        elif design is None:
            d = difference(a, b)
            rows.append(dict(zip(PAIRED, (d.mean, d.low, d.high, d.p, d.n))))
        else:
            rows.append(dict(zip(PAIRED + SEQUENTIAL, design.look(a, b))))
    return pd.DataFrame(rows, index=table.index, columns=PAIRED + (SEQUENTIAL if design else ()))


PAIRED = ("vs_best_mean", "vs_best_low", "vs_best_high", "vs_best_p", "vs_best_seeds")
SEQUENTIAL = ("vs_best_decision",)  # under a sequential design: different | equivalent | continue | ...
DESIGN = "seed_auto.json"  # in a seed=auto sweep's folder: the sequential design its seeds follow


class Design(NamedTuple):
    """The sequential design a seed=auto sweep follows: its batches and cap, and the smallest
    difference of its metric that matters (None: no equivalence)."""

    batch: int
    cap: int
    effect: float | None
    metric: str

    def look(self, a: pd.Series, b: pd.Series) -> tuple:
        """(mean, low, high, p, n, decision) of b - a at the seeds both have: the repeated interval
        of the look at that many seeds, or nothing compared when that is not a look."""
        from gradlab.stats import Sequential, paired

        sequential, n = Sequential(self.batch, self.cap), len(paired(a, b))
        if n not in sequential.looks():
            return (math.nan, math.nan, math.nan, math.nan, n, f"not compared: {n} paired seeds, not a look")
        look = sequential.look(a, b, self.effect)
        return (look.mean, look.low, look.high, math.nan, n, look.decision)

    def write(self, folder: Path) -> None:
        import json

        (folder / DESIGN).write_text(json.dumps(self._asdict(), indent=1) + "\n")

    @classmethod
    def of(cls, paths: list) -> Design | None:
        """The design written in the folders `paths`, if any (one: folders of different designs
        cannot be looked at together)."""
        import json

        found = {(Path(p) / DESIGN).read_text() for p in paths if (Path(p) / DESIGN).is_file()}
        if len(found) > 1:
            raise ConfigError(
                f"--paired: these folders' seeds followed different seed=auto designs ({DESIGN}); "
                "compare one folder at a time"
            )
        return cls(**json.loads(found.pop())) if found else None


def _label(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:g}" if isinstance(value, float) else str(value)


def _fmt(mean: float, std: float = math.nan, ci: float = math.nan) -> str:
    if mean is None or math.isnan(mean):
        return "-"
    text = f"{mean:.4g}"
    if not math.isnan(std):
        text += f" ± {std:.2g}"
    if not math.isnan(ci):
        text += f" [±{ci:.2g}]"
    return text


def readable(comparison: Comparison, intervals: bool = True) -> pd.DataFrame:
    """The table as text cells: mean ± std [± 95% interval] of each figure, counts, steps to target."""
    table, metric, by = comparison.table, comparison.metric, comparison.by
    shown = [metric] + [
        m for m in SHOWN if m != metric and f"{m}_mean" in table and table[f"{m}_mean"].notna().any()
    ]
    counts = ["completed", "diverged", *(["pruned"] if table["pruned"].any() else []), "failed"]
    out = table[["best", *by, "runs", *counts]].copy()
    for m in shown:
        ci = table[f"{m}_ci95"] if intervals else [math.nan] * len(table)
        out[m] = [_fmt(a, b, c) for a, b, c in zip(table[f"{m}_mean"], table[f"{m}_std"], ci)]
    if "steps_to_target_mean" in table:
        out["steps_to_target"] = [
            ("never" if math.isnan(s) else f"{s:.0f}") + f" ({r})"
            for s, r in zip(table["steps_to_target_mean"], table["reached_target"])
        ]
    if "relative_threshold" in table:
        out["max_norm/median_norm"] = [_fmt(v) for v in table["relative_threshold"]]
    if PAIRED[0] in table:
        out["vs best (paired)"] = [paired_text(row, metric) for _, row in table.iterrows()]
    plain = {
        "grad_norm_mean": "grad_norm_mean_mean",
        "grad_norm_max": "grad_norm_max_max",
        "clip_fraction": "clip_fraction_mean",
        "steps_per_s": "steps_per_s_mean",
    }
    for name, column in plain.items():
        if name not in out:  # the sort metric keeps its mean ± std
            out[name] = [_fmt(v) for v in table[column]]
    return out


def paired_text(row, metric: str) -> str:
    """`+0.012 [+0.003, +0.021] p=0.02 (3 seeds): worse`; the best row says so."""
    if row["best"] == "*":
        return "best"
    mean, low, high, p, n = (row[c] for c in PAIRED)
    unpaired = f"; {row['diverged']} diverged, not paired" if row["diverged"] else ""
    if math.isnan(n):
        return "-"
    if SEQUENTIAL[0] in row:
        decided = row[SEQUENTIAL[0]]
        interval = f"{mean:+.3g} [{low:+.3g}, {high:+.3g}] ({n:.0f} seeds{unpaired})"
        return decided if math.isnan(mean) else f"{interval}: {decided}"
    if n < 2:
        return f"n/a ({n:.0f} shared seeds{unpaired})"
    worse = mean > 0 if not figures.higher_is_better(metric) else mean < 0
    tell = "indistinguishable" if low <= 0 <= high else "worse" if worse else "better"
    return f"{mean:+.3g} [{low:+.3g}, {high:+.3g}] p={p:.2g} ({n:.0f} seeds{unpaired}): {tell}"


def caption(comparison: Comparison) -> str:
    ranked = (
        f"ranked within each task ({comparison.tasks} tasks: their losses are not comparable); "
        "* = best of its task"
        if comparison.tasks > 1
        else "* = best"
    )
    return (
        f"Sorted by {comparison.metric}; {ranked}. Figures: mean ± std over completed runs "
        "[± half-width of the 95% t-interval when n >= 3]; diverged"
        + (", pruned" if comparison.table["pruned"].any() else "")
        + " and failed runs are counted, not averaged."
        + (
            " max_norm/median_norm: the threshold over the median of its runs' median pre-clip "
            "gradient norms."
            if "relative_threshold" in comparison.table
            else ""
        )
        + (
            " vs best (paired): this row minus the best row of its task, seed by seed over the seeds both "
            "completed, with the 95% paired t interval and p-value; indistinguishable when the "
            "interval holds 0."
            if PAIRED[0] in comparison.table and SEQUENTIAL[0] not in comparison.table
            else ""
        )
        + (
            " vs best (paired): this row minus the best row of its task, seed by seed, with the "
            f"repeated 95% interval of the seed=auto design its seeds followed ({DESIGN}): different "
            "when it excludes 0, equivalent when it lies within the design's effect, otherwise "
            "continue (more seeds) or undecided (at the cap)."
            if SEQUENTIAL[0] in comparison.table
            else ""
        )
    )


def to_markdown(cells: pd.DataFrame) -> str:
    header = "| " + " | ".join(cells.columns) + " |"
    rule = "|" + "|".join("---" for _ in cells.columns) + "|"
    body = ["| " + " | ".join(str(v) for v in row) + " |" for row in cells.itertuples(index=False)]
    return "\n".join([header, rule, *body]) + "\n"


def to_latex(cells: pd.DataFrame) -> str:
    return cells.to_latex(index=False, escape=True)


def write(comparison: Comparison, cells: pd.DataFrame, out: Path, formats: list[str]) -> list[Path]:
    """comparison.md / .csv (raw numbers) / .tex beside the runs."""
    table = comparison.table
    writers = {
        "md": lambda p: p.write_text(f"{caption(comparison)}\n\n{to_markdown(cells)}"),
        "csv": lambda p: table.to_csv(p, index=False),
        "latex": lambda p: p.write_text(to_latex(cells)),
    }
    suffix = {"md": "md", "csv": "csv", "latex": "tex"}
    written = []
    try:
        out.mkdir(parents=True, exist_ok=True)
        for fmt in formats:
            path = out / f"comparison.{suffix[fmt]}"
            records.atomic_write(path, writers[fmt])
            written.append(path)
    except OSError as e:
        raise ConfigError(f"--out {out}: cannot write there ({e.strerror or e})") from None
    return written
