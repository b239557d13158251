"""Detail tables (the per-face table) beside a main table, without Ray: each detail chunk goes
with its main chunk, and after a writer dies at either point between the two publishes the
next run leaves every clip's details in the table exactly once. The jobs' own runs (local
and killed drivers) are in test_scoring.py and test_exactly_once.py."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from emotiw import modalities
from emotiw.io.storage import arrow_filesystem
from emotiw.jobs.pipeline import Committed
from emotiw.modalities.base import Column
from emotiw.tables.chunks import ChunkWriter, data_files, read, recover
from emotiw.tables.details import detail_root, paired
from emotiw.tables.schema import detail_schema, details_column, with_details


@dataclass(frozen=True)
class Spec:
    """What the detail tables need of a modality (the face modality's real one is checked
    below)."""

    name: str = "thing"
    details_table: str = "things"
    details: tuple[Column, ...] = (Column("slot", "int16", "frame slot"),
                                   Column("score", "float32", "a value"))  # fmt: skip
    stats: tuple = ()


SPEC = Spec()
MAIN = pa.schema([("uri", pa.string()), ("video_id", pa.string()), ("etag", pa.string()),
                  ("run_id", pa.string()), ("model_uri", pa.string()),
                  ("scored_at", pa.timestamp("us", tz="UTC"))])  # fmt: skip
FACES = {0: 0, 1: 2, 2: 1, 3: 3, 4: 0, 5: 2, 6: 1}  # clip -> details


def block(clips: list[int], run: str) -> pa.Table:
    """Main rows with the in-flight detail column, as the model actors return them."""
    schema = with_details(MAIN, [SPEC])
    return pa.Table.from_pylist(
        [{"uri": f"s3://in/c{i}.mp4", "video_id": f"c{i}", "etag": "e", "run_id": run,
          "model_uri": "models:/m/1", "scored_at": 1_790_000_000_000_000 + i,
          details_column(SPEC.name): [{"slot": k, "score": i + k / 10} for k in range(FACES[i])]}
         for i in clips], schema=schema)  # fmt: skip


@pytest.fixture(params=["local", "s3"])
def roots(request, tmp_path, s3_storage) -> tuple[str, str, object]:
    if request.param == "local":
        return str(tmp_path / "scores"), str(tmp_path / "scores-details"), None
    bucket = request.getfixturevalue("s3_bucket")
    return f"{bucket}/scores", f"{bucket}/scores-details", s3_storage


def writer(roots, run: str, commit_every: int = 2) -> tuple:
    url, details, storage = roots
    fs, root = arrow_filesystem(url, storage)
    committed = Committed()
    recover(fs, root, run)
    main = ChunkWriter(fs, root, run, MAIN, commit_every, 600, partition=lambda: "d=1")
    return paired(main, [SPEC], details, storage, "scored_at", committed), committed


def tables(roots) -> tuple[pa.Table, pa.Table, list[str], list[str]]:
    url, details, storage = roots
    fs, root = arrow_filesystem(url, storage)
    dfs, droot = arrow_filesystem(f"{details}/things", storage)
    names = [f[len(root.rstrip("/")) + 1 :] for f in data_files(fs, root)]
    dnames = [f[len(droot.rstrip("/")) + 1 :] for f in data_files(dfs, droot)]
    return read(fs, root, MAIN), read(dfs, droot, detail_schema(SPEC)), names, dnames


def assert_exactly_once(roots, clips: list[int]) -> None:
    """Every main row once; its details once, under its run id; no detail without a row."""
    main, details, names, dnames = tables(roots)
    assert sorted(main["uri"].to_pylist()) == sorted(f"s3://in/c{i}.mp4" for i in clips)
    keys = set(zip(main["uri"].to_pylist(), main["run_id"].to_pylist(), strict=True))
    got = Counter(zip(details["uri"].to_pylist(), details["run_id"].to_pylist(), strict=True))
    assert set(got) <= keys
    assert {u: n for (u, _), n in got.items()} == {
        f"s3://in/c{i}.mp4": FACES[i] for i in clips if FACES[i]
    }
    assert set(dnames) <= set(names)  # each detail chunk has its main chunk


def test_detail_chunks_follow_their_main_chunks(roots) -> None:
    out, _ = writer(roots, "run-1", commit_every=3)
    out.write(block([0, 1], "run-1"))
    out.write(block([2, 3, 4, 5, 6], "run-1"))  # split across main chunks 0, 1 and 2
    out.close()
    assert out.detail_counts() == {"things": sum(FACES.values())}
    _, details, names, dnames = tables(roots)
    assert dnames == names  # chunk 2 (c6) has details too; every name matches
    url, droot, storage = roots
    dfs, dpath = arrow_filesystem(f"{droot}/things", storage)
    mfs, mpath = arrow_filesystem(url, storage)
    for name in names:  # the details of a chunk are those of the clips in it, and only those
        clips = set(pq.read_table(f"{mpath.rstrip('/')}/{name}", filesystem=mfs)["uri"].to_pylist())
        inside = set(
            pq.read_table(f"{dpath.rstrip('/')}/{name}", filesystem=dfs)["uri"].to_pylist()
        )
        assert inside == {u for u in clips if FACES[int(u[9:-4])]}
    row = details.filter(pa.compute.equal(details["uri"], "s3://in/c3.mp4")).to_pylist()
    assert [(r["slot"], r["score"]) for r in row] == [
        (0, 3.0),
        (1, pytest.approx(3.1)),
        (2, pytest.approx(3.2)),
    ]
    assert {r["model_uri"] for r in row} == {"models:/m/1"} and row[0]["made_at"] is not None
    assert_exactly_once(roots, list(FACES))


class Died(BaseException):
    """A driver dying at a given point (nothing after it runs: no abort, no cleanup)."""


def test_a_writer_dying_between_the_two_publishes_leaves_no_orphan(roots) -> None:
    # dies after publishing the details of chunk 1, before its main chunk is closed
    out, _ = writer(roots, "dead-1")
    publish = out._publish

    def die_after_details(relative: str) -> None:
        publish(relative)
        if relative.endswith("-00001.parquet"):
            raise Died

    out.main.before_close = die_after_details
    with pytest.raises(Died):
        out.write(block([0, 1, 2, 3], "dead-1"))
    assert len(tables(roots)[3]) == 2  # chunk 1's details are out, its main chunk is not
    # the next run prunes the orphan, then writes the rest; each clip's details once
    out, committed = writer(roots, "run-2")
    assert "1 orphan chunk(s)" in committed.recovery
    out.write(block([2, 3, 4, 5, 6], "run-2"))
    out.close()
    assert_exactly_once(roots, list(FACES))


def test_a_writer_dying_after_closing_its_chunk_keeps_both(roots) -> None:
    """Dies after the main chunk is closed, before it is moved in: a local run's chunk is
    then adopted from staging with its details; on S3 nothing of the main chunk landed, so
    its details are the orphan."""
    out, _ = writer(roots, "dead-1")
    main = out.main

    def die() -> None:
        if len(main.committed) == 1:
            raise Died

    main.before_commit = die  # the detail writers keep the original check
    with pytest.raises(Died):
        out.write(block([0, 1, 2, 3], "dead-1"))
    url, _, storage = roots
    fs, root = arrow_filesystem(url, storage)
    adopted = recover(fs, root, "run-2").adopted
    assert adopted == (1 if storage is None else 0)
    out, committed = writer(roots, "run-2")
    assert f"{1 - adopted} orphan chunk(s)" in committed.recovery
    done = {0, 1, 2, 3} if adopted else {0, 1}
    out.write(block([i for i in FACES if i not in done], "run-2"))
    out.close()
    assert_exactly_once(roots, list(FACES))


def test_the_face_table_schema_is_declared_once_and_documented() -> None:
    from helpers import ROOT

    [face] = [s for s in modalities.specs() if s.details_table]
    schema = detail_schema(face)
    assert face.details_table == "faces"
    assert {"uri", "run_id", "slot", "frame_index", "timestamp_s", "fps", "top", "left",
            "prob_happy", "prob_neutral", "model_uri"} <= set(schema.names)  # fmt: skip
    text = (ROOT / "docs" / "reference" / "tables.md").read_text()
    section = text[text.index("## Detail table `faces`") :]
    documented = [line.split("`")[1] for line in section.splitlines() if line.startswith("| `")]
    assert documented == schema.names and "Partitioned by `scored_date`" in section


def test_detail_root() -> None:
    assert detail_root("auto", "s3://b/scores/") == "s3://b/scores-details"
    assert detail_root("auto", "s3://b") is None  # a bucket root has no sibling
    assert detail_root("none", "out/scores") is None
    assert detail_root("s3://b/faces/", "out/scores") == "s3://b/faces"
