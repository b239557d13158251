"""Ray Data stages: thin wrappers that call the library (no model maths here).

`run_extract` writes the feature table: list the videos under a prefix, join the labels, skip
clips already extracted, then a CPU actor pool reads each clip's bytes, decodes it and runs
every modality's extractor (`features.ClipFeatureExtractor`), and the rows are written as
Parquet. Rows are written under ``_staging/<run_id>/`` and moved into the table only when the
whole run succeeded, so readers never see a partial run (they ignore ``_``-prefixed paths).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from emotiw.config import MediaConfig, StorageConfig
from emotiw.features import ClipFeatureExtractor, ModalityConfigs
from emotiw.weights import WeightsConfig

NO_LABEL = -1


@dataclass(frozen=True)
class ExtractConfig:
    """The extract job.

    Attributes:
        videos: prefix (local or ``s3://``) listed recursively for videos.
        output: the feature table's directory (local or ``s3://``).
        labels: VGAF label file; clips without a label are extracted with a null label.
        configs: modalities and their settings.
        actors: size of the CPU actor pool (each holds every extractor's models once).
        cpus_per_actor, gpus_per_actor: resources each actor reserves; with a GPU the
            extractors run their models on it (pose's Keypoint R-CNN benefits most).
        clips_per_batch: clips per actor call (1: a slow clip delays no other).
        skip_existing: skip clips that already have a successful row (resumable reruns).
    """

    videos: str
    output: str
    labels: str | None = None
    configs: ModalityConfigs = field(default_factory=ModalityConfigs)
    media: MediaConfig = field(default_factory=MediaConfig)
    weights: WeightsConfig = field(default_factory=WeightsConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    actors: int = 2
    cpus_per_actor: float = 1.0
    gpus_per_actor: float = 0.0
    clips_per_batch: int = 1
    skip_existing: bool = True

    def __post_init__(self) -> None:
        if self.actors < 1 or self.clips_per_batch < 1:
            raise ValueError("actors and clips_per_batch must be >= 1")
        if self.cpus_per_actor <= 0 or self.gpus_per_actor < 0:
            raise ValueError("cpus_per_actor must be > 0 and gpus_per_actor >= 0")


@dataclass
class ExtractSummary:
    run_id: str
    listed: int = 0
    skipped: int = 0
    extracted: int = 0
    errors: int = 0
    unlabelled: int = 0
    labels_without_video: int = 0
    error_reasons: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def __str__(self) -> str:
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(self.error_reasons.items())) or "-"
        return (
            f"run {self.run_id}: {self.listed} clips listed, {self.skipped} already done, "
            f"{self.extracted} extracted, {self.errors} errors ({reasons}), "
            f"{self.unlabelled} without a label, {self.labels_without_video} labels without a "
            f"video, {self.seconds:.1f} s"
        )


def ensure_ray(address: str | None = None) -> None:
    """Connect to the cluster at `address` (or RAY_ADDRESS, or the one `ray job submit` set),
    else start a local one."""
    import ray

    if not ray.is_initialized():
        ray.init(address=address, log_to_driver=False, include_dashboard=False)


class ExtractActor:
    """One CPU actor: holds the extractors and turns a batch of clip URIs into rows."""

    def __init__(self, cfg: ExtractConfig, run_id: str) -> None:
        self.cfg = cfg
        self.run_id = run_id
        self.extractor = ClipFeatureExtractor(cfg.configs, cfg.media, cfg.weights)

    def __call__(self, batch: dict[str, np.ndarray]) -> Any:
        from emotiw.features import rows_to_table
        from emotiw.storage import read_bytes

        rows = []
        for uri, vid, label in zip(batch["uri"], batch["video_id"], batch["label"], strict=True):
            try:
                data: bytes | Exception = read_bytes(str(uri), self.cfg.storage)
            except Exception as exc:
                data = exc
            label_or_none = None if int(label) == NO_LABEL else int(label)
            rows.append(self.extractor(str(uri), str(vid), data, label_or_none, self.run_id))
        return rows_to_table(rows)


def run_extract(cfg: ExtractConfig, ray_address: str | None = None) -> ExtractSummary:
    """Extract features for every new clip under `cfg.videos` into `cfg.output`."""
    import pyarrow.compute as pc
    import ray

    from emotiw.features import done_video_ids, read_rows
    from emotiw.labels import read_labels
    from emotiw.storage import arrow_filesystem, join_url, list_videos, video_id

    start = time.monotonic()
    summary = ExtractSummary(run_id=time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:8])
    uris = list_videos(cfg.videos, cfg.storage)
    labels = read_labels(cfg.labels, cfg.storage) if cfg.labels else {}
    ids = [video_id(u) for u in uris]
    summary.listed = len(uris)
    summary.labels_without_video = len(set(labels) - set(ids))
    done = done_video_ids(cfg.output, cfg.storage) if cfg.skip_existing else set()
    items = [
        {"uri": u, "video_id": v, "label": labels.get(v, NO_LABEL)}
        for u, v in zip(uris, ids, strict=True)
        if v not in done
    ]
    summary.skipped = len(uris) - len(items)
    if items:
        ensure_ray(ray_address)
        fs, out_path = arrow_filesystem(cfg.output, cfg.storage)
        staging = f"{out_path.rstrip('/')}/_staging/{summary.run_id}"
        ds = ray.data.from_items(items, override_num_blocks=len(items))
        ds = ds.map_batches(
            ExtractActor,
            fn_constructor_kwargs={"cfg": cfg, "run_id": summary.run_id},
            batch_size=cfg.clips_per_batch,
            compute=ray.data.ActorPoolStrategy(size=cfg.actors),
            num_cpus=cfg.cpus_per_actor,
            num_gpus=cfg.gpus_per_actor,
        )
        # A few files per run, not one per clip: readers open fewer objects.
        ds.write_parquet(staging, filesystem=fs, min_rows_per_file=256)
        written = read_rows(join_url(cfg.output, "_staging", summary.run_id), cfg.storage)
        _commit(fs, staging, out_path, summary.run_id)
        errors = written.filter(pc.is_valid(written["error"]))
        summary.extracted = written.num_rows - errors.num_rows
        summary.errors = errors.num_rows
        summary.unlabelled = written.filter(pc.is_null(written["label"])).num_rows
        for reason in errors["error_reason"].to_pylist():
            summary.error_reasons[reason] = summary.error_reasons.get(reason, 0) + 1
    summary.seconds = time.monotonic() - start
    return summary


def _commit(fs: Any, staging: str, out_path: str, run_id: str) -> None:
    """Move a finished run's files from staging into the table, then drop the staging dir."""
    from pyarrow import fs as pafs

    files = [
        info.path
        for info in fs.get_file_info(pafs.FileSelector(staging, recursive=True))
        if info.type == pafs.FileType.File and info.path.endswith(".parquet")
    ]
    for i, path in enumerate(sorted(files)):
        fs.move(path, f"{out_path.rstrip('/')}/part-{run_id}-{i:05d}.parquet")
    fs.delete_dir(staging)
    parent = staging.rsplit("/", 1)[0]
    if not fs.get_file_info(pafs.FileSelector(parent, allow_not_found=True)):
        fs.delete_dir(parent)
