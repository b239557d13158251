"""config: the paper's defaults and validation with clear errors."""

from __future__ import annotations

import dataclasses

import pytest

from emotiw.core.config import (
    CLASS_NAMES,
    CLASS_TO_VGAF_LABEL,
    VGAF_LABEL_TO_CLASS,
    CorpusConfig,
    MediaConfig,
    to_dict,
)


def test_paper_defaults() -> None:
    cfg = MediaConfig()
    assert (cfg.frame_step, cfg.n_frames) == (10, 12)  # every 10th frame, first 12 kept
    assert (cfg.width, cfg.height) == (480, 320)
    assert cfg.frame_size(1920, 1080) == (523, 294) and cfg.frame_size(480, 320) == (480, 320)
    assert cfg.audio_rate == 48_000
    assert cfg.max_duration_s > 0
    assert CLASS_NAMES == ("positive", "neutral", "negative")
    assert VGAF_LABEL_TO_CLASS == {1: 0, 2: 1, 3: 2}
    assert CLASS_TO_VGAF_LABEL == {0: 1, 1: 2, 2: 3}


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"frame_step": 0}, "frame_step"),
        ({"n_frames": 0}, "n_frames"),
        ({"width": 481}, "width"),
        ({"height": 8}, "width and height"),
        ({"audio_rate": 100}, "audio_rate"),
        ({"max_duration_s": 0}, "max_duration_s"),
        ({"decode_threads": -1}, "decode_threads"),
        ({"timeout_s": 0}, "timeout_s"),
        ({"interpolation": "NEAREST-ISH"}, "interpolation"),
    ],
)
def test_media_validation(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        MediaConfig(**kwargs)


def test_corpus_validation() -> None:
    with pytest.raises(ValueError, match="cue_strength"):
        CorpusConfig(cue_strength=1.5)
    with pytest.raises(ValueError, match="min_face_px"):
        CorpusConfig(min_face_px=20)


def test_configs_are_frozen_and_serialisable() -> None:
    cfg = MediaConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.n_frames = 3  # type: ignore[misc]
    assert to_dict(cfg)["frame_step"] == 10
