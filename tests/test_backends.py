"""CPU inference backends (`emotiw.modalities.nets.backends`): ONNX Runtime and OpenVINO run the
front-end networks with the same results as eager PyTorch on real images (FER class agreement
on real faces, the detector's keypoints, an ImageNet backbone's maps), exported files are
cached with their checksum, and a backend that is missing falls back to eager and says so in
the provenance. Speeds are in ``jobs/benchmark.py backends``, never asserted here."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from emotiw.io.weights import WeightsConfig
from emotiw.modalities import audio, face, pose
from emotiw.modalities.nets import backends
from helpers import real_photos

EXPORTED = ("onnxruntime", "openvino")


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> WeightsConfig:
    """A cache of this module's own: exports happen here, once per network and backend."""
    return WeightsConfig(cache_dir=str(tmp_path_factory.mktemp("cache")))


@pytest.fixture(scope="module")
def faces() -> torch.Tensor:
    """FER inputs ``[N, 1, 64, 64]`` of real faces: scikit-image's 100 LFW faces (25x25,
    scaled up) and dlib's boxes on two real photos (astronaut, Grace Hopper), also mirrored."""
    from PIL import Image
    from skimage import data

    lfw = data.lfw_subset()[:100]  # the first 100 are faces, the rest are not
    crops = [np.asarray(Image.fromarray(np.uint8(255 * f)).resize((64, 64), Image.BICUBIC))
             for f in lfw]  # fmt: skip
    lfw_batch = np.stack(crops).astype(np.float32) / 127.5 - 1.0
    detector = face.FaceDetector(face.Config())
    photos = real_photos()
    photos += [np.ascontiguousarray(p[:, ::-1]) for p in photos]
    real = [face._crop_faces(p, face.filter_boxes(detector(p), 40, 1), size=64) for p in photos]
    return torch.from_numpy(np.concatenate([lfw_batch, *real]))[:, None]


def _photos(height: int, width: int) -> torch.Tensor:
    from PIL import Image

    sized = [np.asarray(Image.fromarray(p).resize((width, height))) for p in real_photos()]
    return torch.from_numpy(np.stack(sized))


@pytest.mark.parametrize("backend", EXPORTED)
def test_fer_agrees_with_eager_on_real_faces(backend: str, faces: torch.Tensor, weights) -> None:
    eager = face.Extractor(face.Config(), weights).fer
    other = face.Extractor(face.Config(backend=backend), weights)
    assert other.provenance["fer"].backend.startswith(backend), other.provenance["fer"]
    assert f"[run by {backend} " in str(other.provenance["fer"])
    with torch.inference_mode():
        want, got = eager(faces).softmax(-1), other.fer(faces).softmax(-1)
    assert len(faces) >= 102
    # the documented bar: 99 % class agreement (two near-tied classes may swap within 1e-4)
    assert (want.argmax(-1) == got.argmax(-1)).float().mean() >= 0.99
    assert (want - got).abs().max() < 1e-4


@pytest.mark.parametrize("backend", EXPORTED)
def test_detector_keypoints_match_eager_on_real_photos(backend: str, weights) -> None:
    """The whole Keypoint R-CNN with its backbone run by `backend` (random-init weights: the
    COCO ones are not offline; score threshold 0 so it reports people): the same boxes and
    keypoints as eager, to a fraction of a pixel."""
    cfg = pose.Config(weights="random-init", score_threshold=0.0, max_people=5, device="cpu")
    frames = _photos(320, 480).numpy()
    want = pose.Extractor(cfg, weights).detect(frames)
    other = pose.Extractor(pose.Config(**{**cfg.__dict__, "backend": backend}), weights)
    got = other.detect(frames)
    assert other.provenance["pose"].backend.startswith(backend)
    near = []
    for w, g in zip(want, got, strict=True):
        assert len(w["boxes"]) > 0 and w["boxes"].shape == g["boxes"].shape
        assert np.abs(w["boxes"] - g["boxes"]).max() < 0.5
        scale = max(1.0, float(np.abs(w["keypoints_scores"]).max()))  # logits up to ~25
        assert np.abs(w["keypoints_scores"] - g["keypoints_scores"]).max() < 1e-3 * scale
        near.append(np.abs(w["keypoints"][..., :2] - g["keypoints"][..., :2]).max(-1) < 2.0)
    # A random-init heatmap is nearly flat: a near-tie may peak elsewhere (same score).
    assert np.concatenate([n.ravel() for n in near]).mean() >= 0.9


@pytest.mark.parametrize("backend", EXPORTED)
def test_image_backbone_maps_match_eager(backend: str, weights) -> None:
    """EfficientNet-Lite0 with its ImageNet weights (the scene backbone that is offline)."""
    from emotiw.modalities import scene
    from emotiw.modalities.nets.backbones import Backbone

    net = Backbone(scene.Config(backbone="efficientnet-lite0"), weights).eval()
    frames = _photos(320, 480)
    x = frames.permute(0, 3, 1, 2).float().sub(net.mean).div(net.std)
    runner = backends.accelerate(net.trunk, x[:1], backend,
                                 cache_dir=weights.resolved_cache_dir())  # fmt: skip
    assert runner.backend == backend, runner.describe
    with torch.inference_mode():
        want, got = net.trunk(x), runner(x)
    assert got.shape == want.shape == (2, 1280, 10, 15)
    assert (want - got).abs().max() / want.abs().max() < 1e-4


def test_openl3_embedding_matches_eager(weights) -> None:
    from emotiw.modalities.nets import openl3

    rng = np.random.default_rng(0)
    t = np.arange(3 * 48_000) / 48_000
    sound = (0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.normal(size=t.size)).astype(np.float32)
    wins, mask = openl3.windows(sound, n_steps=5, hop_s=0.5)
    x = torch.from_numpy(wins[mask])
    cfg = audio.Config(weights="random-init")
    eager = audio.Extractor(cfg, weights)
    for backend in EXPORTED:
        other = audio.Extractor(audio.Config(weights="random-init", backend=backend), weights)
        assert other.provenance["audio"].backend.startswith(backend)
        with torch.inference_mode():
            want, got = eager.embed(x), other.embed(x)
        assert (want - got).abs().max() / want.abs().max() < 1e-4, backend


def test_exports_are_cached_with_a_checksum_and_missing_backends_fall_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from emotiw.modalities.nets.mini_xception import MiniXception

    torch.manual_seed(0)
    net, x = MiniXception().eval(), torch.randn(3, 1, 64, 64)
    first = backends.accelerate(net, x[:1], "onnxruntime", cache_dir=tmp_path)
    (exported,) = tmp_path.glob("backends/*/model.onnx")
    stamp = exported.stat().st_mtime_ns
    backends.accelerate(net, x[:1], "onnxruntime", cache_dir=tmp_path)
    assert exported.stat().st_mtime_ns == stamp  # reused, not exported again
    exported.write_bytes(exported.read_bytes()[:-10])  # damaged: its sha256 no longer matches
    again = backends.accelerate(net, x[:1], "onnxruntime", cache_dir=tmp_path)
    with torch.inference_mode():
        assert torch.allclose(first(x), again(x), atol=1e-6)
    with torch.no_grad():
        net.classifier.bias.add_(1.0)  # other weights: another export, never the stale one
    assert len(list(tmp_path.glob("backends/*/model.onnx"))) == 1
    backends.accelerate(net, x[:1], "onnxruntime", cache_dir=tmp_path)
    assert len(list(tmp_path.glob("backends/*/model.onnx"))) == 2

    monkeypatch.setitem(sys.modules, "openvino", None)  # as if not installed
    missing = backends.accelerate(net, x[:1], "openvino", cache_dir=tmp_path)
    assert missing.backend == "eager" and missing.describe == "eager (openvino: not installed)"
    with pytest.raises(ValueError, match="backend must be one of"):
        face.Config(backend="tensorrt")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `auto` on a CPU without it
    assert backends.accelerate(net, x[:1], "auto", cache_dir=tmp_path).describe == (
        "eager (onnxruntime: not installed)"
    )


def test_auto_runs_onnxruntime_on_cpu_and_eager_on_cuda(weights) -> None:
    """The default backend per device type (README: CPU inference backends): every
    front-end's default is ``auto``, which means ONNX Runtime on a CPU, eager on CUDA."""
    assert {face.Config().backend, pose.Config().backend, audio.Config().backend} == {"auto"}
    assert backends.choose("auto", "cpu") == "onnxruntime"
    assert backends.choose("auto", torch.device("cuda", 0)) == "eager"
    assert backends.choose("openvino", "cuda") == "openvino"  # named: as asked (then falls back)
    default = face.Extractor(face.Config(), weights)
    assert "[run by onnxruntime " in str(default.provenance["fer"])
