"""The run record's vocabulary, declared once: every per-step figure, where it is computed, its
history.csv column, its W&B keys and how a log interval summarises it, and the summary figures
reduced from it over the run (with which way is better, for comparisons and searches).

A per-step figure `on="device"` is computed by the step (gradlab.step.finish_step) and returned
by name as a device tensor; the host reads all of an interval's at once. `on="host"` figures
follow from those on the host (gradlab.step.read) or from the loop (lr, evaluation, timing).
Adding a figure is one row here and the line that computes it: history.csv, W&B, the summary,
`gradlab compare` and the Lightning callback take it from this table.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import pandas as pd

# a loss spike: a step above 1.5x the median of the previous 50 steps (at least 10: counted from step 11 on)
SPIKE_FACTOR, SPIKE_WINDOW, SPIKE_MIN = 1.5, 50, 10
EARLY = 100  # steps of grad_norm_median_early: the model's own norms, before clipping shaped much of the run


class Figure(NamedTuple):
    column: str  # the history.csv column
    on: str  # device: the step computes it | host: derived on the host, or by the loop
    wandb: dict = {}  # W&B key of each log interval's point -> how the interval summarises it (INTERVAL)
    summary: dict = {}  # summary figure -> (how the run's history reduces to it (REDUCE), lower | higher)
    optional: bool = (
        False  # a task may not have it (eval_acc of a regression): nan is its absence, not logged
    )


FIGURES = (
    Figure(
        "loss",
        "device",
        {"train/loss": "mean"},
        {
            "train_loss_final": ("final10", "lower"),
            "train_loss_best": ("best10", "lower"),
            "loss_spikes": ("spikes", "lower"),
        },
    ),
    Figure(
        "grad_norm",
        "device",
        {"grad/norm": "mean", "grad/norm_max": "max"},
        {
            "grad_norm_mean": ("mean", "lower"),
            "grad_norm_median": ("median", "lower"),
            "grad_norm_median_early": ("median_early", "lower"),
            "grad_norm_max": ("max", "lower"),
        },
    ),
    Figure("grad_norm_clipped", "device", {"grad/norm_clipped": "mean"}),
    Figure("clipped", "device", {"clip/fraction_interval": "share"}, {"clip_fraction": ("share", "lower")}),
    Figure("scaler_skipped", "host", {"scaler/skipped": "sum"}, {"scaler_skips": ("count", "lower")}),
    Figure("smoothness", "device"),
    Figure("smoothness_grad_norm", "device"),
    Figure("spike_skipped", "device", {"spikes/skipped": "sum"}, {"spike_skips": ("count", "lower")}),
    Figure("clip_coef", "host", {"clip/coef": "mean"}),
    Figure("clip_fraction", "host", {"clip/fraction": "last"}),
    Figure("lr", "host", {"lr": "last"}),
    Figure(
        "eval_loss",
        "host",
        {"eval/loss": "latest"},
        {"eval_loss_final": ("final", "lower"), "eval_loss_best": ("min", "lower")},
    ),
    Figure(
        "eval_acc",
        "host",
        {"eval/acc": "latest"},
        {"eval_acc_final": ("final", "higher"), "eval_acc_best": ("max", "higher")},
        optional=True,
    ),
    Figure("time_s", "host", {}, {"steps_per_s": ("rate", "higher")}),
    Figure("steps_per_s", "host", {"perf/steps_per_s": "last"}),
    Figure("samples_per_s", "host", {"perf/samples_per_s": "last"}),
)

LAYER_COLUMNS = ["step", "layer", "grad_norm", "update_ratio", "clip_fraction"]  # layer_norms.csv's


def columns() -> list[str]:
    """history.csv's columns."""
    return ["step", *(f.column for f in FIGURES)]


def on_device() -> list[str]:
    """The figures the step computes, by name."""
    return [f.column for f in FIGURES if f.on == "device"]


def metrics() -> dict[str, str]:
    """Summary figure -> lower | higher: what `gradlab compare`, plots and searches rank by."""
    return {name: better for f in FIGURES for name, (_, better) in f.summary.items()}


def higher_is_better(name: str) -> bool:
    return metrics().get(name) == "higher"


def source(name: str) -> str | None:
    """The history column a summary figure is reduced from."""
    return next((f.column for f in FIGURES if name in f.summary), None)


def figure_name(metric: str) -> str:
    """`eval_loss` -> eval_loss_final: a metric without a suffix is its final value."""
    return metric if metric in metrics() else f"{metric}_final"


# --- a log interval's rows (history dicts) -> one W&B point


def _finite_mean(values: list) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else math.nan


INTERVAL = {
    "mean": _finite_mean,  # of the finite values
    "max": max,
    "sum": sum,
    "share": lambda values: sum(values) / len(values),
    "last": lambda values: values[-1],
    "latest": lambda values: values[-1],  # of the rows that have it (an evaluation)
}


def interval_point(rows: list) -> dict:
    """The W&B point of the rows of one log interval, at the last row's step."""
    point = {"step": rows[-1]["step"]}
    for f in FIGURES:
        values = [r[f.column] for r in rows if f.column in r]
        if f.optional:
            values = [v for v in values if not math.isnan(v)]
        if values:
            point.update({key: INTERVAL[how](values) for key, how in f.wandb.items()})
    return point


# --- a run's history -> its summary figures


def _finite(h: pd.DataFrame) -> pd.DataFrame:
    """The steps whose loss is finite."""
    return h[h["loss"].map(math.isfinite)]


def _finite_values(h: pd.DataFrame, column: str) -> pd.Series:
    """The finite values of a column on the finite steps (fp16: an overflowed step has no norm)."""
    values = _finite(h)[column]
    return values[values.map(math.isfinite)]


def _spikes(h: pd.DataFrame, column: str) -> int:
    values = _finite(h)[column]
    trailing_median = values.rolling(SPIKE_WINDOW, min_periods=SPIKE_MIN).median().shift(1)
    return int((values > SPIKE_FACTOR * trailing_median).sum())


REDUCE = {
    "final10": lambda h, c: _finite(h)[c].tail(10).mean(),  # the mean of the last 10 finite steps
    "best10": lambda h, c: _finite(h)[c].rolling(10, min_periods=1).mean().min(),  # best 10-step mean
    "spikes": _spikes,
    "mean": lambda h, c: _finite(h)[c].mean(),
    "median": lambda h, c: _finite_values(h, c).median(),
    "median_early": lambda h, c: (v := _finite_values(h, c))[h.loc[v.index, "step"] <= EARLY].median(),
    "max": lambda h, c: _finite(h)[c].max(),
    "min": lambda h, c: h[c].min(),
    "share": lambda h, c: h[c].mean(),  # of every step
    "count": lambda h, c: int(h[c].sum()),
    "final": lambda h, c: h[c].dropna().iloc[-1],
    "rate": lambda h, c: h["step"].iloc[-1] / h[c].iloc[-1],  # steps per unit of the column
}


def summary(history: list) -> dict:
    """The run's summary figures from its history rows; a figure whose column the run never
    recorded (no evaluation, no timing) is left out."""
    h = pd.DataFrame(history, columns=columns())
    if h.empty:
        return {"steps_done": 0}
    figures = {"steps_done": int(h["step"].iloc[-1])}
    for f in FIGURES:
        if f.summary and h[f.column].notna().any():
            for name, (how, _) in f.summary.items():
                value = REDUCE[how](h, f.column)
                figures[name] = value if isinstance(value, int) else _number(value)
    return figures


def _number(x) -> float | None:
    return round(float(x), 6) if x is not None and math.isfinite(x) else None
