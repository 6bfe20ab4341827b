"""What a run's device decides, as far as a CPU can show it: fp32 is IEEE fp32, a precision a
recurrent kernel cannot run is refused in one line, a data-parallel run never puts two ranks on
one GPU, launcher=slurm_local hands its jobs the GPUs, the batched engine's memory estimate
counts evaluation, compile says what ran eagerly, and engine=auto reads figures per device.
tests/test_cuda.py states the same on a GPU."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from patience import PATIENCE

from gradlab import devices, distributed, parallel
from gradlab.errors import ConfigError


def gradlab(args, cwd) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "gradlab", *args], cwd=cwd, capture_output=True, text=True, timeout=PATIENCE
    )


# --- fp32 and the precisions


def test_a_run_turns_tf32_off_and_records_its_fp32_arithmetic(compose, monkeypatch):
    from gradlab.train import build, train

    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)  # torch's default
    build(compose("model=mlp", "task=regression"))
    assert torch.backends.cudnn.allow_tf32 is False and torch.backends.cuda.matmul.allow_tf32 is False
    summary = train(compose("model=mlp", "task=regression", "steps=2", "wandb=off"))
    assert summary["fp32_precision"] == "ieee"


def test_bf16_recurrences_are_refused_on_a_gpu_and_nothing_else_is():
    lstm, linear = torch.nn.LSTM(2, 4), torch.nn.Linear(2, 2)
    with pytest.raises(ConfigError, match=r"^precision=bf16: torch's autocast runs cuDNN's LSTM in float16"):
        devices.check_precision("bf16", lstm, torch.device("cuda"))
    devices.check_precision("bf16", linear, torch.device("cuda"))
    devices.check_precision("fp16", lstm, torch.device("cuda"))  # scaled float16: what cuDNN runs
    devices.check_precision("fp32", lstm, torch.device("cuda"))


def test_an_lstm_in_fp16_on_this_cpu_runs_or_is_one_line(tmp_path):
    """oneDNN has no fp16 LSTM on many CPUs: there the run is refused before anything is
    written; where the CPU has one, the run trains."""
    failure = devices.cpu_trial(torch.nn.LSTM, "fp16")
    out = gradlab(
        [
            "train",
            "model=lstm",
            "model.hidden_size=8",
            "task.length=6",
            "precision=fp16",
            "steps=2",
            "eval_every=0",
            "wandb=off",
            "device=cpu",
        ],
        tmp_path,
    )
    if failure:
        assert out.returncode == 2 and out.stderr == (
            f"error: precision=fp16: torch cannot run LSTM in fp16 on this "
            f"CPU ({failure}); use precision=fp32 or bf16\n"
        )
        assert not (tmp_path / "results").exists()
    else:
        assert out.returncode == 0 and ": completed" in out.stdout


# --- several processes, several jobs


def test_one_gpu_named_for_every_rank_of_a_data_parallel_run_is_refused():
    conf = {"batch_size": 64, "device": "cuda:0"}
    with pytest.raises(ConfigError, match=r"^device=cuda:0: names one GPU for all 2 processes"):
        distributed.check(conf, 2)
    distributed.check(conf, 1)


@pytest.mark.parametrize("device,gpus,given", [("auto", 2, 2), ("cpu", 2, 0), ("auto", 0, 0)])
def test_slurm_local_hands_its_jobs_the_machines_gpus(tmp_path, monkeypatch, device, gpus, given):
    """submitit's local executor hides every GPU its jobs are not given (CUDA_VISIBLE_DEVICES="")."""
    from gradlab.launch import GPUS_PER_NODE, _launch_overrides, plan

    monkeypatch.setattr(parallel, "gpus", lambda: gpus)
    p = plan(
        ["model=mlp", "seed=0,1", "launcher=slurm_local", f"device={device}", f"results_root={tmp_path}"],
        True,
    )
    assert f"{GPUS_PER_NODE}={given}" in _launch_overrides(p, 2)
    mine = plan(["model=mlp", "launcher=slurm_local", f"{GPUS_PER_NODE}=1", f"results_root={tmp_path}"], True)
    assert not any(
        s.startswith(GPUS_PER_NODE) for s in _launch_overrides(mine, 1)
    )  # the user's setting stays


# --- memory, compile, engine=auto


def test_the_memory_estimate_counts_the_held_out_pass(compose):
    """A member's estimate covers what its evaluation keeps: every hidden state of up to 1000
    held-out sequences, far more than a training batch of 8 saves."""
    from gradlab.vectorized import member_bytes

    conf = compose("model=lstm", "batch_size=8", "task.length=50", "task.eval_size=1000")
    hidden = conf["model"]["hidden_size"]
    states = 1000 * 50 * hidden * 4  # the (batch, T, H) float32 states of one held-out pass
    assert member_bytes(conf) >= states


@pytest.mark.parametrize(
    "overrides,execution",
    [
        (
            ["model=lstm", "model.hidden_size=8", "task.length=6", "compile=true"],
            "partly compiled (eager: Attempted to wrap RNN, GRU, or LSTM)",
        ),
        (["model=mlp", "task=regression", "compile=cudagraphs"], "compiled, CUDA graphs skipped (2 graphs)"),
    ],
)
def test_compile_says_what_ran_eagerly_and_whether_cuda_graphs_ran(compose, overrides, execution):
    from gradlab.train import train

    summary = train(compose(*overrides, "steps=3", "eval_every=0", "wandb=off"))
    assert summary["status"] == "completed" and summary["execution"] == execution


FIGURES = {
    "cpu": {
        "date": "2026-01-01",
        "torch": "2.0",
        "steps": 40,
        "speedups": {
            "mlp": {"2": 1.5, "4": 1.8, "16": 2.9, "64": 2.85},
            "rnn": {"4": 1.2, "16": 1.6, "64": 0.92},
            "lstm": {"4": 0.59, "16": 0.49},
        },
    }
}
MLP, RNN, LSTM = (
    {"_target_": "gradlab.models.mlp.MLP", "name": "mlp"},
    {"_target_": "gradlab.models.rnn.RecurrentNet", "name": "rnn", "cell": "rnn"},
    {"_target_": "gradlab.models.rnn.RecurrentNet", "name": "lstm", "cell": "lstm"},
)


@pytest.mark.parametrize(
    "runs,model,most,said",
    [
        (2, MLP, 64, "mlp on cpu: 2 runs 1.50x, 4 runs 1.80x, 16 runs 2.90x, 64 runs 2.85x together"),
        (3, RNN, 1, "rnn on cpu: 4 runs 1.20x"),
        (40, RNN, 16, ": in parts of at most 16"),
        (16, LSTM, 1, "lstm on cpu: 4 runs 0.59x, 16 runs 0.49x together"),
        (16, {**LSTM, "_target_": "mynets.LSTM"}, 1, "model lstm not measured on cpu, so sequential"),
    ],
)
def test_auto_follows_the_figures_measured_on_the_device(monkeypatch, runs, model, most, said):
    from gradlab import vectorized

    monkeypatch.setattr(vectorized, "measured", lambda: FIGURES)
    size, why = vectorized.choose(runs, model, "cpu", 40)
    assert size == most and said in why
    size, why = vectorized.choose(runs, MLP, "NVIDIA H200", 40)
    assert size == 1 and why.startswith("auto: nothing measured on NVIDIA H200, so sequential")


def test_auto_keeps_runs_shorter_than_those_measured_one_at_a_time(monkeypatch):
    from gradlab import vectorized

    monkeypatch.setattr(vectorized, "measured", lambda: FIGURES)
    assert vectorized.choose(16, MLP, "cpu", 40)[0] == 64
    size, why = vectorized.choose(16, MLP, "cpu", 39)
    assert (
        size == 1
        and why == "auto: runs of 39 steps, shorter than the 40-step runs measured on cpu, so sequential"
    )


def test_the_shipped_figures_say_when_and_with_what_they_were_measured():
    from gradlab.vectorized import faster_counts, measured

    for device, figures in measured().items():
        assert {"device", "torch", "date", "command", "steps", "speedups"} <= set(figures), device
        for speedups in figures["speedups"].values():
            fewest, most = faster_counts({int(n): s for n, s in speedups.items()})
            assert fewest is None or speedups[str(fewest)] > 1 and speedups[str(most)] > 1
