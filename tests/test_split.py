"""The train job's validation split: stratified by class, and by source video for VGAF-named
clips (``<video>_<clip>``), so that clips cut from one video never sit on both sides."""

from __future__ import annotations

import numpy as np
import pytest

from emotiw.jobs.train import TrainConfig
from emotiw.jobs.train.data import source_groups, stratified_split


def vgaf_names(n_videos: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """VGAF-like clips: each video has 1-6 clips that share its label (mostly)."""
    rng = np.random.default_rng(seed)
    uris, labels = [], []
    for v in range(1, n_videos + 1):
        label = int(rng.integers(3))
        for c in range(1, int(rng.integers(1, 7)) + 1):
            uris.append(f"s3://b/train/{v}_{c}.mp4")
            labels.append(label if rng.random() > 0.1 else int(rng.integers(3)))
    return np.asarray(uris), np.asarray(labels)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_clips_of_one_video_stay_on_one_side(seed: int) -> None:
    uris, labels = vgaf_names(120, seed)
    groups = source_groups(uris, TrainConfig(features="x").group_by)
    train, val = stratified_split(labels, 0.25, seed, groups)
    assert len(np.intersect1d(train, val)) == 0 and len(train) + len(val) == len(labels)
    assert not set(groups[train]) & set(groups[val])  # no video on both sides
    for c in range(3):  # each class's share of the validation set is near the fraction
        share = (labels[val] == c).sum() / (labels == c).sum()
        assert 0.15 < share < 0.4, (c, share)
    # the per-clip split (what --group-by '' gives) does mix videos: the check can fail
    train, val = stratified_split(labels, 0.25, seed, source_groups(uris, ""))
    assert set(groups[train]) & set(groups[val])


def test_names_outside_the_pattern_are_their_own_group() -> None:
    uris = np.asarray(["/c/12_3.mp4", "/c/12_4.mp4", "/c/clip_0001.mp4", "/d/clip_0001.mp4"])
    assert source_groups(uris, r"^(\d+)_\d+$").tolist() == ["12", "12", "clip_0001", "clip_0001"]
    labels = np.asarray([0, 0, 1, 1, 2, 2, 0, 1, 2, 0])
    _, val = stratified_split(labels, 0.3, 0)  # no groups: the per-clip split as before
    assert len(val) == 3 and set(labels[val]) == {0, 1, 2}
    singles = source_groups(np.asarray([f"/c/clip_{i}.mp4" for i in range(10)]), r"^(\d+)_\d+$")
    assert stratified_split(labels, 0.3, 0, singles)[1].tolist() == val.tolist()  # the same


def test_group_by_needs_a_group() -> None:
    with pytest.raises(ValueError, match="capturing group"):
        TrainConfig(features="x", group_by=r"^\d+_\d+$")
    assert TrainConfig(features="x", group_by="").group_by == ""


def test_stacking_folds_keep_a_source_video_together() -> None:
    from emotiw.jobs.train.stacking import _fold_of

    uris, _ = vgaf_names(200, 3)
    folds = _fold_of(uris, TrainConfig(features="x").group_by, 5)
    groups = source_groups(uris, TrainConfig(features="x").group_by)
    for g in set(groups):
        assert len(set(folds[groups == g])) == 1  # a video's clips share their fold
    counts = np.bincount(folds, minlength=5)
    assert counts.min() > 0.5 * counts.mean()  # roughly balanced
    assert (_fold_of(uris, "", 5) == _fold_of(uris, "", 5)).all()  # the same in every run
    with pytest.raises(ValueError, match="stacking_folds"):
        TrainConfig(features="x", stacking_folds=1)
