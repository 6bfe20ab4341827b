"""Copy (memory) task in the form of Arjovsky, Shah & Bengio 2016 ("Unitary Evolution
Recurrent Neural Networks", sec. 4.1), after Hochreiter & Schmidhuber 1997.

Input: 10 symbols from {1..8}, T-1 blanks (0), the marker 9, then 10 blanks. Target:
T+10 blanks, then the 10 symbols. A model that remembers nothing predicts blanks and
then a uniform guess over the 8 symbols: cross-entropy 10*log(8)/(T+20), the baseline.
"""

from __future__ import annotations

import math

import torch

from gradlab.tasks import TaskSpec
from gradlab.tasks._base import Synthetic, integer

SYMBOLS = 10  # how many symbols are to be copied
MARKER = 9  # the "now repeat them" token; 0 is the blank, 1..8 the symbols


class Copy(Synthetic):
    def __init__(self, length: int = 50, eval_size: int = 1000):
        super().__init__(eval_size)
        self.length = integer("task.length", length, 1)
        total = self.length + 2 * SYMBOLS
        baseline = SYMBOLS * math.log(8) / total
        self.spec = TaskSpec("tokens", (total,), "token_classes", MARKER, vocab=MARKER + 1, baseline=baseline)

    def sample(self, n: int, g: torch.Generator) -> tuple:
        symbols = torch.randint(1, MARKER, (n, SYMBOLS), generator=g, device=g.device)
        x = torch.zeros(n, self.length + 2 * SYMBOLS, dtype=torch.long, device=g.device)
        x[:, :SYMBOLS] = symbols
        x[:, SYMBOLS + self.length - 1] = MARKER
        y = torch.zeros_like(x)
        y[:, -SYMBOLS:] = symbols
        return x, y
