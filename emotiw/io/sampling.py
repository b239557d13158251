"""Which decoded frames a clip (or a window of a long video) keeps: the paper's every 10th
frame, 12 of them, placed by presentation timestamps (`media.decode`'s frame half); and where
decoding a window starts."""

from __future__ import annotations

from typing import Any

import numpy as np

from emotiw.core.config import MediaConfig


class FrameSampler:
    """Chooses which decoded frames fill the `n_frames` sample slots.

    Slot k takes the first frame whose index falls in ``[k * step, (k + 1) * step)``: for a
    constant-rate stream exactly frames 0, 10, 20, ... as in the paper. Indices come from
    presentation timestamps where the stream has them (so a dropped frame shifts nothing),
    else from counting decoded frames. Timestamps also tell, before decoding a packet,
    whether its frame can land in an open slot; when it cannot, the decoder is told to skip
    it if no other frame references it (`skip_frame=NONREF`), which saves about a third of
    the decoding of a typical H.264 stream with B-frames without changing any kept pixel.
    """

    def __init__(self, video: Any, cfg: MediaConfig, offset_s: float = 0.0) -> None:
        self.step, self.n = cfg.frame_step, cfg.n_frames
        self.mask = np.zeros(cfg.n_frames, dtype=bool)
        self.indices = np.full(cfg.n_frames, -1, dtype=np.int32)
        rate = video.average_rate or video.guessed_rate
        self.fps = float(rate) if rate else 0.0
        self.time_base = float(video.time_base) if video.time_base else 0.0
        self.start = video.start_time
        self.by_pts = self.fps > 0 and self.time_base > 0
        self.offset_s = offset_s  # a window's start: its first frame is index 0
        self.count = 0  # frames the decoder returned

    def index_of(self, pts: int | None) -> int | None:
        if not self.by_pts or pts is None:
            return None
        if self.start is None:
            self.start = pts
        return round(((pts - self.start) * self.time_base - self.offset_s) * self.fps)

    def wants_packet(self, pts: int | None) -> bool:
        """Could the frame of a packet with this pts fill an open slot? (True if unknown.)"""
        index = self.index_of(pts)
        if index is None:
            return True
        slot = index // self.step
        return 0 <= slot < self.n and not self.mask[slot]

    def slot_for(self, frame: Any) -> tuple[int, int] | None:
        """(slot, index) if this decoded frame fills an open slot, else None."""
        index = self.index_of(frame.pts)
        if index is None:  # no timestamps: count frames (from the seek point in a window)
            index = self.count
        self.count += 1
        slot = index // self.step
        if index < 0 or slot >= self.n or self.mask[slot]:
            return None
        return slot, index

    def past_last_slot(self, frame: Any) -> bool:
        index = self.index_of(frame.pts)
        return index is not None and index // self.step >= self.n

    @property
    def full(self) -> bool:
        return bool(self.mask.all())


def seek_keyframe(container: Any, video: Any, origin: float, at_s: float) -> None:
    """Position `container` at the video keyframe at or before `at_s` seconds after `origin`
    (the video's first timestamp). A container with an index (MP4, Matroska) lands on one; an
    MPEG-TS file has none and lands on the packet at that time, keyframe or not, whose frames
    cannot be decoded until the next keyframe (seconds on): so step back (1, 2, 4, ... s)
    until the first video packet is a keyframe, or the video's start."""
    import av

    back = 0.0
    while True:
        target = max(0.0, at_s - back)
        position = int((origin + target) * av.time_base)
        container.seek(position, backward=True, any_frame=False)
        if target == 0.0:
            return
        first = next((p for p in container.demux(video) if p.size), None)
        if first is None or first.is_keyframe:
            container.seek(position, backward=True, any_frame=False)  # `first` was read
            return
        back = max(1.0, 2 * back)
