"""Benchmarks, one subcommand per stage; each prints its figure as a ratio against a baseline
measured in the same run (these machines are shared and noisy: compare ratios, not times).

    python jobs/benchmark.py decode [--corpus DIR] [--n 16] [--repeat 5]

decode: clips/s of `emotiw.media.decode` (sampling 12 frames, RGB + resize of those frames only,
    mono 48 kHz resampling) against the decode-only limit: PyAV decoding every packet of the
    same clips' video and audio streams with the same thread settings and no conversion at all.
    Both read the clips from memory, so storage I/O is excluded. Target ratio >= 0.8.
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence


def _load_corpus(corpus: str | None, n: int, seed: int) -> list[bytes]:
    from emotiw.corpus import write_sample_corpus
    from emotiw.storage import list_videos, read_bytes

    if corpus is None:
        tmp = tempfile.mkdtemp(prefix="emotiw-bench-")
        print(f"writing {n} sample clips to {tmp} ...", flush=True)
        write_sample_corpus(tmp, n, seed)
        corpus = tmp
    return [read_bytes(uri) for uri in list_videos(corpus)]


def decode_only(data: bytes, threads: int) -> int:
    """The decode-only limit: every packet of every audio/video stream, no conversion."""
    import av

    frames = 0
    with av.open(io.BytesIO(data), mode="r") as container:
        video = container.streams.video[0]
        video.thread_type = "AUTO"
        video.codec_context.thread_count = threads
        for packet in container.demux(video, *container.streams.audio[:1]):
            frames += len(packet.decode())
    return frames


def _time_round(fn: Callable[[bytes], object], clips: Sequence[bytes]) -> float:
    start = time.perf_counter()
    for data in clips:
        fn(data)
    return time.perf_counter() - start


def bench_decode(args: argparse.Namespace) -> dict[str, float]:
    from emotiw.config import MediaConfig
    from emotiw.media import decode

    cfg = MediaConfig(decode_threads=args.threads)
    clips = _load_corpus(args.corpus, args.n, args.seed)
    ours = lambda data: decode(data, cfg)  # noqa: E731
    limit = lambda data: decode_only(data, cfg.decode_threads)  # noqa: E731
    _time_round(ours, clips[:2])  # warm-up: codec init, page cache, lazy imports
    _time_round(limit, clips[:2])
    t_ours, t_limit = [], []
    for _ in range(args.repeat):  # interleaved, so drift in machine load hits both alike
        t_ours.append(_time_round(ours, clips))
        t_limit.append(_time_round(limit, clips))
    ours_cps = len(clips) / statistics.median(t_ours)
    limit_cps = len(clips) / statistics.median(t_limit)
    ratio = ours_cps / limit_cps
    print(
        f"decode: {len(clips)} clips x {args.repeat} rounds, decoder threads "
        f"{cfg.decode_threads or 'auto'}\n"
        f"  media.decode (12 frames RGB 480x320 + mono 48 kHz): {ours_cps:7.1f} clips/s "
        f"({1000 / ours_cps:.1f} ms/clip)\n"
        f"  decode-only limit (all packets, no conversion):     {limit_cps:7.1f} clips/s "
        f"({1000 / limit_cps:.1f} ms/clip)\n"
        f"  ratio media.decode / limit = {ratio:.2f}  (target >= 0.80)"
    )
    return {"clips_per_s": ours_cps, "limit_clips_per_s": limit_cps, "ratio": ratio}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="stage", required=True)
    p = sub.add_parser("decode", help="media.decode vs the PyAV decode-only limit")
    p.add_argument("--corpus", default=None, help="directory of clips (default: write one)")
    p.add_argument("--n", type=int, default=16, help="clips to write when --corpus is not given")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--threads", type=int, default=0, help="decoder threads (0 = FFmpeg auto)")
    p.set_defaults(func=bench_decode)
    args = parser.parse_args(argv)
    args.func(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
