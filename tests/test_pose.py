"""Pose modality: COCO -> 13-joint mapping, feature maths, Keypoint R-CNN end to end with
random-init weights, NMS fallback, registry entry, head."""

from __future__ import annotations

import hashlib
import importlib.metadata
from pathlib import Path

import numpy as np
import pytest
import torch

from emotiw import modalities
from emotiw.io import weights as W
from emotiw.io.media import decode
from emotiw.modalities import pose, pose_vector


def test_coco_mapping_is_what_the_docs_say() -> None:
    coco = pose.COCO_KEYPOINTS
    assert pose.JOINTS == (
        "neck", "right_shoulder", "right_elbow", "right_wrist", "left_shoulder", "left_elbow",
        "left_wrist", "right_hip", "right_knee", "right_ankle", "left_hip", "left_knee",
        "left_ankle",
    )  # fmt: skip
    assert pose_vector._COCO_FOR_JOINT["neck"] == (
        coco.index("left_shoulder"),
        coco.index("right_shoulder"),
    )
    for joint in pose.JOINTS[1:]:
        assert coco[pose_vector._COCO_FOR_JOINT[joint]] == joint
    dropped = {"nose", "left_eye", "right_eye", "left_ear", "right_ear"}
    used = {coco[i] for j in pose.JOINTS[1:] for i in [pose_vector._COCO_FOR_JOINT[j]]}
    assert used.isdisjoint(dropped) and len(used) == 12
    assert pose.FEATURE_COLUMNS[:2] == ("neck_x", "neck_y")
    assert pose.FEATURE_COLUMNS[-1] == "n_people" and len(pose.FEATURE_COLUMNS) == 27


def test_coco_to_joints_values_and_neck() -> None:
    points = np.stack([np.arange(17.0), 100 + np.arange(17.0)], axis=-1)[None]  # x = COCO index
    visible = np.ones((1, 17), bool)
    joints, seen = pose_vector.coco_to_joints(points, visible)
    assert joints.shape == (1, 13, 2) and seen.all()
    assert joints[0, 0].tolist() == [5.5, 105.5]  # neck = mean of shoulders 5 and 6
    assert joints[0, 1, 0] == 6 and joints[0, 4, 0] == 5  # right / left shoulder
    assert joints[0, -1, 0] == 15  # left ankle
    visible[0, 6] = False  # right shoulder unseen -> neck unseen too
    _, seen = pose_vector.coco_to_joints(points, visible)
    assert not seen[0, 0] and not seen[0, 1] and seen[0, 4]


def test_normalise_person_follows_the_sheet() -> None:
    joints = np.zeros((13, 2), np.float32)
    seen = np.zeros(13, bool)
    joints[0], joints[7], joints[12] = (110, 200), (100, 300), (130, 400)
    seen[[0, 7, 12]] = True
    joints[5] = (9999, -9999)  # unseen: must not move the box
    out = pose_vector._normalise_person(joints, seen)
    # x and y min-max scaled separately: extent x 30, y 200
    np.testing.assert_allclose(out[0], [10 / 30, 0])
    np.testing.assert_allclose(out[7], [0, 100 / 200])
    np.testing.assert_allclose(out[12], [1, 1])
    assert (out[~seen] == -1).all()  # a missing joint is (-1, -1)
    # invariant to stretching one axis (what detection on aspect-kept frames relies on)
    stretched = joints * np.array([2.7, 1.0], np.float32)
    np.testing.assert_allclose(pose_vector._normalise_person(stretched, seen), out, rtol=1e-6)
    single = np.zeros(13, bool)
    single[3] = True
    one = pose_vector._normalise_person(joints, single)  # zero extent: 0, not the authors' NaN
    assert one[3].tolist() == [0, 0] and (one[~single] == -1).all() and np.isfinite(one).all()
    assert not pose_vector._normalise_person(joints, np.zeros(13, bool)).any()  # nobody: zeros
    # the rule before the sheet: one scale for both axes, unseen joints 0
    old = pose_vector._normalise_person(joints, seen, "extent")
    np.testing.assert_allclose(old[0], [10 / 200, 0])
    assert not old[5].any()


def test_frame_features_mean_over_people_with_missing_joints_as_minus_one() -> None:
    a = np.zeros((13, 2), np.float32)
    a[0], a[1] = (0, 0), (10, 10)
    b = np.zeros((13, 2), np.float32)
    b[0], b[1], b[2] = (0, 0), (20, 10), (0, 20)
    seen_a = np.zeros(13, bool)
    seen_a[[0, 1]] = True
    seen_b = np.zeros(13, bool)
    seen_b[[0, 1, 2]] = True
    nobody = np.zeros(13, bool)  # a person without a detected joint: counted, not averaged
    frames = [
        (np.stack([a, b, a]), np.stack([seen_a, seen_b, nobody])),
        (np.zeros((0, 13, 2)), np.zeros((0, 13), bool)),
    ]
    out = pose_vector.frame_features(frames, n_frames=4)
    assert out.shape == (4, 27) and out.dtype == np.float32
    np.testing.assert_allclose(out[0, 0:2], [0, 0])  # neck: both at the origin
    np.testing.assert_allclose(out[0, 2:4], [1, (1 + 0.5) / 2])  # a (1, 1), b (1, 0.5)
    np.testing.assert_allclose(out[0, 4:6], [(-1 + 0) / 2, (-1 + 1) / 2])  # a lacks joint 2
    assert (out[0, 6:26] == -1).all()  # nobody has these joints
    assert out[0, 26] == 3  # the raw person count
    assert not out[1:].any()
    only_nobody = pose_vector.frame_features([(a[None], nobody[None])])
    assert not only_nobody[0, :26].any() and only_nobody[0, 26] == 1
    old = pose_vector.frame_features(frames, n_frames=4, rule="extent")
    np.testing.assert_allclose(old[0, 4:6], [0, 1])  # extent: only b has joint 2
    with pytest.raises(ValueError, match="frame_vector"):
        pose_vector.frame_features(frames, rule="openpose")


# --- the model -------------------------------------------------------------------------------

FAST = pose.Config(
    weights="random-init", seed=1, input_size=160, score_threshold=0.0, keypoint_threshold=-1e9,
    max_people=1,
)  # fmt: skip


@pytest.fixture(scope="module")
def extractor() -> pose.Extractor:
    return pose.Extractor(FAST)


@pytest.mark.e2e  # ~20 s: out of make test-fast, still in make test
def test_extractor_end_to_end_random_init(extractor, sample_corpus: Path) -> None:
    clip = decode(sample_corpus / "clip_0000.mp4")
    out = extractor(clip)
    assert out.features.shape == (12, 27) and out.features.dtype == np.float32
    assert np.isfinite(out.features).all()
    counts = out.features[:, 26]
    assert set(counts.tolist()) <= {0.0, 1.0} and out.stats["n_people"] == counts.sum()
    coords = out.features[:, :26]
    assert coords.min() >= -1 and coords.max() <= 1
    assert set(out.details) == set(pose.DETAIL_COLUMNS) and out.n_details == counts.sum()
    ran = f"[run by onnxruntime {importlib.metadata.version('onnxruntime')}]"  # `auto` on CPU
    assert str(extractor.provenance["pose"]) == (
        f"torchvision-keypointrcnn-coco random-init(seed=1) {ran}"
    )
    # Determinism: a second extractor with the same seed gives the same features.
    np.testing.assert_array_equal(pose.Extractor(FAST)(clip).features, out.features)


def test_padded_frames_are_not_run(extractor, sample_corpus: Path) -> None:
    clip = decode(sample_corpus / "clip_0001.mp4")
    mask = clip.frame_mask.copy()
    mask[4:] = False
    short = type(clip)(
        clip.frames, mask, clip.frame_indices, clip.audio, clip.audio_rate, clip.meta
    )
    out = extractor(short)
    assert not out.features[4:].any()
    assert set(out.details["slot"].tolist()) <= {0, 1, 2, 3}


def test_pretrained_weights_missing_is_a_clear_error(tmp_path: Path) -> None:
    cfg = W.WeightsConfig(
        cache_dir=str(tmp_path), weights_dir=str(tmp_path / "w"), allow_download=False
    )
    with pytest.raises(W.WeightsError) as info:
        pose.Extractor(pose.Config(), cfg)
    text = str(info.value)
    assert "keypointrcnn_resnet50_fpn_coco-fc266e95.pth" in text and "EMOTIW_WEIGHTS" in text
    assert "download.pytorch.org" in text


def test_hash_prefix_entries_record_the_full_digest(tmp_path: Path) -> None:
    data = b"published-weights" * 10
    digest = hashlib.sha256(data).hexdigest()
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "f.pth").write_bytes(data)
    cfg = W.WeightsConfig(cache_dir=str(tmp_path / "c"), weights_dir=str(tmp_path / "w"))
    try:
        W.register(
            W.WeightSpec(name="t-prefix", filename="f.pth", sha256=digest[:8], format="torch")
        )
        assert W.resolve("t-prefix", cfg).provenance.sha256 == digest
        W.register(
            W.WeightSpec(name="t-prefix", filename="f.pth", sha256="deadbeef", format="torch")
        )
        with pytest.raises(W.WeightsError, match="checksum"):
            W.resolve(
                "t-prefix",
                W.WeightsConfig(cache_dir=str(tmp_path / "c2"), weights_dir=str(tmp_path / "w")),
            )
    finally:
        W.REGISTRY.pop("t-prefix", None)
    with pytest.raises(ValueError, match="8 lowercase hex"):
        W.register(W.WeightSpec(name="t-short", filename="x", sha256="abc", format="torch"))


# --- head ------------------------------------------------------------------------------------


def test_head_layout_and_optimizer() -> None:
    """Shapes and gradients of every head: `test_modalities`; here what is pose's own."""
    spec = modalities.get("pose")
    cfg = pose.Config()
    head = spec.head(cfg)
    x = torch.randn(5, 12, 27)  # deployed: no hidden layer, the fusion takes the BiLSTM's 128
    assert head.forward_features(x).shape == (5, 128) and head.feature_dim == 128
    group = spec.optimizer(spec.parameter_groups(head, cfg), cfg).param_groups[0]
    assert (group["lr"], group["weight_decay"]) == (1e-3, 0.02)  # Keras l2(0.01) on kernels
    assert head.lstm.output_size == 128
    hidden = pose.Head(pose.Config(fc_units=32, lstm="torch"))  # the layout before
    assert hidden.forward_features(x).shape == (5, 32) and hidden.lstm.hidden_size == 64


def test_config_validation() -> None:
    for bad in (
        {"weights": "coco"},
        {"input_size": 10},
        {"placement": "tpu"},
        {"device": "mps"},
        {"score_threshold": 2},
        {"max_people": 0},
    ):
        with pytest.raises(ValueError):
            pose.Config(**bad)
