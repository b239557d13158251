"""What every modality's Extractor returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when this process sees a GPU, else CPU; any other torch device name
    as given (every model front-end and the scoring model stage resolve it the same way)."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@dataclass(frozen=True)
class Extraction:
    """One clip's output of a modality extractor.

    Attributes:
        features: the modality's fixed per-clip array: float32 (e.g. face ``[12, 22]``), or
            for the scene the uint8 frames ``[12, 320, 480, 3]``, whose backbone is part of
            the scene model.
        details: columnar detail rows (per face, per person), column name -> 1-D array; all
            arrays have the same length, possibly zero.
        stats: small per-clip numbers the outputs report (e.g. ``n_faces``).
    """

    features: np.ndarray
    details: dict[str, np.ndarray] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def n_details(self) -> int:
        return len(next(iter(self.details.values()))) if self.details else 0
