"""The synthetic sample corpus: format, balance, determinism, labels and visible cues."""

from __future__ import annotations

import csv
import dataclasses
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from emotiw.core.config import CorpusConfig
from emotiw.io.corpus import (
    _sample_plan,
    planted_segments,
    write_planted_video,
    write_sample_corpus,
)
from emotiw.io.labels import read_labels
from emotiw.io.media import decode


def test_files_labels_and_balance(tmp_path: Path) -> None:
    clips = write_sample_corpus(str(tmp_path), 7, seed=3)
    assert sorted(p.name for p in tmp_path.glob("*.mp4")) == [f"clip_{i:04d}.mp4" for i in range(7)]
    assert sorted(Counter(c.label for c in clips).values()) == [2, 2, 3]
    labels = read_labels(str(tmp_path / "labels.txt"))
    assert labels == {c.name: c.label for c in clips}
    rows = list(csv.DictReader((tmp_path / "cues.csv").open()))
    assert [int(r["label"]) for r in rows] == [c.label for c in clips]
    about = json.loads((tmp_path / "corpus.json").read_text())
    assert about["synthetic"] is True and "not sentiment data" in about["warning"]


def test_deterministic_by_seed(tmp_path: Path) -> None:
    a = write_sample_corpus(str(tmp_path / "a"), 3, seed=11)
    b = write_sample_corpus(str(tmp_path / "b"), 3, seed=11)
    c = write_sample_corpus(str(tmp_path / "c"), 3, seed=12)
    for x, y in zip(a, b, strict=True):
        assert Path(x.uri).read_bytes() == Path(y.uri).read_bytes()
    assert (tmp_path / "a/labels.txt").read_text() == (tmp_path / "b/labels.txt").read_text()
    assert any(
        Path(x.uri).read_bytes() != Path(z.uri).read_bytes() for x, z in zip(a, c, strict=True)
    )


def test_format_is_h264_aac_640x360_25fps_5s(sample_corpus: Path) -> None:
    meta = decode(sample_corpus / "clip_0003.mp4").meta
    assert (meta.video_codec, meta.audio_codec) == ("h264", "aac")
    assert (meta.width, meta.height, meta.fps, meta.n_frames) == (640, 360, 25.0, 125)
    assert abs(meta.duration_s - 5.0) < 0.05 and meta.has_audio


def test_cues_follow_class_at_full_strength(tmp_path: Path) -> None:
    clips = write_sample_corpus(str(tmp_path), 6, seed=5, cfg=CorpusConfig(cue_strength=1.0))
    for clip in clips:
        assert clip.scene_cue == clip.audio_cue == clip.face_cue == clip.label
    decoded = {c.label: decode(c.uri) for c in clips}
    brightness = {k: float(v.frames.mean()) for k, v in decoded.items()}
    assert brightness[0] > brightness[1] > brightness[2]  # positive bright, negative dark
    loudness = {k: float(np.sqrt(np.mean(v.audio**2))) for k, v in decoded.items()}
    assert loudness[0] > loudness[2] > loudness[1]
    pitch = {
        k: np.argmax(np.abs(np.fft.rfft(v.audio[:48_000]))) for k, v in decoded.items()
    }  # 1 s window: bin index == Hz
    assert abs(pitch[0] - 660) < 25 and abs(pitch[1] - 440) < 20 and abs(pitch[2] - 220) < 10


@pytest.mark.e2e  # ~20 s: out of make test-fast, still in make test
def test_zero_strength_decouples_cues(tmp_path: Path) -> None:
    """The plan (labels and cues) without rendering 30 clips; the plan is what the writer
    writes, clip for clip."""
    clips = _sample_plan(30, seed=1, cfg=CorpusConfig(cue_strength=0.0))
    agree = sum(c.scene_cue == c.label for c in clips)
    assert agree < 20  # chance is 1/3; 20 of 30 would be far above it
    zero = CorpusConfig(cue_strength=0.0)
    written = write_sample_corpus(str(tmp_path), 3, seed=1, cfg=zero)
    assert [dataclasses.replace(c, uri=c.name + ".mp4") for c in written] == _sample_plan(
        3, seed=1, cfg=zero
    )


def test_faces_are_real_and_big_enough(sample_corpus: Path) -> None:
    """The face stage (dlib HOG, as face_recognition uses) sees every planted face at the
    decoded 480x320 resolution, each at least 48 px."""
    import face_recognition

    rows = list(csv.DictReader((sample_corpus / "cues.csv").open()))
    for row in rows[:3]:
        clip = decode(sample_corpus / f"{row['name']}.mp4")
        for slot in (0, 6, 11):
            boxes = face_recognition.face_locations(clip.frames[slot], 1, "hog")
            assert len(boxes) == int(row["n_faces"])
            for top, right, bottom, left in boxes:
                assert right - left >= 48 and bottom - top >= 48


def test_planted_segments_are_checked_before_anything_is_written(tmp_path: Path) -> None:
    """``--planted``'s syntax, and the segments a caller passes, checked by one rule."""
    assert planted_segments("positive:40, negative:2.5") == [(0, 40.0), (2, 2.5)]
    for spec in ("", "happy:40", "positive", "positive:0", "negative:-1", "positive:inf"):
        with pytest.raises(ValueError, match="expected CLASS:SECONDS"):
            planted_segments(spec)
    for segments in ([], [(3, 10.0)], [(0, 0.0)]):
        with pytest.raises(ValueError, match="segments must be"):
            write_planted_video(str(tmp_path), segments)
    assert not list(tmp_path.iterdir())
