"""Named presets: ``--preset NAME`` (and ``preset=`` in the Python API) resolves here, and only
here, into every setting of a run that is not given explicitly, so a name means the same on the
command line, in the demo, in the Python API and in the cluster manifests:

- each modality's `Config`: declared by the modality itself (`Modality.presets`; a plug-in
  declares its own, or is left out of a preset it does not name), collected by
  `ModalityConfigs.preset`;
- the fusion's settings (`emotiw.models.fusion.Config` fields);
- the training schedule and stacking (`TrainConfig.schedule`, `TrainConfig.stacking_folds`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from emotiw.models import fusion
from emotiw.models.features import ModalityConfigs


@dataclass(frozen=True)
class Preset:
    """One preset.

    Attributes:
        name: what ``--preset`` takes.
        summary: one line for ``--help`` and the reference.
        fusion: `fusion.Config` fields that differ from its defaults (the deployed FC fusion).
        schedule: ``paper`` (each model's own epochs, batch size, checkpoint metric and early
            stopping, as the authors deployed them) or ``uniform`` (the same epochs and batch
            size for every head and fusion).
        stacking_folds: folds of out-of-fold head outputs the fusion trains on (0: in-sample).
    """

    name: str
    summary: str
    fusion: Mapping[str, Any] = field(default_factory=dict)
    schedule: str = "paper"
    stacking_folds: int = 5


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            "paper",
            "the authors' deployed models: pretrained front-ends, their heads, FC fusion, each "
            "model's own schedule, 5-fold stacking",
        ),
        Preset(
            "cpu-smoke",
            "small CPU front-ends without pose, FC fusion with presence flags, uniform epochs, "
            "no stacking: what the demo and the synthetic corpus train in minutes",
            fusion={"hidden_units": 64, "presence_flags": True, "l2": 0.0, "lr": 1e-3},
            schedule="uniform",
            stacking_folds=0,
        ),
    )
}
DEFAULT = "paper"


def names() -> tuple[str, ...]:
    return tuple(PRESETS)


def get(name: str) -> Preset:
    """The preset called `name`.

    Raises:
        ValueError: no such preset (the message lists them).
    """
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; presets: {', '.join(PRESETS)}")
    return PRESETS[name]


def modality_configs(name: str = DEFAULT, modalities: tuple[str, ...] = ()) -> ModalityConfigs:
    """The preset's modalities and their Configs; with `modalities`, exactly those."""
    get(name)
    return ModalityConfigs.preset(name, modalities)


def fusion_config(name: str, modalities: tuple[str, ...], **given: Any) -> fusion.Config:
    """The preset's fusion settings over `modalities`, under the fields `given`."""
    return fusion.Config(**{"modalities": modalities, **get(name).fusion, **given})
