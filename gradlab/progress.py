"""What a run and a sweep show while they work.

progress=auto: a live bar on a terminal, plain periodic lines otherwise (CI logs);
progress=bar|lines force one; progress=none (`--quiet`) prints nothing but a failed run's one line
(on stderr, as every failure is).
"""

from __future__ import annotations

import sys
import time

from gradlab.records import STATUSES

MODES = ("auto", "bar", "lines", "none")


def progress_mode(mode: str) -> str:
    if mode not in MODES:
        from gradlab.errors import bad

        raise bad("progress", mode, f"choose from {', '.join(MODES)}")
    if mode == "auto":
        return "bar" if sys.stdout.isatty() else "lines"
    return mode


def _info(row: dict, clip_fraction: float, steps_per_s: float) -> str:
    return (
        f"loss {row['loss']:.4g} gnorm {row['grad_norm']:.3g} clip {clip_fraction:.0%} "
        f"{steps_per_s:.0f} steps/s"
    )


class RunProgress:
    """Progress of one run: step, loss, grad norm, clip fraction, steps/s, ETA."""

    def __init__(self, mode: str, name: str, total: int, lines: int = 10):
        self.mode, self.name, self.total = progress_mode(mode), name, total
        self.every = max(1, total // lines)
        self.next_line = self.every
        self.start = time.perf_counter()
        if self.mode == "bar":
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(bar_width=10),
                MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"),
                TimeRemainingColumn(),
                transient=False,
            )
            self.task = self.bar.add_task(name, total=total, info="")
            self.bar.start()

    def update(self, step: int, row: dict, clip_fraction: float, steps_per_s: float) -> None:
        if self.mode == "bar":
            self.bar.update(self.task, completed=step, info=_info(row, clip_fraction, steps_per_s))
        elif self.mode == "lines" and (step >= self.next_line or step == self.total):
            eta = (time.perf_counter() - self.start) / step * (self.total - step)
            print(
                f"{self.name} step {step}/{self.total}  {_info(row, clip_fraction, steps_per_s)}  "
                f"eta {eta:.0f}s",
                flush=True,
            )
            self.next_line = (step // self.every + 1) * self.every

    def close(self, summary: dict, run_dir) -> None:
        if self.mode == "bar":
            self.bar.stop()
        line = f"{self.name}: {describe(summary)} -> {run_dir}"
        if summary["status"] == "failed":  # an error, not progress: said on stderr even with --quiet
            print(line, file=sys.stderr, flush=True)
        elif self.mode != "none":
            print(line, flush=True)


def describe(summary: dict) -> str:
    """One phrase for a finished run: `completed, loss 0.012`, `diverged at step 40`, `failed: ...`."""
    status = summary["status"]
    if status == "pruned":
        return f"pruned at step {summary['pruned_step']}"
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


class SweepProgress:
    """Runs done / total, and how many diverged or failed, as each run of an in-process sweep
    (launcher=basic) ends. Under a parallel launcher the runs end in other processes, and each
    prints its own line; `gradlab sweep` sums up from the records at the end either way."""

    def __init__(self, total: int, mode: str):
        self.total, self.quiet = total, progress_mode(mode) == "none" or total == 1  # one run says it itself
        self.counts = dict.fromkeys((*STATUSES, "skipped"), 0)

    def ended(self, summaries: list) -> None:
        for summary in summaries:
            status = summary.get("status", "failed")
            self.counts[
                "skipped" if summary.get("skipped") else status if status in self.counts else "failed"
            ] += 1
        if not self.quiet:
            print(
                f"[sweep {sum(self.counts.values())}/{self.total}] {self.counts['diverged']} diverged, "
                f"{self.counts['failed']} failed",
                flush=True,
            )
