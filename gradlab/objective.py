"""Loss and accuracy for each kind of task output (TaskSpec.output)."""

import torch
import torch.nn.functional as F


def loss_fn(spec):
    """MSE for regression, cross-entropy for classes (per sample or per position)."""
    if spec.output == "regression":
        return F.mse_loss
    return lambda out, y: F.cross_entropy(out.flatten(0, -2), y.flatten())


@torch.no_grad()
def evaluate(model, batches, spec, autocast):
    """Mean loss and accuracy (nan for regression) over the held-out batches, as device tensors."""
    was_training = model.training
    model.eval()
    loss, correct, count, samples = 0.0, 0.0, 0, 0
    fn = loss_fn(spec)
    for x, y in batches:
        with autocast():
            out = model(x)
        loss = loss + fn(out.float(), y) * len(x)
        samples += len(x)
        if spec.output != "regression":
            correct = correct + (out.argmax(-1) == y).sum()
            count += y.numel()
    model.train(was_training)
    accuracy = correct / count if count else torch.tensor(float("nan"), device=loss.device)
    return loss / samples, accuracy
