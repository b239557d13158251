"""Training data on Ray Data: the feature tables are read as Ray Datasets, prepared (inputs
read, frozen front-ends run) by a pool of actors, on GPUs when asked, and kept in Ray's object
store (spilling to disk) for the Ray Train workers, which read their shard with
`ray.train.get_dataset_shard`. The driver reads a few small columns to choose and split the
rows, never the features: its memory does not grow with the features' size."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from emotiw.jobs.train.config import TrainConfig
from emotiw.jobs.train.data import (
    PrepareBatch,
    hidden_batch,
    source_groups,
    stratified_split,
    table_keys,
)


@dataclass
class TrainingData:
    """Prepared, materialised datasets and what the driver reports about them."""

    train: Any  # ray.data.Dataset of flat training columns (`emotiw.jobs.train.data.flatten`)
    val: Any
    n_train: int
    n_val: int
    provenance: dict[str, str]


def load(cfg: TrainConfig, ray_address: str | None = None) -> TrainingData:
    """Choose and split the rows, then (connecting to Ray) prepare both splits; fails with
    counts, before any Ray work, when too few usable clips remain."""
    import json

    from emotiw.jobs.pipeline import ensure_ray

    keys = table_keys(cfg.features, cfg.storage)
    if cfg.val_features:
        train, val = keys, table_keys(cfg.val_features, cfg.storage)
    else:
        uris = np.asarray([k.split("\n", 1)[0] for k in keys.keys])
        groups = source_groups(uris, cfg.group_by)
        train_idx, val_idx = stratified_split(keys.labels, cfg.val_fraction, cfg.seed, groups)
        train, val = keys.subset(train_idx), keys.subset(val_idx)
    if len(train) == 0 or len(val) == 0:
        raise ValueError(
            f"need labelled clips for training and validation: {len(train)} train, {len(val)} val "
            f"(the table {cfg.features} has {keys.n_rows} rows, of which {len(keys)} are "
            "successful and labelled)"
        )
    ensure_ray(ray_address)
    import ray.data

    # Rows in the tables' order, not in the order the preparing actors finish: every worker
    # deals the training set out by a seeded permutation of that order, so a seeded run
    # trains on the same batches every time (a different order made the same seed land on
    # different models; the learnability test saw a head swing across its threshold).
    ray.data.DataContext.get_current().execution_options.preserve_order = True
    tables = [cfg.features] + ([cfg.val_features] if cfg.val_features else [])
    splits = dict.fromkeys(train.keys.tolist(), "train")
    splits.update(dict.fromkeys(val.keys.tolist(), "val"))
    both = prepare(cfg, tables, splits)
    train_ds, val_ds = (both.filter(expr=f"split == '{s}'").materialize() for s in ("train", "val"))
    del both  # its blocks leave the object store once the splits are copied out
    provenance = {**train.provenance}
    for row in train_ds.select_columns(["provenance"]).take(1):
        provenance.update(json.loads(row["provenance"]))
    return TrainingData(train_ds, val_ds, len(train), len(val), provenance)


def prepare(cfg: TrainConfig, tables: list[str], splits: dict[str, str]) -> Any:
    """The tables read in parallel, the rows `splits` names (row key -> split) prepared by
    one actor pool and materialised in the object store, with a ``split`` column."""
    import ray

    from emotiw.io.storage import arrow_filesystem
    from emotiw.jobs.pools import actor_pool
    from emotiw.tables.chunks import data_files

    reads = []
    for uri in tables:
        fs, root = arrow_filesystem(uri, cfg.storage)
        reads.append(ray.data.read_parquet(data_files(fs, root), filesystem=fs, partitioning=None))
    ds = reads[0].union(*reads[1:]) if len(reads) > 1 else reads[0]
    ds = ds.map_batches(
        PrepareBatch,
        fn_constructor_args=(cfg.configs, cfg.weights, splits),
        batch_format="pyarrow",
        batch_size=cfg.prepare_batch_size,
        compute=actor_pool(1, cfg.prepare_actors),
        num_gpus=_gpus(cfg),
    )
    return ds.materialize()


def _gpus(cfg: TrainConfig) -> float:
    from emotiw.core.config import amount

    gpus = amount(cfg.prepare_gpus, "prepare_gpus")
    return (1.0 if cfg.use_gpu else 0.0) if gpus is None else gpus


def hidden(cfg: TrainConfig, ds: Any, head_states: dict[str, bytes]) -> Any:
    """The frozen heads' hidden layers of every clip of `ds`, computed once (Ray tasks: the
    heads are small, and a task worker keeps them loaded between batches) and materialised:
    a fusion over frozen heads trains on these every epoch. The heads go through the object
    store once, not inside every task's function."""
    import ray

    return ds.map_batches(
        hidden_batch,
        fn_args=(cfg.configs, ray.put(head_states)),
        batch_format="numpy",
        batch_size=cfg.prepare_batch_size * 4,
        num_gpus=_gpus(cfg),
    ).materialize()


def predict(model: Any, ds: Any, modality: str | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels, probabilities and predictions of a head or fusion over a dataset, streamed
    through the driver batch by batch (only the N x 3 outputs are kept; the labels come with
    them because a dataset's row order is not fixed)."""
    from emotiw.jobs.train.data import unflatten
    from emotiw.models.inference import predict_arrays

    labels, probs, preds = [np.zeros(0, np.int64)], [np.zeros((0, 3), np.float32)], []
    preds.append(np.zeros(0, np.int64))
    for batch in ds.iter_batches(batch_size=64, batch_format="numpy"):
        arrays = unflatten(batch)
        p, y = predict_arrays(model, arrays, modality)
        labels.append(arrays["labels"])
        probs.append(p)
        preds.append(y)
    return np.concatenate(labels), np.concatenate(probs), np.concatenate(preds)
