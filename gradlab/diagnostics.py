"""Diagnostics a step can carry: `probe(params)` sees the unclipped gradients before clipping."""

from __future__ import annotations

import torch


class Smoothness:
    """Local smoothness estimate of Zhang et al. 2020 ("Why gradient clipping accelerates training",
    ICLR 2020): L_t ~ ||g_{t+1} - g_t|| / ||theta_{t+1} - theta_t||, measured every `every` steps
    from a pair of consecutive steps (a copy of gradients and parameters is kept in between)."""

    def __init__(self, every: int):
        self.every, self.step, self.previous = every, 0, None

    def __call__(self, params) -> torch.Tensor | None:
        self.step += 1
        grads, weights = [p.grad for p in params], [p.detach() for p in params]
        estimate = None
        if self.previous is not None:
            old_grads, old_weights = self.previous
            change = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(torch._foreach_sub(grads, old_grads))))
            move = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(torch._foreach_sub(weights, old_weights))))
            estimate, self.previous = change / move, None
        if self.step % self.every == 0:
            self.previous = ([g.clone() for g in grads], [w.clone() for w in weights])
        return estimate
