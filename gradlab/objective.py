"""Loss and accuracy for each kind of task output (TaskSpec.output)."""

import torch
import torch.nn.functional as F


def loss_fn(spec):
    """MSE for regression, cross-entropy for classes (per sample or per position)."""
    if spec.output == "regression":
        return F.mse_loss
    return lambda out, y: F.cross_entropy(out.flatten(0, -2), y.flatten())


def member_losses(spec):
    """loss_fn for K stacked members: (outputs (K, batch, ...), targets (K, batch, ...)) -> the mean
    loss of each member's batch, (K,), in one call."""
    if spec.output == "regression":
        return lambda out, y: F.mse_loss(out, y, reduction="none").flatten(1).mean(1)
    return lambda out, y: (
        F.cross_entropy(out.flatten(0, -2), y.flatten(), reduction="none").view(len(y), -1).mean(1)
    )


@torch.no_grad()
def evaluate(model, batches, spec, autocast, stacked=None):
    """Mean loss and accuracy (nan for regression) over the held-out batches, as device tensors.

    `stacked`: (x) -> the outputs (K, batch, ...) of K stacked models of `model`'s shape (a
    vectorized group's) on the same batch; each figure is then one per model, (K,)."""
    was_training = model.training
    model.eval()
    loss, correct, count, samples = 0.0, 0.0, 0, 0
    fn = loss_fn(spec) if stacked is None else torch.func.vmap(loss_fn(spec), in_dims=(0, None))
    for x, y in batches:
        with autocast():
            out = model(x) if stacked is None else stacked(x)
        loss = loss + fn(out.float(), y) * len(x)
        samples += len(x)
        if spec.output != "regression":
            hits = out.argmax(-1) == y
            correct = correct + (hits.sum() if stacked is None else hits.flatten(1).sum(1))
            count += y.numel()
    model.train(was_training)
    accuracy = correct / count if count else torch.full_like(loss, float("nan"))
    return loss / samples, accuracy
