"""The same sweep under every launcher: the same records, W&B files, resume and failure handling.

Runs go through the installed command in a subprocess, as a user starts them; a fault is
injected into every Python process of the sweep (workers included) by a sitecustomize module.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from patience import PATIENCE, wait_for
from test_records import process
from wandb_records import read_run, wandb_files

from gradlab.parallel import claim_slot

# 4 runs: length 7 fails at its first batch; lr 1e30 diverges; one completes
SWEEP = [
    "sweep",
    "model=rnn",
    "task.length=7,8",
    "lr=0.01,1e30",
    "optim=sgd",
    "clip=none",
    "steps=20",
    "model.hidden_size=8",
    "name=mixed",
    "wandb=offline",
    "progress=lines",
]
LAUNCHERS = {"basic": [], "local": ["launcher=local", "workers=2"], "slurm_local": ["launcher=slurm_local"]}
FAULT = """
from gradlab.tasks.adding import Adding
_real = Adding.batches
def _broken(self, n, seed):
    if self.length == 7:
        raise RuntimeError("disk on fire")
    return _real(self, n, seed)
Adding.batches = _broken
"""


def gradlab(args, cwd: Path, check: bool = True, code: int = 0) -> subprocess.CompletedProcess:
    (cwd / "fault").mkdir(exist_ok=True)
    (cwd / "fault" / "sitecustomize.py").write_text(FAULT)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(cwd / "fault"), os.environ.get("PYTHONPATH", "")]),
    }
    return process(args, cwd, env, code if check else None)


def records(sweep: Path) -> dict:
    """Run folder name -> (status, error, history) of every run record in the sweep."""
    found = {}
    for summary in sorted(sweep.glob("*/summary.json")):
        s = pd.read_json(summary, typ="series")
        found[summary.parent.name] = (
            s["status"],
            s.get("error", ""),
            pd.read_csv(summary.parent / "history.csv"),
        )
    return found


@pytest.fixture(scope="module")
def basic(tmp_path_factory) -> dict:
    cwd = tmp_path_factory.mktemp("basic")
    gradlab(SWEEP, cwd, code=1)  # runs failed: the command fails
    return records(cwd / "results" / "mixed")


@pytest.mark.parametrize("launcher", ["local", "slurm_local"])
def test_parallel_launchers_make_the_records_of_the_basic_one(launcher, basic, tmp_path):
    out = gradlab([*SWEEP, *LAUNCHERS[launcher]], tmp_path, code=1)
    sweep = tmp_path / "results" / "mixed"
    got = records(sweep)
    assert got.keys() == basic.keys() and len(got) == 4  # one sweep folder, the same run ids
    assert sorted(s for s, _, _ in got.values()) == ["completed", "diverged", "failed", "failed"]
    for run, (status, error, history) in got.items():
        assert status == basic[run][0] and error == basic[run][1]
        pd.testing.assert_frame_equal(
            history.drop(columns=["time_s", "steps_per_s", "samples_per_s"]),
            basic[run][2].drop(columns=["time_s", "steps_per_s", "samples_per_s"]),
            rtol=1e-5,
        )
        if status != "failed":  # a W&B offline run in the run's folder, in the sweep's group
            (log,) = wandb_files(sweep / run)
            assert read_run(log)["run"].run_group == "mixed"
    assert "sweep finished: 4 runs (1 completed, 1 diverged, 2 failed)" in out.stdout

    again = gradlab(
        [*SWEEP, *LAUNCHERS[launcher]], tmp_path, code=1
    )  # resume: the failed runs run again, alone
    assert "sweep finished: 4 runs (2 failed, 2 skipped)" in again.stdout
    assert {run: s for run, (s, *_) in records(sweep).items()} == {run: s for run, (s, *_) in got.items()}


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds worker processes through /proc")
def test_killed_worker_stops_the_sweep_in_one_line_and_resume_finishes_it(tmp_path):
    args = [
        "sweep",
        "model=mlp",
        "task=regression",
        "steps=2000",
        "seed=0,1,2",
        "launcher=local",
        "workers=2",
        "name=killed",
        "wandb=off",
        "progress=none",
    ]
    sweep = tmp_path / "results" / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "gradlab", *args],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for(lambda: any(sweep.glob(".gradlab/*.partial/config.yaml")))  # a run has started
    workers = [p for p in _children(proc.pid) if b"LokyProcess" in Path(f"/proc/{p}/cmdline").read_bytes()]
    assert workers, "no joblib worker found"
    os.kill(workers[0], signal.SIGKILL)
    _, err = proc.communicate(timeout=PATIENCE)
    assert proc.returncode == 1
    assert err.strip().splitlines() == [err.strip()] and "Traceback" not in err
    assert err.startswith("error: the joblib launcher stopped") and "running the same command again" in err
    assert len(list(sweep.glob("*/summary.json"))) < 3  # the killed run left no summary

    gradlab(args, tmp_path)
    assert sorted(s for s, *_ in records(sweep).values()) == ["completed"] * 3


def test_unknown_launcher_and_slurm_without_sbatch_are_one_line_errors(tmp_path):
    bad = gradlab(["sweep", "model=mlp", "launcher=kubernetes"], tmp_path, check=False)
    assert (
        bad.returncode == 2
        and bad.stderr == "error: launcher=kubernetes: choose from basic, local, slurm, slurm_local\n"
    )
    env_path = os.environ["PATH"]
    if any((Path(d) / "sbatch").exists() for d in env_path.split(os.pathsep)):
        pytest.skip("this machine has SLURM")
    slurm = gradlab(["sweep", "model=mlp", "launcher=slurm"], tmp_path, check=False)
    assert (
        slurm.returncode == 2
        and "no `sbatch` on this machine" in slurm.stderr
        and "launcher=slurm_local" in slurm.stderr
    )
    assert slurm.stderr.count("\n") == 1 and not (tmp_path / "results").exists()


def test_more_workers_than_cores_is_a_warning_and_the_plan_says_how_many(tmp_path):
    many = os.cpu_count() + 1
    out = gradlab(
        ["sweep", "model=mlp", "seed=0,1", "launcher=local", f"workers={many}", "--dry-run"], tmp_path
    )
    assert f"launcher: joblib (workers={many})" in out.stdout and out.stderr.startswith(
        f"warning: workers={many} > "
    )
    out = gradlab(["sweep", "model=mlp", "seed=0,1", "launcher=local", "--dry-run"], tmp_path)
    slots = torch.cuda.device_count() or len(os.sched_getaffinity(0))
    assert (
        f"launcher: joblib (workers={min(2, slots)})" in out.stdout and not out.stderr
    )  # auto: at most the runs


def test_each_worker_holds_its_own_slot_until_it_exits(tmp_path):
    """The GPU pinning of launcher=local: live workers of one sweep never share a slot."""
    hold = (
        "import sys, time; from gradlab.parallel import claim_slot; "
        "print(claim_slot(sys.argv[1], 3), flush=True); time.sleep(float(sys.argv[2]))"
    )
    first = [
        subprocess.Popen(
            [sys.executable, "-c", hold, str(tmp_path), str(PATIENCE)], stdout=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    slots = [int(p.stdout.readline()) for p in first]
    assert sorted(slots) == [0, 1]
    assert claim_slot(tmp_path, 3) == 2  # this process: the one slot left
    first[0].kill()
    first[0].wait()
    late = subprocess.run([sys.executable, "-c", hold, str(tmp_path), "0"], capture_output=True, text=True)
    assert int(late.stdout) == slots[0]  # a dead worker's slot is free again
    first[1].kill()


@pytest.mark.parametrize(
    "omp,processes,threads",
    [(None, 1, 8), (None, 3, 2), (None, 16, 1), ("1", 1, 1), ("4", 1, 4), ("12", 2, 4), ("", 2, 4)],
)
def test_a_run_takes_its_share_of_the_cores_and_no_more_than_omp_num_threads(
    monkeypatch, omp, processes, threads
):
    from gradlab import parallel

    monkeypatch.setattr(parallel, "cores", lambda: 8)
    if omp is None:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    else:
        monkeypatch.setenv("OMP_NUM_THREADS", omp)
    before = torch.get_num_threads()
    try:
        parallel.share_cores(processes)
        assert torch.get_num_threads() == threads
    finally:
        torch.set_num_threads(before)
