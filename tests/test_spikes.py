"""skip_spikes: the rule against a hand computation, and a real run that skips an injected spike."""

import math

import pytest

from gradlab.errors import ConfigError
from gradlab.spikes import SpikeGuard


def reference(values, sigma, window, min_history):
    """Straight from the rule: compare with the mean/std (ddof=1) of the last `window` accepted values."""
    accepted, flags = [], []
    for v in values:
        recent = accepted[-window:]
        spike = False
        if len(recent) >= min_history:
            mean = sum(recent) / len(recent)
            std = math.sqrt(sum((x - mean) ** 2 for x in recent) / (len(recent) - 1))
            spike = v > mean + sigma * max(std, 1e-8)
        if not spike and math.isfinite(v):
            accepted.append(v)
        flags.append(spike)
    return flags


def test_matches_the_rule_on_a_noisy_series_with_spikes():
    import random

    rng = random.Random(0)
    values = [1 + 0.1 * rng.gauss(0, 1) for _ in range(300)]
    for at in (40, 41, 150, 299):
        values[at] = 5.0
    guard = SpikeGuard(sigma=6, window=128, min_history=16, metric="grad_norm")
    flags = [guard.is_spike(loss=0.0, grad_norm=v) for v in values]
    assert flags == reference(values, 6, 128, 16)
    assert [i for i, f in enumerate(flags) if f] == [40, 41, 150, 299]  # consecutive spikes too


def test_no_decision_before_the_minimum_history_and_non_finite_is_not_a_spike():
    guard = SpikeGuard(sigma=1, window=8, min_history=4, metric="loss")
    assert [guard.is_spike(loss=v, grad_norm=0.0) for v in (1, 100, 1, 1)] == [False] * 4
    assert guard.is_spike(loss=float("nan"), grad_norm=0.0) is False
    assert guard.is_spike(loss=1000.0, grad_norm=0.0) is True


@pytest.mark.parametrize(
    "knobs, key",
    [
        ({"sigma": 0}, "spike_sigma"),
        ({"sigma": -1}, "spike_sigma"),
        ({"window": 1}, "spike_window"),
        ({"min_history": 1}, "spike_min_history"),
        ({"min_history": 500}, "spike_min_history"),
        ({"metric": "lr"}, "spike_metric"),
    ],
)
def test_bad_knobs_are_one_line(knobs, key):
    args = {"sigma": 6, "window": 128, "min_history": 16, "metric": "grad_norm", **knobs}
    with pytest.raises(ConfigError) as error:
        SpikeGuard(**args)
    assert str(error.value).startswith(f"{key}=") and "\n" not in str(error.value)


def injected_spike_run(compose, monkeypatch, *overrides):
    """seed_004's regression run whose step-30 batch has targets 1000x too large: a gradient-norm spike."""
    from gradlab.tasks.regression import Regression
    from gradlab.train import train

    real = Regression.batches

    def with_spike(self, n, seed):
        for step, (x, y) in enumerate(real(self, n, seed), start=1):
            yield x, (y * 1000 if step == 30 else y)

    monkeypatch.setattr(Regression, "batches", with_spike)
    return train(compose("experiment=seed_004", "steps=40", "wandb=off", *overrides))


def test_a_real_spike_is_skipped_and_counted(compose, monkeypatch, tmp_path):
    import pandas as pd

    skipped = injected_spike_run(
        compose, monkeypatch, "clip=none", "skip_spikes=true", "spike_min_history=10"
    )
    assert skipped["status"] == "completed" and skipped["spike_skips"] == 1
    (run_dir,) = tmp_path.glob(f"*/{skipped['run_id']}")
    history = pd.read_csv(run_dir / "history.csv")
    assert list(history.loc[history["spike_skipped"] == 1, "step"]) == [30]

    kept = injected_spike_run(compose, monkeypatch, "clip=none")  # without the option it takes the bad step
    assert kept["spike_skips"] == 0 and kept["train_loss_final"] > skipped["train_loss_final"]


def test_a_skipped_step_is_neither_clipped_nor_counted_per_layer(compose, monkeypatch, tmp_path):
    import pandas as pd

    summary = injected_spike_run(
        compose,
        monkeypatch,
        "clip=norm_per_layer",
        "max_norm=0.001",
        "skip_spikes=true",
        "spike_min_history=10",
        "layer_norms_every=40",
    )
    run_dir = next(tmp_path.glob(f"*/{summary['run_id']}"))
    history = pd.read_csv(run_dir / "history.csv")
    assert list(history.loc[history["clipped"] == 0, "step"]) == [30]  # every other step clips
    layers = pd.read_csv(run_dir / "layer_norms.csv")
    assert layers["clip_fraction"].tolist() == pytest.approx([39 / 40] * len(layers))  # 39 of 40 steps


def test_layer_figures_are_the_update_to_weight_ratio(compose, tmp_path):
    """With plain SGD and no clipping, each tensor's update is lr x its gradient."""
    import pandas as pd

    from gradlab.train import train

    summary = train(
        compose(
            "experiment=seed_004",
            "optim=sgd",
            "lr=0.1",
            "clip=none",
            "steps=4",
            "layer_norms_every=2",
            "wandb=off",
        )
    )
    layers = pd.read_csv(next(tmp_path.glob(f"*/{summary['run_id']}")) / "layer_norms.csv")
    assert set(layers["step"]) == {2, 4} and layers["clip_fraction"].isna().all()  # not a per-layer mode
    # ||w_after - w_before|| = lr * ||g||, so ratio * ||w_before|| = lr * ||g||: check the ratio's scale
    assert (layers["update_ratio"] > 0).all() and (layers["update_ratio"] < 1).all()
    import torch

    from gradlab.loop import layer_figures

    model = torch.nn.Linear(3, 2)
    before = [w.detach().clone() for w in model.parameters()]
    for w in model.parameters():
        w.data.add_(torch.ones_like(w))
    after = [w.detach() for w in model.parameters()]
    figures = layer_figures(after, before, torch.tensor([1.0, 2.0]), torch.full((2,), math.nan), step=1)
    expected = [torch.ones_like(b).norm() / b.norm() for b in before]
    torch.testing.assert_close(figures[1], torch.stack(expected))
    assert figures[0].tolist() == [1.0, 2.0] and figures[2].isnan().all()
    # stacked members: each member's block is its own figures
    stacked = layer_figures(
        [torch.stack([a, 2 * a]) for a in after],
        [torch.stack([b, 2 * b]) for b in before],
        torch.tensor([[1.0, 2.0], [3.0, 4.0]]),
        torch.tensor([[1.0, 0.0], [2.0, 2.0]]),
        step=2,
        stacked=True,
    )
    torch.testing.assert_close(stacked[0, 1], figures[1])
    torch.testing.assert_close(stacked[1, 1], figures[1])  # both moved in proportion to their weights
    assert stacked[1, 0].tolist() == [3.0, 4.0] and stacked[1, 2].tolist() == [1.0, 1.0]
