"""Nothing finished is lost, and every failure is named: `--force` re-runs that are killed, Ctrl-C,
concurrent sweeps, corrupt or partial records, full disks, and names that would escape results_root.

Interrupts and kills are real signals sent to real `gradlab` processes (`start`); everything
else runs the command line in this process (`run`).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from gradlab.cli import app
from patience import PATIENCE, wait_for
from typer.testing import CliRunner

from gradlab import records
from gradlab.train import train

GRADLAB = [sys.executable, "-m", "gradlab"]
FAST = ["model=mlp", "task=regression", "wandb=off"]
HUGE = 4_000_000_000  # a batch no machine here holds: its first step runs out of memory
OOM = ["model=lstm", "task=adding", "wandb=off", f"batch_size={HUGE}"]  # drawn at step 1: 1.6 TB


def start(args, cwd: Path, **kw) -> subprocess.Popen:
    """`gradlab ARGS` in its own process group (as a terminal's foreground job), output piped."""
    return subprocess.Popen(
        [*GRADLAB, *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        **kw,
    )


def process(args, cwd: Path, env: dict | None = None, code: int | None = 0) -> subprocess.CompletedProcess:
    """`gradlab ARGS` from the folder cwd in a process of its own, as a user runs it (`env` in place of
    this process's environment); its exit code checked unless `code` is None."""
    out = subprocess.run(
        [*GRADLAB, *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True, timeout=PATIENCE
    )
    if code is not None:
        assert out.returncode == code, out.stdout + out.stderr
    return out


def run(args, cwd: Path, code: int | None = None) -> SimpleNamespace:
    """`gradlab ARGS` from the folder cwd, in this process: for everything that sends no signal; its
    exit code checked when `code` is given."""
    here = os.getcwd()
    os.chdir(cwd)
    try:
        result = CliRunner().invoke(app, list(map(str, args)))
    finally:
        os.chdir(here)
    assert "Traceback" not in result.output and not isinstance(result.exception, (AssertionError, TypeError))
    if code is not None:
        assert result.exit_code == code, result.stdout + result.stderr
    return SimpleNamespace(returncode=result.exit_code, stdout=result.stdout, stderr=result.stderr)


def started(sweep: Path, count: int = 1):
    """Once `count` runs of the sweep have begun (their attempt folders, or their records)."""
    return lambda: (
        len(list(sweep.glob(".gradlab/*.partial/config.yaml"))) + len(list(sweep.glob("*/summary.json")))
        >= count
    )


def snapshot(sweep: Path) -> dict:
    """Run folder -> the bytes of its summary.json and history.csv."""
    return {
        d.name: ((d / "summary.json").read_bytes(), (d / "history.csv").read_bytes())
        for d in sorted(sweep.iterdir())
        if (d / "summary.json").exists()
    }


def one_line(err: str) -> str:
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    return lines[0]


def alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


# --- an old record survives until a new one is complete


def test_a_killed_force_rerun_keeps_the_finished_record(tmp_path):
    args = ["train", *FAST, "steps=3000", "log_every=50", "name=keep", "progress=lines"]
    assert run(args, tmp_path).returncode == 0
    sweep = tmp_path / "results" / "keep"
    before = snapshot(sweep)
    proc = start([*args, "--force"], tmp_path)
    proc.stdout.readline()  # its first progress line: training, well before its end
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert snapshot(sweep) == before
    out = run(["compare", str(sweep), "--format", "csv"], tmp_path)
    assert out.returncode == 0 and "completed" in open(sweep / "comparison.csv").read()


def test_a_killed_force_sweep_keeps_every_finished_record(tmp_path):
    args = ["sweep", *FAST, "steps=1000", "seed=0,1,2,3", "name=four", "progress=none"]
    assert run(args, tmp_path).returncode == 0
    sweep = tmp_path / "results" / "four"
    before = snapshot(sweep)
    assert len(before) == 4
    proc = start([*args, "--force"], tmp_path)
    wait_for(lambda: any(sweep.glob(".gradlab/*.partial/config.yaml")))  # a re-run in flight
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    after = snapshot(sweep)
    assert after.keys() == before.keys()  # none lost; any re-run that had finished replaced its own record
    assert all(json.loads(after[run][0])["status"] == "completed" for run in after)


@pytest.mark.parametrize(
    "bad,message",
    [
        (["progress=loud"], "progress=loud: choose from auto, bar, lines, none"),
        (
            ["wandb=offline", "logger.wandb.init_timeout=abc"],
            "logger.wandb.init_timeout=abc: must be a number of seconds > 0",
        ),
        (
            ["logger.wandb.histogram_every=-1"],
            "logger.wandb.histogram_every=-1: must be an integer >= 0 (0 = off)",
        ),
        (["save_model=maybe"], "save_model=maybe: must be true or false"),
    ],
)
@pytest.mark.parametrize("command", ["train", "sweep"])
def test_force_with_a_bad_value_deletes_nothing(tmp_path, command, bad, message):
    seeds = "seed=0" if command == "train" else "seed=0,1,2,3"
    args = [command, *FAST, "steps=5", seeds, "name=kept", "progress=none"]
    assert run(args, tmp_path).returncode == 0
    sweep = tmp_path / "results" / "kept"
    before, listing = snapshot(sweep), sorted(sweep.rglob("*"))
    out = run([*args, *bad, "--force"], tmp_path)
    assert out.returncode == 2 and one_line(out.stderr) == f"error: {message}"
    assert snapshot(sweep) == before and sorted(sweep.rglob("*")) == listing


def test_a_failed_force_rerun_keeps_the_finished_record(tmp_path, compose, monkeypatch):
    """A re-run that fails replaces no result."""
    from gradlab.loop import Loop
    from gradlab.train import train

    conf = compose(*FAST, "steps=5", "name=f")
    assert train(conf)["status"] == "completed"
    before = snapshot(tmp_path / "f")

    def broken(self, step):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(Loop, "step", broken)
    again = train({**conf, "force": True})
    assert again["status"] == "failed" and "disk on fire" in again["error"]
    assert snapshot(tmp_path / "f") == before and sorted(p.name for p in (tmp_path / "f").iterdir()) == [
        ".gradlab",
        *before,
    ]


def test_a_run_in_progress_elsewhere_is_skipped_and_left_alone(tmp_path):
    """Another process holds the run (a second sweep on the same folder): this one neither wipes it nor
    makes it."""
    from gradlab.config import plain
    from gradlab.config import run_id as id_of
    from gradlab.launch import compose_all

    args = ["train", *FAST, "steps=5", "name=busy"]
    run_id = id_of(plain(compose_all([args[1:]])[0]))
    run_dir = tmp_path / "results" / "busy" / run_id
    with records.claimed(run_dir) as mine:
        assert mine
        partial = run_dir.parent / ".gradlab" / f"{run_id}.partial"
        partial.mkdir()
        (partial / "config.yaml").write_text("being made\n")
        out = run(args, tmp_path)
        assert out.returncode == 0 and f"{run_id.rsplit('-', 1)[0]}: in progress elsewhere" in out.stdout
        assert (partial / "config.yaml").read_text() == "being made\n" and not run_dir.exists()
        sweep = run(["sweep", *FAST, "steps=5", "seed=0,1", "name=busy"], tmp_path)
        assert "1 in progress elsewhere" in sweep.stdout and "1 completed" in sweep.stdout
    assert run(args, tmp_path).returncode == 0 and (run_dir / "summary.json").exists()  # free again: made


def test_a_record_set_aside_by_a_kill_mid_replacement_comes_back(tmp_path):
    """A kill between moving the old record aside and the new one in: the old one is restored."""
    run_dir = tmp_path / "r"
    aside = tmp_path / ".gradlab" / "r.old"
    aside.mkdir(parents=True)
    (aside / "summary.json").write_text("{}")
    with records.claimed(run_dir):
        pass
    assert (run_dir / "summary.json").exists() and not aside.exists()


# --- Ctrl-C


def test_ctrl_c_in_train_records_interrupted_and_exits_130(tmp_path):
    proc = start(["train", *FAST, "steps=100000", "name=int", "checkpoint_every=10"], tmp_path)
    wait_for(lambda: any((tmp_path / "results" / "int").glob(".gradlab/*.ckpt")))  # 10 steps done
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=PATIENCE)
    assert proc.returncode == 130
    assert one_line(err).startswith("interrupted: ")
    (summary,) = (tmp_path / "results" / "int").glob("*/summary.json")
    record = json.loads(summary.read_text())
    assert record["status"] == "interrupted" and 10 <= record["steps_done"] < 100000


@pytest.mark.parametrize(
    "how,at_once",
    [(["engine=sequential"], 1), (["engine=vectorized"], 4), (["launcher=local", "workers=2"], 2)],
    ids=["basic", "vectorized", "local"],
)
def test_one_ctrl_c_stops_a_sweep(tmp_path, how, at_once):
    sweep = tmp_path / "results" / "stop"
    proc = start(
        ["sweep", *FAST, "steps=100000", "seed=0,1,2,3", "name=stop", "progress=none", *how], tmp_path
    )
    wait_for(started(sweep, at_once))
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=PATIENCE)
    assert proc.returncode == 130, err
    assert one_line(err).startswith("interrupted: ")
    wait_for(lambda: not alive(proc.pid))  # no worker goes on
    statuses = [json.loads(p.read_text())["status"] for p in sweep.glob("*/summary.json")]
    assert "completed" not in statuses and len(statuses) <= at_once
    if "launcher=local" not in how:  # the runs in progress, recorded; the next ones never started
        assert statuses == ["interrupted"] * at_once


@pytest.mark.parametrize("send", [os.killpg, os.kill], ids=["to its group", "to the sweep's process"])
def test_sigterm_stops_a_local_sweep_as_ctrl_c_does(tmp_path, send):
    """A scheduler's SIGTERM reaches every process of the job; `kill PID`, the sweep's alone (its
    workers then stop as their parent is gone)."""
    sweep = tmp_path / "results" / "stop"
    args = ["sweep", *FAST, "steps=100000", "seed=0,1,2,3", "name=stop", "progress=none"]
    proc = start([*args, "launcher=local", "workers=2"], tmp_path)
    wait_for(started(sweep, 2))
    send(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=PATIENCE)
    assert proc.returncode == 143, err
    assert one_line(err).startswith("terminated (SIGTERM): ")
    wait_for(lambda: not alive(proc.pid))  # no worker goes on
    statuses = [json.loads(p.read_text())["status"] for p in sweep.glob("*/summary.json")]
    assert "completed" not in statuses and len(statuses) <= 2


def test_ctrl_c_stops_reproduce(tmp_path):
    proc = start(
        [
            "reproduce",
            "mlp-digits",
            "--scale",
            "quick",
            "--results-root",
            str(tmp_path / "r"),
            "wandb=off",
            "--quiet",
        ],
        tmp_path,
    )
    wait_for(lambda: any((tmp_path / "r").rglob(".gradlab/*.partial/config.yaml")))
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=PATIENCE)
    assert proc.returncode == 130 and one_line(err).startswith("interrupted: ")


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_killing_a_local_sweep_stops_its_workers(tmp_path):
    sweep = tmp_path / "results" / "orphans"
    proc = start(
        [
            "sweep",
            *FAST,
            "steps=100000",
            "seed=0,1,2,3,4,5",
            "name=orphans",
            "progress=none",
            "launcher=local",
            "workers=2",
        ],
        tmp_path,
    )
    wait_for(started(sweep, 2))
    os.kill(proc.pid, signal.SIGKILL)  # the sweep's own process only, not its workers
    proc.wait()
    wait_for(lambda: not alive(proc.pid))  # every worker has ended
    statuses = [json.loads(p.read_text())["status"] for p in sweep.glob("*/summary.json")]
    assert statuses == ["interrupted"] * len(statuses) and len(statuses) <= 2  # no further run was started


# --- bad input: one line, exit 2, nothing written


@pytest.mark.parametrize(
    "args,message",
    [
        (["name=../../etc"], "name=../../etc: must be a folder name inside results_root"),
        (["name=.."], "name=..: must be a folder name inside results_root"),
        (["name=/tmp/elsewhere"], "name=/tmp/elsewhere: must be a folder name inside results_root"),
        (
            ["model=lstm", "model.hidden_size=200000"],
            "model=lstm: does not fit in memory on cpu with model=lstm hidden_size=200000",
        ),
        (["seed=range(0,0)"], "seed=range(0,0): sweeps over no values"),
        (["~max_norm"], "~max_norm: gradlab needs every key of the configuration; set max_norm=VALUE"),
        (["~clip"], "~clip: gradlab needs every key of the configuration; set clip=VALUE"),
        (["lr=1e308"], "lr=1e+308: must be a number in (0, 1e+30]"),
        (
            ["model.hiden_size=3"],
            "model.hiden_size: unknown key of model=lstm; did you mean model.hidden_size?",
        ),
        (["name=héllo"], "name=héllo: not an override gradlab can read"),
        (["seed=99999999999999999999999"], "seed=99999999999999999999999: must be an integer in [0, "),
        (
            ["optim=sgd", "optim.momentum=-1"],
            "optim=sgd (torch.optim.SGD) could not be built: ValueError: Invalid momentum value: -1",
        ),
        (
            ["optim=adam", "optim.betas=[1.5,0.9]"],
            "optim=adam (torch.optim.Adam) could not be built: ValueError: Invalid beta parameter",
        ),
        (["lr=1e-320"], "lr=1e-320: must be a number in (0, 1e+30], at least 1.175e-38"),
        (
            ["max_norm=1e-320"],
            "max_norm=1e-320: must be a number > 0 (clip=none turns clipping off), at least",
        ),
    ],
)
@pytest.mark.parametrize("command", ["train", "sweep"])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, command, args, message):
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    out = run([command, "device=cpu", *args], work)
    assert out.returncode == 2
    assert one_line(out.stderr).startswith(f"error: {message}")
    assert [p.name for p in tmp_path.rglob("*")] == ["a", "b"]


USER_CODE = """
import torch
from torch.utils.data import Dataset

class Raises(torch.nn.Module):
    def __init__(self, spec):
        raise RuntimeError("my model is broken")

class NoParams(torch.nn.Module):
    def __init__(self, spec):
        super().__init__()

    def forward(self, x):
        return x[:, :1] * 0

class Empty(Dataset):
    def __len__(self):
        return 0

class RaisesItem(Dataset):
    def __len__(self):
        return 10

    def __getitem__(self, i):
        raise ValueError(f"bad item {i}")

class Strings(Dataset):
    def __len__(self):
        return 10

    def __getitem__(self, i):
        return "abc", "x"

class BrokenFrom(Dataset):
    def __init__(self, item=None):
        self.item = item

    def __len__(self):
        return 100

    def __getitem__(self, i):
        if self.item is not None and i >= self.item:
            raise ValueError(f"item {i} is broken")
        return torch.ones(4), i % 2
"""
DATASET = ["model=mlp", "task=dataset", "task.classes=2"]


@pytest.mark.parametrize(
    "args,message",
    [
        (
            ["model=custom", "model._target_=usercode.Raises", "task=regression"],
            "model=raises (usercode.Raises) could not be built: RuntimeError: my model is broken",
        ),
        (
            ["model=custom", "model._target_=usercode.NoParams", "task=regression"],
            "model=noparams: has no trainable parameters",
        ),
        (
            [*DATASET, "task.train._target_=usercode.Empty", "task.eval._target_=usercode.Empty"],
            "task.train=usercode.Empty: is empty: a dataset needs samples",
        ),
        (
            [*DATASET, "task.train._target_=usercode.RaisesItem", "task.eval._target_=usercode.RaisesItem"],
            "task.eval=usercode.RaisesItem: its first sample is not a pair (x, y) of tensors or numbers "
            "(ValueError: bad item 0)",
        ),
        (
            [*DATASET, "task.train._target_=usercode.Strings", "task.eval._target_=usercode.Strings"],
            "task.eval=usercode.Strings: its first sample is not a pair (x, y) of tensors or numbers "
            "(TypeError",
        ),
        (["--config-dir", "mine", "model=broken"], "a config file is not valid YAML: "),
        (
            ["search.trials=3", "lr=interval(0.1,0.01)"],
            "lr=interval(0.1,0.01): an interval(low, high) needs low <= high",
        ),
        (
            ["search.trials=-1", "lr=interval(0.01,0.1)"],
            "search.trials=-1: must be an integer >= 0",
        ),
        (
            ["lr=interval(0.01,0.1)"],
            "lr=interval(0.01,0.1): an interval is searched, not swept: add search.trials=N",
        ),
    ],
)
def test_errors_of_user_code_and_files_are_one_line(tmp_path, monkeypatch, args, message):
    (tmp_path / "usercode.py").write_text(USER_CODE)
    (tmp_path / "mine" / "model").mkdir(parents=True)
    (tmp_path / "mine" / "model" / "broken.yaml").write_text("_target_: foo\n  bad: [\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    before = sorted(tmp_path.rglob("*"))
    out = run(["sweep", "device=cpu", "wandb=off", *args], tmp_path)
    assert out.returncode == 2
    assert one_line(out.stderr).startswith(f"error: {message}")
    assert sorted(p for p in tmp_path.rglob("*") if "__pycache__" not in p.parts) == before  # nothing written


def test_hydra_full_error_shows_the_traceback_of_the_users_code(tmp_path, monkeypatch):
    (tmp_path / "usercode.py").write_text(USER_CODE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(
        app, ["train", "model=custom", "model._target_=usercode.Raises", "task=regression"]
    )
    assert result.exit_code == 2
    assert "Traceback" in result.stderr and 'raise RuntimeError("my model is broken")' in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: model=raises (usercode.Raises)")


@pytest.mark.parametrize("command", ["train", "sweep"])
def test_a_held_out_set_that_cannot_be_read_is_one_line(tmp_path, monkeypatch, command):
    """Read whole when the first run starts: a sample that raises then stops the command as bad
    input, naming the dataset."""
    (tmp_path / "usercode.py").write_text(USER_CODE)
    monkeypatch.syspath_prepend(str(tmp_path))
    broken = "usercode.BrokenFrom"
    args = [*DATASET, f"task.train._target_={broken}", f"task.eval._target_={broken}", "+task.eval.item=1"]
    out = run([command, "wandb=off", *args], tmp_path)
    assert out.returncode == 2
    assert (
        one_line(out.stderr) == f"error: task.eval={broken}: could not be read (ValueError: item 1 is broken)"
    )
    assert not (tmp_path / "results").exists()  # nothing written: no folder, no lock


@pytest.mark.parametrize("flag", [[], ["--traceback"]], ids=["one line", "--traceback"])
def test_a_run_that_fails_keeps_its_traceback_in_its_folder(tmp_path, monkeypatch, flag):
    """The run is recorded failed with its error in one line; the whole traceback, down to the
    user's own code, is in the run's folder, and on stderr only under --traceback."""
    (tmp_path / "usercode.py").write_text(USER_CODE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    broken = "usercode.BrokenFrom"
    args = ["train", *DATASET, f"task.train._target_={broken}", f"task.eval._target_={broken}", "wandb=off"]
    args += ["+task.train.item=1"]  # a training sample, read in the run's first step
    result = CliRunner().invoke(app, [*flag, *args, "name=later", "progress=none"])
    assert result.exit_code == 1
    (summary,) = (tmp_path / "results" / "later").glob("*/summary.json")
    record, run_dir = json.loads(summary.read_text()), summary.parent
    assert record["status"] == "failed" and record["error"].startswith("ValueError: item ")
    trace = (run_dir / "traceback.txt").read_text()
    assert trace.startswith("Traceback") and 'raise ValueError(f"item {i} is broken")' in trace
    assert trace.strip().splitlines()[-1] == record["error"]
    said = f": failed: {record['error']} -> results/later/{run_dir.name}"
    assert said in result.stderr  # even with progress=none
    assert (trace in result.stderr) == bool(flag) and ("Traceback" in result.stderr) == bool(flag)


def test_compare_refuses_a_target_that_is_not_a_number_and_grouping_by_a_figure(tmp_path):
    sweep, _ = _two_runs(tmp_path)
    for args, message in [
        (["--target", "nan"], "error: --target nan: a finite number"),
        (["--by", "status"], "error: --by status: no such key; keys that vary here: seed"),
    ]:
        out = run(["compare", sweep, *args], tmp_path)
        assert out.returncode == 2 and one_line(out.stderr).startswith(message), out.stderr


def test_quoted_non_ascii_values_work(tmp_path):
    out = run(["train", *FAST, "steps=2", 'name="héllo wörld"', "--dry-run"], tmp_path)
    assert out.returncode == 0 and "héllo wörld" in out.stdout


def test_running_out_of_memory_mid_run_is_recorded_with_the_sizes(tmp_path):
    out = run(["train", *OOM, "steps=2", "name=oom", "progress=none"], tmp_path)
    assert out.returncode == 1
    (summary,) = (tmp_path / "results" / "oom").glob("*/summary.json")
    record = json.loads(summary.read_text())
    assert record["status"] == "failed" and record["error"].startswith(
        "out of memory on cpu with model=lstm hidden_size=128"
    )
    assert f"batch_size={HUGE}" in record["error"]


# --- corrupt or partial records


TWO = ["sweep", *FAST, "steps=30", "eval_every=10", "seed=0,1", "name=two"]


def _two_runs(tmp_path: Path) -> tuple[Path, list[Path]]:
    assert run([*TWO, "progress=none"], tmp_path).returncode == 0
    sweep = tmp_path / "results" / "two"
    return sweep, sorted(d for d in sweep.iterdir() if d.is_dir() and d.name != ".gradlab")


CORRUPTIONS = {
    "summary a list": lambda d: (d / "summary.json").write_text("[1, 2]"),
    "summary figure not a number": lambda d: (d / "summary.json").write_text(
        json.dumps({**json.loads((d / "summary.json").read_text()), "eval_loss_final": "abc"})
    ),
    "history garbled": lambda d: (d / "history.csv").write_text(
        (d / "history.csv").read_text().replace("\n2,", "\nabc,", 1)
    ),
    "config deleted": lambda d: (d / "config.yaml").unlink(),
    "config empty": lambda d: (d / "config.yaml").write_text(""),
    "summary figure a JSON NaN": lambda d: (d / "summary.json").write_text(
        (d / "summary.json").read_text().replace('"train_loss_final": ', '"train_loss_final": NaN, "x": ', 1)
    ),
    "history cut mid-row": lambda d: (d / "history.csv").write_text((d / "history.csv").read_text()[:-40]),
    "history header only": lambda d: (d / "history.csv").write_text(
        (d / "history.csv").read_text().splitlines()[0] + "\n"
    ),
    "history columns renamed": lambda d: (d / "history.csv").write_text(
        (d / "history.csv").read_text().replace("grad_norm", "norm", 1)
    ),
    "summary of another config": lambda d: (d / "summary.json").write_text(
        json.dumps({**json.loads((d / "summary.json").read_text()), "config_hash": "0123abcd"})
    ),
}


@pytest.mark.parametrize("corrupt", CORRUPTIONS.values(), ids=CORRUPTIONS.keys())
def test_a_corrupt_record_is_skipped_in_one_line_and_made_again(tmp_path, corrupt):
    sweep, (bad, good) = _two_runs(tmp_path)
    corrupt(bad)
    for command in (["compare", sweep, "--target", "1e9"], ["plot", sweep]):
        out = run(command, tmp_path)
        assert out.returncode == 0, out.stderr
        assert one_line(out.stderr).startswith(f"warning: skipping {bad}: unreadable record (")
    table = (sweep / "comparison.csv").read_text()
    assert "never" not in (sweep / "comparison.md").read_text() and ",1,1,0,0," in table  # 1 run, 1 completed
    plan = run([*TWO, "--dry-run"], tmp_path)
    assert (
        plan.returncode == 0
        and plan.stdout.count("to run") == 1
        and plan.stdout.count("done (completed)") == 1
    )
    assert "corrupt record, made again" in plan.stdout
    again = run([*TWO, "progress=lines"], tmp_path)
    assert again.returncode == 0 and "1 completed, 1 skipped" in again.stdout
    assert one_line(again.stderr).startswith("warning: ") and f"{bad.name}: corrupt record (" in again.stderr
    assert records.read(bad)["status"] == "completed"
    (aside,) = (sweep / ".gradlab").glob(f"{bad.name}.corrupt-*")  # kept, not deleted
    assert records.problem(aside) is not None and records.problem(bad) is None


def test_a_run_folder_replaced_by_a_file_is_kept_aside_and_made_again(tmp_path):
    sweep, (bad, _) = _two_runs(tmp_path)
    shutil.rmtree(bad)
    bad.write_text("not a folder")
    assert run([*TWO, "progress=none"], tmp_path).returncode == 0
    assert records.read(bad)["status"] == "completed"
    (aside,) = (sweep / ".gradlab").glob(f"{bad.name}.corrupt-*")
    assert aside.read_text() == "not a folder" and not list((sweep / ".gradlab").glob("*.old"))


def test_a_non_finite_evaluation_makes_the_run_diverged(tmp_path, compose, monkeypatch):
    from gradlab.tasks import _base

    clean = _base.Stored.eval_batches

    def one_nan(self):  # one held-out sample whose target is not a number
        (x, y), *rest = clean(self)
        return [(x, y.clone().index_fill_(0, torch.tensor([0]), float("nan"))), *rest]

    monkeypatch.setattr(_base.Stored, "eval_batches", one_nan)
    summary = train(compose(*FAST, "steps=30", "eval_every=10"))
    assert summary["status"] == "diverged" and summary["diverged_step"] == 10


# --- honest endings


def test_compare_ranks_runs_of_different_tasks_within_their_task(tmp_path):
    for model, task in (("mlp", "regression"), ("lstm", "adding")):
        assert (
            run(
                [
                    "sweep",
                    f"model={model}",
                    f"task={task}",
                    "steps=20",
                    "eval_every=10",
                    "clip=none,norm",
                    "name=mixed",
                    "wandb=off",
                    "progress=none",
                ],
                tmp_path,
            ).returncode
            == 0
        )
    out = run(["compare", str(tmp_path / "results" / "mixed"), "--format", "md"], tmp_path)
    assert out.returncode == 0 and "ranked within each of the 2 tasks" in out.stdout
    md = (tmp_path / "results" / "mixed" / "comparison.md").read_text()
    assert "ranked within each task (2 tasks" in md
    rows = [line.split("|")[1:-1] for line in md.splitlines()[4:]]
    header = [c.strip() for c in md.splitlines()[2].split("|")[1:-1]]
    task = header.index("task.name")
    assert [r[task].strip() for r in rows] == ["adding", "adding", "regression", "regression"]
    assert [r[0].strip() for r in rows] == ["*", "", "*", ""]  # one best per task


def test_compare_without_a_completed_run_says_so(tmp_path):
    assert (
        run(
            ["sweep", *FAST, "steps=20", "lr=1e5", "optim=sgd", "seed=0,1", "name=div", "progress=none"],
            tmp_path,
        ).returncode
        == 0
    )
    out = run(["compare", str(tmp_path / "results" / "div")], tmp_path)
    assert out.returncode == 2
    assert one_line(out.stderr) == "error: no completed run to compare among these 2 records (2 diverged)"


def test_a_sweep_with_a_failed_run_exits_1(tmp_path):
    out = run(
        [
            "sweep",
            "model=lstm",
            "task=adding",
            "wandb=off",
            "steps=2",
            "seed=0,1",
            f"batch_size=1,{HUGE}",
            "name=mixed",
            "progress=lines",
        ],
        tmp_path,
    )
    assert out.returncode == 1 and "(2 completed, 2 failed)" in out.stdout
    assert "[sweep 4/4] 0 diverged, 2 failed" in out.stdout  # progress as each run ends


@pytest.fixture
def small_disk(tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(disk)], capture_output=True
    ).returncode:
        pytest.skip("cannot mount a small tmpfs here")
    yield disk
    subprocess.run(["umount", str(disk)])


@pytest.mark.parametrize("full", [False, True], ids=["series do not fit", "nothing fits"])
def test_a_full_disk_fails_runs_in_their_records_and_the_sweep_goes_on(tmp_path, small_disk, full):
    if full:  # one page left: one config.yaml fits, a summary no longer does
        with open(small_disk / "filler", "wb", buffering=0) as f, pytest.raises(OSError):
            while True:
                f.write(b"x" * 1024)
        os.truncate(small_disk / "filler", (small_disk / "filler").stat().st_size - 4096)
    out = run(
        [
            "sweep",
            *FAST,
            "steps=600",
            "layer_norms_every=1",
            "seed=0,1,2,3",
            f"results_root={small_disk}",
            "name=s",
            "progress=lines",
        ],
        tmp_path,
    )
    assert out.returncode == 1 and "launcher stopped" not in out.stderr and "Traceback" not in out.stderr
    assert (
        "sweep finished: 4 runs (4 unfinished)" if full else "sweep finished: 4 runs (4 failed)"
    ) in out.stdout
    files = [p for p in (small_disk / "s").rglob("*") if p.is_file() and not p.name.endswith(".lock")]
    assert all(p.stat().st_size > 0 for p in files), files  # no 0-byte leftovers
    summaries = [json.loads(p.read_text()) for p in small_disk.glob("s/*/summary.json")]
    assert len(summaries) == (0 if full else 4)
    assert all(s["status"] == "failed" and "No space left on device" in s["error"] for s in summaries)
    assert not list(small_disk.glob("s/.gradlab/*.partial"))


def test_plot_on_a_full_disk_leaves_no_empty_png(tmp_path, small_disk):
    sweep, _ = _two_runs(tmp_path)
    (small_disk / "filler").write_bytes(b"x" * 60_000)
    out = run(["plot", str(sweep), "--out", str(small_disk / "plots")], tmp_path)
    assert out.returncode == 2 and one_line(out.stderr).startswith(
        f"error: --out {small_disk / 'plots'}: cannot write"
    )
    assert not [p for p in (small_disk / "plots").rglob("*") if p.is_file()]


def test_what_bad_input_left_is_discarded_but_never_a_record(tmp_path):
    """Only folders the command made, holding nothing but free locks, go; one never made is fine."""
    from gradlab import records

    made = tmp_path / "results"
    records.discard_unused(made / "never", made)  # nothing was made: nothing to do, no error
    sweep = made / "sweep"
    with records.claimed(sweep / "run"):
        records.discard_unused(sweep, made)  # its lock is held: in progress, kept
    assert (sweep / records.WORK / "run.lock").exists()
    (sweep / "other").mkdir()
    records.discard_unused(sweep, made)  # a run's folder beside the locks: kept
    assert (sweep / "other").exists()
    (sweep / "other").rmdir()
    records.discard_unused(sweep, made)
    assert not made.exists() and tmp_path.exists()
