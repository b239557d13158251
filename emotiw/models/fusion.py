"""Fusion of the modality heads (paper 6, 7.2, 8.3, 8.4): hard, soft and weighted voting over
the heads' probabilities, fully-connected early fusion of their `forward_features`, and VAE
fusion (a 20-d latent of the same concatenation, classified).

Every model takes the same inputs so training, evaluation and scoring treat them alike:

- ``inputs``: modality name -> that head's input, a tuple of tensors (``head(*inputs[m])``;
  see `emotiw.modalities.base`);
- ``present``: modality name -> bool ``[B]``, False where the clip lacks the modality (no audio
  track or silence, no face, no person, no frame). An absent modality gets no vote and
  contributes zeros plus its presence flag to the early-fusion input: explicit masks, so a
  missing modality is never NaN and never mistaken for a real all-zero feature.

Any subset of modalities can be fused (`Config.modalities`), which is how the ablation of
paper Table 3 is run. Heads are frozen by default (`Config.train_heads`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn
from torch.nn import functional as F

from emotiw import modalities as registry
from emotiw.core.config import CLASS_NAMES

_METHODS = ("fc", "vae", "soft", "hard", "weighted")
VOTING = ("soft", "hard", "weighted")
_N_CLASSES = len(CLASS_NAMES)

Inputs = Mapping[str, Any]
_Present = Mapping[str, torch.Tensor]


@dataclass(frozen=True)
class Config:
    """Fusion settings.

    Attributes:
        method: ``fc`` (paper's best), ``vae``, ``soft``, ``hard`` or ``weighted``.
        modalities: the fused subset (canonical registry order); default: every registered one.
        vote_weights: per-modality weights of ``weighted`` voting (``hard`` is a plain
            majority, ``soft`` an unweighted mean, as in the paper); a modality not named
            gets its registered ``vote_weight``.
        hidden_units: width of the Dense + ReLU layer of FC fusion (deployed: 72, the
            authors' tuned width for audio + scene + pose), and of the VAE's encoder and decoder.
        presence_flags: FC fusion also takes a 0/1 flag per modality (a missing modality's
            zeros are then told apart from features); the deployed model had none.
        l2: Keras' kernel L2 on FC fusion's output layer (deployed: 0.01).
        train_heads: fine-tune the heads with the fusion; False keeps them frozen.
        latent_dim: the VAE's latent size (paper: 20).
        kl_weight, recon_weight: weights of the VAE's KL and reconstruction terms next to the
            classifier's cross-entropy.
        lr: Adam learning rate of the fusion's own layers (deployed: 0.01).

    Defaults: the deployed FC fusion (docs/explanation/authors-models.md 5b); each preset's
    differences from them are in `emotiw.models.presets`.
    """

    BEFORE: ClassVar[dict[str, Any]] = {"presence_flags": True, "l2": 0.0}  # older packages

    method: str = "fc"
    modalities: tuple[str, ...] = field(default_factory=registry.names)
    vote_weights: dict[str, float] = field(default_factory=dict)
    hidden_units: int = 72
    presence_flags: bool = False
    l2: float = 0.01
    train_heads: bool = False
    latent_dim: int = 20
    kl_weight: float = 1.0
    recon_weight: float = 1.0
    lr: float = 0.01

    def __post_init__(self) -> None:
        if self.method not in _METHODS:
            raise ValueError(f"method must be one of {_METHODS}, got {self.method!r}")
        # Canonical order, so a model's layout does not depend on how the subset was spelt.
        chosen = registry.canonical(self.modalities)
        object.__setattr__(self, "modalities", chosen)
        weights = {s.name: s.vote_weight for s in registry.specs(chosen)}
        object.__setattr__(self, "vote_weights", {**weights, **self.vote_weights})
        if any(self.vote_weights.get(m, 0.0) < 0 for m in self.modalities):
            raise ValueError("vote weights must be >= 0")
        if (
            self.method == "weighted"
            and sum(self.vote_weights.get(m, 0.0) for m in self.modalities) <= 0
        ):
            raise ValueError("weighted voting needs a positive weight for a fused modality")
        if min(self.hidden_units, self.latent_dim) < 1 or self.lr <= 0 or self.l2 < 0:
            raise ValueError("hidden_units, latent_dim and lr must be positive, l2 >= 0")
        if self.kl_weight < 0 or self.recon_weight < 0:
            raise ValueError("kl_weight and recon_weight must be >= 0")


# --- voting maths ----------------------------------------------------------------------------


def _soft_vote(
    probs: torch.Tensor, present: torch.Tensor, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Weighted mean of the present modalities' probabilities.

    Args:
        probs: ``[B, M, 3]`` per-modality class probabilities.
        present: bool ``[B, M]``.
        weights: ``[M]`` modality weights (None: equal).

    Returns:
        ``[B, 3]`` probabilities; uniform where no modality is present.
    """
    w = present.to(probs.dtype)
    if weights is not None:
        w = w * weights.to(probs)
    total = w.sum(dim=1, keepdim=True)
    fused = (w.unsqueeze(-1) * probs).sum(dim=1) / total.clamp_min(1e-12)
    return torch.where(total > 0, fused, torch.full_like(fused, 1.0 / probs.shape[-1]))


def _hard_vote(
    probs: torch.Tensor, present: torch.Tensor, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Share of the (weighted) votes each class gets, one vote per present modality for its
    most probable class: ``[B, 3]``, uniform where no modality is present. Use `_vote_winner`
    for the decision, which breaks ties."""
    votes = F.one_hot(probs.argmax(dim=-1), probs.shape[-1]).to(probs.dtype)
    return _soft_vote(votes, present, weights)


def _vote_winner(shares: torch.Tensor, probs: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """The class with the most votes; ties go to the tied class with the highest mean
    probability over the present modalities, then to the first in `CLASS_NAMES` order."""
    tied = shares >= shares.max(dim=-1, keepdim=True).values - 1e-6
    mean = _soft_vote(probs, present)
    score = torch.where(tied, mean, torch.full_like(mean, -1.0))
    best = score.max(dim=-1, keepdim=True).values
    first = (score >= best - 1e-6) & tied
    return first.float().argmax(dim=-1)  # argmax returns the first maximal index


# --- models ----------------------------------------------------------------------------------


def call_head(head: nn.Module, x: tuple[Any, ...], method: str = "forward") -> torch.Tensor:
    """`head.<method>` on one modality's input tuple."""
    return getattr(head, method)(*x)


class Fusion(nn.Module):
    """Shared plumbing: the fused heads, their hidden layers, presence masks."""

    def __init__(self, heads: Mapping[str, nn.Module], cfg: Config) -> None:
        super().__init__()
        missing = [m for m in cfg.modalities if m not in heads]
        if missing:
            raise ValueError(f"no head given for modalities {missing}")
        self.cfg = cfg
        self.heads = nn.ModuleDict({m: heads[m] for m in cfg.modalities})
        if not cfg.train_heads:
            self.heads.requires_grad_(False)

    def train(self, mode: bool = True) -> Fusion:
        super().train(mode)
        if not self.cfg.train_heads:
            self.heads.eval()
        return self

    def _run(self, name: str, x: Any, method: str) -> torch.Tensor:
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.cfg.train_heads):
            return call_head(self.heads[name], x, method)

    def presence(self, present: _Present, batch: int, device: torch.device) -> torch.Tensor:
        """Bool ``[B, M]`` in `cfg.modalities` order (a missing key means present)."""
        cols = [
            torch.as_tensor(present[m], device=device, dtype=torch.bool)
            if m in present
            else torch.ones(batch, dtype=torch.bool, device=device)
            for m in self.cfg.modalities
        ]
        return torch.stack(cols, dim=1)

    def hidden(self, inputs: Inputs, present: _Present) -> tuple[torch.Tensor, torch.Tensor]:
        """Concatenated, masked `forward_features` ``[B, sum(dims)]`` and presence ``[B, M]``."""
        parts = [self._run(m, inputs[m], "forward_features") for m in self.cfg.modalities]
        mask = self.presence(present, parts[0].shape[0], parts[0].device)
        parts = [p * mask[:, i : i + 1].to(p.dtype) for i, p in enumerate(parts)]
        return torch.cat(parts, dim=1), mask

    def hidden_dim(self) -> int:
        return sum(int(self.heads[m].feature_dim) for m in self.cfg.modalities)

    def predict(self, inputs: Inputs, present: _Present) -> tuple[torch.Tensor, torch.Tensor]:
        """Fused probabilities ``[B, 3]`` and predicted classes ``[B]``."""
        probs = self(inputs, present).softmax(dim=-1)
        return probs, probs.argmax(dim=-1)

    def loss(
        self, inputs: Inputs, present: _Present, target: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Training loss and the logits it was computed from."""
        logits = self(inputs, present)
        return F.cross_entropy(logits, target), logits


class _FCFusion(Fusion):
    """Early fusion (paper's best): concatenated hidden layers (and presence flags) ->
    Dense + ReLU -> Dense(3); deployed over audio 32 + scene 30 + pose 128 (+ face 8)."""

    def __init__(self, heads: Mapping[str, nn.Module], cfg: Config) -> None:
        super().__init__(heads, cfg)
        flags = len(cfg.modalities) if cfg.presence_flags else 0
        self.net = nn.Sequential(
            nn.Linear(self.hidden_dim() + flags, cfg.hidden_units),
            nn.ReLU(),
            nn.Linear(cfg.hidden_units, _N_CLASSES),
        )

    def forward(self, inputs: Inputs, present: _Present) -> torch.Tensor:
        hidden, mask = self.hidden(inputs, present)
        if self.cfg.presence_flags:
            hidden = torch.cat([hidden, mask.to(hidden.dtype)], dim=1)
        return self.net(hidden)


@dataclass
class _VAEOutput:
    logits: torch.Tensor
    recon: torch.Tensor
    target: torch.Tensor
    weight: torch.Tensor
    mu: torch.Tensor
    logvar: torch.Tensor


class _VAEFusion(Fusion):
    """VAE fusion (paper 7.2.3): the concatenated hidden layers -> encoder -> a
    `latent_dim` Gaussian latent z -> decoder reconstructs the input; a linear classifier on
    z predicts the class (on the mean at evaluation). Loss: cross-entropy +
    reconstruction (MSE over the present modalities' features) + KL to N(0, I)."""

    def __init__(self, heads: Mapping[str, nn.Module], cfg: Config) -> None:
        super().__init__(heads, cfg)
        dim = self.hidden_dim()
        self.dims = [int(self.heads[m].feature_dim) for m in cfg.modalities]
        self.encoder = nn.Sequential(
            nn.Linear(dim + len(cfg.modalities), cfg.hidden_units), nn.ReLU()
        )
        self.to_mu = nn.Linear(cfg.hidden_units, cfg.latent_dim)
        self.to_logvar = nn.Linear(cfg.hidden_units, cfg.latent_dim)
        self.decoder = nn.Sequential(
            nn.Linear(cfg.latent_dim, cfg.hidden_units), nn.ReLU(), nn.Linear(cfg.hidden_units, dim)
        )
        self.classifier = nn.Linear(cfg.latent_dim, _N_CLASSES)

    def encode(self, inputs: Inputs, present: _Present) -> _VAEOutput:
        hidden, mask = self.hidden(inputs, present)
        code = self.encoder(torch.cat([hidden, mask.to(hidden.dtype)], dim=1))
        mu, logvar = self.to_mu(code), self.to_logvar(code).clamp(-20.0, 20.0)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp() if self.training else mu
        # Reconstruct only what is there: an absent modality's zeros are not a target.
        weight = torch.repeat_interleave(
            mask.to(hidden.dtype), torch.tensor(self.dims, device=hidden.device), dim=1
        )
        return _VAEOutput(self.classifier(z), self.decoder(z), hidden.detach(), weight, mu, logvar)

    def forward(self, inputs: Inputs, present: _Present) -> torch.Tensor:
        return self.encode(inputs, present).logits

    def loss(
        self, inputs: Inputs, present: _Present, target: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.encode(inputs, present)
        ce = F.cross_entropy(out.logits, target)
        squared = (out.recon - out.target).pow(2) * out.weight
        recon = squared.sum(dim=1).div(out.weight.sum(dim=1).clamp_min(1.0)).mean()
        kl = -0.5 * (1 + out.logvar - out.mu.pow(2) - out.logvar.exp()).sum(dim=1).mean()
        return ce + self.cfg.recon_weight * recon + self.cfg.kl_weight * kl, out.logits


class _VotingFusion(Fusion):
    """Late fusion: each head's softmax, combined by soft, hard or weighted voting. Its
    "logits" are the log of the fused probabilities, so it evaluates like the other models."""

    def __init__(self, heads: Mapping[str, nn.Module], cfg: Config) -> None:
        super().__init__(heads, cfg)
        weights = [cfg.vote_weights.get(m, 0.0) for m in cfg.modalities]
        self.register_buffer("weights", torch.tensor(weights, dtype=torch.float32), False)

    def modality_probs(
        self, inputs: Inputs, present: _Present
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-modality probabilities ``[B, M, 3]`` and presence ``[B, M]``."""
        probs = torch.stack(
            [self._run(m, inputs[m], "forward").softmax(dim=-1) for m in self.cfg.modalities],
            dim=1,
        )
        return probs, self.presence(present, probs.shape[0], probs.device)

    def _fuse(self, probs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        method = self.cfg.method
        if method == "hard":
            return _hard_vote(probs, mask)
        return _soft_vote(probs, mask, self.weights if method == "weighted" else None)

    def forward(self, inputs: Inputs, present: _Present) -> torch.Tensor:
        probs, mask = self.modality_probs(inputs, present)
        return self._fuse(probs, mask).clamp_min(1e-8).log()

    def predict(self, inputs: Inputs, present: _Present) -> tuple[torch.Tensor, torch.Tensor]:
        probs, mask = self.modality_probs(inputs, present)
        fused = self._fuse(probs, mask)
        if self.cfg.method == "hard":
            return fused, _vote_winner(fused, probs, mask)
        return fused, fused.argmax(dim=-1)


class Precomputed(nn.Module):
    """Stands in for a head whose `forward_features` were computed beforehand: training a
    fusion over frozen heads then runs each head once, not once per epoch, and scoring
    computes each head's hidden layer once for both its own probabilities and the fusion.
    Its input is that hidden layer ``[B, feature_dim]``; `head` (optional) supplies
    ``forward_head`` for voting. Fusion layers trained over it load into the same fusion over
    the real heads (`fusion_state`)."""

    def __init__(self, feature_dim: int, head: nn.Module | None = None) -> None:
        super().__init__()
        self.feature_dim = feature_dim
        self.head = head

    def forward_features(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.head is None:
            raise TypeError("no head given: voting over a precomputed hidden layer needs one")
        return self.head.forward_head(hidden)


def fusion_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The fusion's own layers (no heads): what a trained fusion adds to its heads."""
    return {k: v for k, v in model.state_dict().items() if not k.startswith("heads.")}


def build(heads: Mapping[str, nn.Module], cfg: Config | None = None) -> Fusion:
    """The fusion model `cfg.method` over `heads` (name -> modality head)."""
    cfg = cfg or Config()
    if cfg.method == "fc":
        return _FCFusion(heads, cfg)
    if cfg.method == "vae":
        return _VAEFusion(heads, cfg)
    return _VotingFusion(heads, cfg)


def optimizer(model: Fusion) -> torch.optim.Optimizer | None:
    """Adam over the trainable parameters (Keras' kernel L2 on FC fusion's output layer as
    weight decay 2 * l2); None when there are none (voting, frozen heads)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        return None
    if not isinstance(model, _FCFusion) or not model.cfg.l2:
        return torch.optim.Adam(params, lr=model.cfg.lr)
    out = model.net[-1].weight
    rest = [p for p in params if p is not out]
    groups = [{"params": [out], "weight_decay": 2 * model.cfg.l2}, {"params": rest}]
    return torch.optim.Adam(groups, lr=model.cfg.lr)
