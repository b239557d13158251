"""decode: clips/s of `emotiw.io.media.decode` (sampling 12 frames, RGB + resize of those frames
only, mono 48 kHz resampling) against the decode-only limit: PyAV decoding every packet of the same
clips' video and audio streams with the same thread settings and no conversion at all. Both read the
clips from memory, so storage I/O is excluded. Target ratio >= 0.8."""

from __future__ import annotations

import argparse
import io
import statistics

from benchmarks.harness import load_corpus, time_round


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


def bench_decode(args: argparse.Namespace) -> dict[str, float]:
    from emotiw.core.config import MediaConfig
    from emotiw.io.media import decode

    cfg = MediaConfig(decode_threads=args.threads)
    clips = load_corpus(args.corpus, args.n, args.seed)
    ours = lambda data: decode(data, cfg)  # noqa: E731
    limit = lambda data: decode_only(data, cfg.decode_threads)  # noqa: E731
    time_round(ours, clips[:2])  # warm-up: codec init, page cache, lazy imports
    time_round(limit, clips[:2])
    t_ours, t_limit = [], []
    for _ in range(args.repeat):  # interleaved, so drift in machine load hits both alike
        t_ours.append(time_round(ours, clips))
        t_limit.append(time_round(limit, clips))
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
