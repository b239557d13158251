"""Videos of any length: a video is cut into windows, each sampled and scored as a clip is.

The paper's models are clip models (12 frames, every 10th, and about 5 s of audio). A video
no longer than `MediaConfig.max_duration_s` (every VGAF clip) is one window decoded exactly as
before, from its start; a longer one is cut into windows of `window_s` every `hop_s` up to
`max_video_s`, and each window becomes its own work item: `probe` reads the duration from the
container's header (a few KiB, range reads on S3), `plan` lists the windows, and
`media.decode(..., window=w)` seeks to the keyframe before a window and reads from there, so
no task reads the whole file and no actor's memory grows with the video's length.

The frame rule is the paper's in frames, not seconds: a window keeps 12 frames, every 10th
decoded one from its start, so at 25 fps they span its first 4.4 s and at 60 fps its first
1.8 s (as for a 60 fps clip today); the audio covers the whole window.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

from emotiw.core.config import MediaConfig, StorageConfig

# A tail shorter than this after the last full window is left out (say so in `coverage`):
# a fraction of a second holds no sampled frame to score.
_MIN_TAIL_S = 0.5


@dataclass(frozen=True)
class Window:
    """One stretch of a video, scored as one clip.

    Attributes:
        index: position in the video, from 0.
        start_s: seconds from the video's start.
        end_s: end (exclusive), seconds.
        n_windows: windows of the video in all.
        duration_s: the video's duration as its header says (0.0 if unknown).
    """

    index: int
    start_s: float
    end_s: float
    n_windows: int
    duration_s: float

    def columns(self) -> dict[str, float | int]:
        """The window's in-flight columns (`emotiw.tables.schema.WINDOW_COLUMNS`)."""
        return {"window_index": self.index, "start_s": self.start_s, "end_s": self.end_s,
                "n_windows": self.n_windows, "video_duration_s": self.duration_s}  # fmt: skip

    @property
    def whole(self) -> bool:
        """The video is this one window (decoded from its bytes, as a clip always was)."""
        return self.n_windows == 1


@dataclass(frozen=True)
class WindowConfig:
    """How long videos are cut (the score job's ``--window-s`` / ``--hop-s`` /
    ``--max-video-s``).

    Attributes:
        window_s: length of a window in seconds (default: the paper's clip span, 5 s).
        hop_s: seconds from one window's start to the next (0: equal to `window_s`, no
            overlap; less overlaps windows, more leaves gaps).
        max_video_s: seconds of a video scored at most (6 h); a longer one is scored up to
            this and its row says so in `coverage`.
    """

    window_s: float = 5.0
    hop_s: float = 0.0
    max_video_s: float = 6 * 3600.0

    def __post_init__(self) -> None:
        if self.window_s <= _MIN_TAIL_S or self.hop_s < 0 or self.max_video_s <= 0:
            raise ValueError(
                f"window_s must be > {_MIN_TAIL_S}, hop_s >= 0 and max_video_s > 0 "
                f"(got {self.window_s}, {self.hop_s}, {self.max_video_s})"
            )

    @property
    def hop(self) -> float:
        return self.hop_s or self.window_s


def plan(duration_s: float, cfg: WindowConfig, media: MediaConfig) -> list[Window]:
    """The windows of a video of `duration_s` seconds. Unknown (0) or no longer than
    `media.max_duration_s`: one window, the clip as it always was decoded."""
    if duration_s <= media.max_duration_s:
        return [
            Window(0, 0.0, duration_s if duration_s > 0 else media.max_duration_s, 1, duration_s)
        ]
    span = min(duration_s, cfg.max_video_s)
    starts = [i * cfg.hop for i in range(math.ceil(span / cfg.hop))]
    starts = [s for s in starts if min(s + cfg.window_s, span) - s >= _MIN_TAIL_S] or [0.0]
    return [
        Window(i, s, min(s + cfg.window_s, span), len(starts), duration_s)
        for i, s in enumerate(starts)
    ]


def probe(source: str | os.PathLike[str], storage: StorageConfig | None = None) -> float:
    """The video's duration in seconds from its container's header (0.0 when the header
    does not say); reads the header only.

    Raises:
        DecodeError: as `media.decode` would for the file (not_found, empty, not_media, ...).
    """
    import av

    from emotiw.io.media import WINDOW_READ_BYTES, open_container, open_source

    with (
        open_source(source, storage, WINDOW_READ_BYTES) as (av_input, label),
        open_container(av_input, label) as container,
    ):
        if container.duration is not None:
            return float(container.duration / av.time_base)
        video = container.streams.video[0] if container.streams.video else None
        if video is not None and video.duration is not None and video.time_base:
            return float(video.duration * video.time_base)
        return 0.0
