"""Face modality: converted FER weights checked independently, feature maths, size filter,
detection with known face counts, bad frames, head."""

from __future__ import annotations

import csv
import importlib.metadata
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from numpy.lib.stride_tricks import sliding_window_view

from emotiw import modalities
from emotiw.io.media import Clip, ClipMeta, decode
from emotiw.io.weights import WeightsConfig, load_state_dict, resolve
from emotiw.modalities import face
from emotiw.modalities.face import _FER_CLASSES
from emotiw.modalities.nets.mini_xception import MiniXception

ASTRONAUT_FACE = (76, 265, 166, 175)  # dlib HOG box (top, right, bottom, left)


@pytest.fixture(scope="module")
def weights_cfg(tmp_path_factory) -> WeightsConfig:
    return WeightsConfig(cache_dir=str(tmp_path_factory.mktemp("wcache")), allow_download=False)


@pytest.fixture(scope="module")
def extractor(weights_cfg) -> face.Extractor:
    return face.Extractor(face.Config(), weights_cfg)


@pytest.fixture(scope="module")
def fer(weights_cfg) -> MiniXception:
    model = MiniXception()
    model.load_state_dict(load_state_dict("fer-mini-xception", weights_cfg)[0])
    return model.eval()


def make_clip(frames: np.ndarray, mask: np.ndarray | None = None) -> Clip:
    n = len(frames)
    mask = np.ones(n, bool) if mask is None else mask
    meta = ClipMeta(25.0, 125, 5.0, frames.shape[2], frames.shape[1], "x", None, False, None, 0, 0)
    indices = np.where(mask, np.arange(n) * 10, -1).astype(np.int32)
    return Clip(frames, mask, indices, np.zeros(0, np.float32), 48_000, meta)


def astronaut_face(side: int) -> np.ndarray:
    from PIL import Image
    from skimage import data

    top, right, bottom, left = ASTRONAUT_FACE
    m = 14
    crop = data.astronaut()[top - m : bottom + m, left - m : right + m]
    return np.asarray(Image.fromarray(crop).resize((side, side), Image.Resampling.BILINEAR))


# --- conversion, checked against an independent numpy forward of the HDF5 arrays ------------


def _np_conv(x: np.ndarray, kernel: np.ndarray, stride: int = 1) -> np.ndarray:
    """'valid' conv, x: [H, W, C], kernel: Keras (kh, kw, cin, cout)."""
    kh, kw = kernel.shape[:2]
    win = sliding_window_view(x, (kh, kw), axis=(0, 1))[::stride, ::stride]  # H', W', C, kh, kw
    return np.einsum("hwcij,ijco->hwo", win, kernel)


def _np_depthwise(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    win = sliding_window_view(np.pad(x, ((1, 1), (1, 1), (0, 0))), (3, 3), axis=(0, 1))
    return np.einsum("hwcij,ijc->hwc", win, kernel[..., 0])


def _np_bn(x: np.ndarray, w: dict) -> np.ndarray:
    return w["gamma"] * (x - w["moving_mean"]) / np.sqrt(w["moving_variance"] + 1e-3) + w["beta"]


def _h5_layers(path: Path) -> dict[str, dict[str, np.ndarray]]:
    out = {}
    with h5py.File(path, "r") as f:
        group = f["model_weights"]
        for layer in group:
            out[layer] = {}
            group[layer].visititems(
                lambda name, obj, layer=layer: (
                    out[layer].__setitem__(
                        name.split("/")[-1].split(":")[0], np.asarray(obj, dtype=np.float64)
                    )
                    if isinstance(obj, h5py.Dataset)
                    else None
                )
            )
    return out


def test_converted_weights_match_numpy_forward_of_hdf5(fer, weights_cfg) -> None:
    k = _h5_layers(resolve("fer-mini-xception", weights_cfg).path)
    x = np.random.default_rng(0).uniform(-1, 1, (64, 64, 1))
    # stem: conv valid, BN, ReLU, twice
    y = np.maximum(_np_bn(_np_conv(x, k["conv2d_1"]["kernel"]), k["batch_normalization_1"]), 0)
    y = np.maximum(_np_bn(_np_conv(y, k["conv2d_2"]["kernel"]), k["batch_normalization_2"]), 0)
    # module 1: residual 1x1/2 + BN; sep-conv, BN, ReLU, sep-conv, BN, 'same' max-pool /2
    residual = _np_bn(_np_conv(y, k["conv2d_3"]["kernel"], stride=2), k["batch_normalization_3"])
    s1 = k["separable_conv2d_1"]
    z = _np_conv(_np_depthwise(y, s1["depthwise_kernel"]), s1["pointwise_kernel"])
    z = np.maximum(_np_bn(z, k["batch_normalization_4"]), 0)
    s2 = k["separable_conv2d_2"]
    z = _np_bn(
        _np_conv(_np_depthwise(z, s2["depthwise_kernel"]), s2["pointwise_kernel"]),
        k["batch_normalization_5"],
    )
    z = np.pad(z, ((0, 1), (0, 1), (0, 0)), constant_values=-np.inf)  # TF 'same': bottom/right
    z = sliding_window_view(z, (3, 3), axis=(0, 1))[::2, ::2].max(axis=(-2, -1))
    expected = z + residual  # [30, 30, 16]
    with torch.no_grad():
        t = torch.from_numpy(x.transpose(2, 0, 1)[None].astype(np.float32))
        got = fer.blocks[0](fer.stem(t))[0].numpy().transpose(1, 2, 0)
    assert got.shape == expected.shape == (30, 30, 16)
    np.testing.assert_allclose(got, expected, atol=2e-4, rtol=1e-4)


def test_astronaut_is_happy(fer) -> None:
    from skimage import data

    crops = face._crop_faces(data.astronaut(), np.array([ASTRONAUT_FACE]), size=64)
    assert crops.shape == (1, 64, 64) and crops.min() >= -1 and crops.max() <= 1
    with torch.no_grad():
        probs = fer(torch.from_numpy(crops)[:, None]).softmax(-1)[0].numpy()
    assert _FER_CLASSES[int(probs.argmax())] == "happy"
    assert probs[_FER_CLASSES.index("happy")] > 0.9
    assert probs.sum() == pytest.approx(1.0, abs=1e-5)


# --- pure maths ------------------------------------------------------------------------------


def test_frame_features_exact() -> None:
    a = np.array([[0.1, 0.0, 0.0, 0.6, 0.1, 0.1, 0.1], [0.3, 0.1, 0.1, 0.2, 0.1, 0.1, 0.1]])
    b = np.array([[0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0]])
    out = face.frame_features([a, np.zeros((0, 7)), b], n_frames=5)
    assert out.shape == (5, 22) and out.dtype == np.float32
    np.testing.assert_allclose(out[0, :7], a.min(0), atol=1e-7)
    np.testing.assert_allclose(out[0, 7:14], a.max(0), atol=1e-7)
    np.testing.assert_allclose(out[0, 14:21], a.mean(0), atol=1e-7)
    assert out[0, 21] == 2
    assert not out[1].any() and not out[3:].any()  # no faces, and padding
    np.testing.assert_allclose(out[2, :21], np.tile(b[0], 3))
    assert out[2, 21] == 1
    assert face.FEATURE_COLUMNS[0] == "min_angry" and face.FEATURE_COLUMNS[-1] == "n_faces"
    assert face.FEATURE_COLUMNS[7 + 3] == "max_happy" and len(face.FEATURE_COLUMNS) == 22


def test_box_iou() -> None:
    a = np.array([0, 10, 10, 0])
    assert face.box_iou(a, a) == 1.0
    assert face.box_iou(a, np.array([0, 20, 10, 10])) == 0.0
    assert face.box_iou(a, np.array([0, 15, 10, 5])) == pytest.approx(50 / 150)


def test_filter_boxes_needs_width_and_height() -> None:
    boxes = np.array(
        [
            [0, 50, 40, 10],  # 40 x 40: kept (edge)
            [0, 70, 30, 10],  # 60 wide, 30 high: dropped (the original code's bug kept it)
            [0, 40, 60, 10],  # 30 wide, 60 high: dropped
            [0, 110, 90, 10],  # 100 x 90: kept, largest
            [0, 49, 39, 10],  # 39 x 39: dropped
        ]
    )
    kept = face.filter_boxes(boxes, min_px=40, max_faces=16)
    assert kept.tolist() == [[0, 110, 90, 10], [0, 50, 40, 10]]
    assert face.filter_boxes(boxes, 40, max_faces=1).tolist() == [[0, 110, 90, 10]]
    assert face.filter_boxes(np.zeros((0, 4)), 40, 16).shape == (0, 4)


# --- extractor on frames with known faces ----------------------------------------------------


def test_sample_corpus_counts_and_provenance(extractor, sample_corpus: Path) -> None:
    rows = list(csv.DictReader((sample_corpus / "cues.csv").open()))
    seen = set()
    for row in rows:
        if row["face_cue"] in seen:
            continue
        seen.add(row["face_cue"])
        out = extractor(decode(sample_corpus / f"{row['name']}.mp4"))
        n = int(row["n_faces"])
        assert out.features.shape == (12, 22) and out.features.dtype == np.float32
        assert out.features[:, 21].tolist() == [n] * 12
        assert out.stats == {"n_faces": 12 * n, "frames_with_faces": 12}
        assert out.n_details == 12 * n
        happy = out.details["prob_happy"]
        assert happy.mean() > 0.8  # the astronaut smiles
        assert np.isfinite(out.features).all()
        widths = out.details["right"] - out.details["left"]
        assert (widths >= 40).all()
    prov = extractor.provenance
    assert prov["fer"].source.startswith("package:fer/") and prov["fer"].sha256
    assert prov["face_detector"].source.startswith("builtin:dlib")


def test_black_frames_and_padding_give_zeros(extractor) -> None:
    frames = np.zeros((12, 320, 480, 3), np.uint8)
    out = extractor(make_clip(frames))
    assert not out.features.any() and out.n_details == 0 and out.stats["n_faces"] == 0
    frames[0, 100:220, 180:300] = astronaut_face(120)
    frames[6, 100:220, 180:300] = astronaut_face(120)  # in a padded slot: must be ignored
    mask = np.array([True] * 5 + [False] * 7)
    out = extractor(make_clip(frames, mask))
    assert out.features[:, 21].tolist() == [1] + [0] * 11
    assert out.details["slot"].tolist() == [0] and out.details["frame_index"].tolist() == [0]


def test_tiny_faces_are_dropped(extractor) -> None:
    frames = np.full((12, 320, 480, 3), 90, np.uint8)
    for x in range(20, 440, 60):
        frames[:, 140:170, x : x + 30] = astronaut_face(30)
    out = extractor(make_clip(frames))
    assert out.stats["n_faces"] == 0 and not out.features.any()


def test_many_faces_are_capped_keeping_the_largest(weights_cfg) -> None:
    frame = np.full((320, 480, 3), 120, np.uint8)
    sides = [90, 80, 70, 64, 64, 64, 64, 64, 64]
    positions = [
        (10, 10),
        (10, 170),
        (10, 330),
        (150, 10),
        (150, 100),
        (150, 190),
        (150, 280),
        (150, 370),
        (230, 200),
    ]
    for side, (y, x) in zip(sides, positions, strict=True):
        frame[y : y + side, x : x + side] = astronaut_face(side)
    clip = make_clip(np.repeat(frame[None], 12, 0))
    uncapped = face.Extractor(face.Config(max_faces_per_frame=50), weights_cfg)(clip)
    n_found = int(uncapped.features[0, 21])
    assert n_found >= 7
    capped = face.Extractor(face.Config(max_faces_per_frame=3), weights_cfg)(clip)
    assert capped.features[:, 21].tolist() == [3] * 12
    widths = capped.details["right"][:3] - capped.details["left"][:3]
    all_widths = uncapped.details["right"][:n_found] - uncapped.details["left"][:n_found]
    assert widths.tolist() == sorted(all_widths.tolist(), reverse=True)[:3]


def test_random_init_fer_is_deterministic_and_recorded(weights_cfg, sample_corpus) -> None:
    cfg = face.Config(weights="random-init", seed=5)
    a, b = face.Extractor(cfg, weights_cfg), face.Extractor(cfg, weights_cfg)
    ran = f"[run by onnxruntime {importlib.metadata.version('onnxruntime')}]"  # `auto` on CPU
    assert str(a.provenance["fer"]) == f"fer-mini-xception random-init(seed=5) {ran}"
    clip = decode(sample_corpus / "clip_0000.mp4")
    np.testing.assert_array_equal(a(clip).features, b(clip).features)


def test_cnn_detector_is_selectable(weights_cfg, sample_corpus) -> None:
    cnn_cfg = face.Config(detector="cnn", upsample=0, detect_scale=1.0)
    det = face.FaceDetector(cnn_cfg, weights_cfg)
    assert det.provenance.source.startswith("package:face_recognition_models/")
    assert det.provenance.sha256 == resolve("dlib-cnn-face-detector", weights_cfg).spec.sha256
    frame = decode(sample_corpus / "clip_0000.mp4").frames[0]
    hog = face.FaceDetector(face.Config(), weights_cfg)
    assert len(det(frame)) == len(hog(frame)) >= 1


def test_downscaled_detection_maps_boxes_back(weights_cfg) -> None:
    frame = np.full((320, 480, 3), 100, np.uint8)
    frame[60:220, 200:360] = astronaut_face(160)
    full = face.FaceDetector(face.Config(upsample=0), weights_cfg)(frame)
    half = face.FaceDetector(face.Config(upsample=0, detect_scale=0.5), weights_cfg)(frame)
    assert len(full) == len(half) == 1
    # Same face in full-frame pixels (dlib's window sizes are discrete, so sizes differ a bit;
    # boxes left in half-scale pixels would not overlap at all).
    assert face.box_iou(full[0], half[0]) > 0.6


def test_config_validation() -> None:
    for bad in (
        {"detector": "mtcnn"},
        {"weights": "imagenet"},
        {"detect_scale": 0},
        {"crop_margin": 2.0},
        {"upsample": 5},
    ):
        with pytest.raises(ValueError):
            face.Config(**bad)


# --- head ------------------------------------------------------------------------------------


def test_head_layout_and_optimizer() -> None:
    """Shapes and gradients of every head: `test_modalities`; here what is face's own."""
    spec = modalities.get("face")
    cfg = face.Config()
    head = spec.head(cfg)
    assert head.forward_features(torch.randn(4, 12, 22)).shape == (4, 8) and head.feature_dim == 8
    opt = spec.optimizer(spec.parameter_groups(head, cfg), cfg)
    assert opt.param_groups[0]["lr"] == 0.005
    assert head.lstm.output_size == 64  # Keras BiLSTM(32); cpu-smoke: torch's LSTM
    assert modalities.get("face").head(face.Face.presets["cpu-smoke"]).lstm.hidden_size == 32
