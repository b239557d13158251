"""Convolutional LSTM (Shi et al. 2015) with the semantics of Keras' ``ConvLSTM2D``, which the
paper's scene heads use.

Per step: ``z = conv_x(x_t) + conv_h(h_{t-1})`` split into the input, forget, cell and output
gates (Keras' order i, f, c, o); ``c_t = f * c_{t-1} + i * tanh(g)``, ``h_t = o * tanh(c_t)``.
As in Keras, the input convolution uses the layer's padding (``valid`` by default, so maps
shrink by ``kernel - 1``), the recurrent convolution always ``same``, the forget-gate bias
starts at 1 (``unit_forget_bias``) and the recurrent activation is the logistic sigmoid
(tf.keras 2.x) or Keras 2's ``hard_sigmoid`` (``ConvLSTM2D``'s default, which the authors'
deployed scene model used). A per-step mask keeps the state unchanged on padded frames, so a
clip with fewer frames ends on its last real one instead of on zero images.
"""

from __future__ import annotations

import torch
from torch import nn

from emotiw.modalities.nets.keras_lstm import RECURRENT


class _ConvLSTMCell(nn.Module):
    """One ConvLSTM step: ``(x [B, C, H, W], (h, c)) -> (h, c)`` with h, c ``[B, F, H', W']``."""

    def __init__(
        self, in_channels: int, filters: int, kernel_size: int = 3, padding: str = "valid",
        recurrent_activation: str = "sigmoid",
    ) -> None:  # fmt: skip
        super().__init__()
        self.rec = RECURRENT[recurrent_activation]
        if padding not in ("valid", "same"):
            raise ValueError(f"padding must be 'valid' or 'same', got {padding!r}")
        if kernel_size % 2 != 1:
            raise ValueError("kernel_size must be odd (the recurrent convolution is 'same')")
        self.filters = filters
        self.kernel_size = kernel_size
        self.padding = padding
        pad = 0 if padding == "valid" else kernel_size // 2
        self.input_conv = nn.Conv2d(in_channels, 4 * filters, kernel_size, padding=pad)
        self.recurrent_conv = nn.Conv2d(
            filters, 4 * filters, kernel_size, padding=kernel_size // 2, bias=False
        )
        with torch.no_grad():
            self.input_conv.bias.zero_()
            self.input_conv.bias[filters : 2 * filters].fill_(1.0)  # unit_forget_bias

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """Spatial size of h for an input of ``height x width``."""
        shrink = 0 if self.padding == "same" else self.kernel_size - 1
        return height - shrink, width - shrink

    def initial_state(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h, w = self.output_size(x.shape[-2], x.shape[-1])
        zeros = x.new_zeros(x.shape[0], self.filters, h, w)
        return zeros, zeros.clone()

    def forward(
        self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        h, c = state
        z = self.input_conv(x) + self.recurrent_conv(h)
        i, f, g, o = z.chunk(4, dim=1)
        c = self.rec(f) * c + self.rec(i) * torch.tanh(g)
        h = self.rec(o) * torch.tanh(c)
        return h, c


class ConvLSTM(nn.Module):
    """A ConvLSTM layer over ``[B, T, C, H, W]`` with an optional ``[B, T]`` bool mask of real
    frames. Returns the last state's h ``[B, F, H', W']`` (Keras ``return_sequences=False``),
    or with ``pool`` every step's h averaged over time and space, ``[B, F]`` (Keras
    ``return_sequences=True`` then ``GlobalAveragePooling3D``; padded frames left out of the
    mean, where Keras averaged the steps it ran on zero images too)."""

    def __init__(
        self, in_channels: int, filters: int, kernel_size: int = 3, padding: str = "valid",
        recurrent_activation: str = "sigmoid", pool: bool = False,
    ) -> None:  # fmt: skip
        super().__init__()
        self.cell = _ConvLSTMCell(in_channels, filters, kernel_size, padding, recurrent_activation)
        self.pool = pool

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        h, c = self.cell.initial_state(x[:, 0])
        total = x.new_zeros(x.shape[0], self.cell.filters)
        steps = x.new_zeros(x.shape[0], 1)
        for t in range(x.shape[1]):
            h_new, c_new = self.cell(x[:, t], (h, c))
            if mask is None:
                h, c = h_new, c_new
                real = x.new_ones(x.shape[0], 1)
            else:
                keep = mask[:, t].view(-1, 1, 1, 1)
                h, c = torch.where(keep, h_new, h), torch.where(keep, c_new, c)
                real = mask[:, t].view(-1, 1).to(x.dtype)
            if self.pool:
                total = total + real * h_new.mean(dim=(2, 3))
                steps = steps + real
        return total / steps.clamp(min=1.0) if self.pool else h
