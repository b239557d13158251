"""Benchmarks, one subcommand per stage; each prints its figure as a ratio against a baseline
measured in the same run (these machines are shared and noisy: compare ratios, not times).

    python jobs/benchmark.py decode [--corpus DIR] [--n 16] [--repeat 5]
    python jobs/benchmark.py face [--corpus DIR] [--n 6] [--frames 24]
    python jobs/benchmark.py pose [--sizes 160,240,320] [--people 6]
    python jobs/benchmark.py audio [--n 8] [--batch 1,2,8,88]
    python jobs/benchmark.py scene [--backbones resnet50,efficientnet-lite0] [--batch 1,4,12]
    python jobs/benchmark.py train [--heads audio,face] [--workers 1,2] [--n 512]
    python jobs/benchmark.py score [--n 24] [--actors 1,2] [--batch 8]

decode: clips/s of `emotiw.media.decode` (sampling 12 frames, RGB + resize of those frames only,
    mono 48 kHz resampling) against the decode-only limit: PyAV decoding every packet of the
    same clips' video and audio streams with the same thread settings and no conversion at all.
    Both read the clips from memory, so storage I/O is excluded. Target ratio >= 0.8.

face: clips/s of the face extractor on decoded sample-corpus clips, split into detection and
    FER time; then detection settings (frame scale x dlib upsampling) on synthetic 480x320
    frames with real faces at known boxes (40-120 px), each as speed relative to the default
    (full frame, upsample 1) and face recall (IoU >= 0.3), overall and for faces < 80 px.

pose: frames/s of Keypoint R-CNN on the 12 sampled 480x320 frames of a clip, for several
    input sizes, with a fixed number of people per frame (random-init weights with the score
    threshold at 0 and `max_people` = --people: the cost depends on the architecture and the
    number of people, not on the weight values), and the per-clip cost as a multiple of the
    decode and face stages measured in the same run.

audio: clips/s of the OpenL3 embedding (11 windows of 1 s per clip, random-init weights: the
    cost does not depend on the weight values) with the windows of many clips batched into one
    forward, for several batch sizes, against one window per forward in the same run; the
    log-mel alternative; and the per-clip cost as a multiple of the decode stage.

scene: sizes first (what the feature table would store per clip: the 12 frames as JPEG, on
    real photos and on the sample corpus, against the backbone's feature maps in float16 and
    float32), then frames/s of the time-distributed backbone at 480x320 (random-init weights:
    the cost does not depend on their values) for memory format x autograd mode x frames per
    forward, each against the plain NCHW / no_grad / one-clip configuration measured in the
    same run; then clips/s of the three ConvLSTM heads + FC on precomputed maps. On CUDA
    (when available) the same with bfloat16 autocast.

train: training samples/s of each head under Ray Train's TorchTrainer (DDP over gloo) with 1
    and 2 CPU workers, on synthetic features of the real shapes (the cost does not depend on
    the values), from the median per-epoch training time (the workers' start-up is printed
    separately), and 2 workers as a ratio of 1. Each worker gets one CPU, hence one torch
    thread: the ratio shows what data parallelism buys on this machine.

score: the scoring job (local Ray: CPU extract pool -> one model actor -> Parquet) on the
    sample corpus, against a bound computed from each stage's cost measured alone in the same
    run (one thread, as one actor has): min(actors / CPU stage, 1 / model stage, cores / both).
    Steady-state clips/s come from two runs (a quarter of the clips and all of them), so the
    fixed start-up (Ray Data planning, actors loading models) is shown apart; pipeline
    efficiency = steady state / bound (target >= 0.85). Peak RSS per actor kind is sampled
    from /proc while the job runs. 1 vs 2 CPU actors. Model: random-init heads over
    EfficientNet-Lite0 (scene), log-mel (audio) and face (cost does not depend on the values).
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence

import numpy as np


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


def _known_face_frames(n: int, seed: int) -> tuple[list, list]:
    """Frames with astronaut faces pasted at known places; returns (frames, boxes per frame)."""
    from PIL import Image

    from emotiw.corpus import _ASTRONAUT_FACE, _FACE_MARGIN, _face_crop

    rng = np.random.default_rng(seed)
    crop = _face_crop()
    share = (_ASTRONAUT_FACE[2] - _ASTRONAUT_FACE[0]) / crop.shape[0]  # face / crop side
    frames, truth = [], []
    for _ in range(n):
        frame = np.clip(rng.normal(110, 25, (320, 480, 3)), 0, 255).astype(np.uint8)
        boxes: list[tuple[int, int, int, int]] = []
        for _try in range(40):
            if len(boxes) == 4:
                break
            face_px = int(rng.uniform(40, 120))
            side = round(face_px / share)
            y, x = int(rng.integers(0, 320 - side)), int(rng.integers(0, 480 - side))
            if any(
                y < b + 10 and y + side > t - 10 and x < r + 10 and x + side > lft - 10
                for t, r, b, lft in [(b[0] - 20, b[1] + 20, b[2] + 20, b[3] - 20) for b in boxes]
            ):
                continue
            patch = Image.fromarray(crop).resize((side, side), Image.Resampling.BILINEAR)
            frame[y : y + side, x : x + side] = np.asarray(patch)
            m = round(_FACE_MARGIN * face_px)
            boxes.append((y + m, x + m + face_px, y + m + face_px, x + m))
        frames.append(frame)
        truth.append(boxes)
    return frames, truth


def bench_face(args: argparse.Namespace) -> dict[str, float]:
    from emotiw.media import decode
    from emotiw.modalities import face

    clips = [decode(data) for data in _load_corpus(args.corpus, args.n, args.seed)]
    extractor = face.Extractor(face.Config())
    extractor(clips[0])  # warm-up
    t_detect = t_fer = 0.0
    n_faces = 0
    for clip in clips:
        start = time.perf_counter()
        boxes = extractor.detect(clip)
        t_detect += time.perf_counter() - start
        start = time.perf_counter()
        n_faces += len(extractor.classify(clip, boxes))
        t_fer += time.perf_counter() - start
    total = t_detect + t_fer
    print(
        f"face: {len(clips)} decoded clips, {n_faces} faces, default detector "
        f"(hog, upsample {extractor.cfg.upsample}, scale {extractor.cfg.detect_scale})\n"
        f"  extractor: {len(clips) / total:6.2f} clips/s ({1000 * total / len(clips):.0f} ms/clip)"
        f" = detection {1000 * t_detect / len(clips):.0f} ms ({100 * t_detect / total:.0f} %)"
        f" + FER {1000 * t_fer / len(clips):.0f} ms ({100 * t_fer / total:.0f} %, "
        f"{1000 * t_fer / max(n_faces, 1):.2f} ms/face, one batch per clip)"
    )

    frames, truth = _known_face_frames(args.frames, args.seed + 1)
    n_truth = sum(len(t) for t in truth)
    n_small = sum(b[2] - b[0] < 80 for t in truth for b in t)
    n_tiny = sum(b[2] - b[0] < 56 for t in truth for b in t)
    settings = [(1.0, 1), (1.0, 0), (0.75, 1), (0.5, 1), (1.0, 2)]
    rows = []
    for scale, upsample in settings:
        detector = face.FaceDetector(face.Config(detect_scale=scale, upsample=upsample))
        detector(frames[0])
        start = time.perf_counter()
        found = [face.filter_boxes(detector(f), face.Config.min_face_px, 99) for f in frames]
        seconds = (time.perf_counter() - start) / len(frames)
        hit = hit_small = hit_tiny = 0
        for boxes, gt in zip(found, truth, strict=True):
            for g in gt:
                if any(face.box_iou(g, b) >= 0.3 for b in boxes):
                    hit += 1
                    hit_small += g[2] - g[0] < 80
                    hit_tiny += g[2] - g[0] < 56
        recalls = (hit / n_truth, hit_small / max(n_small, 1), hit_tiny / max(n_tiny, 1))
        rows.append((scale, upsample, seconds, *recalls))
    base = rows[0][2]
    print(
        f"  detection on {len(frames)} frames 480x320 with {n_truth} known faces "
        f"({n_small} smaller than 80 px, {n_tiny} smaller than 56 px):"
    )
    print("    scale  upsample  ms/frame  speed vs full/1  recall  recall<80px  recall<56px")
    for scale, upsample, seconds, recall, recall_small, recall_tiny in rows:
        print(
            f"    {scale:5.2f}  {upsample:8d}  {1000 * seconds:8.1f}  {base / seconds:14.2f}x"
            f"  {recall:6.2f}  {recall_small:11.2f}  {recall_tiny:11.2f}"
        )
    return {"clips_per_s": len(clips) / total, "detect_share": t_detect / total}


def _per_clip_seconds(fn: Callable[[], object], repeat: int) -> float:
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - start) / repeat


def bench_pose(args: argparse.Namespace) -> dict[str, float]:
    import torch

    from emotiw.media import decode
    from emotiw.modalities import face, pose

    data = _load_corpus(args.corpus, 2, args.seed)[0]
    clip = decode(data)
    t_decode = _per_clip_seconds(lambda: decode(data), 5)
    face_extractor = face.Extractor(face.Config())
    t_face = _per_clip_seconds(lambda: face_extractor(clip), 2)
    print(
        f"pose: Keypoint R-CNN (ResNet-50 FPN) on 12 frames 480x320, torch threads "
        f"{torch.get_num_threads()}, random-init weights with {args.people} people per frame\n"
        f"  same-run baselines per clip: decode {1000 * t_decode:.0f} ms, "
        f"face extractor {1000 * t_face:.0f} ms"
    )
    print("    input  people  ms/clip  frames/s  x decode  x face")
    results: dict[str, float] = {}
    runs = [(size, args.people) for size in args.sizes] + [(args.sizes[-1], 1)]
    for size, people in runs:
        cfg = pose.Config(
            weights="random-init",
            input_size=size,
            score_threshold=0.0,
            keypoint_threshold=-1e9,
            max_people=people,
            device="cpu",
        )
        extractor = pose.Extractor(cfg)
        seconds = _per_clip_seconds(lambda extractor=extractor: extractor(clip), args.repeat)
        n_people = int(extractor(clip).features[:, -1].sum())
        results[f"{size}x{people}"] = seconds
        print(
            f"    {size:5d}  {n_people / 12:6.1f}  {1000 * seconds:7.0f}  {12 / seconds:8.2f}"
            f"  {seconds / t_decode:8.0f}  {seconds / t_face:6.1f}"
        )
    return results


def bench_audio(args: argparse.Namespace) -> dict[str, float]:
    import torch

    from emotiw.media import decode
    from emotiw.modalities import audio

    data = _load_corpus(args.corpus, args.n, args.seed)
    clips = [decode(d) for d in data]
    t_decode = _per_clip_seconds(lambda: decode(data[0]), 5)
    print(
        f"audio: {len(clips)} clips x 11 windows of 1 s, torch threads {torch.get_num_threads()}, "
        f"OpenL3 mel256 6144-d with random-init weights\n"
        f"  same-run baseline: decode {1000 * t_decode:.0f} ms per clip"
    )
    print("    features  windows/forward  ms/clip  clips/s  speed vs 1/forward  x decode")
    results: dict[str, float] = {}
    base = None
    for features, batch in [("openl3", b) for b in args.batch] + [("logmel", max(args.batch))]:
        extractor = audio.Extractor(
            audio.Config(features=features, weights="random-init", window_batch=batch)
        )
        extractor.extract_many(clips[:1])  # warm-up
        start = time.perf_counter()
        extractor.extract_many(clips)
        per_clip = (time.perf_counter() - start) / len(clips)
        if features == "openl3" and base is None:
            base = per_clip
        results[f"{features}@{batch}"] = per_clip
        print(
            f"    {features:8s}  {batch:15d}  {1000 * per_clip:7.0f}  {1 / per_clip:7.2f}"
            f"  {base / per_clip:17.2f}x  {per_clip / t_decode:8.1f}"
        )
    return results


def _photo_frames(n: int) -> np.ndarray:
    """``n`` real photographs (scikit-image's bundled ones) resized to 480x320."""
    from PIL import Image
    from skimage import data

    photos = [
        data.astronaut(),
        data.chelsea(),
        data.coffee(),
        data.rocket(),
        data.immunohistochemistry(),
    ]
    return np.stack([
        np.asarray(Image.fromarray(photos[i % len(photos)]).convert("RGB").resize((480, 320)))
        for i in range(n)
    ])  # fmt: skip


def _synced(fn: Callable[[], object], device: str) -> Callable[[], None]:
    """`fn` followed by a CUDA synchronise, so that timings include the GPU work."""
    import torch

    def run() -> None:
        fn()
        if device == "cuda":
            torch.cuda.synchronize()

    return run


def bench_scene(args: argparse.Namespace) -> dict[str, float]:
    import torch

    from emotiw.media import decode
    from emotiw.modalities import scene

    data = _load_corpus(args.corpus, 2, args.seed)[0]
    clip = decode(data)
    t_decode = _per_clip_seconds(lambda: decode(data), 5)
    photos = _photo_frames(12)
    mask = np.ones(12, dtype=bool)
    t_jpeg = _per_clip_seconds(lambda: scene.encode_frames(photos, mask), 3)
    blobs = scene.encode_frames(photos, mask)
    t_unjpeg = _per_clip_seconds(lambda: scene.decode_frames(blobs, 320, 480), 3)
    jpeg_photos = sum(map(len, blobs))
    jpeg_corpus = sum(map(len, scene.encode_frames(clip.frames, clip.frame_mask)))
    jpeg_corpus = jpeg_corpus * 12 / max(1, int(clip.frame_mask.sum()))
    print(
        f"scene: 12 frames 480x320 per clip, torch threads {torch.get_num_threads()}\n"
        f"  same-run baseline: decode {1000 * t_decode:.0f} ms per clip\n"
        f"  JPEG q90 per clip: {jpeg_photos / 1e6:.2f} MB (real photos), "
        f"{jpeg_corpus / 1e6:.2f} MB (sample corpus); encode {1000 * t_jpeg:.0f} ms, "
        f"decode {1000 * t_unjpeg:.0f} ms per clip"
    )
    results: dict[str, float] = {"jpeg_mb": jpeg_photos / 1e6}
    h, w = scene.Config().map_size()
    for name in args.backbones:
        channels = scene.BACKBONE_CHANNELS[name]
        maps_mb = 12 * channels * h * w * 2 / 1e6
        results[f"{name}:maps_fp16_mb"] = maps_mb
        print(
            f"  {name} maps per clip [12, {channels}, {h}, {w}]: {maps_mb:.1f} MB float16, "
            f"{2 * maps_mb:.1f} MB float32 = {maps_mb / (jpeg_photos / 1e6):.0f}x / "
            f"{2 * maps_mb / (jpeg_photos / 1e6):.0f}x the JPEG frames"
        )
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    frames = torch.from_numpy(np.concatenate([photos] * max(1, max(args.batch) // 12 + 1)))
    for device in devices:
        for name in args.backbones:
            print(f"  backbone {name} on {device}")
            print("    layout          mode       frames/fwd  frames/s  ms/clip  vs base  x decode")
            runs = [("nchw", "no_grad", 12), ("channels_last", "no_grad", 12),
                    ("nchw", "inference", 12), ("channels_last", "inference", 12)]  # fmt: skip
            runs += [("channels_last", "inference", b) for b in args.batch if b != 12]
            base = None
            for layout, mode, batch in runs:
                cfg = scene.Config(
                    backbone=name, weights="random-init", channels_last=layout != "nchw"
                )
                backbone = scene.Backbone(cfg).eval().to(device)
                x = frames[:batch].to(device)
                context = torch.inference_mode if mode == "inference" else torch.no_grad

                def step(backbone=backbone, x=x, context=context) -> None:
                    with context():
                        backbone(x)

                per_frame = _per_clip_seconds(_synced(step, device), args.repeat) / batch
                base = base or per_frame
                results[f"{device}:{name}:{layout}:{mode}:{batch}"] = per_frame
                print(
                    f"    {layout:14s}  {mode:9s}  {batch:10d}  {1 / per_frame:8.1f}"
                    f"  {12000 * per_frame:7.0f}  {base / per_frame:6.2f}x"
                    f"  {12 * per_frame / t_decode:8.0f}"
                )
        head = scene.Head(scene.Config(backbone=args.backbones[0], weights="random-init"))
        head = head.eval().to(device)
        maps = torch.randn(args.head_batch, 12, head.backbone.out_channels, h, w, device=device)

        def heads_step(head=head, maps=maps) -> None:
            with torch.inference_mode():
                head.forward_head(head.forward_maps(maps))

        per_clip = _per_clip_seconds(_synced(heads_step, device), args.repeat) / args.head_batch
        results[f"{device}:heads"] = per_clip
        print(
            f"  ConvLSTM heads + FC ({args.backbones[0]} maps, {args.head_batch} clips/forward)"
            f" on {device}: {1 / per_clip:.1f} clips/s, {1000 * per_clip:.0f} ms/clip"
            f" = {per_clip / t_decode:.1f}x decode"
        )
    return results


def bench_train(args: argparse.Namespace) -> dict[str, float]:
    """Ray Train samples/s of each head for 1 and 2 CPU workers on a synthetic feature set."""
    import os

    import ray

    from emotiw.features import FeatureSet, ModalityConfigs
    from emotiw.modalities import audio, get
    from emotiw.pipeline import ensure_ray
    from emotiw.training import TrainConfig, _arrays, fit

    configs = ModalityConfigs(modalities=tuple(args.heads), audio=audio.Config(features="logmel"))
    rng = np.random.default_rng(args.seed)
    n = args.n
    inputs = {
        m: rng.standard_normal((n, *get(m).feature_shape(configs.of(m))), dtype=np.float32)
        for m in args.heads
    }
    data = FeatureSet(
        np.arange(n).astype(str).astype(object),
        rng.integers(0, 3, n),
        inputs,
        None,
        {m: np.ones(n, bool) for m in args.heads},
    )
    val = data.subset(np.arange(min(n, 32)))
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ensure_ray()
    ref = ray.put({"train": _arrays(data), "val": _arrays(val)})
    results: dict[str, float] = {}
    print(
        f"{n} synthetic clips, batch {args.batch_size} per worker, {args.epochs} epochs; "
        "samples/s from the median training time of epochs 2.. (start-up excluded)"
    )
    with tempfile.TemporaryDirectory() as run_dir:
        for name in args.heads:
            rates = {}
            for workers in args.workers:
                cfg = TrainConfig(
                    features="(synthetic)", configs=configs, workers=workers, epochs=args.epochs,
                    batch_size=args.batch_size, run_dir=run_dir,
                )  # fmt: skip
                spec = {"kind": "head", "modality": name, "cfg": configs.of(name), "seed": 0}
                start = time.perf_counter()
                _, history = fit(cfg, f"bench-{name}-{workers}", spec, ref, args.epochs)
                wall = time.perf_counter() - start
                epoch_s = statistics.median(r["epoch_s"] for r in history[1:] or history)
                rates[workers] = n / epoch_s
                print(
                    f"{name} head, {workers} worker(s): {rates[workers]:.0f} samples/s "
                    f"(epoch {epoch_s:.2f} s; whole fit incl. start-up {wall:.1f} s)",
                    flush=True,
                )
                results[f"{name}_{workers}"] = rates[workers]
            base = rates[args.workers[0]]
            for workers in args.workers[1:]:
                print(
                    f"{name} head: {workers} workers = {rates[workers] / base:.2f}x "
                    f"{args.workers[0]} worker(s)"
                )
    return results


class _ActorMemory:
    """Samples the resident memory of this machine's Ray Data actors (process titles
    ``ray::MapWorker(MapBatches(<Actor>))``) every 0.2 s: peak RSS per actor kind."""

    def __init__(self) -> None:
        import threading

        self.peak: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> _ActorMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        from pathlib import Path

        while not self._stop.wait(0.2):
            for proc in Path("/proc").iterdir():
                try:
                    if not proc.name.isdigit():
                        continue
                    title = (proc / "cmdline").read_bytes().split(b"\0")[0].decode()
                    if "MapBatches(" not in title:
                        continue
                    kind = title.split("MapBatches(")[1].split(")")[0]
                    status = (proc / "status").read_text()
                    rss = int(status.split("VmRSS:")[1].split()[0]) * 1024
                    self.peak[kind] = max(self.peak.get(kind, 0), rss)
                except (OSError, IndexError, ValueError):
                    continue


def bench_score(args: argparse.Namespace) -> dict[str, float]:
    """End-to-end scoring clips/s vs the bound from each stage's cost in isolation."""
    import os
    import shutil

    import pyarrow as pa
    import torch

    from emotiw import fusion
    from emotiw.corpus import write_sample_corpus
    from emotiw.features import ClipFeatureExtractor, ModalityConfigs, rows_to_table
    from emotiw.modalities import audio, get, scene
    from emotiw.packaging import PackagedModel, save_model
    from emotiw.pipeline import ScoreConfig, ensure_ray, run_score
    from emotiw.scoring import ClipScorer, ModelRef
    from emotiw.storage import list_video_objects, read_bytes, video_id

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    configs = ModalityConfigs(
        modalities=("scene", "audio", "face"),
        scene=scene.Config(backbone="efficientnet-lite0"),
        audio=audio.Config(features="logmel"),
    )
    work = tempfile.mkdtemp(prefix="emotiw-bench-score-")
    corpus = f"{work}/clips"
    print(f"writing {args.n} sample clips and a random-init-heads model to {work} ...")
    write_sample_corpus(corpus, args.n, args.seed)
    torch.manual_seed(0)
    heads = {m: get(m).Head(configs.of(m)) for m in configs.modalities}
    fc = fusion.build(heads, fusion.Config(modalities=configs.modalities))
    package = save_model(
        f"{work}/model",
        PackagedModel(configs, heads, {"fc": fc}, "fc", {"heads": "random-init (benchmark)"}),
    )
    objects = list_video_objects(corpus)

    # each stage alone, in this process (one core each, as one actor gets)
    torch.set_num_threads(1)
    extractor = ClipFeatureExtractor(configs)
    start = time.perf_counter()
    rows = []
    for o in objects:
        rows.append(extractor(o.uri, video_id(o.uri), read_bytes(o.uri), None, "bench"))
    t_cpu = (time.perf_counter() - start) / len(objects)
    table = rows_to_table(rows)
    table = table.append_column("etag", pa.array([o.etag for o in objects]))
    table = table.append_column("size_bytes", pa.array([o.size for o in objects]))
    scorer = ClipScorer(package, ModelRef(str(package), "bench", None), device="cpu")
    scorer(table.slice(0, args.batch), "warm-up")
    start = time.perf_counter()
    for i in range(0, table.num_rows, args.batch):
        scorer(table.slice(i, args.batch), "bench")
    t_model = (time.perf_counter() - start) / table.num_rows
    cores = os.cpu_count() or 1
    print(
        f"in isolation (1 thread): CPU stage (read+decode+extract) {t_cpu * 1000:.0f} ms/clip, "
        f"model stage (heads+fusion, batch {args.batch}) {t_model * 1000:.0f} ms/clip; "
        f"{cores} cores"
    )
    torch.set_num_threads(cores)

    ensure_ray()
    results: dict[str, float] = {}
    small = objects[: max(2, len(objects) // 4)]
    for actors in args.actors:
        timings = {}
        for label, subset in (("small", small), ("all", objects)):
            manifest = f"{work}/manifest-{label}.txt"
            with open(manifest, "w") as f:
                f.write("\n".join(o.uri for o in subset))
            out = f"{work}/scores-{actors}-{label}"
            cfg = ScoreConfig(
                manifest=manifest, output=out, model=str(package), cpu_actors=actors,
                model_batch_size=args.batch,
            )  # fmt: skip
            with _ActorMemory() as memory:
                start = time.perf_counter()
                summary = run_score(cfg)
                timings[label] = time.perf_counter() - start
            assert summary.scored == len(subset), summary
            shutil.rmtree(out, ignore_errors=True)
        # one model actor; `actors` CPU actors; all share `cores` cores
        bound = min(actors / t_cpu, 1 / t_model, cores / (t_cpu + t_model))
        overall = len(objects) / timings["all"]
        marginal = (len(objects) - len(small)) / max(timings["all"] - timings["small"], 1e-9)
        fixed = timings["small"] - len(small) / marginal
        results[f"efficiency_{actors}"] = marginal / bound
        peaks = ", ".join(f"{k} {v / 2**20:.0f} MiB" for k, v in sorted(memory.peak.items()))
        print(
            f"{actors} CPU actor(s) + 1 model actor: {len(objects)} clips in "
            f"{timings['all']:.1f} s = {overall:.2f} clips/s overall; steady state "
            f"{marginal:.2f} clips/s (from {len(small)} vs {len(objects)} clips; fixed start-up "
            f"~{fixed:.0f} s); bound {bound:.2f} clips/s -> pipeline efficiency "
            f"{marginal / bound:.2f}; peak RSS per actor: {peaks}",
            flush=True,
        )
        results[f"clips_per_s_{actors}"] = marginal
    if len(args.actors) > 1:
        a, b = args.actors[0], args.actors[-1]
        ratio = results[f"clips_per_s_{b}"] / results[f"clips_per_s_{a}"]
        print(f"{b} CPU actors = {ratio:.2f}x {a} (steady state)")
    shutil.rmtree(work, ignore_errors=True)
    return results


def _ints(text: str) -> list[int]:
    """A comma-separated list of integers (command-line values)."""
    return [int(v) for v in text.split(",")]


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
    p = sub.add_parser("face", help="face extractor: detection vs FER, detection settings")
    p.add_argument("--corpus", default=None, help="directory of clips (default: write one)")
    p.add_argument("--n", type=int, default=6, help="clips to write when --corpus is not given")
    p.add_argument("--frames", type=int, default=24, help="synthetic frames with known faces")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=bench_face)
    p = sub.add_parser("pose", help="keypoint extraction speed vs input size")
    p.add_argument("--corpus", default=None, help="directory of clips (default: write one)")
    p.add_argument(
        "--sizes",
        type=_ints,
        default=[160, 240, 320],
        help="input short sides to measure (comma-separated)",
    )
    p.add_argument("--people", type=int, default=6, help="people per frame (paper: 6.2)")
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=bench_pose)
    p = sub.add_parser("audio", help="audio embedding speed, batching windows of many clips")
    p.add_argument("--corpus", default=None, help="directory of clips (default: write one)")
    p.add_argument("--n", type=int, default=8, help="clips to write when --corpus is not given")
    p.add_argument(
        "--batch",
        type=_ints,
        default=[1, 2, 8, 88],
        help="windows per forward pass to compare (comma-separated; the first is the baseline)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=bench_audio)
    p = sub.add_parser("scene", help="scene backbone and heads speed; stored-feature sizes")
    p.add_argument("--corpus", default=None, help="directory of clips (default: write one)")
    p.add_argument(
        "--backbones",
        type=lambda text: text.split(","),
        default=["resnet50", "efficientnet-lite0"],
    )
    p.add_argument(
        "--batch",
        type=_ints,
        default=[1, 4, 24],
        help="frames per backbone forward to compare with 12 (one clip)",
    )
    p.add_argument("--head-batch", type=int, default=8, help="clips per heads forward")
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=bench_scene)
    p = sub.add_parser("train", help="Ray Train samples/s of the heads, 1 vs 2 workers")
    p.add_argument("--heads", type=lambda text: text.split(","), default=["audio", "face"])
    p.add_argument("--workers", type=_ints, default=[1, 2])
    p.add_argument("--n", type=int, default=512, help="synthetic training clips")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=bench_train)
    p = sub.add_parser("score", help="scoring job clips/s vs the bound from its stages")
    p.add_argument("--n", type=int, default=24, help="sample clips")
    p.add_argument("--actors", type=_ints, default=[1, 2])
    p.add_argument("--batch", type=int, default=8, help="model-stage batch (clips)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=bench_score)
    args = parser.parse_args(argv)
    args.func(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
