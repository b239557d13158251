"""Pose's 27-d frame vector (the authors' `pose_generator.py`, sheet section 2): the 13 joints
taken from a keypoint model's COCO points, each person normalised, averaged over the frame's
people, then the person count.

Rules (``frame_vector="sheet"``, the default), with the departures this code must make:
- Joints: the authors kept BODY_25 points 1-7 and 9-14 of OpenPose; Keypoint R-CNN gives COCO's
  17, mapped by name (`_COCO_FOR_JOINT`); COCO has no neck, so the neck is the shoulders'
  midpoint, present only when both shoulders are. A joint is detected when its keypoint score
  reaches the threshold (OpenPose wrote (0, 0) for a missing joint; the sheet's "x + y = 0").
- Per person, x and y are min-max scaled *separately* over that person's detected joints
  (the aspect ratio is not kept, so the vector is the same for a frame and a stretched copy
  of it); a missing joint is (-1, -1); a person without a detected joint is 26 zeros.
  Departure: an axis of zero extent (one detected joint, or all on one line) is 0 there,
  where the authors' 0/0 made NaN that then set that coordinate to -1 for the whole frame
  (their bug 7).
- The frame: the elementwise mean of the 26 values over the people with a detected joint
  (bug 7 again: the authors averaged 26 zeros in for each person without one), then the raw
  person count, those included. A frame without people is 27 zeros.

``frame_vector="extent"`` is the rule before the sheet was followed (one scale for both axes,
missing joints left out of the mean), kept so models trained on it load and score as trained.
"""

from __future__ import annotations

import numpy as np

COCO_KEYPOINTS = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear",
    "left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist",
    "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle",
)  # fmt: skip
JOINTS: tuple[str, ...] = (
    "neck",
    "right_shoulder", "right_elbow", "right_wrist",
    "left_shoulder", "left_elbow", "left_wrist",
    "right_hip", "right_knee", "right_ankle",
    "left_hip", "left_knee", "left_ankle",
)  # fmt: skip
# COCO index of each joint; the neck is derived from both shoulders.
_COCO_FOR_JOINT: dict[str, int | tuple[int, int]] = {
    "neck": (COCO_KEYPOINTS.index("left_shoulder"), COCO_KEYPOINTS.index("right_shoulder")),
    **{j: COCO_KEYPOINTS.index(j) for j in JOINTS[1:]},
}
FEATURE_COLUMNS: tuple[str, ...] = (
    *(f"{joint}_{axis}" for joint in JOINTS for axis in ("x", "y")),
    "n_people",
)
FRAME_VECTORS = ("sheet", "extent")
MISSING = -1.0  # a missing joint's coordinates under the sheet's rules


def coco_to_joints(keypoints: np.ndarray, visible: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """COCO ``[P, 17, 2]`` points and ``[P, 17]`` visibility -> the 13 joints ``[P, 13, 2]``
    and their visibility ``[P, 13]``; the neck is the shoulders' midpoint when both are seen."""
    keypoints = np.asarray(keypoints, dtype=np.float32).reshape(-1, len(COCO_KEYPOINTS), 2)
    visible = np.asarray(visible, dtype=bool).reshape(-1, len(COCO_KEYPOINTS))
    joints = np.zeros((len(keypoints), len(JOINTS), 2), dtype=np.float32)
    seen = np.zeros((len(keypoints), len(JOINTS)), dtype=bool)
    for j, joint in enumerate(JOINTS):
        source = _COCO_FOR_JOINT[joint]
        if isinstance(source, tuple):
            a, b = source
            joints[:, j] = (keypoints[:, a] + keypoints[:, b]) / 2
            seen[:, j] = visible[:, a] & visible[:, b]
        else:
            joints[:, j] = keypoints[:, source]
            seen[:, j] = visible[:, source]
    return joints, seen


def joint_scores(point_scores: np.ndarray) -> np.ndarray:
    """COCO keypoint scores ``[P, 17]`` -> per joint ``[P, 13]`` (neck: the weaker shoulder)."""
    out = np.zeros((len(point_scores), len(JOINTS)), dtype=np.float32)
    for j, joint in enumerate(JOINTS):
        source = _COCO_FOR_JOINT[joint]
        if isinstance(source, tuple):
            out[:, j] = np.minimum(point_scores[:, source[0]], point_scores[:, source[1]])
        else:
            out[:, j] = point_scores[:, source]
    return out


def _normalise_person(joints: np.ndarray, seen: np.ndarray, rule: str = "sheet") -> np.ndarray:
    """One person's ``[13, 2]`` pixel joints -> ``[13, 2]`` normalised (module docstring):
    ``sheet``, each axis min-max scaled over the detected joints, missing joints (-1, -1);
    ``extent``, one scale (the larger side) for both axes, missing joints 0."""
    out = np.zeros_like(joints, dtype=np.float32)
    if not seen.any():
        return out
    points = joints[seen]
    low = points.min(axis=0)
    extent = points.max(axis=0) - low
    if rule == "extent":
        scale = float(extent.max())
        out[seen] = (points - low) / scale if scale > 0 else 0.0
        return out
    out[:] = MISSING
    out[seen] = np.divide(points - low, extent, out=np.zeros_like(points), where=extent > 0)
    return out


def frame_features(
    people: list[tuple[np.ndarray, np.ndarray]], n_frames: int | None = None, rule: str = "sheet"
) -> np.ndarray:
    """Per-frame 27-d features.

    Args:
        people: per frame, (joints ``[P, 13, 2]`` in pixels, detected ``[P, 13]``).
        n_frames: output length; missing frames are zeros.
        rule: ``sheet`` or ``extent`` (module docstring).

    Returns:
        float32 ``[n_frames, 27]``: the mean normalised joints, then the person count P.
    """
    if rule not in FRAME_VECTORS:
        raise ValueError(f"frame_vector must be one of {FRAME_VECTORS}, got {rule!r}")
    n_frames = len(people) if n_frames is None else n_frames
    out = np.zeros((n_frames, len(FEATURE_COLUMNS)), dtype=np.float32)
    for t, (joints, seen) in enumerate(people[:n_frames]):
        if len(joints) == 0:
            continue
        out[t, -1] = len(joints)
        norm = np.stack([_normalise_person(j, s, rule) for j, s in zip(joints, seen, strict=True)])
        if rule == "sheet":
            present = seen.any(axis=1)  # people with a detected joint
            if present.any():
                out[t, :-1] = norm[present].mean(axis=0).reshape(-1)
            continue
        counts = seen.sum(axis=0)  # extent: the mean over the people having each joint
        sums = (norm * seen[..., None]).sum(axis=0)
        mean = np.divide(sums, counts[:, None], out=np.zeros_like(sums), where=counts[:, None] > 0)
        out[t, :-1] = mean.reshape(-1)
    return out
