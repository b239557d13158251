"""Temporal classifier heads shared by the modalities."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from emotiw.config import CLASS_NAMES


class BiLSTMHead(nn.Module):
    """BiLSTM over ``[B, T, F]`` -> FC(ReLU) -> FC(classes): the paper's face and pose heads.

    `forward_features` returns the FC(ReLU) layer, which fusion concatenates; the BiLSTM's
    summary is its last forward and first backward hidden state (Keras `Bidirectional(LSTM)`).
    """

    def __init__(
        self, *, n_features: int, lstm_units: int, fc_units: int, n_classes: int = len(CLASS_NAMES)
    ) -> None:
        super().__init__()
        self.lstm = nn.LSTM(n_features, lstm_units, batch_first=True, bidirectional=True)
        self.fc = nn.Linear(2 * lstm_units, fc_units)
        self.out = nn.Linear(fc_units, n_classes)
        self.feature_dim = fc_units

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, T, F]`` -> ``[B, fc_units]``."""
        _, (h, _) = self.lstm(x)
        return F.relu(self.fc(torch.cat([h[0], h[1]], dim=-1)))

    def forward_head(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.out(hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits ``[B, 3]`` (positive, neutral, negative)."""
        return self.forward_head(self.forward_features(x))
