"""`clip=norm`: rescale all gradients together when their total norm exceeds max_norm.

Pascanu, Mikolov & Bengio 2013, "On the difficulty of training recurrent neural
networks", sec. 3.2: if ||g|| > c then g <- c g / ||g||. The factor is torch's
(clip_grads_with_norm_): max_norm / (norm + 1e-6), multiplied in with the fused foreach
path and no host sync. `rescale_` is shared with the adaptive modes (autoclip, zclip),
which choose max_norm per step.
"""

import math
from typing import Annotated

import torch

from gradlab.clip import ClipResult, Knob, constant, scale_
from gradlab.errors import positive


def clip_coef(norm: torch.Tensor, max_norm) -> torch.Tensor:
    """torch's factor max_norm / (norm + 1e-6) where norm > max_norm, else exactly 1.

    Elementwise, so `norm` may hold one norm per tensor. Unlike torch, the factor is 1
    (not ~1 - 1e-6) at norm == max_norm, so "fired" and "changed" agree; and a non-finite
    norm is never rescaled (that would only turn inf into nan): the fp16 scaler skips such
    a step, an fp32 run ends as diverged.
    """
    one, inf = constant(1.0, norm.device), constant(math.inf, norm.device)
    return torch.where((norm > max_norm) & (norm < inf), max_norm / (norm + 1e-6), one)


def rescale_(params, total_norm: torch.Tensor, max_norm) -> ClipResult:
    """Global-norm clipping of the gradients of `params` at `max_norm` (a float or a tensor shaped
    like total_norm: 0-d, or (K,) for stacked members)."""
    coef = clip_coef(total_norm, max_norm)
    grads = [p.grad for p in params if p.grad is not None]
    if grads:
        scale_(grads, coef)
    return ClipResult(total_norm * coef, coef < constant(1.0, coef.device))


class ClipByNorm:
    """Global-norm clipping at `max_norm` (> 0) of the p-norm chosen by `norm_type`."""

    def __init__(
        self,
        max_norm: Annotated[float, Knob("threshold on the total norm (p = norm_type); > 0")] = 1.0,
        *,
        norm_type: float,
        model=None,
    ):
        self.max_norm = positive("max_norm", max_norm, "must be a number > 0 (clip=none turns clipping off)")

    def __call__(self, params, total_norm: torch.Tensor) -> ClipResult:
        return rescale_(params, total_norm, self.max_norm)


STRATEGY = ClipByNorm  # clip=norm
