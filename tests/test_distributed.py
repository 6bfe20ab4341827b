"""Data-parallel runs (DDP, gloo, 2 CPU processes) compute the single-process run on the combined batch."""

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
from wandb_records import wandb_files

from gradlab import records
from gradlab.config import run_id, sweep_dir
from gradlab.train import train

TINY = ["model=mlp", "task=regression", "steps=5", "log_every=1", "eval_every=0", "save_model=true"]


def relative_error(a: dict, b: dict) -> float:
    """||a - b|| / ||a|| over all parameters."""
    diff = sum(((a[k] - b[k]) ** 2).sum() for k in a)
    return float((diff / sum((a[k] ** 2).sum() for k in a)).sqrt())


def gradlab(args, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "gradlab", *args], cwd=cwd, capture_output=True, text=True, timeout=PATIENCE
    )


@pytest.mark.parametrize(
    "clip,accum_steps",
    [  # every mode once; norm clipping, which sums over ranks, with both
        (["clip=none"], 2),
        (["clip=value", "clip_value=0.05"], 1),
        (["clip=norm", "max_norm=0.3"], 1),
        (["clip=norm", "max_norm=0.3"], 2),
    ],
)
def test_two_ranks_equal_one_process_on_the_combined_batch(clip, accum_steps, compose, tmp_path):
    overrides = [*TINY, *clip, f"accum_steps={accum_steps}", "name=ddp", "wandb=off"]
    alone = compose(*overrides)  # records under tmp_path
    single = train(alone)
    out = gradlab(
        ["train", *overrides, "devices=2", "progress=none", f"results_root={tmp_path / 'ranks'}"], tmp_path
    )
    assert out.returncode == 0, out.stderr
    run = (
        tmp_path / "ranks" / "ddp" / run_id(alone)
    )  # the same run id: processes are not part of the identity
    summary = records.read(run)
    assert summary["status"] == single["status"] == "completed" and summary["processes"] == 2

    together, apart = (pd.read_csv(d / "history.csv") for d in (sweep_dir(alone) / run_id(alone), run))
    clipped = together["clipped"].sum()
    assert clip == ["clip=none"] or clipped > 0  # the clip does fire, so the post-clip norm is tested
    for column in ("loss", "grad_norm", "grad_norm_clipped", "clipped"):
        pd.testing.assert_series_equal(apart[column], together[column], rtol=1e-6)
    weights = [torch.load(d / "model.pt") for d in (sweep_dir(alone) / run_id(alone), run)]
    assert relative_error(*weights) < 1e-6


def test_rank_zero_alone_writes_the_record_and_the_wandb_run(tmp_path):
    out = gradlab(["train", *TINY, "devices=2", "name=ddp", "wandb=offline", "progress=lines"], tmp_path)
    assert out.returncode == 0, out.stderr
    (run,) = (tmp_path / "results" / "ddp").glob("*/summary.json")
    run = run.parent
    assert len(pd.read_csv(run / "history.csv")) == 5  # one row per step, not one per rank
    assert len(wandb_files(run)) == 1
    assert out.stdout.count(": completed") == 1 and out.stdout.count("wandb sync") == 1


def test_data_parallel_bad_input_is_one_line(tmp_path):
    uneven = gradlab(["train", *TINY, "devices=2", "batch_size=5"], tmp_path)
    assert uneven.returncode == 2
    assert (
        uneven.stderr
        == "error: batch_size=5: must split evenly over the 2 processes of a data-parallel run\n"
    )
    in_sweep = gradlab(["sweep", *TINY, "seed=0,1", "devices=2"], tmp_path)
    assert in_sweep.returncode == 2 and in_sweep.stderr.startswith(
        "error: devices=2: a data-parallel run is started by"
    )
    assert not (tmp_path / "results").exists()


def test_each_rank_trains_on_its_own_slice_of_every_micro_batch():
    from gradlab.distributed import World, shard

    micro = [(torch.arange(8.0).view(4, 2) + 10 * i, torch.arange(4) + 10 * i) for i in range(2)]
    parts = [shard(micro, World(rank, 2, rank, 2)) for rank in (0, 1)]
    for i, (x, y) in enumerate(micro):
        assert len(parts[0][i][1]) == len(parts[1][i][1]) == 2
        assert torch.equal(torch.cat([parts[0][i][0], parts[1][i][0]]), x)
        assert torch.equal(torch.cat([parts[0][i][1], parts[1][i][1]]), y)
    assert shard(micro, World(0, 1, 0, 1)) is micro


def test_a_killed_data_parallel_run_continues_from_its_checkpoint_to_the_uninterrupted_record(tmp_path):
    """SIGKILL to `gradlab train devices=2` and its torchrun: the ranks (in sessions of their own)
    see their launcher gone and record the run interrupted, keeping the checkpoint rank 0 wrote;
    the same command continues from it to the record of a run never killed, dropout masks included."""
    small = ["model.d_model=16", "model.n_heads=2", "model.d_ff=32", "model.n_layers=1", "task.seq_len=16"]
    args = ["train", "model=transformer", "model.dropout=0.1", *small, "task.eval_size=20", "steps=200"]
    args += ["log_every=5", "devices=2", "wandb=off", "progress=none", f"results_root={tmp_path}"]
    sweep = tmp_path / "killed" / ".gradlab"
    proc = subprocess.Popen(
        [sys.executable, "-m", "gradlab", *args, "checkpoint_every=10", "name=killed"],
        start_new_session=True,
        stderr=subprocess.DEVNULL,
    )
    wait_for(lambda: any(torch_step(f) >= 50 for f in sweep.glob("*.ckpt")))
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    wait_for(lambda: any((tmp_path / "killed").glob("*/summary.json")))  # the ranks record it
    (record,) = (tmp_path / "killed").glob("*/summary.json")
    assert records.read(record.parent)["status"] == "interrupted" and any(sweep.glob("*.ckpt"))

    for extra in (["checkpoint_every=10", "name=killed"], ["name=plain"]):
        out = gradlab([*args, *extra], tmp_path)
        assert out.returncode == 0, out.stderr
    killed, plain = (next((tmp_path / name).glob("*/history.csv")).parent for name in ("killed", "plain"))
    assert records.read(killed)["resumed_from_step"] >= 50
    timings = ["time_s", "steps_per_s", "samples_per_s"]
    history = [pd.read_csv(d / "history.csv").drop(columns=timings) for d in (killed, plain)]
    pd.testing.assert_frame_equal(*history, check_exact=True)


def torch_step(path: Path) -> int:
    try:
        return torch.load(path, weights_only=True)["step"]
    except Exception:  # replaced while read
        return 0
