"""``python -m benchmarks STAGE``: the benchmarks' command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from benchmarks import (
    audio,
    backends,
    commits,
    decode,
    face,
    int8,
    isolation,
    long_video,
    memory,
    pose,
    scale,
    scene,
    score,
    train,
    train_memory,
)
from benchmarks.harness import ints


def _one_clip_args(p: argparse.ArgumentParser) -> None:
    """The paper configuration's clip, as `backends` and `int8` both measure it."""
    p.add_argument("--corpus", default=None, help="directory of clips (default: write one)")
    p.add_argument("--people", type=int, default=6, help="people per frame (paper: 6.2)")
    p.add_argument("--faces", type=int, default=72, help="FER crops per clip (6 x 12 frames)")
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--cache", default=None, help="export cache (default: a new temp folder)")
    p.add_argument("--seed", type=int, default=0)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="emotiw benchmarks: each figure as a ratio to a same-run baseline"
    )
    sub = parser.add_subparsers(dest="stage", required=True)
    p = sub.add_parser("decode", help="media.decode vs the PyAV decode-only limit")
    p.add_argument("--corpus", default=None, help="directory of clips (default: write one)")
    p.add_argument("--n", type=int, default=16, help="clips to write when --corpus is not given")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--threads", type=int, default=0, help="decoder threads (0 = FFmpeg auto)")
    p.set_defaults(func=decode.bench_decode)
    p = sub.add_parser("isolation", help="clips/s with each clip in a child process vs none")
    p.add_argument("--corpus", default=None, help="directory of clips (default: write one)")
    p.add_argument("--n", type=int, default=8, help="clips to write when --corpus is not given")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeat", type=int, default=3)
    p.set_defaults(func=isolation.bench_isolation)
    p = sub.add_parser("face", help="face extractor: detection vs FER, detection settings")
    p.add_argument("--corpus", default=None, help="directory of clips (default: write one)")
    p.add_argument("--n", type=int, default=6, help="clips to write when --corpus is not given")
    p.add_argument("--frames", type=int, default=24, help="synthetic frames with known faces")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=face.bench_face)
    p = sub.add_parser("pose", help="keypoint extraction speed vs input size")
    p.add_argument("--corpus", default=None, help="directory of clips (default: write one)")
    p.add_argument(
        "--sizes",
        type=ints,
        default=[160, 240, 320],
        help="input short sides to measure (comma-separated)",
    )
    p.add_argument("--people", type=int, default=6, help="people per frame (paper: 6.2)")
    p.add_argument("--frames", type=int, default=12, help="sampled frames run (paper: 12)")
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=pose.bench_pose)
    p = sub.add_parser("audio", help="audio embedding speed, batching windows of many clips")
    p.add_argument("--corpus", default=None, help="directory of clips (default: write one)")
    p.add_argument("--n", type=int, default=8, help="clips to write when --corpus is not given")
    p.add_argument(
        "--batch",
        type=ints,
        default=[1, 2, 8, 88],
        help="windows per forward pass to compare (comma-separated; the first is the baseline)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=audio.bench_audio)
    p = sub.add_parser("scene", help="scene backbone and heads speed; stored-feature sizes")
    p.add_argument("--corpus", default=None, help="directory of clips (default: write one)")
    p.add_argument(
        "--backbones",
        type=lambda text: text.split(","),
        default=["resnet50", "efficientnet-lite0"],
    )
    p.add_argument(
        "--batch",
        type=ints,
        default=[1, 4, 24],
        help="frames per backbone forward to compare with 12 (one clip)",
    )
    p.add_argument("--head-batch", type=int, default=8, help="clips per heads forward")
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=scene.bench_scene)
    p = sub.add_parser("backends", help="front-ends per inference backend, ratios to eager")
    _one_clip_args(p)
    p.add_argument("--backends", type=lambda t: t.split(","),
                   default=["eager", "compile", "onnxruntime", "openvino"],
                   help="the first is the baseline")  # fmt: skip
    p.add_argument("--front-ends", type=lambda t: t.split(","), default=list(backends.FRONT_ENDS))
    p.set_defaults(func=backends.bench_backends)
    p = sub.add_parser("int8", help="ONNX Runtime int8 vs float32 per front-end, with parity")
    _one_clip_args(p)
    p.set_defaults(func=int8.bench_int8)
    p = sub.add_parser("train", help="Ray Train samples/s of the heads, 1 vs 2 workers")
    p.add_argument("--heads", type=lambda text: text.split(","), default=["audio", "face"])
    p.add_argument("--workers", type=ints, default=[1, 2])
    p.add_argument("--n", type=int, default=512, help="synthetic training clips")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=train.bench_train)
    p = sub.add_parser("score", help="scoring job clips/s vs the bound from its stages")
    p.add_argument("--n", type=int, default=24, help="sample clips")
    p.add_argument("--actors", type=ints, default=[1, 2])
    p.add_argument("--batch", type=int, default=8, help="model-stage batch (clips)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=score.bench_score)
    p = sub.add_parser("long-video", help="a long video's windows vs the same minutes as clips")
    p.add_argument("--minutes", type=float, default=20.0, help="length of the long video")
    p.add_argument("--hours", type=float, default=2.0, help="also weigh one this long (0: no)")
    p.add_argument("--gop", type=int, default=250, help="frames between keyframes")
    p.add_argument("--sample", type=int, default=24, help="windows timed for decode and S3")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--actors", type=int, default=2, help="extract actors of both runs")
    parts = ["decode", "s3", "memory", "wall"]
    p.add_argument("--only", type=lambda v: v.split(","), default=parts,
                   help="figures to measure (comma-separated: decode,s3,memory,wall)")  # fmt: skip
    p.set_defaults(func=long_video.bench_long_video)
    p = sub.add_parser("commits", help="chunked commits vs one commit (no-op stages)")
    p.add_argument("--n", type=int, default=20_000, help="clips (synthetic score rows)")
    p.add_argument("--commit-every", type=int, default=1000)
    p.add_argument("--targets", type=lambda t: t.split(","), default=["local", "s3"])
    p.set_defaults(func=commits.bench_commits)
    p = sub.add_parser("scale", help="orchestration ms/clip and driver RSS at 1k-100k clips")
    p.add_argument("--sizes", type=ints, default=[1000, 10_000, 100_000])
    p.add_argument("--baseline-max", type=int, default=10_000,
                   help="largest size the old one-block-per-clip plan is measured at")  # fmt: skip
    p.add_argument("--real", type=int, default=0,
                   help="also score this many tiny clips with the real job")  # fmt: skip
    p.set_defaults(func=scale.bench_scale)
    p = sub.add_parser("actor-memory", help="actor peak RSS on the worst admitted inputs")
    p.add_argument("--frames-8k", type=int, default=30, help="frames of the 8K UHD clip")
    p.add_argument("--long-s", type=int, default=1200, help="seconds of the long video")
    p.add_argument("--batch", type=int, default=8, help="model-stage batch (clips)")
    p.add_argument("--frame-batches", type=ints, default=[32, 8],
                   help="model-stage frames per forward to measure (comma-separated)")  # fmt: skip
    p.add_argument("--presets", type=lambda t: t.split(","), default=["paper", "cpu-smoke"])
    p.add_argument("--inputs", type=lambda t: t.split(","), default=list(memory.INPUTS),
                   help="which inputs to write and measure (comma-separated)")  # fmt: skip
    p.set_defaults(func=memory.bench_memory)
    p = sub.add_parser("train-memory", help="training driver peak RSS at 100 / 1,000 clips")
    p.add_argument("--rows", type=ints, default=[100, 1000])
    p.set_defaults(func=train_memory.bench_train_memory)
    args = parser.parse_args(argv)
    args.func(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
