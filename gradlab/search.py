"""Search instead of a grid: `gradlab sweep ... hydra/sweeper=optuna` hands the sweep to Hydra's
Optuna sweeper plugin (hydra-optuna-sweeper).

    gradlab sweep model=lstm clip=norm hydra/sweeper=optuna 'max_norm=tag(log, interval(0.05, 10))' \
        hydra.sweeper.n_trials=8 trial_seeds=3

Each trial is one Hydra job (`gradlab.app.main`): it trains the runs of `trial_seeds` seeds (seed,
seed+1, ...) as a basic sweep trains them, into the sweep's folder, and returns the mean of their
`objective` figure to the sampler. Trials are ordinary gradlab runs: `gradlab compare` reads them,
they log to W&B as usual, and a finished one is skipped when it is asked for again. The sampler is
seeded (hydra.sweeper.sampler.seed=0 unless given), so the same command asks for the same trials,
and running it again after an interruption makes only the runs that are missing. A trial whose run
failed is a failed trial to Optuna, and the search goes on (hydra.sweeper.max_failure_rate=1 unless
given).
"""

from __future__ import annotations

import math

from gradlab.errors import bad
from gradlab.sweep import default_name, key_of

SWEEPER = "hydra/sweeper"
SWEEPERS = ("basic", "optuna")  # basic: the grid, expanded by gradlab itself
SAMPLER_SEED = "hydra.sweeper.sampler.seed"
DIRECTION = "hydra.sweeper.direction"
FAILURES = "hydra.sweeper.max_failure_rate"


class TrialFailed(RuntimeError):
    """A run of the trial failed: Optuna records the trial as failed (its run record says why)."""


TRIALS = "hydra.sweeper.n_trials"


def searching(overrides: list[str]) -> bool:
    """Does this sweep search (hydra/sweeper=optuna) rather than run a grid?"""
    chosen = [o.partition("=")[2] for o in overrides if key_of(o) == SWEEPER]
    for value in chosen:
        if value not in SWEEPERS:
            raise bad(SWEEPER, value, f"choose from {', '.join(SWEEPERS)}")
    return "optuna" in chosen


def representatives(overrides: list[str]) -> list[str]:
    """The search's overrides as a grid that gradlab can check before anything runs: each
    interval becomes its two ends. A swept seed is refused: a trial's seeds come from trial_seeds."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import IntervalSweep

    out = []
    for override in overrides:
        parsed = OverridesParser.create().parse_overrides([override])[0]
        if key_of(override) == TRIALS:
            trials = parsed.value()
            if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
                raise bad(TRIALS, override.split("=", 1)[1], "must be an integer >= 1 (trials to run)")
        if not parsed.is_sweep_override():
            out.append(override)
        elif key_of(override) == "seed":
            raise bad(
                "seed",
                override.split("=", 1)[1],
                "a search's trials each train trial_seeds seeds "
                "from seed; set trial_seeds=3 instead of sweeping seed",
            )
        elif isinstance(parsed.value(), IntervalSweep):
            value = parsed.value()
            if not value.start <= value.end:
                raise bad(
                    parsed.get_key_element(),
                    override.split("=", 1)[1],
                    "an interval(low, high) needs low <= high",
                )
            out.append(f"{parsed.get_key_element()}={value.start},{value.end}")
        else:
            out.append(override)
    return out


def named(overrides: list[str]) -> list[str]:
    """The overrides with the search's folder named, unless they name it: `<grid name>_search`."""
    if any(key_of(o) == "name" for o in overrides):
        return overrides
    return [*overrides, f"name='{default_name(representatives(overrides))}_search'"]


def prepared(overrides: list[str], objective_is_higher: bool) -> list[str]:
    """The search's overrides with what gradlab sets unless they set it: the folder's name, a seeded
    sampler, and the direction its objective needs."""
    given = {key_of(o) for o in overrides}
    unseeded = (
        SAMPLER_SEED in given or f"{SWEEPER}/sampler=grid" in overrides
    )  # the grid sampler draws nothing
    extra = [] if unseeded else [f"{SAMPLER_SEED}=0"]
    extra += (
        [] if DIRECTION in given else [f"{DIRECTION}={'maximize' if objective_is_higher else 'minimize'}"]
    )
    extra += [] if FAILURES in given else [f"{FAILURES}=1.0"]  # a failed run never takes the search down
    return [*named(overrides), *extra]


def objective_value(summaries: list[dict], figure: str, higher_is_better: bool) -> float:
    """The trial's value: the mean of `figure` over its runs. A run that diverged makes it the worst
    value there is (-inf when maximizing, +inf when minimizing); a run that did not complete
    otherwise, or lacks the figure, fails the trial (TrialFailed)."""
    if any(s["status"] == "diverged" for s in summaries):
        return -math.inf if higher_is_better else math.inf
    values = [s.get(figure) for s in summaries]
    unfinished = [s["name"] for s, v in zip(summaries, values) if s["status"] != "completed" or v is None]
    if unfinished:
        raise TrialFailed(f"{', '.join(unfinished)}: no {figure} (see the run records)")
    return sum(values) / len(values)


def trial(cfg) -> float:
    """One job of a multirun: its seeds' runs, trained as a basic sweep trains them; their objective.
    Under the Optuna sweeper, a line says what the trial scored."""
    from hydra.core.hydra_config import HydraConfig

    from gradlab.config import plain
    from gradlab.figures import figure_name, higher_is_better
    from gradlab.progress import progress_mode
    from gradlab.vectorized import run_groups

    conf = plain(cfg)
    summaries = run_groups([{**conf, "seed": conf["seed"] + i} for i in range(conf["trial_seeds"])])
    figure = figure_name(conf["objective"])
    talk = (
        progress_mode(conf["progress"]) != "none"
        and HydraConfig.get().runtime.choices.get(SWEEPER) == "optuna"
    )
    try:
        value = objective_value(summaries, figure, higher_is_better(figure))
    except TrialFailed as e:
        if talk:
            print(f"trial failed: {e}", flush=True)
        raise
    if talk:
        print(f"trial {', '.join(s['name'] for s in summaries)}: {figure} {value:.4g}", flush=True)
    return value


def quiet_sampler() -> None:
    """Optuna's own log lines (study created, trial finished) off: gradlab prints each trial's."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)


def trial_runs(folder) -> list:
    """The run folders of a search: those with a run record in its folder."""
    from gradlab import records

    return sorted(p.parent for p in folder.glob(f"*/{records.SUMMARY}"))


def best(folder) -> str:
    """The best trial as the sweeper wrote it (optimization_results.yaml), in one line."""
    import yaml

    results = folder / "optimization_results.yaml"
    if not results.exists():
        return "no search result: the sweeper did not finish (its finished runs are kept)"
    found = yaml.safe_load(results.read_text())
    params = " ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in found["best_params"].items()
    )
    return f"best trial: {params} (objective {found['best_value']:.4g}) -> {results}"


def describe(p) -> str:
    """What a search will do (gradlab sweep --dry-run)."""
    from gradlab.figures import figure_name

    conf = p.confs[0]
    sweeper = " ".join(o for o in p.overrides if key_of(o).startswith("hydra.sweeper."))
    return (
        f"search {conf['name']} -> {conf['results_root']}/{conf['name']}: Optuna ({sweeper}), "
        f"each trial {conf['trial_seeds']} seed(s) from seed {conf['seed']}, objective "
        f"{figure_name(conf['objective'])}; checked: the {len(p.confs)} runs at the ends of its intervals"
    )
