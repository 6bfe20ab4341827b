"""`mistake=...`: classic errors of clipping under accumulation and fp16, made on purpose by the
studies that measure them (experiments/accumulation.py, fp16_unscale.py). None of this is in
the production step: each mistake wraps the parts that `train_step` is given.

- clip_each_micro_batch: the running sum of gradients is clipped after every micro-batch
  (here: before each backward after the first, which is the same moment), then once more as usual;
- no_loss_division: the micro-batch losses are not divided by k, so the gradient is k times
  too large and the threshold k times looser (the recorded loss is the true one);
- clip_scaled: the fp16 gradients are measured and clipped while still multiplied by the
  loss scale (the scaler unscales them only inside its step).
"""

from __future__ import annotations

import torch

from gradlab.clip import measure
from gradlab.step import StepOutput, StepParts, train_step

MISTAKES = ("clip_each_micro_batch", "no_loss_division", "clip_scaled")


def mistaken_step(mistake: str):
    """A function like `train_step` that makes `mistake`."""

    def step(model, micro_batches, parts: StepParts) -> StepOutput:
        k = len(micro_batches)
        if mistake == "no_loss_division":
            out = train_step(
                model, micro_batches, parts._replace(loss_fn=lambda o, y: k * parts.loss_fn(o, y))
            )
            return out._replace(figures={**out.figures, "loss": out.figures["loss"] / k})
        if mistake == "clip_scaled":
            return train_step(model, micro_batches, parts._replace(scaler=_ScaledClip(parts.scaler)))
        scaler = _ClipBeforeBackward(parts.scaler, parts)
        out = train_step(model, micro_batches, parts._replace(scaler=scaler))
        fired = out.figures["clipped"] + scaler.fired.float()
        return out._replace(figures={**out.figures, "clipped": (fired > 0).float()})

    return step


class _Scaler:
    """A GradScaler that does what the one it wraps does, but where a mistake says otherwise."""

    def __init__(self, scaler: torch.amp.GradScaler):
        self.inner = scaler

    def __getattr__(self, name):
        return getattr(self.inner, name)


class _ScaledClip(_Scaler):
    def unscale_(self, optimizer) -> None:
        """Not before clipping: the scaler's step unscales, after the clip has seen scaled gradients."""


class _ClipBeforeBackward(_Scaler):
    """Clips the gradients summed so far each time a micro-batch's loss is scaled for its
    backward, except the first: that is, after every micro-batch but the last."""

    def __init__(self, scaler: torch.amp.GradScaler, parts: StepParts):
        super().__init__(scaler)
        self.parts, self.fired = parts, torch.zeros((), dtype=torch.bool)

    def scale(self, loss: torch.Tensor) -> torch.Tensor:
        params = [p for group in self.parts.optimizer.param_groups for p in group["params"]]
        if any(p.grad is not None for p in params):
            params, _, running_norm = measure(params, self.parts.norm_type)
            self.fired = self.parts.clip(params, running_norm).fired | self.fired.to(loss.device)
        return self.inner.scale(loss)
