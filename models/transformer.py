"""`model=transformer`: a small pre-norm Transformer encoder with learned positions.

Tokens are embedded; float sequences and image rows (or patches, `patch` > 0) are
projected. Per-position outputs (language modelling, copy) use a causal mask; per-sample
outputs average the final states.
"""

import torch
from gradlab.models import cannot_consume
from gradlab.models.inputs import as_sequence, sequence_shape
from torch import nn

from gradlab.errors import bad


class Transformer(nn.Module):
    def __init__(
        self, spec, d_model: int, n_heads: int, n_layers: int, d_ff: int, dropout: float = 0.0, patch: int = 0
    ):
        super().__init__()
        if spec.input == "vector":
            raise cannot_consume("transformer", spec, "no sequence axis")
        if d_model < 1 or n_heads < 1 or d_model % n_heads:
            raise bad("model.d_model", d_model, f"must be a positive multiple of model.n_heads={n_heads}")
        if not 0 <= dropout < 1:
            raise bad("model.dropout", dropout, "must be in [0, 1)")
        if patch < 0:
            raise bad("model.patch", patch, "must be >= 0 (0 = one token per image row)")
        self.spec, self.patch = spec, int(patch)
        if self.patch:
            if spec.input != "image" or spec.shape[1] % self.patch or spec.shape[2] % self.patch:
                raise bad(
                    "model.patch",
                    patch,
                    f"needs an image task whose sides divide by it (got {spec.input} {spec.shape})",
                )
            c, h, w = spec.shape
            steps = (h // self.patch) * (w // self.patch)
            self.embed = nn.Conv2d(c, d_model, self.patch, stride=self.patch)
        elif spec.input == "tokens":
            steps = spec.shape[0]
            self.embed = nn.Embedding(spec.vocab, d_model)
        else:
            steps, features = sequence_shape(spec)
            self.embed = nn.Linear(features, d_model)
        self.position = nn.Parameter(torch.zeros(1, steps, d_model))
        layer = nn.TransformerEncoderLayer(d_model, n_heads, d_ff, dropout, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, spec.n_out)
        self.causal = spec.output == "token_classes"
        mask = nn.Transformer.generate_square_subsequent_mask(steps) if self.causal else None
        self.register_buffer("mask", mask, persistent=False)
        nn.init.normal_(self.position, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.patch:
            h = self.embed(x).flatten(2).transpose(1, 2)
        elif self.spec.input == "tokens":
            h = self.embed(x)
        else:
            h = self.embed(as_sequence(x, self.spec))
        h = self.norm(self.encoder(h + self.position, mask=self.mask, is_causal=self.causal))
        return self.head(h if self.causal else h.mean(1))
