"""Decoding: a clip (path, URL or bytes) -> `Clip` of sampled RGB frames and mono audio.

One demux pass reads the video and audio streams together and stops as soon as both have what
the models need: `n_frames` frames taken every `frame_step`-th decoded frame (paper 4.1) and
the audio up to `max_duration_s`. Only the sampled frames are converted to RGB (and resized in
the same swscale call), because colour conversion costs several times more than decoding.
Frames keep the video's displayed aspect ratio (`MediaConfig.geometry`), upright.
Every failure is a `DecodeError` with a machine-readable reason; a decode never runs past
`timeout_s`.
"""

from __future__ import annotations

import contextlib
import io
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import IO, Any, Protocol

import numpy as np

from emotiw.core.config import MediaConfig, StorageConfig
from emotiw.core.errors import DecodeError, DecodeReason, StorageError
from emotiw.io.audio_samples import channels, resample
from emotiw.io.media_guard import refuse_too_large
from emotiw.io.sampling import FrameSampler, seek_keyframe

_Source = str | os.PathLike[str] | bytes | bytearray | memoryview
# Bytes per range request when a window or a header is read from object storage: a window of
# a 1 Mbit/s video is ~600 KiB, so reads of this size fetch little it does not use.
WINDOW_READ_BYTES = 256 << 10


@dataclass(frozen=True)
class ClipMeta:
    """What the container says about the clip, plus what decoding observed.

    Attributes:
        fps: average video frame rate (0.0 if the container does not say).
        n_frames: frames in the video stream (container's count, else duration x fps).
        duration_s: container duration in seconds (0.0 if unknown).
        width: coded video width in pixels.
        height: coded video height in pixels.
        video_codec: FFmpeg codec name of the video stream.
        audio_codec: FFmpeg codec name of the first audio stream, None without one.
        has_audio: an audio stream exists and yielded samples.
        audio_rate_in: sample rate of the source audio, None without audio.
        frames_decoded: frames the decoder returned (non-reference frames outside the sample
            slots are skipped, and decoding stops once every slot is filled or at the cap).
        decode_errors: packets that failed to decode and were skipped (corrupt data).
    """

    fps: float
    n_frames: int
    duration_s: float
    width: int
    height: int
    video_codec: str
    audio_codec: str | None
    has_audio: bool
    audio_rate_in: int | None
    frames_decoded: int
    decode_errors: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Clip:
    """A decoded clip, fixed-shape so batches can be stacked.

    Attributes:
        frames: uint8 ``[n_frames, height, width, 3]`` RGB, upright; zeros where padded. The
            size is `MediaConfig.frame_size` of the video's (480x320's pixel count at its
            aspect by default; exactly 480x320 with ``geometry="stretch"``).
        frame_mask: bool ``[n_frames]``; False where the clip had no frame to sample.
        frame_indices: int32 ``[n_frames]`` decoded-frame index of each sample; -1 if padded.
        audio: float32 mono samples at `audio_rate`, at most max_duration_s long; empty if none.
        audio_rate: sample rate of `audio`.
        meta: container facts and decode statistics.
    """

    frames: np.ndarray
    frame_mask: np.ndarray
    frame_indices: np.ndarray
    audio: np.ndarray
    audio_rate: int
    meta: ClipMeta

    @property
    def n_valid_frames(self) -> int:
        return int(self.frame_mask.sum())

    @property
    def audio_duration_s(self) -> float:
        return len(self.audio) / self.audio_rate


def decode(
    source: _Source,
    cfg: MediaConfig | None = None,
    storage: StorageConfig | None = None,
    window: _Span | None = None,
) -> Clip:
    """Decode and sample one clip.

    Args:
        source: a local path, an fsspec URL (``s3://...``, ``file://...``) or the file's bytes.
        cfg: sampling and resizing; the paper's defaults when omitted.
        storage: endpoint and credentials for remote URLs.
        window: decode only this span of a long video (`emotiw.io.windows`): seek to the
            keyframe before its start, sample its frames as a clip's from its first frame
            on, keep its audio; None: the clip from its start up to `cfg.max_duration_s`.

    Returns:
        The sampled clip. A video without an audio track is valid (``meta.has_audio=False``).

    Raises:
        DecodeError: reason ``not_found``, ``io``, ``empty``, ``not_media``,
            ``no_video_stream``, ``no_frames``, ``timeout`` or ``too_large``.
    """

    cfg = cfg or MediaConfig()
    deadline = time.monotonic() + cfg.timeout_s
    if window is not None and not isinstance(source, bytes | bytearray | memoryview):
        container, label = _kept_open(source, storage)
        try:
            return _decode_container(container, cfg, deadline, label, window, reused=True)
        except BaseException:
            _close_kept()  # its state is unknown after a failure: open it afresh next time
            raise
    with open_source(source, storage) as (av_input, label), open_container(av_input, label) as c:
        return _decode_container(c, cfg, deadline, label, window)


@contextlib.contextmanager
def open_source(
    source: _Source, storage: StorageConfig | None, block_size: int | None = None
) -> Iterator[tuple[str | IO[bytes], str]]:
    """Yield (what `av.open` takes, a label for messages); empty/missing inputs fail here.
    `block_size`: bytes per range read of a remote file (`storage.open_input`)."""
    from emotiw.io import storage as st

    if isinstance(source, bytes | bytearray | memoryview):
        data = bytes(source)
        if not data:
            raise DecodeError(DecodeReason.EMPTY, "<bytes>: 0 bytes")
        yield io.BytesIO(data), "<bytes>"
        return
    url = os.fspath(source)
    protocol, path = st.split_url(url)
    if protocol == "file":
        try:
            n_bytes = os.stat(path).st_size
        except FileNotFoundError:
            raise DecodeError(DecodeReason.NOT_FOUND, f"{url}: no such file") from None
        except OSError as exc:
            raise DecodeError(DecodeReason.IO, f"{url}: {exc}") from None
        if n_bytes == 0:
            raise DecodeError(DecodeReason.EMPTY, f"{url}: 0 bytes")
        yield path, url  # FFmpeg's native file I/O is faster than a Python file object
        return
    try:
        n_bytes = st.size(url, storage)
        if n_bytes == 0:
            raise DecodeError(DecodeReason.EMPTY, f"{url}: 0 bytes")
        with st.open_input(url, storage, block_size) as handle:
            yield handle, url
    except StorageError as exc:
        reason = DecodeReason.NOT_FOUND if exc.reason == "not_found" else DecodeReason.IO
        raise DecodeError(reason, exc.message) from None


def open_container(av_input: str | IO[bytes], label: str) -> Any:
    """`av.open` for reading (a context manager too); what FFmpeg cannot open is a
    `DecodeError` with reason ``not_media``."""
    import av

    try:
        return av.open(av_input, mode="r", metadata_errors="ignore")
    except av.FFmpegError as exc:
        raise DecodeError(
            DecodeReason.NOT_MEDIA, f"{label}: FFmpeg cannot open it: {_ffmpeg_text(exc)}"
        ) from None


def _ffmpeg_text(exc: BaseException) -> str:
    """FFmpeg's own words without the file name PyAV appends (it may be a temp path)."""
    text = getattr(exc, "strerror", None) or str(exc)
    return str(text)


class _Span(Protocol):
    """A stretch of a video: what `decode` needs of an `emotiw.io.windows.Window`."""

    start_s: float
    end_s: float


# The long video whose window this process decoded last, kept open for the next one: opening
# costs reading and parsing the container's index, which grows with the video (1.2 MiB for
# 20 minutes of MP4), and an actor's consecutive items are usually the same video's windows.
_KEPT: dict[str, Any] = {}


def _kept_open(source: _Source, storage: StorageConfig | None) -> tuple[Any, str]:
    """The open container of `source` (a path or URL), opened now unless it is the kept one;
    a window reads its stretch of the file in small range requests (`WINDOW_READ_BYTES`)."""

    path = os.fspath(source)
    try:  # a local file rewritten since is another file
        stat = os.stat(path)
        version: tuple[int, ...] = (stat.st_mtime_ns, stat.st_size)
    except OSError:  # a URL (a window's etag cannot change within a run) or gone
        version = ()
    key = (path, storage, version)
    if _KEPT.get("key") == key:
        return _KEPT["container"], _KEPT["label"]
    _close_kept()
    stack = contextlib.ExitStack()
    av_input, label = stack.enter_context(open_source(source, storage, WINDOW_READ_BYTES))
    try:
        container = open_container(av_input, label)
    except DecodeError:
        stack.close()
        raise
    stack.callback(container.close)
    _KEPT.update(key=key, container=container, label=label, stack=stack)
    return container, label


def _close_kept() -> None:
    stack = _KEPT.pop("stack", None)
    _KEPT.clear()
    if stack is not None:
        stack.close()


def _decode_container(
    container: Any, cfg: MediaConfig, deadline: float, label: str, window: _Span | None = None,
    reused: bool = False,
) -> Clip:  # fmt: skip
    import av

    if not container.streams.video:
        raise DecodeError(DecodeReason.NO_VIDEO, f"{label}: the file has no video stream")
    video = container.streams.video[0]
    refuse_too_large(container, video, cfg, label)  # from the header, before decoding
    if not video.codec_context.is_open:  # (a kept container's decoder keeps its threads)
        video.thread_type = "AUTO"  # frame + slice threads
        video.codec_context.thread_count = cfg.decode_threads
    codec = video.codec_context
    audio = container.streams.audio[0] if container.streams.audio else None
    start, end = (0.0, cfg.max_duration_s) if window is None else (window.start_s, window.end_s)
    # Times count from the video's first timestamp, which need not be 0: an MPEG-TS segment
    # cut from a broadcast starts where the broadcast was (seconds, hours in), and even a
    # fresh TS file starts at 1.4 s; the container's own clock is what seeks take.
    origin = float(video.start_time * video.time_base) if video.start_time is not None else 0.0
    if start > 0 or reused:  # to the keyframe at or before the start: reads from there on
        try:
            seek_keyframe(container, video, origin, start)
        except av.FFmpegError as exc:
            raise DecodeError(
                DecodeReason.NO_FRAMES, f"{label}: cannot seek to {start:g} s: {_ffmpeg_text(exc)}"
            ) from None

    sampler = FrameSampler(video, cfg, start)
    frames: np.ndarray | None = None  # sized at the first sampled frame (`_frame_geometry`)
    # One reformatter for the clip: frame.to_ndarray(width=...) would build a new swscale
    # context per frame, which costs 3x the conversion itself.
    reformatter = av.video.reformatter.VideoReformatter()
    errors = 0
    video_done, audio_done = False, audio is None
    chunks: list[list[np.ndarray]] = []  # per audio frame, one 1-D array per channel
    audio_rate_in: int | None = None

    packets = container.demux([video] if audio is None else [video, audio])
    while not (video_done and audio_done):
        if time.monotonic() > deadline:
            raise DecodeError(
                DecodeReason.TIMEOUT, f"{label}: decoding took longer than {cfg.timeout_s:g} s"
            )
        try:
            packet = next(packets)
        except StopIteration:
            break
        except av.FFmpegError:  # a truncated or corrupt container: keep what was decoded
            errors += 1
            break
        is_video = packet.stream.index == video.index
        if video_done if is_video else audio_done:
            continue  # the other stream still needs data; this one is skipped, not decoded
        if is_video and packet.size:
            codec.skip_frame = "DEFAULT" if sampler.wants_packet(packet.pts) else "NONREF"
        try:
            out_frames = packet.decode()
        except av.FFmpegError:
            errors += 1
            continue
        for frame in out_frames:
            t = None if frame.time is None else frame.time - origin
            if is_video:
                if (t is not None and t > end) or sampler.past_last_slot(frame):
                    video_done = True
                    break
                hit = sampler.slot_for(frame)
                if hit is not None:
                    slot, index = hit
                    if frames is None:
                        turns, width, height = _frame_geometry(frame, video, cfg)
                        upright = (width, height) if turns % 2 else (height, width)
                        frames = np.zeros((cfg.n_frames, *upright, 3), dtype=np.uint8)
                    rgb = reformatter.reformat(
                        frame,
                        width=width,
                        height=height,
                        format="rgb24",
                        interpolation=cfg.interpolation,
                    ).to_ndarray()
                    frames[slot] = np.rot90(rgb, turns) if turns else rgb
                    sampler.mask[slot], sampler.indices[slot] = True, index
                    if sampler.full:
                        video_done = True
                        break
            elif t is not None and t > end:
                audio_done = True
                break
            elif start > 0 and t is not None and t + frame.samples / frame.sample_rate <= start:
                continue  # audio before the window (decoded from the keyframe on)
            elif audio_rate_in in (None, frame.sample_rate) and (
                not chunks or frame.layout.nb_channels == len(chunks[0])
            ):
                audio_rate_in = frame.sample_rate
                planes = channels(frame)
                if start > 0 and not chunks and t is not None and t < start:  # cut to start
                    planes = [p[round((start - t) * frame.sample_rate) :] for p in planes]
                chunks.append(planes)
            else:  # a mid-stream rate or layout change (rare): keep the first one's samples
                errors += 1

    if frames is None or not sampler.mask.any():
        raise DecodeError(
            DecodeReason.NO_FRAMES,
            f"{label}: no video frame could be decoded ({errors} corrupt packets; "
            "the stream is corrupt or truncated)",
        )
    samples = resample(chunks, audio_rate_in, cfg.audio_rate)
    samples = samples[: round((end - start) * cfg.audio_rate)]

    meta = _meta(container, video, audio, has_audio=len(samples) > 0)
    meta = ClipMeta(**{**meta, "frames_decoded": sampler.count, "decode_errors": errors})
    return Clip(
        frames=frames,
        frame_mask=sampler.mask,
        frame_indices=sampler.indices,
        audio=samples,
        audio_rate=cfg.audio_rate,
        meta=meta,
    )


def _frame_geometry(frame: Any, video: Any, cfg: MediaConfig) -> tuple[int, int, int]:
    """(turns, width, height): the size the coded frame is resized to, and the quarter turns
    counter-clockwise (the stream's display matrix, as players apply it) that stand it up."""
    turns = round((frame.rotation or 0) / 90) % 4
    sar = video.sample_aspect_ratio
    pixel = float(sar) if sar else 1.0
    if turns % 2:  # shown rotated: the displayed width is the coded height
        width, height = cfg.frame_size(frame.height, frame.width, 1.0 / pixel)
        return turns, height, width
    return turns, *cfg.frame_size(frame.width, frame.height, pixel)


def _meta(container: Any, video: Any, audio: Any, *, has_audio: bool) -> dict[str, Any]:
    import av

    rate = video.average_rate or video.guessed_rate or video.base_rate
    fps = float(rate) if rate else 0.0
    if container.duration is not None:
        duration = container.duration / av.time_base
    elif video.duration is not None and video.time_base is not None:
        duration = float(video.duration * video.time_base)
    else:
        duration = 0.0
    n_frames = int(video.frames) if video.frames else round(duration * fps)
    return {
        "fps": fps,
        "n_frames": n_frames,
        "duration_s": float(duration),
        "width": int(video.codec_context.width),
        "height": int(video.codec_context.height),
        "video_codec": video.codec_context.name,
        "audio_codec": audio.codec_context.name if audio is not None else None,
        "has_audio": has_audio,
        "audio_rate_in": int(audio.codec_context.sample_rate) if audio is not None else None,
    }
