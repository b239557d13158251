"""train: training samples/s of each head under Ray Train's TorchTrainer (DDP over gloo) with 1
and 2 CPU workers, on synthetic features of the real shapes (the cost does not depend on
the values), from the median per-epoch training time (the workers' start-up is printed
separately), and 2 workers as a ratio of 1. Each worker gets one CPU, hence one torch
thread: the ratio shows what data parallelism buys on this machine.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import numpy as np


def bench_train(args: argparse.Namespace) -> dict[str, float]:
    """Ray Train samples/s of each head for 1 and 2 CPU workers on a synthetic feature set."""
    import os

    from emotiw.jobs.pipeline import ensure_ray
    from emotiw.jobs.train import TrainConfig
    from emotiw.jobs.train.data import flatten
    from emotiw.jobs.train.driver import fit
    from emotiw.jobs.train.worker import HeadSpec
    from emotiw.models.features import FeatureSet, ModalityConfigs

    configs = ModalityConfigs.preset("cpu-smoke", tuple(args.heads))
    rng = np.random.default_rng(args.seed)
    n = args.n
    inputs = {s.name: s.example_inputs(configs.of(s.name), n, args.seed) for s in configs.specs()}
    ids = np.arange(n).astype(str).astype(object)
    present = {m: np.ones(n, bool) for m in configs.modalities}
    data = FeatureSet(ids, ids, rng.integers(0, 3, n), inputs, present)
    val = data.subset(np.arange(min(n, 32)))
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ensure_ray()
    datasets = (_dataset(flatten(data)), _dataset(flatten(val)))
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
                spec = HeadSpec(name, configs.of(name), 0)
                start = time.perf_counter()
                _, history = fit(cfg, f"bench-{name}-{workers}", spec, datasets, args.epochs)
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


def _dataset(columns: dict[str, np.ndarray]):  # type: ignore[no-untyped-def]
    """Flat training columns as a Ray Dataset (what `train.dataset.prepare` produces)."""
    import ray

    n = len(columns["label"])
    return ray.data.from_items([{k: v[i] for k, v in columns.items()} for i in range(n)])
