"""The train job's driver: Ray Train `TorchTrainer` runs (one for the heads, one per stacking
fold, one per training set of the fusion variants), MLflow tracking (one parent run, a child
run per head and per fusion variant), then the packaged model, logged and registered."""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from emotiw.jobs.train import dataset as train_data
from emotiw.jobs.train.config import (
    Schedule,
    TrainConfig,
    TrainResult,
    fusion_variants,
    higher_is_better,
    schedule_for,
)
from emotiw.jobs.train.data import columns_of
from emotiw.jobs.train.worker import FusionSpec, HeadSpec, worker_loop
from emotiw.models import fusion
from emotiw.models.packaging import PackagedModel, save_model
from emotiw.tracking.client import (
    flat_params,
    log_history,
    log_package,
    log_scores,
    mlflow_client,
    model_card,
)

Model = tuple[str, "HeadSpec | FusionSpec", Schedule]  # (tag, what to train, its schedule)


def fit(
    cfg: TrainConfig,
    name: str,
    spec: HeadSpec | FusionSpec,
    data: tuple[Any, Any],
    schedule: Schedule,
) -> tuple[dict[str, torch.Tensor], list[dict[str, float]]]:
    """One model in its own TorchTrainer run (`_fit_many` of one)."""
    return _fit_many(cfg, name, [(name, spec, schedule)], data)[name]


def _fit_many(
    cfg: TrainConfig, name: str, models: list[Model], data: tuple[Any, Any]
) -> dict[str, tuple[dict[str, torch.Tensor], list[dict[str, float]]]]:
    """One TorchTrainer run training `models` one after another over the same (train, val)
    datasets (materialised: for heads, only their modalities' columns); per model tag, the
    state of the epoch its schedule picked and its per-epoch history. Each model trains as
    it would alone; sharing the run pays Ray Train's start-up once (~10 s a run here)."""
    from ray.train import CheckpointConfig, DataConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from safetensors.torch import load_file

    # Read by the Ray Train controller, which Ray Train gives the driver's RAY_TRAIN_* vars.
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", str(cfg.poll_interval_s))
    start = time.monotonic()
    storage_path, storage_fs = _storage(cfg)
    train, val = data
    specs = [spec for _, spec, _ in models]
    if all(isinstance(s, HeadSpec) for s in specs):  # heads read their columns, no others
        # Materialised: iterating them then runs no Ray task, so an epoch never waits for a
        # CPU that the training workers hold.
        columns = columns_of(tuple(s.modality for s in specs), train.columns())
        train = train.select_columns(columns).materialize()
        val = val.select_columns(columns).materialize()
    # A training set that fits a worker's cache is read whole by every worker, which deals a
    # global permutation each epoch; a larger one is split and streamed (emotiw.jobs.train.shards).
    split = train.size_bytes() > cfg.worker_cache_mb * 2**20
    trainer = TorchTrainer(
        worker_loop,
        train_loop_config={
            "models": models,
            "cache_bytes": cfg.worker_cache_mb * 2**20,
            "split": split,
            "report_interval_s": cfg.report_interval_s,
        },
        datasets={"train": train, "val": val},
        # The validation set is never split: every worker scores all of it (no clip dropped).
        dataset_config=DataConfig(datasets_to_split=["train"] if split else []),
        scaling_config=ScalingConfig(num_workers=cfg.workers, use_gpu=cfg.use_gpu),
        run_config=RunConfig(
            name=f"{name}-{int(time.time() * 1000)}",
            storage_path=storage_path,
            storage_filesystem=storage_fs,
            # The latest checkpoint holds every model's best state (`worker_loop`).
            checkpoint_config=CheckpointConfig(num_to_keep=1),
        ),
    )  # fmt: skip
    result = trainer.fit()
    histories = list(result.return_value or [[] for _ in models])
    if result.checkpoint is None:
        raise RuntimeError(f"training run {name} reported no checkpoint (loss not finite?)")
    out = {}
    with result.checkpoint.as_directory() as folder:
        for (tag, _, schedule), history in zip(models, histories, strict=True):
            path = os.path.join(folder, f"{tag}.safetensors")
            if not os.path.exists(path):
                raise RuntimeError(f"{tag}: no epoch was kept (loss not finite?)")
            out[tag] = (load_file(path), history)
            _print_progress(tag, history, schedule)
    print(f"{name}: {len(models)} model(s) trained in {time.monotonic() - start:.0f} s", flush=True)
    return out


def _mode(metric: str) -> str:
    return "max" if higher_is_better(metric) else "min"


def _storage(cfg: TrainConfig) -> tuple[str, Any]:
    """Ray Train's storage path and pyarrow filesystem: `storage_path` (S3 with the job's
    endpoint and credentials, so a test server or MinIO works too), else under `run_dir`."""
    if cfg.storage_path is None:
        return str(Path(cfg.run_dir, "ray").resolve()), None
    from emotiw.io.storage import arrow_filesystem, split_url

    if split_url(cfg.storage_path)[0] == "file":
        return str(Path(split_url(cfg.storage_path)[1]).resolve()), None
    fs, path = arrow_filesystem(cfg.storage_path, cfg.storage)
    return path, fs


def _print_progress(name: str, history: list[dict[str, float]], schedule: Schedule) -> None:
    epochs = schedule.epochs
    every = max(1, epochs // 10)  # at most ~10 progress lines per run
    for row in history:
        if (row["epoch"] + 1) % every and row["epoch"] + 1 != epochs:
            continue
        print(
            f"  {name} epoch {row['epoch'] + 1}/{epochs}: train_loss {row['train_loss']:.4f} "
            f"val_loss {row['val_loss']:.4f} val_accuracy {row['val_accuracy']:.3f}",
            flush=True,
        )
    if history:
        key = schedule.select_by
        best = (max if _mode(key) == "max" else min)(history, key=lambda r: r[key])
        stopped = f", stopped early after {len(history)}" if len(history) < epochs else ""
        print(
            f"{name}: best {key} {best[key]:.4f} at epoch {best['epoch'] + 1} "
            f"(val_loss {best['val_loss']:.4f}, val_accuracy {best['val_accuracy']:.3f})"
            f"{stopped}",
            flush=True,
        )


def run_train(cfg: TrainConfig, ray_address: str | None = None) -> TrainResult:
    """Train every head and fusion variant; log, package and register the model."""
    data = train_data.load(cfg, ray_address)
    datasets = (data.train, data.val)
    mlflow = mlflow_client(cfg.tracking_uri, cfg.experiment, cfg.run_dir)
    heads: dict[str, nn.Module] = {}
    states: dict[str, bytes] = {}
    scores: dict[str, dict[str, float]] = {}
    with mlflow.start_run(run_name="train") as parent:
        job = {k: getattr(cfg, k) for k in ("features", "val_features", "seed", "epochs")}
        job.update(fusion_epochs=cfg.fusion_epochs, batch_size=cfg.batch_size)
        job.update(schedule=cfg.schedule, stacking_folds=cfg.stacking_folds)
        job.update(workers=cfg.workers, n_train=data.n_train, n_val=data.n_val)
        mlflow.log_params(flat_params("", job))
        modality_params = {m: dataclasses.asdict(cfg.configs.of(m)) for m in cfg.configs.modalities}
        mlflow.log_params(flat_params("", modality_params))
        mlflow.log_dict(data.provenance, "weights_provenance.json")
        trained = _train_heads(cfg, datasets)
        for spec in cfg.configs.specs():
            name, mcfg = spec.name, cfg.configs.of(spec.name)
            with mlflow.start_run(run_name=f"head:{name}", nested=True):
                mlflow.log_params(flat_params(name, mcfg))
                schedule = schedule_for(cfg, name)
                mlflow.log_params(flat_params(f"{name}.schedule", schedule))
                head, states[name], history = trained[name]
                log_history(mlflow, history)
                heads[name] = head
                labels, probs, preds = train_data.predict(head, data.val, name)
                scores[name] = log_scores(
                    mlflow, f"{name} head", labels, probs, preds, step=len(history)
                )
        fusions = _train_fusions(cfg, mlflow, heads, states, data, scores)
        meta = {"scores": scores, "train_run_id": parent.info.run_id}
        meta.update(n_train=data.n_train, n_val=data.n_val)
        package = PackagedModel(
            cfg.configs, heads, fusions, cfg.fusion.method, data.provenance, meta
        )
        package_dir = save_model(Path(cfg.run_dir) / "model" / parent.info.run_id, package)
        model_uri = log_package(mlflow, package_dir, cfg.model_name)
        training = {"features": cfg.features, "val_features": cfg.val_features,
                    "n_train": data.n_train, "n_val": data.n_val}  # fmt: skip
        model_card(mlflow.MlflowClient(), cfg.model_name, model_uri.rsplit("/", 1)[1], training,
                   scores, data.provenance)  # fmt: skip
        mlflow.log_metrics(
            {f"{k.replace(':', '_')}_val_accuracy": v["accuracy"] for k, v in scores.items()}
        )
    return TrainResult(package, package_dir, parent.info.run_id, model_uri, scores)


def _train_heads(
    cfg: TrainConfig, datasets: tuple[Any, Any], fold: int | None = None
) -> dict[str, tuple[nn.Module, bytes, list[dict[str, float]]]]:
    """Every modality's head trained on `datasets` (train, val) in one TorchTrainer run:
    per modality, the head with its front-end, its state as safetensors bytes, the history."""
    from safetensors.torch import save

    from emotiw import modalities as registry

    def tag(name: str) -> str:
        return f"head-{name}" if fold is None else f"head-{name}-fold{fold}"

    models: list[Model] = [
        (tag(m), HeadSpec(m, cfg.configs.of(m), cfg.seed), schedule_for(cfg, m))
        for m in cfg.configs.modalities
    ]
    fitted = _fit_many(cfg, "heads" if fold is None else f"heads-fold{fold}", models, datasets)
    out = {}
    for m in cfg.configs.modalities:
        state, history = fitted[tag(m)]
        head = registry.get(m).head_with_frontend(cfg.configs.of(m), state, cfg.weights).eval()
        out[m] = head, save({k: v.contiguous() for k, v in head.state_dict().items()}), history
    return out


def _out_of_fold(cfg: TrainConfig, data: train_data.TrainingData) -> Any:
    """The training clips' hidden layers from heads that did not train on them."""
    from emotiw.jobs.train import stacking

    def train_heads(rows: Any, k: int) -> dict[str, bytes]:
        return {m: t[1] for m, t in _train_heads(cfg, (rows, data.val), fold=k).items()}

    def hidden(rows: Any, states: dict[str, bytes]) -> Any:
        return train_data.hidden(cfg, rows, states)

    return stacking.out_of_fold_hidden(cfg, data.train, train_heads, hidden)


def _train_fusions(
    cfg: TrainConfig,
    mlflow: Any,
    heads: dict[str, nn.Module],
    states: dict[str, bytes],
    data: train_data.TrainingData,
    scores: dict[str, dict[str, float]],
) -> dict[str, fusion.Fusion]:
    """Every fusion variant over the trained heads; logs each one's scores into `scores`."""
    hidden = in_sample = None
    if not cfg.fusion.train_heads:  # frozen heads: run each once, not once per epoch
        in_sample = train_data.hidden(cfg, data.train, states)
        val_hidden = train_data.hidden(cfg, data.val, states)
        train_hidden = _out_of_fold(cfg, data) if cfg.stacking_folds else in_sample
        hidden = (train_hidden, val_hidden)
    variants = {name: (fcfg, hidden) for name, fcfg in fusion_variants(cfg).items()}
    if cfg.stacking_folds and in_sample is not None:  # the comparison evaluate reports
        variants[f"{cfg.fusion.method}-in-sample"] = (cfg.fusion, (in_sample, hidden[1]))
    trainable: dict[int, list[Model]] = {}  # one TorchTrainer run per training set
    sets: dict[int, tuple[Any, Any]] = {}
    for variant, (fcfg, rows) in variants.items():
        if fusion.optimizer(fusion.build(heads, fcfg)) is None:  # the votes have no training
            continue
        if rows is None:
            spec = FusionSpec(
                cfg.configs, fcfg, cfg.seed, head_states={m: states[m] for m in fcfg.modalities}
            )
        else:
            dims = {m: int(heads[m].feature_dim) for m in fcfg.modalities}
            spec = FusionSpec(cfg.configs, fcfg, cfg.seed, precomputed=dims)
        schedule = schedule_for(cfg, "fusion" if fcfg.method == "fc" else variant)
        trainable.setdefault(id(rows), []).append((f"fusion-{variant}", spec, schedule))
        sets[id(rows)] = rows or (data.train, data.val)
    fitted = {}
    for i, (key, models) in enumerate(trainable.items()):
        fitted.update(_fit_many(cfg, f"fusions-{i}", models, sets[key]))
    fusions: dict[str, fusion.Fusion] = {}
    for variant, (fcfg, _) in variants.items():
        with mlflow.start_run(run_name=f"fusion:{variant}", nested=True):
            mlflow.log_params(flat_params("fusion", fcfg))
            model = fusion.build(heads, fcfg)
            history: list[dict[str, float]] = []
            if f"fusion-{variant}" in fitted:
                state, history = fitted[f"fusion-{variant}"]
                log_history(mlflow, history)
                own = {k: v for k, v in state.items() if not k.startswith("heads.")}
                model.load_state_dict(own, strict=False)
            fusions[variant] = model.eval()
            labels, probs, preds = train_data.predict(model, data.val, None)
            scores[f"fusion:{variant}"] = log_scores(
                mlflow, f"{variant} fusion", labels, probs, preds, step=len(history)
            )
    return fusions
