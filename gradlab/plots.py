"""PNG plots of a comparison (matplotlib, headless): curves per group, the distribution of the
gradient norm with the thresholds, and the metric, clip fraction and success rate against the
threshold.

Curves show the median over a group's runs (seeds) with a min-max band, smoothed by a
rolling mean over `SMOOTH` steps; gradient norms on a log scale with each group's
threshold drawn as a dashed line. Against the threshold: the median and interquartile range
over completed seeds (losses on a log axis), and success rates with Wilson intervals.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from gradlab import records
from gradlab.compare import Comparison, _label, effective_runs, read_history
from gradlab.figures import higher_is_better

SMOOTH = 10  # steps of the rolling mean applied to per-step series
SERIES = ("loss", "grad_norm", "grad_norm_clipped", "clip_fraction")


def group_name(row, by: list) -> str:
    """`norm max_norm=5` from a run's grouping values (`-`, irrelevant knobs, left out)."""
    parts = []
    for key in by:
        value = _label(row[key])
        if value != "-":
            parts.append(
                value if key in ("clip.mode", "model.name", "task.name") else f"{key.split('.')[-1]}={value}"
            )
    return " ".join(parts) or "all runs"


def _histories(runs: pd.DataFrame, by: list) -> pd.DataFrame:
    """Per-step series of every run that has any, smoothed, with its group's name."""
    frames = []
    for _, run in runs.iterrows():
        history = read_history(run["path"], list(SERIES))
        if history is None:
            continue
        smooth = history[["loss", "grad_norm", "grad_norm_clipped"]].rolling(SMOOTH, min_periods=1).mean()
        frames.append(
            history.assign(
                **smooth, grad_norm_raw=history["grad_norm"], group=group_name(run, by), path=run["path"]
            )
        )
    if not frames:
        from gradlab.errors import ConfigError

        raise ConfigError("none of these runs has a history to plot (all failed before their first step)")
    return pd.concat(frames, ignore_index=True)


def _band(ax, curves: pd.DataFrame, column: str, color, label: str) -> None:
    per_step = curves.pivot_table(index="step", columns="path", values=column)
    ax.plot(per_step.index, per_step.median(axis=1), color=color, label=label, linewidth=1.4)
    if per_step.shape[1] > 1:
        ax.fill_between(per_step.index, per_step.min(axis=1), per_step.max(axis=1), color=color, alpha=0.2)


def plot(comparison: Comparison, runs: pd.DataFrame, out: Path, target: float | None = None) -> list[Path]:
    """curves.png (loss, pre-/post-clip norms, clip fraction) and norms.png (the distribution of the
    pre-clip norm over training, with the thresholds); when a threshold varies, threshold.png (the
    metric and the clip fraction against it) and, with a target, success.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by = comparison.by
    runs = effective_runs(runs)
    curves = _histories(runs, by)
    groups = list(dict.fromkeys(group_name(r, by) for _, r in comparison.table.iterrows()))
    colors = dict(zip(groups, plt.get_cmap("tab10" if len(groups) <= 10 else "tab20").colors))

    fig, axes = plt.subplots(2, 2, figsize=(12, 8.5), constrained_layout=True)
    panels = [
        ("loss", "train loss (MSE or cross-entropy)", "Training loss"),
        ("grad_norm", "total gradient norm", "Gradient norm before clipping"),
        ("grad_norm_clipped", "total gradient norm", "Gradient norm after clipping"),
        ("clip_fraction", "fraction of steps clipped so far", "Clip fraction"),
    ]
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
    written.append(
        _save(norm_distribution(comparison, curves, _thresholds(runs, by), plt), out / "norms.png")
    )
    x = threshold_axis(comparison)
    if x is not None:
        written.append(_save(threshold_chart(comparison, x, plt), out / "threshold.png"))
        if target is not None:
            written.append(_save(success_chart(comparison, x, target, plt), out / "success.png"))
    plt.close("all")
    return written


def _thresholds(runs: pd.DataFrame, by: list) -> dict:
    """Group name -> its norm-clipping threshold, for groups that clip by norm."""
    if "clip.max_norm" not in runs:
        return {}
    norm = runs[runs["clip.max_norm"].notna()]
    return {group_name(r, by): r["clip.max_norm"] for _, r in norm.iterrows()}


QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)  # the bands of norms.png: 5-95% and 25-75%, and the median
INTERVALS = 25  # step intervals of norms.png


def norm_distribution(comparison: Comparison, curves: pd.DataFrame, thresholds: dict, plt):
    """One panel per group: the quantiles of the pre-clip norm (raw, every step of every seed) per
    step interval, and every threshold of the sweep with the share of this group's steps above it."""
    groups = [group_name(r, comparison.by) for _, r in comparison.table.iterrows()]
    cols = min(3, len(groups))
    rows = math.ceil(len(groups) / cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(4.6 * cols, 4.4 * rows), sharey=True, squeeze=False, constrained_layout=True
    )
    levels = sorted(set(thresholds.values()))
    for ax, name in zip(axes.flat, groups):
        norms = curves.loc[curves["group"] == name, ["step", "grad_norm_raw"]].rename(
            columns={"grad_norm_raw": "grad_norm"}
        )
        norms = norms[norms["grad_norm"].map(math.isfinite) & (norms["grad_norm"] > 0)]  # a log axis
        if norms.empty:
            ax.set_title(f"{name}: no finite norms", fontsize=9)
            continue
        edges = pd.cut(norms["step"], min(INTERVALS, norms["step"].nunique()))
        bands = norms.groupby(edges, observed=True)["grad_norm"].quantile(QUANTILES).unstack()
        middle = [interval.mid for interval in bands.index]
        ax.fill_between(middle, bands[0.05], bands[0.95], color="C0", alpha=0.15, label="5-95%")
        ax.fill_between(middle, bands[0.25], bands[0.75], color="C0", alpha=0.35, label="25-75%")
        ax.plot(middle, bands[0.5], color="C0", linewidth=1.3, label="median")
        for i, level in enumerate(levels):
            above = (norms["grad_norm"] > level).mean()
            own = thresholds.get(name) == level
            ax.axhline(
                level,
                color=f"C{i + 1}",
                linestyle="-" if own else "--",
                linewidth=1.6 if own else 1,
                label=f"{level:g}: {above:.0%} of steps above",
            )
        ax.set_yscale("log")
        ax.set_title(name, fontsize=10)
        ax.set(xlabel="optimizer step")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2, frameon=False)
    for ax in axes[:, 0]:
        ax.set_ylabel("pre-clip gradient norm")
    for ax in axes.flat[len(groups) :]:
        ax.set_visible(False)
    width = curves["step"].max() / min(INTERVALS, curves["step"].nunique())
    fig.suptitle(
        f"Distribution of the gradient norm before clipping, per {width:.0f}-step interval over all seeds "
        "(diverged ones up to their end); solid line: the group's own threshold",
        fontsize=10,
    )
    return fig


def threshold_axis(comparison: Comparison) -> pd.Series | None:
    """Each row's threshold (clip_value, max_norm or the like; with --relative, max_norm over the
    median norm); None when no row has one."""
    table, by = comparison.table, comparison.by
    if "relative_threshold" in table:
        x = table["relative_threshold"]
        return x if x.notna().any() else None
    knobs = [k for k in by if k.startswith("clip.") and k != "clip.mode"]
    if not knobs:
        return None
    x = pd.concat([pd.to_numeric(table[k], errors="coerce") for k in knobs], axis=1).max(axis=1)
    return x if x.notna().any() else None


def _lines(comparison: Comparison, x: pd.Series) -> dict:
    """Line name (the grouping values other than the threshold) -> its rows' indices, by threshold."""
    others = [k for k in comparison.by if not (k.startswith("clip.") and k != "clip.mode")]
    names = [group_name(r, others) for _, r in comparison.table.iterrows()]
    lines: dict = {}
    for i, name in enumerate(names):
        lines.setdefault(name, []).append(i)
    return {
        name: sorted(rows, key=lambda i: x[i] if math.isfinite(x[i]) else -math.inf)
        for name, rows in lines.items()
    }


def _reference(comparison: Comparison, rows: list) -> bool:
    """Are these rows (a line without thresholds) clip=none, the reference the thresholds are judged
    against? Other modes without a threshold on this axis (clip=value under --relative) are left out."""
    table = comparison.table
    return "clip.mode" in table and (table.loc[rows, "clip.mode"] == "none").all()


def _completed(comparison: Comparison, i: int, figure: str) -> pd.Series:
    runs = comparison.members[i]
    return runs.loc[runs["status"] == "completed", figure].dropna()


def _colored_lines(comparison: Comparison, x: pd.Series):
    """(name, rows, color) per line, in the same colours on every chart."""
    from matplotlib import colormaps

    return [
        (name, rows, color)
        for (name, rows), color in zip(_lines(comparison, x).items(), colormaps["tab10"].colors * 3)
    ]


def _draw_line(ax, comparison: Comparison, rows: list, points: list, color, label: str) -> bool:
    """One line of (threshold, centre, low, high) points, one per row, with its interval as error
    bars. A line without thresholds is drawn as a horizontal line and band if it is the reference
    (clip=none), else not at all. Whether it was drawn against the threshold."""
    at = [p for p in points if math.isfinite(p[0])]
    if not at:
        if _reference(comparison, rows):
            _, centre, low, high = points[0]
            ax.axhline(centre, linestyle="--", color=color, label=label)
            ax.axhspan(low, high, color=color, alpha=0.12)
        return False
    ax.errorbar(
        [p[0] for p in at],
        [p[1] for p in at],
        yerr=[[p[1] - p[2] for p in at], [p[3] - p[1] for p in at]],
        marker="o",
        capsize=3,
        color=color,
        label=label,
    )
    return True


def _spread(ax, comparison: Comparison, x: pd.Series, figure: str, log: bool) -> None:
    """Per line: the median over seeds with the interquartile range, and each seed's value as a dot;
    a row without a threshold (clip=none) as a horizontal line and band."""
    for name, rows, color in _colored_lines(comparison, x):
        values = [_completed(comparison, i, figure) for i in rows]
        if log:
            values = [v[v > 0] for v in values]
        quartiles = [v.quantile([0.25, 0.5, 0.75]).tolist() if len(v) else [math.nan] * 3 for v in values]
        points = [(x[i], mid, low, high) for i, (low, mid, high) in zip(rows, quartiles)]
        if _draw_line(ax, comparison, rows, points, color, f"{name} (median, IQR)"):
            for i, v in zip(rows, values):
                if math.isfinite(x[i]):
                    ax.scatter([x[i]] * len(v), v, s=10, color=color, alpha=0.4, linewidths=0)
    if log:
        ax.set_yscale("log")


def _threshold_ticks(ax, x: pd.Series, relative: bool) -> None:
    """A log axis with a tick at each threshold of a grid; the usual log ticks where the thresholds
    crowd (a search's: many, close together)."""
    ax.set_xscale("log")
    ticks = sorted(set(v for v in x if math.isfinite(v)))
    if len(ticks) <= 10 and all(b / a >= 1.3 for a, b in zip(ticks, ticks[1:])):
        ax.set_xticks(ticks, [f"{t:.2g}" if relative else f"{t:g}" for t in ticks])
        ax.minorticks_off()
    ax.set_xlabel(
        "threshold / median pre-clip gradient norm of its runs"
        if relative
        else "clipping threshold (max_norm or clip_value)"
    )
    ax.grid(alpha=0.3, which="both")


def threshold_chart(comparison: Comparison, x: pd.Series, plt):
    """The final metric against the threshold (log x; log y for a loss), and the clip fraction against it."""
    metric, relative = comparison.metric, "relative_threshold" in comparison.table
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.6), constrained_layout=True)
    values = pd.concat([_completed(comparison, i, metric) for i in comparison.table.index])
    log = not higher_is_better(metric) and "loss" in metric and (values > 0).all()
    _spread(left, comparison, x, metric, log)
    better = "higher" if higher_is_better(metric) else "lower"
    left.set(ylabel=f"{metric} ({better} is better)", title=f"{metric} against the threshold")
    _spread(right, comparison, x, "clip_fraction", False)
    right.set(ylabel="share of steps clipped", title="How often the threshold bites", ylim=(-0.03, 1.03))
    for ax in (left, right):
        _threshold_ticks(ax, x, relative)
        ax.legend(fontsize=8)
    fig.suptitle("Median and interquartile range over the completed seeds; dots: one seed each", fontsize=10)
    return fig


def success_chart(comparison: Comparison, x: pd.Series, target: float, plt):
    """The share of seeds (diverged and failed ones count as not reaching) whose metric reached the
    target, against the threshold, with Wilson 95% intervals."""
    from gradlab.stats import wilson_interval

    metric, relative = comparison.metric, "relative_threshold" in comparison.table
    fig, ax = plt.subplots(figsize=(7, 4.6), constrained_layout=True)
    for name, rows, color in _colored_lines(comparison, x):
        shares = []
        for i in rows:
            runs = comparison.members[i]
            k = int(((runs["status"] == "completed") & runs["steps_to_target"].notna()).sum())
            shares.append((x[i], k / len(runs), *wilson_interval(k, len(runs))))
        _draw_line(ax, comparison, rows, shares, color, name)
    _threshold_ticks(ax, x, relative)
    ax.set(
        ylim=(-0.03, 1.03),
        ylabel=f"share of seeds reaching {metric.rsplit('_', 1)[0]} {target:g}",
        title="Seeds that reached the target, with Wilson 95% intervals",
    )
    ax.legend(fontsize=8)
    return fig


def _save(fig, path: Path) -> Path:
    records.atomic_write(path, lambda p: fig.savefig(p, dpi=110, format="png"))
    return path
