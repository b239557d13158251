"""Arrow schemas of the tables the system writes, defined once for writers, readers and tests.

Each table has fixed columns (defined here) and the columns each registered modality declares
(`emotiw.modalities.base.Modality.columns`); the functions take the modalities as an argument
(anything with ``name`` and ``columns()``) so this layer does not import the registry:
callers pass ``emotiw.modalities.specs()``. Functions rather than module constants so that
importing this module does not import pyarrow.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

from emotiw.config import CLASS_NAMES

if TYPE_CHECKING:
    import pyarrow as pa


class HasColumns(Protocol):
    """What the schemas need of a modality."""

    name: str
    stats: Sequence[Any]  # per-clip stat columns, also copied to the scores table
    details: Sequence[Any]  # columns of its detail table (per face), if it has one

    def columns(self) -> Sequence[Any]: ...  # items with name, doc and arrow_type()


# The sampled frames (JPEG), written when a modality needs them after the CPU stage: the
# scene model takes them as input, a modality extracting in the model stage decodes them.
FRAMES_COLUMN = "frames_jpeg"

# The feature table (extract job -> training, evaluation): one row per clip.
FEATURE_COLUMNS_DOC: dict[str, str] = {
    "video_id": "file name without extension (the VGAF id); a convenience, not a key",
    "uri": "where the clip was read from: the clip's identity (with etag, its version)",
    "etag": "content fingerprint from the listing (S3 ETag; locally size + mtime)",
    "size_bytes": "object size from the listing",
    "content_sha256": "sha256 of the clip's bytes",
    "label": "class index 0 positive, 1 neutral, 2 negative; null if unlabelled",
    "error": "null, or '<reason>: <message>' when the clip failed (features then null)",
    "error_reason": "machine-readable reason of `error`",
    "retryable": "true when `error_reason` is transient (io, timeout, ...): the next run "
    "tries the clip again; also for crashed (its process died on every try), until it has "
    "crashed in --crash-runs runs; null on success",
    "attempts": "tries this run made for the clip (transient failures are retried)",
    "duration_s": "container duration",
    "n_frames": "real sampled frames (of 12)",
    FRAMES_COLUMN: "the 12 sampled frames as JPEG, b'' where padded",
    "weights": "JSON: front-end -> weights provenance (sha256 and source, or random-init)",
    "front_ends": "JSON: modality -> the front-end settings that made its features (training "
    "takes them from here)",
    "code_version": "emotiw version that wrote the row",
    "run_id": "extract run that wrote the row",
    "extracted_at": "UTC time the row was made",
}


def _feature_types() -> dict[str, pa.DataType]:
    import pyarrow as pa

    return {
        "video_id": pa.string(),
        "uri": pa.string(),
        "etag": pa.string(),
        "size_bytes": pa.int64(),
        "content_sha256": pa.string(),
        "label": pa.int8(),
        "error": pa.string(),
        "error_reason": pa.string(),
        "retryable": pa.bool_(),
        "attempts": pa.int8(),
        "duration_s": pa.float32(),
        "n_frames": pa.int16(),
        FRAMES_COLUMN: pa.list_(pa.binary()),
        "weights": pa.string(),
        "front_ends": pa.string(),
        "code_version": pa.string(),
        "run_id": pa.string(),
        "extracted_at": pa.timestamp("us", tz="UTC"),
    }


def _modality_fields(modalities: Sequence[HasColumns]) -> list[pa.Field]:
    import pyarrow as pa

    return [pa.field(c.name, c.arrow_type()) for m in modalities for c in m.columns()]


def feature_docs(modalities: Sequence[HasColumns]) -> dict[str, str]:
    """Every feature-table column and its meaning."""
    docs = dict(FEATURE_COLUMNS_DOC)
    docs.update({c.name: c.doc for m in modalities for c in m.columns()})
    return docs


def feature_schema(modalities: Sequence[HasColumns]) -> pa.Schema:
    """Schema of the feature table: fixed columns, then each modality's."""
    import pyarrow as pa

    types = _feature_types()
    if set(types) != set(FEATURE_COLUMNS_DOC):
        raise RuntimeError("feature_schema and FEATURE_COLUMNS_DOC disagree")
    fields = [pa.field(name, types[name]) for name in FEATURE_COLUMNS_DOC]
    return pa.schema(fields + _modality_fields(modalities))


# The scores table (scoring job -> analytics): one row per input clip, Hive-partitioned by
# `scored_date` (a directory level, not a column in the files).
SCORE_PARTITION = "scored_date"
SCORE_COLUMNS_DOC: dict[str, str] = {
    "video_id": "file name without extension (a convenience, not a key)",
    "uri": "where the clip was read from: the clip's identity. A clip rescored (changed "
    "etag, or a retryable error retried) has several rows: keep the newest `scored_at`",
    "etag": "content fingerprint from the listing (S3 ETag; locally size + mtime); with "
    "uri the key --skip-existing compares",
    "content_sha256": "sha256 of the clip's bytes (null if they could not be read)",
    "size_bytes": "object size from the listing",
    **{f"prob_{c}": f"fused probability of {c}" for c in CLASS_NAMES},
    "predicted": "fused class: positive, neutral or negative (null on error)",
    "duration_s": "container duration in seconds",
    "n_frames": "real sampled frames (of 12)",
    "error": "null, or '<reason>: <message>' when the clip failed (scores then null)",
    "error_reason": "machine-readable reason of `error` (empty, not_media, no_frames, ...)",
    "retryable": "true when `error_reason` is transient (io, timeout, model_failed, "
    "out_of_memory, internal): the next run scores the clip again; also for crashed (its "
    "process died on every try), until it has crashed in --crash-runs runs; null on success",
    "attempts": "tries this run made for the clip (transient failures are retried)",
    "model_uri": "the model as resolved when the run started: models:/name/version (an alias "
    "or /latest pinned to its version) or the package path",
    "model_name": "registered model name (or the package directory's name)",
    "model_version": "registered model version (null for a local package)",
    "fusion": "fusion variant that produced prob_* and predicted",
    "weights": "JSON: front-end / head -> weights provenance (sha256 and source, or "
    "random-init): the front-ends this run loaded, the package's heads",
    "model_device": "where the model stage ran (cpu, cuda:0; Ray GPU ids when assigned)",
    "code_version": "emotiw version that scored the row",
    "run_id": "scoring run that wrote the row",
    "scored_at": "UTC time the row was made",
}


def _modality_score_docs(modalities: Sequence[HasColumns]) -> dict[str, str]:
    """Per modality: its head's probabilities and class, then its stat columns."""
    docs: dict[str, str] = {}
    absent = " (null when the clip lacks the modality or it is not in the model)"
    for m in modalities:
        for c in CLASS_NAMES:
            docs[f"{m.name}_prob_{c}"] = f"{m.name} head's probability of {c}{absent}"
        docs[f"{m.name}_predicted"] = f"{m.name} head's class{absent}"
    for m in modalities:
        docs.update({column.name: column.doc for column in m.stats})
    return docs


def score_docs(modalities: Sequence[HasColumns]) -> dict[str, str]:
    """Every scores-table column and its meaning."""
    return {**SCORE_COLUMNS_DOC, **_modality_score_docs(modalities)}


def score_schema(modalities: Sequence[HasColumns]) -> pa.Schema:
    """Schema of the scores table's files (the `SCORE_PARTITION` column comes from the path)."""
    import pyarrow as pa

    types: dict[str, pa.DataType] = {
        "video_id": pa.string(),
        "uri": pa.string(),
        "etag": pa.string(),
        "content_sha256": pa.string(),
        "size_bytes": pa.int64(),
        "predicted": pa.string(),
        "duration_s": pa.float32(),
        "n_frames": pa.int16(),
        "error": pa.string(),
        "error_reason": pa.string(),
        "retryable": pa.bool_(),
        "attempts": pa.int8(),
        "model_uri": pa.string(),
        "model_name": pa.string(),
        "model_version": pa.string(),
        "fusion": pa.string(),
        "weights": pa.string(),
        "model_device": pa.string(),
        "code_version": pa.string(),
        "run_id": pa.string(),
        "scored_at": pa.timestamp("us", tz="UTC"),
        **{f"prob_{c}": pa.float32() for c in CLASS_NAMES},
    }
    if set(types) != set(SCORE_COLUMNS_DOC):
        raise RuntimeError("score_schema and SCORE_COLUMNS_DOC disagree")
    stats = {c.name: c.arrow_type() for m in modalities for c in m.stats}
    for name in _modality_score_docs(modalities):
        if name in stats:
            types[name] = stats[name]
        elif name.endswith("_predicted"):
            types[name] = pa.string()
        else:
            types[name] = pa.float32()
    return pa.schema([pa.field(name, types[name]) for name in score_docs(modalities)])


# Detail tables (the per-face table): one row per detail (a face kept in a sampled frame) of
# a modality that declares them (`Modality.details_table`), Hive-partitioned like the table
# beside which the job writes them; each chunk is published just before the main table's
# chunk of the same name (docs/exactly-once.md). In flight (extract actor -> model actor ->
# driver) a clip's details are one list<struct> column of its feature and score rows,
# `details_column(modality)`; the persisted tables never hold it.
DETAIL_KEY_DOC: dict[str, str] = {
    "video_id": "file name without extension (a convenience, not a key)",
    "uri": "the clip (join with the scores / feature table on uri and run_id)",
    "etag": "content fingerprint from the listing",
}
DETAIL_RUN_DOC: dict[str, str] = {
    "model_uri": "the scoring run's model as resolved (null for rows the extract job wrote)",
    "run_id": "run that wrote the row: the scores (or feature) row of the same uri and "
    "run_id is the clip row these details belong to",
    "made_at": "UTC time the clip's row was made",
}


def details_column(modality: str) -> str:
    """The in-flight column holding a clip's details of `modality`."""
    return f"{modality}_details"


def detail_docs(modality: HasColumns) -> dict[str, str]:
    """Every column of `modality`'s detail table and its meaning."""
    own = {c.name: c.doc for c in modality.details}
    return {**DETAIL_KEY_DOC, **own, **DETAIL_RUN_DOC}


def detail_struct(modality: HasColumns) -> pa.DataType:
    """The in-flight column's type: a clip's details as list<struct>."""
    import pyarrow as pa

    return pa.list_(pa.struct([pa.field(c.name, c.arrow_type()) for c in modality.details]))


def detail_schema(modality: HasColumns) -> pa.Schema:
    """Schema of `modality`'s detail table files (the partition column comes from the path)."""
    import pyarrow as pa

    types = {name: pa.string() for name in (*DETAIL_KEY_DOC, "model_uri", "run_id")}
    types.update({c.name: c.arrow_type() for c in modality.details})
    types["made_at"] = pa.timestamp("us", tz="UTC")
    return pa.schema([pa.field(name, types[name]) for name in detail_docs(modality)])


def with_details(schema: pa.Schema, modalities: Sequence[HasColumns]) -> pa.Schema:
    """`schema` plus the in-flight detail columns of `modalities` that declare a table (what
    the actors pass on; writers select the table's own columns)."""
    import pyarrow as pa

    extra = [
        pa.field(details_column(m.name), detail_struct(m))
        for m in modalities
        if getattr(m, "details_table", "")
    ]
    return pa.schema([*schema, *extra])
