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
    """One CPU actor: holds the extractors and turns a batch of clip URIs into feature rows
    (plus any listing columns the batch carries, e.g. the scoring job's etag)."""

    def __init__(
        self,
        configs: ModalityConfigs,
        media: MediaConfig,
        weights: WeightsConfig,
        storage: StorageConfig,
        run_id: str,
        deferred: tuple[str, ...] = (),
    ) -> None:
        self.storage = storage
        self.run_id = run_id
        self.extractor = ClipFeatureExtractor(configs, media, weights, deferred)

    def __call__(self, batch: dict[str, np.ndarray]) -> Any:
        import pyarrow as pa

        from emotiw.features import rows_to_table
        from emotiw.storage import read_bytes

        rows = []
        for i, (uri, vid) in enumerate(zip(batch["uri"], batch["video_id"], strict=True)):
            try:
                data: bytes | Exception = read_bytes(str(uri), self.storage)
            except Exception as exc:
                data = exc
            label = int(batch["label"][i]) if "label" in batch else NO_LABEL
            label_or_none = None if label == NO_LABEL else label
            rows.append(self.extractor(str(uri), str(vid), data, label_or_none, self.run_id))
        table = rows_to_table(rows)
        for name in batch:  # carried through for the next stage
            if name not in table.column_names and name != "label":
                table = table.append_column(name, pa.array(list(batch[name])))
        return table


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
    if fs.type_name == "local":  # object stores have no directories (a marker would be read)
        fs.create_dir(out_path, recursive=True)
    for i, path in enumerate(sorted(files)):
        fs.move(path, f"{out_path.rstrip('/')}/part-{run_id}-{i:05d}.parquet")
    fs.delete_dir(staging)
    parent = staging.rsplit("/", 1)[0]
    if not fs.get_file_info(pafs.FileSelector(parent, allow_not_found=True)):
        fs.delete_dir(parent)


# --- scoring ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScoreConfig:
    """The scoring job.

    Attributes:
        input: prefix (local or ``s3://``) listed recursively for videos; or None with
            `manifest`.
        output: the scores table's root (local or ``s3://``); rows land under
            ``scored_date=YYYY-MM-DD/``.
        model: ``models:/name/version`` (or ``/latest``) or a package directory.
        manifest: a text file of video URLs, one per line, instead of listing `input`.
        tracking_uri: MLflow tracking URI for ``models:/`` (None: $MLFLOW_TRACKING_URI).
        skip_existing: score only clips whose (video_id, etag) is not in the output yet.
        retry_errors: with `skip_existing`, also rescore clips whose earlier row is an error.
        cpu_actors: maximum size of the decode/extract pool (0: the cluster's CPUs less those
            the model pool reserves); it autoscales from 1.
        cpus_per_actor: CPUs each extract actor reserves.
        model_actors: size of the model pool (heads, fusion, deferred pose).
        gpus_per_model_actor: GPUs each model actor reserves; -1: 1 when the cluster has
            GPUs, else 0 (same code on CPU-only clusters).
        cpus_per_model_actor: CPUs each model actor reserves.
        model_batch_size: clips per model-stage call (one forward of every head).
        device: the model stage's torch device (auto: CUDA when the actor sees one).
    """

    output: str
    model: str
    input: str | None = None
    manifest: str | None = None
    tracking_uri: str | None = None
    skip_existing: bool = True
    retry_errors: bool = False
    cpu_actors: int = 0
    cpus_per_actor: float = 1.0
    model_actors: int = 1
    gpus_per_model_actor: float = -1
    cpus_per_model_actor: float = 1.0
    model_batch_size: int = 8
    device: str = "auto"
    media: MediaConfig = field(default_factory=MediaConfig)
    weights: WeightsConfig = field(default_factory=WeightsConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)

    def __post_init__(self) -> None:
        if (self.input is None) == (self.manifest is None):
            raise ValueError("give exactly one of input (a prefix) and manifest (a URL list)")
        if self.cpu_actors < 0 or self.model_actors < 1 or self.model_batch_size < 1:
            raise ValueError("cpu_actors must be >= 0, model_actors and model_batch_size >= 1")
        if self.cpus_per_actor <= 0 or self.cpus_per_model_actor < 0:
            raise ValueError("cpus_per_actor must be > 0 and cpus_per_model_actor >= 0")


@dataclass
class ScoreSummary:
    run_id: str
    output: str = ""
    listed: int = 0
    skipped: int = 0
    scored: int = 0
    errors: int = 0
    error_reasons: dict[str, int] = field(default_factory=dict)
    classes: dict[str, int] = field(default_factory=dict)
    agreement: dict[str, float] = field(default_factory=dict)
    placement: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def __str__(self) -> str:
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(self.error_reasons.items())) or "-"
        classes = ", ".join(f"{k} {v}" for k, v in self.classes.items()) or "-"
        agree = ", ".join(f"{k} {v:.2f}" for k, v in self.agreement.items()) or "-"
        where = ", ".join(f"{k} ({v} clips)" for k, v in self.placement.items()) or "-"
        return (
            f"run {self.run_id}: {self.listed} clips listed, {self.skipped} already scored, "
            f"{self.scored} scored, {self.errors} errors ({reasons}), {self.seconds:.1f} s\n"
            f"  predicted: {classes}\n"
            f"  agreement of each modality's head with the fusion: {agree}\n"
            f"  model stage ran on: {where}\n"
            + (f"  written to {self.output}" if self.scored + self.errors else "  nothing new")
        )


class ModelActor:
    """One model-stage actor: the packaged model (shipped as bytes through the object store,
    so no actor needs the tracking server) scoring batches of feature rows."""

    def __init__(self, files: Any, ref: Any, cfg: ScoreConfig, run_id: str) -> None:
        import tempfile
        from pathlib import Path

        import ray

        from emotiw.modalities.base import resolve_device
        from emotiw.scoring import ClipScorer, write_package

        if isinstance(files, ray.ObjectRef):  # Ray Data passes constructor args as given
            files = ray.get(files)
        folder = write_package(files, Path(tempfile.mkdtemp(prefix="emotiw-model-")))
        device = resolve_device(cfg.device)
        gpus = ray.get_runtime_context().get_accelerator_ids().get("GPU", [])
        placement = str(device)
        if gpus and device.type == "cpu":
            placement = f"cpu (Ray GPU {','.join(gpus)} assigned, no CUDA device visible)"
        elif gpus:
            placement = f"{device} (Ray GPU {','.join(gpus)})"
        self.scorer = ClipScorer(folder, ref, cfg.weights, str(device), placement)
        self.run_id = run_id

    def __call__(self, batch: Any) -> Any:
        return self.scorer(batch, self.run_id)


def _existing_keys(cfg: ScoreConfig) -> set[tuple[str, str]]:
    """(video_id, etag) of the rows already in the output (errors too, unless retried)."""
    import pyarrow.compute as pc
    import pyarrow.dataset as ds
    from pyarrow import fs as pafs

    from emotiw.storage import arrow_filesystem

    fs, path = arrow_filesystem(cfg.output, cfg.storage)
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        return set()
    table = ds.dataset(
        path, filesystem=fs, format="parquet", partitioning="hive",
        ignore_prefixes=["_", "."], exclude_invalid_files=True,
    ).to_table(columns=["video_id", "etag", "error"])  # fmt: skip
    if cfg.retry_errors:
        table = table.filter(pc.is_null(table["error"]))
    return set(zip(table["video_id"].to_pylist(), table["etag"].to_pylist(), strict=True))


def _listing(cfg: ScoreConfig) -> list[Any]:
    from emotiw.storage import list_video_objects, read_bytes, stat_video

    if cfg.input is not None:
        return list_video_objects(cfg.input, cfg.storage)
    text = read_bytes(cfg.manifest, cfg.storage).decode()  # type: ignore[arg-type]
    urls = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    out = []
    for url in urls:
        try:
            out.append(stat_video(url, cfg.storage))
        except Exception:  # missing: still scored, so the row says why
            from emotiw.storage import VideoObject

            out.append(VideoObject(url, 0, "missing"))
    return out


def run_score(cfg: ScoreConfig, ray_address: str | None = None) -> ScoreSummary:
    """Score every new clip under `cfg.input` (or in `cfg.manifest`) into `cfg.output`."""
    import datetime

    import ray

    from emotiw.mlflow_model import resolve_model_dir
    from emotiw.packaging import read_configs
    from emotiw.schema import SCORE_PARTITION
    from emotiw.scoring import deferred_modalities, model_ref, read_package
    from emotiw.storage import arrow_filesystem, join_url, video_id

    start = time.monotonic()
    run_id = time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:8]
    summary = ScoreSummary(run_id=run_id)
    ref = model_ref(cfg.model, cfg.tracking_uri)
    root, _, configs = read_configs(resolve_model_dir(ref.uri, cfg.tracking_uri))
    objects = _listing(cfg)
    summary.listed = len(objects)
    done = _existing_keys(cfg) if cfg.skip_existing else set()
    items = [
        {"uri": o.uri, "video_id": video_id(o.uri), "etag": o.etag, "size_bytes": o.size}
        for o in objects
        if (video_id(o.uri), o.etag) not in done
    ]
    summary.skipped = len(objects) - len(items)
    date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d")
    partition = join_url(cfg.output, f"{SCORE_PARTITION}={date}")
    summary.output = partition
    if items:
        ensure_ray(ray_address)
        resources = ray.cluster_resources()
        gpus = cfg.gpus_per_model_actor
        if gpus < 0:
            gpus = 1.0 if resources.get("GPU", 0) >= 1 else 0.0
        cpu_actors = cfg.cpu_actors or max(
            1,
            int((resources.get("CPU", 1) - cfg.model_actors * cfg.cpus_per_model_actor)
                // cfg.cpus_per_actor),
        )  # fmt: skip
        fs, out_path = arrow_filesystem(cfg.output, cfg.storage)
        staging = f"{out_path.rstrip('/')}/_staging/{run_id}"
        # One clip per block: the CPU stage balances clip by clip and the only data in flight
        # is each clip's feature row (JPEG frames, ~0.3-0.5 MB), never decoded video; Ray
        # Data's streaming executor bounds how many rows wait between the stages.
        ds = ray.data.from_items(items, override_num_blocks=len(items))
        ds = ds.map_batches(
            ExtractActor,
            fn_constructor_args=(
                configs, cfg.media, cfg.weights, cfg.storage, run_id, deferred_modalities(configs)
            ),
            batch_size=1,
            compute=ray.data.ActorPoolStrategy(min_size=1, max_size=cpu_actors),
            num_cpus=cfg.cpus_per_actor,
        )  # fmt: skip
        ds = ds.map_batches(
            ModelActor,
            fn_constructor_args=(ray.put(read_package(root)), ref, cfg, run_id),
            batch_size=cfg.model_batch_size,
            batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=cfg.model_actors),
            num_gpus=gpus,
            num_cpus=cfg.cpus_per_model_actor,
        )
        ds.write_parquet(staging, filesystem=fs, min_rows_per_file=1024)
        written = _read_staged(fs, staging)
        _commit(fs, staging, f"{out_path.rstrip('/')}/{SCORE_PARTITION}={date}", run_id)
        _summarise(summary, written, configs.modalities)
    summary.seconds = time.monotonic() - start
    return summary


def _read_staged(fs: Any, staging: str) -> Any:
    import pyarrow.dataset as ds

    from emotiw.schema import score_schema

    return ds.dataset(staging, filesystem=fs, format="parquet", schema=score_schema()).to_table()


def _summarise(summary: ScoreSummary, rows: Any, modalities: tuple[str, ...]) -> None:
    from emotiw.config import CLASS_NAMES

    table = rows.to_pydict()
    predicted = table["predicted"]
    summary.errors = sum(e is not None for e in table["error"])
    summary.scored = len(predicted) - summary.errors
    for reason in table["error_reason"]:
        if reason is not None:
            summary.error_reasons[reason] = summary.error_reasons.get(reason, 0) + 1
    summary.classes = {c: predicted.count(c) for c in CLASS_NAMES}
    for m in modalities:
        pairs = [(a, b) for a, b in zip(table[f"{m}_predicted"], predicted, strict=True) if a]
        if pairs:
            summary.agreement[m] = sum(a == b for a, b in pairs) / len(pairs)
    for where in table["model_device"]:
        if where is not None:
            summary.placement[where] = summary.placement.get(where, 0) + 1
