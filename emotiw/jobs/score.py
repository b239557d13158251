"""The scoring job (the main job): list clips under a prefix (or a manifest), skip those the
scores table already has a final row for (same URI and etag), then a CPU actor pool decodes
and extracts each clip (`features.ClipFeatureExtractor`) and a model actor pool (GPU where
the cluster has one) runs any model-stage extractor, the heads and the fusion
(`inference.ClipScorer`). The rows stream back to the driver and are committed in chunks
(`chunks.ChunkWriter`) into the scores table, Hive-partitioned by ``scored_date``, while the
run holds the table's lease (`lease.Lease`); see docs/exactly-once.md.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from emotiw.core import logs
from emotiw.core.config import (
    AUTO,
    EXTRACT_ACTOR_GIB,
    JobConfig,
    MediaConfig,
    StorageConfig,
    amount,
)
from emotiw.io.weights import WeightsConfig
from emotiw.io.windows import WindowConfig
from emotiw.jobs.pipeline import (
    Committed,
    ExtractActor,
    ModelActor,
    Progress,
    done_index,
    ensure_ray,
    new_run_id,
)
from emotiw.jobs.pools import (
    actor_pool,
    check_memory,
    describe_pools,
    memory_args,
    score_pools,
)


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
        skip_existing: score only clips whose (uri, etag) has no final row in the output yet
            (rows with a transient error are retried anyway).
        retry_errors: with `skip_existing`, also rescore clips whose earlier row is a final
            error (not_media, no_frames, ...), e.g. after a decoder fix.
        rescore_on_model_change: with `skip_existing`, a clip counts as done only when this
            model version (the resolved `models:/name/N`, or the package path) scored it: a
            newly promoted model rescores the corpus once, and the table keeps each model's
            scores side by side (docs/tutorials/query.md).
        extract_actors: maximum size of the decode/extract pool; 0: no cap, the pool grows with
            the cluster (Ray Data asks the autoscaler for nodes while clips wait).
        min_extract_actors: actors the extract pool starts with and never drops below.
        cpus_per_extract_actor: CPUs each extract actor reserves.
        memory_per_extract_actor: GiB of Ray memory each extract actor declares (its
            measured peak on the worst admitted input, with headroom: docs/benchmarks.md), so
            a node holds no more actors than its memory does; 0 declares none.
        model_actors: maximum size of the model pool (heads, fusion, deferred pose); 0: no
            cap when the stage uses GPUs (one actor per GPU the cluster grows to), 1 on CPU.
        min_model_actors: actors the model pool starts with.
        gpus_per_model_actor: GPUs each model actor reserves, requested from the autoscaler
            even when no GPU node is up yet; ``auto``: 1 when the cluster has a GPU when the
            job starts, else 0 (same code on CPU-only clusters).
        cpus_per_model_actor: CPUs each model actor reserves.
        memory_per_model_actor: GiB of Ray memory each model actor declares; ``auto``: by
            measurement, from the package (more, growing with `frame_batch_size`, when a
            modality runs a detector at the model stage: docs/benchmarks.md).
        model_batch_size: clips per model-stage call (one forward of every head; the scene
            backbone sees all their frames at once).
        frame_batch_size: frames per forward of a model-stage front-end (Keypoint R-CNN),
            taken across the call's clips; 32 fits a 16 GB GPU at 320 px. Out of memory
            halves it for the rest of the run.
        autocast: mixed precision in the model stage: ``auto`` (bfloat16 on CUDA, off on
            CPU), ``bf16``, ``fp16`` or ``off``.
        block_clips: most clips (or windows) per input block, one Ray task of the extract
            pool; blocks grow to it from one clip as the run's listing streams in.
        device: the model stage's torch device (auto: CUDA when the actor sees one).
        backend: what runs the CNN front-ends (face FER, OpenL3, the keypoint detector's
            backbone, the scene backbone): ``auto`` (ONNX Runtime on CPU, eager on CUDA),
            ``eager`` PyTorch, ``compile``, ``onnxruntime`` or ``openvino``
            (docs/how-to/tune.md); each row's `weights` says which ran.
        details_output: where the detail tables go, one folder each (the per-face table:
            ``faces/``), Hive-partitioned like the scores: ``auto`` beside the scores table
            (``<output>-details``; none for a table at a bucket root), ``none`` for no
            detail tables, or a folder. Join with the scores on uri and run_id
            (docs/tutorials/query.md, the query cookbook).
        windows: how videos longer than ``--media-max-duration-s`` are cut into windows
            (``--window-s``, ``--hop-s``, ``--max-video-s``: docs/explanation/long-videos.md).
        dry_run: check what a run needs (the model resolves, its weights are staged) and
            compare the listing with the table, read-only (no lease, no Ray): print how many
            clips are new, changed or to retry; exit code 0 when a real run would score
            something, 4 when nothing is pending (the schedule's pre-check, so no cluster
            starts for an empty drop).
    """

    output: str
    model: str
    input: str | None = None
    manifest: str | None = None
    tracking_uri: str | None = None
    skip_existing: bool = True
    retry_errors: bool = False
    rescore_on_model_change: bool = False
    windows: WindowConfig = field(default_factory=WindowConfig)
    extract_actors: int = 0
    min_extract_actors: int = 1
    cpus_per_extract_actor: float = 1.0
    memory_per_extract_actor: float = EXTRACT_ACTOR_GIB
    model_actors: int = 0
    min_model_actors: int = 1
    gpus_per_model_actor: str = "auto"
    cpus_per_model_actor: float = 1.0
    memory_per_model_actor: str = AUTO
    model_batch_size: int = 8
    frame_batch_size: int = 32
    autocast: str = "auto"
    block_clips: int = 100
    device: str = "auto"
    backend: str = "auto"
    details_output: str = "auto"
    dry_run: bool = False
    media: MediaConfig = field(default_factory=MediaConfig)
    weights: WeightsConfig = field(default_factory=WeightsConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    job: JobConfig = field(default_factory=JobConfig)

    def __post_init__(self) -> None:
        if (self.input is None) == (self.manifest is None):
            raise ValueError("give exactly one of input (a prefix) and manifest (a URL list)")
        if min(self.extract_actors, self.model_actors) < 0:
            raise ValueError("extract_actors and model_actors must be >= 0 (0: no cap)")
        if min(self.model_batch_size, self.frame_batch_size) < 1:
            raise ValueError("model_batch_size and frame_batch_size must be >= 1")
        if self.autocast not in ("auto", "off", "bf16", "fp16"):
            raise ValueError(f"autocast must be auto, off, bf16 or fp16, not {self.autocast!r}")
        for low, high in ((self.min_extract_actors, self.extract_actors),
                          (self.min_model_actors, self.model_actors)):  # fmt: skip
            if low < 1 or (high and low > high):
                raise ValueError("a pool's minimum must be >= 1 and <= its maximum (0: no cap)")
        amount(self.gpus_per_model_actor, "gpus_per_model_actor")
        from emotiw.modalities.nets.backends import check

        check(self.backend)
        if self.cpus_per_extract_actor <= 0 or self.cpus_per_model_actor < 0:
            raise ValueError("cpus_per_extract_actor must be > 0 and cpus_per_model_actor >= 0")
        if self.memory_per_extract_actor < 0:
            raise ValueError("memory_per_extract_actor must be >= 0 (0 declares none)")
        amount(self.memory_per_model_actor, "memory_per_model_actor")


@dataclass
class ScoreSummary:
    run_id: str
    output: str = ""
    listed: int = 0
    skipped: int = 0
    scored: int = 0
    errors: int = 0
    classes: dict[str, int] = field(default_factory=dict)
    agreement: dict[str, float] = field(default_factory=dict)
    placement: dict[str, int] = field(default_factory=dict)
    pools: str = ""
    committed: Committed = field(default_factory=Committed)
    seconds: float = 0.0
    # dry runs: clips a real run would score, by why (new, changed, retry)
    pending: dict[str, int] | None = None
    details: dict[str, int] = field(default_factory=dict)  # detail table -> rows written
    checks: list[str] = field(default_factory=list)  # the pre-flight checks it passed
    # modality -> (clips where its head agreed with the fusion, clips it scored)
    agree_counts: dict[str, tuple[int, int]] = field(default_factory=dict, repr=False)

    def __str__(self) -> str:
        if self.pending is not None:
            from emotiw.tables.keys import describe_pending

            pending = describe_pending(self.listed, self.skipped, self.pending, self.output)
            return "\n  ".join([pending, *self.checks])
        classes = ", ".join(f"{k} {v}" for k, v in self.classes.items()) or "-"
        agree = ", ".join(f"{k} {v:.2f}" for k, v in self.agreement.items()) or "-"
        where = ", ".join(f"{k} ({v} clips)" for k, v in self.placement.items()) or "-"
        return (
            f"run {self.run_id}: {self.listed} clips listed, {self.skipped} already scored, "
            f"{self.scored} scored, {self.errors} errors ({self.committed.reasons}), "
            f"{self.seconds:.1f} s\n"
            f"{self.committed.lines()}\n"
            f"  predicted: {classes}\n"
            f"  agreement of each modality's head with the fusion: {agree}\n"
            f"  model stage ran on: {where}\n"
            + (f"  pools: {self.pools}\n" if self.pools else "")
            + "".join(f"  {k} table: {v} rows\n" for k, v in self.details.items())
            + (f"  written to {self.output}" if self.scored + self.errors else "  nothing new")
        )


def _listing(cfg: ScoreConfig) -> Iterator[Any]:
    """The clips to consider, streamed (one per URI: a manifest may name one twice); each
    page of an S3 listing is retried like a clip read."""
    from emotiw.core import retry
    from emotiw.io.storage import VideoObject, iter_video_objects, read_bytes, stat_video

    def attempt(fn: Any) -> Any:
        return retry.call(fn, cfg.job.attempts, cfg.job.backoff_s)

    if cfg.input is not None:
        yield from iter_video_objects(
            cfg.input, cfg.storage, attempts=cfg.job.attempts, backoff_s=cfg.job.backoff_s
        )
        return
    text = attempt(lambda: read_bytes(cfg.manifest, cfg.storage)).decode()  # type: ignore[arg-type]
    urls = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    for url in dict.fromkeys(urls):
        try:
            yield attempt(lambda url=url: stat_video(url, cfg.storage))
        except Exception:  # missing: still scored, so the row says why
            yield VideoObject(url, 0, "missing")


def run_score(cfg: ScoreConfig, ray_address: str | None = None) -> ScoreSummary:
    """Score every new clip under `cfg.input` (or in `cfg.manifest`) into `cfg.output`.

    Raises:
        LeaseHeld: another live run is writing `cfg.output` (and `cfg.job.wait` is off).
    """
    from emotiw import modalities
    from emotiw.io.storage import video_id
    from emotiw.jobs.pipeline import exclusive_output, write_stream
    from emotiw.jobs.pools import plan_blocks
    from emotiw.jobs.preflight import run_checks
    from emotiw.jobs.windowing import start_writers, window_items
    from emotiw.models.packaging import read_configs
    from emotiw.tables.schema import score_schema
    from emotiw.tracking.client import model_ref, resolve_model_dir

    start = time.monotonic()
    run_id = new_run_id()
    summary = ScoreSummary(run_id=run_id, output=cfg.output)
    ref = model_ref(cfg.model, cfg.tracking_uri)  # also checks the registry answers
    package_root, _, configs = read_configs(resolve_model_dir(ref.uri, cfg.tracking_uri))
    gpus = amount(cfg.gpus_per_model_actor, "gpus_per_model_actor")
    summary.checks = [  # each fails in one line, before any actor
        f"model {ref.uri}: resolves ({', '.join(configs.modalities)})",
        *run_checks(configs.weight_names(), cfg.weights, cfg.output, cfg.storage, gpus,
                    ray_address, "--gpus-per-model-actor", "model"),
    ]  # fmt: skip
    schema = score_schema(modalities.specs())
    if cfg.dry_run:
        return _dry_run(cfg, ref, summary, schema, start)
    job = cfg.job
    with exclusive_output(cfg.output, cfg.storage, job, run_id, summary.committed) as (
        fs, root, lease,
    ):  # fmt: skip
        options = _done_options(cfg, ref)
        done = done_index(fs, root, schema, job, cfg.skip_existing, **options)

        def on_videos(rows: Any) -> None:
            summary.committed.add(rows)
            _summarise(summary, rows, configs.modalities)

        writer = start_writers(cfg, fs, root, lease, run_id, configs.specs(), summary.committed,
                               schema, done, options, on_videos)  # fmt: skip

        def items() -> Iterator[dict[str, Any]]:
            for o in _listing(cfg):
                summary.listed += 1
                if done.done(o.uri, o.etag):
                    summary.skipped += 1
                    continue
                yield {"uri": o.uri, "video_id": video_id(o.uri), "etag": o.etag,
                       "size_bytes": o.size}  # fmt: skip

        pools: dict[str, Any] = {}

        def start_ray() -> int:
            ensure_ray(ray_address)
            pools.update(score_pools(cfg, configs))
            check_memory({
                "extract": (cfg.min_extract_actors, cfg.memory_per_extract_actor),
                "model": (cfg.min_model_actors, pools["model_gib"]),
            }, ray_address)  # fmt: skip
            summary.pools = describe_pools(cfg, pools)
            return int(pools["cpu_estimate"])

        refs, count = plan_blocks(items(), start_ray, cfg.block_clips)
        if count:  # each pending video's windows (a clip: one), less those done before
            windows = window_items(refs, cfg.windows, cfg.media, cfg.storage, job.attempts,
                                   job.backoff_s, writer.done)  # fmt: skip
            refs, n_windows = plan_blocks(
                windows, lambda: int(pools["cpu_estimate"]), cfg.block_clips
            )
            count = n_windows
        if count:
            ds = _pipeline(cfg, refs, pools, configs, package_root, ref, run_id)
            unit = "clips" if n_windows == summary.listed - summary.skipped else "windows"
            if unit == "windows" and writer.windows is None:
                logs.get("score").warning(
                    "no windows table (detail tables off): a long video's windows are kept "
                    "in memory until its last one is scored, so a run stopped mid-video "
                    "scores that video again from its first window"
                )
            in_flight = Committed()  # window rows: the summary counts videos (`on_videos`)
            write_stream(ds, writer, in_flight, lambda rows: None,
                         Progress("score", count, job.progress_interval_s, unit=unit))  # fmt: skip
            summary.committed.cluster = in_flight.cluster
        else:
            writer.close()  # rows of videos an earlier run completed
        summary.committed.chunks = len(writer.committed)
        summary.details = writer.detail_counts()
    summary.errors = summary.committed.errors
    summary.scored = summary.committed.rows - summary.errors
    summary.seconds = time.monotonic() - start
    return summary


def _done_options(cfg: ScoreConfig, ref: Any) -> dict[str, Any]:
    """Which rows count as done: final errors unless `retry_errors`; with
    `rescore_on_model_change`, only rows of this model version (its resolved URI)."""
    model_uri = ref.uri if cfg.rescore_on_model_change else None
    return {"final_errors": not cfg.retry_errors, "model_uri": model_uri}


def _dry_run(
    cfg: ScoreConfig, ref: Any, summary: ScoreSummary, schema: Any, start: float
) -> ScoreSummary:
    """What a real run would score, read-only: the listing against the table's history."""
    from emotiw.io.storage import arrow_filesystem
    from emotiw.tables.keys import pending as table_pending

    fs, root = arrow_filesystem(cfg.output, cfg.storage)
    options = _done_options(cfg, ref)
    done = done_index(fs, root, schema, cfg.job, cfg.skip_existing, seen=True, **options)
    summary.listed, summary.skipped, pending = table_pending(_listing(cfg), done)
    summary.pending = pending
    summary.seconds = time.monotonic() - start
    return summary


def _pipeline(
    cfg: ScoreConfig, refs: list[Any], pools: dict[str, Any], configs: Any, package_root: Any,
    ref: Any, run_id: str,
) -> Any:  # fmt: skip
    """The Ray Data pipeline: listing blocks -> extract pool -> model pool."""
    import ray

    from emotiw.models.packaging import read_package

    # Blocks of up to `block_clips` clips (one Ray task each), growing from one clip so that a
    # small run spreads over every actor (`pools.plan_blocks`); the actor still handles one
    # clip per call, so the only data in flight is each clip's feature row (JPEG frames,
    # ~0.3-0.5 MB), never decoded video; Ray Data's streaming executor bounds how many rows
    # wait between stages.
    ds = ray.data.from_arrow_refs(refs)
    ds = ds.map_batches(
        ExtractActor,
        fn_constructor_args=(configs.with_backend(cfg.backend), cfg.media, cfg.weights,
                             cfg.storage, run_id, cfg.job, True),
        batch_size=1,
        compute=actor_pool(cfg.min_extract_actors, cfg.extract_actors),
        num_cpus=cfg.cpus_per_extract_actor,
        **memory_args(cfg.memory_per_extract_actor),
    )  # fmt: skip
    package = ray.put(read_package(package_root))
    return ds.map_batches(
        ModelActor,
        fn_constructor_args=(package, ref, cfg.weights, cfg.device, run_id, cfg.job),
        fn_constructor_kwargs={
            "frame_batch": cfg.frame_batch_size,
            "autocast": cfg.autocast,
            "backend": cfg.backend,
        },
        batch_size=cfg.model_batch_size,
        batch_format="pyarrow",
        compute=actor_pool(cfg.min_model_actors, int(pools["model_max"])),
        num_gpus=pools["gpus"],
        num_cpus=cfg.cpus_per_model_actor,
        **memory_args(pools["model_gib"]),
    )


def _summarise(summary: ScoreSummary, rows: Any, modalities: tuple[str, ...]) -> None:
    """Add a batch of score rows to the summary's class counts, agreement and placement."""
    from emotiw.core.config import CLASS_NAMES

    names = [c for c in rows.column_names if c.endswith(("predicted", "model_device"))]
    table = rows.select(names).to_pydict()
    predicted = table["predicted"]
    for c in CLASS_NAMES:
        summary.classes[c] = summary.classes.get(c, 0) + predicted.count(c)
    counts = summary.agree_counts
    for m in modalities:
        pairs = [(a, b) for a, b in zip(table[f"{m}_predicted"], predicted, strict=True) if a]
        same, total = counts.get(m, (0, 0))
        counts[m] = (same + sum(a == b for a, b in pairs), total + len(pairs))
        if counts[m][1]:
            summary.agreement[m] = counts[m][0] / counts[m][1]
    for where in table["model_device"]:
        if where is not None:
            summary.placement[where] = summary.placement.get(where, 0) + 1
