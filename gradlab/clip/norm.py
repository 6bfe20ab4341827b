"""`clip=norm`: rescale all gradients together when their total norm exceeds max_norm.

Pascanu, Mikolov & Bengio 2013, "On the difficulty of training recurrent neural
networks", sec. 3.2: if ||g|| > c then g <- c g / ||g||. torch's own
clip_grads_with_norm_ does the scaling (fused foreach path, no host sync).
"""

import torch

from gradlab.clip import ClipResult
from gradlab.errors import positive


class ClipByNorm:
    """Global-norm clipping at `max_norm` (> 0) of the p-norm chosen by `norm_type`."""

    def __init__(self, max_norm: float, norm_type: float):
        self.max_norm = positive("max_norm", max_norm, "must be a number > 0 (clip=none turns clipping off)")

    def __call__(self, params, total_norm: torch.Tensor) -> ClipResult:
        torch.nn.utils.clip_grads_with_norm_(params, self.max_norm, total_norm, foreach=True)
        # the same coefficient torch applied: clamp(max_norm / (norm + 1e-6), max=1)
        coef = torch.clamp(self.max_norm / (total_norm + 1e-6), max=1.0)
        return ClipResult(total_norm * coef, total_norm > self.max_norm)
