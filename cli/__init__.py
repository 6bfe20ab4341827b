"""The `gradlab` command line. Heavy modules (torch, hydra) are imported inside commands,
so `gradlab --help` stays fast."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Annotated

import typer

app = typer.Typer(
    help="Gradient-clipping ablation studies: runs, sweeps and their records.\n\n"
    "Overrides use Hydra's grammar: key=value, group=option, comma lists to sweep.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

OVERRIDES = {"allow_extra_args": True, "ignore_unknown_options": True}
DryRun = Annotated[bool, typer.Option("--dry-run", help="Print the runs that would be made, and which are done; train nothing.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing while training (progress=none).")]
Force = Annotated[bool, typer.Option("--force", help="Re-run runs that already finished instead of skipping them.")]


@contextmanager
def user_errors():
    """Bad input ends in one line on stderr and exit code 2, never a traceback."""
    from gradlab.errors import ConfigError

    try:
        yield
    except ConfigError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None


def _flags(quiet: bool, force: bool) -> list[str]:
    return (["progress=none"] if quiet else []) + (["force=true"] if force else [])


@app.command(context_settings=OVERRIDES)
def train(ctx: typer.Context, dry_run: DryRun = False, quiet: Quiet = False, force: Force = False):
    """One run: gradlab train model=transformer clip=value clip_value=0.5 accum_steps=4"""
    from gradlab import launch

    with user_errors():
        summary = launch.train([*ctx.args, *_flags(quiet, force)], dry_run=dry_run)
    if summary and summary["status"] == "failed":
        raise typer.Exit(1)


@app.command(context_settings=OVERRIDES)
def sweep(ctx: typer.Context, dry_run: DryRun = False, quiet: Quiet = False, force: Force = False):
    """A grid of runs (Hydra multirun): gradlab sweep model=lstm clip=norm max_norm=1,5"""
    from gradlab import launch

    with user_errors():
        launch.sweep([*ctx.args, *_flags(quiet, force)], dry_run=dry_run)


@app.command("list")
def list_options():
    """The config groups with their options, and the top-level keys."""
    from importlib import resources

    from gradlab.experiments import catalogue, header
    from gradlab.sweep import GROUPS

    conf = resources.files("gradlab.conf")
    for group in GROUPS[1:]:
        typer.echo(f"{group}:")
        for f in sorted(conf.joinpath(group).iterdir(), key=lambda f: f.name):
            if f.name.endswith(".yaml"):
                typer.echo(f"  {f.name[:-5]:<16} {header(f.read_text())[0]}")
    typer.echo("experiment:")
    for name, (description, commands) in catalogue().items():
        typer.echo(f"  {name:<16} {description}")
        for command in commands:
            typer.echo(f"  {'':<16}   $ {command}")
    typer.echo("keys (set or sweep by name):")
    for line in conf.joinpath("config.yaml").read_text().splitlines():
        if line and not line.startswith((" ", "#", "-", "defaults", "hydra")) and "#" in line:
            key, comment = line.split("#", 1)
            typer.echo(f"  {key.strip():<36} {comment.strip()}")


def main():
    app()
