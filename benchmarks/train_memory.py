"""train-memory: the training driver's peak RSS at 100 and 1,000 clips of a synthetic feature
table with the paper configuration's shapes (12 JPEG frames of 480x320, OpenL3 audio
11 x 6144, pose 12 x 27, faces 12 x 22; values random, labels cycling), against the old
driver-side loading (`features.read_rows` + `to_feature_set` on the driver) measured in the
same run. Each size and plan runs in its own process, so its peak RSS is that driver alone.

The new plan is the train job's own (`train.dataset.load`: the driver reads the key columns,
an actor pool decodes the frames, the prepared datasets are materialised in Ray's object
store) followed by one epoch of the face head through `TorchTrainer(datasets=...)`. The
scene's frozen backbone is switched off here (`frozen=False`: the prepared scene input is the
decoded frames, 5.5 MB per clip, the same order as ResNet-50's 7.4 MB of maps) so that the
figure is the data path's, not hours of CPU convolutions.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
import time

import numpy as np

from benchmarks.harness import child_report, run_child


def _configs():  # type: ignore[no-untyped-def]
    from emotiw.models.features import ModalityConfigs

    configs = ModalityConfigs.preset("paper")
    scene = dataclasses.replace(configs.of("scene"), frozen=False)
    return ModalityConfigs({**configs.configs, "scene": scene})


def write_table(root: str, n: int, seed: int = 0) -> None:
    """N synthetic feature rows of the paper's shapes, in files of 50 rows."""
    import pyarrow.parquet as pq

    from emotiw.io.frames import encode_frames
    from emotiw.modalities.base import Extraction
    from emotiw.models.features import rows_to_table
    from emotiw.tables.schema import FRAMES_COLUMN

    configs = _configs()
    rng = np.random.default_rng(seed)
    scene = configs.of("scene")
    shape = (scene.n_frames, scene.frame_height, scene.frame_width, 3)
    frames = (rng.integers(0, 64, shape) + np.linspace(0, 180, shape[2])[:, None]).astype(np.uint8)
    jpegs = encode_frames(frames, np.ones(scene.n_frames, bool))
    os.makedirs(root, exist_ok=True)
    for start in range(0, n, 50):
        rows = []
        for i in range(start, min(n, start + 50)):
            row = {"video_id": f"clip_{i:05d}", "uri": f"/synthetic/clip_{i:05d}.mp4",
                   "label": i % 3, "error": None, "extracted_at": time.time(),
                   "weights": "{}", FRAMES_COLUMN: jpegs}  # fmt: skip
            for spec in configs.specs():
                if spec.name != "scene":
                    cfg = configs.of(spec.name)
                    (features,) = spec.example_inputs(cfg, 1, seed + i)
                    row.update(spec.row_values(Extraction(features[0]), cfg))
            rows.append(row)
        pq.write_table(rows_to_table(rows), os.path.join(root, f"part-{start:06d}.parquet"))


def _child(args: argparse.Namespace) -> None:
    from emotiw.models.features import read_rows, to_feature_set

    start = time.perf_counter()
    if args.plan == "driver":  # the old train job: every row's arrays in the driver
        data = to_feature_set(read_rows(args.table), _configs())
        n = len(data)
    else:
        n = _new_plan(args.table)
    child_report(time.perf_counter() - start, n)


def _new_plan(table: str) -> int:
    import ray

    from emotiw.jobs.train import TrainConfig
    from emotiw.jobs.train import dataset as train_data
    from emotiw.jobs.train.driver import fit
    from emotiw.jobs.train.worker import HeadSpec

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    with tempfile.TemporaryDirectory() as run_dir:
        cfg = TrainConfig(features=table, configs=_configs(), epochs=1, workers=2,
                          batch_size=16, run_dir=run_dir, prepare_batch_size=4)  # fmt: skip
        ray.init(num_cpus=4, log_to_driver=False, include_dashboard=False)
        ray.data.DataContext.get_current().enable_progress_bars = False
        data = train_data.load(cfg)
        spec = HeadSpec("face", cfg.configs.of("face"), 0)
        fit(cfg, "bench-face", spec, (data.train, data.val), 1)
        return data.n_train + data.n_val


def bench_train_memory(args: argparse.Namespace) -> dict[str, float]:
    """Driver peak RSS per size: the Ray Data plan against loading into the driver."""
    figures: dict[str, float] = {}
    for n in args.rows:
        table = tempfile.mkdtemp(prefix=f"emotiw-bench-train-{n}-")
        write_table(table, n)
        for plan in ("datasets", "driver"):
            result = run_child("benchmarks.train_memory", "--plan", plan, "--table", table)
            assert result["rows"] == n, result
            figures[f"{plan}_{n}_rss"] = result["rss_mib"]
            print(f"{n:>5} clips, {plan:>8}: driver peak RSS {result['rss_mib']:6.0f} MiB, "
                  f"{result['seconds']:.0f} s", flush=True)  # fmt: skip
    low, high = min(args.rows), max(args.rows)
    for plan in ("datasets", "driver"):
        ratio = figures[f"{plan}_{high}_rss"] / figures[f"{plan}_{low}_rss"]
        print(f"{plan}: driver peak RSS {low} -> {high} clips: {ratio:.2f}x", flush=True)
    return figures


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--child", action="store_true")
    parser.add_argument("--plan", default="datasets")
    parser.add_argument("--table")
    _child(parser.parse_args())
