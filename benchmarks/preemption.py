"""A sweep killed with SIGKILL at random moments, and run again after each kill, against the
same sweep run once without a kill: every record must be equal (history and per-layer rows,
summary), but for timings. The runs checkpoint (checkpoint_every), so each kill costs at most
the steps since a run's last checkpoint.

    python benchmarks/preemption.py --kills 10 [--seed 0] [--steps 300] [--seeds 0,1,2] [--folder DIR]

Prints one line per kill (when, which runs had finished, the steps each checkpoint held) and
the verdict; exits 1 if a record differs. tests/test_checkpoint.py runs it with two kills.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

# an adaptive clip mode (its norm history is state) under gradient accumulation (+ steps=N, seed=...);
# a small LSTM: what is compared is the records across kills, not the model
SWEEP = [
    "model=lstm",
    "model.hidden_size=32",
    "task=adding",
    "clip=autoclip",
    "accum_steps=2",
    "checkpoint_every=10",
    "log_every=5",
    "layer_norms_every=30",
    "wandb=off",
    "progress=none",
]
TIMINGS = ("time_s", "steps_per_s", "samples_per_s")  # history columns of the machine, not the run
# summary keys of the machine or the attempt (verify: the history file's checksum, timings included)
NOT_COMPARED = (
    "wall_time_s",
    "steps_per_s",
    "started",
    "finished",
    "resumed_from_step",
    "wandb",
    "sweep",
    "verify",
)


def sweep(folder: Path, name: str, steps: int, seeds: str) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gradlab",
            "sweep",
            *SWEEP,
            f"steps={steps}",
            f"seed={seeds}",
            f"results_root={folder}",
            f"name={name}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def figures(run_dir: Path) -> tuple:
    """A record's figures: history and per-layer rows without timings, summary without them."""
    history = pd.read_csv(run_dir / "history.csv").drop(columns=list(TIMINGS))
    layers = pd.read_csv(run_dir / "layer_norms.csv")
    summary = json.loads((run_dir / "summary.json").read_text())
    return history, layers, {k: v for k, v in summary.items() if k not in NOT_COMPARED}


def differences(killed: Path, clean: Path) -> list[str]:
    """What differs between two sweeps' records, run by run (empty: equal)."""
    found = []
    runs = sorted(p.parent.name for p in clean.glob("*/summary.json"))
    if runs != sorted(p.parent.name for p in killed.glob("*/summary.json")):
        return [f"different runs: {runs} and {sorted(p.parent.name for p in killed.glob('*/summary.json'))}"]
    for run in runs:
        (h1, l1, s1), (h2, l2, s2) = figures(killed / run), figures(clean / run)
        if not (h1.equals(h2) and l1.equals(l2) and s1 == s2):
            found.append(f"{run}: its figures differ")
    return found


def training(proc: subprocess.Popen, folder: Path) -> float:
    """Wait until the sweep trains (it has started a run's attempt: past imports and set-up; not
    the attempt a kill left behind) or has ended; the time it was seen."""
    started = time.time()
    while proc.poll() is None and not any(
        p.stat().st_mtime >= started for p in folder.glob(".gradlab/*.partial/config.yaml")
    ):
        time.sleep(0.02)
    return time.perf_counter()


def main(kills: int, seed: int, folder: Path, steps: int = 300, seeds: str = "0,1,2") -> int:
    rng = random.Random(seed)
    clean = sweep(folder, "clean", steps, seeds)
    start = training(clean, folder / "clean")
    _, err = clean.communicate()
    if clean.returncode:
        print(f"the uninterrupted sweep failed: {err.strip()}")
        return 1
    length = time.perf_counter() - start
    print(f"uninterrupted sweep: {length:.1f} s of training")
    work = folder / "killed" / ".gradlab"
    kill = 0
    while kill < kills:  # each attempt is killed at a random moment of its training
        proc = sweep(folder, "killed", steps, seeds)
        at = rng.uniform(0, 0.15 * length)
        try:
            proc.wait(timeout=at + training(proc, folder / "killed") - time.perf_counter())
            print(f"the sweep ended before {at:.1f} s of training: {kill} kills")
            break
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        kill += 1
        done = len(list((folder / "killed").glob("*/summary.json")))
        held = [torch.load(p, weights_only=True)["step"] for p in sorted(work.glob("*.ckpt"))]
        print(
            f"kill {kill} after {at:.1f} s of training: {done} run(s) recorded, checkpoints at steps {held}",
            flush=True,
        )
    last = sweep(folder, "killed", steps, seeds)
    _, err = last.communicate()
    if last.returncode:
        print(f"the resumed sweep failed: {err.strip()}")
        return 1
    found = differences(folder / "killed", folder / "clean")
    runs = len(list((folder / "clean").glob("*/summary.json")))
    print(
        "\n".join(found) or f"equal: all {runs} records of the killed sweep equal the uninterrupted sweep's"
    )
    return 1 if found else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=300, help="steps of each of the sweep's runs")
    parser.add_argument("--seeds", default="0,1,2", help="the sweep's run seeds")
    parser.add_argument("--folder", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        sys.exit(main(args.kills, args.seed, args.folder or Path(tmp), args.steps, args.seeds))
