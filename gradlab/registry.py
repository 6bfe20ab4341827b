"""Config groups backed by code: `group=name` picks a class, the other keys are its knobs."""

from __future__ import annotations

import importlib
import inspect

from gradlab.errors import ConfigError, bad


def construct(group: str, registry: dict, name: str, knobs: dict, **context):
    """Instantiate registry[name] ("module:Class") with `knobs` (checked by name) and `context`.

    Classes are imported only when chosen: some pull in torchvision or scikit-learn.
    """
    if name not in registry:
        raise bad(group, name, f"choose from {', '.join(sorted(registry))}")
    module, attr = registry[name].split(":")
    cls = getattr(importlib.import_module(module), attr)
    accepted = [p for p in inspect.signature(cls).parameters if p not in context]
    for key in knobs:
        if key not in accepted:
            raise ConfigError(f"{group}.{key}: unknown key for {group}={name}; allowed: {', '.join(accepted)}")
    return cls(**knobs, **context)
