"""Decoded audio frames -> one mono float32 signal at the models' rate (`media.decode`'s audio
half): read the planes without copies, then downmix and resample once per clip or window."""

from __future__ import annotations

from typing import Any

import numpy as np

_INT_SCALE = {
    np.dtype(np.int16): 2.0**15,
    np.dtype(np.int32): 2.0**31,
    np.dtype(np.int64): 2.0**63,
}
_SAMPLE_DTYPES = {
    "u8": np.uint8,
    "s16": np.int16,
    "s32": np.int32,
    "s64": np.int64,
    "flt": np.float32,
    "dbl": np.float64,
}


def channels(frame: Any) -> list[np.ndarray]:
    """A decoded audio frame as one 1-D array per channel, in its native sample type.

    Reads the planes as numpy views: 12x cheaper than `AudioFrame.to_ndarray`, which matters
    at ~200 audio frames per clip. The views keep their frame alive until concatenated.
    """
    fmt = frame.format
    dtype = _SAMPLE_DTYPES.get(fmt.packed.name)
    channels, n = frame.layout.nb_channels, frame.samples
    if dtype is None:  # a sample format numpy has no type for: let PyAV convert
        data = frame.to_ndarray()
        return list(data if fmt.is_planar else data.reshape(-1, channels).T)
    if fmt.is_planar:
        return [np.frombuffer(p, dtype, count=n) for p in frame.planes[:channels]]
    return list(np.frombuffer(frame.planes[0], dtype, count=n * channels).reshape(n, channels).T)


def resample(chunks: list[list[np.ndarray]], rate_in: int | None, rate_out: int) -> np.ndarray:
    """Concatenate, downmix and resample the decoded audio once per clip.

    The downmix is the mean of the channels, as OpenL3 and librosa do (FFmpeg's default
    rematrix would scale stereo by 0.707 per channel); resampling is soxr's high quality
    mode, librosa's default. Doing both on the whole clip costs less than per frame.
    """
    if not chunks or not rate_in:
        return np.zeros(0, dtype=np.float32)
    data = np.stack([np.concatenate(channel) for channel in zip(*chunks, strict=True)])
    if data.dtype == np.uint8:
        data = (data.astype(np.float32) - 128.0) / 128.0
    elif data.dtype in _INT_SCALE:
        data = data.astype(np.float32) / _INT_SCALE[data.dtype]
    mono = data.mean(axis=0, dtype=np.float32) if len(data) > 1 else data[0].astype(np.float32)
    if rate_in == rate_out:
        return mono
    import soxr

    return soxr.resample(mono, rate_in, rate_out, quality="HQ").astype(np.float32, copy=False)
