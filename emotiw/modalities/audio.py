"""Audio modality (paper 4.3, 5.3): per clip, 11 steps of audio features at hop 0.5 s, and a
CNN-BiLSTM classifier.

Features (`Config.features`):

- ``openl3`` (default): the OpenL3 mel256 embedding (6144-d) of each 1 s window, windows taken
  as OpenL3 does with ``center=True`` (11 for a 5 s clip), from the torch port in
  `emotiw.modalities.nets.openl3` with weights converted from the official Keras files;
- ``logmel``: a weight-free alternative for users without OpenL3 weights: for each of the same
  windows, the mean and standard deviation over time of a 64-band log-mel spectrogram (OpenL3's
  decibel front-end), 128-d.

Shorter audio is zero-padded with a mask. Features are normalised (`Config.normalise`): each
time step to unit L2 norm, padding left zero (the deployed model: sklearn's ``Normalizer`` on
each 11 x 6144 sample), or per sample (the clip's valid steps together: zero mean, unit
variance; the cpu-smoke preset). A clip without an audio track, or
whose audio is silent (peak below `silence_peak`), gives all zeros and ``has_audio=False`` —
never NaN — so fusion and the outputs can see the modality is missing.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from emotiw.core.config import CLASS_NAMES
from emotiw.io.weights import (
    PRETRAINED,
    RANDOM_INIT,
    Provenance,
    WeightsConfig,
    WeightSpec,
    build_model,
)
from emotiw.modalities import register
from emotiw.modalities.base import HEAD, RUNTIME, Column, Extraction, Modality, resolve_device
from emotiw.modalities.nets import backends, openl3
from emotiw.modalities.nets.keras_lstm import KerasBiLSTM

if TYPE_CHECKING:
    from emotiw.io.media import Clip

NAME = "audio"
_FEATURE_KINDS = ("openl3", "logmel")
_HEADS = ("deployed", "compact")
_LOGMEL_BANDS = 64


@dataclass(frozen=True)
class Config:
    """Audio modality settings.

    Attributes:
        features: ``openl3`` (6144-d embeddings) or ``logmel`` (128-d, no weights needed).
        content_type: which OpenL3 model: ``music`` or ``env``.
        weights: ``pretrained`` (registry) or ``random-init`` (tests; recorded as such).
        seed: seed of random-init weights.
        n_steps: windows per clip (paper: 11, 1 s windows at hop 0.5 s for 5 s clips).
        hop_s: window hop in seconds.
        silence_peak: audio whose absolute peak is below this counts as silent.
        normalise: ``l2`` (each time step to unit L2 norm, deployed), ``zscore`` (the clip's
            valid steps to zero mean and unit variance) or ``none``.
        window_batch: windows per forward pass when embedding many clips; 0 = auto: 2 on CPU,
            where `jobs/benchmark.py audio` measured 1-2 windows per forward fastest and 88
            windows 43 % slower (the activations of a large batch do not stay in cache), and
            64 on CUDA (not measured here: no GPU was available).
        device: ``auto``, ``cpu`` or ``cuda``.
        backend: what runs the OpenL3 network: ``auto`` (ONNX Runtime on CPU, eager on CUDA),
            ``eager`` PyTorch, ``compile``, ``onnxruntime`` or ``openvino``
            (`modalities.nets.backends`; recorded in the provenance).
        head: ``deployed`` (`_DeployedHead`: the authors' model, layer for layer) or
            ``compact`` (`Head`: ReLU convolutions of kernel 3 and a 2-layer BiLSTM, the
            cpu-smoke preset's).
        conv_channels: the head's three 1-D convolutions over time (paper: 64, 512, 512).
        lstm_units: units of each of the compact head's two bidirectional LSTM layers.
        lr: Adam learning rate (deployed: 4.4275e-5, from the authors' search).
        lr_decay: per-epoch factor of the exponential learning-rate schedule (deployed: 0.9
            per 10,000 steps; 0.9991 per epoch is that at VGAF's 84 steps of 32 clips).
    """

    BEFORE: ClassVar[dict[str, Any]] = {"head": "compact"}  # packages saved before `head`

    features: str = "openl3"
    content_type: str = "music"
    weights: str = PRETRAINED
    seed: int = 0
    n_steps: int = 11
    hop_s: float = 0.5
    silence_peak: float = 1e-4
    normalise: str = "l2"
    window_batch: int = field(default=0, metadata=RUNTIME)
    device: str = field(default="auto", metadata=RUNTIME)
    backend: str = field(default=backends.AUTO, metadata=RUNTIME)
    head: str = field(default="deployed", metadata=HEAD)
    conv_channels: tuple[int, int, int] = field(default=(64, 512, 512), metadata=HEAD)
    lstm_units: int = field(default=128, metadata=HEAD)
    lr: float = field(default=4.4275e-5, metadata=HEAD)
    lr_decay: float = field(default=0.9991, metadata=HEAD)

    def __post_init__(self) -> None:
        if isinstance(self.normalise, bool):  # tables extracted before it named the method
            object.__setattr__(self, "normalise", "zscore" if self.normalise else "none")
        if self.normalise not in ("l2", "zscore", "none") or self.head not in _HEADS:
            raise ValueError(f"normalise must be l2, zscore or none; head one of {_HEADS}")
        if self.features not in _FEATURE_KINDS:
            raise ValueError(f"features must be one of {_FEATURE_KINDS}, got {self.features!r}")
        if self.content_type not in ("music", "env"):
            raise ValueError(f"content_type must be 'music' or 'env', got {self.content_type!r}")
        if self.weights not in (PRETRAINED, RANDOM_INIT):
            raise ValueError(f"weights must be {PRETRAINED!r} or {RANDOM_INIT!r}")
        if self.n_steps < 1 or not 0.05 <= self.hop_s <= 5 or self.window_batch < 0:
            raise ValueError("n_steps must be >= 1, window_batch >= 0, hop_s in [0.05, 5]")
        if self.silence_peak < 0 or self.lr <= 0 or not 0 < self.lr_decay <= 1:
            raise ValueError("silence_peak must be >= 0, lr > 0 and lr_decay in (0, 1]")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be auto, cpu or cuda, got {self.device!r}")
        backends.check(self.backend)
        if len(self.conv_channels) != 3 or min(self.conv_channels) < 1 or self.lstm_units < 1:
            raise ValueError("conv_channels must be three positive widths; lstm_units >= 1")

    @property
    def feature_dim(self) -> int:
        return openl3.EMBEDDING_DIM if self.features == "openl3" else 2 * _LOGMEL_BANDS

    @property
    def weights_name(self) -> str:
        return f"openl3-audio-mel256-{self.content_type}"


def feature_shape(cfg: Config | None = None) -> tuple[int, int]:
    cfg = cfg or Config()
    return (cfg.n_steps, cfg.feature_dim)


FEATURE_SHAPE = feature_shape()


# --- pure maths ------------------------------------------------------------------------------


def _is_silent(audio: np.ndarray, peak: float) -> bool:
    return audio.size == 0 or float(np.abs(audio).max()) < peak


def _normalise_per_step(features: np.ndarray) -> np.ndarray:
    """Each time step to unit L2 norm (sklearn's ``Normalizer``); zero steps stay zero."""
    norms = np.linalg.norm(features, axis=-1, keepdims=True)
    return (features / np.where(norms > 0, norms, 1.0)).astype(np.float32)


def _normalise_per_sample(features: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Zero mean, unit variance over the clip's valid steps; padded steps stay zero."""
    out = np.zeros_like(features, dtype=np.float32)
    if not mask.any():
        return out
    valid = features[mask].astype(np.float64)
    std = valid.std()
    out[mask] = (valid - valid.mean()) / (std if std > 1e-12 else 1.0)
    return out


class _LogMel(nn.Module):
    """Weight-free features: per 1 s window, mean and std over time of a 64-band decibel mel
    spectrogram (OpenL3's STFT and decibel front-end) -> ``[B, 128]``."""

    def __init__(self) -> None:
        super().__init__()
        self.frontend = openl3.MelFrontEnd(n_mels=_LOGMEL_BANDS)

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        db = self.frontend(windows)[:, 0]  # [B, 64, 199]
        return torch.cat([db.mean(dim=-1), db.std(dim=-1)], dim=-1)


# --- extractor -------------------------------------------------------------------------------


class Extractor:
    """Decoded clip(s) -> ``[11, D]`` audio features, with ``has_audio`` in the stats."""

    def __init__(self, cfg: Config | None = None, weights: WeightsConfig | None = None) -> None:
        self.cfg = cfg or Config()
        self.device = resolve_device(self.cfg.device)
        if self.cfg.features == "openl3":
            model, provenance = build_model(
                openl3.OpenL3Audio,
                self.cfg.weights_name,
                choice=self.cfg.weights,
                seed=self.cfg.seed,
                cfg=weights,
            )
            self.provenance: dict[str, Provenance] = {"audio": provenance}
        else:
            model = _LogMel().eval()
            self.provenance = {"audio": Provenance("logmel", "builtin:emotiw logmel (no weights)")}
        self.model = model.to(self.device)
        self.embed: Any = self.model
        if self.cfg.features == "openl3":
            example = torch.zeros(1, 1, openl3.N_MELS, openl3.N_FRAMES, device=self.device)
            core, self.provenance["audio"] = backends.run_with(
                openl3.SpectrogramEmbedding(self.model), example, self.cfg.backend,
                self.provenance["audio"], weights,
            )  # fmt: skip
            self.embed = lambda windows: core(self.model.frontend(windows))
        auto_batch = 64 if self.device.type == "cuda" else 2
        self.window_batch = self.cfg.window_batch or auto_batch

    def __call__(self, clip: Clip) -> Extraction:
        return self.extract_many([clip])[0]

    def extract_many(self, clips: list[Clip]) -> list[Extraction]:
        """All windows of all `clips` through the model in batches of `window_batch`."""
        cfg = self.cfg
        prepared = []
        for clip in clips:
            audio = clip.audio if clip.audio_rate == openl3.SAMPLE_RATE else _resample(clip)
            if not clip.meta.has_audio or _is_silent(audio, cfg.silence_peak):
                prepared.append(None)
                continue
            prepared.append(openl3.windows(audio, n_steps=cfg.n_steps, hop_s=cfg.hop_s))
        batch = [w[m] for w, m in (p for p in prepared if p is not None)]
        embedded = self._embed(np.concatenate(batch)) if batch else np.zeros((0, cfg.feature_dim))
        results, start = [], 0
        for item in prepared:
            features = np.zeros(feature_shape(cfg), dtype=np.float32)
            if item is None:
                results.append(Extraction(features, stats={"has_audio": False, "audio_steps": 0}))
                continue
            _, mask = item
            count = int(mask.sum())
            features[mask] = embedded[start : start + count]
            start += count
            if cfg.normalise == "zscore":
                features = _normalise_per_sample(features, mask)
            elif cfg.normalise == "l2":
                features = _normalise_per_step(features)
            results.append(Extraction(features, stats={"has_audio": True, "audio_steps": count}))
        return results

    def _embed(self, windows: np.ndarray) -> np.ndarray:
        parts = []
        with torch.inference_mode():
            for start in range(0, len(windows), self.window_batch):
                chunk = torch.from_numpy(windows[start : start + self.window_batch])
                parts.append(self.embed(chunk.to(self.device)).float().cpu().numpy())
        return np.concatenate(parts)


def _resample(clip: Clip) -> np.ndarray:
    import soxr

    return soxr.resample(clip.audio, clip.audio_rate, openl3.SAMPLE_RATE).astype(np.float32)


# --- head ------------------------------------------------------------------------------------


class Head(nn.Module):
    """Three 1-D convolutions over time (64, 512, 512 maps) -> two BiLSTM layers -> FC(3)
    over ``[B, 11, D]`` audio features (paper 5.3)."""

    def __init__(self, cfg: Config | None = None) -> None:
        super().__init__()
        self.cfg = cfg or Config()
        widths = (self.cfg.feature_dim, *self.cfg.conv_channels)
        self.convs = nn.ModuleList(
            nn.Conv1d(cin, cout, 3, padding=1) for cin, cout in itertools.pairwise(widths)
        )
        self.lstm = nn.LSTM(
            widths[-1], self.cfg.lstm_units, num_layers=2, batch_first=True, bidirectional=True
        )
        self.out = nn.Linear(2 * self.cfg.lstm_units, len(CLASS_NAMES))
        self.feature_dim = 2 * self.cfg.lstm_units

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, T, D]`` -> ``[B, 2 * lstm_units]``: the top BiLSTM layer's two final states."""
        h = x.transpose(1, 2)
        for conv in self.convs:
            h = F.relu(conv(h))
        _, (state, _) = self.lstm(h.transpose(1, 2))
        return torch.cat([state[-2], state[-1]], dim=-1)

    def forward_head(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.out(hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class _DeployedHead(nn.Module):
    """The authors' deployed audio model (docs/explanation/authors-models.md 3), over ``[B, 11,
    D]``: three blocks of Conv1D (64, 512, 512 maps, kernel 2, SELU) -> batch norm (Keras'
    momentum 0.99, eps 1e-3) -> max-pool 2 with stride 1 -> dropout (0.4, 0.2, 0.2); a
    BiLSTM of 10 units with SELU cells over the sequence (input dropout 0.2); a BiLSTM of 5
    units (last step); Dense(32, SELU), the layer fusion concatenates; dropout 0.4; Dense(3).
    1,425,027 parameters with 6144-d OpenL3 input, batch-norm statistics included."""

    def __init__(self, cfg: Config | None = None) -> None:
        super().__init__()
        self.cfg = cfg = cfg or Config()
        widths = (cfg.feature_dim, *cfg.conv_channels)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Conv1d(cin, cout, 2), nn.SELU(),
                          nn.BatchNorm1d(cout, eps=1e-3, momentum=0.01),
                          nn.MaxPool1d(2, stride=1), nn.Dropout(rate))
            for (cin, cout), rate in zip(itertools.pairwise(widths), (0.4, 0.2, 0.2), strict=True)
        )  # fmt: skip
        self.lstm_in = nn.Dropout(0.2)
        self.lstm1 = KerasBiLSTM(widths[-1], 10, return_sequences=True, activation="selu")
        self.lstm2 = KerasBiLSTM(20, 5)
        self.dense = nn.Linear(10, 32)
        self.dropout = nn.Dropout(0.4)
        self.out = nn.Linear(32, len(CLASS_NAMES))
        self.feature_dim = 32

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, T, D]`` -> ``[B, 32]`` (after the SELU, before the dropout)."""
        h = x.transpose(1, 2)
        for block in self.blocks:
            h = block(h)
        h = self.lstm2(self.lstm1(self.lstm_in(h.transpose(1, 2))))
        return F.selu(self.dense(h))

    def forward_head(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.out(self.dropout(hidden))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


# --- registration ----------------------------------------------------------------------------

WEIGHT_SPECS = tuple(
    WeightSpec(
        name=f"openl3-audio-mel256-{content}",
        filename=f"openl3_audio_mel256_{content}.h5",
        sha256=None,  # OpenL3 publishes no checksums: pinned on first use
        format="keras-hdf5",
        converter="emotiw.modalities.nets.openl3:state_dict_from_keras",
        metadata={
            "architecture": "OpenL3 audio, mel256 input, 6144-d (Cramer et al. 2019)",
            "sample_rate": 48_000,
            "content_type": content,
            "published_at": "https://github.com/marl/openl3/raw/models/"
            f"openl3_audio_mel256_{content}-v0_4_0.h5.gz (gunzip before staging)",
        },
        license="MIT",
    )
    for content in ("music", "env")
)


class Audio(Modality):
    """Audio: OpenL3 (or log-mel) windows -> ``[11, D]`` -> CNN-BiLSTM head (paper 5.3)."""

    name = NAME
    Config = Config
    order = 30
    presence = "has_audio"
    stats = (Column("has_audio", "bool", "an audio track with sound (features zero otherwise)"),)
    vote_weight = 0.4
    weight_specs = WEIGHT_SPECS
    # OpenL3's weights cannot be installed offline: the CPU smoke set uses log-mel features.
    presets: ClassVar[dict[str, Any]] = {
        "paper": Config(),
        # the settings before the deployed model was followed, on weight-free features
        "cpu-smoke": Config(
            features="logmel", normalise="zscore", head="compact", lr=1e-3, lr_decay=0.96
        ),
    }
    feature_doc = "[11, D] float32, flattened (D 6144 OpenL3 or 128 log-mel)"

    def weight_names(self, cfg: Config) -> tuple[str, ...]:
        return (cfg.weights_name,) if cfg.features == "openl3" and cfg.weights == PRETRAINED else ()

    def head(self, cfg: Config) -> nn.Module:
        return _DeployedHead(cfg) if cfg.head == "deployed" else Head(cfg)

    def scheduler(self, opt: torch.optim.Optimizer, cfg: Config) -> Any:
        """Exponential learning-rate decay, stepped once per epoch."""
        return torch.optim.lr_scheduler.ExponentialLR(opt, gamma=cfg.lr_decay)


register(Audio())
