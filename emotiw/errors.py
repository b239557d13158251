"""The project's error types. Each carries a machine-readable `reason` for output rows.

A clip that fails becomes a row whose `error` column holds `"<reason>: <message>"`, so jobs
never crash on bad input and analysts can group failures by reason.
"""

from __future__ import annotations

from enum import IntEnum, StrEnum


class EmotiwError(Exception):
    """Base class of every error the library raises on purpose."""

    reason: str = "error"

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


class DecodeReason(StrEnum):
    """Why a clip could not be decoded."""

    NOT_FOUND = "not_found"  # the path or object does not exist
    IO = "io"  # reading the bytes failed
    EMPTY = "empty"  # zero bytes
    NOT_MEDIA = "not_media"  # FFmpeg cannot open it as a container
    NO_VIDEO = "no_video_stream"  # a container with no video stream
    NO_FRAMES = "no_frames"  # corrupt or truncated stream: not one frame decoded
    TIMEOUT = "timeout"  # decoding ran past MediaConfig.timeout_s


class DecodeError(EmotiwError):
    """A clip that cannot be decoded; `reason` is a `DecodeReason` value."""

    def __init__(self, reason: DecodeReason, message: str) -> None:
        super().__init__(str(reason), message)


class StorageError(EmotiwError):
    """Listing or reading object storage failed. Messages are redacted of secrets."""

    def __init__(self, message: str, reason: str = "storage") -> None:
        super().__init__(reason, message)


class LabelError(EmotiwError):
    """A label file that cannot be trusted: names the file and the line."""

    def __init__(self, message: str) -> None:
        super().__init__("labels", message)


# Reasons a later try may not share: the clip is fine, the infrastructure was not. A row with
# one of these is retried within the run (`JobConfig.attempts`), then written with
# `retryable` set and picked up again by the next run. Every other reason (empty, not_media,
# no_video_stream, no_frames, not_found, <modality>_failed, ...) is a property of the clip's
# bytes and is final until the clip changes (a new ETag).
TRANSIENT_REASONS = frozenset({"io", "timeout", "model_failed", "out_of_memory", "internal"})


def is_transient(reason: str | None) -> bool:
    """Whether an error row with `reason` should be tried again (None: not an error)."""
    return reason in TRANSIENT_REASONS


def is_out_of_memory(exc: BaseException) -> bool:
    """Host or CUDA out-of-memory: transient (retried; a smaller batch may fit), unlike a
    model failing on the clip itself."""
    return isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError"


class ExitCode(IntEnum):
    """Exit statuses of the command line (documented in the README for schedulers)."""

    OK = 0
    FAILED = 1  # an unexpected failure (traceback printed)
    USAGE = 2  # bad flags, config or input named on the command line
    ERROR_RATE = 3  # the run finished and committed, but too many clips ended as errors
    NOTHING_NEW = 4  # --dry-run: nothing is pending, a real run would score no clip
    LEASE_HELD = 75  # another run holds (or took over) the output's lease (EX_TEMPFAIL)


class LeaseHeld(EmotiwError):
    """Another live run holds the output table's lease."""

    def __init__(self, message: str) -> None:
        super().__init__("lease_held", message)


class LeaseLost(EmotiwError):
    """This run's lease was taken over (it was not renewed in time): stop committing."""

    def __init__(self, message: str) -> None:
        super().__init__("lease_lost", message)
