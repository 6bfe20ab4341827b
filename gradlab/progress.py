"""What a run and a sweep show while they work.

progress=auto: a live bar on a terminal, plain periodic lines otherwise (CI logs);
progress=bar|lines force one; progress=none (`--quiet`) prints nothing.
"""

from __future__ import annotations

import os
import sys
import time

from hydra.experimental.callback import Callback

MODES = ("auto", "bar", "lines", "none")


def progress_mode(mode: str) -> str:
    if mode not in MODES:
        from gradlab.errors import bad

        raise bad("progress", mode, f"choose from {', '.join(MODES)}")
    if mode == "auto":
        return "bar" if sys.stdout.isatty() else "lines"
    return mode


def _info(row: dict, clip_fraction: float, steps_per_s: float) -> str:
    return f"loss {row['loss']:.4g} gnorm {row['grad_norm']:.3g} clip {clip_fraction:.0%} {steps_per_s:.0f} steps/s"


class RunProgress:
    """Progress of one run: step, loss, grad norm, clip fraction, steps/s, ETA."""

    def __init__(self, mode: str, name: str, total: int, lines: int = 10):
        self.mode, self.name, self.total = progress_mode(mode), name, total
        self.every = max(1, total // lines)
        self.next_line = self.every
        self.start = time.perf_counter()
        if self.mode == "bar":
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(TextColumn("{task.description}"), BarColumn(bar_width=10), MofNCompleteColumn(),
                                TextColumn("{task.fields[info]}"), TimeRemainingColumn(), transient=False)
            self.task = self.bar.add_task(name, total=total, info="")
            self.bar.start()

    def update(self, step: int, row: dict, clip_fraction: float, steps_per_s: float) -> None:
        if self.mode == "bar":
            self.bar.update(self.task, completed=step, info=_info(row, clip_fraction, steps_per_s))
        elif self.mode == "lines" and (step >= self.next_line or step == self.total):
            eta = (time.perf_counter() - self.start) / step * (self.total - step)
            print(f"{self.name} step {step}/{self.total}  {_info(row, clip_fraction, steps_per_s)}  eta {eta:.0f}s",
                  flush=True)
            self.next_line = (step // self.every + 1) * self.every

    def close(self, summary: dict, run_dir) -> None:
        if self.mode == "bar":
            self.bar.stop()
        if self.mode != "none":
            print(f"{self.name}: {describe(summary)} -> {run_dir}", flush=True)


def describe(summary: dict) -> str:
    """One phrase for a finished run: `completed, loss 0.012`, `diverged at step 40`, `failed: ...`."""
    status = summary["status"]
    if status == "diverged":
        return f"diverged at step {summary['diverged_step']}"
    if status == "failed":
        return f"failed: {summary['error']}"
    loss = summary.get("eval_loss_final", summary.get("train_loss_final"))
    return f"{status}, eval loss {loss:.4g}" if loss is not None else status


def report_skipped(mode: str, summary: dict, run_dir) -> None:
    if progress_mode(mode) != "none":
        print(f"{summary['name']}: already {describe(summary)} -> {run_dir} (--force re-runs it)", flush=True)


def offline_hint(runs_glob: str) -> str:
    return f"W&B runs were saved offline; upload them with: wandb sync {runs_glob}/wandb/offline-run-*"


class SweepProgress(Callback):
    """Hydra callback: runs done / total, and how many diverged or failed, as each run of an
    in-process sweep ends. Under a parallel launcher the runs end in other processes, and each
    prints its own line; `gradlab sweep` sums up from the records at the end either way."""

    def on_multirun_start(self, config, **kwargs) -> None:
        from gradlab.sweep import expand

        self.total = len(expand(list(config.hydra.overrides.task)))
        self.counts = {"completed": 0, "diverged": 0, "failed": 0, "skipped": 0}
        self.quiet = progress_mode(config.progress) == "none"
        self.pid = os.getpid()

    def on_job_end(self, config, job_return, **kwargs) -> None:
        if self.quiet or os.getpid() != self.pid:
            return
        summary = job_return._return_value  # .return_value re-raises a job's exception
        status = summary.get("status", "failed") if isinstance(summary, dict) else "failed"
        self.counts["skipped" if isinstance(summary, dict) and summary.get("skipped") else status] += 1
        done = sum(self.counts.values())
        print(f"[sweep {done}/{self.total}] {self.counts['diverged']} diverged, {self.counts['failed']} failed",
              flush=True)
