"""The single-writer lease of an output table: ``<table>/_lease.json`` names the run that
may write (run id, host, pid, start, last renewal, expiry). A run takes it before any work,
renews it from a background thread every ttl/4 and deletes it at the end; a second run sees
it and exits (or waits); a lease whose holder stopped renewing it (or whose process on this
host is gone) is taken over.

Every change is a compare-and-swap on the lease's version, so two runs can never both
believe they hold it:
- on S3, conditional writes: create with ``If-None-Match: *``, renew, take over and delete
  with ``If-Match: <ETag>`` (AWS S3 since 2024, MinIO, the moto test server). A server that
  ignores these headers silently loses the guarantee: check yours before relying on it.
- locally, the read-compare-write runs under an exclusive `fcntl.flock` of the table's
  folder (one machine; not for NFS).

Limits: expiry uses the wall clocks of the hosts involved (keep them in NTP sync, ttl well
above the skew), and a holder frozen for longer than the ttl (a stopped VM) loses the lease
without knowing until its next renewal or commit, both of which check it first, so at most
the chunk it was committing at that moment can be written twice (with identical scores;
readers keep one row per URI).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

from emotiw.core import retry
from emotiw.core.config import JobConfig, StorageConfig
from emotiw.core.errors import LeaseHeld, LeaseLost


class _Conflict(Exception):
    """The lease changed since it was read (someone else wrote it)."""


@dataclass(frozen=True)
class _LeaseInfo:
    """The lease object's content."""

    run_id: str
    host: str
    pid: int
    started_at: float
    renewed_at: float
    expires_at: float

    def dead(self, now: float) -> bool:
        """Expired, or held by a process of this host that no longer exists."""
        if now > self.expires_at:
            return True
        if self.host == socket.gethostname():
            try:
                os.kill(self.pid, 0)
            except ProcessLookupError:
                return True
            except PermissionError:  # alive, someone else's
                return False
        return False

    def describe(self, now: float) -> str:
        return (
            f"run {self.run_id} on {self.host} (pid {self.pid}), started "
            f"{now - self.started_at:.0f} s ago, renewed {now - self.renewed_at:.0f} s ago"
        )


class _Store:
    """Compare-and-swap on one small object; a version token is a hash of its bytes (what
    the S3 ETag is for a single-part upload)."""

    def read(self) -> tuple[bytes, str] | None: ...
    def create(self, body: bytes) -> str: ...
    def replace(self, body: bytes, version: str) -> str: ...
    def delete(self, version: str) -> None: ...


class _LocalStore(_Store):
    def __init__(self, path: str) -> None:
        self.path = path

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """An exclusive flock of the table's folder itself (no lock file left behind)."""
        import fcntl

        folder = os.path.dirname(self.path)
        os.makedirs(folder, exist_ok=True)
        fd = os.open(folder, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def _read(self) -> tuple[bytes, str] | None:
        try:
            with open(self.path, "rb") as handle:
                body = handle.read()
        except FileNotFoundError:
            return None
        return body, hashlib.md5(body).hexdigest()

    def _write(self, body: bytes) -> str:
        tmp = f"{self.path}.{os.getpid()}.tmp"
        with open(tmp, "wb") as handle:
            handle.write(body)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.path)
        return hashlib.md5(body).hexdigest()

    def read(self) -> tuple[bytes, str] | None:
        with self._locked():
            return self._read()

    def create(self, body: bytes) -> str:
        with self._locked():
            if self._read() is not None:
                raise _Conflict
            return self._write(body)

    def replace(self, body: bytes, version: str) -> str:
        with self._locked():
            current = self._read()
            if current is None or current[1] != version:
                raise _Conflict
            return self._write(body)

    def delete(self, version: str) -> None:
        with self._locked():
            current = self._read()
            if current is not None and current[1] == version:
                os.remove(self.path)


class _S3Store(_Store):
    def __init__(self, fs: Any, path: str) -> None:
        self.fs = fs
        self.bucket, self.key, _ = fs.split_path(path)

    def _call(self, method: str, read_body: bool = False, **kwargs: Any) -> Any:
        """One S3 call on s3fs's event loop (its error translation: 404 -> FileNotFoundError,
        412 -> FileExistsError), reading the body in the same call so body and ETag match."""
        from fsspec.asyn import sync

        async def call() -> Any:
            out = await self.fs._call_s3(method, Bucket=self.bucket, Key=self.key, **kwargs)
            if read_body:
                async with out["Body"] as stream:
                    out["Body"] = bytes(await stream.read())
            return out

        try:
            return sync(self.fs.loop, call)
        except FileExistsError:
            raise _Conflict from None
        except Exception as exc:
            cause = exc.__cause__ or exc  # s3fs keeps botocore's error as the cause
            code = getattr(cause, "response", {}).get("Error", {}).get("Code", "")
            if code in ("PreconditionFailed", "ConditionalRequestConflict", "412", "409"):
                raise _Conflict from None
            raise

    def read(self) -> tuple[bytes, str] | None:
        try:
            out = self._call("get_object", read_body=True)
        except FileNotFoundError:
            return None
        return out["Body"], str(out["ETag"])

    def create(self, body: bytes) -> str:
        return str(self._call("put_object", Body=body, IfNoneMatch="*")["ETag"])

    def replace(self, body: bytes, version: str) -> str:
        return str(self._call("put_object", Body=body, IfMatch=version)["ETag"])

    def delete(self, version: str) -> None:
        with contextlib.suppress(_Conflict, FileNotFoundError):
            self._call("delete_object", IfMatch=version)


def _store(table: str, storage: StorageConfig | None) -> _Store:
    from emotiw.io.storage import fsspec_filesystem, join_url, split_url

    url = join_url(table, "_lease.json")
    if split_url(url)[0] == "file":
        return _LocalStore(split_url(url)[1])
    fs, path = fsspec_filesystem(url, storage)
    return _S3Store(fs, path)


class Lease:
    """A held lease; use `acquire`. `check()` before each commit raises `LeaseLost` if it
    was taken over."""

    def __init__(
        self, store: _Store, info: _LeaseInfo, version: str, job: JobConfig, note: str
    ) -> None:
        self.store, self.info, self.version, self.job = store, info, version, job
        self.note = note  # e.g. "took over the lease of dead run ..."
        self.lost: str | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="emotiw-lease", daemon=True)
        self._thread.start()

    @classmethod
    def acquire(
        cls,
        table: str,
        storage: StorageConfig | None,
        run_id: str,
        job: JobConfig,
        log: Callable[[str], None] = print,
    ) -> Lease:
        """Take the lease of the table at `table`, or raise `LeaseHeld` (`job.wait`: wait)."""
        store = _store(table, storage)
        started = time.time()
        waited = False
        while True:
            now = time.time()
            info = _LeaseInfo(
                run_id, socket.gethostname(), os.getpid(), started, now, now + job.lease_ttl_s
            )
            body = json.dumps(asdict(info), indent=1).encode()
            current = _call(store.read, job)
            try:
                if current is None:
                    version = _call(lambda body=body: store.create(body), job)
                    return cls(store, info, version, job, "")
                held = _LeaseInfo(**json.loads(current[0]))
                if held.dead(now):
                    seen = current[1]
                    version = _call(lambda b=body, v=seen: store.replace(b, v), job)
                    note = f"took over the lease of dead {held.describe(now)}"
                    return cls(store, info, version, job, note)
            except _Conflict:  # another run got there first: look again
                continue
            except (ValueError, TypeError):  # unreadable lease: treat as held until it expires
                held = _LeaseInfo("unknown", "unknown", 0, now, now, now + job.lease_ttl_s)
            message = (
                f"{table} is being written by {held.describe(now)}; its lease expires in "
                f"{held.expires_at - now:.0f} s unless renewed"
            )
            if not job.wait or (job.wait_timeout_s and now - started > job.wait_timeout_s):
                raise LeaseHeld(
                    message + ". Exiting with code 75; pass --wait to wait for it."
                    if not job.wait
                    else message + f". Gave up after waiting {now - started:.0f} s."
                )
            if not waited:
                log(f"waiting: {message}")
                waited = True
            time.sleep(min(5.0, job.lease_ttl_s / 4))

    def _renew(self) -> None:
        with self._lock:
            if self.lost:
                raise LeaseLost(self.lost)
            now = time.time()
            info = _LeaseInfo(
                self.info.run_id, self.info.host, self.info.pid, self.info.started_at, now,
                now + self.job.lease_ttl_s,
            )  # fmt: skip
            body = json.dumps(asdict(info), indent=1).encode()
            try:
                try:
                    self.version = self.store.replace(body, self.version)
                except _Conflict:
                    if not self._still_ours():  # else an earlier write landed unanswered
                        raise
                    self.version = self.store.replace(body, self.version)
            except _Conflict:
                self.lost = f"run {self.info.run_id} lost its lease (taken over by another run)"
                raise LeaseLost(self.lost) from None
            self.info = info

    def _still_ours(self) -> bool:
        """After a conflict: whether the stored lease is still this run's. A write whose
        answer was lost (the connection dropped after the store applied it) leaves our own
        lease under a version we never saw; adopt it instead of calling the lease lost."""
        current = self.store.read()
        if current is None:
            return False
        try:
            held = _LeaseInfo(**json.loads(current[0]))
        except (ValueError, TypeError):
            return False
        mine = (held.run_id, held.host, held.pid) == (
            self.info.run_id,
            self.info.host,
            self.info.pid,
        )
        if mine:
            self.version = current[1]
        return mine

    def _beat(self) -> None:
        while not self._stop.wait(self.job.lease_ttl_s / 4):
            try:
                self._renew()
            except LeaseLost:
                return
            except Exception:  # storage unreachable: try again next beat; check() decides
                continue

    def check(self) -> None:
        """Raise `LeaseLost` unless this run still holds the lease; renews it first when
        its expiry is near (or past: an unreachable store must not let a commit through)."""
        if self.lost:
            raise LeaseLost(self.lost)
        if time.time() > self.info.expires_at - self.job.lease_ttl_s / 2:
            _call(self._renew, self.job)

    def release(self) -> None:
        """Delete the lease if this run still holds it, retrying through transient storage
        errors (a lease left behind would make the next run wait for its expiry)."""
        self._stop.set()
        self._thread.join(timeout=10)
        if not self.lost:
            with contextlib.suppress(Exception), self._lock:
                _call(self._delete, self.job)

    def _delete(self) -> None:
        self.store.delete(self.version)  # a no-op when the version moved on
        if self._still_ours():  # it did, under a write of ours whose answer was lost
            self.store.delete(self.version)

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _call(fn: Callable[[], Any], job: JobConfig) -> Any:
    """A lease operation retried through transient storage errors (never through Conflict
    or LeaseLost, which are answers)."""
    return retry.call(
        fn, job.attempts, job.backoff_s,
        lambda exc: not isinstance(exc, _Conflict | LeaseLost) and retry.transient_exception(exc),
    )  # fmt: skip
