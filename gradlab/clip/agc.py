"""`clip=agc`: unit-wise adaptive gradient clipping, relative to the weights' own norms.

Brock, De, Smith & Simonyan 2021, "High-Performance Large-Scale Image Recognition
Without Normalization" (ICML 2021, NFNets), sec. 4.1: for every unit i of a parameter W
with gradient G, if ||G_i|| / max(||W_i||, eps) > lambda then
G_i <- lambda * max(||W_i||, eps) / ||G_i|| * G_i. Unit norms are Frobenius (L2) norms,
as in the paper, whatever norm_type (which only measures the total norm after).

Units (agc_units):
- `nfnets` (default), the rule of the authors' code (deepmind-research nfnets/optim.py,
  `unitwise_norm`; timm/utils/agc.py is the same): a scalar or a vector (bias, LayerNorm
  gain) is one unit; a tensor of 2 or more dims has one unit per slice along its first
  dim: a Linear weight (out, in) per output row, a conv (out, in, kh, kw) per output
  channel, an RNN weight_ih/hh (4h, in) per gate row, MultiheadAttention's packed
  in_proj_weight (3d, d) per row, an Embedding (vocab, d) per token's vector. The
  Transformer's learned position (1, T, d) has a first dim of 1: it is one unit.
- `first_nonsingleton`: a unit is a slice along the first dim of size > 1, so every
  element of a vector is its own unit (a zero-initialised bias element is then capped at
  lambda * eps and gains are in effect value-clipped), and the position (1, T, d) has one
  unit per position.

The final layer is not clipped (agc_exclude_final, as in the paper): the module that
owns the last parameter of model.named_parameters() (gradlab's models register their
output head last: MLP net.<last>, RNN and Transformer head); its own parameters are
matched by identity.

The step: the unit norms of weights and gradients (one reduction per tensor, since each
tensor's units have their own width and no foreach kernel reduces along a dim), then
the factors of every unit at once, and one foreach multiply; nothing is read back to the
host. Non-finite gradients: a unit whose gradient norm is inf/nan is left as it is, the
other units are clipped as usual; the fp16 scaler skips such a step, an fp32 run ends as
diverged.
"""

from typing import Annotated

import torch

from gradlab.clip import ClipResult, Knob, per_member, scale_, total_norm_of, unchanged
from gradlab.errors import bad, positive

UNITS = ("nfnets", "first_nonsingleton")


def units(shape: torch.Size, rule: str = "nfnets") -> tuple:
    """(number of units, the shape a per-unit factor broadcasts from) of a tensor of `shape`."""
    if rule == "nfnets":
        first = 0 if len(shape) > 1 else None
    else:
        first = next((i for i, size in enumerate(shape) if size > 1), None)
    if first is None:
        return 1, (1,) * len(shape)
    return shape[first], tuple(shape[: first + 1]) + (1,) * (len(shape) - first - 1)


class AdaptiveGradClip:
    """Clip each unit's gradient to `agc_lambda` times its weight norm (floored at `agc_eps`)."""

    def __init__(
        self,
        agc_lambda: Annotated[
            float, Knob("largest allowed ||G_i|| / max(||W_i||, agc_eps) per unit (see agc_units); > 0")
        ] = 0.01,
        agc_units: Annotated[
            str,
            Knob(
                "nfnets: a scalar/vector is one unit, else one per slice of the first dim (the authors' "
                "code) | first_nonsingleton: one per slice of the first dim of size > 1, so one per "
                "element of a vector",
                stacked=False,
            ),
        ] = "nfnets",
        agc_eps: Annotated[
            float, Knob("floor on a unit's weight norm, so zero-initialised weights still move; > 0")
        ] = 0.001,
        agc_exclude_final: Annotated[
            bool,
            Knob("leave the final (output) layer unclipped, as the paper does: true | false", stacked=False),
        ] = True,
        *,
        norm_type: float,
        model=None,
    ):
        self.agc_lambda = positive(
            "agc_lambda", agc_lambda, "must be a number > 0 (largest gradient/weight norm ratio)"
        )
        self.agc_eps = positive("agc_eps", agc_eps, "must be a number > 0 (floor on a unit's weight norm)")
        if not isinstance(agc_exclude_final, bool):
            raise bad("agc_exclude_final", agc_exclude_final, "must be true or false")
        if agc_exclude_final and model is None:
            raise bad(
                "agc_exclude_final", True, "needs the model to find its final layer (build_clip(..., model))"
            )
        if agc_units not in UNITS:
            raise bad("agc_units", agc_units, f"choose from {', '.join(UNITS)}")
        self.rule, self.norm_type = agc_units, norm_type
        self.last_fired = torch.zeros(
            0, dtype=torch.bool
        )  # per tensor: clipped by the last call (a per-layer mode)
        self.final, self.final_names = (), ()  # the final layer's parameters (a Slab goes by name)
        if agc_exclude_final:
            last = [name for name, _ in model.named_parameters()][-1]
            prefix = last.rpartition(".")[0]
            owned = list(model.get_submodule(prefix).named_parameters(recurse=False))
            self.final = tuple(p for _, p in owned)
            self.final_names = tuple(f"{prefix}.{n}" if prefix else n for n, _ in owned)
        self._key = self._value = None  # the layout of the last parameter list (see _layout)

    @torch.no_grad()
    def __call__(self, params, total_norm: torch.Tensor) -> ClipResult:
        params = [p for p in params if p.grad is not None]
        if not params:
            self.last_fired = torch.zeros(0, dtype=torch.bool, device=total_norm.device)
            return unchanged(total_norm)
        counts, shapes, free, owner = self._layout(params, total_norm.device)
        grads, members = [p.grad for p in params], total_norm.shape  # (K,) for stacked members, else ()
        grad = unit_norms(grads, counts, members)
        weight = unit_norms([p.detach() for p in params], counts, members)
        limit = per_member(self.agc_lambda, weight) * weight.clamp(min=per_member(self.agc_eps, weight))
        clip = (grad > limit) & torch.isfinite(grad) & free
        factor = torch.where(clip, limit / grad, 1.0)
        scale_(grads, [f.reshape((*members, *s)) for f, s in zip(factor.split(counts, dim=-1), shapes)])
        # per tensor, in the order given: were any of its units clipped
        fired = torch.zeros((*members, len(params)), device=grad.device).index_add_(-1, owner, clip.float())
        self.last_fired = fired > 0
        return ClipResult(total_norm_of(grads, self.norm_type, bool(members)), clip.any(-1))

    def _layout(self, params, device) -> tuple:
        """Per tensor: its number of units and their factor's shape; per unit: may it be
        clipped (not in the final layer), and the index of its tensor. Worked out on the
        host once, and again only if the parameters change."""
        key = (tuple(map(id, params)), tuple(p.shape for p in params), device)
        if self._key != key:
            counts, shapes = zip(*(units(p.shape, self.rule) for p in params))
            free = [
                not (any(p is q for q in self.final) or getattr(p, "name", None) in self.final_names)
                for p in params
            ]

            def per_unit(values) -> torch.Tensor:  # one value per parameter -> one per unit
                return torch.tensor([v for v, n in zip(values, counts) for _ in range(n)], device=device)

            self._key, self._value = key, (list(counts), shapes, per_unit(free), per_unit(range(len(params))))
        return self._value


def unit_norms(tensors, counts, members: tuple = ()) -> torch.Tensor:
    """The L2 norm of every unit of every tensor (tensor i has counts[i] units, its rows), in one vector;
    for stacked members (`members` = (K,), the tensors' first axis), one such vector per member."""
    return torch.cat(
        [torch.linalg.vector_norm(t.reshape(*members, n, -1), dim=-1) for t, n in zip(tensors, counts)],
        dim=-1,
    )


STRATEGY = AdaptiveGradClip  # clip=agc
