"""Scoring: feature-table rows of new clips -> rows of the scores table (pure compute; the Ray
plumbing is in `pipeline.run_score`).

The scoring job's CPU stage produces the same rows as the extract job (`features`), except
that modalities placed on the model stage (pose's Keypoint R-CNN, by default) are left for
`ClipScorer`, which runs them on the row's JPEG frames next to the heads and the fusion. So
training and scoring share every extractor and cannot drift apart. Output columns are defined
once in `emotiw.schema.score_schema`.
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from emotiw import __version__, fusion
from emotiw.config import CLASS_NAMES
from emotiw.features import ModalityConfigs
from emotiw.modalities.base import resolve_device
from emotiw.weights import WeightsConfig

# Columns the job's listing adds to each feature row; the scorer copies them to the score row.
LISTING_COLUMNS = ("etag", "size_bytes")


@dataclass(frozen=True)
class ModelRef:
    """What scored a row: the URI as given, the registered name and version (None locally)."""

    uri: str
    name: str
    version: str | None


def model_ref(uri: str, tracking_uri: str | None = None) -> ModelRef:
    """Resolve ``models:/name/version``, ``models:/name/latest`` or ``models:/name@alias`` to
    a concrete version, so every row of a run names the same one; a local package keeps its
    directory name and no version."""
    match = re.fullmatch(r"models:/([^/@]+)(?:/(\w+)|@([\w-]+))", uri)
    if not match:
        if uri.startswith("models:/"):
            raise ValueError(f"expected models:/name/version, /latest or @alias, got {uri!r}")
        return ModelRef(uri, Path(uri.rstrip("/")).name, None)
    name, version, alias = match.groups()
    if alias or version == "latest":
        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri)
        if alias:
            version = str(client.get_model_version_by_alias(name, alias).version)
        else:
            versions = client.search_model_versions(f"name = '{name}'")
            if not versions:
                raise ValueError(f"no registered versions of model {name!r}")
            version = str(max(int(v.version) for v in versions))
    return ModelRef(f"models:/{name}/{version}", name, version)


def deferred_modalities(configs: ModalityConfigs) -> tuple[str, ...]:
    """Modalities whose extraction runs in the model stage rather than the CPU stage."""
    return ("pose",) if "pose" in configs.modalities and configs.pose.placement == "gpu" else ()


def read_package(path: Path) -> dict[str, bytes]:
    """A package directory as relative path -> bytes (what the driver ships to the actors, so
    no actor needs the tracking server or the driver's disk)."""
    return {
        str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()
    }


def write_package(files: dict[str, bytes], folder: Path) -> Path:
    for rel, data in files.items():
        target = folder / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    return folder


class ClipScorer:
    """Holds a loaded package (and any deferred extractor) and scores batches of rows."""

    def __init__(
        self,
        package_dir: Path,
        ref: ModelRef,
        weights: WeightsConfig | None = None,
        device: str = "auto",
        placement: str | None = None,
    ) -> None:
        from emotiw.packaging import load_model

        self.device = resolve_device(device)
        self.package = load_model(package_dir, device=str(self.device))
        self.ref = ref
        self.configs = self.package.configs
        self.placement = placement or str(self.device)
        self.pose = None
        provenance = dict(self.package.provenance)
        if deferred_modalities(self.configs):
            from emotiw.modalities import pose

            self.pose = pose.Extractor(
                dataclasses.replace(self.configs.pose, device=self.device.type), weights
            )
            provenance.update({k: str(v) for k, v in self.pose.provenance.items()})
        self.provenance = provenance
        main = self.package.fusion
        # Each head's hidden layer is computed once and feeds both its own probabilities and
        # the fusion (over `Precomputed` stand-ins holding the real heads' classifiers).
        stand_ins = {
            m: fusion.Precomputed(int(self.package.heads[m].feature_dim), self.package.heads[m])
            for m in main.cfg.modalities
        }
        self.fused = fusion.build(stand_ins, main.cfg).to(self.device).eval()
        self.fused.load_state_dict(fusion.fusion_state(main), strict=False)

    def __call__(self, table: Any, run_id: str) -> Any:
        """Feature rows (feature schema + `LISTING_COLUMNS`) -> score rows (pyarrow)."""
        import pyarrow as pa

        from emotiw.features import to_feature_set
        from emotiw.schema import feature_schema, score_schema

        rows = table.to_pylist()
        for row in rows:
            if row["error"] is None and self.pose is not None:
                self._extract_pose(row)
        ok = [r for r in rows if r["error"] is None]
        names = feature_schema().names
        feature_rows = pa.Table.from_pylist(
            [{k: r.get(k) for k in names} for r in ok], schema=feature_schema()
        )
        try:
            scored = self._score(to_feature_set(feature_rows, self.configs, require_labels=False))
        except Exception as exc:  # the batch's clips become error rows; the job goes on
            scored = {}
            for row in ok:
                row["error"] = f"model_failed: {type(exc).__name__}: {exc}"
                row["error_reason"] = "model_failed"
        now = time.time()
        out = []
        for row in rows:
            result = scored.get(row["video_id"], {}) if row["error"] is None else {}
            out.append(
                {
                    "video_id": row["video_id"],
                    "uri": row["uri"],
                    "content_sha256": row["content_sha256"],
                    **{c: row.get(c) for c in LISTING_COLUMNS},
                    **result,
                    "n_faces": row.get("n_faces"),
                    "n_people": row.get("n_people"),
                    "has_audio": row.get("has_audio"),
                    "duration_s": row.get("duration_s"),
                    "n_frames": row.get("n_frames"),
                    "error": row["error"],
                    "error_reason": row["error_reason"],
                    "model_uri": self.ref.uri,
                    "model_name": self.ref.name,
                    "model_version": self.ref.version,
                    "fusion": self.package.default,
                    "weights": json.dumps(
                        {**json.loads(row["weights"] or "{}"), **self.provenance}, sort_keys=True
                    ),
                    "model_device": self.placement,
                    "code_version": __version__,
                    "run_id": run_id,
                    "scored_at": int(now * 1_000_000),
                }
            )
        return pa.Table.from_pylist(out, schema=score_schema())

    def _extract_pose(self, row: dict[str, Any]) -> None:
        from emotiw.modalities import scene

        try:
            cfg = self.configs.scene
            frames, mask = scene.decode_frames(row["scene_jpeg"], cfg.frame_height, cfg.frame_width)
            out = self.pose.extract(frames, mask)  # type: ignore[union-attr]
            row["pose"] = np.asarray(out.features, dtype=np.float32).reshape(-1)
            row["n_people"] = int(out.stats.get("n_people", 0))
        except Exception as exc:  # one clip's failure is that clip's error row
            row["error"] = f"pose_failed: {type(exc).__name__}: {exc}"
            row["error_reason"] = "pose_failed"

    def _score(self, data: Any) -> dict[str, dict[str, Any]]:
        """video_id -> the probability and class columns of each scored clip."""
        from emotiw.packaging import to_torch_inputs

        if len(data) == 0:
            return {}
        inputs = to_torch_inputs(data.inputs, data.scene_mask, self.device)
        present = {k: torch.as_tensor(v, device=self.device) for k, v in data.present.items()}
        hidden, per_modality = {}, {}
        with torch.inference_mode():
            for m in self.fused.cfg.modalities:
                head = self.package.heads[m]
                hidden[m] = fusion.call_head(head, inputs[m], "forward_features")
                per_modality[m] = head.forward_head(hidden[m]).softmax(-1).float().cpu().numpy()
            probs, preds = self.fused.predict(hidden, present)
        probs, preds = probs.float().cpu().numpy(), preds.cpu().numpy()
        out = {}
        for i, vid in enumerate(data.video_ids):
            cols: dict[str, Any] = {
                f"prob_{c}": float(probs[i, j]) for j, c in enumerate(CLASS_NAMES)
            }
            cols["predicted"] = CLASS_NAMES[int(preds[i])]
            for m, p in per_modality.items():
                if data.present[m][i]:
                    cols.update(
                        {f"{m}_prob_{c}": float(p[i, j]) for j, c in enumerate(CLASS_NAMES)}
                    )
                    cols[f"{m}_predicted"] = CLASS_NAMES[int(p[i].argmax())]
            out[str(vid)] = cols
        return out
