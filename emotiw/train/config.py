"""The train job's configuration and what it trains."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from emotiw import fusion
from emotiw.config import StorageConfig, amount
from emotiw.features import ModalityConfigs
from emotiw.weights import WeightsConfig


@dataclass(frozen=True)
class TrainConfig:
    """The training job.

    Attributes:
        features: the training feature table (path or ``s3://``).
        val_features: a separate validation table (VGAF's val set); None: split `features`.
        val_fraction: share of each class held out when splitting.
        seed: seeds the split, initialisation, shuffling and VAE sampling.
        configs: modalities and their settings (must match how the table was extracted).
        fusion: the main fusion variant (FC early fusion by default).
        ablation: also train the main fusion without each modality (paper Table 3).
        epochs: epochs of each head.
        fusion_epochs: epochs of each fusion variant.
        batch_size: clips per step on each worker.
        workers: Ray Train workers (2 CPU workers here).
        use_gpu: one GPU per Ray Train worker.
        tracking_uri: MLflow tracking URI; None: $MLFLOW_TRACKING_URI, else a SQLite store
            under `run_dir`.
        experiment: MLflow experiment name.
        model_name: registered model name.
        run_dir: local folder for the default MLflow store, the package and (without
            `storage_path`) Ray Train's checkpoints.
        storage_path: where Ray Train keeps checkpoints and results (local path or
            ``s3://``; None: under `run_dir`). Multi-node training needs storage every node
            reaches: an S3 prefix, with `storage`'s endpoint and credentials.
        prepare_actors: maximum size of the pool preparing the training data (reading the
            feature table, running frozen front-ends); 0: no cap, it grows with the cluster.
        prepare_gpus: GPUs each preparing actor reserves (``auto``: 1 with `use_gpu`, else 0).
        prepare_batch_size: clips per preparing call (a frozen backbone's batch).
        worker_cache_mb: a training set (a head's columns) that fits in this many MiB is
            read whole by every worker and dealt out by a global permutation each epoch; a
            larger one is split by Ray Data and each worker streams its shard every epoch
            (kept in memory after the first epoch if the shard fits). Same budget for the
            validation set, which every worker scores whole.
        poll_interval_s: how often Ray Train's controller polls its workers. Each
            `ray.train.report` waits for a poll, and the default (2 s) made a small epoch of
            the sample corpus cost 2.2 s instead of 0.3 s (train job 8.7 -> 2.3 min, same
            results). Ignored when RAY_TRAIN_HEALTH_CHECK_INTERVAL_S is set.
        storage: endpoint and credentials of s3:// tables.
        weights: where pretrained front-end weights are found.
    """

    features: str
    val_features: str | None = None
    val_fraction: float = 0.25
    seed: int = 0
    configs: ModalityConfigs = field(default_factory=ModalityConfigs.preset)
    fusion: fusion.Config = field(default_factory=fusion.Config)
    ablation: bool = True
    epochs: int = 30
    fusion_epochs: int = 60
    batch_size: int = 16
    workers: int = 2
    use_gpu: bool = False
    tracking_uri: str | None = None
    experiment: str = "emotiw"
    model_name: str = "emotiw"
    run_dir: str = "runs/train"
    storage_path: str | None = None
    prepare_actors: int = 0
    prepare_gpus: str = "auto"
    prepare_batch_size: int = 8
    worker_cache_mb: int = 2048
    poll_interval_s: float = 0.25
    storage: StorageConfig = field(default_factory=StorageConfig)
    weights: WeightsConfig = field(default_factory=WeightsConfig)

    def __post_init__(self) -> None:
        if not 0 < self.val_fraction < 1:
            raise ValueError("val_fraction must be in (0, 1)")
        if min(self.epochs, self.fusion_epochs, self.batch_size, self.workers) < 1:
            raise ValueError("epochs, fusion_epochs, batch_size and workers must be >= 1")
        if self.prepare_actors < 0 or self.prepare_batch_size < 1:
            raise ValueError("prepare_actors must be >= 0 (0: no cap), prepare_batch_size >= 1")
        amount(self.prepare_gpus, "prepare_gpus")
        if set(self.fusion.modalities) - set(self.configs.modalities):
            object.__setattr__(
                self, "fusion", dataclasses.replace(self.fusion, modalities=self.configs.modalities)
            )


@dataclass
class TrainResult:
    model: Any  # packaging.PackagedModel
    package_dir: Path
    run_id: str
    model_uri: str
    scores: dict[str, dict[str, float]]


def fusion_variants(cfg: TrainConfig) -> dict[str, fusion.Config]:
    """Variant name -> fusion config: the main one, its ablations, the three votes."""
    main = cfg.fusion
    variants = {main.method: main}
    mods = main.modalities
    if cfg.ablation and main.method in ("fc", "vae") and len(mods) > 1:
        for m in mods:
            variants[f"{main.method}-without-{m}"] = dataclasses.replace(
                main, modalities=tuple(x for x in mods if x != m)
            )
    for method in fusion.VOTING:
        variants.setdefault(method, dataclasses.replace(main, method=method))
    return variants
