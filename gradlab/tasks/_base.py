"""What the tasks share: knob checks, the two ways of serving batches, eval chunking, and
moving batches to the device.

`Synthetic` tasks draw fresh samples for every batch; `Stored` tasks hold a finite data set
on the device and walk through it in a continuous stream of random permutations. Every random
draw is made on the CPU, whatever the run's device: a GPU's generator (Philox) draws other
numbers than the CPU's (mt19937) from the same seed, so drawing there would make a seed
another data stream on a GPU. What is drawn moves to the device without blocking the host.
"""

from __future__ import annotations

import torch

from gradlab.errors import bad
from gradlab.tasks import Task

EVAL_BATCH = 1000  # samples per evaluation batch: bounds eval memory, not a knob
# Held-out sets of synthetic tasks come from this seed, far from the small run seeds, so
# that no training stream replays the held-out set (both would be generated alike).
EVAL_SEED = 2_000_000_011


def integer(key: str, value, low: int) -> int:
    """`value` if it is an integer >= low, else a ConfigError naming `key`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise bad(key, value, f"an integer >= {low}")
    return value


def fraction(key: str, value) -> float:
    """`value` if it is a share in [0.01, 0.99] (both parts of a split stay non-trivial)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.01 <= value <= 0.99:
        raise bad(key, value, "a fraction in [0.01, 0.99]")
    return float(value)


def to_device(tensors, device: torch.device) -> tuple:
    """CPU tensors on `device`; to a GPU from pinned memory, a copy the host does not wait for."""
    if device.type != "cuda":
        return tuple(t.to(device) for t in tensors)
    return tuple(t.pin_memory().to(device, non_blocking=True) for t in tensors)


def in_chunks(x: torch.Tensor, y: torch.Tensor) -> list:
    """A held-out set as a list of (x, y) batches of at most EVAL_BATCH samples."""
    return list(zip(x.split(EVAL_BATCH), y.split(EVAL_BATCH)))


class Synthetic(Task):
    """A generated task: subclasses define `sample(n, generator)` on the generator's device.

    Training batches are drawn on the CPU from the run's seed, and the held-out set from
    EVAL_SEED (the same for every run seed), so both are the same on every device.
    """

    def __init__(self, eval_size: int):
        self.eval_size = integer("task.eval_size", eval_size, 1)

    def sample(self, n: int, g: torch.Generator) -> tuple:
        raise NotImplementedError

    def load(self, device) -> None:
        self.device = torch.device(device)
        x, y = self.sample(self.eval_size, torch.Generator().manual_seed(EVAL_SEED))
        self.eval = (x.to(self.device), y.to(self.device))

    def batches(self, n: int, seed: int):
        g = torch.Generator().manual_seed(seed)
        while True:
            yield to_device(self.sample(n, g), self.device)

    def eval_batches(self) -> list:
        return in_chunks(*self.eval)


def permutations(size: int, n: int, seed: int):
    """Endless index batches of n over `size` samples, drawn on the CPU from `seed`: random
    permutations chained, so a batch that crosses an epoch boundary is still full and every
    sample is seen once per epoch."""
    g = torch.Generator().manual_seed(seed)
    order = torch.empty(0, dtype=torch.long)
    while True:
        while len(order) < n:
            order = torch.cat([order, torch.randperm(size, generator=g)])
        idx, order = order[:n], order[n:]
        yield idx


class Stored(Task):
    """A finite data set on the device: subclasses set `train` and `test`, each (x, y), in load()."""

    train: tuple
    test: tuple

    def batches(self, n: int, seed: int):
        x, y = self.train
        for idx in permutations(len(y), n, seed):
            (idx,) = to_device([idx], y.device)
            yield x[idx], y[idx]

    def eval_batches(self) -> list:
        return in_chunks(*self.test)
