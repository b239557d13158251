"""Retrying a call that fails for a reason a later try may not share (an endpoint gone for a
few seconds, a timeout), with exponential backoff and full jitter; permanent failures are
raised at once."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import TypeVar

from emotiw.core.errors import EmotiwError, is_transient

T = TypeVar("T")
_MAX_BACKOFF_S = 30.0


def _ceilings(attempts: int, backoff_s: float) -> list[float]:
    """The longest waits between `attempts` tries: backoff_s, 2*backoff_s, ... capped at 30 s."""
    return [min(backoff_s * 2**i, _MAX_BACKOFF_S) for i in range(attempts - 1)]


def delays(attempts: int, backoff_s: float, rng: random.Random | None = None) -> list[float]:
    """The waits between `attempts` tries, each drawn uniformly below its ceiling ("full
    jitter"): actors that failed together on one S3 blip retry spread out, not in lockstep
    against an endpoint that is just coming back. `rng`: for reproducible tests."""
    draw = rng or random.Random()  # seeded from os.urandom: differs in every process
    return [draw.uniform(0.0, ceiling) for ceiling in _ceilings(attempts, backoff_s)]


def transient_exception(exc: BaseException) -> bool:
    """Storage and network failures, timeouts and out-of-memory are worth another try; an
    `EmotiwError` says itself (not_found, empty, ... are final)."""
    if isinstance(exc, EmotiwError):
        return is_transient(exc.reason)
    if isinstance(exc, FileNotFoundError | PermissionError | IsADirectoryError):
        return False
    network = (OSError, TimeoutError, ConnectionError, MemoryError, *_botocore_network())
    return isinstance(exc, network)


def _botocore_network() -> tuple[type[BaseException], ...]:
    """botocore's connection and HTTP errors (endpoint refused, connection closed, read
    timeout), which s3fs raises as they are for direct S3 calls (`call_s3`: the lease,
    listings): they are not `OSError`s, yet an endpoint that is down for a few seconds is
    exactly what a retry is for."""
    try:
        from botocore.exceptions import ConnectionError as BotoConnectionError
        from botocore.exceptions import HTTPClientError
    except ImportError:  # S3 support not installed: nothing of it can be raised
        return ()
    return (BotoConnectionError, HTTPClientError)


def call(
    fn: Callable[[], T],
    attempts: int,
    backoff_s: float,
    transient: Callable[[BaseException], bool] = transient_exception,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """`fn()`, tried up to `attempts` times while it raises a transient exception."""
    waits = delays(attempts, backoff_s)
    for wait in waits:
        try:
            return fn()
        except Exception as exc:
            if not transient(exc):
                raise
        sleep(wait)
    return fn()
