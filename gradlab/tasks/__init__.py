"""Training tasks: each one a small class, named by `_target_` in conf/task/<name>.yaml.

A task knows its per-sample input/output shapes statically (`spec`), makes its data
available before any run starts (`prepare`, which may download), and once built
serves an endless stream of training batches and a fixed held-out evaluation set,
both already on the run's device.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass

from gradlab import components
from gradlab.errors import ConfigError


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
    baseline: float | None = None  # loss of the best input-blind predictor, when known


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
    """The task a config names by `_target_`, with its knobs. Its class is imported only when
    chosen: some pull in torchvision."""
    task = components.build("task", task_cfg)
    if not isinstance(getattr(task, "spec", None), TaskSpec):
        raise ConfigError(
            f"task._target_={task_cfg['_target_']}: a task needs a `spec` (a gradlab.tasks.TaskSpec); "
            "see Task's docstring"
        )
    return task


_LOADED: OrderedDict = OrderedDict()  # (task config, device) -> a loaded task, the most recent last
KEPT = 4  # loaded tasks a process keeps for the runs after


def loaded(task_cfg: dict, device) -> Task:
    """The task of a config with its data prepared and loaded on `device`. The runs of a sweep made
    in one process share it (each takes its own stream from `batches`), so its data sets and
    held-out set are made once; the last KEPT distinct tasks are kept."""
    key = (json.dumps(task_cfg, sort_keys=True, default=str), str(device))
    if key not in _LOADED:
        task = build_task(task_cfg)
        task.prepare()
        task.load(device)
        _LOADED[key] = task
        while len(_LOADED) > KEPT:
            _LOADED.popitem(last=False)
    _LOADED.move_to_end(key)
    return _LOADED[key]
