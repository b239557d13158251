"""Frame geometry (issue: detection on aspect-kept frames): square and portrait clips made from
real face photos that installed packages ship (scikit-image's astronaut, matplotlib's Grace
Hopper). Every face dlib finds in the clip's own frame at its native aspect is found, at the
same place, in the decoded frames; the authors' stretched 480x320 frames lose them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from emotiw.core.config import MediaConfig
from emotiw.io.media import decode
from emotiw.modalities import face
from helpers import real_photos

MARGIN = 0.35  # context around each face box in the pasted photo


def _crop(image: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    top, right, bottom, left = box
    m = round(MARGIN * (bottom - top))
    return np.ascontiguousarray(image[max(top - m, 0) : bottom + m, max(left - m, 0) : right + m])


@pytest.fixture(scope="module")
def photos() -> list[np.ndarray]:
    """Four face crops: two real people, each also mirrored; the boxes are dlib's own."""
    detector = face.FaceDetector(face.Config())
    crops = []
    for image in real_photos():
        (box,) = face.filter_boxes(detector(image), 40, max_faces=1)  # the largest
        crops.append(_crop(image, tuple(int(v) for v in box)))
    return crops + [np.ascontiguousarray(c[:, ::-1]) for c in crops]


def _frame(photos: list[np.ndarray], size: tuple[int, int], grid: tuple[int, int]) -> np.ndarray:
    """A ``size`` (w, h) frame, the photos in a ``grid`` (columns, rows), faces ~150 px."""
    from PIL import Image

    width, height = size
    rng = np.random.default_rng(0)
    frame = np.clip(rng.normal(120, 20, (height, width, 3)), 0, 255).astype(np.uint8)
    side = round(150 * (1 + 2 * MARGIN))
    cols, rows = grid
    for k, photo in enumerate(photos):
        patch = np.asarray(Image.fromarray(photo).resize((side, side)))
        y = round((k // cols + 0.5) * height / rows - side / 2)
        x = round((k % cols + 0.5) * width / cols - side / 2)
        frame[y : y + side, x : x + side] = patch
    return frame


def _write(path: Path, frame: np.ndarray, n_frames: int = 11) -> Path:
    """An H.264 clip (as a camera writes it) of `n_frames` copies of `frame`."""
    import av

    height, width = frame.shape[:2]
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=25, options={"crf": "18"})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for _ in range(n_frames):
            out.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        out.mux(stream.encode(None))
    return path


def _centres(boxes: np.ndarray, sx: float = 1.0, sy: float = 1.0) -> np.ndarray:
    """(x, y) box centres scaled to the source's pixels, sorted."""
    top, right, bottom, left = np.asarray(boxes, float).T
    centres = np.stack([(left + right) / 2 * sx, (top + bottom) / 2 * sy], axis=1)
    return centres[np.lexsort((centres[:, 0], centres[:, 1]))]


@pytest.mark.parametrize(
    ("size", "grid", "frame_hw"),
    [((720, 720), (2, 2), (392, 392)), ((720, 1280), (1, 4), (523, 294))],
    ids=["square", "portrait-9x16"],
)
def test_faces_found_at_the_native_aspect_are_found_after_decoding(
    photos, tmp_path: Path, size, grid, frame_hw
) -> None:
    frame = _frame(photos, size, grid)
    extractor = face.Extractor(face.Config(weights="random-init"))  # detection is dlib's own
    cfg = extractor.cfg
    native = face.filter_boxes(extractor.detector(frame), cfg.min_face_px, 16)
    assert len(native) == 4  # the clip's own frame, at its own aspect and size

    clip = decode(_write(tmp_path / "clip.mp4", frame))
    assert clip.frames.shape[1:3] == frame_hw and clip.n_valid_frames == 2
    out = extractor(clip)
    assert out.features[:2, -1].tolist() == [4, 4] and out.stats["n_faces"] == 8
    first = out.details["slot"] == 0
    boxes = np.stack([out.details[c][first] for c in face._FACE_BOX_COLUMNS], axis=1)
    assert (out.details["frame_width"] == frame_hw[1]).all()
    assert (out.details["frame_height"] == frame_hw[0]).all()
    # the same faces, at the same places (box centres within 3 % of the frame)
    scale = (size[0] / frame_hw[1], size[1] / frame_hw[0])
    found = _centres(boxes, *scale)
    np.testing.assert_allclose(found, _centres(native), atol=0.03 * max(size))

    # the authors' frames: every clip stretched to 480x320 squashes these faces out of reach
    stretched = decode(tmp_path / "clip.mp4", MediaConfig(geometry="stretch"))
    assert stretched.frames.shape[1:3] == (320, 480)
    assert sum(len(b) for b in extractor.detect(stretched)) < 8
