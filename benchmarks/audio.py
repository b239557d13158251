"""audio: clips/s of the OpenL3 embedding (11 windows of 1 s per clip, random-init weights: the
cost does not depend on the weight values) with the windows of many clips batched into one
forward, for several batch sizes, against one window per forward in the same run; the
log-mel alternative; and the per-clip cost as a multiple of the decode stage.
"""

from __future__ import annotations

import argparse
import time

from benchmarks.harness import load_corpus, per_clip_seconds


def bench_audio(args: argparse.Namespace) -> dict[str, float]:
    import torch

    from emotiw.io.media import decode
    from emotiw.modalities import audio

    data = load_corpus(args.corpus, args.n, args.seed)
    clips = [decode(d) for d in data]
    t_decode = per_clip_seconds(lambda: decode(data[0]), 5)
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
