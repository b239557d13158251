"""Pre-flight checks a job runs on its driver before any actor starts: a missing weight file
fails in one line (exit code 68) instead of inside every actor's constructor, and without
fetching anything (`locate` only looks where `weights.resolve` would fetch from)."""

from __future__ import annotations

import importlib.metadata
import urllib.request
from collections.abc import Iterable
from pathlib import Path

from emotiw.weights import (
    RANDOM_INIT,
    WeightsConfig,
    WeightsError,
    _sources,
    get_spec,
)


def locate(name: str, cfg: WeightsConfig | None = None) -> str | None:
    """Where `resolve` would take the weight file `name` from, without fetching or hashing it
    (a run's pre-flight on the driver: a missing file fails in one line before any actor
    starts); None when no source has it. A public URL counts when it answers a HEAD request.

    Raises:
        StorageError: the weights directory's storage cannot be reached.
    """
    from emotiw.errors import StorageError
    from emotiw.storage import join_url, size

    cfg = cfg or WeightsConfig()
    spec = get_spec(name)
    entry = cfg.resolved_cache_dir() / spec.name
    record = "provenance.json"
    cached = [p for p in entry.glob(f"*/{spec.filename}") if (p.parent / record).is_file()]
    if cached:
        return f"cache:{cached[0]}"
    weights_dir = cfg.resolved_weights_dir()
    if weights_dir:
        url = join_url(weights_dir, spec.filename)
        try:
            size(url, cfg.storage)
            return f"dir:{url}"
        except StorageError as exc:
            if exc.reason != "not_found":
                raise
    if spec.package:
        dist, rel = spec.package
        try:
            if Path(str(importlib.metadata.distribution(dist).locate_file(rel))).is_file():
                return f"package:{dist}/{rel}"
        except importlib.metadata.PackageNotFoundError:
            pass
    if spec.url and cfg.allow_download:
        request = urllib.request.Request(spec.url, method="HEAD")
        try:
            with urllib.request.urlopen(request, timeout=min(cfg.download_timeout_s, 10.0)):
                return f"url:{spec.url}"
        except OSError:
            pass
    return None


def check_available(names: Iterable[str], cfg: WeightsConfig | None = None) -> None:
    """Raise `WeightsError` (``missing_weights``, one line: where it looked and how to stage
    it) for the first of `names` that no source has."""
    cfg = cfg or WeightsConfig()
    for name in dict.fromkeys(names):
        if locate(name, cfg) is None:
            spec = get_spec(name)
            looked = ", ".join(source for source, _ in _sources(spec, cfg)) or "no source set"
            raise WeightsError(
                "missing_weights",
                f"weights {spec.name!r} ({spec.filename}) not found (looked in: {looked}); "
                "stage the file in a weights directory and set EMOTIW_WEIGHTS or "
                f"--weights-dir (README, Pretrained weights), or use {RANDOM_INIT} weights",
            )
