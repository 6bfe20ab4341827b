"""`model=rnn|lstm|gru|lstm_urnn`: a recurrent network (torch's fused cuDNN/CPU kernels; lstm_urnn
written out) with a linear head.

Per-sample outputs read the last hidden state; per-position outputs read every state.
`rnn` is the tanh Elman network of Pascanu et al. 2013.
"""

import torch
from gradlab.models import cannot_consume
from gradlab.models.inputs import as_sequence, sequence_shape
from torch import nn

from gradlab.errors import bad


class URNNLSTM(nn.Module):
    """The LSTM baseline of the uRNN paper's code (amarshah/complex_RNN, models.py `LSTM`), one
    layer: gates i, f, c, o from x_t and h_{t-1}, the output gate also from the new cell state
    through a full matrix (a peephole, V_o); each weight matrix Glorot-uniform, the forget bias 1,
    the other biases 0; the initial h and c are learned (started at 0). Called as torch's LSTM
    (batch first): (states, None)."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, batch_first: bool = True):
        super().__init__()
        if num_layers != 1 or not batch_first:
            raise bad(
                "model.num_layers", num_layers, "must be 1 for cell lstm_urnn (the uRNN code's one layer)"
            )
        h = hidden_size
        self.weight_ih = nn.Parameter(torch.cat([_glorot(h, input_size) for _ in range(4)]))  # i, f, c, o
        self.weight_hh = nn.Parameter(torch.cat([_glorot(h, h) for _ in range(4)]))
        self.weight_co = nn.Parameter(_glorot(h, h))  # V_o: the new cell state into the output gate
        self.bias = nn.Parameter(torch.cat([torch.zeros(h), torch.ones(h), torch.zeros(2 * h)]))
        self.h0, self.c0 = nn.Parameter(torch.zeros(h)), nn.Parameter(torch.zeros(h))

    def forward(self, x: torch.Tensor):
        inputs = nn.functional.linear(x, self.weight_ih, self.bias)  # every step's input part at once
        h, c = self.h0.expand(x.shape[0], -1), self.c0.expand(x.shape[0], -1)
        states = []
        for gates_x in inputs.unbind(1):
            i, f, g, o = (gates_x + nn.functional.linear(h, self.weight_hh)).chunk(4, -1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o + nn.functional.linear(c, self.weight_co)) * torch.tanh(c)
            states.append(h)
        return torch.stack(states, 1), None


def _glorot(rows: int, columns: int) -> torch.Tensor:
    """U(-b, b), b = sqrt(6 / (fan_in + fan_out)): the uRNN code's initialize_matrix."""
    bound = (6.0 / (rows + columns)) ** 0.5
    return torch.empty(rows, columns).uniform_(-bound, bound)


CELLS = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU, "lstm_urnn": URNNLSTM}


def _recurrence(mode: str, x, w_ih, w_hh, b_ih, b_hh):
    """One recurrent layer over K stacked members: x (K, B, T, I) -> states (K, B, T, H)."""
    k, b = x.shape[:2]
    inputs = torch.matmul(x, w_ih.transpose(1, 2).unsqueeze(1)) + b_ih[:, None, None]  # all steps at once
    w_hh, b_hh = w_hh.transpose(1, 2), b_hh[:, None]
    h = x.new_zeros(k, b, w_hh.shape[1])
    c = torch.zeros_like(h)
    states = []
    for gates_x in inputs.unbind(
        2
    ):  # one backward for all steps (indexing would add a zero-filled copy per step)
        gates_h = torch.baddbmm(b_hh, h, w_hh)
        if mode == "LSTM":
            i, f, g, o = (gates_x + gates_h).chunk(4, -1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
        elif mode == "GRU":
            (rx, zx, nx), (rh, zh, nh) = gates_x.chunk(3, -1), gates_h.chunk(3, -1)
            r, z = torch.sigmoid(rx + rh), torch.sigmoid(zx + zh)
            h = (1 - z) * torch.tanh(nx + r * nh) + z * h
        else:  # RNN_TANH
            h = torch.tanh(gates_x + gates_h)
        states.append(h)
    return torch.stack(states, 2)


INITS = ("default", "smart_tanh")


def smart_tanh_(rnn: nn.RNN, head: nn.Linear, nonzero: int = 15, radius: float = 0.95) -> None:
    """Pascanu et al.'s `smart_tanh` initialisation (pascanur/trainingRNNs RNN.py): input, recurrent
    and output weights N(0, 0.01^2); each hidden unit keeps `nonzero` random incoming recurrent
    weights; the recurrent matrix is rescaled to spectral radius `radius`; biases zero."""
    with torch.no_grad():
        for name, w in rnn.named_parameters():
            if name.startswith("bias"):
                w.zero_()
            else:
                w.normal_(0.0, 0.01)
            if name.startswith("weight_hh"):
                h = w.shape[0]
                keep = torch.rand(h, h).argsort(dim=1)[:, :nonzero]  # per unit, its inputs from the others
                w.mul_(torch.zeros(h, h).scatter_(1, keep, 1.0))
                w.mul_(radius / torch.linalg.eigvals(w.double()).abs().max().float())
        head.weight.normal_(0.0, 0.01)
        head.bias.zero_()


class RecurrentNet(nn.Module):
    def __init__(self, spec, cell: str, hidden_size: int, num_layers: int = 1, init: str = "default"):
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
        if init not in INITS or (init == "smart_tanh" and cell != "rnn"):
            raise bad("model.init", init, "choose from default, smart_tanh (smart_tanh: cell rnn only)")
        if init == "smart_tanh":
            smart_tanh_(self.rnn, self.head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        states, _ = self.rnn(as_sequence(x, self.spec))
        if self.spec.output == "token_classes":
            return self.head(states)
        return self.head(states[:, -1])

    def forward_stacked(self, params: dict, x: torch.Tensor) -> torch.Tensor:
        """The forward pass of K networks of this shape at once: `params` holds each parameter
        stacked over a leading member axis, `x` (K, batch, ...). torch's fused recurrent kernels
        have no batched (vmap) form, so the recurrence is written out with batched matmuls, in
        the gate order and equations of torch.nn.RNN/LSTM/GRU. A cell written out already
        (lstm_urnn) is batched by vmap."""
        if not isinstance(self.rnn, nn.RNNBase):
            return torch.func.vmap(lambda p, xi: torch.func.functional_call(self, p, (xi,)))(params, x)
        h = torch.func.vmap(lambda xi: as_sequence(xi, self.spec))(x)
        for layer in range(self.rnn.num_layers):
            h = _recurrence(
                self.rnn.mode,
                h,
                *(params[f"rnn.{w}_l{layer}"] for w in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")),
            )
        if self.spec.output != "token_classes":
            h = h[:, :, -1]
        return torch.func.vmap(nn.functional.linear)(h, params["head.weight"], params["head.bias"])
