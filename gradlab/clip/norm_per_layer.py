"""`clip=norm_per_layer`: clip each parameter tensor's gradient norm separately at max_norm.

Per-tensor norm clipping: clip=norm's rescaling applied to every tensor on its own (Pascanu
et al. 2013, sec. 3.2, and their code clip the total norm, which is clip=norm):
if ||g_l|| > max_norm then g_l <- max_norm g_l / ||g_l||, with the p-norm of norm_type
and torch's factor (see gradlab.clip.norm.clip_coef). A layer with an exploding gradient
is tamed without shrinking the others, at the price of changing the overall direction.

`last_fired` (bool device tensor) says, after each call, which tensors were clipped: one
entry per parameter passed that has a gradient, in the order given. The step passes
exactly those, in model.parameters() order, so it lines up with the per-layer norms the
step records (StepOutput.layer_norms), for per-layer clip fractions.

Non-finite gradients: a tensor whose norm is inf/nan is left as it is, the others are
clipped as usual; the fp16 scaler skips such a step, an fp32 run ends as diverged.
"""

from typing import Annotated

import torch

from gradlab.clip import ClipResult, Knob, per_member, scale_, tensor_norms, total_norm_of, unchanged
from gradlab.clip.norm import clip_coef
from gradlab.errors import positive


class ClipNormPerLayer:
    """Per-tensor norm clipping at `max_norm` (> 0); see the module docstring for `last_fired`."""

    def __init__(
        self,
        max_norm: Annotated[
            float, Knob("threshold on each tensor's gradient norm (p = norm_type); > 0")
        ] = 1.0,
        *,
        norm_type: float,
        model=None,
    ):
        self.max_norm = positive("max_norm", max_norm, "must be a number > 0 (clip=none turns clipping off)")
        self.norm_type = norm_type
        self.last_fired = torch.zeros(0, dtype=torch.bool)

    def __call__(self, params, total_norm: torch.Tensor) -> ClipResult:
        grads, stacked = [p.grad for p in params if p.grad is not None], total_norm.dim() > 0
        if not grads:
            self.last_fired = torch.zeros((*total_norm.shape, 0), dtype=torch.bool, device=total_norm.device)
            return unchanged(total_norm)
        norms = tensor_norms(grads, self.norm_type, stacked)
        coefs = clip_coef(norms, per_member(self.max_norm, norms))
        scale_(grads, coefs.unbind(-1))
        self.last_fired = coefs < 1
        return ClipResult(total_norm_of(grads, self.norm_type, stacked), self.last_fired.any(-1))


STRATEGY = ClipNormPerLayer  # clip=norm_per_layer
