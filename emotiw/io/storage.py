"""Object storage: one URL resolves to an fsspec filesystem (library code) and a pyarrow
filesystem (Ray Data), with the same endpoint and credentials for both.

URLs are local paths (``/data/clips``, ``file:///data/clips``) or ``s3://bucket/prefix``.
Credentials come from the standard AWS chain unless `StorageConfig` names them; every error
raised here has secrets redacted, because storage errors end up in logs and output rows.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any
from urllib.parse import urlparse

from emotiw.core import retry
from emotiw.core.config import VIDEO_EXTENSIONS, StorageConfig
from emotiw.core.errors import StorageError

if TYPE_CHECKING:
    import fsspec
    import pyarrow.fs

_REMOTE_PROTOCOLS = ("s3", "s3a")
# Tries inside one call: (s3fs's retry loops, botocore's per request, standard mode). With the
# libraries' defaults s3fs nests two loops of 5 around botocore's: one read whose connections
# kept dropping made 250 hidden tries over 206 s before failing (measured with the tests'
# FaultyS3Proxy); with these, 8 tries in 3.6 s. A blip is still absorbed inside the call, and
# the jobs' visible, configurable retry (`JobConfig.attempts`, `emotiw.core.retry`) decides how
# long an outage is ridden out.
_LIBRARY_TRIES = (1, 3)


def split_url(url: str) -> tuple[str, str]:
    """Split a URL into (protocol, path): ``s3://b/k`` -> ``("s3", "b/k")``.

    Local paths (with or without ``file://``) come back absolute with protocol ``"file"``.
    """
    if "://" not in url:
        return "file", os.path.abspath(os.path.expanduser(url))
    protocol, rest = url.split("://", 1)
    protocol = protocol.lower()
    if protocol in ("file", "local"):
        return "file", os.path.abspath(rest)
    if protocol in _REMOTE_PROTOCOLS:
        return "s3", rest.strip("/")
    raise StorageError(f"unsupported URL scheme {protocol!r} in {url!r}; use a path or s3://")


def join_url(prefix: str, *parts: str) -> str:
    """Join path parts onto a local or s3:// prefix with '/' separators."""
    protocol, _ = split_url(prefix)
    base = prefix.rstrip("/")
    if protocol == "file":
        return os.path.join(base, *parts)
    return "/".join([base, *(p.strip("/") for p in parts)])


def video_id(uri: str) -> str:
    """The clip's id: its file name without extension (``s3://b/x/10_1.mp4`` -> ``10_1``)."""
    name = uri.rstrip("/").rsplit("/", 1)[-1]
    return os.path.splitext(name)[0]


def _redact(text: str, cfg: StorageConfig | None) -> str:
    """Replace every secret of `cfg` (and of the AWS environment) in `text` with ``***``."""
    secrets = list(cfg.secrets) if cfg else []
    for var in ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID"):
        value = os.environ.get(var)
        if value:
            secrets.append(value)
    for secret in sorted(set(secrets), key=len, reverse=True):
        if len(secret) >= 4:
            text = text.replace(secret, "***")
    return text


def _storage_error(exc: BaseException, url: str, cfg: StorageConfig | None) -> StorageError:
    reason = "not_found" if isinstance(exc, FileNotFoundError) else "io"
    detail = f"{type(exc).__name__}: {exc}"
    return StorageError(_redact(f"{url}: {detail}", cfg), reason=reason)


def fsspec_filesystem(
    url: str, cfg: StorageConfig | None = None
) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem for `url` and the path inside it."""
    protocol, path = split_url(url)
    if protocol == "file":
        from fsspec.implementations.local import LocalFileSystem

        return LocalFileSystem(), path
    import s3fs

    cfg = cfg or StorageConfig.from_env()
    client_kwargs: dict[str, str] = {}
    if cfg.endpoint_url:
        client_kwargs["endpoint_url"] = cfg.endpoint_url
    elif cfg.region:
        # Not together with an endpoint override: there it breaks bucket creation on
        # S3-compatible servers, and the region is meaningless to them anyway.
        client_kwargs["region_name"] = cfg.region
    fs = s3fs.S3FileSystem(
        key=cfg.key,
        secret=cfg.secret,
        token=cfg.token,
        anon=cfg.anon,
        client_kwargs=client_kwargs,
        # Scheduled runs list a growing bucket repeatedly; a cached listing would hide new clips.
        use_listings_cache=False,
        config_kwargs={"retries": {"max_attempts": _LIBRARY_TRIES[1], "mode": "standard"}},
    )
    fs.retries = _LIBRARY_TRIES[0]
    return fs, path


def arrow_filesystem(
    url: str, cfg: StorageConfig | None = None
) -> tuple[pyarrow.fs.FileSystem, str]:
    """The pyarrow filesystem for `url` (what Ray Data's readers and writers take)."""
    import pyarrow.fs as pafs

    protocol, path = split_url(url)
    if protocol == "file":
        return pafs.LocalFileSystem(), path
    cfg = cfg or StorageConfig.from_env()
    kwargs: dict[str, object] = {"anonymous": cfg.anon}
    if cfg.key:
        kwargs.update(access_key=cfg.key, secret_key=cfg.secret, session_token=cfg.token)
    if cfg.endpoint_url:
        parsed = urlparse(cfg.endpoint_url)
        kwargs.update(endpoint_override=parsed.netloc, scheme=parsed.scheme)
        kwargs["region"] = cfg.region or "us-east-1"
    elif cfg.region:
        kwargs["region"] = cfg.region
    try:
        return pafs.S3FileSystem(**kwargs), path
    except Exception as exc:  # pyarrow raises plain OSError/ArrowInvalid
        raise _storage_error(exc, url, cfg) from None


@dataclass(frozen=True)
class VideoObject:
    """A listed video: its URL, size and a fingerprint of its content from the listing
    (the S3 ETag; locally size + modification time), so a rerun can tell a changed file
    without reading it."""

    uri: str
    size: int
    etag: str


def _fingerprint(info: dict[str, Any]) -> str:
    etag = info.get("ETag") or info.get("etag")
    if etag:
        return str(etag).strip('"')
    mtime = info.get("mtime") or info.get("LastModified") or info.get("created") or 0
    mtime = mtime.timestamp() if hasattr(mtime, "timestamp") else float(mtime)
    return f"size{int(info.get('size') or 0)}-mtime{int(mtime * 1e9)}"


def list_video_objects(
    prefix: str,
    cfg: StorageConfig | None = None,
    extensions: tuple[str, ...] = VIDEO_EXTENSIONS,
) -> list[VideoObject]:
    """Every video under `prefix` (recursively) with size and fingerprint, sorted by URL.

    A `prefix` that is itself a video file lists just that file. Matching is by extension,
    case-insensitive. URLs have the same form as `prefix` (local paths or ``s3://``).

    Raises:
        StorageError: the prefix does not exist or cannot be listed (secrets redacted).
    """
    protocol, path = split_url(prefix)
    fs, _ = fsspec_filesystem(prefix, cfg)
    exts = tuple(e.lower() for e in extensions)
    try:
        if fs.isfile(path):
            found = {path: fs.info(path)} if path.lower().endswith(exts) else {}
        elif fs.isdir(path):
            found = {
                p: i for p, i in fs.find(path, detail=True).items() if p.lower().endswith(exts)
            }
        else:
            raise FileNotFoundError(f"no such file or prefix: {path}")
    except StorageError:
        raise
    except Exception as exc:
        raise _storage_error(exc, prefix, cfg) from None
    return [
        VideoObject(p if protocol == "file" else f"s3://{p}", int(i.get("size") or 0),
                    _fingerprint(i))
        for p, i in sorted(found.items())
    ]  # fmt: skip


def iter_video_objects(
    prefix: str,
    cfg: StorageConfig | None = None,
    extensions: tuple[str, ...] = VIDEO_EXTENSIONS,
    attempts: int = 1,
    backoff_s: float = 0.0,
    page_size: int = 1000,
) -> Iterator[VideoObject]:
    """`list_video_objects` as a stream, page by page (S3: ListObjectsV2 pages of 1,000;
    locally: one folder at a time), so a caller planning 10 million clips never holds the
    whole listing. Each S3 page is tried `attempts` times (`emotiw.core.retry`).

    Raises:
        StorageError: the prefix does not exist or cannot be listed (secrets redacted).
    """
    protocol, path = split_url(prefix)
    exts = tuple(e.lower() for e in extensions)
    fs, _ = fsspec_filesystem(prefix, cfg)
    try:
        if fs.isfile(path) or protocol == "file":
            if fs.isfile(path) or not fs.isdir(path):
                yield from list_video_objects(prefix, cfg, extensions)
                return
            for folder, dirs, files in os.walk(path):
                dirs.sort()
                for name in sorted(files):
                    if name.lower().endswith(exts):
                        full = os.path.join(folder, name)
                        st = os.stat(full)  # the fingerprint fsspec's info gives
                        yield VideoObject(
                            full,
                            st.st_size,
                            _fingerprint({"size": st.st_size, "mtime": st.st_mtime}),
                        )
            return
        bucket, key, _ = fs.split_path(path)
        token = None
        found = False
        while True:
            kwargs: dict[str, Any] = {
                "Bucket": bucket, "Prefix": key.rstrip("/") + "/" if key else "",
                "MaxKeys": page_size,
            }  # fmt: skip
            if token:
                kwargs["ContinuationToken"] = token
            page = retry.call(
                lambda kw=kwargs: fs.call_s3("list_objects_v2", **kw), attempts, backoff_s
            )
            for obj in page.get("Contents", []):
                found = True
                if obj["Key"].lower().endswith(exts):
                    yield VideoObject(
                        f"s3://{bucket}/{obj['Key']}", int(obj["Size"]), _fingerprint(obj)
                    )
            token = page.get("NextContinuationToken")
            if not token:
                break
        if not found and key:
            raise FileNotFoundError(f"no such file or prefix: {path}")
    except StorageError:
        raise
    except Exception as exc:
        raise _storage_error(exc, prefix, cfg) from None


def stat_video(url: str, cfg: StorageConfig | None = None) -> VideoObject:
    """One video's size and fingerprint (for manifests, which list URLs only)."""
    fs, path = fsspec_filesystem(url, cfg)
    try:
        info = fs.info(path)
    except Exception as exc:
        raise _storage_error(exc, url, cfg) from None
    return VideoObject(url, int(info.get("size") or 0), _fingerprint(info))


def list_videos(
    prefix: str,
    cfg: StorageConfig | None = None,
    extensions: tuple[str, ...] = VIDEO_EXTENSIONS,
) -> list[str]:
    """Every video under `prefix` (recursively), as sorted URLs (see `list_video_objects`)."""
    return [v.uri for v in list_video_objects(prefix, cfg, extensions)]


@contextlib.contextmanager
def open_input(
    url: str, cfg: StorageConfig | None = None, block_size: int | None = None
) -> Iterator[IO[bytes]]:
    """Open `url` for binary reading (a seekable file object); `block_size`: bytes per range
    request (s3fs reads ahead 50 MiB by default: right for a whole file, far too much for
    the header or one window of a long video).

    Raises:
        StorageError: reason ``not_found`` or ``io``, secrets redacted.
    """
    fs, path = fsspec_filesystem(url, cfg)
    try:
        handle = fs.open(path, "rb", **({"block_size": block_size} if block_size else {}))
    except Exception as exc:
        raise _storage_error(exc, url, cfg) from None
    with handle:
        yield handle


def read_bytes(url: str, cfg: StorageConfig | None = None) -> bytes:
    """All bytes of `url`."""
    fs, path = fsspec_filesystem(url, cfg)
    try:
        return fs.cat_file(path)
    except Exception as exc:
        raise _storage_error(exc, url, cfg) from None


def read_bytes_and_etag(url: str, cfg: StorageConfig | None = None, tries: int = 3) -> Any:
    """All bytes of `url` and the fingerprint they have (`VideoObject.etag`): read between
    two looks at the fingerprint that must agree (else read again), so a row never pairs
    the bytes it scored with the fingerprint of another version of the file (one replaced
    after the listing, or while it was read).

    Raises:
        StorageError: as `read_bytes`; reason ``io`` when the file changed on every try.
    """
    fs, path = fsspec_filesystem(url, cfg)
    try:
        for _ in range(tries):
            before = _fingerprint(fs.info(path))
            data = fs.cat_file(path)
            if _fingerprint(fs.info(path)) == before:
                return data, before
    except Exception as exc:
        raise _storage_error(exc, url, cfg) from None
    raise StorageError(_redact(f"{url}: changed while read, {tries} times", cfg), reason="io")


def write_bytes(url: str, data: bytes, cfg: StorageConfig | None = None) -> None:
    """Write `data` to `url`, creating parent directories for local paths."""
    fs, path = fsspec_filesystem(url, cfg)
    try:
        if split_url(url)[0] == "file":
            fs.makedirs(os.path.dirname(path), exist_ok=True)
        fs.pipe_file(path, data)
    except Exception as exc:
        raise _storage_error(exc, url, cfg) from None


def size(url: str, cfg: StorageConfig | None = None) -> int:
    """Size of the object at `url` in bytes."""
    fs, path = fsspec_filesystem(url, cfg)
    try:
        return int(fs.size(path))
    except Exception as exc:
        raise _storage_error(exc, url, cfg) from None


def upload_file(local_path: str, fs: pyarrow.fs.FileSystem, target: str) -> None:
    """Upload a local file as the object `target` of a pyarrow filesystem and check that it
    landed whole, else raise `OSError` (transient: the caller retries). pyarrow's
    `copy_files` can return normally although the upload's last part failed (the error only
    logged: "Error ignored when destroying file ... UploadPart"): a committed chunk was
    silently missing after an endpoint outage (tests' `FaultyS3Proxy`). So: the stream is
    closed explicitly (its error raised) and the object's size read back."""
    import shutil

    with open(local_path, "rb") as source, fs.open_output_stream(target) as out:
        shutil.copyfileobj(source, out, 8 << 20)
    landed, want = fs.get_file_info(target).size, os.path.getsize(local_path)
    if landed != want:
        raise OSError(f"{target}: the upload did not land whole ({landed} of {want} bytes)")
