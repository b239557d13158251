"""An append-only Parquet table (the feature table, the scores table) written in chunks that
each appear atomically, recovered after a crash, and read back by key.

Layout under the table's root: data files ``part-<run>-<chunk>.parquet`` (under Hive
partition folders for the scores table); ``_staging/<run>/`` for chunks being written;
``_lease.json`` for the single-writer lease (`emotiw.tables.lease`). Readers (DuckDB and Spark
globs, pandas, pyarrow, this module) skip ``_``- and ``.``-prefixed paths.

Why a chunk is atomic: it is one Parquet file, written on the driver's disk and published in
one step. For a local table it is written in ``_staging/<run>/`` and renamed in. For S3 it is
written to a temporary file and uploaded to its final key: an S3 object appears only when its
upload completes, so a reader sees all of a chunk or none of it (a crash mid-upload leaves an
invisible incomplete multipart upload; the bucket rule in infra/ aborts those after a day). A
local run that dies leaves staging behind; the next writer (it holds the lease) `recover`s it:
a staged chunk whose Parquet footer reads is adopted unless the table has it; a partial one goes.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from emotiw.core import retry
from emotiw.io import storage

STAGING = "_staging"
_LEASE = "_lease.json"
# Rows buffered before they are written as one row group (tiny row groups read slowly).
_ROW_GROUP_ROWS = 256
_ROW_GROUP_BYTES = 64 << 20


def _is_data_path(relative: str) -> bool:
    """A committed data file: ``.parquet`` with no ``_``/``.``-prefixed path component."""
    parts = relative.strip("/").split("/")
    return relative.endswith(".parquet") and not any(p.startswith(("_", ".")) for p in parts)


def _files(fs: Any, folder: str) -> list[str]:
    from pyarrow import fs as pafs

    selector = pafs.FileSelector(folder, recursive=True, allow_not_found=True)
    return [i.path for i in fs.get_file_info(selector) if i.type == pafs.FileType.File]


def data_files(fs: Any, root: str) -> list[str]:
    """Every committed data file under `root` (an empty list for a missing or empty root,
    an empty bucket, or one holding only staging)."""
    root = root.rstrip("/")
    return sorted(p for p in _files(fs, root) if _is_data_path(p[len(root) :]))


def read(fs: Any, root: str, schema: Any, columns: list[str] | None = None) -> Any:
    """The committed rows of the table at `root` with `schema` (columns a file lacks, e.g.
    from an older version, come back null), as a pyarrow Table."""
    import pyarrow.dataset as ds

    files = data_files(fs, root)
    if not files:
        return schema.empty_table().select(columns or schema.names)
    dataset = ds.dataset(files, schema=schema, filesystem=fs, format="parquet")
    return dataset.to_table(columns=columns)


def _mkdirs(fs: Any, path: str) -> None:
    if fs.type_name == "local":  # object stores have no folders (a marker would be listed)
        fs.create_dir(path.rsplit("/", 1)[0], recursive=True)


@dataclass
class _Recovery:
    """What `recover` found of dead runs' staging."""

    runs: list[str] = field(default_factory=list)
    adopted: int = 0  # complete chunks moved into the table
    already_committed: int = 0  # chunks the table already had (the move's delete was lost)
    deleted: int = 0  # partial files

    def __str__(self) -> str:
        if not self.runs:
            return "no staging left by earlier runs"
        return (
            f"staging of {len(self.runs)} dead run(s) ({', '.join(self.runs)}): "
            f"{self.adopted} complete chunk(s) adopted, {self.already_committed} already "
            f"committed, {self.deleted} partial file(s) deleted"
        )


def recover(fs: Any, root: str, own_run: str) -> _Recovery:
    """Adopt or delete what dead runs left in staging. Only call while holding the lease."""
    import pyarrow.parquet as pq

    root = root.rstrip("/")
    staging = f"{root}/{STAGING}"
    out = _Recovery()
    for path in sorted(_files(fs, staging)):
        run, _, relative = path[len(staging) + 1 :].partition("/")
        if run == own_run:
            continue
        if run not in out.runs:
            out.runs.append(run)
        target = f"{root}/{relative}"
        if not relative.endswith(".parquet"):
            out.deleted += 1
        elif fs.get_file_info(target).is_file:
            out.already_committed += 1
        else:
            try:
                with fs.open_input_file(path) as handle:
                    pq.read_metadata(handle)
            except Exception:  # no footer: the writer died mid-file
                out.deleted += 1
            else:
                _mkdirs(fs, target)
                fs.move(path, target)
                out.adopted += 1
                continue
        fs.delete_file(path)
    for run in out.runs:
        fs.delete_dir(f"{staging}/{run}")
    _remove_empty(fs, staging)
    return out


def _remove_empty(fs: Any, folder: str) -> None:
    """Delete a folder holding no files (on S3: the marker objects pyarrow leaves when it
    deletes a folder's last file)."""
    from pyarrow import fs as pafs

    if fs.get_file_info(folder).type == pafs.FileType.Directory and not _files(fs, folder):
        fs.delete_dir(folder)


@dataclass
class _Chunk:
    """A committed chunk: where it went and how many rows it holds."""

    path: str
    rows: int


class ChunkWriter:
    """Streams rows into Parquet chunks of `commit_every` rows (or `commit_interval_s`
    seconds), each committed atomically as soon as it is complete.

    `partition()` names the folder of the next chunk (e.g. ``scored_date=2026-11-26``; ""
    for none); `before_close(relative)` runs before a chunk's file is closed (a detail
    table's chunk of that name is published then); `before_commit()` runs before each move
    and may raise to stop the commit (the lease check). Storage calls are retried like clip
    reads (`attempts`, `backoff_s`).
    """

    def __init__(
        self,
        fs: Any,
        root: str,
        run_id: str,
        schema: Any,
        commit_every: int,
        commit_interval_s: float,
        partition: Callable[[], str] = lambda: "",
        before_commit: Callable[[], None] = lambda: None,
        attempts: int = 1,
        backoff_s: float = 0.0,
        before_close: Callable[[str], None] = lambda relative: None,
    ) -> None:
        self.fs, self.root, self.run_id, self.schema = fs, root.rstrip("/"), run_id, schema
        self.commit_every, self.commit_interval_s = commit_every, commit_interval_s
        self.partition, self.before_commit = partition, before_commit
        self.before_close = before_close
        self.attempts, self.backoff_s = attempts, backoff_s
        self.committed: list[_Chunk] = []
        self._buffer: list[Any] = []
        self._buffered = 0
        self._writer: Any = None
        self._relative = ""
        self._rows = 0  # rows of the open chunk (written + buffered)
        self._opened_at = 0.0
        # Chunks are written on the driver's disk: in the output's staging when it is local
        # (then renamed in), in a temporary folder when it is S3 (then uploaded in one go).
        from pyarrow import fs as pafs

        self._local = pafs.LocalFileSystem()
        self._spool = self.staging if fs.type_name == "local" else tempfile.mkdtemp(
            prefix=f"emotiw-{run_id}-"
        )  # fmt: skip

    @property
    def staging(self) -> str:
        return f"{self.root}/{STAGING}/{self.run_id}"

    def write(self, table: Any) -> None:
        """Append rows; commits every full chunk (a big table is split across chunks)."""
        table = table.select(self.schema.names).cast(self.schema)
        while table.num_rows:
            if self._writer is None and not self._buffer:
                self._opened_at = time.monotonic()
            take = min(table.num_rows, self.commit_every - self._rows)
            self._buffer.append(table.slice(0, take))
            self._buffered += take
            self._rows += take
            table = table.slice(take)
            if self._buffered >= _ROW_GROUP_ROWS or sum(t.nbytes for t in self._buffer) > (
                _ROW_GROUP_BYTES
            ):
                self._flush()
            due = time.monotonic() - self._opened_at >= self.commit_interval_s
            if self._rows >= self.commit_every or due:
                self.commit()

    def _flush(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not self._buffer:
            return
        if self._writer is None:
            self._relative = "/".join(
                p for p in (self.partition(), f"part-{self.run_id}-{len(self.committed):05d}")
                if p
            ) + ".parquet"  # fmt: skip
            path = f"{self._spool}/{self._relative}"
            _mkdirs(self._local, path)
            self._writer = pq.ParquetWriter(path, self.schema, filesystem=self._local)
        self._writer.write_table(pa.concat_tables(self._buffer))
        self._buffer, self._buffered = [], 0

    def commit(self, relative: str = "") -> _Chunk | None:
        """Close the open chunk and publish it into the table (None if it has no rows), under
        `relative` when given (a detail table's chunk takes its main table chunk's name)."""
        if not self._rows:
            return None
        self._flush()
        self.before_close(self._relative)
        self._writer.close()
        self._writer = None
        self.before_commit()
        source, target = (
            f"{self._spool}/{self._relative}",
            f"{self.root}/{relative or self._relative}",
        )
        if self.fs.type_name == "local":  # a rename within the output's filesystem
            _mkdirs(self.fs, target)
            self.fs.move(source, target)
        else:  # one upload: the object appears whole when it completes (a retry rewrites it)
            retry.call(
                lambda: storage.upload_file(source, self.fs, target), self.attempts, self.backoff_s
            )
            self._local.delete_file(source)
        chunk = _Chunk(target, self._rows)
        self.committed.append(chunk)
        self._rows = 0
        return chunk

    def close(self) -> None:
        """Publish the last chunk and remove this run's (now empty) staging."""
        self.commit()
        self._remove_spool()

    def abort(self) -> None:
        """After a failure: drop the open chunk. It is deleted, not committed or left for
        adoption: the failure may be a lost lease, and the run that took over has already
        recovered staging and may be scoring the same clips."""
        if self._writer is not None:
            with contextlib.suppress(Exception):
                self._writer.close()
            self._writer = None
        self._buffer, self._buffered, self._rows = [], 0, 0
        self._remove_spool()

    def _remove_spool(self) -> None:
        shutil.rmtree(self._spool, ignore_errors=True)
        if self.fs.type_name == "local":  # on S3 nothing was staged
            _remove_empty(self.fs, f"{self.root}/{STAGING}")

    @property
    def rows(self) -> int:
        return sum(c.rows for c in self.committed)
