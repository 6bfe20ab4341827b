"""`task=dataset`: any two map-style torch Datasets, one to train on and one held out.

    task:
      _target_: gradlab.tasks.dataset.DatasetTask
      train: {_target_: mypkg.data.make, split: train}   # a Dataset class or factory, its arguments beside it
      eval: {_target_: mypkg.data.make, split: test}
      loss: cross_entropy
      classes: 10

A sample is a pair (x, y) of tensors (or numbers). What the model is told (TaskSpec) is read
from the first held-out sample: a float x of 1, 2 or 3 dims is a vector, a sequence (T, F) or
an image (C, H, W); an integer x of 1 dim with `vocab` > 0 is a sequence of token ids. With
cross_entropy, y is a class index (or one per position, for a 1-dim y); with mse, y holds
float targets. Training batches are drawn without replacement in a stream of permutations
seeded by the run's seed, as the built-in stored tasks do; the held-out set is evaluated whole,
in its own order, the same for every run.
"""

from __future__ import annotations

import functools

import torch
from torch.utils.data import default_collate

from gradlab import components
from gradlab.errors import bad
from gradlab.tasks import Task, TaskSpec
from gradlab.tasks._base import EVAL_BATCH, integer, permutations, to_device

LOSSES = ("cross_entropy", "mse")


class DatasetTask(Task):
    def __init__(
        self, train: dict, eval: dict, loss: str = "cross_entropy", classes: int | None = None, vocab: int = 0
    ):
        self.configs = {"train": train, "eval": eval}
        for which, cfg in self.configs.items():
            components.check(f"task.{which}", cfg)
        if loss not in LOSSES:
            raise bad("task.loss", loss, f"choose from {', '.join(LOSSES)}")
        if loss == "cross_entropy":
            integer("task.classes", classes, 2)
        self.loss, self.classes, self.vocab = loss, classes, integer("task.vocab", vocab, 0)
        self.built = {}  # which -> its Dataset, once built

    def first_sample(self) -> tuple:
        """The first held-out sample as tensors (x, y); one that cannot be read or made into tensors
        is a ConfigError naming the dataset."""
        try:
            x, y = (torch.as_tensor(v) for v in self.dataset("eval")[0])
        except Exception as e:
            message = f"{type(e).__name__}: {e}".splitlines()[0]
            raise bad(
                "task.eval",
                self.configs["eval"]["_target_"],
                f"its first sample is not a pair (x, y) of tensors or numbers ({message})",
            ) from e
        return x, y

    @functools.cached_property
    def spec(self) -> TaskSpec:
        for which in ("train", "eval"):
            if len(self.dataset(which)) == 0:
                raise bad(
                    f"task.{which}", self.configs[which]["_target_"], "is empty: a dataset needs samples"
                )
        x, y = self.first_sample()
        if not x.is_floating_point() and not (x.dim() == 1 and self.vocab):
            raise bad(
                "task.vocab",
                self.vocab,
                f"integer inputs of shape {tuple(x.shape)}: give the vocabulary "
                "size of a 1-dim sequence of token ids, or make x a float tensor",
            )
        kind = (
            "tokens" if not x.is_floating_point() else {1: "vector", 2: "sequence", 3: "image"}.get(x.dim())
        )
        if kind is None:
            raise bad(
                "task.eval",
                self.configs["eval"]["_target_"],
                f"samples of shape {tuple(x.shape)}: "
                "x must have 1 (features), 2 (steps, features) or 3 (channels, height, width) dims",
            )
        if self.loss == "mse":
            return TaskSpec(kind, tuple(x.shape), "regression", max(1, y.numel()), self.vocab)
        per_position = y.dim() == 1
        return TaskSpec(
            kind, tuple(x.shape), "token_classes" if per_position else "classes", self.classes, self.vocab
        )

    def dataset(self, which: str):
        """The training or held-out Dataset, built from its config (once)."""
        if which not in self.built:
            self.built[which] = components.build(f"task.{which}", self.configs[which])
        return self.built[which]

    def load(self, device) -> None:
        self.device = torch.device(device)
        held_out = self.dataset("eval")
        chunks = [range(i, min(i + EVAL_BATCH, len(held_out))) for i in range(0, len(held_out), EVAL_BATCH)]
        try:
            self.eval = [self._batch(held_out, list(chunk)) for chunk in chunks]
        except Exception as e:  # the user's dataset, before any run: one line naming it
            message = f"{type(e).__name__}: {e}".splitlines()[0]
            raise bad("task.eval", self.configs["eval"]["_target_"], f"could not be read ({message})") from e

    def _batch(self, dataset, indices: list) -> tuple:
        x, y = default_collate([tuple(dataset[i]) for i in indices])
        x, y = torch.as_tensor(x), torch.as_tensor(y)
        if self.loss == "mse":
            y = y.float().reshape(len(indices), -1)
        return to_device((x, y), self.device)

    def batches(self, n: int, seed: int):
        train = self.dataset("train")
        for idx in permutations(len(train), n, seed):
            yield self._batch(train, idx.tolist())

    def eval_batches(self) -> list:
        return self.eval
