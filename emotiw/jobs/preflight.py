"""Pre-flight checks a job runs on its driver before any actor starts: a missing weight file
fails in one line (exit code 68) instead of inside every actor's constructor, and without
fetching anything (`_locate` only looks where `weights.resolve` would fetch from)."""

from __future__ import annotations

import importlib.metadata
import urllib.request
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from emotiw.io.weights import (
    RANDOM_INIT,
    WeightsConfig,
    WeightsError,
    _sources,
    get_spec,
)


def _locate(name: str, cfg: WeightsConfig | None = None) -> str | None:
    """Where `resolve` would take the weight file `name` from, without fetching or hashing it
    (a run's pre-flight on the driver: a missing file fails in one line before any actor
    starts); None when no source has it. A public URL counts when it answers a HEAD request.

    Raises:
        StorageError: the weights directory's storage cannot be reached.
    """
    from emotiw.core.errors import StorageError
    from emotiw.io.storage import join_url, size

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


def _check_available(names: Iterable[str], cfg: WeightsConfig | None = None) -> dict[str, str]:
    """Where each of `names` would be taken from (`_locate`); raise `WeightsError`
    (``missing_weights``, one line: where it looked and how to stage it) for the first that
    no source has."""
    cfg = cfg or WeightsConfig()
    found: dict[str, str] = {}
    for name in dict.fromkeys(names):
        where = _locate(name, cfg)
        if where is None:
            spec = get_spec(name)
            looked = ", ".join(source for source, _ in _sources(spec, cfg)) or "no source set"
            raise WeightsError(
                "missing_weights",
                f"weights {spec.name!r} ({spec.filename}) not found (looked in: {looked}); "
                "stage the file in a weights directory and set EMOTIW_WEIGHTS or "
                f"--weights-dir (docs/how-to/stage-weights.md), or use {RANDOM_INIT} weights",
            )
        found[name] = where
    return found


def _check_output(output: str, storage: Any = None) -> str:
    """Whether the job can write `output`, read-only (a dry run writes nothing): a local
    output's nearest existing folder must be a writable directory; for object storage the
    bucket must answer (whether this role may write there shows at the run's first write,
    the lease: a read-only probe cannot tell). Returns what was checked.

    Raises:
        OutputNotWritable: a local output that cannot be created or written; a missing bucket.
        StorageError: the object store cannot be reached (``io``, exit code 69).
    """
    import os

    from pyarrow import fs as pafs

    from emotiw.core.errors import OutputNotWritable, StorageError
    from emotiw.io.storage import arrow_filesystem, split_url

    protocol, path_text = split_url(output)
    if protocol == "s3":
        fs, _ = arrow_filesystem(output, storage)
        bucket = path_text.split("/", 1)[0]
        try:
            found = fs.get_file_info(bucket).type != pafs.FileType.NotFound
        except OSError as exc:
            raise StorageError(f"output {output}: {exc}", "io") from None
        if not found:
            raise OutputNotWritable(f"output {output}: bucket {bucket} does not exist")
        return f"output {output}: bucket answers (write permission shows at the first write)"
    path = Path(path_text)
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        what = "is not a folder" if not existing.is_dir() else "is not writable"
        raise OutputNotWritable(f"output {output}: {existing} {what}")
    return f"output {output}: writable"


def _check_gpus(
    requested: float | None, ray_address: str | None, flag: str = "--gpus-per-model-actor",
    stage: str = "model",
) -> str:  # fmt: skip
    """The GPUs a run's model stage asks for against what it can get. A local run (no Ray
    address: Ray starts on this machine) that asks for GPUs this machine does not have would
    wait forever for them, so it fails here; on a cluster the autoscaler may add GPU nodes.

    Raises:
        Unavailable: GPUs requested for a local run on a machine without CUDA devices.
    """
    import os

    import torch

    from emotiw.core.errors import Unavailable

    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    address = ray_address or os.environ.get("RAY_ADDRESS")
    asked = "auto (1 per actor if the cluster has a GPU, else CPU)" if requested is None else (
        f"{requested:g} per actor"
    )  # fmt: skip
    if requested and not address and not visible:
        raise Unavailable(
            f"{flag} {requested:g} on a local run, but this machine has no CUDA device: the "
            f"{stage} stage would wait for a GPU forever (use 0 or auto, or --address a "
            "cluster that can add GPU nodes)"
        )
    where = f"cluster {address}" if address else "a local Ray on this machine"
    return f"GPUs: {visible} CUDA device(s) visible here; {stage} stage asks {asked} on {where}"


def run_checks(
    weight_names: Iterable[str], weights: WeightsConfig, output: str, storage: Any,
    gpus: float | None, ray_address: str | None, flag: str, stage: str,
) -> list[str]:  # fmt: skip
    """A job's driver-side checks before anything starts (each raises its own one-line
    error): the weights are staged, the output can be written, the GPUs asked for can come.
    Returns a line per check (what a dry run prints)."""
    where = _check_available(weight_names, weights)
    found = ", ".join(f"{n} ({w.split(':', 1)[0]})" for n, w in where.items()) or "none needed"
    return [f"weights: {found}", _check_output(output, storage),
            _check_gpus(gpus, ray_address, flag, stage)]  # fmt: skip
