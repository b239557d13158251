"""The project's error types. Each carries a machine-readable `reason` for output rows.

A clip that fails becomes a row whose `error` column holds `"<reason>: <message>"`, so jobs
never crash on bad input and analysts can group failures by reason.
"""

from __future__ import annotations

from enum import StrEnum


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
