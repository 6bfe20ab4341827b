"""Checkpoints (checkpoint_every): a run killed at a random step, or terminated, continues from
its last checkpoint when the same command runs again, and its record equals the uninterrupted
run's, but for its timings; SIGTERM is handled as Ctrl-C is, with exit code 143.

Kills are real signals sent to real `gradlab` processes; the runs compared with them are made
in this process."""

from __future__ import annotations

import importlib.util
import json
import os
import random
import signal
from pathlib import Path

import pandas as pd
import pytest
from patience import PATIENCE, wait_for
from test_records import FAST, one_line, start

from gradlab import checkpoint
from gradlab.config import run_id, sweep_dir
from gradlab.train import train

ROOT = Path(__file__).resolve().parents[1]

# a stateful clip mode (zclip's averages) under gradient accumulation, dropout for the random state;
# short windows and a small held-out set (what is checked does not depend on them)
STATEFUL = ["model=transformer", "model.dropout=0.1", "clip=zclip", "accum_steps=2", "wandb=offline"]
STATEFUL += ["task.seq_len=16", "task.eval_size=50"]


def _preemption():
    spec = importlib.util.spec_from_file_location("preemption", ROOT / "benchmarks" / "preemption.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


preemption = _preemption()


def assert_same_record(resumed, uninterrupted) -> None:
    (h1, l1, s1), (h2, l2, s2) = preemption.figures(resumed), preemption.figures(uninterrupted)
    pd.testing.assert_frame_equal(h1, h2, check_exact=True)
    pd.testing.assert_frame_equal(l1, l2, check_exact=True)
    assert s1 == s2


def test_a_sweep_killed_twice_ends_with_the_uninterrupted_records(tmp_path, capsys):
    assert preemption.main(kills=2, seed=1, folder=tmp_path, steps=40, seeds="0,1") == 0
    out = capsys.readouterr().out
    assert "equal: all 2 records" in out and "kill 2 after" in out


def test_a_run_killed_at_a_random_step_continues_to_the_uninterrupted_record(tmp_path, compose):
    args = [*STATEFUL, "steps=60", "checkpoint_every=10", "log_every=5", "layer_norms_every=15"]
    conf = compose(*args, "name=killed")
    run_dir, ckpt = sweep_dir(conf) / run_id(conf), checkpoint.file(conf)
    proc = start(["train", *args, f"results_root={tmp_path}", "name=killed", "progress=none"], tmp_path)
    wait_for(ckpt.exists)  # its first checkpoint: step 10
    wait_for(lambda: torch_load(ckpt)["step"] >= random.choice([10, 20]))
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    taken = torch_load(ckpt)["step"]
    assert not run_dir.exists() and 10 <= taken < 60  # killed mid-run, its checkpoint left

    summary = train(conf)  # the same command again
    assert summary["status"] == "completed" and summary["resumed_from_step"] == taken
    assert not ckpt.exists()  # gone once the run ended
    plain = train(compose(*args, "name=plain", "checkpoint_every=0"))
    assert "resumed_from_step" not in plain
    assert_same_record(run_dir, sweep_dir(conf).parent / "plain" / run_dir.name)
    # W&B has every interval, the ones before the kill logged again, as the uninterrupted run has them
    assert wandb_points(run_dir) == wandb_points(sweep_dir(conf).parent / "plain" / run_dir.name)


@pytest.mark.parametrize(
    "sig,code,said", [(signal.SIGINT, 130, "interrupted: "), (signal.SIGTERM, 143, "terminated (SIGTERM): ")]
)
def test_sigterm_and_ctrl_c_record_the_run_interrupted_and_keep_its_checkpoint(tmp_path, sig, code, said):
    args = ["train", *FAST, "steps=100000", "name=int", "checkpoint_every=50", "progress=none"]
    proc = start(args, tmp_path)
    sweep = tmp_path / "results" / "int"
    wait_for(lambda: any(sweep.glob(".gradlab/*.ckpt")))
    os.killpg(proc.pid, sig)
    _, err = proc.communicate(timeout=PATIENCE)
    assert proc.returncode == code, err
    assert one_line(err).startswith(said)
    (summary,) = sweep.glob("*/summary.json")
    record = json.loads(summary.read_text())
    assert record["status"] == "interrupted" and 50 <= record["steps_done"] < 100000
    (kept,) = sweep.glob(".gradlab/*.ckpt")
    assert torch_load(kept)["step"] % 50 == 0


def test_a_checkpoint_of_another_configuration_or_torn_is_not_used(tmp_path, compose, capsys):
    conf = compose(*FAST, "steps=40", "checkpoint_every=10", "name=torn")
    checkpoint.file(conf).parent.mkdir(parents=True)
    checkpoint.file(conf).write_bytes(b"not a checkpoint")
    summary = train(conf)
    assert summary["status"] == "completed" and "resumed_from_step" not in summary
    assert "not used" in capsys.readouterr().err
    assert not checkpoint.file(conf).exists()


def test_checkpointed_runs_train_alone(compose):
    from gradlab.vectorized import why_alone

    assert "checkpoint" in why_alone(compose(*FAST, "checkpoint_every=10"))
    assert why_alone(compose(*FAST)) is None


def torch_load(path):
    import torch

    try:
        return torch.load(path, weights_only=True)
    except Exception:  # being replaced: read it again
        return {"step": -1}


def wandb_points(run_dir) -> list:
    """The history points wandb wrote, without timings."""
    from wandb_records import read_run, wandb_files

    (path,) = wandb_files(run_dir)
    return [
        {
            k: v
            for k, v in point.items()
            if not (k.startswith("_") and k != "_step" or "time" in k or "per_s" in k)
        }
        for point in read_run(path)["history"]
    ]


def submitit_task(sweep: Path) -> int | None:
    """The pid of the submitit job process training in this sweep (what SLURM signals), if any."""
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if b"submitit.core._submit" in args and any(str(sweep).encode() in a for a in args):
            return int(cmdline.parent.name)
    return None


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="needs /proc")
def test_a_preempted_slurm_job_is_requeued_and_continues_from_its_checkpoint(tmp_path, compose):
    """SLURM signals a preempted job's processes (USR2, submitit's signal); submitit checkpoints the
    Hydra job and requeues it (its local executor runs it again), and the run continues."""
    args = ["model=lstm", "model.hidden_size=32", "task=adding", "steps=300", "wandb=off"]
    proc = start(
        ["sweep", *args, "launcher=slurm_local", "checkpoint_every=20", "name=pre", "progress=none"], tmp_path
    )
    sweep = tmp_path / "results" / "pre"
    wait_for(lambda: any(sweep.glob(".gradlab/*.ckpt")))
    os.kill(submitit_task(sweep), signal.SIGUSR2)
    _, err = proc.communicate(timeout=PATIENCE)
    assert proc.returncode == 0, err
    (run_dir,) = [p for p in sweep.iterdir() if p.is_dir() and not p.name.startswith(".")]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and 20 <= summary["resumed_from_step"] < 300
    logs = "".join(p.read_text() for p in sweep.glob(".submitit/*/*_log.*"))
    assert "this job is preempted" in logs and "Requeued job" in logs
    train(compose(*args, "name=plain"))
    assert_same_record(run_dir, tmp_path / "plain" / run_dir.name)
