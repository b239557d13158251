"""Pose modality (paper 4.2, 5.2): multi-person 2D keypoints on the 12 sampled frames,
summarised per frame as 27 numbers, classified by a BiLSTM.

The paper used OpenPose, which cannot be installed here (it is a C++/Caffe build with weights
downloaded at build time). torchvision's Keypoint R-CNN (ResNet-50 FPN, COCO 17 keypoints) is
the default instead: a maintained multi-person model whose published COCO weights a user can
stage, running on CPU and GPU through the same torch code. Its 17 COCO points are mapped onto
the paper's 13 body joints (OpenPose BODY_25 order, face and feet dropped); COCO has no neck,
so the neck is the shoulders' midpoint, present only when both shoulders are.

Per-frame features (`FEATURE_COLUMNS`, 27 values): the 13 joints' (x, y), normalised per person
and averaged over the frame's people, then the person count; the rules, and where they depart
from the authors' code, are in `emotiw.modalities.pose_vector`. Detection runs on frames that
keep the video's aspect ratio (`MediaConfig.geometry`); per-axis normalisation makes the vector
independent of it.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch

from emotiw.io.weights import (
    PRETRAINED,
    RANDOM_INIT,
    Provenance,
    WeightsConfig,
    WeightSpec,
    build_model,
)
from emotiw.modalities import base, register
from emotiw.modalities.base import (
    CPU_STAGE,
    MODEL_STAGE,
    Column,
    Extraction,
    Modality,
    resolve_device,
)
from emotiw.modalities.nets import backends
from emotiw.modalities.nets.bilstm import BiLSTMHead
from emotiw.modalities.pose_vector import (
    COCO_KEYPOINTS,
    FEATURE_COLUMNS,
    FRAME_VECTORS,
    JOINTS,
    coco_to_joints,
    frame_features,
    joint_scores,
)

if TYPE_CHECKING:
    from emotiw.io.media import Clip

NAME = "pose"
_WEIGHTS = "torchvision-keypointrcnn-coco"
DETAIL_COLUMNS: tuple[str, ...] = (
    "slot", "frame_index", "x1", "y1", "x2", "y2", "score",
    *(f"{joint}_{part}" for joint in JOINTS for part in ("x", "y", "score")),
)  # fmt: skip


@dataclass(frozen=True)
class Config:
    """Pose modality settings.

    Attributes:
        weights: ``pretrained`` (the registry's COCO weights) or ``random-init`` (tests).
        seed: seed of random-init weights.
        input_size: the model's input short side in pixels (the speed knob; 320: native).
        score_threshold: minimum person detection score.
        keypoint_threshold: minimum keypoint score (Keypoint R-CNN heatmap logit) for a joint
            to count as detected.
        min_person_px: minimum person box height in frame pixels.
        max_people: people kept per frame, highest scores first.
        device: ``auto`` (CUDA when present), ``cpu`` or ``cuda``.
        backend: what runs the detector's ResNet-50-FPN backbone (most of its cost; RPN and
            heads stay eager): ``auto`` (ONNX Runtime on CPU, eager on CUDA), ``eager``
            PyTorch, ``compile``, ``onnxruntime`` or ``openvino`` (`modalities.nets.backends`;
            recorded in the provenance).
        placement: which actor pool of the pipeline runs the keypoint model: ``gpu`` (the
            model stage; CPU-only clusters run that pool on CPU) or ``cpu`` (the decode and
            extraction pool). See the pose benchmark for why ``gpu`` is the default.
        n_frames: sequence length.
        frame_vector: ``sheet`` (the authors' rules, `pose_vector`) or ``extent`` (the rule
            before them, which models trained on it keep).
        lstm_units, lstm: BiLSTM units (paper's best: 64); ``keras`` or ``torch`` LSTM.
        fc_units: width of a hidden layer (0, deployed: none; fusion takes the 128-d BiLSTM).
        lr: Adam learning rate (deployed: 1e-3; the paper's text says 0.01).
        l2: Keras' kernel L2 on the BiLSTM's and the output layer's kernels (deployed: 0.01).
    """

    # packages saved before these fields
    BEFORE: ClassVar[dict[str, Any]] = {"lstm": "torch", "frame_vector": "extent"}
    weights: str = PRETRAINED
    seed: int = 0
    input_size: int = 320
    score_threshold: float = 0.7
    keypoint_threshold: float = 2.0
    min_person_px: int = 24
    max_people: int = 20
    device: str = field(default="auto", metadata=base.RUNTIME)
    placement: str = field(default="gpu", metadata=base.RUNTIME)
    backend: str = field(default=backends.AUTO, metadata=base.RUNTIME)
    n_frames: int = 12
    frame_vector: str = "sheet"
    lstm_units: int = field(default=64, metadata=base.HEAD)
    lstm: str = field(default="keras", metadata=base.HEAD)
    fc_units: int = field(default=0, metadata=base.HEAD)
    lr: float = field(default=1e-3, metadata=base.HEAD)
    l2: float = field(default=0.01, metadata=base.HEAD)

    def __post_init__(self) -> None:
        if self.weights not in (PRETRAINED, RANDOM_INIT):
            raise ValueError(f"weights must be {PRETRAINED!r} or {RANDOM_INIT!r}")
        if not 64 <= self.input_size <= 1333:
            raise ValueError(f"input_size must be in [64, 1333], got {self.input_size}")
        if not 0.0 <= self.score_threshold <= 1.0:
            raise ValueError(f"score_threshold must be in [0, 1], got {self.score_threshold}")
        if self.min_person_px < 0 or self.max_people < 1:
            raise ValueError("min_person_px must be >= 0 and max_people >= 1")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be auto, cpu or cuda, got {self.device!r}")
        if self.frame_vector not in FRAME_VECTORS:
            raise ValueError(f"frame_vector must be one of {FRAME_VECTORS}")
        backends.check(self.backend)
        if self.placement not in ("cpu", "gpu"):
            raise ValueError(f"placement must be 'cpu' or 'gpu', got {self.placement!r}")
        if (
            min(self.n_frames, self.lstm_units) < 1
            or self.lr <= 0
            or min(self.fc_units, self.l2) < 0
        ):
            raise ValueError("n_frames, lstm_units, lr must be positive; fc_units, l2 >= 0")


def feature_shape(cfg: Config | None = None) -> tuple[int, int]:
    """Per-clip features: ``[n_frames, 27]``, columns `FEATURE_COLUMNS`."""
    return ((cfg or Config()).n_frames, len(FEATURE_COLUMNS))


FEATURE_SHAPE: tuple[int, int] = feature_shape()

# --- front-end -------------------------------------------------------------------------------


def _keypoint_model(cfg: Config, weights: WeightsConfig | None = None) -> tuple[Any, Provenance]:
    """Keypoint R-CNN in eval mode with registry weights (or explicit random init)."""
    from emotiw.modalities.nets.torchvision_ops import import_torchvision

    detection = import_torchvision().models.detection
    kwargs = {
        "weights": None,
        "weights_backbone": None,
        "num_classes": 2,
        "num_keypoints": len(COCO_KEYPOINTS),
        "min_size": cfg.input_size,
        "max_size": math.ceil(cfg.input_size * 16 / 9),
        "box_score_thresh": cfg.score_threshold,
        "box_detections_per_img": cfg.max_people,
    }
    return build_model(
        lambda: detection.keypointrcnn_resnet50_fpn(**kwargs),
        _WEIGHTS,
        choice=cfg.weights,
        seed=cfg.seed,
        cfg=weights,
    )


class Extractor:
    """Decoded clip -> pose features ``[12, 27]`` plus per-person detail rows."""

    def __init__(self, cfg: Config | None = None, weights: WeightsConfig | None = None) -> None:
        self.cfg = cfg or Config()
        self.device = resolve_device(self.cfg.device)
        model, provenance = _keypoint_model(self.cfg, weights)
        self.model = model.to(self.device)
        # The backbone sees the transform's batch, resized and padded to multiples of 32:
        # height and width vary with the frames' aspect, so both stay dynamic.
        size = self.cfg.input_size
        example = torch.zeros(1, 3, size, 32 * math.ceil(size * 1.5 / 32), device=self.device)
        self.model.backbone, provenance = backends.run_with(
            self.model.backbone, example, self.cfg.backend, provenance, weights, (0, 2, 3)
        )
        self.provenance: dict[str, Provenance] = {"pose": provenance}

    def detect(self, frames: np.ndarray | list[np.ndarray]) -> list[dict[str, np.ndarray]]:
        """Keypoint R-CNN on uint8 RGB frames (``[N, H, W, 3]``, or a list of ``[H, W, 3]``
        of any sizes) in one forward; float outputs as float32 (also under autocast)."""
        if len(frames) == 0:
            return []
        images = [torch.from_numpy(np.ascontiguousarray(f)).to(self.device) for f in frames]
        with torch.inference_mode():
            outputs = self.model([i.permute(2, 0, 1).float().div_(255.0) for i in images])
        return [{k: (v.float() if v.is_floating_point() else v).cpu().numpy()
                 for k, v in out.items()} for out in outputs]  # fmt: skip

    def people(self, output: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One frame's kept people: score and size filters, highest scores first."""
        cfg = self.cfg
        boxes, scores = output["boxes"], output["scores"]
        keep = (scores >= cfg.score_threshold) & (boxes[:, 3] - boxes[:, 1] >= cfg.min_person_px)
        order = np.argsort(-scores[keep], kind="stable")[: cfg.max_people]
        index = np.flatnonzero(keep)[order]
        points = output["keypoints"][index, :, :2]
        point_scores = output["keypoints_scores"][index]
        joints, seen = coco_to_joints(points, point_scores >= cfg.keypoint_threshold)
        return {"boxes": boxes[index], "scores": scores[index], "joints": joints,
                "seen": seen, "joint_scores": joint_scores(point_scores)}  # fmt: skip

    def __call__(self, clip: Clip) -> Extraction:
        return self.extract(clip.frames, clip.frame_mask, clip.frame_indices)

    def extract(
        self, frames: np.ndarray, frame_mask: np.ndarray, frame_indices: np.ndarray | None = None
    ) -> Extraction:
        """The sampled frames ``[T, H, W, 3]`` (real where `frame_mask`) -> features; what
        the scoring job's model stage calls with the frames decoded from the row's JPEGs."""
        return self.assemble(self.detect(frames[frame_mask]), frame_mask, frame_indices)

    def extract_many(self, clips: list[Clip], frame_batch: int) -> list[Extraction]:
        """Several clips' real frames through Keypoint R-CNN `frame_batch` at a time (frames
        of different clips share a forward: what keeps a GPU busy), then split per clip."""
        frames = [f for c in clips for f in c.frames[c.frame_mask]]
        outputs: list[dict[str, np.ndarray]] = []
        for i in range(0, len(frames), frame_batch):
            outputs.extend(self.detect(frames[i : i + frame_batch]))
        bounds = np.cumsum([0] + [int(c.frame_mask.sum()) for c in clips])
        return [self.assemble(outputs[a:b], c.frame_mask, c.frame_indices)
                for c, a, b in zip(clips, bounds[:-1], bounds[1:], strict=True)]  # fmt: skip

    def assemble(
        self,
        outputs: list[dict[str, np.ndarray]],
        frame_mask: np.ndarray,
        frame_indices: np.ndarray | None = None,
    ) -> Extraction:
        """One clip's detections (one per real frame, in order) -> its features."""
        if frame_indices is None:
            frame_indices = np.where(frame_mask, np.arange(len(frame_mask)), -1).astype(np.int32)
        slots = np.flatnonzero(frame_mask)
        per_slot: list[tuple[np.ndarray, np.ndarray]] = [
            (np.zeros((0, len(JOINTS), 2), np.float32), np.zeros((0, len(JOINTS)), bool))
        ] * len(frame_mask)
        rows: list[tuple[int, dict[str, np.ndarray]]] = []
        for slot, output in zip(slots, outputs, strict=True):
            kept = self.people(output)
            per_slot[slot] = (kept["joints"], kept["seen"])
            rows.append((int(slot), kept))
        features = frame_features(per_slot, self.cfg.n_frames, self.cfg.frame_vector)
        counts = [len(p[0]) for p in per_slot]
        return Extraction(
            features=features,
            details=_detail_columns(rows, frame_indices),
            stats={"n_people": int(sum(counts)), "frames_with_people": sum(c > 0 for c in counts)},
        )


def _detail_columns(
    rows: list[tuple[int, dict[str, np.ndarray]]], frame_indices: np.ndarray
) -> dict[str, np.ndarray]:
    slots = np.concatenate([np.full(len(r["scores"]), s) for s, r in rows] or [np.zeros(0)])
    slots = slots.astype(np.int16)

    def stack(key: str, shape: tuple[int, ...]) -> np.ndarray:
        parts = [r[key] for _, r in rows]
        return np.concatenate(parts) if parts else np.zeros((0, *shape), np.float32)

    boxes = stack("boxes", (4,))
    joints = stack("joints", (len(JOINTS), 2))
    joint_scores = stack("joint_scores", (len(JOINTS),))
    columns: dict[str, np.ndarray] = {
        "slot": slots,
        "frame_index": frame_indices[slots].astype(np.int32),
    }
    for k, name in enumerate(("x1", "y1", "x2", "y2")):
        columns[name] = boxes[:, k].astype(np.float32)
    columns["score"] = stack("scores", ()).astype(np.float32)
    for j, joint in enumerate(JOINTS):
        # Pixel positions as the model placed them; the score says whether the joint counted
        # as detected (>= keypoint_threshold) in the features.
        columns[f"{joint}_x"] = joints[:, j, 0].astype(np.float32)
        columns[f"{joint}_y"] = joints[:, j, 1].astype(np.float32)
        columns[f"{joint}_score"] = joint_scores[:, j].astype(np.float32)
    return columns


# --- head ------------------------------------------------------------------------------------


class Head(BiLSTMHead):
    """BiLSTM(64) -> FC(3) over ``[B, 12, 27]`` pose features (deployed; paper 5.2)."""

    def __init__(self, cfg: Config | None = None) -> None:
        self.cfg = cfg or Config()
        c = self.cfg
        super().__init__(n_features=len(FEATURE_COLUMNS), lstm_units=c.lstm_units,
                         fc_units=c.fc_units, lstm=c.lstm)  # fmt: skip


# --- registration ----------------------------------------------------------------------------

_WEIGHT_SPEC = WeightSpec(
    name=_WEIGHTS,
    filename="keypointrcnn_resnet50_fpn_coco-fc266e95.pth",
    sha256="fc266e95",  # torchvision publishes the first 8 hex digits of the sha256
    format="torch",
    url="https://download.pytorch.org/models/keypointrcnn_resnet50_fpn_coco-fc266e95.pth",
    metadata={
        "architecture": "torchvision keypointrcnn_resnet50_fpn (COCO_V1)",
        "keypoints": COCO_KEYPOINTS,
        "num_classes": 2,  # background, person
        "image_mean": (0.485, 0.456, 0.406),
        "image_std": (0.229, 0.224, 0.225),
    },
    license="BSD-3-Clause (torchvision); COCO annotations CC BY 4.0",
)


class Pose(Modality):
    """Body pose: Keypoint R-CNN -> ``[12, 27]`` -> BiLSTM head (paper 5.2); extracted in the
    model stage by default (`Config.placement`), on the row's JPEG frames."""

    name = NAME
    Config = Config
    order = 20
    presence = "n_people"
    stats = (Column("n_people", "int32", "people kept over the 12 frames"),)
    vote_weight = 0.07
    weight_specs = (_WEIGHT_SPEC,)
    # cpu-smoke leaves pose out: ~9.5 s a clip on 2 cores, weights not offline (benchmark)
    presets: ClassVar[dict[str, Any]] = {"paper": Config(), "cpu-smoke": None}
    feature_doc = "[12, 27] float32, flattened (13 joints x (x, y), mean over people; count)"

    def stage(self, cfg: Config) -> str:
        return MODEL_STAGE if cfg.placement == "gpu" else CPU_STAGE

    def on_device(self, cfg: Config, device: str) -> Config:
        return dataclasses.replace(cfg, device=device)

    def parameter_groups(self, head: Head, cfg: Config) -> list[dict[str, Any]]:
        """Keras' l2 on the kernels as Adam weight decay 2 * l2 (its loss term's gradient)."""
        kernels = {id(p) for p in head.kernels()}
        rest = [p for p in head.parameters() if id(p) not in kernels]
        return [{"params": head.kernels(), "weight_decay": 2 * cfg.l2}, {"params": rest}]


register(Pose())
