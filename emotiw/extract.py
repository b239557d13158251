"""The extract job: list the videos under a prefix, join the labels, skip clips already
extracted, then a CPU actor pool reads each clip's bytes, decodes it and runs every modality's
extractor (`features.ClipFeatureExtractor`), and the rows are written as Parquet into the
feature table that training and evaluation read. Rows are written under ``_staging/<run_id>/``
and moved into the table only when the whole run succeeded, so readers never see a partial
run (they ignore ``_``-prefixed paths).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from emotiw.config import MediaConfig, StorageConfig
from emotiw.features import ModalityConfigs
from emotiw.runtime import NO_LABEL, ExtractActor, commit, ensure_ray, new_run_id
from emotiw.weights import WeightsConfig


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
    configs: ModalityConfigs = field(default_factory=ModalityConfigs.preset)
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


def run_extract(cfg: ExtractConfig, ray_address: str | None = None) -> ExtractSummary:
    """Extract features for every new clip under `cfg.videos` into `cfg.output`."""
    import pyarrow.compute as pc
    import ray

    from emotiw.features import done_video_ids, read_rows
    from emotiw.labels import read_labels
    from emotiw.storage import arrow_filesystem, join_url, list_videos, video_id

    start = time.monotonic()
    summary = ExtractSummary(run_id=new_run_id())
    uris = list_videos(cfg.videos, cfg.storage)
    labels = read_labels(cfg.labels, cfg.storage) if cfg.labels else {}
    ids = [video_id(u) for u in uris]
    summary.listed = len(uris)
    summary.labels_without_video = len(set(labels) - set(ids))
    if labels and ids and not set(labels) & set(ids):
        raise ValueError(
            f"the label file {cfg.labels} names {len(labels)} videos but none of the {len(ids)} "
            f"under {cfg.videos} (e.g. label {sorted(labels)[0]!r}, video {ids[0]!r}): wrong "
            "label file or prefix?"
        )
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
            fn_constructor_args=(cfg.configs, cfg.media, cfg.weights, cfg.storage, summary.run_id),
            batch_size=cfg.clips_per_batch,
            compute=ray.data.ActorPoolStrategy(size=cfg.actors),
            num_cpus=cfg.cpus_per_actor,
            num_gpus=cfg.gpus_per_actor,
        )
        # A few files per run, not one per clip: readers open fewer objects.
        ds.write_parquet(staging, filesystem=fs, min_rows_per_file=256)
        written = read_rows(join_url(cfg.output, "_staging", summary.run_id), cfg.storage)
        commit(fs, staging, out_path, summary.run_id)
        errors = written.filter(pc.is_valid(written["error"]))
        summary.extracted = written.num_rows - errors.num_rows
        summary.errors = errors.num_rows
        summary.unlabelled = written.filter(pc.is_null(written["label"])).num_rows
        for reason in errors["error_reason"].to_pylist():
            summary.error_reasons[reason] = summary.error_reasons.get(reason, 0) + 1
    summary.seconds = time.monotonic() - start
    return summary
