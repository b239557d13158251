"""A listed work item (one clip, or one window of a long video) -> its feature row: reading
the bytes (or, for a window, seeking in the file), retrying transient failures, and the row of
an item whose process died. Used by the extract actors (`emotiw.jobs.pipeline`), inside the
isolated clip process where there is one (`emotiw.io.clip_process`)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from emotiw.core.config import MediaConfig, StorageConfig
from emotiw.io.weights import WeightsConfig
from emotiw.io.windows import Window
from emotiw.models.features import ClipFeatureExtractor, ModalityConfigs, base_row


def _extract_item(
    extractor: ClipFeatureExtractor,
    item: Mapping[str, Any],
    storage: StorageConfig | None,
    run_id: str,
    attempts: int = 1,
    backoff_s: float = 0.0,
) -> dict[str, Any]:
    """One listed clip (uri, video_id, etag, size_bytes, label; a window of a long video
    also has the `WINDOW_COLUMNS`) -> its feature row, reading and extracting again while
    the failure is transient (io, timeout, out_of_memory, internal); the row says how many
    tries it took and whether a later run should retry.

    A clip (a video that is one window) is read whole, so the row has its bytes' sha256 and
    the etag of what was read; a window of a longer video is decoded from the file itself,
    seeking to the window (range reads on S3), so neither the file size limit nor the read
    of the whole file applies: the row has the listing's etag and no sha256."""
    from emotiw.core.errors import is_transient
    from emotiw.core.retry import delays
    from emotiw.io.media_guard import refuse_large_file
    from emotiw.io.storage import read_bytes_and_etag

    label = item.get("label")
    window = _window_of(item)
    tries = 0
    for wait in [*delays(attempts, backoff_s), None]:
        tries += 1
        etag, size = item.get("etag"), item.get("size_bytes")
        if window is not None and not window.whole:
            row = extractor(str(item["uri"]), str(item["video_id"]), str(item["uri"]), label,
                            run_id, window, storage)  # fmt: skip
            if wait is None or not is_transient(row.get("error_reason")):
                break
            time.sleep(wait)
            continue
        try:  # the fingerprint of the bytes read, which may be newer than the listing's
            refuse_large_file(size, extractor.media, str(item["uri"]))  # before reading it
            data, etag = read_bytes_and_etag(str(item["uri"]), storage)
            size = len(data)
            refuse_large_file(size, extractor.media, str(item["uri"]))  # grown since listed
        except Exception as exc:
            data = exc
        row = extractor(str(item["uri"]), str(item["video_id"]), data, label, run_id)
        if wait is None or not is_transient(row.get("error_reason")):
            break
        time.sleep(wait)
    # the probe read the file too, within the same --attempts: the row says the larger count
    probe_tries = int(item.get("probe_tries") or 0)
    row.update(etag=etag, size_bytes=size, attempts=max(tries, probe_tries))
    if window is not None:
        row.update(window.columns())
    row["retryable"] = is_transient(row.get("error_reason")) if row.get("error") else None
    return row


class ItemExtractor:
    """`_extract_item` with its extractors built once: what an actor's clip process holds
    (`emotiw.io.clip_process`), or the actor itself without isolation."""

    def __init__(
        self,
        configs: ModalityConfigs,
        media: MediaConfig | None = None,
        weights: WeightsConfig | None = None,
        defer: bool = False,
    ) -> None:
        self.extractor = ClipFeatureExtractor(configs, media, weights, defer)

    def info(self) -> dict[str, str]:
        return self.extractor.info()

    def __call__(
        self,
        item: Mapping[str, Any],
        storage: StorageConfig | None,
        run_id: str,
        attempts: int = 1,
        backoff_s: float = 0.0,
    ) -> dict[str, Any]:
        return _extract_item(self.extractor, item, storage, run_id, attempts, backoff_s)


def _window_of(item: Mapping[str, Any]) -> Window | None:
    """The item's window (None for an item listed without one: the extract job's clips)."""
    if item.get("window_index") is None:
        return None
    return Window(int(item["window_index"]), float(item["start_s"]), float(item["end_s"]),
                  int(item["n_windows"]), float(item["video_duration_s"] or 0.0))  # fmt: skip


def crashed_row(
    item: Mapping[str, Any], run_id: str, info: Mapping[str, str] | None, deaths: list[str]
) -> dict[str, Any]:
    """The error row of a clip during which its process died on every try (`deaths`: how
    each died, `clip_process.describe_exit`)."""
    tries = len(deaths)
    message = (f"the process extracting this clip died on each of its {tries} tries "
               f"(last: {deaths[-1]})")  # fmt: skip
    row = base_row(str(item["uri"]), str(item["video_id"]), item.get("label"), run_id, info)
    row.update(error=f"crashed: {message}", error_reason="crashed", etag=item.get("etag"),
               size_bytes=item.get("size_bytes"), attempts=tries, retryable=True)  # fmt: skip
    window = _window_of(item)
    row.update(window.columns() if window is not None else {})
    return row
