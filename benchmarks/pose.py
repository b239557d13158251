"""pose: frames/s of Keypoint R-CNN on the 12 sampled 480x320 frames of a clip, for several
input sizes, with a fixed number of people per frame (random-init weights with the score
threshold at 0 and `max_people` = --people: the cost depends on the architecture and the
number of people, not on the weight values), and the per-clip cost as a multiple of the
decode and face stages measured in the same run.
"""

from __future__ import annotations

import argparse

import numpy as np

from benchmarks.harness import load_corpus, per_clip_seconds


def bench_pose(args: argparse.Namespace) -> dict[str, float]:
    import dataclasses

    import torch

    from emotiw.io.media import decode
    from emotiw.modalities import face, pose

    data = load_corpus(args.corpus, 2, args.seed)[0]
    clip = decode(data)
    slots = len(clip.frame_mask)
    frames = min(args.frames, slots)
    if frames < slots:  # only the first `frames` sampled frames run (a smoke test's size)
        clip = dataclasses.replace(clip, frame_mask=clip.frame_mask & (np.arange(slots) < frames))
    t_decode = per_clip_seconds(lambda: decode(data), 5)
    face_extractor = face.Extractor(face.Config())
    t_face = per_clip_seconds(lambda: face_extractor(clip), 2)
    print(
        f"pose: Keypoint R-CNN (ResNet-50 FPN) on {frames} frames 480x320, torch threads "
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
        seconds = per_clip_seconds(lambda extractor=extractor: extractor(clip), args.repeat)
        n_people = int(extractor(clip).features[:, -1].sum())
        results[f"{size}x{people}"] = seconds
        print(
            f"    {size:5d}  {n_people / frames:6.1f}  {1000 * seconds:7.0f}"
            f"  {frames / seconds:8.2f}  {seconds / t_decode:8.0f}  {seconds / t_face:6.1f}"
        )
    return results
