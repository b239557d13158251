"""Ray plumbing shared by the jobs: starting or joining Ray, the actor classes of the Ray Data
stages (a few lines each around the pure compute in `features` and `inference`), and what the
jobs share around them: holding the output's lease, streaming rows into committed chunks."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from emotiw.core import logs
from emotiw.core.config import JobConfig, MediaConfig, StorageConfig
from emotiw.io.weights import WeightsConfig
from emotiw.models.features import ModalityConfigs
from emotiw.tables.lease import Lease

NO_LABEL = -1


def new_run_id() -> str:
    """Sortable, unique run id: the UTC time plus 8 random hex digits (UTC, so ids of runs
    started on machines in different time zones sort in the order the runs started)."""
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + "-" + uuid.uuid4().hex[:8]


def ensure_ray(address: str | None = None) -> None:
    """Connect to the cluster at `address` (or RAY_ADDRESS, or the one `ray job submit` set),
    else start a local one; then `quiet_ray_data`."""
    import ray

    if not ray.is_initialized():  # Ray's own INFO lines ("Started a local Ray instance")
        level = logging.INFO if verbose() else logging.WARNING  # only with --verbose
        ray.init(address=address, log_to_driver=False, include_dashboard=False,
                 logging_level=level)  # fmt: skip
    quiet_ray_data()


def verbose() -> bool:
    """Whether the command line asked for ``--verbose`` (it sets ``EMOTIW_VERBOSE=1``)."""
    return os.environ.get("EMOTIW_VERBOSE") == "1"


def quiet_ray_data() -> None:
    """Ray Data's progress bars on a terminal only (off a terminal they become a multi-line
    INFO block every few seconds; the jobs print their own one-line `Progress` there), and
    its INFO messages (execution plans, stats) only with ``--verbose``."""
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = sys.stderr.isatty()
    # (turned off on purpose: not the "Progress bars disabled" warning every run)
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)
    if not verbose():
        ctx.print_on_execution_start = False
        ctx.enable_auto_log_stats = False
        logging.getLogger("ray.data").setLevel(logging.WARNING)


class Progress:
    """Clips done of `total`, rate, errors and ETA as one line every `interval_s` seconds
    (and a last one at the end), for logs that are not a terminal; silent on a terminal,
    where Ray Data draws its bars, or with `interval_s` 0."""

    def __init__(
        self,
        what: str,
        total: int,
        interval_s: float,
        stream: Any = None,
        clock: Callable[[], float] = time.monotonic,
        unit: str = "clips",
    ) -> None:
        self.what, self.total, self.interval_s, self.unit = what, total, interval_s, unit
        self.enabled = interval_s > 0 and not (stream or sys.stderr).isatty()
        self.log = logs.get("progress")
        self.done = self.errors = 0
        self.clock = clock  # a test's own clock: no assumption on how fast this machine is
        self.start = self.last = clock()

    def update(self, rows: int, errors: int) -> None:
        self.done += rows
        self.errors += errors
        now = self.clock()
        if self.enabled and now - self.last >= self.interval_s:
            self.last = now
            self._report(now)

    def close(self) -> None:
        if self.enabled and self.done:
            self._report(self.clock())

    def _report(self, now: float) -> None:
        rate, left = self._rate(now)
        fields = {"job": self.what, "done": self.done, "total": self.total,
                  "clips_per_s": round(rate, 3), "errors": self.errors,
                  "eta_s": None if left is None else round(left, 1)}  # fmt: skip
        self.log.info(self.line(now), extra={"fields": fields})

    def _rate(self, now: float) -> tuple[float, float | None]:
        """Clips per second so far, and the seconds left at that rate (None before any)."""
        rate = self.done / max(now - self.start, 1e-9)
        return rate, ((self.total - self.done) / rate if rate else None)

    def line(self, now: float) -> str:
        rate, left = self._rate(now)
        eta = "-" if left is None else time.strftime("%H:%M:%S", time.gmtime(left))
        share = f" ({self.done / self.total:.0%})" if self.total else ""
        return (
            f"{self.what}: {self.done}/{self.total} {self.unit}{share}, {rate:.2f} {self.unit}/s, "
            f"{self.errors} errors, ETA {eta}"
        )


class ExtractActor:
    """One CPU actor: turns a batch of listed clips (uri, video_id, etag, size_bytes,
    optional label) into feature rows, retrying transient failures. With
    `JobConfig.isolate_clips` the extractors live in a child process (`emotiw.io.clip_process`):
    a clip during which it dies is tried again in a fresh one up to `JobConfig.attempts`
    times, then becomes a ``crashed`` error row, and the batch's other clips go on."""

    def __init__(
        self,
        configs: ModalityConfigs,
        media: MediaConfig,
        weights: WeightsConfig,
        storage: StorageConfig,
        run_id: str,
        job: JobConfig,
        defer: bool = False,
    ) -> None:
        from emotiw.io.clip_process import ClipProcess
        from emotiw.jobs.pools import assigned_cpus
        from emotiw.models.items import ItemExtractor

        threads = assigned_cpus()  # not FFmpeg's every-core-plus-one in a 1-CPU actor
        if media.decode_threads == 0 and threads is not None:
            media = dataclasses.replace(media, decode_threads=threads)
        self.storage, self.run_id, self.job = storage, run_id, job
        self.local: ItemExtractor | None = None
        self.child: ClipProcess | None = None
        if job.isolate_clips:
            self.child = ClipProcess(ItemExtractor, configs, media, weights, defer)
            self.child.start()  # missing weights fail here, as without isolation
        else:
            self.local = ItemExtractor(configs, media, weights, defer)

    def __call__(self, batch: dict[str, np.ndarray]) -> Any:
        from emotiw.models.features import rows_to_table

        rows = []
        for i in range(len(batch["uri"])):
            item = {k: v[i].item() if hasattr(v[i], "item") else v[i] for k, v in batch.items()}
            label = int(item.pop("label", NO_LABEL))
            item["label"] = None if label == NO_LABEL else label
            rows.append(self._extract(item))
        return rows_to_table(rows)

    def _extract(self, item: dict[str, Any]) -> dict[str, Any]:
        from emotiw.io.clip_process import ProcessDied, describe_exit
        from emotiw.models.items import crashed_row

        args = (item, self.storage, self.run_id, self.job.attempts, self.job.backoff_s)
        if self.local is not None:
            return self.local(*args)
        assert self.child is not None
        deaths: list[str] = []
        while len(deaths) < self.job.attempts:
            try:
                return dict(self.child.call(*args))
            except ProcessDied as died:
                deaths.append(describe_exit(died.returncode))
        return crashed_row(item, self.run_id, self.child.info, deaths)


class ModelActor:
    """One model-stage actor: the packaged model (shipped as bytes through the object store,
    so no actor needs the tracking server) scoring batches of feature rows."""

    def __init__(
        self,
        files: Any,
        ref: Any,
        weights: WeightsConfig,
        device_name: str,
        run_id: str,
        job: JobConfig,
        frame_batch: int = 32,
        autocast: str = "auto",
        backend: str = "auto",
    ) -> None:
        import ray

        from emotiw.modalities.base import resolve_device
        from emotiw.models.inference import ClipScorer
        from emotiw.models.packaging import unpacked

        if isinstance(files, ray.ObjectRef):  # Ray Data passes constructor args as given
            files = ray.get(files)
        device = resolve_device(device_name)
        gpus = ray.get_runtime_context().get_accelerator_ids().get("GPU", [])
        placement = str(device)
        if gpus and device.type == "cpu":
            placement = f"cpu (Ray GPU {','.join(gpus)} assigned, no CUDA device visible)"
        elif gpus:
            placement = f"{device} (Ray GPU {','.join(gpus)})"
        with unpacked(files) as folder:  # loaded into memory, then the copy goes
            self.scorer = ClipScorer(
                folder, ref, weights, str(device), placement, job.attempts, job.backoff_s,
                frame_batch, autocast, backend,
            )  # fmt: skip
        self.run_id = run_id

    def __call__(self, batch: Any) -> Any:
        return self.scorer(batch, self.run_id)


@dataclass
class Committed:
    """What a job committed (the part of a summary the extract and scoring jobs share)."""

    chunks: int = 0
    rows: int = 0
    errors: int = 0
    retryable: int = 0  # errors a later run retries
    retried: int = 0  # clips that needed more than one try this run
    error_reasons: dict[str, int] = field(default_factory=dict)
    recovery: str = ""
    lease: str = ""
    cluster: str = ""  # nodes lost mid-run and what Ray redid (`emotiw.jobs.cluster_watch`)

    def add(self, rows: Any) -> None:
        """Count a batch of written rows (feature or score rows, pyarrow)."""
        import pyarrow.compute as pc

        self.rows += rows.num_rows
        reasons = rows["error_reason"].drop_null().to_pylist()
        self.errors += len(reasons)
        for reason in reasons:
            self.error_reasons[reason] = self.error_reasons.get(reason, 0) + 1
        self.retryable += int(pc.sum(pc.fill_null(rows["retryable"], False)).as_py() or 0)
        self.retried += int(pc.sum(pc.greater(rows["attempts"], 1)).as_py() or 0)

    @property
    def error_rate(self) -> float:
        return self.errors / self.rows if self.rows else 0.0

    @property
    def reasons(self) -> str:
        return ", ".join(f"{k} {v}" for k, v in sorted(self.error_reasons.items())) or "-"

    def lines(self) -> str:
        text = (
            f"  committed {self.rows} rows in {self.chunks} chunk(s); {self.retryable} errors "
            f"retryable (the next run tries them again); {self.retried} clips needed a retry\n"
            f"  {self.recovery}"
        )
        text += f"; {self.lease}" if self.lease else ""
        return text + (f"\n  {self.cluster}" if self.cluster else "")


@contextlib.contextmanager
def exclusive_output(
    output: str, storage: StorageConfig, job: JobConfig, run_id: str, committed: Committed
) -> Iterator[tuple[Any, str, Lease]]:
    """Hold the output table's lease for the block (raises `LeaseHeld` when another live run
    has it) after recovering what dead runs left in its staging; yields (arrow fs, root,
    lease)."""
    from emotiw.core import retry
    from emotiw.io.storage import arrow_filesystem
    from emotiw.tables.chunks import recover

    fs, root = arrow_filesystem(output, storage)
    with Lease.acquire(output, storage, run_id, job) as lease:
        committed.lease = lease.note
        found = retry.call(lambda: recover(fs, root, run_id), job.attempts, job.backoff_s)
        committed.recovery = str(found)
        yield fs, root, lease


def done_index(
    fs: Any, root: str, schema: Any, job: JobConfig, skip_existing: bool, **options: Any
) -> Any:
    """The table's `keys.done_keys` (``options``: final_errors, seen, model_uri), read with
    the driver's storage retries; an empty index (nothing done or seen) when `skip_existing`
    is off."""
    from emotiw.core import retry
    from emotiw.tables.keys import KeyIndex, done_keys

    if not skip_existing:
        return KeyIndex.empty()
    options.setdefault("crash_runs", None if job.retry_crashed else job.crash_runs)
    return retry.call(lambda: done_keys(fs, root, schema, **options), job.attempts, job.backoff_s)


def write_stream(
    ds: Any, writer: Any, committed: Committed, on_rows: Any, progress: Progress | None
) -> None:
    """Pull the dataset's output blocks to the driver as they finish and commit them in
    chunks; on any failure the open chunk is dropped (committed ones stay). Nodes lost
    meanwhile are reported in `committed.cluster` (logged too when the run fails)."""
    from emotiw.jobs.cluster_watch import NodeWatch

    watch = NodeWatch()
    try:
        for block in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            errors = committed.errors
            committed.add(block)
            on_rows(block)
            writer.write(block)
            if progress is not None:
                progress.update(block.num_rows, committed.errors - errors)
        writer.close()
        if progress is not None:
            progress.close()
    except BaseException:
        writer.abort()
        raise
    finally:
        committed.chunks = len(writer.committed)
        committed.cluster = watch.report()
        if committed.cluster and sys.exc_info()[0] is not None:  # no summary will say it
            logs.get("cluster").warning("%s", committed.cluster)
