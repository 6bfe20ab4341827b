"""`model=mlp`: a multilayer perceptron on the flattened input (per-sample outputs only)."""

import torch
from gradlab.models import cannot_consume
from gradlab.models.inputs import flat_size
from torch import nn

from gradlab.errors import bad

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU}


class MLP(nn.Module):
    def __init__(self, spec, hidden: list, activation: str = "relu"):
        super().__init__()
        if spec.output == "token_classes":
            raise cannot_consume("mlp", spec, "one target per position")
        if activation not in ACTIVATIONS:
            raise bad("model.activation", activation, f"choose from {', '.join(ACTIVATIONS)}")
        if not hidden or any(int(h) < 1 for h in hidden):
            raise bad("model.hidden", list(hidden), "a non-empty list of layer widths >= 1")
        self.spec = spec
        layers, width = [], flat_size(spec)
        for h in hidden:
            layers += [nn.Linear(width, int(h)), ACTIVATIONS[activation]()]
            width = int(h)
        layers.append(nn.Linear(width, spec.n_out))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.spec.input == "tokens":
            x = nn.functional.one_hot(x, self.spec.vocab).float()
        return self.net(x.flatten(1))

    def forward_stacked(self, params: dict, x: torch.Tensor) -> torch.Tensor:
        """The forward pass of K networks of this shape at once: `params` holds each parameter
        stacked over a leading member axis, `x` (K, batch, ...); each layer is one batched matmul
        (faster on a CPU than vmap's)."""
        if self.spec.input == "tokens":
            x = nn.functional.one_hot(x, self.spec.vocab).float()
        h = x.flatten(2)
        for i, layer in enumerate(self.net):
            if isinstance(layer, nn.Linear):
                h = torch.baddbmm(
                    params[f"net.{i}.bias"].unsqueeze(1), h, params[f"net.{i}.weight"].transpose(1, 2)
                )
            else:
                h = layer(h)
        return h
