"""Videos of any length in the scoring job: the Ray plumbing around `emotiw.io.windows` (cut a
video into windows) and `emotiw.tables.timeline` (a video's row from its windows' rows).

A probe pass (Ray tasks over the listing's blocks) reads each pending video's duration from
its header and turns it into window items; the driver drops the windows the windows table
already has a final row for, and the rest go through the extract and model pools like clips.
`_VideoRows` is the writer the rows stream into: window rows are committed into the windows
table (the per-face table paired with its chunks), and a video's row goes into the scores
table once its last window is committed. A run that stops in the middle of a video leaves
its committed windows; the next one scores only the missing windows, then writes the row
(`_VideoRows.finish`, at the start of a run, covers one that died between the two commits).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

from emotiw.core.config import MediaConfig, StorageConfig
from emotiw.io.windows import WindowConfig, plan, probe
from emotiw.tables.keys import KeyIndex, complete_videos, window_key

Key = tuple[str, str | None]  # (uri, etag): one version of one video


def _probe_block(
    batch: Any, windows: WindowConfig, media: MediaConfig, storage: StorageConfig,
    attempts: int, backoff_s: float,
) -> Any:  # fmt: skip
    """Listed videos (pyarrow) -> their window items: each listed row once per window, with
    the window's columns. A video whose header cannot be read is one whole window: its
    extraction then fails with the reason, as a clip's does."""
    import pyarrow as pa

    from emotiw.core import retry

    rows = []
    for item in batch.to_pylist():
        tries = [0]

        def attempt(uri: str = item["uri"], tries: list[int] = tries) -> float:
            tries[0] += 1
            return probe(uri, storage)

        try:
            duration = retry.call(attempt, attempts, backoff_s)
        except Exception:  # the extraction reports it, with its retries and reason
            duration = 0.0
        extra = {"probe_tries": tries[0]}  # the row's `attempts` counts them too
        rows += [{**item, **w.columns(), **extra} for w in plan(duration, windows, media)]
    return pa.Table.from_pylist(rows)


def window_items(
    refs: list[Any], windows: WindowConfig, media: MediaConfig, storage: StorageConfig,
    attempts: int, backoff_s: float, done: KeyIndex,
) -> Iterator[dict[str, Any]]:  # fmt: skip
    """The windows still to score of the listed videos in `refs`, streamed back from the
    probe tasks; windows `done` (the windows table's index) has a final row for are left."""
    import ray

    ds = ray.data.from_arrow_refs(refs).map_batches(
        _probe_block,
        fn_kwargs={
            "windows": windows,
            "media": media,
            "storage": storage,
            "attempts": attempts,
            "backoff_s": backoff_s,
        },
        batch_size=None,
        batch_format="pyarrow",
        num_cpus=0.5,
    )
    for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        for item in batch.to_pylist():
            if not done.done(window_key(item["uri"], item["window_index"]), item["etag"]):
                yield item


class _VideoRows:
    """The scoring job's writer (`pipeline.write_stream`): window rows into the windows
    table (`windows`, a paired writer with the per-face table; None: not kept, each window
    counts as committed when written), each video's row into `scores` once all its windows
    are committed, this run's or (`done`) earlier runs'.

    Args:
        read_windows: (uri, etag) pairs -> their window rows in the windows table (newest
            per window), for videos whose windows span runs.
        make_row: a video's window rows -> its scores row (`timeline.video_row`).
        on_videos: called with each batch of video rows written (the summary's counts).
    """

    def __init__(
        self, windows: Any, scores: Any, done: KeyIndex, schema: Any,
        read_windows: Callable[[list[Key]], dict[Key, list[dict[str, Any]]]],
        make_row: Callable[[list[dict[str, Any]]], dict[str, Any]],
        on_videos: Callable[[Any], None],
    ) -> None:  # fmt: skip
        self.windows, self.scores, self.done, self.schema = windows, scores, done, schema
        self.read_windows, self.make_row, self.on_videos = read_windows, make_row, on_videos
        self._written: deque[dict[str, Any]] = deque()  # written, not yet committed
        self._taken = 0  # window rows moved out of `_written`
        self._open: dict[Key, dict[int, dict[str, Any]]] = {}  # committed windows by video
        self._spanning: list[Key] = []  # complete, with windows from earlier runs
        self.window_rows = 0

    @property
    def committed(self) -> list[Any]:
        return self.scores.committed

    def detail_counts(self) -> dict[str, int]:
        counts = dict(self.windows.detail_counts()) if self.windows is not None else {}
        return {"windows": self.window_rows, **counts}

    def write(self, block: Any) -> None:
        keep = [c for c in block.column_names if not c.endswith("_details")]
        self._written.extend(block.select(keep).to_pylist())
        self.window_rows += block.num_rows
        if self.windows is not None:
            self.windows.write(block)
        self._take()

    def _take(self) -> None:
        """Move the rows the windows table has committed to their videos; finish videos."""
        landed = self.windows.committed_rows() if self.windows is not None else self.window_rows
        ready: list[dict[str, Any]] = []
        while self._taken < landed:
            row = self._written.popleft()
            self._taken += 1
            key = (row["uri"], row["etag"])
            got = self._open.setdefault(key, {})
            got[row["window_index"]] = row
            if self._complete(key, got, row["n_windows"]):
                del self._open[key]
                if len(got) == row["n_windows"]:
                    ready.append(self.make_row(list(got.values())))
                else:
                    self._spanning.append(key)
        self._emit(ready)

    def _complete(self, key: Key, got: dict[int, Any], n: int) -> bool:
        if len(got) == n:
            return True
        return all(w in got or self.done.done(window_key(key[0], w), key[1]) for w in range(n))

    def _emit(self, rows: list[dict[str, Any]]) -> None:
        import pyarrow as pa

        if rows:
            table = pa.Table.from_pylist(rows, schema=self.schema)
            self.scores.write(table)
            self.on_videos(table)

    def finish(self, keys: list[Key]) -> None:
        """Write the rows of videos whose windows are all committed, from the table."""
        found = self.read_windows(keys)
        self._emit([self.make_row(found[k]) for k in keys if found.get(k)])

    def close(self) -> None:
        if self.windows is not None:
            self.windows.close()
        self._take()
        # This run's rows are the newest of their windows; the table has the rest.
        spanning, self._spanning = self._spanning, []
        self.finish(spanning)
        self.scores.close()

    def abort(self) -> None:
        if self.windows is not None:
            self.windows.abort()
        self.scores.abort()


def _read_windows(fs: Any, root: str, schema: Any, keys: list[Key]) -> dict[Key, list[dict]]:
    """The windows-table rows of the videos `keys`, the newest row per window."""
    import pyarrow.dataset as ds

    from emotiw.tables.chunks import data_files

    wanted, out = set(keys), {}
    files = data_files(fs, root)
    if not files or not wanted:
        return {}
    dataset = ds.dataset(files, schema=schema, filesystem=fs, format="parquet")
    where = ds.field("uri").isin(sorted({u for u, _ in wanted}))
    newest: dict[tuple[str, str | None, int], dict[str, Any]] = {}
    for row in dataset.to_table(filter=where).to_pylist():
        key = (row["uri"], row["etag"], row["window_index"])
        if (key[0], key[1]) in wanted and (
            key not in newest or row["scored_at"] > newest[key]["scored_at"]
        ):
            newest[key] = row
    for (uri, etag, _), row in sorted(newest.items(), key=lambda kv: kv[0][2]):
        out.setdefault((uri, etag), []).append(row)
    return out


def start_writers(
    cfg: Any, fs: Any, root: str, lease: Any, run_id: str, specs: Any, committed: Any,
    schema: Any, done: KeyIndex, options: dict[str, Any], on_videos: Callable[[Any], None],
) -> _VideoRows:  # fmt: skip
    """The scoring run's `_VideoRows` over its tables, opened under the scores table's lease
    (`cfg`: the `ScoreConfig`): the windows table (in the detail tables' folder, recovered
    like the scores table, with its index of done windows) and the per-face table paired
    with it; then the rows of videos an earlier run completed but did not write."""
    import time

    from emotiw import modalities
    from emotiw.core import retry
    from emotiw.io.storage import arrow_filesystem
    from emotiw.jobs.pipeline import done_index
    from emotiw.tables.chunks import ChunkWriter, recover
    from emotiw.tables.details import detail_root, paired
    from emotiw.tables.schema import SCORE_PARTITION, window_schema
    from emotiw.tables.timeline import video_row

    job = cfg.job

    def writer(fs: Any, root: str, schema: Any) -> ChunkWriter:
        return ChunkWriter(
            fs, root, run_id, schema, job.commit_every, job.commit_interval_s,
            partition=lambda: f"{SCORE_PARTITION}={time.strftime('%Y-%m-%d', time.gmtime())}",
            before_commit=lease.check, attempts=job.attempts, backoff_s=job.backoff_s,
        )  # fmt: skip

    registered = modalities.specs()  # every table has every registered modality's columns
    stats = {c.name: c.type for s in registered for c in s.stats}
    max_video_s = cfg.windows.max_video_s
    details = detail_root(cfg.details_output, cfg.output)
    windows, windows_done, read = None, KeyIndex.empty(), None
    if details is not None:
        wschema = window_schema(registered)
        wfs, wroot = arrow_filesystem(f"{details}/windows", cfg.storage)
        found = retry.call(lambda: recover(wfs, wroot, run_id), job.attempts, job.backoff_s)
        committed.recovery += f"; windows table: {found}"
        windows_done = done_index(wfs, wroot, wschema, job, cfg.skip_existing, windows=True,
                                  videos_done=done, **options)  # fmt: skip
        legacy = _legacy_chunks(fs, root, wfs, wroot)
        windows = paired(writer(wfs, wroot, wschema), specs, details, cfg.storage, "scored_at",
                         committed, legacy)  # fmt: skip

        def read(keys: list[Key]) -> dict[Key, list[dict[str, Any]]]:
            return _read_windows(wfs, wroot, wschema, keys)

    rows = _VideoRows(windows, writer(fs, root, schema), windows_done, schema,
                     read or (lambda keys: {}), lambda w: video_row(w, stats, max_video_s),
                     on_videos)  # fmt: skip
    if details is not None and cfg.skip_existing:
        rows.finish(complete_videos(windows_done))
    return rows


def _legacy_chunks(fs: Any, root: str, wfs: Any, wroot: str) -> set[str]:
    """Chunk names of the scores table from runs that wrote no windows table: their per-face
    chunks were paired with these scores chunks, so they are not orphans."""
    from emotiw.tables.chunks import data_files

    def run(relative: str) -> str:
        return relative.rsplit("/", 1)[-1][len("part-") :].rsplit("-", 1)[0]

    windowed = {run(p) for p in data_files(wfs, wroot)}
    root = root.rstrip("/")
    relatives = (p[len(root) + 1 :] for p in data_files(fs, root))
    return {r for r in relatives if run(r) not in windowed}
