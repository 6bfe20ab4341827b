"""PNG plots of a comparison (matplotlib, headless): curves per group and the threshold chart.

Curves show the median over a group's runs (seeds) with a min-max band, smoothed by a
rolling mean over `SMOOTH` steps; gradient norms on a log scale with each group's
threshold drawn as a dashed line.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from gradlab import records
from gradlab.compare import HIGHER_IS_BETTER, Comparison, _label, effective_runs, read_history

SMOOTH = 10  # steps of the rolling mean applied to per-step series
SERIES = ("loss", "grad_norm", "grad_norm_clipped", "clip_fraction")


def group_name(row, by: list) -> str:
    """`norm max_norm=5` from a run's grouping values (`-`, irrelevant knobs, left out)."""
    parts = []
    for key in by:
        value = _label(row[key])
        if value != "-":
            parts.append(value if key in ("clip.mode", "model.name", "task.name") else f"{key.split('.')[-1]}={value}")
    return " ".join(parts) or "all runs"


def _histories(runs: pd.DataFrame, by: list) -> pd.DataFrame:
    """Per-step series of every run that has any, smoothed, with its group's name."""
    frames = []
    for _, run in runs.iterrows():
        history = read_history(run["path"], list(SERIES))
        if history is None:
            continue
        smooth = history[["loss", "grad_norm", "grad_norm_clipped"]].rolling(SMOOTH, min_periods=1).mean()
        frames.append(history.assign(**smooth, group=group_name(run, by), path=run["path"]))
    if not frames:
        from gradlab.errors import ConfigError

        raise ConfigError("none of these runs has a history to plot (all failed before their first step)")
    return pd.concat(frames, ignore_index=True)


def _band(ax, curves: pd.DataFrame, column: str, color, label: str) -> None:
    per_step = curves.pivot_table(index="step", columns="path", values=column)
    ax.plot(per_step.index, per_step.median(axis=1), color=color, label=label, linewidth=1.4)
    if per_step.shape[1] > 1:
        ax.fill_between(per_step.index, per_step.min(axis=1), per_step.max(axis=1), color=color, alpha=0.2)


def plot(comparison: Comparison, runs: pd.DataFrame, out: Path) -> list[Path]:
    """curves.png (loss, pre-/post-clip norms, clip fraction) and, when a threshold varies, threshold.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by = comparison.by
    runs = effective_runs(runs)
    curves = _histories(runs, by)
    groups = list(dict.fromkeys(group_name(r, by) for _, r in comparison.table.iterrows()))
    colors = dict(zip(groups, plt.get_cmap("tab10" if len(groups) <= 10 else "tab20").colors))

    fig, axes = plt.subplots(2, 2, figsize=(12, 8.5), constrained_layout=True)
    panels = [("loss", "train loss (MSE or cross-entropy)", "Training loss"),
              ("grad_norm", "total gradient norm", "Gradient norm before clipping"),
              ("grad_norm_clipped", "total gradient norm", "Gradient norm after clipping"),
              ("clip_fraction", "fraction of steps clipped so far", "Clip fraction")]
    for ax, (column, ylabel, title) in zip(axes.flat, panels):
        for name in groups:
            _band(ax, curves[curves["group"] == name], column, colors[name], name)
        if column != "clip_fraction" and (curves[column] > 0).all():
            ax.set_yscale("log")
        ax.set(title=title, xlabel="optimizer step", ylabel=ylabel)
        ax.grid(alpha=0.3)
    for ax in axes.flat[1:3]:  # the thresholds of the norm-clipping groups
        for name, threshold in _thresholds(runs, by).items():
            ax.axhline(threshold, color=colors[name], linestyle="--", linewidth=1)
    axes.flat[0].legend(fontsize=8, title=f"median, min-max band; {SMOOTH}-step mean")
    fig.suptitle(f"{runs['sweep'].iloc[0] if runs['sweep'].nunique() == 1 else 'runs'}: {len(runs)} runs")
    written = [_save(fig, out / "curves.png")]

    chart = threshold_chart(comparison, plt)
    if chart is not None:
        written.append(_save(chart, out / "threshold.png"))
    plt.close("all")
    return written


def _thresholds(runs: pd.DataFrame, by: list) -> dict:
    """Group name -> its norm-clipping threshold, for groups that clip by norm."""
    if "clip.max_norm" not in runs:
        return {}
    norm = runs[runs["clip.max_norm"].notna()]
    return {group_name(r, by): r["clip.max_norm"] for _, r in norm.iterrows()}


def threshold_chart(comparison: Comparison, plt):
    """Final metric against the clipping threshold, one line per clip mode (log x); None without thresholds."""
    table, metric, by = comparison.table, comparison.metric, comparison.by
    knobs = [k for k in by if k.startswith("clip.") and k != "clip.mode"]
    if not knobs:
        return None
    others = [k for k in by if k not in knobs]
    fig, ax = plt.subplots(figsize=(7, 4.5), constrained_layout=True)
    colors = iter(plt.get_cmap("tab10").colors * 3)
    thresholds = set()
    for name, rows in table.groupby([group_name(r, others) for _, r in table.iterrows()], sort=False):
        x = pd.concat([pd.to_numeric(rows[k], errors="coerce") for k in knobs], axis=1).max(axis=1)
        mean, std = rows[f"{metric}_mean"], rows[f"{metric}_std"].fillna(0)
        if x.notna().any():
            order = x.sort_values().index
            ax.errorbar(x[order], mean[order], yerr=std[order], marker="o", capsize=3, label=name, color=next(colors))
            thresholds |= set(x.dropna())
        elif not math.isnan(mean.iloc[0]):  # a mode without a threshold (none): a reference line
            ax.axhline(mean.iloc[0], linestyle="--", label=name, color=next(colors))
    ax.set_xscale("log")
    ax.set_xticks(sorted(thresholds), [f"{t:g}" for t in sorted(thresholds)])
    ax.minorticks_off()
    better = "higher" if metric in HIGHER_IS_BETTER else "lower"
    ax.set(xlabel="clipping threshold (max_norm or clip_value)", ylabel=f"{metric} ({better} is better)",
           title=f"{metric} against the clipping threshold (mean ± std over seeds)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return fig


def _save(fig, path: Path) -> Path:
    records.atomic_write(path, lambda p: fig.savefig(p, dpi=110, format="png"))
    return path
