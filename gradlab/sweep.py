"""Expanding command-line overrides into jobs and naming a sweep, without running anything."""

from __future__ import annotations

import hashlib
import itertools
import re

# overrides that change where or how runs are shown, not which runs there are
PRESENTATION = (
    "name",
    "results_root",
    "progress",
    "force",
    "device",
    "wandb",
    "logger",
    "launcher",
    "workers",
    "devices",
    "save_model",
    "engine",
    "group_size",
    "compile",
    "search",  # a search's settings: the same space, continued with more trials, is the same search
)
GROUPS = ("experiment", "model", "task", "clip", "optim", "launcher")


def expand(overrides: list[str]) -> list[list[str]]:
    """The jobs of a sweep, as Hydra's basic sweeper expands them: every combination of the values
    of its comma lists, range() and glob() (a key given twice: the last wins); an interval() is a
    search's, and refused."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    values = {}
    for o in OverridesParser.create().parse_overrides(overrides):
        key = o.get_key_element()
        if o.is_sweep_override() and not o.is_discrete_sweep():
            raise HydraException(f"{o.input_line}: an interval is searched, not swept: add search.trials=N")
        values[key] = (
            [f"{key}={v}" for v in o.sweep_string_iterator()]
            if o.is_sweep_override()
            else [f"{key}={o.get_value_element_as_str()}"]
        )
    return [list(job) for job in itertools.product(*values.values())]


def key_of(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def default_name(overrides: list[str]) -> str:
    """A sweep's folder name from its overrides, order-independent: `lstm_norm_max_norm-1,5`."""
    kept = [
        o
        for o in overrides
        if key_of(o).split(".")[0] not in PRESENTATION and not key_of(o).startswith("hydra")
    ]
    kept.sort(key=lambda o: (GROUPS.index(key_of(o)) if key_of(o) in GROUPS else len(GROUPS), o))
    parts = [o.split("=", 1)[1] if key_of(o) in GROUPS else o.lstrip("+~").replace("=", "-") for o in kept]
    name = re.sub(r"[^A-Za-z0-9.,_+-]+", "", "_".join(parts)) or "defaults"
    if len(name) > 80:
        name = f"{name[:60]}-{hashlib.sha1(name.encode()).hexdigest()[:8]}"
    return name
