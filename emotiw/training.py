"""Training: each modality head, then the fusion, with Ray Train's `TorchTrainer`; MLflow
tracking (one parent run, a child run per head and per fusion variant) and model registry.

Data: the feature table (`emotiw.features`), split into train / validation by a second table
(VGAF's own validation set) or a seeded stratified split. With a frozen scene backbone the
driver computes each clip's backbone maps once (float16) and the scene head trains on them;
the heads never re-decode video. Arrays reach the workers through the Ray object store; each
worker takes a fixed, seeded shard of every epoch's permutation (DistributedSampler-style) and
DDP averages the gradients. The checkpoint with the lowest validation cross-entropy is kept
(the paper's model selection) and becomes the head or fusion in the packaged model.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from emotiw import fusion, metrics
from emotiw.config import StorageConfig
from emotiw.features import FeatureSet, ModalityConfigs
from emotiw.modalities import get
from emotiw.packaging import PackagedModel, head_for_state_dict, to_torch_inputs
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
        epochs, fusion_epochs: epochs of each head and of each fusion variant.
        batch_size: clips per step on each worker.
        workers, use_gpu: Ray Train scaling (2 CPU workers here).
        tracking_uri: MLflow tracking URI; None: $MLFLOW_TRACKING_URI, else a SQLite store
            under `run_dir`.
        experiment: MLflow experiment name.
        model_name: registered model name.
        run_dir: local folder for Ray Train results, the default MLflow store and the package.
        poll_interval_s: how often Ray Train's controller polls its workers. Each
            `ray.train.report` waits for a poll, and the default (2 s) made a small epoch of
            the sample corpus cost 2.2 s instead of 0.3 s (train job 8.7 -> 2.3 min, same
            results). Ignored when RAY_TRAIN_HEALTH_CHECK_INTERVAL_S is set.
    """

    features: str
    val_features: str | None = None
    val_fraction: float = 0.25
    seed: int = 0
    configs: ModalityConfigs = field(default_factory=ModalityConfigs)
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
    poll_interval_s: float = 0.25
    storage: StorageConfig = field(default_factory=StorageConfig)
    weights: WeightsConfig = field(default_factory=WeightsConfig)

    def __post_init__(self) -> None:
        if not 0 < self.val_fraction < 1:
            raise ValueError("val_fraction must be in (0, 1)")
        if min(self.epochs, self.fusion_epochs, self.batch_size, self.workers) < 1:
            raise ValueError("epochs, fusion_epochs, batch_size and workers must be >= 1")
        if set(self.fusion.modalities) - set(self.configs.modalities):
            object.__setattr__(
                self, "fusion", dataclasses.replace(self.fusion, modalities=self.configs.modalities)
            )


@dataclass
class TrainResult:
    model: PackagedModel
    package_dir: Path
    run_id: str
    model_uri: str
    scores: dict[str, dict[str, float]]


# --- data ------------------------------------------------------------------------------------


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


def scene_maps(
    data: FeatureSet, cfg: Any, weights: WeightsConfig | None, batch: int = 4
) -> tuple[np.ndarray, dict[str, str]]:
    """Frozen-backbone maps of every clip, float16 ``[N, T, C, h, w]``, and the provenance."""
    from emotiw.modalities import scene

    head = scene.Head(cfg, weights).eval()
    frames, mask = data.inputs["scene"], data.scene_mask
    out = []
    with torch.inference_mode():
        for i in range(0, len(frames), batch):
            maps = head.maps(
                torch.from_numpy(frames[i : i + batch]), torch.from_numpy(mask[i : i + batch])
            )
            out.append(maps.to(torch.float16).numpy())
    h, w = cfg.map_size()
    empty = np.zeros((0, cfg.n_frames, head.backbone.out_channels, h, w), np.float16)
    return (np.concatenate(out) if out else empty), {k: str(v) for k, v in head.provenance.items()}


def head_features(heads: dict[str, nn.Module], data: FeatureSet, batch: int = 32) -> dict[str, Any]:
    """Every frozen head's hidden layer (`forward_features`) on every clip, computed once, as
    worker arrays: a fusion over frozen heads trains on these (`fusion.Precomputed`)."""
    arrays = _arrays(data)
    hidden: dict[str, list[np.ndarray]] = {m: [] for m in heads}
    with torch.inference_mode():
        for i in range(0, len(data), batch):
            inputs, _, _ = _batch(
                arrays, np.arange(i, min(i + batch, len(data))), torch.device("cpu")
            )
            for name, head in heads.items():
                features = fusion.call_head(head, inputs[name], "forward_features")
                hidden[name].append(features.float().numpy())
    return {
        "inputs": {
            m: np.concatenate(v) if v else np.zeros((0, int(heads[m].feature_dim)), np.float32)
            for m, v in hidden.items()
        },
        "scene_mask": None,
        "present": data.present,
        "labels": data.labels,
    }


def _arrays(data: FeatureSet) -> dict[str, Any]:
    return {
        "inputs": data.inputs,
        "scene_mask": data.scene_mask,
        "present": data.present,
        "labels": data.labels,
    }


# --- what a worker trains --------------------------------------------------------------------


class Trainable(nn.Module):
    """A head or a fusion behind one forward: ``(inputs, present, target) -> (loss, logits)``,
    so DDP's forward hook sees every step."""

    def __init__(self, model: nn.Module, modality: str | None) -> None:
        super().__init__()
        self.model = model
        self.modality = modality

    def logits(self, inputs: dict[str, Any], present: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.modality is None:
            return self.model(inputs, present)
        return fusion.call_head(self.model, inputs[self.modality])

    def forward(
        self, inputs: dict[str, Any], present: dict[str, torch.Tensor], target: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.modality is None:
            return self.model.loss(inputs, present, target)
        logits = self.logits(inputs, present)
        return F.cross_entropy(logits, target), logits


def build_module(spec: dict[str, Any]) -> Trainable:
    """The module a spec describes (picklable specs travel to the workers)."""
    from safetensors.torch import load

    if spec["kind"] == "head":
        name = spec["modality"]  # the scene head trains on precomputed maps
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(spec["seed"])
            return Trainable(head_for_state_dict(name, spec["cfg"]), name)
    heads: dict[str, nn.Module] = {}
    for name, dim in spec.get("precomputed", {}).items():
        heads[name] = fusion.Precomputed(dim)
    for name, state in spec.get("head_states", {}).items():
        head = head_for_state_dict(name, spec["configs"].of(name))
        head.load_state_dict(load(state))
        heads[name] = head
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec["seed"])
        return Trainable(fusion.build(heads, spec["fusion"]), None)


def _optimizer(trainable: Trainable, spec: dict[str, Any]) -> tuple[torch.optim.Optimizer, Any]:
    if trainable.modality is None:
        return fusion.optimizer(trainable.model), None
    head, module = trainable.model, get(trainable.modality)
    params = (
        head.parameter_groups()
        if hasattr(head, "parameter_groups")
        else [p for p in head.parameters() if p.requires_grad]
    )
    opt = module.optimizer(params, spec["cfg"])
    scheduler = module.scheduler(opt, spec["cfg"]) if hasattr(module, "scheduler") else None
    return opt, scheduler


def _batch(
    arrays: dict[str, Any], index: np.ndarray, device: torch.device
) -> tuple[dict[str, Any], dict[str, torch.Tensor], torch.Tensor]:
    inputs = to_torch_inputs(
        {k: v[index] for k, v in arrays["inputs"].items()},
        None if arrays["scene_mask"] is None else arrays["scene_mask"][index],
        device,
    )
    present = {k: torch.as_tensor(v[index], device=device) for k, v in arrays["present"].items()}
    return inputs, present, torch.as_tensor(arrays["labels"][index], device=device)


def worker_loop(config: dict[str, Any]) -> list[dict[str, float]]:
    """Ray Train worker: train for `epochs`, report validation metrics every epoch and a
    checkpoint whenever the validation cross-entropy improves. Returns the history."""
    import ray
    import ray.train
    import ray.train.torch
    from safetensors.torch import save_file

    spec = config["spec"]
    data = ray.get(config["data"])
    train, val = data["train"], data["val"]
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    torch.manual_seed(spec["seed"] + rank)
    trainable = build_module(spec)
    opt, scheduler = _optimizer(trainable, spec)
    model = ray.train.torch.prepare_model(
        trainable, parallel_strategy_kwargs={"find_unused_parameters": True}
    )
    unwrapped = model.module if hasattr(model, "module") else model
    best, history = float("inf"), []
    for epoch in range(config["epochs"]):
        model.train()
        order = np.random.default_rng(spec["seed"] + epoch).permutation(len(train["labels"]))
        mine = order[rank::world]
        # Every worker takes the same number of steps, or DDP's all-reduce would wait forever.
        steps = -(-len(order) // world // config["batch_size"]) if len(order) else 0
        total, seen, started = 0.0, 0, time.perf_counter()
        for step in range(steps):
            index = mine[step * config["batch_size"] : (step + 1) * config["batch_size"]]
            if len(index) == 0:
                index = mine[:1] if len(mine) else order[:1]
            loss, _ = model(*_batch(train, index, device))
            opt.zero_grad()
            loss.backward()
            opt.step()
            total, seen = total + loss.item() * len(index), seen + len(index)
        if scheduler is not None:
            scheduler.step()
        epoch_s = time.perf_counter() - started
        val_loss, val_correct, val_n = _evaluate(
            unwrapped, val, rank, world, device, config["batch_size"]
        )
        sums = torch.tensor([total, seen, val_loss, val_correct, val_n], dtype=torch.float64)
        if world > 1:
            import torch.distributed as dist

            dist.all_reduce(sums)
        total, seen, val_loss, val_correct, val_n = sums.tolist()
        row = {
            "epoch": epoch,
            "train_loss": total / max(seen, 1),
            "val_loss": val_loss / max(val_n, 1),
            "val_accuracy": val_correct / max(val_n, 1),
            "epoch_s": epoch_s,  # this worker's training steps (validation excluded)
        }
        history.append(row)
        if row["val_loss"] < best:
            best = row["val_loss"]
            with tempfile.TemporaryDirectory() as tmp:
                checkpoint = None
                if rank == 0:
                    state = {
                        k: v.detach().cpu().contiguous()
                        for k, v in unwrapped.model.state_dict().items()
                    }
                    save_file(state, os.path.join(tmp, "model.safetensors"))
                    checkpoint = ray.train.Checkpoint.from_directory(tmp)
                ray.train.report(row, checkpoint=checkpoint)
        else:
            ray.train.report(row)
    return history


def _evaluate(
    trainable: Trainable,
    val: dict[str, Any],
    rank: int,
    world: int,
    device: torch.device,
    batch_size: int,
) -> tuple[float, float, float]:
    """Sums of validation cross-entropy and correct predictions over this worker's shard."""
    trainable.eval()
    index = np.arange(len(val["labels"]))[rank::world]
    loss_sum = correct = 0.0
    with torch.no_grad():
        for i in range(0, len(index), batch_size):
            inputs, present, target = _batch(val, index[i : i + batch_size], device)
            logits = trainable.logits(inputs, present)
            loss_sum += F.cross_entropy(logits, target, reduction="sum").item()
            correct += (logits.argmax(-1) == target).sum().item()
    return loss_sum, correct, float(len(index))


# --- the job ---------------------------------------------------------------------------------


def fit(
    cfg: TrainConfig, name: str, spec: dict[str, Any], data_ref: Any, epochs: int
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
    every = max(1, epochs // 10)  # at most ~10 progress lines per run
    for row in history:
        if (row["epoch"] + 1) % every and row["epoch"] + 1 != epochs:
            continue
        print(
            f"  {name} epoch {row['epoch'] + 1}/{epochs}: train_loss {row['train_loss']:.4f} "
            f"val_loss {row['val_loss']:.4f} val_accuracy {row['val_accuracy']:.3f}",
            flush=True,
        )
    best = min(history, key=lambda r: r["val_loss"]) if history else None
    if best is not None:
        print(
            f"{name}: best val_loss {best['val_loss']:.4f} at epoch {best['epoch'] + 1} "
            f"(val_accuracy {best['val_accuracy']:.3f}), {time.monotonic() - start:.0f} s",
            flush=True,
        )
    return state, history


def mlflow_client(tracking_uri: str | None, experiment: str, run_dir: str) -> Any:
    """`mlflow`, pointed at `tracking_uri` ($MLFLOW_TRACKING_URI, else a SQLite store under
    `run_dir`) with `experiment` active (created with a local artifact root if needed)."""
    import mlflow

    folder = Path(run_dir).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{folder}/mlflow.db"
    mlflow.set_tracking_uri(uri)
    if mlflow.get_experiment_by_name(experiment) is None:
        artifacts = None if uri.startswith("http") else (folder / "mlartifacts").as_uri()
        mlflow.create_experiment(experiment, artifact_location=artifacts)
    mlflow.set_experiment(experiment)
    return mlflow


def flat_params(prefix: str, cfg: Any) -> dict[str, str]:
    """A config dataclass as flat MLflow params."""
    values = dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else cfg
    out = {}
    for k, v in values.items():
        key = f"{prefix}.{k}" if prefix else k
        if isinstance(v, dict) and k not in ("vote_weights",):
            out.update(flat_params(key, v))
        elif k not in ("key", "secret", "token"):
            out[key] = json.dumps(v) if isinstance(v, dict | list | tuple) else str(v)
    return out


def log_scores(
    mlflow: Any,
    title: str,
    labels: np.ndarray,
    probs: np.ndarray,
    predicted: np.ndarray | None = None,
) -> dict[str, float]:
    """Final metrics and the confusion-matrix PNG into the active run."""
    result = metrics.scores(labels, probs, predicted)
    mlflow.log_metrics({f"val_{k}": v for k, v in result.items()})
    pred = probs.argmax(1) if predicted is None else predicted
    figure = metrics.confusion_figure(metrics.confusion(labels, pred), title)
    mlflow.log_figure(figure, "confusion_matrix.png")
    import matplotlib.pyplot as plt

    plt.close(figure)
    return result


def predict(
    model: nn.Module, data: FeatureSet, modality: str | None, batch: int = 32
) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities and predictions of a head (`modality`) or a fusion on `data`."""
    model.eval()
    probs, preds = [], []
    arrays = _arrays(data)
    with torch.no_grad():
        for i in range(0, len(data), batch):
            inputs, present, _ = _batch(
                arrays, np.arange(i, min(i + batch, len(data))), torch.device("cpu")
            )
            if modality is None:
                p, y = model.predict(inputs, present)
            else:
                p = Trainable(model, modality).logits(inputs, present).softmax(-1)
                y = p.argmax(-1)
            probs.append(p.numpy())
            preds.append(y.numpy())
    if not probs:
        return np.zeros((0, 3)), np.zeros(0, int)
    return np.concatenate(probs), np.concatenate(preds)


def fusion_variants(cfg: TrainConfig) -> dict[str, fusion.Config]:
    """Variant name -> fusion config: the main one, its ablations, the three votes."""
    main = cfg.fusion
    variants = {main.method: main}
    mods = cfg.configs.modalities
    if cfg.ablation and main.method in ("fc", "vae") and len(mods) > 1:
        for m in mods:
            variants[f"{main.method}-without-{m}"] = dataclasses.replace(
                main, modalities=tuple(x for x in mods if x != m)
            )
    for method in fusion.VOTING:
        variants.setdefault(method, dataclasses.replace(main, method=method))
    return variants


def run_train(cfg: TrainConfig, ray_address: str | None = None) -> TrainResult:
    """Train every head and fusion variant; log, package and register the model."""
    import ray
    from safetensors.torch import save

    from emotiw.features import read_rows, to_feature_set
    from emotiw.packaging import save_model
    from emotiw.pipeline import ensure_ray

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
    provenance = _table_provenance(rows)
    scene_cfg = cfg.configs.scene
    if "scene" in cfg.configs.modalities and scene_cfg.frozen:
        train.inputs["scene"], prov = scene_maps(train, scene_cfg, cfg.weights)
        val.inputs["scene"], _ = scene_maps(val, scene_cfg, cfg.weights)
        provenance.update(prov)
    ensure_ray(ray_address)
    data_ref = ray.put({"train": _arrays(train), "val": _arrays(val)})
    mlflow = mlflow_client(cfg.tracking_uri, cfg.experiment, cfg.run_dir)
    heads: dict[str, nn.Module] = {}
    states: dict[str, bytes] = {}
    all_scores: dict[str, dict[str, float]] = {}
    with mlflow.start_run(run_name="train") as parent:
        mlflow.log_params(
            flat_params(
                "",
                {
                    "features": cfg.features,
                    "val_features": cfg.val_features,
                    "seed": cfg.seed,
                    "epochs": cfg.epochs,
                    "fusion_epochs": cfg.fusion_epochs,
                    "batch_size": cfg.batch_size,
                    "workers": cfg.workers,
                    "n_train": len(train),
                    "n_val": len(val),
                },
            )
        )
        mlflow.log_params(
            flat_params(
                "", {m: dataclasses.asdict(cfg.configs.of(m)) for m in cfg.configs.modalities}
            )
        )
        mlflow.log_dict(provenance, "weights_provenance.json")
        for name in cfg.configs.modalities:
            spec = {"kind": "head", "modality": name, "cfg": cfg.configs.of(name), "seed": cfg.seed}
            with mlflow.start_run(run_name=f"head:{name}", nested=True):
                mlflow.log_params(flat_params(name, cfg.configs.of(name)))
                state, history = fit(cfg, f"head-{name}", spec, data_ref, cfg.epochs)
                _log_history(mlflow, history)
                head = build_module(spec).model
                if name == "scene":  # the trained heads on top of the real backbone
                    from emotiw.modalities import scene

                    head = scene.Head(scene_cfg, cfg.weights)
                    head.load_state_dict(
                        {
                            **head.state_dict(),
                            **{k: v for k, v in state.items() if not k.startswith("backbone.")},
                        }
                    )
                else:
                    head.load_state_dict(state)
                heads[name] = head.eval()
                states[name] = save({k: v.contiguous() for k, v in head.state_dict().items()})
                probs, preds = predict(head, val, name)
                all_scores[name] = log_scores(mlflow, f"{name} head", val.labels, probs, preds)
        fusions: dict[str, fusion.Fusion] = {}
        hidden_ref = None
        if not cfg.fusion.train_heads:  # frozen heads: run each once, not once per epoch
            hidden_ref = ray.put(
                {"train": head_features(heads, train), "val": head_features(heads, val)}
            )
        for variant, fcfg in fusion_variants(cfg).items():
            with mlflow.start_run(run_name=f"fusion:{variant}", nested=True):
                mlflow.log_params(flat_params("fusion", fcfg))
                model = fusion.build(heads, fcfg)
                if fusion.optimizer(model) is not None:
                    spec = {"kind": "fusion", "configs": cfg.configs, "fusion": fcfg}
                    spec["seed"] = cfg.seed
                    if hidden_ref is None:
                        spec["head_states"] = {m: states[m] for m in fcfg.modalities}
                    else:
                        spec["precomputed"] = {
                            m: int(heads[m].feature_dim) for m in fcfg.modalities
                        }
                    state, history = fit(
                        cfg, f"fusion-{variant}", spec, hidden_ref or data_ref, cfg.fusion_epochs
                    )
                    _log_history(mlflow, history)
                    model.load_state_dict(
                        {k: v for k, v in state.items() if not k.startswith("heads.")}, strict=False
                    )
                fusions[variant] = model.eval()
                probs, preds = predict(model, val, None)
                all_scores[f"fusion:{variant}"] = log_scores(
                    mlflow, f"{variant} fusion", val.labels, probs, preds
                )
        meta = {"scores": all_scores, "train_run_id": parent.info.run_id}
        meta.update(n_train=len(train), n_val=len(val))
        package = PackagedModel(cfg.configs, heads, fusions, cfg.fusion.method, provenance, meta)
        package_dir = save_model(Path(cfg.run_dir) / "model" / parent.info.run_id, package)
        from emotiw.mlflow_model import log_package

        model_uri = log_package(mlflow, package_dir, cfg.model_name)
        mlflow.log_metrics(
            {f"{k.replace(':', '_')}_val_accuracy": v["accuracy"] for k, v in all_scores.items()}
        )
    return TrainResult(package, package_dir, parent.info.run_id, model_uri, all_scores)


def _log_history(mlflow: Any, history: list[dict[str, float]]) -> None:
    for row in history:
        mlflow.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=int(row["epoch"]))


def _table_provenance(rows: Any) -> dict[str, str]:
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
