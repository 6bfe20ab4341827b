"""From command-line overrides to runs: check every job first, then hand over to Hydra.

Every job of a sweep is composed and checked (config values, model/task pairing, data
availability, results folder) before anything is written, so bad input costs one line
and leaves no run folder behind.
"""

from __future__ import annotations

import difflib
import os
import shutil
import sys
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import NamedTuple

from gradlab.errors import ConfigError, Interrupted, LaunchError, bad, stopped
from gradlab.sweep import GROUPS, default_name, expand, key_of

SEARCHPATH = "hydra.searchpath"


def search_override(folders: list[str]) -> list[str]:
    """The override that adds users' config folders to Hydra's search path (`--config-dir`);
    each folder must exist."""
    paths = []
    for folder in folders:
        path = Path(folder).expanduser().resolve()
        if not path.is_dir():
            raise bad(
                "--config-dir",
                folder,
                "not a folder; give one that holds model/, task/, clip/ ... folders of YAML",
            )
        paths.append(f"file://{path}")
    return [f"{SEARCHPATH}=[{','.join(paths)}]"] if paths else []


def user_folders(overrides: list[str]) -> list[Path]:
    """The config folders that a hydra.searchpath override adds (file:// entries only)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    found = []
    for override in overrides:
        if key_of(override) == SEARCHPATH:
            value = OverridesParser.create().parse_overrides([override])[0].value()
            found += [
                Path(v[len("file://") :]) for v in value if isinstance(v, str) and v.startswith("file://")
            ]
    return found


def options(group: str, folders: list[Path] = ()) -> dict[str, Path | None]:
    """The configs of a config group: gradlab's own (conf/<group>/*.yaml, and the stored ones,
    whose file is None: the clip modes), then those of the user's config folders; name -> file
    (a user's file of the same name wins, as in Hydra)."""
    from gradlab import components

    found = dict.fromkeys(components.options(group)) if group in components.GROUPS else {}
    for folder in [resources.files("gradlab.conf"), *folders]:
        if (folder / group).is_dir():
            found.update({f.name[:-5]: f for f in (folder / group).iterdir() if f.name.endswith(".yaml")})
    return dict(sorted(found.items()))


def _check_override(override: str, known_keys: set, folders: list[Path]) -> None:
    key = key_of(override)
    value = override.split("=", 1)[1] if "=" in override else ""
    if override.startswith("+") or key.startswith("hydra"):
        return
    if key in GROUPS:
        if value not in options(key, folders) and not (key == "experiment" and value == "null"):
            raise bad(key, value, f"choose from {', '.join(options(key, folders))}")
    elif key.split(".")[0] not in known_keys:
        close = difflib.get_close_matches(key, sorted(known_keys), n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        raise ConfigError(f"{key}: unknown key; {hint}(`gradlab list` shows the keys)")


def _hydra_error(e: Exception) -> ConfigError:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return ConfigError(lines[0] if lines else type(e).__name__)


def _check_syntax(overrides: list[str]) -> None:
    """Each override parses in Hydra's grammar and sets (never deletes) a key."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    for override in overrides:
        if override.startswith("~") and not key_of(override).startswith("hydra"):
            raise ConfigError(
                f"{override}: gradlab needs every key of the configuration; set "
                f"{key_of(override)}=VALUE instead of deleting it"
            )
        try:
            parser.parse_overrides([override])
        except HydraException as e:
            raise ConfigError(
                f"{override}: not an override gradlab can read ({_hydra_error(e)}); quote a value with "
                f"spaces, non-ASCII or special characters, as in '{key_of(override)}=\"...\"'"
            ) from None


def _unknown_nested(job: list[str]) -> ConfigError | None:
    """The error for a dotted key that the chosen option does not have (model.hiden_size under
    model=lstm), with the closest key it has; None if every dotted key exists."""
    from hydra import compose
    from hydra.errors import HydraException

    try:
        base = compose(
            "config",
            overrides=[o for o in job if key_of(o) in GROUPS or key_of(o) == SEARCHPATH],
            return_hydra_config=True,
        )
    except HydraException:
        return None
    for override in job:
        key = key_of(override)
        if override.startswith("+") or "." not in key or key.startswith("hydra"):
            continue
        *parents, leaf = key.split(".")
        node = base
        for part in parents:
            node = node.get(part) if hasattr(node, "get") else None
        if hasattr(node, "keys") and leaf not in node:
            siblings = [f"{'.'.join(parents)}.{k}" for k in node.keys()]
            close = difflib.get_close_matches(key, siblings, n=1)
            group = parents[0]
            owner = (
                f" of {group}={base.hydra.runtime.choices[group]}"
                if group in base.hydra.runtime.choices
                else ""
            )
            hint = f"did you mean {close[0]}? " if close else ""
            return ConfigError(f"{key}: unknown key{owner}; {hint}(`gradlab list` shows the options)")
    return None


def compose_all(jobs: list[list[str]]) -> list:
    """The composed config of every job, Hydra's node included; unknown keys or options raise ConfigError."""
    import yaml
    from hydra import compose, initialize_config_module
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    with initialize_config_module("gradlab.conf", version_base="1.3"):
        known = set(compose("config").keys())
        configs = []
        for job in jobs:
            folders = user_folders(job)
            for override in job:
                _check_override(override, known, folders)
            try:
                configs.append(compose("config", overrides=job, return_hydra_config=True))
            except (HydraException, OmegaConfBaseException) as e:
                raise (_unknown_nested(job) or _hydra_error(e)) from None
            except yaml.YAMLError as e:  # a config file of the user's (--config-dir) that is not YAML
                where = " ".join(line.strip() for line in str(e).splitlines())
                raise ConfigError(f"a config file is not valid YAML: {where}") from None
    return configs


class Plan(NamedTuple):
    overrides: list[str]  # as given, the sweep's name added
    confs: list[dict]  # per job, its resolved config
    launcher: str  # Hydra's launcher plugin: basic, joblib, submitit_slurm, submitit_local


def plan(overrides: list[str], multirun: bool) -> Plan:
    """Every job composed and checked, before anything is written."""
    from hydra.errors import HydraException

    _check_syntax(overrides)
    if not any(key_of(o) == "name" for o in overrides):
        overrides = [*overrides, f"name='{default_name(overrides)}'"]  # quoted: may hold commas
    try:
        jobs = expand(overrides)
    except HydraException as e:
        raise _hydra_error(e) from None
    if not jobs:
        empty = [o for o in overrides if not expand([o])]
        raise ConfigError(f"{', '.join(empty) or ' '.join(overrides)}: sweeps over no values; nothing to run")
    if not multirun and len(jobs) > 1:
        raise ConfigError(f"{len(jobs)} configurations given: `gradlab train` runs one; use `gradlab sweep`")

    from gradlab.config import check_writable, plain
    from gradlab.search import check_settings
    from gradlab.train import check

    composed = compose_all(jobs)
    confs = [plain(cfg) for cfg in composed]
    shapes = {}  # each distinct model, built once on the meta device
    for conf in confs:
        check(conf, shapes)
        check_writable(conf)
        check_settings(conf["search"])
        search = conf["search"]
        if search["trials"] and not multirun:
            raise bad(
                "search.trials",
                search["trials"],
                "a search is made by `gradlab sweep`; `gradlab train` runs one run",
            )
        if search["trial_seeds"] != 1 and not search["trials"]:
            raise bad(
                "search.trial_seeds",
                search["trial_seeds"],
                "sets the seeds of a search's trials (gradlab sweep ... search.trials=N); a grid sweeps "
                "seed=0,1,2, and one run has one seed",
            )
    return Plan(overrides, confs, composed[0].hydra.runtime.choices["hydra/launcher"])


def print_plan(p: Plan, settings: list[str] = ()) -> None:
    from gradlab import checkpoint, records
    from gradlab.config import run_id, sweep_dir
    from gradlab.session import earlier_result

    confs = p.confs
    jobs = {}  # run id -> (its config, the first job that asks for it)
    for conf, job in zip(confs, expand(p.overrides)):
        jobs.setdefault(run_id(conf), (conf, job))
    repeats = len(confs) - len(jobs)
    print(
        f"sweep {confs[0]['name']}: {len(jobs)} run(s) -> {sweep_dir(confs[0])}"
        + (
            f" ({len(confs)} jobs; {repeats} ask for a run another job makes: a knob its clip mode ignores)"
            if repeats
            else ""
        )
    )
    if confs[0]["engine"] != "sequential" and p.launcher == "basic":
        from gradlab.vectorized import describe, schedule

        parts = schedule(confs)
        print(f"engine: {confs[0]['engine']}, {len(parts)} group(s)")
        for part in parts:
            how = "together" if part.engine == "vectorized" else "one at a time"
            print(f"  {len(part.runs):>3} run(s) {how}: {describe(part.runs)} ({part.why})")
    elif settings:
        print(f"launcher: {p.launcher} ({' '.join(settings)})")
    compiled = {conf["compile"] for conf in confs} - {False}
    if compiled:
        print(
            f"compile: {', '.join(str(c).lower() for c in compiled)}: torch.compile each model; a model that "
            "does not compile runs eagerly, and its summary says how it ran (execution)"
        )
    for i, (conf, job) in enumerate(jobs.values()):
        done = earlier_result(conf)
        how = f", {done.get('execution', 'eager')}" if done and conf["compile"] else ""
        status = f"done ({done['status']}{how})" if done else "to run"
        saved = None if done else checkpoint.load(conf, quiet=True)
        status += f" (from step {saved['step']})" if saved else ""
        shown = " ".join(o for o in job if key_of(o) != "name")
        print(f"  {i:>3}  {run_id(conf):<44} {status:<18} {shown}")
        why = None if done else records.problem(sweep_dir(conf) / run_id(conf))
        if why:
            print(f"       corrupt record, made again (the folder kept aside): {why}")


def _launch_overrides(p: Plan, to_run: int) -> list[str]:
    """The launcher's settings, checked: `workers=auto` made a number; a cluster launcher needs its
    cluster."""
    from gradlab import parallel

    if any(conf["devices"] != 1 for conf in p.confs):
        raise bad(
            "devices",
            next(c["devices"] for c in p.confs if c["devices"] != 1),
            "a data-parallel run is started by `gradlab train` (one run); a sweep's runs take one "
            "process each",
        )
    if p.launcher == "submitit_slurm" and not shutil.which("sbatch"):
        raise ConfigError(
            "launcher=slurm: no `sbatch` on this machine (SLURM is not installed here); "
            "launcher=slurm_local runs the same code path on this machine"
        )
    workers = p.confs[0]["workers"]
    if workers == "auto" and p.launcher in parallel.PARALLEL:
        workers = parallel.default_workers(p.launcher, to_run)
    parallel.check_workers(workers)
    warning = parallel.crowding(workers, p.confs[0]["device"] != "cpu" and parallel.gpus() > 0)
    if warning and p.launcher == "joblib" and p.confs[0]["progress"] != "none":
        print(warning, file=sys.stderr)
    settings = [f"workers={workers}"]
    if p.launcher == "submitit_local" and not any(key_of(o) == GPUS_PER_NODE for o in p.overrides):
        # submitit hides every GPU it is not given (CUDA_VISIBLE_DEVICES=""): give each job this
        # machine's GPUs, of which each run takes one (parallel.pin_gpu)
        settings.append(f"{GPUS_PER_NODE}={parallel.gpus() if p.confs[0]['device'] != 'cpu' else 0}")
    return settings


GPUS_PER_NODE = "hydra.launcher.gpus_per_node"


class Swept(NamedTuple):
    runs: list  # the folders of the sweep's runs
    counts: dict  # status -> runs, as read from the records (`_report`)


def search_plan(overrides: list[str]) -> Plan:
    """A search's plan: every job it can ask for checked as a grid of its intervals' ends (so bad
    input fails here, not in a trial), with the overrides its trials are made from."""
    from gradlab import search

    _check_syntax(overrides)  # before the intervals are read
    overrides = search.named(overrides)
    search.check_space(overrides)
    p = plan(search.representatives(overrides), multirun=True)
    if p.launcher != "basic":
        chosen = [o.split("=", 1)[1] for o in overrides if key_of(o) == "launcher"]
        raise bad(
            "launcher",
            chosen[-1] if chosen else p.launcher,
            "a search trains its trials in this process, one after another; leave launcher out",
        )
    return p._replace(overrides=overrides)


@contextmanager
def nothing_left_on_bad_input(folder: Path):
    """Bad input that only a run's building finds (a user's dataset, read then) leaves nothing
    this command made: `folder` and the folders above it it made, unless they hold a record."""
    from gradlab import records

    made = next((p for p in (*reversed(folder.parents), folder) if not p.exists()), None)
    try:
        yield
    except ConfigError:
        if made:
            records.discard_unused(folder, made)
        raise


def sweep(overrides: list[str], dry_run: bool = False) -> Swept:
    """Run (or, dry, list) the sweep: the folders of its runs, and how they ended."""
    from gradlab import parallel, search
    from gradlab.config import run_id, sweep_dir
    from gradlab.progress import progress_mode
    from gradlab.session import earlier_result

    searching = search.searching(overrides)
    p = search_plan(overrides) if searching else plan(overrides, multirun=True)
    folder = sweep_dir(p.confs[0])
    runs = list(dict.fromkeys(sweep_dir(conf) / run_id(conf) for conf in p.confs))
    done_before = (
        set(search.trial_runs(folder))
        if searching
        else {sweep_dir(conf) / run_id(conf) for conf in p.confs if earlier_result(conf)}
    )
    settings = _launch_overrides(p, len(runs) - len(done_before))
    if p.confs[0]["engine"] == "vectorized" and p.launcher != "basic":
        raise bad("engine", "vectorized", "trains its groups in this process; use it with launcher=basic")
    if dry_run:
        print(search.describe(p)) if searching else print_plan(p, settings)
        return Swept(runs, {})
    try:
        with nothing_left_on_bad_input(folder):
            if searching:
                search.run(
                    p,
                    lambda trial: plan(trial, multirun=True).confs,  # each trial's runs, checked
                    talk=progress_mode(p.confs[0]["progress"]) != "none",
                )
            elif p.launcher == "basic":
                from gradlab.vectorized import run_groups

                run_groups(p.confs)
            else:
                from gradlab.app import main

                sys.argv = ["gradlab", "--multirun", *p.overrides, *settings]
                with parallel.environment(
                    HYDRA_FULL_ERROR="1",  # a launcher's failure is raised here, not printed as a traceback
                    **{parallel.SWEEP_PID: str(os.getpid())},  # its workers stop when this process is gone
                ):
                    main()
    except KeyboardInterrupt as e:
        _report(p, done_before, searching)
        raise Interrupted(
            f"{stopped(e)}: finished runs are kept, the run(s) in progress are recorded as "
            "interrupted; running the same command again makes the rest",
            e,
        ) from None
    except ConfigError:
        if folder.exists():  # runs made before it are kept: say how they ended
            _report(p, done_before, searching)
        raise
    except Exception as e:
        _report(p, done_before, searching)
        first = next((line for line in str(e).splitlines() if line.strip()), "")
        raise LaunchError(
            f"the {p.launcher} launcher stopped ({type(e).__name__}: {first}); finished runs are "
            "kept, and running the same command again makes the rest"
        ) from None
    counts = _report(p, done_before, searching)
    return Swept(search.trial_runs(folder) if searching else runs, counts)


def _report(p: Plan, done_before: set, searching: bool = False) -> dict:
    """The sweep's outcome, read from its records: the same under every launcher. Each distinct run
    counts once (jobs that ask for the same run are one run); a run that had finished before
    counts as skipped; a run without a readable record is unfinished, or in progress elsewhere
    (another sweep). A search's runs are those its folder holds."""
    from gradlab import records, search
    from gradlab.config import run_id, sweep_dir
    from gradlab.progress import offline_hint, progress_mode

    folder = sweep_dir(p.confs[0])
    ran = (
        search.trial_runs(folder)
        if searching
        else list(dict.fromkeys(sweep_dir(c) / run_id(c) for c in p.confs))
    )
    counts = dict.fromkeys((*records.STATUSES, "skipped", "elsewhere", "unfinished"), 0)
    for run in ran:
        counts["skipped" if run in done_before else _status(run)] += 1
    if progress_mode(p.confs[0]["progress"]) != "none":
        shown = ", ".join(
            f"{n} {'in progress elsewhere' if k == 'elsewhere' else k}" for k, n in counts.items() if n
        )
        print(
            f"{'search' if searching else 'sweep'} finished: {len(ran)} runs ({shown}) -> {folder}",
            flush=True,
        )
        if searching:
            print(search.best(folder), flush=True)
        if any(folder.glob("*/wandb/offline-run-*")):
            print(offline_hint(f"{folder}/*"), flush=True)
    return counts


def _status(run) -> str:
    from gradlab import records

    if records.in_progress(run):
        return "elsewhere"
    try:
        return records.read(run)["status"]
    except records.Unreadable:
        return "unfinished"


def train(overrides: list[str], dry_run: bool = False) -> dict | None:
    p = plan(overrides, multirun=False)
    conf = p.confs[0]
    if dry_run:
        print_plan(p)
        return None
    from pathlib import Path

    from gradlab import distributed, records
    from gradlab.config import run_id, sweep_dir
    from gradlab.progress import offline_hint, progress_mode
    from gradlab.train import train as run

    run_dir = sweep_dir(conf) / run_id(conf)
    if conf["devices"] > 1 and distributed.world().size == 1:  # start the run's processes; rank 0 reports
        distributed.check(conf, conf["devices"])
        distributed.spawn(conf["devices"], p.overrides)
        try:
            return records.read(run_dir)
        except records.Unreadable:
            return {"status": "failed"}
    try:
        with nothing_left_on_bad_input(run_dir.parent):
            summary = run(conf)
    except KeyboardInterrupt as e:
        raise Interrupted(
            f"{stopped(e)}: the run is recorded as interrupted unless {run_dir} already held a "
            "finished one, which is kept; running the same command again makes it",
            e,
        ) from None
    hint = summary.get("wandb", {}).get("sync")
    if (
        hint
        and Path(hint).exists()
        and progress_mode(conf["progress"]) != "none"
        and distributed.world().rank == 0
    ):
        print(offline_hint(hint.removesuffix("/wandb")))
    return summary
