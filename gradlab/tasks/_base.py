"""What the tasks share: knob checks, the two ways of serving batches, eval chunking.

`Synthetic` tasks draw fresh samples on the device for every batch; `Stored` tasks hold
a finite data set on the device and walk through it in a continuous stream of random
permutations.
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


def in_chunks(x: torch.Tensor, y: torch.Tensor) -> list:
    """A held-out set as a list of (x, y) batches of at most EVAL_BATCH samples."""
    return list(zip(x.split(EVAL_BATCH), y.split(EVAL_BATCH)))


class Synthetic(Task):
    """A generated task: subclasses define `sample(n, generator)` on the generator's device.

    The held-out set is generated on the CPU from EVAL_SEED, so it is the same for every
    run seed and every device.
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
        g = torch.Generator(self.device).manual_seed(seed)
        while True:
            yield self.sample(n, g)

    def eval_batches(self) -> list:
        return in_chunks(*self.eval)


def permutations(size: int, n: int, g: torch.Generator):
    """Endless index batches of n over `size` samples, on the generator's device: random
    permutations chained, so a batch that crosses an epoch boundary is still full and every
    sample is seen once per epoch."""
    order = torch.empty(0, dtype=torch.long, device=g.device)
    while True:
        while len(order) < n:
            order = torch.cat([order, torch.randperm(size, generator=g, device=g.device)])
        idx, order = order[:n], order[n:]
        yield idx


class Stored(Task):
    """A finite data set on the device: subclasses set `train` and `test`, each (x, y), in load()."""

    train: tuple
    test: tuple

    def batches(self, n: int, seed: int):
        x, y = self.train
        for idx in permutations(len(y), n, torch.Generator(y.device).manual_seed(seed)):
            yield x[idx], y[idx]

    def eval_batches(self) -> list:
        return in_chunks(*self.test)
