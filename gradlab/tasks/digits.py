"""Handwritten digits (8x8, 1797 samples): the test set of the UCI "Optical Recognition of
Handwritten Digits" data (Alpaydin & Kaynak 1998, CC BY 4.0; https://doi.org/10.24432/C50P49), the
copy scikit-learn's load_digits serves, shipped with gradlab (gradlab/data/digits.csv.gz, 57 KB) so
that it works offline; a quick image task for CPU-sized runs."""

from __future__ import annotations

import math
from importlib import resources

import torch

from gradlab.tasks import TaskSpec
from gradlab.tasks._base import Stored, fraction

SPLIT_SEED = 0  # the train/test split is fixed, the same for every run seed


class Digits(Stored):
    spec = TaskSpec("image", (1, 8, 8), "classes", 10, baseline=math.log(10))

    def __init__(self, test_fraction: float = 0.2):
        self.test_fraction = fraction("task.test_fraction", test_fraction)

    def load(self, device) -> None:
        pixels, labels = read()
        x = (
            torch.tensor(pixels, dtype=torch.float32, device=device).view(-1, 1, 8, 8) / 16
        )  # grey levels 0..16
        y = torch.tensor(labels, dtype=torch.long, device=device)
        order = torch.randperm(len(y), generator=torch.Generator().manual_seed(SPLIT_SEED)).to(device)
        n_test = round(self.test_fraction * len(y))
        test, train = order[:n_test], order[n_test:]
        self.train, self.test = (x[train], y[train]), (x[test], y[test])


def read() -> tuple:
    """The 64 grey levels (0..16) and the label of each sample, as load_digits(return_X_y=True)."""
    import numpy as np

    with resources.as_file(resources.files("gradlab") / "data" / "digits.csv.gz") as path:
        data = np.loadtxt(path, delimiter=",")
    return data[:, :-1], data[:, -1].astype(int)
