"""The command line as a user meets it: help, bad input, and the README's commands end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from gradlab.cli import app
from patience import PATIENCE
from test_records import process as cli_process
from test_records import run
from typer.testing import CliRunner

TINY = ["steps=12", "eval_every=5", "log_every=4", "layer_norms_every=6"]  # a few seconds per run


def run_cli(args, cwd, process: bool = False):
    """`gradlab ARGS` from the folder cwd, in this process, or with `process` as a user runs it: the
    real entry point in a process of its own."""
    return cli_process(args, cwd) if process else run(args, cwd, code=0)


def summaries(sweep: Path) -> dict:
    return {
        d.name: json.loads((d / "summary.json").read_text())
        for d in sweep.iterdir()
        if (d / "summary.json").exists()
    }


@pytest.mark.parametrize("args", [["--help"], ["train", "--help"], ["sweep", "--help"]])
def test_help_never_imports_torch(args):
    """(`gradlab list` does: the clip modes' knobs are read from their classes' signatures.)"""
    code = (
        "import sys; from typer.testing import CliRunner; from gradlab.cli import app; "
        f"r = CliRunner().invoke(app, {args!r}); assert r.exit_code == 0, r.output; "
        "assert 'torch' not in sys.modules, 'torch imported'; print(r.output)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=PATIENCE)
    assert out.returncode == 0, out.stderr
    assert "Usage" in out.stdout


def test_version_completion_and_the_override_syntax_in_help(tmp_path):
    from importlib.metadata import version

    assert run_cli(["--version"], tmp_path, process=True).stdout == f"gradlab {version('gradlab')}\n"
    script = subprocess.run(  # the installed command, as a shell completes it
        [Path(sys.executable).parent / "gradlab", "--show-completion", "bash"],
        capture_output=True,
        text=True,
        timeout=PATIENCE,
    ).stdout
    assert "complete -o default -F _gradlab_completion gradlab" in script  # what --install-completion writes
    for command in ("train", "sweep", "suggest"):
        assert f" {command} [OPTIONS] [KEY=VALUE]..." in run_cli([command, "--help"], tmp_path).stdout
    assert "gradlab list" in run_cli(["--help"], tmp_path).stdout


def test_a_platform_without_file_locks_is_refused_in_one_line():
    code = "import sys; sys.modules['fcntl'] = None; import gradlab.cli"  # as on Windows: no fcntl
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=PATIENCE)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.startswith("error: gradlab needs POSIX file locks (fcntl)")
    assert out.stderr.count("\n") == 1


def test_list_shows_every_group_option():
    result = CliRunner().invoke(app, ["list"])
    assert result.exit_code == 0
    for option in (
        "mlp",
        "rnn",
        "lstm",
        "gru",
        "transformer",
        "adding",
        "copy",
        "temporal_order",
        "digits",
        "text",
        "mnist",
        "fashion_mnist",
        "cifar10",
        "regression",
        "none",
        "value",
        "norm",
        "sgd",
        "adam",
        "adamw",
        "seed_004",
        "max_norm",
        "accum_steps",
        "precision",
    ):
        assert f" {option}" in result.output


BAD_INPUT = [
    (["model=lsmt"], "model=lsmt: choose from custom, gru, lstm, lstm_urnn, mlp, rnn, transformer"),
    (["clip=nrm"], "clip=nrm: choose from"),
    (["max_nrom=1"], "max_nrom: unknown key; did you mean max_norm?"),
    (["max_norm=0"], "max_norm=0: must be a number > 0"),
    (["max_norm=-1"], "max_norm=-1"),
    (["clip=value", "clip_value=0"], "clip_value=0: must be a number > 0"),
    (["clip=value", "clip_value=-0.5"], "clip_value=-0.5"),
    (["norm_type=0"], "norm_type=0: must be a positive number"),
    (["norm_type=-2"], "norm_type=-2"),
    (["accum_steps=0"], "accum_steps=0: must be an integer >= 1"),
    (["accum_steps=1.5"], "accum_steps=1.5: must be an integer >= 1"),
    (["lr=0"], "lr=0: must be a number in (0, 1e+30]"),
    (["lr=-1"], "lr=-1"),
    (["lr=nan"], "lr=nan: must be a number in (0, 1e+30]"),
    (["steps=0"], "steps=0: must be an integer >= 1"),
    (["batch_size=0"], "batch_size=0: must be an integer >= 1"),
    (["model=mlp", "task=copy"], "model=mlp: cannot train on a task with one target per position"),
    (["model=lstm", "task=regression"], "model=lstm: cannot train on a task with no sequence axis"),
    (["model=transformer", "task=text", "model.patch=4"], "model.patch=4: needs an image task"),
    (["model=mlp", "task=mnist", "task.download=false"], "MNIST not found: place train-images-idx3-ubyte"),
    (["device=cuda"], "device=cuda"),
    (["precision=fp8"], "precision=fp8: choose from fp32, bf16, fp16"),
]


@pytest.mark.parametrize("command", ["train", "sweep"])
@pytest.mark.parametrize("args,message", BAD_INPUT, ids=[" ".join(a) for a, _ in BAD_INPUT])
def test_bad_input_is_one_line_and_leaves_nothing(tmp_path, monkeypatch, command, args, message):
    if args == ["device=cuda"]:
        import torch

        if torch.cuda.is_available():
            pytest.skip("this machine has a GPU")
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(
        app, [command, *args, "task.root=" + str(tmp_path)] if "task=mnist" in args else [command, *args]
    )
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr
    assert "Traceback" not in result.output
    assert not (tmp_path / "results").exists()


def test_missing_dataset_names_folder_and_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(
        app, ["train", "model=mlp", "task=cifar10", "task.download=false", "task.root=data"]
    )
    assert result.exit_code == 2
    assert "cifar-10-batches-py" in result.stderr and "data_batch_1" in result.stderr


def test_unwritable_results_root(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("not a folder")
    result = CliRunner().invoke(app, ["train", "results_root=afile/sub"])
    assert result.exit_code == 2
    assert result.stderr.startswith("error: results_root=afile/sub: cannot write")


def test_train_refuses_a_grid(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["train", "max_norm=1,5"])
    assert result.exit_code == 2 and "use `gradlab sweep`" in result.stderr


def test_sweep_dry_run_expands_the_grid_without_training(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(
        app, ["sweep", "model=mlp,lstm", "clip=none,value,norm", "seed=0,1,2", "--dry-run"]
    )
    assert result.exit_code == 0, result.output
    assert "18 run(s)" in result.output
    assert result.output.count("to run") == 18
    assert not (tmp_path / "results").exists()


def test_dry_run_counts_distinct_runs(tmp_path, monkeypatch):
    """The README's launcher=local grid: 27 jobs, but clip=none and clip=value ignore max_norm, so
    each of them asks for one run per seed: 3 + 3 + 9 = 15 runs, each listed once."""
    monkeypatch.chdir(tmp_path)
    grid = ["model=lstm", "clip=none,value,norm", "max_norm=0.5,1,5", "seed=0,1,2", "launcher=local"]
    result = CliRunner().invoke(app, ["sweep", *grid, "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "15 run(s)" in result.output and "(27 jobs; 12 ask for a run another job makes:" in result.output
    listed = [line.split()[1] for line in result.output.splitlines() if line.split()[0].isdigit()]
    assert len(listed) == len(set(listed)) == 15


def test_readme_main_job_end_to_end(tmp_path):
    """`gradlab sweep model=lstm clip=norm max_norm=1,5` (tiny budget): records, resume, force."""
    out = run_cli(["sweep", "model=lstm", "clip=norm", "max_norm=1,5", *TINY], tmp_path, process=True)
    sweeps = list((tmp_path / "results").iterdir())
    assert len(sweeps) == 1
    sweep = sweeps[0]
    assert str(Path("results") / sweep.name) in out.stdout  # says where the results went
    done = summaries(sweep)
    assert len(done) == 2 and all(s["status"] == "completed" for s in done.values())
    for run_id, summary in done.items():
        run = sweep / run_id
        history = pd.read_csv(run / "history.csv")
        assert list(history["step"]) == list(range(1, 13))
        assert history["eval_loss"].notna().sum() == 3  # steps 5, 10 and the last
        assert (history["grad_norm_clipped"] <= history["grad_norm"] + 1e-6).all()
        assert {
            "loss",
            "grad_norm",
            "grad_norm_clipped",
            "clip_coef",
            "clipped",
            "clip_fraction",
            "lr",
            "scaler_skipped",
            "eval_loss",
            "steps_per_s",
            "samples_per_s",
        } <= set(history.columns)
        assert set(pd.read_csv(run / "layer_norms.csv")["step"]) == {6, 12}
        assert summary["clip_fraction"] == pytest.approx(history["clipped"].mean(), abs=1e-6)
        assert (run / "config.yaml").exists()
    assert sorted(s["name"] for s in done.values()) == ["lstm-adding-norm1-s0", "lstm-adding-norm5-s0"]

    again = run_cli(["sweep", "model=lstm", "clip=norm", "max_norm=1,5", *TINY], tmp_path)
    assert again.stdout.count("already completed") == 2
    assert summaries(sweep) == done  # skipped: the records are untouched

    dry = run_cli(["sweep", "model=lstm", "clip=norm", "max_norm=1,5", *TINY, "--dry-run"], tmp_path)
    assert dry.stdout.count("done (completed)") == 2

    written = {p: p.stat().st_mtime_ns for p in sweep.glob("*/summary.json")}
    forced = run_cli(
        ["sweep", "model=lstm", "clip=norm", "max_norm=1,5", *TINY, "--force", "--quiet"], tmp_path
    )
    assert forced.stdout == ""
    rewritten = {p: p.stat().st_mtime_ns for p in sweep.glob("*/summary.json")}
    assert rewritten.keys() == written.keys() and all(rewritten[p] > written[p] for p in written)


def test_readme_train_command_with_accumulation(tmp_path):
    run_cli(
        [
            "train",
            "model=transformer",
            "clip=value",
            "clip_value=0.5",
            "accum_steps=4",
            "steps=3",
            "task.seq_len=16",
            "eval_every=0",
        ],
        tmp_path,
    )
    (summary_path,) = (tmp_path / "results").glob("*/*/summary.json")
    summary = json.loads(summary_path.read_text())
    assert summary["status"] == "completed" and summary["steps_done"] == 3
    config = (summary_path.parent / "config.yaml").read_text()
    assert "accum_steps: 4" in config and "clip_value: 0.5" in config


def test_a_failing_run_does_not_take_the_sweep_down(tmp_path, monkeypatch):
    """One run raises mid-training, another diverges: both are recorded and the sweep finishes."""
    from gradlab.tasks.adding import Adding

    real = Adding.batches

    def broken(self, n, seed):
        if self.length == 7:
            raise RuntimeError("disk on fire")
        return real(self, n, seed)

    monkeypatch.setattr(Adding, "batches", broken)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(
        app,
        [
            "sweep",
            "model=rnn",
            "task.length=7,8",
            "lr=0.01,1e30",
            "optim=sgd",
            "clip=none",
            "steps=20",
            "name=mixed",
        ],
    )
    assert result.exit_code == 1, result.output  # a failed run fails the command, as in `gradlab train`
    statuses = sorted(
        (s["status"], s.get("error", "")) for s in summaries(tmp_path / "results" / "mixed").values()
    )
    assert [s for s, _ in statuses] == ["completed", "diverged", "failed", "failed"]
    assert all("disk on fire" in e for s, e in statuses if s == "failed")
    assert "2 failed" in result.output and "1 diverged" in result.output


def test_same_sweep_name_finds_earlier_runs_and_reruns_killed_ones(tmp_path):
    run_cli(["sweep", "model=mlp", "seed=0,1", "name=mine", *TINY, "-q"], tmp_path)
    sweep = tmp_path / "results" / "mine"
    killed = next(d for d in sweep.iterdir() if d.is_dir())
    (killed / "summary.json").unlink()  # as if the process died before its last act
    out = run_cli(["sweep", "model=mlp", "seed=0,1", "name=mine", *TINY], tmp_path)
    assert out.stdout.count("already completed") == 1
    assert len(summaries(sweep)) == 2


def test_python_dash_m_runs_the_cli(tmp_path):
    out = run_cli(["--help"], tmp_path, process=True)
    assert "sweep" in out.stdout and "train" in out.stdout


def test_reference_results_are_never_overwritten(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    reference = tmp_path / "results" / "reference"
    reference.mkdir(parents=True)
    (reference / ".gradlab-reference").touch()
    result = CliRunner().invoke(app, ["train", "name=reference", "steps=1"])
    assert result.exit_code == 2 and "holds committed reference results" in result.stderr
    assert [p.name for p in reference.iterdir()] == [".gradlab-reference"]
