"""Adding a modality is one module and nothing else: this file defines a toy fifth modality
(each sampled frame's mean colour), registers it, and runs it through extract, train and score
next to a built-in one, with no edit anywhere in `emotiw`. Ray workers import this module by
name (the session's Ray has the tests folder on its path), as they would a plug-in package."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pyarrow.dataset as pads
import pytest
import torch
from torch import nn

from emotiw import modalities
from emotiw.core.config import CLASS_NAMES
from emotiw.modalities.base import Column, Extraction, Modality
from helpers import write_bad_files


@dataclass(frozen=True)
class Config:
    """The toy modality.

    Attributes:
        weights: ``random-init`` only (there is nothing pretrained).
        seed: seed of the head's initialisation.
        lr: Adam learning rate.
        n_frames: sampled frames per clip.
        hidden: width of the head's hidden layer (what fusion concatenates).
    """

    weights: str = "random-init"
    seed: int = 0
    lr: float = 0.01
    n_frames: int = 12
    hidden: int = 4

    def __post_init__(self) -> None:
        if self.weights != "random-init":
            raise ValueError("the toy modality has no pretrained weights")


class Extractor:
    """Clip -> ``[n_frames, 3]`` mean RGB of each sampled frame in [0, 1]."""

    def __init__(self, cfg: Config, weights: Any = None) -> None:
        self.cfg = cfg
        self.provenance: dict[str, Any] = {}

    def __call__(self, clip: Any) -> Extraction:
        means = clip.frames.reshape(len(clip.frames), -1, 3).mean(axis=1) / 255.0
        lit = bool((means[clip.frame_mask] > 0.05).any())
        return Extraction(means.astype(np.float32), stats={"toy_lit": lit})


class Head(nn.Module):
    """Mean over frames -> Linear(hidden, ReLU) -> Linear(3)."""

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self.hidden = nn.Linear(3, cfg.hidden)
        self.out = nn.Linear(cfg.hidden, len(CLASS_NAMES))
        self.feature_dim = cfg.hidden

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.hidden(x.mean(dim=1)))

    def forward_head(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.out(hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class Toy(Modality):
    name = "toy"
    Config = Config
    order = 50
    presence = "toy_lit"
    stats = (Column("toy_lit", "bool", "a sampled frame brighter than black"),)
    presets: ClassVar[dict[str, Any]] = {}
    feature_doc = "[12, 3] float32, flattened (mean RGB of each sampled frame)"

    def feature_shape(self, cfg: Config) -> tuple[int, int]:
        return (cfg.n_frames, 3)


TOY = modalities.register(Toy())  # on import, as a plug-in package registers its modality


@pytest.fixture(scope="module", autouse=True)
def toy_registered() -> Iterator[None]:
    """Registered for this module's tests only (conftest removes it after collection, so
    the rest of the suite sees the built-in modalities alone)."""
    modalities.register(TOY)
    yield
    modalities.unregister(TOY.name)


def test_the_toy_is_registered_and_has_flags() -> None:
    from emotiw.cli.commands import build_parser

    assert "toy" in modalities.names() and modalities.get("toy") is TOY
    args = build_parser().parse_args(
        ["extract", "--videos", "v", "--output", "o", "--modalities", "toy", "--toy-hidden", "8"]
    )
    from emotiw.cli.commands import modality_configs

    assert modality_configs(args).of("toy") == Config(hidden=8)


@pytest.mark.e2e
def test_extract_train_and_score_with_a_fifth_modality(local_ray, tmp_path: Path) -> None:
    from emotiw.io.corpus import write_sample_corpus
    from emotiw.jobs.extract import ExtractConfig, run_extract
    from emotiw.jobs.score import ScoreConfig, run_score
    from emotiw.jobs.train import TrainConfig, run_train
    from emotiw.models.features import ModalityConfigs, read_rows

    videos = tmp_path / "videos"
    write_sample_corpus(str(videos), 9, seed=4)
    write_bad_files(videos)
    smoke = ModalityConfigs.preset("cpu-smoke")
    configs = ModalityConfigs({"audio": smoke.of("audio"), "toy": Config()})
    summary = run_extract(
        ExtractConfig(
            videos=str(videos), labels=str(videos / "labels.txt"),
            output=str(tmp_path / "features"), configs=configs, extract_actors=1,
        )
    )  # fmt: skip
    assert (summary.extracted, summary.errors) == (9, 2)
    rows = read_rows(str(tmp_path / "features")).to_pylist()
    ok = [r for r in rows if r["error"] is None]
    assert all(len(r["toy"]) == 12 * 3 and r["toy_lit"] for r in ok)
    assert all(r["toy"] is None for r in rows if r["error"] is not None)

    result = run_train(
        TrainConfig(
            features=str(tmp_path / "features"), configs=configs, schedule="uniform", epochs=2,
            fusion_epochs=2, batch_size=4, workers=2, run_dir=str(tmp_path / "run"),
            stacking_folds=2,  # the fusion on out-of-fold head outputs (and in-sample)
            worker_cache_mb=0,  # the large-table path: Ray Data splits, each worker streams

            tracking_uri=f"sqlite:///{tmp_path}/mlflow.db",
        )
    )  # fmt: skip
    assert {"toy", "audio", "fusion:fc", "fusion:fc-without-toy"} <= set(result.scores)
    assert "fusion:fc-in-sample" in result.scores  # stacking: the in-sample fusion to compare
    assert result.model.fusion.cfg.modalities == ("audio", "toy")

    out = tmp_path / "scores"
    cfg = ScoreConfig(input=str(videos), output=str(out), model=str(result.package_dir))
    scored = run_score(cfg)
    assert (scored.listed, scored.scored, scored.errors) == (11, 9, 2)
    assert "toy" in scored.agreement
    table = pads.dataset(out, format="parquet", partitioning="hive").to_table().to_pylist()
    good = [r for r in table if r["error"] is None]
    assert len(table) == 11 and len(good) == 9
    for r in good:
        assert r["toy_predicted"] in CLASS_NAMES and r["toy_lit"] is True
        total = sum(r[f"toy_prob_{c}"] for c in CLASS_NAMES)
        assert abs(total - 1) < 1e-5
    assert dataclasses.asdict(result.model.configs.of("toy")) == dataclasses.asdict(Config())
