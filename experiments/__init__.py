"""Ready experiments: conf/experiment/<name>.yaml, each a `# @package _global_` config that
overrides only what it changes and carries, in its header comment, what it reproduces and
the commands that run it."""

from __future__ import annotations

from importlib import resources


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
