"""Optimizers (`optim=sgd|adam|adamw|rmsprop`, conf/optim/: any torch.optim class by `_target_`)
and the learning-rate schedule."""

from __future__ import annotations

import math

import torch

from gradlab import components
from gradlab.errors import bad

SCHEDULES = ("constant", "cosine")


def build_optimizer(optim_cfg: dict, params, lr: float) -> torch.optim.Optimizer:
    """The optimizer an optim config names by `_target_`; its keys but `name`, `schedule` and
    `warmup_steps` are its arguments."""
    return components.build("optim", optim_cfg, params, lr=lr)


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


# what a vectorized group's StackedOptimizer does for a member, by the torch class it stands for:
# the class's options it takes (all but lr equal across the group's members; maximize off)
STACKABLE = {
    torch.optim.SGD: ("momentum", "dampening", "nesterov", "weight_decay"),
    torch.optim.Adam: ("betas", "eps", "weight_decay", "amsgrad", "decoupled_weight_decay"),
    torch.optim.AdamW: ("betas", "eps", "weight_decay", "amsgrad"),
    torch.optim.RMSprop: ("alpha", "eps", "weight_decay", "momentum", "centered"),
}


def why_not_stacked(optim_cfg: dict) -> str | None:
    """Why a run's optimizer cannot be a member of a StackedOptimizer, if it cannot."""
    kind = components.locate("optim", optim_cfg)
    if kind not in STACKABLE:
        return f"optim {kind.__name__} (batched: {', '.join(c.__name__ for c in STACKABLE)})"
    knobs = components.knobs("optim", optim_cfg)
    other = sorted(
        set(knobs) - set(STACKABLE[kind]) - {"foreach", "fused", "capturable", "differentiable", "maximize"}
    )
    if other or knobs.get("maximize"):
        return f"optim option {', '.join(other) or 'maximize'} (not batched)"
    return None


class StackedOptimizer:
    """The update of torch's SGD, Adam, AdamW or RMSprop (its single-tensor formulas, in torch's order)
    for K members whose parameters are stacked along a first axis, each member with its own lr;
    the other options are the members' optimizers' own (equal across members). Every operation
    covers all parameters at once (torch._foreach_*). Set `lrs` (the members' current lrs, on the
    host) before each step. Its param_groups and zero_grad are the parts of torch's Optimizer that
    gradlab.step uses."""

    def __init__(self, optimizer: torch.optim.Optimizer, params: list):
        self.kind = type(optimizer).__name__.lower()
        self.options = {k: optimizer.param_groups[0][k] for k in STACKABLE[type(optimizer)]}
        self.params, self.steps, self.state, self.lrs = params, 0, {}, None

    @property
    def param_groups(self) -> list:
        return [{"params": self.params}]

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Zero the gradients in place, whatever `set_to_none`: they live as long as the group's
        parameters (the clip strategies' Slabs are views of them)."""
        torch._foreach_zero_([p.grad for p in self.params])

    @torch.no_grad()
    def step(self) -> None:
        self.steps += 1
        params = [p for p in self.params if p.grad is not None]
        getattr(self, self.kind)(
            params, [p.grad for p in params], self.options, torch.tensor(self.lrs, dtype=torch.float64)
        )

    def _state(self, name: str, params: list, first=torch.zeros_like) -> list:
        if name not in self.state:
            self.state[name] = [first(p) for p in params]
        return self.state[name]

    @staticmethod
    def _per_member(values: torch.Tensor, like: list) -> list:
        """Per-member scalars (in float64, as torch computes them on the host) shaped for each tensor."""
        from gradlab.clip import per_member

        on = values.to(like[0].dtype).to(like[0].device, non_blocking=True)
        return [per_member(on, t) for t in like]

    def sgd(self, params, grads, o, lr) -> None:
        if o["weight_decay"]:
            grads = torch._foreach_add(grads, params, alpha=o["weight_decay"])
        if o["momentum"]:
            fresh = "momentum_buffer" not in self.state
            bufs = self._state("momentum_buffer", grads, torch.clone)
            if not fresh:
                torch._foreach_mul_(bufs, o["momentum"])
                torch._foreach_add_(bufs, grads, alpha=1 - o["dampening"])
            grads = torch._foreach_add(grads, bufs, alpha=o["momentum"]) if o["nesterov"] else bufs
        torch._foreach_addcmul_(params, grads, self._per_member(lr, params), value=-1)

    def adam(self, params, grads, o, lr, decoupled=None) -> None:
        decoupled = o.get("decoupled_weight_decay") if decoupled is None else decoupled
        (beta1, beta2), wd, t = o["betas"], o["weight_decay"], self.steps
        exp_avg, exp_avg_sq = self._state("exp_avg", params), self._state("exp_avg_sq", params)
        if wd and decoupled:
            torch._foreach_mul_(params, self._per_member(1 - lr * wd, params))
        elif wd:
            grads = torch._foreach_add(grads, params, alpha=wd)
        torch._foreach_lerp_(exp_avg, grads, 1 - beta1)
        torch._foreach_mul_(exp_avg_sq, beta2)
        torch._foreach_addcmul_(exp_avg_sq, grads, grads, value=1 - beta2)
        second = exp_avg_sq
        if o["amsgrad"]:
            second = self._state("max_exp_avg_sq", params)
            torch._foreach_maximum_(second, exp_avg_sq)
        denom = torch._foreach_sqrt(second)
        torch._foreach_div_(denom, math.sqrt(1 - beta2**t))
        torch._foreach_add_(denom, o["eps"])
        update = torch._foreach_mul(
            exp_avg, self._per_member(-lr / (1 - beta1**t), params)
        )  # addcdiv's order
        torch._foreach_div_(update, denom)
        torch._foreach_add_(params, update)

    def adamw(self, params, grads, o, lr) -> None:
        self.adam(params, grads, o, lr, decoupled=True)

    def rmsprop(self, params, grads, o, lr) -> None:
        alpha, square_avg = o["alpha"], self._state("square_avg", params)
        if o["weight_decay"]:
            grads = torch._foreach_add(grads, params, alpha=o["weight_decay"])
        torch._foreach_mul_(square_avg, alpha)
        torch._foreach_addcmul_(square_avg, grads, grads, value=1 - alpha)
        if o["centered"]:
            grad_avg = self._state("grad_avg", params)
            torch._foreach_lerp_(grad_avg, grads, 1 - alpha)
            avg = torch._foreach_addcmul(square_avg, grad_avg, grad_avg, value=-1)
            torch._foreach_sqrt_(avg)
        else:
            avg = torch._foreach_sqrt(square_avg)
        torch._foreach_add_(avg, o["eps"])
        if o["momentum"] > 0:
            buf = self._state("momentum_buffer", params)
            torch._foreach_mul_(buf, o["momentum"])
            torch._foreach_addcdiv_(buf, grads, avg)
            torch._foreach_addcmul_(params, buf, self._per_member(lr, params), value=-1)
        else:
            update = torch._foreach_mul(grads, self._per_member(-lr, params))
            torch._foreach_div_(update, avg)
            torch._foreach_add_(params, update)

    def select(self, keep: torch.Tensor, params: list) -> None:
        """Keep the members `keep` (indices): `params` are the kept stacked parameters."""
        self.params = params
        self.state = {name: [v[keep] for v in values] for name, values in self.state.items()}
