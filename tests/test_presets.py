"""Presets resolve in one place (`emotiw.models.presets`): the command line, the demo and the
Python API give the same configuration for every preset."""

from __future__ import annotations

import dataclasses

import pytest

from emotiw import modalities
from emotiw.cli.commands import _extract_config, build_parser
from emotiw.cli.modality_flags import train_config
from emotiw.jobs.extract import ExtractConfig
from emotiw.jobs.train import TrainConfig
from emotiw.models import fusion, presets


def _cli_train(tmp_path, *flags: str) -> TrainConfig:
    args = build_parser().parse_args(["train", "--features", str(tmp_path), *flags])
    return train_config(args, TrainConfig(features="x").weights)


@pytest.mark.parametrize("name", presets.names())
def test_the_command_line_and_the_api_agree_on_every_preset(name, tmp_path) -> None:
    cli = _cli_train(tmp_path, "--preset", name)
    api = TrainConfig(features=str(tmp_path), preset=name)
    env = {"storage": cli.storage, "weights": cli.weights}  # the environment's, not the preset's
    assert cli == dataclasses.replace(api, **env)

    args = build_parser().parse_args(
        ["extract", "--videos", "v", "--output", "o", "--preset", name]
    )
    cli_extract = _extract_config(args)
    api_extract = ExtractConfig(videos="v", output="o", preset=name)
    env = {"storage": cli_extract.storage, "weights": cli_extract.weights}
    assert cli_extract == dataclasses.replace(api_extract, **env)


def test_each_preset_sets_every_part() -> None:
    paper = TrainConfig(features="x")  # the default preset
    assert (paper.preset, paper.schedule, paper.stacking_folds) == ("paper", "paper", 5)
    assert paper.fusion == fusion.Config(modalities=paper.configs.modalities)  # deployed FC
    assert paper.configs.modalities == ("scene", "pose", "audio", "face")

    smoke = TrainConfig(features="x", preset="cpu-smoke")
    assert (smoke.schedule, smoke.stacking_folds) == ("uniform", 0)
    assert smoke.fusion.presence_flags and smoke.fusion.hidden_units == 64
    assert smoke.configs == presets.modality_configs("cpu-smoke")
    assert "pose" not in smoke.configs.modalities
    assert ExtractConfig(videos="v", output="o", preset="cpu-smoke").configs == smoke.configs

    # given fields win over the preset's
    assert TrainConfig(features="x", preset="cpu-smoke", stacking_folds=3).stacking_folds == 3
    assert TrainConfig(features="x", schedule="uniform").schedule == "uniform"


def test_the_command_line_asks_for_uniform_epochs_when_epochs_are_given(tmp_path) -> None:
    assert _cli_train(tmp_path, "--epochs", "3").schedule == "uniform"
    assert _cli_train(tmp_path, "--epochs", "3", "--schedule", "paper").schedule == "paper"
    assert _cli_train(tmp_path, "--fusion-hidden-units", "8").fusion.hidden_units == 8


def test_an_unknown_preset_names_the_known_ones() -> None:
    with pytest.raises(ValueError, match="presets: paper, cpu-smoke"):
        TrainConfig(features="x", preset="fast")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--features", "x", "--preset", "fast"])


def test_every_modality_preset_is_a_declared_preset() -> None:
    """A modality's `presets` may leave a preset out, not invent one."""
    for spec in modalities.specs():
        assert set(spec.presets) <= set(presets.names()), spec.name
