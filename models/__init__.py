"""Models, behind a registry keyed by `model.name` (conf/model/<name>.yaml).

Every model is built from its knobs plus the task's TaskSpec, and raises ConfigError
at construction when it cannot consume the task (an impossible pairing fails at
setup, never mid-run).
"""

from __future__ import annotations

import importlib

from gradlab.errors import bad

REGISTRY = {
    "mlp": "gradlab.models.mlp:MLP",
    "rnn": "gradlab.models.rnn:RecurrentNet",
    "lstm": "gradlab.models.rnn:RecurrentNet",
    "gru": "gradlab.models.rnn:RecurrentNet",
    "transformer": "gradlab.models.transformer:Transformer",
}

NOT_KNOBS = ("name", "lr")  # lr is read by the optimizer, not the model


def build_model(model_cfg: dict, spec):
    name = model_cfg["name"]
    if name not in REGISTRY:
        raise bad("model", name, f"choose from {', '.join(sorted(REGISTRY))}")
    module, cls = REGISTRY[name].split(":")
    knobs = {k: v for k, v in model_cfg.items() if k not in NOT_KNOBS}
    return getattr(importlib.import_module(module), cls)(spec=spec, **knobs)


def cannot_consume(model: str, spec, why: str):
    """The ConfigError for an impossible model/task pairing."""
    return bad("model", model, f"cannot train on a task with {why} (input {spec.input}, output {spec.output})")
