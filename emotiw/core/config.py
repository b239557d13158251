"""Typed configuration. The paper's numbers are the defaults; every dataclass validates itself.

Configs are frozen dataclasses so they can be shipped to Ray actors, hashed and logged as
parameters unchanged. Invalid values raise `ValueError` naming the field at construction time,
not deep inside a worker.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from typing import Any

# Class order used everywhere (logits, probabilities, Parquet columns).
CLASS_NAMES: tuple[str, ...] = ("positive", "neutral", "negative")
# VGAF label files use 1=Positive, 2=Neutral, 3=Negative.
VGAF_LABEL_TO_CLASS: dict[int, int] = {1: 0, 2: 1, 3: 2}
CLASS_TO_VGAF_LABEL: dict[int, int] = {v: k for k, v in VGAF_LABEL_TO_CLASS.items()}

VIDEO_EXTENSIONS: tuple[str, ...] = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v")


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


@dataclass(frozen=True)
class MediaConfig:
    """How a clip is decoded and sampled (paper section 4.1 and 4.3).

    Attributes:
        frame_step: keep every `frame_step`-th decoded frame (paper: every 10th).
        n_frames: number of sampled frames kept; missing ones are zero-padded (paper: 12).
        width: width of each kept frame after resizing (paper: 480).
        height: height of each kept frame after resizing (paper: 320).
        audio_rate: audio is resampled to mono at this rate (OpenL3 expects 48 kHz).
        max_duration_s: never read media past this many seconds; bounds the cost of long videos.
            The frames need frame_step * n_frames frames (~4.8 s at 25 fps) and the audio model
            11 windows at hop 0.5 s (~6 s), so 10 s leaves headroom for slow frame rates.
        decode_threads: FFmpeg decoder threads per clip; 0: in a job's actor, the CPUs Ray
            gave it; elsewhere FFmpeg chooses (every core + 1: in a one-CPU actor that would
            oversubscribe the node and multiply the frame buffers, 4x the memory at 8K).
        timeout_s: wall-clock bound for decoding one clip; past it the clip fails with
            reason `timeout` instead of stalling a worker.
        interpolation: swscale interpolation used for the resize (PyAV name). AREA (box
            averaging) is the right filter for downscaling and 2x cheaper than BILINEAR here.
        jpeg_quality: quality of the sampled frames stored in the feature table (JPEG is
            ~20x smaller than the scene backbone's maps; see `jobs/benchmark.py scene`).
        geometry: ``aspect``: a clip's frames keep the video's displayed aspect ratio (its
            rotation and pixel aspect applied) at width x height's pixel count, e.g. 523x294
            for 16:9 and 294x523 for a 9:16 phone video, so face and pose detection see
            people undistorted at the same cost; the scene model's input is resized to exactly
            width x height from them (`emotiw.io.frames.fit`). ``stretch``: every frame exactly
            width x height, as the authors' frames were (a 9:16 video squashed ~2.7x).
        max_frame_pixels: a video whose header declares larger frames is refused before
            decoding (reason ``too_large``): each decoded frame takes width x height x 1.5
            bytes per decoder thread, so a 16k x 16k header would take an actor's memory.
            The default admits 8K UHD (7680 x 4320).
        max_streams: a file with more streams than this is refused (``too_large``).
        max_metadata_bytes: a file whose container and stream tags add up to more than
            this is refused (``too_large``).
        max_file_bytes: a file larger than this is refused before it is read (``too_large``):
            an actor holds a clip's whole file in memory (`EXTRACT_ACTOR_GIB` counts it).
    """

    frame_step: int = 10
    n_frames: int = 12
    width: int = 480
    height: int = 320
    audio_rate: int = 48_000
    max_duration_s: float = 10.0
    decode_threads: int = 0
    timeout_s: float = 60.0
    interpolation: str = "AREA"
    jpeg_quality: int = 90
    geometry: str = "aspect"
    max_frame_pixels: int = 7680 * 4320
    max_streams: int = 32
    max_metadata_bytes: int = 1 << 20
    max_file_bytes: int = 512 << 20

    def __post_init__(self) -> None:
        _require(self.max_frame_pixels >= 256, "max_frame_pixels must be >= 256")
        _require(self.max_streams >= 1, f"max_streams must be >= 1, got {self.max_streams}")
        _require(self.max_metadata_bytes >= 0, "max_metadata_bytes must be >= 0")
        _require(self.max_file_bytes >= 1, "max_file_bytes must be >= 1")
        _require(self.frame_step >= 1, f"frame_step must be >= 1, got {self.frame_step}")
        _require(self.n_frames >= 1, f"n_frames must be >= 1, got {self.n_frames}")
        _require(
            self.width >= 16 and self.height >= 16,
            f"width and height must be >= 16, got {self.width}x{self.height}",
        )
        _require(
            self.width % 2 == 0 and self.height % 2 == 0,
            f"width and height must be even, got {self.width}x{self.height}",
        )
        _require(8_000 <= self.audio_rate <= 192_000, f"audio_rate out of range: {self.audio_rate}")
        _require(self.max_duration_s > 0, f"max_duration_s must be > 0, got {self.max_duration_s}")
        _require(self.decode_threads >= 0, f"decode_threads must be >= 0: {self.decode_threads}")
        _require(self.timeout_s > 0, f"timeout_s must be > 0, got {self.timeout_s}")
        _require(
            self.interpolation in {"FAST_BILINEAR", "BILINEAR", "BICUBIC", "AREA", "LANCZOS"},
            f"unknown interpolation {self.interpolation!r}",
        )
        _require(
            1 <= self.jpeg_quality <= 100, f"jpeg_quality must be in [1, 100]: {self.jpeg_quality}"
        )
        _require(
            self.geometry in ("aspect", "stretch"),
            f"geometry must be 'aspect' or 'stretch', got {self.geometry!r}",
        )

    def frame_size(self, width: int, height: int, pixel_aspect: float = 1.0) -> tuple[int, int]:
        """(width, height) of the sampled frames of a video displayed at `width` x `height`
        pixels of aspect `pixel_aspect` (see `geometry`)."""
        if self.geometry == "stretch" or min(width, height) <= 0:
            return self.width, self.height
        aspect = width * (pixel_aspect if pixel_aspect > 0 else 1.0) / height
        area = self.width * self.height
        return max(round(math.sqrt(area * aspect)), 16), max(round(math.sqrt(area / aspect)), 16)


@dataclass(frozen=True)
class StorageConfig:
    """Where object storage lives and how to authenticate.

    Credentials default to the standard AWS chain (environment, ~/.aws/config, instance role);
    `key`/`secret` are only for endpoints that need explicit ones (MinIO, the test server).
    Secrets are excluded from `repr` so they never reach logs.

    Attributes:
        endpoint_url: S3-compatible endpoint (``http://127.0.0.1:9000``); None for AWS.
        region: AWS region; None lets the SDK decide.
        key: access key id, or None for the standard credential chain.
        secret: secret access key, or None.
        token: session token, or None.
        anon: unsigned requests (public buckets).
    """

    endpoint_url: str | None = None
    region: str | None = None
    key: str | None = field(default=None, repr=False)
    secret: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)
    anon: bool = False

    def __post_init__(self) -> None:
        if self.endpoint_url is not None:
            _require(
                self.endpoint_url.startswith(("http://", "https://")),
                f"endpoint_url must start with http:// or https://, got {self.endpoint_url!r}",
            )
        _require(
            (self.key is None) == (self.secret is None),
            "key and secret must be given together (or neither, for the standard AWS chain)",
        )

    @classmethod
    def from_env(cls, **overrides: Any) -> StorageConfig:
        """Endpoint and region from the standard AWS variables; credentials left to the SDK.

        `AWS_ENDPOINT_URL_S3` (or `AWS_ENDPOINT_URL`) is read explicitly so that pyarrow's
        filesystem, which Ray Data uses, sees the same endpoint as botocore does.
        """
        values: dict[str, Any] = {
            "endpoint_url": os.environ.get("AWS_ENDPOINT_URL_S3")
            or os.environ.get("AWS_ENDPOINT_URL")
            or None,
            "region": os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION"),
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    @property
    def secrets(self) -> tuple[str, ...]:
        """Values that must never appear in logs or error messages."""
        return tuple(s for s in (self.key, self.secret, self.token) if s)


@dataclass(frozen=True)
class JobConfig:
    """How a batch job (extract, score) commits its output table, shares it with other runs
    and rides out transient faults (see docs/exactly-once.md).

    Attributes:
        commit_every: rows per committed chunk. Each chunk is one Parquet file, staged under
            ``_staging/<run>/`` and moved into the table when complete, so a crash loses at
            most the chunk in flight and the next run resumes after the committed ones.
        commit_interval_s: also commit a chunk this many seconds after its first row, so a
            slow run shows progress (and risks less) even before `commit_every` rows.
        wait: when another live run holds the output's lease, wait for it to finish instead
            of exiting with code 75.
        wait_timeout_s: with `wait`, give up (exit 75) after this many seconds; 0: no limit.
        lease_ttl_s: a lease not renewed for this long is a dead run's and is taken over; the
            holder renews it every ttl/4. A holder on this host whose process is gone is dead
            at once.
        attempts: tries per clip within a run for transient failures (io, timeout,
            model_failed, out_of_memory, internal), and per storage call of the driver
            (commits, the lease, reading the table's keys). Still failing: the row is written
            with `retryable` set and the next run tries it again.
        backoff_s: longest wait before the first retry, doubled after each (capped at
            30 s); each wait is drawn at random below it (full jitter: actors failing
            together retry spread out). With botocore's own tries inside each S3 call
            (~3 s), the defaults ride out an endpoint that is gone for ~15 s.
        max_error_rate: the job exits with code 3 (after committing and printing its summary)
            when more than this fraction of the clips it processed ended as error rows.
        progress_interval_s: when stderr is not a terminal (logs, schedulers), print one
            progress line (clips done / total, clips/s, errors, ETA) this often; on a terminal
            Ray Data's progress bars show instead. 0: no progress lines.
        isolate_clips: extract each clip in a child process of the actor's own
            (`emotiw.io.clip_process`): a clip during which that process dies (a decoder crash,
            the OOM killer) is tried again in a fresh one, `attempts` times in all, then
            written as a ``crashed`` error row, while the batch's other clips go on. Without
            it, Ray restarts the actor and retries the whole batch with no limit.
        crash_runs: a clip with ``crashed`` rows from this many runs is done: later runs
            skip it (unless `retry_crashed`), so a poison file costs each scheduled run
            nothing once it has proved itself.
        retry_crashed: try clips again whatever their ``crashed`` rows say.
    """

    commit_every: int = 1000
    commit_interval_s: float = 600.0
    wait: bool = False
    wait_timeout_s: float = 0.0
    lease_ttl_s: float = 60.0
    attempts: int = 5
    backoff_s: float = 1.0
    max_error_rate: float = 0.25
    progress_interval_s: float = 30.0
    isolate_clips: bool = True
    crash_runs: int = 2
    retry_crashed: bool = False

    def __post_init__(self) -> None:
        _require(self.crash_runs >= 1, f"crash_runs must be >= 1, got {self.crash_runs}")
        _require(self.commit_every >= 1, f"commit_every must be >= 1, got {self.commit_every}")
        _require(self.commit_interval_s > 0, "commit_interval_s must be > 0")
        _require(self.wait_timeout_s >= 0, "wait_timeout_s must be >= 0")
        _require(self.lease_ttl_s >= 4, f"lease_ttl_s must be >= 4, got {self.lease_ttl_s}")
        _require(self.attempts >= 1, f"attempts must be >= 1, got {self.attempts}")
        _require(self.backoff_s >= 0, f"backoff_s must be >= 0, got {self.backoff_s}")
        _require(0 <= self.max_error_rate <= 1, "max_error_rate must be in [0, 1]")
        _require(self.progress_interval_s >= 0, "progress_interval_s must be >= 0")


@dataclass(frozen=True)
class CorpusConfig:
    """The synthetic sample corpus (see `emotiw.io.corpus`): 5 s H.264 + AAC clips with cues.

    Attributes:
        width: frame width of the written clips.
        height: frame height of the written clips.
        fps: frame rate.
        duration_s: clip length.
        audio_rate: sample rate of the written audio track (stereo, resampled on decode).
        cue_strength: probability that a modality's cue follows the clip's own class; otherwise
            it is drawn from a uniformly random class. 1.0 makes every cue exact; 0.0 makes the
            corpus unlearnable. Each modality draws independently, so fusion can beat any one.
        min_face_px: smallest pasted face side in pixels, at the written resolution.
    """

    width: int = 640
    height: int = 360
    fps: int = 25
    duration_s: float = 5.0
    audio_rate: int = 44_100
    cue_strength: float = 0.8
    min_face_px: int = 72

    def __post_init__(self) -> None:
        _require(self.width % 2 == 0 and self.height % 2 == 0, "width and height must be even")
        _require(self.width >= 320 and self.height >= 240, "clips must be at least 320x240")
        _require(1 <= self.fps <= 120, f"fps out of range: {self.fps}")
        _require(0.5 <= self.duration_s <= 60, f"duration_s out of range: {self.duration_s}")
        _require(8_000 <= self.audio_rate <= 96_000, f"audio_rate out of range: {self.audio_rate}")
        _require(0.0 <= self.cue_strength <= 1.0, "cue_strength must be in [0, 1]")
        _require(
            48 <= self.min_face_px <= min(self.width, self.height) // 3,
            f"min_face_px must be in [48, {min(self.width, self.height) // 3}]",
        )


def to_dict(cfg: Any) -> dict[str, Any]:
    """A config as a plain dict (for logging as parameters); secrets are dropped."""
    data = asdict(cfg)
    for name in ("key", "secret", "token"):
        data.pop(name, None)
    return data


AUTO = "auto"
# Ray `memory` (GiB) each actor declares unless told otherwise, from the peaks that
# `python -m benchmarks actor-memory` measured on the worst inputs the guards admit
# (docs/benchmarks.md), with headroom. Ray then places no more actors on a node than its memory
# holds, instead of the kernel's OOM killer choosing. Extract: 0.57 GiB (paper preset, 8-channel
# 192 kHz audio) + a file of up to `MediaConfig.max_file_bytes` (0.5 GiB) held whole.
EXTRACT_ACTOR_GIB = 1.25
# Model actor: 0.85 GiB measured without a model-stage detector (cpu-smoke); with one (the
# paper preset's Keypoint R-CNN on CPU) ~2.1 GiB + 0.09 GiB per frame of `frame_batch_size`
# (2.8 GiB at 8, 5.0 at 32). `pools.model_actor_gib` picks from the package.
MODEL_ACTOR_GIB = 1.5
MODEL_DETECTOR_GIB, MODEL_DETECTOR_GIB_PER_FRAME = 2.5, 0.1


def amount(value: str, name: str) -> float | None:
    """A resource amount flag: ``auto`` (None: the job decides) or a number >= 0.

    Raises:
        ValueError: anything else.
    """
    if value == AUTO:
        return None
    try:
        number = float(value)
    except ValueError:
        number = -1.0
    if number < 0:
        raise ValueError(f"{name} must be {AUTO!r} or a number >= 0, not {value!r}")
    return number
