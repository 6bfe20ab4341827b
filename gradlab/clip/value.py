"""`clip=value`: clamp every gradient element to [-clip_value, clip_value].

The elementwise rule of Mikolov's RNNLM (gradient_cutoff) and Graves 2013; torch's
clip_grad_value_ does the clamping (fused foreach path).
"""

from typing import Annotated

import torch

from gradlab.clip import ClipResult, Knob, per_member, tensor_norms, total_norm_of
from gradlab.errors import positive


class ClipByValue:
    """Elementwise clipping at `clip_value` (> 0); the norm after it is measured again."""

    def __init__(
        self,
        clip_value: Annotated[
            float, Knob("every gradient element is clamped to [-clip_value, clip_value]; > 0")
        ] = 0.5,
        *,
        norm_type: float,
        model=None,
    ):
        self.clip_value = positive(
            "clip_value", clip_value, "must be a number > 0 (clip=none turns clipping off)"
        )
        self.norm_type = norm_type

    def __call__(self, params, total_norm: torch.Tensor) -> ClipResult:
        grads, stacked = [p.grad for p in params], total_norm.dim() > 0
        largest = tensor_norms(grads, float("inf"), stacked).amax(-1)
        if stacked:
            for g in grads:
                limit = per_member(self.clip_value, g)
                g.clamp_(-limit, limit)
        else:
            torch.nn.utils.clip_grad_value_(params, self.clip_value, foreach=True)
        return ClipResult(total_norm_of(grads, self.norm_type, stacked), largest > self.clip_value)


STRATEGY = ClipByValue  # clip=value
