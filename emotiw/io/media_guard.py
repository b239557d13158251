"""Files built to exhaust a decoder's memory, refused from their header alone.

A dimension bomb (a header claiming 16k x 16k frames: each decoded frame then takes
width x height x 1.5 bytes per decoder thread), hundreds of streams or megabytes of tags
would have an actor killed by the OOM killer halfway through decoding it; refused here, the
clip becomes a ``too_large`` error row and costs nothing. The limits are `MediaConfig`'s
``max_*`` fields (flags of every job that decodes).
"""

from __future__ import annotations

from typing import Any

from emotiw.core.config import MediaConfig
from emotiw.core.errors import DecodeError, DecodeReason


def refuse_large_file(size: int | None, cfg: MediaConfig, label: str) -> None:
    """Raise `DecodeError` (``too_large``) for a file of more than ``max_file_bytes``: a
    clip's bytes are read whole into its actor's memory, so a multi-gigabyte recording
    would take the actor's memory before a frame is decoded. Checked on the listing's size
    before the read, and on the bytes read."""
    if size is not None and size > cfg.max_file_bytes:
        raise DecodeError(
            DecodeReason.TOO_LARGE,
            f"{label}: {size:,} bytes, more than max_file_bytes {cfg.max_file_bytes:,} "
            "(--media-max-file-bytes; each actor holds a clip's whole file in memory: raise "
            "--memory-per-extract-actor with it)",
        )


def refuse_too_large(container: Any, video: Any, cfg: MediaConfig, label: str) -> None:
    """Raise `DecodeError` (``too_large``) when the opened `container` (PyAV) or its `video`
    stream asks for more than `cfg` allows."""
    width, height = video.codec_context.width, video.codec_context.height
    tags = [container.metadata, *(s.metadata for s in container.streams)]
    tag_bytes = sum(len(str(k)) + len(str(v)) for t in tags for k, v in t.items())
    n_streams = len(container.streams)
    for limit, value, what in (
        ("max_frame_pixels", width * height, f"{width}x{height} frames"),
        ("max_streams", n_streams, f"{n_streams} streams"),
        ("max_metadata_bytes", tag_bytes, f"{tag_bytes:,} bytes of metadata"),
    ):
        if value > getattr(cfg, limit):
            flag = "--media-" + limit.replace("_", "-")
            message = f"{label}: {what}, more than {limit} {getattr(cfg, limit):,} ({flag})"
            raise DecodeError(DecodeReason.TOO_LARGE, message)
