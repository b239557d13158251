"""The extract job: list the videos under a prefix, join the labels, skip clips the feature
table already has a final row for (same URI and etag), then a CPU actor pool reads each clip's
bytes, decodes it and runs every modality's extractor (`features.ClipFeatureExtractor`); the
rows stream back to the driver and are committed in chunks (`chunks.ChunkWriter`) into the
feature table that training and evaluation read, while the run holds the table's lease. A
crashed run loses at most its open chunk; leftover staging is recovered by the next run.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from emotiw.core.config import EXTRACT_ACTOR_GIB, JobConfig, MediaConfig, StorageConfig
from emotiw.io.weights import WeightsConfig
from emotiw.jobs.pipeline import NO_LABEL, Committed, ExtractActor, ensure_ray, new_run_id
from emotiw.models import presets
from emotiw.models.features import ModalityConfigs


@dataclass(frozen=True)
class ExtractConfig:
    """The extract job.

    Attributes:
        videos: prefix (local or ``s3://``) listed recursively for videos.
        output: the feature table's directory (local or ``s3://``).
        labels: VGAF label file; clips without a label are extracted with a null label.
        preset: what `configs` defaults to (`emotiw.models.presets`).
        configs: modalities and their settings; None: the preset's.
        extract_actors: maximum size of the extract actor pool (each holds every extractor's
            models once); 0: no cap, the pool grows with the cluster (Ray Data asks the
            autoscaler for nodes while clips wait).
        min_extract_actors: actors the pool starts with and never drops below.
        cpus_per_extract_actor, gpus_per_extract_actor: resources each actor reserves; with a
            GPU the extractors run their models on it (pose's Keypoint R-CNN benefits most).
        memory_per_extract_actor: GiB of Ray memory each actor declares (its measured peak
            on the worst admitted input, with headroom: docs/benchmarks.md), so a node holds
            no more actors than its memory does; 0 declares none.
        clips_per_batch: clips per actor call (1: a slow clip delays no other).
        skip_existing: skip clips (URI and etag) that already have a final row: a success or
            a permanent error (resumable reruns; transient errors are retried).
        details_output: where the detail tables go (the per-face table: ``faces/``): ``none``
            (the default: training needs only the features), ``auto`` beside the feature
            table (``<output>-details``), or a folder.
        dry_run: check the weights are staged, list the videos and read the label file, and
            compare with the table, read-only (no lease, no Ray): print how many clips are
            new, changed or to retry; exit code 0 when a real run would extract something, 4
            when nothing is pending.
    """

    videos: str
    output: str
    labels: str | None = None
    preset: str = presets.DEFAULT
    configs: ModalityConfigs | None = None
    media: MediaConfig = field(default_factory=MediaConfig)
    weights: WeightsConfig = field(default_factory=WeightsConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    extract_actors: int = 0
    min_extract_actors: int = 1
    cpus_per_extract_actor: float = 1.0
    gpus_per_extract_actor: float = 0.0
    memory_per_extract_actor: float = EXTRACT_ACTOR_GIB
    clips_per_batch: int = 1
    skip_existing: bool = True
    details_output: str = "none"
    dry_run: bool = False
    job: JobConfig = field(default_factory=JobConfig)

    def __post_init__(self) -> None:
        if self.configs is None:  # frozen: set once, before anyone reads it
            object.__setattr__(self, "configs", presets.modality_configs(self.preset))
        if self.extract_actors < 0 or self.clips_per_batch < 1:
            raise ValueError("extract_actors must be >= 0 (0: no cap), clips_per_batch >= 1")
        if self.min_extract_actors < 1 or (
            self.extract_actors and self.min_extract_actors > self.extract_actors
        ):
            raise ValueError("min_extract_actors must be >= 1 and <= extract_actors (0: no cap)")
        if self.cpus_per_extract_actor <= 0 or self.gpus_per_extract_actor < 0:
            raise ValueError("cpus_per_extract_actor must be > 0 and gpus_per_extract_actor >= 0")
        if self.memory_per_extract_actor < 0:
            raise ValueError("memory_per_extract_actor must be >= 0 (0 declares none)")


@dataclass
class ExtractSummary:
    run_id: str
    listed: int = 0
    skipped: int = 0
    extracted: int = 0
    errors: int = 0
    unlabelled: int = 0
    labels_without_video: int = 0
    committed: Committed = field(default_factory=Committed)
    seconds: float = 0.0
    output: str = ""
    # dry runs: clips a real run would extract, by why (new, changed, retry)
    pending: dict[str, int] | None = None
    checks: list[str] = field(default_factory=list)  # the pre-flight checks it passed

    def __str__(self) -> str:
        if self.pending is not None:
            from emotiw.tables.keys import describe_pending

            pending = describe_pending(
                self.listed, self.skipped, self.pending, self.output, verb="extract"
            )
            return "\n  ".join([pending, *self.checks])
        return (
            f"run {self.run_id}: {self.listed} clips listed, {self.skipped} already done, "
            f"{self.extracted} extracted, {self.errors} errors ({self.committed.reasons}), "
            f"{self.unlabelled} without a label, {self.labels_without_video} labels without a "
            f"video, {self.seconds:.1f} s\n{self.committed.lines()}"
        )


def run_extract(cfg: ExtractConfig, ray_address: str | None = None) -> ExtractSummary:
    """Extract features for every new clip under `cfg.videos` into `cfg.output`.

    Raises:
        LeaseHeld: another live run is writing `cfg.output` (and `cfg.job.wait` is off).
    """
    import ray

    from emotiw.core import retry
    from emotiw.io.labels import read_labels
    from emotiw.io.storage import list_video_objects, video_id
    from emotiw.jobs.pipeline import Progress, done_index, exclusive_output, write_stream
    from emotiw.jobs.pools import actor_pool, check_memory, memory_args, plan_blocks, pool_estimate
    from emotiw.jobs.preflight import run_checks
    from emotiw.models.features import feature_schema
    from emotiw.tables.chunks import ChunkWriter
    from emotiw.tables.details import detail_root, paired

    start = time.monotonic()
    summary = ExtractSummary(run_id=new_run_id())
    job = cfg.job
    summary.checks = run_checks(  # each fails in one line, before any actor
        cfg.configs.weight_names(), cfg.weights, cfg.output, cfg.storage,
        cfg.gpus_per_extract_actor, ray_address, "--gpus-per-extract-actor", "extract",
    )  # fmt: skip
    objects = retry.call(
        lambda: list_video_objects(cfg.videos, cfg.storage), job.attempts, job.backoff_s
    )
    labels = read_labels(cfg.labels, cfg.storage) if cfg.labels else {}
    ids = [video_id(o.uri) for o in objects]
    summary.listed = len(objects)
    summary.labels_without_video = len(set(labels) - set(ids))
    if labels and ids and not set(labels) & set(ids):
        raise ValueError(
            f"the label file {cfg.labels} names {len(labels)} videos but none of the {len(ids)} "
            f"under {cfg.videos} (e.g. label {sorted(labels)[0]!r}, video {ids[0]!r}): wrong "
            "label file or prefix?"
        )
    schema = feature_schema()
    if cfg.dry_run:
        from emotiw.io.storage import arrow_filesystem
        from emotiw.tables.keys import pending

        fs, root = arrow_filesystem(cfg.output, cfg.storage)
        done = done_index(fs, root, schema, job, cfg.skip_existing, seen=True)
        _, summary.skipped, summary.pending = pending(objects, done)
        summary.output = cfg.output
        summary.seconds = time.monotonic() - start
        return summary
    with exclusive_output(cfg.output, cfg.storage, job, summary.run_id, summary.committed) as (
        fs, root, lease,
    ):  # fmt: skip
        done = done_index(fs, root, schema, job, cfg.skip_existing)
        items = [
            {"uri": o.uri, "video_id": v, "etag": o.etag, "size_bytes": o.size,
             "label": labels.get(v, NO_LABEL)}
            for o, v in zip(objects, ids, strict=True)
            if not done.done(o.uri, o.etag)
        ]  # fmt: skip
        summary.skipped = len(objects) - len(items)
        if items:

            def start_ray() -> int:
                ensure_ray(ray_address)
                gib = cfg.memory_per_extract_actor
                check_memory({"extract": (cfg.min_extract_actors, gib)}, ray_address)
                return pool_estimate(cfg.extract_actors, cfg.cpus_per_extract_actor, gib=gib)

            refs, _ = plan_blocks(items, start_ray)
            ds = ray.data.from_arrow_refs(refs)
            ds = ds.map_batches(
                ExtractActor,
                fn_constructor_args=(
                    cfg.configs,
                    cfg.media,
                    cfg.weights,
                    cfg.storage,
                    summary.run_id,
                    job,
                ),
                batch_size=cfg.clips_per_batch,
                compute=actor_pool(cfg.min_extract_actors, cfg.extract_actors),
                num_cpus=cfg.cpus_per_extract_actor,
                num_gpus=cfg.gpus_per_extract_actor,
                **memory_args(cfg.memory_per_extract_actor),
            )
            main = ChunkWriter(
                fs, root, summary.run_id, schema, job.commit_every, job.commit_interval_s,
                before_commit=lease.check, attempts=job.attempts, backoff_s=job.backoff_s,
            )  # fmt: skip
            details = detail_root(cfg.details_output, cfg.output)
            writer = paired(main, cfg.configs.specs(), details, cfg.storage, "extracted_at",
                            summary.committed)  # fmt: skip

            def count(rows: object) -> None:
                summary.unlabelled += rows.filter(rows["label"].is_null()).num_rows  # type: ignore[attr-defined]

            progress = Progress("extract", len(items), job.progress_interval_s)
            write_stream(ds, writer, summary.committed, count, progress)
    summary.errors = summary.committed.errors
    summary.extracted = summary.committed.rows - summary.errors
    summary.seconds = time.monotonic() - start
    return summary
