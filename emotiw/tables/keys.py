"""Which clips (or windows) a table already has a final row for: the done-key index that
`--skip-existing` consults, and a dry run's counts from it.

The keys are 64-bit hashes of (uri, etag), sorted, built by streaming a table's key columns,
so the driver holds 8 bytes per row rather than the table's history.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable
from typing import Any

import numpy as np

from emotiw.tables.chunks import data_files


def _key(*parts: str | None) -> int:
    """64-bit hash of a key (uri and etag): a collision needs ~4e9 keys to become likely."""
    text = "\0".join("" if p is None else p for p in parts)
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


class KeyIndex:
    """The clips a table has a final row for, as sorted 64-bit hashes: 8 bytes per row
    instead of a Python set of (uri, etag) strings (~250 bytes), built by streaming the key
    columns in batches, so a 10-million-row table's index is 80 MB and the driver never holds
    its history. Old rows without an etag match their URI whatever the etag. With `seen`
    (dry runs) it also keeps every row's keys, final or not, to say why a clip is pending. An
    index of the windows table also knows each unfinished video's window count (`videos`)."""

    def __init__(
        self,
        pairs: np.ndarray,
        uris: np.ndarray,
        seen: tuple[np.ndarray, np.ndarray] | None = None,
        videos: dict[tuple[str, str | None], int] | None = None,
    ) -> None:
        self.pairs, self.uris = np.unique(pairs), np.unique(uris)
        self.seen = None if seen is None else (np.unique(seen[0]), np.unique(seen[1]))
        self.videos = videos or {}

    def __len__(self) -> int:
        return len(self.pairs) + len(self.uris)

    @classmethod
    def empty(cls) -> KeyIndex:
        """Nothing done and nothing seen (every clip is new)."""
        none = np.zeros(0, np.uint64)
        return cls(none, none, (none, none))

    def done(self, uri: str, etag: str) -> bool:
        return _member(self.pairs, _key(uri, etag)) or _member(self.uris, _key(uri))

    def status(self, uri: str, etag: str) -> str:
        """``done``; ``new`` (no row for the URI); ``retry`` (rows for these bytes, none final:
        transient errors); ``changed`` (rows only for other bytes). Needs `seen`."""
        if self.done(uri, etag):
            return "done"
        assert self.seen is not None, "built without seen=True"
        seen_pairs, seen_uris = self.seen
        if not _member(seen_uris, _key(uri)):
            return "new"
        return "retry" if _member(seen_pairs, _key(uri, etag)) else "changed"


def window_key(uri: str, window: int) -> str:
    """The key of a video's window in a `KeyIndex` of the windows table."""
    return f"{uri}\0{window}"


def _member(sorted_keys: np.ndarray, key: int) -> bool:
    i = int(np.searchsorted(sorted_keys, np.uint64(key)))
    return i < len(sorted_keys) and int(sorted_keys[i]) == key


def done_keys(
    fs: Any,
    root: str,
    schema: Any,
    final_errors: bool = True,
    seen: bool = False,
    model_uri: str | None = None,
    crash_runs: int | None = 2,
    windows: bool = False,
    videos_done: KeyIndex | None = None,
) -> KeyIndex:
    """The `KeyIndex` of every clip the table has a final row for: a success, or (with
    `final_errors`) an error that is a property of the clip (not_media, empty, ...). Clips
    whose rows are all transient errors (io, timeout, ...) are not done, so a run tries them
    again without being told. `seen` also indexes every row (for `KeyIndex.status`); with
    `model_uri` (the scores table) only that model's rows count, so a new model version
    rescores every clip once. A clip ``crashed`` in `crash_runs` runs is done (None: never).
    With `windows` (the windows table) the keys are windows: ask for `window_key(uri, i)`;
    windows of the `videos_done` (the scores table's index) are left out, as no run asks for
    them: the index holds the windows of unfinished videos only, not the whole table's, and
    their videos' window counts (`KeyIndex.videos`, for `complete_videos`)."""
    import pyarrow.dataset as ds

    from emotiw.core.errors import TRANSIENT_REASONS

    pairs: list[np.ndarray] = []
    uris: list[np.ndarray] = []
    seen_pairs: list[np.ndarray] = []
    seen_uris: list[np.ndarray] = []
    crashes: Counter[tuple[str, str | None]] = Counter()  # crashed rows only: few
    videos: dict[tuple[str, str | None], int] = {}  # unfinished videos' window counts
    files = data_files(fs, root)
    if files:
        dataset = ds.dataset(files, schema=schema, filesystem=fs, format="parquet")
        columns = ["uri", "etag", "error_reason"]
        columns += ["window_index", "n_windows"] if windows else []
        where = None if model_uri is None else ds.field("model_uri") == model_uri
        for batch in dataset.to_batches(columns=columns, filter=where, batch_size=65_536):
            keys = batch.to_pydict()
            rows: Iterable[tuple[str, str | None, str | None]]
            rows = zip(*(keys[c] for c in columns[:3]), strict=True)
            if windows:  # keyed by window; only the windows of unfinished videos
                unfinished = []
                for (u, e, r), w, n in zip(rows, keys["window_index"], keys["n_windows"],
                                           strict=True):  # fmt: skip
                    if videos_done is None or not videos_done.done(u, e):
                        unfinished.append((window_key(u, w), e, r))
                        videos[(u, e)] = n
                rows = unfinished
            with_etag, without, any_pair, any_uri = [], [], [], []
            for uri, etag, reason in rows:
                if reason == "crashed":  # done once it crashed in `crash_runs` runs
                    crashes[(uri, etag)] += 1
                final = reason is None or (final_errors and reason not in TRANSIENT_REASONS)
                final = final and (reason != "crashed" or crashes[(uri, etag)] == crash_runs)
                if final:
                    (with_etag if etag is not None else without).append(
                        _key(uri, etag) if etag is not None else _key(uri)
                    )
                if seen:
                    any_uri.append(_key(uri))
                    if etag is not None:
                        any_pair.append(_key(uri, etag))
            pairs.append(np.array(with_etag, np.uint64))
            uris.append(np.array(without, np.uint64))
            seen_pairs.append(np.array(any_pair, np.uint64))
            seen_uris.append(np.array(any_uri, np.uint64))
    empty = np.zeros(0, np.uint64)

    def cat(parts: list[np.ndarray]) -> np.ndarray:
        return np.concatenate(parts or [empty])

    history = (cat(seen_pairs), cat(seen_uris)) if seen else None
    return KeyIndex(cat(pairs), cat(uris), history, videos)


def complete_videos(windows_done: KeyIndex) -> list[tuple[str, str | None]]:
    """The unfinished videos (no scores row) of a windows-table index whose every window has
    a final row: a run died between committing a video's last window and its row."""
    return [
        (uri, etag) for (uri, etag), n in windows_done.videos.items()
        if all(windows_done.done(window_key(uri, i), etag) for i in range(n))
    ]  # fmt: skip


def pending(objects: Iterable[Any], done: KeyIndex) -> tuple[int, int, dict[str, int]]:
    """A dry run's counts over listed objects (``.uri``, ``.etag``): (listed, already done,
    {new, changed, retry}); `done` built with ``seen=True`` (`KeyIndex.status`)."""
    listed, skipped = 0, 0
    counts = dict.fromkeys(("new", "changed", "retry"), 0)
    for o in objects:
        listed += 1
        status = done.status(o.uri, o.etag)
        if status == "done":
            skipped += 1
        else:
            counts[status] += 1
    return listed, skipped, counts


def describe_pending(
    listed: int, skipped: int, counts: dict[str, int], output: str, verb: str = "score"
) -> str:
    """One line of a dry run's counts (``verb``: score, extract)."""
    why = ", ".join(f"{v} {k}" for k, v in counts.items())
    done = {"score": "scored", "extract": "extracted"}.get(verb, "done")
    return (
        f"dry run: {listed} clips listed, {skipped} already {done}, "
        f"{sum(counts.values())} to {verb} ({why}) into {output}"
    )
