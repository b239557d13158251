"""Arrow schemas of the tables the system writes, defined once for writers, readers and tests.

Each table has fixed columns (defined here) and the columns each registered modality declares
(`emotiw.modalities.base.Modality.columns`); the functions take the modalities as an argument
(anything with ``name`` and ``columns()``) so this layer does not import the registry:
callers pass ``emotiw.modalities.specs()``. Functions rather than module constants so that
importing this module does not import pyarrow.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from emotiw.core.config import CLASS_NAMES

if TYPE_CHECKING:
    import pyarrow as pa


@dataclass(frozen=True)
class Column:
    """One column: name, type and meaning. Every table's fixed columns and every modality's
    columns are declared this way, and everything else (the Arrow schemas, the reference
    docs, the SQL DDL) is generated from the declarations."""

    name: str
    type: str  # one of TYPES
    doc: str

    def arrow_type(self) -> pa.DataType:
        import pyarrow as pa

        scalar = {
            "string": pa.string(), "binary": pa.binary(), "bool": pa.bool_(),
            "int8": pa.int8(), "int16": pa.int16(), "int32": pa.int32(), "int64": pa.int64(),
            "float32": pa.float32(), "timestamp": pa.timestamp("us", tz="UTC"),
        }  # fmt: skip
        if self.type.startswith("list<"):
            return pa.list_(scalar[self.type[5:-1]])
        return scalar[self.type]


_TYPES = (
    "string", "binary", "bool", "int8", "int16", "int32", "int64", "float32", "timestamp",
    "list<float32>", "list<binary>",
)  # fmt: skip


class _HasColumns(Protocol):
    """What the schemas need of a modality."""

    name: str
    stats: Sequence[Any]  # per-clip stat columns, also copied to the scores table
    details: Sequence[Any]  # columns of its detail table (per face), if it has one

    def columns(self) -> Sequence[Any]: ...  # items with name, doc and arrow_type()


# The sampled frames (JPEG), written when a modality needs them after the CPU stage: the
# scene model takes them as input, a modality extracting in the model stage decodes them.
FRAMES_COLUMN = "frames_jpeg"

# The feature table (extract job -> training, evaluation): one row per clip.
FEATURE_COLUMNS: tuple[Column, ...] = (
    Column("video_id", "string", "file name without extension (the VGAF id); a convenience, not a "
           "key"),
    Column("uri", "string", "where the clip was read from: the clip's identity (with etag, its "
           "version)"),
    Column("etag", "string", "content fingerprint from the listing (S3 ETag; locally size + "
           "mtime)"),
    Column("size_bytes", "int64", "object size from the listing"),
    Column("content_sha256", "string", "sha256 of the clip's bytes"),
    Column("label", "int8", "class index 0 positive, 1 neutral, 2 negative; null if unlabelled"),
    Column("error", "string", "null, or '<reason>: <message>' when the clip failed (features then "
           "null)"),
    Column("error_reason", "string", "machine-readable reason of `error`"),
    Column("retryable", "bool", "true when `error_reason` is transient (io, timeout, ...): the "
           "next run tries the clip again; also for crashed (its process died on every try), "
           "until it has crashed in --crash-runs runs; null on success"),
    Column("attempts", "int8", "tries this run made for the clip (transient failures are retried)"),
    Column("duration_s", "float32", "container duration"),
    Column("n_frames", "int16", "real sampled frames (of 12)"),
    Column(FRAMES_COLUMN, "list<binary>", "the 12 sampled frames as JPEG, b'' where padded"),
    Column("weights", "string", "JSON: front-end -> weights provenance (sha256 and source, or "
           "random-init)"),
    Column("front_ends", "string", "JSON: modality -> the front-end settings that made its "
           "features (training takes them from here)"),
    Column("code_version", "string", "emotiw version that wrote the row"),
    Column("run_id", "string", "extract run that wrote the row"),
    Column("extracted_at", "timestamp", "UTC time the row was made"),
)  # fmt: skip


def _modality_fields(modalities: Sequence[_HasColumns]) -> list[pa.Field]:
    import pyarrow as pa

    return [pa.field(c.name, c.arrow_type()) for m in modalities for c in m.columns()]


def feature_docs(modalities: Sequence[_HasColumns]) -> dict[str, str]:
    """Every feature-table column and its meaning."""
    docs = {c.name: c.doc for c in FEATURE_COLUMNS}
    docs.update({c.name: c.doc for m in modalities for c in m.columns()})
    return docs


def feature_schema(modalities: Sequence[_HasColumns]) -> pa.Schema:
    """Schema of the feature table: fixed columns, then each modality's."""
    import pyarrow as pa

    fields = [pa.field(c.name, c.arrow_type()) for c in FEATURE_COLUMNS]
    return pa.schema(fields + _modality_fields(modalities))


# The scores table (scoring job -> analytics): one row per input clip, Hive-partitioned by
# `scored_date` (a directory level, not a column in the files).
SCORE_PARTITION = "scored_date"
_SCORE_COLUMNS: tuple[Column, ...] = (
    Column("video_id", "string", "file name without extension (a convenience, not a key)"),
    Column("uri", "string", "where the clip was read from: the clip's identity. A clip rescored "
           "(changed etag, or a retryable error retried) has several rows: keep the newest "
           "`scored_at`"),
    Column("etag", "string", "content fingerprint from the listing (S3 ETag; locally size + "
           "mtime); with uri the key --skip-existing compares"),
    Column("content_sha256", "string", "sha256 of the clip's bytes (null if they could not be "
           "read)"),
    Column("size_bytes", "int64", "object size from the listing"),
    *(Column(f"prob_{c}", "float32", f"fused probability of {c}") for c in CLASS_NAMES),
    Column("predicted", "string", "fused class: positive, neutral or negative (null on error)"),
    Column("duration_s", "float32", "container duration in seconds"),
    Column("n_frames", "int16", "real sampled frames (of 12)"),
    Column("error", "string", "null, or '<reason>: <message>' when the clip failed (scores then "
           "null)"),
    Column("error_reason", "string", "machine-readable reason of `error` (empty, not_media, "
           "no_frames, ...)"),
    Column("retryable", "bool", "true when `error_reason` is transient (io, timeout, "
           "model_failed, out_of_memory, internal): the next run scores the clip again; also for "
           "crashed (its process died on every try), until it has crashed in --crash-runs runs; "
           "null on success"),
    Column("attempts", "int8", "tries this run made for the clip (transient failures are "
           "retried; the duration probe's or the extraction's, whichever took more)"),
    Column("model_uri", "string", "the model as resolved when the run started: "
           "models:/name/version (an alias or /latest pinned to its version) or the package path"),
    Column("model_name", "string", "registered model name (or the package directory's name)"),
    Column("model_version", "string", "registered model version (null for a local package)"),
    Column("fusion", "string", "fusion variant that produced prob_* and predicted"),
    Column("weights", "string", "JSON: front-end / head -> weights provenance (sha256 and source, "
           "or random-init): the front-ends this run loaded, the package's heads"),
    Column("model_device", "string", "where the model stage ran (cpu, cuda:0; Ray GPU ids when "
           "assigned)"),
    Column("code_version", "string", "emotiw version that scored the row"),
    Column("run_id", "string", "scoring run that wrote the row"),
    Column("scored_at", "timestamp", "UTC time the row was made"),
)  # fmt: skip

# What a video's row adds about its windows (`emotiw.io.windows`): a clip is one window, a
# longer video's row aggregates its windows' rows (the windows table).
_VIDEO_COLUMNS: tuple[Column, ...] = (
    Column("n_windows", "int32", "windows the video was cut into (1: a clip up to 10 s, scored "
           "whole); null in rows written before videos had windows"),
    Column("coverage", "float32", "share of the video's duration its scored windows cover (1.0: "
           "all of it; less when windows failed or the video is longer than --max-video-s)"),
    Column("coverage_note", "string", "why `coverage` is below 1: windows that failed, by reason, "
           "and the part past --max-video-s; null when it is 1"),
    Column("most_positive_window", "int32", "the window with the highest prob_positive"),
    Column("most_positive_start_s", "float32", "where that window starts, seconds"),
    Column("most_negative_window", "int32", "the window with the highest prob_negative"),
    Column("most_negative_start_s", "float32", "where that window starts, seconds"),
)  # fmt: skip

# A window's own columns: in flight (probe -> extract -> model -> driver) every row is one
# window of its video, and the windows table keeps them.
WINDOW_COLUMNS: tuple[Column, ...] = (
    Column("window_index", "int32", "the window's index in its video, from 0"),
    Column("start_s", "float32", "where the window starts, seconds from the video's start"),
    Column("end_s", "float32", "where it ends (exclusive), seconds"),
    Column("n_windows", "int32", "windows of its video in all"),
    Column("video_duration_s", "float32", "the video's duration as its header says"),
)  # fmt: skip


def _modality_score_docs(modalities: Sequence[_HasColumns]) -> dict[str, str]:
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


def score_docs(modalities: Sequence[_HasColumns]) -> dict[str, str]:
    """Every scores-table column and its meaning."""
    return {
        **{c.name: c.doc for c in _SCORE_COLUMNS},
        **_modality_score_docs(modalities),
        **{c.name: c.doc for c in _VIDEO_COLUMNS},
    }


def window_docs(modalities: Sequence[_HasColumns]) -> dict[str, str]:
    """Every windows-table column and its meaning: a scores row's columns for one window
    (the whole-video ones left out) and the window's own."""
    video = {c.name for c in _VIDEO_COLUMNS}
    docs = {k: v for k, v in score_docs(modalities).items() if k not in video}
    docs.update({c.name: c.doc for c in WINDOW_COLUMNS})
    docs["duration_s"] = "container duration (the whole video's)"
    return docs


def score_schema(modalities: Sequence[_HasColumns]) -> pa.Schema:
    """Schema of the scores table's files (the `SCORE_PARTITION` column comes from the path)."""
    import pyarrow as pa

    types = {c.name: c.arrow_type() for c in (*_SCORE_COLUMNS, *_VIDEO_COLUMNS, *WINDOW_COLUMNS)}
    stats = {c.name: c.arrow_type() for m in modalities for c in m.stats}
    for name in _modality_score_docs(modalities):
        if name in stats:
            types[name] = stats[name]
        elif name.endswith("_predicted"):
            types[name] = pa.string()
        else:
            types[name] = pa.float32()
    return pa.schema([pa.field(name, types[name]) for name in score_docs(modalities)])


def window_schema(modalities: Sequence[_HasColumns]) -> pa.Schema:
    """Schema of the windows table's files (partitioned like the scores table)."""
    import pyarrow as pa

    scores = score_schema(modalities)
    own = {c.name: c.arrow_type() for c in WINDOW_COLUMNS}
    names = window_docs(modalities)
    return pa.schema([pa.field(n, own[n] if n in own else scores.field(n).type) for n in names])


# Detail tables (the per-face table): one row per detail (a face kept in a sampled frame) of
# a modality that declares them (`Modality.details_table`), Hive-partitioned like the table
# beside which the job writes them; each chunk is published just before the main table's
# chunk of the same name (docs/exactly-once.md). In flight (extract actor -> model actor ->
# driver) a clip's details are one list<struct> column of its feature and score rows,
# `details_column(modality)`; the persisted tables never hold it.
_DETAIL_KEY_COLUMNS: tuple[Column, ...] = (
    Column("video_id", "string", "file name without extension (a convenience, not a key)"),
    Column("uri", "string", "the clip (join with the scores / feature table on uri and run_id)"),
    Column("etag", "string", "content fingerprint from the listing"),
    Column("window_index", "int32", "the window of the video the detail was found in (join "
           "with the windows table on uri, etag, window_index and run_id); null in rows written "
           "before windows"),
)  # fmt: skip
_DETAIL_RUN_COLUMNS: tuple[Column, ...] = (
    Column("model_uri", "string", "the scoring run's model as resolved (null for rows the "
           "extract job wrote)"),
    Column("run_id", "string", "run that wrote the row: the scores (or feature) row of the same "
           "uri and run_id is the clip row these details belong to"),
    Column("made_at", "timestamp", "UTC time the clip's row was made"),
)  # fmt: skip


def details_column(modality: str) -> str:
    """The in-flight column holding a clip's details of `modality`."""
    return f"{modality}_details"


def detail_docs(modality: _HasColumns) -> dict[str, str]:
    """Every column of `modality`'s detail table and its meaning."""
    columns = (*_DETAIL_KEY_COLUMNS, *modality.details, *_DETAIL_RUN_COLUMNS)
    return {c.name: c.doc for c in columns}


def _detail_struct(modality: _HasColumns) -> pa.DataType:
    """The in-flight column's type: a clip's details as list<struct>."""
    import pyarrow as pa

    return pa.list_(pa.struct([pa.field(c.name, c.arrow_type()) for c in modality.details]))


def detail_schema(modality: _HasColumns) -> pa.Schema:
    """Schema of `modality`'s detail table files (the partition column comes from the path)."""
    import pyarrow as pa

    columns = (*_DETAIL_KEY_COLUMNS, *modality.details, *_DETAIL_RUN_COLUMNS)
    return pa.schema([pa.field(c.name, c.arrow_type()) for c in columns])


def with_details(schema: pa.Schema, modalities: Sequence[_HasColumns]) -> pa.Schema:
    """`schema` plus the in-flight columns: the window's (`WINDOW_COLUMNS`) and the detail
    columns of `modalities` that declare a table (what the actors pass on; writers select
    the table's own columns)."""
    import pyarrow as pa

    extra = [pa.field(c.name, c.arrow_type()) for c in WINDOW_COLUMNS if c.name not in schema.names]
    extra += [
        pa.field(details_column(m.name), _detail_struct(m))
        for m in modalities
        if getattr(m, "details_table", "")
    ]
    return pa.schema([*schema, *extra])
