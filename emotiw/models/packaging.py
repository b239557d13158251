"""The packaged model: self-describing, loadable without the training code's globals.

A directory holding ``emotiw_model.json`` (every modality's config, every fusion variant's
config, class order, weights provenance, metrics, code version) and safetensors state dicts:
``heads/<modality>.safetensors`` (the scene head's includes its backbone) and
``fusion/<variant>.safetensors`` (the fusion's own layers). `load_model` rebuilds every module
from the JSON and loads the tensors; it never unpickles. MLflow logs and registers this
directory (`emotiw.tracking.client`), and scoring loads it from ``models:/name/version`` or a path.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from emotiw import modalities as registry
from emotiw.core import __version__
from emotiw.core.config import CLASS_NAMES
from emotiw.models import fusion
from emotiw.models.features import ModalityConfigs

_FORMAT = "emotiw-model/1"
ARTIFACT = "package"  # the package's name among an MLflow model's artifacts
_MANIFEST = "emotiw_model.json"


@dataclass
class PackagedModel:
    """Heads, fusion variants and what describes them."""

    configs: ModalityConfigs
    heads: dict[str, nn.Module]
    fusions: dict[str, fusion.Fusion]
    default: str
    provenance: dict[str, str] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def fusion(self) -> fusion.Fusion:
        return self.fusions[self.default]


def _config_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def _from_dict(cls: type, values: dict[str, Any]) -> Any:
    """A frozen config dataclass from JSON values (lists back to tuples). A field the JSON
    lacks (a package saved before the field existed) takes the value that code behaved as,
    ``cls.BEFORE[field]``, not today's default, so an old package loads the model it saved."""
    names = {f.name for f in dataclasses.fields(cls)}
    clean = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items() if k in names}
    before = getattr(cls, "BEFORE", {})
    return cls(**{**{k: v for k, v in before.items() if k in names}, **clean})


def save_model(
    path: str | Path,
    model: PackagedModel,
) -> Path:
    """Write `model` as a package directory at `path`."""
    from safetensors.torch import save_file

    path = Path(path)
    (path / "heads").mkdir(parents=True, exist_ok=True)
    (path / "fusion").mkdir(parents=True, exist_ok=True)
    for name, head in model.heads.items():
        state = {k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()}
        save_file(state, str(path / "heads" / f"{name}.safetensors"))
    variants = {}
    for variant, fused in model.fusions.items():
        own = {k: v.detach().cpu().contiguous() for k, v in fusion.fusion_state(fused).items()}
        save_file(own, str(path / "fusion" / f"{variant}.safetensors"))
        variants[variant] = _config_dict(fused.cfg)
    manifest = {
        "format": _FORMAT,
        "classes": list(CLASS_NAMES),
        "modalities": list(model.configs.modalities),
        # Where each modality is defined: a process loading the package imports it first, so
        # plug-in modalities load as the built-in ones do.
        "modules": {s.name: type(s).__module__ for s in model.configs.specs()},
        "configs": {m: _config_dict(model.configs.of(m)) for m in model.configs.modalities},
        "fusions": variants,
        "default_fusion": model.default,
        "provenance": model.provenance,
        "meta": {"code_version": __version__, "saved_at": time.time(), **model.meta},
    }
    (path / _MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
    return path


def _find_package(path: str | Path) -> Path:
    """The package directory at or under `path` (MLflow nests it inside its artifacts)."""
    path = Path(path)
    if (path / _MANIFEST).is_file():
        return path
    from emotiw.core.errors import ModelNotFound

    found = sorted(path.rglob(_MANIFEST)) if path.is_dir() else []
    if not found:
        what = "no emotiw model package" if path.exists() else "no such file or directory"
        raise ModelNotFound(f"{path}: {what} (no {_MANIFEST} at or under it)")
    return found[0].parent


def read_configs(path: str | Path) -> tuple[Path, dict[str, Any], ModalityConfigs]:
    """The package directory, its manifest and its modality configs, without building any
    module (what the scoring driver needs to set up the extractors)."""
    root = _find_package(path)
    manifest = json.loads((root / _MANIFEST).read_text())
    if manifest.get("format") != _FORMAT:
        raise ValueError(f"{root}: not an {_FORMAT} package (format {manifest.get('format')!r})")
    if tuple(manifest["classes"]) != CLASS_NAMES:
        raise ValueError(f"{root}: class order {manifest['classes']} != {CLASS_NAMES}")
    modules = manifest.get("modules", {})
    per = {}
    for name in manifest["modalities"]:
        spec = registry.get(name, modules.get(name))
        per[name] = _from_dict(spec.Config, manifest["configs"][name])
    return root, manifest, ModalityConfigs(per)


def load_model(path: str | Path, device: str = "cpu") -> PackagedModel:
    """Rebuild a packaged model from its directory."""
    from safetensors.torch import load_file

    root, manifest, configs = read_configs(path)
    heads: dict[str, nn.Module] = {}
    for spec in configs.specs():
        name = spec.name
        head = spec.head(configs.of(name))
        head.load_state_dict(load_file(str(root / "heads" / f"{name}.safetensors")))
        heads[name] = head.to(device).eval()
    fusions = {}
    for variant, values in manifest["fusions"].items():
        fcfg = _from_dict(fusion.Config, values)
        fused = fusion.build(heads, fcfg)
        missing, unexpected = fused.load_state_dict(
            load_file(str(root / "fusion" / f"{variant}.safetensors")), strict=False
        )
        if unexpected or any(not k.startswith("heads.") for k in missing):
            raise ValueError(f"{root}: fusion {variant!r} does not match its state dict")
        fusions[variant] = fused.to(device).eval()
    return PackagedModel(
        configs, heads, fusions, manifest["default_fusion"], manifest["provenance"],
        manifest["meta"],
    )  # fmt: skip


def read_package(path: Path) -> dict[str, bytes]:
    """A package directory as relative path -> bytes (what the driver ships to the actors, so
    no actor needs the tracking server or the driver's disk)."""
    return {
        str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()
    }


@contextlib.contextmanager
def unpacked(files: dict[str, bytes]) -> Iterator[Path]:
    """`files` (from `read_package`) written to a temporary folder for as long as the block
    loads them, then removed: a long-lived cluster's model actors would otherwise leave a copy
    of the model (~27 MB) in the temp directory per actor and run."""
    folder = Path(tempfile.mkdtemp(prefix="emotiw-model-"))
    try:
        yield _write_package(files, folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _write_package(files: dict[str, bytes], folder: Path) -> Path:
    """Inverse of `read_package`."""
    for rel, data in files.items():
        target = folder / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    return folder
