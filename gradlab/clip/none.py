"""`clip=none`: leave the gradients as they are (the norm is still measured by the step)."""

import torch

from gradlab.clip import ClipResult, unchanged


class NoClip:
    """The unclipped baseline."""

    def __init__(self, *, norm_type: float, model=None):
        pass

    def __call__(self, params, total_norm: torch.Tensor) -> ClipResult:
        return unchanged(total_norm)


STRATEGY = NoClip  # clip=none
