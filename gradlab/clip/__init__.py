"""Clipping strategies: one small class per `clip=` mode, behind a registry.

Every strategy is called once per optimizer step, after the gradients are complete
(all micro-batches, unscaled), with the pre-clip measurement the step already made:

    strategy(params, total_norm) -> ClipResult

`params` are the parameters that have gradients, `total_norm` their total p-norm
(p = norm_type) as a 0-d device tensor. The strategy clips the gradients in place and
returns, as device tensors (no host sync), the total norm after clipping and whether
it fired. `none` clips nothing but is measured all the same.

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
}


class ClipResult(NamedTuple):
    norm_after: torch.Tensor  # total norm of the gradients after clipping (0-d)
    fired: torch.Tensor       # bool 0-d: did clipping change any gradient


def build_clip(clip_cfg: dict, norm_type: float):
    """Instantiate the strategy named by clip_cfg["mode"]; the other keys are its knobs."""
    knobs = {k: v for k, v in clip_cfg.items() if k != "mode"}
    return construct("clip", REGISTRY, clip_cfg["mode"], knobs, norm_type=norm_type)
