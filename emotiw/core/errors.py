"""The project's error types. Each carries a machine-readable `reason` for output rows.

A clip that fails becomes a row whose `error` column holds `"<reason>: <message>"`, so jobs
never crash on bad input and analysts can group failures by reason.
"""

from __future__ import annotations

from enum import IntEnum, StrEnum


class ExitCode(IntEnum):
    """Exit statuses of the command line, for schedulers; the user-error classes follow
    sysexits.h where one fits. Each one's meaning is `_MEANINGS` (``--help`` and the reference
    are generated from it)."""

    OK = 0
    FAILED = 1
    USAGE = 2
    ERROR_RATE = 3
    NOTHING_NEW = 4
    NO_INPUT = 66
    NO_MODEL = 67
    NO_WEIGHTS = 68
    UNAVAILABLE = 69
    CANT_CREATE = 73
    LEASE_HELD = 75

    @property
    def meaning(self) -> str:
        return _MEANINGS[self]


_MEANINGS: dict[ExitCode, str] = {
    ExitCode.OK: "success",
    ExitCode.FAILED: "an unexpected failure (one line; the traceback with --verbose)",
    ExitCode.USAGE: "bad flags, config values or input contents (a wrong label file)",
    ExitCode.ERROR_RATE: "the run finished and committed everything, but more clips than "
    "--max-error-rate ended as errors",
    ExitCode.NOTHING_NEW: "--dry-run: nothing is pending, a real run would process no clip",
    ExitCode.NO_INPUT: "the input prefix, manifest, label file or feature table does not exist",
    ExitCode.NO_MODEL: "the model package, registered version or alias does not exist",
    ExitCode.NO_WEIGHTS: "pretrained weights are not staged anywhere the run looks",
    ExitCode.UNAVAILABLE: "MLflow, object storage, a requested GPU or enough memory cannot be had",
    ExitCode.CANT_CREATE: "the output cannot be written (EX_CANTCREAT)",
    ExitCode.LEASE_HELD: "another run holds (or took over) the output's lease (EX_TEMPFAIL)",
}


class EmotiwError(Exception):
    """Base class of every error the library raises on purpose; `exit_code` is what the
    command line exits with when one ends a command."""

    reason: str = "error"
    exit_code: ExitCode = ExitCode.USAGE

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


class ModelNotFound(EmotiwError):
    """The model named on the command line (a package path, a registered version or alias)
    does not exist."""

    exit_code = ExitCode.NO_MODEL

    def __init__(self, message: str) -> None:
        super().__init__("missing_model", message)


class OutputNotWritable(EmotiwError):
    """The job's output folder cannot be created or written."""

    exit_code = ExitCode.CANT_CREATE

    def __init__(self, message: str) -> None:
        super().__init__("output_not_writable", message)


class Unavailable(EmotiwError):
    """A service the run needs (the MLflow tracking server) cannot be reached."""

    exit_code = ExitCode.UNAVAILABLE

    def __init__(self, message: str) -> None:
        super().__init__("unavailable", message)


class DecodeReason(StrEnum):
    """Why a clip could not be decoded."""

    NOT_FOUND = "not_found"  # the path or object does not exist
    IO = "io"  # reading the bytes failed
    EMPTY = "empty"  # zero bytes
    NOT_MEDIA = "not_media"  # FFmpeg cannot open it as a container
    NO_VIDEO = "no_video_stream"  # a container with no video stream
    NO_FRAMES = "no_frames"  # corrupt or truncated stream: not one frame decoded
    TIMEOUT = "timeout"  # decoding ran past MediaConfig.timeout_s
    TOO_LARGE = "too_large"  # the header asks for more than MediaConfig's max_* allow


class DecodeError(EmotiwError):
    """A clip that cannot be decoded; `reason` is a `DecodeReason` value."""

    def __init__(self, reason: DecodeReason, message: str) -> None:
        super().__init__(str(reason), message)
        if reason == DecodeReason.NOT_FOUND:
            self.exit_code = ExitCode.NO_INPUT


class StorageError(EmotiwError):
    """Listing or reading object storage failed. Messages are redacted of secrets."""

    def __init__(self, message: str, reason: str = "storage") -> None:
        super().__init__(reason, message)
        # not_found: the named input is missing; io (after every retry): storage unreachable
        self.exit_code = {"not_found": ExitCode.NO_INPUT, "io": ExitCode.UNAVAILABLE}.get(
            reason, ExitCode.USAGE
        )


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


class LeaseHeld(EmotiwError):
    """Another live run holds the output table's lease."""

    exit_code = ExitCode.LEASE_HELD

    def __init__(self, message: str) -> None:
        super().__init__("lease_held", message)


class LeaseLost(EmotiwError):
    """This run's lease was taken over (it was not renewed in time): stop committing."""

    exit_code = ExitCode.LEASE_HELD

    def __init__(self, message: str) -> None:
        super().__init__("lease_lost", message)
