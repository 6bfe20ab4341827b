"""gradlab.integrations.transformers: the callback inside a real transformers.Trainer (CPU, a tiny
GPT-2 built from a config, no download).

Equivalence with the Trainer's own `max_grad_norm` clipping under gradient accumulation, the
figures in the Trainer's logs, the run record read back by `gradlab compare`, the adaptive modes'
state carried by a checkpoint, and the refusal to clip twice."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

transformers = pytest.importorskip("transformers")

from test_records import run as cli  # noqa: E402

from gradlab import records  # noqa: E402
from gradlab.errors import ConfigError  # noqa: E402
from gradlab.integrations.transformers import STATE_FILE, GradlabClipping  # noqa: E402

MAX_NORM = 1.0  # clips some steps of these runs, not all
STEPS = 8


def model() -> torch.nn.Module:
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=32, n_positions=16, n_embd=16, n_layer=1, n_head=2)
    return transformers.GPT2LMHeadModel(config)


class Tokens(torch.utils.data.Dataset):
    """Sequences of 12 tokens where each token is the previous one plus 1 (mod 32)."""

    def __init__(self, n: int, seed: int):
        start = torch.randint(0, 32, (n, 1), generator=torch.Generator().manual_seed(seed))
        self.ids = (start + torch.arange(12)) % 32

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def trainer(tmp_path, max_grad_norm: float, steps: int = STEPS, **more) -> transformers.Trainer:
    settings = dict(
        output_dir=str(tmp_path / "out"),
        max_steps=steps,
        per_device_train_batch_size=4,
        gradient_accumulation_steps=2,
        learning_rate=0.5,
        optim="sgd",  # Adam would magnify float rounding on the attention's key bias, whose gradient is ~0
        max_grad_norm=max_grad_norm,
        logging_steps=2,
        eval_strategy="steps",
        eval_steps=4,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
    )
    args = transformers.TrainingArguments(**{**settings, **more})
    return transformers.Trainer(
        model=model(), args=args, train_dataset=Tokens(64, 1), eval_dataset=Tokens(16, 2)
    )


class Reporter(transformers.TrainerCallback):
    """What a reporting callback (W&B, TensorBoard) is handed at each log."""

    def __init__(self):
        self.logs = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.logs.append(dict(logs))


def weights(t: transformers.Trainer) -> dict:
    return {k: v.clone() for k, v in t.model.state_dict().items()}


def test_clip_norm_equals_the_trainers_max_grad_norm_with_accumulation(tmp_path):
    reference = trainer(tmp_path / "hf", MAX_NORM)
    reference.train()
    ours = trainer(tmp_path / "gl", 0.0)
    reporter = Reporter()
    ours.add_callback(reporter)
    clipping = GradlabClipping("norm", max_norm=MAX_NORM, results_root=tmp_path / "results", log_every=3)
    clipping.add_to(ours)  # ahead of the reporter
    ours.train()

    losses = [(h["step"], h["loss"]) for h in reference.state.log_history if "loss" in h]
    assert losses == [(h["step"], h["loss"]) for h in ours.state.log_history if "loss" in h]
    # equal up to float32 rounding: accelerate's total norm is the norm of the one-element stack of
    # torch's (sqrt(n^2), which can differ from n in its last bit), gradlab's is torch's
    for a, b in zip(weights(reference).values(), weights(ours).values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # the Trainer's grad_norm is the pre-clip norm both ways; gradlab's figures sit beside it in each log
    logs = [h for h in reporter.logs if "loss" in h]
    steps = [h["step"] for h in ours.state.log_history if "loss" in h]
    assert steps == [2, 4, 6, 8]
    assert [h["grad_norm"] for h in logs] == pytest.approx(
        [h["grad_norm"] for h in reference.state.log_history if "loss" in h], rel=1e-6
    )

    history = pd.DataFrame(clipping.history)
    assert list(history["step"]) == list(range(1, STEPS + 1))
    assert 0 < history["clipped"].mean() < 1
    clipped = history["clipped"] == 1
    assert (history["grad_norm_clipped"][clipped] <= MAX_NORM + 1e-6).all()
    for step, log in zip(steps, logs):  # each log: the two steps since the one before
        interval = history[(history["step"] > step - 2) & (history["step"] <= step)]
        assert log["grad/norm"] == pytest.approx(interval["grad_norm"].mean(), rel=1e-6)
        assert log["grad/norm_max"] == pytest.approx(interval["grad_norm"].max(), rel=1e-6)
        assert log["grad/norm"] == pytest.approx(sum(interval["grad_norm"]) / 2, rel=1e-6)
        assert log["grad_norm"] == pytest.approx(interval["grad_norm"].iloc[-1], rel=1e-5)
        assert log["clip/fraction"] == pytest.approx(history["clipped"][history["step"] <= step].mean())

    summary, config = records.load(clipping.run_dir)
    assert (
        summary["status"] == "completed"
        and config["accum_steps"] == 2
        and config["clip"]["max_norm"] == MAX_NORM
    )
    recorded = pd.read_csv(clipping.run_dir / "history.csv")
    assert recorded["eval_loss"].notna().sum() == 2  # evaluations after steps 4 and 8
    for step, log in zip(steps, logs):  # the Trainer's loss: its steps' mean since the last log, rounded
        interval = recorded[(recorded["step"] > step - 2) & (recorded["step"] <= step)]
        assert log["loss"] == pytest.approx(interval["loss"].mean(), abs=1e-3)
    out = cli(["compare", str(clipping.run_dir.parent), "--format", "csv"], tmp_path, 0)
    assert "wrote" in out.stdout
    table = pd.read_csv(clipping.run_dir.parent / "comparison.csv")
    assert list(table["completed"]) == [1]


def test_the_adaptive_state_comes_back_with_a_checkpoint(tmp_path):
    """ZClip's running mean and variance are in each checkpoint: training resumed from step 4 ends
    with the weights of training that never stopped."""
    straight = trainer(tmp_path / "a", 0.0)
    GradlabClipping("zclip", z=2.0, warmup=2).add_to(straight)
    straight.train()

    first = trainer(tmp_path / "b", 0.0, save_strategy="steps", save_steps=4)
    GradlabClipping("zclip", z=2.0, warmup=2).add_to(first)
    first.train()
    assert (tmp_path / "b" / "out" / "checkpoint-4" / STATE_FILE).exists()
    resumed = trainer(tmp_path / "b", 0.0)
    clipping = GradlabClipping("zclip", z=2.0, warmup=2).add_to(resumed)
    resumed.train(resume_from_checkpoint=str(tmp_path / "b" / "out" / "checkpoint-4"))
    assert clipping.history[0]["step"] == 5
    assert all(torch.equal(a, b) for a, b in zip(weights(straight).values(), weights(resumed).values()))


def test_a_trainer_that_also_clips_is_refused(tmp_path):
    t = trainer(tmp_path, 1.0)
    GradlabClipping("norm", max_norm=MAX_NORM).add_to(t)
    with pytest.raises(ConfigError, match=r"^max_grad_norm=1.0: the Trainer would clip the gradients before"):
        t.train()
