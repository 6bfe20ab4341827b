"""`clip=agc`: unit-wise adaptive gradient clipping, relative to the weights' own norms.

Brock, De, Smith & Simonyan 2021, "High-Performance Large-Scale Image Recognition
Without Normalization" (ICML 2021, NFNets), sec. 4.1: for every unit i of a parameter W
with gradient G, if ||G_i|| / max(||W_i||, eps) > lambda then
G_i <- lambda * max(||W_i||, eps) / ||G_i|| * G_i. Unit norms are Frobenius (L2) norms,
as in the paper, whatever norm_type (which only measures the total norm after).

Units, one rule for every tensor: the slices along its first dimension of size > 1.
- Linear weight (out, in): one unit per output row; conv (out, in, kh, kw): per output
  channel; RNN weight_ih/hh (4h, in): per gate row;
- Transformer: MultiheadAttention in_proj_weight (3d, d): per row of the packed q/k/v
  projections; out_proj, linear1, linear2 as any Linear; Embedding (vocab, d): one unit
  per token's vector; the learned position (1, T, d) skips its leading size-1 dim: one
  unit per position (a d-vector), like the embeddings it is added to;
- 1-D tensors (biases, LayerNorm gains): every element is its own unit; a tensor with a
  single element is one unit. (NFNets' released code, timm and optax take a whole
  vector as one unit instead.)

The final layer is not clipped (agc_exclude_final, as in the paper): the module that
owns the last parameter of model.named_parameters() (gradlab's models register their
output head last: MLP net.<last>, RNN and Transformer head); its own parameters are
matched by identity.

Non-finite gradients: a unit whose gradient norm is inf/nan is left as it is, the other
units are clipped as usual; the fp16 scaler skips such a step, an fp32 run ends as
diverged.
"""

import torch

from gradlab.clip import ClipResult
from gradlab.errors import bad, positive


def units(shape: torch.Size) -> tuple:
    """(number of units, the shape a per-unit factor broadcasts from) of a tensor of `shape`."""
    first = next((i for i, size in enumerate(shape) if size > 1), None)
    if first is None:
        return 1, tuple(shape)
    return shape[first], tuple(shape[:first + 1]) + (1,) * (len(shape) - first - 1)


class AdaptiveGradClip:
    """Clip each unit's gradient to `agc_lambda` times its weight norm (floored at `agc_eps`)."""

    def __init__(self, agc_lambda: float, agc_eps: float, agc_exclude_final: bool, norm_type: float, model=None):
        self.lam = positive("agc_lambda", agc_lambda, "must be a number > 0 (largest gradient/weight norm ratio)")
        self.eps = positive("agc_eps", agc_eps, "must be a number > 0 (floor on a unit's weight norm)")
        if not isinstance(agc_exclude_final, bool):
            raise bad("agc_exclude_final", agc_exclude_final, "must be true or false")
        if agc_exclude_final and model is None:
            raise bad("agc_exclude_final", True, "needs the model to find its final layer (build_clip(..., model))")
        self.norm_type = norm_type
        self.last_fired = torch.zeros(0, dtype=torch.bool)  # per tensor: clipped by the last call (a per-layer mode)
        self.final = ()
        if agc_exclude_final:
            last = [name for name, _ in model.named_parameters()][-1]
            owner = model.get_submodule(last.rpartition(".")[0])
            self.final = tuple(owner.parameters(recurse=False))

    def __call__(self, params, total_norm: torch.Tensor) -> ClipResult:
        params = [p for p in params if p.grad is not None]
        no = torch.zeros((), dtype=torch.bool, device=total_norm.device)
        # per tensor, in the order given: were any of its units clipped (the final layer never is)
        self.last_fired = torch.stack([no if any(p is q for q in self.final) else self._clip_units_(p)
                                       for p in params]) if params else no.reshape(0)
        after = torch.nn.utils.get_total_norm([p.grad for p in params], self.norm_type, foreach=True)
        return ClipResult(after, self.last_fired.any())

    @torch.no_grad()
    def _clip_units_(self, p: torch.Tensor) -> torch.Tensor:
        """Clip the units of p.grad in place; whether any was clipped (0-d bool)."""
        n, shape = units(p.shape)
        weight = torch.linalg.vector_norm(p.detach().reshape(n, -1), dim=1).clamp(min=self.eps)
        grad = torch.linalg.vector_norm(p.grad.reshape(n, -1), dim=1)
        limit = self.lam * weight
        clip = (grad > limit) & torch.isfinite(grad)
        p.grad.mul_(torch.where(clip, limit / grad, 1.0).reshape(shape).to(p.grad.dtype))
        return clip.any()
