"""`model=rnn|lstm|gru`: a recurrent network (torch's fused cuDNN/CPU kernels) with a linear head.

Per-sample outputs read the last hidden state; per-position outputs read every state.
`rnn` is the tanh Elman network of Pascanu et al. 2013.
"""

import torch
from torch import nn

from gradlab.errors import bad
from gradlab.models import cannot_consume
from gradlab.models.inputs import as_sequence, sequence_shape

CELLS = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}


class RecurrentNet(nn.Module):
    def __init__(self, spec, cell: str, hidden_size: int, num_layers: int = 1):
        super().__init__()
        if spec.input == "vector":
            raise cannot_consume(cell, spec, "no sequence axis")
        if cell not in CELLS:
            raise bad("model.cell", cell, f"choose from {', '.join(CELLS)}")
        if hidden_size < 1 or num_layers < 1:
            raise bad("model.hidden_size/num_layers", (hidden_size, num_layers), "both must be >= 1")
        self.spec = spec
        _, features = sequence_shape(spec)
        extra = {"nonlinearity": "tanh"} if cell == "rnn" else {}
        self.rnn = CELLS[cell](features, hidden_size, num_layers, batch_first=True, **extra)
        self.head = nn.Linear(hidden_size, spec.n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        states, _ = self.rnn(as_sequence(x, self.spec))
        if self.spec.output == "token_classes":
            return self.head(states)
        return self.head(states[:, -1])
