"""Run records on disk: one folder per run, replaced only by a record that is complete.

    <results_root>/<sweep name>/<run id>/
        config.yaml       the resolved configuration
        history.csv       one row per optimizer step
        layer_norms.csv   per-parameter gradient norms every `layer_norms_every` steps
        summary.json      status and final figures
        traceback.txt     where a run failed: the whole traceback of the error its summary names
        wandb/, model.pt  the run's W&B files; its final weights (save_model=true)

A run is made in a folder beside its record, `<sweep>/.gradlab/<run id>.partial/`, and moved
into place only once it has ended. A completed or diverged run replaces whatever was there;
a run that failed or was interrupted replaces only a record that was not a finished result.
So a `--force` re-run that is killed, interrupted or fails leaves the earlier record as it was.

A run with checkpoint_every set keeps its last checkpoint in `.gradlab/<run id>.ckpt`
(gradlab.checkpoint) until it ends other than interrupted; a killed run leaves it for the next
attempt, which continues from it.

While a run is made, its process holds a lock on `.gradlab/<run id>.lock` (released by the
kernel when the process dies, however it dies): another sweep on the same folder skips
that run as in progress elsewhere instead of starting it again.

A record is complete only when all its files are present and readable (`read`); one that
is not is never taken for a result: a sweep makes it again, `gradlab compare` skips it.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import os
import shutil
import sys
import time
from contextlib import contextmanager, suppress
from pathlib import Path

import yaml

SUMMARY = "summary.json"
STATUSES = ("completed", "diverged", "pruned", "failed", "interrupted")  # how a run ends, in the order shown
# re-running these would give the same numbers (a pruned run: a search's pruner stopped it, the
# search's trial that asks for it again is pruned again)
FINISHED = ("completed", "diverged", "pruned")
TEXT = (
    "status",
    "run_id",
    "name",
    "sweep",
    "config_hash",
    "device",
    "fp32_precision",
    "started",
    "finished",
    "error",
    "execution",
)  # the rest: numbers
TRACEBACK = "traceback.txt"
GROUPS = ("versions", "wandb", "verify")  # the summary's nested parts
_YAML = getattr(
    yaml, "CSafeLoader", yaml.SafeLoader
)  # the C parser where PyYAML has it: records load in bulk


class Unreadable(Exception):
    """A record with a file missing or not as gradlab writes it; the message says which."""


def atomic_write(path: Path, write) -> None:
    """`write(tmp)` to a file beside `path`, then move it into place: a failed write (disk full)
    leaves the old file, or none, never a partial one."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def read(run_dir: Path) -> dict:
    """The summary of a complete record whose files are all readable; else Unreadable."""
    return load(run_dir)[0]


def load(run_dir: Path) -> tuple[dict, dict]:
    """(summary, configuration) of a complete record whose files are all readable and agree with
    each other; else Unreadable, saying why.

    A finished result verifies: its summary's figures are numbers (gradlab writes a non-finite
    one as null), its configuration has the hash the summary names, and its history.csv holds
    the rows and the bytes its summary recorded (`verify`: row count and SHA-256; a record made
    before gradlab wrote them: a row per step done, with the step and loss columns)."""
    run_dir = Path(run_dir)
    summary = _load(run_dir / SUMMARY, lambda p: json.loads(p.read_text()))
    if not isinstance(summary, dict) or summary.get("status") not in STATUSES:
        raise Unreadable(f"{SUMMARY} is not a run summary (status one of {', '.join(STATUSES)})")
    for key, value in summary.items():
        if key in TEXT or key in GROUPS:
            continue
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
        ):
            raise Unreadable(f"{SUMMARY}: {key}={value!r} is not a finite number")
    config = _load(run_dir / "config.yaml", lambda p: yaml.load(p.read_text(), Loader=_YAML))
    if not isinstance(config, dict):
        raise Unreadable("config.yaml is not a configuration")
    if summary["status"] in FINISHED:  # a failed run may have no series (recorded in the space left)
        _verify_config(summary, config)
        _verify_history(run_dir / "history.csv", summary)
    return summary, config


def _verify_config(summary: dict, config: dict) -> None:
    """The configuration is the one the summary names (by its hash, where it names one: a record
    written by other tools may not)."""
    from gradlab.config import identity

    if "config_hash" in summary:
        try:
            made_by = identity(config)
        except Exception as e:
            raise Unreadable(f"config.yaml is not a run configuration ({type(e).__name__}: {e})") from None
        if summary["config_hash"] != made_by:
            raise Unreadable(
                f"{SUMMARY} is the record of config {summary['config_hash']}, config.yaml of {made_by}"
            )


def _verify_history(path: Path, summary: dict) -> None:
    import pandas as pd

    check = summary.get("verify")
    if check:
        digest = _load(path, sha256)
        if digest != check.get("history_sha256"):
            raise Unreadable(f"{path.name} is not the file its run wrote (its SHA-256 differs)")
    history = _load(path, lambda p: pd.read_csv(p, dtype=float))
    rows = check["history_rows"] if check else summary.get("steps_done")
    if rows is not None and len(history) != rows:
        raise Unreadable(f"{path.name} has {len(history)} rows, its run recorded {rows}")
    if not {"step", "loss"} <= set(history.columns):
        raise Unreadable(f"{path.name} has no step and loss columns")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _load(path: Path, parse):
    try:
        return parse(path)
    except OSError as e:
        raise Unreadable(f"{path.name}: {e.strerror or e}") from None
    except (ValueError, yaml.YAMLError) as e:  # ValueError: json, and pandas for a cell that is not a number
        raise Unreadable(f"{path.name}: {type(e).__name__}: {(str(e).splitlines() or [''])[0]}") from None


def problem(run_dir: Path) -> str | None:
    """Why the record in `run_dir` is corrupt (there, and not one `load` reads); None otherwise."""
    if not (run_dir.exists() or run_dir.is_symlink()):
        return None
    try:
        load(run_dir)
    except Unreadable as e:
        return str(e)
    return None


def result(run_dir: Path, config_hash: str) -> dict | None:
    """The summary of a finished run of exactly this configuration, else None."""
    try:
        summary = read(run_dir)
    except Unreadable:
        return None
    if summary["status"] in FINISHED and summary.get("config_hash") == config_hash:
        return summary
    return None


WORK = ".gradlab"  # the sweep's working folder: runs being made, their locks


def _hidden(run_dir: Path, suffix: str) -> Path:
    return run_dir.parent / WORK / f"{run_dir.name}.{suffix}"


def checkpoint_file(run_dir: Path) -> Path:
    return _hidden(run_dir, "ckpt")


@contextmanager
def claimed(run_dir: Path):
    """Hold the run's lock for the block; yields False (and holds nothing) if another live
    process holds it, i.e. the run is being made elsewhere."""
    lock_path = _hidden(run_dir, "lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        _recover(run_dir)
        try:
            yield True
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def in_progress(run_dir: Path) -> bool:
    """Another live process holds this run's lock."""
    lock = _hidden(Path(run_dir), "lock")
    if not lock.exists():
        return False
    with open(lock, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
    return False


def discard_unused(folder: Path, made: Path) -> None:
    """Remove a sweep folder that holds nothing but locks no live process holds, and the empty
    folders above it up to `made`: what a command that bad input stopped while its first run was
    built leaves behind (its caller made `made`, by this command). A folder never made is fine."""
    work = folder / WORK
    if any(p != work for p in folder.glob("*")) or any(
        p.suffix != ".lock" or in_progress(folder / p.stem) for p in work.glob("*")
    ):
        return
    shutil.rmtree(folder, ignore_errors=True)
    for parent in folder.parents:
        if not parent.is_relative_to(made):
            break
        with suppress(OSError):  # removed only if empty (and there)
            parent.rmdir()


def _recover(run_dir: Path) -> None:
    """Under the lock: put back a record that a kill between the two renames of `_install` left
    aside, and remove what a killed attempt left half-made."""
    old = _hidden(run_dir, "old")
    if old.exists() and not run_dir.exists():
        os.replace(old, run_dir)
    shutil.rmtree(old, ignore_errors=True)
    shutil.rmtree(_hidden(run_dir, "partial"), ignore_errors=True)


class Attempt:
    """One attempt at a run, made in `.gradlab/<run id>.partial/` and moved into place by `close`."""

    def __init__(self, run_dir: Path):
        self.run_dir, self.dir = run_dir, _hidden(run_dir, "partial")

    def begin(self, conf: dict) -> None:
        """Start the folder (whatever a killed attempt left there went when the run was claimed)."""
        self.dir.mkdir(parents=True)
        atomic_write(self.dir / "config.yaml", lambda p: p.write_text(yaml.safe_dump(conf, sort_keys=False)))

    def finish(self, summary: dict, history, layer_norms) -> None:
        """Write the series, and the summary with what verifies the history (`load`)."""
        atomic_write(self.dir / "history.csv", lambda p: history.to_csv(p, index=False))
        summary["verify"] = {"history_rows": len(history), "history_sha256": sha256(self.dir / "history.csv")}
        if layer_norms is not None:
            atomic_write(self.dir / "layer_norms.csv", lambda p: layer_norms.to_csv(p, index=False))
        self._write_summary(summary)

    def salvage(self, summary: dict) -> bool:
        """After a failed write (disk full): drop the series and W&B files, keep the summary if it
        fits. False if even that could not be written (the run is then made again next time)."""
        shutil.rmtree(self.dir / "wandb", ignore_errors=True)
        for name in ("history.csv", "layer_norms.csv", "model.pt"):
            (self.dir / name).unlink(missing_ok=True)
        try:
            if not (self.dir / "config.yaml").exists():
                raise OSError("its folder could not be started")
            self._write_summary(summary)
            return True
        except OSError as e:
            print(
                f"warning: could not record {self.run_dir.name} ({e.strerror or e}); it will be made again",
                file=sys.stderr,
            )
            return False

    def _write_summary(self, summary: dict) -> None:
        atomic_write(self.dir / SUMMARY, lambda p: p.write_text(json.dumps(summary, indent=2, default=str)))

    def close(self, summary: dict, written: bool) -> bool:
        """Move the attempt into place if it was written and may replace what is there (a finished
        result, or anything where no finished result is); else remove it. Whether it was moved."""
        keep_old = summary["status"] not in FINISHED and _is_result(self.run_dir)
        if written and not keep_old:
            _install(self.dir, self.run_dir)
            return True
        shutil.rmtree(self.dir, ignore_errors=True)
        return False


def _is_result(run_dir: Path) -> bool:
    try:
        return read(run_dir)["status"] in FINISHED
    except Unreadable:
        return False


def _install(attempt: Path, run_dir: Path) -> None:
    """Move the attempt into place. A record there goes; one that is corrupt is kept aside, as
    `.gradlab/<run id>.corrupt-<time>`, for its owner to look at."""
    old = _hidden(run_dir, "old")
    if run_dir.exists() or run_dir.is_symlink():
        shutil.rmtree(old, ignore_errors=True)
        corrupt = problem(run_dir) is not None
        os.replace(run_dir, corrupt_place(run_dir) if corrupt else old)
    os.replace(attempt, run_dir)
    shutil.rmtree(old, ignore_errors=True)


def corrupt_place(run_dir: Path) -> Path:
    return _hidden(run_dir, f"corrupt-{time.strftime('%Y%m%d-%H%M%S')}")
