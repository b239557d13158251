"""What every modality's Extractor returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


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
