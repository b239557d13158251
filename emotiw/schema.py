"""Arrow schemas of the tables the system writes, defined once for writers, readers and tests.

Functions rather than module constants so that importing this module does not import pyarrow.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

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
