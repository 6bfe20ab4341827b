"""Run records on disk: one folder per run, complete only once summary.json exists.

    <results_root>/<sweep name>/<run id>/
        config.yaml       the resolved configuration (written first)
        history.csv       one row per optimizer step
        layer_norms.csv   per-parameter gradient norms every `layer_norms_every` steps
        summary.json      status and final figures, written atomically as the last act

A folder without summary.json is a run that was killed half-way: it is re-run, never
mistaken for a finished one.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

SUMMARY = "summary.json"
FINISHED = ("completed", "diverged")  # re-running these would give the same numbers


def _atomic_write(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    os.replace(tmp, path)


def read_summary(run_dir: Path) -> dict | None:
    try:
        return json.loads((Path(run_dir) / SUMMARY).read_text())
    except (OSError, ValueError):
        return None


def finished(run_dir: Path, config_hash: str) -> dict | None:
    """The summary of a finished run of exactly this configuration, else None."""
    summary = read_summary(run_dir)
    if summary and summary.get("status") in FINISHED and summary.get("config_hash") == config_hash:
        return summary
    return None


def begin(run_dir: Path, conf: dict) -> None:
    """Start a record afresh: whatever a killed or forced earlier attempt left is removed."""
    import yaml

    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(conf, sort_keys=False))


def finish(run_dir: Path, summary: dict, history, layer_norms) -> None:
    """Write the series, then the summary that marks the record complete."""
    _atomic_write(run_dir / "history.csv", lambda p: history.to_csv(p, index=False))
    if layer_norms is not None:
        _atomic_write(run_dir / "layer_norms.csv", lambda p: layer_norms.to_csv(p, index=False))
    _write_summary(run_dir, summary)


def _write_summary(run_dir: Path, summary: dict) -> None:
    _atomic_write(run_dir / SUMMARY, lambda p: p.write_text(json.dumps(summary, indent=2, default=str)))


def salvage(run_dir: Path, summary: dict) -> None:
    """After a failed write: drop the partial series and W&B files, keep the summary if it fits.

    If even that cannot be written, the folder stays incomplete and the run is re-run next time.
    """
    shutil.rmtree(run_dir / "wandb", ignore_errors=True)
    for partial in run_dir.glob(".*.tmp"):
        partial.unlink(missing_ok=True)
    try:
        _write_summary(run_dir, summary)
    except OSError as e:
        print(f"warning: could not record {run_dir.name} ({e.strerror}); it will be re-run", file=sys.stderr)
