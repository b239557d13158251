"""Ray plumbing shared by the jobs: starting or joining Ray, the actor classes of the Ray Data
stages (a few lines each around the pure compute in `features` and `inference`), and staged
commits of Parquet output."""

from __future__ import annotations

import time
import uuid
from typing import Any

import numpy as np

from emotiw.config import MediaConfig, StorageConfig
from emotiw.features import ClipFeatureExtractor, ModalityConfigs
from emotiw.weights import WeightsConfig

NO_LABEL = -1


def new_run_id() -> str:
    """Sortable, unique run id: UTC-ish timestamp plus 8 random hex digits."""
    return time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:8]


def ensure_ray(address: str | None = None) -> None:
    """Connect to the cluster at `address` (or RAY_ADDRESS, or the one `ray job submit` set),
    else start a local one."""
    import ray

    if not ray.is_initialized():
        ray.init(address=address, log_to_driver=False, include_dashboard=False)


class ExtractActor:
    """One CPU actor: holds the extractors and turns a batch of clip URIs into feature rows
    (plus any listing columns the batch carries, e.g. the scoring job's etag)."""

    def __init__(
        self,
        configs: ModalityConfigs,
        media: MediaConfig,
        weights: WeightsConfig,
        storage: StorageConfig,
        run_id: str,
        defer: bool = False,
    ) -> None:
        self.storage = storage
        self.run_id = run_id
        self.extractor = ClipFeatureExtractor(configs, media, weights, defer)

    def __call__(self, batch: dict[str, np.ndarray]) -> Any:
        import pyarrow as pa

        from emotiw.features import rows_to_table
        from emotiw.storage import read_bytes

        rows = []
        for i, (uri, vid) in enumerate(zip(batch["uri"], batch["video_id"], strict=True)):
            try:
                data: bytes | Exception = read_bytes(str(uri), self.storage)
            except Exception as exc:
                data = exc
            label = int(batch["label"][i]) if "label" in batch else NO_LABEL
            label_or_none = None if label == NO_LABEL else label
            rows.append(self.extractor(str(uri), str(vid), data, label_or_none, self.run_id))
        table = rows_to_table(rows)
        for name in batch:  # carried through for the next stage
            if name not in table.column_names and name != "label":
                table = table.append_column(name, pa.array(list(batch[name])))
        return table


class ModelActor:
    """One model-stage actor: the packaged model (shipped as bytes through the object store,
    so no actor needs the tracking server) scoring batches of feature rows."""

    def __init__(
        self, files: Any, ref: Any, weights: WeightsConfig, device_name: str, run_id: str
    ) -> None:
        import tempfile
        from pathlib import Path

        import ray

        from emotiw.inference import ClipScorer
        from emotiw.modalities.base import resolve_device
        from emotiw.packaging import write_package

        if isinstance(files, ray.ObjectRef):  # Ray Data passes constructor args as given
            files = ray.get(files)
        folder = write_package(files, Path(tempfile.mkdtemp(prefix="emotiw-model-")))
        device = resolve_device(device_name)
        gpus = ray.get_runtime_context().get_accelerator_ids().get("GPU", [])
        placement = str(device)
        if gpus and device.type == "cpu":
            placement = f"cpu (Ray GPU {','.join(gpus)} assigned, no CUDA device visible)"
        elif gpus:
            placement = f"{device} (Ray GPU {','.join(gpus)})"
        self.scorer = ClipScorer(folder, ref, weights, str(device), placement)
        self.run_id = run_id

    def __call__(self, batch: Any) -> Any:
        return self.scorer(batch, self.run_id)


def commit(fs: Any, staging: str, out_path: str, run_id: str) -> None:
    """Move a finished run's files from staging into the table, then drop the staging dir."""
    from pyarrow import fs as pafs

    files = [
        info.path
        for info in fs.get_file_info(pafs.FileSelector(staging, recursive=True))
        if info.type == pafs.FileType.File and info.path.endswith(".parquet")
    ]
    if fs.type_name == "local":  # object stores have no directories (a marker would be read)
        fs.create_dir(out_path, recursive=True)
    for i, path in enumerate(sorted(files)):
        fs.move(path, f"{out_path.rstrip('/')}/part-{run_id}-{i:05d}.parquet")
    fs.delete_dir(staging)
    parent = staging.rsplit("/", 1)[0]
    if not fs.get_file_info(pafs.FileSelector(parent, allow_not_found=True)):
        fs.delete_dir(parent)
