"""Videos of any length through `emotiw score`, locally and on the S3 test server: a long
video becomes a timeline in the windows table and one row in the scores table aggregated
from it; a clip is scored as it always was; a video cut in the middle keeps its windows
before the cut and says how much it covers; a rerun scores nothing twice."""

from __future__ import annotations

import shutil
from pathlib import Path

import duckdb
import numpy as np
import pytest

from emotiw.io.corpus import write_sample_corpus
from helpers import run_here, smoke_configs, write_clip

PROBS = ["prob_positive", "prob_neutral", "prob_negative"]


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A sample clip, a 60 s video with a tone, and the same video cut after ~half its bytes
    (its header still says 60 s)."""
    out = tmp_path_factory.mktemp("long") / "videos"
    write_sample_corpus(str(out), 1, seed=5)
    long = write_clip(out / "long.mkv", n_frames=1500, size=(160, 120))
    data = long.read_bytes()
    (out / "cut.mkv").write_bytes(data[: len(data) // 2])
    return out


def _query(sql: str) -> list[tuple]:
    return duckdb.sql(sql).fetchall()


def _tables(where: str, storage: object | None) -> tuple[str, str, str]:
    """DuckDB sources of the scores, windows and faces tables under `where`: read_parquet()
    over local files; the S3 tables read through pyarrow (DuckDB's httpfs is not installed
    offline) and registered as views."""
    names = ("scores", "scores-details/windows", "scores-details/faces")
    if storage is None:
        return tuple(  # type: ignore[return-value]
            f"read_parquet('{where}/{n}/*/*.parquet', hive_partitioning = true)" for n in names
        )
    import pyarrow.dataset as ds

    from emotiw.io.storage import arrow_filesystem

    views = []
    for n in names:
        fs, root = arrow_filesystem(f"{where}/{n}", storage)
        view = "s3_" + n.split("/")[-1]
        duckdb.register(view, ds.dataset(root, filesystem=fs, partitioning="hive").to_table())
        views.append(view)
    return tuple(views)  # type: ignore[return-value]


@pytest.mark.e2e
@pytest.mark.parametrize("where", ["local", "s3"])
def test_a_long_video_is_a_timeline_and_one_row(
    where, videos, smoke_package, tmp_path, s3_bucket, s3_storage, s3_env
) -> None:
    storage = None
    if where == "s3":
        from emotiw.io.storage import fsspec_filesystem

        fs, _ = fsspec_filesystem(s3_bucket, s3_storage)
        for f in videos.iterdir():
            fs.put(str(f), f"{s3_bucket.removeprefix('s3://')}/in/{f.name}")
        source, root, env, storage = f"{s3_bucket}/in", s3_bucket, s3_env, s3_storage
    else:
        shutil.copytree(videos, tmp_path / "in")  # a copy: this test rewrites a video
        source, root, env = str(tmp_path / "in"), str(tmp_path), None
    args = ("--input", source, "--output", f"{root}/scores", "--model", str(smoke_package))
    out = run_here("score", *args, env=env).stdout
    assert "3 clips listed, 0 already scored, 3 scored, 0 errors" in out, out
    scores, windows, faces = _tables(root, storage)

    rows = {r[0]: r[1:] for r in _query(
        f"SELECT video_id, n_windows, coverage, coverage_note, duration_s, content_sha256 "
        f"FROM {scores}")}  # fmt: skip
    assert rows["clip_0000"][:3] == (1, 1.0, None) and rows["clip_0000"][4]
    assert rows["long"][:4] == (12, 1.0, None, 60.0) and rows["long"][4] is None
    # cut in the middle: the windows after the cut are error rows, the row says what it covers
    n, coverage, note, duration, _ = rows["cut"]
    assert n == 12 and duration == 60.0 and 0 < coverage < 1, rows["cut"]
    assert note.startswith(f"{round((1 - coverage) * 12)} of 12 windows failed (no_frames")
    timeline = _query(f"SELECT video_id, window_index, start_s, end_s, error IS NULL FROM "
                      f"{windows} ORDER BY video_id, window_index")  # fmt: skip
    assert [t[1:4] for t in timeline if t[0] == "long"] == [
        (i, 5.0 * i, 5.0 * i + 5) for i in range(12)]  # fmt: skip
    cut_ok = [t[4] for t in timeline if t[0] == "cut"]
    assert cut_ok == sorted(cut_ok, reverse=True) and sum(cut_ok) == round(coverage * 12)
    assert [t[1:] for t in timeline if t[0] == "clip_0000"] == [(0, 0.0, 5.0, True)]

    # the video row is the duration-weighted mean of its windows (the documented query)
    for video in ("long", "cut"):
        [(mean, row)] = _query(
            f"SELECT w.p, s.prob_positive FROM (SELECT sum(prob_positive * (end_s - start_s)) "
            f"/ sum(end_s - start_s) AS p FROM {windows} WHERE video_id = '{video}' AND error "
            f"IS NULL) w, {scores} s WHERE s.video_id = '{video}'")  # fmt: skip
        assert mean == pytest.approx(row, abs=1e-6)
    # the clip's row is what scoring the clip on its own gives
    clip_row = _query(f"SELECT {', '.join(PROBS)} FROM {scores} WHERE video_id = 'clip_0000'")
    assert np.allclose(clip_row[0], _alone(videos / "clip_0000.mp4", smoke_package), atol=1e-5)
    # each face of the clip once, in its window
    [(n_faces, in_window_0)] = _query(
        f"SELECT count(*), bool_and(window_index = 0) FROM {faces} WHERE video_id = 'clip_0000'"
    )
    [(want,)] = _query(f"SELECT n_faces FROM {scores} WHERE video_id = 'clip_0000'")
    assert n_faces == want > 0 and in_window_0

    again = run_here("score", *args, env=env).stdout
    assert "3 clips listed, 3 already scored, 0 scored" in again

    # the long video rewritten (40 s now, a new etag): scored whole again, by this run alone
    changed = write_clip(tmp_path / "long40.mkv", n_frames=1000, size=(160, 120))
    if storage is None:
        shutil.copy(changed, tmp_path / "in" / "long.mkv")
    else:
        fs.put(str(changed), f"{s3_bucket.removeprefix('s3://')}/in/long.mkv")
    third = run_here("score", *args, env=env).stdout
    assert "3 clips listed, 2 already scored, 1 scored, 0 errors" in third, third
    [(n, runs, windows)] = _query(
        f"SELECT count(*), count(DISTINCT run_id), max(n_windows) FROM {_tables(root, storage)[1]} "
        f"WHERE video_id = 'long' AND n_windows = 8")  # fmt: skip
    assert (n, runs, windows) == (8, 1, 8)
    [(latest,)] = _query(f"SELECT arg_max(n_windows, scored_at) FROM {_tables(root, storage)[0]} "
                         f"WHERE video_id = 'long'")  # fmt: skip
    assert latest == 8

    # look at it: the cut video's timeline as a PNG, the table's report as one HTML page
    cut = f"{source}/cut.mkv"
    png, page = f"{root}/cut.png", f"{root}/report.html"
    looked = run_here("timeline", "--output", f"{root}/scores", "--uri", cut, "--png", png,
                      env=env).stdout  # fmt: skip
    assert f"{cut}: 12 windows ({12 - sum(cut_ok)} errors) -> {png}" in looked
    report = run_here("report", "--output", f"{root}/scores", "--html", page, env=env).stdout
    assert f"3 videos (3 scored) -> {page}" in report
    if storage is None:
        assert Path(png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        text = Path(page).read_text()
        assert text.count("<img ") == 6 and "data:image/png;base64," in text  # 3 + 3 videos
        assert "<script" not in text and "http" not in text.replace(str(root), "")


def _alone(path: Path, package: Path) -> list[float]:
    """A clip's fused probabilities scored in this process, outside any job."""
    from emotiw.models.features import ClipFeatureExtractor, rows_to_table
    from emotiw.models.inference import ClipScorer, ModelRef

    extractor = ClipFeatureExtractor(smoke_configs(), defer=True)
    row = extractor(str(path), path.stem, path.read_bytes(), None, "run")
    scorer = ClipScorer(package, ModelRef("pkg", "pkg", None), device="cpu")
    out = scorer(rows_to_table([row]), "run").to_pylist()[0]
    return [out[c] for c in PROBS]


@pytest.mark.e2e
def test_tables_written_before_windows_stay_readable(videos, smoke_package, tmp_path) -> None:
    """A table whose first chunks were written before videos had windows (no window columns
    in the scores or faces files, no windows table, the faces paired with the scores chunk):
    the next run keeps the old faces, skips the old clip and scores the new video, and every
    cookbook query and the schema-given reader read the mix (old rows' new columns: null)."""
    import pyarrow.parquet as pq

    from emotiw import modalities
    from emotiw.io.storage import arrow_filesystem
    from emotiw.tables.chunks import read
    from emotiw.tables.schema import score_schema
    from helpers import run_cookbook

    src, out = tmp_path / "in", tmp_path / "scores"
    src.mkdir()
    (src / "clip_0000.mp4").write_bytes((videos / "clip_0000.mp4").read_bytes())
    args = ("--input", str(src), "--output", str(out), "--model", str(smoke_package))
    run_here("score", *args)
    details = tmp_path / "scores-details"
    new = {"n_windows", "coverage", "coverage_note", "most_positive_window",
           "most_positive_start_s", "most_negative_window", "most_negative_start_s"}  # fmt: skip
    for folder, drop in ((out, new), (details / "faces", {"window_index"})):
        [chunk] = folder.rglob("*.parquet")
        table = pq.read_table(chunk)
        pq.write_table(table.drop_columns([c for c in table.column_names if c in drop]), chunk)
    [old_faces] = (details / "faces").rglob("*.parquet")
    for f in (details / "windows").rglob("*"):
        if f.is_file():
            f.unlink()

    (src / "long.mkv").write_bytes((videos / "long.mkv").read_bytes())
    second = run_here("score", *args).stdout
    assert "2 clips listed, 1 already scored, 1 scored, 0 errors" in second
    assert "0 orphan chunk(s)" in second and old_faces.exists()
    book = run_cookbook(out)
    assert len(book["most negative clips this week (each clip's current score)"]) == 2
    minutes = book["the 20 most negative minutes in the corpus (windows weighted by their length)"]
    assert [(Path(uri).name, minute) for uri, minute, _ in minutes] == [("long.mkv", 0)]
    assert book["a video's timeline: each window's current score, in order (windows table)"] == []
    fs, root = arrow_filesystem(str(out))
    rows = {Path(r["uri"]).name: r for r in read(fs, root, score_schema(modalities.specs()))
            .to_pylist()}  # fmt: skip
    assert rows["clip_0000.mp4"]["n_windows"] is None and rows["long.mkv"]["n_windows"] == 12


@pytest.mark.nightly
@pytest.mark.timeout(900)
def test_the_run_report_shows_its_plots_in_a_real_browser(videos, smoke_package, tmp_path) -> None:
    """The report of a scored table opened in headless Chromium (Debian's, `make browser`):
    the page loads with no console message at all (it runs no script, so any is an error)
    and the screenshot shows the timelines' lines in their class colours.
    Sibling in make test: tests/test_long_videos.py::test_a_long_video_is_a_timeline_and_one_row
    (the same report written and its parts checked, without a browser)."""
    import subprocess

    from PIL import Image

    chromium = shutil.which("chromium")
    assert chromium, "no chromium: `make browser` installs Debian's"
    out, page, shot = tmp_path / "scores", tmp_path / "report.html", tmp_path / "report.png"
    run_here("score", "--input", str(videos), "--output", str(out), "--model", str(smoke_package))
    run_here("report", "--output", str(out), "--html", str(page))
    proc = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1100,2400",
         f"--screenshot={shot}", "--enable-logging=stderr", "--v=0", page.as_uri()],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    console = [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]
    assert not console, console
    image = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    print(f"screenshot: {shot}")
    for colour in ((0x2E, 0x7D, 0x32), (0xC6, 0x28, 0x28), (0x15, 0x65, 0xC0)):  # lines, faces
        near = (np.abs(image - np.array(colour)).sum(axis=-1) < 60).sum()
        assert near > 500, (colour, near)
