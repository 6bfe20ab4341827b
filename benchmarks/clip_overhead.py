"""Per-step cost of each clip mode relative to clip=norm (a timing, so a benchmark, not a test).

    python benchmarks/clip_overhead.py [--model lstm] [--steps 200] [--repeats 5]

Runs gradlab's own training step on the main job's model and data, with the modes in
turn (interleaved, so that machine noise hits all of them alike), and prints the median
time per step of each and its ratio to clip=norm.
"""

import argparse
import statistics
import time
from functools import partial

import torch

from gradlab.clip import REGISTRY, build_clip
from gradlab.config import plain
from gradlab.launch import compose_all
from gradlab.objective import loss_fn
from gradlab.step import train_step
from gradlab.train import build


def timer(model_name: str, mode: str, steps: int):
    """A function that times `steps` training steps of a fresh run under `mode`."""
    conf = plain(compose_all([[f"model={model_name}", f"clip={mode}", "wandb=off"]])[0])
    run = build(conf)
    run.task.load(run.device)
    batches = run.task.batches(conf["batch_size"], seed=0)
    clip = build_clip(conf["clip"], 2.0, run.model)
    scaler = torch.amp.GradScaler(run.device.type, enabled=False)
    autocast = partial(torch.autocast, run.device.type, enabled=False)
    objective = loss_fn(run.task.spec)

    def timed() -> float:
        data = [next(batches) for _ in range(steps)]
        start = time.perf_counter()
        for x, y in data:
            out = train_step(run.model, [(x, y)], objective, run.optimizer, clip, scaler, autocast, 2.0)
        out.scalars.cpu()  # wait for the device
        return (time.perf_counter() - start) / steps

    return timed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="lstm")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    timers = {mode: timer(args.model, mode, args.steps) for mode in REGISTRY}
    for t in timers.values():
        t()  # warm-up
    times = {mode: [] for mode in timers}
    for _ in range(args.repeats):
        for mode, t in timers.items():
            times[mode].append(t())
    norm = statistics.median(times["norm"])
    print(f"model={args.model}, {args.steps} steps x {args.repeats} repeats, median ms/step (ratio to clip=norm):")
    for mode, values in times.items():
        median = statistics.median(values)
        print(f"  {mode:<16} {median * 1e3:8.3f} ms  {median / norm:5.2f}x")


if __name__ == "__main__":
    main()
