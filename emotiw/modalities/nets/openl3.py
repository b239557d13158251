"""OpenL3 audio embedding network (Cramer et al. 2019; mel256 input, 6144-d) in torch, with its
mel front-end and a converter from the official Keras weight files.

Front-end (OpenL3 0.4 = kapre 0.3 layers plus OpenL3's own decibel function), per 1 s window of
48 kHz mono audio: STFT with n_fft = window = 2048, hop 242, periodic Hann window, zero padding
at the end only (``pad_end``: 199 frames); magnitude; Slaney-style mel filterbank (256 bands,
0-24 kHz, Slaney area normalisation, as librosa's default); then ``10 * log10(max(x, 1e-10))``,
minus its maximum over the window, floored at -80 dB.

Network (OpenL3 ``_construct_mel256_audio_network``): BatchNorm on the spectrogram, then four
blocks of two 3x3 'same' convolutions (64, 128, 256, 512 filters), each followed by BatchNorm
and ReLU except the last convolution (``audio_embedding_layer``), with 2x2 max-pooling after
the first three blocks; the 32x24x512 output is max-pooled 8x8 and flattened in Keras'
channels-last order: 4 x 3 x 512 = 6144.

Keras weight files are converted by walking the layers in the file's order and taking the
BatchNormalization and Conv2D layers in sequence (8 of each): the first BatchNormalization is
the spectrogram's, then conv/BN pairs, and the last Conv2D is ``audio_embedding_layer``. Layers
without weights, and any front-end kernels (kapre 0.1 ``real_kernels``, ``imag_kernels``,
``freq2mel``), are skipped. Keras kernels (kh, kw, in, out) become (out, in, kh, kw); BatchNorm
epsilon is Keras' 1e-3. `_verify_against_reference` compares this port with embeddings the
original package produced, for users who have the weight files and TensorFlow.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

SAMPLE_RATE = 48_000
_WINDOW = SAMPLE_RATE  # 1 s
_N_FFT = 2048
_HOP = 242
N_MELS = 256
N_FRAMES = -(-_WINDOW // _HOP)  # ceil: 199 frames with end padding
EMBEDDING_DIM = 6144
KERAS_BN_EPS = 1e-3
_BLOCKS = (64, 128, 256, 512)


def _hz_to_mel(freq: np.ndarray) -> np.ndarray:
    """Slaney's mel scale (linear below 1 kHz, logarithmic above), as librosa's default."""
    freq = np.asarray(freq, dtype=np.float64)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, np.log(6.4) / 27.0
    mel = freq / f_sp
    log_part = freq >= min_log_hz
    mel[log_part] = min_log_mel + np.log(freq[log_part] / min_log_hz) / logstep
    return mel


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, np.log(6.4) / 27.0
    freq = f_sp * mel
    log_part = mel >= min_log_mel
    freq[log_part] = min_log_hz * np.exp(logstep * (mel[log_part] - min_log_mel))
    return freq


def _mel_filterbank(
    sample_rate: int, n_fft: int, n_mels: int, f_min: float = 0.0, f_max: float | None = None
) -> np.ndarray:
    """Triangular mel filters ``[n_mels, n_fft // 2 + 1]`` with Slaney area normalisation."""
    f_max = sample_rate / 2 if f_max is None else f_max
    fft_freqs = np.linspace(0, sample_rate / 2, n_fft // 2 + 1)
    mel_freqs = _mel_to_hz(np.linspace(_hz_to_mel(np.array([f_min]))[0],
                                      _hz_to_mel(np.array([f_max]))[0], n_mels + 2))  # fmt: skip
    widths = np.diff(mel_freqs)
    ramps = mel_freqs[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / widths[:-1, None]
    upper = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    weights *= (2.0 / (mel_freqs[2 : n_mels + 2] - mel_freqs[:n_mels]))[:, None]
    return weights.astype(np.float32)


class MelFrontEnd(nn.Module):
    """1 s windows ``[B, 48000]`` -> OpenL3's decibel mel spectrogram ``[B, 1, n_mels, 199]``."""

    def __init__(self, *, n_mels: int = N_MELS) -> None:
        super().__init__()
        window = torch.hann_window(_N_FFT, periodic=True, dtype=torch.float64).float()
        self.register_buffer("window", window, persistent=False)
        filters = torch.from_numpy(_mel_filterbank(SAMPLE_RATE, _N_FFT, n_mels))
        self.register_buffer("filters", filters, persistent=False)

    def magnitude_mel(self, x: torch.Tensor) -> torch.Tensor:
        """Mel-filtered STFT magnitude ``[B, n_mels, 199]`` (before decibels)."""
        pad = (N_FRAMES - 1) * _HOP + _N_FFT - x.shape[-1]
        x = F.pad(x, (0, pad))
        spec = torch.stft(
            x, _N_FFT, _HOP, _N_FFT, window=self.window, center=False, return_complex=True
        ).abs()
        return torch.matmul(self.filters, spec)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mel = self.magnitude_mel(x)
        db = 10.0 * torch.log10(mel.clamp(min=1e-10))
        db = db - db.amax(dim=(1, 2), keepdim=True)
        return db.clamp(min=-80.0)[:, None]


def _conv(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, padding=1)


class OpenL3Audio(nn.Module):
    """Windows ``[B, 48000]`` at 48 kHz -> embeddings ``[B, 6144]``."""

    def __init__(self) -> None:
        super().__init__()
        self.frontend = MelFrontEnd()
        self.input_bn = nn.BatchNorm2d(1, eps=KERAS_BN_EPS)
        convs, bns = [], []
        cin = 1
        for width in _BLOCKS:
            convs += [_conv(cin, width), _conv(width, width)]
            bns += [nn.BatchNorm2d(width, eps=KERAS_BN_EPS) for _ in range(2)]
            cin = width
        self.convs = nn.ModuleList(convs)
        self.bns = nn.ModuleList(bns[:-1])  # no BatchNorm after audio_embedding_layer

    def embed_spectrogram(self, spec: torch.Tensor) -> torch.Tensor:
        """``[B, 1, 256, 199]`` decibel mel spectrograms -> ``[B, 6144]``."""
        x = self.input_bn(spec)
        for i, conv in enumerate(self.convs):
            x = conv(x)
            if i < len(self.bns):
                x = F.relu(self.bns[i](x))
            if i in (1, 3, 5):
                x = F.max_pool2d(x, 2, stride=2)
        x = F.max_pool2d(x, 8, stride=8, ceil_mode=True)  # 32x24 -> 4x3 ('same', exact here)
        return x.permute(0, 2, 3, 1).flatten(1)  # Keras flattens channels-last

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        return self.embed_spectrogram(self.frontend(windows))


class SpectrogramEmbedding(nn.Module):
    """`OpenL3Audio.embed_spectrogram` as a module: the part an inference backend runs
    (`nets.backends`); the STFT front-end stays in torch (ONNX has no complex STFT)."""

    def __init__(self, model: OpenL3Audio) -> None:
        super().__init__()
        self.model = model

    def forward(self, spec: torch.Tensor) -> torch.Tensor:
        return self.model.embed_spectrogram(spec)


# --- Keras weights ---------------------------------------------------------------------------

_FRONTEND_WEIGHTS = {"real_kernels", "imag_kernels", "freq2mel", "dft_real_kernels"}


def _torch_layers(model: OpenL3Audio) -> list[tuple[str, str]]:
    """(kind, torch prefix) in Keras build order."""
    layers = [("bn", "input_bn")]
    for i in range(len(model.convs)):
        layers.append(("conv", f"convs.{i}"))
        if i < len(model.bns):
            layers.append(("bn", f"bns.{i}"))
    return layers


def _read_keras_layers(path: str | Path) -> list[tuple[str, dict[str, np.ndarray]]]:
    """(layer name, {weight name: array}) for every layer with weights, in the file's order."""
    import h5py

    out = []
    with h5py.File(path, "r") as handle:
        group = handle.get("model_weights", handle)
        names = [n.decode() if isinstance(n, bytes) else n for n in group.attrs["layer_names"]]
        for name in names:
            raw = group[name].attrs.get("weight_names", [])
            weight_names = [w.decode() if isinstance(w, bytes) else w for w in raw]
            if weight_names:
                short = {
                    w.split("/")[-1].split(":")[0]: np.asarray(group[name][w]) for w in weight_names
                }
                out.append((name, short))
    return out


def state_dict_from_keras(path: str | Path) -> dict[str, torch.Tensor]:
    """Convert an OpenL3 audio Keras weight file (``openl3_audio_mel256_*.h5``).

    Raises:
        ValueError: the file's BatchNorm/Conv2D layers do not match the network's in number or
            shape (e.g. a linear or mel128 model, or an image model).
    """
    model = OpenL3Audio()
    keras = [(name, w) for name, w in _read_keras_layers(path) if not _FRONTEND_WEIGHTS & set(w)]
    expected = _torch_layers(model)
    if len(keras) != len(expected):
        raise ValueError(
            f"{path}: {len(keras)} BatchNormalization/Conv2D layers with weights, expected "
            f"{len(expected)} (an OpenL3 mel256 audio model)"
        )
    state: dict[str, torch.Tensor] = {}
    for (kind, prefix), (name, w) in zip(expected, keras, strict=True):
        if kind == "bn":
            if "moving_mean" not in w:
                raise ValueError(f"{path}: layer {name!r} is not BatchNormalization ({prefix})")
            state[f"{prefix}.weight"] = torch.from_numpy(w["gamma"])
            state[f"{prefix}.bias"] = torch.from_numpy(w["beta"])
            state[f"{prefix}.running_mean"] = torch.from_numpy(w["moving_mean"])
            state[f"{prefix}.running_var"] = torch.from_numpy(w["moving_variance"])
            state[f"{prefix}.num_batches_tracked"] = torch.tensor(0)
        else:
            if "kernel" not in w:
                raise ValueError(f"{path}: layer {name!r} is not Conv2D ({prefix})")
            state[f"{prefix}.weight"] = torch.from_numpy(w["kernel"]).permute(3, 2, 0, 1)
            state[f"{prefix}.bias"] = torch.from_numpy(w["bias"])
    for key, value in model.state_dict().items():
        if state[key].shape != value.shape:
            raise ValueError(
                f"{path}: {key} expected {tuple(value.shape)}, got {tuple(state[key].shape)}"
            )
    return {k: v.float().contiguous() if v.is_floating_point() else v for k, v in state.items()}


def _write_keras_weights(model: OpenL3Audio, path: str | Path) -> None:
    """Write `model`'s weights in the Keras weight-file layout OpenL3 ships (layer names as
    Keras numbers them in a fresh session), so the converter can be exercised end to end."""
    import h5py

    state = model.state_dict()
    with h5py.File(path, "w") as handle:
        names, n_bn, n_conv = [], 0, 0
        for kind, prefix in _torch_layers(model):
            if kind == "bn":
                n_bn += 1
                name = f"batch_normalization_{n_bn}"
                arrays = {
                    "gamma": state[f"{prefix}.weight"], "beta": state[f"{prefix}.bias"],
                    "moving_mean": state[f"{prefix}.running_mean"],
                    "moving_variance": state[f"{prefix}.running_var"],
                }  # fmt: skip
            else:
                n_conv += 1
                last = n_conv == len(model.convs)
                name = "audio_embedding_layer" if last else f"conv2d_{n_conv}"
                arrays = {
                    "kernel": state[f"{prefix}.weight"].permute(2, 3, 1, 0),
                    "bias": state[f"{prefix}.bias"],
                }
            group = handle.create_group(name)
            group.attrs["weight_names"] = [f"{name}/{k}:0".encode() for k in arrays]
            for key, value in arrays.items():
                group.create_dataset(f"{name}/{key}:0", data=value.numpy())
            names.append(name)
            if len(names) == 1:  # an activation layer between, as in the real file
                handle.create_group("activation_1").attrs["weight_names"] = []
                names.append("activation_1")
        handle.attrs["layer_names"] = [n.encode() for n in names]
        handle.attrs["backend"] = b"tensorflow"
        handle.attrs["keras_version"] = b"2.3.1"


def windows(
    audio: np.ndarray, *, n_steps: int, hop_s: float = 0.5
) -> tuple[np.ndarray, np.ndarray]:
    """OpenL3's framing with ``center=True``: pad half a window at both ends, take 1 s windows
    every `hop_s`; the first `n_steps` windows, zero-padded, and their mask.

    Returns:
        float32 ``[n_steps, 48000]`` and bool ``[n_steps]``.
    """
    hop = round(hop_s * SAMPLE_RATE)
    audio = np.asarray(audio, dtype=np.float32)
    out = np.zeros((n_steps, _WINDOW), dtype=np.float32)
    mask = np.zeros(n_steps, dtype=bool)
    if audio.size == 0:
        return out, mask
    padded = np.pad(audio[: (n_steps - 1) * hop + _WINDOW // 2], (_WINDOW // 2, _WINDOW // 2))
    count = min(1 + (len(padded) - _WINDOW) // hop, n_steps) if len(padded) >= _WINDOW else 0
    for i in range(count):
        out[i] = padded[i * hop : i * hop + _WINDOW]
    mask[:count] = True
    return out, mask


def _verify_against_reference(weights_h5: str | Path, reference_npz: str | Path) -> float:
    """Max absolute difference between this port and the original OpenL3's embeddings.

    `reference_npz` holds ``audio`` (float32 mono, 48 kHz) and ``embedding`` as produced by
    ``openl3.get_audio_embedding(audio, 48000, input_repr="mel256", content_type=...,
    embedding_size=6144, center=True, hop_size=0.5)`` with the same weight file.
    """
    reference = np.load(reference_npz)
    expected = np.asarray(reference["embedding"], dtype=np.float32)
    model = OpenL3Audio()
    model.load_state_dict(state_dict_from_keras(weights_h5))
    batch, mask = windows(reference["audio"], n_steps=len(expected))
    with torch.inference_mode():
        got = model.eval()(torch.from_numpy(batch[mask])).numpy()
    return float(np.abs(got - expected[: len(got)]).max())
