"""The training step and the run around it: accumulation is equivalent to one big batch,
clipping sees unscaled fp16 gradients, divergence and exceptions end a run with a record
instead of an exception, runs are deterministic, and finished runs are found again."""

import contextlib
import copy
import itertools
import json
import math
import re
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from gradlab.models import build_model

from gradlab.clip import build_clip
from gradlab.components import option
from gradlab.config import run_id, sweep_dir
from gradlab.errors import ConfigError
from gradlab.figures import columns, on_device
from gradlab.objective import loss_fn
from gradlab.optim import build_optimizer
from gradlab.step import StepParts, read, to_host, train_step
from gradlab.tasks import build_task
from gradlab.tasks.regression import Regression
from gradlab.train import build, train

# Models without batch-dependent layers, on tasks small enough for a CPU test.
SETUPS = {
    "mlp-digits": (option("model", "mlp", hidden=[16], activation="tanh"), option("task", "digits")),
    "mlp-regression": (
        option("model", "mlp", hidden=[16]),
        option("task", "regression", n_samples=32, features=5),
    ),
    "lstm-adding": (option("model", "lstm", hidden_size=8), option("task", "adding", length=8, eval_size=10)),
}
# Thresholds low enough that clipping fires on every step of these setups.
CLIPS = {
    "none": option("clip", "none"),
    "value": option("clip", "value", clip_value=0.01),
    "norm": option("clip", "norm", max_norm=0.1),
}
OPTIMS = {"sgd": (option("optim", "sgd"), 0.1), "adam": (option("optim", "adam"), 1e-2)}
SGD = OPTIMS["sgd"]
TIMING = ["time_s", "steps_per_s", "samples_per_s"]
FP32 = contextlib.nullcontext
K, B = 4, 8  # micro-batches per step, samples per micro-batch


def alone(figures: dict) -> dict:
    """One run's step figures read on the host: a number each (to_host gives one per member)."""
    return {name: value for name, (value,) in to_host([figures])[0].items()}


def setup(name: str):
    """The loaded task and a freshly initialised model of a SETUPS entry."""
    model_cfg, task_cfg = SETUPS[name]
    task = build_task(task_cfg)
    task.load("cpu")
    torch.manual_seed(0)
    return task, build_model(model_cfg, task.spec)


def run_steps(model, task, batches, k, clip_cfg, optim, autocast=FP32, scaler=None, p=2.0):
    """Train a copy of `model` one optimizer step per batch, each batch split into k micro-batches."""
    model = copy.deepcopy(model)
    optim_cfg, lr = optim
    optimizer = build_optimizer(optim_cfg, model.parameters(), lr)
    clip = build_clip(clip_cfg, p)
    scaler = scaler or torch.amp.GradScaler("cpu", enabled=False)
    parts = StepParts(loss_fn(task.spec), optimizer, clip, scaler, autocast, p)
    outs = [train_step(model, list(zip(x.chunk(k), y.chunk(k))), parts) for x, y in batches]
    return model, torch.stack([torch.stack([out.figures[n] for n in on_device()]) for out in outs])


def flat(model) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def named(row: torch.Tensor) -> dict:
    """One step's device figures (a row of run_steps' tensor) by name."""
    return dict(zip(on_device(), row.tolist()))


def scalar(scalars, name, fp16=False):
    """One recorded column of the steps' figures, as the host reads them."""
    return torch.tensor([read(named(row), fp16)[name] for row in scalars])


def record(summary: dict, conf: dict, file: str = "history.csv") -> Path:
    return sweep_dir(conf) / summary["run_id"] / file


def history(summary: dict, conf: dict) -> pd.DataFrame:
    return pd.read_csv(record(summary, conf))


# --- the step itself


@pytest.mark.parametrize("optim", sorted(OPTIMS))
@pytest.mark.parametrize("clip", sorted(CLIPS))
@pytest.mark.parametrize("name", sorted(SETUPS))
def test_k_micro_batches_equal_one_batch_of_k_times_b(name, clip, optim):
    task, model = setup(name)
    batches = list(itertools.islice(task.batches(K * B, seed=0), 3))
    whole, s1 = run_steps(model, task, batches, 1, CLIPS[clip], OPTIMS[optim])
    accumulated, sk = run_steps(model, task, batches, K, CLIPS[clip], OPTIMS[optim])

    start, a, b = flat(model), flat(whole), flat(accumulated)
    assert (a - b).norm() <= 1e-6 * a.norm()
    assert (a - b).norm() <= 1e-5 * (a - start).norm()  # also relative to the update itself
    torch.testing.assert_close(sk, s1, rtol=1e-5, atol=1e-7, equal_nan=True)  # smoothness: nan, off
    assert (scalar(s1, "clipped") == (clip != "none")).all()  # the thresholds do bite


def test_step_is_backward_clip_update_in_that_order():
    """One SGD step equals the textbook sequence: backward on the mean loss, clip_grad_norm_, p -= lr * g."""
    task, model = setup("mlp-digits")
    x, y = next(task.batches(K * B, seed=0))
    lr, max_norm = SGD[1], CLIPS["norm"]["max_norm"]
    stepped, scalars = run_steps(model, task, [(x, y)], K, CLIPS["norm"], SGD)

    reference = copy.deepcopy(model)
    loss = loss_fn(task.spec)(reference(x), y)
    loss.backward()
    pre = torch.nn.utils.clip_grad_norm_(reference.parameters(), max_norm)
    with torch.no_grad():
        for p in reference.parameters():
            p -= lr * p.grad
    row = read(named(scalars[0]), fp16=False)
    assert math.isclose(row["loss"], loss.item(), rel_tol=1e-6)
    assert math.isclose(row["grad_norm"], pre.item(), rel_tol=1e-5)
    assert pre > max_norm and row["clipped"] == 1 and row["scaler_skipped"] == 0
    assert math.isclose(row["grad_norm_clipped"], max_norm, rel_tol=1e-5)
    torch.testing.assert_close(flat(stepped), flat(reference), rtol=1e-5, atol=1e-7)


def fp16_autocast():
    """CPU autocast to float16 with a CPU GradScaler, or a skip where this torch lacks them."""
    try:
        with torch.autocast("cpu", dtype=torch.float16):
            ok = torch.nn.Linear(2, 2)(torch.ones(1, 2)).dtype == torch.float16
        torch.amp.GradScaler("cpu")
    except (RuntimeError, TypeError, ValueError) as e:
        pytest.skip(f"no CPU float16 autocast / GradScaler in this torch: {e}")
    if not ok:
        pytest.skip("CPU autocast does not produce float16 here")
    return partial(torch.autocast, "cpu", dtype=torch.float16)


@pytest.mark.parametrize("factor", [0.5, 2.0])
def test_fp16_clips_the_unscaled_gradients(factor):
    """Clipping happens after unscale: the measured norm is the true one, not 2**12 times it."""
    autocast = fp16_autocast()
    task, model = setup("mlp-digits")
    batch = next(task.batches(K * B, seed=0))
    _, [exact] = run_steps(model, task, [batch], K, CLIPS["none"], SGD)
    true_norm = named(exact)["grad_norm"]
    clip_cfg = option("clip", "norm", max_norm=factor * true_norm)

    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    half, [out] = run_steps(model, task, [batch], K, clip_cfg, SGD, autocast, scaler)
    full, _ = run_steps(model, task, [batch], K, clip_cfg, SGD)
    row = read(named(out), fp16=True)
    grad_norm, post, clipped = row["grad_norm"], row["grad_norm_clipped"], row["clipped"]
    assert row["scaler_skipped"] == 0 and scaler.get_scale() == 2.0**12
    assert math.isclose(grad_norm, true_norm, rel_tol=2e-2)  # fp16 forward: loose
    assert clipped == (factor < 1)
    assert math.isclose(post, min(true_norm, factor * true_norm), rel_tol=2e-2)
    torch.testing.assert_close(flat(half), flat(full), rtol=0, atol=2e-3 * flat(model).abs().max().item())


@pytest.mark.parametrize("clip", ["value", "norm"])
def test_step_skipped_by_the_scaler_is_not_counted_as_clipped(clip):
    def overflow(out, y):  # times the loss scale: an inf gradient, never a nan
        return out.sum() * 1e38

    model = torch.nn.Linear(1, 1, bias=False)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    out = train_step(
        model,
        [(torch.ones(1, 1), torch.zeros(1, 1))],
        StepParts(overflow, optimizer, build_clip(CLIPS[clip], 2.0), scaler, FP32, 2.0),
    )
    row = read(alone(out.figures), fp16=True)
    assert row["grad_norm"] == math.inf and row["scaler_skipped"] == 1
    assert row["clipped"] == 0


# --- whole runs through train(conf)

RUNS = {  # small run configs (overrides)
    "mlp-regression": [
        "model=mlp",
        "task=regression",
        "model.hidden=[8]",
        "task.n_samples=32",
        "task.features=5",
    ],
    "lstm-adding": ["model=lstm", "model.hidden_size=8", "task.length=8", "task.eval_size=50"],
}


def small_run(compose, name, *overrides):
    return compose(*RUNS[name], "steps=6", "log_every=4", "eval_every=3", "layer_norms_every=2", *overrides)


@pytest.mark.parametrize(
    "name,clip,optim",
    [
        ("mlp-regression", ["clip=norm", "max_norm=0.1"], "optim=sgd"),
        ("lstm-adding", ["clip=value", "clip_value=0.01"], "optim=adam"),
    ],
    ids=["mlp-norm-sgd", "lstm-value-adam"],
)
def test_accumulated_run_logs_the_same_history_as_one_batch(compose, name, clip, optim):
    """End to end, to rtol 1e-5: loss, norms, clip flags and eval loss of the two runs agree."""
    runs = [
        small_run(compose, name, *clip, optim, "lr=0.01", f"accum_steps={k}", f"batch_size={b}")
        for k, b in ((K, B), (1, K * B))
    ]
    accumulated, whole = (history(train(conf), conf) for conf in runs)
    columns = ["loss", "grad_norm", "grad_norm_clipped", "clipped", "eval_loss"]
    np.testing.assert_allclose(accumulated[columns], whole[columns], rtol=1e-5)
    assert whole["clipped"].all()  # the threshold bites


def test_non_finite_loss_ends_the_run_as_diverged_at_that_step(compose):
    # The first step starts from the initial weights and is finite; its update (lr 1e30)
    # makes every later loss overflow float32. log_every > 2: the step is not the flush's.
    conf = small_run(
        compose, "mlp-regression", "optim=sgd", "lr=1e30", "clip=none", "steps=20", "log_every=10"
    )
    summary = train(conf)
    assert summary["status"] == "diverged" and summary["diverged_step"] == 2
    on_disk = json.loads(record(summary, conf, "summary.json").read_text())
    assert on_disk["status"] == "diverged" and on_disk["diverged_step"] == 2
    h = history(summary, conf)
    assert h["step"].tolist() == [1, 2]  # the record stops at the bad step
    assert math.isfinite(h["loss"][0]) and not math.isfinite(h["loss"][1])


# torch warns whenever the scaler skips the very first optimizer step (the schedule still advances)
@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before `optimizer.step\\(\\)`")
def test_fp16_overflow_is_a_skipped_step_not_divergence(compose, monkeypatch):
    fp16_autocast()
    # a loss scale far too high: the first steps overflow until the scaler has halved it enough
    monkeypatch.setattr(torch.amp, "GradScaler", partial(torch.amp.GradScaler, init_scale=2.0**40))
    conf = small_run(compose, "mlp-regression", "precision=fp16", "steps=30", "log_every=10")
    summary = train(conf)
    h = history(summary, conf)
    skipped = h["scaler_skipped"] == 1
    assert summary["status"] == "completed" and summary["steps_done"] == 30
    assert summary["scaler_skips"] == skipped.sum() > 0 and not skipped.iloc[-1]
    assert not np.isfinite(h["grad_norm"][skipped]).any() and np.isfinite(h["grad_norm"][~skipped]).all()


def test_exception_in_a_run_is_recorded_as_failed(compose, monkeypatch):
    real = Regression.batches

    def two_then_boom(self, n, seed):
        yield from itertools.islice(real(self, n, seed), 2)
        raise RuntimeError("boom")

    monkeypatch.setattr(Regression, "batches", two_then_boom)
    conf = small_run(compose, "mlp-regression", "log_every=1")
    summary = train(conf)
    assert summary["status"] == "failed" and summary["error"] == "RuntimeError: boom"
    assert json.loads(record(summary, conf, "summary.json").read_text())["error"] == "RuntimeError: boom"
    assert history(summary, conf)["step"].tolist() == [1, 2] and summary["steps_done"] == 2

    monkeypatch.undo()  # a failed run is not a finished one: it runs again
    again = train(conf)
    assert "skipped" not in again and again["status"] == "completed"


def test_same_seed_same_history_other_seed_other_history(compose, tmp_path):
    conf = small_run(compose, "lstm-adding")
    first, same = {**conf, "results_root": str(tmp_path / "a")}, {**conf, "results_root": str(tmp_path / "b")}
    other = {**conf, "seed": 1}
    runs = [(train(c), c) for c in (first, same, other)]
    h1, h2, h3 = (history(*run).drop(columns=TIMING) for run in runs)
    pd.testing.assert_frame_equal(h1, h2, check_exact=True)
    pd.testing.assert_frame_equal(
        *(pd.read_csv(record(*run, "layer_norms.csv")) for run in runs[:2]), check_exact=True
    )
    assert set(h1.columns) == set(columns()) - set(TIMING)
    assert not np.allclose(h1["loss"], h3["loss"])


def test_finished_run_is_skipped_unless_forced(compose):
    conf = small_run(compose, "mlp-regression")
    summary = train(conf)
    marker = record(summary, conf, "marker")
    marker.touch()  # gone if the run directory is started afresh

    skipped = train(conf)
    assert skipped == {**summary, "skipped": True} and marker.exists()
    forced = train({**conf, "force": True})
    assert "skipped" not in forced and forced["status"] == "completed" and not marker.exists()


def test_run_killed_half_way_is_run_again(compose):
    conf = small_run(compose, "mlp-regression")
    run_dir = sweep_dir(conf) / run_id(conf)
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text("killed: true\n")
    summary = train(conf)
    assert "skipped" not in summary and summary["status"] == "completed"
    assert (run_dir / "summary.json").exists() and len(history(summary, conf)) == conf["steps"]


@pytest.mark.parametrize(
    "clip,expected",
    [
        (["clip=norm", "max_norm=1e-6"], 1.0),
        (["clip=none"], 0.0),
        (["clip=norm", "max_norm=1.0"], None),  # some steps over the threshold, some under
    ],
    ids=["all", "none", "some"],
)
def test_clip_fraction_is_the_share_of_clipped_steps(compose, clip, expected):
    conf = small_run(compose, "mlp-regression", *clip, "steps=12", "batch_size=16")
    summary = train(conf)
    h = history(summary, conf)
    assert summary["clip_fraction"] == round(h["clipped"].mean(), 6)
    np.testing.assert_allclose(h["clip_fraction"], h["clipped"].cumsum() / h["step"])
    if expected is None:
        assert 0 < summary["clip_fraction"] < 1
    else:
        assert summary["clip_fraction"] == expected
    if conf["clip"]["mode"] == "norm":
        max_norm = conf["clip"]["max_norm"]
        assert (h["clipped"] == (h["grad_norm"] > max_norm)).all()
        np.testing.assert_allclose(h["grad_norm_clipped"], np.minimum(h["grad_norm"], max_norm), rtol=1e-5)


def test_compiled_run_computes_the_eager_run(compose):
    """compile=true changes how the model runs, not what it computes (up to float rounding); the
    summary says the model ran compiled, and torch's fallback setting is left as it was."""
    runs, executions = [], []
    for compiled in ("false", "true"):
        conf = compose(
            "model=mlp",
            "task=regression",
            "steps=5",
            "log_every=1",
            f"compile={compiled}",
            f"name={compiled}",
            "wandb=off",
        )
        summary = train(conf)
        assert summary["status"] == "completed", summary
        runs.append(history(summary, conf))
        executions.append(summary["execution"])
    assert executions == ["eager", "compiled"]
    assert torch._dynamo.config.suppress_errors is False
    from typer.testing import CliRunner

    from cli import app

    dry = CliRunner().invoke(
        app,
        [
            "train",
            "model=mlp",
            "task=regression",
            "steps=5",
            "log_every=1",
            "compile=true",
            "name=true",
            "wandb=off",
            f"results_root={conf['results_root']}",
            "--dry-run",
        ],
    )
    assert dry.exit_code == 0, dry.output
    assert (
        "compile: true: torch.compile each model" in dry.output and "done (completed, compiled)" in dry.output
    )
    assert run_id(compose("compile=true")) == run_id(compose("compile=false"))  # the same run
    columns = ["loss", "grad_norm", "grad_norm_clipped", "clipped"]
    pd.testing.assert_frame_equal(runs[1][columns], runs[0][columns], rtol=1e-5)


def test_a_model_that_does_not_compile_runs_eagerly_and_says_so(compose, monkeypatch):
    """A compiler that fails (here: inductor raises) leaves the run eager: the same numbers as
    compile=false, the summary says so, and the fallback did not outlive the run."""
    import torch._inductor.compile_fx

    def fails(*args, **kwargs):
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(torch._inductor.compile_fx, "compile_fx", fails)
    runs = []
    for compiled in ("false", "true"):
        conf = compose(
            "model=mlp",
            "task=regression",
            "steps=3",
            "log_every=1",
            f"compile={compiled}",
            f"name=fallback-{compiled}",
            "wandb=off",
        )
        summary = train(conf)
        assert summary["status"] == "completed", summary
        assert summary["execution"] == ("eager (compile failed)" if compiled == "true" else "eager")
        runs.append(history(summary, conf))
    assert torch._dynamo.config.suppress_errors is False
    columns = ["loss", "grad_norm", "grad_norm_clipped"]
    pd.testing.assert_frame_equal(runs[1][columns], runs[0][columns])


def test_a_run_stops_at_its_target_and_records_the_step(compose):
    """stop_at_target ends the run at the first evaluation that reaches the target: the same
    run as without it, up to that step, and no evaluation before it had reached the target."""
    base = ("model=mlp", "task=digits", "steps=300", "eval_every=10", "log_every=50", "wandb=off")
    full_conf = compose(*base, "name=full")
    full = train(full_conf)
    stopped_conf = compose(*base, "name=stopped", "stop_at_target=eval_acc:0.6")
    stopped = train(stopped_conf)
    assert full["status"] == stopped["status"] == "completed"
    h_full, h_stop = history(full, full_conf), history(stopped, stopped_conf)
    evals = h_full.dropna(subset=["eval_acc"])
    first = int(evals.loc[evals["eval_acc"] >= 0.6, "step"].iloc[0])
    assert 10 <= first < 300  # the test has a subject: the target is reached, before the end
    assert stopped["target_step"] == stopped["steps_done"] == first and "target_step" not in full
    assert len(h_stop) == first
    pd.testing.assert_frame_equal(
        h_stop[["loss", "grad_norm", "eval_acc"]], h_full[["loss", "grad_norm", "eval_acc"]].iloc[:first]
    )


@pytest.mark.parametrize(
    "value,message",
    [
        ("eval_acc", "write eval_loss:VALUE or eval_acc:VALUE"),
        ("loss:0.1", "write eval_loss:VALUE"),
        ("eval_loss:x", "write eval_loss:VALUE"),
        ("eval_loss:nan", "write eval_loss:VALUE"),
    ],
)
def test_a_bad_target_is_one_line(compose, value, message):
    with pytest.raises(ConfigError, match=f"^stop_at_target={re.escape(value)}: {message}"):
        build(compose("model=mlp", "task=regression", f"stop_at_target={value}"))


def test_a_target_needs_evaluations(compose):
    with pytest.raises(ConfigError, match="^stop_at_target=eval_loss:0.1: needs evaluations during the run"):
        build(compose("model=mlp", "task=regression", "eval_every=0", "stop_at_target=eval_loss:0.1"))


def test_loss_spikes_are_counted_from_the_eleventh_step():
    """A loss spike: a step above 1.5x the median of the previous (up to 50, at least 10) losses."""
    from gradlab.figures import summary

    losses = [1.0] * 60
    losses[4] = losses[14] = losses[40] = 2.0  # step 5: too early to tell; steps 15 and 41: spikes
    losses[20] = 1.4  # under 1.5x the median: not a spike
    history = [
        {
            "step": i + 1,
            "loss": v,
            "grad_norm": 1.0,
            "clipped": 0.0,
            "spike_skipped": 0.0,
            "scaler_skipped": 0.0,
            "time_s": i + 1.0,
        }
        for i, v in enumerate(losses)
    ]
    assert summary(history)["loss_spikes"] == 2


def test_smoothness_is_zhangs_estimate_and_leaves_the_run_as_it_was(compose):
    """Both gradients on the same data (the eval set) at theta and at the midpoint of the step,
    worked out here with plain backward passes on copies of the model; a run with estimates
    records the same losses as the run without."""
    from gradlab.diagnostics import Smoothness

    conf = compose("model=mlp", "task=regression", "wandb=off")
    run = build(conf)
    run.task.load(run.device)
    model, data, objective = run.model, run.task.eval_batches(), loss_fn(run.task.spec)
    probe = Smoothness(1, model, objective, data, contextlib.nullcontext)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = next(run.task.batches(16, seed=0))
    theta = copy.deepcopy(model)
    objective(model(x), y).backward()
    assert probe(list(model.parameters())) is None  # step 1: theta saved
    optimizer.step()
    optimizer.zero_grad()
    objective(model(x), y).backward()
    own = [p.grad.clone() for p in model.parameters()]
    estimate = probe(list(model.parameters()))  # step 2: the estimate of step 1

    def full_gradient(net):
        net.zero_grad()
        n = sum(len(b[0]) for b in data)
        sum(objective(net(bx), by) * (len(bx) / n) for bx, by in data).backward()
        return torch.cat([p.grad.flatten() for p in net.parameters()])

    middle = copy.deepcopy(theta)
    with torch.no_grad():
        for m, a, b in zip(middle.parameters(), theta.parameters(), model.parameters()):
            m.copy_((a + b) / 2)
    g0, g1 = full_gradient(theta), full_gradient(middle)
    move = torch.cat([(m - a).flatten() for m, a in zip(middle.parameters(), theta.parameters())]).norm()
    torch.testing.assert_close(estimate, torch.stack([(g1 - g0).norm() / move, g0.norm()]), rtol=1e-4, atol=0)
    assert all(
        torch.equal(p.grad, g) for p, g in zip(model.parameters(), own)
    )  # the step's gradients untouched

    losses = []
    for every in (0, 3):
        c = compose(
            "model=mlp",
            "task=regression",
            "steps=12",
            "log_every=1",
            f"smoothness_every={every}",
            f"name=smooth{every}",
            "wandb=off",
        )
        summary = train(c)
        losses.append(history(summary, c))
    pd.testing.assert_series_equal(losses[0]["loss"], losses[1]["loss"])
    # steps 3, 6, 9 (and 12) measured; their estimates recorded at 4, 7, 10
    assert losses[1].loc[losses[1]["smoothness"].notna(), "step"].tolist() == [4, 7, 10]
    assert losses[0]["smoothness"].isna().all()


# --- the studies' deliberate mistakes (gradlab/mistakes.py), each against a reference worked out here


def mistaken(model, micro_batches, mistake, clip_cfg, scaler=None, autocast=FP32, lr=0.1):
    """One SGD step of a copy of `model` made with `mistake` (None = the correct step); (model, recorded
    row)."""
    from gradlab.mistakes import mistaken_step

    model = copy.deepcopy(model)
    scaler = scaler or torch.amp.GradScaler("cpu", enabled=False)
    parts = StepParts(
        torch.nn.functional.mse_loss,
        torch.optim.SGD(model.parameters(), lr=lr),
        build_clip(clip_cfg, 2.0),
        scaler,
        autocast,
        2.0,
    )
    out = (mistaken_step(mistake) if mistake else train_step)(model, micro_batches, parts)
    return model, read(alone(out.figures), fp16=scaler.is_enabled())


def regression_batch(k=4, b=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(k * b, 5, generator=g), torch.randn(k * b, 1, generator=g)
    return list(zip(x.chunk(k), y.chunk(k)))


def tiny_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))


def test_no_loss_division_makes_the_update_k_times_larger_and_records_the_true_loss():
    model, batches = tiny_model(), regression_batch(k=4)
    right, row = mistaken(model, batches, None, CLIPS["none"])
    wrong, wrong_row = mistaken(model, batches, "no_loss_division", CLIPS["none"])
    assert math.isclose(wrong_row["grad_norm"], 4 * row["grad_norm"], rel_tol=1e-6)
    assert wrong_row["loss"] == row["loss"]
    torch.testing.assert_close(
        flat(wrong) - flat(model), 4 * (flat(right) - flat(model)), rtol=1e-5, atol=1e-7
    )


def test_clip_each_micro_batch_clips_the_running_sum_then_the_total():
    model, batches, c = tiny_model(), regression_batch(k=2), 0.05
    wrong, row = mistaken(model, batches, "clip_each_micro_batch", option("clip", "norm", max_norm=c), lr=1.0)
    reference = copy.deepcopy(model)  # by hand: clip after the first micro-batch, add the second, clip again
    for x, y in batches:
        (torch.nn.functional.mse_loss(reference(x), y) / 2).backward()
        torch.nn.utils.clip_grad_norm_(reference.parameters(), c)
    with torch.no_grad():
        for p in reference.parameters():
            p -= p.grad
    torch.testing.assert_close(flat(wrong), flat(reference), rtol=1e-6, atol=1e-7)
    right, _ = mistaken(model, batches, None, option("clip", "norm", max_norm=c), lr=1.0)
    assert not torch.allclose(flat(right), flat(wrong), rtol=1e-4)  # the mistake changes the update
    assert row["clipped"] == 1


def test_clip_scaled_measures_the_loss_scaled_gradients():
    model, batches = tiny_model(), regression_batch(k=1)
    fp16 = partial(torch.autocast, "cpu", dtype=torch.float16)

    def scaled():
        return torch.amp.GradScaler("cpu", init_scale=2.0**10)

    _, right = mistaken(model, batches, None, CLIPS["none"], scaled(), fp16)
    _, wrong = mistaken(model, batches, "clip_scaled", CLIPS["none"], scaled(), fp16)
    assert math.isclose(wrong["grad_norm"], 2**10 * right["grad_norm"], rel_tol=1e-3)


def test_rmsprop_urnn_is_the_urnn_codes_update_and_torchs_at_a_start_of_zero():
    """amarshah/complex_RNN optimizations.py rms_prop: v = 0.9 v + 0.1 g^2 from v = 1e-3, then
    p -= lr g / sqrt(v); gradlab's RMSprop with square_avg_init=0 is torch's, step for step."""
    from gradlab.optim import RMSprop

    g = torch.Generator().manual_seed(0)
    start = torch.randn(6, generator=g)
    grads = [torch.randn(6, generator=g) * 10.0**k for k in (-3, 0, 2, -1)]

    def steps(optimizer_class, **options) -> list:
        p = torch.nn.Parameter(start.clone())
        optimizer = optimizer_class([p], lr=0.1, alpha=0.9, eps=0.0, **options)
        out = []
        for grad in grads:
            p.grad = grad.clone()
            optimizer.step()
            out.append(p.detach().clone())
        return out

    p, v, reference = start.clone(), torch.full((6,), 1e-3), []
    for grad in grads:
        v = 0.9 * v + 0.1 * grad**2
        p = p - 0.1 * grad / v.sqrt()
        reference.append(p)
    for ours, theirs in zip(steps(RMSprop, square_avg_init=1e-3), reference):
        torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=0)
    for ours, torchs in zip(steps(RMSprop), steps(torch.optim.RMSprop)):
        assert torch.equal(ours, torchs)
    with pytest.raises(ConfigError, match="optim.square_avg_init=-1"):
        RMSprop([torch.nn.Parameter(start.clone())], square_avg_init=-1)
