"""Ready experiments: conf/experiment/<name>.yaml, each a `# @package _global_` config that
overrides only what it changes and carries, in its header comment, what it reproduces and
the commands that run it."""

from __future__ import annotations

import importlib
from importlib import resources

SHARED = ("study", "protocol")  # the modules every study uses; each other module is one study


def _studies() -> dict[str, str]:
    """study name (gradlab reproduce NAME) -> its module in experiments/, the same name with
    underscores (lstm-adding: experiments/lstm_adding.py and conf/experiment/lstm_adding.yaml)."""
    import pkgutil

    modules = [m.name for m in pkgutil.iter_modules(__path__) if m.name not in SHARED]
    return {m.replace("_", "-"): m for m in sorted(modules)}


STUDIES = _studies()


def study_module(name: str):
    """The module of a reproducible study; ConfigError for an unknown name."""
    from gradlab.errors import bad

    if name not in STUDIES:
        raise bad("study", name, f"choose from {', '.join(STUDIES)} or all")
    return importlib.import_module(f"gradlab.experiments.{STUDIES[name]}")


def header(text: str) -> list[str]:
    """The leading comment block of a config file, without `# @package` directives."""
    lines = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        if not line.startswith("# @package"):
            lines.append(line[1:].strip())
    return lines


def catalogue() -> dict[str, tuple[str, list[str]]]:
    """name -> (description, commands) of every ready experiment."""
    found = {}
    for f in sorted(resources.files("gradlab.conf").joinpath("experiment").iterdir(), key=lambda f: f.name):
        if f.name.endswith(".yaml"):
            lines = header(f.read_text())
            commands = [line for line in lines if line.startswith("gradlab ")]
            found[f.name[:-5]] = (" ".join(line for line in lines if line not in commands), commands)
    return found
