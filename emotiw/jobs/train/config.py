"""The train job's configuration and what it trains."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from emotiw.core.config import StorageConfig, amount
from emotiw.io.weights import WeightsConfig
from emotiw.models import presets
from emotiw.models.features import ModalityConfigs
from emotiw.models.fusion import VOTING
from emotiw.models.fusion import Config as FusionConfig  # (a field is named `fusion`)


@dataclass(frozen=True)
class TrainConfig:
    """The training job.

    Attributes:
        features: the training feature table (path or ``s3://``).
        val_features: a separate validation table (VGAF's val set); None: split `features`.
        val_fraction: share of each class held out when splitting.
        group_by: regular expression over a clip's file stem whose first group names its
            source video: clips of one group land on the same side of the split (VGAF names
            clips ``<video>_<clip>``, and clips cut from one video look alike, so a per-clip
            split leaks). A stem that does not match is its own group; "" splits per clip.
        seed: seeds the split, initialisation, shuffling and VAE sampling.
        preset: what `configs`, `fusion`, `schedule` and `stacking_folds` default to
            (`emotiw.models.presets`: ``paper`` or ``cpu-smoke``).
        configs: modalities and their settings (must match how the table was extracted);
            None: the preset's.
        fusion: the main fusion variant; None: the preset's fusion settings over `configs`'
            modalities (FC early fusion).
        ablation: also train the main fusion without each modality (paper Table 3).
        schedule: ``paper``: each head and the FC fusion train with the deployed model's own
            epochs, batch size, checkpoint metric (validation loss or accuracy) and early
            stopping (`emotiw.modalities.paper.TRAINING`); ``uniform``: `epochs`,
            `fusion_epochs` and `batch_size` for all, the checkpoint of lowest validation loss.
            None: the preset's (paper -> paper, cpu-smoke -> uniform); on the command line
            also uniform when ``--epochs``, ``--fusion-epochs`` or ``--batch-size`` is given.
        stacking_folds: train the fusion on out-of-fold head outputs (`emotiw.jobs.train.stacking`:
            K folds by source video, each head trained K more times) and also, for comparison,
            on the in-sample ones (variant ``<method>-in-sample``); 0: in-sample only.
            None: the preset's (paper -> 5, cpu-smoke -> 0).
        max_epochs: caps every model's epochs under either schedule (0: no cap): a quick
            trial of the paper schedule, whose audio head may run 4,000 epochs.
        epochs: epochs of each head (``uniform``, and models the paper table does not name).
        fusion_epochs: epochs of each fusion variant (the same).
        batch_size: clips per step on each worker (the same).
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
        worker_cache_mb: a training set (the columns its models read) that fits in this many MiB is
            read whole by every worker and dealt out by a global permutation each epoch; a
            larger one is split by Ray Data and each worker streams its shard every epoch
            (kept in memory after the first epoch if the shard fits). Same budget for the
            validation set, which every worker scores whole.
        poll_interval_s: how often Ray Train's controller polls its workers. Each
            `ray.train.report` waits for a poll, and the default (2 s) made a small epoch of
            the sample corpus cost 2.2 s instead of 0.3 s (train job 8.7 -> 2.3 min, same
            results). Ignored when RAY_TRAIN_HEALTH_CHECK_INTERVAL_S is set.
        report_interval_s: each worker reports metrics (and the best checkpoint, if a
            better one is pending) to Ray Train at most this often, and after the last epoch
            (0: every epoch). A report waits for the controller's next poll: every epoch,
            that made the paper audio head's epochs (up to 4,000) 1.7x longer here.
            Every epoch's metrics reach MLflow whatever the interval.
        storage: endpoint and credentials of s3:// tables.
        weights: where pretrained front-end weights are found.
    """

    features: str
    val_features: str | None = None
    val_fraction: float = 0.25
    group_by: str = r"^(\d+)_\d+$"
    seed: int = 0
    preset: str = presets.DEFAULT
    configs: ModalityConfigs | None = None
    fusion: FusionConfig | None = None
    ablation: bool = True
    schedule: str | None = None
    stacking_folds: int | None = None
    max_epochs: int = 0
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
    report_interval_s: float = 5.0
    storage: StorageConfig = field(default_factory=StorageConfig)
    weights: WeightsConfig = field(default_factory=WeightsConfig)

    def __post_init__(self) -> None:
        preset = presets.get(self.preset)
        configs = presets.modality_configs(self.preset) if self.configs is None else self.configs
        resolved = {
            "configs": configs,
            "fusion": (
                presets.fusion_config(self.preset, configs.modalities)
                if self.fusion is None
                else self.fusion
            ),
            "schedule": preset.schedule if self.schedule is None else self.schedule,
            "stacking_folds": (
                preset.stacking_folds if self.stacking_folds is None else self.stacking_folds
            ),
        }
        for name, value in resolved.items():  # frozen: set once, before anyone reads them
            object.__setattr__(self, name, value)
        if not 0 < self.val_fraction < 1:
            raise ValueError("val_fraction must be in (0, 1)")
        if self.schedule not in ("paper", "uniform"):
            raise ValueError(f"schedule must be 'paper' or 'uniform', got {self.schedule!r}")
        if self.stacking_folds == 1 or self.stacking_folds < 0:
            raise ValueError("stacking_folds must be 0 (off) or at least 2")
        if self.stacking_folds and self.fusion.train_heads:
            raise ValueError("stacking needs frozen heads (fusion.train_heads off)")
        if self.group_by:
            import re

            if re.compile(self.group_by).groups < 1:
                raise ValueError(f"group_by needs a capturing group: {self.group_by!r}")
        if self.max_epochs < 0:
            raise ValueError("max_epochs must be >= 0 (0: no cap)")
        if min(self.epochs, self.fusion_epochs, self.batch_size, self.workers) < 1:
            raise ValueError("epochs, fusion_epochs, batch_size and workers must be >= 1")
        if self.report_interval_s < 0:
            raise ValueError("report_interval_s must be >= 0 (0: every epoch)")
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


@dataclass(frozen=True)
class Schedule:
    """How one model trains: epochs, batch size, the metric that picks the checkpoint, and
    early stopping on validation loss after `patience` epochs without improvement (0: none)."""

    epochs: int
    batch_size: int
    select_by: str = "val_loss"
    patience: int = 0


def higher_is_better(metric: str) -> bool:
    """Whether a larger value of a validation metric is better (accuracy; not a loss)."""
    return metric.endswith("accuracy")


def schedule_for(cfg: TrainConfig, model: str) -> Schedule:
    """The `Schedule` of a modality's head (`model` = its name) or of FC fusion (``fusion``)."""
    from emotiw.modalities import paper

    epochs = cfg.fusion_epochs if model == "fusion" else cfg.epochs
    schedule = Schedule(epochs, cfg.batch_size)
    if cfg.schedule == "paper" and model in paper.TRAINING:
        schedule = Schedule(**paper.TRAINING[model])  # type: ignore[arg-type]
    if cfg.max_epochs:
        schedule = dataclasses.replace(schedule, epochs=min(schedule.epochs, cfg.max_epochs))
    return schedule


def fusion_variants(cfg: TrainConfig) -> dict[str, FusionConfig]:
    """Variant name -> fusion config: the main one, its ablations, the three votes."""
    main = cfg.fusion
    variants = {main.method: main}
    mods = main.modalities
    if cfg.ablation and main.method in ("fc", "vae") and len(mods) > 1:
        for m in mods:
            variants[f"{main.method}-without-{m}"] = dataclasses.replace(
                main, modalities=tuple(x for x in mods if x != m)
            )
    for method in VOTING:
        variants.setdefault(method, dataclasses.replace(main, method=method))
    return variants
