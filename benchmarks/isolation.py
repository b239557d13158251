"""isolation: clips/s of the extract actor's work with each clip in its child process
(`emotiw.io.clip_process`, the default: a clip that kills its process costs that clip) against
the same work in the actor's own process, in the same run. Both extract the same sample clips
from local files with the cpu-smoke preset's extractors (random-init weights), with the same
number of threads; the child's start-up (Python, imports, the extractors' models) is reported
apart, as an actor pays it once, and again after each crash.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

from benchmarks.harness import load_corpus


def bench_isolation(args: argparse.Namespace) -> dict[str, float]:
    import os

    import torch

    # The child computes with as many threads as this process (Ray sets OMP_NUM_THREADS per
    # actor likewise); this process's own thread pool is left as it is.
    omp = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = str(torch.get_num_threads())
    try:
        return _measure(args, torch.get_num_threads())
    finally:
        if omp is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = omp


def _measure(args: argparse.Namespace, threads: int) -> dict[str, float]:
    from emotiw.core.config import MediaConfig
    from emotiw.io.clip_process import ClipProcess
    from emotiw.io.weights import WeightsConfig
    from emotiw.models.features import ModalityConfigs
    from emotiw.models.items import ItemExtractor

    clips = load_corpus(args.corpus, args.n, args.seed)
    folder = tempfile.mkdtemp(prefix="emotiw-bench-isolation-")
    items = []
    for i, data in enumerate(clips):
        path = f"{folder}/clip_{i:04d}.mp4"
        with open(path, "wb") as out:
            out.write(data)
        items.append({"uri": path, "video_id": f"clip_{i:04d}", "label": None})
    configs = ModalityConfigs.preset("cpu-smoke")
    build = (configs, MediaConfig(), WeightsConfig(allow_download=False), False)
    local = ItemExtractor(*build)
    started = time.perf_counter()
    child = ClipProcess(ItemExtractor, *build)
    child.start()
    startup_s = time.perf_counter() - started

    def in_process() -> float:
        start = time.perf_counter()
        for item in items:
            assert local(item, None, "bench").get("error") is None
        return time.perf_counter() - start

    def isolated() -> float:
        start = time.perf_counter()
        for item in items:
            assert child.call(item, None, "bench").get("error") is None
        return time.perf_counter() - start

    try:
        in_process(), isolated()  # warm-up: lazy imports, codec init, page cache
        t_local, t_child = [], []
        for _ in range(args.repeat):  # interleaved, so drift in machine load hits both alike
            t_local.append(in_process())
            t_child.append(isolated())
    finally:
        child.close()
    local_cps = len(items) / statistics.median(t_local)
    child_cps = len(items) / statistics.median(t_child)
    ratio = child_cps / local_cps
    print(
        f"isolation: {len(items)} clips x {args.repeat} rounds, cpu-smoke extractors "
        f"(random-init), {threads} thread(s) each\n"
        f"  in the actor's process:  {local_cps:6.2f} clips/s ({1000 / local_cps:.0f} ms/clip)\n"
        f"  in a child process:      {child_cps:6.2f} clips/s ({1000 / child_cps:.0f} ms/clip)\n"
        f"  child start-up (once per actor, and after each crash): {startup_s:.1f} s\n"
        f"  ratio isolated / in-process = {ratio:.2f}"
    )
    return {"clips_per_s": child_cps, "baseline_clips_per_s": local_cps, "ratio": ratio,
            "startup_s": startup_s}  # fmt: skip
