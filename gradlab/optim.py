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


class RMSprop(torch.optim.RMSprop):
    """torch.optim.RMSprop with the running mean of squared gradients started at `square_avg_init`
    rather than 0. The uRNN baselines (amarshah/complex_RNN, optimizations.py `rms_prop`) start it
    at 1e-3; from 0 the first update is lr * sqrt(1 / (1 - alpha)) * sign(g) on every coordinate,
    whatever the gradient's size."""

    def __init__(self, params, lr: float = 1e-2, square_avg_init: float = 0.0, **options):
        super().__init__(params, lr=lr, **options)
        self.defaults["square_avg_init"] = square_avg_init  # as an option of every param group
        scalar = torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32
        for group in self.param_groups:  # the state torch makes at a first step, this start in it
            start = group.setdefault("square_avg_init", square_avg_init)
            if isinstance(start, bool) or not isinstance(start, (int, float)) or start < 0:
                raise bad("optim.square_avg_init", start, "must be a number >= 0 (0: torch's RMSprop)")
            for p in group["params"]:
                keep = {"memory_format": torch.preserve_format}
                self.state[p] = {
                    "step": torch.zeros((), dtype=scalar, device=p.device if group["capturable"] else None),
                    "square_avg": torch.full_like(p, float(start), **keep),
                    **({"momentum_buffer": torch.zeros_like(p, **keep)} if group["momentum"] > 0 else {}),
                    **({"grad_avg": torch.zeros_like(p, **keep)} if group["centered"] else {}),
                }


# torch optimizers whose update is elementwise given the lr (every state tensor has its parameter's
# shape, or is one number all elements share): stepping K members' parameters stacked along a first
# axis steps each member as its own optimizer would
STACKABLE = (
    torch.optim.SGD,
    torch.optim.Adam,
    torch.optim.AdamW,
    torch.optim.RMSprop,
    torch.optim.Adagrad,
    torch.optim.Adamax,
    torch.optim.NAdam,
    torch.optim.RAdam,
)


def why_not_stacked(optim_cfg: dict) -> str | None:
    """Why a run's optimizer cannot be a member of a StackedOptimizer, if it cannot."""
    kind = components.locate("optim", optim_cfg)
    if not issubclass(kind, STACKABLE):
        return f"optim {kind.__name__} (batched: {', '.join(c.__name__ for c in STACKABLE)})"
    return None


class StackedOptimizer:
    """K members' parameters, stacked along a first axis, stepped by torch's own optimizer (the
    members' class and options, equal across them): its update is elementwise (STACKABLE), so each
    member is stepped as its own optimizer would step it. Members with one lr share one of its param
    groups (a slice of the stack, `slices`): a sweep of clip thresholds is one group, a sweep of K lrs
    K groups. Set `lrs` (the members' current lrs) before each step; members of one slice share a
    schedule, so their lrs stay equal. Its param_groups (the whole stacks) and zero_grad are the parts
    of torch's Optimizer that gradlab.step uses."""

    def __init__(self, optimizer: torch.optim.Optimizer, params: list, lrs: list):
        self.kind, self.options = type(optimizer), {**optimizer.defaults}
        self.lrs = lrs
        self._build(params, lrs, None)

    def _build(self, params: list, base_lrs: list, state: list | None) -> None:
        """torch's optimizer over `params`, one param group per slice of members with one base lr;
        `state`: per parameter, the whole stack's state to start from."""
        self.params, self.base_lrs = params, base_lrs
        self.slices = _equal_slices(base_lrs)
        groups = []
        for a, b in self.slices:
            views = [p.detach()[a:b] for p in params]
            for view, p in zip(views, params):
                view.grad = p.grad[a:b]  # the stack's gradient: what backward and the clip modes fill in
            groups.append({**self.options, "params": views, "lr": base_lrs[a]})  # the members' options
        self.inner = self.kind(groups)
        for group, (a, b) in zip(self.inner.param_groups, self.slices):
            for view, whole in zip(group["params"], state or []):
                if whole:
                    self.inner.state[view] = {
                        k: v[a:b] if _member_axis(v) else _copy(v) for k, v in whole.items()
                    }

    @property
    def param_groups(self) -> list:
        return [{"params": self.params}]

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Zero the gradients in place, whatever `set_to_none`: they live as long as the group's
        parameters (the optimizer's slices and the clip strategies' Slabs are views of them)."""
        torch._foreach_zero_([p.grad for p in self.params])

    def step(self) -> None:
        for group, (a, _) in zip(self.inner.param_groups, self.slices):
            group["lr"] = self.lrs[a]
        self.inner.step()

    def _state(self) -> list:
        """Per parameter, the whole stack's state: per-member tensors joined along the member
        axis, numbers all members share (`step`) once."""
        joined = []
        for i in range(len(self.params)):
            per_slice = [self.inner.state.get(group["params"][i], {}) for group in self.inner.param_groups]
            joined.append(
                {
                    k: torch.cat([s[k] for s in per_slice]) if _member_axis(v) else v
                    for k, v in per_slice[0].items()
                }
            )
        return joined

    def select(self, keep: torch.Tensor, params: list) -> None:
        """Keep the members `keep` (indices): `params` are the kept stacked parameters."""
        state = [{k: v[keep] if _member_axis(v) else v for k, v in s.items()} for s in self._state()]
        self._build(params, [self.base_lrs[i] for i in keep.tolist()], state)


def _equal_slices(values: list) -> list:
    """(start, stop) of each run of equal neighbours in `values`."""
    stops = [i for i in range(1, len(values)) if values[i] != values[i - 1]] + [len(values)]
    return list(zip([0, *stops[:-1]], stops))


def _member_axis(value) -> bool:
    """A state entry of the stack with a value per member (a tensor of its parameter's shape), not
    one all members share (a step count)."""
    return isinstance(value, torch.Tensor) and value.dim() > 0


def _copy(value):
    return value.clone() if isinstance(value, torch.Tensor) else value
