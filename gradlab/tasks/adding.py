"""Adding problem in the form of Arjovsky, Shah & Bengio 2016 ("Unitary Evolution
Recurrent Neural Networks", sec. 4.2), after Hochreiter & Schmidhuber 1997.

Each step carries two numbers: a value drawn from U[0, 1] and a marker. Exactly two
steps are marked, one in the first half and one in the second; the target is the sum of
their values. Always predicting 1 scores MSE Var(U1 + U2) = 1/6, the baseline to beat.
"""

from __future__ import annotations

import torch

from gradlab.tasks import TaskSpec
from gradlab.tasks._base import Synthetic, integer


class Adding(Synthetic):
    def __init__(self, length: int = 50, eval_size: int = 1000):
        super().__init__(eval_size)
        self.length = integer("task.length", length, 2)  # both halves need a position
        self.spec = TaskSpec("sequence", (self.length, 2), "regression", 1, baseline=1 / 6)

    def sample(self, n: int, g: torch.Generator) -> tuple:
        half, dev = self.length // 2, g.device
        values = torch.rand(n, self.length, generator=g, device=dev)
        first = torch.randint(0, half, (n, 1), generator=g, device=dev)
        second = torch.randint(half, self.length, (n, 1), generator=g, device=dev)
        markers = torch.zeros_like(values).scatter_(1, first, 1.0).scatter_(1, second, 1.0)
        return torch.stack([values, markers], dim=2), (values * markers).sum(1, keepdim=True)
