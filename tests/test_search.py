"""Which threshold: `gradlab suggest` (a pilot's norm distribution and the grid that spans it) and
`gradlab sweep ... search.trials=N` (an Optuna search whose trials are ordinary runs), through the CLI."""

from __future__ import annotations

import json
import math
import os
import shlex
import signal
from pathlib import Path
from types import SimpleNamespace

import optuna
import pandas as pd
import pytest
import yaml
from patience import PATIENCE, wait_for
from test_records import one_line, run, start, started

from gradlab.search import TrialFailed, objective_value
from gradlab.suggest import grid

FAST = ["wandb=off", "eval_every=10", "layer_norms_every=0"]


def gradlab(cwd: Path, *args, check: bool = True) -> SimpleNamespace:
    """`gradlab ARGS` from the folder cwd, in this process."""
    return run(args, cwd, 0 if check else None)


def test_grid_spans_the_percentiles_and_pascanus_multiples():
    """Norms 1..100: p10 10.9, p50 50.5, p90 90.1, mean 50.5. Rounded to two digits: 11 (p10),
    25 (0.5x), 50 (p50 and 1x), 90 (p90; 2x = 100 is within 1.25x of it) and 500 (10x); above
    them, 89, 75, 50, 10 and 0 of the 100 norms."""
    thresholds = grid(pd.Series(range(1, 101), dtype=float))
    assert [(t.value, t.why, t.above) for t in thresholds] == [
        (11, "p10", 0.89),
        (25, "0.5x mean", 0.75),
        (50, "1x mean, p50", 0.5),
        (90, "p90, 2x mean", 0.1),
        (500, "10x mean", 0.0),
    ]


@pytest.mark.parametrize(
    "statuses, value",
    [
        (("completed", "completed"), 0.3),
        (("completed", "diverged"), math.inf),  # a diverging threshold is the worst there is
    ],
)
def test_objective_of_a_trial(statuses, value):
    summaries = [
        {"name": f"r{i}", "status": s, "eval_loss_final": v}
        for i, (s, v) in enumerate(zip(statuses, (0.2, 0.4)))
    ]
    assert objective_value(summaries, "eval_loss_final", False) == pytest.approx(value)
    if value == math.inf:
        assert objective_value(summaries, "eval_acc_final", True) == -math.inf


def test_a_failed_run_fails_its_trial():
    """An error tells nothing of the threshold: the trial fails (Optuna records it so) instead of scoring."""
    summaries = [
        {"name": "r0", "status": "completed", "eval_loss_final": 0.2},
        {"name": "r1", "status": "failed"},
    ]
    with pytest.raises(TrialFailed, match="r1: no eval_loss_final"):
        objective_value(summaries, "eval_loss_final", False)


def test_a_search_goes_on_past_a_failed_trial(tmp_path):
    """Three trials over two batch sizes (the seeded sampler asks for the huge one twice): it runs out of
    memory, its trials fail, and the search still finishes, with the other trial as its best."""
    out = gradlab(
        tmp_path,
        "sweep",
        "model=lstm",
        "task=adding",
        "steps=2",
        "wandb=off",
        "batch_size=choice(2,4000000000)",
        "search.trials=3",
        check=False,
    )
    assert out.returncode == 1, out.stderr  # a failed run: the sweep's exit code says so
    (folder,) = (tmp_path / "results").iterdir()
    assert "search finished: 2 runs (1 completed, 1 failed)" in out.stdout
    assert "trial 0 failed: lstm-adding-norm1-s0: no eval_loss_final" in out.stdout
    assert yaml.safe_load((folder / "optimization_results.yaml").read_text())["best_params"] == {
        "batch_size": 2
    }


def test_suggest_prints_a_grid_whose_sweep_runs(tmp_path):
    out = gradlab(tmp_path, "suggest", "model=mlp", "--pilot-steps", 20, *FAST, "steps=30").stdout
    (pilot,) = tmp_path.glob("results/suggest_*/*/history.csv")
    history = pd.read_csv(pilot)
    assert (
        history["step"].max() == 20
        and yaml.safe_load((pilot.parent / "config.yaml").read_text())["clip"]["mode"] == "none"
    )
    norms = history["grad_norm"].iloc[2:]  # --skip 0.1 of 20 steps
    assert f"over {len(norms)} steps (the first 2 left out" in out
    assert f"p50 {norms.median():.3g}" in out and f"p90 {norms.quantile(0.9):.3g}" in out
    command = out.strip().splitlines()[-1].strip()
    values = [t.value for t in grid(norms)]
    assert command == shlex.join(
        [
            "gradlab",
            "sweep",
            "model=mlp",
            *FAST,
            "steps=30",
            "clip=none,norm",
            "max_norm=" + ",".join(f"{v:g}" for v in values),
            "seed=0,1,2",
        ]
    )
    assert "steps=30" in command  # the run's own budget, not the pilot's
    gradlab(tmp_path, *shlex.split(command)[1:], "-q")
    (swept,) = [f for f in (tmp_path / "results").iterdir() if not f.name.startswith("suggest_")]
    summaries = [json.loads(p.read_text()) for p in swept.glob("*/summary.json")]
    assert len(summaries) == 3 * (len(values) + 1)  # every threshold and no clipping, three seeds each
    assert {s["status"] for s in summaries} == {"completed"}


SEARCH = [
    "model=mlp",
    "clip=norm",
    "max_norm=tag(log, interval(0.05, 5))",
    "search.trials=3",
    "search.trial_seeds=2",
    "steps=20",
    *FAST,
]


def test_search_trials_are_runs_that_compare_reads_and_resume_skips(tmp_path):
    first = gradlab(tmp_path, "sweep", *SEARCH).stdout
    (folder,) = (tmp_path / "results").iterdir()
    runs = {}
    for summary in folder.glob("*/summary.json"):
        conf = yaml.safe_load((summary.parent / "config.yaml").read_text())
        runs.setdefault(conf["clip"]["max_norm"], {})[conf["seed"]] = json.loads(summary.read_text())
    assert len(runs) == 3 and all(sorted(seeds) == [0, 1] for seeds in runs.values())
    assert all(0.05 <= max_norm <= 5 for max_norm in runs)
    objective = {m: sum(s["eval_loss_final"] for s in seeds.values()) / 2 for m, seeds in runs.items()}
    result = yaml.safe_load((folder / "optimization_results.yaml").read_text())
    best = min(objective, key=objective.get)
    assert result["best_params"]["max_norm"] == pytest.approx(best)
    assert result["best_value"] == pytest.approx(objective[best])
    assert f"search finished: 6 runs (6 completed) -> results/{folder.name}" in first

    again = gradlab(tmp_path, "sweep", *SEARCH).stdout  # the seeded sampler asks for the same trials
    assert f"search finished: 6 runs (6 skipped) -> results/{folder.name}" in again
    gradlab(tmp_path, "compare", folder, "--paired", "--format", "csv")
    table = pd.read_csv(folder / "comparison.csv")
    assert sorted(table["clip.max_norm"]) == pytest.approx(sorted(runs), rel=1e-5) and set(
        table["completed"]
    ) == {2}


@pytest.mark.parametrize(
    "args, message",
    [
        (["hydra/sweeper=optuna"], "hydra/sweeper=optuna: gradlab searches with Optuna itself"),
        (["seed=0,1"], "seed=0,1: a search's trials each train search.trial_seeds seeds"),
        (["search.objective=eval_los"], "search.objective=eval_los: choose a summary figure"),
        (["search.trial_seeds=0"], "search.trial_seeds=0: must be an integer >= 1"),
        (["search.sampler=nsga"], "search.sampler=nsga: choose from tpe, random, gp, cmaes, qmc"),
        (["search.storage=mysql://x"], "search.storage=mysql://x: write sqlite:///PATH.db or PATH.log"),
        (["max_norm=interval(0.05,"], "max_norm=interval(0.05,: not an override gradlab can read"),
        (["launcher=local"], "launcher=local: a search trains its trials in this process"),
        (["max_norm=1"], "search.trials=3: a search needs values to search"),
    ],
)
def test_bad_search_input_is_one_line_and_writes_nothing(tmp_path, args, message):
    out = gradlab(tmp_path, "sweep", *SEARCH, *args, check=False)
    assert out.returncode == 2 and out.stderr.strip().splitlines() == [f"error: {out.stderr.strip()[7:]}"]
    assert message in out.stderr
    assert not (tmp_path / "results").exists()


def test_train_refuses_a_search(tmp_path):
    out = gradlab(tmp_path, "train", "model=mlp", "search.trials=3", check=False)
    assert out.returncode == 2 and "search.trials=3: a search is made by `gradlab sweep`" in out.stderr
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize("command", [["sweep", "max_norm=1,5"], ["train"]])
def test_trial_seeds_belong_to_searches(tmp_path, command):
    out = gradlab(tmp_path, *command, "model=mlp", "search.trial_seeds=3", check=False)
    assert out.returncode == 2 and "search.trial_seeds=3: sets the seeds of a search's trials" in out.stderr
    assert not (tmp_path / "results").exists()


def trials(storage: str) -> list:
    (summary,) = optuna.get_all_study_summaries(storage)
    return optuna.load_study(study_name=summary.study_name, storage=storage).trials


def test_a_search_stopped_by_ctrl_c_goes_on_where_it_stopped(tmp_path):
    """Ctrl-C while the second trial trains; the same command again ends with all three trials,
    none trained twice: the trial cut short is asked again with its values, the finished run kept."""
    storage = f"sqlite:///{tmp_path}/search.db"
    args = [
        "sweep",
        "model=mlp",
        "clip=norm",
        "max_norm=tag(log, interval(0.05, 5))",
        "search.trials=3",
        "search.pruner=none",
        f"search.storage={storage}",
        "steps=3000",
        "layer_norms_every=0",
        "wandb=off",
        "name=cut",
        "progress=none",
    ]
    folder = tmp_path / "results" / "cut"
    proc = start(args, tmp_path)
    wait_for(lambda: len(list(folder.glob("*/summary.json"))) == 1 and started(folder, 2)())
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=PATIENCE)
    assert proc.returncode == 130 and one_line(err).startswith("interrupted: ")
    (first,) = [
        p for p in folder.glob("*/summary.json") if json.loads(p.read_text())["status"] == "completed"
    ]
    kept = first.read_bytes()
    states = [t.state for t in trials(storage)]
    assert states == [optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.RUNNING]

    again = gradlab(tmp_path, *args[:-1])
    assert "trial(s) 1 were cut short: asked again" in again.stdout
    found = trials(storage)
    done = [t for t in found if t.state == optuna.trial.TrialState.COMPLETE]
    (cut,) = [t for t in found if t.state == optuna.trial.TrialState.FAIL]
    assert len(done) == 3 and len({t.params["max_norm"] for t in done}) == 3
    assert [t.params for t in done if t.user_attrs.get("retry_of") == cut.number] == [cut.params]
    summaries = [json.loads(p.read_text()) for p in folder.glob("*/summary.json")]
    assert len(summaries) == 3 and {s["status"] for s in summaries} == {"completed"}
    assert first.read_bytes() == kept  # the finished run was not trained again


def test_a_trial_whose_evaluations_trail_is_pruned_and_recorded_so(tmp_path):
    """The median pruner after one trial: a trial whose eval loss at step 10 is above the median of
    the trials before it at step 10 stops there; its run is recorded as pruned, never scored, and
    gradlab compare counts it apart (the best trial is a completed one)."""
    args = ["model=mlp", "lr=tag(log, interval(0.000001, 0.1))", "search.trials=4", "search.pruner_startup=1"]
    gradlab(tmp_path, "sweep", *args, "steps=30", "eval_every=10", *FAST, "name=p")
    folder = tmp_path / "results" / "p"
    found = trials(f"sqlite:///{folder / 'search.db'}")
    pruned = [t for t in found if t.state == optuna.trial.TrialState.PRUNED]
    assert pruned and all(list(t.intermediate_values) == [10] for t in pruned)
    for t in pruned:  # above the median of the trials that had reached step 10 before it
        before = [u.intermediate_values[10] for u in found[: t.number] if 10 in u.intermediate_values]
        assert t.intermediate_values[10] > sorted(before)[(len(before) - 1) // 2]
    records = [json.loads(p.read_text()) for p in folder.glob("*/summary.json")]
    stopped = [r for r in records if r["status"] == "pruned"]
    assert len(stopped) == len(pruned) and all(
        r["pruned_step"] == 10 and r["steps_done"] == 10 for r in stopped
    )
    best = yaml.safe_load((folder / "optimization_results.yaml").read_text())
    assert best["best_value"] == min(t.value for t in found if t.state == optuna.trial.TrialState.COMPLETE)
    gradlab(tmp_path, "compare", folder, "--format", "csv")
    table = pd.read_csv(folder / "comparison.csv")
    assert table["pruned"].sum() == len(pruned) and table["completed"].sum() == len(found) - len(pruned)


def test_the_pruner_judges_no_step_before_its_warm_up(tmp_path):
    """The same search as above with search.pruner_warmup=30: its evaluations at steps 10 and 20
    come before the warm-up ends, so every trial completes."""
    args = ["model=mlp", "lr=tag(log, interval(0.000001, 0.1))", "search.trials=4", "search.pruner_startup=1"]
    gradlab(tmp_path, "sweep", *args, "search.pruner_warmup=30", "steps=30", "eval_every=10", *FAST, "name=w")
    found = trials(f"sqlite:///{tmp_path / 'results' / 'w' / 'search.db'}")
    assert [t.state for t in found] == [optuna.trial.TrialState.COMPLETE] * 4


def test_a_search_over_two_objectives_keeps_their_pareto_front(tmp_path):
    """search.objective=[eval_loss,clip_fraction]: each trial scores both (means over its seeds),
    nothing is pruned, and the result is the trials no other trial beats on both."""
    args = ["model=mlp", "clip=norm", "max_norm=tag(log, interval(0.05, 5))", "search.trials=4"]
    out = gradlab(
        tmp_path, "sweep", *args, "search.objective=[eval_loss,clip_fraction]", "steps=20", *FAST, "name=two"
    )
    folder = tmp_path / "results" / "two"
    found = trials(f"sqlite:///{folder / 'search.db'}")
    assert [t.state for t in found] == [optuna.trial.TrialState.COMPLETE] * 4
    for t in found:  # each value is the mean of its runs' figure (one seed here)
        (summary,) = [
            json.loads(p.read_text())
            for p in folder.glob("*/summary.json")
            if yaml.safe_load((p.parent / "config.yaml").read_text())["clip"]["max_norm"]
            == pytest.approx(t.params["max_norm"], rel=1e-5)
        ]
        assert t.values == pytest.approx([summary["eval_loss_final"], summary["clip_fraction"]])
    front = yaml.safe_load((folder / "optimization_results.yaml").read_text())["best_trials"]
    beaten = lambda a, b: all(x <= y for x, y in zip(b.values, a.values)) and b.values != a.values  # noqa: E731
    assert sorted(t["number"] for t in front) == [
        a.number for a in found if not any(beaten(a, b) for b in found)
    ]
    assert f"Pareto front, {len(front)} trial(s): " in out.stdout
