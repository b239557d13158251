"""The fault matrix of exactly-once commits, with real processes: the jobs run as a user runs
them (`jobs/score.py`, `jobs/extract.py` subprocesses on the session's Ray cluster), and the
faults are real too: SIGKILL of Ray actor processes and of the driver, a second run started
while the first is writing, the S3 endpoint refusing connections for seconds, reads whose
connection drops. After each, every listed clip is in the table exactly once with the scores
of a clean run, and nothing is left to clean up by hand (no staging, no lease).

The drop has the same file names in two folders (cam1/clip_0000.mp4, cam2/clip_0000.mp4 with
different content) and a corrupt file, whose error row must also appear exactly once.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest

from emotiw import modalities
from emotiw.io.corpus import write_sample_corpus
from emotiw.io.storage import arrow_filesystem
from emotiw.models.features import feature_schema
from emotiw.tables.chunks import read
from emotiw.tables.schema import score_schema, window_schema
from helpers import (
    ROOT,
    SMOKE_ARGS,
    FaultyS3Proxy,
    job_env,
    run_job,
    stop_session,
    write_clip,
)

PROBS = ["prob_positive", "prob_neutral", "prob_negative"]


@pytest.fixture(scope="module")
def drop(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """cam1/ and cam2/ each hold clip_0000..clip_0003 (different clips, same names), plus a
    corrupt file: 9 clips."""
    out = tmp_path_factory.mktemp("drop")
    write_sample_corpus(str(out / "cam1"), 4, seed=11)
    write_sample_corpus(str(out / "cam2"), 4, seed=12)
    (out / "cam1" / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x17" * 500)
    return out


@pytest.fixture(scope="module")
def package(smoke_package: Path) -> Path:
    return smoke_package


def listed(drop: Path) -> set[str]:
    return {str(p.relative_to(drop)) for p in drop.rglob("*.mp4")}


def rows_of(url: str, storage: Any = None, schema: Any = None) -> list[dict[str, Any]]:
    fs, root = arrow_filesystem(url, storage)
    return read(fs, root, schema or score_schema(modalities.specs())).to_pylist()


def by_clip(rows: list[dict[str, Any]], prefix: str) -> dict[str, dict[str, Any]]:
    """Relative path -> row, asserting each clip has exactly one row."""
    counts = Counter(r["uri"] for r in rows)
    assert max(counts.values()) == 1, [u for u, n in counts.items() if n > 1]
    return {r["uri"][len(prefix.rstrip("/")) + 1 :]: r for r in rows}


def assert_same_scores(got: dict[str, Any], clean: dict[str, Any]) -> None:
    assert set(got) == set(clean)
    for clip, row in got.items():
        assert row["error_reason"] == clean[clip]["error_reason"], clip
        assert row["content_sha256"] == clean[clip]["content_sha256"], clip
        if row["error"] is None:
            assert np.allclose([row[c] for c in PROBS], [clean[clip][c] for c in PROBS],
                               atol=1e-5), clip  # fmt: skip


def assert_nothing_to_clean(out: Path) -> None:
    left = [p for p in out.rglob("*") if "_staging" in str(p) or p.name == "_lease.json"]
    assert not left, left


class Drivers:
    """Job drivers started in the background, each in a process session of its own; whatever
    the test's outcome, `stop_all` ends those still running (a driver left behind would keep
    its lease and the cluster's CPUs for later tests)."""

    def __init__(self) -> None:
        self.started: list[subprocess.Popen] = []

    def start(self, job: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "jobs" / f"{job}.py"), *args], stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, env=job_env(env), start_new_session=True,
        )  # fmt: skip
        self.started.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in self.started:
            stop_session(proc, grace_s=10)
            for stream in (proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()


@pytest.fixture(scope="module")
def module_drivers() -> Iterator[Drivers]:
    drivers = Drivers()
    yield drivers
    drivers.stop_all()


@pytest.fixture
def drivers() -> Iterator[Drivers]:
    drivers = Drivers()
    yield drivers
    drivers.stop_all()


def wait_for(condition: Callable[[], Any], what: str, timeout: float = 300) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def committed_files(out: Path) -> list[Path]:
    return [p for p in out.rglob("*.parquet") if "_staging" not in str(p)]


@pytest.fixture(scope="module")
def clean(
    drop: Path,
    package: Path,
    module_drivers: Drivers,
    ray_cluster: Any,
    tmp_path_factory: pytest.TempPathFactory,
) -> dict:
    """A clean single run, with two overlapping runs started while it writes: the second
    exits with code 75 at once, a third with --wait waits and then finds nothing to do.
    The first run is held (SIGSTOP) once its lease exists, so the others meet it mid-run
    however fast this machine is; it resumes (SIGCONT) well within the lease's ttl."""
    out = tmp_path_factory.mktemp("clean") / "scores"
    args = ["--input", str(drop), "--output", str(out), "--model", str(package)]
    first = module_drivers.start("score", *args, "--commit-every", "3")
    wait_for(lambda: (out / "_lease.json").exists(), "the first run's lease")
    os.kill(first.pid, signal.SIGSTOP)
    try:
        waiting = module_drivers.start("score", *args, "--wait")
        second = run_job("score", *args, check=False, timeout=120)
    finally:
        os.kill(first.pid, signal.SIGCONT)
    assert second.returncode == 75, second.stdout + second.stderr
    assert "is being written by run" in second.stderr and "--wait" in second.stderr
    stdout, stderr = first.communicate(timeout=900)
    assert first.returncode == 0, stdout + stderr[-4000:]
    assert "9 clips listed, 0 already scored, 8 scored, 1 errors" in stdout
    assert "committed 9 rows in 3 chunk(s)" in stdout
    stdout, stderr = waiting.communicate(timeout=300)
    assert waiting.returncode == 0, stdout + stderr[-4000:]
    assert "9 clips listed, 9 already scored, 0 scored" in stdout
    rows = by_clip(rows_of(str(out)), str(drop))
    assert set(rows) == listed(drop)  # both clip_0000.mp4 are there, each with its own row
    assert_nothing_to_clean(out)
    return rows


@pytest.mark.e2e
def test_same_names_in_two_folders_keep_their_own_scores(clean, drop) -> None:
    for i in range(4):
        one, two = clean[f"cam1/clip_{i:04d}.mp4"], clean[f"cam2/clip_{i:04d}.mp4"]
        assert one["video_id"] == two["video_id"] == f"clip_{i:04d}"
        assert one["content_sha256"] == _sha(drop / f"cam1/clip_{i:04d}.mp4")
        assert two["content_sha256"] == _sha(drop / f"cam2/clip_{i:04d}.mp4")
        assert [one[c] for c in PROBS] != [two[c] for c in PROBS]
    assert clean["cam1/corrupt.mp4"]["error_reason"] == "not_media"
    assert clean["cam1/corrupt.mp4"]["retryable"] is False


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.e2e
def test_killed_actors_and_driver_lose_nothing_and_duplicate_nothing(
    clean, drop, package, drivers, ray_cluster, tmp_path
) -> None:
    """SIGKILL an extract actor, then a model actor (Ray restarts them and retries their
    tasks), then the driver, each after a chunk was committed; the rerun takes the dead
    driver's lease at once, recovers its staging, and scores only what is missing."""
    out = tmp_path / "scores"
    # one clip at a time through each stage, a chunk every 2 clips: the run lasts long
    # enough for three kills at known points
    args = ["--input", str(drop), "--output", str(out), "--model", str(package),
            "--commit-every", "2", "--extract-actors", "1", "--model-batch-size", "1"]  # fmt: skip
    run = drivers.start("score", *args)
    titled = ray_cluster.pids_titled  # this session's cluster only, never another Ray's
    pid = wait_for(lambda: titled("ray::MapWorker(MapBatches(ExtractActor))"), "actor")[0]
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: committed_files(out), "a committed chunk")
    pid = wait_for(lambda: titled("ray::MapWorker(MapBatches(ModelActor))"), "actor")[0]
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: len(rows_of(str(out))) >= 4, "chunks after the actor kills")
    assert run.poll() is None, "the run finished before its driver could be killed"
    run.kill()  # SIGKILL the driver mid-run
    run.wait(timeout=60)
    partial = rows_of(str(out))
    assert 0 < len(partial) < 9, len(partial)
    by_clip(partial, str(drop))  # no duplicates among what was committed
    rerun = run_job("score", *args).stdout
    assert "took over the lease of dead run" in rerun
    done = int(re.search(r"9 clips listed, (\d+) already scored", rerun).group(1))
    assert done >= len(partial)  # (plus a chunk adopted from staging, if one was closed)
    final = rows_of(str(out))
    assert_same_scores(by_clip(final, str(drop)), clean)
    assert_nothing_to_clean(out)
    assert_faces_once(final, out.parent / "scores-details" / "faces")


@pytest.mark.e2e
def test_a_driver_killed_mid_video_leaves_its_windows_and_a_rerun_scores_only_the_rest(
    package, drivers, tmp_path
) -> None:
    """A 2-minute video (24 windows) whose driver is SIGKILLed after some windows were
    committed: the rerun scores only the missing windows, each window is in the windows table
    once, and the video's one row appears when its last window is committed. A run that died
    between the last window and the row (here: the scores table removed) writes the row from
    the windows table, scoring nothing."""
    videos = tmp_path / "videos"
    videos.mkdir()
    write_clip(videos / "talk.mkv", n_frames=12 * 120, fps=12, size=(160, 120))
    out, windows = tmp_path / "scores", tmp_path / "scores-details" / "windows"
    schema = window_schema(modalities.specs())
    args = ["--input", str(videos), "--output", str(out), "--model", str(package),
            "--commit-every", "2", "--extract-actors", "1", "--model-batch-size", "1"]  # fmt: skip
    run = drivers.start("score", *args)
    wait_for(lambda: len(committed_files(windows)) >= 2, "committed windows")
    assert run.poll() is None, "the run finished before its driver could be killed"
    run.kill()
    run.wait(timeout=60)
    first = {r["window_index"]: r["run_id"] for r in rows_of(str(windows), schema=schema)}
    assert 4 <= len(first) < 24 and not rows_of(str(out))  # no video row before its windows
    rerun = run_job("score", *args).stdout
    assert "1 clips listed, 0 already scored, 1 scored, 0 errors" in rerun
    final = rows_of(str(windows), schema=schema)
    assert sorted(r["window_index"] for r in final) == list(range(24))  # each window once
    kept = {r["window_index"]: r["run_id"] for r in final if r["window_index"] in first}
    assert kept == first  # committed windows were not scored again
    [row] = rows_of(str(out))
    assert (row["n_windows"], row["coverage"], row["error"]) == (24, 1.0, None)
    for folder in (out, windows):
        assert_nothing_to_clean(folder)

    shutil.rmtree(out)  # as if the run had died after its last window, before the row
    again = run_job("score", *args).stdout
    assert "1 scored, 0 errors" in again
    [same] = rows_of(str(out))
    assert [same[c] for c in PROBS] == [row[c] for c in PROBS]
    assert len(rows_of(str(windows), schema=schema)) == 24  # no window scored again


def assert_faces_once(rows: list[dict[str, Any]], faces: Path) -> None:
    """The per-face table holds each committed row's faces exactly once, under that row's
    run (a killed run's faces whose scores never landed were pruned), and nothing else."""
    got = Counter((f["uri"], f["run_id"]) for f in pq.read_table(faces).to_pylist())
    want = {(r["uri"], r["run_id"]): r["n_faces"] for r in rows if r["n_faces"]}
    assert dict(got) == want
    assert_nothing_to_clean(faces)


@pytest.mark.nightly
def test_s3_outage_and_dropped_reads_are_ridden_out(
    clean, drop, package, drivers, s3_bucket, s3_storage, s3_env
) -> None:
    """Output at the root of a new, empty bucket; a clip whose GETs drop 12 times in a row
    (past the tries inside one s3fs call, `storage._LIBRARY_TRIES`: the job's own retry is what
    saves it) and the endpoint down for 6 s after the first chunk is committed: open
    connections cut, new ones refused. (This found two losses: a lease left behind when the
    release met botocore's connection error, and a chunk counted as committed whose upload
    pyarrow's `copy_files` had lost; see `storage.upload_file`.)
    Sibling in make test:
    tests/test_table.py::test_lease_renewal_and_release_ride_out_an_endpoint_outage
    and tests/test_storage.py::test_upload_lands_whole_or_raises_when_the_endpoint_drops (the
    lease and the chunk upload through outages) and
    tests/test_scoring.py::test_score_on_s3_with_manifest (the job on S3)."""
    from emotiw.io.storage import fsspec_filesystem

    fs, bucket = fsspec_filesystem(s3_bucket, s3_storage)
    fs.put(str(drop), f"{bucket}/in", recursive=True)
    proxy = FaultyS3Proxy(s3_env["AWS_ENDPOINT_URL_S3"])
    try:
        proxy.fail_gets("in/cam2/clip_0001.mp4", 12)
        run = drivers.start(
            "score", "--input", f"{s3_bucket}/in", "--output", s3_bucket,
            "--model", str(package), "--commit-every", "2",
            env={**s3_env, "AWS_ENDPOINT_URL_S3": proxy.url},
        )  # fmt: skip
        wait_for(lambda: rows_of(s3_bucket, s3_storage), "a committed chunk on S3", 600)
        proxy.outage(6.0)
        stdout, stderr = run.communicate(timeout=900)
    finally:
        proxy.stop()
    assert run.returncode == 0, stdout + stderr[-4000:]
    assert proxy.dropped == 12
    assert "8 scored, 1 errors" in stdout and "0 errors retryable" in stdout
    rows = by_clip(rows_of(s3_bucket, s3_storage), f"{s3_bucket}/in")
    assert rows["cam2/clip_0001.mp4"]["attempts"] >= 2  # the job's own retry
    assert_same_scores(rows, clean)
    assert not fs.exists(f"{bucket}/_lease.json") and not fs.exists(f"{bucket}/_staging")


@pytest.mark.nightly
def test_a_clip_failing_past_its_attempts_is_retried_by_the_next_run(
    drop, package, s3_bucket, s3_storage, s3_env
) -> None:
    """Reads failing through every try: a retryable `io` row, the error-rate alarm (exit 3);
    the next run, with nothing asked of it, scores the clip; its newest row is the success.
    Sibling in make test:
    tests/test_table.py::test_done_keys_retry_transient_errors_and_match_old_rows
    (a retryable row is not done) and
    tests/test_table.py::test_retry_call_retries_transient_failures_only
    (the per-clip attempts)."""
    from emotiw.io.storage import fsspec_filesystem

    fs, bucket = fsspec_filesystem(s3_bucket, s3_storage)
    fs.put(str(drop / "cam1" / "clip_0002.mp4"), f"{bucket}/in/cam3/late.mp4")
    args = ["score", "--input", f"{s3_bucket}/in", "--output", f"{s3_bucket}/scores",
            "--model", str(package), "--attempts", "2", "--backoff-s", "0.5"]  # fmt: skip
    proxy = FaultyS3Proxy(s3_env["AWS_ENDPOINT_URL_S3"])
    try:
        proxy.fail_gets("in/cam3/late.mp4", 10_000)
        failed = run_job(*args, env={**s3_env, "AWS_ENDPOINT_URL_S3": proxy.url}, check=False)
    finally:
        proxy.stop()
    assert failed.returncode == 3, failed.stdout + failed.stderr[-3000:]
    assert "1 errors (io 1)" in failed.stdout and "1 errors retryable" in failed.stdout
    assert "1 of 1 clips (100%) ended as errors" in failed.stderr
    again = run_job(*args, env=s3_env).stdout
    assert "1 clips listed, 0 already scored, 1 scored, 0 errors" in again
    rows = sorted(rows_of(f"{s3_bucket}/scores", s3_storage), key=lambda r: r["scored_at"])
    assert [(r["error_reason"], r["retryable"]) for r in rows] == [("io", True), (None, None)]
    assert rows[0]["attempts"] == 2


@pytest.mark.e2e
def test_extract_table_has_each_uri_once_after_a_driver_kill(drop, drivers, tmp_path) -> None:
    out = tmp_path / "features"
    args = ["--videos", str(drop), "--output", str(out), *SMOKE_ARGS, "--commit-every", "2",
            "--extract-actors", "1", "--details-output", "auto"]  # fmt: skip
    run = drivers.start("extract", *args)
    wait_for(lambda: committed_files(out), "a committed chunk")
    assert run.poll() is None, "the run finished before its driver could be killed"
    run.kill()
    run.wait(timeout=60)
    rerun = run_job("extract", *args).stdout
    assert "took over the lease of dead run" in rerun and "9 clips listed" in rerun
    rows = by_clip(rows_of(str(out), schema=feature_schema()), str(drop))
    assert set(rows) == listed(drop)
    for clip, row in rows.items():
        assert row["content_sha256"] == _sha(drop / clip), clip  # its own bytes, its own row
    assert_nothing_to_clean(out)
    # behind --details-output: the per-face table beside the feature table, rows made once
    assert_faces_once(list(rows.values()), tmp_path / "features-details" / "faces")


@pytest.mark.nightly
def test_a_worker_node_lost_mid_run_loses_nothing_and_duplicates_nothing(
    clean, drop, package, drivers, tmp_path
) -> None:
    """A two-node cluster of its own (a 4-CPU head, a 2-CPU worker): Ray Data spreads three
    extract actors and the model actor over both; once a chunk is committed and actors run on
    the worker, every process of the worker node is SIGKILLed at once (its raylet, object
    store, actors). The run finishes on the head (Ray restarts the lost actors there and
    reruns their batches), every clip is in the table once with its own scores, and the
    summary names the lost node and what was redone. Nightly: a cluster of its own.
    Sibling in make test:
    tests/test_exactly_once.py::test_killed_actors_and_driver_lose_nothing_and_duplicate_nothing
    (actors killed one by one on the session's cluster: the same restart and retry path) and
    tests/test_pools.py::test_a_run_that_lost_no_node_reports_nothing_and_operators_are_named
    (the report)."""
    import shutil

    from helpers import RayNode

    clips = tmp_path / "clips"
    for copy in ("a", "b", "c"):  # 27 clips: the run outlasts the kill
        shutil.copytree(drop, clips / copy)
    env = job_env()
    env.pop("RAY_ADDRESS", None)
    head = RayNode("--head", "--num-cpus=4", "--num-gpus=0", head=True, env=env)
    worker = RayNode(f"--address={head.address}", "--num-cpus=2", "--num-gpus=0", head=False,
                     env=env)  # fmt: skip
    try:
        out = tmp_path / "scores"
        run = drivers.start(
            "score", "--input", str(clips), "--output", str(out), "--model", str(package),
            "--commit-every", "2", "--model-batch-size", "1", "--min-extract-actors", "3",
            "--extract-actors", "3", "--lease-ttl-s", "300", env={"RAY_ADDRESS": head.address},
        )  # fmt: skip
        on_worker = wait_for(lambda: worker.pids_titled("ray::MapWorker("), "actors on the worker")
        wait_for(lambda: committed_files(out), "a committed chunk")
        assert run.poll() is None, "the run finished before the node could be killed"
        # The driver is held while the node dies and Ray's health check marks it dead (~15 s),
        # so the run cannot end before the loss is known, however fast this machine is.
        os.kill(run.pid, signal.SIGSTOP)
        try:
            for pid in worker.pids_titled(""):  # every process of the node, at once
                os.kill(pid, signal.SIGKILL)
            wait_for(lambda: _dead_nodes(head.dashboard), "the node marked dead", timeout=120)
        finally:
            os.kill(run.pid, signal.SIGCONT)
        stdout, stderr = run.communicate(timeout=900)
        assert run.returncode == 0, stdout + stderr[-4000:]
        assert "27 clips listed, 0 already scored, 24 scored, 3 errors" in stdout, stdout
        lost = re.search(r"lost 1 node\(s\) mid-run: .*; redone: (.*)", stdout)
        assert lost and "actor(s) restarted" in lost.group(1), stdout
    finally:
        worker.stop()
        head.stop()
    rows = rows_of(str(out))
    for copy in ("a", "b", "c"):
        got = by_clip([r for r in rows if r["uri"].startswith(str(clips / copy))],
                      str(clips / copy))  # fmt: skip
        assert_same_scores(got, clean)
    assert len(rows) == 27, len(rows)
    assert_nothing_to_clean(out)
    assert on_worker  # (the kill hit running actors, not an idle node)


def _dead_nodes(dashboard: str) -> list[Any]:
    from ray.util.state import list_nodes

    return [n for n in list_nodes(address=dashboard) if n.state == "DEAD"]
