"""Layer 3, modalities: the registry. Each modality module registers one `base.Modality` (see `base`
for the contract); jobs ask the registry, never a modality by name.

The four built-in modalities (scene, pose, audio, face) are imported on first use of the
registry, so `import emotiw` stays light. A plug-in modality is any importable module that
calls `register`; packaged models record that module, so a process that loads the model
(a Ray worker, a scoring job) imports it and finds the modality registered.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from emotiw.modalities.base import Modality

__all__ = ["BUILTIN", "canonical", "for_config", "get", "names", "register", "specs", "unregister"]

BUILTIN: tuple[str, ...] = ("scene", "pose", "audio", "face")
_REGISTRY: dict[str, Modality] = {}
_loaded = False


def register(spec: Modality) -> Modality:
    """Add a modality (and its weight files to the weights registry); returns it."""
    from emotiw.io.weights import register as register_weights

    name = spec.name
    if not name.isidentifier() or name != name.lower():
        raise ValueError(f"modality names are lowercase identifiers, got {name!r}")
    for weight_spec in spec.weight_specs:
        register_weights(weight_spec)
    _REGISTRY[name] = spec
    return spec


def unregister(name: str) -> None:
    """Remove a modality (tests that register a temporary one)."""
    _REGISTRY.pop(name, None)


def _load_builtins() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        for name in BUILTIN:
            importlib.import_module(f"emotiw.modalities.{name}")


def get(name: str, module: str | None = None) -> Modality:
    """The registered modality `name`, importing `module` (where it was defined) if needed."""
    _load_builtins()
    if name not in _REGISTRY and module:
        importlib.import_module(module)
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown modality {name!r}; registered: {names()}") from None


def names() -> tuple[str, ...]:
    """Registered modality names in canonical order (the fused layout's order)."""
    _load_builtins()
    return tuple(sorted(_REGISTRY, key=lambda n: (_REGISTRY[n].order, n)))


def specs(selection: tuple[str, ...] | None = None) -> tuple[Modality, ...]:
    """The registered modalities (or `selection` of them) in canonical order."""
    chosen = names() if selection is None else canonical(selection)
    return tuple(_REGISTRY[n] for n in chosen)


def canonical(selection: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """`selection` validated and sorted into canonical order."""
    known = names()
    unknown = sorted(set(selection) - set(known))
    if unknown or not selection or len(set(selection)) != len(selection):
        raise ValueError(
            f"modalities must be a non-empty subset of {known} without repeats, got "
            f"{tuple(selection)}" + (f" (unknown: {unknown})" if unknown else "")
        )
    return tuple(n for n in known if n in selection)


def for_config(cfg: object) -> Modality:
    """The registered modality whose Config class `cfg` is an instance of."""
    _load_builtins()
    for spec in _REGISTRY.values():
        if type(cfg) is spec.Config:
            return spec
    raise ValueError(f"{type(cfg).__qualname__} is not a registered modality's Config")
