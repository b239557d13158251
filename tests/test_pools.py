"""Sizing the actor pools (`emotiw.jobs.pools`) and watching the cluster
(`emotiw.jobs.cluster_watch`) on the session's Ray cluster: the memory each actor declares, the
local-Ray check, the decoder threads an actor gets, and a run's report of lost nodes."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.e2e


def test_memory_declarations_and_the_local_ray_check(local_ray, monkeypatch) -> None:
    import ray

    from emotiw.core import config
    from emotiw.core.config import EXTRACT_ACTOR_GIB, MODEL_ACTOR_GIB
    from emotiw.core.errors import Unavailable
    from emotiw.jobs.extract import ExtractConfig
    from emotiw.jobs.pools import check_memory, memory_args, model_actor_gib, pool_estimate
    from emotiw.jobs.score import ScoreConfig
    from emotiw.models.features import ModalityConfigs

    assert memory_args(0) == {} and memory_args(1.5) == {"memory": 3 * 2**29}
    score = ScoreConfig(output="o", model="m", input="i")
    assert score.memory_per_extract_actor == EXTRACT_ACTOR_GIB > 0
    assert score.memory_per_model_actor == "auto"
    with pytest.raises(ValueError, match="memory_per_model_actor"):
        ScoreConfig(output="o", model="m", input="i", memory_per_model_actor="lots")
    smoke, paper = ModalityConfigs.preset("cpu-smoke"), ModalityConfigs.preset("paper")
    assert model_actor_gib("auto", smoke, 32) == MODEL_ACTOR_GIB  # no model-stage detector
    detector = config.MODEL_DETECTOR_GIB + 32 * config.MODEL_DETECTOR_GIB_PER_FRAME
    assert model_actor_gib("auto", paper, 32) == detector  # Keypoint R-CNN at the model stage
    assert model_actor_gib("auto", paper, 8) < detector and model_actor_gib("3", paper, 32) == 3
    assert ExtractConfig(videos="v", output="o").memory_per_extract_actor == EXTRACT_ACTOR_GIB
    with pytest.raises(ValueError, match="memory_per_extract_actor"):
        ExtractConfig(videos="v", output="o", memory_per_extract_actor=-1)

    have = ray.cluster_resources()["memory"] / 2**30
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    line = check_memory({"extract": (1, 1.0), "model": (1, 0.5)}, None)
    assert "1 extract x 1 GiB, 1 model x 0.5 GiB" in line and f"{have:.1f} GiB" in line
    too_much = {"extract": (2, have), "model": (1, 1.0)}
    with pytest.raises(Unavailable) as raised:  # a local Ray would wait forever
        check_memory(too_much, None)
    assert "--memory-per-extract-actor/--memory-per-model-actor" in str(raised.value)
    assert raised.value.exit_code == 69
    check_memory(too_much, "127.0.0.1:1")  # a cluster may grow: not refused

    cpus = int(ray.cluster_resources()["CPU"])
    assert pool_estimate(0, 1.0) == cpus  # CPUs alone
    assert pool_estimate(0, 1.0, gib=have / 1.5) == 1  # memory holds one actor
    assert pool_estimate(0, 1.0, gib=have * 2) == 1  # never below one
    assert pool_estimate(3, 1.0, gib=have * 2) == 3  # a cap is the estimate


def test_an_actor_decodes_with_as_many_threads_as_ray_gave_it(local_ray) -> None:
    import ray

    from emotiw.jobs.pools import assigned_cpus

    threads = [ray.get(ray.remote(num_cpus=n)(assigned_cpus).remote()) for n in (1, 2, 0.5)]
    assert threads == [1, 2, 1]
    assert assigned_cpus() is None  # a driver, not a Ray worker: FFmpeg chooses


def test_a_run_that_lost_no_node_reports_nothing_and_operators_are_named(local_ray) -> None:
    """The nightly node-loss run (tests/test_exactly_once.py) shows a report with a loss."""
    from emotiw.jobs.cluster_watch import NodeWatch, _operator

    watch = NodeWatch()
    assert watch.lost() == [] and watch.report() == ""
    assert _operator("MapWorker(MapBatches(ExtractActor)).submit") == "ExtractActor"
    assert _operator("MapWorker(MapBatches(ModelActor))") == "ModelActor"
    assert _operator("ReadParquet") == "ReadParquet"
