"""What gradlab does on a GPU: the step never waits on the device between log intervals, batched
members are their solo runs, a seed is one data stream on every device, fp32 is IEEE fp32,
precisions are what they say, and compile says how it ran.

Every test here is marked `cuda` and skipped without a GPU; benchmarks/gpu_check.sh runs them
on the GPU machine. The other test files state the same behaviour on the CPU.

Tolerance of CPU against GPU: the same run on the two devices differs only in the order of
float sums (cuDNN's and oneDNN's kernels, IEEE fp32 on both). Over 200 steps of the main job
the losses agree to rtol 1e-3 and the pre-clip norms to rtol 1e-2; on the CPU alone, the same
run trained batched and alone (the same kind of difference) agreed to 5e-7 and 1.3e-4.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import warnings
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
from patience import PATIENCE

from gradlab.components import options
from gradlab.config import run_id, sweep_dir
from gradlab.loop import Loop, Member, Single
from gradlab.progress import RunProgress
from gradlab.tracking import Tracker
from gradlab.train import build, train

pytestmark = pytest.mark.cuda
CUDA = torch.device("cuda")
MLP = ["model=mlp", "task=regression", "model.hidden=[32,32]", "task.n_samples=256", "task.features=8"]


def stepper(conf: dict) -> SimpleNamespace:
    """A run's loop (gradlab.loop) with its record kept in memory, and the run's log."""
    session = SimpleNamespace(
        history=[],
        layers=[],
        progress=RunProgress("none", "test", conf["steps"]),
        tracker=Tracker(conf, None, enabled=False),
    )
    member = Member(conf, build(conf), session).start()
    return SimpleNamespace(loop=Loop([member], Single([member])), log=member.log)


def steps(s: SimpleNamespace, first: int, last: int) -> None:
    for step in range(first, last + 1):
        s.loop.step(step)


def between_logs(conf: dict) -> None:
    """Three warm-up steps (state moved to the device, kernels chosen), then steps 4-9 of a log
    interval of 10 with CUDA's sync check raising on any host read."""
    s = stepper(conf)
    steps(s, 1, 3)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        steps(s, 4, 9)
    finally:
        torch.cuda.set_sync_debug_mode("default")


# --- the step does not wait on the device


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("mode", options("clip"))
def test_no_host_read_in_the_step_for_every_clip_mode_and_optimizer(compose, mode, precision):
    for optim in options("optim"):
        between_logs(
            compose(
                *MLP,
                f"clip={mode}",
                f"optim={optim}",
                f"precision={precision}",
                "device=cuda",
                "steps=20",
                "log_every=10",
                "eval_every=0",
                "layer_norms_every=5",
                "wandb=off",
            )
        )


@pytest.mark.parametrize("model", ["mlp", "rnn", "gru", "lstm", "transformer"])
def test_no_host_read_in_the_step_of_every_model(compose, model):
    between_logs(
        compose(
            f"model={model}",
            "device=cuda",
            "steps=20",
            "log_every=10",
            "eval_every=0",
            "layer_norms_every=5",
            "wandb=off",
        )
    )


def test_fp16_reads_the_host_once_a_step_for_the_scaler(compose):
    """torch's GradScaler.step reads found_inf back (`.item()`) to decide whether to step: the one
    host read of an fp16 step, counted here."""
    s = stepper(
        compose(
            *MLP,
            "precision=fp16",
            "device=cuda",
            "steps=20",
            "log_every=10",
            "eval_every=0",
            "layer_norms_every=0",
            "wandb=off",
        )
    )
    steps(s, 1, 3)
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            steps(s, 4, 9)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    reads = [w for w in caught if "synchroniz" in str(w.message)]
    assert len(reads) == 6, [str(w.message) for w in caught]


# --- batched members, data streams, CPU against GPU


@pytest.mark.parametrize("model", ["mlp", "rnn", "gru", "lstm", "transformer"])
def test_every_member_matches_its_run_alone_on_a_gpu(model, compose):
    from test_vectorized import COMMON, MEMBERS, SMALL, assert_members_match_alone

    assert_members_match_alone(
        compose,
        [
            compose(f"model={model}", *SMALL[model], *COMMON, *m, "device=cuda", "name=together")
            for m in MEMBERS
        ],
    )


@pytest.mark.parametrize("task", ["adding", "copy", "temporal_order", "digits", "regression", "text"])
def test_a_seed_is_one_data_stream_on_every_device(task):
    from gradlab.components import option
    from gradlab.tasks import build_task

    served = {}
    for device in ("cpu", "cuda"):
        t = build_task(option("task", task))
        t.prepare()
        t.load(torch.device(device))
        stream = t.batches(16, 7)
        served[device] = [[v.cpu() for v in next(stream)] for _ in range(3)] + [
            [v.cpu() for v in batch] for batch in t.eval_batches()
        ]
    for on_cpu, on_gpu in zip(served["cpu"], served["cuda"]):
        for a, b in zip(on_cpu, on_gpu):
            assert torch.equal(a, b)


def test_the_main_job_computes_the_same_numbers_on_cpu_and_gpu(compose):
    runs = []
    for device in ("cpu", "cuda"):
        conf = compose(
            "model=lstm",
            "clip=norm",
            "max_norm=1",
            f"device={device}",
            "steps=200",
            "eval_every=100",
            "wandb=off",
            f"name={device}",
        )
        summary = train(conf)
        assert summary["status"] == "completed" and summary["fp32_precision"] == "ieee"
        runs.append(pd.read_csv(sweep_dir(conf) / run_id(conf) / "history.csv"))
    cpu, gpu = runs
    pd.testing.assert_series_equal(gpu["loss"], cpu["loss"], rtol=1e-3)
    pd.testing.assert_series_equal(gpu["grad_norm"], cpu["grad_norm"], rtol=1e-2)
    pd.testing.assert_series_equal(gpu["eval_loss"].dropna(), cpu["eval_loss"].dropna(), rtol=1e-3)
    clear = (cpu["grad_norm"] - 1).abs() > 0.01  # steps whose norm is not within 1% of the threshold
    assert (gpu["clipped"][clear] == cpu["clipped"][clear]).all()


# --- fp32 is fp32, and each precision is what it says


def test_fp32_is_ieee_fp32_on_a_gpu(compose):
    """TF32 (cuDNN's default for fp32 recurrences) would be ~1e-3 off a float64 reference."""
    run = build(compose("model=lstm", "device=cuda"))
    assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
    x, _ = next(run.task.batches(64, 0))
    with torch.no_grad():
        out = run.model(x).double()
        reference = run.model.double()(x.double())
    assert ((out - reference).abs().max() / reference.abs().max()).item() < 1e-5


def test_bf16_recurrences_are_refused_because_cudnn_runs_them_in_fp16():
    from gradlab.devices import check_precision
    from gradlab.errors import ConfigError

    lstm = torch.nn.LSTM(4, 8, batch_first=True).cuda()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out, _ = lstm(torch.randn(2, 3, 4, device=CUDA))
    with pytest.raises(ConfigError, match="float16, not bfloat16"):
        check_precision("bf16", lstm, CUDA)
    assert out.dtype == torch.float16  # the refusal's reason: once torch runs it in bf16, lift the refusal


def test_bf16_lstm_on_a_gpu_is_one_line_and_writes_nothing(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "gradlab", "train", "model=lstm", "precision=bf16", "device=cuda"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=PATIENCE,
    )
    assert out.returncode == 2 and out.stderr.count("\n") == 1
    assert out.stderr.startswith("error: precision=bf16: torch's autocast runs cuDNN's LSTM in float16")
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize("factor", [0.5, 2.0])
def test_fp16_clips_the_unscaled_gradients_on_a_gpu(compose, factor):
    """AMP's order on a GPU: unscale, measure, clip, then the scaler's step; the recorded norm
    is the true one, not the loss scale times it."""
    plain = stepper(compose(*MLP, "clip=none", "device=cuda", "steps=1", "wandb=off"))
    steps(plain, 1, 1)  # its last step: the history is read
    true_norm = plain.log.history[-1]["grad_norm"]
    half = stepper(
        compose(
            *MLP,
            "clip=norm",
            f"max_norm={factor * true_norm}",
            "precision=fp16",
            "device=cuda",
            "steps=1",
            "wandb=off",
        )
    )
    steps(half, 1, 1)
    row = half.log.history[-1]
    assert half.scaler.get_scale() > 1 and row["scaler_skipped"] == 0
    assert math.isclose(row["grad_norm"], true_norm, rel_tol=2e-2)
    assert row["clipped"] == (factor < 1)
    assert math.isclose(row["grad_norm_clipped"], min(1.0, factor) * true_norm, rel_tol=2e-2)


# --- compile says how it ran


@pytest.mark.parametrize(
    "model,mode,execution",
    [
        ("mlp", "true", "compiled"),
        ("mlp", "cudagraphs", "compiled, with CUDA graphs"),
        ("lstm", "true", "partly compiled (eager: Attempted to wrap RNN, GRU, or LSTM)"),
    ],
)
def test_compile_and_cuda_graphs_say_how_they_ran_and_compute_the_eager_run(compose, model, mode, execution):
    small = MLP if model == "mlp" else ["model=lstm", "model.hidden_size=16", "task.length=10"]
    runs = []
    for compiled in ("false", mode):
        conf = compose(
            *small,
            f"compile={compiled}",
            "device=cuda",
            "steps=6",
            "log_every=1",
            "wandb=off",
            f"name={compiled}",
        )
        summary = train(conf)
        assert summary["status"] == "completed", summary
        assert summary["execution"] == ("eager" if compiled == "false" else execution)
        runs.append(pd.read_csv(sweep_dir(conf) / run_id(conf) / "history.csv"))
    columns = ["loss", "grad_norm", "grad_norm_clipped"]
    pd.testing.assert_frame_equal(runs[1][columns], runs[0][columns], rtol=1e-4)


# --- what a GPU run writes, plans and refuses


def test_saved_weights_load_on_a_machine_without_a_gpu(compose):
    conf = compose(*MLP, "device=cuda", "steps=2", "save_model=true", "wandb=off")
    train(conf)
    weights = torch.load(sweep_dir(conf) / run_id(conf) / "model.pt")
    assert weights and all(w.device.type == "cpu" for w in weights.values())


def test_planning_a_sweep_opens_no_cuda_context(tmp_path):
    """The process that checks a sweep for a launcher's workers holds no GPU memory."""
    code = (
        "import torch; from gradlab.launch import plan; "
        f"plan(['model=lstm', 'device=cuda', 'seed=0,1', 'results_root={tmp_path}'], multirun=True); "
        "print(torch.cuda.is_initialized())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=PATIENCE)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_the_memory_estimate_covers_a_groups_training_and_evaluation(compose):
    from gradlab.vectorized import member_bytes, train_group

    confs = [
        compose(
            "model=lstm",
            "device=cuda",
            f"seed={seed}",
            "steps=2",
            "eval_every=2",
            "wandb=off",
            "engine=vectorized",
        )
        for seed in range(8)
    ]
    need = member_bytes(confs[0])
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    assert [s["status"] for s in train_group(confs)] == ["completed"] * 8
    assert torch.cuda.max_memory_allocated() - base <= 8 * need


def test_auto_says_when_nothing_was_measured_on_this_gpu(compose):
    from gradlab.devices import kind
    from gradlab.vectorized import measured, schedule

    (part,) = schedule([compose("model=mlp", f"seed={seed}", "device=cuda") for seed in range(4)])
    if kind(CUDA) in measured():
        assert f"on {kind(CUDA)}:" in part.why
    else:
        assert part.engine == "sequential" and f"nothing measured on {kind(CUDA)}" in part.why


def test_slurm_local_runs_see_the_gpu(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "gradlab",
            "sweep",
            *MLP,
            "steps=2",
            "eval_every=0",
            "seed=0,1",
            "device=cuda",
            "launcher=slurm_local",
            "wandb=off",
            "name=slurm",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=PATIENCE,
    )
    assert out.returncode == 0, out.stderr
    summaries = [json.loads(p.read_text()) for p in (tmp_path / "results" / "slurm").glob("*/summary.json")]
    assert len(summaries) == 2 and {s["device"] for s in summaries} == {torch.cuda.get_device_name()}


def test_one_gpu_named_for_every_rank_is_refused(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "gradlab", "train", *MLP, "devices=2", "device=cuda:0"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=PATIENCE,
    )
    assert out.returncode == 2 and out.stderr.startswith(
        "error: device=cuda:0: names one GPU for all 2 processes"
    )
    assert not (tmp_path / "results").exists()
