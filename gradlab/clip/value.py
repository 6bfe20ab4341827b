"""`clip=value`: clamp every gradient element to [-clip_value, clip_value].

The elementwise rule of Mikolov's RNNLM (gradient_cutoff) and Graves 2013; torch's
clip_grad_value_ does the clamping (fused foreach path).
"""

import torch

from gradlab.clip import ClipResult
from gradlab.errors import positive


class ClipByValue:
    """Elementwise clipping at `clip_value` (> 0); the norm after it is measured again."""

    def __init__(self, clip_value: float, norm_type: float, model=None):
        self.clip_value = positive("clip_value", clip_value, "must be a number > 0 (clip=none turns clipping off)")
        self.norm_type = norm_type

    def __call__(self, params, total_norm: torch.Tensor) -> ClipResult:
        grads = [p.grad for p in params]
        largest = torch.stack(torch._foreach_norm(grads, float("inf"))).max()
        torch.nn.utils.clip_grad_value_(params, self.clip_value, foreach=True)
        after = torch.nn.utils.get_total_norm(grads, self.norm_type, foreach=True)
        return ClipResult(after, largest > self.clip_value)
