"""One optimizer step, in the order that keeps clipping correct under accumulation and fp16.

    loss / k -> backward (k micro-batches) -> unscale once -> measure -> clip
    -> optimizer step (skipped by the fp16 scaler on inf/nan) -> scaler update -> zero_grad

Everything returned stays on the device: the host reads it at log intervals only.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

# columns of StepOutput.scalars, in order
SCALARS = ("loss", "grad_norm", "grad_norm_clipped", "clipped", "scaler_skipped")


class StepOutput(NamedTuple):
    scalars: torch.Tensor      # float32 vector, one value per name in SCALARS
    layer_norms: torch.Tensor  # pre-clip p-norm of each parameter's gradient


def train_step(model, micro_batches, loss_fn, optimizer, clip, scaler, autocast, norm_type: float) -> StepOutput:
    """Accumulate gradients over `micro_batches`, clip once, take one optimizer step."""
    total_samples = sum(len(x) for x, _ in micro_batches)
    loss = torch.zeros((), device=micro_batches[0][0].device)
    for x, y in micro_batches:
        with autocast():
            # loss / k, by sample count so that a shorter micro-batch weighs less
            part = loss_fn(model(x), y) * (len(x) / total_samples)
        scaler.scale(part).backward()
        loss += part.detach().float()

    scaler.unscale_(optimizer)  # true gradients from here on (no-op unless fp16)
    params = [p for p in model.parameters() if p.grad is not None]
    layer_norms = torch.stack(torch._foreach_norm([p.grad for p in params], norm_type))
    grad_norm = torch.linalg.vector_norm(layer_norms, norm_type)
    norm_after, fired = clip(params, grad_norm)
    # with fp16 the scaler skips the update exactly when some gradient is inf/nan
    skipped = ~torch.isfinite(grad_norm) if scaler.is_enabled() else torch.zeros_like(fired)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    clipped = fired & torch.isfinite(grad_norm)  # a step with inf/nan gradients is skipped or diverged, not clipped
    scalars = torch.stack([loss, grad_norm.float(), norm_after.float(), clipped.float(), skipped.float()])
    return StepOutput(scalars, layer_norms)
