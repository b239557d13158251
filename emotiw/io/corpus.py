"""A synthetic, labelled sample corpus that exercises every stage of the system.

It is NOT sentiment data. Each clip is a 5 s H.264 + AAC mp4 (640x360, 25 fps, 44.1 kHz
stereo, so decoding must resize and resample) whose class is carried by simple, learnable
cues, one set per modality:

- scene: background colour and brightness (positive warm and bright, neutral grey-teal and
  medium, negative dark blue) and a moving disc (positive fast, neutral still, negative slow);
- audio: a tone whose pitch, rhythm and loudness depend on the class (positive 660 Hz pulsing
  at 4 Hz and loud, neutral 440 Hz steady and quiet, negative 220 Hz pulsing at 1 Hz);
- faces: real face photographs (scikit-image's bundled astronaut, mirrored alternately) whose
  count and placement depend on the class (positive 3 in the upper half, neutral 2 in the
  middle, negative 1 low on one side), each face at least `min_face_px` pixels.

Each modality's cue follows the clip's label with probability `cue_strength` and is otherwise
drawn from a random class, independently per modality, so single-modality models are imperfect
and fusion has something to gain. Everything is deterministic in (seed, clip index).
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from functools import cache

import numpy as np

from emotiw.core.config import CLASS_NAMES, CorpusConfig, StorageConfig

# Scene cues per class: base RGB, brightness, disc speed in px per frame.
_SCENE = (
    {"rgb": (235, 175, 70), "brightness": 1.00, "speed": 9.0},
    {"rgb": (120, 145, 150), "brightness": 0.75, "speed": 0.0},
    {"rgb": (45, 55, 120), "brightness": 0.50, "speed": 2.0},
)
# Audio cues per class: tone Hz, amplitude-modulation Hz (0 = steady), peak amplitude.
_AUDIO = (
    {"freq": 660.0, "am": 4.0, "amp": 0.50},
    {"freq": 440.0, "am": 0.0, "amp": 0.15},
    {"freq": 220.0, "am": 1.0, "amp": 0.35},
)
# Face cues per class: face centres as fractions of (width, height).
_FACES = (
    ((0.20, 0.30), (0.50, 0.28), (0.80, 0.30)),
    ((0.35, 0.50), (0.65, 0.50)),
    ((0.78, 0.68),),
)
# The astronaut's face box (top, right, bottom, left) found by dlib's HOG detector, and the
# share of a pasted crop that the face covers after adding a 15 % margin on each side.
ASTRONAUT_FACE = (76, 265, 166, 175)
FACE_MARGIN = 0.15


@dataclass(frozen=True)
class _SampleClip:
    """One written clip and the ground truth of its cues (for tests and the docs)."""

    name: str
    uri: str
    label: int
    scene_cue: int
    audio_cue: int
    face_cue: int
    n_faces: int


def write_sample_corpus(
    out_dir: str,
    n: int,
    seed: int = 0,
    cfg: CorpusConfig | None = None,
    storage: StorageConfig | None = None,
) -> list[_SampleClip]:
    """Write `n` clips, ``labels.txt`` (VGAF) and ``cues.csv`` under `out_dir` (path or s3://).

    Labels are balanced over the three classes (counts differ by at most one) and shuffled
    deterministically by `seed`.
    """
    from emotiw.io.labels import write_labels
    from emotiw.io.storage import join_url, write_bytes

    cfg = cfg or CorpusConfig()
    clips: list[_SampleClip] = []
    for clip, rng in _plan(n, seed, cfg, out_dir):
        data = _render_clip(rng, scene=clip.scene_cue, audio=clip.audio_cue, face=clip.face_cue,
                           cfg=cfg)  # fmt: skip
        write_bytes(clip.uri, data, storage)
        clips.append(clip)
    names = {f"{c.name}.mp4": c.label for c in clips}
    write_labels(join_url(out_dir, "labels.txt"), names, storage)
    _write_csv(join_url(out_dir, "cues.csv"), [asdict(c) for c in clips], storage)
    about = {
        "synthetic": True,
        "warning": "synthetic test corpus with planted cues; not sentiment data",
        "seed": seed,
        "n": n,
        "config": asdict(cfg),
    }
    write_bytes(join_url(out_dir, "corpus.json"), json.dumps(about, indent=2).encode(), storage)
    return clips


def _sample_plan(n: int, seed: int = 0, cfg: CorpusConfig | None = None) -> list[_SampleClip]:
    """The clips `write_sample_corpus` would write (labels and cues), without rendering them."""
    return [clip for clip, _ in _plan(n, seed, cfg or CorpusConfig(), "")]


def _plan(
    n: int, seed: int, cfg: CorpusConfig, out_dir: str
) -> Iterator[tuple[_SampleClip, np.random.Generator]]:
    """Each clip's labels and cues, with the generator its rendering goes on drawing from."""
    from emotiw.io.storage import join_url

    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    labels = np.arange(n) % len(CLASS_NAMES)
    np.random.default_rng(seed).shuffle(labels)
    for i, label in enumerate(labels.tolist()):
        name = f"clip_{i:04d}"
        rng = np.random.default_rng([seed, i])
        cues = [_draw_cue(rng, label, cfg.cue_strength) for _ in range(3)]
        uri = join_url(out_dir, f"{name}.mp4") if out_dir else f"{name}.mp4"
        yield _SampleClip(name, uri, label, *cues, n_faces=len(_FACES[cues[2]])), rng


def _draw_cue(rng: np.random.Generator, label: int, strength: float) -> int:
    if rng.random() < strength:
        return label
    return int(rng.integers(len(CLASS_NAMES)))


def _render_clip(
    rng: np.random.Generator, *, scene: int, audio: int, face: int, cfg: CorpusConfig
) -> bytes:
    """Encode one clip with the given cue classes; returns mp4 bytes (moov first)."""
    return _render([_segment(rng, (scene, audio, face), cfg.duration_s, cfg)], cfg)


def write_planted_video(
    out_dir: str,
    segments: Sequence[tuple[int, float]],
    seed: int = 0,
    cfg: CorpusConfig | None = None,
    storage: StorageConfig | None = None,
) -> list[dict[str, object]]:
    """Write ``planted.mp4`` (one long video) and ``planted.csv`` (its ground truth) under
    `out_dir`: every cue (scene, audio, faces) follows each segment's class for its seconds in
    turn, e.g. ``[(0, 40), (2, 40)]`` is positive for 40 s, then negative. The sample corpus's
    cues, at full strength: a model trained on the corpus reads them, and a timeline scored
    from the video must change class where the segments do. Returns the segments' rows."""
    from emotiw.io.storage import join_url, write_bytes

    cfg = cfg or CorpusConfig()
    _check_segments(segments)
    parts, rows, start = [], [], 0.0
    for k, (cls, seconds) in enumerate(segments):
        rng = np.random.default_rng([seed, 1_000_000 + k])  # apart from the clips' streams
        parts.append(_segment(rng, (cls, cls, cls), seconds, cfg))
        end = start + round(seconds * cfg.fps) / cfg.fps
        rows.append({"segment": k, "label": CLASS_NAMES[cls], "start_s": start, "end_s": end})
        start = end
    write_bytes(join_url(out_dir, "planted.mp4"), _render(parts, cfg), storage)
    _write_csv(join_url(out_dir, "planted.csv"), rows, storage)
    return rows


def planted_segments(spec: str) -> list[tuple[int, float]]:
    """``positive:40,negative:40`` -> ``[(0, 40.0), (2, 40.0)]``, the `write_planted_video`
    segments a command line names; ValueError saying the syntax when `spec` is not one."""
    try:
        pairs = [part.split(":") for part in spec.split(",")]
        segments = [(CLASS_NAMES.index(name.strip()), float(s)) for name, s in pairs]
        _check_segments(segments)
    except ValueError:
        raise ValueError(
            f"expected CLASS:SECONDS[,CLASS:SECONDS...] with CLASS one of {CLASS_NAMES} and "
            f"SECONDS > 0, got {spec!r}"
        ) from None
    return segments


def _check_segments(segments: Sequence[tuple[int, float]]) -> None:
    if not segments or any(
        c not in range(len(CLASS_NAMES)) or not 0 < s < float("inf") for c, s in segments
    ):
        raise ValueError(f"segments must be (class index, seconds > 0) pairs, got {segments}")


def _write_csv(uri: str, rows: list[dict[str, object]], storage: StorageConfig | None) -> None:
    """`rows` (same keys each) as a CSV file with a header, at `uri` (path or s3://)."""
    from emotiw.io.storage import write_bytes

    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    write_bytes(uri, table.getvalue().encode(), storage)


# A stretch of cues: (background, disc centre per frame, faces, audio wave, frame count).
_Segment = tuple[np.ndarray, np.ndarray, list, np.ndarray, int]


def _segment(
    rng: np.random.Generator, cues: tuple[int, int, int], seconds: float, cfg: CorpusConfig
) -> _Segment:
    """Draw one stretch's cues (scene, audio, face classes), in the order clips always drew."""
    scene, audio, face = cues
    n_video = round(seconds * cfg.fps)
    background = _background(rng, scene, cfg)
    disc = _disc_path(rng, scene, n_video, cfg)
    faces = _face_layout(rng, face, cfg)
    return background, disc, faces, _tone(rng, audio, cfg, seconds), n_video


def _render(segments: list[_Segment], cfg: CorpusConfig) -> bytes:
    """Encode the segments one after another; returns mp4 bytes (moov first)."""
    # faststart (moov before the media data) lets readers stream the clip from object storage;
    # the muxer rewrites the file to move it, which needs a real file rather than a buffer.
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "clip.mp4")
        _encode(path, segments, cfg)
        with open(path, "rb") as handle:
            return handle.read()


def _encode(path: str, segments: list[_Segment], cfg: CorpusConfig) -> None:
    import av

    with av.open(path, "w", format="mp4", options={"movflags": "+faststart"}) as out:
        vstream = out.add_stream("libx264", rate=cfg.fps)
        vstream.width, vstream.height, vstream.pix_fmt = cfg.width, cfg.height, "yuv420p"
        vstream.options = {"crf": "23", "preset": "veryfast"}
        vstream.codec_context.thread_count = 1  # one thread: byte-identical output per seed
        astream = out.add_stream("aac", rate=cfg.audio_rate, layout="stereo")
        for background, disc, faces, _, n_video in segments:
            for t in range(n_video):
                frame = background.copy()
                _draw_disc(frame, disc[t], radius=min(cfg.width, cfg.height) // 10)
                for patch, (x, y), (ax, ay) in faces:
                    dx = round(ax * np.sin(2 * np.pi * t / n_video))
                    dy = round(ay * np.cos(2 * np.pi * t / n_video))
                    h, w = patch.shape[:2]
                    frame[y + dy : y + dy + h, x + dx : x + dx + w] = patch
                out.mux(vstream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        wave = np.concatenate([segment[3] for segment in segments], axis=1)
        chunk = 1024
        for start in range(0, wave.shape[1], chunk):
            piece = np.ascontiguousarray(wave[:, start : start + chunk])
            aframe = av.AudioFrame.from_ndarray(piece, format="fltp", layout="stereo")
            aframe.sample_rate = cfg.audio_rate
            aframe.pts = start
            out.mux(astream.encode(aframe))
        out.mux(vstream.encode(None))
        out.mux(astream.encode(None))


def _background(rng: np.random.Generator, cls: int, cfg: CorpusConfig) -> np.ndarray:
    spec = _SCENE[cls]
    rgb = np.array(spec["rgb"], dtype=np.float32) + rng.normal(0, 12, 3)
    rgb *= spec["brightness"] * rng.uniform(0.9, 1.1)
    # A smooth per-clip texture and a vertical gradient, so frames are not flat colour.
    coarse = rng.normal(0, 14, (9, 16, 1)).astype(np.float32)
    texture = np.kron(coarse, np.ones((cfg.height // 9 + 1, cfg.width // 16 + 1, 1)))
    texture = texture[: cfg.height, : cfg.width]
    gradient = np.linspace(1.1, 0.9, cfg.height, dtype=np.float32)[:, None, None]
    image = rgb[None, None, :] * gradient + texture
    return np.clip(image, 0, 255).astype(np.uint8)


def _disc_path(rng: np.random.Generator, cls: int, n_video: int, cfg: CorpusConfig) -> np.ndarray:
    """Centre of the moving disc per frame, bouncing inside the frame."""
    speed = _SCENE[cls]["speed"] * rng.uniform(0.8, 1.2)
    angle = rng.uniform(0, 2 * np.pi)
    pos = rng.uniform([0.2 * cfg.width, 0.2 * cfg.height], [0.8 * cfg.width, 0.8 * cfg.height])
    vel = speed * np.array([np.cos(angle), np.sin(angle)])
    low = np.array([0.1 * cfg.width, 0.1 * cfg.height])
    high = np.array([0.9 * cfg.width, 0.9 * cfg.height])
    path = np.empty((n_video, 2))
    for t in range(n_video):
        path[t] = pos
        pos = pos + vel
        for axis in range(2):
            if not low[axis] <= pos[axis] <= high[axis]:
                vel[axis] = -vel[axis]
                pos[axis] = np.clip(pos[axis], low[axis], high[axis])
    return path


def _draw_disc(frame: np.ndarray, centre: np.ndarray, radius: int) -> None:
    cx, cy = int(centre[0]), int(centre[1])
    y0, y1 = max(cy - radius, 0), min(cy + radius + 1, frame.shape[0])
    x0, x1 = max(cx - radius, 0), min(cx + radius + 1, frame.shape[1])
    yy, xx = np.ogrid[y0:y1, x0:x1]
    inside = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2
    frame[y0:y1, x0:x1][inside] = (250, 250, 250)


@cache
def face_crop() -> np.ndarray:
    """The astronaut's face with a margin (uint8 RGB), from scikit-image's bundled data."""
    from skimage import data

    top, right, bottom, left = ASTRONAUT_FACE
    margin = round(FACE_MARGIN * (bottom - top))
    return data.astronaut()[top - margin : bottom + margin, left - margin : right + margin].copy()


def _face_layout(
    rng: np.random.Generator, cls: int, cfg: CorpusConfig
) -> list[tuple[np.ndarray, tuple[int, int], tuple[int, int]]]:
    """(patch, top-left, drift amplitude) for each face of the class's layout."""
    from PIL import Image

    crop = face_crop()
    face_share = 1.0 / (1.0 + 2 * FACE_MARGIN)
    layout = []
    for k, (fx, fy) in enumerate(_FACES[cls]):
        face_px = cfg.min_face_px * rng.uniform(1.0, 1.3)
        side = round(face_px / face_share)
        patch = np.asarray(Image.fromarray(crop).resize((side, side), Image.Resampling.BILINEAR))
        if k % 2:
            patch = patch[:, ::-1]
        drift = (int(rng.integers(2, 8)), int(rng.integers(1, 5)))
        x = int(np.clip(fx * cfg.width - side / 2, drift[0], cfg.width - side - drift[0]))
        y = int(np.clip(fy * cfg.height - side / 2, drift[1], cfg.height - side - drift[1]))
        layout.append((np.ascontiguousarray(patch), (x, y), drift))
    return layout


def _tone(rng: np.random.Generator, cls: int, cfg: CorpusConfig, seconds: float) -> np.ndarray:
    """Stereo float32 ``[2, samples]``: the class's tone, rhythm and loudness plus faint noise."""
    spec = _AUDIO[cls]
    n = round(seconds * cfg.audio_rate)
    t = np.arange(n, dtype=np.float64) / cfg.audio_rate
    freq = spec["freq"] * rng.uniform(0.97, 1.03)
    envelope = np.ones_like(t)
    if spec["am"]:
        envelope = 0.5 * (1 + np.sin(2 * np.pi * spec["am"] * t + rng.uniform(0, 2 * np.pi)))
    amp = spec["amp"] * rng.uniform(0.85, 1.15)
    mono = amp * envelope * np.sin(2 * np.pi * freq * t) + rng.normal(0, 0.005, n)
    return np.stack([mono, 0.9 * mono]).astype(np.float32)
