"""Training data: the feature tables -> train / validation arrays for the workers.

The heads never re-decode video: they train on the feature table's arrays. A modality with a
frozen pretrained front-end (the scene's backbone) runs it once here (`Modality.precompute`)
and its head trains on the result.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from emotiw.features import FeatureSet, read_rows, to_feature_set
from emotiw.train.config import TrainConfig


@dataclass
class TrainingData:
    """What the driver hands to the workers, and what it reports."""

    train: FeatureSet
    val: FeatureSet
    provenance: dict[str, str]


def stratified_split(
    labels: np.ndarray, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, val): `fraction` of each class (at least one) held out, seeded."""
    rng = np.random.default_rng(seed)
    val = []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        val.extend(idx[: max(1, round(fraction * len(idx)))] if len(idx) > 1 else [])
    val_idx = np.sort(np.asarray(val, dtype=int))
    return np.setdiff1d(np.arange(len(labels)), val_idx), val_idx


def load(cfg: TrainConfig) -> TrainingData:
    """Read, split and precompute; fails with counts when too few usable clips remain."""
    rows = read_rows(cfg.features, cfg.storage)
    data = to_feature_set(rows, cfg.configs)
    if cfg.val_features:
        train, val = data, to_feature_set(read_rows(cfg.val_features, cfg.storage), cfg.configs)
    else:
        train_idx, val_idx = stratified_split(data.labels, cfg.val_fraction, cfg.seed)
        train, val = data.subset(train_idx), data.subset(val_idx)
    if len(train) == 0 or len(val) == 0:
        raise ValueError(
            f"need labelled clips for training and validation: {len(train)} train, {len(val)} val "
            f"(the table {cfg.features} has {rows.num_rows} rows, of which {len(data)} are "
            "successful and labelled)"
        )
    provenance = table_provenance(rows)
    for spec in cfg.configs.specs():
        mcfg = cfg.configs.of(spec.name)
        done = spec.precompute(mcfg, train.inputs[spec.name], cfg.weights)
        if done is not None:
            train.inputs[spec.name], prov = done
            val.inputs[spec.name], _ = spec.precompute(mcfg, val.inputs[spec.name], cfg.weights)
            provenance.update(prov)
    return TrainingData(train, val, provenance)


def table_provenance(rows: Any) -> dict[str, str]:
    """The front-end weights recorded in the feature table (they must agree across rows)."""
    import pyarrow.compute as pc

    found: dict[str, str] = {}
    for text in set(rows.filter(pc.is_null(rows["error"]))["weights"].to_pylist()):
        for key, value in json.loads(text or "{}").items():
            if found.get(key, value) != value:
                raise ValueError(
                    f"the feature table mixes weights for {key}: {found[key]} and {value}"
                )
            found[key] = value
    return found
