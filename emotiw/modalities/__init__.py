"""The four modalities, one module each with the same interface (see `base`):

- ``Config``: a frozen dataclass with the paper's defaults;
- ``Extractor(cfg)``: CPU side, decoded `Clip` -> `Extraction` (fixed-shape features plus
  detail rows), loading its front-end weights once through `emotiw.weights`;
- ``Head(cfg)``: the temporal classifier, a `torch.nn.Module` with ``forward_features`` (the
  layer fusion concatenates), ``forward_head`` and ``feature_dim``; the scene head also holds
  its ImageNet backbone (``Head(cfg, weights)``) and takes ``(frames, frame_mask)``;
- ``FEATURE_SHAPE`` and ``FEATURE_COLUMNS``: the per-clip feature layout.

Modules are imported on demand so `import emotiw` stays light.
"""

from __future__ import annotations

import importlib
from types import ModuleType

MODALITIES: tuple[str, ...] = ("scene", "pose", "audio", "face")


def get(name: str) -> ModuleType:
    """The module implementing modality `name`."""
    if name not in MODALITIES:
        raise ValueError(f"unknown modality {name!r}; expected one of {MODALITIES}")
    try:
        return importlib.import_module(f"emotiw.modalities.{name}")
    except ModuleNotFoundError as exc:
        if exc.name == f"emotiw.modalities.{name}":
            raise ValueError(f"modality {name!r} is not implemented yet") from None
        raise
