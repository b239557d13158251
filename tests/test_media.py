"""media.decode: exact sampling, padding, resizing, audio, metadata, sources and bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from emotiw.core.config import MediaConfig
from emotiw.core.errors import DecodeError, DecodeReason
from emotiw.io.media import decode
from helpers import frame_colour, index_from_pixel


def dominant_hz(audio: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(len(audio))))
    return float(np.argmax(spectrum) * rate / len(audio))


def test_samples_every_tenth_frame_exactly(make_clip) -> None:
    clip = decode(make_clip(n_frames=150))
    assert clip.frames.shape == (12, 320, 480, 3) and clip.frames.dtype == np.uint8
    assert clip.frame_indices.tolist() == list(range(0, 120, 10))
    assert clip.frame_mask.all()
    for slot, index in enumerate(clip.frame_indices):
        frame = clip.frames[slot]
        assert (frame == np.array(frame_colour(index), dtype=np.uint8)).all()
        assert index_from_pixel(frame[100, 200]) == index
    # Decoding stops once the 12th sample is in: frame 110 of 150.
    assert clip.meta.frames_decoded <= 112


def test_frame_step_and_count_follow_config(make_clip) -> None:
    clip = decode(make_clip(n_frames=60), MediaConfig(frame_step=4, n_frames=5))
    assert clip.frame_indices.tolist() == [0, 4, 8, 12, 16]
    assert [index_from_pixel(f[0, 0]) for f in clip.frames] == [0, 4, 8, 12, 16]


def test_short_clip_is_zero_padded_with_mask(make_clip) -> None:
    clip = decode(make_clip(n_frames=45))
    assert clip.frame_mask.tolist() == [True] * 5 + [False] * 7
    assert clip.frame_indices.tolist() == [0, 10, 20, 30, 40] + [-1] * 7
    assert not clip.frames[5:].any()
    assert [index_from_pixel(f[0, 0]) for f in clip.frames[:5]] == [0, 10, 20, 30, 40]
    assert clip.n_valid_frames == 5


def test_single_frame_clip(make_clip) -> None:
    clip = decode(make_clip(n_frames=1, tone_hz=None))
    assert clip.frame_mask.tolist() == [True] + [False] * 11


@pytest.mark.parametrize(
    ("size", "aspect_kept"),
    [((640, 360), (294, 523)), ((320, 240), (339, 453)), ((1280, 720), (294, 523)),
     ((480, 320), (320, 480)), ((360, 640), (523, 294)), ((400, 400), (392, 392))],
)  # fmt: skip
def test_frames_keep_the_aspect_ratio_at_the_configured_pixel_count(
    make_clip, size: tuple[int, int], aspect_kept: tuple[int, int]
) -> None:
    path = make_clip(n_frames=30, size=size, tone_hz=None)
    clip = decode(path)
    assert clip.frames.shape == (12, *aspect_kept, 3)
    h, w = aspect_kept
    assert abs(w * h - 480 * 320) / (480 * 320) < 0.01 and abs(w / h - size[0] / size[1]) < 0.01
    assert (clip.meta.width, clip.meta.height) == size
    # A flat frame stays flat and keeps its colour through the resize.
    assert (clip.frames[2] == np.array(frame_colour(20), dtype=np.uint8)).all()
    stretched = decode(path, MediaConfig(geometry="stretch"))  # the authors' frames
    assert stretched.frames.shape == (12, 320, 480, 3)


def test_frames_are_upright_and_pixel_aspect_is_applied(tmp_path) -> None:
    """A phone's portrait video is often coded landscape with a display rotation, and some
    codecs store non-square pixels: the frames come out as a player shows them."""
    import av

    upright = np.zeros((64, 36, 3), np.uint8)  # 9:16, a white band at the top
    upright[:8] = 255
    path = tmp_path / "rotated.mp4"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=25, options={"qp": "0"})
        stream.width, stream.height, stream.pix_fmt = 64, 36, "yuv444p"
        stream.set_display_rotation(-90)  # shown turned a quarter clockwise
        coded = np.ascontiguousarray(np.rot90(upright, 1))  # the sensor's landscape frame
        for _ in range(12):
            out.mux(stream.encode(av.VideoFrame.from_ndarray(coded, format="rgb24")))
        out.mux(stream.encode(None))
    clip = decode(path)
    assert clip.frames.shape == (12, 523, 294, 3)  # portrait, 9:16
    top, bottom = clip.frames[0, :40].mean(), clip.frames[0, -200:].mean()
    assert top > 200 and bottom < 30, (top, bottom)
    assert decode(path, MediaConfig(geometry="stretch")).frames.shape == (12, 320, 480, 3)
    assert MediaConfig().frame_size(720, 576, 64 / 45) == (523, 294)  # PAL 16:9 anamorphic
    with pytest.raises(ValueError, match="geometry"):
        MediaConfig(geometry="letterbox")


def test_custom_output_size(make_clip) -> None:
    path = make_clip(n_frames=30, tone_hz=None)  # 480x320
    clip = decode(path, MediaConfig(width=224, height=160))
    assert clip.frames.shape == (12, 155, 232, 3)  # 224x160's pixels at 3:2
    clip = decode(path, MediaConfig(width=224, height=160, geometry="stretch"))
    assert clip.frames.shape == (12, 160, 224, 3)


def test_audio_mono_48k_keeps_tone_and_length(make_clip) -> None:
    clip = decode(make_clip(n_frames=125, tone_hz=1000.0, audio_rate=48_000))
    assert clip.audio.dtype == np.float32 and clip.audio_rate == 48_000
    assert len(clip.audio) == 5 * 48_000
    assert dominant_hz(clip.audio, 48_000) == pytest.approx(1000.0, abs=2)
    assert np.abs(clip.audio).max() == pytest.approx(0.5, abs=0.01)


def test_audio_is_resampled_and_downmixed(make_clip) -> None:
    clip = decode(make_clip(n_frames=125, tone_hz=440.0, audio_rate=44_100, channels=2))
    assert clip.meta.audio_rate_in == 44_100
    assert abs(len(clip.audio) - 5 * 48_000) <= 2
    assert dominant_hz(clip.audio, 48_000) == pytest.approx(440.0, abs=2)
    # Both channels carry the same tone: the mean downmix keeps its amplitude.
    assert np.abs(clip.audio[4800:-4800]).max() == pytest.approx(0.5, abs=0.02)
    assert np.isfinite(clip.audio).all()


def test_metadata(make_clip) -> None:
    clip = decode(make_clip(n_frames=75, fps=25, size=(640, 360), tone_hz=500.0))
    meta = clip.meta
    assert meta.fps == pytest.approx(25.0)
    assert meta.n_frames == 75
    assert meta.duration_s == pytest.approx(3.0, abs=0.05)
    assert (meta.width, meta.height) == (640, 360)
    assert (meta.video_codec, meta.audio_codec) == ("ffv1", "pcm_s16le")
    assert meta.has_audio and meta.audio_rate_in == 48_000
    assert meta.decode_errors == 0
    assert set(meta.to_dict()) >= {"fps", "n_frames", "duration_s", "has_audio"}


def test_video_without_audio_is_valid(make_clip) -> None:
    clip = decode(make_clip(n_frames=30, tone_hz=None))
    assert clip.meta.has_audio is False and clip.meta.audio_codec is None
    assert clip.audio.shape == (0,) and clip.audio.dtype == np.float32
    assert clip.frame_mask.sum() == 3


def test_reading_stops_at_the_cap(make_clip) -> None:
    path = make_clip(n_frames=300, fps=25, tone_hz=300.0)  # 12 s
    clip = decode(path, MediaConfig(max_duration_s=2.0))
    # Frames after 2.0 s are never sampled; frame 50 sits at exactly 2.0 s.
    assert clip.frame_indices[clip.frame_mask].tolist() == [0, 10, 20, 30, 40, 50]
    assert clip.meta.frames_decoded <= 52
    assert len(clip.audio) == 2 * 48_000
    assert clip.meta.duration_s == pytest.approx(12.0, abs=0.05)


def test_long_audio_is_capped(make_clip) -> None:
    clip = decode(make_clip(n_frames=25, fps=25, tone_hz=300.0, audio_s=60.0))
    assert len(clip.audio) == 10 * 48_000  # default cap 10 s


def test_all_sources_give_the_same_clip(make_clip, s3_bucket, s3_storage) -> None:
    from emotiw.io.storage import write_bytes

    path = make_clip(n_frames=40)
    data = path.read_bytes()
    url = f"{s3_bucket}/in/clip.mkv"
    write_bytes(url, data, s3_storage)
    clips = [
        decode(path),
        decode(str(path)),
        decode(f"file://{path}"),
        decode(data),
        decode(memoryview(data)),
        decode(url, storage=s3_storage),
    ]
    for other in clips[1:]:
        assert np.array_equal(other.frames, clips[0].frames)
        assert np.array_equal(other.audio, clips[0].audio)
        assert other.meta == clips[0].meta


def test_sample_corpus_clip_decodes(sample_corpus: Path) -> None:
    clip = decode(sample_corpus / "clip_0000.mp4")
    assert clip.meta.video_codec == "h264" and clip.meta.audio_codec == "aac"
    assert (clip.meta.width, clip.meta.height, clip.meta.fps) == (640, 360, 25.0)
    assert clip.frame_indices.tolist() == list(range(0, 120, 10))
    assert clip.meta.audio_rate_in == 44_100 and abs(clip.audio_duration_s - 5.0) < 0.05
    # Non-reference frames outside the sample slots were skipped, not decoded.
    assert clip.meta.frames_decoded < 111


# --- bad input: one DecodeError type, a machine-readable reason, never a hang --------------


def expect(reason: DecodeReason, source, cfg: MediaConfig | None = None, **kw) -> DecodeError:
    with pytest.raises(DecodeError) as info:
        decode(source, cfg, **kw)
    assert info.value.reason == reason
    assert str(info.value).startswith(f"{reason}: ")
    return info.value


def test_empty_file(tmp_path: Path) -> None:
    (tmp_path / "empty.mp4").write_bytes(b"")
    err = expect(DecodeReason.EMPTY, tmp_path / "empty.mp4")
    assert "empty.mp4" in str(err)
    expect(DecodeReason.EMPTY, b"")


def test_missing_file(tmp_path: Path) -> None:
    expect(DecodeReason.NOT_FOUND, tmp_path / "nope.mp4")


def test_text_file_is_not_media(tmp_path: Path) -> None:
    (tmp_path / "notes.mp4").write_text("this is not a video\n" * 50)
    err = expect(DecodeReason.NOT_MEDIA, tmp_path / "notes.mp4")
    assert "notes.mp4" in str(err)


def test_random_bytes_are_not_media() -> None:
    expect(DecodeReason.NOT_MEDIA, np.random.default_rng(0).bytes(50_000))


def test_audio_only_file_has_no_video_stream(make_clip) -> None:
    expect(DecodeReason.NO_VIDEO, make_clip("tone.mkv", video=False, tone_hz=440.0))


def test_truncated_after_header_yields_no_frames(sample_corpus: Path) -> None:
    data = (sample_corpus / "clip_0001.mp4").read_bytes()
    mdat = data.index(b"mdat")  # faststart: moov (the index) comes before the media data
    err = expect(DecodeReason.NO_FRAMES, data[: mdat + 8])
    assert "corrupt or truncated" in str(err)


def test_truncated_midway_keeps_what_decoded(sample_corpus: Path) -> None:
    data = (sample_corpus / "clip_0001.mp4").read_bytes()
    clip = decode(data[: len(data) // 2])
    assert 0 < clip.n_valid_frames < 12
    assert clip.frame_mask[: clip.n_valid_frames].all()


def test_corrupt_payload_never_crashes(sample_corpus: Path) -> None:
    data = bytearray((sample_corpus / "clip_0002.mp4").read_bytes())
    start = data.index(b"mdat") + 8
    rng = np.random.default_rng(3)
    for offset in range(start + 2000, len(data), 9000):
        data[offset : offset + 400] = rng.bytes(400)
    try:
        clip = decode(bytes(data))
    except DecodeError as exc:  # acceptable, as long as it is the project's error
        assert exc.reason in set(DecodeReason)
    else:
        assert clip.frames.shape == (12, 294, 523, 3)  # the corpus is 16:9
        assert np.isfinite(clip.audio).all()


def test_decode_is_bounded_in_time(make_clip) -> None:
    expect(DecodeReason.TIMEOUT, make_clip(n_frames=150), MediaConfig(timeout_s=1e-9))


def test_missing_s3_object(s3_bucket, s3_storage) -> None:
    err = expect(DecodeReason.NOT_FOUND, f"{s3_bucket}/missing.mp4", storage=s3_storage)
    assert s3_storage.secret not in str(err)


def test_empty_s3_object(s3_bucket, s3_storage) -> None:
    from emotiw.io.storage import write_bytes

    write_bytes(f"{s3_bucket}/empty.mp4", b"", s3_storage)
    expect(DecodeReason.EMPTY, f"{s3_bucket}/empty.mp4", storage=s3_storage)


def _with_streams_and_tags(path: Path, audio_streams: int, tag_bytes: int) -> Path:
    """A short MKV: one video stream, `audio_streams` silent ones, a tag of `tag_bytes`."""
    import av

    with av.open(str(path), "w", format="matroska") as out:
        out.metadata["comment"] = "x" * tag_bytes
        video = out.add_stream("mpeg4", rate=25)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        audios = [out.add_stream("pcm_s16le", rate=8000) for _ in range(audio_streams)]
        for i in range(5):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), i * 40, np.uint8), "rgb24")
            out.mux(video.encode(frame))
        out.mux(video.encode())
        for stream in audios:
            samples = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), "s16", "mono")
            samples.sample_rate = 8000
            out.mux(stream.encode(samples))
    return path


def test_files_built_to_exhaust_memory_are_refused_from_the_header(make_clip, tmp_path) -> None:
    """Frames larger than max_frame_pixels (a dimension bomb's header), more streams than
    max_streams, more tag bytes than max_metadata_bytes: ``too_large`` before any frame is
    decoded, naming the limit and its flag; under the limits the same files decode."""
    clip = make_clip(n_frames=20)  # 480x320
    with pytest.raises(DecodeError) as err:
        decode(clip, MediaConfig(max_frame_pixels=480 * 320 - 1))
    assert err.value.reason == DecodeReason.TOO_LARGE
    assert "480x320 frames, more than max_frame_pixels" in str(err.value)
    assert "--media-max-frame-pixels" in str(err.value)
    streams = _with_streams_and_tags(tmp_path / "streams.mkv", 40, 10)
    with pytest.raises(DecodeError, match="41 streams, more than max_streams 32"):
        decode(streams)
    tags = _with_streams_and_tags(tmp_path / "tags.mkv", 1, 2 << 20)
    with pytest.raises(DecodeError, match="bytes of metadata, more than max_metadata_bytes"):
        decode(tags)
    assert decode(streams, MediaConfig(max_streams=64)).n_valid_frames >= 1
    assert decode(tags, MediaConfig(max_metadata_bytes=4 << 20)).n_valid_frames >= 1


def test_a_file_larger_than_max_file_bytes_is_refused_before_it_is_read(make_clip) -> None:
    """The listing's size past `max_file_bytes`: a ``too_large`` row and no read (the object
    is not even there); a file that grew past it between listing and read: the same, from
    the bytes read. Under the limit it is extracted."""
    from emotiw.models.features import ClipFeatureExtractor, ModalityConfigs
    from emotiw.models.items import _extract_item

    clip = make_clip(n_frames=20)
    size = clip.stat().st_size
    audio = ModalityConfigs({"audio": ModalityConfigs.preset("cpu-smoke").of("audio")})
    extractor = ClipFeatureExtractor(audio, MediaConfig(max_file_bytes=size - 1))
    item = {"uri": str(clip) + ".gone", "video_id": "x", "size_bytes": size, "etag": "e"}
    row = _extract_item(extractor, item, None, "run")
    assert row["error_reason"] == "too_large" and row["retryable"] is False, row["error"]
    assert f"{size:,} bytes, more than max_file_bytes" in row["error"]
    assert "--media-max-file-bytes" in row["error"] and "--memory-per-extract-actor" in row["error"]
    grown = _extract_item(extractor, {**item, "uri": str(clip), "size_bytes": 10}, None, "run")
    assert grown["error_reason"] == "too_large" and grown["size_bytes"] == size  # as read
    fits = ClipFeatureExtractor(audio, MediaConfig(max_file_bytes=size))
    ok = _extract_item(fits, {**item, "uri": str(clip)}, None, "run")
    assert ok.get("error") is None and ok["size_bytes"] == size
