"""A data set gradlab does not ship: points on interleaved spirals, labelled by their arm."""

import math

import torch
from torch.utils.data import Dataset


class Spirals(Dataset):
    """`n` points in the plane on `arms` spiral arms, with Gaussian noise; the label is the arm.
    Made from `seed`, so the training and held-out sets differ only by their seeds."""

    def __init__(self, n: int = 1000, arms: int = 3, noise: float = 0.2, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.y = torch.randint(0, arms, (n,), generator=g)
        r = torch.rand(n, generator=g) * 3
        angle = r * 2.5 + self.y * (2 * math.pi / arms)
        self.x = torch.stack([r * torch.cos(angle), r * torch.sin(angle)], 1) + noise * torch.randn(
            n, 2, generator=g
        )

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], self.y[i]
