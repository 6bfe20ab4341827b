"""The run record's schema (gradlab/figures.py): a per-step figure declared there, and computed by
one line of the step, reaches history.csv, the summary, what wandb wrote and `gradlab compare`."""

from __future__ import annotations

import numpy as np
import pandas as pd
from wandb_records import read_run, wandb_files

from gradlab import compare, figures, step
from gradlab.config import run_id, sweep_dir
from gradlab.train import train


def test_a_figure_added_to_the_schema_is_recorded_logged_summarised_and_compared(compose, monkeypatch):
    row = figures.Figure(
        "grad_norm_squared",
        "device",
        {"grad/norm_squared": "mean"},
        {"grad_norm_squared_max": ("max", "lower")},
    )
    monkeypatch.setattr(figures, "FIGURES", (*figures.FIGURES, row))
    finish = step.finish_step

    def finish_with_square(loss, parts):
        out = finish(loss, parts)
        return out._replace(figures={**out.figures, "grad_norm_squared": out.figures["grad_norm"] ** 2})

    monkeypatch.setattr(step, "finish_step", finish_with_square)
    conf = compose("model=mlp", "task=regression", "steps=12", "log_every=4", "wandb=offline", "name=added")
    summary = train(conf)
    run = sweep_dir(conf) / run_id(conf)

    history = pd.read_csv(run / "history.csv")
    np.testing.assert_allclose(history["grad_norm_squared"], history["grad_norm"] ** 2, rtol=1e-5)
    assert summary["grad_norm_squared_max"] == round(history["grad_norm_squared"].max(), 6)

    (log,) = wandb_files(run)
    points = read_run(log)["history"]
    assert [p["step"] for p in points] == [4, 8, 12]
    for point, rows in zip(points, (history[:4], history[4:8], history[8:])):
        assert np.isclose(point["grad/norm_squared"], rows["grad_norm_squared"].mean(), rtol=1e-6)

    comparison = compare.compare(compare.load_runs([run]), metric="grad_norm_squared_max")
    assert comparison.table["grad_norm_squared_max_mean"].iloc[0] == summary["grad_norm_squared_max"]


def test_the_schema_lists_each_figure_once_and_every_reduction_it_names_exists():
    names = [f.column for f in figures.FIGURES]
    assert len(names) == len(set(names)) and figures.columns() == ["step", *names]
    summaries = [name for f in figures.FIGURES for name in f.summary]
    assert len(summaries) == len(set(summaries))
    for f in figures.FIGURES:
        assert f.on in ("device", "host")
        assert all(how in figures.INTERVAL for how in f.wandb.values())
        assert all(
            how in figures.REDUCE and better in ("lower", "higher") for how, better in f.summary.values()
        )
