"""From command-line overrides to runs: check every job first, then hand over to Hydra.

Every job of a sweep is composed and checked (config values, model/task pairing, data
availability, results folder) before anything is written, so bad input costs one line
and leaves no run folder behind.
"""

from __future__ import annotations

import difflib
import sys
from importlib import resources

from gradlab.errors import ConfigError, bad
from gradlab.sweep import GROUPS, default_name, expand, key_of


def options(group: str) -> list[str]:
    """Names of the configs of a config group (conf/<group>/*.yaml)."""
    folder = resources.files("gradlab.conf") / group
    return sorted(f.name[:-5] for f in folder.iterdir() if f.name.endswith(".yaml"))


def _check_override(override: str, known_keys: set) -> None:
    key = key_of(override)
    value = override.split("=", 1)[1] if "=" in override else ""
    if override.startswith(("+", "~")) or key.startswith("hydra"):
        return
    if key in GROUPS:
        if value not in options(key) and not (key == "experiment" and value == "null"):
            raise bad(key, value, f"choose from {', '.join(options(key))}")
    elif key.split(".")[0] not in known_keys:
        close = difflib.get_close_matches(key, sorted(known_keys), n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        raise ConfigError(f"{key}: unknown key; {hint}(`gradlab list` shows the keys)")


def _hydra_error(e: Exception) -> ConfigError:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return ConfigError(lines[0] if lines else type(e).__name__)


def compose_all(jobs: list[list[str]]) -> list:
    """The composed config of every job; unknown keys or options raise ConfigError."""
    from hydra import compose, initialize_config_module
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    with initialize_config_module("gradlab.conf", version_base="1.3"):
        known = set(compose("config").keys())
        configs = []
        for job in jobs:
            for override in job:
                _check_override(override, known)
            try:
                configs.append(compose("config", overrides=job))
            except (HydraException, OmegaConfBaseException) as e:
                raise _hydra_error(e) from None
    return configs


def plan(overrides: list[str], multirun: bool) -> tuple[list[str], list[dict]]:
    """Full overrides (sweep name added) and, per job, its resolved config; all checked."""
    from hydra.errors import HydraException

    if not any(key_of(o) == "name" for o in overrides):
        overrides = [*overrides, f"name='{default_name(overrides)}'"]  # quoted: may hold commas
    try:
        jobs = expand(overrides)
    except HydraException as e:
        raise _hydra_error(e) from None
    if not multirun and len(jobs) > 1:
        raise ConfigError(f"{len(jobs)} configurations given: `gradlab train` runs one; use `gradlab sweep`")

    from gradlab.config import check_writable, plain
    from gradlab.train import build

    confs = [plain(cfg) for cfg in compose_all(jobs)]
    for conf in confs:
        build(conf)
        check_writable(conf)
    return overrides, confs


def print_plan(overrides: list[str], confs: list[dict], jobs: list[list[str]]) -> None:
    from gradlab import records
    from gradlab.config import identity, run_id, sweep_dir

    print(f"sweep {confs[0]['name']}: {len(confs)} run(s) -> {sweep_dir(confs[0])}")
    for i, (conf, job) in enumerate(zip(confs, jobs)):
        done = records.finished(sweep_dir(conf) / run_id(conf), identity(conf))
        status = f"done ({done['status']})" if done and not conf["force"] else "to run"
        shown = " ".join(o for o in job if key_of(o) != "name")
        print(f"  {i:>3}  {run_id(conf):<44} {status:<18} {shown}")


def sweep(overrides: list[str], dry_run: bool = False) -> list:
    """Run (or, dry, list) the sweep; returns the folders of its runs."""
    from gradlab.config import run_id, sweep_dir

    overrides, confs = plan(overrides, multirun=True)
    if dry_run:
        print_plan(overrides, confs, expand(overrides))
    else:
        from gradlab.app import main

        sys.argv = ["gradlab", "--multirun", *overrides]
        main()
    return list(dict.fromkeys(sweep_dir(conf) / run_id(conf) for conf in confs))


def train(overrides: list[str], dry_run: bool = False) -> dict | None:
    overrides, confs = plan(overrides, multirun=False)
    if dry_run:
        print_plan(overrides, confs, expand(overrides))
        return None
    from gradlab.progress import offline_hint, resolve_mode
    from gradlab.train import train as run

    summary = run(confs[0])
    hint = summary.get("wandb", {}).get("sync")
    if hint and resolve_mode(confs[0]["progress"]) != "none":
        print(offline_hint(hint.removesuffix("/wandb")))
    return summary
