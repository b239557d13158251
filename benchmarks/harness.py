"""The shared benchmark harness: sample clips, timers that run the measured thing and its
baseline in the same run (these machines are shared and noisy: compare ratios, not times),
per-actor memory sampling. Everything here uses public `emotiw` APIs only."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any


def load_corpus(corpus: str | None, n: int, seed: int) -> list[bytes]:
    from emotiw.io.corpus import write_sample_corpus
    from emotiw.io.storage import list_videos, read_bytes

    if corpus is None:
        tmp = tempfile.mkdtemp(prefix="emotiw-bench-")
        print(f"writing {n} sample clips to {tmp} ...", flush=True)
        write_sample_corpus(tmp, n, seed)
        corpus = tmp
    return [read_bytes(uri) for uri in list_videos(corpus)]


def time_round(fn: Callable[[bytes], object], clips: Sequence[bytes]) -> float:
    start = time.perf_counter()
    for data in clips:
        fn(data)
    return time.perf_counter() - start


def per_clip_seconds(fn: Callable[[], object], repeat: int) -> float:
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - start) / repeat


def synced(fn: Callable[[], object], device: str) -> Callable[[], None]:
    """`fn` followed by a CUDA synchronise, so that timings include the GPU work."""
    import torch

    def run() -> None:
        fn()
        if device == "cuda":
            torch.cuda.synchronize()

    return run


class ActorMemory:
    """Samples the resident memory of this machine's Ray Data actors (process titles
    ``ray::MapWorker(MapBatches(<Actor>))``) every 0.2 s: peak RSS per actor kind."""

    def __init__(self) -> None:
        import threading

        self.peak: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> ActorMemory:
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


def ints(text: str) -> list[int]:
    """A comma-separated list of integers (command-line values)."""
    return [int(v) for v in text.split(",")]


def random_package(path: str, configs: Any) -> Any:
    """A model package of random-init heads and FC fusion (seeded; a benchmark's cost does
    not depend on the weights' values, and its provenance says random-init)."""
    import torch

    from emotiw.models import fusion
    from emotiw.models.packaging import PackagedModel, save_model

    torch.manual_seed(0)
    heads = {s.name: s.head(configs.of(s.name)) for s in configs.specs()}
    fc = fusion.build(heads, fusion.Config(modalities=configs.modalities))
    return save_model(
        path, PackagedModel(configs, heads, {"fc": fc}, "fc", {"heads": "random-init (benchmark)"})
    )


def run_child(module: str, *args: str) -> dict[str, Any]:
    """`python -m MODULE --child ARGS` in its own process (so its peak RSS is that run's
    alone); the JSON line it printed last (`child_report`)."""
    import json
    import os
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", module, "--child", *args],
        capture_output=True, text=True, env={**os.environ, "RAY_AUTH_MODE": "disabled"},
    )  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def child_report(seconds: float, rows: int) -> None:
    """What a `run_child` process prints last: its time, rows and peak RSS in MiB (VmHWM:
    ru_maxrss would not do, Linux carries it across execve from the parent that forked)."""
    import json
    from pathlib import Path

    status = Path("/proc/self/status").read_text()
    rss = int(status.split("VmHWM:")[1].split()[0]) / 1024  # KiB -> MiB
    print(json.dumps({"seconds": seconds, "rows": rows, "rss_mib": rss}))
