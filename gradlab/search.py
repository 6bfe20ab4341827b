"""Search instead of a grid: `gradlab sweep ... search.trials=N` runs an Optuna study over the
sweep's interval(), choice() and range() values, written in Hydra's override grammar.

    gradlab sweep model=lstm clip=norm 'max_norm=tag(log, interval(0.05, 10))' search.trials=8 \
        search.startup_trials=4 search.trial_seeds=3

Optuna's ask-and-tell: gradlab asks the study for a trial, trains the runs of its `trial_seeds`
seeds (seed, seed+1, ...) as a basic sweep trains them (vectorized.run_groups), and tells the study
the mean of their `objective` figure. Trials are ordinary gradlab runs in the search's folder:
`gradlab compare` reads them, they log to W&B as usual, and a run asked for again is not trained again.

Pruning: while a trial's first group trains (its seeds together, or its first seed alone), each
evaluation reports the objective's column (eval_loss for eval_loss_final) to the trial, and the
pruner may stop it there: its runs end as `pruned`, the trial too, and it scores nothing. A trial
whose run failed (an error, e.g. out of memory) fails, and the search goes on; a diverged run makes
its trial's value the worst there is.

Storage: the study lives in an SQLite file in the search's folder (search.db) unless
`search.storage` names one (sqlite:///PATH, or a journal file PATH.log), so `optuna-dashboard`
opens it and the same command continues the search after Ctrl-C or a kill. A trial cut short is
failed and asked again with the same values, as Optuna's RetryFailedTrialCallback does (its finished
runs are kept; an interrupted run starts again); the search ends when `trials` trials have completed,
been pruned or failed with an error.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from gradlab.errors import ConfigError, bad
from gradlab.sweep import default_name, key_of

TRIALS = "search.trials"
SAMPLERS = ("tpe", "random", "gp", "cmaes", "qmc")
PRUNERS = ("median", "halving", "hyperband", "none")
STORAGE_FILE = "search.db"
RESULT_FILE = "optimization_results.yaml"  # the best trial, as Hydra's Optuna sweeper wrote it
ERROR = "error"  # user attribute of a trial failed by its runs: one that was cut short has none
RETRY_OF = "retry_of"  # user attribute of a trial asked again: the number of the one cut short


class TrialFailed(RuntimeError):
    """A run of the trial failed: the trial fails (its run record says why)."""


def check_settings(search: dict) -> None:
    """The search.* keys (checked for every run: a grid carries them too)."""
    for key, least in (
        ("trials", 0),
        ("trial_seeds", 1),
        ("startup_trials", 0),
        ("pruner_startup", 0),
        ("pruner_warmup", 0),
    ):
        value = search[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise bad(f"search.{key}", value, f"must be an integer >= {least}")
    if isinstance(search["seed"], bool) or not isinstance(search["seed"], int) or search["seed"] < 0:
        raise bad("search.seed", search["seed"], "must be an integer >= 0")
    if search["sampler"] not in SAMPLERS:
        raise bad("search.sampler", search["sampler"], f"choose from {', '.join(SAMPLERS)}")
    if search["pruner"] not in PRUNERS:
        raise bad("search.pruner", search["pruner"], f"choose from {', '.join(PRUNERS)}")
    storage = search["storage"]
    if storage is not None and not (str(storage).startswith("sqlite:///") or str(storage).endswith(".log")):
        raise bad("search.storage", storage, "write sqlite:///PATH.db or PATH.log (a journal file), or null")
    given = search["objective"]
    names = given if isinstance(given, list) else [given]
    if not names:
        raise bad("search.objective", given, "name a summary figure, or a list of them")
    for name in names:
        check_objective(name)
    if len(names) > 1 and search["sampler"] == "cmaes":
        raise bad("search.sampler", "cmaes", "CMA-ES optimises one objective; choose tpe, random, gp or qmc")


def check_objective(name) -> None:
    from gradlab import figures

    if figures.figure_name(str(name)) not in figures.metrics():
        raise bad(
            "search.objective",
            name,
            f"choose a summary figure: {', '.join(figures.metrics())} (eval_loss = eval_loss_final)",
        )


def objectives(search: dict) -> list[str]:
    """The summary figures a trial scores: search.objective, one name or a list (a multi-objective
    search, whose result is the Pareto front)."""
    from gradlab.figures import figure_name

    given = search["objective"]
    return [figure_name(str(name)) for name in (given if isinstance(given, list) else [given])]


def searching(overrides: list[str]) -> bool:
    """Does this sweep search (search.trials=N, N >= 1) rather than run a grid?"""
    for override in overrides:
        if key_of(override) == "hydra/sweeper":
            raise bad(
                "hydra/sweeper",
                override.split("=", 1)[1],
                "gradlab searches with Optuna itself: set search.trials=N (`gradlab list` shows search.*)",
            )
    trials = [o.split("=", 1)[1] for o in overrides if key_of(o) == TRIALS]
    return bool(trials) and trials[-1] != "0"  # a value that is not a count fails the search's checks


def _parsed(override: str):
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create().parse_overrides([override])[0]


def representatives(overrides: list[str]) -> list[str]:
    """The search's overrides as a grid that gradlab can check before anything runs: each
    interval becomes its two ends. A swept seed is refused: a trial's seeds come from trial_seeds."""
    from hydra.core.override_parser.types import IntervalSweep

    out = []
    for override in overrides:
        parsed = _parsed(override)
        if not parsed.is_sweep_override():
            out.append(override)
        elif key_of(override) == "seed":
            raise bad(
                "seed",
                override.split("=", 1)[1],
                "a search's trials each train search.trial_seeds seeds from seed; set "
                "search.trial_seeds=3 instead of sweeping seed",
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


def space(overrides: list[str]) -> tuple[list[str], dict, dict]:
    """The overrides split into those every trial shares, the search space (key -> Optuna
    distribution) and how each choice is written back (key -> {value: override text}).
    interval(a, b) is a float range (int if both ends are; tag(log, ...) samples its logarithm);
    choice(...), range(...) and a,b,c are categorical."""
    from hydra.core.override_parser.types import IntervalSweep
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    fixed, distributions, written = [], {}, {}
    for override in {key_of(o): o for o in overrides}.values():  # a key given twice: the last, as in Hydra
        parsed = _parsed(override)
        if not parsed.is_sweep_override():
            fixed.append(override)
            continue
        key, value = parsed.get_key_element(), parsed.value()
        if isinstance(value, IntervalSweep):
            ints = isinstance(value.start, int) and isinstance(value.end, int)
            distributions[key] = (IntDistribution if ints else FloatDistribution)(
                value.start, value.end, log="log" in value.tags
            )
        else:
            values = list(parsed.sweep_iterator())
            distributions[key] = CategoricalDistribution(values)
            written[key] = dict(zip(values, parsed.sweep_string_iterator()))
    return fixed, distributions, written


def trial_overrides(params: dict, written: dict) -> list[str]:
    """A trial's values as overrides: a choice as it was written, a number from an interval in full."""
    return [f"{k}={written[k][v] if k in written else repr(v)}" for k, v in params.items()]


def named(overrides: list[str]) -> list[str]:
    """The overrides with the search's folder named, unless they name it: `<grid name>_search`."""
    if any(key_of(o) == "name" for o in overrides):
        return overrides
    return [*overrides, f"name='{default_name(representatives(overrides))}_search'"]


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


class Judge:
    """The trial's pruning (gradlab.loop.JUDGE): at each evaluation of its first group, the mean of
    the objective's column over the group's runs is reported to the trial, and the pruner says
    whether to stop. A later group of the trial (its next seed, under the sequential engine) is
    not judged: its steps were reported."""

    def __init__(self, trial, column: str):
        self.trial, self.column, self.reported = trial, column, set()

    def __call__(self, step: int, rows: list[dict]) -> bool:
        if step in self.reported:
            return False
        self.reported.add(step)
        values = [row.get(self.column, math.nan) for row in rows]
        value = sum(values) / len(values)
        if not math.isfinite(value):
            return False  # a diverging run ends as diverged, which scores the trial
        self.trial.report(value, step)
        return self.trial.should_prune()


def sampler(search: dict, asked: int):
    """Optuna's sampler of that name, seeded with search.seed plus the trials the study has already
    asked (`asked`): a continued search draws new values, and the same commands the same trials."""
    import optuna

    seed, startup = search["seed"] + asked, search["startup_trials"]
    return {
        "tpe": lambda: optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup),
        "random": lambda: optuna.samplers.RandomSampler(seed=seed),
        "gp": lambda: optuna.samplers.GPSampler(seed=seed, n_startup_trials=startup),
        "cmaes": lambda: optuna.samplers.CmaEsSampler(seed=seed, n_startup_trials=startup),
        "qmc": lambda: optuna.samplers.QMCSampler(seed=seed),
    }[search["sampler"]]()


def pruner(search: dict):
    import optuna

    return {
        "median": lambda: optuna.pruners.MedianPruner(
            n_startup_trials=search["pruner_startup"], n_warmup_steps=search["pruner_warmup"]
        ),
        "halving": optuna.pruners.SuccessiveHalvingPruner,
        "hyperband": optuna.pruners.HyperbandPruner,
        "none": optuna.pruners.NopPruner,
    }[search["pruner"]]()


def storage(conf: dict):
    """Where the study lives: search.storage, or an SQLite file in the search's folder."""
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    from gradlab.config import sweep_dir

    given = conf["search"]["storage"]
    if given is None:
        return f"sqlite:///{sweep_dir(conf).resolve() / STORAGE_FILE}"
    return given if given.startswith("sqlite:///") else JournalStorage(JournalFileBackend(given))


def open_study(conf: dict):
    """The search's study (made, or continued: load_if_exists), named after its folder and objective."""
    import optuna

    from gradlab.figures import higher_is_better

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # gradlab prints each trial's line
    figures = objectives(conf["search"])
    study = optuna.create_study(
        storage=storage(conf),
        study_name=f"{conf['name']}:{'+'.join(figures)}",  # one study per objective
        directions=["maximize" if higher_is_better(f) else "minimize" for f in figures],
        load_if_exists=True,
    )
    study.sampler = sampler(conf["search"], len(study.get_trials(deepcopy=False)))
    # Optuna prunes single-objective studies only
    study.pruner = pruner(conf["search"]) if len(figures) == 1 else optuna.pruners.NopPruner()
    return study


def counted(trial) -> bool:
    """Does this trial count toward search.trials: completed, pruned, or failed by its runs (not
    cut short)?"""
    from optuna.trial import TrialState

    return trial.state in (TrialState.COMPLETE, TrialState.PRUNED) or (
        trial.state == TrialState.FAIL and ERROR in trial.user_attrs
    )


def cut_short(study) -> list:
    """Trials that an interruption or a kill ended, not yet asked again: failed now (a kill left
    them running; the folder's lock says no search is working on them) and enqueued with the same
    values."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs.get(RETRY_OF) for t in trials}
    found = []
    for t in trials:
        if t.state == TrialState.RUNNING:
            study.tell(t.number, state=TrialState.FAIL)
        if (
            t.state in (TrialState.RUNNING, TrialState.FAIL)
            and ERROR not in t.user_attrs
            and t.number not in retried
        ):
            study.enqueue_trial(t.params, user_attrs={RETRY_OF: t.number})
            found.append(t.number)
    return found


def run(p, confs_of: Callable[[list[str]], list[dict]], talk: bool) -> None:
    """The search of plan `p` (launch.search_plan): trials asked and told until `search.trials`
    count, the best one written to the folder after each. `confs_of`: a trial's overrides -> its
    runs' configs, checked (launch.plan)."""
    from gradlab import records
    from gradlab.config import sweep_dir

    conf = p.confs[0]
    settings = conf["search"]
    fixed, distributions, written = space(p.overrides)
    folder = sweep_dir(conf)
    folder.mkdir(parents=True, exist_ok=True)
    with records.claimed(folder / "search") as ours:
        if not ours:
            raise ConfigError(f"{folder}: another process is running this search; wait for it or stop it")
        study = open_study(conf)
        again = cut_short(study)
        if again and talk:
            print(f"trial(s) {', '.join(map(str, again))} were cut short: asked again", flush=True)
        while sum(map(counted, study.get_trials(deepcopy=False))) < settings["trials"]:
            trial = study.ask(distributions)
            confs = confs_of([*fixed, *trial_overrides(trial.params, written)])
            seeds = [{**c, "seed": c["seed"] + i} for c in confs for i in range(settings["trial_seeds"])]
            outcome = train_trial(study, trial, seeds, objectives(settings))
            write_best(study, folder)
            if talk:
                print(f"trial {trial.number} {outcome}", flush=True)


def train_trial(study, trial, confs: list[dict], figures: list[str]) -> str:
    """Train the trial's runs, judged by its pruner (one objective); tell the study how it ended,
    and say it."""
    from contextlib import nullcontext

    from optuna.trial import TrialState

    from gradlab.figures import higher_is_better, source
    from gradlab.loop import judged
    from gradlab.vectorized import run_groups

    (first, *more) = figures
    with nullcontext() if more else judged(Judge(trial, source(first) or first)):
        summaries = run_groups(confs)
    names = ", ".join(s["name"] for s in summaries)
    pruned = [s for s in summaries if s["status"] == "pruned"]
    if pruned:
        study.tell(trial, state=TrialState.PRUNED)
        return f"{names}: pruned at step {pruned[0]['pruned_step']}"
    try:
        values = [objective_value(summaries, f, higher_is_better(f)) for f in figures]
    except TrialFailed as e:
        trial.set_user_attr(ERROR, str(e))
        study.tell(trial, state=TrialState.FAIL)
        return f"failed: {e}"
    study.tell(trial, values if more else values[0])
    return f"{names}: " + ", ".join(f"{f} {v:.4g}" for f, v in zip(figures, values))


def write_best(study, folder) -> None:
    """The best trial, as Hydra's Optuna sweeper wrote it (optimization_results.yaml), once one
    completed; under several objectives, the Pareto front (best_trials)."""
    import yaml
    from optuna.trial import TrialState

    if not study.get_trials(deepcopy=False, states=[TrialState.COMPLETE]):
        return
    if len(study.directions) > 1:
        front = [{"number": t.number, "params": t.params, "values": t.values} for t in study.best_trials]
        found = {"name": study.study_name, "best_trials": front}
    else:
        found = {
            "name": study.study_name,
            "best_params": study.best_trial.params,
            "best_value": study.best_value,
        }
    (folder / RESULT_FILE).write_text(yaml.safe_dump(found))


def trial_runs(folder) -> list:
    """The run folders of a search: those with a run record in its folder."""
    from gradlab import records

    return sorted(p.parent for p in folder.glob(f"*/{records.SUMMARY}"))


def best(folder) -> str:
    """The best trial in one line, and where the study is."""
    import yaml

    results = folder / RESULT_FILE
    if not results.exists():
        return "no search result: no trial completed (its finished runs are kept)"
    found = yaml.safe_load(results.read_text())

    def shown(params: dict) -> str:
        return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())

    if "best_trials" in found:
        front = "; ".join(
            f"{shown(t['params'])} ({', '.join(f'{v:.4g}' for v in t['values'])})"
            for t in found["best_trials"]
        )
        return f"Pareto front, {len(found['best_trials'])} trial(s): {front} -> {results}"
    return f"best trial: {shown(found['best_params'])} (objective {found['best_value']:.4g}) -> {results}"


def describe(p) -> str:
    """What a search will do (gradlab sweep --dry-run)."""
    conf = p.confs[0]
    s = conf["search"]
    distributions = space(p.overrides)[1]
    where = s["storage"] or f"{conf['results_root']}/{conf['name']}/{STORAGE_FILE}"
    return (
        f"search {conf['name']} -> {conf['results_root']}/{conf['name']}: Optuna, {s['trials']} trials "
        f"({s['sampler']} sampler, seed {s['seed']}; {s['pruner']} pruner) over "
        f"{', '.join(distributions)}; each trial {s['trial_seeds']} seed(s) from seed {conf['seed']}, "
        f"objective {' and '.join(objectives(s))}; stored in {where}; checked: the {len(p.confs)} "
        "runs at the ends of its intervals"
    )


def check_space(overrides: list[str]) -> None:
    """A search needs something to search: at least one interval(), choice(), range() or list."""
    if not space(overrides)[1]:
        trials = [o.split("=", 1)[1] for o in overrides if key_of(o) == TRIALS][-1]
        raise bad(
            TRIALS, trials, "a search needs values to search, e.g. 'max_norm=tag(log, interval(0.05, 10))'"
        )
