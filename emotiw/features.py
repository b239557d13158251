"""The feature table: one row per clip with every modality's features, written by the extract
job and read by training and evaluation (pure compute; the Ray plumbing is in `pipeline`).

Columns are defined once in `emotiw.schema.feature_schema`. Features are stored flattened
(``list<float32>``; the scene's frames as ``list<binary>`` of JPEGs) and reshaped on reading
with each modality's per-step width, so an OpenL3 or a log-mel audio table reads the same way.
A clip that fails becomes a row with `error` set and null features.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from emotiw import __version__
from emotiw.config import MediaConfig, StorageConfig
from emotiw.errors import EmotiwError
from emotiw.modalities import MODALITIES, audio, face, get, pose, scene
from emotiw.weights import WeightsConfig


@dataclass(frozen=True)
class ModalityConfigs:
    """Which modalities to use and each one's settings (defaults: all four, paper settings)."""

    modalities: tuple[str, ...] = MODALITIES
    scene: scene.Config = field(default_factory=scene.Config)
    pose: pose.Config = field(default_factory=pose.Config)
    audio: audio.Config = field(default_factory=audio.Config)
    face: face.Config = field(default_factory=face.Config)

    def __post_init__(self) -> None:
        unknown = set(self.modalities) - set(MODALITIES)
        if unknown or not self.modalities:
            raise ValueError(f"modalities must be a non-empty subset of {MODALITIES}")
        object.__setattr__(self, "modalities", tuple(m for m in MODALITIES if m in self.modalities))

    def of(self, name: str) -> Any:
        return getattr(self, name)


# The feature-table column saying whether a clip has each modality (fusion's presence masks):
# a real frame, a person, audio with sound, a face.
PRESENCE_COLUMN = {"scene": "n_frames", "pose": "n_people", "audio": "has_audio", "face": "n_faces"}


def presence(values: list[Any]) -> np.ndarray:
    """A `PRESENCE_COLUMN` column -> bool per clip (null counts as absent)."""
    return np.array([bool(v or 0) for v in values], dtype=bool)


class ClipFeatureExtractor:
    """Bytes of one clip -> one feature-table row (a dict); any failure -> an error row.

    `deferred` modalities are not extracted here but later from the row's JPEG frames (the
    scoring job runs pose's Keypoint R-CNN in its model stage, on the GPU where there is one):
    their features stay null and ``scene_jpeg`` is always written.
    """

    def __init__(
        self,
        configs: ModalityConfigs,
        media: MediaConfig | None = None,
        weights: WeightsConfig | None = None,
        deferred: tuple[str, ...] = (),
    ) -> None:
        self.configs = configs
        self.media = media or MediaConfig()
        self.deferred = deferred
        self.extractors = {
            m: get(m).Extractor(configs.of(m), weights)
            for m in configs.modalities
            if m not in deferred
        }
        self.provenance = {
            key: str(p) for ex in self.extractors.values() for key, p in ex.provenance.items()
        }

    def __call__(
        self, uri: str, video_id: str, data: bytes | Exception, label: int | None, run_id: str
    ) -> dict[str, Any]:
        """`data` is the clip's bytes, or the exception reading them raised."""
        from emotiw.media import decode

        row: dict[str, Any] = {
            "video_id": video_id,
            "uri": uri,
            "content_sha256": hashlib.sha256(data).hexdigest() if isinstance(data, bytes) else None,
            "label": label,
            "weights": json.dumps(self.provenance, sort_keys=True),
            "code_version": __version__,
            "run_id": run_id,
            "extracted_at": time.time(),
        }
        try:
            if isinstance(data, Exception):
                raise data
            clip = decode(data, self.media)
            row.update(
                duration_s=clip.meta.duration_s,
                has_audio=clip.meta.has_audio,
                n_frames=clip.n_valid_frames,
            )
            for name, extractor in self.extractors.items():
                try:
                    out = extractor(clip)
                except EmotiwError:
                    raise
                except Exception as exc:  # a model failing on one clip must not stop the job
                    raise EmotiwError(f"{name}_failed", f"{type(exc).__name__}: {exc}") from exc
                row.update(_stats(name, out.stats))
                if name == "scene":
                    row["scene_jpeg"] = scene.encode_frames(
                        out.features, clip.frame_mask, self.configs.scene.jpeg_quality
                    )
                else:
                    row[name] = np.asarray(out.features, dtype=np.float32).reshape(-1)
            if self.deferred and "scene_jpeg" not in row:
                row["scene_jpeg"] = scene.encode_frames(
                    clip.frames, clip.frame_mask, self.configs.scene.jpeg_quality
                )
        except EmotiwError as exc:
            row.update(error=str(exc), error_reason=exc.reason)
        except Exception as exc:  # unexpected: still a row, with the type for the analyst
            row.update(error=f"internal: {type(exc).__name__}: {exc}", error_reason="internal")
        return row


def _stats(name: str, stats: Mapping[str, Any]) -> dict[str, Any]:
    if name == "audio":
        return {"has_audio": bool(stats.get("has_audio"))}
    if name == "face":
        return {"n_faces": int(stats.get("n_faces", 0))}
    if name == "pose":
        return {"n_people": int(stats.get("n_people", 0))}
    return {}


def rows_to_table(rows: list[dict[str, Any]]) -> Any:
    """Feature rows -> a pyarrow Table with `schema.feature_schema()`."""
    import pyarrow as pa

    from emotiw.schema import feature_schema

    schema = feature_schema()
    columns = {}
    for f in schema:
        values = [r.get(f.name) for r in rows]
        if f.name == "extracted_at":
            values = [None if v is None else int(v * 1_000_000) for v in values]
        columns[f.name] = pa.array(values, type=f.type)
    return pa.table(columns, schema=schema)


@dataclass
class FeatureSet:
    """Labelled, successfully extracted clips as arrays, ready for training or evaluation.

    Attributes:
        video_ids: ``[N]``.
        labels: int64 ``[N]`` class indices (-1 for unlabelled clips, when allowed).
        inputs: modality -> ``[N, ...]`` float32 features; scene -> uint8 frames
            ``[N, T, H, W, 3]``.
        scene_mask: bool ``[N, T]`` real frames.
        present: modality -> bool ``[N]``.
    """

    video_ids: np.ndarray
    labels: np.ndarray
    inputs: dict[str, np.ndarray]
    scene_mask: np.ndarray | None
    present: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(self.video_ids)

    def subset(self, index: np.ndarray) -> FeatureSet:
        return FeatureSet(
            self.video_ids[index],
            self.labels[index],
            {k: v[index] for k, v in self.inputs.items()},
            None if self.scene_mask is None else self.scene_mask[index],
            {k: v[index] for k, v in self.present.items()},
        )


def read_rows(uri: str, storage: StorageConfig | None = None) -> Any:
    """Every committed row of the feature table at `uri` (pyarrow Table), one per clip: the
    newest successful row of each video id, or its newest error row if it never succeeded."""
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    from emotiw.schema import feature_schema
    from emotiw.storage import arrow_filesystem

    fs, path = arrow_filesystem(uri, storage)
    table = ds.dataset(
        path, filesystem=fs, format="parquet", schema=feature_schema(), exclude_invalid_files=True,
        ignore_prefixes=["_", "."],
    ).to_table()  # fmt: skip
    if table.num_rows == 0:
        return table
    ok = pc.is_null(table["error"]).to_numpy(zero_copy_only=False)
    when = table["extracted_at"].cast("int64").to_numpy(zero_copy_only=False)
    ids = table["video_id"].to_numpy(zero_copy_only=False)
    order = np.lexsort((when, ok, ids))  # per id: errors first, then successes, oldest first
    last = np.r_[ids[order][1:] != ids[order][:-1], True]
    return table.take(order[last])


def done_video_ids(uri: str, storage: StorageConfig | None = None) -> set[str]:
    """Video ids that already have a successful row (a rerun skips them)."""
    import pyarrow.compute as pc

    from emotiw.errors import StorageError
    from emotiw.storage import fsspec_filesystem, split_url

    fs, _ = fsspec_filesystem(uri, storage)
    try:
        if not fs.exists(split_url(uri)[1]):
            return set()
    except StorageError:
        return set()
    rows = read_rows(uri, storage)
    if rows.num_rows == 0:
        return set()
    ok = rows.filter(pc.is_null(rows["error"]))
    return set(ok["video_id"].to_pylist())


def to_feature_set(rows: Any, configs: ModalityConfigs, require_labels: bool = True) -> FeatureSet:
    """Successful rows -> arrays for `configs.modalities` (error rows and, when
    `require_labels`, unlabelled rows are left out)."""
    import pyarrow.compute as pc

    keep = pc.is_null(rows["error"])
    if require_labels:
        keep = pc.and_(keep, pc.is_valid(rows["label"]))
    rows = rows.filter(keep)
    inputs: dict[str, np.ndarray] = {}
    scene_mask = None
    n = rows.num_rows
    for name in configs.modalities:
        column = rows[name if name != "scene" else "scene_jpeg"].to_pylist()
        if any(v is None for v in column):
            raise ValueError(f"the feature table has no {name} features for some clips")
        if name == "scene":
            cfg = configs.scene
            decoded = [scene.decode_frames(v, cfg.frame_height, cfg.frame_width) for v in column]
            shape = (0, cfg.n_frames, cfg.frame_height, cfg.frame_width, 3)
            inputs[name] = np.stack([f for f, _ in decoded]) if n else np.zeros(shape, np.uint8)
            scene_mask = (
                np.stack([m for _, m in decoded]) if n else np.zeros((0, cfg.n_frames), bool)
            )
        else:
            shape = get(name).feature_shape(configs.of(name))
            inputs[name] = np.asarray(column, dtype=np.float32).reshape(n, *shape)
    table = rows.to_pydict()
    present = {name: presence(table[PRESENCE_COLUMN[name]]) for name in configs.modalities}
    return FeatureSet(
        np.asarray(table["video_id"], dtype=object),
        np.asarray([-1 if v is None else v for v in table["label"]], dtype=np.int64),
        inputs,
        scene_mask,
        present,
    )
