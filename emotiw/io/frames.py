"""The sampled frames as the feature table stores them: one JPEG per frame (~20x smaller than
the scene backbone's maps; `jobs/benchmark.py scene`), and back; a frames-only `Clip` for the
modalities that extract in the model stage from those JPEGs."""

from __future__ import annotations

import io

import numpy as np

from emotiw.io.media import Clip, ClipMeta


def clip_from_frames(frames: np.ndarray, mask: np.ndarray) -> Clip:
    """A `Clip` of stored frames only (no audio): what a modality extracting in the model
    stage gets from the feature row's JPEG frames."""
    indices = np.where(mask, np.arange(len(mask)), -1).astype(np.int32)
    height, width = frames.shape[1:3]
    meta = ClipMeta(0.0, int(mask.sum()), 0.0, width, height, "jpeg", None, False, None, 0, 0)
    return Clip(frames, mask.astype(bool), indices, np.zeros(0, np.float32), 48_000, meta)


def encode_frames(frames: np.ndarray, mask: np.ndarray, quality: int = 90) -> list[bytes]:
    """uint8 ``[T, H, W, 3]`` frames -> one JPEG per frame; padded frames become ``b""``."""
    from PIL import Image

    out = []
    for frame, real in zip(frames, mask, strict=True):
        if not real:
            out.append(b"")
            continue
        buffer = io.BytesIO()
        Image.fromarray(frame).save(buffer, format="JPEG", quality=quality)
        out.append(buffer.getvalue())
    return out


def fit(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """uint8 ``[T, h, w, 3]`` frames resized to exactly ``[T, height, width, 3]`` (bicubic,
    as the authors made their 480x320 frames): the scene model's input from frames that keep
    the video's aspect ratio (`MediaConfig.geometry`). Frames of that size pass unchanged."""
    from PIL import Image

    if frames.shape[1:3] == (height, width):
        return frames
    out = np.zeros((len(frames), height, width, 3), dtype=np.uint8)
    for t, frame in enumerate(frames):
        if frame.any():  # padded frames stay zeros
            image = Image.fromarray(frame).resize((width, height), Image.Resampling.BICUBIC)
            out[t] = np.asarray(image)
    return out


def decode_frames(
    blobs: list[bytes], height: int | None = None, width: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of `encode_frames`: uint8 frames ``[T, H, W, 3]`` and the bool mask ``[T]``.
    Without `height` and `width` the first stored frame's size is used (every frame must
    have it); with them, a frame of another size is an error."""
    from PIL import Image

    if height is None or width is None:
        first = next((b for b in blobs if b), None)
        width, height = Image.open(io.BytesIO(first)).size if first else (1, 1)
    frames = np.zeros((len(blobs), height, width, 3), dtype=np.uint8)
    mask = np.zeros(len(blobs), dtype=bool)
    for t, blob in enumerate(blobs):
        if blob:
            image = Image.open(io.BytesIO(blob)).convert("RGB")
            if image.size != (width, height):
                raise ValueError(f"frame {t} is {image.size}, expected {(width, height)}")
            frames[t] = np.asarray(image)
            mask[t] = True
    return frames, mask
