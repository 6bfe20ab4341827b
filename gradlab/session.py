"""A run's record: whether it is to be made here (`claim`: finished before, or being made by
another process), and its keeping from start to close (`Session`: its folder, summary, W&B run
and progress). Only rank 0 of a data-parallel run writes."""

from __future__ import annotations

import os
import platform
import sys
import time
from contextlib import contextmanager, nullcontext
from datetime import datetime, timezone

import torch

import gradlab
from gradlab import devices, distributed, figures, records
from gradlab.config import display_name, identity, run_id, sweep_dir
from gradlab.errors import full_errors
from gradlab.loop import one_line
from gradlab.progress import RunProgress, progress_mode, report_skipped
from gradlab.tracking import Tracker


@contextmanager
def claim(conf: dict, world: distributed.World = distributed.SOLO):
    """The summary of a run that is not to be made here (finished before, or being made by another
    process: another sweep on the same folder), else None while this process holds the run."""
    run_dir = sweep_dir(conf) / run_id(conf)
    done = skipped(conf)
    distributed.barrier(world)  # every rank has looked before rank 0 starts an attempt
    with records.claimed(run_dir) if world.rank == 0 and not done else nullcontext(True) as mine:
        if not done and not distributed.agree(mine, world):
            done = elsewhere(conf, run_dir)
        why = None if done or world.rank else records.problem(run_dir)
        if why:
            print(
                f"warning: {run_dir}: corrupt record ({why}); it is made again, and the corrupt folder "
                f"kept in {run_dir.parent / records.WORK}",
                file=sys.stderr,
                flush=True,
            )
        yield done or skipped(conf)  # finished: made by another process just before this one took it


def earlier_result(conf: dict) -> dict | None:
    """The summary of this run if it finished before and is not to be forced (force=true)."""
    return None if conf.get("force") else records.result(sweep_dir(conf) / run_id(conf), identity(conf))


def skipped(conf: dict) -> dict | None:
    """earlier_result, said on the console and marked skipped: what a run that is not made returns."""
    done = earlier_result(conf)
    if done and distributed.world().rank == 0:
        report_skipped(conf["progress"], done, sweep_dir(conf) / run_id(conf))
    return {**done, "skipped": True} if done else None


def elsewhere(conf: dict, run_dir) -> dict:
    """What a run returns that another live process is making (another sweep on the same folder)."""
    if distributed.world().rank == 0 and progress_mode(conf["progress"]) != "none":
        print(
            f"{display_name(conf)}: in progress elsewhere (another process holds {run_dir}); skipped",
            flush=True,
        )
    return {"status": "elsewhere", "run_id": run_dir.name, "name": display_name(conf), "skipped": True}


class Session:
    """The record-keeping of one run: its folder, summary, W&B run and progress, from start to close.
    Only rank 0 of a data-parallel run writes."""

    def __init__(self, conf: dict, run, world: distributed.World):
        self.conf, self.run, self.lead = conf, run, world.rank == 0
        self.run_dir = sweep_dir(conf) / run_id(conf)
        self.attempt = records.Attempt(self.run_dir)  # where the record is made until it is complete
        self.progress = RunProgress(
            conf["progress"] if self.lead else "none", display_name(conf), conf["steps"]
        )
        self.summary = {
            "status": "interrupted",
            "run_id": self.run_dir.name,
            "name": display_name(conf),
            "sweep": conf["name"],
            "config_hash": identity(conf),
            "seed": conf["seed"],
            "device": devices.name(run.device),
            "fp32_precision": devices.fp32_precision(),
            "execution": "eager",
            "processes": world.size,
            "versions": versions(),
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        self.history, self.layers = [], []
        self.start = time.perf_counter()
        self.tracker = Tracker(conf, self.attempt.dir, enabled=self.lead)
        self.opened = False

    def open(self) -> None:
        """Start the attempt's folder and the W&B run."""
        if self.lead:
            self.attempt.begin(self.conf)
        self.opened = True
        self.tracker.start()

    def close(self, result: dict) -> dict:
        """Write the record (status `interrupted` unless `result` says otherwise), with the traceback
        of a run that raised in its folder (and on stderr under --traceback); the summary."""
        result = dict(result)
        trace = result.pop("traceback", None)
        summary = self.summary
        summary.update(
            result,
            **figures.summary(self.history),
            wall_time_s=round(time.perf_counter() - self.start, 3),
            finished=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            wandb={"mode": self.tracker.mode, "sync": None},
        )
        if self.lead:
            if trace and full_errors():
                print(trace, file=sys.stderr, end="", flush=True)
            self._write(trace)
        self.progress.close(summary, self.run_dir)
        return summary

    def _write(self, trace: str | None) -> None:
        import pandas as pd

        written = False
        if self.opened:  # else its folder could not be started, and the run's error says why
            try:
                if trace:
                    records.atomic_write(self.attempt.dir / records.TRACEBACK, lambda p: p.write_text(trace))
                self.tracker.finish(self.summary)
                if self.conf["save_model"]:
                    weights = {
                        k: v.cpu() for k, v in self.run.model.state_dict().items()
                    }  # loads without a GPU
                    torch.save(weights, self.attempt.dir / "model.pt")
                self.summary["wandb"]["sync"] = self._sync_hint()
                self.attempt.finish(
                    self.summary,
                    pd.DataFrame(self.history, columns=figures.columns()),
                    pd.DataFrame(self.layers, columns=figures.LAYER_COLUMNS) if self.layers else None,
                )
                written = True
            except OSError as e:  # e.g. disk full: record the failure in the space the partial files held
                self.summary.update(status="failed", error=one_line(e))
                self.summary["wandb"]["sync"] = None
        written = written or self.attempt.salvage(self.summary)
        if not self.attempt.close(self.summary, written) and written:
            print(
                f"{self.summary['name']}: {self.summary['status']}; the finished record already in "
                f"{self.run_dir} is kept",
                file=sys.stderr,
                flush=True,
            )

    def _sync_hint(self) -> str | None:
        """Where this run's offline W&B files will be once the record is in place, for `wandb sync`."""
        return os.fspath(self.run_dir / "wandb") if self.tracker.mode == "offline" else None


def versions() -> dict:
    return {"gradlab": gradlab.__version__, "torch": torch.__version__, "python": platform.python_version()}
