"""Videos of any length, the pure parts: how a video is cut into windows, decoding one window
(seek, frames from its start, its audio only; a clip decoded exactly as before), reading the
duration from the header, a video's row from its windows' rows, and how work items (clips and
windows alike) are put into input blocks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from emotiw.core.config import MediaConfig
from emotiw.core.errors import DecodeError
from emotiw.io import media
from emotiw.io.windows import Window, WindowConfig, plan, probe
from emotiw.jobs.pools import _block_size
from emotiw.tables.keys import done_keys, window_key
from emotiw.tables.timeline import video_row
from helpers import frame_colour, index_from_pixel, write_clip

MEDIA = MediaConfig()


@pytest.fixture(scope="module")
def long_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """60 s at 25 fps, every frame numbered by its colour, a tone throughout."""
    return write_clip(tmp_path_factory.mktemp("long") / "long.mkv", n_frames=1500, size=(64, 48))


def test_a_clip_is_one_window_and_a_long_video_many() -> None:
    assert plan(5.0, WindowConfig(), MEDIA) == [Window(0, 0.0, 5.0, 1, 5.0)]
    assert plan(10.0, WindowConfig(), MEDIA)[0].whole  # up to max_duration_s: a clip
    assert plan(0.0, WindowConfig(), MEDIA) == [Window(0, 0.0, MEDIA.max_duration_s, 1, 0.0)]
    windows = plan(60.0, WindowConfig(), MEDIA)
    assert [(w.start_s, w.end_s) for w in windows] == [(5.0 * i, 5.0 * i + 5) for i in range(12)]
    assert {w.n_windows for w in windows} == {12} and not windows[0].whole
    # a short tail is its own (shorter) window; a sliver under half a second is left out
    assert plan(62.0, WindowConfig(), MEDIA)[-1] == Window(12, 60.0, 62.0, 13, 62.0)
    assert len(plan(60.3, WindowConfig(), MEDIA)) == 12
    overlap = plan(60.0, WindowConfig(window_s=5, hop_s=2.5), MEDIA)
    assert len(overlap) == 24 and overlap[1].start_s == 2.5 and overlap[-1].end_s == 60.0
    capped = plan(3600.0, WindowConfig(max_video_s=30), MEDIA)
    assert len(capped) == 6 and capped[-1].end_s == 30.0
    with pytest.raises(ValueError, match="window_s"):
        WindowConfig(window_s=0.2)


def test_probe_reads_the_duration_from_the_header(long_clip: Path, tmp_path: Path) -> None:
    assert probe(str(long_clip)) == pytest.approx(60.0, abs=0.05)
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x17" * 500)
    with pytest.raises(DecodeError) as caught:
        probe(str(bad))
    assert caught.value.reason == "not_media"


def test_a_clip_decodes_bit_identically_as_window_zero(long_clip: Path) -> None:
    """The whole-clip decode and window 0 spanning max_duration_s are the same arrays: the
    windowed code path changes nothing for a clip."""
    whole = media.decode(str(long_clip), MEDIA)
    window = media.decode(str(long_clip), MEDIA, window=Window(0, 0.0, 10.0, 1, 60.0))
    for name in ("frames", "frame_mask", "frame_indices", "audio"):
        assert np.array_equal(getattr(whole, name), getattr(window, name)), name
    assert whole.meta == window.meta


def test_a_window_is_sampled_from_its_own_start(long_clip: Path) -> None:
    clip = media.decode(str(long_clip), MEDIA, window=Window(8, 40.0, 45.0, 12, 60.0))
    shown = [index_from_pixel(f[10, 10]) for f in clip.frames]
    assert shown == [1000 + 10 * k for k in range(12)]  # frame 1000 is at 40 s
    assert list(clip.frame_indices) == [10 * k for k in range(12)]  # counted in the window
    assert clip.audio_duration_s == pytest.approx(5.0, abs=0.01)
    # decoding started at the keyframe before the window, not at the file's start
    assert clip.meta.frames_decoded < 200
    last = media.decode(str(long_clip), MEDIA, window=Window(11, 57.0, 60.0, 12, 60.0))
    assert last.n_valid_frames == 8 and last.audio_duration_s == pytest.approx(3.0, abs=0.01)


def test_a_60_fps_window_takes_every_tenth_frame_as_a_clip_does(tmp_path: Path) -> None:
    fast = write_clip(tmp_path / "fast.mkv", n_frames=1200, fps=60, size=(64, 48))
    clip = media.decode(str(fast), MEDIA, window=Window(2, 10.0, 15.0, 4, 20.0))
    shown = [index_from_pixel(f[10, 10]) for f in clip.frames]
    assert shown == [600 + 10 * k for k in range(12)]  # 1.8 s of the window's 5
    assert clip.audio_duration_s == pytest.approx(5.0, abs=0.01)


def test_a_variable_frame_rate_window_samples_by_time(tmp_path: Path) -> None:
    """A phone-style variable frame rate (25 fps, then 7, then 2): slot k of a window takes
    the first frame shown in [k, k + 1) x 10 frame periods at the stream's nominal rate
    (0.4 s at 25 fps) after the window's start; a stretch slower than that leaves slots empty
    (masked, as a dropped frame is), never shifts the later ones."""
    from fractions import Fraction

    import av

    times = [i * 0.04 for i in range(500)] + [20 + i / 7 for i in range(140)]
    times += [40 + i * 0.5 for i in range(40)]
    path = tmp_path / "vfr.mkv"
    with av.open(str(path), "w", format="matroska") as out:
        stream = out.add_stream("ffv1", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "bgr0"
        stream.time_base = Fraction(1, 1000)
        for i, t in enumerate(times):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), frame_colour(i), np.uint8))
            frame.pts, frame.time_base = round(t * 1000), Fraction(1, 1000)
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    windows = plan(probe(str(path)), WindowConfig(), MEDIA)
    assert len(windows) == 12
    for window in windows:
        clip = media.decode(str(path), MEDIA, window=window)
        for k in range(12):
            start = window.start_s + 0.4 * k
            due = [i for i, t in enumerate(times) if start - 1e-6 <= t < start + 0.4 - 1e-6]
            assert clip.frame_mask[k] == bool(due), (window.index, k)
            if due:
                assert index_from_pixel(clip.frames[k][10, 10]) == due[0], (window.index, k)
    assert clip.n_valid_frames == 10  # 2 fps: 2 of the 12 slots (0.4 s each) hold no frame


def test_timestamps_that_do_not_start_at_zero(tmp_path: Path) -> None:
    """An MPEG-TS segment cut from a broadcast 100 s in (and an MP4 the same): times count
    from the video's first timestamp, so the clip and every window decode their own frames;
    TS has no index, so a window's seek steps back to a keyframe (here 10 s apart)."""
    from fractions import Fraction

    import av

    for name in ("segment.ts", "segment.mp4"):
        path = tmp_path / name
        with av.open(str(path), "w") as out:
            video = out.add_stream("libx264", rate=25, options={"qp": "0"})  # GOP 250
            video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
            sound = out.add_stream("aac", rate=48_000, layout="mono")
            for i in range(750):
                frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), frame_colour(i), np.uint8))
                frame.pts, frame.time_base = 2500 + i, Fraction(1, 25)
                out.mux(video.encode(frame))
                level = np.full((1, 1920), 0.1, np.float32)
                tone = av.AudioFrame.from_ndarray(level, "fltp", "mono")
                tone.sample_rate, tone.pts = 48_000, 4_800_000 + 1920 * i
                out.mux(sound.encode(tone))
            out.mux(video.encode(None))
            out.mux(sound.encode(None))
        clip = media.decode(str(path), MEDIA)
        assert clip.n_valid_frames == 12 and clip.audio_duration_s == pytest.approx(10, abs=0.05)
        windows = plan(probe(str(path)), WindowConfig(), MEDIA)
        assert len(windows) == 6, name
        for w in windows:
            got = media.decode(str(path), MEDIA, window=w)
            shown = [index_from_pixel(f[10, 10]) for f in got.frames]
            want = [125 * w.index + 10 * k for k in range(12)]
            off = (np.subtract(shown, want) + 128) % 256 - 128  # YUV rounds the colour a little
            assert np.abs(off).max() <= 1, (name, w.index, shown)
            assert got.audio_duration_s == pytest.approx(5, abs=0.05), (name, w.index)


def test_a_window_past_the_data_is_an_error_not_a_hang(long_clip: Path) -> None:
    with pytest.raises(DecodeError) as caught:
        media.decode(str(long_clip), MEDIA, window=Window(30, 150.0, 155.0, 40, 200.0))
    assert caught.value.reason == "no_frames"


def _window(i: int, start: float, end: float, probs: list[float] | None, **extra) -> dict:
    row = {"video_id": "v", "uri": "s3://b/v.mp4", "etag": "e", "size_bytes": 9,
           "window_index": i, "start_s": start, "end_s": end, "n_windows": 3,
           "video_duration_s": 12.0, "duration_s": 12.0, "n_frames": 12, "n_faces": 2,
           "has_audio": True, "error": None, "error_reason": None, "retryable": None,
           "attempts": 1, "run_id": "r", "scored_at": i, "content_sha256": None,
           "predicted": None, "face_predicted": None}  # fmt: skip
    for prefix in ("", "face_"):
        p = probs if prefix == "" else (None if probs is None else probs[::-1])
        for c, v in zip(("positive", "neutral", "negative"), p or [None] * 3, strict=True):
            row[f"{prefix}prob_{c}"] = v
    row.update(extra)
    return row


STATS = {"n_faces": "int32", "has_audio": "bool"}


def test_a_one_window_video_keeps_its_window_row_exactly() -> None:
    one = _window(0, 0.0, 5.0, [0.2, 0.3, 0.5], n_windows=1, video_duration_s=5.0)
    row = video_row([one], STATS, 3600)
    assert {k: row[k] for k in one if k not in ("window_index", "start_s", "end_s",
                                                "video_duration_s")} == {
        k: v for k, v in one.items() if k not in ("window_index", "start_s", "end_s",
                                                  "video_duration_s")}  # fmt: skip
    assert (row["n_windows"], row["coverage"], row["coverage_note"]) == (1, 1.0, None)
    assert "window_index" not in row


def test_a_video_row_is_the_duration_weighted_mean_of_its_windows() -> None:
    windows = [
        _window(0, 0.0, 5.0, [0.8, 0.1, 0.1]),
        _window(1, 5.0, 10.0, [0.1, 0.1, 0.8]),
        _window(2, 10.0, 12.0, [0.1, 0.8, 0.1], face_prob_positive=None),
    ]
    windows[2].update(face_prob_neutral=None, face_prob_negative=None, has_audio=False)
    row = video_row(windows[::-1], STATS, 3600)
    assert row["prob_positive"] == pytest.approx((0.8 * 5 + 0.1 * 5 + 0.1 * 2) / 12)
    assert row["prob_neutral"] == pytest.approx((0.1 * 5 + 0.1 * 5 + 0.8 * 2) / 12)
    assert row["predicted"] == "positive"
    # a head without input in a window is averaged over the windows where it had some
    assert row["face_prob_negative"] == pytest.approx((0.8 * 5 + 0.1 * 5) / 10)
    assert (row["n_faces"], row["has_audio"], row["n_frames"]) == (6, True, 12)
    assert (row["n_windows"], row["coverage"], row["duration_s"]) == (3, 1.0, 12.0)
    assert (row["most_positive_window"], row["most_negative_start_s"]) == (0, 5.0)
    assert row["error"] is None and row["content_sha256"] is None


def test_failed_windows_lower_coverage_and_say_why() -> None:
    windows = [
        _window(0, 0.0, 5.0, [0.8, 0.1, 0.1]),
        _window(1, 5.0, 10.0, None, error="no_frames: cut", error_reason="no_frames"),
        _window(2, 10.0, 12.0, None, error="io: reset", error_reason="io", retryable=True),
    ]
    row = video_row(windows, STATS, 3600)
    assert row["prob_positive"] == pytest.approx(0.8) and row["error"] is None
    assert row["coverage"] == pytest.approx(5 / 12)
    assert row["coverage_note"] == "2 of 3 windows failed (io 1, no_frames 1)"
    assert row["retryable"] is True  # the next run retries the io window, then rewrites it
    failed = video_row(windows[1:], STATS, 3600)
    assert failed["error_reason"] == "no_frames" and failed["predicted"] is None
    assert failed["coverage"] == 0.0 and failed["retryable"] is True


def test_a_video_past_the_cap_says_how_much_was_not_scored() -> None:
    windows = [_window(i, 5.0 * i, 5.0 * i + 5, [0.4, 0.3, 0.3], n_windows=2,
                       video_duration_s=7200.0) for i in range(2)]  # fmt: skip
    row = video_row(windows, STATS, 10.0)
    assert row["coverage"] == pytest.approx(10 / 7200)
    assert row["coverage_note"] == "7190 s past --max-video-s 10 not scored"


def test_the_windows_index_keys_each_window(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq
    from pyarrow import fs as pafs

    from emotiw import modalities
    from emotiw.tables.schema import window_schema

    schema = window_schema(modalities.specs())
    rows = [_window(0, 0, 5, [0.8, 0.1, 0.1]),
            _window(1, 5, 10, None, error="io: x", error_reason="io", retryable=True)]  # fmt: skip
    for r in rows:
        r["scored_at"] = None
    table = pa.Table.from_pylist([{k: r.get(k) for k in schema.names} for r in rows], schema)
    pq.write_table(table, tmp_path / "part-a-00000.parquet")
    index = done_keys(pafs.LocalFileSystem(), str(tmp_path), schema, windows=True)
    assert index.done(window_key("s3://b/v.mp4", 0), "e")
    assert not index.done(window_key("s3://b/v.mp4", 1), "e")  # transient: retried
    assert not index.done(window_key("s3://b/v.mp4", 0), "other etag")
    # a video the scores table has a row for: its windows are not indexed (8 bytes each)
    from emotiw.tables.keys import KeyIndex, _key

    finished = KeyIndex(np.array([_key("s3://b/v.mp4", "e")], np.uint64), np.zeros(0, np.uint64))
    fs, root = pafs.LocalFileSystem(), str(tmp_path)
    assert len(done_keys(fs, root, schema, windows=True, videos_done=finished)) == 0
    assert len(done_keys(fs, root, schema, windows=True, videos_done=KeyIndex.empty())) == 1
    other = done_keys(fs, root, schema, windows=True, videos_done=finished, model_uri="m:/x/2")
    assert len(other) == 0  # another model's run: every batch filtered empty
    # a video whose every window is final but which has no row (a run died in between)
    from emotiw.tables.keys import complete_videos

    assert complete_videos(index) == []  # window 1 only failed transiently; window 2 missing
    rest = [_window(1, 5, 10, [0.1, 0.1, 0.8]), _window(2, 10, 12, [0.1, 0.8, 0.1])]
    rest = [{k: r.get(k) for k in schema.names} for r in rest]
    pq.write_table(pa.Table.from_pylist(rest, schema), tmp_path / "part-b-00000.parquet")
    index = done_keys(fs, root, schema, windows=True, videos_done=KeyIndex.empty())
    assert index.videos == {("s3://b/v.mp4", "e"): 3}
    assert complete_videos(index) == [("s3://b/v.mp4", "e")]
    assert complete_videos(done_keys(fs, root, schema, windows=True, videos_done=finished)) == []


def test_windows_at_the_edges_of_a_recording(tmp_path: Path) -> None:
    """Audio that stops before the video: later windows have frames and no sound. Video that
    stops before the audio (the header says the longer): later windows fail `no_frames`.
    A rotated phone video: every window is stood upright, as a clip is."""
    import av

    quiet = write_clip(tmp_path / "quiet.mkv", n_frames=1500, size=(64, 48), audio_s=20)
    late = media.decode(str(quiet), MEDIA, window=Window(8, 40.0, 45.0, 12, 60.0))
    assert late.n_valid_frames == 12 and not late.meta.has_audio and len(late.audio) == 0
    talk = write_clip(tmp_path / "talk.mkv", n_frames=500, size=(64, 48), audio_s=60)
    assert probe(str(talk)) == pytest.approx(60.0, abs=0.1)
    with pytest.raises(DecodeError) as caught:
        media.decode(str(talk), MEDIA, window=Window(8, 40.0, 45.0, 12, 60.0))
    assert caught.value.reason == "no_frames"
    path = tmp_path / "rotated.mp4"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=25, options={"qp": "0"})
        stream.width, stream.height, stream.pix_fmt = 64, 36, "yuv444p"
        stream.set_display_rotation(-90)
        for _ in range(25 * 12):
            coded = np.zeros((36, 64, 3), np.uint8)
            out.mux(stream.encode(av.VideoFrame.from_ndarray(coded, format="rgb24")))
        out.mux(stream.encode(None))
    window = plan(probe(str(path)), WindowConfig(), MEDIA)[1]
    assert media.decode(str(path), MEDIA, window=window).frames.shape[1:3] == (523, 294)


def test_an_actor_keeps_a_long_video_open_from_window_to_window(long_clip, tmp_path) -> None:
    """Opening reads and parses the container's index (it grows with the video), so the
    windows of one video reuse the open file, in any order; a rewritten file, another file or
    a failure opens afresh."""
    later = media.decode(str(long_clip), MEDIA, window=Window(1, 5.0, 10.0, 12, 60.0))
    kept = media._KEPT["container"]
    first = media.decode(str(long_clip), MEDIA, window=Window(0, 0.0, 5.0, 12, 60.0))
    assert media._KEPT["container"] is kept  # and seeking back works
    assert [index_from_pixel(c.frames[0][10, 10]) for c in (first, later)] == [0, 125]
    copy = write_clip(tmp_path / "copy.mkv", n_frames=300, size=(64, 48))
    media.decode(str(copy), MEDIA, window=Window(1, 5.0, 10.0, 2, 12.0))
    assert media._KEPT["container"] is not kept
    reopened = media._KEPT["container"]
    write_clip(copy, n_frames=400, size=(64, 48))  # rewritten in place
    media.decode(str(copy), MEDIA, window=Window(1, 5.0, 10.0, 2, 16.0))
    assert media._KEPT["container"] is not reopened
    with pytest.raises(DecodeError):
        media.decode(str(copy), MEDIA, window=Window(9, 150.0, 155.0, 40, 200.0))
    assert not media._KEPT  # closed after the failure


def test_input_blocks_grow_with_the_run_up_to_the_cap() -> None:
    """Blocks of one item while the pool fills, then a quarter of an actor's share of the
    items so far, capped: the tasks of a large run grow as items / cap (a 10-million-window
    run: ~100,000 tasks), and no block is more than a quarter of an actor's earlier share."""

    def blocks(n: int, pool: int, cap: int = 100) -> list[int]:
        sizes, placed = [], 0
        while placed < n:
            sizes.append(min(_block_size(placed, pool, cap), n - placed))
            placed += sizes[-1]
        return sizes

    small = blocks(240, pool=2)
    assert small[:16] == [1] * 16 and len(small) == 41 and max(small) == 25
    assert all(s <= max(1, sum(small[:i]) / 8) for i, s in enumerate(small))
    for n in (100_000, 10_000_000):
        assert n // 100 <= len(blocks(n, pool=16)) <= n // 100 + 4 * 16 * 6
    assert blocks(5, pool=1000) == [1] * 5
