"""The output table's machinery without Ray: chunked atomic commits, recovery of what a dead
run left in staging, the single-writer lease (compare-and-swap locally and with S3
conditional writes on the S3 test server), key lookups, and retries. The jobs' fault matrix
with real processes is in test_exactly_once.py."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from emotiw.core import retry
from emotiw.core.config import JobConfig
from emotiw.core.errors import LeaseHeld, LeaseLost, StorageError
from emotiw.io.storage import arrow_filesystem
from emotiw.tables.chunks import ChunkWriter, data_files, read, recover
from emotiw.tables.keys import done_keys
from emotiw.tables.lease import Lease

SCHEMA = pa.schema([("uri", pa.string()), ("etag", pa.string()), ("error_reason", pa.string())])


def rows(n: int, start: int = 0, reason: str | None = None) -> pa.Table:
    return pa.table(
        {"uri": [f"s3://b/cam{i % 2}/clip.mp4?{i}" for i in range(start, start + n)],
         "etag": [f"e{i}" for i in range(start, start + n)], "error_reason": [reason] * n},
        schema=SCHEMA,
    )  # fmt: skip


@pytest.fixture(params=["local", "s3"])
def table_url(request, tmp_path, s3_storage) -> tuple[str, object]:
    """A table root: a local folder, or the root of a new, empty S3 bucket."""
    if request.param == "local":
        return str(tmp_path / "table"), None
    return request.getfixturevalue("s3_bucket"), s3_storage


def test_chunks_commit_as_whole_files_and_staging_goes(table_url) -> None:
    url, storage = table_url
    fs, root = arrow_filesystem(url, storage)
    assert read(fs, root, SCHEMA).num_rows == 0  # missing folder / empty bucket root
    assert len(done_keys(fs, root, SCHEMA)) == 0
    writer = ChunkWriter(fs, root, "run-1", SCHEMA, commit_every=3, commit_interval_s=600,
                         partition=lambda: "scored_date=2026-11-26")  # fmt: skip
    writer.write(rows(2))
    assert data_files(fs, root) == []  # nothing visible before a chunk is complete
    writer.write(rows(5, start=2))  # completes chunk 0 and 1 (a batch split across chunks)
    assert [len(pq.read_table(f, filesystem=fs)) for f in data_files(fs, root)] == [3, 3]
    writer.close()
    files = data_files(fs, root)
    assert [f.rsplit("/", 1)[1] for f in files] == [f"part-run-1-{i:05d}.parquet" for i in range(3)]
    assert all("/scored_date=2026-11-26/" in f for f in files)
    assert sorted(read(fs, root, SCHEMA)["uri"].to_pylist()) == sorted(rows(7)["uri"].to_pylist())
    assert not any("_staging" in f.path for f in fs.get_file_info(_all(root)))


def _all(root: str):
    from pyarrow import fs as pafs

    return pafs.FileSelector(root, recursive=True, allow_not_found=True)


def test_commit_interval_bounds_a_chunk_in_time(tmp_path) -> None:
    fs, root = arrow_filesystem(str(tmp_path / "t"))
    writer = ChunkWriter(fs, root, "run-1", SCHEMA, commit_every=1000, commit_interval_s=0.2)
    writer.write(rows(1))
    time.sleep(0.3)
    writer.write(rows(1, start=1))  # past the interval: the chunk is committed now
    assert len(data_files(fs, root)) == 1 and len(writer.committed) == 1
    writer.close()


def test_recover_adopts_complete_chunks_and_deletes_partial_ones(table_url) -> None:
    """What a SIGKILLed driver can leave: a chunk closed but not moved, a half-written one,
    one whose move copied but did not delete; plus a reader-visible table that ignores all of
    it. The next writer adopts, deletes, and reports."""
    url, storage = table_url
    fs, root = arrow_filesystem(url, storage)
    staging = f"{root}/_staging/dead-run"
    if fs.type_name == "local":
        fs.create_dir(staging + "/p=1", recursive=True)
        fs.create_dir(root + "/p=1", recursive=True)
    pq.write_table(rows(3), f"{staging}/p=1/part-dead-run-00000.parquet", filesystem=fs)
    pq.write_table(rows(2, start=3), f"{root}/p=1/part-dead-run-00001.parquet", filesystem=fs)
    pq.write_table(rows(2, start=3), f"{staging}/p=1/part-dead-run-00001.parquet", filesystem=fs)
    with fs.open_output_stream(f"{staging}/p=1/part-dead-run-00002.parquet") as out:
        out.write(b"PAR1" + b"\0" * 100)  # no footer: the writer died mid-file
    assert read(fs, root, SCHEMA).num_rows == 2  # readers never see staging
    found = recover(fs, root, "live-run")
    assert (found.runs, found.adopted, found.already_committed, found.deleted) == (
        ["dead-run"],
        1,
        1,
        1,
    )
    assert "1 complete chunk(s) adopted" in str(found)
    assert read(fs, root, SCHEMA).num_rows == 5
    assert not [i for i in fs.get_file_info(_all(root)) if "_staging" in i.path]
    assert str(recover(fs, root, "live-run")) == "no staging left by earlier runs"


def test_done_keys_retry_transient_errors_and_match_old_rows(tmp_path) -> None:
    fs, root = arrow_filesystem(str(tmp_path / "t"))
    writer = ChunkWriter(fs, root, "r", SCHEMA, commit_every=100, commit_interval_s=600)
    writer.write(rows(1, 0))  # success
    writer.write(rows(1, 1, reason="not_media"))  # final
    writer.write(rows(1, 2, reason="io"))  # transient: not done
    writer.write(pa.table({"uri": ["old"], "etag": [None], "error_reason": [None]}, SCHEMA))
    writer.close()
    done = done_keys(fs, root, SCHEMA)
    uris = rows(3)["uri"].to_pylist()
    assert done.done(uris[0], "e0") and done.done(uris[1], "e1")
    assert not done.done(uris[2], "e2") and not done.done(uris[0], "changed")
    assert done.done("old", "any etag")  # written before etags were recorded
    assert not done_keys(fs, root, SCHEMA, final_errors=False).done(uris[1], "e1")
    # what a dry run reports for each kind of pending clip
    history = done_keys(fs, root, SCHEMA, seen=True)
    asked = [(uris[0], "e0"), (uris[0], "e9"), (uris[2], "e2"), ("never-seen", "e"), ("old", "x")]
    expected = ["done", "changed", "retry", "new", "done"]
    assert [history.status(u, e) for u, e in asked] == expected
    retry_finals = done_keys(fs, root, SCHEMA, final_errors=False, seen=True)
    assert retry_finals.status(uris[1], "e1") == "retry"  # --retry-errors


def test_a_crashed_clip_is_retried_until_it_crashed_in_crash_runs_runs(tmp_path) -> None:
    """A clip whose process died on every try (`crashed`) is tried again by the next run, and
    is done once it has crashed in `crash_runs` runs (--crash-runs), unless --retry-crashed
    (crash_runs None); a new version of the file is a new clip."""
    fs, root = arrow_filesystem(str(tmp_path / "t"))
    for run in ("r1", "r2"):
        writer = ChunkWriter(fs, root, run, SCHEMA, commit_every=100, commit_interval_s=600)
        writer.write(rows(1, 0, reason="crashed"))
        writer.close()
        done = done_keys(fs, root, SCHEMA, seen=True)
        uri = rows(1)["uri"].to_pylist()[0]
        assert done.status(uri, "e0") == ("retry" if run == "r1" else "done")
    assert done_keys(fs, root, SCHEMA, seen=True, crash_runs=3).status(uri, "e0") == "retry"
    assert done_keys(fs, root, SCHEMA, seen=True, crash_runs=None).status(uri, "e0") == "retry"
    assert done.status(uri, "e-new") == "changed"


def test_done_keys_of_one_model_only(tmp_path) -> None:
    """--rescore-on-model-change: only the given model's rows count as done."""
    schema = pa.schema([*SCHEMA, ("model_uri", pa.string())])
    fs, root = arrow_filesystem(str(tmp_path / "t"))
    writer = ChunkWriter(fs, root, "r", schema, commit_every=100, commit_interval_s=600)
    writer.write(pa.table({"uri": ["a", "b"], "etag": ["1", "1"], "error_reason": [None, None],
                           "model_uri": ["models:/m/1", "models:/m/2"]}, schema))  # fmt: skip
    writer.close()
    everything = done_keys(fs, root, schema)
    assert everything.done("a", "1") and everything.done("b", "1")
    v2 = done_keys(fs, root, schema, seen=True, model_uri="models:/m/2")
    assert v2.status("a", "1") == "new" and v2.status("b", "1") == "done"


def job(**kw: object) -> JobConfig:
    return JobConfig(**{"lease_ttl_s": 4.0, "attempts": 2, "backoff_s": 0.1, **kw})


def test_lease_is_exclusive_renewed_and_taken_over_when_dead(table_url) -> None:
    url, storage = table_url
    first = Lease.acquire(url, storage, "run-a", job())
    with pytest.raises(LeaseHeld, match=r"run run-a on .* \(pid \d+\).*--wait"):
        Lease.acquire(url, storage, "run-b", job())
    time.sleep(5)  # longer than the ttl: the heartbeat kept it
    with pytest.raises(LeaseHeld):
        Lease.acquire(url, storage, "run-b", job())
    first.check()
    first._stop.set()  # the holder freezes (no more heartbeats) ...
    first._thread.join()
    # ... past its last renewal's expiry (with a margin, whatever the renewals' timing): a
    # new run takes over, the old one learns it
    time.sleep(max(0.0, first.info.expires_at - time.time()) + 1.0)
    second = Lease.acquire(url, storage, "run-b", job())
    assert "took over the lease of dead run run-a" in second.note
    with pytest.raises(LeaseLost):
        first.check()
    first.release()  # does not delete the new holder's lease
    with pytest.raises(LeaseHeld):
        Lease.acquire(url, storage, "run-c", job())
    second.release()
    Lease.acquire(url, storage, "run-c", job()).release()


def test_a_lease_write_that_landed_unanswered_is_still_ours(table_url) -> None:
    """A renewal the store applied but whose answer was lost (a connection dropped mid-call,
    as in an endpoint outage) leaves our lease under a version we never saw: the next
    renewal and the release find it is still ours instead of calling it lost or leaving it."""
    import json
    from dataclasses import asdict

    url, storage = table_url
    lease = Lease.acquire(url, storage, "run-a", job(lease_ttl_s=60))

    def landed_unanswered() -> None:
        body = json.dumps({**asdict(lease.info), "renewed_at": time.time()}).encode()
        lease.store.replace(body, lease.store.read()[1])  # lease.version is now stale

    landed_unanswered()
    lease._renew()
    assert lease.lost is None
    landed_unanswered()
    lease.release()
    assert lease.store.read() is None  # nothing left for the next run to wait on


@pytest.mark.e2e  # many seconds: out of make test-fast
def test_lease_renewal_and_release_ride_out_an_endpoint_outage(s3_bucket, s3_storage, s3_env):
    """The endpoint goes down (open connections cut, new ones refused) while a run holds the
    lease: a renewal before a commit and the release at the end wait for it to come back
    (botocore's connection errors are transient) instead of failing the run or leaving the
    lease for the next run to wait on. The outage outlasts the tries inside one botocore call
    (~3 s with `storage._LIBRARY_TRIES`); before botocore's errors counted as transient, the
    renewal raised and the release gave up, leaving the lease."""
    import dataclasses

    from helpers import FaultyS3Proxy

    proxy = FaultyS3Proxy(s3_env["AWS_ENDPOINT_URL_S3"])
    try:
        storage = dataclasses.replace(s3_storage, endpoint_url=proxy.url)
        lease = Lease.acquire(s3_bucket, storage, "run-a", job(lease_ttl_s=60, attempts=6,
                                                               backoff_s=0.5))  # fmt: skip
        for step in ("renewal", "release"):
            proxy.outage(8.0)
            start = time.monotonic()
            if step == "renewal":
                lease.info = dataclasses.replace(lease.info, expires_at=time.time())
                lease.check()  # renews: its expiry is due
                assert lease.info.expires_at > time.time() + 50 and lease.lost is None
            else:
                lease.release()
            assert time.monotonic() - start > 7, step  # it waited for the endpoint
        assert lease.store.read() is None
    finally:
        proxy.stop()


def test_lease_of_a_dead_process_on_this_host_is_taken_at_once(table_url, tmp_path) -> None:
    """A SIGKILLed driver cannot release its lease; its pid is gone, so no ttl wait."""
    url, storage = table_url
    env = {**os.environ}
    if storage is not None:
        env.update(AWS_ENDPOINT_URL_S3=storage.endpoint_url, AWS_ACCESS_KEY_ID=storage.key,
                   AWS_SECRET_ACCESS_KEY=storage.secret)  # fmt: skip
    code = (
        "import os, signal, sys; from emotiw.core.config import JobConfig, StorageConfig; "
        "from emotiw.tables.lease import Lease; "
        "Lease.acquire(sys.argv[1], StorageConfig.from_env(key=os.environ.get("
        "'AWS_ACCESS_KEY_ID'), secret=os.environ.get('AWS_SECRET_ACCESS_KEY')) "
        "if sys.argv[1].startswith('s3') else None, 'killed', JobConfig(lease_ttl_s=600)); "
        "os.kill(os.getpid(), signal.SIGKILL)"
    )
    proc = subprocess.run([sys.executable, "-c", code, url], env=env, timeout=120)
    assert proc.returncode == -9
    start = time.monotonic()
    lease = Lease.acquire(url, storage, "rerun", job(lease_ttl_s=600))
    assert time.monotonic() - start < 30 and "dead run killed" in lease.note
    lease.release()


def test_wait_waits_for_the_holder_to_finish(tmp_path) -> None:
    url = str(tmp_path / "t")
    first = Lease.acquire(url, None, "run-a", job())
    threading.Timer(2.0, first.release).start()
    messages: list[str] = []
    start = time.monotonic()
    second = Lease.acquire(url, None, "run-b", job(wait=True), log=messages.append)
    assert time.monotonic() - start >= 1.5 and "waiting:" in messages[0]
    with pytest.raises(LeaseHeld, match="Gave up after waiting"):
        Lease.acquire(url, None, "run-c", job(wait=True, wait_timeout_s=1), log=print)
    second.release()
    assert not (tmp_path / "t" / "_lease.json").exists()


def test_retry_call_retries_transient_failures_only() -> None:
    calls: list[int] = []
    waits: list[float] = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise StorageError("s3://b/k: ConnectionError", reason="io")
        return "ok"

    assert retry.call(flaky, 4, 1.0, sleep=waits.append) == "ok" and len(waits) == 2
    assert 0 <= waits[0] <= 1.0 and 0 <= waits[1] <= 2.0  # below the doubling ceilings
    with pytest.raises(StorageError):
        retry.call(lambda: (_ for _ in ()).throw(StorageError("gone", "not_found")), 4, 1.0,
                   sleep=waits.append)  # fmt: skip
    assert len(waits) == 2  # not_found is final: no wait, no retry
    assert retry._ceilings(8, 1.0) == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]


def test_actors_failing_together_do_not_retry_in_lockstep() -> None:
    """Full jitter: each wait is drawn uniformly below its ceiling, differently in every
    process, so actors hit by one S3 blip come back spread out (and reproducible under a
    seeded generator for tests)."""
    import random
    import subprocess
    import sys

    code = "from emotiw.core import retry; print(retry.delays(4, 1.0))"
    seen = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           check=True).stdout for _ in range(3)}  # fmt: skip
    assert len(seen) == 3, seen  # three processes, three schedules
    firsts = [retry.delays(2, 1.0)[0] for _ in range(200)]
    assert all(0 <= w <= 1.0 for w in firsts)
    assert min(firsts) < 0.1 and max(firsts) > 0.9  # spread over the whole window
    assert retry.delays(5, 1.0, random.Random(7)) == retry.delays(5, 1.0, random.Random(7))
    from botocore.exceptions import ClientError, EndpointConnectionError, ReadTimeoutError

    # What s3fs lets through from direct S3 calls (the lease, listings) when the endpoint is
    # down or slow: not OSErrors, but transient; an answer from S3 (ClientError) is not.
    assert retry.transient_exception(EndpointConnectionError(endpoint_url="http://s3"))
    assert retry.transient_exception(ReadTimeoutError(endpoint_url="http://s3"))
    assert not retry.transient_exception(ClientError({"Error": {"Code": "403"}}, "GetObject"))


def test_progress_prints_one_line_at_an_interval_off_a_terminal() -> None:
    """A progress line per interval through the ``emotiw`` logger: text for people, JSON
    with the numbers as fields for log shippers, nothing below the chosen level."""
    import io
    import json

    from emotiw.core import logs
    from emotiw.jobs.pipeline import Progress

    out = io.StringIO()  # not a terminal
    logs.setup("info", "text", stream=out)
    clock = iter([0.0, 0.01, 0.5, 0.5]).__next__  # start, update, update, close
    progress = Progress("score", 10, interval_s=0.05, stream=out, clock=clock)
    progress.update(2, 0)  # within the interval: nothing yet
    progress.update(3, 1)  # past it
    progress.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and lines[0].startswith("score: 5/10 clips (50%), ")
    assert "clips/s, 1 errors, ETA 00:00:0" in lines[0]
    quiet = io.StringIO()
    silent = Progress("score", 10, interval_s=0, stream=quiet)
    silent.update(10, 0)
    silent.close()
    assert quiet.getvalue() == ""
    shipped = io.StringIO()
    logs.setup("info", "json", stream=shipped)
    progress = Progress("extract", 4, interval_s=0.01, stream=shipped)
    time.sleep(0.02)
    progress.update(4, 0)
    record = json.loads(shipped.getvalue().splitlines()[0])
    assert record["level"] == "info" and record["logger"] == "emotiw.progress"
    assert (record["job"], record["done"], record["total"], record["eta_s"]) == ("extract", 4, 4, 0)
    assert record["message"].startswith("extract: 4/4 clips") and record["time"].endswith("Z")
    warnings_only = io.StringIO()
    logs.setup("warning", "text", stream=warnings_only)
    progress = Progress("score", 4, interval_s=0.01, stream=warnings_only)
    progress.update(4, 0)
    progress.close()
    assert warnings_only.getvalue() == ""
    logs.setup("info", "text")


def test_run_ids_are_utc_whatever_the_machine_time_zone() -> None:
    """Drivers in UTC+14 and UTC-12 starting one after the other get ids in that order."""
    import datetime as dt
    import subprocess
    import sys

    code = "from emotiw.jobs.pipeline import new_run_id; print(new_run_id())"
    ids = []
    for zone in ("EAST-14", "WEST+12"):  # POSIX TZ strings (no zone database): UTC+14, UTC-12
        env = {**os.environ, "TZ": zone}
        ids.append(subprocess.run([sys.executable, "-c", code], capture_output=True,
                                  text=True, check=True, env=env).stdout.strip())  # fmt: skip
    stamps = [run_id.split("-")[0] for run_id in ids]
    assert stamps == sorted(stamps), ids
    now = dt.datetime.now(dt.UTC)
    for run_id in ids:
        stamp = dt.datetime.strptime(run_id.split("-")[0], "%Y%m%dT%H%M%S")
        assert abs((now - stamp.replace(tzinfo=dt.UTC)).total_seconds()) < 120, (run_id, now)
