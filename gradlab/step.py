"""One optimizer step, in the order that keeps clipping correct under accumulation and fp16.

    loss / k -> backward (k micro-batches) -> unscale once -> measure -> clip
    -> optimizer step (skipped by the fp16 scaler on inf/nan) -> scaler update -> zero_grad

Everything returned stays on the device: the host reads it at log intervals only.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import nullcontext
from typing import NamedTuple

import torch
from torch.nn.parallel import DistributedDataParallel

from gradlab.clip import constant, measure
from gradlab.spikes import SpikeGuard


class StepOutput(NamedTuple):
    figures: dict  # the step's device figures by name (gradlab.figures, on="device"): float32 tensors
    layer_norms: torch.Tensor  # pre-clip p-norm of each parameter's gradient


class StepParts(NamedTuple):
    """What a step is made of, besides the model and its batches."""

    loss_fn: Callable  # (output, target) -> mean loss of the batch
    optimizer: torch.optim.Optimizer
    clip: Callable  # a clip strategy (gradlab.clip): (params, total_norm) -> ClipResult
    scaler: torch.amp.GradScaler  # fp16 loss scaling; disabled otherwise
    autocast: Callable  # () -> the precision context of the forward pass
    norm_type: float  # p of the measured norms
    probe: Callable | None = None  # (params) -> 2-vector diagnostic of the unclipped gradients
    spike_guard: SpikeGuard | None = None  # skip_spikes=true
    stacked: bool = False  # K members along a first axis: inputs (K, batch, ...), losses and figures (K,)


def train_step(model, micro_batches, parts: StepParts) -> StepOutput:
    """Accumulate gradients over `micro_batches`, clip once, take one optimizer step.

    The probe, if any, sees the unclipped gradients; the spike guard may skip the clip and
    the update of a spiking step. `stacked` parts: `model` is K models as one (inputs and
    outputs with a first, member axis), `loss_fn` gives each member's loss (K,), and one
    backward of their sum gives every member the gradient of its own loss."""
    samples = [x.shape[1] if parts.stacked else len(x) for x, _ in micro_batches]
    total_samples = sum(samples)
    loss = None
    ddp = isinstance(model, DistributedDataParallel)
    for i, ((x, y), n) in enumerate(zip(micro_batches, samples)):
        last = i == len(micro_batches) - 1
        with model.no_sync() if ddp and not last else nullcontext():  # DDP: all-reduce on the last only
            with parts.autocast():
                part = parts.loss_fn(model(x), y)
                if n != total_samples:  # loss / k, by sample count: a shorter micro-batch weighs less
                    part = part * (n / total_samples)
            parts.scaler.scale(part.sum() if parts.stacked else part).backward()
        loss = part.detach().float() if loss is None else loss + part.detach().float()

    if ddp:  # the loss of the whole batch, as the gradient already is
        torch.distributed.all_reduce(loss)
        loss /= torch.distributed.get_world_size()
    return finish_step(loss, parts)


def finish_step(loss, parts: StepParts) -> StepOutput:
    """The step after the gradients of `loss` (the step's, detached) are in: unscale, measure,
    clip, update."""
    optimizer, scaler = parts.optimizer, parts.scaler
    scaler.unscale_(optimizer)  # true gradients from here on (no-op unless fp16)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    params, layer_norms, grad_norm = measure(params, parts.norm_type, parts.stacked)
    diagnostic = parts.probe(params) if parts.probe else None
    spike = parts.spike_guard is not None and parts.spike_guard.is_spike(
        loss, grad_norm
    )  # a host sync, only when asked
    if spike:
        norm_after, fired = grad_norm, torch.zeros((), dtype=torch.bool, device=loss.device)
    else:
        norm_after, fired = parts.clip(params, grad_norm)
        scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    unmeasured = constant(math.nan, loss.device).expand(loss.shape)
    probed = (unmeasured, unmeasured) if diagnostic is None else diagnostic.float().unbind()
    figures = {
        "loss": loss,
        "grad_norm": grad_norm.float(),
        "grad_norm_clipped": norm_after.float(),
        "clipped": fired.float(),  # did clipping fire; `read` makes it the history's `clipped`
        "smoothness": probed[0],
        "smoothness_grad_norm": probed[1],
        "spike_skipped": constant(float(spike), loss.device).expand(loss.shape),
    }
    return StepOutput(figures, layer_norms)


def read(values: dict, fp16: bool) -> dict:
    """One step's device figures, read on the host, as the history records them.

    What follows from the norms, the step leaves to the host: a step whose norm is inf/nan is
    never `clipped` (it is skipped or diverges), with fp16 the scaler skips exactly those steps
    (`scaler_skipped`), and `clip_coef` is the post- to pre-clip norm ratio (1 where undefined)."""
    row = dict(values)
    pre, post = row["grad_norm"], row["grad_norm_clipped"]
    finite = math.isfinite(pre)
    row["clipped"] = float(row["clipped"] > 0 and finite)
    row["scaler_skipped"] = float(fp16 and not finite)
    row["clip_coef"] = post / pre if pre > 0 and finite else 1.0
    return row


def to_host(steps: list) -> list:
    """The device figures of several steps (dicts of tensors: 0-d for one run, (K,) for K members),
    read in one transfer: per step, a dict of K-lists (one number per member)."""
    names = list(steps[0])
    flat = torch.stack([s[n].float() for s in steps for n in names]).cpu()
    return [dict(zip(names, row)) for row in flat.view(len(steps), len(names), -1).tolist()]
