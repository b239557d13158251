"""long-video: a long video scored window by window against the same minutes as separate clips.

One synthetic H.264 video (moving pattern and a tone, 25 fps, a keyframe every `--gop` frames:
250 is the worst case x264 writes by default) of `--minutes`, and the same stretch cut into
5 s clips (each its own file, a keyframe at its start). Four figures, each a ratio in one run:

- decode: seconds to decode each window inside the long video (seek to the keyframe before,
  decode from there) / the same window as its own file (target <= 1.3);
- S3 bytes: bytes fetched from the S3 test server (moto, on loopback) per window, beyond the
  container's header (read once: an actor keeps the video open from window to window) / the
  window's share of the file (target <= 2);
- memory: peak RSS of a process extracting one window of the long video and of a 2-hour one /
  extracting a 5 s clip (target: flat, <= 1.1);
- wall: `run_score` of the long video / of the clips, same actors (target >= 0.9 as
  clip-corpus time over long-video time: a long video parallelises like a clip corpus).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FPS, SIZE, RATE = 25, (320, 240), 48_000


def _write(path: Path, first: int, frames: int, gop: int) -> Path:
    """H.264 frames `first`..`first + frames` of the synthetic video (a pattern moving with the
    frame index, so every frame differs) with its tone, into `path`."""
    import av
    import numpy as np

    width, height = SIZE
    ys, xs = np.mgrid[0:height, 0:width]
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=FPS, options={"preset": "ultrafast"})
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        video.codec_context.gop_size = gop
        audio = out.add_stream("aac", rate=RATE, layout="mono")
        for i in range(first, first + frames):
            t = i / FPS
            img = np.stack([(xs + 4 * i) % 256, (ys + 2 * i) % 256, (xs + ys + i) % 256], -1)
            frame = av.VideoFrame.from_ndarray(img.astype(np.uint8), format="rgb24")
            out.mux(video.encode(frame))
            n = RATE // FPS
            tone = 0.3 * np.sin(2 * np.pi * 440 * (t + np.arange(n) / RATE)).astype(np.float32)
            sound = av.AudioFrame.from_ndarray(tone[None, :], format="fltp", layout="mono")
            sound.sample_rate, sound.pts = RATE, (i - first) * n  # each file starts at 0
            out.mux(audio.encode(sound))
        out.mux(video.encode(None))
        out.mux(audio.encode(None))
    return path


def _decode_ratio(long: Path, clips: list[Path], windows: list, repeat: int) -> float:
    from emotiw.core.config import MediaConfig
    from emotiw.io.media import decode

    cfg = MediaConfig(decode_threads=1)
    inside, alone = [], []
    for _ in range(repeat):  # interleaved, so drift in machine load hits both alike
        start = time.perf_counter()
        for w in windows:
            decode(str(long), cfg, window=w)
        inside.append(time.perf_counter() - start)
        start = time.perf_counter()
        for w in windows:
            decode(str(clips[w.index]), cfg)
        alone.append(time.perf_counter() - start)
    ratio = statistics.median(inside) / statistics.median(alone)
    ms_inside, ms_alone = (statistics.median(t) / len(windows) * 1e3 for t in (inside, alone))
    print(f"  decode per window: inside the video {ms_inside:.1f} ms, as its own file "
          f"{ms_alone:.1f} ms; ratio {ratio:.2f}  (target <= 1.3)")  # fmt: skip
    return ratio


def _s3_ratio(long: Path, windows: list, work: Path) -> float:
    """Bytes s3fs fetches (its range requests) per window over the window's share."""
    import socket

    import s3fs

    from emotiw.core.config import MediaConfig, StorageConfig
    from emotiw.io.media import decode
    from emotiw.io.windows import probe

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
        os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
        storage = StorageConfig(endpoint_url=f"http://127.0.0.1:{port}")
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": storage.endpoint_url})
        fs.mkdir("bench")
        fs.put(str(long), "bench/long.mp4")
        fetched = [0]
        original = s3fs.core.S3File._fetch_range

        def counting(self, start, end):  # type: ignore[no-untyped-def]
            data = original(self, start, end)
            fetched[0] += len(data)
            return data

        s3fs.core.S3File._fetch_range = counting
        try:  # the header alone (what every open reads: the container's index), then windows
            probe("s3://bench/long.mp4", storage)
            header, fetched[0] = fetched[0], 0
            for w in windows:
                decode("s3://bench/long.mp4", MediaConfig(decode_threads=1), storage, window=w)
        finally:
            s3fs.core.S3File._fetch_range = original
    finally:
        server.terminate()
        server.wait()
    size, duration = long.stat().st_size, windows[0].duration_s
    share = sum(size * (w.end_s - w.start_s) / duration for w in windows) / len(windows)
    beyond = (fetched[0] - header) / len(windows)  # an actor reads a video's header once
    ratio = beyond / share
    print(f"  S3 bytes: the header {header / 1024:.0f} KiB once, then {beyond / 1024:.0f} KiB "
          f"per window; the window's share {share / 1024:.0f} KiB; ratio beyond the header "
          f"{ratio:.2f}  (target <= 2)")  # fmt: skip
    return ratio


_PEAK = """
import resource, sys
from emotiw.core.config import MediaConfig
from emotiw.models.features import ModalityConfigs
from emotiw.models.items import ItemExtractor
from emotiw.io.windows import WindowConfig, plan, probe
uri = sys.argv[1]
windows = plan(probe(uri), WindowConfig(), MediaConfig())
w = windows[len(windows) // 2]
item = {"uri": uri, "video_id": "v", "etag": "e", "size_bytes": 0, **w.columns()}
row = ItemExtractor(ModalityConfigs.preset("cpu-smoke"), MediaConfig(decode_threads=1))(
    item, None, "bench")
assert row.get("error") is None, row.get("error")
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def _peak_kib(uri: Path) -> int:
    out = subprocess.run([sys.executable, "-c", _PEAK, str(uri)], capture_output=True,
                         text=True, check=True)  # fmt: skip
    return int(out.stdout.split()[-1])


def _wall_ratio(long: Path, clips: list[Path], work: Path, actors: int) -> float:
    from benchmarks.harness import random_package
    from emotiw.jobs.pipeline import ensure_ray
    from emotiw.jobs.score import ScoreConfig, run_score
    from emotiw.models.features import ModalityConfigs

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    package = random_package(str(work / "model"), ModalityConfigs.preset("cpu-smoke"))
    ensure_ray()
    seconds = {}
    for label, uris in (("long", [long]), ("clips", clips)):
        manifest = work / f"{label}.txt"
        manifest.write_text("\n".join(str(u) for u in uris))
        cfg = ScoreConfig(manifest=str(manifest), output=str(work / f"scores-{label}"),
                          model=str(package), extract_actors=actors)  # fmt: skip
        start = time.perf_counter()
        summary = run_score(cfg)
        seconds[label] = time.perf_counter() - start
        assert summary.errors == 0, str(summary)
    ratio = seconds["clips"] / seconds["long"]
    print(f"  wall: long video {seconds['long']:.1f} s, {len(clips)} clips "
          f"{seconds['clips']:.1f} s ({actors} extract actors); ratio clips/long {ratio:.2f}  "
          f"(target >= 0.9)")  # fmt: skip
    return ratio


def bench_long_video(args: argparse.Namespace) -> dict[str, float]:
    from emotiw.core.config import MediaConfig
    from emotiw.io.windows import WindowConfig, plan, probe

    work = Path(tempfile.mkdtemp(prefix="emotiw-bench-long-"))
    frames = int(args.minutes * 60 * FPS)
    per_window = 5 * FPS
    print(f"writing a {args.minutes:g}-minute H.264 video (GOP {args.gop}) and its "
          f"{frames // per_window} 5 s clips to {work} ...", flush=True)  # fmt: skip
    long = _write(work / "long.mp4", 0, frames, args.gop)
    (work / "clips").mkdir()
    clips = [_write(work / "clips" / f"w{i:04d}.mp4", i * per_window, per_window, args.gop)
             for i in range(frames // per_window)]  # fmt: skip
    windows = plan(probe(str(long)), WindowConfig(), MediaConfig())
    sample = windows[:: max(1, len(windows) // args.sample)][: args.sample]
    print(f"long-video: {len(windows)} windows of 5 s, {len(sample)} measured for decode and S3")
    out = {}
    if "decode" in args.only:
        out["decode_ratio"] = _decode_ratio(long, clips, sample, args.repeat)
    if "s3" in args.only:
        out["s3_bytes_ratio"] = _s3_ratio(long, sample, work)
    if "memory" in args.only:
        peaks = {"5 s clip": _peak_kib(clips[0]), f"{args.minutes:g} min": _peak_kib(long)}
        if args.hours:
            big = _write(work / "hours.mp4", 0, int(args.hours * 3600 * FPS), args.gop)
            peaks[f"{args.hours:g} h"] = _peak_kib(big)
        base = peaks["5 s clip"]
        print("  extract peak RSS: " + ", ".join(
            f"{k} {v / 1024:.0f} MiB ({v / base:.2f}x)" for k, v in peaks.items()
        ) + "  (target <= 1.1x)")  # fmt: skip
        out["memory_ratio"] = max(peaks.values()) / base
    if "wall" in args.only:
        out["wall_ratio"] = _wall_ratio(long, clips, work, args.actors)
    return out
