"""Models, behind a registry keyed by `model.name` (conf/model/<name>.yaml).

Every model is built from its knobs plus the task's TaskSpec, and raises ConfigError
at construction when it cannot consume the task (an impossible pairing fails at
setup, never mid-run).
"""

from __future__ import annotations

from gradlab.errors import bad
from gradlab.registry import construct

REGISTRY = {
    "mlp": "gradlab.models.mlp:MLP",
    "rnn": "gradlab.models.rnn:RecurrentNet",
    "lstm": "gradlab.models.rnn:RecurrentNet",
    "gru": "gradlab.models.rnn:RecurrentNet",
    "transformer": "gradlab.models.transformer:Transformer",
}

NOT_KNOBS = ("name", "lr")  # lr is read by the optimizer, not the model


def build_model(model_cfg: dict, spec):
    knobs = {k: v for k, v in model_cfg.items() if k not in NOT_KNOBS}
    return construct("model", REGISTRY, model_cfg["name"], knobs, spec=spec)


def cannot_consume(model: str, spec, why: str):
    """The ConfigError for an impossible model/task pairing."""
    return bad("model", model, f"cannot train on a task with {why} (input {spec.input}, output {spec.output})")
