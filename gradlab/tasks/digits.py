"""Handwritten digits (8x8, 1797 samples) from scikit-learn's load_digits: ships with
scikit-learn, so it works offline; a quick image task for CPU-sized runs."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

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
    """load_digits(return_X_y=True): the file scikit-learn ships (64 grey levels and the label per
    row), read without importing scikit-learn, which would add a second to every run's start."""
    import numpy as np

    spec = importlib.util.find_spec("sklearn")  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "task=digits reads its data from scikit-learn's package: pip install scikit-learn"
        )
    data = np.loadtxt(
        Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz", delimiter=","
    )
    return data[:, :-1], data[:, -1].astype(int)
