"""The train job's driver: one Ray Train `TorchTrainer` run per head and per fusion variant,
MLflow tracking (one parent run, a child run per head and per fusion variant), then the
packaged model, logged and registered."""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from emotiw import fusion
from emotiw.inference import arrays_of, head_features, predict
from emotiw.packaging import PackagedModel, save_model
from emotiw.tracking import flat_params, log_history, log_package, log_scores, mlflow_client
from emotiw.train import data as train_data
from emotiw.train.config import TrainConfig, TrainResult, fusion_variants
from emotiw.train.worker import FusionSpec, HeadSpec, worker_loop


def fit(
    cfg: TrainConfig, name: str, spec: HeadSpec | FusionSpec, data_ref: Any, epochs: int
) -> tuple[dict[str, torch.Tensor], list[dict[str, float]]]:
    """One TorchTrainer run; the best checkpoint's state dict and the per-epoch history."""
    from ray.train import CheckpointConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from safetensors.torch import load_file

    # Read by the Ray Train controller, which Ray Train gives the driver's RAY_TRAIN_* vars.
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", str(cfg.poll_interval_s))
    start = time.monotonic()
    trainer = TorchTrainer(
        worker_loop,
        train_loop_config={
            "spec": spec,
            "data": data_ref,
            "epochs": epochs,
            "batch_size": cfg.batch_size,
        },
        scaling_config=ScalingConfig(num_workers=cfg.workers, use_gpu=cfg.use_gpu),
        run_config=RunConfig(
            name=f"{name}-{int(time.time() * 1000)}",
            storage_path=str(Path(cfg.run_dir, "ray").resolve()),
            checkpoint_config=CheckpointConfig(
                num_to_keep=1, checkpoint_score_attribute="val_loss", checkpoint_score_order="min"
            ),
        ),
    )
    result = trainer.fit()
    checkpoint = result.get_best_checkpoint(metric="val_loss", mode="min")
    with checkpoint.as_directory() as folder:
        state = load_file(os.path.join(folder, "model.safetensors"))
    history = list(result.return_value or [])
    _print_progress(name, history, epochs, time.monotonic() - start)
    return state, history


def _print_progress(name: str, history: list[dict[str, float]], epochs: int, took: float) -> None:
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
        best = min(history, key=lambda r: r["val_loss"])
        print(
            f"{name}: best val_loss {best['val_loss']:.4f} at epoch {best['epoch'] + 1} "
            f"(val_accuracy {best['val_accuracy']:.3f}), {took:.0f} s",
            flush=True,
        )


def run_train(cfg: TrainConfig, ray_address: str | None = None) -> TrainResult:
    """Train every head and fusion variant; log, package and register the model."""
    import ray
    from safetensors.torch import save

    from emotiw.runtime import ensure_ray

    data = train_data.load(cfg)
    train, val = data.train, data.val
    ensure_ray(ray_address)
    data_ref = ray.put({"train": arrays_of(train), "val": arrays_of(val)})
    mlflow = mlflow_client(cfg.tracking_uri, cfg.experiment, cfg.run_dir)
    heads: dict[str, nn.Module] = {}
    states: dict[str, bytes] = {}
    scores: dict[str, dict[str, float]] = {}
    with mlflow.start_run(run_name="train") as parent:
        job = {k: getattr(cfg, k) for k in ("features", "val_features", "seed", "epochs")}
        job.update(fusion_epochs=cfg.fusion_epochs, batch_size=cfg.batch_size)
        job.update(workers=cfg.workers, n_train=len(train), n_val=len(val))
        mlflow.log_params(flat_params("", job))
        modality_params = {m: dataclasses.asdict(cfg.configs.of(m)) for m in cfg.configs.modalities}
        mlflow.log_params(flat_params("", modality_params))
        mlflow.log_dict(data.provenance, "weights_provenance.json")
        for spec in cfg.configs.specs():
            name, mcfg = spec.name, cfg.configs.of(spec.name)
            head_spec = HeadSpec(name, mcfg, cfg.seed)
            with mlflow.start_run(run_name=f"head:{name}", nested=True):
                mlflow.log_params(flat_params(name, mcfg))
                state, history = fit(cfg, f"head-{name}", head_spec, data_ref, cfg.epochs)
                log_history(mlflow, history)
                head = spec.head_with_frontend(mcfg, state, cfg.weights).eval()
                heads[name] = head
                states[name] = save({k: v.contiguous() for k, v in head.state_dict().items()})
                probs, preds = predict(head, val, name)
                scores[name] = log_scores(mlflow, f"{name} head", val.labels, probs, preds)
        fusions = _train_fusions(cfg, mlflow, heads, states, data, data_ref, scores)
        meta = {"scores": scores, "train_run_id": parent.info.run_id}
        meta.update(n_train=len(train), n_val=len(val))
        package = PackagedModel(
            cfg.configs, heads, fusions, cfg.fusion.method, data.provenance, meta
        )
        package_dir = save_model(Path(cfg.run_dir) / "model" / parent.info.run_id, package)
        model_uri = log_package(mlflow, package_dir, cfg.model_name)
        mlflow.log_metrics(
            {f"{k.replace(':', '_')}_val_accuracy": v["accuracy"] for k, v in scores.items()}
        )
    return TrainResult(package, package_dir, parent.info.run_id, model_uri, scores)


def _train_fusions(
    cfg: TrainConfig,
    mlflow: Any,
    heads: dict[str, nn.Module],
    states: dict[str, bytes],
    data: train_data.TrainingData,
    data_ref: Any,
    scores: dict[str, dict[str, float]],
) -> dict[str, fusion.Fusion]:
    """Every fusion variant over the trained heads; logs each one's scores into `scores`."""
    import ray

    hidden_ref = None
    if not cfg.fusion.train_heads:  # frozen heads: run each once, not once per epoch
        hidden_ref = ray.put(
            {"train": head_features(heads, data.train), "val": head_features(heads, data.val)}
        )
    fusions: dict[str, fusion.Fusion] = {}
    for variant, fcfg in fusion_variants(cfg).items():
        with mlflow.start_run(run_name=f"fusion:{variant}", nested=True):
            mlflow.log_params(flat_params("fusion", fcfg))
            model = fusion.build(heads, fcfg)
            if fusion.optimizer(model) is not None:
                if hidden_ref is None:
                    spec = FusionSpec(
                        cfg.configs, fcfg, cfg.seed,
                        head_states={m: states[m] for m in fcfg.modalities},
                    )  # fmt: skip
                else:
                    dims = {m: int(heads[m].feature_dim) for m in fcfg.modalities}
                    spec = FusionSpec(cfg.configs, fcfg, cfg.seed, precomputed=dims)
                state, history = fit(
                    cfg, f"fusion-{variant}", spec, hidden_ref or data_ref, cfg.fusion_epochs
                )
                log_history(mlflow, history)
                own = {k: v for k, v in state.items() if not k.startswith("heads.")}
                model.load_state_dict(own, strict=False)
            fusions[variant] = model.eval()
            probs, preds = predict(model, data.val, None)
            scores[f"fusion:{variant}"] = log_scores(
                mlflow, f"{variant} fusion", data.val.labels, probs, preds
            )
    return fusions
