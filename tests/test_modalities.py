"""The modality contract, checked for every registered modality (the built-in four and any
plug-in): configs and presets, feature-table columns, head shapes and gradients, optimiser,
round trip of features through the table, pickling by name. Modality-specific behaviour is in
each modality's own test module."""

from __future__ import annotations

import dataclasses
import pickle

import numpy as np
import pytest
import torch

from emotiw import modalities
from emotiw.io.frames import encode_frames
from emotiw.io.weights import REGISTRY
from emotiw.modalities.base import CPU_STAGE, MODEL_STAGE, Extraction
from emotiw.models.features import ModalityConfigs, feature_schema
from emotiw.tables.schema import FRAMES_COLUMN

NAMES = modalities.names()


def small(spec: modalities.base.Modality) -> object:
    """The cpu-smoke preset's config (the paper's where the preset leaves the modality out)."""
    return spec.presets.get("cpu-smoke") or spec.Config()


def test_builtins_are_registered_in_canonical_order() -> None:
    assert NAMES[:4] == ("scene", "pose", "audio", "face")
    assert modalities.canonical(("face", "scene")) == ("scene", "face")
    with pytest.raises(ValueError, match="unknown"):
        modalities.canonical(("scene", "smell"))


@pytest.mark.parametrize("name", NAMES)
def test_config_presets_and_registration(name: str) -> None:
    spec = modalities.get(name)
    assert spec.name == name and modalities.for_config(spec.Config()) is spec
    cfg = spec.Config()
    assert dataclasses.is_dataclass(cfg)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.seed = 1  # type: ignore[misc]
    assert {"weights", "seed", "lr"} <= {f.name for f in dataclasses.fields(cfg)}
    with pytest.raises(ValueError):
        spec.Config(weights="imagenet-v9")
    for preset, value in spec.presets.items():
        assert value is None or type(value) is spec.Config, preset
    assert spec.stage(cfg) in (CPU_STAGE, MODEL_STAGE)
    assert all(w.name in REGISTRY for w in spec.weight_specs)
    assert pickle.loads(pickle.dumps(spec)) is spec  # by name: one registry entry per process


@pytest.mark.parametrize("name", NAMES)
def test_columns_and_presence(name: str) -> None:
    spec = modalities.get(name)
    schema = feature_schema()
    columns = [c.name for c in spec.columns()]
    assert set(columns) <= set(schema.names) and len(set(columns)) == len(columns)
    assert {c.name for c in spec.stats} <= set(columns)
    assert spec.presence in schema.names


@pytest.mark.parametrize("name", NAMES)
def test_features_round_trip_through_the_table(name: str) -> None:
    spec = modalities.get(name)
    cfg = small(spec)
    inputs = spec.example_inputs(cfg, 2, seed=1)
    table: dict[str, list] = {FRAMES_COLUMN: [], "n_frames": []}
    for i in range(2):
        first = inputs[0][i]
        if first.dtype == np.uint8:  # frames: stored in the table's own frames column
            table[FRAMES_COLUMN].append(encode_frames(first, inputs[1][i], quality=100))
        values = spec.row_values(Extraction(first, stats={}), cfg)
        for key, value in values.items():
            table.setdefault(key, []).append(value)
    back = spec.read_inputs(table, cfg)
    assert len(back) == len(inputs)
    for a, b in zip(inputs, back, strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype
        if a.dtype == np.uint8:  # JPEG is lossy, even at quality 100
            assert np.abs(a.astype(int) - b.astype(int)).mean() < 8
        else:
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name", NAMES)
def test_declared_detail_table_has_its_own_typed_columns(name: str) -> None:
    """A modality with a detail table declares typed columns that do not clash with the keys
    the table adds (uri, run_id, ...); `row_values` carries them in flight."""
    from emotiw.tables.schema import (
        _DETAIL_KEY_COLUMNS,
        _DETAIL_RUN_COLUMNS,
        detail_schema,
        details_column,
    )

    spec = modalities.get(name)
    if not spec.details_table:
        assert not spec.details
        return
    own = [c.name for c in spec.details]
    assert len(set(own)) == len(own) and not set(own) & {
        c.name for c in (*_DETAIL_KEY_COLUMNS, *_DETAIL_RUN_COLUMNS)
    }
    keys = len(_DETAIL_KEY_COLUMNS)
    assert detail_schema(spec).names[keys : keys + len(own)] == own
    cfg = small(spec)
    details = {c.name: np.zeros(2, np.float32) for c in spec.details}
    out = Extraction(spec.example_inputs(cfg, 1)[0][0], details=details)
    assert len(spec.row_values(out, cfg)[details_column(name)]) == 2


@pytest.mark.parametrize("name", NAMES)
def test_head_shapes_gradients_and_optimizer(name: str) -> None:
    spec = modalities.get(name)
    cfg = small(spec)
    torch.manual_seed(0)
    head = spec.head(cfg).train()
    x = tuple(torch.as_tensor(a) for a in spec.example_inputs(cfg, 3))
    x = tuple(t if t.dtype in (torch.uint8, torch.bool) else t.float() for t in x)
    hidden = head.forward_features(*x)
    assert hidden.shape == (3, head.feature_dim)
    logits = head.forward_head(hidden)
    assert logits.shape == (3, 3) and torch.isfinite(logits).all()
    torch.testing.assert_close(head.eval()(*x), head.forward_head(head.forward_features(*x)))
    head.train()
    torch.nn.functional.cross_entropy(head(*x), torch.tensor([0, 1, 2])).backward()
    groups = spec.parameter_groups(head, cfg)
    trainable = [p for g in groups for p in g["params"]]
    assert trainable and len(trainable) == sum(p.requires_grad for p in head.parameters())
    for p in trainable:
        assert p.grad is not None and torch.isfinite(p.grad).all()
    opt = spec.optimizer(groups, cfg)
    opt.step()
    schedule = spec.scheduler(opt, cfg)
    assert schedule is None or hasattr(schedule, "step")


def test_presets_build_every_modality_set() -> None:
    paper = ModalityConfigs.preset("paper")
    assert paper.modalities[:4] == ("scene", "pose", "audio", "face")
    smoke = ModalityConfigs.preset("cpu-smoke")
    assert smoke.modalities == ("scene", "audio", "face")  # a plug-in joins presets it names
    assert smoke.of("scene").backbone == "efficientnet-lite0"
    assert smoke.of("audio").features == "logmel"
    only = ModalityConfigs.preset("cpu-smoke", ("pose", "face"))
    assert (
        only.modalities == ("pose", "face") and only.of("pose") == modalities.get("pose").Config()
    )
    with pytest.raises(ValueError, match="expected a"):
        ModalityConfigs({"scene": modalities.get("face").Config()})
