"""Runs that share one machine: the parallel runs of a sweep, and the ranks of a data-parallel run.

Every run takes an even share of the CPU cores as its torch threads, so that runs started
together do not fight over the cores. Under launcher=local on a machine with GPUs, each
worker process also takes a GPU of its own: the first free slot of the sweep, held by a file
lock for as long as the process lives, so two runs in flight never share a GPU unless there
are more workers than GPUs (then slot i uses GPU i mod the GPU count, and the sweep warns).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from gradlab.errors import bad

# Hydra launcher plugin -> how many of a sweep's runs it starts at once by default
PARALLEL = {"joblib": "one per GPU, else one per CPU core", "submitit_local": "all of them"}
_held: dict[str, tuple] = {}  # sweep -> (the open, locked slot file of this process, its slot)


def cores() -> int:
    """CPU cores this process may use (its affinity: a SLURM allocation, a taskset)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def gpus() -> int:
    import torch

    return torch.cuda.device_count()


def default_workers(launcher: str, runs: int) -> int:
    """Runs at once for `workers=auto`: never more than the runs to make."""
    if launcher == "submitit_local":
        return max(1, runs)
    return max(1, min(gpus() or cores(), runs))


def check_workers(workers) -> int:
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise bad("workers", workers, "must be an integer >= 1, or auto (under launcher=local)")
    return workers


def crowding(workers: int, use_gpu: bool) -> str | None:
    """A warning when more runs go at once than the machine has GPUs (or, without GPUs, cores)."""
    have, what = (gpus(), "GPU") if use_gpu else (cores(), "CPU core")
    if workers > have:
        return (
            f"warning: workers={workers} > {have} {what}(s): runs will share them "
            f"(fine for small models; set workers={have} for one each)"
        )
    return None


def share_cores(processes: int) -> None:
    """Give this process its share of the cores as torch threads, at most OMP_NUM_THREADS where
    that is set (a cluster's cap, or a user's)."""
    import torch

    share = max(1, cores() // processes)
    cap = os.environ.get("OMP_NUM_THREADS", "")
    torch.set_num_threads(min(share, int(cap)) if cap.isdigit() and int(cap) > 0 else share)


def claim_slot(sweep, workers: int) -> int:
    """This process's slot in `sweep` (0 .. workers-1): the first one no live process holds.
    Claimed once and held, by a lock on a file, until the process exits."""
    key = str(Path(sweep).resolve())
    if key not in _held:
        folder = Path(tempfile.gettempdir()) / f"gradlab-slots-{hashlib.sha1(key.encode()).hexdigest()[:12]}"
        folder.mkdir(exist_ok=True)
        while key not in _held:
            for slot in range(workers):
                f = open(folder / str(slot), "w")
                try:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:  # held by a live process
                    f.close()
                    continue
                _held[key] = f, slot
                break
            else:
                time.sleep(0.1)  # every slot taken: a worker of an earlier sweep has not exited yet
    return _held[key][1]


def pin_gpu(sweep, workers: int) -> int:
    """Make the GPU of this process's slot its current device, for the rest of the process; its index."""
    import torch

    index = claim_slot(sweep, workers) % gpus()
    torch.cuda.set_device(index)
    return index


SWEEP_PID = "GRADLAB_SWEEP_PID"  # set by `gradlab sweep` for the worker processes of launcher=local
_watching, _orphaned = threading.Event(), threading.Event()


def watch_sweep() -> None:
    """In a worker process of a sweep, or a rank of a data-parallel run (started by torchrun, whose
    ranks live in sessions of their own): once the process that started it is gone (killed),
    interrupt the run in progress (it is recorded as interrupted, its checkpoint kept) and let no
    further run start. Started once per process; nothing outside such a process."""
    parent = os.getppid()
    sweep = os.environ.get(SWEEP_PID)
    if _watching.is_set() or not ("TORCHELASTIC_RUN_ID" in os.environ or sweep and int(sweep) == parent):
        return
    _watching.set()

    def watch():
        while os.getppid() == parent:
            time.sleep(0.5)
        _orphaned.set()
        import _thread

        _thread.interrupt_main()  # a KeyboardInterrupt in the run: recorded as interrupted
        time.sleep(30)
        os._exit(130)  # the run did not end in time

    threading.Thread(target=watch, daemon=True, name="gradlab-watch-sweep").start()


def exit_if_orphaned() -> None:
    """End this worker process if its sweep is gone, so that it starts no run nobody waits for."""
    if _orphaned.is_set():
        os._exit(130)


@contextmanager
def environment(**values: str) -> Iterator[None]:
    """These environment variables set for the block (and in the processes started in it), then
    restored as they were."""
    before = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
