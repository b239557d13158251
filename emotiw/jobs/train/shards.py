"""A Ray Train worker's batches, epoch after epoch. A training set that fits in a worker's
cache budget is read whole by every worker, and each epoch a seeded permutation of all of it
is dealt out rank by rank (`strided`: every epoch mixes the clips across workers, as on one
machine). A larger one is split by Ray Data (`streaming_split`), each worker streaming its
shard every epoch (`ShardCache`, `lockstep`)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from emotiw.jobs.train.data import unflatten


class ShardCache:
    """One worker's shard of a dataset (`ray.train.get_dataset_shard`), read every epoch.

    The first pass streams the shard from Ray Data. When it fits in `budget_bytes` it is
    kept, and later epochs reshuffle it in memory (seeded): each Ray Data pass costs 1-3 s of
    start-up here, most of an epoch on a small table. A larger shard streams every epoch, so
    a worker's memory is bounded by the budget and Ray Data's prefetching, whatever the
    table's size.
    """

    def __init__(self, shard: Any, budget_bytes: int) -> None:
        self.shard, self.budget = shard, budget_bytes
        self.cached: dict[str, Any] | None = None
        self.too_big = False

    def epoch(self, size: int, seed: int, shuffle: bool = True) -> Iterator[dict[str, Any]]:
        """The epoch's batches of `size` rows as worker arrays (locally shuffled, seeded)."""
        if self.cached is not None:
            n = len(self.cached["labels"])
            order = np.random.default_rng(seed).permutation(n) if shuffle else np.arange(n)
            for i in range(0, n, size):
                yield take(self.cached, order[i : i + size])
            return
        shuffling = {"local_shuffle_buffer_size": 8 * size, "local_shuffle_seed": seed}
        kept: list[dict[str, Any]] = []
        used = 0
        for found in self.shard.iter_batches(
            batch_size=size, batch_format="numpy", **(shuffling if shuffle else {})
        ):
            arrays = unflatten(found)
            if not self.too_big:
                used += sum(v.nbytes for v in found.values() if isinstance(v, np.ndarray))
                self.too_big = used > self.budget
                kept = [] if self.too_big else [*kept, arrays]
            yield arrays
        if not self.too_big:  # a whole pass (an interrupted one never gets here)
            self.cached = concat(kept)

    def whole(self) -> dict[str, Any] | None:
        """Every row, in memory (read once; the caller knows it fits)."""
        for _ in self.epoch(1024, 0, shuffle=False):
            pass
        return self.cached


def strided(
    arrays: dict[str, Any] | None, size: int, seed: int, rank: int, world: int
) -> Iterator[dict[str, Any]]:
    """One epoch of this worker's batches out of the whole training set: a seeded permutation
    dealt out rank by rank; every worker takes the same number of steps (DDP)."""
    n = 0 if arrays is None else len(arrays["labels"])
    order = np.random.default_rng(seed).permutation(n)
    mine = order[rank::world]
    for step in range(-(-n // world // size) if n else 0):
        index = mine[step * size : (step + 1) * size]
        if len(index) == 0:
            index = mine[:1] if len(mine) else order[:1]
        yield take(arrays, index)  # type: ignore[arg-type]


def lockstep(
    batches: Iterator[dict[str, Any]], world: int, device: torch.device
) -> Iterator[dict[str, Any]]:
    """`batches` until any worker runs out: shards are split equally, but DDP's all-reduce
    would wait forever for a worker that took fewer steps."""
    while True:
        found = next(batches, None)
        if world > 1:
            import torch.distributed as dist

            more = torch.tensor([0 if found is None else 1], device=device)  # NCCL: on GPU
            dist.all_reduce(more, op=dist.ReduceOp.MIN)
            if not more.item():
                for _ in batches:  # finish this epoch's stream before the next one starts
                    pass
                return
        elif found is None:
            return
        yield found


def take(arrays: dict[str, Any], index: np.ndarray) -> dict[str, Any]:
    """Rows `index` of worker arrays."""
    return {
        "inputs": {m: tuple(a[index] for a in v) for m, v in arrays["inputs"].items()},
        "present": {m: v[index] for m, v in arrays["present"].items()},
        "labels": arrays["labels"][index],
    }


def concat(parts: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Worker arrays of several batches as one (None for none)."""
    if not parts:
        return None
    first = parts[0]
    return {
        "inputs": {
            m: tuple(np.concatenate([p["inputs"][m][i] for p in parts]) for i in range(len(v)))
            for m, v in first["inputs"].items()
        },
        "present": {m: np.concatenate([p["present"][m] for p in parts]) for m in first["present"]},
        "labels": np.concatenate([p["labels"] for p in parts]),
    }
