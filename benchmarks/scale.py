"""scale: what the scoring job's orchestration costs per clip, and the driver's peak memory,
at 1k / 10k / 100k clips. The job's real plan (a streamed listing of N empty files, the done-key
index, `pools.plan_blocks`, the two actor pools with one clip per extract call and 8 per
model call, rows streamed into `chunks.ChunkWriter`) with no-op stages, against the old plan
(the whole listing in `from_items`, one block per clip) measured in the same run. Each size and
plan runs in its own process, so its peak RSS (VmHWM) is that run's driver alone.

With ``--real N``, also the real scoring job (`score.run_score`: decode, extractors, heads,
fusion, Parquet) on N tiny clips (copies of 6 sample clips under distinct paths) with a
random-init model, blocks of up to 100 clips against one clip per block, in one Ray session.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from typing import Any

from benchmarks.harness import child_report, run_child


class NoopExtract:
    """Stands in for `pipeline.ExtractActor`: one tiny row per clip."""

    def __call__(self, batch: dict[str, Any]) -> Any:
        import pyarrow as pa

        return pa.table({"uri": pa.array([str(u) for u in batch["uri"]])})


class NoopModel:
    """Stands in for `pipeline.ModelActor`: score rows (the real schema) for a batch."""

    def __call__(self, batch: Any) -> Any:
        import pyarrow as pa

        from emotiw import modalities
        from emotiw.tables.schema import score_schema

        schema = score_schema(modalities.specs())
        n = batch.num_rows
        columns = {f.name: pa.nulls(n, f.type) for f in schema}
        columns["uri"] = batch["uri"]
        columns["attempts"] = pa.array([1] * n, pa.int8())
        return pa.table(columns, schema=schema)


def _child(args: argparse.Namespace) -> None:
    import ray

    from emotiw import modalities
    from emotiw.io.storage import arrow_filesystem, iter_video_objects, video_id
    from emotiw.jobs.pipeline import Committed, ensure_ray, write_stream
    from emotiw.jobs.pools import plan_blocks
    from emotiw.tables.chunks import ChunkWriter
    from emotiw.tables.keys import done_keys
    from emotiw.tables.schema import score_schema

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ensure_ray()
    ray.data.DataContext.get_current().enable_progress_bars = False
    ray.data.range(10).map_batches(lambda b: b).count()  # Ray Data's start-up, not timed
    out = tempfile.mkdtemp(prefix="emotiw-bench-scale-")
    fs, root = arrow_filesystem(out)
    schema = score_schema(modalities.specs())
    start = time.perf_counter()
    done = done_keys(fs, root, schema)
    items = (
        {"uri": o.uri, "video_id": video_id(o.uri), "etag": o.etag, "size_bytes": o.size}
        for o in iter_video_objects(args.corpus)
        if not done.done(o.uri, o.etag)
    )
    if args.plan == "blocks":
        refs, _ = plan_blocks(items, lambda: 1)
        ds = ray.data.from_arrow_refs(refs)
    else:  # the old plan: the whole listing on the driver, one block per clip
        listed = list(items)
        ds = ray.data.from_items(listed, override_num_blocks=len(listed))
    ds = ds.map_batches(
        NoopExtract, batch_size=1, compute=ray.data.ActorPoolStrategy(size=1), num_cpus=1
    )
    ds = ds.map_batches(
        NoopModel, batch_size=8, batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=1), num_cpus=1,
    )  # fmt: skip
    writer = ChunkWriter(fs, root, "bench", schema, 1000, 3600)
    write_stream(ds, writer, Committed(), lambda rows: None, None)
    child_report(time.perf_counter() - start, writer.rows)


def _corpus(n: int) -> str:
    """N empty video files, 1,000 per folder (the listing is real; the stages never read)."""
    root = tempfile.mkdtemp(prefix=f"emotiw-bench-scale-{n}-")
    for i in range(n):
        folder = os.path.join(root, f"d{i // 1000:05d}")
        if i % 1000 == 0:
            os.makedirs(folder)
        open(os.path.join(folder, f"clip_{i:07d}.mp4"), "wb").close()
    return root


def bench_scale(args: argparse.Namespace) -> dict[str, float]:
    """Orchestration ms/clip and driver peak RSS per size, new plan vs old."""
    figures: dict[str, float] = {}
    for n in args.sizes:
        corpus = _corpus(n)
        plans = ["blocks"] + (["per-clip"] if n <= args.baseline_max else [])
        for plan in plans:
            result = run_child("benchmarks.scale", "--plan", plan, "--corpus", corpus)
            assert result["rows"] == n, result
            ms = 1000 * result["seconds"] / n
            figures[f"{plan}_{n}_ms"] = ms
            figures[f"{plan}_{n}_rss"] = result["rss_mib"]
            print(f"{n:>7} clips, {plan:>8} plan: {ms:6.2f} ms/clip, driver peak RSS "
                  f"{result['rss_mib']:6.0f} MiB", flush=True)  # fmt: skip
        if f"per-clip_{n}_ms" in figures:
            print(f"{n:>7} clips: per-clip / blocks = "
                  f"{figures[f'per-clip_{n}_ms'] / figures[f'blocks_{n}_ms']:.1f}x less "
                  "orchestration per clip", flush=True)  # fmt: skip
    if args.real:
        figures.update(_real_stages(args.real))
    sizes = [n for n in args.sizes if n >= 10_000]
    if len(sizes) >= 2:
        low, high = figures[f"blocks_{sizes[0]}_rss"], figures[f"blocks_{sizes[-1]}_rss"]
        print(f"driver peak RSS {sizes[0]} -> {sizes[-1]} clips: {high / low:.2f}x "
              "(target: within 1.2x)", flush=True)  # fmt: skip
    return figures


def _real_stages(n: int) -> dict[str, float]:
    """The real job on `n` tiny clips: ms/clip with `block_clips` 100 and 1 (the old plan)."""
    import shutil

    from benchmarks.harness import random_package
    from emotiw.io.corpus import write_sample_corpus
    from emotiw.jobs.pipeline import ensure_ray
    from emotiw.jobs.score import ScoreConfig, run_score
    from emotiw.models.features import ModalityConfigs

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    work = tempfile.mkdtemp(prefix="emotiw-bench-scale-real-")
    write_sample_corpus(f"{work}/six", 6, seed=0)
    for i in range(n):
        os.makedirs(f"{work}/clips/d{i // 6:04d}", exist_ok=True)
        shutil.copy(f"{work}/six/clip_{i % 6:04d}.mp4", f"{work}/clips/d{i // 6:04d}/c{i}.mp4")
    package = random_package(f"{work}/model", ModalityConfigs.preset("cpu-smoke"))
    ensure_ray()
    figures: dict[str, float] = {}
    for block_clips in (100, 1, 100):  # the first run also warms the caches (not reported)
        out = tempfile.mkdtemp(prefix="emotiw-bench-scale-out-")
        cfg = ScoreConfig(input=f"{work}/clips", output=out, model=str(package),
                          block_clips=block_clips)  # fmt: skip
        start = time.perf_counter()
        summary = run_score(cfg)
        figures[f"real_{block_clips}_ms"] = 1000 * (time.perf_counter() - start) / n
        assert summary.scored == n, summary
        shutil.rmtree(out)
    print(f"real stages, {n} tiny clips: blocks of 100 {figures['real_100_ms']:.0f} ms/clip, one "
          f"clip per block {figures['real_1_ms']:.0f} ms/clip "
          f"({figures['real_1_ms'] / figures['real_100_ms']:.2f}x)", flush=True)  # fmt: skip
    return figures


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--child", action="store_true")
    parser.add_argument("--plan", default="blocks")
    parser.add_argument("--corpus")
    _child(parser.parse_args())
