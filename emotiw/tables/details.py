"""Detail tables (the per-face table): one row per detail a modality declares (a face kept in
a sampled frame, `Modality.details_table`), written by the scoring job beside its scores table
(and by the extract job beside the feature table with ``--details-output``).

Every detail chunk belongs to one chunk of the main table and has its name
(``<partition>/part-<run>-<n>.parquet``); it is published just before that main chunk is
closed. So, after any crash: a main chunk that is in the table (committed, or adopted from
staging by the next run) has its detail chunk; a detail chunk whose main chunk never landed
is an orphan, which the next run's `_prune` deletes (with any detail staging) before it writes.
A clip's details are thus in the table exactly once, next to its one committed row: join on
``uri`` and ``run_id``.
"""

from __future__ import annotations

import posixpath
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from emotiw.tables.chunks import STAGING, ChunkWriter, _files, data_files

AUTO, NONE = "auto", "none"


def detail_root(details_output: str, output: str) -> str | None:
    """Where a job's detail tables go: ``auto`` -> beside the main table, ``<output>-details``
    (none for a main table at a bucket root: it has no sibling); ``none`` or "" -> not
    written; else the given folder. Each table is a subfolder named after it (``faces/``)."""
    if details_output in (NONE, ""):
        return None
    if details_output != AUTO:
        return details_output.rstrip("/")
    path = output.rstrip("/")
    if path.startswith("s3://") and "/" not in path[len("s3://") :]:
        return None
    return f"{path}-details"


def _table_root(root: str, spec: Any) -> str:
    return posixpath.join(root, spec.details_table)


def _detail_rows(block: Any, spec: Any, made_at: str) -> Any:
    """A block of main-table rows (carrying the in-flight detail column) -> the detail
    table's rows: one per detail, with the clip's keys, its run's ids and `made_at` (the
    main row's time column)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from emotiw.tables.schema import detail_schema, details_column

    schema = detail_schema(spec)
    nested = block[details_column(spec.name)].combine_chunks()
    parents = pc.list_parent_indices(nested)
    flat = nested.flatten()  # null lists (failed clips) have no details
    own = {c.name for c in spec.details}
    columns = []
    for f in schema:
        source = made_at if f.name == "made_at" else f.name
        if f.name in own:
            columns.append(pc.struct_field(flat, f.name))
        elif source in block.column_names:
            columns.append(block[source].take(parents))
        else:  # model_uri in the extract job's tables
            columns.append(pa.nulls(len(parents), f.type))
    return pa.Table.from_arrays([c.cast(f.type) for c, f in zip(columns, schema, strict=True)],
                                schema=schema)  # fmt: skip


@dataclass
class _Companion:
    """One detail table being written beside the main table."""

    spec: Any
    writer: ChunkWriter
    rows: int = 0


@dataclass
class _PairedWriter:
    """The main table's `ChunkWriter` and its detail tables' writers, used as one writer
    (`pipeline.write_stream`): each block's details go into the detail chunk that belongs to
    the main chunk its rows go into, and are published (under the main chunk's name) just
    before that chunk is closed."""

    main: ChunkWriter
    made_at: str
    companions: list[_Companion] = field(default_factory=list)
    _open: int = 0

    def __post_init__(self) -> None:
        self.main.before_close = self._publish

    @property
    def committed(self) -> list[Any]:
        return self.main.committed

    def committed_rows(self) -> int:
        """Main-table rows committed so far (in the order they were written)."""
        return self.main.rows

    def detail_counts(self) -> dict[str, int]:
        return {c.spec.details_table: c.rows for c in self.companions}

    def write(self, table: Any) -> None:
        while table.num_rows:  # never split one clip's row from its details across chunks
            piece = table.slice(0, self.main.commit_every - self._open)
            table = table.slice(piece.num_rows)
            for c in self.companions:
                rows = _detail_rows(piece, c.spec, self.made_at)
                c.writer.write(rows)
                c.rows += rows.num_rows
            self._open += piece.num_rows
            self.main.write(piece)  # commits when full or due -> `_publish`

    def _publish(self, relative: str) -> None:
        for c in self.companions:
            c.writer.commit(relative)
        self._open = 0

    def close(self) -> None:
        self.main.close()
        for c in self.companions:
            c.writer.close()

    def abort(self) -> None:
        self.main.abort()
        for c in self.companions:
            c.writer.abort()


def paired(
    main: ChunkWriter, specs: Sequence[Any], root: str | None, storage: Any, made_at: str,
    committed: Any, also_landed: set[str] = frozenset(),  # type: ignore[assignment]
) -> _PairedWriter:  # fmt: skip
    """`main` with a writer per detail table of the `specs` that declare one, under `root`
    (none when None), after pruning what dead runs left there (noted in
    ``committed.recovery``); the detail writers share the main writer's run, lease check and
    retries. Call while holding the main table's lease, after `chunks.recover`.
    `also_landed`: chunk names (relative) that count as landed main chunks too (the scores
    table's chunks of runs from before the per-face table was paired with the windows)."""
    from emotiw.io.storage import arrow_filesystem
    from emotiw.tables.schema import detail_schema

    specs = [s for s in specs if s.details_table]
    pruned = _prune(main.fs, main.root, specs, root, storage, main.run_id, also_landed)
    committed.recovery += f"; {pruned}" if pruned else ""
    out = _PairedWriter(main, made_at)
    for spec in specs if root else ():
        fs, path = arrow_filesystem(_table_root(root, spec), storage)  # type: ignore[arg-type]
        writer = ChunkWriter(
            fs, path, main.run_id, detail_schema(spec), commit_every=1 << 62,
            commit_interval_s=float("inf"), before_commit=main.before_commit,
            attempts=main.attempts, backoff_s=main.backoff_s,
        )  # fmt: skip
        out.companions.append(_Companion(spec, writer))
    return out


def _prune(
    main_fs: Any, main_root: str, specs: Sequence[Any], root: str | None, storage: Any,
    own_run: str, also_landed: set[str] = frozenset(),  # type: ignore[assignment]
) -> str:  # fmt: skip
    """Delete what dead runs left in the detail tables: their staging, and detail chunks
    whose main chunk never landed. Only call while holding the main table's lease (after
    `chunks.recover`, so adopted main chunks count). Returns a summary phrase."""
    from emotiw.io.storage import arrow_filesystem

    if not root or not specs:
        return ""
    main_root = main_root.rstrip("/")
    landed = {p[len(main_root) + 1 :] for p in data_files(main_fs, main_root)} | also_landed
    staged = orphans = 0
    for spec in specs:
        fs, path = arrow_filesystem(_table_root(root, spec), storage)
        path = path.rstrip("/")
        for file in _files(fs, f"{path}/{STAGING}"):
            if file[len(path) + len(STAGING) + 2 :].split("/", 1)[0] != own_run:
                fs.delete_file(file)
                staged += 1
        for file in data_files(fs, path):
            if file[len(path) + 1 :] not in landed:
                fs.delete_file(file)
                orphans += 1
    names = ", ".join(s.details_table for s in specs)
    return f"detail tables ({names}): {orphans} orphan chunk(s), {staged} staged file(s) removed"
