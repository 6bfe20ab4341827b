"""A model gradlab does not ship: an MLP with residual blocks."""

import math

from torch import nn


class ResidualMLP(nn.Module):
    """Float inputs (vectors, or images read flat) to one output vector per sample: a linear
    stem, `depth` pre-norm residual blocks of `width` units, a linear head. `spec` is the
    task's TaskSpec, which gradlab passes to a model class that takes one: the input size and
    the number of outputs come from it, so the class serves several tasks."""

    def __init__(self, spec, width: int = 64, depth: int = 2):
        super().__init__()
        self.stem = nn.Linear(math.prod(spec.shape), width)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(width), nn.Linear(width, width), nn.GELU()) for _ in range(depth)
        )
        self.head = nn.Linear(width, spec.n_out)

    def forward(self, x):
        h = self.stem(x.flatten(1))
        for block in self.blocks:
            h = h + block(h)
        return self.head(h)
