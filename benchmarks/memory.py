"""actor-memory: peak RSS of one extract actor's work and one model actor's work on the worst
inputs the guards still admit, each in a fresh process: the peak while its models load and the
peak of the work alone (VmHWM, reset in between), against the same work on a sample clip
measured in the same run (the baseline).

Inputs (`write_inputs`): a sample clip; an 8K UHD clip (the largest frame `max_frame_pixels`
admits), decoded with one thread (an actor's CPU share) and with FFmpeg's own choice (every
core + 1); 8-channel 192 kHz audio; 32 streams (`max_streams`); a 20-minute video (decoding
stops at `max_duration_s`). Extract: the scoring job's `ItemExtractor` (pose deferred to the
model stage); model: `ClipScorer` on `--batch` rows of the 8K clip's features at each
`--frame-batches` size; per preset (`--presets`: paper and cpu-smoke). Weights are
random-init everywhere (memory does not depend on the values). The declared memory defaults
(`emotiw.core.config`: EXTRACT_ACTOR_GIB, MODEL_*) come from these peaks, with headroom.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.harness import random_package, run_child


def random_init(preset: str):  # type: ignore[no-untyped-def]
    """A preset's modality configs with random-init weights (same shapes as pretrained)."""
    from emotiw.models.features import ModalityConfigs

    configs = ModalityConfigs.preset(preset)
    return ModalityConfigs({
        name: dataclasses.replace(cfg, weights="random-init") if hasattr(cfg, "weights") else cfg
        for name, cfg in configs.configs.items()
    })  # fmt: skip


def _rss() -> tuple[int, int]:
    """(VmRSS, VmHWM) of this process in MiB."""
    status = Path("/proc/self/status").read_text()
    return tuple(int(status.split(f"{k}:")[1].split()[0]) // 1024 for k in ("VmRSS", "VmHWM"))  # type: ignore[return-value]


def _reset_peak() -> None:
    """Start VmHWM over from the current RSS (Linux: clear_refs 5), so the next peak is the
    work's alone, models already loaded."""
    Path("/proc/self/clear_refs").write_text("5")


def _report(loaded_peak: int, seconds: float) -> None:
    import json

    work_peak = _rss()[1]
    print(json.dumps({"load_mib": loaded_peak, "work_mib": work_peak, "seconds": seconds}))


def write_media(
    path: str, size: tuple[int, int], fps: int, frames: int, audio: tuple[int, str, float] = (),
    n_audio: int = 0, codec: str = "libx264",
) -> None:  # fmt: skip
    """A video stream of `frames` moving-noise frames, then `n_audio` audio streams of
    (rate, layout, seconds) each; every stream is added before the first packet is written."""
    import av

    with av.open(path, "w") as out:
        video = out.add_stream(codec, rate=fps)
        video.width, video.height, video.pix_fmt = size[0], size[1], "yuv420p"
        video.options = {"preset": "ultrafast"}
        sounds = [out.add_stream("pcm_s16le", rate=audio[0], layout=audio[1])
                  for _ in range(n_audio)]  # fmt: skip
        base = np.random.default_rng(0).integers(0, 255, (size[1] // 8, size[0] // 8, 3),
                                                 dtype=np.uint8)  # fmt: skip
        for i in range(frames):
            img = np.roll(base, i, axis=1).repeat(8, axis=0).repeat(8, axis=1)
            out.mux(video.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
        out.mux(video.encode(None))
        for stream in sounds:
            rate, layout, seconds = audio
            channels = len(av.AudioLayout(layout).channels)
            step = 4096
            tone = (3000 * np.sin(np.arange(step) / 7)).astype(np.int16)
            piece = np.ascontiguousarray(np.tile(tone[:, None], (1, channels)).reshape(1, -1))
            for start in range(0, int(seconds * rate), step):
                frame = av.AudioFrame.from_ndarray(piece, format="s16", layout=layout)
                frame.sample_rate, frame.pts = rate, start
                out.mux(stream.encode(frame))
            out.mux(stream.encode(None))


INPUTS = ("sample", "8k", "audio-8ch-192k", "streams-32", "long-20min")


def write_inputs(
    folder: str, frames_8k: int = 30, long_s: int = 1200, names: tuple[str, ...] = INPUTS
) -> dict[str, str]:
    """The hostile inputs above (those in `names`), written into `folder`; name -> path."""
    from emotiw.io.corpus import write_sample_corpus

    write_sample_corpus(folder, 1, seed=0)
    paths = {"sample": str(next(Path(folder).glob("*.mp4")))}
    writers = {
        "8k": ("uhd8k.mkv", lambda p: write_media(p, (7680, 4320), 25, frames_8k)),
        "audio-8ch-192k": ("audio8ch.mkv", lambda p: write_media(
            p, (480, 320), 25, 250, (192_000, "7.1", 10.0), 1)),
        "streams-32": ("streams32.mkv", lambda p: write_media(
            p, (480, 320), 25, 150, (48_000, "stereo", 6.0), 31)),
        "long-20min": ("long.mkv", lambda p: write_media(p, (480, 320), 5, long_s * 5)),
    }  # fmt: skip
    for name in names:
        if name in writers:
            filename, write = writers[name]
            paths[name] = f"{folder}/{filename}"
            write(paths[name])
    return {name: paths[name] for name in names}


def _extract_child(path: str, threads: int, preset: str) -> None:
    from emotiw.core.config import MediaConfig
    from emotiw.io.weights import WeightsConfig
    from emotiw.models.items import ItemExtractor

    extractor = ItemExtractor(random_init(preset), MediaConfig(decode_threads=threads),
                              WeightsConfig(allow_download=False), defer=True)  # fmt: skip
    loaded = _rss()[1]
    _reset_peak()
    start = time.perf_counter()
    row = extractor({"uri": path, "video_id": "x", "label": None}, None, "bench")
    assert row.get("error") is None, row.get("error")
    _report(loaded, time.perf_counter() - start)


def _model_child(path: str, package: str, batch: int, frame_batch: int, preset: str) -> None:
    import torch

    from emotiw.core.config import MediaConfig
    from emotiw.io.weights import WeightsConfig
    from emotiw.models.features import rows_to_table
    from emotiw.models.inference import ClipScorer, ModelRef
    from emotiw.models.items import ItemExtractor

    torch.set_num_threads(1)  # as one model actor of 1 CPU computes
    extractor = ItemExtractor(random_init(preset), MediaConfig(decode_threads=1),
                              WeightsConfig(allow_download=False), defer=True)  # fmt: skip
    row = extractor({"uri": path, "video_id": "x", "label": None}, None, "bench")
    rows = rows_to_table([{**row, "etag": "e", "size_bytes": 1}] * batch)
    del extractor
    _reset_peak()
    scorer = ClipScorer(package, ModelRef(package, "bench", None), device="cpu",
                        frame_batch=frame_batch)  # fmt: skip
    loaded = _rss()[1]
    _reset_peak()
    start = time.perf_counter()
    out = scorer(rows, "bench").to_pylist()
    assert all(r["error"] is None for r in out), out[0]["error"]
    _report(loaded, time.perf_counter() - start)


def bench_memory(args: argparse.Namespace) -> dict[str, float]:
    """Peak RSS per actor kind, preset and input: loading the models, then the work alone."""
    work = tempfile.mkdtemp(prefix="emotiw-bench-memory-")
    print(f"writing the inputs to {work} ...", flush=True)
    paths = write_inputs(work, args.frames_8k, args.long_s, tuple(args.inputs))
    figures: dict[str, float] = {}

    def show(key: str, got: dict[str, float]) -> None:
        figures[f"{key}_load"], figures[f"{key}_work"] = got["load_mib"], got["work_mib"]
        print(f"{key:>40}: load {got['load_mib']:6.0f} MiB, work peak {got['work_mib']:6.0f} "
              f"MiB ({got['seconds']:.1f} s)", flush=True)  # fmt: skip

    for preset in args.presets:
        runs = [(name, "1") for name in paths] + ([("8k", "0")] if "8k" in paths else [])
        for name, threads in runs:
            got = run_child("benchmarks.memory", "extract", paths[name], threads, preset)
            show(f"extract {preset} {name}" + (" ffmpeg-threads" if threads == "0" else ""), got)
        package = str(random_package(f"{work}/model-{preset}", random_init(preset)))
        for frame_batch in args.frame_batches:
            got = run_child("benchmarks.memory", "model", paths.get("8k", paths["sample"]), package,
                            str(args.batch), str(frame_batch), preset)  # fmt: skip
            show(f"model {preset} batch {args.batch} frames/forward {frame_batch}", got)
    print(f"decoder threads: 1 (an actor's CPU share) against FFmpeg's own choice here, "
          f"{(os.cpu_count() or 1) + 1}")  # fmt: skip
    return figures


if __name__ == "__main__":
    import sys

    argv = sys.argv[1:]
    assert argv[0] == "--child"
    if argv[1] == "extract":
        _extract_child(argv[2], int(argv[3]), argv[4])
    else:
        _model_child(argv[2], argv[3], int(argv[4]), int(argv[5]), argv[6])
