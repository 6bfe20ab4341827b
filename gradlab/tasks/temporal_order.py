"""Temporal order problem of Pascanu, Mikolov & Bengio 2013 ("On the difficulty of
training recurrent neural networks", sec. 4.1), after Hochreiter & Schmidhuber 1997.

A sequence of T tokens is all distractors (2..5) except two relevant positions, one in
[0.1T, 0.2T) and one in [0.5T, 0.6T), each holding A (0) or B (1). The class is the
ordered pair: AA=0, AB=1, BA=2, BB=3. Guessing scores cross-entropy log(4). The paper
feeds one-hot vectors of 6 channels; here the same 6 symbols arrive as tokens. Its
success criterion is under 1% error on 10,000 fresh sequences (task.eval_size=10000).
"""

from __future__ import annotations

import math

import torch

from gradlab.tasks import TaskSpec
from gradlab.tasks._base import Synthetic, integer


class TemporalOrder(Synthetic):
    def __init__(self, length: int = 50, eval_size: int = 1000):
        super().__init__(eval_size)
        # T >= 10 keeps both windows at least one position wide.
        self.length = integer("task.length", length, 10)
        self.spec = TaskSpec("tokens", (self.length,), "classes", 4, vocab=6, baseline=math.log(4))

    def sample(self, n: int, g: torch.Generator) -> tuple:
        T, dev = self.length, g.device
        x = torch.randint(2, 6, (n, T), generator=g, device=dev)
        first = torch.randint(T // 10, T // 5, (n, 1), generator=g, device=dev)
        second = torch.randint(T // 2, 3 * T // 5, (n, 1), generator=g, device=dev)
        a, b = torch.randint(0, 2, (2, n, 1), generator=g, device=dev)
        x.scatter_(1, first, a).scatter_(1, second, b)
        return x, (2 * a + b).squeeze(1)
