"""storage: URL handling, listing local and on a real S3 endpoint, both filesystem kinds,
credentials from the environment, and secrets kept out of messages."""

from __future__ import annotations

from pathlib import Path

import pytest

from emotiw.core.config import StorageConfig
from emotiw.core.errors import StorageError
from emotiw.io.storage import (
    _redact,
    arrow_filesystem,
    join_url,
    list_videos,
    read_bytes,
    split_url,
    upload_file,
    video_id,
    write_bytes,
)
from helpers import TEST_KEY, TEST_SECRET


def test_split_and_join(tmp_path: Path) -> None:
    assert split_url("s3://bucket/a/b/") == ("s3", "bucket/a/b")
    assert split_url("s3a://bucket/a") == ("s3", "bucket/a")
    assert split_url(str(tmp_path)) == ("file", str(tmp_path))
    assert split_url(f"file://{tmp_path}") == ("file", str(tmp_path))
    assert join_url("s3://b/p/", "x", "y.mp4") == "s3://b/p/x/y.mp4"
    assert join_url(str(tmp_path), "y.mp4") == str(tmp_path / "y.mp4")
    with pytest.raises(StorageError, match="unsupported URL scheme"):
        split_url("ftp://host/x")


def test_video_id() -> None:
    assert video_id("s3://b/dir/10_1.mp4") == "10_1"
    assert video_id("/data/clip.final.mkv") == "clip.final"
    assert video_id("10_2") == "10_2"


def _tree(root: Path) -> None:
    for rel in ["a.mp4", "b.MP4", "sub/c.mkv", "sub/deep/d.webm", "notes.txt", "sub/e.jpg"]:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")


def test_list_videos_local(tmp_path: Path) -> None:
    _tree(tmp_path)
    found = list_videos(str(tmp_path))
    names = [p.removeprefix(str(tmp_path) + "/") for p in found]
    assert names == ["a.mp4", "b.MP4", "sub/c.mkv", "sub/deep/d.webm"]
    assert list_videos(str(tmp_path), extensions=(".mkv",)) == [str(tmp_path / "sub/c.mkv")]
    assert list_videos(str(tmp_path / "a.mp4")) == [str(tmp_path / "a.mp4")]
    assert list_videos(str(tmp_path / "notes.txt")) == []


def test_list_missing_prefix(tmp_path: Path) -> None:
    with pytest.raises(StorageError) as info:
        list_videos(str(tmp_path / "missing"))
    assert info.value.reason == "not_found"


def test_list_videos_s3(s3_bucket: str, s3_storage: StorageConfig) -> None:
    for rel in ["a.mp4", "b.MP4", "sub/c.mkv", "notes.txt"]:
        write_bytes(f"{s3_bucket}/drop/{rel}", b"x", s3_storage)
    found = list_videos(f"{s3_bucket}/drop", s3_storage)
    assert found == [f"{s3_bucket}/drop/{r}" for r in ["a.mp4", "b.MP4", "sub/c.mkv"]]
    # A new object appears in the next listing (no stale listing cache between runs).
    write_bytes(f"{s3_bucket}/drop/z.mp4", b"x", s3_storage)
    assert list_videos(f"{s3_bucket}/drop/", s3_storage)[-1] == f"{s3_bucket}/drop/z.mp4"
    assert list_videos(f"{s3_bucket}/drop/a.mp4", s3_storage) == [f"{s3_bucket}/drop/a.mp4"]


def test_streamed_listing_pages_through_s3_and_walks_local_folders(
    s3_bucket: str, s3_storage: StorageConfig, tmp_path
) -> None:
    """`iter_video_objects` yields what `list_video_objects` returns (same URLs, sizes and
    fingerprints, so skip keys agree) without holding the listing: S3 page by page."""
    from emotiw.io.storage import iter_video_objects, list_video_objects

    for rel in ["a.mp4", "b.MP4", "sub/c.mkv", "notes.txt", "sub/deeper/d.mp4", "e.webm"]:
        write_bytes(f"{s3_bucket}/drop/{rel}", b"xy", s3_storage)
        write_bytes(str(tmp_path / "drop" / rel), b"xy")
    for prefix, cfg in ((f"{s3_bucket}/drop", s3_storage), (str(tmp_path / "drop"), None)):
        streamed = list(iter_video_objects(prefix, cfg, page_size=2))
        assert sorted(streamed, key=lambda o: o.uri) == list_video_objects(prefix, cfg)
        assert len(streamed) == 5
    with pytest.raises(StorageError):
        list(iter_video_objects(f"{s3_bucket}/nothing-here", s3_storage))


def test_s3_missing_prefix_and_bucket(s3_bucket: str, s3_storage: StorageConfig) -> None:
    with pytest.raises(StorageError):
        list_videos(f"{s3_bucket}/nothing-here", s3_storage)
    with pytest.raises(StorageError) as info:
        read_bytes("s3://no-such-bucket-emotiw/x.mp4", s3_storage)
    assert TEST_SECRET not in str(info.value)


def test_fsspec_and_arrow_filesystems_agree(s3_bucket: str, s3_storage: StorageConfig) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    url = f"{s3_bucket}/tables/t.parquet"
    fs, path = arrow_filesystem(url, s3_storage)
    pq.write_table(pa.table({"x": [1, 2, 3]}), path, filesystem=fs)
    raw = read_bytes(url, s3_storage)  # through s3fs
    assert raw[:4] == b"PAR1"
    assert pq.read_table(path, filesystem=fs).column("x").to_pylist() == [1, 2, 3]


@pytest.mark.e2e  # many seconds: out of make test-fast
def test_upload_lands_whole_or_raises_when_the_endpoint_drops(
    s3_bucket: str, s3_storage: StorageConfig, s3_env: dict[str, str], tmp_path: Path
) -> None:
    """How a chunk is committed to S3: with the endpoint cut at different moments of the
    upload, `upload_file` either raises OSError (the commit retries) or the whole object is
    there; never a normal return without it (pyarrow's `copy_files` did that once)."""
    import dataclasses
    import os
    import threading
    import time

    from helpers import FaultyS3Proxy

    source = tmp_path / "chunk.parquet"
    source.write_bytes(os.urandom(6 << 20))
    proxy = FaultyS3Proxy(s3_env["AWS_ENDPOINT_URL_S3"])
    direct, root = arrow_filesystem(s3_bucket, s3_storage)
    try:
        fs, _ = arrow_filesystem(s3_bucket, dataclasses.replace(s3_storage, endpoint_url=proxy.url))
        outcomes = []
        for i, cut_after in enumerate((0.0, 0.02, 0.05, 0.1)):  # a clean upload takes ~0.2 s
            threading.Timer(cut_after, proxy.outage, (1.0,)).start()
            try:
                start = time.monotonic()
                upload_file(str(source), fs, f"{root}/t{i}")
                outcomes.append(f"returned {time.monotonic() - start:.2f}")
                assert direct.get_file_info(f"{root}/t{i}").size == 6 << 20, i
            except OSError:
                outcomes.append(f"raised {time.monotonic() - start:.2f}")
            time.sleep(1.5)  # the endpoint is back
        assert proxy.cut >= 1, outcomes  # the cuts met open connections
        upload_file(str(source), fs, f"{root}/after")
        assert direct.get_file_info(f"{root}/after").size == 6 << 20
    finally:
        proxy.stop()


def test_arrow_filesystem_local(tmp_path: Path) -> None:
    import pyarrow.fs as pafs

    fs, path = arrow_filesystem(f"file://{tmp_path}")
    assert isinstance(fs, pafs.LocalFileSystem) and path == str(tmp_path)


def test_credentials_and_endpoint_from_environment(
    s3_bucket: str, s3_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", TEST_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", TEST_SECRET)
    cfg = StorageConfig.from_env()
    assert cfg.endpoint_url == s3_endpoint and cfg.key is None  # the SDK chain supplies keys
    write_bytes(f"{s3_bucket}/env/a.mp4", b"x", cfg)
    assert list_videos(f"{s3_bucket}/env", cfg) == [f"{s3_bucket}/env/a.mp4"]
    fs, path = arrow_filesystem(f"{s3_bucket}/env/a.mp4", cfg)
    assert fs.get_file_info(path).size == 1


def test_secrets_never_in_repr_or_errors(s3_endpoint: str) -> None:
    cfg = StorageConfig(endpoint_url=s3_endpoint, key=TEST_KEY, secret=TEST_SECRET, token="tok-123")
    assert TEST_SECRET not in repr(cfg) and "tok-123" not in repr(cfg)
    from emotiw.core.config import to_dict

    assert TEST_SECRET not in str(to_dict(cfg))
    assert _redact(f"bad key {TEST_KEY} with {TEST_SECRET}", cfg) == "bad key *** with ***"
    bad = StorageConfig(endpoint_url="http://127.0.0.1:9", key=TEST_KEY, secret=TEST_SECRET)
    with pytest.raises(StorageError) as info:
        read_bytes("s3://bucket/x.mp4", bad)
    assert TEST_SECRET not in str(info.value)


def test_storage_config_validation() -> None:
    with pytest.raises(ValueError, match="endpoint_url"):
        StorageConfig(endpoint_url="127.0.0.1:9000")
    with pytest.raises(ValueError, match="together"):
        StorageConfig(key="only-key")


@pytest.mark.parametrize("where", ["local", "s3"])
def test_a_row_carries_the_fingerprint_of_the_bytes_it_read(
    where: str, tmp_path: Path, s3_bucket: str, s3_storage: StorageConfig
) -> None:
    """A file replaced after the listing: the row pairs the bytes it read (their hash and
    size) with their own fingerprint, not the listing's, so the next run neither rescores
    it nor takes the old version's fingerprint for the new bytes."""
    import hashlib

    from emotiw.core.config import MediaConfig
    from emotiw.io.storage import list_video_objects, write_bytes
    from emotiw.models.items import _extract_item

    root, cfg = (str(tmp_path), None) if where == "local" else (s3_bucket, s3_storage)
    url = f"{root}/drop/clip.mp4"
    write_bytes(url, b"first version", cfg)
    [listed] = list_video_objects(f"{root}/drop", cfg)
    write_bytes(url, b"the second, longer version", cfg)  # replaced after the listing
    [now] = list_video_objects(f"{root}/drop", cfg)
    assert now.etag != listed.etag

    def extractor(uri: str, video_id: str, data: bytes, label: object, run: str) -> dict:
        return {"uri": uri, "content_sha256": hashlib.sha256(data).hexdigest()}

    extractor.media = MediaConfig()  # type: ignore[attr-defined]  # its file-size limit
    item = {"uri": listed.uri, "video_id": "clip", "etag": listed.etag, "size_bytes": listed.size}
    row = _extract_item(extractor, item, cfg, "run")
    assert row["etag"] == now.etag and row["size_bytes"] == now.size
    assert row["content_sha256"] == hashlib.sha256(b"the second, longer version").hexdigest()


@pytest.mark.parametrize("where", ["local", "s3"])
def test_odd_keys_are_listed_and_read_as_stored(
    where: str, tmp_path: Path, s3_bucket: str, s3_storage: StorageConfig
) -> None:
    """The odd keys of the scoring test (`helpers.ODD_NAMES`, and a ``..``
    segment on S3): each listed once under its key exactly as written, each read back as its
    own bytes with the listing's fingerprint; a symlink loop is not followed."""
    from emotiw.io.storage import list_video_objects, read_bytes_and_etag, write_bytes
    from helpers import ODD_NAMES

    root, cfg = (str(tmp_path), None) if where == "local" else (s3_bucket, s3_storage)
    names = [*ODD_NAMES, *(["up/../dots.mp4"] if where == "s3" else [])]
    wrote = {f"{root}/in/{n}": f"clip {i}".encode() for i, n in enumerate(names)}
    for url, data in wrote.items():
        write_bytes(url, data, cfg)
    if where == "local":
        (tmp_path / "in" / "loop").symlink_to(tmp_path / "in")
    listed = list_video_objects(f"{root}/in", cfg)
    assert sorted(o.uri for o in listed) == sorted(wrote)
    for o in listed:
        assert read_bytes_and_etag(o.uri, cfg) == (wrote[o.uri], o.etag), o.uri
