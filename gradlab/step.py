"""One optimizer step, in the order that keeps clipping correct under accumulation and fp16.

    loss / k -> backward (k micro-batches) -> unscale once -> measure -> clip
    -> optimizer step (skipped by the fp16 scaler on inf/nan) -> scaler update -> zero_grad

Everything returned stays on the device: the host reads it at log intervals only.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import NamedTuple

import torch
from torch.nn.parallel import DistributedDataParallel

# columns of StepOutput.scalars, in order
SCALARS = ("loss", "grad_norm", "grad_norm_clipped", "clipped", "scaler_skipped", "smoothness", "spike_skipped")


class StepOutput(NamedTuple):
    scalars: torch.Tensor      # float32 vector, one value per name in SCALARS
    layer_norms: torch.Tensor  # pre-clip p-norm of each parameter's gradient


MISTAKES = ("clip_each_micro_batch", "no_loss_division", "clip_scaled")  # study-only, see train_step


def train_step(model, micro_batches, loss_fn, optimizer, clip, scaler, autocast, norm_type: float,
               mistake: str | None = None, probe=None, spike_guard=None) -> StepOutput:
    """Accumulate gradients over `micro_batches`, clip once, take one optimizer step.

    `mistake` reproduces a classic error for the studies that measure it (None = correct):
    clip_each_micro_batch clips the running sum after every micro-batch; no_loss_division
    skips loss / k (the threshold becomes k times looser); clip_scaled measures and clips
    fp16 gradients before unscaling them. `probe(params)`, if given, sees the unclipped
    gradients and returns a 0-d diagnostic (or None). `spike_guard` (skip_spikes=true) may skip
    the clip and the update of a spiking step.
    """
    total_samples = sum(len(x) for x, _ in micro_batches)
    loss = torch.zeros((), device=micro_batches[0][0].device)
    fired_early = torch.zeros((), dtype=torch.bool, device=loss.device)
    ddp = isinstance(model, DistributedDataParallel)
    for i, (x, y) in enumerate(micro_batches):
        last = i == len(micro_batches) - 1
        with model.no_sync() if ddp and not last else nullcontext():  # DDP: all-reduce on the last only
            with autocast():
                # loss / k, by sample count so that a shorter micro-batch weighs less
                part = loss_fn(model(x), y) * (len(x) / total_samples)
            scaler.scale(part * (len(micro_batches) if mistake == "no_loss_division" else 1)).backward()
        loss += part.detach().float()
        if mistake == "clip_each_micro_batch" and not last:
            params, _, running_norm = _measured(model, norm_type)
            fired_early |= clip(params, running_norm).fired

    if ddp:  # the loss of the whole batch, as the gradient already is
        torch.distributed.all_reduce(loss)
        loss /= torch.distributed.get_world_size()
    if mistake != "clip_scaled":
        scaler.unscale_(optimizer)  # true gradients from here on (no-op unless fp16)
    params, layer_norms, grad_norm = _measured(model, norm_type)
    diagnostic = probe(params) if probe else None
    spike = spike_guard is not None and spike_guard.is_spike(loss, grad_norm)  # a host sync, only when asked
    if spike:
        norm_after, fired = grad_norm, torch.zeros((), dtype=torch.bool, device=loss.device)
    else:
        norm_after, fired = clip(params, grad_norm)
        scaler.step(optimizer)
    # with fp16 the scaler skips the update exactly when some gradient is inf/nan
    skipped = ~torch.isfinite(grad_norm) if scaler.is_enabled() else torch.zeros_like(fired)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    clipped = (fired | fired_early) & torch.isfinite(grad_norm)  # inf/nan steps are skipped or diverged
    nan = torch.full((), float("nan"), device=loss.device)
    scalars = torch.stack([loss, grad_norm.float(), norm_after.float(), clipped.float(), skipped.float(),
                           nan if diagnostic is None else diagnostic.float(),
                           torch.full((), float(spike), device=loss.device)])  # a fill kernel: no copy, no sync
    return StepOutput(scalars, layer_norms)


def _measured(model, norm_type: float):
    """The parameters with gradients, each gradient's p-norm, and their total p-norm."""
    params = [p for p in model.parameters() if p.grad is not None]
    layer_norms = torch.stack(torch._foreach_norm([p.grad for p in params], norm_type))
    return params, layer_norms, torch.linalg.vector_norm(layer_norms, norm_type)
