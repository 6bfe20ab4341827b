"""Models: every model gives outputs of the task's shape on every task it can consume,
trains every parameter, refuses impossible pairings at construction, and reads token
sequences causally where it predicts every position."""

from pathlib import Path

import pytest
import torch
import yaml
from gradlab.models import build_model

from gradlab.components import option, options
from gradlab.errors import ConfigError
from gradlab.tasks import build_task

CONF = Path(__file__).resolve().parents[1] / "conf" / "model"
USERS = ("custom", "dataset")  # the options that take the user's own class or data
MODELS = [m for m in options("model") if m not in USERS]
TASKS = [t for t in options("task") if t not in USERS]
# sizes that keep a forward pass instant; every other knob as in conf/model/<name>.yaml
SHRINK = {
    "mlp": {"hidden": [8, 8]},
    "rnn": {"hidden_size": 8},
    "lstm": {"hidden_size": 8, "num_layers": 2},
    "gru": {"hidden_size": 8},
    "lstm_urnn": {"hidden_size": 8},
    "transformer": {"d_model": 8, "n_heads": 2, "n_layers": 2, "d_ff": 16},
}
# knobs giving small specs; the specs need no data, so the torchvision tasks take part too
TASK_KNOBS = {
    "adding": {"length": 6},
    "copy": {"length": 3},
    "temporal_order": {"length": 10},
    "text": {"seq_len": 8},
    "regression": {"features": 5},
}
IMPOSSIBLE = {("mlp", "copy"), ("mlp", "text")} | {
    (m, "regression") for m in ("rnn", "lstm", "gru", "lstm_urnn", "transformer")
}
SEQUENCE_MODELS = ["rnn", "lstm", "gru", "lstm_urnn", "transformer"]
TOKEN_CLASS_TASKS = ["copy", "text"]


def model_cfg(name: str, **knobs) -> dict:
    cfg = yaml.safe_load((CONF / f"{name}.yaml").read_text())
    cfg.pop("defaults", None)
    return {**cfg, **SHRINK[name], **knobs}


def spec(task: str):
    return build_task(option("task", task, **TASK_KNOBS.get(task, {}))).spec


def inputs(spec, n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if spec.input == "tokens":
        return torch.randint(0, spec.vocab, (n, *spec.shape), generator=g)
    return torch.randn(n, *spec.shape, generator=g)


def expected_shape(spec, n: int) -> tuple:
    return (n, spec.shape[0], spec.n_out) if spec.output == "token_classes" else (n, spec.n_out)


def check_output(model, spec, n: int = 3) -> None:
    """Output shape per the spec, and a gradient for every parameter."""
    out = model(inputs(spec, n))
    assert out.shape == expected_shape(spec, n) and out.dtype == torch.float32
    out.square().mean().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_every_model_config_is_covered():
    assert set(SHRINK) == set(MODELS) == {f.stem for f in CONF.glob("*.yaml")} - {"custom"}


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("name", MODELS)
def test_model_output_matches_task_or_pairing_is_refused(name, task):
    s = spec(task)
    if (name, task) in IMPOSSIBLE:
        with pytest.raises(ConfigError, match=f"^model={name}: cannot train on a task"):
            build_model(model_cfg(name), s)
    else:
        torch.manual_seed(0)
        check_output(build_model(model_cfg(name), s), s)


@pytest.mark.parametrize("task,patch", [("digits", 2), ("digits", 4), ("mnist", 7), ("cifar10", 4)])
def test_transformer_on_patch_tokens(task, patch):
    s = spec(task)
    model = build_model(model_cfg("transformer", patch=patch), s)
    check_output(model, s)
    side = s.shape[1] // patch
    assert model.position.shape[1] == side * side  # one token per patch, not per row


@pytest.mark.parametrize(
    "task,patch", [("copy", 2), ("text", 2), ("temporal_order", 2), ("adding", 2), ("digits", 3)]
)
def test_transformer_patch_needs_an_image_whose_sides_divide_by_it(task, patch):
    with pytest.raises(ConfigError, match=f"^model.patch={patch}: needs an image task"):
        build_model(model_cfg("transformer", patch=patch), spec(task))


@pytest.mark.parametrize(
    "knobs",
    [
        pytest.param({"patch": -2}, id="patch"),
        pytest.param({"dropout": 1.5}, id="dropout"),
        pytest.param({"d_model": 6, "n_heads": 4}, id="d_model"),
    ],
)
def test_transformer_bad_knob_fails_in_one_line_naming_it(knobs):
    with pytest.raises(ConfigError, match=f"^model.{next(iter(knobs))}="):
        build_model(model_cfg("transformer", **knobs), spec("digits"))


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("task", TOKEN_CLASS_TASKS)
@pytest.mark.parametrize("name", SEQUENCE_MODELS)
def test_per_position_outputs_are_causal(name, task, training):
    """Changing tokens from position t on leaves the outputs before t unchanged, and changes the one at t."""
    s = spec(task)
    torch.manual_seed(0)
    model = build_model(model_cfg(name), s).train(training)
    x = inputs(s, 4)
    t = s.shape[0] // 2
    changed = x.clone()
    changed[:, t:] = (x[:, t:] + 1) % s.vocab
    with torch.set_grad_enabled(training):  # eval without grad: the path evaluate() takes
        before, after = model(x), model(changed)
    torch.testing.assert_close(after[:, :t], before[:, :t], rtol=0, atol=1e-6)
    assert not torch.allclose(after[:, t], before[:, t], atol=1e-4)


def test_smart_tanh_is_pascanus_initialisation():
    """Sparse recurrent weights (15 inputs per unit) at spectral radius 0.95, N(0, 0.01^2)
    elsewhere, biases zero: pascanur/trainingRNNs RNN.py's smart_tanh."""
    torch.manual_seed(0)
    model = build_model(model_cfg("rnn", hidden_size=50, init="smart_tanh"), spec("temporal_order"))
    w_hh = model.rnn.weight_hh_l0.detach()
    assert ((w_hh != 0).sum(dim=1) == 15).all()
    assert abs(float(torch.linalg.eigvals(w_hh.double()).abs().max()) - 0.95) < 1e-5
    for w in (model.rnn.weight_ih_l0, model.head.weight):
        assert 0.007 < float(w.std()) < 0.013
    assert all(
        float(b.abs().max()) == 0 for b in (model.rnn.bias_ih_l0, model.rnn.bias_hh_l0, model.head.bias)
    )


def test_smart_tanh_is_for_the_tanh_rnn_only():
    with pytest.raises(ConfigError, match="^model.init=smart_tanh: choose from default, smart_tanh"):
        build_model(model_cfg("lstm", init="smart_tanh"), spec("adding"))
    with pytest.raises(ConfigError, match="^model.init=xavier: "):
        build_model(model_cfg("rnn", init="xavier"), spec("adding"))


def test_lstm_urnn_is_the_urnn_codes_lstm():
    """amarshah/complex_RNN models.py LSTM, step by step: gates from x_t and h_{t-1}, the output
    gate also from the new cell state (V_o); forget bias 1; learned initial h and c; Glorot weights."""
    from gradlab.models.rnn import URNNLSTM

    torch.manual_seed(0)
    cell = URNNLSTM(3, 5)
    with torch.no_grad():
        cell.h0.normal_(), cell.c0.normal_()  # learned states: make them matter
    x = torch.randn(2, 4, 3)
    states, _ = cell(x)
    w = dict(zip("ifco", cell.weight_ih.chunk(4))), dict(zip("ifco", cell.weight_hh.chunk(4)))
    b = dict(zip("ifco", cell.bias.chunk(4)))
    h, c = cell.h0.expand(2, 5), cell.c0.expand(2, 5)
    for t in range(4):
        gate = {k: x[:, t] @ w[0][k].T + h @ w[1][k].T + b[k] for k in "ifco"}
        c = torch.sigmoid(gate["i"]) * torch.tanh(gate["c"]) + torch.sigmoid(gate["f"]) * c
        h = torch.sigmoid(gate["o"] + c @ cell.weight_co.T) * torch.tanh(c)
        torch.testing.assert_close(states[:, t], h)
    fresh = URNNLSTM(3, 5)
    assert fresh.bias.tolist() == [0.0] * 5 + [1.0] * 5 + [0.0] * 10
    assert fresh.h0.abs().sum() == fresh.c0.abs().sum() == 0 and fresh.h0.requires_grad
    assert fresh.weight_ih.abs().max() <= (6 / 8) ** 0.5 and fresh.weight_hh.abs().max() <= (6 / 10) ** 0.5
    states.square().mean().backward()
    assert cell.h0.grad.abs().sum() > 0 and cell.weight_co.grad.abs().sum() > 0
