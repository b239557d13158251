"""The scoring job (the main job): list new clips under a prefix (or a manifest), skip those
already scored (same video id and etag), then a CPU actor pool decodes and extracts each clip
(`features.ClipFeatureExtractor`) and a model actor pool (GPU where the cluster has one) runs
any model-stage extractor, the heads and the fusion (`inference.ClipScorer`); rows are staged
and committed into the scores table, Hive-partitioned by ``scored_date``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from emotiw.config import MediaConfig, StorageConfig
from emotiw.runtime import ExtractActor, ModelActor, commit, ensure_ray, new_run_id
from emotiw.weights import WeightsConfig


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

    from emotiw.packaging import read_configs, read_package
    from emotiw.schema import SCORE_PARTITION
    from emotiw.storage import arrow_filesystem, join_url, video_id
    from emotiw.tracking import model_ref, resolve_model_dir

    start = time.monotonic()
    run_id = new_run_id()
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
            fn_constructor_args=(configs, cfg.media, cfg.weights, cfg.storage, run_id, True),
            batch_size=1,
            compute=ray.data.ActorPoolStrategy(min_size=1, max_size=cpu_actors),
            num_cpus=cfg.cpus_per_actor,
        )  # fmt: skip
        ds = ds.map_batches(
            ModelActor,
            fn_constructor_args=(ray.put(read_package(root)), ref, cfg.weights, cfg.device, run_id),
            batch_size=cfg.model_batch_size,
            batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=cfg.model_actors),
            num_gpus=gpus,
            num_cpus=cfg.cpus_per_model_actor,
        )
        ds.write_parquet(staging, filesystem=fs, min_rows_per_file=1024)
        written = _read_staged(fs, staging)
        commit(fs, staging, f"{out_path.rstrip('/')}/{SCORE_PARTITION}={date}", run_id)
        _summarise(summary, written, configs.modalities)
    summary.seconds = time.monotonic() - start
    return summary


def _read_staged(fs: Any, staging: str) -> Any:
    import pyarrow.dataset as ds

    from emotiw import modalities
    from emotiw.schema import score_schema

    schema = score_schema(modalities.specs())
    return ds.dataset(staging, filesystem=fs, format="parquet", schema=schema).to_table()


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
