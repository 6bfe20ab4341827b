"""Random regression, the worked example of the source tutorials (004): an MLP fitted to
random standard-normal inputs and targets. The targets carry no signal, so the expected
MSE of any predictor on fresh data is Var(target) = 1, the baseline; the loss can only
fall below it by memorising the few fixed samples."""

from __future__ import annotations

import torch

from gradlab.tasks import TaskSpec
from gradlab.tasks._base import Stored, integer


class Regression(Stored):
    def __init__(self, n_samples: int = 64, features: int = 10, data_seed: int = 0):
        self.n_samples = integer("task.n_samples", n_samples, 1)
        self.features = integer("task.features", features, 1)
        self.data_seed = integer("task.data_seed", data_seed, 0)
        self.spec = TaskSpec("vector", (self.features,), "regression", 1, baseline=1.0)

    def load(self, device) -> None:
        g = torch.Generator().manual_seed(self.data_seed)
        x = torch.randn(self.n_samples, self.features, generator=g)
        y = torch.randn(self.n_samples, 1, generator=g)
        # Evaluated on the training samples themselves: with random targets a held-out set
        # would only measure noise (always about 1); the training loss is what example 004 prints.
        self.train = self.test = (x.to(device), y.to(device))
