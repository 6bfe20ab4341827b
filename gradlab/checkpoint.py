"""Checkpoints of a run in progress (`checkpoint_every=N`): what it takes to continue it exactly.

Every N steps, once that step's figures are read, the loop's state is written atomically to the
sweep's working folder (`.gradlab/<run id>.ckpt`, records.checkpoint_file): the model, optimizer,
fp16 scaler, clip state (the adaptive modes' histories and averages), spike window and
smoothness probe, the random states, the data stream's position (steps taken: the stream is
drawn again to there), and the history and per-layer rows so far. A run that starts with a
checkpoint of its own configuration there continues from it, re-logs the rows so far to W&B in
the intervals they were logged in, and ends with the record an uninterrupted run would have
written (but for its timings). The file goes once the run has ended other than interrupted.

A run trained alone (engine Single) checkpoints, on one process or as the ranks of a data-parallel
run (rank 0 writes, every rank reads); vectorized.why_alone keeps checkpointed runs out of groups.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from gradlab import records
from gradlab.config import identity, run_id, sweep_dir


def file(conf: dict) -> Path:
    return records.checkpoint_file(sweep_dir(conf) / run_id(conf))


def save(conf: dict, state: dict) -> None:
    records.atomic_write(file(conf), lambda p: torch.save({"config_hash": identity(conf), **state}, p))


def load(conf: dict, quiet: bool = False) -> dict | None:
    """The state of this run's last checkpoint, or None: none there, or one that cannot be read or
    belongs to another configuration (said in one line unless `quiet`, and the run starts over)."""
    path = file(conf)
    if not conf["checkpoint_every"] or not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if state.get("config_hash") != identity(conf):
            raise ValueError("it belongs to another configuration")
    except Exception as e:  # a torn or foreign file: the run starts over, overwriting it
        if quiet:
            return None
        print(
            f"warning: checkpoint {path} not used ({type(e).__name__}: {e}); the run starts over",
            file=sys.stderr,
            flush=True,
        )
        return None
    return state


def remove(conf: dict) -> None:
    file(conf).unlink(missing_ok=True)


def due(conf: dict, step: int) -> bool:
    return bool(conf["checkpoint_every"]) and step % conf["checkpoint_every"] == 0
