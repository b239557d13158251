"""A poison clip: a file whose processing kills its process every time (a decoder crash, the
kernel's OOM killer). A fault-injection plug-in modality (registered as the toy one is) kills
the process extracting a clip of a given frame rate: with ``os._exit(3)`` at 7 fps, with
SIGKILL (the OOM killer's signal) at 9 fps. Each such clip becomes a ``crashed`` error row
saying how its process died, after the job's attempts; the other clips of its batch are
extracted once; the run finishes; later runs try it until it has crashed in --crash-runs
runs, then only with --retry-crashed. Ray workers and the clip processes import this module
by name (the session's Ray has the tests folder on its path), as they would a plug-in."""

from __future__ import annotations

import os
import signal
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

from emotiw import modalities
from emotiw.modalities.base import Column, Extraction, Modality
from helpers import run_here, write_clip


@dataclass(frozen=True)
class Config:
    """The fault-injection modality.

    Attributes:
        weights: ``random-init`` only.
        exit_fps: a clip at this frame rate makes the process exit with code 3.
        kill_fps: a clip at this frame rate makes the process SIGKILL itself.
    """

    weights: str = "random-init"
    exit_fps: float = 7.0
    kill_fps: float = 9.0


class Extractor:
    """Kills its own process on a poison clip; otherwise the clip's frame rate."""

    def __init__(self, cfg: Config, weights: Any = None) -> None:
        self.cfg = cfg
        self.provenance: dict[str, Any] = {}

    def __call__(self, clip: Any) -> Extraction:
        if round(clip.meta.fps) == self.cfg.exit_fps:
            os._exit(3)
        if round(clip.meta.fps) == self.cfg.kill_fps:
            os.kill(os.getpid(), signal.SIGKILL)
        return Extraction(np.array([clip.meta.fps], np.float32), stats={"poison_seen": True})


class Poison(Modality):
    name = "poison"
    Config = Config
    order = 60
    presence = "poison_seen"
    stats = (Column("poison_seen", "bool", "the clip reached the extractor"),)
    presets: ClassVar[dict[str, Any]] = {}
    feature_doc = "[1] float32 (the clip's frame rate)"

    def feature_shape(self, cfg: Config) -> tuple[int]:
        return (1,)


POISON = modalities.register(Poison())  # on import, as a plug-in package registers its modality


@pytest.fixture(scope="module", autouse=True)
def poison_registered() -> Iterator[None]:
    modalities.register(POISON)
    yield
    modalities.unregister(POISON.name)


def test_the_extract_actor_writes_a_crashing_clip_as_a_row_and_goes_on(tmp_path: Path) -> None:
    """The actor itself, without Ray: a batch of a good clip, one that exits its process and
    one SIGKILLed, in that order: three rows, the good one extracted, each poison one tried
    `attempts` times in fresh processes and written as ``crashed`` with how it died."""
    from emotiw.core.config import JobConfig, MediaConfig
    from emotiw.io.storage import list_video_objects
    from emotiw.io.weights import WeightsConfig
    from emotiw.jobs.pipeline import NO_LABEL, ExtractActor
    from emotiw.models.features import ModalityConfigs

    write_clip(tmp_path / "a_good.mp4", n_frames=30, fps=25, tone_hz=None)
    write_clip(tmp_path / "b_exits.mp4", n_frames=10, fps=7, tone_hz=None)
    write_clip(tmp_path / "c_killed.mp4", n_frames=10, fps=9, tone_hz=None)
    listed = list_video_objects(str(tmp_path))
    batch = {
        "uri": np.array([o.uri for o in listed]), "video_id": np.array(["a", "b", "c"]),
        "etag": np.array([o.etag for o in listed]),
        "size_bytes": np.array([o.size for o in listed]),
        "label": np.array([NO_LABEL] * 3),
    }  # fmt: skip
    actor = ExtractActor(ModalityConfigs({"poison": Config()}), MediaConfig(),
                         WeightsConfig(allow_download=False), None, "run",
                         JobConfig(attempts=2, backoff_s=0))  # fmt: skip
    rows = actor(batch).to_pylist()
    import ray

    assert not ray.is_initialized()  # building the actor outside Ray starts no local Ray
    assert [r["error_reason"] for r in rows] == [None, "crashed", "crashed"]
    assert rows[0]["poison_seen"] and rows[0]["etag"] == listed[0].etag
    assert "exited with code 3" in rows[1]["error"] and rows[1]["attempts"] == 2
    assert "killed by signal 9 (SIGKILL" in rows[2]["error"] and rows[2]["retryable"] is True


@pytest.mark.nightly
def test_a_clip_that_kills_its_process_becomes_an_error_row_and_the_run_finishes(
    local_ray, tmp_path: Path
) -> None:
    """The extract job on the session's cluster with two poison clips among good ones, then
    the runs after it.
    Sibling in make test:
    tests/test_poison_clip.py::test_the_extract_actor_writes_a_crashing_clip_as_a_row_and_goes_on
    (the same actor code without Ray) and
    tests/test_table.py::test_a_crashed_clip_is_retried_until_it_crashed_in_crash_runs_runs
    (what later runs do)."""
    import pyarrow.dataset as pads

    videos = tmp_path / "videos"
    videos.mkdir()
    for i in range(4):  # one batch: the poison clips sit between good ones
        write_clip(videos / f"good_{i}.mp4", n_frames=50, fps=25, tone_hz=None)
    write_clip(videos / "exits.mp4", n_frames=20, fps=7, tone_hz=None)
    write_clip(videos / "killed.mp4", n_frames=20, fps=9, tone_hz=None)
    out = tmp_path / "features"
    args = ["--videos", str(videos), "--output", str(out), "--modalities", "poison",
            "--extract-actors", "1", "--clips-per-batch", "8", "--attempts", "2",
            "--backoff-s", "0", "--max-error-rate", "0.5"]  # fmt: skip
    stdout = run_here("extract", *args).stdout
    assert "4 extracted, 2 errors" in stdout, stdout
    rows = pads.dataset(out, format="parquet", partitioning="hive").to_table().to_pylist()
    assert Counter(Path(r["uri"]).name for r in rows) == Counter(
        {f"good_{i}.mp4": 1 for i in range(4)} | {"exits.mp4": 1, "killed.mp4": 1}
    )  # every clip exactly once  # fmt: skip
    by_name = {Path(r["uri"]).name: r for r in rows}
    assert all(by_name[f"good_{i}.mp4"]["error"] is None for i in range(4))
    assert all(by_name[f"good_{i}.mp4"]["poison_seen"] for i in range(4))
    exits, killed = by_name["exits.mp4"], by_name["killed.mp4"]
    for row in (exits, killed):
        assert row["error_reason"] == "crashed" and row["attempts"] == 2, row["error"]
        assert row["retryable"] is True
    assert "exited with code 3" in exits["error"]
    assert "killed by signal 9 (SIGKILL" in killed["error"]

    # The next run tries the crashed clips again (crash runs 1 of 2); after it, they are done
    dry = ["extract", *args, "--dry-run"]
    assert "2 to extract (0 new, 0 changed, 2 retry)" in run_here(*dry, check=False).stdout
    rerun = run_here("extract", *args, check=False)  # all of its clips failed: exit 3
    assert rerun.returncode == 3 and "0 extracted, 2 errors (crashed 2)" in rerun.stdout
    assert "0 to extract" in run_here(*dry, check=False).stdout
    again = run_here(*dry, "--retry-crashed", check=False).stdout
    assert "2 to extract (0 new, 0 changed, 2 retry)" in again
