"""Training tasks: each one a small class behind a registry keyed by `task.name`.

A task knows its per-sample input/output shapes statically (`spec`), makes its data
available before any run starts (`prepare`, which may download), and once built
serves an endless stream of training batches and a fixed held-out evaluation set,
both already on the run's device.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Optional

from gradlab.registry import construct

# task.name -> "module:Class" (imported lazily: some tasks pull in torchvision or sklearn)
REGISTRY = {
    "adding": "gradlab.tasks.adding:Adding",
    "copy": "gradlab.tasks.copy:Copy",
    "temporal_order": "gradlab.tasks.temporal_order:TemporalOrder",
    "digits": "gradlab.tasks.digits:Digits",
    "text": "gradlab.tasks.text:Text",
    "mnist": "gradlab.tasks.vision:MNIST",
    "fashion_mnist": "gradlab.tasks.vision:FashionMNIST",
    "cifar10": "gradlab.tasks.vision:CIFAR10",
    "regression": "gradlab.tasks.regression:Regression",
}


@dataclass(frozen=True)
class TaskSpec:
    """What a model needs to know to consume a task.

    input:  "vector" (features,) float | "image" (C, H, W) float |
            "sequence" (T, F) float | "tokens" (T,) int64 in [0, vocab)
    output: "regression" (one value per sample, MSE) | "classes" (one label per
            sample, cross-entropy) | "token_classes" (one label per position)
    """

    input: str
    shape: tuple
    output: str
    n_out: int
    vocab: int = 0
    baseline: Optional[float] = None  # loss of the best input-blind predictor, when known



class Task:
    """Base class. Subclasses take their knobs from the task config as keyword arguments."""

    spec: TaskSpec

    def prepare(self) -> None:
        """Make the data available (e.g. download); raise ConfigError naming what is missing."""

    def load(self, device) -> None:
        """Load or generate the data onto `device`; called once before training."""
        raise NotImplementedError

    def batches(self, n: int, seed: int) -> Iterator[tuple]:
        """Endless stream of training batches of exactly n samples, in an order fixed by seed."""
        raise NotImplementedError

    def eval_batches(self) -> list:
        """The fixed held-out set as a list of (x, y) batches on the device."""
        raise NotImplementedError


def build_task(task_cfg: dict) -> Task:
    """Instantiate the task named by task_cfg["name"] with the remaining keys as knobs."""
    knobs = {k: v for k, v in task_cfg.items() if k not in ("name", "steps", "batch_size")}
    return construct("task", REGISTRY, task_cfg["name"], knobs)
