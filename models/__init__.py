"""Models: each conf/model/<name>.yaml names its class by `_target_` (see gradlab/components.py).

Every model is built from its knobs plus the task's TaskSpec (`spec`, when its class takes
one), and raises ConfigError at construction when it cannot consume the task (an impossible
pairing fails at setup, never mid-run).
"""

from __future__ import annotations

from gradlab import components
from gradlab.errors import bad


def build_model(model_cfg: dict, spec):
    return components.build("model", model_cfg, spec=spec)


def cannot_consume(model: str, spec, why: str):
    """The ConfigError for an impossible model/task pairing."""
    return bad(
        "model", model, f"cannot train on a task with {why} (input {spec.input}, output {spec.output})"
    )
