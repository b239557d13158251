"""The command line's modality flags: ``--preset``, ``--modalities``, ``--random-init`` and
``--<modality>-<field>`` for every registered modality, turned into `ModalityConfigs`; for
`train`, on top of the front-end settings the feature tables recorded."""

from __future__ import annotations

import argparse
from typing import Any

from emotiw.cli import flags


def add_model_args(p: argparse.ArgumentParser, heads: bool = True) -> None:
    """Preset, modality subset and every registered modality's config fields (without the
    head / training ones when `heads` is off: the extract job)."""
    from emotiw import modalities
    from emotiw.modalities.base import head_fields
    from emotiw.models import presets

    group = p.add_argument_group("modalities")
    group.add_argument(
        "--preset",
        choices=presets.names(),
        default=presets.DEFAULT,
        help="the settings the flags leave out: "
        + "; ".join(f"{p.name}: {p.summary}" for p in presets.PRESETS.values()),
    )
    group.add_argument(
        "--modalities",
        type=lambda text: tuple(v for v in text.split(",") if v),
        default=(),
        help=f"comma-separated subset of {','.join(modalities.names())} (default: the preset's)",
    )
    group.add_argument(
        "--random-init",
        default="",
        metavar="A,B,...",
        help="shorthand for --<modality>-weights random-init: deterministic random weights "
        "instead of pretrained ones (tests, demos; recorded in every row)",
    )
    for spec in modalities.specs():
        sub = p.add_argument_group(f"{spec.name} modality")
        skip = () if heads else head_fields(spec.Config)
        flags.add_fields(
            sub, spec.Config, prefix=f"{spec.name}-", skip=skip, dest_prefix=f"m_{spec.name}__"
        )


def storage_config(args: argparse.Namespace) -> Any:
    """The global object-storage flags (and the AWS environment) as a `StorageConfig`."""
    from emotiw.core.config import StorageConfig

    return StorageConfig.from_env(**flags.given(args, StorageConfig, "storage__"))


def modality_configs(args: argparse.Namespace) -> Any:
    """`features.ModalityConfigs` from `add_model_args`' flags: preset, subset, overrides."""
    import dataclasses

    from emotiw import modalities
    from emotiw.models import presets
    from emotiw.models.features import ModalityConfigs

    random = _random_init(args)
    if random:
        modalities.canonical(random)  # unknown names fail clearly
    base = presets.modality_configs(args.preset, args.modalities)
    configs = {}
    for name, cfg in base.configs.items():
        overrides = _modality_flags(args, name)
        configs[name] = dataclasses.replace(cfg, **overrides) if overrides else cfg
    return ModalityConfigs(configs)


def _modality_flags(args: argparse.Namespace, name: str) -> dict[str, Any]:
    """The fields of modality `name` given on the command line (``--random-init`` included)."""
    from emotiw import modalities

    overrides = flags.given(args, modalities.get(name).Config, f"m_{name}__")
    if name in _random_init(args):
        overrides["weights"] = "random-init"
    return overrides


def _random_init(args: argparse.Namespace) -> tuple[str, ...]:
    return tuple(m for m in args.random_init.split(",") if m)


def _train_configs(args: argparse.Namespace) -> Any:
    """The modality configs `train` uses: the front-end settings the feature tables recorded
    (so extract's flags are not repeated), head settings from the preset and flags; without
    ``--modalities``, the modalities the tables have.

    Raises:
        ValueError: a flag that contradicts the tables, or tables that disagree.
    """
    from emotiw.jobs.train.data import recorded_front_ends

    tables = [t for t in (args.features, getattr(args, "val_features", None)) if t]
    recorded = recorded_front_ends(tables, storage_config(args))
    if not recorded:  # tables written before front-ends were recorded: the flags decide
        return modality_configs(args)
    if not args.modalities:
        args.modalities = tuple(recorded)
    configs = modality_configs(args)
    given = {name: _modality_flags(args, name) for name in configs.modalities}
    return configs.with_front_ends(recorded, given)


def train_config(args: argparse.Namespace, weights: Any) -> Any:
    """The train job's config from its flags: the modality configs (`_train_configs`), the
    preset's fusion settings under the fusion flags, and what `TrainConfig` resolves from the
    preset for the rest (`emotiw.models.presets`). One rule is the command line's own: giving
    ``--epochs``, ``--fusion-epochs`` or ``--batch-size`` without ``--schedule`` asks for the
    uniform schedule."""
    from emotiw.jobs.train import TrainConfig
    from emotiw.models import fusion, presets

    configs = _train_configs(args)
    given = flags.given(args, fusion.Config, "fusion__")
    fusion_cfg = presets.fusion_config(args.preset, configs.modalities, **given)
    given_train = flags.given(args, TrainConfig)  # --preset included (it always has a value)
    if {"epochs", "fusion_epochs", "batch_size"} & set(given_train):  # asked for
        given_train.setdefault("schedule", "uniform")
    return TrainConfig(
        **given_train, configs=configs, fusion=fusion_cfg,
        storage=storage_config(args), weights=weights,
    )  # fmt: skip
