"""The `paper` preset against the authors' deployed Keras models (../shared/paper/
authors-models.md): every head's parameter count and output shapes, the FC fusion's, and the
Keras semantics the parity rests on (one bias per LSTM gate, hard sigmoid, kernel L2)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from emotiw.modalities import audio, face, pose, scene
from emotiw.modalities.nets.keras_lstm import KerasBiLSTM, _hard_sigmoid_keras
from emotiw.models import fusion, presets
from emotiw.models.features import ModalityConfigs

PAPER = ModalityConfigs.preset("paper")
B = 2


def count(module: torch.nn.Module, trainable: bool = False, stats: bool = False) -> int:
    params = sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable)
    if stats:  # Keras counts batch-norm moving statistics as (non-trainable) parameters
        params += sum(b.numel() for n, b in module.named_buffers() if "running_" in n)
    return params


def test_scene_head_is_the_deployed_resnet_convlstm() -> None:
    cfg = dataclasses.replace(PAPER.of("scene"), weights="random-init")  # no ResNet-50 here
    head = scene.Head(cfg)
    # 3 x ConvLSTM2D(10, 3x3, same) on 2048 maps (740,920 each) + Dense(30 -> 3) (93)
    assert [count(c) for c in head.convlstms] == [740_920] * 3
    assert count(head, trainable=True) == 2_222_853
    assert head.feature_dim == 30  # 3 heads x GlobalAveragePooling3D of 10 filters
    maps = torch.randn(B, 12, 2048, 10, 15)
    mask = torch.ones(B, 12, dtype=torch.bool)
    mask[1, 7:] = False  # a clip of 7 frames
    assert head.forward_maps(maps, mask).shape == (B, 30)
    assert head.forward_head(head.forward_maps(maps, mask)).shape == (B, 3)
    l2_group = head.parameter_groups()[0]
    assert l2_group["params"] == [head.fc.weight] and l2_group["weight_decay"] == 2 * 0.001
    assert cfg.recurrent_activation == "hard_sigmoid" and cfg.lr == 1e-3


def test_pose_head_is_a_bilstm_without_hidden_layer() -> None:
    cfg = PAPER.of("pose")
    head = pose.Head(cfg)
    assert count(head) == 47_491 and count(head.lstm) == 47_104  # BiLSTM 64 + Dense(128 -> 3)
    assert head.feature_dim == 128  # the fusion takes the BiLSTM's output
    x = torch.randn(B, 12, 27)
    assert head.forward_features(x).shape == (B, 128) and head(x).shape == (B, 3)
    groups = pose.Pose().parameter_groups(head, cfg)
    assert groups[0]["weight_decay"] == 2 * 0.01  # Keras l2(0.01) on the kernels only
    decayed = {id(p) for p in groups[0]["params"]}
    assert decayed == {id(head.lstm.forward_layer.kernel), id(head.lstm.backward_layer.kernel),
                       id(head.out.weight)}  # fmt: skip
    assert cfg.lr == 1e-3


def test_audio_head_is_the_deployed_cnn_bilstm() -> None:
    cfg = PAPER.of("audio")
    head = audio.Audio().head(cfg)
    assert isinstance(head, audio._DeployedHead)
    assert count(head, stats=True) == 1_425_027  # the sheet's total, BN statistics included
    assert count(head, stats=True) - count(head) == 2_176  # its non-trainable part
    layer_params = [count(b[0]) for b in head.blocks]
    assert layer_params == [786_496, 66_048, 524_800]
    assert (count(head.lstm1), count(head.lstm2), count(head.dense)) == (41_840, 1_040, 352)
    head.eval()
    x = torch.randn(B, 11, 6144)
    assert head.forward_features(x).shape == (B, 32) and head(x).shape == (B, 3)
    assert (cfg.normalise, cfg.lr) == ("l2", 4.4275e-5)


def test_face_head_and_audio_normalisation() -> None:
    head = face.Head(PAPER.of("face"))
    assert count(head) == 14_627 and count(head.lstm) == 14_080  # BiLSTM 32 + 8 + 3
    assert head(torch.randn(B, 12, 22)).shape == (B, 3) and head.feature_dim == 8
    features = np.zeros((11, 6), np.float32)
    features[2:] = np.random.default_rng(0).normal(size=(9, 6))
    normed = audio._normalise_per_step(features)
    assert np.allclose(np.linalg.norm(normed[2:], axis=1), 1) and not normed[:2].any()


def test_fc_fusion_is_the_deployed_dense_72() -> None:
    heads = {m: PAPER.specs()[i].head(PAPER.of(m)) for i, m in enumerate(PAPER.modalities)
             if m != "scene"}  # fmt: skip
    heads["scene"] = fusion.Precomputed(30)
    # the paper's best run: audio 32 + scene 30 + pose 128 = 190 -> 72 -> 3
    cfg = fusion.Config(modalities=("scene", "pose", "audio"))
    fc = fusion.build({m: heads[m] for m in cfg.modalities}, cfg)
    assert fc.hidden_dim() == 190 and count(fc.net) == 13_971
    every = fusion.build(heads, fusion.Config(modalities=PAPER.modalities))
    assert every.hidden_dim() == 198  # + face 8
    opt = fusion.optimizer(every)
    assert opt.param_groups[0]["weight_decay"] == 2 * 0.01 and opt.defaults["lr"] == 0.01
    assert fusion.Config(**presets.get("cpu-smoke").fusion).presence_flags  # the settings before


def test_keras_lstm_equals_torch_lstm_with_one_bias() -> None:
    """Keras' LSTM is torch's with b_hh = 0 (same gate order i, f, c, o): the weights map
    one to one, and the outputs agree."""
    torch.manual_seed(0)
    ours = KerasBiLSTM(7, 5)
    ref = torch.nn.LSTM(7, 5, batch_first=True, bidirectional=True)
    with torch.no_grad():
        for layer, suffix in ((ours.forward_layer, ""), (ours.backward_layer, "_reverse")):
            getattr(ref, f"weight_ih_l0{suffix}").copy_(layer.kernel.T)
            getattr(ref, f"weight_hh_l0{suffix}").copy_(layer.recurrent_kernel.T)
            getattr(ref, f"bias_ih_l0{suffix}").copy_(layer.bias)
            getattr(ref, f"bias_hh_l0{suffix}").zero_()
    x = torch.randn(3, 12, 7)
    _, (h, _) = ref(x)
    assert torch.allclose(ours(x), torch.cat([h[0], h[1]], dim=-1), atol=1e-6)
    x = torch.tensor([-3.0, -2.5, 0.0, 1.0, 2.5, 4.0])
    assert _hard_sigmoid_keras(x).tolist() == pytest.approx([0.0, 0.0, 0.5, 0.7, 1.0, 1.0])


def test_paper_schedule_per_model_and_keras_selection() -> None:
    from emotiw.jobs.train import TrainConfig
    from emotiw.jobs.train.config import Schedule, schedule_for
    from emotiw.jobs.train.worker import _Selection

    paper = TrainConfig(features="x")
    assert schedule_for(paper, "audio") == Schedule(4000, 32, "val_accuracy", 300)
    assert schedule_for(paper, "scene") == Schedule(5, 6, "val_loss", 0)
    assert schedule_for(paper, "fusion") == Schedule(30, 32, "val_accuracy", 0)
    assert schedule_for(paper, "toy") == Schedule(30, 16)  # a model the paper has not
    uniform = TrainConfig(features="x", schedule="uniform", epochs=7, batch_size=4)
    assert schedule_for(uniform, "audio") == Schedule(7, 4)
    capped = TrainConfig(features="x", max_epochs=250)  # a quick trial of the paper schedule
    assert schedule_for(capped, "audio") == Schedule(250, 32, "val_accuracy", 300)
    assert schedule_for(capped, "scene") == Schedule(5, 6, "val_loss", 0)
    with pytest.raises(ValueError, match="max_epochs"):
        TrainConfig(features="x", max_epochs=-1)
    # checkpoint on strictly better accuracy; stop after 2 epochs without a lower loss
    rows = [(1.0, 0.5), (0.9, 0.5), (0.95, 0.6), (0.97, 0.4), (0.99, 0.7)]
    pick = _Selection("val_accuracy", patience=2)
    seen = []
    for loss, acc in rows:
        seen.append(pick.improved({"val_loss": loss, "val_accuracy": acc}))
        if pick.stop():
            break
    assert seen == [True, False, True, False]  # stopped after epoch 4: loss last fell at 2
    by_loss = _Selection("val_loss")
    assert [by_loss.improved({"val_loss": v, "val_accuracy": 0}) for v in (1, 2, 0.5)] == [
        True, False, True]  # fmt: skip
    assert not by_loss.stop()


def test_a_package_saved_before_these_fields_loads_the_model_it_saved(tmp_path) -> None:
    """A registered model from before the paper preset followed the deployed models: its
    manifest lacks the new fields, which then take the values that code behaved as
    (`Config.BEFORE`), not today's defaults."""
    import json

    from emotiw.models.packaging import _MANIFEST, load_model
    from helpers import make_package, smoke_configs

    # as the fusion was then: presence flags in its input, no L2
    package = make_package(
        tmp_path / "old", smoke_configs(), fusion_options=dict(presets.get("cpu-smoke").fusion)
    )
    manifest = json.loads((package / _MANIFEST).read_text())
    added = {"scene": ("pooling", "recurrent_activation"), "face": ("lstm",), "audio": ("head",)}
    for name, fields in added.items():
        for field in fields:
            del manifest["configs"][name][field]
    manifest["configs"]["audio"]["normalise"] = True  # a bool then
    for variant in manifest["fusions"].values():
        del variant["presence_flags"], variant["l2"]
    (package / _MANIFEST).write_text(json.dumps(manifest))
    model = load_model(package)
    assert model.configs.of("scene").pooling == "flatten" and model.heads["scene"].feature_dim > 30
    assert model.configs.of("face").lstm == "torch" and model.configs.of("audio").head == "compact"
    assert model.configs.of("audio").normalise == "zscore" and model.fusion.cfg.presence_flags
    # pose's frame vector before the sheet's rules (its extractor runs in the model stage,
    # so an old model's pose features are computed as they were when it was trained)
    from emotiw.models.packaging import _from_dict

    old_pose = {k: v for k, v in dataclasses.asdict(pose.Config()).items() if k != "frame_vector"}
    assert _from_dict(pose.Config, old_pose).frame_vector == "extent"
    configs = ModalityConfigs.create(pose.Config())  # a feature table extracted before it
    recorded = {"pose": {k: v for k, v in configs.front_ends()["pose"].items()
                         if k != "frame_vector"}}  # fmt: skip
    assert configs.with_front_ends(recorded, {}).of("pose").frame_vector == "extent"
    assert configs.with_front_ends(configs.front_ends(), {}).of("pose").frame_vector == "sheet"
    assert pose.Config().frame_vector == "sheet"
