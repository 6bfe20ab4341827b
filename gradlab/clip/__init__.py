"""Clipping strategies: one small class per `clip=` mode, behind a registry.

Every strategy is called once per optimizer step, after the gradients are complete
(all micro-batches, unscaled), with the pre-clip measurement the step already made:

    strategy(params, total_norm) -> ClipResult

`params` are the parameters that have gradients, `total_norm` their total p-norm
(p = norm_type) as a 0-d device tensor. The strategy clips the gradients in place and
returns, as device tensors (no host sync), the total norm after clipping and whether
it fired. `none` clips nothing but is measured all the same.

Strategies are built with their knobs and two context values: `norm_type`, and the
`model` (AGC finds the final layer in it; the others ignore it). Adaptive strategies
(autoclip, zclip) keep their state in tensors behind state_dict() / load_state_dict()
(see TensorState), so a run can be saved and resumed and an engine can carry the
state of each member.

Adding a strategy: one module here, one conf/clip/<mode>.yaml, its tests, and one
line in REGISTRY.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from gradlab.registry import construct

REGISTRY = {
    "none": "gradlab.clip.none:NoClip",
    "value": "gradlab.clip.value:ClipByValue",
    "norm": "gradlab.clip.norm:ClipByNorm",
    "norm_per_layer": "gradlab.clip.norm_per_layer:ClipNormPerLayer",
    "autoclip": "gradlab.clip.autoclip:AutoClip",
    "agc": "gradlab.clip.agc:AdaptiveGradClip",
    "zclip": "gradlab.clip.zclip:ZClip",
}


class ClipResult(NamedTuple):
    norm_after: torch.Tensor  # total norm of the gradients after clipping (0-d)
    fired: torch.Tensor       # bool 0-d: did clipping change any gradient


def unchanged(total_norm: torch.Tensor) -> ClipResult:
    """The result of a call that left every gradient as it was."""
    return ClipResult(total_norm, torch.zeros((), dtype=torch.bool, device=total_norm.device))


class TensorState:
    """State held as named tensors in `self.state`, created at construction (on the CPU)
    and moved to the gradients' device by `on(device)` on each call (a no-op once there).

    state_dict() returns copies of those tensors; load_state_dict() takes such a dict
    (same keys; same shapes, except the keys in `resizable`) and continues from it.
    """

    state: dict
    resizable: tuple = ()

    def on(self, device: torch.device) -> dict:
        self.state = {k: v.to(device) for k, v in self.state.items()}
        return self.state

    def state_dict(self) -> dict:
        return {k: v.clone() for k, v in self.state.items()}

    def load_state_dict(self, state: dict) -> None:
        name = type(self).__name__
        if set(state) != set(self.state):
            raise ValueError(f"{name} state needs the keys {sorted(self.state)}, got {sorted(state)}")
        for k, v in self.state.items():
            if k not in self.resizable and tuple(state[k].shape) != tuple(v.shape):
                raise ValueError(f"{name} state[{k!r}] has shape {tuple(state[k].shape)}, expected {tuple(v.shape)}")
        self.state = {k: state[k].detach().to(v.dtype).clone() for k, v in self.state.items()}


def build_clip(clip_cfg: dict, norm_type: float, model: torch.nn.Module | None = None):
    """Instantiate the strategy named by clip_cfg["mode"]; the other keys are its knobs.

    `model` is the network being trained (modes that need it, agc, fail without it).
    """
    knobs = {k: v for k, v in clip_cfg.items() if k != "mode"}
    return construct("clip", REGISTRY, clip_cfg["mode"], knobs, norm_type=norm_type, model=model)
