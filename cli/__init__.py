"""The `gradlab` command line. Heavy modules (torch, hydra) are imported inside commands,
so `gradlab --help` stays fast."""

from __future__ import annotations

import os
import sys
import traceback
from contextlib import contextmanager
from typing import Annotated

try:
    import fcntl  # noqa: F401  (run records and sweep workers hold POSIX file locks: records.py, parallel.py)
except ModuleNotFoundError:  # Windows
    print(
        "error: gradlab needs POSIX file locks (fcntl), which this platform lacks: "
        "run it on Linux or macOS (on Windows, inside WSL)",
        file=sys.stderr,
    )
    sys.exit(2)

import typer

from gradlab.suggest import PILOT_STEPS, SKIP

app = typer.Typer(
    help="Gradient-clipping ablation studies: runs, sweeps and their records.\n\n"
    "Overrides use Hydra's grammar: key=value, group=option, comma lists to sweep; "
    "`gradlab list` shows the groups, their options and the keys.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


def _version(shown: bool) -> None:
    if shown:
        from gradlab import __version__

        typer.echo(f"gradlab {__version__}")
        raise typer.Exit()


OVERRIDES = {"allow_extra_args": True, "ignore_unknown_options": True}
KEY_VALUE = "[OPTIONS] [KEY=VALUE]..."  # the usage line of the commands that take overrides (`gradlab list`)
DryRun = Annotated[
    bool,
    typer.Option("--dry-run", help="Print the runs that would be made, and which are done; train nothing."),
]
Quiet = Annotated[
    bool,
    typer.Option(
        "--quiet",
        "-q",
        help="Print nothing while training (progress=none); a failed run still says why, on stderr.",
    ),
]
Force = Annotated[
    bool, typer.Option("--force", help="Re-run runs that already finished instead of skipping them.")
]
ConfigDir = Annotated[
    list[str],
    typer.Option(
        "--config-dir",
        help="A folder of your own configs (model/, task/, clip/, "
        "optim/ ... YAML files), used beside gradlab's; may be repeated.",
    ),
]


@contextmanager
def user_errors():
    """Bad input ends in one line on stderr and exit code 2, never a traceback (but under
    --traceback, which prints it too: the user's code that raised); a sweep whose
    launcher broke down, in one line and exit code 1; Ctrl-C, in one line and exit code 130;
    SIGTERM (a scheduler's preemption or time limit), as Ctrl-C, with exit code 143."""
    from gradlab.errors import (
        ConfigError,
        Interrupted,
        LaunchError,
        exit_code,
        full_errors,
        sigterm_interrupts,
        stopped,
    )

    try:
        with sigterm_interrupts():
            yield
    except ConfigError as e:
        if full_errors():  # the whole story, the user's code included
            traceback.print_exception(e)
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    except LaunchError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from None
    except (Interrupted, KeyboardInterrupt) as e:
        typer.echo(
            str(e)
            if isinstance(e, Interrupted)
            else f"{stopped(e)}: finished runs are kept; running the same command again makes the rest",
            err=True,
        )
        _handled_interrupt()
        raise typer.Exit(e.code if isinstance(e, Interrupted) else exit_code(e)) from None


@app.callback()
def options(
    ctx: typer.Context,
    show_traceback: Annotated[
        bool,
        typer.Option(
            "--traceback",
            help="Print the whole traceback beside an error's one line (as HYDRA_FULL_ERROR=1 does); "
            "a failed run's is in its folder, traceback.txt, either way.",
        ),
    ] = False,
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print gradlab's version and exit."),
    ] = False,
):
    """Options of every command."""
    from gradlab.errors import TRACEBACK
    from gradlab.parallel import environment

    if show_traceback or os.environ.get("HYDRA_FULL_ERROR") == "1":
        ctx.with_resource(environment(**{TRACEBACK: "1"}))  # a sweep's worker processes inherit it


def _handled_interrupt() -> None:
    """Keep exit code 130 after a Ctrl-C that gradlab handled. CPython ends the process with
    SIGINT instead (exit -2) when a KeyboardInterrupt once escaped Python code that a C
    extension ran through PyRun_*, even if the interrupt was handled further up; one
    successful PyRun_* call clears that flag."""
    import ctypes

    ctypes.pythonapi.PyRun_SimpleString(b"pass")


def _flags(quiet: bool, force: bool, config_dir: list[str] = ()) -> list[str]:
    from gradlab.launch import search_override

    return (
        (["progress=none"] if quiet else []) + (["force=true"] if force else []) + search_override(config_dir)
    )


@app.command(context_settings=OVERRIDES, options_metavar=KEY_VALUE)
def train(
    ctx: typer.Context,
    dry_run: DryRun = False,
    quiet: Quiet = False,
    force: Force = False,
    config_dir: ConfigDir = (),
):
    """One run: gradlab train model=transformer clip=value clip_value=0.5 accum_steps=4"""
    from gradlab import launch

    with user_errors():
        summary = launch.train([*ctx.args, *_flags(quiet, force, config_dir)], dry_run=dry_run)
    if summary and summary["status"] == "failed":
        raise typer.Exit(1)


@app.command(context_settings=OVERRIDES, options_metavar=KEY_VALUE)
def sweep(
    ctx: typer.Context,
    dry_run: DryRun = False,
    quiet: Quiet = False,
    force: Force = False,
    config_dir: ConfigDir = (),
    batch: Annotated[int, typer.Option("--batch", help="seed=auto: seeds per batch (>= 3).")] = 5,
    cap: Annotated[int, typer.Option("--cap", help="seed=auto: the most seeds per setting.")] = 20,
    effect: Annotated[
        float | None,
        typer.Option("--effect", help="seed=auto: the smallest difference of the metric that matters."),
    ] = None,
    metric: Annotated[str, typer.Option("--metric", help="seed=auto: the metric compared.")] = "eval_loss",
):
    """A grid of runs (Hydra multirun): gradlab sweep model=lstm clip=norm max_norm=1,5

    With seed=auto, seeds come in batches until each setting is told apart from the best one (or
    shown equivalent within --effect), or --cap seeds: gradlab sweep model=lstm max_norm=1,5 seed=auto"""
    from gradlab import auto_seeds, launch

    overrides = [*ctx.args, *_flags(quiet, force, config_dir)]
    with user_errors():
        if auto_seeds.AUTO in overrides:
            counts = auto_seeds.sweep(overrides, batch, cap, effect, metric, dry_run)
        else:
            counts = launch.sweep(overrides, dry_run=dry_run).counts
    if counts.get("failed") or counts.get("unfinished"):
        raise typer.Exit(1)


@app.command(context_settings=OVERRIDES, options_metavar=KEY_VALUE)
def suggest(
    ctx: typer.Context,
    pilot_steps: Annotated[
        int,
        typer.Option("--pilot-steps", min=2, help="Steps of the pilot run (at most the run's own budget)."),
    ] = PILOT_STEPS,
    skip: Annotated[
        float,
        typer.Option("--skip", help="Share of the pilot's first steps left out as the transient, in [0, 1)."),
    ] = SKIP,
    quiet: Quiet = False,
    config_dir: ConfigDir = (),
):
    """A short pilot run (unclipped unless clip= is given), its gradient-norm percentiles and a
    threshold grid that spans them, with the sweep to run: gradlab suggest model=lstm"""
    from gradlab.suggest import suggest as pilot

    with user_errors():
        typer.echo(pilot(ctx.args, pilot_steps, skip, config_dir, _flags(quiet, False)))


@app.command("list")
def list_options(config_dir: ConfigDir = ()):
    """The config groups with their options (yours from --config-dir too), and the top-level keys."""
    from importlib import resources

    from gradlab.experiments import catalogue, header

    from gradlab import clip
    from gradlab.launch import options, search_override, user_folders
    from gradlab.sweep import GROUPS

    with user_errors():
        folders = user_folders(search_override(config_dir))
    conf = resources.files("gradlab.conf")
    for group in GROUPS[1:]:
        typer.echo(f"{group}:")
        for name, f in options(group, folders).items():
            if f is None:  # a clip mode: its module's first line
                text = clip.summary(name)
            else:
                mine = "" if f == conf.joinpath(group, f.name) else f" [{f.parent.parent}]"
                text = (header(f.read_text()) or [""])[0] + mine
            typer.echo(f"  {name:<16} {text}")
    typer.echo("experiment:")
    for name, (description, commands) in catalogue().items():
        typer.echo(f"  {name:<16} {description}")
        for command in commands:
            typer.echo(f"  {'':<16}   $ {command}")
    typer.echo("keys (set or sweep by name):")
    for name, (default, docs) in clip.short_names().items():
        said = "; ".join(f"clip={mode}: {doc}" for mode, doc in docs)
        shown = "null" if default is None else str(default).lower() if isinstance(default, bool) else default
        typer.echo(f"  {f'{name}: {shown}':<36} {said}")
    parents = []  # the keys above this line, by indentation: search.trials, logger.wandb.mode
    for line in conf.joinpath("config.yaml").read_text().splitlines():
        if not line.strip() or line.lstrip().startswith(("#", "-")):
            continue
        depth = (len(line) - len(line.lstrip())) // 2
        key, _, rest = line.strip().partition(":")
        parents = [*parents[:depth], key]
        value, _, comment = rest.partition("#")
        if parents[0] not in ("defaults", "hydra") and comment:
            typer.echo(f"  {'.'.join(parents) + ':' + value.rstrip():<36} {comment.strip()}")


Paths = Annotated[list[str], typer.Argument(help="Sweep folders or results roots holding run records.")]
By = Annotated[
    str, typer.Option("--by", help="Comma-separated config keys to group by (default: the keys that vary).")
]
Metric = Annotated[
    str, typer.Option("--metric", help="Summary figure to sort by, e.g. eval_loss, train_loss_best.")
]
Out = Annotated[str, typer.Option("--out", help="Folder for the output files (default: the first path).")]
Target = Annotated[
    float,
    typer.Option(
        "--target", help="Steps until the metric reaches this value, and the share of seeds that reach it."
    ),
]
Relative = Annotated[
    bool,
    typer.Option(
        "--relative",
        help="Express each norm threshold as max_norm / the median pre-clip gradient norm of its runs.",
    ),
]


def _comparison(paths, by, metric, target=None, relative=False, paired=False):
    from gradlab import compare
    from gradlab.errors import ConfigError

    runs = compare.load_runs(paths)
    design = compare.Design.of(paths) if paired else None
    if design is not None and metric != design.metric:
        raise ConfigError(
            f"--metric {metric}: these seeds followed a seed=auto design on {design.metric}; "
            f"compare with --metric {design.metric} (or without --paired)"
        )
    by = by.split(",") if by else None
    return runs, compare.compare(runs, by, metric, target, relative, paired, design)


@app.command(rich_help_panel="Results")
def compare(
    paths: Paths,
    by: By = "",
    metric: Metric = "eval_loss",
    target: Target = None,
    relative: Relative = False,
    paired: Annotated[
        bool,
        typer.Option(
            "--paired",
            help="Each row against the best, seed by seed: the paired difference with its 95% "
            "interval and p-value (the repeated interval of the sequential design, for seed=auto "
            "sweeps).",
        ),
    ] = False,
    fmt: Annotated[str, typer.Option("--format", help="md, csv, latex or all.")] = "all",
    out: Out = "",
    wandb: Annotated[
        bool, typer.Option("--wandb", help="Also log the table and plots as a W&B run of job_type report.")
    ] = False,
):
    """Comparison table of the runs under PATHS: gradlab compare results/<sweep>"""
    from pathlib import Path

    from gradlab import compare as cmp
    from gradlab.errors import ConfigError

    formats = ["md", "csv", "latex"] if fmt == "all" else [fmt]
    with user_errors():
        if any(f not in ("md", "csv", "latex") for f in formats):
            raise ConfigError(f"--format {fmt}: choose from md, csv, latex, all")
        runs, comparison = _comparison(paths, by, metric, target, relative, paired)
        cells = cmp.readable(comparison)
        _print_table(cmp.readable(comparison, intervals=False), comparison)
        written = cmp.write(comparison, cells, Path(out or paths[0]), formats)
        if wandb:
            _report(runs, comparison, cells, Path(out or paths[0]))
    typer.echo("wrote " + ", ".join(map(str, written)))


@app.command(rich_help_panel="Results")
def plot(
    paths: Paths,
    by: By = "",
    metric: Metric = "eval_loss",
    target: Target = None,
    relative: Relative = False,
    out: Out = "",
):
    """PNGs: curves over training, the metric and clip fraction against the threshold, the share of
    seeds reaching --target against it, and the gradient-norm distribution with the thresholds."""
    from pathlib import Path

    from gradlab.errors import ConfigError
    from gradlab.plots import plot as draw

    with user_errors():
        runs, comparison = _comparison(paths, by, metric, target, relative)
        folder = Path(out or paths[0])
        try:
            folder.mkdir(parents=True, exist_ok=True)
            written = draw(comparison, runs, folder, target)
        except OSError as e:
            raise ConfigError(f"--out {folder}: cannot write there ({e.strerror or e})") from None
    typer.echo("wrote " + ", ".join(map(str, written)))


def _print_table(cells, comparison) -> None:
    from rich.console import Console
    from rich.table import Table

    best = (
        f"ranked within each of the {comparison.tasks} tasks, * = best of its task"
        if comparison.tasks > 1
        else "* = best"
    )
    table = Table(title=f"sorted by {comparison.metric}: mean ± std over completed runs; {best}")
    for column in cells.columns:
        table.add_column(column, no_wrap=True)
    for row in cells.itertuples(index=False):
        table.add_row(*map(str, row))
    needed = sum(max(len(str(c)), *(len(str(v)) for v in cells[c])) + 3 for c in cells.columns) + 1
    Console(width=max(Console().width, needed)).print(table)  # wide tables scroll rather than truncate


def _report(runs, comparison, cells, out) -> None:
    from gradlab.config import plain
    from gradlab.launch import compose_all
    from gradlab.plots import plot as draw
    from gradlab.progress import offline_hint
    from gradlab.tracking import log_report

    settings = plain(compose_all([[]])[0])["logger"]["wandb"]
    group = runs["sweep"].iloc[0] if runs["sweep"].nunique() == 1 else "compare"
    images = {p.stem: p for p in draw(comparison, runs, out)}
    report = out / "report"  # beside the runs' folders: the sweep's `wandb sync` glob takes it too
    report.mkdir(exist_ok=True)
    where = log_report(group, {"comparison": cells}, images, settings, report)
    typer.echo(
        f"logged the comparison to W&B (group {group})" + (f"; {offline_hint(where)}" if where else "")
    )


@app.command(context_settings=OVERRIDES, rich_help_panel="Results")
def reproduce(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="A study (see --list), or all.")] = "",
    scale: Annotated[
        str, typer.Option("--scale", help="smoke (seconds), quick (CPU minutes) or full (paper sizes, GPU).")
    ] = "quick",
    list_studies: Annotated[bool, typer.Option("--list", help="List the studies and their claims.")] = False,
    results_root: Annotated[
        str, typer.Option("--results-root", help="Where the studies' runs and reports go.")
    ] = "results",
    publish: Annotated[
        bool, typer.Option("--publish", help="Also copy each report into results/reference/.")
    ] = False,
    protocol: Annotated[
        bool, typer.Option("--protocol", help="Print the study's protocol at this scale and run nothing.")
    ] = False,
    quiet: Quiet = False,
):
    """Run a published threshold recommendation as a study and report whether it holds.

    Extra overrides go to every sweep of the study, e.g.
    `gradlab reproduce lstm-adding device=cuda wandb=off`."""
    from gradlab.experiments import STUDIES, study_module

    from gradlab.errors import ConfigError

    if list_studies or not name:
        for key in STUDIES:
            typer.echo(f"{key:<24} {study_module(key).CLAIM}")
        return
    from pathlib import Path

    from gradlab.experiments.study import SCALES, publish_report, run_study

    with user_errors():
        if scale not in SCALES:
            raise ConfigError(f"--scale {scale}: choose from {', '.join(SCALES)}")
        modules = [study_module(key) for key in (STUDIES if name == "all" else [name])]
        if protocol:
            typer.echo("\n\n".join(module.protocol(scale).text() for module in modules))
            return
        for module in modules:
            report = run_study(module, scale, Path(results_root), [*ctx.args, *_flags(quiet, False)])
            typer.echo(f"{module.NAME}: report -> {report}")
            if publish:
                typer.echo(f"{module.NAME}: published -> {publish_report(report)}")


def _names(value: str, allowed: tuple, option: str) -> list[str]:
    from gradlab.errors import ConfigError

    names = [v for v in value.split(",") if v]
    unknown = [v for v in names if v not in allowed]
    if unknown or not names:
        raise ConfigError(f"{option} {value}: choose from {', '.join(allowed)} (comma-separated)")
    return names


def _counts(value: str) -> tuple:
    from gradlab.errors import ConfigError

    try:
        counts = tuple(int(v) for v in value.split(",") if v)
    except ValueError:
        counts = ()
    if not counts or min(counts) < 1:
        raise ConfigError(f"--counts {value}: give numbers of runs >= 1, comma-separated (e.g. 1,4,16,64)")
    return counts


@app.command()
def bench(
    only: Annotated[
        str,
        typer.Option("--only", help="Sections, comma-separated: loop, clip, sweep, scale, fixed, compile."),
    ] = "loop,clip,sweep,scale,fixed",
    models: Annotated[
        str, typer.Option("--models", help="Models, comma-separated: mlp, rnn, gru, lstm, transformer.")
    ] = "mlp,lstm,transformer",
    counts: Annotated[
        str, typer.Option("--counts", help="Runs trained together in the scale section, comma-separated.")
    ] = "1,4,16,64",
    steps: Annotated[
        int, typer.Option("--steps", min=1, help="Steps per timing of loop (clip: half, scale: a quarter).")
    ] = 100,
    sweep_steps: Annotated[
        int, typer.Option("--sweep-steps", min=1, help="Steps of each run of the sweep section.")
    ] = 50,
    repeats: Annotated[
        int, typer.Option("--repeats", min=1, help="Timings per measurement; medians are reported.")
    ] = 3,
    sweep_repeats: Annotated[
        int, typer.Option("--sweep-repeats", min=1, help="Timings of each whole sweep.")
    ] = 1,
    out: Annotated[str, typer.Option("--out", help="JSON file for the results.")] = "results/bench.json",
):
    """How fast gradlab is here: its loop vs plain PyTorch, clip mode costs, sweep throughput, scaling,
    fixed cost."""
    from gradlab import bench as measure

    with user_errors():
        sections = _names(only, measure.SECTIONS, "--only")
        chosen = _names(models, measure.MODELS, "--models")
        sizes = _counts(counts)
        measure.writable(out)
    report = measure.run(sections, chosen, steps, repeats, sweep_steps, sweep_repeats, sizes)
    measure.write(report, out)
    typer.echo(f"\nresults -> {out}")


def main():
    app()
