"""Fusion: voting maths on hand-made probabilities (ties too), presence masks, FC early fusion
and VAE fusion over the real modality heads, every modality subset."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from emotiw import modalities
from emotiw.modalities import audio, pose, scene
from emotiw.models import fusion, metrics

B = 6
BUILTIN = modalities.BUILTIN
SMALL = {  # small enough for quick forward passes; the rest are the paper's configs
    "scene": scene.Config(
        backbone="efficientnet-lite0", weights="random-init", frame_height=96, frame_width=128,
        n_frames=3,
    ),
    "audio": audio.Config(features="logmel"),
}  # fmt: skip


def _cfg(name: str) -> object:
    return SMALL.get(name) or modalities.get(name).Config()


@pytest.fixture(scope="module")
def heads() -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    return {m: modalities.get(m).head(_cfg(m)) for m in BUILTIN}


def _inputs(seed: int = 0) -> dict[str, tuple[torch.Tensor, ...]]:
    out = {}
    for m in BUILTIN:
        arrays = modalities.get(m).example_inputs(_cfg(m), B, seed)
        tensors = (torch.as_tensor(a) for a in arrays)
        out[m] = tuple(t if t.dtype in (torch.uint8, torch.bool) else t.float() for t in tensors)
    return out


def _p(*rows: tuple[float, float, float]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


def test_soft_and_weighted_voting_maths() -> None:
    probs = torch.stack([_p((0.6, 0.3, 0.1), (0.2, 0.2, 0.6))], dim=0)  # [B=1, M=2, 3]
    present = torch.tensor([[True, True]])
    torch.testing.assert_close(fusion._soft_vote(probs, present), _p((0.4, 0.25, 0.35)))
    w = torch.tensor([3.0, 1.0])
    torch.testing.assert_close(fusion._soft_vote(probs, present, w), _p((0.5, 0.275, 0.225)))
    # an absent modality does not vote, whatever its numbers
    torch.testing.assert_close(
        fusion._soft_vote(probs, torch.tensor([[False, True]]), w), _p((0.2, 0.2, 0.6))
    )
    # nothing present: uniform, not NaN
    none = fusion._soft_vote(probs, torch.tensor([[False, False]]), w)
    torch.testing.assert_close(none, torch.full((1, 3), 1 / 3))


def test_weighted_scores_follow_class_support() -> None:
    """The support-weighted averages the authors reported (evaluate prints them beside the
    macro ones): weighted recall is the accuracy."""
    labels = np.asarray([0, 0, 0, 1, 2])
    predicted = np.asarray([0, 0, 1, 1, 0])
    got = metrics.scores(labels, np.eye(3)[predicted], predicted)
    assert got["precision_weighted"] == pytest.approx((2 / 3 * 3 + 1 / 2) / 5)
    assert got["recall_weighted"] == pytest.approx(got["accuracy"]) == pytest.approx(0.6)
    assert got["f1_weighted"] == pytest.approx((2 / 3 * 3 + 2 / 3) / 5)
    assert got["precision"] == pytest.approx((2 / 3 + 1 / 2 + 0) / 3)  # macro, as before


def test_hard_voting_majority_and_ties() -> None:
    probs = torch.stack(
        [
            _p((0.5, 0.4, 0.1), (0.6, 0.1, 0.3), (0.1, 0.2, 0.7)),  # 2 votes positive
            _p((0.9, 0.05, 0.05), (0.1, 0.1, 0.8), (0.3, 0.4, 0.3)),  # 1-1-1 tie
            _p((0.4, 0.35, 0.25), (0.2, 0.3, 0.5), (0.5, 0.5, 0.0)),  # pos, neg, pos/neu tie
        ]
    )
    present = torch.ones(3, 3, dtype=torch.bool)
    shares = fusion._hard_vote(probs, present)
    torch.testing.assert_close(shares[0], torch.tensor([2 / 3, 0.0, 1 / 3]))
    torch.testing.assert_close(shares[1], torch.full((3,), 1 / 3))
    winner = fusion._vote_winner(shares, probs, present)
    # row 1: three-way tie -> highest mean probability: pos .433 > neg .383 > neu .183
    # row 2: argmax of (0.5, 0.5, 0) is the first, positive -> 2 votes positive
    assert winner.tolist() == [0, 0, 0]
    # a tie on both votes and mean probability goes to the first class in CLASS_NAMES order
    even = torch.stack([_p((0.2, 0.6, 0.2), (0.2, 0.2, 0.6))])
    tie = fusion._hard_vote(even, torch.ones(1, 2, dtype=torch.bool))
    assert fusion._vote_winner(tie, even, torch.ones(1, 2, dtype=torch.bool)).tolist() == [1]
    # absent modalities' votes are ignored
    mask = torch.tensor([[True, False, False]])
    shares = fusion._hard_vote(probs[1:2], mask)
    torch.testing.assert_close(shares, _p((1.0, 0.0, 0.0)))


def test_config_validation_and_canonical_order() -> None:
    cfg = fusion.Config(modalities=("face", "scene"))
    assert cfg.modalities == ("scene", "face")
    weights = fusion.Config(modalities=BUILTIN).vote_weights
    assert weights == {"scene": 0.5, "pose": 0.07, "audio": 0.4, "face": 0.03}  # the sheet's
    assert fusion.Config().modalities == modalities.names()  # default: every registered one
    for bad in (
        {"method": "stacking"},
        {"modalities": ()},
        {"modalities": ("scene", "text")},
        {"modalities": ("pose", "pose")},
        {"method": "weighted", "modalities": ("pose",), "vote_weights": {"pose": 0.0}},
        {"latent_dim": 0},
    ):
        with pytest.raises(ValueError):
            fusion.Config(**bad)


@pytest.mark.parametrize("method", fusion._METHODS)
def test_every_method_predicts_with_missing_modalities(heads, method: str) -> None:
    model = fusion.build(heads, fusion.Config(method=method, modalities=BUILTIN)).eval()
    present = {
        "audio": torch.tensor([True, False, True, False, True, False]),
        "face": torch.tensor([False] * B),
    }
    with torch.no_grad():
        logits = model(_inputs(), present)
        probs, labels = model.predict(_inputs(), present)
    assert logits.shape == (B, 3) and torch.isfinite(logits).all()
    torch.testing.assert_close(probs.sum(-1), torch.ones(B))
    assert labels.shape == (B,) and labels.dtype == torch.int64


def test_absent_modality_features_do_not_matter(heads) -> None:
    model = fusion.build(heads, fusion.Config(method="fc", modalities=BUILTIN)).eval()
    present = {"face": torch.tensor([True, False, True, False, True, False])}
    a, b = _inputs(0), _inputs(0)
    b["face"] = (b["face"][0] * 100 + 7,)
    with torch.no_grad():
        out_a, out_b = model(a, present), model(b, present)
    torch.testing.assert_close(out_a[1::2], out_b[1::2])  # face absent: same output
    assert not torch.allclose(out_a[0::2], out_b[0::2])


@pytest.mark.parametrize("method", ["fc", "vae"])
def test_trainable_fusion_loss_decreases_with_frozen_heads(heads, method: str) -> None:
    torch.manual_seed(0)
    model = fusion.build(heads, fusion.Config(method=method, lr=1e-2, modalities=BUILTIN)).train()
    before = {k: v.clone() for k, v in model.heads.state_dict().items()}
    opt = fusion.optimizer(model)
    inputs, target = _inputs(1), torch.tensor([0, 1, 2, 0, 1, 2])
    present = {"audio": torch.tensor([True, True, False, True, True, False])}
    losses = []
    for _ in range(60):
        opt.zero_grad()
        loss, logits = model.loss(inputs, present, target)
        assert torch.isfinite(loss) and logits.shape == (B, 3)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    # the VAE samples its latent, so compare averages of the first and last steps
    assert sum(losses[-5:]) < 0.85 * sum(losses[:5])
    for k, v in model.heads.state_dict().items():
        torch.testing.assert_close(v, before[k])  # heads frozen, batch-norm stats included


def test_heads_fine_tune_when_asked(heads) -> None:
    model = fusion.build(
        {"pose": pose.Head()}, fusion.Config(modalities=("pose",), train_heads=True)
    )
    loss, _ = model.train().loss(_inputs(), {}, torch.zeros(B, dtype=torch.long))
    loss.backward()
    head = model.heads["pose"]  # its own output layer is not part of forward_features
    assert all(p.grad is not None for p in head.lstm.parameters())
    assert (
        fusion.optimizer(fusion.build(heads, fusion.Config(method="soft", modalities=BUILTIN)))
        is None
    )


def test_vae_reconstruction_ignores_absent_modalities(heads) -> None:
    model = fusion.build(heads, fusion.Config(method="vae", modalities=BUILTIN)).eval()
    present = {"pose": torch.tensor([False] * 3 + [True] * 3)}
    out = model.encode(_inputs(), present)
    pose_cols = slice(
        heads["scene"].feature_dim, heads["scene"].feature_dim + heads["pose"].feature_dim
    )
    assert out.weight[:3, pose_cols].sum() == 0 and out.weight[3:, pose_cols].min() == 1
    width = heads["pose"].feature_dim
    assert out.mu.shape == (B, 20) and torch.equal(out.target[:3, pose_cols], torch.zeros(3, width))


def test_every_modality_subset_builds_and_trains_a_step(heads) -> None:
    subsets = [c for r in range(1, 5) for c in itertools.combinations(BUILTIN, r)]
    assert len(subsets) == 15
    inputs, target = _inputs(2), torch.tensor([0, 1, 2, 0, 1, 2])
    for subset, method in itertools.product(subsets, fusion._METHODS):
        model = fusion.build(heads, fusion.Config(method=method, modalities=subset)).train()
        assert tuple(model.heads) == subset
        loss, logits = model.loss(inputs, {}, target)
        assert torch.isfinite(loss) and logits.shape == (B, 3), (subset, method)
        opt = fusion.optimizer(model)
        if opt is not None:
            loss.backward()
            opt.step()
    with pytest.raises(ValueError, match="no head"):
        fusion.build({"pose": heads["pose"]}, fusion.Config(modalities=("pose", "face")))
