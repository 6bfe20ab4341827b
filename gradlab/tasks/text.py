"""Byte-level next-token prediction on a local text corpus, the setting of character
language models (Mikolov's RNNLM, char-rnn) where clipping has long been standard.

The corpus is a file, or a folder read recursively (files in sorted path order), cut at
max_bytes; by default it is the Python standard library's own top-level *.py sources,
which every installation carries. Its last eval_fraction is held out.
"""

from __future__ import annotations

import sysconfig
from pathlib import Path

import torch

from gradlab.errors import bad
from gradlab.tasks import Task, TaskSpec
from gradlab.tasks._base import fraction, in_chunks, integer, to_device


def windows(data: torch.Tensor, starts: torch.Tensor, seq_len: int) -> tuple:
    """Inputs data[i:i+seq_len] and their next bytes data[i+1:i+seq_len+1] for each start i."""
    w = data[starts[:, None] + torch.arange(seq_len + 1, device=data.device)]
    return w[:, :-1], w[:, 1:]


class Text(Task):
    def __init__(
        self,
        path: str | None = None,
        max_bytes: int | None = 2_000_000,
        seq_len: int = 64,
        eval_fraction: float = 0.1,
        eval_size: int = 500,
    ):
        if path is not None and not (isinstance(path, str) and path):
            raise bad("task.path", path, "a file or folder path, or null for the Python standard library")
        self.path = path
        self.max_bytes = None if max_bytes is None else integer("task.max_bytes", max_bytes, 1)
        self.seq_len = integer("task.seq_len", seq_len, 1)
        self.eval_fraction = fraction("task.eval_fraction", eval_fraction)
        self.eval_size = integer("task.eval_size", eval_size, 1)
        # No baseline: the best input-blind predictor (the corpus's byte frequencies)
        # is only known once the corpus is read.
        self.spec = TaskSpec("tokens", (self.seq_len,), "token_classes", 256, vocab=256)

    def _files(self) -> list:
        if self.path is None:
            return sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))
        root = Path(self.path).expanduser()
        if root.is_dir():
            return sorted(p for p in root.rglob("*") if p.is_file())
        if root.is_file():
            return [root]
        raise bad("task.path", self.path, "no such file or folder")

    def _corpus(self) -> tuple:
        """The (training, held-out) bytes, checked to hold a window each."""
        data = bytearray()
        for file in self._files():
            if self.max_bytes is not None and len(data) >= self.max_bytes:
                break
            data += file.read_bytes()
        data = data[: self.max_bytes]
        split = int(len(data) * (1 - self.eval_fraction))
        if min(split, len(data) - split) <= self.seq_len:
            where = self.path or sysconfig.get_paths()["stdlib"]
            raise bad(
                "task.path",
                where,
                f"holds {len(data)} bytes (max_bytes={self.max_bytes}), too few for a "
                f"window of {self.seq_len + 1} bytes in both parts (eval_fraction={self.eval_fraction})",
            )
        return data[:split], data[split:]

    def prepare(self) -> None:
        self._corpus()  # reads it once to fail early when it is missing or too short

    def load(self, device) -> None:
        parts = (torch.frombuffer(part, dtype=torch.uint8) for part in self._corpus())
        self.data, held_out = (part.to(device, torch.long) for part in parts)
        # Evenly spaced windows over the held-out tail: a fixed set, whatever the run seed.
        last = len(held_out) - self.seq_len - 1
        starts = torch.arange(self.eval_size, device=device) * last // max(self.eval_size - 1, 1)
        self.eval = windows(held_out, starts, self.seq_len)

    def batches(self, n: int, seed: int):
        g = torch.Generator().manual_seed(seed)  # on the CPU: the same windows on every device
        while True:
            (starts,) = to_device(
                [torch.randint(0, len(self.data) - self.seq_len, (n,), generator=g)], self.data.device
            )
            yield windows(self.data, starts, self.seq_len)

    def eval_batches(self) -> list:
        return in_chunks(*self.eval)
