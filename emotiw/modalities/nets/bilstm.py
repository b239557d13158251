"""Temporal classifier heads shared by the modalities."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from emotiw.core.config import CLASS_NAMES
from emotiw.modalities.nets.keras_lstm import KerasBiLSTM


class BiLSTMHead(nn.Module):
    """BiLSTM over ``[B, T, F]`` -> FC(ReLU) -> FC(classes): the paper's face and pose heads.

    `forward_features` returns the FC(ReLU) layer (or, with ``fc_units`` 0, the BiLSTM's
    summary: the deployed pose head has no hidden layer), which fusion concatenates; the
    summary is the last forward and first backward hidden state (Keras `Bidirectional(LSTM)`).
    ``lstm``: ``keras`` (`KerasBiLSTM`: Keras' parameters, one bias per gate) or ``torch``
    (``nn.LSTM``, cuDNN; two biases per gate).
    """

    def __init__(
        self, *, n_features: int, lstm_units: int, fc_units: int, lstm: str = "keras",
        n_classes: int = len(CLASS_NAMES),
    ) -> None:  # fmt: skip
        super().__init__()
        if lstm not in ("keras", "torch"):
            raise ValueError(f"lstm must be 'keras' or 'torch', got {lstm!r}")
        if lstm == "keras":
            self.lstm: nn.Module = KerasBiLSTM(n_features, lstm_units)
        else:
            self.lstm = nn.LSTM(n_features, lstm_units, batch_first=True, bidirectional=True)
        self.fc = nn.Linear(2 * lstm_units, fc_units) if fc_units else None
        self.feature_dim = fc_units or 2 * lstm_units
        self.out = nn.Linear(self.feature_dim, n_classes)

    def summary(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, T, F]`` -> the BiLSTM's ``[B, 2 * lstm_units]``."""
        if isinstance(self.lstm, KerasBiLSTM):
            return self.lstm(x)
        _, (h, _) = self.lstm(x)
        return torch.cat([h[0], h[1]], dim=-1)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, T, F]`` -> ``[B, feature_dim]``."""
        summary = self.summary(x)
        return summary if self.fc is None else F.relu(self.fc(summary))

    def forward_head(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.out(hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits ``[B, 3]`` (positive, neutral, negative)."""
        return self.forward_head(self.forward_features(x))

    def kernels(self) -> list[torch.Tensor]:
        """The input kernels and the output layer's weights: what the deployed pose head's
        Keras ``kernel_regularizer`` penalised (not recurrent kernels, not biases)."""
        if isinstance(self.lstm, KerasBiLSTM):
            own = self.lstm.kernels()
        else:
            own = [self.lstm.weight_ih_l0, self.lstm.weight_ih_l0_reverse]
        return [*own, self.out.weight]
