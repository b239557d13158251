"""Sizing the jobs' Ray Data stages: the actor pools (how many actors, the CPUs and memory
each declares, whether a local Ray can hold them) and the input blocks the driver cuts the
listing into (few tasks for a large run, every actor busy in a small one)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any

from emotiw.core import config


def assigned_cpus() -> int | None:
    """The CPUs Ray gave this worker (at least 1), rounded up; None outside a Ray worker."""
    import math

    import ray

    if not ray.is_initialized():  # (asking would start a local Ray in this process)
        return None
    try:
        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1)
    except AssertionError:  # a driver: "only available when the process is a worker"
        return None
    return max(1, math.ceil(cpus))


def memory_args(gib: float) -> dict[str, int]:
    """Ray's ``memory`` resource for an actor declaring `gib` GiB (none for 0)."""
    return {"memory": int(gib * 2**30)} if gib > 0 else {}


def model_actor_gib(value: str, configs: Any, frame_batch: int) -> float:
    """`ScoreConfig.memory_per_model_actor`: a number of GiB, or ``auto``: what the package
    needs by measurement (`emotiw.core.config`): more, growing with `frame_batch`, when one of its
    modalities runs a detector at the model stage."""
    from emotiw.modalities.base import MODEL_STAGE

    gib = config.amount(value, "memory_per_model_actor")
    if gib is not None:
        return gib
    if any(s.stage(configs.of(s.name)) == MODEL_STAGE for s in configs.specs()):
        return config.MODEL_DETECTOR_GIB + config.MODEL_DETECTOR_GIB_PER_FRAME * frame_batch
    return config.MODEL_ACTOR_GIB


def check_memory(pools: dict[str, tuple[int, float]], ray_address: str | None) -> str:
    """The Ray memory the pools' smallest sizes declare (pool -> (min actors, GiB each))
    against the cluster's. A local Ray that cannot hold them would wait for memory forever,
    so that fails here; on a cluster the autoscaler may add nodes.

    Raises:
        Unavailable: a local Ray with less memory than the pools' minimum declares.
    """
    import ray

    from emotiw.core.errors import Unavailable

    need = sum(n * gib for n, gib in pools.values())
    have = ray.cluster_resources().get("memory", 0.0) / 2**30
    parts = ", ".join(f"{n} {name} x {gib:g} GiB" for name, (n, gib) in pools.items() if gib)
    local = not (ray_address or os.environ.get("RAY_ADDRESS"))
    if local and need > have:
        flags = "/".join(f"--memory-per-{name}-actor" for name in pools)
        raise Unavailable(
            f"the actor pools' smallest sizes declare {need:.1f} GiB of memory ({parts}) but "
            f"this machine's Ray has {have:.1f} GiB: lower {flags} (0 declares none) or run on "
            "a cluster (--address)"
        )
    return f"memory: pools declare {parts or 'none'}; Ray has {have:.1f} GiB"


def actor_pool(min_size: int, max_size: int) -> Any:
    """A Ray Data actor pool of `min_size` actors growing to `max_size` (0: no cap, so the
    pool grows with the cluster: Ray Data adds actors as nodes join, and its cluster
    autoscaler asks Ray's autoscaler for the nodes that pending actors need)."""
    import ray

    return ray.data.ActorPoolStrategy(min_size=min_size, max_size=max_size or None)


def pool_estimate(
    max_size: int, per_actor: float, reserved: float = 0.0, gib: float = 0.0,
    reserved_gib: float = 0.0,
) -> int:  # fmt: skip
    """How many actors a pool will likely have early in the run: its cap, else what the
    cluster's CPUs and memory hold now (only spreads the first blocks; the pool still grows)."""
    import ray

    if max_size:
        return max_size
    resources = ray.cluster_resources()
    fits = (resources.get("CPU", 1.0) - reserved) // per_actor
    if gib:
        fits = min(fits, (resources.get("memory", 0.0) / 2**30 - reserved_gib) // gib)
    return max(1, int(fits))


def _block_size(placed: int, pool: int, block_clips: int) -> int:
    """Items in the next input block, `placed` items already in blocks: one each for the
    first ``2 x pool`` (a small run spreads over every actor), then a ``4 x pool``-th of
    those so far, up to `block_clips`. A block is then never more than a quarter of an
    actor's share of the items before it (the run's last block cannot leave the other actors
    idle for long, whatever the run's size), and a large run costs one Ray task per
    `block_clips` items: ~``4 x pool x ln(block_clips)`` blocks to reach it."""
    if placed < 2 * pool:
        return 1
    return max(1, min(block_clips, placed // (4 * pool)))


def plan_blocks(
    items: Iterable[dict[str, Any]], start: Callable[[], int], block_clips: int = 100
) -> tuple[list[Any], int]:
    """The listing's items (clips, or windows of long videos: the same work each), put into
    Ray's object store block by block as they stream from the listing: the driver holds one
    block of items and a reference per block. `start()` is called before the first block (it
    starts Ray and returns the extract pool's size), so a listing with nothing to do starts
    nothing. Returns the block references and the count."""
    import pyarrow as pa
    import ray

    refs: list[Any] = []
    pool: int | None = None
    block: list[dict[str, Any]] = []
    count = 0
    for item in items:
        if pool is None:
            pool = max(1, start())
        block.append(item)
        if len(block) >= _block_size(count, pool, block_clips):
            refs.append(ray.put(pa.Table.from_pylist(block)))
            count += len(block)
            block = []
    if block:
        refs.append(ray.put(pa.Table.from_pylist(block)))
        count += len(block)
    return refs, count


def score_pools(cfg: Any, configs: Any) -> dict[str, float]:
    """The model stage's GPUs per actor and the pools' caps (0: none). Auto GPUs look at the
    cluster as it is when the job starts; an explicit request is passed on as is, so Ray
    Data's autoscaler asks for GPU nodes that are not up yet."""
    import ray

    gpus = config.amount(cfg.gpus_per_model_actor, "gpus_per_model_actor")
    if gpus is None:
        gpus = 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0
    model_max = cfg.model_actors or (0 if gpus else 1)
    reserved = cfg.min_model_actors * cfg.cpus_per_model_actor
    model_gib = model_actor_gib(cfg.memory_per_model_actor, configs, cfg.frame_batch_size)
    reserved_gib = cfg.min_model_actors * model_gib
    estimate = pool_estimate(cfg.extract_actors, cfg.cpus_per_extract_actor, reserved,
                             cfg.memory_per_extract_actor, reserved_gib)  # fmt: skip
    return {"gpus": gpus, "model_max": model_max, "cpu_estimate": estimate,
            "model_gib": model_gib}  # fmt: skip


def describe_pools(cfg: Any, pools: dict[str, float]) -> str:
    """The pools as sized, and why the model stage has no GPU when it has none."""
    cpu_max, model_max = (int(n) or "no cap" for n in (cfg.extract_actors, pools["model_max"]))
    text = (
        f"extract {cfg.min_extract_actors}..{cpu_max} actors x {cfg.cpus_per_extract_actor:g} CPU "
        f"{cfg.memory_per_extract_actor:g} GiB, model {cfg.min_model_actors}..{model_max} x "
        f"{pools['gpus']:g} GPU {pools['model_gib']:g} GiB"
    )
    if cfg.gpus_per_model_actor == config.AUTO and not pools["gpus"]:
        text += (" (no GPU in the cluster when the job started; --gpus-per-model-actor 1 "
                 "asks the autoscaler for one)")  # fmt: skip
    return text
