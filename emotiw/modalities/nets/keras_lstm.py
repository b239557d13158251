"""An LSTM with the parameters and semantics of Keras' ``LSTM`` / ``Bidirectional(LSTM)``,
which the authors' deployed heads use (docs/explanation/authors-models.md).

Why not ``torch.nn.LSTM``: it has two bias vectors per direction (so a Keras layer's
parameter count, which the `paper` preset's parity tests check, is not reproduced) and a
fixed tanh cell activation (the deployed audio head's first BiLSTM uses SELU). Per step, as
Keras: ``z = x W + h U + b`` split into the gates i, f, c, o; ``c = f*c + i*act(c_hat)``,
``h = o*act(c)`` with the recurrent activation on i, f, o; ``unit_forget_bias`` (forget bias
starts at 1); kernels Glorot-uniform, recurrent kernels orthogonal. The weights keep Keras'
layout (``kernel [F, 4H]``, ``recurrent_kernel [H, 4H]``, ``bias [4H]``), so converted Keras
weights load as they are. Sequences are short (12 frames, 11 audio windows): a Python loop
over time costs nothing next to the front-ends.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def _hard_sigmoid_keras(x: torch.Tensor) -> torch.Tensor:
    """Keras 2's ``hard_sigmoid``: ``clip(0.2 x + 0.5, 0, 1)`` (torch's uses x / 6 + 0.5)."""
    return (0.2 * x + 0.5).clamp(0.0, 1.0)


_ACTIVATIONS = {"tanh": torch.tanh, "selu": F.selu, "relu": F.relu}
RECURRENT = {"sigmoid": torch.sigmoid, "hard_sigmoid": _hard_sigmoid_keras}


class _KerasLSTMLayer(nn.Module):
    """One direction: ``[B, T, F]`` -> ``[B, T, H]`` (every step's h)."""

    def __init__(
        self, input_size: int, units: int, activation: str = "tanh",
        recurrent_activation: str = "sigmoid",
    ) -> None:  # fmt: skip
        super().__init__()
        self.units = units
        self.act, self.rec = _ACTIVATIONS[activation], RECURRENT[recurrent_activation]
        self.kernel = nn.Parameter(torch.empty(input_size, 4 * units))
        self.recurrent_kernel = nn.Parameter(torch.empty(units, 4 * units))
        self.bias = nn.Parameter(torch.zeros(4 * units))
        nn.init.xavier_uniform_(self.kernel)
        for k in range(4):  # Keras: an orthogonal matrix per gate block
            nn.init.orthogonal_(self.recurrent_kernel.data[:, k * units : (k + 1) * units])
        with torch.no_grad():
            self.bias[units : 2 * units].fill_(1.0)

    def forward(self, x: torch.Tensor, reverse: bool = False) -> torch.Tensor:
        batch, steps, _ = x.shape
        h = x.new_zeros(batch, self.units)
        c = x.new_zeros(batch, self.units)
        projected = x @ self.kernel + self.bias  # all steps at once
        out = [h] * steps
        order = range(steps - 1, -1, -1) if reverse else range(steps)
        for t in order:
            i, f, g, o = (projected[:, t] + h @ self.recurrent_kernel).chunk(4, dim=-1)
            c = self.rec(f) * c + self.rec(i) * self.act(g)
            h = self.rec(o) * self.act(c)
            out[t] = h
        return torch.stack(out, dim=1)


class KerasBiLSTM(nn.Module):
    """``Bidirectional(LSTM(units, return_sequences=...))`` (merge: concat): ``[B, T, F]`` ->
    ``[B, T, 2H]`` with `return_sequences`, else ``[B, 2H]`` (the forward direction's last
    step and the backward direction's, which has read the sequence back to step 0)."""

    def __init__(
        self, input_size: int, units: int, *, return_sequences: bool = False,
        activation: str = "tanh", recurrent_activation: str = "sigmoid",
    ) -> None:  # fmt: skip
        super().__init__()
        self.forward_layer = _KerasLSTMLayer(input_size, units, activation, recurrent_activation)
        self.backward_layer = _KerasLSTMLayer(input_size, units, activation, recurrent_activation)
        self.return_sequences = return_sequences
        self.output_size = 2 * units

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fwd = self.forward_layer(x)
        bwd = self.backward_layer(x, reverse=True)
        if self.return_sequences:
            return torch.cat([fwd, bwd], dim=-1)
        return torch.cat([fwd[:, -1], bwd[:, 0]], dim=-1)

    def kernels(self) -> list[torch.Tensor]:
        """The input kernels (what a Keras ``kernel_regularizer`` penalises)."""
        return [self.forward_layer.kernel, self.backward_layer.kernel]
