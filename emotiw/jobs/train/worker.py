"""What one Ray Train worker runs: build each head or fusion the run's specs describe, train it
with DDP on its shard of the training dataset (`ray.train.get_dataset_shard`), keep the state
of its best epoch by the schedule's selection metric (validation cross-entropy, or accuracy
where the deployed model was picked by it), and stop early when validation loss has not
improved for the schedule's patience. Metrics and the best checkpoint go to Ray Train at most
once per report interval and after the last epoch: each `ray.train.report` waits for the
controller's poll, which cost more than a small head's whole epoch."""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from emotiw import modalities as registry
from emotiw.jobs.train.config import higher_is_better
from emotiw.jobs.train.shards import ShardCache, lockstep, strided
from emotiw.models import fusion
from emotiw.models.features import ModalityConfigs
from emotiw.models.inference import batch


@dataclass(frozen=True)
class HeadSpec:
    """Train modality `modality`'s head with `cfg`."""

    modality: str
    cfg: Any
    seed: int


@dataclass(frozen=True)
class FusionSpec:
    """Train a fusion over frozen heads: either their hidden layers precomputed (`precomputed`:
    modality -> hidden width) or the heads themselves (`head_states`: safetensors bytes)."""

    configs: ModalityConfigs
    fusion: fusion.Config
    seed: int
    precomputed: dict[str, int] = field(default_factory=dict)
    head_states: dict[str, bytes] = field(default_factory=dict)


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


def _build_module(spec: HeadSpec | FusionSpec) -> Trainable:
    """The module a spec describes (specs are picklable and travel to the workers)."""
    from safetensors.torch import load

    if isinstance(spec, HeadSpec):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(spec.seed)
            return Trainable(registry.get(spec.modality).head(spec.cfg), spec.modality)
    heads: dict[str, nn.Module] = {}
    for name, dim in spec.precomputed.items():
        heads[name] = fusion.Precomputed(dim)
    for name, state in spec.head_states.items():
        head = registry.get(name).head(spec.configs.of(name))
        head.load_state_dict(load(state))
        heads[name] = head
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        return Trainable(fusion.build(heads, spec.fusion), None)


def optimizer(trainable: Trainable, spec: HeadSpec | FusionSpec) -> tuple[Any, Any]:
    """The optimiser and the per-epoch schedule (or None) of what `trainable` holds."""
    if not isinstance(spec, HeadSpec):
        return fusion.optimizer(trainable.model), None
    modality = registry.get(spec.modality)
    opt = modality.optimizer(modality.parameter_groups(trainable.model, spec.cfg), spec.cfg)
    return opt, modality.scheduler(opt, spec.cfg)


def worker_loop(config: dict[str, Any]) -> list[list[dict[str, float]]]:
    """Ray Train worker: train each of ``config["models"]`` (``(tag, spec, schedule)``) in
    turn, each as if alone (its own seed, optimiser and early stopping), on this worker's
    shard of the "train" dataset, scoring the whole "val" dataset every epoch. One run for
    several models pays Ray Train's start-up (~10 s) once: the heads of a job, the fusion
    variants over one set of hidden layers, a stacking fold's heads.

    Reports to Ray Train every ``config["report_interval_s"]`` (0: every epoch) and after
    each model's last epoch: that epoch's metrics, or, when a better epoch is pending, a
    checkpoint holding every model's best state so far (``<tag>.safetensors``), so the run's
    latest checkpoint is every model's best. Every worker computes the same validation
    figures, so all stop early at the same epoch. Returns each model's per-epoch history
    (every epoch, whatever was reported)."""
    import ray.train

    budget = config["cache_bytes"]
    train = ShardCache(ray.train.get_dataset_shard("train"), budget)
    val = ShardCache(ray.train.get_dataset_shard("val"), budget)
    whole = None if config["split"] else train.whole()  # small: every worker has all of it
    kept: dict[str, Any] = {}  # tag -> best state so far (rank 0's; the others keep None)
    return [
        _train_one(tag, spec, schedule, (train, val, whole), kept, config["report_interval_s"])
        for tag, spec, schedule in config["models"]
    ]


def _train_one(
    tag: str,
    spec: HeadSpec | FusionSpec,
    schedule: Any,
    data: tuple[ShardCache, ShardCache, dict[str, Any] | None],
    kept: dict[str, Any],
    report_interval_s: float,
) -> list[dict[str, float]]:
    """One model of `worker_loop`: train, select, stop early, report; its history."""
    import ray.train
    import ray.train.torch

    train, val, whole = data
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    torch.manual_seed(spec.seed + rank)
    trainable = _build_module(spec)
    opt, scheduler = optimizer(trainable, spec)
    model = ray.train.torch.prepare_model(
        trainable, parallel_strategy_kwargs={"find_unused_parameters": True}
    )
    unwrapped = model.module if hasattr(model, "module") else model
    own = _only(spec.modality) if isinstance(spec, HeadSpec) else _all
    selection, history = _Selection(schedule.select_by, schedule.patience), []
    best: dict[str, float] | None = None
    pending, reported_at = False, time.monotonic()  # pending: `best` not yet reported
    size = schedule.batch_size
    for epoch in range(schedule.epochs):
        model.train()
        total, seen, started = 0.0, 0, time.perf_counter()
        seed = spec.seed + epoch
        if whole is None:
            batches = lockstep(train.epoch(size, seed), world, device)
        else:
            batches = strided(whole, size, seed, rank, world)
        for arrays in batches:
            index = np.arange(len(arrays["labels"]))
            loss, _ = model(*batch(own(arrays), index, device))
            opt.zero_grad()
            loss.backward()
            opt.step()
            total, seen = total + loss.item() * len(index), seen + len(index)
        if scheduler is not None:
            scheduler.step()
        epoch_s = time.perf_counter() - started
        val_batches = (own(a) for a in val.epoch(size, 0, False))
        val_loss, val_correct, val_n = evaluate(unwrapped, val_batches, device)
        sums = torch.tensor([total, seen], dtype=torch.float64, device=device)  # NCCL: on GPU
        if world > 1:
            import torch.distributed as dist

            dist.all_reduce(sums)
        total, seen = sums.tolist()
        row = {
            "epoch": epoch,
            "train_loss": total / max(seen, 1),
            "val_loss": val_loss / max(val_n, 1),
            "val_accuracy": val_correct / max(val_n, 1),
            "epoch_s": epoch_s,  # this worker's training steps (validation excluded)
        }
        history.append(row)
        if selection.improved(row):  # kept in memory; persisted at the next report
            best, pending = row, True
            kept[tag] = _state_of(unwrapped.model) if rank == 0 else None
        # One decision for all workers (a worker reporting or leaving alone would hang the
        # others): stop early, and report now (the interval passed; rank 0's clock decides).
        due = time.monotonic() - reported_at >= report_interval_s
        flags = torch.tensor([float(selection.stop()), float(due and rank == 0)], device=device)
        if world > 1:
            import torch.distributed as dist

            dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        stop, due = bool(flags[0].item()), bool(flags[1].item())
        if due or stop or epoch == schedule.epochs - 1:
            _report(tag, row, best if pending else None, kept, rank)
            pending, reported_at = False, time.monotonic()
        if stop:
            break
    return history


def _only(modality: str) -> Any:
    """A head's view of worker arrays: its own modality (the run may carry others')."""

    def view(arrays: dict[str, Any]) -> dict[str, Any]:
        return {"inputs": {modality: arrays["inputs"][modality]},
                "present": {modality: arrays["present"][modality]},
                "labels": arrays["labels"]}  # fmt: skip

    return view


def _all(arrays: dict[str, Any]) -> dict[str, Any]:
    return arrays


def _state_of(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()}


def _report(
    tag: str,
    row: dict[str, float],
    best: dict[str, float] | None,
    kept: dict[str, Any],
    rank: int,
) -> None:
    """`ray.train.report` this epoch's metrics, or, when a better epoch than the last
    persisted one is pending, a checkpoint of every model's best state so far with the
    pending epoch's metrics."""
    import ray.train
    from safetensors.torch import save_file

    if best is None:
        ray.train.report({**row, "model": tag})
        return
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = None
        if rank == 0:
            for name, state in kept.items():
                save_file(state, os.path.join(tmp, f"{name}.safetensors"))
            checkpoint = ray.train.Checkpoint.from_directory(tmp)
        metrics = {**best, "model": tag, "reported_at_epoch": row["epoch"]}
        ray.train.report(metrics, checkpoint=checkpoint)


class _Selection:
    """Which epoch's checkpoint to keep and when to stop, as Keras' ``ModelCheckpoint(monitor=
    select_by, save_best_only=True)`` and ``EarlyStopping(monitor="val_loss", patience)``:
    a checkpoint only on a strict improvement (loss down, accuracy up); stop after `patience`
    epochs (0: never) without a lower validation loss."""

    def __init__(self, select_by: str, patience: int = 0) -> None:
        self.key, self.patience = select_by, patience
        self.sign = -1.0 if higher_is_better(select_by) else 1.0  # lower is better
        self.best = self.lowest_loss = float("inf")
        self.since = 0

    def improved(self, row: dict[str, float]) -> bool:
        self.since = 0 if row["val_loss"] < self.lowest_loss else self.since + 1
        self.lowest_loss = min(self.lowest_loss, row["val_loss"])
        if self.sign * row[self.key] < self.best:
            self.best = self.sign * row[self.key]
            return True
        return False

    def stop(self) -> bool:
        return bool(self.patience) and self.since >= self.patience


def evaluate(
    trainable: Trainable, val: Iterator[dict[str, Any]], device: torch.device
) -> tuple[float, float, float]:
    """Sums of validation cross-entropy and correct predictions over the whole validation
    dataset (every worker sees all of it: the validation set is small and never split, so no
    clip is dropped to even out shards)."""
    trainable.eval()
    loss_sum = correct = n = 0.0
    with torch.no_grad():
        for arrays in val:
            inputs, present, target = batch(arrays, np.arange(len(arrays["labels"])), device)
            logits = trainable.logits(inputs, present)
            loss_sum += F.cross_entropy(logits, target, reduction="sum").item()
            correct += (logits.argmax(-1) == target).sum().item()
            n += len(target)
    return loss_sum, correct, n
