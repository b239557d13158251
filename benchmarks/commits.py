"""commits: what chunked commits cost. The scoring job's write path (a Ray Data pipeline whose
rows stream back to the driver, `pipeline.write_stream` into `chunks.ChunkWriter`) with a commit
every 1,000 clips, against the same pipeline with one commit at the end, in the same run.

The stages are no-ops producing score rows, so this is the worst case: every second spent is
orchestration or commits. With the real stages (~0.4 s of CPU per clip) the same commit costs
are spread over hundreds of CPU-seconds per chunk. Locally a commit is a rename; on S3 (the
moto server, started here when ``--targets`` names s3) it is one upload per chunk.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from typing import Any


def _rows(batch: dict[str, Any]) -> Any:
    """A block of score rows (the scores table's schema), one per input id."""
    import pyarrow as pa

    from emotiw import modalities
    from emotiw.tables.schema import score_schema

    schema = score_schema(modalities.specs())
    n = len(batch["id"])
    columns = {f.name: pa.nulls(n, f.type) for f in schema}
    columns["uri"] = pa.array([f"s3://bench/cam/{i}.mp4" for i in batch["id"]])
    for name in ("prob_positive", "prob_neutral", "prob_negative"):
        columns[name] = pa.array([1 / 3] * n, pa.float32())
    columns["attempts"] = pa.array([1] * n, pa.int8())
    return pa.table(columns, schema=schema)


def _run(n: int, commit_every: int, url: str, storage: Any) -> tuple[float, int]:
    import ray

    from emotiw import modalities
    from emotiw.io.storage import arrow_filesystem
    from emotiw.jobs.pipeline import Committed, write_stream
    from emotiw.tables.chunks import ChunkWriter
    from emotiw.tables.schema import score_schema

    fs, root = arrow_filesystem(url, storage)
    writer = ChunkWriter(
        fs, root, f"bench-{commit_every}", score_schema(modalities.specs()), commit_every, 3600,
        partition=lambda: "scored_date=2026-01-01",
    )  # fmt: skip
    start = time.perf_counter()
    ds = ray.data.range(n, override_num_blocks=max(1, n // 100))
    ds = ds.map_batches(_rows, batch_format="numpy", batch_size=None)
    write_stream(ds, writer, Committed(), lambda rows: None, None)
    return time.perf_counter() - start, len(writer.committed)


def _moto() -> tuple[subprocess.Popen, str]:
    import socket
    import urllib.request

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = os.path.join(os.path.dirname(sys.executable), "moto_server")
    proc = subprocess.Popen(
        [server, "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            urllib.request.urlopen(url + "/moto-api/", timeout=1).close()
            break
        except OSError:
            time.sleep(0.2)
    return proc, url


def bench_commits(args: argparse.Namespace) -> dict[str, float]:
    """Clips/s with a commit every `args.commit_every` clips vs a single commit."""
    from emotiw.core.config import StorageConfig
    from emotiw.io.storage import fsspec_filesystem
    from emotiw.jobs.pipeline import ensure_ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ensure_ray()
    figures: dict[str, float] = {}
    for target in args.targets:
        server = None
        if target == "s3":
            server, endpoint = _moto()
            storage = StorageConfig(endpoint_url=endpoint, key="bench", secret="bench-secret")
            fs, _ = fsspec_filesystem("s3://emotiw-bench", storage)
            fs.mkdir("emotiw-bench")
        else:
            storage = None
        try:
            _run(1000, 1000, _target(target, "warmup"), storage)  # Ray Data start-up
            single, _ = _run(args.n, args.n, _target(target, "single"), storage)
            chunked, chunks = _run(args.n, args.commit_every, _target(target, "chunked"), storage)
        finally:
            if server is not None:
                server.terminate()
        ratio = single / chunked
        print(
            f"{target}: {args.n} clips, no-op stages: single commit {args.n / single:,.0f} "
            f"clips/s ({1000 * single / args.n:.2f} ms/clip); a commit every "
            f"{args.commit_every} ({chunks} chunks) {args.n / chunked:,.0f} clips/s "
            f"({1000 * chunked / args.n:.2f} ms/clip): throughput ratio chunked/single "
            f"{ratio:.2f}",
            flush=True,
        )
        figures[f"{target}_ratio"] = ratio
    return figures


def _target(kind: str, name: str) -> str:
    if kind == "s3":
        return f"s3://emotiw-bench/{name}"
    return os.path.join(tempfile.mkdtemp(prefix="emotiw-bench-commits-"), name)
