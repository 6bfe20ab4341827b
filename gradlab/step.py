"""One optimizer step, in the order that keeps clipping correct under accumulation and fp16.

    loss / k -> backward (k micro-batches) -> unscale once -> measure -> clip
    -> optimizer step (skipped by the fp16 scaler on inf/nan) -> scaler update -> zero_grad

Everything returned stays on the device: the host reads it at log intervals only.
"""

from __future__ import annotations

import functools
import math
from contextlib import nullcontext
from typing import NamedTuple

import torch
from torch.nn.parallel import DistributedDataParallel

# columns of StepOutput.scalars, in order; `read` turns a row of them into what the history records
SCALARS = ("loss", "grad_norm", "grad_norm_clipped", "fired", "smoothness", "smoothness_grad_norm", "spike_skipped")
RECORDED = ("loss", "grad_norm", "grad_norm_clipped", "clipped", "scaler_skipped", "smoothness", "smoothness_grad_norm",
            "spike_skipped")


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
    gradients and returns a 2-vector diagnostic (or None). `spike_guard` (skip_spikes=true) may skip
    the clip and the update of a spiking step.
    """
    total_samples = sum(len(x) for x, _ in micro_batches)
    loss, fired_early = None, False
    ddp = isinstance(model, DistributedDataParallel)
    for i, (x, y) in enumerate(micro_batches):
        last = i == len(micro_batches) - 1
        with model.no_sync() if ddp and not last else nullcontext():  # DDP: all-reduce on the last only
            with autocast():
                part = loss_fn(model(x), y)
                if len(x) != total_samples:  # loss / k, by sample count: a shorter micro-batch weighs less
                    part = part * (len(x) / total_samples)
            scaler.scale(part * len(micro_batches) if mistake == "no_loss_division" else part).backward()
        loss = part.detach().float() if loss is None else loss + part.detach().float()
        if mistake == "clip_each_micro_batch" and not last:
            params, _, running_norm = _measured(optimizer, norm_type)
            fired_early = clip(params, running_norm).fired | fired_early

    if ddp:  # the loss of the whole batch, as the gradient already is
        torch.distributed.all_reduce(loss)
        loss /= torch.distributed.get_world_size()
    return finish_step(loss, optimizer, clip, scaler, norm_type, mistake, probe, spike_guard, fired_early)


def finish_step(loss, optimizer, clip, scaler, norm_type: float, mistake: str | None = None, probe=None,
                spike_guard=None, fired_early=False) -> StepOutput:
    """The step after the gradients of `loss` (the step's, detached) are in: unscale, measure,
    clip, update. Also what each member of a vectorized group does after the group's backward."""
    if mistake != "clip_scaled":
        scaler.unscale_(optimizer)  # true gradients from here on (no-op unless fp16)
    params, layer_norms, grad_norm = _measured(optimizer, norm_type)
    diagnostic = probe(params) if probe else None
    spike = spike_guard is not None and spike_guard.is_spike(loss, grad_norm)  # a host sync, only when asked
    if spike:
        norm_after, fired = grad_norm, fired_early
    else:
        norm_after, fired = clip(params, grad_norm)
        fired = fired | fired_early if mistake == "clip_each_micro_batch" else fired
        scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    device = loss.device
    scalars = torch.cat([torch.stack([loss, grad_norm.float(), norm_after.float(),
                                      fired.float() if isinstance(fired, torch.Tensor) else _constant(float(fired), device)]),
                         _constant((math.nan, math.nan), device) if diagnostic is None else diagnostic.float(),
                         _constant((float(spike),), device)])
    return StepOutput(scalars, layer_norms)


def read(values: list, fp16: bool) -> dict:
    """One step's row of StepOutput.scalars, read on the host, as the history records it (RECORDED).

    Two flags follow from the gradient norm, so the step leaves them to the host: a step whose
    norm is inf/nan is never `clipped` (it is skipped or diverges), and with fp16 the scaler
    skips exactly those steps (`scaler_skipped`)."""
    row = dict(zip(SCALARS, values))
    finite = math.isfinite(row["grad_norm"])
    row["clipped"] = float(row.pop("fired") > 0 and finite)
    row["scaler_skipped"] = float(fp16 and not finite)
    return row


@functools.lru_cache(maxsize=None)
def _constant(value, device: torch.device) -> torch.Tensor:
    """A float32 tensor of `value` (a number: 0-d; a tuple: 1-d) on the device, made once (a new one
    each step would be one more kernel)."""
    return torch.tensor(value, device=device)


def _measured(optimizer, norm_type: float):
    """The parameters with gradients, each gradient's p-norm, and their total p-norm."""
    params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    layer_norms = torch.stack(torch._foreach_norm([p.grad for p in params], norm_type))
    return params, layer_norms, torch.linalg.vector_norm(layer_norms, norm_type)
