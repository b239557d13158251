"""Arrow schemas of the tables the system writes, defined once for writers, readers and tests.

Functions rather than module constants so that importing this module does not import pyarrow.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from emotiw.config import CLASS_NAMES
from emotiw.modalities import MODALITIES
from emotiw.weights import FER_CLASSES

if TYPE_CHECKING:
    import pyarrow as pa

# Per-face detail rows (face modality): one row per kept face of a sampled frame.
FACE_BOX_COLUMNS: tuple[str, ...] = ("top", "right", "bottom", "left")
FACE_PROB_COLUMNS: tuple[str, ...] = tuple(f"prob_{name}" for name in FER_CLASSES)
FACE_DETAIL_COLUMNS: tuple[str, ...] = (
    "slot",
    "frame_index",
    *FACE_BOX_COLUMNS,
    *FACE_PROB_COLUMNS,
)


def face_detail_schema() -> pa.Schema:
    """Schema of the per-face table (without the clip-identifying columns the job adds)."""
    import pyarrow as pa

    fields = [pa.field("slot", pa.int16()), pa.field("frame_index", pa.int32())]
    fields += [pa.field(c, pa.int16()) for c in FACE_BOX_COLUMNS]
    fields += [pa.field(c, pa.float32()) for c in FACE_PROB_COLUMNS]
    return pa.schema(fields)


# The feature table (extract job -> training, evaluation): one row per clip.
FEATURE_COLUMNS_DOC: dict[str, str] = {
    "video_id": "file name without extension (the VGAF id)",
    "uri": "where the clip was read from",
    "content_sha256": "sha256 of the clip's bytes",
    "label": "class index 0 positive, 1 neutral, 2 negative; null if unlabelled",
    "error": "null, or '<reason>: <message>' when the clip failed (features then null)",
    "error_reason": "machine-readable reason of `error`",
    "duration_s": "container duration",
    "has_audio": "an audio track with sound (audio features are zeros otherwise)",
    "n_frames": "real sampled frames (of 12)",
    "n_faces": "faces kept over the 12 frames",
    "n_people": "people kept over the 12 frames",
    "scene_jpeg": "the 12 frames as JPEG, b'' where padded",
    "pose": "[12, 27] float32, flattened",
    "audio": "[11, D] float32, flattened (D 6144 OpenL3 or 128 log-mel)",
    "face": "[12, 22] float32, flattened",
    "weights": "JSON: front-end -> weights provenance (sha256 and source, or random-init)",
    "code_version": "emotiw version that wrote the row",
    "run_id": "extract run that wrote the row",
    "extracted_at": "UTC time the row was made",
}


def feature_schema() -> pa.Schema:
    """Schema of the feature table."""
    import pyarrow as pa

    types = {
        "video_id": pa.string(),
        "uri": pa.string(),
        "content_sha256": pa.string(),
        "label": pa.int8(),
        "error": pa.string(),
        "error_reason": pa.string(),
        "duration_s": pa.float32(),
        "has_audio": pa.bool_(),
        "n_frames": pa.int16(),
        "n_faces": pa.int32(),
        "n_people": pa.int32(),
        "scene_jpeg": pa.list_(pa.binary()),
        "pose": pa.list_(pa.float32()),
        "audio": pa.list_(pa.float32()),
        "face": pa.list_(pa.float32()),
        "weights": pa.string(),
        "code_version": pa.string(),
        "run_id": pa.string(),
        "extracted_at": pa.timestamp("us", tz="UTC"),
    }
    if set(types) != set(FEATURE_COLUMNS_DOC):
        raise RuntimeError("feature_schema and FEATURE_COLUMNS_DOC disagree")
    return pa.schema([pa.field(name, types[name]) for name in FEATURE_COLUMNS_DOC])


# The scores table (scoring job -> analytics): one row per input clip, Hive-partitioned by
# `scored_date` (a directory level, not a column in the files).
SCORE_PARTITION = "scored_date"
SCORE_COLUMNS_DOC: dict[str, str] = {
    "video_id": "file name without extension",
    "uri": "where the clip was read from",
    "etag": "content fingerprint from the listing (S3 ETag; locally size + mtime); with "
    "video_id the key --skip-existing compares",
    "content_sha256": "sha256 of the clip's bytes (null if they could not be read)",
    "size_bytes": "object size from the listing",
    **{f"prob_{c}": f"fused probability of {c}" for c in CLASS_NAMES},
    "predicted": "fused class: positive, neutral or negative (null on error)",
    **{
        f"{m}_{what}": (
            f"{m} head's probability of {what.removeprefix('prob_')}"
            if what.startswith("prob_")
            else f"{m} head's class"
        )
        + " (null when the clip lacks the modality or it is not in the model)"
        for m in MODALITIES
        for what in (*(f"prob_{c}" for c in CLASS_NAMES), "predicted")
    },
    "n_faces": "faces kept over the 12 sampled frames",
    "n_people": "people kept over the 12 sampled frames",
    "has_audio": "an audio track with sound",
    "duration_s": "container duration in seconds",
    "n_frames": "real sampled frames (of 12)",
    "error": "null, or '<reason>: <message>' when the clip failed (scores then null)",
    "error_reason": "machine-readable reason of `error` (empty, not_media, no_frames, ...)",
    "model_uri": "the model as given (models:/name/version or a path)",
    "model_name": "registered model name (or the package directory's name)",
    "model_version": "registered model version (null for a local package)",
    "fusion": "fusion variant that produced prob_* and predicted",
    "weights": "JSON: front-end / head -> weights provenance (sha256 and source, or random-init)",
    "model_device": "where the model stage ran (cpu, cuda:0; Ray GPU ids when assigned)",
    "code_version": "emotiw version that scored the row",
    "run_id": "scoring run that wrote the row",
    "scored_at": "UTC time the row was made",
}


def score_schema() -> pa.Schema:
    """Schema of the scores table's files (the `SCORE_PARTITION` column comes from the path)."""
    import pyarrow as pa

    types: dict[str, pa.DataType] = {
        "video_id": pa.string(),
        "uri": pa.string(),
        "etag": pa.string(),
        "content_sha256": pa.string(),
        "size_bytes": pa.int64(),
        "predicted": pa.string(),
        "n_faces": pa.int32(),
        "n_people": pa.int32(),
        "has_audio": pa.bool_(),
        "duration_s": pa.float32(),
        "n_frames": pa.int16(),
        "error": pa.string(),
        "error_reason": pa.string(),
        "model_uri": pa.string(),
        "model_name": pa.string(),
        "model_version": pa.string(),
        "fusion": pa.string(),
        "weights": pa.string(),
        "model_device": pa.string(),
        "code_version": pa.string(),
        "run_id": pa.string(),
        "scored_at": pa.timestamp("us", tz="UTC"),
    }
    for name in SCORE_COLUMNS_DOC:
        if name.endswith("_predicted"):
            types[name] = pa.string()
        elif "prob_" in name:
            types[name] = pa.float32()
    if set(types) != set(SCORE_COLUMNS_DOC):
        raise RuntimeError("score_schema and SCORE_COLUMNS_DOC disagree")
    return pa.schema([pa.field(name, types[name]) for name in SCORE_COLUMNS_DOC])
