"""`clip=none`: leave the gradients as they are (the norm is still measured by the step)."""

import torch

from gradlab.clip import ClipResult


class NoClip:
    """The unclipped baseline."""

    def __init__(self, norm_type: float):
        pass

    def __call__(self, params, total_norm: torch.Tensor) -> ClipResult:
        return ClipResult(total_norm, torch.zeros((), dtype=torch.bool, device=total_norm.device))
