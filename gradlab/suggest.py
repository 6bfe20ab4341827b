"""`gradlab suggest`: a short pilot run, the distribution of its total gradient norm, and a
threshold grid that spans it, with the sweep that tries the grid.

A threshold only means something against the model's own gradient norms. Pascanu et al. 2013
(sec. 3.2) set it from "statistics on the average norm over a sufficiently large number of
updates" and found 0.5-10x the average norm to work; AutoClip (Seetharaman et al. 2020) clips at a
low percentile of the norm history. The grid holds both: the 10th, 50th and 90th percentiles of
the pilot's norms and Pascanu's multiples of their mean. The pilot is unclipped unless a clip mode
is given; its first steps (a transient while the weights leave their initialisation) are left out.
"""

from __future__ import annotations

import math
import shlex
from typing import TYPE_CHECKING, NamedTuple

from gradlab.errors import ConfigError, bad
from gradlab.sweep import default_name, expand, key_of

PILOT_STEPS = 300  # steps of the pilot run (at most the run's own budget)
SKIP = 0.1  # share of the pilot's first steps left out as the transient
PERCENTILES = (10, 25, 50, 75, 90, 99)  # printed
GRID_PERCENTILES = (10, 50, 90)  # in the grid: clips about 90%, 50% and 10% of the pilot's steps
PASCANU = (0.5, 1, 2, 10)  # multiples of the average norm: Pascanu et al. 2013, sec. 3.2 and 4.1
CLOSE = 1.25  # grid values within this factor of the previous one are one value
SEEDS = "0,1,2"  # seeds of the suggested sweep: three, the fewest that give an interval
REPLACED = ("clip", "max_norm", "seed", "name")  # the sweep sets these itself

if TYPE_CHECKING:
    import pandas as pd


class Threshold(NamedTuple):
    value: float  # rounded to two significant digits
    why: str  # where it comes from: `p10`, `2x mean` (merged sources joined by ", ")
    above: float  # share of the pilot's steps (transient left out) whose norm exceeds it


class Pilot(NamedTuple):
    run_dir: object
    summary: dict
    norms: pd.Series  # finite pre-clip norms of the steps after the transient
    skipped: int  # first steps left out
    budget: int  # the steps of the run the pilot stands for
    scheduled: bool  # its lr changes over the steps (warm-up, cosine): squeezed into the pilot's


def pilot(overrides: list[str], steps: int, skip: float) -> Pilot:
    """Train (or find already made) the pilot run: `overrides` at `steps` steps, unclipped
    unless they choose a clip mode; its records go to <results_root>/suggest_<name>/."""
    from gradlab import launch
    from gradlab.compare import read_history
    from gradlab.config import run_id, sweep_dir
    from gradlab.optim import constant_lr

    if len(expand(overrides)) > 1:
        raise ConfigError(
            f"{' '.join(overrides)}: a pilot is one run; give one value per key "
            "(the suggested sweep adds the seeds and thresholds)"
        )
    if not 0 <= skip < 1:
        raise bad("--skip", skip, "a share of the pilot's steps in [0, 1)")
    kept = [o for o in overrides if key_of(o) != "name"]
    budget = launch.plan(kept, multirun=False).confs[0]["steps"]
    extra = [] if any(key_of(o) == "clip" for o in kept) else ["clip=none"]
    run = [
        *(o for o in kept if key_of(o) != "steps"),
        *extra,
        f"steps={min(steps, budget)}",
        f"name=suggest_{default_name(kept)}",
    ]
    conf = launch.plan(run, multirun=False).confs[0]
    summary = launch.train(run)
    history = read_history(sweep_dir(conf) / run_id(conf), ["grad_norm"])
    if history is None:
        raise ConfigError(
            f"the pilot run made no step ({summary.get('error', summary['status'])}); "
            f"`gradlab train {shlex.join(run)}` shows why"
        )
    skipped = math.floor(skip * conf["steps"])
    norms = history.loc[history["step"] > skipped, "grad_norm"]
    return Pilot(
        sweep_dir(conf) / run_id(conf),
        summary,
        norms[norms.map(math.isfinite)],
        skipped,
        budget,
        not constant_lr(conf["optim"]),
    )


def grid(norms: pd.Series) -> list[Threshold]:
    """The thresholds that span the pilot's norms: GRID_PERCENTILES and PASCANU x the mean, rounded
    to two significant digits, a value within CLOSE of a smaller one merged into it."""
    candidates = [(norms.quantile(p / 100), f"p{p}") for p in GRID_PERCENTILES]
    candidates += [(m * norms.mean(), f"{m:g}x mean") for m in PASCANU]
    merged: list[list] = []
    for value, why in sorted((float(f"{v:.2g}"), why) for v, why in candidates if v > 0):
        if merged and value <= merged[-1][0] * CLOSE:
            merged[-1][1] += f", {why}"
        else:
            merged.append([value, why])
    return [Threshold(value, why, float((norms > value).mean())) for value, why in merged]


def sweep_command(overrides: list[str], thresholds: list[Threshold], config_dirs: list[str] = ()) -> str:
    """The `gradlab sweep` that tries the grid against no clipping, over SEEDS."""
    kept = [o for o in overrides if key_of(o) not in REPLACED]
    values = ",".join(f"{t.value:g}" for t in thresholds)
    folders = [arg for folder in config_dirs for arg in ("--config-dir", folder)]
    return shlex.join(
        ["gradlab", "sweep", *folders, *kept, "clip=none,norm", f"max_norm={values}", f"seed={SEEDS}"]
    )


def report(p: Pilot, thresholds: list[Threshold], command: str) -> str:
    norms, s = p.norms, p.summary
    status = s["status"] + (f" at step {s['diverged_step']}" if s.get("diverged_step") else "")
    lines = [
        f"pilot: {s['name']} ({status}, {s['steps_done']} steps) -> {p.run_dir}",
        f"pre-clip gradient norm over {len(norms)} steps (the first {p.skipped} left out as the transient):",
        "  "
        + "  ".join(
            [
                f"mean {norms.mean():.3g}",
                *(f"p{q} {norms.quantile(q / 100):.3g}" for q in PERCENTILES),
                f"max {norms.max():.3g}",
            ]
        ),
    ]
    if s["status"] == "diverged":
        lines.append(
            "  the pilot diverged: these are the norms it measured before; clipping (or a lower lr) is needed"
        )
    if p.scheduled and s["steps_done"] < p.budget:
        lines.append(
            f"  note: the lr schedule ran over the pilot's {s['steps_done']} steps, "
            f"not the run's {p.budget}; "
            f"--pilot-steps {p.budget} measures it as the run will see it"
        )
    lines.append(
        "suggested max_norm grid (share of the pilot's steps above it: how often it would clip them):"
    )
    lines += [f"  {t.value:<8g} {t.above:>4.0%}  {t.why}" for t in thresholds]
    lines += ["run it against no clipping, with 3 seeds:", f"  {command}"]
    return "\n".join(lines)


def suggest(
    overrides: list[str],
    steps: int = PILOT_STEPS,
    skip: float = SKIP,
    config_dirs: list[str] = (),
    flags: list[str] = (),
) -> str:
    """Pilot, grid and sweep command, as printed; `flags` (e.g. progress=none) go to the pilot only."""
    from gradlab.launch import search_override

    p = pilot([*overrides, *flags, *search_override(config_dirs)], steps, skip)
    if len(p.norms) < 2:
        raise ConfigError(
            f"the pilot measured {len(p.norms)} finite gradient norm(s) after its first {p.skipped} "
            "steps; give it more steps (--pilot-steps) or a smaller --skip"
        )
    thresholds = grid(p.norms)
    if not thresholds:
        raise ConfigError(
            f"the pilot's gradient norms are all 0 after its first {p.skipped} steps: there is "
            "nothing to clip (does the loss depend on the parameters?)"
        )
    return report(p, thresholds, sweep_command(overrides, thresholds, config_dirs))
