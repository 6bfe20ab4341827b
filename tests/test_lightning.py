"""gradlab.integrations.lightning: the callback inside a real lightning.Trainer (CPU, tiny model).

Equivalence with Lightning's own norm clipping, the run record read back by `gradlab compare`
and `gradlab plot`, the adaptive modes' state carried by a Lightning checkpoint, and the
refusal to clip twice."""

from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pytest
import torch

lightning = pytest.importorskip("lightning")

from gradlab import records  # noqa: E402
from gradlab.integrations.lightning import GradlabClipping  # noqa: E402

# Lightning's advice for real data loaders; these are 64 tensors in memory
pytestmark = pytest.mark.filterwarnings("ignore:The '\\w+_dataloader' does not have many workers")

STEPS = 30
MAX_NORM = 1.5  # clips 40-57% of the steps of these runs: a clear share, not all
QUIET = dict(
    accelerator="cpu",
    devices=1,
    logger=False,
    enable_checkpointing=False,
    enable_progress_bar=False,
    enable_model_summary=False,
    deterministic=True,
)


class Regression(lightning.LightningModule):
    """A 2-layer MLP on a fixed random regression set; keeps each micro-batch's loss."""

    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1))
        self.losses = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.net(x), y)
        self.losses.append(loss.detach())
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", torch.nn.functional.mse_loss(self.net(x), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def loader(seed: int) -> torch.utils.data.DataLoader:
    """64 samples (8 batches) of one linear target with noise; the seed draws the inputs."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(64, 8, generator=g)
    y = x @ torch.linspace(-1, 1, 8).unsqueeze(1) + 0.1 * torch.randn(64, 1, generator=g)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8)


def fit(callbacks=(), steps=STEPS, ckpt_path=None, model=None, val=False, **trainer):
    """A model trained from seed 0 with these callbacks and Trainer options; the model and the Trainer."""
    lightning.seed_everything(0, verbose=False)
    model = model or Regression()
    t = lightning.Trainer(
        max_steps=steps, callbacks=list(callbacks), limit_val_batches=None if val else 0, **QUIET, **trainer
    )
    t.fit(model, loader(0), loader(1), ckpt_path=ckpt_path)
    return model, t


@pytest.mark.parametrize("accumulate", [1, 2])
def test_norm_mode_equals_lightnings_own_clipping(accumulate):
    """clip="norm" through the callback takes the same steps as Trainer(gradient_clip_val=...), bit for
    bit: both rescale by max_norm / (norm + 1e-6) the gradients of the optimizer's parameters, with the
    norm computed the same way (per-tensor norms, then their norm), so torch.equal holds."""
    native, _ = fit(
        gradient_clip_val=MAX_NORM, gradient_clip_algorithm="norm", accumulate_grad_batches=accumulate
    )
    callback = GradlabClipping("norm", max_norm=MAX_NORM, results_root=None, log_every=7)
    ours, _ = fit([callback], accumulate_grad_batches=accumulate)

    assert len(ours.losses) == STEPS * accumulate
    assert torch.equal(torch.stack(ours.losses), torch.stack(native.losses))
    for a, b in zip(ours.parameters(), native.parameters()):
        assert torch.equal(a, b)
    history = pd.DataFrame(callback.history)
    assert list(history["step"]) == list(range(1, STEPS + 1))
    assert 0.2 <= history["clipped"].mean() <= 0.9  # MAX_NORM clips a clear share of the steps, not all


def test_record_reads_back_and_compare_and_plot_run_on_it(tmp_path):
    """The record holds the norms the callback saw before and after clipping, the step losses and the
    evaluations; `gradlab compare` and `gradlab plot` read it from the command line."""
    seen = {"before": [], "after": []}

    class Spy(
        lightning.Callback
    ):  # placed before and after GradlabClipping: Lightning calls callbacks in order
        def __init__(self, when):
            self.when = when

        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            norm = torch.nn.utils.get_total_norm([p.grad for p in pl_module.parameters()])
            seen[self.when].append(norm.item())

    callback = GradlabClipping(
        "norm",
        max_norm=MAX_NORM,
        results_root=tmp_path,
        name="sweep",
        task="regression",
        layer_norms_every=10,
        log_every=4,
    )
    model, trainer = fit([Spy("before"), callback, Spy("after")], val=True, accumulate_grad_batches=2)

    summary, config = records.load(callback.run_dir)
    assert callback.run_dir.parent == tmp_path / "sweep"
    assert callback.run_dir.name.startswith("regression-regression-norm1.5-s0-")
    assert summary["status"] == "completed" and summary["steps_done"] == STEPS
    assert config["clip"]["max_norm"] == MAX_NORM and config["optim"]["name"] == "sgd"
    assert config["accum_steps"] == 2 and config["seed"] == 0

    history = pd.read_csv(callback.run_dir / "history.csv")
    # an independent measure (torch's get_total_norm) of the same gradients: equal up to float32 rounding
    assert history["grad_norm"].tolist() == pytest.approx(seen["before"], rel=1e-6)
    assert history["grad_norm_clipped"].tolist() == pytest.approx(seen["after"], rel=1e-6)
    clipped = history["clipped"] == 1
    assert (history["grad_norm_clipped"][clipped] <= MAX_NORM + 1e-6).all()
    assert (history["grad_norm_clipped"][~clipped] == history["grad_norm"][~clipped]).all()
    step_losses = (
        torch.stack(model.losses).reshape(STEPS, 2).mean(1)
    )  # each step: the mean of its 2 micro-batches
    assert history["loss"].tolist() == pytest.approx(step_losses.tolist(), rel=1e-6)
    assert history["eval_loss"].notna().sum() == STEPS * 2 // 8  # one validation per epoch of 8 batches
    assert summary["eval_loss_final"] == pytest.approx(history["eval_loss"].dropna().iloc[-1], rel=1e-5)

    layers = pd.read_csv(callback.run_dir / "layer_norms.csv")
    assert sorted(set(layers["step"])) == [10, 20, 30]
    assert set(layers["layer"]) == {n for n, _ in model.named_parameters()}
    assert "grad/norm" in trainer.callback_metrics and "grad_norm/net.0.weight" in trainer.callback_metrics

    for command, output in (("compare", "comparison.md"), ("plot", "curves.png")):
        done = subprocess.run(
            [sys.executable, "-m", "gradlab", command, str(tmp_path / "sweep")],
            capture_output=True,
            text=True,
        )
        assert done.returncode == 0, done.stderr
        assert (tmp_path / "sweep" / output).exists()


@pytest.mark.parametrize("mode, knobs", [("zclip", {"warmup": 5}), ("autoclip", {"window": 8})])
def test_adaptive_state_travels_in_lightning_checkpoints(tmp_path, mode, knobs):
    """The clip mode's history is the callback's state: a checkpoint resumed into a fresh callback
    gives it the same tensors, and the resumed run goes on from them."""
    first = GradlabClipping(mode, **knobs)
    model, trainer = fit([first], steps=16)  # two epochs: the checkpoint is at an epoch's end
    trainer.save_checkpoint(tmp_path / "run.ckpt")
    saved = first.state_dict()["clip"]

    fresh = GradlabClipping(mode, **knobs)
    fresh.load_state_dict(
        {"clip": {k: v.clone() for k, v in saved.items()}}
    )  # loaded before setup: kept for it
    assert all(torch.equal(fresh.state_dict()["clip"][k], v) for k, v in saved.items())

    resumed = GradlabClipping(mode, **knobs)
    fit([resumed], steps=16, ckpt_path=tmp_path / "run.ckpt", model=Regression())  # restored; no step left
    restored = resumed.state_dict()["clip"]
    assert restored.keys() == saved.keys()
    assert all(torch.equal(restored[k], v) for k, v in saved.items())
    if mode == "zclip":
        assert int(saved["count"]) == 16
        fit([resumed], steps=24, ckpt_path=tmp_path / "run.ckpt", model=Regression())
        assert int(resumed.state_dict()["clip"]["count"]) == 24  # went on from the 16 norms it had seen


def test_a_failing_fit_is_recorded_as_failed(tmp_path):
    """An exception in training_step still leaves a readable record of the steps before it."""

    class Failing(Regression):
        def training_step(self, batch, batch_idx):
            if self.global_step == 5:
                raise RuntimeError("out of luck")
            return super().training_step(batch, batch_idx)

    callback = GradlabClipping("norm", max_norm=MAX_NORM, results_root=tmp_path)
    with pytest.raises(RuntimeError, match="out of luck"):
        fit([callback], model=Failing())
    summary, _ = records.load(callback.run_dir)
    assert summary["status"] == "failed" and summary["error"] == "RuntimeError: out of luck"
    assert summary["steps_done"] == 5


def test_refuses_a_trainer_that_also_clips():
    with pytest.raises(ValueError, match="gradient_clip_val=1.0: the Trainer would clip the gradients again"):
        fit([GradlabClipping("norm", max_norm=1.0)], gradient_clip_val=1.0)
