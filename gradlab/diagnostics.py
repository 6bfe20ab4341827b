"""Diagnostics a step can carry: `probe(params)` sees the unclipped gradients before clipping."""

from __future__ import annotations

import torch


class Smoothness:
    """Local smoothness along the trajectory, as Zhang et al. 2020 estimate it ("Why gradient
    clipping accelerates training", ICLR 2020; code JingzhaoZhang/why-clipping-accelerates,
    main.py eval_smooth with num_pts=1): with theta the parameters before a step and theta+
    after it, and theta' = (theta + theta+) / 2, both gradients on the same fixed data S:

        L = ||grad f_S(theta') - grad f_S(theta)|| / ||theta' - theta||,  paired with ||grad f_S(theta)||.

    S is the task's evaluation set (their code: a fixed tenth of the training data). The
    estimate of a step taken at step t (t a multiple of `every`) is made at step t + 1, once
    theta+ is known, and recorded there as (smoothness, smoothness_grad_norm). The gradients on S
    come from torch.autograd.grad, so the step's own gradients are untouched, and the random
    state is restored after, so a run with estimates is the run without them.
    """

    def __init__(self, every: int, model: torch.nn.Module, objective, data: list, autocast):
        self.every, self.model, self.objective, self.data, self.autocast = (
            every,
            model,
            objective,
            data,
            autocast,
        )
        self.samples = sum(len(x) for x, _ in data)
        self.step, self.before = 0, None

    def __call__(self, params) -> torch.Tensor | None:
        """(L, ||grad f_S(theta)||) as a 2-vector on the step after a measured one, else None."""
        self.step += 1
        estimate = None
        if self.before is not None:
            estimate, self.before = self._estimate(params, self.before), None
        if self.step % self.every == 0:
            self.before = [p.detach().clone() for p in params]
        return estimate

    def state_dict(self) -> dict:
        return {"step": self.step, "before": self.before or []}

    def load_state_dict(self, state: dict) -> None:
        self.step, self.before = state["step"], state["before"] or None

    def _estimate(self, params, before: list) -> torch.Tensor:
        after = [p.detach().clone() for p in params]
        middle = torch._foreach_lerp(before, after, 0.5)
        g0, g1 = self._gradient(params, before), self._gradient(params, middle)
        with torch.no_grad():
            torch._foreach_copy_([p.detach() for p in params], after)
        change = _norm(torch._foreach_sub(g1, g0))
        move = _norm(torch._foreach_sub(middle, before))
        return torch.stack([change / move, _norm(g0)])

    def _gradient(self, params, weights: list) -> list:
        """The gradient of the mean loss on S at `weights` (loaded into params); the random state kept."""
        with torch.no_grad():
            torch._foreach_copy_([p.detach() for p in params], weights)
        devices = [params[0].device] if params[0].device.type == "cuda" else []
        total = [torch.zeros_like(w) for w in weights]
        with torch.random.fork_rng(devices=devices):
            for x, y in self.data:
                with self.autocast():
                    loss = self.objective(self.model(x), y) * (len(x) / self.samples)
                grads = torch.autograd.grad(loss, params, allow_unused=True)
                torch._foreach_add_(
                    total, [torch.zeros_like(w) if g is None else g for g, w in zip(grads, weights)]
                )
        return total


def _norm(tensors: list) -> torch.Tensor:
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(tensors)))
