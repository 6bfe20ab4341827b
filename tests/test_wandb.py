"""W&B logging, checked in the files wandb itself wrote (offline runs, no network, no mock)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import yaml
from gradlab.cli import app
from test_records import process
from typer.testing import CliRunner
from wandb_records import read_run, wandb_files

from gradlab.clip import short_names
from gradlab.tracking import flatten, wandb_id

SMALL = [
    "steps=12",
    "log_every=4",
    "eval_every=8",
    "layer_norms_every=4",
    "logger.wandb.histogram_every=8",
    "model.hidden_size=16",
    "task.length=10",
]


@pytest.fixture
def no_credentials():
    """The environment conftest's autouse fixture leaves: no W&B credentials, as on a fresh machine."""
    return dict(os.environ)


def gradlab(args, cwd, env, check=True):
    return process(args, cwd, env, 0 if check else None)


def run_dirs(root: Path) -> list[Path]:
    return sorted(p.parent for p in root.glob("results/*/*/summary.json"))


def test_sweep_leaves_one_complete_offline_wandb_run_per_job(tmp_path, no_credentials):
    out = gradlab(
        ["sweep", "model=lstm", "clip=none,norm", "max_norm=1,5", "seed=0,1", *SMALL],
        tmp_path,
        no_credentials,
    )
    runs = run_dirs(tmp_path)
    assert (
        len(runs) == 6
    )  # 8 jobs; clip=none ignores max_norm: its max_norm=5 jobs ask for the max_norm=1 runs
    assert "sweep finished: 6 runs (6 completed)" in out.stdout  # distinct runs, each once
    assert "wandb sync" in out.stdout  # auto without credentials: offline, and says how to upload
    assert not (tmp_path / "wandb").exists()  # nothing outside the sweep's folder
    for run_dir in runs:
        (log,) = wandb_files(run_dir)  # the W&B files live inside the run's own folder
        wb = read_run(log)
        local = json.loads((run_dir / "summary.json").read_text())
        config = yaml.safe_load((run_dir / "config.yaml").read_text())
        history = pd.read_csv(run_dir / "history.csv")

        assert wb["run"].run_group == run_dir.parent.name  # group = the sweep
        assert wb["run"].run_id == wandb_id(run_dir.parent.name, run_dir.name)
        assert wb["run"].job_type == "lstm"
        assert wb["run"].display_name == local["name"]
        assert list(wb["run"].tags) == ["lstm", "adding", config["clip"]["mode"]]
        assert wb["run"].project == "gradlab"
        flat = flatten(config)
        for key in ("clip.mode", "accum_steps", "seed", "lr", "steps", "model.hidden_size", "task.length"):
            assert wb["config"][key] == flat[key], key
        assert ("clip.max_norm" in wb["config"]) == (config["clip"]["mode"] == "norm")  # its own knobs only
        assert not set(short_names()) & set(wb["config"])  # no knob of another mode
        assert not {"task.steps", "spike_sigma"} & set(wb["config"])  # a default source; a knob that is off

        assert any(m.name == "step" for m in wb["metrics"])
        assert any(m.glob_name == "*" and m.step_metric == "step" for m in wb["metrics"])
        layers = [m for m in wb["metrics"] if m.name.startswith("layers/rnn")]  # a dot: declared alone
        assert layers and all(m.step_metric == "step" and m.summary.none for m in layers)
        points = wb["history"]
        assert [p["step"] for p in points] == [4, 8, 12]  # one point per log interval
        for point, (start, end) in zip(points, [(1, 4), (5, 8), (9, 12)]):
            interval = history[(history["step"] >= start) & (history["step"] <= end)]
            assert point["train/loss"] == pytest.approx(interval["loss"].mean(), rel=1e-6)
            assert point["grad/norm"] == pytest.approx(interval["grad_norm"].mean(), rel=1e-6)
            assert point["grad/norm_clipped"] == pytest.approx(interval["grad_norm_clipped"].mean(), rel=1e-6)
            assert point["grad/norm_max"] == pytest.approx(interval["grad_norm"].max(), rel=1e-6)
            assert point["clip/fraction"] == pytest.approx(interval["clip_fraction"].iloc[-1], rel=1e-6)
            for key in ("clip/coef", "lr", "scaler/skipped", "perf/steps_per_s", "perf/samples_per_s"):
                assert key in point, key
            assert any(k.startswith("layers/rnn.") for k in point)  # every 4 steps
        assert [p["step"] for p in points if "eval/loss" in p] == [8, 12]
        assert [p["step"] for p in points if "grad/norm_histogram" in p] == [8]

        series = {k for p in points for k in p if not k.startswith("_")}  # _step etc.: wandb's own
        assert not series & set(wb["summary"])  # no "last value" of a series
        assert wb["summary"]["grad_norm_max"] == pytest.approx(history["grad_norm"].max(), rel=1e-6)
        assert wb["summary"]["status"] == "completed"
        assert wb["summary"]["train_loss_final"] == pytest.approx(local["train_loss_final"])
        assert wb["summary"]["clip_fraction"] == pytest.approx(local["clip_fraction"])
        assert wb["exit_code"] == 0


@pytest.mark.parametrize(
    "args, env",
    [
        (["wandb=off"], {}),
        (["logger.wandb.mode=disabled"], {}),
        ([], {"WANDB_MODE": "disabled"}),  # under wandb=auto, W&B's own switches count
        ([], {"WANDB_DISABLED": "true"}),
    ],
)
def test_disabled_writes_no_wandb_files(tmp_path, no_credentials, args, env):
    gradlab(["train", "model=mlp", "steps=3", *args], tmp_path, {**no_credentials, **env})
    (run_dir,) = run_dirs(tmp_path)
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "completed"
    assert not list(tmp_path.rglob("wandb"))


def test_online_without_credentials_fails_at_setup(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["train", "wandb=online"])
    assert result.exit_code == 2
    assert "wandb login" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "results").exists()


def test_bad_mode_fails_at_setup(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["train", "logger.wandb.mode=sometimes"])
    assert result.exit_code == 2
    assert "logger.wandb.mode=sometimes: choose from auto, online, offline, disabled" in result.stderr


def test_unreachable_server_falls_back_to_offline(tmp_path, no_credentials):
    env = {**no_credentials, "WANDB_API_KEY": "x" * 40, "WANDB_BASE_URL": "http://127.0.0.1:9"}
    out = gradlab(
        [
            "train",
            "model=mlp",
            "steps=8",
            "log_every=4",
            "wandb=online",
            "logger.wandb.init_timeout=2",
        ],
        tmp_path,
        env,
    )
    assert out.stderr.count("W&B server unreachable") == 1
    (run_dir,) = run_dirs(tmp_path)
    local = json.loads((run_dir / "summary.json").read_text())
    assert local["status"] == "completed" and local["wandb"]["mode"] == "offline"
    (log,) = wandb_files(run_dir)
    assert [p["step"] for p in read_run(log)["history"]] == [4, 8]


def test_diverged_run_is_a_finished_wandb_run_with_its_status(tmp_path, no_credentials):
    gradlab(
        ["train", "experiment=seed_004", "optim=sgd", "lr=1e30", "clip=none", "wandb=offline"],
        tmp_path,
        no_credentials,
    )
    (run_dir,) = run_dirs(tmp_path)
    local = json.loads((run_dir / "summary.json").read_text())
    assert local["status"] == "diverged"
    (log,) = wandb_files(run_dir)
    wb = read_run(log)
    assert wb["summary"]["status"] == "diverged"
    assert wb["summary"]["diverged_step"] == local["diverged_step"]
    assert wb["exit_code"] == 0


def test_disk_full_is_recorded_as_failed_and_the_sweep_goes_on(tmp_path, no_credentials):
    """A real small filesystem: the series do not fit, the failure is recorded, the next run still runs."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if (
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(disk)], capture_output=True
        ).returncode
        != 0
    ):
        pytest.skip("cannot mount a small tmpfs here")
    try:
        out = gradlab(
            ["sweep", "model=mlp", "steps=600", "seed=0,1", f"results_root={disk}", "wandb=offline"],
            tmp_path,
            no_credentials,
            check=False,
        )
        summaries = [json.loads(p.read_text()) for p in disk.glob("*/*/summary.json")]
        assert [s["status"] for s in summaries] == ["failed", "failed"]
        assert all("No space left on device" in s["error"] for s in summaries)
        assert out.returncode == 1 and "2 failed" in out.stdout
        assert (
            "wandb sync" not in out.stdout
        )  # the W&B files made room for the failure record: no hint at them
    finally:
        subprocess.run(["umount", str(disk)])


def test_report_hook_logs_tables_as_a_report_run(tmp_path):
    """The hook `gradlab compare --wandb` uses: a run of job_type `report` in the sweep's group."""
    from gradlab.tracking import log_report

    table = pd.DataFrame({"clip": ["none", "norm1"], "eval_loss": [0.2, 0.01]})
    settings = {"mode": "offline", "project": "gradlab", "entity": None, "init_timeout": 30}
    assert log_report("my-sweep", {"comparison": table}, {}, settings, tmp_path) == os.fspath(tmp_path)
    (log,) = wandb_files(tmp_path)
    wb = read_run(log)
    assert wb["run"].job_type == "report" and wb["run"].run_group == "my-sweep"
    (point,) = wb["history"]
    assert point["comparison"]["_type"] == "table-file" and point["comparison"]["nrows"] == 2


def test_wandb_environment_variables_count_where_gradlab_keys_are_left_at_their_defaults(
    tmp_path, no_credentials
):
    env = {
        **no_credentials,
        "WANDB_MODE": "offline",
        "WANDB_PROJECT": "their-project",
        "WANDB_RUN_GROUP": "their-group",
        "WANDB_TAGS": "a,b",
    }
    gradlab(
        ["train", "model=mlp", "task=regression", "steps=4", "log_every=2", "eval_every=2"], tmp_path, env
    )
    gradlab(["train", "model=mlp", "steps=4", "logger.wandb.project=mine", "name=own"], tmp_path, env)
    first, second = (read_run(wandb_files(d)[0]) for d in run_dirs(tmp_path))
    assert (first["run"].project, first["run"].run_group) == ("their-project", "their-group")
    assert list(first["run"].tags) == ["mlp", "regression", "norm", "a", "b"]
    assert second["run"].project == "mine"  # gradlab's key, given, wins
    # a regression has no accuracy: no eval/acc series (nan), eval/loss at each evaluation
    assert [("eval/loss" in p, "eval/acc" in p) for p in first["history"]] == [(True, False)] * 2


def test_a_forced_re_run_is_the_same_wandb_run(tmp_path, no_credentials):
    """The W&B id is derived from the run's folder: --force makes the run again under the same id
    (wandb replaces the record with the run's folder), and another sweep's run gets its own."""
    args = ["train", "model=mlp", "steps=4", "wandb=offline"]
    gradlab(args, tmp_path, no_credentials)
    gradlab([*args, "--force"], tmp_path, no_credentials)
    gradlab([*args, "name=other"], tmp_path, no_credentials)
    ids = [read_run(log)["run"].run_id for d in run_dirs(tmp_path) for log in wandb_files(d)]
    assert len(ids) == 2 and len(set(ids)) == 2  # one W&B run per gradlab run
    assert sorted(ids) == sorted(wandb_id(d.parent.name, d.name) for d in run_dirs(tmp_path))


def test_the_readmes_dashboard_recipe_names_what_wandb_wrote(tmp_path, no_credentials):
    """Every key the README's dashboard recipe tells a user to group by, plot or show is a config
    key, a series or a summary figure of a W&B run as gradlab writes it."""
    import re

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    recipe = readme[readme.index("In the dashboard, for the main job") :].split("\n\n", 2)[1]
    named = set(re.findall(r"`([^`]+)`", recipe))
    assert {"clip.mode", "clip.max_norm", "grad/norm", "train_loss_final"} <= named
    gradlab(["train", "model=lstm", *SMALL, "wandb=offline"], tmp_path, no_credentials)
    wb = read_run(wandb_files(run_dirs(tmp_path)[0])[0])
    known = set(wb["config"]) | {k for p in wb["history"] for k in p} | set(wb["summary"])
    assert named <= known, named - known
