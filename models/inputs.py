"""Turning any task input into what a sequence model reads: (batch, steps, features)."""

import math

import torch
import torch.nn.functional as F


def sequence_shape(spec) -> tuple:
    """(steps, features) of the sequence view of a task's input; images are read row by row."""
    if spec.input == "image":
        c, h, w = spec.shape
        return h, c * w
    if spec.input == "sequence":
        return tuple(spec.shape)
    if spec.input == "tokens":
        return spec.shape[0], spec.vocab
    raise ValueError(spec.input)


def as_sequence(x: torch.Tensor, spec) -> torch.Tensor:
    """Images become rows (B, H, C*W); tokens become one-hot vectors; sequences pass through."""
    if spec.input == "image":
        b, c, h, w = x.shape
        return x.permute(0, 2, 1, 3).reshape(b, h, c * w)
    if spec.input == "tokens":
        return F.one_hot(x, spec.vocab).float()
    return x


def flat_size(spec) -> int:
    """Number of input features once a sample is flattened (tokens one-hot)."""
    return math.prod(spec.shape) * (spec.vocab if spec.input == "tokens" else 1)
