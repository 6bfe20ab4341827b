"""Optimizers (`optim=sgd|adam|adamw|rmsprop`, conf/optim/: any torch.optim class by `_target_`)
and the learning-rate schedule."""

from __future__ import annotations

import math

import torch

from gradlab import components
from gradlab.errors import bad

SCHEDULES = ("constant", "cosine")


def build_optimizer(optim_cfg: dict, params, lr: float, fused: bool = False) -> torch.optim.Optimizer:
    """The optimizer an optim config names by `_target_`; its keys but `name`, `schedule` and
    `warmup_steps` are its arguments. `fused`: torch's one-kernel implementation of the same
    update (rounding may differ), where the class has one."""
    return components.build("optim", optim_cfg, params, lr=lr, **({"fused": True} if fused else {}))


def constant_lr(optim_cfg: dict) -> bool:
    """The lr never changes: no warm-up, constant schedule."""
    return optim_cfg.get("schedule", "constant") == "constant" and not int(optim_cfg.get("warmup_steps", 0))


def lr_factor(optim_cfg: dict, steps: int):
    """Multiplier of the base lr at each optimizer step: linear warm-up, then constant or cosine to 0."""
    schedule, warmup = optim_cfg.get("schedule", "constant"), int(optim_cfg.get("warmup_steps", 0))
    if schedule not in SCHEDULES:
        raise bad("optim.schedule", schedule, f"choose from {', '.join(SCHEDULES)}")
    if not 0 <= warmup < steps:
        raise bad("optim.warmup_steps", warmup, f"must be in [0, steps={steps})")

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * (step - warmup) / (steps - warmup)))
        return 1.0

    return factor
